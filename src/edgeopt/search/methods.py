"""A candidate's variants as methods of the teacher's optimize run: the registry's method (f3_int8_uint8io,
...) applied to the candidate's trained network instead of the teacher, named <candidate>.<method>.

So the teacher's f0..f4 and every candidate's are built, raced, timed in the same interleaved
latency rounds, judged against the teacher's float32 on the same test photos and chosen by
optimize itself, into one results file.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeopt.methods.base import BuildContext, Method
from edgeopt.methods.registry import get_method


def candidate_method(method_name: str, candidate: str, student_dir: Path, describe: str) -> Method:
    """`method_name` of the registry, built from the network in `student_dir` (its model.keras)."""
    inner = get_method(method_name)
    return replace(
        inner, name=f"{candidate}.{inner.name}", paper_label="",
        summary=f"{describe}; then {inner.summary}",
        # a partial of a module function: picklable, so a build worker process can run it too
        build=functools.partial(build_from_student, inner.name, candidate, str(student_dir)),
        repairs=f"{candidate}.{inner.repairs}" if inner.repairs else "",
    )


def build_from_student(method_name: str, candidate: str, student_dir: str, ctx: BuildContext, out: Path) -> dict[str, Any] | None:
    """Build `method_name` with a context of the candidate's own: its model as the source, its own
    caches (model, calibration) and work folder, and its own earlier variants as `built`; the
    calibration and held-out images are the run's."""
    own: BuildContext = ctx.cached(f"search:{candidate}", lambda: replace(
        # the student is a folder with its model.keras, as `edgeopt train` writes (sources kind "train"),
        # whatever the teacher's kind
        ctx, source=Path(student_dir), source_kind="train", custom_objects=(), converted=None, built={}, _cache={},
        work_dir=ctx.work_dir / candidate if ctx.work_dir is not None else None,
    ))
    prefix = f"{candidate}."
    own.built.update({name.removeprefix(prefix): path for name, path in ctx.built.items() if name.startswith(prefix)})
    own.holdout_threads = ctx.holdout_threads
    return get_method(method_name).build(own, out)

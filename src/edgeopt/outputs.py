"""Output folders that appear whole or not at all.

Every command writes into a hidden sibling folder and renames it to its final name only when
complete, so an interruption never leaves a half-written result under the final name. An
existing output is replaced only with --force, and then only after the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgeopt.errors import OutputExistsError


def check_output_free(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise OutputExistsError(
            f"{out} already exists; choose another --out or pass --force to replace it"
        )


@contextlib.contextmanager
def staged_output(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes `out`, on any failure it is removed."""
    out = Path(out)
    check_output_free(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    check_output_free(out, force)  # something may have appeared meanwhile
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file under a temporary name in the same folder, then rename it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

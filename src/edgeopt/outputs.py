"""Output folders that appear whole or not at all, and never at the expense of an input.

Every command writes into a hidden sibling folder and renames it to its final name only when
complete, so an interruption (Ctrl-C, SIGTERM, an error) never leaves a half-written result
under the final name, and removes the hidden folder. An existing output is replaced only with
--force, only if edgeopt wrote it (it holds the MARKER file), never when it is or contains a
folder the command reads, and then only after the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgeopt import interrupts
from edgeopt.errors import ConfigError, OutputExistsError

# Written into every output folder edgeopt makes; --force replaces only folders that hold it.
MARKER = ".edgeopt-output"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(out: Path, force: bool, reads: Iterable[Path] = ()) -> None:
    """Refuse, before any work, an output that may not be written (see module doc)."""
    out = Path(out)
    target = out.resolve()
    for source in reads:
        source = Path(source).resolve()
        if source == target or target in source.parents:
            raise ConfigError(
                f"--out {out} would replace {source}, which this command reads; choose another --out"
            )
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputExistsError(f"{out} already exists; choose another --out or pass --force to replace it")
        if out.is_symlink() or not out.is_dir() or not (out / MARKER).is_file():
            raise OutputExistsError(
                f"{out} was not written by edgeopt (it has no {MARKER} file), so --force does not replace it; "
                "choose another --out, or remove it yourself"
            )


def _make_staging(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise ConfigError(
            f"cannot write --out {out} ({exc.strerror or exc}); choose a folder you can write to"
        ) from None
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; an output is as readable as any file
    return staging


@contextlib.contextmanager
def staged_output(out: Path, force: bool = False, reads: Iterable[Path] = (), command: str = "") -> Iterator[Path]:
    """Yield a hidden folder beside `out`; on success it becomes `out`, on any failure or
    interruption it is removed. The checks of `check_output` run first."""
    out = Path(out)
    reads = tuple(reads)
    check_output(out, force, reads)
    staging = _make_staging(out)
    try:
        (staging / MARKER).write_text(json.dumps({"command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        yield staging
        # An interrupt that a library swallowed must not let a result through.
        interrupts.raise_if_received()
        check_output(out, force, reads)  # something may have appeared meanwhile
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def mark_output(folder: Path, command: str) -> None:
    """Mark a folder made in place (the demo's root) as edgeopt's own, for a later --force."""
    (folder / MARKER).write_text(json.dumps({"command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))


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

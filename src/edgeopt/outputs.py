"""Output folders that appear whole or not at all, and never at the expense of an input or of a
user's own files.

Every command writes into a hidden sibling folder and renames it to its final name only when
complete, so an interruption (Ctrl-C, SIGTERM, an error, a full disk) never leaves a half-written
result under the final name, and removes the hidden folder. An existing output is replaced only
with --force, only if edgeopt wrote it (its MARKER file lists every file edgeopt wrote there),
only if it holds nothing else (a file or folder the user added is named and the command refuses),
never when it is or contains a folder the command reads, and then only after the new one is
complete.

What goes wrong while the output is written is said with the user's --out, not the hidden folder:
a full disk is one line (DiskFullError), and an error naming a file in the hidden folder names it
under --out.
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
from edgeopt.errors import ConfigError, DiskFullError, EdgeoptError, OutputExistsError, is_disk_full

# Written into every output folder edgeopt makes, with the list of what it wrote there; --force
# replaces only folders that hold it and nothing else.
MARKER = ".edgeopt-output"
# Foreign files named in a refusal, at most.
_NAMED = 3


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_reads(out: Path, reads: Iterable[Path] = ()) -> None:
    """Refuse an output that is, or holds, a folder or file the command reads."""
    target = Path(out).resolve()
    for source in reads:
        source = Path(source).resolve()
        if source == target or target in source.parents:
            raise ConfigError(
                f"--out {out} would replace {source}, which this command reads; choose another --out"
            )


def check_output(out: Path, force: bool, reads: Iterable[Path] = ()) -> None:
    """Refuse, before any work, an output that may not be written (see module doc)."""
    out = Path(out)
    check_reads(out, reads)
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputExistsError(f"{out} already exists; choose another --out or pass --force to replace it")
        if out.is_symlink() or not out.is_dir() or not (out / MARKER).is_file():
            raise OutputExistsError(
                f"{out} was not written by edgeopt (it has no {MARKER} file), so --force does not replace it; "
                "choose another --out, or remove it yourself"
            )
        foreign = foreign_files(out)
        if foreign:
            more = f" and {len(foreign) - _NAMED} more" if len(foreign) > _NAMED else ""
            raise OutputExistsError(
                f"--force does not replace {out}: it holds {len(foreign)} file(s) edgeopt did not write there "
                f"({', '.join(foreign[:_NAMED])}{more}); move them out of it, or choose another --out"
            )


def foreign_files(folder: Path) -> list[str]:
    """What `folder` (an output edgeopt wrote) holds beyond the files its MARKER lists, as paths
    relative to it (a folder with a "/"); an output nested in it is checked against its own list."""
    listed = _listed_files(folder)
    foreign: list[str] = []

    def walk(directory: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            rel = prefix + entry.name
            if rel == MARKER:
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if rel not in listed:
                foreign.append(rel + ("/" if is_dir else ""))
            elif is_dir and (Path(entry.path) / MARKER).is_file():  # a nested output: its own list
                foreign.extend(f"{rel}/{name}" for name in foreign_files(Path(entry.path)))
            elif is_dir:
                walk(Path(entry.path), rel + "/")

    walk(folder, "")
    return foreign


def _listed_files(folder: Path) -> set[str]:
    try:
        listed = json.loads((folder / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if not isinstance(listed, list):
        raise OutputExistsError(
            f"{folder} was written by an older edgeopt that did not list its files in {MARKER}, so --force cannot "
            "tell them from yours; remove it yourself, or choose another --out"
        )
    return {str(name) for name in listed}


def _write_marker(folder: Path, command: str, created: str, files: list[str] | None = None) -> None:
    """The MARKER: the command, when, and every file and folder under `folder` (relative paths)."""
    if files is None:
        files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path != folder / MARKER)
    (folder / MARKER).write_text(json.dumps({"command": command, "created": created, "files": files}, indent=0))


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
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        yield staging
        # An interrupt that a library swallowed must not let a result through.
        interrupts.raise_if_received()
        _write_marker(staging, command, created)
        check_output(out, force, reads)  # something may have appeared meanwhile
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        said = said_for_user(exc, out, staging)
        if said is exc:
            raise
        raise said from None


def said_for_user(exc: BaseException, out: Path, staging: Path) -> BaseException:
    """`exc` as the user should read it: a full disk as one line naming --out, and a user's
    error that names the hidden staging folder naming --out instead (the same error type)."""
    if is_disk_full(exc):
        return DiskFullError(f"disk full writing {out}: free space or choose another --out")
    if isinstance(exc, EdgeoptError) and str(staging) in str(exc):
        try:
            return type(exc)(str(exc).replace(str(staging), str(out)))
        except Exception:  # an error type that takes other arguments: said as it was
            return exc
    return exc


def mark_output(folder: Path, command: str, outputs: Iterable[str] = ()) -> None:
    """Mark a folder made in place (the demo's root) as edgeopt's own, for a later --force: it
    holds the named `outputs`, each an output folder with its own MARKER, and nothing else."""
    try:
        _write_marker(folder, command, time.strftime("%Y-%m-%dT%H:%M:%S%z"), sorted(outputs))
    except OSError as exc:
        raise said_for_user(exc, folder, folder) from None


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

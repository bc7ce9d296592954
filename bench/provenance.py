"""The commit a benchmark's figures come from, for the result files under bench/results/."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def commit(*scripts: str) -> str:
    """HEAD, marked "+uncommitted" when src/ or the benchmark scripts differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", *scripts], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# The machine-specific folders a result may name, and what a reader of the repository calls them:
# the checkout itself, its bench cache (a symlink in a worktree), and the shared data beside it.
SHARED = ROOT.parent / "shared"


def _prefixes() -> list[tuple[str, str]]:
    cache = ROOT / "bench" / "cache"
    pairs = {str(cache.resolve()): "bench/cache", str(cache): "bench/cache", str(SHARED.resolve()): "../shared",
             str(SHARED): "../shared", str(ROOT): "."}
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))  # the longest first: the cache before the checkout


def _relative_path(text: str) -> str:
    for prefix, relative in _prefixes():
        text = text.replace(prefix + "/", "" if relative == "." else relative + "/")
        text = re.sub(re.escape(prefix) + r"(?![\w-]|\.[\w-])", relative, text)  # not a longer name
    return text


def repo_relative(value: Any) -> Any:
    """A string, or every string in a JSON-like value, with this machine's absolute paths of the
    checkout, its bench cache and ../shared written relative to the repository
    ("/work/main/bench/cache/run" -> "bench/cache/run", "/work/shared/data" -> "../shared/data")."""
    if isinstance(value, str):
        return _relative_path(value)
    if isinstance(value, dict):
        return {k: repo_relative(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [repo_relative(v) for v in value]
    return value


def write_json(path: Path, record: Any) -> None:
    """A benchmark's JSON result, with paths relative to the repository (repo_relative)."""
    path.write_text(json.dumps(repo_relative(record), indent=1))


def write_text(path: Path, text: str) -> None:
    """A benchmark's Markdown result, with paths relative to the repository (repo_relative)."""
    path.write_text(repo_relative(text))

"""Second virtual environments with the older runtimes devices run, for the tests that install edgeopt
there as a device would and run its commands. Each is cached between runs under
~/.cache/edgeopt-tests (keyed by what it installs and the light install's dependencies); edgeopt
itself is reinstalled from this checkout every time. When pip cannot build one (no registry, no
wheel for this Python), the test that needs it is skipped, saying why."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def device_venv(name: str, requirements: list[str], extra: str | None = None) -> Path:
    """The python of a venv with `requirements` and edgeopt's light install (with `extra`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = project["optional-dependencies"][extra] if extra else []
    key = hashlib.sha256(json.dumps([requirements, extra, pins, project["dependencies"]]).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeopt-tests" / f"{name}-{key}"
    python = cache / "bin" / "python"
    if not (cache / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(cache)], check=True)
        target = f"{ROOT}[{extra}]" if extra else str(ROOT)
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements, target],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or proc.stderr.splitlines()
            pytest.skip(f"pip cannot install {' '.join(requirements)} for this Python here: {errors[-1] if errors else '?'}")
        (cache / ".complete").write_text("ok")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(ROOT)], check=True,
                   timeout=300, capture_output=True)
    return python


def versions(python: Path, *modules: str) -> dict[str, str | None]:
    """The version of each distribution installed in that venv (None: not installed)."""
    script = ("import json, sys; from importlib import metadata\n"
              "def v(n):\n    try:\n        return metadata.version(n)\n    except metadata.PackageNotFoundError:\n"
              "        return None\nprint(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    return json.loads(subprocess.run([str(python), "-c", script, *modules], capture_output=True, text=True,
                                     check=True).stdout)

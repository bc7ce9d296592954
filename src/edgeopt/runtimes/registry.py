"""The runtimes edgeopt can measure on, by name and by file suffix."""

from __future__ import annotations

from pathlib import Path

from edgeopt.errors import BackendUnavailableError, ModelError
from edgeopt.runtimes.base import Runtime, importable
from edgeopt.runtimes.litert import LiteRTRuntime
from edgeopt.runtimes.onnxruntime import OnnxRuntime

RUNTIMES: dict[str, Runtime] = {
    "litert": LiteRTRuntime(),
    "onnxruntime": OnnxRuntime(),
}
# What `pip install` names the extra that brings each optional backend (on the build machine).
EXTRAS = {"onnxruntime": "onnx"}
# What building a runtime's variants needs besides the runtime, which alone runs them (a device).
BUILD_MODULES = {"onnxruntime": ("onnx",)}


def list_runtimes(installed_only: bool = False, for_building: bool = False) -> list[str]:
    """Runtime names; with `installed_only`, those that can run models here (and, with
    `for_building`, also build their variants)."""
    return [name for name, r in RUNTIMES.items()
            if not installed_only or (r.available() and (not for_building or importable(*BUILD_MODULES.get(name, ()))))]


def get_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise BackendUnavailableError(f"unknown backend {name!r}; use one of: {', '.join(RUNTIMES)}")
    runtime = RUNTIMES[name]
    if not runtime.available():
        raise BackendUnavailableError(
            f"backend {name} is not installed; install it with: pip install 'edgeopt[{EXTRAS.get(name, name)}]'"
        )
    return runtime


def runtime_for(path: Path) -> Runtime:
    """The runtime that runs a model file, chosen by its suffix."""
    suffix = Path(path).suffix.lower()
    for name, runtime in RUNTIMES.items():
        if suffix in runtime.suffixes:
            return get_runtime(name)
    known = sorted(s for r in RUNTIMES.values() for s in r.suffixes)
    raise ModelError(f"{path} is not a model edgeopt can run; pass a file ending in {', '.join(known)}")

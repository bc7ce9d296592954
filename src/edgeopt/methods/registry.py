"""Every way edgeopt can make a variant, in one literal dict: name -> Method."""

from __future__ import annotations

from edgeopt.errors import ConfigError
from edgeopt.methods.base import Method
from edgeopt.methods.litert import LITERT_METHODS
from edgeopt.methods.onnx import ONNX_METHODS
from edgeopt.methods.retrain import RETRAIN_METHODS

METHODS: dict[str, Method] = {
    **LITERT_METHODS,
    **ONNX_METHODS,
    **RETRAIN_METHODS,
}


def list_methods(backend: str | None = None) -> list[str]:
    return [name for name, m in METHODS.items() if backend is None or m.backend == backend]


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]

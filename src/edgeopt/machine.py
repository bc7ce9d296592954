"""Facts about the machine a measurement ran on: CPU model, cores, the SIMD features that
decide int8 speed, library versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

# CPU flags that give int8 dot products (VNNI on x86, dot-product on Arm).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
LIBRARIES = (
    "edgeopt", "tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert", "numpy", "pillow",
    "onnx", "onnxruntime", "tf2onnx", "onnxconverter-common",
)


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def has_int8_dot_product() -> bool:
    """True when the CPU multiplies int8 pairs into int32 without saturation (VNNI, Arm dot product)."""
    return bool(cpu_flags() & set(INT8_DOT_FLAGS))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def describe_machine() -> dict[str, object]:
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "int8_dot_product": sorted(f for f in INT8_DOT_FLAGS if f in flags),
        "avx512": "avx512f" in flags,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": library_versions(),
    }

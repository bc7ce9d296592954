"""What a machine is, as far as running a quantized classifier goes: CPU model and architecture,
the SIMD features that decide int8 and float16 speed, cores, memory, and the inference runtimes
installed with their versions. The build machine writes it into results.json; a device writes it
with `edgeopt device profile` and sends it with its reports.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

# CPU flags that give int8 dot products (VNNI on x86, dot-product on Arm).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
# Other flags that decide how fast the runtimes' kernels are.
SPEED_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "asimd", "asimdhp",
               "i8mm", "sve", "bf16")
RUNTIMES = ("ai-edge-litert", "tflite-runtime", "onnxruntime")
LIBRARIES = (
    "edgeopt", "tensorflow-cpu", "tensorflow", "keras", *RUNTIMES, "numpy", "pillow",
    "onnx", "tf2onnx", "onnxconverter-common",
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


def memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def library_versions() -> dict[str, str]:
    return _versions(LIBRARIES)


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's --cpuset-cpus, taskset), not the
    machine's. A CPU quota (--cpus) does not show here."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def accuracy_threads(latency_threads: int) -> int:
    """Threads of an accuracy pass: answers do not depend on the thread count, so it uses every core
    this process may use, and never fewer than latency is measured with."""
    return max(latency_threads, usable_cores())


def describe_machine() -> dict[str, Any]:
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "int8_dot_product": sorted(f for f in INT8_DOT_FLAGS if f in flags),
        "speed_flags": sorted(f for f in SPEED_FLAGS if f in flags),
        "avx512": "avx512f" in flags,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "runtimes": _versions(RUNTIMES),
        "libraries": library_versions(),
    }


def device_class(profile: dict[str, Any]) -> str:
    """A name for devices that should measure alike: architecture, CPU model, cores, runtime."""
    runtimes = profile.get("runtimes") or {}
    runtime = next((f"{name} {version}" for name, version in runtimes.items()), "no runtime")
    return f"{profile.get('machine')} / {profile.get('cpu')} / {profile.get('cores')} cores / {runtime}"

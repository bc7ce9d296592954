"""Is an installed runtime able to run a model here? Checked, not assumed: `device profile` and
`device bench` import it, create an interpreter (session), run a tiny model (runtimes.probe_models)
and release it, in a child process -- an old runtime on a new numpy does not always raise, it can
crash the process (onnxruntime 1.16.3 on numpy 2: SIGSEGV at the first run). What fails gets one
line naming the fix ("ai-edge-litert 1.0.1 is built for numpy<2 ...").
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from edgeopt.errors import BackendUnavailableError
from edgeopt.worker_process import python_command, signal_name

# What a runtime built against numpy 1.x says (or prints) when numpy 2 is installed.
NUMPY_1_BUILD_SIGNS = ("_ARRAY_API not found", "numpy.core.multiarray failed to import", "compiled using NumPy 1.x")
# The first release of each runtime built for numpy 2 (None: there is none).
NUMPY_2_BUILDS = {"ai-edge-litert": "ai-edge-litert>=2", "onnxruntime": "onnxruntime>=1.19", "tflite-runtime": None}
# A probe takes about a second; an old board importing numpy and a runtime from an SD card, far more.
PROBE_TIMEOUT_S = 120.0
_MARK = "EDGEOPT-PROBE "
_BOOT = "from edgeopt.runtimes.health import run_probe; run_probe()"


@dataclass(frozen=True)
class RuntimeHealth:
    package: str  # "ai-edge-litert 1.0.1"
    healthy: bool
    problem: str = ""  # one line that names the fix; empty when healthy

    def to_jsonable(self) -> dict[str, object]:
        return asdict(self)


def numpy_mismatch(package: str, text: str) -> str | None:
    """The fix, in one line, when `text` (an error, or what the runtime printed) shows a runtime
    built for numpy 1.x running on numpy 2; else None."""
    numpy_version = metadata.version("numpy")
    if int(numpy_version.split(".")[0]) < 2 or not any(sign in text for sign in NUMPY_1_BUILD_SIGNS):
        return None
    newer = NUMPY_2_BUILDS.get(package.split()[0])
    fix = f"install numpy<2 or {newer}" if newer else "install numpy<2 (no release of it is built for numpy 2)"
    return f"{package} is built for numpy<2 and numpy {numpy_version} is installed; {fix}"


def error_text(exc: BaseException) -> str:
    """An exception with the ones it came from (a runtime's SystemError hides an ImportError)."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 8:
        parts.append(" ".join(f"{type(seen).__name__}: {seen}".split()))
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


def unusable(package: str, exc: BaseException, extra: str) -> BackendUnavailableError:
    """The error for a runtime that fails to import or to open any model: its fix when known."""
    text = error_text(exc)
    return BackendUnavailableError(numpy_mismatch(package, text) or f"{package} cannot be used here ({text}); "
                                   f"reinstall it or install another version (pip install 'edgeopt[{extra}]')")


def check_runtime(name: str, timeout_s: float = PROBE_TIMEOUT_S) -> RuntimeHealth:
    """Run the tiny model of runtime `name` (installed) in a child process and say how it went."""
    from edgeopt.runtimes.registry import RUNTIMES

    package = RUNTIMES[name].version()
    try:
        proc = subprocess.run(python_command(_BOOT, name), capture_output=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return RuntimeHealth(package, False, f"{package} did not run a tiny model within {timeout_s:.0f} s; "
                                             "check the device's load, or reinstall the runtime")
    out, err = (proc.stdout or b"").decode(errors="replace"), (proc.stderr or b"").decode(errors="replace")
    reports = [line[len(_MARK):] for line in out.splitlines() if line.startswith(_MARK)]
    report: dict[str, Any] = json.loads(reports[-1]) if reports else {"ok": False, "error": ""}
    if report["ok"] and proc.returncode == 0:
        return RuntimeHealth(package, True)
    fix = numpy_mismatch(package, f"{report['error']}\n{err}")
    if fix:
        return RuntimeHealth(package, False, fix)
    crash = signal_name(proc.returncode)
    if crash:
        what = f"crashed ({crash}) running a tiny model"
    else:
        lines = [line.strip() for line in (report["error"] or err).splitlines() if line.strip()]
        what = f"cannot run a tiny model ({lines[-1] if lines else f'exit code {proc.returncode}'})"
    return RuntimeHealth(package, False, f"{package} {what}; reinstall it or install another version")


def check_installed_runtimes(names: Iterable[str] | None = None) -> dict[str, RuntimeHealth]:
    """The health of each installed runtime (of `names`, default all), by runtime name."""
    from edgeopt.runtimes.registry import RUNTIMES

    wanted = list(RUNTIMES) if names is None else [n for n in RUNTIMES if n in set(names)]
    return {name: check_runtime(name) for name in wanted if RUNTIMES[name].available()}


def require_healthy(names: Iterable[str]) -> dict[str, RuntimeHealth]:
    """The health of the installed runtimes among `names`; raises the first problem's fix."""
    health = check_installed_runtimes(names)
    for checked in health.values():
        if not checked.healthy:
            raise BackendUnavailableError(checked.problem)
    return health


def run_probe() -> None:
    """The child's main (argv[2]: the runtime's name): run its tiny model, print one report line."""
    import sys

    from edgeopt.worker_process import no_core_files

    no_core_files()
    report: dict[str, object] = {"ok": False, "error": ""}
    try:
        import numpy as np

        from edgeopt.runtimes.probe_models import PROBE_INPUT, PROBE_OUTPUT

        output = _PROBES[sys.argv[2]]()
        if np.array_equal(output, PROBE_OUTPUT):
            report["ok"] = True
        else:
            report["error"] = f"it answered {output.ravel().tolist()} for {PROBE_INPUT.ravel().tolist()}"
    except BaseException as exc:  # noqa: BLE001 -- whatever it was, the parent words it
        report["error"] = error_text(exc)
    sys.stdout.flush()
    print(_MARK + json.dumps(report), flush=True)


def _probe_litert():  # type: ignore[no-untyped-def]
    import gc

    from edgeopt.runtimes.litert import _interpreter_module
    from edgeopt.runtimes.probe_models import PROBE_FILES, PROBE_INPUT

    module, _ = _interpreter_module()
    interpreter = module.Interpreter(model_path=str(PROBE_FILES["litert"]), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], PROBE_INPUT)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()
    del interpreter  # releasing it is part of running a model (some runtimes crash there)
    gc.collect()
    return output


def _probe_onnxruntime():  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    from edgeopt.runtimes.probe_models import PROBE_FILES, PROBE_INPUT

    session = ort.InferenceSession(str(PROBE_FILES["onnxruntime"]), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": PROBE_INPUT})[0]


_PROBES = {"litert": _probe_litert, "onnxruntime": _probe_onnxruntime}

"""One variant of a device benchmark, measured in a process of its own.

A variant the device's runtime cannot run may not fail politely: ai-edge-litert 1.0.1 segfaults
releasing a dynamic-range model it resized from batch 1 to 16, and a segfault ends the process
that holds the interpreter. So `device bench` gives each variant a worker process, and a crash
costs one row ("does not run here: SIGSEGV ...") instead of the benchmark.

Why one long-lived worker per variant, driven step by step over a pipe, rather than a process
per measurement: the latency protocol's meaning is in its interleaving (measure.py) -- round r
times every variant before round r + 1 starts, so a slow spell of the CPU falls on all of them
and their per-round ratios stay paired. A process per variant that ran its own rounds start to
finish would time the variants one after another, and the ratios would carry the drift between
them. Here the parent still runs the rounds: it asks each worker in turn for one round of
invocations, and waits for its answer before asking the next, so exactly one variant runs at a
time, as in a single process; a worker waiting for its turn blocks on the pipe and costs no CPU.
What is timed is inside the worker (encode, invoke, decode: what a device does per frame); the
pipe is outside the clock. The cost is memory: every variant's runtime stays loaded in a process of
its own until the rounds end. On the tiny test model a LiteRT worker peaked at 53-58 MB and an ONNX
Runtime one at 77-86 MB (resident; Python, numpy and the runtime are most of it, hence the light
imports here: edgeopt.invoke, not edgeopt.measure), 602 MB for its nine variants.

`isolate=False` (`device bench --no-isolate`) runs the same steps in the calling process: for a
device short of memory, a frozen executable that cannot start an interpreter, and tests that patch
a runtime in this process. A crash then ends the benchmark.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import subprocess
import sys
import traceback
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import EdgeoptError
from edgeopt.invoke import SessionTimer, TimingFailed, predict_top1
from edgeopt.pixels import PixelTransform
from edgeopt.runtimes.base import Session
from edgeopt.worker_process import die_with, how_it_ended, no_core_files, python_command, signal_name

_BOOT = "from edgeopt.device.variant_worker import serve; serve()"
# What a worker was doing when it died, for the row that says so.
_DOING = {
    "load": "loading it",
    "accuracy": "during the accuracy pass",
    "release": "releasing it after the accuracy pass (at batch 16)",
    "latency_session": "loading it again for the latency rounds",
    "warm_up": "during the latency rounds",
    "time": "during the latency rounds",
    "finish": "releasing it after the latency rounds",
}


# Where the runtimes' own exceptions live (LiteRT raises RuntimeError when a model fails to prepare
# or run; onnxruntime its own types, subclasses of Exception).
RUNTIME_MODULES = ("onnxruntime", "ai_edge_litert", "tflite_runtime")


class VariantRefused(Exception):
    """The variant does not run here; the message says why (one line, for its row)."""


class Variant:
    """The steps of one variant's benchmark, in the process that holds its runtime."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.timer: SessionTimer | None = None
        self._opened: tuple[str, Path, PixelTransform] | None = None

    def load(self, backend: str, path: str, threads: int, scale: tuple[float, ...], offset: tuple[float, ...],
             channel_order: str = "rgb") -> None:
        from edgeopt.runtimes.registry import RUNTIMES

        transform = PixelTransform((scale[0], scale[1], scale[2]), (offset[0], offset[1], offset[2]), channel_order)
        self._opened = backend, Path(path), transform
        self.session = RUNTIMES[backend].open(Path(path), threads, transform)

    def accuracy(self, pixels: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 answers and their probabilities on every image of an .npy file."""
        assert self.session is not None
        return predict_top1(self.session, np.load(pixels, mmap_mode="r"), classes)

    def release(self) -> None:
        """Release the model (the accuracy pass's session: it used every core, at batch 16)."""
        self.session = self.timer = None
        gc.collect()

    def finish(self) -> None:
        """Release the model after the rounds: a runtime that crashes there would crash a device
        that switches models."""
        self.release()

    def latency_session(self, threads: int, pixels: np.ndarray) -> None:
        """Open the model at the device's thread count, timed on `pixels` one at a time."""
        from edgeopt.runtimes.registry import RUNTIMES

        assert self._opened is not None
        backend, path, transform = self._opened
        self.session = RUNTIMES[backend].open(path, threads, transform)
        self.timer = SessionTimer(self.session, pixels)

    def warm_up(self, count: int) -> None:
        assert self.timer is not None
        self.timer.warm_up(count)

    def time(self, count: int) -> list[float]:
        assert self.timer is not None
        return self.timer.time(count)


def _answer(variant: Variant, step: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    """Run one step: ("ok", its value); ("refused", why) when the runtime cannot run the variant
    (edgeopt's error on loading it, or the runtime's own exception at any step); ("error", an
    EdgeoptError) for a user's problem found later (images of other classes); ("bug", the
    traceback) for anything else."""
    try:
        return "ok", getattr(variant, step)(*args)
    except EdgeoptError as exc:
        return ("refused", str(exc)) if step in ("load", "latency_session") else ("error", exc)
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, RuntimeError) or type(exc).__module__.split(".")[0] in RUNTIME_MODULES:
            return "refused", " ".join(f"{type(exc).__name__}: {exc}".split())
        return "bug", traceback.format_exc()  # a bug: its traceback goes to the parent


class InProcess:
    """A variant measured in this process (isolate=False)."""

    def __init__(self, package: str, variant: str) -> None:
        self._variant = Variant()

    def call(self, step: str, *args: Any) -> Any:
        return _settle(_answer(self._variant, step, args))

    def stop(self) -> None:
        self._variant.release()


class Worker:
    """A variant measured in a process of its own, step by step (see the module's docstring)."""

    def __init__(self, package: str, variant: str) -> None:
        self.package = package
        ours, theirs = Pipe(duplex=True)
        try:
            self.process = subprocess.Popen(  # the variant's name last: `ps` shows which process is which
                python_command(_BOOT, str(theirs.fileno()), str(os.getpid()), variant), pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C at the terminal reaches the parent only, which stops this
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._conn = ours

    def call(self, step: str, *args: Any) -> Any:
        try:
            self._conn.send((step, args))
            answer = self._conn.recv()
        except (EOFError, OSError):
            raise VariantRefused(self._died(step)) from None
        return _settle(answer)

    def _died(self, step: str) -> str:
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        name = signal_name(code)
        doing = _DOING.get(step, "")
        if name == "SIGKILL":  # not a crash: the kernel (out of memory) or someone killed it
            return f"does not run here: SIGKILL (its process was killed {doing}: out of memory?)"
        if name:
            return f"does not run here: {name} ({self.package} crashed {doing})"
        return f"does not run here: its process {how_it_ended(code)} {doing}"

    def stop(self) -> None:
        """End the worker at once (the benchmark is over, or it is being abandoned)."""
        try:
            self.process.kill()
        except ProcessLookupError:
            pass
        self.process.wait()
        self._conn.close()


def _settle(answer: tuple[str, Any]) -> Any:
    kind, payload = answer
    if kind == "ok":
        return payload
    if kind == "refused":
        raise VariantRefused(payload)
    if kind == "error":
        raise payload
    raise RuntimeError(f"a device benchmark worker failed:\n{payload}")


class LatencyTimer:
    """A worker's side of the interleaved rounds (measure.Timer): a crash leaves the rounds."""

    def __init__(self, worker: Worker | InProcess) -> None:
        self.worker = worker

    def warm_up(self, count: int) -> None:
        self._call("warm_up", count)

    def time(self, count: int) -> list[float]:
        return list(self._call("time", count))

    def _call(self, step: str, count: int) -> Any:
        try:
            return self.worker.call(step, count)
        except VariantRefused as exc:
            raise TimingFailed(str(exc)) from None


def serve() -> None:
    """The worker's main: answer each step sent down the pipe whose descriptor is argv[2] until
    the parent closes it; die with the parent (argv[3]). argv[4] names the variant, for `ps`."""
    fd, parent = int(sys.argv[2]), int(sys.argv[3])
    os.set_inheritable(fd, False)  # nothing it starts may hold the pipe open after it dies
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C reaches the parent, which stops this
    die_with(parent)
    no_core_files()  # a runtime that crashes is a row of the results, not a core file in the user's folder
    conn = Connection(fd)
    variant = Variant()
    while True:
        try:
            step, args = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe (or is gone): the benchmark is over
            os._exit(0)
        answer = _answer(variant, step, args)
        if answer[0] == "error":
            try:  # a user's problem travels as itself, so that the CLI prints its one line
                pickle.dumps(answer[1])
            except Exception:  # noqa: BLE001
                answer = ("bug", "".join(traceback.format_exception(answer[1])))
        conn.send(answer)

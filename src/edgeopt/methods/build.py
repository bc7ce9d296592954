"""Build one run's variants: each runtime's methods in order, the runtimes side by side.

Most of a build runs on one core -- TensorFlow's converter and quantization debugger, ONNX
Runtime's quantizer and its calibration bookkeeping -- so on a machine with a second core the
methods of a second runtime are built in a worker process while this one builds the baseline's
runtime. A method depends only on earlier methods of its own runtime (a guarded variant checks
its plain sibling), never on another runtime's, so the two chains are independent and each
keeps the registry's order. With one runtime, LiteRT's calibrated methods (f2, f3 and the guarded
one: most of its build, calibration running on one core) form the worker's chain instead. The
files, and so every accuracy figure, are those of building one after another; the wall time, and
each method's build seconds, change.

The worker is a new interpreter (TensorFlow's threads do not survive a fork; multiprocessing's
spawn would import the caller's main script again) in its own session, so Ctrl-C at the terminal
reaches only this process, which stops it; it also dies with this process, so that nothing keeps
writing into an output folder that its command has already removed. A worker that dies on its
own (say, out of memory) or is killed by a signal sent to it alone costs time, not the run: what
it had not built is built here.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path

from edgeopt import interrupts
from edgeopt.errors import EdgeoptError, is_disk_full
from edgeopt.machine import usable_cores
from edgeopt.methods.base import Artifact, BuildContext, Method, build_artifact
from edgeopt.methods.repair import NoGuardedVariant
from edgeopt.progress import Progress
from edgeopt.worker_process import die_with as _die_with
from edgeopt.worker_process import how_it_ended as _how_it_ended

log = logging.getLogger(__name__)

# What the worker interpreter runs: the caller's sys.path first, then edgeopt.
_BOOT = ("import sys, json; sys.path[:] = json.loads(sys.argv[3]); "
         "from edgeopt.methods.build import run_build_worker; run_build_worker()")


@dataclass(frozen=True)
class Outcome:
    """One method's build: its artifact and seconds, or why it built nothing."""

    name: str
    artifact: Artifact | None
    seconds: float = 0.0
    not_built: str = ""
    label: str = ""  # what the progress line says of it then


@dataclass
class Built:
    """What a run's build made: the artifacts by method name, in the methods' order."""

    artifacts: dict[str, Artifact] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # Methods that built nothing (a guarded variant whose sibling needs no repair, or for which no
    # repair was found): why.
    not_built: dict[str, str] = field(default_factory=dict)


def build_variants(methods: list[Method], ctx: BuildContext, out_dir: Path, progress: Progress,
                   processes: int = 1, meanwhile: Callable[[], bool] | None = None,
                   check_baseline: Callable[[Artifact], None] | None = None) -> Built:
    """Build every method into out_dir, the first method's chain (chains_of) in this process and,
    with `processes` > 1, each other chain (up to processes - 1 of them) in a worker of its own.
    While this process waits for a worker, it calls `meanwhile` (a short piece of other work a
    call, False when none is left) between looks at the worker. `check_baseline` is called with the
    first method's artifact as soon as it is built (here, first); what it raises stops the build."""
    if getattr(sys, "frozen", False) or not sys.executable:  # no interpreter to start a worker with
        processes = 1
    cores = usable_cores()
    ordered = chains_of(methods, min(processes, cores))
    processes = max(1, min(processes, cores, len(ordered)))
    local = [m for chain in ordered[:1] + ordered[processes:] for m in chain]
    remote = ordered[1:processes]
    ctx.holdout_threads = _holdout_threads(cores, processes if remote else 1)
    outcomes: dict[str, Outcome] = {}

    def done(outcome: Outcome) -> None:
        outcomes[outcome.name] = outcome
        progress.advance(1, f"{outcome.name}: {outcome.label}" if outcome.not_built else outcome.name)

    def build_here(method: Method) -> None:
        outcome = _build_one(method, ctx, out_dir)
        done(outcome)
        interrupts.raise_if_received()  # a Ctrl-C that a converter swallowed stops the build here
        if check_baseline is not None and method is methods[0] and outcome.artifact is not None:
            check_baseline(outcome.artifact)

    workers: list[_Worker] = []
    try:
        for chain in remote:
            workers.append(_Worker(chain))  # registered before it gets its job: stopped whatever happens next
            workers[-1].send(ctx, out_dir)
        for method in local:
            build_here(method)
        for worker in workers:
            for outcome in worker.receive(meanwhile):
                done(outcome)
                if outcome.artifact is not None:
                    ctx.built[outcome.name] = outcome.artifact.path
            rest = [m for m in worker.chain if m.name not in outcomes]
            if rest:  # the worker died: build the rest here, with the cores it no longer uses
                ctx.holdout_threads = _holdout_threads(cores, 1 + sum(w.running() for w in workers))
            for method in rest:
                build_here(method)
    finally:
        for worker in workers:
            worker.stop()
    built = Built()
    for method in methods:
        outcome = outcomes[method.name]
        if outcome.artifact is not None:
            built.artifacts[method.name] = outcome.artifact
            built.seconds[method.name] = outcome.seconds
        else:
            built.not_built[method.name] = outcome.not_built
    return built


def _holdout_threads(cores: int, processes: int) -> int:
    """Threads of a held-out pass while `processes` processes build: 2, or each process's share of
    the cores when that is fewer. Two processes each running one on both cores of a two-core machine
    only fight over them (ONNX Runtime's threads spin while they wait)."""
    return min(2, max(1, cores // processes))


# Runtimes whose calibrated methods (with the guarded ones that repair them) share nothing with
# the others but the source model: LiteRT's share the calibration, kept in memory, and one
# another's files. ONNX Runtime's all start from one exported float file in the work folder, which
# two processes would each export (14 s on the reference model) and write at once.
SPLITS = ("litert",)


def chains_of(methods: list[Method], processes: int) -> list[list[Method]]:
    """The methods as independent chains, each in the order given, the baseline's first: one
    per runtime; and while that leaves a process idle, a runtime's calibrated methods apart from
    its others where it SPLITS. With a retraining method, one chain per runtime: its fine-tuning
    keeps every core busy for minutes, and a second process would only compete with it."""
    chains: dict[str, list[Method]] = {}
    for method in methods:
        chains.setdefault(method.backend, []).append(method)
    ordered = list(chains.values())
    if any(m.retrains for m in methods):
        return ordered
    for chain in [c for c in ordered if c[0].backend in SPLITS]:
        if len(ordered) >= processes:
            break
        calibrated = [m for m in chain if m.calibrated or m.guarded]
        rest = [m for m in chain if m not in calibrated]
        if calibrated and rest:
            at = ordered.index(chain)
            ordered[at:at + 1] = sorted((rest, calibrated), key=lambda c: methods.index(c[0]))
    return ordered


def _build_one(method: Method, ctx: BuildContext, out_dir: Path) -> Outcome:
    """Build one method (recorded in ctx.built for the methods after it)."""
    started = time.perf_counter()
    try:
        artifact = build_artifact(method, ctx, out_dir)
    except NoGuardedVariant as exc:
        return Outcome(method.name, None, not_built=str(exc), label=exc.label)
    ctx.built[method.name] = artifact.path
    return Outcome(method.name, artifact, time.perf_counter() - started)


class _Worker:
    """A process building one runtime's chain, reporting each method as it is done."""

    def __init__(self, chain: list[Method]) -> None:
        self.chain = chain
        read, write = os.pipe()
        try:
            self.process = subprocess.Popen(
                # -P: the current folder does not go before the caller's sys.path
                [sys.executable, "-P", "-c", _BOOT, str(write), str(os.getpid()), json.dumps(sys.path)],
                stdin=subprocess.PIPE, pass_fds=(write,),
                start_new_session=True,  # Ctrl-C at the terminal reaches the parent only, which stops this
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        self._conn = Connection(read, writable=False)

    def send(self, ctx: BuildContext, out_dir: Path) -> None:
        """The job: the method names (the worker's registry has the same methods; a method made
        outside it, e.g. a search candidate's, goes whole), the context without the parent's live
        objects, and without the train split unless a method retrains."""
        from edgeopt.methods.registry import METHODS

        retrains = any(m.retrains for m in self.chain)
        job = ([m.name if METHODS.get(m.name) is m else m for m in self.chain],
               replace(ctx, built=dict(ctx.built), held_out_answers={}, _cache={},
                       train_pixels=ctx.train_pixels if retrains else None,
                       train_labels=ctx.train_labels if retrains else None),
               out_dir)
        assert self.process.stdin is not None
        try:
            with self.process.stdin as stdin:
                pickle.dump(job, stdin, protocol=pickle.HIGHEST_PROTOCOL)
        except BrokenPipeError:
            pass  # it died before reading its job: receive() finds it gone

    def receive(self, meanwhile: Callable[[], bool] | None = None) -> list[Outcome]:
        """Every method the worker built; fewer when it died (said as a warning); raises what
        it raised. Until it reports, `meanwhile` is called while it returns True."""
        done: list[Outcome] = []
        while len(done) < len(self.chain):
            while meanwhile is not None and not self._conn.poll(0):
                if not meanwhile():
                    meanwhile = None
                interrupts.raise_if_received()
            try:
                kind, payload = self._conn.recv()
            except EOFError:
                log.warning("the process building %s %s after %d of them; building the rest here",
                            ", ".join(m.name for m in self.chain), _how_it_ended(self.process.wait()), len(done))
                break
            if kind == "error":
                raise payload
            done.append(payload)
        return done

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """End the worker (at once when it is still building: its output is being discarded)."""
        try:
            self.process.terminate()
        except ProcessLookupError:
            pass
        self.process.wait()
        self._conn.close()


def run_build_worker() -> None:
    """The worker's main: read the job from stdin, send each method's outcome down the pipe
    whose descriptor is argv[1]; die with the parent (argv[2])."""
    from edgeopt.methods.registry import get_method

    results, parent = int(sys.argv[1]), int(sys.argv[2])
    os.set_inheritable(results, False)  # nothing it starts may hold the pipe open after it dies
    # Ctrl-C at the terminal reaches the parent only (another session). A SIGINT sent to this pid
    # ends it as SIGTERM and SIGKILL do -- the parent builds the rest -- not as a failure to report.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with(parent)
    conn = Connection(results, readable=False)
    try:
        names, ctx, out_dir = pickle.load(sys.stdin.buffer)
    except Exception:  # a job cut short: the parent was stopped while sending it
        os._exit(1)
    try:
        try:
            for name in names:
                conn.send(("built", _build_one(name if isinstance(name, Method) else get_method(name), ctx, out_dir)))
        except BaseException as exc:  # every failure goes back to the parent, which raises it
            conn.send(("error", _portable(exc)))
        conn.close()
    except OSError:  # the parent is gone: nobody is left to tell, and nothing to print on its terminal
        os._exit(1)


def _portable(exc: BaseException) -> BaseException:
    """A user's problem (an EdgeoptError, a full disk) as itself, so that the CLI prints its one
    line; anything else is a bug, sent as a RuntimeError that carries the worker's traceback."""
    if isinstance(exc, EdgeoptError) or is_disk_full(exc):
        try:
            return pickle.loads(pickle.dumps(exc))
        except Exception:  # any pickling failure: fall back to the traceback
            pass
    text = "".join(traceback.format_exception(exc))
    return RuntimeError(f"a build worker failed:\n{text}")

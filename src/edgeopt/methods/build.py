"""Build one run's variants: each runtime's methods in order, the runtimes side by side.

Most of a build runs on one core -- TensorFlow's converter and quantization debugger, ONNX
Runtime's quantizer and its calibration bookkeeping -- so on a machine with a second core the
methods of a second runtime are built in a worker process while this one builds the baseline's
runtime. A method depends only on earlier methods of its own runtime (a guarded variant checks
its plain sibling), never on another runtime's, so the two chains are independent and each
keeps the registry's order. The files, and so every measurement of them, are those of building
one after another; only the wall time changes.

The worker is a new interpreter (TensorFlow's threads do not survive a fork) in its own session,
so Ctrl-C at the terminal reaches only the parent, which stops it; it also exits by itself when
its parent is gone, so that nothing keeps writing into an output folder that its command has
already removed.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path

from edgeopt.errors import EdgeoptError
from edgeopt.methods.base import Artifact, BuildContext, Method, build_artifact
from edgeopt.methods.repair import RepairNotNeeded
from edgeopt.progress import Progress

# A method's artifact and its build seconds, or why it was not needed and 0.
Outcome = tuple[Artifact | str, float]


@dataclass
class Built:
    """What a run's build made: the artifacts by method name, in the methods' order."""

    artifacts: dict[str, Artifact] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # Methods that had nothing to do (a guarded variant whose sibling needs no repair): why.
    not_needed: dict[str, str] = field(default_factory=dict)


def build_variants(methods: list[Method], ctx: BuildContext, out_dir: Path, progress: Progress,
                   processes: int = 1) -> Built:
    """Build every method into out_dir, the first method's runtime in this process and, with
    `processes` > 1, each other runtime (up to processes - 1 of them) in a worker of its own."""
    chains: dict[str, list[Method]] = {}
    for method in methods:
        chains.setdefault(method.backend, []).append(method)
    ordered = list(chains.values())
    processes = max(1, min(processes, os.cpu_count() or 1, len(ordered)))
    local = [m for chain in ordered[:1] + ordered[processes:] for m in chain]
    remote = ordered[1:processes]
    # Two processes each running a held-out pass on both cores of a two-core machine only fight
    # over them (ONNX Runtime's threads spin while they wait): each gets its share of the cores.
    ctx.holdout_threads = max(1, (os.cpu_count() or 1) // processes) if remote else 2
    results: dict[str, Outcome] = {}
    workers: list[_Worker] = []
    try:
        for chain in remote:
            workers.append(_Worker(chain, ctx, out_dir))
        for method in local:
            results[method.name] = _build_one(method, ctx, out_dir)
            progress.advance(1, method.name)
        for worker in workers:
            for name, result in worker.receive():
                results[name] = result
                if isinstance(result[0], Artifact):
                    ctx.built[name] = result[0].path
                progress.advance(1, name)
    finally:
        for worker in workers:
            worker.stop()
    built = Built()
    for method in methods:
        outcome, seconds = results[method.name]
        if isinstance(outcome, Artifact):
            built.artifacts[method.name] = outcome
            built.seconds[method.name] = seconds
        else:
            built.not_needed[method.name] = outcome
    return built


def _build_one(method: Method, ctx: BuildContext, out_dir: Path) -> Outcome:
    """The method's artifact (recorded in ctx.built for the methods after it) and its build
    seconds, or why it was not needed."""
    started = time.perf_counter()
    try:
        artifact = build_artifact(method, ctx, out_dir)
    except RepairNotNeeded as exc:
        return str(exc), 0.0
    ctx.built[method.name] = artifact.path
    return artifact, time.perf_counter() - started


class _Worker:
    """One process building one runtime's chain, reporting each method as it is done.

    Started as `python -c` rather than through multiprocessing: multiprocessing's spawn imports
    the caller's main module again in the child, so a user's script without a __main__ guard
    would run a second time in it (and hang the first in its write of the job)."""

    def __init__(self, chain: list[Method], ctx: BuildContext, out_dir: Path) -> None:
        import edgeopt

        self.names = [m.name for m in chain]
        read, write = os.pipe()
        env = dict(os.environ)
        package_root = str(Path(edgeopt.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from edgeopt.methods.build import work; work()", str(write), str(os.getpid())],
            stdin=subprocess.PIPE, pass_fds=(write,), env=env,
            start_new_session=True,  # Ctrl-C at the terminal reaches the parent only, which stops this
        )
        os.close(write)
        self._conn = Connection(read, writable=False)
        # The parent's cache holds live objects (a loaded Keras model); the worker makes its own.
        job = (self.names, replace(ctx, built=dict(ctx.built), held_out_answers={}, _cache={}), out_dir)
        assert self._process.stdin is not None
        try:
            with self._process.stdin as stdin:
                pickle.dump(job, stdin, protocol=pickle.HIGHEST_PROTOCOL)
        except BrokenPipeError:
            pass  # it died before reading its job: receive() says so
        except BaseException:  # Ctrl-C while sending it
            self.stop()
            raise

    def receive(self) -> list[tuple[str, Outcome]]:
        """Wait for every method of the chain; raise what the worker raised."""
        done: list[tuple[str, Outcome]] = []
        while len(done) < len(self.names):
            try:
                kind, payload = self._conn.recv()
            except EOFError:
                raise RuntimeError(
                    f"the worker process building {', '.join(self.names)} died (exit code "
                    f"{self._process.wait()}) after {len(done)} of them"
                ) from None
            if kind == "error":
                raise payload
            done.append(payload)
        return done

    def stop(self) -> None:
        """End the worker (at once when it is still building: its output is being discarded)."""
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait()
        self._conn.close()


def work() -> None:
    """The worker's main: read the job from stdin, send each method's outcome down the pipe
    whose descriptor is argv[1], stop when the parent (argv[2]) is gone."""
    from edgeopt.methods.registry import get_method

    conn, parent = Connection(int(sys.argv[1]), readable=False), int(sys.argv[2])
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    try:
        names, ctx, out_dir = pickle.load(sys.stdin.buffer)
    except Exception:  # noqa: BLE001 -- a job cut short: the parent was stopped while sending it
        os._exit(1)
    try:
        try:
            for name in names:
                conn.send(("built", (name, _build_one(get_method(name), ctx, out_dir))))
        except BaseException as exc:  # noqa: BLE001 -- every failure goes back to the parent, which raises it
            conn.send(("error", _portable(exc)))
        conn.close()
    except OSError:  # the parent is gone: nobody is left to tell, and nothing to print on its terminal
        os._exit(1)


def _portable(exc: BaseException) -> BaseException:
    """A user's problem (an EdgeoptError) as itself, so that the CLI prints its one line; anything
    else is a bug, sent as a RuntimeError that carries the worker's traceback."""
    if isinstance(exc, EdgeoptError):
        try:
            return pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 -- any pickling failure: fall back to the traceback
            pass
    text = "".join(traceback.format_exception(exc))
    return RuntimeError(f"a build worker failed:\n{text}")


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)

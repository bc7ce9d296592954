"""The trials on Ray Tune: one trial per candidate, successive halving (ASHA) on the validation
loss after each epoch, every finished trial recorded in the search's ledger as it ends.

Ray is imported here only, inside the functions (edgeopt --help, the objective and the device
side never load it). A local Ray is started with this machine's cores and an object store sized
to the trials' data (the train and validation pixels, the teacher's answers and weights, shipped
once to each node through it); `ray_address` joins a running cluster instead, whose nodes must
have edgeopt installed and see the search's output folder at the same path (each trial writes
its network there).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt import interrupts
from edgeopt.errors import BackendUnavailableError, ConfigError
from edgeopt.machine import usable_cores
from edgeopt.progress import Progress
from edgeopt.results import Trial
from edgeopt.search.distill import HISTORY_FILE, TrialData
from edgeopt.search.ledger import Ledger, student_dir, trial_record
from edgeopt.search.space import Candidate, SearchConfig

# The metric successive halving compares (cross-entropy to the labels on the validation images):
# smoother than accuracy on a few hundred images, where one image moves it by half a point.
METRIC = "val_loss"
# The object store holds the trials' data once; Ray refuses less than 75 MiB.
MIN_OBJECT_STORE = 96 * 1024**2


@dataclass(frozen=True)
class Payload:
    """What every trial reads: the data, the starting weights by init and the channel ranking."""

    data: TrialData
    # "teacher" -> the teacher's weights; "backbone:<alpha>" -> a backbone file's.
    weights: dict[str, dict[str, list[np.ndarray]]]
    ranking: dict[str, np.ndarray] | None
    config: SearchConfig

    def nbytes(self) -> int:
        arrays = [v for v in vars(self.data).values() if isinstance(v, np.ndarray)]
        arrays += [a for w in self.weights.values() for layer in w.values() for a in layer]
        return int(sum(a.nbytes for a in arrays))


def weights_key(candidate: Candidate) -> str:
    return "teacher" if candidate.init == "teacher" else f"backbone:{candidate.alpha:g}"


def require_ray() -> None:
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.tune") is None:
        raise BackendUnavailableError("edgeopt search runs its trials on Ray Tune; pip install 'edgeopt[search]'")


def train_one(config: dict[str, Any], payload: Payload) -> None:
    """The trainable: one candidate, reporting after each epoch (runs in a Ray worker)."""
    import ray
    from ray import tune

    from edgeopt.search.distill import fit_candidate

    spec = config["trial"]
    candidate = Candidate.from_dict(spec["candidate"])
    node_id = ray.get_runtime_context().get_node_id()
    node_ip = ray.util.get_node_ip_address()

    def report(figures: dict[str, Any]) -> None:
        tune.report({**figures, "node_id": node_id, "node_ip": node_ip})

    fit_candidate(candidate, payload.data, payload.config.distill, payload.weights[weights_key(candidate)], payload.ranking,
                  Path(spec["out_dir"]), report, threads=int(spec["threads"]))


def _history(folder: Path) -> tuple[list[dict[str, Any]], int]:
    import json

    try:
        raw = json.loads((folder / HISTORY_FILE).read_text())
        return list(raw.get("epochs", [])), int(raw.get("parameters", 0))
    except (OSError, ValueError):
        return [], 0


def _error_of(trial: Any) -> str:
    """The last line of a failed trial's error, as Ray keeps it."""
    for attr in ("error_msg", "error_message"):
        text = getattr(trial, attr, None)
        if text:
            return str(text).strip().splitlines()[-1][:300]
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        lines = Path(path).read_text(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else "failed"
    return "failed (see the Ray logs)"


def _ledger_callback(out: Path, by_name: dict[str, Candidate], epochs: int, ledger: Ledger, progress: Progress,
                     recorded: dict[str, Trial], now: Callable[[], float], deadline: float | None) -> Any:
    from ray.tune import Callback

    class Recorder(Callback):  # type: ignore[misc]
        """Writes each finished trial to the ledger and shows the search's state."""

        best: tuple[float, str, float] | None = None
        started: set[str] = set()

        def _status(self) -> str:
            done = sum(t.status == "completed" for t in recorded.values())
            stopped = sum(t.status != "completed" for t in recorded.values())
            best = f"; best so far {self.best[1]} (val loss {self.best[0]:.3f}, acc {100 * self.best[2]:.1f}%)" if self.best else ""
            return f"{done} done, {len(self.started) - len(recorded)} running, {stopped} stopped{best}"

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.started.add(trial.config["trial"]["candidate_name"])
            progress.advance(0, self._status())

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
            name = trial.config["trial"]["candidate_name"]
            if self.best is None or result[METRIC] < self.best[0]:
                self.best = (float(result[METRIC]), name, float(result["val_accuracy"]))
            progress.advance(1, f"{name} epoch {result['epoch']}: val acc {100 * result['val_accuracy']:.1f}% | {self._status()}")

        def _record(self, trial: Any, status: str, note: str = "") -> None:
            name = trial.config["trial"]["candidate_name"]
            candidate = by_name[name]
            history, parameters = _history(student_dir(out, candidate))
            last = trial.last_result or {}
            if status == "stopped" and deadline is not None and now() >= deadline:
                status, note = "cut", "cut by the time budget"
            elif status == "stopped" and int(last.get("epoch", 0)) >= epochs:
                status = "completed"
            record = trial_record(candidate, status, history, epochs, str(last.get("node_ip", "")), str(last.get("node_id", "")),
                                  note, parameters)
            recorded[name] = record
            ledger.record(record)
            progress.advance(max(0, epochs - record.epochs), f"{name} {record.status} | {self._status()}")

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._record(trial, "stopped")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._record(trial, "failed", _error_of(trial))

    return Recorder()


def _signal_handlers() -> tuple[Any, Any] | None:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def _restore(handlers: tuple[Any, Any] | None) -> None:
    import signal

    if handlers is not None:
        for signum, handler in zip((signal.SIGINT, signal.SIGTERM), handlers, strict=True):
            if handler is not None:
                signal.signal(signum, handler)


def start_ray(config: SearchConfig, payload_bytes: int) -> tuple[bool, str, str]:
    """Ray for the trials: the cluster at config.ray_address, else a local one on this machine.
    Returns whether it was started here (and so is stopped here), what it is in words, and the
    temporary folder of a local one (removed when it stops)."""
    import logging

    import ray

    temp_dir = ""
    handlers = _signal_handlers()
    if ray.is_initialized():
        started = False
    elif config.ray_address:
        try:
            ray.init(address=config.ray_address, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot join the Ray cluster at {config.ray_address} ({exc}); start it with 'ray start --head' "
                              "or pass the address 'ray status' shows") from None
        started = True
    else:
        store = max(MIN_OBJECT_STORE, int(payload_bytes * 1.5) + 64 * 1024**2)
        temp_dir = tempfile.mkdtemp(prefix="edgeopt-ray-")
        ray.init(num_cpus=usable_cores(), object_store_memory=store, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, _temp_dir=temp_dir)
        started = True
    _restore(handlers)  # Ray's core installs its own SIGTERM handler, which aborts the process
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = int(ray.cluster_resources().get("CPU", 0))
    where = f"Ray {ray.__version__}, " + (f"cluster {config.ray_address}" if config.ray_address else "local") + \
        f": {len(nodes)} node(s), {cpus} CPU(s)"
    return started, where, temp_dir


def run_trials(pending: list[Candidate], payload: Payload, out: Path, ledger: Ledger, progress: Progress,
               deadline: float | None = None, now: Callable[[], float] = time.monotonic) -> tuple[dict[str, Trial], str]:
    """Train `pending` on Ray Tune; returns the trials this run finished (also in the ledger) and
    the Ray cluster in words. `deadline` (on the `now` clock): trials still running then are cut."""
    require_ray()
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard files per trial
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C and SIGTERM stop the search as edgeopt's
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    config = payload.config
    epochs = config.distill.epochs
    started, where, temp_dir = start_ray(config, payload.nbytes())
    recorded: dict[str, Trial] = {}
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        per_trial = config.cpus_per_trial or max(1, cpus // config.max_concurrent_trials)
        if per_trial > cpus:
            raise ConfigError(f"--cpus-per-trial {per_trial} is more than the {cpus} CPU(s) Ray has; lower it")
        trainable = tune.with_resources(tune.with_parameters(train_one, payload=payload), {"cpu": per_trial})
        space = [{"candidate": c.to_dict(), "candidate_name": c.name, "out_dir": str(student_dir(out, c).resolve()),
                  "threads": per_trial} for c in pending]
        budget = None if deadline is None else deadline - now()
        if budget is not None and budget <= 0:
            return recorded, where
        scheduler = ASHAScheduler(time_attr="epoch", metric=METRIC, mode="min", max_t=epochs,
                                  grace_period=config.grace_epochs, reduction_factor=config.reduction_factor)
        by_name = {c.name: c for c in pending}
        callback = _ledger_callback(out, by_name, epochs, ledger, progress, recorded, now, deadline)
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(space)},
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=config.max_concurrent_trials,
                                        time_budget_s=budget, reuse_actors=False),
            run_config=tune.RunConfig(storage_path=str((out / "search" / "ray").resolve()), name=f"trials-{time.strftime('%Y%m%d-%H%M%S')}",
                                      verbose=0, callbacks=[callback], failure_config=tune.FailureConfig(max_failures=0)),
        )
        progress.start(f"training {len(pending)} candidate(s), up to {epochs} epochs each ({where})", len(pending) * epochs)
        try:
            tuner.fit()
        except BaseException:
            # Ctrl-C or SIGTERM raised inside Ray's native wait comes out as a SystemError: say what it was
            interrupts.raise_if_received()
            raise
        interrupts.raise_if_received()  # Tune may have swallowed it
        progress.finish(f"trials: {sum(t.status == 'completed' for t in recorded.values())} completed, "
                        f"{sum(t.status == 'stopped' for t in recorded.values())} stopped by successive halving, "
                        f"{sum(t.status in ('cut', 'failed') for t in recorded.values())} cut or failed")
        for candidate in pending:  # a trial the budget ended before Tune said so
            if candidate.name not in recorded:
                history, parameters = _history(student_dir(out, candidate))
                record = trial_record(candidate, "cut", history, epochs, note="cut by the time budget" if history else "not started")
                recorded[candidate.name] = record
                ledger.record(record)
    finally:
        if started:
            ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
    return recorded, where


"""A search's state in its output folder: what it is a search of, and every finished trial.

OUT/search/search.json names the teacher, its data and the distillation settings; a search run
again on the same OUT resumes only when they are the same (a trial's meaning depends on them),
and takes every trial the ledger (OUT/search/trials.jsonl, one JSON line appended and synced per
finished trial) holds as done: it is not trained again. A trial cut short by the time budget, or
that failed, is kept for the record and trained again by the next run. No Ray, no TensorFlow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError, OutputExistsError
from edgeopt.results import Trial
from edgeopt.search.space import Candidate

STATE_DIR = "search"
FINGERPRINT_FILE = "search.json"
LEDGER_FILE = "trials.jsonl"
STUDENTS_DIR = "students"
# Trials the next run takes as done; the others ("cut", "failed") it trains again.
DONE = ("completed", "stopped")


def state_dir(out: Path) -> Path:
    return Path(out) / STATE_DIR


def student_dir(out: Path, candidate: Candidate) -> Path:
    """Where a trial writes its network (model.keras) and history."""
    return state_dir(out) / STUDENTS_DIR / candidate.name


def check_fingerprint(out: Path, fingerprint: dict[str, Any]) -> bool:
    """Whether OUT holds a search of the same teacher, data and distillation (True: resume it).
    False when OUT has no search yet; a search of something else is refused."""
    path = state_dir(out) / FINGERPRINT_FILE
    if not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text())
    except ValueError:
        stored = None
    wanted = json.loads(json.dumps(fingerprint))
    if stored != wanted:
        changed = sorted(k for k in set(wanted) | set(stored or {}) if (stored or {}).get(k) != wanted.get(k))
        raise OutputExistsError(
            f"{out} holds a search of another teacher, data or distillation (differs in: {', '.join(changed) or 'unreadable'}); "
            "choose another --out, or pass --force to start it over"
        )
    return True


def write_fingerprint(out: Path, fingerprint: dict[str, Any]) -> None:
    folder = state_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{FINGERPRINT_FILE}.tmp"
    tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True))
    os.replace(tmp, folder / FINGERPRINT_FILE)


class Ledger:
    """The finished trials of a search, one JSON line each (the last line about a candidate counts)."""

    def __init__(self, out: Path) -> None:
        self.path = state_dir(out) / LEDGER_FILE

    def trials(self) -> dict[str, Trial]:
        """Every recorded trial by candidate name (a line cut off by a kill is skipped)."""
        found: dict[str, Trial] = {}
        if not self.path.is_file():
            return found
        for line in self.path.read_text().splitlines():
            try:
                trial = Trial.model_validate_json(line)
            except ValueError:
                continue
            found[trial.name] = trial
        return found

    def done(self) -> dict[str, Trial]:
        """The trials the next run does not train again."""
        return {name: t for name, t in self.trials().items() if t.status in DONE}

    def record(self, trial: Trial) -> None:
        if not self.path.parent.is_dir():
            raise ConfigError(f"{self.path.parent} is gone; the search's output folder was removed while it ran")
        with open(self.path, "a") as f:
            f.write(trial.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())


def trial_record(candidate: Candidate, status: str, history: list[dict[str, Any]], epochs_max: int, node_ip: str = "",
                 node_id: str = "", note: str = "", parameters: int = 0) -> Trial:
    """A Trial from a candidate and its per-epoch figures (the last epoch's are its result)."""
    last = history[-1] if history else {}
    return Trial(
        name=candidate.name, resolution=candidate.resolution, alpha=candidate.alpha, keep=candidate.keep, init=candidate.init,
        status=status,  # type: ignore[arg-type]
        epochs=int(last.get("epoch", 0)), val_accuracy=last.get("val_accuracy"), val_loss=last.get("val_loss"),
        val_agreement=last.get("val_agreement"),
        history=[{k: float(v) for k, v in h.items() if isinstance(v, (int, float))} for h in history],
        seconds=float(last.get("seconds", 0.0)), parameters=parameters, node_ip=node_ip, node_id=node_id,
        note=note or (f"stopped after {last.get('epoch', 0)} of {epochs_max} epochs" if status == "stopped" else ""),
    )

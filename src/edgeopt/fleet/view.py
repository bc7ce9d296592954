"""What the fleet page shows, as plain JSON values: each device's health judged against the model the
same device ran before, the fleet's summary, one page of devices (filtered, sorted, sliced on the
server: a browser never holds 10,000 rows), and each channel's rollout -- where it stands and why.

Pure functions of device rows (fleet.overview), rollout states and `now`: no I/O and no clock, so a
test drives them with a simulated one. fleet/page.py serves them as GET /fleet.json.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edgeopt.rollout.policy import ACTIVE, FAILED_OUTCOMES, Criteria, Evidence, RolloutState, decide, percent

# A device whose last report is older than this is "stale" (the agent reports every 300 s by default).
STALE_S = 3600.0
# Worst first: the page's default order. "silent": enrolled, never reported.
LEVELS = ("failed", "degraded", "stale", "silent", "ok", "revoked")
PROBLEMS = frozenset({"failed", "degraded", "stale", "silent"})
_RANK = {level: i for i, level in enumerate(LEVELS)}
MAX_LIMIT = 500
# History events of a rollout that the page lists (the latest ones).
HISTORY_SHOWN = 12


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _figure(window: Mapping[str, Any] | None, key: str) -> float | None:
    value = (window or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def judge(row: Mapping[str, Any], criteria: Criteria) -> dict[str, Any]:
    """A device's health from its latest report, apart from its age: the level, the problems in
    words, and its in-service figures against the model it ran before (the rollout's criteria)."""
    problems: list[str] = []
    level = "ok"
    install = row.get("install") or {}
    active = row.get("release")
    result = install.get("result")
    if result in FAILED_OUTCOMES and (active is None or install["release"] >= active):
        level = "failed"
        problems.append(f"release {install['release']}: {result}" + (f" ({install['detail']})" if install.get("detail") else ""))
    elif result == "download-failed":
        level = "degraded"
        problems.append(f"release {install['release']}: download failed, retrying")
    new, before = row.get("service"), row.get("previous_service")
    health: dict[str, Any] = {"confidence_delta": None, "low_confidence_delta": None, "latency_p90_ratio": None}
    frames = max(1, criteria.min_frames)
    if new and before and new.get("frames", 0) >= frames and before.get("frames", 0) >= frames:
        pairs = (("confidence_delta", "mean_confidence", -criteria.max_confidence_drop, "mean confidence"),
                 ("low_confidence_delta", "low_confidence_share", criteria.max_low_confidence_rise, "low-confidence share"))
        for key, figure, bound, words in pairs:
            a, b = _figure(new, figure), _figure(before, figure)
            if a is None or b is None:
                continue
            health[key] = round(a - b, 4)
            if (a - b < bound) if bound < 0 else (a - b > bound):
                level = level if level == "failed" else "degraded"
                problems.append(f"{words} {a - b:+.2f} against release {before.get('release')}")
        p90, p90_before = _figure(new, "latency_p90_ms"), _figure(before, "latency_p90_ms")
        if p90 is not None and p90_before:
            ratio = p90 / p90_before
            health["latency_p90_ratio"] = round(ratio, 3)
            if ratio > criteria.max_latency_ratio:
                level = level if level == "failed" else "degraded"
                problems.append(f"p90 latency {ratio:.2f}x release {before.get('release')}'s")
    if row.get("reported") is None:
        level = "silent"
        problems.append("enrolled, never reported")
    if row.get("revoked"):
        level = "revoked"
    return {"level": level, "problems": problems, **health}


@dataclass(frozen=True)
class Entry:
    """One device as the page holds it between refreshes: its row (fleet.overview.device_row), the
    judgment apart from age, and when its latest report came (seconds since the epoch)."""

    row: dict[str, Any]
    health: dict[str, Any]
    received_s: float | None

    def level(self, now: float) -> str:
        base = self.health["level"]
        if base in ("failed", "degraded", "revoked") or self.received_s is None or now - self.received_s <= STALE_S:
            return str(base)
        return "stale"

    def shown(self, now: float) -> dict[str, Any]:
        """The row with its age and health as of `now`."""
        level = self.level(now)
        problems = list(self.health["problems"])
        age = None if self.received_s is None else round(now - self.received_s)
        if self.received_s is not None and now - self.received_s > STALE_S and level != "revoked":
            problems.append(f"no report for {_duration(round(now - self.received_s))}")
        return {**self.row, "report_age_s": age, "health": {**self.health, "level": level, "problems": problems}}


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _service(key: str) -> Callable[[Entry], Any]:
    return lambda e: _figure(e.row.get("service"), key)


# Sort keys of the devices table; None sorts last whichever the order.
SORTS: dict[str, Callable[[Entry], Any]] = {
    "device": lambda e: e.row["device_id"],
    "class": lambda e: e.row.get("device_class"),
    "channel": lambda e: e.row.get("channel"),
    "release": lambda e: e.row.get("release"),
    "reported": lambda e: e.received_s,
    "latency": _service("latency_p90_ms"),
    "confidence": _service("mean_confidence"),
    "confidence_delta": lambda e: e.health["confidence_delta"],
}


@dataclass(frozen=True)
class Query:
    """What one page of the devices table asks for (GET /fleet.json's parameters)."""

    # Devices to skip, and how many to return (None: every device, as GET /fleet.json always answered).
    offset: int = 0
    limit: int | None = None
    # "health" (worst first, the default) or a key of SORTS; descending reverses it.
    sort: str = "health"
    descending: bool = False
    # Substring of the device id, class, last error or problems (any case).
    text: str = ""
    # "all", "problems" (failed, degraded, stale, silent) or one level.
    health: str = "all"
    channel: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Query:
        """The query of a request's parameters; ValueError says which one is wrong and what it takes."""
        def whole(name: str, low: int, high: int) -> int | None:
            text = params.get(name)
            if text is None:
                return None
            if not text.isdigit() or not low <= int(text) <= high:
                raise ValueError(f"{name} must be a whole number from {low} to {high}")
            return int(text)

        sort = params.get("sort", "health")
        if sort != "health" and sort not in SORTS:
            raise ValueError(f"sort must be one of health, {', '.join(SORTS)}")
        order = params.get("order", "asc")
        if order not in ("asc", "desc"):
            raise ValueError("order must be asc or desc")
        health = params.get("health", "all")
        if health not in ("all", "problems", *LEVELS):
            raise ValueError(f"health must be all, problems or one of {', '.join(LEVELS)}")
        return cls(offset=whole("offset", 0, 10**9) or 0, limit=whole("limit", 1, MAX_LIMIT), sort=sort,
                   descending=order == "desc", text=params.get("q", "").strip()[:100], health=health,
                   channel=params.get("channel") or None)


def _matches(entry: Entry, query: Query, level: str) -> bool:
    if query.health == "problems" and level not in PROBLEMS or query.health not in ("all", "problems", level):
        return False
    if query.channel is not None and entry.row.get("channel") != query.channel:
        return False
    if query.text:
        row = entry.row
        words = (row["device_id"], row.get("device_class") or "", row.get("last_error") or "", *entry.health["problems"])
        needle = query.text.lower()
        return any(needle in w.lower() for w in words)
    return True


def _ordered(entries: list[tuple[Entry, str]], query: Query) -> list[tuple[Entry, str]]:
    if query.sort == "health":
        return sorted(entries, key=lambda p: (_RANK[p[1]], p[0].row["device_id"]), reverse=query.descending)
    key = SORTS[query.sort]
    known = [p for p in entries if key(p[0]) is not None]
    known.sort(key=lambda p: (key(p[0]), p[0].row["device_id"]), reverse=query.descending)
    return known + sorted((p for p in entries if key(p[0]) is None), key=lambda p: p[0].row["device_id"])


def summary(entries: Sequence[Entry], now: float) -> dict[str, Any]:
    """Devices by health level, and each channel's devices by the release they run."""
    levels = Counter(e.level(now) for e in entries)
    channels: dict[str, Counter[Any]] = {}
    for e in entries:
        if e.row.get("channel") is not None and not e.row.get("revoked"):
            channels.setdefault(e.row["channel"], Counter())[e.row.get("release")] += 1
    return {"devices": len(entries), "levels": {level: levels.get(level, 0) for level in LEVELS},
            "channels": {name: {"devices": sum(c.values()), "releases": [[r, n] for r, n in c.most_common()]}
                         for name, c in sorted(channels.items())}}


def select(entries: Sequence[Entry], query: Query, now: float) -> dict[str, Any]:
    """The devices a query asks for, as of `now`: {total (matching), offset, limit, devices}."""
    chosen = [(e, level) for e in entries if _matches(e, query, level := e.level(now))]
    chosen = _ordered(chosen, query)
    end = len(chosen) if query.limit is None else query.offset + query.limit
    return {"total": len(chosen), "offset": query.offset, "limit": query.limit,
            "sort": query.sort, "order": "desc" if query.descending else "asc",
            "devices": [e.shown(now) for e, _ in chosen[query.offset:end]]}


def rollout_view(state: RolloutState, evidence: Iterable[Evidence], now: float) -> dict[str, Any]:
    """A channel's rollout for people: the stage and its share, the soak left, what `rollout watch`
    would do now and why (or why it stopped), the stage's figures, and its history with its halts."""
    decision = decide(state, evidence, now) if state.status in ACTIVE else None
    soak_left = state.soak_s[state.stage] - (now - state.stage_started) if state.status == "running" else None
    stats = None
    if decision is not None and decision.stats is not None:
        stats = {k: v for k, v in asdict(decision.stats).items() if k != "failed_devices"}
        stats["failure_rate"] = decision.stats.failure_rate
        stats["failed_devices"] = list(decision.stats.failed_devices[:20])
    history = [{"time": _iso(e["time"]), "event": e["event"], "stage": e["stage"] + 1, "reason": e["reason"]}
               for e in state.history]
    return {
        "channel": state.channel, "release": state.release, "previous_release": state.previous_release,
        "status": state.status, "stage": state.stage + 1, "stages": [percent(s) for s in state.stages_ppm],
        "share": percent(state.share_ppm), "share_ppm": state.share_ppm,
        "soak_s": state.soak_s[state.stage], "soak_left_s": None if soak_left is None else max(0, math.ceil(soak_left)),
        "started": _iso(state.started), "stage_started": _iso(state.stage_started),
        "next": decision.action if decision else None, "reason": decision.reason if decision else state.reason,
        "stats": stats, "criteria": asdict(state.criteria),
        "halts": [e for e in history if e["event"] in ("halted", "aborted")],
        "history": history[-HISTORY_SHOWN:],
    }

"""Who a staged rollout reaches: each device's bucket for a release, the share signed into the
channel's metadata, and the stages an operator asks for.

A device's bucket is a stable hash of its id and the release's model sha256, in [0, 1): it is in a
stage when its bucket is below the stage's share. The same device stays in every later stage of the
release, and each release draws a different first 1 %. Shares are whole parts per million (signed
TUF metadata holds no floats). Light: the device imports it.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

PPM = 1_000_000
DEFAULT_STAGES_PPM = (10_000, 50_000, 250_000, PPM)


def bucket_ppm(device_id: str, model_sha256: str) -> int:
    """The device's place in the rollout of this model, in whole parts per million [0, PPM)."""
    digest = hashlib.sha256(f"{model_sha256}/{device_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") * PPM) >> 64


def bucket(device_id: str, model_sha256: str) -> float:
    """The same place as a fraction in [0, 1), for people."""
    return bucket_ppm(device_id, model_sha256) / PPM


def in_share(device_id: str, model_sha256: str, share_ppm: int) -> bool:
    return share_ppm >= PPM or bucket_ppm(device_id, model_sha256) < share_ppm


def model_sha256(target: Any) -> str:
    """The model's own sha256 (the uncompressed one of a zstd target): what identifies a release on a device."""
    custom = target.custom or {}
    plain = custom.get("uncompressed") if custom.get("compression") else None
    return str(plain.get("sha256", "")) if isinstance(plain, dict) else str(target.hashes.get("sha256", ""))


def signed_share_ppm(custom: dict[str, Any] | None) -> int:
    """The share a target's signed custom data grants: PPM without a rollout; 0 (nobody new) when
    the field is malformed, so a broken rollout holds devices rather than widening."""
    rollout = (custom or {}).get("rollout")
    if rollout is None:
        return PPM
    share = rollout.get("share_ppm") if isinstance(rollout, dict) else None
    return share if isinstance(share, int) and not isinstance(share, bool) and 0 <= share <= PPM else 0


def held_back(device_id: str, target: Any, has_model: bool) -> str | None:
    """Why this device does not install the channel's release yet (its signed share does not reach
    the device's bucket), or None. A device without any model is held only by a share of 0: it has
    nothing to keep running."""
    share = signed_share_ppm(target.custom)
    sha = model_sha256(target)
    if share >= PPM or (not has_model and share > 0) or in_share(device_id, sha, share):
        return None
    return (f"release {(target.custom or {}).get('release')} is rolling out to {percent(share)} of devices; this "
            f"device's bucket is {percent(bucket_ppm(device_id, sha))}: it keeps its model until the share reaches it")


def percent(ppm: int) -> str:
    return f"{ppm / 10_000:g} %"


def parse_stages(text: str) -> tuple[int, ...]:
    """'1,5,25,100' (percent) -> shares in ppm; increasing, ending at 100. ValueError says why not."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
        if not all(math.isfinite(v) for v in values):
            raise ValueError
        stages = tuple(round(v * 10_000) for v in values)
    except (ValueError, OverflowError):
        raise ValueError(f"stages {text!r} must be percentages separated by commas, e.g. 1,5,25,100") from None
    if not stages or stages[-1] != PPM or any(not 0 < s <= PPM for s in stages) \
            or any(b <= a for a, b in zip(stages, stages[1:], strict=False)):
        raise ValueError(f"stages {text!r} must increase, each above 0, and end at 100, e.g. 1,5,25,100")
    return stages

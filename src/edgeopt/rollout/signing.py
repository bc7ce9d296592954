"""The stage share in the channel's signed metadata, and the previous model published again.

The share travels as a custom field of the channel's model target, signed by the channel's key:

    "custom": {..., "rollout": {"stage": 1, "share_ppm": 50000, "stages_ppm": [10000, 50000, 250000, 1000000]}}

A mirror or CDN that widens it breaks the channel key's signature and the device refuses the whole
metadata (TUF). One that serves an older share is refused as a rollback by a device that has seen
newer metadata; a device that has not can be served metadata from before a halt until its
timestamp expires -- hence the short timestamp while a rollout runs (Repository.timestamp_expiry,
renewed by renew_timestamp on every `rollout watch` pass). A target without "rollout" reaches every
device, as releases published with `edgeopt publish` always did.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError
from edgeopt.release.keys import channel_role
from edgeopt.release.repository import TARGETS, Repository, _now
from edgeopt.rollout.shares import model_sha256, signed_share_ppm


def rollout_field(stage: int, stages_ppm: tuple[int, ...]) -> dict[str, Any]:
    return {"stage": stage, "share_ppm": stages_ppm[stage], "stages_ppm": list(stages_ppm)}


def channel_model(repository: Repository, channel: str, version: int | None = None) -> tuple[Any, Any, int]:
    """(model target, labels target, channel metadata version) of the channel now, or at `version`."""
    from tuf.api.metadata import Metadata

    if version is None:
        role = repository.load(channel)
    else:
        path = repository.metadata / f"{version}.{channel}.json"
        if not path.is_file():
            raise ConfigError(f"{repository.path} has no {path.name}; the channel's history was removed")
        role = Metadata.from_file(str(path))
    targets = role.signed.targets
    return targets.get(f"{channel}/model"), targets.get(f"{channel}/labels.json"), role.signed.version


def set_share(repository: Repository, keys: Path, channel: str, sha256: str, stage: int,
              stages_ppm: tuple[int, ...]) -> int:
    """Re-sign the channel's release with the share of `stage`; returns the new channel version.
    Refuses when the channel no longer carries the release `sha256` (someone published meanwhile)."""
    with repository._locked():
        role = repository.load(channel)
        target = role.signed.targets.get(f"{channel}/model")
        if target is None or model_sha256(target) != sha256:
            raise ConfigError(f"channel {channel} no longer carries model {sha256[:12]}; the rollout was superseded")
        target.unrecognized_fields["custom"] = {**(target.custom or {}), "rollout": rollout_field(stage, stages_ppm)}
        repository._bump(role, channel, keys, sign_as=channel_role(channel), expiry="channel")
        repository._snapshot_and_timestamp(keys, {channel: role.signed.version})
        return int(role.signed.version)


def publish_again(repository: Repository, keys: Path, channel: str, version: int, reverts: int, reason: str) -> int:
    """Point the channel again at the release it carried in metadata `version` (same files, same
    hashes: devices still running it stay as they are), under the next release number -- TUF never
    lets a version go back. Returns that release number."""
    from tuf.api.metadata import TargetFile

    model, labels, _ = channel_model(repository, channel, version)
    if model is None or labels is None:
        raise ConfigError(f"{channel} had no release in metadata version {version}")
    for target in (model, labels):
        folder, name = target.path.rsplit("/", 1)
        stored = repository.path / TARGETS / folder / f"{target.hashes['sha256']}.{name}"
        if not stored.is_file():
            raise ConfigError(f"{stored} is gone, so release {model.custom.get('release')} cannot be published again; "
                              "publish a working model with 'edgeopt publish'")
    with repository._locked():
        role = repository.load(channel)
        current = role.signed.targets.get(f"{channel}/model")
        number = (current.custom or {}).get("release") if current is not None else 0
        release = number + 1 if isinstance(number, int) and 0 <= number < 2**31 - 1 else 1
        custom = {k: v for k, v in (model.custom or {}).items() if k != "rollout"}
        custom.update(release=release, created=_now().isoformat(),
                      republished={"release": custom.get("release"), "reverts": reverts, "reason": reason[:300]})
        again = TargetFile(length=model.length, hashes=dict(model.hashes), path=model.path,
                           unrecognized_fields={"custom": custom})
        role.signed.targets = {again.path: again, labels.path: labels}
        repository._bump(role, channel, keys, sign_as=channel_role(channel), expiry="channel")
        repository._snapshot_and_timestamp(keys, {channel: role.signed.version})
    return release


def withdraw(repository: Repository, keys: Path, channel: str, sha256: str, stages_ppm: tuple[int, ...]) -> int:
    """A halted first release (nothing to go back to): its share becomes 0, so no further device
    installs it. Returns the channel version."""
    with repository._locked():
        role = repository.load(channel)
        target = role.signed.targets.get(f"{channel}/model")
        if target is None or model_sha256(target) != sha256:
            raise ConfigError(f"channel {channel} no longer carries model {sha256[:12]}")
        target.unrecognized_fields["custom"] = {**(target.custom or {}),
                                                "rollout": {"stage": -1, "share_ppm": 0, "stages_ppm": list(stages_ppm)}}
        repository._bump(role, channel, keys, sign_as=channel_role(channel), expiry="channel")
        repository._snapshot_and_timestamp(keys, {channel: role.signed.version})
        return int(role.signed.version)


def may_go_back_to(target: Any) -> bool:
    """Whether a halt may publish this release again: not when its own rollout was halted or aborted
    with nothing before it (its signed share is 0: withdrawn, proven bad)."""
    return target is not None and signed_share_ppm(target.custom) > 0


def renew_timestamp(repository: Repository, keys: Path) -> bool:
    """Re-sign the timestamp when what is left of it falls below its lifetime (Repository.timestamp_expiry)
    less 45 minutes (or half of it, if shorter) -- 75 min of 2 h: a device's copy keeps more than the
    agent's hour of expiry margin, so its idle checks stay small -- or exceeds the lifetime (it was
    signed before a rollout shortened it). True when it did."""
    lifetime = repository.timestamp_expiry()
    renew_below = lifetime - min(lifetime / 2, dt.timedelta(minutes=45))
    with repository._locked():
        left = repository.load("timestamp").signed.expires - _now()
        if renew_below <= left <= lifetime + dt.timedelta(minutes=1):
            return False
        repository._new_timestamp(keys, repository.load("snapshot").signed.version)
    return True

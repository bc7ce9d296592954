"""The release repository: The Update Framework's metadata (python-tuf's Metadata API) over plain
static files, so any web server (or a CDN, or S3) can serve it.

    REPO/metadata/N.root.json, root.json      root (every version kept: devices walk the chain; the
                                              newest is the trust anchor for new devices)
    REPO/metadata/N.targets.json              delegates each channel to the channel's own key
    REPO/metadata/N.<channel>.json            the channel's current release: <channel>/model and
                                              <channel>/labels.json, with the model's input
                                              contract, metrics and release number as custom data
    REPO/metadata/N.snapshot.json             the versions of all targets metadata
    REPO/metadata/timestamp.json              the snapshot's version; expires in a day (2 h while a
                                              staged rollout runs): a frozen repository is noticed
                                              (renew with `edgeopt refresh`)
    REPO/targets/<channel>/<sha256>.<name>    target files under their hash (consistent snapshots):
                                              a file never changes under a name a device fetches
    REPO/targets/jobs/<job>/<sha256>.<name>   fleet benchmark jobs (signed by the targets role)
    REPO/fleet/                               device reports; never served as a file
    REPO/rollouts/                            staged rollouts (rollout.control); never served either

Every file a device fetches is checked against length and hash in signed metadata, every
metadata file against its role's keys, version (no rollback) and expiry (no freeze).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError, ModelError
from edgeopt.methods.base import sha256_of
from edgeopt.outputs import write_bytes_atomic
from edgeopt.release.keys import TOP_LEVEL_ROLES, channel_role, check_channel, generate_key, key_file, load_signer, retire_key

METADATA = "metadata"
TARGETS = "targets"
FLEET = "fleet"
ROLLOUTS = "rollouts"
# How long each role's signature holds. Root and targets change rarely and are signed by keys kept
# offline; the timestamp is re-signed by `publish` and `refresh` (run refresh at least daily).
EXPIRY = {"root": dt.timedelta(days=365), "targets": dt.timedelta(days=365), "channel": dt.timedelta(days=90),
          "snapshot": dt.timedelta(days=7), "timestamp": dt.timedelta(days=1)}
# `refresh` re-signs a role whose signature expires sooner than this (root and targets only when
# their offline keys are in --keys; otherwise it warns, every day from then on).
RENEW_BEFORE = {"root": dt.timedelta(days=60), "targets": dt.timedelta(days=60), "channel": dt.timedelta(days=30),
                "snapshot": dt.timedelta(days=3), "timestamp": dt.timedelta(hours=12)}
# Models kept on the server per channel (their target files); older ones are pruned.
KEEP_RELEASES = 5
# Release numbers a device accepts (labels for people; the model's hash decides what is new).
MAX_RELEASE = 2**31 - 1
_VERSIONED = re.compile(r"^(\d+)\.([a-z0-9-]+)\.json$")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _serializer() -> Any:
    from tuf.api.serialization.json import JSONSerializer

    return JSONSerializer(compact=False)


class Repository:
    """One release repository folder; every change is signed and written whole (see module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metadata = self.path / METADATA

    # --- reading ---------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.metadata / "timestamp.json").is_file()

    def _latest_version(self, role: str) -> int:
        versions = [int(m.group(1)) for p in self.metadata.glob(f"*.{role}.json") if (m := _VERSIONED.match(p.name))]
        return max(versions, default=0)

    def load(self, role: str) -> Any:
        from tuf.api.metadata import Metadata

        if not self.exists():
            raise ConfigError(f"{self.path} is not a release repository; create it with 'edgeopt repo init {self.path} --keys KEYS'")
        name = "timestamp.json" if role == "timestamp" else f"{self._latest_version(role)}.{role}.json"
        path = self.metadata / name
        if not path.is_file():
            raise ConfigError(f"{self.path} has no metadata for {role!r}; known channels: {', '.join(self.channels())}")
        return Metadata.from_file(str(path))

    def channels(self) -> list[str]:
        targets = self.load("targets").signed
        return sorted(targets.delegations.roles) if targets.delegations and targets.delegations.roles else []

    # --- writing ---------------------------------------------------------------------------
    def _write(self, md: Any, role: str) -> None:
        data = md.to_bytes(_serializer())
        if role == "timestamp":
            write_bytes_atomic(self.metadata / "timestamp.json", data)
            return
        write_bytes_atomic(self.metadata / f"{md.signed.version}.{role}.json", data)
        if role == "root":
            write_bytes_atomic(self.metadata / "root.json", data)  # the newest root, to give new devices

    def _sign(self, md: Any, role: str, keys: Path, extra_signers: tuple[Any, ...] = ()) -> None:
        md.signatures.clear()
        for signer in (load_signer(keys, role), *extra_signers):
            md.sign(signer, append=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: two publishes must not interleave their versions."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _snapshot_and_timestamp(self, keys: Path, changed: dict[str, int]) -> None:
        """Record new versions of targets metadata in a new snapshot, and it in a new timestamp."""
        from tuf.api.metadata import MetaFile

        snapshot = self.load("snapshot")
        for role, version in changed.items():
            snapshot.signed.meta[f"{role}.json"] = MetaFile(version=version)
        self._bump(snapshot, "snapshot", keys)
        self._new_timestamp(keys, snapshot.signed.version)

    def _new_timestamp(self, keys: Path, snapshot_version: int) -> None:
        from tuf.api.metadata import MetaFile

        timestamp = self.load("timestamp")
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot_version)
        self._bump(timestamp, "timestamp", keys)

    def timestamp_expiry(self) -> dt.timedelta:
        """The next timestamp's lifetime: a day, or what a running staged rollout asks for (its
        REPO/rollouts/<channel>.json), so metadata a stale mirror kept from before a halt expires soon."""
        lifetime = EXPIRY["timestamp"]
        for path in (self.path / ROLLOUTS).glob("*.json"):
            try:
                state = json.loads(path.read_text())
                if state.get("status") in ("starting", "running", "paused"):
                    lifetime = min(lifetime, dt.timedelta(seconds=max(60.0, float(state.get("timestamp_expiry_s", 7200)))))
            except (OSError, ValueError, TypeError, AttributeError, OverflowError):
                continue  # a damaged file is said by rollout.control; the timestamp keeps the day
        return lifetime

    def _bump(self, md: Any, role: str, keys: Path, sign_as: str | None = None, expiry: str | None = None) -> None:
        md.signed.version += 1
        md.signed.expires = _now() + (self.timestamp_expiry() if role == "timestamp" else EXPIRY[expiry or role])
        self._sign(md, sign_as or role, keys)
        self._write(md, role)

    # --- operations --------------------------------------------------------------------------
    def init(self, keys: Path, channels: tuple[str, ...]) -> Path:
        """Root, targets (a delegation per channel), empty channels, snapshot and timestamp, v1."""
        from tuf.api.metadata import DelegatedRole, Delegations, Metadata, MetaFile, Root, Snapshot, Targets, Timestamp

        if self.exists():
            raise ConfigError(f"{self.path} is already a release repository")
        if self.path.exists() and any(self.path.iterdir()):
            raise ConfigError(f"{self.path} exists and is not empty; choose a new folder for the repository")
        for channel in channels:
            check_channel(channel)
        with self._locked():
            self.metadata.mkdir(parents=True, exist_ok=True)
            (self.path / TARGETS).mkdir(exist_ok=True)
            signers = {role: load_signer(keys, role) for role in TOP_LEVEL_ROLES}
            channel_signers = {c: load_signer(keys, channel_role(c)) for c in channels}
            root = Metadata(Root(expires=_now() + EXPIRY["root"], consistent_snapshot=True))
            for role, signer in signers.items():
                root.signed.add_key(signer.public_key, role)
            self._sign(root, "root", keys)
            self._write(root, "root")
            targets = Metadata(Targets(expires=_now() + EXPIRY["targets"]))
            targets.signed.delegations = Delegations(
                keys={s.public_key.keyid: s.public_key for s in channel_signers.values()},
                roles={c: DelegatedRole(name=c, keyids=[s.public_key.keyid], threshold=1, terminating=True,
                                        paths=[f"{c}/*"]) for c, s in channel_signers.items()},
            )
            self._sign(targets, "targets", keys)
            self._write(targets, "targets")
            snapshot = Metadata(Snapshot(expires=_now() + EXPIRY["snapshot"]))
            snapshot.signed.meta["targets.json"] = MetaFile(version=1)
            for channel in channels:
                empty = Metadata(Targets(expires=_now() + EXPIRY["channel"]))
                self._sign(empty, channel_role(channel), keys)
                self._write(empty, channel)
                snapshot.signed.meta[f"{channel}.json"] = MetaFile(version=1)
            self._sign(snapshot, "snapshot", keys)
            self._write(snapshot, "snapshot")
            timestamp = Metadata(Timestamp(expires=_now() + EXPIRY["timestamp"], snapshot_meta=MetaFile(version=1)))
            self._sign(timestamp, "timestamp", keys)
            self._write(timestamp, "timestamp")
        return self.metadata / "1.root.json"

    def add_channel(self, keys: Path, channel: str) -> None:
        """Delegate a new channel to a new key (signed by the targets key)."""
        from tuf.api.metadata import DelegatedRole, Metadata, Targets

        check_channel(channel)
        with self._locked():
            if channel in self.channels():
                raise ConfigError(f"channel {channel} already exists in {self.path}")
            signer = load_signer(keys, channel_role(channel)) if key_file(keys, channel_role(channel)).exists() \
                else generate_key(keys, channel_role(channel))
            targets = self.load("targets")
            targets.signed.delegations.keys[signer.public_key.keyid] = signer.public_key
            targets.signed.delegations.roles[channel] = DelegatedRole(
                name=channel, keyids=[signer.public_key.keyid], threshold=1, terminating=True, paths=[f"{channel}/*"])
            self._bump(targets, "targets", keys)
            role = Metadata(Targets(expires=_now() + EXPIRY["channel"]))
            self._sign(role, channel_role(channel), keys)
            self._write(role, channel)
            self._snapshot_and_timestamp(keys, {"targets": targets.signed.version, channel: 1})

    def _store_target(self, source: Path, target_path: str) -> tuple[Any, str]:
        """Copy a file under its hash name; return its TargetFile and its sha256."""
        from tuf.api.metadata import TargetFile

        digest = sha256_of(source)
        folder, name = target_path.rsplit("/", 1)
        stored = self.path / TARGETS / folder / f"{digest}.{name}"
        stored.parent.mkdir(parents=True, exist_ok=True)
        if not stored.is_file():
            tmp = stored.with_name(f".{stored.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(stored)
        return TargetFile(length=source.stat().st_size, hashes={"sha256": digest}, path=target_path), digest

    def publish_release(self, keys: Path, channel: str, model: Path, labels: Path, custom: dict[str, Any],
                        compress: bool = True) -> dict[str, Any]:
        """Point `channel` at a new release (model + labels), signed by the channel's key. With
        `compress`, the model is sent zstd-compressed; the signed metadata carries the
        uncompressed length and sha256, which the device checks after decompressing."""
        check_channel(channel)
        with self._locked():
            if channel not in self.channels():
                raise ConfigError(f"channel {channel} is not in {self.path} (it has: {', '.join(self.channels())}); "
                                  f"add it with 'edgeopt repo add-channel {self.path} {channel} --keys KEYS'")
            role = self.load(channel)
            previous = role.signed.targets.get(f"{channel}/model")
            number = previous.custom.get("release") if previous is not None else 0
            # a release number is a label for people, not a gate: a corrupt one starts the count again
            release = number + 1 if isinstance(number, int) and 0 <= number < MAX_RELEASE else 1
            extra: dict[str, Any] = {}
            if compress:
                from edgeopt.methods.base import compress_for_transfer

                packed = self.path / TARGETS / f".{channel}-model.zst"
                packed.parent.mkdir(parents=True, exist_ok=True)
                packed.write_bytes(compress_for_transfer(model.read_bytes()))
                model_target, _ = self._store_target(packed, f"{channel}/model")
                packed.unlink()
                extra = {"compression": "zstd",
                         "uncompressed": {"length": model.stat().st_size, "sha256": sha256_of(model)}}
            else:
                model_target, _ = self._store_target(model, f"{channel}/model")
            labels_target, _ = self._store_target(labels, f"{channel}/labels.json")
            custom = {**canonical(custom), **extra, "release": release, "channel": channel,
                      "labels": f"{channel}/labels.json", "created": _now().isoformat()}
            model_target.unrecognized_fields["custom"] = custom
            role.signed.targets = {model_target.path: model_target, labels_target.path: labels_target}
            self._bump(role, channel, keys, sign_as=channel_role(channel), expiry="channel")
            self._snapshot_and_timestamp(keys, {channel: role.signed.version})
            self._prune(channel)
        return {"release": release, "version": role.signed.version, "model_sha256": model_target.hashes["sha256"],
                "length": model_target.length, "uncompressed_length": model.stat().st_size}

    def _prune(self, channel: str) -> None:
        """Keep the target files of the channel's last KEEP_RELEASES models, however many metadata
        versions ago they were published (a staged rollout re-signs the channel at every stage, and
        a halt publishes the model before it again)."""
        from tuf.api.metadata import Metadata, Targets

        keep: set[str] = set()
        models: set[str] = set()
        for version in range(self._latest_version(channel), 0, -1):
            path = self.metadata / f"{version}.{channel}.json"
            if not path.is_file():
                continue
            role: Metadata[Targets] = Metadata.from_file(str(path))
            model = role.signed.targets.get(f"{channel}/model")
            if model is not None and model.hashes["sha256"] not in models:
                if len(models) == KEEP_RELEASES:
                    break
                models.add(model.hashes["sha256"])
            for target in role.signed.targets.values():
                keep.add(f"{target.hashes['sha256']}.{target.path.rsplit('/', 1)[1]}")
        folder = self.path / TARGETS / channel
        for file in folder.iterdir() if folder.is_dir() else []:
            if file.name not in keep and not file.name.startswith("."):
                file.unlink()

    def refresh(self, keys: Path) -> tuple[list[str], list[str]]:
        """Re-sign what expires soon: the timestamp always; the snapshot, channels, targets and root
        when due (root and targets need their offline keys in `keys`). Returns (renewed, warnings):
        a warning for each role due whose key is not here, so a daily cron mails it in time."""
        renewed, warnings = [], []
        with self._locked():
            soon = _now()
            changed = {}
            root = self.load("root")
            if root.signed.expires - soon < RENEW_BEFORE["root"]:
                if key_file(keys, "root").is_file():
                    root.signed.version += 1
                    root.signed.expires = soon + EXPIRY["root"]
                    self._sign(root, "root", keys)
                    self._write(root, "root")  # devices follow the chain: N.root.json, signed by the same key
                    renewed.append("root")
                else:
                    warnings.append(f"root expires {root.signed.expires:%Y-%m-%d}: "
                                    "run 'edgeopt refresh' with the root key in --keys before then")
            targets = self.load("targets")
            if targets.signed.expires - soon < RENEW_BEFORE["targets"]:
                if key_file(keys, "targets").is_file():
                    self._bump(targets, "targets", keys)
                    changed["targets"] = targets.signed.version
                    renewed.append("targets")
                else:
                    warnings.append(f"targets expires {targets.signed.expires:%Y-%m-%d}: "
                                    "run 'edgeopt refresh' with the targets key in --keys before then")
            for channel in self.channels():
                role = self.load(channel)
                if role.signed.expires - soon < RENEW_BEFORE["channel"]:
                    self._bump(role, channel, keys, sign_as=channel_role(channel), expiry="channel")
                    changed[channel] = role.signed.version
                    renewed.append(channel)
            snapshot = self.load("snapshot")
            if changed or snapshot.signed.expires - soon < RENEW_BEFORE["snapshot"]:
                self._snapshot_and_timestamp(keys, changed)
                renewed.append("snapshot")
            else:
                self._new_timestamp(keys, snapshot.signed.version)
            renewed.append("timestamp")
        return renewed, warnings

    def rotate(self, keys: Path, role: str) -> Path:
        """Replace a role's key (a lost or compromised one is revoked by this). Top-level roles are
        re-delegated by a new root, signed by the old and the new root key when root itself
        rotates, so devices can follow the chain; a channel is re-delegated by the targets role."""
        with self._locked():
            if role in TOP_LEVEL_ROLES:
                return self._rotate_top_level(keys, role)
            channel = role.removeprefix("channel-")
            if channel not in self.channels():
                raise ConfigError(f"unknown role {role!r}; use one of: {', '.join(TOP_LEVEL_ROLES)}, "
                                  + ", ".join(channel_role(c) for c in self.channels()))
            old = load_signer(keys, channel_role(channel))
            retired = retire_key(keys, channel_role(channel))
            new = generate_key(keys, channel_role(channel))
            targets = self.load("targets")
            delegations = targets.signed.delegations
            delegations.keys.pop(old.public_key.keyid, None)
            delegations.keys[new.public_key.keyid] = new.public_key
            delegations.roles[channel].keyids = [new.public_key.keyid]
            self._bump(targets, "targets", keys)
            channel_md = self.load(channel)
            self._bump(channel_md, channel, keys, sign_as=channel_role(channel), expiry="channel")
            self._snapshot_and_timestamp(keys, {"targets": targets.signed.version, channel: channel_md.signed.version})
            return retired

    def _rotate_top_level(self, keys: Path, role: str) -> Path:
        root = self.load("root")
        old = load_signer(keys, role)
        old_root = load_signer(keys, "root")
        retired = retire_key(keys, role)
        new = generate_key(keys, role)
        root.signed.revoke_key(old.public_key.keyid, role)
        root.signed.add_key(new.public_key, role)
        root.signed.version += 1
        root.signed.expires = _now() + EXPIRY["root"]
        root.signatures.clear()
        root.sign(load_signer(keys, "root"), append=True)
        if role == "root":
            root.sign(old_root, append=True)  # the previous root's threshold must sign the new root too
        self._write(root, "root")
        # re-sign the rotated role's current metadata with its new key
        if role in ("targets", "snapshot"):
            md = self.load(role)
            self._bump(md, role, keys)
            if role == "targets":
                self._snapshot_and_timestamp(keys, {"targets": md.signed.version})
            else:
                self._new_timestamp(keys, md.signed.version)
        elif role == "timestamp":
            self._new_timestamp(keys, self.load("snapshot").signed.version)
        return retired

    def publish_job(self, keys: Path, run_dir: Path, variants: tuple[str, ...] | None = None) -> dict[str, Any]:
        """A fleet benchmark job: the run's results and candidate variants, signed by the targets
        role under jobs/<id>/, and jobs/job.json naming the current job. Agents run it when idle."""
        from edgeopt.results import RESULTS_FILE, load_results, run_folder

        run_dir = run_folder(run_dir)
        results = load_results(run_dir)
        names = list(variants) if variants else [v.name for v in results.variants]
        unknown = [n for n in names if n not in {v.name for v in results.variants}]
        if unknown:
            raise ConfigError(f"{run_dir} has no variant(s) {', '.join(unknown)}")
        if names[0] != results.variants[0].name:
            names.insert(0, results.variants[0].name)  # the baseline is always measured
        results_sha256 = hashlib.sha256((run_dir / RESULTS_FILE).read_bytes()).hexdigest()
        job = results_sha256[:16]
        with self._locked():
            targets = self.load("targets")
            files = {"results": f"jobs/{job}/{RESULTS_FILE}"}
            stored = {files["results"]: self._store_target(run_dir / RESULTS_FILE, files["results"])[0]}
            for name in names:
                variant = results.variant(name)
                path = f"jobs/{job}/{Path(variant.file).name}"
                stored[path] = self._store_target(run_dir / variant.file, path)[0]
                files[name] = path
            descriptor = self.path / TARGETS / "jobs" / f".job-{job}.json"
            descriptor.parent.mkdir(parents=True, exist_ok=True)
            descriptor.write_text(json.dumps({"job": job, "results_sha256": results_sha256, "files": files, "variants": names},
                                             indent=1, sort_keys=True))
            job_target, _ = self._store_target(descriptor, "jobs/job.json")
            descriptor.unlink()
            kept = {p: t for p, t in targets.signed.targets.items() if not p.startswith("jobs/")}
            targets.signed.targets = {**kept, **stored, job_target.path: job_target}
            self._bump(targets, "targets", keys)
            self._snapshot_and_timestamp(keys, {"targets": targets.signed.version})
        return {"job": job, "variants": names}

    def status(self) -> list[tuple[str, int, str]]:
        """(role, version, expires) of every role."""
        roles = ["root", "targets", *self.channels(), "snapshot", "timestamp"]
        return [(r, (md := self.load(r)).signed.version, md.signed.expires.isoformat()) for r in roles]

    def trust_anchor(self) -> Path:
        """The newest root, N.root.json: what a new device must trust. An older root would still
        accept a chain signed from a root key that a rotation retired."""
        if not self.exists():
            raise ConfigError(f"{self.path} is not a release repository; create it with 'edgeopt repo init {self.path} --keys KEYS'")
        return self.metadata / f"{self._latest_version('root')}.root.json"

    def current_release(self, channel: str) -> dict[str, Any] | None:
        target = self.load(channel).signed.targets.get(f"{channel}/model")
        return None if target is None else {"length": target.length, "sha256": target.hashes["sha256"], **target.custom}


def release_custom(run_dir: Path, variant: str | None) -> tuple[Path, Path, dict[str, Any]]:
    """The model file, labels file and the custom metadata of a run's selected (or named) variant."""
    from edgeopt.results import load_results

    results = load_results(run_dir)
    names = [v.name for v in results.variants]
    name = variant or (results.choice.selected if results.choice else "")
    if name not in names:
        raise ConfigError(f"{run_dir} has no variant {name!r}; it has: {', '.join(names)}")
    chosen = results.variant(name)
    model = run_dir / chosen.file
    labels = run_dir / "labels.json"
    if not model.is_file() or not labels.is_file():
        raise ModelError(f"{run_dir} lacks {chosen.file} or labels.json; re-run 'edgeopt optimize'")
    custom = {
        "format": model.suffix.lstrip("."),
        "method": chosen.name,
        "classes": results.model.classes,
        "input": chosen.input.model_dump() if chosen.input else None,
        "metrics": {
            "test_accuracy": chosen.test.accuracy if chosen.test else None,
            "latency_ms_median": chosen.latency.median_ms if chosen.latency else None,
            "threads": results.measure.get("threads"),
            "L": chosen.score.L if chosen.score else None,
            "objective": results.choice.objective.get("form") if results.choice else None,
        },
    }
    return model, labels, canonical(custom)


def canonical(value: Any) -> Any:
    """A JSON value TUF can sign: canonical JSON has no floats, so they become decimal strings
    (readers parse them with float())."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value

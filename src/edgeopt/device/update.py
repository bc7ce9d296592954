"""What the channel offers, verified, and its files fetched into staging.

Trust comes from The Update Framework (python-tuf's ngclient): the device holds a trusted root;
every refresh verifies timestamp, snapshot and targets metadata (signatures, versions: no
rollback; expiry: no freeze; length caps: no endless data), and the channel's model and labels
are fetched only as the channel's key signed them (length and sha256), through the bounded HTTP
of fetch.py.

A release's files go to staging/<sha256>/ (resumable: a cut download goes on from its `.part`
file). A file the device already holds in one of its releases (the model of a release it goes back
to, labels that did not change) is taken from there -- linked, or copied -- when its bytes match the
signed length and sha256, not downloaded again. A zstd model is checked against its signed sha256
as sent, then unpacked, never past its signed uncompressed length, and checked again. What the
network can do -- a short answer, extra bytes, a wrong range, bytes that do not match the signed
hash, a slow server -- is a Retry however often it comes; only the release's own signed bytes
(metadata the device cannot use, a model that matches its signed hash but unpacks to something
else, twice) refuse it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx

from edgeopt.device.config import AgentConfig
from edgeopt.device.faults import Refused, Retry, count_fault, fault_point
from edgeopt.device.fetch import (
    BoundedFetcher,
    EncodedAnswer,
    Incomplete,
    RangeRefused,
    SlowRetrieval,
    deadline,
    download_target,
)
from edgeopt.device.state import RELEASE_RECORD, DeviceState, file_matches

# TUF metadata caps (bytes): far above what a few channels need, far below "endless".
ROOT_MAX_BYTES, TIMESTAMP_MAX_BYTES, SNAPSHOT_MAX_BYTES, TARGETS_MAX_BYTES = 64 * 1024, 16 * 1024, 256 * 1024, 1024 * 1024
# A whole metadata refresh gets the time of this many bytes at the minimum rate (a new root or
# two, timestamp, snapshot, targets and the channel's delegated targets).
METADATA_BUDGET_BYTES = 4 * 1024 * 1024
MODEL_FORMATS = ("tflite", "onnx")
# Largest model a release may unpack to (its signed uncompressed length), bytes.
MAX_MODEL_BYTES = 2 * 1024**3
# Release numbers are labels for people (the model's sha256 decides what is new), bounded so a
# signed but absurd number cannot break the device's reports.
MAX_RELEASE = 2**31 - 1
# Free space left over after a download, so the device never fills its disk with a model.
FREE_SPACE_MARGIN = 16 * 1024 * 1024


def signed_custom(target: Any) -> dict[str, Any]:
    """A target's signed custom data; {} when it is not a JSON object (the checks then refuse the release)."""
    return target.custom if isinstance(target.custom, dict) else {}


def model_sha256(target: Any) -> str:
    """The sha256 of the model itself: the target's, or the signed uncompressed one of a zstd target."""
    custom = signed_custom(target)
    plain = custom.get("uncompressed") if custom.get("compression") else None
    return str(plain.get("sha256", "")) if isinstance(plain, dict) else str(target.hashes.get("sha256", ""))


def release_record(model: Any, labels: Any, release: int, channel: str) -> dict[str, Any]:
    """The release.json of a release: its files as the signed metadata describes them. Raises
    Refused (for good) when that metadata is something the device cannot use."""
    sha = model.hashes["sha256"]
    custom = signed_custom(model)
    fmt = str(custom.get("format", ""))
    if fmt not in MODEL_FORMATS:
        raise Refused(f"its model format {fmt!r} is not one of {', '.join(MODEL_FORMATS)}", permanent=True)
    compression = custom.get("compression")
    if compression not in (None, "zstd"):
        raise Refused(f"its compression {compression!r} is not zstd", permanent=True)
    plain = custom.get("uncompressed") if compression else {"length": model.length, "sha256": sha}
    if not (isinstance(plain, dict) and isinstance(plain.get("length"), int) and 0 < plain["length"] <= MAX_MODEL_BYTES
            and isinstance(plain.get("sha256"), str) and len(plain["sha256"]) == 64):
        raise Refused("its signed uncompressed length or sha256 is malformed", permanent=True)
    return {
        "release": release, "channel": channel, "custom": custom,
        "model": {"file": f"model.{fmt}", "length": plain["length"], "sha256": plain["sha256"]},
        "labels": {"file": "labels.json", "length": labels.length, "sha256": labels.hashes["sha256"]},
        "download": {"length": model.length, "sha256": sha, "compression": compression},
    }


class Channel:
    """One channel of the repository, as this device verifies it and fetches its releases."""

    def __init__(self, config: AgentConfig, state: DeviceState, client: httpx.Client) -> None:
        self.config, self.state, self.client = config, state, client
        self.base, self.limits = config.base, config.limits

    # --- metadata ---------------------------------------------------------------------------
    def _updater(self) -> Any:
        from tuf.ngclient import Updater, UpdaterConfig

        trusted = self.state.root / "tuf" / "root.json"
        # the first time the device trusts the root it was given; later, the chain it has verified
        bootstrap = None if trusted.is_file() else Path(self.config.root).read_bytes()
        return Updater(
            metadata_dir=str(self.state.root / "tuf"), metadata_base_url=f"{self.base}/metadata/",
            target_dir=str(self.state.root / "staging"), target_base_url=f"{self.base}/targets/",
            fetcher=BoundedFetcher(self.client, self.limits), config=UpdaterConfig(
                root_max_length=ROOT_MAX_BYTES, timestamp_max_length=TIMESTAMP_MAX_BYTES,
                snapshot_max_length=SNAPSHOT_MAX_BYTES, targets_max_length=TARGETS_MAX_BYTES),
            bootstrap=bootstrap,
        )

    def current(self) -> tuple[Any, Any, Any]:
        """(updater, model target, labels target) of the channel, verified; raises Refused, Retry,
        or ConnectionError when the repository cannot be reached."""
        from tuf.api import exceptions

        channel = self.config.channel
        try:
            with deadline(self.limits.deadline(METADATA_BUDGET_BYTES), "metadata"):
                updater = self._updater()
                updater.refresh()
                model = updater.get_targetinfo(f"{channel}/model")
                labels_path = str(signed_custom(model).get("labels", "")) if model is not None else ""
                if model is not None and labels_path != f"{channel}/labels.json":
                    raise Refused(f"release names labels {labels_path!r}, not {channel}/labels.json", permanent=True)
                labels = updater.get_targetinfo(labels_path) if model is not None else None
        except exceptions.ExpiredMetadataError as exc:
            raise Refused(f"metadata expired ({exc}): the repository is frozen or was not refreshed") from None
        except exceptions.BadVersionNumberError as exc:
            raise Refused(f"metadata rollback refused ({exc})") from None
        except exceptions.DownloadLengthMismatchError as exc:
            raise Refused(f"metadata longer than allowed ({exc})") from None
        except EncodedAnswer as exc:
            raise Refused(f"metadata refused ({exc})") from None
        except SlowRetrieval as exc:
            raise Retry(f"slow retrieval: {exc}") from None
        except exceptions.DownloadHTTPError as exc:
            raise Retry(f"the repository answered {exc.status_code} for metadata") from None
        except (exceptions.DownloadError, httpx.HTTPError, ConnectionError) as exc:
            raise ConnectionError(str(exc)) from None
        except exceptions.RepositoryError as exc:
            raise Refused(f"metadata does not verify ({type(exc).__name__}: {exc})") from None
        return updater, model, labels

    # --- a release's files --------------------------------------------------------------------
    def stage(self, record: dict[str, Any], model: Any, labels: Any) -> Path:
        """Every file of the release in staging/<sha256>/, each checked against its signed length
        and sha256, with its release.json; raises Retry (or Refused, a fault that repeated)."""
        sha = model.hashes["sha256"]
        model_entry, labels_entry = record["model"], record["labels"]
        compression = record["download"]["compression"]
        staging = self.state.root / "staging" / sha
        self.state.clean_staging(keep=sha)
        staging.mkdir(parents=True, exist_ok=True)
        model_here, labels_here = self._reuse(staging, model_entry), self._reuse(staging, labels_entry)
        reused = [entry["file"] for entry, how in ((model_entry, model_here), (labels_entry, labels_here)) if how == "reused"]
        if reused:
            self.state.log("reused", release=record["release"], files=reused)
        need = ((0 if model_here else model.length + (model_entry["length"] if compression else 0))
                + (0 if labels_here else labels.length))
        if need and self.state.free_bytes() < need + FREE_SPACE_MARGIN:
            raise Retry(f"not enough free space: it needs {need + FREE_SPACE_MARGIN:,} bytes, "
                        f"the device has {self.state.free_bytes():,}")
        if not model_here and compression:
            sent = {"file": model_entry["file"] + ".zst", "length": model.length, "sha256": sha}
            self._fetch(staging, sent, model, sha)
            self._decompress(staging / sent["file"], staging / model_entry["file"], model_entry, sha)
        elif not model_here:
            self._fetch(staging, model_entry, model, sha)
        if not labels_here:
            self._fetch(staging, labels_entry, labels, sha)
        for path in staging.iterdir():  # what an earlier attempt left (a part of a file taken from here after all)
            if path.name in (model_entry["file"], labels_entry["file"]):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        (staging / RELEASE_RECORD).write_text(json.dumps(record, indent=1))
        return staging

    def _reuse(self, staging: Path, entry: dict[str, Any]) -> str | None:
        """'staged' when the file is in staging already; 'reused' when a release the device has
        holds it (a model it goes back to, labels that did not change): linked, or copied where the
        file system cannot link, and kept only when the staged bytes match the signed length and
        sha256 -- a release's folder name or release.json only says where to look. Else None."""
        final = staging / entry["file"]
        if file_matches(final, entry["length"], entry["sha256"]):
            return "staged"
        local = staging / (entry["file"] + ".local")
        for source in self.state.local_copies(entry["length"], entry["sha256"]):
            local.unlink(missing_ok=True)
            try:
                os.link(source, local)
            except OSError:  # no hard links here (FAT), or the file went meanwhile: a copy, when there is room
                if self.state.free_bytes() < entry["length"] + FREE_SPACE_MARGIN:
                    return None
                try:
                    shutil.copyfile(source, local)
                except OSError:
                    local.unlink(missing_ok=True)
                    continue
            if file_matches(local, entry["length"], entry["sha256"]):
                os.replace(local, final)
                return "reused"
            local.unlink(missing_ok=True)
        return None

    def _fetch(self, staging: Path, entry: dict[str, Any], info: Any, sha: str) -> None:
        """One target file into staging, checked against its signed length and sha256."""
        from tuf.api import exceptions

        final = staging / entry["file"]
        if file_matches(final, entry["length"], entry["sha256"]):
            return
        part = staging / (entry["file"] + ".part")
        folder, name = info.path.rsplit("/", 1)
        url = f"{self.base}/targets/{folder}/{entry['sha256']}.{name}"
        try:
            limits = self.limits
            with deadline(limits.deadline(entry["length"]) + limits.timeout_s, url):
                download_target(self.client, url, part, entry["length"], limits,
                                on_first_chunk=lambda: fault_point("download"))
        except SlowRetrieval as exc:
            raise Retry(f"slow retrieval: {exc}") from None
        except (RangeRefused, Incomplete, EncodedAnswer) as exc:
            raise Retry(str(exc)) from None
        except exceptions.DownloadLengthMismatchError as exc:
            raise Retry(f"{entry['file']}: {exc}") from None
        except exceptions.DownloadHTTPError as exc:
            raise Retry(f"{entry['file']}: HTTP {exc.status_code}") from None
        except httpx.HTTPError as exc:
            raise Retry(f"{entry['file']}: transfer cut ({type(exc).__name__}); it resumes") from None
        if not file_matches(part, entry["length"], entry["sha256"]):
            part.unlink(missing_ok=True)
            times = self.state.count_failure(sha, "transfer")  # reported, never a reason to refuse
            raise Retry(f"{entry['file']} does not match its signed sha256 (corrupt or tampered in transit; "
                        f"{times} time{'s' if times > 1 else ''} for this release); it is fetched again from the start")
        os.replace(part, final)

    def _decompress(self, compressed: Path, final: Path, entry: dict[str, Any], sha: str) -> None:
        """The zstd file into the model, never past its signed uncompressed length; it must match
        the signed sha256 of the uncompressed model."""
        import zstandard

        if file_matches(final, entry["length"], entry["sha256"]):
            return
        part = final.with_name(final.name + ".part")
        with open(compressed, "rb") as source, open(part, "wb") as target:
            reader = zstandard.ZstdDecompressor().stream_reader(source)
            written = 0
            try:
                while chunk := reader.read(1 << 20):
                    written += len(chunk)
                    if written > entry["length"]:
                        break
                    target.write(chunk)
            except zstandard.ZstdError:
                written = -1
        if written != entry["length"] or not file_matches(part, entry["length"], entry["sha256"]):
            part.unlink(missing_ok=True)
            compressed.unlink(missing_ok=True)
            # the compressed file matched its signed hash: the release itself is inconsistent
            raise count_fault(self.state, sha, "hash", "the decompressed model does not match its signed sha256",
                              self.config.failures_to_reject)
        os.replace(part, final)
        compressed.unlink()

    def download_signed(self, updater: Any, info: Any, destination: Path) -> str:
        """Any other signed target (a benchmark job's files) through TUF, within its deadline."""
        with deadline(self.limits.deadline(info.length) + self.limits.timeout_s, info.path):
            return str(updater.download_target(info, str(destination)))

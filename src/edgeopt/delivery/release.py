"""Signed releases of a chosen model: Ed25519 keys, manifests, and per-channel pointers.

Repository layout (served as static files by `edgeopt serve`):

    REPO/releases/<version>/model.tflite|.onnx, labels.json, manifest.json, manifest.json.sig
    REPO/channels/<channel>.json, <channel>.json.sig      the signed pointer to the latest release

A signature is Ed25519 over the exact bytes of the file it sits beside. A device trusts only
files that verify against the public key it was given; the pointer carries the manifest's
sha256, the manifest carries the model's and labels' sha256 and size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError, ModelError, OutputExistsError
from edgeopt.outputs import write_bytes_atomic

PRIVATE_KEY_FILE = "edgeopt-release.key"
PUBLIC_KEY_FILE = "edgeopt-release.pub"
MANIFEST = "manifest.json"
SIG_SUFFIX = ".sig"
# File names a manifest may name: plain names, never a path (a device joins them to its own folders).
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CHANNEL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class SignatureError(Exception):
    """A file does not verify against the trusted public key, or is malformed."""


@dataclass(frozen=True)
class Release:
    version: int
    channel: str
    folder: Path
    manifest: dict[str, Any]


def generate_keys(out: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair; the private key file is readable by its owner only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise OutputExistsError(f"{path} already exists; keys are never overwritten, choose another --out")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


def load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read private key {path} ({exc}); make one with 'edgeopt keys generate'") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key; make one with 'edgeopt keys generate'")
    return key


def load_public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read public key {path} ({exc}); pass the .pub file from 'edgeopt keys generate'") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def sign(private_key: Any, data: bytes) -> bytes:
    return private_key.sign(data).hex().encode()


def verify(public_key: Any, data: bytes, signature: bytes) -> dict[str, Any]:
    """Return the JSON document `data` if `signature` is valid for it; else raise SignatureError."""
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(bytes.fromhex(signature.decode().strip()), data)
    except (InvalidSignature, ValueError, UnicodeDecodeError):
        raise SignatureError("signature does not verify against the trusted public key") from None
    try:
        document = json.loads(data)
    except ValueError:
        raise SignatureError("signed document is not JSON") from None
    if not isinstance(document, dict):
        raise SignatureError("signed document is not a JSON object")
    return document


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"file": path.name, "sha256": sha256_bytes(data), "size_bytes": len(data)}


def latest_version(repo: Path) -> int:
    releases = repo / "releases"
    versions = [int(p.name) for p in releases.iterdir() if p.name.isdigit()] if releases.is_dir() else []
    return max(versions, default=0)


def check_manifest(manifest: dict[str, Any]) -> None:
    """Refuse a manifest whose fields a device cannot trust (before touching any file)."""
    try:
        version = manifest["version"]
        files = [manifest["model"], manifest["labels"]]
        if not isinstance(version, int) or version < 1:
            raise SignatureError(f"manifest version {version!r} is not a positive integer")
        for entry in files:
            name = entry["file"]
            if not isinstance(name, str) or not SAFE_NAME.match(name) or name in (".", ".."):
                raise SignatureError(f"manifest names a file {name!r} that is not a plain file name")
            if not isinstance(entry["size_bytes"], int) or entry["size_bytes"] <= 0:
                raise SignatureError(f"manifest size of {name} is not a positive integer")
            if not re.fullmatch(r"[0-9a-f]{64}", str(entry["sha256"])):
                raise SignatureError(f"manifest sha256 of {name} is malformed")
    except (KeyError, TypeError):
        raise SignatureError("manifest lacks version, model or labels entries") from None


def publish(
    run_dir: Path, repo: Path, private_key_path: Path, channel: str = "stable", variant: str | None = None
) -> Release:
    """Add the optimize run's selected model (or another of its variants) as the next release
    and point `channel` at it."""
    if not CHANNEL_NAME.match(channel):
        raise ConfigError(f"channel {channel!r} must be lowercase letters, digits and '-' (e.g. stable)")
    key = load_private_key(private_key_path)
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
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "releases").mkdir(exist_ok=True)
    (repo / "channels").mkdir(exist_ok=True)
    version = latest_version(repo) + 1
    staging = Path(tempfile.mkdtemp(prefix=".release-", dir=repo / "releases"))
    try:
        shutil.copyfile(model, staging / f"model{model.suffix}")
        shutil.copyfile(labels, staging / "labels.json")
        manifest = {
            "version": version,
            "channel": channel,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": _file_entry(staging / f"model{model.suffix}"),
            "labels": _file_entry(staging / "labels.json"),
            "input": chosen.graph.input.model_dump() if chosen.graph else None,
            "input_contract": chosen.input.model_dump() if chosen.input else None,
            "classes": results.model.classes,
            "chosen_by": {
                "method": chosen.name,
                "objective": results.choice.objective["form"] if results.choice else "",
                "L": chosen.score.L if chosen.score else None,
                "test_accuracy": chosen.test.accuracy if chosen.test else None,
                "latency_ms_median": chosen.latency.median_ms if chosen.latency else None,
                "threads": results.measure.get("threads"),
                "size_bytes": chosen.size_bytes,
            },
        }
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        (staging / MANIFEST).write_bytes(data)
        (staging / (MANIFEST + SIG_SUFFIX)).write_bytes(sign(key, data))
        os.replace(staging, repo / "releases" / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    pointer = {
        "channel": channel,
        "version": version,
        "manifest": f"releases/{version}/{MANIFEST}",
        "manifest_sha256": sha256_bytes(data),
    }
    pointer_bytes = json.dumps(pointer, indent=1, sort_keys=True).encode()
    write_bytes_atomic(repo / "channels" / f"{channel}.json{SIG_SUFFIX}.next", sign(key, pointer_bytes))
    write_bytes_atomic(repo / "channels" / f"{channel}.json.next", pointer_bytes)
    # The pointer and its signature change together as far as a reader can tell: a reader that
    # sees a mismatched pair gets a failed verification and simply retries later.
    os.replace(repo / "channels" / f"{channel}.json.next", repo / "channels" / f"{channel}.json")
    os.replace(repo / "channels" / f"{channel}.json{SIG_SUFFIX}.next", repo / "channels" / f"{channel}.json{SIG_SUFFIX}")
    return Release(version, channel, repo / "releases" / str(version), manifest)


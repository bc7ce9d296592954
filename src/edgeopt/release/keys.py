"""The release side's signing keys: one Ed25519 key per TUF role, kept as PEM files (mode 0600).

    KEYS/root.key        signs root.json (which key signs each top-level role). Keep it offline: it
                         is needed only to set up the repository and to rotate a top-level key.
    KEYS/targets.key     signs targets.json: which key may sign which channel (delegations)
    KEYS/snapshot.key    signs snapshot.json   } online: every publish and refresh
    KEYS/timestamp.key   signs timestamp.json  }
    KEYS/channel-<name>.key   signs that channel's releases; a beta key cannot sign for stable

A key file is never overwritten; a rotated key is moved to KEYS/retired/.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError, OutputExistsError

TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")
CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def check_channel(channel: str) -> str:
    if not CHANNEL_NAME.match(channel):
        raise ConfigError(f"channel {channel!r} must be lowercase letters, digits and '-', starting with a letter (e.g. stable)")
    return channel


def key_file(keys: Path, role: str) -> Path:
    """The key file of a top-level role, or of a channel (role "channel-<name>")."""
    return Path(keys) / f"{role}.key"


def channel_role(channel: str) -> str:
    return f"channel-{check_channel(channel)}"


def generate_key(keys: Path, role: str) -> Any:
    """Write a new Ed25519 key for `role`; refuse to overwrite one. Returns its signer."""
    from securesystemslib.signer import CryptoSigner

    path = key_file(keys, role)
    if path.exists():
        raise OutputExistsError(f"{path} already exists; keys are never overwritten (rotate with 'edgeopt keys rotate')")
    Path(keys).mkdir(parents=True, exist_ok=True)
    signer = CryptoSigner.generate_ed25519()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_bytes)
    return signer


def generate_keys(keys: Path, channels: tuple[str, ...] = ("stable",)) -> list[Path]:
    """Keys for every top-level role and for each channel."""
    roles = [*TOP_LEVEL_ROLES, *(channel_role(c) for c in channels)]
    existing = [key_file(keys, r) for r in roles if key_file(keys, r).exists()]
    if existing:
        raise OutputExistsError(f"{existing[0]} already exists; keys are never overwritten, choose another --out")
    for role in roles:
        generate_key(keys, role)
    return [key_file(keys, r) for r in roles]


def load_signer(keys: Path, role: str) -> Any:
    """The signer of a role, from its key file."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    path = key_file(keys, role)
    if not path.is_file():
        hint = " (the offline root key: bring it for this step)" if role == "root" else ""
        raise ConfigError(f"{path} is missing{hint}; pass the --keys folder made by 'edgeopt keys generate'")
    try:
        return CryptoSigner(load_pem_private_key(path.read_bytes(), None))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an Ed25519 private key ({exc}); pass the key made by 'edgeopt keys generate'") from None


def retire_key(keys: Path, role: str) -> Path:
    """Move a role's key file out of the way (after rotation); it is kept, never deleted."""
    retired = Path(keys) / "retired"
    retired.mkdir(exist_ok=True)
    target = retired / f"{role}-{time.strftime('%Y%m%dT%H%M%S')}.key"
    os.replace(key_file(keys, role), target)
    return target

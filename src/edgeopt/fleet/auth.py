"""Who may tell the release side something: per-device signed requests, and operator tokens.

A device holds an Ed25519 private key (a PEM file, mode 0600); the release side keeps only its
public key (enrollment). Every report and benchmark upload carries, in headers, the device id, the
time, a random nonce, the sha256 of the body and a signature over all of them together with the
method and the endpoint. The server checks enrollment, freshness and the signature from the headers
alone -- before it reads the body -- then reads at most the endpoint's cap and checks the body
against its signed hash; the nonce is stored, so the same request is accepted once. Whoever sees a
request in transit (a logging mirror or proxy) can neither replay it nor forge another: there is
no secret on the wire.

The signed endpoint is the path below the server's base URL ("/status", "/bench"), so the report
endpoint can sit behind a reverse proxy under any prefix.

Operators read fleet data with a bearer token (`edgeopt fleet add-operator`); the server keeps its
sha256. It only reads, and goes to `edgeopt serve` directly (loopback, or TLS in front of it),
never through a mirror.

Light on purpose: the device imports this module; it needs only `cryptography`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError, OutputExistsError

HEADER_DEVICE = "X-Edgeopt-Device"
HEADER_TIME = "X-Edgeopt-Time"
HEADER_NONCE = "X-Edgeopt-Nonce"
HEADER_BODY_SHA256 = "X-Edgeopt-Content-SHA256"
HEADER_SIGNATURE = "X-Edgeopt-Signature"
# The first line of every signed message: a signature made for anything else never verifies here.
SCHEME = b"edgeopt-device-request-v1"
# A request is fresh when its time is within this many seconds of the server's clock (either side).
MAX_SKEW_S = 300
PUBLIC_KEY_PREFIX = "ed25519:"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENDPOINT = re.compile(r"^/[a-z][a-z0-9/._-]{0,63}$")


class Unauthenticated(Exception):
    """A request whose credentials do not check out; the message says which check failed."""


class Replayed(Unauthenticated):
    """A signed request whose nonce was used before: a replay (or a device that repeats nonces)."""

    def __init__(self, device_id: str) -> None:
        super().__init__(f"replayed request: {device_id} already used this nonce")


# --- device keys -------------------------------------------------------------------------------

def generate_device_key(path: Path) -> str:
    """Write a new Ed25519 private key to `path` (PEM, mode 0600, never over an existing file);
    return its public key as text for enrollment."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists; a device key is never overwritten: choose another file") from None
    except OSError as exc:
        raise ConfigError(f"cannot write the device key to {path}: {exc.strerror}; choose a writable folder") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_key_text(key)


def load_device_key(path: Path) -> Any:
    """The Ed25519 private key in `path` (from 'edgeopt fleet enroll --out' or 'edgeopt device keygen')."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read the device key {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key; make one with 'edgeopt device keygen' "
                          "or 'edgeopt fleet enroll --out'") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key; make one with 'edgeopt device keygen'")
    return key


def public_key_text(key: Any) -> str:
    """A private key's public half as one line: 'ed25519:' and the 32 raw bytes in base64."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> bytes:
    """The 32 raw bytes of a public key written by public_key_text."""
    value = text.strip()
    if value.startswith(PUBLIC_KEY_PREFIX):
        value = value[len(PUBLIC_KEY_PREFIX):]
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{text.strip()[:80]!r} is not an Ed25519 public key; pass what 'edgeopt device keygen' "
                          "printed (ed25519:<44 characters>)")
    return raw


# --- signing and checking requests ---------------------------------------------------------------

def signed_message(method: str, endpoint: str, device_id: str, time_s: int, nonce: str, body_sha256: str) -> bytes:
    """What the signature covers, one field a line (no field may hold a newline)."""
    fields = (method.upper(), endpoint, device_id, str(time_s), nonce, body_sha256)
    return b"\n".join([SCHEME, *(f.encode() for f in fields)])


def sign_request(key: Any, device_id: str, method: str, endpoint: str, body: bytes, now: float,
                 nonce: str | None = None) -> dict[str, str]:
    """The headers that authenticate one request of `device_id` (body included) at time `now`."""
    if not _ENDPOINT.match(endpoint):
        raise ValueError(f"endpoint {endpoint!r} is not a plain path such as /status")
    nonce = nonce or secrets.token_hex(16)
    digest = hashlib.sha256(body).hexdigest()
    time_s = int(now)
    signature = key.sign(signed_message(method, endpoint, device_id, time_s, nonce, digest))
    return {HEADER_DEVICE: device_id, HEADER_TIME: str(time_s), HEADER_NONCE: nonce,
            HEADER_BODY_SHA256: digest, HEADER_SIGNATURE: base64.b64encode(signature).decode()}


@dataclass(frozen=True)
class SignedHeaders:
    """A request's credentials as sent; nothing in it is checked yet except its form."""

    device_id: str
    time_s: int
    nonce: str
    body_sha256: str
    signature: bytes


def read_signed_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """The credentials of a request, or Unauthenticated when one is missing or malformed."""
    lowered = {k.lower(): v for k, v in headers.items()}

    def get(name: str) -> str:
        value = lowered.get(name.lower())
        if value is None:
            raise Unauthenticated(f"no {name} header: requests must be signed with the device's key")
        return value.strip()

    device_id, time_text, nonce, digest, signature_text = (
        get(HEADER_DEVICE), get(HEADER_TIME), get(HEADER_NONCE), get(HEADER_BODY_SHA256), get(HEADER_SIGNATURE))
    if not _DEVICE_ID.match(device_id):
        raise Unauthenticated(f"malformed {HEADER_DEVICE}")
    if not re.fullmatch(r"\d{1,12}", time_text):
        raise Unauthenticated(f"malformed {HEADER_TIME} (whole seconds since 1970 expected)")
    if not _NONCE.match(nonce):
        raise Unauthenticated(f"malformed {HEADER_NONCE}")
    if not _SHA256.match(digest):
        raise Unauthenticated(f"malformed {HEADER_BODY_SHA256}")
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except ValueError:
        signature = b""
    if len(signature) != 64:
        raise Unauthenticated(f"malformed {HEADER_SIGNATURE}")
    return SignedHeaders(device_id, int(time_text), nonce, digest, signature)


def check_fresh(signed: SignedHeaders, now: float, max_skew_s: float = MAX_SKEW_S) -> None:
    """Refuse a request signed too long ago or too far ahead (the device's clock is off, or it is a replay)."""
    off = signed.time_s - now
    if abs(off) > max_skew_s:
        raise Unauthenticated(f"request time is {abs(off):.0f} s {'ahead of' if off > 0 else 'behind'} the server's clock "
                              f"(allowed: {max_skew_s:.0f} s); set the device's clock (NTP)")


def check_signature(public_key: bytes, signed: SignedHeaders, method: str, endpoint: str) -> None:
    """Refuse a signature that the enrolled key did not make over exactly this request's headers."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    message = signed_message(method, endpoint, signed.device_id, signed.time_s, signed.nonce, signed.body_sha256)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signed.signature, message)
    except (InvalidSignature, ValueError):
        raise Unauthenticated("bad signature: not made by this device's enrolled key for this request") from None


def check_body(signed: SignedHeaders, body: bytes) -> None:
    if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), signed.body_sha256):
        raise Unauthenticated("the body does not match its signed sha256 (changed in transit)")


# --- operator tokens -----------------------------------------------------------------------------

def new_operator_token() -> str:
    return "eo_op_" + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the store keeps of a token: its sha256 (a token is random: no salt or stretching needed)."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
    return value[7:].strip() or None if value.lower().startswith("bearer ") else None

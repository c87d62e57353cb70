"""Optional authenticity on top of integrity: HMAC-SHA256 signatures with a shared key.

Hashes catch damage, not forgery: anyone who can write a mirror can write a consistent one.
With a signing key (parameter, or env ``RESUMABLE_SIGNING_KEY``), every checkpoint manifest and
snapshot written carries ``"signature": "hmac-sha256:<hex>"`` over its canonical bytes; since a
manifest names every part by SHA-256, signing it authenticates the whole checkpoint. Reading a
resume source or a snapshot with a key set refuses an unsigned or wrongly signed one.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from .errors import IntegrityError

ENV_KEY = "RESUMABLE_SIGNING_KEY"
PREFIX = "hmac-sha256:"


def resolve_key(key: str | bytes | None = None) -> bytes | None:
    """The signing key: `key` if given ("" disables), else the environment, else None."""
    if key is None:
        key = os.environ.get(ENV_KEY, "")
    if isinstance(key, str):
        key = key.encode("utf-8")
    return key or None


def sign(key: bytes, data: bytes) -> str:
    return PREFIX + hmac.new(key, data, hashlib.sha256).hexdigest()


def state(key: bytes | None, data: bytes, signature: object) -> str:
    """'valid', 'invalid', 'unsigned', or 'unchecked' (no key to check with)."""
    if signature is None:
        return "unsigned"
    if key is None:
        return "unchecked"
    if not isinstance(signature, str) or not hmac.compare_digest(signature, sign(key, data)):
        return "invalid"
    return "valid"


def check(key: bytes | None, data: bytes, signature: object, where: str) -> None:
    """Raise IntegrityError unless `signature` is a valid one of `data` (no-op without key)."""
    if key is None:
        return
    found = state(key, data, signature)
    if found == "unsigned":
        raise IntegrityError(
            f"{where} is not signed, but a signing key is set ({ENV_KEY}): refusing to trust it"
        )
    if found != "valid":
        raise IntegrityError(
            f"{where}: HMAC-SHA256 signature does not match the signing key: it was altered or "
            "signed with another key"
        )

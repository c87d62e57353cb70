"""Every size limit of the checkpoint format, defined once.

The writer refuses, before writing anything, whatever the loader would refuse to read back, so
no acknowledged record can make a checkpoint unopenable; the loader reads these same values at
the moment it checks, so it is always at least as generous as the writer. (Tests lower them by
setting the attributes of this module; code must read them as ``limits.NAME`` at use.)

What a result may weigh: its record (the encoded result plus a few hundred bytes of header) is
at most `MAX_RECORD_BYTES`. Arrays are stored base64-encoded (4/3 of their size), so a result
may hold about 190 MiB of array data. Larger data belongs in a snapshot (resumable.snapshot) or
a file of the user's own whose path (and hash) is the recorded result.
"""

from __future__ import annotations

from .errors import LimitExceededError

MAX_KEY_CHARS = 1 << 20
"""An item key, in characters (the journal header carries it, and the items listing)."""

MAX_RECORD_BYTES = 256 * 1024 * 1024
"""One journal record: its line without the final newline."""

ITEMS_PART_BYTES = 64 * 1024 * 1024
"""An item listing's payload in one record: a longer listing is written as several
``itemspart`` records (each at most this long, unless one entry alone is longer) closed by an
``items`` record (see _itemlist.py). A listing up to this long stays one ``items`` record."""

MAX_SEGMENT_BYTES = 1 << 30
"""One journal segment, sealed or active. A record that would push the active segment past it
is appended to a new segment (the active one is sealed first)."""

MAX_SEGMENTS = 200_000
"""Sealed segments listed by one manifest."""

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""The manifest file."""


def check_key(key: str, where: str) -> None:
    """Refuse an item key longer than `MAX_KEY_CHARS` (before anything is written)."""
    if len(key) > MAX_KEY_CHARS:
        raise LimitExceededError(
            f"the key of {where} is {len(key)} characters; at most {MAX_KEY_CHARS} "
            "(limits.MAX_KEY_CHARS) can be stored: use a shorter key (a hash of the item, say)"
        )


def check_record(size: int, what: str, kind: str = "result") -> None:
    """Refuse a record line (without newline) longer than `MAX_RECORD_BYTES`, with advice
    that fits the record's `kind`."""
    if size > MAX_RECORD_BYTES:
        raise LimitExceededError(
            f"{what} is {size} bytes encoded; a record may be at most {MAX_RECORD_BYTES} bytes "
            f"(limits.MAX_RECORD_BYTES). Nothing was written. {_ADVICE.get(kind, _OTHER)}"
        )


_OTHER = "Record less at once (fewer keys per call, a smaller meta dict)"
_ADVICE = {
    "result": "Keep large data out of results: save it in a snapshot or a file of your own "
    "and record its path",
    "failure": "The failure's message or traceback is too large: raise an exception with a "
    "shorter message",
    "meta": "Keep large data out of meta: save it in a file of your own and record its path",
    "items": "An item listing is split into parts of limits.ITEMS_PART_BYTES: lower it if "
    "it was raised past the record limit; use shorter keys",
    "itemspart": "One item's listing entry is too large: use a shorter key (a hash of the "
    "item, say); items past MAX_PARAMS_BYTES are recorded by fingerprint only",
}


def check_manifest(size: int, segments: int, where: str) -> None:
    """Refuse a manifest that lists too many segments or is too large, before it is written."""
    if segments > MAX_SEGMENTS:
        raise LimitExceededError(
            f"{where}: sealing would list {segments} segments; at most {MAX_SEGMENTS} "
            "(limits.MAX_SEGMENTS). Nothing was written. Start a new sweep (or raise "
            "segment_bytes for the next one)"
        )
    if size > MAX_MANIFEST_BYTES:
        raise LimitExceededError(
            f"{where}: the manifest would be {size} bytes; at most {MAX_MANIFEST_BYTES} "
            "(limits.MAX_MANIFEST_BYTES). Nothing was written. Start a new sweep (or raise "
            "segment_bytes for the next one)"
        )

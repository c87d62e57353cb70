"""The error tree: every error resumable raises derives from `ResumableError`.

Errors that a caller would naturally catch as a builtin also derive from it (a result that
cannot be stored is a `TypeError`, a missing checkpoint a `FileNotFoundError`, ...), so both
`except ResumableError` and the builtin work.
"""

from __future__ import annotations

from collections.abc import Iterable


class ResumableError(Exception):
    """Root of every error raised by resumable."""


class IntegrityError(ResumableError):
    """Stored data is damaged or not what its manifest promises (hash, size, schema, signature)."""


class UnsupportedValueError(ResumableError, TypeError):
    """A result or item holds a value that cannot be stored losslessly."""


class InvalidKeyError(ResumableError, TypeError):
    """An item key is not a usable string."""


class DuplicateKeyError(ResumableError, ValueError):
    """Two items share one key."""


class UnknownItemError(ResumableError, ValueError):
    """An item passed to `record()` is not among the sweep's items."""


class AlreadyRecordedError(ResumableError, ValueError):
    """An item already completed was recorded again without a rerun being asked for."""


class SweepMismatchError(ResumableError, ValueError):
    """A checkpoint belongs to a different sweep than the one opening it."""


class ItemsChangedError(ResumableError, ValueError):
    """Items under keys already recorded have different parameters now."""


class CheckpointLockedError(ResumableError):
    """Another live process holds the checkpoint open for writing."""


class CheckpointExistsError(ResumableError, FileExistsError):
    """`resume="never"` but a checkpoint already exists."""


class CheckpointNotFoundError(ResumableError, FileNotFoundError):
    """`resume="must"` (or a read-only tool) found no checkpoint."""


class CheckpointWriteError(ResumableError, OSError):
    """Recording failed (fsync error, disk full, read-only directory); the sweep stops recording."""


class CheckpointClosedError(ResumableError):
    """The sweep was closed, or broken by an earlier write failure."""


class ForeignProcessError(ResumableError):
    """A process other than the one that opened the sweep (a forked child) tried to record."""


class LimitExceededError(ResumableError, ValueError):
    """A key, record, segment or manifest would exceed a limit of the checkpoint format."""


class StorageError(ResumableError, OSError):
    """A path or URL could not be read or written (permission, unreachable, bad URL)."""


class SourceUnreachableError(StorageError):
    """A resume source could not be reached or read; never treated as a fresh start."""


class HistoryConflictError(ResumableError):
    """Two histories of one sweep diverge, or a shorter history would overwrite a longer one."""


class SnapshotMismatchError(ResumableError, ValueError):
    """A snapshot's arrays (names, shapes, dtypes) do not match the state it is loaded into;
    `differences` lists each mismatch."""

    def __init__(self, message: str, differences: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.differences: list[str] = list(differences)


class ConfigurationError(ResumableError, ValueError):
    """An option or environment variable has a value resumable cannot use."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """A path or URL does not exist (HTTP 404, S3 NoSuchKey in an existing bucket, no such file)."""


class ObjectExistsError(StorageError, FileExistsError):
    """A create-only write found the object already there (with other content)."""


class StorageWriteError(CheckpointWriteError, StorageError):
    """A durable local write through a Store failed (fsync, disk full, read-only)."""


class ObjectChangedError(StorageError):
    """A conditional write (compare-and-swap) found the object changed since the version it was
    based on, or created when it was expected absent: another writer got there first."""


class RunError(ResumableError):
    """`sweep.run` cannot run `fn` on its executor at all: `fn` or an item cannot be sent to the
    workers (not picklable), or a worker cannot import `fn`. A problem of the run, not of an
    item: raised at once, and nothing is recorded for it."""


class TooManyFailuresError(ResumableError):
    """`sweep.run` stopped submitting: more items failed in this run than `max_failures` allows
    (the failures and every item that was in flight are recorded)."""

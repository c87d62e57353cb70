"""Undoing what an install of a resumed source left behind when a crash cut it short.

An open calls `recover_interrupted_install` under the writer lock (_dirlock.py), before it loads
the local checkpoint: it puts back the checkpoint the install had set aside.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import _durable as durable
from ._loading import load
from .errors import IntegrityError

log = logging.getLogger(__name__)


def recover_interrupted_install(progress_dir: Path) -> None:
    """Under the writer lock: undo what an install cut short by a crash left behind.

    Installing a resumed source renames the local checkpoint aside (``.NAME.replaced-*``), then
    the verified download (``.NAME.incoming-*``) into place. A crash between the two renames
    can leave no progress directory at all: the checkpoint set aside (if it loads) is put back,
    and a relaunch that resumes from the source fetches the download again. Removing leftovers
    is `remote.collect_leftovers`' business.
    """
    parent = progress_dir.parent
    if progress_dir.exists() or not parent.is_dir():
        return
    aside = [p for p in parent.glob(f".{progress_dir.name}.replaced-*") if p.is_dir()]
    ranked = sorted((_records_in(p), p.name, p) for p in aside)
    if not ranked or ranked[-1][0] < 0:
        return
    best = ranked[-1][2]
    durable.rename_durably(best, progress_dir)
    durable.fsync_dir(parent)
    log.warning(
        "%s was missing after an install cut short by a crash: put back the checkpoint that "
        "install had set aside (%s)",
        progress_dir,
        best.name,
    )


def _records_in(candidate: Path) -> int:
    """Records in a checkpoint set aside; -1 if it is not one (damaged, or no manifest)."""
    try:
        loaded = load(candidate)
    except (IntegrityError, OSError):
        return -1
    return loaded.state.last_seq if loaded is not None else -1

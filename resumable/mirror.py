"""Mirror options, kept at the import path earlier versions taught.

`MirrorOptions` (how often and how the checkpoint is mirrored to a directory or bucket) lives in
the private `resumable._mirror`; import it from the package root
(`from resumable import MirrorOptions`).
This module only keeps `from resumable.mirror import MirrorOptions` working.
"""

from __future__ import annotations

from ._mirror import MirrorOptions

__all__ = ["MirrorOptions"]

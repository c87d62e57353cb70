"""The library's version, from one source: the installed distribution's metadata.

`DISTRIBUTION` is the name the package is installed under (on PyPI); the import name stays
``resumable``. Import this module only where the version is needed: `importlib.metadata` costs a
few milliseconds, which ``import resumable`` does not pay (the root resolves ``__version__``
lazily).
"""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "resumable-sweeps"
"""The distribution (pip) name; the single place to change when it is renamed."""


def install_hint(extra: str) -> str:
    """The pip command that installs the library with an optional `extra` (for messages)."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def _installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()

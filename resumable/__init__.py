"""resumable: long sweeps and simulations that survive preemption.

The public API is what this module exports; everything else may change.
"""

__version__ = "0.1.0"

from .errors import IntegrityError, ResumableError
from .status import SweepStatus
from .sweep import ResumableSweep

__all__ = [
    "IntegrityError",
    "ResumableError",
    "ResumableSweep",
    "SweepStatus",
    "__version__",
]

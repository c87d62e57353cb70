"""The manifest's record of each array of a snapshot, and the sizes its writer and reader share.

`ArrayRecord` is one array as the manifest describes it (member name, dtype, shape, sizes and the
SHA-256 of the whole ``.npy`` member), with its place in a nested graph as a path whose int
mapping keys are `IntKey`s. The streaming writer (`_npz`) makes these records and the verified
reader (`_npzread`) checks members against them. Both slice member data by `CHUNK`, hash arrays
below `INLINE_BELOW` bytes on the calling thread (larger ones on helper threads as `WORKERS`, the
CPUs up to 2, allows), and agree on `MAX_NPY_HEADER_BYTES` (the writer refuses a header the
reader would refuse).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

CHUNK = 1 << 20  # slices small enough to stay in cache between copy, CRC and hash
MAX_NPY_HEADER_BYTES = 64 << 10
WORKERS = max(1, min(2, os.cpu_count() or 1))
INLINE_BELOW = 1 << 20  # arrays smaller than this are hashed on the calling thread


@dataclass(frozen=True)
class IntKey:
    """An int key of a mapping in a graph path (plain ints in a path index lists and tuples).

    Optimizer ``state_dict()``s key their per-parameter state by int (``state[0]``); keeping
    such a key apart from a list index and from the string ``"0"`` lets it load back as an
    int into a mapping. In the manifest it is ``{"int": 0}``."""

    key: int

    def to_json(self) -> dict[str, int]:
        return {"int": self.key}


def path_to_json(path: tuple[str | int | IntKey, ...]) -> list[Any]:
    return [p.to_json() if isinstance(p, IntKey) else p for p in path]


@dataclass(frozen=True)
class ArrayRecord:
    """One array of a snapshot, as its manifest describes it."""

    name: str
    member: str  # zip member name, e.g. "a00003.npy"
    dtype: Any  # numpy descr (dtype_to_descr), JSON-normalized
    shape: tuple[int, ...]
    fortran_order: bool
    nbytes: int  # array data bytes
    size: int  # bytes of the whole .npy member (header + data)
    sha256: str  # of the whole .npy member
    path: tuple[str | int | IntKey, ...]  # place in a nested graph (schema 1 files: (name,))
    dtype_name: str | None = None  # an ml_dtypes dtype stored as raw V<n> bytes ("bfloat16")
    kind: str | None = None  # what the leaf was (torch, int, none, ...): see snapshot._leaves

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "member": self.member,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "fortran_order": self.fortran_order,
            "nbytes": self.nbytes,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.path is not None:
            out["path"] = path_to_json(self.path)
        if self.dtype_name is not None:
            out["dtype_name"] = self.dtype_name
        if self.kind is not None:
            out["kind"] = self.kind
        return out

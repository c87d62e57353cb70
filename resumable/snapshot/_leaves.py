"""Graphs as simulation codes hold them, walked into named leaves, each leaf seen as a numpy array.

A graph is a mapping (nested mappings, lists and tuples inside are walked), or an object with
``state_dict()`` / ``load_state_dict()`` (anywhere in the tree). Each leaf is an array: numpy,
PyTorch tensors, JAX arrays, anything with ``__dlpack__`` or ``__array__``, numpy scalars and
Python scalars. Each leaf has a *path* (mapping keys and list/tuple indices from the root) and a
stable *name*: the key itself for a top-level leaf (so a flat graph keeps the names it always
had), else the path's parts joined by ``/``, each part escaped as in JSON Pointer (``~`` as
``~0``, ``/`` as ``~1``). Mapping keys are strings or ints: an int key (``state[0]`` of a
torch.optim ``state_dict()``) is its own kind of path part (`IntKey`), named ``~i0`` (a string
never escapes to that), so it stays apart from the string ``"0"`` and from list index 0, and
loads back as an int. ``None`` leaves (``foreach=None`` in optimizer param groups) are saved as
empty arrays of kind ``none`` and load back as ``None``.

Saving sees each leaf as a numpy array without a copy where the library allows (a CPU tensor's
``.numpy()``, ``np.from_dlpack``, ``np.asarray``); dtypes numpy lacks (``bfloat16`` and the
float8 types of `ml_dtypes`) are stored as raw ``V<n>`` bytes with their name beside them.

How loading puts arrays back into a graph (in place where it can) is `_graph`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._codec import descr_to_json
from ..errors import UnsupportedValueError
from ._record import IntKey

Path = tuple[str | int | IntKey, ...]
MAX_DEPTH = 64
_ML_DTYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PY_SCALARS = (bool, int, float, complex, str)


@dataclass
class Leaf:
    """One array of a graph: where it sits, and its value as found there."""

    path: Path
    name: str
    value: Any
    kind: str  # numpy | npscalar | py | torch | jax | other


def _escape(part: str | int | IntKey) -> str:
    if isinstance(part, IntKey):
        return f"~i{part.key}"  # "~" is always escaped in strings: never a string key's name
    return str(part).replace("~", "~0").replace("/", "~1")


def path_part(key: Any, path: Path) -> str | IntKey:
    """The path part of a mapping key: strings as they are, ints (optimizer state) as IntKey."""
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return IntKey(int(key))
    raise UnsupportedValueError(
        f"graph keys must be strings or ints, found {key!r:.80} at {name_of(path) or 'root'}"
    )


def part_key(part: str | int | IntKey) -> str | int:
    """The mapping key or list index a path part stands for."""
    return part.key if isinstance(part, IntKey) else part


def name_of(path: Path) -> str:
    """The stable name of a leaf at `path` (see the module docstring)."""
    if len(path) == 1 and isinstance(path[0], str):
        return path[0]
    return "/".join(_escape(p) for p in path)


def is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None)
    )


def _is_torch(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _is_jax(value: Any) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.Array)


def kind_of(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, np.ndarray):
        return "numpy"
    if isinstance(value, np.generic):
        return "npscalar"
    if type(value) in _PY_SCALARS:
        return "py"
    if _is_torch(value):
        return "torch"
    if _is_jax(value):
        return "jax"
    return "other"


def state_of(graph: Any) -> Mapping[str, Any]:
    """The top-level mapping of a graph (its ``state_dict()`` for stateful objects)."""
    if is_stateful(graph):
        state = graph.state_dict()
        if not isinstance(state, Mapping):
            raise UnsupportedValueError(
                f"state_dict() returned {type(state).__name__}, not a mapping"
            )
        return state
    if isinstance(graph, Mapping):
        return graph
    raise UnsupportedValueError(
        "graph must be a mapping of names to arrays (nested mappings, lists and tuples allowed) "
        f"or have state_dict()/load_state_dict(); found {type(graph).__name__}"
    )


def walk(graph: Any, max_leaves: int) -> list[Leaf]:
    """Every leaf of `graph`, depth first in the containers' own order."""
    out: list[Leaf] = []

    def visit(node: Any, path: Path) -> None:
        if len(path) > MAX_DEPTH:
            raise UnsupportedValueError(f"graph is nested deeper than {MAX_DEPTH} levels")
        if path and is_stateful(node):
            node = state_of(node)
        if isinstance(node, Mapping):
            for key, value in node.items():
                visit(value, (*path, path_part(key, path)))
            return
        if not path:
            raise UnsupportedValueError(f"graph must be a mapping, found {type(node).__name__}")
        if type(node) in (list, tuple) or (isinstance(node, tuple) and hasattr(node, "_make")):
            for i, value in enumerate(node):
                visit(value, (*path, i))
            return
        if len(out) >= max_leaves:
            raise UnsupportedValueError(f"a snapshot holds at most {max_leaves} arrays")
        out.append(Leaf(path, name_of(path), node, kind_of(node)))

    visit(state_of(graph), ())
    names: dict[str, Path] = {}
    for leaf in out:
        other = names.setdefault(leaf.name, leaf.path)
        if other != leaf.path:
            raise UnsupportedValueError(
                f"two arrays of the graph would share the name {leaf.name!r} (paths {other!r} "
                f"and {leaf.path!r}); rename one of the keys"
            )
    return out


# --- leaves as numpy ---------------------------------------------------------------------------


def _object_error(name: str, dtype: Any) -> UnsupportedValueError:
    return UnsupportedValueError(
        f"array {name!r} has dtype {dtype} holding Python objects; snapshots never pickle, "
        "convert it to a numeric, string or structured dtype"
    )


_TORCH_ML_DTYPES = {"bfloat16": "bfloat16", "float8_e4m3fn": "float8_e4m3fn",
                    "float8_e5m2": "float8_e5m2"}  # fmt: skip


def _torch_numpy(name: str, t: Any) -> np.ndarray:
    """A CPU tensor's memory as numpy (no copy; a device tensor is copied to the host once)."""
    torch = sys.modules["torch"]
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg()
    dname = str(t.dtype).removeprefix("torch.")
    if dname in _TORCH_ML_DTYPES:
        ml = _ml_dtype(_TORCH_ML_DTYPES[dname], name)
        carrier = torch.int16 if t.element_size() == 2 else torch.int8
        as_ml: np.ndarray = t.view(carrier).numpy().view(ml)
        return as_ml
    try:
        arr: np.ndarray = t.numpy()
        return arr
    except (TypeError, RuntimeError) as exc:
        raise UnsupportedValueError(
            f"array {name!r}: torch dtype {t.dtype} has no numpy equivalent ({exc})"
        ) from None


def _ml_dtype(dname: str, name: str) -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise UnsupportedValueError(
            f"array {name!r} has dtype {dname}, which numpy lacks: install ml_dtypes "
            "(pip install ml_dtypes) to save or load it"
        ) from None
    if not _ML_DTYPE_NAME.fullmatch(dname):
        raise UnsupportedValueError(f"array {name!r}: unknown dtype name {dname!r:.40}")
    t = getattr(ml_dtypes, dname, None)
    try:
        return np.dtype(t) if isinstance(t, type) else np.dtype("O")
    except TypeError:
        return np.dtype("O")


def as_numpy(leaf: Leaf) -> np.ndarray:
    """The leaf's data as a numpy array, sharing its memory where the library allows."""
    value, name = leaf.value, leaf.name
    if isinstance(value, np.ma.MaskedArray):  # np.asarray would silently drop the mask
        raise UnsupportedValueError(
            f"array {name!r} is a masked array; save its data and mask as two arrays"
        )
    if leaf.kind == "none":  # saved as an empty array of kind "none": loads back as None
        return np.empty(0, dtype=np.uint8)
    if leaf.kind == "torch":
        arr = _torch_numpy(name, value)
    elif leaf.kind in ("numpy", "npscalar", "py", "jax"):
        arr = np.asarray(value)
    elif hasattr(value, "__dlpack__") and not hasattr(value, "__array__"):
        try:
            arr = np.from_dlpack(value)
        except (TypeError, ValueError, RuntimeError, BufferError) as exc:
            msg = f"array {name!r}: cannot read it through DLPack: {exc}"
            raise UnsupportedValueError(msg) from None
    else:  # the object's own errors (a lost device, say) propagate as they are
        arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise _object_error(name, arr.dtype)
    return arr


def saved_kind(leaf: Leaf) -> str:
    """What the manifest records of a leaf's kind (a Python scalar by its type)."""
    return type(leaf.value).__name__ if leaf.kind == "py" else leaf.kind


def ml_dtype_name(dtype: np.dtype) -> str | None:
    """The ml_dtypes name of a dtype numpy lacks (``bfloat16``...), else None."""
    mod = getattr(dtype.type, "__module__", "") or ""
    return dtype.name if mod.split(".")[0] == "ml_dtypes" else None


def storage(arr: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(array to write, dtype name): an ml_dtypes array is written as raw ``V<n>`` bytes."""
    dname = ml_dtype_name(arr.dtype)
    if dname is None:
        return arr, None
    return arr.view(f"V{arr.dtype.itemsize}"), dname


def describe(leaf: Leaf) -> tuple[tuple[int, ...], Any, str | None]:
    """(shape, stored descr as JSON, dtype name) of a leaf, for comparing with a manifest."""
    if leaf.kind in ("torch", "jax"):  # metadata only: no copy off a device
        t = leaf.value
        if leaf.kind == "torch":
            arr = _torch_numpy(leaf.name, sys.modules["torch"].empty(0, dtype=t.dtype))
        else:
            arr = np.empty(0, dtype=t.dtype)
        shape = tuple(int(n) for n in t.shape)
    else:
        arr = as_numpy(leaf)
        shape = tuple(int(n) for n in arr.shape)
    stored, dname = storage(arr)
    return shape, descr_to_json(stored.dtype), dname


def logical(arr: np.ndarray, dname: str | None, name: str) -> np.ndarray:
    """A loaded raw array viewed with its ml_dtypes dtype (checked)."""
    if dname is None:
        return arr
    dtype = _ml_dtype(dname, name)
    if dtype.hasobject or dtype.itemsize != arr.dtype.itemsize:
        raise UnsupportedValueError(f"array {name!r}: unknown dtype {dname!r} in this ml_dtypes")
    return arr.view(dtype)

"""Graphs restored in place from a snapshot's arrays: leaves filled where possible, else replaced.

What a graph is, and the paths, names and kinds of its leaves: see `_leaves`.

Loading restores into the graph as it is now (the current leaf's kind wins):
- a writable numpy array (or memmap) is filled *in place*, so references the simulation holds
  (``self.u``) see the loaded state;
- a PyTorch tensor is filled in place (``copy_``, on its own device);
- immutable leaves are replaced in their container by a new value of the same kind: JAX arrays
  (same sharding/device), read-only numpy arrays (a new read-only array), numpy scalars, Python
  scalars; any other ``__array__`` type becomes a numpy array. A replaced leaf inside a tuple
  rebuilds the tuple in its parent; inside an immutable mapping (or as the root) it is refused;
- a ``state_dict()`` object receives ``load_state_dict(d)`` with ``d`` shaped like its
  ``state_dict()``, each value of the same kind as there; saved leaves its state lacks (a fresh
  optimizer has no per-parameter state yet) are added to ``d`` as the kind they were saved as
  (the manifest records each leaf's kind).
Everything is converted before the first write, so a failing conversion leaves the graph as it
was; the writes themselves are plain copies and assignments.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import numpy as np

from ..errors import UnsupportedValueError
from ._leaves import (
    MAX_DEPTH,
    Leaf,
    Path,
    is_stateful,
    kind_of,
    ml_dtype_name,
    name_of,
    part_key,
    path_part,
    state_of,
)


def _new_value(leaf: Leaf, arr: np.ndarray) -> Any:
    """A new value of the leaf's kind holding `arr` (for leaves that are replaced)."""
    value = leaf.value
    if leaf.kind == "none":
        return None
    if leaf.kind == "jax":
        import jax

        return jax.device_put(arr, value.sharding)
    if leaf.kind == "npscalar":
        return arr[()]
    if leaf.kind == "py":
        return type(value)(arr[()].item())
    if leaf.kind == "torch":
        return _torch_from(arr, value)
    out = np.array(arr, copy=True)
    if isinstance(value, np.ndarray) and not value.flags.writeable:
        out.flags.writeable = False
    return out


def _torch_from(arr: np.ndarray, like: Any) -> Any:
    torch = sys.modules["torch"]
    if ml_dtype_name(arr.dtype) is not None:
        carrier = np.int16 if arr.dtype.itemsize == 2 else np.int8
        t = torch.from_numpy(np.ascontiguousarray(arr).view(carrier)).view(like.dtype)
    else:
        t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.to(like.device)


def plan(
    graph: Any, loaded: Mapping[Path, np.ndarray], kinds: Mapping[Path, str | None] | None = None
) -> list[Callable[[], None]]:
    """The writes that restore `loaded` (by path) into `graph`, all values converted already.

    Inside a ``state_dict()`` object, leaves of the snapshot its current state lacks (a fresh
    optimizer has no per-parameter state yet) are added to the dict `load_state_dict` gets,
    rebuilt as the kind they were saved as (`kinds`, by path). Raises (with the graph
    untouched) where a leaf can be neither filled nor replaced.
    """
    writes: list[Callable[[], None]] = []
    used: set[Path] = set()

    def stateful_state(node: Any, path: Path) -> Any:
        new_state = rebuild(state_of(node), path)
        for p, arr in loaded.items():  # in saved order: containers fill in their own order
            if p[: len(path)] == path and p not in used:
                _insert(new_state, p, len(path), _from_saved(arr, (kinds or {}).get(p), p))
        return new_state

    def restore(node: Any, path: Path) -> Any:
        """The value that must stand at `path` afterwards (`node` itself if kept)."""
        if path and is_stateful(node):
            new_state = stateful_state(node, path)
            writes.append(functools.partial(node.load_state_dict, new_state))
            return node
        if isinstance(node, Mapping):
            changed = {
                k: v2
                for k, v in node.items()
                if (v2 := restore(v, (*path, path_part(k, path)))) is not v
            }
            if changed:
                if not isinstance(node, MutableMapping):
                    raise UnsupportedValueError(
                        f"cannot load into {name_of(path) or 'the graph'}: an immutable "
                        f"{type(node).__name__} holding immutable arrays "
                        f"({sorted(map(repr, changed))[:3]})"
                    )
                for k, v in changed.items():
                    writes.append(functools.partial(node.__setitem__, k, v))
            return node
        if isinstance(node, (list, tuple)) and path and not _is_leaf_seq(node):
            new = [restore(v, (*path, i)) for i, v in enumerate(node)]
            if all(a is b for a, b in zip(new, node, strict=True)):
                return node
            if isinstance(node, list):
                for i, (a, b) in enumerate(zip(new, node, strict=True)):
                    if a is not b:
                        writes.append(functools.partial(node.__setitem__, i, a))
                return node
            return node._make(new) if hasattr(node, "_make") else type(node)(new)
        return leaf_value(Leaf(path, name_of(path), node, kind_of(node)))

    def rebuild(node: Any, path: Path) -> Any:
        """A copy of a state_dict's structure with every leaf restored (for load_state_dict)."""
        if isinstance(node, Mapping):
            return {k: rebuild(v, (*path, path_part(k, path))) for k, v in node.items()}
        if isinstance(node, (list, tuple)) and not _is_leaf_seq(node):
            items = [rebuild(v, (*path, i)) for i, v in enumerate(node)]
            return items if isinstance(node, list) else type(node)(items)
        leaf = Leaf(path, name_of(path), node, kind_of(node))
        used.add(path)
        return _new_value(leaf, loaded[path])

    def leaf_value(leaf: Leaf) -> Any:
        arr = loaded[leaf.path]
        value = leaf.value
        if leaf.kind == "numpy" and value.flags.writeable and type(value) is not np.ma.MaskedArray:
            writes.append(functools.partial(np.copyto, value, arr, casting="no"))
            return value
        if leaf.kind == "torch":
            src = _torch_from(arr, value)

            def fill(v: Any = value, s: Any = src) -> None:
                with sys.modules["torch"].no_grad():
                    v.copy_(s)

            writes.append(fill)
            return value
        return _new_value(leaf, arr)

    if is_stateful(graph):
        new_state = stateful_state(graph, ())
        return [lambda: graph.load_state_dict(new_state)]
    restore(graph, ())
    return writes


def _is_leaf_seq(node: Any) -> bool:
    return not (type(node) in (list, tuple) or hasattr(node, "_make"))


def nest(flat: Mapping[Path, Any]) -> dict[str | int, Any]:
    """Rebuild a tree from leaves by path: str and int-key parts make dicts, list/tuple index
    parts make lists."""
    root: dict[Any, Any] = {}
    for path, value in flat.items():
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value

    def listify(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        items = {k: listify(v) for k, v in node.items()}
        if items and set(items) == set(range(len(items))):  # plain ints: list indices
            return [items[i] for i in range(len(items))]
        return {part_key(k): v for k, v in items.items()}

    return {part_key(k): listify(v) for k, v in root.items()}  # the top: always a dict


def stateful_paths(graph: Any) -> list[Path]:
    """The paths of the ``state_dict()`` objects in `graph` (``()`` for the graph itself)."""
    out: list[Path] = []

    def visit(node: Any, path: Path) -> None:
        if len(path) > MAX_DEPTH:
            return
        if is_stateful(node):
            out.append(path)
            return  # leaves below are added to its load_state_dict dict as needed
        if isinstance(node, Mapping):
            for key, value in node.items():
                visit(value, (*path, path_part(key, path)))
        elif type(node) in (list, tuple) or (isinstance(node, tuple) and hasattr(node, "_make")):
            for i, value in enumerate(node):
                visit(value, (*path, i))

    visit(graph, ())
    return out


def _from_saved(arr: np.ndarray, kind: str | None, path: Path) -> Any:
    """A new value for a saved leaf the current graph lacks, of the kind it was saved as."""
    if kind == "none":
        return None
    if kind in ("bool", "int", "float", "complex", "str"):
        if arr.shape != ():
            raise UnsupportedValueError(f"{name_of(path)!r}: a {kind} saved with shape {arr.shape}")
        return {"bool": bool, "int": int, "float": float, "complex": complex, "str": str}[kind](
            arr[()].item()
        )
    if kind == "npscalar":
        return arr[()]
    if kind == "torch":
        import torch  # the state_dict object is a torch one: torch is installed

        dname = ml_dtype_name(arr.dtype)
        if dname is not None:
            carrier = np.int16 if arr.dtype.itemsize == 2 else np.int8
            t = torch.from_numpy(np.array(arr).view(carrier))
            return t.view(getattr(torch, dname))
        return torch.from_numpy(np.array(arr))
    if kind == "jax":
        import jax.numpy as jnp

        return jnp.asarray(arr)
    return np.array(arr, copy=True)


def _insert(state: Any, path: Path, start: int, value: Any) -> None:
    """Put `value` at `path[start:]` into the plain dicts and lists of `state` (from rebuild)."""
    node = state
    for i in range(start, len(path)):
        part, last = path[i], i == len(path) - 1
        if isinstance(part, int):  # a list index
            if not isinstance(node, list) or part > len(node):
                raise UnsupportedValueError(
                    f"cannot add the saved {name_of(path)!r} to the state being loaded: "
                    f"{name_of(path[:i]) or 'its parent'} is not a list of at least {part} items"
                )
            if part == len(node):
                node.append(value if last else ([] if isinstance(path[i + 1], int) else {}))
            elif last:
                node[part] = value
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise UnsupportedValueError(
                    f"cannot add the saved {name_of(path)!r} to the state being loaded: "
                    f"{name_of(path[:i]) or 'its parent'} is not a mapping"
                )
            key = part_key(part)
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, [] if isinstance(path[i + 1], int) else {})

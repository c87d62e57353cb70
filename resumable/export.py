"""Export completed results to HDF5 (h5py) or JSON Lines, each file written atomically.

Both writers take rows of ``(key, params, result)`` (`view.results()`, `sweep.rows()`) and write
a temporary file in the target's directory, fsync it, rename it over the target and fsync the
directory: a crash or an exception leaves either the previous file or the complete new one,
never a partial file, and no temporary file behind.

HDF5 layout (``resumable_format = "resumable-export"``, version 1)::

    /                               attrs: sweep, meta (JSON), library_version, created,
                                    n_items, done/failed/pending/stale (when known),
                                    resumable_format, resumable_format_version, resumable_meta
    /items                          one group per completed item, in record order
    /items/<name>                   attrs: resumable_key (the real key), resumable_index,
                                    resumable_params (exact JSON), one attribute per parameter
    /items/<name>/result            the result (see below)

Names. Keys and dict keys are arbitrary strings (``../x``, ``/``, NUL, 10 KB, ``~``, ...), so
a node is named by the string itself only when that is a safe HDF5 name (1-128 printable
characters, no ``/``, not starting with ``.`` or ``~``, no surrounding spaces); otherwise by
``~<ascii slug>~<first 16 hex digits of its SHA-256>``. The real string is always kept: the
item's ``resumable_key`` attribute, a dict entry's ``resumable_name`` attribute. HDF5 strings
cannot hold NUL characters; such a string is stored as its JSON literal, flagged by a
``<attribute>_format = "json"`` attribute.

Parameters. When the item is a dict, each entry becomes an attribute of the item group: bool,
int (64-bit), float and str as themselves, None as an empty attribute (``h5py.Empty``), and
anything nested (dicts, lists, tuples, arrays, huge ints) as a JSON string. Entries whose name
starts with ``resumable_`` or holds a NUL are left out. A non-dict item is one attribute,
``params``. ``resumable_params`` always holds the exact parameters (the lossless JSON form of
the codec, `resumable._codec`).

Results. Every node carries ``resumable_type``:

- ``dict``: a group, one child per entry;
- ``list`` / ``tuple``: a 1-d dataset when non-empty and all bool, all int (64-bit), all float
  or all str; otherwise a group with children ``0``, ``1``, ... (and a ``length`` attribute);
- ``ndarray``: a dataset with the array's dtype and shape. Unicode arrays are stored as UTF-8
  strings; dtypes HDF5 cannot hold (datetime64, ...) as raw bytes (uint8). Either way
  ``resumable_dtype`` (numpy's descr as JSON) and ``resumable_shape`` restore the exact array;
- ``numpy``: a numpy scalar, as a 0-d dataset of its dtype (same fallbacks as arrays);
- ``int``, ``float``, ``bool``: 0-d datasets (int64, float64, bool; ints beyond 64 bits as a
  hex string with ``resumable_encoding = "hex"``);
- ``str``: a 0-d UTF-8 string dataset (with a NUL inside: uint8 bytes, ``resumable_encoding =
  "utf-8"``);
- ``none``: an empty dataset (``h5py.Empty``).

`read_h5` reads such a file back into ``(key, params, result)`` rows equal to what was written.

JSON Lines: one object per completed item, ``{"key": ..., "params": ..., "result": ...}``.
The default ``plain`` form is for other tools: tuples become lists, numpy scalars plain
numbers, bool/int/uint/float/str arrays ``{"dtype": "float64", "shape": [2, 3], "data": [[...]]}``
(complex numbers as ``[re, im]``), non-finite floats the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"``; other arrays (structured, bytes, datetime) stay in the codec's tagged form.
The ``lossless`` form stores params and result exactly as the checkpoint does
(the codec's encode); `resumable.export.decode` gives back the original values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import _durable as durable
from ._codec import decode, descr_from_json, descr_to_json, encode
from ._durable import atomic_writer, fsync_dir, fsync_file
from ._version import __version__

Row = tuple[str, Any, Any]

FORMAT = "resumable-export"
FORMAT_VERSION = 1
ITEMS_GROUP = "items"
RESULT_NAME = "result"
P = "resumable_"  # prefix of bookkeeping attribute names
TYPE = P + "type"
NAME = P + "name"
KEY = P + "key"
ENCODING = P + "encoding"
_INT64 = (-(1 << 63), (1 << 63) - 1)
_SAFE_MAX = 128
_SLUG_RE = re.compile(r"[^A-Za-z0-9._+=,@-]+")


def h5_name(s: str) -> str:
    """A safe HDF5 link name for any string (see the module docstring); distinct strings get
    distinct names."""
    if (
        0 < len(s) <= _SAFE_MAX
        and "/" not in s
        and s.isprintable()
        and s[0] not in ".~"
        and s == s.strip()
    ):
        return s
    digest = hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"~{_SLUG_RE.sub('_', s)[:48]}~{digest}"


# -- HDF5 writing -------------------------------------------------------------------------------


def write_h5(
    rows: Iterable[Row],
    path: str | os.PathLike[str],
    *,
    sweep: str,
    meta: Mapping[str, Any] | None = None,
    counts: Mapping[str, int] | None = None,
) -> Path:
    """Write `rows` ((key, params, result), completed items) as one HDF5 file, atomically.

    `counts` (e.g. done/failed/pending/stale) become root attributes when given.
    """
    import h5py

    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        with h5py.File(tmp, "x") as f:
            f.attrs["resumable_format"] = FORMAT
            f.attrs["resumable_format_version"] = FORMAT_VERSION
            f.attrs["sweep"] = _h5_text(sweep)
            meta_enc = encode(dict(meta or {}), what="meta")
            f.attrs["meta"] = json.dumps(to_plain(dict(meta or {})), ensure_ascii=False)
            f.attrs["resumable_meta"] = json.dumps(meta_enc, ensure_ascii=False)
            f.attrs["library_version"] = __version__
            f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            for name, value in (counts or {}).items():
                f.attrs[name] = int(value)
            items = f.create_group(ITEMS_GROUP, track_order=True)
            n = 0
            for key, params, result in rows:
                name = h5_name(key)
                if name in items:
                    raise ValueError(f"key {key!r:.200} appears twice among the rows")
                g = items.create_group(name)
                _set_text(g.attrs, KEY, key)
                g.attrs[P + "index"] = n
                _write_params(g, params)
                _write_value(g, RESULT_NAME, result)
                n += 1
            f.attrs["n_items"] = n
        with open(tmp, "rb+") as fh:
            fsync_file(fh.fileno(), str(tmp), data_only=False)
        durable.ops.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent if str(target.parent) else ".")
    return target


def _h5_text(s: str) -> str:
    return s if "\x00" not in s else json.dumps(s)


def _set_text(attrs: Any, name: str, s: str) -> None:
    """A str attribute; one holding NUL is stored as its JSON literal (see the docstring)."""
    if "\x00" in s:
        attrs[name] = json.dumps(s)
        attrs[name + "_format"] = "json"
    else:
        attrs[name] = s


def _get_text(attrs: Any, name: str) -> str:
    value = _as_str(attrs[name])
    if _as_str(attrs.get(name + "_format", "")) == "json":
        text = json.loads(value)
        if type(text) is not str:  # a damaged or foreign file: never a key of another type
            raise ValueError(f"attribute {name!r} holds JSON {value[:80]!r}, not a string")
        return text
    return value


def _as_str(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _write_params(g: Any, params: Any) -> None:
    import h5py

    g.attrs[P + "params"] = json.dumps(encode(params, what="params"), ensure_ascii=False)
    entries = params.items() if type(params) is dict else [("params", params)]
    for name, value in entries:
        if name.startswith(P) or "\x00" in name or not name:
            continue
        g.attrs[name] = _param_attr(value, h5py)


def _param_attr(value: Any, h5py: Any) -> Any:
    t = type(value)
    if value is None:
        return h5py.Empty("f")
    if t is bool or t is float:
        return value
    if t is int and _INT64[0] <= value <= _INT64[1]:
        return np.int64(value)
    if t is str and "\x00" not in value:
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biufc":
        return value
    return json.dumps(to_plain(value), ensure_ascii=False)


def _write_value(parent: Any, name: str, value: Any, original: str | None = None) -> None:
    import h5py

    t = type(value)
    node: Any
    if t is dict:
        node = parent.create_group(name, track_order=True)
        node.attrs[TYPE] = "dict"
        for k, v in value.items():
            _write_value(node, h5_name(k), v, k)
    elif t is list or t is tuple:
        arr = _homogeneous(value)
        if arr is not None:
            node = parent.create_dataset(name, data=arr)
        else:
            node = parent.create_group(name, track_order=True)
            node.attrs["length"] = len(value)
            for i, v in enumerate(value):
                _write_value(node, str(i), v)
        node.attrs[TYPE] = t.__name__
    elif t is np.ndarray:
        node = _write_array(parent, name, value)
        node.attrs[TYPE] = "ndarray"
    elif isinstance(value, np.generic):
        node = _write_array(parent, name, np.asarray(value))
        node.attrs[TYPE] = "numpy"
    elif value is None:
        node = parent.create_dataset(name, data=h5py.Empty("f"))
        node.attrs[TYPE] = "none"
    elif t is bool:
        node = parent.create_dataset(name, data=np.bool_(value))
        node.attrs[TYPE] = "bool"
    elif t is int:
        if _INT64[0] <= value <= _INT64[1]:
            node = parent.create_dataset(name, data=np.int64(value))
        else:
            node = parent.create_dataset(name, data=hex(value), dtype=h5py.string_dtype())
            node.attrs[ENCODING] = "hex"
        node.attrs[TYPE] = "int"
    elif t is float:
        node = parent.create_dataset(name, data=np.float64(value))
        node.attrs[TYPE] = "float"
    elif t is str:
        if "\x00" in value:
            raw = np.frombuffer(value.encode("utf-8"), dtype=np.uint8)
            node = parent.create_dataset(name, data=raw)
            node.attrs[ENCODING] = "utf-8"
        else:
            node = parent.create_dataset(name, data=value, dtype=h5py.string_dtype())
        node.attrs[TYPE] = "str"
    else:  # the codec refuses these when recording, so a stored result never gets here
        raise TypeError(f"cannot export a value of type {t.__qualname__} at {name!r}")
    if original is not None and original != name:
        _set_text(node.attrs, NAME, original)


def _homogeneous(values: list[Any] | tuple[Any, ...]) -> np.ndarray | None:
    """A 1-d array for a non-empty list of only bools, only 64-bit ints, only floats or only
    (NUL-free) strings; None otherwise."""
    if not values:
        return None
    kinds = {type(v) for v in values}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind is bool:
        return np.array(values, dtype=bool)
    if kind is float:
        return np.array(values, dtype=np.float64)
    if kind is int and all(_INT64[0] <= v <= _INT64[1] for v in values):
        return np.array(values, dtype=np.int64)
    if kind is str and not any("\x00" in v for v in values):
        import h5py

        return np.array(values, dtype=h5py.string_dtype())
    return None


def _write_array(parent: Any, name: str, arr: np.ndarray) -> Any:
    import h5py

    descr = json.dumps(descr_to_json(arr.dtype))
    if arr.dtype.kind == "U" and not any("\x00" in s for s in arr.ravel().tolist()):
        data = np.array(arr.ravel().tolist(), dtype=h5py.string_dtype()).reshape(arr.shape)
        node = parent.create_dataset(name, data=data)
    else:
        node = None
        if arr.dtype.kind not in "UMmO":
            with contextlib.suppress(TypeError, ValueError):
                node = parent.create_dataset(name, data=arr)
            if node is not None and node.dtype != arr.dtype:  # stored, but not exactly
                del parent[name]
                node = None
        if node is None:  # raw bytes; dtype and shape restore the array
            raw = np.frombuffer(np.ascontiguousarray(arr).tobytes(), dtype=np.uint8)
            node = parent.create_dataset(name, data=raw)
            node.attrs[ENCODING] = "raw"
    node.attrs[P + "dtype"] = descr
    node.attrs[P + "shape"] = json.dumps(list(arr.shape))
    return node


# -- HDF5 reading -------------------------------------------------------------------------------


def read_h5(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Row]]:
    """Read a file written by `write_h5`: (root info, [(key, params, result), ...])."""
    import h5py

    with h5py.File(path, "r") as f:
        if _as_str(f.attrs.get("resumable_format", "")) != FORMAT:
            raise ValueError(f"{os.fspath(path)} is not a resumable export")
        info = {k: _plain_attr(v) for k, v in f.attrs.items()}
        info["meta"] = decode(json.loads(info.pop("resumable_meta")), where="meta")
        rows = []
        for g in f[ITEMS_GROUP].values():
            key = _get_text(g.attrs, KEY)
            params = decode(json.loads(_as_str(g.attrs[P + "params"])), where=f"params of {key!r}")
            rows.append((key, params, _read_value(g[RESULT_NAME])))
    return info, rows


def _plain_attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


def _read_value(node: Any) -> Any:
    import h5py

    kind = _as_str(node.attrs[TYPE])
    if kind == "dict":
        return {
            (_get_text(child.attrs, NAME) if NAME in child.attrs else name): _read_value(child)
            for name, child in node.items()
        }
    if kind in ("list", "tuple"):
        if isinstance(node, h5py.Group):
            values = [_read_value(node[str(i)]) for i in range(int(node.attrs["length"]))]
        elif h5py.check_string_dtype(node.dtype) is not None:
            values = list(node.asstr()[()])
        else:
            values = node[()].tolist()
        return tuple(values) if kind == "tuple" else values
    if kind in ("ndarray", "numpy"):
        dtype = descr_from_json(json.loads(_as_str(node.attrs[P + "dtype"])))
        shape = tuple(json.loads(_as_str(node.attrs[P + "shape"])))
        if _as_str(node.attrs.get(ENCODING, "")) == "raw":
            arr = np.frombuffer(node[()].tobytes(), dtype=dtype).reshape(shape).copy()
        elif dtype.kind == "U":
            arr = np.array(node.asstr()[()], dtype=dtype).reshape(shape)
        else:
            arr = np.asarray(node[()], dtype=dtype).reshape(shape)
        return arr[()] if kind == "numpy" else arr
    if kind == "none":
        return None
    if kind == "bool":
        return bool(node[()])
    if kind == "int":
        if _as_str(node.attrs.get(ENCODING, "")) == "hex":
            return int(node.asstr()[()], 16)
        return int(node[()])
    if kind == "float":
        return float(node[()])
    if kind == "str":
        if _as_str(node.attrs.get(ENCODING, "")) == "utf-8":
            return node[()].tobytes().decode("utf-8")
        return node.asstr()[()]
    raise ValueError(f"{node.name}: unknown resumable_type {kind!r}")


# -- JSON Lines ---------------------------------------------------------------------------------


def write_jsonl(
    rows: Iterable[Row], path: str | os.PathLike[str], *, lossless: bool = False
) -> Path:
    """Write one JSON object per row to `path`, atomically (plain or lossless form)."""
    target = Path(path)
    convert = _lossless if lossless else to_plain
    with atomic_writer(target) as fh:
        for key, params, result in rows:
            line = {"key": key, "params": convert(params), "result": convert(result)}
            fh.write(json.dumps(line, ensure_ascii=False, allow_nan=False).encode("utf-8"))
            fh.write(b"\n")
    return target


def _lossless(value: Any) -> Any:
    return encode(value, what="value")


def iter_jsonl(path: str | os.PathLike[str], *, lossless: bool = False) -> Iterator[Row]:
    """Read back a JSON Lines export (lossless form: the original values)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            if lossless:
                yield obj["key"], decode(obj["params"]), decode(obj["result"])
            else:
                yield obj["key"], obj["params"], obj["result"]


_NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _plain_float(x: float) -> Any:
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else _NONFINITE[x]


def to_plain(value: Any) -> Any:
    """A JSON-serialisable, tool-friendly form of a stored value (see the module docstring)."""
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if value.bit_length() <= 10_000 else encode(value)
    if t is float:
        return _plain_float(value)
    if t is dict:
        return {k: to_plain(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biufcU":
            return {
                "dtype": str(value.dtype),
                "shape": list(value.shape),
                "data": _plain_list(value.tolist()),
            }
        return encode(value)
    if isinstance(value, np.generic):
        if value.dtype.kind in "biufcU":
            return _plain_list(value.item())
        return encode(value)
    return encode(value)  # raises UnsupportedValueError naming the type


def _plain_list(x: Any) -> Any:
    if type(x) is list:
        return [_plain_list(v) for v in x]
    if type(x) is float:
        return _plain_float(x)
    if type(x) is complex:
        return [_plain_float(x.real), _plain_float(x.imag)]
    return x

"""Results to and from stored JSON, losslessly; canonical JSON, fingerprints and keys.

Supported values: dict (str keys), list, tuple, str, int, float (NaN and infinities included),
bool, None, numpy arrays (any non-object dtype) and numpy scalars, nested anywhere. They come back
equal: tuples as tuples, arrays with their dtype and shape, numpy scalars as the same numpy type.
Anything else (arbitrary objects, sets, subclasses that would come back as their base type,
non-string dict keys) is refused with `UnsupportedValueError` naming where it sits. Nothing is
ever pickled or turned into `str(x)`.

Encoding is plain JSON with a few tagged objects, ``{"__t": tag, ...}``: "f" (non-finite
float), "i" (an int too long for a JSON number), "tuple", "nd" (array), "np" (numpy scalar), and
"dict" (a user dict that itself has a "__t" key).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import IntegrityError, InvalidKeyError, UnsupportedValueError

if TYPE_CHECKING:
    import numpy as np

# numpy is imported only when a value needs it (decoding an array, a dtype's descr): a pool's
# workers import this module before their first item, and numpy was most of that (about half
# a second of every pool's start). Encoding asks `sys.modules` instead: a value can only be a
# numpy array or scalar if numpy has been imported, by whoever made it.

TAG = "__t"
MAX_DEPTH = 64
_MAX_PLAIN_INT_BITS = 10_000
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# json.dumps with options builds a new encoder per call: ones made once give the same bytes
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def compact_json(obj: Any) -> bytes:
    """An already-encoded structure as stored: compact JSON, UTF-8, NaN refused."""
    return _COMPACT(obj).encode("utf-8")


def _not_json(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is not JSON")


def json_encoder(*, sort_keys: bool, item_separator: str = ",") -> Callable[[Any, int], Any]:
    """A JSON encoder made once, with `compact_json`'s options (`canonical_json`'s, with
    `sort_keys`): ``"".join(enc(value, 0))`` is the text. CPython's C encoder when there is one,
    called straight (half the cost of `JSONEncoder.encode`, which rebuilds it per call). It has
    no circular check: callers give it values checked to be acyclic (at most MAX_DEPTH deep).
    Anything but JSON types raises TypeError; NaN and infinities ValueError; a lone surrogate
    passes (its UTF-8 encoding then fails).

    With `item_separator` "\\n", the bulk encodings of `_listing`: JSON text holds no raw
    newline (strings escape control characters), so every one in the output is a separator."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is not None:
        return make(  # type: ignore[no-any-return]  # (the C encoder is untyped)
            None, _not_json, json.encoder.encode_basestring, None, ":", item_separator,
            sort_keys, False, False,
        )  # fmt: skip
    text = json.JSONEncoder(  # no C accelerator: the pure-Python encoder, the same text
        sort_keys=sort_keys,
        separators=(item_separator, ":"),
        ensure_ascii=False,
        allow_nan=False,
        check_circular=False,
        default=_not_json,
    ).encode
    return lambda value, _level: (text(value),)


_PLAIN_ENCODE = json_encoder(sort_keys=False)


def _plain(value: Any, depth: int) -> bool:
    """Whether `encode` returns `value` as it is: dicts (str keys, no TAG key), lists, str,
    int (up to _MAX_PLAIN_INT_BITS), float, bool and None, of exactly these types, at most
    MAX_DEPTH deep. (Non-finite floats and invalid strings pass here: the JSON encoding
    refuses them, and the caller falls back to `encode`.)"""
    t = type(value)
    if t is float or t is str or t is bool or value is None:
        return True
    if t is int:
        bits: int = value.bit_length()
        return bits <= _MAX_PLAIN_INT_BITS
    if depth >= MAX_DEPTH:
        return False
    if t is dict:
        if TAG in value:
            return False
        for k, v in value.items():
            if type(k) is not str:
                return False
            tv = type(v)
            if not (tv is float or tv is str or v is None or tv is bool or _plain(v, depth + 1)):
                return False
        return True
    if t is list:
        for v in value:
            tv = type(v)
            if not (tv is float or tv is str or v is None or tv is bool or _plain(v, depth + 1)):
                return False
        return True
    return False


def encode_json(value: Any, *, what: str = "result") -> bytes:
    """`compact_json(encode(value))`, the same bytes, without copying a value that `encode`
    would return unchanged (plain JSON values: the common result): it goes straight to the C
    encoder. Raises UnsupportedValueError like `encode`."""
    if _plain(value, 0):
        try:
            return "".join(_PLAIN_ENCODE(value, 0)).encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            pass  # a non-finite float (tagged by encode), a lone surrogate (refused by it)
    return _COMPACT(encode(value, what=what)).encode("utf-8")


def _where(path: tuple[Any, ...]) -> str:
    if not path:
        return "the value itself"
    return "result" + "".join(f"[{p!r}]" for p in path)


def encode(value: Any, *, what: str = "result") -> Any:
    """Encode `value` to a JSON-serialisable structure (raises UnsupportedValueError)."""
    return _encode(value, (), what)


def _encode(value: Any, path: tuple[Any, ...], what: str) -> Any:
    if len(path) > MAX_DEPTH:
        raise UnsupportedValueError(
            f"{what} is nested deeper than {MAX_DEPTH} levels at {_where(path[:8])}..."
        )
    t = type(value)
    if value is None or t is bool or t is str:
        if t is str:
            _check_str(value, path, what)
        return value
    if t is int:
        if value.bit_length() > _MAX_PLAIN_INT_BITS:  # past Python's int<->str digit limit
            return {TAG: "i", "v": hex(value)}
        return value
    if t is float:
        if math.isfinite(value):
            return value
        return {TAG: "f", "v": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if t is list:
        return [_encode(v, (*path, i), what) for i, v in enumerate(value)]
    if t is tuple:
        return {TAG: "tuple", "v": [_encode(v, (*path, i), what) for i, v in enumerate(value)]}
    if t is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise UnsupportedValueError(
                    f"{what} has a dict key {k!r} of type {type(k).__name__} at {_where(path)}; "
                    "only str keys round-trip through JSON"
                )
            _check_str(k, path, what)
            out[k] = _encode(v, (*path, k), what)
        return {TAG: "dict", "v": out} if TAG in out else out
    numpy = sys.modules.get("numpy")  # (none imported: the value is no numpy object)
    if numpy is not None and isinstance(value, numpy.ndarray):
        if t is not numpy.ndarray:
            raise UnsupportedValueError(
                f"{what} holds a {t.__module__}.{t.__name__} (an ndarray subclass) at "
                f"{_where(path)}; convert it with np.asarray() first"
            )
        return _encode_array(value, path, what)
    if numpy is not None and isinstance(value, numpy.generic):
        if value.dtype.hasobject:
            raise UnsupportedValueError(f"{what} holds a numpy object scalar at {_where(path)}")
        arr = numpy.asarray(value)
        return {TAG: "np", "d": _descr(arr.dtype), "b": _b64(arr.tobytes())}
    raise UnsupportedValueError(
        f"{what} holds a value of type {t.__module__}.{t.__qualname__} at {_where(path)}, which "
        "cannot be stored losslessly (supported: dict with str keys, list, tuple, str, int, float, "
        "bool, None, numpy arrays and scalars)"
    )


def _check_str(s: str, path: tuple[Any, ...], what: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsupportedValueError(
            f"{what} holds a string that is not valid Unicode (lone surrogate) at {_where(path)}"
        ) from exc


def _descr(dtype: np.dtype) -> Any:
    from numpy.lib import format as npformat

    return npformat.dtype_to_descr(dtype)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _encode_array(arr: np.ndarray, path: tuple[Any, ...], what: str) -> dict[str, Any]:
    if arr.dtype.hasobject:
        raise UnsupportedValueError(
            f"{what} holds a numpy array of dtype object at {_where(path)}; object arrays "
            "cannot be stored without pickling"
        )
    import numpy as np

    data = np.ascontiguousarray(arr).tobytes()
    return {TAG: "nd", "d": _descr(arr.dtype), "s": list(arr.shape), "b": _b64(data)}


def decode(obj: Any, *, where: str = "stored value") -> Any:
    """Inverse of `encode`; malformed input raises IntegrityError naming `where`."""
    try:
        return _decode(obj, 0)
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    except (
        ValueError,
        TypeError,
        KeyError,
        OverflowError,
        AttributeError,
        IndexError,
        RecursionError,
        MemoryError,
    ) as exc:
        raise IntegrityError(
            f"{where}: malformed encoded value ({type(exc).__name__}: {exc!s:.200})"
        ) from None


def _decode(obj: Any, depth: int) -> Any:
    if depth > MAX_DEPTH + 2:
        raise IntegrityError(f"encoded value nested deeper than {MAX_DEPTH}")
    t = type(obj)
    if t is list:
        return [_decode(v, depth + 1) for v in obj]
    if t is not dict:
        return obj
    tag = obj.get(TAG)
    if tag is None:
        return {k: _decode(v, depth + 1) for k, v in obj.items()}
    if tag == "dict":
        return {k: _decode(v, depth + 1) for k, v in _payload(obj, dict).items()}
    if tag == "tuple":
        return tuple(_decode(v, depth + 1) for v in _payload(obj, list))
    if tag == "f":
        v = obj.get("v")
        if type(v) is not str or v not in _NONFINITE:
            raise IntegrityError(
                f"a non-finite float must be 'nan', 'inf' or '-inf', not {v!r:.40}"
            )
        return _NONFINITE[v]
    if tag == "i":
        v = obj["v"]
        if type(v) is not str or len(v) > 1 << 20:
            raise IntegrityError("malformed big integer")
        return int(v, 16)
    if tag == "nd":
        dtype = _dtype(obj["d"])
        shape = tuple(_payload(obj, list, "s"))
        if len(shape) > 64 or any(type(n) is not int or not 0 <= n < 1 << 62 for n in shape):
            raise IntegrityError(f"array shape must be at most 64 sizes >= 0, not {shape!r:.80}")
        data = base64.b64decode(_payload(obj, str, "b"), validate=True)
        expected = dtype.itemsize * math.prod(shape)
        if len(data) != expected:
            raise IntegrityError(
                f"array of dtype {dtype} and shape {shape} needs {expected} bytes, "
                f"found {len(data)}"
            )
        import numpy as np

        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if tag == "np":
        dtype = _dtype(obj["d"])
        data = base64.b64decode(_payload(obj, str, "b"), validate=True)
        if len(data) != dtype.itemsize:
            raise IntegrityError(f"numpy scalar of dtype {dtype} needs {dtype.itemsize} bytes")
        import numpy as np

        return np.frombuffer(data, dtype=dtype)[0]
    raise IntegrityError(f"unknown value tag {tag!r}")


def _payload(obj: dict[str, Any], kind: type, field: str = "v") -> Any:
    """obj[field], which must be of type `kind`, else IntegrityError naming what was found."""
    v = obj.get(field)
    if type(v) is not kind:
        raise IntegrityError(
            f"value tag {obj.get(TAG)!r:.20}: field {field!r} must be a {kind.__name__}, "
            f"found {type(v).__name__}"
        )
    return v


def _dtype(descr: Any) -> np.dtype:
    dtype = descr_from_json(descr)
    if dtype.hasobject:
        raise IntegrityError("stored array has an object dtype, which is never loaded")
    return dtype


def descr_to_json(dtype: np.dtype) -> Any:
    """numpy's descr of `dtype` (`dtype_to_descr`) as it reads back from JSON (tuples as lists).

    The one converter of dtype descrs to stored JSON (snapshot manifests, exports, values);
    `descr_from_json` is its inverse."""
    return json.loads(json.dumps(_descr(dtype)))


def descr_from_json(descr: Any) -> np.dtype:
    """The dtype of a descr read back from JSON (lists back to the tuples numpy expects).

    A malformed description raises `IntegrityError`; numpy's own refusal of a well-formed but
    unknown type string propagates (callers name the array). Object dtypes are not refused
    here: callers that must never load one check ``dtype.hasobject``."""
    from numpy.lib import format as npformat

    return npformat.descr_to_dtype(_descr_from_json(descr))


def _descr_from_json(descr: Any) -> Any:
    """JSON turned the tuples of a structured dtype's descr into lists; turn them back."""
    if isinstance(descr, str):
        return descr
    if type(descr) not in (list, tuple):
        raise IntegrityError(f"a dtype description must be a string or a list, found {descr!r:.60}")
    fields = []
    for field in descr:
        if type(field) not in (list, tuple) or len(field) not in (2, 3):
            raise IntegrityError(
                f"a structured dtype field must be [name, type] or [name, type, shape], "
                f"found {field!r:.60}"
            )
        name = tuple(field[0]) if isinstance(field[0], list) else field[0]
        sub = _descr_from_json(field[1])
        fields.append((name, sub, tuple(field[2])) if len(field) == 3 else (name, sub))
    return fields


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# a surrogate as an escape ("\\ud800") or as bytes (json decodes bytes with "surrogatepass")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}|\xed[\xa0-\xbf]")


def loads(data: bytes | str) -> Any:
    """Parse stored JSON strictly: NaN and Infinity (which Python's json accepts but JSON does
    not have, and which our writers never produce) and strings that are not valid Unicode (a
    lone surrogate escape such as "\\ud800") raise ValueError."""
    value = json.loads(data, parse_constant=_no_constant)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if _SURROGATE_ESCAPE.search(raw):  # rare (our writers emit valid UTF-8): check strings
        _check_unicode(value)
    return value


def _check_unicode(value: Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is str:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone surrogate (not valid Unicode)") from None
        elif type(v) is list:
            stack.extend(v)
        elif type(v) is dict:
            stack.extend(v)
            stack.extend(v.values())


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes for an already-encoded structure (sorted keys, no spaces)."""
    return _CANONICAL(obj).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def try_fingerprint(item: Any) -> tuple[Any, str] | None:
    """(encoded item, SHA-256 of its canonical JSON) when the item is JSON-like, else None."""
    try:
        enc = encode(item, what="item")
    except UnsupportedValueError:
        return None
    return enc, sha256_hex(canonical_json(enc))


def check_key(key: Any, item: Any) -> str:
    """Validate a key returned by the user's key function."""
    if type(key) is not str:
        raise InvalidKeyError(
            f"the key function returned {key!r} (type {type(key).__name__}) for item {item!r}; "
            "keys must be str (for example key=lambda c: str(c['id']))"
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKeyError(
            f"the key {key!r} for item {item!r} is not valid Unicode (lone surrogate)"
        ) from None
    return key

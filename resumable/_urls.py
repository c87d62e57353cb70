"""Storage URLs and object names, and credentials kept out of text: `is_url` tells a URL from a
local path, `join` adds a checked object name to either, and `redact` strips credentials from
every message, log record, status, report and chaos line.

One module because a URL a user gives may carry credentials (user info, a signed query string,
a SAS token): the code that takes URLs apart is the code that knows what in them is secret.
Nothing here needs fsspec or tenacity.
"""

from __future__ import annotations

import os
import re
import threading
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from .errors import ConfigurationError

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_QUOTED = frozenset({"http", "https", "file"})  # schemes whose paths are percent-encoded


def is_url(s: str) -> bool:
    """True for "scheme://..." strings (s3://, file://, memory://, http(s)://); False for paths."""
    return bool(_SCHEME_RE.match(s))


def check_name(name: str) -> list[str]:
    """Split a relative object name into its parts, rejecting anything that could escape."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"object name must be a non-empty string, not {name!r}")
    bad = next((c for c in name if ord(c) < 32 or ord(c) == 127 or c in "\\?#"), None)
    if bad is not None:
        raise ConfigurationError(f"object name {name!r} contains the forbidden character {bad!r}")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ConfigurationError(
            f"object name {name!r} must be relative, without empty, '.' or '..' parts"
        )
    return parts


def join(base: str, name: str) -> str:
    """The child `name` ("a/b.json" allowed) of a directory path or URL; a query string or
    fragment on the base (e.g. a container SAS token) stays at the end, where it belongs."""
    check_name(name)
    if not is_url(base):
        return os.path.join(base, name)
    scheme = base.split("://", 1)[0]
    try:
        parts = urlsplit(base)
    except ValueError as exc:
        raise ConfigurationError(f"invalid URL {redact(base)}: {exc}") from None
    child = quote(name, safe="/!$&'()*+,;=:@~") if scheme.lower() in _QUOTED else name
    path = f"{parts.path.rstrip('/')}/{child}"
    query = f"?{parts.query}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{scheme}://{parts.netloc}{path}{query}{fragment}"


# -- redaction --------------------------------------------------------------------------------
#
# One function, `redact`, for every message, log record, status, report and chaos line. It
# works on two levels: (1) every URL found in the text loses its user info (user and password),
# every query value and its fragment; (2) every credential `redact` has ever seen in a URL (the
# parts just named, raw, percent-decoded and re-encoded) is scrubbed wherever it appears, because
# libraries quote them outside any URL (botocore: 'Invalid bucket name "KEY:SECRET@bucket"').

_URL_RE = re.compile(r"""[A-Za-z][A-Za-z0-9+.\-]*://[^\s'"<>`]+""")
_URL_PARTS_RE = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?:(?P<userinfo>[^/?#]*)@)?"
    r"(?P<rest>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?$",
    re.DOTALL,
)
# user:password@ without a scheme (libraries quote a bucket "name" holding credentials)
_BARE_USERINFO_RE = re.compile(r"""(?<![\w.%+-])[^\s/?#@:'"<>`]+:[^\s/?#@'"<>`]*@""")
# a query parameter whose name looks secret, in text that is not a whole URL
_SECRET_PARAM_RE = re.compile(
    r"""([?&;][^=&;#?\s'"<>]*"""
    r"(?:sig|token|credential|secret|passw|pwd|key|auth|session|security|code)"
    r"""[^=&;#?\s'"<>]*=)[^&;#\s'"<>]+""",
    re.IGNORECASE,
)
# The same, percent-encoded (botocore quotes whole URLs in its messages: "%3F", "%26", "%3D").
_SECRET_PARAM_QUOTED_RE = re.compile(
    r"((?:%3F|%26|%3B)(?:(?!%26|%3B|%3D)[^&;#\s'\"<>?=])*"
    r"(?:sig|token|credential|secret|passw|pwd|key|auth|session|security|code)"
    r"(?:(?!%26|%3B|%3D)[^&;#\s'\"<>?=])*%3D)(?:(?!%26|%3B)[^&;#\s'\"<>])+",
    re.IGNORECASE,
)
REDACTED = "REDACTED"
_MIN_SECRET_CHARS = 6  # shorter ones ("json", "true") would scrub words out of every message;
# they are still redacted inside URLs
_MAX_KNOWN = 4096
_known: dict[str, None] = {}  # an ordered set: the credentials seen so far in this process
_known_re: re.Pattern[str] | None = None
_known_lock = threading.Lock()


def _forms(secret: str) -> set[str]:
    """A credential as it may appear in text: raw, percent-decoded, percent-encoded."""
    forms = {secret}
    for f in list(forms):
        forms |= {unquote(f), unquote_plus(f)}
    for f in list(forms):
        forms |= {quote(f, safe=""), quote(f, safe="@:/")}
    return {f for f in forms if len(f) >= _MIN_SECRET_CHARS}


def _remember(secrets: list[str]) -> None:
    global _known_re
    new = set()
    for secret in secrets:
        if secret and REDACTED not in secret and "***" not in secret:  # already redacted
            new |= _forms(secret)
    new -= _known.keys()
    if not new:
        return
    with _known_lock:
        for f in new:
            _known[f] = None
        while len(_known) > _MAX_KNOWN:
            del _known[next(iter(_known))]
        ordered = sorted(_known, key=len, reverse=True)  # longest first: no partial leftovers
        _known_re = re.compile("|".join(re.escape(f) for f in ordered))


def _redact_url(url: str, found: list[str]) -> str:
    m = _URL_PARTS_RE.match(url)
    if m is None:  # pragma: no cover - the pattern matches every "scheme://..." string
        return url
    out = m.group("scheme")
    userinfo = m.group("userinfo")
    if userinfo is not None:
        found.append(userinfo)
        found.extend(userinfo.split(":", 1))
        out += "***@"
    out += m.group("rest")
    query = m.group("query")
    if query is not None:
        found.append(query)
        params = []
        for param in re.split(r"([&;])", query):
            if param in ("&", ";"):
                params.append(param)
                continue
            name, eq, value = param.partition("=")
            if eq:
                found.append(value)
                params.append(f"{name}={REDACTED}" if value else param)
            elif param:
                found.append(param)  # a bare token (?SECRET) is a value, not a name
                params.append(REDACTED)
            else:
                params.append(param)
        out += "?" + "".join(params)
    fragment = m.group("fragment")
    if fragment is not None:
        found.append(fragment)
        found.extend(part.partition("=")[2] or part for part in re.split(r"[&;]", fragment))
        out += f"#{REDACTED}" if fragment else "#"
    return out


def redact(text: object) -> str:
    """`text` (or str(text)) without credentials: for every URL in it, the user info, every
    query value and the fragment; and anywhere, every credential seen in a URL before."""
    text = str(text)
    found: list[str] = []
    text = _URL_RE.sub(lambda m: _redact_url(m.group(0), found), text)
    if found:
        _remember(found)
    text = _BARE_USERINFO_RE.sub("***@", text)
    text = _SECRET_PARAM_RE.sub(rf"\1{REDACTED}", text)
    text = _SECRET_PARAM_QUOTED_RE.sub(rf"\1{REDACTED}", text)
    pattern = _known_re
    if pattern is not None:
        text = pattern.sub("***", text)
    return text

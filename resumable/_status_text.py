"""Text for `resumable status` (and the report): gathering a sweep's status, formatting it.

`gather_status` collects everything the command shows into one JSON-ready dict (counts, times,
launch history, verification, mirror lag); `format_status` turns it into the few lines a person
reads. The small formatters (`span`, `ago`, `show`, ...) are shared with report.py.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import TYPE_CHECKING, Any

from ._item_snapshot import repeatedly_interrupted
from ._urls import redact
from ._version import __version__
from .errors import CheckpointNotFoundError, IntegrityError, ResumableError

if TYPE_CHECKING:
    from .view import CheckpointView, MergedView, Problem

# -- formatting helpers ---------------------------------------------------------------------------


def show(s: str, limit: int = 60) -> str:
    """A key or name for a terminal: quoted, control characters escaped, long ones cut."""
    if len(s) > limit:
        return repr(s[:limit])[:-1] + f"...' ({len(s)} chars)"
    return repr(s)


def clean(s: str, limit: int = 160) -> str:
    """A message on one line: non-printable characters escaped, long ones cut."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s[: limit + 1])
    return out if len(s) <= limit else out[:limit] + "..."


def when(t: float | None) -> str:
    if t is None:
        return "never"
    return _dt.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def span(seconds: float | None) -> str:
    """3 ms, 42 s, 3 min 5 s, 2 h 5 min, 3 d 4 h."""
    if seconds is None:
        return "?"
    s = abs(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        m, r = divmod(round(s), 60)
        return f"{m} min" + (f" {r} s" if r and m < 10 else "")
    if s < 86400:
        h, r = divmod(round(s / 60), 60)
        return f"{h} h" + (f" {r} min" if r else "")
    d, r = divmod(round(s / 3600), 24)
    return f"{d} d" + (f" {r} h" if r else "")


def ago(t: float | None, now: float) -> str:
    if t is None:
        return ""
    delta = now - t
    return f"in {span(-delta)}" if delta < -1 else f"{span(delta)} ago"


def rate_text(rate: float | None) -> str:
    if not rate:
        return "unknown"
    if rate >= 100:
        return f"{rate:,.0f} items/s"
    if rate >= 1:
        return f"{rate:.3g} items/s"
    if rate * 60 >= 1:
        return f"{rate * 60:.3g} items/min"
    return f"{rate * 3600:.3g} items/h"


# -- status -----------------------------------------------------------------------------------

# launches listed one by one in the status (the latest ones; the report lists them all)
STATUS_LAUNCHES = 20


def open_checked(target: str) -> CheckpointView | MergedView:
    from .view import open_view, verify

    try:
        return open_view(target)
    except CheckpointNotFoundError:
        problems = verify(target)  # parts without a manifest: damaged, not absent
        if problems:
            raise IntegrityError(str(problems[0])) from None
        raise


def problems_after_open(view: CheckpointView | MergedView) -> list[Problem]:
    """What `verify` would add after `open_checked` succeeded, without its second pass over
    the journal: opening checked every hash already, so only a signing key (parameter-less:
    env RESUMABLE_SIGNING_KEY) asks for more, the manifest's signature and the item
    snapshots (`verify_items`), of every started shard."""
    from . import _signing as signing
    from ._checkpoint import MAX_MANIFEST_READ
    from ._item_snapshot import verify_items
    from ._manifest import MANIFEST_NAME, signature_state
    from ._storage import Store
    from .view import MergedView, Problem

    key = signing.resolve_key(None)
    if key is None:
        return []
    views = [v for v in view.shards if v is not None] if isinstance(view, MergedView) else [view]
    problems: list[Problem] = []
    for v in views:
        store = v.store if v.store is not None else Store(v.location)
        where = f"{store.display.rstrip('/')}/{MANIFEST_NAME}"
        try:
            state = signature_state(
                store.read_bytes(MANIFEST_NAME, max_bytes=MAX_MANIFEST_READ), key
            )
        except (ResumableError, ValueError) as exc:  # gone, or replaced by no manifest
            problems.append(Problem(where, f"unreadable since it was opened: {exc!s:.200}"))
        else:
            if state != "valid":
                what = "wrongly signed (altered, or another key)" if state == "invalid" else state
                problems.append(Problem(where, f"signature: {what}"))
        problems.extend(Problem(w, what) for w, what in verify_items(store, key))
    return problems


def gather_status(target: str, mirror_url: str | None = None) -> dict[str, Any]:
    """Everything `resumable status` shows, as one JSON-ready dict."""
    from ._history import summary, timelines

    now = time.time()
    view = open_checked(target)  # the one pass over the journal: every hash checked
    status = view.status()
    tls = timelines(view, detail=False)
    problems = problems_after_open(view)
    if mirror_url and not problems:  # records only the mirror holds: a problem
        from .view import compare_with_mirror

        problems = compare_with_mirror(view, mirror_url)
    out = status.as_dict()
    out["location"] = redact(out["location"])
    out["now"] = now
    out["last_finished_ago_s"] = (now - status.last_finished) if status.last_finished else None
    out["verified"] = not problems
    out["problems"] = [{"where": redact(p.where), "what": redact(p.what)} for p in problems]
    out["history"] = summary(tls, latest=STATUS_LAUNCHES)
    out["library_version"] = __version__
    out["interrupted_items"] = repeatedly_interrupted(view)  # key -> launches interrupted
    if mirror_url:
        out["mirror"] = mirror_lag(view, mirror_url, now)
    if out.get("shards"):
        for entry in out["shards"]:
            entry.pop("shards", None)
            if "location" in entry:
                entry["location"] = redact(entry["location"])
    return out


def mirror_lag(view: CheckpointView | MergedView, mirror_url: str, now: float) -> dict[str, Any]:
    """Records in the local checkpoint vs in its mirror, and the age of the mirror's manifest."""
    from ._remote import read_manifest, source_store
    from ._urls import join
    from .shards import shard_dir_name
    from .view import MergedView

    shown = redact(mirror_url)
    if isinstance(view, MergedView):
        pairs = [
            (s, join(mirror_url, shard_dir_name(i, view.count)))
            for i, s in enumerate(view.shards)
            if s is not None
        ]
    else:
        pairs = [(view, mirror_url)]
    per = []
    for local, url in pairs:
        entry: dict[str, Any] = {"url": redact(url), "local_records": local.loaded.state.last_seq}
        try:
            found = read_manifest(source_store(url))
        except ResumableError as exc:
            entry.update(state="error", error=redact(str(exc)))
            per.append(entry)
            continue
        if found is None:
            entry.update(state="missing", mirror_records=0, lag_records=entry["local_records"])
            per.append(entry)
            continue
        manifest = found[1]
        mirrored = manifest.sealed_records
        entry.update(
            state="ok",
            same_sweep=manifest.sweep_id == local.loaded.manifest.sweep_id,
            mirror_records=mirrored,
            mirror_has_active=manifest.active is not None,
            lag_records=max(0, entry["local_records"] - mirrored),
            ahead_records=max(0, mirrored - entry["local_records"]),
            manifest_updated=manifest.updated,
            manifest_age_s=now - manifest.updated,
        )
        per.append(entry)
    states = {e["state"] for e in per}
    result: dict[str, Any] = {
        "url": shown,
        "state": "error" if "error" in states else ("missing" if "missing" in states else "ok"),
        "local_records": sum(e["local_records"] for e in per),
        "mirror_records": sum(e.get("mirror_records", 0) for e in per),
        "lag_records": sum(e.get("lag_records", 0) for e in per),
        "ahead_records": sum(e.get("ahead_records", 0) for e in per),
        "same_sweep": all(e.get("same_sweep", True) for e in per),
    }
    updated = [e["manifest_updated"] for e in per if "manifest_updated" in e]
    result["manifest_updated"] = min(updated) if updated else None
    result["manifest_age_s"] = (now - min(updated)) if updated else None
    errors = [e["error"] for e in per if "error" in e]
    if errors:
        result["error"] = errors[0]
    if isinstance(view, MergedView):
        result["shards"] = per
    return result


def format_status(d: dict[str, Any]) -> str:
    now = d["now"]
    lines = [f"sweep {show(d['name'])} at {d['location']}"]

    def row(label: str, text: str) -> None:
        lines.append(f"  {label:<10} {text}")

    total = d["total"]
    pct = f" ({100.0 * d['done'] / total:.1f}%)" if total else ""
    row(
        "items",
        f"{total}: {d['done']} done{pct}, {d['failed']} failed, {d['pending']} pending, "
        f"{d['stale']} stale",
    )
    last = d["last_finished"]
    row("last item", f"{when(last)} ({ago(last, now)})" if last else "none finished yet")
    if d["pending"] == 0:
        eta = "nothing pending"
    elif d["eta_s"] is not None:
        eta = f"ETA {span(d['eta_s'])} at that rate"
    else:
        eta = "ETA unknown"
    row("rate", f"{rate_text(d['rate_per_s'])} (latest launch); {eta}")
    h = d["history"]
    launch_text = f"{h['launches']}"
    if h["interrupted"]:
        launch_text += (
            f", {h['interrupted']} interrupted before the sweep was complete (preempted, killed "
            f"or crashed), {span(h['lost_s'])} lost between them and the next launch"
        )
    elif h["launches"] > 1:
        launch_text += ", none interrupted"
    latest = h["detail"][-1] if h["detail"] and not d.get("shards") else None
    if latest is not None and latest["outcome"] == "open":
        launch_text += f"; the latest is still running or stopped with {d['pending']} pending"
    if not h["exact"]:
        launch_text += " (approximate: journal not re-readable)"
    row("launches", launch_text)
    if d.get("interrupted_items"):
        worst = sorted(d["interrupted_items"].items(), key=lambda kv: -kv[1])[:5]
        row(
            "long items",
            f"{len(d['interrupted_items'])} item(s) interrupted more than once (longer than the "
            "instances live? use sweep.item_snapshot): "
            + ", ".join(f"{show(k)} x{n}" for k, n in worst),
        )
    failures = d["failures"]
    if failures:
        row("failures", f"{d['failed']} in {len(failures)} error type(s)")
        width = max(len(clean(g["error_type"], 40)) for g in failures)
        for g in failures:
            lines.append(
                f"{'':13}{clean(g['error_type'], 40):<{width}}  x{g['count']:<5} e.g. "
                f"{show(g['example_key'], 40)}: {clean(g['example_message'], 100)}"
            )
    else:
        row("failures", "none")
    if d.get("shards"):
        started = sum(1 for s in d["shards"] if s.get("started"))
        row("shards", f"{len(d['shards'])} ({started} started)")
        count = len(d["shards"])
        for s in d["shards"]:
            label = f"shard {s['shard']}/{count}"
            if not s.get("started"):
                lines.append(f"{'':13}{label:<12} not started")
                continue
            lines.append(
                f"{'':13}{label:<12} {s['total']} items: {s['done']} done, {s['failed']} failed, "
                f"{s['pending']} pending; {s['launches']} launch(es); last item "
                f"{ago(s['last_finished'], now) or 'never'}"
            )
    m = d.get("mirror")
    if m:
        if m["state"] == "error":
            text = f"{m['url']}: cannot read: {clean(m.get('error', ''), 200)}"
        elif m["state"] == "missing" and not m["mirror_records"]:
            text = f"{m['url']}: no mirror there yet ({m['local_records']} records only local)"
        else:
            text = f"{m['url']}: {m['mirror_records']} of {m['local_records']} records"
            if m["lag_records"]:
                text += f" ({m['lag_records']} not yet mirrored)"
            elif m["ahead_records"]:
                text += f" (the mirror is {m['ahead_records']} records AHEAD of this checkpoint)"
            else:
                text += " (up to date)"
            if m["manifest_updated"] is not None:
                text += (
                    f"; manifest updated {when(m['manifest_updated'])} "
                    f"({ago(m['manifest_updated'], now)})"
                )
            if not m["same_sweep"]:
                text += "; WARNING: it holds a different sweep (another sweep id)"
        row("mirror", text)
    if d["verified"]:
        row("verified", "yes (every hash checked)")
    else:
        row("verified", f"NO: {len(d['problems'])} problem(s)")
        for p in d["problems"]:
            lines.append(f"{'':13}{clean(p['where'], 200)}: {clean(p['what'], 300)}")
    return "\n".join(lines)

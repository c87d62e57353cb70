"""`resumable report`: one self-contained HTML page about a sweep, plots included.

Sections: summary numbers; completed items over time across launches (each launch its own
colour, interrupted launches marked, the time lost to them shaded); a table of launches; the
distribution of item durations (the ``duration`` of result and failure records) with the
slowest items; failures by error type (table and bar chart); shards; verification. `render`
gathers the facts once (`_Facts`) and joins one function per section, in page order.

Plots are drawn with matplotlib's Agg canvas (no pyplot, no global backend change; see
_report_plots.py) and embedded as base64 PNG ``<img>`` tags, so the page is one file that opens
anywhere. matplotlib is an optional extra (``pip install 'resumable-sweeps[report]'``);
`require_matplotlib` raises ImportError without it. Every user-provided string (keys,
messages, names, hosts) is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._durable import atomic_writer
from ._history import Finished, Launch, Timeline, timelines
from ._item_snapshot import repeatedly_interrupted
from ._journal import MAX_TIME
from ._report_plots import plot_durations as plot_durations  # re-exported (public)
from ._report_plots import plot_failures as plot_failures  # re-exported (public)
from ._report_plots import plot_progress as plot_progress  # re-exported (public)
from ._report_plots import require_matplotlib as require_matplotlib  # re-exported (public)
from ._status_text import rate_text, span
from ._urls import redact
from ._version import __version__
from .errors import IntegrityError
from .status import SweepStatus


def write_report(
    view: Any,
    path: str | Path,
    *,
    location: str | None = None,
    problems: list[Any] | None = None,
) -> Path:
    """Render the report of `view` (CheckpointView or MergedView) into `path`, atomically.

    `problems` is what `view.verify()` found (None: not run again; opening verified it).
    """
    require_matplotlib()
    page = _redact_page(render(view, location=location or view.location, problems=problems or []))
    target = Path(path)
    with atomic_writer(target) as fh:
        fh.write(page.encode("utf-8"))
    return target


# -- HTML helpers -------------------------------------------------------------------------------


_DATA_URI_RE = re.compile(r"(data:image/png;base64,[A-Za-z0-9+/=]*)")


def _redact_page(page: str) -> str:
    """The page with every credential redacted (`redact`), embedded images left intact."""
    parts = _DATA_URI_RE.split(page)
    return "".join(p if i % 2 else redact(p) for i, p in enumerate(parts))


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _key(s: str, limit: int = 80) -> str:
    """A key for the page: control characters made visible, long keys cut, escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s[: limit + 1])
    if len(s) > limit:
        shown = shown[:limit] + f"... ({len(s)} chars)"
    return f"<code>{_e(shown)}</code>"


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return _dt.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are already-escaped HTML."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


# -- the page -----------------------------------------------------------------------------------


MAX_DURATION_S = 1e9  # about 31 years: a longer item duration is damage, not data


def _check_plausible(tl: Any) -> None:
    """Refuse (IntegrityError) durations and times no real run produces (1e308 s, NaN, < 0):
    they would only turn into overflowing plots and meaningless figures."""
    for f in tl.finished:
        d = f.duration
        if d is not None and not 0.0 <= d <= MAX_DURATION_S:  # also false for NaN
            raise IntegrityError(
                f"{tl.location}: record {f.seq} (item {f.key!r:.80}) has a duration of {d!r} "
                f"s; expected a number of seconds in [0, {MAX_DURATION_S:g}]"
            )
        if not 0.0 <= f.t <= MAX_TIME:
            raise IntegrityError(f"{tl.location}: record {f.seq} has an implausible time {f.t!r}")
    for launch in tl.launches:
        if not (0.0 <= launch.t <= MAX_TIME and 0.0 <= launch.last_t <= MAX_TIME):
            raise IntegrityError(
                f"{tl.location}: launch record {launch.seq} has an implausible time {launch.t!r}"
            )


@dataclass
class _Facts:
    """What every section draws from, gathered once from the view."""

    view: Any
    location: str
    problems: list[Any]
    now: float
    status: SweepStatus
    tls: list[Timeline]
    finished: list[Finished]
    ok_d: list[float]
    fail_d: list[float]
    launches: list[tuple[Timeline, Launch]]
    interrupted: list[Launch]
    lost: float


def _gather(view: Any, location: str, problems: list[Any]) -> _Facts:
    now = time.time()
    status = view.status()
    tls = timelines(view)
    finished = [f for tl in tls for f in tl.finished]
    for tl in tls:
        _check_plausible(tl)
    launches = [(tl, launch) for tl in tls for launch in tl.launches]
    interrupted = [launch for _, launch in launches if launch.outcome == "interrupted"]
    return _Facts(
        view=view,
        location=location,
        problems=problems,
        now=now,
        status=status,
        tls=tls,
        finished=finished,
        ok_d=[f.duration for f in finished if f.ok and f.duration is not None],
        fail_d=[f.duration for f in finished if not f.ok and f.duration is not None],
        launches=launches,
        interrupted=interrupted,
        lost=sum(launch.lost_s or 0.0 for launch in interrupted),
    )


def render(view: Any, *, location: str, problems: list[Any]) -> str:
    """The whole page: one function per section, in page order."""
    facts = _gather(view, location, problems)
    sections = (
        _header,
        _summary,
        _progress_section,
        _durations_section,
        _failures_section,
        _shards_section,
        _verification_section,
    )
    parts = [html for html in (section(facts) for section in sections) if html]
    title = f"resumable report: {view.name[:80]}"
    return _PAGE.format(title=_e(title), style=_STYLE, body="\n".join(parts))


def _header(facts: _Facts) -> str:
    return (
        f"<h1>Sweep {_key(facts.view.name, 200)}</h1>\n"
        f'<p class="sub">{_e(redact(facts.location))} &middot; report generated '
        f"{_e(_when(facts.now))} by resumable {_e(__version__)}</p>"
    )


def _summary(facts: _Facts) -> str:
    status, launches, interrupted = facts.status, facts.launches, facts.interrupted
    ok_d, fail_d = facts.ok_d, facts.fail_d
    first = min((launch.t for _, launch in launches), default=None)
    last = max(
        [f.t for f in facts.finished] + [launch.last_t for _, launch in launches], default=None
    )
    pct = 100.0 * status.done / status.total if status.total else 0.0
    problems = facts.problems
    cards = [
        ("items", f"{status.total}"),
        ("done", f"{status.done} ({pct:.1f}%)"),
        ("failed", f"{status.failed}"),
        ("pending", f"{status.pending}"),
        ("stale", f"{status.stale}"),
        ("launches", f"{len(launches)}"),
        ("interrupted", f"{len(interrupted)}"),
        ("items interrupted 2+ times", f"{len(repeatedly_interrupted(facts.view))}"),
        ("time lost", span(facts.lost) if interrupted else "none"),
        ("wall time", span(last - first) if first and last else "-"),
        ("item time", span(sum(ok_d) + sum(fail_d)) if ok_d or fail_d else "-"),
        ("median item", span(statistics.median(ok_d)) if ok_d else "-"),
        ("rate", rate_text(status.rate_per_s)),
        ("ETA", "done" if not status.pending else span(status.eta_s)),
        ("last item", _when(status.last_finished)),
        ("verified", "yes" if not problems else f"NO ({len(problems)} problems)"),
    ]
    return (
        '<section id="summary"><h2>Summary</h2><div class="cards">'
        + "".join(
            f'<div class="card"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
            for k, v in cards
        )
        + "</div></section>"
    )


def _progress_section(facts: _Facts) -> str:
    tls, launches, interrupted = facts.tls, facts.launches, facts.interrupted
    sec = ['<section id="progress"><h2>Progress over time</h2>']
    if launches:
        sec.append(_img(plot_progress(tls), "completed items over time"))
        sec.append(
            f"<p>{len(launches)} launch(es); {len(interrupted)} interrupted before the sweep was "
            f"complete (preempted, killed or crashed: another launch followed while items were "
            f"pending), losing {_e(span(facts.lost))} between their last record and the next "
            f"launch.</p>"
        )
        rows = []
        for tl, launch in launches:
            shard = [f"{tl.shard[0]}/{tl.shard[1]}" if tl.shard else "-"] if len(tls) > 1 else []
            rows.append(
                [
                    *shard,
                    str(launch.index + 1),
                    _e(launch.launch_id),
                    _e(f"{launch.host} (pid {launch.pid})"),
                    _e(_when(launch.t)),
                    _e(_when(launch.last_t)),
                    _e(span(launch.last_t - launch.t)),
                    str(launch.results),
                    str(launch.failures),
                    f'<span class="{launch.outcome}">{_e(launch.outcome)}</span>',
                    _e(span(launch.lost_s)) if launch.lost_s is not None else "",
                ]
            )
        head = ["shard"] if len(tls) > 1 else []
        head += ["#", "launch", "host", "started", "last record", "ran", "results", "failures"]
        sec.append(_table([*head, "outcome", "time lost"], rows, "launches"))
    else:
        sec.append("<p>No launch recorded.</p>")
    for note in (tl.note for tl in tls if tl.note):
        sec.append(f'<p class="note">{_e(note)}</p>')
    return "".join(sec) + "</section>"


def _durations_section(facts: _Facts) -> str:
    ok_d, fail_d = facts.ok_d, facts.fail_d
    sec = ['<section id="durations"><h2>Item durations</h2>']
    if ok_d or fail_d:
        sec.append(_img(plot_durations(ok_d, fail_d), "distribution of item durations"))
        qs = sorted(ok_d or fail_d)
        stats = [
            ("min", qs[0]),
            ("median", statistics.median(qs)),
            ("90%", qs[min(len(qs) - 1, int(0.9 * len(qs)))]),
            ("max", qs[-1]),
            ("mean", statistics.fmean(qs)),
        ]
        sec.append(_table([k for k, _ in stats], [[_e(span(v)) for _, v in stats]], "stats"))
        timed = [(f.duration, f) for f in facts.finished if f.duration is not None]
        slow = [f for _, f in sorted(timed, key=lambda pair: -pair[0])]
        rows = [
            [_key(f.key), _e(span(f.duration)), "result" if f.ok else _e(f.error_type or "")]
            for f in slow[:10]
        ]
        sec.append("<h3>Slowest items</h3>" + _table(["key", "duration", "outcome"], rows))
    else:
        sec.append("<p>No durations recorded.</p>")
    return "".join(sec) + "</section>"


def _failures_section(facts: _Facts) -> str:
    status = facts.status
    sec = ['<section id="failures"><h2>Failures</h2>']
    if status.failures:
        groups = [(g.error_type, g.count) for g in status.failures]
        sec.append(_img(plot_failures(groups), "failures by error type"))
        rows = [
            [
                f"<code>{_e(g.error_type)}</code>",
                str(g.count),
                _key(g.example_key),
                f"<pre>{_e(g.example_message)}</pre>",
            ]
            for g in status.failures
        ]
        sec.append(_table(["error type", "items", "example key", "example message"], rows))
        history = Counter(f.error_type for f in facts.finished if not f.ok)
        if sum(history.values()) != status.failed:
            sec.append(
                f"<p>{sum(history.values())} failure record(s) in the journal in all "
                f"(retried ones included).</p>"
            )
    else:
        sec.append("<p>No failed items.</p>")
    return "".join(sec) + "</section>"


def _shards_section(facts: _Facts) -> str:
    """Per-shard counts of a sharded sweep; nothing for an unsharded one."""
    from .view import MergedView

    status = facts.status
    if not (isinstance(facts.view, MergedView) and status.shards):
        return ""
    rows = []
    for s in status.shards:
        if not s.get("started"):
            rows.append([str(s["shard"]), "not started", "", "", "", ""])
            continue
        rows.append(
            [
                str(s["shard"]),
                str(s["total"]),
                str(s["done"]),
                str(s["failed"]),
                str(s["pending"]),
                _e(_when(s["last_finished"])),
            ]
        )
    return (
        '<section id="shards"><h2>Shards</h2>'
        + _table(["shard", "items", "done", "failed", "pending", "last item"], rows)
        + "</section>"
    )


def _verification_section(facts: _Facts) -> str:
    problems = facts.problems
    sec = ['<section id="verification"><h2>Verification</h2>']
    if problems:
        items = "".join(f"<li>{_e(redact(str(p)))}</li>" for p in problems)
        sec.append(f'<p class="bad">{len(problems)} problem(s):</p><ul>{items}</ul>')
    else:
        sec.append("<p>Every hash checked: the checkpoint is intact.</p>")
    return "".join(sec) + "</section>"


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1000px;padding:0 1em;color:#222}
h1{margin-bottom:.2em}.sub{color:#666;margin-top:0}
section{margin:2em 0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
.cards{display:flex;flex-wrap:wrap;gap:.6em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;min-width:7em}
.card .v{font-size:1.25em;font-weight:600}.card .k{color:#666;font-size:.85em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f6f6f6}pre{margin:0;white-space:pre-wrap;max-width:40em}
img.plot{max-width:100%;height:auto;display:block;margin:.8em 0}
.interrupted,.bad{color:#d62728;font-weight:600}.completed{color:#2ca02c}
.open{color:#666}.note{color:#8a6d3b}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{body}
</body>
</html>
"""

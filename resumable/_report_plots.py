"""The report's plots: PNG images drawn with matplotlib, one function per plot.

Plots are drawn with matplotlib's Agg canvas (no pyplot, no global backend change) and returned
as PNG bytes, which the report (report.py) embeds as base64 ``<img>`` tags. matplotlib is an
optional extra (``pip install 'resumable-sweeps[report]'``); `require_matplotlib` raises
ImportError without it, and matplotlib is imported only when a plot is drawn. Labels drawn
from user-provided strings are made printable and free of mathtext (`_short`).
"""

from __future__ import annotations

import datetime as _dt
import io
import statistics
from typing import Any

from ._history import Timeline
from ._status_text import span

_COLORS = [
    "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#d62728",
]  # fmt: skip
_LOST = "#d62728"


def require_matplotlib() -> None:
    """Raise ImportError unless matplotlib (the `report` extra) is importable."""
    import matplotlib  # noqa: F401
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _figure(w: float = 9.5, h: float = 3.8) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _dates(ts: list[float]) -> list[_dt.datetime]:
    return [_dt.datetime.fromtimestamp(t).astimezone() for t in ts]


def _curves(tl: Timeline) -> dict[int, tuple[list[float], list[int]]]:
    """Per launch index: (times, cumulative completed items), each launch's curve starting
    where the previous one ended."""
    events = sorted(
        [(launch.seq, 0, launch.index, launch.t) for launch in tl.launches]
        + [(f.seq, 1, f.launch, f.t) for f in tl.finished if f.ok]
    )
    curves: dict[int, tuple[list[float], list[int]]] = {}
    count = 0
    for _seq, is_result, idx, t in events:
        if not is_result:
            curves[idx] = ([t], [count])
            continue
        xs, ys = curves.setdefault(idx, ([t], [count]))
        count += 1
        xs.append(t)
        ys.append(count)
    return curves


def plot_progress(tls: list[Timeline]) -> bytes:
    """Completed items over time; launches coloured, interruptions marked, lost time shaded."""
    import matplotlib.dates as mdates

    fig = _figure()
    ax = fig.add_subplot()
    sharded = len(tls) > 1
    labelled: set[str] = set()

    def once(label: str) -> str | None:
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for si, tl in enumerate(tls):
        curves = _curves(tl)
        for n, idx in enumerate(sorted(curves)):
            xs, ys = curves[idx]
            if sharded:
                color = _COLORS[si % len(_COLORS)]
                label = f"shard {tl.shard[0] if tl.shard else si}" if n == 0 else None
            else:
                color = _COLORS[max(idx, 0) % len(_COLORS)]
                label = f"launch {idx + 1}" if idx >= 0 else "before any launch"
            ax.step(_dates(xs), ys, where="post", color=color, lw=1.8, label=label)
        for launch in tl.launches:
            ax.axvline(_dates([launch.t])[0], color="#555", ls=":", lw=0.9, label=once("launch"))
        for i, launch in enumerate(tl.launches):
            if launch.outcome != "interrupted":
                continue
            nxt = tl.launches[i + 1]
            y = curves.get(launch.index, ([0.0], [0]))[1][-1]
            ax.plot(
                _dates([launch.last_t]),
                [y],
                marker="X",
                ms=10,
                color=_LOST,
                ls="none",
                label=once("interrupted"),
            )
            ax.axvspan(
                *_dates([launch.last_t, nxt.t]), color=_LOST, alpha=0.15, label=once("time lost")
            )
    tz = _dt.datetime.now().astimezone().tzinfo
    # matplotlib leaves these two constructors unannotated
    locator = mdates.AutoDateLocator(tz=tz)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(locator, tz=tz)  # type: ignore[no-untyped-call]
    )
    ax.set_ylabel("completed items")
    ax.set_title("Completed items over time")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncols=2)
    return _png(fig)


def plot_durations(ok: list[float], failed: list[float]) -> bytes:
    import numpy as np

    fig = _figure(9.5, 3.4)
    ax = fig.add_subplot()
    values = [d for d in ok + failed if d > 0]
    log = bool(values) and max(values) / max(min(values), 1e-12) > 100
    if log:
        bins: Any = np.logspace(np.log10(min(values)), np.log10(max(values)), 40)
        ax.set_xscale("log")
        ok = [d for d in ok if d > 0]
        failed = [d for d in failed if d > 0]
    else:
        bins = 40
    data = [x for x in (ok, failed) if x]
    labels = [lab for lab, x in (("results", ok), ("failures", failed)) if x]
    colors = [c for c, x in (("#1f77b4", ok), (_LOST, failed)) if x]
    ax.hist(data, bins=bins, stacked=True, label=labels, color=colors)
    if ok:
        med = statistics.median(ok)
        ax.axvline(med, color="k", ls="--", lw=1, label=f"median {span(med)}")
    ax.set_xlabel("item duration (s)")
    ax.set_ylabel("items")
    ax.set_title("Item durations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_failures(groups: list[tuple[str, int]]) -> bytes:
    fig = _figure(9.5, 0.6 + 0.4 * len(groups))
    ax = fig.add_subplot()
    names = [_short(t) for t, _ in groups][::-1]
    counts = [n for _, n in groups][::-1]
    ax.barh(range(len(names)), counts, color=_LOST)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("failed items")
    ax.set_title("Failures by error type")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def _short(s: str, n: int = 40) -> str:
    s = "".join(c if c.isprintable() else "?" for c in s)
    s = s if len(s) <= n else s[: n - 1] + "..."
    return s.replace("$", r"\$")  # no mathtext in labels

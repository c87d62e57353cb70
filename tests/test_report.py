"""`resumable report`: the HTML page of a sweep preempted twice by real SIGTERMs.

The sweep is made by three launches of a real subprocess; the first two are sent SIGTERM
mid-way (the sweep's preemption guard exits at its next safe point), the third finishes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from resumable import ResumableSweep
from resumable.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE_KEY = "<b>k&'\"</b>"
HOSTILE_MESSAGE = "<script>alert('x')</script> & more"

WORKER = textwrap.dedent(
    f"""
    import sys, time
    import numpy as np
    from resumable import ResumableSweep

    items = [{{"i": i}} for i in range(24)]

    def key(c):
        return {HOSTILE_KEY!r} if c["i"] == 4 else f"item-{{c['i']:02d}}"

    with ResumableSweep(items, key=key, checkpoint_path=sys.argv[1]) as sweep:
        print("ready", flush=True)
        for item in sweep.pending:
            time.sleep(0.005 * (1 + item["i"] % 5))
            if item["i"] % 7 == 6:
                sweep.record_failure(item, ValueError({HOSTILE_MESSAGE!r}))
            else:
                sweep.record(item, {{"x": np.arange(3) * item["i"]}})
            print("recorded", flush=True)
    """
)


def _launch(script: Path, ckpt: Path, kill_after: int | None) -> int:
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ckpt)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        if kill_after is not None:
            for _ in range(kill_after):
                assert proc.stdout.readline().strip() == "recorded"
            proc.send_signal(signal.SIGTERM)
        proc.stdout.read()
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def preempted_twice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("preempted")
    script = root / "worker.py"
    script.write_text(WORKER)
    ckpt = root / "exp.h5"
    assert _launch(script, ckpt, kill_after=6) == 75  # the guard's exit code: preempted
    time.sleep(0.2)  # the machine is down for a while
    assert _launch(script, ckpt, kill_after=7) == 75
    time.sleep(0.1)
    assert _launch(script, ckpt, kill_after=None) == 0
    return ckpt


class Page(HTMLParser):
    """Collects sections, headings, images, table rows and the text of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.h2: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.tables: list[list[list[str]]] = []
        self.cards: dict[str, str] = {}
        self.text: list[str] = []
        self._tag: list[str] = []
        self._cell: list[str] | None = None
        self._card: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self._tag.append(tag)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "img":
            self.imgs.append(a)
            self._tag.pop()
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "div" and a.get("class") in ("v", "k"):
            self._card.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._tag and self._tag[-1] == tag:
            self._tag.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        if tag == "div" and len(self._card) == 2:
            value, name = self._card
            self.cards[name] = value
            self._card = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._tag and self._tag[-1] == "h2":
            self.h2.append(data)
        if self._card and self._tag and self._tag[-1] == "div":
            self._card[-1] += data


def parse(path: Path) -> tuple[str, Page]:
    html = path.read_text(encoding="utf-8")
    page = Page()
    page.feed(html)
    return html, page


def decode_png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    png = base64.b64decode(src[len(prefix) :], validate=True)
    assert png[:8] == PNG_SIGNATURE
    return png


def test_report_of_a_sweep_preempted_twice(
    preempted_twice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.image

    out = tmp_path / "report.html"
    assert main(["report", str(preempted_twice), "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote the report of sweep 'exp' to {out}\n"
    assert os.listdir(tmp_path) == ["report.html"]
    html, page = parse(out)
    assert page.sections == ["summary", "progress", "durations", "failures", "verification"]
    assert page.h2 == [
        "Summary",
        "Progress over time",
        "Item durations",
        "Failures",
        "Verification",
    ]
    # summary numbers
    assert page.cards["items"] == "24" and page.cards["pending"] == "0"
    assert page.cards["launches"] == "3" and page.cards["interrupted"] == "2"
    assert page.cards["failed"] == "3" and page.cards["done"] == "21 (87.5%)"
    assert page.cards["time lost"].endswith(("ms", " s")) and page.cards["verified"] == "yes"
    # launches: two interrupted (with the time lost to each), then one that completed
    launches = next(t for t in page.tables if t[0][0] == "#")
    assert [row[-2] for row in launches[1:]] == ["interrupted", "interrupted", "completed"]
    assert all(row[-1] for row in launches[1:3]) and launches[3][-1] == ""
    per_launch = [int(row[6]) + int(row[7]) for row in launches[1:]]
    # the item in flight when SIGTERM arrived is finished and recorded before the exit
    assert per_launch[0] in (6, 7) and per_launch[1] in (7, 8) and sum(per_launch) == 24
    # failures: table and chart
    failures = next(t for t in page.tables if t[0][0] == "error type")
    assert failures[1][:2] == ["ValueError", "3"]
    # three plots, real PNGs drawn by matplotlib
    assert [img["alt"] for img in page.imgs] == [
        "completed items over time",
        "distribution of item durations",
        "failures by error type",
    ]
    for img in page.imgs:
        png = decode_png(img["src"])
        width, height = struct.unpack(">II", png[16:24])
        assert width >= 600 and height >= 100 and len(png) > 5000
        pixels = matplotlib.image.imread(io.BytesIO(png))
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20
    progress = matplotlib.image.imread(io.BytesIO(decode_png(page.imgs[0]["src"])))[..., :3]
    red = (progress[..., 0] > 0.75) & (progress[..., 1] < 0.3) & (progress[..., 2] < 0.3)
    assert red.sum() > 50  # the interruption markers
    # user-provided text is escaped, never markup
    assert "<script>" not in html and "<b>k" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in html
    assert HOSTILE_MESSAGE in "".join(page.text)
    assert "&lt;b&gt;k&amp;&#x27;&quot;&lt;/b&gt;" in html


def test_status_counts_the_preemptions(
    preempted_twice: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(preempted_twice), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    h = d["history"]
    assert (h["launches"], h["interrupted"], h["exact"]) == (3, 2, True)
    assert [x["outcome"] for x in h["detail"]] == ["interrupted", "interrupted", "completed"]
    assert h["lost_s"] >= 0.3  # the sleeps between launches, at least
    assert all(x["lost_s"] > 0 for x in h["detail"][:2])
    assert main(["status", str(preempted_twice)]) == 0
    out = capsys.readouterr().out
    assert "launches   3, 2 interrupted before the sweep was complete" in out


def test_report_of_a_sharded_sweep_over_a_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, mirror = tmp_path / "exp.h5", tmp_path / "mirror"
    items = [{"i": i} for i in range(20)]
    for index in range(2):
        for _ in range(2):  # two launches per shard, the first stopped early
            with ResumableSweep(
                items, checkpoint_path=ckpt, shard=(index, 2), snapshot_dir=str(mirror)
            ) as sweep:
                for n, item in enumerate(sweep.pending):
                    if n == 3 and sweep.status().launches == 1:
                        break
                    sweep.record(item, item["i"] * 2.0, duration=0.1 * (1 + item["i"]))
    out = tmp_path / "r.html"
    assert main(["report", mirror.as_uri(), "-o", str(out)]) == 0
    _, page = parse(out)
    assert "shards" in page.sections and page.cards["interrupted"] == "2"
    assert page.cards["done"] == "20 (100.0%)" and page.cards["launches"] == "4"
    shards = next(t for t in page.tables if t[0][0] == "shard" and t[0][1] == "items")
    assert [row[0] for row in shards[1:]] == ["0", "1"]
    assert len(page.imgs) == 2  # no failures: no failure chart
    assert "No failed items." in "".join(page.text)
    for img in page.imgs:
        decode_png(img["src"])


def test_missing_matplotlib_is_a_clear_message(preempted_twice: Path, tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    env = {**os.environ, "PYTHONPATH": str(shim)}
    out = tmp_path / "r.html"
    res = subprocess.run(
        [sys.executable, "-m", "resumable", "report", str(preempted_twice), "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert res.stdout == ""
    assert "pip install 'resumable-sweeps[report]'" in res.stderr
    assert res.stderr.startswith("resumable: error: resumable report needs matplotlib")
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()
    # the rest of the command line works without it
    res = subprocess.run(
        [sys.executable, "-m", "resumable", "verify", str(preempted_twice)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr

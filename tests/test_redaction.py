"""No credential ever reaches an output (issue 11, item 5).

A URL may carry credentials in its user info (``s3://KEY:SECRET@bucket``), its query (signed
URLs, SAS tokens) or its fragment (``#access_token=...``). A property test puts a secret in
every position (user, password, query values under any name, bare query tokens, fragments,
percent-encoded, repeated) of URLs on real servers (moto S3, an http.server that serves a real
mirror, a refused port that forces retry warnings, memory://), then runs every output path:
exceptions (str, repr, the printed chain), log records, the CLI's stdout and stderr for status
(text and JSON), verify, export and report, and the files export and report write. The secret
must appear in none of them, in any form (raw, percent-decoded, percent-encoded).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable import ResumableSweep
from resumable._backend import clear_cache
from resumable._storage import Store
from resumable._urls import redact
from resumable.cli import main as cli_main
from resumable.errors import ResumableError

ITEMS = [{"i": i} for i in range(6)]
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789"


def _forms(secret: str) -> set[str]:
    return {secret, unquote(secret), quote(secret, safe=""), quote(unquote(secret), safe="")}


def _leaks(text: str, secret: str) -> list[str]:
    return [f for f in _forms(secret) if f and f in text]


def _exc_text(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    cur: BaseException | None = exc
    for _ in range(16):  # every cause, explicit or implicit, even if display suppresses it
        cur = cur.__cause__ or cur.__context__ if cur is not None else None
        if cur is None:
            break
        parts += [str(cur), repr(cur)]
    return "\n".join(parts)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("resumable") or record.levelno >= logging.WARNING:
            self.lines.append(self.format(record))
            if record.exc_info and record.exc_info[1] is not None:
                self.lines.append(_exc_text(record.exc_info[1]))


@st.composite
def secret_urls(draw: st.DrawFn, base: str) -> tuple[str, str]:
    """(URL under `base` with the secret somewhere, the secret)."""
    secret = "Zx" + draw(st.text(ALPHABET, min_size=8, max_size=14))
    shown = secret
    if draw(st.booleans()):  # percent-encoded: characters that must be escaped in a URL
        raw = secret[:5] + draw(st.sampled_from(["/", "@", ":", "#", "?", "&", "=", " ", "%"]))
        raw += secret[5:]
        shown = quote(raw, safe="")
        secret = raw
    positions = draw(
        st.lists(
            st.sampled_from(["user", "password", "query", "bare", "fragment", "fragkv"]),
            min_size=1,
            max_size=3,
        )
    )
    name = draw(st.sampled_from(["token", "sig", "foo", "X-Amz-Signature", "page", "sv"]))
    scheme, rest = base.split("://", 1)
    host, _, path = rest.partition("/")
    user = shown if "user" in positions else ("bob" if "password" in positions else None)
    userinfo = ""
    if user is not None:
        userinfo = user + (f":{shown}" if "password" in positions else "") + "@"
    query = []
    if "query" in positions:
        query += [f"a=1&{name}={shown}"]
    if "bare" in positions:
        query += [shown]
    frag = ""
    if "fragment" in positions:
        frag = f"#{shown}"
    elif "fragkv" in positions:
        frag = f"#access_token={shown}&x=1"
    url = f"{scheme}://{userinfo}{host}/{path}" + ("?" + "&".join(query) if query else "") + frag
    return url, secret


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """An http.server serving a real mirrored checkpoint at /m."""
    from tests.fixtures.servers import HTTPServer

    root = tmp_path_factory.mktemp("www")
    work = tmp_path_factory.mktemp("work")
    with ResumableSweep(ITEMS, checkpoint_path=work / "exp.h5", snapshot_dir=str(root / "m")) as sw:
        for item in list(sw.pending)[:4]:
            sw.record(item, {"v": item["i"]})
    server = HTTPServer(root)
    try:
        yield server.base_url
    finally:
        server.stop()


def _run_everything(url: str, workdir: Path) -> str:
    """Every output path for `url`, concatenated."""
    out: list[str] = []
    records = _Records()
    root_logger = logging.getLogger()
    root_logger.addHandler(records)
    old_level = logging.getLogger("resumable").level
    logging.getLogger("resumable").setLevel(logging.DEBUG)
    try:
        store = Store(url)
        out.append(repr(store) + store.display)
        for op in (
            lambda: store.read_bytes("manifest.json", max_bytes=1 << 20),
            lambda: store.exists("segments"),
            lambda: store.open_read("manifest.json").__enter__().read(),
        ):
            try:
                op()
            except ResumableError as exc:
                out.append(_exc_text(exc))
        try:
            ResumableSweep(ITEMS, checkpoint_path=workdir / "c" / "exp.h5", resume_from=url).close()
        except ResumableError as exc:
            out.append(_exc_text(exc))
        commands = [
            ["status", url],
            ["status", url, "--json"],
            ["verify", url],
            ["export", url, "--jsonl", str(workdir / "out.jsonl")],
            ["report", url, "-o", str(workdir / "report.html")],
        ]
        for argv in commands:
            stdout, stderr = io.StringIO(), io.StringIO()
            with (
                contextlib.redirect_stdout(stdout),
                contextlib.redirect_stderr(stderr),
                contextlib.suppress(SystemExit),
            ):
                cli_main(argv)
            out += [stdout.getvalue(), stderr.getvalue()]
        for f in ("out.jsonl", "report.html"):
            if (workdir / f).exists():
                out.append((workdir / f).read_text(errors="replace"))
                (workdir / f).unlink()
    finally:
        root_logger.removeHandler(records)
        logging.getLogger("resumable").setLevel(old_level)
    out += records.lines
    return "\n".join(out)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("RESUMABLE_RETRY_TOTAL_S", "1")
    monkeypatch.setenv("RESUMABLE_FETCH_DEADLINE_S", "10")


@pytest.mark.integration
@settings(
    max_examples=int(os.environ.get("RESUMABLE_REDACTION_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), backend=st.sampled_from(["s3", "http", "refused", "memory"]))
def test_no_output_path_ever_shows_a_secret(
    data, backend, served, s3_server, refused_url, quick_retries, tmp_path_factory
):
    base = {
        "s3": f"s3://{s3_server.new_bucket()}/ck",
        "http": f"{served}/m",
        "refused": f"{refused_url}/m",
        "memory": "memory://redaction/ck",
    }[backend]
    url, secret = data.draw(secret_urls(base))
    clear_cache()
    text = _run_everything(url, tmp_path_factory.mktemp("run"))
    assert not _leaks(text, secret), f"{url!r} leaked {_leaks(text, secret)} in:\n{text[:3000]}"


def test_the_served_mirror_is_really_read(served, tmp_path: Path, quick_retries) -> None:
    """The success path of the property test is a success (status shows the results)."""
    url = f"http://bob:Zxpassw0rdsecret@{served.removeprefix('http://')}/m?token=Zxq1#Zxfrag99"
    text = _run_everything(url, tmp_path)
    assert "4 done" in text or '"done": 4' in text, text[:2000]
    assert "Zxpassw0rdsecret" not in text and "Zxfrag99" not in text
    assert "http://***@127.0.0.1" in text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('Invalid bucket name "AKIAKEY:Zxsecret99@bucket": must match', "Zxsecret99"),
        ("s3://b/k#access_token=Zxtoken123", "Zxtoken123"),
        ("https://h/p?page=Zxvalue123&n=2", "Zxvalue123"),
        ("https://h/p?Zxbaretoken1", "Zxbaretoken1"),
        ("http://u%40ser:p%2Fss%3AZxword1@h/", "p/ss:Zxword1"),
    ],
)
def test_redact_positions(text: str, secret: str) -> None:
    assert not _leaks(redact(text), secret)


def test_a_secret_seen_once_is_scrubbed_everywhere_after() -> None:
    redact("s3://AKIAXYZ:ZxLaterLeak77@bucket/ck")
    assert "ZxLaterLeak77" not in redact("botocore said: ZxLaterLeak77 is wrong")
    assert redact(redact("https://h/p?a=Zx123456#frag")) == "https://h/p?a=REDACTED#REDACTED"


@pytest.mark.integration
@pytest.mark.slow
def test_the_real_cli_never_prints_a_secret(s3_server, served, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    host = served.removeprefix("http://")
    env = dict(os.environ, RESUMABLE_RETRY_ATTEMPTS="1", RESUMABLE_RETRY_TOTAL_S="1")
    cases = [
        (f"s3://AKIAKEY123:ZxS3cretKey99@{bucket}/ck", "ZxS3cretKey99"),
        (f"s3://{bucket}/ck#access_token=ZxFragTok42", "ZxFragTok42"),
        (f"http://{host}/m?sig=ZxSigValue7&page=ZxPageVal8", "ZxSigValue7"),
        (f"http://bob:ZxHttpPass5@{host}/m#access_token=ZxTok6", "ZxHttpPass5"),
    ]
    for url, secret in cases:
        for argv in (
            ["status", url],
            ["status", url, "--json"],
            ["verify", url],
            ["export", url, "--jsonl", str(tmp_path / "o.jsonl")],
            ["report", url, "-o", str(tmp_path / "r.html")],
        ):
            proc = subprocess.run(
                [sys.executable, "-m", "resumable", *argv],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            both = proc.stdout + proc.stderr
            assert "Traceback" not in both, both
            assert secret not in both and "ZxPageVal8" not in both, (argv, both)
            for f in ("o.jsonl", "r.html"):
                if (tmp_path / f).exists():
                    assert secret not in (tmp_path / f).read_text(errors="replace")
                    (tmp_path / f).unlink()


@pytest.mark.integration
@pytest.mark.slow
def test_chaos_output_never_shows_a_secret(refused_url: str) -> None:
    host = refused_url.removeprefix("http://")
    url = f"http://bob:ZxChaosPw9@{host}/x?token=ZxChaosTok7#access_token=ZxChaosFrag5"
    env = dict(os.environ, RESUMABLE_RETRY_ATTEMPTS="2", RESUMABLE_RETRY_TOTAL_S="1")
    for extra in ([], ["--json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "resumable", "chaos", "--checkpoint", url, "--kills", "1",
             "--timeout-s", "10", *extra, "--", sys.executable, "-c", "pass"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        both = proc.stdout + proc.stderr
        assert "http://***@127.0.0.1" in both, both
        for secret in ("ZxChaosPw9", "ZxChaosTok7", "ZxChaosFrag5"):
            assert secret not in both, both

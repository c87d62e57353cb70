"""Shared pytest fixtures: real servers on loopback (moto S3, http.server, a fault proxy).

- ``s3_server``: session-wide moto server; per test, AWS_* env vars point botocore at it
  (fake "testing" credentials) and s3fs's instance cache is cleared before and after.
- ``s3_bucket``: "s3://<fresh bucket>" on that server.
- ``http_server``: ``root, base_url = http_server`` serves a temp dir; ``set_status(path, 403)``
  and ``fail_times(path, n, 503)`` make it fail.
- ``fault_proxy``: a FaultProxy in front of the S3 server (up, no faults, stats cleared);
  AWS_ENDPOINT_URL points at it.
- ``refused_url``: an http:// URL on a loopback port where nothing listens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path for this conftest
    from fixtures.servers import FaultProxy, HTTPServer, S3Server, refused_url
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests.fixtures.servers import FaultProxy, HTTPServer, S3Server, refused_url


def _clear_s3fs_cache() -> None:
    """Drop fsspec's s3fs instances, which keep the endpoint they were made with. (Stores key
    their own instances by the AWS_* environment, so they follow the fixtures by themselves.)"""
    try:
        import s3fs
    except ImportError:  # pragma: no cover
        return
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def _moto_server() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_server(_moto_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    monkeypatch.setenv("AWS_ENDPOINT_URL", _moto_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(var, raising=False)
    _clear_s3fs_cache()
    yield _moto_server
    _clear_s3fs_cache()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    return f"s3://{s3_server.new_bucket()}"


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HTTPServer]:
    root = tmp_path / "www"
    root.mkdir()
    server = HTTPServer(root)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _fault_proxy_server(_moto_server: S3Server) -> Iterator[FaultProxy]:
    proxy = FaultProxy(_moto_server.endpoint)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def fault_proxy(
    _fault_proxy_server: FaultProxy, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    """One proxy per session (so clients can be reused), reset to a fresh state per test."""
    proxy = _fault_proxy_server
    proxy.reset(seed=20240601)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    _clear_s3fs_cache()
    try:
        yield proxy
    finally:
        proxy.reset()
        _clear_s3fs_cache()


@pytest.fixture(name="refused_url")
def _refused_url() -> str:
    return refused_url()

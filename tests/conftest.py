"""Shared pytest fixtures: real servers on loopback (moto S3, http.server, a fault proxy).

- ``s3_server``: session-wide moto server; per test, AWS_* env vars point botocore at it
  (fake "testing" credentials) and s3fs's instance cache is cleared before and after.
- ``s3_bucket``: "s3://<fresh bucket>" on that server.
- ``http_server``: ``root, base_url = http_server`` serves a temp dir; ``set_status(path, 403)``
  and ``fail_times(path, n, 503)`` make it fail.
- ``fault_proxy``: a FaultProxy in front of the S3 server (up, no faults, stats cleared);
  AWS_ENDPOINT_URL points at it.
- ``refused_url``: an http:// URL on a loopback port where nothing listens.
- ``gcs_server`` / ``gcs_bucket``: gcp-storage-emulator; STORAGE_EMULATOR_HOST points gcsfs at
  it, anonymously (fsspec config and FSSPEC_GS_TOKEN=anon, for subprocesses too).
- ``azurite`` / ``az_container``: Azurite's blob service; AZURE_STORAGE_CONNECTION_STRING
  points adlfs at it. ``az_container`` is "az://<fresh container>".
Emulators that are not installed skip their tests, saying why, unless
RESUMABLE_REQUIRE_EMULATORS=1 (set by scripts/test.sh, so CI never skips them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings

# Property tests check behaviour, never speed: on a loaded 2-core CI machine input generation and
# single examples can be slow, so the timing health check and the per-example deadline are off
# (the examples and their count stay as each test sets them).
settings.register_profile("resumable", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("resumable")

try:  # tests/ is not a package: pytest puts tests/ itself on sys.path for this conftest
    from fixtures.servers import (
        AzuriteServer,
        EmulatorMissing,
        FaultProxy,
        GCSServer,
        HTTPServer,
        S3Server,
        refused_url,
    )
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests.fixtures.servers import (
        AzuriteServer,
        EmulatorMissing,
        FaultProxy,
        GCSServer,
        HTTPServer,
        S3Server,
        refused_url,
    )

T = TypeVar("T")


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


# -- GCS and Azure emulators --------------------------------------------------------------------


def _start(make: Callable[[], T]) -> T:
    try:
        return make()
    except EmulatorMissing as exc:
        if os.environ.get("RESUMABLE_REQUIRE_EMULATORS") == "1":
            pytest.fail(f"emulator required (RESUMABLE_REQUIRE_EMULATORS=1): {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def _gcs_emulator() -> Iterator[GCSServer]:
    server = _start(GCSServer)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gcs_server(_gcs_emulator: GCSServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[GCSServer]:
    import fsspec.config

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", _gcs_emulator.endpoint)
    monkeypatch.setenv("FSSPEC_GS_TOKEN", "anon")  # subprocesses: fsspec reads it at import
    monkeypatch.setitem(fsspec.config.conf, "gs", {"token": "anon"})  # never ask Google
    yield _gcs_emulator


@pytest.fixture
def gcs_bucket(gcs_server: GCSServer) -> str:
    return f"gs://{gcs_server.new_bucket()}"


@pytest.fixture(scope="session")
def _azurite() -> Iterator[AzuriteServer]:
    server = _start(AzuriteServer)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def azurite(_azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzuriteServer]:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", _azurite.connection_string)
    for var in (
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)
    yield _azurite


@pytest.fixture
def az_container(azurite: AzuriteServer) -> str:
    return f"az://{azurite.new_container()}"

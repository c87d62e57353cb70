"""One conformance suite for the storage layer, run over every back end (in the style of zarr's
StoreTests): a local path, file://, memory://, S3 (moto), GCS (gcp-storage-emulator), Azure
Blob (Azurite) and HTTP (python's http.server, read-only). Each back end is a real server on
127.0.0.1 or a real directory.

What every back end must do the same way: missing vs unreachable vs permanent errors, bounded
reads, create-only writes, compare-and-swap, listing and deletion. (Hook: deadline-bound reads
are added beside `test_reads_are_bounded` by the read-deadline work of issue 11.)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from resumable._storage import Store
from resumable.errors import (
    IntegrityError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    SourceUnreachableError,
    StorageError,
)


@dataclass
class Backend:
    name: str
    root: str  # a fresh, empty place
    put: Callable[[str, bytes], None]  # place an object there (HTTP: on the served disk)
    writable: bool = True
    cas_enforced: bool = True  # False: the emulator ignores preconditions
    no_container: str | None = None  # a root in a bucket/container that does not exist
    go_down: Callable[[], str] | None = None  # point clients at a refused port; the new root
    forbid: Callable[[str], None] | None = None  # make the server answer 403 for this name


BACKENDS = [
    "path",
    "file-url",
    "memory",
    pytest.param("s3", marks=pytest.mark.integration),
    pytest.param("gcs", marks=pytest.mark.integration),
    pytest.param("azure", marks=pytest.mark.integration),
    pytest.param("http", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    refused_url: str,
) -> Iterator[Backend]:
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("RESUMABLE_RETRY_TOTAL_S", "2")
    kind = request.param
    if kind in ("path", "file-url"):
        root = tmp_path / "store dir"
        url = str(root) if kind == "path" else root.as_uri()
        yield Backend(kind, url, lambda n, d: Store(url).write_bytes(n, d))
    elif kind == "memory":
        url = f"memory://conformance/{uuid.uuid4().hex}"
        yield Backend(kind, url, lambda n, d: Store(url).write_bytes(n, d))
    elif kind == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        url = f"{bucket}/p"

        def s3_down() -> str:
            monkeypatch.setenv("AWS_ENDPOINT_URL", refused_url)
            return url

        yield Backend(
            kind, url, lambda n, d: Store(url).write_bytes(n, d),
            no_container="s3://no-such-bucket-zz9/p", go_down=s3_down,
        )  # fmt: skip
    elif kind == "gcs":
        bucket = request.getfixturevalue("gcs_bucket")
        url = f"{bucket}/p"

        def gcs_down() -> str:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", refused_url)
            return url

        yield Backend(
            kind, url, lambda n, d: Store(url).write_bytes(n, d),
            cas_enforced=False, no_container="gs://no-such-bucket-zz9/p", go_down=gcs_down,
        )  # fmt: skip
    elif kind == "azure":
        container = request.getfixturevalue("az_container")
        url = f"{container}/p"
        server = request.getfixturevalue("azurite")

        def az_down() -> str:
            refused = server.connection_string.replace(
                server.endpoint.rsplit("/", 1)[0], refused_url
            )
            monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", refused)
            return url

        yield Backend(
            kind, url, lambda n, d: Store(url).write_bytes(n, d),
            no_container="az://no-such-container-zz9/p", go_down=az_down,
        )  # fmt: skip
    else:
        server = request.getfixturevalue("http_server")
        served, base = server

        def put(name: str, data: bytes) -> None:
            path = served / "d" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        yield Backend(
            kind, f"{base}/d", put, writable=False,
            go_down=lambda: refused_url + "/d",
            forbid=lambda name: server.set_status(f"/d/{name}", 403),
        )  # fmt: skip


def _writable(backend: Backend) -> None:
    if not backend.writable:
        pytest.skip(f"{backend.name} stores are read-only")


# -- reading --------------------------------------------------------------------------------------


def test_missing_objects_are_missing(backend: Backend) -> None:
    store = Store(backend.root)
    with pytest.raises(ObjectNotFoundError):
        store.read_bytes("nothing.json", max_bytes=100)
    with pytest.raises(ObjectNotFoundError):
        store.read_versioned("nothing.json", max_bytes=100)
    assert store.exists("nothing.json") is False
    with pytest.raises(ObjectNotFoundError), store.open_read("dir/nothing.bin") as f:
        f.read()


def test_reads_are_bounded(backend: Backend) -> None:
    data = bytes(range(256)) * 40
    backend.put("a/blob.bin", data)
    backend.put("a/empty.bin", b"")
    store = Store(backend.root)
    assert store.read_bytes("a/blob.bin", max_bytes=len(data)) == data
    with pytest.raises(IntegrityError, match="larger"):
        store.read_bytes("a/blob.bin", max_bytes=len(data) - 1)
    assert store.read_versioned("a/blob.bin", max_bytes=len(data))[0] == data
    with pytest.raises(IntegrityError, match="larger"):
        store.read_versioned("a/blob.bin", max_bytes=len(data) - 1)
    assert store.read_bytes("a/empty.bin", max_bytes=0) == b""
    assert store.exists("a/blob.bin")
    with store.open_read("a/blob.bin") as f:
        assert f.read() == data


# -- writing --------------------------------------------------------------------------------------


def test_writes_replace_whole_objects(backend: Backend) -> None:
    store = Store(backend.root)
    if not backend.writable:
        with pytest.raises(StorageError, match="read-only"):
            store.write_bytes("x.json", b"1")
        with pytest.raises(StorageError, match="read-only"):
            store.write_if("x.json", b"1", version=None)
        return
    store.write_bytes("x/y.json", b"first")
    store.write_bytes("x/y.json", b"second, longer")
    assert store.read_bytes("x/y.json", max_bytes=100) == b"second, longer"
    with store.open_write("x/big.bin") as f:
        f.write(b"z" * 100_000)
    assert store.read_bytes("x/big.bin", max_bytes=100_000) == b"z" * 100_000


def test_create_only_writes_never_replace(backend: Backend) -> None:
    _writable(backend)
    store = Store(backend.root)
    store.write_bytes("parts/p1", b"content", create_only=True)
    store.write_bytes("parts/p1", b"content", create_only=True)  # the same bytes: a retry
    if not backend.cas_enforced:
        return  # (the GCS emulator ignores ifGenerationMatch=0 too)
    with pytest.raises(ObjectExistsError):
        store.write_bytes("parts/p1", b"other content", create_only=True)
    assert store.read_bytes("parts/p1", max_bytes=100) == b"content"


def test_compare_and_swap(backend: Backend) -> None:
    _writable(backend)
    store = Store(backend.root)
    assert store.supports_cas
    v1 = store.write_if("m.json", b"one", version=None)
    assert store.read_versioned("m.json", max_bytes=10)[0] == b"one"
    if not backend.cas_enforced:
        # The GCS emulator accepts every upload (real GCS enforces ifGenerationMatch), and the
        # generation its upload reply names differs from the one its reads name.
        v2 = store.write_if("m.json", b"two", version=v1)
        assert store.read_versioned("m.json", max_bytes=10)[0] == b"two"
        return
    assert store.read_versioned("m.json", max_bytes=10) == (b"one", v1)
    assert store.write_if("m.json", b"one", version=None) == v1  # a retry whose reply was lost
    v2 = store.write_if("m.json", b"two", version=v1)
    assert v2 != v1
    assert store.read_versioned("m.json", max_bytes=10) == (b"two", v2)
    with pytest.raises(ObjectChangedError, match="created"):
        store.write_if("m.json", b"three", version=None)
    with pytest.raises(ObjectChangedError, match="replaced"):
        store.write_if("m.json", b"three", version=v1)  # a zombie's stale version
    assert store.read_versioned("m.json", max_bytes=10) == (b"two", v2)
    assert store.write_if("m.json", b"two", version=v1) == v2  # its own bytes: its write


# -- listing and deleting ------------------------------------------------------------------------


def test_listing(backend: Backend) -> None:
    _writable(backend)
    store = Store(backend.root)
    assert store.list_dir("segments") == {}
    for name in ("a.jsonl", "b.jsonl.0000000001-0000000002.0123456789abcdef"):
        backend.put(f"segments/{name}", b"x\n")
    backend.put("segments/deeper/c", b"not listed: not directly under")
    found = store.list_dir("segments")
    assert set(found) == {"a.jsonl", "b.jsonl.0000000001-0000000002.0123456789abcdef"}
    for mtime in found.values():
        assert mtime is not None and abs(mtime - time.time()) < 600, found


def test_deletion(backend: Backend) -> None:
    _writable(backend)
    store = Store(backend.root)
    backend.put("segments/gone", b"x")
    store.delete("segments/gone")
    assert not store.exists("segments/gone")
    store.delete("segments/gone")  # missing is fine by default
    with pytest.raises(ObjectNotFoundError):
        store.delete("segments/gone", missing_ok=False)


# -- failures -------------------------------------------------------------------------------------


def test_unreachable_is_never_missing(backend: Backend) -> None:
    if backend.go_down is None:
        pytest.skip(f"{backend.name} cannot be unreachable")
    store = Store(backend.go_down())
    t = time.monotonic()
    with pytest.raises(SourceUnreachableError):
        store.read_bytes("m.json", max_bytes=100)
    with pytest.raises(SourceUnreachableError):
        store.exists("m.json")
    if backend.writable:
        with pytest.raises(SourceUnreachableError):
            store.read_versioned("m.json", max_bytes=100)
        with pytest.raises(SourceUnreachableError):
            store.write_if("m.json", b"x", version=None)
    assert time.monotonic() - t < 60  # bounded by our policy, not a library's own loop


def test_permanent_failures_are_neither_missing_nor_retried(backend: Backend) -> None:
    if backend.forbid is not None:
        backend.put("m.json", b"{}")
        backend.forbid("m.json")
        with pytest.raises(StorageError, match="access denied") as info:
            Store(backend.root).read_bytes("m.json", max_bytes=10)
        assert not isinstance(info.value, (ObjectNotFoundError, SourceUnreachableError))
        return
    if backend.no_container is None:
        if backend.name in ("path", "file-url"):
            Store(backend.root).write_bytes("dir/f", b"x")  # a directory read as an object
            with pytest.raises(StorageError) as info:
                Store(backend.root).read_bytes("dir", max_bytes=10)
            assert not isinstance(info.value, (ObjectNotFoundError, SourceUnreachableError))
            return
        pytest.skip(f"{backend.name}: no permanent failure to provoke")
    store = Store(backend.no_container)
    with pytest.raises(StorageError) as info:
        store.read_bytes("m.json", max_bytes=10)
    assert not isinstance(info.value, (ObjectNotFoundError, SourceUnreachableError))

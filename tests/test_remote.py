"""Reading a mirrored checkpoint back (resumable._remote) from local dirs, file://, memory://,
a moto S3 server and python's http.server: where the manifest is, missing vs unreachable, and
tampering with any stored object being detected before anything is used or installed."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from resumable import MirrorOptions, ResumableSweep
from resumable._checkpoint import load, progress_dir_for
from resumable._manifest import MANIFEST_NAME
from resumable._remote import download, read_manifest, source_store
from resumable._storage import Store
from resumable.errors import (
    IntegrityError,
    SourceUnreachableError,
    StorageError,
)

ITEMS = [{"i": i} for i in range(40)]
OPTS = MirrorOptions(interval_s=0.0, gc_delay_s=60.0, max_backoff_s=0.2, flush_timeout_s=20.0)


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("RESUMABLE_RETRY_TOTAL_S", "2")


def _result(i: int) -> dict:
    return {"i": i, "pad": "x" * 300, "sq": i * i * 0.5}


def _mirrored(ckpt: Path, url: str, n: int) -> ResumableSweep:
    """A closed sweep with at least `n` more results mirrored to `url`, ending with records in
    its active segment: the mirror then holds sealed segments and at least one chunk."""
    sweep = ResumableSweep(
        ITEMS,
        checkpoint_path=ckpt,
        snapshot_dir=url,
        resume_from=url,
        segment_bytes=1500,
        mirror_options=OPTS,
    )
    pending = list(sweep.pending)
    for k, item in enumerate(pending):
        if k >= n and sweep._journal.writer.view().active_records:
            break
        sweep.record(item, _result(item["i"]))
    sweep.close()
    return sweep


def _objects(mirror: Path) -> dict[str, bytes]:
    out = {MANIFEST_NAME: (mirror / MANIFEST_NAME).read_bytes()}
    for p in sorted((mirror / "segments").iterdir()):
        out[f"segments/{p.name}"] = p.read_bytes()
    return out


def _tree(d: Path) -> dict[str, bytes]:
    """Every file under `d` but the LOCK (which each open rewrites with its pid)."""
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != "LOCK"
    }


# -- where the manifest is -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("/data/m", "/data/m"),
        ("/data/m/", "/data/m/"),
        ("/data/m/manifest.json", "/data/m"),
        ("manifest.json", "."),
        ("s3://b/sweeps/exp", "s3://b/sweeps/exp"),
        ("s3://b/sweeps/exp/manifest.json", "s3://b/sweeps/exp"),
        ("s3://b/sweeps/exp/manifest.json/", "s3://b/sweeps/exp"),
        ("https://h/m/manifest.json?sig=abc&x=1", "https://h/m?sig=abc&x=1"),
        ("https://h/m?sig=abc", "https://h/m?sig=abc"),
        ("file:///data/m/manifest.json", "file:///data/m"),
        ("s3://b/not-manifest.json", "s3://b/not-manifest.json"),
    ],
)
def test_source_store_finds_the_directory(url: str, root: str) -> None:
    assert source_store(url).root == root


def test_source_store_query_string_is_redacted() -> None:
    store = source_store("https://h/m/manifest.json?X-Amz-Signature=SECRETSIG&x=1")
    assert "SECRETSIG" not in store.display
    assert store.url(MANIFEST_NAME) == "https://h/m/manifest.json?X-Amz-Signature=SECRETSIG&x=1"


# -- missing vs unreachable ------------------------------------------------------------------


def test_missing_local_sources_are_none(tmp_path: Path) -> None:
    assert read_manifest(Store(str(tmp_path / "nope"))) is None
    assert read_manifest(Store((tmp_path / "nope").as_uri())) is None
    (tmp_path / "empty" / "segments").mkdir(parents=True)  # an empty folder is no checkpoint
    assert read_manifest(Store(str(tmp_path / "empty"))) is None
    assert read_manifest(Store(f"memory://nothing-{uuid.uuid4().hex}/x")) is None


def test_read_and_download_round_trip_every_kind_of_store(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    sweep = _mirrored(tmp_path / "a" / "exp.h5", str(mirror), 12)
    local = load(sweep.progress_dir)
    assert local is not None
    mem = f"memory://rt-{uuid.uuid4().hex}/m"
    mem_store = Store(mem)
    for name, data in _objects(mirror).items():
        mem_store.write_bytes(name, data)
    for url in (str(mirror), mirror.as_uri(), str(mirror / MANIFEST_NAME), mem):
        store = source_store(url)
        found = read_manifest(store)
        assert found is not None, url
        tmp, loaded = download(store, found[0], tmp_path / "x" / "exp.h5.resumable")
        try:
            assert loaded.state.last_seq == local.state.last_seq
            assert loaded.state.last_hash == local.state.last_hash
            assert list(loaded.state.results) == list(local.state.results)
            assert loaded.manifest.active is None  # a mirror has only immutable parts
        finally:
            shutil.rmtree(tmp)
    assert os.listdir(tmp_path / "x") == []


def test_a_manifest_landing_while_the_parts_are_listed_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader racing a first mirror: the manifest is not there yet, the mirror writes it and
    uploads its first parts, then the reader lists the parts. That is the mirror's order (the
    manifest first), not damage: the reader reads the manifest again and uses it. A manifest
    still missing after that is damage."""
    import resumable._remote as remote

    mirror = tmp_path / "mirror"
    _mirrored(tmp_path / "a" / "exp.h5", str(mirror), 12)
    manifest = (mirror / MANIFEST_NAME).read_bytes()
    (mirror / MANIFEST_NAME).unlink()
    holds_parts = remote._holds_parts
    landed = []

    def parts_listed_after_the_manifest_landed(store: Store) -> bool:
        if not landed:  # the mirror's manifest lands between the reader's two requests
            (mirror / MANIFEST_NAME).write_bytes(manifest)
            landed.append(True)
        return holds_parts(store)

    monkeypatch.setattr(remote, "_holds_parts", parts_listed_after_the_manifest_landed)
    found = read_manifest(source_store(str(mirror)))
    assert found is not None and found[0] == manifest
    monkeypatch.setattr(remote, "_holds_parts", holds_parts)
    (mirror / MANIFEST_NAME).unlink()
    with pytest.raises(IntegrityError, match=r"is missing but .* holds checkpoint parts"):
        read_manifest(source_store(str(mirror)))


@pytest.mark.integration
def test_s3_missing_key_is_none_missing_bucket_is_an_error(s3_bucket: str) -> None:
    assert read_manifest(Store(f"{s3_bucket}/sweeps/none")) is None
    with pytest.raises(StorageError) as info:
        read_manifest(Store(f"s3://no-such-bucket-{uuid.uuid4().hex[:10]}/sweeps/exp"))
    assert not isinstance(info.value, SourceUnreachableError)
    assert "bucket does not exist" in str(info.value)


@pytest.mark.integration
def test_http_missing_forbidden_unavailable(http_server, tmp_path: Path) -> None:
    root, base = http_server
    assert read_manifest(source_store(f"{base}/none")) is None  # 404
    _mirrored(tmp_path / "a" / "exp.h5", str(root / "m"), 6)
    found = read_manifest(source_store(f"{base}/m/manifest.json"))
    assert found is not None and found[1].sealed_records > 0

    http_server.fail_times("/m/manifest.json", 1, 503)  # fewer than the attempts: retried
    assert read_manifest(source_store(f"{base}/m")) is not None

    http_server.set_status("/m/manifest.json", 503)
    with pytest.raises(SourceUnreachableError, match="after 2 attempts"):
        read_manifest(source_store(f"{base}/m"))
    http_server.set_status("/m/manifest.json", 403)
    with pytest.raises(StorageError, match="access denied") as info:
        read_manifest(source_store(f"{base}/m"))
    assert not isinstance(info.value, SourceUnreachableError)
    http_server.set_status("/m/manifest.json", 404)  # manifest gone, parts still served
    with pytest.raises(IntegrityError, match="missing"):
        read_manifest(source_store(f"{base}/m"))


@pytest.mark.integration
def test_refused_connection_is_unreachable(refused_url: str) -> None:
    with pytest.raises(SourceUnreachableError):
        read_manifest(source_store(f"{refused_url}/m"))


# -- tampering -------------------------------------------------------------------------------


def _flip(data: bytes, at: int | None = None) -> bytes:
    at = len(data) // 2 if at is None else at
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _pick(manifest: dict, which: str) -> str:
    names = [s["name"] for s in manifest["segments"]]
    sealed = [n for n in names if n.count(".") == 2]  # seg-N.jsonl.<sha16>
    chunks = [n for n in names if n.count(".") == 3]  # seg-N.jsonl.<first>-<last>.<sha16>
    assert sealed and chunks, names
    return "segments/" + (sealed[0] if which == "sealed" else chunks[-1])


TAMPERING = [
    ("manifest", "flip"),
    ("manifest", "truncate"),
    ("manifest", "delete"),
    ("sealed", "flip"),
    ("sealed", "truncate"),
    ("sealed", "append"),
    ("sealed", "delete"),
    ("chunk", "flip"),
    ("chunk", "truncate"),
    ("chunk", "append"),
    ("chunk", "delete"),
]


def _tamper(objects: dict[str, bytes], which: str, how: str) -> dict[str, bytes | None]:
    """The objects to change: name -> new bytes, or None to delete."""
    manifest = json.loads(objects[MANIFEST_NAME])
    name = MANIFEST_NAME if which == "manifest" else _pick(manifest, which)
    data = objects[name]
    if how == "flip":
        return {name: _flip(data)}
    if how == "truncate":  # a part loses its last newline; the manifest half of itself
        return {name: data[: len(data) // 2] if name == MANIFEST_NAME else data[:-1]}
    if how == "append":
        return {name: data + b"\n"}
    assert how == "delete"
    return {name: None}


def _apply_local(mirror: Path, changes: dict[str, bytes | None]) -> None:
    for name, data in changes.items():
        if data is None:
            (mirror / name).unlink()
        else:
            (mirror / name).write_bytes(data)


@pytest.mark.parametrize(("which", "how"), TAMPERING)
def test_tampering_is_detected_and_nothing_is_installed(tmp_path: Path, which, how) -> None:
    mirror, first = tmp_path / "mirror", tmp_path / "a" / "exp.h5"
    _mirrored(first, str(mirror), 14)
    # the same machine's older copy of this history: a good download would replace it
    behind = tmp_path / "b" / "exp.h5"
    behind.parent.mkdir()
    shutil.copytree(progress_dir_for(first), progress_dir_for(behind))
    _mirrored(first, str(mirror), 8)
    _apply_local(mirror, _tamper(_objects(mirror), which, how))

    # 1. the library call: IntegrityError, no temp directory left behind
    store = source_store(str(mirror))
    with pytest.raises(IntegrityError):
        found = read_manifest(store)
        assert found is not None
        download(store, found[0], tmp_path / "dl" / "exp.h5.resumable")
    assert not (tmp_path / "dl").exists() or os.listdir(tmp_path / "dl") == []

    # 2. a new machine: nothing is created
    fresh = tmp_path / "new" / "exp.h5"
    with pytest.raises(IntegrityError):
        ResumableSweep(ITEMS, checkpoint_path=fresh, resume_from=str(mirror))
    assert not progress_dir_for(fresh).exists()
    assert not fresh.parent.exists() or os.listdir(fresh.parent) == []

    # 3. the same machine with an older checkpoint: it stays byte-identical
    before = _tree(progress_dir_for(behind))
    with pytest.raises(IntegrityError):
        ResumableSweep(ITEMS, checkpoint_path=behind, resume_from=mirror.as_uri())
    assert _tree(progress_dir_for(behind)) == before
    assert sorted(os.listdir(behind.parent)) == ["exp.h5.resumable"]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("which", "how"), [("manifest", "flip"), ("sealed", "truncate"), ("chunk", "delete")]
)
def test_tampering_in_s3_is_detected(s3_server, s3_bucket: str, tmp_path: Path, which, how):
    url = f"{s3_bucket}/sweeps/exp"
    _mirrored(tmp_path / "a" / "exp.h5", url, 14)
    client, bucket = s3_server.client(), s3_bucket[len("s3://") :]
    listing = client.list_objects_v2(Bucket=bucket, Prefix="sweeps/exp/")["Contents"]
    objects = {
        o["Key"][len("sweeps/exp/") :]: client.get_object(Bucket=bucket, Key=o["Key"])[
            "Body"
        ].read()
        for o in listing
    }
    for name, data in _tamper(objects, which, how).items():
        if data is None:
            client.delete_object(Bucket=bucket, Key=f"sweeps/exp/{name}")
        else:
            client.put_object(Bucket=bucket, Key=f"sweeps/exp/{name}", Body=data)
    fresh = tmp_path / "new" / "exp.h5"
    with pytest.raises(IntegrityError):
        ResumableSweep(ITEMS, checkpoint_path=fresh, resume_from=url, snapshot_dir=url)
    assert not progress_dir_for(fresh).exists()


@pytest.mark.integration
@pytest.mark.parametrize(("which", "how"), [("sealed", "flip"), ("chunk", "append")])
def test_tampering_served_over_http_is_detected(http_server, tmp_path: Path, which, how):
    root, base = http_server
    _mirrored(tmp_path / "a" / "exp.h5", str(root / "m"), 14)
    _apply_local(root / "m", _tamper(_objects(root / "m"), which, how))
    fresh = tmp_path / "new" / "exp.h5"
    with pytest.raises(IntegrityError):
        ResumableSweep(ITEMS, checkpoint_path=fresh, resume_from=f"{base}/m/manifest.json")
    assert not progress_dir_for(fresh).exists()


# -- signed sources: every byte taken is covered by the HMAC ------------------------------------


def _rechain(data: bytes, prev: str, edit: tuple[bytes, bytes]) -> bytes:
    """Apply a same-record edit to journal bytes and recompute the keyless hash chain."""
    import hashlib

    out = []
    for line in data.split(b"\n")[:-1]:
        line = line.replace(*edit)
        digest = hashlib.sha256(prev.encode() + b"\n" + line[65:]).hexdigest()
        out.append(digest.encode() + line[64:] + b"\n")
        prev = digest
    return b"".join(out)


def _signed_progress_dir(tmp_path: Path) -> Path:
    """Another machine's signed checkpoint: a sealed segment and records in the active one."""
    ckpt = tmp_path / "m1" / "exp.h5"
    with ResumableSweep(
        ITEMS[:12], key=lambda it: str(it["i"]), checkpoint_path=ckpt, signing_key="k",
        segment_bytes=2000,
    ) as sweep:  # fmt: skip
        for item in sweep.pending:
            sweep.record(item, _result(item["i"]))
    pdir = progress_dir_for(ckpt)
    body = json.loads((pdir / MANIFEST_NAME).read_bytes())
    assert body["segments"] and "signature" in body
    assert (pdir / "segments" / body["active"]).stat().st_size > 0
    return pdir


def test_a_forged_active_segment_of_a_signed_source_is_refused(tmp_path: Path) -> None:
    """The signed manifest names the active segment but covers none of its bytes: a forger
    without the key rewrites a result there and re-chains the keyless hashes. Nothing the
    signature does not cover is taken from a source under a signing key."""
    pdir = _signed_progress_dir(tmp_path)
    body = json.loads((pdir / MANIFEST_NAME).read_bytes())
    active = pdir / "segments" / body["active"]
    forged = _rechain(active.read_bytes(), body["segments"][-1]["last_hash"], (b'"sq":', b'"sq":-'))
    assert forged != active.read_bytes()
    active.write_bytes(forged)
    target = tmp_path / "m2" / "exp.h5"
    with pytest.raises(IntegrityError, match="not covered by the signature"):
        ResumableSweep(ITEMS[:12], key=lambda it: str(it["i"]), checkpoint_path=target,
                       resume_from=str(pdir), signing_key="k")  # fmt: skip
    assert not progress_dir_for(target).exists()
    assert not list(target.parent.glob(".*incoming*"))


def test_a_signed_source_is_taken_only_as_far_as_its_signature_covers(tmp_path: Path) -> None:
    """Unforged, the same source is refused under the key too (its active records are not
    signed: resume from the mirror instead); without a key it is checked for integrity and
    taken whole; a signed source with an empty active segment is taken."""
    pdir = _signed_progress_dir(tmp_path)
    key = lambda it: str(it["i"])  # noqa: E731
    with pytest.raises(IntegrityError, match="mirror"):
        ResumableSweep(ITEMS[:12], key=key, checkpoint_path=tmp_path / "m2" / "exp.h5",
                       resume_from=str(pdir), signing_key="k")  # fmt: skip
    with ResumableSweep(ITEMS[:12], key=key, checkpoint_path=tmp_path / "m3" / "exp.h5",
                        resume_from=str(pdir)) as sweep:  # fmt: skip
        assert sweep.status().done == 12
    body = json.loads((pdir / MANIFEST_NAME).read_bytes())
    (pdir / "segments" / body["active"]).write_bytes(b"")  # as right after a seal
    with ResumableSweep(ITEMS[:12], key=key, checkpoint_path=tmp_path / "m4" / "exp.h5",
                        resume_from=str(pdir), signing_key="k") as sweep:  # fmt: skip
        assert 0 < sweep.status().done < 12

"""Graph-state snapshots: round trips, refusals, damage, atomicity, history, and real stores."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resumable import snapshot
from resumable.errors import (
    ConfigurationError,
    IntegrityError,
    ObjectNotFoundError,
    SnapshotMismatchError,
    SourceUnreachableError,
    UnsupportedValueError,
)
from resumable.preempt import resume_from_url
from resumable.snapshot import (
    MANIFEST_MEMBER,
    download_and_load_state,
    read_snapshot,
    save_state_with_manifest,
    verify_snapshot,
)


def _all_dtypes() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    nested = np.dtype(
        [("pos", "<f4", (3,)), ("id", ">i8"), ("tag", "S5"), ("inner", [("a", "u1")])]
    )
    rec = np.zeros(4, dtype=nested)
    rec["pos"] = rng.random((4, 3))
    rec["id"] = [1, -2, 3, 2**40]
    rec["tag"] = [b"x", b"hello", b"", b"ab"]
    return {
        "bool": np.array([True, False, True]),
        "int8": np.arange(-5, 5, dtype=np.int8),
        "uint64": np.array([0, 2**64 - 1], dtype=np.uint64),
        "f16": rng.random(7).astype(np.float16),
        "f32": rng.random((5, 3)).astype(np.float32),
        "f64-nan-inf": np.array([np.nan, np.inf, -np.inf, -0.0, 1e-300]),
        "big-endian": np.arange(6, dtype=">i4").reshape(2, 3),
        "c64": (rng.random(4) + 1j * rng.random(4)).astype(np.complex64),
        "c128": np.array([1 + 2j, np.nan + 0j]),
        "dt64": np.array(["2024-01-01T12:00", "NaT", "1970-01-01"], dtype="datetime64[m]"),
        "td64": np.array([1, -3], dtype="timedelta64[ns]"),
        "unicode": np.array(["", "ñandú", "日本"]),
        "bytes": np.array([b"a\x00b", b"zz"]),
        "structured": rec,
        "unicode-fields": np.array([(1, "x")], dtype=[("ñame", "i2"), ("日", "U2")]),
        "zero-d": np.array(3.25),
        "zero-d-struct": np.zeros((), dtype=[("a", "i4"), ("b", "f8")]),
        "empty": np.zeros((0, 4)),
        "empty-3d": np.zeros((2, 0, 3), dtype=np.int16),
        "fortran": np.asfortranarray(rng.random((6, 5))),
        "strided": np.arange(40.0)[::3],
        "transposed-view": np.arange(24).reshape(2, 3, 4).transpose(1, 0, 2),
        "large": rng.random(3 * (1 << 20) // 8 + 17),  # several hash chunks
    }


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _zeroed(graph: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.zeros_like(v) for k, v in graph.items()}


def _snapshot_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# --- round trips -----------------------------------------------------------------------------


def test_round_trip_many_dtypes(tmp_path: Path) -> None:
    graph = _all_dtypes()
    url = tmp_path / "snap.npz"
    report = save_state_with_manifest(graph, url, extra={"step": 12, "t": 0.5, "tag": ["a", None]})
    assert report.file_bytes == url.stat().st_size
    assert [a.name for a in report.arrays] == list(graph)
    target = _zeroed(graph)
    extra = download_and_load_state(target, url)
    assert extra == {"step": 12, "t": 0.5, "tag": ["a", None]}
    for name, arr in graph.items():
        assert _same(target[name], arr), name
    assert target["fortran"].flags.f_contiguous
    assert _snapshot_files(tmp_path) == ["snap.npz"]  # no temp files left


def test_names_never_become_paths(tmp_path: Path) -> None:
    names = ["a/b/c", "../../etc/passwd", "/abs", "", "a00000.npy", MANIFEST_MEMBER, "x\\y", "é"]
    graph = {n: np.full(3, i) for i, n in enumerate(names)}
    save_state_with_manifest(graph, tmp_path / "s.npz")
    with zipfile.ZipFile(tmp_path / "s.npz") as zf:
        members = zf.namelist()
    assert members == [f"a{i:05d}.npy" for i in range(len(names))] + [MANIFEST_MEMBER]
    target = _zeroed(graph)
    download_and_load_state(target, tmp_path / "s.npz")
    assert all(_same(target[n], graph[n]) for n in names)


def test_plain_np_load_reads_it(tmp_path: Path) -> None:
    graph = {"u": np.arange(5.0), "v": np.eye(2)}
    report = save_state_with_manifest(graph, tmp_path / "s.npz", extra={"k": 1})
    with np.load(tmp_path / "s.npz", allow_pickle=False) as npz:
        assert npz.files == ["a00000", "a00001", MANIFEST_MEMBER]
        assert _same(npz["a00000"], graph["u"])
        manifest = json.loads(npz[MANIFEST_MEMBER])
    assert manifest["format"] == "resumable.snapshot" and manifest["schema_version"] == 2
    assert manifest["arrays"][1]["name"] == "v" and manifest["extra"] == {"k": 1}
    with zipfile.ZipFile(tmp_path / "s.npz") as zf:
        infos = zf.infolist()
        assert infos[-1].filename == MANIFEST_MEMBER  # written last: hashes known only then
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        for rec in report.arrays:
            assert hashlib.sha256(zf.read(rec.member)).hexdigest() == rec.sha256


def test_a_valid_zip_for_other_tools(tmp_path: Path) -> None:
    """The archive is written here, not by zipfile: every member's CRC (computed over many
    slices, or numpy's chunks for a strided array) must check out in zipfile and unzip."""
    rng = np.random.default_rng(1)
    graph = {"big": rng.random(3 * 131072 + 17), "strided": rng.random((300, 7))[::3, ::2]}
    save_state_with_manifest(graph, tmp_path / "s.npz", extra={"k": 1})
    with zipfile.ZipFile(tmp_path / "s.npz") as zf:
        assert zf.testzip() is None
    with np.load(tmp_path / "s.npz", allow_pickle=False) as npz:
        assert _same(npz["a00000"], graph["big"]) and _same(npz["a00001"], graph["strided"])
    unzip = shutil.which("unzip")
    if unzip is not None:
        done = subprocess.run([unzip, "-tq", str(tmp_path / "s.npz")], capture_output=True)
        assert done.returncode == 0, done.stdout + done.stderr


class Model:
    """A state_dict()/load_state_dict() object whose state are 'tensors' with __array__."""

    class Tensor:
        def __init__(self, data: np.ndarray) -> None:
            self.data = data

        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
            return self.data if dtype is None else self.data.astype(dtype)

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.params = {
            "layer1/weight": self.Tensor(rng.random((4, 3), dtype=np.float32)),
            "layer1/bias": self.Tensor(rng.random(4, dtype=np.float32)),
        }
        self.loaded: list[dict[str, np.ndarray]] = []

    def state_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        assert all(isinstance(v, np.ndarray) for v in state.values())
        self.loaded.append(state)
        self.params = {k: self.Tensor(v) for k, v in state.items()}


def test_state_dict_objects(tmp_path: Path) -> None:
    a, b = Model(1), Model(2)
    save_state_with_manifest(a, f"file://{tmp_path}/m.npz", extra={"epoch": 3})
    assert download_and_load_state(b, f"file://{tmp_path}/m.npz") == {"epoch": 3}
    assert len(b.loaded) == 1
    for k in a.params:
        assert _same(b.params[k].data, a.params[k].data)


def test_file_url_with_escaped_characters(tmp_path: Path) -> None:
    d = tmp_path / "my dir"
    graph = {"x": np.arange(3)}
    save_state_with_manifest(graph, f"file://{tmp_path}/my%20dir/s.npz")
    assert (d / "s.npz").exists()
    assert verify_snapshot(str(d / "s.npz")).arrays[0].name == "x"


def test_verify_snapshot_report(tmp_path: Path) -> None:
    graph = {"x": np.arange(10, dtype=np.int32), "y": np.zeros((2, 2))}
    save_state_with_manifest(graph, tmp_path / "s.npz", extra={"step": 5})
    report = verify_snapshot(tmp_path / "s.npz")
    assert report.extra == {"step": 5} and report.schema_version == 2
    assert report.array_bytes == 40 + 32
    assert [(a.name, a.shape, a.dtype) for a in report.arrays] == [
        ("x", (10,), "<i4"),
        ("y", (2, 2), "<f8"),
    ]
    json.dumps(report.to_json())
    arrays, again = read_snapshot(tmp_path / "s.npz")
    assert again == report and _same(arrays["x"], graph["x"])


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"d": {1: 2}}, "d"),
        ({"s": {1, 2}}, "s"),
        ({"o": object()}, "o"),
    ],
)
def test_unsupported_extra_refused_with_nothing_written(
    tmp_path: Path, extra: Any, key: str
) -> None:
    with pytest.raises(UnsupportedValueError, match=repr(key)):
        save_state_with_manifest({"a": np.zeros(2)}, tmp_path / "s.npz", extra=extra)
    assert _snapshot_files(tmp_path) == []


def test_object_arrays_refused_with_nothing_written(tmp_path: Path) -> None:
    graph = {"ok": np.zeros(3), "bad": np.array([{"a": 1}, None], dtype=object)}
    with pytest.raises(UnsupportedValueError, match="'bad'"):
        save_state_with_manifest(graph, tmp_path / "s.npz")
    assert _snapshot_files(tmp_path) == []
    masked = {"m": np.ma.masked_array([1, 2], mask=[0, 1])}
    with pytest.raises(UnsupportedValueError, match="'m'"):
        save_state_with_manifest(masked, tmp_path / "s.npz")
    lazy = {"ok": np.zeros(3), "bad": Model.Tensor(np.array([1, "x"], dtype=object))}
    with pytest.raises(UnsupportedValueError, match="'bad'"):
        save_state_with_manifest(lazy, tmp_path / "s.npz")
    assert _snapshot_files(tmp_path) == []


def test_bad_graphs_and_options(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedValueError, match="strings"):
        save_state_with_manifest({1.5: np.zeros(1)}, tmp_path / "s.npz")  # ints are keys too
    with pytest.raises(UnsupportedValueError):
        save_state_with_manifest([np.zeros(1)], tmp_path / "s.npz")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        save_state_with_manifest({"a": np.zeros(1)}, tmp_path / "s.npz", keep=0)
    with pytest.raises(ConfigurationError):
        save_state_with_manifest({"a": np.zeros(1)}, str(tmp_path) + "/")
    assert _snapshot_files(tmp_path) == []


# --- atomicity and history --------------------------------------------------------------------


class Exploding:
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise RuntimeError("device lost")


def test_failure_mid_save_keeps_previous_snapshot(tmp_path: Path) -> None:
    url = tmp_path / "s.npz"
    good = {"a": np.arange(4.0), "b": np.ones(3), "c": np.zeros(2), "d": np.eye(2)}
    save_state_with_manifest(good, url, extra={"step": 1})
    before = url.read_bytes()
    bad = dict(good, c=Exploding())  # the 3rd array fails while streaming
    for keep in (None, 3):
        with pytest.raises(RuntimeError, match="device lost"):
            save_state_with_manifest(bad, url, extra={"step": 2}, keep=keep)
        assert url.read_bytes() == before
        assert _snapshot_files(tmp_path) == ["s.npz"]  # no temp, staged or history files
    assert verify_snapshot(url).extra == {"step": 1}


def test_keep_history(tmp_path: Path) -> None:
    url = tmp_path / "snapshot.npz"
    for step in range(5):
        save_state_with_manifest({"x": np.full(3, step)}, url, extra={"step": step}, keep=3)
    assert _snapshot_files(tmp_path) == ["snapshot.1.npz", "snapshot.2.npz", "snapshot.npz"]
    steps = [verify_snapshot(tmp_path / n).extra["step"] for n in _snapshot_files(tmp_path)]
    assert steps == [3, 2, 4]
    save_state_with_manifest({"x": np.full(3, 9)}, url, extra={"step": 9}, keep=1)
    assert verify_snapshot(tmp_path / "snapshot.1.npz").extra == {"step": 3}  # untouched


# --- damage -----------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], bytes]:
    graph = {
        "grid": np.random.default_rng(3).random((40, 30)),
        "ids": np.arange(100, dtype=np.int32),
        "flags": np.array([True, False]),
    }
    url = tmp_path / "s.npz"
    save_state_with_manifest(graph, url, extra={"step": 8})
    return url, graph, url.read_bytes()


def _region_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every member's bytes (npy header + data, or the manifest)."""
    out = []
    with zipfile.ZipFile(_BytesFile(data)) as zf:
        for info in zf.infolist():
            off = info.header_offset
            name_len, extra_len = (
                int.from_bytes(data[off + 26 : off + 28], "little"),
                int.from_bytes(data[off + 28 : off + 30], "little"),
            )
            start = off + 30 + name_len + extra_len
            out.append((start, start + info.file_size))
    return out


def _BytesFile(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


def test_flipped_bytes_never_load_wrong_data(
    saved: tuple[Path, dict[str, np.ndarray], bytes],
) -> None:
    url, graph, data = saved
    rng = random.Random(1234)
    regions = _region_offsets(data)
    payload = sorted({rng.randrange(s, e) for s, e in regions for _ in range(12)})
    offsets = sorted(set(payload) | {rng.randrange(len(data)) for _ in range(250)})
    detected = 0
    for off in offsets:
        damaged = bytearray(data)
        damaged[off] ^= 0x5A
        url.write_bytes(bytes(damaged))
        target = _zeroed(graph)
        pristine = copy.deepcopy(target)
        try:
            download_and_load_state(target, url)
        except IntegrityError as exc:
            detected += 1
            assert str(url) in str(exc)
            assert all(_same(target[k], pristine[k]) for k in target)  # graph untouched
            with pytest.raises(IntegrityError):
                verify_snapshot(url)
        else:  # zip metadata nobody reads (dates, attributes, CRCs superseded by SHA-256)
            assert off not in payload, f"flip at {off} inside member data went unnoticed"
            assert all(_same(target[k], graph[k]) for k in graph)
    assert detected >= len(payload)


def test_truncation_at_any_length(saved: tuple[Path, dict[str, np.ndarray], bytes]) -> None:
    url, graph, data = saved
    rng = random.Random(99)
    lengths = sorted(
        {0, 1, 21, 22, len(data) - 1, len(data) - 22}
        | {rng.randrange(len(data)) for _ in range(150)}
    )
    for n in lengths:
        url.write_bytes(data[:n])
        target = _zeroed(graph)
        with pytest.raises(IntegrityError):
            download_and_load_state(target, url)
        assert all(not t.any() for t in target.values())


def _rewrite(
    url: Path,
    mutate: Any = None,
    extra_members: dict[str, bytes] | None = None,
    compress: bool = False,
) -> None:
    with zipfile.ZipFile(url) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop(MANIFEST_MEMBER))
    if mutate:
        mutate(manifest)
    members.update(extra_members or {})
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(url, "w", method) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
        zf.writestr(MANIFEST_MEMBER, json.dumps(manifest))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.update(schema_version=3), "newer"),
        (lambda m: m.update(schema_version="1"), "schema_version"),
        (lambda m: m.update(format="something.else"), "format"),
        (lambda m: m["arrays"][0].update(sha256="0" * 64), "sha256"),
        (lambda m: m["arrays"][0].update(shape=[10**12, 10**6]), "nbytes"),
        (lambda m: m["arrays"][1].update(dtype="|O"), "object"),
        (lambda m: m["arrays"][1].update(dtype="<i8", nbytes=800), "bytes"),
        (lambda m: m["arrays"][1].update(member="../evil.npy"), "malformed"),
        (lambda m: m["arrays"].pop(), "does not list"),
        (lambda m: m.update(arrays="x"), "arrays"),
    ],
)
def test_bad_manifests(saved: Any, mutate: Any, message: str) -> None:
    url, graph, _data = saved
    _rewrite(url, mutate)
    target = _zeroed(graph)
    with pytest.raises(IntegrityError, match=message):
        download_and_load_state(target, url)
    assert all(not t.any() for t in target.values())
    with pytest.raises(IntegrityError):
        verify_snapshot(url)


def test_hostile_archives(saved: Any, tmp_path: Path) -> None:
    url, _graph, data = saved
    _rewrite(url, extra_members={"../../escape.txt": b"x"})
    with pytest.raises(IntegrityError, match="does not list"):
        verify_snapshot(url)
    url.write_bytes(data)
    _rewrite(url, compress=True)
    with pytest.raises(IntegrityError, match="compressed"):
        verify_snapshot(url)
    url.write_bytes(data)
    _rewrite(url, lambda m: m.pop("format"))
    with pytest.raises(IntegrityError, match="format"):
        verify_snapshot(url)
    # a pickled object array under a well-formed manifest is refused, never unpickled
    evil = tmp_path / "evil.npz"
    save_state_with_manifest({"x": np.zeros(2)}, evil)
    with zipfile.ZipFile(evil) as zf:
        manifest = json.loads(zf.read(MANIFEST_MEMBER))
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([1, None], dtype=object), allow_pickle=True)
    blob = buf.getvalue()
    manifest["arrays"][0].update(
        dtype="|O", shape=[2], size=len(blob), sha256=hashlib.sha256(blob).hexdigest(), nbytes=16
    )
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("a00000.npy", blob)
        zf.writestr(MANIFEST_MEMBER, json.dumps(manifest))
    with pytest.raises(IntegrityError, match="object"):
        verify_snapshot(evil)
    not_zip = tmp_path / "plain.npz"
    np.savez(not_zip, x=np.zeros(2))
    with pytest.raises(IntegrityError, match="not a resumable snapshot"):
        verify_snapshot(not_zip)


def test_member_count_bounded_before_parsing(saved: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url, _graph, _data = saved
    monkeypatch.setattr(snapshot, "MAX_ARRAYS", 1)
    with pytest.raises(IntegrityError, match="refusing more than"):
        verify_snapshot(url)


def test_mismatches_listed_and_graph_untouched(saved: Any) -> None:
    url, _graph, _data = saved
    target = {
        "grid": np.zeros((40, 31)),  # shape differs
        "ids": np.zeros(100, dtype=np.int64),  # dtype differs
        "extra": np.zeros(1),  # not in the snapshot
    }  # "flags" missing from the state
    pristine = copy.deepcopy(target)
    with pytest.raises(SnapshotMismatchError) as info:
        download_and_load_state(target, url)
    text = str(info.value)
    for needle in ("'grid': shape (40, 30)", "'ids': dtype int32", "'extra'", "'flags'"):
        assert needle in text, text
    assert len(info.value.differences) == 4  # type: ignore[attr-defined]
    assert all(_same(target[k], pristine[k]) for k in target) and set(target) == set(pristine)


def test_missing_local_snapshot(tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError):
        download_and_load_state({"a": np.zeros(1)}, tmp_path / "nope.npz")
    assert resume_from_url({"a": np.zeros(1)}, str(tmp_path / "nope.npz")) is None
    assert resume_from_url({"a": np.zeros(1)}, "") is None
    assert resume_from_url({"a": np.zeros(1)}, None) is None


# --- real remote stores ------------------------------------------------------------------------


@pytest.mark.integration
def test_s3_round_trip_and_history(s3_bucket: str) -> None:
    graph = {"w": np.random.default_rng(0).random((300, 200)), "n": np.arange(7)}
    url = f"{s3_bucket}/run/snapshot.npz"
    for step in range(3):
        graph["n"][0] = step
        save_state_with_manifest(graph, url, extra={"step": step}, keep=2)
    target = _zeroed(graph)
    assert download_and_load_state(target, url) == {"step": 2}
    assert all(_same(target[k], graph[k]) for k in graph)
    assert verify_snapshot(f"{s3_bucket}/run/snapshot.1.npz").extra == {"step": 1}
    assert resume_from_url(_zeroed(graph), f"{s3_bucket}/run/missing.npz") is None
    with pytest.raises(ObjectNotFoundError):
        verify_snapshot(f"{s3_bucket}/run/missing.npz")


@pytest.mark.integration
def test_s3_failed_save_leaves_previous(s3_bucket: str) -> None:
    url = f"{s3_bucket}/snap.npz"
    save_state_with_manifest(
        {"a": np.ones(3), "b": np.ones(2), "c": np.ones(1)}, url, extra={"v": 1}
    )
    with pytest.raises(RuntimeError):
        save_state_with_manifest({"a": np.ones(3), "b": np.ones(2), "c": Exploding()}, url)
    assert verify_snapshot(url).extra == {"v": 1}


@pytest.mark.integration
def test_http_load_and_errors(
    http_server: Any, refused_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, base = http_server
    graph = {"g": np.arange(12.0).reshape(3, 4)}
    save_state_with_manifest(graph, Path(root) / "snap.npz", extra={"step": 4})
    target = _zeroed(graph)
    assert download_and_load_state(target, f"{base}/snap.npz") == {"step": 4}
    assert _same(target["g"], graph["g"])
    assert verify_snapshot(f"{base}/snap.npz").extra == {"step": 4}
    with pytest.raises(ObjectNotFoundError):
        download_and_load_state(target, f"{base}/missing.npz")
    assert resume_from_url(target, f"{base}/missing.npz") is None
    monkeypatch.setenv("RESUMABLE_RETRY_ATTEMPTS", "1")
    with pytest.raises(SourceUnreachableError):
        resume_from_url(target, f"{refused_url}/snap.npz")
    with pytest.raises(Exception, match="read-only"):
        save_state_with_manifest(graph, f"{base}/new.npz")
    assert not (Path(root) / "new.npz").exists()


def test_zip64_end_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Archives with zip64 end records (> 65535 members or > 4 GiB) are bounded and read.

    zipfile writes them once the member count passes ZIP_FILECOUNT_LIMIT; lowering that limit
    exercises the same path without writing 65536 members.
    """
    graph = {f"p{i}": np.full(3, i) for i in range(8)}
    with monkeypatch.context() as m:
        m.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 4)
        save_state_with_manifest(graph, tmp_path / "s.npz")
    assert b"PK\x06\x06" in (tmp_path / "s.npz").read_bytes()[-200:]
    arrays, report = read_snapshot(tmp_path / "s.npz")
    assert len(report.arrays) == 8 and all(_same(arrays[k], graph[k]) for k in graph)
    monkeypatch.setattr(snapshot, "MAX_ARRAYS", 3)
    with pytest.raises(IntegrityError, match="refusing more than"):
        verify_snapshot(tmp_path / "s.npz")

"""PyTorch and JAX arrays round-trip bit for bit, dtypes included, locally and through S3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resumable.snapshot import download_and_load_state, read_snapshot, save_state_with_manifest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed")


def _bits(t: Any) -> bytes:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().contiguous()
        return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return np.asarray(t).tobytes()


def _torch_graph() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    return {
        "f32": torch.randn(5, 4, generator=g),
        "bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "f16": torch.randn(3, generator=g).to(torch.float16),
        "i64": torch.arange(-3, 3),
        "bool": torch.tensor([True, False]),
        "grad": torch.randn(3, generator=g, requires_grad=True),
        "strided": torch.arange(20.0).reshape(4, 5).t(),
        "f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
        "model": lin,
        "nested": {"list": [torch.ones(2, dtype=torch.bfloat16), torch.zeros(1)]},
    }


def _flat(g: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in g.items() if k not in ("model", "nested")}
    out.update({f"model.{k}": v for k, v in g["model"].state_dict().items()})
    out["nested0"], out["nested1"] = g["nested"]["list"]
    return out


def _blank(g: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in g.items():
        if isinstance(v, torch.nn.Module):
            out[k] = torch.nn.Linear(4, 3)
            with torch.no_grad():
                for p in out[k].parameters():
                    p.zero_()
        elif isinstance(v, dict):
            out[k] = {"list": [torch.zeros_like(t) for t in v["list"]]}
        else:
            out[k] = torch.zeros_like(v).requires_grad_(v.requires_grad)
    return out


def _check_torch(url: str | Path, **kw: Any) -> None:
    graph = _torch_graph()
    report = save_state_with_manifest(graph, url, extra={"step": 3}, **kw)
    bf = next(r for r in report.arrays if r.name == "bf16")
    assert bf.dtype_name == "bfloat16" and bf.dtype == "|V2"
    target = _blank(graph)
    held = target["f32"], target["bf16"], target["model"].weight
    assert download_and_load_state(target, url, **kw) == {"step": 3}
    assert target["f32"] is held[0] and target["bf16"] is held[1]  # filled in place
    assert target["model"].weight is held[2]
    for (name, want), got in zip(_flat(graph).items(), _flat(target).values(), strict=True):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype, name
        assert got.shape == want.shape and _bits(got) == _bits(want), name
    assert target["grad"].requires_grad
    arrays, _ = read_snapshot(url, **kw)
    assert arrays["bf16"].dtype == np.dtype(ml_dtypes.bfloat16)
    assert arrays["bf16"].tobytes() == _bits(graph["bf16"])


def test_torch_round_trip_local(tmp_path: Path) -> None:
    _check_torch(tmp_path / "snap.npz")


@pytest.mark.integration
def test_torch_round_trip_s3(s3_bucket: str) -> None:
    _check_torch(f"{s3_bucket}/torch/snap.npz")


def test_torch_cpu_tensor_saved_without_copy(tmp_path: Path) -> None:
    from resumable.snapshot import _leaves

    t = torch.arange(8.0)
    leaf = _leaves.walk({"t": t}, 10)[0]
    assert np.shares_memory(_leaves.as_numpy(leaf), t.numpy())
    b = torch.arange(8.0).to(torch.bfloat16)
    view = _leaves.as_numpy(_leaves.walk({"b": b}, 10)[0])
    assert view.dtype == np.dtype(ml_dtypes.bfloat16) and view.ctypes.data == b.data_ptr()


def _check_jax(where: str) -> None:
    """JAX runs in a child process: it starts threads, and later tests fork this one."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed (pip install jax jaxlib)")
    prog = Path(__file__).parent / "integration" / "progs" / "jax_roundtrip.py"
    proc = subprocess.run(
        [sys.executable, str(prog), where], capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_jax_round_trip_local_and_no_copy(tmp_path: Path) -> None:
    _check_jax(str(tmp_path / "snap.npz"))


@pytest.mark.integration
def test_jax_round_trip_s3(s3_bucket: str) -> None:
    _check_jax(f"{s3_bucket}/jax/snap.npz")


def test_dlpack_only_objects(tmp_path: Path) -> None:
    class OnlyDlpack:
        def __init__(self, arr: np.ndarray) -> None:
            self._a = arr

        def __dlpack__(self, **kw: Any) -> Any:
            return self._a.__dlpack__(**kw)

        def __dlpack_device__(self) -> Any:
            return self._a.__dlpack_device__()

    src = np.arange(6, dtype=np.int16)
    save_state_with_manifest({"x": OnlyDlpack(src)}, tmp_path / "s.npz")
    arrays, _ = read_snapshot(tmp_path / "s.npz")
    assert arrays["x"].dtype == np.int16 and list(arrays["x"]) == list(range(6))


def _adam(seed: int) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    return model, torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.95))


def _adam_step(model: Any, opt: Any, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt.zero_grad()
    model(torch.randn(8, 4, generator=g)).pow(2).sum().backward()
    opt.step()


def _same(a: Any, b: Any) -> bool:
    """Equal structure, types and bits (int keys stay ints, None stays None)."""
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and list(a) == list(b)
            and all(type(k) is type(kb) for k, kb in zip(a, b, strict=True))
            and all(_same(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and (a.dtype, a.shape) == (b.dtype, b.shape)
            and _bits(a.reshape(-1)) == _bits(b.reshape(-1))
        )
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("where", ["local", "s3"])
def test_optimizer_state_dict_round_trips_into_a_fresh_optimizer(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    """torch.optim state_dicts key per-parameter state by int: saved, loaded into a fresh
    optimizer (no state yet), they are equal bit for bit, and training goes on identically."""
    url = (
        f"{request.getfixturevalue('s3_bucket')}/opt/snap.npz"
        if where == "s3"
        else str(tmp_path / "opt.npz")
    )
    model, opt = _adam(0)
    for step in range(3):
        _adam_step(model, opt, step)
    saved = opt.state_dict()
    assert isinstance(next(iter(saved["state"])), int)
    report = save_state_with_manifest({"model": model, "opt": opt}, url)
    names = {rec.name for rec in report.arrays}
    assert "opt/state/~i0/exp_avg" in names and "opt/param_groups/0/params/0" in names

    fresh_model, fresh_opt = _adam(1)  # other weights, other hyperparameters, no state
    fresh_opt.param_groups[0]["lr"] = 0.5
    assert fresh_opt.state_dict()["state"] == {}
    download_and_load_state({"model": fresh_model, "opt": fresh_opt}, url)
    assert _same(fresh_opt.state_dict(), saved)
    assert _same(fresh_model.state_dict(), model.state_dict())

    _adam_step(model, opt, 99)  # both continue exactly alike
    _adam_step(fresh_model, fresh_opt, 99)
    assert _same(fresh_model.state_dict(), model.state_dict())
    assert _same(fresh_opt.state_dict(), opt.state_dict())

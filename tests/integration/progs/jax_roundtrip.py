"""JAX arrays round-trip through a snapshot bit for bit (run in its own process: JAX starts
threads, and the test process forks later). Usage: jax_roundtrip.py URL. Also checks that a
CPU array is saved from its own buffer (no copy). Exits 0 when every check holds."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from resumable.snapshot import _leaves, download_and_load_state, save_state_with_manifest


def no_copy() -> None:
    x = jnp.arange(1 << 16, dtype=jnp.bfloat16)
    view = _leaves.as_numpy(_leaves.walk({"x": x}, 10)[0])
    assert view.ctypes.data == x.unsafe_buffer_pointer() and view.dtype == x.dtype


def round_trip(url: str) -> None:
    key = jax.random.PRNGKey(0)
    graph = {
        "bf16": jax.random.normal(key, (6,), dtype=jnp.bfloat16),
        "f32": jax.random.normal(key, (3, 2)),
        "i32": jnp.arange(5, dtype=jnp.int32),
        "tree": {"params": [jnp.ones(3, dtype=jnp.float16), jnp.zeros((2, 2))]},
        "np": np.arange(4.0),
    }
    save_state_with_manifest(graph, url, extra={"t": np.float32(0.5)})
    target = {
        "bf16": jnp.zeros(6, dtype=jnp.bfloat16),
        "f32": jnp.zeros((3, 2)),
        "i32": jnp.zeros(5, dtype=jnp.int32),
        "tree": {"params": [jnp.zeros(3, dtype=jnp.float16), jnp.ones((2, 2))]},
        "np": np.zeros(4),
    }
    held = target["np"]
    extra = download_and_load_state(target, url)
    assert extra["t"] == np.float32(0.5) and type(extra["t"]) is np.float32
    assert target["np"] is held and list(held) == [0, 1, 2, 3]
    pairs = [
        (graph["bf16"], target["bf16"]),
        (graph["f32"], target["f32"]),
        (graph["i32"], target["i32"]),
        (graph["tree"]["params"][0], target["tree"]["params"][0]),
        (graph["tree"]["params"][1], target["tree"]["params"][1]),
    ]
    for want, got in pairs:
        assert isinstance(got, jax.Array) and got.dtype == want.dtype and got.shape == want.shape
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
        assert got.sharding == want.sharding


if __name__ == "__main__":
    no_copy()
    round_trip(sys.argv[1])
    print("ok")

"""CUDA kernel of jax_fpx.linear vs the reference path (skipped without a GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import jax_fpx
from jax_fpx import _ffi, dispatch, reference


def _has_cuda_kernel() -> bool:
    try:
        return bool(jax.devices("gpu")) and _ffi.register()
    except Exception:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _has_cuda_kernel(), reason="needs a CUDA GPU and the CUDA build")]

FORMATS = ["fp6_e3m2", "fp6_e2m3", "fp5_e2m2", "fp4_e2m1"]
DTYPES = [jnp.bfloat16, jnp.float16]
ODD_SHAPES = [(16, 8), (40, 24), (384, 1536), (1000, 3000), (4097, 1111)]  # (K=in, N=out)
MS = [1, 3, 16, 64, 256, 1000]


def _weight(k, n, fmt, group=None, seed=0):
    kern = jax.random.normal(jax.random.PRNGKey(seed), (k, n), jnp.float32) * 0.05
    return jax_fpx.quantize(kern, fmt, group_size=group)


def _x(m, k, dtype, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), (m, k), jnp.float32).astype(dtype)


@jax.jit
def _kernel_and_reference(x, w, b):
    """The kernel's output and the reference's in one compiled program (one compile per case:
    eager calls compiled each path separately and the file ran past a device call's budget)."""
    return jax_fpx.linear(x, w, b, impl="kernel"), reference.linear(x, w, b)


def _check_case(x, w, b, what):
    y, ref = _kernel_and_reference(x, w, b)
    assert y.shape == x.shape[:-1] + (w.out_features,) and y.dtype == x.dtype, what
    _check(y, ref, x.dtype, what)


def _check(y, ref, dtype, what):
    y = np.asarray(y.astype(jnp.float32))
    ref = np.asarray(ref.astype(jnp.float32))
    assert np.all(np.isfinite(y)), f"{what}: non-finite output"
    err = np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30)
    tol = 1e-2 if dtype == jnp.bfloat16 else 2e-3
    assert err < tol, f"{what}: relative error {err:.2e} >= {tol}"
    amax = np.max(np.abs(ref))
    worst = np.max(np.abs(y - ref)) / max(amax, 1e-30)
    assert worst < 4 * tol, f"{what}: max error {worst:.2e} of max |ref|"


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "f16"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_shapes_batches(fmt, dtype):
    for k, n in ODD_SHAPES:
        w = _weight(k, n, fmt)
        for m in MS:
            x = _x(m, k, dtype, seed=m)
            _check_case(x, w, None, f"{fmt} {jnp.dtype(dtype).name} K={k} N={n} M={m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "f16"])
@pytest.mark.parametrize("group", [None, 64, 128])
def test_bias_and_groups(group, dtype):
    for fmt in ("fp6_e3m2", "fp4_e2m1"):
        for k, n in [(384, 1536), (1000, 3000), (4097, 1111)]:
            w = _weight(k, n, fmt, group=group, seed=3)
            bias = jax.random.normal(jax.random.PRNGKey(5), (n,), jnp.float32)
            for m in (1, 16, 64, 1000):
                x = _x(m, k, dtype, seed=m + 7)
                for b in (None, bias):
                    _check_case(x, w, b, f"{fmt} group={group} bias={b is not None} K={k} N={n} M={m}")


@pytest.mark.parametrize("k,n", [(4096, 11008), (8192, 28672)])
def test_large_shapes(k, n):
    w = _weight(k, n, "fp6_e3m2", seed=11)
    bias = jnp.linspace(-1, 1, n, dtype=jnp.float32)
    for m, dtype in ((1, jnp.bfloat16), (64, jnp.float16), (256, jnp.bfloat16)):
        _check_case(_x(m, k, dtype, seed=m), w, bias, f"K={k} N={n} M={m}")
    wg = _weight(k, n, "fp6_e2m3", group=128, seed=12)
    _check_case(_x(16, k, jnp.bfloat16), wg, None, f"group K={k} N={n}")


@pytest.mark.parametrize("k,n", [(8192, 8192), (1000, 3000), (4096, 128), (64, 4096)])
def test_stream_k_split_tiles_deterministic(k, n):
    """Shapes whose tiles are split between CTAs (few tiles, long K) and ones with many short
    tiles: results match the reference and are bit-identical run to run (fixed-order fix-up)."""
    for fmt, group in (("fp6_e3m2", None), ("fp5_e2m2", 64)):
        w = _weight(k, n, fmt, group=group, seed=k)
        bias = jax.random.normal(jax.random.PRNGKey(2), (n,), jnp.float32)
        for m in (1, 9, 33, 64):
            x = _x(m, k, jnp.bfloat16, seed=m)
            f = jax.jit(lambda x, w, b: jax_fpx.linear(x, w, b, impl="kernel"))
            y = f(x, w, bias)
            _check(y, reference.linear(x, w, bias), jnp.bfloat16, f"{fmt} K={k} N={n} M={m}")
            for _ in range(3):
                y2 = f(x, w, bias)
                assert np.array_equal(np.asarray(y.view(jnp.uint16)), np.asarray(y2.view(jnp.uint16))), (
                    f"{fmt} K={k} N={n} M={m}: not bit-identical run to run")


def test_misaligned_activations_take_the_plain_copy_path():
    """K % 8 != 0 (rows not 16-byte aligned) and x sliced at an odd offset."""
    w = _weight(1001, 300, "fp6_e2m3", seed=4)
    xs = _x(7, 1003, jnp.bfloat16)
    x = xs[:, 1:1002]
    _check(jax.jit(lambda x: jax_fpx.linear(x, w, impl="kernel"))(x), reference.linear(x, w), jnp.bfloat16, "K=1001")


def test_batching_vmap_x_and_weights():
    k, n = 1000, 3000
    w = _weight(k, n, "fp6_e3m2")
    bias = jax.random.normal(jax.random.PRNGKey(1), (n,), jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(2), (3, 5, k), jnp.float32).astype(jnp.bfloat16)
    y = jax.vmap(lambda x: jax_fpx.linear(x, w, bias, impl="kernel"))(xs)
    _check(y, reference.linear(xs, w, bias), jnp.bfloat16, "vmap over x")
    # stacked weights (batched weights and batched bias), shared x
    ws = [_weight(k, n, "fp6_e3m2", seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *ws)
    biases = jax.random.normal(jax.random.PRNGKey(3), (3, n), jnp.float32)
    x1 = xs[0]
    yb = jax.vmap(lambda w_, b_: jax_fpx.linear(x1, w_, b_, impl="kernel"))(stacked, biases)
    for i in range(3):
        _check(yb[i], reference.linear(x1, ws[i], biases[i]), jnp.bfloat16, f"vmap over weights item {i}")
    # both batched
    yc = jax.vmap(lambda x_, w_: jax_fpx.linear(x_, w_, impl="kernel"))(xs, stacked)
    for i in range(3):
        _check(yc[i], reference.linear(xs[i], ws[i]), jnp.bfloat16, f"vmap over both item {i}")


def test_jit_auto_dispatch_matches():
    w = _weight(1000, 3000, "fp6_e3m2")
    f = jax.jit(lambda x: jax_fpx.linear(x, w))
    for m in (1, 16, dispatch.GPU_KERNEL_MAX_M + 1):
        x = _x(m, 1000, jnp.bfloat16)
        _check(f(x), reference.linear(x, w), jnp.bfloat16, f"jit auto M={m}")


_CMD_BUFFER_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, jax_fpx
    from jax_fpx import reference
    w = jax_fpx.quantize(jax.random.normal(jax.random.PRNGKey(0), (1000, 3000)) * 0.05, "fp6_e3m2")
    b = jnp.linspace(-1, 1, 3000)
    @jax.jit
    def f(x):
        h = jax_fpx.linear(x, w, b, impl="kernel")
        return jax_fpx.linear(jnp.tanh(h[:, :1000]), w, impl="kernel") * 2
    for m in (1, 16):
        x = jax.random.normal(jax.random.PRNGKey(m), (m, 1000)).astype(jnp.bfloat16)
        r = reference.linear(jnp.tanh(reference.linear(x, w, b)[:, :1000]), w) * 2
        for _ in range(3):
            y = f(x)
        err = float(jnp.linalg.norm((y - r).astype(jnp.float32)) / jnp.linalg.norm(r.astype(jnp.float32)))
        assert err < 2e-2, err
    hlo = f.lower(x).compile().as_text()
    print("OK", "command_buffer" in hlo)
    """
)


def test_command_buffers():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer=FUSION,CUSTOM_CALL"
                        " --xla_gpu_graph_min_graph_size=1").strip()
    r = subprocess.run([sys.executable, "-c", _CMD_BUFFER_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "OK" in r.stdout
    print(r.stdout)

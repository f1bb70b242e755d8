"""jax_fpx.linear through the CPU FFI handler, against the pure-JAX reference."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jax_fpx

FORMATS = ["fp6_e3m2", "fp6_e2m3", "fp5_e2m2", "fp4_e2m1"]
EPS = {jnp.bfloat16: 2.0**-8, jnp.float16: 2.0**-11}


def reference_f32(x, w, bias=None):
    y = jnp.dot(x.astype(jnp.float32), jax_fpx.dequantize(w), precision=jax.lax.Precision.HIGHEST)
    return y if bias is None else y + bias.astype(jnp.float32)


def assert_close_to_reference(y, x, w, bias=None, slack=1.0):
    """Within one rounding of the output dtype plus float32 accumulation noise (x slack)."""
    ref = np.asarray(reference_f32(x, w, bias))
    got = np.asarray(y.astype(jnp.float32))
    assert got.shape == ref.shape and y.dtype == x.dtype
    assert np.all(np.isfinite(got))
    scale = np.max(np.abs(ref)) + 1e-30
    np.testing.assert_allclose(got, ref, rtol=slack * EPS[x.dtype.type], atol=slack * 1e-5 * scale)


def make(key, k, n, fmt="fp6_e3m2", group_size=None, dtype=jnp.bfloat16, m=(4,)):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    kernel = jax.random.normal(k1, (k, n), jnp.float32) / math.sqrt(k)
    w = jax_fpx.quantize(kernel, fmt, group_size=group_size)
    x = jax.random.normal(k2, (*m, k), jnp.float32).astype(dtype)
    bias = jax.random.normal(k3, (n,), jnp.float32)
    return x, w, bias


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("k,n,group_size", [(64, 16, None), (384, 1536, None), (1000, 300, 128), (1, 40, None), (130, 1, 64)])
def test_cpu_op_matches_reference(fmt, dtype, k, n, group_size):
    x, w, bias = make(k + n, k, n, fmt, group_size, dtype, m=(3,))
    assert_close_to_reference(jax_fpx.linear(x, w), x, w)
    assert_close_to_reference(jax.jit(jax_fpx.linear)(x, w, bias), x, w, bias)


@pytest.mark.parametrize("m", [(1,), (3,), (16,), (2, 32), (1000,)])
def test_batch_shapes(m):
    x, w, bias = make(7, 256, 96, "fp5_e2m2", None, jnp.bfloat16, m=m)
    y = jax.jit(functools.partial(jax_fpx.linear, impl="kernel"))(x, w, bias)
    assert y.shape == (*m, 96)
    assert_close_to_reference(y, x, w, bias)
    # "auto" may pick dequantize + XLA dot for large M (weights rounded to bf16 first)
    assert_close_to_reference(jax.jit(jax_fpx.linear)(x, w, bias), x, w, bias, slack=16.0)


def test_batch_of_zero_rows():
    x, w, _ = make(1, 128, 32, m=(0,))
    y = jax.jit(jax_fpx.linear)(x, w)
    assert y.shape == (0, 32) and y.dtype == jnp.bfloat16
    assert jax_fpx.linear(jnp.zeros((2, 0, 128), jnp.float16), w).shape == (2, 0, 32)


def test_impls_agree():
    x, w, bias = make(3, 200, 64, "fp6_e2m3", 64, jnp.float16)
    ys = {impl: jax_fpx.linear(x, w, bias, impl=impl) for impl in ("auto", "kernel", "reference", "xla")}
    for impl, y in ys.items():
        # "xla" rounds the dequantized weights to x.dtype before its dot: a few ulps more
        assert_close_to_reference(y, x, w, bias, slack=16.0 if impl == "xla" else 1.0)
    np.testing.assert_array_equal(np.asarray(ys["auto"]), np.asarray(ys["kernel"]))


def test_deterministic():
    x, w, bias = make(4, 512, 256, m=(16,))
    f = jax.jit(jax_fpx.linear)
    a, b = np.asarray(f(x, w, bias)), np.asarray(f(x, w, bias))
    assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_custom_call_visible_in_lowering_and_jaxpr():
    x, w, _ = make(5, 64, 32)
    text = jax.jit(jax_fpx.linear).lower(x, w).as_text()
    assert "jax_fpx_linear" in text and "custom_call" in text
    assert "ffi_call" in str(jax.make_jaxpr(jax_fpx.linear)(x, w))
    out = jax.eval_shape(jax_fpx.linear, jax.ShapeDtypeStruct((7, 9, 64), jnp.float16), w)
    assert out.shape == (7, 9, 32) and out.dtype == jnp.float16


def test_input_errors():
    x, w, bias = make(6, 64, 32)
    with pytest.raises(TypeError, match=r"bfloat16 or float16.*astype"):
        jax_fpx.linear(x.astype(jnp.float32), w)
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        jax_fpx.linear(jnp.ones((2, 64), jnp.int32), w)
    with pytest.raises(ValueError, match="in_features=64"):
        jax_fpx.linear(jnp.ones((2, 65), jnp.bfloat16), w)
    with pytest.raises(ValueError, match=r"bias must have shape \(32,\)"):
        jax_fpx.linear(x, w, jnp.ones((31,)))
    with pytest.raises(TypeError, match="bias must be a float"):
        jax_fpx.linear(x, w, jnp.ones((32,), jnp.int32))
    with pytest.raises(TypeError, match="FPxWeight"):
        jax_fpx.linear(x, jnp.ones((64, 32)))
    with pytest.raises(ValueError, match="scalar"):
        jax_fpx.linear(jnp.bfloat16(1.0), w)
    with pytest.raises(ValueError, match="impl"):
        jax_fpx.linear(x, w, impl="fast")
    stacked = jax_fpx.quantize(jnp.ones((2, 64, 32)))
    with pytest.raises(ValueError, match="stack"):
        jax_fpx.linear(x, stacked)
    # errors come before anything runs: also at trace time under jit
    with pytest.raises(ValueError, match="in_features"):
        jax.jit(jax_fpx.linear)(jnp.ones((2, 65), jnp.bfloat16), w)


@settings(max_examples=8, deadline=None)  # each example compiles a new shape (~3 s on 2 cores)
@given(
    k=st.integers(1, 200),
    n=st.integers(1, 100),
    m=st.integers(1, 20),
    fmt=st.sampled_from(FORMATS + ["fp8_e4m3", "fp3_e1m1", "fp7_e3m3"]),
    group=st.sampled_from([None, 64, 128]),
    fp16=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fuzz_shapes_and_formats(k, n, m, fmt, group, fp16, seed):
    dtype = jnp.float16 if fp16 else jnp.bfloat16
    x, w, bias = make(seed, k, n, fmt, group, dtype, m=(m,))
    assert_close_to_reference(jax_fpx.linear(x, w, bias), x, w, bias)

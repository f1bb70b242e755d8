"""The dequantize + XLA dot path (impl="xla", large M): the CUDA dequantize kernel and its lowering."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fpx
from jax_fpx import _ffi, ffi_calls
from jax_fpx.linear_spec import LinearSpec


def dequantize_nk(w, dtype):
    """The CUDA dequantize custom call on an FPxWeight (stacked weights: one call)."""
    return ffi_calls.dequantize_nk(w.data, w.scale, LinearSpec(w.fmt, w.shape, w.group_size), dtype)


def test_fallback_matches_reference():
    w = jax_fpx.quantize(jax.random.normal(jax.random.key(0), (300, 70)), "fp5_e2m2", group_size=64)
    x = jax.random.normal(jax.random.key(1), (9, 300)).astype(jnp.bfloat16)
    b = jnp.linspace(-1, 1, 70)
    want = np.asarray(jax_fpx.reference.linear(x, w, b), np.float32)
    got = np.asarray(jax.jit(functools.partial(jax_fpx.linear, impl="xla"))(x, w, b), np.float32)
    # CPU computes in float32; GPU rounds the dequantized weights to bf16 (2^-9 relative each)
    # before its dot: bound the error by that rounding over sum |x||w|, plus the output rounding.
    mag = np.asarray(jnp.abs(x.astype(jnp.float32)) @ jnp.abs(jax_fpx.dequantize(w)))
    rounding = 0.0 if jax.default_backend() == "cpu" else 2.0**-9
    assert np.all(np.abs(got - want) <= rounding * mag + 2.0**-7 * np.abs(want) + 1e-6)  # + one bf16 ulp


@pytest.mark.skipif(not _ffi.register(), reason="needs the CUDA build")
def test_cuda_lowering_uses_the_dequantize_kernel():
    w = jax_fpx.quantize(jnp.ones((128, 64)), "fp6_e3m2")
    x = jax.ShapeDtypeStruct((512, 128), jnp.bfloat16)
    fn = jax.jit(functools.partial(jax_fpx.linear, impl="xla"))
    exp = jax.export.export(fn, platforms=["cuda"], disabled_checks=jax_fpx.ops.export_disabled_checks())(x, w)
    assert _ffi.DEQUANTIZE_TARGET in exp.mlir_module()


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["fp6_e3m2", "fp6_e2m3", "fp5_e2m2", "fp4_e2m1", "fp8_e4m3", "fp3_e1m1", "fp7_e3m3"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape,group", [((1000, 3000), None), ((4097, 1111), 128), ((64, 16), None), ((1, 5), None)])
def test_gpu_dequantize_kernel_is_exact(fmt, dtype, shape, group):
    k = jax.random.normal(jax.random.key(shape[0]), shape)
    w = jax_fpx.quantize(k, fmt, group_size=group)
    got = jax.jit(dequantize_nk, static_argnums=1)(w, dtype)
    want = jax_fpx.dequantize(w, jnp.float32).astype(dtype).T
    assert got.shape == (shape[1], shape[0]) and got.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got).view(np.uint16), np.asarray(want).view(np.uint16))


@pytest.mark.gpu
def test_gpu_dequantize_kernel_stacked():
    k = jax.random.normal(jax.random.key(3), (3, 200, 48))
    w = jax_fpx.quantize(k, "fp6_e3m2")
    got = jax.jit(dequantize_nk, static_argnums=1)(w, jnp.bfloat16)
    want = jnp.swapaxes(jax_fpx.dequantize(w, jnp.float32).astype(jnp.bfloat16), -1, -2)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint16), np.asarray(want).view(np.uint16))

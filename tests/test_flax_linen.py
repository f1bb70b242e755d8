"""FPxDense / FPxDenseGeneral vs flax.linen Dense / DenseGeneral with the dequantized kernel."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fpx
from jax_fpx.flax import FPxDense, FPxDenseGeneral


def _x(shape, dtype=jnp.float32, seed=1):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32).astype(dtype)


@pytest.mark.parametrize("fmt,group_size", [("fp6_e3m2", None), ("fp6_e2m3", 64), ("fp4_e2m1", None)])
@pytest.mark.parametrize("xdtype", [jnp.float32, jnp.bfloat16])
def test_fpx_dense_matches_dense_with_dequantized_kernel(fmt, group_size, xdtype):
    x = _x((2, 3, 100), xdtype)
    m = FPxDense(72, fmt=fmt, group_size=group_size, bias_init=nn.initializers.normal(1.0))
    v = jax.jit(m.init)(jax.random.key(0), x)  # init (quantize) works under jit
    k = v["params"]["kernel"]
    assert isinstance(k, jax_fpx.FPxWeight) and k.shape == (100, 72) and k.group_size == group_size
    assert k.fmt == jax_fpx.get_format(fmt)
    assert set(v["params"]) == {"kernel", "bias"} and v["params"]["bias"].shape == (72,)
    y = jax.jit(m.apply)(v, x)
    assert y.dtype == xdtype and y.shape == (2, 3, 72)
    dense = {"params": {"kernel": jax_fpx.dequantize(k), "bias": v["params"]["bias"]}}
    # nn.Dense on the bf16-rounded input (the op runs bf16 activations) in float32
    want = nn.Dense(72).apply(dense, x.astype(jnp.bfloat16).astype(jnp.float32))
    tol = 2e-2 if xdtype == jnp.bfloat16 else 2e-3
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(want), rtol=tol, atol=tol * 4)
    # and the kernel really is quantized: dense output of the *unquantized* init differs
    assert float(jnp.abs(y.astype(jnp.float32) - want).max()) < 0.1


def test_fpx_dense_dtype_policy_and_no_bias():
    x = _x((4, 64))
    m = FPxDense(32, use_bias=False, dtype=jnp.bfloat16, impl="reference")
    v = m.init(jax.random.key(0), x)
    assert set(v["params"]) == {"kernel"}
    y = m.apply(v, x)
    assert y.dtype == jnp.bfloat16
    want = x.astype(jnp.bfloat16).astype(jnp.float32) @ jax_fpx.dequantize(v["params"]["kernel"])
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(want), rtol=2e-2, atol=2e-2)
    # act_dtype=float16 runs the op in f16 (closer to f32 than bf16 here)
    m16 = FPxDense(32, use_bias=False, act_dtype=jnp.float16, impl="reference")
    y16 = m16.apply(v, x)
    exact = x @ jax_fpx.dequantize(v["params"]["kernel"])
    assert y16.dtype == jnp.float32
    assert float(jnp.abs(y16 - exact).max()) < float(jnp.abs(m.apply(v, x).astype(jnp.float32) - exact).max())


def test_fpx_dense_rejects_dense_kernel():
    x = _x((2, 16))
    dense_vars = nn.Dense(8).init(jax.random.key(0), x)
    with pytest.raises(TypeError, match="FPxWeight"):
        FPxDense(8).apply(dense_vars, x)


def test_fpx_dense_grad_wrt_input():
    x = _x((3, 64))
    m = FPxDense(16, impl="reference")
    v = m.init(jax.random.key(0), x)
    g = jax.grad(lambda x: jnp.sum(m.apply(v, x) ** 2))(x)
    wd = jax_fpx.dequantize(v["params"]["kernel"])
    gd = jax.grad(lambda x: jnp.sum((x.astype(jnp.bfloat16).astype(jnp.float32) @ wd + v["params"]["bias"]) ** 2))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(gd), rtol=5e-2, atol=5e-2)


def test_fpx_dense_general_heads_and_out_projection():
    x = _x((2, 5, 96))
    qkv = FPxDenseGeneral((4, 24), axis=-1, fmt="fp6_e2m3")
    v = qkv.init(jax.random.key(0), x)
    assert v["params"]["kernel"].shape == (96, 96) and v["params"]["bias"].shape == (4, 24)
    y = qkv.apply(v, x)
    assert y.shape == (2, 5, 4, 24)
    wd = jax_fpx.dequantize(v["params"]["kernel"]).reshape(96, 4, 24)
    want = nn.DenseGeneral((4, 24)).apply({"params": {"kernel": wd, "bias": v["params"]["bias"]}}, x.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=2e-3, atol=1e-2)

    out = FPxDenseGeneral(48, axis=(-2, -1))
    vo = out.init(jax.random.key(1), y)
    yo = out.apply(vo, y)
    assert yo.shape == (2, 5, 48) and vo["params"]["kernel"].shape == (96, 48)
    wo = jax_fpx.dequantize(vo["params"]["kernel"]).reshape(4, 24, 48)
    want_o = nn.DenseGeneral(48, axis=(-2, -1)).apply({"params": {"kernel": wo, "bias": vo["params"]["bias"]}}, y.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(yo), np.asarray(want_o), rtol=2e-3, atol=1e-2)


def test_fpx_dense_general_unsupported_is_clear():
    x = _x((2, 5, 96))
    with pytest.raises(NotImplementedError, match="trailing"):
        FPxDenseGeneral(8, axis=1).init(jax.random.key(0), x)
    with pytest.raises(NotImplementedError, match="batch_dims"):
        FPxDenseGeneral(8, batch_dims=(0,)).init(jax.random.key(0), x)


def test_fpx_dense_under_nn_scan_stacks_weights():
    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return x + FPxDense(64, impl="reference")(x), None

    stack = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)()
    x = _x((2, 64))
    v = stack.init(jax.random.key(1), x, None)
    k, b = v["params"]["FPxDense_0"]["kernel"], v["params"]["FPxDense_0"]["bias"]
    assert k.batch_shape == (3,) and k.shape == (64, 64)
    y, _ = jax.jit(stack.apply)(v, x, None)
    h = x
    for i in range(3):
        h = h + (h.astype(jnp.bfloat16).astype(jnp.float32) @ jax_fpx.dequantize(jax.tree.map(lambda a: a[i], k)) + b[i])
    np.testing.assert_allclose(np.asarray(y), np.asarray(h), rtol=2e-2, atol=5e-2)
    assert not np.allclose(np.asarray(k.data[0]), np.asarray(k.data[1]))  # distinct layers

"""FPxLinear and in-place conversion of an nnx model."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jax_fpx
from jax_fpx.flax import FPxLinear, quantize_nnx


class Net(nnx.Module):
    def __init__(self, rngs):
        self.inp = nnx.Linear(100, 64, rngs=rngs)
        self.blocks = nnx.List([nnx.Linear(64, 64, rngs=rngs) for _ in range(2)])
        self.norm = nnx.LayerNorm(64, rngs=rngs)
        self.lm_head = nnx.Linear(64, 7, rngs=rngs)

    def __call__(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = jax.nn.gelu(b(x))
        return self.lm_head(self.norm(x))


def test_fpx_linear_matches_linear_with_dequantized_kernel():
    x = jax.random.normal(jax.random.key(1), (3, 100))
    lin = nnx.Linear(100, 48, rngs=nnx.Rngs(0), bias_init=nnx.initializers.normal(1.0))
    q = FPxLinear.from_linear(lin, "fp6_e2m3", group_size=64)
    assert isinstance(q.kernel.get_value(), jax_fpx.FPxWeight) and q.kernel.get_value().group_size == 64
    np.testing.assert_array_equal(np.asarray(q.bias.get_value()), np.asarray(lin.bias.get_value()))
    want = x.astype(jnp.bfloat16).astype(jnp.float32) @ jax_fpx.dequantize(q.kernel.get_value()) + lin.bias.get_value()
    y = q(x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=2e-3, atol=1e-2)
    fresh = FPxLinear(100, 48, use_bias=False, fmt="fp5_e2m2", rngs=nnx.Rngs(0))
    assert fresh.bias is None and fresh.kernel.get_value().fmt.bits == 5 and fresh(x).shape == (3, 48)


def test_quantize_nnx_in_place():
    x = jax.random.normal(jax.random.key(1), (4, 100))
    net = Net(nnx.Rngs(0))
    y0 = net(x)
    before_lm = np.asarray(net.lm_head.kernel.get_value())
    out = quantize_nnx(net, "fp6_e3m2")
    assert out is net
    assert isinstance(net.inp, FPxLinear) and all(isinstance(b, FPxLinear) for b in net.blocks)
    assert isinstance(net.lm_head, nnx.Linear) and not isinstance(net.lm_head, FPxLinear)  # default exclude
    np.testing.assert_array_equal(np.asarray(net.lm_head.kernel.get_value()), before_lm)
    y1 = nnx.jit(lambda n, x: n(x))(net, x)  # the converted model jit-compiles
    assert y1.shape == y0.shape and float(jnp.abs(y1 - y0).max()) > 0  # weights really changed

    def lin(m, h):  # the converted layer's math with its dequantized kernel, float32
        return h.astype(jnp.bfloat16).astype(jnp.float32) @ jax_fpx.dequantize(m.kernel.get_value()) + m.bias.get_value()

    h = lin(net.inp, x)
    for b in net.blocks:
        h = jax.nn.gelu(lin(b, h))
    want = net.lm_head(net.norm(h))
    np.testing.assert_allclose(np.asarray(y1), np.asarray(want), rtol=2e-2, atol=2e-2)
    # state holds FPxWeight leaves and round-trips through split/merge
    g, st = nnx.split(net)
    net2 = nnx.merge(g, st)
    np.testing.assert_array_equal(np.asarray(net2(x)), np.asarray(net(x)))


def test_quantize_nnx_include_and_lm_head():
    net = Net(nnx.Rngs(0))
    quantize_nnx(net, "fp6_e2m3", include=r"blocks/1|lm_head", exclude=())
    assert isinstance(net.blocks[1], FPxLinear) and isinstance(net.lm_head, FPxLinear)
    assert not isinstance(net.inp, FPxLinear) and not isinstance(net.blocks[0], FPxLinear)
    assert isinstance(quantize_nnx(nnx.Linear(8, 8, rngs=nnx.Rngs(0))), FPxLinear)

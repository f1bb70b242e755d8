"""Calibration statistics (linen interceptor, nnx) and sequential GPTQ through quantize_params."""

import numpy as np
import pytest

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import jax_fpx
import jax_fpx.flax as fpx
from jax_fpx.flax.calibration import _stages


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        a = nn.Dense(96, name="a")(x)
        b = nn.Dense(96, name="b")(x)  # reads the same input as "a"
        h = nn.gelu(a) * b
        return x + nn.Dense(64, name="out")(h)


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = Block(name="block_0")(x)
        x = Block(name="block_1")(x)
        return nn.Dense(10, name="lm_head")(x)


def _setup(seed=0):
    model = Net()
    rng = np.random.RandomState(seed)
    mix = rng.randn(64, 64).astype(np.float32) / 8 + np.eye(64, dtype=np.float32)
    data = lambda n: jnp.asarray(rng.randn(n, 12, 64).astype(np.float32) @ mix)
    params = model.init(jax.random.key(0), data(1))["params"]
    return model, params, [data(24), data(24)], data(16)


def test_dense_input_hessians_match_manual():
    model, params, (x, _), _ = _setup()
    weights = jnp.asarray(np.random.RandomState(1).randint(0, 2, x.shape[:-1]), jnp.float32)
    with fpx.dense_input_hessians(token_weights=weights) as stats:
        model.apply({"params": params}, x)
    assert set(stats) == {"block_0/a", "block_0/b", "block_0/out", "block_1/a", "block_1/b", "block_1/out", "lm_head"}
    x2 = np.asarray(x).reshape(-1, 64)
    w = np.asarray(weights).reshape(-1)
    np.testing.assert_allclose(np.asarray(stats["block_0/a"].hessian), (x2 * w[:, None]).T @ x2, rtol=1e-4, atol=1e-3)
    assert stats["block_0/a"].count == pytest.approx(w.sum())
    np.testing.assert_allclose(np.asarray(stats["block_0/a"].mean_square), (x2**2 * w[:, None]).sum(0) / w.sum(), rtol=1e-4)


def test_stages_group_shared_inputs():
    model, params, batches, _ = _setup()
    calib = fpx.Calibration(lambda p, b: model.apply({"params": p}, b), batches)
    calls = calib.call_order(params)
    assert [c[0] for c in calls] == ["block_0/a", "block_0/b", "block_0/out", "block_1/a", "block_1/b", "block_1/out", "lm_head"]
    stages = _stages(calls, {c[0] for c in calls} - {"lm_head"})
    assert [s[0] for s in stages] == [["block_0/a", "block_0/b"], ["block_0/out"], ["block_1/a", "block_1/b"], ["block_1/out"]]
    assert [s[1] for s in stages] == [1, 2, 4, 5]
    by_module = fpx.Calibration(calib.forward, batches, stages="module")
    assert [s[0] for s in _stages(by_module.call_order(params), {"block_0/a", "block_0/b", "block_0/out"})] == [
        ["block_0/a", "block_0/b", "block_0/out"]
    ]


@pytest.mark.parametrize("stages", ["input", "module"])
def test_sequential_gptq_beats_rtn_on_held_out_data(stages):
    model, params, batches, held_out = _setup()
    calib = fpx.Calibration(lambda p, b: model.apply({"params": p}, b), batches, stages=stages)
    qg = fpx.quantize_params(params, "fp4_e2m1", calibration=calib, method="gptq")
    qr = fpx.quantize_params(params, "fp4_e2m1")
    assert isinstance(qg["block_1"]["out"]["kernel"], jax_fpx.FPxWeight)
    assert not isinstance(qg["lm_head"]["kernel"], jax_fpx.FPxWeight)  # DEFAULT_EXCLUDE still applies
    ref = model.apply({"params": params}, held_out)

    def err(q):  # same quantized weights in float32 math: only the weight error counts
        y = model.apply({"params": fpx.dequantize_params(q)}, held_out)
        return float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))

    assert err(qg) < (0.9 if stages == "input" else 0.95) * err(qr)


def test_one_shot_gptq_from_statistics_and_options():
    model, params, (x, _), _ = _setup()
    with fpx.dense_input_hessians() as stats:
        model.apply({"params": params}, x)
    q = fpx.quantize_params(params, "fp5_e2m2", group_size=64, calibration=dict(stats),
                            method=jax_fpx.GPTQ(act_order=True))
    k = params["block_0"]["a"]["kernel"]
    want = jax_fpx.quantize_gptq(k, stats["block_0/a"].hessian, "fp5_e2m2", group_size=64, act_order=True)
    np.testing.assert_array_equal(np.asarray(q["block_0"]["a"]["kernel"].data), np.asarray(want.data))
    with pytest.warns(UserWarning, match="no calibration statistics"):
        fpx.quantize_params(params, "fp5_e2m2", calibration={"block_0/a": stats["block_0/a"]}, method="gptq")


def test_method_errors():
    model, params, batches, _ = _setup()
    with pytest.raises(ValueError, match="GPTQ needs both"):
        fpx.quantize_params(params, "fp6_e3m2", method="gptq")
    with pytest.raises(ValueError, match="method must be"):
        fpx.quantize_params(params, "fp6_e3m2", method="awq", calibration={})
    calib = fpx.Calibration(jax.jit(lambda p, b: model.apply({"params": p}, b)), batches)
    with pytest.raises(RuntimeError, match="eagerly"):
        calib.hessians(params)
    with pytest.raises(ValueError, match="stages"):
        fpx.Calibration(calib.forward, batches, stages="layer")


def test_nnx_input_hessians():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.up = nnx.Linear(32, 48, rngs=rngs)
            self.down = nnx.Linear(48, 16, rngs=rngs)

        def __call__(self, x):
            return self.down(jax.nn.relu(self.up(x)))

    m = M(nnx.Rngs(0))
    x = jnp.asarray(np.random.RandomState(0).randn(4, 5, 32), jnp.float32)
    with fpx.nnx_input_hessians(m) as stats:
        y = m(x)
        m(x)
    assert set(stats) == {"up", "down"} and stats["up"].count == 40
    x2 = np.asarray(x).reshape(-1, 32)
    np.testing.assert_allclose(np.asarray(stats["up"].hessian), 2 * x2.T @ x2, rtol=1e-4, atol=1e-3)
    assert type(m.up) is nnx.Linear  # restored
    np.testing.assert_allclose(np.asarray(m(x)), np.asarray(y))
    q = jax_fpx.quantize_gptq(m.down.kernel.get_value(), stats["down"].hessian, "fp6_e3m2")
    assert q.shape == (48, 16)

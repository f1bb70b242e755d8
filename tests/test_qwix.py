"""The Qwix bridge (jax_fpx.qwix): FPx formats named in Qwix quantization rules.

Skipped without the ``qwix`` extra (``pip install -e ".[qwix]"``).
"""

import re
from pathlib import Path

import pytest

qwix = pytest.importorskip("qwix")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import jax_fpx  # noqa: E402
import jax_fpx.flax as fpx  # noqa: E402
from jax_fpx.qwix import FPxKernel, FPxProvider, fpx_format_of, quantize_params  # noqa: E402

Rule = qwix.QuantizationRule


def _is_k(x):
    return isinstance(x, FPxKernel)


def _kinds(tree):
    """{path: 'fpx' | 'dense' | 'qwix'} for every kernel-like leaf of a param tree."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: _is_k(x) or type(x).__name__ == "WithAux"
    )[0]:
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out[key] = "fpx" if _is_k(leaf) else "qwix" if type(leaf).__name__ == "WithAux" else "dense"
    return out


def _dequantized(tree):
    return jax.tree.map(lambda a: a.dequantize() if _is_k(a) else a, tree, is_leaf=_is_k)


def _close(a, b, tol):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert a.shape == b.shape
    err = float(np.abs(a - b).max())
    assert err <= tol * max(1.0, float(np.abs(b).max())), err


# --------------------------------------------------------------------------------------------
# linen


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(128, name="up")(x)
        x = nn.Dense(64, name="down")(nn.gelu(x))
        return nn.Dense(10, name="lm_head")(x)


@pytest.mark.parametrize("fmt,group", [("fp6_e3m2", None), ("fp5_e2m2", 64)])
def test_linen_matches_quantize_params(fmt, group):
    m = MLP()
    x = jax.random.normal(jax.random.key(0), (4, 64))
    params = m.init(jax.random.key(1), x)["params"]
    provider = FPxProvider([Rule(module_path=".*lm_head.*"), Rule(module_path=".*", weight_qtype=fmt, tile_size=group)])
    qmodel = qwix.quantize_model(m, provider)
    abstract = jax.eval_shape(qmodel.init, jax.random.key(1), x)["params"]
    assert _kinds(abstract) == {
        "up/kernel": "fpx", "up/bias": "dense", "down/kernel": "fpx", "down/bias": "dense",
        "lm_head/kernel": "dense", "lm_head/bias": "dense",
    }
    qparams = quantize_params(params, abstract)
    assert qparams["up"]["kernel"].fmt == jax_fpx.get_format(fmt) and qparams["up"]["kernel"].group_size == group
    np.testing.assert_array_equal(np.asarray(qparams["lm_head"]["kernel"]), np.asarray(params["lm_head"]["kernel"]))
    y = qmodel.apply({"params": qparams}, x)

    ref = fpx.quantize_params(params, fmt, group_size=group)  # excludes lm_head by default
    with fpx.fpx_dense_interceptor():
        want = m.apply({"params": ref}, x)
    for name in ("up", "down"):  # the very same packed weights
        np.testing.assert_array_equal(qparams[name]["kernel"].weight.data, ref[name]["kernel"].data)
    assert y.dtype == want.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(jax.jit(qmodel.apply)({"params": qparams}, x)), np.asarray(want))
    assert provider.get_unused_rules() == []


def test_linen_init_quantizes_and_rules_select():
    m = MLP()
    x = jnp.ones((2, 64))
    provider = FPxProvider(
        [Rule(module_path="up", weight_qtype="fp4_e2m1"), Rule(module_path="down", weight_qtype="fp6_e2m3"),
         Rule(module_path="nothing_here", weight_qtype="fp6_e3m2")]
    )
    qmodel = qwix.quantize_model(m, provider)
    qv = jax.jit(qmodel.init)(jax.random.key(1), x)
    p = qv["params"]
    assert p["up"]["kernel"].fmt.name == "fp4_e2m1" and p["down"]["kernel"].fmt.name == "fp6_e2m3"
    assert isinstance(p["lm_head"]["kernel"], jax.Array)  # no rule matched: left alone
    assert provider.get_unused_rules() == [provider._rules[2]]
    assert qmodel.apply(qv, x).shape == (2, 10)
    # A float kernel given to the quantized model is an error, not a silent re-quantization per call.
    dense = m.init(jax.random.key(1), x)
    with pytest.raises(ValueError, match="quantize_params"):
        qmodel.apply(dense, x)


class Mixed(nn.Module):
    """DenseGeneral, Einsum, a hand-written ``jnp.dot`` with a param, an attention-score einsum
    between activations (must stay dense) and per-expert kernels (einsum batch axis)."""

    @nn.compact
    def __call__(self, x):
        q = nn.DenseGeneral((4, 16), name="q")(x)
        k = nn.Einsum((64, 4, 16), "btd,dnh->btnh", name="k")(x)
        scores = jnp.einsum("btnh,bsnh->bnts", q, k)
        o = nn.DenseGeneral(64, axis=(-2, -1), name="o")(q)
        w = self.param("w", nn.initializers.normal(0.1), (64, 32))
        experts = self.param("experts", nn.initializers.normal(0.1), (2, 64, 32))
        moe = jnp.einsum("ebtd,edf->ebtf", jnp.stack([o, 2 * o]), experts)
        return scores, jnp.dot(o, w), moe


def test_linen_dense_general_einsum_dot_moe():
    m = Mixed()
    x = jax.random.normal(jax.random.key(0), (2, 5, 64))
    params = m.init(jax.random.key(1), x)["params"]
    qmodel = qwix.quantize_model(m, FPxProvider([Rule(weight_qtype="fp6_e2m3")]))
    qparams = quantize_params(params, jax.eval_shape(qmodel.init, jax.random.key(1), x)["params"])
    kinds = _kinds(qparams)
    assert {k for k, v in kinds.items() if v == "fpx"} == {"q/kernel", "k/kernel", "o/kernel", "w", "experts"}
    assert qparams["experts"].weight.batch_shape == (2,) and qparams["o"]["kernel"].weight.shape == (64, 64)
    got = qmodel.apply({"params": qparams}, x)
    # Reference: the dense model on the dequantized kernels (the op rounds activations to bf16).
    want = m.apply({"params": _dequantized(qparams)}, x)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        _close(g, w, 2e-2)
    # DenseGeneral's flattened layout is jax_fpx.flax.quantize_params(dense_general=...)'s.
    ref = fpx.quantize_params(params, "fp6_e2m3", dense_general={"q/": 1, "o/": 2})
    np.testing.assert_array_equal(qparams["q"]["kernel"].weight.data, ref["q"]["kernel"].data)
    np.testing.assert_array_equal(qparams["o"]["kernel"].weight.data, ref["o"]["kernel"].data)


def test_linen_scan_and_mixed_with_qwix_int8():
    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return nn.Dense(64, name="attn")(nn.Dense(64, name="mlp")(x)), None

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            layers = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            return layers(name="layers")(x, None)[0]

    m = Stack()
    x = jax.random.normal(jax.random.key(0), (4, 64))
    params = m.init(jax.random.key(1), x)["params"]
    qmodel = qwix.quantize_model(m, FPxProvider([Rule(module_path=".*mlp", weight_qtype="fp6_e3m2")]))
    qparams = quantize_params(params, jax.eval_shape(qmodel.init, jax.random.key(1), x)["params"])
    assert _kinds(qparams)["layers/mlp/kernel"] == "fpx" and _kinds(qparams)["layers/attn/kernel"] == "dense"
    k = qparams["layers"]["mlp"]["kernel"]
    assert k.shape == (64, 64) and k.weight.batch_shape == (3,)  # stacked over the scanned layers
    np.testing.assert_array_equal(k.weight.data, jax_fpx.quantize(params["layers"]["mlp"]["kernel"], "fp6_e3m2").data)
    y = jax.jit(qmodel.apply)({"params": qparams}, x)
    _close(y, m.apply({"params": _dequantized(qparams)}, x), 2e-2)

    # One rule list, FPx and Qwix's own int8 (Qwix's quantize_params does the int8 leaves).
    m = MLP()
    params = m.init(jax.random.key(1), x)["params"]
    provider = FPxProvider([Rule(module_path="up", weight_qtype="fp6_e3m2"), Rule(module_path="down", weight_qtype="int8")])
    qmodel = qwix.quantize_model(m, provider)
    qparams = quantize_params(params, jax.eval_shape(qmodel.init, jax.random.key(1), x)["params"])
    assert [_kinds(qparams)[f"{n}/kernel"] for n in ("up", "down", "lm_head")] == ["fpx", "qwix", "dense"]
    _close(jax.jit(qmodel.apply)({"params": qparams}, x), m.apply({"params": params}, x), 5e-2)


def test_linen_bfloat16_layer_keeps_flax_dtype_policy():
    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(64, dtype=jnp.bfloat16, use_bias=False, name="a")(x)

    m = M()
    x = jax.random.normal(jax.random.key(0), (3, 64))
    params = m.init(jax.random.key(1), x)["params"]
    qmodel = qwix.quantize_model(m, FPxProvider([Rule(weight_qtype="fp6_e3m2")]))
    qparams = quantize_params(params, jax.eval_shape(qmodel.init, jax.random.key(1), x)["params"])
    y = qmodel.apply({"params": qparams}, x)
    assert y.dtype == jnp.bfloat16  # as nn.Dense(dtype=bf16) returns
    k = qparams["a"]["kernel"]
    assert k.dtype == jnp.bfloat16  # quantized as the op saw it (after the layer's promotion)
    want = jax_fpx.linear(x.astype(jnp.bfloat16), jax_fpx.quantize(params["a"]["kernel"].astype(jnp.bfloat16), "fp6_e3m2"))
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))


def test_scale_search_calibration():
    m = MLP()
    x = jax.random.normal(jax.random.key(0), (4, 64))
    params = m.init(jax.random.key(1), x)["params"]
    rule = Rule(module_path="up", weight_qtype="fp6_e3m2", weight_calibration_method="scale_search")
    qmodel = qwix.quantize_model(m, FPxProvider([rule]))
    qparams = quantize_params(params, jax.eval_shape(qmodel.init, jax.random.key(1), x)["params"])
    want = jax_fpx.quantize(params["up"]["kernel"], "fp6_e3m2", scale_search=True)
    np.testing.assert_array_equal(qparams["up"]["kernel"].weight.scale, want.scale)


def test_reshaped_kernel_is_a_clear_error():
    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jnp.dot(x, self.param("w", nn.initializers.normal(0.1), (64, 4, 8)).reshape(64, 32))

    qmodel = qwix.quantize_model(M(), FPxProvider([Rule(weight_qtype="fp6_e3m2")]))
    with pytest.raises(NotImplementedError, match="reshapes or transposes param 'w'"):
        jax.eval_shape(qmodel.init, jax.random.key(0), jnp.ones((2, 64)))
    skip = FPxProvider([Rule(weight_qtype=None), Rule(weight_qtype="fp6_e3m2")])  # weight_qtype=None: dense
    assert jax.eval_shape(qwix.quantize_model(M(), skip).init, jax.random.key(0), jnp.ones((2, 64)))["params"]["w"].shape == (64, 4, 8)


def test_rule_validation_and_format_names():
    assert fpx_format_of("fp6_e3m2") == jax_fpx.get_format("fp6_e3m2")
    assert fpx_format_of(jax_fpx.FPxFormat(2, 2)).name == "fp5_e2m2"
    for qwix_type in ("int8", "nf4", "mxfp4", jnp.float8_e4m3fn, None):
        assert fpx_format_of(qwix_type) is None
    with pytest.raises(ValueError, match="wrong bit count"):
        fpx_format_of("fp5_e3m2")
    with pytest.raises(ValueError, match="weight-only"):
        FPxProvider([Rule(weight_qtype="fp6_e3m2", act_qtype="int8")])
    with pytest.raises(ValueError, match="weight_calibration_method"):
        FPxProvider([Rule(weight_qtype="fp6_e3m2", weight_calibration_method="rms,3")])
    with pytest.raises(ValueError, match="tile_size"):
        FPxProvider([Rule(weight_qtype="fp6_e3m2", tile_size=32)])


# --------------------------------------------------------------------------------------------
# nnx


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


@pytest.mark.parametrize("fmt,group", [("fp6_e3m2", None), ("fp4_e2m1", 64)])
def test_nnx_matches_quantize_nnx(fmt, group):
    x = jax.random.normal(jax.random.key(1), (3, 100))
    model = Net(nnx.Rngs(0))
    provider = FPxProvider([Rule(module_path=".*lm_head.*"), Rule(module_path=".*", weight_qtype=fmt, tile_size=group)])
    qmodel = qwix.quantize_model(model, provider, x)
    assert isinstance(model.inp.kernel.get_value(), jax.Array)  # Qwix works on a copy
    assert _kinds(nnx.to_pure_dict(nnx.state(qmodel, nnx.Param))) == {
        "inp/kernel": "fpx", "inp/bias": "dense", "blocks/0/kernel": "fpx", "blocks/0/bias": "dense",
        "blocks/1/kernel": "fpx", "blocks/1/bias": "dense", "norm/scale": "dense", "norm/bias": "dense",
        "lm_head/kernel": "dense", "lm_head/bias": "dense",
    }
    ref = fpx.quantize_nnx(nnx.clone(model), fmt, group_size=group)  # excludes lm_head by default
    want = ref(x)
    np.testing.assert_array_equal(np.asarray(qmodel(x)), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(nnx.jit(lambda m, v: m(v))(qmodel, x)), np.asarray(want))
    np.testing.assert_array_equal(qmodel.inp.kernel.get_value().weight.data, ref.inp.kernel.get_value().data)


def test_nnx_einsum_linear_general_and_abstract_quantize_params():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.up = nnx.Linear(64, 96, rngs=rngs)
            self.e = nnx.Einsum("btd,dnh->btnh", (96, 4, 8), (4, 8), rngs=rngs)
            self.g = nnx.LinearGeneral((4, 8), 16, axis=(-2, -1), rngs=rngs)

        def __call__(self, x):
            return self.g(self.e(self.up(x)))

    x = jax.random.normal(jax.random.key(0), (2, 3, 64))
    model = M(nnx.Rngs(0))
    provider = FPxProvider([Rule(module_path="e", weight_qtype="fp5_e2m2"), Rule(module_path="g", weight_qtype="fp6_e3m2")])
    qmodel = qwix.quantize_model(model, provider, x)
    assert _kinds(nnx.to_pure_dict(nnx.state(qmodel, nnx.Param)))["up/kernel"] == "dense"
    y = qmodel(x)
    dense = nnx.clone(model)
    nnx.update(dense, _dequantized(nnx.to_pure_dict(nnx.state(qmodel, nnx.Param))))
    _close(y, dense(x), 2e-2)
    # Qwix's abstract route: quantize float weights into an abstract quantized model.
    abstract = nnx.eval_shape(lambda: qwix.quantize_model(M(nnx.Rngs(0)), provider, x))
    nnx.update(abstract, quantize_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)), abstract))
    np.testing.assert_array_equal(np.asarray(abstract(x)), np.asarray(y))


def test_nnx_mixed_with_qwix_int8_abstract_route():
    class M(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(64, 64, rngs=rngs)
            self.b = nnx.Linear(64, 64, rngs=rngs)

        def __call__(self, x):
            return self.b(self.a(x))

    x = jax.random.normal(jax.random.key(0), (2, 64))
    model = M(nnx.Rngs(0))
    provider = FPxProvider([Rule(module_path="a", weight_qtype="int8"), Rule(module_path="b", weight_qtype="fp6_e3m2")])
    qmodel = qwix.quantize_model(model, provider, x)
    assert type(qmodel.a.kernel).__name__ == "WithAux" and _is_k(qmodel.b.kernel.get_value())
    abstract = nnx.eval_shape(lambda: qwix.quantize_model(M(nnx.Rngs(0)), provider, x))
    nnx.update(abstract, quantize_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)), abstract))
    np.testing.assert_array_equal(np.asarray(abstract(x)), np.asarray(qmodel(x)))
    _close(qmodel(x), model(x), 5e-2)


def test_checkpoint_round_trip_with_the_abstract_tree(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    m = MLP()
    x = jnp.ones((2, 64))
    qmodel = qwix.quantize_model(m, FPxProvider([Rule(module_path="up|down", weight_qtype="fp6_e3m2")]))
    abstract = jax.eval_shape(qmodel.init, jax.random.key(0), x)["params"]
    qparams = quantize_params(m.init(jax.random.key(0), x)["params"], abstract)
    with ocp.StandardCheckpointer() as ckpt:
        path = tmp_path / "ckpt"
        ckpt.save(path, qparams)
        ckpt.wait_until_finished()
        restored = ckpt.restore(path, abstract)
    assert _is_k(restored["up"]["kernel"]) and restored["up"]["kernel"].fmt.name == "fp6_e3m2"
    np.testing.assert_array_equal(restored["down"]["kernel"].weight.data, qparams["down"]["kernel"].weight.data)
    np.testing.assert_array_equal(qmodel.apply({"params": restored}, x), qmodel.apply({"params": qparams}, x))


# --------------------------------------------------------------------------------------------
# README


def test_readme_qwix_example_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Qwix", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md (Qwix)", "exec"), {})

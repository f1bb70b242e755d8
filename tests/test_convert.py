"""quantize_params, the nn.Dense interceptor, Orbax round trip, scale_search option."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fpx
from jax_fpx.flax import dense_input_stats, dequantize_params, fpx_dense_interceptor, quantize_params
from jax_fpx.quantize import ScaleSearch


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(name="ln")(x)
        h = nn.Dense(96, name="up")(h)
        return x + nn.Dense(x.shape[-1], use_bias=False, name="down")(nn.gelu(h))


class Tiny(nn.Module):
    """An unmodified linen model: embeddings, norms, 2 blocks, heads (DenseGeneral), lm_head."""

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(50, 64, name="embed")(tokens)
        for i in range(2):
            x = Block(name=f"block_{i}")(x)
        heads = nn.DenseGeneral((4, 16), name="heads")(x)
        x = x + nn.DenseGeneral(64, axis=(-2, -1), name="merge")(heads)
        return nn.Dense(50, name="lm_head")(nn.LayerNorm(name="final_ln")(x))


DENSE = ["block_0/up", "block_0/down", "block_1/up", "block_1/down"]


@pytest.fixture(scope="module")
def model_params():
    m = Tiny()
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 50, (2, 7)))
    return m, m.init(jax.random.key(0), tokens)["params"], tokens


def _kinds(tree):
    return jax.tree.map(
        lambda x: "fpx" if isinstance(x, jax_fpx.FPxWeight) else "dense",
        tree,
        is_leaf=lambda x: isinstance(x, jax_fpx.FPxWeight),
    )


def test_quantize_params_structure_and_names(model_params):
    _, p, _ = model_params
    q = quantize_params(p, "fp6_e3m2")
    assert jax.tree.structure(jax.tree.map(lambda x: 0, p)) == jax.tree.structure(
        jax.tree.map(lambda x: 0, q, is_leaf=lambda x: isinstance(x, jax_fpx.FPxWeight))
    )
    kinds = _kinds(q)
    for path in DENSE:
        a, b = path.split("/")
        assert kinds[a][b]["kernel"] == "fpx"
        np.testing.assert_array_equal(np.asarray(q[a][b].get("bias", 0)), np.asarray(p[a][b].get("bias", 0)))
    assert kinds["lm_head"]["kernel"] == "dense"  # excluded by default
    assert kinds["heads"]["kernel"] == "dense"  # 3-D DenseGeneral kernels need dense_general=
    assert kinds["embed"]["embedding"] == "dense" and kinds["block_0"]["ln"]["scale"] == "dense"
    assert q["embed"]["embedding"] is p["embed"]["embedding"]
    w = q["block_0"]["up"]["kernel"]
    assert w.shape == (64, 96) and w.fmt.name == "fp6_e3m2"
    np.testing.assert_array_equal(np.asarray(w.data), np.asarray(jax_fpx.quantize(p["block_0"]["up"]["kernel"], "fp6_e3m2").data))
    # include / exclude patterns and lm_head opt-in
    q2 = quantize_params(p, "fp4_e2m1", include=r"block_1/|lm_head", exclude=(), group_size=64)
    k2 = _kinds(q2)
    assert k2["lm_head"]["kernel"] == "fpx" and k2["block_1"]["up"]["kernel"] == "fpx"
    assert k2["block_0"]["up"]["kernel"] == "dense"
    assert q2["lm_head"]["kernel"].group_size == 64


def test_interceptor_swaps_every_dense(model_params):
    m, p, tokens = model_params
    q = quantize_params(p, "fp6_e2m3", exclude=(), dense_general={r"heads": 1, r"merge": 2})
    assert q["heads"]["kernel"].shape == (64, 64) and q["merge"]["kernel"].shape == (64, 64)
    with pytest.raises(Exception):  # the unmodified model cannot use FPxWeight on its own
        m.apply({"params": q}, tokens)
    with fpx_dense_interceptor() as hits:
        y = jax.jit(m.apply)({"params": q}, tokens)
    assert sorted(hits) == sorted(DENSE + ["heads", "merge", "lm_head"])
    # same as the unmodified model on the dequantized kernels (bf16-rounded activations aside)
    dq = jax.tree.map(lambda d, ref: d.reshape(ref.shape), dequantize_params(q), p)
    want = m.apply({"params": dq}, tokens)
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=3e-2, atol=3e-2)
    assert float(jnp.abs(y - m.apply({"params": p}, tokens)).max()) > 1e-3  # quantization is visible
    # inside the context, a tree with only dense kernels runs the original nn.Dense (nothing intercepted)
    with fpx_dense_interceptor() as hits2:
        np.testing.assert_array_equal(np.asarray(m.apply({"params": p}, tokens)), np.asarray(m.apply({"params": p}, tokens)))
    assert hits2 == []


def test_donate_deletes_originals(model_params):
    _, p, _ = model_params
    p = jax.tree.map(lambda x: x + 0, p)  # private copy
    k = p["block_0"]["up"]["kernel"]
    q = quantize_params(p, "fp6_e3m2", donate=True)
    assert k.is_deleted() and not p["embed"]["embedding"].is_deleted()
    assert isinstance(q["block_0"]["up"]["kernel"], jax_fpx.FPxWeight)


def test_orbax_round_trip(model_params, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    m, p, tokens = model_params
    q = quantize_params(p, "fp5_e2m2", group_size=64)
    with fpx_dense_interceptor():
        y = m.apply({"params": q}, tokens)
    ck = ocp.StandardCheckpointer()
    ck.save(tmp_path / "q", q)
    ck.wait_until_finished()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), q)
    r = ck.restore(tmp_path / "q", abstract)
    w = r["block_1"]["down"]["kernel"]
    assert isinstance(w, jax_fpx.FPxWeight) and w.fmt.name == "fp5_e2m2" and w.group_size == 64
    for a, b in zip(jax.tree.leaves(r), jax.tree.leaves(q)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with fpx_dense_interceptor():
        np.testing.assert_array_equal(np.asarray(m.apply({"params": r}, tokens)), np.asarray(y))


def test_scale_search_option():
    k = jax.random.normal(jax.random.key(0), (256, 48)) * jnp.linspace(0.1, 3, 48)
    plain = jax_fpx.quantize(k, "fp4_e2m1")
    np.testing.assert_array_equal(np.asarray(plain.data), np.asarray(jax_fpx.quantize(k, "fp4_e2m1", scale_search=None).data))
    mse = lambda w, imp=1.0: float(jnp.mean(imp * (jax_fpx.dequantize(w) - k) ** 2))
    s = jax_fpx.quantize(k, "fp4_e2m1", scale_search=True)
    assert mse(s) < 0.95 * mse(plain)
    imp = (jnp.arange(256.0) % 7 == 0) * 10.0 + 0.1
    a = jax_fpx.quantize(k, "fp4_e2m1", scale_search=ScaleSearch(importance=imp))
    assert mse(a, imp[:, None]) < mse(s, imp[:, None])
    g = jax_fpx.quantize(k, "fp6_e2m3", group_size=64, scale_search=ScaleSearch(candidates=5, refine=0))
    assert g.scale.shape == plain.scale.shape[:-1] + (4,)
    with pytest.raises(ValueError):
        ScaleSearch(candidates=1)


def test_dense_input_stats_and_importance(model_params):
    m, p, tokens = model_params
    with dense_input_stats() as stats:
        m.apply({"params": p}, tokens)
    assert set(DENSE + ["lm_head"]) <= set(stats)
    assert stats["block_0/up"].shape == (64,) and np.all(stats["block_0/up"] >= 0)
    q = quantize_params(p, "fp6_e3m2", importance=stats)
    plain = quantize_params(p, "fp6_e3m2")
    assert not np.array_equal(np.asarray(q["block_0"]["up"]["kernel"].scale), np.asarray(plain["block_0"]["up"]["kernel"].scale))

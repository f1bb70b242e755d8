"""quantize / pack / unpack / dequantize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fpx
from jax_fpx import layout
from jax_fpx.packing import pack, unpack

FORMATS = ["fp6_e3m2", "fp6_e2m3", "fp5_e2m2", "fp4_e2m1", "fp8_e4m3", "fp3_e1m1", "fp7_e3m3"]


@pytest.mark.parametrize("shape", [(1, 1), (384, 1536), (1000, 3000)])
def test_quantize_odd_shapes_round_trip(shape):
    key = jax.random.key(sum(shape))
    k = jax.random.normal(key, shape, jnp.float32)
    w = jax_fpx.quantize(k, "fp6_e3m2")
    n_pad, k_pad = layout.padded_shape(*shape, None)
    assert w.data.shape == (n_pad // 16, k_pad // 64, 192)
    assert w.scale.shape == (n_pad, 1)
    d = jax_fpx.dequantize(w)
    assert d.shape == shape
    # requantizing the dequantized kernel is lossless (codes and scales are reproduced)
    w2 = jax_fpx.quantize(d, "fp6_e3m2")
    np.testing.assert_array_equal(np.asarray(w2.data), np.asarray(w.data))
    np.testing.assert_allclose(np.asarray(jax_fpx.dequantize(w2)), np.asarray(d), rtol=1e-6, atol=0)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("group_size", [None, 64, 128])
def test_quantize_error_bound(fmt, group_size):
    f = jax_fpx.get_format(fmt)
    k = jax.random.normal(jax.random.key(1), (300, 200), jnp.float32)
    w = jax_fpx.quantize(k, fmt, group_size=group_size)
    d = np.asarray(jax_fpx.dequantize(w))
    kk = np.asarray(k)
    # per element: |err| <= half a step of the element's binade, relative to its scale
    g = 300 if group_size is None else group_size
    kpad = np.pad(kk, ((0, (-300) % g), (0, 0)))
    amax = np.abs(kpad.reshape(-1, g, 200)).max(axis=1).repeat(g, axis=0)[:300]
    # the stored scale: absmax / max per channel (float32), rounded up to bfloat16 per group
    scale = np.asarray(w.scale.astype(jnp.float32))[:200].T.repeat(g, axis=0)[:300]
    if group_size is None:
        np.testing.assert_allclose(scale, amax / f.max_value, rtol=1e-6)
    else:
        assert np.all(scale >= amax / f.max_value) and np.all(scale <= amax / f.max_value * (1 + 2.0**-7))
    q = np.abs(kk) / scale
    binade = np.floor(np.log2(np.maximum(q, 2.0**f.min_normal_exp)))
    half_step = 0.5 * 2.0 ** (binade - f.mbits) * scale
    assert np.all(np.abs(d - kk) <= half_step * (1 + 1e-6) + 1e-30)
    # and the absmax element of each channel is exact (per group the bf16 scale moves it off the grid)
    if group_size is None:
        rows = np.argmax(np.abs(kk), axis=0)
        np.testing.assert_allclose(d[rows, np.arange(200)], kk[rows, np.arange(200)], rtol=1e-6)


def test_group_size_validation_and_shapes():
    k = jnp.ones((200, 40))
    w = jax_fpx.quantize(k, "fp4_e2m1", group_size=128)
    assert w.scale.shape == (48, 2) and w.data.shape == (3, 4, 128)
    for bad in (0, 32, 100, -64, 64.0):
        with pytest.raises(ValueError, match="group_size"):
            jax_fpx.quantize(k, group_size=bad)


def test_zero_channels_get_scale_one_and_zero_output():
    k = jnp.zeros((64, 16)).at[:, 3].set(1.5)
    w = jax_fpx.quantize(k)
    s = np.asarray(w.scale)[:, 0]
    assert s[3] == pytest.approx(1.5 / 28) and np.all(np.delete(s, 3) == 1.0)
    np.testing.assert_allclose(np.asarray(jax_fpx.dequantize(w)), np.asarray(k), rtol=1e-6, atol=0)


def test_nan_inf_rejected_when_concrete():
    k = jnp.ones((70, 30)).at[5, 7].set(jnp.nan).at[1, 1].set(jnp.inf)
    with pytest.raises(ValueError, match=r"\(70, 30\).*2 NaN/Inf"):
        jax_fpx.quantize(k)


def test_nan_under_tracing_poisons_only_its_channel():
    k = jnp.ones((70, 30)).at[5, 7].set(jnp.nan)
    w = jax.jit(lambda k: jax_fpx.quantize(k))(k)
    d = np.asarray(jax_fpx.dequantize(w))
    assert np.all(np.isnan(d[:, 7])) and np.all(np.isfinite(np.delete(d, 7, axis=1)))


def test_quantize_inside_jit_and_vmap_and_stacked():
    k = jax.random.normal(jax.random.key(2), (3, 100, 48))
    direct = [jax_fpx.quantize(k[i], "fp5_e2m2") for i in range(3)]
    stacked = jax_fpx.quantize(k, "fp5_e2m2")
    vm = jax.vmap(lambda a: jax_fpx.quantize(a, "fp5_e2m2"))(k)
    jt = jax.jit(lambda a: jax_fpx.quantize(a, "fp5_e2m2"))(k)
    assert stacked.batch_shape == (3,) and vm.batch_shape == (3,)
    for w in (stacked, vm, jt):
        for i in range(3):
            np.testing.assert_array_equal(np.asarray(w.data[i]), np.asarray(direct[i].data))
            np.testing.assert_array_equal(np.asarray(w.scale[i]), np.asarray(direct[i].scale))
    np.testing.assert_array_equal(np.asarray(jax_fpx.dequantize(stacked))[1], np.asarray(jax_fpx.dequantize(direct[1])))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_input_dtypes(dtype):
    k = jax.random.normal(jax.random.key(3), (64, 32)).astype(dtype)
    w = jax_fpx.quantize(k, "fp6_e2m3")
    ref = jax_fpx.quantize(k.astype(jnp.float32), "fp6_e2m3")
    np.testing.assert_array_equal(np.asarray(w.data), np.asarray(ref.data))


def test_quantize_rejects_bad_inputs():
    with pytest.raises(TypeError, match="float32/bfloat16/float16"):
        jax_fpx.quantize(jnp.ones((4, 4), jnp.int32))
    with pytest.raises(ValueError, match="in_features, out_features"):
        jax_fpx.quantize(jnp.ones((4,)))
    with pytest.raises(TypeError, match="FPxWeight"):
        jax_fpx.dequantize(jnp.ones((4, 4)))


def test_weight_pytree_and_metadata():
    w = jax_fpx.quantize(jnp.ones((100, 20)), "fp4_e2m1", group_size=64)
    leaves, tree = jax.tree.flatten(w)
    assert len(leaves) == 2 and leaves[0].dtype == jnp.uint32 and leaves[1].dtype == jnp.bfloat16  # group scales
    w2 = jax.tree.unflatten(tree, leaves)
    assert (w2.fmt, w2.shape, w2.group_size) == (w.fmt, (100, 20), 64)
    assert "fp4_e2m1" in repr(w) and "group=64" in repr(w)
    assert w.nbytes == w.data.size * 4 + w.scale.size * 2
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(w)[0]]
    assert paths == [".data", ".scale"]
    w.check()
    with pytest.raises(ValueError, match="do not match"):  # construction checks the leaves
        jax_fpx.FPxWeight(w.data[:, :1], w.scale, w.fmt, w.shape, w.group_size)
    bad = jax.tree.unflatten(tree, [w.data[:, :1], w.scale])  # unflatten cannot: check() does
    with pytest.raises(ValueError, match="do not match"):
        bad.check()


def test_pack_unpack_llama_sized():
    """4096 x 11008 (Llama-7B MLP) codes survive pack -> unpack; quantize keeps the logical shape."""
    codes = jax.random.randint(jax.random.key(9), (11008, 4096), 0, 64).astype(jnp.uint32)
    data = jax.jit(pack, static_argnums=(1, 2))(codes, 3, 2)
    assert data.shape == (688, 64, 192)
    assert bool(jnp.all(jax.jit(unpack, static_argnums=(1, 2))(data, 3, 2) == codes))
    w = jax.eval_shape(lambda k: jax_fpx.quantize(k), jax.ShapeDtypeStruct((4096, 11008), jnp.bfloat16))
    assert w.shape == (4096, 11008) and w.data.shape == (688, 64, 192)

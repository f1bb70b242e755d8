"""One validation for every path (issue 16, item 5): FPxWeight construction and unflatten,
dequantize, the reference and every ``linear`` impl reject the same bad inputs, before any
kernel runs, with a TypeError/ValueError that says what to fix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fpx
from jax_fpx import FPxWeight, get_format


@pytest.fixture(scope="module")
def w():
    return jax_fpx.quantize(jax.random.normal(jax.random.key(0), (200, 48)), "fp6_e3m2")


@pytest.fixture(scope="module")
def wg():
    return jax_fpx.quantize(jax.random.normal(jax.random.key(1), (256, 48)), "fp6_e3m2", group_size=64)


def _tampered(w, data=None, scale=None):
    """A weight whose leaves were swapped behind the constructor's back (as a checkpoint or a
    tree_map could): only the metadata is checked at unflatten."""
    _, tree = jax.tree.flatten(w)
    return jax.tree.unflatten(tree, [w.data if data is None else data, w.scale if scale is None else scale])


def _every_path(w):
    x = jnp.ones((3, w.in_features), jnp.bfloat16)
    yield "dequantize", lambda: jax_fpx.dequantize(w)
    yield "reference", lambda: jax_fpx.reference.linear(x, w)
    for impl in ("auto", "kernel", "xla", "reference"):
        yield impl, lambda impl=impl: jax_fpx.linear(x, w, impl=impl)
    yield "jit", lambda: jax.jit(jax_fpx.linear)(x, w)
    yield "check", w.check


@pytest.mark.parametrize(
    "case",
    ["missing_k_block", "channel_scales_with_4_columns", "scale_dtype", "data_dtype", "batch_mismatch"],
)
def test_tampered_leaves_rejected_on_every_path(w, wg, case):
    if case == "missing_k_block":
        bad = _tampered(w, data=w.data[:, :-1])
    elif case == "channel_scales_with_4_columns":  # per-channel label, grouped-looking scales
        bad = _tampered(w, scale=jnp.ones((w.scale.shape[0], 4), jnp.float32))
    elif case == "scale_dtype":
        bad = _tampered(w, scale=w.scale.astype(jnp.float16))
    elif case == "data_dtype":
        bad = _tampered(w, data=w.data.astype(jnp.int32))
    else:
        bad = _tampered(w, scale=jnp.stack([w.scale, w.scale]))
    for name, call in _every_path(bad):
        with pytest.raises(ValueError, match="do not match|wants uint32") as e:
            call()
        assert "jax_fpx.quantize" in str(e.value) or "wants" in str(e.value), name
    with pytest.raises(ValueError, match="do not match|wants uint32"):  # and at construction
        FPxWeight(bad.data, bad.scale, bad.fmt, bad.shape, bad.group_size)


def test_metadata_errors_say_what_to_fix(w):
    fmt = get_format("fp6_e3m2")
    with pytest.raises(TypeError, match=r"get_format\('fp6_e3m2'\)"):
        FPxWeight(w.data, w.scale, "fp6_e3m2", w.shape, None)
    with pytest.raises(ValueError, match="two ints"):
        FPxWeight(w.data, w.scale, fmt, (200, 48, 1), None)  # a 3-tuple is not cut to 2
    with pytest.raises(ValueError, match="non-negative"):
        FPxWeight(w.data, w.scale, fmt, (200, -48), None)
    for g in (0, 32, -64, 2.0):
        with pytest.raises(ValueError, match="multiple of 64"):
            FPxWeight(w.data, w.scale, fmt, w.shape, g)
    with pytest.raises(ValueError, match="int32"):
        FPxWeight(w.data, w.scale, fmt, w.shape, 2**31)
    with pytest.raises(ValueError, match="ebits and mbits must be >= 1"):
        jax_fpx.FPxFormat(0, 5)
    for g in (0, 32, 2**31):
        with pytest.raises(ValueError, match="group_size"):
            jax_fpx.quantize(jnp.ones((64, 16)), "fp6_e3m2", group_size=g)


def test_unflatten_checks_metadata(w):
    _, tree = jax.tree.flatten(w)
    leaves, tree = jax.tree.flatten(w)
    aux = tree.node_data()[1]
    with pytest.raises(ValueError, match="multiple of 64"):
        FPxWeight.tree_unflatten((aux[0], aux[1], 32, aux[3]), leaves)
    with pytest.raises(ValueError, match=r"layout v1, this jax_fpx reads v2.*re-quantize"):
        FPxWeight.tree_unflatten((aux[0], aux[1], aux[2], 1), leaves)


def test_split_k_beyond_k_blocks_rejected_before_launch(w):
    x = jnp.ones((2, 200), jnp.bfloat16)
    with pytest.raises(ValueError, match="k-blocks"):
        jax_fpx.linear(x, w, split_k=99)


def test_valid_weights_pass_every_path(w, wg):
    for weight in (w, wg):
        for _, call in _every_path(weight):
            out = call()
            assert out is None or (isinstance(out, tuple) or np.all(np.isfinite(np.asarray(out, np.float32))))

"""jax_fpx.linear under JAX transformations (issue 7): vmap, grad, scan, export, donation, remat.

Every check compares against ``jax_fpx.reference.linear`` or against the same op applied
slice by slice (the CPU handler is deterministic, so batched == per-slice exactly).
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fpx
from jax_fpx import reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
ON_CPU = jax.default_backend() == "cpu"  # HLO-structure checks below are about the CPU handler
cpu_only = pytest.mark.skipif(not ON_CPU, reason="inspects the CPU backend's optimized HLO")
K, N, M, B = 200, 80, 5, 3  # K, N unaligned: padded to 256 / 96


def _load(relpath, name):
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _f32(a):
    return np.asarray(jnp.asarray(a, jnp.float32))


def _ulp_close(got, want, dtype=jnp.bfloat16):
    """Within one rounding step of the activation dtype (the handler sums in another order)."""
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(_f32(got), _f32(want), rtol=2 * eps, atol=2 * eps * float(np.abs(_f32(want)).max()))


@pytest.fixture(scope="module")
def weights():
    kern = jax.random.normal(jax.random.key(0), (B, K, N), jnp.float32)
    stack = jax_fpx.quantize(kern, "fp6_e3m2", group_size=128)
    return stack, jax.tree.map(lambda t: t[0], stack)


@pytest.fixture(scope="module")
def acts():
    x = jax.random.normal(jax.random.key(1), (B, M, K), jnp.float32).astype(jnp.bfloat16)
    bias = jax.random.normal(jax.random.key(2), (B, N), jnp.float32)
    return x, bias


def _same(got, want, dtype=jnp.bfloat16):
    """Bit-exact on CPU (deterministic handler, same reduction order); on GPU the kernel's split-K
    choice depends on M (and XLA's reductions on shapes), so allow one rounding step there."""
    if ON_CPU:
        np.testing.assert_array_equal(_f32(got), _f32(want))
    else:
        _ulp_close(got, want, dtype)


def _slice(t, i):
    return jax.tree.map(lambda a: a[i], t)


def _u32_broadcasts(hlo):
    """HLO broadcast instructions producing uint32 (copies of packed weights)."""
    return re.findall(r"= u32\[[^\]]*\]\S* broadcast\(", hlo)


def _calls(fn, *args):
    """Optimized CPU HLO lines of the jax_fpx_linear custom calls."""
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return hlo, [l for l in hlo.splitlines() if 'custom_call_target="jax_fpx_linear"' in l]


# --- 1. vmap ---------------------------------------------------------------------------------
def test_vmap_over_x_folds_into_m_without_touching_weights(weights, acts):
    _, w = weights
    x, _ = acts
    f = jax.vmap(jax_fpx.linear, in_axes=(0, None))
    y = f(x, w)
    for i in range(B):
        _same(y[i], jax_fpx.linear(x[i], w))
    _ulp_close(y, jax.vmap(reference.linear, in_axes=(0, None))(x, w))
    if not ON_CPU:
        return
    hlo, calls = _calls(f, x, w)
    assert len(calls) == 1
    # one GEMM over B*M rows; the packed weights go in as they are (no batch axis, no copy)
    assert f"bf16[{B * M},{N}]" in calls[0].split("custom-call(")[0]
    d = "u32[" + ",".join(map(str, w.data.shape)) + "]"
    assert d in calls[0].split("operand_layout_constraints")[1]
    assert not _u32_broadcasts(hlo)


@pytest.mark.parametrize("in_axes", [(None, 0), (0, 0), (0, 0, 0), (None, 0, None)])
def test_vmap_over_stacked_weights(weights, acts, in_axes):
    stack, _ = weights
    x, bias = acts
    args = (x if in_axes[0] == 0 else x[0], stack) + ((bias if in_axes[2] == 0 else bias[0],) if len(in_axes) == 3 else ())
    f = jax.vmap(jax_fpx.linear, in_axes=in_axes)
    y = f(*args)
    assert y.shape == (B, M, N)
    for i in range(B):
        a_i = [_slice(a, i) if ax == 0 else a for a, ax in zip(args, in_axes)]
        _same(y[i], jax_fpx.linear(*a_i))
    _ulp_close(y, jax.vmap(reference.linear, in_axes=in_axes)(*args))
    if not ON_CPU:
        return
    hlo, calls = _calls(f, *args)
    assert len(calls) == 1 and "while" not in hlo  # one batched call, not a loop
    ds = "u32[" + ",".join(map(str, stack.data.shape)) + "]"  # the stack itself is the operand
    assert ds in calls[0].split("operand_layout_constraints")[1]
    assert not _u32_broadcasts(hlo)


def test_vmap_nested_and_unusual_axes(weights, acts):
    stack, w = weights
    x, bias = acts
    xx = jnp.stack([x, x[::-1]])  # (2, B, M, K)
    # outer over x, inner over (x, w)
    f = jax.vmap(jax.vmap(jax_fpx.linear, (0, 0)), (0, None))
    _ulp_close(f(xx, stack), jax.vmap(jax.vmap(reference.linear, (0, 0)), (0, None))(xx, stack))
    # outer over w, inner over x (folded)
    f = jax.vmap(jax.vmap(jax_fpx.linear, (0, None)), (None, 0))
    _ulp_close(f(x, stack), jax.vmap(jax.vmap(reference.linear, (0, None)), (None, 0))(x, stack))
    # x mapped along a middle axis, and the bias alone mapped (activations broadcast, not weights)
    xt = jnp.swapaxes(x, 0, 1)  # (M, B, K)
    _ulp_close(jax.vmap(jax_fpx.linear, (1, None))(xt, w), jax.vmap(reference.linear, (1, None))(xt, w))
    _ulp_close(jax.vmap(jax_fpx.linear, (None, None, 0))(x[0], w, bias), jax.vmap(reference.linear, (None, None, 0))(x[0], w, bias))
    # outer bias, inner weights: would need copies of the weights -> runs as a loop instead
    f = jax.vmap(jax.vmap(jax_fpx.linear, (None, 0, None)), (None, None, 0))
    _ulp_close(f(x[0], stack, bias), jax.vmap(jax.vmap(reference.linear, (None, 0, None)), (None, None, 0))(x[0], stack, bias))
    hlo, _ = _calls(f, x[0], stack, bias)
    assert not _u32_broadcasts(hlo)


def test_stacked_weight_outside_vmap_is_an_error(weights, acts):
    stack, _ = weights
    with pytest.raises(ValueError, match="stack of"):
        jax_fpx.linear(acts[0][0], stack)


# --- 2. grad ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("lead", [(M,), (2, 3)])
def test_grad_x_and_bias_exact(weights, dtype, lead):
    _, w = weights
    x = jax.random.normal(jax.random.key(3), (*lead, K), jnp.float32).astype(dtype)
    bias = jax.random.normal(jax.random.key(4), (N,), jnp.float32)
    ct = jax.random.normal(jax.random.key(5), (*lead, N), jnp.float32)

    def loss(f):
        return lambda x, b: jnp.sum(f(x, w, b).astype(jnp.float32) * ct)

    gx, gb = jax.jit(jax.grad(loss(jax_fpx.linear), argnums=(0, 1)))(x, bias)
    rx, rb = jax.jit(jax.grad(loss(reference.linear), argnums=(0, 1)))(x, bias)
    assert gx.dtype == dtype and gb.dtype == jnp.float32
    _same(gx, rx, dtype)
    _same(gb, rb, jnp.float32)


def test_grad_wrt_weights_float0_codes_and_true_scale_grad(weights, acts):
    _, w = weights
    x, bias = acts

    def loss(f):
        return lambda w: jnp.sum(f(x[0], w, bias[0]).astype(jnp.float32) ** 2)

    g = jax.grad(loss(jax_fpx.linear), allow_int=True)(w)
    r = jax.grad(loss(reference.linear), allow_int=True)(w)
    assert isinstance(g, jax_fpx.FPxWeight)
    assert g.data.dtype == jax.dtypes.float0 and g.data.shape == w.data.shape
    assert g.scale.shape == w.scale.shape and float(jnp.abs(g.scale).max()) > 0
    np.testing.assert_allclose(_f32(g.scale), _f32(r.scale), rtol=2e-2, atol=1e-3 * float(jnp.abs(r.scale).max()))


def test_frozen_base_backward_does_no_scale_work(weights, acts):
    _, w = weights
    x, _ = acts
    loss = lambda x, w: jnp.sum(jax_fpx.linear(x, w).astype(jnp.float32))  # noqa: E731
    count = lambda jx: str(jx).count("dot_general")  # noqa: E731
    only_x = count(jax.make_jaxpr(jax.grad(loss))(x[0], w))
    with_w = count(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1), allow_int=True))(x[0], w))
    assert with_w == only_x + 1  # the scale gradient's g^T x only when the scales are differentiated


def test_grad_of_vmap_and_vmap_of_grad(weights, acts):
    stack, _ = weights
    x, _ = acts
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w).astype(jnp.float32)))  # noqa: E731
    g = jax.grad(lambda x, w: loss(jax.vmap(jax_fpx.linear))(x, w))(x, stack)
    r = jax.grad(lambda x, w: loss(jax.vmap(reference.linear))(x, w))(x, stack)
    _ulp_close(g, r)
    g = jax.vmap(jax.grad(loss(jax_fpx.linear)))(x, stack)
    r = jax.vmap(jax.grad(loss(reference.linear)))(x, stack)
    _ulp_close(g, r)


def test_lora_one_optax_step_trains_adapters_and_leaves_base():
    optax = pytest.importorskip("optax")
    lora = _load("examples/lora.py", "lora_example")
    base, adapters = lora.init(jax.random.key(0), sizes=(128, 96, 64), rank=4)
    x = jax.random.normal(jax.random.key(1), (8, 128), jnp.float32)
    target = jax.random.normal(jax.random.key(2), (8, 64), jnp.float32)
    base_before = jax.tree.map(np.asarray, base)
    opt = optax.adam(1e-2)
    step = lora.make_step(opt)
    state = opt.init(adapters)
    new, state, loss0 = step(adapters, state, base, x, target)
    for old_l, new_l in zip(adapters, new):  # B starts at 0, so step 1 moves B (A follows)
        assert not np.array_equal(np.asarray(old_l["B"]), np.asarray(new_l["B"]))
    jax.tree.map(np.testing.assert_array_equal, base_before, jax.tree.map(np.asarray, base))
    new2, state, loss1 = step(new, state, base, x, target)
    assert not np.array_equal(np.asarray(new[0]["A"]), np.asarray(new2[0]["A"]))
    _, _, loss2 = step(new2, state, base, x, target)
    assert np.isfinite(float(loss0)) and float(loss2) < float(loss0)
    # the adapters' gradient through the op matches the one through the reference path
    g = jax.grad(lora.loss_fn)(new, base, x, target)
    ref = lambda h, w, b=None: reference.linear(h, w, b)  # noqa: E731
    r = jax.grad(lora.loss_fn)(new, base, x, target, linear=ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-3), g, r)


# --- 3. scan over stacked layers -------------------------------------------------------------
def _square_stack(n_layers=4, d=128, group_size=None):
    kern = jax.random.normal(jax.random.key(7), (n_layers, d, d), jnp.float32) / d**0.5
    return jax_fpx.quantize(kern, "fp6_e3m2", group_size=group_size)


def test_lax_scan_over_stacked_weights_matches_loop():
    ws = _square_stack()
    x = jax.random.normal(jax.random.key(8), (M, 128), jnp.float32).astype(jnp.bfloat16)
    body = lambda h, w: (jnp.tanh(jax_fpx.linear(h, w)), None)  # noqa: E731
    y = jax.jit(lambda h, ws: jax.lax.scan(body, h, ws)[0])(x, ws)
    h = x
    for i in range(4):
        h = jnp.tanh(jax_fpx.linear(h, _slice(ws, i)))
    np.testing.assert_array_equal(_f32(y), _f32(h))

    def loss(f):
        return lambda h, ws: jnp.sum(jax.lax.scan(lambda h, w: (jnp.tanh(f(h, w)), None), h, ws)[0].astype(jnp.float32))

    _ulp_close(jax.jit(jax.grad(loss(jax_fpx.linear)))(x, ws), jax.grad(loss(reference.linear))(x, ws))


def test_nn_scan_over_fpxdense():
    nn = pytest.importorskip("flax.linen")
    from jax_fpx.flax import FPxDense

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            return jnp.tanh(FPxDense(128, use_bias=True)(h)), None

    Stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
    x = jax.random.normal(jax.random.key(9), (M, 128), jnp.float32).astype(jnp.bfloat16)
    params = Stack().init(jax.random.key(10), x, None)
    kern = params["params"]["FPxDense_0"]["kernel"]
    assert isinstance(kern, jax_fpx.FPxWeight) and kern.batch_shape == (3,)
    y, _ = jax.jit(Stack().apply)(params, x, None)
    h = x
    for i in range(3):
        p = jax.tree.map(lambda t: t[i], params["params"]["FPxDense_0"])
        h = jnp.tanh(reference.linear(h, p["kernel"], p["bias"]))
    _ulp_close(y, h)


@cpu_only
def test_scan_hlo_inspection_on_cpu():
    """CPU: XLA materializes each layer's dynamic slice before the custom call (a copy);
    separate per-layer weights feed it directly. (GPU: see benchmarks/scan_bench.py.)"""
    bench = _load("benchmarks/scan_bench.py", "scan_bench")
    ws = _square_stack(3)
    x = jnp.ones((M, 128), jnp.bfloat16)
    scan_hlo = jax.jit(lambda h, ws: jax.lax.scan(lambda h, w: (jax_fpx.linear(h, w), None), h, ws)[0]).lower(x, ws).compile().as_text()
    feeds = bench.custom_call_feeds(scan_hlo)
    assert len(feeds) == 1
    assert feeds[0]["operands"][0] == "direct" and feeds[0]["operands"][1].startswith("copy")
    assert bench.weights_copied(scan_hlo)
    layers = [_slice(ws, i) for i in range(3)]

    def loop(h, ls):
        for w in ls:
            h = jax_fpx.linear(h, w)
        return h

    loop_hlo = jax.jit(loop).lower(x, layers).compile().as_text()
    assert len(bench.custom_call_feeds(loop_hlo)) == 3 and not bench.weights_copied(loop_hlo)


# --- 5. eval_shape, export, donation, remat --------------------------------------------------
def test_eval_shape(weights):
    _, w = weights
    abstract_w = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), w)
    out = jax.eval_shape(jax_fpx.linear, jax.ShapeDtypeStruct((2, 7, K), jnp.float16), abstract_w)
    assert out.shape == (2, 7, N) and out.dtype == jnp.float16


def test_export_round_trip(weights, acts):
    pytest.importorskip("flatbuffers")
    from jax import export

    _, w = weights
    x, bias = acts
    f = jax.jit(jax_fpx.linear)
    with pytest.raises(ValueError, match="custom call"):
        export.export(f)(x[0], w, bias[0]).serialize()
    exp = export.export(f, disabled_checks=jax_fpx.ops.export_disabled_checks(), platforms=("cpu", "cuda"))(
        x[0], w, bias[0]
    )
    back = export.deserialize(exp.serialize())
    np.testing.assert_array_equal(_f32(back.call(x[0], w, bias[0])), _f32(f(x[0], w, bias[0])))
    # a function returning an FPxWeight (its pytree serializes) and a symbolic batch size
    exp2 = export.export(
        jax.jit(lambda x, w: (jax_fpx.linear(x, w), w)), disabled_checks=jax_fpx.ops.export_disabled_checks()
    )(jax.ShapeDtypeStruct(export.symbolic_shape("b, " + str(K)), jnp.bfloat16), w)
    back2 = export.deserialize(exp2.serialize())
    y, w2 = back2.call(x[1], w)
    assert isinstance(w2, jax_fpx.FPxWeight) and w2.shape == w.shape and w2.group_size == w.group_size
    np.testing.assert_array_equal(_f32(y), _f32(jax_fpx.linear(x[1], w)))


def test_donation(weights):
    _, w = weights
    wsq = jax_fpx.quantize(jax.random.normal(jax.random.key(11), (128, 128)), "fp6_e2m3")
    x = jax.random.normal(jax.random.key(12), (M, 128), jnp.float32).astype(jnp.bfloat16)
    want = jax_fpx.linear(x, wsq)
    f = jax.jit(jax_fpx.linear, donate_argnums=(0,))
    xd = jnp.array(x)
    y = f(xd, wsq)
    assert xd.is_deleted()
    np.testing.assert_array_equal(_f32(y), _f32(want))
    assert "input_output_alias" in f.lower(x, wsq).compile().as_text()
    # donating the weights is allowed too (nothing aliases them; they are consumed)
    w_copy = jax.tree.map(jnp.array, w)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        y = jax.jit(jax_fpx.linear, donate_argnums=(1,))(jnp.ones((2, K), jnp.bfloat16), w_copy)
    np.testing.assert_array_equal(_f32(y), _f32(jax_fpx.linear(jnp.ones((2, K), jnp.bfloat16), w)))


@pytest.mark.parametrize(
    "policy", [None, "nothing_saveable", "dots_saveable", "everything_saveable"]
)
def test_checkpoint_remat(weights, policy):
    _, w = weights
    w2 = jax_fpx.quantize(jax.random.normal(jax.random.key(13), (N, K)))
    x = jax.random.normal(jax.random.key(14), (M, K), jnp.float32).astype(jnp.bfloat16)

    def block(f):
        def g(h):
            return f(jnp.tanh(f(h, w).astype(jnp.float32)).astype(jnp.bfloat16), w2)

        return g

    pol = None if policy is None else getattr(jax.checkpoint_policies, policy)
    loss = lambda f, remat: lambda h: jnp.sum((jax.checkpoint(block(f), policy=pol) if remat else block(f))(h).astype(jnp.float32))  # noqa: E731
    g = jax.jit(jax.grad(loss(jax_fpx.linear, True)))(x)
    np.testing.assert_array_equal(_f32(g), _f32(jax.jit(jax.grad(loss(jax_fpx.linear, False)))(x)))
    _ulp_close(g, jax.grad(loss(reference.linear, False))(x))


def test_forward_mode_is_a_clear_error(weights, acts):
    _, w = weights
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: jax_fpx.linear(x, w), (acts[0][0],), (acts[0][0],))

"""Eager calls (notebooks, debugging) reuse compiled code and do not grow memory (issue 16, item 1).

Before: each eager ``linear`` traced a fresh ``jit(cond)`` from the custom_vmap around
``lax.platform_dependent`` (~40 ms and ~1.5 MiB per call, never freed). The tests count XLA
compilations (JAX's monitoring events) and resident memory, never wall time: per-call timings
live in ``python -m jax_fpx bench``.
"""

import gc

import jax
import jax.numpy as jnp
import pytest

import jax_fpx
from jax_fpx.flax import FPxDense

CALLS = 1000


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


_COMPILES = []


def _on_event(name, *_args, **_kw):
    if "backend_compile" in name:
        _COMPILES.append(name)


jax.monitoring.register_event_duration_secs_listener(_on_event)


def _growth_and_compiles(fn, calls=CALLS):
    """(RSS growth in MiB, XLA compilations) over `calls` eager calls after a warm-up."""
    for _ in range(20):  # warm-up: compile, caches
        jax.block_until_ready(fn())
    gc.collect()
    r0, c0 = _rss_mib(), len(_COMPILES)
    for _ in range(calls):
        jax.block_until_ready(fn())
    compiles = len(_COMPILES) - c0
    gc.collect()
    return _rss_mib() - r0, compiles


@pytest.fixture(scope="module")
def small():
    w = jax_fpx.quantize(jax.random.normal(jax.random.key(0), (64, 16)))
    return w, jnp.ones((4, 64), jnp.bfloat16), jnp.linspace(-1, 1, 16)


@pytest.mark.parametrize("impl", ["auto", "xla", "reference"])
def test_eager_linear_flat_memory_no_recompile(small, impl):
    w, x, b = small
    grow, compiles = _growth_and_compiles(lambda: jax_fpx.linear(x, w, b, impl=impl))
    assert grow <= 5.0 and compiles == 0, (grow, compiles)


def test_eager_dequantize_flat_memory_no_recompile(small):
    w, _, _ = small
    grow, compiles = _growth_and_compiles(lambda: jax_fpx.dequantize(w))
    assert grow <= 5.0 and compiles == 0, (grow, compiles)


def test_eager_fpxdense_apply_flat_memory(small):
    _, x, _ = small
    layer = FPxDense(16)
    params = layer.init(jax.random.key(0), x)
    grow, compiles = _growth_and_compiles(lambda: layer.apply(params, x), calls=300)
    assert grow <= 5.0 and compiles == 0, (grow, compiles)


def test_compile_counter_sees_compiles():
    """The counter above is live: a function never seen before compiles once."""
    c0 = len(_COMPILES)
    jax.block_until_ready(jax.jit(lambda v: v * 3.0 + 1.0)(jnp.ones(7)))
    assert len(_COMPILES) - c0 >= 1

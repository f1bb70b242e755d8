"""Platform dispatch on CPU: impl="auto" follows the measured table (jax_fpx.dispatch), and a
GPU process whose extension lacks the CUDA handler is told so, once (issue 16, item 6)."""

import functools
import warnings

import jax
import jax.numpy as jnp
import pytest

import jax_fpx
from jax_fpx import _ffi, dispatch


def _uses_handler(k, n, m):
    w = jax_fpx.quantize(jnp.ones((k, n)))
    x = jax.ShapeDtypeStruct((m, k), jnp.bfloat16)
    hlo = jax.jit(functools.partial(jax_fpx.linear, impl="auto")).lower(x, w).compile().as_text()
    return 'custom_call_target="jax_fpx_linear"' in hlo


@pytest.mark.parametrize("k,n", [(384, 384), (384, 1536), (1536, 384)])  # python -m jax_fpx's MiniLM shapes
def test_cpu_auto_runs_the_handler_where_it_measured_faster(k, n):
    assert _uses_handler(k, n, 1) and _uses_handler(k, n, 16)
    assert not _uses_handler(k, n, 256)  # dequantize + XLA's dot measured faster there


def test_cpu_table_is_ordered():
    sizes = [s for s, _ in dispatch.CPU_KERNEL_MAX_M_BY_SIZE]
    assert sizes == sorted(sizes) and dispatch.cpu_kernel_max_m(10**15) >= dispatch.cpu_kernel_max_m(1)


def test_kernel_formats_come_from_the_extension():
    assert (3, 2) in _ffi.kernel_formats("cpu")
    table = _ffi._module().kernel_formats()
    assert _ffi.kernel_formats("cuda") == frozenset(tuple(f) for f in table.get("cuda", ()))


def test_gpu_process_without_cuda_handler_warns_once(monkeypatch):
    class NoCuda:  # the extension as built where nvcc was not found
        def __init__(self, real):
            self.real = real

        def registrations(self):
            return {k: v for k, v in self.real.registrations().items() if not k.endswith("_cuda")}

    real = _ffi._module()
    monkeypatch.setattr(_ffi, "_module", lambda: NoCuda(real))
    monkeypatch.setattr(_ffi, "_gpu_present", lambda: True)
    _ffi.register.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert _ffi.register() is False
            assert _ffi.register() is False  # once per process
        msgs = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
        assert len(msgs) == 1 and "without the CUDA handler" in msgs[0] and "dequantize + XLA dot" in msgs[0]
    finally:
        _ffi.register.cache_clear()
        monkeypatch.undo()
        _ffi.register()

"""Flax nnx: ``FPxLinear`` (counterpart of ``nnx.Linear``) and in-place model conversion."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from ..formats import FormatLike, get_format
from ..quantize import quantize
from ..weight import FPxWeight
from ._op import fpx_matmul
from .convert import DEFAULT_EXCLUDE, Patterns, _compile

__all__ = ["FPxLinear", "quantize_nnx"]

default_kernel_init = nnx.initializers.lecun_normal()


class FPxLinear(nnx.Module):
    """``nnx.Linear`` with an :class:`FPxWeight` kernel.

    Same constructor as ``nnx.Linear`` (``in_features``, ``out_features``, ``use_bias``,
    ``dtype``, ``param_dtype``, ``precision`` (accepted, ignored), ``kernel_init``,
    ``bias_init``, ``rngs``) plus ``fmt``, ``group_size``, ``impl`` and ``act_dtype``.
    ``self.kernel`` is an ``nnx.Param`` holding the FPxWeight, ``self.bias`` a dense
    ``nnx.Param`` (or ``None``). Dtype policy as :class:`jax_fpx.flax.FPxDense`: compute dtype
    is ``dtype`` or the input's; float32 compute runs the op on bfloat16 (``act_dtype``)
    activations and casts back. Build one from an existing layer with :meth:`from_linear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Optional[Any] = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init=default_kernel_init,
        bias_init=nnx.initializers.zeros_init(),
        fmt: FormatLike = "fp6_e3m2",
        group_size: Optional[int] = None,
        impl: str = "auto",
        act_dtype: Optional[Any] = None,
        rngs: Optional[nnx.Rngs] = None,
        _kernel: Optional[FPxWeight] = None,
        _bias: Optional[jax.Array] = None,
    ):
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.use_bias = bool(use_bias)
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.fmt = get_format(fmt)
        self.group_size = group_size
        self.impl = impl
        self.act_dtype = act_dtype
        if _kernel is None:
            if rngs is None:
                raise TypeError("FPxLinear needs rngs=nnx.Rngs(...) to initialize its kernel")
            dense = kernel_init(rngs.params(), (self.in_features, self.out_features), param_dtype)
            _kernel = quantize(dense, self.fmt, group_size=group_size)
            if use_bias:
                _bias = bias_init(rngs.params(), (self.out_features,), param_dtype)
        if _kernel.shape != (self.in_features, self.out_features):
            raise ValueError(f"kernel {_kernel} does not match ({self.in_features}, {self.out_features})")
        self.kernel = nnx.Param(_kernel)
        self.bias = nnx.Param(_bias) if use_bias else None

    @classmethod
    def from_linear(
        cls,
        linear: nnx.Linear,
        fmt: FormatLike = "fp6_e3m2",
        *,
        group_size: Optional[int] = None,
        impl: str = "auto",
        act_dtype: Optional[Any] = None,
    ) -> "FPxLinear":
        """Quantize an ``nnx.Linear`` (its kernel and settings; bias kept dense)."""
        kernel = linear.kernel.get_value()
        bias = linear.bias.get_value() if linear.bias is not None else None
        return cls(
            linear.in_features,
            linear.out_features,
            use_bias=bias is not None,
            dtype=linear.dtype,
            param_dtype=linear.param_dtype,
            precision=linear.precision,
            fmt=fmt,
            group_size=group_size,
            impl=impl,
            act_dtype=act_dtype,
            _kernel=quantize(kernel, fmt, group_size=group_size),
            _bias=bias,
        )

    def __call__(self, inputs: jax.Array) -> jax.Array:
        bias = self.bias.get_value() if self.bias is not None else None
        return fpx_matmul(
            inputs, self.kernel.get_value(), bias, dtype=self.dtype, act_dtype=self.act_dtype, impl=self.impl
        )


def _is_attr(parent: Any, key: Any) -> bool:
    return isinstance(parent, nnx.Module) and isinstance(key, str) and key in vars(parent)


def _child(parent: Any, key: Any) -> Any:
    return getattr(parent, key) if _is_attr(parent, key) else parent[key]


def _set_child(parent: Any, key: Any, value: Any) -> None:
    if _is_attr(parent, key):
        setattr(parent, key, value)
    else:
        parent[key] = value


def quantize_nnx(
    model: nnx.Module,
    fmt: FormatLike = "fp6_e3m2",
    *,
    group_size: Optional[int] = None,
    include: Patterns = None,
    exclude: Patterns = DEFAULT_EXCLUDE,
    impl: str = "auto",
    act_dtype: Optional[Any] = None,
) -> nnx.Module:
    """Replace the ``nnx.Linear`` layers of ``model`` by :class:`FPxLinear`, in place.

    ``include`` / ``exclude`` are regexes searched in the module path (``"blocks/0/mlp/up"``);
    by default every Linear except a path containing ``lm_head`` is converted. Layers are
    quantized one at a time on the device where their kernel lives.

    Returns ``model`` (the same object, modified), or the new :class:`FPxLinear` when
    ``model`` itself is an ``nnx.Linear``.
    """
    if isinstance(model, nnx.Linear):
        return FPxLinear.from_linear(model, fmt, group_size=group_size, impl=impl, act_dtype=act_dtype)
    inc, exc = _compile(include), _compile(exclude)
    targets = []
    for path, mod in nnx.iter_modules(model):
        if not path or not isinstance(mod, nnx.Linear):
            continue
        s = "/".join(str(p) for p in path)
        if inc and not any(p.search(s) for p in inc):
            continue
        if any(p.search(s) for p in exc):
            continue
        targets.append(path)
    for path in targets:
        parent = model
        for key in path[:-1]:
            parent = _child(parent, key)
        lin = _child(parent, path[-1])
        new = FPxLinear.from_linear(lin, fmt, group_size=group_size, impl=impl, act_dtype=act_dtype)
        jax.block_until_ready((new.kernel.get_value().data, new.kernel.get_value().scale))
        _set_child(parent, path[-1], new)
    return model

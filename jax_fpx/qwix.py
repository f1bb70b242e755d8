"""Qwix bridge: name FPx formats in Qwix quantization rules (optional extra ``jax_fpx[qwix]``).

    import qwix, jax_fpx.qwix

    provider = jax_fpx.qwix.FPxProvider([
        qwix.QuantizationRule(module_path=".*lm_head.*"),                      # left dense
        qwix.QuantizationRule(module_path=".*mlp.*", weight_qtype="fp6_e3m2"),
        qwix.QuantizationRule(module_path=".*attn.*", weight_qtype="fp5_e2m2", tile_size=64),
    ])
    qmodel = qwix.quantize_model(model, provider)                  # linen; nnx: (model, provider, x)
    abstract = jax.eval_shape(qmodel.init, key, x)["params"]
    qparams = jax_fpx.qwix.quantize_params(params, abstract)       # float params -> FPx
    y = qmodel.apply({"params": qparams}, x)                        # matching kernels run jax_fpx.linear

How it plugs into Qwix: :class:`FPxProvider` is a :class:`qwix.PtqProvider` (public Qwix API) that
overrides the ops Qwix intercepts in an unmodified model (``jax.lax.dot_general``,
``jax.numpy.einsum``, and through ``jnp.dot`` the same ``dot_general``) plus the three helpers
that see the kernel on its way there (``flax.linen.Module.param``, Flax's ``promote_dtype``,
``jnp.asarray``). Rules are matched by Qwix itself (``module_path`` regex, ``op_names``, first
match wins). A rule whose ``weight_qtype`` names an FPx format (``"fp6_e3m2"``, any
``"fp<b>_e<E>m<M>"`` that :func:`jax_fpx.get_format` knows, or an :class:`jax_fpx.FPxFormat`)
is served here: the kernel the op receives is quantized with :func:`jax_fpx.quantize`, stored in
place of the param as an :class:`FPxKernel`, and the op runs :func:`jax_fpx.linear` (weight-only:
activations stay in their dtype; float32 activations go to the kernel as ``act_dtype``,
bfloat16 by default, and the result comes back in float32, as in :mod:`jax_fpx.flax`). Every
other rule (``"int8"``, ``"nf4"``, ``jnp.float8_e4m3fn``, ...) is Qwix's own PTQ, so one rule list
can mix both.

Rule fields for FPx rules: ``weight_qtype`` (the format), ``tile_size`` (``None``: one scale per
output channel; an int multiple of 64, or ``1/n`` of the contracted size, as a group size),
``weight_calibration_method`` (``"absmax"``, default, or ``"scale_search"`` for
``jax_fpx.quantize(..., scale_search=True)``), ``act_qtype`` must be ``None`` (weight-only).

Qwix internals used (pinned range in the ``qwix`` extra): ``qwix._src.utils.flax_util``'s
``find_param`` / ``get_current_module`` (which param of the current module an operand is) --
the same helpers Qwix's own providers use.
"""

from __future__ import annotations

import math
import re
import string
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

try:
    import qwix
    from flax import linen as nn
    from flax import nnx
    from qwix._src.providers import ptq as _qwix_ptq
    from qwix._src.utils import flax_util as _qwix_flax_util
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "jax_fpx.qwix needs Qwix and Flax: pip install 'jax_fpx[qwix]' (or pip install qwix)"
    ) from err

from . import FPxFormat, FPxWeight, dequantize, get_format, linear, quantize  # the public API only

__all__ = ["FPxProvider", "FPxKernel", "quantize_params", "fpx_format_of"]

_OP_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_FPX_NAME = re.compile(r"^fp\d+_e\d+m\d+$")
_CALIBRATIONS = {"absmax": False, "scale_search": True}


def fpx_format_of(qtype: Any) -> Optional[FPxFormat]:
    """The FPx format a rule's ``weight_qtype`` names, or ``None`` if it is a Qwix type.

    FPx: an :class:`jax_fpx.FPxFormat`, or a string ``"fp<bits>_e<E>m<M>"`` (``"fp6_e3m2"``,
    ``"fp5_e2m2"``, ``"fp4_e2m1"``, ...). Anything else (``"int8"``, ``"nf4"``, ``"mxfp4"``,
    ``jnp.float8_e4m3fn``, ...) is left to Qwix.
    """
    if isinstance(qtype, FPxFormat):
        return qtype
    if isinstance(qtype, str) and _FPX_NAME.match(qtype.lower()):
        return get_format(qtype)  # raises with the known names on a bad bit count
    return None


# ------------------------------------------------------------------------------------------
# FPxKernel: the param that replaces a quantized kernel
# ------------------------------------------------------------------------------------------


@jax.tree_util.register_pytree_with_keys_class
class FPxKernel:
    """A Flax kernel param quantized by :class:`FPxProvider`.

    ``weight`` is an :class:`jax_fpx.FPxWeight` (the only pytree child). The kernel of shape
    ``shape`` is stored transposed to ``perm`` = (batch axes, contracted axes, free axes) of the
    op that consumes it and flattened to ``(*batch, prod(contracted), prod(free))``: for
    ``nn.Dense`` / ``nnx.Linear`` that is the kernel itself, ``(in, out)``; for a DenseGeneral /
    Einsum kernel it is the same flat layout ``jax_fpx.flax.quantize_params(dense_general=...)``
    uses. Batch axes (e.g. per-expert kernels ``"ebd,edf->ebf"``) are stacked weights.

    Static: ``shape``, ``dtype`` (the kernel's dtype as the op saw it), ``perm``, ``n_batch``,
    ``n_contract``, ``scale_search`` -- enough for :func:`quantize_params` to requantize a
    float kernel the same way from an abstract (``jax.eval_shape``) tree. Looks like an array
    to model code (``shape``, ``ndim``, ``dtype``, ``kernel[...]``), so ``nnx.Linear`` and
    ``nn.Einsum`` run unmodified.
    """

    __slots__ = ("weight", "shape", "dtype", "perm", "n_batch", "n_contract", "scale_search")

    def __init__(self, weight, shape, dtype, perm, n_batch, n_contract, scale_search=False):
        self.weight = weight
        self.shape = tuple(int(d) for d in shape)
        self.dtype = jnp.dtype(dtype)
        self.perm = tuple(int(a) for a in perm)
        self.n_batch = int(n_batch)
        self.n_contract = int(n_contract)
        self.scale_search = bool(scale_search)

    def _aux(self):
        return (self.shape, self.dtype, self.perm, self.n_batch, self.n_contract, self.scale_search)

    def tree_flatten_with_keys(self):
        return ((jax.tree_util.GetAttrKey("weight"), self.weight),), self._aux()

    def tree_flatten(self):
        return (self.weight,), self._aux()

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.weight = children[0]
        obj.shape, obj.dtype, obj.perm, obj.n_batch, obj.n_contract, obj.scale_search = aux
        return obj

    # --- array-like surface for model code ----------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def fmt(self) -> FPxFormat:
        return self.weight.fmt

    @property
    def group_size(self) -> Optional[int]:
        return self.weight.group_size

    def __getitem__(self, key):
        if key is Ellipsis:  # nnx: ``self.kernel[...]``
            return self
        raise TypeError(f"{self!r} cannot be indexed (only kernel[...]); call .dequantize() for a dense kernel")

    def astype(self, dtype):
        return self  # dtype policy is the op's; promote_dtype is intercepted anyway

    def reshape(self, *shape):
        shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else tuple(shape)
        if shape != self.shape:
            raise ValueError(
                f"{self!r} cannot be reshaped to {shape}: FPx kernels are used in the shape they were quantized in"
            )
        return self

    def __repr__(self) -> str:
        g = "" if self.group_size is None else f", group_size={self.group_size}"
        return f"FPxKernel({self.fmt.name}, shape={self.shape}{g})"

    # --- conversions ----------------------------------------------------------------------------
    @property
    def free_axes(self) -> tuple[int, ...]:
        return self.perm[self.n_batch + self.n_contract :]

    def dequantize(self, dtype: Any = None) -> jax.Array:
        """The kernel back in its original shape (``dtype`` default: ``self.dtype``)."""
        dtype = self.dtype if dtype is None else dtype
        w = dequantize(self.weight, dtype)  # (*lead, *batch, K, N)
        lead = w.shape[: w.ndim - 2 - self.n_batch]
        w = jnp.reshape(w, lead + tuple(self.shape[a] for a in self.perm))
        inv = np.argsort(self.perm)
        return jnp.transpose(w, tuple(range(len(lead))) + tuple(len(lead) + int(a) for a in inv))

    def requantize(self, kernel: jax.Array) -> "FPxKernel":
        """Quantize a float ``kernel`` of shape ``(*stack, *self.shape)`` the way this one was."""
        return _quantize_kernel(
            jnp.asarray(kernel, self.dtype),
            self.perm,
            self.n_batch,
            self.n_contract,
            self.fmt,
            self.group_size,
            self.scale_search,
        )


def _quantize_kernel(kernel, perm, n_batch, n_contract, fmt, group_size, scale_search) -> FPxKernel:
    """Quantize ``kernel`` (``(*stack, *shape)``, ``len(shape) == len(perm)``) into an FPxKernel."""
    lead = kernel.ndim - len(perm)
    if lead < 0:
        raise ValueError(f"kernel of shape {kernel.shape} has fewer axes than the quantized layout {perm}")
    shape = kernel.shape[lead:]
    t = jnp.transpose(kernel, tuple(range(lead)) + tuple(lead + a for a in perm))
    b = tuple(shape[a] for a in perm[:n_batch])
    k = math.prod(shape[a] for a in perm[n_batch : n_batch + n_contract])
    n = math.prod(shape[a] for a in perm[n_batch + n_contract :])
    t = jnp.reshape(t, kernel.shape[:lead] + b + (k, n))
    w = quantize(t, fmt, group_size=group_size, scale_search=True if scale_search else None)
    return FPxKernel(w, shape, kernel.dtype, perm, n_batch, n_contract, scale_search)


# ------------------------------------------------------------------------------------------
# The FPx contraction
# ------------------------------------------------------------------------------------------


def _fpx_matmul(x: jax.Array, w: FPxWeight, impl: str, act_dtype: Any) -> jax.Array:
    """``x @ w`` over the last axis of ``x``; bf16/fp16 in -> same out, other floats via ``act_dtype``."""
    if x.dtype in _OP_DTYPES:
        return linear(x, w, impl=impl)
    out = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(jnp.float32)
    op_dt = jnp.dtype(jnp.bfloat16 if act_dtype is None else act_dtype)
    if op_dt not in _OP_DTYPES:
        raise ValueError(f"act_dtype must be bfloat16 or float16, got {op_dt}")
    return linear(x.astype(op_dt), w, impl=impl).astype(out)


def _fpx_dot_general(x, fk: FPxKernel, x_contract, w_contract, x_batch, w_batch, *, impl, act_dtype, where):
    """``lax.dot_general(x, kernel, ((x_contract, w_contract), (x_batch, w_batch)))`` on an FPx kernel.

    Output axes as ``lax.dot_general``: batch (in the given order), free axes of ``x``, free
    axes of the kernel (ascending).
    """
    x_contract, w_contract = [a % x.ndim for a in x_contract], [a % fk.ndim for a in w_contract]
    x_batch, w_batch = [a % x.ndim for a in x_batch], [a % fk.ndim for a in w_batch]
    stored_b = fk.perm[: fk.n_batch]
    stored_c = fk.perm[fk.n_batch : fk.n_batch + fk.n_contract]
    if sorted(w_batch) != sorted(stored_b) or sorted(w_contract) != sorted(stored_c):
        raise NotImplementedError(
            f"{where}: {fk!r} was quantized for contracting kernel axes {stored_c} (batch {stored_b}) "
            f"but this op contracts {tuple(w_contract)} (batch {tuple(w_batch)}); a kernel used in two "
            "different contractions cannot share one FPx layout -- leave it dense with a rule "
            "weight_qtype=None for this module"
        )
    if len(fk.weight.batch_shape) != fk.n_batch:
        raise ValueError(
            f"{where}: {fk!r} still has stacked (scan) axes {fk.weight.batch_shape}; use it inside the scan"
        )
    to_x_b = dict(zip(w_batch, x_batch))
    to_x_c = dict(zip(w_contract, x_contract))
    xb = [to_x_b[a] for a in stored_b]
    xc = [to_x_c[a] for a in stored_c]
    x_free = [a for a in range(x.ndim) if a not in xb and a not in xc]
    for wa, xa in list(zip(w_batch, x_batch)) + list(zip(w_contract, x_contract)):
        if fk.shape[wa] != x.shape[xa]:
            raise ValueError(f"{where}: x axis {xa} has size {x.shape[xa]} but {fk!r} axis {wa} has {fk.shape[wa]}")
    order = xb + x_free + xc
    xt = x if order == list(range(x.ndim)) else jnp.transpose(x, order)
    b_shape = tuple(x.shape[a] for a in xb)
    free_shape = tuple(x.shape[a] for a in x_free)
    xt = jnp.reshape(xt, b_shape + (math.prod(free_shape), fk.weight.in_features))

    def mm(xx, ww):
        return _fpx_matmul(xx, ww, impl, act_dtype)

    for _ in range(fk.n_batch):
        mm = jax.vmap(mm)
    y = mm(xt, fk.weight)  # (*b, M, N)
    y = jnp.reshape(y, b_shape + free_shape + tuple(fk.shape[a] for a in fk.free_axes))
    # batch axes come out in the stored order; dot_general wants the op's order (x_batch as given).
    stored_pos = {xa: i for i, xa in enumerate(xb)}
    bperm = [stored_pos[xa] for a, xa in zip(w_batch, x_batch)]
    if bperm != list(range(len(bperm))):
        y = jnp.transpose(y, bperm + list(range(len(bperm), y.ndim)))
    return y


def _parse_einsum(spec: str, lhs_ndim: int, rhs_ndim: int, where: str):
    """``"...d,df->...f"`` -> (lhs, rhs, out) letter strings with the ellipsis expanded (lhs/out only)."""
    spec = spec.replace(" ", "")
    if spec.count(",") != 1:
        raise NotImplementedError(f"{where}: only two-operand einsums are supported, got {spec!r}")
    ins, _, out = spec.partition("->")
    lhs, rhs = ins.split(",")
    if "." in rhs:
        raise NotImplementedError(f"{where}: an ellipsis on the kernel operand is not supported ({spec!r})")
    if "->" not in spec:  # implicit output: letters seen once, sorted; ellipsis first
        counts = {c: (lhs + rhs).count(c) for c in set(lhs + rhs) if c != "."}
        out = ("..." if "..." in lhs else "") + "".join(sorted(c for c, n in counts.items() if n == 1))
    if "..." in lhs:
        used = set(lhs + rhs + out)
        fresh = [c for c in string.ascii_letters if c not in used]
        n_ell = lhs_ndim - (len(lhs) - 3)
        ell = "".join(fresh[:n_ell])
        lhs, out = lhs.replace("...", ell), out.replace("...", ell)
    if "." in out or len(lhs) != lhs_ndim or len(rhs) != rhs_ndim:
        raise ValueError(f"{where}: einsum {spec!r} does not match operand ranks {lhs_ndim} and {rhs_ndim}")
    for s in (lhs, rhs, out):
        if len(set(s)) != len(s):
            raise NotImplementedError(f"{where}: repeated indices (traces/diagonals) are not supported ({spec!r})")
    for c in lhs + rhs:
        if c not in out and not (c in lhs and c in rhs):
            raise NotImplementedError(f"{where}: index {c!r} of {spec!r} is summed within one operand; not supported")
    return lhs, rhs, out


def _fpx_einsum(spec, x, fk: FPxKernel, *, impl, act_dtype, where):
    lhs, rhs, out = _parse_einsum(spec, x.ndim, fk.ndim, where)
    dims = _einsum_dims(lhs, rhs, out)
    y = _fpx_dot_general(x, fk, *dims[0], *dims[1], impl=impl, act_dtype=act_dtype, where=where)
    return jnp.transpose(y, _einsum_out_perm(lhs, rhs, out, dims))


def _einsum_dims(lhs, rhs, out):
    contract = [c for c in lhs if c in rhs and c not in out]
    batch = [c for c in lhs if c in rhs and c in out]
    return (
        ([lhs.index(c) for c in contract], [rhs.index(c) for c in contract]),
        ([lhs.index(c) for c in batch], [rhs.index(c) for c in batch]),
    )


def _einsum_out_perm(lhs, rhs, out, dims):
    batch = [lhs[i] for i in dims[1][0]]
    canonical = batch + [c for c in lhs if c not in rhs] + [c for c in rhs if c not in lhs]
    return [canonical.index(c) for c in out]


def _einsum_weight_dims(spec: str, lhs_ndim: int, rhs_ndim: int, where: str):
    lhs, rhs, out = _parse_einsum(spec, lhs_ndim, rhs_ndim, where)
    (_, w_contract), (_, w_batch) = _einsum_dims(lhs, rhs, out)
    return w_contract, w_batch


# ------------------------------------------------------------------------------------------
# The provider
# ------------------------------------------------------------------------------------------


def _module_path() -> str:
    try:
        return "/".join(map(str, _qwix_flax_util.get_current_module_path()))
    except Exception:  # noqa: BLE001 - only for messages
        return "?"


class FPxProvider(qwix.PtqProvider):
    """Qwix provider that serves rules naming FPx formats with jax_fpx (weight-only PTQ).

    Use it wherever Qwix takes a provider: ``qwix.quantize_model(model, FPxProvider(rules))``
    (linen), ``qwix.quantize_model(model, FPxProvider(rules), x)`` (nnx). Rules whose
    ``weight_qtype`` is not an FPx format (see :func:`fpx_format_of`) are handled by Qwix's
    :class:`qwix.PtqProvider`, so a rule list may mix FPx and Qwix types; a matching rule with
    ``weight_qtype=None`` leaves a module dense.

    Args:
      rules: ``qwix.QuantizationRule`` list, first match wins (Qwix semantics).
      impl: passed to :func:`jax_fpx.linear` (``"auto"``, ``"xla"``, ``"reference"``).
      act_dtype: activation dtype fed to the FPx op when the layer computes in float32
        (``None``: bfloat16); bfloat16/float16 activations are used as they are.
      disable_jit: as in Qwix.

    What gets quantized: in a module a rule matches, the kernel operand (the rhs) of each
    ``dot_general`` / ``einsum`` / ``jnp.dot`` that is a param of that module -- the kernel of
    ``nn.Dense``, ``nn.DenseGeneral``, ``nn.Einsum``, ``nnx.Linear``, ``nnx.LinearGeneral``,
    ``nnx.Einsum``, or a hand-written ``x @ self.param(...)``. Activation x activation products
    (attention scores), convolutions and embedding lookups stay dense. The kernel is quantized
    as the op receives it (after the layer's dtype promotion) and replaces the param as an
    :class:`FPxKernel` (linen: during ``init``; nnx: during ``qwix.quantize_model``'s first
    call). The layer's own dtype policy, bias and output shapes are unchanged; ``precision`` is
    ignored (the FPx op accumulates in float32). Not served: ``x @ w`` / ``jnp.matmul`` (Qwix
    does not intercept them), kernels the module reshapes or transposes before the op (an error
    names the module: leave it dense with a ``weight_qtype=None`` rule), a kernel as the
    left-hand operand. Logical-axis metadata (``nn.with_partitioning``) of a quantized kernel is
    dropped: shard FPx weights with :mod:`jax_fpx.sharding`.
    """

    def __init__(
        self,
        rules: Sequence[qwix.QuantizationRule],
        *,
        impl: str = "auto",
        act_dtype: Any = None,
        disable_jit: bool = False,
    ):
        super().__init__(rules, disable_jit=disable_jit)
        self.impl = impl
        self.act_dtype = act_dtype

    # --- rules --------------------------------------------------------------------------------
    def _init_rule(self, rule):
        fmt = fpx_format_of(rule.weight_qtype)
        if fmt is None:
            return super()._init_rule(rule)
        if rule.act_qtype is not None or rule.act_static_scale:
            raise ValueError(
                f"FPx rules are weight-only: act_qtype must be None, got {rule.act_qtype!r} (rule: {rule})"
            )
        if rule.weight_calibration_method not in _CALIBRATIONS:
            raise ValueError(
                f"weight_calibration_method {rule.weight_calibration_method!r} is not supported for FPx "
                f"weights; use one of {sorted(_CALIBRATIONS)} (rule: {rule})"
            )
        t = rule.tile_size
        if t is not None and not (isinstance(t, (int, np.integer)) and t > 0 and t % 64 == 0) and not (
            isinstance(t, float) and 0 < t <= 1
        ):
            raise ValueError(f"FPx tile_size must be None, a positive multiple of 64 or 1/n, got {t!r} (rule: {rule})")
        return rule

    def _fpx_rule(self, op_name: str):
        rule, _ = self._get_current_rule_and_op_id(op_name, only_rule=True)
        if rule is None or rule.weight_qtype is None:
            return None, None
        fmt = fpx_format_of(rule.weight_qtype)
        return (rule, fmt) if fmt is not None else (None, None)

    # --- quantizing a kernel at first sight ------------------------------------------------------
    def _quantize_operand(self, op_name, rhs, w_contract, w_batch, rule, fmt) -> Optional[FPxKernel]:
        """Quantize ``rhs`` if it is a param of the current module and store it in its place."""
        if not isinstance(rhs, jax.Array) or not jnp.issubdtype(rhs.dtype, jnp.floating):
            return None
        name = _qwix_flax_util.find_param(rhs)
        if name is None:
            return None  # an activation: weight-only, leave it
        module = _qwix_flax_util.get_current_module()
        where = f"{op_name} in {_module_path() or '<root>'} (param {name!r})"
        param = self._raw_param(module, name)
        if getattr(param, "shape", None) != rhs.shape:
            raise NotImplementedError(
                f"{where}: the module reshapes or transposes param {name!r} ({getattr(param, 'shape', None)} -> "
                f"{rhs.shape}) before the matmul; FPxProvider replaces kernels used as they are stored. "
                "Leave this module dense with a rule weight_qtype=None"
            )
        w_batch = [a % rhs.ndim for a in w_batch]
        w_contract = [a % rhs.ndim for a in w_contract]
        free = [a for a in range(rhs.ndim) if a not in w_batch and a not in w_contract]
        if not free:
            return None  # a vector "kernel" (no output features): not a matmul weight
        k = math.prod(rhs.shape[a] for a in w_contract)
        group = rule.tile_size
        if isinstance(group, float):
            group = round(k * group)
            if group % 64:
                raise ValueError(f"{where}: tile_size={rule.tile_size} gives groups of {group}, not a multiple of 64")
        fk = _quantize_kernel(
            rhs,
            tuple(w_batch) + tuple(w_contract) + tuple(free),
            len(w_batch),
            len(w_contract),
            fmt,
            group,
            _CALIBRATIONS[rule.weight_calibration_method],
        )
        self._store(module, name, fk, where)
        return fk

    @staticmethod
    def _raw_param(module, name):
        if isinstance(module, nn.Module):
            return nn.unbox(module.get_variable("params", name))
        return getattr(module, name).get_value()

    @staticmethod
    def _store(module, name, fk: FPxKernel, where: str) -> None:
        if isinstance(module, nn.Module):
            if not module.is_mutable_collection("params"):
                raise ValueError(
                    f"{where}: float kernel fed to a model quantized by FPxProvider; quantize the params "
                    "first with jax_fpx.qwix.quantize_params(params, jax.eval_shape(qmodel.init, ...)['params'])"
                )
            module.put_variable("params", name, fk)  # axis metadata (if any) is not carried over
        else:
            setattr(module, name, nnx.Param(fk))

    # --- intercepted functions -----------------------------------------------------------------
    def dot_general(
        self,
        lhs,
        rhs,
        dimension_numbers,
        precision=None,
        preferred_element_type=None,
        *,
        out_sharding=None,
    ):
        (lc, rc), (lb, rb) = dimension_numbers
        fk = rhs if isinstance(rhs, FPxKernel) else None
        if fk is None:
            rule, fmt = self._fpx_rule("dot_general")
            if rule is not None:
                fk = self._quantize_operand("dot_general", rhs, rc, rb, rule, fmt)
        if fk is None:
            if isinstance(lhs, FPxKernel):
                raise NotImplementedError(
                    f"dot_general in {_module_path()}: an FPx kernel must be the right-hand operand"
                )
            return super().dot_general(
                lhs, rhs, dimension_numbers, precision, preferred_element_type, out_sharding=out_sharding
            )
        y = _fpx_dot_general(
            jnp.asarray(lhs), fk, lc, rc, lb, rb, impl=self.impl, act_dtype=self.act_dtype,
            where=f"dot_general in {_module_path()}",
        )
        return y if preferred_element_type is None else y.astype(preferred_element_type)

    def einsum(
        self,
        einsum_str,
        *operands,
        precision=None,
        preferred_element_type=None,
        _dot_general=jax.lax.dot_general,
        out_sharding=None,
    ):
        fk = None
        if len(operands) == 2 and isinstance(operands[1], FPxKernel):
            fk = operands[1]
        elif len(operands) == 2 and isinstance(operands[1], jax.Array):
            rule, fmt = self._fpx_rule("einsum")
            if rule is not None:
                lhs, rhs = operands
                where = f"einsum {einsum_str!r} in {_module_path()}"
                w_contract, w_batch = _einsum_weight_dims(einsum_str, jnp.ndim(lhs), rhs.ndim, where)
                fk = self._quantize_operand("einsum", rhs, w_contract, w_batch, rule, fmt)
        if fk is None:
            if any(isinstance(o, FPxKernel) for o in operands):
                raise NotImplementedError(
                    f"einsum {einsum_str!r} in {_module_path()}: an FPx kernel must be the second of two operands"
                )
            return super().einsum(
                einsum_str, *operands, precision=precision, preferred_element_type=preferred_element_type,
                _dot_general=_dot_general, out_sharding=out_sharding,
            )
        y = _fpx_einsum(
            einsum_str, jnp.asarray(operands[0]), fk, impl=self.impl, act_dtype=self.act_dtype,
            where=f"einsum {einsum_str!r} in {_module_path()}",
        )
        return y if preferred_element_type is None else y.astype(preferred_element_type)

    def nn_param(self, module, name, *args, **kwargs):
        if module.has_variable("params", name):
            existing = nn.unbox(module.get_variable("params", name))
            if isinstance(existing, FPxKernel):
                return existing  # skip linen's shape check against the dense initializer
        return super().nn_param(module, name, *args, **kwargs)

    def promote_dtype(self, *args, **kwargs):
        nnx_style = len(args) == 1 and isinstance(args[0], (tuple, list))
        items = list(args[0]) if nnx_style else list(args)
        if not any(isinstance(a, FPxKernel) for a in items):
            return super().promote_dtype(*args, **kwargs)
        # An FPxKernel takes part in promotion through its dtype (as the dense kernel did), then
        # passes through unchanged: the layer's compute dtype stays what it was before quantizing.
        stand_in = [jnp.zeros((), a.dtype) if isinstance(a, FPxKernel) else a for a in items]
        promoted = super().promote_dtype(*stand_in, **kwargs)
        out = [a if isinstance(a, FPxKernel) else p for a, p in zip(items, promoted)]
        return tuple(out) if nnx_style else out

    def asarray(self, a, dtype=None, order=None, **kwargs):
        raw = _qwix_flax_util.unbox(a)
        if isinstance(raw, FPxKernel):
            return raw
        return super().asarray(a, dtype=dtype, order=order, **kwargs)


# ------------------------------------------------------------------------------------------
# Float params -> quantized params, from the abstract tree of the quantized model
# ------------------------------------------------------------------------------------------


def _is_kernel(x) -> bool:
    return isinstance(x, FPxKernel)


def quantize_params(params: Any, abstract_quantized_params: Any, **qwix_kwargs: Any) -> Any:
    """Quantize a float linen param tree for a model quantized with :class:`FPxProvider`.

    The counterpart of ``qwix.quantize_params`` (which it calls for the leaves Qwix's own rules
    quantized, if any): ``abstract_quantized_params`` is ``jax.eval_shape(qmodel.init, key,
    x)["params"]`` (nothing is materialized); each leaf that is an :class:`FPxKernel` there is
    quantized from ``params`` with the same format, group size, layout and calibration, on the
    device where the float kernel lives. Leading stacked axes (``nn.scan``) are kept. Other
    leaves are returned unchanged (or quantized by Qwix). ``qwix_kwargs`` go to
    ``qwix.quantize_params`` (e.g. ``allow_extra_params=True``).
    """
    from flax import traverse_util
    from flax.core import FrozenDict, unfreeze

    frozen = isinstance(params, FrozenDict)
    flat = traverse_util.flatten_dict(unfreeze(params))
    if isinstance(abstract_quantized_params, nnx.Module):
        abstract = nnx.to_pure_dict(nnx.state(abstract_quantized_params, nnx.Param))
    else:
        abstract = unfreeze(nn.unbox(abstract_quantized_params))
    out, rest = {}, {}
    if isinstance(abstract_quantized_params, nnx.Module):  # Qwix keeps its WithAux outside nnx.Param
        has_qwix = any(
            isinstance(v, _qwix_ptq.WithAux)
            for _, mod in nnx.iter_modules(abstract_quantized_params)
            for v in vars(mod).values()
        )
    else:
        has_qwix = any(
            isinstance(leaf, _qwix_ptq.WithAux)
            for leaf in jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, (FPxKernel, _qwix_ptq.WithAux)))
        )
    for path, value in flat.items():
        node = abstract
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, FPxKernel):
            q = node.requantize(value)
            jax.block_until_ready(jax.tree.leaves(q))  # one layer in flight: bounded peak memory
            out[path] = q
        else:
            rest[path] = value
    if has_qwix and rest:
        rest = traverse_util.flatten_dict(
            qwix.quantize_params(traverse_util.unflatten_dict(rest), abstract_quantized_params, **qwix_kwargs)
        )
    out.update(rest)
    tree = traverse_util.unflatten_dict(out)
    return FrozenDict(tree) if frozen else tree

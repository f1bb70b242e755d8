"""Quantize the Dense kernels of a linen param tree, and run an unmodified model on them.

    qparams = jax_fpx.flax.quantize_params(params, "fp6_e3m2")
    with jax_fpx.flax.fpx_dense_interceptor():
        y = model.apply({"params": qparams}, x)      # every nn.Dense runs jax_fpx.linear
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import sys
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from ..formats import FormatLike, get_format
from ..quantize import ScaleSearch, quantize
from ..weight import FPxWeight
from ._op import contracted_trailing_axes, dense_general_matmul, fpx_matmul

__all__ = ["quantize_params", "fpx_dense_interceptor", "dequantize_params", "dense_input_stats", "DEFAULT_EXCLUDE"]

#: Paths (regex, searched in "a/b/kernel") left dense unless ``exclude`` is overridden.
DEFAULT_EXCLUDE: tuple[str, ...] = (r"(^|/)lm_head(/|$)",)

Patterns = Union[None, str, Sequence[str]]


def _compile(patterns: Patterns) -> list[re.Pattern]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    return [re.compile(p) for p in patterns]


def _path_str(path: Sequence[Any]) -> str:
    return "/".join(str(p) for p in path)


def _walk(tree: Any, path: tuple = ()) -> Iterable[tuple[tuple, Any]]:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _walk(v, path + (k,))
    else:
        yield path, tree


def _rebuild(tree: Any, replaced: dict, path: tuple = ()) -> Any:
    if isinstance(tree, Mapping):
        out = {k: _rebuild(v, replaced, path + (k,)) for k, v in tree.items()}
        if isinstance(tree, FrozenDict):
            return FrozenDict(out)
        return out if type(tree) is dict else type(tree)(out)
    return replaced.get(path, tree)


def _is_float_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def quantize_params(
    params: Any,
    fmt: FormatLike = "fp6_e3m2",
    *,
    group_size: Optional[int] = None,
    include: Patterns = None,
    exclude: Patterns = DEFAULT_EXCLUDE,
    dense_general: Optional[Mapping[str, int]] = None,
    donate: bool = False,
    progress: Optional[bool] = None,
    scale_search: Any = None,
    importance: Optional[Mapping[str, Any]] = None,
    rules: Any = None,
    calibration: Any = None,
    method: Any = "rtn",
) -> Any:
    """Quantize every Dense kernel of a linen param tree to :class:`FPxWeight`.

    A leaf is quantized when its key is ``"kernel"``, it is a 2-D float array (the kernel of
    ``nn.Dense``), its path string (``"encoder/layer_0/query/kernel"``) matches one of
    ``include`` (regexes, ``re.search``; ``None`` = all) and none of ``exclude`` (default:
    ``lm_head``; pass ``exclude=()`` to quantize it too). Embedding tables (``embedding``),
    norm ``scale``/``bias`` and Dense biases are never touched; the tree keeps its structure,
    key names and container type.

    Memory: layers are quantized one at a time by a jitted quantizer on the device (and with
    the sharding) where each kernel lives, and each result is ready before the next layer
    starts. With ``donate=True`` every original kernel is deleted right after it is quantized,
    so peak memory is the quantized tree plus the dense tree minus what has been converted
    (the caller's ``params`` become unusable for those leaves).

    Args:
      params: a (possibly nested) mapping, e.g. ``variables["params"]``; a full variables
        dict works too (only ``kernel`` leaves are touched).
      fmt: FPx format (``"fp6_e3m2"``, ``"fp6_e2m3"``, ``"fp5_e2m2"``, ``"fp4_e2m1"``, ...).
      group_size: ``None`` (one scale per output channel) or a multiple of 64.
      include / exclude: regex pattern(s) on the path string.
      dense_general: optional ``{path_regex: n_contracted_axes}`` to also quantize
        ``nn.DenseGeneral`` kernels of more than 2 dims: the kernel is flattened to
        ``(prod(shape[:n]), prod(shape[n:]))`` first (what ``FPxDenseGeneral`` and the
        interceptor expect). Leading stacked axes are not supported there.
      donate: delete each original kernel once quantized.
      scale_search: passed to :func:`jax_fpx.quantize` (``None``: absmax scales; ``True`` or a
        :class:`jax_fpx.quantize.ScaleSearch`: per-scale search minimizing weight MSE).
      importance: optional ``{module_path: (in_features,) array}`` (e.g. from
        :func:`dense_input_stats`); a layer found there gets an importance-weighted scale
        search (``scale_search`` or a default :class:`ScaleSearch`) -- activation-aware
        clipping without changing the model.
      progress: show a tqdm bar (``None``: only when stderr is a terminal).
      rules: optional ordered :class:`jax_fpx.flax.rules.QuantRule` list (or a JSON/YAML rules
        file path): the first rule whose regex matches a kernel's path picks its format and
        group size, ``fmt=None`` keeps it dense, no match keeps it dense. Replaces ``fmt``,
        ``group_size`` and ``exclude``; ``include`` still filters.
      method: ``"rtn"`` (default: round each weight to nearest) or ``"gptq"`` / a
        :class:`jax_fpx.GPTQ` (its options): error-compensating quantization
        (:func:`jax_fpx.quantize_gptq`) with the inputs' ``XᵀX`` from ``calibration``.
      calibration: for ``method="gptq"``: a :class:`jax_fpx.flax.Calibration` (forward + batches;
        layers are quantized stage by stage, each on the inputs the already-quantized model gives
        it, see :mod:`jax_fpx.flax.calibration`), or ``{module_path: InputStats | XᵀX}`` from
        :func:`jax_fpx.flax.dense_input_hessians` (one shot, float-model inputs). ``scale_search``
        is applied to the GPTQ scales (weighted by ``diag(XᵀX)``).

    Returns:
      A tree of the same structure with ``FPxWeight`` in place of the selected kernels.
    """
    from tqdm.auto import tqdm

    fmt = get_format(fmt)
    if rules is not None:
        from .rules import as_rules, match_rule

        rules = as_rules(rules)
        exclude = ()
    inc, exc = _compile(include), _compile(exclude)
    general = [(re.compile(p), int(n)) for p, n in (dense_general or {}).items()]

    todo: list[tuple[tuple, Any, Optional[int], Any, Optional[int]]] = []
    for path, leaf in _walk(params):
        if not path or path[-1] != "kernel" or isinstance(leaf, FPxWeight) or not _is_float_array(leaf):
            continue
        s = _path_str(path)
        if inc and not any(p.search(s) for p in inc):
            continue
        if any(p.search(s) for p in exc):
            continue
        n_in = None
        if leaf.ndim != 2:
            n_in = next((n for p, n in general if p.search(s)), None)
            if n_in is None or not 0 < n_in < leaf.ndim:
                continue
        if rules is not None:
            rule = match_rule(rules, s)
            if rule is None or rule.fmt is None:
                continue
            todo.append((path, leaf, n_in, rule.fmt, rule.group_size))
        else:
            todo.append((path, leaf, n_in, fmt, group_size))

    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if calibration is not None or method != "rtn":
        from .calibration import as_gptq, gptq_params

        opts = as_gptq(method)
        if opts is None or calibration is None:
            raise ValueError(f"method={method!r} with calibration={type(calibration).__name__}: GPTQ needs both "
                             "method='gptq' and calibration=Calibration(...) or {module_path: XᵀX}")
        if importance is not None:
            raise ValueError("importance is for the scale search of method='rtn'; GPTQ weights its scale search by diag(XᵀX)")
        if scale_search is not None and scale_search is not False and opts.scale_search is None:
            opts = dataclasses.replace(opts, scale_search=scale_search)
        desc = "GPTQ by rules" if rules is not None else f"GPTQ {fmt.name}"
        with tqdm(total=len(todo), desc=desc, unit="layer", leave=False, disable=not progress) as bar:
            replaced = gptq_params(params, todo, calibration, opts, rebuild=_rebuild, bar=bar, donate=donate)
        return _rebuild(params, replaced)
    replaced = {}
    desc = "quantize by rules" if rules is not None else f"quantize {fmt.name}"
    with tqdm(total=len(todo), desc=desc, unit="layer", leave=False, disable=not progress) as bar:
        for path, leaf, n_in, leaf_fmt, leaf_group in todo:
            kernel = leaf
            if n_in is not None:
                kernel = jnp.reshape(leaf, (math.prod(leaf.shape[:n_in]), math.prod(leaf.shape[n_in:])))
            ss = scale_search
            mod_path = _path_str(path[:-1])
            if importance is not None and mod_path in importance and n_in is None:
                base = scale_search if isinstance(scale_search, ScaleSearch) else ScaleSearch()
                ss = dataclasses.replace(base, importance=importance[mod_path])
            q = quantize(kernel, leaf_fmt, group_size=leaf_group, scale_search=ss)
            jax.block_until_ready((q.data, q.scale))  # bound peak memory: one layer in flight
            if donate and isinstance(leaf, jax.Array) and not leaf.is_deleted():
                if kernel is not leaf:
                    kernel.delete()
                leaf.delete()
            replaced[path] = q
            bar.set_postfix_str(_path_str(path)[-40:], refresh=False)
            bar.update(1)
    return _rebuild(params, replaced)


def dequantize_params(params: Any, dtype: Any = jnp.float32) -> Any:
    """Inverse view of :func:`quantize_params`: every 2-D :class:`FPxWeight` back to a dense kernel.

    (Kernels quantized through ``dense_general`` come back flattened.) Useful as the
    "same weights, full-precision math" baseline.
    """
    from ..quantize import dequantize

    return jax.tree.map(
        lambda x: dequantize(x, dtype) if isinstance(x, FPxWeight) else x,
        params,
        is_leaf=lambda x: isinstance(x, FPxWeight),
    )


def _intercept_dense(mod: nn.Module, x: jax.Array, impl: str, act_dtype: Any):
    """FPx math for a bound nn.Dense / nn.DenseGeneral whose kernel is an FPxWeight, else None."""
    if mod.is_initializing() or not mod.has_variable("params", "kernel"):
        return None
    kernel = mod.get_variable("params", "kernel")
    if not isinstance(kernel, FPxWeight):
        return None
    bias = mod.get_variable("params", "bias") if getattr(mod, "use_bias", False) else None
    x = jnp.asarray(x)
    if isinstance(mod, nn.Dense):
        return fpx_matmul(x, kernel, bias, dtype=mod.dtype, act_dtype=act_dtype, impl=impl)
    # nn.DenseGeneral with a flattened 2-D FPxWeight (quantize_params(dense_general=...)).
    where = f"DenseGeneral {'/'.join(mod.scope.path)}"
    n_contract = contracted_trailing_axes(mod.axis, mod.batch_dims, x.ndim, where)
    return dense_general_matmul(x, kernel, bias, mod.features, n_contract, dtype=mod.dtype, act_dtype=act_dtype, impl=impl)


@contextlib.contextmanager
def fpx_dense_interceptor(*, impl: str = "auto", act_dtype: Any = None):
    """Run an unmodified linen model's ``nn.Dense`` layers with FPx math.

    Inside the context, every ``nn.Dense`` (and ``nn.DenseGeneral`` whose kernel was
    flattened by ``quantize_params(dense_general=...)``) whose ``kernel`` param is an
    :class:`FPxWeight` calls :func:`jax_fpx.linear` (same dtype policy as
    :class:`~jax_fpx.flax.FPxDense`); layers whose kernel is still dense (e.g. an excluded
    ``lm_head``) run unchanged. Works under ``jax.jit`` (intercept at trace time).

    Yields a list that collects the module paths (``"encoder/layer_0/query"``) of each
    intercepted call, for checking coverage.
    """
    hits: list[str] = []

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name == "__call__" and isinstance(mod, (nn.Dense, nn.DenseGeneral)) and args:
            y = _intercept_dense(mod, args[0], impl, act_dtype)
            if y is not None:
                hits.append("/".join(mod.scope.path))
                return y
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield hits


@contextlib.contextmanager
def dense_input_stats(token_weights: Any = None):
    """Collect the mean squared input of every ``nn.Dense`` call (calibration for ``importance``).

    Run the *unquantized* model eagerly (not under ``jit``) inside the context on a few
    calibration batches; the yielded dict maps each Dense module path to the running mean
    of ``x**2`` per input feature (float32 numpy). ``token_weights`` (e.g. an attention mask
    of shape ``x.shape[:-1]``) down-weights padding positions where the shapes match.
    """
    import numpy as np

    sums: dict[str, Any] = {}
    counts: dict[str, float] = {}
    stats: dict[str, Any] = {}

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name == "__call__" and isinstance(mod, nn.Dense) and args:
            x = np.asarray(args[0], np.float32)
            w = None
            if token_weights is not None and np.shape(token_weights) == x.shape[:-1]:
                w = np.asarray(token_weights, np.float32)[..., None]
            x2 = x * x if w is None else x * x * w
            n = float(np.prod(x.shape[:-1])) if w is None else float(w.sum())
            key = "/".join(mod.scope.path)
            sums[key] = sums.get(key, 0.0) + x2.reshape(-1, x.shape[-1]).sum(0)
            counts[key] = counts.get(key, 0.0) + n
            stats[key] = sums[key] / max(counts[key], 1e-9)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield stats

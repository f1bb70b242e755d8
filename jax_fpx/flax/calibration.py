"""Calibration statistics (``XᵀX`` of every Dense / Linear input) and sequential GPTQ of a model.

    import jax_fpx.flax as fpx

    # linen: an unmodified model, its forward on one calibration batch, the batches
    calib = fpx.Calibration(lambda p, b: model.apply({"params": p}, *b), batches,
                            token_weights=lambda b: b[1])            # e.g. the attention mask
    qparams = fpx.quantize_params(params, "fp4_e2m1", calibration=calib, method="gptq")

    with fpx.dense_input_hessians() as stats:                        # or just the statistics
        model.apply({"params": params}, *batch)                      # eager, any number of batches
    stats["layer_0/query"].hessian                                   # (in, in) float32, summed over tokens

    with fpx.nnx_input_hessians(nnx_model) as stats:                 # nnx: every nnx.Linear
        nnx_model(x)

Statistics are accumulated on the device in float32, one ``(in, in)`` matrix per layer, streamed
over batches (no activations are kept). The forward must run eagerly (not under ``jax.jit``): the
statistics are read from the concrete layer inputs.

Sequential GPTQ (what ``quantize_params(..., calibration=Calibration(...), method="gptq")`` runs):
the Dense calls of one forward are put in execution order and cut into *stages* (consecutive
layers that read the same input array, e.g. query/key/value); for each stage the calibration
batches are run through the model whose earlier layers already carry their quantized weights
(stopping the forward right after the stage's last layer), the stage's ``XᵀX`` are collected and
its kernels quantized by :func:`jax_fpx.quantize_gptq`. So each layer is calibrated on the inputs
the quantized model will give it, and only one stage's statistics are alive at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..gptq import GPTQ, quantize_gptq
from ..quantize import dequantize, quantize

__all__ = ["Calibration", "InputStats", "dense_input_hessians", "nnx_input_hessians", "as_gptq"]

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass
class InputStats:
    """Second moments of one layer's inputs: ``xtx = Σ w_t x_t x_tᵀ`` over tokens ``t``, ``count = Σ w_t``."""

    xtx: jax.Array
    count: float = 0.0

    @property
    def hessian(self) -> jax.Array:
        """``XᵀX`` summed over calibration tokens (what :func:`jax_fpx.quantize_gptq` takes)."""
        return self.xtx

    @property
    def mean_square(self) -> jax.Array:
        """Mean ``x²`` per input feature (``ScaleSearch.importance``)."""
        return jnp.diagonal(self.xtx) / max(self.count, 1e-9)


@jax.jit
def _xtx(x: jax.Array, w: Optional[jax.Array]) -> jax.Array:
    x = x.astype(jnp.float32)
    xw = x if w is None else x * w.astype(jnp.float32)[:, None]
    return jnp.dot(xw.T, x, precision=_HIGHEST)


def _accumulate(stats: dict, key: str, x: Any, token_weights: Any, n_in: Optional[int] = None) -> None:
    if isinstance(x, jax.core.Tracer):
        raise RuntimeError(
            f"calibration of {key!r}: the layer input is traced (the forward runs under jax.jit / a transform); "
            "run the calibration forward eagerly"
        )
    x = jnp.asarray(x)
    lead = x.shape[: x.ndim - (n_in or 1)]
    x2 = x.reshape(math.prod(lead), -1)
    w = None
    if token_weights is not None and tuple(jnp.shape(token_weights)) == tuple(lead):
        w = jnp.reshape(jnp.asarray(token_weights), (-1,))
    n = float(x2.shape[0]) if w is None else float(jnp.sum(w))
    upd = _xtx(x2, w)
    if key in stats:
        stats[key] = InputStats(stats[key].xtx + upd, stats[key].count + n)
    else:
        stats[key] = InputStats(upd, n)


class _Stop(Exception):
    """Aborts a calibration forward once the layers of interest have been seen."""


def _dense_call(context, args) -> Optional[nn.Module]:
    mod = context.module
    if context.method_name == "__call__" and isinstance(mod, (nn.Dense, nn.DenseGeneral)) and args:
        return mod
    return None


@contextlib.contextmanager
def dense_input_hessians(token_weights: Any = None, *, only: Optional[Iterable[str]] = None,
                         n_in: Optional[Mapping[str, int]] = None):
    """Accumulate ``XᵀX`` of every ``nn.Dense`` input while an unmodified linen model runs eagerly.

    Yields a dict ``{module path: InputStats}`` (``"layer_0/query"``), updated by every forward
    run inside the context (any number of batches). ``token_weights`` (e.g. an attention mask of
    shape ``x.shape[:-1]``) weights each token where the shapes match (0 drops padding).
    ``only``: collect these module paths only. ``n_in``: ``{path: n}`` for ``nn.DenseGeneral``
    layers contracting their ``n`` trailing input axes (flattened as ``quantize_params(dense_general=)``
    does); other DenseGeneral layers are skipped.
    """
    stats: dict[str, InputStats] = {}
    only = None if only is None else set(only)
    n_in = dict(n_in or {})

    def interceptor(next_fun, args, kwargs, context):
        mod = _dense_call(context, args)
        if mod is not None:
            key = "/".join(mod.scope.path)
            general = not isinstance(mod, nn.Dense)
            if (only is None or key in only) and (not general or key in n_in):
                _accumulate(stats, key, args[0], token_weights, n_in.get(key))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield stats


@contextlib.contextmanager
def nnx_input_hessians(model: Any, token_weights: Any = None, *, only: Optional[Iterable[str]] = None):
    """``XᵀX`` of every ``nnx.Linear`` input of ``model`` while it runs eagerly inside the context.

    Yields ``{module path: InputStats}`` (``"blocks/0/mlp/up"``). The Linear layers are instrumented
    in place for the duration of the context (their class is swapped for a recording subclass with
    the same state) and restored on exit.
    """
    from flax import nnx

    stats: dict[str, InputStats] = {}
    only = None if only is None else set(only)
    swapped = []
    for path, mod in nnx.iter_modules(model):
        key = "/".join(str(p) for p in path)
        if type(mod) is nnx.Linear and (only is None or key in only):
            swapped.append(mod)
            object.__setattr__(mod, "__class__", _recording_linear(nnx))
            _RECORD[id(mod)] = (key, stats, token_weights)
    try:
        yield stats
    finally:
        for mod in swapped:
            object.__setattr__(mod, "__class__", nnx.Linear)
            _RECORD.pop(id(mod), None)


_RECORD: dict[int, tuple] = {}


def _recording_linear(nnx):
    global _RecordingLinear
    if _RecordingLinear is None:

        class RecordingLinear(nnx.Linear):
            def __call__(self, inputs, *args, **kwargs):
                key, stats, tw = _RECORD[id(self)]
                _accumulate(stats, key, inputs, tw)
                return super().__call__(inputs, *args, **kwargs)

        _RecordingLinear = RecordingLinear
    return _RecordingLinear


_RecordingLinear = None


@dataclasses.dataclass
class Calibration:
    """Calibration data and how to run the model on it.

    Attributes:
      forward: ``forward(params, batch)`` runs the unmodified linen model eagerly, e.g.
        ``lambda p, b: model.apply({"params": p}, *b)`` (its output is ignored).
      batches: the calibration batches (a sequence; each is passed to ``forward`` as is).
      token_weights: optional ``token_weights(batch)`` -> weights of shape ``x.shape[:-1]`` of the
        Dense inputs (e.g. the attention mask, so padding does not count).
      stages: how sequential GPTQ cuts the Dense calls into stages (one calibration forward
        each): ``"input"`` (default) -- consecutive layers reading the same input array (q/k/v
        together, then each later layer on the quantized outputs before it); ``"module"`` --
        consecutive layers of the same parent module (a transformer block at a time, as in the
        GPTQ paper without "true sequential": fewer forwards, inputs quantized block-wise).
    """

    forward: Callable[[Any, Any], Any]
    batches: Sequence[Any]
    token_weights: Optional[Callable[[Any], Any]] = None
    stages: str = "input"

    def __post_init__(self):
        self.batches = list(self.batches)
        if not self.batches:
            raise ValueError("Calibration needs at least one batch")
        if self.stages not in ("input", "module"):
            raise ValueError(f"Calibration.stages must be 'input' or 'module', got {self.stages!r}")

    def hessians(self, params: Any, *, only: Optional[Iterable[str]] = None,
                 n_in: Optional[Mapping[str, int]] = None) -> dict[str, InputStats]:
        """One pass over the batches with :func:`dense_input_hessians` (the float model's statistics)."""
        total: dict[str, InputStats] = {}
        for b in self.batches:
            tw = None if self.token_weights is None else self.token_weights(b)
            with dense_input_hessians(tw, only=only, n_in=n_in) as st:
                self.forward(params, b)
            for k, v in st.items():
                total[k] = InputStats(total[k].xtx + v.xtx, total[k].count + v.count) if k in total else v
        return total

    def call_order(self, params: Any) -> list[tuple[str, int]]:
        """``(module path, stage key)`` of every Dense call of one forward, in execution order (traced, no
        compute); the key is the input array's id (``stages="input"``) or the parent module path."""
        calls: list[tuple[str, int]] = []
        keep: list[Any] = []  # keeps the inputs alive so that their ids stay unique

        def interceptor(next_fun, args, kwargs, context):
            mod = _dense_call(context, args)
            if mod is not None:
                keep.append(args[0])
                key = "/".join(mod.scope.path)
                calls.append((key, id(args[0]) if self.stages == "input" else "/".join(mod.scope.path[:-1])))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            jax.eval_shape(lambda p: self.forward(p, self.batches[0]), params)
        return calls


def as_gptq(method: Any) -> Optional[GPTQ]:
    """``"gptq"`` / :class:`GPTQ` -> options; ``None`` / ``"rtn"`` -> None; else ``ValueError``."""
    if method is None or method == "rtn":
        return None
    if isinstance(method, GPTQ):
        return method
    if method == "gptq":
        return GPTQ()
    raise ValueError(f"method must be 'rtn', 'gptq' or a jax_fpx.GPTQ, got {method!r}")


def _stages(calls: list[tuple[str, Any]], wanted: set[str]) -> list[tuple[list[str], int]]:
    """Stages ``(paths, index of the last Dense call they need)`` from the call order
    (``(path, stage key)`` pairs; consecutive wanted calls with the same key share a stage)."""
    last = {}
    for i, (p, _) in enumerate(calls):
        last[p] = i
    stages: list[tuple[list[str], int]] = []
    seen: set[str] = set()
    prev_input = None
    for p, xid in calls:
        if p not in wanted or p in seen:
            continue
        if stages and xid == prev_input:
            stages[-1][0].append(p)
        else:
            stages.append(([p], 0))
        seen.add(p)
        prev_input = xid
    return [(ps, max(last[p] for p in ps)) for ps, _ in stages]


def gptq_params(
    params: Any,
    todo: Sequence[tuple],
    calibration: Union[Calibration, Mapping[str, Any]],
    options: GPTQ,
    *,
    rebuild: Callable[[Any, dict], Any],
    bar: Any = None,
    donate: bool = False,
) -> dict:
    """GPTQ-quantize the kernels of ``todo`` (``(path, leaf, n_in, fmt, group_size)`` entries of
    ``quantize_params``); returns ``{path: FPxWeight}``.

    ``calibration``: a :class:`Calibration` (sequential: each stage sees the already-quantized
    layers before it) or a mapping ``{module path: InputStats | (in, in) XᵀX}`` (one shot, e.g.
    from :func:`dense_input_hessians` on the float model). Layers without statistics (never
    called in the forward, stacked kernels) get plain rounding, with a warning.
    """
    by_mod = {"/".join(str(p) for p in path[:-1]): (path, leaf, n_in, fmt, g) for path, leaf, n_in, fmt, g in todo}
    out: dict = {}

    def finish(mod_path, hess):
        path, leaf, n_in, fmt, g = by_mod[mod_path]
        kernel = leaf if n_in is None else jnp.reshape(leaf, (math.prod(leaf.shape[:n_in]), math.prod(leaf.shape[n_in:])))
        if hess is None:
            q = quantize(kernel, fmt, group_size=g)
        else:
            q = quantize_gptq(kernel, hess.hessian if isinstance(hess, InputStats) else hess, fmt, group_size=g, options=options)
        jax.block_until_ready((q.data, q.scale))
        out[path] = q
        if bar is not None:
            bar.set_postfix_str(mod_path[-40:], refresh=False)
            bar.update(1)
        return q

    def fallback(missing):
        if missing:
            warnings.warn(f"GPTQ: no calibration statistics for {sorted(missing)}; plain rounding used", stacklevel=3)
        for m in missing:
            finish(m, None)

    if isinstance(calibration, Mapping):
        for m in by_mod:
            if m in calibration:
                finish(m, calibration[m])
        fallback([m for m in by_mod if by_mod[m][0] not in out])
        return out
    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be a jax_fpx.flax.Calibration or a mapping of statistics, got {type(calibration).__name__}")

    plain = {m for m, e in by_mod.items() if e[1].ndim != 2 and e[2] is None}  # stacked kernels
    n_in = {m: e[2] for m, e in by_mod.items() if e[2] is not None}
    calls = calibration.call_order(params)
    stages = _stages(calls, set(by_mod) - plain)
    working: dict = {}  # path -> dequantized kernel of the layers done so far
    for paths, last in stages:
        current = rebuild(params, working)
        stats: dict[str, InputStats] = {}
        for b in calibration.batches:
            tw = None if calibration.token_weights is None else calibration.token_weights(b)
            st = _stage_pass(calibration.forward, current, b, tw, set(paths), last, n_in)
            for k, v in st.items():
                stats[k] = InputStats(stats[k].xtx + v.xtx, stats[k].count + v.count) if k in stats else v
        for m in paths:
            q = finish(m, stats.get(m))
            path, leaf = by_mod[m][:2]
            working[path] = jnp.reshape(dequantize(q, leaf.dtype), leaf.shape)
            if donate and isinstance(leaf, jax.Array) and not leaf.is_deleted():
                leaf.delete()  # the working tree reads the dequantized copy from now on
        del stats
    fallback([m for m in by_mod if by_mod[m][0] not in out])
    return out


def _stage_pass(forward, params, batch, token_weights, paths: set[str], last: int, n_in: Mapping[str, int]) -> dict:
    stats: dict[str, InputStats] = {}
    count = [0]

    def interceptor(next_fun, args, kwargs, context):
        mod = _dense_call(context, args)
        if mod is not None:
            if count[0] > last:
                raise _Stop
            count[0] += 1
            key = "/".join(mod.scope.path)
            if key in paths:
                _accumulate(stats, key, args[0], token_weights, n_in.get(key))
        return next_fun(*args, **kwargs)

    try:
        with nn.intercept_methods(interceptor):
            forward(params, batch)
    except _Stop:
        pass
    return stats

"""Token-by-token sampling for :mod:`jax_fpx.models.llama` (greedy, temperature, top-p), as a Python generator.

    for tok in stream(params, cfg, prompt_ids, max_new_tokens=64, temperature=0.7, top_p=0.9):
        ...                                   # one int per generated token, as soon as it exists

One jitted prefill and one jitted single-token step (KV cache donated), so tokens can be printed
as they are decoded; :func:`jax_fpx.models.llama.generate` is the fused greedy loop for benchmarks.
"""

from __future__ import annotations

import functools
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..flax.convert import fpx_dense_interceptor
from .llama import Llama, LlamaConfig, init_cache

__all__ = ["sample", "stream"]


def sample(logits: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """Next token ids ``(B,)`` from ``logits (B, V)``: greedy at ``temperature == 0``, else nucleus sampling."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above
        sorted_logits = jnp.where(before < top_p, sorted_logits, -jnp.inf)  # the top token always stays
        logits = jnp.full_like(logits, -jnp.inf).at[jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "impl", "temperature", "top_p"), donate_argnames=("cache",))
def _step(params, tokens, cache, pos, key, *, cfg: LlamaConfig, impl: str, temperature: float, top_p: float):
    with fpx_dense_interceptor(impl=impl):
        logits, cache = Llama(cfg).apply({"params": params}, tokens, pos, cache)
    return sample(logits[:, -1], key, temperature, top_p), cache


def stream(
    params,
    cfg: LlamaConfig,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_ids: Sequence[int] = (),
    impl: str = "auto",
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids for one prompt, stopping after an ``eos_ids`` token."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
    prompt = np.asarray(prompt, np.int32).reshape(1, -1)
    if prompt.shape[1] == 0:
        raise ValueError("the prompt is empty (no tokens)")
    cache = init_cache(cfg, 1, prompt.shape[1] + max_new_tokens)
    key = jax.random.key(seed)
    kw = dict(cfg=cfg, impl=impl, temperature=float(temperature), top_p=float(top_p))
    tok, cache = _step(params, jnp.asarray(prompt), cache, jnp.int32(0), jax.random.fold_in(key, 0), **kw)
    pos = prompt.shape[1]
    for i in range(max_new_tokens):
        t = int(tok[0])
        yield t
        if t in eos_ids or i + 1 == max_new_tokens:
            return
        tok, cache = _step(params, tok[:, None], cache, jnp.int32(pos), jax.random.fold_in(key, i + 1), **kw)
        pos += 1

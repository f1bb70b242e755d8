"""Self-describing, verified quantized checkpoints: safetensors files and Orbax directories.

Every quantized tensor travels with what is needed to read it back and to check it:

    {"kind": "fpx", "fmt": "fp6_e3m2" | {"ebits", "mbits", "nan_at_max"}, "group_size": 64 | null,
     "shape": [in, out], "data": <tensor name>, "scale": <tensor name>,
     "checksum": {<tensor name>: "<16 hex digits>"}}

(dense tensors: ``{"kind": "dense", "tensor", "checksum"}``), plus, once per checkpoint, the layout
version of the packed codes (:data:`jax_fpx.layout.LAYOUT_VERSION`), the rules and the source
model's config. On load: an unknown layout version, a missing tensor, a shape or dtype that does
not match the recorded format (or the restore target), or a checksum that does not match the bytes
(computed on the device after the transfer, :mod:`.checksum`) raise :class:`CheckpointError`
naming the tensor. ``verify=False`` skips the checksums (not the metadata checks).

Safetensors layout: ``model.safetensors`` with ``__metadata__`` = ``{"format": "jax_fpx.quantized",
"format_version": "1", "layout_version": "2", "params": json, "rules": json, "source_config":
json}``; tensor names are the parameter paths (``layers_0/attn/wq/kernel.data`` / ``.scale``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from .. import layout
from ..weight import FPxWeight
from .checksum import checksum_hex
from .formats_json import fmt_from_json, fmt_to_json
from .safetensors_io import CheckpointError, TensorDir, save_file

__all__ = [
    "CheckpointError",
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "save_quantized",
    "load_quantized",
    "is_quantized_checkpoint",
    "save_orbax",
    "restore_orbax",
    "flatten_params",
    "unflatten_params",
]

FORMAT_TAG = "jax_fpx.quantized"
FORMAT_VERSION = 1
FILE_NAME = "model.safetensors"
_REQUANTIZE = "re-quantize from the original weights (python -m jax_fpx quantize --model ORIGINAL_DIR --out DIR)"


# --- params <-> flat {path: leaf} --------------------------------------------------------------
def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten_params(params: Any) -> dict[str, Any]:
    """``{"layers_0/attn/wq/kernel": leaf}`` with :class:`FPxWeight` kept whole."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, FPxWeight))
    out = {}
    for path, leaf in flat:
        name = "/".join(_key_str(k) for k in path)
        if not name:
            raise ValueError("flatten_params: a bare leaf has no path; pass a mapping of parameters")
        out[name] = leaf
    return out


def unflatten_params(flat: Mapping[str, Any]) -> dict:
    """Inverse of :func:`flatten_params` for nested dicts."""
    out: dict = {}
    for name, leaf in flat.items():
        node = out
        parts = name.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = leaf
    return out


# --- records -----------------------------------------------------------------------------------
def _fmt_json(fmt):
    return fmt_to_json(fmt)


def _fmt_from(obj, where):
    try:
        return fmt_from_json(obj)
    except Exception as e:  # noqa: BLE001 - any malformed record is the same error for the user
        raise CheckpointError(f"{where}: unreadable format {obj!r} ({e})") from None


def _record(w: Any, name: str, with_checksum: bool) -> tuple[dict, dict[str, Any]]:
    """(metadata record, {tensor name: array}) for one parameter."""
    if isinstance(w, FPxWeight):
        w.check()
        tensors = {f"{name}.data": w.data, f"{name}.scale": w.scale}
        rec = {
            "kind": "fpx",
            "fmt": _fmt_json(w.fmt),
            "group_size": w.group_size,
            "shape": list(w.shape),
            "data": f"{name}.data",
            "scale": f"{name}.scale",
        }
    else:
        tensors = {name: w}
        rec = {"kind": "dense", "tensor": name}
    if with_checksum:
        rec["checksum"] = {t: checksum_hex(a) for t, a in tensors.items()}
    return rec, tensors


def _expected(rec: dict, name: str) -> tuple[Any, dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """The format and the {tensor: (shape suffix, dtype)} a record promises."""
    fmt = _fmt_from(rec.get("fmt"), f"parameter {name!r}")
    g = rec.get("group_size")
    try:
        shape = tuple(int(s) for s in rec["shape"])
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(shape)
        ds = layout.data_shape(*shape, fmt.bits, g)
        ss = layout.scale_shape(*shape, g)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"parameter {name!r}: unreadable record {rec!r} ({e})") from None
    sdt = np.dtype(jnp.dtype(layout.scale_dtype(g)))
    return (fmt, shape, g), {rec["data"]: (ds, np.dtype(np.uint32)), rec["scale"]: (ss, sdt)}


def _check_layout_version(version: Any, where: str) -> None:
    if str(version) != str(layout.LAYOUT_VERSION):
        raise CheckpointError(
            f"{where}: packed with layout v{version}, this jax_fpx reads layout v{layout.LAYOUT_VERSION} "
            f"(the packed codes are not interchangeable); {_REQUANTIZE}"
        )


def _target_records(where: Any, records: Mapping[str, Any], target: Any) -> Optional[dict]:
    """The restore target flattened to ``{name: leaf}`` (None without one); every one of its
    parameters must be in the checkpoint's ``records``."""
    if target is None:
        return None
    tflat = flatten_params(target)
    missing = sorted(set(tflat) - set(records))
    if missing:
        raise CheckpointError(f"{where}: the restore target has parameter(s) the checkpoint lacks: {missing[:5]}")
    return tflat


def _check_against_target(name: str, rec: dict, target: Optional[Mapping[str, Any]]) -> None:
    if target is None or name not in target:
        return
    t = target[name]
    if isinstance(t, FPxWeight):
        if rec["kind"] != "fpx":
            raise CheckpointError(f"parameter {name!r}: the restore target wants an FPxWeight ({t}), the checkpoint has a dense tensor")
        fmt = _fmt_from(rec["fmt"], f"parameter {name!r}")
        got = (fmt, tuple(rec["shape"]), rec["group_size"])
        want = (t.fmt, tuple(t.shape), t.group_size)
        if got != want:
            raise CheckpointError(
                f"parameter {name!r}: checkpoint holds {fmt.name} shape={got[1]} group_size={got[2]}, "
                f"the restore target wants {t.fmt.name} shape={want[1]} group_size={want[2]}"
            )
    elif rec["kind"] == "fpx":
        raise CheckpointError(f"parameter {name!r}: the checkpoint holds a quantized weight, the restore target a dense {getattr(t, 'dtype', type(t).__name__)}{list(np.shape(t))}")


def _verify(name: str, tensor: str, arr: Any, rec: dict) -> None:
    want = (rec.get("checksum") or {}).get(tensor)
    if want is None:
        raise CheckpointError(f"tensor {tensor!r} of parameter {name!r} has no checksum (pass verify=False to load it unchecked)")
    got = checksum_hex(arr)
    if got != want:
        raise CheckpointError(
            f"tensor {tensor!r} of parameter {name!r}: checksum {got} != recorded {want}: the bytes are corrupted "
            f"(re-copy or re-save the checkpoint; verify=False skips this check)"
        )


# --- safetensors -------------------------------------------------------------------------------
def save_quantized(
    out_dir: Union[str, os.PathLike],
    params: Any,
    *,
    source_config: Optional[Mapping[str, Any]] = None,
    rules: Optional[Sequence[Any]] = None,
    progress: Optional[bool] = None,
) -> str:
    """Write ``params`` (with :class:`FPxWeight` leaves) to ``out_dir/model.safetensors``.

    Checksums are computed on the device each tensor lives on; tensors come to the host one at a
    time. ``source_config`` (the Hugging Face ``config.json``) is stored in the metadata and
    written as ``out_dir/config.json`` so the directory loads like the original. Returns the path.
    """
    from tqdm.auto import tqdm

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    flat = flatten_params(params)
    records: dict[str, dict] = {}
    tensors: dict[str, tuple] = {}
    for name, leaf in tqdm(flat.items(), desc="checksums", unit="tensor", leave=False, disable=not progress):
        rec, ts = _record(leaf, name, with_checksum=True)
        records[name] = rec
        for t, a in ts.items():
            tensors[t] = (np.dtype(a.dtype), tuple(np.shape(a)), (lambda a=a: np.asarray(jax.device_get(a))))
    meta = {
        "format": FORMAT_TAG,
        "format_version": str(FORMAT_VERSION),
        "layout_version": str(layout.LAYOUT_VERSION),
        "params": json.dumps(records),
        "rules": json.dumps([r.to_dict() if hasattr(r, "to_dict") else r for r in rules] if rules is not None else None),
        "source_config": json.dumps(dict(source_config) if source_config is not None else None),
    }
    path = os.path.join(out_dir, FILE_NAME)
    save_file(path, tensors, meta)
    if source_config is not None:
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(dict(source_config), f, indent=2)
    return path


def is_quantized_checkpoint(model_dir: Union[str, os.PathLike]) -> bool:
    path = os.path.join(os.fspath(model_dir), FILE_NAME)
    if not os.path.exists(path):
        return False
    from .safetensors_io import SafetensorsFile

    with SafetensorsFile(path) as f:
        return f.metadata.get("format") == FORMAT_TAG


def read_metadata(src: TensorDir) -> dict:
    meta = src.metadata
    where = src.path
    if meta.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{where}: not a jax_fpx quantized checkpoint (metadata format={meta.get('format')!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{where}: checkpoint format version {meta.get('format_version')}, this jax_fpx reads {FORMAT_VERSION}; {_REQUANTIZE}")
    _check_layout_version(meta.get("layout_version"), where)
    try:
        return {
            "params": json.loads(meta["params"]),
            "rules": json.loads(meta.get("rules", "null")),
            "source_config": json.loads(meta.get("source_config", "null")),
        }
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}: unreadable checkpoint metadata ({e})") from None


def load_quantized(
    model_dir: Union[str, os.PathLike],
    *,
    target: Any = None,
    verify: bool = True,
    device: Any = None,
    dtype: Any = None,
    progress: Optional[bool] = None,
) -> tuple[dict, dict]:
    """Load a :func:`save_quantized` checkpoint: ``(params, info)`` with ``info`` = rules, source config.

    Tensors stream one at a time from the memory-mapped file to ``device`` (default: the default
    device). ``target``: optional param tree (``FPxWeight`` / arrays / ``ShapeDtypeStruct``) the
    checkpoint must match (format, group size, logical shape; dense shapes); ``dtype``: cast dense
    float tensors to it. ``verify``: check each tensor's checksum on the device (default).
    """
    from tqdm.auto import tqdm

    src = TensorDir(model_dir)
    try:
        meta = read_metadata(src)
        records = meta["params"]
        tflat = _target_records(src.path, records, target)
        out = {}
        for name, rec in tqdm(records.items(), desc="load", unit="tensor", leave=False, disable=not progress):
            _check_against_target(name, rec, tflat)
            if rec.get("kind") == "fpx":
                (fmt, shape, g), want = _expected(rec, name)
                arrs = []
                for t, (suffix, dt) in want.items():
                    if t not in src:
                        raise CheckpointError(f"{src.path}: tensor {t!r} of parameter {name!r} is missing")
                    got_dt, got_shape = src.info(t)
                    if got_dt != dt or tuple(got_shape[-len(suffix):]) != suffix or len(got_shape) < len(suffix):
                        raise CheckpointError(
                            f"{src.path}: tensor {t!r} is {got_dt}{list(got_shape)}, but {fmt.name} shape={list(shape)} "
                            f"group_size={g} in layout v{layout.LAYOUT_VERSION} needs {dt}[...]+{list(suffix)}"
                        )
                    a = jax.device_put(src.get(t), device)
                    a.block_until_ready()
                    src.release(t)
                    if verify:
                        _verify(name, t, a, rec)
                    arrs.append(a)
                if arrs[0].shape[:-3] != arrs[1].shape[:-2]:
                    raise CheckpointError(f"{src.path}: parameter {name!r}: data batch axes {arrs[0].shape[:-3]} != scale batch axes {arrs[1].shape[:-2]}")
                out[name] = FPxWeight(arrs[0], arrs[1], fmt, shape, g)
            elif rec.get("kind") == "dense":
                t = rec["tensor"]
                if t not in src:
                    raise CheckpointError(f"{src.path}: tensor {t!r} (parameter {name!r}) is missing")
                if tflat is not None and name in tflat and tuple(np.shape(tflat[name])) != tuple(src.info(t)[1]):
                    raise CheckpointError(f"{src.path}: tensor {t!r} has shape {list(src.info(t)[1])}, the restore target wants {list(np.shape(tflat[name]))}")
                a = jax.device_put(src.get(t), device)
                a.block_until_ready()
                src.release(t)
                if verify:
                    _verify(name, t, a, rec)
                if dtype is not None and jnp.issubdtype(a.dtype, jnp.floating):
                    a = a.astype(dtype)
                out[name] = a
            else:
                raise CheckpointError(f"{src.path}: parameter {name!r} has an unknown record kind {rec.get('kind')!r}")
        return unflatten_params(out), {"rules": meta["rules"], "source_config": meta["source_config"]}
    finally:
        src.close()


# --- Orbax -------------------------------------------------------------------------------------
def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError("Orbax checkpoints need orbax-checkpoint (pip install orbax-checkpoint)") from None
    return ocp


def save_orbax(path: Union[str, os.PathLike], params: Any) -> None:
    """Save ``params`` with Orbax plus the same per-tensor records as :func:`save_quantized`.

    The directory holds two items: ``params`` (Orbax's standard PyTree) and ``fpx`` (JSON:
    format, group size, logical shape, layout version, on-device checksums). Restore with
    :func:`restore_orbax` -- it needs no target, and checks one if given.
    """
    ocp = _orbax()
    flat = flatten_params(params)
    records = {name: _record(leaf, name, with_checksum=True)[0] for name, leaf in flat.items()}
    meta = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION, "layout_version": layout.LAYOUT_VERSION, "params": records}
    arrays = unflatten_params({n: ({"data": l.data, "scale": l.scale} if isinstance(l, FPxWeight) else l) for n, l in flat.items()})
    ck = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    ck.save(os.path.abspath(os.fspath(path)), args=ocp.args.Composite(params=ocp.args.StandardSave(arrays), fpx=ocp.args.JsonSave(meta)))


def restore_orbax(path: Union[str, os.PathLike], target: Any = None, *, verify: bool = True) -> dict:
    """Restore a :func:`save_orbax` checkpoint (see :func:`load_quantized` for ``target``/``verify``).

    Leaves of ``target`` that carry a ``sharding`` place the restored arrays the same way.
    """
    ocp = _orbax()
    path = os.path.abspath(os.fspath(path))
    ck = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        meta = ck.restore(path, args=ocp.args.Composite(fpx=ocp.args.JsonRestore()))["fpx"]
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: no jax_fpx metadata item 'fpx' ({type(e).__name__}: {e}); was it written by jax_fpx.checkpoint.save_orbax?") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path}: not a jax_fpx Orbax checkpoint")
    _check_layout_version(meta.get("layout_version"), path)
    records = meta["params"]
    tflat = _target_records(path, records, target)
    for name, rec in records.items():
        _check_against_target(name, rec, tflat)
    raw = ck.restore(path, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]
    flat_raw = {}

    def walk(node, prefix):
        if isinstance(node, Mapping) and not (prefix in records):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            flat_raw[prefix] = node

    walk(raw, "")
    out = {}
    for name, rec in records.items():
        if name not in flat_raw:
            raise CheckpointError(f"{path}: parameter {name!r} is recorded but its arrays are missing")
        node = flat_raw[name]
        if rec["kind"] == "fpx":
            (fmt, shape, g), want = _expected(rec, name)
            arrs = []
            for leaf_key, (t, (suffix, dt)) in zip(("data", "scale"), want.items()):
                a = node.get(leaf_key) if isinstance(node, Mapping) else None
                if a is None:
                    raise CheckpointError(f"{path}: tensor {t!r} of parameter {name!r} is missing")
                if np.dtype(a.dtype) != dt or tuple(a.shape[-len(suffix):]) != suffix:
                    raise CheckpointError(f"{path}: tensor {t!r} is {a.dtype}{list(a.shape)}, {fmt.name} shape={list(shape)} group_size={g} needs {dt}[...]+{list(suffix)}")
                a = jnp.asarray(a)
                if verify:
                    _verify(name, t, a, rec)
                arrs.append(a)
            w = FPxWeight(arrs[0], arrs[1], fmt, shape, g)
        else:
            w = jnp.asarray(node)
            if verify:
                _verify(name, rec["tensor"], w, rec)
        t = tflat.get(name) if tflat is not None else None
        sh = getattr(t, "sharding", None) if not isinstance(t, FPxWeight) else getattr(t.data, "sharding", None)
        if sh is not None and not isinstance(w, FPxWeight):
            w = jax.device_put(w, sh)
        elif isinstance(t, FPxWeight) and sh is not None:
            w = FPxWeight(jax.device_put(w.data, t.data.sharding), jax.device_put(w.scale, t.scale.sharding), w.fmt, w.shape, w.group_size)
        out[name] = w
    return unflatten_params(out)

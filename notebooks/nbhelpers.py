"""Small helpers shared by the benchmark notebooks (paths, result files, tables, figures).

The measurements themselves come from the package (``jax_fpx.cli.bench``, ``jax_fpx.models``)
and the examples (``examples/llama.py``, ``examples/minilm.py``); this module only does the
bookkeeping a notebook needs around them.

Environment:
  JAX_FPX_NB_MODE   "small" (tiny CPU run, the default) or "full" (the GPU run)
  JAX_FPX_NB_OUT    directory for the JSON/PNG results (default: <repo>/benchmarks/results)
  JAX_FPX_PEAK_GBPS override the GPU's peak memory bandwidth in GB/s (default: from the table below)
"""

from __future__ import annotations

import datetime
import html
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

MODES = ("small", "full")


def repo_root(start: Optional[Path] = None) -> Path:
    """The repository root: the first directory at or above ``start`` (default: cwd) with examples/llama.py."""
    start = Path(start or Path.cwd()).resolve()
    for p in (start, *start.parents):
        if (p / "examples" / "llama.py").is_file() and (p / "jax_fpx").is_dir():
            return p
    here = Path(__file__).resolve().parent.parent
    if (here / "examples" / "llama.py").is_file():
        return here
    raise FileNotFoundError(f"cannot find the jax_fpx repository root above {start}")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"JAX_FPX_NB_MODE must be one of {MODES}, got {mode!r}")
    return mode


def out_dir() -> Path:
    """Results directory from ``JAX_FPX_NB_OUT`` (default ``<repo>/benchmarks/results``), created."""
    d = Path(os.environ.get("JAX_FPX_NB_OUT") or repo_root() / "benchmarks" / "results")
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    path = repo_root() / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"jax_fpx_example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def env_info() -> dict:
    """Device name, platform, versions and time: stored in every result JSON."""
    import jax

    import jax_fpx

    d = jax.devices()[0]
    return {
        "device": getattr(d, "device_kind", d.platform),
        "platform": d.platform,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(__import__("jaxlib"), "__version__", None),
        "jax_fpx_version": jax_fpx.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower() or "unknown"


def result_stem(notebook: str, mode: str, device: str) -> str:
    """``<notebook>_<device>`` (full mode) or ``<notebook>_<device>_small``: small runs never overwrite full ones."""
    return f"{notebook}_{slug(device)}" + ("" if mode == "full" else f"_{mode}")


def save_json(payload: dict, notebook: str, mode: str) -> Path:
    """Writes ``payload`` (which must hold ``device``) to ``<out>/<stem>.json``; returns the path."""
    path = out_dir() / (result_stem(notebook, mode, payload["device"]) + ".json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=_json_default)
    return path


def _json_default(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def shown(path) -> str:
    """``path`` relative to the repository when inside it (for printing), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(repo_root()))
    except ValueError:
        return str(path)


def png_path(notebook: str, mode: str, device: str, what: str) -> Path:
    return out_dir() / f"{result_stem(notebook, mode, device)}_{what}.png"


def show_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG and display it inline (works whatever the backend)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    show_png(path)
    return path


def show_png(path) -> None:
    try:
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    except ImportError:  # outside IPython: the file is there
        print(f"wrote {path}")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: Optional[str] = None):
    """An HTML table (displayed inline in Jupyter, plain text elsewhere)."""
    rows = [list(r) for r in rows]
    text = "\t".join(headers) + "\n" + "\n".join("\t".join(str(c) for c in r) for r in rows)
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(title)}</caption>" if title else ""
    markup = f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    try:
        from IPython.display import HTML, display

        class _Table(HTML):
            def __repr__(self):  # text/plain fallback
                return (title + "\n" if title else "") + text

        display(_Table(markup))
    except ImportError:
        print((title + "\n" if title else "") + text)


class Timer:
    """``with Timer("label"):`` prints the wall time of a block (helps tuning the full run)."""

    def __init__(self, label: str):
        self.label = label
        self.seconds = None

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        print(f"[{self.label}: {self.seconds:.1f} s]", flush=True)


# --- GEMM notebook ----------------------------------------------------------------------------
# Peak DRAM bandwidth (GB/s, vendor specs) by the device_kind JAX reports; the first match wins.
PEAK_GBPS = [
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # H100 SXM5 80GB HBM3
    ("GH200", 4000.0),  # before "H200": substring match
    ("H200", 4800.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),  # 40 GB SXM / PCIe
    ("L40S", 864.0),
    ("L4", 300.0),
    ("A10", 600.0),
    ("RTX 4090", 1008.0),
]


def peak_bandwidth_gbps(device: str) -> Optional[float]:
    """The device's peak memory bandwidth in GB/s (``JAX_FPX_PEAK_GBPS`` wins), or None if unknown."""
    if os.environ.get("JAX_FPX_PEAK_GBPS"):
        return float(os.environ["JAX_FPX_PEAK_GBPS"])
    for key, gbps in PEAK_GBPS:
        if key.lower() in device.lower():
            return gbps
    return None


def measure_read_bandwidth(nbytes: int, reps: int = 10) -> float:
    """GB/s of an XLA reduction over ``nbytes`` of uint32 (a practical read-bandwidth reference)."""
    import jax
    import jax.numpy as jnp

    from jax_fpx.cli.timing import median_seconds

    x = jnp.ones((max(nbytes // 4, 1024),), jnp.uint32)
    f = jax.jit(lambda a: jnp.sum(a, dtype=jnp.uint32))
    t = median_seconds(f, x, warmup=3, reps=reps)
    del x
    return nbytes / t / 1e9


# --- accuracy notebook ------------------------------------------------------------------------
def capture_dense_inputs(model, params, *args, mask=None) -> dict:
    """Inputs of every ``nn.Dense`` of an (eager) linen forward pass: ``{module_path: (tokens, in) f32}``.

    With ``mask`` (shape ``x.shape[:-1]``, e.g. the attention mask) only the real tokens are kept.
    """
    import flax.linen as nn
    import numpy as np

    acts: dict = {}

    def interceptor(next_fun, a, kw, context):
        mod = context.module
        if context.method_name == "__call__" and isinstance(mod, nn.Dense) and a:
            x = np.asarray(a[0], np.float32)
            if mask is not None and np.shape(mask) == x.shape[:-1]:
                x = x[np.asarray(mask) > 0]
            acts["/".join(mod.scope.path)] = x.reshape(-1, x.shape[-1])
        return next_fun(*a, **kw)

    with nn.intercept_methods(interceptor):
        model.apply({"params": params}, *args)
    return acts


def dense_kernels(params, prefix: str = "") -> dict:
    """``{module_path: kernel}`` for every 2-D ``kernel`` leaf of a linen param tree."""
    out = {}
    for k, v in params.items():
        path = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(dense_kernels(v, path))
        elif k == "kernel" and getattr(v, "ndim", 0) == 2:
            out[prefix] = v
    return out


def format_grid(fmt) -> "Any":
    """All finite values of an FPx format, sorted (via the package's own decoder)."""
    import jax.numpy as jnp
    import numpy as np

    import jax_fpx
    from jax_fpx.quantize import decode

    f = jax_fpx.get_format(fmt)
    vals = np.asarray(decode(jnp.arange(2**f.bits, dtype=jnp.uint32), f))
    return np.unique(vals[np.isfinite(vals)])

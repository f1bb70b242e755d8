"""Execute the benchmark notebooks (gemm_benchmark, llm_decode, accuracy) with nbclient.

    # the GPU run (results JSON/PNG under $OUT; executed notebooks written back in place and,
    # so that they come back from a remote machine, also to $OUT/notebooks):
    JAX_FPX_NB_MODE=full JAX_FPX_NB_OUT=$OUT python benchmarks/run_notebooks.py --inplace --out-dir $OUT/notebooks
    # small CPU run into a scratch directory:
    python benchmarks/run_notebooks.py --mode small --out-dir /tmp/nb --results /tmp/nb/results

Each notebook runs in a fresh kernel started with *this* interpreter (a kernelspec written to a
temporary JUPYTER_PATH, so carried packages on PYTHONPATH and the current venv are what the
kernel sees), with the repo's notebooks/ directory as its working directory. The mode and the
results directory reach the notebooks through JAX_FPX_NB_MODE / JAX_FPX_NB_OUT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = ("gemm_benchmark", "llm_decode", "accuracy")
KERNEL_NAME = "python3"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": KERNEL_NAME}


@contextlib.contextmanager
def python_kernel():
    """Makes kernel ``python3`` run ``sys.executable`` (a kernelspec in a temporary JUPYTER_PATH entry).

    The kernel then sees this interpreter's packages (and, PYTHONPATH being inherited, any carried
    wheels), whatever other ``python3`` kernelspec is installed, or none.
    """
    import ipykernel  # noqa: F401  (the kernel process needs it importable with this interpreter)

    old = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="jax_fpx_kernels_") as d:
        spec_dir = Path(d) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": KERNELSPEC["display_name"],
            "language": "python",
            "metadata": {"debugger": False},
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
        os.environ["JUPYTER_PATH"] = d + (os.pathsep + old if old else "")
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def run_notebooks(
    names: Sequence[str] = NOTEBOOKS,
    mode: Optional[str] = None,
    *,
    out_dir: Optional[os.PathLike] = None,
    inplace: bool = False,
    results_dir: Optional[os.PathLike] = None,
    timeout: int = 3600,
    log=None,
) -> dict:
    """Executes the notebooks; returns ``{name: {"seconds", "ok", "error", "paths"}}``.

    ``mode``: ``"small"`` / ``"full"`` (default: ``$JAX_FPX_NB_MODE`` or small). Executed notebooks go
    back in place (``inplace``) and/or to ``out_dir`` (neither: not written). ``results_dir`` sets the
    kernels' ``JAX_FPX_NB_OUT`` (default: inherited, else the notebooks' benchmarks/results).
    The caller's environment is left as it was.
    """
    log = log or (lambda msg: print(msg, flush=True))
    mode = mode or os.environ.get("JAX_FPX_NB_MODE", "small")
    if mode not in ("small", "full"):
        raise ValueError(f"mode must be 'small' or 'full', got {mode!r}")
    env = dict(os.environ, JAX_FPX_NB_MODE=mode)  # the kernels' environment (PYTHONPATH included)
    if results_dir is not None:
        env["JAX_FPX_NB_OUT"] = str(Path(results_dir).resolve())
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiets a debugger warning at kernel start
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    report = {}
    with python_kernel():
        for name in names:
            report[name] = _run_one(name, mode, env, out_dir, inplace, timeout, log)
    return report


def _run_one(name, mode, env, out_dir, inplace, timeout, log) -> dict:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    src = NB_DIR / f"{name}.ipynb"
    if not src.is_file():
        raise FileNotFoundError(src)
    nb = nbformat.read(src, as_version=4)
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    clock = {"t": time.perf_counter(), "i": 0}

    def on_cell_executed(cell=None, cell_index=None, execute_reply=None, **_):
        now = time.perf_counter()
        clock["i"] += 1
        first = (cell.source.strip().splitlines() or [""])[0][:60]
        log(f"[{name}] cell {clock['i']}/{n_code} done in {now - clock['t']:.1f} s: {first}")
        clock["t"] = now

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(NB_DIR)}},  # the kernel's working directory
        allow_errors=False,
        record_timing=True,
        on_cell_executed=on_cell_executed,
    )
    log(f"[{name}] executing ({mode} mode) ...")
    t0 = clock["t"] = time.perf_counter()
    err = None
    try:
        client.execute(env=env)
    except CellExecutionError as e:
        err = str(e)
    except Exception as e:  # kernel died, timeout, ...
        err = f"{type(e).__name__}: {e}"
    dt = time.perf_counter() - t0
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    dests = ([src] if inplace else []) + ([Path(out_dir) / src.name] if out_dir is not None else [])
    for dest in dests:
        nbformat.write(nb, dest)
    log(f"[{name}] {'ok' if err is None else 'FAILED'} in {dt:.1f} s" + "".join(f" -> {d}" for d in dests))
    if err:
        log(re.sub(r"\x1b\[[0-9;]*m", "", err)[-3000:])
    return {"seconds": round(dt, 1), "ok": err is None, "error": err, "paths": [str(d) for d in dests]}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("small", "full"), default=None, help="default: $JAX_FPX_NB_MODE or small")
    ap.add_argument("--inplace", action="store_true", help="write the executed notebooks back to notebooks/")
    ap.add_argument("--out-dir", default=None, help="(also) write the executed notebooks to this directory")
    ap.add_argument("--results", default=None, help="results directory (sets JAX_FPX_NB_OUT; default: $JAX_FPX_NB_OUT "
                                                     "or benchmarks/results)")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(NOTEBOOKS)}")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    a = ap.parse_args(argv)
    names = a.only.split(",") if a.only else list(NOTEBOOKS)
    bad = [n for n in names if n not in NOTEBOOKS]
    if bad:
        ap.error(f"unknown notebook(s) {bad}; choose from {NOTEBOOKS}")
    t0 = time.perf_counter()
    rep = run_notebooks(names, a.mode, out_dir=a.out_dir, inplace=a.inplace, results_dir=a.results, timeout=a.timeout)
    total = time.perf_counter() - t0
    print("summary: " + ", ".join(f"{n} {'ok' if r['ok'] else 'FAILED'} {r['seconds']:.0f} s" for n, r in rep.items())
          + f"; total {total:.0f} s")
    return 0 if all(r["ok"] for r in rep.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

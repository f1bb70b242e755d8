"""A stacked FPx MLP under ``lax.scan`` vs unrolled, timed in the same run (issue 7, item 3).

    python benchmarks/scan_bench.py                    # GPU: d=8192, 6 layers, M in {1, 16}
    python benchmarks/scan_bench.py --d 1024 --m 4     # quick CPU run
    XLA_FLAGS=--xla_gpu_enable_dynamic_slice_fusion=true python benchmarks/scan_bench.py
    python benchmarks/scan_bench.py --compare-dsf      # both of the above, one after the other
    python benchmarks/scan_bench.py --sharded          # + tensor parallel over all local GPUs

Variants (same stacked weights, quantized once):
  scan       ``lax.scan`` over an FPxWeight stacked on a leading layer axis (what ``nn.scan``
             builds): XLA dynamic-slices layer i out of the stack each iteration.
  unrolled   a Python loop over 6 separately allocated FPxWeight (the no-slice ideal).
  unrolled_stack  a Python loop over static slices ``w[i]`` of the stack.

Prints one JSON row per (variant, M) with ``ratio_vs_unrolled`` and, for the scan variant,
what feeds the ``jax_fpx_linear`` custom call in the optimized HLO: ``direct`` (the stack's
buffer is addressed in place, e.g. GPU dynamic-slice fusion) or ``copy`` (a dynamic-slice
fusion/copy materializes the layer's weights every iteration).

Each timing: warm-up, then the median over ``--iters`` runs. The MLP is
``h = gelu(linear(h, w_i))`` (d x d layers), bf16 activations.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

# --- optimized-HLO inspection (also used by tests/test_transforms.py) ------------------------
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")


def _split_type(rhs: str) -> tuple[str, str]:
    """'(a, b) op(...)' or 'f32[2]{0} op(...)' -> (type, rest)."""
    if rhs.startswith("("):
        depth = 0
        for i, c in enumerate(rhs):
            depth += c == "("
            depth -= c == ")"
            if depth == 0:
                return rhs[: i + 1], rhs[i + 1 :].strip()
    t, _, rest = rhs.partition(" ")
    return t, rest


def parse_hlo(text: str) -> dict:
    """{computation: {instr: (opcode, [operands], attrs)}} from ``compile().as_text()``."""
    comps: dict = {}
    cur = None
    for line in text.splitlines():
        s = line.strip()
        if s.endswith("{") and "->" in s and "=" not in s.split("(")[0]:
            name = s.split()[1] if s.startswith("ENTRY") else s.split()[0]
            cur = comps.setdefault(name.lstrip("%"), {})
            continue
        if s == "}":
            cur = None
            continue
        m = _INSTR.match(line)
        if cur is None or not m:
            continue
        _, rest = _split_type(m.group(2))
        op, _, tail = rest.partition("(")
        depth, j = 1, 0
        for j, c in enumerate(tail):
            depth += c == "("
            depth -= c == ")"
            if depth == 0:
                break
        operands = re.findall(r"%([\w.\-]+)", tail[:j])
        cur[m.group(1)] = (op.strip(), operands, tail[j + 1 :])
    return comps


def custom_call_feeds(text: str, target: str = "jax_fpx_linear") -> list[dict]:
    """For each ``target`` custom call: its computation and how each operand is produced.

    Operand kinds: ``direct`` (parameter / get-tuple-element, possibly through bitcasts: the
    buffer is used in place), ``copy:<how>`` (a fusion / copy / dynamic-slice materializes a
    new buffer first). A call inside a fusion computation that also holds dynamic-slice
    ops is reported as ``in_fusion`` (GPU dynamic-slice fusion: addressed in place).
    """
    comps = parse_hlo(text)
    callers = {}
    for cname, instrs in comps.items():
        for iname, (op, _, attrs) in instrs.items():
            for callee in re.findall(r"calls=%([\w.\-]+)", attrs):
                callers[callee] = (cname, iname, op, attrs)
    out = []
    for cname, instrs in comps.items():
        for iname, (op, operands, attrs) in instrs.items():
            if op != "custom-call" or f'custom_call_target="{target}"' not in attrs:
                continue
            feeds = []
            for o in operands:
                src, seen = o, 0
                while src in instrs and instrs[src][0] == "bitcast" and seen < 8:
                    src, seen = instrs[src][1][0], seen + 1
                sop = instrs[src][0] if src in instrs else "?"
                if sop in ("parameter", "get-tuple-element", "constant"):
                    kind = "direct"
                elif sop == "fusion":
                    called = re.findall(r"calls=%([\w.\-]+)", instrs[src][2])
                    body = comps.get(called[0], {}) if called else {}
                    has_ds = any(v[0] == "dynamic-slice" for v in body.values())
                    kind = "copy:dynamic-slice-fusion" if has_ds else "copy:fusion"
                else:
                    kind = f"copy:{sop}" if sop in ("copy", "dynamic-slice", "slice") else sop
                feeds.append(kind)
            caller = callers.get(cname)
            in_fusion = bool(caller and caller[2] == "fusion")
            has_ds_here = any(v[0] == "dynamic-slice" for v in instrs.values())
            out.append(
                {
                    "computation": cname,
                    "instruction": iname,
                    "operands": feeds,
                    "in_fusion": in_fusion,
                    "fusion_has_dynamic_slice": in_fusion and has_ds_here,
                    "fusion_config": caller[3][:200] if in_fusion else "",
                }
            )
    return out


def weights_copied(text: str) -> bool:
    """True if any jax_fpx_linear call gets its packed data (operand 1) or scale (2) from a copy."""
    for c in custom_call_feeds(text):
        if c["fusion_has_dynamic_slice"]:
            continue
        if any(k.startswith("copy") for k in c["operands"][1:3]):
            return True
    return False


# --- benchmark -------------------------------------------------------------------------------
def _time(fn, args, iters: int) -> float:
    """Median microseconds of ``fn(*args)`` after 3 warm-up calls (jax_fpx.cli.timing's timer)."""
    from jax_fpx.cli.timing import median_seconds

    return median_seconds(fn, *args, warmup=3, reps=iters) * 1e6


def _mlp_fns(layer):
    """(scan over a stacked weight, unrolled over a list of weights) of the same MLP."""
    import jax

    @jax.jit
    def scan_mlp(h, ws):
        return jax.lax.scan(lambda h, w: (layer(h, w), None), h, ws)[0]

    @jax.jit
    def unrolled(h, ws):
        for w in ws:
            h = layer(h, w)
        return h

    return scan_mlp, unrolled


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=None, help="hidden size (default: 8192 on GPU, 1024 on CPU)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--m", type=int, nargs="*", default=None, help="token counts (default: 1 16)")
    p.add_argument("--fmt", default="fp6_e3m2")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--impl", default="auto")
    p.add_argument("--dump-hlo", default=None, help="write the scan variant's optimized HLO here")
    p.add_argument("--out", default=None, help="append JSON rows to this file")
    p.add_argument(
        "--compare-dsf",
        action="store_true",
        help="also run this benchmark in a subprocess with XLA_FLAGS+=--xla_gpu_enable_dynamic_slice_fusion=true",
    )
    p.add_argument(
        "--sharded",
        action="store_true",
        help="also time the MLP tensor-parallel over all local devices (plain jax_fpx.linear on "
        "sharded weights: column/row-parallel pairs unrolled, column-parallel under scan) vs one device",
    )
    a = p.parse_args(argv)
    if a.compare_dsf:
        import os
        import subprocess

        rest = [v for v in (argv if argv is not None else sys.argv[1:]) if v != "--compare-dsf"]
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_gpu_enable_dynamic_slice_fusion=true").strip()
        print("# --- default XLA flags ---", flush=True)
        rc = subprocess.call([sys.executable, __file__, *rest])
        print("# --- XLA_FLAGS=" + env["XLA_FLAGS"] + " ---", flush=True)
        return rc or subprocess.call([sys.executable, __file__, *rest], env=env)

    global jax
    import jax
    import jax.numpy as jnp

    import jax_fpx

    backend = jax.default_backend()
    d = a.d or (8192 if backend == "gpu" else 1024)
    ms = a.m or [1, 16]
    L = a.layers
    keys = jax.random.split(jax.random.key(0), L)
    kernels = jnp.stack([jax.random.normal(k, (d, d), jnp.float32) / d**0.5 for k in keys])
    stack = jax_fpx.quantize(kernels, a.fmt)  # leaves with a leading L axis
    layers = [jax.tree.map(lambda t, i=i: jnp.array(t[i]), stack) for i in range(L)]  # own buffers
    del kernels

    def layer(h, w):
        return jax.nn.gelu(jax_fpx.linear(h, w, impl=a.impl))

    scan_mlp, unrolled = _mlp_fns(layer)

    @jax.jit
    def unrolled_stack(h, ws):
        for i in range(L):
            h = layer(h, jax.tree.map(lambda t: t[i], ws))
        return h

    dev = str(jax.devices()[0].device_kind)
    rows = []
    for m in ms:
        x = jax.random.normal(jax.random.key(1), (m, d), jnp.float32).astype(jnp.bfloat16)
        hlo = scan_mlp.lower(x, stack).compile().as_text()
        feeds = custom_call_feeds(hlo)
        if a.dump_hlo:
            with open(f"{a.dump_hlo}.m{m}.txt" if len(ms) > 1 else a.dump_hlo, "w") as f:
                f.write(hlo)
        y_s = scan_mlp(x, stack)
        y_u = unrolled(x, layers)
        same = bool(jnp.all(y_s == y_u))
        t_u = _time(unrolled, (x, layers), a.iters)
        t_s = _time(scan_mlp, (x, stack), a.iters)
        t_us = _time(unrolled_stack, (x, stack), a.iters)
        wbytes = stack.nbytes
        for method, us in (("unrolled", t_u), ("scan", t_s), ("unrolled_stack", t_us)):
            row = {
                "method": method,
                "M": m,
                "d": d,
                "layers": L,
                "fmt": a.fmt,
                "us": round(us, 2),
                "ratio_vs_unrolled": round(us / t_u, 4),
                "weight_GBps": round(wbytes / us / 1e3, 1),
                "device": dev,
                "jax_version": jax.__version__,
            }
            if method == "scan":
                row["custom_calls_in_hlo"] = len(feeds)
                row["scan_weights_copied"] = weights_copied(hlo) if feeds else None
                row["custom_call_feeds"] = feeds[:1]
                row["scan_equals_unrolled"] = same
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not feeds:
            print(
                f"# note: no jax_fpx_linear custom call in the scan HLO at M={m} "
                "(non-kernel path: CUDA kernel not built, or M above dispatch.GPU_KERNEL_MAX_M)",
                file=sys.stderr,
            )
    if a.sharded:
        rows += _sharded_rows(a, stack, layers, layer, ms, d, L, dev, custom_call_feeds)
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    for m in ms:
        s = next(r for r in rows if r["method"] == "scan" and r["M"] == m)
        print(
            f"M={m}: scan/unrolled = {s['ratio_vs_unrolled']:.3f} "
            f"(goal <= 1.10); weights copied per iteration: {s['scan_weights_copied']}"
        )
    return 0


def _sharded_rows(a, stack, layers, layer, ms, d, L, dev, feeds_fn):
    """Tensor parallel over every local device vs the same MLP on device 0."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    from jax_fpx import sharding as S

    n = jax.device_count()
    if n < 2:
        print("# --sharded: only one device; skipped", file=sys.stderr)
        return []
    mesh = jax.make_mesh((n,), ("model",), axis_types=(AxisType.Auto,))
    # Megatron pairs: column-parallel (N split) then row-parallel (K split, partials all-reduced)
    tp_layers = [S.shard_weight(w, mesh, None, "model") if i % 2 == 0 else S.shard_weight(w, mesh, "model", None)
                 for i, w in enumerate(layers)]
    tp_stack = jax.device_put(stack, jax_fpx_stack_sharding(stack, mesh))

    scan_mlp, unrolled = _mlp_fns(layer)

    rows = []
    for m in ms:
        x = jax.random.normal(jax.random.key(1), (m, d), jnp.float32).astype(jnp.bfloat16)
        xr = jax.device_put(x, NamedSharding(mesh, P()))
        ref = unrolled(x, layers)
        t1 = _time(unrolled, (x, layers), a.iters)
        for method, fn, args in (("tp_unrolled_colrow", unrolled, (xr, tp_layers)), ("tp_scan_col", scan_mlp, (xr, tp_stack))):
            y = fn(*args)
            err = float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref.astype(jnp.float32))))
            hlo = fn.lower(*args).compile().as_text()
            us = _time(fn, args, a.iters)
            row = {
                "method": method, "M": m, "d": d, "layers": L, "fmt": a.fmt, "devices": n, "us": round(us, 2),
                "us_one_device": round(t1, 2), "speedup_vs_one_device": round(t1 / us, 3),
                "max_abs_err_vs_one_device": err, "max_abs_ref": float(jnp.max(jnp.abs(ref.astype(jnp.float32)))),
                "weights_all_gathered": "u32" in " ".join(l for l in hlo.splitlines() if "all-gather" in l),
                "custom_call_operands": [c["operands"] for c in feeds_fn(hlo)][:2],
                "device": dev, "jax_version": jax.__version__,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def jax_fpx_stack_sharding(stack, mesh):
    """NamedShardings for a layer-stacked FPxWeight split along N over 'model'."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    import jax_fpx

    return jax_fpx.FPxWeight(
        NamedSharding(mesh, P(None, "model", None, None)), NamedSharding(mesh, P(None, "model", None)),
        stack.fmt, stack.shape, stack.group_size,
    )


if __name__ == "__main__":
    sys.exit(main())

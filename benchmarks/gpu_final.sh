#!/bin/bash
# End-of-session H100 run (the lead's): build, GPU checks of the newest code on jax 0.11, then
# the notebooks in full mode and the scan ratio. Results in $OUT/results.tgz (the device returns
# at most 8 files). Carry the nbclient/ipykernel wheels in .whl (see notebooks/README.md).
# usage: bash benchmarks/gpu_final.sh [decode|gemm]   (default: both; each fits one 10-min call)
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; R=$OUT/r; mkdir -p $R/notebooks
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv | tee $R/gpu.txt
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -e . --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90 \
  > $R/build.log 2>&1 || { tail -40 $R/build.log; exit 1; }
echo "build $(( $(date +%s) - t0 )) s"
timeout 70 python3 -m pytest -q tests/test_fallback.py 2>&1 | tee $R/pytest.log | tail -3
nb() {  # notebook, seconds
  timeout "$2" env JAX_FPX_NB_MODE=full JAX_FPX_NB_OUT=$R XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 \
    python3 benchmarks/run_notebooks.py --only "$1" --out-dir $R/notebooks 2>&1 | tee $R/nb_$1.log | tail -15
  tar czf $OUT/results.tgz -C $OUT r
}
[ "$1" != "gemm" ] && nb llm_decode 300
[ "$1" != "decode" ] && nb gemm_benchmark 420
if [ "$1" != "gemm" ]; then
  timeout 50 python3 benchmarks/scan_bench.py --m 1 16 --iters 10 --out $R/scan_bench_h100.jsonl 2>&1 | tee $R/scan.log | tail -4
fi
echo "total $(( $(date +%s) - t0 )) s"
tar czf $OUT/results.tgz -C $OUT r

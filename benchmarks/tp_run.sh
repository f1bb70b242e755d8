#!/bin/bash
# One multi-GPU device call for issue 9 (nvidia-h100-x2): build, the TP tests on real GPUs,
# the sharded GEMM benchmark, 70B-shaped FP6 decode on 1 vs 2 GPUs at batch 1 and 16.
# usage: bash benchmarks/tp_run.sh   (results and logs in $OUT)
set -o pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv | tee $OUT/gpu.txt
nvidia-smi topo -m > $OUT/topo.txt 2>&1
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -e . --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90 \
  > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
echo "build $(( $(date +%s) - t0 )) s"
timeout 150 python3 -m pytest -q -rs tests/test_llama_tp.py tests/test_sharding.py 2>&1 | tee $OUT/pytest_tp.log | tail -6
timeout 120 python3 benchmarks/tp_gemm_bench.py --out $OUT/tp_gemm_h100x2.json 2>&1 | tee $OUT/tp_gemm.log | tail -26
echo "t=$(( $(date +%s) - t0 )) s"
for b in 1 16; do for tp in 2 1; do
  timeout 110 python3 examples/llama.py --size 70b --variants fp6 --tp $tp --batch $b --steps 32 --repeats 2 \
    --json $OUT/llama70b_tp${tp}_b${b}.json 2>&1 | tail -3
  echo "t=$(( $(date +%s) - t0 )) s"
done; done
timeout 100 python3 examples/llama.py --size 8b --tp 2 --batch 1 --steps 64 --json $OUT/llama8b_tp2_b1.json 2>&1 | tail -4
echo "total $(( $(date +%s) - t0 )) s"

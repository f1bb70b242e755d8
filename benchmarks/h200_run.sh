#!/usr/bin/env bash
# One device call on the H200 (issue 14): GPU tests, kernel check, compute-sanitizer, ncu, decode benchmark.
# Usage: bash benchmarks/h200_run.sh MODE [python -m jax_fpx bench args]   MODE: check | quick | bench | ncu ;
# results under $OUT. E.g. bench --batches 1,2,4,8,16,32,64 --methods xla_bf16,cublas_fp16,fp6_e3m2 --out $OUT
# Uses a prebuilt extension in jax_fpx/ when one was carried (built off-device with the default 80;90
# architectures), else builds for sm_90 here.
set -u
mode=${1:-check}; shift || true
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16 XLA_PYTHON_CLIENT_MEM_FRACTION=0.75 PYTHONPATH=$PWD
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
if ! python3 -c "import jax_fpx._jax_fpx" 2>/dev/null; then
  rm -f jax_fpx/_jax_fpx*.so
  python3 -m pip install --no-build-isolation --no-deps -e . --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90 \
    > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
fi
python3 -c "import jax, jax_fpx._ffi as f; print(jax.__version__, jax.devices(), 'cuda built', f.cuda_built())"
echo "setup $(( $(date +%s) - t0 )) s"
if [ "$mode" = check ]; then
  timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu_linear.py tests/test_fallback.py > "$OUT/gpu_tests.log" 2>&1
  tail -3 "$OUT/gpu_tests.log"; echo "tests $(( $(date +%s) - t0 )) s"
  timeout 100 python3 benchmarks/kernel_check.py > "$OUT/kernel_check.log" 2>&1; echo "kernel_check rc=$?"
  grep -E "BAD|SUMMARY" "$OUT/kernel_check.log" | tail -5; echo "check $(( $(date +%s) - t0 )) s"
  which compute-sanitizer ncu
  timeout 90 compute-sanitizer --tool memcheck python3 benchmarks/kernel_check.py --small > "$OUT/memcheck.log" 2>&1
  grep -E "ERROR SUMMARY|SUMMARY" "$OUT/memcheck.log" | tail -2
  timeout 80 compute-sanitizer --tool racecheck --racecheck-report hazard python3 benchmarks/ncu_one.py 1000 300 5 fp6_e3m2 > "$OUT/racecheck.log" 2>&1
  grep -E "RACECHECK SUMMARY|ERROR SUMMARY" "$OUT/racecheck.log" | tail -2
  timeout 40 compute-sanitizer --tool synccheck python3 benchmarks/ncu_one.py 384 1536 3 fp4_e2m1 > "$OUT/synccheck.log" 2>&1
  grep -E "ERROR SUMMARY" "$OUT/synccheck.log" | tail -1
  echo "sanitizers $(( $(date +%s) - t0 )) s"
fi
if [ "$mode" = ncu ] || [ "$mode" = check ]; then
  timeout 90 ncu --kernel-name regex:DecodeGemm --launch-skip 3 --launch-count 1 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section InstructionStats --section WarpStateStats --section LaunchStats \
    --section Occupancy env XLA_PYTHON_CLIENT_PREALLOCATE=false python3 benchmarks/ncu_one.py 8192 28672 1 fp6_e3m2 > "$OUT/ncu_m1.txt" 2>&1
  grep -E "Duration|DRAM Throughput|Memory Throughput|Executed Ipc|Issue Slots|Registers Per|Warp Cycles Per Issued" "$OUT/ncu_m1.txt" | head -12
fi
if [ "$mode" = quick ]; then  # a kernel change: correctness subset + sanitizers, then the benchmark with the given args
  timeout 100 python3 benchmarks/kernel_check.py --small > "$OUT/kernel_check.log" 2>&1; echo "kernel_check rc=$?"
  grep -E "BAD|SUMMARY" "$OUT/kernel_check.log" | tail -5
  timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu_linear.py -k "stream_k or misaligned or batching" > "$OUT/gpu_tests.log" 2>&1
  tail -2 "$OUT/gpu_tests.log"; echo "tests $(( $(date +%s) - t0 )) s"
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 60 compute-sanitizer --tool memcheck python3 benchmarks/ncu_one.py 1000 3000 9 fp6_e3m2 > "$OUT/memcheck.log" 2>&1
  grep -E "rel err|ERROR SUMMARY" "$OUT/memcheck.log" | tail -2
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 60 compute-sanitizer --tool racecheck --racecheck-report hazard python3 benchmarks/ncu_one.py 4096 512 3 fp4_e2m1 > "$OUT/racecheck.log" 2>&1
  grep -E "rel err|RACECHECK SUMMARY" "$OUT/racecheck.log" | tail -2
fi
if [ "$mode" = bench ] || [ "$mode" = quick ]; then
  timeout ${BENCH_S:-530} python3 -m jax_fpx bench "$@"
fi
echo "total $(( $(date +%s) - t0 )) s"

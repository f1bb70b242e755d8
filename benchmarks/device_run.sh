#!/bin/bash
# One device call: build (sm_90 only, faster), GPU tests, sanitizer, benchmarks. Logs to $OUT.
# usage: bash benchmarks/device_run.sh "<pytest args or SKIP>" "<bench args or SKIP>" [sanitize]
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv | tee $OUT/gpu.txt
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -e . --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES=90 \
  --config-settings=build.verbose=false > $OUT/build.log 2>&1 || { tail -50 $OUT/build.log; exit 1; }
echo "build $(( $(date +%s) - t0 )) s"
if [ "$1" != "SKIP" ]; then
  timeout 420 python3 -m pytest -q -x tests/test_gpu_linear.py ${PYTEST_K:+-k "$PYTEST_K"} $1 2>&1 | tee $OUT/pytest.log | tail -25
fi
if [ "$3" == "sanitize" ]; then
  # memcheck over every case; racecheck (slow) over the shared-memory tiled kernel's cases only
  timeout 170 compute-sanitizer --tool memcheck --target-processes all python3 benchmarks/sanitize_case.py > $OUT/sanitize_memcheck.log 2>&1
  echo "sanitizer memcheck rc=$?"; tail -3 $OUT/sanitize_memcheck.log
  SANITIZE_ONLY=tiled timeout 130 compute-sanitizer --tool racecheck --target-processes all python3 benchmarks/sanitize_case.py > $OUT/sanitize_racecheck.log 2>&1
  echo "sanitizer racecheck rc=$?"; tail -3 $OUT/sanitize_racecheck.log
fi
if [ "$2" != "SKIP" ]; then
  python3 -m jax_fpx bench $2 --out $OUT 2>&1 | tee $OUT/bench.log | tail -80
fi
echo "total $(( $(date +%s) - t0 )) s"
if [ -n "$NCU" ]; then
  SO=$(python3 -c "import jax_fpx._jax_fpx as m; print(m.__file__)")
  for f in ${SASS_FUNCS:-_ZN7jax_fpx4cuda13FpxGemmKernelILi3ELi2ELb0ELi1ELi4EEEvNS0_10GemmParamsE}; do
    cuobjdump -sass -fun $f $SO > $OUT/$(echo $f | md5sum | cut -c1-8).sass 2>&1
  done
  timeout 240 ncu --kernel-name regex:FpxGemm --launch-count ${NCU_COUNT:-3} --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats \
    --metrics smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_branch_resolving_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__inst_executed.sum,smsp__average_warps_issue_stalled_tex_throttle_per_issue_active.ratio \
    python3 benchmarks/ncu_case.py > $OUT/ncu.txt 2>&1; echo "ncu rc=$?"
  grep -E "FpxGemm|stalled|inst_executed|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Grid Size|Stall|Issued Warp|No Eligible|Eligible Warps|Theoretical Occ" $OUT/ncu.txt | head -80
fi

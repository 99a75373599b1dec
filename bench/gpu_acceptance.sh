#!/usr/bin/env bash
# Everything the GPU machine is needed for, in one go (the device tool's $OUT gets the results):
#   1. kernel tests compiled on the GPU + the acceptance table  (bench/check_gpu.py)
#   2. the scoring grid: seed / torch / torch_compile / triton at S=300, D_h=4096, fp32 and bf16
#   3. end to end through the real server on loopback, N = 1 vs N = 64
#   profile: launch-by-launch times against cuBLAS / SDPA with a block-size sweep
#   compile: the torch_compile provider (slow to compile) at B x N = 8 x 64
# Each step has its own time limit so that a slow one cannot lose the others' results; after each
# step everything so far is packed into OUTDIR.tgz (the device tool returns at most 8 files).
#   bash bench/gpu_acceptance.sh OUTDIR [steps...]       steps: check score e2e profile compile
#                                                        (default: check score e2e)
# check compiles every kernel variant and autotune config of three plans on a fresh machine
# (minutes), so give it a device command of its own; later steps reuse triton's on-disk cache.
# Limits and grids can be narrowed from the environment: T_CHECK T_SCORE T_E2E (seconds),
# BN (scoring shapes, e.g. "8x64 32x64"), PROVIDERS, CONCURRENCY; TGZ (the archive's path).
# Runs from any directory: OUTDIR is taken from the caller's, the steps run in the checkout.
set -u
OUT=${1:?usage: bench/gpu_acceptance.sh OUTDIR [check score e2e]}
shift
STEPS=${*:-check score e2e}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TGZ=${TGZ:-$OUT.tgz}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$OUT/nvidia-smi.csv"
python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
# kernels/ is energy_rerank.kernels only once the project is installed; the device has no
# internet, so no build isolation (its image has setuptools and wheel) and no dependencies
python3 -c "import energy_rerank.kernels" 2>/dev/null ||
  python3 -m pip install -q -e . --no-deps --no-build-isolation || { echo "could not install the project"; exit 1; }
for step in $STEPS; do
  case $step in
    check) timeout "${T_CHECK:-540}" python3 bench/check_gpu.py --out "$OUT" 2>&1 | tee "$OUT/check_gpu.log" ;;
    score) timeout "${T_SCORE:-300}" python3 bench/latency.py --device cuda --parts score --out "$OUT/bench" \
             --providers ${PROVIDERS:-seed torch torch_compile triton triton_fused triton_fused_cublas triton_layered} ${BN:+--bn $BN} 2>&1 | tee "$OUT/bench_score.log" ;;
    e2e)   timeout "${T_E2E:-240}" python3 bench/latency.py --device cuda --parts e2e --out "$OUT/e2e" \
             --concurrency ${CONCURRENCY:-1 4 16 64} --e2e-requests 20 2>&1 | tee "$OUT/bench_e2e.log" ;;
    profile) timeout "${T_PROFILE:-300}" python3 bench/profile_kernels.py --dtype bf16 --bn 8x64 32x64 --sweep \
             --out "$OUT" 2>&1 | tee "$OUT/profile.log" ;;
    compile) timeout "${T_COMPILE:-200}" python3 bench/latency.py --device cuda --parts score --out "$OUT/compile" \
             --providers torch_compile --bn 8x64 2>&1 | tee "$OUT/bench_compile.log" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  tar czf "$TGZ" -C "$(dirname "$OUT")" "$(basename "$OUT")"
done

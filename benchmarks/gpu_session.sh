#!/usr/bin/env bash
# One prepared run on a lent GPU machine (device time is short): build _C there, run the GPU tests,
# compute-sanitizer on the CUDA kernels, then the quick benchmarks. Logs and results go to $OUT
# (or ./gpu-out), to be committed under benchmarks/results/<gpu>/ with their raw logs.
#   bash benchmarks/gpu_session.sh [--full]     (--full: the whole benchmark sweep instead of --quick)
set -uo pipefail
cd "$(dirname "$0")/.."
FINAL=${OUT:-gpu-out}
OUT=$FINAL/run  # packed into $FINAL/gpu-run.tar.gz at the end (the device tool returns at most 8 files)
mkdir -p "$OUT"
QUICK=--quick
[ "${1:-}" = "--full" ] && QUICK=

{ nvidia-smi; python -c "import torch, triton; print(torch.__version__, triton.__version__)"; } >"$OUT/env.log" 2>&1
DEEPFUSE_BUILD_JOBS=16 pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python -m pytest -q -m gpu -p no:cacheprovider tests >"$OUT/test-gpu.log" 2>&1; echo "gpu tests rc=$?" | tee -a "$OUT/summary.log"
tail -5 "$OUT/test-gpu.log" >>"$OUT/summary.log"
compute-sanitizer --tool memcheck --error-exitcode 9 python -m pytest -q -m gpu -p no:cacheprovider \
  tests/ops/test_linear_act.py::test_gpu_edge_shapes tests/ops/test_conv2d_act.py::test_gpu_odd_geometry \
  tests/ops/test_attention.py::test_gpu_kernels -k "cuda and (n17 or padding or gqa)" >"$OUT/sanitizer.log" 2>&1; echo "compute-sanitizer rc=$?" | tee -a "$OUT/summary.log"
# The LSTM's persistent kernels sync across blocks each step: memcheck, racecheck and synccheck on one model size.
for tool in memcheck racecheck synccheck; do
  compute-sanitizer --tool $tool --error-exitcode 9 python -m pytest -q -m gpu -p no:cacheprovider \
    tests/ops/test_lstm.py -k "T60B64I1H64 and float16 or test_gpu_cell and 17" >"$OUT/sanitizer-lstm-$tool.log" 2>&1
  echo "compute-sanitizer $tool lstm rc=$?" | tee -a "$OUT/summary.log"
done
python -m deepfuse bench all $QUICK --dtype bf16 --out "$OUT/results" >"$OUT/bench.log" 2>&1; echo "bench rc=$?" | tee -a "$OUT/summary.log"
# The models: the demo (digits, with its deepfuse-vs-torch train-step timing) and every model's throughput.
python -m deepfuse demo --out "$OUT/demo" >"$OUT/demo.log" 2>&1; echo "demo rc=$?" | tee -a "$OUT/summary.log"
tail -3 "$OUT/demo.log" >>"$OUT/summary.log"
python -m deepfuse bench models --out "$OUT/results" >"$OUT/bench-models.log" 2>&1; echo "bench models rc=$?" | tee -a "$OUT/summary.log"
cat "$OUT/summary.log"
tar czf "$FINAL/gpu-run.tar.gz" -C "$FINAL" run && cp "$OUT/summary.log" "$FINAL/summary.log"

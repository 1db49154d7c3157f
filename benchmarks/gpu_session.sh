#!/usr/bin/env bash
# One prepared run on a lent H200 (16 cores): four stages, most valuable first, within 8 minutes, no command over
# its stage's time limit (all under 10 minutes). Each stage writes its results as it finishes, under
# benchmarks/results/h200/session-<date>-<sha>/<NN-stage>/ and, when $OUT is set (the device tool), as
# $OUT/<NN-stage>.tar.gz plus $OUT/summary.log, so a run cut off at any point still returns the stages it finished.
#   bash benchmarks/gpu_session.sh            (OUT=... to collect the stages there as well)
#   bash benchmarks/gpu_session.sh --count    (no GPU needed: the Triton compile counts of the table below)
#
# Sizing (distinct Triton compiles = distinct launches recorded on the compile gate's pretend H200,
# tests/compile_gate/device.py, for the stage's calls; compile times measured by compiling those launches for sm_90
# with tests/compile_gate/compile.py on the 2-core development machine under a load average of ~10, 2026-12-05):
#
#   stage                 | work                                                  | Triton compiles | limit
#   1 build _C            | csrc/*.cu (+ *_sm90.cu with CUTLASS) with 16 jobs:    | 0               | 180 s
#                         | bounded by the largest file (PLATFORM.md: 30-60 s for  |                 |
#                         | the portable files and ~1 min for a CUTLASS GEMM, on 2 |                 |
#                         | cores)                                                 |                 |
#   2 spec                | every op x backend (triton, cuda) x dtype once at a   | 244 (GEMM 70,   | 150 s
#                         | model shape against the fp64 reference (40 GPU tests, | conv 54, attn 9,|
#                         | below) + the models' GPU checks; pytest-xdist, 16     | LSTM 111 incl.  |
#                         | workers share one Triton cache                        | its input GEMMs;|
#                         |                                                       | varlen, models  |
#                         |                                                       | not counted)    |
#   3 compute-sanitizer   | memcheck on the cuda kernels' edge cases; racecheck + | ~0 (cuda cases) | 120 s
#                         | synccheck on the LSTM's cross-block kernels           |                 |
#   4 benchmarks          | deepfuse bench <op> --quick --dtype bf16 (warm-up in  | 168 (GEMM 32,   | the rest
#                         | 4 parallel processes first, timed runs one at a time) | conv 48, attn   | (>= 60 s)
#                         | then the models; torch.compile's kernels not counted  | 12, LSTM 76)    |
#
#   Compile time per kernel (one launch each, seconds, on the loaded 2-core machine; unloaded cores are faster):
#   GEMM (linear_act fwd/dx/dw, fp32 2.5-3.2, fp16/bf16 TMA 3.2-12.4), conv2d_act (fp32 5.7-12.4, fp16 8.9-21.6),
#   attention (fp32 IEEE 5.7-7.9, fp16/bf16 2.2-3.3). So stage 2 is ~244 x ~2 s / 16 workers ~ 30 s of compiling,
#   bounded by its longest test (one dtype of the autotuned GEMM: ~30 configs x 3 kernels ~ 60 s serially); stage
#   4's warm-up is bounded by its slowest op (LSTM, 76 compiles ~ 80-150 s in one process).
#   --count calls each stage's ops (forward + backward, triton backend, its shapes and dtypes) under
#   tests.compile_gate.device.install() and counts Recorder.launches: the launches Triton's JIT compiles on the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--count" ]; then
  exec env -u TRITON_INTERPRET "${PYTHON:-.venv/bin/python}" - <<'PY'
import torch

from tests.compile_gate.device import install

recorder = install()  # before deepfuse's kernels are imported
import deepfuse  # noqa: E402
from deepfuse.bench import attention as b_attention, conv2d_act as b_conv  # noqa: E402
from deepfuse.bench import linear_act as b_linear, lstm as b_lstm  # noqa: E402
from deepfuse.ops import attention, attention_varlen, conv2d_act, linear_act  # noqa: E402
from deepfuse.ops.lstm import lstm_layer  # noqa: E402


def leaf(*shape, dtype):
    return torch.randn(*shape).to(dtype).requires_grad_()


def backward(out):
    out.backward(torch.ones_like(out))


def spec(op, dtype):  # stage 2: the GPU tests' model shapes
    d = dict(dtype=dtype)
    if op == "linear_act":  # 4096x1024x256
        backward(linear_act(leaf(4096, 256, **d), leaf(1024, 256, **d), leaf(1024, **d), "gelu", backend="triton"))
    elif op == "conv2d_act":  # resnet_56_residual
        x, r = leaf(16, 64, 56, 56, **d), leaf(16, 64, 56, 56, **d)
        w, b = leaf(64, 64, 3, 3, **d), leaf(64, **d)
        backward(conv2d_act(x, w, b, 1, 1, 1, 1, "relu", residual=r, backend="triton"))
    elif op == "attention":  # imdb_padded_d64
        q, k, v = (leaf(8, 4, 512, 64, **d) for _ in range(3))
        backward(attention(q, k, v, key_padding_mask=torch.rand(8, 512) > 0.8, backend="triton"))
    else:  # T64B64I256H256
        weights = [leaf(1024, 256, **d), leaf(1024, 256, **d), leaf(1024, **d), leaf(1024, **d)]
        x, h0, c0 = leaf(64, 64, 256, **d), leaf(64, 256, **d), leaf(64, 256, **d)
        backward(lstm_layer(x, h0, c0, *weights, backend="triton")[0])


def bench(op, dtype):  # stage 4: deepfuse bench <op> --quick --dtype bf16, the triton provider
    d = dict(dtype=dtype)
    if op == "linear_act":
        for M, N, K in b_linear.QUICK_SHAPES:
            backward(linear_act(leaf(M, K, **d), leaf(N, K, **d), leaf(N, **d), b_linear.ACTIVATION, backend="triton"))
    elif op == "conv2d_act":
        for _, B, cin, H, W, cout, k, s, p, g in b_conv.QUICK_LAYERS:
            w = leaf(cout, cin // g, k, k, **d)
            x, b = leaf(B, cin, H, W, **d), leaf(cout, **d)
            backward(conv2d_act(x, w, b, s, p, 1, g, b_conv.ACTIVATION, backend="triton"))
    elif op == "attention":
        for n, head_dim, causal in b_attention.QUICK:
            q, k, v = (leaf(max(1, b_attention.TOKENS // n), b_attention.HEADS, n, head_dim, **d) for _ in range(3))
            backward(attention(q, k, v, causal=causal, backend="triton"))
        B, n, h, head_dim = b_attention.IMDB_BATCH, b_attention.IMDB_LEN, b_attention.IMDB_HEADS, b_attention.IMDB_DIM
        q, k, v = (leaf(B, h, n, head_dim, **d) for _ in range(3))
        backward(attention(q, k, v, key_padding_mask=torch.rand(B, n) > 0.5, backend="triton"))
        lengths = torch.randint(n // 8, n + 1, (B,))
        cu = torch.tensor([0, *lengths.cumsum(0).tolist()], dtype=torch.int32)
        q, k, v = (leaf(int(lengths.sum()), h, head_dim, **d) for _ in range(3))
        longest = int(lengths.max())
        backward(attention_varlen(q, k, v, cu, cu, longest, longest, backend="triton"))
    else:
        for T, B, I, H in b_lstm.QUICK:
            with deepfuse.use_backend("triton"):
                backward(deepfuse.nn.LSTM(I, H, num_layers=2).to(dtype)(leaf(T, B, I, **d))[0])


for stage, run, dtypes in (("2 spec", spec, (torch.float32, torch.float16, torch.bfloat16)),
                           ("4 bench", bench, (torch.bfloat16,))):
    recorder.launches.clear()
    for op in ("linear_act", "conv2d_act", "attention", "lstm"):
        before = len(recorder.launches)
        for dtype in dtypes:
            run(op, dtype)
        print(f"stage {stage}: {op}: {len(recorder.launches) - before} new distinct Triton launches")
    print(f"stage {stage}: {len(recorder.launches)} in all")
PY
fi
START=$SECONDS
PY=${PYTHON:-python3}  # the GPU machine's python3 holds torch and triton
DEADLINE=$((START + 470))  # 8 minutes less a margin for packing
RUN=benchmarks/results/h200/session-$(date -u +%Y-%m-%d)-$(git rev-parse --short HEAD 2>/dev/null || echo nogit)
mkdir -p "$RUN"
SUMMARY=$RUN/summary.log
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/deepfuse-triton-cache}

say() { echo "[$((SECONDS - START)) s] $*" | tee -a "$SUMMARY"; }
# seconds a stage may take: its own limit, or what is left before the deadline
limit() { local left=$((DEADLINE - SECONDS)); echo $(($1 < left ? $1 : left)); }
# finish STAGE: pack its folder for the device tool (at most 8 files come back: one per stage + the summary)
finish() {
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/$1.tar.gz" -C "$RUN" "$1" 2>/dev/null
    cp "$SUMMARY" "$OUT/summary.log"
  fi
}
# run STAGE_DIR NAME LIMIT CMD...: one command under its time limit, output in STAGE_DIR/NAME.log, rc in the summary
step() {
  local dir=$1 name=$2 seconds=$3
  shift 3
  if [ "$seconds" -lt 20 ]; then
    say "$name: skipped (${seconds} s left before the 8-minute deadline)"
    return 0
  fi
  timeout --kill-after=10 "$seconds" "$@" >"$dir/$name.log" 2>&1
  local rc=$?
  say "$name: rc=$rc$([ $rc -eq 124 ] && echo " (cut at $seconds s)") $(tail -1 "$dir/$name.log" | cut -c1-150)"
  return $rc
}

# --- 1. build _C (parallel) ------------------------------------------------------------------------------------------
S=$RUN/01-build && mkdir -p "$S"
{ nvidia-smi; $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
  >"$S/env.log" 2>&1
say "session on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
# CUTLASS's headers come from the nvidia-cutlass wheel; the GPU machine has no registry: carried wheels in .whl/
if ! $PY -c "import cutlass_library" 2>/dev/null; then
  if ls .whl/nvidia_cutlass-*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/nvidia_cutlass-*.whl >>"$S/env.log" 2>&1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
if ! $PY -c "import cutlass_library" 2>/dev/null; then
  export DEEPFUSE_SM90=0
  say "build: nvidia-cutlass not importable (carry its wheel in .whl/): building WITHOUT the sm_90a kernels"
fi
export DEEPFUSE_BUILD_JOBS=16
step "$S" build "$(limit 180)" $PY -m pip install --no-build-isolation --no-deps -e . ||
  { tail -30 "$S/build.log"; finish 01-build; exit 1; }
finish 01-build

# --- 2. every op x backend x dtype once at a model shape, against the specification ---------------------------------
S=$RUN/02-spec && mkdir -p "$S"
PARALLEL=$($PY -c "import xdist" 2>/dev/null && echo "-n 16" || echo "")
[ -z "$PARALLEL" ] && say "spec: pytest-xdist missing, one process"
SPEC="(test_gpu_backends_match_reference and gelu and 4096x1024x256) or (test_gpu_model_layers and resnet_56_residual)
  or (test_gpu_kernels and imdb_padded_d64) or (test_gpu_cuda_fp32 and n127_d64) or test_gpu_triton_varlen
  or test_gpu_cuda_varlen or (test_gpu_layer and None-T64B64I256H256) or (test_sm90_matches and gelu-bias)
  or models_shape or test_linear_act_bwd_sm90 or test_conv2d_act_sm90 or test_sm90_backward_matches
  or (test_gpu_every_hopper_config and float16)
  or (test_gpu_tma_forward_matches_reference and 128) or (test_gpu_tma_backward_matches_reference and 64)
  or (test_gpu_tma_varlen and 64)"
FILES=$(ls tests/ops/test_linear_act.py tests/ops/test_linear_act_sm90.py tests/ops/test_linear_act_bwd_sm90.py \
  tests/ops/test_conv2d_act.py tests/ops/test_conv2d_act_sm90.py tests/ops/test_conv2d_act_bwd_sm90.py \
  tests/ops/test_conv2d_act_triton_hopper.py tests/ops/test_attention.py tests/ops/test_attention_hopper.py tests/ops/test_lstm.py tests/models/test_stock.py \
  tests/models/test_sentiment.py 2>/dev/null)
# shellcheck disable=SC2086
step "$S" spec "$(limit 150)" $PY -m pytest -q -m gpu -p no:cacheprovider $PARALLEL -rfE --junitxml="$S/spec.xml" \
  -k "$(echo $SPEC)" $FILES
finish 02-spec

# --- 3. compute-sanitizer on a few cases ----------------------------------------------------------------------------
S=$RUN/03-sanitizer && mkdir -p "$S"
step "$S" memcheck "$(limit 60)" compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -m gpu \
  -p no:cacheprovider tests/ops/test_linear_act.py::test_gpu_edge_shapes tests/ops/test_attention.py::test_gpu_kernels \
  tests/ops/test_conv2d_act.py::test_gpu_odd_geometry -k "cuda and (edge or n17 or padding_mqa or 3x3_pad1_relu)"
# The sm_90a CUTLASS kernels (TMA, wgmma, the grad_preact/grad_bias kernels and their workspace).
step "$S" memcheck-sm90 "$(limit 60)" compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -m gpu \
  -p no:cacheprovider tests/ops/test_linear_act_bwd_sm90.py tests/ops/test_conv2d_act_sm90.py \
  tests/ops/test_conv2d_act_bwd_sm90.py tests/ops/test_linear_act_sm90.py -k "deterministic or padded"
# The LSTM's persistent kernels sync across blocks each step.
for tool in racecheck synccheck; do
  step "$S" "$tool-lstm" "$(limit 30)" compute-sanitizer --tool $tool --error-exitcode 9 $PY -m pytest -q -m gpu \
    -p no:cacheprovider tests/ops/test_lstm.py -k "test_gpu_layer and cuda-persistent-T60B64I1H64 and torch.float16"
done
finish 03-sanitizer

# --- 4. benchmarks: warm the compile caches in parallel, then time one op at a time ---------------------------------
S=$RUN/04-bench && mkdir -p "$S"
WARM=$(limit 150)
if [ "$WARM" -ge 20 ]; then
  for op in linear_act conv2d_act attention lstm; do  # timings of this pass are discarded
    timeout --kill-after=10 "$WARM" $PY -m deepfuse bench $op --quick --dtype bf16 --out /tmp/deepfuse-warm \
      >"$S/warm-$op.log" 2>&1 &
  done
  wait
  say "bench warm-up: done at the limit of $WARM s or before"
fi
for op in linear_act attention conv2d_act lstm; do
  step "$S" "bench-$op" "$(limit 90)" $PY -m deepfuse bench $op --quick --dtype bf16 --out "$S/results"
  finish 04-bench
done
step "$S" bench-models "$(limit 120)" $PY -m deepfuse bench models --out "$S/results"
finish 04-bench
say "session done in $((SECONDS - START)) s"
[ -n "${OUT:-}" ] && cp "$SUMMARY" "$OUT/summary.log"
exit 0

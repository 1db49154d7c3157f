"""linear_act benchmark: fused deepfuse kernels vs eager torch (cuBLAS GEMM, then the activation) and
torch.compile, forward and forward+backward, over the models' layer shapes and large cubes.

FLOPs: 2·M·N·K forward (activation and bias not counted). Minimum bytes: x, W, b read and y written once.
"""

from __future__ import annotations

import torch

from deepfuse.bench import runner
from deepfuse.ops import linear_act, linear_act_ref

# (M, N, K): the sentiment Transformer's FFN and projections (batch 64 x seq 256 tokens, d 256/1024),
# the digits/X-ray classifier heads, then the 4096-8192 cubes of ../shared/PERFORMANCE.md.
MODEL_SHAPES = [(16384, 1024, 256), (16384, 256, 1024), (16384, 768, 256), (64, 128, 4096), (512, 10, 64)]
CUBE_SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192)]
QUICK_SHAPES = [(16384, 1024, 256), (4096, 4096, 4096)]
CPU_SHAPES = [(64, 48, 32)]
ACTIVATION = "gelu"


def cases(device: torch.device, dtype: torch.dtype, quick: bool) -> list[runner.Case]:
    shapes = CPU_SHAPES if device.type != "cuda" else QUICK_SHAPES if quick else MODEL_SHAPES + CUBE_SHAPES
    result = []
    for M, N, K in shapes:
        g = torch.Generator(device=device).manual_seed(M * 31 + N * 7 + K)
        x = torch.randn(M, K, device=device, dtype=dtype, generator=g).requires_grad_()
        w = (torch.randn(N, K, device=device, dtype=dtype, generator=g) / K**0.5).requires_grad_()
        b = torch.randn(N, device=device, dtype=dtype, generator=g).requires_grad_()
        dy = torch.randn(M, N, device=device, dtype=dtype, generator=g)
        min_bytes = x.element_size() * (M * K + N * K + N + M * N)
        result.append(runner.Case("linear_act", f"{M}x{N}x{K}", (x, w, b), dy, 2 * M * N * K, min_bytes))
    return result


def providers(device: torch.device) -> dict:
    eager = lambda x, w, b: linear_act_ref(x, w, b, ACTIVATION)  # noqa: E731
    found = {"torch": eager}
    if device.type == "cuda":
        found |= runner.compiled_providers(eager) | runner.deepfuse_providers(linear_act, activation=ACTIVATION)
    return found


def main(quick=False, dtype=torch.bfloat16, modes=("fwd", "fwdbwd"), out_dir="benchmarks/results") -> list[dict]:
    return runner.main("linear_act", cases, providers, quick=quick, dtype=dtype, modes=modes, out_dir=out_dir)

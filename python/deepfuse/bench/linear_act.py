"""linear_act benchmark: fused deepfuse kernels vs eager torch (cuBLAS GEMM, then the activation) and
torch.compile, forward and forward+backward, over the models' layer shapes and large cubes.

FLOPs: 2·M·N·K forward, 6·M·N·K forward+backward (activation and bias not counted).
Minimum bytes: inputs read once and outputs written once (forward: x, W, b, y).
"""

from __future__ import annotations

import itertools
import warnings

import torch

import deepfuse
from deepfuse.bench import records
from deepfuse.bench.timing import measure, peak_memory_mb
from deepfuse.ops import linear_act, linear_act_ref

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# (M, N, K): the sentiment Transformer's FFN and projections (batch 64 x seq 256 tokens, d 256/1024),
# the digits/X-ray classifier heads, then the 4096-8192 cubes of ../shared/PERFORMANCE.md.
MODEL_SHAPES = [(16384, 1024, 256), (16384, 256, 1024), (16384, 768, 256), (64, 128, 4096), (512, 10, 64)]
CUBE_SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192)]
QUICK_SHAPES = [(16384, 1024, 256), (4096, 4096, 4096)]
CPU_SHAPES = [(64, 48, 32)]
ACTIVATION = "gelu"


def _providers(device: torch.device) -> dict:
    eager = lambda x, w, b: linear_act_ref(x, w, b, ACTIVATION)  # noqa: E731
    providers = {"torch": eager}
    if device.type != "cuda":
        return providers
    providers["torch_compile"] = torch.compile(eager)
    providers["torch_compile_max_autotune"] = torch.compile(eager, mode="max-autotune-no-cudagraphs")
    available = deepfuse.available_backends()
    for name in ("triton", "cuda"):
        if available[name][0]:
            providers[name] = lambda x, w, b, _name=name: linear_act(x, w, b, ACTIVATION, backend=_name)
    return providers


def _case(fn, mode, x, w, b, dy):
    if mode == "fwd":
        return lambda: fn(x, w, b)

    def forward_backward():
        for t in (x, w, b):
            t.grad = None
        fn(x, w, b).backward(dy)

    return forward_backward


def run(shapes, dtype: torch.dtype, modes, device: torch.device) -> list[dict]:
    ceiling = records.ceiling_for(torch.cuda.get_device_name() if device.type == "cuda" else None)
    rows = []
    providers = _providers(device)
    for (M, N, K), mode in itertools.product(shapes, modes):
        g = torch.Generator(device=device).manual_seed(M * 31 + N * 7 + K)
        x = torch.randn(M, K, device=device, dtype=dtype, generator=g).requires_grad_(mode != "fwd")
        w = (torch.randn(N, K, device=device, dtype=dtype, generator=g) / K**0.5).requires_grad_(mode != "fwd")
        b = torch.randn(N, device=device, dtype=dtype, generator=g).requires_grad_(mode != "fwd")
        dy = torch.randn(M, N, device=device, dtype=dtype, generator=g)
        flops = (2 if mode == "fwd" else 6) * M * N * K
        elem = x.element_size()
        min_bytes = elem * ((M * K + N * K + N + M * N) if mode == "fwd" else 2 * (M * K + N * K + N + M * N))
        for provider, fn in providers.items():
            case = _case(fn, mode, x, w, b, dy)
            try:
                timing = measure(case, device)
            except Exception as error:  # a provider that fails is reported, not hidden
                warnings.warn(f"{provider} failed on {(M, N, K)} {mode}: {error}", stacklevel=1)
                continue
            tflops = flops / timing["median_ms"] / 1e9
            rows.append({
                "op": "linear_act", "shape": f"{M}x{N}x{K}", "mode": mode, "provider": provider,
                "dtype": str(dtype).removeprefix("torch."), **timing, "tflops": tflops,
                "gbps": min_bytes / timing["median_ms"] / 1e6,
                "pct_of_peak": 100 * tflops / ceiling["tflops"] if ceiling and dtype != torch.float32 else None,
                "peak_mem_mb": peak_memory_mb(case, device),
            })  # fmt: skip
            print(
                f"{rows[-1]['shape']:>18} {mode:>6} {provider:>28} {timing['median_ms']:9.4f} ms {tflops:8.1f} TFLOP/s"
            )
    return rows


def main(quick: bool = False, dtype: str = "bf16", modes=("fwd", "fwdbwd"), out_dir="benchmarks/results") -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        shapes = QUICK_SHAPES if quick else MODEL_SHAPES + CUBE_SHAPES
    else:
        print("No GPU: a CPU smoke run of the torch provider on a tiny shape. CPU numbers are not GPU performance.")
        shapes, dtype = CPU_SHAPES, "fp32"
    rows = run(shapes, DTYPES[dtype], modes, device)
    path = records.write_results(rows, records.environment(), out_dir, "linear_act")
    print(f"results: {path}")
    return rows

"""attention benchmark: deepfuse flash attention vs SDPA with each of its backends (flash, efficient, cuDNN,
math), torch.compile, forward and forward+backward; plus an IMDb-like padded batch: SDPA with a padding
mask vs deepfuse with the mask vs deepfuse varlen on the packed tokens.

FLOPs as FlashAttention counts them: 4·B·H·Nq·Nk·D forward (halved when causal), backward 2.5x forward.
Minimum bytes: q, k, v read and out written once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import deepfuse
from deepfuse.bench import runner
from deepfuse.ops import attention, attention_ref, attention_varlen

TOKENS = 16384  # batch * sequence length held constant across the sweep
SEQ_LENS = [128, 512, 1024, 2048, 4096, 8192, 16384]
HEAD_DIMS = [64, 128]
HEADS = 16
QUICK = [(8192, 128, False), (1024, 64, True)]
CPU = [(64, 32, False)]
SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
IMDB_BATCH, IMDB_LEN, IMDB_HEADS, IMDB_DIM = 64, 512, 4, 64


def _dense_cases(device, dtype, quick):
    if device.type != "cuda":
        sweep = CPU
    elif quick:
        sweep = QUICK
    else:
        sweep = [(n, d, causal) for d in HEAD_DIMS for causal in (False, True) for n in SEQ_LENS]
    cases = []
    for n, d, causal in sweep:
        batch = max(1, (TOKENS if device.type == "cuda" else 128) // n)
        heads = HEADS if device.type == "cuda" else 2
        g = torch.Generator(device=device).manual_seed(n + d)
        q, k, v = (
            torch.randn(batch, heads, n, d, device=device, dtype=dtype, generator=g).requires_grad_() for _ in range(3)
        )
        dy = torch.randn(batch, heads, n, d, device=device, dtype=dtype, generator=g)
        flops = 4 * batch * heads * n * n * d // (2 if causal else 1)
        cases.append(
            runner.Case(
                "attention",
                f"B{batch}H{heads}N{n}D{d}{'-causal' if causal else ''}",
                (q, k, v, causal),
                dy,
                flops,
                4 * q.numel() * q.element_size(),
                3.5,
            )
        )
    return cases


def _padded_cases(device, dtype, quick):
    batch, n, heads, d = (IMDB_BATCH, IMDB_LEN, IMDB_HEADS, IMDB_DIM) if device.type == "cuda" else (4, 32, 2, 32)
    g = torch.Generator(device="cpu").manual_seed(7)
    lengths = torch.randint(n // 8, n + 1, (batch,), generator=g)
    mask = (torch.arange(n)[None, :] >= lengths[:, None]).to(device)
    cu = torch.tensor([0, *lengths.cumsum(0).tolist()], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(batch, heads, n, d, device=device, dtype=dtype) for _ in range(3))
    for t in (q, k, v):
        t.masked_fill_(mask[:, None, :, None], 0.0)
    packed = [
        torch.cat([t[i, :, : lengths[i]].transpose(0, 1) for i in range(batch)]).requires_grad_() for t in (q, k, v)
    ]
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    dy = torch.randn(batch, heads, n, d, device=device, dtype=dtype)
    real = int((lengths.double() ** 2).sum()) * 4 * heads * d  # the work on real tokens only
    inputs = (q, k, v, mask, *packed, cu, int(lengths.max()))
    return [
        runner.Case(
            "attention",
            f"imdb-padded-B{batch}N{n}H{heads}D{d}",
            inputs,
            dy,
            real,
            4 * sum(t.numel() for t in packed) * q.element_size(),
            3.5,
        )
    ]


def cases(device: torch.device, dtype: torch.dtype, quick: bool) -> dict:
    return {"dense": _dense_cases(device, dtype, quick), "padded": _padded_cases(device, dtype, quick)}


def _sdpa(backend_name):
    def run(q, k, v, causal):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(getattr(SDPBackend, backend_name)):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return run


def _deepfuse(backend):
    return lambda q, k, v, causal: attention(q, k, v, causal=causal, backend=backend)


def _padded_providers(device):
    def sdpa_masked(q, k, v, mask, qp, kp, vp, cu, max_len):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=~mask[:, None, None, :])

    def reference(q, k, v, mask, qp, kp, vp, cu, max_len):
        return attention_ref(q, k, v, key_padding_mask=mask)

    found = {"torch": sdpa_masked if device.type == "cuda" else reference}
    if device.type != "cuda":
        return found

    for name in ("triton", "cuda"):
        if deepfuse.available_backends()[name][0]:
            found[f"{name}_masked"] = lambda q, k, v, mask, *rest, _n=name: attention(
                q, k, v, key_padding_mask=mask, backend=_n
            )
    if deepfuse.available_backends()["triton"][0]:

        def varlen(q, k, v, mask, qp, kp, vp, cu, max_len):
            out = attention_varlen(qp, kp, vp, cu, cu, max_len, max_len, backend="triton")
            # the padded providers' output layout, so one upstream gradient serves all (the scatter is timed too)
            padded = out.new_zeros(q.shape[0], q.shape[2], q.shape[1], q.shape[3])
            return padded.masked_scatter(~mask[:, :, None, None], out).transpose(1, 2)

        found["triton_varlen"] = varlen
    return found


def providers(device: torch.device) -> dict:
    dense = {
        "torch": _sdpa("MATH")
        if device.type == "cuda"
        else (lambda q, k, v, causal: attention_ref(q, k, v, causal=causal))
    }
    if device.type == "cuda":
        dense |= {f"sdpa_{name.lower()}": _sdpa(name) for name in SDPA_BACKENDS}
        dense["torch_compile"] = torch.compile(
            lambda q, k, v, causal: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        )

        dense |= {name: _deepfuse(name) for name in ("triton", "cuda") if deepfuse.available_backends()[name][0]}
    return {"dense": dense, "padded": _padded_providers(device)}


def main(quick=False, dtype=torch.bfloat16, modes=("fwd", "fwdbwd"), out_dir="benchmarks/results") -> list[dict]:
    return runner.main("attention", cases, providers, quick=quick, dtype=dtype, modes=modes, out_dir=out_dir)

"""attention: every backend against a float64 reference and SDPA, forward and backward; masks, GQA, bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import deepfuse
from deepfuse.ops import attention, attention_ref, attention_varlen
from deepfuse.ops.attention import attention_bwd, attention_fwd
from tests.reference import check_against_reference, forward_backward
from tests.tolerances import ATOL, max_error

# (B, Hq, Hkv, Nq, Nk, D, causal, padded keys)
CPU_CASES = {
    "n1_d32": (1, 2, 2, 1, 1, 32, False, False),
    "n17_d32": (2, 2, 2, 17, 17, 32, False, False),
    "causal_nq_ne_nk_gqa_d64": (2, 4, 2, 40, 70, 64, True, False),
    "padding_mqa_d48": (2, 2, 1, 33, 50, 48, False, True),
    "causal_padding_fully_masked_rows": (2, 2, 2, 70, 30, 32, True, True),
    "n127_d64": (1, 2, 2, 127, 127, 64, True, False),
}
GPU_CASES = {
    "n1000_d64": (2, 4, 4, 1000, 1000, 64, False, False),
    "n1000_d128_causal": (2, 4, 4, 1000, 1000, 128, True, False),
    "imdb_padded_d64": (8, 4, 4, 512, 512, 64, False, True),
    "gqa_d128": (2, 8, 2, 257, 513, 128, True, False),
    "d256": (1, 2, 2, 300, 300, 256, False, False),
    "d32": (4, 2, 2, 2048, 2048, 32, True, False),
}


def make_case(case, dtype, device="cpu", seed=0):
    B, Hq, Hkv, Nq, Nk, D, causal, padded = case
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g)
    k = torch.randn(B, Hkv, Nk, D, generator=g)
    v = torch.randn(B, Hkv, Nk, D, generator=g)
    dy = torch.randn(B, Hq, Nq, D, generator=g)
    mask = None
    if padded:  # IMDb-like: each sequence padded after its own length; batch 0 fully padded
        lengths = torch.randint(1, Nk + 1, (B,), generator=g)
        lengths[0] = 0
        mask = (torch.arange(Nk)[None, :] >= lengths[:, None]).to(device)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return (cast(q), cast(k), cast(v)), cast(dy), dict(causal=causal, key_padding_mask=mask)


def check_case(backend, case, dtype, device="cpu"):
    tensors, dy, options = make_case(case, dtype, device)
    check_against_reference(
        lambda *t: attention(*t, **options, backend=backend),
        lambda *t: attention_ref(*t, **options),
        tensors,
        dy,
        ("q", "k", "v"),
    )


@pytest.mark.parametrize("case", CPU_CASES.values(), ids=CPU_CASES.keys())
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.usefixtures("poison_outputs")
def test_matches_reference_fp32(backend, case):
    check_case(backend, case, torch.float32)


@pytest.mark.parametrize("name", ["n17_d32", "causal_nq_ne_nk_gqa_d64", "padding_mqa_d48"])
@pytest.mark.usefixtures("poison_outputs")
def test_triton_matches_reference_fp16(name):
    check_case("triton", CPU_CASES[name], torch.float16)


def test_reference_equals_sdpa_where_no_row_is_fully_masked():
    tensors, _, _ = make_case(CPU_CASES["causal_nq_ne_nk_gqa_d64"], torch.float64)
    q, k, v = tensors
    sdpa = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    assert max_error(attention_ref(q, k, v, causal=True), sdpa) <= ATOL[torch.float64]
    mask = torch.rand(q.shape[0], k.shape[2]) < 0.3
    mask[:, 0] = False
    sdpa = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=~mask[:, None, None, :]
    )
    assert max_error(attention_ref(q, k, v, key_padding_mask=mask), sdpa) <= ATOL[torch.float64]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fully_masked_rows_are_zero_not_nan(backend):
    tensors, dy, options = make_case(CPU_CASES["causal_padding_fully_masked_rows"], torch.float32)
    out, grads = forward_backward(lambda *t: attention(*t, **options, backend=backend), tensors, dy)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(out[0], torch.zeros_like(out[0]))  # batch 0 has every key padded
    assert torch.equal(grads[0][0], torch.zeros_like(grads[0][0]))


def test_triton_backward_is_deterministic():
    tensors, dy, options = make_case(CPU_CASES["causal_nq_ne_nk_gqa_d64"], torch.float32)
    first = forward_backward(lambda *t: attention(*t, **options, backend="triton"), tensors, dy)
    second = forward_backward(lambda *t: attention(*t, **options, backend="triton"), tensors, dy)
    assert torch.equal(first[0], second[0]) and all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))


def test_custom_scale_and_empty_batch():
    q, k, v = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 7, 16), torch.randn(1, 2, 7, 16)
    for backend in ("torch", "triton"):
        assert max_error(attention(q, k, v, scale=0.3, backend=backend), attention_ref(q, k, v, scale=0.3)) < 1e-5
        empty = attention(q[:0], k[:0], v[:0], backend=backend)
        assert empty.shape == (0, 2, 5, 16)


def _bad_input_cases():
    q, k = torch.randn(2, 4, 8, 16), torch.randn(2, 2, 9, 16)
    return [
        (dict(q=q, k=k, v=k[:, :, :5]), ValueError, r"k and v must have the same shape"),
        (dict(q=q, k=k[:1], v=k[:1]), ValueError, r"k must be \(batch=2, kv_heads, Nk, head_dim=16\)"),
        (dict(q=q, k=k[..., :8], v=k[..., :8]), ValueError, r"head_dim=16"),
        (dict(q=q[:, :3], k=k, v=k), ValueError, r"q's heads \(3\) must be a multiple of k's heads \(2\)"),
        (dict(q=q[0], k=k, v=k), ValueError, r"q must be 4-D"),
        (dict(q=q, k=k.half(), v=k.half()), TypeError, r"k.dtype is torch.float16 but q.dtype is torch.float32"),
        (dict(q=q, k=k, v=k, key_padding_mask=torch.zeros(2, 9)), TypeError, r"key_padding_mask must be a bool"),
        (
            dict(q=q, k=k, v=k, key_padding_mask=torch.zeros(2, 8, dtype=torch.bool)),
            ValueError,
            r"key_padding_mask must have shape \(batch=2, Nk=9\)",
        ),
        (dict(q=q.long(), k=k, v=k), TypeError, r"q must be a floating-point tensor"),
        (dict(q=q, k=k, v=k, backend="cuda"), deepfuse.BackendUnavailableError, r"backend 'cuda'.*cannot run"),
        (
            dict(
                q=torch.randn(1, 1, 2, 300), k=torch.randn(1, 1, 2, 300), v=torch.randn(1, 1, 2, 300), backend="triton"
            ),
            deepfuse.BackendUnavailableError,
            r"head dims up to 256",
        ),
    ]


@pytest.mark.parametrize("case", range(len(_bad_input_cases())))
def test_bad_input_raises_a_clear_error(case):
    kwargs, error, message = _bad_input_cases()[case]
    with pytest.raises(error, match=message):
        attention(**{name: kwargs.pop(name) for name in ("q", "k", "v")}, **kwargs)


def _opcheck_attention(backend, dtype, device="cpu"):
    tensors, dy, options = make_case(CPU_CASES["padding_mqa_d48"], dtype, device)
    q, k, v = (t.requires_grad_() for t in tensors)
    mask = options["key_padding_mask"]
    opcheck(attention_fwd.custom_op, (q, k, v, mask, False, 0.2, backend))
    opcheck(attention_fwd.custom_op, (q, k, v, None, True, 0.2, backend))
    out, lse = attention_fwd(q.detach(), k.detach(), v.detach(), mask, False, 0.2, backend)
    opcheck(attention_bwd.custom_op, (dy, q.detach(), k.detach(), v.detach(), out, lse, mask, False, 0.2, backend))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend):
    _opcheck_attention(backend, torch.float32)


def test_compiles_fullgraph():
    torch._dynamo.reset()
    tensors, dy, options = make_case(CPU_CASES["causal_nq_ne_nk_gqa_d64"], torch.float32)
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, causal=True), fullgraph=True)
    ours = forward_backward(compiled, tensors, dy)
    eager = forward_backward(lambda q, k, v: attention(q, k, v, causal=True), tensors, dy)
    # The torch backend is SDPA, which Inductor traces: equal to rounding.
    torch.testing.assert_close(ours[0], eager[0])
    for compiled_grad, eager_grad in zip(ours[1], eager[1], strict=True):
        torch.testing.assert_close(compiled_grad, eager_grad)


def test_cuda_bindings_check_their_arguments():
    try:
        from deepfuse import _C
    except ImportError:
        pytest.skip("deepfuse._C not built")
    strides, sizes = [64, 64, 16, 1], [1, 1, 1, 4, 4, 16]  # (B, Hq, Hkv, Nq, Nk, D)

    def fwd(sizes=sizes, q=16, dtype=1):
        _C.attention_fwd(q, strides, 16, strides, 16, strides, 0, [0, 0], 16, 16, sizes, 0.25, False, dtype, 0)

    with pytest.raises(ValueError, match="attention size must be >= 0"):
        fwd(sizes=[1, 1, 1, -4, 4, 16])
    with pytest.raises(ValueError, match="q must be a device pointer"):
        fwd(q=0)
    with pytest.raises(ValueError, match="heads_q must be a multiple of heads_kv"):
        fwd(sizes=[1, 3, 2, 4, 4, 16])
    with pytest.raises(ValueError, match="head_dim is 300"):
        fwd(sizes=[1, 1, 1, 4, 4, 300])
    with pytest.raises(ValueError, match="head_dim is 160; the kernels take 1..128"):
        fwd(sizes=[1, 1, 1, 4, 4, 160], dtype=0)
    with pytest.raises(ValueError, match="bad dtype code"):
        fwd(dtype=7)
    with pytest.raises(ValueError, match="delta must be a device pointer"):
        _C.attention_bwd(
            16, strides, 16, strides, 16, strides, 16, strides, 0, [0, 0], 16, 0, 16, 16, 16, sizes, 0.25, False, 1, 0
        )
    if not torch.cuda.is_available():  # valid arguments: the missing driver is the error
        with pytest.raises(RuntimeError, match=r"deepfuse CUDA error: cudaError\w+: "):
            fwd()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", {**CPU_CASES, **GPU_CASES}.values(), ids={**CPU_CASES, **GPU_CASES}.keys())
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_kernels(backend, case, dtype, poison_outputs):
    check_case(backend, case, dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("case", CPU_CASES.values(), ids=CPU_CASES.keys())
def test_gpu_cuda_fp32(case, poison_outputs):
    check_case("cuda", case, torch.float32, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dims", [(1, 2), (2, 3)], ids=["tokens_outside_heads", "dim_not_unit_stride"])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_strided_inputs(backend, dims, poison_outputs):
    """q, k, v as non-contiguous views: (B, N, H, D) projections as nn.MultiheadAttention makes them, and a
    layout whose head dim is not the unit-stride one."""
    tensors, dy, options = make_case(CPU_CASES["causal_nq_ne_nk_gqa_d64"], torch.float16, "cuda")
    strided = tuple(t.transpose(*dims).contiguous().transpose(*dims) for t in tensors)
    assert not any(t.is_contiguous() for t in strided)
    check_against_reference(
        lambda *t: attention(*t, **options, backend=backend),
        lambda *t: attention_ref(*t, **options),
        strided,
        dy,
        ("q", "k", "v"),
    )


@pytest.mark.gpu
def test_gpu_cuda_is_deterministic_and_saves_the_torch_log_sum_exp():
    tensors, dy, options = make_case(CPU_CASES["causal_padding_fully_masked_rows"], torch.float16, "cuda")
    first = forward_backward(lambda *t: attention(*t, **options, backend="cuda"), tensors, dy)
    second = forward_backward(lambda *t: attention(*t, **options, backend="cuda"), tensors, dy)
    assert torch.equal(first[0], second[0]) and all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))
    assert torch.equal(first[0][0], torch.zeros_like(first[0][0]))  # batch 0 has every key padded
    mask = options["key_padding_mask"]
    _, lse_torch = attention_fwd(*(t.float() for t in tensors), mask, True, 0.25, "torch")
    _, lse_cuda = attention_fwd(*(t.float() for t in tensors), mask, True, 0.25, "cuda")
    assert torch.equal(torch.isinf(lse_torch), torch.isinf(lse_cuda)) and torch.isinf(lse_torch).any()
    finite = torch.isfinite(lse_torch)
    assert max_error(lse_cuda[finite], lse_torch[finite]) <= ATOL[torch.float32]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_opcheck(backend):
    _opcheck_attention(backend, torch.float16, "cuda")


def test_backends_save_the_same_log_sum_exp():
    tensors, _, options = make_case(CPU_CASES["causal_padding_fully_masked_rows"], torch.float32)
    mask = options["key_padding_mask"]
    _, lse_torch = attention_fwd(*tensors, mask, True, 0.25, "torch")
    _, lse_triton = attention_fwd(*tensors, mask, True, 0.25, "triton")
    assert torch.equal(torch.isinf(lse_torch), torch.isinf(lse_triton)) and torch.isinf(lse_torch).any()
    finite = torch.isfinite(lse_torch)
    assert max_error(lse_triton[finite], lse_torch[finite]) <= ATOL[torch.float32]


# --------------------------------------------------------------------------------------------- varlen

VARLEN_LENGTHS = [5, 0, 33, 17, 1]


def make_varlen(lengths, heads, kv_heads, D, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    tensors = tuple(cast(torch.randn(total, h, D, generator=g)) for h in (heads, kv_heads, kv_heads))
    return tensors, cast(torch.randn(total, heads, D, generator=g)), cu


def _packed_reference(lengths, causal):
    """attention_ref on each sequence, as one function of the packed tensors."""

    def reference(q, k, v):
        outs, start = [], 0
        for n in lengths:
            seq = slice(start, start + n)
            batch = [t[seq].transpose(0, 1).unsqueeze(0) for t in (q, k, v)]
            outs.append(attention_ref(*batch, causal=causal)[0].transpose(0, 1))
            start += n
        return torch.cat(outs)

    return reference


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.usefixtures("poison_outputs")
def test_varlen_matches_each_sequence_alone(backend, causal):
    tensors, dy, cu = make_varlen(VARLEN_LENGTHS, 4, 2, 32, torch.float32)
    n = max(VARLEN_LENGTHS)
    check_against_reference(
        lambda *t: attention_varlen(*t, cu, cu, n, n, causal=causal, backend=backend),
        _packed_reference(VARLEN_LENGTHS, causal),
        tensors,
        dy,
        ("q", "k", "v"),
    )


def test_varlen_equals_the_padded_batch_with_a_key_padding_mask():
    lengths = [7, 20, 13]
    tensors, dy, cu = make_varlen(lengths, 2, 2, 32, torch.float32, seed=4)
    packed = attention_varlen(*tensors, cu, cu, 20, 20, backend="triton")
    padded = [torch.zeros(len(lengths), 2, 20, 32) for _ in range(3)]
    for i, (start, n) in enumerate(zip(cu.tolist(), lengths, strict=False)):
        for full, t in zip(padded, tensors, strict=True):
            full[i, :, :n] = t[start : start + n].transpose(0, 1)
    mask = torch.arange(20)[None, :] >= torch.tensor(lengths)[:, None]
    out = attention(*padded, key_padding_mask=mask, backend="triton")
    for i, (start, n) in enumerate(zip(cu.tolist(), lengths, strict=False)):
        assert max_error(packed[start : start + n], out[i, :, :n].transpose(0, 1)) <= ATOL[torch.float32]


def _bad_varlen_cases():
    (q, k, v), _, cu = make_varlen([3, 4], 2, 2, 16, torch.float32)
    return [
        (dict(cu_seqlens_q=cu.long()), TypeError, r"cu_seqlens_q must be a 1-D int32 tensor"),
        (dict(cu_seqlens_q=torch.tensor([0, 4, 3, 7], dtype=torch.int32)), ValueError, r"without decreasing"),
        (dict(cu_seqlens_k=torch.tensor([0, 3, 6], dtype=torch.int32)), ValueError, r"token count 7"),
        (dict(max_seqlen_q=3), ValueError, r"a sequence has 4 tokens"),
        (dict(cu_seqlens_k=torch.tensor([0, 7], dtype=torch.int32), max_seqlen_k=7), ValueError, r"same number of seq"),
        (dict(k=k[:, :, :8], v=v[:, :, :8]), ValueError, r"need the same D"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_varlen_cases())))
def test_varlen_bad_input_raises_a_clear_error(case):
    (q, k, v), _, cu = make_varlen([3, 4], 2, 2, 16, torch.float32)
    kwargs = dict(q=q, k=k, v=v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=4, max_seqlen_k=4)
    overrides, error, message = _bad_varlen_cases()[case]
    kwargs.update(overrides)
    with pytest.raises(error, match=message):
        attention_varlen(**kwargs)


def test_varlen_on_cpu_tensors_refuses_the_cuda_backend(monkeypatch):
    from deepfuse import backend
    from deepfuse.ops.attention import _supports

    (q, k, v), _, cu = make_varlen([3, 4], 2, 2, 16, torch.float32)
    assert _supports("cuda", q, k) is None  # the kernels take the packed layout...
    with pytest.raises(deepfuse.BackendUnavailableError, match=r"backend 'cuda'.*cannot run"):
        attention_varlen(q, k, v, cu, cu, 4, 4, backend="cuda")
    # ...but not CPU tensors, whether or not this machine has a usable device
    monkeypatch.setattr(backend, "_unavailable_reason", lambda name: None)
    with pytest.raises(deepfuse.BackendUnavailableError, match=r"inputs are on cpu; the cuda backend needs CUDA"):
        attention_varlen(q, k, v, cu, cu, 4, 4, backend="cuda")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_varlen_opcheck(backend):
    from deepfuse.ops.attention import attention_varlen_bwd, attention_varlen_fwd

    (q, k, v), dy, cu = make_varlen([3, 0, 6], 2, 1, 16, torch.float32)
    args = (cu, cu, 6, 6, True, 0.25, backend)
    opcheck(attention_varlen_fwd.custom_op, (q.requires_grad_(), k.requires_grad_(), v, *args))
    out, lse = attention_varlen_fwd(q.detach(), k.detach(), v, *args)
    opcheck(attention_varlen_bwd.custom_op, (dy, q.detach(), k.detach(), v, out, lse, *args))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_triton_varlen(dtype, poison_outputs):
    lengths = [64, 1, 511, 0, 300, 128]
    tensors, dy, cu = make_varlen(lengths, 4, 2, 64, dtype, device="cuda")
    n = max(lengths)
    check_against_reference(
        lambda *t: attention_varlen(*t, cu, cu, n, n, causal=True, backend="triton"),
        _packed_reference(lengths, True),
        tensors,
        dy,
        ("q", "k", "v"),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_gpu_cuda_varlen(dtype, causal, poison_outputs):
    lengths = [64, 1, 511, 0, 300, 128]
    tensors, dy, cu = make_varlen(lengths, 4, 2, 64, dtype, device="cuda")
    n = max(lengths)
    check_against_reference(
        lambda *t: attention_varlen(*t, cu, cu, n, n, causal=causal, backend="cuda"),
        _packed_reference(lengths, causal),
        tensors,
        dy,
        ("q", "k", "v"),
    )


@pytest.mark.gpu
def test_gpu_cuda_varlen_matches_torch_and_opcheck():
    from deepfuse.ops.attention import attention_varlen_bwd, attention_varlen_fwd

    lengths = [5, 0, 33, 17, 1]
    (q, k, v), dy, cu = make_varlen(lengths, 4, 2, 32, torch.float32, device="cuda")
    n = max(lengths) + 7  # a grid sized past the longest sequence
    for causal in (False, True):
        args = (cu, cu, n, n, causal, 0.25)
        out, lse = attention_varlen_fwd(q, k, v, *args, "cuda")
        out_ref, lse_ref = attention_varlen_fwd(q, k, v, *args, "torch")
        assert max_error(out, out_ref) <= ATOL[torch.float32]
        assert torch.equal(torch.isinf(lse), torch.isinf(lse_ref))
        finite = torch.isfinite(lse_ref)
        assert max_error(lse[finite], lse_ref[finite]) <= ATOL[torch.float32]
        grads = attention_varlen_bwd(dy, q, k, v, out, lse, *args, "cuda")
        grads_ref = attention_varlen_bwd(dy, q, k, v, out_ref, lse_ref, *args, "torch")
        for got, expected in zip(grads, grads_ref, strict=True):
            assert max_error(got, expected) <= ATOL[torch.float32]
    args = (cu, cu, n, n, True, 0.25, "cuda")
    opcheck(attention_varlen_fwd.custom_op, (q.clone().requires_grad_(), k.clone().requires_grad_(), v, *args))
    out, lse = attention_varlen_fwd(q, k, v, *args)
    opcheck(attention_varlen_bwd.custom_op, (dy, q, k, v, out, lse, *args))


# The head dims of each row of kernels/attention.py's H200 tile table (fp16/bf16 "half", fp32 with TF32, fp32
# IEEE), from the smallest bucket to 129-256 (unaligned inside their bucket where the bucket allows it).
H200_TILE_CASES = {
    "half_d48": (torch.float16, False, 48),
    "half_d128": (torch.float16, False, 128),
    "half_d160": (torch.float16, False, 160),
    "tf32_d32": (torch.float32, True, 32),
    "tf32_d64": (torch.float32, True, 64),
    "tf32_d100": (torch.float32, True, 100),
    "tf32_d256": (torch.float32, True, 256),
    "ieee_d48": (torch.float32, False, 48),
    "ieee_d200": (torch.float32, False, 200),
}


@pytest.mark.parametrize("case", H200_TILE_CASES.values(), ids=H200_TILE_CASES.keys())
@pytest.mark.usefixtures("poison_outputs")
def test_triton_h200_tiles_match_reference(case, monkeypatch):
    """The tiles the launcher picks on an H200 (unequal query and key blocks, 16-row dkdv steps), run through the
    interpreter: causal with Nq != Nk, GQA and a padding mask cross several blocks of each size."""
    dtype, allow_tf32, D = case
    monkeypatch.setattr("deepfuse.kernels.attention.INTERPRET", False)  # the GPU table, not the interpreter's tiles
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", allow_tf32)
    check_case("triton", (2, 2, 1, 70, 90, D, True, True), dtype)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.usefixtures("poison_outputs")
def test_varlen_with_longest_sequence_of_one_token(causal):
    """max_seqlen == 1: Triton turns the length argument into a constant (the compile gate's varlen case)."""
    lengths = [1, 0, 1, 1]
    tensors, dy, cu = make_varlen(lengths, 2, 1, 24, torch.float32, seed=3)
    check_against_reference(
        lambda *t: attention_varlen(*t, cu, cu, 1, 1, causal=causal, backend="triton"),
        _packed_reference(lengths, causal),
        tensors,
        dy,
        ("q", "k", "v"),
    )

"""deepfuse._C: built where nvcc exists, codes agree with Python, failures are clean Python exceptions, and which
kernels the launchers pick (dry runs on a described device)."""

import importlib
import math
import os
import shutil

import pytest

from deepfuse.backend import DTYPE_CODES
from deepfuse.ops.activations import ACTIVATION_CODES
from tests.conftest import HAS_GPU

NVCC_PRESENT = shutil.which("nvcc") is not None and os.environ.get("DEEPFUSE_SKIP_CUDA", "0") in ("", "0")


def _import_C():
    try:
        from deepfuse import _C
    except ImportError as error:
        if NVCC_PRESENT:
            raise AssertionError(f"nvcc is on PATH, so the install must have built deepfuse._C: {error}") from error
        pytest.skip("deepfuse._C not built (no nvcc or DEEPFUSE_SKIP_CUDA)")
    return _C


def test_codes_match_python():
    _C = _import_C()
    assert _C.ACTIVATION_CODES == ACTIVATION_CODES
    assert {str(dtype).removeprefix("torch."): code for dtype, code in DTYPE_CODES.items()} == _C.DTYPE_CODES
    assert _C.CUDA_RUNTIME_VERSION >= 12000


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU error path")
def test_without_a_gpu_calls_raise_runtime_error_with_the_cuda_error_string():
    _C = _import_C()
    ok, message = _C.device_status()
    assert ok is False and message.startswith("cuda")
    with pytest.raises(RuntimeError, match=r"deepfuse CUDA error: cudaError\w+: "):
        _C.linear_act_fwd(16, 8, 1, 16, 8, 1, 0, 16, 0, 4, 4, 8, 1, 0, 0)
    with pytest.raises(RuntimeError, match=r"deepfuse CUDA error: cudaError\w+: "):
        _C.linear_act_bwd(16, 16, 16, 8, 1, 16, 8, 1, 16, 16, 0, 4, 4, 8, 1, 1, 0)
    with pytest.raises(RuntimeError, match=r"deepfuse CUDA error: cudaError\w+: "):
        _C.linear_act_bwd_workspace_bytes(4, 8, 1, 1, True)  # fp16 asks the device's capability
    assert _C.linear_act_bwd_workspace_bytes(4, 8, 0, 1, True) == 0  # fp32 never needs a workspace


def test_bad_arguments_raise_value_error():
    _C = _import_C()
    with pytest.raises(ValueError, match="M must be >= 0"):
        _C.linear_act_fwd(16, 8, 1, 16, 8, 1, 0, 16, 0, -1, 4, 8, 1, 0, 0)
    with pytest.raises(ValueError, match="y must be a device pointer"):
        _C.linear_act_fwd(16, 8, 1, 16, 8, 1, 0, 0, 0, 4, 4, 8, 1, 0, 0)
    with pytest.raises(ValueError, match="bad dtype code"):
        _C.linear_act_fwd(16, 8, 1, 16, 8, 1, 0, 16, 0, 4, 4, 8, 9, 0, 0)
    with pytest.raises(ValueError, match="bad activation code"):
        _C.linear_act_fwd(16, 8, 1, 16, 8, 1, 0, 16, 0, 4, 4, 8, 1, 99, 0)
    with pytest.raises(ValueError, match="workspace must be a device pointer"):
        _C.linear_act_bwd(16, 16, 16, 8, 1, 16, 8, 1, 16, 16, 0, 4, 4, 8, 1, 1, 0, workspace=0, workspace_bytes=64)
    with pytest.raises(ValueError, match="workspace_bytes must be >= 0"):
        _C.linear_act_bwd(16, 16, 16, 8, 1, 16, 8, 1, 16, 16, 0, 4, 4, 8, 1, 1, 0, workspace=16, workspace_bytes=-1)


def _lstm_seq_fwd_args(**overrides):
    """Keyword arguments of _C.lstm_seq_fwd for T=3, B=2, H=4 at fake (never dereferenced) addresses."""
    args = dict(
        xp=16,
        w_hh=16,
        w_stride_r=4,
        w_stride_k=1,
        lengths=0,
        hs=16,
        c0=16,
        cs=0,
        gates=0,
        c_n=16,
        c_work=16,
        T=3,
        B=2,
        H=4,
        dtype=1,
        path=0,
        stream=0,
    )
    return args | overrides


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU error path")
def test_lstm_without_a_gpu_raises_runtime_error_with_the_cuda_error_string():
    _C = _import_C()
    with pytest.raises(RuntimeError, match=r"deepfuse CUDA error: cudaError\w+: "):
        _C.lstm_seq_fwd(**_lstm_seq_fwd_args())
    with pytest.raises(RuntimeError, match=r"deepfuse CUDA error: cudaError\w+: "):
        _C.lstm_seq_path(256, 1)


def test_lstm_bad_arguments_raise_value_error():
    _C = _import_C()
    with pytest.raises(ValueError, match="T must be >= 0"):
        _C.lstm_seq_fwd(**_lstm_seq_fwd_args(T=-1))
    with pytest.raises(ValueError, match="hs must be a device pointer"):
        _C.lstm_seq_fwd(**_lstm_seq_fwd_args(hs=0))
    with pytest.raises(ValueError, match="bad dtype code"):
        _C.lstm_seq_fwd(**_lstm_seq_fwd_args(dtype=9))


def _attention_fwd_fp16(_C, head_dim=256, batch=2, heads=3, seqlen=130):
    """_C.attention_fwd at fake (never dereferenced) addresses: for dry runs only."""
    strides = (heads * seqlen * head_dim, seqlen * head_dim, head_dim, 1)
    sizes = (batch, heads, heads, seqlen, seqlen, head_dim)
    _C.attention_fwd(16, strides, 16, strides, 16, strides, 0, (0, 0), 16, 16, sizes, 0.1, False, 1, 0)


def test_launch_plan_records_launches_without_running_them():
    _C = _import_C()
    (launch,) = _C.launch_plan(lambda: _attention_fwd_fp16(_C))
    assert launch["kernel"] == "attention_fwd_kernel<__half, 256>"
    assert launch["grid"] == (2 * 3 * 3, 1, 1) and launch["block"] == 128 and not launch["cooperative"]
    # Above 48 KiB of dynamic shared memory, and the launcher opted in to exactly that much first.
    assert launch["smem"] > 48 * 1024 and launch["smem_opt_in"] == launch["smem"]
    # The device described is the one the launchers see: a smaller opt-in limit makes the launcher refuse.
    with pytest.raises(RuntimeError, match="bytes of shared memory per block; this GPU allows 49152"):
        _C.launch_plan(lambda: _attention_fwd_fp16(_C), smem_optin=48 * 1024)
    assert _C.launch_plan(lambda: _C.lstm_seq_fwd(**_lstm_seq_fwd_args()))[0]["cooperative"]
    assert not _C.launch_plan(lambda: _C.lstm_seq_fwd(**_lstm_seq_fwd_args()), cooperative=False)[0]["cooperative"]


def test_launch_plan_ends_its_dry_run_however_fn_exits():
    _C = _import_C()

    def fails():
        _attention_fwd_fp16(_C)
        raise KeyError("from fn")

    with pytest.raises(KeyError, match="from fn"):
        _C.launch_plan(fails)
    with pytest.raises(ValueError, match="already inside a launch plan"):
        _C.launch_plan(lambda: _C.launch_plan(lambda: None))
    assert len(_C.launch_plan(lambda: _attention_fwd_fp16(_C))) == 1  # neither left a dry run behind
    if not HAS_GPU:  # launches are real again: without a device they fail with the CUDA error
        with pytest.raises(RuntimeError, match=r"deepfuse CUDA error: cudaError\w+: "):
            _attention_fwd_fp16(_C)


def test_linear_act_kernel_name_says_which_kernel_and_why():
    _C = _import_C()
    fp16, bf16, fp32 = 1, 2, 0
    kernel, why = _C.linear_act_kernel_name(1000, 1000, 1000, fp16, 90)
    assert kernel == "linear_act_sm90_kernel<cutlass::half_t>" and "wgmma" in why
    assert _C.linear_act_kernel_name(8, 8, 8, bf16, 90)[0] == "linear_act_sm90_kernel<cutlass::bfloat16_t>"
    refused = {
        "device capability 8.0": _C.linear_act_kernel_name(1000, 1000, 1000, fp16, 80),
        "float16 and bfloat16 only": _C.linear_act_kernel_name(1000, 1000, 1000, fp32, 90),
        "not a multiple of 8": _C.linear_act_kernel_name(1000, 1000, 1001, fp16, 90),
        "non-contiguous K": _C.linear_act_kernel_name(64, 64, 64, fp16, 90, x_stride_k=64, x_stride_m=1),
        "row stride": _C.linear_act_kernel_name(64, 64, 64, fp16, 90, w_stride_n=68),
        "16-byte aligned": _C.linear_act_kernel_name(64, 64, 64, bf16, 90, aligned=False),
    }
    for reason, (kernel, why) in refused.items():
        assert reason in why and "sm90" not in kernel, (reason, kernel, why)
    assert refused["float16 and bfloat16 only"][0].startswith("gemm_detail::fused_gemm_simt_kernel<")
    assert refused["device capability 8.0"][0].startswith("gemm_detail::fused_gemm_wmma_kernel<__half,")


def test_linear_act_fwd_dispatches_by_capability_in_a_dry_run():
    _C = _import_C()
    a = 1 << 20

    def forward(k, dtype=1):
        return lambda: _C.linear_act_fwd(a, k, 1, a, k, 1, a, a, 0, 300, 200, k, dtype, 3, 0)

    (hopper,) = _C.launch_plan(forward(64))
    assert hopper["kernel"] == "linear_act_sm90_kernel<cutlass::half_t>"
    # 384 threads: a producer and two consumer warpgroups; a persistent grid over the 3 x 1 tiles of 128 x 256.
    grid_x, grid_y, grid_z = hopper["grid"]
    assert hopper["block"] == 384 and grid_x * grid_y * grid_z == 3
    assert hopper["smem_opt_in"] == hopper["smem"] > 48 << 10
    (ampere,) = _C.launch_plan(forward(64), capability=80)
    assert ampere["kernel"].startswith("gemm_detail::fused_gemm_wmma_kernel<__half,")
    (unaligned,) = _C.launch_plan(forward(65))
    assert unaligned["kernel"].startswith("gemm_detail::fused_gemm_wmma_kernel<__half,")
    (fp32,) = _C.launch_plan(forward(64, dtype=0))
    assert fp32["kernel"].startswith("gemm_detail::fused_gemm_simt_kernel<")


def test_linear_act_bwd_kernel_name_says_which_kernels_and_why():
    _C = _import_C()
    fp16, bf16, fp32 = 1, 2, 0
    kernels, why = _C.linear_act_bwd_kernel_name(1000, 1000, 1000, fp16, 90)
    assert kernels == "linear_act_dgrad_sm90_kernel<cutlass::half_t> + linear_act_wgrad_sm90_kernel<cutlass::half_t>"
    assert "wgmma" in why and "dz" in why
    assert "bfloat16_t" in _C.linear_act_bwd_kernel_name(8, 8, 8, bf16, 90, activation=0, bias=False)[0]
    refused = {
        "device capability 8.0": _C.linear_act_bwd_kernel_name(1000, 1000, 1000, fp16, 80),
        "float16 and bfloat16 only": _C.linear_act_bwd_kernel_name(1000, 1000, 1000, fp32, 90),
        "not a multiple of 8": _C.linear_act_bwd_kernel_name(1000, 1001, 1000, fp16, 90),
        "non-contiguous K": _C.linear_act_bwd_kernel_name(64, 64, 64, fp16, 90, w_stride_k=64, w_stride_n=1),
        "row stride": _C.linear_act_bwd_kernel_name(64, 64, 64, fp16, 90, x_stride_m=68),
        "16-byte aligned": _C.linear_act_bwd_kernel_name(64, 64, 64, bf16, 90, aligned=False),
        "no workspace": _C.linear_act_bwd_kernel_name(64, 64, 64, bf16, 90, workspace=False),
    }
    for reason, (kernel, why) in refused.items():
        assert reason in why and "sm90" not in kernel and "loading tiles" in why, (reason, kernel, why)
    assert refused["float16 and bfloat16 only"][0].startswith("gemm_detail::fused_gemm_simt_kernel<")
    assert refused["device capability 8.0"][0].startswith("gemm_detail::fused_gemm_wmma_kernel<__half,")
    # "none" without a bias needs no workspace: the GEMMs read dy itself.
    assert "sm90" in _C.linear_act_bwd_kernel_name(64, 64, 64, fp16, 90, activation=0, bias=False, workspace=False)[0]


def _planned(_C, fn, **device):
    """fn's return value and launches under a dry run (the workspace size depends on the device described)."""
    out = []
    launches = _C.launch_plan(lambda: out.append(fn()), **device)
    return out[0], launches


def test_linear_act_bwd_workspace_bytes_by_device_dtype_and_activation():
    _C = _import_C()
    M, N, fp16, fp32, gelu, none = 300, 200, 1, 0, 3, 0
    with_bias, _ = _planned(_C, lambda: _C.linear_act_bwd_workspace_bytes(M, N, fp16, gelu, True))
    without_bias, _ = _planned(_C, lambda: _C.linear_act_bwd_workspace_bytes(M, N, fp16, gelu, False))
    assert without_bias >= M * N * 2 and with_bias >= without_bias + N * 4  # dz, then >= 1 fp32 partial row
    assert _planned(_C, lambda: _C.linear_act_bwd_workspace_bytes(M, N, fp16, none, False))[0] == 0  # dz = dy
    assert 0 < _planned(_C, lambda: _C.linear_act_bwd_workspace_bytes(M, N, fp16, none, True))[0] < M * N * 2
    assert _planned(_C, lambda: _C.linear_act_bwd_workspace_bytes(M, N, fp32, gelu, True))[0] == 0
    assert _planned(_C, lambda: _C.linear_act_bwd_workspace_bytes(M, N, fp16, gelu, True), capability=80)[0] == 0


def test_linear_act_bwd_dispatches_by_capability_in_a_dry_run():
    _C = _import_C()
    a, M, N = 1 << 20, 300, 200

    def backward(k, dtype=1, activation=3, bias=a, workspace=True):
        def call():
            nbytes = _C.linear_act_bwd_workspace_bytes(M, N, dtype, activation, bias != 0) if workspace else 0
            _C.linear_act_bwd(a, a, a, k, 1, a, k, 1, a, a, bias, M, N, k, dtype, activation, 0, a, nbytes)

        return call

    preact, bias_sum, dgrad, wgrad = _C.launch_plan(backward(64))
    assert preact["kernel"] == "grad_preact_kernel<__half>" and preact["block"] == 256
    assert preact["grid"][0] == 4 and preact["grid"][1] >= 1  # 64 columns per block, slabs of rows
    assert bias_sum["kernel"] == "grad_bias_kernel<__half>" and bias_sum["grid"] == (1, 1, 1)
    # 384 threads: a producer and two consumer warpgroups; persistent grids over the 128 x 256 tiles of dx (300 x 64:
    # 3 tiles) and dW (200 x 64: 2 tiles).
    assert dgrad["kernel"] == "linear_act_dgrad_sm90_kernel<cutlass::half_t>" and dgrad["block"] == 384
    assert wgrad["kernel"] == "linear_act_wgrad_sm90_kernel<cutlass::half_t>" and wgrad["block"] == 384
    assert math.prod(dgrad["grid"]) == 3 and math.prod(wgrad["grid"]) == 2
    assert all(g["smem_opt_in"] == g["smem"] > 48 << 10 for g in (dgrad, wgrad))
    # "none" without a bias: nothing to store, the GEMMs read dy.
    assert [g["kernel"] for g in _C.launch_plan(backward(64, activation=0, bias=0))] == [
        "linear_act_dgrad_sm90_kernel<cutlass::half_t>",
        "linear_act_wgrad_sm90_kernel<cutlass::half_t>",
    ]
    wmma = "gemm_detail::fused_gemm_wmma_kernel<__nv_bfloat16,"
    for case, device in {
        "capability 8.0": dict(fn=backward(64, dtype=2), capability=80),
        "K not a multiple of 8": dict(fn=backward(65, dtype=2)),
        "no workspace": dict(fn=backward(64, dtype=2, workspace=False)),
    }.items():
        launches = _C.launch_plan(**device)
        assert len(launches) == 2 and all(g["kernel"].startswith(wmma) for g in launches), (case, launches)
    fp32 = _C.launch_plan(backward(64, dtype=0))
    assert len(fp32) == 2 and all(g["kernel"].startswith("gemm_detail::fused_gemm_simt_kernel<") for g in fp32)


def test_explain_names_the_cuda_kernels_forward_and_backward(monkeypatch):
    """deepfuse.explain on a usable cuda backend says which _C kernels run and why (here a 9.0 and an 8.0 device are
    described; the tensors stay on the CPU, since only their shapes, strides and addresses matter)."""
    _import_C()
    import torch

    import deepfuse
    from deepfuse import backend

    linear_act_module = importlib.import_module("deepfuse.ops.linear_act")  # deepfuse.ops.linear_act is the function

    monkeypatch.setattr(backend, "unusable_reason", lambda op, name, *args, **kwargs: None)
    x, w, b = torch.randn(4, 300, 64, dtype=torch.float16), torch.randn(200, 64, dtype=torch.float16), None
    monkeypatch.setattr(linear_act_module, "device_capability", lambda device: 90)
    hopper = deepfuse.explain("linear_act", x, w, b, "gelu").reasons["cuda"]
    assert "forward: linear_act_sm90_kernel<cutlass::half_t> (sm_90a CUTLASS kernel" in hopper
    assert "backward: linear_act_dgrad_sm90_kernel<cutlass::half_t> + linear_act_wgrad_sm90_kernel" in hopper
    monkeypatch.setattr(linear_act_module, "device_capability", lambda device: 80)
    ampere = deepfuse.explain("linear_act", x, w, b, "gelu").reasons["cuda"]
    assert ampere.count("fused_gemm_wmma_kernel<__half,") == 2 and ampere.count("device capability 8.0") == 2


def test_explain_names_the_cuda_conv_kernel(monkeypatch):
    """deepfuse.explain for conv2d_act on a usable cuda backend names the _C forward kernel: the sm_90a one for a
    channels_last half-precision call on a 9.0 device, the WMMA one for NCHW (saying why)."""
    _import_C()
    import torch

    import deepfuse
    from deepfuse import backend

    conv_module = importlib.import_module("deepfuse.ops.conv2d_act")  # deepfuse.ops.conv2d_act is the function
    monkeypatch.setattr(backend, "unusable_reason", lambda op, name, *args, **kwargs: None)
    monkeypatch.setattr(conv_module, "device_capability", lambda device: 90)
    x = torch.randn(2, 64, 15, 15, dtype=torch.float16)
    w = torch.randn(128, 64, 3, 3, dtype=torch.float16)
    channels_last = [t.contiguous(memory_format=torch.channels_last) for t in (x, w)]
    hopper = deepfuse.explain("conv2d_act", *channels_last, None, 2, 1, activation="relu").reasons["cuda"]
    assert "forward: conv2d_act_sm90_kernel<cutlass::half_t>" in hopper, hopper
    assert "backward" not in hopper  # nothing needs a gradient
    # An NCHW weight (as nn.Conv2d makes it) beside a channels_last x: the cuda backend passes W channels_last.
    nchw_weight = deepfuse.explain("conv2d_act", channels_last[0], w, None, 2, 1, activation="relu").reasons["cuda"]
    assert "forward: conv2d_act_sm90_kernel<cutlass::half_t>" in nchw_weight, nchw_weight
    nchw = deepfuse.explain("conv2d_act", x, w, None, 2, 1, activation="relu").reasons["cuda"]
    assert "sm90" not in nchw.split("(")[0] and "channels_last" in nchw, nchw
    # With gradients: backward's kernels too, each with why (stride 2: dx on WMMA, dW on sm_90a).
    training = [t.detach().requires_grad_() for t in channels_last]
    hopper = deepfuse.explain("conv2d_act", *training, None, 2, 1, activation="relu").reasons["cuda"]
    assert "backward dx: gemm_detail::fused_gemm_wmma_kernel<__half, FusedGemm<OutputGradTaps," in hopper, hopper
    assert "backward dW, db: conv2d_act_wgrad_sm90_kernel<cutlass::half_t>" in hopper, hopper


# conv2d_act_fwd's shape entries: (batch, C, H, W, Cout, OH, OW, KH, KW, SH, SW, pad_top, pad_left, DH, DW, groups).
CONV_3X3 = (2, 64, 56, 56, 128, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1, 1)


def _nchw(n, c, h, w):
    return [c * h * w, h * w, w, 1]


def test_conv2d_act_kernel_name_says_which_kernel_and_why():
    _C = _import_C()
    fp16, bf16, fp32 = 1, 2, 0
    kernel, why = _C.conv2d_act_kernel_name(CONV_3X3, fp16, 90)
    assert kernel == "conv2d_act_sm90_kernel<cutlass::half_t>" and "wgmma" in why and "im2col" in why
    assert _C.conv2d_act_kernel_name(CONV_3X3, bf16, 90)[0] == "conv2d_act_sm90_kernel<cutlass::bfloat16_t>"
    # Taken too: stride 2 on odd sizes, dilation, a 1x1 stride-2 conv (its exact bottom padding is -1), a residual.
    for shape in [
        (2, 64, 15, 15, 128, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1),
        (2, 16, 12, 10, 24, 12, 10, 3, 3, 1, 1, 2, 2, 2, 2, 1),
        (2, 64, 8, 8, 64, 4, 4, 1, 1, 2, 2, 0, 0, 1, 1, 1),
    ]:
        kernel, why = _C.conv2d_act_kernel_name(shape, fp16, 90, residual=True)
        assert "sm90" in kernel, (shape, why)
    # A wanted pre-activation: the same kernel stores z, then an activation pass makes y; fused otherwise.
    kernel, why = _C.conv2d_act_kernel_name(CONV_3X3, bf16, 90, preact=True, activation=3)
    assert kernel == "conv2d_act_sm90_kernel<cutlass::bfloat16_t>", why
    assert "+ an activation pass (conv2d_act_activation_pass_kernel<__nv_bfloat16>" in why, why
    assert "activation pass" not in _C.conv2d_act_kernel_name(CONV_3X3, bf16, 90, activation=3)[1]
    refused = {
        "device capability 8.0": _C.conv2d_act_kernel_name(CONV_3X3, fp16, 80),
        "float16 and bfloat16 only": _C.conv2d_act_kernel_name(CONV_3X3, fp32, 90),
        "x is not channels_last": _C.conv2d_act_kernel_name(
            CONV_3X3, fp16, 90, x_strides=_nchw(2, 64, 56, 56), y_strides=_nchw(2, 128, 56, 56)
        ),
        "weight is not channels_last": _C.conv2d_act_kernel_name(CONV_3X3, fp16, 90, w_strides=_nchw(128, 64, 3, 3)),
        "y is not channels_last": _C.conv2d_act_kernel_name(CONV_3X3, fp16, 90, y_strides=_nchw(2, 128, 56, 56)),
        "groups != 1": _C.conv2d_act_kernel_name((*CONV_3X3[:-1], 2), fp16, 90),
        "not a multiple of 8": _C.conv2d_act_kernel_name((2, 60, 56, 56, *CONV_3X3[4:]), fp16, 90),
        "stride over 8": _C.conv2d_act_kernel_name((2, 64, 56, 56, 128, 7, 7, 3, 3, 9, 9, 1, 1, 1, 1, 1), fp16, 90),
        "16-byte aligned": _C.conv2d_act_kernel_name(CONV_3X3, bf16, 90, aligned=False),
        "output size": _C.conv2d_act_kernel_name((*CONV_3X3[:5], 50, 50, *CONV_3X3[7:]), fp16, 90),
    }
    for reason, (kernel, why) in refused.items():
        assert reason in why and "sm90" not in kernel, (reason, kernel, why)
    assert refused["float16 and bfloat16 only"][0].startswith(
        "gemm_detail::fused_gemm_simt_kernel<FusedGemm<InputPatches,"
    )
    assert refused["x is not channels_last"][0].startswith(
        "gemm_detail::fused_gemm_wmma_kernel<__half, FusedGemm<InputPatches,"
    )


def test_conv2d_act_fwd_dispatches_by_capability_and_layout_in_a_dry_run():
    _C = _import_C()
    a = 1 << 20
    nhwc_x, nhwc_y, krsc = [64 * 56 * 56, 1, 56 * 64, 64], [128 * 56 * 56, 1, 56 * 128, 128], [64 * 9, 1, 3 * 64, 64]

    def forward(x_strides, w_strides, y_strides, dtype=1, preact=0):
        return lambda: _C.conv2d_act_fwd(
            CONV_3X3, a, x_strides, a, w_strides, a, a, y_strides, a, preact, y_strides, dtype, 3, 0
        )

    (hopper,) = _C.launch_plan(forward(nhwc_x, krsc, nhwc_y))
    assert hopper["kernel"] == "conv2d_act_sm90_kernel<cutlass::half_t>"
    # 256 threads: a producer and a consumer warpgroup; one CTA per 128 x 128 output tile (6272 pixels x 128).
    assert hopper["block"] == 256 and math.prod(hopper["grid"]) == 49
    assert hopper["smem_opt_in"] == hopper["smem"] > 48 << 10
    wmma = "gemm_detail::fused_gemm_wmma_kernel<__half, FusedGemm<InputPatches,"
    for case, device in {
        "capability 8.0": dict(fn=forward(nhwc_x, krsc, nhwc_y), capability=80),
        "NCHW": dict(fn=forward(_nchw(2, 64, 56, 56), _nchw(128, 64, 3, 3), _nchw(2, 128, 56, 56))),
    }.items():
        (launch,) = _C.launch_plan(**device)
        assert launch["kernel"].startswith(wmma), (case, launch)
    # The pre-activation wanted: the kernel stores z, then y = act(z) in 16-byte vectors (6272 pixels x 128 channels
    # / 8 = 100352 vectors, 256 a block: 392 blocks, under the grid-stride cap of 8 blocks per SM).
    conv, activation_pass = _C.launch_plan(forward(nhwc_x, krsc, nhwc_y, preact=a))
    assert conv["kernel"] == "conv2d_act_sm90_kernel<cutlass::half_t>" and math.prod(conv["grid"]) == 49
    assert activation_pass["kernel"] == "conv2d_act_activation_pass_kernel<__half>"
    assert activation_pass["block"] == 256 and activation_pass["grid"] == (392, 1, 1)
    (_, capped) = _C.launch_plan(forward(nhwc_x, krsc, nhwc_y, preact=a), sms=16)
    assert capped["grid"] == (128, 1, 1)
    (fp32,) = _C.launch_plan(forward(nhwc_x, krsc, nhwc_y, dtype=0))
    assert fp32["kernel"].startswith("gemm_detail::fused_gemm_simt_kernel<")


# conv2d_act_bwd's refusal cases and kernels: CONV_3X3 unless said. On a 9.0 device dz is stored once
# (grad_preact_kernel, db with it), then CUTLASS's dgrad and wgrad, each where it can; the other keeps its WMMA GEMM.
CONV_STRIDE_2 = (2, 64, 15, 15, 128, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1)
DGRAD_SM90, WGRAD_SM90 = (
    "conv2d_act_dgrad_sm90_kernel<cutlass::half_t>",
    "conv2d_act_wgrad_sm90_kernel<cutlass::half_t>",
)
DGRAD_WMMA = "gemm_detail::fused_gemm_wmma_kernel<__half, FusedGemm<OutputGradTaps,"
WGRAD_WMMA = "gemm_detail::fused_gemm_wmma_kernel<__half, FusedGemm<OutputGradByChannel,"


def test_conv2d_act_bwd_kernel_name_says_which_kernels_and_why():
    _C = _import_C()
    fp16, bf16, fp32 = 1, 2, 0
    (dgrad, dgrad_why), (wgrad, wgrad_why) = _C.conv2d_act_bwd_kernel_name(CONV_3X3, fp16, 90)
    assert (dgrad, wgrad) == (DGRAD_SM90, WGRAD_SM90), (dgrad_why, wgrad_why)
    assert all("wgmma" in why and "grad_preact_kernel" in why for why in (dgrad_why, wgrad_why))
    assert "db" in wgrad_why
    bf16_kernels = [kernel for kernel, _ in _C.conv2d_act_bwd_kernel_name(CONV_3X3, bf16, 90)]
    assert bf16_kernels == [k.replace("half_t", "bfloat16_t") for k in (DGRAD_SM90, WGRAD_SM90)]
    # Strided: dgrad on WMMA (CUTLASS 4.2 tests its sm_90 dgrad at unit stride only), wgrad on sm_90a.
    (dgrad, dgrad_why), (wgrad, _) = _C.conv2d_act_bwd_kernel_name(CONV_STRIDE_2, fp16, 90)
    assert dgrad.startswith(DGRAD_WMMA) and "strided" in dgrad_why and wgrad == WGRAD_SM90, dgrad_why
    # A contiguous 1x1 weight is channels_last too (its size-1 strides are settled): both on sm_90a.
    one_by_one = (2, 64, 8, 8, 64, 8, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1)
    kernels = _C.conv2d_act_bwd_kernel_name(one_by_one, fp16, 90, w_strides=_nchw(64, 64, 1, 1))
    assert [k for k, _ in kernels] == [DGRAD_SM90, WGRAD_SM90], kernels
    # "none" without a bias needs no workspace (the GEMMs read dy itself).
    none = _C.conv2d_act_bwd_kernel_name(CONV_3X3, fp16, 90, activation=0, bias=False, workspace=False)
    assert [k for k, _ in none] == [DGRAD_SM90, WGRAD_SM90], none
    nchw_x = dict(x_strides=_nchw(2, 64, 56, 56))
    refused = {  # reason: (call, whether dgrad refuses, whether wgrad refuses)
        "device capability 8.0": (_C.conv2d_act_bwd_kernel_name(CONV_3X3, fp16, 80), True, True),
        "float16 and bfloat16 only": (_C.conv2d_act_bwd_kernel_name(CONV_3X3, fp32, 90), True, True),
        "grad_y is not packed channels_last": (
            _C.conv2d_act_bwd_kernel_name(CONV_3X3, fp16, 90, y_strides=_nchw(2, 128, 56, 56)),
            True,
            True,
        ),
        "grad_x is not channels_last": (_C.conv2d_act_bwd_kernel_name(CONV_3X3, fp16, 90, **nchw_x), True, False),
        "x is not packed channels_last": (_C.conv2d_act_bwd_kernel_name(CONV_3X3, fp16, 90, **nchw_x), False, True),
        "weight is not channels_last": (
            _C.conv2d_act_bwd_kernel_name(CONV_3X3, fp16, 90, w_strides=_nchw(128, 64, 3, 3)),
            True,
            False,
        ),
        "grad_weight is not packed channels_last": (
            _C.conv2d_act_bwd_kernel_name(CONV_3X3, fp16, 90, w_strides=_nchw(128, 64, 3, 3)),
            False,
            True,
        ),
        "groups != 1": (_C.conv2d_act_bwd_kernel_name((*CONV_3X3[:-1], 2), fp16, 90), True, True),
        "not a multiple of 8": (
            _C.conv2d_act_bwd_kernel_name((2, 60, 56, 56, *CONV_3X3[4:]), fp16, 90),
            True,
            True,
        ),
        "16-byte aligned": (_C.conv2d_act_bwd_kernel_name(CONV_3X3, bf16, 90, aligned=False), True, True),
        "no workspace": (_C.conv2d_act_bwd_kernel_name(CONV_3X3, fp16, 90, workspace=False), True, True),
    }
    for reason, (((dgrad, dgrad_why), (wgrad, wgrad_why)), dgrad_refuses, wgrad_refuses) in refused.items():
        for refuses, kernel, why in ((dgrad_refuses, dgrad, dgrad_why), (wgrad_refuses, wgrad, wgrad_why)):
            if refuses:
                assert reason in why and "sm90" not in kernel and "loading tiles" in why, (reason, kernel, why)
            else:
                assert reason not in why, (reason, kernel, why)
    assert refused["float16 and bfloat16 only"][0][0][0].startswith(
        "gemm_detail::fused_gemm_simt_kernel<FusedGemm<OutputGradTaps,"
    )
    assert refused["device capability 8.0"][0][1][0].startswith(WGRAD_WMMA)


def test_conv2d_act_bwd_workspace_bytes_by_device_dtype_and_groups():
    _C = _import_C()
    fp16, fp32, gelu, none = 1, 0, 3, 0
    pixels, channels = 2 * 56 * 56, 128
    with_bias, _ = _planned(_C, lambda: _C.conv2d_act_bwd_workspace_bytes(CONV_3X3, fp16, gelu, True))
    without_bias, _ = _planned(_C, lambda: _C.conv2d_act_bwd_workspace_bytes(CONV_3X3, fp16, gelu, False))
    assert without_bias >= pixels * channels * 2 and with_bias >= without_bias + channels * 4  # dz, then db partials
    assert _planned(_C, lambda: _C.conv2d_act_bwd_workspace_bytes(CONV_3X3, fp16, none, False))[0] == 0  # dz = dy
    assert _planned(_C, lambda: _C.conv2d_act_bwd_workspace_bytes(CONV_3X3, fp32, gelu, True))[0] == 0
    assert _planned(_C, lambda: _C.conv2d_act_bwd_workspace_bytes(CONV_3X3, fp16, gelu, True), capability=80)[0] == 0
    grouped = (*CONV_3X3[:-1], 2)
    assert _planned(_C, lambda: _C.conv2d_act_bwd_workspace_bytes(grouped, fp16, gelu, True))[0] == 0


def test_conv2d_act_bwd_dispatches_each_gradient_in_a_dry_run():
    _C = _import_C()
    a = 1 << 20

    def backward(shape, grad_x=a, grad_weight=a, grad_bias=a, dtype=1, workspace=True):
        n, c, h, w, k, oh, ow, kh, kw = shape[:9]
        x, y = [c * h * w, 1, w * c, c], [k * oh * ow, 1, ow * k, k]
        krsc = [kh * kw * c, 1, kw * c, c]

        def call():
            nbytes = _C.conv2d_act_bwd_workspace_bytes(shape, dtype, 3, grad_bias != 0) if workspace else 0
            _C.conv2d_act_bwd(
                shape,
                a,
                a,
                y,
                a,
                x,
                a,
                krsc,
                grad_x,
                x,
                grad_weight,
                krsc,
                grad_bias,
                dtype,
                3,
                0,
                workspace=a,
                workspace_bytes=nbytes,
            )

        return call

    preact, bias_sum, dgrad, wgrad = _C.launch_plan(backward(CONV_3X3))
    # dz: 6272 pixels x 128 channels, 64 columns a block; db's slabs added in order by one block of 256.
    assert preact["kernel"] == "grad_preact_kernel<__half>" and preact["grid"][0] == 2 and preact["grid"][1] >= 1
    assert bias_sum["kernel"] == "grad_bias_kernel<__half>" and bias_sum["grid"] == (1, 1, 1)
    # 256 threads (a producer and a consumer warpgroup), a CTA per 128 x 128 tile: dx is 6272 pixels x 64 channels
    # (49 tiles); dW is 128 output channels x (64 channels, 3 x 3 taps), and wgrad's N tile spans the channels of one
    # tap only: 1 x (1 x 9) tiles (half of each tile idle at 64 channels).
    assert dgrad["kernel"] == DGRAD_SM90 and dgrad["block"] == 256 and math.prod(dgrad["grid"]) == 49
    assert wgrad["kernel"] == WGRAD_SM90 and wgrad["block"] == 256 and wgrad["grid"] == (1, 9, 1)
    assert all(g["smem_opt_in"] == g["smem"] > 48 << 10 for g in (dgrad, wgrad))
    # Strided: the sm_90a side first (dz, db, wgrad), then dx on WMMA from dy and saved.
    kernels = [g["kernel"] for g in _C.launch_plan(backward(CONV_STRIDE_2))]
    assert kernels[:3] == ["grad_preact_kernel<__half>", "grad_bias_kernel<__half>", WGRAD_SM90], kernels
    assert len(kernels) == 4 and kernels[3].startswith(DGRAD_WMMA), kernels
    # db alone (a frozen weight, x needs no gradient): column sums only, no GEMM.
    db_only = [g["kernel"] for g in _C.launch_plan(backward(CONV_3X3, grad_x=0, grad_weight=0))]
    assert db_only == ["grad_preact_kernel<__half>", "grad_bias_kernel<__half>"], db_only
    for case, plan in {
        "capability 8.0": dict(fn=backward(CONV_3X3), capability=80),
        "no workspace": dict(fn=backward(CONV_3X3, workspace=False)),
    }.items():
        kernels = [g["kernel"] for g in _C.launch_plan(**plan)]
        assert len(kernels) == 2 and kernels[0].startswith(DGRAD_WMMA) and kernels[1].startswith(WGRAD_WMMA), case

"""deepfuse._C: built where nvcc exists, codes agree with Python, failures are clean Python exceptions."""

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

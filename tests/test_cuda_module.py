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

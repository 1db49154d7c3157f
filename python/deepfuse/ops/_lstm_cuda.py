"""CUDA C++ twins of kernels/lstm.py's launchers (deepfuse._C.lstm_*): the same signatures and return contracts.

The sequence kernels take one of two paths (csrc/lstm.cu): "persistent" (one cooperative launch per direction,
W_hh resident in shared memory across the steps) or "per_step" (one launch per step, W_hh streamed from L2);
``seq_path`` says which one a hidden size gets on a device.

dtypes: float32, float16, bfloat16 (fp32 accumulation; fp32 cell state and BPTT carries between steps).
"""

from __future__ import annotations

import torch

from deepfuse import backend as _backend
from deepfuse.kernels import utils as _kernel_utils
from deepfuse.ops._shared import pointer

_PATH_CODES = {"auto": 0, "persistent": 1, "per_step": 2}
PATH = "auto"  # the sequence path: csrc/lstm.cu's choice, or forced (tests and benchmarks set it)


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def _lengths(lengths, device):
    return lengths.to(device=device, dtype=torch.int32).contiguous() if lengths is not None else None


def lstm_cell_fwd(x, h, c, w_ih, w_hh, bias, save_gates: bool):
    """(h_next, c_next, gates): gates (B, 4H) activated (i, f, g, o) when save_gates, else empty."""
    from deepfuse import _C

    B, IN = x.shape
    H = h.shape[1]
    h_next = _kernel_utils.empty_output((B, H), x)
    c_next = _kernel_utils.empty_output((B, H), x)
    gates = _kernel_utils.empty_output((B, 4 * H) if save_gates else (0,), x)
    if B == 0 or H == 0:
        return h_next, c_next, gates
    bias = bias.contiguous() if bias is not None else None
    with torch.cuda.device(x.device):
        _C.lstm_cell_fwd(
            pointer(x),
            x.stride(0),
            x.stride(1),
            pointer(h),
            h.stride(0),
            h.stride(1),
            pointer(c),
            c.stride(0),
            c.stride(1),
            pointer(w_ih),
            w_ih.stride(0),
            w_ih.stride(1),
            pointer(w_hh),
            w_hh.stride(0),
            w_hh.stride(1),
            pointer(bias),
            pointer(h_next),
            pointer(c_next),
            pointer(gates),
            B,
            IN,
            H,
            _backend.DTYPE_CODES[x.dtype],
            _stream(),
        )
    return h_next, c_next, gates


def lstm_cell_grad_gates(grad_h, grad_c, c, c_next, gates):
    """(dgates (B, 4H) pre-activation, dc_prev (B, H)); grad_c may be None."""
    from deepfuse import _C

    B, H = c.shape
    dgates = _kernel_utils.empty_output((B, 4 * H), c)
    dc_prev = _kernel_utils.empty_output((B, H), c)
    if B == 0 or H == 0:
        return dgates, dc_prev
    grad_h, c, c_next, gates = (t.to(c.dtype).contiguous() for t in (grad_h, c, c_next, gates))
    grad_c = grad_c.to(c.dtype).contiguous() if grad_c is not None else None
    with torch.cuda.device(c.device):
        _C.lstm_cell_grad_gates(
            pointer(grad_h),
            pointer(grad_c),
            pointer(c),
            pointer(c_next),
            pointer(gates),
            pointer(dgates),
            pointer(dc_prev),
            B,
            H,
            _backend.DTYPE_CODES[c.dtype],
            _stream(),
        )
    return dgates, dc_prev


def _seq_fwd(xp, h0, c0, w_hh, lengths, save: bool, path: str):
    from deepfuse import _C

    T, B, H4 = xp.shape
    H = H4 // 4
    hs = _kernel_utils.empty_output((T + 1, B, H), xp)
    hs[0] = h0
    cs = _kernel_utils.empty_output((T + 1, B, H) if save else (0,), xp)
    if save:
        cs[0] = c0
    gates = _kernel_utils.empty_output((T, B, 4 * H) if save else (0,), xp)
    c_n = _kernel_utils.empty_output((B, H), xp)
    if T == 0 or B == 0 or H == 0:
        return hs, cs, gates, c_n.copy_(c0)
    xp = xp.contiguous()
    c0 = c0.to(xp.dtype).contiguous()
    lengths = _lengths(lengths, xp.device)
    c_work = torch.empty((B, H), device=xp.device, dtype=torch.float32)  # c of tiles not kept on chip
    with torch.cuda.device(xp.device):
        _C.lstm_seq_fwd(
            pointer(xp),
            pointer(w_hh),
            w_hh.stride(0),
            w_hh.stride(1),
            pointer(lengths),
            pointer(hs),
            pointer(c0),
            pointer(cs),
            pointer(gates),
            pointer(c_n),
            pointer(c_work),
            T,
            B,
            H,
            _backend.DTYPE_CODES[xp.dtype],
            _PATH_CODES[path],
            _stream(),
        )
    return hs, cs, gates, c_n


def _seq_bwd(dhs, dcs, cs, gates, w_hh, lengths, path: str):
    from deepfuse import _C

    T = cs.shape[0] - 1
    B, H = cs.shape[1], cs.shape[2]
    dgates = _kernel_utils.empty_output((T, B, 4 * H), cs)
    if T == 0 or B == 0 or H == 0:  # zero carries: the direct gradients of h0, c0
        return dgates, dhs[0].to(cs.dtype, copy=True), dcs[0].to(cs.dtype, copy=True)
    dh0 = _kernel_utils.empty_output((B, H), cs)
    dc0 = _kernel_utils.empty_output((B, H), cs)
    dhs, dcs, gates = (t.to(cs.dtype).contiguous() for t in (dhs, dcs, gates))
    cs = cs.contiguous()
    lengths = _lengths(lengths, cs.device)
    work = torch.empty((2, B, H), device=cs.device, dtype=torch.float32)  # dh, dc carries of tiles not kept on chip
    with torch.cuda.device(cs.device):
        _C.lstm_seq_bwd(
            pointer(dhs),
            pointer(dcs),
            pointer(cs),
            pointer(gates),
            pointer(w_hh),
            w_hh.stride(0),
            w_hh.stride(1),
            pointer(lengths),
            pointer(dgates),
            pointer(dh0),
            pointer(dc0),
            pointer(work),
            T,
            B,
            H,
            _backend.DTYPE_CODES[cs.dtype],
            _PATH_CODES[path],
            _stream(),
        )
    return dgates, dh0, dc0


def lstm_seq_fwd(xp, h0, c0, w_hh, lengths, save: bool):
    """(hs, cs, gates, c_n) from input projections xp (T, B, 4H): hs (T + 1, B, H) with h0 first and zeros
    where a row is past its length; when save (for backward) cs likewise and gates (T, B, 4H) activated,
    else both empty (never written); c_n (B, H) each row's cell state after its last step (c0 for length 0)."""
    return _seq_fwd(xp, h0, c0, w_hh, lengths, save, PATH)


def lstm_seq_bwd(dhs, dcs, cs, gates, w_hh, lengths):
    """(dgates (T, B, 4H) pre-activation, dh0, dc0) by backpropagation through time.

    dhs, dcs: (T + 1, B, H) gradients of the hs, cs that lstm_seq_fwd returned (index 0: h0, c0).
    """
    return _seq_bwd(dhs, dcs, cs, gates, w_hh, lengths, PATH)


def seq_path(hidden_size: int, dtype: torch.dtype, device) -> str:
    """The path ("persistent" or "per_step") lstm_seq_fwd/bwd take for this hidden size and dtype on ``device``."""
    from deepfuse import _C

    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"seq_path: the CUDA kernels run on CUDA devices, got {device}")
    with torch.cuda.device(device):
        return _C.lstm_seq_path(hidden_size, _backend.DTYPE_CODES[dtype])

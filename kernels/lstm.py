"""Triton kernels for the LSTM (PyTorch's gate order i, f, g, o; c' = f*c + i*g, h' = o*tanh(c')).

Cell: one kernel computes both matmuls (x W_ih^T and h W_hh^T) for the four gates of a hidden block, the
gate activations and the state update. Its backward forms the pre-activation gate gradients in one
pointwise kernel; the four GEMMs then run on linear_act's kernels.

Sequence (one layer, one direction): the input projection of every time step is one GEMM (outside), then
one program per batch block walks the time steps: per step it reads h_{t-1} (all hidden units), so it
streams W_hh from L2 each step rather than holding it on chip (a first version: the persistent,
W_hh-resident multi-program design is future work). Rows past their sequence length output zeros; the
caller picks each row's final state. Backward walks the steps in reverse with the (dh, dc) carries in
per-program buffers; the weight gradients are then single GEMMs over all steps.
"""

import torch
import triton
import triton.language as tl

from .gemm_common import INTERPRET, dot_flags, mma


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _load_f32(ptr, offsets, mask):
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _gate_block(acc, a_ptrs, a_mask, w_ptr, gate, H, offs_j, mask_j, offs_k, mask_k, swr, swc,
                DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):  # fmt: skip
    """acc += A (BLOCK_B, BLOCK_K) @ W[gate * H + j, k]^T for the hidden block j."""
    a = tl.load(a_ptrs, mask=a_mask, other=0.0)
    w = tl.load(w_ptr + (gate * H + offs_j)[None, :] * swr + offs_k[:, None] * swc,
                mask=mask_j[None, :] & mask_k[:, None], other=0.0)  # fmt: skip
    return mma(a, w, acc, DOT_PRECISION, UPCAST_DOT)


@triton.jit
def _accumulate_gates(acc_i, acc_f, acc_g, acc_o, a_ptr, sab, sak, offs_b, mask_b, w_ptr, swr, swc, K, H, offs_j,
                      mask_j, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
                      BLOCK_K: tl.constexpr):  # fmt: skip
    """The four gate accumulators += A (rows offs_b, K columns) @ W[gate * H + j, :K]^T."""
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a_ptrs = a_ptr + offs_b[:, None] * sab + offs_k[None, :] * sak
        a_mask = mask_b[:, None] & mask_k[None, :]
        args = (offs_j, mask_j, offs_k, mask_k, swr, swc, DOT_PRECISION, UPCAST_DOT)
        acc_i = _gate_block(acc_i, a_ptrs, a_mask, w_ptr, 0, H, *args)
        acc_f = _gate_block(acc_f, a_ptrs, a_mask, w_ptr, 1, H, *args)
        acc_g = _gate_block(acc_g, a_ptrs, a_mask, w_ptr, 2, H, *args)
        acc_o = _gate_block(acc_o, a_ptrs, a_mask, w_ptr, 3, H, *args)
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def _lstm_cell_fwd_kernel(
    # pointers: gates_out (B, 4H) receives the activated gates (i, f, g, o) for backward
    x_ptr, h_ptr, c_ptr, wih_ptr, whh_ptr, bias_ptr, h_out_ptr, c_out_ptr, gates_ptr,
    # sizes
    B, IN, H,
    # strides
    sxb, sxk, shb, shk, scb, sch, swir, swic, swhr, swhc,
    # meta-parameters
    HAS_BIAS: tl.constexpr, SAVE_GATES: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_j = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_j = offs_j < H
    acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc_i, acc_f, acc_g, acc_o = _accumulate_gates(acc_i, acc_f, acc_g, acc_o, x_ptr, sxb, sxk, offs_b, mask_b,
                                                   wih_ptr, swir, swic, IN, H, offs_j, mask_j, DOT_PRECISION,
                                                   UPCAST_DOT, BLOCK_K)  # fmt: skip
    acc_i, acc_f, acc_g, acc_o = _accumulate_gates(acc_i, acc_f, acc_g, acc_o, h_ptr, shb, shk, offs_b, mask_b,
                                                   whh_ptr, swhr, swhc, H, H, offs_j, mask_j, DOT_PRECISION,
                                                   UPCAST_DOT, BLOCK_K)  # fmt: skip
    if HAS_BIAS:  # b_ih + b_hh, summed by the caller
        acc_i += tl.load(bias_ptr + offs_j, mask=mask_j, other=0.0).to(tl.float32)[None, :]
        acc_f += tl.load(bias_ptr + H + offs_j, mask=mask_j, other=0.0).to(tl.float32)[None, :]
        acc_g += tl.load(bias_ptr + 2 * H + offs_j, mask=mask_j, other=0.0).to(tl.float32)[None, :]
        acc_o += tl.load(bias_ptr + 3 * H + offs_j, mask=mask_j, other=0.0).to(tl.float32)[None, :]
    mask = mask_b[:, None] & mask_j[None, :]
    c = tl.load(c_ptr + offs_b[:, None] * scb + offs_j[None, :] * sch, mask=mask, other=0.0).to(tl.float32)
    i, f, g, o = tl.sigmoid(acc_i), tl.sigmoid(acc_f), _tanh(acc_g), tl.sigmoid(acc_o)
    c_new = f * c + i * g
    h_new = o * _tanh(c_new)
    out = offs_b[:, None] * H + offs_j[None, :]
    tl.store(h_out_ptr + out, h_new.to(h_out_ptr.dtype.element_ty), mask=mask)
    tl.store(c_out_ptr + out, c_new.to(c_out_ptr.dtype.element_ty), mask=mask)
    if SAVE_GATES:
        gates = offs_b[:, None] * (4 * H) + offs_j[None, :]
        tl.store(gates_ptr + gates, i.to(gates_ptr.dtype.element_ty), mask=mask)
        tl.store(gates_ptr + gates + H, f.to(gates_ptr.dtype.element_ty), mask=mask)
        tl.store(gates_ptr + gates + 2 * H, g.to(gates_ptr.dtype.element_ty), mask=mask)
        tl.store(gates_ptr + gates + 3 * H, o.to(gates_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gate_grads(dh, dc_in, c_prev, c_new, i, f, g, o):
    """Pre-activation gate gradients and the cell-state gradient carried to the previous step."""
    tc = _tanh(c_new)
    dc = dc_in + dh * o * (1.0 - tc * tc)
    return dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o), dc * f


@triton.jit
def _lstm_cell_bwd_kernel(
    # pointers: all (B, H) or (B, 4H) contiguous
    dh_ptr, dc_ptr, c_ptr, c_new_ptr, gates_ptr, dgates_ptr, dc_prev_ptr,
    B, H,
    HAS_DC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_j = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b < B)[:, None] & (offs_j < H)[None, :]
    state = offs_b[:, None] * H + offs_j[None, :]
    gates = offs_b[:, None] * (4 * H) + offs_j[None, :]
    dc_in = _load_f32(dc_ptr, state, mask) if HAS_DC else tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    di, df, dg, do, dc_prev = _gate_grads(
        _load_f32(dh_ptr, state, mask), dc_in, _load_f32(c_ptr, state, mask), _load_f32(c_new_ptr, state, mask),
        _load_f32(gates_ptr, gates, mask), _load_f32(gates_ptr, gates + H, mask),
        _load_f32(gates_ptr, gates + 2 * H, mask), _load_f32(gates_ptr, gates + 3 * H, mask),
    )  # fmt: skip
    out_ty = dgates_ptr.dtype.element_ty
    tl.store(dgates_ptr + gates, di.to(out_ty), mask=mask)
    tl.store(dgates_ptr + gates + H, df.to(out_ty), mask=mask)
    tl.store(dgates_ptr + gates + 2 * H, dg.to(out_ty), mask=mask)
    tl.store(dgates_ptr + gates + 3 * H, do.to(out_ty), mask=mask)
    tl.store(dc_prev_ptr + state, dc_prev.to(dc_prev_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lstm_seq_fwd_kernel(
    # pointers: xp (T, B, 4H) input projections with both biases; hs, cs (T + 1, B, H) hold h0, c0 at
    # step 0 and h_t, c_t at step t + 1; gates (T, B, 4H) activated (when SAVE); lengths (B,) int32
    xp_ptr, whh_ptr, lengths_ptr, hs_ptr, cs_ptr, gates_ptr,
    T, B, H,
    swr, swc,
    HAS_LENGTHS: tl.constexpr, SAVE_GATES: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    if HAS_LENGTHS:
        lengths = tl.load(lengths_ptr + offs_b, mask=mask_b, other=0)
    for t in range(0, T):
        h_prev_ptr = hs_ptr + t * B * H  # written by this program in the previous step (or h0)
        c_prev_ptr = cs_ptr + t * B * H
        valid = mask_b
        if HAS_LENGTHS:
            valid = valid & (t < lengths)
        for j0 in range(0, H, BLOCK_H):
            offs_j = j0 + tl.arange(0, BLOCK_H)
            mask_j = offs_j < H
            mask = mask_b[:, None] & mask_j[None, :]
            xp = xp_ptr + t * B * 4 * H + offs_b[:, None] * (4 * H) + offs_j[None, :]
            acc_i = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
            acc_f = tl.load(xp + H, mask=mask, other=0.0).to(tl.float32)
            acc_g = tl.load(xp + 2 * H, mask=mask, other=0.0).to(tl.float32)
            acc_o = tl.load(xp + 3 * H, mask=mask, other=0.0).to(tl.float32)
            acc_i, acc_f, acc_g, acc_o = _accumulate_gates(acc_i, acc_f, acc_g, acc_o, h_prev_ptr, H, 1, offs_b, mask_b,
                                                           whh_ptr, swr, swc, H, H, offs_j, mask_j, DOT_PRECISION,
                                                           UPCAST_DOT, BLOCK_K)  # fmt: skip
            state = offs_b[:, None] * H + offs_j[None, :]
            c_prev = tl.load(c_prev_ptr + state, mask=mask, other=0.0).to(tl.float32)
            i, f, g, o = tl.sigmoid(acc_i), tl.sigmoid(acc_f), _tanh(acc_g), tl.sigmoid(acc_o)
            c_new = f * c_prev + i * g
            h_new = o * _tanh(c_new)
            keep = valid[:, None] & mask_j[None, :]
            tl.store(hs_ptr + (t + 1) * B * H + state, tl.where(keep, h_new, 0.0).to(hs_ptr.dtype.element_ty),
                     mask=mask)  # fmt: skip
            tl.store(cs_ptr + (t + 1) * B * H + state, tl.where(keep, c_new, 0.0).to(cs_ptr.dtype.element_ty),
                     mask=mask)  # fmt: skip
            if SAVE_GATES:
                gates = gates_ptr + t * B * 4 * H + offs_b[:, None] * (4 * H) + offs_j[None, :]
                ty = gates_ptr.dtype.element_ty
                tl.store(gates, tl.where(keep, i, 0.0).to(ty), mask=mask)
                tl.store(gates + H, tl.where(keep, f, 0.0).to(ty), mask=mask)
                tl.store(gates + 2 * H, tl.where(keep, g, 0.0).to(ty), mask=mask)
                tl.store(gates + 3 * H, tl.where(keep, o, 0.0).to(ty), mask=mask)
        # the next step reads every hidden unit this step wrote
        tl.debug_barrier()


@triton.jit
def _lstm_seq_bwd_kernel(
    # pointers: dhs, dcs (T, B, H): gradients of h_t and c_t (the outputs and the picked final states);
    # cs (T + 1, B, H) and gates as saved by the forward; dgates (T, B, 4H) output; dh_carry, dc_carry
    # (B, H) fp32, zero on entry and dh0, dc0 (less the direct gradients of h0, c0) on exit
    dhs_ptr, dcs_ptr, cs_ptr, gates_ptr, whh_ptr, lengths_ptr, dgates_ptr, dh_carry_ptr, dc_carry_ptr,
    T, B, H,
    swr, swc,
    HAS_LENGTHS: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < B
    if HAS_LENGTHS:
        lengths = tl.load(lengths_ptr + offs_b, mask=mask_b, other=0)
    for step in range(0, T):
        t = T - 1 - step
        c_prev_ptr = cs_ptr + t * B * H
        valid = mask_b
        if HAS_LENGTHS:
            valid = valid & (t < lengths)
        # pass 1: this step's gate gradients and the cell-state carry
        for j0 in range(0, H, BLOCK_H):
            offs_j = j0 + tl.arange(0, BLOCK_H)
            mask = mask_b[:, None] & (offs_j < H)[None, :]
            keep = valid[:, None] & (offs_j < H)[None, :]
            state = offs_b[:, None] * H + offs_j[None, :]
            gates = gates_ptr + t * B * 4 * H + offs_b[:, None] * (4 * H) + offs_j[None, :]
            dh = tl.load(dhs_ptr + t * B * H + state, mask=mask, other=0.0).to(tl.float32)
            dh += tl.load(dh_carry_ptr + state, mask=mask, other=0.0)
            dc_carry = tl.load(dc_carry_ptr + state, mask=mask, other=0.0)
            dc_in = dc_carry + tl.load(dcs_ptr + t * B * H + state, mask=mask, other=0.0).to(tl.float32)
            di, df, dg, do, dc_prev = _gate_grads(
                dh, dc_in, tl.load(c_prev_ptr + state, mask=mask, other=0.0).to(tl.float32),
                tl.load(cs_ptr + (t + 1) * B * H + state, mask=mask, other=0.0).to(tl.float32),
                tl.load(gates, mask=mask, other=0.0).to(tl.float32),
                tl.load(gates + H, mask=mask, other=0.0).to(tl.float32),
                tl.load(gates + 2 * H, mask=mask, other=0.0).to(tl.float32),
                tl.load(gates + 3 * H, mask=mask, other=0.0).to(tl.float32),
            )  # fmt: skip
            dgates = dgates_ptr + t * B * 4 * H + offs_b[:, None] * (4 * H) + offs_j[None, :]
            ty = dgates_ptr.dtype.element_ty
            tl.store(dgates, tl.where(keep, di, 0.0).to(ty), mask=mask)
            tl.store(dgates + H, tl.where(keep, df, 0.0).to(ty), mask=mask)
            tl.store(dgates + 2 * H, tl.where(keep, dg, 0.0).to(ty), mask=mask)
            tl.store(dgates + 3 * H, tl.where(keep, do, 0.0).to(ty), mask=mask)
            # rows past their length pass both carries through unchanged
            tl.store(dc_carry_ptr + state, tl.where(keep, dc_prev, dc_carry), mask=mask)
        tl.debug_barrier()
        # pass 2: dh_{t-1} = dgates_t @ W_hh, which needs every gate column written above
        for j0 in range(0, H, BLOCK_H):
            offs_j = j0 + tl.arange(0, BLOCK_H)
            mask_j = offs_j < H
            acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
            for r0 in range(0, 4 * H, BLOCK_K):
                offs_r = r0 + tl.arange(0, BLOCK_K)
                mask_r = offs_r < 4 * H
                dg = tl.load(dgates_ptr + t * B * 4 * H + offs_b[:, None] * (4 * H) + offs_r[None, :],
                             mask=mask_b[:, None] & mask_r[None, :], other=0.0)  # fmt: skip
                w = tl.load(whh_ptr + offs_r[:, None] * swr + offs_j[None, :] * swc,
                            mask=mask_r[:, None] & mask_j[None, :], other=0.0)  # fmt: skip
                acc = mma(dg, w, acc, DOT_PRECISION, UPCAST_DOT)
            state = offs_b[:, None] * H + offs_j[None, :]
            mask = mask_b[:, None] & mask_j[None, :]
            dh_old = tl.load(dh_carry_ptr + state, mask=mask, other=0.0)
            tl.store(dh_carry_ptr + state, tl.where(valid[:, None], acc, dh_old), mask=mask)
        tl.debug_barrier()


def _blocks(B: int, H: int) -> tuple[int, int, int]:
    if INTERPRET:
        return 16, 32, 32
    return 16, 64, 64


def lstm_cell_fwd(x, h, c, w_ih, w_hh, bias, save_gates: bool):
    """(h_next, c_next, gates): gates (B, 4H) activated (i, f, g, o) when save_gates, else empty."""
    B, IN = x.shape
    H = h.shape[1]
    h_next = torch.empty((B, H), device=x.device, dtype=x.dtype)
    c_next = torch.empty((B, H), device=x.device, dtype=x.dtype)
    gates = torch.empty((B, 4 * H) if save_gates else (0,), device=x.device, dtype=x.dtype)
    if B == 0 or H == 0:
        return h_next, c_next, gates
    bb, bh, bk = _blocks(B, H)
    _lstm_cell_fwd_kernel[(triton.cdiv(B, bb), triton.cdiv(H, bh))](
        x, h, c, w_ih, w_hh, bias if bias is not None else x, h_next, c_next, gates if save_gates else h_next,
        B, IN, H, *x.stride(), *h.stride(), *c.stride(), *w_ih.stride(), *w_hh.stride(),
        HAS_BIAS=bias is not None, SAVE_GATES=save_gates, BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk, **dot_flags(x.dtype),
    )  # fmt: skip
    return h_next, c_next, gates


def lstm_cell_grad_gates(grad_h, grad_c, c, c_next, gates):
    """(dgates (B, 4H) pre-activation, dc_prev (B, H)); grad_c may be None."""
    B, H = c.shape
    dgates = torch.empty((B, 4 * H), device=c.device, dtype=c.dtype)
    dc_prev = torch.empty((B, H), device=c.device, dtype=c.dtype)
    if B == 0 or H == 0:
        return dgates, dc_prev
    bb, bh, _ = _blocks(B, H)
    _lstm_cell_bwd_kernel[(triton.cdiv(B, bb), triton.cdiv(H, bh))](
        grad_h.contiguous(), grad_c.contiguous() if grad_c is not None else grad_h, c.contiguous(), c_next, gates,
        dgates, dc_prev, B, H, HAS_DC=grad_c is not None, BLOCK_B=bb, BLOCK_H=bh,
    )  # fmt: skip
    return dgates, dc_prev


def lstm_seq_fwd(xp, h0, c0, w_hh, lengths, save_gates: bool):
    """(hs, cs, gates) from input projections xp (T, B, 4H): hs, cs (T + 1, B, H) with h0, c0 first and
    zeros where a row is past its length; gates (T, B, 4H) activated, or empty."""
    T, B, H4 = xp.shape
    H = H4 // 4
    hs = torch.empty((T + 1, B, H), device=xp.device, dtype=xp.dtype)
    cs = torch.empty((T + 1, B, H), device=xp.device, dtype=xp.dtype)
    hs[0], cs[0] = h0, c0
    gates = torch.empty((T, B, 4 * H) if save_gates else (0,), device=xp.device, dtype=xp.dtype)
    if T == 0 or B == 0 or H == 0:
        return hs, cs, gates
    bb, bh, bk = _blocks(B, H)
    _lstm_seq_fwd_kernel[(triton.cdiv(B, bb),)](
        xp.contiguous(), w_hh, lengths if lengths is not None else xp, hs, cs, gates if save_gates else hs,
        T, B, H, *w_hh.stride(),
        HAS_LENGTHS=lengths is not None, SAVE_GATES=save_gates, BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk,
        **dot_flags(xp.dtype),
    )  # fmt: skip
    return hs, cs, gates


def lstm_seq_bwd(dhs, dcs, cs, gates, w_hh, lengths):
    """(dgates (T, B, 4H) pre-activation, dh0, dc0) by backpropagation through time.

    dhs, dcs: (T + 1, B, H) gradients of the hs, cs that lstm_seq_fwd returned (index 0: h0, c0).
    """
    T = cs.shape[0] - 1
    B, H = cs.shape[1], cs.shape[2]
    dgates = torch.empty((T, B, 4 * H), device=cs.device, dtype=cs.dtype)
    dh_carry = torch.zeros((B, H), device=cs.device, dtype=torch.float32)
    dc_carry = torch.zeros((B, H), device=cs.device, dtype=torch.float32)
    if T > 0 and B > 0 and H > 0:
        bb, bh, bk = _blocks(B, H)
        _lstm_seq_bwd_kernel[(triton.cdiv(B, bb),)](
            dhs[1:].contiguous(), dcs[1:].contiguous(), cs, gates, w_hh, lengths if lengths is not None else cs,
            dgates, dh_carry, dc_carry, T, B, H, *w_hh.stride(),
            HAS_LENGTHS=lengths is not None, BLOCK_B=bb, BLOCK_H=bh, BLOCK_K=bk, **dot_flags(cs.dtype),
        )  # fmt: skip
    return dgates, (dh_carry + dhs[0].float()).to(cs.dtype), (dc_carry + dcs[0].float()).to(cs.dtype)

"""Triton kernels for the LSTM (PyTorch's gate order i, f, g, o; c' = f*c + i*g, h' = o*tanh(c')).

Step kernels (one launch per step): the fused cell (x W_ih^T + h W_hh^T for the four gates of a hidden
block, the gate activations and the state update in one kernel; with a precomputed input projection xp
instead of x the same kernel is one step of a sequence), the pointwise gate-gradient kernel and the BPTT
dh = dgates W_hh kernel.

Persistent sequence kernels (one launch per layer and direction): program p owns BLOCK_H hidden units and
loads their rows of W_hh (forward) or columns (backward) once; Triton keeps that operand in shared memory
for every time step. Programs along the second grid axis own batch groups and walk their batch tiles. Each
step every program reads the whole h_{t-1} (or dgates_t) its group wrote, so the group meets at a grid
barrier once per step (an atomic counter; all programs are resident because the launcher starts at most
one per SM. Unlike a cooperative launch nothing enforces that: two of these kernels running at once on
different streams could each hold SMs the other waits for; deepfuse launches them one after another on the
caller's stream). The cell state, and in backward both carries, stay in registers. Where W_hh does not fit
(padded hidden size past PERSISTENT_MAX_HIDDEN) the launchers take the per-step path instead.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .gemm_common import INTERPRET, dot_flags, mma

# W_hh's slice stays in shared memory (Triton hoists its copy out of the step loop): 4 * H * 16 values. Larger
# padded hidden sizes take the per-step path.
# NOTE: ptxas / Triton for sm_90a (no GPU run yet): fp16 at H = 512 takes 82 KB (fwd) and 128 KB (bwd) of
# shared memory, no spills; H = 1024 needs 256 KB in backward, over the 227 KB a block may have. fp32's exact
# dot runs on FMAs and spills in forward from H = 128 (300 B; 4 KB at H = 256).
PERSISTENT_MAX_HIDDEN = {torch.float16: 512, torch.bfloat16: 512, torch.float32: 128}
# Up to this padded hidden size one program owns every hidden unit of its batch tile: no barrier and no trip
# through memory between steps, at the price of fewer programs (one per batch tile). Unmeasured (no GPU yet).
SINGLE_SLICE_MAX_HIDDEN = {torch.float16: 64, torch.bfloat16: 64, torch.float32: 32}


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _load_f32(ptr, offsets, mask):
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _grid_barrier(counter_ptr, target):
    """Waits until the group's counter reaches target (each program adds 1 per barrier)."""
    tl.debug_barrier()  # every thread's stores of this step come before the arrival
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    while tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()


@triton.jit
def _gate_block(
    acc,
    a_ptrs,
    a_mask,
    w_ptr,
    gate,
    H,
    offs_j,
    mask_j,
    offs_k,
    mask_k,
    swr,
    swc,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """acc += A (BLOCK_B, BLOCK_K) @ W[gate * H + j, k]^T for the hidden block j."""
    a = tl.load(a_ptrs, mask=a_mask, other=0.0)
    w = tl.load(
        w_ptr + (gate * H + offs_j)[None, :] * swr + offs_k[:, None] * swc,
        mask=mask_j[None, :] & mask_k[:, None],
        other=0.0,
    )
    return mma(a, w, acc, DOT_PRECISION, UPCAST_DOT)


@triton.jit
def _accumulate_gates(
    acc_i,
    acc_f,
    acc_g,
    acc_o,
    a_ptr,
    sab,
    sak,
    offs_b,
    mask_b,
    w_ptr,
    swr,
    swc,
    K,
    H,
    offs_j,
    mask_j,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The four gate accumulators += A (rows offs_b, K columns) @ W[gate * H + j, :K]^T."""
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a_ptrs = a_ptr + offs_b[:, None] * sab + offs_k[None, :] * sak
        a_mask = mask_b[:, None] & mask_k[None, :]
        # The constexprs go by name: packed into a tuple, a constexpr string becomes a value the compiler
        # cannot convert ("cannot convert ieee of type str to tensor"; the interpreter does not mind).
        acc_i = _gate_block(
            acc_i, a_ptrs, a_mask, w_ptr, 0, H, offs_j, mask_j, offs_k, mask_k, swr, swc, DOT_PRECISION, UPCAST_DOT
        )
        acc_f = _gate_block(
            acc_f, a_ptrs, a_mask, w_ptr, 1, H, offs_j, mask_j, offs_k, mask_k, swr, swc, DOT_PRECISION, UPCAST_DOT
        )
        acc_g = _gate_block(
            acc_g, a_ptrs, a_mask, w_ptr, 2, H, offs_j, mask_j, offs_k, mask_k, swr, swc, DOT_PRECISION, UPCAST_DOT
        )
        acc_o = _gate_block(
            acc_o, a_ptrs, a_mask, w_ptr, 3, H, offs_j, mask_j, offs_k, mask_k, swr, swc, DOT_PRECISION, UPCAST_DOT
        )
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def _store_gates(ptr, offsets, mask, keep, i, f, g, o, H):
    """Four (rows, BLOCK_H) gate tiles at offsets + gate * H, zeros where not keep."""
    ty = ptr.dtype.element_ty
    tl.store(ptr + offsets, tl.where(keep, i, 0.0).to(ty), mask=mask)
    tl.store(ptr + offsets + H, tl.where(keep, f, 0.0).to(ty), mask=mask)
    tl.store(ptr + offsets + 2 * H, tl.where(keep, g, 0.0).to(ty), mask=mask)
    tl.store(ptr + offsets + 3 * H, tl.where(keep, o, 0.0).to(ty), mask=mask)


@triton.jit
def _cell_update(acc_i, acc_f, acc_g, acc_o, c):
    """(activated gates i, f, g, o, c', h') from the pre-activations and the previous cell state."""
    i, f, g, o = tl.sigmoid(acc_i), tl.sigmoid(acc_f), _tanh(acc_g), tl.sigmoid(acc_o)
    c_new = f * c + i * g
    return i, f, g, o, c_new, o * _tanh(c_new)


@triton.jit
def _split_gates(acc, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """(i, f, g, o), each (BLOCK_B, BLOCK_H), from (BLOCK_B, 4 * BLOCK_H) with column = gate * BLOCK_H + j."""
    acc = tl.permute(tl.reshape(acc, (BLOCK_B, 2, 2, BLOCK_H)), (0, 3, 1, 2))  # [b, j, gate // 2, gate % 2]
    even, odd = tl.split(acc)
    i, g = tl.split(even)
    f, o = tl.split(odd)
    return i, f, g, o


@triton.jit(do_not_specialize=["t"])  # t is the step: one compiled kernel for every step
def _lstm_step_fwd_kernel(
    # pointers: x (B, IN) with w_ih, or xp (B, 4H) contiguous, the input projection with both biases;
    # h_out, c_out (B, H) contiguous; gates (B, 4H) activated (when SAVE_GATES); lengths (B,) int32
    x_ptr, wih_ptr, xp_ptr, h_ptr, c_ptr, whh_ptr, bias_ptr, lengths_ptr, h_out_ptr, c_out_ptr, gates_ptr,
    # sizes: t is the step (rows with t >= lengths store zeros)
    B, IN, H, t,
    # strides
    sxb, sxk, shb, shk, scb, sch, swir, swic, swhr, swhc,
    # meta-parameters
    HAS_X: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LENGTHS: tl.constexpr, SAVE_GATES: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_j = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_j = offs_j < H
    mask = mask_b[:, None] & mask_j[None, :]
    gate_offs = offs_b[:, None] * (4 * H) + offs_j[None, :]
    if HAS_X:
        acc_i = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc_f = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc_g = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc_o = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc_i, acc_f, acc_g, acc_o = _accumulate_gates(
            acc_i,
            acc_f,
            acc_g,
            acc_o,
            x_ptr,
            sxb,
            sxk,
            offs_b,
            mask_b,
            wih_ptr,
            swir,
            swic,
            IN,
            H,
            offs_j,
            mask_j,
            DOT_PRECISION,
            UPCAST_DOT,
            BLOCK_K,
        )
    else:
        acc_i = _load_f32(xp_ptr, gate_offs, mask)
        acc_f = _load_f32(xp_ptr, gate_offs + H, mask)
        acc_g = _load_f32(xp_ptr, gate_offs + 2 * H, mask)
        acc_o = _load_f32(xp_ptr, gate_offs + 3 * H, mask)
    acc_i, acc_f, acc_g, acc_o = _accumulate_gates(
        acc_i,
        acc_f,
        acc_g,
        acc_o,
        h_ptr,
        shb,
        shk,
        offs_b,
        mask_b,
        whh_ptr,
        swhr,
        swhc,
        H,
        H,
        offs_j,
        mask_j,
        DOT_PRECISION,
        UPCAST_DOT,
        BLOCK_K,
    )
    if HAS_BIAS:  # b_ih + b_hh, summed by the caller
        acc_i += tl.load(bias_ptr + offs_j, mask=mask_j, other=0.0).to(tl.float32)[None, :]
        acc_f += tl.load(bias_ptr + H + offs_j, mask=mask_j, other=0.0).to(tl.float32)[None, :]
        acc_g += tl.load(bias_ptr + 2 * H + offs_j, mask=mask_j, other=0.0).to(tl.float32)[None, :]
        acc_o += tl.load(bias_ptr + 3 * H + offs_j, mask=mask_j, other=0.0).to(tl.float32)[None, :]
    c = tl.load(c_ptr + offs_b[:, None] * scb + offs_j[None, :] * sch, mask=mask, other=0.0).to(tl.float32)
    i, f, g, o, c_new, h_new = _cell_update(acc_i, acc_f, acc_g, acc_o, c)
    keep = mask
    if HAS_LENGTHS:
        keep = keep & (t < tl.load(lengths_ptr + offs_b, mask=mask_b, other=0))[:, None]
    out = offs_b[:, None] * H + offs_j[None, :]
    tl.store(h_out_ptr + out, tl.where(keep, h_new, 0.0).to(h_out_ptr.dtype.element_ty), mask=mask)
    tl.store(c_out_ptr + out, tl.where(keep, c_new, 0.0).to(c_out_ptr.dtype.element_ty), mask=mask)
    if SAVE_GATES:
        _store_gates(gates_ptr, gate_offs, mask, keep, i, f, g, o, H)


@triton.jit
def _gate_grads(dh, dc_in, c_prev, c_new, i, f, g, o):
    """Pre-activation gate gradients and the cell-state gradient carried to the previous step."""
    tc = _tanh(c_new)
    dc = dc_in + dh * o * (1.0 - tc * tc)
    return dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o), dc * f


@triton.jit
def _step_gate_grads(dh, dc_in, c_prev_ptr, c_new_ptr, gates_ptr, state, gate_offs, mask, H):
    """_gate_grads with the saved cell states and activated gates loaded at one step's offsets."""
    return _gate_grads(
        dh,
        dc_in,
        _load_f32(c_prev_ptr, state, mask),
        _load_f32(c_new_ptr, state, mask),
        _load_f32(gates_ptr, gate_offs, mask),
        _load_f32(gates_ptr, gate_offs + H, mask),
        _load_f32(gates_ptr, gate_offs + 2 * H, mask),
        _load_f32(gates_ptr, gate_offs + 3 * H, mask),
    )


@triton.jit(do_not_specialize=["t"])  # t is the step: one compiled kernel for every step
def _lstm_step_grads_kernel(
    # pointers: (B, H) or (B, 4H) contiguous. dh, dc: the step's incoming gradients (dc optional). With
    # CARRY the fp32 carries are added and dc_carry is updated in place (rows past their length keep it);
    # without, dc_out receives dc_prev. dgates (B, 4H): pre-activation gate gradients (zero past a length)
    dh_ptr, dc_ptr, dh_carry_ptr, dc_carry_ptr, c_prev_ptr, c_new_ptr, gates_ptr, lengths_ptr, dgates_ptr,
    dc_out_ptr,
    B, H, t,
    HAS_DC: tl.constexpr, CARRY: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_j = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask = mask_b[:, None] & (offs_j < H)[None, :]
    state = offs_b[:, None] * H + offs_j[None, :]
    gate_offs = offs_b[:, None] * (4 * H) + offs_j[None, :]
    dh = _load_f32(dh_ptr, state, mask)
    dc_in = _load_f32(dc_ptr, state, mask) if HAS_DC else tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    if CARRY:
        dh += tl.load(dh_carry_ptr + state, mask=mask, other=0.0)
        dc_carry = tl.load(dc_carry_ptr + state, mask=mask, other=0.0)
        dc_in += dc_carry
    di, df, dg, do, dc_prev = _step_gate_grads(dh, dc_in, c_prev_ptr, c_new_ptr, gates_ptr, state, gate_offs, mask, H)
    keep = mask
    if HAS_LENGTHS:
        keep = keep & (t < tl.load(lengths_ptr + offs_b, mask=mask_b, other=0))[:, None]
    _store_gates(dgates_ptr, gate_offs, mask, keep, di, df, dg, do, H)
    if CARRY:
        tl.store(dc_carry_ptr + state, tl.where(keep, dc_prev, dc_carry), mask=mask)
    else:
        tl.store(dc_out_ptr + state, dc_prev.to(dc_out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["t"])  # t is the step: one compiled kernel for every step
def _lstm_step_dh_kernel(
    # pointers: dgates (B, 4H) contiguous, this step's; dh_carry (B, H) fp32, replaced by dgates @ W_hh for
    # the rows still inside their length
    dgates_ptr, whh_ptr, lengths_ptr, dh_carry_ptr,
    B, H, t,
    swr, swc,
    HAS_LENGTHS: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_j = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_j = offs_j < H
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for r0 in range(0, 4 * H, BLOCK_K):
        offs_r = r0 + tl.arange(0, BLOCK_K)
        mask_r = offs_r < 4 * H
        dg = tl.load(
            dgates_ptr + offs_b[:, None] * (4 * H) + offs_r[None, :], mask=mask_b[:, None] & mask_r[None, :], other=0.0
        )
        w = tl.load(
            whh_ptr + offs_r[:, None] * swr + offs_j[None, :] * swc, mask=mask_r[:, None] & mask_j[None, :], other=0.0
        )
        acc = mma(dg, w, acc, DOT_PRECISION, UPCAST_DOT)
    valid = mask_b
    if HAS_LENGTHS:
        valid = valid & (t < tl.load(lengths_ptr + offs_b, mask=mask_b, other=0))
    state = offs_b[:, None] * H + offs_j[None, :]
    mask = mask_b[:, None] & mask_j[None, :]
    dh_old = tl.load(dh_carry_ptr + state, mask=mask, other=0.0)
    tl.store(dh_carry_ptr + state, tl.where(valid[:, None], acc, dh_old), mask=mask)


@triton.jit
def _persistent_setup(counters_ptr, group, num_slices, B, H):
    """(elements per step of (B, H) states, of (B, 4H) gates, the group's barrier counter, arrivals so far)."""
    # Triton turns an int argument equal to 1 into a Python constant (no .to()): widen by adding to an int64 zero.
    state_step = (tl.zeros((), dtype=tl.int64) + B) * H
    return state_step, 4 * state_step, counters_ptr + group, num_slices * 0


@triton.jit
def _lstm_persistent_fwd_kernel(
    # pointers: xp (T, B, 4H) input projections with both biases; hs (T + 1, B, H) holds h0 at step 0 and
    # h_t at t + 1 (zeros past a row's length); cs likewise, and gates (T, B, 4H) activated, when SAVE (for
    # backward); c0 and c_last (B, H): the initial and each row's last cell state; lengths (B,) int32;
    # counters (groups,) int32, zero on entry
    xp_ptr, whh_ptr, lengths_ptr, hs_ptr, c0_ptr, cs_ptr, gates_ptr, c_last_ptr, counters_ptr,
    T, B, H,
    swr, swc,
    HAS_LENGTHS: tl.constexpr, SAVE: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, HIDDEN: tl.constexpr, SINGLE_SLICE: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    num_slices = tl.num_programs(0)
    group = tl.program_id(1)
    offs_j = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_k = tl.arange(0, HIDDEN)
    mask_j = offs_j < H
    mask_k = offs_k < H
    # The four gates side by side as one product's columns: column n is gate n // BLOCK_H of hidden unit
    # j0 + n % BLOCK_H. This slice's rows of W_hh, transposed to (HIDDEN, 4 * BLOCK_H), load once for every step.
    offs_n = tl.arange(0, 4 * BLOCK_H)
    col_j = tl.program_id(0) * BLOCK_H + offs_n % BLOCK_H
    col = (offs_n // BLOCK_H) * H + col_j  # the column of xp and gates, the row of W_hh
    mask_n = col_j < H
    w = tl.load(whh_ptr + col[None, :] * swr + offs_k[:, None] * swc, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
    state_step, gate_step, counter, arrivals = _persistent_setup(counters_ptr, group, num_slices, B, H)
    for tile in range(group, tl.cdiv(B, BLOCK_B), tl.num_programs(1)):
        offs_b = tile * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
        mask_b = offs_b < B
        mask = mask_b[:, None] & mask_j[None, :]
        h_mask = mask_b[:, None] & mask_k[None, :]
        xp_offs = offs_b[:, None] * (4 * H) + col[None, :]
        xp_mask = mask_b[:, None] & mask_n[None, :]
        state = offs_b[:, None] * H + offs_j[None, :]
        gate_offs = offs_b[:, None] * (4 * H) + offs_j[None, :]
        if HAS_LENGTHS:
            lengths = tl.load(lengths_ptr + offs_b, mask=mask_b, other=0)
        c = _load_f32(c0_ptr, state, mask)
        if SINGLE_SLICE:  # h_{t-1} never leaves the program: it stays in registers
            h_prev = tl.load(hs_ptr + offs_b[:, None] * H + offs_k[None, :], mask=h_mask, other=0.0)
        for t in range(0, T):
            if not SINGLE_SLICE:
                # h_{t-1} of every hidden unit, written by the whole group; .cg reads around the incoherent L1
                h_prev = tl.load(
                    hs_ptr + t * state_step + offs_b[:, None] * H + offs_k[None, :],
                    mask=h_mask,
                    other=0.0,
                    cache_modifier=".cg",
                )
            acc = mma(h_prev, w, _load_f32(xp_ptr + t * gate_step, xp_offs, xp_mask), DOT_PRECISION, UPCAST_DOT)
            acc_i, acc_f, acc_g, acc_o = _split_gates(acc, BLOCK_B, BLOCK_H)
            i, f, g, o, c_new, h = _cell_update(acc_i, acc_f, acc_g, acc_o, c)
            keep = mask
            if HAS_LENGTHS:
                keep = keep & (t < lengths)[:, None]
            c = tl.where(keep, c_new, c)  # a row past its length keeps its last state
            h = tl.where(keep, h, 0.0).to(hs_ptr.dtype.element_ty)
            tl.store(hs_ptr + (t + 1) * state_step + state, h, mask=mask)
            if SAVE:
                tl.store(
                    cs_ptr + (t + 1) * state_step + state,
                    tl.where(keep, c_new, 0.0).to(cs_ptr.dtype.element_ty),
                    mask=mask,
                )
                _store_gates(gates_ptr + t * gate_step, gate_offs, mask, keep, i, f, g, o, H)
            if SINGLE_SLICE:
                h_prev = h
            else:
                arrivals += num_slices
                _grid_barrier(counter, arrivals)
        tl.store(c_last_ptr + state, c.to(c_last_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lstm_persistent_bwd_kernel(
    # pointers: dhs, dcs (T, B, H) gradients of h_t, c_t (the outputs and the picked final states); cs
    # (T + 1, B, H) and gates as the forward saved them; dgates (T, B, 4H) output; dh_carry, dc_carry (B, H)
    # fp32 outputs: dh0, dc0 less the direct gradients of h0, c0; counters (groups,) int32, zero on entry
    dhs_ptr, dcs_ptr, cs_ptr, gates_ptr, whh_ptr, lengths_ptr, dgates_ptr, dh_carry_ptr, dc_carry_ptr, counters_ptr,
    T, B, H,
    swr, swc,
    HAS_LENGTHS: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, HIDDEN: tl.constexpr, SINGLE_SLICE: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    num_slices = tl.num_programs(0)
    group = tl.program_id(1)
    offs_j = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_j = offs_j < H
    offs_k = tl.arange(0, HIDDEN)
    mask_k = offs_k < H
    # This slice's columns of W_hh as (HIDDEN, BLOCK_H) tiles W[gate * H + k, j], loaded once for every step.
    w_tile = offs_k[:, None] * swr + offs_j[None, :] * swc
    w_mask = mask_k[:, None] & mask_j[None, :]
    w_i = tl.load(whh_ptr + w_tile, mask=w_mask, other=0.0)
    w_f = tl.load(whh_ptr + H * swr + w_tile, mask=w_mask, other=0.0)
    w_g = tl.load(whh_ptr + 2 * H * swr + w_tile, mask=w_mask, other=0.0)
    w_o = tl.load(whh_ptr + 3 * H * swr + w_tile, mask=w_mask, other=0.0)
    state_step, gate_step, counter, arrivals = _persistent_setup(counters_ptr, group, num_slices, B, H)
    for tile in range(group, tl.cdiv(B, BLOCK_B), tl.num_programs(1)):
        offs_b = tile * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
        mask_b = offs_b < B
        mask = mask_b[:, None] & mask_j[None, :]
        dg_mask = mask_b[:, None] & mask_k[None, :]
        state = offs_b[:, None] * H + offs_j[None, :]
        gate_offs = offs_b[:, None] * (4 * H) + offs_j[None, :]
        if HAS_LENGTHS:
            lengths = tl.load(lengths_ptr + offs_b, mask=mask_b, other=0)
        dh_carry = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        dc_carry = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        for step in range(0, T):
            t = T - 1 - step
            valid = mask_b
            if HAS_LENGTHS:
                valid = valid & (t < lengths)
            keep = valid[:, None] & mask_j[None, :]
            # this slice's gate gradients and the cell-state carry
            dh = _load_f32(dhs_ptr + t * state_step, state, mask) + dh_carry
            dc_in = _load_f32(dcs_ptr + t * state_step, state, mask) + dc_carry
            di, df, dg, do, dc_prev = _step_gate_grads(
                dh,
                dc_in,
                cs_ptr + t * state_step,
                cs_ptr + (t + 1) * state_step,
                gates_ptr + t * gate_step,
                state,
                gate_offs,
                mask,
                H,
            )
            dgates = dgates_ptr + t * gate_step
            _store_gates(dgates, gate_offs, mask, keep, di, df, dg, do, H)
            dc_carry = tl.where(keep, dc_prev, dc_carry)  # rows past their length pass both carries through
            ty = dgates_ptr.dtype.element_ty
            if SINGLE_SLICE:  # every gate column is this program's own: no barrier, no reload
                a_i, a_f = tl.where(keep, di, 0.0).to(ty), tl.where(keep, df, 0.0).to(ty)
                a_g, a_o = tl.where(keep, dg, 0.0).to(ty), tl.where(keep, do, 0.0).to(ty)
            else:
                arrivals += num_slices
                _grid_barrier(counter, arrivals)
                # every gate column of dgates_t, written by the whole group; .cg reads around the L1
                dg_rows = dgates + offs_b[:, None] * (4 * H) + offs_k[None, :]
                a_i = tl.load(dg_rows, mask=dg_mask, other=0.0, cache_modifier=".cg")
                a_f = tl.load(dg_rows + H, mask=dg_mask, other=0.0, cache_modifier=".cg")
                a_g = tl.load(dg_rows + 2 * H, mask=dg_mask, other=0.0, cache_modifier=".cg")
                a_o = tl.load(dg_rows + 3 * H, mask=dg_mask, other=0.0, cache_modifier=".cg")
            # dh_{t-1} = dgates_t @ W_hh for this slice
            acc = mma(a_i, w_i, tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32), DOT_PRECISION, UPCAST_DOT)
            acc = mma(a_f, w_f, acc, DOT_PRECISION, UPCAST_DOT)
            acc = mma(a_g, w_g, acc, DOT_PRECISION, UPCAST_DOT)
            acc = mma(a_o, w_o, acc, DOT_PRECISION, UPCAST_DOT)
            dh_carry = tl.where(valid[:, None], acc, dh_carry)
        tl.store(dh_carry_ptr + state, dh_carry, mask=mask)
        tl.store(dc_carry_ptr + state, dc_carry, mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


class StepTiles(NamedTuple):
    block_b: int  # batch rows per program
    block_h: int  # hidden units per program (each with its four gates)
    block_k: int  # reduction step of the step kernels' products
    num_warps: int
    num_stages: int


def step_tiles(dtype: torch.dtype, interpret: bool = INTERPRET) -> StepTiles:
    """Tiles of the per-step kernels (the fused cell, the gate gradients and dh = dgates W_hh)."""
    if interpret:
        return StepTiles(16, 32, 32, 4, 1)
    # NOTE: ptxas for sm_90 (tests/compile_gate; speed unmeasured): 16x64 with BLOCK_K 64 on 4 warps and 3 stages
    # spilled 0.6-6 KB in the fused cell (four gate accumulators plus the W tiles); BLOCK_K 32 on 8 warps with 2
    # stages compiles every dtype without spills (fp16 213, fp32 194, tf32 243 registers).
    return StepTiles(16, 64, 32, 8, 2)


def _step_launch(tiles: StepTiles, B: int, H: int, dtype: torch.dtype, dot: bool = True):
    """(grid, meta-parameters and options) of a step kernel; dot: the kernel takes BLOCK_K and the dot flags."""
    grid = (triton.cdiv(B, tiles.block_b), triton.cdiv(H, tiles.block_h))
    meta = dict(BLOCK_B=tiles.block_b, BLOCK_H=tiles.block_h, num_warps=tiles.num_warps)
    if dot:
        meta |= dict(BLOCK_K=tiles.block_k, num_stages=tiles.num_stages, **dot_flags(dtype))
    return grid, meta


class PersistentLayout(NamedTuple):
    block_b: int  # batch rows per tile
    block_h: int  # hidden units per program (a slice)
    hidden: int  # H padded to a power of two, the reduction width
    groups: int  # program groups along the batch
    num_warps: int
    single_slice: bool  # one program owns every hidden unit: no grid barrier, h (or dgates) stays in registers


def persistent_layout(B: int, H: int, dtype: torch.dtype, device: torch.device) -> PersistentLayout | None:
    """How the persistent kernels split the work on device, or None where W_hh does not fit and the sequence
    takes the per-step path."""
    if INTERPRET:  # the interpreter runs programs one after another: one program must own every hidden unit
        layout = layout_for(B, H, dtype, num_sms=1)
        return layout._replace(block_h=layout.hidden, num_warps=4) if layout else None
    return layout_for(B, H, dtype, torch.cuda.get_device_properties(device).multi_processor_count)


def layout_for(B: int, H: int, dtype: torch.dtype, num_sms: int) -> PersistentLayout | None:
    """persistent_layout for a GPU with num_sms SMs."""
    hidden = max(16, triton.next_power_of_2(H))  # tl.dot needs every dimension >= 16
    if hidden > PERSISTENT_MAX_HIDDEN[dtype]:
        return None
    single = hidden <= SINGLE_SLICE_MAX_HIDDEN[dtype]
    # NOTE: ptxas for sm_90a (no GPU run yet): BLOCK_B 16 compiles both kernels without spills up to
    # H = 256 on 4 warps (fp16: 214/234 registers at H = 256) and H = 512 on 8 (186/246); BLOCK_B 32 or 64
    # spills (fwd 812 B, bwd 2 KB at H = 256, BLOCK_B 64). fp32's exact dot runs on FMAs: 8 warps from H = 64
    # (fwd 220 registers at H = 64, 388 B of spills on 4 warps). A single slice of 64 on 8 warps: 207/185.
    # The compile gate (python -m tests.compile_gate) keeps every configuration compiling within the limits.
    warps = 8 if hidden >= 512 or single or (dtype == torch.float32 and hidden >= 64) else 4
    block_h = hidden if single else 16
    slices = triton.cdiv(H, block_h)
    # Every program must be resident at once (they wait for each other): at most one per SM.
    groups = max(1, min(triton.cdiv(B, 16), num_sms // slices))
    return PersistentLayout(16, block_h, hidden, groups, warps, single)


def lstm_cell_fwd(x, h, c, w_ih, w_hh, bias, save_gates: bool):
    """(h_next, c_next, gates): gates (B, 4H) activated (i, f, g, o) when save_gates, else empty."""
    B, IN = x.shape
    H = h.shape[1]
    h_next = torch.empty((B, H), device=x.device, dtype=x.dtype)
    c_next = torch.empty((B, H), device=x.device, dtype=x.dtype)
    gates = torch.empty((B, 4 * H) if save_gates else (0,), device=x.device, dtype=x.dtype)
    if B == 0 or H == 0:
        return h_next, c_next, gates
    grid, meta = _step_launch(step_tiles(x.dtype), B, H, x.dtype)
    _lstm_step_fwd_kernel[grid](
        x,
        w_ih,
        x,
        h,
        c,
        w_hh,
        bias if bias is not None else x,
        x,
        h_next,
        c_next,
        gates if save_gates else h_next,
        B,
        IN,
        H,
        0,
        *x.stride(),
        *h.stride(),
        *c.stride(),
        *w_ih.stride(),
        *w_hh.stride(),
        HAS_X=True,
        HAS_BIAS=bias is not None,
        HAS_LENGTHS=False,
        SAVE_GATES=save_gates,
        **meta,
    )
    return h_next, c_next, gates


def lstm_cell_grad_gates(grad_h, grad_c, c, c_next, gates):
    """(dgates (B, 4H) pre-activation, dc_prev (B, H)); grad_c may be None."""
    B, H = c.shape
    dgates = torch.empty((B, 4 * H), device=c.device, dtype=c.dtype)
    dc_prev = torch.empty((B, H), device=c.device, dtype=c.dtype)
    if B == 0 or H == 0:
        return dgates, dc_prev
    grid, meta = _step_launch(step_tiles(c.dtype), B, H, c.dtype, dot=False)
    grad_h = grad_h.contiguous()
    _lstm_step_grads_kernel[grid](
        grad_h,
        grad_c.contiguous() if grad_c is not None else grad_h,
        grad_h,
        grad_h,
        c.contiguous(),
        c_next,
        gates,
        grad_h,
        dgates,
        dc_prev,
        B,
        H,
        0,
        HAS_DC=grad_c is not None,
        CARRY=False,
        HAS_LENGTHS=False,
        **meta,
    )
    return dgates, dc_prev


def lstm_seq_fwd(xp, h0, c0, w_hh, lengths, save: bool, persistent: bool | None = None):
    """(hs, cs, gates, c_n) from input projections xp (T, B, 4H): hs (T + 1, B, H) with h0 first and zeros
    where a row is past its length; when save (for backward) cs likewise and gates (T, B, 4H) activated,
    else both empty; c_n (B, H) each row's cell state after its last step.

    persistent: None picks the persistent kernel where W_hh fits (persistent_layout), else per-step launches.
    """
    T, B, H4 = xp.shape
    H = H4 // 4
    hs = torch.empty((T + 1, B, H), device=xp.device, dtype=xp.dtype)
    hs[0] = h0
    layout = persistent_layout(B, H, xp.dtype, xp.device) if persistent is not False else None
    if persistent and layout is None:
        raise ValueError(f"hidden_size {H} is too large for the persistent LSTM kernel")
    # The per-step path reads each step's c from cs: it needs the states even when not saving them.
    cs = torch.empty((T + 1, B, H) if save or layout is None else (0,), device=xp.device, dtype=xp.dtype)
    if cs.numel():
        cs[0] = c0
    gates = torch.empty((T, B, 4 * H) if save else (0,), device=xp.device, dtype=xp.dtype)
    c_n = torch.empty((B, H), device=xp.device, dtype=xp.dtype)
    if T == 0 or B == 0 or H == 0:
        return hs, cs, gates, c_n.copy_(c0)
    xp = xp.contiguous()
    has_lengths = lengths is not None
    if layout is not None:
        counters = torch.zeros(layout.groups, device=xp.device, dtype=torch.int32)
        _lstm_persistent_fwd_kernel[(triton.cdiv(H, layout.block_h), layout.groups)](
            xp,
            w_hh,
            lengths if has_lengths else xp,
            hs,
            c0.contiguous(),
            cs if save else hs,
            gates if save else hs,
            c_n,
            counters,
            T,
            B,
            H,
            *w_hh.stride(),
            HAS_LENGTHS=has_lengths,
            SAVE=save,
            BLOCK_B=layout.block_b,
            BLOCK_H=layout.block_h,
            HIDDEN=layout.hidden,
            SINGLE_SLICE=layout.single_slice,
            num_warps=layout.num_warps,
            **dot_flags(xp.dtype),
        )
        return hs, cs, gates, c_n
    grid, meta = _step_launch(step_tiles(xp.dtype), B, H, xp.dtype)
    for t in range(T):
        _lstm_step_fwd_kernel[grid](
            xp,
            w_hh,
            xp[t],
            hs[t],
            cs[t],
            w_hh,
            xp,
            lengths if has_lengths else xp,
            hs[t + 1],
            cs[t + 1],
            gates[t] if save else hs,
            B,
            0,
            H,
            t,
            0,
            0,
            H,
            1,
            H,
            1,
            0,
            0,
            *w_hh.stride(),
            HAS_X=False,
            HAS_BIAS=False,
            HAS_LENGTHS=has_lengths,
            SAVE_GATES=save,
            **meta,
        )
    c_n.copy_(cs[lengths.long(), torch.arange(B, device=xp.device)] if has_lengths else cs[T])
    if not save:
        cs = cs.new_empty((0,))
    return hs, cs, gates, c_n


def lstm_seq_bwd(dhs, dcs, cs, gates, w_hh, lengths, persistent: bool | None = None):
    """(dgates (T, B, 4H) pre-activation, dh0, dc0) by backpropagation through time.

    dhs, dcs: (T + 1, B, H) gradients of the hs, cs that lstm_seq_fwd returned (index 0: h0, c0).
    persistent: as in lstm_seq_fwd.
    """
    T = cs.shape[0] - 1
    B, H = cs.shape[1], cs.shape[2]
    dgates = torch.empty((T, B, 4 * H), device=cs.device, dtype=cs.dtype)
    dh_carry = torch.zeros((B, H), device=cs.device, dtype=torch.float32)
    dc_carry = torch.zeros((B, H), device=cs.device, dtype=torch.float32)
    if T > 0 and B > 0 and H > 0:
        dh_steps, dc_steps = dhs[1:].contiguous(), dcs[1:].contiguous()
        has_lengths = lengths is not None
        layout = persistent_layout(B, H, cs.dtype, cs.device) if persistent is not False else None
        if layout is not None:
            counters = torch.zeros(layout.groups, device=cs.device, dtype=torch.int32)
            _lstm_persistent_bwd_kernel[(triton.cdiv(H, layout.block_h), layout.groups)](
                dh_steps,
                dc_steps,
                cs,
                gates,
                w_hh,
                lengths if has_lengths else cs,
                dgates,
                dh_carry,
                dc_carry,
                counters,
                T,
                B,
                H,
                *w_hh.stride(),
                HAS_LENGTHS=has_lengths,
                BLOCK_B=layout.block_b,
                BLOCK_H=layout.block_h,
                HIDDEN=layout.hidden,
                SINGLE_SLICE=layout.single_slice,
                num_warps=layout.num_warps,
                **dot_flags(cs.dtype),
            )
        elif persistent:
            raise ValueError(f"hidden_size {H} is too large for the persistent LSTM kernel")
        else:
            tiles = step_tiles(cs.dtype)
            grads_grid, grads_meta = _step_launch(tiles, B, H, cs.dtype, dot=False)
            dh_grid, dh_meta = _step_launch(tiles, B, H, cs.dtype)
            for t in reversed(range(T)):
                _lstm_step_grads_kernel[grads_grid](
                    dh_steps[t],
                    dc_steps[t],
                    dh_carry,
                    dc_carry,
                    cs[t],
                    cs[t + 1],
                    gates[t],
                    lengths if has_lengths else cs,
                    dgates[t],
                    cs,
                    B,
                    H,
                    t,
                    HAS_DC=True,
                    CARRY=True,
                    HAS_LENGTHS=has_lengths,
                    **grads_meta,
                )
                _lstm_step_dh_kernel[dh_grid](
                    dgates[t],
                    w_hh,
                    lengths if has_lengths else cs,
                    dh_carry,
                    B,
                    H,
                    t,
                    *w_hh.stride(),
                    HAS_LENGTHS=has_lengths,
                    **dh_meta,
                )
    return dgates, (dh_carry + dhs[0].float()).to(cs.dtype), (dc_carry + dcs[0].float()).to(cs.dtype)

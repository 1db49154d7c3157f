"""LSTM ops, PyTorch's gate order (i, f, g, o): c' = f*c + i*g, h' = o*tanh(c').

- ``lstm_cell``: one step; one fused kernel for both matmuls, the gates and the state update.
- ``lstm_layer``: a whole sequence, one layer, one direction: the input projection of every step is one
  GEMM (linear_act), then one persistent kernel walks the steps with W_hh on chip (or, where W_hh does not
  fit, one fused kernel per step: the launchers choose); backward is BPTT of the same kind plus one GEMM
  for dW_hh. Per-row ``lengths`` (packed sequences): rows past their length output zeros and the final
  state is each row's state at its own last step.

Training saves the activated gates and the cell states (no pre-activations, no extra GEMMs); without
autograd (``lstm_recurrence_infer``) nothing is saved.
"""

from __future__ import annotations

import torch

from deepfuse import backend as _backend
from deepfuse.ops import _lstm_cuda
from deepfuse.ops._dispatch import fused_op, torch_path
from deepfuse.ops._interop import accepts_cupy
from deepfuse.ops._shared import autocast_inputs, nothing
from deepfuse.ops._validation import check_same_dtype_and_device, check_tensor, kernel_dtype_reason
from deepfuse.ops.linear_act import LINEAR_ACT_BACKWARD, linear_act


def lstm_cell_ref(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """The spec: torch's LSTMCell formula."""
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih + b_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_next), c_next


# ---------------------------------------------------------------------------------------------
# Shared closed-form pieces (custom-op implementations run below autograd)
# ---------------------------------------------------------------------------------------------


def _activated_gates(pre):
    i, f, g, o = pre.chunk(4, dim=-1)
    return torch.cat([torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)], dim=-1)


def _gate_grads_ref(dh, dc_in, c_prev, c_next, gates):
    """(pre-activation gate gradients (..., 4H), dc_prev), as kernels/lstm.py's _gate_grads."""
    i, f, g, o = gates.chunk(4, dim=-1)
    tc = torch.tanh(c_next)
    dc = dc_in + dh * o * (1 - tc * tc)
    dgates = torch.cat(
        [dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), dh * tc * o * (1 - o)], dim=-1
    )
    return dgates, dc * f


def _compute_dtype(t):
    return torch.promote_types(t.dtype, torch.float32)


# ---------------------------------------------------------------------------------------------
# lstm_cell
# ---------------------------------------------------------------------------------------------


def _cell_fwd_torch(x, h, c, w_ih, w_hh, bias):
    ct = _compute_dtype(x)
    pre = x.to(ct) @ w_ih.to(ct).t() + h.to(ct) @ w_hh.to(ct).t()
    if bias is not None:
        pre = pre + bias.to(ct)
    gates = _activated_gates(pre)
    i, f, g, o = gates.chunk(4, dim=-1)
    c_next = f * c.to(ct) + i * g
    h_next = o * torch.tanh(c_next)
    return h_next.to(x.dtype), c_next.to(x.dtype), gates.to(x.dtype)


def _kernels(backend):
    """The module with backend's launchers: kernels/lstm.py (triton) or its CUDA C++ twin (cuda)."""
    if backend == "cuda":
        return _lstm_cuda
    from deepfuse.kernels import lstm  # triton: imported only when a triton backend runs

    return lstm


def _cell_grad_gates_torch(grad_h, grad_c, c, c_next, gates):
    ct = _compute_dtype(c)
    dgates, dc_prev = _gate_grads_ref(grad_h.to(ct), grad_c.to(ct), c.to(ct), c_next.to(ct), gates.to(ct))
    return dgates.to(c.dtype), dc_prev.to(c.dtype)


def _linear_grads(backend, dgates, inputs, weight, has_bias, need_input, need_weight):
    """(d inputs, d weight, d bias) of inputs @ weight^T + bias for the gate gradient dgates."""
    if backend == "torch":
        return (
            dgates @ weight if need_input else nothing(inputs),
            dgates.t() @ inputs if need_weight else nothing(inputs),
            dgates.sum(0) if has_bias else nothing(inputs),
        )
    return LINEAR_ACT_BACKWARD[backend](dgates, dgates, inputs, weight, "none", has_bias, need_input, need_weight)


def _cell_fwd_cost(x, h, c, w_ih, w_hh, bias, backend):
    B, H = h.shape
    return 2 * B * 4 * H * (x.shape[1] + H), x.element_size() * (w_ih.numel() + w_hh.numel() + 8 * B * H)


@fused_op("lstm_cell_fwd", cost=_cell_fwd_cost)
def lstm_cell_fwd(
    x: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    bias: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h_next, c_next, activated gates (B, 4H)); bias = b_ih + b_hh."""
    if backend == "torch":
        return _cell_fwd_torch(x, h, c, w_ih, w_hh, bias)
    return _kernels(backend).lstm_cell_fwd(x, h, c, w_ih, w_hh, bias, save_gates=True)


@lstm_cell_fwd.register_fake
def _(x, h, c, w_ih, w_hh, bias, backend):
    return h.new_empty(h.shape), h.new_empty(h.shape), h.new_empty((h.shape[0], 4 * h.shape[1]))


def _cell_bwd_cost(grad_h, grad_c, x, h, c, c_next, gates, w_ih, w_hh, has_bias, backend):
    flops, min_bytes = _cell_fwd_cost(x, h, c, w_ih, w_hh, None, backend)
    return 2 * flops, 2 * min_bytes


@fused_op("lstm_cell_bwd", cost=_cell_bwd_cost)
def lstm_cell_bwd(
    grad_h: torch.Tensor,
    grad_c: torch.Tensor,
    x: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    c_next: torch.Tensor,
    gates: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    has_bias: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dh, dc, dw_ih, dw_hh, dbias)."""
    grad_gates = _cell_grad_gates_torch if backend == "torch" else _kernels(backend).lstm_cell_grad_gates
    dgates, dc = grad_gates(grad_h, grad_c, c, c_next, gates)
    dx, dw_ih, db = _linear_grads(backend, dgates, x, w_ih, has_bias, True, True)
    dh, dw_hh, _ = _linear_grads(backend, dgates, h, w_hh, False, True, True)
    return dx, dh, dc, dw_ih, dw_hh, db


@lstm_cell_bwd.register_fake
def _(grad_h, grad_c, x, h, c, c_next, gates, w_ih, w_hh, has_bias, backend):
    return (
        x.new_empty(x.shape),
        h.new_empty(h.shape),
        c.new_empty(c.shape),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        w_ih.new_empty((w_ih.shape[0],) if has_bias else (0,)),
    )


def _cell_setup_context(ctx, inputs, output):
    x, h, c, w_ih, w_hh, bias, backend = inputs
    h_next, c_next, gates = output
    ctx.save_for_backward(x, h, c, c_next, gates, w_ih, w_hh)
    ctx.has_bias, ctx.backend = bias is not None, backend


def _cell_backward(ctx, grad_h, grad_c, grad_gates):
    x, h, c, c_next, gates, w_ih, w_hh = ctx.saved_tensors
    grad_h = grad_h if grad_h is not None else torch.zeros_like(h)
    grad_c = grad_c if grad_c is not None else torch.zeros_like(c)
    dx, dh, dc, dw_ih, dw_hh, db = lstm_cell_bwd(
        grad_h, grad_c, x, h, c, c_next, gates, w_ih, w_hh, ctx.has_bias, ctx.backend
    )
    return dx, dh, dc, dw_ih, dw_hh, (db if ctx.has_bias else None), None


lstm_cell_fwd.register_autograd(_cell_backward, setup_context=_cell_setup_context)


# ---------------------------------------------------------------------------------------------
# The recurrence of a whole sequence (input projections precomputed)
# ---------------------------------------------------------------------------------------------


def _recurrence_fwd_torch(xp, h0, c0, w_hh, lengths):
    T, B, _ = xp.shape
    ct = _compute_dtype(xp)
    hs, cs, all_gates = [h0.to(ct)], [c0.to(ct)], []
    w = w_hh.to(ct)
    for t in range(T):
        gates = _activated_gates(xp[t].to(ct) + hs[-1] @ w.t())
        i, f, g, o = gates.chunk(4, dim=-1)
        c_next = f * cs[-1] + i * g
        h_next = o * torch.tanh(c_next)
        if lengths is not None:
            valid = (t < lengths)[:, None]
            h_next, c_next, gates = (torch.where(valid, v, 0.0) for v in (h_next, c_next, gates))
        hs.append(h_next)
        cs.append(c_next)
        all_gates.append(gates)
    gates = torch.stack(all_gates) if all_gates else xp.new_empty((0, B, xp.shape[2]), dtype=ct)
    return torch.stack(hs).to(xp.dtype), torch.stack(cs).to(xp.dtype), gates.to(xp.dtype)


def _recurrence_bwd_torch(dhs, dcs, cs, gates, w_hh, lengths):
    T = cs.shape[0] - 1
    ct = _compute_dtype(cs)
    w = w_hh.to(ct)
    dh_carry = torch.zeros_like(cs[0], dtype=ct)
    dc_carry = torch.zeros_like(cs[0], dtype=ct)
    dgates_all = []
    for t in reversed(range(T)):
        valid = (t < lengths)[:, None] if lengths is not None else torch.ones_like(dh_carry[:, :1], dtype=torch.bool)
        dh = dhs[t + 1].to(ct) + dh_carry
        dgates, dc_prev = _gate_grads_ref(
            dh, dc_carry + dcs[t + 1].to(ct), cs[t].to(ct), cs[t + 1].to(ct), gates[t].to(ct)
        )
        dgates = torch.where(valid, dgates, 0.0)
        dc_carry = torch.where(valid, dc_prev, dc_carry)
        dh_carry = torch.where(valid, dgates @ w, dh_carry)
        dgates_all.append(dgates)
    dgates = torch.stack(dgates_all[::-1]) if dgates_all else gates.new_empty(gates.shape, dtype=ct)
    return dgates.to(cs.dtype), (dh_carry + dhs[0].to(ct)).to(cs.dtype), (dc_carry + dcs[0].to(ct)).to(cs.dtype)


def _recurrence_fwd_cost(xp, h0, c0, w_hh, lengths, backend):
    T, B, H4 = xp.shape
    return 2 * T * B * H4 * (H4 // 4), xp.element_size() * (xp.numel() * 2 + w_hh.numel())


@fused_op("lstm_recurrence_fwd", cost=_recurrence_fwd_cost)
def lstm_recurrence_fwd(
    xp: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor, lengths: torch.Tensor | None, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hs, cs (T + 1, B, H) with h0, c0 first, activated gates (T, B, 4H)) from xp (T, B, 4H)."""
    if backend == "torch":
        return _recurrence_fwd_torch(xp, h0, c0, w_hh, lengths)
    hs, cs, gates, _ = _kernels(backend).lstm_seq_fwd(xp, h0, c0, w_hh, lengths, save=True)
    return hs, cs, gates


@lstm_recurrence_fwd.register_fake
def _(xp, h0, c0, w_hh, lengths, backend):
    T, B, H4 = xp.shape
    return xp.new_empty((T + 1, B, H4 // 4)), xp.new_empty((T + 1, B, H4 // 4)), xp.new_empty((T, B, H4))


def _recurrence_bwd_cost(dhs, dcs, hs, cs, gates, w_hh, lengths, backend):
    T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    return 4 * T * B * 4 * H * H, hs.element_size() * (2 * gates.numel() + 2 * w_hh.numel())


@fused_op("lstm_recurrence_bwd", cost=_recurrence_bwd_cost)
def lstm_recurrence_bwd(
    dhs: torch.Tensor,
    dcs: torch.Tensor,
    hs: torch.Tensor,
    cs: torch.Tensor,
    gates: torch.Tensor,
    w_hh: torch.Tensor,
    lengths: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dxp, dh0, dc0, dw_hh)."""
    T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    if backend == "torch":
        dgates, dh0, dc0 = _recurrence_bwd_torch(dhs, dcs, cs, gates, w_hh, lengths)
    else:
        dgates, dh0, dc0 = _kernels(backend).lstm_seq_bwd(dhs, dcs, cs, gates, w_hh, lengths)
    # dW_hh = sum_t dgates_t^T h_{t-1}: one GEMM over every step
    flat_dgates, flat_h = dgates.reshape(T * B, 4 * H), hs[:-1].reshape(T * B, H)
    _, dw_hh, _ = _linear_grads(backend, flat_dgates, flat_h, w_hh, False, False, True)
    return dgates, dh0, dc0, dw_hh


@lstm_recurrence_bwd.register_fake
def _(dhs, dcs, hs, cs, gates, w_hh, lengths, backend):
    return (
        gates.new_empty(gates.shape),
        hs.new_empty(hs.shape[1:]),
        cs.new_empty(cs.shape[1:]),
        w_hh.new_empty(w_hh.shape),
    )


def _last_states(states, lengths):
    """Each row's state after its last step, from (T + 1, B, H) states with the initial ones first."""
    if lengths is None:
        return states[-1]
    return states[lengths.long(), torch.arange(states.shape[1], device=states.device)]


def _recurrence_infer_cost(xp, h0, c0, w_hh, lengths, backend):
    T, B, H4 = xp.shape
    return 2 * T * B * H4 * (H4 // 4), xp.element_size() * (xp.numel() * 5 // 4 + w_hh.numel())


@fused_op("lstm_recurrence_infer", cost=_recurrence_infer_cost)
def lstm_recurrence_infer(
    xp: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor, lengths: torch.Tensor | None, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference (nothing saved for backward): (hs (T + 1, B, H) with h0 first, c_n (B, H))."""
    if backend == "torch":
        hs, cs, _ = _recurrence_fwd_torch(xp, h0, c0, w_hh, lengths)
        return hs, _last_states(cs, lengths)
    hs, _, _, c_n = _kernels(backend).lstm_seq_fwd(xp, h0, c0, w_hh, lengths, save=False)
    return hs, c_n


@lstm_recurrence_infer.register_fake
def _(xp, h0, c0, w_hh, lengths, backend):
    T, B, H4 = xp.shape
    return xp.new_empty((T + 1, B, H4 // 4)), xp.new_empty((B, H4 // 4))


def _recurrence_setup_context(ctx, inputs, output):
    xp, h0, c0, w_hh, lengths, backend = inputs
    hs, cs, gates = output
    ctx.save_for_backward(hs, cs, gates, w_hh, lengths)
    ctx.backend = backend


def _recurrence_backward(ctx, dhs, dcs, dgates_unused):
    hs, cs, gates, w_hh, lengths = ctx.saved_tensors
    dhs = dhs if dhs is not None else torch.zeros_like(hs)
    dcs = dcs if dcs is not None else torch.zeros_like(cs)
    dxp, dh0, dc0, dw_hh = lstm_recurrence_bwd(dhs, dcs, hs, cs, gates, w_hh, lengths, ctx.backend)
    return dxp, dh0, dc0, dw_hh, None, None


lstm_recurrence_fwd.register_autograd(_recurrence_backward, setup_context=_recurrence_setup_context)


# ---------------------------------------------------------------------------------------------
# Dispatch and the public functions
# ---------------------------------------------------------------------------------------------


def _supports(backend, x, *args, **kwargs):
    if backend == "torch":
        return None
    return kernel_dtype_reason("x", x)


def _preference(x, *args, **kwargs):
    # Not yet measured on a GPU: cuDNN (torch) stays the automatic choice until the persistent kernels
    # (triton, cuda) are measured against it.
    return ("torch",)


_backend.register_op(_backend.OpSpec("lstm", _supports, _preference, lambda x, *a, **k: x.device))


def _cell_torch_cost(x, state, w_ih, w_hh, b_ih, b_hh):
    return _cell_fwd_cost(x, state[0], state[1], w_ih, w_hh, b_ih, "torch")


def _lstm_layer_torch(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    weights = [w_ih, w_hh] if b_ih is None else [w_ih, w_hh, b_ih, b_hh]
    output, h_n, c_n = torch.lstm(x, (h0[None], c0[None]), weights, b_ih is not None, 1, 0.0, False, False, False)
    return output, h_n[0], c_n[0]


def _layer_torch_cost(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    T, B, inputs = x.shape
    H = h0.shape[1]
    min_bytes = x.element_size() * (2 * x.numel() + w_ih.numel() + w_hh.numel() + T * B * H)
    return 2 * T * B * 4 * H * (inputs + H), min_bytes


def _validate_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    check_tensor("x", x, ndim=2)
    check_tensor("w_ih", w_ih, ndim=2)
    check_tensor("w_hh", w_hh, ndim=2)
    hidden = w_hh.shape[1]
    if w_hh.shape[0] != 4 * hidden:
        raise ValueError(f"w_hh must be (4 * hidden_size, hidden_size), got {tuple(w_hh.shape)}")
    if w_ih.shape != (4 * hidden, x.shape[1]):
        raise ValueError(
            f"w_ih must be (4 * hidden_size = {4 * hidden}, input_size = {x.shape[1]}), got {tuple(w_ih.shape)}"
        )
    for name, state in (("h", h), ("c", c)):
        check_tensor(name, state, ndim=2)
        if state.shape != (x.shape[0], hidden):
            raise ValueError(f"{name} must be (batch = {x.shape[0]}, hidden_size = {hidden}), got {tuple(state.shape)}")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih and b_hh must be given together")
    for name, bias in (("b_ih", b_ih), ("b_hh", b_hh)):
        if bias is not None:
            check_tensor(name, bias, ndim=1)
            if bias.shape[0] != 4 * hidden:
                raise ValueError(f"{name} must be (4 * hidden_size = {4 * hidden},), got {tuple(bias.shape)}")


@accepts_cupy
def lstm_cell(
    x: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None,
    b_hh: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step, fused: (h_next, c_next).

    Args:
        x: (batch, input_size); h, c: (batch, hidden_size)
        w_ih: (4 * hidden_size, input_size); w_hh: (4 * hidden_size, hidden_size); b_ih, b_hh: (4 * hidden_size,)
        backend: "torch", "triton", "cuda" or None (automatic).

    Equivalent PyTorch: lstm_cell_ref (nn.LSTMCell's formula)
    """
    _validate_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    x, h, c, w_ih, w_hh, b_ih, b_hh = autocast_inputs(x, h, c, w_ih, w_hh, b_ih, b_hh)
    check_same_dtype_and_device("x", x, h=h, c=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    chosen = _backend.choose_backend("lstm", backend, x)
    if chosen == "torch":  # torch's own fused cell (nn.LSTMCell's): its autograd, traced natively by torch.compile
        return torch_path("lstm_cell_fwd", _cell_torch_cost, torch.lstm_cell, x, (h, c), w_ih, w_hh, b_ih, b_hh)
    bias = b_ih + b_hh if b_ih is not None else None
    h_next, c_next, _ = lstm_cell_fwd(x, h, c, w_ih, w_hh, bias, chosen)
    return h_next, c_next


def lstm_layer(
    x: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None,
    b_hh: torch.Tensor | None = None,
    *,
    lengths: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LSTM layer in one direction over a sequence: (output (T, B, H), h_n (B, H), c_n (B, H)).

    x: (T, B, input_size); lengths: None or (B,) int64/int32 on any device, each <= T (rows past their
    length output zeros; h_n, c_n are each row's state after its last step). backend as in lstm_cell.
    """
    check_tensor("x", x, ndim=3)
    T, B = x.shape[:2]
    _validate_cell(x[0] if T else x.new_empty((B, x.shape[2])), h0, c0, w_ih, w_hh, b_ih, b_hh)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = autocast_inputs(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    check_same_dtype_and_device("x", x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    chosen = _backend.choose_backend("lstm", backend, x)
    if chosen == "torch" and lengths is None and T > 0:  # torch's fused LSTM (cuDNN on the GPU), differentiable
        return torch_path("lstm_layer_fwd", _layer_torch_cost, _lstm_layer_torch, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    bias = b_ih + b_hh if b_ih is not None else None
    xp = linear_act(x, w_ih, bias, backend=chosen)  # every step's input projection in one GEMM
    if lengths is not None:
        lengths = lengths.to(device=x.device, dtype=torch.int32)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh)):
        hs, cs, _ = lstm_recurrence_fwd(xp, h0, c0, w_hh, lengths, chosen)
        return hs[1:], _last_states(hs, lengths), _last_states(cs, lengths)
    hs, c_n = lstm_recurrence_infer(xp, h0, c0, w_hh, lengths, chosen)  # no states or gates kept for backward
    return hs[1:], _last_states(hs, lengths), c_n

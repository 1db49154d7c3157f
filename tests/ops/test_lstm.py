"""LSTM ops: lstm_cell and lstm_layer against float64 references, forward and backward; bad input; opcheck."""

import collections
import functools

import pytest
import torch
from torch.library import opcheck

import deepfuse
from deepfuse.ops import lstm_cell, lstm_cell_ref, lstm_layer
from deepfuse.ops.lstm import (
    lstm_cell_bwd,
    lstm_cell_fwd,
    lstm_recurrence_bwd,
    lstm_recurrence_fwd,
    lstm_recurrence_infer,
)
from tests.reference import check_against_reference
from tests.tolerances import assert_close_to_reference


def _weights(IN, H, dtype, g, bias=True):
    scale = H**-0.5
    w_ih = torch.randn(4 * H, IN, generator=g) * scale
    w_hh = torch.randn(4 * H, H, generator=g) * scale
    b = (torch.randn(4 * H, generator=g) * scale, torch.randn(4 * H, generator=g) * scale) if bias else (None, None)
    return tuple(t.to(dtype) if t is not None else None for t in (w_ih, w_hh, *b))


def _inputs(x_shape, H, g, **to):
    """(x, h, c, w_ih, w_hh, b_ih, b_hh) drawn from ``g`` in that order in float32, then ``.to(**to)``: x of
    ``x_shape`` (its last two dimensions batch and input size), h and c (batch, H)."""
    *_, B, IN = x_shape
    drawn = (
        torch.randn(*x_shape, generator=g),
        torch.randn(B, H, generator=g),
        torch.randn(B, H, generator=g),
        *_weights(IN, H, torch.float32, g),
    )
    return tuple(t.to(**to) for t in drawn)


CELL_INPUTS = ("x", "h", "c", "w_ih", "w_hh", "b_ih", "b_hh")
LAYER_INPUTS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")


def _flat_cell(backend):
    """lstm_cell's (h_next, c_next) flattened into one tensor, as check_against_reference compares them."""

    def cell(*t):
        return torch.cat([s.flatten() for s in lstm_cell(*t, backend=backend)])

    return cell


def _flat_cell_ref(*t):
    return torch.cat([s.flatten() for s in lstm_cell_ref(*t)])


def _flat_layer(backend, lengths):
    """lstm_layer's (output, h_n, c_n) flattened into one tensor, as _layer_ref returns them."""

    def layer(*t):
        return torch.cat([s.flatten() for s in lstm_layer(*t, lengths=lengths, backend=backend)])

    return layer


def _layer_ref(lengths):
    """lstm_layer's spec: nn.LSTMCell steps; rows past their length output zeros and keep their state."""

    def reference(x, h, c, w_ih, w_hh, b_ih, b_hh):
        outs = []
        h_n, c_n = h, c
        for t in range(x.shape[0]):
            h_t, c_t = lstm_cell_ref(x[t], h_n, c_n, w_ih, w_hh, b_ih, b_hh)
            valid = torch.ones_like(h_t[:, :1], dtype=torch.bool) if lengths is None else (t < lengths)[:, None]
            h_n, c_n = torch.where(valid, h_t, h_n), torch.where(valid, c_t, c_n)
            outs.append(torch.where(valid, h_t, 0.0))
        out = torch.stack(outs) if outs else x.new_zeros(0, *h.shape)
        return torch.cat([out.flatten(), h_n.flatten(), c_n.flatten()])

    return reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape", [(5, 7, 20), (1, 1, 1), (17, 33, 40)], ids=lambda s: "x".join(map(str, s)))
def test_cell_matches_reference(shape, backend, dtype):
    B, IN, H = shape
    g = torch.Generator().manual_seed(B + IN + H)
    tensors = _inputs((B, IN), H, g, dtype=dtype)
    dy = torch.randn(2 * B * H, generator=g).to(dtype)
    check_against_reference(_flat_cell(backend), _flat_cell_ref, tensors, dy, CELL_INPUTS)


# (backend, sequence path): triton's persistent kernel with one program owning every hidden unit, or with
# 16-unit slices meeting at a barrier each step (one slice under the interpreter, which runs programs one
# after another), and its per-step path; forced through the module's size limits
LAYER_PATHS = [("torch", None), ("triton", "single_slice"), ("triton", "slices"), ("triton", "per_step")]


def _force_path(monkeypatch, path, backend="triton"):
    if backend == "cuda":  # csrc/lstm.cu's choice, overridden
        monkeypatch.setattr("deepfuse.ops._lstm_cuda.PATH", path or "auto")
    elif path == "per_step":
        monkeypatch.setattr("deepfuse.kernels.lstm.PERSISTENT_MAX_HIDDEN", collections.defaultdict(int))
    elif path is not None:
        limit = 1 << 20 if path == "single_slice" else 0
        monkeypatch.setattr("deepfuse.kernels.lstm.SINGLE_SLICE_MAX_HIDDEN", collections.defaultdict(lambda: limit))


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("sizes", [(6, 5, 7, 20), (4, 17, 3, 33)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend,path", LAYER_PATHS, ids=lambda v: str(v))
def test_layer_matches_reference(backend, path, sizes, with_lengths, monkeypatch):
    T, B, IN, H = sizes  # B = 17: two batch tiles, walked by one program group
    _force_path(monkeypatch, path)
    g = torch.Generator().manual_seed(T * B + H)
    lengths = torch.randint(0, T + 1, (B,), generator=g) if with_lengths else None
    if lengths is not None:
        lengths[:2] = torch.tensor([T, 0])  # a full row and an empty one
    tensors = _inputs((T, B, IN), H, g)
    dy = torch.randn(T * B * H + 2 * B * H, generator=g)
    check_against_reference(_flat_layer(backend, lengths), _layer_ref(lengths), tensors, dy, LAYER_INPUTS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("backend,path", LAYER_PATHS, ids=lambda v: str(v))
def test_layer_inference_matches_reference(backend, path, dtype, monkeypatch):
    """Without autograd the layer saves nothing for backward: c_n comes from the kernel, not the saved states."""
    _force_path(monkeypatch, path)
    T, B, IN, H = 5, 17, 3, 33
    g = torch.Generator().manual_seed(13)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[:2] = torch.tensor([T, 0])
    tensors = _inputs((T, B, IN), H, g)
    spec = _layer_ref(lengths)
    with torch.no_grad():
        out = _flat_layer(backend, lengths)(*(t.to(dtype) for t in tensors))
        reference = spec(*(t.double() for t in tensors))
        yardstick = spec(*(t.to(dtype) for t in tensors))
    assert_close_to_reference("output, h_n, c_n", out, reference, yardstick, dtype)


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("sizes", [(1, 1, 1, 1), (4, 1, 3, 5), (1, 3, 2, 1)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend,path", LAYER_PATHS, ids=lambda v: str(v))
def test_layer_with_sizes_of_one(backend, path, sizes, with_lengths, monkeypatch):
    """Batch, hidden size or steps of 1: on a GPU, Triton turns these arguments into constants (the persistent
    kernels once failed to compile for B == 1)."""
    T, B, IN, H = sizes
    _force_path(monkeypatch, path)
    g = torch.Generator().manual_seed(T + 10 * B + 100 * H)
    lengths = torch.arange(T, T - B, -1).clamp(min=0) if with_lengths else None
    tensors = _inputs((T, B, IN), H, g)
    dy = torch.randn(T * B * H + 2 * B * H, generator=g)
    check_against_reference(_flat_layer(backend, lengths), _layer_ref(lengths), tensors, dy, LAYER_INPUTS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_step_kernels_with_h200_tiles(dtype, monkeypatch):
    """The per-step kernels (lstm_cell and the per-step sequence path) with the tiles they get on an H200 (64
    hidden units and BLOCK_K 32 per program), through the interpreter: two hidden blocks, a partial one."""
    from deepfuse.kernels import lstm as lstm_kernels

    monkeypatch.setattr(lstm_kernels, "step_tiles", functools.partial(lstm_kernels.step_tiles, interpret=False))
    assert lstm_kernels.step_tiles(dtype).block_h == 64  # not the interpreter's 32
    _force_path(monkeypatch, "per_step")
    T, B, IN, H = 3, 5, 37, 70
    g = torch.Generator().manual_seed(21)
    lengths = torch.tensor([3, 0, 1, 2, 3])
    tensors = _inputs((T, B, IN), H, g, dtype=dtype)
    dy = torch.randn(T * B * H + 2 * B * H, generator=g).to(dtype)
    check_against_reference(_flat_layer("triton", lengths), _layer_ref(lengths), tensors, dy, LAYER_INPUTS)

    def cell(x, *rest):
        return torch.cat([s.flatten() for s in lstm_cell(x[0], *rest, backend="triton")])

    def cell_spec(x, *rest):
        return torch.cat([s.flatten() for s in lstm_cell_ref(x[0], *rest)])

    check_against_reference(cell, cell_spec, tensors, dy[: 2 * B * H], LAYER_INPUTS)


def test_layer_of_length_zero_and_one():
    g = torch.Generator().manual_seed(8)
    w = _weights(3, 4, torch.float32, g)
    h0, c0 = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    for backend in ("torch", "triton"):
        out, h, c = lstm_layer(torch.randn(0, 2, 3), h0, c0, *w, backend=backend)
        assert out.shape == (0, 2, 4) and torch.equal(h, h0) and torch.equal(c, c0)
        x = torch.randn(1, 2, 3, generator=g)
        out, h, c = lstm_layer(x, h0, c0, *w, backend=backend)
        h_ref, c_ref = lstm_cell_ref(x[0], h0, c0, *w)
        torch.testing.assert_close(h, h_ref)
        torch.testing.assert_close(c, c_ref)


def _bad_cell_cases():
    g = torch.Generator().manual_seed(9)
    x, h, c = torch.randn(3, 5), torch.randn(3, 6), torch.randn(3, 6)
    w_ih, w_hh, b_ih, b_hh = _weights(5, 6, torch.float32, g)
    base = dict(x=x, h=h, c=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    return [
        (dict(base, x=torch.randn(3, 4)), ValueError, r"w_ih must be \(4 \* hidden_size = 24, input_size = 4\)"),
        (dict(base, h=torch.randn(2, 6)), ValueError, r"h must be \(batch = 3, hidden_size = 6\)"),
        (dict(base, c=torch.randn(3, 5)), ValueError, r"c must be \(batch = 3, hidden_size = 6\)"),
        (dict(base, w_hh=torch.randn(20, 6)), ValueError, r"w_hh must be \(4 \* hidden_size, hidden_size\)"),
        (dict(base, b_hh=None), ValueError, r"b_ih and b_hh must be given together"),
        (dict(base, x=x.long()), TypeError, r"x must be a floating-point tensor"),
        (dict(base, h=h.double()), TypeError, r"h.dtype is torch.float64 but x.dtype is torch.float32"),
        (dict(base, backend="cuda"), deepfuse.BackendUnavailableError, r"backend 'cuda'"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cell_cases())))
def test_bad_input_raises_a_clear_error(case):
    kwargs, error, message = _bad_cell_cases()[case]
    with pytest.raises(error, match=message):
        lstm_cell(**kwargs)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend):
    g = torch.Generator().manual_seed(10)
    w_ih, w_hh, b_ih, b_hh = _weights(5, 6, torch.float32, g)
    x, h, c = (torch.randn(3, n, generator=g).requires_grad_() for n in (5, 6, 6))
    opcheck(lstm_cell_fwd.custom_op, (x, h, c, w_ih.requires_grad_(), w_hh, b_ih + b_hh, backend))
    h_next, c_next, gates = lstm_cell_fwd(x.detach(), h.detach(), c.detach(), w_ih.detach(), w_hh, b_ih, backend)
    opcheck(
        lstm_cell_bwd.custom_op,
        (
            torch.randn(3, 6),
            torch.randn(3, 6),
            x.detach(),
            h.detach(),
            c.detach(),
            c_next,
            gates,
            w_ih.detach(),
            w_hh,
            True,
            backend,
        ),
    )
    xp = torch.randn(4, 3, 24, generator=g).requires_grad_()
    lengths = torch.tensor([4, 0, 2], dtype=torch.int32)
    opcheck(lstm_recurrence_fwd.custom_op, (xp, h, c, w_hh.requires_grad_(), lengths, backend))
    opcheck(lstm_recurrence_infer.custom_op, (xp.detach(), h.detach(), c.detach(), w_hh.detach(), lengths, backend))
    hs, cs, gates = lstm_recurrence_fwd(xp.detach(), h.detach(), c.detach(), w_hh.detach(), lengths, backend)
    opcheck(
        lstm_recurrence_bwd.custom_op,
        (torch.randn_like(hs), torch.randn_like(cs), hs, cs, gates, w_hh.detach(), lengths, backend),
    )


def test_compiles_fullgraph():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(11)
    w = _weights(5, 6, torch.float32, g)
    x, h0, c0 = torch.randn(4, 3, 5, generator=g), torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)

    def run(x, h0, c0):
        with deepfuse.use_backend("triton"):
            return lstm_layer(x, h0, c0, *w)[0]

    compiled = torch.compile(lambda x, h0, c0: lstm_layer(x, h0, c0, *w, backend="triton")[0], fullgraph=True)
    assert torch.equal(compiled(x, h0, c0), run(x, h0, c0))


# Model sizes (T, B, input_size, H): stock (H 64, 128), sentiment (H 256) and H 1024 (per-step path)
GPU_LAYER_SIZES = [(60, 64, 1, 64), (60, 128, 1, 128), (64, 64, 256, 256), (16, 64, 1024, 1024)]
GPU_LAYER_PATHS = [
    ("triton", None),
    ("triton", "slices"),
    ("triton", "per_step"),
    ("cuda", None),
    ("cuda", "persistent"),
    ("cuda", "per_step"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sizes", GPU_LAYER_SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("backend,path", GPU_LAYER_PATHS, ids=str)
def test_gpu_layer(backend, path, sizes, dtype, monkeypatch):
    """Training (forward + every gradient) and inference, with per-row lengths, at the models' sizes."""
    _force_path(monkeypatch, path, backend)
    T, B, IN, H = sizes
    g = torch.Generator().manual_seed(12)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    tensors = _inputs((T, B, IN), H, g, device="cuda", dtype=dtype)
    dy = torch.randn(T * B * H + 2 * B * H, generator=g).to(device="cuda", dtype=dtype)
    spec = _layer_ref(lengths.cuda())
    ours = _flat_layer(backend, lengths)
    out, _ = check_against_reference(ours, spec, tensors, dy, LAYER_INPUTS)
    with torch.no_grad():
        inferred = ours(*tensors)
    assert torch.equal(inferred, out), "inference and training forward differ"
    assert torch.equal(ours(*tensors), out), "forward is not deterministic"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(64, 1, 64), (64, 256, 256), (17, 33, 100)], ids=str)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_cell(backend, shape, dtype):
    B, IN, H = shape
    g = torch.Generator().manual_seed(14)
    tensors = _inputs((B, IN), H, g, device="cuda", dtype=dtype)
    dy = torch.randn(2 * B * H, generator=g).to(device="cuda", dtype=dtype)
    check_against_reference(_flat_cell(backend), _flat_cell_ref, tensors, dy, CELL_INPUTS)

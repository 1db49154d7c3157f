"""Every drop-in against torch's own layer over a wide sample of constructor arguments and inputs.

Modelled on torch's ModuleInfo samples (torch/testing/_internal/common_modules.py: module_inputs_torch_nn_*):
unbatched inputs with and without batch_first, masks, hx omitted or given, bias=False, odd sizes, packed
sequences, projections, padding modes. Each sample builds our module and torch's with the same state_dict
(it must load strictly both ways), runs both in float32 and torch's in float64, and compares the outputs
and the gradients of every float input and every parameter (a fixed random cotangent per output):
within tests/tolerances.py's rule, or bitwise where ours runs torch's own code (``exact``). On the
triton backend the kernels run through the interpreter, so the sizes stay tiny, and every sample runs in CI
(about 1.5 minutes on one core). A call the drop-in cannot run on a kernel backend must raise
BackendUnavailableError there (``unsupported``), and run torch's own implementation on the torch backend.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import deepfuse
from deepfuse.nn import LSTM, ConvBNAct, FusedConv2d, FusedLinear, LSTMCell, MultiheadAttention, TransformerEncoderLayer
from tests.nn.test_conv import randomise_bn
from tests.tolerances import assert_close_to_reference

TORCH_ACTIVATIONS = {
    "none": lambda z: z,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,  # torch's default slope is 0.01, as deepfuse's
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}
TORCH_ACTIVATION_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "none": nn.Identity}


@dataclass
class Sample:
    id: str
    ours: Callable[[], nn.Module]
    theirs: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], tuple]  # positional forward arguments; float tensors get gradients
    kwargs: Callable[[], dict] = dict  # keyword forward arguments (masks, flags)
    call: Callable | None = None  # (module, *inputs, **kwargs) -> output; default module(*inputs, **kwargs)
    theirs_post: Callable = lambda out: out  # applied to torch's output (the activation after nn.Linear/Conv2d)
    train: bool = True
    exact: tuple[str, ...] = ()  # backends on which ours runs torch's own code: bitwise equal
    unsupported: str = ""  # words of the BackendUnavailableError ours raises on a kernel backend ("": none)
    buffers: bool = False  # compare buffers too (BatchNorm running statistics)


def _randn(g, *shape):
    return torch.randn(*shape, generator=g)


def _map(value, fn):
    """fn applied to every tensor inside nested tuples/lists/dicts."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


def _leaves(value) -> list:
    """Outputs as a flat list (tensor or None); a PackedSequence contributes its data and batch sizes."""
    if isinstance(value, PackedSequence):
        return [value.data, value.batch_sizes]
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _run(sample: Sample, model: nn.Module, inputs, dtype, backend=None, post=lambda out: out):
    """(outputs, float input leaves) of one forward with fresh leaves in dtype."""
    leaves = []

    def to_leaf(t):
        if not t.is_floating_point():
            return t
        leaf = t.detach().to(dtype, copy=True).requires_grad_()  # a fresh leaf per model (keeps memory format)
        leaves.append(leaf)
        return leaf

    args = _map(inputs, to_leaf)
    kwargs = _map(sample.kwargs(), lambda t: t.to(dtype) if t.is_floating_point() else t)
    call = sample.call or (lambda m, *a, **k: m(*a, **k))
    if backend is None:
        out = post(call(model, *args, **kwargs))
    else:
        with deepfuse.use_backend(backend):
            out = post(call(model, *args, **kwargs))
    return _leaves(out), leaves


def _backward(outputs, cotangents):
    loss = sum((out.double() * cot).sum() for out, cot in zip(outputs, cotangents, strict=True) if cot is not None)
    loss.backward()


def _compare(name, ours, reference, theirs, exact):
    if exact:
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), f"{name}: not bitwise equal to torch's"
    else:
        assert_close_to_reference(name, ours, reference, theirs, torch.float32)


def check_unsupported(sample: Sample, backend: str) -> None:
    """A call the drop-in's fused path cannot run raises on a requested kernel backend, saying why."""
    ours = sample.ours().train(sample.train)
    inputs = sample.inputs(torch.Generator().manual_seed(1))
    call = sample.call or (lambda m, *a, **k: m(*a, **k))
    with deepfuse.use_backend(backend), pytest.raises(deepfuse.BackendUnavailableError) as error:
        call(ours, *inputs, **sample.kwargs())
    assert sample.unsupported in str(error.value), str(error.value)


def check_sample(sample: Sample, backend: str) -> None:
    if sample.unsupported and backend != "torch":
        return check_unsupported(sample, backend)
    torch.manual_seed(0)
    ours = sample.ours()
    theirs = sample.theirs()
    assert list(ours.state_dict()) == list(theirs.state_dict()), "state_dict keys differ from torch's"
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    reference = copy.deepcopy(theirs).double()
    for model in (ours, theirs, reference):
        model.train(sample.train)
    inputs = sample.inputs(torch.Generator().manual_seed(1))
    exact = backend in sample.exact

    out_ours, leaves_ours = _run(sample, ours, inputs, torch.float32, backend)
    out_theirs, leaves_theirs = _run(sample, theirs, inputs, torch.float32, post=sample.theirs_post)
    out_ref, leaves_ref = _run(sample, reference, inputs, torch.float64, post=sample.theirs_post)
    assert len(out_ours) == len(out_theirs), f"{len(out_ours)} outputs, torch's module gives {len(out_theirs)}"
    g = torch.Generator().manual_seed(2)
    cotangents = []
    for i, (o, t, r) in enumerate(zip(out_ours, out_theirs, out_ref, strict=True)):
        assert (o is None) == (t is None), f"output {i}: {type(o).__name__}, torch's module gives {type(t).__name__}"
        if o is None:
            cotangents.append(None)
        elif not t.is_floating_point():  # a PackedSequence's batch sizes
            assert torch.equal(o, t), f"output {i}: {o} != {t}"
            cotangents.append(None)
        else:
            assert o.shape == t.shape, f"output {i}: shape {tuple(o.shape)}, torch's module gives {tuple(t.shape)}"
            _compare(f"output {i}", o.detach(), r.detach(), t.detach(), exact)
            cotangents.append(torch.randn(t.shape, generator=g, dtype=torch.float64))
    if sample.buffers:
        for (name, b), b_theirs, b_ref in zip(ours.named_buffers(), theirs.buffers(), reference.buffers(), strict=True):
            if b.is_floating_point():
                _compare(f"buffer {name}", b, b_ref, b_theirs, exact)

    for outputs in (out_ours, out_theirs, out_ref):
        _backward(outputs, cotangents)
    for i, (a, t, r) in enumerate(zip(leaves_ours, leaves_theirs, leaves_ref, strict=True)):
        assert (a.grad is None) == (t.grad is None), f"input {i}: gradient presence differs from torch's"
        if t.grad is not None:
            _compare(f"grad of input {i}", a.grad, r.grad, t.grad, exact)
    params_theirs = dict(theirs.named_parameters())
    params_ref = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        p_theirs, p_ref = params_theirs[name], params_ref[name]
        assert (p.grad is None) == (p_theirs.grad is None), f"grad of {name}: presence differs from torch's"
        if p.grad is not None:
            _compare(f"grad of {name}", p.grad, p_ref.grad, p_theirs.grad, exact)


# ---------------------------------------------------------------------------------------------
# The samples
# ---------------------------------------------------------------------------------------------


def linear_samples():
    cases = [  # (id, constructor args, input shape, activation)
        ("basic", (10, 8), {}, (4, 10), "none"),
        ("no_bias_relu", (10, 8), {"bias": False}, (4, 10), "relu"),
        ("no_batch_dim_gelu", (3, 5), {}, (3,), "gelu"),
        ("3d_odd_silu", (7, 13), {}, (2, 3, 7), "silu"),
        ("4d_leaky_relu", (5, 3), {}, (2, 1, 3, 5), "leaky_relu"),
        ("batch_1_tanh", (6, 4), {"bias": False}, (1, 6), "tanh"),
        ("empty_batch_sigmoid", (5, 3), {}, (0, 5), "sigmoid"),
        ("gelu_tanh", (9, 2), {}, (3, 9), "gelu_tanh"),
    ]
    for name, args, kwargs, shape, act in cases:
        yield Sample(
            f"FusedLinear-{name}",
            ours=lambda args=args, kwargs=kwargs, act=act: FusedLinear(*args, **kwargs, activation=act),
            theirs=lambda args=args, kwargs=kwargs: nn.Linear(*args, **kwargs),
            inputs=lambda g, shape=shape: (_randn(g, *shape),),
            theirs_post=TORCH_ACTIVATIONS[act],
        )


def conv_samples():
    cases = [  # (id, constructor args, kwargs, input shape, activation, channels_last)
        ("basic", (4, 5, 3), {}, (2, 4, 3, 4), "none", False),
        ("same", (4, 5, 3), {"padding": "same"}, (2, 4, 3, 4), "relu", False),
        ("no_batch_dim", (4, 5, 3), {}, (4, 3, 4), "gelu", False),
        ("no_batch_dim_same", (4, 5, 3), {"padding": "same"}, (4, 3, 4), "none", False),
        (
            "stride_dilation_groups_no_bias",
            (4, 6, 3),
            {"stride": 2, "padding": 2, "dilation": 2, "groups": 2, "bias": False},
            (2, 4, 7, 6),
            "silu",
            False,
        ),
        ("depthwise", (3, 3, 3), {"padding": 1, "groups": 3}, (2, 3, 5, 5), "tanh", False),
        (
            "asymmetric_kernel",
            (2, 3, (1, 3)),
            {"stride": (2, 1), "padding": (0, 1)},
            (1, 2, 5, 4),
            "leaky_relu",
            False,
        ),
        ("even_kernel_same", (2, 3, 4), {"padding": "same"}, (1, 2, 5, 6), "sigmoid", False),
        ("valid", (2, 3, 2), {"padding": "valid"}, (2, 2, 4, 3), "gelu_tanh", False),
        ("channels_last", (4, 5, 3), {"padding": 1}, (2, 4, 5, 4), "relu", True),
        ("reflect", (3, 4, 3), {"padding": 1, "padding_mode": "reflect"}, (2, 3, 4, 5), "relu", False),
        (
            "circular_no_batch_dim",
            (3, 4, 3),
            {"padding": (1, 2), "padding_mode": "circular"},
            (3, 4, 5),
            "none",
            False,
        ),
        ("replicate_same", (3, 4, 2), {"padding": "same", "padding_mode": "replicate"}, (1, 3, 4, 5), "silu", False),
    ]
    for name, args, kwargs, shape, act, channels_last in cases:

        def inputs(g, shape=shape, channels_last=channels_last):
            x = _randn(g, *shape)
            return (x.to(memory_format=torch.channels_last) if channels_last else x,)

        yield Sample(
            f"FusedConv2d-{name}",
            ours=lambda args=args, kwargs=kwargs, act=act: FusedConv2d(*args, **kwargs, activation=act),
            theirs=lambda args=args, kwargs=kwargs: nn.Conv2d(*args, **kwargs),
            inputs=inputs,
            theirs_post=TORCH_ACTIVATIONS[act],
        )


def _randomise_bn(model: ConvBNAct) -> ConvBNAct:
    randomise_bn(model[1], seed=5)
    return model


def conv_bn_act_samples():
    cases = [  # (id, conv args, ConvBNAct kwargs, input shape, activation)
        ("basic", (3, 4, 3), {"padding": 1}, (2, 3, 5, 4), "relu"),
        ("stride_bias_gelu", (3, 5, 3), {"stride": 2, "bias": True}, (2, 3, 6, 7), "gelu"),
        (
            "groups_momentum_none_eps",
            (4, 4, 3),
            {"padding": 1, "groups": 2, "momentum": None, "eps": 1e-3},
            (3, 4, 4, 4),
            "silu",
        ),
        ("identity_activation_reflect", (2, 3, 3), {"padding": 1, "padding_mode": "reflect"}, (2, 2, 4, 5), "none"),
        ("batch_1", (2, 3, 1), {}, (1, 2, 3, 3), "tanh"),
    ]
    for (name, args, kwargs, shape, act), train in itertools.product(cases, (True, False)):
        conv_kwargs = {k: v for k, v in kwargs.items() if k not in ("momentum", "eps")}
        conv_kwargs.setdefault("bias", False)
        bn_kwargs = {k: v for k, v in kwargs.items() if k in ("momentum", "eps")}

        def theirs(args=args, conv_kwargs=conv_kwargs, bn_kwargs=bn_kwargs, act=act):
            return nn.Sequential(
                nn.Conv2d(*args, **conv_kwargs), nn.BatchNorm2d(args[1], **bn_kwargs), TORCH_ACTIVATION_MODULES[act]()
            )

        yield Sample(
            f"ConvBNAct-{name}-{'train' if train else 'eval'}",
            ours=lambda args=args, kwargs=kwargs, act=act: _randomise_bn(ConvBNAct(*args, **kwargs, activation=act)),
            theirs=theirs,
            inputs=lambda g, shape=shape: (_randn(g, *shape),),
            train=train,
            buffers=True,
        )


def _lstm_call(model, x, *hx, lengths=None, batch_first=False):
    if lengths is not None:
        x = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    return model(x, tuple(hx)) if hx else model(x)


LSTM_HIDDEN = 3


def lstm_samples():
    # torch's module_inputs_torch_nn_LSTM: input 2, hidden 3, two layers, over bias x batch_first x bidirectional
    # x proj_size, unbatched with and without hx; here also batched and packed inputs and dropout (in eval).
    for bias, batch_first, bidirectional, proj_size in itertools.product(
        (True, False), (False, True), (False, True), (0, 2)
    ):
        kwargs = dict(
            num_layers=2, bias=bias, batch_first=batch_first, bidirectional=bidirectional, proj_size=proj_size
        )
        axes = f"bias{int(bias)}-bf{int(batch_first)}-bi{int(bidirectional)}-proj{proj_size}"
        states, out = 2 * (2 if bidirectional else 1), proj_size or LSTM_HIDDEN

        def seq(g, steps, batch, bf=batch_first):  # (T, B, 2), or (B, T, 2) with batch_first
            return _randn(g, batch, steps, 2) if bf else _randn(g, steps, batch, 2)

        forms = {  # id -> (inputs, call)
            "no_batch_dim": (lambda g: (_randn(g, 2, 2),), None),
            "no_batch_dim_hx": (
                lambda g, s=states, o=out: (_randn(g, 3, 2), _randn(g, s, o), _randn(g, s, LSTM_HIDDEN)),
                None,
            ),
            "batched_hx": (
                lambda g, s=states, o=out, seq=seq: (seq(g, 4, 3), _randn(g, s, 3, o), _randn(g, s, 3, LSTM_HIDDEN)),
                None,
            ),
            "packed": (
                lambda g, seq=seq: (seq(g, 5, 3),),
                partial(_lstm_call, lengths=torch.tensor([2, 5, 3]), batch_first=batch_first),
            ),
            # hx in the caller's batch order, as torch (which permutes it to the packed order itself)
            "packed_hx": (
                lambda g, s=states, o=out, seq=seq: (seq(g, 4, 3), _randn(g, s, 3, o), _randn(g, s, 3, LSTM_HIDDEN)),
                partial(_lstm_call, lengths=torch.tensor([1, 4, 3]), batch_first=batch_first),
            ),
        }
        for form, (inputs, call) in forms.items():
            yield Sample(
                f"LSTM-{axes}-{form}",
                ours=lambda kwargs=kwargs: LSTM(2, LSTM_HIDDEN, **kwargs),
                theirs=lambda kwargs=kwargs: nn.LSTM(2, LSTM_HIDDEN, **kwargs),
                inputs=inputs,
                call=call or _lstm_call,
                exact=("torch",),
            )
    yield Sample(
        "LSTM-3_layers_dropout_eval_odd_sizes",
        ours=lambda: LSTM(5, 7, num_layers=3, dropout=0.5),
        theirs=lambda: nn.LSTM(5, 7, num_layers=3, dropout=0.5),
        inputs=lambda g: (_randn(g, 3, 2, 5),),
        call=_lstm_call,
        train=False,
        exact=("torch",),
    )
    yield Sample(
        "LSTM-batch_1_packed_proj",
        ours=lambda: LSTM(3, 4, proj_size=1, bidirectional=True),
        theirs=lambda: nn.LSTM(3, 4, proj_size=1, bidirectional=True),
        inputs=lambda g: (_randn(g, 4, 1, 3),),
        call=partial(_lstm_call, lengths=torch.tensor([3])),
        exact=("torch",),
    )


def lstm_cell_samples():
    cases = [  # (id, bias, inputs)
        ("no_batch_dim_hx", True, lambda g: (_randn(g, 5), _randn(g, 10), _randn(g, 10))),
        ("no_batch_dim", True, lambda g: (_randn(g, 5),)),
        ("no_batch_dim_no_bias", False, lambda g: (_randn(g, 5),)),
        ("batched_hx", True, lambda g: (_randn(g, 3, 5), _randn(g, 3, 10), _randn(g, 3, 10))),
        ("batched", False, lambda g: (_randn(g, 3, 5),)),
        ("batch_1_hx", True, lambda g: (_randn(g, 1, 5), _randn(g, 1, 10), _randn(g, 1, 10))),
    ]
    for name, bias, inputs in cases:
        yield Sample(
            f"LSTMCell-{name}",
            ours=lambda bias=bias: LSTMCell(5, 10, bias=bias),
            theirs=lambda bias=bias: nn.LSTMCell(5, 10, bias=bias),
            inputs=inputs,
            call=_lstm_call,
            exact=("torch",),
        )


def _kpm(batch, length, lengths):
    """(batch, length) bool key padding mask (True = padded) from per-row lengths (each >= 1)."""
    return torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]


def _mha_call(model, query, key=None, value=None, **kwargs):
    """Self-attention passes the same tensor three times (torch and deepfuse both specialise on that)."""
    key = query if key is None else key
    value = key if value is None else value
    return model(query, key, value, **kwargs)


def mha_samples():
    # torch's module_inputs_torch_nn_MultiheadAttention: embed 3, 3 heads, unbatched, over bias x add_bias_kv x
    # add_zero_attn x key_padding_mask x attn_mask x batch_first, need_weights left at True (the weights from a
    # second pass). add_bias_kv, add_zero_attn and a non-causal attn_mask are calls the fused path cannot run:
    # torch's own implementation on the torch backend (bitwise), BackendUnavailableError on triton.
    kpm_1d = torch.tensor([False, False, True])
    attn_3d = torch.tensor([False, False, True]).expand((3, 3, 3))
    for bias, bias_kv, zero_attn, kpm, attn_mask, batch_first in itertools.product(
        (True, False), (True, False), (True, False), (None, kpm_1d), (None, attn_3d), (True, False)
    ):
        ctor = dict(
            embed_dim=3, num_heads=3, batch_first=batch_first, bias=bias, add_bias_kv=bias_kv, add_zero_attn=zero_attn
        )
        unsupported = (
            "bool attn_mask"
            if attn_mask is not None
            else "add_bias_kv"
            if bias_kv
            else "add_zero_attn"
            if zero_attn
            else ""
        )  # the first reason MultiheadAttention gives
        yield Sample(
            f"MHA-torch_samples-bias{int(bias)}-kv{int(bias_kv)}-zero{int(zero_attn)}-kpm{int(kpm is not None)}-"
            f"mask{int(attn_mask is not None)}-bf{int(batch_first)}",
            ours=lambda ctor=ctor: MultiheadAttention(**ctor),
            theirs=lambda ctor=ctor: nn.MultiheadAttention(**ctor),
            inputs=lambda g: (_randn(g, 3, 3), _randn(g, 3, 3), _randn(g, 3, 3)),
            kwargs=lambda kpm=kpm, attn_mask=attn_mask: dict(key_padding_mask=kpm, attn_mask=attn_mask),
            exact=("torch",) if unsupported else (),
            unsupported=unsupported,
        )
    # need_weights=False: the fused path.
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    cases = [  # (id, ctor kwargs, inputs, forward kwargs, call)
        ("self_no_batch_dim", {}, lambda g: (_randn(g, 5, 8),), {}),
        ("self_no_batch_dim_kpm", {}, lambda g: (_randn(g, 5, 8),), dict(key_padding_mask=_kpm(1, 5, [3])[0])),
        ("self_batched_kpm", {}, lambda g: (_randn(g, 5, 3, 8),), dict(key_padding_mask=_kpm(3, 5, [5, 2, 4]))),
        (
            "self_causal_kpm",
            {},
            lambda g: (_randn(g, 5, 2, 8),),
            dict(attn_mask=causal, is_causal=True, key_padding_mask=_kpm(2, 5, [4, 1])),
        ),
        ("self_no_batch_dim_causal", {}, lambda g: (_randn(g, 5, 8),), dict(attn_mask=causal, is_causal=True)),
        (
            "cross_no_bias",
            {"bias": False},
            lambda g: (_randn(g, 4, 2, 8), _randn(g, 6, 2, 8)),
            dict(key_padding_mask=_kpm(2, 6, [6, 3])),
        ),
        (
            "cross_kdim_vdim",
            {"kdim": 5, "vdim": 3},
            lambda g: (_randn(g, 4, 2, 8), _randn(g, 6, 2, 5), _randn(g, 6, 2, 3)),
            {},
        ),
        (
            "cross_kdim_vdim_no_batch_dim_kpm",
            {"kdim": 5, "vdim": 3},
            lambda g: (_randn(g, 4, 8), _randn(g, 6, 5), _randn(g, 6, 3)),
            dict(key_padding_mask=_kpm(1, 6, [2])[0]),
        ),
        ("dropout_in_eval", {"dropout": 0.5}, lambda g: (_randn(g, 5, 2, 8),), {}),
        (
            "bool_attn_mask_torch_path",
            {},
            lambda g: (_randn(g, 5, 2, 8),),
            dict(attn_mask=torch.tensor([[False, True] * 2 + [False]] * 5)),
        ),
        (
            "float_kpm_torch_path",
            {},
            lambda g: (_randn(g, 5, 2, 8),),
            dict(key_padding_mask=torch.where(_kpm(2, 5, [5, 3]), float("-inf"), 0.0)),
        ),
        (
            "need_weights_per_head",
            {},
            lambda g: (_randn(g, 5, 2, 8),),
            dict(need_weights=True, average_attn_weights=False, key_padding_mask=_kpm(2, 5, [5, 3])),
        ),
    ]
    for (name, ctor, inputs, fwd), batch_first in itertools.product(cases, (False, True)):

        def batch_first_inputs(g, inputs=inputs, batch_first=batch_first):
            tensors = inputs(g)
            return tuple(t.transpose(0, 1) for t in tensors) if batch_first and tensors[0].dim() == 3 else tensors

        unsupported = {
            "bool_attn_mask_torch_path": "bool attn_mask",
            "float_kpm_torch_path": "torch.float32 key_padding_mask",
        }.get(name, "")
        train = "dropout" not in ctor
        yield Sample(
            f"MHA-{name}-bf{int(batch_first)}",
            ours=lambda ctor=ctor, batch_first=batch_first: MultiheadAttention(8, 2, batch_first=batch_first, **ctor),
            theirs=lambda ctor=ctor, batch_first=batch_first: nn.MultiheadAttention(
                8, 2, batch_first=batch_first, **ctor
            ),
            inputs=batch_first_inputs,
            kwargs=lambda fwd=fwd: {"need_weights": False, **fwd},
            call=_mha_call,
            train=train,
            exact=("torch",) if unsupported else (),
            unsupported=unsupported,
        )


def encoder_layer_samples():
    # torch's module_inputs_torch_nn_TransformerEncoderLayer: d_model 4, 2 heads, feed-forward 8, no dropout;
    # unbatched input over src_mask x src_key_padding_mask x norm_first x batch_first x bias.
    kpm_1d = torch.tensor([False, False, True])
    mask_2d = torch.tensor([False, False, True]).expand((3, 3))
    for src_mask, kpm, norm_first, batch_first, bias in itertools.product(
        (None, mask_2d), (None, kpm_1d), (True, False), (True, False), (True, False)
    ):
        ctor = dict(
            d_model=4,
            nhead=2,
            dim_feedforward=8,
            dropout=0.0,
            batch_first=batch_first,
            norm_first=norm_first,
            bias=bias,
        )
        yield Sample(
            f"TEL-no_batch_dim-mask{int(src_mask is not None)}-kpm{int(kpm is not None)}-nf{int(norm_first)}-"
            f"bf{int(batch_first)}-bias{int(bias)}",
            ours=lambda ctor=ctor: TransformerEncoderLayer(**ctor),
            theirs=lambda ctor=ctor: nn.TransformerEncoderLayer(**ctor),
            inputs=lambda g: (_randn(g, 3, 4),),
            kwargs=lambda src_mask=src_mask, kpm=kpm: dict(src_mask=src_mask, src_key_padding_mask=kpm),
            unsupported="bool attn_mask" if src_mask is not None else "",
        )
    cases = [  # (id, ctor kwargs, input shape as (S, N, E), forward kwargs, train)
        ("relu", dict(dim_feedforward=16), (3, 2, 4), {}, True),
        ("F.gelu", dict(activation=F.gelu), (3, 2, 4), {}, True),
        ("no_bias", dict(bias=False), (3, 2, 4), {}, True),
        ("kpm_norm_first", dict(norm_first=True), (5, 3, 4), dict(src_key_padding_mask=_kpm(3, 5, [5, 1, 3])), True),
        (
            "causal_kpm",
            {},
            (5, 2, 4),
            dict(
                src_mask=torch.ones(5, 5, dtype=torch.bool).triu(1),
                is_causal=True,
                src_key_padding_mask=_kpm(2, 5, [3, 5]),
            ),
            True,
        ),
        ("nn.GELU_tanh", dict(activation=nn.GELU(approximate="tanh")), (3, 2, 4), {}, True),
        ("nn.SiLU_odd_heads", dict(d_model=6, nhead=3, activation=nn.SiLU()), (3, 2, 6), {}, True),
        ("torch.tanh", dict(activation=torch.tanh), (3, 2, 4), {}, True),
        ("lambda_unfused", dict(activation=lambda z: z * torch.sigmoid(2 * z)), (3, 2, 4), {}, True),
        (
            "dropout_in_eval_eps",
            dict(dropout=0.3, layer_norm_eps=1e-3),
            (4, 2, 4),
            dict(src_key_padding_mask=_kpm(2, 4, [2, 4])),
            False,
        ),
    ]
    for (name, ctor, shape, fwd, train), batch_first in itertools.product(cases, (False, True)):
        full = dict(d_model=4, nhead=2, dim_feedforward=8, dropout=0.0, batch_first=batch_first) | ctor

        def inputs(g, shape=shape, batch_first=batch_first):
            x = _randn(g, *shape)
            return (x.transpose(0, 1) if batch_first else x,)

        yield Sample(
            f"TEL-{name}-bf{int(batch_first)}",
            ours=lambda full=full: TransformerEncoderLayer(**full),
            theirs=lambda full=full: nn.TransformerEncoderLayer(**full),
            inputs=inputs,
            kwargs=lambda fwd=fwd: dict(fwd),
            train=train,
        )


SAMPLES = [
    *linear_samples(),
    *conv_samples(),
    *conv_bn_act_samples(),
    *lstm_samples(),
    *lstm_cell_samples(),
    *mha_samples(),
    *encoder_layer_samples(),
]


def _params():
    for sample in SAMPLES:
        for backend in ("torch", "triton"):
            yield pytest.param(sample, backend, id=f"{sample.id}-{backend}")


@pytest.mark.parametrize(("sample", "backend"), list(_params()))
def test_dropin_matches_torch(sample, backend):
    check_sample(sample, backend)


def test_sample_ids_are_unique():
    ids = [sample.id for sample in SAMPLES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


# ---------------------------------------------------------------------------------------------
# Inference (no autograd) paths and clear errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_lstm_inference_matches_torch(proj_size, backend):
    """Without autograd the LSTM takes its inference path (nothing saved for backward)."""
    torch.manual_seed(3)
    ours = LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=proj_size).eval()
    theirs = nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=proj_size).eval()
    theirs.load_state_dict(ours.state_dict())
    reference = copy.deepcopy(theirs).double()
    x = torch.randn(4, 2, 3)
    lengths = torch.tensor([4, 2])
    with torch.no_grad():
        with deepfuse.use_backend(backend):
            out, (h, c) = ours(pack_padded_sequence(x, lengths))
        expected, (h_e, c_e) = theirs(pack_padded_sequence(x, lengths))
        ref, (h_r, c_r) = reference(pack_padded_sequence(x.double(), lengths))
    for name, value, r, e in (("out", out.data, ref.data, expected.data), ("h_n", h, h_r, h_e), ("c_n", c, c_r, c_e)):
        assert_close_to_reference(name, value, r, e, torch.float32)


def test_unsupported_and_bad_inputs_raise_clearly():
    with deepfuse.use_backend("triton"):
        with pytest.raises(ValueError, match="Expected input to be 2D or 3D"):
            LSTM(2, 3)(torch.randn(1, 2, 3, 2))
        with pytest.raises(ValueError, match=r"h_0 must have shape \(1, 2, 2\)"):
            LSTM(2, 3, proj_size=2)(torch.randn(4, 2, 2), (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)))
        with pytest.raises(ValueError, match="h_0 and c_0 must be 2-D"):
            LSTM(2, 3)(torch.randn(4, 2), (torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)))
        with pytest.raises(ValueError, match="Expected input to be 1D or 2D"):
            LSTMCell(2, 3)(torch.randn(1, 1, 2))
        with pytest.raises(ValueError, match="h and c must be 1-D"):
            LSTMCell(2, 3)(torch.randn(2), (torch.zeros(1, 3), torch.zeros(1, 3)))
        with pytest.raises(TypeError, match=r"hx must be a tuple of two tensors"):
            LSTMCell(2, 3)(torch.randn(2), torch.zeros(3))
        mha = MultiheadAttention(4, 2)
        x = torch.randn(3, 4)
        with pytest.raises(ValueError, match=r"key_padding_mask must be \(S,\) for an unbatched query"):
            mha(x, x, x, key_padding_mask=torch.zeros(1, 3, dtype=torch.bool), need_weights=False)
        with pytest.raises(ValueError, match="key and value must be 2-D like query"):
            mha(x, x[None], x, need_weights=False)


@pytest.mark.parametrize(
    ("activation", "fused"),
    [
        ("relu", "relu"),
        ("gelu", "gelu"),
        (F.relu, "relu"),
        (F.gelu, "gelu"),
        (F.silu, "silu"),
        (torch.tanh, "tanh"),
        (torch.sigmoid, "sigmoid"),
        (nn.ReLU(), "relu"),
        (nn.GELU(approximate="tanh"), "gelu_tanh"),
        (nn.LeakyReLU(), "leaky_relu"),
        (nn.LeakyReLU(0.2), None),
        (lambda z: z, None),
    ],
    ids=str,
)
def test_encoder_layer_fuses_known_activations(activation, fused):
    layer = TransformerEncoderLayer(4, 2, 8, dropout=0.0, activation=activation)
    assert layer.linear1.activation == (fused or "none")
    assert (layer._unfused_activation is None) == (fused is not None)


def test_multihead_attention_fused_path_does_not_fall_back(monkeypatch):
    """Unbatched, batch_first, kdim/vdim, is_causal, bool masks, bias=False: none reaches torch's forward."""

    def torch_forward(*args, **kwargs):
        raise AssertionError("fell back to nn.MultiheadAttention.forward")

    monkeypatch.setattr(nn.MultiheadAttention, "forward", torch_forward)
    g = torch.Generator().manual_seed(4)
    causal = torch.ones(3, 3, dtype=torch.bool).triu(1)
    for batch_first in (False, True):
        mha = MultiheadAttention(8, 2, batch_first=batch_first, bias=False)
        cross = MultiheadAttention(8, 2, kdim=5, vdim=3, batch_first=batch_first)
        x = torch.randn(3, 8, generator=g)
        with deepfuse.use_backend("triton"):
            assert mha(x, x, x, need_weights=False, is_causal=True, attn_mask=causal)[0].shape == (3, 8)
            kpm = torch.tensor([False, True, False])
            assert mha(x, x, x, need_weights=False, key_padding_mask=kpm)[0].shape == (3, 8)
            k, v = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 3, generator=g)
            q = torch.randn(2, 3, 8, generator=g)
            if not batch_first:
                q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
            assert cross(q, k, v, need_weights=False)[0].shape == q.shape


def test_new_paths_compile_fullgraph():
    """The paths added for the samples (unbatched attention, LSTMCell without hx, LSTM proj_size) compile whole."""
    torch.manual_seed(5)
    mha = MultiheadAttention(8, 2, batch_first=True)
    cell, lstm = LSTMCell(4, 5), LSTM(4, 5, proj_size=2, bidirectional=True)
    x, step, seq = torch.randn(3, 8), torch.randn(4), torch.randn(3, 2, 4)
    cases = [
        (lambda x: mha(x, x, x, need_weights=False)[0], x),
        (lambda step: cell(step)[0], step),
        (lambda seq: lstm(seq)[0], seq),
    ]
    with deepfuse.use_backend("triton"), torch._dynamo.config.patch(allow_rnn=True):
        for fn, arg in cases:
            torch._dynamo.reset()
            assert torch.equal(torch.compile(fn, fullgraph=True, backend="aot_eager")(arg), fn(arg))

"""deepfuse.patch / unpatch on small user-style models: same results, parameters, state_dict; reports; round trips.

Every comparison follows tests/tolerances.py: the patched model's error against a float64 copy of the unpatched
model is at most twice the error of the unpatched float32 model, plus the small absolute slack.
"""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, prune

import deepfuse
from deepfuse.nn import LSTM, FusedConv2d, FusedLinear, LSTMCell, MultiheadAttention, TransformerEncoderLayer
from deepfuse.patch import ConsumedActivation, ConsumedBatchNorm2d, FusedConvBN2d
from tests.tolerances import assert_close_to_reference


@pytest.fixture(autouse=True)
def _without_onednn(monkeypatch):
    """oneDNN's CPU primitives (LSTM, convolution) took seconds each to build on the shared 2-core CI machine;
    torch's native CPU kernels compute the same thing in milliseconds. Patching is what is tested here."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


# ---------------------------------------------------------------------------------------------
# Small models, written as a user would
# ---------------------------------------------------------------------------------------------


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(12, 24),
        nn.ReLU(),
        nn.Linear(24, 24),
        nn.GELU(approximate="tanh"),
        nn.Linear(24, 20),
        nn.SiLU(),
        nn.Linear(20, 16),
        nn.LeakyReLU(0.01),
        nn.Dropout(0.0),
        nn.Linear(16, 16),
        nn.Sigmoid(),
        nn.Linear(16, 16),
        nn.Tanh(),
        nn.Linear(16, 10),
        nn.LeakyReLU(0.2),  # a slope deepfuse does not fuse: reported, still runs
        nn.Linear(10, 5),
    )


class ResidualBlock(nn.Module):
    """torchvision's BasicBlock shape: attributes and its own forward (nothing to fuse, convolutions replaced)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)),
        ResidualBlock(8),
        nn.Sequential(nn.Conv2d(8, 12, 3, stride=2), nn.BatchNorm2d(12), nn.SiLU()),
        nn.Sequential(nn.Conv2d(12, 12, 3, padding="same", groups=3), nn.GELU()),
        nn.Sequential(nn.Conv2d(12, 12, 1), nn.BatchNorm2d(12, momentum=None)),  # cumulative average, no activation
        nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(12), nn.Tanh()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 10),
    )


def _randomise_batch_norms(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(bn.num_features, generator=g))
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.num_batches_tracked.fill_(3)


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True, bidirectional=True)
        self.cell = nn.LSTMCell(24, 12)
        self.head = nn.Sequential(nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        last = out[:, -1]
        h, _ = self.cell(last)
        return self.head(torch.cat([last, h], dim=-1))


class EncoderClassifier(nn.Module):
    """nn.TransformerEncoder over padded tokens, attention pooling with a learned query, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.query = nn.Parameter(torch.randn(1, 1, 16))
        self.pool = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens, padding):
        hidden = self.encoder(self.embed(tokens), src_key_padding_mask=padding)
        query = self.query.expand(tokens.shape[0], -1, -1)
        pooled = self.pool(query, hidden, hidden, key_padding_mask=padding, need_weights=False)[0]
        return self.head(pooled[:, 0])


class ScaledLinear(nn.Linear):
    """A user's Linear subclass with its own forward: patch must leave it alone."""

    def forward(self, x):
        return super().forward(x) * 0.5


class TaggedLinear(nn.Linear):
    """A subclass without its own forward (it may carry methods): left alone too."""

    def describe(self) -> str:
        return "tagged"


def _subclass_model() -> nn.Sequential:
    return nn.Sequential(
        ScaledLinear(6, 8),
        nn.ReLU(),
        TaggedLinear(8, 8),
        nn.ReLU(),
        parametrizations.weight_norm(nn.Linear(8, 8)),
        nn.ReLU(),
        nn.Linear(8, 4),
    )


def _tokens(batch, length, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


def _padding(lengths, length):
    return torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]


# (model factory, inputs factory): float inputs are cast to float64 for the reference copy.
CASES = {
    "mlp": (_mlp, lambda: (torch.randn(7, 12),)),
    "cnn": (_cnn, lambda: (torch.randn(3, 3, 9, 9),)),
    "lstm": (LSTMClassifier, lambda: (_tokens(3, 6, 30, seed=1),)),
    "transformer": (EncoderClassifier, lambda: (_tokens(3, 7, 20, seed=2), _padding([7, 4, 2], 7))),
    "subclasses": (_subclass_model, lambda: (torch.randn(5, 6),)),
}


def _make(case: str, seed: int = 0):
    factory, inputs = CASES[case]
    torch.manual_seed(seed)
    model = factory()
    _randomise_batch_norms(model, seed)
    return model, inputs()


def _as_double(inputs):
    return tuple(x.double() if x.is_floating_point() else x for x in inputs)


def _run(model, inputs, upstream):
    out = model(*inputs)
    (out * upstream.to(out.dtype)).sum().backward()
    return out.detach()


def _assert_patched_matches(patched, plain, inputs, training: bool, backend: str | None = None) -> None:
    """Forward, every parameter's gradient and (training) BatchNorm's running statistics: patched float32 vs a
    float64 copy of the unpatched model, with the unpatched float32 model as the yardstick."""
    reference = copy.deepcopy(plain).double()
    for model in (patched, plain, reference):
        model.train(training)
        model.zero_grad(set_to_none=True)
    with deepfuse.use_backend(backend):
        upstream = torch.randn(plain(*inputs).shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        for model in (plain, reference):  # the probe call above moved plain's running statistics: restart equal
            model.load_state_dict(patched.state_dict())
        out = _run(patched, inputs, upstream)
    expected, out_ref = _run(plain, inputs, upstream), _run(reference, _as_double(inputs), upstream)
    assert_close_to_reference("output", out, out_ref, expected, torch.float32)
    named = dict(patched.named_parameters())
    assert list(named) == [name for name, _ in plain.named_parameters()]
    for (name, p_plain), (_, p_ref) in zip(plain.named_parameters(), reference.named_parameters(), strict=True):
        assert_close_to_reference(f"grad of {name}", named[name].grad, p_ref.grad, p_plain.grad, torch.float32)
    buffers = dict(patched.named_buffers())
    for (name, b_plain), (_, b_ref) in zip(plain.named_buffers(), reference.named_buffers(), strict=True):
        if b_plain.is_floating_point():
            assert_close_to_reference(f"buffer {name}", buffers[name], b_ref, b_plain, torch.float32)
        else:
            assert torch.equal(buffers[name], b_plain), name


# ---------------------------------------------------------------------------------------------
# Parity, state and reports
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", list(CASES))
def test_outputs_gradients_and_state_match_the_unpatched_model(case, training):
    model, inputs = _make(case)
    plain = copy.deepcopy(model)
    parameters = dict(model.named_parameters())
    state = {key: value.clone() for key, value in model.state_dict().items()}
    report = deepfuse.patch(model)
    assert report.replaced
    # The same Parameter objects under the same names; the same state_dict keys, values and order.
    assert all(p is parameters[name] for name, p in model.named_parameters())
    assert list(model.state_dict()) == list(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    _assert_patched_matches(model, plain, inputs, training)


def test_mlp_report_and_fused_activations():
    model, _ = _make("mlp")
    report = deepfuse.patch(model)
    fused = {entry.name: entry for entry in report.replaced}
    assert list(fused) == ["0", "2", "4", "6", "9", "11", "13", "15"]
    expected = {
        "0": "relu",
        "2": "gelu_tanh",
        "4": "silu",
        "6": "leaky_relu",
        "9": "sigmoid",
        "11": "tanh",
        "13": "none",
        "15": "none",
    }
    for name, activation in expected.items():
        assert type(model[int(name)]) is FusedLinear and model[int(name)].activation == activation
    for index in (1, 3, 5, 7, 10, 12):
        assert isinstance(model[index], ConsumedActivation)
    assert type(model[14]) is nn.LeakyReLU  # slope 0.2: not fused, still runs
    assert fused["0"].module == "Linear + ReLU (1)" and "FusedLinear(activation='relu')" in fused["0"].detail
    assert [(entry.name, entry.module) for entry in report.skipped] == [("14", "LeakyReLU")]
    assert "negative_slope=0.2" in report.skipped[0].detail
    text = str(report)
    assert "deepfuse.patch: 8 replaced, 1 skipped" in text and "14: LeakyReLU not fused into 13" in text


def test_cnn_report_batch_norm_stays_in_its_slot():
    model, _ = _make("cnn")
    batch_norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    report = deepfuse.patch(model)
    names = {entry.name: entry.module for entry in report.replaced}
    assert names == {
        "0.0": "Conv2d + BatchNorm2d (0.1) + ReLU (0.2)",
        "1.conv1": "Conv2d",  # in a block with its own forward: nothing fused
        "1.conv2": "Conv2d",
        "2.0": "Conv2d + BatchNorm2d (2.1) + SiLU (2.2)",
        "3.0": "Conv2d + GELU (3.1)",
        "4.0": "Conv2d + BatchNorm2d (4.1)",
        "5.0": "Conv2d + BatchNorm2d (5.1) + Tanh (5.2)",
        "8": "Linear",
    }
    assert model[5][0].padding_mode == "reflect"
    assert type(model[0][0]) is FusedConvBN2d and model[0][0].activation == "relu"
    assert type(model[3][0]) is FusedConv2d and model[3][0].activation == "gelu"
    assert type(model[1].conv1) is FusedConv2d and type(model[1].bn1) is nn.BatchNorm2d
    # The same BatchNorm objects, still BatchNorm2d (isinstance-based weight decay groups or freezing find them).
    assert [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)] == batch_norms
    assert type(model[0][1]) is ConsumedBatchNorm2d and "fused into '0.0'" in repr(model[0][1])
    assert report.skipped == []


def test_frozen_batch_norm_in_a_training_model_folds_like_torch():
    """bn.eval() inside a training model (fine-tuning): BatchNorm follows its own flag, as torch's does."""
    model, (x,) = _make("cnn")
    plain = copy.deepcopy(model)
    deepfuse.patch(model)
    reference = copy.deepcopy(plain).double()
    upstream = torch.randn(3, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    outputs = {}
    for name, net, inputs in (("patched", model, (x,)), ("plain", plain, (x,)), ("ref", reference, (x.double(),))):
        net.train()
        net[2][1].eval()
        outputs[name] = _run(net, inputs, upstream)
    assert_close_to_reference("output", outputs["patched"], outputs["ref"], outputs["plain"], torch.float32)
    grads = [net[2][0].weight.grad for net in (model, reference, plain)]
    assert_close_to_reference("conv grad", *grads, torch.float32)
    assert torch.equal(model[2][1].running_mean, plain[2][1].running_mean)  # frozen: not updated


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")  # torch's, unpatched model
def test_lstm_transformer_and_attention_are_replaced_and_nested_path_disabled():
    model, _ = _make("lstm")
    report = deepfuse.patch(model)
    assert [entry.name for entry in report.replaced] == ["lstm", "cell", "head.0", "head.2"]
    assert type(model.lstm) is LSTM and type(model.cell) is LSTMCell and model.head[0].activation == "tanh"

    model, (tokens, padding) = _make("transformer")
    plain = copy.deepcopy(model).eval()
    report = deepfuse.patch(model)
    assert [entry.name for entry in report.replaced] == ["encoder.layers.0", "encoder.layers.1", "pool", "head"]
    assert all(type(layer) is TransformerEncoderLayer for layer in model.encoder.layers)
    assert type(model.pool) is MultiheadAttention
    assert [(note.name, "use_nested_tensor" in note.detail) for note in report.notes] == [("encoder", True)]
    assert model.encoder.use_nested_tensor is False
    # eval without autograd is where torch's encoder takes its nested-tensor path: outputs still agree.
    model.eval()
    with torch.no_grad():
        reference = copy.deepcopy(plain).double()(tokens, padding)
        assert_close_to_reference("output", model(tokens, padding), reference, plain(tokens, padding), torch.float32)
    assert deepfuse.unpatch(model).notes[0].name == "encoder" and model.encoder.use_nested_tensor is True


def test_subclasses_and_reparametrized_layers_are_skipped_with_reasons():
    model, (x,) = _make("subclasses")
    originals = list(model)
    report = deepfuse.patch(model)
    assert [entry.name for entry in report.replaced] == ["6"]
    reasons = {entry.name: entry.detail for entry in report.skipped}
    assert set(reasons) == {"0", "2", "4"}
    assert "own forward" in reasons["0"]
    assert "subclass" in reasons["2"] and "methods" in reasons["2"]
    assert "parametrized" in reasons["4"]
    assert all(model[i] is originals[i] for i in range(6))  # skipped layers and their activations untouched
    assert model[2].describe() == "tagged"
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    layer.linear1 = ScaledLinear(8, 16)  # the layer is left as is; its other children are still patched
    holder = nn.ModuleDict({"layer": layer})
    report = deepfuse.patch(holder)
    assert "'linear1' is a ScaledLinear" in report.skipped[0].detail and type(holder["layer"]) is type(layer)
    assert type(layer.self_attn) is MultiheadAttention and type(layer.linear1) is ScaledLinear
    lazy = nn.Sequential(nn.LazyLinear(4), nn.ReLU())
    assert "run one forward pass" in deepfuse.patch(lazy).skipped[0].detail
    # Pruning (weight_orig + weight_mask and a pre-hook) on a plain nn.Linear: its parameters are not nn.Linear's.
    torch.manual_seed(4)
    pruned = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    prune.l1_unstructured(pruned[0], "weight", amount=0.5)
    expected = pruned(x)
    report = deepfuse.patch(pruned)
    assert [entry.name for entry in report.replaced] == ["2"]
    assert [entry.name for entry in report.skipped] == ["0"]
    assert "weight_orig" in report.skipped[0].detail and "reparametrization" in report.skipped[0].detail
    assert type(pruned[0]) is nn.Linear and type(pruned[1]) is nn.ReLU
    assert torch.equal(pruned(x), expected)


def test_state_dicts_load_across_patched_and_unpatched_models():
    model, (x,) = _make("cnn")
    deepfuse.patch(model)
    model.train()
    model(x).sum().backward()  # moves the running statistics
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh, _ = _make("cnn", seed=1)
    fresh.load_state_dict(torch.load(buffer))  # strict: the same keys
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    other, _ = _make("cnn", seed=2)
    deepfuse.patch(other)
    other.load_state_dict(fresh.state_dict())
    model.eval(), fresh.eval(), other.eval()
    with torch.no_grad():
        reference = copy.deepcopy(fresh).double()(x.double())
        assert_close_to_reference("patched model from a plain checkpoint", other(x), reference, fresh(x), torch.float32)


@pytest.mark.parametrize("case", list(CASES))
def test_unpatch_restores_torch_modules_and_both_are_idempotent(case):
    model, _ = _make(case)
    before = repr(model)
    parameters = list(model.parameters())
    state = copy.deepcopy(model.state_dict())
    first = deepfuse.patch(model)
    patched = repr(model)
    second = deepfuse.patch(model)
    assert second.replaced == [] and repr(model) == patched
    already = {entry.name for entry in second.skipped if entry.detail == "already a deepfuse module"}
    assert already == {entry.name for entry in first.replaced}
    report = deepfuse.unpatch(model)
    assert report.replaced and repr(model) == before
    assert not any(type(m).__module__.startswith("deepfuse") for m in model.modules())
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    assert list(model.state_dict()) == list(state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not any("_deepfuse_patch" in m.__dict__ for m in model.modules())
    assert deepfuse.unpatch(model).replaced == [] and repr(model) == before


def test_hooks_flags_and_attributes_survive_and_block_fusion():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.GELU())
    seen = []
    handle = model[0].register_forward_hook(lambda module, args, output: seen.append(output))
    model[2].weight.requires_grad_(False)
    model[2].tag = "head"
    model.eval()
    report = deepfuse.patch(model)
    assert model[0].activation == "none" and type(model[1]) is nn.ReLU  # the hook must see the linear's output
    assert "hooks" in {entry.name: entry.detail for entry in report.skipped}["1"]
    assert model[2].activation == "gelu" and model[2].tag == "head" and not model[2].weight.requires_grad
    assert not model[0].training
    x = torch.randn(3, 4)
    model(x)
    assert len(seen) == 1 and torch.equal(seen[0], F.linear(x, model[0].weight, model[0].bias))
    handle.remove()
    model(x)
    assert len(seen) == 1
    deepfuse.unpatch(model)
    assert type(model[2]) is nn.Linear and model[2].tag == "head" and not hasattr(model[2], "activation")


def test_shared_modules_exclude_and_meta_device():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    x = torch.randn(2, 4)
    expected = model(x)
    report = deepfuse.patch(model, exclude=["3"])
    assert model[0] is model[2] and type(model[0]) is FusedLinear and model[0].activation == "none"
    assert type(model[3][0]) is nn.Linear
    assert {entry.name: entry.detail.split(":")[0] for entry in report.skipped} == {
        "1": "not fused into 0",
        "3": "excluded (exclude=...)",
    }
    assert torch.equal(model(x), expected)
    with pytest.raises(ValueError, match="exclude names modules the model does not have"):
        deepfuse.patch(model, exclude=["head"])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        deepfuse.patch(lambda x: x)
    with torch.device("meta"):
        big = nn.Sequential(nn.Linear(64, 64), nn.SiLU(), nn.LSTM(8, 8))
    deepfuse.patch(big)
    assert big[0].weight.is_meta and type(big[2]) is LSTM


def test_optimizer_built_before_patching_keeps_working():
    model, (x,) = _make("mlp")
    plain = copy.deepcopy(model)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, plain)]
    for step in range(2):
        if step == 1:
            deepfuse.patch(model)  # between two steps: the optimizer holds the same Parameter objects
        for net, optimizer in zip((model, plain), optimizers, strict=True):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
    reference = copy.deepcopy(plain).double()
    pairs = zip(model.named_parameters(), plain.parameters(), reference.parameters(), strict=True)
    for (name, p), p_plain, p_ref in pairs:
        assert_close_to_reference(name, p.detach(), p_ref.detach(), p_plain.detach(), torch.float32)


def test_replacing_a_fused_batch_norm_afterwards_is_a_clear_error():
    model, (x,) = _make("cnn")
    deepfuse.patch(model)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    with pytest.raises(RuntimeError, match="unpatch"):
        model(x)


# ---------------------------------------------------------------------------------------------
# torch.compile and the Triton kernels (interpreter on the CPU)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_patched_model_compiles_fullgraph(case):
    torch._dynamo.reset()
    model, inputs = _make(case)
    if case == "cnn":
        del model[4]  # BatchNorm with momentum=None does not compile fullgraph in torch itself (1 / num_batches)
    deepfuse.patch(model)
    eager = copy.deepcopy(model)
    if case == "cnn":  # a copy's fused convolution reads the copy's BatchNorm
        assert eager[0][0]._bn_parent is eager[0] and model[0][0]._bn_parent is model[0]
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    upstream = torch.randn(eager(*inputs).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eager.load_state_dict(model.state_dict())  # undo the probe call's running statistics
    for training in (True, False):
        for net in (model, eager):
            net.train(training)
            net.zero_grad(set_to_none=True)
        out, expected = _run(compiled, inputs, upstream), _run(eager, inputs, upstream)
        assert torch.equal(out, expected)
        for (name, p), p_eager in zip(model.named_parameters(), eager.parameters(), strict=True):
            assert torch.equal(p.grad, p_eager.grad), name
        for (name, b), b_eager in zip(model.named_buffers(), eager.buffers(), strict=True):
            assert torch.equal(b, b_eager), name


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_patched_model_on_triton_kernels(case, training):
    factory = {
        "mlp": lambda: nn.Sequential(nn.Linear(12, 20), nn.GELU(), nn.Linear(20, 9), nn.ReLU(), nn.Linear(9, 5)),
        "cnn": lambda: nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU()),
            nn.Sequential(nn.Conv2d(6, 8, 3, stride=2), nn.SiLU()),
            nn.Flatten(),
            nn.Linear(8 * 3 * 3, 5),
        ),
    }[case]
    torch.manual_seed(3)
    model = factory()
    _randomise_batch_norms(model, seed=3)
    inputs = (torch.randn(3, 12),) if case == "mlp" else (torch.randn(2, 3, 7, 7),)
    plain = copy.deepcopy(model)
    deepfuse.patch(model)
    _assert_patched_matches(model, plain, inputs, training, backend="triton")

"""deepfuse.ops.activations.activation_name: the one torch activation -> deepfuse name mapping, used by
TransformerEncoderLayer (its ``activation`` argument) and deepfuse.patch (the module after a Linear / Conv2d)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepfuse
from deepfuse.nn import TransformerEncoderLayer
from deepfuse.ops.activations import ACTIVATIONS, activation_module, activation_name, activation_ref

FUNCTIONS = [F.relu, torch.relu, F.leaky_relu, F.gelu, F.silu, F.sigmoid, torch.sigmoid, F.tanh, torch.tanh]


class MyReLU(nn.ReLU):
    def forward(self, input):
        return input.clamp(max=1.0)


@pytest.mark.parametrize("name", [a for a in ACTIVATIONS if a != "none"])
def test_a_name_maps_to_its_module_and_back(name):
    assert activation_name(activation_module(name)) == name
    assert activation_name(name) == name


@pytest.mark.parametrize(
    "activation",
    [activation_module(a) for a in ACTIVATIONS if a != "none"] + FUNCTIONS,
    ids=lambda a: repr(a).split(" at ")[0],
)
def test_every_mapped_activation_computes_what_its_name_computes(activation):
    """torch -> name: the kernel's activation (activation_ref) equals the torch module or function, on both sides."""
    z = torch.linspace(-6, 6, 101, dtype=torch.float64)
    name = activation_name(activation)
    assert name is not None
    torch.testing.assert_close(activation_ref(z, name), activation(z), rtol=0, atol=0)


@pytest.mark.parametrize(
    "activation",
    [
        nn.LeakyReLU(0.2),
        MyReLU(),
        nn.Identity(),
        nn.ELU(),
        nn.Softplus(),
        nn.GELU(approximate="sigmoid"),
        F.elu,
        lambda x: F.leaky_relu(x, 0.2),
        "none",
        "swish",
        None,
    ],
    ids=[
        "LeakyReLU(0.2)",
        "ReLU subclass",
        "Identity",
        "ELU",
        "Softplus",
        "GELU(bad approximate)",
        "F.elu",
        "lambda",
        "'none'",
        "'swish'",
        "None",
    ],
)
def test_what_deepfuse_cannot_compute_maps_to_none(activation):
    assert activation_name(activation) is None


@pytest.mark.parametrize("activation", [F.leaky_relu, nn.SiLU(), nn.GELU(approximate="tanh")])
def test_transformer_encoder_layer_fuses_what_the_mapping_names(activation):
    """The layer and patch share the rules: F.leaky_relu (which the layer's old table lacked) is fused too."""
    layer = TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=activation)
    assert layer.linear1.activation == activation_name(activation) and layer._unfused_activation is None
    reference = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=activation)
    reference.load_state_dict(layer.state_dict())
    src = torch.randn(5, 2, 8)
    torch.testing.assert_close(layer(src), reference(src))


def test_patch_fuses_and_leaves_activations_by_the_same_mapping():
    model = nn.Sequential(
        nn.Linear(4, 4), nn.GELU(approximate="tanh"), nn.Linear(4, 4), nn.LeakyReLU(0.2), nn.Linear(4, 4), MyReLU()
    )
    report = deepfuse.patch(model)
    assert model[0].activation == "gelu_tanh"
    assert model[2].activation == "none" and model[4].activation == "none"
    reasons = "\n".join(map(str, report.skipped))
    assert "negative_slope=0.2" in reasons and "MyReLU is a subclass" in reasons

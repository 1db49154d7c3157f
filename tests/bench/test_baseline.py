"""The plain-torch twin every model benchmark uses as its baseline: plain torch modules, the model's weights, the
model's results."""

import pytest
import torch
from torch import nn

import deepfuse
from deepfuse import models
from deepfuse.bench.baseline import NoPlainTwin, plain_torch_twin

# The layers that call deepfuse ops (ResidualBlock only composes ConvBNActs, which the twin replaces).
DEEPFUSE_LAYERS = tuple(getattr(deepfuse.nn, name) for name in deepfuse.nn.__all__ if name != "ResidualBlock")


def _example(name):
    task = models.get(name)
    state, inputs, targets = task.example(3, {})
    torch.manual_seed(0)
    return task, task.build({}, state), inputs if isinstance(inputs, tuple) else (inputs,), targets


def _first(output):
    return output if isinstance(output, torch.Tensor) else output[0]


@pytest.mark.parametrize("name", models.names())
def test_twin_is_plain_torch_with_the_models_weights_and_results(name):
    task, model, inputs, targets = _example(name)
    twin = plain_torch_twin(model, inputs)
    assert not [type(m).__name__ for m in twin.modules() if isinstance(m, DEEPFUSE_LAYERS)]
    # torch's own dropout, not a model's subclass of it (the sentiment Transformer's cheaper CPU masks)
    assert all(type(m) is nn.Dropout for m in twin.modules() if isinstance(m, nn.Dropout))
    twin_parameters = dict(twin.named_parameters())
    assert twin_parameters.keys() == dict(model.named_parameters()).keys()  # the same weights under the same names
    model.eval(), twin.eval()
    with deepfuse.use_backend("torch"):
        expected = _first(model(*inputs))
        torch.testing.assert_close(_first(twin(*inputs)), expected, rtol=1e-5, atol=1e-5)
        # Gradients too (eval mode: BatchNorm's running statistics, no dropout).
        task.loss(_first(model(*inputs)), targets).backward()
        task.loss(_first(twin(*inputs)), targets).backward()
    for parameter_name, parameter in model.named_parameters():
        twin_grad = twin_parameters[parameter_name].grad
        assert (parameter.grad is None) == (twin_grad is None), parameter_name
        if parameter.grad is not None:
            torch.testing.assert_close(twin_grad, parameter.grad, rtol=1e-4, atol=1e-6, msg=parameter_name)


def test_a_model_calling_deepfuse_ops_directly_has_no_twin():
    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 4))

        def forward(self, x):
            return deepfuse.ops.linear_act(x, self.weight, backend="triton")

    with pytest.raises(NoPlainTwin, match="linear_act_fwd"):
        plain_torch_twin(Direct(), (torch.randn(2, 4),))

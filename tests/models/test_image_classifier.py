"""The two image classifiers (catsdogs, chest_xray: deepfuse.models._image_classifier): each task's example batch
builds its network, and the Triton backend agrees with the torch backend on it, training and in eval."""

import pytest
import torch

from deepfuse import models
from tests.models.helpers import assert_backend_agrees

# (task, batch size, options, the example's input shape)
EXAMPLES = [
    ("catsdogs", 2, {"image_size": 32, "width": 4}, (2, 3, 32, 32)),
    ("chest_xray", 2, {"image_size": 64, "width": 8}, (2, 1, 64, 64)),
]
# (task, batch size, options): the last stage is 1x1, so BatchNorm sees `batch size` values per channel (with 2,
# its gradient is 0 in exact arithmetic and the comparison would be of rounding noise)
AGREEMENT = [
    ("catsdogs", 6, {"image_size": 16, "width": 4}),
    ("chest_xray", 4, {"image_size": 32, "width": 4}),
]


@pytest.mark.parametrize("name,batch_size,config,shape", EXAMPLES, ids=[case[0] for case in EXAMPLES])
def test_example_builds(name, batch_size, config, shape):
    task = models.get(name)
    state, x, _ = task.example(batch_size, config)
    assert task.build({}, state)(x).shape == (batch_size, 2) and x.shape == shape


# ~18-20 s each through the interpreter on one core (measured 2026-12-05): in CI
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,batch_size,config", AGREEMENT, ids=[case[0] for case in AGREEMENT])
def test_triton_agrees_with_torch(name, batch_size, config, train):
    task = models.get(name)
    torch.manual_seed(0)
    state, x, y = task.example(batch_size, config)
    assert_backend_agrees(task, state, {}, x, y, "triton", train=train)

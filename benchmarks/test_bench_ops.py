"""The benchmark cases under pytest-benchmark (same cases and providers as `deepfuse bench`):

    pytest benchmarks/ --benchmark-json=out.json

On a CPU only the torch provider runs, on tiny shapes: CPU numbers are not GPU performance.
pytest-benchmark times wall clock around a synchronised call; `deepfuse bench` (CUDA events, L2
flushed) is the reference method for recorded results.
"""

import importlib

import pytest
import torch

from deepfuse.bench import runner

OPS = ("linear_act", "conv2d_act", "attention")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32


def _params():
    for op in OPS:
        module = importlib.import_module(f"deepfuse.bench.{op}")
        groups = runner.groups(module.cases(DEVICE, DTYPE, quick=True), module.providers(DEVICE))
        for cases, providers in groups:
            for case in cases:
                for name, fn in providers.items():
                    yield pytest.param(case, fn, id=f"{op}-{case.shape}-{name}")


@pytest.mark.parametrize("case, fn", list(_params()))
def test_forward_backward(benchmark, case, fn):
    leaves = [t for t in case.inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def step():
        for t in leaves:
            t.grad = None
        fn(*case.inputs).backward(case.grad_output)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark(step)
    # (a padded-batch provider uses either the padded or the packed leaves, not both)
    grads = [t.grad for t in leaves if t.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

"""A checkpoint's pickle names no deepfuse class: moving a module (issue 20 moved the Task contract from
deepfuse.models.task to deepfuse.training.task) cannot break loading a checkpoint written before."""

import pickle
import types

import torch

from deepfuse import models
from deepfuse.training import make_config, train


class _RecordingUnpickler(pickle.Unpickler):
    seen: set[str] = set()

    def find_class(self, module, name):
        _RecordingUnpickler.seen.add(f"{module}.{name}")
        return super().find_class(module, name)


def test_a_checkpoint_pickles_no_deepfuse_class(tmp_path):
    task = models.get("digits")
    config = make_config(task, epochs=1, out=str(tmp_path / "run"), progress=False, device="cpu", seed=0)
    train(task, config, log=lambda *_: None)
    recorder = types.SimpleNamespace(Unpickler=_RecordingUnpickler, load=pickle.load, __name__="pickle")
    _RecordingUnpickler.seen = set()
    payload = torch.load(tmp_path / "run" / "best.pt", weights_only=False, pickle_module=recorder)
    assert payload["model"] == "digits" and _RecordingUnpickler.seen  # the recorder did see the pickle's globals
    assert not [name for name in _RecordingUnpickler.seen if name.startswith("deepfuse")]

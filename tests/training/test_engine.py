"""The training engine: exact resume, atomic checkpoints, run-folder safety, batching, two-process DDP."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepfuse import models
from deepfuse.training import RunError, make_config, train
from deepfuse.training.batching import EpochBatches
from deepfuse.training.checkpoint import CheckpointError, load_checkpoint, save_atomically
from deepfuse.training.distributed import Distributed
from deepfuse.training.engine import Run
from deepfuse.training.loops import NonFiniteLossError
from tests.training.test_faults import assert_same_training_state

ROOT = Path(__file__).resolve().parents[2]
DIGITS = models.get("digits")


def quiet(_line):
    pass


def digits_config(out, **overrides):
    return make_config(DIGITS, **{"out": str(out), "epochs": 2, "batch_size": 64, "progress": False, **overrides})


def test_resume_after_an_interrupt_reaches_the_same_weights_bitwise(tmp_path, monkeypatch):
    train(DIGITS, digits_config(tmp_path / "straight"), log=quiet)

    original_after_step = Run.after_step

    def interrupt_mid_second_epoch(self):
        original_after_step(self)
        if self.global_step == 27:  # epoch 2 has 20 steps; stop at its 7th
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "after_step", interrupt_mid_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(DIGITS, digits_config(tmp_path / "resumed"), log=quiet)
    saved = load_checkpoint(tmp_path / "resumed" / "last.pt", "digits")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 7, 27)
    monkeypatch.setattr(Run, "after_step", original_after_step)
    train(DIGITS, digits_config(tmp_path / "resumed"), resume=True, log=quiet)

    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert straight["global_step"] == resumed["global_step"] == 40
    assert_same_training_state(straight, resumed)  # weights, buffers, every optimizer tensor and step
    assert straight["history"] == [
        {**row, "seconds": s["seconds"], "samples_per_s": s["samples_per_s"]}
        for row, s in zip(resumed["history"], straight["history"], strict=True)
    ]


def test_run_folder_files(tmp_path):
    metrics = train(DIGITS, digits_config(tmp_path), log=quiet)
    assert {"accuracy", "loss", "config", "seed", "git_sha", "device", "backend", "seconds"} <= set(metrics)
    assert metrics["config"]["model"] == "digits" and metrics["split"] == "test"
    with (tmp_path / "history.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    for name in (
        "metrics.json",
        "last.pt",
        "best.pt",
        "learning_curves.png",
        "confusion_matrix.png",
        "misclassified.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert metrics["layers"]["features.0"] == "conv2d_act: torch"


def test_a_new_run_never_overwrites_a_previous_one(tmp_path):
    train(DIGITS, digits_config(tmp_path, epochs=1), log=quiet)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(RunError, match="already holds a run's checkpoints"):
        train(DIGITS, digits_config(tmp_path, epochs=1), log=quiet)
    assert (tmp_path / "last.pt").read_bytes() == before
    with pytest.raises(RunError, match="nothing to resume"):
        train(DIGITS, digits_config(tmp_path / "empty"), resume=True, log=quiet)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomically({"format": "deepfuse-checkpoint/1", "model": "digits", "weights": 1}, path)
    before = path.read_bytes()

    def killed_midway(payload, file):
        file.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_atomically({"format": "deepfuse-checkpoint/1", "model": "digits", "weights": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "a temporary file was left behind"


def test_checkpoint_errors_name_the_file(tmp_path):
    truncated = tmp_path / "cut.pt"
    save_atomically({"format": "deepfuse-checkpoint/1", "model": "digits"}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    other = tmp_path / "other.pt"
    save_atomically({"format": "deepfuse-checkpoint/1", "model": "catsdogs"}, other)
    with pytest.raises(CheckpointError, match="other.pt: a checkpoint of model 'catsdogs', not 'digits'"):
        load_checkpoint(other, "digits")
    plain = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, plain)
    with pytest.raises(CheckpointError, match="not a deepfuse training checkpoint"):
        load_checkpoint(plain)


def test_distributed_batches_are_the_single_process_batches_split():
    single = EpochBatches(50, 8, seed=3, epoch=1).batches
    parts = [EpochBatches(50, 4, seed=3, epoch=1, rank=r, world=2).batches for r in (0, 1)]
    assert [a + b for a, b in zip(*parts, strict=True)] == single[: len(parts[0])]
    assert EpochBatches(50, 8, seed=3, epoch=1, skip=2).batches == single[2:]
    assert EpochBatches(50, 8, seed=3, epoch=2).batches != single


def test_length_buckets_cover_every_sample_once():
    lengths = torch.randint(1, 100, (203,)).tolist()
    batches = EpochBatches(203, 10, seed=0, epoch=0, lengths=lengths).batches
    assert sorted(i for b in batches for i in b) == list(range(203))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 25, "batches should hold sequences of similar lengths"


def test_unknown_setting_is_a_clear_error():
    with pytest.raises(RunError, match="unknown settings for digits: colour"):
        make_config(DIGITS, colour="blue")


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    runs = {
        "single": [sys.executable, "-m", "tests.training.ddp_task", str(tmp_path / "single"), "16"],
        "ddp": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "tests.training.ddp_task",
            str(tmp_path / "ddp"),
            "8",
        ],
    }
    for name, command in runs.items():
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    single, ddp = (load_checkpoint(tmp_path / name / "last.pt") for name in ("single", "ddp"))
    assert single["global_step"] == ddp["global_step"] == 12
    for a, b in zip(single["history"], ddp["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    for name, value in single["model_state"].items():
        torch.testing.assert_close(ddp["model_state"][name], value, rtol=1e-5, atol=1e-6)


def test_resume_keeps_the_runs_own_plan(tmp_path):
    train(DIGITS, digits_config(tmp_path, epochs=1), log=quiet)
    with pytest.raises(RunError, match="planned for 1 epochs"):
        train(DIGITS, digits_config(tmp_path, epochs=3), resume=True, log=quiet)
    # from the command line only what the user gave counts: a resume without --epochs keeps the run's 1
    payload = train(DIGITS, digits_config(tmp_path, epochs=3), resume=True, log=quiet, given={"out"})
    assert payload["epochs"] == 1 and payload["config"]["epochs"] == 1


@pytest.mark.parametrize(
    "setting,value,message",
    [
        ("epochs", 0, "--epochs must be at least 1, got 0"),
        ("batch_size", 0, "--batch-size must be at least 1, got 0"),
        ("lr", -1.0, "--lr must be positive, got -1.0"),
        ("lr", float("nan"), "--lr must be a finite number, got nan"),
        ("workers", -1, "--workers must be at least 0, got -1"),
        ("patience", 0, "--patience must be at least 1, got 0"),
        ("max_grad_norm", 0.0, "--max-grad-norm must be positive, got 0.0"),
    ],
)
def test_unusable_numbers_are_clear_errors(setting, value, message):
    with pytest.raises(RunError, match=message):
        make_config(DIGITS, **{setting: value})


def test_unusable_model_options_are_clear_errors():
    with pytest.raises(RunError, match="--window must be at least 1, got 0"):
        make_config(models.get("stock"), window=0)


class _Linear(models.Task):
    name = "linear"


def _one_step_run(scheduler_interval: str, max_grad_norm: float | None, amp: str | None = None) -> Run:
    task = _Linear()
    task.scheduler_interval = scheduler_interval
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    run = Run(task, {"max_grad_norm": max_grad_norm}, None, torch.device("cpu"), Distributed(), model, model)
    run.optimizer, run.scheduler = optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    if amp == "fp16":
        run.scaler = torch.amp.GradScaler("cpu")
    return run


@pytest.mark.parametrize("amp", [None, "fp16"])
def test_the_optimizer_step_clips_to_max_grad_norm(amp):
    """SGD with lr 1: the parameters move by exactly the (clipped) gradient; the scaler's scale is undone first."""
    x = torch.full((8, 4), 10.0)
    for max_norm in (None, 0.5):
        run = _one_step_run("step", max_norm, amp)
        before = [p.detach().clone() for p in run.raw_model.parameters()]
        loss = (run.raw_model(x) ** 2).mean()
        grads = torch.autograd.grad(loss, list(run.raw_model.parameters()), retain_graph=True)
        full = torch.cat([g.flatten() for g in grads]).norm().item()
        assert run.optimizer_step(loss, samples=8) == pytest.approx(loss.item())
        moved = torch.cat(
            [(b - p.detach()).flatten() for b, p in zip(before, run.raw_model.parameters(), strict=True)]
        ).norm()
        assert full > 1.0 and moved.item() == pytest.approx(full if max_norm is None else max_norm, rel=1e-4)
        assert run.global_step == 1 and run.epoch_loss[1] == 8


def test_the_scheduler_steps_per_step_or_per_epoch_and_a_non_finite_loss_stops():
    per_step, per_epoch = _one_step_run("step", None), _one_step_run("epoch", None)
    for run in (per_step, per_epoch):
        run.optimizer_step((run.raw_model(torch.ones(2, 4)) ** 2).mean())
    assert per_step.scheduler.get_last_lr() == [0.5] and per_epoch.scheduler.get_last_lr() == [1.0]  # fit steps it
    run = _one_step_run("step", None)
    with pytest.raises(NonFiniteLossError, match="the training loss is nan"):
        run.optimizer_step(run.raw_model(torch.ones(2, 4)).sum() * float("nan"))
    assert run.global_step == 1  # counted: the engine then saves nothing of the epoch

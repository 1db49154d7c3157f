"""Fault injection: interrupts inside a batch, concurrent runs into one folder, unwritable and full disks,
non-finite numbers, changed settings on resume, degenerate data. Each fault gives the right result or one line
(exit code 2, or 130 for Ctrl-C), and nothing written before it is lost. Tiny data, one thread: fast in CI."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from deepfuse import cli, models
from deepfuse.training import RunError, make_config, run_lock, train
from deepfuse.training.checkpoint import load_checkpoint
from deepfuse.training.engine import fit, prepare
from deepfuse.training.run_lock import LOCK_NAME
from deepfuse.training.task import Data, Task

DIGITS = models.get("digits")


class DropoutTask(Task):
    """A small MLP with dropout (no BatchNorm) on synthetic data: every training forward draws from the RNG."""

    name = "dropout-mlp"
    defaults = {"epochs": 2, "batch_size": 16, "lr": 1e-2, "weight_decay": 0.0}

    def load_data(self, path, config, state=None):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(200, 8, generator=generator)
        y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
        return Data(TensorDataset(x[:160], y[:160]), TensorDataset(x[160:], y[160:]), state={"classes": ["0", "1"]})

    def build(self, config, state):
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 2))

    def plots(self, outputs, targets, state, out_dir, data):
        return []


class NoisyItems(TensorDataset):
    """Augmentation: every read of an item adds fresh noise from torch's generator."""

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x + 0.3 * torch.randn(x.shape), y


class AugmentedTask(DropoutTask):
    """The dropout MLP on items that draw random numbers when read (in a DataLoader worker with --workers 1)."""

    name = "augmented-mlp"

    def load_data(self, path, config, state=None):
        data = super().load_data(path, config, state)
        data.train = NoisyItems(*data.train.tensors)
        return data


DROPOUT, AUGMENTED = DropoutTask(), AugmentedTask()
# (task, epochs, the finished steps after which the interrupt cuts the next batch): a cut in the second epoch
CASES = {"digits": (DIGITS, 2, 26), "dropout-mlp": (DROPOUT, 2, 14), "augmented-mlp": (AUGMENTED, 2, 14)}


def quiet(_line):
    pass


@pytest.fixture(autouse=True)
def no_pictures(monkeypatch):
    """PNGs are not what these tests check, and they are most of a tiny run's time."""
    import deepfuse.training.plots

    monkeypatch.setattr(deepfuse.training.plots, "learning_curves_png", lambda *args: None)
    monkeypatch.setattr(type(DIGITS), "plots", lambda *args: [])


def config_for(task, out, **overrides):
    return make_config(task, **{"out": str(out), "epochs": CASES[task.name][1], "progress": False, **overrides})


def train_to_end(task, config, resume=False, interrupt=None):
    """prepare + fit, with ``interrupt(run)`` arming a fault first."""
    run = prepare(task, config, resume, log=quiet)
    try:
        if interrupt is not None:
            interrupt(run)
        return fit(run, log=quiet)
    finally:
        run.release()


def interrupt_in_forward(after_steps):
    """Ctrl-C from inside the model's last layer (BatchNorm statistics and dropout already drawn for the batch)."""

    def arm(run):
        def hook(module, inputs, output):
            if module.training and run.global_step == after_steps:
                raise KeyboardInterrupt

        list(run.raw_model.modules())[-1].register_forward_hook(hook)

    return arm


def interrupt_in_loss(after_steps, monkeypatch):
    def arm(run):
        loss = run.task.loss

        def cut(outputs, targets):
            value = loss(outputs, targets)
            if outputs.requires_grad and run.global_step == after_steps:
                raise KeyboardInterrupt
            return value

        monkeypatch.setattr(run.task, "loss", cut)

    return arm


def assert_same_training_state(expected: dict, actual: dict) -> None:
    """Weights, buffers, the whole optimizer state (every tensor of every parameter, and step) and the scheduler
    are bitwise equal."""
    assert expected["global_step"] == actual["global_step"]
    assert expected["model_state"].keys() == actual["model_state"].keys()
    for name, value in expected["model_state"].items():
        assert torch.equal(value, actual["model_state"][name]), f"{name} differs"
    a, b = expected["optimizer"], actual["optimizer"]
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys() and a["state"]
    for index, state in a["state"].items():
        assert state.keys() == b["state"][index].keys()
        for key, value in state.items():
            other = b["state"][index][key]
            same = torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
            assert same, f"optimizer state of parameter {index}: {key} differs"
    assert expected["scheduler"] == actual["scheduler"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final last.pt of each case's uninterrupted run (computed once)."""
    done = {}

    def get(name):
        if name not in done:
            task = CASES[name][0]
            out = tmp_path_factory.mktemp(f"straight-{name}")
            train_to_end(task, config_for(task, out))
            done[name] = load_checkpoint(out / "last.pt")
        return done[name]

    return get


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("where", ["forward", "loss"])
@pytest.mark.parametrize("name", list(CASES))
def test_ctrl_c_inside_a_batch_resumes_bitwise(name, where, workers, tmp_path, monkeypatch, uninterrupted):
    task, epochs, after = CASES[name]
    arm = interrupt_in_forward(after) if where == "forward" else interrupt_in_loss(after, monkeypatch)
    config = config_for(task, tmp_path, workers=workers)
    with pytest.raises(KeyboardInterrupt):
        train_to_end(task, config, interrupt=arm)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["global_step"] == after and saved["epoch"] == 1, "the checkpoint is not at the last finished step"
    monkeypatch.setattr(task, "loss", type(task).loss.__get__(task))
    train_to_end(task, config_for(task, tmp_path, workers=workers), resume=True)
    assert_same_training_state(uninterrupted(name), load_checkpoint(tmp_path / "last.pt"))


@pytest.mark.parametrize("name", list(CASES))
def test_a_real_ctrl_c_inside_the_optimizer_step_waits_for_the_step(name, tmp_path, uninterrupted):
    task, epochs, after = CASES[name]

    def arm(run):
        def send_sigint(optimizer, args, kwargs):
            if run.global_step == after:
                os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the step: parameters half updated

        run.optimizer.register_step_pre_hook(send_sigint)

    with pytest.raises(KeyboardInterrupt):
        train_to_end(task, config_for(task, tmp_path), interrupt=arm)
    assert load_checkpoint(tmp_path / "last.pt")["global_step"] == after + 1, "the step was finished and counted"
    train_to_end(task, config_for(task, tmp_path), resume=True)
    assert_same_training_state(uninterrupted(name), load_checkpoint(tmp_path / "last.pt"))


# --- shared helpers for the CLI cases ---------------------------------------------------------------------------
def one_line_error(capsys, code, argv, message):
    """``deepfuse argv`` exits with ``code`` and prints exactly one line on stderr, holding ``message``."""
    assert cli.main(argv) == code, argv
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def dropout_model(monkeypatch):
    """The dropout MLP as a registered model, so that the command line can train it."""
    models.names()
    monkeypatch.setitem(models._tasks, DROPOUT.name, DROPOUT)
    return DROPOUT.name


def no_temporary_files(folder):
    return not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- 2. one run per run folder ----------------------------------------------------------------------------------
# the lock holder loads run_lock.py alone (standard library only): it starts in milliseconds, without torch
HOLD_LOCK = """import importlib.util, pathlib, sys, time
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[1])
run_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lock)
lock = run_lock.acquire(pathlib.Path(sys.argv[2]))
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_into_a_locked_folder_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, capsys, dropout_model):
    owner = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, run_lock.__file__, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout.readline().strip() == "locked"
        one_line_error(
            capsys,
            2,
            ["train", dropout_model, "--out", str(tmp_path), "--no-progress"],
            f"is in use by another run (pid {owner.pid} on host {socket.gethostname()}",
        )
    finally:
        owner.kill()  # like kill -9: the lock file stays behind, its flock goes with the process
        owner.wait()
    assert (tmp_path / LOCK_NAME).exists() and not (tmp_path / "last.pt").exists()
    lines = []
    train(DROPOUT, config_for(DROPOUT, tmp_path, epochs=1), log=lines.append)
    taken = [line for line in lines if "taking over the lock" in line]
    assert len(taken) == 1 and f"(pid {owner.pid} on host {socket.gethostname()}, started " in taken[0], lines
    assert (tmp_path / "last.pt").exists() and not (tmp_path / LOCK_NAME).exists(), "the lock is released at exit"


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "yesterday"}))
    with pytest.raises(RunError, match=f"holds the lock of a run on host elsewhere.*delete {tmp_path / LOCK_NAME}"):
        train(DROPOUT, config_for(DROPOUT, tmp_path), log=quiet)
    assert (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_released_however_the_run_ends(tmp_path):
    with pytest.raises(RunError, match="nothing to resume"):
        train(DROPOUT, config_for(DROPOUT, tmp_path / "new" / "run"), resume=True, log=quiet)
    assert not (tmp_path / "new").exists(), "a refused run leaves no folder behind"
    run = prepare(DROPOUT, config_for(DROPOUT, tmp_path / "held"), log=quiet)
    with pytest.raises(RunError, match="in use by another run"):  # the same process, a second run
        prepare(DROPOUT, config_for(DROPOUT, tmp_path / "held"), log=quiet)
    run.release()
    assert not (tmp_path / "held" / LOCK_NAME).exists()


# --- 3. output problems before training, a disk filling up mid-run -----------------------------------------------
def test_out_naming_a_file_or_an_unwritable_folder_is_refused_before_training(
    tmp_path, capsys, monkeypatch, dropout_model
):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    one_line_error(capsys, 2, ["train", dropout_model, "--out", str(a_file)], f"--out {a_file} is a file")
    assert a_file.read_text() == "keep me"
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root ignores permissions: the file system's refusal is simulated
            monkeypatch.setattr(run_lock.os, "open", refuse_writing)
            monkeypatch.setattr(Path, "mkdir", refuse_writing)
        for out in (read_only, read_only / "run"):
            one_line_error(capsys, 2, ["train", dropout_model, "--out", str(out)], f"--out {out} is not writable")
    finally:
        read_only.chmod(0o755)
    assert list(read_only.iterdir()) == []


def refuse_writing(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")


def test_too_little_free_space_for_one_checkpoint_is_refused(tmp_path, monkeypatch):
    import shutil

    from deepfuse.training.engine import checkpoint_bytes

    model = DROPOUT.build({}, {})
    optimizer = torch.optim.AdamW(model.parameters())
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert checkpoint_bytes(model, optimizer) == 3 * weights  # weights and Adam's two moments
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(
        RunError, match=rf"1000 bytes free on its disk, one checkpoint needs about {3 * weights / 1024:.1f} KiB"
    ):
        train(DROPOUT, config_for(DROPOUT, tmp_path), log=quiet)
    assert not tmp_path.joinpath(LOCK_NAME).exists()


DISK_FULL = {
    "ENOSPC": OSError(errno.ENOSPC, "No space left on device"),
    "torch's short write": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4310"),
}


@pytest.mark.parametrize("error", list(DISK_FULL))
def test_a_disk_filling_up_mid_run_keeps_the_last_good_checkpoint(error, tmp_path, monkeypatch):
    save = torch.save

    def full_in_epoch_two(payload, file):
        if payload["epoch"] == 2:
            file.write(b"the first bytes fit")
            raise DISK_FULL[error]
        save(payload, file)

    monkeypatch.setattr(torch, "save", full_in_epoch_two)
    with pytest.raises(RunError) as caught:
        train(DROPOUT, config_for(DROPOUT, tmp_path, epochs=3), log=quiet)
    message = str(caught.value)
    assert f"{tmp_path / 'last.pt'}: the disk is full" in message and "\n" not in message
    assert f"the last good checkpoint {tmp_path / 'last.pt'} (end of epoch 1) stands" in message
    assert "free some space, then continue with: deepfuse train dropout-mlp" in message
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["epoch"] == 1 and load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 2  # the header and epoch 1
    assert no_temporary_files(tmp_path) and not (tmp_path / LOCK_NAME).exists()
    monkeypatch.setattr(torch, "save", save)  # space freed: the run continues from epoch 1 and finishes
    assert train(DROPOUT, config_for(DROPOUT, tmp_path, epochs=3), resume=True, log=quiet)["epochs"] == 3


def test_a_full_disk_when_writing_metrics_is_one_line(tmp_path, monkeypatch, capsys, dropout_model):
    import deepfuse.training.engine

    def full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(deepfuse.training.engine, "write_json", full)
    kept = f"the last good checkpoint {tmp_path / 'last.pt'} (end of epoch 2)"
    one_line_error(
        capsys,
        2,
        ["train", dropout_model, "--out", str(tmp_path), "--no-progress"],
        f"metrics.json: the disk is full; {kept}",
    )


def test_a_folder_made_read_only_mid_run_is_one_line(tmp_path, monkeypatch):
    import deepfuse.training.engine

    def refused(path, row):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(deepfuse.training.engine, "append_history", refused)
    with pytest.raises(RunError) as caught:
        train(DROPOUT, config_for(DROPOUT, tmp_path), log=quiet)
    assert str(caught.value).startswith(f"{tmp_path / 'history.csv'}: cannot write (Permission denied); the last good")
    assert "make it writable, then continue with" in str(caught.value)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


# --- 4. non-finite numbers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", [["--lr", "inf"], ["--lr", "nan"], ["--weight-decay", "inf"], ["--lr=-inf"]])
def test_non_finite_flags_are_refused(flag, tmp_path, capsys):
    err = one_line_error(capsys, 2, ["train", "digits", "--out", str(tmp_path / "run"), *flag], flag[0].split("=")[0])
    assert "finite" in err or "positive" in err
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_the_run_keeping_the_last_good_checkpoint(tmp_path, monkeypatch, capsys, dropout_model):
    loss = DROPOUT.loss
    steps_per_epoch = 10  # 160 samples, batches of 16

    def blows_up(outputs, targets):
        value = loss(outputs, targets)
        return value * float("inf") if outputs.requires_grad and blows_up.calls == steps_per_epoch + 3 else value

    def counted(outputs, targets):
        blows_up.calls += outputs.requires_grad
        return blows_up(outputs, targets)

    blows_up.calls = 0
    monkeypatch.setattr(DROPOUT, "loss", counted)
    err = one_line_error(
        capsys,
        2,
        ["train", dropout_model, "--out", str(tmp_path), "--no-progress"],
        "epoch 2, step 3: the training loss is inf: training stopped",
    )
    assert f"the last good checkpoint {tmp_path / 'last.pt'} (end of epoch 1) stands" in err
    assert "try a lower --lr than 0.01" in err
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / LOCK_NAME).exists()


def test_a_huge_learning_rate_stops_on_the_first_nan(tmp_path, capsys):
    one_line_error(
        capsys,
        2,
        ["train", "digits", "--lr", "1e30", "--out", str(tmp_path), "--no-progress"],
        "the training loss is nan",
    )
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "metrics.json").exists()


def test_metrics_json_is_strict_json(tmp_path, monkeypatch):
    metrics = DROPOUT.metrics

    def with_undefined(outputs, targets, state, split):
        return {**metrics(outputs, targets, state, split), "roc_auc": float("nan"), "ratio": np.float32("inf")}

    monkeypatch.setattr(DROPOUT, "metrics", with_undefined)
    payload = train(DROPOUT, config_for(DROPOUT, tmp_path), log=quiet)

    def refuse(constant):
        raise ValueError(f"metrics.json holds {constant}")

    written = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert written["roc_auc"] is None and written["ratio"] is None and written["val"]["roc_auc"] is None
    assert payload["roc_auc"] is None and written["accuracy"] == payload["accuracy"] > 0


# --- 5. mixed precision on a CPU ---------------------------------------------------------------------------------
class SmallDigits(type(DIGITS)):
    """The digits model on 128 training images: enough for a CPU AMP check in a second."""

    def load_data(self, path, config, state=None):
        data = super().load_data(path, config, state)
        data.train, data.val, data.test = (
            Subset(d, range(n)) for d, n in ((data.train, 128), (data.val, 64), (data.test, 64))
        )
        return data


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_trains_on_a_cpu(amp, dtype, tmp_path):
    task = SmallDigits()
    run = prepare(task, config_for(task, tmp_path, amp=amp, device="cpu", epochs=1, batch_size=32), log=quiet)
    try:
        inputs, _ = next(iter(torch.utils.data.DataLoader(run.data.train, batch_size=4)))
        with run.autocast():
            assert run.forward(inputs).dtype == dtype  # autocast really runs the layers in half precision
        assert (run.scaler is not None) == (amp == "fp16")
        metrics = fit(run, log=quiet)
    finally:
        run.release()
    history = load_checkpoint(tmp_path / "last.pt")["history"]
    assert math.isfinite(history[0]["train_loss"]) and metrics["accuracy"] > 0.2


# --- 6. resume, predict, eval, Ctrl-C at the end, one-class data -------------------------------------------------
@pytest.fixture
def finished_run(tmp_path, capsys, dropout_model):
    out = tmp_path / "run"
    assert cli.main(["train", dropout_model, "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--lr", "0.5"], "trained with --lr 0.01, not 0.5"),
        (["--batch-size", "8"], "trained with --batch-size 16, not 8"),
        (["--seed", "3", "--compile"], "trained with --compile False, not True; --seed 0, not 3"),
        (["--patience", "2"], "trained with --patience None, not 2"),
    ],
)
def test_changed_settings_on_resume_are_refused(flags, message, finished_run, capsys, dropout_model):
    before = (finished_run / "last.pt").read_bytes()
    one_line_error(capsys, 2, ["train", dropout_model, "--out", str(finished_run), "--resume", *flags], message)
    assert (finished_run / "last.pt").read_bytes() == before


def test_where_a_run_runs_may_change_on_resume(finished_run, capsys, dropout_model):
    argv = [
        "train",
        dropout_model,
        "--out",
        str(finished_run),
        "--resume",
        "--lr",
        "0.01",
        "--workers",
        "1",
        "--device",
        "cpu",
        "--backend",
        "torch",
        "--no-progress",
    ]
    assert cli.main(argv) == 0  # the same --lr is no change


def test_ctrl_c_during_the_final_evaluation_says_what_is_kept(tmp_path, monkeypatch, capsys, dropout_model):
    validate = DROPOUT.validate

    def cut_at_the_end(run, split):
        if run.epoch == run.config["epochs"]:  # the epochs are over: this is the final evaluation
            raise KeyboardInterrupt
        return validate(run, split)

    monkeypatch.setattr(DROPOUT, "validate", cut_at_the_end)
    argv = ["train", dropout_model, "--epochs", "1", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(argv) == 130
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("interrupted during the final evaluation: training is finished and kept")
    assert f"deepfuse eval {dropout_model} --checkpoint {tmp_path / 'best.pt'}" in out[-1]
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1 and not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_ctrl_c_while_reading_the_data_leaves_nothing_behind(tmp_path, monkeypatch, capsys, dropout_model):
    def interrupted(path, config, state=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(DROPOUT, "load_data", interrupted)
    assert cli.main(["train", dropout_model, "--out", str(tmp_path / "run"), "--no-progress"]) == 130
    assert (
        capsys.readouterr().out == f"interrupted before training started: nothing was written to {tmp_path / 'run'}\n"
    )
    assert not (tmp_path / "run").exists()


def test_eval_says_which_data_path_it_uses(tmp_path, monkeypatch, capsys):
    from tests.models.test_digits import fake_mnist

    (tmp_path / "project" / "mnist").mkdir(parents=True)
    fake_mnist(tmp_path / "project" / "mnist", n_train=60, n_test=20)
    monkeypatch.chdir(tmp_path / "project")
    assert cli.main(["train", "digits", "--data", "mnist", "--epochs", "1", "--out", "run", "--no-progress"]) == 0
    checkpoint = tmp_path / "project" / "run" / "best.pt"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert cli.main(["eval", "digits", "--checkpoint", str(checkpoint)]) == 0  # the path is stored absolute
    assert f"digits test (MNIST IDX files in {tmp_path / 'project' / 'mnist'}:" in capsys.readouterr().out
    payload = load_checkpoint(checkpoint)  # a checkpoint of an older version keeps --data as given
    payload["config"]["data"] = "mnist"
    torch.save(payload, tmp_path / "old.pt")
    monkeypatch.chdir(tmp_path / "project")
    assert cli.main(["eval", "digits", "--checkpoint", str(tmp_path / "old.pt")]) == 0
    out = capsys.readouterr().out
    assert f"data: {tmp_path / 'project' / 'mnist'} (the checkpoint's relative --data, resolved against the" in out


def test_predict_offers_the_skip_bad_its_errors_suggest(tmp_path, capsys):
    from tests.data.test_catsdogs import kaggle_folder
    from tests.data.test_images import write_corrupt

    data = kaggle_folder(tmp_path / "data", per_class=3, extras=False)
    run = tmp_path / "run"
    argv = [
        "train",
        "catsdogs",
        "--data",
        str(data),
        "--image-size",
        "32",
        "--width",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--out",
        str(run),
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    write_corrupt(tmp_path / "broken.jpg")
    good = data / "test1" / "1.jpg"
    predict = [
        "predict",
        "catsdogs",
        "--checkpoint",
        str(run / "best.pt"),
        str(good),
        str(tmp_path / "broken.jpg"),
        "--out",
        str(tmp_path),
    ]
    capsys.readouterr()
    one_line_error(capsys, 2, predict, "--skip-bad skips them")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main([*predict, "--skip-bad"]) == 0
    assert capsys.readouterr().out.startswith(f"{good}: P(dog)")
    with pytest.raises(SystemExit):  # a model without the option does not offer it
        cli.main(["predict", "digits", "--checkpoint", str(run / "best.pt"), "x.png", "--skip-bad"])


def test_kaggle_layout_with_one_class_is_refused(tmp_path, capsys):
    from tests.data.test_images import write_image

    for n in range(3):
        write_image(tmp_path / "train" / f"cat.{n}.jpg", seed=n)
    one_line_error(
        capsys,
        2,
        ["train", "catsdogs", "--data", str(tmp_path), "--out", str(tmp_path / "run")],
        "has cat.N images but no dog.N images",
    )


# --- 7. early stopping -------------------------------------------------------------------------------------------
@pytest.fixture
def flat_metric(monkeypatch):
    """The validation accuracy never improves after the first epoch."""
    monkeypatch.setattr(DROPOUT, "metrics", lambda outputs, targets, state, split: {"accuracy": 0.5})


def test_patience_stops_early_and_tests_the_best_weights(tmp_path, flat_metric):
    payload = train(DROPOUT, config_for(DROPOUT, tmp_path, epochs=6, patience=2), log=quiet)
    assert payload["epochs"] == 3 and payload["patience"] == 2
    assert payload["stopped_early"] == {"after_epoch": 3, "patience": 2}
    assert json.loads((tmp_path / "metrics.json").read_text())["stopped_early"]["after_epoch"] == 3
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1 and load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    assert train(DROPOUT, config_for(DROPOUT, tmp_path / "off", epochs=4), log=quiet)["epochs"] == 4  # off by default


def test_a_resumed_run_keeps_its_patience(tmp_path, flat_metric, monkeypatch):
    config = config_for(DROPOUT, tmp_path, epochs=6, patience=2)
    with pytest.raises(KeyboardInterrupt):
        train_to_end(DROPOUT, config, interrupt=interrupt_in_loss(15, monkeypatch))
    monkeypatch.setattr(DROPOUT, "loss", type(DROPOUT).loss.__get__(DROPOUT))
    resumed = train(DROPOUT, config_for(DROPOUT, tmp_path, epochs=6), resume=True, log=quiet, given={"out"})
    assert resumed["epochs"] == 3 and resumed["stopped_early"] == {"after_epoch": 3, "patience": 2}


def test_a_model_sets_its_default_patience():
    class Patient(DropoutTask):
        default_patience = 4

    assert make_config(Patient())["patience"] == 4
    assert make_config(Patient(), patience=1)["patience"] == 1
    assert make_config(DROPOUT)["patience"] is None
    with pytest.raises(RunError, match="--patience must be at least 1, got 0"):
        make_config(DROPOUT, patience=0)
    with pytest.raises(RunError, match="--patience must be a whole number, got 1.5"):
        make_config(DROPOUT, patience=1.5)

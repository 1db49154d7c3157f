"""stock: the LSTM regressor agrees across backends and learns; its splits never leak the future; the metrics
put the model beside the naive last-value forecast; train / eval / predict on the real Yahoo CSVs."""

import copy
import json

import numpy as np
import pytest
import torch

import deepfuse
from deepfuse import cli, models
from deepfuse.backend import record_choices
from deepfuse.data.stock import daily_features, read_prices
from deepfuse.models.stock import close_metrics
from tests.data.test_stock import write_web_export, write_yfinance
from tests.models.helpers import assert_backend_agrees, assert_loss_falls, forward_and_grads
from tests.tolerances import assert_close_to_reference

TASK = models.get("stock")
TINY = {"window": 5, "hidden_size": 16, "layers": 2, "dropout": 0.0}


def _batch(tmp_path, size):
    write_web_export(tmp_path / "A.csv", days=80, seed=3)
    data = TASK.load_data(tmp_path, TINY)
    inputs, targets = zip(*(data.train[i] for i in range(size)), strict=True)
    return data.state, torch.stack(inputs), torch.stack(targets)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_triton_agrees_with_torch(tmp_path, train):
    state, x, y = _batch(tmp_path, 3)  # T=5, B=3, H=16, two layers: deepfuse's LSTM kernels through the interpreter
    with record_choices() as chosen, deepfuse.use_backend("triton"):
        TASK.build(TINY, state)(x)
    assert ("lstm", "triton") in chosen and ("linear_act", "triton") in chosen
    assert_backend_agrees(TASK, state, TINY, x, y, "triton", train=train)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_backends_agree_with_torch_at_the_models_shape(backend):
    """The default model (2 layers x 64, 30-day windows), a batch of 64, on the GPU."""
    if not deepfuse.available_backends()[backend][0]:
        pytest.skip(f"backend {backend} is not available here")
    config = {"dropout": 0.0}
    state, x, y = TASK.example(64, config)
    torch.manual_seed(0)
    model = TASK.build(config, state).cuda()
    x, y = x.cuda(), y.cuda()
    ours = forward_and_grads(copy.deepcopy(model), TASK, x, y, backend, True)
    theirs = forward_and_grads(copy.deepcopy(model), TASK, x, y, "torch", True)
    exact = forward_and_grads(copy.deepcopy(model).double(), TASK, x.double(), y, "torch", True)
    assert_close_to_reference("outputs", ours[0], exact[0], theirs[0], torch.float32)
    for name in exact[1]:
        assert_close_to_reference(f"d{name}", ours[1][name], exact[1][name], theirs[1][name], torch.float32)


def test_a_few_steps_lower_the_loss(tmp_path):
    state, x, y = _batch(tmp_path, 32)
    assert_loss_falls(TASK, state, TINY, x, y, lr=1e-2)


def test_example_batch_builds():
    state, x, y = TASK.example(2, {})
    assert TASK.build({}, state)(x).shape == (2,) and y.shape == (2, 4)


def test_splits_are_chronological_and_the_future_never_reaches_training(tmp_path):
    """Rewriting every price on or after the validation cut changes neither the training windows nor the
    normaliser (the state saved in checkpoints)."""
    config = {"window": 5, "val_fraction": 0.2, "test_fraction": 0.2}
    write_web_export(tmp_path / "A.csv", days=120, seed=1)
    write_web_export(tmp_path / "B.csv", days=90, seed=2, start=5000.0)
    data = TASK.load_data(tmp_path, config)
    assert data.train.dates.max() < data.val.dates.min() and data.val.dates.max() < data.test.dates.min()
    val_start = data.val.dates.min()
    for name in ("A.csv", "B.csv"):
        path = tmp_path / name
        lines = path.read_text().split("\n")
        for i, line in enumerate(lines[1:], start=1):
            fields = line.split(",")
            if np.datetime64(fields[0]) >= val_start:
                fields[1:6] = [f"{float(x) * 7.5:.6f}" for x in fields[1:6]]
                fields[6] = "1"
                lines[i] = ",".join(fields)
        path.write_text("\n".join(lines))
    changed = TASK.load_data(tmp_path, config)
    assert changed.state["normaliser"] == data.state["normaliser"]
    assert np.array_equal(changed.train.dates, data.train.dates)
    assert changed.train.inputs.equal(data.train.inputs) and changed.train.targets.equal(data.train.targets)
    assert not changed.test.inputs.equal(data.test.inputs)  # the rewrite did reach the test period
    rows = np.concatenate([daily_features(t)[1:][t.dates[1:] < val_start] for t in read_prices(tmp_path)])
    assert np.allclose(data.state["normaliser"]["mean"], rows.mean(0))


def test_metrics_put_the_model_beside_the_naive_forecast():
    last = np.array([100.0, 102.0, 101.0, 99.0])
    actual = np.array([102.0, 101.0, 99.0, 100.0])
    targets = np.stack([np.zeros(4), np.array([99.0, 103.0, 102.0, 101.0]), last, actual], 1)
    naive = close_metrics(np.zeros(4), targets)
    assert naive["rmse_ratio"] == 1.0 and naive["mae_ratio"] == 1.0 and "does NOT beat" in naive["verdict"]
    perfect = close_metrics(np.log(actual / last), targets)
    assert perfect["rmse"] == pytest.approx(0.0, abs=1e-12) and perfect["directional_accuracy"] == 1.0
    assert perfect["verdict"].startswith("the model beats")
    # persistence: up, down, down, down predicted for moves up, down, down, up
    assert naive["naive_directional_accuracy"] == 0.75 and naive["always_up_accuracy"] == 0.5
    assert naive["naive_rmse"] == pytest.approx(np.sqrt(np.mean((actual - last) ** 2)))


def test_cli_train_eval_predict_on_the_real_samples(realdata, tmp_path, capsys):
    run = tmp_path / "run"
    folder = realdata / "stock" / "yahoo_web_export"
    argv = ["train", "stock", "--data", str(folder), "--epochs", "1", "--no-progress", "--out", str(run),
            "--window", "5", "--hidden-size", "8", "--layers", "1", "--batch-size", "256"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert "skipped 6 rows without prices" in out.err and "naive last-value forecast on RMSE" in out.out
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("rmse", "naive_rmse", "rmse_ratio", "mae", "naive_mae", "directional_accuracy", "verdict"):
        assert key in metrics, key
    assert metrics["split"] == "test"
    assert metrics["rmse_ratio"] == pytest.approx(metrics["rmse"] / metrics["naive_rmse"])
    assert (run / "predicted_vs_actual.png").stat().st_size > 0 and (run / "best.pt").is_file()
    assert cli.main(["eval", "stock", "--checkpoint", str(run / "best.pt")]) == 0
    assert f"rmse {metrics['rmse']:.4f}" in capsys.readouterr().out  # the checkpoint's normaliser: same numbers
    yfinance = realdata / "stock" / "yfinance_multiheader" / "AAPL.csv"
    assert cli.main(["predict", "stock", "--checkpoint", str(run / "best.pt"), str(yfinance)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("AAPL (AAPL.csv): close 210.0200 on 2025-07-17 -> next trading day")


def test_cli_bad_row_names_the_line(tmp_path, capsys):
    path = write_yfinance(tmp_path / "AAPL.csv", days=60)
    lines = path.read_text().split("\n")
    lines[9] = lines[9].replace(lines[9].split(",")[2], "12,5")  # a decimal comma: one field too many
    path.write_text("\n".join(lines))
    argv = ["train", "stock", "--data", str(path), "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    assert f"{path}, line 10: 7 fields, the header has 6" in capsys.readouterr().err

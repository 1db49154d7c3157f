"""chest_xray: the fused residual block against torch's ResNet block (train and eval, torch and triton), the
network trains (its backends agree: test_image_classifier.py), metrics with the validation threshold agree with
scikit-learn's, and the CLI runs train, eval and predict on the real sample and on Kaggle-layout fixtures (and
fails in one line on bad input)."""

import copy
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepfuse
from deepfuse import models
from deepfuse.cli import main
from deepfuse.nn import ConvBNAct, ResidualBlock
from tests.data.test_chest_xray import kaggle_xray_folder
from tests.data.test_images import write_corrupt
from tests.models.helpers import assert_loss_falls, finished_run, one_error_line
from tests.tolerances import assert_close_to_reference

TASK = models.get("chest_xray")
TINY = {"image_size": 64, "width": 8}


class TorchBasicBlock(nn.Module):
    """ResNet's basic block in plain torch, with ResidualBlock's parameter names."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        projection = stride != 1 or cin != cout
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if projection
            else nn.Identity()
        )

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


def _run(block, x, train, backend="torch"):
    block.train(train)
    x = x.clone().requires_grad_(True)
    with deepfuse.use_backend(backend):
        y = block(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
    grads = {name: p.grad for name, p in block.named_parameters()}
    return y.detach(), x.grad, grads, {k: v for k, v in block.state_dict().items() if "running" in k}


@pytest.mark.parametrize(
    ("cin", "cout", "stride", "train", "layout"),
    [
        (4, 6, 2, True, torch.contiguous_format),
        (4, 6, 2, False, torch.contiguous_format),
        (5, 5, 1, True, torch.contiguous_format),
        (5, 5, 1, False, torch.contiguous_format),
        (4, 6, 2, True, torch.channels_last),
        (5, 5, 1, False, torch.channels_last),
    ],
    ids=[
        "projection-train",
        "projection-eval",
        "identity-train",
        "identity-eval",
        "projection-train-nhwc",
        "identity-eval-nhwc",
    ],
)
def test_residual_block_is_a_resnet_block(cin, cout, stride, train, layout, backend="triton"):
    """The kernels and the block's logic at once (train: conv, BN on batch statistics, add, ReLU; eval: BN
    folded, add and ReLU in the epilogue) against the float64 torch block, with torch's float32 as yardstick;
    NHWC input too (what the models feed the kernels on CUDA), whose output stays NHWC."""
    torch.manual_seed(0)
    reference = TorchBasicBlock(cin, cout, stride)
    for module in reference.modules():  # running statistics and affine parameters far from the defaults
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    block = ResidualBlock(cin, cout, stride)
    block.load_state_dict(reference.state_dict())
    x = torch.randn(3, cin, 7, 9).contiguous(memory_format=layout)
    ours = _run(block, x, train, backend)
    assert ours[0].is_contiguous(memory_format=layout)
    theirs = _run(copy.deepcopy(reference), x, train)
    exact = _run(copy.deepcopy(reference).double(), x.double(), train)
    assert_close_to_reference("y", ours[0], exact[0], theirs[0], torch.float32)
    assert_close_to_reference("dx", ours[1], exact[1], theirs[1], torch.float32)
    for name in exact[2]:
        assert_close_to_reference(f"d{name}", ours[2][name], exact[2][name], theirs[2][name], torch.float32)
    for name in exact[3]:  # training updates BatchNorm's running statistics exactly like torch's
        assert_close_to_reference(name, ours[3][name], exact[3][name], theirs[3][name], torch.float32)


def test_conv_bn_add_act_in_eval_is_one_fused_convolution():
    from deepfuse.backend import record_choices

    layer = ConvBNAct(4, 4, 3, padding=1).eval()
    with record_choices() as log:
        layer(torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5))
    assert [op for op, _ in log] == ["conv2d_act"]


def real_batch(realdata, count=8, size=64):
    data = TASK.load_data(realdata / "chest_xray", {**TINY, "image_size": size, "val_fraction": 0.2})
    items = [data.train[i] for i in range(count)]
    return data.state, torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def test_a_few_steps_lower_the_loss(realdata):
    state, x, y = real_batch(realdata, count=6)
    assert x.shape == (6, 1, 64, 64) and set(y.tolist()) == {0, 1}
    assert_loss_falls(TASK, {**state, "width": 4}, {}, x, y, steps=5, lr=3e-3)


# --- metrics -------------------------------------------------------------------------------------------------
def test_metrics_use_the_validation_threshold_and_agree_with_sklearn():
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
        roc_curve,
    )

    rng = np.random.default_rng(0)
    val_truth = rng.integers(0, 2, 200)
    val_logits = torch.from_numpy(rng.normal(size=(200, 2)) + np.stack([np.zeros(200), 1.5 * val_truth], 1)).float()
    state = {"threshold": 0.5}
    val = TASK.metrics(val_logits, torch.from_numpy(val_truth), state, "val")
    probability = torch.softmax(val_logits, -1)[:, 1].numpy()
    fpr, tpr, thresholds = roc_curve(val_truth, probability)
    assert state["threshold"] == pytest.approx(thresholds[np.argmax(tpr - fpr)]) != 0.5
    assert val["roc_auc"] == pytest.approx(roc_auc_score(val_truth, probability))

    truth = rng.integers(0, 2, 150)
    logits = torch.from_numpy(rng.normal(size=(150, 2)) + np.stack([np.zeros(150), 1.5 * truth], 1)).float()
    test = TASK.metrics(logits, torch.from_numpy(truth), state, "test")
    p = torch.softmax(logits, -1)[:, 1].numpy()
    predicted = (p >= state["threshold"]).astype(int)
    assert test["threshold"] == state["threshold"]
    assert test["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert test["roc_auc"] == pytest.approx(roc_auc_score(truth, p))
    assert test["sensitivity"] == pytest.approx(recall_score(truth, predicted))
    assert test["specificity"] == pytest.approx(recall_score(truth, predicted, pos_label=0))
    assert test["precision"] == pytest.approx(precision_score(truth, predicted))
    assert test["f1"] == pytest.approx(f1_score(truth, predicted))
    assert test["confusion_matrix"] == confusion_matrix(truth, predicted).tolist()


def test_a_validation_split_of_one_class_falls_back_to_one_half():
    state = {"threshold": 0.3}
    with pytest.warns(UserWarning, match="one class only: decision threshold falls back to 0.5"):
        metrics = TASK.metrics(torch.randn(5, 2), torch.ones(5, dtype=torch.long), state, "val")
    assert state["threshold"] == 0.5 and metrics["threshold"] == 0.5 and np.isnan(metrics["roc_auc"])


# --- command line --------------------------------------------------------------------------------------------
FLAGS = ["--epochs", "1", "--image-size", "64", "--width", "4", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def trained_on_real_sample(realdata, tmp_path_factory):
    out = tmp_path_factory.mktemp("xray") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code = main(
            [
                "train",
                "chest_xray",
                "--data",
                str(realdata / "chest_xray"),
                "--out",
                str(out),
                *FLAGS,
                "--val-fraction",
                "0.2",
            ]
        )
    return code, out, realdata


def test_cli_train_on_the_real_sample(trained_on_real_sample):
    code, out, _ = trained_on_real_sample
    metrics = finished_run(code, out, "roc_curve.png", "confusion_matrix.png")
    assert metrics["split"] == "val" and "no test/ folder" in metrics["data"]
    assert set(metrics) >= {"accuracy", "roc_auc", "sensitivity", "specificity", "f1", "threshold"}


def test_cli_eval_and_predict(trained_on_real_sample, capsys):
    code, out, folder = trained_on_real_sample
    assert code == 0
    capsys.readouterr()
    assert main(["eval", "chest_xray", "--checkpoint", str(out / "best.pt")]) == 0
    assert capsys.readouterr().out.startswith("chest_xray val (")
    pneumonia = folder / "chest_xray" / "chest_xray" / "train" / "PNEUMONIA"
    normal = folder / "chest_xray" / "chest_xray" / "train" / "NORMAL" / "IM-0117-0001.jpeg"
    assert main(["predict", "chest_xray", "--checkpoint", str(out / "best.pt"), str(pneumonia), str(normal)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 14 and lines[-1].startswith(f"{normal}: P(pneumonia) 0.")
    assert all(" → NORMAL (threshold" in line or " → PNEUMONIA (threshold" in line for line in lines)
    bad = write_corrupt(out.parent / "scan.jpeg")
    assert main(["predict", "chest_xray", "--checkpoint", str(out / "best.pt"), str(normal), str(bad)]) == 2
    assert (
        one_error_line(capsys) == f"deepfuse predict: error: {bad}: not a readable image (UnidentifiedImageError: "
        "cannot identify image file) (skip_bad / --skip-bad skips them)"
    )


def test_cli_on_kaggle_layout_uses_the_validation_threshold_on_test(tmp_path, capsys):
    root = kaggle_xray_folder(tmp_path)
    assert (
        main(
            [
                "train",
                "chest_xray",
                "--data",
                str(root),
                "--out",
                str(tmp_path / "run"),
                *FLAGS,
                "--val-fraction",
                "0.3",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (
        metrics["split"] == "test"
        and "4 test" in metrics["data"]
        and "published val/ (4 images) unused" in metrics["data"]
    )
    assert metrics["threshold"] == metrics["val"]["threshold"]
    assert sum(map(sum, metrics["confusion_matrix"])) == 4
    assert capsys.readouterr().out.splitlines()[-2].startswith("test: loss ")


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    run = ["train", "chest_xray", *FLAGS]
    assert main([*run, "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "r1")]) == 2
    assert f"{tmp_path / 'absent'}: no such folder" in one_error_line(capsys)
    root = kaggle_xray_folder(tmp_path / "k", nest=False)
    for f in (root / "test" / "NORMAL").iterdir():
        f.unlink()
    assert main([*run, "--data", str(root), "--out", str(tmp_path / "r2")]) == 2
    assert "test/NORMAL: holds no image files" in one_error_line(capsys)
    root = kaggle_xray_folder(tmp_path / "c", with_test=False, nest=False)
    bad = write_corrupt(root / "train" / "NORMAL" / "IM-0999-0001.jpeg")
    assert main([*run, "--data", str(root), "--out", str(tmp_path / "r3")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"deepfuse train: error: {bad}: not a readable image") and "--skip-bad" in line
    assert main([*run, "--data", str(root), "--out", str(tmp_path / "r4"), "--image-size", "32"]) == 2
    assert one_error_line(capsys).endswith("--image-size must be at least 64, got 32")


def test_predict_needs_a_readable_input(tmp_path):
    from deepfuse.data import DataError
    from deepfuse.models._image_classifier import readable_inputs

    bad = write_corrupt(tmp_path / "scan.jpeg")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"), pytest.raises(DataError, match="no readable image"):
        readable_inputs([str(bad)], {"skip_bad": True})  # a run trained with --skip-bad predicts so too

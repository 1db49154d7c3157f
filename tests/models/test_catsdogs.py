"""catsdogs: the CNN trains (its backends agree: test_image_classifier.py), metrics agree with scikit-learn's,
and the CLI runs train, eval and predict (Kaggle's submission.csv) on the real sample and on fixtures, failing in
one line on bad input."""

import csv
import json

import numpy as np
import pytest
import torch

from deepfuse import models
from deepfuse.cli import main
from tests.data.test_catsdogs import class_folders, kaggle_folder
from tests.data.test_images import write_appledouble, write_corrupt
from tests.models.helpers import assert_loss_falls, finished_run, one_error_line

TASK = models.get("catsdogs")
FLAGS = ["--epochs", "1", "--image-size", "32", "--width", "4", "--batch-size", "8", "--no-progress"]


def test_a_few_steps_lower_the_loss(realdata):
    data = TASK.load_data(realdata / "catsdogs", {"image_size": 32, "width": 4})
    assert data.state["image_size"] == 32 and (len(data.train), len(data.val)) == (42, 4)
    items = [data.train[i] for i in (0, 1, 2, 40, 41, 39)]  # cats first, dogs last in file order
    x, y = torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert_loss_falls(TASK, data.state, {}, x, y, steps=5, lr=3e-3)


def test_metrics_agree_with_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 100)
    logits = torch.from_numpy(rng.normal(size=(100, 2))).float()
    metrics = TASK.metrics(logits, torch.from_numpy(truth), {}, "val")
    predicted = logits.argmax(-1).numpy()  # P(dog) >= 0.5 is the larger logit
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert metrics["f1"] == pytest.approx(f1_score(truth, predicted))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(truth, torch.softmax(logits, -1)[:, 1].numpy()))


# --- command line --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_on_real_sample(realdata, tmp_path_factory):
    out = tmp_path_factory.mktemp("catsdogs") / "run"
    code = main(["train", "catsdogs", "--data", str(realdata / "catsdogs"), "--out", str(out), *FLAGS])
    return code, out, realdata


def test_cli_train_on_the_real_sample(trained_on_real_sample):
    code, out, _ = trained_on_real_sample
    metrics = finished_run(code, out, "confusion_matrix.png", "roc_curve.png")
    assert metrics["split"] == "val" and metrics["data"].endswith("42 train / 4 val")
    assert set(metrics) >= {"accuracy", "roc_auc", "f1"} and metrics["config"]["image_size"] == 32


def test_cli_eval_and_predict_writes_a_submission(trained_on_real_sample, tmp_path, capsys):
    code, out, folder = trained_on_real_sample
    assert code == 0
    capsys.readouterr()
    assert main(["eval", "catsdogs", "--checkpoint", str(out / "best.pt")]) == 0
    assert capsys.readouterr().out.startswith("catsdogs val (")
    test1 = kaggle_folder(tmp_path / "kaggle") / "test1"
    extra = folder / "catsdogs" / "train" / "dog.0.jpg"
    predictions = tmp_path / "predictions"
    assert (
        main(
            [
                "predict",
                "catsdogs",
                "--checkpoint",
                str(out / "best.pt"),
                str(test1),
                str(extra),
                "--out",
                str(predictions),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == [
        str(test1 / "1.jpg"),
        str(test1 / "2.jpg"),
        str(test1 / "10.jpg"),
        str(extra),
    ]
    assert all(" P(dog) 0." in line or " P(dog) 1." in line for line in lines[:4])
    assert lines[4] == f"wrote {predictions / 'submission.csv'} (4 rows: id,label = probability of dog)"
    with (predictions / "submission.csv").open() as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == ["1", "2", "10", "dog.0"]
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows[1:])
    printed = [float(line.split("P(dog) ")[1].split()[0]) for line in lines[:4]]
    assert np.allclose(printed, [float(r[1]) for r in rows[1:]], atol=5e-5)


def test_cli_skip_bad_on_a_fixture_with_every_image_mode(tmp_path, capsys):
    root = kaggle_folder(tmp_path / "k")  # grayscale, CMYK and palette images among RGB ones
    write_appledouble(root / "train" / "._cat.0.jpg")
    bad = write_corrupt(root / "train" / "dog.3.jpg")
    run = ["train", "catsdogs", "--data", str(root), *FLAGS]
    assert main([*run, "--out", str(tmp_path / "r1")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"deepfuse train: error: {root / 'train' / '._cat.0.jpg'}: an AppleDouble file")
    assert "1 more unreadable image files" in line
    with pytest.warns(UserWarning, match=rf"skipped 2 unreadable image files of 12 \(first: {root}/train/\._cat"):
        assert main([*run, "--out", str(tmp_path / "r2"), "--skip-bad"]) == 0
    assert "8 train / 2 val" in json.loads((tmp_path / "r2" / "metrics.json").read_text())["data"]
    assert bad.exists()


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    run = ["train", "catsdogs", *FLAGS]
    assert main([*run, "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "r1")]) == 2
    assert f"{tmp_path / 'absent'}: no such folder" in one_error_line(capsys)
    root = class_folders(tmp_path / "classes")
    for f in (root / "dogs").iterdir():
        f.unlink()
    assert main([*run, "--data", str(root), "--out", str(tmp_path / "r2")]) == 2
    line = one_error_line(capsys)
    assert line == f"deepfuse train: error: {root / 'dogs'}: holds no image files (.jpg, .jpeg, .png ...)"
    root = class_folders(tmp_path / "ok")
    assert main([*run, "--data", str(root), "--out", str(tmp_path / "r3"), "--image-size", "16"]) == 2
    assert "--image-size must be at least 32, got 16" in one_error_line(capsys)
    assert main(["predict", "catsdogs", "--checkpoint", str(tmp_path / "none.pt"), str(root)]) == 2
    assert "none.pt" in one_error_line(capsys)

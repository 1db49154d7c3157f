"""The command line: the demo trains and matches torch; the benchmark harness runs end to end on a CPU."""

import json

from deepfuse import cli


def test_demo_trains_digits_to_the_target(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "features.0    ConvBNAct    conv2d_act: torch" in out  # which backend ran each layer
    assert "(meets the target 0.97)" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.97 and metrics["split"] == "test"
    for picture in ("learning_curves.png", "confusion_matrix.png", "misclassified.png"):
        assert (tmp_path / picture).stat().st_size > 0


def test_train_eval_predict_digits(tmp_path, capsys):
    from PIL import Image

    from tests.models.test_digits import fake_mnist

    run = tmp_path / "run"
    argv = ["train", "digits", "--epochs", "1", "--out", str(run), "--no-progress", "--seed", "3"]
    assert cli.main([*argv, "--max-grad-norm", "5"]) == 0
    assert (run / "best.pt").exists()
    assert json.loads((run / "metrics.json").read_text())["config"]["max_grad_norm"] == 5.0
    capsys.readouterr()
    assert cli.main(["eval", "digits", "--checkpoint", str(run / "best.pt")]) == 0
    assert "digits test (scikit-learn digits (8x8)" in capsys.readouterr().out
    ink_on_paper = tmp_path / "seven.png"
    image = Image.new("L", (40, 40), 255)
    image.paste(0, (8, 6, 32, 11))
    image.paste(0, (24, 6, 29, 36))
    image.save(ink_on_paper)
    (tmp_path / "mnist").mkdir()
    idx = fake_mnist(tmp_path / "mnist", n_train=1, n_test=2, compress=False) / "t10k-images-idx3-ubyte"
    assert cli.main(["predict", "digits", "--checkpoint", str(run / "best.pt"), str(ink_on_paper), str(idx)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "seven.png",
        "t10k-images-idx3-ubyte[0]",
        "t10k-images-idx3-ubyte[1]",
    ]
    assert all("(probability 0." in line or "(probability 1.0" in line for line in lines)


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    cases = [
        (["train", "digitz"], "unknown model 'digitz'"),
        (["train", "digits", "--data", str(tmp_path / "nowhere")], "nowhere: no such folder"),
        (["train", "digits", "--data", str(tmp_path)], "train-images-idx3-ubyte: missing"),
        (["eval", "digits", "--checkpoint", str(tmp_path / "none.pt")], "none.pt: no such checkpoint file"),
        (["predict", "digits", "--checkpoint", str(tmp_path / "none.pt"), "x.png"], "no such checkpoint"),
        (["train", "digits", "--max-grad-norm", "0"], "--max-grad-norm must be positive, got 0.0"),
        (["train", "driving-rl", "--gamma", "2"], "--gamma must be in [0, 1], got 2.0"),
        (["train", "driving-rl", "--image-size", "24"], "--image-size must be a multiple of 16, got 24"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["train", "digits", "--device", "cuda"], "--device cuda: no CUDA device"))
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_bench_smoke_writes_results(tmp_path, capsys):
    assert cli.main(["bench", "all", "--out", str(tmp_path)]) == 0
    assert "CPU numbers are not GPU performance" in capsys.readouterr().out
    results = sorted(tmp_path.glob("*/*.json"))
    names = [path.name.split("-")[-1] for path in results]
    assert names == ["attention.json", "conv2d_act.json", "linear_act.json", "lstm.json"]
    for result in results:
        data = json.loads(result.read_text())
        assert {"timestamp", "git_sha", "torch", "gpu"} <= set(data["environment"])
        assert {row["mode"] for row in data["rows"]} == {"fwd", "fwdbwd"}
        for row in data["rows"]:
            assert row["median_ms"] > 0 and row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        op = data["rows"][0]["op"]
        assert result.with_suffix(".md").read_text().count(f"| {op} |") == len(data["rows"])


def test_bench_rejects_unknown_op(capsys):
    assert cli.main(["bench", "conv9d"]) == 2


def test_bench_compare_flags_regressions(tmp_path, capsys):
    from deepfuse.bench.compare import compare_rows

    def row(median, p20, p80, provider="triton"):
        return {
            "op": "linear_act",
            "shape": "8x8x8",
            "mode": "fwd",
            "provider": provider,
            "dtype": "bfloat16",
            "median_ms": median,
            "p20_ms": p20,
            "p80_ms": p80,
        }

    previous = [row(1.0, 0.95, 1.05), row(1.0, 0.95, 1.05, "cuda"), row(1.0, 0.9, 1.1, "torch")]
    current = [row(1.5, 1.4, 1.6), row(0.5, 0.45, 0.55, "cuda"), row(1.04, 0.9, 1.2, "torch")]
    statuses = {c.key[3]: c.status for c in compare_rows(current, previous)}
    assert statuses == {"triton": "REGRESSED", "cuda": "IMPROVED", "torch": "SAME"}
    # noise: a slower median whose spread overlaps the old one is not a regression
    assert compare_rows([row(1.2, 1.0, 1.3)], [row(1.0, 0.9, 1.1)])[0].status == "SAME"

    assert cli.main(["bench", "linear_act", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("*/*.json")
    data = json.loads(result.read_text())
    for r in data["rows"]:
        r["median_ms"] = r["p20_ms"] = r["p80_ms"] = 1e-9  # a previous run that was impossibly fast
    slow_before = tmp_path / "previous.json"
    slow_before.write_text(json.dumps(data))
    capsys.readouterr()
    assert cli.main(["bench", "linear_act", "--out", str(tmp_path), "--compare", str(slow_before)]) == 1
    assert "REGRESSED" in capsys.readouterr().out


def test_bench_and_profile_a_model_on_the_cpu(tmp_path, capsys):
    assert cli.main(["bench", "digits", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("*/*-digits.json")
    rows = json.loads(result.read_text())["rows"]
    # The plain-torch twin (the baseline) and deepfuse's model on its torch backend.
    providers = {"torch_fp32", "deepfuse_torch_fp32"}
    assert {(r["mode"], r["provider"]) for r in rows} == {(m, p) for m in ("fwd", "fwdbwd") for p in providers}
    assert all(r["samples_per_s"] > 0 and r["tflops"] > 0 for r in rows)
    capsys.readouterr()
    assert cli.main(["profile", "digits", "--steps", "1", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "model digits, one training step" in out and "deepfuse::conv2d_act" in out


def test_predict_input_and_out_mistakes_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "digits", "--epochs", "1", "--out", str(run), "--no-progress"]) == 0
    labels = tmp_path / "my-idx3-ubyte"  # a labels file under an images name
    labels.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 4]))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    capsys.readouterr()
    for argv, message in [
        (["predict", "digits", "--checkpoint", str(run / "best.pt"), str(labels)], "expected MNIST images"),
        (["predict", "digits", "--checkpoint", str(run / "best.pt"), "--out", str(a_file), str(labels)], "is a file"),
        (["train", "digits", "--data", str(a_file)], "is a file, not a folder"),
    ]:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err

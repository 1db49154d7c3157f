"""deepfuse.profile: labelled ops, the per-kernel table, the trace and the roofline output."""

import json

import pytest
import torch

import deepfuse
from deepfuse import cli
from deepfuse.profile.labels import parse_label


def test_profile_labels_every_deepfuse_op_with_its_cost(tmp_path):
    layer = deepfuse.nn.FusedLinear(16, 8, activation="gelu")
    x = torch.randn(4, 16, requires_grad=True)

    def step():
        layer(x).sum().backward()

    report = deepfuse.profile(step, steps=2, warmup=1, trace=tmp_path / "trace.json", out_dir=tmp_path)
    labelled = {parse_label(r["name"])["op"]: r for r in report.rows if parse_label(r["name"])}
    assert set(labelled) == {"linear_act_fwd", "linear_act_bwd"}
    fwd = parse_label(labelled["linear_act_fwd"]["name"])
    assert fwd["backend"] == "torch" and fwd["flops"] == 2 * 4 * 8 * 16
    assert labelled["linear_act_fwd"]["calls"] == 2 and labelled["linear_act_fwd"]["tflops"] > 0
    assert report.step_ms > 0
    assert "CPU run" in report.table() and "| kernel | calls |" in report.table()
    assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert (tmp_path / "profile.md").exists() and (tmp_path / "profile-roofline.png").stat().st_size > 0


def test_labels_cost_nothing_when_no_profiler_runs():
    from deepfuse.profile import labels

    assert not labels._profiler_enabled()


def test_profile_cli(tmp_path, capsys):
    assert cli.main(["profile", "conv2d_act", "--steps", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "deepfuse::conv2d_act_fwd[torch]" in out and "deepfuse::conv2d_act_bwd[torch]" in out
    assert cli.main(["profile", "conv9d"]) == 2


def test_backend_auto_is_accepted_like_train_accepts_it(tmp_path, capsys):
    assert cli.main(["profile", "conv2d_act", "--steps", "1", "--backend", "auto", "--out", str(tmp_path)]) == 0
    assert "backend auto" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # argparse: one usage line, exit status 2
        cli.main(["demo", "--backend", "bogus"])
    assert exit_info.value.code == 2

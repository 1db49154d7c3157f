"""--amp auto: bf16 autocast only on a CPU with native bf16, fp32 elsewhere; the run says which on screen and
records the resolved precision, never "auto"; the sentiment Transformer trains with it by default."""

import json

import pytest
import torch

from deepfuse import cli, models
from deepfuse.training import make_config, precision
from deepfuse.training.precision import native_bf16_cpu, resolve_amp
from tests.data.test_imdb import write_imdb

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def native_bf16(monkeypatch):
    """Set whether this CPU 'has' native bf16 (the check torch makes is replaced, not the machine's answer)."""

    def set_to(value: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)

    return set_to


def test_auto_is_bf16_on_a_cpu_with_native_bf16(native_bf16):
    native_bf16(True)
    amp, note = resolve_amp("auto", CPU)
    assert amp == "bf16" and note.startswith("precision: bf16 autocast") and "--amp fp32" in note


def test_auto_stays_fp32_on_a_cpu_without_native_bf16(native_bf16):
    native_bf16(False)
    assert resolve_amp("auto", CPU) == (None, "precision: fp32 (--amp auto: this CPU has no native bf16)")


def test_amx_alone_counts_as_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_bf16_cpu()


def test_a_torch_without_the_checks_means_no_native_bf16(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert not native_bf16_cpu()


def test_auto_on_a_gpu_stays_fp32_whatever_the_cpu(native_bf16):
    native_bf16(True)
    amp, note = resolve_amp("auto", CUDA)
    assert amp is None and "pass --amp bf16" in note


@pytest.mark.parametrize(("given", "runs_with"), [("fp32", None), (None, None), ("bf16", "bf16"), ("fp16", "fp16")])
def test_an_explicit_precision_is_kept_and_says_nothing(given, runs_with):
    assert resolve_amp(given, CPU) == (runs_with, None)


def test_the_sentiment_transformer_defaults_to_auto_and_the_others_to_fp32():
    assert make_config(models.get("sentiment-transformer"))["amp"] == precision.AUTO
    assert make_config(models.get("sentiment-lstm"))["amp"] is None


@pytest.mark.parametrize(("native", "recorded"), [(True, "bf16"), (False, None)])
def test_a_run_says_and_records_the_resolved_precision(tmp_path, capsys, monkeypatch, native_bf16, native, recorded):
    native_bf16(native)
    monkeypatch.setenv("DEEPFUSE_CACHE_DIR", str(tmp_path / "cache"))
    write_imdb(tmp_path)
    tiny = ["--d-model", "16", "--heads", "2", "--ffn-dim", "32", "--vocab-size", "60", "--max-len", "8"]
    argv = ["train", "sentiment-transformer", "--data", str(tmp_path), "--epochs", "1", "--no-progress"]
    assert cli.main([*argv, "--out", str(tmp_path / "run"), "--device", "cpu", *tiny]) == 0
    shown = capsys.readouterr().out
    assert ("precision: bf16 autocast" if native else "precision: fp32 (--amp auto") in shown
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["amp"] == recorded


def test_amp_fp32_turns_the_default_off_and_a_bad_value_is_refused(tmp_path, capsys, native_bf16):
    native_bf16(True)
    write_imdb(tmp_path)
    tiny = ["--d-model", "16", "--heads", "2", "--ffn-dim", "32", "--vocab-size", "60", "--max-len", "8"]
    argv = ["train", "sentiment-transformer", "--data", str(tmp_path), "--epochs", "1", "--no-progress", *tiny]
    assert cli.main([*argv, "--out", str(tmp_path / "run"), "--device", "cpu", "--amp", "fp32"]) == 0
    assert "precision:" not in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["amp"] is None
    with pytest.raises(SystemExit) as refused:
        cli.main([*argv, "--amp", "fp8"])
    assert refused.value.code == 2 and "--amp: invalid choice: 'fp8'" in capsys.readouterr().err

"""deepfuse bench overhead: both sides of every row compute the same thing, and the table is written."""

import json

import torch

from deepfuse import cli
from deepfuse.bench import overhead


def _first(output):
    return output if isinstance(output, torch.Tensor) else output[0]


def test_every_row_compares_like_with_like():
    """The deepfuse call and the torch call of each case agree (same inputs, same weights)."""
    cpu = torch.device("cpu")
    cases = overhead._op_cases("tiny", cpu) + overhead._layer_cases("tiny", cpu)
    assert len(cases) == 13
    for case in cases:
        with torch.no_grad():
            ours, theirs = _first(case.deepfuse(*case.inputs)), _first(case.torch(*case.inputs))
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=case.name)


def test_cli_writes_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(overhead, "ROUNDS", 3)
    monkeypatch.setattr(overhead, "ROUND_S", 0.001)
    assert cli.main(["bench", "overhead", "--quick", "--modes", "fwd", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| linear_act gelu | tiny 8x32->32 | fwd |" in out
    (result,) = tmp_path.glob("cpu/*-overhead.json")
    rows = json.loads(result.read_text())["rows"]
    assert {row["provider"] for row in rows} == {"torch", "deepfuse_torch"}
    assert all(row["median_ms"] > 0 and row["p20_ms"] <= row["p80_ms"] for row in rows)
    assert result.with_suffix(".md").read_text().count("\n| ") == len(rows) // 2 + 1

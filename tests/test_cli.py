"""The command line: the demo trains and matches torch; the benchmark harness runs end to end on a CPU."""

import json

from deepfuse import cli


def test_demo_trains_and_matches_torch(capsys):
    assert cli.main(["demo", "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "largest loss gap" in out and "linear_act: runs on" in out


def test_bench_smoke_writes_results(tmp_path, capsys):
    assert cli.main(["bench", "all", "--out", str(tmp_path)]) == 0
    assert "CPU numbers are not GPU performance" in capsys.readouterr().out
    results = sorted(tmp_path.glob("*/*.json"))
    assert [path.name.split("-")[-1] for path in results] == ["conv2d_act.json", "linear_act.json"]
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

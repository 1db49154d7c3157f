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
        return {"op": "linear_act", "shape": "8x8x8", "mode": "fwd", "provider": provider, "dtype": "bfloat16",
                "median_ms": median, "p20_ms": p20, "p80_ms": p80}  # fmt: skip

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

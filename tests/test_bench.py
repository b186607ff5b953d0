"""bench.py runs at tiny sizes on the CPU, so it cannot rot (its numbers are not checked against goals here)."""
import json

import pytest


@pytest.mark.slow
def test_bench_quick_runs_and_writes_json(tmp_path, cli_here):
    out = tmp_path / "bench.json"
    proc = cli_here("bench", "--device", "cpu", "--quick", "--out", str(out))     # the command line, in this process
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["quick"]
    assert set(result["sections"]) == {"plain", "masked", "sliced", "search", "eval"}
    rows = [r for rows in result["sections"].values() for r in rows]
    assert all(r["seconds"] > 0 for r in rows)
    assert all(r["tflops"] > 0 for r in result["sections"]["masked"] + result["sections"]["sliced"])
    assert "masked Θ step" in proc.stdout and "archs/min" in proc.stdout

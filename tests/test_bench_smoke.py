"""The benchmark harness runs end to end on its one-shape quick grid and writes what it promises.

Nothing here is timed or compared: benchmarks are never assertions (see benchmarks/bench_cpu.py).
"""

import json
import sys
from pathlib import Path

import pytest

from conftest import run_child

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_cpu_quick_writes_json_and_table(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_cpu.py"), "--quick", "--threads", "1",
           "--out", str(tmp_path), "--name", "smoke"]
    run_child(cmd, timeout=120)
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["threads"] == 1 and result["torch_threads"] == 1
    assert result["machine"]["numpy"] and result["sgemm"]["median_gflops"] > 0
    assert {(r["cell"], r["mode"]) for r in result["rows"]} == {("lstm", "forward"), ("lstm", "train")}
    for row in result["rows"]:
        assert row["gpurnn_ms"] > 0 and row["torch_ms"] > 0
        assert row["speedup"] == pytest.approx(row["torch_ms"] / row["gpurnn_ms"])
        assert row["flops"] > 0 and row["pct_sgemm"] > 0
    (bridge,) = result["bridge_rows"]
    assert min(bridge[k] for k in ("model_ms", "torch_model_ms", "bridge_ms", "layer_ms")) > 0
    assert bridge["speedup"] == pytest.approx(bridge["torch_model_ms"] / bridge["model_ms"])
    assert bridge["overhead_ms"] == pytest.approx(bridge["bridge_ms"] - bridge["layer_ms"])
    table = (tmp_path / "smoke.md").read_text()
    assert "| lstm | tiny 5·2·3·4 | train |" in table
    assert "| tiny 5·2·3·4 |" in table.split("through gpurnn.torch", 1)[1]

"""benchmarks/gpu_suite.py --sim: the GPU suite's plumbing (tests step, timing, agreement check,
JSON and markdown) runs in the CUDA simulator on one tiny shape. No figure it writes means anything."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_sim_plumbing(tmp_path):
    pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--sim", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (js,) = tmp_path.glob("*-simulator.json")
    (md,) = tmp_path.glob("*-simulator.md")
    result = json.loads(js.read_text())
    assert "passed" in result["tests"]
    assert {(r["cell"], r["mode"]) for r in result["rows"]} == {
        (c, m) for c in ("rnn_tanh", "lstm", "gru") for m in ("forward", "train")}
    for r in result["rows"]:
        assert r["forward_max_abs_diff"] < 1e-5, r       # the cuda backend agrees with torch
        assert r["gpurnn_ms"] > 0 and r["torch_ms"] > 0, r
    assert "plumbing only" in md.read_text()

"""benchmarks/device_run.sh --sim: the one-call GPU run, every step, on tiny shapes in the CUDA
simulator; and the benchmark's budget and plan. No figure written here means anything: the
simulator's times are meaningless, and benchmarks are never assertions."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu  # noqa: E402

needs_bash = pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")


def _only(folder, suffix):
    (path,) = folder.glob(f"*-simulator-{suffix}")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d-simulator-" + re.escape(suffix), path.name), path.name
    return path


@pytest.mark.slow
@needs_bash
def test_device_run_sim(tmp_path):
    """Every step runs and leaves its file, named with the date and the GPU, in $OUT."""
    pytest.importorskip("torch")
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_run.sh"), "--sim"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "every step succeeded" in out
    names = sorted(p.name.split("-simulator-")[1] for p in tmp_path.iterdir())
    assert names == ["bench.json", "bench.md", "calibrate.json", "env.txt", "ncu.txt", "run.log", "tests.log"]

    # The calibration ran first, every kernel once on tiny grids, each checking what it computed.
    calibration = _only(tmp_path, "calibrate.json")
    cal = json.loads(calibration.read_text())
    assert cal["simulated"] is True and cal["machine"]["gpu"] == "simulator"
    for key in ("grid_sync", "flag_exchange", "tagged_exchange"):
        fig = cal[key]
        assert fig["unit"] == "us" and fig["simulated"] is True, fig
        assert [r["blocks"] for r in fig["rows"]] == [2, 3], fig
        assert all(r["checked"] and r["us"] > 0 and r["cycles"] > 0 for r in fig["rows"]), fig
    l2 = cal["l2_round_trip"]
    assert l2["unit"] == "ns" and l2["checked"] and l2["ns"] > 0 and l2["cycles"] > 0 and l2["simulated"], l2
    reg = cal["register_array"]
    assert reg["unit"] == "TFLOP/s" and reg["checked"] and reg["floats"] == 128 and reg["simulated"], reg
    assert {"registers", "local_bytes", "in_registers", "fma_per_sm_cycle"} <= set(reg), reg

    env_report = _only(tmp_path, "env.txt").read_text()
    for key in ("numba", "numba-cuda", "torch", "numpy", "cuda-core", "cuda-bindings", "NVVM found",
                "CUDA_HOME", "gpu (name, driver, compute capability, memory)"):
        assert re.search(rf"^{re.escape(key)}: \S", env_report, re.M), key
    assert "gpurnn.cuda_status(): (True, 'Numba CUDA simulator" in env_report
    # The install fallback ran: gpurnn imported through the links, not from the environment.
    link = re.search(r"^install: fallback, (\S+) on PYTHONPATH", env_report, re.M)
    assert link, env_report
    assert f"gpurnn: 0.1.0 from {link.group(1)}/gpurnn" in env_report

    tests = _only(tmp_path, "tests.log").read_text()
    assert f"gpurnn from {link.group(1)}/gpurnn" in tests       # the tests ran on what was installed
    # one case a cell, dtype and algorithm, and launch_config: 4 x 2 x 3 + 1
    assert re.search(r"\b25 passed\b", tests) and not re.search(r"\b(failed|error)\b", tests), tests[-3000:]

    result = json.loads(_only(tmp_path, "bench.json").read_text())
    assert result["tests"].startswith("25 passed")
    assert result["calibration"] == calibration.name
    assert result["machine"]["gpu"] == "simulator" and result["machine"]["toolchain"].startswith("numba-cuda")
    lo = result["launch_overhead"]
    for key in ("empty_kernel_host_us", "step_forward_host_us", "cupy_elementwise_host_us"):
        assert lo[key] > 0, key
    shapes = ((1, 2), (5, 2), (2, 5))
    assert sorted((r["cell"], r["mode"], r["B"], r["H"]) for r in result["rows"]) == sorted(
        (c, m, B, H) for c in ("rnn_tanh", "lstm", "gru") for m in ("forward", "train") for B, H in shapes)
    grids = {(1, 2): "1 groups x 1 slices = 1 blocks", (5, 2): "3 groups x 1 slices = 3 blocks",
             (2, 5): "1 groups x 3 slices = 3 blocks"}
    for r in result["rows"]:
        assert r["forward_max_abs_diff"] < 1e-5, r       # the cuda backend agrees with torch
        # auto on the simulator's modelled GPU: the persistent path at each of its grid shapes
        assert r["gpurnn_ms"] > 0 and r["torch_ms"] > 0 and r["algo"] == "persistent", r
        assert r["plan"].startswith(f"persistent ({grids[r['B'], r['H']]}"), r
        # counted, not computed: one forward launch; one backward launch and one reduction
        assert r["numba_launches"] == (1 if r["mode"] == "forward" else 3), r
    assert result["skipped"] == [] and result["not_reached"] == []
    # The pieces against a peer in the same run: the accumulation kernel against CuPy's matmul, and
    # the per-step path with CUDA graphs and without.
    (acc,) = result["accumulate"]
    assert (acc["N"], acc["GH"]) == (6, 20) and acc["gpurnn_ms"] > 0 and acc["cupy_ms"] > 0, acc
    assert acc["share_of_cublas"] == pytest.approx(acc["cupy_ms"] / acc["gpurnn_ms"])
    assert [(g["mode"], g["T"], g["B"], g["H"]) for g in result["graphs"]] == [("forward", 3, 2, 5), ("train", 3, 2, 5)]
    assert all(g["graphs_ms"] > 0 and g["direct_ms"] > 0 for g in result["graphs"])
    md = _only(tmp_path, "bench.md").read_text()
    assert "## The accumulation kernel against cuBLAS" in md and "## CUDA graphs on the per-step path" in md
    assert "plumbing only" in md and "## Launch overhead" in md
    assert "| lstm | train | 3 | 2 | 5 | persistent | 3 |" in md
    assert ("ran one step_forward (LSTM B=2 H=5), then a persistent training step (T=2): "
            "persistent (1 groups x 3 slices = 3 blocks") in _only(tmp_path, "ncu.txt").read_text()
    run_log = _only(tmp_path, "run.log").read_text()
    assert "== 1. calibration" in run_log and "== 6. ncu" in run_log
    assert f"calibration figures: {calibration}" in run_log


@needs_bash
def test_device_run_refuses_unknown_options():
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_run.sh"), "--fast"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown option '--fast'" in proc.stderr
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_run.sh"), "--budget", "soon"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--budget takes whole seconds, got 'soon'" in proc.stderr


@pytest.mark.slow
def test_bench_budget_skips_and_lists_what_it_cannot_fit(tmp_path):
    """With no time, no row runs: each is listed as skipped, with its estimate, in JSON and markdown."""
    pytest.importorskip("torch")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--sim", "--budget", "0",
                           "--out", str(tmp_path), "--name", "b"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["rows"] == [] and result["not_reached"] == []
    assert sorted((s["cell"], s["T"], s["B"], s["H"]) for s in result["skipped"]) == sorted(
        (c, 3, B, H) for c in ("rnn_tanh", "gru", "lstm") for B, H in ((1, 2), (5, 2), (2, 5)))
    assert all(s["estimate_s"] > 0 for s in result["skipped"])
    md = (tmp_path / "b.md").read_text()
    assert "Skipped, as they would have overrun the budget: " in md and "rnn_tanh T=3 B=1 H=2" in md


def test_bench_plan_runs_cheapest_rows_first():
    cases = bench_gpu.plan(bench_gpu.GRID, bench_gpu.MEASURED_CELLS, 5, 5)
    assert len(cases) == len(bench_gpu.GRID) * len(bench_gpu.MEASURED_CELLS) == len(set(cases))
    cost = [bench_gpu.case_seconds(*c, 5, 5) for c in cases]
    assert cost == sorted(cost)
    # The napkin model itself: more steps, wider layers and bigger batches never cost less.
    e = bench_gpu.estimate
    for side in (0, 1):
        assert (e("lstm", "train", 512, 64, 1024)[side] > e("lstm", "train", 128, 64, 1024)[side]
                > e("lstm", "forward", 128, 64, 1024)[side] > e("rnn_tanh", "forward", 128, 64, 1024)[side])
        assert e("lstm", "train", 128, 256, 1024)[side] > e("lstm", "train", 128, 1, 1024)[side]
    assert bench_gpu.reps_for(1.0, 5) == 1 and bench_gpu.reps_for(1e-4, 5) == 5

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


def bench_cpu_quick(folder, *options):
    """bench_cpu.py --quick on one thread, writing smoke.json and smoke.md into ``folder``; the JSON."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_cpu.py"), "--quick", "--threads", "1",
           "--out", str(folder), "--name", "smoke", *options]
    run_child(cmd, timeout=180)
    return json.loads((folder / "smoke.json").read_text())


@pytest.fixture(scope="module")
def quick_apart(tmp_path_factory):
    """One quick run in the default mode, shared by the tests that read it: (its JSON, its folder)."""
    folder = tmp_path_factory.mktemp("bench_cpu")
    return bench_cpu_quick(folder), folder


@pytest.mark.slow
def test_bench_cpu_quick_writes_json_and_table(quick_apart):
    result, folder = quick_apart
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
    table = (folder / "smoke.md").read_text()
    assert "| lstm | tiny 5·2·3·4 | train |" in table
    assert "| tiny 5·2·3·4 |" in table.split("through gpurnn.torch", 1)[1]


@pytest.mark.slow
def test_bench_cpu_runs_each_side_in_its_own_process(quick_apart):
    """The default mode, apart: gpurnn, torch and the BLAS floor of a row each ran in a child
    process of their own (three process ids, none the parent's), every side's samples came back,
    round by round, and each child ran on the thread count asked for; through gpurnn.torch, the
    gpurnn.torch model and the torch.nn model ran apart, the bridge and the layer in the first's
    process."""
    result, folder = quick_apart
    assert result["mode"] == "apart" and result["rounds"] == 2
    for row in result["rows"]:
        pids = {side: p["pid"] for side, p in row["processes"].items()}
        assert set(pids) == {"gpurnn", "torch", "blas"}
        assert len(set(pids.values()) | {result["pid"]}) == 4, pids
        for side in ("gpurnn", "torch", "blas_floor"):
            assert len(row[f"{side}_samples_ms"]) == result["rounds"] * result["reps"]
            lo, hi = row[f"{side}_spread_ms"]
            assert 0 < lo <= hi
        assert row["processes"]["gpurnn"]["threads"]["numba"] == 1
        assert row["processes"]["torch"]["threads"]["torch"] == 1
        assert all(n == 1 for p in row["processes"].values() for n in p["threads"]["pools"].values())
    (bridge,) = result["bridge_rows"]
    pids = {side: p["pid"] for side, p in bridge["processes"].items()}
    assert pids["gpurnn.torch model"] == pids["gpurnn.torch"] == pids["gpurnn"]
    assert len({pids["gpurnn.torch model"], pids["torch.nn model"], result["pid"]}) == 3
    assert all(len(s) == result["rounds"] * result["reps"] for s in bridge["samples_ms"].values())
    assert "each side in its own process, 1 thread, medians of 2 alternating rounds of 2 calls" in \
        (folder / "smoke.md").read_text()


@pytest.mark.slow
def test_bench_cpu_interleaved_mode_runs_both_sides_in_one_process(tmp_path):
    result = bench_cpu_quick(tmp_path, "--mode", "interleaved", "--no-bridge")
    assert result["mode"] == "interleaved" and "bridge_rows" not in result
    for row in result["rows"]:
        assert {p["pid"] for p in row["processes"].values()} == {result["pid"]}
        assert row["gpurnn_ms"] > 0 and row["torch_ms"] > 0 and row["blas_floor_ms"] > 0
    assert "both sides in one process" in (tmp_path / "smoke.md").read_text()


@pytest.mark.slow
def test_bench_gpu_sim_measures_every_torch_side_and_the_host_time(tmp_path):
    """bench_gpu.py --sim: each row carries torch's side of record, the three anchors (torch's
    defaults, autocast fp16, autocast bf16) and gpurnn's host time, in the JSON and in the table.
    The simulator's torch runs on the CPU: TF32 changes nothing there, and its CPU autocast casts
    some cells and refuses others, so an anchor either ran, with y's dtype and agreement, or names
    the error torch raised; nothing is left blank."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_gpu
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--sim", "--out", str(tmp_path), "--name", "g"]
    run_child(cmd, timeout=300)
    result = json.loads((tmp_path / "g.json").read_text())
    sides = result["torch_sides"]["sides"]
    assert {k: s["label"] for k, s in sides.items()} == {
        "torch": "torch fp32 (TF32 off)", "torch_default": "torch default (TF32 on)",
        "torch_autocast_fp16": "torch autocast fp16", "torch_autocast_bf16": "torch autocast bf16"}
    assert [k for k, s in sides.items() if s["ratio_of_record"]] == ["torch"]
    assert (sides["torch"]["cudnn_allow_tf32"], sides["torch_default"]["cudnn_allow_tf32"]) == (False, True)
    assert not any(s["matmul_allow_tf32"] for s in sides.values())      # torch's default for cuBLAS
    assert [s["autocast"] for s in sides.values()] == [None, None, "float16", "bfloat16"]
    assert all(s["device"] == "cpu" for s in sides.values()) and "CPU" in result["torch_sides"]["note"]
    assert result["machine"]["torch_tf32_at_start"] == dict(cudnn_allow_tf32=True, matmul_allow_tf32=False)
    assert "cannot tell" in result["host_time"]

    rows = result["rows"]
    assert len(rows) == 18
    lowered = 0
    for r in rows:
        # The ratio of record, and torch's defaults: float32 on the CPU, so the same y as gpurnn's.
        assert r["torch_ms"] > 0 and r["ratio"] == pytest.approx(r["torch_ms"] / r["gpurnn_ms"])
        assert r["torch_default_ms"] > 0 and r["torch_default_y_dtype"] == "float32", r
        assert r["torch_default_max_abs_diff"] < 1e-5, r
        for side in bench_gpu.ANCHORS:
            ms, ratio = r[f"{side}_ms"], r[f"{side}_ratio"]
            if ms is None:
                assert ratio is None and r[f"{side}_error"].startswith("RuntimeError"), r
            else:
                assert ms > 0 and ratio == pytest.approx(ms / r["gpurnn_ms"]) and f"{side}_error" not in r, r
                assert r[f"{side}_y_dtype"] in ("float32", "float16", "bfloat16"), r
                lowered += r[f"{side}_y_dtype"] != "float32"
                # a lower-precision y still agrees with gpurnn's float32 one to its precision
                assert r[f"{side}_max_abs_diff"] < 0.05, r
        # The host time: the whole call per time step in the simulator, which cannot tell a sync.
        assert r["host_synced"] is None and r["host_call_ms"] > 0, r
        assert r["host_us_per_step"] == pytest.approx(1e3 * r["host_call_ms"] / r["T"]), r
    assert lowered > 0          # autocast really ran some cell in float16 or bfloat16

    table = (tmp_path / "g.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| cell | mode |"))
    for column in ("gpurnn ms", "torch fp32 (TF32 off) ms", "torch/gpurnn",
                   "torch default (TF32 on) ms (torch/gpurnn)", "torch autocast fp16 ms (torch/gpurnn)",
                   "torch autocast bf16 ms (torch/gpurnn)", "host µs/step"):
        assert f"| {column} |" in header, column
    assert "the ratio of record is torch fp32 (TF32 off)" in table
    # the accumulation kernel at an RNN's G·H and an LSTM's, as on the GPU (G·H = 256 and more)
    assert [(a["cell"], a["GH"]) for a in result["accumulate"]] == [("rnn_tanh", 5), ("lstm", 20)]
    assert "| rnn_tanh | 3 | 2 | 5 | 6 | 5 |" in table


@pytest.mark.slow
def test_bench_gpu_sim_half_rows_on_tensor_cores_name_their_autocast_peer(tmp_path):
    """bench_gpu.py --sim --dtype bfloat16 --tensor-cores (one run for both options, the simulator
    being slow): gpurnn's layers run in bfloat16 with their weight gradients on tensor cores, every
    row names torch under bfloat16 autocast as its peer, with that side's ratio; the float32
    pieces are left out. (A float32 run's peer with --tensor-cores, torch's defaults:
    tests/test_device_run.py's peer_side test.)"""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--sim", "--dtype", "bfloat16",
           "--tensor-cores", "--out", str(tmp_path), "--name", "h"]
    run_child(cmd, timeout=300)
    result = json.loads((tmp_path / "h.json").read_text())
    assert result["dtype"] == "bfloat16" and result["tensor_cores"] is True
    assert "accumulate" not in result and "graphs" not in result
    rows = result["rows"]
    assert len(rows) == 18
    for r in rows:
        assert r["dtype"] == "bfloat16" and r["peer"] == "torch_autocast_bf16", r
        assert r["peer_ratio"] == r["torch_autocast_bf16_ratio"], r
        assert r["forward_max_abs_diff"] < 0.05, r        # bfloat16 against torch's float32: to its precision
    assert any(r["peer_ratio"] is not None for r in rows)
    table = (tmp_path / "h.md").read_text()
    assert "computes in bfloat16 here: its peer is the torch autocast bf16 column" in table
    assert "weight gradients run on tensor cores here (bfloat16)" in table


@pytest.mark.slow
def test_bench_bridge_runs_both_sides_in_their_own_processes(tmp_path):
    """bench_bridge.py on a tiny model: each side's child trains on the same characters (the same
    first loss), and the configuration records a ratio per patch."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_bridge.py"), "--threads", "1", "--load", "0",
           "--patch", "none", "numpy-products", "--rounds", "1", "--steps", "1", "--warmup", "1",
           "--hidden", "8", "--embed", "4", "--layers", "1", "--batch", "2", "--seq", "3", "--quiet-wait", "0",
           "--out", str(tmp_path), "--name", "b"]
    run_child(cmd, timeout=240)
    result = json.loads((tmp_path / "b.json").read_text())
    (config,) = result["configs"]
    assert (config["load"], config["threads"]) == (0, 1) and config["torch_ms"] > 0
    for patch in ("none", "numpy-products"):
        side = config["gpurnn"][patch]
        assert side["ratio"] == pytest.approx(side["median_ms"] / config["torch_ms"])
    losses = {run["patch"]: run["losses"][0] for run in result["runs"]}
    assert len(losses) == 3 and max(losses.values()) - min(losses.values()) < 1e-5

"""benchmarks/device_run.sh --sim: the one-call GPU run, every step, on tiny shapes in the CUDA
simulator; and the benchmark's budget and plan. No figure written here means anything: the
simulator's times are meaningless, and benchmarks are never assertions."""

import importlib.util
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
    assert names == ["bench-float16.json", "bench-float16.md", "bench.json", "bench.md", "calibrate.json", "env.txt",
                     "ncu.txt", "run.log", "tests.log"]

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
    # one case a cell, dtype and algorithm, and launch_config: 4 x 2 x 3 + 1; a half-precision
    # forward a cell, algorithm (step, persistent) and format (tests/test_half_cuda.py): 4 x 2 x 2
    assert re.search(r"\b41 passed\b", tests) and not re.search(r"\b(failed|error)\b", tests), tests[-3000:]

    result = json.loads(_only(tmp_path, "bench.json").read_text())
    assert result["tests"].startswith("41 passed")
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
        # every torch side and gpurnn's host time, in each row (tests/test_bench_smoke.py checks their values)
        assert {f"{side}_{key}" for side in bench_gpu.ANCHORS for key in ("ms", "ratio", "y_dtype")} <= set(r), r
        assert r["host_us_per_step"] > 0 and r["host_synced"] is None, r      # the simulator cannot tell
    assert result["skipped"] == [] and result["not_reached"] == []
    # The pieces against a peer in the same run: the accumulation kernel against CuPy's matmul, and
    # the per-step path with CUDA graphs and without.
    assert [(a["cell"], a["N"], a["GH"]) for a in result["accumulate"]] == [("rnn_tanh", 6, 5), ("lstm", 6, 20)]
    for acc in result["accumulate"]:
        assert acc["gpurnn_ms"] > 0 and acc["cupy_ms"] > 0, acc
        assert acc["share_of_cublas"] == pytest.approx(acc["cupy_ms"] / acc["gpurnn_ms"])
    assert [(g["mode"], g["T"], g["B"], g["H"]) for g in result["graphs"]] == [("forward", 3, 2, 5), ("train", 3, 2, 5)]
    assert all(g["graphs_ms"] > 0 and g["direct_ms"] > 0 for g in result["graphs"])
    md = _only(tmp_path, "bench.md").read_text()
    assert "## The accumulation kernel against cuBLAS" in md and "## CUDA graphs on the per-step path" in md
    assert "plumbing only" in md and "## Launch overhead" in md
    assert "| lstm | train | 3 | 2 | 5 | persistent | 3 |" in md
    assert ("| torch fp32 (TF32 off) ms | torch/gpurnn | torch default (TF32 on) ms (torch/gpurnn) | "
            "torch autocast fp16 ms (torch/gpurnn) | torch autocast bf16 ms (torch/gpurnn) | host µs/step |") in md
    assert ("ran one step_forward (LSTM B=2 H=5), then a persistent training step (T=2): "
            "persistent (1 groups x 3 slices = 3 blocks") in _only(tmp_path, "ncu.txt").read_text()
    # then gpurnn's float16 layers against torch.nn under float16 autocast (CPU autocast here)
    half = json.loads(_only(tmp_path, "bench-float16.json").read_text())
    assert half["dtype"] == "float16" and len(half["rows"]) == len(result["rows"])
    assert all(r["dtype"] == "float16" and r["peer"] == "torch_autocast_fp16" for r in half["rows"])
    run_log = _only(tmp_path, "run.log").read_text()
    assert "== 1. calibration" in run_log and "== 5b. float16 benchmark" in run_log and "== 6. ncu" in run_log
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


def test_bench_peer_side():
    """The torch side each gpurnn configuration is compared with: the same math for float32, torch's
    defaults (TF32 on) for float32 on tensor cores, torch under autocast for a half format."""
    assert bench_gpu.peer_side("float32") == "torch"
    assert bench_gpu.peer_side("float32", tensor_cores=True) == "torch_default"
    assert bench_gpu.peer_side("bfloat16", tensor_cores=True) == "torch_autocast_bf16"
    assert bench_gpu.peer_side("float16") == "torch_autocast_fp16"


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


# ---------------------------------------------------------------- torch's sides, the host time, old results
H200 = ROOT / "benchmarks" / "results" / "2026-11-27-nvidia-h200-bench.json"


def load_docs_build():
    spec = importlib.util.spec_from_file_location("gpurnn_docs_build_for_bench", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_tf32_sets_the_switches_and_restores_them_even_on_error():
    torch = pytest.importorskip("torch")
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    before = tuple(f.allow_tf32 for f in flags)
    try:
        for cudnn, matmul in ((True, False), (False, True), (False, False)):
            with bench_gpu.torch_tf32(cudnn, matmul):
                assert tuple(f.allow_tf32 for f in flags) == (cudnn, matmul)
            assert tuple(f.allow_tf32 for f in flags) == before
        with pytest.raises(KeyError, match="raised inside"):
            with bench_gpu.torch_tf32(not before[0], not before[1]):
                raise KeyError("raised inside")
        assert tuple(f.allow_tf32 for f in flags) == before
    finally:
        for f, value in zip(flags, before):
            f.allow_tf32 = value


def test_interleaved_sets_each_sides_settings_around_its_own_calls_only():
    """A side's settings are entered around each of its blocks and left before the next side's:
    the anchors' TF32 switches never leak into gpurnn's or the record's calls."""
    state, seen = [], []

    def settings(name):
        class Settings:
            def __enter__(self):
                state.append(name)

            def __exit__(self, *exc):
                state.pop()
        return Settings

    def call(name):
        return lambda: seen.append((name, tuple(state)))

    def timer(fn):
        fn()
        return 1.0

    times = bench_gpu.interleaved({"gpurnn": (timer, call("gpurnn")), "torch": (timer, call("torch"), settings("off")),
                                   "torch_default": (timer, call("torch_default"), settings("on"))}, 2, 3)
    assert {n: len(t) for n, t in times.items()} == {"gpurnn": 6, "torch": 6, "torch_default": 6}
    assert set(seen) == {("gpurnn", ()), ("torch", ("off",)), ("torch_default", ("on",))}
    assert state == []
    # blocks of 3, the order reversed in the second round
    assert [n for n, _ in seen[::3]] == ["gpurnn", "torch", "torch_default", "torch_default", "torch", "gpurnn"]


def test_host_time_in_the_simulator_is_the_whole_call_and_cannot_tell_a_sync():
    import time
    host = bench_gpu.host_time(lambda: time.sleep(0.01), 4, sim=True, reps=3)
    assert host["host_synced"] is None
    assert host["host_call_ms"] >= 10 and host["host_us_per_step"] == pytest.approx(1e3 * host["host_call_ms"] / 4)


def test_a_row_shows_each_torch_side_or_why_not():
    row = dict(gpurnn_ms=2.0, torch_default_ms=1.0, torch_default_ratio=0.5, torch_default_y_dtype="float32",
               torch_autocast_fp16_ms=0.5, torch_autocast_fp16_ratio=0.25, torch_autocast_fp16_y_dtype="float32",
               torch_autocast_bf16_ms=None, torch_autocast_bf16_ratio=None,
               torch_autocast_bf16_error="RuntimeError: no", host_us_per_step=12.34, host_synced=False)
    assert bench_gpu.anchor_cell(row, "torch_default") == "1.000 (0.50)"
    assert bench_gpu.anchor_cell(row, "torch_autocast_fp16") == "0.500 (0.25), y float32"   # autocast did not cast
    assert bench_gpu.anchor_cell(row, "torch_autocast_bf16") == "n/a"
    assert bench_gpu.host_cell(row) == "12.3"
    assert bench_gpu.host_cell(dict(row, host_us_per_step=None, host_synced=True)) == "synced"
    assert bench_gpu.anchor_cell({}, "torch_default") == bench_gpu.host_cell({}) == "—"


def test_results_from_before_the_anchors_still_render():
    """The H200 run predates the anchors, the host time and the accumulation rows' cell: the
    benchmark's own table and the docs show them as not measured."""
    old = json.loads(H200.read_text())
    assert "torch_default_ms" not in old["rows"][0] and "cell" not in old["accumulate"][0]
    md = bench_gpu.markdown(old)
    row = next(line for line in md.splitlines() if line.startswith("| rnn_tanh | forward | 32 | 64 | 256 |"))
    assert row.count(" — |") == len(bench_gpu.ANCHORS) + 1, row
    assert "| lstm | 128 | 64 | 256 | 8192 | 1024 |" in md          # an accumulation row without a cell: an LSTM

    build = load_docs_build()
    summary = build.gpu_summary(build.Sources())
    assert ("| cell | shapes | torch fp32 (TF32 off): median | best | worst | torch default (TF32 on): median | "
            "torch autocast fp16: median | torch autocast bf16: median | host µs/step: median |") in summary
    assert "| lstm | 16 | 0.14 | 1.18 (T·B·H 128·1·256) | 0.01 (T·B·H 128·256·64) | — | — | — | — |" in summary
    assert ("did not measure the columns marked —: torch default (TF32 on), torch autocast fp16, "
            "torch autocast bf16 and host µs/step") in summary


def test_the_docs_show_the_anchors_and_host_time_of_a_run_that_measured_them(tmp_path):
    data = json.loads(H200.read_text())
    for r in data["rows"]:
        for i, side in enumerate(bench_gpu.ANCHORS):
            r[f"{side}_ms"] = r["torch_ms"] / (i + 2)
            r[f"{side}_ratio"] = r[f"{side}_ms"] / r["gpurnn_ms"]
        r["torch_autocast_bf16_ms"] = r["torch_autocast_bf16_ratio"] = None     # torch refused it everywhere
        r["host_us_per_step"], r["host_synced"] = 25.0, False
    synced = next(r for r in data["rows"] if r["mode"] == "train" and r["cell"] == "gru")
    synced["host_us_per_step"], synced["host_synced"] = None, True
    for a in data["accumulate"]:
        a["cell"] = "lstm"
    data["accumulate"].insert(0, dict(data["accumulate"][0], cell="rnn_tanh", GH=256))
    (tmp_path / H200.name).write_text(json.dumps(data))

    build = load_docs_build()
    assert build.RECORD == bench_gpu.TORCH_SIDES["torch"][0]
    assert build.ANCHORS == {side: bench_gpu.TORCH_SIDES[side][0] for side in bench_gpu.ANCHORS}
    src = build.Sources(results=tmp_path)
    summary = build.gpu_summary(src)
    lstm = [r for r in data["rows"] if r["mode"] == "train" and r["cell"] == "lstm"]
    median = float(build.np.median([r["torch_default_ratio"] for r in lstm]))
    assert f"| lstm | 16 | 0.14 | 1.18 (T·B·H 128·1·256) | 0.01 (T·B·H 128·256·64) | {median:.2f} |" in summary
    assert summary.count("| n/a | 25.0 |") == 3              # bf16 refused in every row; host µs/step
    assert "did not measure" not in summary and "In 1 rows gpurnn's call waited for the device" in summary
    acc = build.accumulate_table(src)
    assert "| rnn_tanh | 128 | 64 | 256 | 8192 | 256 |" in acc and "| lstm | 128 | 64 | 256 | 8192 | 1024 |" in acc

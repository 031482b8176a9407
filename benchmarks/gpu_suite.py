"""The one command for a machine with an NVIDIA GPU: the tests, then gpurnn's cuda backend against
torch.nn.RNN/LSTM/GRU (cuDNN) on the same GPU.

    python benchmarks/gpu_suite.py              # tests, then the grid; writes benchmarks/results/<date>-<gpu>.json/.md
    python benchmarks/gpu_suite.py --quick      # tests, then a few shapes
    python benchmarks/gpu_suite.py --sim        # the plumbing only, in the CUDA simulator on tiny shapes
                                                # (no GPU needed; times are meaningless and go to a temp folder)

Check first, benchmark second: the suite runs ``pytest`` first (on a GPU every cuda case of the test
suite runs for real) and stops if a test fails.

What is timed, per cell and shape (T, B, I = H, H), float32 (TF32 off for torch), one layer, one direction:
    forward  ``y = m(x)`` with everything backward needs saved (torch: autograd enabled)
    train    zero the grads, forward, backward of a fixed dy (weight gradients and dx)
FLOPs are the dense products only: forward 2·T·B·G·H·(I + H); train 3 x forward.
Timing: CUDA events around each call (CuPy's for gpurnn, torch's for torch, both on the legacy
default stream), synchronised after each call; every row is warmed up first (kernels compiled,
cuDNN plans chosen), then ``--rounds`` rounds alternate a block of ``--reps`` calls of each side,
the order swapping every round. Reported: medians, and the ratio torch / gpurnn (> 1: gpurnn faster).
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
CELLS = ("rnn_tanh", "lstm", "gru")

# (T, B, H): batch sweep at T = 128 for three widths, then a sequence-length sweep.
GRID = ([(128, B, H) for H in (64, 256, 1024) for B in (1, 16, 64, 256)]
        + [(T, 64, H) for H in (256, 1024) for T in (32, 512)])
QUICK_GRID = [(32, 16, 64), (128, 64, 256), (128, 256, 1024)]
SIM_GRID = [(3, 2, 5)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sim", action="store_true", help="plumbing check in the CUDA simulator (no GPU)")
    p.add_argument("--quick", action="store_true", help="three shapes instead of the grid")
    p.add_argument("--skip-tests", action="store_true", help="benchmark without running pytest first")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per row (default 5; sim 1)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per side per round (default 5; sim 1)")
    p.add_argument("--geometry", default=None, metavar="H,B,AT,R,K",
                   help="block geometry of the cuda kernels (kernels.cuda.Geometry: step_h, step_b, "
                        "acc_threads, acc_regs, acc_k), to sweep it; step_h*step_b <= 1024 threads and "
                        "the LSTM's float32 W tile (4*step_h*(step_h+1)*4 bytes) within 48 KiB")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the JSON and markdown (default benchmarks/results; sim: a temp folder)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- tests
def run_tests(sim):
    """pytest in a child process; returns (passed, summary line)."""
    env = dict(os.environ)
    if sim:  # the plumbing: one cheap cuda test in the simulator
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/test_cuda_kernels.py", "-k", "launch_config"]
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    summary = lines[-1].strip("= ") if lines else proc.stdout[-500:]
    ok = proc.returncode == 0 and "passed" in summary
    if not ok:
        sys.stdout.write(proc.stdout[-8000:] + proc.stderr[-4000:])
    return ok, summary


# ---------------------------------------------------------------- timing
class Timer:
    """Times one call: CUDA events of the library that runs it, or the host clock in the simulator."""

    def __init__(self, kind):
        self.kind = kind

    def __call__(self, fn):
        if self.kind == "cupy":
            import cupy
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return cupy.cuda.get_elapsed_time(start, end) * 1e-3
        if self.kind == "torch":
            import torch
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def interleaved(sides, rounds, reps):
    """{name: [seconds...]} for sides = {name: (timer, fn)}: blocks of reps calls, order alternating."""
    names = list(sides)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            timer, fn = sides[n]
            for _ in range(reps):
                times[n].append(timer(fn))
    return times


def median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


# ---------------------------------------------------------------- one row
def build_pair(cell, T, B, H, sim):
    """gpurnn (cuda backend) and torch models with the same weights, inputs on their devices."""
    import numpy as np
    import torch

    import gpurnn
    I = H
    device = "cpu" if sim else "cuda"
    # Full float32 on both sides: gpurnn's kernels use no TF32, so cuDNN may not either.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    if cell.startswith("rnn_"):
        peer = torch.nn.RNN(I, H, nonlinearity=cell[4:])
        ours = gpurnn.RNN(I, H, nonlinearity=cell[4:], backend="cuda")
    else:
        peer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H)
        ours = {"lstm": gpurnn.LSTM, "gru": gpurnn.GRU}[cell](I, H, backend="cuda")
    ours.load_state_dict({k: v.detach().numpy() for k, v in peer.state_dict().items()})
    peer = peer.to(device)
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((T, B, I)).astype(np.float32)
    dy_host = rng.standard_normal((T, B, H)).astype(np.float32)
    xp = ours.backend.xp
    x, dy = xp.asarray(x_host), xp.asarray(dy_host)
    tx = torch.from_numpy(x_host).to(device).requires_grad_(True)
    tdy = torch.from_numpy(dy_host).to(device)

    def ours_forward():
        ours(x)

    def ours_train():
        ours.zero_grad()
        ours(x)
        ours.backward(dy)

    def peer_forward():
        peer(tx)

    def peer_train():
        peer.zero_grad(set_to_none=False)
        tx.grad = None
        y, _ = peer(tx)
        y.backward(tdy)

    # Agreement on this very shape: a benchmark of wrong numbers is worth nothing.
    y_ours = ours(x)[0]
    y_ours = y_ours.get() if hasattr(y_ours, "get") else np.asarray(y_ours)
    with torch.no_grad():
        y_peer = peer(tx)[0].cpu().numpy()
    max_err = float(np.abs(y_ours - y_peer).max())
    return dict(forward=(ours_forward, peer_forward), train=(ours_train, peer_train)), max_err


def bench_rows(grid, sim, rounds, reps):
    timers = (Timer("host"), Timer("host")) if sim else (Timer("cupy"), Timer("torch"))
    rows = []
    for cell in CELLS:
        for T, B, H in grid:
            fns, max_err = build_pair(cell, T, B, H, sim)
            G = GATES[cell]
            fwd_flops = 2 * T * B * G * H * (H + H)
            for mode, (ours_fn, peer_fn) in fns.items():
                for fn in (ours_fn, peer_fn):   # warm-up: compilation, cuDNN plans, memory pools
                    fn()
                    fn()
                times = interleaved({"gpurnn": (timers[0], ours_fn), "torch": (timers[1], peer_fn)},
                                    rounds, reps)
                t_ours, t_peer = median(times["gpurnn"]), median(times["torch"])
                flops = fwd_flops * (3 if mode == "train" else 1)
                row = dict(cell=cell, mode=mode, T=T, B=B, I=H, H=H, dtype="float32",
                           gpurnn_ms=1e3 * t_ours, torch_ms=1e3 * t_peer, ratio=t_peer / t_ours,
                           gpurnn_tflops=flops / t_ours / 1e12, torch_tflops=flops / t_peer / 1e12,
                           forward_max_abs_diff=max_err, samples=len(times["gpurnn"]))
                rows.append(row)
                print(f"{cell:8s} {mode:7s} T={T:<4d} B={B:<4d} H={H:<5d} gpurnn {row['gpurnn_ms']:9.3f} ms  "
                      f"torch {row['torch_ms']:9.3f} ms  torch/gpurnn {row['ratio']:6.2f}  "
                      f"max|y - y_torch| {max_err:.1e}", flush=True)
    return rows


# ---------------------------------------------------------------- machine and output
def machine(sim):
    import numba
    import numpy as np
    import torch
    info = dict(python=platform.python_version(), numpy=np.__version__, numba=numba.__version__,
                torch=torch.__version__, host=platform.node(), platform=platform.platform())
    try:
        from importlib.metadata import version
        info["numba_cuda"] = version("numba-cuda")
    except Exception:
        pass
    if sim:
        info.update(gpu="simulator", note="NUMBA_ENABLE_CUDASIM=1: plumbing only, times are meaningless")
        return info
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    info.update(gpu=props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                compute_capability=f"{props['major']}.{props['minor']}", cupy=cupy.__version__,
                cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(), cudnn=torch.backends.cudnn.version(),
                torch_cuda=torch.version.cuda, tf32=False)
    return info


def markdown(result):
    m = result["machine"]
    lines = [f"# gpurnn cuda backend vs torch (cuDNN) on {m['gpu']}", "",
             f"{result['date']}; tests: {result['tests']}; geometry {result['geometry']}; "
             f"medians of {result['rounds']} x {result['reps']} interleaved calls per side.", "",
             *([f"**{m['note']}**", ""] if "note" in m else []),
             "| cell | mode | T | B | H | gpurnn ms | torch ms | torch/gpurnn | gpurnn TFLOP/s | torch TFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['cell']} | {r['mode']} | {r['T']} | {r['B']} | {r['H']} | {r['gpurnn_ms']:.3f} | "
                     f"{r['torch_ms']:.3f} | {r['ratio']:.2f} | {r['gpurnn_tflops']:.2f} | {r['torch_tflops']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.sim and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        # The simulator must be chosen before Numba is imported: start again with it set.
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        return subprocess.call([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env=env)
    rounds = args.rounds or (1 if args.sim else 5)
    reps = args.reps or (1 if args.sim else 5)
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpurnn-gpu-suite-")) if args.sim else ROOT / "benchmarks" / "results")

    sys.path.insert(0, str(ROOT))
    import gpurnn
    usable, reason = gpurnn.cuda_status()
    if not usable:
        print(f"the cuda backend is not usable here: {reason}", file=sys.stderr)
        return 2
    if args.sim:
        sys.setswitchinterval(1e-4)   # the simulator's block manager polls with the GIL held
    if args.geometry:
        from gpurnn.kernels import cuda as cuda_kernels
        geo = cuda_kernels.Geometry(*(int(v) for v in args.geometry.split(",")))
        cuda_kernels.default_geometry = lambda: geo

    tests = "skipped (--skip-tests)"
    if not args.skip_tests:
        ok, tests = run_tests(args.sim)
        print(f"tests: {tests}", flush=True)
        if not ok:
            print("tests failed: no benchmark", file=sys.stderr)
            return 1

    from gpurnn.kernels import cuda as cuda_kernels
    grid = SIM_GRID if args.sim else (QUICK_GRID if args.quick else GRID)
    rows = bench_rows(grid, args.sim, rounds, reps)
    info = machine(args.sim)
    now = datetime.datetime.now(datetime.timezone.utc)
    result = dict(date=now.isoformat(timespec="seconds"), machine=info, tests=tests,
                  geometry=cuda_kernels.default_geometry().__dict__, rounds=rounds, reps=reps, rows=rows)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", info["gpu"]).strip("-").lower()
    stem = out / (f"{now:%Y-%m-%d}-{slug}" + (f"-g{args.geometry.replace(',', '-')}" if args.geometry else ""))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

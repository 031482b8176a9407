"""gpurnn's cuda backend against torch.nn.RNN/LSTM/GRU (cuDNN) on the same GPU, within a time budget.

    python benchmarks/bench_gpu.py                  # the grid, cheapest rows first, within --budget seconds
    python benchmarks/bench_gpu.py --quick          # three shapes
    python benchmarks/bench_gpu.py --sim            # the plumbing in the CUDA simulator on one tiny shape
                                                    # (no GPU; its times mean nothing; output to a temp folder)
    python benchmarks/bench_gpu.py --algo step      # gpurnn's per-step path on every row (default: auto)
    python benchmarks/bench_gpu.py --ncu-target     # a step_forward, then a persistent training step, for ncu

``benchmarks/device_run.sh`` runs it after the cuda tests, with what is left of its budget. Results go
to ``<out>/<name>.json`` and ``.md`` (default ``benchmarks/results/<date>-<gpu>-bench``), rewritten
after every row: a run stopped at any point keeps what it measured, and lists the rows it did not reach.

First, the launch overhead: host microseconds per launch of an empty Numba kernel, of one
``step_forward`` of a mid-size LSTM (the launch the per-step path makes T times per forward) and
of a CuPy elementwise operation; and the device microseconds of one ``step_forward`` when launches
queue back to back (the launches are enqueued behind a kernel that sleeps, then run without gaps).

Then, per cell and shape (T, B, I = H, H), float32 (TF32 off for torch), one layer, one direction:
    forward  ``y = m(x)`` with everything backward needs saved (torch: autograd enabled)
    train    zero the grads, forward, backward of a fixed dy (weight gradients and dx)
FLOPs are the dense products only: forward 2·T·B·G·H·(I + H); train 3 x forward. Each row also
counts gpurnn's kernel launches per call, a CUDA graph replay counting one (1 forward and 3 per
training step on the persistent path; on the per-step path T and 2T + 2 without graphs, 1 and 3
with them) and names the algorithm that ran and its plan (``--algo`` forces one; auto lets
kernels/cuda/plan.py choose per shape, as a user's model does).

Two sections time gpurnn's pieces against a peer in the same run:
    accumulate   the BPTT weight-gradient kernel (dW_ih += dG_xᵀ x, dW_hh += dG_hᵀ h_prev over all
                 N = T·B rows) against CuPy's matmul (cuBLAS sgemm) of the same two products
    graphs       the per-step path's training step and forward with CUDA graphs (the default) and
                 without (GPURNN_GRAPHS=0)
Timing: CUDA events around each call (CuPy's for gpurnn, torch's for torch, both on the legacy
default stream), synchronised after each call; every row is warmed up first (kernels compiled,
cuDNN plans chosen), then ``--rounds`` rounds alternate a block of calls of each side, the order
swapping every round; a block holds up to ``--reps`` calls, fewer for slow shapes. Reported: medians,
and the ratio torch / gpurnn (> 1: gpurnn faster), and gpurnn's agreement with torch on the shape.

The budget: rows run cheapest first by a napkin estimate of their time (``estimate``), which is
rescaled after every row by how long the last row's calls really took; a row whose estimate would
overrun what is left is skipped and listed as skipped.
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

from gpurnn.kernels.vocabulary import CELLS, GATES

START = time.monotonic()
ROOT = Path(__file__).resolve().parents[1]
MEASURED_CELLS = tuple(c for c in CELLS if c != "rnn_relu")   # relu costs what tanh does

# (T, B, H): batch sweep at T = 128 for three widths, then a sequence-length sweep.
GRID = ([(128, B, H) for H in (64, 256, 1024) for B in (1, 16, 64, 256)]
        + [(T, 64, H) for H in (256, 1024) for T in (32, 512)])
QUICK_GRID = [(32, 16, 64), (128, 64, 256), (128, 256, 1024)]
# In the simulator (3 modelled SMs, blocks of 8 threads), the persistent plan's grid shapes: one block,
# groups of one slice, one group of slices.
SIM_GRID = [(3, 1, 2), (3, 5, 2), (3, 2, 5)]

# Napkin figures of the time estimate, before the first row measures anything (see ``estimate``).
LAUNCH_S = 50e-6        # host seconds per Numba launch (numba-cuda's launch path)
CALL_S = 0.5e-3         # CuPy work per gpurnn call outside the step kernels (products, fills, checks)
OURS_FLOPS = 4e12       # FLOP/s of gpurnn's float32 kernels: well under an H100's 60 TFLOP/s FMA peak
PEER_STEP_S = 10e-6     # cuDNN per time step and direction of the recursion
PERSIST_STEP_S = 3e-6   # gpurnn's persistent kernels per time step: an exchange between blocks and the step's latency
PEER_FLOPS = 15e12
COMPILE_S = 20.0        # the first row of a cell compiles its three kernels
BUILD_S = 1.0           # models, inputs, the agreement check
BLOCK_S = 0.05          # a timed block of calls aims at about this long


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sim", action="store_true", help="plumbing check in the CUDA simulator (no GPU)")
    p.add_argument("--quick", action="store_true", help="three shapes instead of the grid")
    p.add_argument("--ncu-target", action="store_true",
                   help="launch one step_forward, then one persistent training step (persistent_forward, "
                        "persistent_backward, accumulate) of a mid-size LSTM, and exit (for ncu)")
    p.add_argument("--algo", choices=("auto", "persistent", "step"), default="auto",
                   help="gpurnn's algorithm on every row (default auto: chosen per shape)")
    p.add_argument("--budget", type=float, default=300.0,
                   help="seconds for the whole run, start-up included (default 300); rows that would "
                        "overrun it are skipped and listed")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per row (default 5; sim 1)")
    p.add_argument("--reps", type=int, default=None,
                   help="at most this many timed calls per side per round (default 5; sim 1)")
    p.add_argument("--tests", default="not run by this script",
                   help="the outcome of the cuda tests before it, recorded in the results")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="the calibration JSON of the same run (benchmarks/calibrate.py), named in the results")
    p.add_argument("--geometry", default=None, metavar="FIELD=N,...",
                   help="block geometry of the cuda kernels, the fields of kernels.cuda.Geometry to change "
                        "(e.g. step_rb=2,acc_regs=4), to sweep it; threads a block <= 1024, static shared "
                        "memory within 48 KiB, acc_regs a multiple of vec, persist_threads a power of two")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the JSON and markdown (default benchmarks/results; sim: a temp folder)")
    p.add_argument("--name", default=None, help="file name without suffix (default <date>-<gpu>-bench)")
    args = p.parse_args(argv)
    if args.budget < 0 or (args.rounds is not None and args.rounds < 1) or (args.reps is not None and args.reps < 1):
        p.error("--budget must be >= 0, --rounds and --reps >= 1")
    return args


# ---------------------------------------------------------------- the time estimate
def flops(cell, mode, T, B, H):
    forward = 2 * T * B * GATES[cell] * H * (H + H)
    return forward * (3 if mode == "train" else 1)


def launches(mode, T, algo="step"):
    """gpurnn's Numba launches per call. Per-step path: T forward steps; T + 1 fused backward steps
    and one weight-gradient reduction. Persistent path: one forward; one backward and the reduction."""
    if algo == "persistent":
        return 1 if mode == "forward" else 3
    return T if mode == "forward" else 2 * T + 2


def likely_algo(H, algo):
    """The algorithm a row will run, for its estimate: auto takes the persistent path up to about
    H = 1024 in float32 on an H100 (kernels/cuda/plan.py decides for real)."""
    return algo if algo != "auto" else ("persistent" if H <= 1024 else "step")


def estimate(cell, mode, T, B, H, launch_s=LAUNCH_S, algo="auto"):
    """Napkin seconds of one call of each side: (gpurnn, torch). gpurnn pays a host launch per
    kernel (and on the persistent path a few microseconds per step) and runs its FLOPs at
    OURS_FLOPS; cuDNN pays a few microseconds per step."""
    steps = T if mode == "forward" else 2 * T
    used = likely_algo(H, algo)
    ours = (launches(mode, T, used) * launch_s + CALL_S + flops(cell, mode, T, B, H) / OURS_FLOPS
            + (steps * PERSIST_STEP_S if used == "persistent" else 0.0))
    peer = steps * PEER_STEP_S + flops(cell, mode, T, B, H) / PEER_FLOPS
    return ours, peer


def reps_for(call_s, max_reps):
    """Calls per timed block: enough for about BLOCK_S, at least one, at most max_reps."""
    return max(1, min(max_reps, round(BLOCK_S / max(call_s, 1e-9))))


def case_seconds(cell, T, B, H, rounds, max_reps, scale=(1.0, 1.0), new_cell=False, launch_s=LAUNCH_S,
                 algo="auto"):
    """Estimated wall seconds of one row (both modes, warm-up and timed calls, both sides)."""
    total = BUILD_S + (COMPILE_S if new_cell else 0.0)
    for mode in ("forward", "train"):
        ours, peer = estimate(cell, mode, T, B, H, launch_s, algo)
        ours, peer = ours * scale[0], peer * scale[1]
        calls = 3 + rounds * reps_for(max(ours, peer), max_reps)     # 2 warm-up, 1 counting launches
        total += calls * (ours + peer)
    return total


def plan(grid, cells, rounds, max_reps, algo="auto"):
    """Every (cell, T, B, H) of the grid, cheapest first."""
    cases = [(cell, T, B, H) for cell in cells for T, B, H in grid]
    return sorted(cases, key=lambda c: (case_seconds(*c, rounds, max_reps, algo=algo), c))


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


def synchronize(sim):
    if not sim:
        import cupy
        cupy.cuda.get_current_stream().synchronize()


def record_launches(fn):
    """Run fn() once; return the Numba launches the cuda backend made meanwhile, in order, as
    (kernel name, configured kernel, arguments)."""
    from gpurnn.kernels.cuda import recording
    with recording() as launches:
        fn()
    return launches


# ---------------------------------------------------------------- launch overhead
def launch_overhead(sim):
    """Host and device microseconds per launch; see the module docstring."""
    import numpy as np
    from numba import cuda

    import gpurnn
    from gpurnn.kernels import cuda as kc
    n = 3 if sim else 300
    B, H = (2, 5) if sim else (64, 256)
    nstream = kc.runtime.numba_stream(kc.runtime.current_stream())

    @cuda.jit
    def empty():
        pass

    @cuda.jit
    def sleep(microseconds):
        for _ in range(microseconds):
            cuda.nanosleep(1000)

    # The step is the one a layer launches: recorded from a one-step forward, then launched again
    # with the same arguments (it reads hs[0] and writes hs[1], so every launch does the same work).
    m = gpurnn.LSTM(H, H, backend="cuda", seed=0, algo="step")
    xp = m.backend.xp
    x = xp.asarray(np.random.default_rng(0).standard_normal((1, B, H)).astype(np.float32))
    ((name, step, step_args),) = record_launches(lambda: m(x))
    assert name == "step_forward", name
    one = empty[1, 1, nstream]
    one()                       # compile before timing
    synchronize(sim)

    def host_us(launch, count):
        t0 = time.perf_counter()
        for _ in range(count):
            launch()
        return (time.perf_counter() - t0) / count * 1e6

    result = dict(step_shape=dict(cell="lstm", dtype="float32", B=B, H=H), launches_timed=n)
    result["empty_kernel_host_us"] = host_us(one, n)
    synchronize(sim)
    a = xp.zeros(1, np.float32)

    def cupy_op():
        a.__iadd__(1)
    cupy_op()                   # CuPy compiles an elementwise kernel on its first call
    synchronize(sim)
    result["cupy_elementwise_host_us"] = host_us(cupy_op, n)
    synchronize(sim)
    if sim:
        result["step_forward_host_us"] = host_us(lambda: step(*step_args), n)
        result["step_forward_device_us"] = None
        return result
    import cupy
    # Queue the launches behind a sleeping kernel, so that the host's pace does not gap them.
    sleep_us = int(3 * n * (result["empty_kernel_host_us"] + 100))
    begin, queued, end = cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.Event()
    begin.record()
    sleep[1, 1, nstream](sleep_us)
    queued.record()
    result["step_forward_host_us"] = host_us(lambda: step(*step_args), n)
    end.record()
    end.synchronize()
    slept_ms = cupy.cuda.get_elapsed_time(begin, queued)
    queue_ms = result["step_forward_host_us"] * n * 1e-3
    # Valid only when every launch was enqueued before the sleep ended.
    result["step_forward_device_us"] = (cupy.cuda.get_elapsed_time(queued, end) * 1e3 / n
                                        if queue_ms < slept_ms else None)
    result["sleep_ms"], result["enqueue_ms"] = slept_ms, queue_ms
    return result


# ---------------------------------------------------------------- one row
def build_pair(cell, T, B, H, sim, algo="auto"):
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
        ours = gpurnn.RNN(I, H, nonlinearity=cell[4:], backend="cuda", algo=algo)
    else:
        peer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H)
        ours = {"lstm": gpurnn.LSTM, "gru": gpurnn.GRU}[cell](I, H, backend="cuda", algo=algo)
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
    (used,) = ours.plans
    return dict(forward=(ours_forward, peer_forward), train=(ours_train, peer_train)), max_err, used


def run_case(cell, T, B, H, sim, rounds, max_reps, scale, launch_s, algo="auto"):
    """Both modes of one (cell, shape): two rows, and the measured/estimated ratio of each side."""
    timers = (Timer("host"), Timer("host")) if sim else (Timer("cupy"), Timer("torch"))
    fns, max_err, used = build_pair(cell, T, B, H, sim, algo)
    rows, ratios = [], []
    for mode, (ours_fn, peer_fn) in fns.items():
        for fn in (ours_fn, peer_fn):   # warm-up: compilation, cuDNN plans, memory pools
            fn()
            fn()
        n_launch = len(record_launches(ours_fn))
        est = estimate(cell, mode, T, B, H, launch_s, used.algo)
        reps = reps_for(max(est[0] * scale[0], est[1] * scale[1]), max_reps)
        times = interleaved({"gpurnn": (timers[0], ours_fn), "torch": (timers[1], peer_fn)}, rounds, reps)
        t_ours, t_peer = median(times["gpurnn"]), median(times["torch"])
        n_flops = flops(cell, mode, T, B, H)
        rows.append(dict(cell=cell, mode=mode, T=T, B=B, I=H, H=H, dtype="float32", algo=used.algo,
                         plan=used.describe(), numba_launches=n_launch, gpurnn_ms=1e3 * t_ours, torch_ms=1e3 * t_peer,
                         ratio=t_peer / t_ours, gpurnn_tflops=n_flops / t_ours / 1e12,
                         torch_tflops=n_flops / t_peer / 1e12, forward_max_abs_diff=max_err,
                         samples=len(times["gpurnn"])))
        ratios.append((t_ours / est[0], t_peer / est[1]))
        r = rows[-1]
        print(f"{cell:8s} {mode:7s} T={T:<4d} B={B:<4d} H={H:<5d} gpurnn {r['gpurnn_ms']:9.3f} ms  "
              f"torch {r['torch_ms']:9.3f} ms  torch/gpurnn {r['ratio']:6.2f}  {used.algo:10s} launches {n_launch:5d}  "
              f"max|y - y_torch| {max_err:.1e}", flush=True)
    # The next rows are larger: rescale their estimates by the larger mode's ratio, with a margin.
    scale = tuple(1.25 * max(r[i] for r in ratios) for i in range(2))
    return rows, scale


# ---------------------------------------------------------------- the pieces against a peer
ACC_SHAPES = [(128, 64, 256), (128, 64, 1024), (64, 256, 1024)]       # (T, B, H) of an LSTM, I = H
GRAPH_SHAPES = [(128, 8, 256), (128, 64, 1024), (512, 16, 512)]      # (T, B, H) of an LSTM, per-step path
SIM_PIECES = [(3, 2, 5)]


def accumulate_rows(sim, rounds, max_reps):
    """The accumulation kernel against cuBLAS (CuPy matmul) on the same products, float32."""
    import numpy as np

    from gpurnn.kernels import cuda as kc
    xp = kc.runtime.xp_of()
    geo = kc.default_geometry()
    timer = Timer("host" if sim else "cupy")
    rows = []
    for T, B, H in (SIM_PIECES if sim else ACC_SHAPES):
        N, GH, I = T * B, 4 * H, H
        rng = np.random.default_rng(0)
        dg_x, x, hp = (xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((N, GH), (N, I), (N, H)))
        grads = dict(w_ih=xp.zeros((GH, I), np.float32), w_hh=xp.zeros((GH, H), np.float32),
                     b_ih=xp.zeros(GH, np.float32), b_hh=xp.zeros(GH, np.float32))

        def ours(dg_x=dg_x, x=x, hp=hp, grads=grads):
            kc.accumulate_grads("lstm", dg_x, x, dg_x, hp, grads, geo)

        def cublas(dg_x=dg_x, x=x, hp=hp):
            xp.matmul(dg_x.T, x)
            xp.matmul(dg_x.T, hp)
        for fn in (ours, cublas, ours, cublas):
            fn()
        times = interleaved({"gpurnn": (timer, ours), "cupy": (timer, cublas)}, rounds,
                            reps_for(2 * N * GH * (I + H) / PEER_FLOPS, max_reps))
        t_ours, t_peer = median(times["gpurnn"]), median(times["cupy"])
        n_flops = 2 * N * GH * (I + H)
        rows.append(dict(T=T, B=B, H=H, N=N, GH=GH, gpurnn_ms=1e3 * t_ours, cupy_ms=1e3 * t_peer,
                         share_of_cublas=t_peer / t_ours, gpurnn_tflops=n_flops / t_ours / 1e12,
                         cupy_tflops=n_flops / t_peer / 1e12))
        r = rows[-1]
        print(f"accumulate N={N:<6d} G*H={GH:<5d} I=H={H:<5d} gpurnn {r['gpurnn_ms']:8.3f} ms  cuBLAS "
              f"{r['cupy_ms']:8.3f} ms  share of cuBLAS {r['share_of_cublas']:.2f}", flush=True)
    return rows


def graph_rows(sim, rounds, max_reps):
    """The per-step path with CUDA graphs and without, interleaved in one process, float32 LSTM."""
    import numpy as np

    import gpurnn
    from gpurnn.kernels.cuda import graphs
    timer = Timer("host" if sim else "cupy")
    rows = []
    for T, B, H in (SIM_PIECES if sim else GRAPH_SHAPES):
        m = gpurnn.LSTM(H, H, backend="cuda", seed=0, algo="step")
        xp = m.backend.xp
        rng = np.random.default_rng(0)
        x = xp.asarray(rng.standard_normal((T, B, H)).astype(np.float32))
        dy = xp.asarray(rng.standard_normal((T, B, H)).astype(np.float32))

        def train(m=m, x=x, dy=dy):
            m.zero_grad()
            m(x)
            m.backward(dy)

        def forward(m=m, x=x):
            m(x)

        for mode, fn in (("forward", forward), ("train", train)):
            def with_graphs(fn=fn):
                os.environ[graphs.ENV] = "1"
                fn()

            def without(fn=fn):
                os.environ[graphs.ENV] = "0"
                fn()
            for f in (without, with_graphs, with_graphs, without):     # warm-up; the plan captures
                f()
            est = estimate("lstm", mode, T, B, H, LAUNCH_S, "step")[0]
            times = interleaved({"graphs": (timer, with_graphs), "direct": (timer, without)}, rounds,
                                reps_for(est, max_reps))
            t_on, t_off = median(times["graphs"]), median(times["direct"])
            rows.append(dict(cell="lstm", mode=mode, T=T, B=B, H=H, graphs_ms=1e3 * t_on, direct_ms=1e3 * t_off,
                             speedup=t_off / t_on))
            print(f"graphs   {mode:7s} T={T:<4d} B={B:<4d} H={H:<5d} with {1e3 * t_on:9.3f} ms  without "
                  f"{1e3 * t_off:9.3f} ms  speed-up {t_off / t_on:.2f}", flush=True)
        os.environ.pop(graphs.ENV, None)
    return rows


# ---------------------------------------------------------------- machine and output
def machine(sim):
    import numba
    import numpy as np
    import torch

    import gpurnn
    from gpurnn.kernels.cuda import toolchain
    info = dict(python=platform.python_version(), numpy=np.__version__, numba=numba.__version__,
                torch=torch.__version__, toolchain=toolchain(), gpurnn=os.path.dirname(gpurnn.__file__),
                host=platform.node(), platform=platform.platform())
    if sim:
        info.update(gpu="simulator", note="NUMBA_ENABLE_CUDASIM=1: plumbing only, times are meaningless")
        return info
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    info.update(gpu=name.decode() if isinstance(name, bytes) else name,
                compute_capability=f"{props['major']}.{props['minor']}",
                multiprocessors=props["multiProcessorCount"], cupy=cupy.__version__,
                cuda_driver=cupy.cuda.runtime.driverGetVersion(),
                cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(), cudnn=torch.backends.cudnn.version(),
                torch_cuda=torch.version.cuda, tf32=False)
    return info


def slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def case_dict(case, **extra):
    cell, T, B, H = case
    return dict(cell=cell, T=T, B=B, H=H, **extra)


def markdown(result):
    m, lo = result["machine"], result["launch_overhead"]
    lines = [f"# gpurnn cuda backend vs torch (cuDNN) on {m['gpu']}", "",
             f"{result['date']}; {m['toolchain']}; torch {m['torch']}; tests: {result['tests']}; "
             f"geometry {result['geometry']}; gpurnn algo {result['algo']}; "
             f"medians of {result['rounds']} interleaved rounds of up to "
             f"{result['reps']} calls per side; budget {result['budget_s']:.0f} s, "
             f"{result['elapsed_s']:.0f} s used.", "",
             *([f"**{m['note']}**", ""] if "note" in m else []),
             *([f"The primitives a persistent step is built from (grid sync, flag and tagged exchange, L2 "
                f"round trip, register array), measured in the same run: `{result['calibration']}`.", ""]
               if result.get("calibration") else [])]
    if lo:
        device = lo["step_forward_device_us"]
        lines += ["## Launch overhead", "",
                  f"Host microseconds per launch, {lo['launches_timed']} launches back to back; the "
                  f"step_forward is an LSTM step at B={lo['step_shape']['B']}, H={lo['step_shape']['H']}, float32.", "",
                  "| launch | host µs | device µs |", "|---|---:|---:|",
                  f"| empty Numba kernel | {lo['empty_kernel_host_us']:.1f} | |",
                  f"| `step_forward` | {lo['step_forward_host_us']:.1f} | "
                  f"{'' if device is None else f'{device:.1f}'} |",
                  f"| CuPy elementwise | {lo['cupy_elementwise_host_us']:.1f} | |", ""]
    lines += ["## Rows", "",
              "| cell | mode | T | B | H | algo | launches | gpurnn ms | torch ms | torch/gpurnn | "
              "gpurnn TFLOP/s | torch TFLOP/s | max abs diff of y |",
              "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['cell']} | {r['mode']} | {r['T']} | {r['B']} | {r['H']} | {r['algo']} | "
                     f"{r['numba_launches']} | {r['gpurnn_ms']:.3f} | {r['torch_ms']:.3f} | {r['ratio']:.2f} | "
                     f"{r['gpurnn_tflops']:.2f} | {r['torch_tflops']:.2f} | {r['forward_max_abs_diff']:.1e} |")
    if result.get("accumulate"):
        lines += ["", "## The accumulation kernel against cuBLAS", "",
                  "dW_ih += dG_xᵀ x and dW_hh += dG_hᵀ h_prev over N = T·B rows (LSTM, I = H), against "
                  "CuPy's matmul of the same two products; share = cuBLAS time / gpurnn time.", "",
                  "| T | B | H | N | G·H | gpurnn ms | cuBLAS ms | share of cuBLAS | gpurnn TFLOP/s | cuBLAS TFLOP/s |",
                  "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
        for r in result["accumulate"]:
            lines.append(f"| {r['T']} | {r['B']} | {r['H']} | {r['N']} | {r['GH']} | {r['gpurnn_ms']:.3f} | "
                         f"{r['cupy_ms']:.3f} | {r['share_of_cublas']:.2f} | {r['gpurnn_tflops']:.2f} | "
                         f"{r['cupy_tflops']:.2f} |")
    if result.get("graphs"):
        lines += ["", "## CUDA graphs on the per-step path", "",
                  "LSTM, float32, algo step; the same model with graphs (default) and with GPURNN_GRAPHS=0.", "",
                  "| mode | T | B | H | with graphs ms | without ms | speed-up |", "|---|---|---|---|---:|---:|---:|"]
        for r in result["graphs"]:
            lines.append(f"| {r['mode']} | {r['T']} | {r['B']} | {r['H']} | {r['graphs_ms']:.3f} | "
                         f"{r['direct_ms']:.3f} | {r['speedup']:.2f} |")
    if result["skipped"]:
        lines += ["", "Skipped, as they would have overrun the budget: " + ", ".join(
            f"{s['cell']} T={s['T']} B={s['B']} H={s['H']} (about {s['estimate_s']:.0f} s, {s['left_s']:.0f} s left)"
            for s in result["skipped"]) + "."]
    if result["not_reached"]:
        lines += ["", "Not reached (the run stopped or is still going): " + ", ".join(
            f"{s['cell']} T={s['T']} B={s['B']} H={s['H']}" for s in result["not_reached"]) + "."]
    return "\n".join(lines) + "\n"


def write(result, stem):
    result["elapsed_s"] = time.monotonic() - START
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(markdown(result))


# ---------------------------------------------------------------- ncu target
def ncu_target(sim):
    """Of a mid-size float32 LSTM (B = 64, I = H = 256): one step_forward launch of the per-step
    path, then one training step of the persistent path at T = 16 (persistent_forward,
    persistent_backward, accumulate): what device_run.sh profiles with ncu."""
    import numpy as np

    import gpurnn
    T, B, H = (2, 2, 5) if sim else (16, 64, 256)
    rng = np.random.default_rng(0)
    step = gpurnn.LSTM(H, H, backend="cuda", seed=0, algo="step")
    xp = step.backend.xp
    step(xp.asarray(rng.standard_normal((1, B, H)).astype(np.float32)))          # one step_forward
    persistent = gpurnn.LSTM(H, H, backend="cuda", seed=0, algo="persistent")
    persistent(xp.asarray(rng.standard_normal((T, B, H)).astype(np.float32)))
    persistent.backward(xp.asarray(rng.standard_normal((T, B, H)).astype(np.float32)))
    synchronize(sim)
    print(f"ran one step_forward (LSTM B={B} H={H}), then a persistent training step (T={T}): "
          f"{persistent.plans[0].describe()}")
    return 0


# ---------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    if args.sim and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        # The simulator must be chosen before Numba is imported: start again with it set.
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        return subprocess.call([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env=env)
    import gpurnn
    usable, reason = gpurnn.cuda_status()
    if not usable:
        print(f"the cuda backend is not usable here: {reason}", file=sys.stderr)
        return 2
    if args.sim:
        sys.setswitchinterval(1e-4)   # the simulator's block manager polls with the GIL held
    from gpurnn.kernels import cuda as cuda_kernels
    if args.geometry:
        import dataclasses
        try:
            geo = dataclasses.replace(cuda_kernels.GPU_GEOMETRY, **{k.strip(): int(v) for k, v in
                                                                    (f.split("=") for f in args.geometry.split(","))})
        except (TypeError, ValueError) as e:
            print(f"--geometry {args.geometry!r}: {e}; expected FIELD=N,... with fields of "
                  f"{', '.join(cuda_kernels.GPU_GEOMETRY.__dict__)}", file=sys.stderr)
            return 2
        cuda_kernels.default_geometry = lambda: geo
    if args.ncu_target:
        return ncu_target(args.sim)

    rounds = args.rounds or (1 if args.sim else 5)
    max_reps = args.reps or (1 if args.sim else 5)
    grid = SIM_GRID if args.sim else (QUICK_GRID if args.quick else GRID)
    cases = plan(grid, MEASURED_CELLS, rounds, max_reps, args.algo)
    now = datetime.datetime.now(datetime.timezone.utc)
    info = machine(args.sim)
    scratch = Path(tempfile.mkdtemp(prefix="gpurnn-bench-gpu-")) if args.sim else None
    out = args.out or scratch or ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or (f"{now:%Y-%m-%d}-{slug(info['gpu'])}-bench"
                         + (f"-g{slug(args.geometry)}" if args.geometry else ""))
    stem = out / name
    result = dict(date=now.isoformat(timespec="seconds"), machine=info, tests=args.tests, calibration=args.calibration,
                  geometry=cuda_kernels.default_geometry().__dict__, algo=args.algo, budget_s=args.budget,
                  rounds=rounds,
                  reps=max_reps, launch_overhead=None, rows=[], skipped=[],
                  not_reached=[case_dict(c) for c in cases])
    write(result, stem)

    lo = result["launch_overhead"] = launch_overhead(args.sim)
    print(f"launch overhead, host µs per launch: empty kernel {lo['empty_kernel_host_us']:.1f}, "
          f"step_forward {lo['step_forward_host_us']:.1f}, CuPy elementwise {lo['cupy_elementwise_host_us']:.1f}; "
          f"step_forward on the device: {lo['step_forward_device_us']} µs", flush=True)
    write(result, stem)
    result["accumulate"] = accumulate_rows(args.sim, rounds, max_reps)
    write(result, stem)
    result["graphs"] = graph_rows(args.sim, rounds, max_reps)
    write(result, stem)
    launch_s = lo["step_forward_host_us"] * 1e-6 if not args.sim else LAUNCH_S
    scale, seen = (1.0, 1.0), set()
    for i, case in enumerate(cases):
        cell = case[0]
        need = case_seconds(*case, rounds, max_reps, scale, cell not in seen, launch_s, args.algo)
        left = args.budget - (time.monotonic() - START)
        result["not_reached"] = [case_dict(c) for c in cases[i + 1:]]
        if need > left:
            result["skipped"].append(case_dict(case, estimate_s=need, left_s=max(left, 0.0)))
            print(f"skipped {cell} T={case[1]} B={case[2]} H={case[3]}: about {need:.0f} s, {left:.0f} s left",
                  flush=True)
        else:
            rows, scale = run_case(*case, args.sim, rounds, max_reps, scale, launch_s, args.algo)
            seen.add(cell)
            result["rows"] += rows
        write(result, stem)
    print(f"wrote {stem}.json and {stem}.md: {len(result['rows'])} rows, {len(result['skipped'])} "
          f"shapes skipped for the budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())

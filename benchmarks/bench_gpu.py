"""gpurnn's cuda backend against torch.nn.RNN/LSTM/GRU (cuDNN) on the same GPU, within a time budget.

    python benchmarks/bench_gpu.py                  # the grid, cheapest rows first, within --budget seconds
    python benchmarks/bench_gpu.py --quick          # three shapes
    python benchmarks/bench_gpu.py --sim            # the plumbing in the CUDA simulator on one tiny shape
                                                    # (no GPU; its times mean nothing; output to a temp folder)
    python benchmarks/bench_gpu.py --algo step      # gpurnn's per-step path on every row (default: auto)
    python benchmarks/bench_gpu.py --dtype bfloat16 # gpurnn's bfloat16 layers against torch.nn under autocast
    python benchmarks/bench_gpu.py --tensor-cores   # gpurnn's weight gradients on tensor cores (TF32 for
                                                    # float32, against torch's defaults, TF32 on)
    python benchmarks/bench_gpu.py --ncu-target     # a step_forward, then a persistent training step, for ncu

``benchmarks/device_run.sh`` runs it after the cuda tests, with what is left of its budget. Results go
to ``<out>/<name>.json`` and ``.md`` (default ``benchmarks/results/<date>-<gpu>-bench``), rewritten
after every row: a run stopped at any point keeps what it measured, and lists the rows it did not reach.

First, the launch overhead: host microseconds per launch of an empty Numba kernel, of one
``step_forward`` of a mid-size LSTM (the launch the per-step path makes T times per forward) and
of a CuPy elementwise operation; and the device microseconds of one ``step_forward`` when launches
queue back to back (the launches are enqueued behind a kernel that sleeps, then run without gaps).

Then, per cell and shape (T, B, I = H, H), float32 (``--dtype``: gpurnn's layers in a half format),
one layer, one direction:
    forward  ``y = m(x)`` with everything backward needs saved (torch: autograd enabled)
    train    zero the grads, forward, backward of a fixed dy (weight gradients and dx)
FLOPs are the dense products only: forward 2·T·B·G·H·(I + H); train 3 x forward. Each row also
counts gpurnn's kernel launches per call, a CUDA graph replay counting one (1 forward and 3 per
training step on the persistent path; on the per-step path T and 2T + 2 without graphs, 1 and 3
with them) and names the algorithm that ran and its plan (``--algo`` forces one; auto lets
kernels/cuda/plan.py choose per shape, as a user's model does).

torch is timed four ways in the same run, interleaved with gpurnn (``TORCH_SIDES``): float32 with
TF32 off, the same math as gpurnn's kernels and the ratio of record (``torch_ms``, ``ratio``); and
what users run: torch's defaults (cuDNN may use TF32, cuBLAS may not), and autocast to float16 and
to bfloat16 (``torch_default_*``, ``torch_autocast_fp16_*``, ``torch_autocast_bf16_*``: ms, ratio,
the dtype of y and its distance from gpurnn's; an ``_error`` instead where torch refused). With
``--dtype bfloat16`` or ``float16`` gpurnn's layers compute in that format (kernels/precision.py)
and their peer is torch.nn under autocast to it (``peer``, ``peer_ratio`` in each row): what users
run. On a GPU torch's autocast runs cuDNN's float16 path whatever the autocast dtype, so float16
is the like-for-like comparison; the accumulation and graph sections, float32 pieces, are left
out of such a run.

``host_us_per_step``: gpurnn's host time per time step outside its kernels. The GPU is first kept
busy by a kernel that spins on its nanosecond timer for longer than the call takes when synchronised
(``host_time``), then the host clock times the call; the spin still running when the call returns
proves that the call did not wait for the device. If it had finished, the call synchronised with the
device (``host_synced``) and its host time includes the wait: it is then not reported.

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
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path

from gpurnn.kernels.vocabulary import CELLS, GATES, HALF

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
HOST_REPS = 3           # calls timed by the host clock per row, behind a busy GPU (sim: 1)
HOST_MARGIN_S = 0.02    # the busy kernel outlasts a synchronised call by 25% and this much

# torch's sides of a row: key -> (label, cuDNN TF32, cuBLAS TF32, autocast dtype). The first is the
# ratio of record, the float32 math gpurnn's kernels do; the others are what users run. torch's
# defaults: torch.backends.cudnn.allow_tf32 True (cuDNN, RNNs included, may use TF32) and
# torch.backends.cuda.matmul.allow_tf32 False (cuBLAS may not, since torch 1.12); autocast keeps them.
TORCH_SIDES = {
    "torch": ("torch fp32 (TF32 off)", False, False, None),
    "torch_default": ("torch default (TF32 on)", True, False, None),
    "torch_autocast_fp16": ("torch autocast fp16", True, False, "float16"),
    "torch_autocast_bf16": ("torch autocast bf16", True, False, "bfloat16"),
}
ANCHORS = tuple(TORCH_SIDES)[1:]


def peer_side(dtype, tensor_cores=False):
    """The torch side a row of gpurnn in ``dtype`` is compared with: float32 with TF32 off (the
    same math), torch's defaults (TF32 on) where gpurnn's float32 products run on tensor cores
    (TF32), or torch.nn under autocast to the half format (what users run)."""
    if dtype == "float32" and tensor_cores:
        return "torch_default"
    return {"float32": "torch", "bfloat16": "torch_autocast_bf16", "float16": "torch_autocast_fp16"}[dtype]


def side_keys(side):
    """The row keys (ms, torch ms / gpurnn ms) of a torch side; the ratio of record keeps its old names."""
    return ("torch_ms", "ratio") if side == "torch" else (f"{side}_ms", f"{side}_ratio")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sim", action="store_true", help="plumbing check in the CUDA simulator (no GPU)")
    p.add_argument("--quick", action="store_true", help="three shapes instead of the grid")
    p.add_argument("--ncu-target", action="store_true",
                   help="launch one step_forward, then one persistent training step (persistent_forward, "
                        "persistent_backward, accumulate) of a mid-size LSTM, and exit (for ncu)")
    p.add_argument("--dtype", choices=("float32", *HALF), default="float32",
                   help="gpurnn's layers in this dtype (default float32); a half format's peer is torch.nn "
                        "under autocast to it")
    p.add_argument("--tensor-cores", action="store_true",
                   help="gpurnn's weight-gradient products on tensor cores (kernels.cuda.use_tensor_cores): TF32 "
                        "for float32, whose peer is then torch's defaults (TF32 on)")
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
    """Estimated wall seconds of one row (both modes, warm-up and timed calls, gpurnn and every torch
    side, gpurnn's host timing behind a busy GPU)."""
    total = BUILD_S + (COMPILE_S if new_cell else 0.0)
    for mode in ("forward", "train"):
        ours, peer = estimate(cell, mode, T, B, H, launch_s, algo)
        ours, peer = ours * scale[0], peer * scale[1]
        calls = 3 + rounds * reps_for(max(ours, peer), max_reps)     # 2 warm-up, 1 counting launches
        total += calls * (ours + len(TORCH_SIDES) * peer)
        total += ours + HOST_REPS * (1.25 * ours + HOST_MARGIN_S + ours)
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
    """{name: [seconds...]} for sides = {name: (timer, fn)} or {name: (timer, fn, settings)}: blocks of
    reps calls, order alternating. ``settings()`` is a context manager entered around each block of
    its side, outside the timed calls (torch's TF32 switches), and left before the next side's block."""
    names = list(sides)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            timer, fn, *settings = sides[n]
            with (settings[0]() if settings else nullcontext()):
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


@contextmanager
def torch_tf32(cudnn, matmul):
    """torch's TF32 switches set within the block and restored after it, even when it raises:
    cuDNN's (``torch.backends.cudnn.allow_tf32``, RNNs included) and cuBLAS's
    (``torch.backends.cuda.matmul.allow_tf32``). Only these legacy switches are touched: torch 2.9+
    maps them onto its ``fp32_precision`` settings, and refuses to read a mix of the two kinds."""
    import torch
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = tuple(f.allow_tf32 for f in flags)
    for f, value in zip(flags, (cudnn, matmul)):
        f.allow_tf32 = value
    try:
        yield
    finally:
        for f, value in zip(flags, saved):
            f.allow_tf32 = value


def torch_side_settings(side):
    """The context manager factory of a torch side's TF32 switches (for ``interleaved``)."""
    _, cudnn, matmul, _ = TORCH_SIDES[side]
    return lambda: torch_tf32(cudnn, matmul)


# One thread spins on the global nanosecond timer: the stream it is launched on stays busy for ns.
BUSY_WAIT = r"""
extern "C" __global__ void busy_wait(unsigned long long ns)
{
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}
"""


@lru_cache(maxsize=None)
def busy_kernel():
    import cupy
    return cupy.RawKernel(BUSY_WAIT, "busy_wait")


def host_time(fn, T, sim, reps):
    """gpurnn's host time per time step of ``fn`` (one call of a layer), outside its kernels.

    On a GPU, per rep: one call synchronised by the host bounds the call's host time from above;
    then a kernel on the call's stream (CuPy's current one, where gpurnn launches) spins for 1.25
    times that bound plus HOST_MARGIN_S, an event is recorded behind it, and the host clock times
    the call. The call's launches queue behind the spin, so the host clock sees only the host's
    work, unless the call waits for the device: then the spin (and the event) have finished when
    it returns, since they cannot finish sooner by the bound. ``host_synced`` says whether any rep
    saw that; ``host_us_per_step`` (median over reps, / T) is then None, as the wait is in it.
    ``host_call_ms``: the median host time of the call, wait or not. A call that fills the launch
    queue (about a thousand launches) also waits for the device, and reads the same.

    In the simulator every launch runs to completion on the host before the call returns: the
    host clock times the whole call, kernels included, and ``host_synced`` is None (it cannot tell)."""
    calls, synced = [], []
    if sim:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            calls.append(time.perf_counter() - t0)
        call = median(calls)
        return dict(host_us_per_step=1e6 * call / T, host_synced=None, host_call_ms=1e3 * call)
    import cupy
    import numpy as np
    busy_kernel()((1,), (1,), (np.uint64(0),))       # compiled before any rep
    synchronize(sim)
    busy_ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        synchronize(sim)
        bound = time.perf_counter() - t0
        busy_ns = int(1e9 * (1.25 * bound + HOST_MARGIN_S))
        begin, spun = cupy.cuda.Event(), cupy.cuda.Event()
        begin.record()
        busy_kernel()((1,), (1,), (np.uint64(busy_ns),))
        spun.record()
        t0 = time.perf_counter()
        fn()
        calls.append(time.perf_counter() - t0)
        synced.append(spun.done)
        synchronize(sim)
        busy_ms.append(cupy.cuda.get_elapsed_time(begin, spun))
    call, was_synced = median(calls), any(synced)
    return dict(host_us_per_step=None if was_synced else 1e6 * call / T, host_synced=was_synced,
                host_call_ms=1e3 * call, host_busy_ms=median(busy_ms))


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
def build_pair(cell, T, B, H, sim, algo="auto", dtype="float32"):
    """gpurnn (cuda backend) and torch models with the same weights, inputs on their devices.

    Returns (fns, agreement, used). fns[mode] = (gpurnn's call, {torch side: torch's call}) for the
    sides of TORCH_SIDES that ran here; each torch call runs under its side's autocast, if any (a
    user's step enters autocast for the forward and leaves it for backward), and its TF32 switches
    are for the caller to set (``torch_side_settings``). agreement[side]: torch's y on this shape
    against gpurnn's (max_abs_diff, y_dtype), or the error torch raised (a side that cannot run).
    used: gpurnn's plan. In the simulator torch runs on the CPU: its TF32 switches change nothing
    there, and autocast is torch's CPU autocast, which casts some cells and refuses others."""
    import numpy as np
    import torch

    import gpurnn
    I = H
    device = "cpu" if sim else "cuda"
    torch.manual_seed(0)
    if cell.startswith("rnn_"):
        peer = torch.nn.RNN(I, H, nonlinearity=cell[4:])
        ours = gpurnn.RNN(I, H, nonlinearity=cell[4:], backend="cuda", algo=algo, dtype=dtype)
    else:
        peer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H)
        ours = {"lstm": gpurnn.LSTM, "gru": gpurnn.GRU}[cell](I, H, backend="cuda", algo=algo, dtype=dtype)
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

    def peer_forward(cast):
        with cast():
            peer(tx)

    def peer_train(cast, dy):
        peer.zero_grad(set_to_none=False)
        tx.grad = None
        with cast():
            y, _ = peer(tx)
        y.backward(dy)

    # Agreement on this very shape: a benchmark of wrong numbers is worth nothing.
    y_ours = ours(x)[0]
    y_ours = y_ours.get() if hasattr(y_ours, "get") else np.asarray(y_ours)
    fns = dict(forward=(ours_forward, {}), train=(ours_train, {}))
    agreement = {}
    for side, (_, cudnn, matmul, autocast) in TORCH_SIDES.items():
        def cast(autocast=autocast):
            return torch.autocast(device, dtype=getattr(torch, autocast)) if autocast else nullcontext()
        try:
            with torch_tf32(cudnn, matmul), torch.no_grad(), cast():
                y_peer = peer(tx)[0]
        except RuntimeError as e:
            if side == "torch":
                raise
            agreement[side] = dict(error=first_line(e))
            continue
        agreement[side] = dict(max_abs_diff=float(np.abs(y_ours - y_peer.float().cpu().numpy()).max()),
                               y_dtype=str(y_peer.dtype).removeprefix("torch."))
        side_dy = tdy.to(y_peer.dtype)      # backward's dy in y's dtype, cast once, outside the timed calls
        fns["forward"][1][side] = lambda cast=cast: peer_forward(cast)
        fns["train"][1][side] = lambda cast=cast, side_dy=side_dy: peer_train(cast, side_dy)
    (used,) = ours.plans
    return fns, agreement, used


def first_line(error):
    """The first line of an exception's message, for a results file."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def run_case(cell, T, B, H, sim, rounds, max_reps, scale, launch_s, algo="auto", dtype="float32",
             tensor_cores=False):
    """Both modes of one (cell, shape): two rows, and the measured/estimated ratio of gpurnn and of
    torch's side of record."""
    ours_timer, peer_timer = (Timer("host"), Timer("host")) if sim else (Timer("cupy"), Timer("torch"))
    fns, agreement, used = build_pair(cell, T, B, H, sim, algo, dtype)
    rows, ratios = [], []
    for mode, (ours_fn, peer_fns) in fns.items():
        errors = {}
        ours_fn()                       # warm-up: compilation, cuDNN plans, memory pools
        ours_fn()
        sides = {"gpurnn": (ours_timer, ours_fn)}
        for side, fn in peer_fns.items():
            try:
                with torch_side_settings(side)():
                    fn()
                    fn()
            except RuntimeError as e:   # an anchor torch cannot run here (the side of record raises)
                if side == "torch":
                    raise
                errors[side] = first_line(e)
                continue
            sides[side] = (peer_timer, fn, torch_side_settings(side))
        n_launch = len(record_launches(ours_fn))
        est = estimate(cell, mode, T, B, H, launch_s, used.algo)
        reps = reps_for(max(est[0] * scale[0], est[1] * scale[1]), max_reps)
        times = interleaved(sides, rounds, reps)
        host = host_time(ours_fn, T, sim, 1 if sim else HOST_REPS)
        t_ours, t_peer = median(times["gpurnn"]), median(times["torch"])
        n_flops = flops(cell, mode, T, B, H)
        row = dict(cell=cell, mode=mode, T=T, B=B, I=H, H=H, dtype=dtype, algo=used.algo,
                   plan=used.describe(), numba_launches=n_launch, gpurnn_ms=1e3 * t_ours, torch_ms=1e3 * t_peer,
                   ratio=t_peer / t_ours, gpurnn_tflops=n_flops / t_ours / 1e12,
                   torch_tflops=n_flops / t_peer / 1e12, forward_max_abs_diff=agreement["torch"]["max_abs_diff"],
                   samples=len(times["gpurnn"]), **host)
        for side in ANCHORS:
            ms_key, ratio_key = side_keys(side)
            t = median(times[side]) if side in times else None
            row[ms_key] = None if t is None else 1e3 * t
            row[ratio_key] = None if t is None else t / t_ours
            row[f"{side}_y_dtype"] = agreement[side].get("y_dtype")
            row[f"{side}_max_abs_diff"] = agreement[side].get("max_abs_diff")
            if t is None:
                row[f"{side}_error"] = agreement[side].get("error") or errors.get(side)
        row["peer"] = peer_side(dtype, tensor_cores)
        row["peer_ratio"] = row[side_keys(row["peer"])[1]]
        rows.append(row)
        ratios.append((t_ours / est[0], t_peer / est[1]))
        host_text = ("synchronised with the device" if row["host_synced"]
                     else f"{row['host_us_per_step']:.1f} µs a step")
        print(f"{cell:8s} {mode:7s} T={T:<4d} B={B:<4d} H={H:<5d} gpurnn {row['gpurnn_ms']:9.3f} ms  "
              f"torch {row['torch_ms']:9.3f} ms  torch/gpurnn {row['ratio']:6.2f}  {used.algo:10s} "
              f"launches {n_launch:5d}  max|y - y_torch| {agreement['torch']['max_abs_diff']:.1e}  host {host_text}"
              + (f"  {dtype}: against {TORCH_SIDES[row['peer']][0]} "
                 + ("did not run" if row["peer_ratio"] is None else f"{row['peer_ratio']:.2f}")
                 if row["peer"] != "torch" else ""), flush=True)
        print("         " + "  ".join(
            f"{TORCH_SIDES[side][0]} " + (f"{row[side_keys(side)[0]]:.3f} ms ({row[side_keys(side)[1]]:.2f})"
                                          if row[side_keys(side)[0]] is not None else "did not run")
            for side in ANCHORS), flush=True)
    # The next rows are larger: rescale their estimates by the larger mode's ratio, with a margin.
    scale = tuple(1.25 * max(r[i] for r in ratios) for i in range(2))
    return rows, scale


# ---------------------------------------------------------------- the pieces against a peer
# (cell, T, B, H), I = H: G·H = 256 twice (an RNN at H = 256, an LSTM at H = 64), then LSTMs at
# H = 256, 512 and 1024.
ACC_SHAPES = [("rnn_tanh", 128, 64, 256), ("lstm", 128, 64, 64), ("lstm", 128, 64, 256), ("lstm", 128, 64, 512),
              ("lstm", 128, 64, 1024), ("lstm", 64, 256, 1024)]
GRAPH_SHAPES = [(128, 8, 256), (128, 64, 1024), (512, 16, 512)]      # (T, B, H) of an LSTM, per-step path
SIM_PIECES = [(3, 2, 5)]
SIM_ACC_SHAPES = [("rnn_tanh", 3, 2, 5), ("lstm", 3, 2, 5)]


def accumulate_rows(sim, rounds, max_reps):
    """The accumulation kernel against cuBLAS (CuPy matmul) on the same products, float32, per
    (cell, T, B, H) of ACC_SHAPES: G·H gate rows of dW for N = T·B rows."""
    import numpy as np

    from gpurnn.kernels import cuda as kc
    xp = kc.runtime.xp_of()
    geo = kc.default_geometry()
    timer = Timer("host" if sim else "cupy")
    rows = []
    for cell, T, B, H in (SIM_ACC_SHAPES if sim else ACC_SHAPES):
        N, GH, I = T * B, GATES[cell] * H, H
        rng = np.random.default_rng(0)
        dg_x, x, hp = (xp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((N, GH), (N, I), (N, H)))
        grads = dict(w_ih=xp.zeros((GH, I), np.float32), w_hh=xp.zeros((GH, H), np.float32),
                     b_ih=xp.zeros(GH, np.float32), b_hh=xp.zeros(GH, np.float32))

        def ours(dg_x=dg_x, x=x, hp=hp, grads=grads, cell=cell):
            kc.accumulate_grads(cell, dg_x, x, dg_x, hp, grads, geo)

        def cublas(dg_x=dg_x, x=x, hp=hp):
            xp.matmul(dg_x.T, x)
            xp.matmul(dg_x.T, hp)
        for fn in (ours, cublas, ours, cublas):
            fn()
        times = interleaved({"gpurnn": (timer, ours), "cupy": (timer, cublas)}, rounds,
                            reps_for(2 * N * GH * (I + H) / PEER_FLOPS, max_reps))
        t_ours, t_peer = median(times["gpurnn"]), median(times["cupy"])
        n_flops = 2 * N * GH * (I + H)
        rows.append(dict(cell=cell, T=T, B=B, H=H, N=N, GH=GH, gpurnn_ms=1e3 * t_ours, cupy_ms=1e3 * t_peer,
                         share_of_cublas=t_peer / t_ours, gpurnn_tflops=n_flops / t_ours / 1e12,
                         cupy_tflops=n_flops / t_peer / 1e12))
        r = rows[-1]
        print(f"accumulate {cell:8s} N={N:<6d} G*H={GH:<5d} I=H={H:<5d} gpurnn {r['gpurnn_ms']:8.3f} ms  cuBLAS "
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
                host=platform.node(), platform=platform.platform(),
                # torch's TF32 switches as this process found them, before any side set them
                torch_tf32_at_start=dict(cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                                         matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32))
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


def torch_sides(sim):
    """What each torch side of a row is, for the results file."""
    sides = {side: dict(label=label, cudnn_allow_tf32=cudnn, matmul_allow_tf32=matmul, autocast=autocast,
                        device="cpu" if sim else "cuda", ratio_of_record=side == "torch")
             for side, (label, cudnn, matmul, autocast) in TORCH_SIDES.items()}
    note = ("simulator: torch runs on the CPU, where the TF32 switches change nothing and autocast is "
            "torch's CPU autocast (it casts some cells, leaves others in float32 and refuses others: "
            "see each row's y dtype and error); plumbing only, no GPU figure" if sim else
            "autocast covers the forward call; backward runs outside it, with dy in y's dtype, and no "
            "gradient scaler")
    return dict(sides=sides, note=note)


HOST_TIME_NOTE = ("gpurnn's host time per time step of a call (host_us_per_step): the host clock around "
                  "one call while a kernel that started before it keeps the GPU busy for longer than the "
                  "synchronised call takes; host_synced: the busy kernel had finished when the call "
                  "returned, so the call waited for the device and its host time is not reported")
SIM_HOST_TIME_NOTE = ("simulator: every launch runs on the host before the call returns, so "
                      "host_us_per_step is the whole call per time step, kernels included, and "
                      "host_synced is null (the simulator cannot tell)")


def slug(text):
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def case_dict(case, **extra):
    cell, T, B, H = case
    return dict(cell=cell, T=T, B=B, H=H, **extra)


NOT_MEASURED = "—"


def anchor_cell(row, side):
    """``1.234 (0.56)``: a torch side's ms and torch/gpurnn in a markdown row; ``—`` where the run
    did not measure it (results from before the side existed), ``n/a`` where torch refused; y's
    dtype follows where autocast left it in another."""
    ms_key, ratio_key = side_keys(side)
    if ms_key not in row:
        return NOT_MEASURED
    if row[ms_key] is None:
        return "n/a"
    autocast = TORCH_SIDES[side][3]
    y_dtype = row.get(f"{side}_y_dtype")
    off = f", y {y_dtype}" if autocast and y_dtype and y_dtype != autocast else ""
    return f"{row[ms_key]:.3f} ({row[ratio_key]:.2f}){off}"


def host_cell(row):
    """gpurnn's host µs per time step in a markdown row: ``synced`` where the call waited for the
    device (its host time is then not its own), ``—`` where the run did not measure it."""
    if "host_us_per_step" not in row:
        return NOT_MEASURED
    return "synced" if row.get("host_synced") else f"{row['host_us_per_step']:.1f}"


def markdown(result):
    m, lo = result["machine"], result["launch_overhead"]
    lines = [f"# gpurnn cuda backend vs torch (cuDNN) on {m['gpu']}", "",
             f"{result['date']}; {m['toolchain']}; torch {m['torch']}; tests: {result['tests']}; "
             f"geometry {result['geometry']}; gpurnn algo {result['algo']}, dtype {result.get('dtype', 'float32')}; "
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
              f"torch/gpurnn: torch ms / gpurnn ms (above 1: gpurnn is faster); the ratio of record is "
              f"{TORCH_SIDES['torch'][0]}, the same float32 math as gpurnn's kernels. Each other torch "
              f"column is ms (torch/gpurnn) of torch as users run it, timed in the same run; — not measured "
              f"(the run predates it), n/a torch refused (its error is in the JSON); a dtype after the "
              f"figure: y's dtype where autocast left it other than its own. host µs/step: gpurnn's host "
              f"time per time step outside its kernels; \"synced\": the call waited for the device.", "",
              *([f"**{result['torch_sides']['note']}**", ""] if result.get("torch_sides") else []),
              *([f"**gpurnn computes in {result['dtype']} here: its peer is the "
                 f"{TORCH_SIDES[peer_side(result['dtype'])][0]} column, what torch.nn runs under that autocast "
                 f"(on a GPU cuDNN in float16, whatever the autocast dtype).**", ""]
                if result.get("dtype", "float32") != "float32" else []),
              *([f"**gpurnn's weight gradients run on tensor cores here "
                 f"({'TF32' if result.get('dtype', 'float32') == 'float32' else result['dtype']}): its peer is the "
                 f"{TORCH_SIDES[peer_side(result.get('dtype', 'float32'), True)][0]} column.**", ""]
                if result.get("tensor_cores") else []),
              "| cell | mode | T | B | H | algo | launches | gpurnn ms | " + TORCH_SIDES["torch"][0] + " ms | "
              "torch/gpurnn | " + " | ".join(f"{TORCH_SIDES[side][0]} ms (torch/gpurnn)" for side in ANCHORS)
              + " | host µs/step | gpurnn TFLOP/s | torch TFLOP/s | max abs diff of y |",
              "|---|---|---|---|---|---|---:|---:|---:|---:|" + "---:|" * len(ANCHORS) + "---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['cell']} | {r['mode']} | {r['T']} | {r['B']} | {r['H']} | {r['algo']} | "
                     f"{r['numba_launches']} | {r['gpurnn_ms']:.3f} | {r['torch_ms']:.3f} | {r['ratio']:.2f} | "
                     + " | ".join(anchor_cell(r, side) for side in ANCHORS) + f" | {host_cell(r)} | "
                     f"{r['gpurnn_tflops']:.2f} | {r['torch_tflops']:.2f} | {r['forward_max_abs_diff']:.1e} |")
    if result.get("accumulate"):
        lines += ["", "## The accumulation kernel against cuBLAS", "",
                  "dW_ih += dG_xᵀ x and dW_hh += dG_hᵀ h_prev over N = T·B rows (I = H), against "
                  "CuPy's matmul of the same two products; share = cuBLAS time / gpurnn time.", "",
                  "| cell | T | B | H | N | G·H | gpurnn ms | cuBLAS ms | share of cuBLAS | gpurnn TFLOP/s | "
                  "cuBLAS TFLOP/s |",
                  "|---|---|---|---|---|---|---:|---:|---:|---:|---:|"]
        for r in result["accumulate"]:
            lines.append(f"| {r.get('cell', 'lstm')} | {r['T']} | {r['B']} | {r['H']} | {r['N']} | {r['GH']} | "
                         f"{r['gpurnn_ms']:.3f} | {r['cupy_ms']:.3f} | {r['share_of_cublas']:.2f} | "
                         f"{r['gpurnn_tflops']:.2f} | {r['cupy_tflops']:.2f} |")
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
    cuda_kernels.use_tensor_cores(args.tensor_cores)

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
                         + (f"-{args.dtype}" if args.dtype != "float32" else "")
                         + ("-tensor-cores" if args.tensor_cores else "")
                         + (f"-g{slug(args.geometry)}" if args.geometry else ""))
    stem = out / name
    result = dict(date=now.isoformat(timespec="seconds"), machine=info, tests=args.tests, calibration=args.calibration,
                  geometry=cuda_kernels.default_geometry().__dict__, algo=args.algo, dtype=args.dtype,
                  tensor_cores=args.tensor_cores,
                  budget_s=args.budget,
                  rounds=rounds,
                  reps=max_reps, torch_sides=torch_sides(args.sim),
                  host_time=SIM_HOST_TIME_NOTE if args.sim else HOST_TIME_NOTE,
                  launch_overhead=None, rows=[], skipped=[],
                  not_reached=[case_dict(c) for c in cases])
    write(result, stem)

    lo = result["launch_overhead"] = launch_overhead(args.sim)
    print(f"launch overhead, host µs per launch: empty kernel {lo['empty_kernel_host_us']:.1f}, "
          f"step_forward {lo['step_forward_host_us']:.1f}, CuPy elementwise {lo['cupy_elementwise_host_us']:.1f}; "
          f"step_forward on the device: {lo['step_forward_device_us']} µs", flush=True)
    write(result, stem)
    if args.dtype == "float32":         # float32 pieces: a half run measures the layers alone
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
            rows, scale = run_case(*case, args.sim, rounds, max_reps, scale, launch_s, args.algo, args.dtype,
                                   args.tensor_cores)
            seen.add(cell)
            result["rows"] += rows
        write(result, stem)
    print(f"wrote {stem}.json and {stem}.md: {len(result['rows'])} rows, {len(result['skipped'])} "
          f"shapes skipped for the budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""gpurnn's cpu backend against torch.nn.RNN/LSTM/GRU on the CPU, each side in its own process, same threads.

    python benchmarks/bench_cpu.py                      # the full grid and cold start, about 4 minutes on 2 cores
    python benchmarks/bench_cpu.py --quick              # one tiny shape, seconds (what the smoke test runs)
    python benchmarks/bench_cpu.py --mode interleaved   # both sides in this one process, as before

On machines where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set (some set them for old OpenBLAS builds;
they slow a current NumPy), unset both for the benchmark command alone:
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python ...``. The JSON records both and the BLAS kernel
NumPy runs (named when threadpoolctl is installed).

What is timed, per cell and shape (T, B, I, H), float32, one layer, one direction, the same x, dy
and weights on both sides:
    forward  ``y = m(x)`` with everything backward needs saved (torch: autograd enabled)
    train    one training step: zero the grads, forward, backward of a fixed dy (weight grads and dx)
FLOPs are the dense products only (the pointwise cell math is a few per element, not counted):
    forward  2·T·B·G·H·(I + H)        input projection + recurrent product
    train    3 × forward              + dh through W_hh, dW_hh, dW_ih, dx
The share of "sgemm" is gpurnn's GFLOP/s over a square float32 matrix product through NumPy,
measured after every row of the same run: the best this machine's BLAS does on the same threads,
at the same moment. The "BLAS floor" is the time of the same dense products alone through NumPy's
BLAS, of the same shapes and in the same order (see ``blas_floor``), timed alternately with both
sides: no implementation on that BLAS goes below it. gpurnn's float32 path does not use that BLAS
(its own tiled products), so it can: the table's "gpurnn - floor" column, gpurnn's time less the
floor, is then negative.

Why each side runs in its own process (``--mode apart``, the default): NumPy's OpenBLAS and torch's
OpenMP keep their worker threads spinning for a while after each call. In one process both pools
exist side by side, and on a small machine each side is timed beside the other's spinning workers:
not what a user who runs one of the two sees. So for every (cell, shape) this script starts one child
process per side (``--child``): gpurnn's layer, torch's, and the BLAS floor with the sgemm reference
(NumPy alone). Each child fixes its threads before its libraries start their pools (the thread
variables, then torch.set_num_threads, numba.set_num_threads and threadpoolctl's limit, where it has
those libraries), builds its side, warms it up (``--warmup`` untimed calls of each mode), reports its
process id and threads, then answers the parent's requests "MODE K" with the seconds of K timed
calls (a JSON list on stdout). The parent runs ``--rounds`` rounds of one block of ``--reps`` calls per
side, the order reversed every other round (gpurnn, torch, floor, then floor, torch, gpurnn), while
the other children wait idle on their input. ``--mode interleaved`` builds every side in this one
process and alternates them the same way, for comparison with the figures of earlier runs.

Each block starts after ``--pause`` seconds of rest and 0.1 s of untimed calls (``timed_block``):
the pools of the side that ran before, in its own process or not, spin for a while after its last
call, and a block that started right away would share the cores with those spinners. Reported times are medians over all
timed calls of a side, with the spread of its rounds (the lowest and highest median of one block);
the ratio is torch / gpurnn (> 1: gpurnn is faster).

Through gpurnn.torch (``--no-bridge`` skips it), per shape, an LSTM training step: in a torch model
(the LSTM and a linear head on its last step) with gpurnn.torch.LSTM and with torch.nn.LSTM, each in
a process of its own; and gpurnn.torch.LSTM alone against gpurnn's own layer on the same dy, both in
the gpurnn.torch process (the same library), whose difference is the bridge's cost.

Cold start: seconds from starting a Python process to its first finished training step (import,
build an LSTM/GRU/RNN, forward, backward), once with an empty Numba cache (NUMBA_CACHE_DIR set to a
fresh temporary folder, so every kernel compiles) and then with that cache warm.
"""

import argparse
import os
import sys

# Threads are fixed before NumPy, Numba or torch start their pools (in the children as in the parent).
_threads_arg = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), None)
if _threads_arg is None and "--threads" in sys.argv:
    _threads_arg = sys.argv[sys.argv.index("--threads") + 1]
THREADS = int(_threads_arg or 2)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import contextlib  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import gpurnn  # noqa: E402
from host import Child, cpu_facts  # noqa: E402
from gpurnn.kernels.vocabulary import GATES  # noqa: E402

# (label, T, B, I, H): launch/overhead bound -> compute bound.
GRID = [
    ("small", 100, 8, 32, 64),
    ("medium", 100, 32, 128, 256),
    ("large", 50, 64, 256, 512),
]
QUICK_GRID = [("tiny", 5, 2, 3, 4)]
RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("apart", "interleaved")

# The processes of a comparison ("kinds") and what each runs: the rows' three sides, each in its own
# process in the apart mode; the gpurnn.torch rows' four, of which three are gpurnn's.
ROW_SIDES = {"gpurnn": "gpurnn", "torch": "torch", "blas": "blas"}
BRIDGE_SIDES = {"gpurnn.torch model": "bridge-gpurnn", "torch.nn model": "bridge-torch",
                "gpurnn.torch": "bridge-gpurnn", "gpurnn": "bridge-gpurnn"}
USES_TORCH = ("torch", "bridge-gpurnn", "bridge-torch")
USES_NUMBA = ("gpurnn", "bridge-gpurnn")


def flops(mode, cell, T, B, I, H):
    """Dense-product FLOPs of one call (see the module docstring)."""
    forward = 2 * T * B * GATES[cell] * H * (I + H)
    return forward if mode == "forward" else 3 * forward


# ---------------------------------------------------------------- the sides
def inputs(cell, T, B, I, H):
    """x (T, B, I), dy (T, B, H) and the layer's weights under torch's names, float32, drawn from
    NumPy with fixed seeds: the same numbers in every process, so that both sides compute the same
    thing without either importing the other. The weights are uniform in ±1/√H, as both libraries
    initialise them."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    GH, k = GATES[cell] * H, 1 / np.sqrt(H)
    shapes = dict(weight_ih_l0=(GH, I), weight_hh_l0=(GH, H), bias_ih_l0=(GH,), bias_hh_l0=(GH,))
    weights = {name: rng.uniform(-k, k, s).astype(np.float32) for name, s in shapes.items()}
    return x, dy, weights


def gpurnn_model(cell, I, H, backend):
    kw = dict(backend=backend, dtype="float32", seed=0)
    if cell.startswith("rnn_"):
        return gpurnn.RNN(I, H, nonlinearity=cell[4:], **kw)
    return {"lstm": gpurnn.LSTM, "gru": gpurnn.GRU}[cell](I, H, **kw)


def torch_model(torch, cell, I, H):
    if cell.startswith("rnn_"):
        return torch.nn.RNN(I, H, nonlinearity=cell[4:])
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H)


def gpurnn_calls(cell, T, B, I, H, backend):
    """{mode: zero-argument function} of gpurnn's layer on ``inputs``."""
    x, dy, weights = inputs(cell, T, B, I, H)
    m = gpurnn_model(cell, I, H, backend)
    m.load_state_dict(weights)

    def forward():
        m(x)

    def train():
        m.zero_grad()
        m(x)
        m.backward(dy)

    return {"forward": forward, "train": train}


def torch_calls(torch, cell, T, B, I, H):
    """{mode: zero-argument function} of torch.nn's layer on ``inputs``; dx is computed too, as gpurnn does."""
    x, dy, weights = inputs(cell, T, B, I, H)
    tm = torch_model(torch, cell, I, H)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)

    def forward():
        tm(xt)

    def train():
        tm.zero_grad(set_to_none=False)
        xt.grad = None
        y, _ = tm(xt)
        y.backward(dyt)

    return {"forward": forward, "train": train}


def blas_calls(cell, T, B, I, H, sgemm_n):
    """{name: zero-argument function}: the BLAS floor of each mode (``blas_floor``) and "sgemm", a
    square float32 product of side ``sgemm_n`` through NumPy (its BLAS, its threads)."""
    forward, train = blas_floor(cell, T, B, I, H)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((sgemm_n, sgemm_n)).astype(np.float32)
    b = rng.standard_normal((sgemm_n, sgemm_n)).astype(np.float32)
    c = np.empty((sgemm_n, sgemm_n), np.float32)

    def sgemm():
        np.matmul(a, b, out=c)

    return {"forward": forward, "train": train, "sgemm": sgemm}


def bridge_calls(torch, T, B, I, H, backend, sides=tuple(BRIDGE_SIDES)):
    """{side: zero-argument function} of the ``sides`` asked for, on the same x, float32:

        "gpurnn.torch model", "torch.nn model"   one training step of a torch model: an LSTM, a
                                                 linear head on its last step, MSE, backward
        "gpurnn.torch", "gpurnn"                 gpurnn.torch.LSTM alone (backward of a fixed dy
                                                 through autograd) and gpurnn's own LSTM layer
                                                 (zero_grad, forward, backward of the same dy)

    The last two do the same arithmetic on the same numbers; their difference is what the bridge
    costs (autograd, the views, the saved tensors). Only the sides asked for are built: the
    torch.nn model's process imports no gpurnn.torch.
    """
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((T, B, I)).astype(np.float32)).requires_grad_(True)
    target = torch.from_numpy(rng.standard_normal((B, 1)).astype(np.float32))
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    dyt = torch.from_numpy(dy)

    def model(lstm):
        torch.manual_seed(0)
        return torch.nn.ModuleDict(dict(rnn=lstm, head=torch.nn.Linear(H, 1)))

    def model_step(m):
        def train():
            m.zero_grad()                   # torch's default: the grads are set to None
            x.grad = None
            y, _ = m["rnn"](x)
            torch.nn.functional.mse_loss(m["head"](y[-1]), target).backward()
        return train

    calls = {}
    if "torch.nn model" in sides:
        torch.manual_seed(0)
        calls["torch.nn model"] = model_step(model(torch.nn.LSTM(I, H)))
    if {"gpurnn.torch model", "gpurnn.torch", "gpurnn"} & set(sides):
        import gpurnn.torch as gt
        torch.manual_seed(0)
        ours = model(gt.LSTM(I, H, backend=backend))
        layer = gpurnn.LSTM(I, H, backend=backend, dtype="float32")
        layer.load_state_dict({k: v.detach().numpy() for k, v in ours["rnn"].state_dict().items()})

        def bridge_alone():
            ours.zero_grad()
            x.grad = None
            y, _ = ours["rnn"](x)
            y.backward(dyt)

        def layer_alone():
            layer.zero_grad()
            layer(x.detach())
            layer.backward(dy)

        calls.update({"gpurnn.torch model": model_step(ours), "gpurnn.torch": bridge_alone, "gpurnn": layer_alone})
    return {side: calls[side] for side in sides}


def blas_floor(cell, T, B, I, H):
    """The dense products of one forward / training step and nothing else, through NumPy.

    The same products, of the same shapes, in the same order as the cpu backend: no cell math, no
    Python besides the loop. Its time is the floor any implementation on this BLAS stands on; the
    gap between it and gpurnn's time is what the backend itself costs.
    """
    GH = GATES[cell] * H
    rng = np.random.default_rng(2)
    f32 = np.float32
    x2 = rng.standard_normal((T * B, I)).astype(f32)
    w_ih, w_hh_t = rng.standard_normal((GH, I)).astype(f32), rng.standard_normal((H, GH)).astype(f32)
    w_hh = np.ascontiguousarray(w_hh_t.T)
    hs = rng.standard_normal((T + 1, B, H)).astype(f32)
    dg = rng.standard_normal((T, B, GH)).astype(f32)
    hw, dh = np.empty((B, GH), f32), np.empty((B, H), f32)

    def forward():
        np.dot(x2, w_ih.T)                                  # XW
        for t in range(T):
            np.dot(hs[t], w_hh_t, out=hw)                   # h_{t-1} @ W_hhᵀ

    def train():
        forward()
        for t in range(T - 1, -1, -1):
            np.dot(dg[t], w_hh, out=dh)                     # dG_t @ W_hh
        dg2 = dg.reshape(T * B, GH)
        np.dot(dg2.T, x2)                                   # dW_ih
        np.dot(dg2.T, hs[:T].reshape(T * B, H))             # dW_hh
        np.dot(dg2, w_ih)                                   # dx

    return forward, train


def side_calls(kind, torch, cell, shape, args):
    """{name: zero-argument function} of one process kind (ROW_SIDES, BRIDGE_SIDES) at ``shape``."""
    T, B, I, H = shape
    if kind == "gpurnn":
        return gpurnn_calls(cell, T, B, I, H, args.backend)
    if kind == "torch":
        return torch_calls(torch, cell, T, B, I, H)
    if kind == "blas":
        return blas_calls(cell, T, B, I, H, args.sgemm_n)
    sides = [side for side, k in BRIDGE_SIDES.items() if k == kind]
    return bridge_calls(torch, T, B, I, H, args.backend, sides)


# ---------------------------------------------------------------- threads
def limit_threads(n, torch=None, numba=None):
    """Every thread pool of this process to ``n`` threads: torch's and Numba's where given, then
    every pool threadpoolctl finds (NumPy's BLAS, OpenMP); the environment variables set at the top
    of this script already sized them at start. Returns the threads each pool then reports."""
    seen = {}
    if torch is not None:
        torch.set_num_threads(n)
        seen["torch"] = torch.get_num_threads()
    if numba is not None:
        numba.set_num_threads(n)
        seen["numba"] = numba.get_num_threads()
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        threadpool_limits(n)
        seen["pools"] = {p["prefix"]: p["num_threads"] for p in threadpool_info()}
    except ImportError:
        pass                              # the environment variables set above already fix BLAS
    return seen


# ---------------------------------------------------------------- timing
WAKE_S = 0.1     # untimed calls after the pause, at least this long


def timed_block(fn, reps, pause):
    """Seconds of ``reps`` timed calls, after ``pause`` seconds of rest and WAKE_S seconds of
    untimed calls (at least one). Those wake the thread pool and warm the caches, and more: on a
    virtual machine a core that slept through the pause takes tens of milliseconds to come back
    to speed (measured here: gpurnn's small LSTM step, which runs on both cores, took 2.4 ms for
    its first 15 steps after 0.2 s of rest, 1.6 ms back to back), which a training loop never sees."""
    time.sleep(pause)
    start = time.perf_counter()
    fn()
    while time.perf_counter() - start < WAKE_S:
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def warm_up(calls, n):
    """``n`` untimed calls of each function: compile, allocate, grow the pools."""
    for fn in calls.values():
        for _ in range(n):
            fn()


def alternate(blocks, rounds):
    """{name: [[seconds of one block], ...]}: ``rounds`` rounds of one block per name, in the order
    given, reversed every other round (a, b, c, then c, b, a)."""
    names = list(blocks)
    samples = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            samples[n].append(blocks[n]())
    return samples


def summary_ms(blocks):
    """(median ms over every sample, [lowest, highest] median ms of one block, every sample in ms)."""
    flat = [s * 1e3 for block in blocks for s in block]
    per_block = [float(np.median(block)) * 1e3 for block in blocks]
    return float(np.median(flat)), [min(per_block), max(per_block)], flat


def sgemm_gflops(n, seconds):
    """GFLOP/s of a square float32 product of side n from the median of its timed calls."""
    return 2 * n ** 3 / float(np.median(seconds)) / 1e9


# ---------------------------------------------------------------- where the sides run
@contextlib.contextmanager
def in_one_process(args, torch, kinds, cell, shape):
    """--mode interleaved: every kind's functions built in this process, warmed up. Yields
    (block(kind, name, reps) -> seconds, {kind: this process's pid and threads})."""
    calls = {kind: side_calls(kind, torch, cell, shape, args) for kind in kinds}
    for c in calls.values():
        warm_up(c, args.warmup)
    here = {kind: dict(pid=os.getpid(), kind=kind, threads=args.threads_seen) for kind in kinds}
    yield (lambda kind, name, reps: timed_block(calls[kind][name], reps, args.pause)), here


@contextlib.contextmanager
def in_own_processes(args, kinds, cell, shape):
    """--mode apart: one child process per kind (``child``), started together; yields, once every
    child has built and warmed its side, (block(kind, name, reps) -> seconds, {kind: the child's
    pid and threads}). Between blocks the children wait idle, reading their input."""
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--backend", args.backend,
           "--pause", str(args.pause), "--warmup", str(args.warmup), "--sgemm-n", str(args.sgemm_n),
           "--cell", cell, "--shape", *map(str, shape)]
    children = {}
    try:
        for kind in kinds:
            children[kind] = Child(cmd + ["--child", kind])
        ready = {kind: c.read_json() for kind, c in children.items()}
        yield (lambda kind, name, reps: children[kind].ask(f"{name} {reps}")), ready
    finally:
        for c in children.values():
            c.close()


def child(args):
    """One process kind at one shape, driven through stdin (host.Child): fixes its threads, builds
    its side (``side_calls``), warms it up and answers {"pid", "kind", "threads"}; then each line
    "NAME K" runs 0.1 s of untimed calls of NAME and K timed ones (``timed_block``, after ``--pause``)
    and answers their seconds, a JSON list. It exits at the end of its input. Only the answers go
    to stdout; anything else printed goes to stderr."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    torch = numba = None
    if args.child in USES_TORCH:
        import torch
    if args.child in USES_NUMBA:
        import numba
    threads = limit_threads(args.threads, torch, numba)
    calls = side_calls(args.child, torch, args.cell, tuple(args.shape), args)
    warm_up(calls, args.warmup)

    def answer(value):
        answers.write(json.dumps(value) + "\n")
        answers.flush()

    answer(dict(pid=os.getpid(), kind=args.child, threads=threads))
    for line in sys.stdin:
        name, reps = line.rsplit(maxsplit=1)
        answer(timed_block(calls[name], int(reps), args.pause))


def places(args, torch):
    """(kinds, cell, shape) -> the context the kinds run in (``in_own_processes`` or ``in_one_process``)."""
    if args.mode == "apart":
        return lambda kinds, cell, shape: in_own_processes(args, kinds, cell, shape)
    return lambda kinds, cell, shape: in_one_process(args, torch, kinds, cell, shape)


# ---------------------------------------------------------------- the rows
def cpu_rows(args, place, grid):
    """One row per (cell, shape, mode): gpurnn, torch and the BLAS floor in alternating rounds, then
    an sgemm in the floor's (NumPy's) process. Returns (rows, sgemm GFLOP/s after each row)."""
    rows, sgemm = [], []
    for cell in args.cells:
        for size, T, B, I, H in grid:
            with place(tuple(ROW_SIDES.values()), cell, (T, B, I, H)) as (block, processes):
                for mode in args.modes:
                    load = os.getloadavg()[0]          # other jobs on the machine make every time drift
                    samples = alternate({side: functools.partial(block, kind, mode, args.reps)
                                         for side, kind in ROW_SIDES.items()}, args.rounds)
                    sgemm.append(sgemm_gflops(args.sgemm_n, block("blas", "sgemm", 3)))
                    g, g_spread, g_samples = summary_ms(samples["gpurnn"])
                    t, t_spread, t_samples = summary_ms(samples["torch"])
                    floor, floor_spread, floor_samples = summary_ms(samples["blas"])
                    f = flops(mode, cell, T, B, I, H)
                    rows.append(dict(
                        cell=cell, size=size, T=T, B=B, I=I, H=H, mode=mode, flops=f,
                        gpurnn_ms=g, torch_ms=t, speedup=t / g,
                        gpurnn_gflops=f / g / 1e6, torch_gflops=f / t / 1e6,
                        blas_floor_ms=floor, blas_floor_gflops=f / floor / 1e6,
                        gpurnn_spread_ms=g_spread, torch_spread_ms=t_spread, blas_floor_spread_ms=floor_spread,
                        sgemm_gflops_nearby=sgemm[-1], load_1min_before=load,
                        gpurnn_samples_ms=g_samples, torch_samples_ms=t_samples, blas_floor_samples_ms=floor_samples,
                        processes={side: processes[kind] for side, kind in ROW_SIDES.items()}))
                    print(f"{cell:8s} {size:6s} T={T:<3d} B={B:<3d} I={I:<3d} H={H:<3d} {mode:7s} "
                          f"gpurnn {g:9.2f} ms  torch {t:9.2f} ms  speed-up {t / g:5.2f}x  "
                          f"{f / g / 1e6:6.1f} GFLOP/s  (BLAS floor {floor:.2f} ms)", flush=True)
    return rows, sgemm


def bridge_rows(args, place, grid):
    """The LSTM of every shape through gpurnn.torch: in a torch model against torch.nn, and alone
    against gpurnn's own layer (bridge_calls), the four in alternating rounds."""
    rows = []
    for size, T, B, I, H in grid:
        kinds = tuple(dict.fromkeys(BRIDGE_SIDES.values()))
        with place(kinds, "lstm", (T, B, I, H)) as (block, processes):
            samples = alternate({side: functools.partial(block, kind, side, args.reps)
                                 for side, kind in BRIDGE_SIDES.items()}, args.rounds)
        ms, spread, flat = {}, {}, {}
        for side, blocks in samples.items():
            ms[side], spread[side], flat[side] = summary_ms(blocks)
        bridge, layer = ms["gpurnn.torch"], ms["gpurnn"]
        row = dict(cell="lstm", size=size, T=T, B=B, I=I, H=H, mode="train",
                   model_ms=ms["gpurnn.torch model"], torch_model_ms=ms["torch.nn model"],
                   speedup=ms["torch.nn model"] / ms["gpurnn.torch model"],
                   bridge_ms=bridge, layer_ms=layer, overhead_ms=bridge - layer,
                   overhead_pct=100 * (bridge - layer) / layer,
                   spread_ms=spread, samples_ms=flat,
                   processes={side: processes[kind] for side, kind in BRIDGE_SIDES.items()})
        rows.append(row)
        print(f"bridge   {size:6s} T={T:<3d} B={B:<3d} I={I:<3d} H={H:<3d} model with gpurnn.torch "
              f"{row['model_ms']:8.2f} ms, with torch.nn {row['torch_model_ms']:8.2f} ms, speed-up "
              f"{row['speedup']:5.2f}x; gpurnn.torch alone {bridge:8.2f} ms, gpurnn layer {layer:8.2f} ms "
              f"({row['overhead_pct']:+.1f}%)", flush=True)
    return rows


# ---------------------------------------------------------------- cold start
COLD_SCRIPT = """
import sys, time
import numpy as np
import gpurnn
cell, backend = sys.argv[1], sys.argv[2]
T, B, I, H = 20, 8, 16, 32
kw = dict(backend=backend, dtype="float32", seed=0)
m = (gpurnn.RNN(I, H, nonlinearity=cell[4:], **kw) if cell.startswith("rnn_")
     else {"lstm": gpurnn.LSTM, "gru": gpurnn.GRU}[cell](I, H, **kw))
x = np.ones((T, B, I), np.float32)
m.zero_grad()
y = m(x)[0]
m.backward(np.ones_like(y))
print(repr(time.time()))
"""

COLD_SCRIPT_TORCH = """
import sys, time
import torch
cell = sys.argv[1]
T, B, I, H = 20, 8, 16, 32
m = (torch.nn.RNN(I, H, nonlinearity=cell[4:]) if cell.startswith("rnn_")
     else {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H))
x = torch.ones(T, B, I, requires_grad=True)
y = m(x)[0]
y.backward(torch.ones_like(y))
print(repr(time.time()))
"""


def seconds_to_first_step(script, args, env):
    start = time.time()
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1]) - start


def cold_start(cells, backend, warm_runs):
    rows = []
    for cell in cells:
        with tempfile.TemporaryDirectory(prefix="gpurnn-numba-cache-") as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            empty = seconds_to_first_step(COLD_SCRIPT, [cell, backend], env)
            warm = [seconds_to_first_step(COLD_SCRIPT, [cell, backend], env) for _ in range(warm_runs)]
        torch_s = [seconds_to_first_step(COLD_SCRIPT_TORCH, [cell], dict(os.environ)) for _ in range(warm_runs)]
        rows.append(dict(cell=cell, empty_cache_s=empty, warm_cache_s=float(np.median(warm)),
                         warm_cache_runs_s=warm, torch_s=float(np.median(torch_s))))
        print(f"cold start {cell:8s}  empty cache {empty:6.2f} s   warm cache {np.median(warm):5.2f} s"
              f"   (torch {np.median(torch_s):5.2f} s)", flush=True)
    return rows


# ---------------------------------------------------------------- machine and report
def machine_info(torch):
    import numba
    info = dict(cpu_facts(), numpy=np.__version__, numba=numba.__version__, torch=torch.__version__,
                gpurnn=getattr(gpurnn, "__version__", "?"))
    info["env"] = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                                  "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                                                  "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = threadpool_info()
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    info["torch_config"] = torch.__config__.show()
    return info


def blas_kernel(machine):
    """'OpenBLAS 0.3.x (Haswell kernels)' or what else NumPy's BLAS says it is."""
    pools = machine.get("threadpools")
    if not isinstance(pools, list):
        return "NumPy's BLAS (install threadpoolctl to name it)"
    for pool in pools:
        if pool.get("user_api") == "blas":
            arch = f" ({pool['architecture']} kernels)" if pool.get("architecture") else ""
            return f"NumPy's BLAS {pool.get('internal_api')} {pool.get('version')}{arch}"
    return "NumPy's BLAS (not found by threadpoolctl)"


def threads_text(n):
    return f"{n} thread{'s' if n != 1 else ''}"


def how_measured(result):
    """The caption's account of the measurement, from the mode (a result without one ran interleaved)."""
    where = ("each side in its own process" if result.get("mode") == "apart"
             else "both sides in one process")
    return (f"{where}, {threads_text(result['threads'])}, medians of "
            f"{result['rounds']} alternating rounds of {result['reps']} calls")


def with_spread(ms, spread):
    """``9.61 (9.52-9.80)``: a median and the lowest and highest median of one round."""
    return f"{ms:.2f} ({spread[0]:.2f}-{spread[1]:.2f})"


def markdown(result):
    lines = [f"gpurnn against torch, float32: {how_measured(result)}; in parentheses the lowest and highest "
             "median of one round.", "",
             "| cell | shape T·B·I·H | mode | gpurnn ms | torch ms | speed-up | gpurnn GFLOP/s | % of sgemm "
             "| BLAS floor ms | gpurnn - floor ms |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['cell']} | {r['size']} {r['T']}·{r['B']}·{r['I']}·{r['H']} | {r['mode']} | "
                     f"{with_spread(r['gpurnn_ms'], r['gpurnn_spread_ms'])} | "
                     f"{with_spread(r['torch_ms'], r['torch_spread_ms'])} | {r['speedup']:.2f}x | "
                     f"{r['gpurnn_gflops']:.1f} | {r['pct_sgemm']:.0f}% | "
                     f"{with_spread(r['blas_floor_ms'], r['blas_floor_spread_ms'])} | "
                     f"{r['gpurnn_ms'] - r['blas_floor_ms']:.2f} |")
    s = result["sgemm"]
    lines.append("")
    lines.append(f"{result['machine'].get('lscpu Model name', result['machine']['processor'])}, "
                 f"{result['machine']['cpu_count']} CPUs; {threads_text(result['threads'])} on each side; "
                 f"{blas_kernel(result['machine'])}; torch {result['machine']['torch']}, "
                 f"NumPy {result['machine']['numpy']}, Numba {result['machine']['numba']}; "
                 f"load average {result['load_average_before'][0]:.1f} before, "
                 f"{result['load_average_after'][0]:.1f} after.")
    lines.append("")
    lines.append(f"sgemm (NumPy, float32, n={s['n']}, {threads_text(result['threads'])}"
                 f"{', in the BLAS floor process' if result.get('mode') == 'apart' else ''}): median "
                 f"{s['median_gflops']:.1f} GFLOP/s over {len(s['samples_gflops'])} measurements "
                 f"(min {min(s['samples_gflops']):.1f}, max {max(s['samples_gflops']):.1f}).")
    if result.get("bridge_rows"):
        apart = result.get("mode") == "apart"
        lines += ["", "LSTM training step through gpurnn.torch: in a torch model (the LSTM, a linear head on its "
                  "last step, MSE, backward) against the same model with torch.nn.LSTM"
                  f"{', each in its own process' if apart else ''}; and gpurnn.torch.LSTM alone against gpurnn's "
                  f"own LSTM layer{', both in the gpurnn.torch process' if apart else ''}, backward of the same dy "
                  "(the difference is what the bridge costs).", "",
                  "| shape T·B·I·H | model, gpurnn.torch ms | model, torch.nn ms | speed-up | gpurnn.torch.LSTM ms "
                  "| gpurnn.LSTM ms | bridge cost |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in result["bridge_rows"]:
            spread = r["spread_ms"]
            lines.append(f"| {r['size']} {r['T']}·{r['B']}·{r['I']}·{r['H']} | "
                         f"{with_spread(r['model_ms'], spread['gpurnn.torch model'])} | "
                         f"{with_spread(r['torch_model_ms'], spread['torch.nn model'])} | {r['speedup']:.2f}x | "
                         f"{with_spread(r['bridge_ms'], spread['gpurnn.torch'])} | "
                         f"{with_spread(r['layer_ms'], spread['gpurnn'])} | "
                         f"{r['overhead_ms']:+.2f} ms ({r['overhead_pct']:+.1f}%) |")
    if result.get("cold_start"):
        lines += ["", "| cell | first training step, empty Numba cache | warm cache | torch |", "|---|---:|---:|---:|"]
        for c in result["cold_start"]:
            lines.append(f"| {c['cell']} | {c['empty_cache_s']:.2f} s | {c['warm_cache_s']:.2f} s "
                         f"| {c['torch_s']:.2f} s |")
    return "\n".join(lines) + "\n"


def plot(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = result["rows"]
    labels = list(dict.fromkeys((r["cell"], r["size"]) for r in rows))      # in grid order
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4))
    width = 0.4
    for k, mode in enumerate(("forward", "train")):
        vals = [next((r["speedup"] for r in rows if (r["cell"], r["size"], r["mode"]) == (c, s, mode)), 0)
                for c, s in labels]
        xs = np.arange(len(labels)) + (k - 0.5) * width
        ax.bar(xs, vals, width, label=mode)
        for xpos, v in zip(xs, vals):
            ax.annotate(f"{v:.2g}", (xpos, v), ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log", base=2)                 # speed-ups span orders of magnitude
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(labels)), [f"{c}\n{s}" for c, s in labels], fontsize=8)
    ax.set_ylabel("speed-up over torch (torch ms / gpurnn ms)")
    apart = ", each side in its own process" if result.get("mode") == "apart" else ""
    ax.set_title(f"gpurnn cpu vs torch {result['machine']['torch']}, float32, {result['threads']} threads{apart}",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    p.add_argument("--mode", choices=MODES, default="apart",
                   help="apart: each side in its own process (default); interleaved: all in this one")
    p.add_argument("--cells", nargs="+", default=["rnn_tanh", "lstm", "gru"], choices=list(GATES))
    p.add_argument("--sizes", nargs="+", default=None, help="subset of the grid: small medium large")
    p.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    p.add_argument("--backend", default="cpu", help="gpurnn backend (default cpu)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3, help="timed calls per block")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each function before the rounds")
    p.add_argument("--pause", type=float, default=0.2, help="seconds of rest before each block")
    p.add_argument("--sgemm-n", type=int, default=2048)
    p.add_argument("--no-cold-start", action="store_true")
    p.add_argument("--no-bridge", action="store_true", help="skip the gpurnn.torch rows (LSTM in a torch model)")
    p.add_argument("--quick", action="store_true", help="one tiny shape, two rounds, no cold start")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON, markdown and plot")
    p.add_argument("--name", default="bench_cpu", help="file name stem of the outputs")
    p.add_argument("--child", choices=sorted(set(ROW_SIDES.values()) | set(BRIDGE_SIDES.values())),
                   help=argparse.SUPPRESS)
    p.add_argument("--cell", help=argparse.SUPPRESS)
    p.add_argument("--shape", nargs=4, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads != THREADS:
        raise SystemExit("--threads must be given before the interpreter starts its pools; pass it on the command line")
    if args.child:
        return child(args)
    grid = QUICK_GRID if args.quick else [g for g in GRID if args.sizes is None or g[0] in args.sizes]
    if args.quick:
        args.rounds, args.reps, args.pause, args.sgemm_n, args.no_cold_start = 2, 2, 0.0, 256, True
        args.cells = args.cells[:1] if args.cells != ["rnn_tanh", "lstm", "gru"] else ["lstm"]

    import torch
    if args.mode == "interleaved":
        import numba
        args.threads_seen = limit_threads(args.threads, torch, numba)
    started = datetime.datetime.now(datetime.timezone.utc)
    result = dict(started_utc=started.isoformat(timespec="seconds"), mode=args.mode, threads=args.threads,
                  rounds=args.rounds, reps=args.reps, warmup=args.warmup, pause=args.pause,
                  backend=args.backend, dtype="float32", pid=os.getpid(), load_average_before=os.getloadavg(),
                  command=" ".join([os.path.basename(sys.executable)] + sys.argv),
                  machine=machine_info(torch))
    print(f"{how_measured(result)}; load average {os.getloadavg()}", flush=True)

    place = places(args, torch)
    result["rows"], sgemm_samples = cpu_rows(args, place, grid)
    if not args.no_bridge:
        result["bridge_rows"] = bridge_rows(args, place, grid)
    seen = [p["threads"] for r in result["rows"] + result.get("bridge_rows", []) for p in r["processes"].values()]
    result["torch_threads"] = next((s["torch"] for s in seen if "torch" in s), None)
    result["numba_threads"] = next((s["numba"] for s in seen if "numba" in s), None)
    sgemm = float(np.median(sgemm_samples))
    result["sgemm"] = dict(n=args.sgemm_n, median_gflops=sgemm, samples_gflops=sgemm_samples)
    for row in result["rows"]:
        row["pct_sgemm"] = 100 * row["gpurnn_gflops"] / sgemm
    if not args.no_cold_start:
        result["cold_start"] = cold_start(args.cells, args.backend, warm_runs=3)
    result["load_average_after"] = os.getloadavg()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str))
    table = markdown(result)
    (out / f"{args.name}.md").write_text(table)
    png = plot(result, out / f"{args.name}.png")
    print()
    print(table)
    print(f"wrote {out / (args.name + '.json')}, {out / (args.name + '.md')}" + (f", {png}" if png else ""))
    return result


if __name__ == "__main__":
    main()

"""gpurnn's cpu backend against torch.nn.RNN/LSTM/GRU on the CPU, in one process, same threads.

    python benchmarks/bench_cpu.py                 # the full grid and cold start, about 3 minutes on 2 cores
    python benchmarks/bench_cpu.py --quick         # one tiny shape, seconds (what the smoke test runs)

On machines where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set (some set them for old OpenBLAS builds;
they slow a current NumPy), unset both for the benchmark command alone:
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python ...``. The JSON records both and the BLAS kernel
NumPy runs (named when threadpoolctl is installed).

What is timed, per cell and shape (T, B, I, H), float32, one layer, one direction:
    forward  ``y = m(x)`` with everything backward needs saved (torch: autograd enabled)
    train    one training step: zero the grads, forward, backward of a fixed dy (weight grads and dx)
FLOPs are the dense products only (the pointwise cell math is a few per element, not counted):
    forward  2·T·B·G·H·(I + H)        input projection + recurrent product
    train    3 × forward              + dh through W_hh, dW_hh, dW_ih, dx
The share of "sgemm" is gpurnn's GFLOP/s over a square float32 matrix product through NumPy (the
same BLAS as gpurnn's), measured between the rows of the same run: the best this machine's BLAS
does on the same threads, at the same moment. The "BLAS floor" is the time of the same dense
products alone, of the same shapes and in the same order (see ``blas_floor``), timed interleaved
with both sides: no implementation on this BLAS goes below it, and gpurnn's distance to it is what
its own cell kernels and Python cost (the table's "outside the products" column: gpurnn's time less
the floor).

How peers are interleaved: for every row both sides are warmed up, then ``--rounds`` rounds each run
a block of ``--reps`` timed calls of one side and then of the other (the order alternates); each block
starts after a short pause and one untimed call. The pause matters on a small machine: NumPy's
OpenBLAS and torch's OpenMP keep their worker threads spinning for a while after each call, and a
block that started right after the other library's would share the cores with those spinners.
Reported times are medians over all timed calls; the ratio is torch / gpurnn (> 1: gpurnn is faster).

Through gpurnn.torch (``--no-bridge`` skips it), per shape, an LSTM training step: in a torch model
(the LSTM and a linear head on its last step) with gpurnn.torch.LSTM and with torch.nn.LSTM; and
gpurnn.torch.LSTM alone against gpurnn's own layer on the same dy, whose difference is the bridge's cost.

Cold start: seconds from starting a Python process to its first finished training step (import,
build an LSTM/GRU/RNN, forward, backward), once with an empty Numba cache (NUMBA_CACHE_DIR set to a
fresh temporary folder, so every kernel compiles) and then with that cache warm.
"""

import argparse
import os
import sys

# Threads are fixed before NumPy, Numba or torch start their pools.
_threads_arg = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), None)
if _threads_arg is None and "--threads" in sys.argv:
    _threads_arg = sys.argv[sys.argv.index("--threads") + 1]
THREADS = int(_threads_arg or 2)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

import gpurnn  # noqa: E402
from host import cpu_facts  # noqa: E402
from gpurnn.kernels.vocabulary import GATES  # noqa: E402

# (label, T, B, I, H): launch/overhead bound -> compute bound.
GRID = [
    ("small", 100, 8, 32, 64),
    ("medium", 100, 32, 128, 256),
    ("large", 50, 64, 256, 512),
]
QUICK_GRID = [("tiny", 5, 2, 3, 4)]
RESULTS = Path(__file__).resolve().parent / "results"


def flops(mode, cell, T, B, I, H):
    """Dense-product FLOPs of one call (see the module docstring)."""
    forward = 2 * T * B * GATES[cell] * H * (I + H)
    return forward if mode == "forward" else 3 * forward


# ---------------------------------------------------------------- the two sides
def gpurnn_model(cell, I, H, backend):
    kw = dict(backend=backend, dtype="float32", seed=0)
    if cell.startswith("rnn_"):
        return gpurnn.RNN(I, H, nonlinearity=cell[4:], **kw)
    return {"lstm": gpurnn.LSTM, "gru": gpurnn.GRU}[cell](I, H, **kw)


def torch_model(torch, cell, I, H):
    torch.manual_seed(0)
    if cell.startswith("rnn_"):
        return torch.nn.RNN(I, H, nonlinearity=cell[4:])
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H)


def make_calls(torch, cell, T, B, I, H, backend):
    """{(side, mode): zero-argument function} for one cell and shape, on the same x and dy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    m = gpurnn_model(cell, I, H, backend)
    tm = torch_model(torch, cell, I, H)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    xt = torch.from_numpy(x).requires_grad_(True)     # torch computes dx too, as gpurnn does
    dyt = torch.from_numpy(dy)

    def g_forward():
        m(x)

    def g_train():
        m.zero_grad()
        m(x)
        m.backward(dy)

    def t_forward():
        tm(xt)

    def t_train():
        tm.zero_grad(set_to_none=False)
        xt.grad = None
        y, _ = tm(xt)
        y.backward(dyt)

    floor_forward, floor_train = blas_floor(cell, T, B, I, H)
    return {("gpurnn", "forward"): g_forward, ("gpurnn", "train"): g_train,
            ("torch", "forward"): t_forward, ("torch", "train"): t_train,
            ("blas", "forward"): floor_forward, ("blas", "train"): floor_train}


def bridge_calls(torch, T, B, I, H, backend):
    """{side: zero-argument function} on the same x, float32:

        "gpurnn.torch model", "torch.nn model"   one training step of a torch model: an LSTM, a
                                                 linear head on its last step, MSE, backward
        "gpurnn.torch", "gpurnn"                 gpurnn.torch.LSTM alone (backward of a fixed dy
                                                 through autograd) and gpurnn's own LSTM layer
                                                 (zero_grad, forward, backward of the same dy)

    The last two do the same arithmetic on the same numbers; their difference is what the bridge
    costs (autograd, the views, the saved tensors).
    """
    import gpurnn.torch as gt
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((T, B, I)).astype(np.float32)).requires_grad_(True)
    target = torch.from_numpy(rng.standard_normal((B, 1)).astype(np.float32))
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    dyt = torch.from_numpy(dy)

    def model(lstm):
        torch.manual_seed(0)
        return torch.nn.ModuleDict(dict(rnn=lstm, head=torch.nn.Linear(H, 1)))

    torch.manual_seed(0)
    ours = model(gt.LSTM(I, H, backend=backend))
    torch.manual_seed(0)
    theirs = model(torch.nn.LSTM(I, H))
    layer = gpurnn.LSTM(I, H, backend=backend, dtype="float32")
    layer.load_state_dict({k: v.detach().numpy() for k, v in ours["rnn"].state_dict().items()})

    def model_step(m):
        def train():
            m.zero_grad()                   # torch's default: the grads are set to None
            x.grad = None
            y, _ = m["rnn"](x)
            torch.nn.functional.mse_loss(m["head"](y[-1]), target).backward()
        return train

    def bridge_alone():
        ours.zero_grad()
        x.grad = None
        y, _ = ours["rnn"](x)
        y.backward(dyt)

    def layer_alone():
        layer.zero_grad()
        layer(x.detach())
        layer.backward(dy)

    return {"gpurnn.torch model": model_step(ours), "torch.nn model": model_step(theirs),
            "gpurnn.torch": bridge_alone, "gpurnn": layer_alone}


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


# ---------------------------------------------------------------- timing
def timed_block(fn, reps, pause):
    time.sleep(pause)
    fn()                                  # untimed: wakes the thread pool, warms the caches
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def interleaved(fns, rounds, reps, pause):
    """{name: [seconds, ...]}: every function runs ``reps`` timed calls per round, order alternating."""
    names = list(fns)
    samples = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            samples[n] += timed_block(fns[n], reps, pause)
    return samples


def sgemm_gflops(n, reps, pause):
    """Median GFLOP/s of a square float32 product through NumPy (its BLAS, its threads)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    times = timed_block(lambda: np.matmul(a, b, out=c), reps, pause)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


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


def bridge_rows(torch, grid, args):
    """The LSTM of every shape through gpurnn.torch: in a torch model against torch.nn, and alone
    against gpurnn's own layer (bridge_calls)."""
    rows = []
    for size, T, B, I, H in grid:
        fns = bridge_calls(torch, T, B, I, H, args.backend)
        for fn in fns.values():
            fn()
            fn()
        samples = interleaved(fns, args.rounds, args.reps, args.pause)
        ms = {side: float(np.median(v)) * 1e3 for side, v in samples.items()}
        bridge, layer = ms["gpurnn.torch"], ms["gpurnn"]
        row = dict(cell="lstm", size=size, T=T, B=B, I=I, H=H, mode="train",
                   model_ms=ms["gpurnn.torch model"], torch_model_ms=ms["torch.nn model"],
                   speedup=ms["torch.nn model"] / ms["gpurnn.torch model"],
                   bridge_ms=bridge, layer_ms=layer, overhead_ms=bridge - layer,
                   overhead_pct=100 * (bridge - layer) / layer,
                   samples_ms={side: [t * 1e3 for t in v] for side, v in samples.items()})
        rows.append(row)
        print(f"bridge   {size:6s} T={T:<3d} B={B:<3d} I={I:<3d} H={H:<3d} model with gpurnn.torch "
              f"{row['model_ms']:8.2f} ms, with torch.nn {row['torch_model_ms']:8.2f} ms, speed-up "
              f"{row['speedup']:5.2f}x; gpurnn.torch alone {bridge:8.2f} ms, gpurnn layer {layer:8.2f} ms "
              f"({row['overhead_pct']:+.1f}%)", flush=True)
    return rows


# ---------------------------------------------------------------- machine and report
def machine_info(torch):
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


def markdown(result):
    lines = ["| cell | shape T·B·I·H | mode | gpurnn ms | torch ms | speed-up | gpurnn GFLOP/s | % of sgemm "
             "| BLAS floor ms | outside the products ms |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['cell']} | {r['size']} {r['T']}·{r['B']}·{r['I']}·{r['H']} | {r['mode']} | "
                     f"{r['gpurnn_ms']:.2f} | {r['torch_ms']:.2f} | {r['speedup']:.2f}x | "
                     f"{r['gpurnn_gflops']:.1f} | {r['pct_sgemm']:.0f}% | {r['blas_floor_ms']:.2f} | "
                     f"{r['gpurnn_ms'] - r['blas_floor_ms']:.2f} |")
    s = result["sgemm"]
    lines.append("")
    lines.append(f"{result['machine'].get('lscpu Model name', result['machine']['processor'])}, "
                 f"{result['machine']['cpu_count']} CPUs; {result['threads']} threads on each side; "
                 f"{blas_kernel(result['machine'])}; torch {result['machine']['torch']}, "
                 f"NumPy {result['machine']['numpy']}, Numba {result['machine']['numba']}; "
                 f"load average {result['load_average_before'][0]:.1f} before, "
                 f"{result['load_average_after'][0]:.1f} after.")
    lines.append("")
    lines.append(f"sgemm (NumPy, float32, n={s['n']}, {result['threads']} threads): median "
                 f"{s['median_gflops']:.1f} GFLOP/s over {len(s['samples_gflops'])} measurements "
                 f"(min {min(s['samples_gflops']):.1f}, max {max(s['samples_gflops']):.1f}).")
    if result.get("bridge_rows"):
        lines += ["", "LSTM training step through gpurnn.torch: in a torch model (the LSTM, a linear head on its "
                  "last step, MSE, backward) against the same model with torch.nn.LSTM; and gpurnn.torch.LSTM "
                  "alone against gpurnn's own LSTM layer, backward of the same dy (the difference is what the "
                  "bridge costs).", "",
                  "| shape T·B·I·H | model, gpurnn.torch ms | model, torch.nn ms | speed-up | gpurnn.torch.LSTM ms "
                  "| gpurnn.LSTM ms | bridge cost |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in result["bridge_rows"]:
            lines.append(f"| {r['size']} {r['T']}·{r['B']}·{r['I']}·{r['H']} | {r['model_ms']:.2f} | "
                         f"{r['torch_model_ms']:.2f} | {r['speedup']:.2f}x | {r['bridge_ms']:.2f} | "
                         f"{r['layer_ms']:.2f} | {r['overhead_ms']:+.2f} ms ({r['overhead_pct']:+.1f}%) |")
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
    ax.set_title(f"gpurnn cpu vs torch {result['machine']['torch']}, float32, {result['threads']} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    p.add_argument("--cells", nargs="+", default=["rnn_tanh", "lstm", "gru"], choices=list(GATES))
    p.add_argument("--sizes", nargs="+", default=None, help="subset of the grid: small medium large")
    p.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    p.add_argument("--backend", default="cpu", help="gpurnn backend (default cpu)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3, help="timed calls per block")
    p.add_argument("--pause", type=float, default=0.2, help="seconds of rest before each block")
    p.add_argument("--sgemm-n", type=int, default=2048)
    p.add_argument("--no-cold-start", action="store_true")
    p.add_argument("--no-bridge", action="store_true", help="skip the gpurnn.torch rows (LSTM in a torch model)")
    p.add_argument("--quick", action="store_true", help="one tiny shape, one round, no cold start")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON, markdown and plot")
    p.add_argument("--name", default="bench_cpu", help="file name stem of the outputs")
    args = p.parse_args(argv)
    if args.threads != THREADS:
        raise SystemExit("--threads must be given before the interpreter starts its pools; pass it on the command line")
    grid = QUICK_GRID if args.quick else [g for g in GRID if args.sizes is None or g[0] in args.sizes]
    if args.quick:
        args.rounds, args.reps, args.pause, args.sgemm_n, args.no_cold_start = 1, 2, 0.0, 256, True
        args.cells = args.cells[:1] if args.cells != ["rnn_tanh", "lstm", "gru"] else ["lstm"]

    import torch
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass                              # the environment variables set above already fix BLAS

    started = datetime.datetime.now(datetime.timezone.utc)
    result = dict(started_utc=started.isoformat(timespec="seconds"), threads=args.threads,
                  torch_threads=torch.get_num_threads(), numba_threads=numba.get_num_threads(),
                  backend=args.backend, dtype="float32", load_average_before=os.getloadavg(),
                  command=" ".join([os.path.basename(sys.executable)] + sys.argv),
                  machine=machine_info(torch), rows=[])
    print(f"threads {args.threads} (torch {torch.get_num_threads()}, numba {numba.get_num_threads()}), "
          f"load average {os.getloadavg()}", flush=True)

    sgemm_samples = [sgemm_gflops(args.sgemm_n, 3, args.pause)]
    for cell in args.cells:
        for size, T, B, I, H in grid:
            calls = make_calls(torch, cell, T, B, I, H, args.backend)
            for fn in calls.values():      # warm-up: compile, allocate, grow the pools
                fn()
                fn()
            for mode in args.modes:
                load = os.getloadavg()[0]          # other jobs on the machine make every time drift
                fns = {side: calls[(side, mode)] for side in ("gpurnn", "torch", "blas")}
                samples = interleaved(fns, args.rounds, args.reps, args.pause)
                sgemm_samples.append(sgemm_gflops(args.sgemm_n, 3, args.pause))
                g, t = float(np.median(samples["gpurnn"])), float(np.median(samples["torch"]))
                floor = float(np.median(samples["blas"]))
                f = flops(mode, cell, T, B, I, H)
                row = dict(cell=cell, size=size, T=T, B=B, I=I, H=H, mode=mode, flops=f,
                           gpurnn_ms=g * 1e3, torch_ms=t * 1e3, speedup=t / g,
                           gpurnn_gflops=f / g / 1e9, torch_gflops=f / t / 1e9,
                           blas_floor_ms=floor * 1e3, blas_floor_gflops=f / floor / 1e9,
                           sgemm_gflops_nearby=sgemm_samples[-1], load_1min_before=load,
                           gpurnn_samples_ms=[s * 1e3 for s in samples["gpurnn"]],
                           torch_samples_ms=[s * 1e3 for s in samples["torch"]])
                result["rows"].append(row)
                print(f"{cell:8s} {size:6s} T={T:<3d} B={B:<3d} I={I:<3d} H={H:<3d} {mode:7s} "
                      f"gpurnn {g * 1e3:9.2f} ms  torch {t * 1e3:9.2f} ms  speed-up {t / g:5.2f}x  "
                      f"{f / g / 1e9:6.1f} GFLOP/s  (BLAS floor {floor * 1e3:.2f} ms)", flush=True)
    if not args.no_bridge:
        result["bridge_rows"] = bridge_rows(torch, grid, args)
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

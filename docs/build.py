"""Rewrite the generated regions of README.md and docs/*.md from the results files.

    python docs/build.py            # rewrite every stale region
    python docs/build.py --check    # exit 1 and name each stale region and its file; write nothing

A region is the Markdown between

    <!-- generated: NAME (by docs/build.py from SOURCE) -->
    ...
    <!-- end generated: NAME -->

and its body is whatever the function registered for NAME (``@generates``) returns from the files
it names: the JSON the benchmarks write in benchmarks/results/ (bench_cpu.py, bench_gpu.py through
device_run.sh, ``python -m gpurnn.kernels.report --json``) and docs/grad_norms.json (``gpurnn
grads``). So a table in the docs is never typed by hand: rerun a benchmark, then this script. The
SOURCE in the opening marker is rewritten too, from the registration.

The GPU figures come from one run on an H200 (``H200``, ``H200_ENV`` below); to show a newer run,
point them at its files. Importable (``stale()``, ``build()``, ``render()``), each taking the
results folder (and the folder of docs/grad_norms.json) as parameters, so a test can point them at a
modified copy (tests/test_docs.py). Standard library and NumPy only.
"""

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"

CPU = "benchmarks/results/bench_cpu.json"
CPU_1THREAD = "benchmarks/results/bench_cpu_1thread.json"
BRIDGE = ("benchmarks/results/bench_torch_bridge.json",
          "benchmarks/results/bench_torch_bridge_1thread.json",
          "benchmarks/results/bench_torch_bridge_omp_passive.json")
H200 = "benchmarks/results/2026-11-27-nvidia-h200-bench.json"
H200_ENV = "benchmarks/results/2026-11-27-nvidia-h200-env.txt"
KERNELS = "benchmarks/results/kernel_report.json"
STARTUP = "benchmarks/results/bench_startup.json"
TESTS = "benchmarks/results/bench_tests.json"
LESSON = "benchmarks/results/lesson.json"
OWN_DATA = "benchmarks/results/own_data.json"
GRADS = "docs/grad_norms.json"

# torch's sides of a bench_gpu.py row (its TORCH_SIDES): the ratio of record (torch_ms, ratio), then
# the anchors, each with <key>_ms and <key>_ratio. Results from before the anchors and the host time
# lack their keys; their columns show NOT_MEASURED.
RECORD = "torch fp32 (TF32 off)"
ANCHORS = {"torch_default": "torch default (TF32 on)", "torch_autocast_fp16": "torch autocast fp16",
           "torch_autocast_bf16": "torch autocast bf16"}
NOT_MEASURED = "—"

SIZE_ORDER = ("small", "medium", "large")
NAMES = {"rnn_tanh": "RNN", "rnn_relu": "ReLU RNN", "gru": "GRU", "lstm": "LSTM"}   # in prose

REGION = re.compile(
    r"^<!-- generated: (?P<name>[a-z0-9-]+) \(by docs/build\.py from (?P<source>[^)]*)\) -->\n"
    r"(?P<body>.*?)"
    r"^<!-- end generated: (?P=name) -->$", re.S | re.M)


# ------------------------------------------------------------------------------------ the registry

@dataclass(frozen=True)
class Generator:
    name: str
    sources: tuple      # repository-relative paths, as the marker names them
    fn: object          # fn(Sources) -> Markdown


GENERATORS = {}


def generates(name, *sources):
    """Register ``fn(src) -> str`` as the body of region ``name``, read from ``sources``."""
    def register(fn):
        if name in GENERATORS:
            raise ValueError(f"region {name!r} is registered twice")
        GENERATORS[name] = Generator(name, tuple(sources), fn)
        return fn
    return register


class Sources:
    """Reads the files a generator names. ``benchmarks/results/...`` resolves under ``results``,
    ``docs/...`` under ``docs``, so a test can substitute either folder."""

    def __init__(self, results=RESULTS, docs=DOCS):
        self.results, self.docs, self._cache = Path(results), Path(docs), {}

    def path(self, name):
        for prefix, folder in (("benchmarks/results/", self.results), ("docs/", self.docs)):
            if name.startswith(prefix):
                return folder / name[len(prefix):]
        raise ValueError(f"no folder for source {name!r}: expected benchmarks/results/... or docs/...")

    def text(self, name):
        if name not in self._cache:
            self._cache[name] = self.path(name).read_text(encoding="utf-8")
        return self._cache[name]

    def json(self, name):
        return json.loads(self.text(name))


# ---------------------------------------------------------------------------------- formatting

def table(header, rows, align):
    """A Markdown table; ``align`` is one of "l" / "r" per column."""
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    lines = ["| " + " | ".join(str(c) for c in line) + " |" for line in [header] + rows]
    return "\n".join(lines[:1] + [rule] + lines[1:]) + "\n"


def x(ratio):
    """A speed ratio: two decimals below 10, none above (88x, not 87.99x)."""
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x"


def cells_in(rows):
    """The cells of ``rows`` in the order the benchmark ran them."""
    return list(dict.fromkeys(r["cell"] for r in rows))


def shape(r):
    """``small 100·8·32·64``: the size name and T·B·I·H of a bench_cpu row."""
    return f"{r['size']} {r['T']}·{r['B']}·{r['I']}·{r['H']}"


def span(values, fmt="{:.0f}"):
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


# ------------------------------------------------------------------------------------ the CPU

def cpu_rows(data, mode="train"):
    """bench_cpu rows of one mode, by cell then small, medium, large."""
    rows = [r for r in data["rows"] if r["mode"] == mode]
    order = {c: i for i, c in enumerate(cells_in(rows))}
    return sorted(rows, key=lambda r: (order[r["cell"]], SIZE_ORDER.index(r["size"])))


def row_of(data, cell, size, mode):
    return next(r for r in data["rows"] if (r["cell"], r["size"], r["mode"]) == (cell, size, mode))


def when(data):
    """``2026-11-27 23:15 UTC`` from ``started_utc``."""
    return data["started_utc"][:16].replace("T", " ") + " UTC"


def blas(data):
    pools = data["machine"].get("threadpools", [])
    return next((p for p in pools if p.get("user_api") == "blas"), {})


def torch_libraries(data):
    """What torch's CPU build says it uses, from ``torch.__config__.show()``."""
    config = data["machine"].get("torch_config", "")
    found = [name for name, flag in (("MKL", "USE_MKL=ON"), ("oneDNN", "USE_MKLDNN=ON")) if flag in config]
    return f" ({', '.join(found)})" if found else ""


def apart(data):
    """Whether bench_cpu.py ran each side in its own process (``mode`` "apart", its default). A run
    with ``mode`` "interleaved", or without ``mode`` (results from before it had one), timed both
    sides interleaved in one process; the text then says nothing of it, as it did."""
    return data.get("mode") == "apart"


@generates("cpu-run", CPU)
def cpu_run(src):
    d = src.json(CPU)
    m, pool = d["machine"], blas(d)
    tpc = m.get("lscpu Thread(s) per core", "?")
    return (f"Measured {when(d)} on an {m.get('lscpu Model name', m.get('processor') or '?')} "
            f"({m['cpu_count']} cores, {tpc} thread{'s' if tpc != '1' else ''} per core), "
            f"{d['threads']} thread{'s' if d['threads'] != 1 else ''} on each side"
            f"{', each in its own process' if apart(d) else ''}, "
            f"NumPy {m['numpy']} with {pool.get('internal_api', '?').replace('openblas', 'OpenBLAS')} "
            f"{pool.get('version', '?')} ({pool.get('architecture', '?')} kernels; "
            f"sgemm {d['sgemm']['median_gflops']:.0f} GFLOP/s in this run), "
            f"torch {m['torch']}{torch_libraries(d)}, Numba {m['numba']}; "
            f"load average {d['load_average_before'][0]:.1f} before, {d['load_average_after'][0]:.1f} after.\n")


def ms_spread(r, side):
    """``9.61 (9.52-9.80)``: a side's median ms and, where the run recorded it, the lowest and
    highest median of one round (bench_cpu.py's ``with_spread``)."""
    spread = r.get(f"{side}_spread_ms")
    return f"{r[side + '_ms']:.2f}" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")


@generates("cpu-table", CPU)
def cpu_table(src):
    d = src.json(CPU)
    rows = []
    for r in cpu_rows(d):
        fwd = row_of(d, r["cell"], r["size"], "forward")
        rows.append([r["cell"], shape(r), ms_spread(r, "gpurnn"), ms_spread(r, "torch"),
                     f"**{x(r['speedup'])}**", f"{r['gpurnn_gflops']:.0f}", f"{r['pct_sgemm']:.0f}%",
                     f"{r['blas_floor_ms']:.2f}", x(fwd["speedup"])])
    return table(["cell", "T·B·I·H", "train: gpurnn ms", "torch ms", "speed-up", "GFLOP/s", "% of sgemm",
                  "BLAS floor ms", "forward speed-up"],
                 rows, "llrrrrrrr")


def speedups_by_cell(data):
    """``5.30x, 1.51x, 1.15x (rnn_tanh), ...`` small to large, training step."""
    rows = cpu_rows(data)
    parts = [", ".join(x(r["speedup"]) for r in rows if r["cell"] == c) + f" ({c})" for c in cells_in(rows)]
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


@generates("cpu-1thread", CPU_1THREAD)
def cpu_1thread(src):
    d = src.json(CPU_1THREAD)
    rows = cpu_rows(d)
    return (f"On {d['threads']} thread{'s' if d['threads'] != 1 else ''} each"
            f"{', each side in its own process' if apart(d) else ''} ({when(d)[11:]}, sgemm "
            f"{d['sgemm']['median_gflops']:.0f} GFLOP/s, `benchmarks/results/bench_cpu_1thread.md`) the "
            f"training-step speed-ups are {speedups_by_cell(d)}, small to large, at "
            f"{span([r['pct_sgemm'] for r in rows])}% of sgemm.\n")


@generates("cold-start", CPU)
def cold_start(src):
    d = src.json(CPU)
    order = {c: i for i, c in enumerate(cells_in(d["cold_start"]))}
    rows = [[r["cell"], f"{r['empty_cache_s']:.2g} s", f"{r['warm_cache_s']:.2g} s", f"{r['torch_s']:.2g} s"]
            for r in sorted(d["cold_start"], key=lambda r: order[r["cell"]])]
    return table(["cell", "empty Numba cache", "warm cache", "torch"], rows, "lrrr")


# The targets set for the cpu backend's LSTM: training step, torch ms / gpurnn ms, per size.
# The speed-ups set for the cpu backend's training step (torch ms / gpurnn ms, float32, each side in
# its own process on the same threads): the LSTM 2x at the small shape and level above it, the RNN
# and GRU 1.2x everywhere.
CPU_TARGETS = {"lstm": {"small": 2.0, "medium": 1.0, "large": 1.0}}
CPU_TARGET_ELSE = 1.2


def cpu_target(cell, size):
    return CPU_TARGETS.get(cell, {}).get(size, CPU_TARGET_ELSE)


@generates("cpu-targets", CPU, CPU_1THREAD)
def cpu_targets(src):
    """The targets, which rows meet them, and for each row that misses, what bounds it: the GFLOP/s
    the target takes against this run's sgemm rate, and the same products through NumPy's BLAS
    alone (torch ms / floor ms: what a backend on that BLAS costing nothing else would reach)."""
    two, one = src.json(CPU), src.json(CPU_1THREAD)
    rows = cpu_rows(two)
    sgemm = two["sgemm"]["median_gflops"]
    met = [r for r in rows if r["speedup"] >= cpu_target(r["cell"], r["size"])]
    missed = [r for r in rows if r not in met]
    lines = [f"The targets set for this backend (float32, training step, each side in its own process on the "
             f"same threads): the LSTM at least {x(cpu_target('lstm', 'small'))} torch on the small shape and "
             f"{x(cpu_target('lstm', 'medium'))} on the medium and large ones; the RNN and GRU at least "
             f"{x(CPU_TARGET_ELSE)} on every shape. On {two['threads']} threads {len(met)} of the {len(rows)} "
             f"rows meet theirs ({speedups_by_cell(two)}); on {one['threads']}, "
             f"{sum(r['speedup'] >= cpu_target(r['cell'], r['size']) for r in cpu_rows(one))} of "
             f"{len(cpu_rows(one))}."]
    if missed:
        lines.append("")
        lines.append(f"Where a row misses, what bounds it, on {two['threads']} threads (sgemm, NumPy's BLAS on a "
                     f"2048² product, ran at {sgemm:.0f} GFLOP/s in this run):")
        lines.append("")
        body = []
        for r in missed:
            goal = cpu_target(r["cell"], r["size"])
            need = r["flops"] / (r["torch_ms"] / goal) / 1e6
            body.append([NAMES.get(r["cell"], r["cell"]), shape(r), x(r["speedup"]), x(goal),
                         f"{r['gpurnn_gflops']:.0f} ({100 * r['gpurnn_gflops'] / sgemm:.0f}%)",
                         f"{need:.0f} ({100 * need / sgemm:.0f}%)", x(r["torch_ms"] / r["blas_floor_ms"])])
        lines.append(table(["cell", "T·B·I·H", "speed-up", "target", "GFLOP/s now (% of sgemm)",
                            "GFLOP/s the target takes", "torch / BLAS floor"], body, "llrrrrr").rstrip("\n"))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ through gpurnn.torch

def threads_label(data):
    policy = data["machine"].get("env", {}).get("OMP_WAIT_POLICY")
    return f"{data['threads']}" + (f", `OMP_WAIT_POLICY={policy}`" if policy else "")


@generates("bridge-charlm", "benchmarks/results/bench_bridge.json")
def bridge_charlm(src):
    """The char-level LSTM model through gpurnn.torch against torch.nn, each in its own process,
    with the products through torch.mm ("none") and through NumPy's BLAS ("numpy-products")."""
    d = src.json("benchmarks/results/bench_bridge.json")
    m = d["model"]
    rows = []
    for c in d["configs"]:
        ours, before = c["gpurnn"]["none"], c["gpurnn"].get("numpy-products")
        row = ["idle" if c["load"] == 0 else f"{c['load']} busy processes", c["threads"], f"{c['torch_ms']:.1f}",
               f"{ours['median_ms']:.1f}", f"{ours['ratio']:.2f}"]
        if before:
            row += [f"{before['median_ms']:.1f}", f"{before['ratio']:.2f}"]
        rows.append(row)
    head = ["machine", "threads", "torch.nn ms", "gpurnn.torch ms", "ratio"]
    if len(rows[0]) > 5:
        head += ["products by NumPy's BLAS ms", "ratio"]
    over = [f"{r[0]} on {r[1]} thread{'s' if r[1] > 1 else ''} ({r[4]})" for r in rows if float(r[4]) > 1.10]
    verdict = ("Every row is within 10% of torch.nn." if not over else
               "More than 10% slower than torch.nn: " + ", ".join(over) + ".")
    return (f"Embedding({m['vocab']}, {m['embed']}), LSTM({m['embed']}, {m['hidden']}, num_layers={m['layers']}), "
            f"Linear, cross-entropy, {m['optimizer']}; batches of {m['batch']} × {m['seq']} characters; medians of "
            f"{d['rounds']} blocks of {d['steps']} steps per side, measured {d['started_utc'][:10]} "
            f"(`benchmarks/results/bench_bridge.json`):\n\n" + table(head, rows, "lrrrrrr"[:len(head)])
            + "\n" + verdict + "\n")


@generates("bridge-table", *BRIDGE)
def bridge_table(src):
    rows = []
    for name in BRIDGE:
        d = src.json(name)
        for r in sorted(d["bridge_rows"], key=lambda r: SIZE_ORDER.index(r["size"])):
            rows.append([shape(r), threads_label(d), f"{r['model_ms']:.2f}", f"{r['torch_model_ms']:.2f}",
                         x(r["speedup"]), f"{r['bridge_ms']:.2f}", f"{r['layer_ms']:.2f}"])
    return table(["shape T·B·I·H", "threads", "model with gpurnn.torch ms", "model with torch.nn ms",
                  "speed-up", "gpurnn.torch.LSTM ms", "gpurnn.LSTM ms"], rows, "llrrrrr")


@generates("bridge-cost", *BRIDGE)
def bridge_cost(src):
    """The bridge's cost from the fastest samples (the medians carry the machine's noise)."""
    runs = [src.json(name) for name in BRIDGE]
    small, rest = [], []
    for d in runs:
        for r in d["bridge_rows"]:
            fastest = {side: min(s) for side, s in r["samples_ms"].items()}
            (small if r["size"] == "small" else rest).append((d, r, fastest))
    def label(d, first):
        policy = d["machine"].get("env", {}).get("OMP_WAIT_POLICY")
        if policy:
            return f"with `{policy}`"
        return f"on {d['threads']}" + (" threads" if first else "")

    pairs = [f"{f['gpurnn.torch']:.2f} against {f['gpurnn']:.2f}{' ms' if i == 0 else ''} {label(d, i == 0)}"
             for i, (d, r, f) in enumerate(small)]
    spreads = [100 * (max(s) - min(s)) / float(np.median(s)) for _, r, _ in rest for s in r["samples_ms"].values()]
    relative = [100 * (f["gpurnn.torch"] / f["gpurnn"] - 1) for _, _, f in rest]
    slower = [f["gpurnn.torch"] - f["gpurnn"] for _, _, f in small]
    n = len(rest[0][1]["samples_ms"]["gpurnn"]) if rest else 0

    def faster_or_slower(pct):
        return f"{abs(pct):.0f}% {'faster' if pct < 0 else 'slower'}"

    return (f"The fastest of the small LSTM's samples is {span(slower, '{:.1f}')} ms "
            f"{'slower' if min(slower) >= 0 else 'apart'} through `gpurnn.torch` than as gpurnn's layer "
            f"({', '.join(pairs)}). At the medium and large shapes each side's {n} samples spread over "
            f"{span(spreads)}% of their median, and the bridge's fastest is between "
            f"{faster_or_slower(min(relative))} and {faster_or_slower(max(relative))} than the layer's.\n")


@generates("bridge-omp", *BRIDGE)
def bridge_omp(src):
    spinning, passive = src.json(BRIDGE[0]), src.json(BRIDGE[2])
    a = next(r for r in spinning["bridge_rows"] if r["size"] == "small")
    b = next(r for r in passive["bridge_rows"] if r["size"] == "small")
    return (f"That makes the small model {x(a['speedup'])} with {spinning['threads']} threads. With "
            f"`{threads_label(passive).split(', ', 1)[1].strip('`')}` the workers sleep instead: "
            f"gpurnn.torch's model step goes from {a['model_ms']:.2f} to {b['model_ms']:.2f} ms, but "
            f"torch.nn's own LSTM, which relies on its spinning workers, from {a['torch_model_ms']:.2f} "
            f"to {b['torch_model_ms']:.2f} ms.\n")


# ------------------------------------------------------------------------------------ the GPU

def gpu_rows(data, mode="train", cell=None, algo=None):
    return [r for r in data["rows"] if r["mode"] == mode and (cell is None or r["cell"] == cell)
            and (algo is None or r["algo"] == algo)]


def gpu_row(data, cell, mode, T, B, H, algo=None):
    return next((r for r in gpu_rows(data, mode, cell, algo) if (r["T"], r["B"], r["H"]) == (T, B, H)), None)


def median_text(rows, key, fmt="{:.2f}"):
    """The median of ``key`` over ``rows``, as text: NOT_MEASURED where no row has the key (a run
    from before it existed), "n/a" where every row has it null (torch refused, or every call
    synchronised)."""
    values = [r[key] for r in rows if r.get(key) is not None]
    if values:
        return fmt.format(float(np.median(values)))
    return "n/a" if any(key in r for r in rows) else NOT_MEASURED


def cudnn(version):
    """91900 -> 9.19 (cuDNN's own encoding: major * 10000 + minor * 100 + patch)."""
    return f"{version // 10000}.{version % 10000 // 100}"


def cuda_version(version):
    """13000 -> 13.0."""
    return f"{version // 1000}.{version % 1000 // 10}"


def driver(src):
    """The driver's version from the run's env.txt (the JSON keeps only the CUDA version)."""
    found = re.search(r"^gpu \(name, driver[^)]*\): [^,]+, ([^,]+),", src.text(H200_ENV), re.M)
    return found.group(1).strip() if found else "?"


def paths_run(train):
    """The algorithms the training rows ran and their Numba launches per training step, each as
    the text of its values ("persistent or step", "3 or 258")."""
    algos = sorted({r["algo"] for r in train})
    launches = sorted({r["numba_launches"] for r in train})
    return " or ".join(algos), " or ".join(map(str, launches))


def bound_by(r):
    """What bounds a grid row, by rule (see "On a GPU" in docs/performance.md): a persistent step
    costs a fixed part plus a part per batch row, so at B = 1 the fixed cost, above it the walk
    over the batch; the per-step path is bound by its kernels."""
    if r["algo"] == "persistent":
        return "the fixed cost of a step" if r["B"] == 1 else "the batch walk"
    return "the step kernels"


@generates("h200-run", H200, H200_ENV)
def h200_run(src):
    d = src.json(H200)
    m = d["machine"]
    algos, launches = paths_run(gpu_rows(d))
    dtypes = sorted({r["dtype"] for r in d["rows"]})
    same_io = all(r["I"] == r["H"] for r in d["rows"])
    return (f"Measured {d['date'][:10]} on an {m['gpu']} ({m['multiprocessors']} SMs, compute capability "
            f"{m['compute_capability']}, driver {driver(src)}, CUDA {cuda_version(m['cuda_driver'])}) by "
            f"`bash benchmarks/device_run.sh`: {m['toolchain'].replace(', ', ' (', 1)}), Numba {m['numba']}, "
            f"CuPy {m['cupy']}, NumPy {m['numpy']}, torch {m['torch']} with cuDNN {cudnn(m['cudnn'])}; "
            f"{', '.join(dtypes)}, TF32 {'on' if m['tf32'] else 'off'} on both sides"
            f"{', I = H' if same_io else ''}, one layer, CUDA events, medians of {d['rounds']} interleaved "
            f"rounds. Every row ran the {algos} path (auto's choice when measured): "
            f"{launches} Numba launches per training step.\n")


@generates("h200-grid", H200)
def h200_grid(src):
    d = src.json(H200)
    train = gpu_rows(d)
    cells = cells_in(train)
    shapes = sorted({(r["T"], r["B"], r["H"]) for r in train}, key=lambda s: (s[2], s[1], s[0]))
    header = ["T", "B", "H"]
    for i, c in enumerate(cells):
        header += [f"{c} ms" + (f": gpurnn / {RECORD}" if i == 0 else ""), "torch/gpurnn"]
    forward_cell = "lstm" if "lstm" in cells else cells[-1]
    header += [f"{forward_cell} forward: µs a step", "what bounds gpurnn"]
    rows = []
    for T, B, H in shapes:
        row = [T, B, H]
        for c in cells:
            r = gpu_row(d, c, "train", T, B, H)
            if r is None:
                row += ["", ""]
                continue
            ratio = f"{r['ratio']:.2f}"
            row += [f"{r['gpurnn_ms']:.2f} / {r['torch_ms']:.2f}", f"**{ratio}**" if r["ratio"] > 1 else ratio]
        fwd = gpu_row(d, forward_cell, "forward", T, B, H)
        row.append(f"{1000 * fwd['gpurnn_ms'] / T:.0f}" if fwd else "")
        row.append(bound_by(gpu_row(d, forward_cell, "train", T, B, H) or next(
            r for r in train if (r["T"], r["B"], r["H"]) == (T, B, H))))
        rows.append(row)
    return table(header, rows, "rrr" + "rr" * len(cells) + "rl")


def where(r):
    return f"{NAMES.get(r['cell'], r['cell'])}, B = {r['B']}, H = {r['H']}"


def wins(train):
    """``B = 1, H = 256: GRU 1.12x and LSTM 1.18x``: the rows where gpurnn is faster, by shape."""
    by_shape = {}
    for r in sorted((r for r in train if r["ratio"] > 1), key=lambda r: r["ratio"]):
        by_shape.setdefault((r["T"], r["B"], r["H"]), []).append(r)
    T_differs = len({T for T, _, _ in by_shape}) > 1
    return "; ".join((f"T = {T}, " if T_differs else "") + f"B = {B}, H = {H}: "
                     + " and ".join(f"{NAMES.get(r['cell'], r['cell'])} {x(r['ratio'])}" for r in rows)
                     for (T, B, H), rows in by_shape.items())


@generates("h200-verdict", H200)
def h200_verdict(src):
    d = src.json(H200)
    train = gpu_rows(d)
    won = [r for r in train if r["ratio"] > 1]
    losses = sorted((r for r in train if r["ratio"] <= 1), key=lambda r: -r["ratio"])
    text = (f"gpurnn beats cuDNN per training step in {len(won)} of {len(train)} rows"
            + (f", at {wins(train)}. " if won else ". "))
    if losses:
        text += (f"{'Everywhere else' if won else 'Everywhere'} it loses, by {x(1 / losses[0]['ratio'])} "
                 f"({where(losses[0])}) to {x(1 / losses[-1]['ratio'])} ({where(losses[-1])}); ")
    return text + f"the median training step is {x(float(np.median([r['ratio'] for r in train])))}.\n"


def fit_per_row(rows):
    """Least squares of forward µs a step against B: (µs at B = 0, µs per batch row)."""
    B = np.array([r["B"] for r in rows], float)
    us = np.array([1000 * r["gpurnn_ms"] / r["T"] for r in rows])
    (fixed, per_row), *_ = np.linalg.lstsq(np.stack([np.ones_like(B), B], 1), us, rcond=None)
    return fixed, per_row


@generates("h200-batch-walk", H200)
def h200_batch_walk(src):
    """The persistent forward step as a fixed cost plus a cost per batch row, fitted per H."""
    d = src.json(H200)
    rows = gpu_rows(d, "forward", algo="persistent")
    Hs = sorted({r["H"] for r in rows})
    lstm = [fit_per_row([r for r in rows if r["cell"] == "lstm" and r["H"] == H]) for H in Hs]
    rnn = fit_per_row([r for r in rows if r["cell"] == "rnn_tanh" and r["H"] == Hs[0]])
    b1 = [1000 * r["gpurnn_ms"] / r["T"] for r in rows if r["cell"] == "lstm" and r["B"] == 1]
    return (f"A persistent forward step costs a fixed part plus a part per batch row (least squares "
            f"over the rows above, one fit per H: LSTM {span([f for f, _ in lstm])} µs + "
            f"{span([p for _, p in lstm], '{:.1f}')} µs·B; RNN at H = {Hs[0]} {rnn[1]:.1f} µs·B). "
            f"At B = 1 an LSTM forward step takes {span(b1)} µs.\n")


@generates("h200-launches", H200)
def h200_launches(src):
    lo = src.json(H200)["launch_overhead"]
    s = lo["step_shape"]
    return (f"Measured host time per launch ({lo['launches_timed']} back to back): an empty Numba kernel "
            f"{lo['empty_kernel_host_us']:.1f} µs, a `step_forward` {lo['step_forward_host_us']:.1f} µs; a "
            f"`step_forward`'s device time at B = {s['B']}, H = {s['H']} is {lo['step_forward_device_us']:.1f} µs; "
            f"a CuPy elementwise operation {lo['cupy_elementwise_host_us']:.0f} µs.\n")


@generates("accumulate-table", H200)
def accumulate_table(src):
    """The accumulation kernel against cuBLAS; a row without a cell is an LSTM's (runs before the
    benchmark measured other cells)."""
    d = src.json(H200)
    rows = [[a.get("cell", "lstm"), a["T"], a["B"], a["H"], a["N"], a["GH"], f"{a['gpurnn_ms']:.2f}",
             f"{a['cupy_ms']:.2f}", f"{a['share_of_cublas']:.2f}", f"{a['gpurnn_tflops']:.1f}"]
            for a in d["accumulate"]]
    shares = [a["gpurnn_ms"] / r["gpurnn_ms"] for a in d["accumulate"]
              if (r := gpu_row(d, a.get("cell", "lstm"), "train", a["T"], a["B"], a["H"], "persistent"))]
    text = table(["cell", "T", "B", "H", "N = T·B", "G·H", "gpurnn ms", "cuBLAS ms", "share of cuBLAS",
                  "gpurnn TFLOP/s"], rows, "lrrrrrrrrr")
    if shares:
        text += (f"\nWhere the grid has the same cell and shape, both products together take at most "
                 f"{100 * max(shares):.0f}% of the persistent training step.\n")
    return text


@generates("graphs-table", H200)
def graphs_table(src):
    d = src.json(H200)
    rows = []
    for g in d["graphs"]:
        p = gpu_row(d, g["cell"], g["mode"], g["T"], g["B"], g["H"], "persistent")
        rows.append([g["mode"], g["T"], g["B"], g["H"], f"{g['graphs_ms']:.2f}", f"{g['direct_ms']:.2f}",
                     x(g["speedup"]), f"{p['gpurnn_ms']:.2f}" if p else ""])
    return table(["mode", "T", "B", "H", "with graphs ms", "without ms", "speed-up", "persistent ms, same shape"],
                 rows, "lrrrrrrr")


@generates("graphs-notes", H200)
def graphs_notes(src):
    """The graph-replayed step path against the persistent path and cuDNN: measured where the grid
    has the shape, else interpolated linearly in B between the grid's nearest rows."""
    d = src.json(H200)
    parts = []
    for g in (g for g in d["graphs"] if g["mode"] == "train"):
        p = gpu_row(d, g["cell"], "train", g["T"], g["B"], g["H"], "persistent")
        if p:
            parts.append(f"At B = {g['B']}, H = {g['H']} it is {x(p['gpurnn_ms'] / g['graphs_ms'])} faster than "
                         f"the persistent path per training step (torch/gpurnn {p['torch_ms'] / g['graphs_ms']:.2f} "
                         f"instead of {p['ratio']:.2f}).")
            continue
        line = sorted((r for r in gpu_rows(d, "train", g["cell"], "persistent")
                       if (r["T"], r["H"]) == (g["T"], g["H"])), key=lambda r: r["B"])
        below = [r for r in line if r["B"] < g["B"]]
        above = [r for r in line if r["B"] > g["B"]]
        if below and above:
            a, b = below[-1], above[0]
            est = a["gpurnn_ms"] + (b["gpurnn_ms"] - a["gpurnn_ms"]) * (g["B"] - a["B"]) / (b["B"] - a["B"])
            parts.append(f"At B = {g['B']}, H = {g['H']} its training step takes {g['graphs_ms']:.2f} ms against "
                         f"about {est:.1f} for the persistent one (between the persistent {a['gpurnn_ms']:.2f} "
                         f"at B = {a['B']} and {b['gpurnn_ms']:.2f} at B = {b['B']}).")
    for g in (g for g in d["graphs"] if g["mode"] == "forward"):
        p = gpu_row(d, g["cell"], "forward", g["T"], g["B"], g["H"])
        if p:
            parts.append(f"At B = {g['B']}, H = {g['H']} a graph-replayed forward step takes "
                         f"{1000 * g['graphs_ms'] / g['T']:.0f} µs against cuDNN's "
                         f"{1000 * p['torch_ms'] / g['T']:.0f}.")
    return " ".join(parts) + "\n"


# -------------------------------------------------------------------------- the README's summaries

@generates("cpu-speedups", CPU)
def cpu_speedups(src):
    """The README's CPU table: the training step's speed-up per cell and shape, each target beside it."""
    d = src.json(CPU)
    rows = cpu_rows(d)
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    body = [[NAMES.get(c, c)] + [f"{x(r['speedup'])} ({x(cpu_target(c, r['size']))})"
                                 for r in rows if r["cell"] == c] for c in cells_in(rows)]
    head = ["cell"] + [shape(next(r for r in rows if r["size"] == size)) for size in sizes]
    return (f"The CPU training step, torch ms / gpurnn ms (target in parentheses): float32, {d['threads']} threads"
            f"{', each side in its own process' if apart(d) else ''}, {when(d)[:10]} "
            f"([how it was measured, and what bounds the rows that miss](docs/performance.md#on-the-cpu)):\n\n"
            + table(head, body, "l" + "r" * len(sizes)))


@generates("status", CPU, H200)
def status(src):
    """Two lines: the cpu backend's training-step speed-up per cell at each shape, and the cuda
    backend's median against cuDNN with the shapes where it wins."""
    cpu, gpu = src.json(CPU), src.json(H200)
    rows, train = cpu_rows(cpu), gpu_rows(gpu)
    sizes = [s for s in SIZE_ORDER if any(r["size"] == s for r in rows)]
    slowest = min(r["speedup"] for r in rows)
    level = "level with torch's or faster" if slowest >= 0.9 else "slower than torch's in places"
    won = f"; it beats cuDNN only at {wins(train)}" if any(r["ratio"] > 1 for r in train) \
        else "; it is slower than cuDNN at every shape measured"
    return (f"- **CPU**: the `cpu` backend's training step is {level}: torch ms / gpurnn ms at the "
            f"{', '.join(sizes[:-1])} and {sizes[-1]} shapes is {speedups_by_cell(cpu)}, float32, on "
            f"{cpu['threads']} threads of an {cpu['machine'].get('lscpu Model name', '?')}"
            f"{', each side in its own process' if apart(cpu) else ''} ({cpu['started_utc'][:10]}).\n"
            f"- **GPU**: on an {gpu['machine']['gpu']} the `cuda` backend's training step runs at a median "
            f"{x(float(np.median([r['ratio'] for r in train])))} of cuDNN's speed, against {RECORD}, over "
            f"{len(train)} shapes{won}.\n")


@generates("gpu-summary", H200)
def gpu_summary(src):
    """Per cell, the training step's torch ms / gpurnn ms against torch's side of record (median,
    best, worst) and against the anchors (median), and gpurnn's host µs per time step (median)."""
    d = src.json(H200)
    train = gpu_rows(d)
    body = []
    for c in cells_in(train):
        rows = sorted((r for r in train if r["cell"] == c), key=lambda r: r["ratio"])
        best, worst = rows[-1], rows[0]
        body.append([c, len(rows), f"{float(np.median([r['ratio'] for r in rows])):.2f}",
                     f"{best['ratio']:.2f} (T·B·H {best['T']}·{best['B']}·{best['H']})",
                     f"{worst['ratio']:.2f} (T·B·H {worst['T']}·{worst['B']}·{worst['H']})",
                     *(median_text(rows, f"{key}_ratio") for key in ANCHORS),
                     median_text(rows, "host_us_per_step", "{:.1f}")])
    m = d["machine"]
    algos, launches = paths_run(train)
    unmeasured = [label for key, label in ANCHORS.items() if not any(f"{key}_ms" in r for r in train)]
    unmeasured += ["host µs/step"] if not any("host_us_per_step" in r for r in train) else []
    synced = sum(1 for r in train if r.get("host_synced"))
    return (f"Training step, torch ms / gpurnn ms (above 1: gpurnn is faster), gpurnn in float32, {m['gpu']}, "
            f"cuDNN {cudnn(m['cudnn'])}, {d['date'][:10]}. The ratio of record is against {RECORD}, the "
            f"same math; the other torch columns are torch as users run it, timed in the same run; host "
            f"µs/step is gpurnn's host time per time step outside its kernels:\n\n"
            + table(["cell", "shapes", f"{RECORD}: median", "best", "worst",
                     *(f"{label}: median" for label in ANCHORS.values()), "host µs/step: median"],
                    body, "lrrll" + "r" * (len(ANCHORS) + 1))
            + f"\nOver all {len(train)} shapes the median is "
              f"{x(float(np.median([r['ratio'] for r in train])))}. "
            + (f"This run did not measure the columns marked {NOT_MEASURED}: {', '.join(unmeasured[:-1])}"
               f"{' and ' if len(unmeasured) > 1 else ''}{unmeasured[-1]}. " if unmeasured else "")
            + (f"In {synced} rows gpurnn's call waited for the device, so their host time is left out. "
               if synced else "")
            + f"Every row ran the {algos} "
              f"path, {launches} Numba launches per training step, with the first persistent kernels "
              f"(a grid barrier a step), which the present ones have replaced; they are not measured yet.\n")


NAPKIN_SHAPES = [(128, B, H) for H in (64, 256, 1024) for B in (1, 16, 64)]


@generates("persistent-napkin", KERNELS, H200)
def persistent_napkin(src):
    """The present persistent kernels' napkin per time step, from the compiled kernels' loops and
    registers (sm_90) and their plan on the modelled H100, against cuDNN's training step as
    measured on the H200 (per time step)."""
    from gpurnn.kernels.cuda import plan
    from gpurnn.kernels.cuda.runtime import Geometry
    d, h200 = src.json(KERNELS), src.json(H200)
    geo = Geometry(**d["geometry"])
    compiled = {(r["kernel"], r["cell"]): r for r in d["rows"]
                if r["target"] == "sm_90" and r["dtype"] == "float32" and "step_loops" in r}
    rows, ratios = [], []
    for cell in cells_in(gpu_rows(h200)):
        fwd, bwd = compiled[("persistent_forward", cell)], compiled[("persistent_backward", cell)]
        device = plan.with_registers(plan.H100, max(fwd["registers"], bwd["registers"]))
        for T, B, H in NAPKIN_SHAPES:
            peer = gpu_row(h200, cell, "train", T, B, H)
            p = plan.choose(cell, 4, B, H, device, "auto", geo, graphs=False) if peer else None
            if p is None or p.algo != "persistent":     # past what the persistent path takes
                continue
            n_f, n_b = (plan.step_instructions(k["kernel"], p, cell, H, 4, k["step_loops"], geo) for k in (fwd, bwd))
            us = plan.napkin_step_us(n_f, p.slices) + plan.napkin_step_us(n_b, p.slices)
            cudnn_us = 1000 * peer["torch_ms"] / T
            ratios.append(cudnn_us / us)
            rows.append([cell, f"{T}·{B}·{H}", f"{p.groups} x {p.slices}", f"{n_f} / {n_b}", f"{us:.1f}",
                         f"{cudnn_us:.0f}", f"{cudnn_us / us:.1f}"])
    m = h200["machine"]
    return ("Napkin, not measured: per time step of a training step (forward and backward recursion), "
            f"float32, the compiled kernels' critical path on a modelled H100 at "
            f"{plan.NAPKIN_CYCLES_PER_INSTRUCTION} cycles an instruction and {plan.NAPKIN_CLOCK_GHZ} GHz, plus "
            f"{plan.NAPKIN_EXCHANGE_US} µs an exchange where a group has several slices (assumed until the "
            f"calibration measures it); against cuDNN's whole training step per time step as measured on the "
            f"{m['gpu']} on {h200['date'][:10]}:\n\n"
            + table(["cell", "T·B·H", "groups x slices", "instructions a step, forward / backward",
                     "napkin µs a step", "cuDNN µs a step", "napkin ratio"], rows, "llllrrr")
            + f"\nMedian napkin ratio {float(np.median(ratios)):.1f}. The napkin leaves out the input "
              "projection, the weight-gradient product and dx, the host's work and any latency two warps a "
              "scheduler do not hide; the first napkin of these kernels' predecessors was 10-40x too "
              "optimistic for that reason. Only a GPU run says.\n")


# ------------------------------------------------------------ set-up, start-up and the test suite

def row_named(data, name, key="command"):
    """The row of a bench_startup (``command``) or bench_tests (``run``) result called ``name``."""
    return next(r for r in data["rows"] if r[key] == name)


def minutes(seconds):
    """``6.7 minutes`` above 2 minutes, else ``95 s``."""
    return f"{seconds / 60:.1f} minutes" if seconds >= 120 else f"{seconds:.0f} s"


def closing(line, source):
    """(metric, value, the baseline's name or None, baseline) from the last line `gpurnn train`
    prints, e.g. "held-out mse 0.000501 (baseline 0.1667, ..." or "held-out accuracy 0.9944
    (baseline (the most common class) 0.0585, ..."."""
    found = re.search(r"held-out (\S+) (\S+) \(baseline (?:\(([^)]*)\) )?(\S+),", line or "")
    if not found:
        raise ValueError(f"{source}: no held-out result in {line!r}")
    return found.groups()


def main_job(data):
    """(seconds, metric, value, baseline) of the README's `gpurnn train`, from its last line."""
    r = row_named(data, "train (README)")
    metric, value, _, baseline = closing(r["last_line"], STARTUP)
    return r["median_s"], metric, value, baseline


@generates("main-job", STARTUP)
def main_job_sentence(src):
    seconds, metric, value, baseline = main_job(src.json(STARTUP))
    return (f"Measured by `python benchmarks/bench_startup.py` on {src.json(STARTUP)['machine']['cores']} CPU "
            f"cores, it took {seconds:.0f} s, and the held-out {metric.upper()} fell from the {baseline} baseline "
            f"to {value}.\n")


@generates("set-up", STARTUP, TESTS)
def set_up(src):
    """What the README's two set-up commands do, with the times measured here, and how soon the
    commands a user types most start."""
    start, tests = src.json(STARTUP), src.json(TESTS)
    seconds, metric, value, baseline = main_job(start)
    full, fast = row_named(tests, "full", "run"), row_named(tests, "fast", "run")
    xdist = next((r for r in tests["rows"] if r["run"] == "xdist"), None)
    cores = tests["machine"]["cores"]
    return (f"The first line installs gpurnn and trains the default model, an LSTM on the adding problem "
            f"(2000 steps of 32 sequences; {seconds:.0f} s on {start['machine']['cores']} CPU cores, the "
            f"held-out {metric.upper()} falling from the {baseline} baseline to {value}). The second installs "
            f"the test dependencies and runs every test, no GPU needed: {minutes(full['seconds'])} on {cores} "
            f"cores ({full.get('passed', 0)} passed, {full.get('skipped', 0)} skipped: the cases that need a GPU"
            + (f"; with pytest-xdist installed, `python -m pytest -n auto` took {minutes(xdist['seconds'])}"
               if xdist else "") + f"). The fast lane, `{fast['command']}`, leaves out the tests that run "
            f"the CUDA simulator, the SASS report and the benchmark scripts in child processes: "
            f"{minutes(fast['seconds'])} ({fast.get('passed', 0)} passed). Measured {tests['started_utc'][:10]}, "
            f"{tests['machine']['cpu']}.\n\n" + quick_commands(start))


def quick_commands(start):
    """How long the commands a user types most take, whole, from bench_startup."""
    rows = [r for r in start["rows"] if r["command"] in ("--help", "report", "predict (auto)")]
    slowest = max(r["median_s"] for r in rows)
    return (("On a machine without a GPU the commands used most take under a second, their work included: "
             if slowest < 1 else f"On a machine without a GPU the commands used most take up to {slowest:.1f} s: ")
            + ", ".join(f"`{r['typed']}` {r['median_s']:.2f} s" for r in rows)
            + " (medians; [start-up](docs/performance.md#start-up)).\n")


@generates("test-times", TESTS)
def test_times(src):
    d = src.json(TESTS)
    full = row_named(d, "full", "run")
    return (f"Measured {d['started_utc'][:10]} on {d['machine']['cores']} cores ({d['machine']['cpu']}, "
            f"`python benchmarks/bench_tests.py`), wall-clock:\n\n"
            + table(["run", "command", "time", "pytest's closing line"],
                    [[r["run"], f"`{r['command']}`", minutes(r["seconds"]), r["closing_line"]] for r in d["rows"]],
                    "llrl")
            + "".join(f"\nWith pytest-xdist the whole suite took {r['seconds'] / full['seconds']:.2f} times as long "
                      f"as in one process.\n" for r in d["rows"] if r["run"] == "xdist"))


@generates("startup", STARTUP)
def startup(src):
    d = src.json(STARTUP)
    rows = [[f"`{r['typed']}`", f"{r['median_s']:.2f}", f"{r['min_s']:.2f}-{r['max_s']:.2f}", len(r["samples"])]
            for r in d["rows"] if r["command"] != "train (README)"]
    slowest = max(float(r[1]) for r in rows)
    return (f"Wall-clock seconds of whole commands, each in a fresh process, Numba's cache warm, "
            f"{d['machine']['cores']} cores, {d['started_utc'][:10]} (`python benchmarks/bench_startup.py`; "
            f"cuda_status: {d['machine']['gpurnn_cuda_status'][1]}):\n\n"
            + table(["command", "median s", "range s", "runs"], rows, "lrrr")
            + f"\nSo none of them spends more than {slowest:.2f} s before its work: that is the whole command.\n")


# ------------------------------------------------------------------------------ your own data

@generates("own-data-digits", OWN_DATA)
def own_data_digits(src):
    d = src.json(OWN_DATA)
    e = d["examples"]["digits"]
    _, accuracy, _, baseline = closing(e["last_line"], OWN_DATA)
    accuracy, baseline = float(accuracy), float(baseline)
    best = (f"its best, {e['best_metric']:.3f} at step {e['best_step']}, is kept in `runs/digits/best.npz`"
            if e["best_metric"] > accuracy else "no earlier evaluation scored higher")
    return (f"With every other setting at its default (an LSTM of 64 units, 2000 steps of 32 sequences), the "
            f"held-out accuracy at the last step was {accuracy:.3f} against {baseline:.3f} for the naive baseline, "
            f"always answering the most common training class; {best} ({e['seconds']:.1f} s, {d['cpu']}, "
            f"`python benchmarks/own_data.py`). `digits-pred.csv` holds the {e['predicted']} predicted labels of "
            f"that best state, one row each (`row,label`); the {e['eval_rows']} held-out ones score "
            f"{e['held_out_accuracy_of_predict']:.3f}.\n")


@generates("own-data-sunspots", OWN_DATA)
def own_data_sunspots(src):
    e = src.json(OWN_DATA)["examples"]["sunspots"]
    _, mse, name, baseline = closing(e["last_line"], OWN_DATA)
    mse, baseline = float(mse), float(baseline)
    after = ("rose after: it overfits" if mse > e["best_metric"] else "did not rise after")
    return (f"The held-out MSE at the last step was {mse:.0f} against {baseline:.0f} for the naive forecast, {name}. "
            f"The held-out part is the last {e['eval_rows']} windows. With only {e['train_rows']} windows to train "
            f"on, the held-out MSE bottomed at {e['best_metric']:.0f} (step {e['best_step']}) and {after}; "
            f"`best.npz` keeps the state of step {e['best_step']}, and `gpurnn predict` uses it.\n")


@generates("own-data-co2", OWN_DATA)
def own_data_co2(src):
    d = src.json(OWN_DATA)
    c, ex = d["co2"], d["examples"]
    naive, seeds = c["naive"], c["seeds"]

    def beat(prefix, score):
        return sum(score(ex[f"{prefix}{s}"]) < naive for s in seeds)
    plain = dict(last=beat("co2-s", lambda e: e["evaluations"][-1][1]), best=beat("co2-s", lambda e: e["best_metric"]))
    diff = dict(last=beat("co2-diff-s", lambda e: e["evaluations"][-1][1]),
                best=beat("co2-diff-s", lambda e: e["best_metric"]))
    evals = [v for s in seeds for _, v in ex[f"co2-s{s}"]["evaluations"]]
    diff_evals = [v for s in seeds for _, v in ex[f"co2-diff-s{s}"]["evaluations"]]
    n = len(seeds)
    shown = ex[c["plotted"][0].split("/")[-1]]
    why = (" (this seed's last state lost to the naive forecast, its best state beat it)"
           if shown["evaluations"][-1][1] > naive > shown["best_metric"] else "")
    return (f"Weekly CO2 at Mauna Loa, 1958-2001 (statsmodels; {len(evals) // n} evaluations a run, {n} seeds, "
            f"`python benchmarks/own_data.py`, {d['cpu']}). Trained on the levels, {sum(v < naive for v in evals)} "
            f"of the {len(evals)} evaluations beat the naive forecast ({naive:.4f}): the last state of {plain['last']} "
            f"seeds of {n} did, the best state of {plain['best']}. Trained on the changes (`--difference`), "
            f"{sum(v < naive for v in diff_evals)} of {len(diff_evals)} did, the last state of {diff['last']} "
            f"seeds and the best of {diff['best']}. `gpurnn report runs/co2-*`:\n\n{c['report'].rstrip()}\n\n"
            f"`gpurnn plot {' '.join(c['plotted'])}`{why}:\n\n![loss curves of two CO2 runs]({c['plot']})\n")


# ---------------------------------------------------------------------------- the kernel report

def merged(rows, key, value):
    """Group ``rows`` by ``key``; within a group, cells whose ``value`` agree share one row, named
    "a, b". Returns [(key, cells, value)] in the order rows first appear."""
    groups = {}
    for r in rows:
        cells = groups.setdefault(key(r), {})
        cells.setdefault(value(r), []).append(r["cell"])
    return [(k, cells, v) for k, by_value in groups.items() for v, cells in by_value.items()]


def cell_names(cells):
    return "every cell" if cells == ["*"] else ", ".join(dict.fromkeys(cells))


@generates("kernel-report", KERNELS)
def kernel_report(src):
    d = src.json(KERNELS)
    by = {(r["kernel"], r["cell"], r["dtype"], r["target"]): r for r in d["rows"]}
    targets = ("sm_80", "sm_90")
    pairs = [dict(kernel=k, cell=c, dtype=t, rows=[by.get((k, c, t, s)) for s in targets])
             for (k, c, t, s) in by if s == targets[0]]
    dtypes = list(dict.fromkeys(p["dtype"] for p in pairs))
    kernels = list(dict.fromkeys(p["kernel"] for p in pairs))
    pairs.sort(key=lambda p: (dtypes.index(p["dtype"]), kernels.index(p["kernel"])))

    def both(p, field, fmt="{}"):
        return " / ".join(fmt.format(r[field]) if r else "—" for r in p["rows"])

    def fma(p):
        if p["kernel"] == "mma_products":       # tensor cores, fed from global memory: their HMMA
            return " / ".join(dict.fromkeys(f"{r['fma']} HMMA" for r in p["rows"] if r))
        values = list(dict.fromkeys(f"{r['ffma_per_lds']:g}" for r in p["rows"] if r))
        return " / ".join(values)

    def value(p):
        return (both(p, "registers"), both(p, "shared"), fma(p), both(p, "occupancy", "{:.2f}"))

    out = [[f"`{k}`", cell_names(cells), dtype, *v]
           for (k, dtype), cells, v in merged(pairs, lambda p: (p["kernel"], p["dtype"]), value)]
    clean = all(r["spill_stores"] == r["spill_loads"] == r["stack"] == r["local"] == 0 for r in d["rows"])
    return (f"Compiled by {d['toolchain']}.\n\n"
            + table(["kernel", "cell", "dtype", "registers sm_80 / sm_90", "static shared bytes sm_80 / sm_90",
                     "FMA per LDS, hottest loop", "occupancy A100 / H100"], out, "lllllll")
            + ("\nNo kernel spills, uses local memory or has a stack frame of its own.\n" if clean else
               "\nSpills, local memory or a stack frame: "
               + ", ".join(f"`{r['kernel']}` {r['cell']} {r['dtype']} {r['target']}" for r in d["rows"]
                           if r["spill_stores"] or r["spill_loads"] or r["stack"] or r["local"]) + ".\n"))


@generates("persistent-limits", KERNELS)
def persistent_limits(src):
    d = src.json(KERNELS)
    limits = d["persistent_limits"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in limits))
    by = {(r["device"], r["cell"], r["dtype"]): r for r in limits}
    pairs = [dict(device=dev, sms=by[(dev, c, t)]["sms"], cell=c, rows=[by.get((dev, c, s)) for s in dtypes])
             for (dev, c, t) in by if t == dtypes[0]]

    def value(p):
        return tuple(" / ".join(str(r[f]) for f in ("largest_hidden", "largest_hidden_w_in_registers")) if r else "—"
                     for r in p["rows"])

    rows, last = [], None
    for (device, sms), cells, v in merged(pairs, lambda p: (p["device"], p["sms"]), value):
        rows.append([f"{device}, {sms} SMs" if device != last else "", cell_names(cells), *v])
        last = device
    grids = {r["device"]: r["largest_grid"] for r in limits}
    per_sm = all(r["largest_grid"] == r["sms"] for r in limits)
    batch = sorted({r["B"] for r in limits})
    return (f"One block of {d['geometry']['persist_threads']} threads per SM, B = {', '.join(map(str, batch))}:\n\n"
            + table(["device (model)", "cell"] + [f"{t}: largest H / W_hh in registers" for t in dtypes],
                    rows, "ll" + "l" * len(dtypes))
            + f"\nThe largest cooperative grid is {'one block per SM' if per_sm else 'as listed'} "
              f"({' and '.join(str(g) for g in grids.values())} blocks), whatever the cell.\n")


# ------------------------------------------------------------------------------------- the lesson

def per_step(norms):
    """(ratio, factor): the gradient's size at the first step over that at the loss, and its
    geometric mean per step (as gpurnn.gradnorms.per_step_factor)."""
    ratio = norms[-1] / norms[0]
    return (0.0, 0.0) if ratio == 0 else (ratio, float(np.exp(np.log(ratio) / (len(norms) - 1))))


def verdict(result):
    """The sentence ``gpurnn grads`` prints for one result (as gpurnn.gradnorms.verdict)."""
    ratio, factor = per_step(result["dh_norms"])
    steps = len(result["dh_norms"]) - 1
    kind = "vanishes" if ratio < 1e-2 else "explodes" if ratio > 1e2 else "survives"
    head = f"{result['label']} (sigma_max {result['sigma_max']:.2f}): {kind}"
    if kind == "survives":
        return f"{head}: {steps} steps back it is {ratio:.3g} times its size at the loss (x{factor:.3f} per step)"
    how = "shrinks" if kind == "vanishes" else "grows"
    return f"{head}: it {how} by x{factor:.3f} per step, to {ratio:.3g} times its size at the loss {steps} steps back"


def report_rows(markdown):
    """The rows of a `gpurnn report` table as dicts keyed by its header."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def seeds(row):
    """The last held-out metric of each seed of a report row (none for a run that diverged)."""
    return [float(v) for v in re.findall(r"([0-9.e+-]+) \(seed \d+\)", row["last held-out metric, per seed"])]


@generates("lesson-runs", LESSON)
def lesson_runs(src):
    """`gpurnn report` of the lesson's runs as benchmarks/lesson.py recorded it, and what it shows."""
    d = src.json(LESSON)
    rows = report_rows(d["report"])
    adam = [r for r in rows if r["--init-scale"] == "—"]              # the runs of the cells' comparison
    plain = [v for r in adam if r["--cell"] == "rnn" for v in seeds(r)]
    gated = [v for r in adam if r["--cell"] in ("lstm", "gru") for v in seeds(r)]
    lengths = sorted({int(r["--seq-len"]) for r in adam if r["--cell"] == "rnn"})
    near = ("no better than that guess" if min(plain) >= 1 / 6 else
            f"at best {(1 / 6 - min(plain)) / (1 / 6):.0%} below that guess")
    return (d["report"].strip() + "\n\n"
            + f"Measured {d['started_utc'][:10]} by `python benchmarks/lesson.py` (the commands above) on commit "
              f"{d['commit']}, {d['cpu']}, {d['blas']}, one BLAS thread (`--blas-threads 1`, the default). "
              f"The metric is the MSE on 1000 held-out sequences after the last step; the mean of the target "
              f"is worth 0.167. With the same 2000 steps, the tanh RNN ends at {min(plain):.3f}–{max(plain):.3f} "
              f"at T = {' and '.join(map(str, lengths))}, {near}, while every LSTM and GRU "
              f"run ends at {max(gated):.2g} or below.\n")


@generates("lesson-explode", LESSON)
def lesson_explode(src):
    """The two SGD runs from 1.5 times an orthogonal W_hh, without and with clipping."""
    d = src.json(LESSON)
    off, on = (next(e for e in d["explode"] if e["clip"] == c) for c in ("off", "1"))
    windows = off["windows"]
    clipped = next(r for r in report_rows(d["report"]) if r["--init-scale"] != "—" and r["--clip"] != "0")
    mse = seeds(clipped)[0]
    reached = " and ".join(f"{w['grad_norm']:.2g} at step {w['step']}" for w in windows)
    last = windows[-1]
    since = windows[-2]["step"] + 1 if len(windows) > 1 else 1
    return (f"In the first two rows the recurrent weights start as an orthogonal matrix times 1.5 and plain "
            f"SGD takes the steps. Without clipping, each large gradient makes a large step that enlarges W_hh, "
            f"which makes the next gradient larger still: the gradient norm reached {reached} (the loss "
            f"averaged {last['loss']:.2g} over steps {since}–{last['step']}). At step {off['stopped_at']} the loss "
            f"was NaN, so training stopped and kept step {off['kept_step']}, whose W_hh has largest singular "
            f"value {off['sigma_max']:.3g}. With `--clip 1`, the same run trained for all {on['kept_step']} "
            f"steps (W_hh ended at {on['sigma_max']:.2f}) to a held-out MSE of {mse:.2g}"
            + (", better than the baseline, but a T = 20 tanh RNN does not solve the task in this budget.\n"
               if mse < 0.15 else ", no better than the baseline.\n"))


@generates("grad-prose", GRADS, LESSON)
def grad_prose(src):
    """What the gradient norms through time show, from gpurnn grads' results (docs/grad_norms.json)
    and the gated cells with random weights (benchmarks/results/lesson.json)."""
    results = src.json(GRADS)["results"]
    scaled = {r["scale"]: per_step(r["dh_norms"]) for r in results if r["scale"] is not None}
    trained = {r["cell"]: r for r in results if r["scale"] is None}
    rnn = trained["rnn"]
    rnn_ratio, rnn_factor = per_step(rnn["dh_norms"])
    steps = len(rnn["dh_norms"]) - 1
    lost = [1 / per_step(trained[c]["dh_norms"])[0] for c in ("lstm", "gru")]
    random = [per_step(r["dh_norms"])[1] for r in src.json(LESSON)["untrained_gated"]]
    return (f"A tanh RNN whose W_hh has largest singular value σ ≤ 1 loses the gradient geometrically: by "
            f"×{scaled[0.5][1]:.2f} per step at σ = 0.5 and by ×{scaled[1.0][1]:.2f} at σ = 1, since tanh' ≤ 1 "
            f"can only shrink it further. Above 1 it can grow: ×{scaled[2.0][1]:.2f} per step at σ = 2. "
            f"Training does not rescue the plain RNN: its W_hh grew to σ = {rnn['sigma_max']:.1f}, yet the "
            f"gradient {'shrinks' if rnn_factor < 1 else 'changes'} by ×{rnn_factor:.2f} per step, because its "
            f"tanh units saturate (tanh' near 0). {steps} steps back the gradient is {rnn_ratio:.0e} of its size "
            f"at the loss. Over the same distance the trained LSTM and GRU lose only a factor of "
            f"{lost[0]:.0f} and {lost[1]:.0f}, which is why they learn the task. With random weights the gated "
            f"cells' gradient shrinks too, because their gates start half open: `gpurnn grads --cell lstm,gru "
            f"--scales 1` measures ×{random[0]:.2f} and ×{random[1]:.2f} per step. Training is what opens the "
            f"gates. The verdict counts a gradient as vanished or exploded when it ends below 1/100 or above "
            f"100 times its size at the loss.\n")


@generates("grad-verdicts", GRADS)
def grad_verdicts(src):
    return "```\n" + "\n".join(verdict(r) for r in src.json(GRADS)["results"]) + "\n```\n"


# ------------------------------------------------------------------------------------- the build

def markdown_files(root=ROOT):
    return [root / "README.md"] + sorted((root / "docs").glob("*.md"))


def render(name, results=RESULTS, docs=DOCS, sources=None):
    """The full region ``name``, markers included."""
    gen = GENERATORS[name]
    body = gen.fn(sources or Sources(results, docs))
    return (f"<!-- generated: {name} (by docs/build.py from {', '.join(gen.sources)}) -->\n"
            f"{body}<!-- end generated: {name} -->")


def rebuilt(text, sources):
    """(new text, names of the regions that changed) for one file's text."""
    changed = []

    def replace(match):
        name = match["name"]
        if name not in GENERATORS:
            raise ValueError(f"region {name!r} has no generator in docs/build.py "
                             f"(known: {', '.join(sorted(GENERATORS))})")
        new = render(name, sources=sources)
        if new != match.group(0):
            changed.append(name)
        return new

    return REGION.sub(replace, text), changed


def stale(results=RESULTS, docs=DOCS, files=None):
    """[(file, region)] for every region whose text differs from what the results files give."""
    sources = Sources(results, docs)
    out = []
    for path in files or markdown_files():
        _, changed = rebuilt(Path(path).read_text(encoding="utf-8"), sources)
        out += [(Path(path), name) for name in changed]
    return out


def build(results=RESULTS, docs=DOCS, files=None):
    """Rewrite every stale region in place; returns [(file, region)] rewritten."""
    sources = Sources(results, docs)
    out = []
    for path in files or markdown_files():
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        new, changed = rebuilt(text, sources)
        if changed:
            path.write_text(new, encoding="utf-8")
        out += [(path, name) for name in changed]
    return out


def regions_in(files=None):
    """{region name: [files]} of every region the Markdown files hold."""
    found = {}
    for path in files or markdown_files():
        for match in REGION.finditer(Path(path).read_text(encoding="utf-8")):
            found.setdefault(match["name"], []).append(Path(path))
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="name the stale regions and exit 1; write nothing")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default: %(default)s)")
    args = parser.parse_args(argv)

    def rel(p):
        return p.relative_to(ROOT) if p.is_relative_to(ROOT) else p

    if args.check:
        found = stale(args.results)
        for path, name in found:
            print(f"{rel(path)}: region {name!r} is stale: run python docs/build.py")
        return 1 if found else 0
    for path, name in build(args.results):
        print(f"{rel(path)}: rewrote region {name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A char-level LSTM language model trained through gpurnn.torch against the same model on torch.nn,
on 1 and 2 threads, with the machine idle and loaded: does the bridge's BLAS fight torch's threads?

    python benchmarks/bench_bridge.py                       # threads 1 and 2, idle and --load 2, 3-4 minutes
    python benchmarks/bench_bridge.py --threads 2 --load 2  # one configuration
    python benchmarks/bench_bridge.py --patch none numpy-products blas-follow   # experiments (below), side by side

What is timed: one training step of a char-level LSTM language model, as a user writes it,
    nn.Embedding(65, 64) -> LSTM(64, 256, num_layers=2, batch_first=True) -> nn.Linear(256, 65)
    -> cross-entropy over every position -> backward -> Adam step,
on batches of 32 sequences of 64 characters, the LSTM's (h, c) carried from step to step (detached,
truncated BPTT): char-rnn's default shape (2 layers; --hidden, --layers, --batch, --seq change it).
The LSTM is torch.nn.LSTM ("torch") or gpurnn.torch.LSTM ("gpurnn"); everything else is torch's.
Both start from the same weights (torch.manual_seed(0); gpurnn.torch initialises as torch.nn does)
on the same characters, so their losses agree (the JSON records the first few).

Each side runs in its own Python process (``--child``, started by this script) that imports torch
(and gpurnn.torch), calls ``torch.set_num_threads(N)`` and nothing else about threads, which is what
a user does: whatever NumPy's BLAS, OpenMP or Numba then do with threads is the bridge's business.
The thread variables (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS, NUMBA_NUM_THREADS,
GOTO_NUM_THREADS) are removed from the children's environment for the same reason.

How the sides are interleaved: per configuration (load, threads) the children of all sides start
together and run ``--warmup`` untimed steps; then ``--rounds`` rounds each give every side one block
of ``--steps`` timed steps, back to back as in training (order reversed every other round), while
the other children wait idle. Each block starts after ``--pause`` seconds of rest (the idle
children's OpenBLAS and OpenMP workers spin for a while after their last call and would otherwise
share the cores with the block) and one untimed step. Reported times are medians over all timed
steps of a side. On a shared machine other jobs come and go; with ``--quiet-wait`` (default) a block
waits until /proc/stat counts no runnable thread besides the spinners below, so that a block times
this benchmark and not somebody's test run (the JSON says how long it waited and how many blocks
ran anyway, after --quiet-wait seconds).

Loaded: ``--load K`` (K > 0) runs K processes that spin (``while True: pass``) at the same priority
for as long as that configuration's children run, as other jobs on a shared machine would; K = 0 is
idle. Both sides run under the same spinners; what matters is the ratio.

How to read the table: one row per (load, threads); "torch.nn ms" is the torch.nn model's median step,
then for each ``--patch`` the gpurnn.torch model's median step and its ratio to torch.nn
(gpurnn / torch: below 1.10 is within 10% of torch.nn, below 1 faster).

``--patch`` (experiments, gpurnn children only; "none" measures gpurnn.torch as it is, its
products through torch.mm: kernels/cpu.use_products):
    none            gpurnn.torch untouched
    numpy-products  the cpu backend's products through NumPy's np.dot, as before gpurnn.torch routed
                    them through torch.mm: NumPy's BLAS pool beside torch's OpenMP pool
    blas-follow     numpy-products, and before each forward NumPy's BLAS limited to
                    torch.get_num_threads() when that changed (threadpoolctl, no restore): fewer
                    threads, still two pools
    omp-passive     OMP_WAIT_POLICY=PASSIVE in the child's environment (torch's OpenMP workers sleep
                    instead of spinning between regions; a user's setting, not one a library can make
                    after torch is imported)
    blas-timeout    OPENBLAS_THREAD_TIMEOUT=4 in the child's environment (OpenBLAS's idle workers
                    spin for 2**4 cycles, not 2**28, before they sleep; also a user's setting)
Several join with "+": ``--patch numpy-products+omp-passive``.
"""

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import host
from host import cpu_facts

RESULTS = Path(__file__).resolve().parent / "results"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "GOTO_NUM_THREADS")
PATCHES = ("none", "numpy-products", "blas-follow", "omp-passive", "blas-timeout")
PATCH_ENV = {"omp-passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "blas-timeout": {"OPENBLAS_THREAD_TIMEOUT": "4"}}


# ---------------------------------------------------------------- the child: one side, one configuration
def patch_bridge(patch, torch):
    """Apply ``patch`` (see the module docstring; several joined by "+") to gpurnn.torch in this process."""
    import gpurnn.torch as gt
    names = patch.split("+")
    if "numpy-products" in names:
        gt._one_thread_pool = lambda be: None           # kernels/cpu keeps np.dot
    if "blas-follow" in names:
        from threadpoolctl import threadpool_limits
        applied = [None]

        def follow(be):
            n = torch.get_num_threads()
            if n != applied[0]:
                threadpool_limits(n, user_api="blas")
                applied[0] = n
        gt._one_thread_pool = follow


def child(args):
    """One side, one configuration, driven through stdin: after ``--warmup`` steps it writes
    "ready"; each line "K" then runs one untimed step and K timed ones and answers with their
    milliseconds (a JSON list); "quit" answers with the summary and exits."""
    import torch
    if args.impl == "gpurnn":
        import gpurnn.torch as gt
    torch.set_num_threads(args.threads)          # what a user does, and all that is done here
    if args.impl == "gpurnn":
        patch_bridge(args.patch, torch)

    V, E, H, B, T = args.vocab, args.embed, args.hidden, args.batch, args.seq
    torch.manual_seed(0)
    lstm_cls = gt.LSTM if args.impl == "gpurnn" else torch.nn.LSTM
    embed = torch.nn.Embedding(V, E)
    lstm = lstm_cls(E, H, num_layers=args.layers, batch_first=True)
    head = torch.nn.Linear(H, V)
    model = torch.nn.ModuleList([embed, lstm, head])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    chunks = 64                                  # the text is read round and round
    text = torch.randint(0, V, (B, chunks * T + 1), generator=torch.Generator().manual_seed(1))
    state = dict(step=0, hx=None)
    losses = []

    def step():
        chunk = text[:, (state["step"] % chunks) * T: (state["step"] % chunks + 1) * T + 1]
        t0 = time.perf_counter()
        opt.zero_grad()
        y, hx = lstm(embed(chunk[:, :-1]), state["hx"])
        loss = torch.nn.functional.cross_entropy(head(y).reshape(-1, V), chunk[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        state["hx"] = tuple(h.detach() for h in hx)
        seconds = time.perf_counter() - t0
        state["step"] += 1
        if len(losses) < 2 * args.warmup + 2:
            losses.append(loss.item())
        return seconds

    for _ in range(args.warmup):
        step()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        step()                                   # untimed: wakes the pools after the pause
        print(json.dumps([step() * 1e3 for _ in range(int(line))]), flush=True)

    try:
        from threadpoolctl import threadpool_info
        pools = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "prefix", "version",
                                        "architecture")} for p in threadpool_info()]
    except ImportError:
        pools = "threadpoolctl not installed"
    import numba
    import numpy as np
    print(json.dumps(dict(
        torch_threads=torch.get_num_threads(), losses=losses,
        threadpools=pools,
        numba_pool_started=_numba_pool_started(), numba_num_threads=numba.config.NUMBA_NUM_THREADS,
        versions=dict(torch=torch.__version__, numpy=np.__version__, numba=numba.__version__),
        gpurnn_torch=sys.modules["gpurnn.torch"].__file__ if "gpurnn.torch" in sys.modules else None)), flush=True)


def _numba_pool_started():
    """Whether Numba started its thread pool (only a parallel=True kernel, or asking for its number
    of threads, starts it; nothing in gpurnn's cpu backend is compiled with parallel=True)."""
    try:
        from numba.np.ufunc import parallel
        return bool(parallel._is_initialized)
    except (ImportError, AttributeError):
        return None


# ---------------------------------------------------------------- the parent
def child_env(patch):
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    for one in patch.split("+"):
        env.update(PATCH_ENV.get(one, {}))
    return env


def patch_name(value):
    """argparse type of --patch: one of PATCHES, or several joined by "+"."""
    for one in value.split("+"):
        if one not in PATCHES:
            raise argparse.ArgumentTypeError(f"unknown patch {one!r}; expected {', '.join(PATCHES)} (or a+b)")
    return value


class Child(host.Child):
    """A --child process for one side (impl, patch) of one configuration."""

    def __init__(self, args, impl, threads, patch):
        self.impl, self.patch = impl, (patch if impl == "gpurnn" else None)
        cmd = [sys.executable, __file__, "--child", "--impl", impl, "--threads", str(threads),
               "--patch", patch, "--warmup", str(args.warmup)]
        for name in ("vocab", "embed", "hidden", "layers", "batch", "seq"):
            cmd += [f"--{name}", str(getattr(args, name))]
        super().__init__(cmd, env=child_env(patch if impl == "gpurnn" else "none"))
        self.samples = []

    def ready(self):
        assert self.read().strip() == "ready"

    def block(self, k):
        times = self.ask(k)
        self.samples += times
        return times

    def finish(self):
        summary = self.ask("quit")
        self.close()
        return dict(impl=self.impl, patch=self.patch, step_ms=self.samples,
                    median_ms=statistics.median(self.samples) if self.samples else None, **summary)


def others_running(ours):
    """How many threads besides ``ours`` (and the one asking) the kernel counts as runnable now
    (Linux's procs_running; None where /proc/stat is not there)."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1]) - 1 - ours
    except OSError:
        pass
    return None


def wait_for_quiet(ours, limit):
    """Wait (at most ``limit`` seconds) until, in at least 4 of 5 looks 20 ms apart, nothing runs but
    ``ours``: other jobs on a shared machine come and go, and a block timed while one runs measures
    that job. Returns (seconds waited, whether it is quiet)."""
    t0 = time.perf_counter()
    while True:
        looks = []
        for _ in range(5):
            looks.append(others_running(ours))
            time.sleep(0.02)
        if None in looks:
            return 0.0, None
        if sum(n > 0 for n in looks) <= 1:
            return time.perf_counter() - t0, True
        if time.perf_counter() - t0 > limit:
            return time.perf_counter() - t0, False
        time.sleep(0.25)


def measure(args, sides, load, threads):
    """Every side's child, started together, then ``--rounds`` rounds of one block of ``--steps``
    timed steps per side, the order reversed every other round, each block after ``--pause`` and,
    with ``--quiet-wait``, once nothing but the K spinners runs. Returns (the runs, the blocks)."""
    children = [Child(args, impl, threads, patch) for impl, patch in sides]
    blocks = []
    try:
        for c in children:
            c.ready()
        for r in range(args.rounds):
            for c in (children if r % 2 == 0 else children[::-1]):
                time.sleep(args.pause)
                waited, quiet = wait_for_quiet(load, args.quiet_wait) if args.quiet_wait else (0.0, None)
                times = c.block(args.steps)
                blocks.append(dict(round=r, impl=c.impl, patch=c.patch, waited_s=waited, quiet=quiet,
                                   step_ms=times))
        return [c.finish() for c in children], blocks
    finally:
        for c in children:
            c.kill()


@contextlib.contextmanager
def spinners(k):
    """K busy processes for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]
    try:
        if procs:
            time.sleep(1.0)              # let the scheduler see them (and the load average start to)
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def machine_info():
    info = cpu_facts()
    info["env"] = {k: os.environ.get(k) for k in THREAD_VARS + ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                                "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "PYTHONPATH")}
    return info


def table(result):
    patches = result["patches"]
    head = "| load | threads | torch.nn ms | " + " | ".join(f"gpurnn.torch ({p}) ms | ratio" for p in patches) + " |"
    lines = [head, "|---:|---:|---:|" + "---:|---:|" * len(patches)]
    for c in result["configs"]:
        cells = [f"{c['load']}", f"{c['threads']}", f"{c['torch_ms']:.1f}"]
        for p in patches:
            g = c["gpurnn"][p]
            cells += [f"{g['median_ms']:.1f}", f"{g['ratio']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", nargs="+", default=["torch", "gpurnn"], choices=["torch", "gpurnn"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch.set_num_threads values (1 2)")
    p.add_argument("--load", nargs="+", type=int, default=[0, 2],
                   help="busy processes during the measurement, one configuration per value; 0 is idle (0 2)")
    p.add_argument("--patch", nargs="+", default=["none"], type=patch_name,
                   help="experiments on the gpurnn side, see above; several joined by + (none)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per block (4)")
    # 10: beside busy processes, 5 rounds left the 2-thread ratio moving between 1.0 and 1.3 from run to run
    p.add_argument("--rounds", type=int, default=10, help="blocks per side and configuration (10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps when a child starts (3)")
    p.add_argument("--pause", type=float, default=0.3, help="seconds of rest before each block (0.3)")
    p.add_argument("--quiet-wait", type=float, default=30.0,
                   help="seconds a block may wait for other jobs to stop running first; 0: no wait (30)")
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON")
    p.add_argument("--name", default="bench_bridge", help="file name stem of the JSON")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.impl, args.threads, args.patch = args.impl[0], args.threads[0], args.patch[0]
        return child(args)

    sides = ([("torch", "none")] if "torch" in args.impl else []) + \
            ([("gpurnn", patch) for patch in args.patch] if "gpurnn" in args.impl else [])
    started = datetime.datetime.now(datetime.timezone.utc)
    result = dict(started_utc=started.isoformat(timespec="seconds"),
                  command=" ".join([os.path.basename(sys.executable)] + sys.argv),
                  model=dict(vocab=args.vocab, embed=args.embed, hidden=args.hidden, layers=args.layers,
                             batch=args.batch, seq=args.seq, optimizer="Adam", batch_first=True),
                  steps=args.steps, rounds=args.rounds, warmup=args.warmup, pause=args.pause, patches=args.patch,
                  machine=machine_info(), load_average_before=os.getloadavg(), configs=[], runs=[], blocks=[])
    if "gpurnn" in args.impl:            # untimed: fills Numba's cache, so that no child compiles
        measure(argparse.Namespace(**{**vars(args), "rounds": 0, "warmup": 1}), [("gpurnn", "none")], 0, 1)
    for load in args.load:
        with spinners(load):
            for threads in args.threads:
                la = os.getloadavg()
                t0 = time.perf_counter()
                runs, blocks = measure(args, sides, load, threads)
                config = dict(load=load, threads=threads, load_average_before=la, load_average_after=os.getloadavg(),
                              seconds=time.perf_counter() - t0, blocks=len(blocks),
                              blocks_not_quiet=sum(b["quiet"] is False for b in blocks),
                              waited_s=sum(b["waited_s"] for b in blocks), gpurnn={})
                print(f"load {load} threads {threads}: {config['seconds']:.0f} s, {config['waited_s']:.0f} s of it "
                      f"waiting for other jobs; {config['blocks_not_quiet']} of {len(blocks)} blocks timed while "
                      "another job ran", flush=True)
                for run in runs:
                    run.update(load=load, threads=threads)
                    print(f"load {load} threads {threads} {run['impl']:6s} {run['patch'] or '':22s} median "
                          f"{run['median_ms']:8.1f} ms  first loss {run['losses'][0]:.6f}",
                          flush=True)
                    if run["impl"] == "torch":
                        config["torch_ms"] = run["median_ms"]
                for run in runs:
                    if run["impl"] == "gpurnn":
                        config["gpurnn"][run["patch"]] = dict(
                            median_ms=run["median_ms"],
                            ratio=run["median_ms"] / config["torch_ms"] if "torch_ms" in config else None)
                result["runs"] += runs
                result["blocks"] += [dict(b, load=load, threads=threads) for b in blocks]
                result["configs"].append(config)
    result["load_average_after"] = os.getloadavg()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    if "torch" in args.impl and "gpurnn" in args.impl:
        print()
        print(table(result))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()

"""The primitives a persistent RNN step is built from, measured on the GPU (under a minute), so that
the napkin math of the persistent kernels is re-based on measured figures.

    python benchmarks/calibrate.py --out calibrate.json     # on a GPU
    python benchmarks/calibrate.py --sim --out c.json       # every kernel once, on tiny grids, in the
                                                            # CUDA simulator (its times mean nothing)

``benchmarks/device_run.sh`` runs it first, into ``<stem>-calibrate.json``. The kernels are
``kernels/cuda/calibrate.py``, of this checkout (it runs before the checkout is installed). Each
figure is the median of ``--repeats`` launches timed with CUDA events, with the least and the
most; the kernels also count SM cycles with ``clock64``. Every launch checks what it computed.

    grid_sync        µs (and cycles) per ``cuda.cg.this_grid().sync()``: a cooperative kernel doing
                     ``rounds`` syncs, time / rounds; at 8, 32 and 132 blocks of 256 threads, each
                     count capped at the driver's max cooperative blocks
    flag_exchange    µs (cycles) per round of flags among all blocks of the grid, by persistent.py's
                     own ``publish`` and ``wait_for_group``: fences, a block barrier, a strong store
                     of the step (``st.relaxed.gpu``), every flag polled from L2, a fence and a
                     block barrier
    tagged_exchange  µs (cycles) per round of 64-bit words step << 32 | value: one load both
                     carries and validates the value, no fence
                     (both poll with ``ld.relaxed.gpu``: a wait on ``cuda.ldcv`` compiles to no
                     load at all; see ``load_relaxed`` in kernels/cuda/primitives.py)
    l2_round_trip    ns and cycles per dependent ``ldcg`` load of a single thread chasing a random
                     cycle of links 128 bytes apart (1 MiB, in L2 after a first pass); clock_ghz =
                     cycles / ns, the SM clock the other cycle counts ran at
    register_array   the register array kernel at one 256-thread block per SM: its registers and
                     local memory per thread (from the driver), whether its 128 floats stayed in
                     registers (0 local bytes), and the FMA rate they feed (TFLOP/s, and FMA per SM
                     per cycle at clock_ghz; an sm_80 / sm_90 SM issues at most 128)

The JSON is rewritten after each figure, so a run stopped part-way keeps what it measured.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))     # this checkout's gpurnn and kernels, installed or not

GPU = dict(threads=256, blocks=(8, 32, 132), rounds=10_000, repeats=5, links=8192, loads=20_000, iters=20_000)
SIM = dict(threads=4, blocks=(2, 3), rounds=3, repeats=1, links=16, loads=40, iters=2)
REG_STEP = 2.0 ** -10          # h grows by this each FMA iteration: a multiple of it below 2^14 is exact in float32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sim", action="store_true", help="every kernel once on tiny grids in the CUDA simulator")
    p.add_argument("--out", type=Path, default=None, help="the JSON to write (default: print it only)")
    p.add_argument("--repeats", type=int, default=None, help="timed launches per figure (default 5; sim 1)")
    p.add_argument("--blocks", default=None, help="block counts, comma-separated (default 8,32,132; sim 2,3)")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.blocks is not None:
        try:
            args.blocks = tuple(int(b) for b in args.blocks.split(","))
        except ValueError:
            p.error(f"--blocks takes block counts separated by commas, e.g. 8,32,132; got {args.blocks!r}")
        if min(args.blocks) < 1:
            p.error(f"--blocks must be at least 1 each, got {args.blocks}")
    return args


def median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


class Bench:
    """The kernels, compiled, and how a launch is timed: CUDA events, or the host clock in the
    simulator."""

    def __init__(self, sim):
        from numba import cuda

        from gpurnn.kernels.cuda import calibrate
        self.sim, self.cuda, self.module = sim, cuda, calibrate
        self.kernels, self.compiled = {}, {}
        for name, (fn, sig) in calibrate.build().items():
            self.kernels[name] = cuda.jit(fn) if sim else cuda.jit(sig)(fn)
            self.compiled[name] = None if sim else self.kernels[name].compile(sig)

    def max_blocks(self, name, threads):
        """The driver's largest co-resident grid of ``name`` (None in the simulator: no cap)."""
        k = self.compiled[name]
        return None if k is None else k.max_cooperative_grid_blocks(threads)

    def seconds(self, kernel, *args):
        """Seconds of one launch of ``kernel`` (configured) with ``args``."""
        if self.sim:
            t0 = time.perf_counter()
            kernel(*args)
            return time.perf_counter() - t0
        start, end = self.cuda.event(), self.cuda.event()
        start.record()
        kernel(*args)
        end.record()
        end.synchronize()
        return self.cuda.event_elapsed_time(start, end) * 1e-3

    def zeros(self, shape, dtype):
        return self.cuda.to_device(np.zeros(shape, dtype))


def spread(values, scale):
    """median, least and most of ``values`` times ``scale``."""
    return median(values) * scale, min(values) * scale, max(values) * scale


# ---------------------------------------------------------------- the figures
def run_grid_sync(bench, kern, nb, T, R, check):
    """(seconds, cycles, whether every sync was a barrier of the grid, or None unchecked)."""
    seen, lag, cyc = bench.zeros(nb, np.int32), bench.zeros(nb, np.int32), bench.zeros(1, np.int64)
    t = bench.seconds(kern, R, int(check), seen, lag, cyc)
    return t, int(cyc.copy_to_host()[0]), int(lag.copy_to_host().sum()) == 0 if check else None


def run_flag_exchange(bench, kern, nb, T, R, check):
    """(seconds, cycles, whether every flag reached the last round)."""
    flags, cyc = bench.zeros(nb, np.int32), bench.zeros(1, np.int64)
    t = bench.seconds(kern, R, flags, cyc)
    return t, int(cyc.copy_to_host()[0]), bool((flags.copy_to_host() == R).all())


def run_tagged_exchange(bench, kern, nb, T, R, check):
    """(seconds, cycles, whether every block read every value of every round once)."""
    words, sums, cyc = bench.zeros(2 * nb, np.int64), bench.zeros((nb, min(32, T)), np.int64), bench.zeros(1, np.int64)
    t = bench.seconds(kern, R, words, sums, cyc)
    want = R * nb * (nb - 1) // 2 + nb * R * (R + 1) // 2        # Σ_r Σ_k (k + r)
    return t, int(cyc.copy_to_host()[0]), bool((sums.copy_to_host().sum(axis=1) == want).all())


ROUNDS = {"grid_sync": (run_grid_sync, "one this_grid().sync()"),
          "flag_exchange": (run_flag_exchange, "one round of flags among every block"),
          "tagged_exchange": (run_tagged_exchange, "one round of tagged words among every block")}


def rounds_figure(bench, name, cfg):
    """One row per block count: µs and cycles per round (a grid sync or an exchange) of ``name``.
    On a GPU a first, untimed launch loads the module and checks (the grid sync's check costs a
    load a round, so only that launch makes it); in the simulator the one launch does both."""
    run, per = ROUNDS[name]
    T, R, reps = cfg["threads"], cfg["rounds"], cfg["repeats"]
    rows = []
    for asked in cfg["blocks"]:
        cap = bench.max_blocks(name, T)
        nb = asked if cap is None else min(asked, cap)
        kern = bench.kernels[name][nb, T]
        runs = [run(bench, kern, nb, T, R, check=True)] if not bench.sim else []
        runs += [run(bench, kern, nb, T, R, check=bench.sim) for _ in range(reps)]
        timed = runs[-reps:]
        us, us_min, us_max = spread([t for t, _, _ in timed], 1e6 / R)
        cycles = median([c for _, c, _ in timed]) / R
        checked = all(ok for _, _, ok in runs if ok is not None)
        rows.append(dict(blocks_asked=asked, blocks=nb, max_cooperative_blocks=cap, threads=T, rounds=R, us=us,
                         us_min=us_min, us_max=us_max, cycles=cycles, checked=checked, simulated=bench.sim))
        print(f"{name:16s} {nb:4d} blocks: {us:8.3f} µs a round ({us_min:.3f}..{us_max:.3f}), "
              f"{cycles:9.0f} cycles; checked {checked}", flush=True)
    return dict(unit="us", per=per, rows=rows, simulated=bench.sim)


def chain_of(links, line, rng):
    """(chain, order): a random single cycle through ``links`` links, one per ``line`` words, from
    link 0: chain[line·order[i]] = line·order[i + 1]."""
    order = np.concatenate([[0], 1 + rng.permutation(links - 1)])
    chain = np.zeros(links * line, np.uint32)
    chain[order * line] = np.roll(order, -1) * line
    return chain, order


def l2_round_trip(bench, cfg):
    n, loads, reps, line = cfg["links"], cfg["loads"], cfg["repeats"], bench.module.LINE_INTS
    chain_host, order = chain_of(n, line, np.random.default_rng(0))
    chain = bench.cuda.to_device(chain_host)
    out, cyc = bench.zeros(1, np.uint32), bench.zeros(1, np.int64)
    kern = bench.kernels["pointer_chase"][1, 1]
    if not bench.sim:
        kern(chain, n, out, cyc)          # one pass over every link: the chain is in L2
        bench.cuda.synchronize()
    times, cycles, checks = [], [], []
    for _ in range(reps):
        times.append(bench.seconds(kern, chain, loads, out, cyc))
        cycles.append(int(cyc.copy_to_host()[0]))
        checks.append(int(out.copy_to_host()[0]) == order[loads % n] * line)
    ns, ns_min, ns_max = spread(times, 1e9 / loads)
    per_load = median(cycles) / loads
    fig = dict(unit="ns", per="one dependent ldcg load (an L2 round trip)", ns=ns, ns_min=ns_min, ns_max=ns_max,
               cycles=per_load, clock_ghz=per_load / ns, loads=loads, links=n,
               footprint_bytes=int(chain_host.nbytes), checked=all(checks), simulated=bench.sim)
    print(f"l2_round_trip    {ns:8.1f} ns ({ns_min:.1f}..{ns_max:.1f}), {per_load:.0f} cycles a load: "
          f"SM clock {fig['clock_ghz']:.2f} GHz; checked {fig['checked']}", flush=True)
    return fig


def register_array(bench, cfg, blocks, clock_ghz):
    REG_FLOATS, REG_CHAINS = bench.module.REG_FLOATS, bench.module.REG_CHAINS
    T, iters, reps = cfg["threads"], cfg["iters"], cfg["repeats"]
    N = blocks * T
    w_host = np.random.default_rng(0).standard_normal((REG_FLOATS, N)).astype(np.float32)
    w, out = bench.cuda.to_device(w_host), bench.zeros(N, np.float32)
    kern = bench.kernels["register_array"][blocks, T]
    step = np.float32(REG_STEP)
    if not bench.sim:
        kern(w, 1, step, out)
        bench.cuda.synchronize()
    times = [bench.seconds(kern, w, iters, step, out) for _ in range(reps)]
    h_sum = iters + REG_STEP * iters * (iters - 1) / 2
    want = w_host.astype(np.float64).sum(axis=0) * h_sum
    scale = np.abs(w_host.astype(np.float64)).sum(axis=0) * h_sum
    err = float((np.abs(out.copy_to_host() - want) / scale).max())
    t = median(times)
    fmas = REG_FLOATS * iters * N
    k = bench.compiled["register_array"]
    fig = dict(unit="TFLOP/s", per="FMAs fed from a thread's 128 floats in cuda.local.array", floats=REG_FLOATS,
               chains=REG_CHAINS, blocks=blocks, threads=T, iters=iters,
               registers=None if k is None else k.regs_per_thread,
               local_bytes=None if k is None else k.local_mem_per_thread,
               tflops=2 * fmas / t / 1e12, tflops_min=2 * fmas / max(times) / 1e12,
               tflops_max=2 * fmas / min(times) / 1e12,
               fma_per_sm_cycle=fmas / blocks / (t * clock_ghz * 1e9) if clock_ghz else None,
               max_rel_error=err, checked=err < 1e-3, simulated=bench.sim)
    fig["in_registers"] = None if k is None else fig["local_bytes"] == 0
    per_cycle = "?" if fig["fma_per_sm_cycle"] is None else f"{fig['fma_per_sm_cycle']:.1f}"
    print(f"register_array   {fig['registers']} registers, {fig['local_bytes']} local bytes a thread: "
          f"{fig['tflops']:.2f} TFLOP/s at {blocks} blocks of {T}, {per_cycle} FMA per SM a cycle; "
          f"checked {fig['checked']}", flush=True)
    return fig


# ---------------------------------------------------------------- machine and output
def machine(bench):
    import numba

    from gpurnn.kernels.cuda import toolchain
    info = dict(python=platform.python_version(), numpy=np.__version__, numba=numba.__version__,
                toolchain=toolchain(), kernels=bench.module.__file__, host=platform.node(),
                platform=platform.platform())
    if bench.sim:
        info.update(gpu="simulator", note="NUMBA_ENABLE_CUDASIM=1: plumbing only, times are meaningless")
        return info
    from numba.cuda.cudadrv.driver import driver
    d = bench.cuda.get_current_device()
    info.update(gpu=d.name.decode() if isinstance(d.name, bytes) else str(d.name),
                compute_capability="%d.%d" % d.compute_capability, sms=d.MULTIPROCESSOR_COUNT,
                max_clock_mhz=d.CLOCK_RATE / 1000, l2_bytes=d.L2_CACHE_SIZE,
                cuda_driver=".".join(map(str, driver.get_version())))
    return info


def write(result, path):
    text = json.dumps(result, indent=1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def main(argv=None):
    args = parse_args(argv)
    if args.sim and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        # The simulator must be chosen before Numba is imported: start again with it set.
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        return subprocess.call([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env=env)
    if args.sim:
        sys.setswitchinterval(1e-4)   # the simulator's block manager polls with the GIL held
    os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")     # 8 blocks is what is measured
    cfg = dict(SIM if args.sim else GPU)
    if args.repeats:
        cfg["repeats"] = args.repeats
    if args.blocks:
        cfg["blocks"] = args.blocks
    bench = Bench(args.sim)
    info = machine(bench)
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  simulated=args.sim, machine=info, config=cfg)
    write(result, args.out)
    for name in ROUNDS:
        result[name] = rounds_figure(bench, name, cfg)
        write(result, args.out)
    result["l2_round_trip"] = l2_round_trip(bench, cfg)
    write(result, args.out)
    blocks = 2 if args.sim else info["sms"]
    clock = None if args.sim else result["l2_round_trip"]["clock_ghz"]
    result["register_array"] = register_array(bench, cfg, blocks, clock)
    write(result, args.out)
    checked = all(r["checked"] for n in ROUNDS for r in result[n]["rows"])
    checked = checked and result["l2_round_trip"]["checked"] and result["register_array"]["checked"]
    print(f"wrote {args.out}" if args.out else json.dumps(result, indent=1))
    if not checked:
        print("a calibration kernel computed a wrong value: its figures measure something else", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

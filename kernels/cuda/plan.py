"""The one place that picks the algorithm of a layer on the GPU, and its sizes: ``choose``.

    "persistent"  one cooperative launch runs all T steps (persistent.py); another the whole BPTT
    "step"        one launch per time step (step.py)

``choose`` is a pure function of the cell, dtype, batch, hidden size, the device's resources, the
block geometry and whether CUDA graphs are on, so it is tested without a GPU on modelled devices
(an A100, an H100, the simulator's). On a GPU the resources come from the driver, and the
co-residency of a cooperative grid from the driver's own occupancy calculator for the compiled
kernel.

The persistent sizes (persistent.py's docstring draws them). The grid is ``groups`` batch shards
x ``slices`` blocks; a block owns ``units`` = ceil(H / slices) hidden units, all G gate rows of
them, for ``rows`` = ceil(B / groups) batch rows; its threads form teams of ``fwd_lanes``
(forward) and ``bwd_lanes`` (backward) lanes. The rule:
  - slices: the fewest with which every value of the forward slice of W_hh sits in registers (a
    team per unit, at most WR/G columns a lane); when no slice count up to the SMs gives that,
    the one with the least work a block (units x rows) whose rest fits in shared memory; never
    fewer than ceil(MIN_LANES·H / NT), unless that is more than the SMs;
  - lanes: forward, NT / units rounded down to a power of two (at most a warp), so a team walks
    one unit; backward, NT / H so rounded (at least 1), so a team walks one column when it can;
  - groups: one block per SM, at most ceil(B / RB) shards, so that a shard's rows fill the RB
    accumulators of a pass;
  - everything on-chip or nothing: W_hh's slice in registers and dynamic shared memory (``layout``)
    beside the lane sums' static arrays (``static_elements``), and in the room left as many
    staged batch rows as fit (``chunk``, all of a block's rows when they fit, at least RB); a
    layer whose blocks cannot all be resident at once runs the step path (a forced
    "persistent" raises ValueError with the reason).

The step sizes (step.py). A step kernel's block covers step_h·step_rh units x step_b·RY batch
rows, where RY, ``step_rows``, is the smallest power of two that covers B (at most the geometry's
step_rb): a block of 16 rows at B = 4 would spend three quarters of its multiply-adds on rows
that do not exist. When the grid of such blocks leaves SMs idle, the reduction of each step is
split over ``splits`` blocks (split.py) where the napkin of ``fewest_rounds`` says it pays: at
B = 64, H = 256 the LSTM's 8 x 4 = 32 blocks would leave three quarters of an H100's SMs idle.
Napkin of ``Device.split_cost_tiles`` (H100 / H200, not measured): a tile of step_k = 16
columns costs a block about 0.25 µs (its loads, 4 columns x 32 FFMA a thread in forward, a
barrier); handing a part over (its stores, a fence, an atomic) about 1 µs, 4 tiles, and the last
block's read-back of the parts about as much.

Which algorithm auto takes. As measured on an H200 with the first persistent kernels
(benchmarks/results/2026-11-27-nvidia-h200-bench.md, float32; a step cost 20 µs plus 0.8-5 µs
per batch row), the per-step path replayed from CUDA graphs won from 16 batch rows on (LSTM,
B = 64, H = 1024: 3.1x per training step) and tied at B = 8; so, with graphs (the default), auto
takes the step path from STEP_FROM_BATCH rows and the persistent path below it. The kernels
these plans size now replace those first ones; their napkin says they win wherever they fit,
but a napkin is not a measurement, and the rule stays the measured one until a GPU run of these
kernels replaces it. Without graphs the step path is bound by its launches and auto keeps the
persistent path wherever it fits.
"""

from dataclasses import dataclass, field, replace

from ..vocabulary import GATES, check_algo
from .runtime import GPU_GEOMETRY, ceil_div

SPLIT_MIN_ROWS = 512       # rows a part of a split accumulation walks at least (accumulate.py)
MAX_PARTS = 64             # parts a split launch has at most
ACC_REGISTERS = {4: 128, 8: 255}   # registers a thread of the accumulation kernel by itemsize (its launch
                                   # bounds; kernel_report.json has the compiled counts)
STEP_FROM_BATCH = 16        # with CUDA graphs, auto's step path from this many batch rows on
MIN_LANES = 4               # lanes of a forward dot product at least: units a block <= threads / 4
KIB = 1024
WARP = 32


@dataclass(frozen=True)
class Device:
    """What the plan needs to know about a GPU. ``registers`` is the per-thread register count of
    the persistent kernels (the SASS report gives it); the occupancy below is the CUDA occupancy
    calculator's, for blocks of whole warps."""
    name: str
    sms: int
    smem_per_sm: int            # bytes of shared memory an SM gives its blocks
    smem_per_block: int         # the most one block may have (with the opt-in above 48 KiB)
    l2_bytes: int
    regs_per_sm: int = 65536
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32
    smem_reserved: int = 1024   # per block, kept by the system on sm_80 and later
    registers: int = 128
    split_cost_tiles: int = 4   # a split step's hand-over of a part, and its sum, in tiles (``step_plan``)

    def resident_blocks(self, threads, static_smem, dyn_smem, registers=None):
        """Blocks of ``threads`` threads that one SM holds at once."""
        regs = registers or self.registers
        warps = ceil_div(threads, WARP)
        regs_per_warp = ceil_div(regs * WARP, 256) * 256
        by_regs = (self.regs_per_sm // regs_per_warp) // warps
        by_threads = self.threads_per_sm // (warps * WARP)
        smem = static_smem + dyn_smem
        by_smem = self.smem_per_sm // (smem + self.smem_reserved) if smem <= self.smem_per_block else 0
        return min(by_regs, by_threads, by_smem, self.blocks_per_sm)

    def cooperative_blocks(self, kernel, threads, static_smem, dyn_smem):
        """The largest cooperative grid of ``kernel`` ("persistent_forward" or "..._backward")."""
        return self.resident_blocks(threads, static_smem, dyn_smem) * self.sms


MB = 1000 * 1000
A100 = Device("A100 (sm_80)", sms=108, smem_per_sm=164 * KIB, smem_per_block=163 * KIB, l2_bytes=40 * MB)
H100 = Device("H100 SXM (sm_90)", sms=132, smem_per_sm=228 * KIB, smem_per_block=227 * KIB, l2_bytes=50 * MB)
# The simulator's modelled GPU: a few SMs, so that small test shapes run grids of several blocks,
# and little shared memory, so that they meet W_hh beyond registers and (auto) the step path.
# Splits cost it what they cost a GPU, in tiles (every simulated block is Python threads: a split
# that pays nothing on the napkin only slows the tests); tests that split give it split_cost_tiles=0.
SIMULATED = Device("simulated (3 SMs)", sms=3, smem_per_sm=12 * KIB, smem_per_block=6 * KIB, l2_bytes=8 * KIB,
                   registers=64)


@dataclass(frozen=True)
class Plan:
    """How one layer and direction runs. For "persistent": ``blocks`` = ``groups`` x ``slices``
    blocks of ``threads`` threads, ``units`` hidden units and ``rows`` batch rows a block (staged
    ``chunk`` rows at a time), teams of ``fwd_lanes`` / ``bwd_lanes`` lanes; the bytes of dynamic
    shared memory each kernel takes; whether all of W_hh sits in registers in each kernel.
    For "step": ``step_rows`` batch rows a thread (the step kernels' RY) and ``splits`` parts
    each step's reduction is split into (the module docstring). ``why``: the reason, in words
    (shown by repr and benchmarks)."""
    algo: str
    why: str
    blocks: int = 0
    threads: int = 0
    groups: int = 0
    slices: int = 0
    units: int = 0
    rows: int = 0
    chunk: int = 0
    fwd_lanes: int = 0
    bwd_lanes: int = 0
    fwd_shared: int = 0
    bwd_shared: int = 0
    fwd_registers_only: bool = False
    bwd_registers_only: bool = False
    step_rows: int = 0
    splits: int = 1
    notes: tuple = field(default=())

    def geometry(self, geo):
        """The block geometry the kernels of this plan run with: ``geo`` with the step kernels'
        rows a thread set to ``step_rows`` for a step plan."""
        return replace(geo, step_rb=self.step_rows) if self.algo == "step" and self.step_rows else geo

    def describe(self):
        if self.algo == "step":
            parts = f", reduction in {self.splits} parts" if self.splits > 1 else ""
            return f"step ({self.why}{parts})"
        where = lambda only: "registers" if only else "registers + shared memory"   # noqa: E731
        return (f"persistent ({self.groups} groups x {self.slices} slices = {self.blocks} blocks x {self.threads} "
                f"threads, {self.units} units x {self.rows} rows a block; W_hh in {where(self.fwd_registers_only)} "
                f"forward, {where(self.bwd_registers_only)} backward)")


def pow2_floor(n):
    """The largest power of two <= n (n >= 1)."""
    p = 1
    while 2 * p <= n:
        p *= 2
    return p


def lanes_for(kernel, units, H, threads):
    """Lanes of a team (module docstring): forward one unit a team, backward one column a team,
    as far as the block's threads go; a power of two, at most a warp."""
    want = threads // units if kernel == "persistent_forward" else threads // H
    return min(pow2_floor(max(want, 1)), WARP, threads)


def layout(kernel, G, H, units, lanes, geo, itemsize):
    """What a thread of ``kernel`` walks with these sizes: (registers_only, elements of a staged
    row, elements of W_hh in shared memory). Forward: ceil(units / teams) units a team,
    ceil(H / lanes) columns a lane, the first unit's first WR/G columns in registers; a staged
    row is one batch row of h_{t-1}, padded to the lanes' columns (the registers' at least).
    Backward: ceil(H / teams) columns a team, ceil(G·units / lanes) own gate rows a lane, the
    first column's first WR rows in registers; a staged row is one batch row of the block's
    dG_t, padded likewise. The dynamic shared memory is ``chunk`` staged rows and the values of
    W_hh not in registers, laid out as persistent.py does."""
    NT, WR = geo.persist_threads, geo.w_registers(itemsize)
    teams = NT // lanes
    if kernel == "persistent_forward":
        KF, KC, UT = max(WR // G, 1), ceil_div(H, lanes), ceil_div(units, teams)
        rest = G * max(KC - KF, 0) + (UT - 1) * G * KC
        return rest == 0, max(KC, KF) * lanes, NT * rest
    KB, KM, CT = max(WR, 1), ceil_div(G * units, lanes), ceil_div(H, teams)
    rest = max(KM - KB, 0) + (CT - 1) * KM
    return rest == 0, max(KM, KB) * lanes, NT * rest


def static_elements(kernel, G, geo):
    """Elements of static shared memory of ``kernel``: the lane sums' G·RB (forward) or RB
    (backward) values of every thread, rows padded by one (persistent.py's ``lane_sum_of``)."""
    values = G * geo.persist_rows if kernel == "persistent_forward" else geo.persist_rows
    return values * (geo.persist_threads + 1)


def choose(cell, itemsize, B, H, device, algo="auto", geo=GPU_GEOMETRY, cooperative_blocks=None, graphs=True):
    """The Plan for one layer and direction with block geometry ``geo`` (``runtime.Geometry``:
    persist_threads, persist_rows, w_registers). ``graphs``: whether the per-step path replays
    its launches from CUDA graphs (``graphs.enabled()``). ``cooperative_blocks(kernel, threads,
    static, dyn)`` defaults to the device model's; on a GPU it is the driver's answer for the
    compiled kernel. A forced "persistent" that cannot run raises ValueError with the reason."""
    check_algo(algo)
    if algo == "step":
        return step_plan(cell, itemsize, B, H, device, geo, "asked for")
    if algo == "auto" and graphs and B >= STEP_FROM_BATCH:
        return step_plan(cell, itemsize, B, H, device, geo, f"B = {B} >= {STEP_FROM_BATCH} rows, with CUDA graphs")
    coop = cooperative_blocks or device.cooperative_blocks
    G, NT, RB = GATES[cell], geo.persist_threads, geo.persist_rows
    fitting, seen = [], set()
    for tried in range(min(ceil_div(MIN_LANES * H, NT), device.sms), device.sms + 1):
        units = ceil_div(H, max(tried, 1))
        slices = ceil_div(H, units)
        if units in seen:
            continue
        seen.add(units)
        groups = max(min(ceil_div(B, RB), device.sms // slices), 1)
        rows = ceil_div(B, groups)
        groups = ceil_div(B, rows)
        RP = ceil_div(rows, RB) * RB
        kernels = {}
        for kernel in ("persistent_forward", "persistent_backward"):
            lanes = lanes_for(kernel, units, H, NT)
            only, row, w = layout(kernel, G, H, units, lanes, geo, itemsize)
            static = static_elements(kernel, G, geo) * itemsize
            room = (device.smem_per_block - static) // itemsize - w      # elements left for staged rows
            kernels[kernel] = (lanes, only, row, w, static, room // row // RB * RB)
        chunk = min(RP, *(k[5] for k in kernels.values()))             # staged rows at a time, both kernels
        if chunk < RB:
            continue
        sizes = {k: (lanes, only, (chunk * row + w) * itemsize, static)
                 for k, (lanes, only, row, w, static, _most) in kernels.items()}
        if all(coop(k, NT, static, nbytes) >= groups * slices for k, (_l, _o, nbytes, static) in sizes.items()):
            fitting.append((slices, units, groups, rows, chunk, sizes))
            if sizes["persistent_forward"][1]:
                break              # the fewest slices whose forward W_hh sits in registers
    if not fitting:
        problem = (f"no split of H = {H} into at most {device.sms} blocks of {NT} threads keeps W_hh on-chip "
                   f"with every block resident at once on {device.name}")
        if algo == "persistent":
            raise ValueError(f"algo='persistent' cannot run {cell} with H={H}, B={B}: {problem}; "
                             "use algo='step' or 'auto'")
        return step_plan(cell, itemsize, B, H, device, geo, problem)
    in_registers = [f for f in fitting if f[5]["persistent_forward"][1]]
    least_work = min(fitting, key=lambda f: (f[1] * f[3], f[0]))      # units x rows a block, then fewer slices
    slices, units, groups, rows, chunk, sizes = in_registers[0] if in_registers else least_work
    (fl, fonly, fbytes, _), (bl, bonly, bbytes, _) = sizes["persistent_forward"], sizes["persistent_backward"]
    why = "asked for" if algo == "persistent" else "fits on " + device.name
    return Plan("persistent", why, blocks=groups * slices, threads=NT, groups=groups, slices=slices, units=units,
                rows=rows, chunk=chunk, fwd_lanes=fl, bwd_lanes=bl, fwd_shared=fbytes, bwd_shared=bbytes,
                fwd_registers_only=fonly, bwd_registers_only=bonly)


STEP_REGISTERS = 128        # the step kernels' launch bounds: two blocks of 256 threads an SM


def step_plan(cell, itemsize, B, H, device, geo, why):
    """The "step" Plan (module docstring): rows a thread from B; parts (``fewest_rounds``) from the
    k tiles of the forward product, the blocks of the x-y grid and the blocks ``device`` holds at
    once at the kernels' launch bounds, a split costing ``device.split_cost_tiles`` tiles."""
    rows = min(geo.step_rb, pow2_ceil(ceil_div(B, geo.step_b)))
    xy = ceil_div(H, geo.step_h * (geo.step_rh if itemsize == 4 else geo.step_rh64)) * ceil_div(B, geo.step_b * rows)
    threads = geo.step_h * geo.step_b * geo.step_kz
    wave = max(device.resident_blocks(threads, 0, 0, STEP_REGISTERS), 1) * device.sms
    tiles = ceil_div(H, geo.step_k)
    cost = device.split_cost_tiles
    parts = fewest_rounds(xy, tiles, wave, min(tiles, MAX_PARTS), cost, lambda S: cost)
    return Plan("step", why, step_rows=rows, splits=parts)


def fewest_rounds(blocks, work, wave, most, part_cost, sum_cost):
    """The parts S, 1 <= S <= most, that minimise the napkin time of a launch of ``blocks`` blocks
    each doing ``work`` units, split S ways: ceil(blocks·S / wave) rounds of the ``wave`` blocks
    the GPU holds at once, each block doing ceil(work / S) units plus, for S > 1, ``part_cost``
    to hand its part over, and the last block ``sum_cost(S)`` more to add the parts; the fewer
    parts on a tie. More parts fill idle SMs until a round more, or the hand-overs, cost more
    than the shorter parts save."""
    best, cost = 1, None
    for S in range(1, max(most, 1) + 1):
        rounds = ceil_div(blocks * S, wave)
        c = rounds * ceil_div(work, S) + (rounds * part_cost + sum_cost(S) if S > 1 else 0)
        if cost is None or c < cost:
            best, cost = S, c
    return best


def pow2_ceil(n):
    """The smallest power of two >= n (n >= 1)."""
    p = 1
    while p < n:
        p *= 2
    return p


def splits(N, tiles, itemsize, device, geo=GPU_GEOMETRY):
    """Parts S of the accumulation kernel's N rows (accumulate.py) for ``tiles`` output tiles:
    ``fewest_rounds`` over tiles of acc_k rows, no part under SPLIT_MIN_ROWS rows. Napkin of the
    cost of parts (float32, H100 / H200, not measured): a block's partial tile is (R² + R)·AT²
    values, 72 KiB, about what an SM's share of L2 bandwidth moves in the time one tile of acc_k
    rows takes it to compute (131 K FFMA): storing a part costs a block one row tile, and the
    last block reading S parts back S row tiles."""
    TM = geo.acc_threads * geo.acc_regs
    static = 2 * 2 * geo.acc_k * TM * itemsize + 4              # the two double-buffered tiles, the flag
    wave = max(device.resident_blocks(geo.acc_threads ** 2, static, 0, ACC_REGISTERS[itemsize]), 1) * device.sms
    most = min(N // SPLIT_MIN_ROWS, MAX_PARTS)
    return fewest_rounds(max(tiles, 1), ceil_div(N, geo.acc_k), wave, most, 1, lambda S: S)


def limits(cell, itemsize, device, geo=GPU_GEOMETRY, B=8):
    """For a batch of B rows on ``device``: the largest hidden size the persistent path accepts,
    the largest grid it plans, and the largest hidden size whose W_hh sits all in registers in
    both kernels."""
    largest = in_registers = grid = 0
    for H in range(1, 4097):
        p = choose(cell, itemsize, B, H, device, "auto", geo, graphs=False)
        if p.algo != "persistent":
            continue
        largest, grid = H, max(grid, p.blocks)
        if p.fwd_registers_only and p.bwd_registers_only:
            in_registers = H
    return dict(largest_grid=grid, largest_hidden=largest, largest_hidden_w_in_registers=in_registers)


def with_registers(device, registers):
    return replace(device, registers=registers)


def step_instructions(kernel, plan, cell, H, itemsize, loops, geo=GPU_GEOMETRY):
    """Instructions a warp issues in one time step of ``kernel`` under ``plan``, from the
    instruction counts of its compiled loops (``kernels/report.py``'s ``step_loops``: each loop
    with the loops nested in it counted once) and how many times each runs (persistent.py): a
    step once; per step, ``passes`` passes (forward: units a team x row passes; backward: columns
    a team x row passes), each with its loop over W_hh in shared memory as many times as the pass
    has values there and its lane sum's inner loop L times for each value a lane sums (none
    with one lane); the staging loop ceil(row / NT) times per staged row (RB a row pass). A
    loop the compiler unrolled counts its instructions per source iteration (``step_loops``'
    load counts say how many it holds). The static count of a loop with branches counts every
    branch, as a warp whose lanes take different ones runs them all. The exchange (flag waits)
    is not here: it is waiting, not issuing."""
    G, NT, RB = GATES[cell], geo.persist_threads, geo.persist_rows
    WR = geo.w_registers(itemsize)
    row_passes = ceil_div(plan.rows, RB)
    if kernel == "persistent_forward":
        lanes, values = plan.fwd_lanes, G * RB
        KF, KC, UT = max(WR // G, 1), ceil_div(H, lanes), ceil_div(plan.units, NT // lanes)
        passes = UT * row_passes
        shared_trips = row_passes * (max(KC - KF, 0) + (UT - 1) * KC)
        row = max(KC, KF) * lanes
    else:
        lanes, values = plan.bwd_lanes, RB
        KB, KM, CT = max(WR, 1), ceil_div(G * plan.units, lanes), ceil_div(H, NT // lanes)
        passes = CT * row_passes
        shared_trips = row_passes * (max(KM - KB, 0) + (CT - 1) * KM)
        row = max(KM, KB) * lanes
    sum_trips = ceil_div(values, lanes) * lanes if lanes > 1 else 0
    per_shared = RB + G if kernel == "persistent_forward" else RB + 1    # its loads an iteration
    # a compiled loop runs ``unrolled`` iterations of the source's: its instructions an iteration
    unrolled = {"shared": max(loops["shared_lds"] / per_shared, 1), "lane_sum": max(loops["lane_sum_lds"], 1),
                "staging": max(loops["staging_sts"], 1)}
    each = {k: loops[k] / unrolled[k] for k in unrolled}
    return round(loops["step"] + (passes - 1) * loops["pass"] + (shared_trips - passes) * each["shared"]
                 + passes * (sum_trips - 1) * each["lane_sum"]
                 + (row_passes * RB * ceil_div(row, NT) - 1) * each["staging"])


# ---------------------------------------------------------------- napkin
# What the napkin assumes until a GPU run's calibration (benchmarks/calibrate.py) measures it.
NAPKIN_CLOCK_GHZ = 1.755         # an H100's / H200's SM clock under load
NAPKIN_CYCLES_PER_INSTRUCTION = 2   # 8 warps on 4 schedulers issuing in turn: the best one block gets
NAPKIN_EXCHANGE_US = 1.5         # a flag exchange: fence, flag store, poll from L2, the staged loads' wait


def napkin_step_us(instructions, slices, clock_ghz=NAPKIN_CLOCK_GHZ, exchange_us=NAPKIN_EXCHANGE_US):
    """Napkin microseconds of one time step of a persistent kernel: its critical path of
    ``instructions`` (``step_instructions``) at NAPKIN_CYCLES_PER_INSTRUCTION, plus one exchange
    when the group has several slices. A napkin, not a measurement: latency beyond what two warps
    a scheduler hide, and the exchange's real cost, make the real step slower."""
    return instructions * NAPKIN_CYCLES_PER_INSTRUCTION / (clock_ghz * 1e3) + (exchange_us if slices > 1 else 0.0)

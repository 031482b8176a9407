"""The one place that picks the algorithm of a layer on the GPU: ``choose``.

    "persistent"  one cooperative launch runs all T steps (persistent.py); another the whole BPTT
    "step"        one launch per time step (step.py)

``choose`` is a pure function of the cell, dtype, batch, hidden size, the device's resources and
whether CUDA graphs are on, so it is tested without a GPU on modelled devices (an A100, an H100,
the simulator's). On a GPU the resources come from the driver, and the co-residency of a
cooperative grid from the driver's own occupancy calculator for the compiled kernel.

Which one, as measured on an H200 (benchmarks/results/2026-11-27-nvidia-h200-bench.md, float32).
A persistent step costs about 20 µs plus 0.8-5 µs per batch row (RNN at H = 64 to LSTM at
H = 1024): each block walks its batch 4 rows at a time, each group ending in a block-wide tree sum
of its split dot products, with one block of 8 warps per SM to hide the latency. The per-step path
pays a launch per step (64 µs of host time for a step_forward through numba-cuda) unless its
launches are replayed from CUDA graphs (graphs.py), and then costs what its tiled kernels take,
which cover 16 batch rows a block whatever B. LSTM forward per step, graphs against persistent:
B = 8, H = 256: 30 µs against about 40 (between the persistent 20 at B = 1 and 56 at B = 16);
B = 16, H = 512: 45 µs against more than 56 (the persistent kernel's at H = 256); B = 64, H = 1024:
96 µs against 332, and 3.1x faster per training step. The training steps tie at B = 8. So, with
graphs (the default), auto takes the step path from STEP_FROM_BATCH rows and the persistent path
below it, whose B = 1 training steps beat cuDNN's at H = 256. Without graphs the step path is
bound by its launches and auto keeps the persistent path wherever it fits.

What fits: one block per SM (``units`` = ceil(H / SMs) hidden units a block), all blocks co-resident
(the driver's ``max_cooperative_grid_blocks``). A block keeps on-chip, in dynamic shared memory:
forward the G·units rows of W_hh of its units; backward the units columns of W_hh (rows of W_hhᵀ)
and, when there is room, its columns of dW_hh and its rows of db_hh, accumulated over all T steps.
Whatever does not fit is read from L2 each step (W_hh) or left to the accumulation kernel after
the recursion (dW_hh, db_hh); past half the L2, W_hh would stream from HBM every step and the
step path is chosen.
"""

from dataclasses import dataclass, field, replace

from ..vocabulary import GATES, check_algo
from .runtime import GPU_GEOMETRY, ceil_div

STEP_FROM_BATCH = 16        # with CUDA graphs, auto's step path from this many batch rows on
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
# The simulator's modelled GPU: a few SMs, so that small test shapes run grids of several blocks.
# Its shared memory and L2 are tiny, so that the test shapes (H up to 13) meet every case: W_hh and
# dW_hh on-chip, W_hh on-chip but dW_hh after the loop, W_hh read from L2, and (auto) the step path.
SIMULATED = Device("simulated (3 SMs)", sms=3, smem_per_sm=3 * KIB, smem_per_block=3 * KIB // 2, l2_bytes=8 * KIB,
                   registers=64)


@dataclass(frozen=True)
class Plan:
    """How one layer and direction runs. For "persistent": ``blocks`` blocks of ``threads``
    threads, ``units`` hidden units a block, each dot product split over ``split`` threads; the
    on-chip flags and dynamic shared memory of each kernel; the padded row length (``*_stride``) of
    the W slices in shared memory. ``why``: the reason, in words (shown by repr and benchmarks)."""
    algo: str
    why: str
    blocks: int = 0
    threads: int = 0
    units: int = 0
    split: int = 1
    fwd_w_on_chip: bool = False
    bwd_w_on_chip: bool = False
    dw_on_chip: bool = False
    fwd_stride: int = 0
    bwd_stride: int = 0
    fwd_shared: int = 0
    bwd_shared: int = 0
    notes: tuple = field(default=())

    def describe(self):
        if self.algo == "step":
            return f"step ({self.why})"
        where = lambda flag: "on-chip" if flag else "L2"   # noqa: E731
        return (f"persistent ({self.blocks} blocks x {self.threads} threads, {self.units} units a block; "
                f"W_hh {where(self.fwd_w_on_chip)} forward, {where(self.bwd_w_on_chip)} backward; "
                f"dW_hh {'on-chip' if self.dw_on_chip else 'after the loop'})")


def split_for(units, threads):
    """Threads per hidden unit of a block (each walks every split-th element of the unit's dot
    products): the largest power of two that still gives every unit of the block its threads in
    one pass; 1 when the units outnumber the threads."""
    split = 1
    while 2 * split * units <= threads:
        split *= 2
    return split


def padded(length, split):
    """A row length for W slices in shared memory. The threads of a warp read ``split``
    consecutive elements of 32/split different rows (split < 32) or 32 consecutive elements of
    one row: rows ``split`` words apart (mod 32) never share a bank."""
    return ceil_div(length, WARP) * WARP + split % WARP


def choose(cell, itemsize, B, H, device, algo="auto", threads=GPU_GEOMETRY.persist_threads,
           rows=GPU_GEOMETRY.persist_rows, cooperative_blocks=None, graphs=True):
    """The Plan for one layer and direction, for blocks of ``threads`` threads holding ``rows``
    batch rows each (``Geometry.persist_threads``, ``persist_rows``). ``graphs``: whether the
    per-step path replays its launches from CUDA graphs (``graphs.enabled()``).
    ``cooperative_blocks(kernel, threads, static, dyn)`` defaults to the device model's; on a GPU
    it is the driver's answer for the compiled kernel. A forced "persistent" whose grid cannot be
    co-resident raises ValueError with the reason; one whose W_hh is too large for the L2 runs
    anyway (reading W_hh from memory every step)."""
    check_algo(algo)
    if algo == "step":
        return Plan("step", "asked for")
    if algo == "auto" and graphs and B >= STEP_FROM_BATCH:
        return Plan("step", f"B = {B} >= {STEP_FROM_BATCH} rows, with CUDA graphs")
    coop = cooperative_blocks or device.cooperative_blocks
    G, s = GATES[cell], itemsize
    units = ceil_div(H, device.sms)
    blocks = ceil_div(H, units)
    split = split_for(units, threads)
    fwd_stride, bwd_stride = padded(H, split), padded(G * H, split)
    fwd_static, bwd_static = G * rows * threads * s, rows * threads * s    # partial sums of the split products
    w_fwd = G * units * fwd_stride * s          # the forward W_hh slice
    w_bwd = units * bwd_stride * s              # the backward W_hhᵀ slice
    dw_bwd = w_bwd + G * units * s              # dW_hhᵀ beside it, and db_hh

    def fits(kernel, static, dyn):
        return static + dyn <= device.smem_per_block and coop(kernel, threads, static, dyn) >= blocks

    if not fits("persistent_forward", fwd_static, 0) or not fits("persistent_backward", bwd_static, 0):
        problem = (f"{blocks} blocks of {threads} threads cannot all be resident on {device.name} "
                   f"({coop('persistent_forward', threads, fwd_static, 0)} can)")
        if algo == "persistent":
            raise ValueError(f"algo='persistent' cannot run {cell} with H={H}, B={B}: {problem}; "
                             "use algo='step' or 'auto'")
        return Plan("step", problem)
    fwd_on = fits("persistent_forward", fwd_static, w_fwd)
    bwd_on = fits("persistent_backward", bwd_static, w_bwd)
    dw_on = bwd_on and fits("persistent_backward", bwd_static, w_bwd + dw_bwd)
    w_bytes = G * H * H * s
    why = "asked for" if algo == "persistent" else "fits on " + device.name
    if not (fwd_on and bwd_on) and 2 * w_bytes > device.l2_bytes:
        beyond = (f"W_hh ({w_bytes / 2**10:.0f} KiB) fits neither in the shared memory of {blocks} blocks "
                  f"nor in half the L2 ({device.l2_bytes / 2**10:.0f} KiB) of {device.name}")
        if algo == "auto":
            return Plan("step", beyond)
        why = f"asked for, although {beyond}"
    return Plan("persistent", why, blocks=blocks, threads=threads, units=units, split=split,
                fwd_w_on_chip=fwd_on, bwd_w_on_chip=bwd_on, dw_on_chip=dw_on,
                fwd_stride=fwd_stride, bwd_stride=bwd_stride,
                fwd_shared=w_fwd if fwd_on else 0,
                bwd_shared=(w_bwd if bwd_on else 0) + (dw_bwd if dw_on else 0))


def limits(cell, itemsize, device, threads=GPU_GEOMETRY.persist_threads, rows=GPU_GEOMETRY.persist_rows, B=8):
    """The largest hidden size the persistent path accepts on ``device``, and the largest whose
    W_hh stays on-chip in both directions (with dW_hh on-chip too), for a batch of B rows."""
    largest = on_chip = with_dw = grid = 0
    for H in range(1, 8193):
        p = choose(cell, itemsize, B, H, device, "auto", threads, rows)
        if p.algo != "persistent":
            continue
        largest, grid = H, max(grid, p.blocks)
        if p.fwd_w_on_chip and p.bwd_w_on_chip:
            on_chip = H
            if p.dw_on_chip:
                with_dw = H
    return dict(largest_grid=grid, largest_hidden=largest, largest_hidden_w_on_chip=on_chip,
                largest_hidden_dw_on_chip=with_dw)


def with_registers(device, registers):
    return replace(device, registers=registers)

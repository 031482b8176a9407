"""The primitives a persistent step is built from, one kernel each, for ``benchmarks/calibrate.py``
to time on the GPU: the napkin math of a persistent kernel (persistent.py, plan.py) adds these up,
so they are measured, not guessed.

    grid_sync        one ``cuda.cg.this_grid().sync()`` of a cooperative grid
    flag_exchange    a round of persistent.py's per-block flags: publish, then wait for the group
    tagged_exchange  a round of 64-bit words (step << 32 | value): one load carries and validates
    pointer_chase    one dependent load from L2 (``ldcg``), by a single thread
    register_array   a thread's 128 floats in a local array kept in registers, in an FMA loop

Legend: NB blocks in the grid (one group: every block exchanges with every other), NT threads a
block, W = min(32, NT) threads of a block that poll tagged words (one warp), R rounds, N threads of the FMA
kernel. Every kernel but register_array has thread 0 of block 0 write the SM clock cycles
(``clock64``) of its timed loop into ``cycles[0]``; the host times every launch with CUDA events.
In the simulator ``clock64`` is the host's nanosecond clock, and every figure is meaningless.
"""

import numba
from numba import cuda

from .persistent import publish, wait_for_group
from .primitives import clock64, load_relaxed

REG_FLOATS = 128     # floats a thread of register_array keeps in its local array
REG_CHAINS = 8       # independent accumulators its FMA loop rotates through
LINE_INTS = 32       # int32 words in a 128-byte line: pointer_chase's links are a line apart


def grid_sync(rounds, check, seen, lag, cycles):
    """R = ``rounds`` grid syncs in a loop: the cost of one is the launch's time / R.

    seen (NB,) int32, zero on entry; lag (NB,) int32, zero on entry, ADDED into; cycles (1,) int64
    written. With ``check`` 1, thread 0 of each block writes the round into seen[b] before each
    sync and, after it, counts in lag[b] the rounds at which its neighbour's seen[(b+1) % NB] was
    still behind: all zero when the sync is a barrier of the whole grid. Timed runs pass 0.
    Grid (NB,) blocks of NT threads, cooperative (NB within the driver's max cooperative blocks).
    """
    grid = cuda.cg.this_grid()
    b, nb, tid = cuda.blockIdx.x, cuda.gridDim.x, cuda.threadIdx.x
    start = clock64()
    for r in range(1, rounds + 1):
        if check and tid == 0:
            cuda.stcg(seen, b, r)
        grid.sync()
        if check and tid == 0 and cuda.ldcg(seen, (b + 1) % nb) < r:
            lag[b] += 1
    if b == 0 and tid == 0:
        cycles[0] = clock64() - start


def flag_exchange(rounds, flags, cycles):
    """R rounds of persistent.py's exchange between the blocks of a group, the exchange its
    kernels end each step with instead of a grid sync: ``publish`` and ``wait_for_group``
    themselves, so the figure is theirs.

    Per round r (1..R), every block publishes r into flags[b] (fences, a block barrier, a strong
    store), then waits until every flag of the grid is >= r (thread s polls the flags s, s + NT,
    ... with strong loads from L2), ending with a fence and a block barrier. Flags only grow, so a
    block a round ahead never stalls one behind.
    flags (NB,) int32, zero on entry, every one R on exit; cycles (1,) int64 written.
    Grid (NB,) blocks of NT threads, all co-resident (NB within the max cooperative blocks): a
    block waits for all others.
    """
    b, nb, tid = cuda.blockIdx.x, cuda.gridDim.x, cuda.threadIdx.x
    start = clock64()
    for r in range(1, rounds + 1):
        publish(flags, b, r)
        wait_for_group(flags, 0, nb, r)
    if b == 0 and tid == 0:
        cycles[0] = clock64() - start


def tagged_exchange(rounds, words, sums, cycles):
    """R rounds of an exchange of tagged words: the value and its step in one 64-bit store, so a
    load that sees the step has the value too, with no fence and no flag.

    Per round r (1..R), every block: thread 0 stores words[r % 2, b] = r << 32 | (b + r) with
    ``stcg``; W threads (one warp) poll, thread w the words w, w + W, ... of buffer r % 2 with
    ``load_relaxed`` until each carries step r, and add each word's value (its low 32 bits) into a sum;
    then a block barrier. Two buffers by parity: a block writes round r + 2 over round r only
    after every block has written round r + 1, i.e. has read round r.
    words (2*NB,) int64, buffer p at [p*NB, (p+1)*NB), zero on entry; sums (NB, W) int64 written:
    sums[b].sum() = Σ_r Σ_k (k + r) when every value arrived; cycles (1,) int64 written.
    Grid (NB,) blocks of NT threads, all co-resident, as flag_exchange.
    """
    b, nb, tid = cuda.blockIdx.x, cuda.gridDim.x, cuda.threadIdx.x
    pollers = min(32, cuda.blockDim.x)
    total = numba.int64(0)
    start = clock64()
    for r in range(1, rounds + 1):
        base = (r % 2) * nb
        if tid == 0:
            cuda.stcg(words, base + b, (numba.int64(r) << 32) | (b + r))
        k = tid
        while k < nb and tid < pollers:
            w = load_relaxed(words, base + k)
            while (w >> 32) != r:
                w = load_relaxed(words, base + k)
            total += w & 0xFFFFFFFF
            k += pollers
        cuda.syncthreads()
    if b == 0 and tid == 0:
        cycles[0] = clock64() - start
    if tid < pollers:
        sums[b, tid] = total


def pointer_chase(chain, loads, out, cycles):
    """``loads`` dependent loads with ``ldcg`` (cached in L2, not L1): j = chain[j] from j = 0.

    chain (n·32,) uint32: chain[32·s] is the index of the next link, a random single cycle through
    the n links, one per 128-byte line (no two links share a line); unsigned, so that no
    negative-index check sits between two loads (one IMAD.WIDE does). out (1,) uint32 written: the
    index reached; cycles (1,) int64 written: SM cycles of the loop, so one L2 round trip is
    cycles / loads. Grid (1,) block of 1 thread.
    """
    j = numba.uint32(0)
    start = clock64()
    for _ in range(loads):
        j = cuda.ldcg(chain, j)
    cycles[0] = clock64() - start
    out[0] = j


def register_array(w, iters, step, out):
    """Whether 128 floats a thread holds in ``cuda.local.array`` stay in registers, and the FMA
    rate they feed: the slice of W_hh a thread of a persistent kernel would own.

    Thread i loads column i of w into a local array of 128 floats, then ``iters`` times, with
    h = 1, 1 + step, 1 + 2·step, ... (a new value each iteration, as h_{t-1} is each step), adds
    wr[k0 + c]·h into acc[c] for every k0 = 0, 8, ..., 120 and c < 8: 128 FMAs an iteration, 8
    independent chains. Every loop has a constant trip count, so NVVM unrolls it, the indices
    become constants and both arrays registers. The same loop written ``acc[k % 8] += wr[k] * h``
    over k < 128 is unrolled only 8 times: both arrays then live in a 544-byte stack frame in local
    memory (numba-cuda 0.30.4, sm_90). No ``clock64`` here: reading it around the loop took the
    kernel from 159 registers to 255 and spills; the host's events time it.
    w (128, N) float32; out (N,) float32 written: Σ acc = Σ_k w[k, i] · Σ_it h_it (to rounding).
    Grid (ceil(N / NT),) blocks of NT threads; the GPU run uses one 256-thread block per SM.
    FLOPs 2·128·iters·N.
    """
    wr = cuda.local.array(REG_FLOATS, numba.float32)
    acc = cuda.local.array(REG_CHAINS, numba.float32)
    i = cuda.grid(1)
    if i >= w.shape[1]:
        return
    for k in range(REG_FLOATS):
        wr[k] = w[k, i]
    for c in range(REG_CHAINS):
        acc[c] = 0
    h = numba.float32(1)
    for _ in range(iters):
        for k0 in range(0, REG_FLOATS, REG_CHAINS):
            for c in range(REG_CHAINS):
                acc[c] += wr[k0 + c] * h
        h += step
    total = numba.float32(0)
    for c in range(REG_CHAINS):
        total += acc[c]
    out[i] = total


def build():
    """{name: (pyfunc, signature)} of every calibration kernel, for compiling ahead of a launch
    (the driver's occupancy and register queries take the compiled kernel) and without a GPU."""
    i32, u32, i64, f32 = numba.int32, numba.uint32, numba.int64, numba.float32
    a_i32, a_i64 = i32[::1], i64[::1]
    return {"grid_sync": (grid_sync, numba.void(i32, i32, a_i32, a_i32, a_i64)),
            "flag_exchange": (flag_exchange, numba.void(i32, a_i32, a_i64)),
            "tagged_exchange": (tagged_exchange, numba.void(i32, a_i64, i64[:, ::1], a_i64)),
            "pointer_chase": (pointer_chase, numba.void(u32[::1], i32, u32[::1], a_i64)),
            "register_array": (register_array, numba.void(f32[:, ::1], i32, f32, f32[::1]))}

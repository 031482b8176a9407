"""Staging tiles of a matrix in shared memory: the one place the per-step kernels (``step.py``) and the
accumulation kernel (``accumulate.py``) copy a block's operands from global memory.

Every tile is double-buffered: a shared array of shape (2, rows, width) and buffer ``p`` in {0, 1},
and one block barrier per tile suffices (the buffer being written was last read before the
previous barrier).

    stage_rows   sh[p, r, off + c] = src[r0 + r, c0 + c]      a tile as it lies in memory
    stage_cols   sh[p, c, off + r] = src[r0 + r, c0 + c]      a tile transposed
                 (each as a fetch and a put, below)

Both put 0 outside the source (r >= nr or c >= nc), so a kernel's inner loop needs no bounds test.

Prefetching into registers. Staging that loads from global memory and stores into shared memory
at once makes the store wait for the load (hundreds of cycles from L2 or DRAM) before anything
else runs: staging tile i+1 and then computing tile i leaves every tile waiting on memory. Each
staging is therefore split in two, ``fetch_*`` (global -> the thread's registers, ``items``
values a thread) and ``put_*`` (registers -> shared): a kernel fetches tile i+1, computes tile i
while those loads are in flight, then puts tile i+1 and crosses the barrier:

    fetch(i + 1) -> regs;   compute(i) from sh[i & 1];   put regs -> sh[(i + 1) & 1];   syncthreads

Why transposed tiles: in the inner loop each thread reads a short run of consecutive elements of one
tile row (its batch rows, its hidden units), which the compiler turns into one 64- or 128-bit
shared-memory load (LDS.64 / LDS.128): the register tiling of the step kernels depends on it. The
source lies the other way round (batch rows of h_{t-1} and dG, rows of W_hh along k), so those tiles
are stored transposed. A transposed store is conflict-free when the tile row is 4 x (odd number)
words long (``padded``) and each warp writes 8 consecutive source columns of 4 source rows: the 32
addresses c·width + r then fall in 32 different banks, and the warp's global loads are 4 runs of 32
bytes, whole sectors.
"""

import numba
from numba import cuda

from .runtime import device_function

COLUMN_RUN = 8      # source columns one warp reads per row in a transposed stage (32 bytes of float32)


def padded(width):
    """The row length of a transposed tile holding ``width`` elements a row: a multiple of 4 (so a
    thread's run of 4 elements is 16-byte aligned) that is an odd multiple of 4 (so the transposed
    stores of a warp hit 32 different banks)."""
    w = -(-width // 4) * 4
    return w + 4 if (w // 4) % 2 == 0 else w


def items(rows, cols, threads):
    """Values of a rows x cols tile one thread of ``threads`` stages: the size of its register
    array in ``fetch_*`` and ``put_*``."""
    return -(-rows * cols // threads)


def build(dt, threads_x, threads_y, threads):
    """(fetch_rows, put_rows, fetch_cols, put_cols) for a block of ``threads`` threads,
    ``threads_x`` along x and ``threads_y`` along y (and threads / (threads_x·threads_y) along z):
    stage_rows and stage_cols (module docstring) split at the registers. A thread keeps its
    values of a tile at ``regs[at + i]``, i < ``items(rows, cols, threads)``; a put takes the same
    rows, cols and ``at`` as its fetch. Consecutive threads take consecutive source columns
    (coalesced loads); stage_rows' stores are conflict-free, stage_cols' as ``padded`` says."""
    zero = dt(0)
    U = numba.uint64

    @device_function
    def lin_of():
        return (cuda.threadIdx.z * threads_y + cuda.threadIdx.y) * threads_x + cuda.threadIdx.x

    def pair(transposed):
        """(fetch, put) of stage_cols (``transposed``) or stage_rows: one loop each, the thread's
        i-th value at source (r, c) = ``position(idx)``, stored at sh[p, c, off + r] or
        sh[p, r, off + c] (``transposed`` is a constant of the closure: no branch is compiled)."""

        @device_function
        def position(idx, rows, cols):
            if transposed:                    # warps take runs of COLUMN_RUN columns of 4 rows
                run = COLUMN_RUN if cols % COLUMN_RUN == 0 else cols
                blk = idx // (run * rows)
                rem = idx - blk * (run * rows)
                r = rem // run
                return r, blk * run + rem - r * run
            r = idx // cols                    # consecutive threads, consecutive columns
            return r, idx - r * cols

        @device_function
        def slot(i, rows, cols):
            """(whether the tile has a value i for this thread, its source r, c)."""
            idx = lin_of() + i * threads
            r, c = position(idx, rows, cols)
            return (rows * cols) % threads == 0 or idx < rows * cols, r, c

        @device_function
        def fetch(regs, at, rows, cols, src, r0, nr, c0, nc):
            for i in range((rows * cols + threads - 1) // threads):
                here, r, c = slot(i, rows, cols)
                if here:
                    v = zero
                    if r < nr and c < nc:
                        v = src[U(r0 + r), U(c0 + c)]
                    regs[at + i] = v

        @device_function
        def put(sh, p, off, rows, cols, regs, at):
            for i in range((rows * cols + threads - 1) // threads):
                here, r, c = slot(i, rows, cols)
                if here and transposed:
                    sh[U(p), U(c), U(off + r)] = regs[at + i]
                elif here:
                    sh[U(p), U(r), U(off + c)] = regs[at + i]

        return fetch, put

    # fetch_*(regs, at, rows, cols, src, r0, nr, c0, nc): regs[at + i] = src[r0 + r, c0 + c] for
    # this thread's i-th (r, c), 0 outside; put_*(sh, p, off, rows, cols, regs, at): those values
    # stored as stage_rows / stage_cols store them.
    fetch_rows, put_rows = pair(False)
    fetch_cols, put_cols = pair(True)
    return fetch_rows, put_rows, fetch_cols, put_cols

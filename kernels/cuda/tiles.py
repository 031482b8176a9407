"""Staging tiles of a matrix in shared memory: the one place the per-step kernels (``step.py``) and the
accumulation kernel (``accumulate.py``) copy a block's operands from global memory.

Every tile is double-buffered: a shared array of shape (2, rows, width) and buffer ``p`` in {0, 1}.
A kernel stages tile i+1 into the other buffer before it computes on tile i, so the global loads of
the next tile are in flight while the multiply-adds of this one run, and one block barrier per tile
suffices (the buffer being written was last read before the previous barrier).

    stage_rows   sh[p, r, off + c] = src[r0 + r, c0 + c]      a tile as it lies in memory
    stage_cols   sh[p, c, off + r] = src[r0 + r, c0 + c]      a tile transposed

Both put 0 outside the source (r >= nr or c >= nc), so a kernel's inner loop needs no bounds test.

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


def build(dt, threads_x, threads_y, threads):
    """(stage_rows, stage_cols) for a block of ``threads`` threads, ``threads_x`` along x and
    ``threads_y`` along y (and threads / (threads_x·threads_y) along z)."""
    zero = dt(0)
    U = numba.uint64

    @device_function
    def stage_rows(sh, p, off, rows, cols, src, r0, nr, c0, nc):
        """sh[p, r, off + c] = src[r0 + r, c0 + c] for r < rows, c < cols (0 where r >= nr or
        c >= nc). Consecutive threads take consecutive c: coalesced loads, conflict-free stores."""
        lin = (cuda.threadIdx.z * threads_y + cuda.threadIdx.y) * threads_x + cuda.threadIdx.x
        for i in range((rows * cols + threads - 1) // threads):     # a constant trip count: unrolled,
            idx = lin + i * threads                                  # and (r, c) hoisted out of the
            if (rows * cols) % threads != 0 and idx >= rows * cols:   # caller's tile loop (a test
                break                                                   # the compiler drops if it can)
            r = idx // cols
            c = idx - r * cols
            v = zero
            if r < nr and c < nc:                # in bounds, so unsigned (no wraparound code)
                v = src[U(r0 + r), U(c0 + c)]
            sh[U(p), U(r), U(off + c)] = v

    @device_function
    def stage_cols(sh, p, off, rows, cols, src, r0, nr, c0, nc):
        """sh[p, c, off + r] = src[r0 + r, c0 + c] for r < rows, c < cols (0 where r >= nr or
        c >= nc): the tile transposed. A warp takes runs of COLUMN_RUN consecutive c of 4 rows."""
        run = COLUMN_RUN if cols % COLUMN_RUN == 0 else cols
        lin = (cuda.threadIdx.z * threads_y + cuda.threadIdx.y) * threads_x + cuda.threadIdx.x
        for i in range((rows * cols + threads - 1) // threads):
            idx = lin + i * threads
            if (rows * cols) % threads != 0 and idx >= rows * cols:
                break
            blk = idx // (run * rows)
            rem = idx - blk * (run * rows)
            r = rem // run
            c = blk * run + rem - r * run
            v = zero
            if r < nr and c < nc:
                v = src[U(r0 + r), U(c0 + c)]
            sh[U(p), U(c), U(off + r)] = v

    return stage_rows, stage_cols

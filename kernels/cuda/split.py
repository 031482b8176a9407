"""Split reductions: a launch whose output tiles are too few to fill the GPU splits each tile's
reduction into S parts, one block a part, and adds the parts in a fixed order.

    block (tile, z), z < S     computes the partial sum of its part of the reduction
                               parts[z, ...] = partial;  fence;  counters[tile] += 1 (atomic)
    the block that arrives last (the atomic returned S - 1)
                               out[...] += parts[0] + parts[1] + ... + parts[S - 1]   (z order)
                               counters[tile] = 0                  (ready for the next launch)

Deterministic: which block arrives last varies, but it adds the parts in the order of z, each read
back from memory (its own included), so the rounding never depends on the order of arrival; the
atomic counts arrivals and touches no data. No second launch: the sum runs in the block that would
otherwise only have stored its partial. The partial sums cost one store and one load of the output
tile per part, against a part's share of the reduction; the plan asks that a part still
walk enough of the reduction for that to pay (``plan.fewest_rounds``, for both the accumulation
kernel, ``plan.splits``, and the step kernels, ``plan.step_plan``).

The reads of other blocks' parts go past L1 (``ldcg``): L1 is not coherent between SMs. A block's
stores are ordered before its arrival is counted by a barrier and then one thread's fence before
the atomic (the fence is cumulative: it orders what the barrier made visible to that thread, as
a cooperative grid sync does), and the last block fences once more after reading the count, so
its loads of the parts come after every part's stores.

Host side: ``Scratch`` holds the parts and the counters of the launches on one stream, grown when
a launch needs more. The counters are zeroed when allocated and left at zero by every launch; the
parts need no zeroing (every part is written before it is read). Launches on one stream run in
order, so they may share a scratch; one captured into a CUDA graph may not (a graph keeps the
pointers it was captured with, and a grown scratch frees them): such a launch brings its own.
"""

import threading

import numba
from numba import cuda

from . import runtime as rt
from .runtime import device_function


def build(threads_x, threads_y, threads):
    """``arrive(counters, tile, splits, flag) -> last`` for blocks of ``threads`` threads
    (``threads_x`` x ``threads_y`` x the rest along z). Every thread of the block calls it after
    storing its part; it returns whether this block arrived last for ``tile`` (the same answer
    in every thread). ``flag`` is a shared int32 array of one element."""

    @device_function
    def arrive(counters, tile, splits, flag):
        lin = (cuda.threadIdx.z * threads_y + cuda.threadIdx.y) * threads_x + cuda.threadIdx.x
        cuda.syncthreads()                     # every thread's part stored
        if lin == 0:
            cuda.threadfence()                 # ... and visible to the whole GPU before the count
            arrived = cuda.atomic.add(counters, tile, numba.int32(1))
            last = arrived == splits - 1
            if last:
                counters[tile] = 0             # every part has arrived: nobody reads it again
                cuda.threadfence()             # the others' parts before this block reads them
            flag[0] = 1 if last else 0
        cuda.syncthreads()
        return flag[0] != 0

    return arrive


class Scratch:
    """The parts and counters of split launches on one stream (module docstring), grown on demand."""

    def __init__(self):
        self.parts = {}          # dtype name -> flat array
        self.counters = None

    def get(self, dtype, elements, tiles):
        """(parts, counters): a flat array of at least ``elements`` values of ``dtype`` and an
        int32 array of at least ``tiles`` zeros."""
        xp = rt.xp_of()
        have = self.parts.get(dtype.name)
        if have is None or have.size < elements:
            self.parts[dtype.name] = have = xp.empty(max(elements, 1), dtype)
        if self.counters is None or self.counters.size < tiles:
            self.counters = xp.zeros(max(tiles, 1), "int32")
        return have, self.counters


_scratch = {}


def scratch(stream):
    """The Scratch of launches on ``stream`` (CuPy's; one for the simulator's None) from this host
    thread: keyed by the thread too, because CuPy's per-thread default stream has one handle in
    every thread for streams that are not ordered with each other."""
    key = None
    if stream is not None and not rt.cuda_simulated():
        import cupy
        device = getattr(stream, "device_id", None)
        key = (stream.ptr, cupy.cuda.runtime.getDevice() if device is None else device, threading.get_ident())
    if key not in _scratch:
        _scratch[key] = Scratch()
    return _scratch[key]


def clear():
    """Drop every stream's scratch (each is made again, zeroed, when next needed)."""
    _scratch.clear()

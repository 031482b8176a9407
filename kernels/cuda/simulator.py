"""What Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) needs before it can check gpurnn's kernels.

Installed by ``kernels/cuda/__init__.py`` when the simulator is on, never otherwise.

1. Shared arrays, once per block. The simulator runs a block's threads as Python threads and
   creates a shared array on the first call from each source line: ``get``, then ``np.empty`` and
   store, without a lock. Two threads that both see "not yet" get different arrays, and the block
   computes with a tile it never wrote (seen: about one launch in a few thousand, wrong gradients).
   Same logic, under a lock.
2. Cooperative grids. numba-cuda 0.30's simulator runs the blocks of a grid one after another and
   treats ``cuda.cg.this_grid().sync()`` as a block barrier ("we only support cooperative grids
   with one block"), so a value one block writes for another is read before it is written. Here
   every block of a launch runs at once, each with its own shared memory (static and dynamic),
   and ``this_grid().sync()`` is a barrier of every thread of the grid. A grid sync that some
   threads can never reach (they returned) raises instead of hanging. Blocks that never sync
   behave as before: their order was never defined.

3. Device memory. The simulator copies each NumPy argument of a launch and copies it back when
   the kernel ends, one argument after another: two arguments that are the same array on a GPU
   (the persistent backward's dG_x and dG_h, for every cell but the GRU) become two copies, and the
   copy written back last wins. ``device_view`` wraps an array as the simulator's device array
   instead, which it passes through as is: kernels read and write the caller's memory, as on a GPU.

``unpatched()`` restores numba-cuda's own behaviour for a while: the tests use it to show that the
persistent kernels are wrong without the patch, i.e. that the patch is what makes them checkable.
"""

import contextlib
import sys
import threading

import numba
import numpy as np

_ORIGINAL = {}


# ---------------------------------------------------------------- 1. shared arrays under a lock
def _locked_shared_array(unlocked):
    from numba.np import numpy_support
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0:   # dynamic shared memory: no allocation per line
            return unlocked(self, shape, dtype, alignment)
        # An alignment is a promise for the compiler's vector loads; NumPy's buffers are aligned.
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                if isinstance(dtype, numba.types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    return array


# ---------------------------------------------------------------- 2. all blocks at once
class _Block:
    """What a simulated thread asks its block for: its shape, the state of ``syncthreads_count``
    and friends, its own shared memory, and the grid it belongs to."""

    def __init__(self, block_dim, dynshared_size, grid):
        from numba.cuda.simulator.kernelapi import FakeCUDAShared
        self._block_dim = block_dim
        self.block_state = np.zeros(block_dim, dtype=np.bool_)
        self.shared = FakeCUDAShared(dynshared_size)
        self.grid = grid


class _Grid:
    """Runs every block of a launch at once. Replaces the simulator's ``BlockManager``, which the
    simulator builds once per block and runs in turn: the first one runs the whole grid, the others
    find nothing left to do."""

    def __init__(self, f, grid_dim, block_dim, debug):
        self._f, self._grid_dim, self._block_dim, self._debug = f, grid_dim, block_dim, debug

    def run(self, grid_point, *args):
        from numba.cuda.simulator import kernel as sim_kernel
        if any(grid_point):
            return
        context = sim_kernel._get_kernel_context()
        dynshared = context._shared._dynshared_size
        n_blocks = int(np.prod(self._grid_dim))
        n_threads = n_blocks * int(np.prod(self._block_dim))
        self.barrier = threading.Barrier(n_threads)
        threads = []
        for block_point in np.ndindex(*self._grid_dim):
            block = _Block(self._block_dim, dynshared, self)
            for thread_point in np.ndindex(*self._block_dim):
                t = sim_kernel.BlockThread(lambda: self._f(*args), block, block_point, thread_point, self._debug)
                threads.append(t)
        for t in threads:
            t.start()
        self._poll(threads)

    def _poll(self, threads):
        """The simulator's block barrier, for every block at once: release a block's threads when
        all its live threads wait in ``syncthreads``. Raise the first exception of any thread."""
        live = list(threads)
        while live:
            by_block = {}
            for t in live:
                if t.exception:
                    self._abort(threads)
                    raise t.exception[0].with_traceback(t.exception[1])
                by_block.setdefault(id(t._manager), []).append(t)
            for members in by_block.values():
                if all(t.syncthreads_blocked for t in members):
                    for t in members:
                        t.syncthreads_blocked = False
                        t.syncthreads_event.set()
            live = [t for t in live if t.is_alive()]
            waiting = self.barrier.n_waiting
            if waiting and waiting == len(live) and waiting < self.barrier.parties:
                self._abort(threads)
                raise RuntimeError(
                    f"this_grid().sync(): {waiting} threads wait at the grid barrier, but "
                    f"{self.barrier.parties - waiting} threads of the grid have returned and can never "
                    "reach it (a cooperative kernel must let every thread reach every grid sync)")
        for t in threads:
            if t.exception:
                raise t.exception[0].with_traceback(t.exception[1])

    def _abort(self, threads):
        for t in threads:
            t.abort = True
            t.syncthreads_blocked = False
            t.syncthreads_event.set()
        self.barrier.abort()


def _grid_sync(self):
    """``this_grid().sync()``: every thread of the grid waits here until all have arrived."""
    me = threading.current_thread()
    if me.abort:
        raise RuntimeError("abort flag set on grid sync")
    try:
        me._manager.grid.barrier.wait()
    except threading.BrokenBarrierError:
        raise RuntimeError("grid sync aborted: another thread of the grid failed") from None


def _block_shared(self):
    """``cuda.shared``: the shared memory of the calling thread's own block."""
    block = getattr(threading.current_thread(), "_manager", None)
    return block.shared if isinstance(block, _Block) else self._shared


# ---------------------------------------------------------------- 3. no copies of arguments
def device_view(a):
    """``a`` (a NumPy array) as the simulator's device array over the same memory."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    return a if isinstance(a, FakeCUDAArray) else FakeCUDAArray(a)


# ---------------------------------------------------------------- install / undo
def _targets():
    from numba.cuda.simulator import kernel as sim_kernel
    from numba.cuda.simulator import kernelapi
    return {(kernelapi.FakeCUDAShared, "array"): None,
            (sim_kernel, "BlockManager"): _Grid,
            (kernelapi.GridGroup, "sync"): _grid_sync,
            (kernelapi.FakeCUDAModule, "shared"): property(_block_shared)}


def install():
    """Patch the simulator (idempotent)."""
    if _ORIGINAL:
        return
    for (owner, name), new in _targets().items():
        old = owner.__dict__[name]
        _ORIGINAL[(owner, name)] = old
        setattr(owner, name, _locked_shared_array(old) if new is None else new)


@contextlib.contextmanager
def unpatched():
    """numba-cuda's own simulator within the block; the patches again after it."""
    saved = dict(_ORIGINAL)
    for (owner, name), old in saved.items():
        setattr(owner, name, old)
    _ORIGINAL.clear()
    try:
        yield
    finally:
        install()

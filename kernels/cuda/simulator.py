"""What Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) needs before it can check gpurnn's kernels.

Installed by ``kernels/cuda/__init__.py`` when the simulator is on, never otherwise.

1. Shared arrays, once per block. The simulator runs a block's threads as Python threads and
   creates a shared array on the first call from each source line: ``get``, then ``np.empty`` and
   store, without a lock. Two threads that both see "not yet" get different arrays, and the block
   computes with a tile it never wrote (seen: about one launch in a few thousand, wrong gradients).
   Same logic, under a lock. A new shared array, static or dynamic, is filled with 0xFF bytes
   (NaN, or -1) instead of the simulator's zeros or leftovers: on a GPU shared memory starts with
   whatever was there, and a kernel that reads what it never wrote must fail its tests here.
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

4. Warp-level operations and cache-hinted memory access, which the simulator lacks:
   ``shfl_sync``, ``shfl_up_sync``, ``shfl_down_sync``, ``shfl_xor_sync`` and ``syncwarp``
   exchange values among the lanes of a warp (the threads ``32w .. 32w + 31`` of a block, fewer in
   a block's last warp), each lane waiting for the others as the hardware's convergence does;
   they need every lane of the warp in the mask, and a source lane the warp lacks raises (the
   persistent kernels sum through shared memory instead; these are for kernels that want them).
   ``ldcg``, ``ldcv`` and ``stcg`` read and write the array (Python threads see every store at
   once). A flag wait is a volatile load in a loop (``ldcv``, or ``primitives.load_relaxed``,
   which calls ``volatile_load`` here): a thread that keeps reading the same
   value at the same place is spinning, and when every live thread of the grid is spinning or
   waiting at a barrier for 2 seconds, nothing can ever change the value it waits for: the launch
   raises, naming the spinning blocks, instead of hanging (as a grid sync that cannot complete
   does).

``unpatched()`` restores numba-cuda's own behaviour for a while: the tests use it to show that the
persistent kernels are wrong without the patch, i.e. that the patch is what makes them checkable.
"""

import contextlib
import sys
import threading
import time

import numba
import numpy as np

_ORIGINAL = {}
_ABSENT = object()      # a name the simulator does not have at all


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
                res = self._allocations[key] = _poisoned(shape, dtype)
        return res

    return array


def _poisoned(shape, dtype):
    """A new shared array as a GPU leaves it: not zero. Every byte 0xFF (NaN for floats, -1 for
    integers), so that a kernel reading what it never wrote computes garbage a test sees."""
    a = np.empty(shape, dtype)
    a.view(np.uint8)[...] = 0xFF
    return a


# ---------------------------------------------------------------- 2. all blocks at once
class _Block:
    """What a simulated thread asks its block for: its shape, the state of ``syncthreads_count``
    and friends, its own shared memory, and the grid it belongs to."""

    def __init__(self, block_dim, dynshared_size, grid):
        from numba.cuda.simulator.kernelapi import FakeCUDAShared
        self._block_dim = block_dim
        self.block_state = np.zeros(block_dim, dtype=np.bool_)
        self.shared = FakeCUDAShared(dynshared_size)
        self.shared._dynshared[:] = -1          # poisoned, as _poisoned
        self.grid = grid
        n = int(np.prod(block_dim))
        self.warps = [_Warp(min(WARP, n - w)) for w in range(0, n, WARP)]


WARP = 32
STUCK_SECONDS = 2.0     # every live thread spinning on a flag or at a barrier this long: a deadlock


class _Warp:
    """The lanes of one warp meet here to exchange values: ``lanes`` threads, one slot each."""

    def __init__(self, lanes):
        self.lanes = lanes
        self.values = [None] * lanes
        self.barrier = threading.Barrier(lanes)


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
        stuck_since = None
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
            now = time.monotonic()
            if live and all(_waiting(t, now) for t in live) and any(_spinning(t, now) for t in live):
                stuck_since = stuck_since or now
                if now - stuck_since > STUCK_SECONDS:
                    self._abort(threads)
                    raise RuntimeError(_deadlock_message(live, now))
            else:
                stuck_since = None
            time.sleep(0.0002)
        for t in threads:
            if t.exception:
                raise t.exception[0].with_traceback(t.exception[1])

    def _abort(self, threads):
        for t in threads:
            t.abort = True
            t.syncthreads_blocked = False
            t.syncthreads_event.set()
        self.barrier.abort()
        for block in {id(t._manager): t._manager for t in threads}.values():
            for warp in block.warps:
                warp.barrier.abort()


def _spinning(t, now):
    """Whether thread ``t`` is polling a flag: its latest volatile loads (``volatile_load``), the
    last within 0.25 s, read the same value at the same place."""
    return getattr(t, "spins", 0) > 1 and now - getattr(t, "last_volatile", 0.0) < 0.25


def _waiting(t, now):
    return (t.syncthreads_blocked or getattr(t, "warp_blocked", False) or getattr(t, "grid_blocked", False)
            or _spinning(t, now))


def _deadlock_message(live, now):
    spinners = sorted({tuple(t.blockIdx) for t in live if _spinning(t, now)})
    where = ", ".join(str(b[0] if b[1:] == (0, 0) else b) for b in spinners)
    return (f"a flag wait can never be satisfied: block(s) {where} keep reading the same flag while every "
            f"other thread of the grid waits too (a producer that never publishes, or waits on its consumer)")


def _grid_sync(self):
    """``this_grid().sync()``: every thread of the grid waits here until all have arrived."""
    me = threading.current_thread()
    if me.abort:
        raise RuntimeError("abort flag set on grid sync")
    me.grid_blocked = True
    try:
        me._manager.grid.barrier.wait()
    except threading.BrokenBarrierError:
        raise RuntimeError("grid sync aborted: another thread of the grid failed") from None
    finally:
        me.grid_blocked = False


def _block_shared(self):
    """``cuda.shared``: the shared memory of the calling thread's own block."""
    block = getattr(threading.current_thread(), "_manager", None)
    return block.shared if isinstance(block, _Block) else self._shared


# ---------------------------------------------------------------- 4. warps and cache hints
def _lane():
    """(thread, its warp, its lane)."""
    me = threading.current_thread()
    block = getattr(me, "_manager", None)
    if not isinstance(block, _Block):
        raise RuntimeError("warp operations run only in kernels launched through the patched simulator")
    return me, block.warps[me.thread_id // WARP], me.thread_id % WARP


def _meet(me, warp):
    me.warp_blocked = True
    try:
        warp.barrier.wait()
    except threading.BrokenBarrierError:
        raise RuntimeError("warp operation aborted: another thread of the grid failed") from None
    finally:
        me.warp_blocked = False


def _shuffle(mask, value, source):
    """Every lane of the warp offers ``value``; each gets the value of lane ``source(lane)``, or
    its own when that is None (past the warp's edge, as the hardware's clamp)."""
    me, warp, lane = _lane()
    full = (1 << warp.lanes) - 1
    if int(mask) & full != full:
        raise NotImplementedError(f"simulated shuffles need every lane of the warp in the mask ({warp.lanes} "
                                  f"lanes, mask {int(mask):#x})")
    src = source(lane)
    if src is not None and not 0 <= src < WARP:
        src = None
    if src is not None and src >= warp.lanes:
        raise RuntimeError(f"shuffle from lane {src} of a warp of {warp.lanes} threads: the kernel reads a "
                           "lane that does not exist")
    warp.values[lane] = value
    _meet(me, warp)
    got = value if src is None else warp.values[src]
    _meet(me, warp)         # the slots are written again by the next shuffle
    return got


def warp_gather(value):
    """Every lane of the calling thread's warp offers ``value``; each gets the list of all of
    them, in lane order (the warp-wide instructions' stand-in: mma.py)."""
    me, warp, lane = _lane()
    warp.values[lane] = value
    _meet(me, warp)
    got = list(warp.values)
    _meet(me, warp)         # the slots are written again by the next exchange
    return got


def lane_id():
    """The calling thread's lane in its warp."""
    return _lane()[2]


def _shfl_sync(self, mask, value, src_lane):
    return _shuffle(mask, value, lambda lane: int(src_lane) % WARP)


def _shfl_up_sync(self, mask, value, delta):
    return _shuffle(mask, value, lambda lane: lane - int(delta) if lane >= int(delta) else None)


def _shfl_down_sync(self, mask, value, delta):
    return _shuffle(mask, value, lambda lane: lane + int(delta) if lane + int(delta) < WARP else None)


def _shfl_xor_sync(self, mask, value, lane_mask):
    return _shuffle(mask, value, lambda lane: lane ^ int(lane_mask))


def _syncwarp(self, mask=0xFFFFFFFF):
    _shuffle(mask, 0, lambda lane: None)


def _ldcg(self, array, i):
    return array[i]


def _ldcv(self, array, i):
    return volatile_load(array, i)


def volatile_load(array, i):
    """A volatile load (``ldcv``, ``primitives.load_relaxed``): the value, and a note of whether
    the thread is spinning on it."""
    me = threading.current_thread()
    v = array[i]
    key = (id(array), i, v.item() if hasattr(v, "item") else v)
    if getattr(me, "last_key", None) == key:
        me.spins = getattr(me, "spins", 0) + 1
        time.sleep(0.0005)     # a spinning thread lets the one it waits for run
    else:
        me.spins = 0
    me.last_key, me.last_volatile = key, time.monotonic()
    return v


def _stcg(self, array, i, value):
    array[i] = value


_WARP_AND_CACHE = {"shfl_sync": _shfl_sync, "shfl_up_sync": _shfl_up_sync, "shfl_down_sync": _shfl_down_sync,
                   "shfl_xor_sync": _shfl_xor_sync, "syncwarp": _syncwarp, "ldcg": _ldcg, "ldcv": _ldcv,
                   "stcg": _stcg}


# ---------------------------------------------------------------- 3. no copies of arguments
def device_view(a):
    """``a`` (a NumPy array) as the simulator's device array over the same memory."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    return a if isinstance(a, FakeCUDAArray) else FakeCUDAArray(a)


# ---------------------------------------------------------------- install / undo
def _targets():
    from numba.cuda.simulator import kernel as sim_kernel
    from numba.cuda.simulator import kernelapi
    targets = {(kernelapi.FakeCUDAShared, "array"): None,
               (sim_kernel, "BlockManager"): _Grid,
               (kernelapi.GridGroup, "sync"): _grid_sync,
               (kernelapi.FakeCUDAModule, "shared"): property(_block_shared)}
    targets.update({(kernelapi.FakeCUDAModule, name): f for name, f in _WARP_AND_CACHE.items()})
    return targets


def install():
    """Patch the simulator (idempotent)."""
    if _ORIGINAL:
        return
    for (owner, name), new in _targets().items():
        old = owner.__dict__.get(name, _ABSENT)
        _ORIGINAL[(owner, name)] = old
        setattr(owner, name, _locked_shared_array(old) if new is None else new)


@contextlib.contextmanager
def unpatched():
    """numba-cuda's own simulator within the block; the patches again after it."""
    saved = dict(_ORIGINAL)
    for (owner, name), old in saved.items():
        if old is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, old)
    _ORIGINAL.clear()
    try:
        yield
    finally:
        install()

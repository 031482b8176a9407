"""What every CUDA algorithm of gpurnn shares on the host: block geometry, how device functions
are compiled, which stream a launch goes on, and the one place launches are configured.

Launches go on CuPy's current stream (its null stream is the legacy default stream), so CuPy's
stream-ordered memory pool cannot hand a temporary's memory to anyone before the kernels that read
it have run; every temporary is held in a Python variable until the last launch that reads it has
been enqueued. A forward remembers its stream; a backward called on another stream first waits for
it, and makes it wait in turn for the backward's reads of the saved arrays. A failed launch raises
(Numba checks the driver's return code); a fault inside a kernel surfaces at the next
synchronising call (e.g. copying a result to the host).
"""

import contextlib
from dataclasses import dataclass

import numba
import numpy as np
from numba import cuda

from .. import cuda_simulated


@dataclass(frozen=True)
class Geometry:
    """Block shapes, chosen here and nowhere else (threads as parameters, so benchmarks can sweep
    them and the simulator can use small blocks).

    Per-step path: a step kernel's block is (step_h, step_b) threads; each thread owns step_rh
    consecutive hidden units of step_rb consecutive batch rows (every gate of them in forward), so
    a block covers step_h·step_rh units x step_b·step_rb rows (a step plan lowers step_rb to what
    B needs: ``plan.Plan.geometry``); the reduction over H (or G*H) is
    staged in tiles of step_k columns, whose columns step_kz slices of the block's threads
    (threadIdx.z) share out: step_kz times the threads for the same register tile, so that a grid
    of few blocks (small B·H) still fills the GPU's schedulers. A float64 value takes two
    registers: float64 kernels give a thread step_rh64 units instead (``step_units``), which keeps
    the float64 LSTM's G·units·rows accumulators in registers. The accumulation kernel's block is
    (acc_threads, acc_threads) threads, each owning acc_regs x acc_regs outputs in runs of ``vec`` consecutive
    rows and columns (one vector load each), and stages acc_k rows of the N = T*B reduction at a
    time. Persistent path: persist_threads threads per block (a power of two, at least a warp
    on a GPU), one block per SM; a thread sums persist_rows batch rows at a time and keeps
    persist_wregs float32 values of W_hh (half as many float64) in registers (``w_registers``).
    """
    step_h: int = 16
    step_rh: int = 2
    step_rh64: int = 1
    step_b: int = 4
    step_rb: int = 4
    step_k: int = 16
    step_kz: int = 4
    acc_threads: int = 16
    acc_regs: int = 8
    acc_k: int = 8
    vec: int = 4
    persist_threads: int = 256
    persist_rows: int = 4
    persist_wregs: int = 32

    def __post_init__(self):
        t = self.persist_threads
        if t < 1 or t & (t - 1) or self.persist_rows < 1 or self.persist_wregs < 1:
            raise ValueError(f"persist_threads must be a power of two and persist_rows, persist_wregs >= 1, "
                             f"got {t}, {self.persist_rows} and {self.persist_wregs}")
        if min(self.step_h, self.step_rh, self.step_rh64, self.step_b, self.step_kz, self.step_rb, self.step_k,
               self.acc_threads, self.acc_regs, self.acc_k, self.vec) < 1:
            raise ValueError(f"every size of a Geometry must be at least 1, got {self}")
        if self.acc_regs % self.vec:
            raise ValueError(f"acc_regs ({self.acc_regs}) must be a multiple of vec ({self.vec})")

    def w_registers(self, itemsize):
        """Values of W_hh a thread of a persistent kernel keeps in registers, for elements of
        ``itemsize`` bytes (a float64 takes two registers)."""
        return max(self.persist_wregs * 4 // itemsize, 1)

    def step_units(self, dtype):
        """Hidden units a thread of a step kernel owns, for arrays of ``dtype``."""
        return self.step_rh64 if np.dtype(dtype).itemsize == 8 else self.step_rh


GPU_GEOMETRY = Geometry()
# The simulator runs every CUDA thread as a Python thread: small blocks keep it fast, and still
# make tests cross tile boundaries in H, B and N, split dot products across threads, and give a
# thread several outputs (two runs of vec in the accumulation kernel).
SIM_GEOMETRY = Geometry(step_h=2, step_rh=2, step_rh64=2, step_b=2, step_rb=2, step_k=4, step_kz=2,
                        acc_threads=2, acc_regs=4, acc_k=4, vec=2, persist_threads=8, persist_rows=2,
                        persist_wregs=2)


def default_geometry():
    return SIM_GEOMETRY if cuda_simulated() else GPU_GEOMETRY


def ceil_div(n, d):
    return (n + d - 1) // d


def launch_config(cols, rows, threads):
    """(blocks, threads) for a 2-D grid covering ``cols`` x ``rows`` with ``threads`` = (x, y)."""
    tx, ty = threads
    return (ceil_div(cols, tx), ceil_div(rows, ty)), (tx, ty)


# ---------------------------------------------------------------- compiling
# NumPy aliases that NumPy 2.5 removed and numba-cuda (0.30) still registers overloads for: its
# first kernel compile imports numba/cuda/np/arrayobj.py, whose ``overload(np.row_stack)`` then
# raises AttributeError, so no kernel compiles. Each was an alias of the function named here.
REMOVED_NUMPY_ALIASES = {"row_stack": "vstack"}


def restore_numpy_aliases(module=np):
    """Put back on ``module`` each alias in REMOVED_NUMPY_ALIASES that this NumPy lacks, bound to
    the function it aliased; returns the names restored (none on NumPy < 2.5)."""
    restored = []
    for alias, target in REMOVED_NUMPY_ALIASES.items():
        if not hasattr(module, alias):
            setattr(module, alias, getattr(module, target))
            restored.append(alias)
    return restored


restore_numpy_aliases()


def _has_forceinline():
    """Whether this numba-cuda's ``cuda.jit`` takes ``forceinline`` (numba-cuda >= 0.11; the
    simulator and Numba's own older ``numba.cuda`` do not)."""
    import inspect
    try:
        return "forceinline" in inspect.signature(cuda.jit).parameters
    except (TypeError, ValueError):
        return False


def device_function(fn):
    """A CUDA device function inlined into its kernel (NVVM ``alwaysinline``) where numba-cuda
    can ask for it; elsewhere a plain device function, which NVVM still inlines when it pays."""
    if not cuda_simulated() and _has_forceinline():
        return cuda.jit(device=True, forceinline=True)(fn)
    return cuda.jit(device=True)(fn)


def bounded(threads, blocks_per_sm):
    """Mark a kernel's Python function with CUDA launch bounds: at most ``threads`` threads a
    block, and registers budgeted so that ``blocks_per_sm`` such blocks fit on an SM (the compiler
    otherwise takes what lowers latency most, and one register too many halves the blocks an SM
    holds). ``kernel_options`` reads the mark wherever a kernel is compiled."""
    def mark(fn):
        fn.launch_bounds = (int(threads), int(blocks_per_sm))
        return fn
    return mark


def kernel_options(fn):
    """Keyword arguments of ``cuda.jit`` / ``cuda.compile_ptx`` for the kernel function ``fn``:
    its launch bounds (``bounded``), except in the simulator, which has none."""
    bounds = getattr(fn, "launch_bounds", None)
    return {"launch_bounds": bounds} if bounds and not cuda_simulated() else {}


def toolchain():
    """One line on what compiles the kernels here: numba-cuda's version (or Numba's own
    ``numba.cuda``), whether device functions are force-inlined, the simulator."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        line = f"numba-cuda {version('numba-cuda')}"
    except PackageNotFoundError:
        line = f"numba {numba.__version__} (its own numba.cuda; numba-cuda is not installed)"
    if cuda_simulated():
        return line + ", Numba CUDA simulator"
    return line + (", device functions force-inlined" if _has_forceinline() else
                   ", no forceinline (needs numba-cuda >= 0.11): device functions left to NVVM")


# ---------------------------------------------------------------- arrays and streams
def xp_of(_a=None):
    """The array module of the cuda backend: CuPy, or NumPy in the simulator."""
    if cuda_simulated():
        return np
    import cupy
    return cupy


def current_stream():
    """CuPy's current stream, where every launch of a call goes; None in the simulator."""
    if cuda_simulated():
        return None
    import cupy
    return cupy.cuda.get_current_stream()


def numba_stream(stream):
    """The Numba stream for a CuPy stream (0 in the simulator). CuPy's null stream, pointer 0,
    is the legacy default stream; Numba's ``default_stream()`` is the per-thread one when Numba
    is set to per-thread default streams, so ask for the legacy one by name."""
    if stream is None:
        return 0
    return cuda.external_stream(stream.ptr) if stream.ptr else cuda.legacy_default_stream()


def wait(waiter, producer):
    """Make stream ``waiter`` wait for the work enqueued so far on ``producer`` (no host sync);
    nothing when they are the same stream or in the simulator."""
    if waiter is None or producer is None or waiter.ptr == producer.ptr:
        return
    waiter.wait_event(producer.record())


def empty(shape, dtype):
    """``xp.empty`` for a floating array the kernels write. In the simulator it is filled with NaN: fresh
    memory holds whatever was there, often the same array of the call before (NumPy's allocator
    and CuPy's pool hand a freed block back), which would hide a kernel that reads what it has not
    written yet behind plausible values."""
    a = xp_of().empty(shape, dtype)
    if cuda_simulated():
        a.fill(np.nan)
    return a


_placeholders = {}


def placeholder(dtype, ndim):
    """A (1,) * ndim array of ``dtype`` to pass where a kernel takes an array it will not touch
    (a cell's missing arrays, the biases of a layer without them); never read or written, so not
    filled, and one per (dtype, rank, device) serves every call."""
    device = None if cuda_simulated() else xp_of().cuda.Device().id
    key = (np.dtype(dtype).name, ndim, device, xp_of())
    if key not in _placeholders:
        _placeholders[key] = xp_of().empty((1,) * ndim, dtype)
    return _placeholders[key]


def dev(a):
    """A view Numba can launch with. CuPy arrays are wrapped without the per-launch stream
    synchronisation Numba would otherwise do for a foreign array: everything runs on one stream.
    In the simulator a NumPy array is wrapped as the simulator's device array, so that a kernel
    writes into it directly (see simulator.device_view)."""
    if a is None:
        return a
    if cuda_simulated():
        from .simulator import device_view
        return device_view(a)
    return cuda.as_cuda_array(a, sync=False)


# ---------------------------------------------------------------- launching
_recorders = []
_captures = []


@contextlib.contextmanager
def recording():
    """Within the block, every launch the cuda backend makes is appended to the list it yields,
    as (kernel name, configured kernel, arguments): launch counts for tests and benchmarks, and
    a recorded launch can be replayed. A replayed graph is one entry (see graphs.py)."""
    launches = []
    _recorders.append(launches)
    try:
        yield launches
    finally:
        _recorders.remove(launches)


@contextlib.contextmanager
def capturing(run):
    """Within the block, configured launches are appended to the list it yields, as in
    ``recording``, and not to any recording: they are being captured into a graph. ``run=False``
    (the simulator, which has no graphs) records them without running them; on a GPU they are
    launched into the capturing stream, which runs nothing either."""
    launches = []
    _captures.append((launches, run))
    try:
        yield launches
    finally:
        _captures.remove((launches, run))


class Launch:
    """A kernel and its launch configuration (blocks, threads, Numba stream, dynamic shared bytes),
    configured anew at every call: the simulator's configured kernel is the kernel itself, changed
    by the next configuration, so a recorded launch that is run again must configure again."""

    def __init__(self, kernel, config):
        self.kernel, self.config = kernel, config

    def configured(self):
        import warnings
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")
            return self.kernel[self.config]

    def __call__(self, *args):
        return self.configured()(*args)


def record(name, launch, args):
    """Append a launch (or a graph replay, one entry) to every ``recording()`` in progress."""
    for launches in _recorders:
        launches.append((name, launch, args))


def configure(name, kernel, blocks, threads, stream, shared=0):
    """``kernel[blocks, threads, stream, shared]``: the one place launches are configured.

    numba-cuda's low-occupancy warning is silenced (small grids are what small layers need, and
    it would name no remedy a user has); ``shared`` is the dynamic shared memory in bytes.
    Returns the configured kernel, or while ``recording()`` or ``capturing()`` a wrapper that
    records each launch.
    """
    launch = Launch(kernel, (blocks, threads, numba_stream(stream), shared))
    if not _recorders and not _captures:
        return launch.configured()

    def recorded(*args):
        if _captures:
            launches, run = _captures[-1]
            launches.append((name, launch, args))
            return launch(*args) if run else None
        record(name, launch, args)
        return launch(*args)
    return recorded

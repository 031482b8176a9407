"""CUDA backend: CuPy arrays, cuBLAS for the products off the sequential path, Numba CUDA kernels for
everything on it and for the BPTT weight gradients. Two algorithms run the recursion; ``plan.py``
picks one per layer and direction.

    __init__.py     this file: a layer and direction (``forward_sequence`` / ``backward_sequence``)
    plan.py         the choice between the algorithms, from the shapes and the device's resources
    persistent.py   one cooperative launch for all T steps, one for the whole BPTT (blocks exchange by flags)
    step.py         one launch per time step, forward and backward
    graphs.py       the per-step path's launches captured into CUDA graphs, replayed per call
    pointwise.py    the pointwise part of a step, once per cell, for both algorithms
    accumulate.py   the BPTT weight gradients: one deterministic reduction over all T*B rows
    tiles.py        staging of double-buffered tiles in shared memory (step and accumulation kernels)
    runtime.py      block geometry, streams, the one place launches are configured
    primitives.py   device primitives numba-cuda lacks: strong loads and stores for flags, clock64
    calibrate.py    the primitives a persistent step is built from, one kernel each, to time on a GPU
    simulator.py    what Numba's CUDA simulator needs to run them (cooperative grids, warps, flags)

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3),
N = T*B rows of the flattened sequence, s = bytes per element (4 float32, 8 float64).
The contract of ``forward_sequence`` / ``backward_sequence`` is written in kernels/contract.py.

Forward, one layer and direction:
    XW = x (N, I) @ W_ihᵀ + b_ih                cuBLAS, all time steps at once
    the recursion                               persistent: 1 launch; step: T launches
Backward (BPTT):
    the recursion: dG_t, dh, dc                 persistent: 1 launch; step: T + 1
    accumulate kernel: dW_ih, db_ih, dW_hh, db_hh                                     1 launch
    dx = dG_x (N, G*H) @ W_ih                   cuBLAS
Numba launches per training step of a layer and direction: 3 persistent, 2T + 2 per-step; with
CUDA graphs (graphs.py, on by default) the per-step path's 2T + 1 recursion launches become two
graph replays from its second call with the same shapes on.

State storage. ``hs`` (T+1, B, H) holds every state in time order: the state before time t is
``hs[t + rev]`` and the state after it ``hs[t + 1 - rev]`` (rev = 1 for the reverse direction), so
the kernels never copy a state, h_n is ``hs[T]`` (forward) or ``hs[0]`` (reverse), and the rows
h_{t-1} of the weight-gradient reduction are the contiguous slice ``hs[rev:T + rev]``. The LSTM's
``cs`` is laid out the same way; ``gates`` (T, B, G*H) keeps the LSTM's and GRU's activated gates
and ``hn`` (T, B, H) the GRU's W_hn h + b_hn. For a row that is inactive at time t
(t >= lengths[b]) a step copies the state through, writes y = 0, and backward writes dG = 0 and
passes dh (dc) through untouched: exactly the reference's packed-sequence semantics, with no
packing copies. Both algorithms write and read the same saved arrays.
"""

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import numpy as np
from numba import cuda

from .. import cuda_simulated
from ..contract import Array, Saved, dims_of
from . import accumulate as _accumulate
from . import graphs, persistent, plan, step
from . import runtime as rt
from .plan import Plan
from .runtime import (GPU_GEOMETRY, SIM_GEOMETRY, Geometry, ceil_div,  # noqa: F401  (the API of the backend)
                      default_geometry, launch_config, recording, toolchain)

if cuda_simulated():
    from . import simulator
    simulator.install()


def build_kernels(cell, dtype, geo):
    """The Python functions of every kernel for one cell and dtype (not yet compiled), and the
    signatures they are compiled with: {name: (pyfunc, signature)}. Names: "step_forward",
    "step_backward", "persistent_forward", "persistent_backward", "accumulate"."""
    kernels = dict(step.build(cell, dtype, geo))
    kernels.update(persistent.build(cell, dtype, geo))
    kernels.update(_accumulate.build(dtype, geo))
    return kernels


class _Kernels:
    """name -> the Numba dispatcher of that kernel, made on first use. The per-step kernels and the
    reduction compile on first launch, for the argument types they meet. On a GPU the persistent
    kernels compile for their declared signature when first asked for: the plan needs the compiled
    kernel (its occupancy, the opt-in to large dynamic shared memory) before the launch, and a
    launch with other argument types then fails loudly instead of compiling a second, unprepared
    version."""

    def __init__(self, built):
        self._built, self._made = built, {}

    def __getitem__(self, name):
        if name not in self._made:
            fn, sig = self._built[name]
            eager = name.startswith("persistent") and not cuda_simulated()
            self._made[name] = cuda.jit(sig)(fn) if eager else cuda.jit(fn)
        return self._made[name]

    def overload(self, name):
        """The kernel compiled for its declared signature (what the driver's occupancy and
        attribute calls take)."""
        return self[name].compile(self._built[name][1])


@lru_cache(maxsize=None)
def compiled_kernels(cell, dtype, geo):
    """The kernels of ``build_kernels`` as Numba dispatchers, each compiled when first needed."""
    return _Kernels(build_kernels(cell, np.dtype(dtype).name, geo))


# ---------------------------------------------------------------- the device and the plan
@lru_cache(maxsize=None)
def _gpu_device(device_id):
    d = cuda.get_current_device()
    return plan.Device(
        name=d.name.decode() if isinstance(d.name, bytes) else str(d.name),
        sms=d.MULTIPROCESSOR_COUNT, smem_per_sm=d.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR,
        smem_per_block=d.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, l2_bytes=d.L2_CACHE_SIZE,
        regs_per_sm=d.MAX_REGISTERS_PER_MULTIPROCESSOR, threads_per_sm=d.MAX_THREADS_PER_MULTIPROCESSOR,
        blocks_per_sm=d.MAX_BLOCKS_PER_MULTIPROCESSOR, smem_reserved=d.RESERVED_SHARED_MEMORY_PER_BLOCK)


def _device_key():
    """Which GPU a graph's pointers belong to (0 in the simulator)."""
    if cuda_simulated():
        return 0
    import cupy
    return cupy.cuda.Device().id


def current_device():
    """The resources the plan is made for: the simulator's modelled GPU, or the current GPU's."""
    if cuda_simulated():
        return plan.SIMULATED
    return _gpu_device(cuda.get_current_device().id)


_DYNAMIC_SHARED_DEFAULT = 48 * 1024


def _allow_dynamic_shared(kernel, nbytes):
    """Let ``kernel`` (a compiled overload) take ``nbytes`` of dynamic shared memory: above 48 KiB
    the driver wants the opt-in attribute set first (numba-cuda sets the carveout attribute the
    same way). False, with a warning, when the driver refuses."""
    if nbytes <= _DYNAMIC_SHARED_DEFAULT or getattr(kernel, "_gpurnn_dynamic_shared", 0) >= nbytes:
        return True
    from numba.cuda.cudadrv.driver import binding, driver
    cufunc = kernel._codelibrary.get_cufunc()
    attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    try:
        driver.cuKernelSetAttribute(attr, int(nbytes), cufunc.handle, cufunc.device.id)
    except Exception as e:     # whatever the driver refuses with: reported; the plan then takes less
        warnings.warn(f"gpurnn: could not allow {nbytes} bytes of dynamic shared memory ({e}); the persistent "
                      "plan stages fewer rows, or the layer runs the step path", RuntimeWarning, stacklevel=3)
        return False
    kernel._gpurnn_dynamic_shared = nbytes
    return True


def _driver_cooperative_blocks(cell, dtype, geo):
    """cooperative_blocks for ``plan.choose`` from the driver's occupancy calculator, for the
    persistent kernels compiled for this cell and dtype."""
    kernels = compiled_kernels(cell, dtype, geo)

    @lru_cache(maxsize=None)
    def blocks(name, threads, static_smem, dyn_smem):
        kernel = kernels.overload(name)
        if not _allow_dynamic_shared(kernel, dyn_smem):
            return 0
        return kernel.max_cooperative_grid_blocks(threads, dyn_smem)
    return blocks


def choose_plan(cell, dtype, B, H, algo, geo, device):
    """``plan.choose`` for this layer on ``device``, with graphs on or off as GPURNN_GRAPHS says."""
    return _choose_plan(cell, dtype, B, H, algo, geo, device, graphs.enabled())


@lru_cache(maxsize=4096)
def _choose_plan(cell, dtype, B, H, algo, geo, device, with_graphs):
    """Cached: the same shapes get the same plan."""
    coop = None if cuda_simulated() else _driver_cooperative_blocks(cell, dtype, geo)
    return plan.choose(cell, np.dtype(dtype).itemsize, B, H, device, algo, geo, coop, graphs=with_graphs)


ALGORITHMS = {"step": step, "persistent": persistent}


@dataclass
class CudaSaved(Saved):
    """``contract.Saved``, and what the cuda backend's backward needs besides: ``row_lengths``,
    the (B,) int32 lengths the kernels read (T for every row when ``lengths`` is None), the
    geometry and plan the forward ran with, the stream it ran on, and the CUDA graphs it replayed
    (a graphs.Recursion; None when it launched directly), whose workspace still holds its
    activations while ``graph_token`` is the Recursion's ``holds``."""
    row_lengths: Array = None
    geometry: Optional[Geometry] = None
    stream: Any = None
    plan: Optional[Plan] = None
    graph: Any = None
    graph_token: Optional[object] = None


# ---------------------------------------------------------------- one layer and direction
def forward_sequence(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, algo="auto", geometry=None):
    geo = geometry or default_geometry()
    xp = rt.xp_of()
    dims = dims_of(cell, x, w_hh)
    T, B, I, H, G = dims
    GH = G * H
    dt = x.dtype
    rev = int(bool(reverse))
    the_plan = choose_plan(cell, dt.name, B, H, algo, geo, current_device())
    k = compiled_kernels(cell, dt.name, geo)
    xw = (x.reshape(T * B, I) @ w_ih.T).reshape(T, B, GH)     # input projection of every step
    xw += b_ih
    hs = xp.empty((T + 1, B, H), dt)
    hs[T if rev else 0] = h0
    y = xp.empty((T, B, H), dt)
    lens = (xp.full(B, T, np.int32) if lengths is None
            else xp.ascontiguousarray(xp.asarray(lengths, dtype=np.int32)))
    cs = gates = hn = None
    if cell == "lstm":
        cs = xp.empty((T + 1, B, H), dt)
        cs[T if rev else 0] = c0
        gates = xp.empty((T, B, GH), dt)
    elif cell == "gru":
        gates = xp.empty((T, B, GH), dt)
        hn = xp.empty((T, B, H), dt)
    stream = rt.current_stream()
    graph = None
    if the_plan.algo == "step":
        graph = graphs.plan_for(cell, dt.name, T, B, H, lengths is not None, rev, geo, _device_key())
    saved = CudaSaved(cell, dims, x, hs, cs, gates, hn, lengths, bool(rev), row_lengths=lens, geometry=geo,
                      stream=stream, plan=the_plan, graph=graph)
    if graph is not None:
        graphs.forward(graph, cell, k, saved, xw, y, w_hh, b_hh, stream)
    else:
        ALGORITHMS[the_plan.algo].forward(cell, k, saved, xw, y, w_hh, b_hh, stream)
    last = 0 if rev else T
    h_n = hs[last]
    c_n = cs[last] if cell == "lstm" else None
    return y, h_n, c_n, saved


def backward_sequence(cell, saved, dy, dh_n, dc_n, w_ih, w_hh, grads):
    x, hs, rev, geo = saved.x, saved.hs, int(saved.reverse), saved.geometry
    xp = rt.xp_of()
    T, B, I, H, G = saved.dims
    GH = G * H
    dt = x.dtype
    k = compiled_kernels(cell, dt.name, geo)
    stream = rt.current_stream()
    rt.wait(stream, saved.stream)      # the caller may have switched streams since forward
    dg_x = xp.empty((T, B, GH), dt)
    dg_h = xp.empty((T, B, GH), dt) if cell == "gru" else dg_x
    dy = xp.zeros((T, B, H), dt) if dy is None else xp.ascontiguousarray(dy)
    dh = xp.zeros((B, H), dt) if dh_n is None else xp.array(dh_n, dtype=dt, order="C")
    dc = None
    if cell == "lstm":
        dc = xp.zeros((B, H), dt) if dc_n is None else xp.array(dc_n, dtype=dt, order="C")
    if saved.graph is not None:
        hidden_done = graphs.backward(saved.graph, cell, k, saved, dg_x, dg_h, dy, dh, dc, w_hh, stream)
    else:
        hidden_done = ALGORITHMS[saved.plan.algo].backward(cell, k, saved, dg_x, dg_h, dy, dh, dc, w_hh,
                                                              grads, stream)
    _accumulate.accumulate_grads(k, dg_x.reshape(T * B, GH), x.reshape(T * B, I), dg_h.reshape(T * B, GH),
                                 hs[rev:T + rev].reshape(T * B, H), grads, geo, stream, hidden=not hidden_done)
    dx = (dg_x.reshape(T * B, GH) @ w_ih).reshape(T, B, I)
    # The saved arrays came from forward's stream's memory pool, which may hand their memory out
    # again once they are freed: only after this backward has read them.
    rt.wait(saved.stream, stream)
    return dx, dh, dc


def accumulate_grads(cell, dg_x, x, dg_h, hp, grads, geo, hidden=True):
    """The accumulation kernel on its own (tests, benchmarks): adds the weight and bias gradients
    of rows dg_x, x, dg_h, hp (N rows each) into grads; see accumulate.py."""
    k = compiled_kernels(cell, x.dtype.name, geo)
    _accumulate.accumulate_grads(k, dg_x, x, dg_h, hp, grads, geo, rt.current_stream(), hidden)

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
    products_mma.py the same products on tensor cores, opt-in (``use_tensor_cores``)
    mma.py          the tensor cores' mma.sync from numba-cuda, and its stand-in in the simulator
    tiles.py        staging of double-buffered tiles in shared memory (step and accumulation kernels)
    runtime.py      block geometry, streams, the one place launches are configured
    primitives.py   device primitives numba-cuda lacks: strong loads and stores for flags, clock64
    calibrate.py    the primitives a persistent step is built from, one kernel each, to time on a GPU
    simulator.py    what Numba's CUDA simulator needs to run them (cooperative grids, warps, flags)

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3),
N = T*B rows of the flattened sequence, s = bytes per element (4 float32, 8 float64).
The contract of ``forward_sequence`` / ``backward_sequence`` is written in kernels/contract.py.

Forward, one layer and direction:
    XW = x (N, I) @ W_ihᵀ                       cuBLAS, all time steps at once (b_ih: in the kernels)
    the recursion                               persistent: 1 launch; step: T launches
Backward (BPTT):
    the recursion: dG_t, dh, dc                 persistent: 1 launch; step: T + 1
    accumulate kernel: dW_ih, db_ih, dW_hh, db_hh                                     1 launch
    dx = dG_x (N, G*H) @ W_ih                   cuBLAS
Numba launches per training step of a layer and direction: 3 persistent, 2T + 2 per-step; with
CUDA graphs (graphs.py, on by default) the per-step path's 2T + 1 recursion launches become two
graph replays from its second call with the same shapes on.

Host work of a call: it reads nothing back from the GPU (no synchronisation) and allocates only
what it returns as the caller's own. On the graph path the recursion computes in a workspace of
graphs.py, which hands its arrays out as the call's results and saved activations; the direct
paths keep their scratch (xw, dG) and constants (the lengths when every row runs T steps, the
zeros of a missing dy) from call to call (``reused``); placeholders are made once
(``runtime.placeholder``). tests/test_cuda_syncs.py counts both per training step.

State storage. ``hs`` (T+1, B, H) holds every state in time order: the state before time t is
``hs[t + rev]`` and the state after it ``hs[t + 1 - rev]`` (rev = 1 for the reverse direction), so
the kernels never copy a state, h_n is ``hs[T]`` (forward) or ``hs[0]`` (reverse), and the rows
h_{t-1} of the weight-gradient reduction are the contiguous slice ``hs[rev:T + rev]``. The LSTM's
``cs`` is laid out the same way; ``gates`` (T, B, G*H) keeps the LSTM's and GRU's activated gates
and ``hn`` (T, B, H) the GRU's W_hn h + b_hn. For a row that is inactive at time t
(t >= lengths[b]) a step copies the state through, writes y = 0, and backward writes dG = 0 and
passes dh (dc) through untouched: exactly the reference's packed-sequence semantics, with no
packing copies. Both algorithms write and read the same saved arrays.

Half precision (``half`` "bfloat16" or "float16", float32 arrays holding the format's values,
kernels/precision.py): both algorithms' forward kernels round every value they store to the format
(pointwise.py), and every step reads h_{t-1} (c_{t-1}) back from the stored, rounded state. Those
kernels are built per format (``build_kernels``, ``compiled_kernels``), and so are the plan and the
CUDA graphs of a layer; backward runs float32's kernels on the saved, rounded arrays.
"""

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import numpy as np
from numba import cuda

from .. import cuda_simulated
from ..contract import Array, Saved, dims_of
from ..precision import check_half
from . import accumulate as _accumulate
from . import graphs, persistent, plan, products_mma, step
from . import runtime as rt
from .plan import Plan
from .runtime import (GPU_GEOMETRY, SIM_GEOMETRY, Geometry, ceil_div,  # noqa: F401  (the API of the backend)
                      default_geometry, launch_config, recording, toolchain)

if cuda_simulated():
    from . import simulator
    simulator.install()


FORWARD_KERNELS = ("step_forward", "persistent_forward")     # the kernels a half format changes


def build_kernels(cell, dtype, geo, half=None):
    """The Python functions of every kernel for one cell and dtype (not yet compiled), and the
    signatures they are compiled with: {name: (pyfunc, signature)}. Names: "step_forward",
    "step_backward", "persistent_forward", "persistent_backward", "accumulate". ``half`` (None,
    or one of vocabulary.HALF, float32 only): the format the forward kernels (FORWARD_KERNELS)
    round what they store to (pointwise.py); the others are the same for every format."""
    kernels = dict(step.build(cell, dtype, geo, half))
    kernels.update(persistent.build(cell, dtype, geo, half))
    kernels.update(_accumulate.build(dtype, geo))
    return kernels


class _Kernels:
    """name -> the Numba dispatcher of that kernel, made on first use. The per-step kernels and the
    reduction compile on first launch, for the argument types they meet. On a GPU the persistent
    kernels compile for their declared signature when first asked for: the plan needs the compiled
    kernel (its occupancy, the opt-in to large dynamic shared memory) before the launch, and a
    launch with other argument types then fails loudly instead of compiling a second, unprepared
    version."""

    def __init__(self, built, others=None):
        self._built, self._made, self._others = built, {}, others

    def __getitem__(self, name):
        if name not in self._built:             # a half format's backward: float32's, compiled once
            return self._others[name]
        if name not in self._made:
            fn, sig = self._built[name]
            eager = name.startswith("persistent") and not cuda_simulated()
            options = rt.kernel_options(fn)
            self._made[name] = cuda.jit(sig, **options)(fn) if eager else cuda.jit(**options)(fn)
        return self._made[name]

    def overload(self, name):
        """The kernel compiled for its declared signature (what the driver's occupancy and
        attribute calls take)."""
        if name not in self._built:
            return self._others.overload(name)
        return self[name].compile(self._built[name][1])


def compiled_kernels(cell, dtype, geo, half=None):
    """The kernels of ``build_kernels`` as Numba dispatchers, each compiled when first needed. A
    half format has forward kernels of its own and shares the others with float32."""
    return _compiled_kernels(cell, np.dtype(dtype).name, geo, half)


@lru_cache(maxsize=None)
def _compiled_kernels(cell, dtype, geo, half):
    if half is None:
        return _Kernels(build_kernels(cell, dtype, geo))
    built = build_kernels(cell, dtype, geo, half)
    return _Kernels({name: built[name] for name in FORWARD_KERNELS}, others=_compiled_kernels(cell, dtype, geo, None))


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


def _driver_cooperative_blocks(cell, dtype, geo, half=None):
    """cooperative_blocks for ``plan.choose`` from the driver's occupancy calculator, for the
    persistent kernels compiled for this cell, dtype and half format."""
    kernels = compiled_kernels(cell, dtype, geo, half)

    @lru_cache(maxsize=None)
    def blocks(name, threads, static_smem, dyn_smem):
        kernel = kernels.overload(name)
        if not _allow_dynamic_shared(kernel, dyn_smem):
            return 0
        return kernel.max_cooperative_grid_blocks(threads, dyn_smem)
    return blocks


def choose_plan(cell, dtype, B, H, algo, geo, device, half=None):
    """``plan.choose`` for this layer on ``device``, with graphs on or off as GPURNN_GRAPHS says;
    a half format's forward kernels are its own (their occupancy is asked for on a GPU)."""
    return _choose_plan(cell, np.dtype(dtype).name, B, H, algo, geo, device, graphs.enabled(), half)


@lru_cache(maxsize=4096)
def _choose_plan(cell, dtype, B, H, algo, geo, device, with_graphs, half):
    """Cached: the same shapes get the same plan."""
    coop = None if cuda_simulated() else _driver_cooperative_blocks(cell, dtype, geo, half)
    return plan.choose(cell, np.dtype(dtype).itemsize, B, H, device, algo, geo, coop, graphs=with_graphs)


ALGORITHMS = {"step": step, "persistent": persistent}


@dataclass
class CudaSaved(Saved):
    """``contract.Saved``, and what the cuda backend's backward needs besides: ``row_lengths``,
    the (B,) int32 lengths the kernels read (T for every row when ``lengths`` is None), the
    geometry and plan the forward ran with, the stream it ran on, and the CUDA graphs it replayed:
    ``graph`` the graphs.Recursion (None when the path has none) and ``workspace`` the
    graphs.RecursionArrays whose memory holds the activations (None when they are arrays of their
    own); ``half`` the forward's half format (None for float32 and float64)."""
    half: Optional[str] = None
    row_lengths: Array = None
    geometry: Optional[Geometry] = None
    stream: Any = None
    plan: Optional[Plan] = None
    graph: Any = None
    workspace: Any = None


# ---------------------------------------------------------------- arrays reused from call to call
REUSED_MAX = 16
_reused = OrderedDict()


def reused(name, shape, dtype, stream, fill=None):
    """An array kept from one call to the next, for what no result of a call refers to (the
    direct paths' xw and dG) or, with ``fill``, a constant never written once made (the lengths
    when every row runs T steps, the zeros standing for a missing dy): one per (name, shape,
    dtype, fill, stream, device), the REUSED_MAX most recently used kept (graphs.py's workspaces
    do this for the graph path). Why reuse is safe: a call writes such an array only on ``stream``,
    the stream it is kept for, so the write runs after every read of the calls before it; a
    constant is filled once, on the stream of the calls that read it. Dropped arrays go back to
    CuPy's stream-ordered pool as any temporary does."""
    key = (name, tuple(shape), np.dtype(dtype).name, fill, None if stream is None else stream.ptr, _device_key())
    a = _reused.pop(key, None)
    if a is None:
        a = rt.empty(shape, dtype) if fill is None else rt.xp_of().full(shape, fill, dtype)
    elif fill is None and cuda_simulated():
        a.fill(np.nan)          # as rt.empty: the last call's values must not hide an unwritten part
    _reused[key] = a
    while len(_reused) > REUSED_MAX:
        _reused.popitem(last=False)
    return a


def _fill(dst, src):
    """dst[...] = src, zeros for src None: an input copied into a graph's workspace."""
    if src is None:
        dst.fill(0)
    else:
        dst[...] = src


# ---------------------------------------------------------------- one layer and direction
def forward_sequence(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, algo="auto", half=None,
                     geometry=None):
    check_half(half)
    geo = geometry or default_geometry()
    xp = rt.xp_of()
    dims = dims_of(cell, x, w_hh)
    T, B, I, H, G = dims
    GH = G * H
    dt = x.dtype
    if half is not None and dt != np.float32:
        raise ValueError(f"half={half!r} needs float32 arrays holding {half} values, got {dt}")
    rev = int(bool(reverse))
    first = T if rev else 0
    the_plan = choose_plan(cell, dt.name, B, H, algo, geo, current_device(), half)
    geo = the_plan.geometry(geo)               # the step kernels' rows a thread, from B
    k = compiled_kernels(cell, dt.name, geo, half)
    stream = rt.current_stream()
    graph = ws = None
    if the_plan.algo == "step":
        graph = graphs.plan_for(cell, dt.name, T, B, H, lengths is not None, rev, geo, _device_key(), half)
        ws = graph.take(w_hh, b_ih, b_hh, stream) if graph is not None else None
    if ws is not None:      # a graph replay on a free workspace, whose arrays this call hands out
        out = ws.hand_out()
        xw, hs, y, lens = ws.xw, out["hs"], out["y"], out["lengths"]
        cs, gates, hn = out.get("cs"), out.get("gates"), out.get("hn")
        ws.set_lengths(lengths)
    else:                   # direct launches, on arrays of the call's own
        xw = reused("xw", (T, B, GH), dt, stream)
        hs = rt.empty((T + 1, B, H), dt)
        y = rt.empty((T, B, H), dt)
        lens = (reused("lengths", (B,), np.int32, stream, fill=T) if lengths is None
                else xp.ascontiguousarray(xp.asarray(lengths, dtype=np.int32)))
        cs = rt.empty((T + 1, B, H), dt) if cell == "lstm" else None
        gates = rt.empty((T, B, GH), dt) if cell in ("lstm", "gru") else None
        hn = rt.empty((T, B, H), dt) if cell == "gru" else None
    # The input projection of every step; the kernels add b_ih where they read it (pointwise.py).
    xp.matmul(x.reshape(T * B, I), w_ih.T, out=xw.reshape(T * B, GH))
    hs[first] = h0
    if cell == "lstm":
        cs[first] = c0
    saved = CudaSaved(cell, dims, x, hs, cs, gates, hn, lengths, bool(rev), half=half, row_lengths=lens, geometry=geo,
                      stream=stream, plan=the_plan, graph=graph, workspace=ws)
    if ws is not None:
        graphs.forward(ws, cell, k, saved, w_hh, b_ih, b_hh, stream)
    else:
        ALGORITHMS[the_plan.algo].forward(cell, k, saved, xw, y, w_hh, b_ih, b_hh, stream)
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
    ws = graphs.backward_workspace(saved, cell, stream)
    if ws is not None:      # a graph replay on the workspace that holds the forward's activations
        dg_x, dg_h = ws.dg_x, ws.dg_h
        _fill(ws.dy, dy)
        _fill(ws.dh, dh_n)
        if cell == "lstm":
            _fill(ws.dc, dc_n)
        hidden_done = graphs.backward(ws, cell, k, saved, w_hh, stream)
        dh = ws.dh.copy()              # results of the caller's own: the workspace's serve the next call
        dc = ws.dc.copy() if cell == "lstm" else None
    else:
        dg_x = reused("dg_x", (T, B, GH), dt, stream)
        dg_h = reused("dg_h", (T, B, GH), dt, stream) if cell == "gru" else dg_x
        dy = reused("zeros", (T, B, H), dt, stream, fill=0) if dy is None else xp.ascontiguousarray(dy)
        dh = xp.zeros((B, H), dt) if dh_n is None else xp.array(dh_n, dtype=dt, order="C")
        dc = None
        if cell == "lstm":
            dc = xp.zeros((B, H), dt) if dc_n is None else xp.array(dc_n, dtype=dt, order="C")
        hidden_done = ALGORITHMS[saved.plan.algo].backward(cell, k, saved, dg_x, dg_h, dy, dh, dc, w_hh,
                                                              grads, stream)
    mode = tensor_core_format(dt, saved.half)
    if mode is None:
        _accumulate.accumulate_grads(k, dg_x.reshape(T * B, GH), x.reshape(T * B, I), dg_h.reshape(T * B, GH),
                                     hs[rev:T + rev].reshape(T * B, H), grads, geo, stream, hidden=not hidden_done,
                                     splits=_accumulate_splits(T * B, I, H, GH, dt, geo))
    else:
        _tensor_core_grads(mode, dg_x.reshape(T * B, GH), x.reshape(T * B, I), dg_h.reshape(T * B, GH),
                           hs[rev:T + rev].reshape(T * B, H), grads, stream, hidden=not hidden_done)
    dx = (dg_x.reshape(T * B, GH) @ w_ih).reshape(T, B, I)
    # The saved arrays came from forward's stream's memory pool, which may hand their memory out
    # again once they are freed: only after this backward has read them.
    rt.wait(saved.stream, stream)
    return dx, dh, dc


# ---------------------------------------------------------------- tensor cores, opt-in
_tensor_cores = [os.environ.get("GPURNN_TENSOR_CORES", "0") == "1"]


def use_tensor_cores(enabled=True):
    """Compute the BPTT weight gradients of float32 and half layers on tensor cores from now on
    (``enabled``), or as before (False); returns the setting it replaces. Off by default, as
    torch.backends.cuda.matmul.allow_tf32 is: a float32 layer's products then round both
    operands to TF32 (10 fraction bits), a half layer's round dG to its format (products_mma.py):
    float16's range then applies to dG too (below 6e-8 it is lost, as in cuDNN's float16 path:
    scale the loss, e.g. torch's GradScaler). ``GPURNN_TENSOR_CORES=1`` in the environment turns
    it on at import."""
    before, _tensor_cores[0] = _tensor_cores[0], bool(enabled)
    return before


def tensor_core_format(dtype, half):
    """The tensor-core format of a layer's weight-gradient products (products_mma.MODES), or None
    where they run on the accumulation kernel: tensor cores off, or float64."""
    if not _tensor_cores[0] or np.dtype(dtype) != np.float32:
        return None
    return half or "tf32"


def _tensor_core_grads(mode, dg_x, x, dg_h, hp, grads, stream, hidden=True):
    """What accumulate.accumulate_grads adds, with the weights' products on tensor cores
    (products_mma.py) and the biases' column sums in float64, each rounded once."""
    xp = rt.xp_of()
    products_mma.products(mode, dg_x, x, grads["w_ih"], stream)
    if hidden:
        products_mma.products(mode, dg_h, hp, grads["w_hh"], stream)
    if "b_ih" in grads:
        grads["b_ih"] += xp.sum(dg_x, axis=0, dtype=np.float64)
        if hidden:
            grads["b_hh"] += xp.sum(dg_h, axis=0, dtype=np.float64)


def accumulate_grads(cell, dg_x, x, dg_h, hp, grads, geo, hidden=True, splits=None):
    """The accumulation kernel on its own (tests, benchmarks): adds the weight and bias gradients
    of rows dg_x, x, dg_h, hp (N rows each) into grads, the rows split in ``splits`` parts
    (by default as a layer's backward splits them); see accumulate.py."""
    k = compiled_kernels(cell, x.dtype.name, geo)
    if splits is None:
        splits = _accumulate_splits(x.shape[0], x.shape[1], hp.shape[1], dg_x.shape[1], x.dtype, geo)
    _accumulate.accumulate_grads(k, dg_x, x, dg_h, hp, grads, geo, rt.current_stream(), hidden, splits)


def _accumulate_splits(N, I, H, GH, dtype, geo):
    """The parts of the accumulation kernel's N rows on the current device (``plan.splits``)."""
    return plan.splits(N, _accumulate.output_tiles(I, H, GH, geo), np.dtype(dtype).itemsize, current_device(), geo)

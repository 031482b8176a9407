"""CUDA backend: CuPy arrays, cuBLAS for the products off the sequential path, Numba CUDA kernels for
everything on it and for the BPTT weight gradients.

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3),
N = T*B rows of the flattened sequence, s = bytes per element (4 float32, 8 float64).
The contract of ``forward_sequence`` / ``backward_sequence`` is written in kernels/reference.py.

Forward, one layer and direction:
    XW = x (N, I) @ W_ihᵀ + b_ih                      cuBLAS, all time steps at once
    for each step t:  step_forward kernel             h_{t-1} @ W_hhᵀ + b_hh + XW[t], gates, h_t (c_t)
Backward (BPTT), T + 1 launches of one fused kernel, then one reduction:
    launch p:  dh_{t_{p-1}} += dG_{t_{p-1}} @ W_hh     (the product of the step before)
               then the pointwise cell backward of step t_p: dG_{t_p}, the direct part of dh, dc
    accumulate kernel:  dW_ih += dG_xᵀ x,  dW_hh += dG_hᵀ h_prev,  db += Σ_rows dG   (one launch)
    dx = dG_x (N, G*H) @ W_ih                          cuBLAS

Napkin math of a step (float32 LSTM, H = 1024, W_hh = 4H x H = 16 MiB): at B = 1 a step does
8 MFLOP and reads all of W_hh, 0.5 FLOP/byte, so it is bound by memory bandwidth (about 5 µs per
step at 3 TB/s, plus the launch); at B = 64 it does 0.5 GFLOP for about 20 MB, 27 FLOP/byte, and
the FMA pipes of the block tiles become the limit. The weight-gradient reduction is one GEMM-like
launch of 2·N·G·H·(I + H) FLOPs, compute bound for any N worth timing.

State storage. ``hs`` (T+1, B, H) holds every state in time order: the state before time t is
``hs[t + rev]`` and the state after it ``hs[t + 1 - rev]`` (rev = 1 for the reverse direction), so
the kernels never copy a state, h_n is ``hs[T]`` (forward) or ``hs[0]`` (reverse), and the rows
h_{t-1} of the weight-gradient reduction are the contiguous slice ``hs[rev:T + rev]``. The LSTM's
``cs`` is laid out the same way. For a row that is inactive at time t (t >= lengths[b]) a step copies
the state through, writes y = 0, and backward writes dG = 0 and passes dh (dc) through untouched:
exactly the reference's packed-sequence semantics, with no packing copies.

Kernels are built per (cell, dtype, geometry) by ``build_kernels``, because tile sizes and dtypes
of shared and local arrays must be compile-time constants; ``Geometry`` is the one place where
block shapes are chosen (threads as a parameter, so benchmarks can sweep them and the simulator can
use small blocks). ``kernels/report.py`` compiles the very same Python functions to SASS.

Launches go on CuPy's current stream (its null stream is the legacy default stream), so CuPy's
stream-ordered memory pool cannot hand a temporary's memory to anyone before the kernels that read
it have run; every temporary is held in a Python variable until the last launch that reads it has
been enqueued. Forward remembers its stream; a backward called on another stream first waits for
it, and makes it wait in turn for the backward's reads of the saved arrays. A failed launch raises
(Numba checks the driver's return code); a fault inside a kernel surfaces at the next
synchronising call (e.g. copying a result to the host).
"""

import math
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np
from numba import cuda

from ..backend import cuda_simulated
from .cells import (gru_backward, gru_forward, lstm_backward, lstm_forward, rnn_relu_backward,
                    rnn_relu_forward, rnn_tanh_backward, rnn_tanh_forward)

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
CELLS = tuple(GATES)


@dataclass(frozen=True)
class Geometry:
    """Block shapes. A step kernel's block is (step_h, step_b) threads, one per (hidden unit, batch
    row), and the reduction over H (or G*H) is staged in tiles of step_h columns. The accumulation
    kernel's block is (acc_threads, acc_threads) threads, each owning acc_regs x acc_regs outputs,
    and stages acc_k rows of the N = T*B reduction at a time."""
    step_h: int = 32
    step_b: int = 8
    acc_threads: int = 16
    acc_regs: int = 4
    acc_k: int = 16


def _thread_safe_simulator_shared_arrays():
    """Make the simulator's ``cuda.shared.array`` allocate each array exactly once per block.

    The simulator runs a block's threads as Python threads and creates a shared array on the first
    call from each source line: ``get``, then ``np.empty`` and store, without a lock. Two threads
    that both see "not yet" get different arrays, and the block computes with a tile it never
    wrote (seen here: about one launch in a few thousand, wrong gradients). Same logic, under a lock.
    """
    import sys
    import threading

    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    unlocked = kernelapi.FakeCUDAShared.array
    if getattr(unlocked, "thread_safe", False):
        return
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:   # dynamic shared memory: no allocation per line
            return unlocked(self, shape, dtype, alignment)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                if isinstance(dtype, numba.types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    array.thread_safe = True
    kernelapi.FakeCUDAShared.array = array


if cuda_simulated():
    _thread_safe_simulator_shared_arrays()


GPU_GEOMETRY = Geometry()
# The simulator runs every CUDA thread as a Python thread: small blocks keep it fast, and still
# make tests cross tile boundaries in H, B and N.
SIM_GEOMETRY = Geometry(step_h=4, step_b=2, acc_threads=2, acc_regs=2, acc_k=4)


def default_geometry():
    return SIM_GEOMETRY if cuda_simulated() else GPU_GEOMETRY


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


def ceil_div(n, d):
    return (n + d - 1) // d


def launch_config(cols, rows, threads):
    """(blocks, threads) for a 2-D grid covering ``cols`` x ``rows`` with ``threads`` = (x, y)."""
    tx, ty = threads
    return (ceil_div(cols, tx), ceil_div(rows, ty)), (tx, ty)


# ================================================================ kernels
def build_kernels(cell, dtype, geo):
    """The Python functions of the kernels for one cell and dtype (not yet compiled), and the
    signatures they are compiled with: {name: (pyfunc, signature)}. Names are
    "step_forward", "step_backward" and "accumulate"."""
    G = GATES[cell]
    dt = numba.from_dtype(np.dtype(dtype))
    TH, TB = geo.step_h, geo.step_b          # step block: TH hidden units x TB batch rows
    TK = TH                                  # reduction tile of the step products
    TKP = TK + 1                             # padded row of a staged W tile: no bank conflicts
    NT = TH * TB                             # threads per step block
    AT, R, AK = geo.acc_threads, geo.acc_regs, geo.acc_k
    TM = AT * R                              # accumulation tile: TM rows of dW x TM columns
    ANT = AT * AT

    # ------------------------------------------------------------ forward step: recurrent product
    @device_function
    def gate_products(hs, src, w_hh, sh_h, sh_w, acc):
        """acc[g] = Σ_k h_{t-1}[b, k] W_hh[g*H + j, k] for this thread's (b, j), every gate g.

        The block stages h_{t-1}[b0:b0+TB, k0:k0+TK] and W_hh[g*H + j0 : g*H + j0+TH, k0:k0+TK]
        in shared memory, tile after tile along k; every thread of the block takes part in the
        staging (zero outside the matrices) even when its own (b, j) is out of bounds.
        """
        B, H = hs.shape[1], hs.shape[2]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        lin = ty * TH + tx
        j0, b0 = cuda.blockIdx.x * TH, cuda.blockIdx.y * TB
        zero = dt(0)
        for g in range(G):
            acc[g] = zero
        for k0 in range(0, H, TK):
            for idx in range(lin, TB * TK, NT):
                r, c = idx // TK, idx % TK
                v = zero
                if b0 + r < B and k0 + c < H:
                    v = hs[src, b0 + r, k0 + c]
                sh_h[r, c] = v
            for idx in range(lin, G * TH * TK, NT):
                g, rem = idx // (TH * TK), idx % (TH * TK)
                r, c = rem // TK, rem % TK        # consecutive threads read consecutive k: coalesced
                v = zero
                if j0 + r < H and k0 + c < H:
                    v = w_hh[g * H + j0 + r, k0 + c]
                sh_w[g, r, c] = v
            cuda.syncthreads()
            for c in range(TK):
                hk = sh_h[ty, c]                  # one value per warp: a broadcast
                for g in range(G):
                    acc[g] += hk * sh_w[g, tx, c]  # row stride TKP: no bank conflicts
            cuda.syncthreads()

    # ------------------------------------------------------------ backward step: dh through W_hh
    @device_function
    def dh_product(dg, t, w_hh, sh_g, sh_w):
        """Σ_m dG[t, b, m] W_hh[m, k] for this thread's (b, k), m over all G*H gate rows.

        Stages dG[t, b0:b0+TB, m0:m0+TK] and W_hh[m0:m0+TK, k0:k0+TH], tile after tile along m.
        """
        B, GH = dg.shape[1], dg.shape[2]
        H = w_hh.shape[1]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        lin = ty * TH + tx
        k0, b0 = cuda.blockIdx.x * TH, cuda.blockIdx.y * TB
        zero = dt(0)
        acc = zero
        for m0 in range(0, GH, TK):
            for idx in range(lin, TB * TK, NT):
                r, c = idx // TK, idx % TK
                v = zero
                if b0 + r < B and m0 + c < GH:
                    v = dg[t, b0 + r, m0 + c]
                sh_g[r, c] = v
            for idx in range(lin, TK * TH, NT):
                r, c = idx // TH, idx % TH
                v = zero
                if m0 + r < GH and k0 + c < H:
                    v = w_hh[m0 + r, k0 + c]
                sh_w[r, c] = v
            cuda.syncthreads()
            for c in range(TK):
                acc += sh_g[ty, c] * sh_w[c, tx]
            cuda.syncthreads()
        return acc

    # ------------------------------------------------------------ the step kernels of each cell
    if cell in ("rnn_tanh", "rnn_relu"):
        act = rnn_tanh_forward if cell == "rnn_tanh" else rnn_relu_forward
        act_backward = rnn_tanh_backward if cell == "rnn_tanh" else rnn_relu_backward

        def step_forward(xw, hs, w_hh, b_hh, lengths, t, src, dst, y):
            """One step of h_t = act(XW[t] + h_{t-1} @ W_hhᵀ + b_hh).

            xw (T, B, H) input projections, b_ih included; hs (T+1, B, H): reads hs[src], writes
            hs[dst] (every row: inactive rows copy the state through); w_hh (H, H); b_hh (H,);
            lengths (B,) int32; y (T, B, H): writes y[t]. The saved activation is hs[dst] itself.
            Grid (ceil(H/TH), ceil(B/TB)), block (TH, TB).
            FLOPs 2·B·H² + O(B·H); bytes ≈ s·(H² + 4·B·H) (W_hh is re-read by every block row of
            the grid, from L2 after the first).
            """
            sh_h = cuda.shared.array((TB, TK), dt)
            sh_w = cuda.shared.array((1, TH, TKP), dt)
            acc = cuda.local.array(1, dt)
            gate_products(hs, src, w_hh, sh_h, sh_w, acc)
            B, H = hs.shape[1], hs.shape[2]
            j = cuda.blockIdx.x * TH + cuda.threadIdx.x
            b = cuda.blockIdx.y * TB + cuda.threadIdx.y
            if b >= B or j >= H:
                return
            if t < lengths[b]:
                hj = act(xw[t, b, j] + acc[0] + b_hh[j])
                hs[dst, b, j] = hj
                y[t, b, j] = hj
            else:
                hs[dst, b, j] = hs[src, b, j]
                y[t, b, j] = 0

        def step_backward(dg, w_hh, dy, dh, hs, lengths, t_prod, t, rev):
            """Fused BPTT step: dh += dG[t_prod] @ W_hh (skipped when t_prod < 0), then the
            pointwise backward of step t (skipped when t < 0): dG[t] = act'(h_t)·(dh + dy[t]).

            dg (T, B, H): reads dg[t_prod], writes dg[t] (zero for inactive rows); w_hh (H, H);
            dy (T, B, H); dh (B, H) in/out: on entry dL/dh_t from later steps, on exit the part of
            dL/dh_{t-1} that does not go through W_hh (zero here; unchanged for inactive rows);
            hs (T+1, B, H) the forward states. Grid (ceil(H/TH), ceil(B/TB)), block (TH, TB).
            FLOPs 2·B·H² + O(B·H); bytes ≈ s·(H² + 6·B·H).
            """
            sh_g = cuda.shared.array((TB, TK), dt)
            sh_w = cuda.shared.array((TK, TH), dt)
            rec = dt(0)
            if t_prod >= 0:
                rec = dh_product(dg, t_prod, w_hh, sh_g, sh_w)
            B, H = dh.shape
            k = cuda.blockIdx.x * TH + cuda.threadIdx.x
            b = cuda.blockIdx.y * TB + cuda.threadIdx.y
            if b >= B or k >= H:
                return
            d = dh[b, k] + rec
            if t >= 0:
                if t < lengths[b]:
                    dg[t, b, k] = act_backward(d + dy[t, b, k], hs[t + 1 - rev, b, k])
                    d = dt(0)
                else:
                    dg[t, b, k] = 0
            dh[b, k] = d

    elif cell == "lstm":
        def step_forward(xw, hs, cs, w_hh, b_hh, lengths, t, src, dst, y, gates):
            """One LSTM step, gate rows [i, f, g, o].

            xw (T, B, 4H) input projections, b_ih included; hs, cs (T+1, B, H): read [src], write
            [dst]; w_hh (4H, H); b_hh (4H,); lengths (B,) int32; y (T, B, H): writes y[t];
            gates (T, B, 4H): writes the activated gates of step t (active rows only).
            Grid (ceil(H/TH), ceil(B/TB)), block (TH, TB); each thread owns the 4 gates of its
            (b, j), so pre-activations never leave registers.
            FLOPs 8·B·H² + O(B·H); bytes ≈ s·(4H² + 13·B·H).
            """
            sh_h = cuda.shared.array((TB, TK), dt)
            sh_w = cuda.shared.array((4, TH, TKP), dt)
            acc = cuda.local.array(4, dt)
            gate_products(hs, src, w_hh, sh_h, sh_w, acc)
            B, H = hs.shape[1], hs.shape[2]
            j = cuda.blockIdx.x * TH + cuda.threadIdx.x
            b = cuda.blockIdx.y * TB + cuda.threadIdx.y
            if b >= B or j >= H:
                return
            if t < lengths[b]:
                i, f, g, o, c, h = lstm_forward(
                    xw[t, b, j], xw[t, b, H + j], xw[t, b, 2 * H + j], xw[t, b, 3 * H + j],
                    acc[0] + b_hh[j], acc[1] + b_hh[H + j], acc[2] + b_hh[2 * H + j],
                    acc[3] + b_hh[3 * H + j], cs[src, b, j])
                gates[t, b, j] = i
                gates[t, b, H + j] = f
                gates[t, b, 2 * H + j] = g
                gates[t, b, 3 * H + j] = o
                cs[dst, b, j] = c
                hs[dst, b, j] = h
                y[t, b, j] = h
            else:
                cs[dst, b, j] = cs[src, b, j]
                hs[dst, b, j] = hs[src, b, j]
                y[t, b, j] = 0

        def step_backward(dg, w_hh, dy, dh, dc, gates, cs, lengths, t_prod, t, rev):
            """Fused LSTM BPTT step: dh += dG[t_prod] @ W_hh (skipped when t_prod < 0), then the
            pointwise backward of step t (skipped when t < 0).

            dg (T, B, 4H): reads dg[t_prod], writes dg[t] (zero for inactive rows); w_hh (4H, H);
            dy (T, B, H); dh, dc (B, H) in/out: dL/dh_t, dL/dc_t on entry; on exit dL/dc_{t-1}
            and the part of dL/dh_{t-1} not through W_hh (zero; both unchanged for inactive rows);
            gates (T, B, 4H), cs (T+1, B, H) saved by forward.
            Grid (ceil(H/TH), ceil(B/TB)), block (TH, TB).
            FLOPs 8·B·H² + O(B·H); bytes ≈ s·(4H² + 19·B·H).
            """
            sh_g = cuda.shared.array((TB, TK), dt)
            sh_w = cuda.shared.array((TK, TH), dt)
            rec = dt(0)
            if t_prod >= 0:
                rec = dh_product(dg, t_prod, w_hh, sh_g, sh_w)
            B, H = dh.shape
            k = cuda.blockIdx.x * TH + cuda.threadIdx.x
            b = cuda.blockIdx.y * TB + cuda.threadIdx.y
            if b >= B or k >= H:
                return
            d = dh[b, k] + rec
            if t >= 0:
                if t < lengths[b]:
                    dai, daf, dag, dao, dcp = lstm_backward(
                        d + dy[t, b, k], dc[b, k], gates[t, b, k], gates[t, b, H + k],
                        gates[t, b, 2 * H + k], gates[t, b, 3 * H + k],
                        cs[t + 1 - rev, b, k], cs[t + rev, b, k])
                    dg[t, b, k] = dai
                    dg[t, b, H + k] = daf
                    dg[t, b, 2 * H + k] = dag
                    dg[t, b, 3 * H + k] = dao
                    dc[b, k] = dcp
                    d = dt(0)
                else:
                    dg[t, b, k] = 0
                    dg[t, b, H + k] = 0
                    dg[t, b, 2 * H + k] = 0
                    dg[t, b, 3 * H + k] = 0
            dh[b, k] = d

    elif cell == "gru":
        def step_forward(xw, hs, w_hh, b_hh, lengths, t, src, dst, y, gates, hn):
            """One GRU step, gate rows [r, z, n]; the reset gate scales W_hn h + b_hn.

            xw (T, B, 3H) input projections, b_ih included; hs (T+1, B, H): reads hs[src], writes
            hs[dst]; w_hh (3H, H); b_hh (3H,); lengths (B,) int32; y (T, B, H): writes y[t];
            gates (T, B, 3H) the activated r, z, n and hn (T, B, H) = W_hn h + b_hn of step t
            (active rows only). Grid (ceil(H/TH), ceil(B/TB)), block (TH, TB).
            FLOPs 6·B·H² + O(B·H); bytes ≈ s·(3H² + 10·B·H).
            """
            sh_h = cuda.shared.array((TB, TK), dt)
            sh_w = cuda.shared.array((3, TH, TKP), dt)
            acc = cuda.local.array(3, dt)
            gate_products(hs, src, w_hh, sh_h, sh_w, acc)
            B, H = hs.shape[1], hs.shape[2]
            j = cuda.blockIdx.x * TH + cuda.threadIdx.x
            b = cuda.blockIdx.y * TB + cuda.threadIdx.y
            if b >= B or j >= H:
                return
            if t < lengths[b]:
                hnj = acc[2] + b_hh[2 * H + j]
                r, z, n, h = gru_forward(xw[t, b, j], xw[t, b, H + j], xw[t, b, 2 * H + j],
                                         acc[0] + b_hh[j], acc[1] + b_hh[H + j], hnj, hs[src, b, j])
                gates[t, b, j] = r
                gates[t, b, H + j] = z
                gates[t, b, 2 * H + j] = n
                hn[t, b, j] = hnj
                hs[dst, b, j] = h
                y[t, b, j] = h
            else:
                hs[dst, b, j] = hs[src, b, j]
                y[t, b, j] = 0

        def step_backward(dg_x, dg_h, w_hh, dy, dh, gates, hn, hs, lengths, t_prod, t, rev):
            """Fused GRU BPTT step: dh += dG_h[t_prod] @ W_hh (skipped when t_prod < 0), then the
            pointwise backward of step t (skipped when t < 0).

            dg_x, dg_h (T, B, 3H): the pre-activation gradients on the input and recurrent sides
            (they differ in the n rows: dG_h = dG_x·r); reads dg_h[t_prod], writes both at t (zero
            for inactive rows); w_hh (3H, H); dy (T, B, H); dh (B, H) in/out: on exit the direct
            part dh_t·z of dL/dh_{t-1} (unchanged for inactive rows); gates (T, B, 3H),
            hn (T, B, H), hs (T+1, B, H) saved by forward.
            Grid (ceil(H/TH), ceil(B/TB)), block (TH, TB).
            FLOPs 6·B·H² + O(B·H); bytes ≈ s·(3H² + 17·B·H).
            """
            sh_g = cuda.shared.array((TB, TK), dt)
            sh_w = cuda.shared.array((TK, TH), dt)
            rec = dt(0)
            if t_prod >= 0:
                rec = dh_product(dg_h, t_prod, w_hh, sh_g, sh_w)
            B, H = dh.shape
            k = cuda.blockIdx.x * TH + cuda.threadIdx.x
            b = cuda.blockIdx.y * TB + cuda.threadIdx.y
            if b >= B or k >= H:
                return
            d = dh[b, k] + rec
            if t >= 0:
                if t < lengths[b]:
                    dar, daz, dan_x, dan_h, direct = gru_backward(
                        d + dy[t, b, k], gates[t, b, k], gates[t, b, H + k], gates[t, b, 2 * H + k],
                        hn[t, b, k], hs[t + rev, b, k])
                    dg_x[t, b, k] = dar
                    dg_x[t, b, H + k] = daz
                    dg_x[t, b, 2 * H + k] = dan_x
                    dg_h[t, b, k] = dar
                    dg_h[t, b, H + k] = daz
                    dg_h[t, b, 2 * H + k] = dan_h
                    d = direct
                else:
                    for g in range(3):
                        dg_x[t, b, g * H + k] = 0
                        dg_h[t, b, g * H + k] = 0
            dh[b, k] = d
    else:
        raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELLS)}")

    # ------------------------------------------------------------ BPTT weight gradients
    def accumulate(dg_x, x, dg_h, hp, dw_ih, dw_hh, db_ih, db_hh, has_bias):
        """dW_ih += dG_xᵀ x, dW_hh += dG_hᵀ h_prev, and (has_bias) db_ih += Σ_n dG_x[n],
        db_hh += Σ_n dG_h[n]: the sums over all N = T*B rows, i.e. over time and batch, in one launch.

        dg_x, dg_h (N, G*H); x (N, I); hp (N, H) the state before each row's step; dw_ih (G*H, I),
        dw_hh (G*H, H), db_ih, db_hh (G*H,) are ADDED into (placeholders when has_bias is 0).
        Grid (ceil(I/TM) + ceil(H/TM), ceil(G*H/TM)), block (AT, AT): blocks with
        blockIdx.x < ceil(I/TM) own a TM x TM tile of dW_ih, the others of dW_hh; each thread holds
        R x R outputs in registers and walks all N rows in tiles of AK, in a fixed order, so the
        result is deterministic without atomics. The blocks of the first column tile of each
        matrix also sum the rows of dG for the bias.
        FLOPs 2·N·G·H·(I + H); bytes ≈ s·N·(G·H·(nI + nH) + (I + H)·ceil(G·H/TM)) with nI, nH
        the column tiles: dG is re-read once per column tile (mostly from L2).
        """
        sh_a = cuda.shared.array((AK, TM), dt)
        sh_s = cuda.shared.array((AK, TM), dt)
        acc = cuda.local.array((R, R), dt)
        a = cuda.local.array(R, dt)
        bsum = cuda.local.array(R, dt)
        N, GH = dg_x.shape
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        lin = ty * AT + tx
        m0 = cuda.blockIdx.y * TM
        n_x_tiles = (x.shape[1] + TM - 1) // TM
        if cuda.blockIdx.x < n_x_tiles:
            src, grad, dw, db, c0 = x, dg_x, dw_ih, db_ih, cuda.blockIdx.x * TM
        else:
            src, grad, dw, db, c0 = hp, dg_h, dw_hh, db_hh, (cuda.blockIdx.x - n_x_tiles) * TM
        C = src.shape[1]
        do_bias = has_bias != 0 and c0 == 0
        zero = dt(0)
        for i in range(R):
            bsum[i] = zero
            for jj in range(R):
                acc[i, jj] = zero
        for n0 in range(0, N, AK):
            for idx in range(lin, AK * TM, ANT):
                r, c = idx // TM, idx % TM
                va = zero
                if n0 + r < N and m0 + c < GH:
                    va = grad[n0 + r, m0 + c]
                sh_a[r, c] = va
                vs = zero
                if n0 + r < N and c0 + c < C:
                    vs = src[n0 + r, c0 + c]
                sh_s[r, c] = vs
            cuda.syncthreads()
            for kk in range(AK):
                for i in range(R):
                    a[i] = sh_a[kk, ty + i * AT]
                for jj in range(R):
                    s = sh_s[kk, tx + jj * AT]
                    for i in range(R):
                        acc[i, jj] += a[i] * s
                if do_bias:
                    for i in range(R):
                        bsum[i] += a[i]
            cuda.syncthreads()
        for i in range(R):
            m = m0 + ty + i * AT
            if m < GH:
                for jj in range(R):
                    c = c0 + tx + jj * AT
                    if c < C:
                        dw[m, c] += acc[i, jj]
                if do_bias and tx == 0:
                    db[m] += bsum[i]

    a3, a2, a1 = dt[:, :, ::1], dt[:, ::1], dt[::1]
    i32, i64 = numba.int32[::1], numba.int64
    if cell in ("rnn_tanh", "rnn_relu"):
        fsig = (a3, a3, a2, a1, i32, i64, i64, i64, a3)
        bsig = (a3, a2, a3, a2, a3, i32, i64, i64, i64)
    elif cell == "lstm":
        fsig = (a3, a3, a3, a2, a1, i32, i64, i64, i64, a3, a3)
        bsig = (a3, a2, a3, a2, a2, a3, a3, i32, i64, i64, i64)
    else:
        fsig = (a3, a3, a2, a1, i32, i64, i64, i64, a3, a3, a3)
        bsig = (a3, a3, a2, a3, a2, a3, a3, a3, i32, i64, i64, i64)
    asig = (a2, a2, a2, a2, a2, a2, a1, a1, i64)
    return {"step_forward": (step_forward, numba.void(*fsig)),
            "step_backward": (step_backward, numba.void(*bsig)),
            "accumulate": (accumulate, numba.void(*asig))}


@lru_cache(maxsize=None)
def compiled_kernels(cell, dtype, geo):
    """The kernels of ``build_kernels``, compiled for the current device (on first launch)."""
    return {name: cuda.jit(fn) for name, (fn, _sig) in build_kernels(cell, np.dtype(dtype).name, geo).items()}


# ================================================================ host side
def _xp(a):
    if cuda_simulated():
        return np
    import cupy
    return cupy


def _current_stream():
    """CuPy's current stream, where every launch of a call goes; None in the simulator."""
    if cuda_simulated():
        return None
    import cupy
    return cupy.cuda.get_current_stream()


def _numba_stream(stream):
    """The Numba stream for a CuPy stream (0 in the simulator). CuPy's null stream, pointer 0,
    is the legacy default stream; Numba's ``default_stream()`` is the per-thread one when Numba
    is set to per-thread default streams, so ask for the legacy one by name."""
    if stream is None:
        return 0
    return cuda.external_stream(stream.ptr) if stream.ptr else cuda.legacy_default_stream()


def _wait(waiter, producer):
    """Make stream ``waiter`` wait for the work enqueued so far on ``producer`` (no host sync);
    nothing when they are the same stream or in the simulator."""
    if waiter is None or producer is None or waiter.ptr == producer.ptr:
        return
    waiter.wait_event(producer.record())


def _configure(kernel, blocks, threads, stream):
    """``kernel[blocks, threads, stream]`` without numba-cuda's low-occupancy warning: small
    grids are what small layers need, and the warning would name no remedy a user has."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")
        return kernel[blocks, threads, _numba_stream(stream)]


def _dev(a):
    """A view Numba can launch with. CuPy arrays are wrapped without the per-launch stream
    synchronisation Numba would otherwise do for a foreign array: everything runs on one stream."""
    if cuda_simulated() or a is None:
        return a
    return cuda.as_cuda_array(a, sync=False)


def time_steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def forward_sequence(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, geometry=None):
    geo = geometry or default_geometry()
    xp = _xp(x)
    T, B, I = x.shape
    GH, H = w_hh.shape
    dt = x.dtype
    rev = int(bool(reverse))
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
    stream = _current_stream()
    kern = _configure(k["step_forward"], *launch_config(H, B, (geo.step_h, geo.step_b)), stream)
    d_xw, d_hs, d_w, d_b, d_l, d_y = map(_dev, (xw, hs, w_hh, b_hh, lens, y))
    d_cs, d_gates, d_hn = map(_dev, (cs, gates, hn))
    for t in time_steps(T, reverse):
        src, dst = t + rev, t + 1 - rev
        if cell in ("rnn_tanh", "rnn_relu"):
            kern(d_xw, d_hs, d_w, d_b, d_l, t, src, dst, d_y)
        elif cell == "lstm":
            kern(d_xw, d_hs, d_cs, d_w, d_b, d_l, t, src, dst, d_y, d_gates)
        else:
            kern(d_xw, d_hs, d_w, d_b, d_l, t, src, dst, d_y, d_gates, d_hn)
    last = 0 if rev else T
    h_n = hs[last]
    c_n = cs[last] if cell == "lstm" else None
    saved = dict(x=x, hs=hs, cs=cs, gates=gates, hn=hn, lengths=lens, reverse=rev, geometry=geo,
                 stream=stream)
    return y, h_n, c_n, saved


def backward_sequence(cell, saved, dy, dh_n, dc_n, w_ih, w_hh, grads):
    x, hs, lens, rev, geo = (saved[k] for k in ("x", "hs", "lengths", "reverse", "geometry"))
    xp = _xp(x)
    T, B, I = x.shape
    GH, H = w_hh.shape
    dt = x.dtype
    k = compiled_kernels(cell, dt.name, geo)
    stream = _current_stream()
    _wait(stream, saved["stream"])      # the caller may have switched streams since forward
    dg_x = xp.empty((T, B, GH), dt)
    dg_h = xp.empty((T, B, GH), dt) if cell == "gru" else dg_x
    dy = xp.zeros((T, B, H), dt) if dy is None else xp.ascontiguousarray(dy)
    dh = xp.zeros((B, H), dt) if dh_n is None else xp.array(dh_n, dtype=dt, order="C")
    dc = None
    if cell == "lstm":
        dc = xp.zeros((B, H), dt) if dc_n is None else xp.array(dc_n, dtype=dt, order="C")

    kern = _configure(k["step_backward"], *launch_config(H, B, (geo.step_h, geo.step_b)), stream)
    d_dgx, d_dgh, d_w, d_dy, d_dh, d_dc, d_l, d_hs = map(_dev, (dg_x, dg_h, w_hh, dy, dh, dc, lens, hs))
    d_gates, d_cs, d_hn = map(_dev, (saved["gates"], saved["cs"], saved["hn"]))
    # Launch p does the product of step p-1 and the pointwise part of step p: T + 1 launches.
    order = list(time_steps(T, not rev)) + [-1]
    t_prod = -1
    for t in order:
        if cell in ("rnn_tanh", "rnn_relu"):
            kern(d_dgx, d_w, d_dy, d_dh, d_hs, d_l, t_prod, t, rev)
        elif cell == "lstm":
            kern(d_dgx, d_w, d_dy, d_dh, d_dc, d_gates, d_cs, d_l, t_prod, t, rev)
        else:
            kern(d_dgx, d_dgh, d_w, d_dy, d_dh, d_gates, d_hn, d_hs, d_l, t_prod, t, rev)
        t_prod = t

    accumulate_grads(cell, dg_x.reshape(T * B, GH), x.reshape(T * B, I), dg_h.reshape(T * B, GH),
                     hs[rev:T + rev].reshape(T * B, H), grads, geo)
    dx = (dg_x.reshape(T * B, GH) @ w_ih).reshape(T, B, I)
    # The saved arrays came from forward's stream's memory pool, which may hand their memory out
    # again once they are freed: only after this backward has read them.
    _wait(saved["stream"], stream)
    return dx, dh, dc


def accumulate_grads(cell, dg_x, x, dg_h, hp, grads, geo):
    """One launch of the accumulation kernel: adds the BPTT weight (and bias) gradients into grads."""
    xp = _xp(x)
    N, GH = dg_x.shape
    I, H = x.shape[1], hp.shape[1]
    k = compiled_kernels(cell, x.dtype.name, geo)
    tm = geo.acc_threads * geo.acc_regs
    has_bias = "b_ih" in grads
    placeholder = None if has_bias else xp.zeros(1, x.dtype)    # never written: has_bias is 0
    db_ih = grads["b_ih"] if has_bias else placeholder
    db_hh = grads["b_hh"] if has_bias else placeholder
    blocks = (ceil_div(I, tm) + ceil_div(H, tm), ceil_div(GH, tm))
    threads = (geo.acc_threads, geo.acc_threads)
    _configure(k["accumulate"], blocks, threads, _current_stream())(
        *map(_dev, (dg_x, x, dg_h, hp, grads["w_ih"], grads["w_hh"], db_ih, db_hh)), int(has_bias))

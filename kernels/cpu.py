"""CPU backend: the dense products register-tiled on threads of its own (float32) or through BLAS
(float64, half layers); Numba @njit kernels for the fused pointwise cell math.

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3).
The contract of ``forward_sequence`` / ``backward_sequence`` is written in kernels/contract.py.

Forward, one layer and direction:
    XW = x (T*B, I) @ W_ihᵀ                                   the input projection of every step
    for each step t:  HW = h_{t-1} (B, H) @ W_hhᵀ (H, G*H)    the only sequential product
                      step kernel: + biases, gates, h_t (c_t), the activations backward needs
Backward (BPTT):
    for each step t, reversed:  step kernel: dG_t from dh_t (dc_t) and the saved activations
                                dh_{t-1} += dG_t (B, G*H) @ W_hh (G*H, H)
    dW_ih += dGᵀ (G*H, T*B) @ x (T*B, I)               one product each, after the loop: the
    dW_hh += dGᵀ @ h_prev (T*B, H)                     BPTT sums over time and batch at once
    db    += column sums of dG (float64);  dx = dG @ W_ih

Two paths run this, picked in one place (``tiled``):
- float32, the tiled path: the batch rows of a sequence are independent, so the whole loop runs in
  compiled code split by batch row over ``parts`` threads (kernels/cpu_threads.py), each part
  doing both products of every step of its rows with register-tiled products and never waiting
  for another part; then the weight gradients split by row. No BLAS call: NumPy's OpenBLAS keeps
  its worker threads spinning after each call, and measured beside them our parts ran up to 1.8x
  slower (an LSTM forward at T = 100, B = 32, H = 128: 6.9 against 3.8 ms). Results are the same
  bits whatever the number of threads. Against the BLAS path on 2 threads, an LSTM training step
  went from 2.0 to 1.6 ms at T = 100, B = 8, H = 64 and from 16.2 to 10-11 ms at B = 32, H = 128
  (torch 1.9 and 8.4 ms): a product of that size is a BLAS call per step, which OpenBLAS runs on
  one thread, while its per-step cell math ran on one core too.
- float64 and half layers, the BLAS path: one BLAS product per step, the step kernel on all rows;
  a half layer rounds its states between steps (kernels/precision.py).

Why it is laid out this way (the per-step loop runs T times, so it does only what must be sequential):
- States live in one array ``hs`` (T+1, B, H) in time order: the forward step at t reads the state
  ``hs[t]`` and writes ``hs[t+1]`` (reversed: reads ``hs[t+1]``, writes ``hs[t]``). Nothing is copied
  per step, and h_prev of every step is a contiguous (T*B, H) view for the dW_hh product. The LSTM
  cell state ``cs`` is laid out the same way.
- Step kernels take the whole (T, ...) arrays, the step's indices and a range of batch rows
  instead of per-step slices (each slice made in Python costs a few hundred nanoseconds, and a
  step would need a dozen); the BLAS path makes one kernel call and one BLAS call a step, both
  writing into buffers allocated once per sequence.
- On the BLAS path the recurrent products use ``W_hhᵀ`` as a contiguous (H, G*H) copy (forward) and
  ``W_hh`` itself (backward), so both are plain row-major GEMMs and go through ``np.dot``, which has
  the least per-call overhead (or the function ``use_products`` names: gpurnn.torch's torch.mm).
- The backward step kernel adds the previous step's recurrent gradient ``dh_rec`` into ``dh`` itself,
  which saves one pass over (B, H) and one call per step.
- The pointwise math is vectorised (AVX): see "the cell math, compiled for the CPU" and "row kernels"
  below for the three things that takes. On the tiled path at B = 32, H = 128 it is about a third
  of an LSTM forward (1.1 of 3.2 ms on 2 threads; the products 0.8 + 1.3 ms).
- The per-sequence buffers come from a workspace that hands an array out again once nothing refers
  to it (kernels/workspace.py): fresh ones are faulted in page by page on every call.
- The kernels compile per cell and dtype on first use (``compile_kernels`` does it up front), and
  copy rows with loops, not slice assignments, which Numba compiles in a tenth of the time.
Measured and left out: splitting a step's hidden units (not its batch rows) over the threads, which
needs a barrier every step and shares cache lines between parts at every block edge (a forward
step at B = 32, H = 128 went from 53 to only 50 µs on 2 threads); numba prange, whose threading
layer is the user's (workqueue took 110 µs a launch here, omp is not fork-safe).
"""

import math
import types as pytypes

import numba
import numba.np.ufunc.parallel as numba_parallel
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.registry import CPUDispatcher
from numba.extending import intrinsic, overload

from . import cells
from .contract import Saved, dims_of, one_algorithm, steps
from .cpu_threads import (PANEL, TILES, compile_threads, matmul, matmul_at, matmul_panel, pack, pack_transposed,
                          part_rows, parts_for, run_parts)
from .numba_cache import cached
from .precision import check_half, round_in_place
from .vocabulary import CELLS, GATES
from .workspace import Workspace

# The per-sequence buffers (xw, the states, gates, gate gradients, dx) are reused between calls
# once nothing refers to them any more: see kernels/workspace.py for why and how that is safe.
WORKSPACE = Workspace()


def kernel(fn=None, *, allocates=False):
    """A CPU kernel: compiled on first use with NumPy's error model (below), and kept in Numba's
    on-disk cache outside the installed package (kernels/numba_cache.py says why).

    A kernel that allocates nothing is compiled without Numba's reference counting (``_nrt``):
    every array a kernel slices would otherwise be counted in and out, two atomic operations
    each, and a step kernel slices a dozen per row (they took a sixth of an LSTM step's cell math
    at B = 32, H = 128). ``allocates=True`` keeps it for the kernels that make arrays."""
    if fn is None:
        return lambda f: kernel(f, allocates=allocates)
    return cached(njit(error_model="numpy", _nrt=allocates)(fn))


# ---------------------------------------------------------------- the cell math, compiled for the CPU
# The cell functions of kernels/cells.py call math.exp and math.tanh. Compiled for the CPU these are
# calls into libm, one element at a time (glibc's tanhf costs about five expf), and a loop that calls
# a function cannot be vectorised. The CPU kernels therefore compile the very same cell functions
# against a ``math`` whose float32 exp is a branch-free polynomial that LLVM turns into AVX code, and
# whose float32 tanh is 1 - 2/(exp(2a) + 1). Both stay within a few float32 ulps of libm (absolute
# error below 2e-7 for tanh); float64 keeps libm's functions.
# The kernels are compiled with error_model="numpy": Python's error model tests every division for
# a zero divisor, and that branch alone stops vectorisation.

@intrinsic
def _pow2_of_rounded(typingctx, y):
    """2**n as float32, for the float32 y = n + 1.5·2**23 (n, an integer, sits in y's low bits)."""
    if y != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.bitcast(args[0], i32), ir.Constant(i32, 23))
        return builder.bitcast(builder.add(bits, ir.Constant(i32, 127 << 23)), ir.FloatType())

    return types.float32(types.float32), codegen


_F = np.float32


@njit(inline="always", error_model="numpy")
def exp_float32(a):
    """e**a: a = n·ln2 + r with |r| <= ln2/2 (Cody-Waite), e**r by Cephes' expf polynomial.

    a is clamped to [-87.3, 88.3], so the result is always a normal, finite float32."""
    a = min(max(a, _F(-87.3)), _F(88.3))
    y = a * _F(1.44269504088896341) + _F(12582912.0)      # round(a / ln2) + 1.5·2**23
    n = y - _F(12582912.0)
    r = a - n * _F(0.693359375) + n * _F(2.12194440e-4)   # ln2 in two parts: r is exact
    p = _F(1.9875691500e-4)
    p = p * r + _F(1.3981999507e-3)
    p = p * r + _F(8.3334519073e-3)
    p = p * r + _F(4.1665795894e-2)
    p = p * r + _F(1.6666665459e-1)
    p = p * r + _F(5.0000001201e-1)
    return (p * r * r + r + _F(1.0)) * _pow2_of_rounded(y)


def _exp(a):
    return math.exp(a)


def _tanh(a):
    return math.tanh(a)


@overload(_exp, inline="always")
def _exp_overload(a):
    if a == types.float32:
        return lambda a: exp_float32(a)
    return lambda a: math.exp(a)


@overload(_tanh, inline="always")
def _tanh_overload(a):
    if a == types.float32:
        return lambda a: _F(1.0) - _F(2.0) / (exp_float32(a + a) + _F(1.0))
    return lambda a: math.tanh(a)


def _compile_cells_for_cpu():
    """Every jitted function of kernels/cells.py, recompiled with ``math`` as above."""
    cpu_math = pytypes.ModuleType("gpurnn_cpu_math")
    cpu_math.__dict__.update(vars(math))
    cpu_math.exp, cpu_math.tanh = _exp, _tanh
    namespace = dict(vars(cells), math=cpu_math)       # the globals the recompiled functions see
    for name, fn in vars(cells).items():
        if isinstance(fn, CPUDispatcher):                # the @njit functions, nothing else
            py = fn.py_func
            namespace[name] = njit(inline="always")(
                pytypes.FunctionType(py.__code__, namespace, py.__name__, py.__defaults__, py.__closure__))
    return pytypes.SimpleNamespace(**namespace)


_cells = _compile_cells_for_cpu()
rnn_tanh_forward, rnn_tanh_backward = _cells.rnn_tanh_forward, _cells.rnn_tanh_backward
rnn_relu_forward, rnn_relu_backward = _cells.rnn_relu_forward, _cells.rnn_relu_backward
lstm_forward, lstm_backward = _cells.lstm_forward, _cells.lstm_backward
gru_forward, gru_backward = _cells.gru_forward, _cells.gru_backward


# ---------------------------------------------------------------- row kernels
# The pointwise math of one batch row, j = 0..H-1, on 1-D arrays of H (one per gate block). Each
# row kernel is a function of its own, not inlined, and takes every gate block as its own array:
# that way LLVM sees distinct arrays and vectorises the loop. Rows of one array (hs[r, b], hs[w, b])
# or gate blocks addressed as g[k*H + j] look to it as if they might overlap, and it gives up.

@kernel
def rnn_tanh_row_forward(a, h_new):
    for j in range(h_new.shape[0]):
        h_new[j] = rnn_tanh_forward(a[j])


@kernel
def rnn_relu_row_forward(a, h_new):
    for j in range(h_new.shape[0]):
        h_new[j] = rnn_relu_forward(a[j])


@kernel
def lstm_row_forward(ai, af, ag, ao, c_prev, i, f, g, o, c_new, h_new):
    """a*: pre-activations with both biases and the recurrent part; i, f, g, o: activated gates."""
    zero = c_prev.dtype.type(0)
    for j in range(h_new.shape[0]):
        i[j], f[j], g[j], o[j], c_new[j], h_new[j] = lstm_forward(
            ai[j], af[j], ag[j], ao[j], zero, zero, zero, zero, c_prev[j])


@kernel
def gru_row_forward(ar, az, xn, hn, h_prev, r, z, n, h_new):
    """ar, az: whole pre-activations; xn = W_in x + b_in; hn = W_hn h + b_hn."""
    zero = h_prev.dtype.type(0)
    for j in range(h_new.shape[0]):
        r[j], z[j], n[j], h_new[j] = gru_forward(ar[j], az[j], xn[j], zero, zero, hn[j], h_prev[j])


# dh (H): dL/dh of the row's new state, all parts summed; on return the part of dL/dh_prev that
# does not pass through W_hh. dc (H): LSTM, dL/dc in, dL/dc_prev out. d* (H): overwritten with
# the pre-activation gradient of each gate block.

@kernel
def rnn_tanh_row_backward(dh, h_new, da):
    for j in range(dh.shape[0]):
        da[j] = rnn_tanh_backward(dh[j], h_new[j])
        dh[j] = 0


@kernel
def rnn_relu_row_backward(dh, h_new, da):
    for j in range(dh.shape[0]):
        da[j] = rnn_relu_backward(dh[j], h_new[j])
        dh[j] = 0


@kernel
def lstm_row_backward(dh, dc, i, f, g, o, c_new, c_prev, dai, daf, dag, dao):
    for j in range(dh.shape[0]):
        dai[j], daf[j], dag[j], dao[j], dc[j] = lstm_backward(dh[j], dc[j], i[j], f[j], g[j], o[j],
                                                              c_new[j], c_prev[j])
        dh[j] = 0


@kernel
def gru_row_backward(dh, r, z, n, hn, h_prev, dar, daz, dan_x, dan_h):
    """dar, daz serve both sides; the candidate's gradient differs: dan_x (input), dan_h (recurrent)."""
    for j in range(dh.shape[0]):
        dar[j], daz[j], dan_x[j], dan_h[j], dh[j] = gru_backward(dh[j], r[j], z[j], n[j], hn[j], h_prev[j])


# ---------------------------------------------------------------- step kernels
# One step at time t, reading state index r and writing state index w (see the top):
#   xw (T, B, G*H)   x @ W_ihᵀ, without bias (the GRU's n block gets b_in added in place)
#   hw (B, G*H)      in: h_r @ W_hhᵀ; overwritten with the pre-activations (scratch)
#   b_ih, b_hh (G*H,);  active (T, B) uint8
#   hs, cs (T+1, B, H)   states; index w overwritten (a copy of index r for inactive rows)
#   y (T, B, H)          y[t] overwritten, zero for inactive rows
#   gates (T, B, G*H)    activated gates (LSTM, GRU); hn (T, B, H) W_hn h + b_hn (GRU)
# Rows inactive at t keep their state and leave gates/hn[t] unset: backward never reads them.

@kernel
def copy_row(src, dst):
    """dst[:] = src. A loop: Numba takes seconds to compile an array assigned into a slice
    (``y[t, b, :] = hs[w, b]``), a tenth of that for this."""
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@kernel
def pre_activation(t, b, n, xw, hw, b_ih, b_hh):
    """hw[b, :n] += xw[t, b, :n] + b_ih[:n] + b_hh[:n].

    Adding b_ih here rather than to all of xw up front saves a pass over (T, B, G*H)."""
    a, x_b = hw[b], xw[t, b]
    for k in range(n):
        a[k] += x_b[k] + b_ih[k] + b_hh[k]


@kernel
def rnn_step_forward(relu, t, r, w, xw, hw, b_ih, b_hh, active, hs, y, b0, b1):
    """relu: the nonlinearity is relu, else tanh (chosen per row, outside the vectorised loop)."""
    for b in range(b0, b1):
        if active[t, b]:
            pre_activation(t, b, hw.shape[1], xw, hw, b_ih, b_hh)
            a = hw[b]
            if relu:
                rnn_relu_row_forward(a, hs[w, b])
            else:
                rnn_tanh_row_forward(a, hs[w, b])
            copy_row(hs[w, b], y[t, b])
        else:
            copy_row(hs[r, b], hs[w, b])
            y[t, b, :] = 0


@kernel
def lstm_step_forward(t, r, w, xw, hw, b_ih, b_hh, active, hs, cs, y, gates, b0, b1):
    H = hs.shape[2]
    for b in range(b0, b1):
        if active[t, b]:
            pre_activation(t, b, hw.shape[1], xw, hw, b_ih, b_hh)
            a, gt = hw[b], gates[t, b]
            lstm_row_forward(a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:], cs[r, b],
                             gt[:H], gt[H:2 * H], gt[2 * H:3 * H], gt[3 * H:], cs[w, b], hs[w, b])
            copy_row(hs[w, b], y[t, b])
        else:
            copy_row(hs[r, b], hs[w, b])
            copy_row(cs[r, b], cs[w, b])
            y[t, b, :] = 0


@kernel
def gru_step_forward(t, r, w, xw, hw, b_ih, b_hh, active, hs, y, gates, hn, b0, b1):
    H = hs.shape[2]
    for b in range(b0, b1):
        if active[t, b]:
            pre_activation(t, b, 2 * H, xw, hw, b_ih, b_hh)
            a, gt, hn_b, x_b = hw[b], gates[t, b], hn[t, b], xw[t, b]
            for j in range(H):                                    # n: its two parts apart
                hn_b[j] = a[2 * H + j] + b_hh[2 * H + j]
                x_b[2 * H + j] += b_ih[2 * H + j]
            gru_row_forward(a[:H], a[H:2 * H], x_b[2 * H:], hn_b, hs[r, b],
                            gt[:H], gt[H:2 * H], gt[2 * H:], hs[w, b])
            copy_row(hs[w, b], y[t, b])
        else:
            copy_row(hs[r, b], hs[w, b])
            y[t, b, :] = 0


# One backward step at time t (state indices r, w as in forward):
#   dy (T, B, H)       gradient from the outputs
#   dh (B, H)          in: dL/dh_w from later steps, less the part still in dh_rec; out: the part of
#                      dL/dh_r that does not pass through W_hh (zero except the GRU's z·dh)
#   dh_rec (B, H)      dG of the previous step @ W_hh, added into dh here
#   dc (B, H)          LSTM: in dL/dc_w, out dL/dc_r
#   dg, dg_h (T, B, G*H)  dg[t] (dg_h[t]) overwritten with the pre-activation gradients on the input
#                      (recurrent) side, zero for inactive rows; one array except for the GRU
# Inactive rows pass dh (and dc) through unchanged, as in forward they pass the state.

@kernel
def sum_dh(t, b, active, dy, dh, dh_rec):
    """dh[b] += dh_rec[b] (+ dy[t, b] when the row is active)."""
    dh_b, rec_b, dy_b = dh[b], dh_rec[b], dy[t, b]
    if active[t, b]:
        for j in range(dh_b.shape[0]):
            dh_b[j] += rec_b[j] + dy_b[j]
    else:
        for j in range(dh_b.shape[0]):
            dh_b[j] += rec_b[j]


@kernel
def rnn_step_backward(relu, t, w, dy, dh, dh_rec, active, hs, dg, b0, b1):
    for b in range(b0, b1):
        sum_dh(t, b, active, dy, dh, dh_rec)
        dh_b = dh[b]
        if not active[t, b]:
            dg[t, b, :] = 0
        elif relu:
            rnn_relu_row_backward(dh_b, hs[w, b], dg[t, b])
        else:
            rnn_tanh_row_backward(dh_b, hs[w, b], dg[t, b])


@kernel
def lstm_step_backward(t, r, w, dy, dh, dh_rec, dc, active, gates, cs, dg, b0, b1):
    H = dh.shape[1]
    for b in range(b0, b1):
        sum_dh(t, b, active, dy, dh, dh_rec)
        dh_b = dh[b]
        if active[t, b]:
            gt, d = gates[t, b], dg[t, b]
            lstm_row_backward(dh_b, dc[b], gt[:H], gt[H:2 * H], gt[2 * H:3 * H], gt[3 * H:], cs[w, b], cs[r, b],
                              d[:H], d[H:2 * H], d[2 * H:3 * H], d[3 * H:])
        else:
            dg[t, b, :] = 0


@kernel
def gru_step_backward(t, r, dy, dh, dh_rec, active, gates, hn, hs, dg_x, dg_h, b0, b1):
    H = dh.shape[1]
    for b in range(b0, b1):
        sum_dh(t, b, active, dy, dh, dh_rec)
        dh_b = dh[b]
        if active[t, b]:
            gt, dx_, dh_ = gates[t, b], dg_x[t, b], dg_h[t, b]
            gru_row_backward(dh_b, gt[:H], gt[H:2 * H], gt[2 * H:], hn[t, b], hs[r, b],
                             dx_[:H], dx_[H:2 * H], dx_[2 * H:], dh_[2 * H:])
            copy_row(dx_[:2 * H], dh_[:2 * H])                     # r, z: the same on both sides
        else:
            dg_x[t, b, :] = 0
            dg_h[t, b, :] = 0


# ---------------------------------------------------------------- sums over rows
COLUMN_BLOCK = 512      # rows a block of column_sums adds before its sum joins the total


@kernel(allocates=True)
def column_sums_into(a, out, c0, c1):
    """out[c0:c1] (float64) = Σ_n a[n, c0:c1] for a (N, C), overwritten.

    NumPy's ``a.sum(axis=0)`` adds one row at a time in a's dtype: in float32 its error grows
    with N (1e-5 relative at N = 1e6 on random data, 3% at worst). Here every row is added in
    float64, in blocks of COLUMN_BLOCK rows whose sums are then added: the error is at most
    (COLUMN_BLOCK + N / COLUMN_BLOCK)·2**-53 of Σ_n |a[n, c]|, 2.7e-13 at N = 1e6, a 200000th of
    float32's rounding (2**-24) where the column has one sign: rounded once to float32, it is
    the true sum rounded. One pass over a: 0.25-1.1x the time of NumPy's float32 sum (memory bound)."""
    part = np.empty(c1 - c0, np.float64)
    for j in range(c0, c1):
        out[j] = 0.0
    for n0 in range(0, a.shape[0], COLUMN_BLOCK):
        for j in range(c1 - c0):
            part[j] = 0.0
        for n in range(n0, min(n0 + COLUMN_BLOCK, a.shape[0])):
            row = a[n, c0:c1]
            for j in range(c1 - c0):
                part[j] += row[j]
        for j in range(c1 - c0):
            out[c0 + j] += part[j]


def column_sums(a):
    """Σ_n a[n] over the rows of a (N, C), as float64 (C,): see ``column_sums_into``."""
    out = np.empty(a.shape[1], np.float64)
    column_sums_into(a, out, 0, a.shape[1])
    return out


# ---------------------------------------------------------------- the dense products
_product = np.dot


def use_products(fn):
    """Compute every dense product of this backend with ``fn(a, b, out=out)`` (2-D arrays; ``out``
    C-contiguous, written and returned), for the rest of the process; None: NumPy's ``np.dot``.
    Inside a torch program, gpurnn.torch passes torch.mm's: NumPy's BLAS brings a thread pool of
    its own, whose spinning workers and torch's OpenMP workers then fight over the cores (on two
    cores a char-level LSTM model stepped 2-5x slower than on torch.nn; benchmarks/bench_bridge.py).
    Returns the function used before."""
    global _product
    before, _product = _product, (np.dot if fn is None else fn)
    return before


# ---------------------------------------------------------------- float32: the tiled path, on parts
# In float32 every product runs as kernels/cpu_threads.py's tiles, split over ``parts`` threads:
# the batch rows of a sequence are independent, so part p runs the whole loop of its rows
# [b0, b1), both products of each step (x_t @ W_ihᵀ and h_{t-1} @ W_hhᵀ) and the step kernel,
# without ever waiting for another part. The weight gradients then split by gate row, dx by (t, b)
# row, the bias sums by column. Every element is computed by one part, in one fixed order, so the
# results are the same (bitwise) whatever the number of threads.
#   w_ih_p, w_hh_p     the second operand of a product as panels (cpu_threads.pack): W_ihᵀ and
#                      W_hhᵀ forward, W_hh and W_ih backward
#   gates, cs, hn, dc  a cell that has none gets an empty array (``present``)

# a part function's ``cell``: the cell's index in CELLS (vocabulary.py is in the cache's stamp)
RNN_RELU, LSTM, GRU = CELLS.index("rnn_relu"), CELLS.index("lstm"), CELLS.index("gru")


def parted(fn):
    """A part function fn(p, parts, ...): compiled without the GIL, so that cpu_threads.run_parts
    runs its parts in parallel."""
    return cached(njit(nogil=True, error_model="numpy")(fn))


@parted
def forward_rows(p, parts, cell, reverse, x, w_ih_p, w_hh_p, b_ih, b_hh, active, xw, hw, hs, cs, y, gates, hn):
    T, B = active.shape
    b0, b1 = part_rows(p, parts, B)
    for q in range(w_ih_p.shape[0]):        # x_t @ W_ihᵀ of every step first, a panel of W_ih at a
        for t in range(T):                  # time: each panel is read from memory once, not T times
            matmul_panel(x[t], w_ih_p, xw[t], b0, b1, q, False)
    for s in range(T):
        t = T - 1 - s if reverse else s
        r = t + 1 if reverse else t
        w = t if reverse else t + 1
        matmul(hs[r], w_hh_p, hw, b0, b1, False)
        if cell == LSTM:
            lstm_step_forward(t, r, w, xw, hw, b_ih, b_hh, active, hs, cs, y, gates, b0, b1)
        elif cell == GRU:
            gru_step_forward(t, r, w, xw, hw, b_ih, b_hh, active, hs, y, gates, hn, b0, b1)
        else:
            rnn_step_forward(cell == RNN_RELU, t, r, w, xw, hw, b_ih, b_hh, active, hs, y, b0, b1)


@parted
def backward_rows(p, parts, cell, reverse, w_hh_p, active, dy, dh, dh_rec, dc, hs, cs, gates, hn, dg_x, dg_h):
    T, B = active.shape
    b0, b1 = part_rows(p, parts, B)
    for s in range(T):
        t = s if reverse else T - 1 - s          # forward's steps, last first
        r = t + 1 if reverse else t
        w = t if reverse else t + 1
        if cell == LSTM:
            lstm_step_backward(t, r, w, dy, dh, dh_rec, dc, active, gates, cs, dg_x, b0, b1)
        elif cell == GRU:
            gru_step_backward(t, r, dy, dh, dh_rec, active, gates, hn, hs, dg_x, dg_h, b0, b1)
        else:
            rnn_step_backward(cell == RNN_RELU, t, w, dy, dh, dh_rec, active, hs, dg_x, b0, b1)
        matmul(dg_h[t], w_hh_p, dh_rec, b0, b1, False)          # dh_{t-1} through W_hh


@parted
def gradient_rows(p, parts, x, h_prev, dg_x, dg_h, w_ih_p, dw_ih, dw_hh, db_x, db_h, dx):
    """dW_ih += dG_xᵀ x, dW_hh += dG_hᵀ h_prev (rows of G*H), dx = dG_x W_ih (rows of T*B), and the
    float64 bias sums db_x, db_h (columns; db_h is skipped when it has no columns)."""
    GH = dg_x.shape[1]
    g0, g1 = part_rows(p, parts, GH)
    matmul_at(dg_x, x, dw_ih, g0, g1, True)
    matmul_at(dg_h, h_prev, dw_hh, g0, g1, True)
    column_sums_into(dg_x, db_x, g0, g1)
    if db_h.shape[0]:
        column_sums_into(dg_h, db_h, g0, g1)
    n0, n1 = part_rows(p, parts, x.shape[0])
    matmul(dg_x, w_ih_p, dx, n0, n1, False)


# ---------------------------------------------------------------- sequences
def numba_threads():
    """Numba's thread count: what numba.set_num_threads set, once Numba's threading layer runs;
    before that NUMBA_NUM_THREADS (by default one per core). Asking numba.get_num_threads() first
    would start that layer (and its pool) and fix multiprocessing's start method, for nothing:
    the tiled path runs on threads of its own."""
    if numba_parallel._is_initialized:
        return numba.get_num_threads()
    return numba.config.NUMBA_NUM_THREADS


_threads = numba_threads


def threads():
    """How many threads the tiled path runs a sequence on: by default Numba's count
    (``numba_threads``); what ``use_threads`` names instead."""
    return _threads()


def use_threads(fn):
    """Size the tiled path's parts with ``fn()`` for the rest of the process; None: Numba's count.
    gpurnn.torch passes torch.get_num_threads, so that torch.set_num_threads sizes gpurnn too.
    Returns the function used before."""
    global _threads
    before, _threads = _threads, (numba_threads if fn is None else fn)
    return before


def tiled(dtype, half):
    """Whether a sequence runs on the tiled path (float32, on a CPU with AVX-512: cpu_threads.TILES)
    or through BLAS (float64; half layers, whose states the BLAS path rounds between steps; and
    every dtype where the tiles would spill their registers): the one place the cpu backend picks."""
    return TILES and dtype == np.float32 and half is None


def active_mask(lengths, T, B):
    """(T, B) uint8: 1 where row b takes a step at time t."""
    if lengths is None:
        return np.ones((T, B), np.uint8)
    return (np.arange(T)[:, None] < np.asarray(lengths)[None, :]).astype(np.uint8)


def present(a, dt, ndim=3):
    """``a``, or an empty array of ``ndim`` dimensions where the cell has none (the part functions
    are compiled code, which takes an array of the right dimensions for every argument)."""
    return np.empty((0,) * ndim, dt) if a is None else a


def panels(N, K, dt):
    """A workspace array for the panels of a (K, N) operand (cpu_threads.pack)."""
    return WORKSPACE.empty((-(-N // PANEL), K, PANEL), dt)


def forward_sequence(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, algo="auto", half=None):
    one_algorithm("cpu", algo)
    check_half(half)
    dims = dims_of(cell, x, w_hh)
    T, B, I, H, G = dims
    GH = G * H
    dt = x.dtype
    empty = WORKSPACE.empty
    xw = empty((T, B, GH), dt)                                  # input projection of every step
    hw = empty((B, GH), dt)
    y = empty((T, B, H), dt)
    hs = empty((T + 1, B, H), dt)                               # states in time order, see the top
    first = T if reverse else 0                                 # where the initial state goes
    hs[first] = h0
    active = active_mask(lengths, T, B)
    gates = empty((T, B, GH), dt) if cell in ("lstm", "gru") else None
    cs = None
    if cell == "lstm":
        cs = empty((T + 1, B, H), dt)
        cs[first] = c0
    hn = empty((T, B, H), dt) if cell == "gru" else None
    if tiled(dt, half):
        run_parts(forward_rows, parts_for(B, threads()), CELLS.index(cell), bool(reverse), x,
                  pack_transposed(w_ih, panels(GH, I, dt)), pack_transposed(w_hh, panels(GH, H, dt)),
                  b_ih, b_hh, active, xw, hw, hs, present(cs, dt), y, present(gates, dt), present(hn, dt))
    else:
        _product(x.reshape(T * B, I), w_ih.T, out=xw.reshape(T * B, GH))
        w_hh_t = empty((H, GH), dt)
        w_hh_t[...] = w_hh.T
        for t, r, w in steps(T, reverse):
            _product(hs[r], w_hh_t, out=hw)
            if cell in ("rnn_tanh", "rnn_relu"):
                rnn_step_forward(cell == "rnn_relu", t, r, w, xw, hw, b_ih, b_hh, active, hs, y, 0, B)
            elif cell == "lstm":
                lstm_step_forward(t, r, w, xw, hw, b_ih, b_hh, active, hs, cs, y, gates, 0, B)
            else:
                gru_step_forward(t, r, w, xw, hw, b_ih, b_hh, active, hs, y, gates, hn, 0, B)
            if half is not None:    # the state as half storage holds it, before the next step reads it
                round_in_place(hs[w], half)
                if cs is not None:
                    round_in_place(cs[w], half)
    if half is not None:            # what no later step reads: rounded once, at the end
        for a in (y, gates, hn):
            if a is not None:
                round_in_place(a, half)
    last = 0 if reverse else T
    saved = Saved(cell, dims, x, hs, cs, gates, hn, lengths, bool(reverse))
    return y, hs[last].copy(), (cs[last].copy() if cell == "lstm" else None), saved


def backward_sequence(cell, saved, dy, dh_n, dc_n, w_ih, w_hh, grads):
    x, hs, reverse = saved.x, saved.hs, saved.reverse
    T, B, I, H, G = saved.dims
    GH = G * H
    active = active_mask(saved.lengths, T, B)
    dt = x.dtype
    empty, zeros = WORKSPACE.empty, WORKSPACE.zeros
    dg_x = empty((T, B, GH), dt)
    dg_h = empty((T, B, GH), dt) if cell == "gru" else dg_x
    dh = np.zeros((B, H), dt) if dh_n is None else dh_n.copy()
    dc = (np.zeros((B, H), dt) if dc_n is None else dc_n.copy()) if cell == "lstm" else None
    dh_rec = zeros((B, H), dt)
    if dy is None:
        dy = zeros((T, B, H), dt)
    h_prev = hs[1:] if reverse else hs[:T]                      # the state each step read, time order
    dgx2, dgh2 = dg_x.reshape(T * B, GH), dg_h.reshape(T * B, GH)
    dx = empty((T, B, I), dt)
    if tiled(dt, None):             # (a half layer's backward runs as float32's)
        run_parts(backward_rows, parts_for(B, threads()), CELLS.index(cell), bool(reverse),
                  pack(w_hh, panels(H, GH, dt)), active, dy, dh, dh_rec, present(dc, dt, 2), hs,
                  present(saved.cs, dt), present(saved.gates, dt), present(saved.hn, dt), dg_x, dg_h)
        dh += dh_rec
        # BPTT accumulation over all T*B rows at once: deterministic, no per-step products.
        db_x, db_h = np.empty(GH, np.float64), np.empty(GH if dg_h is not dg_x else 0, np.float64)
        run_parts(gradient_rows, parts_for(GH, threads()), x.reshape(T * B, I), h_prev.reshape(T * B, H), dgx2,
                  dgh2, pack(w_ih, panels(I, GH, dt)), grads["w_ih"], grads["w_hh"], db_x, db_h,
                  dx.reshape(T * B, I))
        if "b_ih" in grads:
            grads["b_ih"] += db_x
            grads["b_hh"] += db_x if dg_h is dg_x else db_h
        return dx, dh, dc
    for t, r, w in reversed(steps(T, reverse)):
        if cell in ("rnn_tanh", "rnn_relu"):
            rnn_step_backward(cell == "rnn_relu", t, w, dy, dh, dh_rec, active, hs, dg_x, 0, B)
        elif cell == "lstm":
            lstm_step_backward(t, r, w, dy, dh, dh_rec, dc, active, saved.gates, saved.cs, dg_x, 0, B)
        else:
            gru_step_backward(t, r, dy, dh, dh_rec, active, saved.gates, saved.hn, hs, dg_x, dg_h, 0, B)
        _product(dg_h[t], w_hh, out=dh_rec)                     # dh_{t-1} through W_hh
    dh += dh_rec
    # BPTT accumulation over all T*B rows at once: deterministic, no per-step products.
    grads["w_ih"] += _product(dgx2.T, x.reshape(T * B, I), out=empty((GH, I), dt))
    grads["w_hh"] += _product(dgh2.T, h_prev.reshape(T * B, H), out=empty((GH, H), dt))
    if "b_ih" in grads:
        # float64 sums added into the float32 gradients: each bias rounds once (column_sums)
        db_x = column_sums(dgx2)
        grads["b_ih"] += db_x
        grads["b_hh"] += db_x if dg_h is dg_x else column_sums(dgh2)
    _product(dgx2, w_ih, out=dx.reshape(T * B, I))
    return dx, dh, dc


def compile_kernels(cell, dtype):
    """Compile, or load from Numba's on-disk cache, every kernel that a layer of ``cell`` runs in
    ``dtype``, by one tiny sequence forward and backward; nothing else is compiled (each kernel
    compiles per cell and dtype on first use). Takes seconds on the first run with an empty cache,
    a few tenths when the cache has them, microseconds once this process has them."""
    dt = np.dtype(dtype)
    GH, H, T, B, I = GATES[cell], 1, 2, 1, 1

    def z(*shape):
        return np.zeros(shape, dt)

    w_ih, w_hh, b = z(GH, I), z(GH, H), z(GH)
    y, h, c, saved = forward_sequence(cell, z(T, B, I), z(B, H), z(B, H), w_ih, w_hh, b, b, None, False)
    grads = dict(w_ih=z(GH, I), w_hh=z(GH, H), b_ih=z(GH), b_hh=z(GH))
    backward_sequence(cell, saved, z(T, B, H), z(B, H), z(B, H) if cell == "lstm" else None, w_ih, w_hh, grads)
    compile_threads()

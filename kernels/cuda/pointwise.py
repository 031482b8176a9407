"""The pointwise part of a time step, once per cell, for every CUDA kernel that runs steps.

``kernels/cells.py`` holds each cell's math on scalars; this module holds what the CUDA kernels do
around it at one (batch row b, hidden unit j) of step t: where the pre-activations come from, which
saved activations go where, and what an inactive row (t >= lengths[b]) does. The per-step kernels
(``step.py``) and the persistent kernels (``persistent.py``) call the same two device functions.

Shapes as in ``__init__.py``: xw (T, B, G*H); hs, cs (T+1, B, H); gates (T, B, G*H); hn (T, B, H);
y, dy (T, B, H); dg_x, dg_h (T, B, G*H); dh, dc (B, H). An array a cell does not have (cs but for
the LSTM, gates for the RNN, hn but for the GRU) is passed as any array of that rank: it is never
touched.

Half precision (kernels/precision.py). A layer of a half format ``half`` ("bfloat16", "float16")
computes in float32 and rounds to the format every value it stores: h_t, c_t, y, the gates and the
GRU's W_hn h + b_hn, here, at the store (``rounding``), so the next step reads h_{t-1} (c_{t-1})
rounded from hs[src] (cs[src]) as half-precision storage holds it. What stays in registers stays
float32: the LSTM's h_t comes from the unrounded c_t, the GRU's n from the unrounded W_hn h + b_hn.
An inactive row copies its stored (already rounded) state. The format is a build-time constant: a
float32 or float64 kernel (``half`` None) calls an identity, which the compiler removes.
"""

import numba
import numpy as np

from . import runtime as rt
from ..precision import check_half
from ..vocabulary import GATES, check_cell
from .primitives import round_bfloat16, round_float16
from .runtime import device_function
from ..cells import (gru_backward, gru_forward, lstm_backward, lstm_forward, rnn_relu_backward,
                     rnn_relu_forward, rnn_tanh_backward, rnn_tanh_forward)


def rounding(dtype, half):
    """The device function a forward kernel stores its values through: the identity for ``half``
    None, else the rounding to the format (primitives.py), which only float32 kernels have
    (ValueError otherwise)."""
    if half is None:
        @device_function
        def identity(v):
            return v
        return identity
    check_half(half)
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"a {half} layer computes in float32 arrays that hold {half} values; got dtype {dtype}")
    return {"bfloat16": round_bfloat16, "float16": round_float16}[half]


def build(cell, dtype, rows, bias_in_acc=False, half=None):
    """(step_point_forward, step_point_backward) for one cell and dtype; with ``half``, forward
    rounds every value it stores to that format (the module docstring; backward is the same).

    ``step_point_forward(xw, hs, cs, gates, hn, b_ih, b_hh, lengths, y, acc, r, t, b, j, src, dst)``:
    the input side of gate g of (b, j) is xw[t, b, g*H + j] + b_ih[g*H + j] (the input bias is
    added here, not in a pass of its own over xw), the recurrent side acc[g * rows + r] +
    b_hh[g*H + j] (``bias_in_acc``: acc[g * rows + r] alone, the kernel having started its sums
    from b_hh); writes h_t (c_t) at hs[dst] (cs[dst]) and y[t] and, for active rows, the
    activations backward needs; an inactive row copies its state from hs[src] (cs[src]) and
    writes y = 0.

    ``step_point_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, lengths, rec, t, b, k, rev)``:
    ``rec`` is Σ_m dG[t+1, b, m] W_hh[m, k]; sets dh[b, k] = dh[b, k] + rec, and for t >= 0 runs
    the cell backward of step t: an active row writes dG_t (both dg_x and dg_h) and dc and leaves
    in dh the part of dL/dh_{t-1} that does not go through W_hh; an inactive row writes dG_t = 0
    and passes dh (dc) through.
    """
    G = GATES[cell]
    dt = numba.from_dtype(np.dtype(dtype))
    R = rows
    rnd = rounding(dtype, half)

    @device_function
    def rec(acc, b_hh, g, r, j, H):
        """The recurrent side of gate g: W_hh h + b_hh."""
        if bias_in_acc:
            return acc[g * R + r]
        return acc[g * R + r] + b_hh[g * H + j]

    if cell in ("rnn_tanh", "rnn_relu"):
        act = rnn_tanh_forward if cell == "rnn_tanh" else rnn_relu_forward
        act_backward = rnn_tanh_backward if cell == "rnn_tanh" else rnn_relu_backward

        @device_function
        def active_forward(xw, hs, cs, gates, hn, b_ih, b_hh, y, acc, r, t, b, j, src, dst):
            hj = rnd(act(xw[t, b, j] + b_ih[j] + rec(acc, b_hh, 0, r, j, 0)))
            hs[dst, b, j] = hj
            y[t, b, j] = hj

        @device_function
        def active_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, d, t, b, k, rev):
            dg_x[t, b, k] = act_backward(d + dy[t, b, k], hs[t + 1 - rev, b, k])
            return dt(0)

    elif cell == "lstm":
        @device_function
        def active_forward(xw, hs, cs, gates, hn, b_ih, b_hh, y, acc, r, t, b, j, src, dst):
            H = y.shape[2]
            i, f, g, o, c, h = lstm_forward(
                xw[t, b, j] + b_ih[j], xw[t, b, H + j] + b_ih[H + j], xw[t, b, 2 * H + j] + b_ih[2 * H + j],
                xw[t, b, 3 * H + j] + b_ih[3 * H + j],
                rec(acc, b_hh, 0, r, j, H), rec(acc, b_hh, 1, r, j, H), rec(acc, b_hh, 2, r, j, H),
                rec(acc, b_hh, 3, r, j, H), cs[src, b, j])
            gates[t, b, j] = rnd(i)
            gates[t, b, H + j] = rnd(f)
            gates[t, b, 2 * H + j] = rnd(g)
            gates[t, b, 3 * H + j] = rnd(o)
            cs[dst, b, j] = rnd(c)
            hr = rnd(h)
            hs[dst, b, j] = hr
            y[t, b, j] = hr

        @device_function
        def active_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, d, t, b, k, rev):
            H = dy.shape[2]
            dai, daf, dag, dao, dcp = lstm_backward(
                d + dy[t, b, k], dc[b, k], gates[t, b, k], gates[t, b, H + k], gates[t, b, 2 * H + k],
                gates[t, b, 3 * H + k], cs[t + 1 - rev, b, k], cs[t + rev, b, k])
            dg_x[t, b, k] = dai
            dg_x[t, b, H + k] = daf
            dg_x[t, b, 2 * H + k] = dag
            dg_x[t, b, 3 * H + k] = dao
            dc[b, k] = dcp
            return dt(0)

    elif cell == "gru":
        @device_function
        def active_forward(xw, hs, cs, gates, hn, b_ih, b_hh, y, acc, r, t, b, j, src, dst):
            H = y.shape[2]
            hnj = rec(acc, b_hh, 2, r, j, H)
            rr, z, n, h = gru_forward(xw[t, b, j] + b_ih[j], xw[t, b, H + j] + b_ih[H + j],
                                      xw[t, b, 2 * H + j] + b_ih[2 * H + j],
                                      rec(acc, b_hh, 0, r, j, H), rec(acc, b_hh, 1, r, j, H), hnj, hs[src, b, j])
            gates[t, b, j] = rnd(rr)
            gates[t, b, H + j] = rnd(z)
            gates[t, b, 2 * H + j] = rnd(n)
            hn[t, b, j] = rnd(hnj)
            hr = rnd(h)
            hs[dst, b, j] = hr
            y[t, b, j] = hr

        @device_function
        def active_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, d, t, b, k, rev):
            H = dy.shape[2]
            dar, daz, dan_x, dan_h, direct = gru_backward(
                d + dy[t, b, k], gates[t, b, k], gates[t, b, H + k], gates[t, b, 2 * H + k],
                hn[t, b, k], hs[t + rev, b, k])
            dg_x[t, b, k] = dar
            dg_x[t, b, H + k] = daz
            dg_x[t, b, 2 * H + k] = dan_x
            dg_h[t, b, k] = dar
            dg_h[t, b, H + k] = daz
            dg_h[t, b, 2 * H + k] = dan_h
            return direct
    else:
        check_cell(cell)

    @device_function
    def step_point_forward(xw, hs, cs, gates, hn, b_ih, b_hh, lengths, y, acc, r, t, b, j, src, dst):
        if t < lengths[b]:
            active_forward(xw, hs, cs, gates, hn, b_ih, b_hh, y, acc, r, t, b, j, src, dst)
        else:
            hs[dst, b, j] = hs[src, b, j]
            if G == 4:
                cs[dst, b, j] = cs[src, b, j]
            y[t, b, j] = dt(0)

    @device_function
    def step_point_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, lengths, rec, t, b, k, rev):
        d = dh[b, k] + rec
        if t >= 0:
            if t < lengths[b]:
                d = active_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, d, t, b, k, rev)
            else:
                H = dy.shape[2]
                for g in range(G):
                    dg_x[t, b, g * H + k] = dt(0)
                    dg_h[t, b, g * H + k] = dt(0)
        dh[b, k] = d

    return step_point_forward, step_point_backward



def forward_arrays(s, xw, y, w_hh, b_ih, b_hh):
    """The array arguments of a forward kernel of either algorithm, in order:
    (xw, hs, cs, gates, hn, w_hh, b_ih, b_hh, lengths, y), from the saved record ``s`` of the layer
    (``__init__.CudaSaved``), placeholders for those the cell lacks."""
    return (xw, s.hs, _or_placeholder(s.cs, y), _or_placeholder(s.gates, y),
            _or_placeholder(s.hn, y), w_hh, b_ih, b_hh, s.row_lengths, y)


def backward_arrays(s, dg_x, dg_h, w, dy, dh, dc):
    """The array arguments of a backward kernel of either algorithm, in order:
    (dg_x, dg_h, w, dy, dh, dc, gates, cs, hn, hs, lengths), placeholders for those the cell
    lacks; ``w`` is W_hh (both paths read it as it is)."""
    return (dg_x, dg_h, w, dy, dh, _or_placeholder(dc, dh), _or_placeholder(s.gates, dy),
            _or_placeholder(s.cs, dy), _or_placeholder(s.hn, dy), s.hs, s.row_lengths)


def _or_placeholder(a, like):
    return rt.placeholder(like.dtype, like.ndim) if a is None else a

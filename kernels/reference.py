"""Plain NumPy reference of one recurrent layer, one direction: written to be read, not to be fast.

This is the oracle every other backend is tested against, and it is itself tested against
finite differences and ``torch.nn``. It shares no code with the kernels on purpose.

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3).

Its two functions, ``forward_sequence`` and ``backward_sequence``, are the contract every backend
implements (kernels/contract.py states it, arguments and shapes), and it saves for backward what
every backend saves (``contract.Saved``): the states in one (T+1, B, H) array in time order.

Lengths follow PyTorch's packed sequences: at an inactive step a row keeps its state and outputs
zero. Running backwards through time, a row therefore starts at its own last valid step, and
``h_n`` is each row's state after its last valid step, in either direction.
"""

import numpy as np

from .contract import Saved, dims_of, one_algorithm, steps
from .precision import check_half, round_in_place
from .vocabulary import check_cell


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def active_rows(t, lengths, B):
    """(B, 1) bool: which rows take a step at time t."""
    if lengths is None:
        return np.ones((B, 1), dtype=bool)
    return (t < lengths)[:, None]


def forward_sequence(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, algo="auto", half=None):
    one_algorithm("reference", algo)
    check_cell(cell)
    check_half(half)
    if cell == "lstm":
        return lstm_forward_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, half)
    if cell == "gru":
        return gru_forward_reference(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, half)
    return rnn_forward_reference(cell, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, half)


def backward_sequence(cell, saved, dy, dh_n, dc_n, w_ih, w_hh, grads):
    if cell == "lstm":
        return lstm_backward_reference(saved, dy, dh_n, dc_n, w_ih, w_hh, grads)
    if cell == "gru":
        return gru_backward_reference(saved, dy, dh_n, w_ih, w_hh, grads)
    return rnn_backward_reference(cell, saved, dy, dh_n, w_ih, w_hh, grads)


def _states(x, h0, reverse):
    """hs (T+1, B, H), the states in time order (contract.Saved), the initial one in place."""
    T, B, _ = x.shape
    hs = np.zeros((T + 1, B, h0.shape[1]), x.dtype)
    hs[T if reverse else 0] = h0
    return hs


def _start_backward(saved, dy, dh_n):
    """Zeros where the loss sent no gradient; dx starts at zero."""
    T, B, _, H, _ = saved.dims
    dy = np.zeros((T, B, H), saved.x.dtype) if dy is None else dy
    dh = np.zeros((B, H), saved.x.dtype) if dh_n is None else dh_n.copy()
    return dy, dh, np.zeros_like(saved.x)


def _accumulate(grads, sums, dg_x, dg_h, x_t, h_prev):
    """Weight gradients of one step into ``sums`` (float64, _float64_sums): dW_ih += dG_xᵀ x_t,
    dW_hh += dG_hᵀ h_{t-1}, db += Σ_b dG; added into grads once at the end (_add_sums), so that
    the sums over all T*B rows are exact to the gradient's rounding."""
    sums["w_ih"] += dg_x.T.astype(np.float64) @ x_t
    sums["w_hh"] += dg_h.T.astype(np.float64) @ h_prev
    if "b_ih" in sums:
        sums["b_ih"] += dg_x.sum(axis=0, dtype=np.float64)
        sums["b_hh"] += dg_h.sum(axis=0, dtype=np.float64)


def _stored(half, *arrays):
    """Round what a step stored to the half format (kernels/precision.py): the next step reads
    the state as half-precision storage would hold it. Nothing for ``half`` None."""
    for a in arrays:
        round_in_place(a, half)


def _float64_sums(grads):
    return {k: np.zeros(grads[k].shape) for k in ("w_ih", "w_hh", "b_ih", "b_hh") if k in grads}


def _add_sums(grads, sums):
    for k, total in sums.items():
        grads[k] += total


# ---------------------------------------------------------------- RNN
def rnn_forward_reference(cell, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, half=None):
    T, B, _ = x.shape
    hs = _states(x, h0, reverse)
    y = np.zeros((T, B, h0.shape[1]), x.dtype)
    for t, before, after in steps(T, reverse):
        h = hs[before]
        a = x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh      # pre-activation (B, H)
        h_new = np.tanh(a) if cell == "rnn_tanh" else np.maximum(a, 0)
        act = active_rows(t, lengths, B)
        y[t] = np.where(act, h_new, 0)                     # outputs past a row's length are zero
        hs[after] = np.where(act, h_new, h)                 # inactive rows keep their state
        _stored(half, hs[after])
    _stored(half, y)
    saved = Saved(cell, dims_of(cell, x, w_hh), x, hs, None, None, None, lengths, reverse)
    return y, hs[after], None, saved


def rnn_backward_reference(cell, saved, dy, dh_n, w_ih, w_hh, grads):
    x, hs = saved.x, saved.hs
    T, B = saved.dims.T, saved.dims.B
    dy, dh, dx = _start_backward(saved, dy, dh_n)
    sums = _float64_sums(grads)
    for t, before, after in reversed(steps(T, saved.reverse)):
        act = active_rows(t, saved.lengths, B)
        dh_t = dh + dy[t]                                   # from the output and from step t+1
        h_new = hs[after]                                   # the step's output, where the row is active
        if cell == "rnn_tanh":
            da = dh_t * (1 - h_new ** 2)                    # tanh' = 1 - tanh²
        else:
            da = dh_t * (h_new > 0)
        da = np.where(act, da, 0)
        _accumulate(grads, sums, da, da, x[t], hs[before])
        dx[t] = da @ w_ih
        dh = np.where(act, da @ w_hh, dh)                   # inactive: the gradient passes through
    _add_sums(grads, sums)
    return dx, dh, None


# ---------------------------------------------------------------- LSTM
def lstm_forward_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, half=None):
    T, B, _ = x.shape
    H = h0.shape[1]
    hs, cs = _states(x, h0, reverse), _states(x, c0, reverse)
    y = np.zeros((T, B, H), x.dtype)
    gates = np.zeros((T, B, 4 * H), x.dtype)
    for t, before, after in steps(T, reverse):
        h, c = hs[before], cs[before]
        a = x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh       # (B, 4H), rows [i, f, g, o]
        i = sigmoid(a[:, 0 * H:1 * H])                      # input gate
        f = sigmoid(a[:, 1 * H:2 * H])                      # forget gate
        g = np.tanh(a[:, 2 * H:3 * H])                      # candidate
        o = sigmoid(a[:, 3 * H:4 * H])                      # output gate
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        act = active_rows(t, lengths, B)
        gates[t] = np.concatenate([i, f, g, o], axis=1)
        y[t] = np.where(act, h_new, 0)
        hs[after] = np.where(act, h_new, h)
        cs[after] = np.where(act, c_new, c)
        _stored(half, hs[after], cs[after])
    _stored(half, y, gates)
    saved = Saved("lstm", dims_of("lstm", x, w_hh), x, hs, cs, gates, None, lengths, reverse)
    return y, hs[after], cs[after], saved


def lstm_backward_reference(saved, dy, dh_n, dc_n, w_ih, w_hh, grads):
    x, hs, cs, gates = saved.x, saved.hs, saved.cs, saved.gates
    T, B, _, H, _ = saved.dims
    dy, dh, dx = _start_backward(saved, dy, dh_n)
    sums = _float64_sums(grads)
    dc = np.zeros((B, H), x.dtype) if dc_n is None else dc_n.copy()
    for t, before, after in reversed(steps(T, saved.reverse)):
        act = active_rows(t, saved.lengths, B)
        i, f, g, o = (gates[t][:, k * H:(k + 1) * H] for k in range(4))
        dh_t = dh + dy[t]
        tc = np.tanh(cs[after])
        dc_t = dc + dh_t * o * (1 - tc ** 2)                # h = o·tanh(c)
        da = np.concatenate([
            dc_t * g * i * (1 - i),                         # σ' = σ(1-σ)
            dc_t * cs[before] * f * (1 - f),
            dc_t * i * (1 - g ** 2),
            dh_t * tc * o * (1 - o),
        ], axis=1)
        da = np.where(act, da, 0)
        _accumulate(grads, sums, da, da, x[t], hs[before])
        dx[t] = da @ w_ih
        dh = np.where(act, da @ w_hh, dh)
        dc = np.where(act, dc_t * f, dc)
    _add_sums(grads, sums)
    return dx, dh, dc


# ---------------------------------------------------------------- GRU
def gru_forward_reference(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, half=None):
    T, B, _ = x.shape
    H = h0.shape[1]
    hs = _states(x, h0, reverse)
    y = np.zeros((T, B, H), x.dtype)
    gates = np.zeros((T, B, 3 * H), x.dtype)
    hns = np.zeros_like(y)
    for t, before, after in steps(T, reverse):
        h = hs[before]
        ax = x[t] @ w_ih.T + b_ih                           # (B, 3H), rows [r, z, n]
        ah = h @ w_hh.T + b_hh
        r = sigmoid(ax[:, :H] + ah[:, :H])                  # reset gate
        z = sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])        # update gate
        hn = ah[:, 2 * H:]                                  # W_hn h + b_hn, scaled by r
        n = np.tanh(ax[:, 2 * H:] + r * hn)                 # candidate
        h_new = (1 - z) * n + z * h
        act = active_rows(t, lengths, B)
        gates[t] = np.concatenate([r, z, n], axis=1)
        hns[t] = hn
        y[t] = np.where(act, h_new, 0)
        hs[after] = np.where(act, h_new, h)
        _stored(half, hs[after])
    _stored(half, y, gates, hns)
    saved = Saved("gru", dims_of("gru", x, w_hh), x, hs, None, gates, hns, lengths, reverse)
    return y, hs[after], None, saved


def gru_backward_reference(saved, dy, dh_n, w_ih, w_hh, grads):
    x, hs, hns, gates = saved.x, saved.hs, saved.hn, saved.gates
    T, B, _, H, _ = saved.dims
    dy, dh, dx = _start_backward(saved, dy, dh_n)
    sums = _float64_sums(grads)
    for t, before, _after in reversed(steps(T, saved.reverse)):
        act = active_rows(t, saved.lengths, B)
        r, z, n = (gates[t][:, k * H:(k + 1) * H] for k in range(3))
        dh_t = dh + dy[t]
        dan = dh_t * (1 - z) * (1 - n ** 2)                 # through n = tanh(...)
        dar = dan * hns[t] * r * (1 - r)
        daz = dh_t * (hs[before] - n) * z * (1 - z)         # h' = n + z·(h - n)
        da_x = np.where(act, np.concatenate([dar, daz, dan], axis=1), 0)
        da_h = np.where(act, np.concatenate([dar, daz, dan * r], axis=1), 0)
        _accumulate(grads, sums, da_x, da_h, x[t], hs[before])
        dx[t] = da_x @ w_ih
        dh = np.where(act, da_h @ w_hh + dh_t * z, dh)
    _add_sums(grads, sums)
    return dx, dh, None

"""Plain NumPy reference of one recurrent layer, one direction: written to be read, not to be fast.

This is the oracle every other backend is tested against, and it is itself tested against
finite differences and ``torch.nn``. It shares no code with the kernels on purpose.

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3).

Every backend module (``reference``, ``cpu``, ``cuda``) offers the same two functions:

    forward_sequence(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
        -> y (T, B, H), h_n (B, H), c_n (B, H) or None, saved
    backward_sequence(cell, saved, dy, dh_n, dc_n, w_ih, w_hh, grads)
        -> dx (T, B, I), dh0 (B, H), dc0 (B, H) or None

    cell      "rnn_tanh" | "rnn_relu" | "lstm" | "gru"
    x         (T, B, I)      input
    h0, c0    (B, H)         initial state (c0 is None except for the LSTM)
    w_ih      (G*H, I)       input weights, gate blocks stacked as in PyTorch
    w_hh      (G*H, H)       recurrent weights
    b_ih,b_hh (G*H,)         biases (zeros when the layer has none)
    lengths   (B,) int or None; row b is active at time t iff t < lengths[b]
    reverse   run t = T-1 .. 0 instead of 0 .. T-1
    saved     whatever backward needs; opaque to the caller
    dy        (T, B, H) or None; dh_n, dc_n (B, H) or None: gradients arriving from the loss
    grads     dict with "w_ih", "w_hh" and, when the layer has biases, "b_ih", "b_hh":
              backward ADDS the weight gradients into these arrays

Lengths follow PyTorch's packed sequences: at an inactive step a row keeps its state and outputs
zero. Running backwards through time, a row therefore starts at its own last valid step, and
``h_n`` is each row's state after its last valid step, in either direction.
"""

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def time_steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def active_rows(t, lengths, B):
    """(B, 1) bool: which rows take a step at time t."""
    if lengths is None:
        return np.ones((B, 1), dtype=bool)
    return (t < lengths)[:, None]


def forward_sequence(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    if cell in ("rnn_tanh", "rnn_relu"):
        return rnn_forward_reference(cell, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    if cell == "lstm":
        return lstm_forward_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    if cell == "gru":
        return gru_forward_reference(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    raise ValueError(f"unknown cell {cell!r}")


def backward_sequence(cell, saved, dy, dh_n, dc_n, w_ih, w_hh, grads):
    if cell in ("rnn_tanh", "rnn_relu"):
        return rnn_backward_reference(cell, saved, dy, dh_n, w_ih, w_hh, grads)
    if cell == "lstm":
        return lstm_backward_reference(saved, dy, dh_n, dc_n, w_ih, w_hh, grads)
    if cell == "gru":
        return gru_backward_reference(saved, dy, dh_n, w_ih, w_hh, grads)
    raise ValueError(f"unknown cell {cell!r}")


def _start_backward(saved, dy, dh_n):
    """Zeros where the loss sent no gradient; dx starts at zero."""
    x, H = saved["x"], saved["hprev"].shape[2]
    T, B, _ = x.shape
    dy = np.zeros((T, B, H), x.dtype) if dy is None else dy
    dh = np.zeros((B, H), x.dtype) if dh_n is None else dh_n.copy()
    return dy, dh, np.zeros_like(x)


def _accumulate(grads, dg_x, dg_h, x_t, h_prev):
    """Weight gradients of one step: dW_ih += dG_xᵀ x_t, dW_hh += dG_hᵀ h_{t-1}, db += Σ_b dG."""
    grads["w_ih"] += dg_x.T @ x_t
    grads["w_hh"] += dg_h.T @ h_prev
    if "b_ih" in grads:
        grads["b_ih"] += dg_x.sum(axis=0)
        grads["b_hh"] += dg_h.sum(axis=0)


# ---------------------------------------------------------------- RNN
def rnn_forward_reference(cell, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    T, B, _ = x.shape
    h = h0
    y = np.zeros((T, B, h0.shape[1]), x.dtype)
    hs, hprev = np.zeros_like(y), np.zeros_like(y)
    for t in time_steps(T, reverse):
        a = x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh      # pre-activation (B, H)
        h_new = np.tanh(a) if cell == "rnn_tanh" else np.maximum(a, 0)
        act = active_rows(t, lengths, B)
        hprev[t], hs[t] = h, h_new
        y[t] = np.where(act, h_new, 0)                     # outputs past a row's length are zero
        h = np.where(act, h_new, h)                         # inactive rows keep their state
    saved = dict(x=x, hprev=hprev, h=hs, lengths=lengths, reverse=reverse)
    return y, h, None, saved


def rnn_backward_reference(cell, saved, dy, dh_n, w_ih, w_hh, grads):
    x, hprev, hs = saved["x"], saved["hprev"], saved["h"]
    T, B, _ = x.shape
    dy, dh, dx = _start_backward(saved, dy, dh_n)
    for t in time_steps(T, not saved["reverse"]):
        act = active_rows(t, saved["lengths"], B)
        dh_t = dh + dy[t]                                   # from the output and from step t+1
        if cell == "rnn_tanh":
            da = dh_t * (1 - hs[t] ** 2)                    # tanh' = 1 - tanh²
        else:
            da = dh_t * (hs[t] > 0)
        da = np.where(act, da, 0)
        _accumulate(grads, da, da, x[t], hprev[t])
        dx[t] = da @ w_ih
        dh = np.where(act, da @ w_hh, dh)                   # inactive: the gradient passes through
    return dx, dh, None


# ---------------------------------------------------------------- LSTM
def lstm_forward_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    T, B, _ = x.shape
    H = h0.shape[1]
    h, c = h0, c0
    y = np.zeros((T, B, H), x.dtype)
    gates = np.zeros((T, B, 4 * H), x.dtype)
    cs, cprev, hprev = np.zeros_like(y), np.zeros_like(y), np.zeros_like(y)
    for t in time_steps(T, reverse):
        a = x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh       # (B, 4H), rows [i, f, g, o]
        i = sigmoid(a[:, 0 * H:1 * H])                      # input gate
        f = sigmoid(a[:, 1 * H:2 * H])                      # forget gate
        g = np.tanh(a[:, 2 * H:3 * H])                      # candidate
        o = sigmoid(a[:, 3 * H:4 * H])                      # output gate
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        act = active_rows(t, lengths, B)
        gates[t] = np.concatenate([i, f, g, o], axis=1)
        hprev[t], cprev[t], cs[t] = h, c, c_new
        y[t] = np.where(act, h_new, 0)
        h = np.where(act, h_new, h)
        c = np.where(act, c_new, c)
    saved = dict(x=x, hprev=hprev, cprev=cprev, c=cs, gates=gates, lengths=lengths, reverse=reverse)
    return y, h, c, saved


def lstm_backward_reference(saved, dy, dh_n, dc_n, w_ih, w_hh, grads):
    x, hprev, cprev, cs, gates = (saved[k] for k in ("x", "hprev", "cprev", "c", "gates"))
    T, B, _ = x.shape
    H = hprev.shape[2]
    dy, dh, dx = _start_backward(saved, dy, dh_n)
    dc = np.zeros((B, H), x.dtype) if dc_n is None else dc_n.copy()
    for t in time_steps(T, not saved["reverse"]):
        act = active_rows(t, saved["lengths"], B)
        i, f, g, o = (gates[t][:, k * H:(k + 1) * H] for k in range(4))
        dh_t = dh + dy[t]
        tc = np.tanh(cs[t])
        dc_t = dc + dh_t * o * (1 - tc ** 2)                # h = o·tanh(c)
        da = np.concatenate([
            dc_t * g * i * (1 - i),                         # σ' = σ(1-σ)
            dc_t * cprev[t] * f * (1 - f),
            dc_t * i * (1 - g ** 2),
            dh_t * tc * o * (1 - o),
        ], axis=1)
        da = np.where(act, da, 0)
        _accumulate(grads, da, da, x[t], hprev[t])
        dx[t] = da @ w_ih
        dh = np.where(act, da @ w_hh, dh)
        dc = np.where(act, dc_t * f, dc)
    return dx, dh, dc


# ---------------------------------------------------------------- GRU
def gru_forward_reference(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    T, B, _ = x.shape
    H = h0.shape[1]
    h = h0
    y = np.zeros((T, B, H), x.dtype)
    gates = np.zeros((T, B, 3 * H), x.dtype)
    hns, hprev = np.zeros_like(y), np.zeros_like(y)
    for t in time_steps(T, reverse):
        ax = x[t] @ w_ih.T + b_ih                           # (B, 3H), rows [r, z, n]
        ah = h @ w_hh.T + b_hh
        r = sigmoid(ax[:, :H] + ah[:, :H])                  # reset gate
        z = sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])        # update gate
        hn = ah[:, 2 * H:]                                  # W_hn h + b_hn, scaled by r
        n = np.tanh(ax[:, 2 * H:] + r * hn)                 # candidate
        h_new = (1 - z) * n + z * h
        act = active_rows(t, lengths, B)
        gates[t] = np.concatenate([r, z, n], axis=1)
        hprev[t], hns[t] = h, hn
        y[t] = np.where(act, h_new, 0)
        h = np.where(act, h_new, h)
    saved = dict(x=x, hprev=hprev, hn=hns, gates=gates, lengths=lengths, reverse=reverse)
    return y, h, None, saved


def gru_backward_reference(saved, dy, dh_n, w_ih, w_hh, grads):
    x, hprev, hns, gates = (saved[k] for k in ("x", "hprev", "hn", "gates"))
    T, B, _ = x.shape
    H = hprev.shape[2]
    dy, dh, dx = _start_backward(saved, dy, dh_n)
    for t in time_steps(T, not saved["reverse"]):
        act = active_rows(t, saved["lengths"], B)
        r, z, n = (gates[t][:, k * H:(k + 1) * H] for k in range(3))
        dh_t = dh + dy[t]
        dan = dh_t * (1 - z) * (1 - n ** 2)                 # through n = tanh(...)
        dar = dan * hns[t] * r * (1 - r)
        daz = dh_t * (hprev[t] - n) * z * (1 - z)           # h' = n + z·(h - n)
        da_x = np.where(act, np.concatenate([dar, daz, dan], axis=1), 0)
        da_h = np.where(act, np.concatenate([dar, daz, dan * r], axis=1), 0)
        _accumulate(grads, da_x, da_h, x[t], hprev[t])
        dx[t] = da_x @ w_ih
        dh = np.where(act, da_h @ w_hh + dh_t * z, dh)
    return dx, dh, None

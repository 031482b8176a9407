"""CPU backend: BLAS for every dense product, Numba @njit kernels for the fused pointwise cell math.

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3).
The contract of ``forward_sequence`` / ``backward_sequence`` is written in kernels/reference.py.

Forward, one layer and direction:
    XW = x (T*B, I) @ W_ihᵀ + b_ih                    one GEMM for all time steps
    for each step t:  HW = h_{t-1} @ W_hhᵀ             (B, G*H), the only sequential product
                      step kernel: gates, h_t (c_t), the activations backward needs
Backward (BPTT):
    for each step t, reversed:  step kernel: dG_t from dh_t (dc_t) and the saved activations
                                dh_{t-1} = dG_t @ W_hh (+ the GRU's direct path)
    dW_ih += dGᵀ (G*H, T*B) @ x (T*B, I)               one GEMM each, after the loop: the
    dW_hh += dGᵀ @ h_prev (T*B, H)                     BPTT sums over time and batch at once
    db    += column sums of dG;  dx = dG @ W_ih
"""

import numpy as np
from numba import njit

from .cells import (gru_backward, gru_forward, lstm_backward, lstm_forward, rnn_relu_backward,
                    rnn_relu_forward, rnn_tanh_backward, rnn_tanh_forward)

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


# ---------------------------------------------------------------- step kernels
# Shapes of one step: xw, hw (B, G*H) pre-activations from the input / recurrent products, without
# b_hh (added here); active (B,) uint8; h, c (B, H) the running state, updated in place for active
# rows; y (B, H) overwritten (zero for inactive rows); saved arrays overwritten for active rows only.

@njit(cache=True)
def rnn_tanh_step_forward(xw, hw, b_hh, active, h, y, h_saved):
    B, H = h.shape
    for b in range(B):
        if not active[b]:
            y[b, :] = 0
            continue
        for j in range(H):
            hj = rnn_tanh_forward(xw[b, j] + hw[b, j] + b_hh[j])
            h[b, j] = hj
            y[b, j] = hj
            h_saved[b, j] = hj


@njit(cache=True)
def rnn_relu_step_forward(xw, hw, b_hh, active, h, y, h_saved):
    B, H = h.shape
    for b in range(B):
        if not active[b]:
            y[b, :] = 0
            continue
        for j in range(H):
            hj = rnn_relu_forward(xw[b, j] + hw[b, j] + b_hh[j])
            h[b, j] = hj
            y[b, j] = hj
            h_saved[b, j] = hj


@njit(cache=True)
def lstm_step_forward(xw, hw, b_hh, active, h, c, y, gates, c_prev_saved, c_saved):
    B, H = h.shape
    for b in range(B):
        if not active[b]:
            y[b, :] = 0
            continue
        for j in range(H):
            i, f, g, o, cj, hj = lstm_forward(
                xw[b, j], xw[b, H + j], xw[b, 2 * H + j], xw[b, 3 * H + j],
                hw[b, j] + b_hh[j], hw[b, H + j] + b_hh[H + j],
                hw[b, 2 * H + j] + b_hh[2 * H + j], hw[b, 3 * H + j] + b_hh[3 * H + j], c[b, j])
            gates[b, j], gates[b, H + j], gates[b, 2 * H + j], gates[b, 3 * H + j] = i, f, g, o
            c_prev_saved[b, j] = c[b, j]
            c_saved[b, j] = cj
            c[b, j] = cj
            h[b, j] = hj
            y[b, j] = hj


@njit(cache=True)
def gru_step_forward(xw, hw, b_hh, active, h, y, gates, hn_saved):
    B, H = h.shape
    for b in range(B):
        if not active[b]:
            y[b, :] = 0
            continue
        for j in range(H):
            hn = hw[b, 2 * H + j] + b_hh[2 * H + j]
            r, z, n, hj = gru_forward(xw[b, j], xw[b, H + j], xw[b, 2 * H + j],
                                      hw[b, j] + b_hh[j], hw[b, H + j] + b_hh[H + j], hn, h[b, j])
            gates[b, j], gates[b, H + j], gates[b, 2 * H + j] = r, z, n
            hn_saved[b, j] = hn
            h[b, j] = hj
            y[b, j] = hj


# Backward step kernels. dy (B, H): gradient from this step's output; dh (B, H): on entry dL/dh_t
# from step t+1, on exit the part of dL/dh_{t-1} that does not pass through W_hh (the caller adds
# dG_h @ W_hh); dc (B, H) likewise for the LSTM cell. dg_x, dg_h (B, G*H): overwritten with the
# pre-activation gradients (zero for inactive rows); for all cells but the GRU they are one array.

@njit(cache=True)
def rnn_tanh_step_backward(dy, dh, active, h_saved, dg):
    B, H = dh.shape
    for b in range(B):
        if not active[b]:
            dg[b, :] = 0
            continue
        for j in range(H):
            dg[b, j] = rnn_tanh_backward(dh[b, j] + dy[b, j], h_saved[b, j])
            dh[b, j] = 0


@njit(cache=True)
def rnn_relu_step_backward(dy, dh, active, h_saved, dg):
    B, H = dh.shape
    for b in range(B):
        if not active[b]:
            dg[b, :] = 0
            continue
        for j in range(H):
            dg[b, j] = rnn_relu_backward(dh[b, j] + dy[b, j], h_saved[b, j])
            dh[b, j] = 0


@njit(cache=True)
def lstm_step_backward(dy, dh, dc, active, gates, c_prev_saved, c_saved, dg):
    B, H = dh.shape
    for b in range(B):
        if not active[b]:
            dg[b, :] = 0
            continue
        for j in range(H):
            dai, daf, dag, dao, dcp = lstm_backward(
                dh[b, j] + dy[b, j], dc[b, j], gates[b, j], gates[b, H + j], gates[b, 2 * H + j],
                gates[b, 3 * H + j], c_saved[b, j], c_prev_saved[b, j])
            dg[b, j], dg[b, H + j], dg[b, 2 * H + j], dg[b, 3 * H + j] = dai, daf, dag, dao
            dc[b, j] = dcp
            dh[b, j] = 0


@njit(cache=True)
def gru_step_backward(dy, dh, active, gates, hn_saved, h_prev, dg_x, dg_h):
    B, H = dh.shape
    for b in range(B):
        if not active[b]:
            dg_x[b, :] = 0
            dg_h[b, :] = 0
            continue
        for j in range(H):
            dar, daz, dan_x, dan_h, dh_direct = gru_backward(
                dh[b, j] + dy[b, j], gates[b, j], gates[b, H + j], gates[b, 2 * H + j],
                hn_saved[b, j], h_prev[b, j])
            dg_x[b, j], dg_x[b, H + j], dg_x[b, 2 * H + j] = dar, daz, dan_x
            dg_h[b, j], dg_h[b, H + j], dg_h[b, 2 * H + j] = dar, daz, dan_h
            dh[b, j] = dh_direct


# ---------------------------------------------------------------- sequences
def time_steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def active_mask(lengths, T, B):
    """(T, B) uint8: 1 where row b takes a step at time t."""
    if lengths is None:
        return np.ones((T, B), np.uint8)
    return (np.arange(T)[:, None] < np.asarray(lengths)[None, :]).astype(np.uint8)


def forward_sequence(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    T, B, I = x.shape
    GH, H = w_hh.shape
    dt = x.dtype
    xw = (x.reshape(T * B, I) @ w_ih.T).reshape(T, B, GH)    # input projection of every step at once
    xw += b_ih
    hw = np.empty((B, GH), dt)
    y = np.empty((T, B, H), dt)
    hprev = np.empty((T, B, H), dt)
    acts = np.empty((T, B, GH), dt)                          # h (RNN) or the activated gates
    active = active_mask(lengths, T, B)
    h = h0.copy()
    c = c0.copy() if cell == "lstm" else None
    c_prev_saved = np.empty((T, B, H), dt) if cell == "lstm" else None
    c_saved = np.empty((T, B, H), dt) if cell == "lstm" else None
    hn_saved = np.empty((T, B, H), dt) if cell == "gru" else None
    for t in time_steps(T, reverse):
        hprev[t] = h
        np.matmul(h, w_hh.T, out=hw)
        if cell == "rnn_tanh":
            rnn_tanh_step_forward(xw[t], hw, b_hh, active[t], h, y[t], acts[t])
        elif cell == "rnn_relu":
            rnn_relu_step_forward(xw[t], hw, b_hh, active[t], h, y[t], acts[t])
        elif cell == "lstm":
            lstm_step_forward(xw[t], hw, b_hh, active[t], h, c, y[t], acts[t], c_prev_saved[t], c_saved[t])
        else:
            gru_step_forward(xw[t], hw, b_hh, active[t], h, y[t], acts[t], hn_saved[t])
    saved = dict(x=x, hprev=hprev, acts=acts, c_prev=c_prev_saved, c=c_saved, hn=hn_saved,
                 active=active, reverse=reverse)
    return y, h, c, saved


def backward_sequence(cell, saved, dy, dh_n, dc_n, w_ih, w_hh, grads):
    x, hprev, acts, active = saved["x"], saved["hprev"], saved["acts"], saved["active"]
    T, B, I = x.shape
    GH, H = w_hh.shape
    dt = x.dtype
    dg_x = np.empty((T, B, GH), dt)
    dg_h = np.empty((T, B, GH), dt) if cell == "gru" else dg_x
    dh = np.zeros((B, H), dt) if dh_n is None else dh_n.copy()
    dc = (np.zeros((B, H), dt) if dc_n is None else dc_n.copy()) if cell == "lstm" else None
    zero_dy = np.zeros((B, H), dt)
    dh_rec = np.empty((B, H), dt)
    for t in time_steps(T, not saved["reverse"]):
        dy_t = zero_dy if dy is None else dy[t]
        if cell == "rnn_tanh":
            rnn_tanh_step_backward(dy_t, dh, active[t], acts[t], dg_x[t])
        elif cell == "rnn_relu":
            rnn_relu_step_backward(dy_t, dh, active[t], acts[t], dg_x[t])
        elif cell == "lstm":
            lstm_step_backward(dy_t, dh, dc, active[t], acts[t], saved["c_prev"][t], saved["c"][t], dg_x[t])
        else:
            gru_step_backward(dy_t, dh, active[t], acts[t], saved["hn"][t], hprev[t], dg_x[t], dg_h[t])
        np.matmul(dg_h[t], w_hh, out=dh_rec)                 # dh_{t-1} through W_hh
        dh += dh_rec
    # BPTT accumulation over all T*B rows at once: deterministic, no per-step products.
    dgx2, dgh2 = dg_x.reshape(T * B, GH), dg_h.reshape(T * B, GH)
    grads["w_ih"] += dgx2.T @ x.reshape(T * B, I)
    grads["w_hh"] += dgh2.T @ hprev.reshape(T * B, H)
    if "b_ih" in grads:
        grads["b_ih"] += dgx2.sum(axis=0)
        grads["b_hh"] += dgh2.sum(axis=0)
    dx = (dgx2 @ w_ih).reshape(T, B, I)
    return dx, dh, dc


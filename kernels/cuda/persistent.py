"""The persistent algorithm: one cooperative launch runs all T steps of a layer and direction,
another the whole BPTT recursion, with dW_hh and db_hh accumulated on-chip across the steps.

Legend: T time steps, B batch rows, H hidden units, G gates (RNN 1, LSTM 4, GRU 3), NT threads a
block, U units a block (``plan.units``), S threads per dot product (``plan.split``), s bytes per
element. The layer around it (input projection, buffers, dW_ih, dx) is in ``__init__.py``, the
choice of this path and of its sizes in ``plan.py``.

How a forward step flows. The grid has ceil(H/U) blocks, one per SM; block n owns the hidden
units j in [nU, nU + U) and keeps the G·U rows g·H + j of W_hh in shared memory for the whole
sequence (or reads them from L2 when they do not fit). The B·U (batch row, unit) pairs of a block
are dealt to its threads, S threads a pair: each of them walks every S-th k of the G dot products
Σ_k h_{t-1}[b, k] W_hh[g·H + j, k] (h_{t-1} from global memory, i.e. L2, where another block
wrote it), a fixed tree in shared memory adds the S partial sums, and the pair's first thread
does the cell's pointwise math and writes h_t (c_t, the saved gates) and y_t. Then
``cuda.cg.this_grid().sync()``: every block's h_t is visible before anyone reads it in step t+1.

How a BPTT step flows. Block n owns units k in [nU, nU + U) and keeps the U rows of W_hhᵀ (the
columns of W_hh) of its units on-chip. After the grid barrier that made dG_{t+1} (all G·H gate
rows, written by every block) visible, each pair (b, k) computes Σ_m dG_{t+1}[b, m] W_hh[m, k]
split the same way, adds the gradient arriving from the output, and runs the cell's backward for
step t: dG_t[b, g·H + k] for its own unit, dc, the direct part of dh. Meanwhile the block adds
dG_{t+1}ᵀ h_t into its own columns k of dW_hh (and Σ_b dG_{t+1} into its own rows g·H + k of
db_hh), held in shared memory until the end, then added to the gradients once.

Why deterministic: every sum has one owner and one order. A dot product's partial sums are
combined by a fixed tree; each dW_hh[m, k] and db_hh[m] belongs to one thread of one block and
gathers time steps in order and batch rows in order; nothing is atomic. Two runs give the same bits
(tested); the per-step path sums in another order, so the two agree to rounding, not to the bit.

Napkin math of a step (float32 LSTM, H = 512, B = 8, an H100: 132 SMs, U = 4, NT = 256, S = 8):
a block holds 16 rows x 512 of W_hh = 33 KiB; each of its 32 pairs takes 8 threads, each doing
64 iterations of 1 load of h, 4 shared-memory loads of W and 4 FMAs, then 3 tree levels: roughly
64 x 8 issue cycles + 3 barriers ≈ 700 cycles ≈ 0.4 µs at 1.8 GHz; the grid barrier adds about
1-2 µs; the step reads B·H·s = 16 KiB of h from L2 per block. Per step ≈ 2 µs against about 10 µs
for cuDNN's per-step GEMM + pointwise kernels at this size, and 40+ µs of host time for a launch
of the per-step path. Backward does the same product over G·H = 2048 rows plus the dW_hh
accumulation: G·H·U·B = 64 K FMAs a block, about 0.5 µs more.
"""

import numba
import numpy as np
from numba import cuda

from . import runtime as rt
from .runtime import GATES, device_function
from ..cells import (gru_backward, gru_forward, lstm_backward, lstm_forward, rnn_relu_backward,
                     rnn_relu_forward, rnn_tanh_backward, rnn_tanh_forward)


# ================================================================ kernels
def build(cell, dtype, geo):
    """The Python functions of the two persistent kernels of one cell and dtype, and their
    signatures: {"persistent_forward": (pyfunc, signature), "persistent_backward": (...)}."""
    G = GATES[cell]
    dt = numba.from_dtype(np.dtype(dtype))
    NT = geo.persist_threads
    GNT = G * NT                             # partial sums of a forward pass: G per thread

    # ------------------------------------------------------------ the cell's pointwise math
    if cell in ("rnn_tanh", "rnn_relu"):
        act = rnn_tanh_forward if cell == "rnn_tanh" else rnn_relu_forward
        act_backward = rnn_tanh_backward if cell == "rnn_tanh" else rnn_relu_backward

        @device_function
        def point_forward(xw, hs, cs, gates, hn, b_hh, y, red, tid, t, b, j, src, dst):
            hj = act(xw[t, b, j] + red[tid] + b_hh[j])
            hs[dst, b, j] = hj
            y[t, b, j] = hj

        @device_function
        def point_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, d, t, b, k, rev):
            dg_x[t, b, k] = act_backward(d + dy[t, b, k], hs[t + 1 - rev, b, k])
            return dt(0)

    elif cell == "lstm":
        @device_function
        def point_forward(xw, hs, cs, gates, hn, b_hh, y, red, tid, t, b, j, src, dst):
            H = y.shape[2]
            i, f, g, o, c, h = lstm_forward(
                xw[t, b, j], xw[t, b, H + j], xw[t, b, 2 * H + j], xw[t, b, 3 * H + j],
                red[tid] + b_hh[j], red[NT + tid] + b_hh[H + j], red[2 * NT + tid] + b_hh[2 * H + j],
                red[3 * NT + tid] + b_hh[3 * H + j], cs[src, b, j])
            gates[t, b, j] = i
            gates[t, b, H + j] = f
            gates[t, b, 2 * H + j] = g
            gates[t, b, 3 * H + j] = o
            cs[dst, b, j] = c
            hs[dst, b, j] = h
            y[t, b, j] = h

        @device_function
        def point_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, d, t, b, k, rev):
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
        def point_forward(xw, hs, cs, gates, hn, b_hh, y, red, tid, t, b, j, src, dst):
            H = y.shape[2]
            hnj = red[2 * NT + tid] + b_hh[2 * H + j]
            r, z, n, h = gru_forward(xw[t, b, j], xw[t, b, H + j], xw[t, b, 2 * H + j],
                                     red[tid] + b_hh[j], red[NT + tid] + b_hh[H + j], hnj, hs[src, b, j])
            gates[t, b, j] = r
            gates[t, b, H + j] = z
            gates[t, b, 2 * H + j] = n
            hn[t, b, j] = hnj
            hs[dst, b, j] = h
            y[t, b, j] = h

        @device_function
        def point_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, d, t, b, k, rev):
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
        raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(GATES)}")

    # ------------------------------------------------------------ the split dot products' sum
    @device_function
    def tree_sum(red, rows, tid, ks, split):
        """red[r*NT + tid] += red[r*NT + tid + h] for h = split/2, split/4, ... 1 and r < rows:
        the first thread of each group of ``split`` ends with the group's sum, in a fixed order."""
        half = split // 2
        while half > 0:
            if ks < half:
                for r in range(rows):
                    red[r * NT + tid] += red[r * NT + tid + half]
            cuda.syncthreads()
            half //= 2

    # ------------------------------------------------------------ forward: all T steps
    def persistent_forward(xw, hs, cs, gates, hn, w_hh, b_hh, lengths, y, rev, units, split, stride,
                           w_on_chip):
        """Every step of h_t = cell(XW[t] + h_{t-1} @ W_hhᵀ + b_hh), one cooperative launch.

        xw (T, B, G*H) input projections, b_ih included; hs (T+1, B, H) [and cs for the LSTM]: the
        initial state at hs[T*rev], every later state written in time order (inactive rows copy
        the state through); w_hh (G*H, H); b_hh (G*H,); lengths (B,) int32; y (T, B, H) written,
        zero for inactive rows; gates (T, B, G*H) [LSTM, GRU] and hn (T, B, H) [GRU] written for
        active rows: what backward needs. Placeholders (1, 1, 1) stand for arrays a cell lacks.
        rev 0/1; units U hidden units a block; split S threads a dot product (a power of two
        dividing NT); stride the padded row of the W slice in dynamic shared memory; w_on_chip 0
        reads W_hh from global memory (L2) instead.
        Grid (ceil(H/U),) blocks of NT threads, cooperative; dynamic shared memory
        G·U·stride·s bytes when w_on_chip.
        FLOPs 2·T·B·G·H² + O(T·B·H); bytes from L2 per step ≈ s·B·H per block (h_{t-1}).
        """
        red = cuda.shared.array(GNT, dt)      # partial sums of the split dot products
        sw = cuda.shared.array(0, dt)            # this block's rows of W_hh, row r = g*nj + jl
        acc = cuda.local.array(G, dt)
        grid = cuda.cg.this_grid()
        T, B, H = y.shape
        tid = cuda.threadIdx.x
        ks, pt, slots = tid % split, tid // split, NT // split
        j0 = cuda.blockIdx.x * units
        nj = min(units, H - j0)
        zero = dt(0)
        if w_on_chip:
            for idx in range(tid, G * nj * H, NT):
                r = idx // H
                k = idx - r * H
                g = r // nj
                sw[r * stride + k] = w_hh[g * H + j0 + r - g * nj, k]
        cuda.syncthreads()
        npairs = B * nj
        for step in range(T):
            t = T - 1 - step if rev else step
            src, dst = t + rev, t + 1 - rev
            for p0 in range(0, npairs, slots):
                p = p0 + pt
                b = p // nj
                jl = p - b * nj
                for g in range(G):
                    acc[g] = zero
                if p < npairs and t < lengths[b]:
                    if w_on_chip:
                        for k in range(ks, H, split):
                            hk = hs[src, b, k]
                            for g in range(G):
                                acc[g] += hk * sw[(g * nj + jl) * stride + k]
                    else:
                        for k in range(ks, H, split):
                            hk = hs[src, b, k]
                            for g in range(G):
                                acc[g] += hk * w_hh[g * H + j0 + jl, k]
                for g in range(G):
                    red[g * NT + tid] = acc[g]
                cuda.syncthreads()
                tree_sum(red, G, tid, ks, split)
                if ks == 0 and p < npairs:
                    j = j0 + jl
                    if t < lengths[b]:
                        point_forward(xw, hs, cs, gates, hn, b_hh, y, red, tid, t, b, j, src, dst)
                    else:
                        hs[dst, b, j] = hs[src, b, j]
                        if G == 4:
                            cs[dst, b, j] = cs[src, b, j]
                        y[t, b, j] = zero
            if step < T - 1:
                grid.sync()

    # ------------------------------------------------------------ backward: the whole recursion
    def persistent_backward(dg_x, dg_h, w_t, dy, dh, dc, gates, cs, hn, hs, lengths, dw_hh, db_hh,
                            rev, units, split, stride, w_on_chip, dw_on_chip, has_bias):
        """BPTT through all T steps, one cooperative launch, in the order of the per-step path:
        pass p adds dG_{t_{p-1}} @ W_hh into dh, then runs the cell backward of step t_p; the last
        pass (t = -1) only adds the product, leaving dL/dh_0 in dh.

        dg_x, dg_h (T, B, G*H) written (the same array but for the GRU; zero for inactive rows);
        w_t (H, G*H) = W_hhᵀ; dy (T, B, H); dh (B, H) in/out and dc (B, H) in/out [LSTM]: dL/dh_T,
        dL/dc_T on entry, dL/dh_0, dL/dc_0 on exit; gates, cs, hn, hs: saved by forward;
        lengths (B,) int32; dw_hh (G*H, H), db_hh (G*H,): ADDED into when dw_on_chip (db_hh also
        needs has_bias), untouched otherwise; placeholders stand for arrays a cell lacks.
        units, split, stride, w_on_chip as forward's (the W slice: U rows of W_hhᵀ of stride
        padded G*H); dw_on_chip 1: the block's U columns of dW_hh and G·U entries of db_hh live in
        dynamic shared memory after the W slice, summed over every step, added out at the end.
        Grid (ceil(H/U),) blocks of NT threads, cooperative.
        FLOPs 2·T·B·G·H² (dh) + 2·T·B·G·H² (dW_hh, when on-chip); bytes from L2 per step ≈
        s·B·G·H per block (dG_{t+1}) and s·B·U (h_t).
        """
        red = cuda.shared.array(NT, dt)
        sm = cuda.shared.array(0, dt)     # [W_hhᵀ rows of the block's units][dW_hhᵀ rows][db_hh]
        grid = cuda.cg.this_grid()
        T, B, H = dy.shape
        GH = w_t.shape[1]
        tid = cuda.threadIdx.x
        ks, pt, slots = tid % split, tid // split, NT // split
        k0 = cuda.blockIdx.x * units
        nk = min(units, H - k0)
        zero = dt(0)
        dw_base = units * stride if w_on_chip else 0
        db_base = dw_base + units * stride
        if w_on_chip:
            for idx in range(tid, nk * GH, NT):
                r = idx // GH
                m = idx - r * GH
                sm[r * stride + m] = w_t[k0 + r, m]
        if dw_on_chip:
            for idx in range(tid, units * stride + G * units, NT):
                sm[dw_base + idx] = zero
        cuda.syncthreads()
        npairs = B * nk
        tp = -1
        for step in range(T + 1):
            t = -1
            if step < T:
                t = step if rev else T - 1 - step
            # dh += dG[tp] @ W_hh, then the cell backward of step t, pair by pair
            for p0 in range(0, npairs, slots):
                p = p0 + pt
                b = p // nk
                kl = p - b * nk
                rec = zero
                if p < npairs and tp >= 0 and tp < lengths[b]:
                    if w_on_chip:
                        for m in range(ks, GH, split):
                            rec += dg_h[tp, b, m] * sm[kl * stride + m]
                    else:
                        for m in range(ks, GH, split):
                            rec += dg_h[tp, b, m] * w_t[k0 + kl, m]
                red[tid] = rec
                cuda.syncthreads()
                tree_sum(red, 1, tid, ks, split)
                if ks == 0 and p < npairs:
                    k = k0 + kl
                    d = dh[b, k] + red[tid]
                    if t >= 0:
                        if t < lengths[b]:
                            d = point_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, d, t, b, k, rev)
                        else:
                            for g in range(G):
                                dg_x[t, b, g * H + k] = zero
                                dg_h[t, b, g * H + k] = zero
                    dh[b, k] = d
            # dW_hh[:, k] += dG[tp]ᵀ h_prev[:, k] and db_hh[g*H + k] += Σ_b dG[tp] for this block's k
            if dw_on_chip and tp >= 0:
                for e in range(tid, nk * GH, NT):
                    kl = e // GH
                    m = e - kl * GH
                    s = zero
                    for b in range(B):
                        s += dg_h[tp, b, m] * hs[tp + rev, b, k0 + kl]
                    sm[dw_base + kl * stride + m] += s
                if has_bias:
                    for e in range(tid, G * nk, NT):
                        g = e // nk
                        m = g * H + k0 + e - g * nk
                        s = zero
                        for b in range(B):
                            s += dg_h[tp, b, m]
                        sm[db_base + e] += s
            if step < T:
                grid.sync()        # dG[t] of every block is written
            tp = t
        if dw_on_chip:
            for e in range(tid, nk * GH, NT):
                kl = e // GH
                m = e - kl * GH
                dw_hh[m, k0 + kl] += sm[dw_base + kl * stride + m]
            if has_bias:
                for e in range(tid, G * nk, NT):
                    g = e // nk
                    db_hh[g * H + k0 + e - g * nk] += sm[db_base + e]

    a3, a2, a1 = dt[:, :, ::1], dt[:, ::1], dt[::1]
    i32, i64 = numba.int32[::1], numba.int64
    fsig = (a3, a3, a3, a3, a3, a2, a1, i32, a3) + (i64,) * 5
    bsig = (a3, a3, a2, a3, a2, a2, a3, a3, a3, a3, i32, a2, a1) + (i64,) * 7
    return {"persistent_forward": (persistent_forward, numba.void(*fsig)),
            "persistent_backward": (persistent_backward, numba.void(*bsig))}


# ================================================================ host side
def _placeholders(dtype):
    """Arrays of the right type for the arguments a cell does not have; never read or written."""
    xp = rt.xp_of()
    return xp.zeros((1, 1, 1), dtype), xp.zeros((1, 1), dtype), xp.zeros(1, dtype)


def forward(cell, kernels, s, xw, y, w_hh, b_hh, stream):
    """The recursion of forward: one launch of ``persistent_forward``."""
    plan, rev = s["plan"], s["reverse"]
    p3, _p2, _p1 = _placeholders(y.dtype)
    pick = lambda a: p3 if a is None else a     # noqa: E731
    arrays = (xw, s["hs"], pick(s["cs"]), pick(s["gates"]), pick(s["hn"]), w_hh, b_hh, s["lengths"], y)
    kern = rt.configure("persistent_forward", kernels["persistent_forward"], plan.blocks, plan.threads,
                        stream, plan.fwd_shared)
    kern(*map(rt.dev, arrays), rev, plan.units, plan.split, plan.fwd_stride, int(plan.fwd_w_on_chip))


def backward(cell, kernels, s, dg_x, dg_h, dy, dh, dc, w_hh, grads, stream):
    """The BPTT recursion: one launch of ``persistent_backward``, which also adds dW_hh and db_hh
    into grads when its plan keeps them on-chip. Returns whether it did."""
    plan, rev = s["plan"], s["reverse"]
    xp = rt.xp_of()
    p3, p2, p1 = _placeholders(dy.dtype)
    pick3 = lambda a: p3 if a is None else a     # noqa: E731
    has_bias = "b_hh" in grads
    w_t = xp.ascontiguousarray(w_hh.T)           # (H, G*H): a block reads rows of it
    arrays = (dg_x, dg_h, w_t, dy, dh, p2 if dc is None else dc, pick3(s["gates"]), pick3(s["cs"]),
              pick3(s["hn"]), s["hs"], s["lengths"], grads["w_hh"], grads["b_hh"] if has_bias else p1)
    kern = rt.configure("persistent_backward", kernels["persistent_backward"], plan.blocks, plan.threads,
                        stream, plan.bwd_shared)
    kern(*map(rt.dev, arrays), rev, plan.units, plan.split, plan.bwd_stride, int(plan.bwd_w_on_chip),
         int(plan.dw_on_chip), int(has_bias))
    return plan.dw_on_chip

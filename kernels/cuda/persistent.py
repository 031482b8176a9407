"""The persistent algorithm: one cooperative launch runs all T steps of a layer and direction,
another the whole BPTT recursion, with dW_hh and db_hh accumulated on-chip across the steps.

Legend: T time steps, B batch rows, H hidden units, G gates (RNN 1, LSTM 4, GRU 3), NT threads a
block, RB batch rows a thread holds (``Geometry.persist_threads``, ``persist_rows``), U units a
block and S threads a unit (``plan.units``, ``plan.split``), s bytes per element. The layer around
it (input projection, buffers, dW_ih, dx) is in ``__init__.py``; the choice of this path and of its
sizes in ``plan.py``.

What each block holds. The grid has ceil(H/U) blocks, one per SM, and block n owns the hidden units
[nU, nU + U). Forward keeps the G·U rows g·H + j of W_hh of its units in shared memory for the whole
sequence (or reads them from L2 when they do not fit); backward keeps the U columns of W_hh of its
units (rows of W_hhᵀ) and, beside them, its U columns of dW_hh and G·U entries of db_hh, summed
over all steps and added to the gradients once at the end. Each unit gets S threads; thread ks of
a unit walks the elements ks, ks + S, ... of the unit's dot products for RB batch rows at a time,
holding G·RB (forward) or RB (backward) accumulators in registers, so a W value it loads serves RB
rows and an h value all G gates. A fixed tree in shared memory adds the S partial sums.

How a forward step flows: every thread reads h_{t-1} (global memory, i.e. L2, where the other
blocks wrote it) and forms Σ_k h_{t-1}[b, k] W_hh[g·H + j, k] for its unit j, its rows and every
gate; the unit's first thread does the cell's pointwise math and writes h_t (c_t, the saved gates)
and y_t; then ``cuda.cg.this_grid().sync()``, so that every block's h_t is visible before anyone
reads it in step t+1.

How a BPTT step flows: after the grid barrier that made dG_{t+1} (all G·H gate rows, written by
every block) visible, the threads of unit k walk m over the G·H gate rows: each dG_{t+1}[b, m]
loaded serves dh[b, k] += dG·W_hh[m, k] and dW_hh[m, k] += dG·h_t[b, k]; the unit's first thread
adds the gradient arriving from the output and runs the cell's backward for step t (dG_t[b, g·H + k]
for its own unit, dc, the direct part of dh); then the grid barrier again.

Why deterministic: every sum has one owner and one order. A dot product's partial sums are
combined by a fixed tree; each dW_hh[m, k] belongs to the thread of unit k that walks m, each
db_hh entry to one thread, and they gather time steps in order and batch rows in order; nothing is
atomic. Two runs give the same bits (tested); the per-step path sums in another order, so the two
agree to rounding, not to the bit.

Napkin math of a step (float32 LSTM on an H100: 132 SMs, NT = 256, RB = 4, about 1.75 GHz). One
block per SM is 8 warps, 2 per scheduler, so an inner-loop iteration of I instructions costs about
2·I issue cycles; a block barrier about 30 cycles; the grid barrier about 1.5 µs whatever the
shape. H = 1024, B = 8: U = 8 units a block, S = 32 threads a unit. Forward: 2 row groups x 32
iterations of 4 loads of h, 4 shared-memory loads of W and 16 FMAs (28 instructions), then one
tree of 5 levels a row group: about 4.3 K cycles, 2.5 µs, 4 µs a step with the grid barrier.
Backward: 2 x 128 iterations over the 4096 gate rows of 1 load of W, 4 of dG and 4 FMAs (dW_hh is
too large for shared memory beside W_hh here and is left to the accumulation kernel): about 7.5 K
cycles, 5.8 µs a step. H = 256, B = 8: U = 2, S = 128; forward 2 x 2 iterations, backward 2 x 8,
with dW_hh on-chip: well under a microsecond of work, so the grid barrier dominates: about 2.1 and
2.4 µs. B = 64, H = 1024: 16 row groups, 512 forward iterations a thread: about 32 K cycles, 20 µs
a step, FMA-issue bound; backward about 34 µs. cuDNN runs a GEMM and a pointwise kernel per step
and direction, a few microseconds each at small batch; the GPU run measures both sides.
"""

import numba
import numpy as np
from numba import cuda

from . import pointwise
from . import runtime as rt
from ..vocabulary import GATES
from .runtime import device_function


# ================================================================ kernels
def build(cell, dtype, geo):
    """The Python functions of the two persistent kernels of one cell and dtype, and their
    signatures: {"persistent_forward": (pyfunc, signature), "persistent_backward": (...)}."""
    G = GATES[cell]
    dt = numba.from_dtype(np.dtype(dtype))
    NT, RB = geo.persist_threads, geo.persist_rows
    GRB = G * RB                             # a thread's accumulators: G gates x RB batch rows

    point_forward, point_backward = pointwise.build(cell, dtype, RB)

    # ------------------------------------------------------------ the split dot products' sum
    def split_sum_of(n):
        """A device function that sums ``part[0:n]`` over the ``split`` threads of a unit, in a
        fixed tree through ``red`` (n·NT elements): on return the unit's first thread (ks == 0)
        holds the sums in ``part``. Every thread of the block must call it (it synchronises the
        block)."""
        @device_function
        def split_sum(red, part, tid, ks, split):
            for i in range(n):
                red[i * NT + tid] = part[i]
            cuda.syncthreads()
            half = split // 2
            while half > 0:
                if ks < half:
                    for i in range(n):
                        red[i * NT + tid] += red[i * NT + tid + half]
                cuda.syncthreads()
                half //= 2
            if ks == 0:
                for i in range(n):
                    part[i] = red[i * NT + tid]
            cuda.syncthreads()      # red is written again by the next call
        return split_sum

    gate_sum, row_sum = split_sum_of(GRB), split_sum_of(RB)
    FWD_RED, BWD_RED = GRB * NT, RB * NT     # static shared memory of the partial sums, in elements

    # ------------------------------------------------------------ forward: all T steps
    def persistent_forward(xw, hs, cs, gates, hn, w_hh, b_hh, lengths, y, rev, units, split, stride,
                           w_on_chip):
        """Every step of h_t = cell(XW[t] + h_{t-1} @ W_hhᵀ + b_hh), one cooperative launch.

        xw (T, B, G*H) input projections, b_ih included; hs (T+1, B, H) [and cs for the LSTM]: the
        initial state at hs[T*rev], every later state written in time order (inactive rows copy
        the state through); w_hh (G*H, H); b_hh (G*H,); lengths (B,) int32; y (T, B, H) written,
        zero for inactive rows; gates (T, B, G*H) [LSTM, GRU] and hn (T, B, H) [GRU] written for
        active rows: what backward needs. Placeholders (1, 1, 1) stand for arrays a cell lacks.
        rev 0/1; units U hidden units a block; split S threads a unit (a power of two dividing
        NT); stride the padded row of the W slice in dynamic shared memory; w_on_chip 0 reads
        W_hh from global memory (L2) instead.
        Grid (ceil(H/U),) blocks of NT threads, cooperative; dynamic shared memory
        G·U·stride·s bytes when w_on_chip. A thread holds G x RB accumulators: every gate of its
        unit for RB batch rows, so each W value it loads serves RB rows and each h value G gates.
        FLOPs 2·T·B·G·H² + O(T·B·H); bytes from L2 per step ≈ s·B·H per block (h_{t-1}).
        """
        red = cuda.shared.array(FWD_RED, dt)     # partial sums of the split dot products
        sw = cuda.shared.array(0, dt)            # this block's rows of W_hh, row g*nj + jl
        acc = cuda.local.array(GRB, dt)
        hk = cuda.local.array(RB, dt)
        grid = cuda.cg.this_grid()
        T, B, H = y.shape
        tid = cuda.threadIdx.x
        ks, slot, slots = tid % split, tid // split, NT // split
        j0 = cuda.blockIdx.x * units
        nj = min(units, H - j0)
        zero = dt(0)
        if w_on_chip:
            for idx in range(tid, G * nj * H, NT):
                row = idx // H
                k = idx - row * H
                g = row // nj
                sw[row * stride + k] = w_hh[g * H + j0 + row - g * nj, k]
        cuda.syncthreads()
        for step in range(T):
            t = T - 1 - step if rev else step
            src, dst = t + rev, t + 1 - rev
            for u0 in range(0, nj, slots):
                u = u0 + slot                    # this thread's unit; past nj it only syncs
                jl = min(u, nj - 1)
                for q0 in range(0, B, RB):
                    for i in range(GRB):
                        acc[i] = zero
                    for k in range(ks, H, split):
                        for r in range(RB):
                            hk[r] = hs[src, min(q0 + r, B - 1), k]
                        for g in range(G):
                            if w_on_chip:
                                w = sw[(g * nj + jl) * stride + k]
                            else:
                                w = w_hh[g * H + j0 + jl, k]
                            for r in range(RB):
                                acc[g * RB + r] += w * hk[r]
                    if split > 1:
                        gate_sum(red, acc, tid, ks, split)
                    if ks == 0 and u < nj:
                        for r in range(RB):
                            if q0 + r < B:
                                point_forward(xw, hs, cs, gates, hn, b_hh, lengths, y, acc, r, t, q0 + r,
                                              j0 + jl, src, dst)
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
        Grid (ceil(H/U),) blocks of NT threads, cooperative. A thread holds RB batch rows of its
        unit k: each dG[t+1, b, m] it loads serves both dh[b, k] (times W_hh[m, k]) and
        dW_hh[m, k] (times h_t[b, k]), which it owns for its m ≡ ks (mod split).
        FLOPs 2·T·B·G·H² (dh) + 2·T·B·G·H² (dW_hh, when on-chip); bytes from L2 per step ≈
        s·B·G·H per block (dG_{t+1}).
        """
        red = cuda.shared.array(BWD_RED, dt)
        sm = cuda.shared.array(0, dt)     # [W_hhᵀ rows of the block's units][dW_hhᵀ rows][db_hh]
        rec = cuda.local.array(RB, dt)
        hp = cuda.local.array(RB, dt)
        grid = cuda.cg.this_grid()
        T, B, H = dy.shape
        GH = w_t.shape[1]
        tid = cuda.threadIdx.x
        ks, slot, slots = tid % split, tid // split, NT // split
        k0 = cuda.blockIdx.x * units
        nk = min(units, H - k0)
        zero = dt(0)
        dw_base = units * stride if w_on_chip else 0
        db_base = dw_base + units * stride
        if w_on_chip:
            for idx in range(tid, nk * GH, NT):
                row = idx // GH
                m = idx - row * GH
                sm[row * stride + m] = w_t[k0 + row, m]
        if dw_on_chip:
            for idx in range(tid, units * stride + G * units, NT):
                sm[dw_base + idx] = zero
        cuda.syncthreads()
        tp = -1
        for step in range(T + 1):
            t = -1
            if step < T:
                t = step if rev else T - 1 - step
            for u0 in range(0, nk, slots):
                u = u0 + slot                    # this thread's unit; past nk it only syncs
                kl = min(u, nk - 1)
                k = k0 + kl
                owner = u < nk and dw_on_chip != 0
                for q0 in range(0, B, RB):
                    for r in range(RB):
                        rec[r] = zero
                        hp[r] = zero      # rows past B add nothing to dW_hh
                    if tp >= 0 and owner:
                        # dh[b, k] += Σ_m dG[tp, b, m] W_hh[m, k];  dW_hh[m, k] += Σ_b dG[tp, b, m] h_tp[b, k]
                        for r in range(RB):
                            if q0 + r < B:
                                hp[r] = hs[tp + rev, q0 + r, k]
                        for m in range(ks, GH, split):
                            if w_on_chip:
                                w = sm[kl * stride + m]
                            else:
                                w = w_t[k, m]
                            dw = zero
                            for r in range(RB):
                                g = dg_h[tp, min(q0 + r, B - 1), m]
                                rec[r] += g * w
                                dw += g * hp[r]
                            sm[dw_base + kl * stride + m] += dw
                    elif tp >= 0:
                        # dh only: dW_hh is not on-chip (or this thread has no unit)
                        for m in range(ks, GH, split):
                            if w_on_chip:
                                w = sm[kl * stride + m]
                            else:
                                w = w_t[k, m]
                            for r in range(RB):
                                rec[r] += dg_h[tp, min(q0 + r, B - 1), m] * w
                    if split > 1:
                        row_sum(red, rec, tid, ks, split)
                    if ks == 0 and u < nk:
                        for r in range(RB):
                            if q0 + r < B:
                                point_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, lengths, rec[r], t,
                                               q0 + r, k, rev)
            # db_hh[g*H + k] += Σ_b dG[tp, b, g*H + k] for this block's units
            if dw_on_chip and has_bias and tp >= 0:
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
        cuda.syncthreads()     # the last step's dW_hh additions, by their owners, are in shared memory
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
def forward(cell, kernels, s, xw, y, w_hh, b_hh, stream):
    """The recursion of forward: one launch of ``persistent_forward``."""
    plan, rev = s.plan, int(s.reverse)
    arrays = pointwise.forward_arrays(s, xw, y, w_hh, b_hh)
    kern = rt.configure("persistent_forward", kernels["persistent_forward"], plan.blocks, plan.threads,
                        stream, plan.fwd_shared)
    kern(*map(rt.dev, arrays), rev, plan.units, plan.split, plan.fwd_stride, int(plan.fwd_w_on_chip))


def backward(cell, kernels, s, dg_x, dg_h, dy, dh, dc, w_hh, grads, stream):
    """The BPTT recursion: one launch of ``persistent_backward``, which also adds dW_hh and db_hh
    into grads when its plan keeps them on-chip. Returns whether it did."""
    plan, rev = s.plan, int(s.reverse)
    has_bias = "b_hh" in grads
    w_t = rt.xp_of().ascontiguousarray(w_hh.T)   # (H, G*H): a block reads rows of it
    arrays = pointwise.backward_arrays(s, dg_x, dg_h, w_t, dy, dh, dc) + (
        grads["w_hh"], grads["b_hh"] if has_bias else rt.placeholder(dy.dtype, 1))
    kern = rt.configure("persistent_backward", kernels["persistent_backward"], plan.blocks, plan.threads,
                        stream, plan.bwd_shared)
    kern(*map(rt.dev, arrays), rev, plan.units, plan.split, plan.bwd_stride, int(plan.bwd_w_on_chip),
         int(plan.dw_on_chip), int(has_bias))
    return plan.dw_on_chip

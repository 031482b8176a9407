"""The per-step algorithm: one launch per time step, forward and backward.

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3),
s = bytes per element (4 float32, 8 float64). The layer around it (input projection, buffers,
weight gradients, dx) is in ``kernels/cuda/__init__.py``; the saved arrays are described there.

Forward, one layer and direction:
    for each step t:  step_forward kernel             h_{t-1} @ W_hhᵀ + b_hh + XW[t], gates, h_t (c_t)
Backward (BPTT), T + 1 launches of one fused kernel:
    launch p:  dh_{t_{p-1}} += dG_{t_{p-1}} @ W_hh     (the product of the step before)
               then the pointwise cell backward of step t_p: dG_{t_p}, the direct part of dh, dc

Napkin math of a step (float32 LSTM, H = 1024, W_hh = 4H x H = 16 MiB): at B = 1 a step does
8 MFLOP and reads all of W_hh, 0.5 FLOP/byte, so it is bound by memory bandwidth (about 5 µs per
step at 3 TB/s, plus the launch); at B = 64 it does 0.5 GFLOP for about 20 MB, 27 FLOP/byte, and
the FMA pipes of the block tiles become the limit. Every step is also a Python launch through
numba-cuda, tens of microseconds of host time: this path is for the shapes whose W_hh the
persistent kernels (``persistent.py``) cannot hold.

Kernels are built per (cell, dtype, geometry) by ``build``, because tile sizes and dtypes of shared
and local arrays must be compile-time constants; ``kernels/report.py`` compiles the very same Python
functions to SASS.
"""

import numba
import numpy as np
from numba import cuda

from . import pointwise
from . import runtime as rt
from .runtime import CELLS, GATES, device_function, launch_config, time_steps



# ================================================================ kernels
def build(cell, dtype, geo):
    """The Python functions of the step kernels for one cell and dtype (not yet compiled), and the
    signatures they are compiled with: {name: (pyfunc, signature)}, names "step_forward" and
    "step_backward"."""
    G = GATES[cell]
    dt = numba.from_dtype(np.dtype(dtype))
    TH, TB = geo.step_h, geo.step_b          # step block: TH hidden units x TB batch rows
    TK = TH                                  # reduction tile of the step products
    TKP = TK + 1                             # padded row of a staged W tile: no bank conflicts
    NT = TH * TB                             # threads per step block

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
    # The pointwise part is pointwise.py's, shared with the persistent kernels; arguments a cell
    # does not have are filled with arrays of the same rank, which it never touches.
    point_forward, point_backward = pointwise.build(cell, dtype, 1)
    if cell in ("rnn_tanh", "rnn_relu"):
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
            point_forward(xw, hs, hs, xw, y, b_hh, lengths, y, acc, 0, t, b, j, src, dst)   # no cs, gates, hn

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
            point_backward(dg, dg, dy, dh, dh, dg, hs, hs, hs, lengths, rec, t, b, k, rev)   # no dc, gates, cs, hn

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
            point_forward(xw, hs, cs, gates, y, b_hh, lengths, y, acc, 0, t, b, j, src, dst)   # no hn

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
            point_backward(dg, dg, dy, dh, dc, gates, cs, cs, cs, lengths, rec, t, b, k, rev)   # no hn, hs

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
            point_forward(xw, hs, hs, gates, hn, b_hh, lengths, y, acc, 0, t, b, j, src, dst)   # no cs

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
            point_backward(dg_x, dg_h, dy, dh, dh, gates, hs, hn, hs, lengths, rec, t, b, k, rev)   # no dc, cs

    else:
        raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELLS)}")

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
    return {"step_forward": (step_forward, numba.void(*fsig)),
            "step_backward": (step_backward, numba.void(*bsig))}




# ================================================================ host side
def forward(cell, kernels, s, xw, y, w_hh, b_hh, stream):
    """The recursion of forward: T launches of ``step_forward``, writing the saved arrays of ``s``
    (hs, cs, gates, hn) and y."""
    geo, rev, hs = s["geometry"], s["reverse"], s["hs"]
    T, B, H = y.shape
    kern = rt.configure("step_forward", kernels["step_forward"],
                        *launch_config(H, B, (geo.step_h, geo.step_b)), stream)
    d_xw, d_hs, d_w, d_b, d_l, d_y = map(rt.dev, (xw, hs, w_hh, b_hh, s["lengths"], y))
    d_cs, d_gates, d_hn = map(rt.dev, (s["cs"], s["gates"], s["hn"]))
    for t in time_steps(T, rev):
        src, dst = t + rev, t + 1 - rev
        if cell in ("rnn_tanh", "rnn_relu"):
            kern(d_xw, d_hs, d_w, d_b, d_l, t, src, dst, d_y)
        elif cell == "lstm":
            kern(d_xw, d_hs, d_cs, d_w, d_b, d_l, t, src, dst, d_y, d_gates)
        else:
            kern(d_xw, d_hs, d_w, d_b, d_l, t, src, dst, d_y, d_gates, d_hn)


def backward(cell, kernels, s, dg_x, dg_h, dy, dh, dc, w_hh, grads, stream):
    """The BPTT recursion: T + 1 launches of ``step_backward``, writing dg_x and dg_h (the same
    array but for the GRU) and leaving dL/dh_0 (dL/dc_0) in dh (dc). Returns False: the weight
    gradients are left to the accumulation kernel."""
    geo, rev, hs = s["geometry"], s["reverse"], s["hs"]
    T, B, H = dy.shape
    kern = rt.configure("step_backward", kernels["step_backward"],
                        *launch_config(H, B, (geo.step_h, geo.step_b)), stream)
    d_dgx, d_dgh, d_w, d_dy, d_dh, d_dc, d_l, d_hs = map(rt.dev, (dg_x, dg_h, w_hh, dy, dh, dc, s["lengths"], hs))
    d_gates, d_cs, d_hn = map(rt.dev, (s["gates"], s["cs"], s["hn"]))
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
    return False

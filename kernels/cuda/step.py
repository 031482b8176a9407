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
from .runtime import GATES, device_function, launch_config, time_steps



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

    # ------------------------------------------------------------ the step kernels
    # The pointwise part is pointwise.py's, shared with the persistent kernels.
    point_forward, point_backward = pointwise.build(cell, dtype, 1)

    def step_forward(xw, hs, cs, gates, hn, w_hh, b_hh, lengths, y, t, src, dst):
        """One step of h_t = cell(XW[t] + h_{t-1} @ W_hhᵀ + b_hh).

        xw (T, B, G*H) input projections, b_ih included; hs (T+1, B, H) [and cs for the LSTM]:
        reads [src], writes [dst] (every row: inactive rows copy the state through); gates
        (T, B, G*H) [LSTM, GRU] and hn (T, B, H) [GRU]: writes step t's activations that backward
        needs (active rows only); placeholders (1, 1, 1) stand for arrays a cell lacks;
        w_hh (G*H, H); b_hh (G*H,); lengths (B,) int32; y (T, B, H): writes y[t].
        Grid (ceil(H/TH), ceil(B/TB)), block (TH, TB); each thread owns every gate of its (b, j),
        so pre-activations never leave registers.
        FLOPs 2·B·G·H² + O(B·H); bytes ≈ s·(G·H² + O(B·H)) (W_hh is re-read by every block row
        of the grid, from L2 after the first).
        """
        sh_h = cuda.shared.array((TB, TK), dt)
        sh_w = cuda.shared.array((G, TH, TKP), dt)
        acc = cuda.local.array(G, dt)
        gate_products(hs, src, w_hh, sh_h, sh_w, acc)
        B, H = hs.shape[1], hs.shape[2]
        j = cuda.blockIdx.x * TH + cuda.threadIdx.x
        b = cuda.blockIdx.y * TB + cuda.threadIdx.y
        if b >= B or j >= H:
            return
        point_forward(xw, hs, cs, gates, hn, b_hh, lengths, y, acc, 0, t, b, j, src, dst)

    def step_backward(dg_x, dg_h, w_hh, dy, dh, dc, gates, cs, hn, hs, lengths, t_prod, t, rev):
        """Fused BPTT step: dh += dG_h[t_prod] @ W_hh (skipped when t_prod < 0), then the
        pointwise backward of step t (skipped when t < 0).

        dg_x, dg_h (T, B, G*H): the pre-activation gradients on the input and recurrent sides (the
        same array but for the GRU, whose n rows differ: dG_h = dG_x·r); reads dg_h[t_prod],
        writes both at t (zero for inactive rows); w_hh (G*H, H); dy (T, B, H); dh (B, H) in/out:
        dL/dh_t on entry, on exit the part of dL/dh_{t-1} that does not go through W_hh;
        dc (B, H) in/out [LSTM]: dL/dc_t, then dL/dc_{t-1} (both unchanged for inactive rows);
        gates, cs, hn, hs saved by forward; placeholders stand for arrays a cell lacks.
        Grid (ceil(H/TH), ceil(B/TB)), block (TH, TB).
        FLOPs 2·B·G·H² + O(B·H); bytes ≈ s·(G·H² + O(B·H)).
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
        point_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, lengths, rec, t, b, k, rev)

    a3, a2, a1 = dt[:, :, ::1], dt[:, ::1], dt[::1]
    i32, i64 = numba.int32[::1], numba.int64
    fsig = (a3, a3, a3, a3, a3, a2, a1, i32, a3, i64, i64, i64)
    bsig = (a3, a3, a2, a3, a2, a2, a3, a3, a3, a3, i32, i64, i64, i64)
    return {"step_forward": (step_forward, numba.void(*fsig)),
            "step_backward": (step_backward, numba.void(*bsig))}


# ================================================================ host side
def forward(cell, kernels, s, xw, y, w_hh, b_hh, stream):
    """The recursion of forward: T launches of ``step_forward``, writing the saved arrays of ``s``
    (hs, cs, gates, hn) and y."""
    geo, rev = s["geometry"], s["reverse"]
    T, B, H = y.shape
    arrays = pointwise.forward_arrays(s, xw, y, w_hh, b_hh)
    args = tuple(map(rt.dev, arrays))
    kern = rt.configure("step_forward", kernels["step_forward"],
                        *launch_config(H, B, (geo.step_h, geo.step_b)), stream)
    for t in time_steps(T, rev):
        kern(*args, t, t + rev, t + 1 - rev)


def backward(cell, kernels, s, dg_x, dg_h, dy, dh, dc, w_hh, grads, stream):
    """The BPTT recursion: T + 1 launches of ``step_backward``, writing dg_x and dg_h (the same
    array but for the GRU) and leaving dL/dh_0 (dL/dc_0) in dh (dc). Returns False: the weight
    gradients are left to the accumulation kernel."""
    geo, rev = s["geometry"], s["reverse"]
    T, B, H = dy.shape
    arrays = pointwise.backward_arrays(s, dg_x, dg_h, w_hh, dy, dh, dc)
    args = tuple(map(rt.dev, arrays))
    kern = rt.configure("step_backward", kernels["step_backward"],
                        *launch_config(H, B, (geo.step_h, geo.step_b)), stream)
    # Launch p does the product of step p-1 and the pointwise part of step p: T + 1 launches.
    t_prod = -1
    for t in list(time_steps(T, not rev)) + [-1]:
        kern(*args, t_prod, t, rev)
        t_prod = t
    return False

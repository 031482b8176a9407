"""The BPTT weight gradients: one deterministic reduction over all N = T*B rows of a layer.

    dW_ih += dG_xᵀ x,   dW_hh += dG_hᵀ h_prev,   db_ih += Σ_n dG_x[n],   db_hh += Σ_n dG_h[n]

Legend: N = T*B rows of the flattened sequence, G*H gate rows, I input features, H hidden units,
s = bytes per element. One launch after the recursion. The per-step path asks it for both
matrices; the persistent path, which accumulates dW_hh and db_hh on-chip during its recursion
where they fit, only for dW_ih and db_ih.

Each thread block owns a tile of dW and accumulates it in registers, walking the N rows in a fixed
order: deterministic, no atomics. It is a GEMM-like launch of 2·N·G·H·(I + H) FLOPs, compute bound
for any N worth timing.
"""

import numba
import numpy as np
from numba import cuda

from . import runtime as rt
from .runtime import ceil_div


def build(dtype, geo):
    """{"accumulate": (pyfunc, signature)} for one dtype: the kernel does not depend on the cell."""
    dt = numba.from_dtype(np.dtype(dtype))
    AT, R, AK = geo.acc_threads, geo.acc_regs, geo.acc_k
    TM = AT * R                              # accumulation tile: TM rows of dW x TM columns
    ANT = AT * AT

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


    a2, a1 = dt[:, ::1], dt[::1]
    asig = (a2, a2, a2, a2, a2, a2, a1, a1, numba.int64)
    return {"accumulate": (accumulate, numba.void(*asig))}


def accumulate_grads(kernels, dg_x, x, dg_h, hp, grads, geo, stream, hidden=True):
    """One launch of the accumulation kernel: adds the BPTT weight (and bias) gradients into grads
    (dict with w_ih, w_hh and, when the layer has biases, b_ih, b_hh). ``hidden=False`` launches
    only the blocks of dW_ih (and db_ih): dW_hh and db_hh are left alone.

    dg_x, dg_h (N, G*H); x (N, I); hp (N, H) the state before each row's step."""
    N, GH = dg_x.shape
    I, H = x.shape[1], hp.shape[1]
    tm = geo.acc_threads * geo.acc_regs
    has_bias = "b_ih" in grads
    placeholder = None if has_bias else rt.placeholder(x.dtype, 1)    # never written: has_bias is 0
    db_ih = grads["b_ih"] if has_bias else placeholder
    db_hh = grads["b_hh"] if has_bias else placeholder
    blocks = (ceil_div(I, tm) + (ceil_div(H, tm) if hidden else 0), ceil_div(GH, tm))
    threads = (geo.acc_threads, geo.acc_threads)
    rt.configure("accumulate", kernels["accumulate"], blocks, threads, stream)(
        *map(rt.dev, (dg_x, x, dg_h, hp, grads["w_ih"], grads["w_hh"], db_ih, db_hh)), int(has_bias))

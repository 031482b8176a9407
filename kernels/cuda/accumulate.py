"""The BPTT weight gradients: one deterministic reduction over all N = T*B rows of a layer.

    dW_ih += dG_xᵀ x,   dW_hh += dG_hᵀ h_prev,   db_ih += Σ_n dG_x[n],   db_hh += Σ_n dG_h[n]

Legend: N = T*B rows of the flattened sequence, G*H gate rows, I input features, H hidden units,
s = bytes per element. One launch after the recursion, for both matrices on either path
(``hidden=False``, only dW_ih and db_ih, serves a recursion that has added dW_hh itself; none
does now).

Each thread block owns a tile of dW and accumulates it in registers, walking the N rows in a fixed
order: deterministic, no atomics. It is a GEMM-like launch of 2·N·G·H·(I + H) FLOPs, compute bound
for any N worth timing.
"""

import numba
import numpy as np
from numba import cuda

from . import runtime as rt
from . import tiles
from .runtime import ceil_div, device_function


def build(dtype, geo):
    """{"accumulate": (pyfunc, signature)} for one dtype: the kernel does not depend on the cell."""
    dt = numba.from_dtype(np.dtype(dtype))
    AT, R, AK, V = geo.acc_threads, geo.acc_regs, geo.acc_k, geo.vec
    TM = AT * R                              # accumulation tile: TM rows of dW x TM columns
    ANT = AT * AT
    U = numba.uint64
    RUNS = R // V                            # runs of V consecutive rows (columns) a thread owns
    stage_rows, _ = tiles.build(dt, AT, AT, ANT)

    @device_function
    def tile_products(sh_a, sh_s, p, acc, a, s, bsum, do_bias):
        """acc[i, jj] += Σ_kk sh_a[p, kk, row i] sh_s[p, kk, column jj] over the AK staged rows, and
        (do_bias) bsum[i] += Σ_kk sh_a[p, kk, row i]."""
        # Unsigned column offsets: Numba adds no negative-index wraparound to them, so every load of
        # a run is the same base plus a constant, which the assembler merges into one vector load.
        ya = U(cuda.threadIdx.y) * U(V)
        xs = U(cuda.threadIdx.x) * U(V)
        for kk in range(AK):
            for q in range(RUNS):
                for v in range(V):
                    a[q * V + v] = sh_a[p, kk, ya + U(q * AT * V + v)]
            for q in range(RUNS):
                for v in range(V):
                    s[q * V + v] = sh_s[p, kk, xs + U(q * AT * V + v)]
            for i in range(R):
                for jj in range(R):
                    acc[i, jj] += a[i] * s[jj]
            if do_bias:
                for i in range(R):
                    bsum[i] += a[i]

    def accumulate(dg_x, x, dg_h, hp, dw_ih, dw_hh, db_ih, db_hh, has_bias):
        """dW_ih += dG_xᵀ x, dW_hh += dG_hᵀ h_prev, and (has_bias) db_ih += Σ_n dG_x[n],
        db_hh += Σ_n dG_h[n]: the sums over all N = T*B rows, i.e. over time and batch, in one launch.

        dg_x, dg_h (N, G*H); x (N, I); hp (N, H) the state before each row's step; dw_ih (G*H, I),
        dw_hh (G*H, H), db_ih, db_hh (G*H,) are ADDED into (placeholders when has_bias is 0).
        Grid (ceil(I/TM) + ceil(H/TM), ceil(G*H/TM)), block (AT, AT): blocks with
        blockIdx.x < ceil(I/TM) own a TM x TM tile of dW_ih, the others of dW_hh. Thread (tx, ty)
        holds R x R outputs in registers: rows and columns in R/V runs of V consecutive ones, run q
        at offset q·AT·V + (ty or tx)·V, so that each run is one vector load from the staged tile
        and the V-runs of a warp are contiguous (no bank conflicts). The block walks all N rows in
        tiles of AK, double-buffered, in a fixed order, so the result is deterministic without
        atomics. The blocks of the first column tile of each matrix also sum the rows of dG for
        the bias.
        FLOPs 2·N·G·H·(I + H); bytes ≈ s·N·(G·H·(nI + nH) + (I + H)·ceil(G·H/TM)) with nI, nH
        the column tiles: dG is re-read once per column tile (mostly from L2).
        """
        sh_a = cuda.shared.array((2, AK, TM), dt, alignment=16)
        sh_s = cuda.shared.array((2, AK, TM), dt, alignment=16)
        acc = cuda.local.array((R, R), dt)
        a = cuda.local.array(R, dt)
        s = cuda.local.array(R, dt)
        bsum = cuda.local.array(R, dt)
        N, GH = dg_x.shape
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
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
        n_tiles = (N + AK - 1) // AK
        for tile in range(-1, n_tiles):
            nxt = tile + 1
            if nxt < n_tiles:                    # stage tile nxt while tile is computed
                n0 = nxt * AK
                stage_rows(sh_a, nxt & 1, 0, AK, TM, grad, n0, N - n0, m0, GH - m0)
                stage_rows(sh_s, nxt & 1, 0, AK, TM, src, n0, N - n0, c0, C - c0)
            if tile >= 0:
                tile_products(sh_a, sh_s, tile & 1, acc, a, s, bsum, do_bias)
            cuda.syncthreads()
        for i in range(R):
            m = m0 + (i // V) * (AT * V) + ty * V + i % V
            if m < GH:
                for jj in range(R):
                    c = c0 + (jj // V) * (AT * V) + tx * V + jj % V
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

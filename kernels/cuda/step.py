"""The per-step algorithm: one launch per time step, forward and backward.

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3),
s = bytes per element (4 float32, 8 float64). The layer around it (input projection, buffers,
weight gradients, dx) is in ``kernels/cuda/__init__.py``; the saved arrays are described there.

Forward, one layer and direction:
    for each step t:  step_forward kernel             h_{t-1} @ W_hhᵀ + b_hh + XW[t], gates, h_t (c_t)
Backward (BPTT), T + 1 launches of one fused kernel:
    launch p:  dh_{t_{p-1}} += dG_{t_{p-1}} @ W_hh     (the product of the step before)
               then the pointwise cell backward of step t_p: dG_{t_p}, the direct part of dh, dc

Register tiling. A block of TX x TY x TZ threads owns BX = TX·RX hidden units x BY = TY·RY batch rows;
each thread owns RX consecutive units x RY consecutive rows, and in forward every gate of them
(G·RX·RY accumulators). The reduction walks k in tiles of TK, staged in shared memory (tiles.py,
double-buffered, one barrier a tile), the TZ slices of threads along z taking every TZ-th column of
a tile and slice 0 adding the others' partial sums at the end (more threads for the same tiles: a
grid of few blocks still fills the GPU). Per k a thread loads its RY values of h (one LDS.128) and
its RX values of each gate's W row (one LDS.64 each) and does G·RX·RY multiply-adds. With the GPU
geometry (TX, TY, TZ, RX, RY, TK) = (16, 4, 4, 2, 4, 16): forward LSTM 32 FFMA per 5 loads, GRU 24 per 4,
RNN 8 per 2; backward 8 per 2 (dG's RY values, W's RX values); the kernel report counts them in
the SASS. Before the tiling a thread owned one (b, j): G + 1 loads for G FFMA in forward, 2 per
FFMA in backward, which capped the FMA pipes at 20% and 12.5% of their peak (one shared-memory
load instruction a cycle per SM against four FFMA).

Napkin math of a step (float32 LSTM, H = 1024, W_hh = 4H x H = 16 MiB): at B = 1 a step does
8 MFLOP and reads all of W_hh, 0.5 FLOP/byte, so it is bound by memory bandwidth (about 5 µs per
step at 3 TB/s); at B = 64 it does 0.5 GFLOP for about 20 MB, 27 FLOP/byte, and issue becomes
the limit: 32 x 4 blocks of 8 warps fill an H100's schedulers, and about 30% of a tile's
instructions are FFMA in forward (the rest: loads, staging the next tile, index arithmetic), about
30 µs a step at 60 TFLOP/s of FP32 peak. Each step is also a launch through numba-cuda,
tens of microseconds of host time, unless the plan replays the T launches as a CUDA graph
(graphs.py). With graphs (the default), ``plan.choose`` takes this path from STEP_FROM_BATCH
batch rows on, and below that wherever the persistent kernels (``persistent.py``) cannot run;
without graphs, only where they cannot (plan.py says why, as measured).

Kernels are built per (cell, dtype, geometry) by ``build``, because tile sizes and dtypes of shared
and local arrays must be compile-time constants; ``kernels/report.py`` compiles the very same Python
functions to SASS.
"""

import numba
import numpy as np
from numba import cuda

from . import pointwise, tiles
from . import runtime as rt
from ..contract import steps
from ..vocabulary import GATES
from .runtime import ceil_div, device_function



# ================================================================ kernels
def build(cell, dtype, geo):
    """The Python functions of the step kernels for one cell and dtype (not yet compiled), and the
    signatures they are compiled with: {name: (pyfunc, signature)}, names "step_forward" and
    "step_backward"."""
    G = GATES[cell]
    dt = numba.from_dtype(np.dtype(dtype))
    TX, RX = geo.step_h, geo.step_units(dtype)   # threads along the hidden units, units a thread
    TY, RY = geo.step_b, geo.step_rb         # threads along the batch, rows a thread
    TZ = geo.step_kz                         # threads splitting the reduction (threadIdx.z)
    TK = geo.step_k                          # reduction tile of the step products
    BX, BY = TX * RX, TY * RY                # a block's tile: BX hidden units x BY batch rows
    R = RX * RY                              # outputs (b, j) a thread owns
    GR, GRX = G * R, G * RX                  # (sizes of local arrays must be single constants)
    NXY = TX * TY                            # threads a slice of the reduction
    NT = NXY * TZ                            # threads a block
    SY = tiles.padded(BY)                    # row of a transposed tile of BY batch rows
    SW = tiles.padded(G * BX)                # row of the forward's transposed W tile, all gates
    ZP = max(TZ - 1, 1)                      # partial sums handed over to the slice z = 0
    CT = -(-TK // TZ)                        # columns of a tile a slice walks (the last maybe not)
    stage_rows, stage_cols = tiles.build(dt, TX, TY, NT)
    # Offsets into a tile row are unsigned: Numba adds no negative-index wraparound to them, so the
    # loads of a thread's run are one base plus constants, which the assembler merges into a vector
    # load (LDS.64, LDS.128).
    U = numba.uint64

    @device_function
    def gather(acc, base, sh_red):
        """acc[base + r] (r < R) of the threads of slice z = 0 += those of slices 1..TZ-1, in z order:
        the split reduction's sums, deterministic. Every thread of the block calls it."""
        z = cuda.threadIdx.z
        lin = cuda.threadIdx.y * TX + cuda.threadIdx.x
        if z > 0:
            for r in range(R):
                sh_red[z - 1, r, lin] = acc[base + r]
        cuda.syncthreads()
        if z == 0:
            for zz in range(1, TZ):
                for r in range(R):
                    acc[base + r] += sh_red[zz - 1, r, lin]
        cuda.syncthreads()

    # ------------------------------------------------------------ forward step: recurrent product
    @device_function
    def gate_products(h, w_hh, sh_h, sh_w, sh_red, acc):
        """acc[g * R + yr * RX + xr] = Σ_k h[b, k] W_hh[g*H + j, k] for this thread's outputs
        b = b0 + ty*RY + yr, j = j0 + tx*RX + xr, every gate g: complete in the threads of slice
        z = 0, which walk the columns c ≡ 0 (mod TZ) of each tile; slice z walks c ≡ z and hands its
        partial sums over through shared memory at the end (``gather``).

        h (B, H) is h_{t-1}. Tiles of TK columns k, double-buffered: sh_h[p, c, r] = h[b0 + r, k0 + c]
        and sh_w[p, c, g*BX + r] = W_hh[g*H + j0 + r, k0 + c]. Per column c a thread loads its RY
        h values and RX W values of each gate, each run in one vector load, and does G·RY·RX
        multiply-adds with them.
        """
        B, H = h.shape
        rx, ry = U(cuda.threadIdx.x) * U(RX), U(cuda.threadIdx.y) * U(RY)   # the thread's runs
        j0, b0 = cuda.blockIdx.x * BX, cuda.blockIdx.y * BY
        hv = cuda.local.array(RY, dt)
        wv = cuda.local.array(GRX, dt)
        for i in range(G * R):
            acc[i] = dt(0)
        n_tiles = (H + TK - 1) // TK
        for tile in range(-1, n_tiles):
            nxt = tile + 1
            if nxt < n_tiles:                    # stage tile nxt while tile is computed
                k0 = nxt * TK
                stage_cols(sh_h, nxt & 1, 0, BY, TK, h, b0, B - b0, k0, H - k0)
                for g in range(G):
                    stage_cols(sh_w, nxt & 1, g * BX, BX, TK, w_hh, g * H + j0, H - j0, k0, H - k0)
            if tile >= 0:
                p = tile & 1
                for cc in range(CT):             # a constant trip count: unrolled, offsets immediate
                    c = cc * TZ + cuda.threadIdx.z
                    if TK % TZ == 0 or c < TK:   # (a test only where TZ does not divide TK)
                        for yr in range(RY):
                            hv[yr] = sh_h[p, c, ry + U(yr)]
                        for g in range(G):
                            for xr in range(RX):
                                wv[g * RX + xr] = sh_w[p, c, rx + U(g * BX + xr)]
                        for g in range(G):
                            for yr in range(RY):
                                for xr in range(RX):
                                    acc[g * R + yr * RX + xr] += hv[yr] * wv[g * RX + xr]
            cuda.syncthreads()
        if TZ > 1:
            for g in range(G):
                gather(acc, g * R, sh_red)

    # ------------------------------------------------------------ backward step: dh through W_hh
    @device_function
    def dh_products(dg, w_hh, sh_g, sh_w, sh_red, rec):
        """rec[yr * RX + xr] = Σ_m dG[b, m] W_hh[m, k] for this thread's outputs b = b0 + ty*RY + yr,
        k = k0 + tx*RX + xr, m over all G*H gate rows; complete in slice z = 0, as in gate_products.

        dg (B, G*H) is dG_{t+1}. Tiles of TK gate rows m, double-buffered:
        sh_g[p, c, r] = dG[b0 + r, m0 + c] (transposed) and sh_w[p, c, r] = W_hh[m0 + c, k0 + r].
        """
        B, GH = dg.shape
        H = w_hh.shape[1]
        rx, ry = U(cuda.threadIdx.x) * U(RX), U(cuda.threadIdx.y) * U(RY)
        k0, b0 = cuda.blockIdx.x * BX, cuda.blockIdx.y * BY
        gv = cuda.local.array(RY, dt)
        wv = cuda.local.array(RX, dt)
        for i in range(R):
            rec[i] = dt(0)
        n_tiles = (GH + TK - 1) // TK
        for tile in range(-1, n_tiles):
            nxt = tile + 1
            if nxt < n_tiles:
                m0 = nxt * TK
                stage_cols(sh_g, nxt & 1, 0, BY, TK, dg, b0, B - b0, m0, GH - m0)
                stage_rows(sh_w, nxt & 1, 0, TK, BX, w_hh, m0, GH - m0, k0, H - k0)
            if tile >= 0:
                p = tile & 1
                for cc in range(CT):
                    c = cc * TZ + cuda.threadIdx.z
                    if TK % TZ == 0 or c < TK:
                        for yr in range(RY):
                            gv[yr] = sh_g[p, c, ry + U(yr)]
                        for xr in range(RX):
                            wv[xr] = sh_w[p, c, rx + U(xr)]
                        for yr in range(RY):
                            for xr in range(RX):
                                rec[yr * RX + xr] += gv[yr] * wv[xr]
            cuda.syncthreads()
        if TZ > 1:
            gather(rec, 0, sh_red)

    # ------------------------------------------------------------ the step kernels
    # The pointwise part is pointwise.py's, shared with the persistent kernels; acc[g * R + r]
    # holds gate g of the thread's output r.
    point_forward, point_backward = pointwise.build(cell, dtype, R)

    def step_forward(xw, hs, cs, gates, hn, w_hh, b_hh, lengths, y, t, src, dst):
        """One step of h_t = cell(XW[t] + h_{t-1} @ W_hhᵀ + b_hh).

        xw (T, B, G*H) input projections, b_ih included; hs (T+1, B, H) [and cs for the LSTM]:
        reads [src], writes [dst] (every row: inactive rows copy the state through); gates
        (T, B, G*H) [LSTM, GRU] and hn (T, B, H) [GRU]: writes step t's activations that backward
        needs (active rows only); placeholders (1, 1, 1) stand for arrays a cell lacks;
        w_hh (G*H, H); b_hh (G*H,); lengths (B,) int32; y (T, B, H): writes y[t].
        Grid (ceil(H/BX), ceil(B/BY)), block (TX, TY, TZ); each thread owns RY batch rows x RX hidden
        units and every gate of them, so pre-activations never leave registers; the TZ slices split
        the reduction over k, slice 0 finishes the step.
        FLOPs 2·B·G·H² + O(B·H); bytes ≈ s·(G·H² + O(B·H)) (W_hh is re-read by every block row
        of the grid, from L2 after the first).
        """
        sh_h = cuda.shared.array((2, TK, SY), dt, alignment=16)
        sh_w = cuda.shared.array((2, TK, SW), dt, alignment=16)
        sh_red = cuda.shared.array((ZP, R, NXY), dt)
        acc = cuda.local.array(GR, dt)
        gate_products(hs[src], w_hh, sh_h, sh_w, sh_red, acc)
        if cuda.threadIdx.z != 0:
            return
        B, H = hs.shape[1], hs.shape[2]
        for r in range(R):
            b = cuda.blockIdx.y * BY + cuda.threadIdx.y * RY + r // RX
            j = cuda.blockIdx.x * BX + cuda.threadIdx.x * RX + r % RX
            if b < B and j < H:
                point_forward(xw, hs, cs, gates, hn, b_hh, lengths, y, acc, r, t, b, j, src, dst)

    def step_backward(dg_x, dg_h, w_hh, dy, dh, dc, gates, cs, hn, hs, lengths, t_prod, t, rev):
        """Fused BPTT step: dh += dG_h[t_prod] @ W_hh (skipped when t_prod < 0), then the
        pointwise backward of step t (skipped when t < 0).

        dg_x, dg_h (T, B, G*H): the pre-activation gradients on the input and recurrent sides (the
        same array but for the GRU, whose n rows differ: dG_h = dG_x·r); reads dg_h[t_prod],
        writes both at t (zero for inactive rows); w_hh (G*H, H); dy (T, B, H); dh (B, H) in/out:
        dL/dh_t on entry, on exit the part of dL/dh_{t-1} that does not go through W_hh;
        dc (B, H) in/out [LSTM]: dL/dc_t, then dL/dc_{t-1} (both unchanged for inactive rows);
        gates, cs, hn, hs saved by forward; placeholders stand for arrays a cell lacks.
        Grid (ceil(H/BX), ceil(B/BY)), block (TX, TY, TZ); each thread owns RY batch rows x RX units k
        of its slice of the reduction over m; slice 0 finishes the step.
        FLOPs 2·B·G·H² + O(B·H); bytes ≈ s·(G·H² + O(B·H)).
        """
        sh_g = cuda.shared.array((2, TK, SY), dt, alignment=16)
        sh_w = cuda.shared.array((2, TK, BX), dt, alignment=16)
        sh_red = cuda.shared.array((ZP, R, NXY), dt)
        rec = cuda.local.array(R, dt)
        if t_prod >= 0:
            dh_products(dg_h[t_prod], w_hh, sh_g, sh_w, sh_red, rec)
        else:
            for i in range(R):
                rec[i] = dt(0)
        if cuda.threadIdx.z != 0:
            return
        B, H = dh.shape
        for r in range(R):
            b = cuda.blockIdx.y * BY + cuda.threadIdx.y * RY + r // RX
            k = cuda.blockIdx.x * BX + cuda.threadIdx.x * RX + r % RX
            if b < B and k < H:
                point_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, lengths, rec[r], t, b, k, rev)

    a3, a2, a1 = dt[:, :, ::1], dt[:, ::1], dt[::1]
    i32, i64 = numba.int32[::1], numba.int64
    fsig = (a3, a3, a3, a3, a3, a2, a1, i32, a3, i64, i64, i64)
    bsig = (a3, a3, a2, a3, a2, a2, a3, a3, a3, a3, i32, i64, i64, i64)
    return {"step_forward": (step_forward, numba.void(*fsig)),
            "step_backward": (step_backward, numba.void(*bsig))}


# ================================================================ host side
def step_launch(H, B, geo, dtype):
    """(blocks, threads) of both step kernels: one block per BX hidden units x BY batch rows."""
    return ((ceil_div(H, geo.step_h * geo.step_units(dtype)), ceil_div(B, geo.step_b * geo.step_rb)),
            (geo.step_h, geo.step_b, geo.step_kz))


def forward(cell, kernels, s, xw, y, w_hh, b_hh, stream):
    """The recursion of forward: T launches of ``step_forward``, writing the saved arrays of ``s``
    (hs, cs, gates, hn) and y."""
    geo, rev = s.geometry, int(s.reverse)
    T, B, H = y.shape
    arrays = pointwise.forward_arrays(s, xw, y, w_hh, b_hh)
    args = tuple(map(rt.dev, arrays))
    kern = rt.configure("step_forward", kernels["step_forward"],
                        *step_launch(H, B, geo, y.dtype), stream)
    for t, before, after in steps(T, rev):
        kern(*args, t, before, after)


def backward(cell, kernels, s, dg_x, dg_h, dy, dh, dc, w_hh, grads, stream):
    """The BPTT recursion: T + 1 launches of ``step_backward``, writing dg_x and dg_h (the same
    array but for the GRU) and leaving dL/dh_0 (dL/dc_0) in dh (dc). Returns False: the weight
    gradients are left to the accumulation kernel."""
    geo, rev = s.geometry, int(s.reverse)
    T, B, H = dy.shape
    arrays = pointwise.backward_arrays(s, dg_x, dg_h, w_hh, dy, dh, dc)
    args = tuple(map(rt.dev, arrays))
    kern = rt.configure("step_backward", kernels["step_backward"],
                        *step_launch(H, B, geo, dy.dtype), stream)
    # Launch p does the product of step p-1 and the pointwise part of step p: T + 1 launches.
    t_prod = -1
    for t in [t for t, _, _ in reversed(steps(T, rev))] + [-1]:
        kern(*args, t_prod, t, rev)
        t_prod = t
    return False

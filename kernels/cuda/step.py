"""The per-step algorithm: one launch per time step, forward and backward.

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3),
s = bytes per element (4 float32, 8 float64). The layer around it (input projection, buffers,
weight gradients, dx) is in ``kernels/cuda/__init__.py``; the saved arrays are described there.

Forward, one layer and direction:
    for each step t:  step_forward kernel    h_{t-1} @ W_hhᵀ + b_hh + XW[t] + b_ih, gates, h_t (c_t)
Backward (BPTT), T + 1 launches of one fused kernel:
    launch p:  dh_{t_{p-1}} += dG_{t_{p-1}} @ W_hh     (the product of the step before)
               then the pointwise cell backward of step t_p: dG_{t_p}, the direct part of dh, dc

Register tiling. A block of TX x TY x TZ threads owns BX = TX·RX hidden units x BY = TY·RY batch rows;
each thread owns RX consecutive units x RY consecutive rows, and in forward every gate of them
(G·RX·RY accumulators). The reduction walks k in tiles of TK, staged in shared memory (tiles.py,
double-buffered, fetched into registers a tile ahead so that the global loads of tile i+1 are in
flight while tile i is computed, one barrier a tile), the TZ slices of threads along z taking every
TZ-th column of a tile and slice 0 adding the others' partial sums at the end (more threads for the
same tiles). Per k a thread loads its RY values of h (one LDS.128) and its RX values of each gate's
W row (one LDS.64 each) and does G·RX·RY multiply-adds. With the GPU geometry
(TX, TY, TZ, RX, RY, TK) = (16, 4, 4, 2, 4, 16): forward LSTM 32 FFMA per 5 loads, GRU 24 per 4,
RNN 8 per 2; backward 8 per 2 (dG's RY values, W's RX values); the kernel report counts them in
the SASS.

Filling the GPU (``plan.step_plan`` sizes it). RY comes from B: the smallest power of two that
covers B rows with TY threads, at most the geometry's (at B = 4 a block of 16 rows would spend
three quarters of its multiply-adds on rows that do not exist). A grid of ceil(H/BX)·ceil(B/BY)
blocks under two waves of resident blocks splits each step's reduction over k (m, backward) into
S parts along blockIdx.z; the last block of a tile to finish adds the S parts in part order and
runs the pointwise step (split.py): deterministic, no second launch.

Napkin of a step (float32 LSTM, B = 64, H = 1024, H100 / H200; not measured). Measured on the
H200 before the prefetch and the split: 96 µs a forward step (cuDNN: 48), from 32 x 4 = 128
blocks (fewer than the SMs) walking 64 tiles each, 1.5 µs a tile with its loads exposed. The
floor is issue: 268 M FFMA at about 60% of the issue slots of 132 SMs is 15 µs. Now 2 parts
make 256 blocks of 32 tiles, one round of the 2 x 132 blocks the SMs hold: 32 x 1.5 µs = 48 µs
if the prefetch hid nothing, about half that if it hides the loads behind the compute (0.25 µs
a tile of compute at 2 blocks an SM), plus about 2 µs for the hand-over and the sum. Each step is also a launch through
numba-cuda, tens of microseconds of host time, unless the plan replays the T launches as a CUDA
graph (graphs.py). With graphs (the default), ``plan.choose`` takes this path from
STEP_FROM_BATCH batch rows on, and below that wherever the persistent kernels
(``persistent.py``) cannot run; without graphs, only where they cannot (plan.py says why, as
measured).

Kernels are built per (cell, dtype, geometry, half format) by ``build``, because tile sizes and
dtypes of shared and local arrays must be compile-time constants, and so is the rounding of a half
format's stores (pointwise.py); ``kernels/report.py`` compiles the very same Python functions to SASS.
"""

import numba
import numpy as np
from numba import cuda

from . import pointwise, split, tiles
from . import runtime as rt
from ..contract import steps
from ..vocabulary import GATES
from .runtime import ceil_div, device_function



# ================================================================ kernels
def build(cell, dtype, geo, half=None):
    """The Python functions of the step kernels for one cell and dtype (not yet compiled), and the
    signatures they are compiled with: {name: (pyfunc, signature)}, names "step_forward" and
    "step_backward". ``half``: the format step_forward rounds what it stores to (pointwise.py);
    step_backward is the same for every format."""
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
    NH = tiles.items(BY, TK, NT)             # values a thread fetches of a tile of h (of dG)
    NW = tiles.items(BX, TK, NT)             # ... of one gate's tile of W_hh (forward)
    GNW = G * NW                             # ... of every gate's
    NWB = tiles.items(TK, BX, NT)            # ... of the tile of W_hh (backward)
    fetch_rows, put_rows, fetch_cols, put_cols = tiles.build(dt, TX, TY, NT)
    arrive = split.build(TX, TY, NT)
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

    @device_function
    def part_of(n_tiles):
        """(first, end): the reduction tiles of this block's part, blockIdx.z of gridDim.z; the
        parts differ by one tile at most."""
        S, z = cuda.gridDim.z, cuda.blockIdx.z
        return z * n_tiles // S, (z + 1) * n_tiles // S

    @device_function
    def add_parts(acc, n, parts, counters, last):
        """With gridDim.z = S > 1 parts: slice z = 0 stores its n sums acc[:n] as this block's part,
        and the block that arrives last for its tile adds all S parts, in part order, into acc
        (split.py). Returns whether this block goes on to the pointwise step (always when S = 1).
        Every thread of the block calls it."""
        S = cuda.gridDim.z
        if S == 1:
            return True
        lin = U(cuda.threadIdx.y * TX + cuda.threadIdx.x)
        tile = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x
        per = U(n * NXY)                     # a part: value v of thread lin at v·NXY + lin
        base = U(tile * S) * per
        if cuda.threadIdx.z == 0:
            for v in range(n):
                parts[base + U(cuda.blockIdx.z) * per + U(v * NXY) + lin] = acc[v]
        if not arrive(counters, tile, S, last):
            return False
        if cuda.threadIdx.z == 0:            # (z outermost: v stays a constant index, acc in registers)
            for v in range(n):
                acc[v] = cuda.ldcg(parts, base + U(v * NXY) + lin)
            for z in range(1, S):
                for v in range(n):
                    acc[v] += cuda.ldcg(parts, base + U(z) * per + U(v * NXY) + lin)
        return True

    # ------------------------------------------------------------ forward step: recurrent product
    @device_function
    def gate_products(h, w_hh, b_hh, sh_h, sh_w, sh_red, acc, rh, rw):
        """acc[g * R + yr * RX + xr] = b_hh[g*H + j] + Σ_k h[b, k] W_hh[g*H + j, k] over this block's
        part of k (the bias in part 0's slice 0 only, so that it is added once), for
        this thread's outputs b = b0 + ty*RY + yr, j = j0 + tx*RX + xr, every gate g: complete in
        the threads of slice z = 0, which walk the columns c ≡ 0 (mod TZ) of each tile; slice z
        walks c ≡ z and hands its partial sums over through shared memory at the end (``gather``).

        h (B, H) is h_{t-1}. Tiles of TK columns k, double-buffered and fetched a tile ahead into
        rh (NH values) and rw (G·NW): sh_h[p, c, r] = h[b0 + r, k0 + c] and
        sh_w[p, c, g*BX + r] = W_hh[g*H + j0 + r, k0 + c]. Per column c a thread loads its RY
        h values and RX W values of each gate, each run in one vector load, and does G·RY·RX
        multiply-adds with them.
        """
        B, H = h.shape
        rx, ry = U(cuda.threadIdx.x) * U(RX), U(cuda.threadIdx.y) * U(RY)   # the thread's runs
        j0, b0 = cuda.blockIdx.x * BX, cuda.blockIdx.y * BY
        hv = cuda.local.array(RY, dt)
        wv = cuda.local.array(GRX, dt)
        first = cuda.threadIdx.z == 0 and cuda.blockIdx.z == 0
        for g in range(G):                   # b_hh first: the pointwise step then reads no bias of
            for xr in range(RX):             # its own but b_ih (registers are tight there)
                j = j0 + cuda.threadIdx.x * RX + xr
                v = b_hh[g * H + j] if first and j < H else dt(0)
                for yr in range(RY):
                    acc[g * R + yr * RX + xr] = v
        lo, hi = part_of((H + TK - 1) // TK)
        if lo < hi:
            k0 = lo * TK
            fetch_cols(rh, 0, BY, TK, h, b0, B - b0, k0, H - k0)
            for g in range(G):
                fetch_cols(rw, g * NW, BX, TK, w_hh, g * H + j0, H - j0, k0, H - k0)
            put_cols(sh_h, 0, 0, BY, TK, rh, 0)
            for g in range(G):
                put_cols(sh_w, 0, g * BX, BX, TK, rw, g * NW)
        cuda.syncthreads()
        for tile in range(lo, hi):
            p = (tile - lo) & 1
            more = tile + 1 < hi
            if more:                             # loads of the next tile in flight while this one is computed
                k0 = (tile + 1) * TK
                fetch_cols(rh, 0, BY, TK, h, b0, B - b0, k0, H - k0)
                for g in range(G):
                    fetch_cols(rw, g * NW, BX, TK, w_hh, g * H + j0, H - j0, k0, H - k0)
            for cc in range(CT):                 # a constant trip count: unrolled, offsets immediate
                c = cc * TZ + cuda.threadIdx.z
                if TK % TZ == 0 or c < TK:       # (a test only where TZ does not divide TK)
                    for yr in range(RY):
                        hv[yr] = sh_h[p, c, ry + U(yr)]
                    for g in range(G):
                        for xr in range(RX):
                            wv[g * RX + xr] = sh_w[p, c, rx + U(g * BX + xr)]
                    for g in range(G):
                        for yr in range(RY):
                            for xr in range(RX):
                                acc[g * R + yr * RX + xr] += hv[yr] * wv[g * RX + xr]
            if more:
                put_cols(sh_h, 1 - p, 0, BY, TK, rh, 0)
                for g in range(G):
                    put_cols(sh_w, 1 - p, g * BX, BX, TK, rw, g * NW)
            cuda.syncthreads()
        if TZ > 1:
            for g in range(G):
                gather(acc, g * R, sh_red)

    # ------------------------------------------------------------ backward step: dh through W_hh
    @device_function
    def dh_products(dg, w_hh, sh_g, sh_w, sh_red, rec, rg, rw):
        """rec[yr * RX + xr] = Σ_m dG[b, m] W_hh[m, k] over this block's part of m, for this thread's
        outputs b = b0 + ty*RY + yr, k = k0 + tx*RX + xr, m over the G*H gate rows; complete in
        slice z = 0, as in gate_products.

        dg (B, G*H) is dG_{t+1}. Tiles of TK gate rows m, double-buffered and fetched a tile
        ahead into rg (NH values) and rw (NWB): sh_g[p, c, r] = dG[b0 + r, m0 + c] (transposed)
        and sh_w[p, c, r] = W_hh[m0 + c, k0 + r].
        """
        B, GH = dg.shape
        H = w_hh.shape[1]
        rx, ry = U(cuda.threadIdx.x) * U(RX), U(cuda.threadIdx.y) * U(RY)
        k0, b0 = cuda.blockIdx.x * BX, cuda.blockIdx.y * BY
        gv = cuda.local.array(RY, dt)
        wv = cuda.local.array(RX, dt)
        for i in range(R):
            rec[i] = dt(0)
        lo, hi = part_of((GH + TK - 1) // TK)
        if lo < hi:
            m0 = lo * TK
            fetch_cols(rg, 0, BY, TK, dg, b0, B - b0, m0, GH - m0)
            fetch_rows(rw, 0, TK, BX, w_hh, m0, GH - m0, k0, H - k0)
            put_cols(sh_g, 0, 0, BY, TK, rg, 0)
            put_rows(sh_w, 0, 0, TK, BX, rw, 0)
        cuda.syncthreads()
        for tile in range(lo, hi):
            p = (tile - lo) & 1
            more = tile + 1 < hi
            if more:
                m0 = (tile + 1) * TK
                fetch_cols(rg, 0, BY, TK, dg, b0, B - b0, m0, GH - m0)
                fetch_rows(rw, 0, TK, BX, w_hh, m0, GH - m0, k0, H - k0)
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
            if more:
                put_cols(sh_g, 1 - p, 0, BY, TK, rg, 0)
                put_rows(sh_w, 1 - p, 0, TK, BX, rw, 0)
            cuda.syncthreads()
        if TZ > 1:
            gather(rec, 0, sh_red)

    # ------------------------------------------------------------ the step kernels
    # The pointwise part is pointwise.py's, shared with the persistent kernels; acc[g * R + r]
    # holds gate g of the thread's output r. A half layer's step_forward rounds what it stores
    # there, and every step reads h_{t-1} from hs[src] (gate_products stages it from global
    # memory; the LSTM's c_{t-1} and the GRU's h_{t-1} in the pointwise step too): rounded.
    point_forward, point_backward = pointwise.build(cell, dtype, R, bias_in_acc=True, half=half)

    # acc stays in registers only where r is a constant, i.e. where the loop over the R outputs is
    # unrolled. NVVM unrolls it only while its body stays under a size threshold, and the float32
    # LSTM's is close to it: a half format's rounding at each of its six stores (more than three
    # PTX instructions each) crosses it, and the rolled loop kept acc in local memory (a 128-byte
    # stack frame). So a half format's kernel unrolls the loop when it is built
    # (``points_forward``); float32's and float64's keep the loop, and the code they had.
    def points_forward(n):
        """A device function that runs the pointwise step of the thread's outputs r = 0 .. n-1, one
        after another, each r a constant."""
        if n == 0:
            @device_function
            def no_point(xw, hs, cs, gates, hn, b_ih, b_hh, lengths, y, acc, t, src, dst):
                pass
            return no_point
        before, r = points_forward(n - 1), n - 1

        @device_function
        def points(xw, hs, cs, gates, hn, b_ih, b_hh, lengths, y, acc, t, src, dst):
            before(xw, hs, cs, gates, hn, b_ih, b_hh, lengths, y, acc, t, src, dst)
            b = cuda.blockIdx.y * BY + cuda.threadIdx.y * RY + r // RX
            j = cuda.blockIdx.x * BX + cuda.threadIdx.x * RX + r % RX
            if b < hs.shape[1] and j < hs.shape[2]:
                point_forward(xw, hs, cs, gates, hn, b_ih, b_hh, lengths, y, acc, r, t, b, j, src, dst)
        return points

    if half is None:
        @device_function
        def all_points_forward(xw, hs, cs, gates, hn, b_ih, b_hh, lengths, y, acc, t, src, dst):
            B, H = hs.shape[1], hs.shape[2]
            for r in range(R):
                b = cuda.blockIdx.y * BY + cuda.threadIdx.y * RY + r // RX
                j = cuda.blockIdx.x * BX + cuda.threadIdx.x * RX + r % RX
                if b < B and j < H:
                    point_forward(xw, hs, cs, gates, hn, b_ih, b_hh, lengths, y, acc, r, t, b, j, src, dst)
    else:
        all_points_forward = points_forward(R)

    # Two blocks an SM (plan.STEP_REGISTERS): the LSTM's forward takes 126-128 registers unbounded.
    @rt.bounded(NT, 2)
    def step_forward(xw, hs, cs, gates, hn, w_hh, b_ih, b_hh, lengths, y, parts, counters, t, src, dst):
        """One step of h_t = cell(XW[t] + b_ih + h_{t-1} @ W_hhᵀ + b_hh).

        xw (T, B, G*H) input projections x·W_ihᵀ; b_ih (G*H,); hs (T+1, B, H) [and cs for the LSTM]:
        reads [src], writes [dst] (every row: inactive rows copy the state through); gates
        (T, B, G*H) [LSTM, GRU] and hn (T, B, H) [GRU]: writes step t's activations that backward
        needs (active rows only); placeholders (1, 1, 1) stand for arrays a cell lacks;
        w_hh (G*H, H); b_hh (G*H,); lengths (B,) int32; y (T, B, H): writes y[t].
        Grid (ceil(H/BX), ceil(B/BY), S), block (TX, TY, TZ); each thread owns RY batch rows x RX
        hidden units and every gate of them, so pre-activations never leave registers; the TZ
        slices split the reduction over k, slice 0 finishes the step. S > 1 parts split the k
        tiles over blocks: parts (flat, S·G·R·TX·TY values a block of the x-y grid) and counters
        (int32, one a block of the x-y grid, zero) as split.py says; the last block of each
        (x, y) to finish adds the parts and runs the pointwise step.
        FLOPs 2·B·G·H² + O(B·H); bytes ≈ s·(G·H² + O(B·H)) (W_hh is re-read by every block row
        of the grid, from L2 after the first).
        """
        sh_h = cuda.shared.array((2, TK, SY), dt, alignment=16)
        sh_w = cuda.shared.array((2, TK, SW), dt, alignment=16)
        sh_red = cuda.shared.array((ZP, R, NXY), dt)
        last = cuda.shared.array(1, numba.int32)
        acc = cuda.local.array(GR, dt)
        rh = cuda.local.array(NH, dt)
        rw = cuda.local.array(GNW, dt)
        gate_products(hs[src], w_hh, b_hh, sh_h, sh_w, sh_red, acc, rh, rw)
        if not add_parts(acc, GR, parts, counters, last) or cuda.threadIdx.z != 0:
            return
        all_points_forward(xw, hs, cs, gates, hn, b_ih, b_hh, lengths, y, acc, t, src, dst)

    @rt.bounded(NT, 2)
    def step_backward(dg_x, dg_h, w_hh, dy, dh, dc, gates, cs, hn, hs, lengths, parts, counters, t_prod, t, rev):
        """Fused BPTT step: dh += dG_h[t_prod] @ W_hh (skipped when t_prod < 0), then the
        pointwise backward of step t (skipped when t < 0).

        dg_x, dg_h (T, B, G*H): the pre-activation gradients on the input and recurrent sides (the
        same array but for the GRU, whose n rows differ: dG_h = dG_x·r); reads dg_h[t_prod],
        writes both at t (zero for inactive rows); w_hh (G*H, H); dy (T, B, H); dh (B, H) in/out:
        dL/dh_t on entry, on exit the part of dL/dh_{t-1} that does not go through W_hh;
        dc (B, H) in/out [LSTM]: dL/dc_t, then dL/dc_{t-1} (both unchanged for inactive rows);
        gates, cs, hn, hs saved by forward; placeholders stand for arrays a cell lacks.
        Grid (ceil(H/BX), ceil(B/BY), S), block (TX, TY, TZ); each thread owns RY batch rows x RX
        units k of its slice of the reduction over m; slice 0 finishes the step. S > 1 parts split
        the m tiles over blocks as in step_forward (parts: S·R·TX·TY values a block of the x-y
        grid); without a product (t_prod < 0) only part 0 runs the pointwise step.
        FLOPs 2·B·G·H² + O(B·H); bytes ≈ s·(G·H² + O(B·H)).
        """
        sh_g = cuda.shared.array((2, TK, SY), dt, alignment=16)
        sh_w = cuda.shared.array((2, TK, BX), dt, alignment=16)
        sh_red = cuda.shared.array((ZP, R, NXY), dt)
        last = cuda.shared.array(1, numba.int32)
        rec = cuda.local.array(R, dt)
        rg = cuda.local.array(NH, dt)
        rw = cuda.local.array(NWB, dt)
        if t_prod >= 0:
            dh_products(dg_h[t_prod], w_hh, sh_g, sh_w, sh_red, rec, rg, rw)
            if not add_parts(rec, R, parts, counters, last):
                return
        else:
            if cuda.blockIdx.z > 0:
                return
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
    fsig = (a3, a3, a3, a3, a3, a2, a1, a1, i32, a3, a1, i32, i64, i64, i64)
    bsig = (a3, a3, a2, a3, a2, a2, a3, a3, a3, a3, i32, a1, i32, i64, i64, i64)
    return {"step_forward": (step_forward, numba.void(*fsig)),
            "step_backward": (step_backward, numba.void(*bsig))}


# ================================================================ host side
def step_launch(H, B, geo, dtype, parts=1):
    """(blocks, threads) of both step kernels: one block per BX hidden units x BY batch rows x
    part of the reduction."""
    return ((ceil_div(H, geo.step_h * geo.step_units(dtype)), ceil_div(B, geo.step_b * geo.step_rb), int(parts)),
            (geo.step_h, geo.step_b, geo.step_kz))


def parts_of(s):
    """The parts each step's reduction is split into under the plan of the saved record ``s``."""
    return s.plan.splits if s.plan is not None else 1


def scratch_arrays(kernel, cell, s, H, B, dtype, scratch=None, stream=None):
    """(parts, counters) for the launches of ``kernel`` under ``s``'s plan (split.py), from
    ``scratch`` (a split.Scratch, a graph workspace's) or else the stream's: the partial sums
    (G·R values of each thread of a slice, forward; R backward, per part and block of the x-y
    grid) and one counter a block of the x-y grid."""
    S = parts_of(s)
    (bx, by, _), (tx, ty, _) = step_launch(H, B, s.geometry, dtype, S)
    R = s.geometry.step_units(dtype) * s.geometry.step_rb
    values = (GATES[cell] if kernel == "step_forward" else 1) * R * tx * ty
    return (scratch or split.scratch(stream)).get(dtype, bx * by * S * values if S > 1 else 1, bx * by)


def forward(cell, kernels, s, xw, y, w_hh, b_ih, b_hh, stream, scratch=None):
    """The recursion of forward: T launches of ``step_forward``, writing the saved arrays of ``s``
    (hs, cs, gates, hn) and y. Each launch splits its reduction in ``s.plan.splits`` parts, with
    the partial sums in ``scratch`` (a split.Scratch; by default the stream's)."""
    geo, rev = s.geometry, int(s.reverse)
    T, B, H = y.shape
    held = scratch_arrays("step_forward", cell, s, H, B, y.dtype, scratch, stream)
    args = tuple(map(rt.dev, pointwise.forward_arrays(s, xw, y, w_hh, b_ih, b_hh) + held))
    kern = rt.configure("step_forward", kernels["step_forward"], *step_launch(H, B, geo, y.dtype, parts_of(s)),
                        stream)
    for t, before, after in steps(T, rev):
        kern(*args, t, before, after)


def backward(cell, kernels, s, dg_x, dg_h, dy, dh, dc, w_hh, grads, stream, scratch=None):
    """The BPTT recursion: T + 1 launches of ``step_backward``, writing dg_x and dg_h (the same
    array but for the GRU) and leaving dL/dh_0 (dL/dc_0) in dh (dc); parts as in ``forward``.
    Returns False: the weight gradients are left to the accumulation kernel."""
    geo, rev = s.geometry, int(s.reverse)
    T, B, H = dy.shape
    held = scratch_arrays("step_backward", cell, s, H, B, dy.dtype, scratch, stream)
    args = tuple(map(rt.dev, pointwise.backward_arrays(s, dg_x, dg_h, w_hh, dy, dh, dc) + held))
    kern = rt.configure("step_backward", kernels["step_backward"], *step_launch(H, B, geo, dy.dtype, parts_of(s)),
                        stream)
    # Launch p does the product of step p-1 and the pointwise part of step p: T + 1 launches.
    t_prod = -1
    for t in [t for t, _, _ in reversed(steps(T, rev))] + [-1]:
        kern(*args, t_prod, t, rev)
        t_prod = t
    return False

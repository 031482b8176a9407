"""The BPTT weight gradients: one deterministic reduction over all N = T*B rows of a layer.

    dW_ih += dG_xᵀ x,   dW_hh += dG_hᵀ h_prev,   db_ih += Σ_n dG_x[n],   db_hh += Σ_n dG_h[n]

Legend: N = T*B rows of the flattened sequence, G*H gate rows, I input features, H hidden units,
s = bytes per element, S parts the rows are split into. One launch after the recursion, for both
matrices on either path (``hidden=False``, only dW_ih and db_ih, serves a recursion that has added
dW_hh itself; none does now).

Each thread block owns a TM x TM tile of dW and one part of the N rows, and accumulates in
registers, walking its rows in a fixed order. It is a GEMM-like launch of 2·N·G·H·(I + H) FLOPs,
compute bound for any N worth timing, provided the grid fills the GPU and no tile waits on memory:

- Filling the GPU. The output alone gives (ceil(I/TM) + ceil(H/TM))·ceil(G·H/TM) tiles: 32 at
  I = H = 256, G·H = 1024, a quarter of an H100's SMs. ``plan.splits`` picks S where the napkin
  says it pays (8 there: 256 blocks, one round), a part keeping at least ``plan.SPLIT_MIN_ROWS``
  rows; the S blocks of a tile each sum N/S rows and the last to finish adds the S partial tiles
  in part order (``split.py``): deterministic, no atomics on data, no second launch. S depends
  on the device and the shapes, so results are bit-identical from run to run on one GPU, not
  across GPU models.
- Not waiting on memory. The rows are staged AK at a time in shared memory, double-buffered, and
  fetched into registers one tile ahead (``tiles.py``): the global loads of tile i+1
  are in flight while the multiply-adds of tile i run.
- Two blocks an SM: float32 launch bounds hold a thread to 128 registers (16 warps an SM to hide
  latency with); unbounded, the prefetch's registers leave one on sm_80 (152 registers).

Napkin (float32, H100 / H200; not measured). Measured on the H200 before these changes: 5% of
cuBLAS at G·H = 1024 (32 blocks for 132 SMs) and 31% at G·H = 4096 (ncu: IPC about 1, every tile
waiting on its loads). The inner loop issues 64 FFMA and 4 LDS.128 per row of a tile (the kernel
report's 16 FFMA per load), so FFMA take 90% of its issue slots; the per-tile fetch, put,
barrier and addresses add about 10%, and the parts of a split about 10% more: 65-80% of the
FP32 peak where the loads stay hidden, against cuBLAS's 51-52 TFLOP/s of about 67 on the H200:
the 70% target is within reach on paper, and only a GPU run says whether the loads stay hidden.
"""

import numba
import numpy as np
from numba import cuda

from . import runtime as rt
from . import split, tiles
from .runtime import ceil_div, device_function


def build(dtype, geo):
    """{"accumulate": (pyfunc, signature)} for one dtype: the kernel does not depend on the cell."""
    dt = numba.from_dtype(np.dtype(dtype))
    AT, R, AK, V = geo.acc_threads, geo.acc_regs, geo.acc_k, geo.vec
    TM = AT * R                              # accumulation tile: TM rows of dW x TM columns
    ANT = AT * AT
    U = numba.uint64
    f64 = numba.float64
    RUNS = R // V                            # runs of V consecutive rows (columns) a thread owns
    NI = tiles.items(AK, TM, ANT)            # values of a staged tile a thread fetches
    BC = -(-TM // ANT)                       # bias columns (gate rows) a thread sums: lin + q·ANT
    PRODUCTS = R * R * ANT                   # a part's products; its TM bias sums follow, in two halves
    PER_TILE = part_values(geo)              # a block's partial sums
    fetch_rows, put_rows, _, _ = tiles.build(dt, AT, AT, ANT)
    arrive = split.build(AT, AT, ANT)

    @device_function
    def tile_products(sh_a, sh_s, p, acc, a, s):
        """acc[i, jj] += Σ_kk sh_a[p, kk, row i] sh_s[p, kk, column jj] over the AK staged rows."""
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

    @device_function
    def tile_bias(sh_a, p, bias, lin):
        """bias[q] += Σ_kk sh_a[p, kk, lin + q·ANT] over the AK staged rows, in float64: the tile's
        sum, then the running sum (AK + N/AK roundings of 2**-53 where one running sum has N)."""
        for q in range(BC):
            c = lin + q * ANT
            if c < TM:
                t = f64(0)
                for kk in range(AK):
                    t += f64(sh_a[p, kk, c])
                bias[q] += t

    # float32: registers for two blocks an SM (117 on sm_80, 115 on sm_90, no spills, against 152
    # and 101 unbounded); float64's 64 accumulators take 128 registers alone: one block an SM.
    @rt.bounded(ANT, 2 if np.dtype(dtype).itemsize == 4 else 1)
    def accumulate(dg_x, x, dg_h, hp, dw_ih, dw_hh, db_ih, db_hh, has_bias, part_rows, parts, counters):
        """dW_ih += dG_xᵀ x, dW_hh += dG_hᵀ h_prev, and (has_bias) db_ih += Σ_n dG_x[n],
        db_hh += Σ_n dG_h[n]: the sums over all N = T*B rows, i.e. over time and batch, in one launch.

        dg_x, dg_h (N, G*H); x (N, I); hp (N, H) the state before each row's step; dw_ih (G*H, I),
        dw_hh (G*H, H), db_ih, db_hh (G*H,) are ADDED into (placeholders when has_bias is 0).
        Grid (ceil(I/TM) + ceil(H/TM), ceil(G*H/TM), S), block (AT, AT): blocks with
        blockIdx.x < ceil(I/TM) own a TM x TM tile of dW_ih, the others of dW_hh; blockIdx.z is
        the part: rows [z·part_rows, (z+1)·part_rows) of N. Thread (tx, ty) holds R x R outputs
        in registers: rows and columns in R/V runs of V consecutive ones, run q at offset
        q·AT·V + (ty or tx)·V, so that each run is one vector load from the staged tile and the
        V-runs of a warp are contiguous (no bank conflicts). The block walks its rows in tiles of
        AK, double-buffered and fetched one tile ahead, in a fixed order. The blocks of the first
        column tile of each matrix also sum the rows of dG for the bias: thread lin = ty·AT + tx
        sums the staged tile's columns lin + q·AT² < TM (gate rows m0 + lin + q·AT²) in float64
        and adds its sum into db, rounded once. Exact by construction: before that rounding db[m]
        is off by at most (AK + N/(S·AK) + S)·2**-53 (+ 2**-48 when S > 1) of Σ_n |dG[n, m]|:
        1.5e-11 at N = 2**20, S = 1, a 4000th of float32's rounding (2**-24) where dG[:, m] has
        one sign, against N·2**-24 (6%) for a float32 running sum.
        S = 1: each block adds its tile into dW and db. S > 1: parts (flat, at least S·PER_TILE
        values a tile, PER_TILE = ``part_values``, tile t's part z at (t·S + z)·PER_TILE) receives
        each block's partial sums, its float64 bias sums as two values of dG's dtype (hi, then the
        rest: hi + lo holds the sum to 2**-48), counters (int32, one a tile, zero) counts arrivals,
        and the last block of a tile adds the S parts in part order (split.py), the bias in float64.
        FLOPs 2·N·G·H·(I + H); bytes ≈ s·N·(G·H·(nI + nH) + (I + H)·ceil(G·H/TM)) with nI, nH
        the column tiles (dG is re-read once per column tile, mostly from L2), plus with S > 1
        2·S·s·PER_TILE a tile for the parts (written once, read back once).
        """
        sh_a = cuda.shared.array((2, AK, TM), dt, alignment=16)
        sh_s = cuda.shared.array((2, AK, TM), dt, alignment=16)
        last = cuda.shared.array(1, numba.int32)
        acc = cuda.local.array((R, R), dt)
        a = cuda.local.array(R, dt)
        s = cuda.local.array(R, dt)
        bias = cuda.local.array(BC, f64)
        ra = cuda.local.array(NI, dt)           # the next tile of dG, fetched ahead
        rs = cuda.local.array(NI, dt)           # ... and of x or h_prev
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
        lin = ty * AT + tx
        zero = dt(0)
        for i in range(R):
            for jj in range(R):
                acc[i, jj] = zero
        for q in range(BC):
            bias[q] = f64(0)
        lo = cuda.blockIdx.z * part_rows
        hi = min(N, lo + part_rows)
        n_tiles = (hi - lo + AK - 1) // AK
        if n_tiles > 0:
            fetch_rows(ra, 0, AK, TM, grad, lo, hi - lo, m0, GH - m0)
            fetch_rows(rs, 0, AK, TM, src, lo, hi - lo, c0, C - c0)
            put_rows(sh_a, 0, 0, AK, TM, ra, 0)
            put_rows(sh_s, 0, 0, AK, TM, rs, 0)
        cuda.syncthreads()
        for tile in range(n_tiles):
            nxt = tile + 1
            if nxt < n_tiles:                    # loads of tile nxt in flight while tile is computed
                n0 = lo + nxt * AK
                fetch_rows(ra, 0, AK, TM, grad, n0, hi - n0, m0, GH - m0)
                fetch_rows(rs, 0, AK, TM, src, n0, hi - n0, c0, C - c0)
            tile_products(sh_a, sh_s, tile & 1, acc, a, s)
            if do_bias:
                tile_bias(sh_a, tile & 1, bias, lin)
            if nxt < n_tiles:
                put_rows(sh_a, nxt & 1, 0, AK, TM, ra, 0)
                put_rows(sh_s, nxt & 1, 0, AK, TM, rs, 0)
            cuda.syncthreads()
        S = cuda.gridDim.z
        if S == 1:
            for i in range(R):
                m = m0 + (i // V) * (AT * V) + ty * V + i % V
                if m < GH:
                    for jj in range(R):
                        c = c0 + (jj // V) * (AT * V) + tx * V + jj % V
                        if c < C:
                            dw[m, c] += acc[i, jj]
            if do_bias:
                for q in range(BC):
                    m = m0 + lin + q * ANT
                    if lin + q * ANT < TM and m < GH:
                        db[m] += bias[q]         # in float64, rounded once to db's dtype
            return
        # S parts: this block's partial tile, value-major (value v of thread lin at v·ANT + lin:
        # a warp's stores and loads are consecutive words), R·R products, then the bias sums.
        ul = U(lin)
        tile_id = cuda.blockIdx.y * cuda.gridDim.x + cuda.blockIdx.x
        base = U(tile_id * S) * U(PER_TILE)
        mine = base + U(cuda.blockIdx.z) * U(PER_TILE)
        for i in range(R):
            for jj in range(R):
                parts[mine + U((i * R + jj) * ANT) + ul] = acc[i, jj]
        if do_bias:
            for q in range(BC):
                c = lin + q * ANT
                if c < TM:
                    hi = dt(bias[q])
                    parts[mine + U(PRODUCTS + c)] = hi
                    parts[mine + U(PRODUCTS + TM + c)] = dt(bias[q] - f64(hi))
        if not arrive(counters, tile_id, S, last):
            return
        for i in range(R):                       # the last block: every part, in part order
            m = m0 + (i // V) * (AT * V) + ty * V + i % V
            for jj in range(R):
                v = i * R + jj
                total = cuda.ldcg(parts, base + U(v * ANT) + ul)
                for z in range(1, S):
                    total += cuda.ldcg(parts, base + U(z) * U(PER_TILE) + U(v * ANT) + ul)
                c = c0 + (jj // V) * (AT * V) + tx * V + jj % V
                if m < GH and c < C:
                    dw[m, c] += total
        if do_bias:
            for q in range(BC):
                c = lin + q * ANT
                if c < TM and m0 + c < GH:
                    b = f64(0)
                    for z in range(S):
                        at = base + U(z) * U(PER_TILE) + U(PRODUCTS + c)
                        b += f64(cuda.ldcg(parts, at)) + f64(cuda.ldcg(parts, at + U(TM)))
                    db[m0 + c] += b

    a2, a1 = dt[:, ::1], dt[::1]
    asig = (a2, a2, a2, a2, a2, a2, a1, a1, numba.int64, numba.int64, a1, numba.int32[::1])
    return {"accumulate": (accumulate, numba.void(*asig))}


def part_values(geo):
    """Values of one part of a split tile (``parts``): the R·R·AT² products, then the TM = AT·R
    bias sums, each as two values (hi, lo)."""
    AT, R = geo.acc_threads, geo.acc_regs
    return R * R * AT * AT + 2 * AT * R


def output_tiles(I, H, GH, geo):
    """Output tiles of dW_ih and dW_hh: the accumulation grid's x·y blocks."""
    tm = geo.acc_threads * geo.acc_regs
    return (ceil_div(I, tm) + ceil_div(H, tm)) * ceil_div(GH, tm)


def accumulate_grads(kernels, dg_x, x, dg_h, hp, grads, geo, stream, hidden=True, splits=1):
    """One launch of the accumulation kernel: adds the BPTT weight (and bias) gradients into grads
    (dict with w_ih, w_hh and, when the layer has biases, b_ih, b_hh). ``hidden=False`` launches
    only the blocks of dW_ih (and db_ih): dW_hh and db_hh are left alone. ``splits``: the parts
    S the N rows are split into (``plan.splits`` picks it; fewer when N has fewer tiles of
    acc_k rows).

    dg_x, dg_h (N, G*H); x (N, I); hp (N, H) the state before each row's step."""
    N, GH = dg_x.shape
    I, H = x.shape[1], hp.shape[1]
    tm = geo.acc_threads * geo.acc_regs
    has_bias = "b_ih" in grads
    placeholder = None if has_bias else rt.placeholder(x.dtype, 1)    # never written: has_bias is 0
    db_ih = grads["b_ih"] if has_bias else placeholder
    db_hh = grads["b_hh"] if has_bias else placeholder
    blocks = (ceil_div(I, tm) + (ceil_div(H, tm) if hidden else 0), ceil_div(GH, tm))
    part_rows = max(ceil_div(ceil_div(N, max(int(splits), 1)), geo.acc_k), 1) * geo.acc_k
    S = max(ceil_div(N, part_rows), 1)
    n_tiles = blocks[0] * blocks[1]
    parts, counters = split.scratch(stream).get(x.dtype, n_tiles * S * part_values(geo) if S > 1 else 1, n_tiles)
    threads = (geo.acc_threads, geo.acc_threads)
    rt.configure("accumulate", kernels["accumulate"], blocks + (S,), threads, stream)(
        *map(rt.dev, (dg_x, x, dg_h, hp, grads["w_ih"], grads["w_hh"], db_ih, db_hh)), int(has_bias),
        int(part_rows), rt.dev(parts), rt.dev(counters))

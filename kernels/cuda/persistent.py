"""The persistent algorithm: one cooperative launch runs all T steps of a layer and direction,
another the whole BPTT recursion; the blocks of a batch shard hand each step's result to each
other through per-block step flags, never a grid barrier.

Legend: T time steps, B batch rows, H hidden units, G gates (RNN 1, LSTM 4, GRU 3), s bytes per
element; NT threads a block, RB batch rows a pass, WR values of W_hh a thread keeps in registers
(``Geometry.persist_threads``, ``persist_rows``, ``w_registers``); the plan's (``plan.py``) groups,
slices S, units U = ceil(H / S), rows BG = ceil(B / groups) and lanes L. The layer around it
(input projection, buffers, dW_ih, dW_hh, dx) is in ``__init__.py``.

The grid. Batch rows are independent, so the grid is groups x slices: block (n, s) serves the
BG batch rows [n·BG, (n+1)·BG) and owns the hidden units [s·U, (s+1)·U), all G gate rows of
them, so a unit's pointwise step never leaves its block. The S blocks of a group exchange each
step's result through global memory (L2) and flags; groups never talk to each other. S = 1 needs
no exchange at all.

What a thread holds. The NT threads form NT/L teams of L lanes (a team within one warp). Forward:
a team owns units u = team, team + NT/L, ...; lane l of it walks the columns k = l, l + L, ... of
the G gate rows of its units (ceil(H / L) columns), so a unit's G dot products are split over the
team's L lanes and summed by a butterfly of warp shuffles (``shfl_xor_sync``, a fixed order). The
values of W_hh a lane uses for the team's first unit, for its first WR/G columns, sit in a local
array indexed by constants only (registers); the rest of the block's slice of W_hh sits in
dynamic shared memory, laid out so that the threads of a warp read consecutive words. Backward
uses the same W_hh (no transpose) from the other side: a team owns columns k = team,
team + NT/L, ...; lane l walks the block's own gate rows m = l, l + L, ... of them, W_hh[m, k] for
the team's first column and its first WR rows in registers, the rest in shared memory.

How a forward step flows (step t, state h_{t-1} in hs[src], written to hs[dst]):
  1. wait: one thread per slice of the group polls that slice's flag (``ldcv``) until it has
     published h_{t-1}; a fence; a block barrier;
  2. stage: the group's BG rows of h_{t-1} (every unit, ``ldcg``: past L1, which may hold
     stale lines) into shared memory, once; it serves every row and every unit of the block;
  3. products: per unit and RB rows, each lane sums its columns for G x RB accumulators, the
     butterfly gives every lane the sums, lane r runs the cell's pointwise math of row r: RB
     lanes of every team at once;
  4. publish: a fence, a block barrier, thread 0 stores the step count into the block's flag.
How a BPTT pass flows (pass p runs the cell backward of step t_p; the last pass, t = -1, only
adds the product, leaving dL/dh_0 in dh):
  1. wait for the group's partial products of pass p - 1, as forward waits;
  2. pointwise: every (unit, row) pair of the block on its own thread: the slices' partial sums
     of dh = dG_{t_{p-1}} W_hh, read in the fixed order s = 0, 1, ..., the gradient arriving from
     the output, the cell backward: dG_t for the block's own gate rows (into dg_x, dg_h) and dc;
  3. stage the block's own columns of dG_t into shared memory;
  4. partial product: P_s[b, k] = Σ_{m own} dG_t[b, m] W_hh[m, k] for every column k, a butterfly
     over the lanes, written to the slot p mod 2 of a two-slot ring in global memory;
  5. publish, as forward.
dW_hh and db_hh are one weight-gradient product after the loop (``accumulate.py``).

Why the ring needs two slots only: a block writes slot p mod 2 at pass p only after it has seen
every flag of pass p - 1, and a block publishes pass p - 1 only after it has read slot p mod 2
(pass p - 2's partials) in its own step 2.

Why deterministic: every sum has one owner and one order: a butterfly of fixed offsets, the
slices' partials added s = 0, 1, ..., nothing atomic. Two runs give the same bits (tested); the
per-step path sums in another order, so the two agree to rounding, not to the bit.

Why it cannot deadlock: the launch is cooperative (``cuda.cg.this_grid()``), so the driver runs it
only when every block is resident at once, and a block waits only for blocks of its own group,
each of which publishes every step whatever its rows' lengths.

Napkin of a step (labelled napkin until measured; the inputs are ``napkin`` below and the
calibration run's primitives, ``benchmarks/calibrate.py``): the critical path of a forward step
is the flag wait, the staging of BG x H values, the hottest loop (ceil(H / L) iterations of RB
shared-memory loads and G·RB FMAs per unit, ceil(U·L / NT) units a team), log2(L) shuffle levels
of G·RB values and the pointwise math; ``kernels/report.py`` counts the instructions of that
loop in the compiled SASS and ``napkin`` turns them into microseconds.
"""

import numba
import numpy as np
from numba import cuda

from . import pointwise
from . import runtime as rt
from ..vocabulary import GATES
from .runtime import device_function

FULL = 0xFFFFFFFF           # every lane of a warp takes part in a shuffle


# ================================================================ the exchange between the blocks of a group
@device_function
def publish(flags, n, s, count):
    """Make this block's writes of the step visible to the grid, then say so: flags[n, s] = count.
    Every thread of the block calls it."""
    cuda.threadfence()
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        cuda.stcg(flags, (n, s), numba.int32(count))


@device_function
def wait_for_group(flags, n, slices, count):
    """Return when every slice of group n has published ``count`` steps: one thread polls each
    slice's flag (``ldcv``: never from a stale cache line), then a fence and a block barrier.
    Every thread of the block calls it."""
    for s in range(cuda.threadIdx.x, slices, cuda.blockDim.x):
        while cuda.ldcv(flags, (n, s)) < count:
            pass
    cuda.threadfence()
    cuda.syncthreads()


# ================================================================ kernels
def build(cell, dtype, geo):
    """The Python functions of the two persistent kernels of one cell and dtype, and their
    signatures: {"persistent_forward": (pyfunc, signature), "persistent_backward": (...)}."""
    G = GATES[cell]
    dt = numba.from_dtype(np.dtype(dtype))
    NT, RB = geo.persist_threads, geo.persist_rows
    WR = geo.w_registers(np.dtype(dtype).itemsize)
    KF = max(WR // G, 1)             # forward: columns of each of the G gate rows in registers
    KB = max(WR, 1)                  # backward: gate rows of the team's first column in registers
    WF, GRB = G * KF, G * RB

    point_forward, point_backward = pointwise.build(cell, dtype, RB)

    @device_function
    def butterfly(acc, n, lanes):
        """Sum acc[0:n] over the ``lanes`` lanes of each team (lanes a power of two), in the same
        fixed order on every lane: afterwards every lane holds the team's sums."""
        off = lanes // 2
        while off > 0:
            for q in range(n):
                acc[q] += cuda.shfl_xor_sync(FULL, acc[q], off)
            off //= 2

    # ------------------------------------------------------------ forward: all T steps
    def persistent_forward(xw, hs, cs, gates, hn, w_hh, b_hh, lengths, y, flags, rev, slices, units, rows,
                           lanes):
        """Every step of h_t = cell(XW[t] + h_{t-1} @ W_hhᵀ + b_hh), one cooperative launch.

        xw (T, B, G*H) input projections, b_ih included; hs (T+1, B, H) [and cs for the LSTM]: the
        initial state at hs[T*rev], every later state written in time order (inactive rows copy
        the state through); w_hh (G*H, H); b_hh (G*H,); lengths (B,) int32; y (T, B, H) written,
        zero for inactive rows; gates (T, B, G*H) [LSTM, GRU] and hn (T, B, H) [GRU] written for
        active rows: what backward needs. Placeholders (1, 1, 1) stand for arrays a cell lacks.
        flags (groups, slices) int32, zero on entry: the steps each block has published.
        rev 0/1; slices S, units U, rows BG and lanes L as the plan says (module docstring).
        Grid (groups·S,) blocks of NT threads, cooperative. Dynamic shared memory, elements:
        ceil(BG/RB)·RB x ceil(H/L)·L (h_{t-1} staged) + the W_hh values not in registers
        (``plan.shared_elements``). FLOPs 2·T·B·G·H² + O(T·B·H).
        """
        cuda.cg.this_grid()                      # a cooperative launch: every block resident at once
        sm = cuda.shared.array(0, dt)
        wr = cuda.local.array(WF, dt)        # registers: W_hh of the team's first unit, first KF columns
        acc = cuda.local.array(GRB, dt)
        hk = cuda.local.array(RB, dt)
        T, B, H = y.shape
        tid = cuda.threadIdx.x
        lane, team, teams = tid % lanes, tid // lanes, NT // lanes
        n = cuda.blockIdx.x // slices
        s = cuda.blockIdx.x - n * slices
        b0, j0 = n * rows, s * units
        nb, nj = min(rows, B - b0), min(units, H - j0)
        KC = (H + lanes - 1) // lanes            # columns a lane walks
        HP = KC * lanes                          # a staged row of h, zero past H
        RP = (rows + RB - 1) // RB * RB          # staged rows, zero past nb
        UT = (units + teams - 1) // teams        # units a team walks
        KX = max(KC - KF, 0)                     # columns of the first unit in shared memory
        wbase = RP * HP
        zero = dt(0)
        # this block's slice of W_hh: registers first, shared memory for the rest; zero past H and nj
        for g in range(G):
            for i in range(KF):
                k = lane + i * lanes
                wr[g * KF + i] = w_hh[g * H + j0 + team, k] if team < nj and i < KC and k < H else zero
        for v in range(UT):
            u = team + v * teams
            at = wbase + tid - KF * NT if v == 0 else wbase + tid + (G * KX + (v - 1) * G * KC) * NT
            gstep = (KX if v == 0 else KC) * NT
            for g in range(G):
                for i in range(KF if v == 0 else 0, KC):
                    k = lane + i * lanes
                    sm[at + i * NT + g * gstep] = w_hh[g * H + j0 + u, k] if u < nj and k < H else zero
        for step in range(T):
            t = T - 1 - step if rev else step
            src, dst = t + rev, t + 1 - rev
            if step > 0 and slices > 1:
                wait_for_group(flags, n, slices, step)
            cuda.syncthreads()                   # also: every thread is done with the last step's h
            for e in range(tid, RP * HP, NT):
                r = e // HP
                k = e - r * HP
                sm[e] = cuda.ldcg(hs, (src, b0 + r, k)) if r < nb and k < H else zero
            cuda.syncthreads()
            for v in range(UT):
                u = team + v * teams
                for r0 in range(0, RP, RB):
                    for q in range(GRB):
                        acc[q] = zero
                    first = 0
                    if v == 0:
                        first = min(KF, KC)
                        for i in range(KF):      # constant trip count: wr stays in registers
                            if i < KC:
                                k = lane + i * lanes
                                for r in range(RB):
                                    hk[r] = sm[(r0 + r) * HP + k]
                                for g in range(G):
                                    w = wr[g * KF + i]
                                    for r in range(RB):
                                        acc[g * RB + r] += w * hk[r]
                    # the rest from shared memory: W value (v, g, i) at at + i·NT + g·gstep
                    at = wbase + tid - KF * NT if v == 0 else wbase + tid + (G * KX + (v - 1) * G * KC) * NT
                    gstep = (KX if v == 0 else KC) * NT
                    for i in range(first, KC):
                        k = lane + i * lanes
                        for r in range(RB):
                            hk[r] = sm[(r0 + r) * HP + k]
                        for g in range(G):
                            w = sm[at + i * NT + g * gstep]
                            for r in range(RB):
                                acc[g * RB + r] += w * hk[r]
                    butterfly(acc, GRB, lanes)
                    if u < nj:
                        for r in range(RB):
                            if r % lanes == lane and r0 + r < nb:
                                point_forward(xw, hs, cs, gates, hn, b_hh, lengths, y, acc, r, t, b0 + r0 + r,
                                              j0 + u, src, dst)
            if slices > 1:
                publish(flags, n, s, step + 1)

    # ------------------------------------------------------------ backward: the whole recursion
    def persistent_backward(dg_x, dg_h, w_hh, dy, dh, dc, gates, cs, hn, hs, lengths, parts, flags, rev,
                            slices, units, rows, lanes):
        """BPTT through all T steps, one cooperative launch, in the order of the per-step path:
        pass p adds dG_{t_{p-1}} @ W_hh into dh, then runs the cell backward of step t_p; the last
        pass (t = -1) only adds the product, leaving dL/dh_0 in dh.

        dg_x, dg_h (T, B, G*H) written (the same array but for the GRU; zero for inactive rows);
        w_hh (G*H, H); dy (T, B, H); dh (B, H) in/out and dc (B, H) in/out [LSTM]: dL/dh_T,
        dL/dc_T on entry, dL/dh_0, dL/dc_0 on exit; gates, cs, hn, hs: saved by forward;
        lengths (B,) int32; parts (2, S, B, H): the ring of the slices' partial products;
        flags (groups, S) int32, zero on entry; placeholders stand for arrays a cell lacks.
        Grid (groups·S,) blocks of NT threads, cooperative. Dynamic shared memory, elements:
        ceil(BG/RB)·RB x ceil(G·U/L)·L (the block's dG_t) + the W_hh values not in registers.
        FLOPs 2·T·B·G·H² + O(T·B·G·H).
        """
        cuda.cg.this_grid()
        sm = cuda.shared.array(0, dt)
        wr = cuda.local.array(KB, dt)            # registers: W_hh of the team's first column, first KB own rows
        acc = cuda.local.array(RB, dt)
        T, B, H = dy.shape
        tid = cuda.threadIdx.x
        lane, team, teams = tid % lanes, tid // lanes, NT // lanes
        n = cuda.blockIdx.x // slices
        s = cuda.blockIdx.x - n * slices
        b0, j0 = n * rows, s * units
        nb, nj = min(rows, B - b0), min(units, H - j0)
        GU = G * units                           # own gate rows m = g·U + jl: W_hh row g·H + j0 + jl
        KM = (GU + lanes - 1) // lanes           # own rows a lane walks
        MP = KM * lanes                          # a staged row of dG, zero past GU
        RP = (rows + RB - 1) // RB * RB
        CT = (H + teams - 1) // teams            # columns a team walks
        KX = max(KM - KB, 0)
        wbase = RP * MP
        zero = dt(0)
        for i in range(KB):
            m = lane + i * lanes
            g = m // units
            jl = m - g * units
            wr[i] = w_hh[g * H + j0 + jl, team] if team < H and i < KM and g < G and jl < nj else zero
        for c in range(CT):
            k = team + c * teams
            at = wbase + tid - KB * NT if c == 0 else wbase + tid + (KX + (c - 1) * KM) * NT
            for i in range(KB if c == 0 else 0, KM):
                m = lane + i * lanes
                g = m // units
                jl = m - g * units
                sm[at + i * NT] = w_hh[g * H + j0 + jl, k] if k < H and g < G and jl < nj else zero
        for p in range(T + 1):
            t = -1
            if p < T:
                t = p if rev else T - 1 - p
            if p > 0 and slices > 1:
                wait_for_group(flags, n, slices, p)
            # pointwise: every (unit, row) of the block on its own thread
            for e in range(tid, nj * nb, NT):
                r = e // nj
                jl = e - r * nj
                b = b0 + r
                rec = zero
                if p > 0:
                    for q in range(slices):
                        rec += cuda.ldcg(parts, ((p - 1) % 2, q, b, j0 + jl))
                point_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, lengths, rec, t, b, j0 + jl, rev)
            if p == T:
                break
            cuda.syncthreads()                   # dG_t of the block's rows is written
            for e in range(tid, RP * MP, NT):
                r = e // MP
                m = e - r * MP
                g = m // units
                jl = m - g * units
                sm[e] = dg_h[t, b0 + r, g * H + j0 + jl] if r < nb and g < G and jl < nj else zero
            cuda.syncthreads()
            for c in range(CT):
                k = team + c * teams
                for r0 in range(0, RP, RB):
                    for r in range(RB):
                        acc[r] = zero
                    first = 0
                    if c == 0:
                        first = min(KB, KM)
                        for i in range(KB):      # constant trip count: wr stays in registers
                            if i < KM:
                                w = wr[i]
                                m = lane + i * lanes
                                for r in range(RB):
                                    acc[r] += sm[(r0 + r) * MP + m] * w
                    at = wbase + tid - KB * NT if c == 0 else wbase + tid + (KX + (c - 1) * KM) * NT
                    for i in range(first, KM):
                        m = lane + i * lanes
                        w = sm[at + i * NT]
                        for r in range(RB):
                            acc[r] += sm[(r0 + r) * MP + m] * w
                    butterfly(acc, RB, lanes)
                    if k < H:
                        for r in range(RB):
                            if r % lanes == lane and r0 + r < nb:
                                parts[p % 2, s, b0 + r0 + r, k] = acc[r]
            if slices > 1:
                publish(flags, n, s, p + 1)
            else:
                cuda.syncthreads()               # the block's own partials are written

    a4, a3, a2, a1 = dt[:, :, :, ::1], dt[:, :, ::1], dt[:, ::1], dt[::1]
    i32, f2, i64 = numba.int32[::1], numba.int32[:, ::1], numba.int64
    fsig = (a3, a3, a3, a3, a3, a2, a1, i32, a3, f2) + (i64,) * 5
    bsig = (a3, a3, a2, a3, a2, a2, a3, a3, a3, a3, i32, a4, f2) + (i64,) * 5
    return {"persistent_forward": (persistent_forward, numba.void(*fsig)),
            "persistent_backward": (persistent_backward, numba.void(*bsig))}


# ================================================================ host side
def forward(cell, kernels, s, xw, y, w_hh, b_hh, stream):
    """The recursion of forward: one launch of ``persistent_forward``."""
    plan, rev = s.plan, int(s.reverse)
    xp = rt.xp_of()
    flags = xp.zeros((plan.groups, plan.slices), np.int32)
    arrays = pointwise.forward_arrays(s, xw, y, w_hh, b_hh) + (flags,)
    kern = rt.configure("persistent_forward", kernels["persistent_forward"], plan.blocks, plan.threads,
                        stream, plan.fwd_shared)
    kern(*map(rt.dev, arrays), rev, plan.slices, plan.units, plan.rows, plan.fwd_lanes)


def backward(cell, kernels, s, dg_x, dg_h, dy, dh, dc, w_hh, grads, stream):
    """The BPTT recursion: one launch of ``persistent_backward``. dW_hh and db_hh are left to the
    accumulation kernel: returns False."""
    plan, rev = s.plan, int(s.reverse)
    xp = rt.xp_of()
    T, B, H = dy.shape
    flags = xp.zeros((plan.groups, plan.slices), np.int32)
    parts = xp.empty((2, plan.slices, B, H), dy.dtype)
    arrays = pointwise.backward_arrays(s, dg_x, dg_h, w_hh, dy, dh, dc) + (parts, flags)
    kern = rt.configure("persistent_backward", kernels["persistent_backward"], plan.blocks, plan.threads,
                        stream, plan.bwd_shared)
    kern(*map(rt.dev, arrays), rev, plan.slices, plan.units, plan.rows, plan.bwd_lanes)
    return False

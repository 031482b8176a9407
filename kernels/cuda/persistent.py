"""The persistent algorithm: one cooperative launch runs all T steps of a layer and direction,
another the whole BPTT recursion; the blocks of a batch shard hand each step's result to each
other through per-block step flags, never a grid barrier.

Legend: T time steps, B batch rows, H hidden units, G gates (RNN 1, LSTM 4, GRU 3), s bytes per
element; NT threads a block, RB batch rows a pass, WR values of W_hh a thread keeps in registers
(``Geometry.persist_threads``, ``persist_rows``, ``w_registers``); the plan's (``plan.py``) groups,
slices S, units U = ceil(H / S), rows BG = ceil(B / groups), chunk and lanes L. The layer around it
(input projection, buffers, dW_ih, dW_hh, dx) is in ``__init__.py``.

The grid. Batch rows are independent, so the grid is groups x slices: block (n, s) serves the
BG batch rows [n·BG, (n+1)·BG) and owns the hidden units [s·U, (s+1)·U), all G gate rows of
them, so a unit's pointwise step never leaves its block. The S blocks of a group exchange each
step's result through global memory (L2) and flags; groups never talk to each other. S = 1 needs
no exchange at all.

What a thread holds. The NT threads form NT/L teams of L lanes (a team within one warp). Forward:
a team owns units u = team, team + NT/L, ...; lane l of it walks the columns k = l, l + L, ... of
the G gate rows of its units (ceil(H / L) columns), so a unit's G dot products are split over the
team's L lanes and summed in shared memory, each sum by one lane in the order of the lanes. The
values of W_hh a lane uses for the team's first unit, for its first WR/G columns, sit in a local
array indexed by constants only (registers); the rest of the block's slice of W_hh sits in
dynamic shared memory, laid out so that the threads of a warp read consecutive words. Backward
uses the same W_hh (no transpose) from the other side: a team owns columns k = team,
team + NT/L, ...; lane l walks the block's own gate rows m = l, l + L, ... of them, W_hh[m, k] for
the team's first column and its first WR rows in registers, the rest in shared memory.

How a forward step flows (step t, state h_{t-1} in hs[src], written to hs[dst]):
  1. wait: one thread per slice of the group polls that slice's flag (a strong load,
     ``primitives.load_relaxed``) until it has published h_{t-1}; a fence; a block barrier;
  2. stage ``chunk`` rows at a time (all of the block's when they fit): the rows of h_{t-1}
     (every unit, ``ldcg``: past L1, which may hold stale lines) into shared memory, once; they
     serve every unit of the block;
  3. products: per unit and RB rows, each lane sums its columns for G x RB accumulators, the
     lane sum leaves the team's sums in shared memory, lane l reads those of rows l, l + L, ...
     and runs the cell's pointwise math: RB lanes of every team at once (L >= RB), one copy of
     the code;
  4. publish: a fence, a block barrier, thread 0 fences again and stores the step count into the
     block's flag with a strong store (``primitives.store_relaxed``).
How a BPTT pass flows (pass p runs the cell backward of step t_p; the last pass, t = -1, only
adds the product, leaving dL/dh_0 in dh):
  1. wait for the group's partial products of pass p - 1, as forward waits;
  2. pointwise: every (unit, row) pair of the block on its own thread: the slices' partial sums
     of dh = dG_{t_{p-1}} W_hh, read in the fixed order s = 0, 1, ..., the gradient arriving from
     the output, the cell backward: dG_t for the block's own gate rows (into dg_x, dg_h) and dc;
  3. stage the block's own columns of dG_t into shared memory, ``chunk`` rows at a time;
  4. partial product: P_s[b, k] = Σ_{m own} dG_t[b, m] W_hh[m, k] for every column k, a lane sum
     over the lanes, written to the slot p mod 2 of a two-slot ring in global memory;
  5. publish, as forward.
dW_hh and db_hh are one weight-gradient product after the loop (``accumulate.py``).

Why the ring needs two slots only: a block writes slot p mod 2 at pass p only after it has seen
every flag of pass p - 1, and a block publishes pass p - 1 only after it has read slot p mod 2
(pass p - 2's partials) in its own step 2.

Why deterministic: every sum has one owner and one order: a lane sum in the order of the lanes, the
slices' partials added s = 0, 1, ..., nothing atomic. Two runs give the same bits (tested); the
per-step path sums in another order, so the two agree to rounding, not to the bit.

Why it cannot deadlock: the launch is cooperative (``cuda.cg.this_grid()``), so the driver runs it
only when every block is resident at once, and a block waits only for blocks of its own group,
each of which publishes every step whatever its rows' lengths.

Why no warp shuffles: numba-cuda's ``shfl_xor_sync``, an inline ``shfl.sync`` and ``syncwarp``
all compile to calls on sm_80 (``__cuda_sm70_shflsync_bfly``, ``__cuda_sm70_warpsync``), whose
register convention pushed these kernels past 255 registers into spills there; the lane sums go
through shared memory between block barriers instead, with no call and no spill on sm_80 or
sm_90 (``python -m gpurnn.kernels.report``).

Napkin of a step (labelled napkin until measured): ``kernels/report.py`` reads the loops of a
step from the compiled SASS (the step, a pass of RB rows, the lane sum, a column of W_hh from
shared memory, the staging of a row, the flag wait); ``plan.step_instructions`` multiplies them
by how often this file runs them for a plan; ``plan.napkin_step_us`` turns that into time with
an assumed clock, issue rate and exchange cost until ``benchmarks/calibrate.py`` measures the
primitives on a GPU.
"""

import numba
import numpy as np
from numba import cuda

from . import plan, pointwise
from . import runtime as rt
from .primitives import load_relaxed, store_relaxed
from ..vocabulary import GATES
from .runtime import device_function

U = numba.uint32      # an index as uint32: no wraparound of negative indices, 32-bit address arithmetic


# ================================================================ the exchange between the blocks of a group
@device_function
def publish(flags, mine, count):
    """Make this block's writes of the step visible to the grid, then say so: flags[mine] =
    count, a strong store (``store_relaxed``) behind a fence, after a barrier that every thread's
    own fence precedes. Every thread of the block calls it."""
    cuda.threadfence()
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        cuda.threadfence()
        store_relaxed(flags, mine, count)


@device_function
def wait_for_group(flags, first, slices, count):
    """Return when flags[first : first + slices] (the slices of one group) have all reached
    ``count``: one thread polls each flag with a strong load (``load_relaxed``; a loop on
    ``cuda.ldcv`` compiles to no load at all), then a fence and a block barrier. Every thread of
    the block calls it."""
    s = cuda.threadIdx.x
    while s < slices:
        while load_relaxed(flags, first + s) < count:
            pass
        s += cuda.blockDim.x
    cuda.threadfence()
    cuda.syncthreads()


# ================================================================ kernels
def build(cell, dtype, geo, half=None):
    """The Python functions of the two persistent kernels of one cell and dtype, and their
    signatures: {"persistent_forward": (pyfunc, signature), "persistent_backward": (...)}.
    ``half``: the format persistent_forward rounds what it stores to (pointwise.py); a step stages
    h_{t-1} from hs[src] and the pointwise step reads c_{t-1} from cs[src], so the next step reads
    the rounded state, never a copy kept in registers. persistent_backward is the same for every
    format."""
    G = GATES[cell]
    dt = numba.from_dtype(np.dtype(dtype))
    NT, RB = geo.persist_threads, geo.persist_rows
    WR = geo.w_registers(np.dtype(dtype).itemsize)
    KF = max(WR // G, 1)             # forward: columns of each of the G gate rows in registers
    KB = max(WR, 1)                  # backward: gate rows of the team's first column in registers
    WF, GRB = G * KF, G * RB

    point_forward = pointwise.build(cell, dtype, 1, half=half)[0]     # one row's G pre-activations at a time
    point_backward = pointwise.build(cell, dtype, RB)[1]
    FWD_RED = plan.static_elements("persistent_forward", G, geo)     # the lane sums' static shared memory
    BWD_RED = plan.static_elements("persistent_backward", G, geo)

    def lane_sum_of(n):
        """A device function that sums acc[0:n] over the ``lanes`` lanes of each team into
        ``red`` (n·(NT+1) elements of shared memory): afterwards red[q·(NT+1) + first] holds the
        team's sum of value q, first being the thread of the team's lane 0, each sum taken in the
        order of the lanes. Lane l sums values l, l + L, ...; the layout q·(NT+1) + thread keeps
        the writes and the column reads free of bank conflicts. Every thread of the block calls
        it: it synchronises the block (no warp shuffles and no ``syncwarp``, which compile to
        calls on sm_80 whose register convention made these kernels spill)."""
        @device_function
        def lane_sum(acc, red, tid, lane, lanes):
            if lanes == 1:                       # nothing to add: the thread's own slots
                for q in range(n):
                    red[U(q * (NT + 1) + tid)] = acc[q]
                return
            first = tid - lane
            cuda.syncthreads()                   # the last sums are read
            for q in range(n):
                red[U(q * (NT + 1) + tid)] = acc[q]
            cuda.syncthreads()
            q = lane
            while q < n:                         # value q: read by its summing lane only, then overwritten
                total = dt(0)
                for j in range(lanes):
                    total += red[U(q * (NT + 1) + first + j)]
                red[U(q * (NT + 1) + first)] = total
                q += lanes
            cuda.syncthreads()
        return lane_sum

    gate_sum, row_sum = lane_sum_of(GRB), lane_sum_of(RB)

    # ------------------------------------------------------------ forward: all T steps
    def persistent_forward(xw, hs, cs, gates, hn, w_hh, b_ih, b_hh, lengths, y, flags, rev, slices, units, rows,
                           lanes, chunk):
        """Every step of h_t = cell(XW[t] + b_ih + h_{t-1} @ W_hhᵀ + b_hh), one cooperative launch.

        xw (T, B, G*H) input projections x·W_ihᵀ; b_ih (G*H,); hs (T+1, B, H) [and cs for the LSTM]: the
        initial state at hs[T*rev], every later state written in time order (inactive rows copy
        the state through); w_hh (G*H, H); b_hh (G*H,); lengths (B,) int32; y (T, B, H) written,
        zero for inactive rows; gates (T, B, G*H) [LSTM, GRU] and hn (T, B, H) [GRU] written for
        active rows: what backward needs. Placeholders (1, 1, 1) stand for arrays a cell lacks.
        flags (groups·S,) int32, zero on entry: the steps block (n, s) has published, at n·S + s.
        rev 0/1; slices S, units U, rows BG, lanes L and chunk as the plan says (module docstring).
        Grid (groups·S,) blocks of NT threads, cooperative. Dynamic shared memory, elements:
        chunk x max(ceil(H/L), WR/G)·L (a chunk of rows of h_{t-1}, staged) + the W_hh values not in registers
        (``plan.layout``). FLOPs 2·T·B·G·H² + O(T·B·H).
        """
        cuda.cg.this_grid()                      # a cooperative launch: every block resident at once
        red = cuda.shared.array(FWD_RED, dt)     # the lane sums
        sm = cuda.shared.array(0, dt)
        wr = cuda.local.array(WF, dt)        # registers: W_hh of the team's first unit, first KF columns
        acc = cuda.local.array(GRB, dt)
        hk = cuda.local.array(RB, dt)
        mine = cuda.local.array(G, dt)           # the G sums of this lane's row
        T, B, H = y.shape
        tid = cuda.threadIdx.x
        bits = 0                                 # lanes = 2**bits: no division by a runtime value,
        while (1 << bits) < lanes:               # which compiles to a call (and spills on sm_80)
            bits += 1
        lane, team, teams = tid & (lanes - 1), tid >> bits, NT >> bits
        n = cuda.blockIdx.x // slices
        s = cuda.blockIdx.x - n * slices
        b0, j0 = n * rows, s * units
        nb, nj = min(rows, B - b0), min(units, H - j0)
        KC = (H + lanes - 1) >> bits             # columns a lane walks
        HP = max(KC, KF) * lanes                 # a staged row of h, zero past H (and up to the registers' columns)
        RP = (rows + RB - 1) // RB * RB          # staged rows, zero past nb
        UT = (units + teams - 1) // teams        # units a team walks
        rounds = (RB + lanes - 1) >> bits        # rows of a pass a lane runs the pointwise math of
        KX = max(KC - KF, 0)                     # columns of the first unit in shared memory
        wbase = chunk * HP                       # the staged rows of a chunk come first
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
                wait_for_group(flags, n * slices, slices, step)
            for c0 in range(0, RP, chunk):
                c1 = min(c0 + chunk, RP)
                cuda.syncthreads()               # every thread is done with the rows staged before
                for r in range(c1 - c0):
                    for k in range(tid, HP, NT):
                        sm[r * HP + k] = cuda.ldcg(hs, (src, b0 + c0 + r, k)) if c0 + r < nb and k < H else zero
                cuda.syncthreads()
                for v in range(UT):
                    u = team + v * teams
                    for r0 in range(c0, c1, RB):
                        hb = (r0 - c0) * HP          # this pass's rows in the staged chunk
                        for q in range(GRB):
                            acc[q] = zero
                        first = 0
                        if v == 0:
                            first = min(KF, KC)
                            for i in range(KF):      # constant trip count: wr stays in registers; past KC
                                k = lane + i * lanes     # both wr and the staged row are zero
                                for r in range(RB):
                                    hk[r] = sm[U(hb + r * HP + k)]
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
                                hk[r] = sm[U(hb + r * HP + k)]
                            for g in range(G):
                                w = sm[U(at + i * NT + g * gstep)]
                                for r in range(RB):
                                    acc[g * RB + r] += w * hk[r]
                        gate_sum(acc, red, tid, lane, lanes)
                        # lane l of the team runs the pointwise math of rows r0 + l, r0 + l + L, ...:
                        # one copy of the code, RB lanes of every team at once
                        first = tid - lane
                        for k in range(rounds):
                            mine_r = k * lanes + lane
                            for g in range(G):
                                mine[g] = red[U((g * RB + min(mine_r, RB - 1)) * (NT + 1) + first)]
                            if u < nj and mine_r < RB and r0 + mine_r < nb:
                                point_forward(xw, hs, cs, gates, hn, b_ih, b_hh, lengths, y, mine, 0, t,
                                              b0 + r0 + mine_r, j0 + u, src, dst)
            if slices > 1:
                publish(flags, n * slices + s, step + 1)

    # ------------------------------------------------------------ backward: the whole recursion
    def persistent_backward(dg_x, dg_h, w_hh, dy, dh, dc, gates, cs, hn, hs, lengths, parts, flags, rev,
                            slices, units, rows, lanes, chunk):
        """BPTT through all T steps, one cooperative launch, in the order of the per-step path:
        pass p adds dG_{t_{p-1}} @ W_hh into dh, then runs the cell backward of step t_p; the last
        pass (t = -1) only adds the product, leaving dL/dh_0 in dh.

        dg_x, dg_h (T, B, G*H) written (the same array but for the GRU; zero for inactive rows);
        w_hh (G*H, H); dy (T, B, H); dh (B, H) in/out and dc (B, H) in/out [LSTM]: dL/dh_T,
        dL/dc_T on entry, dL/dh_0, dL/dc_0 on exit; gates, cs, hn, hs: saved by forward;
        lengths (B,) int32; parts (2, S, B, H): the ring of the slices' partial products;
        flags (groups·S,) int32, zero on entry, as forward's; placeholders stand for arrays a cell lacks.
        Grid (groups·S,) blocks of NT threads, cooperative. Dynamic shared memory, elements:
        chunk x max(ceil(G·U/L), WR)·L (a chunk of rows of the block's dG_t) + the W_hh values not in registers.
        FLOPs 2·T·B·G·H² + O(T·B·G·H).
        """
        cuda.cg.this_grid()
        red = cuda.shared.array(BWD_RED, dt)
        sm = cuda.shared.array(0, dt)
        wr = cuda.local.array(KB, dt)            # registers: W_hh of the team's first column, first KB own rows
        acc = cuda.local.array(RB, dt)
        T, B, H = dy.shape
        tid = cuda.threadIdx.x
        bits = 0                                 # lanes = 2**bits: no division by a runtime value,
        while (1 << bits) < lanes:               # which compiles to a call (and spills on sm_80)
            bits += 1
        lane, team, teams = tid & (lanes - 1), tid >> bits, NT >> bits
        n = cuda.blockIdx.x // slices
        s = cuda.blockIdx.x - n * slices
        b0, j0 = n * rows, s * units
        nb, nj = min(rows, B - b0), min(units, H - j0)
        GU = G * units                           # own gate rows m = jl·G + g: W_hh row g·H + j0 + jl
        KM = (GU + lanes - 1) >> bits            # own rows a lane walks
        MP = max(KM, KB) * lanes                 # a staged row of dG, zero past GU (and up to the registers' rows)
        RP = (rows + RB - 1) // RB * RB
        CT = (H + teams - 1) // teams            # columns a team walks
        KX = max(KM - KB, 0)
        wbase = chunk * MP                       # the staged rows of a chunk come first
        r_first, jl_first = tid // nj, tid % nj  # the pointwise loop's first pair, and its stride NT
        r_step, jl_step = NT // nj, NT % nj
        zero = dt(0)
        for i in range(KB):
            m = lane + i * lanes
            g, jl = m % G, m // G
            wr[i] = w_hh[g * H + j0 + jl, team] if team < H and i < KM and jl < nj else zero
        for c in range(CT):
            k = team + c * teams
            at = wbase + tid - KB * NT if c == 0 else wbase + tid + (KX + (c - 1) * KM) * NT
            for i in range(KB if c == 0 else 0, KM):
                m = lane + i * lanes
                g, jl = m % G, m // G
                sm[at + i * NT] = w_hh[g * H + j0 + jl, k] if k < H and jl < nj else zero
        for p in range(T + 1):
            t = -1
            if p < T:
                t = p if rev else T - 1 - p
            if p > 0 and slices > 1:
                wait_for_group(flags, n * slices, slices, p)
            # pointwise: every (unit, row) pair e = r·nj + jl of the block on its own thread
            r, jl = r_first, jl_first
            while r < nb:
                b = b0 + r
                rec = zero
                if p > 0:
                    for q in range(slices):
                        rec += cuda.ldcg(parts, ((p - 1) & 1, q, b, j0 + jl))
                point_backward(dg_x, dg_h, dy, dh, dc, gates, cs, hn, hs, lengths, rec, t, b, j0 + jl, rev)
                r, jl = r + r_step, jl + jl_step          # e += NT
                if jl >= nj:
                    r, jl = r + 1, jl - nj
            if p == T:
                break
            for c0 in range(0, RP, chunk):
                c1 = min(c0 + chunk, RP)
                cuda.syncthreads()               # dG_t is written; the rows staged before are read
                for r in range(c1 - c0):
                    for m in range(tid, MP, NT):
                        g, jl = m % G, m // G
                        sm[r * MP + m] = dg_h[t, b0 + c0 + r, g * H + j0 + jl] if c0 + r < nb and jl < nj else zero
                cuda.syncthreads()
                for c in range(CT):
                    k = team + c * teams
                    for r0 in range(c0, c1, RB):
                        hb = (r0 - c0) * MP          # this pass's rows in the staged chunk
                        for r in range(RB):
                            acc[r] = zero
                        first = 0
                        if c == 0:
                            first = min(KB, KM)
                            for i in range(KB):      # constant trip count: wr stays in registers; past KM
                                w = wr[i]                # both wr and the staged row are zero
                                m = lane + i * lanes
                                for r in range(RB):
                                    acc[r] += sm[U(hb + r * MP + m)] * w
                        at = wbase + tid - KB * NT if c == 0 else wbase + tid + (KX + (c - 1) * KM) * NT
                        for i in range(first, KM):
                            m = lane + i * lanes
                            w = sm[U(at + i * NT)]
                            for r in range(RB):
                                acc[r] += sm[U(hb + r * MP + m)] * w
                        row_sum(acc, red, tid, lane, lanes)
                        if k < H:
                            for r in range(RB):
                                if (r & (lanes - 1)) == lane and r0 + r < nb:
                                    parts[p & 1, s, b0 + r0 + r, k] = red[U(r * (NT + 1) + tid - lane)]
            if slices > 1:
                publish(flags, n * slices + s, p + 1)
            else:
                cuda.syncthreads()               # the block's own partials are written

    a4, a3, a2, a1 = dt[:, :, :, ::1], dt[:, :, ::1], dt[:, ::1], dt[::1]
    i32, i64 = numba.int32[::1], numba.int64
    fsig = (a3, a3, a3, a3, a3, a2, a1, a1, i32, a3, i32) + (i64,) * 6
    bsig = (a3, a3, a2, a3, a2, a2, a3, a3, a3, a3, i32, a4, i32) + (i64,) * 6
    return {"persistent_forward": (persistent_forward, numba.void(*fsig)),
            "persistent_backward": (persistent_backward, numba.void(*bsig))}


# ================================================================ host side
def forward(cell, kernels, s, xw, y, w_hh, b_ih, b_hh, stream):
    """The recursion of forward: one launch of ``persistent_forward``."""
    plan, rev = s.plan, int(s.reverse)
    xp = rt.xp_of()
    flags = xp.zeros(plan.groups * plan.slices, np.int32)
    arrays = pointwise.forward_arrays(s, xw, y, w_hh, b_ih, b_hh) + (flags,)
    kern = rt.configure("persistent_forward", kernels["persistent_forward"], plan.blocks, plan.threads,
                        stream, plan.fwd_shared)
    kern(*map(rt.dev, arrays), rev, plan.slices, plan.units, plan.rows, plan.fwd_lanes, plan.chunk)


def backward(cell, kernels, s, dg_x, dg_h, dy, dh, dc, w_hh, grads, stream):
    """The BPTT recursion: one launch of ``persistent_backward``. dW_hh and db_hh are left to the
    accumulation kernel: returns False."""
    plan, rev = s.plan, int(s.reverse)
    xp = rt.xp_of()
    T, B, H = dy.shape
    flags = xp.zeros(plan.groups * plan.slices, np.int32)
    parts = xp.empty((2, plan.slices, B, H), dy.dtype)
    arrays = pointwise.backward_arrays(s, dg_x, dg_h, w_hh, dy, dh, dc) + (parts, flags)
    kern = rt.configure("persistent_backward", kernels["persistent_backward"], plan.blocks, plan.threads,
                        stream, plan.bwd_shared)
    kern(*map(rt.dev, arrays), rev, plan.slices, plan.units, plan.rows, plan.bwd_lanes, plan.chunk)
    return False

"""The cpu backend's float32 products, register-tiled, and the threads that run a sequence in parts.

Legend as in kernels/cpu.py: T time steps, B batch rows, I input features, H hidden units, G gates.

A layer's sequential loop runs two small products a step (x_t (B, I) @ W_ihᵀ and h_{t-1} (B, H)
@ W_hhᵀ, G*H columns, forward; dG_t (B, G*H) @ W_hh backward). Through BLAS each is a call of its
own: OpenBLAS runs a product of that size on one thread, so the other cores wait, and every step
pays the call. kernels/cpu.py instead runs the whole loop in compiled code, split by batch row
over parts that run side by side (``run_parts``), each calling the products here on its rows.

    tile_product(R, V)          one tile: R rows x 16V columns, the accumulators in registers
    product(...)                a block of rows and columns in tiles (8, 4, then 1 rows)
    pack(b)                     b (K, N) as panels of PANEL columns, each contiguous
    matmul(a, panels, c, ...)   rows of c = a @ b, b given as its panels (matmul_panel: one panel)
    matmul_at(a, b, c, ...)     rows of c = aᵀ @ b: a weight gradient's sum over the (t, b) rows
    run_parts(fn, parts, ...)   fn(p, parts, ...) for every part at once

Reference: ``matmul`` is ``c[i_lo:i_hi] = a[i_lo:i_hi] @ b``, ``matmul_at`` is ``c[i_lo:i_hi] =
a.T[i_lo:i_hi] @ b`` (tests/test_cpu_threads.py compares them with NumPy in float64). Every element
of c is summed the same way whichever tile, part or thread computes it: chunks of CHUNK terms,
k = 0, 1, ... in order, each a chain of fused multiply-adds, added to the element one after the
other. So results do not depend on the number of threads (bitwise), and are within about K float32
roundings of the exact product, as any float32 product.

Why an intrinsic: a tile keeps its R·V accumulators (16 floats each) in vector registers for the
whole k loop, loads V vectors of b and broadcasts R scalars of a per k, and does R·V fused
multiply-adds. LLVM does not find that shape in a Numba loop (measured, 32 x 128 @ 128 x 256, one
thread: 34 GFLOP/s as plain loops, 10-14 with the accumulators in a local array or in scalars,
169 as an 8 x 32 tile; OpenBLAS 128 on the same shape), so the tile is written in LLVM IR. A
<16 x float> is one AVX-512 register (two AVX2 registers elsewhere). Columns past the end of a
product are masked, so no array needs padding.

Why panels: a tile reads 32 columns of b for every k. In a row-major b of G*H = 2048 columns
those 128 bytes are 8 KB apart, every row on a new page, which the hardware prefetcher does not
follow: at B = 64, H = 512 the product ran at a third of its rate. A panel holds the same columns
contiguously, K x 32; packing costs one pass over the weights per call.
"""

import os
import platform
import threading

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .numba_cache import cached

LANES = 16                      # floats in one vector: one AVX-512 register
# The tiles hold 16 vectors of accumulators: 16 of AVX-512's 32 registers, but twice all of AVX2's
# 16 (a <16 x float> takes two), which would spill on every k. Measured only with AVX-512, so only
# there does the cpu backend use them (kernels/cpu.py ``tiled``); elsewhere it keeps BLAS.
TILES = "avx512f" in llvm.get_host_cpu_features()
PANEL = 2 * LANES               # columns of a tile, and of a panel
CHUNK = 64                      # terms of a sum that one chain of fused multiply-adds adds up
K_BLOCK = 256                   # rows of a and b one pass of matmul_at copies and multiplies
_F32 = ir.FloatType()
_VEC = ir.VectorType(_F32, LANES)
_I32 = ir.IntType(32)


def _is_float32_array(t):
    return isinstance(t, types.Array) and t.layout == "C" and t.dtype == types.float32


def tile_product(R, V):
    """An intrinsic ``tile(a, b, c, a0, sa, sk, b0, sb, c0, sc, n, k0, k1, accumulate)``:

        C(r, j) = Σ_{k0 <= k < k1} A(r, k)·B(k, j)  (+ C(r, j) when accumulate)
        for r < R and j < min(n, 16V), where
        A(r, k) = a.flat[a0 + r·sa + k·sk],  B(k, j) = b.flat[b0 + k·sb + j],  C(r, j) = c.flat[c0 + r·sc + j]

    on float32 C-contiguous arrays of any shape (only their data pointers are used). Columns
    j >= n are neither read nor written. Nothing is bounds-checked: the caller keeps every
    address inside its array.

    The sum runs in chunks of CHUNK terms, k0 + CHUNK·m onwards: each chunk is one chain of fused
    multiply-adds from zero, in registers, then added to C. A single chain over K terms loses up
    to about K²/4 roundings of a term where the terms are alike (torch's test_RNN_dropout sums
    724 equal terms, and missed its 1e-2 by 2.5x); chunks of c terms bring that to about
    K·(c + K/c)/4, least where c = √K (64 suits K up to a few thousand; the weight gradients'
    sums over T·B rows are longer and lose more, as BLAS's do)."""

    @intrinsic
    def tile(typingctx, a, b, c, a0, sa, sk, b0, sb, c0, sc, n, k0, k1, accumulate):
        if not (_is_float32_array(a) and _is_float32_array(b) and _is_float32_array(c)):
            return None
        sig = types.void(a, b, c, *([types.intp] * 10), types.boolean)

        def codegen(context, builder, sig, args):
            A, Bm, C = (context.make_array(t)(context, builder, v).data for t, v in zip(sig.args[:3], args[:3]))
            a0, sa, sk, b0, sb, c0, sc, n, k0, k1, accumulate = args[3:]
            intp = a0.type
            mask_type = ir.VectorType(ir.IntType(1), LANES)
            ptr = _VEC.as_pointer()

            def llvm_intrinsic(name, result, arguments):
                return cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, arguments), name)

            vec = f"v{LANES}f32"
            masked_load = llvm_intrinsic(f"llvm.masked.load.{vec}.p0{vec}", _VEC, [ptr, _I32, mask_type, _VEC])
            masked_store = llvm_intrinsic(f"llvm.masked.store.{vec}.p0{vec}", ir.VoidType(),
                                          [_VEC, ptr, _I32, mask_type])
            fma = llvm_intrinsic(f"llvm.fma.{vec}", _VEC, [_VEC] * 3)
            zero, align = ir.Constant(_VEC, [0.0] * LANES), ir.Constant(_I32, 4)

            def num(v):
                return ir.Constant(intp, v)

            def splat(value, vector_type):
                undef = ir.Constant(vector_type, ir.Undefined)
                first = builder.insert_element(undef, value, ir.Constant(_I32, 0))
                return builder.shuffle_vector(first, undef, ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))

            def vector_at(data, offset):
                return builder.bitcast(builder.gep(data, [offset]), ptr)

            # lane l of vector v is a column to do iff 16v + l < n
            lane = ir.Constant(ir.VectorType(intp, LANES), list(range(LANES)))
            masks = [builder.icmp_signed("<", lane, splat(builder.sub(n, num(LANES * v)), ir.VectorType(intp, LANES)))
                     for v in range(V)]
            # the accumulators: allocas, which LLVM promotes to registers (they never escape)
            acc = [[cgutils.alloca_once(builder, _VEC) for _ in range(V)] for _ in range(R)]
            c_at = [[vector_at(C, builder.add(c0, builder.add(builder.mul(num(r), sc), num(LANES * v))))
                     for v in range(V)] for r in range(R)]
            with builder.if_then(builder.not_(accumulate)):
                for r in range(R):
                    for v in range(V):
                        builder.call(masked_store, [zero, c_at[r][v], align, masks[v]])
            a_row = [builder.add(a0, builder.mul(num(r), sa)) for r in range(R)]
            with cgutils.for_range_slice(builder, k0, k1, num(CHUNK)) as (kc, _):
                for r in range(R):
                    for v in range(V):
                        builder.store(zero, acc[r][v])
                kc_end = builder.add(kc, num(CHUNK))
                kc_end = builder.select(builder.icmp_signed("<", kc_end, k1), kc_end, k1)
                with cgutils.for_range_slice(builder, kc, kc_end, num(1)) as (k, _):
                    b_row = builder.add(b0, builder.mul(k, sb))
                    bk = [builder.call(masked_load, [vector_at(Bm, builder.add(b_row, num(LANES * v))), align,
                                                     masks[v], zero]) for v in range(V)]
                    a_k = builder.mul(k, sk)
                    for r in range(R):
                        ark = splat(builder.load(builder.gep(A, [builder.add(a_row[r], a_k)])), _VEC)
                        for v in range(V):
                            builder.store(builder.call(fma, [ark, bk[v], builder.load(acc[r][v])]), acc[r][v])
                for r in range(R):              # the chunk's sums join the totals in c
                    for v in range(V):
                        total = builder.fadd(builder.call(masked_load, [c_at[r][v], align, masks[v], zero]),
                                             builder.load(acc[r][v]))
                        builder.call(masked_store, [total, c_at[r][v], align, masks[v]])
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile_8, _tile_4, _tile_1 = tile_product(8, 2), tile_product(4, 2), tile_product(1, 2)


@njit(inline="always", error_model="numpy")
def product(a, b, c, i_lo, i_hi, a0, sa, sk, b0, sb, c0, sc, n, k0, k1, accumulate):
    """Rows i_lo <= i < i_hi of one tile column: C(i, j) = Σ_k A(i, k)·B(k, j) (+ C) for j < n <= PANEL,
    addressed as in ``tile_product`` with row i at a0 + i·sa and c0 + i·sc. Tiles of 8, 4, then 1 rows."""
    i = i_lo
    while i + 8 <= i_hi:
        _tile_8(a, b, c, a0 + i * sa, sa, sk, b0, sb, c0 + i * sc, sc, n, k0, k1, accumulate)
        i += 8
    while i + 4 <= i_hi:
        _tile_4(a, b, c, a0 + i * sa, sa, sk, b0, sb, c0 + i * sc, sc, n, k0, k1, accumulate)
        i += 4
    while i < i_hi:
        _tile_1(a, b, c, a0 + i * sa, sa, sk, b0, sb, c0 + i * sc, sc, n, k0, k1, accumulate)
        i += 1


def pack(b, out=None):
    """b (K, N) float32 as panels (⌈N/PANEL⌉, K, PANEL): panel q holds columns q·PANEL .. q·PANEL+31,
    row by row, the columns past N zero."""
    K, N = b.shape
    q = -(-N // PANEL)
    if out is None:
        out = np.empty((q, K, PANEL), np.float32)
    full = N // PANEL
    out[:full] = b[:, :full * PANEL].reshape(K, full, PANEL).transpose(1, 0, 2)
    if full < q:
        out[full] = 0
        out[full, :, :N - full * PANEL] = b[:, full * PANEL:]
    return out


def pack_transposed(w, out=None):
    """``pack(w.T)`` for w (N, K), without making w.T contiguous first."""
    N, K = w.shape
    q = -(-N // PANEL)
    if out is None:
        out = np.empty((q, K, PANEL), np.float32)
    full = N // PANEL
    out[:full] = w[:full * PANEL].reshape(full, PANEL, K).transpose(0, 2, 1)
    if full < q:
        out[full] = 0
        out[full, :, :N - full * PANEL] = w[full * PANEL:].T
    return out


@njit(inline="always", error_model="numpy")
def matmul_panel(a, panels, c, i_lo, i_hi, q, accumulate):
    """The columns of panel q of c[i_lo:i_hi] = a[i_lo:i_hi] @ b (+ c), for a (M, K), c (M, N) and
    b (K, N) given as ``pack(b)`` (panels (⌈N/PANEL⌉, K, PANEL))."""
    K, N = a.shape[1], c.shape[1]
    product(a, panels, c, i_lo, i_hi, 0, K, 1, q * K * PANEL, PANEL, q * PANEL, N,
            min(PANEL, N - q * PANEL), 0, K, accumulate)


@njit(inline="always", error_model="numpy")
def matmul(a, panels, c, i_lo, i_hi, accumulate):
    """c[i_lo:i_hi] = a[i_lo:i_hi] @ b (+ c), every panel of b."""
    for q in range(panels.shape[0]):
        matmul_panel(a, panels, c, i_lo, i_hi, q, accumulate)


@njit(inline="always", error_model="numpy")
def matmul_at(a, b, c, i_lo, i_hi, accumulate):
    """c[i_lo:i_hi] = (aᵀ @ b)[i_lo:i_hi] (+ c) for a (K, M), b (K, N), c (M, N): a weight
    gradient's sum over every (t, b) row.

    Both operands are read across their rows (a's columns i, b's columns j, for k = 0, 1, ...),
    thousands of bytes apart, so K goes in blocks of K_BLOCK rows and each block is first copied
    into tiles: a's columns i_lo..i_hi as 8-column tiles (K_BLOCK, 8), b as panels (K_BLOCK,
    PANEL), each contiguous, as BLAS packs. Each block adds its chunks' sums to the element in
    order, so every element is summed the same way whatever the rows of the part."""
    K = a.shape[0]
    N = c.shape[1]
    if K == 0 and not accumulate:               # an empty sum
        for i in range(i_lo, i_hi):
            for j in range(N):
                c[i, j] = 0
    rows = i_hi - i_lo
    tiles, panels = (rows + 7) // 8, (N + PANEL - 1) // PANEL
    a_tiles = np.empty((tiles, K_BLOCK, 8), np.float32)
    b_panels = np.empty((panels, K_BLOCK, PANEL), np.float32)
    for k0 in range(0, K, K_BLOCK):
        kn = min(K, k0 + K_BLOCK) - k0
        for k in range(kn):
            a_k, b_k = a[k0 + k], b[k0 + k]
            for i in range(rows):
                a_tiles[i >> 3, k, i & 7] = a_k[i_lo + i]
            for q in range(panels):
                panel_k = b_panels[q, k]
                for j in range(min(PANEL, N - q * PANEL)):
                    panel_k[j] = b_k[q * PANEL + j]
        again = accumulate or k0 > 0
        for q in range(panels):
            n = min(PANEL, N - q * PANEL)
            b0 = q * K_BLOCK * PANEL
            for t in range(tiles):
                a0, i = t * K_BLOCK * 8, i_lo + 8 * t
                c0 = i * N + q * PANEL
                left = min(8, i_hi - i)
                if left == 8:
                    _tile_8(a_tiles, b_panels, c, a0, 1, 8, b0, PANEL, c0, N, n, 0, kn, again)
                    continue
                first = 0
                if left >= 4:
                    _tile_4(a_tiles, b_panels, c, a0, 1, 8, b0, PANEL, c0, N, n, 0, kn, again)
                    first = 4
                for r in range(first, left):
                    _tile_1(a_tiles, b_panels, c, a0 + r, 1, 8, b0, PANEL, c0 + r * N, N, n, 0, kn, again)


@cached
@njit(error_model="numpy")
def matmul_rows(a, panels, c, i_lo, i_hi, accumulate):
    """``matmul`` as a function of its own, for tests and benchmarks."""
    matmul(a, panels, c, i_lo, i_hi, accumulate)


@cached
@njit(error_model="numpy")
def matmul_rows_at(a, b, c, i_lo, i_hi, accumulate):
    """``matmul_at`` as a function of its own, for tests and benchmarks."""
    matmul_at(a, b, c, i_lo, i_hi, accumulate)


# ---------------------------------------------------------------- running parts side by side
# A part is handed to a worker thread that stays alive for the process. Waking a sleeping thread
# costs tens of microseconds on a virtual machine (72 µs for a pool's submit and result, measured
# on 2 cores), three times a training step, so each side spins first: a worker spins for its next
# part for SPINS_IDLE hints after its last one (about 0.1 ms here: the gaps inside a training
# step) and then sleeps; the caller spins for the other parts for SPINS_WAIT hints and then
# sleeps. Spinning runs in compiled code without the GIL, reading a counter the other side
# advances. Between calls nothing spins for longer than that.

def _is_counter(t):
    return isinstance(t, types.Array) and t.dtype == types.int64 and t.layout == "C" and t.ndim == 1


@intrinsic
def atomic_load(typingctx, counter, index):
    """counter[index], read with acquire ordering (what was written before it was set is visible)."""
    if not _is_counter(counter):
        return None
    sig = types.int64(counter, types.intp)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.load_atomic(builder.gep(data, [args[1]]), "acquire", 8)

    return sig, codegen


@intrinsic
def spin_hint(typingctx):
    """The CPU's spin-wait hint (x86 ``pause``): a waiting core eases off its pipeline and the
    memory system; elsewhere nothing."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        if platform.machine().lower() in ("x86_64", "amd64"):
            pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                   "llvm.x86.sse2.pause")
            builder.call(pause, [])
        return context.get_dummy_value()

    return sig, codegen


@cached
@njit(nogil=True)
def spin_until(counter, index, target, spins):
    """Spin, without the GIL, until counter[index] >= target or ``spins`` hints have passed;
    returns whether the target was reached."""
    for _ in range(spins):
        if atomic_load(counter, index) >= target:
            return True
        spin_hint()
    return atomic_load(counter, index) >= target


# x86's pause takes 10 to 140 cycles by model: 22 ns here (an Intel Xeon with AVX-512), so
SPINS_IDLE = 4000       # about 0.09 ms here
SPINS_WAIT = 40000      # about 0.45 ms here


def compile_threads():
    """Compile (or load from the cache) what the pool itself runs, before a first call needs it."""
    spin_until(np.zeros(16, np.int64), 0, 0, 1)


class _Worker:
    """One thread that runs the parts posted to it, in order. ``count[0]`` counts the parts posted,
    ``count[8]`` (another cache line) the parts finished."""

    def __init__(self, name):
        self.count = np.zeros(16, np.int64)
        self.cond = threading.Condition()
        self.job = self.error = None
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _next(self, done):
        """Wait for the part after the ``done`` first: spinning a while, then asleep."""
        try:
            if spin_until(self.count, 0, done + 1, SPINS_IDLE):
                return
        except Exception:               # no spinning (say, a failed compile): sleep instead
            pass
        with self.cond:
            while self.count[0] <= done:
                self.cond.wait()

    def _serve(self):
        done = 0
        while True:
            self._next(done)
            try:
                fn, p, parts, args = self.job
                fn(p, parts, *args)
                error = None
            except BaseException as e:          # handed to the caller, which raises it
                error = e
            # hold no argument while waiting: the workspace reuses an array only once nothing refers to it
            fn = args = None
            with self.cond:
                self.error, self.job = error, None
                done += 1
                self.count[8] = done
                self.cond.notify_all()

    def post(self, fn, p, parts, args):
        """Start fn(p, parts, *args); returns the count ``wait`` waits for."""
        with self.cond:
            while self.count[8] < self.count[0]:        # still running a part (an interrupted call's)
                self.cond.wait(1.0)
            self.job = (fn, p, parts, args)
            self.count[0] += 1
            self.cond.notify_all()
            return int(self.count[0])

    def wait(self, posted):
        """Wait until the part ``post`` returned ``posted`` for has finished; raise its exception.
        RuntimeError if the thread is gone (nothing should end it; a hang would hide it)."""
        try:
            finished = spin_until(self.count, 8, posted, SPINS_WAIT)
        except Exception:
            finished = False
        if not finished:
            with self.cond:
                while self.count[8] < posted:
                    if not self.thread.is_alive():
                        raise RuntimeError(f"gpurnn's CPU worker thread {self.thread.name} has stopped")
                    self.cond.wait(1.0)
        error, self.error = self.error, None
        if error is not None:
            raise error


_workers = []
_run_lock = threading.Lock()


def _forget_workers():
    global _workers, _run_lock
    _workers, _run_lock = [], threading.Lock()     # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def run_parts(fn, parts, *args):
    """fn(p, parts, *args) for p = 0 .. parts-1: part 0 on the calling thread, the others on worker
    threads, at the same time (``fn`` is compiled with nogil=True). The parts share no element
    they write, so when another thread of the program is running parts already, this call runs
    its own one after the other on the calling thread instead. Waits for every part; an exception
    in one is raised here."""
    if parts > 1 and _run_lock.acquire(blocking=False):
        try:
            _workers[:] = [w for w in _workers if w.thread.is_alive()]
            while len(_workers) < parts - 1:
                _workers.append(_Worker(f"gpurnn-cpu-{len(_workers) + 1}"))
            posted, errors = [], []
            try:
                for p, w in enumerate(_workers[:parts - 1], start=1):
                    posted.append((w, w.post(fn, p, parts, args)))
                fn(0, parts, *args)
            except BaseException as e:
                errors.append(e)
            for w, n in posted:             # every part, even after an error or an interrupt: a
                while True:                 # worker is idle again before it is given the next part
                    try:
                        w.wait(n)
                        break
                    except BaseException as e:
                        errors.append(e)
                        if w.count[8] >= n or not w.thread.is_alive():   # its own error, or gone
                            break
            if errors:
                raise errors[0]
        finally:
            _run_lock.release()
        return
    for p in range(parts):
        fn(p, parts, *args)


@njit(inline="always")
def part_rows(p, parts, n):
    """(lo, hi): the rows of part p of ``parts`` among n rows, as even as possible."""
    return p * n // parts, (p + 1) * n // parts


MIN_ROWS = 4                    # a part of fewer rows than a 4-row tile leaves its vector units idle


def parts_for(rows, threads):
    """How many parts ``rows`` independent rows run as: one per thread, MIN_ROWS rows each or more."""
    return max(1, min(int(threads), rows // MIN_ROWS))

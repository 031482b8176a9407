"""The cpu backend's float32 path (kernels/cpu_threads.py): its tiled products against NumPy in
float64, its parts against each other (bitwise), and the threads that run them.

The backends' agreement with the NumPy reference, end to end, is tests/test_backends.py's; here are
the pieces that agreement rests on: every element of a product written once, nothing outside its
rows and columns touched, the same bits whatever the number of parts, an error in a part raised in
the caller, and parts run from two threads at once or in a forked child.
"""

import multiprocessing
import sys
import threading

import numpy as np
import pytest
from numba import njit

from conftest import random_problem, run_child

from gpurnn.kernels import cpu, reference
from gpurnn.kernels.cpu_threads import (K_BLOCK, PANEL, TILES, matmul_rows, matmul_rows_at, pack, pack_transposed,
                                        run_parts)
from gpurnn.kernels.vocabulary import CELLS, GATES

GUARD = np.float32(-7.25)       # what the cells around a product's output hold, and must still hold


def guarded(shape, rng, fill=None):
    """A C-contiguous float32 array of ``shape`` inside a larger buffer: (array, buffer, where)."""
    size = int(np.prod(shape))
    buf = np.full(size + 2 * PANEL, GUARD, np.float32)
    a = buf[PANEL:PANEL + size].reshape(shape)
    a[...] = rng.standard_normal(shape) if fill is None else fill
    return a, buf


def assert_product(got, want64, K, what):
    """got (float32) within the rounding of a K-term float32 sum of the float64 product."""
    scale = np.abs(want64).max() if want64.size else 1.0
    err = np.abs(got.astype(np.float64) - want64).max() if want64.size else 0.0
    assert err <= (K + 2) * 2.0 ** -24 * max(scale, 1e-30) * 4, f"{what}: error {err:.3e} (scale {scale:.3e})"


SHAPES = [(1, 1, 1), (3, 5, 7), (4, 64, 16), (7, 33, 31), (8, 128, 32), (9, 17, 33), (17, 300, 70), (32, 64, 100)]


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_matmul_writes_its_rows_and_nothing_else(M, K, N, accumulate):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c, buf = guarded((M, N), rng)
    before = c.copy()
    lo, hi = M // 3, M - M // 4                       # a block of rows, as a part gets
    matmul_rows(a, pack(b), c, lo, hi, accumulate)
    want = a[lo:hi].astype(np.float64) @ b + (before[lo:hi] if accumulate else 0)
    assert_product(c[lo:hi], want, K, "rows of the part")
    assert np.array_equal(c[:lo], before[:lo]) and np.array_equal(c[hi:], before[hi:]), "rows of other parts"
    assert np.all(buf[:PANEL] == GUARD) and np.all(buf[-PANEL:] == GUARD), "written outside the array"


@pytest.mark.parametrize("K", [0, 1, 5, K_BLOCK, K_BLOCK + 1, 2 * K_BLOCK + 37])
@pytest.mark.parametrize("M,N", [(1, 1), (6, 33), (16, 64), (21, 15)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_matmul_at_sums_over_every_row(K, M, N, accumulate):
    """The weight gradients' product aᵀ @ b, K in blocks of K_BLOCK rows (each continuing the last)."""
    rng = np.random.default_rng(K + M * 7 + N)
    a = rng.standard_normal((K, M)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    c, buf = guarded((M, N), rng)
    before = c.copy()
    lo, hi = M // 4, M
    matmul_rows_at(a, b, c, lo, hi, accumulate)
    want = a[:, lo:hi].T.astype(np.float64) @ b + (before[lo:hi] if accumulate else 0)
    assert_product(c[lo:hi], want, K, "rows of the part")
    assert np.array_equal(c[:lo], before[:lo]), "rows of other parts"
    assert np.all(buf[:PANEL] == GUARD) and np.all(buf[-PANEL:] == GUARD), "written outside the array"


def test_a_product_is_one_chain_per_element_whatever_the_row_split():
    """Each element is the same chain of fused multiply-adds however the rows are cut into tiles
    (8, 4, 1 rows) and parts: the bits do not depend on the split."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((23, 300)).astype(np.float32)
    b = pack(rng.standard_normal((300, 50)).astype(np.float32))
    whole = np.zeros((23, 50), np.float32)
    matmul_rows(a, b, whole, 0, 23, False)
    pieces = np.zeros_like(whole)
    for lo, hi in [(0, 1), (1, 6), (6, 15), (15, 23)]:
        matmul_rows(a, b, pieces, lo, hi, False)
    assert np.array_equal(whole, pieces)
    at = rng.standard_normal((600, 23)).astype(np.float32)
    x = rng.standard_normal((600, 50)).astype(np.float32)
    whole_at, pieces_at = np.zeros((23, 50), np.float32), np.zeros((23, 50), np.float32)
    matmul_rows_at(at, x, whole_at, 0, 23, False)
    for lo, hi in [(0, 3), (3, 11), (11, 23)]:
        matmul_rows_at(at, x, pieces_at, lo, hi, False)
    assert np.array_equal(whole_at, pieces_at)


@pytest.mark.parametrize("K,c", [(1000, 13.812156), (3000, 0.7), (4096, 0.1)])
def test_a_long_sum_of_alike_terms_stays_accurate(K, c):
    """K equal terms (torch's test_RNN_dropout sums 724 of them and allows 1e-6): summed in chunks
    the error stays below 4e-6 relative (about 1e-6 measured; NumPy's BLAS 1-4e-6); one chain of
    fused multiply-adds over all K drifts to 8e-6 - 4e-5."""
    a = np.full((1, K), np.float32(c))
    ones = np.ones((K, 20), np.float32)
    exact = K * float(np.float32(c))
    out = np.zeros((1, 20), np.float32)
    matmul_rows(a, pack(ones), out, 0, 1, False)
    assert np.abs(out.astype(np.float64) - exact).max() <= 4e-6 * exact
    out_at = np.zeros((1, 20), np.float32)
    matmul_rows_at(np.ascontiguousarray(a.T), ones, out_at, 0, 1, False)
    assert np.abs(out_at.astype(np.float64) - exact).max() <= 4e-6 * exact


@pytest.mark.parametrize("K,N", [(3, 1), (5, 32), (4, 33), (2, 70)])
def test_panels_hold_the_columns_in_order(K, N):
    b = np.arange(K * N, dtype=np.float32).reshape(K, N)
    panels = pack(b)
    assert panels.shape == (-(-N // PANEL), K, PANEL)
    for j in range(N):
        assert np.array_equal(panels[j // PANEL, :, j % PANEL], b[:, j])
    assert not panels.reshape(-1, K, PANEL)[-1, :, N - (len(panels) - 1) * PANEL:].any(), "padding not zero"
    assert np.array_equal(pack_transposed(np.ascontiguousarray(b.T)), panels)


# ---------------------------------------------------------------- the cpu backend in parts
def problem(cell, T, B, I, H, seed, lengths):
    """One layer's arrays as a backend takes them, float32 (the inputs from conftest.random_problem),
    and dy."""
    rng = np.random.default_rng(seed)
    p = random_problem(rng, cell, T, B, I, H, 1, 1, lengths, np.float32)
    GH = GATES[cell] * H
    weights = {name: (rng.standard_normal(shape) * scale).astype(np.float32) for name, shape, scale in
               (("w_ih", (GH, I), 0.4), ("w_hh", (GH, H), 0.4), ("b_ih", (GH,), 0.1), ("b_hh", (GH,), 0.1))}
    arrays = dict(x=p["x"], h0=p["h0"][0], c0=p["c0"][0] if cell == "lstm" else None, lengths=p.get("lengths"),
                  **weights)
    return arrays, p["dy"]


def in_float64(arrays):
    return {k: None if v is None else (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in arrays.items()}


def run(backend, cell, arrays, dy, reverse):
    a = arrays
    y, h, c, saved = backend.forward_sequence(cell, a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"],
                                              a["b_hh"], a["lengths"], reverse)
    grads = {k: np.full_like(a[k], 0.5) for k in ("w_ih", "w_hh", "b_ih", "b_hh")}   # backward adds into them
    dx, dh0, dc0 = backend.backward_sequence(cell, saved, dy, h * 0.3, None if c is None else c * 0.2,
                                             a["w_ih"], a["w_hh"], grads)
    return dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, **grads)


needs_tiles = pytest.mark.skipif(not TILES, reason="the tiled path runs on CPUs with AVX-512 only")


@needs_tiles
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths,reverse", [(False, False), (True, True)])
def test_parts_give_the_same_bits_as_one(cell, lengths, reverse, monkeypatch):
    """1, 2, 3 and 5 parts (more than this machine's cores: they take turns) give bit-identical
    outputs and gradients, and those agree with the NumPy reference."""
    arrays, dy = problem(cell, 7, 21, 5, 37, seed=len(cell), lengths=lengths)
    results = {}
    for parts in (1, 2, 3, 5):
        monkeypatch.setattr(cpu, "threads", lambda parts=parts: parts)
        results[parts] = run(cpu, cell, arrays, dy, reverse)
    for parts in (2, 3, 5):
        for name, value in results[1].items():
            if value is not None:
                assert np.array_equal(results[parts][name], value), f"{name} with {parts} parts"
    want = run(reference, cell, in_float64(arrays), dy.astype(np.float64), reverse)
    for name, value in results[1].items():
        if value is not None:
            np.testing.assert_allclose(value, want[name], rtol=2e-4, atol=2e-5 * max(1.0, np.abs(want[name]).max()),
                                       err_msg=name)


@needs_tiles
def test_the_float32_path_calls_no_blas(monkeypatch):
    """Every float32 product runs in gpurnn's own parts: NumPy's BLAS, whose worker threads spin
    after each call, is never entered (float64 still goes through it)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a BLAS product on the float32 path")
    arrays, dy = problem("lstm", 4, 8, 3, 20, seed=1, lengths=False)
    before = cpu.use_products(refuse)
    try:
        run(cpu, "lstm", arrays, dy, False)
        with pytest.raises(AssertionError, match="BLAS product"):
            run(cpu, "lstm", in_float64(arrays), dy.astype(np.float64), False)
    finally:
        cpu.use_products(before)


# ---------------------------------------------------------------- the threads
@njit(nogil=True)
def _fill_or_fail(p, parts, out, fail_part, slow_part):
    if p == fail_part:
        raise ValueError("part failed on purpose")
    if p == slow_part:                  # busy for a few milliseconds
        x = 0.0
        for i in range(3_000_000):
            x += i * 1e-9
        out[0] = x - x
    for i in range(p, out.shape[0], parts):
        out[i] = p + 1


def test_an_error_in_a_part_is_raised_in_the_caller_and_the_threads_go_on():
    out = np.zeros(12)
    for fail_part in (0, 1, 2):
        with pytest.raises(ValueError, match="on purpose"):
            run_parts(_fill_or_fail, 3, out, fail_part, -1)
        # part 1 fails at once while part 2 is still busy: the call returns only once part 2 is done,
        # so the next call finds every worker idle (returning early let part 2's end overwrite it)
        with pytest.raises(ValueError, match="on purpose"):
            run_parts(_fill_or_fail, 3, out, 1, 2)
        out[:] = 0
        run_parts(_fill_or_fail, 3, out, -1, -1)
        assert list(out) == [1, 2, 3] * 4


def test_the_workers_keep_no_reference_to_a_finished_call():
    """The cpu backend's workspace hands an array out again only once nothing refers to it: a
    worker still holding the last call's arguments made every call allocate (and fault in) fresh
    arrays, and held a whole evaluation's activations in memory."""
    out = np.zeros(12)
    before = sys.getrefcount(out)
    run_parts(_fill_or_fail, 3, out, -1, -1)
    assert sys.getrefcount(out) == before


def test_parts_from_two_threads_at_once():
    """Two threads of a program run sequences at the same time: each gets its own right answer
    (one runs its parts in the workers, the other, finding them busy, one after the other)."""
    problems = [problem(cell, 30, 16, 6, 40, seed=k, lengths=False) for k, cell in enumerate(("lstm", "gru"))]
    want = [run(cpu, cell, *p, False) for cell, p in zip(("lstm", "gru"), problems)]
    got = [[], []]

    def work(k, cell):
        for _ in range(5):
            got[k].append(run(cpu, cell, *problems[k], False))

    threads = [threading.Thread(target=work, args=(k, cell)) for k, cell in enumerate(("lstm", "gru"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        assert len(got[k]) == 5
        for result in got[k]:
            for name, value in want[k].items():
                if value is not None:
                    assert np.array_equal(result[name], value), name


def _forward_in_child(queue):
    arrays, dy = problem("lstm", 6, 12, 4, 24, seed=3, lengths=False)
    queue.put(run(cpu, "lstm", arrays, dy, False)["dx"])


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_child_runs_parts_of_its_own():
    """The parent's worker threads do not exist in a forked child (a DataLoader worker, say): the
    child starts its own instead of waiting for them forever."""
    arrays, dy = problem("lstm", 6, 12, 4, 24, seed=3, lengths=False)
    want = run(cpu, "lstm", arrays, dy, False)["dx"]          # the parent's workers are running now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_forward_in_child, args=(queue,))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert np.array_equal(got, want)


STARTS_NOTHING = """
import multiprocessing, numpy as np
import numba.np.ufunc.parallel as numba_parallel
from gpurnn.kernels import cpu
x = np.ones((5, 8, 3), np.float32)
w_ih, w_hh, b = np.ones((16, 3), np.float32), np.ones((16, 4), np.float32), np.zeros(16, np.float32)
h = np.zeros((8, 4), np.float32)
cpu.forward_sequence("lstm", x, h, h, w_ih, w_hh, b, b, None, False)
assert cpu.threads() >= 1
assert not numba_parallel._is_initialized, "Numba's threading layer was started"
multiprocessing.set_start_method("spawn")      # RuntimeError if the start method was fixed
print("ok")
"""


def test_sizing_the_parts_starts_no_thread_layer_and_leaves_multiprocessing_alone():
    """numba.get_num_threads() starts Numba's threading layer and fixes multiprocessing's start
    method; the cpu backend asks Numba's setting instead, until the program itself started it."""
    out = run_child([sys.executable, "-c", STARTS_NOTHING], timeout=300)
    assert out.stdout.strip().endswith("ok")

"""The cpu backend's reused buffers (kernels/workspace.py) and its kernel compilation before a run."""

import time
import weakref

import numpy as np
import pytest

import gpurnn
from gpurnn import training
from gpurnn.kernels import cpu
from gpurnn.kernels.workspace import Workspace


def test_an_array_is_reused_only_once_nothing_refers_to_it():
    ws = Workspace()
    a = ws.empty((3, 5), np.float32)
    first = id(a)
    b = ws.empty((3, 5), np.float32)
    assert b is not a                                   # a is still held
    del a
    assert id(ws.empty((3, 5), np.float32)) == first   # released: handed out again
    view = b[1:]
    b_id = id(b)
    del b
    assert id(view.base) == b_id
    c = ws.empty((3, 5), np.float32)
    assert id(c) != b_id                                # a view keeps its base busy
    assert ws.empty((5, 3), np.float32).shape == (5, 3)             # shape and dtype must match exactly
    assert ws.empty((3, 5), np.float64).dtype == np.float64
    z = ws.zeros((3, 5), np.float32)
    assert not z.any()


def test_the_cache_keeps_at_most_its_limit_and_release_empties_it():
    ws = Workspace(limit_bytes=1000)
    held = [ws.empty((100,), np.float32) for _ in range(4)]     # 400 bytes each
    assert ws.cached_bytes() <= 1000
    assert all(a.shape == (100,) for a in held)                  # forgotten arrays stay valid
    big = ws.empty((1000,), np.float32)                          # over the limit on its own: not kept
    assert big.nbytes == 4000 and ws.cached_bytes() <= 1000
    ws.release()
    assert ws.cached_bytes() == 0


def test_many_shapes_keep_the_cache_within_its_count_and_bytes_the_most_recent_kept():
    """Varying sequence lengths (packed batches) ask for a new shape on nearly every call."""
    ws = Workspace(limit_count=16)
    for n in range(1, 601):
        ws.empty((n,), np.float32)
    assert ws.cached_count() == 16
    assert ws.cached_bytes() == 4 * sum(range(585, 601))       # the 16 handed out last, counted exactly
    ws = Workspace(limit_bytes=10_000)
    for n in range(1, 601):
        ws.empty((n,), np.float64)
    kept, total = 0, 0
    for n in range(600, 0, -1):                                 # the most recent that fit together
        if total + 8 * n > 10_000:
            break
        kept, total = kept + 1, total + 8 * n
    assert (ws.cached_count(), ws.cached_bytes()) == (kept, total)
    ws.release()
    assert (ws.cached_count(), ws.cached_bytes()) == (0, 0)


def test_a_lookup_looks_only_at_arrays_of_its_own_shape_and_dtype():
    ws = Workspace(limit_count=1000)
    a = ws.empty((4, 4), np.float32)
    first = weakref.ref(a)
    held = [ws.empty((4, 4), np.float32) for _ in range(2)]    # busy: looked at, never handed out
    del a
    for n in range(1, 601):
        ws.empty((n, 3), np.float32)
        ws.empty((4, 4), np.float64)
    before = ws.examined
    assert ws.empty((4, 4), np.float32) is first()
    assert ws.examined - before <= 3                            # not the 600 other shapes
    assert all(a.shape == (4, 4) for a in held)


def test_the_least_recently_handed_out_array_goes_first():
    ws = Workspace(limit_count=3)
    refs = {n: weakref.ref(ws.empty((n,), np.float32)) for n in (1, 2, 3)}     # idle once made
    assert ws.empty((1,), np.float32) is refs[1]()             # handed out again: now the most recent
    ws.empty((4,), np.float32)                                  # one too many: (2,) goes, (1,) stays
    assert refs[2]() is None and refs[1]() is not None and refs[3]() is not None
    ws = Workspace(limit_bytes=1200)                            # the byte bound evicts in the same order
    refs = {n: weakref.ref(ws.empty((n,), np.float32)) for n in (100, 101, 99)}
    assert ws.empty((100,), np.float32) is refs[100]()
    ws.empty((50,), np.float32)
    assert refs[101]() is None and refs[100]() is not None and refs[99]() is not None
    assert ws.cached_bytes() == 4 * (100 + 99 + 50)
    with pytest.raises(ValueError, match="limit_count must be at least 1"):
        Workspace(limit_count=0)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_reuse_never_overwrites_what_a_caller_or_a_saved_forward_still_holds(cell):
    """Two forwards before either backward, outputs kept: every result equals a fresh computation."""
    rng = np.random.default_rng(0)
    T, B, I, H = 6, 3, 4, 5

    def layer():
        return gpurnn.layers.recurrent_layer(cell, I, H, backend="cpu", dtype="float64", seed=1)

    xs = [rng.standard_normal((T, B, I)) for _ in range(2)]
    dys = [rng.standard_normal((T, B, H)) for _ in range(2)]
    fresh = []
    for x, dy in zip(xs, dys):
        cpu.WORKSPACE.release()
        m = layer()
        y = m(x)[0].copy()
        dx = m.backward(dy)[0].copy()
        fresh.append((y, dx, {k: v.copy() for k, v in m.grads.items()}))
    a, b = layer(), layer()
    y_a = a(xs[0])[0]
    y_b = b(xs[1])[0]                                   # a's saved state is still waiting for backward
    dx_a = a.backward(dys[0])[0]
    dx_b = b.backward(dys[1])[0]
    for _ in range(3):                                  # later calls must not reach the arrays held here
        layer()(xs[1])[0].sum()
    for (y, dx, grads), got_y, got_dx, m in ((fresh[0], y_a, dx_a, a), (fresh[1], y_b, dx_b, b)):
        np.testing.assert_array_equal(got_y, y)
        np.testing.assert_array_equal(got_dx, dx)
        for k in grads:
            np.testing.assert_array_equal(m.grads[k], grads[k])


@pytest.mark.parametrize("cell,dtype", [("gru", "float64"), ("rnn_relu", "float32")])
def test_compile_kernels_compiles_the_cell_and_dtype_it_is_given(cell, dtype):
    """float64 runs the step kernels one step at a time; float32 runs every step inside forward_rows
    (its argument 4 is x, the step kernels' is xw: both of the layer's dtype)."""
    tiled = cpu.tiled(np.dtype(dtype), None)
    kernel = {"gru": cpu.gru_step_forward, "rnn_relu": cpu.forward_rows if tiled else cpu.rnn_step_forward}[cell]
    cpu.compile_kernels(cell, dtype)
    assert any(np.dtype(str(sig[4].dtype)) == np.dtype(dtype) for sig in kernel.signatures)


class _Model:
    class rnn:
        cell, dtype = "lstm", np.dtype("float32")

    class backend:
        name = "cpu"


def test_a_slow_compile_is_announced_and_a_fast_one_is_not(monkeypatch):
    said = []
    monkeypatch.setattr(cpu, "compile_kernels", lambda cell, dtype: time.sleep(0.3))
    training.compile_kernels(_Model, said.append, announce_after=0.05)
    assert len(said) == 2
    assert said[0].startswith("compiling the CPU kernels for lstm, float32 (first run only")
    assert said[1].startswith("compiled the CPU kernels for lstm, float32 in 0.")
    said.clear()
    monkeypatch.setattr(cpu, "compile_kernels", lambda cell, dtype: None)
    training.compile_kernels(_Model, said.append, announce_after=0.5)
    assert said == []

"""The cpu backend's reused buffers (kernels/workspace.py) and its kernel compilation before a run."""

import time

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
    step = {"gru": cpu.gru_step_forward, "rnn_relu": cpu.rnn_step_forward}[cell]
    cpu.compile_kernels(cell, dtype)
    assert any(np.dtype(str(sig[4].dtype)) == np.dtype(dtype) for sig in step.signatures)


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

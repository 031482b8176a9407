"""Every fast backend against the reference: outputs and every gradient, on odd shapes.

Run under NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_simulator.py does) this file checks the CUDA
kernels in Numba's simulator on tiny shapes.
"""

import numpy as np
import pytest

from conftest import CELLS, FAST_BACKENDS, SIMULATED, host, make_model, random_problem, run_model

# (T, B, I, H, layers, bidirectional, lengths, bias)
SHAPES = [
    (1, 1, 1, 1, 1, False, False, True),       # every dimension one
    (7, 3, 5, 13, 1, False, False, True),      # prime H
    (6, 4, 3, 8, 2, True, True, True),         # stacked, bidirectional, ragged lengths
    (5, 3, 2, 7, 1, True, True, False),        # no biases
    (9, 2, 4, 5, 2, False, True, True),
]
if not SIMULATED:
    SHAPES += [
        (25, 17, 33, 67, 1, False, False, True),   # beyond one CUDA tile in H and B
        (12, 9, 16, 40, 2, True, True, True),
    ]

TOL = {"float64": dict(rtol=1e-9, atol=1e-11), "float32": dict(rtol=2e-4, atol=2e-5)}


def shape_id(s):
    T, B, I, H, L, bi, lens, bias = s
    return f"T{T}B{B}I{I}H{H}L{L}" + ("bi" if bi else "") + ("len" if lens else "") + ("" if bias else "nobias")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backend_matches_reference(backend, cell, shape, dtype, rng):
    T, B, I, H, L, bi, with_lengths, bias = shape
    D = 2 if bi else 1
    problem = random_problem(rng, cell, T, B, I, H, L, D, with_lengths, np.dtype(dtype))
    ref = make_model(cell, I, H, L, bi, bias, backend="reference", dtype="float64", seed=7)
    fast = make_model(cell, I, H, L, bi, bias, backend=backend, dtype=dtype, seed=7)
    fast.load_state_dict(ref.state_dict())
    want = run_model(ref, **{k: (v.astype(np.float64) if k != "lengths" else v) for k, v in problem.items()})
    got = run_model(fast, **problem)
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == np.dtype(dtype), key
        scale = max(1.0, float(np.abs(want[key]).max()))
        tol = TOL[dtype]
        np.testing.assert_allclose(got[key], want[key], rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   err_msg=f"{backend} {cell} {key}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backend_without_loss_gradients_for_state(backend, cell, rng):
    """dy only (no dh_n / dc_n), and state only (no dy): both match the reference."""
    T, B, I, H = 4, 3, 2, 5
    problem = random_problem(rng, cell, T, B, I, H, 1, 1, True)
    ref = make_model(cell, I, H, backend="reference", seed=3)
    fast = make_model(cell, I, H, backend=backend, seed=3)
    for drop in (("dh_n", "dc_n"), ("dy",)):
        p = {k: v for k, v in problem.items() if k not in drop}
        want, got = run_model(ref, **p), run_model(fast, **p)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-11, err_msg=f"{key} without {drop}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backend_is_deterministic(backend, rng):
    """Two identical runs give bit-identical gradients (no atomics on weight gradients)."""
    problem = random_problem(rng, "lstm", 6, 5, 3, 9, 1, 1, True, np.float32)
    m = make_model("lstm", 3, 9, backend=backend, dtype="float32")
    a, b = run_model(m, **problem), run_model(m, **problem)
    for key in a:
        assert np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_writes_to_the_inputs_after_forward_do_not_change_the_gradients(backend, cell, rng):
    """backward uses what forward saw, even when the caller overwrites x, h0, c0 or lengths in between."""
    problem = random_problem(rng, cell, 5, 3, 4, 6, 2, 2, True)
    inputs = {k: problem[k] for k in ("x", "h0", "c0", "lengths", "dy") if k in problem}
    m = make_model(cell, 4, 6, 2, True, backend=backend, seed=2)
    want = {k: v.copy() for k, v in run_model(m, **{k: v.copy() for k, v in inputs.items()}).items()}
    m.zero_grad()
    state = (inputs["h0"], inputs["c0"]) if cell == "lstm" else inputs["h0"]
    m(inputs["x"], state, lengths=inputs["lengths"])
    for key in ("x", "h0", "c0", "lengths"):
        if key in inputs:
            inputs[key][...] = 0 if key != "lengths" else 1
    dx = m.backward(inputs["dy"])[0]
    assert np.array_equal(host(dx), want["dx"])
    for name, g in m.grads.items():
        assert np.array_equal(host(g), want[f"grad/{name}"]), name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_relu_keeps_a_nan_pre_activation(backend, dtype):
    """relu(NaN) is NaN, as in the reference and torch: a diverged run must not look like zeros.

    W_ih x overflows to inf in both units at the first step; at the second, W_hh h = inf - inf."""
    m = make_model("rnn_relu", 1, 2, backend=backend, dtype=dtype)
    sd = m.state_dict()
    big = np.finfo(dtype).max
    sd["weight_ih_l0"][:] = big
    sd["weight_hh_l0"][:] = [[1, -1], [1, -1]]
    sd["bias_ih_l0"][:] = sd["bias_hh_l0"][:] = 0
    m.load_state_dict(sd)
    with np.errstate(all="ignore"):
        y, h_n = m(np.full((2, 1, 1), 10.0, dtype))
    y = y.get() if hasattr(y, "get") else y
    assert np.all(np.isinf(y[0])) and np.all(np.isnan(y[1])), y


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_linear_and_embedding_keep_their_own_copy_of_the_input(backend, rng):
    from gpurnn import Linear
    from gpurnn.model import Embedding
    be = backend.split("-")[0]
    lin = Linear(3, 2, backend=be, dtype="float64", seed=0)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    lin(x)
    want = x.copy()
    x[...] = 0
    lin.backward(dy)
    np.testing.assert_allclose(host(lin.grads["weight"]), dy.T @ want, rtol=1e-12)
    emb = Embedding(5, 2, backend=be, dtype="float64", seed=0)
    ids = np.array([[0, 1], [4, 4]])
    emb(ids)
    ids[...] = 2
    emb.backward(np.ones((2, 2, 2)))
    np.testing.assert_array_equal(host(emb.grads["weight"])[:, 0], [1, 1, 0, 0, 2])

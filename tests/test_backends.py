"""Every fast backend against the reference: outputs and every gradient, on odd shapes.

Run under NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_simulator.py does) this file checks the CUDA
kernels in Numba's simulator on tiny shapes.
"""

import numpy as np
import pytest

from conftest import CELLS, FAST_BACKENDS, SIMULATED, make_model, random_problem, run_model

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

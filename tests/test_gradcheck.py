"""The reference backend against float64 central finite differences: every parameter, dx, dh0, dc0."""

import itertools

import numpy as np
import pytest

from conftest import CELLS, make_model, numeric_grad, random_problem, run_model


def loss_of(m, p):
    """L = Σ y·dy + Σ h_n·dh_n (+ Σ c_n·dc_n): its gradients are exactly the problem's dy, dh_n, dc_n."""
    if m.cell == "lstm":
        y, (h_n, c_n) = m(p["x"], (p["h0"], p["c0"]), lengths=p.get("lengths"))
        return float((y * p["dy"]).sum() + (h_n * p["dh_n"]).sum() + (c_n * p["dc_n"]).sum())
    y, h_n = m(p["x"], p["h0"], lengths=p.get("lengths"))
    return float((y * p["dy"]).sum() + (h_n * p["dh_n"]).sum())


@pytest.mark.parametrize("cell,layers,bidirectional,with_lengths",
                         list(itertools.product(CELLS, [1, 2], [False, True], [False, True])))
def test_reference_gradients_match_finite_differences(cell, layers, bidirectional, with_lengths, rng):
    T, B, I, H = 4, 3, 2, 3
    D = 2 if bidirectional else 1
    m = make_model(cell, I, H, layers, bidirectional, backend="reference", seed=11)
    p = random_problem(rng, cell, T, B, I, H, layers, D, with_lengths)
    if with_lengths:
        p["lengths"] = np.array([4, 1, 3])        # a full row, a one-step row, a middle row
    got = run_model(m, **p)

    def f():
        return loss_of(m, p)

    worst = 0.0
    checks = [(f"grad/{k}", m.params[k]) for k in m.params] + [("dx", p["x"]), ("dh0", p["h0"])]
    if cell == "lstm":
        checks.append(("dc0", p["c0"]))
    for key, array in checks:
        want = numeric_grad(f, array)
        np.testing.assert_allclose(got[key], want, rtol=1e-6, atol=1e-8, err_msg=key)
        worst = max(worst, float(np.abs(got[key] - want).max()))
    assert worst < 1e-7


def test_finite_differences_catch_a_wrong_gradient(rng):
    """The check above has teeth: a gradient off by a swapped gate fails its tolerance."""
    m = make_model("lstm", 2, 3, backend="reference", seed=11)
    p = random_problem(rng, "lstm", 4, 3, 2, 3, 1, 1, False)
    got = run_model(m, **p)["grad/weight_hh_l0"]
    want = numeric_grad(lambda: loss_of(m, p), m.params["weight_hh_l0"])
    swapped = got.copy()
    swapped[[0, 3]] = swapped[[3, 0]]             # rows of the i and f gates, mixed up
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(swapped, want, rtol=1e-6, atol=1e-8)

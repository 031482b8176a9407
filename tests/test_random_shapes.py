"""Fast backends against the reference on shapes drawn at random (hypothesis), float64."""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from conftest import CELLS, FAST_BACKENDS, SIMULATED, make_model, random_problem, run_model  # noqa: E402

MAX = 4 if SIMULATED else 12


@st.composite
def problems(draw):
    return dict(
        cell=draw(st.sampled_from(CELLS)),
        T=draw(st.integers(1, MAX)), B=draw(st.integers(1, MAX)), I=draw(st.integers(1, MAX)),
        H=draw(st.integers(1, MAX if SIMULATED else 40)), L=draw(st.integers(1, 2)),
        bidirectional=draw(st.booleans()), with_lengths=draw(st.booleans()), bias=draw(st.booleans()),
        seed=draw(st.integers(0, 2 ** 16)))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@settings(max_examples=6 if SIMULATED else 40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=problems())
def test_random_shapes_match_reference(backend, case):
    c = case
    D = 2 if c["bidirectional"] else 1
    rng = np.random.default_rng(c["seed"])
    problem = random_problem(rng, c["cell"], c["T"], c["B"], c["I"], c["H"], c["L"], D, c["with_lengths"])
    ref = make_model(c["cell"], c["I"], c["H"], c["L"], c["bidirectional"], c["bias"], backend="reference",
                     seed=c["seed"])
    fast = make_model(c["cell"], c["I"], c["H"], c["L"], c["bidirectional"], c["bias"], backend=backend, seed=c["seed"])
    want, got = run_model(ref, **problem), run_model(fast, **problem)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-11, err_msg=f"{key} {c}")

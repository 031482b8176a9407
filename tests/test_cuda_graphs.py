"""CUDA graphs of the per-step path (kernels/cuda/graphs.py), in the simulator or on a GPU.

A plan replays the launches it captured on its own workspace: the tests check that those are the
launches the layer makes without a plan (kernels, configurations, scalar arguments), that they read
and write the workspace instead of the caller's arrays, and that results with and without plans are
the same bits, for every cell, both directions, ragged lengths and stacks whose layers share a plan.
Then the cache: a plan per shape, made on the second call, bounded, and GPURNN_GRAPHS=0.
"""

import numpy as np
import pytest

from conftest import CELLS, SIMULATED, host, make_model, needs_cuda, random_problem, run_model

pytestmark = needs_cuda


@pytest.fixture
def graphs(monkeypatch):
    """The graphs module, its cache empty, graphs on (whatever GPURNN_GRAPHS the suite runs under)."""
    from gpurnn.kernels.cuda import graphs
    monkeypatch.setenv("GPURNN_GRAPHS", "1")
    graphs.clear()
    yield graphs
    graphs.clear()


def _pointer(a):
    """The address of an array: a CuPy or Numba device array, the simulator's wrapper, NumPy's."""
    if hasattr(type(a), "__cuda_array_interface__") and not hasattr(a, "_ary"):
        return a.__cuda_array_interface__["data"][0]
    return getattr(a, "_ary", a).ctypes.data


def _train(cell, problem, steps, L=2, D=2, I=3, H=5):
    """Results of each of ``steps`` training steps of a fresh stack, and the launches of each."""
    from gpurnn.kernels.cuda import recording
    m = make_model(cell, I, H, L, D == 2, backend="cuda-step", seed=3)
    out = []
    for _ in range(steps):
        with recording() as launches:
            got = run_model(m, **problem)
        out.append((got, launches))
    return out


@pytest.mark.parametrize("cell, lengths", [(cell, True) for cell in CELLS] + [("lstm", False)])
def test_graphs_give_the_bits_of_direct_launches(cell, lengths, graphs, monkeypatch):
    """Two training steps of a 2-layer bidirectional stack (input size = 2H, so both layers share
    each direction's plan: the workspace serves two layers between forward and backward): with plans
    the results are bit for bit those of direct launches, and those match the reference."""
    rng = np.random.default_rng(7)
    T, B, I, H = 4, 3, 10, 5
    problem = random_problem(rng, cell, T, B, I, H, 2, 2, lengths)
    want = run_model(make_model(cell, I, H, 2, True, backend="reference", seed=3), **problem)
    with_plans = _train(cell, problem, 2, I=I, H=H)
    assert len(graphs.plans()) == 2                    # one per direction, shared by both layers
    monkeypatch.setenv("GPURNN_GRAPHS", "0")
    without = _train(cell, problem, 2, I=I, H=H)
    for step, ((got, launches), (ref, direct)) in enumerate(zip(with_plans, without)):
        assert all(not name.startswith("graph") for name, _, _ in direct)
        if step > 0:
            names = sorted({name for name, _, _ in launches})
            assert names == ["accumulate", "graph step_backward", "graph step_forward"], names
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"step {step}: {key}")
            np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-11, err_msg=key)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_plan_captures_the_launches_it_replaces(cell, graphs, monkeypatch):
    """The launches a plan captured are the direct launches of the same call: same kernels in the
    same order, same grids and blocks, same scalar arguments; their arrays are the workspace's and
    the weights it was captured with, never another call's; and replaying twice on one workspace
    changes nothing. The LSTM's steps are split over blocks (a device on which splits cost
    nothing), so its graphs also read and write their own split scratch."""
    from dataclasses import replace
    from gpurnn.kernels import cuda as kc
    from gpurnn.kernels.cuda import recording
    from gpurnn.kernels.cuda.runtime import current_stream, placeholder
    rng = np.random.default_rng(2)
    T, B, I, H = 5, 3, 2, (6 if SIMULATED else 40)
    if cell == "lstm":
        device = replace(kc.current_device(), split_cost_tiles=0)
        monkeypatch.setattr(kc, "current_device", lambda: device)
        assert kc.choose_plan(cell, "float64", B, H, "step", kc.default_geometry(), device).splits > 1
    problem = random_problem(rng, cell, T, B, I, H, 1, 1, True)
    monkeypatch.setenv("GPURNN_GRAPHS", "0")
    m = make_model(cell, I, H, backend="cuda-step", seed=1)
    with recording() as direct:
        ref = run_model(m, **problem)
    monkeypatch.setenv("GPURNN_GRAPHS", "1")
    m = make_model(cell, I, H, backend="cuda-step", seed=1)
    run_model(m, **problem)                       # the first call launches directly
    with recording() as replayed:
        got = run_model(m, **problem)             # the second captures, then replays
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    (p,) = graphs.plans()
    ws = p.workspace
    # its arrays, the split steps' parts and counters (one set a graph) and the layer's weights
    workspace = {_pointer(a) for a in ws.arrays()}
    caller = {_pointer(a) for name, _, args in direct if name.startswith("step") for a in args if hasattr(a, "shape")}
    untouched = {_pointer(placeholder(np.float64, n)) for n in (1, 2, 3)}    # shared: never read or written
    assert not (workspace & caller) - untouched
    for kind in ("forward", "backward"):
        captured = p.graphs[kind].launches
        made = [(launch, args) for name, launch, args in direct if name == f"step_{kind}"]
        assert len(captured) == len(made) == (T if kind == "forward" else T + 1)
        for (name, launch, args), (direct_launch, direct_args) in zip(captured, made):
            assert name == f"step_{kind}"
            assert launch.config[:2] == direct_launch.config[:2]          # grid and block
            scalars = [a for a in args if not hasattr(a, "shape")]
            assert scalars == [a for a in direct_args if not hasattr(a, "shape")]
            arrays = [a for a in args if hasattr(a, "shape")]
            assert arrays and all(_pointer(a) in workspace for a in arrays)
    assert [n for n, _, _ in replayed].count("graph step_forward") == 1
    # Replaying on the same workspace again gives the same outputs: nothing reads what it wrote.
    y = host(ws.y).copy()
    p.graphs["forward"].replay(current_stream())
    np.testing.assert_array_equal(host(ws.y), y)


def test_plans_per_shape_made_on_the_second_call_and_bounded(graphs, monkeypatch):
    rng = np.random.default_rng(4)
    m = make_model("gru", 2, 4, backend="cuda-step", seed=1)
    problem = random_problem(rng, "gru", 3, 2, 2, 4, 1, 1, False)
    run_model(m, **problem)
    (p,) = graphs.plans()
    assert p.graphs == {} and p.workspace is None             # a one-off shape captures nothing
    run_model(m, **problem)
    run_model(m, **problem)
    assert set(p.graphs) == {"forward", "backward"} and graphs.plans() == [p]
    forward_graph = p.graphs["forward"]
    run_model(m, **problem)
    assert p.graphs["forward"] is forward_graph               # captured once, replayed since
    # Another T is another plan; so are lengths given, and the other direction.
    run_model(m, **random_problem(rng, "gru", 4, 2, 2, 4, 1, 1, False))
    run_model(m, **random_problem(rng, "gru", 3, 2, 2, 4, 1, 1, True))
    assert len(graphs.plans()) == 3
    # Bounded: the least recently used plans are dropped.
    monkeypatch.setattr(graphs, "MAX_PLANS", 2)
    run_model(m, **random_problem(rng, "gru", 5, 2, 2, 4, 1, 1, False))
    keys = [q.key for q in graphs.plans()]
    assert len(keys) == 2 and p.key not in keys and keys[-1][2] == 5
    # A model that only infers gets a forward graph and no backward arrays in its workspace.
    x = random_problem(rng, "gru", 6, 2, 2, 4, 1, 1, False)["x"]
    m(x)
    m(x)
    inference = graphs.plans()[-1]
    assert inference.key[2] == 6 and set(inference.graphs) == {"forward"} and inference.workspace.dy is None


def test_graphs_off_and_a_bad_setting(graphs, monkeypatch):
    monkeypatch.setenv("GPURNN_GRAPHS", "0")
    rng = np.random.default_rng(1)
    m = make_model("lstm", 2, 3, backend="cuda-step", seed=1)
    problem = random_problem(rng, "lstm", 2, 2, 2, 3, 1, 1, False)
    run_model(m, **problem)
    run_model(m, **problem)
    assert graphs.plans() == []
    monkeypatch.setenv("GPURNN_GRAPHS", "yes")
    with pytest.raises(ValueError, match=r"GPURNN_GRAPHS='yes'.*expected 1 .* or 0"):
        run_model(m, **problem)
    monkeypatch.setenv("GPURNN_GRAPHS", "1")
    persistent = make_model("lstm", 2, 3, backend="cuda-persistent", seed=1)
    run_model(persistent, **problem)
    run_model(persistent, **problem)
    assert graphs.plans() == []                               # one launch a recursion: nothing to capture

"""The persistent kernels (kernels/cuda/persistent.py), in the simulator or on a GPU.

tests/test_backends.py and tests/test_random_shapes.py already run every cuda case with the
persistent path forced and with auto; these check what a layer test could hide: that the
simulator really runs cooperative grids (the patch of kernels/cuda/simulator.py), that a training
step is a fixed number of launches whatever T, that every on-chip / L2 regime of the plan gives the
reference's results on grids of several blocks whose last block is partial, and determinism.
"""

import re

import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")   # module level: the simulator swaps this global in kernels
from conftest import CELLS, SIMULATED, make_model, needs_cuda, random_problem, run_model  # noqa: E402

pytestmark = needs_cuda


def _kc():
    from gpurnn.kernels import cuda as kc
    return kc


@pytest.fixture(autouse=True)
def _backend_loaded():
    """Import the cuda backend first: in the simulator, that installs kernels/cuda/simulator.py."""
    _kc()


# ---------------------------------------------------------------- the simulator runs cooperative grids
def ring(buf, steps):
    """Block b, at each of ``steps`` steps, reads what its neighbour b+1 wrote at the step before:
    buf[s + 1, b] = buf[s, (b + 1) % n] + 1, with a grid sync between steps. Thread 0 of each block
    writes; every thread syncs."""
    grid = cuda.cg.this_grid()
    b, n = cuda.blockIdx.x, cuda.gridDim.x
    for s in range(steps):
        if cuda.threadIdx.x == 0:
            buf[s + 1, b] = buf[s, (b + 1) % n] + 1
        grid.sync()


def early_return(buf):
    """A cooperative kernel one of whose threads returns before the grid sync the others wait at."""
    if cuda.blockIdx.x == 1 and cuda.threadIdx.x == 0:
        return
    cuda.cg.this_grid().sync()
    buf[cuda.blockIdx.x] = 1.0


def _ring_kernel():
    return cuda.jit(ring)


def _ring_expected(start, steps):
    buf = np.full((steps + 1, len(start)), -100.0)
    buf[0] = start
    for s in range(steps):
        buf[s + 1] = np.roll(buf[s], -1) + 1
    return buf


def _run_ring(kernel, start, steps, threads=2):
    buf = np.full((steps + 1, len(start)), -100.0)
    buf[0] = start
    if SIMULATED:
        kernel[len(start), threads](buf, steps)
        return buf
    import cupy
    d = cupy.asarray(buf)
    kernel[len(start), threads](d, steps)
    return d.get()


def test_cuda_grid_sync_passes_values_between_blocks():
    start, steps = np.array([0.0, 10.0, 20.0]), 4
    got = _run_ring(_ring_kernel(), start, steps)
    np.testing.assert_array_equal(got, _ring_expected(start, steps))


@pytest.mark.skipif(not SIMULATED, reason="about numba-cuda's simulator")
def test_cuda_unpatched_simulator_gets_cooperative_grids_wrong():
    """Without kernels/cuda/simulator.py's patch the simulator runs one block after another, and
    the ring above reads values its neighbour has not written yet: the patch is what makes the
    persistent kernels checkable here."""
    from gpurnn.kernels.cuda import simulator
    start, steps = np.array([0.0, 10.0, 20.0]), 4
    with simulator.unpatched():
        got = _run_ring(_ring_kernel(), start, steps)
    want = _ring_expected(start, steps)
    assert not np.array_equal(got, want)
    wrong = {b for b in range(3) if not np.array_equal(got[:, b], want[:, b])}
    assert len(wrong) >= 2, got       # every block but the last one read ahead of its neighbour


@pytest.mark.skipif(not SIMULATED, reason="about the simulator's grid barrier")
def test_cuda_simulated_grid_sync_that_cannot_complete_raises():
    with pytest.raises(RuntimeError, match="can never reach it"):
        cuda.jit(early_return)[2, 2](np.zeros(2))


# ---------------------------------------------------------------- launches per training step
def _train_launches(cell, T, backend, L=2, D=2, steps=1):
    """The launches of the last of ``steps`` training steps (forward and backward) of a stack."""
    from gpurnn.kernels.cuda import graphs, recording
    graphs.clear()
    rng = np.random.default_rng(T)
    I, B, H = 3, 2, 5
    problem = random_problem(rng, cell, T, B, I, H, L, D, True)
    m = make_model(cell, I, H, L, D == 2, backend=backend, seed=1)
    for _ in range(steps - 1):
        run_model(m, **problem)
    with recording() as launches:
        run_model(m, **problem)
    return [name for name, _launch, _args in launches]


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_cuda_persistent_training_step_launches_do_not_grow_with_T(cell, monkeypatch):
    """One layer and direction: persistent_forward, persistent_backward and the accumulation of
    dW_ih: 3 launches whatever T (at most 4 is the target). The per-step path makes 2T + 2 without
    CUDA graphs; with them, once its plans have seen a call, two graph replays and the accumulation."""
    L, D = 2, 2
    monkeypatch.setenv("GPURNN_GRAPHS", "1")
    for T in (1, 4, 9):
        names = _train_launches(cell, T, "cuda-persistent", L, D)
        expected = ["persistent_forward", "persistent_backward", "accumulate"] * (L * D)
        assert sorted(names) == sorted(expected), (T, names)
        assert len(names) / (L * D) <= 4
        if T == 9:
            continue                  # the step path: T = 1 and 4 show what grows (one layer, two directions)
        graphed = _train_launches(cell, T, "cuda-step", 1, D, steps=2)
        assert sorted(graphed) == sorted(["graph step_forward", "graph step_backward", "accumulate"] * D), graphed
        with monkeypatch.context() as mp:
            mp.setenv("GPURNN_GRAPHS", "0")
            assert len(_train_launches(cell, T, "cuda-step", 1, D, steps=2)) == (2 * T + 2) * D


# ---------------------------------------------------------------- every regime of the plan
def _device_for(cell, dtype, B, H, regime):
    """A modelled device on which the plan of this layer lands in ``regime`` with the simulator's
    small blocks (SIM_GEOMETRY): the shared memory per block is the smallest that gives the wanted
    flags. With the GPU's blocks of 256 threads, the partial sums' static arrays outweigh the
    weights of H = 7 so much that the LSTM and the GRU never land in the middle regimes."""
    from gpurnn.kernels.cuda import SIM_GEOMETRY, plan
    want = {"on-chip": lambda p: p.fwd_w_on_chip and p.bwd_w_on_chip and p.dw_on_chip,
            "dW after the loop": lambda p: p.bwd_w_on_chip and not p.dw_on_chip,
            "L2": lambda p: not (p.fwd_w_on_chip or p.bwd_w_on_chip or p.dw_on_chip)}[regime]
    itemsize = np.dtype(dtype).itemsize
    for smem in range(64, 64 * 1024, 8):
        device = plan.Device(f"model with {smem} B of shared memory a block", sms=3, smem_per_sm=4 * smem + 4096,
                             smem_per_block=smem, l2_bytes=1 << 30, registers=64)
        try:
            geo = SIM_GEOMETRY
            p = plan.choose(cell, itemsize, B, H, device, "persistent", geo.persist_threads, geo.persist_rows)
        except ValueError:      # too little shared memory for even the static arrays
            continue
        if want(p):
            return device, p
    raise AssertionError(f"no modelled device gives {regime} for {cell} H={H}")


@pytest.mark.parametrize("regime", ["on-chip", "dW after the loop", "L2"])
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_persistent_regimes_match_reference(cell, regime, monkeypatch):
    """H = 7 on 3 SMs: blocks of 3, 3 and 1 units; bidirectional, ragged lengths, given states.
    On a GPU too the kernels run with the simulator's small blocks, which the modelled device's
    regimes were chosen for."""
    kc = _kc()
    T, B, I, H = 5, 3, 2, 7
    device, expected = _device_for(cell, "float64", B, H, regime)
    assert expected.blocks == 3 and expected.units == 3
    monkeypatch.setattr(kc, "current_device", lambda: device)
    monkeypatch.setattr(kc, "default_geometry", lambda: kc.SIM_GEOMETRY)
    rng = np.random.default_rng(8)
    problem = random_problem(rng, cell, T, B, I, H, 1, 2, True)
    want = run_model(make_model(cell, I, H, 1, True, backend="reference", seed=3), **problem)
    m = make_model(cell, I, H, 1, True, backend="cuda-persistent", seed=3)
    got = run_model(m, **problem)
    assert [p.algo for p in m.plans] == ["persistent", "persistent"] and m.plans[0] == expected
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-11, err_msg=f"{regime} {key}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_persistent_is_deterministic(cell):
    """Two runs, identical bits: every sum of the kernels has one owner and one order."""
    rng = np.random.default_rng(4)
    problem = random_problem(rng, cell, 6, 5, 3, 8, 2, 2, True, np.float32)
    m = make_model(cell, 3, 8, 2, True, backend="cuda-persistent", dtype="float32", seed=6)
    a, b = run_model(m, **problem), run_model(m, **problem)
    assert all(p.algo == "persistent" and p.blocks > 1 for p in m.plans), m.plans
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_cuda_repr_names_the_algorithm_of_the_last_forward():
    m = make_model("gru", 3, 7, backend="cuda-auto", seed=0)
    assert "algo='auto')" in repr(m) and "last forward" not in repr(m)
    m(np.zeros((2, 2, 3)))
    assert re.search(r"\[last forward: (persistent \(\d+ blocks x \d+ threads|step \()", repr(m)), repr(m)
    s = make_model("gru", 3, 7, backend="cuda-step", seed=0)
    s(np.zeros((2, 2, 3)))
    assert repr(s).endswith("algo='step') [last forward: step (asked for)]"), repr(s)


def test_cuda_auto_takes_the_step_path_from_step_from_batch_rows_while_graphs_are_on(monkeypatch):
    """plan.choose's rule reaches the layers: the batch size and GPURNN_GRAPHS decide it."""
    edge = _kc().plan.STEP_FROM_BATCH
    m = make_model("lstm", 3, 5, backend="cuda-auto", seed=0)

    def algos(B):
        m(np.zeros((2, B, 3)))
        return [p.algo for p in m.plans]

    assert algos(edge - 1) == ["persistent"]
    assert algos(edge) == ["step"]
    monkeypatch.setenv("GPURNN_GRAPHS", "0")
    assert algos(edge) == ["persistent"]

"""The persistent kernels (kernels/cuda/persistent.py), in the simulator or on a GPU.

tests/test_backends.py and tests/test_random_shapes.py already run every cuda case with the
persistent path forced and with auto; these check what a layer test could hide: that the
simulator really runs cooperative grids, flag waits and warp shuffles (the patch of
kernels/cuda/simulator.py) and catches a missing exchange forward and backward, that a training step is a fixed number
of launches whatever T, that every regime of the plan (one block, groups, slices, W_hh in
registers or in shared memory too) gives the reference's results, and determinism.
"""

import re

import numba
import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")   # module level: the simulator swaps this global in kernels
from conftest import CELLS, SIMULATED, host, make_model, needs_cuda, random_problem, run_model  # noqa: E402

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
REGIMES = {
    "one block": lambda p: p.slices == 1 and p.groups == 1,
    "groups of one slice": lambda p: p.slices == 1 and p.groups > 1,
    "slices, W_hh in registers forward": lambda p: p.slices > 1 and p.groups == 1 and p.fwd_registers_only,
    "slices, W_hh in shared memory too": lambda p: p.slices > 1 and not p.fwd_registers_only,
    "groups of slices": lambda p: p.slices > 1 and p.groups > 1,
    "rows staged in chunks": lambda p: p.chunk < p.rows,
}
# A modelled GPU of 8 SMs: room for several groups of several slices with the simulator's blocks.
EIGHT_SMS = dict(name="modelled (8 SMs)", sms=8, smem_per_sm=12 * 1024, smem_per_block=6 * 1024, l2_bytes=1 << 20,
               registers=64)


def _device(smem=6 * 1024):
    from gpurnn.kernels.cuda import plan
    return plan.Device(**dict(EIGHT_SMS, smem_per_block=smem, smem_per_sm=2 * smem))


def _shape_for(cell, dtype, regime):
    """(B, H, device, plan) of the smallest shape whose plan, with the simulator's blocks
    (SIM_GEOMETRY) on the eight-SM model (with less shared memory where it takes that), is in
    ``regime``."""
    from gpurnn.kernels.cuda import SIM_GEOMETRY, plan
    itemsize = np.dtype(dtype).itemsize
    for smem in range(6 * 1024, 256, -256):
        device = _device(smem)
        for H in range(1, 13):
            for B in range(1, 13):
                try:
                    p = plan.choose(cell, itemsize, B, H, device, "persistent", SIM_GEOMETRY)
                except ValueError:
                    continue
                if REGIMES[regime](p):
                    return B, H, device, p
    raise AssertionError(f"no shape gives {regime} for {cell}")


@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_persistent_regimes_match_reference(cell, regime, monkeypatch):
    """Each regime of the plan against the reference, float64 to 1e-12: a stack of two
    bidirectional layers, ragged lengths, given states. On a GPU too the kernels run with the
    simulator's small blocks on the modelled device, which the regimes were found for."""
    kc = _kc()
    B, H, device, expected = _shape_for(cell, "float64", regime)
    monkeypatch.setattr(kc, "current_device", lambda: device)
    monkeypatch.setattr(kc, "default_geometry", lambda: kc.SIM_GEOMETRY)
    T, I = 4, 2
    rng = np.random.default_rng(8)
    problem = random_problem(rng, cell, T, B, I, H, 2, 2, True)
    want = run_model(make_model(cell, I, H, 2, True, backend="reference", seed=3), **problem)
    m = make_model(cell, I, H, 2, True, backend="cuda-persistent", seed=3)
    got = run_model(m, **problem)
    assert m.plans[0] == expected and all(p.algo == "persistent" for p in m.plans), m.plans
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12, err_msg=f"{regime} {key}")


# Geometries other than the simulator's default reach the kernels' less common paths: fewer lanes
# than rows a pass (a lane runs the pointwise math of two rows), more units than teams (a team
# walks two units, the second from shared memory), several register columns of every gate.
ODD = {
    "fewer lanes than rows a pass": (dict(persist_rows=3), 7, 4,
                                     lambda p, geo: p.fwd_lanes < geo.persist_rows),
    "more units than teams": (dict(), 25, 2, lambda p, geo: p.units > geo.persist_threads // p.fwd_lanes),
    "several register columns": (dict(persist_wregs=16), 8, 3,
                                 lambda p, geo: geo.w_registers(8) // 4 > 1 and p.slices > 1),
}


@pytest.mark.parametrize("case", list(ODD))
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_persistent_odd_geometries_match_reference(cell, case, monkeypatch):
    from dataclasses import replace
    kc = _kc()
    changes, H, B, check = ODD[case]
    geo = replace(kc.SIM_GEOMETRY, **changes)
    device = kc.plan.Device(**dict(EIGHT_SMS, sms=3, smem_per_block=24 * 1024, smem_per_sm=48 * 1024))
    monkeypatch.setattr(kc, "current_device", lambda: device)
    monkeypatch.setattr(kc, "default_geometry", lambda: geo)
    rng = np.random.default_rng(5)
    problem = random_problem(rng, cell, 3, B, 2, H, 1, 2, True)
    want = run_model(make_model(cell, 2, H, 1, True, backend="reference", seed=2), **problem)
    m = make_model(cell, 2, H, 1, True, backend="cuda-persistent", seed=2)
    got = run_model(m, **problem)
    assert all(p.algo == "persistent" and check(p, geo) for p in m.plans), m.plans
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12, err_msg=f"{case} {key}")


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_persistent_is_deterministic(cell, monkeypatch):
    """float32, groups of several slices: two runs give identical bits (every sum of the kernels
    has one owner and one order), and both agree with the reference to float32 rounding."""
    kc = _kc()
    monkeypatch.setattr(kc, "current_device", lambda: kc.plan.Device(**EIGHT_SMS))
    monkeypatch.setattr(kc, "default_geometry", lambda: kc.SIM_GEOMETRY)
    rng = np.random.default_rng(4)
    problem = random_problem(rng, cell, 5, 5, 3, 4, 1, 2, True, np.float32)
    m = make_model(cell, 3, 4, 1, True, backend="cuda-persistent", dtype="float32", seed=6)
    a, b = run_model(m, **problem), run_model(m, **problem)
    assert all(p.algo == "persistent" and p.slices > 1 and p.groups > 1 for p in m.plans), m.plans
    want = run_model(make_model(cell, 3, 4, 1, True, backend="reference", dtype="float32", seed=6), **problem)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
        np.testing.assert_allclose(a[key], want[key], rtol=2e-4, atol=2e-5, err_msg=key)


# ---------------------------------------------------------------- the exchange is what makes it right
def _one_layer(cell, monkeypatch, B=1, H=6):
    """A forward and backward of one layer whose plan has several slices, and the reference's."""
    kc = _kc()
    monkeypatch.setattr(kc, "current_device", lambda: kc.plan.Device(**EIGHT_SMS))
    monkeypatch.setattr(kc, "default_geometry", lambda: kc.SIM_GEOMETRY)
    rng = np.random.default_rng(2)
    problem = random_problem(rng, cell, 4, B, 2, H, 1, 1, False)
    want = run_model(make_model(cell, 2, H, backend="reference", seed=1), **problem)
    m = make_model(cell, 2, H, backend="cuda-persistent", seed=1)
    return m, problem, want


def _late_producer(last):
    """A stand-in for persistent.wait_for_group that does not wait, and makes the last slice of
    the group late on purpose: at each of its waits it holds back until every other block has
    passed the wait two steps (passes) later (or the ``last`` one). The others then always read
    what that slice has not written yet: a deterministic missing exchange."""
    import threading
    seen, cond = {}, threading.Condition()

    def no_wait(flags, first, slices, count):
        b = threading.current_thread().blockIdx.x
        with cond:
            seen[b] = max(seen.get(b, 0), count)
            cond.notify_all()
            if b == slices - 1:
                target = min(count + 2, last)
                assert cond.wait_for(lambda: all(seen.get(o, 0) >= target for o in range(slices - 1)), timeout=60)
    return no_wait


@pytest.mark.skipif(not SIMULATED, reason="patches the kernels' Python code, which only the simulator runs")
def test_cuda_simulator_catches_a_block_that_reads_h_before_its_producer_wrote_it(monkeypatch):
    """Forward: without the wait for the group's flags, a block reads the slices of h_{t-1} that
    a late block has not written yet, and the outputs go wrong; with it they are right."""
    from gpurnn.kernels.cuda import persistent
    T = 4
    m, problem, want = _one_layer("gru", monkeypatch)
    got = run_model(m, **problem)
    assert m.plans[0].slices > 1 and m.plans[0].groups == 1, m.plans
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(persistent, "wait_for_group", _late_producer(T - 1))
    y, _h_n = m(problem["x"], problem["h0"])
    assert not np.allclose(host(y), want["y"], rtol=1e-6, atol=1e-6), "the missing forward wait went unnoticed"


@pytest.mark.skipif(not SIMULATED, reason="patches the kernels' Python code, which only the simulator runs")
def test_cuda_simulator_catches_a_block_that_reads_partial_products_before_they_are_written(monkeypatch):
    """Backward: without the wait, a block adds the slices' partial products of dh before a late
    slice wrote them (or reads the ring's other slot), and dh0 and the weight gradients go wrong."""
    from gpurnn.kernels.cuda import persistent
    T = 4
    m, problem, want = _one_layer("gru", monkeypatch)
    m(problem["x"], problem["h0"])                     # forward with the real wait
    monkeypatch.setattr(persistent, "wait_for_group", _late_producer(T))
    m.zero_grad()
    _dx, dh0 = m.backward(problem["dy"], problem["dh_n"])
    assert not np.allclose(host(dh0), want["dh0"], rtol=1e-6, atol=1e-6), "the missing backward wait went unnoticed"


@pytest.mark.skipif(not SIMULATED, reason="patches the kernels' Python code, which only the simulator runs")
def test_cuda_simulated_flag_wait_that_can_never_be_satisfied_raises(monkeypatch):
    """A block that never publishes leaves the others polling forever: on a GPU a hang, in the
    simulator a RuntimeError that names the waiting blocks."""
    from gpurnn.kernels.cuda import persistent
    m, problem, _want = _one_layer("gru", monkeypatch)
    monkeypatch.setattr(persistent, "publish", lambda flags, mine, count: None)
    with pytest.raises(RuntimeError, match="a flag wait can never be satisfied: block"):
        run_model(m, **problem)


def butterfly_sum(a, out, lanes):
    """Each team of ``lanes`` lanes sums its values with shuffles: every lane ends with the sum."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    v = a[i]
    off = lanes // 2
    while off > 0:
        v += cuda.shfl_xor_sync(0xFFFFFFFF, v, off)
        off //= 2
    out[i] = v


def shift_down(a, out):
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    out[i] = cuda.shfl_down_sync(0xFFFFFFFF, a[i], 3)


def _launch(kernel, blocks, threads, *arrays):
    if SIMULATED:
        kernel[blocks, threads](*arrays)
        return arrays[-1] if len(arrays) == 2 else arrays[1]
    import cupy
    dev = [cupy.asarray(x) if isinstance(x, np.ndarray) else x for x in arrays]
    kernel[blocks, threads](*dev)
    return dev[1].get()


def test_cuda_warp_shuffles_exchange_lane_values():
    """The simulator's warp shuffles (which numba-cuda's simulator lacks), against NumPy: a
    butterfly over teams of 4 lanes in blocks of one warp, and shfl_down_sync (a lane past the
    warp's end keeps its own value)."""
    a = np.arange(64, dtype=np.float64) ** 1.5
    got = _launch(cuda.jit(butterfly_sum), 2, 32, a, np.zeros(64), 4)
    np.testing.assert_allclose(got, np.repeat(a.reshape(16, 4).sum(1), 4), rtol=1e-14)
    got = _launch(cuda.jit(shift_down), 2, 32, a, np.zeros(64))
    want = a.copy().reshape(2, 32)
    want[:, :29] = want[:, 3:]
    np.testing.assert_array_equal(got, want.ravel())


def reads_unwritten_shared(out):
    sm = cuda.shared.array(4, numba.float64)
    if cuda.threadIdx.x == 0:
        sm[0] = 1.0
    cuda.syncthreads()
    out[cuda.threadIdx.x] = sm[cuda.threadIdx.x]


@pytest.mark.skipif(not SIMULATED, reason="about the simulator's shared memory")
def test_cuda_simulated_shared_memory_starts_poisoned():
    """A kernel that reads shared memory it never wrote sees NaN, not the simulator's zeros."""
    out = np.zeros(4)
    cuda.jit(reads_unwritten_shared)[1, 4](out)
    assert out[0] == 1.0 and np.isnan(out[1:]).all(), out


def test_cuda_repr_names_the_algorithm_of_the_last_forward():
    m = make_model("gru", 3, 7, backend="cuda-auto", seed=0)
    assert "algo='auto')" in repr(m) and "last forward" not in repr(m)
    m(np.zeros((2, 2, 3)))
    assert re.search(r"\[last forward: (persistent \(\d+ groups x \d+ slices = \d+ blocks x \d+ threads|step \()",
                     repr(m)), repr(m)
    s = make_model("gru", 3, 7, backend="cuda-step", seed=0)
    s(np.zeros((2, 2, 3)))
    want = r"algo='step'\) \[last forward: step \(asked for(, reduction in \d+ parts)?\)\]$"
    assert re.search(want, repr(s)), repr(s)


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

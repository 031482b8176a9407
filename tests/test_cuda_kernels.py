"""The CUDA kernels one by one, on shapes that cross every tile boundary (simulator or GPU).

tests/test_backends.py checks whole layers against the reference; these check the pieces that a
layer test could hide: the weight-gradient reduction on its own (it adds, it covers every row of
N = T*B, every tile edge), and that a block geometry is a parameter that does not change results.
"""

import numpy as np
import pytest

from conftest import SIMULATED, FakeStream, make_model, needs_cuda, random_problem, run_model

pytestmark = needs_cuda


def _kernels():
    from gpurnn.kernels import cuda as kc
    return kc


def _device(a, xp):
    return xp.asarray(a)


def _accumulate(args, grads, geo, splits):
    """accumulate.py's launch on its own, with ``splits`` parts of the N rows."""
    kc = _kernels()
    from gpurnn.kernels.cuda import accumulate
    kernels = kc.compiled_kernels("gru", args[0].dtype.name, geo)
    accumulate.accumulate_grads(kernels, *args, grads, geo, kc.runtime.current_stream(), splits=splits)


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


@pytest.mark.parametrize("splits", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_accumulate_adds_weight_gradients(dtype, bias, splits):
    """Every dimension off its tile, and the N rows in 1, 2 (8 + 3 rows) or 3 parts (4 + 4 + 3),
    whose last block adds the partial tiles (split.py): against NumPy, and bit-identical twice."""
    kc = _kernels()
    geo = kc.default_geometry()
    tm = geo.acc_threads * geo.acc_regs
    xp = kc.runtime.xp_of()
    rng = np.random.default_rng(5)
    N, GH, I, H = 2 * geo.acc_k + 3, 3 * tm + 1, tm + 1, 2 * tm - 1   # every dimension off its tile
    dg_x, dg_h = rng.standard_normal((N, GH)), rng.standard_normal((N, GH))
    x, hp = rng.standard_normal((N, I)), rng.standard_normal((N, H))
    start = {k: rng.standard_normal(s) for k, s in
             dict(w_ih=(GH, I), w_hh=(GH, H), b_ih=(GH,), b_hh=(GH,)).items() if bias or k[0] == "w"}
    runs = []
    for _ in range(2):
        grads = {k: _device(v.astype(dtype), xp) for k, v in start.items()}
        args = [_device(a.astype(dtype), xp) for a in (dg_x, x, dg_h, hp)]
        _accumulate(args, grads, geo, splits)
        runs.append({k: _host(v) for k, v in grads.items()})
    want = dict(w_ih=start["w_ih"] + dg_x.T @ x, w_hh=start["w_hh"] + dg_h.T @ hp)
    if bias:
        want.update(b_ih=start["b_ih"] + dg_x.sum(0), b_hh=start["b_hh"] + dg_h.sum(0))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == "float64" else dict(rtol=1e-4, atol=1e-4)
    assert set(runs[0]) == set(want)
    for k in want:
        np.testing.assert_allclose(runs[0][k], want[k], err_msg=k, **tol)
        np.testing.assert_array_equal(runs[1][k], runs[0][k], err_msg=f"{k}: not deterministic")
    if splits > 1:     # the counters were left at zero for the next launch
        from gpurnn.kernels.cuda import split
        assert not _host(split.scratch(kc.runtime.current_stream()).counters).any()


@pytest.mark.parametrize("splits", [1, 3])
def test_cuda_accumulate_bias_sums_are_exact(splits):
    """db over N rows is the float64 sum rounded once to float32, at the largest N the simulator
    takes in a few seconds (a GPU takes 2**20 rows). Column 0 of dG is 1 followed by N - 1
    values of 2**-25, each below half an ulp of 1: a float32 running sum stays at 1 (6e-5 low at
    N = 2048); the other columns are random positive, where a running sum drifts by about √N ulps.
    The kernel adds each row into a float64 sum and the parts of a split as float64 (in two
    float32 halves), so its error is at most N·2**-53 of Σ|dG| before the one rounding to float32:
    within one float32 rounding of the true sum for N up to about 2**28 rows of one sign."""
    kc = _kernels()
    geo = kc.default_geometry()
    tm = geo.acc_threads * geo.acc_regs
    xp = kc.runtime.xp_of()
    rng = np.random.default_rng(8)
    N = 2048 if SIMULATED else 1 << 20
    GH, I, H = tm + 1, 1, 1
    dg = [rng.random((N, GH), dtype=np.float32) for _ in range(2)]
    for d in dg:
        d[:, 0] = 2.0 ** -25
        d[0, 0] = 1.0
    x, hp = np.ones((N, I), np.float32), np.ones((N, H), np.float32)
    grads = {k: _device(np.zeros(s, np.float32), xp) for k, s in
             dict(w_ih=(GH, I), w_hh=(GH, H), b_ih=(GH,), b_hh=(GH,)).items()}
    _accumulate([_device(a, xp) for a in (dg[0], x, dg[1], hp)], grads, geo, splits)
    for k, d in (("b_ih", dg[0]), ("b_hh", dg[1])):
        want = d.sum(axis=0, dtype=np.float64)
        got = _host(grads[k]).astype(np.float64)
        err = np.abs(got - want) / want
        assert np.all(err <= 2.0 ** -24), f"{k}: relative errors {err} above one float32 rounding"


def test_cuda_accumulate_splits_where_it_pays():
    """plan.splits on an H100: fewest_rounds over tiles of acc_k rows, parts of at least
    SPLIT_MIN_ROWS rows, a split costing S + 1 row tiles. I = H = 256 (LSTM, 4 x 8 = 32 tiles of
    dW, 8192 rows): 8 parts, 256 blocks in one round of 264, against 32 blocks walking 1024 row
    tiles; I = H = 1024 (16 x 32 = 512 tiles): already two rounds, one part."""
    from gpurnn.kernels.cuda import GPU_GEOMETRY, plan
    from gpurnn.kernels.cuda.accumulate import output_tiles
    dev = plan.H100
    assert output_tiles(256, 256, 1024, GPU_GEOMETRY) == 32
    assert plan.splits(128 * 64, 32, 4, dev) == 8
    assert plan.splits(128 * 64, output_tiles(1024, 1024, 4096, GPU_GEOMETRY), 4, dev) == 1
    assert plan.splits(600, 32, 4, dev) == 1                          # 600 rows: one part of 512 at most
    assert plan.splits(3 * plan.SPLIT_MIN_ROWS, 1, 4, dev) == 3       # capped by the rows


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_cuda_split_steps_match_unsplit_and_the_reference(cell, dtype, monkeypatch):
    """The per-step path with each step's reduction split over blocks (on the simulated device
    with splits costing nothing, the plan splits as far as the k tiles go: in the simulator
    H = 9 in tiles of 4, 3 parts forward; on a GPU H = 61 in tiles of 16, 2 parts; ragged
    lengths) against the same layer unsplit (a device on which a split costs more than it saves)
    and the reference; split, bit-identical twice."""
    from dataclasses import replace
    kc = _kernels()
    rng = np.random.default_rng(21)
    T, B, I, H = 3, 3, 2, (9 if SIMULATED else 61)
    problem = random_problem(rng, cell, T, B, I, H, 1, 1, True, np.dtype(dtype))
    ref = make_model(cell, I, H, backend="reference", seed=6)
    want = run_model(ref, **{k: (v.astype(np.float64) if k != "lengths" else v) for k, v in problem.items()})
    plans, runs = {}, {}
    for cost in (0, 10 ** 6):
        device = replace(kc.plan.SIMULATED, split_cost_tiles=cost)
        monkeypatch.setattr(kc, "current_device", lambda device=device: device)
        m = make_model(cell, I, H, backend="cuda-step", dtype=dtype, seed=6)
        runs[cost] = [run_model(m, **problem) for _ in range(2 if cost == 0 else 1)]
        plans[cost] = kc.choose_plan(cell, dtype, B, H, "step", kc.default_geometry(), device)
    assert plans[0].splits == (3 if SIMULATED else 2) and plans[10 ** 6].splits == 1, plans
    (split, again), (whole,) = runs[0], runs[10 ** 6]
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == "float64" else dict(rtol=2e-4, atol=2e-5)
    for key in want:
        np.testing.assert_array_equal(split[key], again[key], err_msg=f"{key}: not deterministic")
        np.testing.assert_allclose(split[key], want[key], err_msg=key, **tol)
        np.testing.assert_allclose(split[key], whole[key], err_msg=key, **tol)


@pytest.mark.parametrize("backend", ["cuda-auto", "cuda-step"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_geometry_is_a_parameter(cell, backend, monkeypatch):
    """Odd block shapes (threads, and outputs a thread owns, as parameters) give the same layer
    results as the reference: on the path auto picks (persistent here: 8 threads a block, 3 batch
    rows a thread) and on the per-step path (3 x 2 x 3 threads, each 3 units x 3 rows, k tiles of 5
    shared by 3 slices;
    the accumulation kernel's threads 3 x 3 outputs in runs of 3)."""
    kc = _kernels()
    rng = np.random.default_rng(11)
    T, B, I, H = 4, 5, 3, 7
    problem = random_problem(rng, cell, T, B, I, H, 1, 2, True)
    ref = make_model(cell, I, H, 1, True, backend="reference", seed=2)
    want = run_model(ref, **problem)
    odd = kc.Geometry(step_h=3, step_rh=3, step_rh64=3, step_b=2, step_rb=3, step_k=5, step_kz=3, acc_threads=2,
                      acc_regs=3, acc_k=5, vec=3, persist_threads=8, persist_rows=3)
    monkeypatch.setattr(kc, "default_geometry", lambda: odd)
    got = run_model(make_model(cell, I, H, 1, True, backend=backend, seed=2), **problem)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-11, err_msg=key)


def test_cuda_launch_config():
    kc = _kernels()
    assert kc.launch_config(1, 1, (32, 8)) == ((1, 1), (32, 8))
    assert kc.launch_config(65, 17, (32, 8)) == ((3, 3), (32, 8))
    assert kc.ceil_div(64, 32) == 2 and kc.ceil_div(65, 32) == 3


def test_cuda_backward_on_another_stream(monkeypatch):
    """Forward on one stream, backward on another: backward first waits for forward's stream, and
    forward's stream then waits for backward (whose reads of the saved arrays its memory pool must
    not overtake). On a GPU both are real non-blocking CuPy streams, so nothing but these waits
    orders them, and a forward whose steps take the GPU longer than the host takes to launch them
    is still running when backward starts: a missing wait shows as wrong gradients. The simulator
    has no streams, so there fake streams record the waits and the gradients are checked as well."""
    import contextlib

    kc = _kernels()
    rng = np.random.default_rng(3)
    T, B, I, H = (3, 2, 2, 5) if SIMULATED else (64, 128, 64, 512)   # float64: 0.27 GFLOP a step
    problem = random_problem(rng, "lstm", T, B, I, H, 1, 1, True)
    want = run_model(make_model("lstm", I, H, backend="reference", seed=4), **problem)
    m = make_model("lstm", I, H, backend="cuda", seed=4)
    waits = []
    rt = kc.runtime
    real_wait = rt.wait

    def spy(waiter, producer):
        if waiter is not None and producer is not None and waiter.ptr != producer.ptr:
            waits.append((waiter.ptr, producer.ptr))
        real_wait(waiter, producer)

    monkeypatch.setattr(rt, "wait", spy)
    if SIMULATED:
        streams = [FakeStream(11), FakeStream(22)]
        current = {"stream": None}
        monkeypatch.setattr(rt, "current_stream", lambda: current["stream"])
        monkeypatch.setattr(rt, "numba_stream", lambda s: 0)

        @contextlib.contextmanager
        def on(s):
            current["stream"] = s
            yield
            current["stream"] = None
    else:
        import cupy
        streams = [cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)]
        on = lambda s: s  # noqa: E731  (a CuPy stream is its own context manager)
        cupy.cuda.Device().synchronize()    # the weights, copied in on the default stream, are there

    with on(streams[0]):
        m.zero_grad()
        y, (h_n, c_n) = m(problem["x"], (problem["h0"], problem["c0"]), lengths=problem["lengths"])
    with on(streams[1]):
        dx, (dh0, dc0) = m.backward(problem["dy"], (problem["dh_n"], problem["dc_n"]))
        got = dict(dx=dx, dh0=dh0, dc0=dc0, **{f"grad/{k}": v for k, v in m.grads.items()})
        got = {k: (v.get() if hasattr(v, "get") else np.asarray(v)) for k, v in got.items()}
    p0, p1 = streams[0].ptr, streams[1].ptr
    assert (p1, p0) in waits, "backward did not wait for forward's stream"
    assert (p0, p1) in waits, "forward's stream does not wait for backward's reads"
    if SIMULATED:
        assert streams[1].waited_for == [("event on", p0)] and streams[0].waited_for == [("event on", p1)]
    for key in got:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-11, err_msg=key)

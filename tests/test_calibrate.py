"""The calibration kernels (kernels/cuda/calibrate.py), in the simulator or on a GPU: each computes
what its docstring says, on tiny grids (a figure of benchmarks/calibrate.py measures only what its
kernel really did); and compiled for sm_90 without a GPU, the register array kernel keeps its 128
floats in registers and every poll stays inside its loop.

On a machine without a GPU the kernel tests run in a child process under NUMBA_ENABLE_CUDASIM=1
(``test_kernels_in_the_simulator``); the compile test runs the compiler in a child process of its own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")   # module level: the simulator swaps this global in kernels
import gpurnn  # noqa: E402
from conftest import SIMULATED, run_child  # noqa: E402
from gpurnn.kernels.report import MISSING_TOOLCHAIN  # noqa: E402

needs_cuda = pytest.mark.skipif(
    not gpurnn.cuda_status()[0],
    reason=f"{gpurnn.cuda_status()[1]}; test_kernels_in_the_simulator runs these in the simulator")


def _calibrate():
    """The kernels, the cuda backend imported first: in the simulator that installs its patches."""
    from gpurnn.kernels import cuda as _  # noqa: F401
    from gpurnn.kernels.cuda import calibrate
    return calibrate


def _jit(name):
    return cuda.jit(getattr(_calibrate(), name))


def _zeros(shape, dtype):
    return cuda.to_device(np.zeros(shape, dtype))


@needs_cuda
@pytest.mark.parametrize("blocks, threads", [(3, 4), (3, 2)])
def test_grid_sync_is_a_barrier_of_the_whole_grid(blocks, threads):
    """With the check on, no block ever finds its neighbour a round behind after a sync."""
    seen, lag, cycles = _zeros(blocks, np.int32), _zeros(blocks, np.int32), _zeros(1, np.int64)
    _jit("grid_sync")[blocks, threads](3, 1, seen, lag, cycles)
    assert (seen.copy_to_host() == 3).all() and (lag.copy_to_host() == 0).all()
    assert cycles.copy_to_host()[0] > 0


@needs_cuda
@pytest.mark.parametrize("blocks, threads", [(3, 4), (3, 2)])     # 2 threads: a poller walks two flags
def test_flag_exchange_leaves_every_flag_at_the_last_round(blocks, threads):
    flags, cycles = _zeros(blocks, np.int32), _zeros(1, np.int64)
    _jit("flag_exchange")[blocks, threads](4, flags, cycles)
    assert flags.copy_to_host().tolist() == [4] * blocks
    assert cycles.copy_to_host()[0] > 0


@needs_cuda
@pytest.mark.parametrize("blocks, threads", [(3, 4), (3, 2)])
def test_tagged_exchange_reads_every_value_of_every_round(blocks, threads):
    """Each block adds up the value k + r of every block k at every round r, each read once, from
    the word tagged r; the buffers end with the last two rounds' words."""
    R = 5
    words, sums, cycles = _zeros(2 * blocks, np.int64), _zeros((blocks, min(32, threads)), np.int64), \
        _zeros(1, np.int64)
    _jit("tagged_exchange")[blocks, threads](R, words, sums, cycles)
    want = sum(k + r for r in range(1, R + 1) for k in range(blocks))
    assert sums.copy_to_host().sum(axis=1).tolist() == [want] * blocks
    got = words.copy_to_host().reshape(2, blocks)
    for r in (R - 1, R):
        assert got[r % 2].tolist() == [(r << 32) | (k + r) for k in range(blocks)]
    assert cycles.copy_to_host()[0] > 0


@needs_cuda
@pytest.mark.parametrize("loads", [0, 1, 21, 40])
def test_pointer_chase_ends_where_the_chain_leads(loads):
    line = _calibrate().LINE_INTS
    rng = np.random.default_rng(3)
    links = 16
    order = np.concatenate([[0], 1 + rng.permutation(links - 1)])
    chain = np.zeros(links * line, np.uint32)
    chain[order * line] = np.roll(order, -1) * line
    j = 0
    for _ in range(loads):
        j = int(chain[j])
    out, cycles = _zeros(1, np.uint32), _zeros(1, np.int64)
    _jit("pointer_chase")[1, 1](cuda.to_device(chain), loads, out, cycles)
    assert int(out.copy_to_host()[0]) == j
    assert j == order[loads % links] * line          # the chain is one cycle through every link


@needs_cuda
def test_register_array_sums_what_it_loaded():
    """out[i] = Σ_k w[k, i] · Σ_it h_it, for every thread of a grid whose last block is partial."""
    floats = _calibrate().REG_FLOATS
    N, threads, iters, step = 7, 4, 3, 0.25
    w = np.random.default_rng(0).standard_normal((floats, N)).astype(np.float32)
    out = cuda.to_device(np.full(N, np.nan, np.float32))
    _jit("register_array")[2, threads](cuda.to_device(w), iters, np.float32(step), out)
    h_sum = sum(1 + step * it for it in range(iters))
    np.testing.assert_allclose(out.copy_to_host(), w.astype(np.float64).sum(axis=0) * h_sum, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(SIMULATED, reason="already in the simulator: the kernel tests run directly")
def test_kernels_in_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = run_child([sys.executable, "-m", "pytest", __file__, "-q", "-rs", "-p", "no:cacheprovider", "-p",
                      "no:xdist", "-k", "not in_the_simulator and not compiled"], timeout=600, env=env,
                     cwd=Path(__file__).parent)
    assert "11 passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-3000:]


# ---------------------------------------------------------------- compiled, without a GPU
COMPILE = """
import json, sys
from numba import cuda
from gpurnn.kernels import report
from gpurnn.kernels.cuda import calibrate
missing = report.missing_toolchain()
if missing:
    print(missing, file=sys.stderr)
    sys.exit(report.MISSING_TOOLCHAIN)
device = report._TargetDevice()
report._patch_current_device(device)
rows = {}
for name, (fn, sig) in calibrate.build().items():
    ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
    log, cubin = report.link(ptx, (9, 0))
    sass = report.disassemble(cubin)
    instructions, labels = report.kernel_sass(sass, name)
    loops = [(labels[t], a) for a, op, rest in instructions if op.startswith("BRA")
             for t in labels if "(" + t + ")" in rest and labels[t] <= a]
    polls = sum(1 for a, op, _ in instructions if op.startswith("LDG")
                and any(lo <= a <= hi for lo, hi in loops))
    rows[name] = dict(report.parse_log(log, name), **report.hot_loop(sass, name), loads_in_loops=polls)
print(json.dumps(rows))
"""


@pytest.mark.slow
@pytest.mark.skipif(SIMULATED, reason="the compiler cannot run in the simulator's process")
def test_compiled_for_sm_90():
    """The register array kernel keeps its 128 floats in registers at sm_90: no local memory, no
    stack, no spills, and all 128 FMAs of an iteration in one loop body (fully unrolled). Every
    kernel compiles without local memory, and the exchanges' polls are loads inside loops (the
    compiler did not hoist a volatile load out of its wait)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode == MISSING_TOOLCHAIN:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(proc.stdout)
    reg = rows["register_array"]
    assert reg["local"] == 0 and reg["stack"] == 0 and reg["spill_stores"] == reg["spill_loads"] == 0, reg
    assert reg["fma"] == 128 and 128 < reg["registers"] <= 255, reg
    for name, r in rows.items():
        assert r["local"] == 0 and r["spill_stores"] == 0, (name, r)
    for name in ("flag_exchange", "tagged_exchange", "pointer_chase"):
        assert rows[name]["loads_in_loops"] >= 1, (name, rows[name])

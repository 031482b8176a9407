"""Every CUDA kernel compiles to SASS for sm_80 and sm_90, without a GPU, and spills nothing; the
persistent path's limits on an A100 and an H100 follow from the compiled kernels' resources.

Runs ``python -m gpurnn.kernels.report --json`` in a subprocess (the compiler cannot share a
process with the simulator) and checks each row of its output.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import CELLS, SIMULATED
from gpurnn.kernels.report import MISSING_TOOLCHAIN

KERNELS = ("step_forward", "step_backward", "persistent_forward", "persistent_backward")


@pytest.mark.skipif(SIMULATED, reason="the compiler cannot run in the simulator's process")
def test_every_kernel_compiles_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-m", "gpurnn.kernels.report", "--json"], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == MISSING_TOOLCHAIN:
        pytest.skip(proc.stderr.strip())
    start = proc.stdout.find("{")
    assert start >= 0, f"the report printed no JSON (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(proc.stdout[start:])
    rows = result["rows"]
    assert result["toolchain"].startswith("numba-cuda "), result["toolchain"]   # the version that compiled

    want = {(k, c, d, t) for d in ("float32", "float64") for t in ("sm_80", "sm_90")
            for k, c in [("accumulate", "*")] + [(n, c) for c in CELLS for n in KERNELS]}
    got = {(r["kernel"], r["cell"], r["dtype"], r["target"]) for r in rows}
    assert got == want, f"missing {sorted(want - got)}, unexpected {sorted(got - want)}"
    for r in rows:
        name = f"{r['kernel']} {r['cell']} {r['dtype']} {r['target']}"
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{name} spills: {r}"
        assert r["stack"] == 0 and r["local"] == 0, f"{name} uses local memory: {r}"
        # Only the grid sync's call into the device runtime may add a frame, of a few bytes.
        assert r["call_stack"] == 0 or (r["kernel"].startswith("persistent") and r["call_stack"] <= 64), r
        assert 0 < r["registers"] <= 255, f"{name}: {r}"
        assert r["shared"] <= 48 * 1024, f"{name} needs more than 48 KiB of static shared memory: {r}"
    assert proc.returncode == 0, proc.stderr[-4000:]

    limits = {(r["device"].split()[0], r["cell"], r["dtype"]): r for r in result["persistent_limits"]}
    assert set(limits) == {(d, c, t) for d in ("A100", "H100") for c in CELLS for t in ("float32", "float64")}
    for (device, cell, dtype), r in limits.items():
        regs = max(x["registers"] for x in rows if x["kernel"].startswith("persistent") and x["cell"] == cell
                   and x["dtype"] == dtype and x["target"] == {"A100": "sm_80", "H100": "sm_90"}[device])
        assert r["registers"] == regs, r
        assert r["largest_grid"] == {"A100": 108, "H100": 132}[device], r      # one block per SM
        assert 0 < r["largest_hidden_dw_on_chip"] <= r["largest_hidden_w_on_chip"] <= r["largest_hidden"], r
    # The shapes the persistent path is for: float32 LSTMs of H 256-1024 keep W_hh on-chip on an H100.
    assert limits[("H100", "lstm", "float32")]["largest_hidden_w_on_chip"] >= 1024

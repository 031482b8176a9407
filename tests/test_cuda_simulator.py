"""The CUDA backend in Numba's simulator: every cuda case of the backend tests, in a subprocess.

The simulator (NUMBA_ENABLE_CUDASIM=1) must be chosen before Numba is imported, and cannot share a
process with the real compiler, so the cuda cases of the files in FILES (the backends against the
reference, the kernels, the syncs and allocations of a training step, the layers' torch.nn
conveniences, gpurnn.torch against torch.nn, the half-precision layers, the tensor cores) run in a child pytest,
each algorithm of the cuda backend (step, persistent, auto) on every case. The test fails when the
child fails, and when it ran no cuda test at all (nothing selected would otherwise look like
success).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SIMULATED

TESTS = Path(__file__).resolve().parent
FILES = ["test_backends.py", "test_contract.py", "test_random_shapes.py", "test_cuda_kernels.py",
         "test_cuda_persistent.py", "test_cuda_graphs.py", "test_cuda_syncs.py", "test_layers_api.py",
         "test_torch_bridge.py", "test_proj.py", "test_torch_modules.py", "test_half_cuda.py", "test_torch_half.py",
         "test_mma.py"]


# The cuda cases in four children, so that a parallel run (pytest -n) spreads them over its
# workers: the step algorithm's, split by cell (the slowest in the simulator), the persistent
# algorithm's, and the rest (auto, the kernels alone). The -k expressions split the cuda cases
# between them, none left out, none run twice. Each part's least count is its share of the cuda
# cases of tests/test_backends.py alone: fewer passed means cases stopped running.
PARTS = {"step, lstm and gru": ("cuda and step and (lstm or gru)", 24),
         "step, the rnns": ("cuda and step and not (lstm or gru)", 28),
         "persistent": ("cuda and persistent and not step", 52),
         "auto and the rest": ("cuda and not step and not persistent", 52)}


@pytest.mark.slow
@pytest.mark.skipif(SIMULATED, reason="already in the simulator: the cuda cases run directly")
@pytest.mark.parametrize("part", list(PARTS))
def test_cuda_backend_in_simulator(part):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    files = [str(TESTS / f) for f in FILES if (TESTS / f).exists()]
    select, least = PARTS[part]
    cmd = [sys.executable, "-m", "pytest", *files, "-k", select, "-q", "-rs", "-p", "no:cacheprovider",
           "-p", "no:xdist"]
    proc = subprocess.run(cmd, cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    tail = out[-6000:]
    assert proc.returncode != 5, f"the simulator run selected no test:\n{tail}"
    assert proc.returncode == 0, f"the simulator run failed (exit {proc.returncode}):\n{tail}"
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= least, f"too few cuda tests passed in the simulator:\n{tail}"
    # A skipped cuda case would hide a kernel that never ran; only an optional test tool may be missing.
    skips = [ln for ln in out.splitlines() if ln.startswith("SKIPPED") and "hypothesis" not in ln]
    assert not skips, "cuda tests were skipped in the simulator:\n" + "\n".join(skips)

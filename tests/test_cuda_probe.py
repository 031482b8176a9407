"""The CUDA probe behind cuda_status() and backend="auto": cheap where there is no driver, asked
once per process."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_child

import gpurnn
from gpurnn import backend


def test_the_driver_is_looked_for_where_numba_cuda_looks(monkeypatch):
    monkeypatch.setenv("NUMBA_CUDA_DRIVER", "/opt/cuda/libcuda.so.999")
    assert backend._driver_candidates() == ["/opt/cuda/libcuda.so.999"]
    monkeypatch.delenv("NUMBA_CUDA_DRIVER")
    if sys.platform.startswith("linux"):
        assert backend._driver_candidates()[:2] == ["libcuda.so", "libcuda.so.1"]
        assert "/usr/lib64/libcuda.so.1" in backend._driver_candidates()


@pytest.mark.skipif(backend._driver_loads() or backend.cuda_simulated(), reason="a CUDA driver is installed here")
def test_without_a_driver_the_probe_never_imports_numba_cuda(tmp_path):
    """No driver, no GPU: cuda_status answers without importing numba-cuda, which takes from a few
    tenths of a second to seconds (every command with --backend auto paid it)."""
    code = ("import sys, gpurnn; s = gpurnn.cuda_status(); print(s); "
            "assert not s[0] and 'no CUDA driver' in s[1], s; "
            "assert 'numba.cuda' not in sys.modules, 'numba.cuda was imported'; "
            "assert gpurnn.get_backend('auto').name == 'cpu'; assert 'numba.cuda' not in sys.modules")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "NUMBA_CUDA_DRIVER")}
    run_child([sys.executable, "-c", code], timeout=60, cwd=tmp_path, env=env)


def test_a_driver_path_that_does_not_load_means_no_cuda(monkeypatch):
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setenv("NUMBA_CUDA_DRIVER", str(Path(np.__file__).parent / "no-such-libcuda.so"))
    backend._probe_cuda.cache_clear()
    try:
        usable, reason = gpurnn.cuda_status()
        assert not usable and "no CUDA driver was found" in reason
        assert gpurnn.cuda_status() is gpurnn.cuda_status()        # asked once, kept
    finally:
        backend._probe_cuda.cache_clear()

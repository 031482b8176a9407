"""The host side of the cuda backend that no simulator run reaches: which Numba stream a CuPy
stream maps to, the waits between streams, the launch-warning filter, and how device functions
are compiled where numba-cuda lacks ``forceinline``. Runs anywhere: nothing here launches a kernel.
"""

import types
import warnings

import pytest

pytest.importorskip("numba.cuda")
from numba.core.errors import NumbaPerformanceWarning

from conftest import FakeStream
from gpurnn.kernels.cuda import runtime as rt


@pytest.fixture
def fake_numba_cuda(monkeypatch):
    """kernels/cuda/runtime.py's ``cuda`` with stream constructors that say which one was asked for."""
    fake = types.SimpleNamespace(legacy_default_stream=lambda: "legacy default",
                                 default_stream=lambda: "default (per-thread when Numba is set so)",
                                 external_stream=lambda ptr: ("external", ptr))
    monkeypatch.setattr(rt, "cuda", fake)
    monkeypatch.setattr(rt, "cuda_simulated", lambda: False)
    return fake


def test_cupy_null_stream_is_the_legacy_default_stream(fake_numba_cuda):
    assert rt.numba_stream(FakeStream(0)) == "legacy default"
    assert rt.numba_stream(FakeStream(0x7f00)) == ("external", 0x7f00)
    assert rt.numba_stream(FakeStream(2)) == ("external", 2)        # CuPy's per-thread default stream
    assert rt.numba_stream(None) == 0                          # the simulator


def test_wait_orders_two_streams_and_skips_one():
    a, b = FakeStream(5), FakeStream(6)
    rt.wait(a, b)
    assert a.waited_for == [("event on", 6)] and b.waited_for == []
    same = FakeStream(5)
    rt.wait(a, same)
    rt.wait(None, b)
    rt.wait(a, None)
    assert a.waited_for == [("event on", 6)] and b.waited_for == []


class _Kernel:
    """A kernel whose configuration warns as numba-cuda's does for a small grid, and once more
    with another warning that must get through."""

    def __getitem__(self, config):
        warnings.warn(NumbaPerformanceWarning("Grid size 4 will likely result in GPU under-utilization "
                                              "due to low occupancy."), stacklevel=2)
        warnings.warn(UserWarning("something else"), stacklevel=2)
        return config


def test_configure_silences_only_the_low_occupancy_warning(fake_numba_cuda):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = rt.configure("k", _Kernel(), (2, 2), (32, 8), FakeStream(0))
    assert config == ((2, 2), (32, 8), "legacy default", 0)
    assert [str(w.message) for w in caught] == ["something else"]


def test_device_functions_without_forceinline(monkeypatch):
    """numba-cuda < 0.11 (and Numba's own numba.cuda) has no ``forceinline``: plain device functions."""
    calls = []

    def old_jit(func_or_sig=None, device=False, inline=False, link=None, debug=None, opt=True,
                lineinfo=False, cache=False, **kws):
        calls.append(dict(device=device, **kws))
        return lambda fn: fn

    def new_jit(func_or_sig=None, device=False, inline="never", forceinline=False, **kws):
        calls.append(dict(device=device, forceinline=forceinline))
        return lambda fn: fn

    monkeypatch.setattr(rt, "cuda_simulated", lambda: False)
    monkeypatch.setattr(rt.cuda, "jit", old_jit)
    assert not rt._has_forceinline()
    rt.device_function(lambda: 0)
    assert calls[-1] == dict(device=True)
    assert "no forceinline" in rt.toolchain()
    monkeypatch.setattr(rt.cuda, "jit", new_jit)
    assert rt._has_forceinline()
    rt.device_function(lambda: 0)
    assert calls[-1] == dict(device=True, forceinline=True)
    assert "force-inlined" in rt.toolchain() and "numba" in rt.toolchain()


def test_transposed_tiles_store_without_bank_conflicts():
    """kernels/cuda/tiles.py's claim: with a row of ``padded(width)`` words and a warp writing 8
    consecutive source columns of 4 source rows, the 32 stores of a warp fall in 32 different
    banks, and every row starts 16-byte aligned (a thread's run of 4 is one LDS.128)."""
    from gpurnn.kernels.cuda import tiles
    for width in (4, 8, 16, 20, 32, 64, 96, 128, 132):
        row = tiles.padded(width)
        assert row >= width and row % 4 == 0 and (row // 4) % 2 == 1, (width, row)
        rows = width                             # a tile of `width` source rows (16 columns)
        run = tiles.COLUMN_RUN
        addresses = []
        for idx in range(32):                    # the first warp of fetch_cols' and put_cols' mapping
            blk, rem = divmod(idx, run * rows)
            r, c = rem // run, blk * run + rem % run
            addresses.append(c * row + r)        # sh[p, c, r] in words, from the buffer's start
        assert len({a % 32 for a in addresses}) == 32, (width, row, sorted(a % 32 for a in addresses))
    # Without the padding the same warp would hit one bank 4 to 32 times over.
    assert len({(c * 128 + r) % 32 for c in range(8) for r in range(4)}) == 4


def test_restore_numpy_aliases_binds_each_missing_alias_to_its_function():
    fake = types.SimpleNamespace(vstack=lambda *a: "vstack")          # a NumPy >= 2.5 without row_stack
    assert rt.restore_numpy_aliases(fake) == ["row_stack"]
    assert fake.row_stack is fake.vstack
    assert rt.restore_numpy_aliases(fake) == []                        # present now: left alone
    kept = types.SimpleNamespace(vstack=lambda *a: "vstack", row_stack=lambda *a: "row_stack")
    assert rt.restore_numpy_aliases(kept) == [] and kept.row_stack() == "row_stack"


# A kernel compile with NumPy's row_stack removed (as NumPy 2.5 did), in a process of its own.
# "bare": numba-cuda alone, which imports numba/cuda/np/arrayobj.py on its first compile;
# "gpurnn": with gpurnn's CUDA backend imported first.
_COMPILE_WITHOUT_ROW_STACK = """
import sys
import numpy as np
del np.row_stack
from numba import cuda
if sys.argv[1] == "gpurnn":
    import gpurnn.kernels.cuda  # noqa: F401
def fill(a):
    a[cuda.grid(1)] = 1.0
try:
    cuda.compile_ptx(fill, "void(float32[:])", cc=(9, 0))
except AttributeError as e:
    print("AttributeError:", e)
    sys.exit(1)
print("compiled")
"""


def test_kernels_compile_on_a_numpy_without_row_stack():
    import subprocess
    import sys

    import numpy as np
    from gpurnn.kernels.report import missing_toolchain
    if (why := missing_toolchain()) is not None:
        pytest.skip(why)
    if not hasattr(np, "row_stack"):
        pytest.skip("this NumPy has no row_stack to remove")

    def compile_in(mode):
        return subprocess.run([sys.executable, "-c", _COMPILE_WITHOUT_ROW_STACK, mode],
                              capture_output=True, text=True, timeout=300)

    bare = compile_in("bare")
    if bare.returncode == 0:
        pytest.skip("this numba-cuda compiles without np.row_stack: nothing left to restore")
    assert "row_stack" in bare.stdout, bare.stdout + bare.stderr
    done = compile_in("gpurnn")
    assert done.returncode == 0 and done.stdout.strip() == "compiled", done.stdout + done.stderr

"""Tensor cores (kernels/cuda/mma.py, products_mma.py), in the simulator or on a GPU.

Oracles: NumPy's products of the operands rounded as the tensor cores read them (bfloat16 and
float16 to nearest even, TF32 to nearest with ties away from zero), summed in float64. The
tensor cores sum exact products in float32, so the tolerance is float32's: a few ulps of the sum
of |products| (4·2**-24·R·max), nothing like the format's own rounding (2**-8 for bfloat16):
an operand left unrounded, or a fragment in the wrong place, is off by far more. On a GPU the
same tests check the fragment layouts (mma.py's docstring) against the hardware.
"""

import numpy as np
import pytest
from numba import cuda          # at module level: the simulator swaps the kernels' global ``cuda``

from conftest import needs_cuda
from gpurnn.kernels.precision import rounded

pytestmark = needs_cuda

MODES = ["bfloat16", "float16", "tf32"]


def _tf32(a):
    """a rounded to TF32 as cvt.rna does it: 10 fraction bits, ties away from zero."""
    u = (np.ascontiguousarray(a, np.float32).view(np.uint32) + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return u.view(np.float32)


def _as_read(a, mode):
    return _tf32(a) if mode == "tf32" else rounded(np.ascontiguousarray(a, np.float32), mode)


def _close(got, want, terms, scale):
    """|got - want| within 4 float32 ulps of the sum of |products| (terms of size <= scale)."""
    tol = 4 * 2.0 ** -24 * terms * scale + 1e-30
    err = np.abs(np.asarray(got, np.float64) - want).max()
    assert err <= tol, f"max error {err:.3g} above {tol:.3g}"


@pytest.mark.parametrize("mode", MODES)
def test_cuda_mma_one_warp_against_numpy(mode):
    """One mma.sync of each format: D = A·B + C for a 16 x K by K x 8 product, every fragment
    loaded by the layout of mma.py's docstring."""
    from gpurnn.kernels.cuda import mma as m
    from gpurnn.kernels.cuda.primitives import round_bfloat16
    K = 8 if mode == "tf32" else 16
    rng = np.random.default_rng(1)
    A = rng.standard_normal((16, K)).astype(np.float32)
    Bm = rng.standard_normal((K, 8)).astype(np.float32)
    C = rng.standard_normal((16, 8)).astype(np.float32)

    if mode == "tf32":
        @cuda.jit
        def kernel(a, b, c, d):
            lane = cuda.threadIdx.x
            g, q = lane >> 2, lane & 3
            r = m.round_tf32
            d0, d1, d2, d3 = m.mma_tf32(r(a[g, q]), r(a[g + 8, q]), r(a[g, q + 4]), r(a[g + 8, q + 4]),
                                        r(b[q, g]), r(b[q + 4, g]),
                                        c[g, 2 * q], c[g, 2 * q + 1], c[g + 8, 2 * q], c[g + 8, 2 * q + 1])
            d[g, 2 * q], d[g, 2 * q + 1], d[g + 8, 2 * q], d[g + 8, 2 * q + 1] = d0, d1, d2, d3
    else:
        bf16 = mode == "bfloat16"
        mma = m.mma_bfloat16 if bf16 else m.mma_float16

        @cuda.jit(device=True)
        def pair(v0, v1):
            if bf16:
                return m.pack_bfloat16(round_bfloat16(v0), round_bfloat16(v1))
            return m.pack_float16(v0, v1)

        @cuda.jit
        def kernel(a, b, c, d):
            lane = cuda.threadIdx.x
            g, q = lane >> 2, lane & 3
            k = 2 * q
            d0, d1, d2, d3 = mma(pair(a[g, k], a[g, k + 1]), pair(a[g + 8, k], a[g + 8, k + 1]),
                                 pair(a[g, k + 8], a[g, k + 9]), pair(a[g + 8, k + 8], a[g + 8, k + 9]),
                                 pair(b[k, g], b[k + 1, g]), pair(b[k + 8, g], b[k + 9, g]),
                                 c[g, k], c[g, k + 1], c[g + 8, k], c[g + 8, k + 1])
            d[g, k], d[g, k + 1], d[g + 8, k], d[g + 8, k + 1] = d0, d1, d2, d3

    D = np.zeros((16, 8), np.float32)
    kernel[1, 32](A, Bm, C, D)
    want = _as_read(A, mode).astype(np.float64) @ _as_read(Bm, mode) + C
    _close(D, want, K + 1, 16.0)
    # the operands really were rounded: float32 operands give another answer
    assert np.abs(D - (A.astype(np.float64) @ Bm + C)).max() > 1e-4


@pytest.mark.parametrize("shape", [(37, 21, 11), (16, 16, 8), (5, 3, 40)], ids=["odd", "one-tile", "wide"])
@pytest.mark.parametrize("mode", MODES)
def test_cuda_mma_products_against_numpy(mode, shape):
    """c += aᵀ b for a (R, M), b (R, N): edges of every tile, a reduction not a multiple of K,
    the sum added into what c held."""
    from gpurnn.kernels.cuda import products_mma, runtime as rt
    R, M, N = shape
    rng = np.random.default_rng(2)
    a = rng.standard_normal((R, M)).astype(np.float32)
    b = rng.standard_normal((R, N)).astype(np.float32)
    c = rng.standard_normal((M, N)).astype(np.float32)
    want = _as_read(a, mode).T.astype(np.float64) @ _as_read(b, mode) + c
    xp = rt.xp_of()
    c_dev = xp.asarray(c)
    products_mma.products(mode, xp.asarray(a), xp.asarray(b), c_dev, rt.current_stream())
    got = c_dev.get() if hasattr(c_dev, "get") else c_dev
    _close(got, want, R + 1, 16.0)


@pytest.mark.parametrize("mode", ["bfloat16", "tf32"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_layer_gradients_on_tensor_cores(cell, mode):
    """A layer's backward with use_tensor_cores(): the weight gradients are the products of dG and
    the layer's inputs as the tensor cores read them, the biases' and everything else as without."""
    import gpurnn
    from gpurnn.kernels import cuda as kc
    half = None if mode == "tf32" else mode
    cls = {"lstm": gpurnn.LSTM, "gru": gpurnn.GRU}[cell]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 3, 5))
    dy = rng.standard_normal((6, 3, 7))
    runs = {}
    for on in (False, True):
        m = cls(5, 7, backend="cuda", dtype=half or "float32", seed=4, algo="step")
        before = kc.use_tensor_cores(on)
        try:
            m(x)
            dx, _ = m.backward(dy)
        finally:
            kc.use_tensor_cores(before)
        runs[on] = ({k: m.backend.to_host(v) for k, v in m.grads.items()}, m.backend.to_host(dx))
    off, on = runs[False], runs[True]
    np.testing.assert_array_equal(on[1], off[1])                  # dx: not on tensor cores
    for k in ("bias_ih_l0", "bias_hh_l0"):
        np.testing.assert_allclose(on[0][k], off[0][k], rtol=1e-6, atol=1e-7)
    # the weight gradients: the rounding of dG to the format (of both operands to TF32) moves the
    # sums by about that format's unit roundoff, not more, and not less (zero: nothing rounded)
    scale = max(np.abs(off[0]["weight_ih_l0"]).max(), np.abs(off[0]["weight_hh_l0"]).max())
    for k in ("weight_ih_l0", "weight_hh_l0"):
        diff = np.abs(on[0][k] - off[0][k]).max() / scale
        assert 0 < diff < {"bfloat16": 2.0 ** -6, "tf32": 2.0 ** -9}[mode], (k, diff)


def test_cuda_tensor_cores_are_opt_in():
    from gpurnn.kernels import cuda as kc
    before = kc.use_tensor_cores(False)
    try:
        assert kc.tensor_core_format(np.float32, None) is None
        kc.use_tensor_cores(True)
        assert kc.tensor_core_format(np.float32, None) == "tf32"
        assert kc.tensor_core_format(np.float32, "float16") == "float16"
        assert kc.tensor_core_format(np.float64, None) is None
        assert kc.use_tensor_cores(False) is True
    finally:
        kc.use_tensor_cores(before)

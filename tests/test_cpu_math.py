"""The cpu backend's float32 exp, tanh and sigmoid (a polynomial that vectorises) against float64 libm."""

import numpy as np
from numba import njit

from gpurnn.kernels import cpu


@njit
def _apply(a, exp_out, tanh_out, sig_out):
    for k in range(a.shape[0]):
        exp_out[k] = cpu.exp_float32(a[k])
        tanh_out[k] = cpu.rnn_tanh_forward(a[k])
        i, f, g, o, c, h = cpu.lstm_forward(a[k], a[k], a[k], a[k], a[k] * 0, a[k] * 0, a[k] * 0, a[k] * 0,
                                            a[k] * 0)
        sig_out[k] = i


def test_float32_exp_tanh_sigmoid_are_within_a_few_ulps():
    a = np.concatenate([np.linspace(-100, 100, 200001), np.linspace(-1e-3, 1e-3, 2001),
                        [0.0, -87.3, 88.3, -1e4, 1e4]]).astype(np.float32)
    exp_out, tanh_out, sig_out = (np.empty_like(a) for _ in range(3))
    _apply(a, exp_out, tanh_out, sig_out)
    a64 = a.astype(np.float64)
    assert exp_out.dtype == np.float32 and np.all(np.isfinite(exp_out))
    in_range = (a64 > -87) & (a64 < 88)
    want_exp = np.exp(a64[in_range])
    assert np.max(np.abs(exp_out[in_range] - want_exp) / want_exp) < 3e-7
    np.testing.assert_allclose(tanh_out, np.tanh(a64), rtol=0, atol=3e-7)
    with np.errstate(over="ignore"):                       # exp(1e4) = inf gives sigmoid 0, as wanted
        want_sig = 1 / (1 + np.exp(-a64))
    np.testing.assert_allclose(sig_out, want_sig, rtol=0, atol=3e-7)
    assert np.all(np.abs(tanh_out) <= 1) and np.all((sig_out >= 0) & (sig_out <= 1))

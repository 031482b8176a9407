"""The pointwise math of every cell, written once.

Each function here works on scalars and is compiled with ``@njit(inline="always")``, so the same
source is inlined into the CPU kernels (``kernels/cpu.py``, Numba ``@njit``) and into the CUDA
kernels (``kernels/cuda/``, Numba ``@cuda.jit``), and runs as plain Python in Numba's CUDA
simulator. The NumPy reference (``kernels/reference.py``) deliberately does *not* use these
functions: it is the independent oracle they are tested against.

Gate conventions are PyTorch's / cuDNN's (pre-activations ``a = W_ih x + b_ih + W_hh h + b_hh``):

    RNN   h' = tanh(a)  or  relu(a)
    LSTM  rows [i, f, g, o]:  c' = σ(f)·c + σ(i)·tanh(g),   h' = σ(o)·tanh(c')
    GRU   rows [r, z, n]:     n = tanh(x_n + σ(r)·h_n),     h' = (1 - σ(z))·n + σ(z)·h
          where x_n = W_in x + b_in and h_n = W_hn h + b_hn (the reset gate scales h_n, bias included)

Forward functions take pre-activations split into the input part ``x*`` (from the big input
GEMM) and the recurrent part ``h*`` (from the per-step recurrent product); only the GRU needs them
apart, but one signature keeps the kernels alike. Backward functions take the gradient arriving at
the cell's outputs and the activations saved by forward, and return the gradients of the
pre-activations: ``dx*`` flows into ``W_ih``/``b_ih``/``x``, ``dh*`` into ``W_hh``/``b_hh``/``h``.
They differ only for the GRU's candidate gate (``dh_n = dx_n · σ(r)``).
"""

import math

from numba import njit
from numba.extending import overload


def like(x, value):
    """``value`` as a scalar of ``x``'s floating type.

    Numba types a Python float literal as float64, and float32 op float64 gives float64, which
    would run the float32 kernels in double precision (slow on most GPUs). Compiled code gets
    the overload below; the CUDA simulator calls this Python version.
    """
    return type(x)(value)


@overload(like, target="generic", inline="always")
def _like_overload(x, value):
    float_type = x

    def impl(x, value):
        return float_type(value)

    return impl


@njit(inline="always")
def sigmoid(x):
    one = like(x, 1.0)
    return one / (one + math.exp(-x))


# ---------------------------------------------------------------- RNN (tanh / relu)
@njit(inline="always")
def rnn_tanh_forward(a):
    """a: pre-activation. Returns h'."""
    return math.tanh(a)


@njit(inline="always")
def rnn_tanh_backward(dh, h):
    """dh: dL/dh'; h: the saved h'. Returns dL/da."""
    return dh * (like(h, 1.0) - h * h)


@njit(inline="always")
def rnn_relu_forward(a):
    """max(a, 0) that keeps a NaN (as np.maximum and torch.relu do): a NaN fails every comparison,
    so testing ``a <= 0`` rather than ``a > 0`` lets it through."""
    zero = like(a, 0.0)
    return zero if a <= zero else a


@njit(inline="always")
def rnn_relu_backward(dh, h):
    zero = like(h, 0.0)
    return dh if h > zero else zero


# ---------------------------------------------------------------- LSTM
@njit(inline="always")
def lstm_forward(xi, xf, xg, xo, hi, hf, hg, ho, c_prev):
    """Returns the activated gates (i, f, g, o), the new cell c' and the new hidden h'."""
    i = sigmoid(xi + hi)
    f = sigmoid(xf + hf)
    g = math.tanh(xg + hg)
    o = sigmoid(xo + ho)
    c = f * c_prev + i * g
    h = o * math.tanh(c)
    return i, f, g, o, c, h


@njit(inline="always")
def lstm_backward(dh, dc_next, i, f, g, o, c, c_prev):
    """dh: dL/dh'; dc_next: dL/dc' arriving from step t+1; i, f, g, o, c, c_prev: saved.

    Returns dL/d(pre-activation) of (i, f, g, o) and dL/dc_prev.
    """
    one = like(c, 1.0)
    tc = math.tanh(c)
    dc = dc_next + dh * o * (one - tc * tc)
    dai = dc * g * i * (one - i)
    daf = dc * c_prev * f * (one - f)
    dag = dc * i * (one - g * g)
    dao = dh * tc * o * (one - o)
    return dai, daf, dag, dao, dc * f


# ---------------------------------------------------------------- GRU
@njit(inline="always")
def gru_forward(xr, xz, xn, hr, hz, hn, h_prev):
    """hn: W_hn h + b_hn (saved: backward needs it). Returns (r, z, n, h')."""
    r = sigmoid(xr + hr)
    z = sigmoid(xz + hz)
    n = math.tanh(xn + r * hn)
    h = (like(z, 1.0) - z) * n + z * h_prev
    return r, z, n, h


@njit(inline="always")
def gru_backward(dh, r, z, n, hn, h_prev):
    """dh: dL/dh'; r, z, n, hn, h_prev: saved.

    Returns (dar, daz, dan_x, dan_h, dh_prev_direct): the pre-activation gradients of r and z
    (shared by the input and recurrent sides), of the candidate on the input side (dan_x) and on
    the recurrent side (dan_h = dan_x·r), and the part of dL/dh_prev that skips W_hh (dh·z).
    """
    one = like(z, 1.0)
    dan_x = dh * (one - z) * (one - n * n)
    dar = dan_x * hn * r * (one - r)
    daz = dh * (h_prev - n) * z * (one - z)
    return dar, daz, dan_x, dan_x * r, dh * z

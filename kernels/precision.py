"""Half precision (bfloat16, float16): where values are rounded, and the rounding itself.

A recurrent layer of a half format computes as a half-precision GPU kernel with float32
arithmetic does (cuDNN under torch.autocast, tensor cores with float32 accumulation): every value
that half-precision storage would hold is rounded to the format, and everything between two
such stores runs in float32. The rounding points, the same on every backend:

    the layer's inputs     x, h0, c0, and a copy of each weight and bias (as autocast casts them)
    forward, every step    the states h_t, c_t where they are stored (the next step reads them
                           rounded), the outputs y, and what backward reads (gates, the GRU's
                           W_hn h + b_hn)
    dropout                a layer's masked output, before the next layer reads it
    backward               the loss's gradients dy, dh_n, dc_n, and the stack's results dx, dh0, dc0
    projections            an LSTM with proj_size: W_hh·W_hr, rounded as a weight, and the projected
                           outputs y, h_n (its recursion reads the rounded state m_t = o·tanh(c_t))

and nothing else: dot products, BPTT sums (dh, dc between steps, the gate gradients, the gradient
one layer of a stack hands the layer below) and the weight gradients stay float32, and the
weight gradients add into float32 master weights' gradients (the parameters stay float32, as
torch.autocast keeps them). A product of two half
values is exact in float32, so a float32 GEMM of rounded operands is what a tensor core computes
with float32 accumulation, up to the order of the sums.

The arrays stay float32 (NumPy and CuPy have no bfloat16): a half layer's arrays hold values of
its format, and ``a.astype(numpy.float16)`` of a float16 layer's output loses nothing. The
rounding is IEEE round-to-nearest-even, with float16's range (overflow to inf, subnormals) and
bfloat16's (float32's exponents); a NaN stays a NaN.

UNIT_ROUNDOFF u of each format (half its machine epsilon): a rounded value is within a relative
u of the float32 one. The tests state their tolerances in these units.
"""

import numpy as np

from .vocabulary import HALF

UNIT_ROUNDOFF = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11, "float32": 2.0 ** -24, "float64": 2.0 ** -53}


def check_half(half):
    """``half`` when it is None (no rounding) or one of HALF; ValueError naming them otherwise."""
    if half is not None and half not in HALF:
        raise ValueError(f"unknown half-precision format {half!r}; expected None or one of {', '.join(HALF)}")
    return half


def rounded(a, half):
    """A float32 array (NumPy or CuPy) of a's values rounded to ``half``; ``a`` itself for None."""
    if half is None:
        return a
    out = a.copy()
    round_in_place(out, half)
    return out


def round_in_place(a, half):
    """Round the float32 array (or view) ``a`` to ``half`` in place; nothing for None."""
    if half is None:
        return
    if a.dtype != np.float32:
        raise TypeError(f"half-precision values are held in float32 arrays, got {a.dtype}")
    if half == "float16":
        with np.errstate(over="ignore"):        # beyond 65504: inf, as the format has it
            a[...] = a.astype(np.float16).astype(np.float32)
        return
    check_half(half)
    a[...] = bfloat16_bits(a).view(np.float32)


def bfloat16_bits(a):
    """The float32 bits (uint32) of a's values rounded to bfloat16: the upper 16 bits, rounded to
    nearest, ties to even; a NaN stays a (quiet) NaN, which the carry would turn into inf."""
    xp = _array_module(a)
    u = a.view(np.uint32)
    r = (u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000
    return xp.where(xp.isnan(a), u | 0x00400000, r).astype(np.uint32)


def round_scalar(v, half):
    """One float32 value rounded to ``half`` (the simulator's stand-in for the device rounding)."""
    a = np.array([v], np.float32)
    round_in_place(a, half)
    return a[0]


def _array_module(a):
    if isinstance(a, np.ndarray):
        return np
    import cupy
    return cupy

"""The BPTT weight gradients on tensor cores (opt-in: ``kernels.cuda.use_tensor_cores``): the two
products of the accumulation, dW_ih += dG_xᵀ x and dW_hh += dG_hᵀ h_prev over all N = T*B rows,
through ``mma.sync`` (mma.py), in the operands' tensor-core format:

    a half layer (bfloat16, float16)   that format: x and h_prev hold its values already; dG is
                                       rounded to it where the kernel loads it (a rounding point
                                       of this mode only: the gate gradients stay float32 otherwise)
    a float32 layer                    TF32: both operands rounded to 10 fraction bits (cvt.rna),
                                       as torch.backends.cuda.matmul.allow_tf32 lets cuBLAS do

Products exact, sums in float32: the result is the float32 sum of the rounded operands' products,
to the order of the sums. The bias gradients stay float32 sums of dG (column sums in float64).

    mma_products(a (R, M), b (R, N), c (M, N))      c += aᵀ b, in one launch

A warp owns a 16 x 8 tile of c and runs the whole reduction over R, K rows at a time (16 for the
half formats, 8 for TF32), fetching its fragments straight from global memory (rows of a and b are
read 8 consecutive values at a time by a group of lanes); each value of c is written by one lane
after its sum: deterministic, no atomics. A block is 4 warps along N (16 x 32 of c). Nothing is
staged in shared memory: this is the first tensor-core kernel, written to be checked, not tuned.
Napkin from the compiled kernel (kernels/report.py; not measured): its loop issues about 300
instructions per mma (a lane's 12 loads with their bounds checks, roundings and packing; TF32 split
in two HMMA), so issue, not the tensor cores, bounds it: 4 schedulers x 8192 FLOP an mma / 300
cycles = 109 FLOP a cycle an SM, 28 TFLOP/s on an H200 (132 SMs, 1.98 GHz) if the loads' latency
were hidden, which their dependent chain will not fully allow. Staging tiles in shared memory
(ldmatrix) is what would take it to the tensor cores' own rate.
"""

from functools import lru_cache

import numba
from numba import cuda

from . import runtime as rt
from .mma import mma_bfloat16, mma_float16, mma_tf32, pack_bfloat16, pack_float16, round_tf32
from .primitives import round_bfloat16

WARPS = 4           # warps a block, along N
MODES = ("bfloat16", "float16", "tf32")


def k_of(mode):
    """Rows of the reduction one mma takes: 16 for the half formats, 8 for TF32."""
    return 8 if mode == "tf32" else 16


def build(mode):
    """{"mma_products": (pyfunc, signature)} for one tensor-core format (MODES)."""
    if mode not in MODES:
        raise ValueError(f"unknown tensor-core format {mode!r}; expected one of {', '.join(MODES)}")
    K = k_of(mode)
    f32 = numba.float32

    if mode == "bfloat16":
        @rt.device_function
        def pair(v0, v1):
            return pack_bfloat16(round_bfloat16(v0), round_bfloat16(v1))
        mma = mma_bfloat16
    elif mode == "float16":
        @rt.device_function
        def pair(v0, v1):
            return pack_float16(v0, v1)
        mma = mma_float16
    else:
        mma = mma_tf32

    @rt.device_function
    def load(a, r, col, R, M):
        """a[r, col], or 0 outside a (the tile's edges, the reduction's last rows)."""
        if r < R and col < M:
            return a[r, col]
        return f32(0)

    def mma_products(a, b, c):
        R, M, N = a.shape[0], a.shape[1], b.shape[1]
        lane = cuda.threadIdx.x % 32
        g, q = lane >> 2, lane & 3
        m0 = cuda.blockIdx.x * 16
        n0 = (cuda.blockIdx.y * WARPS + cuda.threadIdx.x // 32) * 8
        d0 = d1 = d2 = d3 = f32(0)
        for r0 in range(0, R, K):     # every lane of the warp runs every mma: edges load zeros
            if K == 16:
                a0 = pair(load(a, r0 + 2 * q, m0 + g, R, M), load(a, r0 + 2 * q + 1, m0 + g, R, M))
                a1 = pair(load(a, r0 + 2 * q, m0 + g + 8, R, M), load(a, r0 + 2 * q + 1, m0 + g + 8, R, M))
                a2 = pair(load(a, r0 + 2 * q + 8, m0 + g, R, M), load(a, r0 + 2 * q + 9, m0 + g, R, M))
                a3 = pair(load(a, r0 + 2 * q + 8, m0 + g + 8, R, M), load(a, r0 + 2 * q + 9, m0 + g + 8, R, M))
                b0 = pair(load(b, r0 + 2 * q, n0 + g, R, N), load(b, r0 + 2 * q + 1, n0 + g, R, N))
                b1 = pair(load(b, r0 + 2 * q + 8, n0 + g, R, N), load(b, r0 + 2 * q + 9, n0 + g, R, N))
                d0, d1, d2, d3 = mma(a0, a1, a2, a3, b0, b1, d0, d1, d2, d3)
            else:
                a0 = round_tf32(load(a, r0 + q, m0 + g, R, M))
                a1 = round_tf32(load(a, r0 + q, m0 + g + 8, R, M))
                a2 = round_tf32(load(a, r0 + q + 4, m0 + g, R, M))
                a3 = round_tf32(load(a, r0 + q + 4, m0 + g + 8, R, M))
                b0 = round_tf32(load(b, r0 + q, n0 + g, R, N))
                b1 = round_tf32(load(b, r0 + q + 4, n0 + g, R, N))
                d0, d1, d2, d3 = mma(a0, a1, a2, a3, b0, b1, d0, d1, d2, d3)
        for i, j, d in ((m0 + g, n0 + 2 * q, d0), (m0 + g, n0 + 2 * q + 1, d1),
                        (m0 + g + 8, n0 + 2 * q, d2), (m0 + g + 8, n0 + 2 * q + 1, d3)):
            if i < M and j < N:
                c[i, j] += d

    matrix = numba.float32[:, ::1]
    return {"mma_products": (mma_products, (matrix, matrix, matrix))}


def launch_shape(M, N):
    """(grid, block) of mma_products for c (M, N)."""
    return (rt.ceil_div(M, 16), rt.ceil_div(N, 8 * WARPS)), (32 * WARPS,)


@lru_cache(maxsize=None)
def compiled(mode):
    """``mma_products`` of one tensor-core format as a Numba dispatcher, compiled on first launch."""
    fn, _ = build(mode)["mma_products"]
    return cuda.jit(**rt.kernel_options(fn))(fn)


def products(mode, a, b, c, stream):
    """c += aᵀ b on tensor cores in ``mode`` (MODES): a (R, M), b (R, N), c (M, N), float32,
    C-contiguous."""
    grid, block = launch_shape(c.shape[0], c.shape[1])
    rt.configure("mma_products", compiled(mode), grid, block, stream)(*map(rt.dev, (a, b, c)))

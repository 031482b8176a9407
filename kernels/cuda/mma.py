"""Tensor cores from numba-cuda: one warp-wide ``mma.sync`` matrix multiply-accumulate, in PTX
(inline assembly through ``@intrinsic``), and its stand-in in the simulator, with the same
fragments and the same rounding of the operands.

A warp computes D = A·B + C, D and C 16 x 8 float32, A 16 x K, B K x 8, every product exact and
the sums float32 (the order inside the instruction is the hardware's). Each lane holds a fragment
of each matrix (PTX ISA, "Matrix fragments for mma.m16n8k16" and "mma.m16n8k8"): with lane =
4·g + q (g = lane >> 2 its group, q = lane & 3 its place in the group),

    bfloat16, float16 (K = 16): registers a0..a3 and b0, b1 hold two values each, the lower
        index in the lower half:
            a0 = A[g, 2q:2q+2]     a1 = A[g+8, 2q:2q+2]     a2 = A[g, 2q+8:2q+10]     a3 = A[g+8, 2q+8:2q+10]
            b0 = B[2q:2q+2, g]     b1 = B[2q+8:2q+10, g]
    tf32 (K = 8): one value a register:
            a0 = A[g, q]   a1 = A[g+8, q]   a2 = A[g, q+4]   a3 = A[g+8, q+4]      b0 = B[q, g]   b1 = B[q+4, g]
    C and D (both): c0, c1 = C[g, 2q:2q+2]     c2, c3 = C[g+8, 2q:2q+2]

    pack_bfloat16(lo, hi)   two float32 values that are bfloat16 values (rounded first:
                            precision.py, primitives.round_bfloat16) as one register
    pack_float16(lo, hi)    two float32 values rounded to float16 (``cvt.rn.f16x2.f32``) as one register
    round_tf32(v)           v rounded to TF32's 10 fraction bits, to nearest, ties away from zero
                            (``cvt.rna.tf32.f32``), as float32: what the tf32 mma reads of it
    mma_bfloat16, mma_float16 (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3) -> (d0, d1, d2, d3)
    mma_tf32                (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3) -> (d0, d1, d2, d3), a*, b*
                            float32 values already rounded by round_tf32

Every lane of the warp must call an mma together (``mma.sync.aligned``), with its fragments.
In the simulator a register is a tuple of the values it holds, and the warp's lanes meet to
assemble A, B and C (simulator.warp_gather); D is computed in float64 and rounded to float32, so
it may differ from a tensor core's float32 sums by their rounding.
"""

import numpy as np

import numba

from .. import cuda_simulated

if cuda_simulated():
    def pack_bfloat16(lo, hi):
        """The simulator's register of two bfloat16 values: their float32 values, cut to
        bfloat16's bits as the device's packing cuts them."""
        a = np.array([lo, hi], np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
        return tuple(a.view(np.float32))

    def pack_float16(lo, hi):
        """The simulator's register of two float16 values: rounded to nearest even."""
        with np.errstate(over="ignore"):
            return tuple(np.array([lo, hi], np.float32).astype(np.float16).astype(np.float32))

    def round_tf32(v):
        """v to 10 fraction bits, to nearest, ties away from zero (cvt.rna); inf and NaN as they are."""
        a = np.array([v], np.float32)
        if not np.isfinite(a[0]):
            return a[0]
        u = (a.view(np.uint32) + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
        return u.view(np.float32)[0]

    def _mma(k, a, b, c):
        """The warp's D = A·B + C from every lane's fragments (the layouts of the docstring)."""
        from .simulator import warp_gather
        lanes = warp_gather((a, b, c))
        if len(lanes) != 32:
            raise RuntimeError(f"mma.sync needs a whole warp of 32 lanes, got {len(lanes)}")
        A, B, C = np.zeros((16, k)), np.zeros((k, 8)), np.zeros((16, 8))
        for lane, (fa, fb, fc) in enumerate(lanes):
            g, q = lane >> 2, lane & 3
            if k == 16:
                for r, (row, col) in enumerate(((g, 2 * q), (g + 8, 2 * q), (g, 2 * q + 8), (g + 8, 2 * q + 8))):
                    A[row, col:col + 2] = fa[r]
                for r, row in enumerate((2 * q, 2 * q + 8)):
                    B[row:row + 2, g] = fb[r]
            else:
                for r, (row, col) in enumerate(((g, q), (g + 8, q), (g, q + 4), (g + 8, q + 4))):
                    A[row, col] = fa[r]
                B[q, g], B[q + 4, g] = fb
            C[g, 2 * q:2 * q + 2], C[g + 8, 2 * q:2 * q + 2] = fc[:2], fc[2:]
        return (A @ B + C).astype(np.float32)

    def _mine(D):
        """The calling lane's d0..d3 of the warp's D."""
        from .simulator import lane_id
        lane = lane_id()
        g, q = lane >> 2, lane & 3
        return D[g, 2 * q], D[g, 2 * q + 1], D[g + 8, 2 * q], D[g + 8, 2 * q + 1]

    def mma_bfloat16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """Either half format: its registers already hold the values the packing rounded."""
        return _mine(_mma(16, (a0, a1, a2, a3), (b0, b1), (c0, c1, c2, c3)))

    mma_float16 = mma_bfloat16

    def mma_tf32(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        return _mine(_mma(8, (a0, a1, a2, a3), (b0, b1), (c0, c1, c2, c3)))

else:
    from llvmlite import ir
    from numba.cuda.extending import intrinsic

    _F32, _I32 = ir.FloatType(), ir.IntType(32)

    @intrinsic
    def pack_bfloat16(typingctx, lo, hi):
        """Two float32 values that are bfloat16 values as one register: hi's upper 16 bits over lo's."""
        if lo != numba.float32 or hi != numba.float32:
            return None

        def codegen(context, builder, sig, args):
            lo_bits, hi_bits = (builder.bitcast(a, _I32) for a in args)
            return builder.or_(builder.and_(hi_bits, ir.Constant(_I32, 0xFFFF0000)),
                               builder.lshr(lo_bits, ir.Constant(_I32, 16)))
        return numba.uint32(numba.float32, numba.float32), codegen

    @intrinsic
    def pack_float16(typingctx, lo, hi):
        """Two float32 values rounded to float16 as one register (``cvt.rn.f16x2.f32 d, hi, lo``)."""
        if lo != numba.float32 or hi != numba.float32:
            return None

        def codegen(context, builder, sig, args):
            cvt = ir.InlineAsm(ir.FunctionType(_I32, [_F32, _F32]), "cvt.rn.f16x2.f32 $0, $2, $1;", "=r,f,f")
            return builder.call(cvt, list(args))
        return numba.uint32(numba.float32, numba.float32), codegen

    @intrinsic
    def round_tf32(typingctx, v):
        """v rounded to TF32 (``cvt.rna.tf32.f32``), as float32."""
        if v != numba.float32:
            return None

        def codegen(context, builder, sig, args):
            cvt = ir.InlineAsm(ir.FunctionType(_I32, [_F32]), "cvt.rna.tf32.f32 $0, $1;", "=r,f")
            return builder.bitcast(builder.call(cvt, [args[0]]), _F32)
        return numba.float32(numba.float32), codegen

    def _mma_intrinsic(ptx, operand):
        """An intrinsic (a0..a3, b0, b1 of type ``operand``; c0..c3 float32) -> 4 x float32."""
        out = numba.types.UniTuple(numba.float32, 4)

        def typer(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
            if any(t != operand for t in (a0, a1, a2, a3, b0, b1)) or any(t != numba.float32 for t in (c0, c1, c2, c3)):
                return None

            def codegen(context, builder, sig, args):
                regs = [builder.bitcast(a, _I32) if operand == numba.float32 else a for a in args[:6]]
                ty = ir.FunctionType(ir.LiteralStructType([_F32] * 4), [_I32] * 6 + [_F32] * 4)
                asm = ir.InlineAsm(ty, ptx + " {$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};",
                                   "=f,=f,=f,=f," + "r," * 6 + "f,f,f,f")
                d = builder.call(asm, regs + list(args[6:]))
                return context.make_tuple(builder, out, [builder.extract_value(d, i) for i in range(4)])
            return out(*([operand] * 6 + [numba.float32] * 4)), codegen
        return intrinsic(typer)

    mma_bfloat16 = _mma_intrinsic("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", numba.uint32)
    mma_float16 = _mma_intrinsic("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", numba.uint32)
    mma_tf32 = _mma_intrinsic("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", numba.float32)

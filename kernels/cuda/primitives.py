"""Device primitives that numba-cuda lacks, or that its compiler would optimise away, for the
kernels that exchange values between blocks (persistent.py) and the calibration of their cost
(calibrate.py). Each has a stand-in with the same meaning in the simulator (simulator.py).

    clock64       the SM's 64-bit cycle counter
    load_relaxed  a strong load at GPU scope: the load a flag wait must issue every time
    store_relaxed a strong store at GPU scope: the flag's store that such a load pairs with
    round_bfloat16, round_float16
                  a float32 value rounded to the format (round to nearest, ties to even), as a
                  float32: where a half-precision layer stores a value (kernels/precision.py)
"""

import time

import numba

from .. import cuda_simulated


if cuda_simulated():
    def clock64():
        """The simulator's stand-in for the SM's cycle counter: the host's nanoseconds."""
        return time.perf_counter_ns()

    def load_relaxed(array, i):
        """The simulator's volatile load, which polls as a strong load does (and raises when the
        wait can never end)."""
        from .simulator import volatile_load
        return volatile_load(array, i)

    def store_relaxed(array, i, value):
        """The simulator's store (Python threads see every store at once)."""
        array[i] = value

    def round_bfloat16(v):
        """The simulator's rounding: kernels/precision.py's, on one value."""
        from ..precision import round_scalar
        return round_scalar(v, "bfloat16")

    def round_float16(v):
        """The simulator's rounding: kernels/precision.py's, on one value."""
        from ..precision import round_scalar
        return round_scalar(v, "float16")

else:
    from llvmlite import ir
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    @intrinsic
    def clock64(typingctx):
        """The SM's 64-bit cycle counter (PTX ``%clock64``), read where the call stands."""
        def codegen(context, builder, sig, args):
            read = ir.InlineAsm(ir.FunctionType(ir.IntType(64), []), "mov.u64 $0, %clock64;", "=l",
                                side_effect=True)
            return builder.call(read, [])
        return numba.int64(), codegen

    @intrinsic
    def load_relaxed(typingctx, array, i):
        """array[i] (a 1-D int32 or int64 array in global memory) by ``ld.relaxed.gpu.global``: a
        strong load at GPU scope, from L2, that the compiler must issue every time. A wait on
        ``cuda.ldcv`` (a weak load with a cache hint) is compiled to no load at all when the loop
        does nothing else: ptxas deletes ``while cuda.ldcv(flags, k) < r: pass`` (numba-cuda
        0.30.4, sm_90; nvJitLink 13.5 and CUDA 13.0's ptxas alike), as the memory model lets it."""
        if not (isinstance(array, numba.types.Array) and array.ndim == 1 and isinstance(i, numba.types.Integer)
                and array.dtype in (numba.int32, numba.int64)):
            return None

        def codegen(context, builder, sig, args):
            aryty, ity = sig.args
            ary = context.make_array(aryty)(context, builder, args[0])
            index = context.cast(builder, args[1], ity, numba.intp)
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [index], wraparound=False)
            bits = aryty.dtype.bitwidth
            load = ir.InlineAsm(ir.FunctionType(ir.IntType(bits), [ptr.type]),
                                f"ld.relaxed.gpu.global.b{bits} $0, [$1];", ("=r" if bits == 32 else "=l") + ",l",
                                side_effect=True)
            return builder.call(load, [ptr])
        return array.dtype(array, i), codegen

    @intrinsic
    def store_relaxed(typingctx, array, i, value):
        """array[i] = value (a 1-D int32 array in global memory) by ``st.relaxed.gpu.global``: the
        strong store at GPU scope that a ``load_relaxed`` of another block observes; after a
        ``threadfence``, it publishes every write the block made before it."""
        if not (isinstance(array, numba.types.Array) and array.ndim == 1 and array.dtype == numba.int32
                and isinstance(i, numba.types.Integer) and isinstance(value, numba.types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            aryty, ity, vty = sig.args
            ary = context.make_array(aryty)(context, builder, args[0])
            index = context.cast(builder, args[1], ity, numba.intp)
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [index], wraparound=False)
            v = context.cast(builder, args[2], vty, numba.int32)
            store = ir.InlineAsm(ir.FunctionType(ir.VoidType(), [ptr.type, ir.IntType(32)]),
                                 "st.relaxed.gpu.global.b32 [$0], $1;", "l,r", side_effect=True)
            builder.call(store, [ptr, v])
            return context.get_dummy_value()
        return numba.void(array, i, value), codegen

    @intrinsic
    def round_bfloat16(typingctx, v):
        """v (float32) rounded to bfloat16, as float32: the upper 16 bits, rounded to nearest,
        ties to even, by integer operations (no sm_80 conversion needed); a NaN stays a NaN."""
        if v != numba.float32:
            return None

        def codegen(context, builder, sig, args):
            i32 = ir.IntType(32)
            u = builder.bitcast(args[0], i32)
            lsb = builder.and_(builder.lshr(u, ir.Constant(i32, 16)), ir.Constant(i32, 1))
            r = builder.and_(builder.add(u, builder.add(lsb, ir.Constant(i32, 0x7FFF))),
                             ir.Constant(i32, 0xFFFF0000))
            nan = builder.fcmp_unordered("uno", args[0], args[0])
            r = builder.select(nan, builder.or_(u, ir.Constant(i32, 0x00400000)), r)
            return builder.bitcast(r, ir.FloatType())
        return numba.float32(numba.float32), codegen

    @intrinsic
    def round_float16(typingctx, v):
        """v (float32) rounded to float16, as float32: ``cvt.rn.f16.f32`` and back (float16's
        range: inf beyond 65504, subnormals)."""
        if v != numba.float32:
            return None

        def codegen(context, builder, sig, args):
            f32 = ir.FloatType()
            cvt = ir.InlineAsm(ir.FunctionType(f32, [f32]),
                               "{ .reg .b16 h; cvt.rn.f16.f32 h, $1; cvt.f32.f16 $0, h; }", "=f,f")
            return builder.call(cvt, [args[0]])
        return numba.float32(numba.float32), codegen

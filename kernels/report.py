"""Compile every CUDA kernel to SASS without a GPU and report its resources.

    python -m gpurnn.kernels.report            a table: one row per kernel x cell x dtype x target
    python -m gpurnn.kernels.report --json     the same rows as JSON
    python -m gpurnn.kernels.report --target sm_90     one target only (the test runs one process each)
    python -m gpurnn.kernels.report --cell lstm        one cell's kernels (and the accumulation kernel)

Each kernel of ``kernels/cuda/`` (``build_kernels``, with the GPU block geometry) is compiled to PTX
by ``numba.cuda.compile_ptx`` for compute capability 8.0 and 9.0, and the PTX is linked to SASS by
nvJitLink (``-arch=sm_80`` / ``-arch=sm_90``, ``-verbose``); the linker's log gives registers per
thread, spill stores and loads, stack frame, local memory and static shared memory per block.
Needs NVVM and nvJitLink (``pip install "numba-cuda[cu13]"``), no driver and no GPU.

Each kernel's SASS is then disassembled by NVIDIA's ``nvdisasm`` (``pip install nvidia-cuda-nvdisasm``)
and its hottest loop found: of the innermost loops (a backward branch and the instructions it jumps
over), the one with the most FFMA (DFMA for float64). The report counts that loop's multiply-adds
(``fma``) and shared-memory loads of any width (``lds``: LDS, LDS.64, LDS.128) and gives their ratio,
``ffma_per_lds``: how many multiply-adds each shared-memory load feeds, the figure of merit of a
register-tiled product. ``occupancy`` is the theoretical occupancy (resident warps of the 64 an SM
holds) on an A100 for sm_80 and an H100 for sm_90, from the registers, the block size and the static
shared memory (the persistent kernels also take dynamic shared memory, which their plan sizes: their
figure is an upper bound).

Half-precision layers (kernels/precision.py) compute in float32 arrays and have forward kernels of
their own, which round what they store (``step_forward`` and ``persistent_forward`` with ``half``;
their backward kernels are float32's). The report lists those of REPORTED_HALF, bfloat16, under
the dtype "bfloat16": its rounding (integer operations, a NaN test) costs more instructions than
float16's (a conversion there and back), and reporting both formats would add half again to the
report's run time; ``python -m gpurnn.kernels.report --half float16`` lists float16's instead.

Then the limits of the persistent path on an A100 (108 SMs, sm_80) and an H100 SXM (132 SMs,
sm_90), from those resources: ``kernels/cuda/plan.py``'s choice on a modelled device given the
registers of the compiled persistent kernels, per cell and dtype: the largest cooperative grid,
the largest hidden size accepted, and the largest whose W_hh sits all in registers.

Why nvJitLink and not the system ptxas: PTX from a newer NVVM than the installed toolkit is
rejected by that toolkit's ptxas; nvJitLink from the same release as NVVM accepts it.
Why the patch below: numba-cuda 0.30 asks the driver for the current device's compute capability
when a kernel calls a device function, even inside ``compile_ptx``; with no GPU that fails, so the
lookup answers with the target being compiled for. Run this in its own process: the compiler and
the simulator (``NUMBA_ENABLE_CUDASIM=1``) cannot share one.
"""

import argparse
import math
import json
import re
import sys

from .vocabulary import CELLS, HALF

TARGETS = ((8, 0), (9, 0))
DTYPES = ("float32", "float64")
REPORTED_HALF = ("bfloat16",)            # the half formats whose forward kernels are listed


def itemsize_of(dtype):
    """Bytes an element of a report row's dtype takes: a half format's kernels compute in float32."""
    return 8 if dtype == "float64" else 4


def kernels_run_by(dtype, name):
    """The report dtype whose row is the kernel ``name`` that a layer of ``dtype`` runs: its own
    but for a half format's backward kernels, which are float32's (cuda.FORWARD_KERNELS are its own)."""
    from .cuda import FORWARD_KERNELS
    return dtype if dtype in DTYPES or name in FORWARD_KERNELS else "float32"


class _TargetDevice:
    compute_capability = (9, 0)


def _patch_current_device(device):
    import numba.cuda.dispatcher as dispatcher
    dispatcher.get_current_device = lambda: device


MISSING_TOOLCHAIN = 3   # exit status when NVVM or nvJitLink is not installed


def missing_toolchain():
    """None, or what is missing to compile without a GPU."""
    hint = "pip install 'numba-cuda[cu13]' (NVVM and nvJitLink)"
    try:
        from numba.cuda.cudadrv import nvvm
    except ImportError as e:
        return f"numba-cuda is not installed ({e}); {hint}"
    if not nvvm.is_available():
        return f"libNVVM was not found; {hint}"
    try:
        from cuda.bindings import nvjitlink  # noqa: F401
    except ImportError as e:
        return f"nvJitLink is not installed ({e}); {hint}"
    if nvdisasm() is None:
        return "nvdisasm was not found; pip install nvidia-cuda-nvdisasm"
    return None


def nvdisasm():
    """The path of NVIDIA's disassembler (the nvidia-cuda-nvdisasm wheel, or a CUDA toolkit's), or
    None."""
    try:
        from cuda.pathfinder import find_nvidia_binary_utility
    except ImportError:
        import shutil
        return shutil.which("nvdisasm")
    return find_nvidia_binary_utility("nvdisasm")


def disassemble(cubin):
    """The SASS of a cubin, as nvdisasm prints it."""
    import subprocess
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm(), f.name], capture_output=True, text=True, check=True).stdout


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"\((\.L_x_\d+)\)")


def kernel_sass(sass, name):
    """[(address, opcode, operands)] of kernel ``name``'s own code in a disassembly (its
    ``.text.<mangled name>`` section; a label stands for the address of the instruction after it),
    and {label: address}."""
    instructions, labels, inside, pending = [], {}, False, []
    for line in sass.splitlines():
        if re.match(r"\s*\.section\s", line):
            inside = ".text." in line and name in line
            continue
        if not inside:
            continue
        label = _LABEL.match(line.strip())
        if label:
            pending.append(label.group(1))
            continue
        ins = _INSTRUCTION.search(line)
        if ins:
            address = int(ins.group(1), 16)
            for lab in pending:
                labels[lab] = address
            pending = []
            instructions.append((address, ins.group(2), ins.group(3)))
    if not instructions:
        raise ValueError(f"kernel {name!r} not found in the disassembly")
    return instructions, labels


def hot_loop(sass, name, fma="FFMA"):
    """{"fma", "lds", "ffma_per_lds", "loop_instructions"} of the hottest loop of kernel ``name``.

    A loop is a branch back to an earlier label and every instruction from the label to the
    branch; its body is those instructions less the ones of loops nested in it. The hottest loop is
    the innermost loop (one without nested loops: a dot product's, or a tile loop whose columns are
    unrolled) whose body has the most ``fma`` instructions (FFMA; DFMA for float64), or where no
    innermost loop has any, the loop whose body has the most (a loop around the pointwise part of
    a step, with the activations' polynomials, is not innermost and so does not compete with the
    dot products inside it); ``lds`` counts the shared-memory loads of any width in that body. A
    kernel without a loop of multiply-adds gives zeros and a ratio of None."""
    instructions, labels = kernel_sass(sass, name)
    loops = set(loops_of(instructions, labels))

    def body(a, b):
        nested = [(c, d) for c, d in loops if (c, d) != (a, b) and a <= c and d <= b]
        return [(addr, op) for addr, op, _ in instructions
                if a <= addr <= b and not any(c <= addr <= d for c, d in nested)]

    def count(ops, prefix):
        return sum(1 for _, op in ops if op.split(".")[0] == prefix)
    innermost = [(a, b) for a, b in loops if not any((c, d) != (a, b) and a <= c and d <= b for c, d in loops)]
    bodies = [body(a, b) for a, b in sorted(innermost)]
    if not any(count(ops, fma) for ops in bodies):
        bodies = [body(a, b) for a, b in sorted(loops)]
    best = max(bodies, key=lambda ops: count(ops, fma), default=None)
    if best is None or count(best, fma) == 0:
        return dict(fma=0, lds=0, ffma_per_lds=None, loop_instructions=0)
    n_fma, n_lds = count(best, fma), count(best, "LDS")
    return dict(fma=n_fma, lds=n_lds, ffma_per_lds=round(n_fma / n_lds, 2) if n_lds else None,
                loop_instructions=len(best))


def loops_of(instructions, labels):
    """[(first address, last address)] of every loop: a branch back to an earlier label."""
    loops = set()
    for address, op, operands in instructions:
        target = _TARGET.search(operands)
        if op.startswith("BRA") and target and labels.get(target.group(1), address + 1) <= address:
            loops.add((labels[target.group(1)], address))
    return sorted(loops)


def step_loops(sass, name):
    """The loops of a persistent kernel's time step, by what they hold, each as the number of its
    instructions (nested loops counted once): ``lane_sum`` the innermost loop that adds
    shared-memory loads without multiplying or touching global memory (one lane's sum over a
    team's lanes), ``pass`` the smallest loop around it with a block barrier (one pass of RB
    rows: the product from registers, unrolled, the lane sum and its barriers, the pointwise
    math), ``shared`` the innermost loop in it of
    multiply-adds fed from shared memory (a column, or row, of W_hh beyond registers),
    ``staging`` the innermost loop outside the pass that loads from global memory and stores to
    shared memory (a row of the step's staged values), and ``step`` the largest loop around the
    pass (a whole time step). 0 for a loop not found. The compiler unrolls some of these loops:
    ``lane_sum_lds``, ``shared_lds`` and ``staging_sts`` count their shared-memory loads (stores),
    which say how many iterations of the source loop one pass of the compiled loop runs.
    ``polls``: the wait loops, innermost loops that store nothing, of
    at most 8 instructions that load from global memory: a flag wait that still loads (ptxas
    deletes a wait loop of weak loads, leaving none). ``plan.step_instructions`` says how many
    times each runs."""
    instructions, labels = kernel_sass(sass, name)
    loops = loops_of(instructions, labels)

    def inside(inner, outer):
        return inner != outer and outer[0] <= inner[0] and inner[1] <= outer[1]

    def ops(loop):
        return [op.split(".")[0] for addr, op, _ in instructions if loop[0] <= addr <= loop[1]]

    def count(loop, *prefixes):
        return sum(1 for op in ops(loop) if op in prefixes)
    innermost = [lp for lp in loops if not any(inside(other, lp) for other in loops)]
    out = dict(dict.fromkeys(("step", "pass", "lane_sum", "lane_sum_lds", "shared", "shared_lds", "staging",
                              "staging_sts"), 0),
               polls=sum(1 for lp in innermost
                         if len(ops(lp)) <= 8 and count(lp, "LDG") and not count(lp, "STS", "STG")))
    fma = ("FFMA", "DFMA")
    adds = [lp for lp in innermost if count(lp, "LDS") and count(lp, "FADD", "DADD")
            and not count(lp, *fma, "STG", "LDG")]
    around = [lp for lp in loops if any(inside(a, lp) for a in adds) and count(lp, "BAR")]
    if not around:
        return out
    pass_ = min(around, key=lambda lp: lp[1] - lp[0])
    step = max([lp for lp in loops if inside(pass_, lp)] or [pass_], key=lambda lp: lp[1] - lp[0])
    within = [lp for lp in innermost if inside(lp, pass_) and count(lp, "LDS")]
    adds = [lp for lp in adds if inside(lp, pass_)]
    products = [lp for lp in within if count(lp, *fma) and not count(lp, "STG")]   # not the pointwise math
    staging = [lp for lp in innermost if inside(lp, step) and not inside(lp, pass_) and count(lp, "LDG")
               and count(lp, "STS")]
    out.update(step=len(ops(step)), **{"pass": len(ops(pass_))})
    for key, found, memory in (("lane_sum", adds, "LDS"), ("shared", products, "LDS"), ("staging", staging, "STS")):
        if found:
            loop = max(found, key=lambda lp: count(lp, *fma, "LDG"))
            out[key], out[f"{key}_{memory.lower()}"] = len(ops(loop)), count(loop, memory)
    return out


def link(ptx, cc):
    """(nvJitLink's verbose info log, the linked cubin) for linking ``ptx`` to SASS for sm_<cc>. A
    cooperative kernel (``this_grid().sync()`` calls into the device runtime) is linked with
    libcudadevrt, as numba-cuda links it."""
    from cuda.bindings import nvjitlink
    handle = nvjitlink.create(2, [f"-arch=sm_{cc[0]}{cc[1]}".encode(), b"-verbose"])
    try:
        data = ptx.encode()
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
        if "cudaCG" in ptx:
            from numba.cuda.cudadrv.libs import get_cudalib
            nvjitlink.add_file(handle, nvjitlink.InputType.LIBRARY, get_cudalib("cudadevrt", static=True))
        try:
            nvjitlink.complete(handle)
        except nvjitlink.nvJitLinkError as e:
            size = nvjitlink.get_error_log_size(handle)
            log = bytearray(size)
            nvjitlink.get_error_log(handle, log)
            detail = bytes(log).decode(errors="replace")
            raise RuntimeError(f"nvJitLink failed for sm_{cc[0]}{cc[1]}: {e}\n{detail}") from e
        size = nvjitlink.get_info_log_size(handle)
        log = bytearray(size)
        nvjitlink.get_info_log(handle, log)
        size = nvjitlink.get_linked_cubin_size(handle)
        cubin = bytearray(size)
        nvjitlink.get_linked_cubin(handle, cubin)
        return bytes(log).decode(errors="replace"), bytes(cubin)
    finally:
        nvjitlink.destroy(handle)


def _int(pattern, text, log):
    found = re.search(pattern, text)
    if not found:
        raise ValueError(f"pattern {pattern!r} not found in the nvJitLink log:\n{log}")
    return int(found.group(1))


def parse_log(log, name):
    """Registers, spills, stack, local and shared memory of kernel ``name`` in a link log.

    ptxas reports the kernel's own frame: registers, stack frame, spill stores and loads. The
    linker then reports each function of the linked image: ``call_stack`` there also counts the
    functions the kernel calls (a cooperative kernel calls the device runtime's grid sync, whose
    frame is a few bytes), ``lmem`` its local memory and ``smem`` its static shared memory.
    """
    own = re.search(r"Function properties for \S*" + re.escape(name) + r"\S*\n(.*?)Compile time", log, re.S)
    linked = re.search(r"Function properties for '\S*" + re.escape(name) + r"\S*':\n(.*?)\n", log)
    if not own or not linked:
        raise ValueError(f"kernel {name!r} not found in the nvJitLink log:\n{log}")
    own, linked = own.group(1), linked.group(1)
    return dict(
        registers=_int(r"[Uu]sed (\d+) registers", own, log),
        spill_stores=_int(r"(\d+) bytes spill stores", own, log),
        spill_loads=_int(r"(\d+) bytes spill loads", own, log),
        stack=_int(r"(\d+) bytes stack frame", own, log),
        call_stack=_int(r"(\d+) stack", linked, log),
        local=_int(r"(\d+) bytes lmem", linked, log),
        shared=_int(r"(\d+) bytes smem", linked, log),
    )


def kernel_list(halves=REPORTED_HALF):
    """(kernel name, cell, dtype, pyfunc, signature) for every kernel the cuda backend launches.
    The accumulation kernel does not depend on the cell: it is listed once per dtype (cell "*").
    The forward kernels of each half format of ``halves`` follow, with that format as their dtype,
    then the tensor cores' products (products_mma.py), one per format (bfloat16, float16, tf32)."""
    from .cuda import FORWARD_KERNELS, GPU_GEOMETRY, build_kernels, products_mma
    out = []
    for dtype in DTYPES:
        for cell in CELLS:
            kernels = build_kernels(cell, dtype, GPU_GEOMETRY)
            for name in ("step_forward", "step_backward", "persistent_forward", "persistent_backward"):
                out.append((name, cell, dtype) + kernels[name])
        out.append(("accumulate", "*", dtype) + build_kernels("lstm", dtype, GPU_GEOMETRY)["accumulate"])
    for half in halves:
        for cell in CELLS:
            kernels = build_kernels(cell, "float32", GPU_GEOMETRY, half)
            for name in FORWARD_KERNELS:
                out.append((name, cell, half) + kernels[name])
    for mode in products_mma.MODES:      # the opt-in tensor-core products, one per format, any cell
        out.append(("mma_products", "*", mode) + products_mma.build(mode)["mma_products"])
    return out


def report(targets=TARGETS, halves=REPORTED_HALF, cells=None):
    from numba import cuda
    from .cuda import GPU_GEOMETRY, toolchain
    from .cuda.runtime import kernel_options
    device = _TargetDevice()
    _patch_current_device(device)
    rows = []
    for name, cell, dtype, fn, sig in kernel_list(halves):
        if cells and cell not in cells and cell != "*":
            continue
        for cc in targets:
            device.compute_capability = cc
            ptx, _ = cuda.compile_ptx(fn, sig, cc=cc, **kernel_options(fn))
            row = dict(kernel=name, cell=cell, dtype=dtype, target=f"sm_{cc[0]}{cc[1]}")
            log, cubin = link(ptx, cc)
            row.update(parse_log(log, name))
            sass = disassemble(cubin)
            # the tensor cores' kernels: their hottest loop is the one with the most HMMA
            row.update(hot_loop(sass, name, "HMMA" if name == "mma_products" else
                                "DFMA" if dtype == "float64" else "FFMA"))
            row["occupancy"] = occupancy(row, name)
            if name.startswith("persistent"):
                row["step_loops"] = step_loops(sass, name)
                row["critical_path"] = critical_path(row, cell, dtype)
            rows.append(row)
    return dict(toolchain=toolchain(), geometry=GPU_GEOMETRY.__dict__, rows=rows,
                persistent_limits=persistent_limits(rows, halves=halves), critical_path_shape=CRITICAL_PATH_SHAPE)


# The shape each persistent kernel's ``critical_path`` is given for: B batch rows, H hidden units,
# on the modelled H100 (its plan: ``plan.choose`` with the compiled registers).
CRITICAL_PATH_SHAPE = dict(B=8, H=256)


def critical_path(row, cell, dtype, B=CRITICAL_PATH_SHAPE["B"], H=CRITICAL_PATH_SHAPE["H"]):
    """Instructions one warp issues on a time step's critical path in a compiled persistent
    kernel (a report row with ``step_loops``), for a layer of B rows and H units on the modelled
    H100: ``plan.step_instructions`` of the loops, the exchange excluded (it is a wait, measured
    by benchmarks/calibrate.py, not instructions)."""
    from .cuda import GPU_GEOMETRY, plan
    itemsize = itemsize_of(dtype)
    the_plan = plan.choose(cell, itemsize, B, H, plan.with_registers(plan.H100, row["registers"]), "persistent",
                           GPU_GEOMETRY, graphs=False)
    return plan.step_instructions(row["kernel"], the_plan, cell, H, itemsize, row["step_loops"], GPU_GEOMETRY)


DEVICES = (("sm_80", "A100"), ("sm_90", "H100"))


def block_threads(name, geo):
    """Threads a block of kernel ``name`` has with geometry ``geo``."""
    if name.startswith("step"):
        from .cuda.step import step_launch
        return math.prod(step_launch(1, 1, geo, "float32")[1])   # both step kernels' block shape
    if name == "accumulate":
        return geo.acc_threads ** 2
    if name == "mma_products":
        from .cuda.products_mma import WARPS
        return 32 * WARPS
    return geo.persist_threads


def occupancy(row, name):
    """The theoretical occupancy of a compiled kernel (a report row): resident warps over the 64
    an SM holds, on the modelled device of its target, from registers, block size and static shared
    memory."""
    from .cuda import GPU_GEOMETRY, plan
    device = getattr(plan, dict(DEVICES)[row["target"]])
    threads = block_threads(name, GPU_GEOMETRY)
    blocks = device.resident_blocks(threads, row["shared"], 0, row["registers"])
    warps = blocks * -(-threads // plan.WARP)
    return round(warps / (device.threads_per_sm // plan.WARP), 3)


def persistent_limits(rows, batch=8, halves=REPORTED_HALF):
    """Per modelled device, cell and dtype (a half format of ``halves`` too): the persistent
    kernels' registers (the larger of forward and backward, as the layer runs them:
    ``kernels_run_by``) and what ``plan.choose`` accepts with them at a batch of ``batch``."""
    from .cuda import GPU_GEOMETRY, plan
    out = []
    for target, model in DEVICES:
        if not any(r["target"] == target for r in rows):
            continue
        for cell in CELLS:
            for dtype in DTYPES + tuple(halves):
                regs = [r["registers"] for r in rows if r["target"] == target and r["cell"] == cell
                        and r["kernel"].startswith("persistent") and r["dtype"] == kernels_run_by(dtype, r["kernel"])]
                if not regs:          # a cell the report was not asked for
                    continue
                device = plan.with_registers(getattr(plan, model), max(regs))
                itemsize = itemsize_of(dtype)
                out.append(dict(device=device.name, sms=device.sms, cell=cell, dtype=dtype, registers=max(regs),
                                B=batch, **plan.limits(cell, itemsize, device, GPU_GEOMETRY, batch)))
    return out


KERNEL_COLUMNS = ("kernel", "cell", "dtype", "target", "registers", "spill_stores", "spill_loads", "stack",
                  "call_stack", "local", "shared", "fma", "lds", "ffma_per_lds", "occupancy")
LIMIT_COLUMNS = ("device", "cell", "dtype", "registers", "B", "largest_grid", "largest_hidden",
                 "largest_hidden_w_in_registers")
PATH_COLUMNS = ("kernel", "cell", "dtype", "target", "step", "pass", "lane_sum", "shared", "staging", "polls",
                "critical_path")


def table(rows, head=KERNEL_COLUMNS):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[h]) for h in head) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpurnn.kernels.report", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--target", action="append", choices=[f"sm_{a}{b}" for a, b in TARGETS],
                        help="compile for this target only (repeatable; default: all of them)")
    parser.add_argument("--half", action="append", choices=HALF,
                        help="list the forward kernels of this half format (repeatable; default: "
                             f"{', '.join(REPORTED_HALF)})")
    parser.add_argument("--cell", action="append", choices=CELLS,
                        help="this cell's kernels only, and the accumulation kernel (repeatable; default: every cell)")
    args = parser.parse_args(argv)
    from . import cuda_simulated
    if cuda_simulated():
        sys.exit("the report compiles real kernels: unset NUMBA_ENABLE_CUDASIM")
    missing = missing_toolchain()
    if missing:
        print(f"cannot compile: {missing}", file=sys.stderr)
        return MISSING_TOOLCHAIN
    targets = [cc for cc in TARGETS if not args.target or f"sm_{cc[0]}{cc[1]}" in args.target]
    result = report(targets, tuple(args.half or REPORTED_HALF), args.cell)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"compiled by {result['toolchain']}")
        print(f"geometry: {result['geometry']}  (bytes; shared is static shared memory per block; "
              "call_stack includes the functions a kernel calls)")
        print(table(result["rows"]))
        print("fma, lds: multiply-adds (FFMA; DFMA for float64; HMMA for mma_products) and shared-memory "
              "loads in the hottest loop's SASS; occupancy: resident warps / 64 on an A100 (sm_80) or H100 "
              "(sm_90); a half format's dtype: its own forward kernels (float32 arrays of its values; its "
              "backward is float32's)")
        print("\nlimits of the persistent path (hidden sizes; beyond the last, the step path; W_hh in "
              "registers: no value of it in shared memory, in either kernel)")
        print(table(result["persistent_limits"], LIMIT_COLUMNS))
        shape = result["critical_path_shape"]
        print(f"\nthe persistent kernels' time step: instructions of its loops (nested ones counted once) and "
              f"on its critical path at B = {shape['B']}, H = {shape['H']} on an H100 (plan.step_instructions)")
        print(table([dict(r, **r["step_loops"]) for r in result["rows"] if "step_loops" in r], PATH_COLUMNS))
    bad = failures(result["rows"])
    for line in bad:
        print(line, file=sys.stderr)
    return 1 if bad else 0


# The register-tiled kernels: in float32 each shared-memory load of their hottest loop must feed at
# least this many multiply-adds (a warp scheduler issues one instruction a cycle; at 4 FFMA a load
# and the loop's other instructions the FMA pipes stay the bottleneck).
TILED = ("step_forward", "step_backward", "accumulate")
MIN_FFMA_PER_LDS = 4


def failures(rows):
    """One line per kernel that spills, or per float32 (or half-format) register-tiled kernel
    whose hottest loop does fewer than MIN_FFMA_PER_LDS multiply-adds a shared-memory load."""
    out = []
    for r in rows:
        name = f"{r['kernel']} {r['cell']} {r['dtype']} {r['target']}"
        if r["spill_stores"] or r["spill_loads"]:
            out.append(f"{name} spills: {r['spill_stores']} bytes stored, {r['spill_loads']} loaded")
        if r["kernel"] in TILED and r["dtype"] != "float64" and (r["ffma_per_lds"] or 0) < MIN_FFMA_PER_LDS:
            out.append(f"{name}: {r['ffma_per_lds']} FFMA per LDS in its hottest loop "
                       f"({r['fma']} FFMA, {r['lds']} LDS), below {MIN_FFMA_PER_LDS}")
    return out


if __name__ == "__main__":
    sys.exit(main())

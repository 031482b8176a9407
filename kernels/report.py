"""Compile every CUDA kernel to SASS without a GPU and report its resources.

    python -m gpurnn.kernels.report            a table: one row per kernel x cell x dtype x target
    python -m gpurnn.kernels.report --json     the same rows as JSON

Each kernel of ``kernels/cuda/`` (``build_kernels``, with the GPU block geometry) is compiled to PTX
by ``numba.cuda.compile_ptx`` for compute capability 8.0 and 9.0, and the PTX is linked to SASS by
nvJitLink (``-arch=sm_80`` / ``-arch=sm_90``, ``-verbose``); the linker's log gives registers per
thread, spill stores and loads, stack frame, local memory and static shared memory per block.
Needs NVVM and nvJitLink (``pip install "numba-cuda[cu13]"``), no driver and no GPU.

Then the limits of the persistent path on an A100 (108 SMs, sm_80) and an H100 SXM (132 SMs,
sm_90), from those resources: ``kernels/cuda/plan.py``'s choice on a modelled device given the
registers of the compiled persistent kernels, per cell and dtype: the largest cooperative grid,
the largest hidden size accepted, and the largest whose W_hh (and dW_hh) stays on-chip.

Why nvJitLink and not the system ptxas: PTX from a newer NVVM than the installed toolkit is
rejected by that toolkit's ptxas; nvJitLink from the same release as NVVM accepts it.
Why the patch below: numba-cuda 0.30 asks the driver for the current device's compute capability
when a kernel calls a device function, even inside ``compile_ptx``; with no GPU that fails, so the
lookup answers with the target being compiled for. Run this in its own process: the compiler and
the simulator (``NUMBA_ENABLE_CUDASIM=1``) cannot share one.
"""

import argparse
import json
import re
import sys

TARGETS = ((8, 0), (9, 0))
DTYPES = ("float32", "float64")


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
    return None


def link_log(ptx, cc):
    """nvJitLink's verbose info log for linking ``ptx`` to SASS for sm_<cc>. A cooperative kernel
    (``this_grid().sync()`` calls into the device runtime) is linked with libcudadevrt, as
    numba-cuda links it."""
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
            raise RuntimeError(f"nvJitLink failed for sm_{cc[0]}{cc[1]}: {e}\n{bytes(log).decode(errors='replace')}")
        size = nvjitlink.get_info_log_size(handle)
        log = bytearray(size)
        nvjitlink.get_info_log(handle, log)
        return bytes(log).decode(errors="replace")
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


def kernel_list():
    """(kernel name, cell, dtype, pyfunc, signature) for every kernel the cuda backend launches.
    The accumulation kernel does not depend on the cell: it is listed once per dtype (cell "*")."""
    from .cuda import CELLS, GPU_GEOMETRY, build_kernels
    out = []
    for dtype in DTYPES:
        for cell in CELLS:
            kernels = build_kernels(cell, dtype, GPU_GEOMETRY)
            for name in ("step_forward", "step_backward", "persistent_forward", "persistent_backward"):
                out.append((name, cell, dtype) + kernels[name])
        out.append(("accumulate", "*", dtype) + build_kernels("lstm", dtype, GPU_GEOMETRY)["accumulate"])
    return out


def report(targets=TARGETS):
    from numba import cuda
    from .cuda import GPU_GEOMETRY, toolchain
    device = _TargetDevice()
    _patch_current_device(device)
    rows = []
    for name, cell, dtype, fn, sig in kernel_list():
        for cc in targets:
            device.compute_capability = cc
            ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
            row = dict(kernel=name, cell=cell, dtype=dtype, target=f"sm_{cc[0]}{cc[1]}")
            row.update(parse_log(link_log(ptx, cc), name))
            rows.append(row)
    return dict(toolchain=toolchain(), geometry=GPU_GEOMETRY.__dict__, rows=rows,
                persistent_limits=persistent_limits(rows))


DEVICES = (("sm_80", "A100"), ("sm_90", "H100"))


def persistent_limits(rows, batch=8):
    """Per modelled device, cell and dtype: the persistent kernels' registers (the larger of
    forward and backward) and what ``plan.choose`` accepts with them at a batch of ``batch``."""
    from .cuda import CELLS, GPU_GEOMETRY, plan
    out = []
    for target, model in DEVICES:
        for cell in CELLS:
            for dtype in DTYPES:
                regs = max(r["registers"] for r in rows if r["target"] == target and r["cell"] == cell
                           and r["dtype"] == dtype and r["kernel"].startswith("persistent"))
                device = plan.with_registers(getattr(plan, model), regs)
                itemsize = 4 if dtype == "float32" else 8
                out.append(dict(device=device.name, sms=device.sms, cell=cell, dtype=dtype, registers=regs,
                                B=batch, **plan.limits(cell, itemsize, device, GPU_GEOMETRY.persist_threads,
                                                 GPU_GEOMETRY.persist_rows, batch)))
    return out


KERNEL_COLUMNS = ("kernel", "cell", "dtype", "target", "registers", "spill_stores", "spill_loads", "stack",
                  "call_stack", "local", "shared")
LIMIT_COLUMNS = ("device", "cell", "dtype", "registers", "B", "largest_grid", "largest_hidden",
                 "largest_hidden_w_on_chip", "largest_hidden_dw_on_chip")


def table(rows, head=KERNEL_COLUMNS):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[h]) for h in head) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gpurnn.kernels.report", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    from ..backend import cuda_simulated
    if cuda_simulated():
        sys.exit("the report compiles real kernels: unset NUMBA_ENABLE_CUDASIM")
    missing = missing_toolchain()
    if missing:
        print(f"cannot compile: {missing}", file=sys.stderr)
        return MISSING_TOOLCHAIN
    result = report()
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"compiled by {result['toolchain']}")
        print(f"geometry: {result['geometry']}  (bytes; shared is static shared memory per block; "
              "call_stack includes the functions a kernel calls)")
        print(table(result["rows"]))
        print("\nlimits of the persistent path (hidden sizes; W_hh and dW_hh on-chip: in shared memory "
              "for the whole sequence; otherwise W_hh is read from L2 each step)")
        print(table(result["persistent_limits"], LIMIT_COLUMNS))
    bad = [r for r in result["rows"] if r["spill_stores"] or r["spill_loads"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

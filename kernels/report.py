"""Compile every CUDA kernel to SASS without a GPU and report its resources.

    python -m gpurnn.kernels.report            a table: one row per kernel x cell x dtype x target
    python -m gpurnn.kernels.report --json     the same rows as JSON

Each kernel of ``kernels/cuda.py`` (``build_kernels``, with the GPU block geometry) is compiled to PTX
by ``numba.cuda.compile_ptx`` for compute capability 8.0 and 9.0, and the PTX is linked to SASS by
nvJitLink (``-arch=sm_80`` / ``-arch=sm_90``, ``-verbose``); the linker's log gives registers per
thread, spill stores and loads, stack frame, local memory and static shared memory per block.
Needs NVVM and nvJitLink (``pip install "numba-cuda[cu13]"``), no driver and no GPU.

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
    """nvJitLink's verbose info log for linking ``ptx`` to SASS for sm_<cc>."""
    from cuda.bindings import nvjitlink
    handle = nvjitlink.create(2, [f"-arch=sm_{cc[0]}{cc[1]}".encode(), b"-verbose"])
    try:
        data = ptx.encode()
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
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


def _last_int(pattern, log):
    found = re.findall(pattern, log)
    if not found:
        raise ValueError(f"pattern {pattern!r} not found in the nvJitLink log:\n{log}")
    return int(found[-1])


def parse_log(log):
    """Registers, spills, stack, local and shared memory of the one kernel in a link log."""
    return dict(
        registers=_last_int(r"[Uu]sed (\d+) registers", log),
        spill_stores=_last_int(r"(\d+) bytes spill stores", log),
        spill_loads=_last_int(r"(\d+) bytes spill loads", log),
        stack=_last_int(r"(\d+) bytes stack frame", log),
        local=_last_int(r"(\d+) bytes lmem", log),
        shared=_last_int(r"(\d+) bytes smem", log),
    )


def kernel_list():
    """(kernel name, cell, dtype, pyfunc, signature) for every kernel the cuda backend launches.
    The accumulation kernel does not depend on the cell: it is listed once per dtype (cell "*")."""
    from .cuda import CELLS, GPU_GEOMETRY, build_kernels
    out = []
    for dtype in DTYPES:
        for cell in CELLS:
            kernels = build_kernels(cell, dtype, GPU_GEOMETRY)
            for name in ("step_forward", "step_backward"):
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
            row.update(parse_log(link_log(ptx, cc)))
            rows.append(row)
    return dict(toolchain=toolchain(), geometry=GPU_GEOMETRY.__dict__, rows=rows)


def table(rows):
    head = ("kernel", "cell", "dtype", "target", "registers", "spill_stores", "spill_loads", "stack",
            "local", "shared")
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
        print(f"geometry: {result['geometry']}  (bytes; shared is static shared memory per block)")
        print(table(result["rows"]))
    bad = [r for r in result["rows"] if r["spill_stores"] or r["spill_loads"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

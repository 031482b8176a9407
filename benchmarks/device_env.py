"""The environment report of ``benchmarks/device_run.sh``: what a GPU result was measured with.

    python benchmarks/device_env.py            # the machine: GPU, driver, compute capability, versions, NVVM
    python benchmarks/device_env.py --gpurnn   # gpurnn: where it was imported from, cuda_status(), the toolchain

The first part imports nothing of gpurnn (it runs before the install); each line is ``key: value``
and a missing tool or package is reported as such, never raised.
"""

import argparse
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys

PACKAGES = ("numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "torch", "numpy", "cuda-core",
            "cuda-bindings", "cuda-python", "nvidia-cuda-nvcc", "setuptools", "pytest", "pytest-xdist",
            "hypothesis")


def line(key, value):
    print(f"{key}: {value}", flush=True)


def command(cmd):
    """A command's output, or why there is none."""
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]} not found"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{cmd[0]} failed: {e}"
    out = (proc.stdout or proc.stderr).strip()
    return out if proc.returncode == 0 else f"{cmd[0]} exited {proc.returncode}: {out[-500:]}"


def machine():
    line("date", subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M:%S UTC"], capture_output=True,
                                text=True).stdout.strip())
    line("host", f"{platform.node()} {platform.platform()}, {os.cpu_count()} CPUs")
    line("gpu (name, driver, compute capability, memory)", command(
        ["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"]))
    line("nvcc", command(["nvcc", "--version"]).splitlines()[-1])
    line("ncu", command(["ncu", "--version"]).splitlines()[-1])
    line("python", f"{sys.version.split()[0]} at {sys.executable}")
    for name in PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        line(name, version)
    line("CUDA_HOME", os.environ.get("CUDA_HOME", "not set"))
    line("NUMBA_ENABLE_CUDASIM", os.environ.get("NUMBA_ENABLE_CUDASIM", "not set"))
    try:
        from numba import cuda
        from numba.cuda.cudadrv import nvvm
        line("numba.cuda.is_available()", cuda.is_available())
        found = nvvm.is_available()
        line("NVVM found", found)
        try:    # numba-cuda links with nvJitLink where it can (no PTX JIT in the driver)
            from numba.cuda.cudadrv.driver import _have_nvjitlink
            line("nvJitLink usable by numba-cuda", _have_nvjitlink())
        except ImportError:
            line("nvJitLink usable by numba-cuda", "unknown to this numba-cuda")
        if found:
            from numba.cuda.cuda_paths import get_cuda_paths
            paths = get_cuda_paths()
            for key in ("nvvm", "libdevice", "cudalib_dir"):
                if key in paths:
                    line(f"{key} (found by, path)", tuple(paths[key]))
    except Exception as e:          # report, never stop: this is what the report is for
        line("numba.cuda", f"{type(e).__name__}: {e}")


def gpurnn_part():
    try:
        import gpurnn
        from gpurnn.kernels import cuda as kc
    except Exception as e:
        line("gpurnn", f"import failed: {type(e).__name__}: {e}")
        return 1
    line("gpurnn", f"{gpurnn.__version__} from {os.path.dirname(gpurnn.__file__)}, kernels from "
                   f"{os.path.dirname(gpurnn.kernels.__file__)}")
    status = gpurnn.cuda_status()
    line("gpurnn.cuda_status()", status)
    line("kernels compiled by", kc.toolchain())
    return 0 if status[0] else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpurnn", action="store_true", help="report gpurnn's part (after the install)")
    args = p.parse_args(argv)
    if args.gpurnn:
        return gpurnn_part()
    machine()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one place that picks a backend.

    "reference"  plain NumPy, written to be read (kernels/reference.py)
    "cpu"        Numba @njit: float32 on threads of its own with register-tiled products, float64
                 and half layers with BLAS products (kernels/cpu.py, kernels/cpu_threads.py)
    "cuda"       CuPy arrays + Numba CUDA kernels (kernels/cuda/); with NUMBA_ENABLE_CUDASIM=1
                 the same kernels run in Numba's simulator on NumPy arrays
    "auto"       "cuda" when a GPU is usable, else "cpu"

A backend is the array module its arrays live in (``xp``: numpy or cupy) plus the kernel module
that runs a layer: ``forward_sequence`` / ``backward_sequence``, the same arguments in each
(kernels/contract.py, ``BackendKernels``).
"""

import ctypes
import functools
import os
import sys
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .kernels import cuda_simulated
from .kernels.contract import BackendKernels
from .kernels.vocabulary import BACKENDS


def cuda_status():
    """(usable, reason): whether the cuda backend can run here, and if not, what is missing.
    Asked once per process (the answer is kept), except in the simulator, which an environment
    variable switches."""
    if cuda_simulated():
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    return _probe_cuda()


def _driver_candidates():
    """Where numba-cuda looks for the CUDA driver's library, in its order
    (numba.cuda.cudadrv.driver.locate_driver_and_loader; NUMBA_CUDA_DRIVER names it outright)."""
    if os.environ.get("NUMBA_CUDA_DRIVER"):
        return [os.environ["NUMBA_CUDA_DRIVER"]]
    if sys.platform == "win32":
        dirs, names = ["\\windows\\system32"], ["nvcuda.dll"]
    elif sys.platform == "darwin":
        dirs, names = ["/usr/local/cuda/lib"], ["libcuda.dylib"]
    else:
        dirs, names = ["/usr/lib", "/usr/lib64"], ["libcuda.so", "libcuda.so.1"]
    return names + [os.path.join(d, n) for d in dirs for n in names]


def _driver_loads():
    """Whether the CUDA driver's library loads. Without it no GPU can run, and this takes a
    millisecond where importing numba-cuda to find out takes from a few tenths to seconds."""
    for path in _driver_candidates():
        try:
            ctypes.CDLL(path)
            return True
        except OSError:
            continue
    return False


@functools.lru_cache(maxsize=1)
def _probe_cuda():
    if not _driver_loads():
        return False, ("no CUDA driver was found (its library, libcuda, could not be loaded): "
                       "this machine has no NVIDIA GPU or driver")
    try:
        from numba import cuda
    except ImportError as e:  # numba-cuda not installed
        return False, f"numba-cuda is not installed ({e}); pip install 'gpurnn[cuda12]' or 'gpurnn[cuda13]'"
    try:
        available = cuda.is_available()
    except Exception as e:  # a broken driver install raises instead of answering
        return False, f"the CUDA driver could not be initialised ({e})"
    if not available:
        return False, "no usable CUDA GPU or driver was found (numba.cuda.is_available() is False)"
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        return False, f"CuPy is not installed ({e}); pip install 'gpurnn[cuda12]' or 'gpurnn[cuda13]'"
    return True, "CUDA GPU"


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here (no GPU, no driver, a package missing); ``name`` and
    ``reason`` let a caller phrase its own remedy (the command line says --backend cpu)."""

    def __init__(self, name, reason):
        super().__init__(f"backend {name!r} is not usable here: {reason}. Use backend='cpu' instead.")
        self.name, self.reason = name, reason


def available_memory(on_gpu=False):
    """Bytes that an allocation could still get here: the GPU's free memory (``on_gpu``), or the
    host's available memory (Linux's MemAvailable, else the physical memory), capped by the
    process's address-space limit when one is set. None when it cannot be told."""
    if on_gpu:
        try:
            import cupy
            return int(cupy.cuda.runtime.memGetInfo()[0])
        except Exception:
            return None
    found = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if found is None:
        try:
            found = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            found = min(found, limit)
    except (ImportError, ValueError, OSError):
        pass
    return found


@dataclass(frozen=True)
class Backend:
    name: str           # "reference", "cpu" or "cuda"
    xp: ModuleType      # numpy or cupy: where this backend's arrays live
    kernels: BackendKernels  # forward_sequence / backward_sequence of one layer and direction

    @property
    def on_gpu(self):
        return self.xp is not np

    def asarray(self, a, dtype, name="array", copy=False):
        """``a`` as a C-contiguous array of this backend: a no-copy view where it already is one,
        or, with ``copy``, always memory of its own (one copy, the cast included), so that the
        caller's later writes to ``a`` cannot reach it."""
        if self.on_gpu:
            if not hasattr(a, "__cuda_array_interface__") and _dlpack_on_gpu(a):
                a = self.xp.from_dlpack(a)      # a GPU array known only through DLPack: no copy
            if copy:
                return self.xp.array(a, dtype=dtype, order="C", copy=True)
            return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))
        if hasattr(a, "__cuda_array_interface__") and not cuda_simulated():
            raise ValueError(
                f"{name} is a GPU array but this model runs on the {self.name!r} backend; "
                f"copy it to the host first (e.g. cupy.asnumpy) or build the model with backend='cuda'")
        if copy:
            return np.array(a, dtype=dtype, order="C", copy=True)
        return np.ascontiguousarray(np.asarray(a), dtype=dtype)

    def to_host(self, a):
        """A host (NumPy) copy of ``a``. On the cuda backend this is a read: the device-side checks
        still pending (gpurnn/_checks.py) are read first, and the first that failed is raised."""
        if self.name == "cuda":
            from . import _checks
            _checks.fetch()
        return device_get(a)


def device_get(a):
    """``a`` as a NumPy array of its own: the one place gpurnn copies device memory to the host.

    A copy from the GPU waits for the work that writes ``a``: it synchronises the host with the
    GPU, and the host can no longer run ahead enqueueing launches. A training step on the cuda
    backend does it once, where the caller asks for a number (a loss as a Python float,
    ``Trainer.train_step``'s figures, a host copy), and reads the device-side checks in the same
    transfer (``_checks.fetch``); tests/test_cuda_syncs.py counts the calls per training step. A
    NumPy array (the other backends, and the simulator's stand-in for device memory) is copied."""
    if hasattr(a, "__cuda_array_interface__") and not cuda_simulated():
        import cupy
        return cupy.asnumpy(a)
    return np.array(a, copy=True)


def _dlpack_on_gpu(a):
    """Whether ``a`` offers DLPack from CUDA device memory (kDLCUDA = 2, kDLCUDAManaged = 13)."""
    try:
        return hasattr(a, "__dlpack__") and a.__dlpack_device__()[0] in (2, 13)
    except Exception:   # a producer that cannot say where it lives is not a GPU array we can view
        return False


def get_backend(name="auto"):
    """Return the Backend called ``name``; a clear error for an unknown or unusable one."""
    if isinstance(name, Backend):
        return name
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = "cuda" if cuda_status()[0] else "cpu"
    # Each backend's kernels are imported when first asked for: the cuda ones import numba-cuda.
    if name == "cuda":
        usable, reason = cuda_status()
        if not usable:
            raise BackendUnavailable("cuda", reason)
        from .kernels import cuda as kernels
        if cuda_simulated():
            return Backend("cuda", np, kernels)
        import cupy
        return Backend("cuda", cupy, kernels)
    if name == "cpu":
        from .kernels import cpu as kernels
    else:
        from .kernels import reference as kernels
    return Backend(name, np, kernels)


def array_module(a):
    """numpy or cupy, whichever ``a`` lives in."""
    if hasattr(a, "__cuda_array_interface__") and not cuda_simulated():
        import cupy
        return cupy
    return np

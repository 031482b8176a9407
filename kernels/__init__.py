"""Every kernel of gpurnn, one module a backend, each offering ``forward_sequence`` and
``backward_sequence`` for one recurrent layer and direction, with the same arguments (``contract.py``).

    cells.py      the pointwise math of each cell, written once, shared by the CPU and CUDA kernels
    reference.py  plain NumPy, the oracle
    cpu.py        Numba @njit step kernels around BLAS products
    cuda/         Numba CUDA kernels around cuBLAS products (imported only when used): the
                  persistent and per-step algorithms, the weight-gradient reduction, the plan
                  that picks an algorithm; its __init__ lists the modules
    report.py     every CUDA kernel compiled to SASS without a GPU: registers, spills, limits
    vocabulary.py the words every module uses: cells, gates, algorithms, backends
    contract.py   what a backend module offers, and what its forward saves for its backward

Nothing here imports from the rest of gpurnn: the library imports its kernels, never the reverse.
"""

import os


def cuda_simulated():
    """Whether the CUDA kernels run in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, read at each
    call: the simulator runs them on NumPy arrays, on a machine without a GPU)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

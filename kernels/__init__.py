"""Every kernel of gpurnn, one module a backend, each offering ``forward_sequence`` and
``backward_sequence`` for one recurrent layer and direction (contract in ``reference.py``).

    cells.py      the pointwise math of each cell, written once, shared by the CPU and CUDA kernels
    reference.py  plain NumPy, the oracle
    cpu.py        Numba @njit step kernels around BLAS products
    cuda.py       Numba CUDA kernels around cuBLAS products (imported only when used)
"""

"""The words of gpurnn, each defined here and nowhere else: the library, its kernels, the tests and
the benchmarks import them from this module (``from gpurnn.kernels.vocabulary import CELLS``).

    CELLS        the recurrent cells, as the layers and the kernels name them
    GATES        gate blocks of each cell (G): W_ih and W_hh have G*H rows, in torch.nn's order
                 (LSTM [i, f, g, o], GRU [r, z, n])
    MODEL_CELLS  a cell as ``make_model``, ``SequenceModel`` and ``gpurnn train --cell`` spell it,
                 mapped to its name in CELLS (the command line's names: "rnn" is the tanh RNN)
    ALGOS        how the cuda backend runs the recursion: "persistent" (one launch for all time
                 steps), "step" (one launch per step), or "auto" (kernels/cuda/plan.py decides)
    BACKENDS     where a layer runs: "reference" (NumPy, the oracle), "cpu" (Numba and BLAS),
                 "cuda" (Numba CUDA and CuPy), or "auto" ("cuda" when a GPU is usable, else "cpu")
    HALF         the half-precision formats of the recurrent layers: their values are rounded to
                 the format where a half-precision kernel stores them, and computed in float32
                 (kernels/precision.py says where)
    DTYPES       a recurrent layer's ``dtype``: float32 or float64 throughout, or one of HALF
"""

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
CELLS = tuple(GATES)
MODEL_CELLS = {"rnn": "rnn_tanh", "rnn-relu": "rnn_relu", "lstm": "lstm", "gru": "gru"}
ALGOS = ("auto", "persistent", "step")
BACKENDS = ("auto", "reference", "cpu", "cuda")
HALF = ("bfloat16", "float16")
DTYPES = ("float32", "float64", *HALF)


def check_cell(cell):
    """``cell`` when it is one of CELLS; ValueError naming the choices otherwise."""
    if cell not in GATES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELLS)}")
    return cell


def check_algo(algo):
    """``algo`` when it is one of ALGOS; ValueError naming the choices otherwise."""
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; expected one of {', '.join(ALGOS)}")
    return algo

"""The contract between the layers and a backend: what every backend module (``reference``, ``cpu``,
``cuda``) offers, with the same arguments, and what its forward keeps for its backward.

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (vocabulary.GATES).

    forward_sequence(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, algo="auto", half=None)
        -> y (T, B, H), h_n (B, H), c_n (B, H) or None, saved (a Saved)
    backward_sequence(cell, saved, dy, dh_n, dc_n, w_ih, w_hh, grads)
        -> dx (T, B, I), dh0 (B, H), dc0 (B, H) or None

    cell      one of vocabulary.CELLS
    x         (T, B, I)      input
    h0, c0    (B, H)         initial state (c0 is None except for the LSTM)
    w_ih      (G*H, I)       input weights, gate blocks stacked as in PyTorch
    w_hh      (G*H, H)       recurrent weights
    b_ih,b_hh (G*H,)         biases (zeros when the layer has none)
    lengths   (B,) int32 or None; row b is active at time t iff t < lengths[b]
    reverse   run t = T-1 .. 0 instead of 0 .. T-1
    algo      how the recursion runs: one of vocabulary.ALGOS. Only the cuda backend has a choice;
              the others run their one algorithm for "auto" and reject any other (``one_algorithm``)
    half      None, or one of vocabulary.HALF: the arrays are float32 and hold values of that
              format (the caller rounded x, h0, c0 and the weights), and forward rounds every
              state and activation it stores (hs, cs, gates, hn, y) to it, as half-precision
              storage holds them (kernels/precision.py); backward then runs as in float32
    dy        (T, B, H) or None; dh_n, dc_n (B, H) or None: gradients arriving from the loss
    grads     dict with "w_ih", "w_hh" and, when the layer has biases, "b_ih", "b_hh":
              backward ADDS the weight gradients into these arrays

The arrays are the backend's (NumPy, or CuPy for the cuda backend on a GPU), C-contiguous, of one
floating dtype, with the shapes above: the layer (gpurnn/layers.py) checks them once, and a
backend trusts them. Lengths follow PyTorch's packed sequences: at an inactive step a row keeps
its state and outputs zero. Running backwards through time, a row therefore starts at its own last
valid step, and ``h_n`` is each row's state after its last valid step, in either direction.
"""

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Protocol, runtime_checkable

from .vocabulary import GATES

Array = Any     # numpy.ndarray, or cupy.ndarray: the backend's array type


class Dims(NamedTuple):
    """The sizes of one layer and direction, read once from its arrays (``dims_of``)."""
    T: int
    B: int
    I: int
    H: int
    G: int


def dims_of(cell, x, w_hh):
    """Dims of a layer of ``cell`` from x (T, B, I) and w_hh (G*H, H)."""
    T, B, I = x.shape
    return Dims(int(T), int(B), int(I), int(w_hh.shape[1]), GATES[cell])


def steps(T, reverse):
    """(t, before, after) of every step in the order forward runs them: the time step, the index
    in ``Saved.hs`` of the state it reads and of the state it writes."""
    if reverse:
        return [(t, t + 1, t) for t in range(T - 1, -1, -1)]
    return [(t, t, t + 1) for t in range(T)]


@dataclass
class Saved:
    """What forward_sequence keeps for backward_sequence: the same record in every backend.

    ``hs`` holds every state in time order: the state before time t is ``hs[t + reverse]`` and the
    state after it ``hs[t + 1 - reverse]`` (``steps`` gives both indices), so h_prev of every step
    is the contiguous slice ``hs[reverse:T + reverse]``; the LSTM's cell states ``cs`` are laid out
    the same way. An inactive row's state after a step is its state before it; its ``gates`` and
    ``hn`` at that step are unspecified (a backend may leave them unwritten).
    """
    cell: str
    dims: Dims
    x: Array                    # (T, B, I): the input (backward's dW_ih)
    hs: Array                   # (T+1, B, H): the states, in time order
    cs: Optional[Array]         # (T+1, B, H): the LSTM's cell states, in time order; None otherwise
    gates: Optional[Array]      # (T, B, G*H): the LSTM's [i, f, g, o] or the GRU's [r, z, n], activated
    hn: Optional[Array]         # (T, B, H): the GRU's W_hn h_{t-1} + b_hn; None otherwise
    lengths: Optional[Array]    # (B,) int32, or None when every row runs all T steps
    reverse: bool


@runtime_checkable
class BackendKernels(Protocol):
    """What a backend module offers (the kernels of one layer and direction); see the module's
    docstring for the arguments. A backend may take further keyword arguments after these, each
    with a default (the cuda backend's ``geometry``, for tests and benchmarks)."""

    def forward_sequence(self, cell: str, x: Array, h0: Array, c0: Optional[Array], w_ih: Array, w_hh: Array,
                         b_ih: Array, b_hh: Array, lengths: Optional[Array], reverse: bool,
                         algo: str = "auto", half: Optional[str] = None) -> tuple: ...

    def backward_sequence(self, cell: str, saved: Saved, dy: Optional[Array], dh_n: Optional[Array],
                          dc_n: Optional[Array], w_ih: Array, w_hh: Array, grads: dict) -> tuple: ...


def one_algorithm(backend, algo):
    """For a backend with one algorithm: "auto" runs it; anything else is an error that says so."""
    if algo != "auto":
        raise ValueError(f"algo={algo!r} is an algorithm of the cuda backend; the {backend!r} backend has one "
                         "algorithm: leave algo='auto'")

"""Layers: RNN, LSTM, GRU (stacked, optionally bidirectional) and Linear.

Shapes and arguments follow PyTorch: x (T, B, I), or (B, T, I) with batch_first; y (T, B, D*H);
states (L*D, B, H) indexed layer*D + direction, with D = 2 when bidirectional. Parameters carry
torch.nn's names, shapes and gate order, so ``load_state_dict(torch_module.state_dict())`` works
both ways. An LSTM stack with projections (torch's ``proj_size`` P: a ``weight_hr`` per layer and
direction) outputs and carries h of size P: y (T, B, D*P), h (L*D, B, P), c (L*D, B, H).

``stack_forward`` / ``stack_backward`` run a stack of layers on any backend, each (layer,
direction) with the backend's ``forward_sequence`` and, for BPTT, ``backward_sequence``; the layer
classes here add input checks, and gpurnn.torch runs the same two functions under torch's autograd.

Every layer pickles and deep-copies (``Module.__getstate__`` / ``__deepcopy__`` say what is kept).
"""

import copy
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import _checks
from .backend import BackendUnavailable, get_backend
from .kernels import vocabulary
from .kernels.contract import Saved, one_algorithm
from .kernels.precision import check_half, round_in_place, rounded
from .kernels.vocabulary import GATES


class Module:
    """Parameters and their gradients, both dicts of backend arrays keyed by torch's names.

    ``grads`` accumulates: every ``backward`` adds into it until ``zero_grad()``.

    Pickling and ``copy.deepcopy`` keep the parameters, their gradients (as torch's deepcopy keeps
    ``.grad``) and every setting, and drop what the last forward saved for backward (the
    attributes named in ``_forward_state``): a copy must run a forward before its ``backward``, as
    after ``__init__``. ``copy.deepcopy`` copies the arrays on the same backend. A pickle holds the
    backend by name and the arrays as host NumPy arrays; unpickling rebuilds them on the backend of
    that name, as torch.load puts a tensor back on the device it was saved from, and raises
    BackendUnavailable where that backend cannot run (a model trained on "cuda", unpickled on a
    machine without a GPU): pickle its ``state_dict()`` instead, which loads into a model built on
    any backend.
    """

    _forward_state = ()     # attributes holding what the last forward saved for backward

    def __init__(self, backend, dtype):
        self.backend = get_backend(backend)
        self.dtype = _checks.dtype_of(dtype)
        self.params = {}
        self.grads = {}
        self.training = True

    def train(self, mode=True):
        """Training mode (dropout on) or, with ``mode=False``, evaluation mode; returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: dropout off. Same as ``train(False)``."""
        return self.train(False)

    def named_parameters(self):
        """(name, array) of every parameter, in torch.nn's order."""
        return iter(self.params.items())

    def parameters(self):
        """Every parameter array, in torch.nn's order."""
        return iter(self.params.values())

    def _init_params(self, shapes, bound, seed):
        """PyTorch's default initialisation: every parameter ~ U(-bound, bound)."""
        rng = np.random.default_rng(seed)
        for name, shape in shapes.items():
            value = rng.uniform(-bound, bound, size=shape).astype(self.dtype)
            self.params[name] = self.backend.asarray(value, self.dtype)
        self.zero_grad()

    def zero_grad(self):
        """Set every gradient to zero, in place (references to ``grads`` entries stay valid)."""
        for k, v in self.params.items():
            if k in self.grads:
                self.grads[k][...] = 0
            else:
                self.grads[k] = self.backend.xp.zeros_like(v)

    def state_dict(self):
        """Host (NumPy) copies of the parameters."""
        return {k: self.backend.to_host(v) for k, v in self.params.items()}

    def load_state_dict(self, state_dict):
        """Replace every parameter; all entries are checked before any is replaced."""
        missing = sorted(set(self.params) - set(state_dict))
        extra = sorted(set(state_dict) - set(self.params))
        if missing or extra:
            raise ValueError(f"load_state_dict: missing entries {missing}, unexpected entries {extra}; "
                             f"expected exactly {sorted(self.params)}")
        new = {}
        for name, old in self.params.items():
            value = state_dict[name]
            if hasattr(value, "detach"):  # a torch tensor (bfloat16: its float32 values, exact)
                value = value.detach().cpu()
                value = (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
            new[name] = _checks.float_array(value, f"state_dict[{name!r}]", self.backend,
                                            self.dtype, shape=tuple(old.shape), finite="now")
        for name, value in new.items():  # copies, so that updates never write into the caller's arrays
            self.params[name] = value.copy()

    def num_parameters(self):
        return sum(int(np.prod(v.shape)) for v in self.params.values())

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ pickle and copy
    def _reset_forward_state(self):
        for name in self._forward_state:
            setattr(self, name, None)

    def _settings(self):
        """``__dict__`` less the backend, the arrays and what the last forward saved."""
        skip = {"backend", "params", "grads", *self._forward_state}
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __getstate__(self):
        state = self._settings()
        state["backend"] = self.backend.name
        state["params"] = {k: self.backend.to_host(v) for k, v in self.params.items()}
        state["grads"] = {k: self.backend.to_host(v) for k, v in self.grads.items()}
        return state

    def __setstate__(self, state):
        state = dict(state)
        name = state.pop("backend")
        try:
            backend = get_backend(name)
        except BackendUnavailable as e:
            err = BackendUnavailable(name, e.reason)
            err.args = (f"this {type(self).__name__} was pickled on the {name!r} backend, which is not usable "
                        f"here: {e.reason}. Unpickle it where {name!r} runs and pickle its state_dict() "
                        f"instead: that loads into a model built with backend='cpu'",)
            raise err from None
        params, grads = state.pop("params"), state.pop("grads")
        self.__dict__.update(state)
        self.backend = backend
        self.params = {k: backend.asarray(v, self.dtype, copy=True) for k, v in params.items()}
        self.grads = {k: backend.asarray(v, self.dtype, copy=True) for k, v in grads.items()}
        self._reset_forward_state()

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self._settings(), memo))
        new.backend = self.backend
        new.params, new.grads = {}, {}
        for arrays, copies in ((self.params, new.params), (self.grads, new.grads)):
            for k, v in arrays.items():
                copies[k] = memo[id(v)] = v.copy()
        new._reset_forward_state()
        return new

    def __copy__(self):
        """A shallow copy shares everything, the arrays included, as before pickling was defined."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new


def layer_names(layer, direction, bias=True, proj=False):
    """torch.nn's parameter names of one layer and direction, keyed by the kernels' names (and
    "w_hr", the LSTM's projection, which no kernel takes), in torch.nn's order."""
    suffix = f"l{layer}" + ("_reverse" if direction else "")
    names = {"w_ih": f"weight_ih_{suffix}", "w_hh": f"weight_hh_{suffix}"}
    if bias:
        names.update(b_ih=f"bias_ih_{suffix}", b_hh=f"bias_hh_{suffix}")
    if proj:
        names["w_hr"] = f"weight_hr_{suffix}"
    return names


def check_algo(algo, backend):
    """``algo`` is one of ALGOS, and only the cuda backend (or "auto", which may become it) has a choice."""
    vocabulary.check_algo(algo)
    if backend not in ("auto", "cuda"):
        one_algorithm(backend, algo)
    return algo


def set_stack_arguments(module, cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                        bidirectional):
    """Checks torch.nn's arguments of a stack and sets them on ``module`` (a layer here, or a
    gpurnn.torch module), under torch.nn's attribute names."""
    module.cell = cell
    module.input_size = _checks.positive_int(input_size, "input_size")
    module.hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    module.num_layers = _checks.positive_int(num_layers, "num_layers")
    module.bias = bool(bias)
    module.batch_first = bool(batch_first)
    module.dropout = _checks.dropout_probability(dropout, module.num_layers)
    module.bidirectional = bool(bidirectional)


def parameter_shapes(cell, input_size, hidden_size, num_layers, bidirectional, bias, proj_size=0):
    """{torch.nn's name: shape} of every parameter of a stack, in torch.nn's order.

    ``proj_size`` P > 0 (LSTM only, P < hidden_size, as torch.nn checks): h is projected to P
    units, so weight_hh is (4H, P), each layer and direction adds weight_hr (P, H), and layers
    above the first read D*P features."""
    if proj_size:
        _checks.positive_int(proj_size, "proj_size")
        if cell != "lstm":
            raise ValueError(f"proj_size is supported for the LSTM only, not {cell!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size ({hidden_size}), got {proj_size}")
    G, H, D = GATES[cell], hidden_size, 2 if bidirectional else 1
    S = proj_size or H      # the size of h: what W_hh reads and each direction outputs
    shapes = {}
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else D * S
        for d in range(D):
            names = layer_names(layer, d, bias, bool(proj_size))
            shapes[names["w_ih"]] = (G * H, in_size)
            shapes[names["w_hh"]] = (G * H, S)
            if bias:
                shapes[names["b_ih"]] = (G * H,)
                shapes[names["b_hh"]] = (G * H,)
            if proj_size:
                shapes[names["w_hr"]] = (proj_size, H)
    return shapes


# ---------------------------------------------------------------- a stack of layers, on any backend
# The two functions below are the whole recurrent network: the layers here and gpurnn.torch's
# modules both run them. They take backend arrays that are already checked (shapes, dtype,
# contiguous) and never copy an input.

@dataclass
class Projected:
    """What a projected LSTM layer and direction (torch's ``proj_size`` P) keeps beside its ``Saved``.

    torch's projected LSTM feeds back h_{t-1} = W_hr m_{t-1}, m_t = o*tanh(c_t) (size H): so from
    its second step on it is the plain LSTM on state m with recurrent weights W_hh W_hr (4H, H),
    and the kernels run it unchanged. Only the first step reads h0 (size P): W_hh h0 comes in as
    input, through P more input features, zero but at each row's first step where they hold h0,
    with W_hh as their input weights; the kernels start from m = 0. Their output m is projected
    after them: y = m W_hrᵀ, h_n = m_n W_hrᵀ.
    """
    w_ih: Any       # (4H, I+P): [W_ih | W_hh], the input weights the kernels ran
    w_hh: Any       # (4H, H): W_hh W_hr, the recurrent weights on m
    m: Any          # (T, B, H): the kernels' output, zero at inactive steps (dW_hr = Σ dyᵀ m)
    m_n: Any        # (B, H): the kernels' final state
    first: Any      # each row's first step, where h0 enters: 0, T-1, or (B,) lengths-1 (reverse)


@dataclass
class StackSaved:
    """What ``stack_forward`` keeps for ``stack_backward``: each layer and direction's ``Saved``
    (kernels/contract.py), index layer*D + direction, and the stack's shape and dropout masks; T,
    B and H are the first layer's (every layer has them; H is the hidden size, also with
    projections)."""
    cell: str
    saved: list[Saved]      # L*D of them
    num_layers: int
    D: int                  # directions: 1, or 2 when bidirectional
    bias: bool
    masks: Optional[list]   # None, or L-1 arrays (T, B, D*H) (D*P with projections): dropout between layers
    proj: Optional[list] = None     # a projected LSTM's L*D ``Projected``, index as ``saved``; else None
    half: Optional[str] = None      # the half format the stack ran in (kernels/precision.py), or None
    weights: Optional[dict] = None  # half: the rounded copies of the weights that forward ran with

    @property
    def T(self):
        return self.saved[0].dims.T

    @property
    def B(self):
        return self.saved[0].dims.B

    @property
    def H(self):
        return self.saved[0].dims.H

    @property
    def plans(self):
        """The cuda backend's plan of each layer and direction (none on the other backends)."""
        return [s.plan for s in self.saved if getattr(s, "plan", None) is not None]


_constant_zeros = {}


def _zeros(xp, n, dtype):
    """(n,) zeros of ``xp`` that nothing writes (a layer without biases passes them as b_ih and
    b_hh): one per array module, size, dtype, GPU and stream serves every call, so that a CUDA
    graph reading them keeps its address (kernels/cuda/graphs.py)."""
    where = (xp.cuda.Device().id, xp.cuda.get_current_stream().ptr) if hasattr(xp, "cuda") else None
    key = (xp, int(n), np.dtype(dtype).name, where)
    if key not in _constant_zeros:
        _constant_zeros[key] = xp.zeros(n, dtype)
    return _constant_zeros[key]


def stack_forward(backend, cell, params, x, h0, c0, lengths, num_layers, bidirectional, masks=None,
                  algo="auto", half=None):
    """Forward through ``num_layers`` layers of ``cell``, each one or two directions.

    params: torch.nn's names -> arrays (no bias entries: the layers have no bias; weight_hr
    entries: an LSTM with projections, see ``Projected``);
    x (T, B, I); h0, c0 (L*D, B, H) (c0 only for "lstm"); lengths (B,) int32 or None;
    masks: None, or L-1 arrays (T, B, D*H) that multiply the output of layer l before layer l+1
    reads it (dropout); algo: the cuda backend's algorithm; half: None, or a half format
    (vocabulary.HALF) for float32 arrays: x, h0, c0 and copies of the weights are rounded to it,
    then every value at the rounding points of kernels/precision.py.
    Returns y (T, B, D*H), h_n, c_n (L*D, B, H; c_n None unless "lstm") and what stack_backward
    needs. With projections to P units, h0, h_n are (L*D, B, P), y and masks (T, B, D*P).
    """
    xp = backend.xp
    if check_half(half) is not None:        # the inputs and weights as autocast casts them
        params = {name: rounded(p, half) for name, p in params.items()}
        x, h0 = rounded(x, half), rounded(h0, half)
        c0 = None if c0 is None else rounded(c0, half)
    proj = "weight_hr_l0" in params
    G, H, D = GATES[cell], (c0 if proj else h0).shape[2], 2 if bidirectional else 1
    bias = "bias_ih_l0" in params
    zero_bias = None if bias else _zeros(xp, G * H, x.dtype)
    h_n = xp.empty_like(h0)
    c_n = xp.empty_like(c0 if proj else h0) if cell == "lstm" else None
    saved, records, layer_input = [], [], x
    for layer in range(num_layers):
        outputs = []
        for d in range(D):
            names, k = layer_names(layer, d, bias, proj), layer * D + d
            p = {key: params[n] for key, n in names.items()}
            if proj:
                y, h, c, s, record = _projected_forward(backend, layer_input, h0[k], c0[k], p, p.get("b_ih", zero_bias),
                                                        p.get("b_hh", zero_bias), lengths, bool(d), algo, half)
                records.append(record)
            else:
                y, h, c, s = backend.kernels.forward_sequence(
                    cell, layer_input, h0[k], None if c0 is None else c0[k], p["w_ih"], p["w_hh"],
                    p.get("b_ih", zero_bias), p.get("b_hh", zero_bias), lengths, bool(d), algo, half=half)
            h_n[k] = h
            if c_n is not None:
                c_n[k] = c
            outputs.append(y)
            saved.append(s)
        layer_input = outputs[0] if D == 1 else xp.concatenate(outputs, axis=2)
        if masks is not None and layer < num_layers - 1:
            layer_input = layer_input * masks[layer]
            round_in_place(layer_input, half)
    return layer_input, h_n, c_n, StackSaved(cell, saved, num_layers, D, bias, masks, records if proj else None,
                                             half, params if half is not None else None)


def stack_backward(backend, state, dy, dh_n, dc_n, params, grads):
    """BPTT through the stack that ``stack_forward`` ran: adds every parameter's gradient into
    ``grads`` (torch.nn's names -> arrays) and returns dx (T, B, I), dh0, dc0 (L*D, B, H).

    dy (T, B, D*H), dh_n, dc_n (L*D, B, H): the loss's gradients, each None for zero. With
    projections to P units, dy is (T, B, D*P), dh_n and the dh0 returned (L*D, B, P).
    A stack that ran in a half format (``state.half``) multiplies with the rounded weights its
    forward ran with, and rounds dy, dh_n, dc_n and its results dx, dh0, dc0 to the format; the
    weight gradients stay float32 (kernels/precision.py).
    """
    xp = backend.xp
    cell, saved, D, H, masks, L = state.cell, state.saved, state.D, state.H, state.masks, state.num_layers
    half = state.half
    if half is not None:
        params = state.weights
        dy, dh_n, dc_n = (None if a is None else rounded(a, half) for a in (dy, dh_n, dc_n))
    proj = state.proj
    S = H if proj is None else params["weight_hr_l0"].shape[0]     # the size of h
    dt = params["weight_hh_l0"].dtype
    dh0 = xp.zeros((L * D, state.B, S), dt)
    dc0 = xp.zeros((L * D, state.B, H), dt) if cell == "lstm" else None
    dx = None
    for layer in reversed(range(L)):
        if masks is not None and layer < L - 1 and dy is not None:
            dy = dy * masks[layer]          # dropout's mask, as forward applied it
        dx = None
        for d in range(D):
            names, k = layer_names(layer, d, state.bias, proj is not None), layer * D + d
            dy_d = None if dy is None else xp.ascontiguousarray(dy[:, :, d * S:(d + 1) * S])
            dh_k, dc_k = None if dh_n is None else dh_n[k], None if dc_n is None else dc_n[k]
            if proj is None:
                dx_d, dh, dc = backend.kernels.backward_sequence(
                    cell, saved[k], dy_d, dh_k, dc_k, params[names["w_ih"]], params[names["w_hh"]],
                    {key: grads[n] for key, n in names.items()})
            else:
                dx_d, dh, dc = _projected_backward(backend, saved[k], proj[k], dy_d, dh_k, dc_k, params, grads,
                                                   names)
            dh0[k] = dh
            if dc0 is not None:
                dc0[k] = dc
            dx = dx_d if dx is None else dx + dx_d
        dy = dx  # the gradient of this layer's input is the next-lower layer's output gradient
    for a in (dx, dh0, dc0):
        if a is not None:
            round_in_place(a, half)
    return dx, dh0, dc0


def _projected_forward(backend, x, h0, c0, p, b_ih, b_hh, lengths, reverse, algo, half=None):
    """One direction of a projected LSTM layer (``Projected`` says how): x (T, B, I), h0 (B, P),
    c0 (B, H), p the kernels' names -> arrays with "w_hr". Returns y (T, B, P), h_n (B, P),
    c_n (B, H), the kernels' Saved and the Projected record. In a half format, W_hh W_hr is
    rounded as a weight, and y and h_n as the outputs they are."""
    xp = backend.xp
    T, B, I = x.shape
    w_hh, w_hr = p["w_hh"], p["w_hr"]
    (P, H), rows = w_hr.shape, xp.arange(B)
    # a reversed row starts at its own last valid step (kernels/contract.py)
    first = 0 if not reverse else T - 1 if lengths is None else lengths - 1
    xe = xp.zeros((T, B, I + P), x.dtype)
    xe[:, :, :I] = x
    xe[first, rows, I:] = h0
    w_ih, w_m = xp.concatenate((p["w_ih"], w_hh), axis=1), rounded(w_hh @ w_hr, half)
    m, m_n, c_n, saved = backend.kernels.forward_sequence("lstm", xe, xp.zeros((B, H), x.dtype), c0, w_ih, w_m,
                                                          b_ih, b_hh, lengths, reverse, algo, half=half)
    y, h_n = (m.reshape(T * B, H) @ w_hr.T).reshape(T, B, P), m_n @ w_hr.T
    round_in_place(y, half)
    round_in_place(h_n, half)
    return y, h_n, c_n, saved, Projected(w_ih, w_m, m, m_n, first)


def _projected_backward(backend, saved, rec, dy, dh_n, dc_n, params, grads, names):
    """BPTT of one direction of a projected LSTM layer: dy (T, B, P), dh_n (B, P), dc_n (B, H),
    each None for zero. Adds into grads (torch.nn's names) and returns dx (T, B, I), dh0 (B, P),
    dc0 (B, H). The kernels' weight gradients go to zeros of [W_ih | W_hh] and W_hh W_hr's shapes,
    then through the chain rule to W_ih, W_hh and W_hr; the biases' go straight into grads."""
    xp = backend.xp
    w_hh, w_hr = params[names["w_hh"]], params[names["w_hr"]]
    (P, H), (T, B) = w_hr.shape, rec.m.shape[:2]
    I = rec.w_ih.shape[1] - P
    g_hr = grads[names["w_hr"]]
    dm = dm_n = None
    if dy is not None:                  # y = m W_hrᵀ
        dm = (dy.reshape(T * B, P) @ w_hr).reshape(T, B, H)
        g_hr += dy.reshape(T * B, P).T @ rec.m.reshape(T * B, H)
    if dh_n is not None:                # h_n = m_n W_hrᵀ
        dm_n = dh_n @ w_hr
        g_hr += dh_n.T @ rec.m_n
    g = {"w_ih": xp.zeros_like(rec.w_ih), "w_hh": xp.zeros_like(rec.w_hh)}
    g.update((k, grads[names[k]]) for k in ("b_ih", "b_hh") if k in names)
    dxe, _, dc0 = backend.kernels.backward_sequence("lstm", saved, dm, dm_n, dc_n, rec.w_ih, rec.w_hh, g)
    grads[names["w_ih"]] += g["w_ih"][:, :I]
    grads[names["w_hh"]] += g["w_ih"][:, I:] + g["w_hh"] @ w_hr.T       # W_hh h0, and W_hh W_hr m
    g_hr += w_hh.T @ g["w_hh"]
    return xp.ascontiguousarray(dxe[:, :, :I]), dxe[rec.first, xp.arange(B), I:], dc0


class RNNBase(Module):
    """A stack of ``num_layers`` recurrent layers of one cell, in torch.nn's argument order.

    ``batch_first``: x and y are (B, T, ...) instead of (T, B, ...); states stay (L*D, B, H), as in
    torch. ``dropout``: in training mode (``train()``, the default), each layer's output but the
    last is multiplied by a mask of zeros (probability ``dropout``) and 1/(1 - dropout), drawn from
    ``self.generator`` (a NumPy Generator seeded from ``seed``) on the host, so that every
    backend draws the same masks; backward applies the same mask; ``eval()`` turns it off.
    ``algo`` picks how the cuda backend runs the recursion: "persistent" (one launch for all
    time steps), "step" (one launch per step, replayed from a CUDA graph) or "auto", decided per
    layer and direction by kernels/cuda/plan.py from the shapes and the device: with CUDA graphs
    (the default), step from 16 batch rows on, persistent below that where its grid and W_hh fit
    the GPU; without them, persistent wherever it fits. Other backends have one algorithm and
    accept only "auto".
    ``dtype``: "float32" or "float64" throughout, or a half format, "bfloat16" or "float16"
    (``self.half``): then the parameters and their gradients stay float32 (master weights, as
    under torch.autocast), and the layer computes as a half-precision kernel with float32
    arithmetic does: its inputs, a copy of the weights, the states and activations it stores
    and its results are rounded to the format, sums and weight gradients stay float32
    (kernels/precision.py). Its arrays are float32 holding the format's values (NumPy and CuPy
    have no bfloat16); ``y.astype(numpy.float16)`` of a float16 layer loses nothing.
    """

    _forward_state = ("_saved", "plans")
    half = None         # the half format, or None (pickles from before half formats have none)

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, backend="auto", dtype="float32", seed=None, algo="auto"):
        array_dtype, self.half = _checks.recurrent_dtype(dtype)
        super().__init__(backend, array_dtype)
        self.algo = check_algo(algo, self.backend.name)
        self.plans = []   # the cuda backend's plan of each layer and direction in the last forward
        set_stack_arguments(self, cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                            bidirectional)
        self.num_directions = 2 if self.bidirectional else 1
        shapes = parameter_shapes(cell, self.input_size, self.hidden_size, self.num_layers, self.bidirectional,
                                  self.bias)
        self._init_params(shapes, 1.0 / np.sqrt(self.hidden_size), seed)
        self.generator = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
        self._saved = None

    def _reset_forward_state(self):
        self._saved, self.plans = None, []

    def _names(self, layer, direction):
        return layer_names(layer, direction, self.bias)

    def _state_shape(self, B):
        return (self.num_layers * self.num_directions, B, self.hidden_size)

    def __repr__(self):
        extra = f", nonlinearity={self.cell[4:]!r}" if self.cell.startswith("rnn") else ""
        if self.batch_first:
            extra += ", batch_first=True"
        if self.dropout:
            extra += f", dropout={self.dropout}"
        used = ""
        if self.plans:
            used = " [last forward: " + "; ".join(sorted({p.describe() for p in self.plans})) + "]"
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, bias={self.bias}{extra}, "
                f"backend={self.backend.name!r}, dtype={self.half or self.dtype.name!r}, algo={self.algo!r}){used}")

    def _time_major(self, a, name, last):
        """``a`` as given (T, B, last), or its (T, B, last) view when batch_first (B, T, last)."""
        if not self.batch_first or a is None:
            return a
        _checks.check_shape(a, f"{name} (batch_first: B, T, {last})", (None, None, last))
        return _checks.swap_batch_time(a)

    # ------------------------------------------------------------ forward
    def _forward(self, x, h0, c0, lengths):
        be, xp = self.backend, self.backend.xp
        x = self._time_major(x, "x", self.input_size)
        # copy: backward reads x (dW_ih), and the caller may write into its array in between
        x = _checks.float_array(x, "x", be, self.dtype, shape=(None, None, self.input_size), copy=True)
        T, B, _ = x.shape
        if T == 0 or B == 0:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected at least one time step and one batch row")
        shape = self._state_shape(B)
        zeros = xp.zeros(shape, self.dtype)
        h0 = zeros if h0 is None else _checks.float_array(h0, "h0", be, self.dtype, shape=shape)
        if self.cell == "lstm":
            c0 = zeros if c0 is None else _checks.float_array(c0, "c0", be, self.dtype, shape=shape)
        lens = None if lengths is None else be.asarray(_checks.lengths_array(lengths, T, B), np.int32)
        _checks.check_all_finite(self.params, "parameter", be)
        masks = None
        if self.training and self.dropout and self.num_layers > 1:
            keep, width = 1.0 - self.dropout, self.num_directions * self.hidden_size
            scale = 1.0 / keep if keep else 0.0         # dropout=1 zeroes everything, as torch does
            masks = [be.asarray((self.generator.random((T, B, width)) < keep) * scale, self.dtype)
                     for _ in range(self.num_layers - 1)]
        # The last forward's record goes first: on the cuda backend its arrays hold a graph
        # workspace (kernels/cuda/graphs.py), which this forward may then reuse.
        self._saved = None
        y, h_n, c_n, self._saved = stack_forward(be, self.cell, self.params, x, h0, c0, lens, self.num_layers,
                                                 self.bidirectional, masks, self.algo, self.half)
        self.plans = self._saved.plans
        return (y.swapaxes(0, 1) if self.batch_first else y), h_n, c_n

    # ------------------------------------------------------------ backward (BPTT)
    def _backward(self, dy, dh_n, dc_n):
        if self._saved is None:
            raise ValueError("backward() called before forward(): run the model on an input first")
        be = self.backend
        T, B = self._saved.T, self._saved.B
        DH = self.num_directions * self.hidden_size
        shape = self._state_shape(B)
        if dy is not None:
            dy = self._time_major(dy, "dy", DH)
            dy = _checks.float_array(dy, "dy", be, self.dtype, shape=(T, B, DH))
        if dh_n is not None:
            dh_n = _checks.float_array(dh_n, "dh_n", be, self.dtype, shape=shape)
        if dc_n is not None:
            dc_n = _checks.float_array(dc_n, "dc_n", be, self.dtype, shape=shape)
        dx, dh0, dc0 = stack_backward(be, self._saved, dy, dh_n, dc_n, self.params, self.grads)
        return (dx.swapaxes(0, 1) if self.batch_first else dx), dh0, dc0


class _HiddenStateLayer(RNNBase):
    """A layer whose state is h alone (RNN, GRU).

    ``y, h_n = m(x, h0=None, lengths=None)``; ``dx, dh0 = m.backward(dy=None, dh_n=None)``.
    """

    def forward(self, x, h0=None, lengths=None):
        y, h_n, _ = self._forward(x, h0, None, lengths)
        return y, h_n

    def backward(self, dy=None, dh_n=None):
        dx, dh0, _ = self._backward(dy, dh_n, None)
        return dx, dh0


class RNN(_HiddenStateLayer):
    """Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, backend="auto", dtype="float32", seed=None, algo="auto"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, backend=backend, dtype=dtype, seed=seed, algo=algo)


class GRU(_HiddenStateLayer):
    """GRU, gate rows [r, z, n]: n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h' = (1-z)*n + z*h."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, backend="auto", dtype="float32", seed=None, algo="auto"):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         backend=backend, dtype=dtype, seed=seed, algo=algo)


class LSTM(RNNBase):
    """LSTM, gate rows [i, f, g, o]: c' = f*c + i*g, h' = o*tanh(c').

    ``y, (h_n, c_n) = m(x, (h0, c0)=None, lengths=None)``;
    ``dx, (dh0, dc0) = m.backward(dy=None, (dh_n, dc_n)=None)``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, backend="auto", dtype="float32", seed=None, algo="auto"):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         backend=backend, dtype=dtype, seed=seed, algo=algo)

    def forward(self, x, state=None, lengths=None):
        h0, c0 = _pair(state, "state")
        y, h_n, c_n = self._forward(x, h0, c0, lengths)
        return y, (h_n, c_n)

    def backward(self, dy=None, dstate=None):
        dh_n, dc_n = _pair(dstate, "dstate")
        dx, dh0, dc0 = self._backward(dy, dh_n, dc_n)
        return dx, (dh0, dc0)


def recurrent_layer(cell, input_size, hidden_size, **kwargs):
    """The RNN, LSTM or GRU of ``cell`` (a name of vocabulary.CELLS), with torch.nn's other arguments."""
    vocabulary.check_cell(cell)
    if cell == "lstm":
        return LSTM(input_size, hidden_size, **kwargs)
    if cell == "gru":
        return GRU(input_size, hidden_size, **kwargs)
    return RNN(input_size, hidden_size, nonlinearity=cell[len("rnn_"):], **kwargs)


def _pair(state, name):
    if state is None:
        return None, None
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(f"{name} must be a pair (h, c) of arrays (either may be None), got {type(state).__name__}")
    return state


class Linear(Module):
    """y = x @ weight.T + bias over the last axis (torch.nn.Linear's names and init)."""

    _forward_state = ("_x",)

    def __init__(self, in_features, out_features, bias=True, backend="auto", dtype="float32", seed=None):
        super().__init__(backend, dtype)
        self.in_features = _checks.positive_int(in_features, "in_features")
        self.out_features = _checks.positive_int(out_features, "out_features")
        shapes = {"weight": (self.out_features, self.in_features)}
        if bias:
            shapes["bias"] = (self.out_features,)
        self._init_params(shapes, 1.0 / np.sqrt(self.in_features), seed)
        self._x = None

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={'bias' in self.params})"

    def forward(self, x):
        """x: (..., in_features) -> (..., out_features)."""
        shape = np.shape(x) if not hasattr(x, "shape") else tuple(x.shape)
        x = _checks.float_array(x, "x", self.backend, self.dtype,
                                shape=(None,) * (len(shape) - 1) + (self.in_features,), copy=True)
        self._x = x
        y = x @ self.params["weight"].T
        if "bias" in self.params:
            y += self.params["bias"]
        return y

    def backward(self, dy):
        """dy: (..., out_features) -> dx (..., in_features); adds into grads."""
        if self._x is None:
            raise ValueError("backward() called before forward(): run the model on an input first")
        dy = _checks.float_array(dy, "dy", self.backend, self.dtype,
                                 shape=tuple(self._x.shape[:-1]) + (self.out_features,))
        x2 = self._x.reshape(-1, self.in_features)
        dy2 = dy.reshape(-1, self.out_features)
        self.grads["weight"] += dy2.T @ x2
        if "bias" in self.params:
            self.grads["bias"] += dy2.sum(axis=0, dtype=np.float64)     # T*B rows: exact, rounded once
        return dy @ self.params["weight"]

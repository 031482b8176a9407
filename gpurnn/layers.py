"""Layers: RNN, LSTM, GRU (stacked, optionally bidirectional) and Linear.

Shapes follow PyTorch: x (T, B, I); y (T, B, D*H); states (L*D, B, H) indexed layer*D + direction,
with D = 2 when bidirectional. Parameters carry torch.nn's names, shapes and gate order, so
``load_state_dict(torch_module.state_dict())`` (as NumPy arrays) works both ways.

A layer runs each (layer, direction) with its backend's ``forward_sequence`` and, for BPTT,
``backward_sequence``; this module only stacks layers, joins directions and checks input.
"""

import numpy as np

from . import _checks
from .backend import get_backend

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


class Module:
    """Parameters and their gradients, both dicts of backend arrays keyed by torch's names.

    ``grads`` accumulates: every ``backward`` adds into it until ``zero_grad()``.
    """

    def __init__(self, backend, dtype):
        self.backend = get_backend(backend)
        self.dtype = _checks.dtype_of(dtype)
        self.params = {}
        self.grads = {}

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
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            new[name] = _checks.float_array(value, f"state_dict[{name!r}]", self.backend,
                                            self.dtype, shape=tuple(old.shape))
        for name, value in new.items():  # copies, so that updates never write into the caller's arrays
            self.params[name] = value.copy()

    def num_parameters(self):
        return sum(int(np.prod(v.shape)) for v in self.params.values())

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


ALGOS = ("auto", "persistent", "step")


class RNNBase(Module):
    """``algo`` picks how the cuda backend runs the recursion: "persistent" (one launch for all
    time steps), "step" (one launch per step) or "auto" (persistent where W_hh fits the GPU,
    decided per layer from the shapes and the device; kernels/cuda/plan.py). Other backends
    have one algorithm and accept only "auto"."""

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True,
                 backend="auto", dtype="float32", seed=None, algo="auto"):
        super().__init__(backend, dtype)
        if algo not in ALGOS:
            raise ValueError(f"unknown algo {algo!r}; expected one of {', '.join(ALGOS)}")
        if algo != "auto" and self.backend.name != "cuda":
            raise ValueError(f"algo={algo!r} is an algorithm of the cuda backend; the {self.backend.name!r} "
                             "backend has one algorithm: leave algo='auto'")
        self.algo = algo
        self.plans = []   # the cuda backend's plan of each layer and direction in the last forward
        self.cell = cell
        self.input_size = _checks.positive_int(input_size, "input_size")
        self.hidden_size = _checks.positive_int(hidden_size, "hidden_size")
        self.num_layers = _checks.positive_int(num_layers, "num_layers")
        self.bidirectional = bool(bidirectional)
        self.bias = bool(bias)
        self.num_directions = 2 if self.bidirectional else 1
        G, H, D = GATES[cell], self.hidden_size, self.num_directions
        shapes = {}
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else D * H
            for d in range(D):
                names = self._names(layer, d)
                shapes[names["w_ih"]] = (G * H, in_size)
                shapes[names["w_hh"]] = (G * H, H)
                if self.bias:
                    shapes[names["b_ih"]] = (G * H,)
                    shapes[names["b_hh"]] = (G * H,)
        self._init_params(shapes, 1.0 / np.sqrt(H), seed)
        self._saved = None

    def _names(self, layer, direction):
        suffix = f"l{layer}" + ("_reverse" if direction else "")
        names = {"w_ih": f"weight_ih_{suffix}", "w_hh": f"weight_hh_{suffix}"}
        if self.bias:
            names.update(b_ih=f"bias_ih_{suffix}", b_hh=f"bias_hh_{suffix}")
        return names

    def _state_shape(self, B):
        return (self.num_layers * self.num_directions, B, self.hidden_size)

    def __repr__(self):
        extra = f", nonlinearity={self.cell[4:]!r}" if self.cell.startswith("rnn") else ""
        used = ""
        if self.plans:
            used = " [last forward: " + "; ".join(sorted({p.describe() for p in self.plans})) + "]"
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, bias={self.bias}{extra}, "
                f"backend={self.backend.name!r}, dtype={self.dtype.name!r}, algo={self.algo!r}){used}")

    # ------------------------------------------------------------ forward
    def _forward(self, x, h0, c0, lengths):
        be, xp = self.backend, self.backend.xp
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
        _checks.check_all_finite(self.params, "parameter", xp)

        G, H, D = GATES[self.cell], self.hidden_size, self.num_directions
        zero_bias = xp.zeros(G * H, self.dtype)
        h_n, c_n = xp.empty_like(h0), (xp.empty_like(c0) if self.cell == "lstm" else None)
        saved, layer_input = [], x
        algo = {"algo": self.algo} if be.name == "cuda" else {}
        for layer in range(self.num_layers):
            outputs = []
            for d in range(D):
                names, k = self._names(layer, d), layer * D + d
                p = {key: self.params[n] for key, n in names.items()}
                y, h, c, s = be.kernels.forward_sequence(
                    self.cell, layer_input, h0[k], None if c0 is None else c0[k],
                    p["w_ih"], p["w_hh"], p.get("b_ih", zero_bias), p.get("b_hh", zero_bias),
                    lens, bool(d), **algo)
                h_n[k] = h
                if c_n is not None:
                    c_n[k] = c
                outputs.append(y)
                saved.append(s)
            layer_input = outputs[0] if D == 1 else xp.concatenate(outputs, axis=2)
        self._saved = dict(saved=saved, T=T, B=B)
        self.plans = [s["plan"] for s in saved if "plan" in s]
        return layer_input, h_n, c_n

    # ------------------------------------------------------------ backward (BPTT)
    def _backward(self, dy, dh_n, dc_n):
        if self._saved is None:
            raise ValueError("backward() called before forward(): run the model on an input first")
        be, xp = self.backend, self.backend.xp
        T, B, saved = self._saved["T"], self._saved["B"], self._saved["saved"]
        H, D = self.hidden_size, self.num_directions
        shape = self._state_shape(B)
        if dy is not None:
            dy = _checks.float_array(dy, "dy", be, self.dtype, shape=(T, B, D * H))
        if dh_n is not None:
            dh_n = _checks.float_array(dh_n, "dh_n", be, self.dtype, shape=shape)
        if dc_n is not None:
            dc_n = _checks.float_array(dc_n, "dc_n", be, self.dtype, shape=shape)

        dh0 = xp.zeros(shape, self.dtype)
        dc0 = xp.zeros(shape, self.dtype) if self.cell == "lstm" else None
        for layer in reversed(range(self.num_layers)):
            dx = None
            for d in range(D):
                names, k = self._names(layer, d), layer * D + d
                dy_d = None if dy is None else xp.ascontiguousarray(dy[:, :, d * H:(d + 1) * H])
                grads = {key: self.grads[n] for key, n in names.items()}
                dx_d, dh, dc = be.kernels.backward_sequence(
                    self.cell, saved[k], dy_d,
                    None if dh_n is None else dh_n[k], None if dc_n is None else dc_n[k],
                    self.params[names["w_ih"]], self.params[names["w_hh"]], grads)
                dh0[k] = dh
                if dc0 is not None:
                    dc0[k] = dc
                dx = dx_d if dx is None else dx + dx_d
            dy = dx  # the gradient of this layer's input is the next-lower layer's output gradient
        return dx, dh0, dc0


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

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bidirectional=False,
                 bias=True, backend="auto", dtype="float32", seed=None, algo="auto"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bidirectional, bias,
                         backend, dtype, seed, algo)


class GRU(_HiddenStateLayer):
    """GRU, gate rows [r, z, n]: n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h' = (1-z)*n + z*h."""

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True,
                 backend="auto", dtype="float32", seed=None, algo="auto"):
        super().__init__("gru", input_size, hidden_size, num_layers, bidirectional, bias, backend, dtype, seed,
                         algo)


class LSTM(RNNBase):
    """LSTM, gate rows [i, f, g, o]: c' = f*c + i*g, h' = o*tanh(c').

    ``y, (h_n, c_n) = m(x, (h0, c0)=None, lengths=None)``;
    ``dx, (dh0, dc0) = m.backward(dy=None, (dh_n, dc_n)=None)``.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True,
                 backend="auto", dtype="float32", seed=None, algo="auto"):
        super().__init__("lstm", input_size, hidden_size, num_layers, bidirectional, bias, backend, dtype, seed,
                         algo)

    def forward(self, x, state=None, lengths=None):
        h0, c0 = _pair(state, "state")
        y, h_n, c_n = self._forward(x, h0, c0, lengths)
        return y, (h_n, c_n)

    def backward(self, dy=None, dstate=None):
        dh_n, dc_n = _pair(dstate, "dstate")
        dx, dh0, dc0 = self._backward(dy, dh_n, dc_n)
        return dx, (dh0, dc0)


def _pair(state, name):
    if state is None:
        return None, None
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(f"{name} must be a pair (h, c) of arrays (either may be None), got {type(state).__name__}")
    return state


class Linear(Module):
    """y = x @ weight.T + bias over the last axis (torch.nn.Linear's names and init)."""

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
            self.grads["bias"] += dy2.sum(axis=0)
        return dy @ self.params["weight"]

"""gpurnn inside PyTorch: RNN, LSTM and GRU as ``torch.nn.Module``s whose forward and BPTT are
gpurnn's kernels. Swap one import and train as usual::

    from gpurnn.torch import LSTM                    # was: from torch.nn import LSTM
    lstm = LSTM(32, 64, num_layers=2, batch_first=True, dropout=0.1)
    out, (h_n, c_n) = lstm(x)                        # x: a tensor or a PackedSequence
    loss.backward(); optimizer.step()                # torch's autograd, optimisers, clipping, DDP

- The constructors are torch.nn's, argument for argument (positional order included), plus
  ``backend`` ("auto": the cpu backend for CPU tensors, the cuda backend for CUDA tensors; or
  "cpu", "cuda", "reference") and ``algo`` (the cuda backend's algorithm, see gpurnn.LSTM).
- The parameters are ``nn.Parameter``s with torch.nn's names, order, shapes and initialisation:
  under the same ``torch.manual_seed`` a module starts with the weights torch.nn's would, and
  ``state_dict()`` loads into torch.nn's modules and back, strict.
- ``forward(input, hx=None)`` returns what torch.nn returns: for a PackedSequence (lengths in any
  order) a PackedSequence laid out like the input; unbatched (T, I) input works too.
- One ``torch.autograd.Function`` (``_Stack``) runs ``layers.stack_forward`` and, in backward,
  ``layers.stack_backward``: the very code gpurnn's own layers run. Its gradients reach the input,
  the initial states and every parameter.
- No copies on the way in or out: CPU tensors pass as NumPy views of their memory, CUDA tensors
  as CuPy arrays through DLPack, and the kernels run on torch's current CUDA stream. Only what the
  kernels' layout needs is copied (a batch_first input is made time-major, as torch.nn does too).
- Dropout between stacked layers draws its masks from torch's generator, as torch.nn does: on the
  CPU, the masks (and so the results) in training mode are torch.nn's own.
- Like torch.nn, and unlike gpurnn's layers, the modules do not check values for NaN (that would
  cost a GPU synchronisation per call); a NaN propagates as it would through torch.nn.
"""

import contextlib
import dataclasses

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .backend import BACKENDS, get_backend
from .layers import check_algo, layer_names, parameter_shapes, set_stack_arguments, stack_backward, stack_forward

__all__ = ["RNN", "LSTM", "GRU"]

DTYPES = (torch.float32, torch.float64)


class _RNNBase(nn.Module):
    """What RNN, LSTM and GRU share; ``cell`` is one of gpurnn's cells ("rnn_tanh", "lstm", ...)."""

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, backend="auto", algo="auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"gpurnn computes in float32 or float64, got dtype={dtype}")
        self.backend = backend
        self.algo = check_algo(algo, backend)
        set_stack_arguments(self, cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                            bidirectional)
        shapes = parameter_shapes(cell, self.input_size, self.hidden_size, self.num_layers, self.bidirectional,
                                  self.bias)
        self._names = list(shapes)          # torch.nn's parameter names, in its order
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self):
        """torch.nn's initialisation, drawn in its order: every parameter ~ U(-1/√H, 1/√H)."""
        bound = 1.0 / self.hidden_size ** 0.5
        for w in self.parameters():
            nn.init.uniform_(w, -bound, bound)

    def flatten_parameters(self):
        """Nothing to do (torch.nn's modules pack their weights for cuDNN here); kept so that code
        written for torch.nn runs unchanged."""

    @property
    def all_weights(self):
        """The parameters of each layer and direction, as torch.nn's ``all_weights``."""
        D = 2 if self.bidirectional else 1
        return [[getattr(self, n) for n in layer_names(layer, d, self.bias).values()]
                for layer in range(self.num_layers) for d in range(D)]

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.cell == "rnn_relu":
            s += ", nonlinearity='relu'"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + f", backend={self.backend!r}" + (f", algo={self.algo!r}" if self.algo != "auto" else "")

    # ------------------------------------------------------------ forward
    def forward(self, input, hx=None):
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            x, lengths = pad_packed_sequence(input)      # (T, B, I), rows in the caller's order
            batched = True
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"{name}: input must be a torch.Tensor or a PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: expected input of 3 dimensions, (T, B, {self.input_size})"
                                 f"{' with batch_first (B, T, ...)' if self.batch_first else ''}, or 2 "
                                 f"(unbatched, (T, {self.input_size})), got shape {tuple(input.shape)}")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
        T, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"{name}: expected input with {self.input_size} features (input_size), got {I}; "
                             f"input shape {tuple(input.data.shape if packed else input.shape)}")
        if T == 0 or B == 0:
            raise ValueError(f"{name}: input has shape {tuple(input.shape)}; expected at least one time step "
                             f"and one batch row")
        weight = self.weight_ih_l0
        if weight.dtype not in DTYPES:
            raise TypeError(f"{name}: the parameters are {weight.dtype}, but gpurnn computes in float32 or float64; "
                            "convert the module with .float() or .double()")
        if x.dtype != weight.dtype:
            raise TypeError(f"{name}: input has dtype {x.dtype} but the parameters are {weight.dtype}; convert one "
                            f"(x.to({weight.dtype}) or module.to({x.dtype}))")
        if x.device != weight.device:
            raise ValueError(f"{name}: input is on {x.device} but the parameters are on {weight.device}; move one "
                             f"(x.to('{weight.device}') or module.to('{x.device}'))")
        h0, c0 = self._initial_state(hx, B, batched, x)
        be = self._backend_for(x.device)
        masks = None
        if self.training and self.dropout and self.num_layers > 1:
            masks = self._dropout_masks(T, B, x)
        run = _Run(be, self.cell, self.num_layers, self.bidirectional, self._names, lengths, self.algo, x.device)
        out = _Stack.apply(run, masks, x, h0, c0, *(getattr(self, n) for n in self._names))
        y, h_n = out[0], out[1]
        c_n = out[2] if self.cell == "lstm" else None
        if packed:
            y = _repack(y, input)
        elif not batched:
            y, h_n = y.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, ((h_n, c_n) if self.cell == "lstm" else h_n)

    def _initial_state(self, hx, B, batched, x):
        """(h0, c0) as (L*D, B, H) tensors, or None for zeros; checks hx as torch.nn does."""
        name = type(self).__name__
        if hx is None:
            return None, None
        if self.cell == "lstm":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0) of tensors, got {type(hx).__name__}")
            states = [("h_0", hx[0]), ("c_0", hx[1])]
        else:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"{name}: hx must be a tensor, got {type(hx).__name__}")
            states = [("h_0", hx)]
        L_D = self.num_layers * (2 if self.bidirectional else 1)
        expected = (L_D, B, self.hidden_size) if batched else (L_D, self.hidden_size)
        out = []
        for label, h in states:
            if not isinstance(h, torch.Tensor):
                raise TypeError(f"{name}: {label} must be a tensor, got {type(h).__name__}")
            if tuple(h.shape) != expected:
                raise ValueError(f"{name}: expected {label} of shape {expected} (num_layers * num_directions, "
                                 f"{'batch, ' if batched else ''}hidden_size), got {tuple(h.shape)}")
            if h.dtype != x.dtype or h.device != x.device:
                raise ValueError(f"{name}: {label} is {h.dtype} on {h.device}, the input {x.dtype} on {x.device}; "
                                 "give both the same dtype and device")
            out.append(h if batched else h.unsqueeze(1))
        return out[0], (out[1] if len(out) > 1 else None)

    def _backend_for(self, device):
        """The gpurnn backend that computes on ``device``'s tensors (``backend`` "auto" follows them)."""
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"{type(self).__name__}: gpurnn runs tensors on the CPU or a CUDA GPU, got {device}")
        name = self.backend
        if name == "auto":
            name = "cuda" if device.type == "cuda" else "cpu"
        be = get_backend(name)
        if device.type == "cuda" and not be.on_gpu:
            raise ValueError(f"{type(self).__name__}: the input is on {device}, but backend={name!r} computes on "
                             "the host; build the module with backend='auto' or 'cuda', or move it to the CPU")
        if device.type == "cpu" and be.on_gpu:
            raise ValueError(f"{type(self).__name__}: backend='cuda' computes on the GPU, but the input and the "
                             "parameters are on the CPU; move both to the GPU (module.cuda(), x.cuda())")
        return be

    def _dropout_masks(self, T, B, x):
        """The L-1 masks (T, B, D*H) between layers, drawn as torch.nn's CPU kernel draws them:
        a Bernoulli(1 - p) tensor per layer, in layer order, divided by 1 - p."""
        keep = 1.0 - self.dropout
        shape = (T, B, (2 if self.bidirectional else 1) * self.hidden_size)
        if keep == 0:
            return [torch.zeros(shape, dtype=x.dtype, device=x.device) for _ in range(self.num_layers - 1)]
        return [torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep).div_(keep)
                for _ in range(self.num_layers - 1)]


class RNN(_RNNBase):
    """torch.nn.RNN on gpurnn's kernels: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend="auto", algo="auto"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, backend=backend, algo=algo)


class LSTM(_RNNBase):
    """torch.nn.LSTM on gpurnn's kernels; gate rows [i, f, g, o]. ``proj_size`` must be 0."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, backend="auto", algo="auto"):
        if proj_size != 0:
            raise ValueError(f"proj_size={proj_size}: gpurnn's LSTM has no projection; use proj_size=0 "
                             "(or torch.nn.LSTM)")
        self.proj_size = 0
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, backend=backend, algo=algo)


class GRU(_RNNBase):
    """torch.nn.GRU on gpurnn's kernels; gate rows [r, z, n]."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, backend="auto", algo="auto"):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, backend=backend, algo=algo)


# ---------------------------------------------------------------- the autograd Function
class _Run:
    """What one call of _Stack needs besides tensors: the stack's shape and where it runs.
    ``lengths``: a CPU int64 tensor (B,) or None. It stays with the graph until the graph is freed,
    so it holds no activations (the dropout masks go through save_for_backward with the rest)."""

    def __init__(self, backend, cell, num_layers, bidirectional, names, lengths, algo, device):
        self.backend, self.cell, self.num_layers, self.bidirectional = backend, cell, num_layers, bidirectional
        self.names, self.lengths, self.algo, self.device = names, lengths, algo, device

    @contextlib.contextmanager
    def stream(self):
        """Every launch inside goes on torch's current stream of the input's GPU (CuPy's current
        stream, which the cuda backend launches on); nothing to do on the host."""
        if not self.backend.on_gpu:
            yield
            return
        import cupy
        ptr = torch.cuda.current_stream(self.device).cuda_stream
        # torch's default stream is the legacy default stream, pointer 0: CuPy's null stream
        stream = cupy.cuda.Stream.null if ptr == 0 else cupy.cuda.ExternalStream(ptr)
        with cupy.cuda.Device(self.device.index or 0), stream:
            yield


class _Stack(torch.autograd.Function):
    """y, h_n[, c_n] = stack(x, h0, c0, *weights) with gpurnn's forward, the dropout ``masks``
    (a list of tensors, or None) between layers; BPTT in backward.

    The arrays that backward reads are handed to ``save_for_backward`` as tensors (views of the
    same memory), so torch frees them after backward as it frees its own, and refuses a second
    backward without ``retain_graph``; the inputs and weights are saved too, so that an in-place
    change to them between forward and backward raises torch's error instead of giving wrong
    gradients.
    """

    @staticmethod
    def forward(ctx, run, masks, x, h0, c0, *weights):
        be = run.backend
        xp = be.xp
        with run.stream():
            xa = _array(x.contiguous(), be)
            T, B, _ = xa.shape
            L_D, H = run.num_layers * (2 if run.bidirectional else 1), weights[1].shape[1]
            h0a = xp.zeros((L_D, B, H), xa.dtype) if h0 is None else _array(h0.contiguous(), be)
            c0a = None
            if run.cell == "lstm":
                c0a = xp.zeros((L_D, B, H), xa.dtype) if c0 is None else _array(c0.contiguous(), be)
            lens = None
            if run.lengths is not None:
                lens = be.asarray(run.lengths.numpy(), np.int32)
            params = {n: _array(w, be) for n, w in zip(run.names, weights)}
            masks = None if masks is None else [_array(m, be) for m in masks]
            y, h_n, c_n, state = stack_forward(be, run.cell, params, xa, h0a, c0a, lens, run.num_layers,
                                               run.bidirectional, masks, run.algo)
        arrays = []
        ctx.skeleton = _split(state, arrays, be)
        ctx.run = run
        ctx.save_for_backward(x, h0, c0, *weights, *(_tensor(a, be) for a in arrays))
        ctx.set_materialize_grads(False)
        outputs = (_tensor(y, be), _tensor(h_n, be))
        return outputs + ((_tensor(c_n, be),) if run.cell == "lstm" else ())

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n=None):
        run, be = ctx.run, ctx.run.backend
        saved = ctx.saved_tensors
        x, h0, c0 = saved[:3]
        weights = saved[3:3 + len(run.names)]
        with run.stream():
            state = _join(ctx.skeleton, [_array(t, be) for t in saved[3 + len(run.names):]])
            params = {n: _array(w, be) for n, w in zip(run.names, weights)}
            # the backend's own zeros, not torch's: a torch op here would wake torch's thread pool,
            # whose spinning workers then slow the BLAS calls of the backward on a small machine
            grads = {n: be.xp.zeros(p.shape, p.dtype) for n, p in params.items()}
            dx, dh0, dc0 = stack_backward(be, state, _array_or_none(dy, be), _array_or_none(dh_n, be),
                                          _array_or_none(dc_n, be), params, grads)
        return (None, None, _tensor(dx, be), None if h0 is None else _tensor(dh0, be),
                None if c0 is None else _tensor(dc0, be), *(_tensor(grads[n], be) for n in run.names))


def _array(t, be):
    """A tensor's memory as the backend's array, without a copy: a NumPy view of a CPU tensor, a
    CuPy array (DLPack) of a CUDA tensor."""
    t = t.detach()
    if be.on_gpu:
        import cupy
        return cupy.from_dlpack(t)
    return t.numpy()


def _array_or_none(t, be):
    return None if t is None else _array(t.contiguous(), be)


def _tensor(a, be):
    """A backend array as a tensor over the same memory."""
    return torch.from_dlpack(a) if be.on_gpu else torch.from_numpy(a)


class _Slot(int):
    """Where an array of stack_forward's state was put in the list of saved tensors."""


def _split(obj, arrays, be):
    """``obj`` (dataclasses, dicts, lists, tuples of anything) with every backend array replaced by
    a _Slot, the arrays appended to ``arrays``."""
    if isinstance(obj, be.xp.ndarray):
        arrays.append(obj)
        return _Slot(len(arrays) - 1)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _replace_fields(obj, lambda v: _split(v, arrays, be))
    if isinstance(obj, dict):
        return {k: _split(v, arrays, be) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return _same_sequence(obj, [_split(v, arrays, be) for v in obj])
    return obj


def _same_sequence(obj, items):
    """``items`` as a sequence of ``obj``'s type (a list, a tuple, a named tuple); ``obj`` itself
    when every item is the one it held."""
    if all(new is old for new, old in zip(items, obj)):
        return obj
    return obj._make(items) if hasattr(obj, "_make") else type(obj)(items)


def _replace_fields(obj, fn):
    """A dataclass ``obj`` with ``fn`` applied to its fields; ``obj`` itself where nothing changed
    (a plan, the geometry: records with no arrays in them)."""
    changed = {}
    for f in dataclasses.fields(obj):
        old = getattr(obj, f.name)
        new = fn(old)
        if new is not old:
            changed[f.name] = new
    return dataclasses.replace(obj, **changed) if changed else obj


def _join(obj, arrays):
    """The inverse of _split."""
    if isinstance(obj, _Slot):
        return arrays[obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _replace_fields(obj, lambda v: _join(v, arrays))
    if isinstance(obj, dict):
        return {k: _join(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return _same_sequence(obj, [_join(v, arrays) for v in obj])
    return obj


def _repack(y, like):
    """y (T, B, F), rows in the caller's order, as a PackedSequence laid out like ``like``: the
    rows of step t are the first batch_sizes[t] rows in ``like``'s sorted order."""
    T, B = y.shape[:2]
    order = torch.arange(B) if like.sorted_indices is None else like.sorted_indices.cpu()
    valid = torch.arange(B)[None, :] < like.batch_sizes[:, None]                    # (T, B), sorted order
    flat = (torch.arange(T)[:, None] * B + order[None, :])[valid]                 # packed order
    data = y.reshape(T * B, -1).index_select(0, flat.to(y.device))
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)

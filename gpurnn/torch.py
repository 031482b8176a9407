"""gpurnn inside PyTorch: RNN, LSTM and GRU as ``torch.nn`` modules whose forward and BPTT are
gpurnn's kernels. Swap one import and train as usual::

    from gpurnn.torch import LSTM                    # was: from torch.nn import LSTM
    lstm = LSTM(32, 64, num_layers=2, batch_first=True, dropout=0.1)
    out, (h_n, c_n) = lstm(x)                        # x: a tensor or a PackedSequence
    loss.backward(); optimizer.step()                # torch's autograd, optimisers, clipping, DDP

- The modules ARE torch.nn's: ``LSTM`` subclasses ``torch.nn.LSTM`` (so ``torch.nn.RNNBase``), and
  only ``forward`` is gpurnn's. Constructor, argument checks and their exceptions, parameters
  (names, order, shapes, initialisation under the same seed), ``state_dict``, ``_flat_weights``,
  ``mode``, ``proj_size``, ``flatten_parameters``, ``repr`` and pickling are torch.nn's own. Added:
  ``backend`` ("auto": the cpu backend for CPU tensors, the cuda backend for CUDA tensors; or
  "cpu", "cuda", "reference") and ``algo`` (the cuda backend's algorithm, see gpurnn.LSTM).
- ``forward(input, hx=None)`` follows torch.nn's forward step by step (its checks, its exception
  types, packed input, unbatched input, batch_first, B = 0); where torch.nn calls its C++ RNN,
  this module calls two PyTorch custom operators, ``gpurnn::stack_forward`` and
  ``gpurnn::stack_backward``, which run ``layers.stack_forward`` / ``layers.stack_backward``: the
  very code gpurnn's own layers run. Being operators with shape functions, they work under
  ``torch.compile``, ``torch.export``, ``torch.func`` (grad, vmap) and on the meta device.
- What the forward keeps for BPTT stays in the backend's arrays, held under a key: a tensor that
  autograd saves, and that the autograd node holds until a backward without ``retain_graph`` is
  done. The arrays go with the graph, at that backward or when the graph is dropped (so a second
  backward needs ``retain_graph``, as in torch.nn). The inputs and weights are saved too, so an
  in-place change between forward and backward raises torch's error instead of wrong gradients.
- Double backward (a gradient of a gradient, e.g. a gradient penalty) is refused with a
  RuntimeError when it is attempted; TorchScript (``torch.jit.script``) is refused with one line
  that names what works instead.
- No copies on the way in or out: CPU tensors pass as NumPy views of their memory, CUDA tensors
  as CuPy arrays through DLPack, and the kernels run on torch's current CUDA stream. Only what the
  kernels' layout needs is copied (a batch_first input is made time-major, as torch.nn does too).
- Half precision, as torch.nn's: ``module.bfloat16()``, ``.half()``, ``.to(dtype)`` with inputs
  of that dtype give outputs, dx and every parameter's gradient in it. Under ``torch.autocast``
  the float32 parameters stay the master weights: their gradients come back float32, dx in the
  input's dtype, and the outputs (y, h_n, c_n) are of the dtype torch.nn's would return there
  (``half_format`` decides, the only place that does)::

      float32 module under autocast   RNN (tanh, relu)   LSTM              GRU
      CPU, dtype=torch.bfloat16       bfloat16           bfloat16          float32 (*)
      CPU, dtype=torch.float16        float16            float16 (**)      float32 (*)
      CUDA, either dtype              float16            float16           float16

  (*) CPU autocast has no rule for the GRU: torch.nn's runs its products through autocast's
  linear and returns float32, gpurnn's computes in float32; with an h0 of the autocast dtype
  (or, without h0, an input of it) both return that dtype, gpurnn's computing in it.
  (**) torch.nn's LSTM raises a oneDNN RuntimeError there; gpurnn's computes float16.
  A half module under autocast follows the same table, as torch.nn's does (autocast casts its
  parameters too): its parameters' gradients come back in their own dtype.
  On CUDA torch's autocast wrapper of cuDNN's RNN casts to float16 whatever the autocast dtype
  (aten/src/ATen/cudnn/AutocastRNN.cpp); gpurnn's does the same. float64 modules compute in
  float64, autocast or not. One dtype differs: under CPU autocast torch.nn's LSTM with
  ``proj_size`` returns c_n in float32, gpurnn's in the format.
  A half computation is gpurnn's mixed precision (kernels/precision.py): the input, the states
  and a copy of the weights rounded to the format, every stored state and output rounded, sums
  and the weights' gradients in float32. The tensors pass as float32 (exact copies of bfloat16
  and float16 tensors: NumPy has no bfloat16), the results come back in the half dtype (exact:
  they hold its values). Against torch.nn on the CPU, in units of the format's unit roundoff u,
  measured (tests/test_torch_half.py): outputs within 2.4 u of torch.nn's, dx 3.1 u, weights'
  gradients 7.5 u; gpurnn's own error against float64 on the same rounded values is below 1 u,
  1.6 u and 2.8 u (torch.nn's: 2.3, 2.9, 7.2). A relu RNN's gradients differ more wherever a
  pre-activation lies within rounding of zero, torch.nn's as often as gpurnn's.
  Loss scaling (``torch.amp.GradScaler``, "cpu" or "cuda") works through autograd: the scaled
  gradient reaches the kernels, an overflow of float16 gives inf gradients, and the scaler
  skips that step.
- On the cpu backend ``torch.set_num_threads`` sizes gpurnn too: float32 layers run on as many of
  gpurnn's own threads as ``torch.get_num_threads()`` (they spin for a fraction of a millisecond
  after a call, then sleep), and the dense products of float64 and half layers (and of float32
  ones on a CPU without AVX-512) run through torch.mm, so that
  torch's pool runs them: NumPy's BLAS pool would fight torch's OpenMP workers for the cores.
  (An LSTM's projections, ``proj_size``, still multiply with NumPy.)
- Dropout between stacked layers draws its masks from torch's generator, as torch.nn does (over
  the packed rows of a PackedSequence): on the CPU, the masks (and so the results) in training
  mode are torch.nn's own.
- Like torch.nn, and unlike gpurnn's layers, the modules do not check values for NaN (that would
  cost a GPU synchronisation per call); a NaN propagates as it would through torch.nn.
"""

import contextlib
import itertools
import weakref
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .backend import BACKENDS, get_backend
from .layers import check_algo, parameter_shapes, stack_backward, stack_forward

__all__ = ["RNN", "LSTM", "GRU"]

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
HALF_OF_DTYPE = {torch.bfloat16: "bfloat16", torch.float16: "float16"}     # torch dtype -> kernels/precision's
DTYPE_OF_HALF = {name: dt for dt, name in HALF_OF_DTYPE.items()}
CELL_OF_MODE = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}
DOUBLE_BACKWARD = ("gpurnn.torch: a gradient of a gradient (double backward, e.g. a gradient penalty) is not "
                   "supported by gpurnn's kernels; compute it with torch.nn's modules")


class _Bridge:
    """gpurnn's forward for torch.nn.RNN, LSTM and GRU (this class comes first in their bases)."""

    def _set_backend(self, backend, algo):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.algo = check_algo(algo, backend)

    def extra_repr(self):
        return (super().extra_repr() + f", backend={self.backend!r}"
                + (f", algo={self.algo!r}" if self.algo != "auto" else ""))

    def __prepare_scriptable__(self):
        raise RuntimeError(f"gpurnn.torch.{type(self).__name__} cannot be compiled by TorchScript (torch.jit.script): "
                           "its kernels are PyTorch custom operators in Python; use torch.compile or torch.export")

    # ------------------------------------------------------------ forward, as torch.nn's
    def forward(self, input, hx=None):
        self._update_flat_weights()         # as torch.nn's: functional_call swaps the parameters
        lstm = self.mode == "LSTM"
        name = type(self).__name__
        orig_input = input
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched, batch_dim = True, 1
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if not isinstance(input, Tensor):
                raise NotATensor(f"{name}: input must be a Tensor or a PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                hx = _hx_with_batch(hx, lstm, is_batched, name)
        if hx is None:
            self.check_input(input, batch_sizes)
        else:
            self.check_forward_args(input, hx, batch_sizes)
        output, hidden = self._stack(input, hx, batch_sizes)
        if isinstance(orig_input, PackedSequence):
            return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(hidden, unsorted_indices))
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if lstm else hidden.squeeze(1)
        return output, hidden

    def _stack(self, input, hx, batch_sizes):
        """What torch.nn's C++ RNN does: input (T, B, I), (B, T, I) with batch_first, or packed
        rows (N, I) with ``batch_sizes``; hx checked (None, a tensor, or (h_0, c_0)).
        Returns the output laid out as the input and h_n (or (h_n, c_n))."""
        lstm = self.mode == "LSTM"
        name = type(self).__name__
        weights = self._flat_weights
        wdtype = weights[0].dtype
        if wdtype not in DTYPES:
            raise NotImplementedError(f"{name}: the parameters are {wdtype}, but gpurnn computes in float32, "
                                      "float64, bfloat16 or float16; convert the module with .float() or .double()")
        if any(w.dtype != wdtype or w.device != input.device for w in weights):
            raise RuntimeError(f"{name}: every parameter must have the input's device ({input.device}) and one "
                               f"dtype; got {sorted({(str(w.dtype), str(w.device)) for w in weights})}")
        device = input.device.type
        state_dtype = input.dtype if hx is None else (hx[0] if lstm else hx).dtype
        autocast = _autocast_dtype(device)
        half = half_format(device, CELL_OF_MODE[self.mode], wdtype, state_dtype, autocast)
        if autocast is not None and half is None and wdtype in HALF_OF_DTYPE:
            # a half module that autocast leaves in float32 (the CPU's GRU): its weights cast, as autocast's are
            weights, wdtype = [w.float() for w in weights], torch.float32
        # master weights under autocast (float32, or half ones autocast casts): the operators take
        # the tensors as they come and round them to the format
        mixed = half is not None and (wdtype == torch.float32 or autocast is not None)
        if not mixed and torch._C._is_any_autocast_enabled():
            # under autocast torch.nn skips its dtype checks; outside the half formats of
            # half_format, gpurnn computes in the parameters' dtype
            input = input.to(wdtype)
            hx = None if hx is None else (tuple(h.to(wdtype) for h in hx) if lstm else hx.to(wdtype))
        lengths = None
        if batch_sizes is not None:
            x, lengths = pad_packed_sequence(PackedSequence(input, batch_sizes))    # (T, B, I), sorted order
        else:
            x = input.transpose(0, 1) if self.batch_first else input
        T, B, _ = x.shape
        if T == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        h0, c0 = (hx if lstm else (hx, None)) if hx is not None else (None, None)
        for label, h in (("hx", h0), ("cx", c0)):
            if h is not None and ((h.dtype != x.dtype and not mixed) or h.device != x.device):
                raise RuntimeError(f"{name}: {label} is {h.dtype} on {h.device}, the input "
                                   f"{x.dtype} on {x.device}; give both the same dtype and device")
        D = 2 if self.bidirectional else 1
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        if B == 0:
            y, h_n, c_n = _empty_outputs(x, h0, c0, weights, (T, 0, D * out_size),
                                         (self.num_layers * D, 0, out_size), (self.num_layers * D, 0, self.hidden_size),
                                         DTYPE_OF_HALF.get(half, x.dtype))
        else:
            masks = None
            if self.training and self.dropout and self.num_layers > 1:
                if batch_sizes is None:
                    masks = _dropout_masks(self.dropout, self.num_layers, (T, B, D * out_size), x)
                else:           # drawn over the packed rows, as torch.nn draws them
                    masks = [pad_packed_sequence(PackedSequence(m, batch_sizes))[0]
                             for m in _dropout_masks(self.dropout, self.num_layers, (len(input), D * out_size), x)]
            # the operators' description of the stack, after their tensors
            config = (CELL_OF_MODE[self.mode], self.num_layers, bool(self.bidirectional), bool(self.bias),
                      self.hidden_size, int(self.proj_size), self._backend_for(x.device), self.algo, half)
            # keep what backward reads only where a backward may come (a trace may be trained later)
            keep = torch.jit.is_tracing() or (torch.is_grad_enabled() and
                                              any(t is not None and t.requires_grad for t in (x, h0, c0, *weights)))
            if keep:
                y, h_n, c_n, _key = _Stack.apply(config, keep, x, h0, c0, masks, lengths, *weights)
            else:               # nothing to differentiate: the operator alone (what compiles under no_grad)
                y, h_n, c_n, _key = stack_forward_op(x, h0, c0, weights, masks or [], lengths, *config, keep)
        if batch_sizes is not None:
            y = pack_padded_sequence(y, lengths).data       # the packed rows, as the input's
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, ((h_n, c_n) if lstm else h_n)

    def _backend_for(self, device):
        """The name of the gpurnn backend that computes on ``device``'s tensors."""
        if device.type not in ("cpu", "cuda", "meta"):
            raise RuntimeError(f"{type(self).__name__}: gpurnn runs tensors on the CPU or a CUDA GPU, got {device}")
        name = self.backend
        if name == "auto":
            return "cuda" if device.type == "cuda" else "cpu"
        if device.type == "cuda" and name != "cuda":
            raise RuntimeError(f"{type(self).__name__}: the input is on {device}, but backend={name!r} computes on "
                               "the host; build the module with backend='auto' or 'cuda', or move it to the CPU")
        if device.type == "cpu" and name == "cuda" and get_backend("cuda").on_gpu:
            raise RuntimeError(f"{type(self).__name__}: backend='cuda' computes on the GPU, but the input and the "
                               "parameters are on the CPU; move both to the GPU (module.cuda(), x.cuda())")
        return name


def half_format(device_type, cell, weight_dtype, state_dtype, autocast_dtype):
    """The half format (kernels/precision.py) that a stack of ``cell`` computes in, or None for
    its parameters' dtype: the rule of the module docstring's table, here and nowhere else.
    ``state_dtype``: the dtype of the initial state h0 (the input's when none is given: torch.nn
    makes its zeros so); ``autocast_dtype``: torch.autocast's dtype for ``device_type`` where it
    is enabled, else None.

    Without autocast, a half module (bfloat16 or float16 parameters) computes in its own format.
    Under autocast a float32 or half module computes as torch.nn's does there (autocast casts
    both kinds of parameters):
    - CUDA: float16 for every cell, whatever the autocast dtype: torch's autocast wrapper of
      cuDNN's RNN (aten/src/ATen/cudnn/AutocastRNN.cpp) casts the input, the states and the
      weights to at::kHalf, not to the autocast dtype;
    - CPU: RNN and LSTM in the autocast dtype (rnn_tanh, rnn_relu and lstm are on CPU autocast's
      lower-precision list). The GRU is on none: its products run through autocast's linear, the
      rest in the states' dtype, and its results are of the two dtypes promoted (float32 but
      for a half state of the autocast dtype); gpurnn's GRU computes in that format, or in
      float32.
    Otherwise (no autocast, float64 parameters, another device): None."""
    if autocast_dtype is None or device_type not in ("cpu", "cuda") or weight_dtype == torch.float64:
        return HALF_OF_DTYPE.get(weight_dtype)
    if device_type == "cuda":
        return "float16"
    if cell != "gru":
        return HALF_OF_DTYPE.get(autocast_dtype)        # None for an autocast to float32 or float64
    return HALF_OF_DTYPE.get(torch.promote_types(autocast_dtype, state_dtype))


def _autocast_dtype(device_type):
    """torch.autocast's dtype for ``device_type`` where it is enabled there, else None."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


class RNN(_Bridge, nn.RNN):
    """torch.nn.RNN on gpurnn's kernels: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""

    def __init__(self, *args, backend="auto", algo="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend, algo)


class LSTM(_Bridge, nn.LSTM):
    """torch.nn.LSTM on gpurnn's kernels; gate rows [i, f, g, o]; ``proj_size`` as torch.nn's."""

    def __init__(self, *args, backend="auto", algo="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend, algo)


class GRU(_Bridge, nn.GRU):
    """torch.nn.GRU on gpurnn's kernels; gate rows [r, z, n]."""

    def __init__(self, *args, backend="auto", algo="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend, algo)


class NotATensor(TypeError, AttributeError):
    """A tensor was expected and something else came: a TypeError, and also the AttributeError
    torch.nn raises there (it calls ``.dim()`` on it), so that either ``except`` catches it."""


def _hx_with_batch(hx, lstm, is_batched, name):
    """hx as (L*D, B, ...) tensors: checks its dimensions as torch.nn does, adds the batch axis
    of an unbatched call."""
    want = 3 if is_batched else 2
    kind = "batched 3-D" if is_batched else "unbatched 2-D"
    if lstm:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(h, Tensor) for h in hx):
            raise _hx_pair_error(hx)(f"{name}: hx must be a tuple (h_0, c_0) of two tensors, got "
                                     f"{type(hx).__name__}{f' of {len(hx)}' if isinstance(hx, (tuple, list)) else ''}")
        if hx[0].dim() != want or hx[1].dim() != want:
            raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                               f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
        return tuple(hx) if is_batched else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
    if not isinstance(hx, Tensor):
        raise NotATensor(f"{name}: hx must be a Tensor, got {type(hx).__name__}")
    if hx.dim() != want:
        raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor")
    return hx if is_batched else hx.unsqueeze(1)


def _hx_pair_error(hx):
    """The exception type torch.nn raises for an LSTM's hx that is not a pair of tensors: it
    reads hx[0].dim() and hx[1].dim(), then wants exactly two states."""
    try:
        hx[0].dim(), hx[1].dim()
    except AttributeError:
        return NotATensor
    except (TypeError, IndexError, KeyError) as e:
        return type(e)
    return RuntimeError


def _empty_outputs(x, h0, c0, weights, y_shape, h_shape, c_shape, dtype):
    """The outputs of a batch of no rows, of ``dtype``: empty tensors that depend on every input,
    so that backward gives each its zero gradient, as torch.nn's does."""
    anchor = (sum(t.float().sum() for t in (x, h0, c0, *weights) if t is not None) * 0).to(dtype)
    return tuple(x.new_zeros(shape, dtype=dtype) + anchor for shape in (y_shape, h_shape, c_shape))


def _dropout_masks(p, num_layers, shape, x):
    """The L-1 masks (T, B, D*H) between layers, drawn as torch.nn's CPU kernel draws them:
    a Bernoulli(1 - p) tensor per layer, in layer order, divided by 1 - p."""
    keep = 1.0 - p
    if keep == 0:
        return [x.new_zeros(shape) for _ in range(num_layers - 1)]
    return [x.new_empty(shape).bernoulli_(keep).div_(keep) for _ in range(num_layers - 1)]


# ---------------------------------------------------------------- autograd, over the two operators
class _Stack(torch.autograd.Function):
    """y, h_n, c_n, key = stack(x, h0, c0, *weights) through gpurnn::stack_forward; backward
    through gpurnn::stack_backward (``_Backward``, which refuses to be differentiated again).
    ``masks``: dropout between layers (a list of tensors, or None); ``lengths``: a CPU int64
    tensor (B,) for packed input, or None. Under vmap both run the operators' vmap rules."""
    generate_vmap_rule = True

    @staticmethod
    def forward(config, keep, x, h0, c0, masks, lengths, *weights):
        return stack_forward_op(x, h0, c0, list(weights), masks or [], lengths, *config, keep)

    @staticmethod
    def setup_context(ctx, inputs, output):
        config, keep, x, h0, c0, masks, lengths, *weights = inputs
        ctx.config = config
        ctx.has_h0, ctx.has_c0 = h0 is not None, c0 is not None
        key = output[3]
        if not torch.compiler.is_compiling():
            # the node holds the arrays too: a saved-tensor hook (save_on_cpu, compression) may
            # replace the saved key by a copy, and the key tensor itself holds them only while it lives
            ctx.key = key
        ctx.mark_non_differentiable(key)
        if config[0] != "lstm":
            ctx.mark_non_differentiable(output[2])
        ctx.save_for_backward(key, x, h0, c0, *weights)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, _dkey):
        key, x, h0, c0, *weights = ctx.saved_tensors
        if ctx.config[0] != "lstm":
            dc_n = None         # the placeholder c_n (compiled graphs hand it a gradient of zeros)
        if torch.compiler.is_compiling():
            # Dynamo garbles a Function applied inside a traced backward; a compiled backward is
            # once-differentiable anyway (AOTAutograd refuses double backward itself)
            dx, dh0, dc0, dweights = stack_backward_op(key, dy, dh_n, dc_n, x, *ctx.config)
        else:
            dx, dh0, dc0, dweights = _Backward.apply(ctx.config, key, dy, dh_n, dc_n, x, *weights)
            if not torch._C._autograd._get_current_graph_task_keep_graph():
                ctx.key = None  # no second backward: the arrays go with the saved key, after this one
        # each gradient in its input's dtype (the operator's are float32 in a half format: the
        # rounding to a half module's parameters' dtype happens here, the only one they get)
        return (None, None, _as(dx, x), _as(dh0, h0) if ctx.has_h0 else None, _as(dc0, c0) if ctx.has_c0 else None,
                None, None, *(_as(g, w) for g, w in zip(_unflatten(dweights, [w.shape for w in weights]), weights)))


class _Backward(torch.autograd.Function):
    """dx, dh0, dc0, dweights of one _Stack call (``key``); its own backward raises. It takes the
    weights only so that a graph built through it (create_graph) reaches this refusal."""
    generate_vmap_rule = True

    @staticmethod
    def forward(config, key, dy, dh_n, dc_n, x, *weights):
        return stack_backward_op(key, dy, dh_n, dc_n, x, *config)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD)


def _as(grad, t):
    """``grad`` in the dtype of ``t``, the tensor it is the gradient of."""
    return grad if grad.dtype == t.dtype else grad.to(t.dtype)


def _unflatten(flat, shapes):
    """Views of ``flat`` with ``shapes``, one after another."""
    return [part.view(shape) for part, shape in zip(torch.split(flat, [s.numel() for s in shapes]), shapes)]


def _sample(arg, dim, i):
    """Sample i of an operator's argument under vmap: a tensor, None, or a list of tensors
    (``dim`` then a list too), each batched on ``dim`` or, for None, shared."""
    if isinstance(arg, (list, tuple)):
        return [_sample(a, None if dim is None else d, i) for a, d in zip(arg, dim or [None] * len(arg))]
    return arg if arg is None or dim is None else arg.select(dim, i)


# ---------------------------------------------------------------- the arrays kept for backward
_kept = {}              # key -> [backend, StackSaved, the weights' arrays, number of key tensors that hold it]
_keys = itertools.count(1)


def _hold(key_tensor, keys):
    """``key_tensor`` holds the kept arrays of ``keys`` until it is freed."""
    for k in keys:
        if k in _kept:
            _kept[k][3] += 1
    weakref.finalize(key_tensor, _release, keys)


def _release(keys):
    for k in keys:
        entry = _kept.get(k)
        if entry is not None:
            entry[3] -= 1
            if entry[3] <= 0:
                del _kept[k]


# ---------------------------------------------------------------- the operators
@torch.library.custom_op("gpurnn::stack_forward", mutates_args=())
def stack_forward_op(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], weights: list[Tensor],
                     masks: list[Tensor], lengths: Optional[Tensor], cell: str, num_layers: int,
                     bidirectional: bool, bias: bool, hidden_size: int, proj_size: int, backend: str, algo: str,
                     half: Optional[str], keep: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y (T, B, D*O), h_n (L*D, B, O), c_n (L*D, B, H) (empty unless "lstm"; O = proj_size or
    H) and key, a CPU int64 scalar: 0, or (``keep``) the number under which the arrays that
    backward needs are kept until the key tensor is freed. x (T, B, I); h0, c0 as h_n, c_n or
    None for zeros; weights in torch.nn's order (``_flat_weights``); masks: the L-1 dropout
    masks (T, B, D*O) between layers, or none. ``half``: None (every tensor of x's dtype, the
    outputs too), or a half format: the tensors, of any floating dtype, become float32 arrays
    that the stack rounds to it, and the outputs are of its torch dtype."""
    be = get_backend(backend)
    xp = be.xp
    names = list(parameter_shapes(cell, x.shape[2], hidden_size, num_layers, bidirectional, bias, proj_size))
    _one_thread_pool(be)
    with _stream(be, x.device), _no_autocast(x.device):
        xa = _array(x, be, half)
        T, B, _ = xa.shape
        L_D, H = num_layers * (2 if bidirectional else 1), hidden_size
        h0a = xp.zeros((L_D, B, proj_size or H), xa.dtype) if h0 is None else _array(h0, be, half)
        c0a = None
        if cell == "lstm":
            c0a = xp.zeros((L_D, B, H), xa.dtype) if c0 is None else _array(c0, be, half)
        lens = None if lengths is None else be.asarray(lengths.numpy(), np.int32)
        params = {n: _array(w, be, half) for n, w in zip(names, weights)}
        masks = [_array(m, be, half) for m in masks] or None
        y, h_n, c_n, state = stack_forward(be, cell, params, xa, h0a, c0a, lens, num_layers, bidirectional, masks,
                                           algo, half)
        dtype = DTYPE_OF_HALF.get(half, x.dtype)
        outputs = (_tensor(y, be, dtype), _tensor(h_n, be, dtype),
                   _tensor(c_n, be, dtype) if c_n is not None else x.new_empty(0, dtype=dtype))
    key = next(_keys) if keep else 0
    key_tensor = torch.tensor(key, dtype=torch.int64)
    if keep:
        # in a half format the stack keeps the rounded weights it ran with: those, not a second copy
        _kept[key] = [be, state, params if state.weights is None else state.weights, 0]
        _hold(key_tensor, [key])
    return (*outputs, key_tensor)


@stack_forward_op.register_fake
def _(x, h0, c0, weights, masks, lengths, cell, num_layers, bidirectional, bias, H, proj_size, backend, algo, half,
      keep):
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    O = proj_size or H
    c_shape = (num_layers * D, B, H) if cell == "lstm" else (0,)
    dtype = DTYPE_OF_HALF.get(half, x.dtype)
    return (x.new_empty((T, B, D * O), dtype=dtype), x.new_empty((num_layers * D, B, O), dtype=dtype),
            x.new_empty(c_shape, dtype=dtype), torch.empty((), dtype=torch.int64))


@torch.library.custom_op("gpurnn::stack_backward", mutates_args=())
def stack_backward_op(key: Tensor, dy: Optional[Tensor], dh_n: Optional[Tensor], dc_n: Optional[Tensor],
                      x: Tensor, cell: str, num_layers: int, bidirectional: bool, bias: bool, hidden_size: int,
                      proj_size: int, backend: str, algo: str,
                      half: Optional[str]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dx, dh0, dc0 (empty unless "lstm") and the weights' gradients, one after another in
    torch.nn's order in one flat tensor, of the stack_forward call that returned ``key``, for the
    gradients dy, dh_n, dc_n of its outputs (None for zeros). The weights are the arrays that
    forward ran with. All of x's dtype, or float32 in a half format (the weights' gradients are
    float32 sums, dx, dh0, dc0 hold values of the format). No tensor lists: torch's older vmap,
    which gradcheck's batched gradients use, can then run the operator once per sample."""
    entry = _kept.get(int(key))
    if entry is None:
        raise RuntimeError("gpurnn.torch: the arrays of this forward were freed (a second backward needs "
                           "retain_graph=True, as in torch.nn), or the forward ran without gradients")
    be, state, params = entry[0], entry[1], entry[2]
    # the products were routed by the forward (_one_thread_pool)
    with _stream(be, x.device), _no_autocast(x.device):
        flat = be.xp.zeros(sum(p.size for p in params.values()), state.saved[0].x.dtype)
        grads, start = {}, 0
        for name, p in params.items():          # views of flat, in torch.nn's order
            grads[name] = flat[start:start + p.size].reshape(p.shape)
            start += p.size
        dx, dh0, dc0 = stack_backward(be, state, _array_or_none(dy, be, half), _array_or_none(dh_n, be, half),
                                      _array_or_none(dc_n, be, half), params, grads)
        return (_tensor(dx, be), _tensor(dh0, be),
                _tensor(dc0, be) if dc0 is not None else x.new_empty(0, dtype=torch.float32 if half else x.dtype),
                _tensor(flat, be))


@stack_backward_op.register_fake
def _(key, dy, dh_n, dc_n, x, cell, num_layers, bidirectional, bias, H, proj_size, backend, algo, half):
    T, B, I = x.shape
    D = 2 if bidirectional else 1
    c_shape = (num_layers * D, B, H) if cell == "lstm" else (0,)
    n = sum(int(np.prod(s)) for s in parameter_shapes(cell, I, H, num_layers, bidirectional, bias, proj_size).values())
    dtype = x.dtype if half is None else torch.float32
    return (x.new_empty(x.shape, dtype=dtype), x.new_empty((num_layers * D, B, proj_size or H), dtype=dtype),
            x.new_empty(c_shape, dtype=dtype), x.new_empty((n,), dtype=dtype))


@torch.library.register_vmap("gpurnn::stack_forward")
def _(info, in_dims, x, h0, c0, weights, masks, lengths, *config):
    """One call per sample, the results stacked on dim 0; the stacked keys hold every sample's arrays."""
    outs = [stack_forward_op(*(_sample(a, d, i) for a, d in zip((x, h0, c0, weights, masks, lengths), in_dims)),
                             *config) for i in range(info.batch_size)]
    y, h_n, c_n, keys = (torch.stack(parts) for parts in zip(*outs))
    _hold(keys, [int(out[3]) for out in outs])
    return (y, h_n, c_n, keys), (0, 0, 0, 0)


@torch.library.register_vmap("gpurnn::stack_backward")
def _(info, in_dims, key, dy, dh_n, dc_n, x, *config):
    """One call per sample (gradcheck's batched gradients share the key; vmap of grad does not)."""
    outs = [stack_backward_op(*(_sample(a, d, i) for a, d in zip((key, dy, dh_n, dc_n, x), in_dims)), *config)
            for i in range(info.batch_size)]
    return tuple(torch.stack(parts) for parts in zip(*outs)), (0, 0, 0, 0)


# ---------------------------------------------------------------- tensors and arrays
def _array(t, be, half=None):
    """A tensor's memory as the backend's array, without a copy where it is contiguous: a NumPy
    view of a CPU tensor, a CuPy array (DLPack) of a CUDA tensor. In a half format, a float32
    tensor's, or a float32 copy of another dtype's (exact for bfloat16 and float16: NumPy has no
    bfloat16, and the arrays of a half format are float32, kernels/precision.py)."""
    t = t.detach()
    t = t.contiguous() if half is None or t.dtype == torch.float32 else t.float().contiguous()
    if be.on_gpu:
        import cupy
        return cupy.from_dlpack(t)
    return t.numpy()


def _array_or_none(t, be, half=None):
    return None if t is None else _array(t, be, half)


def _tensor(a, be, dtype=None):
    """A backend array as a tensor over the same memory; a converted copy for another ``dtype``
    (a half format's float32 array as its torch dtype: exact, its values are the format's)."""
    t = torch.from_dlpack(a) if be.on_gpu else torch.from_numpy(a)
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


def _no_autocast(device):
    """The operators' bodies run outside autocast: inside a custom operator autocast still
    applies to the torch calls it makes (torch.mm of float32 tensors returns bfloat16 there), and
    the kernels' arithmetic must be the one they write, whatever region calls them."""
    if device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


@contextlib.contextmanager
def _stream(be, device):
    """Every launch inside goes on torch's current stream of the input's GPU (CuPy's current
    stream, which the cuda backend launches on); nothing to do on the host."""
    if not be.on_gpu:
        yield
        return
    import cupy
    ptr = torch.cuda.current_stream(device).cuda_stream
    # torch's default stream is the legacy default stream, pointer 0: CuPy's null stream
    stream = cupy.cuda.Stream.null if ptr == 0 else cupy.cuda.ExternalStream(ptr)
    with cupy.cuda.Device(device.index or 0), stream:
        yield


_sized_by_torch = False


def _one_thread_pool(be):
    """On the cpu backend (set once): the float32 path's parts as many as torch.get_num_threads()
    (kernels/cpu.use_threads), so torch.set_num_threads sizes both libraries; and every dense
    product of the float64 and half paths through torch.mm, on the arrays' memory (kernels/cpu.use_products),
    so torch's pool runs them instead of NumPy's BLAS pool fighting torch's OpenMP workers for the
    cores."""
    global _sized_by_torch
    if be.name == "cpu" and not _sized_by_torch:
        be.kernels.use_products(_torch_product)
        be.kernels.use_threads(torch.get_num_threads)
        _sized_by_torch = True


def _torch_product(a, b, out):
    """np.dot(a, b, out=out) of 2-D arrays by torch.mm, on the same memory."""
    torch.mm(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))
    return out

"""Input validation: every error names the argument, what was given and what was expected.

Checks of values (NaN or inf, ids out of range) on the cuda backend run on the device and are read
later: a check is a few reductions enqueued with the work, its result a device scalar, and the
host reads it at the next point where it reads a value anyway (``fetch``: a loss as a Python
float, ``Trainer.train_step``'s figures, a host copy), in the same transfer as that value, so a
training step synchronises with the GPU once. The first check that failed is raised there, with
the message it would have raised at once. On the other backends, and on the cuda backend with
``GPURNN_EAGER_CHECKS=1`` (for debugging, like torch.autograd.detect_anomaly: every check is read
where it is made, one GPU synchronisation each), a check raises where it is made.
"""

import os
import threading

import numpy as np

from .backend import device_get
from .kernels.vocabulary import DTYPES, HALF


def shape_str(shape):
    dims = ["?" if s is None else str(s) for s in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def float_array(value, name, backend, dtype, shape=None, finite=True, copy=False):
    """``value`` as a backend array of ``dtype``, after checking its type, shape and values.

    ``shape`` may contain None for "any size"; floating inputs of another precision are cast.
    ``copy``: the result never shares memory with ``value`` (for arrays a layer keeps for its
    backward, which the caller may overwrite in between). ``finite``: True checks the values (on
    the cuda backend at the next read, see the module's docstring), "now" before returning on
    every backend (what must not be replaced by a bad value, e.g. loaded weights), False not.
    """
    if value is None:
        raise ValueError(f"{name} is None; expected an array of shape {shape_str(shape)}")
    if getattr(value, "requires_grad", False) is True:
        # torch refuses to export such a tensor; say why instead of "not an array of floats"
        raise TypeError(f"{name} is a torch tensor with requires_grad=True, but gpurnn's layers compute "
                        f"gradients with their own backward(), outside torch's autograd; pass "
                        f"{name}.detach(), or use gpurnn.torch's modules, whose gradients flow through autograd")
    value = host_view(value)
    dtype_given = _dtype(value)
    if dtype_given is None or dtype_given.kind == "O":
        raise TypeError(f"{name} must be an array of floats, got {type(value).__name__}")
    if dtype_given.kind != "f":
        raise TypeError(f"{name} must hold floating-point values, got dtype {dtype_given}; "
                        f"convert it, e.g. x.astype('{np.dtype(dtype).name}')")
    if shape is not None:
        check_shape(value, name, shape)
    a = backend.asarray(value, dtype, name, copy=copy)
    if finite:
        expect(finite_check(a, name, backend.xp), backend, now=finite == "now")
    return a


def is_torch_tensor(value):
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def host_view(value):
    """A torch CPU tensor as a NumPy view of its memory (no copy); any other value as it is (a CUDA
    tensor already offers ``__cuda_array_interface__``)."""
    if is_torch_tensor(value) and value.device.type == "cpu":
        if str(value.dtype) == "torch.bfloat16":        # NumPy has none: its float32 values, exact
            return value.detach().float().numpy()
        return value.detach().numpy()
    return value


def swap_batch_time(a):
    """(B, T, ...) as its (T, B, ...) view, for NumPy, CuPy and torch arrays alike (a list becomes
    a NumPy array)."""
    return a.swapaxes(0, 1) if hasattr(a, "swapaxes") else np.swapaxes(np.asarray(a), 0, 1)


def dropout_probability(p, num_layers):
    """torch.nn's check of an RNN's dropout: a number in [0, 1]; a warning when there is no layer
    for it to act between."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 0 <= p <= 1:
        raise ValueError(f"dropout must be a number in [0, 1] (the probability that an element of a "
                         f"layer's output is zeroed), got {p!r}")
    if p > 0 and num_layers == 1:
        import warnings
        warnings.warn(f"dropout acts between stacked layers, after every layer but the last; with "
                      f"num_layers=1, dropout={p} does nothing", UserWarning, stacklevel=5)
    return float(p)


def _dtype(value):
    """The NumPy dtype of an array (NumPy, CuPy, torch via its numpy view) or array-like; None if it has none."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        try:
            return np.dtype(dtype)
        except TypeError:  # torch's dtypes are not NumPy's; a CUDA tensor still says what it holds
            try:
                return np.dtype(value.__cuda_array_interface__["typestr"])
            except Exception:
                return None
    try:
        return np.asarray(value).dtype
    except (TypeError, ValueError):
        return None


def check_shape(a, name, expected):
    shape = tuple(np.shape(a)) if not hasattr(a, "shape") else tuple(a.shape)
    ok = len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))
    if not ok:
        raise ValueError(f"expected {name} of shape {shape_str(expected)}, got {shape_str(shape)}")


def _nonfinite_message(name, bad):
    return (f"{name} contains {bad} non-finite value(s) (NaN or inf); "
            f"check the data, or lower the learning rate / clip gradients if training diverged")


def all_finite_value(arrays, xp):
    """Whether every array holds only finite values, as a device boolean (nothing is read)."""
    ok = True
    for a in arrays:
        ok = ok & xp.isfinite(a).all()
    return ok


def check_all_finite(arrays, what, backend):
    """The finiteness check of every array of a dict, named ``what`` and its key (deferred on the
    cuda backend, as ``expect``)."""
    for name, a in arrays.items():
        expect(finite_check(a, f"{what} {name}", backend.xp), backend)


# ---------------------------------------------------------------- checks read later
EAGER = "GPURNN_EAGER_CHECKS"
MAX_PENDING = 1024       # past this many unread checks (a loop that never reads a value), read them


class Check:
    """A check whose inputs are device scalars: ``values`` (0-d arrays of the backend, NumPy
    scalars or numbers); once they are on the host, ``fails(*numbers)`` says whether it failed and
    ``error(*numbers)`` gives the exception to raise."""

    __slots__ = ("values", "fails", "error")

    def __init__(self, values, fails, error):
        self.values, self.fails, self.error = tuple(values), fails, error


def finite_check(a, name, xp):
    """The check that ``a`` holds no NaN or infinity, its error naming ``name`` and the count."""
    size = int(a.size)
    return Check((xp.isfinite(a).sum(),), lambda n: n != size,
                 lambda n: ValueError(_nonfinite_message(name, size - int(n))))


def all_finite_or(a, xp, error):
    """The check that ``a`` holds no NaN or infinity; ``error`` (an exception) when it does."""
    return Check((xp.isfinite(a).all(),), lambda ok: not ok, lambda ok: error)


def eager():
    """Whether GPURNN_EAGER_CHECKS asks for every check to be read where it is made: "0" (the
    default) or "1"."""
    value = os.environ.get(EAGER, "0").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{EAGER}={value!r}: expected 0 (checks of values on the cuda backend are read with the "
                         "next value the host reads, the default) or 1 (each is read where it is made)")
    return value == "1"


def deferred(backend):
    """Whether checks of values on ``backend`` wait for the next read: on the cuda backend, unless
    GPURNN_EAGER_CHECKS=1."""
    return getattr(backend, "name", None) == "cuda" and not eager()


_local = threading.local()


def _pending():
    """This thread's checks made and not yet read, oldest first."""
    if not hasattr(_local, "pending"):
        _local.pending = []
    return _local.pending


def expect(check, backend, now=False):
    """Raise ``check``'s error if it fails: at the next ``fetch`` where ``deferred(backend)``,
    else (or with ``now``) at once."""
    if now or not deferred(backend):
        fetch((), [check])
        return
    pending = _pending()
    pending.append(check)
    if len(pending) >= MAX_PENDING:
        fetch()


def pending():
    """How many checks wait for the next read (tests)."""
    return len(_pending())


def fetch(values=(), checks=()):
    """``values`` (device scalars, NumPy scalars or numbers) as Python floats, read in one transfer
    (``backend.device_get``) together with every pending check and then ``checks``. Raises the
    error of the first of those checks that failed, in the order they were made, and forgets the
    pending ones whatever happens; returns the list of floats."""
    pending = _pending()
    entries = pending + list(checks)
    pending.clear()
    items = [v for c in entries for v in c.values] + list(values)
    numbers = _read(items)
    at = 0
    for c in entries:
        got = numbers[at:at + len(c.values)]
        at += len(c.values)
        if c.fails(*got):
            raise c.error(*got)
    return [float(v) for v in numbers[at:]]


def _read(items):
    """Python numbers of ``items``; the device's 0-d arrays stacked into one array and copied to
    the host at once (none when there are none). A host NumPy array among CuPy arrays is read
    on the host; where every array is NumPy's (the other backends, or the simulator, whose device
    memory NumPy's stands for), they are stacked and copied as the device's are."""
    out = [v.item() if isinstance(v, np.generic) else v for v in items]
    arrays = [i for i, v in enumerate(items) if not isinstance(v, (bool, int, float, np.generic))]
    on_gpu = [i for i in arrays if hasattr(items[i], "__cuda_array_interface__")]
    if on_gpu:
        for i in set(arrays) - set(on_gpu):
            out[i] = np.asarray(items[i]).item()
        arrays = on_gpu
    if arrays:
        from .backend import array_module
        stacked = [items[i] for i in arrays]
        host = device_get(array_module(stacked[0]).stack(stacked)).tolist()
        for i, v in zip(arrays, host):
            out[i] = v
    return out


def lengths_array(lengths, T, B):
    """Host int64 array of B lengths, each in 1..T."""
    if is_torch_tensor(lengths):
        lengths = lengths.detach().cpu().numpy()
    arr = np.asarray(device_get(lengths) if hasattr(lengths, "get") else lengths)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"expected lengths of shape ({B},) (one per batch row), got {shape_str(arr.shape)}")
    if B and (arr.min() < 1 or arr.max() > T):
        raise ValueError(f"lengths must lie in 1..{T} (the sequence length), got min {arr.min()}, max {arr.max()}")
    return arr.astype(np.int64)


def dtype_of(dtype):
    """The NumPy dtype of a layer other than the recurrent ones (Linear, Embedding): float32 or
    float64; a half format is refused with a message that says where it belongs."""
    half = ValueError(f"dtype {dtype!r}: bfloat16 and float16 are for the recurrent layers (RNN, LSTM, GRU); "
                      "give this layer float32")
    if str(dtype).removeprefix("torch.") in HALF:
        raise half
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype {dtype!r} is not a NumPy dtype; use 'float32' or 'float64'") from e
    if dt == np.float16:
        raise half
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def recurrent_dtype(dtype):
    """(the arrays' NumPy dtype, the half format or None) of a recurrent layer's ``dtype``: one of
    vocabulary.DTYPES ("bfloat16" and "float16" keep float32 arrays that hold the format's
    values, kernels/precision.py), as a name, a NumPy dtype (any spelling NumPy takes: "f4",
    "double", "half") or a torch dtype."""
    name = dtype if isinstance(dtype, str) else None
    if name is None and str(dtype).startswith("torch."):
        name = str(dtype)[len("torch."):]
    if name in HALF:
        return np.dtype(np.float32), name
    try:
        dt = np.dtype(dtype if name is None else name)
    except TypeError as e:
        raise TypeError(f"dtype {dtype!r} is not a dtype; use one of {', '.join(DTYPES)}") from e
    if dt == np.float16:
        return np.dtype(np.float32), "float16"
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dt, None


def positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def keyword(key, value=None):
    """How the library's messages name a setting: as the Python keyword (``hidden``), with its
    value when one is given (``resume='runs/a'``)."""
    return key if value is None else f"{key}={value!r}"


class Worded:
    """Mixed into an exception whose message names settings that a caller may name otherwise:
    ``str(e)`` names them as Python keywords (``hidden must be at least 1``), ``e.worded(name)``
    through ``name(key, value=None)`` (the command line's gives ``--hidden must be at least 1``).
    ``message`` is the message, or a function of the naming function that returns it; ``key`` is
    the setting at fault, when there is one."""

    def __init__(self, message, key=None):
        self._message = message if callable(message) else (lambda name: message)
        self.key = key
        super().__init__(self._message(keyword))

    def worded(self, name):
        return self._message(name)

"""Input validation: every error names the argument, what was given and what was expected."""

import numpy as np


def shape_str(shape):
    dims = ["?" if s is None else str(s) for s in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def float_array(value, name, backend, dtype, shape=None, finite=True, copy=False):
    """``value`` as a backend array of ``dtype``, after checking its type, shape and values.

    ``shape`` may contain None for "any size"; floating inputs of another precision are cast.
    ``copy``: the result never shares memory with ``value`` (for arrays a layer keeps for its
    backward, which the caller may overwrite in between).
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
        check_finite(a, name, backend.xp)
    return a


def is_torch_tensor(value):
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def host_view(value):
    """A torch CPU tensor as a NumPy view of its memory (no copy); any other value as it is (a CUDA
    tensor already offers ``__cuda_array_interface__``)."""
    if is_torch_tensor(value) and value.device.type == "cpu":
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


def check_finite(a, name, xp):
    if not bool(xp.isfinite(a).all()):
        bad = int((~xp.isfinite(a)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); "
                         f"check the data, or lower the learning rate / clip gradients if training diverged")


def all_finite(arrays, xp):
    """Whether every array holds only finite values, with one device-to-host transfer (one GPU sync)."""
    flags = [xp.isfinite(a).all() for a in arrays]
    return not flags or bool(xp.stack(flags).all())


def check_all_finite(arrays, what, xp):
    """check_finite over a dict of arrays; one GPU sync when all is well."""
    if not all_finite(arrays.values(), xp):
        for name, a in arrays.items():
            check_finite(a, f"{what} {name}", xp)


def lengths_array(lengths, T, B):
    """Host int64 array of B lengths, each in 1..T."""
    if is_torch_tensor(lengths):
        lengths = lengths.detach().cpu().numpy()
    arr = np.asarray(lengths.get() if hasattr(lengths, "get") else lengths)
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
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype {dtype!r} is not a NumPy dtype; use 'float32' or 'float64'") from e
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


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

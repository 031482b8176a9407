"""Losses: each returns (loss as a Python float, gradient of the loss with respect to its input).

Computing the loss as a Python float is where the host reads the device: the checks of the inputs
(finite values, targets in range, a mask that selects something) and the checks still pending
from the layers (gpurnn/_checks.py) come to the host in the same transfer as the loss, and the
first that failed is raised, before the loss is returned. ``mse_terms`` and ``cross_entropy_terms``
are the same losses unread, for a caller that reads them later with more (``Trainer.train_step``).
"""

import numpy as np

from . import _checks
from .backend import array_module


def _check_pair(pred, target, pred_name, target_name):
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"expected {target_name} of shape {tuple(pred.shape)} (the shape of {pred_name}), "
                         f"got {tuple(target.shape)}")


def _mask_weights(mask, shape, xp, dtype, checks):
    if mask is None:
        return None
    mask = xp.asarray(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"expected mask of shape {tuple(shape)}, got {tuple(mask.shape)}")
    w = mask.astype(dtype)
    checks.append(_checks.Check(((w < 0).any(),), lambda negative: negative, lambda negative: ValueError(
        "mask must be non-negative (1 keeps a position, 0 drops it)")))
    return w


def _total(w):
    """Σ w over every position, accumulated in float64 (a 0-d float64 of w's array module): a float32
    total of T·B weights would be off by several of its roundings, and it divides the loss."""
    return w.sum(dtype=np.float64)


def _selects_something(count, message):
    return _checks.Check((count,), lambda c: c == 0, lambda c: ValueError(message))


def mse_loss(pred, target, mask=None):
    """Mean squared error, mean over all (or the masked) elements of (target - pred)².

    pred, target: same shape; mask: same shape, non-negative weights (1 counts an element, 0 drops
    it): loss = Σ w·(p - t)² / Σ w, the weighted mean of the squared errors.
    Returns (loss, dL/dpred) = (loss, 2·w·(p - t) / Σ w).
    """
    loss, grad, checks = mse_terms(pred, target, mask)
    return _checks.fetch([loss], checks)[0], grad


def mse_terms(pred, target, mask=None):
    """``mse_loss`` unread: (loss as a 0-d float64 array of pred's array module, dL/dpred, the
    checks of the inputs, for ``_checks.fetch`` or ``_checks.expect``)."""
    pred, target, mask = (_checks.host_view(a) for a in (pred, target, mask))
    xp = array_module(pred)
    if not hasattr(pred, "dtype") or pred.dtype.kind != "f":
        raise TypeError(f"pred must be a floating-point array, got {getattr(pred, 'dtype', type(pred).__name__)}")
    target = xp.asarray(target, dtype=pred.dtype)
    _check_pair(pred, target, "pred", "target")
    checks = [_checks.finite_check(pred, "pred", xp), _checks.finite_check(target, "target", xp)]
    w = _mask_weights(mask, pred.shape, xp, pred.dtype, checks)
    # A bad input is reported when the loss is read; until then the arithmetic on it stays quiet.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        diff = pred - target
        wdiff = diff if w is None else diff * w
        if w is None:
            count = diff.size
            scale = 2.0 / count
        else:
            count = _total(w)
            scale = (2.0 / count).astype(pred.dtype)        # rounded once: the gradient keeps pred's dtype
        checks.append(_selects_something(count, "mse_loss: the mask selects no element"))
        loss = (wdiff.astype(np.float64) * diff).sum() / count     # Σ w·d² / Σ w, each term weighted once
        return loss, scale * wdiff, checks


def cross_entropy(logits, targets, mask=None):
    """Softmax cross-entropy with integer class targets, mean over all (or the masked) positions.

    logits: (..., C); targets: (...) integers in [0, C); mask: (...) weights, 1 keep / 0 drop.
    Returns (loss in nats, dL/dlogits).
    """
    loss, grad, checks = cross_entropy_terms(logits, targets, mask)
    return _checks.fetch([loss], checks)[0], grad


def cross_entropy_terms(logits, targets, mask=None):
    """``cross_entropy`` unread, as ``mse_terms``."""
    logits, targets, mask = (_checks.host_view(a) for a in (logits, targets, mask))
    xp = array_module(logits)
    if not hasattr(logits, "dtype") or logits.dtype.kind != "f":
        raise TypeError(f"logits must be a floating-point array, got {getattr(logits, 'dtype', type(logits).__name__)}")
    targets = xp.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")
    C = logits.shape[-1]
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"expected targets of shape {tuple(logits.shape[:-1])} (logits without the class axis), "
                         f"got {tuple(targets.shape)}")
    checks = []
    if targets.size:
        checks.append(_checks.Check((targets.min(), targets.max()), lambda lo, hi: lo < 0 or hi >= C,
                                    lambda lo, hi: ValueError(f"targets must lie in 0..{C - 1}, "
                                                              f"got min {int(lo)}, max {int(hi)}")))
    checks.append(_checks.finite_check(logits, "logits", xp))
    index = targets.clip(0, C - 1)[..., None].astype(np.int64)      # read in range until the check is read
    w = _mask_weights(mask, targets.shape, xp, logits.dtype, checks)
    if w is None:
        w = xp.ones(targets.shape, logits.dtype)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        shifted = logits - logits.max(axis=-1, keepdims=True)          # stable softmax
        log_z = xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
        log_p = shifted - log_z
        picked = xp.take_along_axis(log_p, index, axis=-1)[..., 0]
        count = _total(w)
        checks.append(_selects_something(count, "cross_entropy: the mask selects no position"))
        loss = -(picked.astype(np.float64) * w).sum() / count
        grad = xp.exp(log_p)                                            # softmax - one_hot(target)
        xp.put_along_axis(grad, index, xp.take_along_axis(grad, index, axis=-1) - 1, axis=-1)
        grad *= (w / count.astype(w.dtype))[..., None]
    return loss, grad.astype(logits.dtype, copy=False), checks

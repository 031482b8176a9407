"""Losses: each returns (loss as a Python float, gradient of the loss with respect to its input)."""

import numpy as np

from . import _checks
from .backend import array_module


def _check_pair(pred, target, pred_name, target_name):
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"expected {target_name} of shape {tuple(pred.shape)} (the shape of {pred_name}), "
                         f"got {tuple(target.shape)}")


def _mask_weights(mask, shape, xp, dtype):
    if mask is None:
        return None
    mask = xp.asarray(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"expected mask of shape {tuple(shape)}, got {tuple(mask.shape)}")
    w = mask.astype(dtype)
    if bool((w < 0).any()):
        raise ValueError("mask must be non-negative (1 keeps a position, 0 drops it)")
    return w


def mse_loss(pred, target, mask=None):
    """Mean squared error, mean over all (or the masked) elements of (target - pred)².

    pred, target: same shape; mask: same shape, non-negative weights (1 counts an element, 0 drops
    it): loss = Σ w·(p - t)² / Σ w, the weighted mean of the squared errors.
    Returns (loss, dL/dpred) = (loss, 2·w·(p - t) / Σ w).
    """
    pred, target, mask = (_checks.host_view(a) for a in (pred, target, mask))
    xp = array_module(pred)
    if not hasattr(pred, "dtype") or pred.dtype.kind != "f":
        raise TypeError(f"pred must be a floating-point array, got {getattr(pred, 'dtype', type(pred).__name__)}")
    target = xp.asarray(target, dtype=pred.dtype)
    _check_pair(pred, target, "pred", "target")
    _checks.check_finite(pred, "pred", xp)
    _checks.check_finite(target, "target", xp)
    diff = pred - target
    w = _mask_weights(mask, pred.shape, xp, pred.dtype)
    wdiff = diff if w is None else diff * w
    count = diff.size if w is None else float(w.sum())
    if count == 0:
        raise ValueError("mse_loss: the mask selects no element")
    loss = float((wdiff.astype(np.float64) * diff).sum() / count)     # Σ w·d² / Σ w, each term weighted once
    return loss, (2.0 / count) * wdiff


def cross_entropy(logits, targets, mask=None):
    """Softmax cross-entropy with integer class targets, mean over all (or the masked) positions.

    logits: (..., C); targets: (...) integers in [0, C); mask: (...) weights, 1 keep / 0 drop.
    Returns (loss in nats, dL/dlogits).
    """
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
    if targets.size and (int(targets.min()) < 0 or int(targets.max()) >= C):
        raise ValueError(f"targets must lie in 0..{C - 1}, got min {int(targets.min())}, max {int(targets.max())}")
    _checks.check_finite(logits, "logits", xp)
    shifted = logits - logits.max(axis=-1, keepdims=True)          # stable softmax
    log_z = xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
    log_p = shifted - log_z
    picked = xp.take_along_axis(log_p, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    w = _mask_weights(mask, targets.shape, xp, logits.dtype)
    if w is None:
        w = xp.ones(targets.shape, logits.dtype)
    count = float(w.sum())
    if count == 0:
        raise ValueError("cross_entropy: the mask selects no position")
    loss = float(-(picked.astype(np.float64) * w).sum() / count)
    grad = xp.exp(log_p)                                            # softmax - one_hot(target)
    xp.put_along_axis(grad, targets[..., None].astype(np.int64),
                      xp.take_along_axis(grad, targets[..., None].astype(np.int64), axis=-1) - 1, axis=-1)
    grad *= (w / count)[..., None]
    return loss, grad.astype(logits.dtype, copy=False)

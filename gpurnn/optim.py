"""Optimisers over the parameters and gradients of one or several modules, and gradient clipping.

Updates happen in place on ``module.params``, reading ``module.grads``; gradient *descent*:
``p <- p - lr * update``.
"""

import math

import numpy as np

from .backend import array_module


def _modules(modules):
    from .layers import Module
    if isinstance(modules, Module):
        return [modules]
    modules = list(modules)
    for m in modules:
        if not isinstance(m, Module):
            raise TypeError(f"expected gpurnn modules (RNN, LSTM, GRU, Linear...), got {type(m).__name__}")
    if not modules:
        raise ValueError("the optimiser got no modules to update")
    return modules


def _number(value, name, low, high=math.inf, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and (value > low if low_open else value >= low) and value < high):
        bound = f"({low}, {high})" if low_open else f"[{low}, {high})"
        raise ValueError(f"{name} must lie in {bound}, got {value}")
    return value


class Optimizer:
    def __init__(self, modules, lr, weight_decay):
        self.modules = _modules(modules)
        self.lr = _number(lr, "lr", 0.0, low_open=True)
        self.weight_decay = _number(weight_decay, "weight_decay", 0.0)
        self.state = {}      # (module index, parameter name) -> dict of arrays
        self.steps = 0

    def items(self):
        """((module index, name), parameter, gradient) for every parameter."""
        for k, m in enumerate(self.modules):
            for name, p in m.params.items():
                yield (k, name), p, m.grads[name]

    def zero_grad(self):
        for m in self.modules:
            m.zero_grad()

    def step(self):
        self.steps += 1
        for key, p, g in self.items():
            if self.weight_decay:
                g = g + self.weight_decay * p        # L2 penalty (weight_decay/2)·|p|², as in torch
            self._update(key, p, g)

    def state_dict(self):
        """Host copies of the optimiser state (for checkpoints)."""
        from .backend import device_get
        return {"steps": self.steps, "lr": self.lr,
                "state": {f"{k}/{n}": {s: device_get(v) for s, v in st.items()} for (k, n), st in self.state.items()}}

    def load_state_dict(self, sd):
        params = {f"{k}/{n}": p for (k, n), p, _ in self.items()}
        unknown = sorted(set(sd["state"]) - set(params))
        if unknown:
            raise ValueError(f"optimiser state has entries for unknown parameters {unknown}")
        state = {}
        for (k, n), p, _ in self.items():
            entry = sd["state"].get(f"{k}/{n}")
            if entry is not None:
                xp = array_module(p)
                state[(k, n)] = {s: xp.asarray(v, dtype=p.dtype).copy() for s, v in entry.items()}
                for s, v in state[(k, n)].items():
                    if tuple(v.shape) != tuple(p.shape):
                        raise ValueError(f"optimiser state {k}/{n}/{s} has shape {tuple(v.shape)}, "
                                         f"expected {tuple(p.shape)}")
        self.state, self.steps, self.lr = state, int(sd["steps"]), float(sd["lr"])


class SGD(Optimizer):
    """SGD with optional (Nesterov) momentum, PyTorch's formulation:
    buf <- momentum·buf + g;  p <- p - lr·(g + momentum·buf if nesterov else buf)."""

    def __init__(self, modules, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(modules, lr, weight_decay)
        self.momentum = _number(momentum, "momentum", 0.0, 1.0)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")

    def _update(self, key, p, g):
        if self.momentum:
            st = self.state.get(key)
            if st is None:
                st = self.state[key] = {"momentum": g.copy()}
            else:
                st["momentum"] *= self.momentum
                st["momentum"] += g
            buf = st["momentum"]
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba), PyTorch's formulation with bias correction; weight_decay is L2."""

    def __init__(self, modules, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(modules, lr, weight_decay)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.beta1 = _number(betas[0], "betas[0]", 0.0, 1.0)
        self.beta2 = _number(betas[1], "betas[1]", 0.0, 1.0)
        self.eps = _number(eps, "eps", 0.0, low_open=True)

    def _update(self, key, p, g):
        xp = array_module(p)
        st = self.state.get(key)
        if st is None:
            st = self.state[key] = {"m": xp.zeros_like(p), "v": xp.zeros_like(p)}
        m, v = st["m"], st["v"]
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * g * g
        m_hat = m / (1 - self.beta1 ** self.steps)
        v_hat = v / (1 - self.beta2 ** self.steps)
        p -= self.lr * m_hat / (xp.sqrt(v_hat) + self.eps)


def _grad_arrays(grads):
    """Every gradient array in a grads dict, a module, or a list of either."""
    from .layers import Module
    if isinstance(grads, Module):
        return list(grads.grads.values())
    if isinstance(grads, dict):
        return list(grads.values())
    out = []
    for g in grads:
        out.extend(_grad_arrays(g))
    return out


def _sum_of_squares(arrays):
    """Σ g² over every array, in float64 and in their order, left on the device."""
    total = 0.0
    for g in arrays:
        total = total + (g.astype(np.float64, copy=False) ** 2).sum()
    return total


def _norm(arrays):
    """The joint L2 norm as a Python float: one read of the device (gpurnn/_checks.py's fetch)."""
    from ._checks import fetch
    return math.sqrt(fetch([_sum_of_squares(arrays)])[0])


def grad_norm(grads):
    """Joint L2 norm of every gradient (a grads dict, a module, or a list of either), in float64."""
    return _norm(_grad_arrays(grads))


def clip_grad_norm(grads, max_norm):
    """Scale all gradients in place so that their joint L2 norm is at most ``max_norm``.

    ``grads``: a grads dict, a module, or a list of either. Returns the norm before clipping
    (a float; NaN or inf when a gradient is not finite, and then nothing is scaled).
    """
    max_norm = _number(max_norm, "max_norm", 0.0, low_open=True)
    arrays = _grad_arrays(grads)
    total = _norm(arrays)
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in arrays:
            g *= scale
    return total


def clip_grad_norm_on_device(grads, max_norm):
    """``clip_grad_norm`` (``grad_norm`` when ``max_norm`` is None) without reading the norm: the
    scale is chosen and applied on the device, and the norm is returned unread, a 0-d float64
    array of the gradients' array module, for the caller to read with more (``Trainer.train_step``).
    The scale is rounded to each gradient's dtype first, as a Python float would be, so the
    clipped gradients are ``clip_grad_norm``'s to the bit (a scale of 1 leaves them unchanged)."""
    arrays = _grad_arrays(grads)
    if not arrays:
        return 0.0
    xp = array_module(arrays[0])
    total = xp.sqrt(_sum_of_squares(arrays))
    if max_norm is None:
        return total
    max_norm = _number(max_norm, "max_norm", 0.0, low_open=True)
    scale = xp.where(xp.isfinite(total) & (total > max_norm), max_norm / (total + 1e-6), 1.0)
    scales = {}
    for g in arrays:
        if g.dtype not in scales:
            scales[g.dtype] = scale.astype(g.dtype)
        g *= scales[g.dtype]
    return total


def clip_grad_value(grads, clip_value):
    """Clamp every gradient element into [-clip_value, clip_value], in place."""
    clip_value = _number(clip_value, "clip_value", 0.0, low_open=True)
    for g in _grad_arrays(grads):
        array_module(g).clip(g, -clip_value, clip_value, out=g)

"""The vanishing / exploding gradient, measured: ||dL/dh_t|| for every t, the loss on the last step.

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3).

For a one-layer network whose recurrent weights W_hh (G*H, H) are made of G random orthogonal
H x H blocks times ``scale``, reading inputs x_t ~ N(0, 1) of 8 features, and a loss that reads
only the last state, L = u . h_{T-1} with a fixed random unit vector u, the gradient reaching the
state k steps before the loss is

    dL/dh_{T-1-k} = u^T  J_{T-1} J_{T-2} ... J_{T-k},     J_t = dh_t / dh_{t-1}

a product of k Jacobians. When their norms sit below 1 the product shrinks geometrically (vanishes),
above 1 it grows (explodes). Each dL/dh_t is measured with the library's own BPTT: the layer reads
x[t+1:] starting from the state it had at t, and ``backward`` returns dL/d(that starting state).
Everything runs in float64 so that a vanished gradient reads as a small number, not as zero.
``grad_norms_of_run`` measures the same for the recurrent layers of a trained run, on inputs from
its own task.
"""

import math

import numpy as np

from .kernels.vocabulary import MODEL_CELLS
from .layers import recurrent_layer
from .model import orthogonal

INPUT_SIZE = 8


def _layer(cell, hidden_size, seed, backend):
    return recurrent_layer(MODEL_CELLS[cell], INPUT_SIZE, hidden_size, backend=backend, dtype="float64", seed=seed)


def grads_memory(seq_len, hidden_size, batch_size):
    """An estimate, in bytes, of what ``grad_norms_through_time`` needs at its peak (float64): the
    state after every step (an LSTM's two) and one backward's work over all T steps, G*H*(I + H)
    weights with their gradients and copies, and the QR and SVD of H x H matrices. Meant to refuse
    a setting that cannot fit before allocating, not to the byte."""
    T, H, B, G = int(seq_len), int(hidden_size), int(batch_size), 4
    return 8 * (T * B * H * (2 + 4 * G) + 4 * G * H * (INPUT_SIZE + H + 2) + 4 * H * H)


def grad_norms_through_time(cell, seq_len, scale, hidden_size=64, batch_size=16, seed=0, backend="auto"):
    """A dict: the setting, sigma_max (largest singular value of W_hh) and ``dh_norms``, where
    dh_norms[k] is the mean over the batch of ||dL/dh|| at distance k from the loss (k = 0 is the
    last step). For the LSTM ``dc_norms`` holds the same for the cell state."""
    T, H, B = int(seq_len), int(hidden_size), int(batch_size)
    if T < 2:
        raise ValueError(f"seq_len must be at least 2 to see a gradient travel, got {seq_len}")
    rng = np.random.default_rng(seed)
    layer = _layer(cell, H, seed, backend)
    G = layer.params["weight_hh_l0"].shape[0] // H
    w_hh = np.concatenate([scale * orthogonal(rng, H) for _ in range(G)], axis=0)
    sd = layer.state_dict()
    sd["weight_hh_l0"] = w_hh
    layer.load_state_dict(sd)
    x = rng.standard_normal((T, B, INPUT_SIZE))
    result = {"cell": cell, "scale": float(scale), "label": f"{cell}, W_hh scale {float(scale):g}"}
    result.update(measure(layer, x, rng))
    return result


def grad_norms_of_run(run_dir, seq_len=None, batch_size=16, seed=0, backend="auto"):
    """The same measurement for the recurrent layers of a trained run (its best state), on inputs
    drawn from its own task: does training teach a cell to carry the gradient further?"""
    import os

    from .predict import load_model
    from .tasks import make_task

    trained = load_model(run_dir, backend=backend, dtype="float64")
    model, cfg, step = trained.model, trained.config, trained.step
    T = int(seq_len or cfg["seq_len"])
    rng = np.random.default_rng(seed)
    if cfg["task"] == "charlm":
        ids = rng.integers(0, model.input_size, size=(T, batch_size))
    elif cfg["task"] == "data":        # your data's features were standardised: about N(0, 1)
        ids = rng.standard_normal((T, batch_size, model.input_size))
    else:
        ids = make_task(cfg["task"], T, copy_len=cfg["copy_len"]).batch(rng, batch_size, split="eval").x
    xp = model.backend.xp
    x = model.input(xp.asarray(ids)) if model.input is not None else ids
    result = {"cell": cfg["cell"], "scale": None, "run": os.fspath(run_dir),
              "label": f"{cfg['cell']}, trained ({cfg['task']}, T={cfg['seq_len']}, {step} steps)"}
    result.update(measure(model.rnn, model.backend.to_host(x), rng))
    return result


def measure(layer, x, rng):
    """||dL/dh|| at every distance from a loss L = u . h_{T-1} (u a random unit vector) for the
    recurrent ``layer`` reading ``x`` (T, B, I). Returns sigma_max of the first W_hh, the sizes,
    ``dh_norms`` and, for the LSTM, ``dc_norms`` (norms over all layers' states, mean over the batch)."""
    T, B, _ = x.shape
    H = layer.hidden_size
    sigma = float(np.linalg.svd(layer.state_dict()["weight_hh_l0"], compute_uv=False)[0])
    xp = layer.backend.xp
    x = xp.asarray(x, dtype=layer.dtype)
    u = rng.standard_normal(H)
    u /= np.linalg.norm(u)
    lstm = layer.cell == "lstm"

    states, state = [], None                     # states[t]: the state after reading x[t]
    for t in range(T):
        _, state = layer(x[t:t + 1], state)
        states.append(state)

    def norms(a):                                # a: (layers, B, H) -> mean over B of the norm
        return float(xp.sqrt((a * a).sum(axis=(0, 2))).mean())

    dh_norms, dc_norms = [1.0], [0.0]            # distance 0: dL/dh_{T-1} = u, a unit vector
    for t in range(T - 2, -1, -1):
        y, _ = layer(x[t + 1:], states[t])
        dy = xp.zeros_like(y)
        dy[-1, :, -H:] = xp.asarray(u)
        _, dstate = layer.backward(dy)
        layer.zero_grad()
        dh, dc = dstate if lstm else (dstate, None)
        dh_norms.append(norms(dh))
        if lstm:
            dc_norms.append(norms(dc))
    result = {"sigma_max": sigma, "seq_len": int(T), "hidden": int(H), "batch": int(B), "dh_norms": dh_norms}
    if lstm:
        result["dc_norms"] = dc_norms
    return result


def per_step_factor(result):
    """(ratio, factor): ||dL/dh|| at the first step over that at the last, and its (T-1)th root,
    the geometric-mean change per step back in time."""
    norms = result["dh_norms"]
    first, last = norms[0], norms[-1]
    ratio = last / first
    if ratio == 0:
        return 0.0, 0.0
    return ratio, math.exp(math.log(ratio) / (len(norms) - 1))


def classify(result):
    """"vanishes", "explodes" or "survives": whether, over the whole sequence, the gradient
    shrinks below 1/100 or grows beyond 100 times its size at the loss."""
    ratio, _ = per_step_factor(result)
    if ratio < 1e-2:
        return "vanishes"
    if ratio > 1e2:
        return "explodes"
    return "survives"


def verdict(result):
    """One sentence in words, e.g. 'rnn, W_hh scale 0.5 (sigma_max 0.50): vanishes: ...'."""
    ratio, factor = per_step_factor(result)
    steps = len(result["dh_norms"]) - 1
    kind = classify(result)
    head = f"{result['label']} (sigma_max {result['sigma_max']:.2f}): {kind}"
    if kind == "survives":
        return (f"{head}: {steps} steps back it is {ratio:.3g} times its size at the loss "
                f"(x{factor:.3f} per step)")
    how = "shrinks" if kind == "vanishes" else "grows"
    return (f"{head}: it {how} by x{factor:.3f} per step, to {ratio:.3g} times its size at the loss "
            f"{steps} steps back")


def plot_grad_norms(results, path):
    """log ||dL/dh|| against the distance from the loss, one line per cell and scale. Returns the
    path written, or None when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    styles = {"rnn": "-", "rnn-relu": "-.", "lstm": "--", "gru": ":"}
    for r in results:
        norms = np.asarray(r["dh_norms"])
        k = np.arange(len(norms))
        keep = norms > 0
        ax.semilogy(k[keep], norms[keep], styles.get(r["cell"], "-"), linewidth=1.6,
                    label=f"{r['label']} ($\\sigma_{{max}}$ {r['sigma_max']:.2f})")
    ax.set_xlabel("distance from the loss (steps back in time)")
    ax.set_ylabel("||dL/dh_t||  (log scale)")
    T = results[0]["seq_len"] if results else 0
    ax.set_title(f"Gradient reaching each step, loss on step T = {T} only")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

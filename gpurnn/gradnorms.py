"""The vanishing / exploding gradient, measured: ||dL/dh_t|| for every t, the loss on the last step.

Legend: T time steps, B batch rows, I input features, H hidden units, G gates (RNN 1, LSTM 4, GRU 3).

For a one-layer network whose recurrent weights W_hh (G*H, H) are made of G random orthogonal
H x H blocks times ``scale``, and a loss that reads only the last state, L = u . h_{T-1} with a
fixed random unit vector u, the gradient reaching the state t steps before the loss is

    dL/dh_{T-1-k} = u^T  J_{T-1} J_{T-2} ... J_{T-k},     J_t = dh_t / dh_{t-1}

a product of k Jacobians. When their norms sit below 1 the product shrinks geometrically (vanishes),
above 1 it grows (explodes). Each dL/dh_t is measured with the library's own BPTT: the layer reads
x[t+1:] starting from the state it had at t, and ``backward`` returns dL/d(that starting state).
Everything runs in float64 so that a vanished gradient reads as a small number, not as zero.
"""

import math

import numpy as np

from .layers import GRU, LSTM, RNN

INPUT_SIZE = 8


def _layer(cell, hidden_size, seed, backend):
    kw = dict(backend=backend, dtype="float64", seed=seed)
    if cell == "lstm":
        return LSTM(INPUT_SIZE, hidden_size, **kw)
    if cell == "gru":
        return GRU(INPUT_SIZE, hidden_size, **kw)
    return RNN(INPUT_SIZE, hidden_size, nonlinearity="relu" if cell == "rnn-relu" else "tanh", **kw)


def orthogonal(rng, n):
    """A random n x n orthogonal matrix (QR of a Gaussian matrix, signs fixed so it is uniform)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


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
    sigma = float(np.linalg.svd(w_hh, compute_uv=False)[0])

    xp = layer.backend.xp
    x = xp.asarray(rng.standard_normal((T, B, INPUT_SIZE)))
    u = rng.standard_normal(H)
    u /= np.linalg.norm(u)
    lstm = cell == "lstm"

    states, state = [], None                     # states[t]: the state after reading x[t]
    for t in range(T):
        _, state = layer(x[t:t + 1], state)
        states.append(state)

    def norms(a):
        return float(xp.sqrt((a * a).sum(axis=-1)).mean())

    dh_norms, dc_norms = [1.0], [0.0]            # distance 0: dL/dh_{T-1} = u, a unit vector
    for t in range(T - 2, -1, -1):
        y, _ = layer(x[t + 1:], states[t])
        dy = xp.zeros_like(y)
        dy[-1] = xp.asarray(u)
        _, dstate = layer.backward(dy)
        layer.zero_grad()
        dh, dc = dstate if lstm else (dstate, None)
        dh_norms.append(norms(dh[0]))
        if lstm:
            dc_norms.append(norms(dc[0]))
    result = {"cell": cell, "scale": float(scale), "sigma_max": sigma, "seq_len": T, "hidden": H,
              "batch": B, "dh_norms": dh_norms}
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
    """One sentence in words, e.g. 'rnn, W_hh scale 0.5 (sigma_max 0.50): vanishes, ...'."""
    ratio, factor = per_step_factor(result)
    steps = len(result["dh_norms"]) - 1
    kind = classify(result)
    head = f"{result['cell']}, W_hh scale {result['scale']:g} (sigma_max {result['sigma_max']:.2f}): {kind}"
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
                    label=f"{r['cell']}, scale {r['scale']:g} ($\\sigma_{{max}}$ {r['sigma_max']:.2f})")
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

"""Shared helpers: build a model of any cell, run forward + backward, collect every result on the host."""

import subprocess

import numpy as np
import pytest

import gpurnn
from gpurnn.kernels import cuda_simulated
from gpurnn.kernels.vocabulary import CELLS  # noqa: F401  (the tests' parametrisations import it from here)

SIMULATED = cuda_simulated()
if SIMULATED:
    # The simulator's block manager busy-polls its threads for syncthreads() while holding the
    # GIL; a short switch interval hands the GIL over sooner (about 4x faster here).
    import sys
    sys.setswitchinterval(1e-4)

# The tests of the cuda backend alone: they run on a GPU, or in the simulator's child process.
needs_cuda = pytest.mark.skipif(
    not gpurnn.cuda_status()[0],
    reason=f"{gpurnn.cuda_status()[1]}; tests/test_cuda_simulator.py runs these in the simulator")

# Backends compared against the reference. The cuda backend joins when a GPU is usable, or in the
# simulator, once per algorithm: "cuda-step", "cuda-persistent", "cuda-auto" (see make_model).
CUDA_ALGOS = ["step", "persistent", "auto"]
FAST_BACKENDS = ["cpu"] + ([f"cuda-{a}" for a in CUDA_ALGOS] if gpurnn.cuda_status()[0] else [])


def pytest_collection_modifyitems(config, items):
    """The slow tests first, otherwise in the order collected: under pytest-xdist they start at
    once on different workers and the many short tests fill the gaps, instead of a long child
    process running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_report_header(config):
    """Which gpurnn is under test and whether its cuda backend runs here: a log says what it tested."""
    import os
    return [f"gpurnn from {os.path.dirname(gpurnn.__file__)}; cuda backend: {gpurnn.cuda_status()}"]


def run_child(cmd, timeout, **kwargs):
    """Run a child process to its end; when it fails, the test fails with its exit status and the
    last of what it printed, stderr included (check=True would show neither)."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} exited with {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def make_model(cell, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True,
               backend="reference", dtype="float64", seed=0):
    """A layer of any cell; ``backend`` "cuda-<algo>" is the cuda backend with that algorithm."""
    algo = "auto"
    if backend.startswith("cuda-"):
        backend, algo = "cuda", backend[len("cuda-"):]
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias, backend=backend, dtype=dtype,
              seed=seed, algo=algo)
    if cell.startswith("rnn_"):
        return gpurnn.RNN(input_size, hidden_size, nonlinearity=cell[4:], **kw)
    return {"lstm": gpurnn.LSTM, "gru": gpurnn.GRU}[cell](input_size, hidden_size, **kw)


def host(a):
    return None if a is None else (a.get() if hasattr(a, "get") else np.asarray(a))


def run_model(m, x, h0=None, c0=None, lengths=None, dy=None, dh_n=None, dc_n=None):
    """Forward, then backward from (dy, dh_n, dc_n); returns a dict of host arrays:
    y, h_n, c_n, dx, dh0, dc0 and grad/<name> for every parameter."""
    m.zero_grad()
    if m.cell == "lstm":
        state = None if h0 is None and c0 is None else (h0, c0)
        y, (h_n, c_n) = m(x, state, lengths=lengths)
        dstate = None if dh_n is None and dc_n is None else (dh_n, dc_n)
        dx, (dh0, dc0) = m.backward(dy, dstate)
    else:
        y, h_n = m(x, h0, lengths=lengths)
        c_n = None
        dx, dh0 = m.backward(dy, dh_n)
        dc0 = None
    out = dict(y=y, h_n=h_n, c_n=c_n, dx=dx, dh0=dh0, dc0=dc0)
    out.update({f"grad/{k}": v for k, v in m.grads.items()})
    return {k: host(v) for k, v in out.items() if v is not None}


def random_problem(rng, cell, T, B, I, H, L, D, with_lengths, dtype=np.float64):
    """Inputs, initial state, lengths and loss gradients for one run."""
    S = (L * D, B, H)
    p = dict(x=rng.standard_normal((T, B, I)).astype(dtype),
             h0=(0.5 * rng.standard_normal(S)).astype(dtype),
             dy=rng.standard_normal((T, B, D * H)).astype(dtype),
             dh_n=rng.standard_normal(S).astype(dtype))
    if cell == "lstm":
        p["c0"] = (0.5 * rng.standard_normal(S)).astype(dtype)
        p["dc_n"] = rng.standard_normal(S).astype(dtype)
    if with_lengths:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T                      # the longest row reaches T, as in a packed batch
        p["lengths"] = lengths
    return p


def numeric_grad(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of a (perturbed in place)."""
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + eps
        up = f()
        a[idx] = old - eps
        down = f()
        a[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


class FakeStream:
    """A stand-in for a CuPy stream (the simulator and a machine without a GPU have none): it
    records the waits asked of it."""

    def __init__(self, ptr):
        self.ptr, self.waited_for = ptr, []

    def record(self):
        return ("event on", self.ptr)

    def wait_event(self, event):
        self.waited_for.append(event)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------- the gpurnn command, in-process
TINY_RUN = ["--hidden", "8", "--seq-len", "6", "--batch", "4", "--eval-sequences", "16", "--backend", "cpu",
            "--no-progress"]


def train_tiny(out, *extra):
    """``gpurnn train`` of a tiny adding run into ``out``; returns the exit status."""
    from gpurnn import cli
    return cli.main(["train", *TINY_RUN, "--out", str(out), *extra])


def train_charlm(text, out, steps, chars="abcabcabd "):
    """``gpurnn train`` of a tiny charlm run on ``chars`` * 50, written to ``text``; returns the exit status."""
    from gpurnn import cli
    text.write_text(chars * 50, encoding="utf-8")
    return cli.main(["train", "--task", "charlm", "--text", str(text), "--hidden", "8", "--seq-len", "8",
                     "--batch", "4", "--steps", str(steps), "--eval-sequences", "8", "--backend", "cpu",
                     "--no-progress", "--out", str(out)])


def run_metrics(out):
    """The records of a run folder's metrics.jsonl."""
    import json
    import os
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def interrupt_at(monkeypatch, step, sig=None):
    """Make every training run send itself ``sig`` (default SIGINT, what Ctrl-C sends) once it has
    finished update ``step``, as a signal arriving mid-run would."""
    import os
    import signal

    from gpurnn.model import Trainer
    real_step = Trainer.train_step

    def step_then_signal(self):
        result = real_step(self)
        if self.step == step:
            os.kill(os.getpid(), signal.SIGINT if sig is None else sig)
        return result
    monkeypatch.setattr(Trainer, "train_step", step_then_signal)

"""Host work of a training step on the cuda backend: how often the host reads the device (each
read is a synchronisation) and how many arrays a step allocates.

In the simulator the device's memory is NumPy's, so the tests give the backend an array module
whose arrays stand for device arrays (``DeviceArray``, made by ``DeviceNumpy``): reading their
values on the host, by ``bool``, ``float``, ``int``, ``item``, ``tolist``, iteration or printing,
counts as a stray read, and every new buffer (a creation function, a ufunc's or a reduction's
result, a copy, a gather) as an allocation. The one sanctioned read is ``backend.device_get``
(gpurnn/_checks.py's ``fetch`` goes through it), which the tests count on their own. A training
step must read where the caller asks for a number and nowhere else: a stray
``bool(xp.isfinite(a).all())`` put anywhere into the step fails these tests.

The cases run in the simulator (tests/test_cuda_simulator.py runs this file there).
"""

import math
import os
import sys
from collections import Counter, OrderedDict

import numpy as np
import pytest

import gpurnn
from conftest import SIMULATED
from gpurnn.layers import recurrent_layer

pytestmark = pytest.mark.skipif(not SIMULATED, reason="counts reads of simulated device arrays; "
                                "tests/test_cuda_simulator.py runs this file in the simulator")


# ---------------------------------------------------------------- device arrays that count
class DeviceArray(np.ndarray):
    """A NumPy array standing for device memory (see the module's docstring)."""

    counts = None       # the Counter of the test in progress

    def __array_finalize__(self, obj):
        if self.flags.owndata:                       # a new buffer made by a C method: copy, astype, argmax
            _allocated(self)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        result = getattr(ufunc, method)(*(_plain(a) for a in inputs), **kwargs)
        if out is not None or result is None:
            return out[0] if out is not None and len(out) == 1 else out
        results = result if isinstance(result, tuple) else (result,)
        for r in results:
            _allocated(r)
        wrapped = tuple(_device(r) for r in results)
        return wrapped if isinstance(result, tuple) else wrapped[0]

    def __array_function__(self, func, types, args, kwargs):
        result = func(*_plain_tree(args), **_plain_tree(kwargs))
        if isinstance(result, np.ndarray) and result.flags.owndata:
            _allocated(result)
        return _device_tree(result)

    def __getitem__(self, index):
        got = super().__getitem__(_plain_tree(index))
        if isinstance(got, np.ndarray) and not np.may_share_memory(got, self):
            _allocated(got)                          # a gather
        return _device(got) if isinstance(got, np.generic) else got

    def _read(self, how):
        _count("stray reads")
        _count(f"stray reads: {how}")
        return self.view(np.ndarray)

    def __bool__(self):
        return bool(self._read("bool"))

    def __float__(self):
        return float(self._read("float"))

    def __int__(self):
        return int(self._read("int"))

    def __index__(self):
        return self._read("index").__index__()

    def __complex__(self):
        return complex(self._read("complex"))

    def item(self, *args):
        return self._read("item").item(*args)

    def tolist(self):
        return self._read("tolist").tolist()

    def __iter__(self):
        return iter(self._read("iteration"))

    def __repr__(self):
        return repr(self._read("repr"))

    def __str__(self):
        return str(self._read("str"))

    def __format__(self, spec):
        return format(self._read("format"), spec)


def _count(what, n=1):
    if DeviceArray.counts is not None:
        DeviceArray.counts[what] += n


KERNELS_CUDA = os.sep + os.path.join("kernels", "cuda") + os.sep


def _allocated(a):
    """Count a new buffer: "allocations", "allocated bytes", and "allocations in kernels/cuda"
    when the cuda backend's own code made it (a frame of kernels/cuda/ on the stack)."""
    if DeviceArray.counts is None:
        return
    _count("allocations")
    _count("allocated bytes", int(np.asarray(a).nbytes))
    frame = sys._getframe(1)
    while frame is not None:
        if KERNELS_CUDA in frame.f_code.co_filename:
            _count("allocations in kernels/cuda")
            _count("bytes allocated in kernels/cuda", int(np.asarray(a).nbytes))
            return
        frame = frame.f_back


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _device(a):
    if isinstance(a, np.generic):
        a = np.asarray(a)
    return a.view(DeviceArray) if type(a) is np.ndarray else a


def _plain_tree(a):
    if isinstance(a, (list, tuple)):
        return type(a)(_plain_tree(v) for v in a)
    if isinstance(a, dict):
        return {k: _plain_tree(v) for k, v in a.items()}
    return _plain(a)


def _device_tree(a):
    if isinstance(a, (list, tuple)):
        return type(a)(_device_tree(v) for v in a)
    return _device(a) if isinstance(a, (np.ndarray, np.generic)) else a


class DeviceNumpy:
    """NumPy as the cuda backend's array module, whose arrays are DeviceArrays: a function's new
    array counts as an allocation (np.asarray of a host array too: on a GPU it is a copy to the
    device)."""

    def __getattr__(self, name):
        value = getattr(np, name)
        if not callable(value) or isinstance(value, (type, np.ufunc)):
            return value

        def function(*args, **kwargs):
            result = value(*args, **kwargs)
            if type(result) is np.ndarray and result.flags.owndata:
                _allocated(result)
            return _device_tree(result)
        return function


# ---------------------------------------------------------------- the instrumented backend
@pytest.fixture
def device(monkeypatch):
    """A cuda Backend on DeviceNumpy, the kernels' array module too, every cache of the backend
    empty; yields (backend, counts): counts["reads"] are backend.device_get's calls."""
    from gpurnn import backend as backend_module
    from gpurnn.kernels import cuda as kcuda
    from gpurnn.kernels.cuda import graphs
    from gpurnn.kernels.cuda import runtime as rt
    from gpurnn.kernels.cuda.simulator import device_view

    xp = DeviceNumpy()
    counts = Counter()
    monkeypatch.setattr(rt, "xp_of", lambda _a=None: xp)
    monkeypatch.setattr(rt, "dev", lambda a: None if a is None else device_view(_plain(a)))
    monkeypatch.setattr(kcuda, "_reused", OrderedDict())
    monkeypatch.setenv("GPURNN_GRAPHS", "1")
    monkeypatch.delenv("GPURNN_EAGER_CHECKS", raising=False)
    graphs.clear()
    device_get = backend_module.device_get

    def counted_device_get(a):
        counts["reads"] += 1
        return device_get(a)
    monkeypatch.setattr(backend_module, "device_get", counted_device_get)
    monkeypatch.setattr("gpurnn._checks.device_get", counted_device_get)
    monkeypatch.setattr(DeviceArray, "counts", counts)
    yield backend_module.Backend("cuda", xp, kcuda), counts
    graphs.clear()


def per_step(counts, run, steps):
    """Counts of each of ``steps`` calls of ``run``."""
    out = []
    for _ in range(steps):
        counts.clear()
        run()
        out.append(dict(counts))
    return out


def layer_training(backend, cell, algo, T=5, B=4, I=3, H=6, clip=True):
    """A step of the README's loop: a layer, a linear read-out of the last step, mse_loss, BPTT,
    clipping, an SGD update. Returns the step as a function."""
    rng = np.random.default_rng(0)
    rnn = recurrent_layer(cell, I, H, backend=backend, dtype="float64", seed=0, algo=algo)
    head = gpurnn.Linear(H, 1, backend=backend, dtype="float64", seed=1)
    opt = gpurnn.SGD([rnn, head], lr=0.01)
    xp = backend.xp
    x = xp.asarray(rng.standard_normal((T, B, I)))
    target = xp.asarray(rng.standard_normal((B, 1)))
    losses = []

    def step():
        opt.zero_grad()
        y, _ = rnn(x)
        loss, dpred = gpurnn.mse_loss(head(y[-1]), target)
        dy = xp.zeros_like(y)
        dy[-1] = head.backward(dpred)
        rnn.backward(dy)
        if clip:
            gpurnn.clip_grad_norm([rnn, head], max_norm=1.0)
        opt.step()
        losses.append(loss)
    return step, losses


# ---------------------------------------------------------------- reads
@pytest.mark.parametrize("cell, algo", [("lstm", "step"), ("gru", "step"), ("rnn_tanh", "step"),
                                        ("lstm", "persistent")])
def test_cuda_a_layer_step_reads_where_the_caller_asks_for_a_number(device, cell, algo):
    """The layer's forward and backward read nothing; mse_loss reads its loss (and with it every
    pending check) once, clip_grad_norm its norm once. Steps 3 and 4 (graphs captured,
    workspaces made) allocate the same arrays, and on the step path the backend allocates only
    the results it hands back as arrays of their own: dx, and dh_0 (dc_0), which stay the
    caller's while the graph workspace serves the next call."""
    backend, counts = device
    step, losses = layer_training(backend, cell, algo)
    per_step(counts, step, 2)
    steady = per_step(counts, step, 2)
    for c in steady:
        assert c.get("stray reads", 0) == 0, c
        assert c["reads"] == 2, c
        if algo == "step":
            assert c["allocations in kernels/cuda"] == (3 if cell == "lstm" else 2), c
    assert steady[0]["allocations"] == steady[1]["allocations"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in losses)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_step_a_trainer_step_reads_once(device, cell):
    """Trainer.train_step reads the device once: the loss, the metric's tally, the gradient norm,
    whether the updated weights are finite and every pending check, in one transfer. A token task
    (embedding, cross-entropy) too."""
    backend, counts = device
    from gpurnn.tasks import Adding, CharLM
    for task in (Adding(6), CharLM(6, text="abcab cabba " * 20)):
        model = gpurnn.make_model(task, cell, 6, backend=backend, dtype="float64", seed=0)
        trainer = gpurnn.Trainer(model, task, optimizer="adam", lr=1e-2, clip=1.0, batch_size=4, seed=0)
        per_step(counts, trainer.train_step, 3)
        steady = per_step(counts, trainer.train_step, 2)
        for c in steady:
            assert c.get("stray reads", 0) == 0, (task.name, c)
            assert c["reads"] == 1, (task.name, c)
        assert steady[0]["allocations"] == steady[1]["allocations"], task.name


def test_cuda_step_a_sync_put_back_is_caught(device, monkeypatch):
    """The counting catches what it is there for: a finiteness check read at once, as the layers
    made before the checks were deferred, shows up as a stray read."""
    backend, counts = device
    from gpurnn import layers
    real = layers.stack_forward

    def forward_with_a_sync(be, cell, params, x, *args, **kwargs):
        if not bool(be.xp.isfinite(x).all()):
            raise ValueError("x is not finite")
        return real(be, cell, params, x, *args, **kwargs)
    monkeypatch.setattr(layers, "stack_forward", forward_with_a_sync)
    step, _ = layer_training(backend, "gru", "step", clip=False)
    (c,) = per_step(counts, step, 1)
    assert c["stray reads"] == 1 and c["stray reads: bool"] == 1 and c["reads"] == 1, c


def test_cuda_step_eager_checks_read_where_they_are_made(device, monkeypatch):
    """GPURNN_EAGER_CHECKS=1 reads each check where it is made: the step reads more often, through
    device_get only, and a bad setting says what it takes."""
    backend, counts = device
    step, _ = layer_training(backend, "lstm", "step")
    per_step(counts, step, 2)
    monkeypatch.setenv("GPURNN_EAGER_CHECKS", "1")
    (c,) = per_step(counts, step, 1)
    assert c.get("stray reads", 0) == 0 and c["reads"] > 2, c
    monkeypatch.setenv("GPURNN_EAGER_CHECKS", "yes")
    with pytest.raises(ValueError, match=r"GPURNN_EAGER_CHECKS='yes'.*expected 0 .* or 1"):
        step()


# ---------------------------------------------------------------- errors surface at the read
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")      # the simulated kernels on a NaN
def test_cuda_step_bad_input_is_reported_at_the_next_read_before_any_update(device, monkeypatch):
    """A NaN in x: forward returns, and the next read (the loss) raises the error forward raises
    on the other backends, word for word; no weight has changed. In eager mode forward raises."""
    backend, _ = device
    from gpurnn import _checks
    rnn = gpurnn.LSTM(3, 4, num_layers=2, backend=backend, dtype="float64", seed=0, algo="step")
    head = gpurnn.Linear(4, 1, backend=backend, dtype="float64", seed=1)
    before = rnn.state_dict()
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    x[2, 1, 0] = np.nan
    y, _ = rnn(x)                                   # no read: the check waits on the device
    assert _checks.pending() > 0
    with pytest.raises(ValueError, match=r"^x contains 1 non-finite value\(s\) \(NaN or inf\); check the data"):
        gpurnn.mse_loss(head(y[-1]), np.zeros((2, 1)))
    assert _checks.pending() == 0                   # reported once
    for k, v in rnn.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    rnn.params["weight_hh_l1"][0, 0] = np.inf
    rnn(np.zeros((5, 2, 3)))
    with pytest.raises(ValueError, match="parameter weight_hh_l1 contains 1 non-finite"):
        rnn.state_dict()                            # a host copy is a read too
    monkeypatch.setenv("GPURNN_EAGER_CHECKS", "1")
    with pytest.raises(ValueError, match="parameter weight_hh_l1 contains 1 non-finite"):
        rnn(np.zeros((5, 2, 3)))                    # eager: at forward, as on the other backends


@pytest.mark.filterwarnings("ignore::RuntimeWarning")                     # the simulated kernels diverging
def test_cuda_step_a_trainer_step_that_diverges_is_undone(device):
    """On the cuda backend the update runs before the step's one read; a step whose loss is not
    finite is undone from the snapshot, as on the host backends: same error, same state."""
    backend, _ = device
    from gpurnn.model import NonFiniteError
    from gpurnn.tasks import Adding
    task = Adding(20)
    model = gpurnn.make_model(task, "rnn-relu", 16, backend=backend, seed=0)
    tr = gpurnn.Trainer(model, task, optimizer="sgd", lr=1e6, clip=None, batch_size=8, seed=0)
    good = None
    with pytest.raises(NonFiniteError) as err:
        for _ in range(50):
            good = (tr.step, model.state_dict(), tr.rng.bit_generator.state)
            tr.train_step()
    assert err.value.step == tr.step + 1 == good[0] + 1 and "step" in str(err.value)
    for k, v in model.state_dict().items():
        assert np.array_equal(v, good[1][k]) and np.isfinite(v).all(), k
    assert tr.rng.bit_generator.state == good[2]

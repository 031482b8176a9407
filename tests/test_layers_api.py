"""The layers' torch.nn conveniences: torch.nn's positional order, batch_first, dropout between
stacked layers, torch CPU tensors as inputs, parameters() / named_parameters().

The cuda cases (ids with "cuda") run in the simulator through tests/test_cuda_simulator.py.
"""

import copy
import pickle

import numpy as np
import pytest

import gpurnn
from conftest import CELLS, FAST_BACKENDS, host, make_model, random_problem, run_model

torch = pytest.importorskip("torch", reason="torch is the oracle here; pip install '.[test]'")

ALL_BACKENDS = ["reference"] + FAST_BACKENDS


def torch_twin(m):
    """torch.nn's module of the same configuration, float64, with m's weights."""
    kw = dict(num_layers=m.num_layers, bias=m.bias, batch_first=m.batch_first, bidirectional=m.bidirectional)
    if m.cell.startswith("rnn_"):
        t = torch.nn.RNN(m.input_size, m.hidden_size, nonlinearity=m.cell[4:], **kw)
    else:
        t = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[m.cell](m.input_size, m.hidden_size, **kw)
    t = t.double()
    t.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    return t


@pytest.mark.parametrize("args,attrs", [
    ((5, 6, 2, True), dict(num_layers=2, bias=True, batch_first=False, dropout=0.0, bidirectional=False)),
    ((5, 6, 1, False, True), dict(bias=False, batch_first=True, bidirectional=False)),
    ((5, 6, 3, True, False, 0.25, True), dict(num_layers=3, dropout=0.25, bidirectional=True)),
])
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_positional_arguments_mean_what_they_mean_in_torch(cls, args, attrs):
    if cls == "RNN":
        args = args[:3] + ("tanh",) + args[3:]      # torch.nn.RNN takes nonlinearity fourth
    ours, theirs = getattr(gpurnn, cls)(*args, backend="cpu"), getattr(torch.nn, cls)(*args)
    for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional"):
        assert getattr(ours, name) == getattr(theirs, name), name
    for name, value in attrs.items():
        assert getattr(ours, name) == value, name
    assert [(k, tuple(v.shape)) for k, v in ours.named_parameters()] == \
           [(k, tuple(v.shape)) for k, v in theirs.named_parameters()]
    assert [v.shape for v in ours.parameters()] == [tuple(v.shape) for v in theirs.parameters()]


def test_backend_and_the_rest_are_keywords():
    with pytest.raises(TypeError):
        gpurnn.LSTM(3, 4, 1, True, False, 0.0, False, "cpu")
    with pytest.raises(ValueError, match=r"nonlinearity must be 'tanh' or 'relu', got True"):
        gpurnn.RNN(3, 4, 1, True)       # bias where torch.nn.RNN expects the nonlinearity


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, None])
def test_bad_dropout(bad):
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\]"):
        gpurnn.GRU(3, 4, 2, dropout=bad)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="with num_layers=1, dropout=0.5 does nothing"):
        gpurnn.LSTM(3, 4, dropout=0.5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_batch_first_matches_torch(backend, cell, rng):
    T, B, I, H, L = 5, 3, 4, 6, 2
    m = make_model(cell, I, H, L, True, backend=backend, seed=3)
    m.batch_first = True
    tm = torch_twin(m)
    p = random_problem(rng, cell, T, B, I, H, L, 2, True)
    xb, dyb = p["x"].transpose(1, 0, 2).copy(), p["dy"].transpose(1, 0, 2).copy()
    got = run_model(m, **dict(p, x=xb, dy=dyb))
    assert got["y"].shape == (B, T, 2 * H) and got["dx"].shape == (B, T, I)

    x = torch.tensor(xb, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(p["lengths"]), batch_first=True,
                                                     enforce_sorted=False)
    h0 = torch.tensor(p["h0"], requires_grad=True)
    c0 = torch.tensor(p["c0"], requires_grad=True) if cell == "lstm" else None
    out, state = tm(packed, (h0, c0) if cell == "lstm" else h0)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    h_n = state[0] if cell == "lstm" else state
    loss = (y * torch.tensor(dyb)).sum() + (h_n * torch.tensor(p["dh_n"])).sum()
    if cell == "lstm":
        loss = loss + (state[1] * torch.tensor(p["dc_n"])).sum()
    loss.backward()
    want = dict(y=y, h_n=h_n, dx=x.grad, dh0=h0.grad)
    if cell == "lstm":
        want.update(c_n=state[1], dc0=c0.grad)
    want.update({f"grad/{k}": v.grad for k, v in tm.named_parameters()})
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_torch_cpu_tensors_are_accepted_wherever_arrays_are(backend, rng):
    T, B, I, H = 4, 3, 2, 5
    p = random_problem(rng, "lstm", T, B, I, H, 1, 1, True)
    want = run_model(make_model("lstm", I, H, backend=backend, seed=1), **p)
    as_tensors = {k: torch.from_numpy(np.array(v)) for k, v in p.items()}
    got = run_model(make_model("lstm", I, H, backend=backend, seed=1), **as_tensors)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)

    head = gpurnn.Linear(H, 2, backend=make_model("gru", 1, 1, backend=backend).backend, dtype="float64", seed=0)
    logits = head(torch.from_numpy(got["y"]))
    loss, _ = gpurnn.cross_entropy(torch.from_numpy(host(logits)), torch.zeros((T, B), dtype=torch.int64))
    assert loss == pytest.approx(gpurnn.cross_entropy(host(logits), np.zeros((T, B), np.int64))[0], rel=1e-15)
    mse, _ = gpurnn.mse_loss(torch.from_numpy(got["y"]), torch.zeros(T, B, H, dtype=torch.float64))
    assert mse == pytest.approx(float(np.mean(got["y"] ** 2)), rel=1e-12)


# ---------------------------------------------------------------- dropout
def dropped_by_hand(m, gen, x, dy):
    """m's forward and backward rebuilt from one-layer modules and masks drawn from ``gen`` the way
    m documents: (gen.random((T, B, D*H)) < 1 - p) / (1 - p) after each layer but the last."""
    T, B, _ = x.shape
    D, H, keep = m.num_directions, m.hidden_size, 1 - m.dropout
    sd = m.state_dict()
    layers, masks, inp = [], [], x
    for layer in range(m.num_layers):
        one = make_model(m.cell, inp.shape[2], H, 1, m.bidirectional, m.bias, backend="reference")
        one.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in sd.items() if f"_l{layer}" in k})
        inp = host(one(inp)[0])
        if layer < m.num_layers - 1:
            masks.append((gen.random((T, B, D * H)) < keep) / keep)
            inp = inp * masks[-1]
        layers.append(one)
    grads, dout = {}, dy
    for layer in reversed(range(m.num_layers)):
        if layer < m.num_layers - 1:
            dout = dout * masks[layer]
        one = layers[layer]
        one.zero_grad()
        dout = host(one.backward(dout)[0])
        grads.update({k.replace("_l0", f"_l{layer}"): host(v) for k, v in one.grads.items()})
    return inp, dout, grads


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_dropout_masks_each_layer_output_in_forward_and_backward(backend, cell, rng):
    T, B, I, H, L = 5, 4, 3, 6, 3
    m = make_model(cell, I, H, L, True, backend=backend, seed=2)
    m.dropout = 0.4
    x, dy = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, 2 * H))
    gen = copy.deepcopy(m.generator)
    got = run_model(m, x, dy=dy)
    y, dx, grads = dropped_by_hand(m, gen, x, dy)
    np.testing.assert_allclose(got["y"], y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["dx"], dx, rtol=1e-10, atol=1e-12)
    for name, g in grads.items():
        np.testing.assert_allclose(got[f"grad/{name}"], g, rtol=1e-10, atol=1e-12, err_msg=name)
    assert not np.allclose(got["y"], run_model(m.eval(), x, dy=dy)["y"])      # it dropped something


def test_dropout_is_reproducible_and_off_in_eval(rng):
    x = rng.standard_normal((6, 3, 2))
    a = gpurnn.GRU(2, 5, 2, dropout=0.5, backend="cpu", dtype="float64", seed=11)
    b = gpurnn.GRU(2, 5, 2, dropout=0.5, backend="cpu", dtype="float64", seed=11)
    first, again = a(x)[0], b(x)[0]
    np.testing.assert_array_equal(first, again)                  # same seed, same masks
    assert not np.array_equal(a(x)[0], first)                     # the next call draws new masks
    a.eval()
    np.testing.assert_allclose(a(x)[0], torch_twin(a)(torch.from_numpy(x))[0].detach().numpy(), rtol=1e-12,
                               atol=1e-14)


def test_dropout_one_zeroes_what_the_upper_layer_reads(rng):
    x = rng.standard_normal((4, 2, 3))
    m = gpurnn.RNN(3, 4, 2, dropout=1.0, backend="reference", dtype="float64", seed=1)
    top = gpurnn.RNN(4, 4, backend="reference", dtype="float64")
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in m.state_dict().items() if "_l1" in k})
    np.testing.assert_array_equal(m(x)[0], top(np.zeros((4, 2, 4)))[0])


# ---------------------------------------------------------------- pickle and deepcopy
COPIERS = {"pickle": lambda m: pickle.loads(pickle.dumps(m)), "deepcopy": copy.deepcopy}


@pytest.mark.parametrize("how", sorted(COPIERS))
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_copy_has_the_weights_gradients_and_settings_runs_alike_and_is_independent(backend, cell, how, rng):
    T, B, I, H, L = 5, 3, 4, 6, 2
    m = make_model(cell, I, H, L, True, backend=backend, seed=4)
    m.dropout, m.batch_first = 0.25, False
    p = random_problem(rng, cell, T, B, I, H, L, 2, True)
    run_model(m, **p)                                   # gradients to keep, a forward's record to drop
    grads = {k: host(v) for k, v in m.grads.items()}
    c = COPIERS[how](m)
    assert type(c) is type(m) and c.backend == m.backend and c.dtype == m.dtype and c.algo == m.algo
    for name in ("cell", "input_size", "hidden_size", "num_layers", "bias", "dropout", "bidirectional", "training"):
        assert getattr(c, name) == getattr(m, name), name
    assert c.state_dict().keys() == m.state_dict().keys()
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(c.state_dict()[k], v, err_msg=k)
        assert type(c.params[k]) is type(m.params[k]) and c.params[k].dtype == m.dtype
    for k, g in grads.items():
        np.testing.assert_array_equal(host(c.grads[k]), g, err_msg=k)   # kept, as torch's deepcopy keeps .grad
    assert c._saved is None and c.plans == []
    with pytest.raises(ValueError, match="backward.. called before forward"):
        c.backward(p["dy"])

    want = {k: np.array(v) for k, v in run_model(m, **p).items()}     # run_model's may be m's own arrays
    got = run_model(c, **p)                             # the same dropout masks too: the generator is copied
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)

    before = c.state_dict()
    for v in m.params.values():
        v[...] = 0                                      # in place: the copy must not see it
    m.zero_grad()
    for k, v in c.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    for key in want:
        if key.startswith("grad/"):
            np.testing.assert_array_equal(host(c.grads[key[len("grad/"):]]), want[key], err_msg=key)
    m.generator.random(7)                               # the copy's dropout stream is its own
    again = run_model(c.eval(), **p)
    assert not np.array_equal(again["y"], run_model(m.eval(), **p)["y"])
    np.testing.assert_array_equal(again["y"], run_model(COPIERS[how](c), **p)["y"])


def test_a_shallow_copy_still_shares_the_arrays_and_a_deepcopy_maps_shared_references():
    m = gpurnn.GRU(3, 4, backend="cpu", dtype="float64", seed=0)
    assert copy.copy(m).params["weight_hh_l0"] is m.params["weight_hh_l0"]
    both = copy.deepcopy([m, m.params["weight_hh_l0"]])
    assert both[0] is not m and both[1] is both[0].params["weight_hh_l0"]


@pytest.mark.parametrize("how", sorted(COPIERS))
@pytest.mark.parametrize("stage", ["tokens", "features", "linear"])
def test_a_sequence_model_pickles_and_deep_copies(stage, how, rng):
    kw = dict(tokens=dict(vocab_size=7), features=dict(input_size=3), linear=dict(input_size=3, embed_size=5))[stage]
    model = gpurnn.SequenceModel("gru", 6, 2, num_layers=2, backend="cpu", dtype="float64", seed=1, **kw)
    x = rng.integers(0, 7, (4, 3)) if stage == "tokens" else rng.standard_normal((4, 3, 3))
    dout = rng.standard_normal((4, 3, 2))
    out, _ = model(x)
    model.backward(dout)
    c = COPIERS[how](model)
    assert c.backend == model.backend == c.rnn.backend and repr(c) == repr(model)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(c.state_dict()[k], v, err_msg=k)
    np.testing.assert_array_equal(c(x)[0], out)
    c.zero_grad()
    model.zero_grad()
    c.backward(dout)
    model(x)
    model.backward(dout)
    for (name, mine), (_, theirs) in zip(c.named_modules(), model.named_modules()):
        for k in mine.grads:
            np.testing.assert_array_equal(mine.grads[k], theirs.grads[k], err_msg=f"{name}.{k}")


def test_unpickling_on_a_machine_where_the_backend_cannot_run_says_what_to_do(monkeypatch):
    state = gpurnn.LSTM(3, 4, backend="cpu", seed=0).__getstate__()
    assert isinstance(state["backend"], str) and all(type(v) is np.ndarray for v in state["params"].values())
    state["backend"] = "cuda"                           # as pickled on a GPU machine
    monkeypatch.setattr(gpurnn.backend, "cuda_status", lambda: (False, "no CUDA driver was found"))
    with pytest.raises(gpurnn.backend.BackendUnavailable,
                       match=r"this LSTM was pickled on the 'cuda' backend, which is not usable here: no CUDA "
                             r"driver was found\. Unpickle it where 'cuda' runs and pickle its state_dict\(\)"):
        gpurnn.LSTM.__new__(gpurnn.LSTM).__setstate__(state)

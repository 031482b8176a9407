"""The reference backend against torch.nn.RNN / LSTM / GRU with the same weights."""

import itertools

import numpy as np
import pytest

from conftest import CELLS, make_model, random_problem, run_model

torch = pytest.importorskip("torch", reason="torch is the independent oracle; pip install '.[test]'")


def torch_module(cell, I, H, L, bidirectional, bias):
    kw = dict(num_layers=L, bidirectional=bidirectional, bias=bias)
    if cell.startswith("rnn_"):
        return torch.nn.RNN(I, H, nonlinearity=cell[4:], **kw).double()
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](I, H, **kw).double()


def torch_run(tm, cell, p, T):
    """Forward (packed when there are lengths), backward of Σ y·dy + Σ h_n·dh_n (+ Σ c_n·dc_n)."""
    x = torch.tensor(p["x"], requires_grad=True)
    h0 = torch.tensor(p["h0"], requires_grad=True)
    c0 = torch.tensor(p["c0"], requires_grad=True) if cell == "lstm" else None
    inp = x
    if "lengths" in p:
        inp = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(p["lengths"]), enforce_sorted=False)
    out, state = tm(inp, (h0, c0) if cell == "lstm" else h0)
    if "lengths" in p:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    h_n, c_n = state if cell == "lstm" else (state, None)
    loss = (out * torch.tensor(p["dy"])).sum() + (h_n * torch.tensor(p["dh_n"])).sum()
    if cell == "lstm":
        loss = loss + (c_n * torch.tensor(p["dc_n"])).sum()
    loss.backward()
    res = dict(y=out, h_n=h_n, dx=x.grad, dh0=h0.grad)
    if cell == "lstm":
        res.update(c_n=c_n, dc0=c0.grad)
    res.update({f"grad/{k}": v.grad for k, v in tm.named_parameters()})
    return {k: v.detach().numpy() for k, v in res.items()}


CASES = list(itertools.product(CELLS, [1, 2], [False, True], [False, True], [True, False]))


@pytest.mark.parametrize("cell,layers,bidirectional,with_lengths,bias", CASES)
def test_reference_matches_torch(cell, layers, bidirectional, with_lengths, bias, rng):
    T, B, I, H = 6, 4, 3, 5
    D = 2 if bidirectional else 1
    tm = torch_module(cell, I, H, layers, bidirectional, bias)
    m = make_model(cell, I, H, layers, bidirectional, bias, backend="reference")
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    p = random_problem(rng, cell, T, B, I, H, layers, D, with_lengths)
    got, want = run_model(m, **p), torch_run(tm, cell, p, T)
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_state_dict_round_trips_into_torch():
    """gpurnn's parameters load into torch unchanged: same names, shapes and gate order."""
    m = make_model("gru", 3, 4, 2, True, backend="reference", seed=5)
    tm = torch_module("gru", 3, 4, 2, True, True)
    tm.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y, h_n = m(x)
    ty, th = tm(torch.tensor(x))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h_n, th.detach().numpy(), rtol=1e-12, atol=1e-13)

"""LSTM projections (torch's ``proj_size``) in layers.stack_forward / stack_backward, against
torch.nn.LSTM: outputs, states and every gradient, on every backend.

The stack runs torch's projected LSTM as an unprojected one on m = o*tanh(c) with W_hh W_hr as
recurrent weights, h0 folded into each row's first step as extra input (layers.Projected): the
cases with lengths, reverse directions and a given h0 check that fold at each row's own first step.
The cuda cases run on a GPU, or in Numba's simulator (test_cuda_backend_in_simulator_proj).
"""


import numpy as np
import pytest

from conftest import host, needs_cuda
from gpurnn import layers
from gpurnn.backend import get_backend

torch = pytest.importorskip("torch")

T, B, I, H, P = 5, 3, 4, 6, 3
LENGTHS = np.array([5, 2, 4])       # unsorted, ragged: reversed rows start at steps 4, 1, 3
TOL = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-5, atol=1e-6)}


def torch_lstm(L, bi, bias, seed=0):
    torch.manual_seed(seed)
    return torch.nn.LSTM(I, H, num_layers=L, bidirectional=bi, bias=bias, proj_size=P).double()


def problem(L, D, with_lengths, with_state, seed=1):
    rng = np.random.default_rng(seed)
    p = dict(x=rng.standard_normal((T, B, I)), dy=rng.standard_normal((T, B, D * P)),
             dh_n=rng.standard_normal((L * D, B, P)), dc_n=rng.standard_normal((L * D, B, H)),
             lengths=LENGTHS if with_lengths else None, h0=None, c0=None)
    if with_state:
        p["h0"] = rng.standard_normal((L * D, B, P))
        p["c0"] = rng.standard_normal((L * D, B, H))
    return p


def torch_run(m, p, grads_of_state=True):
    """torch.nn.LSTM's y (zeros beyond each length), h_n, c_n and the gradients of
    Σ y·dy + Σ h_n·dh_n + Σ c_n·dc_n: dx, dh0, dc0 and grad/<name> of every parameter."""
    x = torch.tensor(p["x"], requires_grad=True)
    state = None
    if p["h0"] is not None:
        state = tuple(torch.tensor(p[k], requires_grad=True) for k in ("h0", "c0"))
    if p["lengths"] is None:
        y, (h_n, c_n) = m(x, state)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(p["lengths"]), enforce_sorted=False)
        out, (h_n, c_n) = m(packed, state)
        y = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)[0]
    loss = (y * torch.tensor(p["dy"])).sum()
    if grads_of_state:
        loss = loss + (h_n * torch.tensor(p["dh_n"])).sum() + (c_n * torch.tensor(p["dc_n"])).sum()
    m.zero_grad()
    loss.backward()
    out = dict(y=y, h_n=h_n, c_n=c_n, dx=x.grad)
    if state is not None:
        out.update(dh0=state[0].grad, dc0=state[1].grad)
    out.update({f"grad/{n}": q.grad for n, q in m.named_parameters()})
    return {k: v.detach().numpy() for k, v in out.items()}


def gpurnn_run(backend, m, p, dtype, grads_of_state=True, algo="auto"):
    """The same through layers.stack_forward / stack_backward on ``backend``. The gradients
    start from random values, which are taken off again: backward adds into grads."""
    be = get_backend(backend)
    xp = be.xp
    L, D = m.num_layers, 2 if m.bidirectional else 1

    def arr(a):
        return None if a is None else be.asarray(a, dtype, copy=True)

    params = {n: arr(q.detach().numpy()) for n, q in m.named_parameters()}
    start = {n: np.random.default_rng(9).standard_normal(q.shape).astype(dtype) for n, q in params.items()}
    grads = {n: arr(g) for n, g in start.items()}
    h0 = arr(p["h0"]) if p["h0"] is not None else xp.zeros((L * D, B, P), dtype)
    c0 = arr(p["c0"]) if p["c0"] is not None else xp.zeros((L * D, B, H), dtype)
    lens = None if p["lengths"] is None else be.asarray(p["lengths"], np.int32)
    y, h_n, c_n, state = layers.stack_forward(be, "lstm", params, arr(p["x"]), h0, c0, lens, L, m.bidirectional,
                                              algo=algo)
    assert state.proj is not None and len(state.proj) == L * D
    dh_n, dc_n = (arr(p["dh_n"]), arr(p["dc_n"])) if grads_of_state else (None, None)
    dx, dh0, dc0 = layers.stack_backward(be, state, arr(p["dy"]), dh_n, dc_n, params, grads)
    out = dict(y=y, h_n=h_n, c_n=c_n, dx=dx)
    if p["h0"] is not None:
        out.update(dh0=dh0, dc0=dc0)
    out = {k: host(v) for k, v in out.items()}
    out.update({f"grad/{n}": host(g) - start[n] for n, g in grads.items()})
    return out


def compare(got, want, dtype, what):
    assert set(got) == set(want), what
    tol = TOL[dtype]
    for key in want:
        assert got[key].shape == want[key].shape and got[key].dtype == np.dtype(dtype), (what, key)
        scale = max(1.0, float(np.abs(want[key]).max()))
        np.testing.assert_allclose(got[key], want[key], rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   err_msg=f"{what}: {key}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_state", [True, False], ids=["h0", "zeros"])
@pytest.mark.parametrize("with_lengths", [True, False], ids=["len", "full"])
@pytest.mark.parametrize("bi", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("L", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_projected_stack_matches_torch(backend, L, bi, with_lengths, with_state, bias):
    m = torch_lstm(L, bi, bias)
    p = problem(L, 2 if bi else 1, with_lengths, with_state)
    want = torch_run(m, p)
    for dtype in ("float64", "float32"):
        compare(gpurnn_run(backend, m, p, dtype), want, dtype, f"{backend} {dtype}")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_projected_stack_without_state_gradients(backend):
    """dy alone (dh_n, dc_n None): the None paths of the projection's backward."""
    m = torch_lstm(2, True, True, seed=3)
    p = problem(2, 2, True, True, seed=4)
    compare(gpurnn_run(backend, m, p, "float64", grads_of_state=False), torch_run(m, p, grads_of_state=False),
            "float64", backend)


@needs_cuda
@pytest.mark.parametrize("algo", ["step", "persistent", "auto"])
def test_projected_stack_matches_torch_cuda(algo):
    m = torch_lstm(2, True, True, seed=5)
    p = problem(2, 2, True, True, seed=6)
    compare(gpurnn_run("cuda", m, p, "float64", algo=algo), torch_run(m, p), "float64", f"cuda {algo}")


def test_parameter_shapes_follow_torch():
    for L, bi, bias in [(1, False, True), (2, True, False), (3, True, True)]:
        m = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bi, bias=bias, proj_size=P)
        shapes = layers.parameter_shapes("lstm", I, H, L, bi, bias, proj_size=P)
        assert list(shapes) == list(m._flat_weights_names)
        assert shapes == {n: tuple(q.shape) for n, q in m.named_parameters()}
    assert layers.layer_names(1, 1, False, proj=True) == {
        "w_ih": "weight_ih_l1_reverse", "w_hh": "weight_hh_l1_reverse", "w_hr": "weight_hr_l1_reverse"}
    assert "w_hr" not in layers.layer_names(0, 0)
    for cell, proj in [("gru", 2), ("lstm", H)]:
        with pytest.raises(ValueError):
            layers.parameter_shapes(cell, I, H, 1, False, True, proj_size=proj)

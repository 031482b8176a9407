"""The backend contract (kernels/contract.py): every backend module offers forward_sequence and
backward_sequence with the same arguments, takes ``algo``, and saves the same record for backward,
laid out the same way; parametrised over backend x cell x direction x lengths."""

import inspect

import numpy as np
import pytest

import gpurnn
from conftest import CELLS, SIMULATED
from gpurnn.kernels import contract
from gpurnn.kernels.vocabulary import GATES

HOST = ["reference", "cpu"]
TESTED = HOST + (["cuda"] if gpurnn.cuda_status()[0] else [])


def kernels_of(name):
    return gpurnn.get_backend(name).kernels


def contract_parameters(fn):
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("name", ["reference", "cpu", "cuda"])
def test_every_backend_module_takes_the_contracts_arguments(name):
    """The cuda module is read, not run: its signature is checked on a machine without a GPU too."""
    if name == "cuda":
        from gpurnn.kernels import cuda as module
    else:
        module = kernels_of(name)
    assert isinstance(module, contract.BackendKernels)
    for fn in ("forward_sequence", "backward_sequence"):
        wanted = contract_parameters(getattr(contract.BackendKernels, fn))
        got = list(inspect.signature(getattr(module, fn)).parameters.values())
        assert [(p.name, p.default) for p in got[:len(wanted)]] == [(p.name, p.default) for p in wanted], (name, fn)
        extra = got[len(wanted):]
        assert all(p.default is not inspect.Parameter.empty for p in extra), (name, fn, extra)


def problem(cell, rng, T=5, B=3, I=4, H=6, lengths=True, dtype=np.float64):
    G = GATES[cell]

    def r(*shape):
        return rng.uniform(-0.8, 0.8, shape).astype(dtype)
    lens = np.array([T, 2, 4][:B], np.int32) if lengths else None
    return dict(x=r(T, B, I), h0=r(B, H), c0=r(B, H) if cell == "lstm" else None, w_ih=r(G * H, I),
                w_hh=r(G * H, H), b_ih=r(G * H), b_hh=r(G * H), lengths=lens)


def forward(name, cell, p, reverse, algo="auto"):
    be = gpurnn.get_backend(name)
    a = {k: None if v is None else be.asarray(v, v.dtype) for k, v in p.items()}
    return be.kernels.forward_sequence(cell, a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                                       a["lengths"], reverse, algo)


@pytest.mark.parametrize("name", TESTED)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
def test_forward_saves_the_contracts_record(name, cell, reverse, lengths, rng):
    p = problem(cell, rng, lengths=lengths)
    T, B, I = p["x"].shape
    H = p["h0"].shape[1]
    y, h_n, c_n, saved = forward(name, cell, p, reverse)
    assert isinstance(saved, contract.Saved)
    assert saved.cell == cell and saved.reverse is reverse and saved.dims == (T, B, I, H, GATES[cell])
    host = gpurnn.get_backend(name).to_host
    hs = host(saved.hs)
    assert hs.shape == (T + 1, B, H)
    np.testing.assert_array_equal(hs[T if reverse else 0], p["h0"])          # the initial state in place
    np.testing.assert_allclose(hs[0 if reverse else T], host(h_n), rtol=0, atol=0)
    ys = host(y)
    for t, before, after in contract.steps(T, reverse):
        active = t < (np.full(B, T) if p["lengths"] is None else p["lengths"])
        np.testing.assert_allclose(hs[after][active], ys[t][active], rtol=1e-12, atol=0)   # the step's output
        np.testing.assert_array_equal(hs[after][~active], hs[before][~active])            # kept through
    expect = {"lstm": ("cs", "gates"), "gru": ("gates", "hn")}.get(cell, ())
    shapes = {"cs": (T + 1, B, H), "gates": (T, B, GATES[cell] * H), "hn": (T, B, H)}
    for field in ("cs", "gates", "hn"):
        value = getattr(saved, field)
        assert (value is not None) == (field in expect), (field, value)
        if value is not None:
            assert value.shape == shapes[field]


@pytest.mark.parametrize("name", TESTED[1:])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_every_backend_saves_the_same_values(name, cell, reverse, rng):
    """Not only the same fields: the same states, gates and hn as the reference, so that one
    backend's backward could read another's record. The gates and hn of a row at a step where it
    is inactive are left unspecified by the contract: only the active ones are compared."""
    p = problem(cell, rng)
    T = p["x"].shape[0]
    active = np.arange(T)[:, None] < p["lengths"][None, :]                      # (T, B)
    ref = forward("reference", cell, p, reverse)[3]
    be = gpurnn.get_backend(name)
    saved = forward(name, cell, p, reverse)[3]
    for field in ("hs", "cs", "gates", "hn"):
        if getattr(ref, field) is not None:
            got, want = be.to_host(getattr(saved, field)), getattr(ref, field)
            if field in ("gates", "hn"):
                got, want = got[active], want[active]
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"{name} {field}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("forward_by, backward_by", [("reference", "cpu"), ("cpu", "reference")])
def test_one_backends_backward_runs_on_anothers_record(cell, forward_by, backward_by, rng):
    p = problem(cell, rng)
    T, B, _ = p["x"].shape
    H = p["h0"].shape[1]
    dy, dh_n = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    dc_n = rng.standard_normal((B, H)) if cell == "lstm" else None

    def backward(name, saved):
        grads = {k: np.zeros_like(p[k]) for k in ("w_ih", "w_hh", "b_ih", "b_hh")}
        out = kernels_of(name).backward_sequence(cell, saved, dy, dh_n, dc_n, p["w_ih"], p["w_hh"], grads)
        return out, grads

    (dx, dh0, dc0), grads = backward(backward_by, forward(forward_by, cell, p, False)[3])
    (dx_r, dh0_r, dc0_r), grads_r = backward(backward_by, forward(backward_by, cell, p, False)[3])
    np.testing.assert_allclose(dx, dx_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dh0, dh0_r, rtol=1e-10, atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(dc0, dc0_r, rtol=1e-10, atol=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], grads_r[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", HOST)
def test_a_backend_with_one_algorithm_takes_auto_and_names_the_others(name, rng):
    p = problem("gru", rng)
    forward(name, "gru", p, False, "auto")
    with pytest.raises(ValueError, match=f"algo='step' is an algorithm of the cuda backend; the '{name}' backend "
                                         "has one algorithm: leave algo='auto'"):
        forward(name, "gru", p, False, "step")


@pytest.mark.skipif(not SIMULATED and not gpurnn.cuda_status()[0], reason="the cuda backend runs in the simulator "
                    "(tests/test_cuda_simulator.py) or on a GPU")
def test_the_cuda_record_carries_its_plan(rng):
    p = problem("lstm", rng)
    saved = forward("cuda", "lstm", p, False, "persistent")[3]
    assert saved.plan.algo == "persistent" and saved.row_lengths.shape == (3,)

"""Half-precision layers (bfloat16, float16) on the cuda backend, in the simulator or on a GPU.

A half layer's arrays are float32 and hold values of its format (kernels/precision.py): the caller
rounds x, h0, c0 and the weights, and forward rounds every state and activation it stores, where
it stores it (kernels/cuda/pointwise.py), so the next step reads h_{t-1} (c_{t-1}) rounded.
Oracle: the reference backend's forward_sequence with the same ``half`` on the same rounded inputs.

Tolerances, in units u of the format (precision.UNIT_ROUNDOFF): both sides compute in float32 and
round the same values, so they agree to the bit but where the float32 sums (in another order)
land on either side of a rounding boundary of the format: one ulp of the format, 2u of the value.
Every value forward stores must be one of the format (rounded(a) == a): without the rounding a
float32 value is almost never one. Backward runs in float32 on the saved (rounded) arrays: it
agrees with the reference's within a few u of the format, norm-wise.
"""

import numpy as np
import pytest

import gpurnn
from conftest import CELLS, needs_cuda
from gpurnn.kernels import reference
from gpurnn.kernels.precision import UNIT_ROUNDOFF, rounded
from gpurnn.kernels.vocabulary import GATES, HALF

pytestmark = needs_cuda

RECURSIONS = ["step", "persistent"]       # the cuda backend's two algorithms
T, B, I, H = 5, 3, 4, 5                 # odd, and off every simulated tile
LENGTHS = np.array([T, 2, 4], np.int32)   # the longest row reaches T, the others stop early
SAVED = ("hs", "cs", "gates", "hn")


def _cuda():
    from gpurnn.kernels import cuda as kc
    return kc


def _problem(cell, half, seed):
    """Rounded inputs, weights and loss gradients of one layer (host arrays, float32)."""
    rng = np.random.default_rng(seed)
    G = GATES[cell]

    def r(*shape):
        return rounded(rng.uniform(-0.8, 0.8, shape).astype(np.float32), half)
    return dict(x=r(T, B, I), h0=r(B, H), c0=r(B, H) if cell == "lstm" else None, w_ih=r(G * H, I),
                w_hh=r(G * H, H), b_ih=r(G * H), b_hh=r(G * H), dy=r(T, B, H), dh_n=r(B, H),
                dc_n=r(B, H) if cell == "lstm" else None)


def _forward(kernels, cell, p, lengths, reverse, algo, half, be=None):
    a = {k: None if v is None else (be.asarray(v, v.dtype) if be else v) for k, v in p.items()}
    return kernels.forward_sequence(cell, a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                                    lengths, reverse, algo, half)


def _active(lengths):
    """(T, B): whether row b runs step t (gates and hn of the other steps are unspecified)."""
    return np.arange(T)[:, None] < (np.full(B, T) if lengths is None else lengths)[None, :]


def _stored(cell, out, host, lengths):
    """{name: host array} of what forward stored: y, h_n, c_n and the saved hs, cs, gates, hn (the
    active steps' rows of gates and hn)."""
    y, h_n, c_n, saved = out
    got = dict(y=host(y), h_n=host(h_n), c_n=host(c_n) if c_n is not None else None)
    for name in SAVED:
        a = getattr(saved, name)
        if a is not None:
            got[name] = host(a)[_active(lengths)] if name in ("gates", "hn") else host(a)
    return {k: v for k, v in got.items() if v is not None}


def _assert_half_and_close(got, want, half, what):
    u = UNIT_ROUNDOFF[half]
    assert set(got) == set(want), what
    for name, w in want.items():
        g = got[name]
        assert g.dtype == np.float32, (what, name, g.dtype)
        np.testing.assert_array_equal(rounded(g, half), g, err_msg=f"{what} {name}: not {half} values")
        bound = 2 * u * np.abs(w).max()
        diff = np.abs(g - w).max()
        assert diff <= bound, f"{what} {name}: max |cuda - reference| = {diff:.3g} > 2u·max|ref| = {bound:.3g}"


CASE_IDS = dict(lengths=["lengths", "full_rows"], reverse=["rev", "fwd"])


@pytest.mark.parametrize("reverse", [True, False], ids=CASE_IDS["reverse"])
@pytest.mark.parametrize("with_lengths", [True, False], ids=CASE_IDS["lengths"])
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("algo", RECURSIONS)
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_half_forward_stores_what_the_reference_stores(cell, algo, half, with_lengths, reverse):
    p = _problem(cell, half, seed=1)
    lengths = LENGTHS if with_lengths else None
    be = gpurnn.get_backend("cuda")
    out = _forward(_cuda(), cell, p, None if lengths is None else be.asarray(lengths, np.int32), reverse, algo,
                   half, be)
    assert out[3].plan.algo == algo
    want = _stored(cell, _forward(reference, cell, p, lengths, reverse, "auto", half), np.asarray, lengths)
    _assert_half_and_close(_stored(cell, out, be.to_host, lengths), want, half, f"{cell} {algo} {half}")


@pytest.mark.parametrize("reverse", [True, False], ids=CASE_IDS["reverse"])
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("algo", RECURSIONS)
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_half_backward_matches_the_reference(cell, algo, half, reverse):
    """backward_sequence after a half forward: float32 on the saved rounded arrays, as the
    reference's backward on its own record; dx, dh0, dc0 and every weight gradient."""
    p = _problem(cell, half, seed=2)
    be = gpurnn.get_backend("cuda")
    kc = _cuda()
    results = {}
    for name, kernels, conv, host in (("cuda", kc, be.asarray, be.to_host),
                                      ("reference", reference, lambda a, dt: a, np.asarray)):
        lens = conv(LENGTHS, np.int32)
        saved = _forward(kernels, cell, p, lens, reverse, algo if name == "cuda" else "auto", half,
                         be if name == "cuda" else None)[3]
        grads = {k: conv(np.zeros_like(p[k]), np.float32) for k in ("w_ih", "w_hh", "b_ih", "b_hh")}
        d = {k: None if p[k] is None else conv(p[k], np.float32) for k in ("dy", "dh_n", "dc_n", "w_ih", "w_hh")}
        dx, dh0, dc0 = kernels.backward_sequence(cell, saved, d["dy"], d["dh_n"], d["dc_n"], d["w_ih"], d["w_hh"],
                                                 grads)
        out = dict(dx=dx, dh0=dh0, dc0=dc0, **{f"grad/{k}": v for k, v in grads.items()})
        results[name] = {k: host(v) for k, v in out.items() if v is not None}
    assert set(results["cuda"]) == set(results["reference"])
    tol = 4 * UNIT_ROUNDOFF[half]
    for k, want in results["reference"].items():
        got = results["cuda"][k]
        assert got.dtype == np.float32, k
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err <= tol, f"{cell} {algo} {half} {k}: relative error {err:.3g} > 4u = {tol:.3g}"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_half_formats_replay_graphs_of_their_own_kernels(cell, monkeypatch):
    """The per-step path's CUDA graphs (graphs.py) are per format: calls with the same arrays (a
    graph is captured again only when the weights move) in float32, bfloat16 and float16, each
    twice (the second a graph replay), each give their own format's results."""
    monkeypatch.setenv("GPURNN_GRAPHS", "1")
    kc = _cuda()
    kc.graphs.clear()
    be = gpurnn.get_backend("cuda")
    p = {k: None if v is None else rounded(v, "float16") for k, v in _problem(cell, "bfloat16", seed=3).items()}
    for v in p.values():                                # values of both formats: inputs of every run
        assert v is None or all(np.array_equal(rounded(v, h), v) for h in HALF)
    held = {k: None if v is None else be.asarray(v, v.dtype) for k, v in p.items()}
    lengths = be.asarray(LENGTHS, np.int32)
    for half in (None, *HALF, None):
        want = _stored(cell, _forward(reference, cell, p, LENGTHS, False, "auto", half), np.asarray, LENGTHS)
        for call in range(2):
            out = _forward(kc, cell, held, lengths, False, "step", half)
            got = _stored(cell, out, be.to_host, LENGTHS)
            if half is None:
                for name, w in want.items():
                    np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-6, err_msg=f"float32 {name}")
            else:
                _assert_half_and_close(got, want, half, f"{cell} {half} call {call}")
            del out, got
    keys = [p.key for p in kc.graphs.plans()]
    assert sorted(str(k[-1]) for k in keys) == ["None", "bfloat16", "float16"], keys
    assert all(p.workspace is not None for p in kc.graphs.plans())        # every format replayed a graph


def test_cuda_half_takes_float32_arrays_and_a_known_format():
    kc = _cuda()
    be = gpurnn.get_backend("cuda")
    p = _problem("rnn_tanh", "bfloat16", seed=4)
    wide = {k: None if v is None else v.astype(np.float64) for k, v in p.items()}
    with pytest.raises(ValueError, match="half='bfloat16' needs float32 arrays"):
        _forward(kc, "rnn_tanh", wide, None, False, "auto", "bfloat16", be)
    with pytest.raises(ValueError, match="unknown half-precision format 'float8'"):
        _forward(kc, "rnn_tanh", p, None, False, "auto", "float8", be)


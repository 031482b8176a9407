"""gpurnn.torch in bfloat16 and float16: half modules (``module.bfloat16()``, ``.half()``) and
torch.autocast, against torch.nn in the same precision and against float64.

Errors are norm-wise relative, ||got - want|| / ||want||, per tensor (each parameter's gradient
on its own), in units of the format's unit roundoff u = kernels.precision.UNIT_ROUNDOFF[fmt]
(bfloat16 2^-8, float16 2^-11). The oracle ``exact`` is torch.nn in float64 on the very values
the half computation starts from: the input, the states, the weights and the loss's weighting
rounded to the format (so dy, dh_n, dc_n too). Measured over 40 seeds of this file's problems
(T=5, B=3, I=5, H=7; 1 layer, and 2 bidirectional layers) and 40 of the same with T=6, every
cell, both formats, half modules and autocast alike, the largest figure of any tensor of the
group (relu's gradients aside, below):

                        gpurnn vs exact    torch.nn vs exact    gpurnn vs torch.nn    TOL
    y, h_n, c_n              0.98 u              2.31 u                2.35 u          2, 5
    dx, dh0, dc0             1.53 u              2.89 u                3.06 u          3, 6
    weight gradients         2.80 u              7.16 u                7.48 u          6, 15

gpurnn rounds where a half kernel stores and sums in float32 (kernels/precision.py); torch.nn's
CPU kernels round more often (their bfloat16 and float16 pointwise math), hence its larger
figures. The tolerances (TOL: gpurnn vs exact, gpurnn vs torch.nn) are about twice the largest
measured figure; over 100 seeds every case but relu's passes them.

RNN_RELU's gradients are the exception: relu's derivative jumps at 0, and where a pre-activation
lies within rounding of 0 the computations take different branches. Over 100 seeds of the
bfloat16 two-layer stack, dx is more than 3 u from exact in 9 of gpurnn's and 18 of torch.nn's
runs (up to 49 u; float16: 0 and 6, up to 395 u), the weights' gradients up to 245 u. Where
torch.nn's error exceeds the tolerance, gpurnn's may reach twice torch.nn's (RELU_FACTOR); the
seeds here have no such jump in gpurnn's results (the forward values, continuous, keep TOL).

Under CPU autocast torch.nn's GRU returns float32 (it is on no autocast list), and so does
gpurnn's, which computes in float32: within 4.71 u of float32 of the exact computation on the
unrounded values (measured, 40 seeds; F32_TOL is 16 u). torch.nn's own GRU there runs its
products through autocast's half linear and the rest in float32: 3.64 u of the format from
gpurnn's at most (measured), within TOL's "gpurnn vs torch.nn". torch.nn's LSTM cannot compute
float16 under CPU autocast (oneDNN refuses it: a RuntimeError); gpurnn's does, and is compared
with torch.nn's float16 LSTM module, which runs the same values.

The cuda cases (ids with "cuda") run where the cuda backend is usable: on a GPU, or in the
simulator (NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_torch_half.py -k cuda).
"""

import copy

import numpy as np
import pytest

import gpurnn
from conftest import CELLS, SIMULATED, needs_cuda
from gpurnn.kernels.precision import UNIT_ROUNDOFF, rounded

torch = pytest.importorskip("torch", reason="gpurnn.torch needs torch; pip install '.[test]'")
gt = pytest.importorskip("gpurnn.torch")

CLASS = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}
DTYPE = {"bfloat16": torch.bfloat16, "float16": torch.float16}
FORMATS = list(DTYPE)
STACKS = [pytest.param(1, False, id="L1"), pytest.param(2, True, id="L2bi")]
T, B, I, H = 5, 3, 5, 7
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
# about twice the largest measured error (module docstring), in units of u: gpurnn against the
# exact computation, and gpurnn against torch.nn
TOL = {"fwd": (2.0, 5.0), "bwd": (3.0, 6.0), "grads": (6.0, 15.0)}
RELU_FACTOR = 2.0
F32_TOL = 16 * UNIT_ROUNDOFF["float32"]     # the GRU under CPU autocast, gpurnn vs exact: measured 4.71 u of float32


def nn_pair(cell, L, bi, seed=0, backend="cpu", algo="auto"):
    """(gpurnn.torch module, torch.nn module): float32, the same weights (torch.nn's init under ``seed``)."""
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn_") else {}
    torch.manual_seed(seed)
    ours = getattr(gt, CLASS[cell])(I, H, L, bidirectional=bi, backend=backend, algo=algo, **kw)
    theirs = getattr(torch.nn, CLASS[cell])(I, H, L, bidirectional=bi, **kw)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def problem(cell, L, bi, seed=0):
    """x (T, B, I), hx (a list: h0, and c0 for the LSTM), and the loss's weighting of y, h_n (and c_n), float32."""
    g = torch.Generator().manual_seed(seed + 100)
    D = 2 if bi else 1
    x = torch.randn(T, B, I, generator=g)
    hx = [0.5 * torch.randn(L * D, B, H, generator=g) for _ in range(2 if cell == "lstm" else 1)]
    weighting = [torch.randn(T, B, D * H, generator=g)] + [torch.randn(L * D, B, H, generator=g) for _ in hx]
    return x, hx, weighting


def run(m, cell, x, hx, weighting, autocast=None):
    """Forward (under ``autocast``, a torch dtype, when given), then backward of the weighted sum
    of every output: outputs and every gradient, as tensors of the dtypes they came in."""
    x = x.detach().clone().requires_grad_(True)
    hx = [h.detach().clone().requires_grad_(True) for h in hx]
    m.zero_grad()
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        y, state = m(x, (tuple(hx) if cell == "lstm" else hx[0]) if hx else None)
    states = state if cell == "lstm" else (state,)
    loss = sum((out.to(w.dtype) * w).sum() for out, w in zip((y, *states), weighting))
    loss.backward()
    res = {"y": y, "h_n": states[0], "dx": x.grad}
    if cell == "lstm":
        res["c_n"] = states[1]
    res.update({"dh0" if i == 0 else "dc0": h.grad for i, h in enumerate(hx)})
    res.update({f"grad/{n}": p.grad for n, p in m.named_parameters()})
    return {k: v.detach() for k, v in res.items()}


def exact(cell, L, bi, fmt, x, hx, weighting, seed=0):
    """torch.nn in float64 (the weights of ``nn_pair(..., seed)``) on the inputs, states and
    loss weighting given and the weights, each rounded to ``fmt`` (None: not rounded)."""
    rnd = (lambda t: t.to(DTYPE[fmt]).double()) if fmt else (lambda t: t.double())
    _, m = nn_pair(cell, L, bi, seed)
    m = m.double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(rnd(p))
    return run(m, cell, rnd(x), [rnd(h) for h in hx], [rnd(w) for w in weighting])


def rel_err(got, want):
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


def group(key):
    return "grads" if key.startswith("grad/") else ("fwd" if key in ("y", "h_n", "c_n") else "bwd")


def check_errors(cell, fmt, got, want, ref):
    """gpurnn's results ``got`` against torch.nn's ``want`` and the exact ``ref``, key by key,
    within TOL (and, for relu, RELU_FACTOR) in units of the format's u, or of the result's
    dtype's where that is coarser (a bfloat16 input's dx of a float16 computation); says every
    key that is not."""
    bad = []
    for key in ref:
        u = max(UNIT_ROUNDOFF[fmt], UNIT_ROUNDOFF[str(got[key].dtype).removeprefix("torch.")])
        e_ours, e_theirs = rel_err(got[key], ref[key]), rel_err(want[key], ref[key])
        e_diff = rel_err(got[key], want[key])
        tol_ref, tol_theirs = TOL[group(key)]
        if cell == "rnn_relu" and e_theirs > tol_ref * u:   # near a kink: bounded by torch.nn's own error
            tol_ref = tol_theirs = max(tol_theirs, RELU_FACTOR * e_theirs / u)
        if e_ours > tol_ref * u or e_diff > tol_theirs * u:
            bad.append(f"{key}: gpurnn {e_ours / u:.2f} u from exact (tolerance {tol_ref:.1f}), torch.nn "
                       f"{e_theirs / u:.2f} u, gpurnn vs torch.nn {e_diff / u:.2f} u (tolerance {tol_theirs:.1f})")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- a. half modules
@pytest.mark.parametrize("L,bi", STACKS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cell", CELLS)
def test_half_module_matches_torch_nn(cell, fmt, L, bi):
    """module.to(bfloat16 / float16) with inputs of that dtype: torch.nn's dtypes (outputs, dx
    and every gradient in the module's dtype) and values within TOL of torch.nn's and exact's."""
    dt = DTYPE[fmt]
    ours, theirs = nn_pair(cell, L, bi)
    ours, theirs = ours.to(dt), theirs.to(dt)
    x, hx, weighting = problem(cell, L, bi)
    args = (x.to(dt), [h.to(dt) for h in hx], [w.to(dt) for w in weighting])
    got, want = run(ours, cell, *args), run(theirs, cell, *args)
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in want.items()}
    assert all(v.dtype == dt for v in got.values())
    check_errors(cell, fmt, got, want, exact(cell, L, bi, fmt, x, hx, weighting))


# ---------------------------------------------------------------- b. autocast
@pytest.mark.parametrize("L,bi", STACKS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cell", CELLS)
def test_autocast_matches_torch_nn(cell, fmt, L, bi):
    """float32 modules (master weights) under torch.autocast("cpu", dtype): the outputs of
    torch.nn's dtype, dx and the weights' gradients float32, values within TOL."""
    dt = DTYPE[fmt]
    ours, theirs = nn_pair(cell, L, bi)
    x, hx, weighting = problem(cell, L, bi)
    got = run(ours, cell, x, hx, weighting, autocast=dt)
    assert all(got[k].dtype == torch.float32 for k in got if group(k) != "fwd")
    if cell == "lstm" and fmt == "float16":
        # torch.nn's LSTM cannot run float16 under CPU autocast (oneDNN); gpurnn computes it, and
        # its float16 module runs the same values
        with pytest.raises(RuntimeError):
            run(theirs, cell, x, hx, weighting, autocast=dt)
        assert all(got[k].dtype == dt for k in ("y", "h_n", "c_n"))
        want = run(copy.deepcopy(theirs).to(dt), cell, x.to(dt), [h.to(dt) for h in hx],
                   [w.to(dt) for w in weighting])
    else:
        want = run(theirs, cell, x, hx, weighting, autocast=dt)
        assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in want.items()}
    if cell == "gru":           # on no CPU autocast list: float32, as torch.nn's (whose products are half)
        assert all(v.dtype == torch.float32 for v in got.values())
        ref, u = exact(cell, L, bi, None, x, hx, weighting), UNIT_ROUNDOFF[fmt]
        for key, value in want.items():
            assert rel_err(got[key], ref[key]) <= F32_TOL, key
            assert rel_err(got[key], value) <= TOL[group(key)][1] * u, key
        return
    check_errors(cell, fmt, got, want, exact(cell, L, bi, fmt, x, hx, weighting))


@pytest.mark.parametrize("x_dtype,h_dtype,autocast", [
    (BF16, None, BF16), (BF16, None, F16), (F32, BF16, BF16), (BF16, F32, BF16), (BF16, F16, F16), (F16, F16, F16),
    (F32, BF16, F16),
])
def test_autocast_gru_with_half_states_is_torch_nns(x_dtype, h_dtype, autocast):
    """torch.nn's GRU under CPU autocast returns its states' dtype promoted with the autocast
    dtype (h0's, or without h0 the input's): a half format where both are it, else float32.
    gpurnn's returns the same dtypes, its values within TOL of torch.nn's (both in the format) or
    of the exact float32 computation."""
    ours, theirs = nn_pair("gru", 2, True)
    x, hx, weighting = problem("gru", 2, True)
    x = x.to(x_dtype)
    hx = [h.to(h_dtype) for h in hx]
    got, want = (run(m, "gru", x, hx if h_dtype else [], weighting, autocast=autocast)
                 for m in (ours, theirs))
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in want.items()}
    fmt = gt.HALF_OF_DTYPE.get(got["y"].dtype)
    assert fmt == gt.HALF_OF_DTYPE.get(torch.promote_types(autocast, h_dtype or x_dtype))
    assert all(got[k].dtype == F32 for k in got if k.startswith("grad/"))
    if fmt is not None:
        check_errors("gru", fmt, got, want, exact("gru", 2, True, fmt, x, hx if h_dtype else [], weighting))


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("fmt,autocast", [("bfloat16", False), ("float16", False), ("bfloat16", True)])
def test_projected_lstm_matches_torch_nn(fmt, autocast):
    """proj_size: the same tolerances (measured over 20 seeds: 1.1 u, 1.4 u, 1.7 u from exact;
    2.6 u, 2.3 u, 4.7 u from torch.nn). Under CPU autocast torch.nn's projected LSTM (not
    oneDNN's) returns c_n in float32, gpurnn's in the format: c_n's dtype is left out."""
    dt = DTYPE[fmt]
    torch.manual_seed(0)
    ours = gt.LSTM(I, H, 2, bidirectional=True, proj_size=3, backend="cpu")
    theirs = torch.nn.LSTM(I, H, 2, bidirectional=True, proj_size=3)
    theirs.load_state_dict(ours.state_dict())
    exact_m = copy.deepcopy(theirs).double()
    with torch.no_grad():
        for p in exact_m.parameters():
            p.copy_(p.to(dt).double())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g)
    hx = [torch.randn(4, B, 3, generator=g), torch.randn(4, B, H, generator=g)]
    weighting = [torch.randn(T, B, 6, generator=g), torch.randn(4, B, 3, generator=g),
                 torch.randn(4, B, H, generator=g)]
    rnd = lambda t: t.to(dt).double()       # noqa: E731
    ref = run(exact_m, "lstm", rnd(x), [rnd(h) for h in hx], [rnd(w) for w in weighting])
    if autocast:
        got, want = (run(m, "lstm", x, hx, weighting, autocast=dt) for m in (ours, theirs))
    else:
        args = (x.to(dt), [h.to(dt) for h in hx], [w.to(dt) for w in weighting])
        got, want = run(ours.to(dt), "lstm", *args), run(theirs.to(dt), "lstm", *args)
    assert got["c_n"].dtype == dt
    assert {k: v.dtype for k, v in got.items() if k != "c_n"} == {k: v.dtype for k, v in want.items() if k != "c_n"}
    check_errors("lstm", fmt, got, want, ref)


# ---------------------------------------------------------------- c. values of the format
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_results_hold_values_of_the_format_and_gradients_stay_float32(cell, fmt):
    """Under autocast the outputs are of the format; dx and dh0, float32 tensors, hold values of
    the format (rounded where a half kernel stores them); the float32 weights' gradients are
    float32 sums, not rounded to the format."""
    ours, _ = nn_pair(cell, 2, True)
    x, hx, weighting = problem(cell, 2, True)
    got = run(ours, cell, x, hx, weighting, autocast=DTYPE[fmt])
    for key in ("y", "h_n", "c_n"):
        if key in got:
            assert got[key].dtype == DTYPE[fmt]
    for key in ("dx", "dh0", "dc0"):
        if key in got:
            a = got[key].numpy()
            np.testing.assert_array_equal(rounded(a, fmt), a, err_msg=key)
    for name, p in ours.named_parameters():
        g = p.grad.numpy()
        assert p.grad.dtype == torch.float32 and (rounded(g, fmt) != g).any(), name


# ---------------------------------------------------------------- the same code as gpurnn's layers
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cell", CELLS)
def test_bridge_runs_the_layers_half_code(cell, fmt):
    """A half module gives exactly what gpurnn's layer of that dtype gives (packed, unsorted
    lengths, batch_first, given states): the bridge converts without rounding anything itself,
    and rounds only the parameters' gradients, to their dtype."""
    dt = DTYPE[fmt]
    L, D = 2, 2
    ours, _ = nn_pair(cell, L, True)
    ours.batch_first = True
    ours = ours.to(dt)
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn_") else {}
    layer = getattr(gpurnn, CLASS[cell])(I, H, L, batch_first=True, bidirectional=True, backend="cpu", dtype=fmt,
                                         **kw)
    layer.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, I, generator=g).to(dt)
    hx = [torch.randn(L * D, B, H, generator=g).to(dt) for _ in range(2 if cell == "lstm" else 1)]
    lengths = torch.tensor([2, T, 4])
    dy = torch.randn(B, T, D * H, generator=g).to(dt)
    dh = [torch.randn(L * D, B, H, generator=g).to(dt) for _ in hx]

    xg = x.clone().requires_grad_(True)
    hg = [h.clone().requires_grad_(True) for h in hx]
    packed = torch.nn.utils.rnn.pack_padded_sequence(xg, lengths, batch_first=True, enforce_sorted=False)
    out, state = ours(packed, tuple(hg) if cell == "lstm" else hg[0])
    y = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)[0]
    states = state if cell == "lstm" else (state,)
    torch.autograd.backward([y, *states], [dy, *dh])

    f32 = [t.float().numpy() for t in (x, *hx, dy, *dh)]
    xs, hs, dys, dhs = f32[0], f32[1:1 + len(hx)], f32[1 + len(hx)], f32[2 + len(hx):]
    lens = lengths.numpy()
    if cell == "lstm":
        want_y, want_states = layer(xs, tuple(hs), lengths=lens)
        want_dx, want_dh = layer.backward(dys, tuple(dhs))
    else:
        want_y, want_states = layer(xs, hs[0], lengths=lens)
        want_dx, want_dh = layer.backward(dys, dhs[0])
        want_states, want_dh = (want_states,), (want_dh,)
    pairs = [(y, want_y), *zip(states, want_states), (xg.grad, want_dx), *zip((h.grad for h in hg), want_dh)]
    for got, want in pairs:
        assert got.dtype == dt
        np.testing.assert_array_equal(got.detach().float().numpy(), want)
    for name, p in ours.named_parameters():
        assert p.grad.dtype == dt
        want = torch.from_numpy(layer.grads[name]).to(dt).float().numpy()     # float32 sums, rounded once
        np.testing.assert_array_equal(p.grad.float().numpy(), want, err_msg=name)


# ---------------------------------------------------------------- the rule, and the edges
@pytest.mark.parametrize("device,cell,weights,states,autocast,want", [
    # half modules: their own format without autocast; under it as float32 modules (autocast casts them)
    ("cpu", "lstm", BF16, BF16, None, "bfloat16"), ("cuda", "gru", F16, F16, None, "float16"),
    ("cuda", "gru", BF16, BF16, BF16, "float16"), ("cpu", "rnn_relu", F16, F16, BF16, "bfloat16"),
    ("cpu", "lstm", F16, F32, BF16, "bfloat16"), ("cpu", "gru", BF16, F32, BF16, None),
    # no autocast, or float64 parameters: the parameters' dtype
    ("cpu", "lstm", F32, F32, None, None), ("cuda", "lstm", torch.float64, F32, F16, None),
    # CPU autocast: RNN and LSTM in its dtype; the GRU in float32, or in the format of a state of its dtype
    ("cpu", "rnn_tanh", F32, F32, BF16, "bfloat16"), ("cpu", "rnn_relu", F32, F32, F16, "float16"),
    ("cpu", "lstm", F32, F32, BF16, "bfloat16"), ("cpu", "lstm", F32, F32, F16, "float16"),
    ("cpu", "gru", F32, F32, BF16, None), ("cpu", "gru", F32, F16, F16, "float16"),
    ("cpu", "gru", F32, F16, BF16, None), ("cpu", "gru", F32, BF16, BF16, "bfloat16"),
    # CUDA autocast: torch's AutocastRNN casts to float16, whatever the autocast dtype
    ("cuda", "gru", F32, F32, BF16, "float16"), ("cuda", "lstm", F32, BF16, BF16, "float16"),
    ("cuda", "rnn_tanh", F32, F32, F16, "float16"),
    ("meta", "lstm", F32, F32, BF16, None),
])
def test_the_rule(device, cell, weights, states, autocast, want):
    assert gt.half_format(device, cell, weights, states, autocast) == want


@pytest.mark.parametrize("autocast", FORMATS)
@pytest.mark.parametrize("module_dtype", FORMATS)
@pytest.mark.parametrize("cell", CELLS)
def test_half_modules_under_autocast_return_torch_nns_dtypes(cell, module_dtype, autocast):
    """A bfloat16 or float16 module under CPU autocast with a float32 input: the dtypes of the
    outputs and of every gradient are torch.nn's (autocast casts half parameters as it casts
    float32 ones), the values within the format's tolerance of torch.nn's."""
    if cell == "lstm" and autocast == "float16":
        pytest.skip("torch.nn's LSTM cannot compute float16 under CPU autocast (oneDNN)")
    torch.manual_seed(0)
    kw = {"nonlinearity": "relu"} if cell == "rnn_relu" else {}
    ref = getattr(torch.nn, CLASS[cell])(I, H, **kw).to(DTYPE[module_dtype])
    ours = getattr(gt, CLASS[cell])(I, H, backend="cpu", **kw).to(DTYPE[module_dtype])
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    got = {}
    for name, m in (("torch", ref), ("gpurnn", ours)):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=DTYPE[autocast]):
            y, _ = m(xi)
        y.float().square().sum().backward()
        got[name] = (y, xi.grad, {k: p.grad for k, p in m.named_parameters()})
    (y_ref, dx_ref, g_ref), (y, dx, g) = got["torch"], got["gpurnn"]
    assert y.dtype == y_ref.dtype and dx.dtype == dx_ref.dtype == torch.float32
    fmt = str(y_ref.dtype).removeprefix("torch.") if y_ref.dtype != F32 else autocast
    u = UNIT_ROUNDOFF[fmt]
    assert rel_err(y, y_ref) <= TOL["fwd"][1] * u
    for k in g_ref:
        assert g[k].dtype == g_ref[k].dtype == DTYPE[module_dtype], k
        # relu's kink aside (module docstring): its gradients are compared in the forward's tests
        if cell != "rnn_relu":
            assert rel_err(g[k], g_ref[k]) <= TOL["grads"][1] * max(u, UNIT_ROUNDOFF[module_dtype]), k


@pytest.mark.parametrize("make,call", [
    (lambda: torch.nn.LSTM(3, 4).bfloat16(), lambda m: m(torch.randn(5, 2, 3))),
    (lambda: torch.nn.GRU(3, 4).half(), lambda m: m(torch.randn(5, 2, 3).bfloat16())),
    (lambda: torch.nn.GRU(3, 4).bfloat16(), lambda m: m(torch.randn(5, 2, 3).bfloat16(), torch.zeros(1, 2, 4))),
    (lambda: torch.nn.RNN(3, 4).bfloat16(), lambda m: m(torch.randn(5, 2, 3).bfloat16(), torch.zeros(1, 2, 4).half())),
])
def test_mixed_dtypes_raise_torchs_exception_types(make, call):
    """torch.nn is the oracle: the same calls on gpurnn.torch's module raise what torch.nn raises."""
    theirs = make()
    with pytest.raises(Exception) as expected:
        call(theirs)
    ours = getattr(gt, type(theirs).__name__)(3, 4, backend="cpu").to(theirs.weight_ih_l0.dtype)
    with pytest.raises(expected.type):
        call(ours)


def test_parameters_of_mixed_dtypes_are_refused():
    m = gt.LSTM(3, 4, backend="cpu")
    m.bias_hh_l0.data = m.bias_hh_l0.data.bfloat16()
    with pytest.raises(RuntimeError, match="one dtype"):
        m(torch.randn(5, 2, 3))


def test_empty_batch_meta_device_and_autocast_shapes():
    """B = 0 and the meta device (the operator's shape function) give the half dtypes too."""
    m = gt.LSTM(3, 4, 2, backend="cpu").bfloat16()
    y, (h, c) = m(torch.randn(5, 0, 3).bfloat16())
    assert y.dtype == h.dtype == c.dtype == BF16 and y.shape == (5, 0, 4)
    m = gt.LSTM(3, 4, 2, backend="cpu")
    with torch.autocast("cpu", dtype=F16):
        y, (h, c) = m(torch.randn(5, 0, 3))
    assert y.dtype == h.dtype == c.dtype == F16
    meta = gt.GRU(3, 4, device="meta", dtype=BF16)
    y, h = meta(torch.empty(5, 2, 3, device="meta", dtype=BF16))
    assert y.dtype == h.dtype == BF16 and y.device.type == "meta"


def test_compiled_autocast_matches_eager():
    """torch.compile (aot_eager, one graph) under autocast: the operators' shape functions give
    the half outputs and the float32 gradients; values as eager's."""
    ours, _ = nn_pair("lstm", 2, True)
    x, _, _ = problem("lstm", 2, True)

    def step(m):
        m.zero_grad()
        with torch.autocast("cpu", dtype=BF16):
            y = m(x)[0]
        (y.float() ** 2).sum().backward()
        return y.detach(), {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in m.named_parameters()}
    want = step(ours)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
        got = step(compiled)
    assert got[0].dtype == BF16 and all(g.dtype == F32 for g in got[1].values())
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------- d. training under autocast
V, E, HT, TT, BT = 8, 16, 32, 12, 16         # vocabulary, embedding, hidden, time, batch of the task


class Recall(torch.nn.Module):
    """Embedding, a recurrent layer, a linear readout: predict the token of two steps ago."""

    def __init__(self, rnn):
        super().__init__()
        self.emb, self.rnn, self.out = torch.nn.Embedding(V, E), rnn, torch.nn.Linear(HT, V)

    def forward(self, x):
        return self.out(self.rnn(self.emb(x))[0])


def recall_batches(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randint(0, V, (steps, TT, BT), generator=g)
    ys = torch.cat([torch.zeros(steps, 2, BT, dtype=torch.long), xs[:, :-2]], dim=1)
    return xs, ys


def train(model, steps, autocast=None, scaler=None, lr=0.2):
    """SGD with momentum (not Adam: Adam's steps do not change when every gradient is scaled by
    the same factor, so a gradient off by a factor would pass); the loss of every step."""
    xs, ys = recall_batches(steps)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for x, y in zip(xs, ys):
        with torch.autocast("cpu", dtype=autocast or BF16, enabled=autocast is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float().reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        losses.append(loss.item())
    return np.array(losses)


def windows(losses, width=25):
    return np.array([losses[i:i + width].mean() for i in range(0, len(losses), width)])


def test_a_model_trains_under_autocast_as_torch_nn():
    """The same model, weights and batches: torch.nn's LSTM in float32, torch.nn's and gpurnn's
    under bfloat16 autocast. Both autocast runs learn (the loss falls below a tenth of its
    start), and their loss curves (means over 25 steps) differ by at most four times the
    difference between torch.nn's float32 and autocast curves (plus 1e-3): precision's spread.
    Measured: the spread 5e-4, gpurnn vs torch.nn 5e-4; with gpurnn's LSTM gradients doubled,
    halved or negated the difference is 0.42, 0.53 and 2.3."""
    torch.manual_seed(0)
    base = Recall(torch.nn.LSTM(E, HT))
    mine = copy.deepcopy(base)
    mine.rnn = gt.LSTM(E, HT, backend="cpu")
    mine.rnn.load_state_dict(base.rnn.state_dict())
    steps = 200
    f32 = windows(train(copy.deepcopy(base), steps))
    theirs = train(copy.deepcopy(base), steps, autocast=BF16)
    ours = train(mine, steps, autocast=BF16)
    for losses in (theirs, ours):
        assert windows(losses)[-1] < 0.1 * losses[0]
    spread = np.abs(f32 - windows(theirs)).max()
    diff = np.abs(windows(ours) - windows(theirs)).max()
    assert diff <= 4 * spread + 1e-3, (diff, spread)


# ---------------------------------------------------------------- e. float16 and GradScaler
def test_grad_scaler_with_float16():
    """torch.amp.GradScaler on the CPU with float16 autocast, through gpurnn's float16 LSTM
    (which torch.nn's cannot run there):
    - a loss 2^-24 small underflows in float16 (dy rounds to zero: no LSTM gradient), and a
      scale of 2^24 brings back exactly the gradients of the loss itself, scaled by 2^-24
      (scaling by a power of two commutes with every rounding);
    - a scale that overflows float16 gives inf gradients: the scaler skips the step (the
      weights stay) and halves its scale;
    - a model trains with the scaler."""
    torch.manual_seed(0)
    model = Recall(gt.LSTM(E, HT, backend="cpu"))
    xs, ys = recall_batches(1)
    params = dict(model.named_parameters())

    def grads(factor, scale=None):
        model.zero_grad()
        with torch.autocast("cpu", dtype=F16):
            loss = torch.nn.functional.cross_entropy(model(xs[0]).float().reshape(-1, V), ys[0].reshape(-1)) * factor
        if scale is None:
            loss.backward()
        else:
            scaler = torch.amp.GradScaler("cpu", init_scale=scale)
            scaler.scale(loss).backward()
            scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.1))
        return {n: p.grad.clone() for n, p in params.items()}

    plain = grads(1.0)
    assert all(g.dtype == F32 for g in plain.values())
    small = grads(2.0 ** -24)
    assert all(not small[n].any() for n in params if n.startswith("rnn."))
    scaled = grads(2.0 ** -24, scale=2.0 ** 24)
    for n in params:
        torch.testing.assert_close(scaled[n] * 2.0 ** 24, plain[n], rtol=0, atol=0, msg=n)

    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
    with torch.autocast("cpu", dtype=F16):
        loss = torch.nn.functional.cross_entropy(model(xs[0]).float().reshape(-1, V), ys[0].reshape(-1))
    scaler.scale(loss).backward()
    assert not torch.isfinite(params["rnn.weight_hh_l0"].grad).all()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 39
    for n, p in params.items():
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0, msg=n)

    losses = train(model, 150, autocast=F16, scaler=torch.amp.GradScaler("cpu"))
    assert windows(losses)[-1] < 0.25 * losses[0]


# ---------------------------------------------------------------- f. the cuda backend
@needs_cuda
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("algo", ["step", "persistent"])
def test_cuda_backend_half_module_matches_the_cpu_backend(algo, cell, fmt):
    """The cuda backend (a GPU's CUDA tensors, or the simulator's host memory) against the cpu
    backend, a half module of each: the same rounding points, float32 sums in another order. A
    sum's last bit may round a stored value the other way (one unit in the last place: 2 u of
    that element), so the results agree within 2 u; measured in the simulator: at most 0.48 u
    (a float16 weight gradient), most results identical."""
    dt = DTYPE[fmt]
    device = "cpu"
    if not SIMULATED:       # a GPU: the cuda backend takes CUDA tensors
        if not torch.cuda.is_available():
            pytest.skip("this torch has no CUDA: it cannot hand gpurnn.torch the CUDA tensors the cuda backend takes")
        device = "cuda"
    ours, _ = nn_pair(cell, 2, True, backend="cuda", algo=algo)
    cpu, _ = nn_pair(cell, 2, True)
    ours, cpu = ours.to(device=device, dtype=dt), cpu.to(dt)
    x, hx, weighting = problem(cell, 2, True)
    args = (x.to(dt), [h.to(dt) for h in hx], [w.to(dt) for w in weighting])
    got = run(ours, cell, *(a.to(device) if torch.is_tensor(a) else [t.to(device) for t in a] for a in args))
    want = run(cpu, cell, *args)
    for key, value in want.items():
        assert got[key].dtype == dt and got[key].device.type == device, key
        assert rel_err(got[key].cpu(), value) <= 2 * UNIT_ROUNDOFF[fmt], key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and torch with CUDA")
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cell", CELLS)
def test_gpu_autocast_dtypes_are_torch_nns(cell, fmt):
    """On a GPU under autocast: the dtypes of torch.nn's cuDNN RNNs (float16 whatever the autocast
    dtype, half_format says why), float32 gradients of the float32 weights."""
    ours, theirs = nn_pair(cell, 2, True, backend="auto")
    ours, theirs = ours.cuda(), theirs.cuda()
    x, hx, weighting = problem(cell, 2, True)
    for m in (ours, theirs):
        with torch.autocast("cuda", dtype=DTYPE[fmt]):
            y, state = m(x.cuda(), tuple(h.cuda() for h in hx) if cell == "lstm" else hx[0].cuda())
        assert y.dtype == torch.float16
        (y.float() * weighting[0].cuda()).sum().backward()
        assert all(p.grad.dtype == F32 for p in m.parameters())

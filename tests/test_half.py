"""Half precision (bfloat16, float16) layers: the rounding itself, where it happens, and how far
a half layer lands from the exact result (kernels/precision.py states the scheme).

Tolerances are in units of the format's unit roundoff u (2**-8 for bfloat16, 2**-11 for
float16), norm-wise relative to the exact result. Measured on the shapes below (T = 7, H = 6,
two layers, both directions), a half layer's distance from a float64 computation on the same
rounded inputs and weights is 0.5-0.7 u for the outputs and 0.7-1.1 u for the gradients (one
rounding of each stored value, propagated); float32 is 2**16 (bfloat16) to 2**13 (float16)
times closer. The bound 3 u leaves room for other seeds and stays far below an error of the
format's size in the math (a lost gate or state rounding costs tens of u, see the last tests).
"""

import copy
import pickle

import numpy as np
import pytest

import gpurnn
from gpurnn.kernels import precision
from gpurnn.kernels.precision import UNIT_ROUNDOFF, rounded
from gpurnn.kernels.vocabulary import HALF

HOST_BACKENDS = ("reference", "cpu")     # the cuda backend: tests/test_half_cuda.py
LAYER_OF_CELL = {"rnn_tanh": (gpurnn.RNN, {}), "rnn_relu": (gpurnn.RNN, {"nonlinearity": "relu"}),
         "lstm": (gpurnn.LSTM, {}), "gru": (gpurnn.GRU, {})}
T, B, I, H = 7, 3, 5, 6
BOUND = 3.0             # in u, see the module's docstring


# ---------------------------------------------------------------- the rounding
def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


def _hard_values():
    """Random float32 values over the whole exponent range, exact ties of both formats, and the
    special values: zeros, infinities, NaN, the largest finite values, subnormals."""
    rng = np.random.default_rng(0)
    spread = rng.standard_normal(20000) * 10.0 ** rng.integers(-45, 39, 20000)
    ties_bf16 = ((rng.integers(0, 2 ** 16, 500).astype(np.uint32) << 16) | 0x8000).view(np.float32)
    ties_f16 = (rng.integers(-2048, 2048, 500) + 0.5) * 2.0 ** -11 * 2.0 ** rng.integers(-14, 15, 500)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-45, 65504, 65519, 65520, 6e-8, 3e-8]
    with np.errstate(over="ignore"):
        return np.concatenate([spread.astype(np.float32), ties_bf16, ties_f16.astype(np.float32),
                               np.array(special, np.float32)])


@pytest.mark.parametrize("half", HALF)
def test_rounding_is_torchs_bit_for_bit(half):
    """Round to nearest, ties to even, with the format's range, as torch's casts do."""
    torch = pytest.importorskip("torch")
    a = _hard_values()
    ours = rounded(a, half)
    theirs = torch.from_numpy(a).to(getattr(torch, half)).float().numpy()
    nan = np.isnan(theirs)
    assert np.array_equal(np.isnan(ours), nan)
    assert np.array_equal(_bits(ours)[~nan], _bits(theirs)[~nan])
    assert all(precision.round_scalar(v, half) == w for v, w in zip(a[:50], ours[:50]))


def test_rounding_without_torch():
    """Independent of torch: float16 through NumPy's float16, and bfloat16's definition (the top
    16 bits of float32, nearest, ties to even) checked on hand-picked bit patterns."""
    a = _hard_values()
    with np.errstate(over="ignore"):
        assert np.array_equal(rounded(a, "float16"), a.astype(np.float16).astype(np.float32), equal_nan=True)
    pattern = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7FFFFF, 0x7F800001],
                       np.uint32).view(np.float32)
    want = np.array([0x3F800000, 0x3F820000, 0x3F810000, 0x3F800000, 0x7F800000], np.uint32)
    out = rounded(pattern, "bfloat16")
    assert np.array_equal(_bits(out)[:5], want)             # ties to even both ways, carry, overflow
    assert np.isnan(out[5])                                  # a NaN whose carry would make it inf
    assert rounded(pattern, None) is pattern


def test_rounding_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="bfloat16, float16"):
        rounded(np.ones(2, np.float32), "float8")
    with pytest.raises(TypeError, match="float32 arrays"):
        precision.round_in_place(np.ones(2), "bfloat16")


# ---------------------------------------------------------------- the layers' dtype argument
@pytest.mark.parametrize("dtype, half", [("bfloat16", "bfloat16"), ("float16", "float16"), (np.float16, "float16"),
                                         ("float32", None), ("float64", None)])
def test_dtype_names(dtype, half):
    m = gpurnn.LSTM(3, 4, backend="reference", dtype=dtype, seed=0)
    assert m.half == half
    assert m.params["weight_hh_l0"].dtype == (np.float64 if dtype == "float64" else np.float32)
    assert f"dtype='{half or np.dtype(dtype).name}'" in repr(m)


@pytest.mark.parametrize("spelling, array_dtype, half", [("f4", np.float32, None), ("double", np.float64, None),
                                                       ("half", np.float32, "float16"), ("<f4", np.float32, None)])
def test_dtype_numpy_spellings(spelling, array_dtype, half):
    m = gpurnn.RNN(3, 4, backend="reference", dtype=spelling)
    assert (m.dtype, m.half) == (np.dtype(array_dtype), half)


def test_dtype_torch_names_and_errors():
    torch = pytest.importorskip("torch")
    assert gpurnn.GRU(3, 4, backend="reference", dtype=torch.bfloat16).half == "bfloat16"
    assert gpurnn.GRU(3, 4, backend="reference", dtype=torch.float64).dtype == np.float64
    with pytest.raises(TypeError, match="bfloat16, float16"):
        gpurnn.RNN(3, 4, backend="reference", dtype="float8")
    with pytest.raises(ValueError, match="bfloat16, float16"):
        gpurnn.RNN(3, 4, backend="reference", dtype="int8")
    for half in ("float16", "bfloat16", np.float16, torch.bfloat16):
        with pytest.raises(ValueError, match="for the recurrent layers"):
            gpurnn.Linear(3, 4, backend="reference", dtype=half)


def test_half_layer_takes_torch_half_tensors():
    """bfloat16 tensors (which NumPy cannot hold) as inputs and as a state_dict: their values, exact."""
    torch = pytest.importorskip("torch")
    ref = torch.nn.LSTM(3, 4).bfloat16()
    m = gpurnn.LSTM(3, 4, backend="cpu", dtype="bfloat16")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    y, _ = m(x)
    np.testing.assert_array_equal(m(x.float().numpy())[0], y)
    assert np.array_equal(m.params["weight_hh_l0"], ref.weight_hh_l0.detach().float().numpy())


def test_half_layer_pickles_and_copies():
    m = gpurnn.LSTM(I, H, backend="cpu", dtype="bfloat16", seed=1)
    for other in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert other.half == "bfloat16"
        x = np.random.default_rng(0).standard_normal((T, B, I))
        np.testing.assert_array_equal(m(x)[0], other(x)[0])


# ---------------------------------------------------------------- half layers against exact math
def _layers(cell, backend, dtype, seed=3, **kw):
    cls, extra = LAYER_OF_CELL[cell]
    return cls(I, H, 2, bidirectional=True, backend=backend, dtype=dtype, seed=seed, **extra, **kw)


def _run(m, x, h0, dy, lengths):
    """Outputs and gradients of one forward and backward: every array, on the host, float64."""
    lstm = m.cell == "lstm"
    out = m(x, (h0, h0), lengths=lengths) if lstm else m(x, h0, lengths=lengths)
    y, state = out
    states = state if lstm else (state,)
    dstate = tuple(np.ones_like(s) for s in states)
    back = m.backward(dy, dstate) if lstm else m.backward(dy, dstate[0])
    dx, dh0 = back[0], back[1]
    arrays = {"y": y, **{f"state{k}": s for k, s in enumerate(states)}, "dx": dx,
              **{f"dstate0_{k}": d for k, d in enumerate(dh0 if lstm else (dh0,))}}
    arrays.update({f"grad {k}": g for k, g in m.grads.items()})
    return {k: np.asarray(m.backend.to_host(v), np.float64) for k, v in arrays.items()}


def _exact(cell, half, x, h0, dy, lengths):
    """The float64 reference on the half layer's rounded inputs and weights."""
    m = _layers(cell, "reference", "float64")
    m.load_state_dict({k: rounded(v.astype(np.float32), half) for k, v in
                       _layers(cell, "reference", "float32").state_dict().items()})
    r = [None if a is None else rounded(np.asarray(a, np.float32), half).astype(np.float64) for a in (x, h0, dy)]
    return _run(m, r[0], r[1], r[2], lengths)


def _distance(a, b):
    """max over arrays of ||a - b|| / ||b||."""
    return max(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(b[k]), 1e-30) for k in b)


def _inputs(lengths):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((4, B, H))).astype(np.float32)
    dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    return x, h0, dy, (None if not lengths else [T, 4, 1])


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("cell", LAYER_OF_CELL)
def test_half_layers_against_exact_math(cell, half, lengths):
    """reference and cpu, two layers, both directions: within BOUND u of float64 on the same
    rounded inputs, every result representable in the format, and the two backends agree
    to a tenth of that (the same rounding points; a float32 sum order may flip a rounding)."""
    x, h0, dy, lens = _inputs(lengths)
    exact = _exact(cell, half, x, h0, dy, lens)
    u = UNIT_ROUNDOFF[half]
    got = {}
    for backend in HOST_BACKENDS:
        got[backend] = _run(_layers(cell, backend, half), x, h0, dy, lens)
        d = _distance(got[backend], exact)
        assert d <= BOUND * u, f"{backend}: {d / u:.2f} u from the exact result"
        assert d >= 2.0 ** -20, f"{backend}: {d:.1e}: as close as float32, so nothing was rounded"
        for k, a in got[backend].items():
            if not k.startswith("grad"):                     # the weight gradients are float32
                assert np.array_equal(rounded(a.astype(np.float32), half), a), f"{k} is not {half}"
    assert _distance(got["cpu"], got["reference"]) <= 0.3 * u


@pytest.mark.parametrize("half", HALF)
def test_half_saved_states_are_rounded_where_stored(half):
    """What forward stores for the next step and for backward is the format's (the reference
    and cpu backends): hs, cs, gates of the LSTM; hs, gates, hn of the GRU."""
    x, h0, _, _ = _inputs(False)
    for backend in HOST_BACKENDS:
        for cell in ("lstm", "gru"):
            m = _layers(cell, backend, half)
            m(x, (h0, h0)) if cell == "lstm" else m(x, h0)
            for s in m._saved.saved:
                for name in ("hs", "cs", "gates", "hn"):
                    a = getattr(s, name)
                    if a is not None:
                        assert np.array_equal(rounded(a, half), a), f"{backend} {cell} {name}"


def test_half_weights_stay_float32_and_gradients_add():
    """Master weights: the parameters are untouched float32 values; gradients are float32 and
    accumulate over calls as in float32."""
    x, h0, dy, _ = _inputs(False)
    m = _layers("lstm", "cpu", "bfloat16")
    before = {k: v.copy() for k, v in m.params.items()}
    once = _run(m, x, h0, dy, None)
    _run(m, x, h0, dy, None)
    for k, v in m.params.items():
        assert v.dtype == np.float32 and np.array_equal(v, before[k])
        np.testing.assert_allclose(m.grads[k], 2 * once[f"grad {k}"], rtol=1e-6, atol=1e-6)
    assert not all(np.array_equal(rounded(g, "bfloat16"), g) for g in m.grads.values())


def test_half_dropout_output_is_rounded():
    """Dropout's scale 1/(1-p) makes a value the format cannot hold: the masked output is
    rounded before the next layer reads it (the last layer's input is stored in its Saved)."""
    x, h0, _, _ = _inputs(False)
    m = _layers("gru", "reference", "float16", dropout=0.3)
    m(x, h0)
    upper = m._saved.saved[2].x
    assert np.array_equal(rounded(upper, "float16"), upper)


@pytest.mark.parametrize("half", HALF)
def test_half_float16_range(half):
    """Beyond float16's range an input becomes inf, as a cast to float16 makes it; bfloat16 keeps it."""
    m = gpurnn.RNN(1, 1, backend="reference", dtype=half, seed=0)
    m.load_state_dict({"weight_ih_l0": np.ones((1, 1)), "weight_hh_l0": np.zeros((1, 1)),
                       "bias_ih_l0": np.zeros(1), "bias_hh_l0": np.zeros(1)})
    y, _ = m(np.full((1, 1, 1), 1e5), None)
    assert y[0, 0, 0] == 1.0          # tanh(inf) = tanh(1e5) = 1 either way
    y_saved = m._saved.saved[0].x
    assert np.isinf(y_saved).all() == (half == "float16")


@pytest.mark.parametrize("where", ["states", "outputs"])
def test_a_lost_rounding_is_caught(where, monkeypatch):
    """The checks above catch a backend that skips a rounding point: the cpu backend with its
    per-step state rounding (or its output rounding) removed fails both of them."""
    from gpurnn.kernels import cpu
    real = cpu.round_in_place
    calls = []

    def skipping(a, half):
        calls.append(a.shape)
        ndim = 2 if where == "states" else 3
        if a.ndim != ndim:
            real(a, half)

    monkeypatch.setattr(cpu, "round_in_place", skipping)
    x, h0, dy, _ = _inputs(False)
    got = _run(_layers("lstm", "cpu", "bfloat16"), x, h0, dy, None)
    assert calls
    ref = _run(_layers("lstm", "reference", "bfloat16"), x, h0, dy, None)
    u = UNIT_ROUNDOFF["bfloat16"]
    representable = all(np.array_equal(rounded(a.astype(np.float32), "bfloat16"), a)
                        for k, a in got.items() if not k.startswith("grad"))
    assert not representable
    assert _distance(got, ref) > 0.3 * u          # measured: about 1 u either way

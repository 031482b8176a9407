"""Every bad input raises ValueError (TypeError for types) naming the argument, the value and what was expected,
and leaves the model as it was."""

import numpy as np
import pytest

import gpurnn
from conftest import make_model
from gpurnn.kernels import cuda_simulated

HOST_BACKENDS = ["reference", "cpu"]


@pytest.fixture(params=HOST_BACKENDS)
def lstm(request):
    return make_model("lstm", 3, 4, num_layers=2, backend=request.param, seed=0)


@pytest.fixture
def x(rng):
    return rng.standard_normal((5, 2, 3))


def snapshot(m):
    return {k: np.array(v) for k, v in m.params.items()}, {k: np.array(v) for k, v in m.grads.items()}


def assert_unchanged(m, snap):
    params, grads = snap
    for k in params:
        assert np.array_equal(m.params[k], params[k]), k
        assert np.array_equal(m.grads[k], grads[k]), k


@pytest.mark.parametrize("bad,message", [
    (np.zeros((5, 2)), r"expected x of shape \(\?, \?, 3\), got \(5, 2\)"),
    (np.zeros((5, 2, 4)), r"expected x of shape \(\?, \?, 3\), got \(5, 2, 4\)"),
    (np.zeros((0, 2, 3)), r"at least one time step"),
    (np.zeros((5, 0, 3)), r"at least one time step and one batch row"),
])
def test_x_of_wrong_shape(lstm, bad, message):
    with pytest.raises(ValueError, match=message):
        lstm(bad)


@pytest.mark.parametrize("dtype", [np.int64, np.complex128, bool])
def test_x_of_wrong_dtype(lstm, dtype):
    with pytest.raises(TypeError, match="x must hold floating-point values"):
        lstm(np.zeros((5, 2, 3), dtype=dtype))


def test_x_of_wrong_type(lstm):
    with pytest.raises(TypeError, match="x must be an array of floats, got object"):
        lstm(object())


def test_x_a_torch_tensor_that_requires_grad(lstm, x):
    """torch will not export a tensor that requires grad (neither a CPU nor a CUDA one): the error
    says why and what to pass instead, and the model is left as it was."""
    torch = pytest.importorskip("torch")
    snap = snapshot(lstm)
    tx = torch.from_numpy(x).requires_grad_(True)
    with pytest.raises(TypeError, match=r"x is a torch tensor with requires_grad=True.*x\.detach\(\)"):
        lstm(tx)
    head = gpurnn.Linear(3, 2, backend=lstm.backend, seed=0)
    with pytest.raises(TypeError, match=r"x is a torch tensor with requires_grad=True"):
        head(tx)
    assert_unchanged(lstm, snap)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_x(lstm, x, value):
    x[2, 1, 0] = value
    with pytest.raises(ValueError, match=r"x contains 1 non-finite value"):
        lstm(x)


def test_float64_input_is_cast_to_the_model_dtype(x):
    m = make_model("gru", 3, 4, backend="cpu", dtype="float32")
    y, h = m(x)
    assert y.dtype == np.float32 and h.dtype == np.float32


@pytest.mark.parametrize("lengths,error,message", [
    ([5], ValueError, r"expected lengths of shape \(2,\) \(one per batch row\), got \(1,\)"),
    ([5, 0], ValueError, r"lengths must lie in 1..5 .* got min 0"),
    ([6, 5], ValueError, r"lengths must lie in 1..5 .* max 6"),
    ([2.5, 5], TypeError, r"lengths must be integers"),
])
def test_bad_lengths(lstm, x, lengths, error, message):
    with pytest.raises(error, match=message):
        lstm(x, lengths=np.array(lengths))


def test_bad_state(lstm, x):
    with pytest.raises(ValueError, match=r"expected h0 of shape \(2, 2, 4\), got \(1, 2, 4\)"):
        lstm(x, (np.zeros((1, 2, 4)), None))
    with pytest.raises(ValueError, match=r"expected c0 of shape \(2, 2, 4\), got \(2, 3, 4\)"):
        lstm(x, (None, np.zeros((2, 3, 4))))
    with pytest.raises(TypeError, match=r"state must be a pair \(h, c\)"):
        lstm(x, np.zeros((2, 2, 4)))
    gru = make_model("gru", 3, 4, backend="cpu")
    with pytest.raises(ValueError, match=r"expected h0 of shape \(1, 2, 4\), got \(2, 4\)"):
        gru(x, np.zeros((2, 4)))
    h0 = np.zeros((1, 2, 4))
    h0[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="h0 contains 1 non-finite"):
        gru(x, h0)


def test_backward_before_forward(lstm):
    with pytest.raises(ValueError, match=r"backward\(\) called before forward\(\)"):
        lstm.backward(np.zeros((5, 2, 4)))
    lin = gpurnn.Linear(2, 3)
    with pytest.raises(ValueError, match=r"backward\(\) called before forward\(\)"):
        lin.backward(np.zeros((1, 3)))


def test_bad_backward_arguments_change_nothing(lstm, x, rng):
    lstm(x)
    lstm.backward(rng.standard_normal((5, 2, 4)))
    snap = snapshot(lstm)
    with pytest.raises(ValueError, match=r"expected dy of shape \(5, 2, 4\), got \(5, 2, 8\)"):
        lstm.backward(np.zeros((5, 2, 8)))
    with pytest.raises(ValueError, match=r"expected dc_n of shape \(2, 2, 4\), got \(2, 2, 5\)"):
        lstm.backward(np.ones((5, 2, 4)), (None, np.zeros((2, 2, 5))))
    dy = np.ones((5, 2, 4))
    dy[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="dy contains 1 non-finite"):
        lstm.backward(dy)
    assert_unchanged(lstm, snap)


def test_load_state_dict_rejects_bad_entries_and_changes_nothing(lstm):
    good = lstm.state_dict()
    snap = snapshot(lstm)
    missing = dict(good)
    del missing["bias_hh_l1"]
    with pytest.raises(ValueError, match=r"missing entries \['bias_hh_l1'\]"):
        lstm.load_state_dict(missing)
    extra = dict(good, weight_ih_l2=np.zeros((16, 4)))
    with pytest.raises(ValueError, match=r"unexpected entries \['weight_ih_l2'\]"):
        lstm.load_state_dict(extra)
    bad_shape = {k: v + 1 for k, v in good.items()}
    bad_shape["weight_hh_l1"] = np.zeros((16, 5))
    with pytest.raises(ValueError, match=r"expected state_dict\['weight_hh_l1'\] of shape \(16, 4\), got \(16, 5\)"):
        lstm.load_state_dict(bad_shape)
    nan = {k: v + 1 for k, v in good.items()}
    nan["bias_ih_l0"][3] = np.nan
    with pytest.raises(ValueError, match=r"state_dict\['bias_ih_l0'\] contains 1 non-finite"):
        lstm.load_state_dict(nan)
    ints = {k: v.astype(np.int64) for k, v in good.items()}
    with pytest.raises(TypeError, match="floating-point"):
        lstm.load_state_dict(ints)
    assert_unchanged(lstm, snap)


def test_load_state_dict_copies(lstm):
    sd = lstm.state_dict()
    lstm.load_state_dict(sd)
    sd["weight_ih_l0"][...] = 7
    assert not np.any(lstm.params["weight_ih_l0"] == 7)


def test_non_finite_weights_are_reported_at_forward(lstm, x):
    lstm.params["weight_hh_l1"][0, 0] = np.inf
    with pytest.raises(ValueError, match="parameter weight_hh_l1 contains 1 non-finite"):
        lstm(x)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(backend="tpu"), ValueError, r"unknown backend 'tpu'; expected one of auto, reference, cpu, cuda"),
    (dict(dtype="int32"), ValueError, "dtype must be one of float32, float64, bfloat16, float16, got 'int32'"),
    (dict(dtype="bogus"), TypeError, "dtype 'bogus' is not a dtype; use one of float32, float64, bfloat16, float16"),
    (dict(dtype=object), ValueError, "dtype must be one of float32, float64, bfloat16, float16, got <class 'object'>"),
    (dict(num_layers=0), ValueError, "num_layers must be >= 1, got 0"),
    (dict(num_layers=1.5), TypeError, "num_layers must be an int, got float"),
    (dict(algo="fast"), ValueError, "unknown algo 'fast'; expected one of auto, persistent, step"),
    (dict(backend="cpu", algo="persistent"), ValueError,
     "algo='persistent' is an algorithm of the cuda backend; the 'cpu' backend has one algorithm: leave algo='auto'"),
])
def test_bad_constructor_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        gpurnn.LSTM(3, 4, **kwargs)


def test_bad_sizes_and_nonlinearity():
    with pytest.raises(ValueError, match="hidden_size must be >= 1, got 0"):
        gpurnn.GRU(3, 0)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        gpurnn.RNN(3, 4, nonlinearity="sigmoid")


@pytest.mark.skipif(cuda_simulated() or gpurnn.cuda_status()[0], reason="a CUDA backend is usable here")
def test_cuda_where_unusable_says_what_is_missing():
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not usable here: .+ Use backend='cpu'"):
        gpurnn.LSTM(3, 4, backend="cuda")
    assert gpurnn.LSTM(3, 4, backend="auto").backend.name == "cpu"


class FakeGpuArray:
    """Looks like a CuPy array to the checks: a dtype, a shape, a CUDA array interface."""
    dtype = np.dtype(np.float32)
    shape = (5, 2, 3)
    __cuda_array_interface__ = {"shape": (5, 2, 3), "typestr": "<f4", "data": (0, False), "version": 3}


@pytest.mark.skipif(cuda_simulated(), reason="the simulator treats device arrays as host arrays")
def test_gpu_array_on_a_cpu_model(lstm):
    with pytest.raises(ValueError, match="x is a GPU array but this model runs on the .* backend"):
        lstm(FakeGpuArray())


def test_bad_losses():
    with pytest.raises(ValueError, match=r"expected target of shape \(3, 1\) \(the shape of pred\), got \(3,\)"):
        gpurnn.mse_loss(np.zeros((3, 1)), np.zeros(3))
    with pytest.raises(TypeError, match="pred must be a floating-point array"):
        gpurnn.mse_loss(np.zeros(3, dtype=int), np.zeros(3))
    with pytest.raises(ValueError, match="pred contains 1 non-finite"):
        gpurnn.mse_loss(np.array([0.0, np.nan]), np.zeros(2))
    with pytest.raises(ValueError, match=r"targets must lie in 0..2, got min 0, max 3"):
        gpurnn.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="targets must be integer class indices"):
        gpurnn.cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"expected targets of shape \(2,\)"):
        gpurnn.cross_entropy(np.zeros((2, 3)), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="the mask selects no position"):
        gpurnn.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), mask=np.zeros(2))


def test_bad_optimiser_arguments():
    m = gpurnn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"lr must lie in \(0.0, inf\), got -0.1"):
        gpurnn.SGD(m, lr=-0.1)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        gpurnn.SGD(m, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\] must lie in \[0.0, 1.0\), got 1.0"):
        gpurnn.Adam(m, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="expected gpurnn modules"):
        gpurnn.Adam([m, "not a module"])
    with pytest.raises(ValueError, match=r"max_norm must lie in \(0.0, inf\), got 0.0"):
        gpurnn.clip_grad_norm(m, 0)

"""Losses against their formulas and finite differences; optimisers against their formulas and torch.optim."""

import numpy as np
import pytest

import gpurnn
from conftest import make_model
from conftest import numeric_grad as fd


def test_mse_is_the_mean_of_squared_errors(rng):
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss, grad = gpurnn.mse_loss(pred, target)
    assert loss == pytest.approx(np.mean((target - pred) ** 2), rel=1e-12)
    np.testing.assert_allclose(grad, fd(lambda: gpurnn.mse_loss(pred, target)[0], pred), rtol=1e-6, atol=1e-9)


def test_mse_mask_counts_only_kept_elements(rng):
    pred, target = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    mask = np.zeros((5, 2))
    mask[:3] = 1
    loss, grad = gpurnn.mse_loss(pred, target, mask=mask)
    assert loss == pytest.approx(np.mean((target[:3] - pred[:3]) ** 2), rel=1e-12)
    assert np.all(grad[3:] == 0)
    np.testing.assert_allclose(grad, fd(lambda: gpurnn.mse_loss(pred, target, mask)[0], pred), rtol=1e-6, atol=1e-9)


def test_cross_entropy_formula_and_gradient(rng):
    logits = rng.standard_normal((3, 4, 5))
    targets = rng.integers(0, 5, size=(3, 4))
    mask = (rng.uniform(size=(3, 4)) > 0.3).astype(float)
    mask[0, 0] = 1
    loss, grad = gpurnn.cross_entropy(logits, targets, mask=mask)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    nll = -np.log(np.take_along_axis(p, targets[..., None], -1)[..., 0])
    assert loss == pytest.approx((nll * mask).sum() / mask.sum(), rel=1e-12)
    np.testing.assert_allclose(grad, fd(lambda: gpurnn.cross_entropy(logits, targets, mask)[0], logits),
                               rtol=1e-6, atol=1e-9)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]])
    loss, grad = gpurnn.cross_entropy(logits, np.array([0]))
    assert loss == pytest.approx(0.0, abs=1e-12) and np.all(np.isfinite(grad))


def test_cross_entropy_matches_torch(rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((6, 7))
    targets = rng.integers(0, 7, size=6)
    t = torch.tensor(logits, requires_grad=True)
    want = torch.nn.functional.cross_entropy(t, torch.tensor(targets))
    want.backward()
    loss, grad = gpurnn.cross_entropy(logits, targets)
    assert loss == pytest.approx(want.item(), rel=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-14)


def _pair_of_models(seed=0):
    a = gpurnn.Linear(3, 2, backend="reference", dtype="float64", seed=seed)
    b = make_model("gru", 2, 3, backend="reference", seed=seed + 1)
    return [a, b]


def _set_grads(models, rng):
    for m in models:
        for g in m.grads.values():
            g[...] = rng.standard_normal(g.shape)


@pytest.mark.parametrize("kind,kw", [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
])
def test_optimisers_match_torch(kind, kw, rng):
    """Three steps with fresh random gradients: the same parameters as torch.optim, to 1e-12."""
    torch = pytest.importorskip("torch")
    models = _pair_of_models()
    tparams = [torch.tensor(p.copy(), requires_grad=True) for m in models for p in m.params.values()]
    opt = (gpurnn.SGD if kind == "sgd" else gpurnn.Adam)(models, **kw)
    topt = (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)(tparams, **kw)
    for _ in range(3):
        _set_grads(models, rng)
        for tp, g in zip(tparams, [g for m in models for g in m.grads.values()]):
            tp.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
    for tp, p in zip(tparams, [p for m in models for p in m.params.values()]):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_sgd_is_gradient_descent():
    m = gpurnn.Linear(2, 1, backend="reference", dtype="float64", seed=0)
    before = {k: v.copy() for k, v in m.params.items()}
    m.grads["weight"][...] = [[1.0, -2.0]]
    m.grads["bias"][...] = [0.5]
    gpurnn.SGD(m, lr=0.1).step()
    np.testing.assert_allclose(m.params["weight"], before["weight"] - 0.1 * np.array([[1.0, -2.0]]))
    np.testing.assert_allclose(m.params["bias"], before["bias"] - 0.05)


def test_optimiser_state_round_trips(rng):
    models = _pair_of_models()
    opt = gpurnn.Adam(models, lr=0.01)
    _set_grads(models, rng)
    opt.step()
    sd = opt.state_dict()
    models2 = _pair_of_models()
    for m, m2 in zip(models, models2):
        m2.load_state_dict(m.state_dict())
    opt2 = gpurnn.Adam(models2, lr=0.01)
    opt2.load_state_dict(sd)
    _set_grads(models, np.random.default_rng(5))
    _set_grads(models2, np.random.default_rng(5))
    opt.step()
    opt2.step()
    for m, m2 in zip(models, models2):
        for k in m.params:
            assert np.array_equal(m.params[k], m2.params[k])


def test_clip_grad_norm_scales_to_max_norm_and_returns_the_norm_before(rng):
    models = _pair_of_models()
    _set_grads(models, rng)
    flat = np.concatenate([g.ravel() for m in models for g in m.grads.values()])
    total = gpurnn.clip_grad_norm(models, max_norm=0.5)
    assert total == pytest.approx(np.linalg.norm(flat), rel=1e-12)
    after = np.concatenate([g.ravel() for m in models for g in m.grads.values()])
    assert np.linalg.norm(after) == pytest.approx(0.5, rel=1e-5)
    np.testing.assert_allclose(after / np.linalg.norm(after), flat / np.linalg.norm(flat), rtol=1e-10)
    assert gpurnn.clip_grad_norm(models, max_norm=10.0) == pytest.approx(0.5, rel=1e-5)   # no change below


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("max_norm", [0.5, 100.0, None])
def test_clipping_on_the_device_is_clip_grad_norm_to_the_bit(rng, dtype, max_norm):
    """The Trainer's clipping on the cuda backend (optim.clip_grad_norm_on_device: the scale chosen
    and applied without reading the norm) leaves the gradients and returns the norm that
    clip_grad_norm (or grad_norm) does, bit for bit; a NaN gradient scales nothing."""
    from gpurnn.optim import clip_grad_norm_on_device, grad_norm
    for bad in (False, True):
        pairs = []
        for _ in range(2):
            models = [gpurnn.Linear(3, 2, backend="cpu", dtype=dtype, seed=0),
                      make_model("gru", 2, 3, backend="cpu", dtype=dtype, seed=1)]
            _set_grads(models, np.random.default_rng(3))
            if bad:
                models[0].grads["weight"][0, 0] = np.nan
            pairs.append(models)
        want = grad_norm(pairs[0]) if max_norm is None else gpurnn.clip_grad_norm(pairs[0], max_norm)
        got = float(clip_grad_norm_on_device(pairs[1], max_norm))
        assert got == want or (bad and np.isnan(got) and np.isnan(want))
        for a, b in zip(pairs[0], pairs[1]):
            for k in a.grads:
                np.testing.assert_array_equal(a.grads[k], b.grads[k], err_msg=k)


def test_clip_grad_value_clamps(rng):
    m = _pair_of_models()[0]
    _set_grads([m], rng)
    gpurnn.clip_grad_value(m.grads, 0.3)
    assert all(np.abs(g).max() <= 0.3 for g in m.grads.values())


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_sgd_lowers_the_loss_on_a_small_problem(cell):
    """Regress the running mean of the input: SGD must cut the loss by 10x within 150 steps."""
    rng = np.random.default_rng(0)
    rnn = make_model(cell, 1, 8, backend="cpu", seed=0)
    head = gpurnn.Linear(8, 1, backend="cpu", dtype="float64", seed=1)
    opt = gpurnn.SGD([rnn, head], lr=0.2, momentum=0.9)
    x = rng.uniform(-1, 1, (6, 32, 1))
    target = x.mean(axis=0)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        out = rnn(x)
        y = out[0]
        loss, dpred = gpurnn.mse_loss(head(y[-1]), target)
        dy = np.zeros_like(y)
        dy[-1] = head.backward(dpred)
        rnn.backward(dy)
        opt.step()
        losses.append(loss)
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_gradients_accumulate_until_zero_grad(rng):
    m = make_model("lstm", 2, 3, backend="cpu", seed=0)
    x, dy = rng.standard_normal((4, 2, 2)), rng.standard_normal((4, 2, 3))
    m(x)
    m.backward(dy)
    once = {k: v.copy() for k, v in m.grads.items()}
    m(x)
    m.backward(dy)
    for k in once:
        np.testing.assert_allclose(m.grads[k], 2 * once[k], rtol=1e-12)
    grads_before = dict(m.grads)
    m.zero_grad()
    assert all(np.all(g == 0) for g in m.grads.values())
    assert all(m.grads[k] is grads_before[k] for k in m.grads)   # zeroed in place


def test_linear_matches_finite_differences(rng):
    lin = gpurnn.Linear(4, 3, backend="reference", dtype="float64", seed=0)
    x, dy = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 3))
    y = lin(x)
    np.testing.assert_allclose(y, x @ lin.params["weight"].T + lin.params["bias"], rtol=1e-12)
    dx = lin.backward(dy)

    def f():
        return float((lin(x) * dy).sum())

    np.testing.assert_allclose(dx, fd(f, x), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(lin.grads["weight"], fd(f, lin.params["weight"]), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(lin.grads["bias"], fd(f, lin.params["bias"]), rtol=1e-6, atol=1e-9)


def test_mse_with_fractional_weights_is_the_weighted_mean_and_its_gradient_agrees(rng):
    """Σ w·(p - t)² / Σ w, each term weighted once, in the loss and in its gradient."""
    assert gpurnn.mse_loss(np.array([1.0]), np.array([0.0]), mask=np.array([0.5])) == (1.0, np.array([2.0]))
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    w = rng.uniform(0, 2, (4, 3))
    w[0, 0] = 0
    loss, grad = gpurnn.mse_loss(pred, target, mask=w)
    assert loss == pytest.approx((w * (pred - target) ** 2).sum() / w.sum(), rel=1e-12)
    np.testing.assert_allclose(grad, fd(lambda: gpurnn.mse_loss(pred, target, w)[0], pred), rtol=1e-6, atol=1e-9)

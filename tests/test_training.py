"""The model and trainer: embedding gradient, truncated BPTT, learning, exact resume, non-finite stops."""

import math

import numpy as np
import pytest

import gpurnn
from gpurnn.checkpoint import load_checkpoint, save_checkpoint
from gpurnn.model import Embedding, NonFiniteError, SequenceModel, Trainer, make_model
from gpurnn.tasks import Adding, CharLM, Copy


def test_embedding_gradient_matches_finite_differences():
    emb = Embedding(5, 3, backend="cpu", dtype="float64", seed=0)
    ids = np.array([[0, 4], [4, 2], [0, 0]])
    dy = np.random.default_rng(0).standard_normal((3, 2, 3))
    emb(ids)
    emb.backward(dy)
    w = emb.params["weight"]
    num = np.zeros_like(w)
    for i in range(5):
        for j in range(3):
            old = w[i, j]
            w[i, j] = old + 1e-6
            up = float((emb(ids) * dy).sum())
            w[i, j] = old - 1e-6
            down = float((emb(ids) * dy).sum())
            w[i, j] = old
            num[i, j] = (up - down) / 2e-6
    np.testing.assert_allclose(emb.grads["weight"], num, rtol=1e-6, atol=1e-9)
    assert np.all(emb.grads["weight"][[1, 3]] == 0)   # ids never used get no gradient


def test_embedding_backward_checks_dy_like_linear():
    """dy goes through the same checks as every layer's backward: array type, shape, finiteness
    (and onto the backend's device, which a host dy on the cuda backend needs)."""
    emb = Embedding(5, 3, backend="cpu", dtype="float64", seed=0)
    with pytest.raises(ValueError, match="before forward"):
        emb.backward(np.ones((2, 2, 3)))
    emb(np.array([[0, 1], [4, 4]]))
    with pytest.raises(ValueError, match="dy"):
        emb.backward(np.ones((2, 2, 4)))
    with pytest.raises(ValueError, match="dy"):
        emb.backward(np.full((2, 2, 3), np.nan))
    emb.backward(np.ones((2, 2, 3), np.float32).tolist())        # any array-like of floats
    np.testing.assert_array_equal(emb.grads["weight"], [[1] * 3, [1] * 3, [0] * 3, [0] * 3, [2] * 3])


def test_model_state_dict_round_trip_and_shapes():
    m = SequenceModel("gru", 8, 3, vocab_size=6, embed_size=4, num_layers=2, backend="cpu", seed=0)
    out, h = m(np.zeros((5, 2), np.int64))
    assert out.shape == (5, 2, 3) and h.shape == (2, 2, 8)
    sd = m.state_dict()
    assert "input.weight" in sd and "rnn.weight_hh_l1" in sd and "head.bias" in sd
    other = SequenceModel("gru", 8, 3, vocab_size=6, embed_size=4, num_layers=2, backend="cpu", seed=1)
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        assert np.array_equal(v, sd[k])
    with pytest.raises(ValueError, match="unexpected entry 'decoder.w'"):
        other.load_state_dict(dict(sd, **{"decoder.w": np.zeros(1)}))


def test_trainer_rejects_a_model_that_does_not_fit_the_task():
    with pytest.raises(ValueError, match="does not fit task 'copy'"):
        Trainer(make_model(Adding(5), "rnn", 4, backend="cpu"), Copy(21), batch_size=2)


def _grads(model):
    return {f"{i}.{k}": v.copy() for i, m in enumerate(model.modules) for k, v in m.grads.items()}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_truncated_bptt_carries_the_state_and_cuts_the_gradient(cell):
    """With k = 4 on a length-12 adding sequence, only the last segment is scored: its gradient must
    equal that of a model trained on the last 4 steps alone, started from the state the first 8
    steps left behind."""
    task = Adding(12)
    model = make_model(task, cell, 6, backend="cpu", dtype="float64", seed=0)
    tr = Trainer(model, task, optimizer="sgd", lr=0.1, tbptt=4, batch_size=3, seed=5)
    batch = task.batch(np.random.default_rng(5), 3)

    model.zero_grad()
    loss, _ = tr._run(batch, train=True)
    truncated = _grads(model)

    model.zero_grad()
    _, state = model(batch.x[:8])
    out, _ = model(batch.x[8:], state)
    ref_loss, grad = gpurnn.mse_loss(out[-1], batch.target[-1])
    dout = np.zeros_like(out)
    dout[-1] = grad
    model.backward(dout)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for k, v in _grads(model).items():
        np.testing.assert_allclose(truncated[k], v, rtol=1e-10, atol=1e-14)

    full = Trainer(model, task, optimizer="sgd", lr=0.1, batch_size=3, seed=5)
    model.zero_grad()
    full_loss, _ = full._run(batch, train=True)
    assert full_loss == pytest.approx(loss, rel=1e-12)         # same forward, same loss
    assert not np.allclose(_grads(model)["0.weight_hh_l0"], truncated["0.weight_hh_l0"])


def test_segments_cover_the_sequence_and_split_the_loss_by_scored_steps():
    task = CharLM(10, text="abcdefghij" * 30)
    model = make_model(task, "rnn", 8, backend="cpu", dtype="float64", seed=0)
    batch = task.batch(np.random.default_rng(0), 2)
    full = Trainer(model, task, tbptt=None, batch_size=2)
    cut = Trainer(model, task, tbptt=3, batch_size=2)
    assert cut._segments(10) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert cut._run(batch, train=False)[0] == pytest.approx(full._run(batch, train=False)[0], rel=1e-12)


def test_training_beats_the_adding_baseline():
    task = Adding(6)
    model = make_model(task, "gru", 16, backend="cpu", seed=0)
    tr = Trainer(model, task, lr=1e-2, clip=1.0, batch_size=32, seed=0, eval_sequences=500)
    before, _ = tr.evaluate()
    for _ in range(150):
        tr.train_step()
    after, metric = tr.evaluate()
    assert before > 0.1 and after < 0.3 * task.baseline and metric == after


def _losses(tr, n):
    return [tr.train_step()[0] for _ in range(n)]


@pytest.mark.parametrize("cell, tbptt, optimizer", [("lstm", None, "adam"), ("gru", 3, "sgd")])
def test_interrupted_and_resumed_run_gives_the_same_losses_bit_for_bit(tmp_path, cell, tbptt, optimizer):
    def trainer():
        task = Adding(9)
        model = make_model(task, cell, 8, backend="cpu", seed=2)
        return Trainer(model, task, optimizer=optimizer, lr=0.05, clip=0.5, tbptt=tbptt, batch_size=4, seed=3)

    straight = _losses(trainer(), 10)
    first = trainer()
    part1 = _losses(first, 4)
    save_checkpoint(tmp_path / "ck.npz", first.state())
    del first
    second = trainer()
    second.load_state(load_checkpoint(tmp_path / "ck.npz"))
    part2 = _losses(second, 6)
    assert part1 + part2 == straight          # exact equality of Python floats


def test_non_finite_loss_stops_with_the_step_named_and_leaves_the_last_good_state():
    task = Adding(20)
    model = make_model(task, "rnn-relu", 16, backend="cpu", seed=0)
    tr = Trainer(model, task, optimizer="sgd", lr=1e6, clip=None, batch_size=8, seed=0)
    good = None
    with pytest.raises(NonFiniteError) as err:
        for _ in range(50):
            good = (tr.step, model.state_dict(), tr.rng.bit_generator.state)
            tr.train_step()
    e = err.value
    assert e.step == tr.step + 1 == good[0] + 1
    assert f"step {e.step}:" in str(e) and "--clip" in str(e) and "learning rate" in str(e)
    for k, v in model.state_dict().items():          # untouched by the failing step
        assert np.array_equal(v, good[1][k]) and np.isfinite(v).all()
    assert tr.rng.bit_generator.state == good[2]


def test_non_finite_step_undoes_an_update_that_overflowed(monkeypatch):
    task = Adding(5)
    model = make_model(task, "gru", 4, backend="cpu", seed=0)
    tr = Trainer(model, task, optimizer="sgd", lr=0.1, batch_size=4, seed=0)
    tr.train_step()
    before = model.state_dict()
    real_step = tr.opt.step

    def overflowing_step():
        real_step()
        model.head.params["bias"][0] = np.inf
    monkeypatch.setattr(tr.opt, "step", overflowing_step)
    with pytest.raises(NonFiniteError, match="step 2: the update made a weight non-finite"):
        tr.train_step()
    for k, v in model.state_dict().items():
        assert np.array_equal(v, before[k])
    assert tr.step == 1 and tr.opt.steps == 1


def test_copy_accuracy_is_the_fraction_of_recalled_symbols():
    task = Copy(7, copy_len=3)
    model = make_model(task, "lstm", 8, backend="cpu", seed=0)
    tr = Trainer(model, task, batch_size=4, eval_sequences=40)
    loss, acc = tr.evaluate()
    assert 0 <= acc <= 1 and abs(loss - math.log(task.output_size)) < 0.5


@pytest.mark.parametrize("cell, gates", [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_recurrent_scale_starts_each_gate_block_orthogonal_times_the_scale(cell, gates):
    H = 6
    m = make_model(Adding(5), cell, H, num_layers=2, recurrent_scale=1.5, backend="cpu", dtype="float64", seed=0)
    for layer in (0, 1):
        w = m.rnn.state_dict()[f"weight_hh_l{layer}"]
        assert w.shape == (gates * H, H)
        for g in range(gates):
            block = w[g * H:(g + 1) * H]
            np.testing.assert_allclose(block @ block.T, 1.5 ** 2 * np.eye(H), atol=1e-12)
    again = make_model(Adding(5), cell, H, num_layers=2, recurrent_scale=1.5, backend="cpu", dtype="float64", seed=0)
    assert all(np.array_equal(v, again.state_dict()[k]) for k, v in m.state_dict().items())

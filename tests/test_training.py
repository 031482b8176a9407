"""The model and trainer: embedding gradient, truncated BPTT, learning, exact resume, non-finite stops."""

import json
import math
import re
import signal

import numpy as np
import pytest

import gpurnn
from gpurnn.checkpoint import load_checkpoint, save_checkpoint
from gpurnn.model import Embedding, NonFiniteError, SequenceModel, Trainer, make_model
from gpurnn.tasks import Adding, CharLM, Copy

from conftest import interrupt_at


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
    assert f"step {e.step}:" in str(e) and "clip gradients" in str(e) and "learning rate" in str(e)
    assert "--" not in str(e)          # the library's words: the command line adds its flags
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


# ---------------------------------------------------------------- gpurnn.fit: the training run from Python
TINY = dict(task="adding", cell="gru", hidden=8, seq_len=6, steps=4, batch=4, eval_sequences=8, backend="cpu")


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_fit_writes_the_run_folder_and_returns_where_the_run_ended(tmp_path):
    said = []
    run = gpurnn.fit(tmp_path / "run", **TINY, log_every=2, progress=False, log=said.append)
    assert isinstance(run, gpurnn.RunResult)
    assert (run.folder, run.status, run.step, run.signal) == (str(tmp_path / "run"), "done", 4, None)
    assert run.exit_status == 0
    assert run.metric == "mse" and run.baseline == pytest.approx(1 / 6)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {k: cfg[k] for k in TINY} == TINY and cfg["lr"] == 0.01 and cfg["backend_used"] == "cpu"
    recs = _metrics(tmp_path / "run")
    assert [r["step"] for r in recs] == [2, 4]
    assert (run.eval_loss, run.eval_metric) == (recs[-1]["eval_loss"], recs[-1]["eval_metric"])
    assert load_checkpoint(run.checkpoint)["step"] == 4
    assert said[-1].startswith(f"step 4: held-out mse {run.eval_metric:.4f} (baseline (answering the mean) 0.1667")

    # the trained model comes back with load_model and scores what the run reported on the held-out set
    m = gpurnn.load_model(run.folder)
    held_out = Adding(6).eval_batches(0, 8, 500)
    x = np.concatenate([b.x for b in held_out], axis=1).transpose(1, 0, 2)          # (N, T, 2)
    y = np.concatenate([b.target[-1] for b in held_out])                             # (N, 1)
    assert np.mean((m.predict(x) - y) ** 2) == pytest.approx(run.eval_metric, rel=1e-5)


def test_fit_resumed_logs_what_a_run_that_never_stopped_logs(tmp_path):
    straight = gpurnn.fit(tmp_path / "straight", **dict(TINY, steps=8), log_every=1, progress=False, log=print)
    gpurnn.fit(tmp_path / "split", **TINY, log_every=1, progress=False, log=print)
    resumed = gpurnn.fit(resume=tmp_path / "split", steps=8, progress=False, log=print)
    assert (resumed.status, resumed.step, resumed.folder) == ("done", 8, str(tmp_path / "split"))
    assert resumed.eval_metric == straight.eval_metric
    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "split")
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in a] == [(r["step"], r["loss"], r["grad_norm"]) for r in b]

    elsewhere = gpurnn.fit(tmp_path / "more", resume=tmp_path / "split", steps=9, progress=False, log=print)
    assert elsewhere.step == 9 and [r["step"] for r in _metrics(tmp_path / "more")] == list(range(1, 10))

    with pytest.raises(gpurnn.AlreadyFinished, match=r"is at step 8, already finished \(steps=8\); give steps above 8"):
        gpurnn.fit(resume=tmp_path / "split", progress=False, log=print)
    with pytest.raises(gpurnn.ConfigError, match="already past that") as e:
        gpurnn.fit(resume=tmp_path / "split", steps=5, progress=False, log=print)
    assert e.value.key == "steps"
    with pytest.raises(gpurnn.ConfigError, match=r"hidden=16 differs from the resumed run's 8") as e:
        gpurnn.fit(resume=tmp_path / "split", steps=12, hidden=16, progress=False, log=print)
    assert e.value.key == "hidden"


@pytest.mark.parametrize("given, key, message", [
    (dict(hidden=0), "hidden", "hidden must be at least 1, got 0"),
    (dict(clip=-1.0), "clip", "clip must be >= 0 (0 turns it off), got -1.0"),
    (dict(cell="lstmm"), "cell", "cell must be one of rnn, rnn-relu, lstm, gru, got 'lstmm'"),
    (dict(hidden="8"), "hidden", "hidden must be a whole number, got '8'"),
    (dict(hiden=8), "hiden", "unknown config key 'hiden'"),
    (dict(validation=0.3), "validation", "validation applies to data FILE; leave it out"),
    (dict(target="load"), "target", "target applies to data FILE.csv (a time series); leave it out"),
])
def test_fit_refuses_a_bad_config_naming_the_key_before_writing_anything(tmp_path, given, key, message):
    with pytest.raises(gpurnn.ConfigError) as e:
        gpurnn.fit(tmp_path / "run", **dict(TINY, **given), progress=False)
    assert isinstance(e.value, ValueError) and e.value.key == key
    assert message in str(e.value) and "--" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_fit_will_not_overwrite_a_run_and_says_how_to_continue_it(tmp_path):
    gpurnn.fit(tmp_path / "run", **TINY, progress=False, log=print)
    taken = f"continue it with resume='{tmp_path / 'run'}', or choose another out"
    with pytest.raises(gpurnn.ConfigError, match=re.escape(taken)):
        gpurnn.fit(tmp_path / "run", **TINY, progress=False)


def test_fit_stopped_by_a_signal_or_a_non_finite_step_says_so_in_its_result(tmp_path, monkeypatch):
    interrupt_at(monkeypatch, 2, signal.SIGTERM)
    said = []
    run = gpurnn.fit(tmp_path / "run", **dict(TINY, steps=50), progress=False, log=said.append)
    assert (run.status, run.signal, run.step, run.eval_metric) == ("interrupted", "SIGTERM", 2, None)
    assert run.exit_status == 143
    assert load_checkpoint(run.checkpoint)["step"] == 2
    # advice a Python caller can follow, in Python's words
    assert said[-1].startswith("gpurnn.fit: interrupted (SIGTERM); step 2 saved in ")
    assert said[-1].endswith(f"Continue with: gpurnn.fit(resume='{tmp_path / 'run'}')")
    monkeypatch.undo()

    said = []
    run = gpurnn.fit(tmp_path / "diverged", task="adding", cell="rnn", hidden=16, seq_len=20, batch=8, init_scale=3.0,
                     optimizer="sgd", lr=1.0, clip=0.0, steps=100, backend="cpu", progress=False, log=said.append)
    assert (run.status, run.exit_status) == ("diverged", 1)
    assert "Start again with clip=1 or a lower lr" in said[-1]
    assert said[-1].endswith(f"continue it with: gpurnn.fit(resume='{tmp_path / 'diverged'}', clip=1)")
    assert "--" not in said[-1]
    assert _metrics(tmp_path / "diverged")[-1]["step"] == run.step + 1 == load_checkpoint(run.checkpoint)["step"] + 1


# ---------------------------------------------------------------- a model trained from Python, saved and loaded
def _trained_from_python(kind):
    if kind == "adding":
        task = Adding(7)
    elif kind == "charlm":
        task = CharLM(8, text="the cat sat on the mat. " * 20)
    else:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((60, 5, 3)) * [1.0, 4.0, 0.5] + [0.0, 10.0, -2.0]
        task = gpurnn.ArrayTask(x, 30.0 * x[:, :, :1].mean(axis=1) + 100.0, seed=0)
    model = make_model(task, "lstm", 8, embed_size=4 if kind != "charlm" else None, backend="cpu", seed=3)
    trainer = Trainer(model, task, lr=1e-2, clip=1.0, batch_size=4, seed=1)
    for _ in range(3):
        trainer.train_step()
    return trainer


def _outputs(model, x):
    """The model's outputs (N, T, O), float64, for x (N, T, ...) as the model reads it."""
    inputs = x.T if x.ndim == 2 else x.transpose(1, 0, 2)
    out, _ = model(np.ascontiguousarray(inputs))
    return np.asarray(out, np.float64).transpose(1, 0, 2)


@pytest.mark.parametrize("kind", ["adding", "charlm", "data"])
def test_a_model_saved_from_python_loads_and_predicts_what_it_predicted(tmp_path, kind):
    trainer = _trained_from_python(kind)
    gpurnn.save_checkpoint(tmp_path / "model.npz", trainer.state())       # as docs/training.md shows
    m = gpurnn.load_model(tmp_path / "model.npz")
    assert m.step == 3 and m.config["cell"] == "lstm" and m.config["task"] == trainer.task.name
    rng = np.random.default_rng(5)
    if kind == "charlm":
        ids = rng.integers(0, trainer.task.input_size, size=(6, 8))
        out = _outputs(trainer.model, ids)
        p = np.exp(out - out.max(axis=-1, keepdims=True))
        np.testing.assert_allclose(m.predict_proba(ids), p / p.sum(axis=-1, keepdims=True), rtol=1e-6, atol=0)
        np.testing.assert_array_equal(m.predict(ids), out.argmax(axis=-1))
        return
    x = rng.standard_normal((6, trainer.task.seq_len, trainer.task.input_size))
    if kind == "adding":
        expected = _outputs(trainer.model, x.astype(np.float32))[:, -1]
    else:                # your data: standardised as training was, the values back in the data's units
        task = trainer.task
        expected = _outputs(trainer.model, ((x - task.x_mean) / task.x_std).astype(np.float32))[:, -1]
        expected = expected * task.y_std + task.y_mean
    np.testing.assert_allclose(m.predict(x), expected, rtol=1e-6, atol=1e-6)
    # the file is also a checkpoint that continues the training
    again = _trained_from_python(kind)
    again.load_state(load_checkpoint(tmp_path / "model.npz"))
    assert again.train_step() == trainer.train_step()


def test_a_state_without_a_description_is_refused_with_what_to_do_instead(tmp_path):
    """A state saved without its model's description (a dict built by hand, or a file of an older
    version) cannot be rebuilt: the error says, in Python's terms, how to save one that can."""
    state = _trained_from_python("adding").state()
    del state["description"]
    gpurnn.save_checkpoint(tmp_path / "state.npz", state)
    with pytest.raises(gpurnn.CheckpointError) as e:
        gpurnn.load_model(tmp_path / "state.npz")
    assert "gpurnn.save_checkpoint(path, trainer.state())" in str(e.value) and "--" not in str(e.value)


def test_a_model_of_a_task_of_its_own_says_how_to_load_its_weights(tmp_path):
    trainer = _trained_from_python("adding")

    class Doubled(Adding):
        name = "doubled"
    trainer.task = Doubled(7)
    gpurnn.save_checkpoint(tmp_path / "own.npz", trainer.state())
    with pytest.raises(gpurnn.CheckpointError, match="a task of its own \\('doubled'\\).*load_state_dict"):
        gpurnn.load_model(tmp_path / "own.npz")

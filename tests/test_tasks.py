"""Tasks: the data each one generates, its determinism by seed, and its baseline."""

import math

import numpy as np
import pytest

from gpurnn.tasks import Adding, CharLM, Copy, make_task, stdlib_docstrings


def test_adding_batch_has_two_markers_one_per_half_and_their_sum_as_target():
    T, B = 20, 64
    x, target, mask = Adding(T).batch(np.random.default_rng(0), B)
    assert x.shape == (T, B, 2) and x.dtype == np.float32
    assert target.shape == (T, B, 1) and mask.shape == (T, B)
    values, markers = x[:, :, 0], x[:, :, 1]
    assert values.min() >= 0 and values.max() < 1
    assert np.array_equal(markers.sum(axis=0), np.full(B, 2.0))
    assert np.array_equal(markers[:T // 2].sum(axis=0), np.ones(B))
    np.testing.assert_allclose(target[-1, :, 0], (values * markers).sum(axis=0), rtol=1e-6)
    assert np.array_equal(mask[-1], np.ones(B)) and mask[:-1].sum() == 0
    assert np.all(target[:-1] == 0)


def test_adding_baseline_is_the_score_of_predicting_the_mean():
    task = Adding(10)
    _, target, _ = task.batch(np.random.default_rng(1), 20000)
    mse_of_mean = float(((target[-1, :, 0] - 1.0) ** 2).mean())
    assert abs(mse_of_mean - task.baseline) < 0.01
    assert abs(task.baseline - 1 / 6) < 1e-12


@pytest.mark.parametrize("task", [Adding(12), Copy(25, copy_len=5)])
def test_generated_batches_are_determined_by_the_seed(task):
    a = task.batch(np.random.default_rng(7), 8)
    b = task.batch(np.random.default_rng(7), 8)
    c = task.batch(np.random.default_rng(8), 8)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    assert not np.array_equal(a.x, c.x)


def test_copy_batch_asks_for_the_first_symbols_after_the_delimiter():
    T, n, B = 25, 5, 16
    task = Copy(T, copy_len=n)
    x, target, mask = task.batch(np.random.default_rng(0), B)
    assert x.shape == (T, B) and x.dtype.kind == "i"
    symbols = x[:n]
    assert symbols.min() >= 1 and symbols.max() <= task.n_symbols
    assert np.all(x[n:T - n - 1] == 0)                  # the blank gap
    assert np.all(x[T - n - 1] == task.n_symbols + 1)   # the delimiter
    assert np.all(x[T - n:] == 0)
    assert np.array_equal(target[T - n:], symbols)
    assert mask[T - n:].all() and mask[:T - n].sum() == 0
    assert task.baseline == pytest.approx(1 / 8) and task.baseline_loss == pytest.approx(math.log(8))


def test_copy_rejects_a_sequence_too_short_to_hold_the_symbols():
    with pytest.raises(ValueError, match="copy_len \\+ 1 = 21"):
        Copy(20, copy_len=10)


def test_charlm_reads_a_file_and_predicts_the_next_character(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    task = CharLM(16, text_path=str(path))
    assert task.chars == "".join(sorted(set(text)))
    x, target, mask = task.batch(np.random.default_rng(0), 4)
    assert x.shape == target.shape == mask.shape == (16, 4)
    assert np.array_equal(x[1:], target[:-1])            # the target is the input shifted by one
    for b in range(4):
        window = task.decode(x[:, b]) + task.decode(target[-1:, b])
        assert window in text
    assert task.decode(task.encode("lazy fox")) == "lazy fox"
    counts = np.array([text[:int(len(text) * 0.9)].count(c) for c in task.chars], float)
    p = counts[counts > 0] / counts.sum()
    assert task.baseline == pytest.approx(float(-(p * np.log2(p)).sum()))
    # the held-out windows come from the last tenth of the text only
    held = task.eval_batches(0, 6, 3)
    assert len(held) == 2 and all(b.x.shape == (16, 3) for b in held)
    assert np.isin(held[0].x, task.eval_data).all()


def test_charlm_rejects_a_text_shorter_than_a_window(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abc", encoding="utf-8")
    with pytest.raises(ValueError, match="too few") as e:
        CharLM(16, text_path=str(path))
    assert "shorter seq_len" in str(e.value) and "--" not in str(e.value)      # the argument's name


def test_a_charlm_run_on_a_short_text_names_the_flag(tmp_path, capsys):
    from gpurnn import cli
    path = tmp_path / "tiny.txt"
    path.write_text("abc", encoding="utf-8")
    assert cli.main(["train", "--task", "charlm", "--text", str(path), "--seq-len", "16", "--backend", "cpu",
                     "--no-progress", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpurnn train: the text has 3 characters: too few for --seq-len 16") and \
        err.rstrip().endswith("shorter --seq-len"), err


def test_default_corpus_is_standard_library_docstrings_the_same_on_every_call():
    a = stdlib_docstrings(("json", "textwrap"))
    assert a == stdlib_docstrings(("json", "textwrap"))
    import json
    assert json.__doc__.strip()[:40] in a
    full = stdlib_docstrings()
    assert len(full) > 100_000


def test_eval_batches_do_not_depend_on_training_draws():
    task = Adding(10)
    first = task.eval_batches(3, 10, 4)
    task.batch(np.random.default_rng(3), 50)
    again = task.eval_batches(3, 10, 4)
    assert [b.x.shape[1] for b in first] == [4, 4, 2]
    for u, v in zip(first, again):
        assert np.array_equal(u.x, v.x) and np.array_equal(u.target, v.target)


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task 'sort'"):
        make_task("sort", 10)

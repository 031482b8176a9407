"""Your own data in Python: ArrayTask's batches, split, scaling and baselines, the file readers,
and a trained model's predictions, each against a computation written out here independently."""

import numpy as np
import pytest

import gpurnn
from gpurnn.data import ArrayTask, DataError, split_indices
from gpurnn.datafiles import (csv_series, index_at, inputs_from_file, read_npz, series_inputs, series_windows,
                              task_from_file)
from gpurnn.predict import TrainedModel

N, T, I = 60, 7, 3

# (name, y maker): every shape y may take; x (N, T, I) is passed to the maker
KINDS = {
    "values-last": lambda x, rng: x[:, :, 0].sum(axis=1, keepdims=True) * 3.0 + 5.0,              # (N, 1)
    "values-last-2": lambda x, rng: np.stack([x[:, :, 0].sum(1), 10 * x[:, 0, 1]], axis=1),       # (N, 2)
    "values-1d": lambda x, rng: x[:, :, 2].mean(axis=1) * 100.0,                                  # (N,)
    "values-steps": lambda x, rng: np.cumsum(x[:, :, :2], axis=1) - 4.0,                          # (N, T, 2)
    "labels-last": lambda x, rng: (x[:, :, 1].sum(axis=1) > 0).astype(np.int64) + (x[:, 0, 0] > 1),  # (N,)
    "labels-steps": lambda x, rng: (x[:, :, 0] > 0).astype(np.int32) * 2,                         # (N, T), 3 classes
}


def data(kind, ragged, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, I)) * np.array([1.0, 2.0, 0.5]) + np.array([0.0, -3.0, 7.0])
    lengths = rng.integers(1, T + 1, N) if ragged else None
    return x, KINDS[kind](x, rng), lengths


def valid_of(lengths):
    return np.arange(T)[None, :] < (np.full(N, T) if lengths is None else lengths)[:, None]


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_batches_hold_the_rows_scaled_and_scored_where_the_targets_are(kind, ragged):
    x, y, lengths = data(kind, ragged)
    task = ArrayTask(x, y, lengths, validation=0.25, seed=3)
    rows = task.train_rows[[4, 0, 7]]
    batch = task.rows_batch(rows)
    L = np.full(N, T) if lengths is None else lengths
    valid = valid_of(lengths)
    # features: standardised by the training part's valid steps, zeros past each length
    steps = x[task.train_rows][valid[task.train_rows]]
    mean, std = steps.mean(axis=0), steps.std(axis=0)
    for j, n in enumerate(rows):
        want = np.where(valid[n][:, None], (x[n] - mean) / std, 0)
        np.testing.assert_allclose(batch.x[:, j], want, rtol=1e-5, atol=1e-5)
    # scored steps: the last valid one, or every valid one
    per_step = kind.endswith("steps")
    want_mask = valid[rows].T if per_step else (np.arange(T)[:, None] == L[rows][None, :] - 1)
    np.testing.assert_array_equal(batch.mask, want_mask.astype(np.float32))
    # targets where scored: the labels as given, or the values standardised by the training part
    if kind.startswith("labels"):
        assert batch.target.dtype == np.int64
        got = batch.target.T[want_mask.T]
        want = (y[rows] if per_step else np.repeat(y[rows][:, None], T, 1))[want_mask.T]
        np.testing.assert_array_equal(got, want)
    else:
        yy = y[:, None] if y.ndim == 1 else y
        tr = yy[task.train_rows][valid[task.train_rows]] if per_step else yy[task.train_rows]
        scaled = (yy - tr.mean(axis=0)) / tr.std(axis=0)
        got = batch.target.transpose(1, 0, 2)[want_mask.T]
        want = (scaled[rows] if per_step else np.repeat(scaled[rows][:, None], T, 1))[want_mask.T]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_baseline_is_the_naive_prediction_scored_on_the_held_out_part(kind):
    x, y, lengths = data(kind, ragged=True)
    task = ArrayTask(x, y, lengths, seed=1)
    per_step = kind.endswith("steps")
    L = lengths
    scored = valid_of(L) if per_step else None
    tr, ev = task.train_rows, task.eval_rows
    if kind.startswith("labels"):
        train_labels = y[tr][scored[tr]] if per_step else y[tr]
        common = np.bincount(train_labels).argmax()
        held = y[ev][scored[ev]] if per_step else y[ev]
        assert task.baseline == pytest.approx(np.mean(held == common), abs=1e-12)
    else:
        yy = y[:, None] if y.ndim == 1 else y
        train_values = yy[tr][scored[tr]] if per_step else yy[tr]
        held = yy[ev][scored[ev]] if per_step else yy[ev]
        assert task.baseline == pytest.approx(np.mean((held - train_values.mean(axis=0)) ** 2), rel=1e-12)


def test_a_given_naive_prediction_sets_the_baseline():
    x, y, _ = data("values-1d", False)
    task = ArrayTask(x, y, naive=np.zeros((N, 1)), naive_name="zero")
    assert task.baseline == pytest.approx(np.mean(y[task.eval_rows] ** 2)) and "baseline (zero)" in task.describe()
    with pytest.raises(ValueError, match=r"naive must have the shape of y as read, \(60, 1\), got \(60,\)"):
        ArrayTask(x, y, naive=np.zeros(N))


def test_the_split_is_fixed_by_the_seed_and_holds_every_row_once():
    a_train, a_eval = split_indices(100, 0.2, "random", seed=5)
    b_train, b_eval = split_indices(100, 0.2, "random", seed=5)
    c_train, c_eval = split_indices(100, 0.2, "random", seed=6)
    np.testing.assert_array_equal(a_eval, b_eval)
    assert not np.array_equal(a_eval, c_eval)
    assert len(a_eval) == 20 and sorted(np.concatenate([a_train, a_eval])) == list(range(100))
    train, held = split_indices(10, 0.3, "last")
    assert list(held) == [7, 8, 9] and list(train) == list(range(7))
    assert [len(p) for p in split_indices(2, 0.01)] == [1, 1]           # never an empty part
    with pytest.raises(ValueError, match="validation must be a fraction"):
        split_indices(10, 1.0)


def test_batches_are_drawn_from_the_training_part_by_the_generator():
    x, y, _ = data("values-last", False)
    task = ArrayTask(x, y, seed=0)
    mark = np.zeros_like(x)
    mark[:, 0, 0] = np.arange(N)              # row ids, to read back which rows a batch holds
    tagged = ArrayTask(mark + 0.0, y, seed=0, normalize=False)
    a = tagged.batch(np.random.default_rng(9), 16)
    b = tagged.batch(np.random.default_rng(9), 16)
    rows = a.x[0, :, 0].astype(int)
    np.testing.assert_array_equal(a.x, b.x)
    assert len(set(rows)) == 16 and set(rows) <= set(tagged.train_rows)
    big = tagged.batch(np.random.default_rng(9), 100)         # more than the training part: repeats
    assert set(big.x[0, :, 0].astype(int)) <= set(tagged.train_rows)
    assert task.eval_size == len(task.eval_rows) == 12
    assert sum(b.mask.shape[1] for b in task.eval_batches(0, 5, 5)) == 12


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_predictions_in_the_datas_units_score_what_evaluate_reports(kind, ragged):
    """The held-out metric (computed on the standardised scale, converted) equals the metric of the
    predictions (computed in the data's units, read out here), so scaling, readout and scoring agree."""
    x, y, lengths = data(kind, ragged)
    task = ArrayTask(x, y, lengths, seed=2)
    model = gpurnn.make_model(task, "gru", 8, backend="cpu", seed=0)
    trainer = gpurnn.Trainer(model, task, lr=1e-2, batch_size=8)
    for _ in range(5):
        trainer.train_step()
    _, metric = trainer.evaluate()
    ev = task.eval_rows
    pred = TrainedModel(model, task.config()).predict(x[ev], None if lengths is None else lengths[ev], batch_size=7)
    per_step = kind.endswith("steps")
    valid = valid_of(lengths)[ev]
    if kind.startswith("labels"):
        assert pred.dtype == np.int64
        if per_step:
            assert (pred[~valid] == -1).all()
            assert metric == pytest.approx(np.mean(pred[valid] == y[ev][valid]), abs=1e-12)
        else:
            assert metric == pytest.approx(np.mean(pred == y[ev]), abs=1e-12)
    else:
        yy = (y[:, None] if y.ndim == 1 else y)[ev]
        assert pred.shape == yy.shape
        err = ((pred - yy) ** 2)
        want = err[valid].mean() if per_step else err.mean()
        assert metric == pytest.approx(want, rel=2e-5)


def test_evaluation_weights_its_batches_by_their_scored_steps():
    """Over 500 held-out rows, evaluation runs in batches; with ragged per-step targets a batch's
    share of the mean is its scored steps, not its rows."""
    rng = np.random.default_rng(4)
    n = 1300
    x = rng.standard_normal((n, T, 2))
    y = (x[:, :, 0] > 0).astype(np.int64)
    lengths = np.where(np.arange(n) < 1000, 1, T)            # short rows in the first batch, long in the last
    task = ArrayTask(x, y, lengths, validation=0.5, holdout="last")
    model = gpurnn.make_model(task, "lstm", 4, backend="cpu", seed=1)
    trainer = gpurnn.Trainer(model, task, lr=1e-2, batch_size=8)
    trainer.train_step()
    _, metric = trainer.evaluate()
    ev = task.eval_rows
    pred = TrainedModel(model, task.config()).predict(x[ev], lengths[ev])
    valid = np.arange(T)[None, :] < lengths[ev][:, None]
    assert len(task.eval_batches(0, 0, 500)) == 2
    assert metric == pytest.approx(np.mean(pred[valid] == y[ev][valid]), abs=1e-12)


def test_values_past_a_length_are_never_read():
    x, y, lengths = data("labels-steps", ragged=True)
    padded_x, padded_y = x.copy(), y.copy()
    past = ~valid_of(lengths)
    padded_x[past] = np.nan
    padded_y[past] = -100
    a, b = ArrayTask(x, y, lengths), ArrayTask(padded_x, padded_y, lengths)
    for field in ("x_mean", "x_std", "x", "y"):
        np.testing.assert_array_equal(getattr(a, field)[~past] if field in ("x", "y") else getattr(a, field),
                                      getattr(b, field)[~past] if field in ("x", "y") else getattr(b, field))


@pytest.mark.parametrize("change, message", [
    (dict(x=np.zeros((N, T))), r"'x' must be \(N, T, I\).*x\[\.\.\., None\]"),
    (dict(x=np.zeros((1, T, I)), y=np.zeros(1)), "holds 1 sequence; training needs at least 2"),
    (dict(x=np.array([["a"] * I] * T * N).reshape(N, T, I)), "'x' must hold numbers"),
    (dict(y=np.zeros((N, T + 1), np.int64)), r"integer class labels.*\(N,\) = \(60,\).*\(N, T\) = \(60, 7\)"),
    (dict(y=np.zeros((N + 1, 1))), r"'y' holds values.*got shape \(61, 1\)"),
    (dict(y=np.array(["a"] * N)), "'y' must hold integer class labels or floating-point values"),
    (dict(y=np.arange(N) - 1), r"labels, which must lie in 0\.\.58, got -1 at index \(0,\)"),
    (dict(lengths=np.full(N, T + 1)), r"'lengths' must lie in 1\.\.T = 1\.\.7, got 8 at index 0 \(60 out of range\)"),
    (dict(lengths=np.full(N, 2.0)), r"'lengths' must be \(N,\) = \(60,\) integers"),
])
def test_bad_arrays_are_one_line_errors_naming_the_array(change, message):
    x, y, _ = data("values-last", False)
    kw = dict(dict(x=x, y=y, lengths=None), **change)
    with pytest.raises(DataError, match=message) as e:
        ArrayTask(kw["x"], kw["y"], kw["lengths"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("where", ["x", "y"])
def test_nan_in_the_data_is_named_with_its_index(where):
    x, y, _ = data("values-last", False)
    if where == "x":
        x[5, 2, 1] = np.inf
    else:
        y[5, 0] = np.nan
    index = "5, 2, 1" if where == "x" else "5, 0"
    with pytest.raises(DataError, match=rf"array '{where}' holds 1 NaN or infinite value\(s\) \(the first at index "
                                        rf"\({index}\)\)"):
        ArrayTask(x, y)


def test_labels_count_from_the_largest_unless_num_classes_is_given():
    x, y, _ = data("labels-last", False)
    assert ArrayTask(x, y).num_classes == y.max() + 1
    assert ArrayTask(x, y, num_classes=7).output_size == 7
    with pytest.raises(DataError, match="must lie in 0..1"):
        ArrayTask(x, y, num_classes=2) if y.max() >= 2 else ArrayTask(x, y + 1, num_classes=2)


# ---------------------------------------------------------------- files
def write_series(path, values, extra_columns=None):
    cols = {"date": [f"2020-01-{i:04d}" for i in range(len(values))], "load": values}
    cols.update(extra_columns or {})
    with open(path, "w") as f:
        f.write(",".join(cols) + "\n")
        for i in range(len(values)):
            f.write(",".join(str(c[i]) for c in cols.values()) + "\n")


def test_csv_windows_read_the_rows_before_the_target_horizon_rows_ahead(tmp_path):
    L, seq, h = 30, 5, 3
    load = np.arange(L) * 1.5
    temp = np.arange(L) ** 2 / 7.0
    path = tmp_path / "s.csv"
    write_series(path, load, {"temp": temp})
    s = csv_series(path, "load", seq, h)
    assert s["features"] == ["load", "temp"]                      # the date column is not a number
    n = L - seq + 1 - h
    assert s["x"].shape == (n, seq, 2)
    for k in (0, 7, n - 1):                                       # written out window by window
        np.testing.assert_array_equal(s["x"][k], np.stack([load[k:k + seq], temp[k:k + seq]], axis=1))
        assert s["y"][k, 0] == load[k + seq - 1 + h] and s["naive"][k, 0] == load[k + seq - 1]
    task = task_from_file(path, seq_len=seq, target="load", horizon=h, features=["temp"], validation=0.25)
    assert task.input_size == 1 and task.holdout == "last" and list(task.eval_rows) == list(range(n - 6, n))
    # the last value's baseline, by hand
    ev = task.eval_rows
    assert task.baseline == pytest.approx(np.mean((load[ev + seq - 1] - load[ev + seq - 1 + h]) ** 2))
    x, lengths = inputs_from_file(path, task.source)              # prediction: every window, even past the end
    assert lengths is None and x.shape == (L - seq + 1, seq, 1)
    np.testing.assert_array_equal(x[-1, :, 0], temp[-seq:])


def cli_name(key, value=None):
    """How the command line names a setting (what gpurnn.cli passes to Worded errors)."""
    flag = "--" + key.replace("_", "-")
    return flag if value is None else f"{flag} {value}"


def wavy(L, seed=0):
    """A trend, a cycle of 12 rows and noise: (load, temp) columns of a test series."""
    rng = np.random.default_rng(seed)
    t = np.arange(L)
    load = np.round(50 + 10 * np.sin(2 * np.pi * t / 12) + 0.4 * t + rng.standard_normal(L), 3)
    temp = np.round(20 + 5 * np.cos(2 * np.pi * t / 12) + rng.standard_normal(L), 3)
    return load, temp


def test_differenced_windows_are_the_changes_and_their_target_the_change_over_the_horizon(tmp_path):
    L, seq, h = 40, 5, 3
    load, temp = wavy(L)
    path = tmp_path / "s.csv"
    write_series(path, load, {"temp": temp})
    s = csv_series(path, "load", seq, h, difference=True)
    d = np.stack([load[1:] - load[:-1], temp[1:] - temp[:-1]], axis=1)      # d[k] = v[k + 1] - v[k]
    n = L - seq - h                                                         # one window fewer than without
    assert s["x"].shape == (n, seq, 2) and s["y"].shape == (n, 1)
    for m in (0, 11, n - 1):
        np.testing.assert_array_equal(s["x"][m], d[m:m + seq])              # level rows m .. m + seq
        r = m + seq                                                          # the level row it ends at
        assert s["rows"][m] == r and s["target_rows"][m] == r + h
        assert s["y"][m, 0] == load[r + h] - load[r]
    np.testing.assert_array_equal(s["naive"], np.zeros((n, 1)))              # the last value: no change
    # the last window ends where the undifferenced series' last window does
    plain = csv_series(path, "load", seq, h)
    assert s["rows"][-1] == plain["rows"][-1] == L - 1 - h
    np.testing.assert_array_equal(s["rows"], plain["rows"][1:])
    np.testing.assert_allclose(s["y"][:, 0] + load[s["rows"]], plain["y"][1:, 0], rtol=1e-12)


@pytest.mark.parametrize("L, held", [(60, 11), (59, 11)])   # 54 or 53 windows, one fewer differenced: at L = 59
def test_with_difference_the_naive_baseline_is_the_one_without_on_the_same_target_rows(tmp_path, L, held):
    seq, h = 5, 2                         # round(0.2 * 52) = 10, but the same 11 rows must be held out
    load, temp = wavy(L)
    path = tmp_path / "s.csv"
    write_series(path, load, {"temp": temp})
    plain = task_from_file(path, seq_len=seq, target="load", horizon=h)
    diff = task_from_file(path, seq_len=seq, target="load", horizon=h, difference=True)
    assert len(plain.eval_rows) == len(diff.eval_rows) == held
    # the held-out windows end at the same level rows (a differenced window m is the plain window m + 1)...
    r = diff.eval_rows + seq
    np.testing.assert_array_equal(r, plain.eval_rows + seq - 1)
    # ...so the last value's baseline, in level units, is the same number, and this one by hand
    assert diff.baseline == plain.baseline == np.mean((load[r + h] - load[r]) ** 2)
    assert diff.source["difference"] is True and "difference" not in plain.source
    assert "first differences" in diff.describe() and "baseline (the last value)" in diff.describe()
    with pytest.raises(DataError, match="difference applies to a CSV series"):
        np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 1)), y=np.zeros(4))
        task_from_file(tmp_path / "d.npz", difference=True)


@pytest.mark.parametrize("difference", [False, True], ids=["levels", "differences"])
@pytest.mark.parametrize("season, h, lag", [(12, 1, 12), (12, 3, 12), (4, 6, 8)])
def test_the_seasonal_baseline_scores_the_value_a_whole_season_before_each_held_out_target(
        tmp_path, difference, season, h, lag):
    L, seq = 80, 6
    load, temp = wavy(L)
    path = tmp_path / "s.csv"
    write_series(path, load, {"temp": temp})
    task = task_from_file(path, seq_len=seq, target="load", horizon=h, difference=difference, season=season)
    t = task.eval_rows + seq - (0 if difference else 1) + h                 # the held-out target rows
    assert t[-1] == L - 1
    (naive_name, naive), (name, seasonal) = task.baselines
    assert (naive_name, naive) == (task.naive_name, task.baseline) == ("the last value", task.baseline)
    assert name == (f"the value a season ({lag} rows) earlier" if lag == season else
                    f"the value {lag // season} seasons ({lag} rows) earlier")
    # scored on levels, with and without differences (the change's offset cancels up to rounding)
    assert seasonal == pytest.approx(np.mean((load[t - lag] - load[t]) ** 2), rel=1e-12)
    assert naive == pytest.approx(np.mean((load[t - h] - load[t]) ** 2), rel=1e-12)
    assert task.source["season"] == season
    assert f"baseline ({name}) mse {seasonal:.4g}" in task.describe()
    assert task.config()["baselines"] == [[naive_name, naive], [name, seasonal]]


def test_a_season_longer_than_the_held_out_targets_reach_back_is_a_one_line_error(tmp_path):
    L, seq, h = 40, 5, 1
    load, temp = wavy(L)
    path = tmp_path / "s.csv"
    write_series(path, load, {"temp": temp})
    # 35 windows, 7 held out: the first held-out target is row 33, so a season of 33 rows still fits
    assert task_from_file(path, seq_len=seq, target="load", horizon=h, season=33).baselines[1][1] >= 0
    with pytest.raises(DataError) as e:
        task_from_file(path, seq_len=seq, target="load", horizon=h, season=34)
    said = e.value.worded(cli_name)
    assert "--season 34 forecasts each target by the value 34 rows before it" in said
    assert "first held-out target, row 33, has only 33 rows before it" in said and "lower --validation" in said
    assert "\n" not in said and e.value.key == "season"
    with pytest.raises(DataError, match="season must be a whole number"):
        task_from_file(path, seq_len=seq, target="load", season=0)


def test_a_differenced_series_needs_one_row_more(tmp_path):
    load, temp = wavy(8)
    path = tmp_path / "s.csv"
    write_series(path, load, {"temp": temp})
    assert len(csv_series(path, "load", 5, 1)["x"]) == 3
    assert len(csv_series(path, "load", 5, 1, difference=True)["x"]) == 2
    with pytest.raises(DataError) as e:
        csv_series(path, "load", 6, 1, difference=True)
    assert ("8 rows are too few for --seq-len 6 and --horizon 1: two windows (one to train on, one to hold out) "
            "need at least seq_len + horizon + 2 = 9 (with --difference") in e.value.worded(cli_name)


def test_prediction_inputs_of_a_differenced_series_and_the_levels_they_end_at(tmp_path):
    L, seq, h = 30, 4, 2
    load, temp = wavy(L)
    path = tmp_path / "s.csv"
    write_series(path, load, {"temp": temp})
    source = task_from_file(path, seq_len=seq, target="load", horizon=h, features=["temp"], difference=True).source
    s = series_inputs(path, source, index=True)
    assert s["x"].shape == (L - seq, seq, 1)                                 # every window, to the file's end
    np.testing.assert_array_equal(s["rows"], np.arange(seq, L))
    for k in (0, L - seq - 1):
        r = s["rows"][k]
        np.testing.assert_array_equal(s["x"][k, :, 0], np.diff(temp[r - seq:r + 1]))
    np.testing.assert_array_equal(s["last"], load[seq:])                    # the target's level at each row
    np.testing.assert_array_equal(s["target"], load)
    assert list(s["index"]) == ["date"] and s["index"]["date"][3] == "2020-01-0003"
    np.testing.assert_array_equal(inputs_from_file(path, source)[0], s["x"])
    with open(tmp_path / "no_target.csv", "w") as f:                         # the changes need the last level
        f.write("temp\n" + "\n".join(map(str, temp)) + "\n")
    with pytest.raises(DataError, match="no column 'load': this model forecasts the change of 'load'"):
        series_inputs(tmp_path / "no_target.csv", source)


@pytest.mark.parametrize("values, rows, want", [
    (["1700", "1701", "1702"], [1, 2, 3, 5], ["1701", "1702", "1703", "1705"]),
    (["0.5", "1.0", "1.5"], [2, 3, 4], ["1.5", "2.0", "2.5"]),
    (["2020-01-01", "2020-01-08", "2020-01-15"], [3, 4], ["2020-01-22", "2020-01-29"]),
    (["1958-03", "1958-04", "1958-05"], [3, 13], ["1958-06", "1959-04"]),
    (["2020-01-15", "2020-02-15", "2020-03-15"], [3, 4], ["2020-04-15", "2020-05-15"]),
    (["2020-01-01 00:00", "2020-01-01 06:00", "2020-01-01 12:00"], [3], ["2020-01-01 18:00"]),
    (["1", "2", "4"], [2, 3], ["4", ""]),                                  # not evenly spaced: not extrapolated
    (["day0", "day1", "day2"], [0, 3], ["day0", ""]),
    (["2020-01-31", "2020-02-29", "2020-03-31"], [3], [""]),
])
def test_an_index_column_past_the_end_of_the_file(values, rows, want):
    assert index_at(values, np.array(rows)) == want


def test_series_windows_of_a_short_series():
    s = np.arange(12.0).reshape(6, 2)
    np.testing.assert_array_equal(series_windows(s, 6), s[None])
    assert series_windows(s, 2, horizon=1).shape == (4, 2, 2)


def test_a_npz_without_y_is_enough_to_predict_on(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 4, 2)))
    assert read_npz(tmp_path / "x.npz", need_y=False)["y"] is None
    with pytest.raises(DataError, match="array 'y' is missing"):
        read_npz(tmp_path / "x.npz")


# ---------------------------------------------------------------- load_model
def test_load_model_of_a_builtin_run_predicts_what_the_model_outputs(tmp_path):
    from conftest import train_tiny
    assert train_tiny(tmp_path / "run", "--steps", "3") == 0
    m = gpurnn.load_model(tmp_path / "run", backend="cpu")
    task = gpurnn.make_task("adding", 10)
    batch = task.batch(np.random.default_rng(0), 5)
    out, _ = m.model(batch.x)
    np.testing.assert_array_equal(m.predict(batch.x.transpose(1, 0, 2)), out[-1])
    with pytest.raises(ValueError, match="predict_proba is for classification"):
        m.predict_proba(batch.x.transpose(1, 0, 2))


def test_load_model_of_a_language_model_predicts_the_next_token_at_every_step(tmp_path):
    from conftest import train_charlm
    assert train_charlm(tmp_path / "t.txt", tmp_path / "lm", 3) == 0
    m = gpurnn.load_model(tmp_path / "lm", backend="cpu")
    ids = np.random.default_rng(0).integers(0, m.model.input_size, (3, 6))
    out, _ = m.model(ids.T)
    np.testing.assert_array_equal(m.predict(ids), out.argmax(axis=-1).T)
    p = m.predict_proba(ids)
    assert p.shape == (3, 6, m.model.output_size)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"token ids must lie in 0\.\."):
        m.predict(ids + 100)


def test_load_model_refuses_a_checkpoint_whose_data_description_does_not_fit(tmp_path):
    x, y, _ = data("values-last", False)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    from gpurnn import cli
    from gpurnn.checkpoint import load_checkpoint, save_checkpoint
    assert cli.main(["train", "--data", str(tmp_path / "d.npz"), "--hidden", "4", "--steps", "2", "--backend", "cpu",
                     "--no-progress", "--out", str(tmp_path / "run")]) == 0
    path = tmp_path / "run" / "checkpoint.npz"
    ckpt = load_checkpoint(path)
    assert gpurnn.load_model(path).predict(x).shape == (N, 1)
    for field, value, message in [("x_std", [1.0, 0.0, 1.0], "'task.x_std' must be positive"),
                                  ("x_mean", [0.0], "'task.x_mean' must be a list of 3 finite numbers"),
                                  ("kind", "ranking", "'task.kind' must be 'regression' or 'classification'")]:
        extra = dict(ckpt["extra"], task=dict(ckpt["extra"]["task"], **{field: value}))
        save_checkpoint(path, ckpt, ckpt["config"], extra)
        with pytest.raises(gpurnn.CheckpointError, match=message):
            gpurnn.load_model(path)

"""Predictions written to a file that says which input row each belongs to (write_predictions), a
model of first differences predicting levels, and load_model's best or last state: each checked
against the data file read here with nothing but str.split and NumPy indexing."""

import csv
import os
import shutil

import numpy as np
import pytest

import gpurnn
from gpurnn.checkpoint import load_checkpoint, save_checkpoint
from gpurnn.predict import write_predictions

L, SEQ, H, SEASON = 70, 6, 3, 12
TINY = dict(steps=20, hidden=4, batch=16, eval_every=10, progress=False, backend="cpu", log=lambda line: None)


def weekly_csv(path, L=L, seed=0):
    """A weekly series (ISO dates, 7 days apart) with a yearly-ish cycle of 12 rows: date, load, temp."""
    rng = np.random.default_rng(seed)
    t = np.arange(L)
    load = np.round(50 + 10 * np.sin(2 * np.pi * t / 12) + 0.4 * t + rng.standard_normal(L), 3)
    temp = np.round(20 + 5 * np.cos(2 * np.pi * t / 12) + rng.standard_normal(L), 3)
    dates = np.datetime64("2021-01-04") + 7 * t
    with open(path, "w") as f:
        f.write("date,load,temp\n")
        for i in range(L):
            f.write(f"{dates[i]},{load[i]},{temp[i]}\n")


def column(path, name, kind=float):
    """A column of a CSV, read with str.split (no quoting in these files)."""
    lines = open(path).read().splitlines()
    j = lines[0].split(",").index(name)
    return np.array([kind(line.split(",")[j]) for line in lines[1:]])


def read_table(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def differenced(tmp_path_factory):
    """A run trained on the first differences of a weekly series, with a seasonal baseline."""
    folder = tmp_path_factory.mktemp("diff")
    data = folder / "s.csv"
    weekly_csv(data)
    gpurnn.fit(folder / "run", data=str(data), target="load", seq_len=SEQ, horizon=H, difference=True,
               season=SEASON, **TINY)
    return folder / "run", data


def test_a_model_of_differences_predicts_the_last_level_plus_the_predicted_change(differenced):
    run, data = differenced
    m = gpurnn.load_model(run)
    assert m.task["source"]["difference"] is True and m.task["source"]["season"] == SEASON
    load, temp = column(data, "load"), column(data, "temp")
    # every window of differences, to the end of the file: window k spans level rows k .. k + SEQ
    d = np.stack([np.diff(load), np.diff(temp)], axis=1)
    windows = np.stack([d[k:k + SEQ] for k in range(L - SEQ)])
    change = m.predict(windows)                                              # what the model learnt: changes
    levels = m.predict_file(data)
    assert levels.shape == (L - SEQ, 1)
    np.testing.assert_array_equal(levels, load[SEQ:, None] + change)         # window k ends at level row k + SEQ
    np.testing.assert_array_equal(m.read_inputs(data)[0], windows)


def test_a_csv_of_forecasts_names_the_row_and_date_each_is_made_at_and_for(differenced, tmp_path):
    run, data = differenced
    m = gpurnn.load_model(run)
    said = write_predictions(m, data, tmp_path / "p.csv")
    assert said == f"{L - SEQ} forecasts of load ({H} rows ahead)"
    names, rows = read_table(tmp_path / "p.csv")
    assert names == ["row", "date", "target_row", "target_date", "actual", "prediction"]
    dates, load = column(data, "date", str), column(data, "load")
    levels = m.predict_file(data)[:, 0]
    assert len(rows) == L - SEQ
    for k, (row, date, target_row, target_date, actual, prediction) in enumerate(rows):
        r, t = int(row), int(target_row)
        assert r == SEQ + k and t == r + H
        assert date == dates[r]
        assert float(prediction) == levels[k]                                # written exactly
        if t < L:
            assert target_date == dates[t] and float(actual) == load[t]
        else:                                                                # past the end: weeks on, no actual
            assert actual == ""
            assert np.datetime64(target_date) == np.datetime64(dates[-1]) + 7 * (t - (L - 1))
    assert [int(r[2]) for r in rows[-H:]] == list(range(L, L + H))


def test_a_npz_of_forecasts_holds_the_same_as_named_arrays_without_pickles(differenced, tmp_path):
    run, data = differenced
    m = gpurnn.load_model(run)
    write_predictions(m, data, tmp_path / "p.csv")
    write_predictions(m, data, tmp_path / "p.npz")
    names, rows = read_table(tmp_path / "p.csv")
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(names)
        np.testing.assert_array_equal(z["prediction"], m.predict_file(data))
        np.testing.assert_array_equal(z["row"], [int(r[0]) for r in rows])
        np.testing.assert_array_equal(z["target_row"], z["row"] + H)
        assert z["date"].dtype.kind == "U" and list(z["target_date"]) == [r[3] for r in rows]
        actual = z["actual"]
        inside = z["target_row"] < L
        np.testing.assert_array_equal(actual[inside], column(data, "load")[z["target_row"][inside]])
        assert np.isnan(actual[~inside]).all() and (~inside).sum() == H
    assert write_predictions(m, data, tmp_path / "p.npy") == f"{L - SEQ} forecasts of load ({H} rows ahead)"
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), m.predict_file(data))


def test_index_columns_named_as_numpy_savez_arguments_are_arrays_like_any_other(tmp_path):
    with open(tmp_path / "s.csv", "w") as f:
        f.write("file,allow_pickle,load\n")
        for i in range(30):
            f.write(f"day {i},w{i % 7},{np.sin(i / 3):.4f}\n")
    gpurnn.fit(tmp_path / "run", data=str(tmp_path / "s.csv"), target="load", seq_len=4, **TINY)
    write_predictions(gpurnn.load_model(tmp_path / "run"), tmp_path / "s.csv", tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:
        assert {"file", "allow_pickle", "target_file", "target_allow_pickle"} <= set(z.files)
        assert list(z["file"][:2]) == ["day 3", "day 4"] and z["allow_pickle"][0] == "w3"


def test_a_numeric_first_column_that_is_not_a_feature_is_the_index(tmp_path):
    """YEAR beside --features SUNACTIVITY: the years say which row is which, and go on past the end;
    another numeric column that is not a feature is no index."""
    n = 40
    rng = np.random.default_rng(3)
    spots = np.round(80 + 60 * np.sin(2 * np.pi * np.arange(n) / 11) + rng.standard_normal(n), 1)
    with open(tmp_path / "sun.csv", "w") as f:
        f.write("YEAR,SUNACTIVITY,other\n")
        for i in range(n):
            f.write(f"{1700 + i},{spots[i]},{i % 3}\n")
    gpurnn.fit(tmp_path / "run", data=str(tmp_path / "sun.csv"), target="SUNACTIVITY", features="SUNACTIVITY",
               seq_len=5, horizon=2, **TINY)
    m = gpurnn.load_model(tmp_path / "run")
    write_predictions(m, tmp_path / "sun.csv", tmp_path / "p.csv")
    names, rows = read_table(tmp_path / "p.csv")
    assert names == ["row", "YEAR", "target_row", "target_YEAR", "actual", "prediction"]
    for row, year, target_row, target_year, actual, _ in rows:
        assert int(year) == 1700 + int(row) and int(target_year) == 1700 + int(target_row)
        assert actual == ("" if int(target_row) >= n else repr(float(spots[int(target_row)])))
    assert rows[0][0] == "4" and rows[-1][3] == str(1700 + n - 1 + 2)       # windows end at rows 4 .. 39
    np.testing.assert_array_equal([float(r[5]) for r in rows], m.predict_file(tmp_path / "sun.csv")[:, 0])


def test_predictions_on_arrays_say_the_sequence_and_label_or_values(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 5, 2))
    np.savez(tmp_path / "two.npz", x=x, y=np.stack([x[:, :, 0].sum(1), 3 * x[:, -1, 1]], axis=1))
    np.savez(tmp_path / "cls.npz", x=x, y=(x[:, :, 0].sum(1) > 0).astype(np.int64) + (x[:, 0, 1] > 1))
    gpurnn.fit(tmp_path / "two", data=str(tmp_path / "two.npz"), **TINY)
    gpurnn.fit(tmp_path / "cls", data=str(tmp_path / "cls.npz"), **TINY)
    two, cls = gpurnn.load_model(tmp_path / "two"), gpurnn.load_model(tmp_path / "cls")

    assert write_predictions(two, tmp_path / "two.npz", tmp_path / "two.csv") == "30 predictions (values)"
    names, rows = read_table(tmp_path / "two.csv")
    assert names == ["row", "prediction_0", "prediction_1"]
    np.testing.assert_array_equal(np.array(rows, float), np.column_stack([np.arange(30), two.predict(x)]))

    said = write_predictions(cls, tmp_path / "cls.npz", tmp_path / "cls.csv", proba=True)
    assert said == "30 predictions (class labels and probabilities)"
    names, rows = read_table(tmp_path / "cls.csv")
    C = cls.model.output_size
    assert names == ["row", "label"] + [f"p_{c}" for c in range(C)]
    np.testing.assert_array_equal([int(r[1]) for r in rows], cls.predict(x))
    np.testing.assert_array_equal(np.array([r[2:] for r in rows], float), cls.predict_proba(x))
    write_predictions(cls, tmp_path / "cls.npz", tmp_path / "cls_out.npz", proba=True)
    with np.load(tmp_path / "cls_out.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["prediction", "proba", "row"]
        np.testing.assert_array_equal(z["prediction"], cls.predict(x))
        np.testing.assert_array_equal(z["proba"], cls.predict_proba(x))
    assert write_predictions(cls, tmp_path / "cls.npz", tmp_path / "labels.npy") == "30 predictions (class labels)"
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), cls.predict(x))


def test_predictions_at_every_step_go_to_a_npz_not_a_csv(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 4, 2))
    np.savez(tmp_path / "d.npz", x=x, y=np.cumsum(x, axis=1))
    gpurnn.fit(tmp_path / "run", data=str(tmp_path / "d.npz"), **TINY)
    m = gpurnn.load_model(tmp_path / "run")
    with pytest.raises(ValueError, match="predicts at every step, .* write a .npz"):
        write_predictions(m, tmp_path / "d.npz", tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()
    assert write_predictions(m, tmp_path / "d.npz", tmp_path / "p.npz") == "20 predictions (values at every step)"
    with np.load(tmp_path / "p.npz") as z:
        np.testing.assert_array_equal(z["prediction"], m.predict(x))
        np.testing.assert_array_equal(z["row"], np.arange(20))
    with pytest.raises(ValueError, match=r"predictions are written as .csv, .npz, .npy"):
        write_predictions(m, tmp_path / "d.npz", tmp_path / "p.txt")


def test_a_failed_write_leaves_nothing(differenced, tmp_path, monkeypatch):
    run, data = differenced
    m = gpurnn.load_model(run)
    import gpurnn.predict as predict

    def broken(v):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(predict, "_cells", broken)
    with pytest.raises(OSError, match="cannot be written"):
        write_predictions(m, data, tmp_path / "p.csv")
    assert os.listdir(tmp_path) == []
    (tmp_path / "p.csv").write_text("old\n")                                  # a file there is kept whole
    with pytest.raises(OSError):
        write_predictions(m, data, tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text() == "old\n" and os.listdir(tmp_path) == ["p.csv"]


def test_the_file_to_predict_on_must_hold_the_target_of_a_model_of_differences(differenced, tmp_path):
    run, data = differenced
    with open(tmp_path / "x.csv", "w") as f:
        f.write("temp,load2\n" + "".join(f"{i},{i}\n" for i in range(20)))
    m = gpurnn.load_model(run)
    with pytest.raises(gpurnn.DataError, match=r"x.csv: no column 'load': this model forecasts the change"):
        write_predictions(m, tmp_path / "x.csv", tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()


# ---------------------------------------------------------------- load_model: best or last
def test_load_model_loads_the_best_state_of_a_run_folder_unless_told_last(differenced, tmp_path):
    run, _ = differenced
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    last = load_checkpoint(folder / "checkpoint.npz")
    best = dict(last, step=7)                                   # a best state told apart by its step
    save_checkpoint(folder / "best.npz", best, last["config"], last["extra"])
    m = gpurnn.load_model(folder)
    assert (m.which, m.step, m.path) == ("best", 7, os.path.join(folder, "best.npz"))
    assert "best state, step 7" in repr(m)
    m = gpurnn.load_model(folder, checkpoint="last")
    assert (m.which, m.step, m.path) == ("last", last["step"], os.path.join(folder, "checkpoint.npz"))
    # a file is loaded as it is, whatever checkpoint says
    assert gpurnn.load_model(folder / "best.npz", checkpoint="last").step == 7
    assert gpurnn.load_model(folder / "checkpoint.npz").which == "last"
    shutil.copy(folder / "best.npz", tmp_path / "mine.npz")
    assert gpurnn.load_model(tmp_path / "mine.npz").which == "file"
    # a run that has not evaluated yet has no best state: its last
    os.remove(folder / "best.npz")
    m = gpurnn.load_model(folder)
    assert (m.which, m.step) == ("last", last["step"])
    with pytest.raises(ValueError, match=r"checkpoint must be one of 'best', 'last' .* got 'first'"):
        gpurnn.load_model(folder, checkpoint="first")

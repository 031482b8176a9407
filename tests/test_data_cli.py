"""``gpurnn train --data`` and ``gpurnn predict`` on small generated files: learning beats the naive
baseline, predictions from the command line equal load_model's, resume is exact, and every bad file
is a one-line error that leaves nothing behind."""

import json
import os

import numpy as np
import pytest

import gpurnn
from gpurnn import cli

from conftest import run_metrics

FAST = ["--hidden", "16", "--batch", "32", "--backend", "cpu", "--no-progress", "--eval-every", "50"]


def regression_npz(path, n=400, T=10, seed=0):
    """y: a weighted sum over all the steps, in units far from 1 (so scaling matters)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, 3)) * [1.0, 5.0, 0.1] + [0.0, 20.0, -3.0]
    y = 40.0 * x[:, :, 0].mean(axis=1, keepdims=True) + 0.5 * x[:, -1, 1:2] + 100.0
    x = x.astype(np.float32)
    np.savez(path, x=x, y=y)
    return x, y


def classification_npz(path, n=400, T=10, seed=1):
    """Three classes: the sign of the first steps' sum of feature 0, and whether feature 1 ends high;
    ragged lengths, padded with NaN."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, 2))
    lengths = rng.integers(4, T + 1, n)
    last = x[np.arange(n), lengths - 1, 1]
    y = (x[:, :3, 0].sum(axis=1) > 0).astype(np.int64) + (last > 1.0)
    x[np.arange(T)[None, :] >= lengths[:, None]] = np.nan
    np.savez(path, x=x, y=y, lengths=lengths)
    return x, y, lengths


def series_csv(path, L=600, seed=2):
    """A noisy cycle of period 16 and a slow trend, with a date column and a second feature."""
    rng = np.random.default_rng(seed)
    t = np.arange(L)
    load = 50 + 20 * np.sin(2 * np.pi * t / 16) + 0.05 * t + rng.standard_normal(L)
    with open(path, "w") as f:
        f.write("date,load,weekday\n")
        for i in range(L):
            f.write(f"day{i},{load[i]:.3f},{i % 7}\n")
    return load


def train(out, *args):
    return cli.main(["train", *args, *FAST, "--out", str(out)])


def final_eval(out):
    return [r for r in run_metrics(out) if "eval_metric" in r][-1]["eval_metric"]


def test_each_kind_of_file_trains_well_below_its_naive_baseline(tmp_path, capsys):
    regression_npz(tmp_path / "reg.npz")
    classification_npz(tmp_path / "cls.npz")
    series_csv(tmp_path / "series.csv")
    assert train(tmp_path / "reg", "--data", str(tmp_path / "reg.npz"), "--steps", "200") == 0
    assert train(tmp_path / "cls", "--data", str(tmp_path / "cls.npz"), "--steps", "200") == 0
    assert train(tmp_path / "ser", "--data", str(tmp_path / "series.csv"), "--target", "load", "--seq-len", "20",
                 "--horizon", "4", "--steps", "200") == 0
    err = capsys.readouterr().err
    baselines = {}
    for run in ("reg", "cls", "ser"):
        ckpt = gpurnn.load_checkpoint(tmp_path / run / "checkpoint.npz")
        baselines[run] = ckpt["extra"]["task"]["baseline"]
    assert final_eval(tmp_path / "reg") < 0.1 * baselines["reg"]
    assert final_eval(tmp_path / "cls") > baselines["cls"] + 0.3
    assert final_eval(tmp_path / "ser") < 0.2 * baselines["ser"]
    # what the user reads: the baseline named beside the result
    assert "baseline (the training mean)" in err and "baseline (the most common class)" in err
    assert "baseline (the last value)" in err
    cfg = json.loads((tmp_path / "ser" / "config.json").read_text())
    assert cfg["task"] == "data" and cfg["target"] == "load" and cfg["seq_len"] == 20 and cfg["horizon"] == 4


@pytest.mark.parametrize("kind", ["regression", "classification", "series"])
def test_predict_writes_what_load_model_predicts(tmp_path, kind, capsys):
    if kind == "regression":
        x, y = regression_npz(tmp_path / "d.npz")
        flags, data = [], tmp_path / "d.npz"
    elif kind == "classification":
        x, y, lengths = classification_npz(tmp_path / "d.npz")
        flags, data = [], tmp_path / "d.npz"
    else:
        series_csv(tmp_path / "d.csv", L=120)
        flags, data = ["--target", "load", "--seq-len", "12", "--horizon", "2"], tmp_path / "d.csv"
    assert train(tmp_path / "run", "--data", str(data), "--steps", "20", *flags) == 0
    out = tmp_path / "pred" / "p.npy"
    assert cli.main(["predict", str(tmp_path / "run"), "--data", str(data), "--out", str(out)]) == 0
    written = np.load(out)
    model = gpurnn.load_model(tmp_path / "run")
    if kind == "series":         # every window of the file, built here row by row
        windows = np.stack([np.stack([load_row(data, i + k) for k in range(12)]) for i in range(120 - 12 + 1)])
        expected = model.predict(windows)
        assert written.shape == (109, 1)
    else:
        expected = model.predict(x, None if kind == "regression" else lengths)
        assert written.shape == ((len(x), 1) if kind == "regression" else (len(x),))
    np.testing.assert_array_equal(written, expected)
    assert written.dtype == (np.int64 if kind == "classification" else np.float64)
    if kind == "classification":
        proba = tmp_path / "proba.npy"
        assert cli.main(["predict", str(tmp_path / "run"), "--data", str(data), "--out", str(proba), "--proba"]) == 0
        p = np.load(proba)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(p.argmax(axis=1), written)
    assert "written to" in capsys.readouterr().err


def load_row(path, i):
    """Row i of a series_csv's numeric columns (load, weekday), read with nothing but str.split."""
    line = open(path).read().splitlines()[i + 1]
    return [float(v) for v in line.split(",")[1:]]


def test_resume_on_data_matches_an_uninterrupted_run(tmp_path):
    classification_npz(tmp_path / "d.npz")
    flags = ["--data", str(tmp_path / "d.npz"), "--log-every", "1"]
    assert train(tmp_path / "straight", *flags, "--steps", "8") == 0
    assert train(tmp_path / "split", *flags, "--steps", "3") == 0
    assert cli.main(["train", "--resume", str(tmp_path / "split"), "--steps", "8", "--no-progress"]) == 0
    a, b = run_metrics(tmp_path / "straight"), run_metrics(tmp_path / "split")
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and len(a) == 8


def test_resume_refuses_a_data_file_that_changed(tmp_path, capsys):
    regression_npz(tmp_path / "d.npz")
    assert train(tmp_path / "run", "--data", str(tmp_path / "d.npz"), "--steps", "2") == 0
    regression_npz(tmp_path / "d.npz", seed=9)
    assert cli.main(["train", "--resume", str(tmp_path / "run"), "--steps", "4", "--no-progress"]) == 2
    assert "has changed since the run" in capsys.readouterr().err
    assert gpurnn.load_checkpoint(tmp_path / "run" / "checkpoint.npz")["step"] == 2


def write_npz(path, **arrays):
    np.savez(path, **arrays)


GOOD_X = np.zeros((6, 4, 2))

BAD_FILES = [  # (file name, writer, extra flags, what the message must say)
    ("d.npz", lambda p: write_npz(p, x=GOOD_X), [], "d.npz: array 'y' is missing"),
    ("d.npz", lambda p: write_npz(p, x=GOOD_X, y=np.zeros(6), lenghts=np.ones(6, int)), [],
     "d.npz: unexpected array(s) 'lenghts'"),
    ("d.npz", lambda p: write_npz(p, x=np.zeros((6, 4)), y=np.zeros(6)), [], "d.npz: array 'x' must be (N, T, I)"),
    ("d.npz", lambda p: write_npz(p, x=np.where(np.arange(48).reshape(6, 4, 2) == 9, np.nan, 0.0), y=np.zeros(6)), [],
     "d.npz: array 'x' holds 1 NaN or infinite value(s) (the first at index (1, 0, 1))"),
    ("d.npz", lambda p: write_npz(p, x=GOOD_X, y=np.array([0, 1, 2, -1, 0, 1])), [],
     "d.npz: array 'y' holds class labels, which must lie in 0..2, got -1 at index (3,)"),
    ("d.npz", lambda p: write_npz(p, x=GOOD_X, y=np.zeros(6), lengths=np.array([1, 2, 3, 4, 4, 0])), [],
     "d.npz: array 'lengths' must lie in 1..T = 1..4, got 0 at index 5"),
    ("d.npz", lambda p: write_npz(p, x=GOOD_X, y=np.zeros((6, 5, 1))), [], "d.npz: array 'y' holds values"),
    ("d.npz", lambda p: write_npz(p, x=GOOD_X, y=np.zeros(6)), ["--target", "a"], "--target applies to a CSV series"),
    ("d.npz", lambda p: write_npz(p, x=GOOD_X, y=np.zeros(6)), ["--seq-len", "3"], "--seq-len applies to a CSV series"),
    ("d.npz", lambda p: p.write_bytes(b"not a zip"), [], "d.npz: not a .npz file (a .npz is a zip archive"),
    ("d.npz", lambda p: write_npz(p, x=np.array([[["a", "b"]]] * 6, dtype=object), y=np.zeros(6)), [],
     "d.npz: array 'x' holds Python objects, not numbers"),
    ("d.csv", lambda p: p.write_text("a,b\n1,2\n3,4\n"), ["--target", "c"],
     "d.csv: no column 'c' (--target); the columns are 'a', 'b'"),
    ("d.csv", lambda p: p.write_text("a,b\n" + "1,2\n" * 10 + "1,x\n"), ["--target", "b", "--seq-len", "2"],
     "d.csv: column 'b', line 12: 'x' is not a number"),
    ("d.csv", lambda p: p.write_text("a,b\n" + "1,2\n" * 10 + "1,\n"), ["--target", "b", "--seq-len", "2"],
     "d.csv: column 'b', line 12: an empty value is not a number"),
    ("d.csv", lambda p: p.write_text("a,b\n" + "1,2\n" * 10 + "1,nan\n"), ["--target", "b", "--seq-len", "2"],
     "d.csv: column 'b', line 12: 'nan' is not a finite number"),
    ("d.csv", lambda p: p.write_text("a,b\n" + "1,2\n" * 5), ["--target", "b", "--seq-len", "5"],
     "d.csv: 5 rows are too few for --seq-len 5 and --horizon 1"),
    ("d.csv", lambda p: p.write_text("a,b\n" + "1,2\n" * 9 + "1,2,3\n"), ["--target", "b", "--seq-len", "2"],
     "d.csv: line 11 has 3 values, the header has 2 columns"),
    ("d.csv", lambda p: p.write_text("a,b\n1,2\n"), [], "--data FILE.csv needs --target COLUMN"),
    ("d.txt", lambda p: p.write_text("1 2 3"), [], "d.txt: expected a .npz file (arrays x, y, lengths) or a .csv"),
    ("missing.npz", lambda p: None, [], "missing.npz: no such file"),
]


@pytest.mark.parametrize("name, write, flags, message", BAD_FILES,
                         ids=[f"{i}-{m.split(':')[-1].strip()[:30]}" for i, (_, _, _, m) in enumerate(BAD_FILES)])
def test_a_bad_data_file_is_a_one_line_error_and_nothing_is_written(tmp_path, capsys, name, write, flags, message):
    path = tmp_path / name
    write(path)
    before = sorted(os.listdir(tmp_path))
    assert cli.main(["train", "--data", str(path), *flags, *FAST, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("gpurnn train: ")
    assert sorted(os.listdir(tmp_path)) == before                 # no run folder, nothing else


@pytest.mark.parametrize("flags, message", [
    (["--task", "copy"], "--data FILE trains on your data, --task copy on a built-in task"),
    (["--validation", "1.5"], "--validation must be a fraction between 0 and 1, got 1.5"),
    (["--horizon", "0", "--target", "load"], "--horizon must be at least 1"),
])
def test_data_flags_that_do_not_go_together(tmp_path, capsys, flags, message):
    series_csv(tmp_path / "s.csv", L=50)
    assert cli.main(["train", "--data", str(tmp_path / "s.csv"), *flags, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_series_flags_without_data_are_refused(tmp_path, capsys):
    for flags, message in ((["--target", "load"], "--target applies to --data FILE.csv"),
                           (["--validation", "0.3"], "--validation applies to --data FILE")):
        assert cli.main(["train", *flags, "--out", str(tmp_path / "run")]) == 2
        assert message in capsys.readouterr().err


def test_predict_errors_leave_no_file(tmp_path, capsys):
    regression_npz(tmp_path / "d.npz", n=40)
    assert train(tmp_path / "run", "--data", str(tmp_path / "d.npz"), "--steps", "1") == 0
    capsys.readouterr()
    out = tmp_path / "p.npy"
    np.savez(tmp_path / "wide.npz", x=np.zeros((5, 10, 4)))
    cases = [(tmp_path / "wide.npz", "wide.npz: array 'x' must have 3 features per step, as the model was trained on"),
             (tmp_path / "nothing.npz", "nothing.npz: no such file"),
             (tmp_path / "d.csv", "d.csv: no such file")]
    for data, message in cases:
        assert cli.main(["predict", str(tmp_path / "run"), "--data", str(data), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert cli.main(["predict", str(tmp_path / "run"), "--data", str(tmp_path / "d.npz"), "--out", str(out),
                     "--proba"]) == 2
    assert "predict_proba is for classification" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "nowhere"), "--data", str(tmp_path / "d.npz"), "--out", str(out)]) == 1
    assert not out.exists()


def test_grads_measures_a_run_on_data(tmp_path, capsys):
    regression_npz(tmp_path / "d.npz", n=40)
    assert train(tmp_path / "run", "--data", str(tmp_path / "d.npz"), "--steps", "2") == 0
    assert cli.main(["grads", "--run", str(tmp_path / "run"), "--seq-len", "10", "--out", str(tmp_path / "g")]) == 0
    result = json.loads((tmp_path / "g" / "grad_norms.json").read_text())["results"][0]
    assert len(result["dh_norms"]) == 10 and all(np.isfinite(result["dh_norms"]))


def test_report_keeps_runs_on_different_files_apart(tmp_path, capsys):
    regression_npz(tmp_path / "a.npz", n=40)
    regression_npz(tmp_path / "b.npz", n=40, seed=5)
    for name in ("a", "b"):
        assert train(tmp_path / name, "--data", str(tmp_path / f"{name}.npz"), "--steps", "2") == 0
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    rows = [line for line in captured.out.splitlines() if line.startswith("| a.npz") or line.startswith("| b.npz")]
    assert len(rows) == 2 and "same configuration and seed" not in captured.err


def test_a_differenced_series_with_a_season_trains_and_predicts_levels_from_the_command_line(tmp_path, capsys):
    load = series_csv(tmp_path / "s.csv", L=150)
    flags = ["--target", "load", "--seq-len", "12", "--horizon", "2", "--difference", "--season", "16"]
    assert train(tmp_path / "run", "--data", str(tmp_path / "s.csv"), "--steps", "20", *flags) == 0
    err = capsys.readouterr().err
    assert "(the value a season (16 rows) earlier)" in err and "first differences" in err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["difference"] is True and cfg["season"] == 16
    source = gpurnn.load_checkpoint(tmp_path / "run" / "checkpoint.npz")["extra"]["task"]["source"]
    assert source["difference"] is True and source["season"] == 16
    for which, extra in (("best.npz", []), ("checkpoint.npz", ["--last"])):
        out = tmp_path / "pred" / "p.csv"
        assert cli.main(["predict", str(tmp_path / "run"), "--data", str(tmp_path / "s.csv"), "--out", str(out),
                         *extra]) == 0
        said = capsys.readouterr().err
        assert said.startswith("gpurnn predict: 138 forecasts of load (2 rows ahead) of ")
        assert os.path.join("run", which) in said and said.count("\n") == 1
        model = gpurnn.load_model(tmp_path / "run", checkpoint="last" if extra else "best")
        lines = out.read_text().splitlines()
        assert lines[0] == "row,date,target_row,target_date,actual,prediction" and len(lines) == 1 + 150 - 12
        cells = [line.split(",") for line in lines[1:]]
        np.testing.assert_array_equal([float(c[5]) for c in cells], model.predict_file(tmp_path / "s.csv")[:, 0])
        for row, date, target_row, target_date, actual, _ in cells[:-2]:
            assert date == f"day{row}" and target_date == f"day{target_row}"
            assert float(actual) == float(f"{load[int(target_row)]:.3f}")          # as the file has it
        assert [c[3:5] for c in cells[-2:]] == [["", ""], ["", ""]]      # day150 is not extrapolated: not a date


def test_a_season_the_held_out_windows_cannot_reach_back_is_a_one_line_error(tmp_path, capsys):
    series_csv(tmp_path / "s.csv", L=60)
    assert train(tmp_path / "run", "--data", str(tmp_path / "s.csv"), "--target", "load", "--seq-len", "10",
                 "--season", "55", "--steps", "2") == 2
    err = capsys.readouterr().err
    assert "--season 55 forecasts each target by the value 55 rows before it" in err and "--validation" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_predict_refuses_a_csv_of_predictions_at_every_step(tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((20, 4, 2))
    np.savez(tmp_path / "d.npz", x=x, y=np.cumsum(x, axis=1))
    assert train(tmp_path / "run", "--data", str(tmp_path / "d.npz"), "--steps", "2") == 0
    capsys.readouterr()
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(tmp_path / "run"), "--data", str(tmp_path / "d.npz"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "predicts at every step" in err and "write a .npz" in err and err.count("\n") == 1
    assert not out.exists()

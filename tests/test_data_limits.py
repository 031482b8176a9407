"""Data at the edges: values too large for what the model computes in, labels that are not class
numbers, arrays of no width, .npz headers that lie, and sizes beyond the memory here. Each is a
one-line DataError naming the file and the array or column, raised before anything that size is
allocated; data inside the limits trains with finite scales, however far from 1 its units are."""

import io
import os
import shutil
import tracemalloc
import zipfile

import numpy as np
import pytest

import gpurnn
import gpurnn.backend
from gpurnn import cli
from gpurnn.data import VALUE_LIMIT, ArrayTask, DataError
from gpurnn.datafiles import read_csv_columns, read_npz, task_from_file

from conftest import run_metrics

FAST = ["--hidden", "8", "--batch", "8", "--backend", "cpu", "--no-progress", "--eval-every", "50"]


def train(out, *flags):
    return cli.main(["train", *FAST, "--out", str(out), *flags])


def xy(n=20, T=5, I=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, T, I)), rng.standard_normal((n, 1))


def series(path, columns, rows):
    with open(path, "w") as f:
        f.write(",".join(columns) + "\n")
        f.writelines(",".join(map(str, r)) + "\n" for r in rows)


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("scale", [1e200, 1e39])
def test_features_beyond_float32_are_refused_naming_the_file_and_index(tmp_path, capsys, scale):
    x, y = xy()
    x[3, 2, 1] = scale
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert train(tmp_path / "run", "--data", str(tmp_path / "d.npz"), "--steps", "2") == 2
    err = capsys.readouterr().err
    assert f"d.npz: array 'x' holds {scale:.3g} at index (3, 2, 1), beyond float32's range" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_csv_cell_beyond_float32_names_its_column_and_line(tmp_path, capsys):
    rows = [(i, 2.0 * i) for i in range(40)]
    rows[7] = (7, "1e300")
    series(tmp_path / "s.csv", ["a", "b"], rows)
    assert train(tmp_path / "run", "--data", str(tmp_path / "s.csv"), "--target", "a", "--seq-len", "4",
                 "--steps", "2") == 2
    err = capsys.readouterr().err
    assert "s.csv: column 'b', line 9: 1e300 is beyond float32's range" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("scale", [1e-170, 1e-30, 1e30, VALUE_LIMIT / 4])
def test_data_inside_the_limits_gets_finite_scales_and_standardised_features(tmp_path, scale):
    """Far from 1 but inside float32: the scales are finite and every feature keeps its spread (a
    feature of 1e200 was all zeros once its squares overflowed, one of 1e-170 once they underflowed),
    the MSE in the data's units is finite and not zero, and the run's model loads again."""
    x, y = xy(n=60)
    x[..., 1] *= scale
    y_scale = max(scale, 1e-25)                         # the MSE of 1e-170s is 0 even in float64
    y = y * y_scale
    task = ArrayTask(x, y)
    assert np.isfinite(task.x_std).all() and np.isfinite(task.y_std).all()
    steps = task.x[task.train_rows].reshape(-1, 3)
    np.testing.assert_allclose(steps.std(axis=0), 1.0, rtol=1e-5)       # standardised, feature 1 included
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert train(tmp_path / "run", "--data", str(tmp_path / "d.npz"), "--steps", "2", "--eval-every", "2") == 0
    evals = [r["eval_metric"] for r in run_metrics(tmp_path / "run") if "eval_metric" in r]
    ratio = evals[-1] / y_scale ** 2                      # the MSE in the data's units, over their square
    assert 1e-3 < ratio < 1e3, evals
    pred = gpurnn.load_model(tmp_path / "run").predict(x)
    assert pred.shape == (60, 1) and np.isfinite(pred).all()


def test_new_inputs_off_the_training_scale_name_the_file_when_predicted(tmp_path, capsys):
    """A feature that was 1e-39 in training makes ordinary new values 1e39 once standardised."""
    x, y = xy(n=40)
    x[..., 0] *= 1e-39
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert train(tmp_path / "run", "--data", str(tmp_path / "d.npz"), "--steps", "2") == 0
    np.savez(tmp_path / "new.npz", x=xy(n=5, seed=1)[0])
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "run"), "--data", str(tmp_path / "new.npz"), "--out",
                     str(tmp_path / "p.npy")]) == 2
    err = capsys.readouterr().err
    assert "new.npz: array 'x' at index (0, 0, 0) holds" in err and "beyond float32's range" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "p.npy").exists()


# ---------------------------------------------------------------- labels and widths
def test_a_label_far_beyond_the_number_of_labels_is_refused_before_counting_classes():
    x, _ = xy()
    y = np.arange(20, dtype=np.int64)
    y[19] = 10 ** 12
    with pytest.raises(DataError, match=r"class label 1000000000000 \(at index \(19,\)\).*np.unique"):
        ArrayTask(x, y)
    y[19] = 1000                       # sparse but small: still one output per class, and it trains
    assert ArrayTask(x, y).num_classes == 1001


@pytest.mark.parametrize("x_shape, y_shape, message", [
    ((20, 5, 0), (20, 1), r"array 'x' of shape \(20, 5, 0\) holds .*no feature"),
    ((20, 5, 3), (20, 0), r"array 'y' of shape \(20, 0\) holds no value per target")])
def test_arrays_of_no_width_name_the_file(tmp_path, x_shape, y_shape, message):
    np.savez(tmp_path / "d.npz", x=np.zeros(x_shape), y=np.ones(y_shape))
    with pytest.raises(DataError, match="d.npz: " + message):
        task_from_file(tmp_path / "d.npz")


def test_features_that_name_no_column_say_so(tmp_path, capsys):
    series(tmp_path / "s.csv", ["a", "b"], [(i, i) for i in range(30)])
    assert train(tmp_path / "run", "--data", str(tmp_path / "s.csv"), "--target", "a", "--features", " , ",
                 "--seq-len", "4", "--steps", "2") == 2
    assert "s.csv: --features names no column" in capsys.readouterr().err


# ---------------------------------------------------------------- .npz headers
def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name + ".npy", raw)


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_a_member_cut_short_is_called_damaged_not_python_objects(tmp_path):
    x, y = xy()
    _zip(tmp_path / "cut.npz", {"x": _npy(x.astype(np.float32))[:-40], "y": _npy(y)})
    with pytest.raises(DataError, match=r"array 'x' is damaged: its header says shape \(20, 5, 3\) float32 "
                                        r"\(1200 bytes\) but its member holds 1160"):
        read_npz(tmp_path / "cut.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([[[1.0]], "a"], dtype=object), y=y)
    with pytest.raises(DataError, match="array 'x' holds Python objects"):
        read_npz(tmp_path / "obj.npz")


def test_a_header_claiming_terabytes_is_refused_before_reading(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1_000_000, 1000, 1000)})
    _zip(tmp_path / "claim.npz", {"x": header.getvalue() + bytes(64), "y": _npy(np.zeros((3, 1)))})
    tracemalloc.start()
    with pytest.raises(DataError, match=r"shape \(1000000, 1000, 1000\) float32 \(4000000000000 bytes\)"):
        read_npz(tmp_path / "claim.npz")
    assert tracemalloc.get_traced_memory()[1] < 1 << 20
    tracemalloc.stop()


# ---------------------------------------------------------------- memory
@pytest.fixture
def little_memory(monkeypatch):
    """The memory available here, as gpurnn reads it, is 4 MiB."""
    monkeypatch.setattr(gpurnn.backend, "available_memory", lambda on_gpu=False: 4 << 20)


def test_an_npz_larger_than_memory_is_refused_before_its_data_is_read(tmp_path, capsys, little_memory):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((400, 50, 10)).astype(np.float32), y=np.zeros((400, 1)))
    tracemalloc.start()
    with pytest.raises(DataError, match=r"d.npz: array 'x', shape \(400, 50, 10\) float32, read and standardised, "
                                        r"needs about [\d.]+ MiB, more than the 4 MiB of memory available here"):
        read_npz(tmp_path / "d.npz")
    assert tracemalloc.get_traced_memory()[1] < 256 << 10          # the 800 KB of x were never read
    tracemalloc.stop()
    assert train(tmp_path / "run", "--data", str(tmp_path / "d.npz"), "--steps", "2") == 2
    err = capsys.readouterr().err
    assert "use fewer sequences" in err and "--hidden" not in err


def test_windows_larger_than_memory_name_seq_len(tmp_path, capsys, little_memory):
    series(tmp_path / "s.csv", ["a", "b"], [(i % 7, i % 5) for i in range(3000)])
    assert train(tmp_path / "run", "--data", str(tmp_path / "s.csv"), "--target", "a", "--seq-len", "1000",
                 "--steps", "2") == 2
    err = capsys.readouterr().err
    assert "s.csv: cutting it into 2000 windows of 1000 rows x 2 values needs about" in err
    assert "lower --seq-len" in err and err.count("\n") == 1


def test_a_csv_is_read_row_by_row(tmp_path):
    """One byte values: a list of rows took 80 bytes a value; the columns take 8."""
    series(tmp_path / "s.csv", ["a"], [(1,)] * 200_000)
    tracemalloc.start()
    _, columns = read_csv_columns(tmp_path / "s.csv")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(columns["a"]) == 200_000 and (columns["a"] == 1).all()
    assert peak < 3 * os.path.getsize(tmp_path / "s.csv") + (1 << 20), peak


# ---------------------------------------------------------------- a data file that moved
def test_a_run_resumes_on_its_data_file_at_a_new_path(tmp_path, capsys):
    x, y = xy(n=40)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert train(tmp_path / "run", "--data", str(tmp_path / "d.npz"), "--steps", "2") == 0
    os.makedirs(tmp_path / "moved")
    shutil.move(tmp_path / "d.npz", tmp_path / "moved" / "d.npz")
    resume = ["train", "--resume", str(tmp_path / "run"), "--steps", "4", "--no-progress"]
    capsys.readouterr()
    assert cli.main(resume) == 2
    err = capsys.readouterr().err
    assert f"the data file {tmp_path / 'd.npz'} of the run in {tmp_path / 'run'} is gone; if it moved, give its " \
           f"new path with --data" in err
    np.savez(tmp_path / "other.npz", x=x + 1, y=y)
    assert cli.main(resume + ["--data", str(tmp_path / "other.npz")]) == 2
    assert "SHA-256 differs" in capsys.readouterr().err
    assert cli.main(resume + ["--data", str(tmp_path / "moved" / "d.npz")]) == 0
    assert gpurnn.load_checkpoint(tmp_path / "run" / "checkpoint.npz")["config"]["data"] == \
        str(tmp_path / "moved" / "d.npz")


def test_a_negative_seed_and_labels_beyond_int64_are_named():
    x, _ = xy()
    with pytest.raises(ValueError, match="seed must be a whole number >= 0, got -1"):
        ArrayTask(x, np.zeros(20, np.int64) + np.arange(20) % 2, seed=-1)
    y = np.arange(20, dtype=np.uint64)
    y[7] = 2 ** 64 - 5
    with pytest.raises(DataError, match="class label 18446744073709551611 at index \\(7,\\): beyond int64"):
        ArrayTask(x, y)


def test_outputs_larger_than_memory_are_refused_before_they_are_allocated(tmp_path, monkeypatch):
    from conftest import train_charlm
    assert train_charlm(tmp_path / "t.txt", tmp_path / "lm", steps=1) == 0
    model = gpurnn.load_model(tmp_path / "lm", backend="cpu")
    ids = np.zeros((20000, 8), np.int64)                  # 160000 steps x 5 characters x 3 copies: 19 MB
    monkeypatch.setattr(gpurnn.backend, "available_memory", lambda on_gpu=False: 4 << 20)
    tracemalloc.start()
    with pytest.raises(DataError, match=r"the model's outputs for them, \(N, T, O\) = \(20000, 8, 5\), needs about"):
        model.predict(ids)
    assert tracemalloc.get_traced_memory()[1] < 2 << 20
    tracemalloc.stop()

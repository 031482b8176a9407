"""Every command under hostile arguments and a failing filesystem: each ends with an exit status
and at most a one-line reason (argparse's usage line aside), never a traceback, never an
exception that main did not foresee; Ctrl-C is exit 130, a closed pipe ends quietly."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from gpurnn import cli

from conftest import train_charlm, train_tiny

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny adding run, a tiny charlm run, and paths that are hostile to write to or read from."""
    root = tmp_path_factory.mktemp("hostile")
    assert train_tiny(root / "adding", "--steps", "2") == 0
    assert train_charlm(root / "text.txt", root / "lm", steps=2) == 0
    (root / "file").write_text("not a folder\n")
    (root / "dir").mkdir()
    np.savez(root / "x.npz", x=np.zeros((3, 4, 2), np.float32))
    return root


def values(root):
    """Values a flag may be given: numbers out of range or not numbers, and paths that exist as
    the wrong kind of thing, or not at all."""
    return st.sampled_from([
        "0", "-1", "-3", "1", "2", "1.5", "nan", "inf", "-inf", "1e400", "1e39", "1e308", "5e-324", "9" * 40,
        "-" + "9" * 40, "", " , ",
        "abc", "a,b", "rnn,rnn", "é", "-", str(root / "file"), str(root / "file" / "sub"), str(root / "dir"),
        str(root / "nothing"), str(root / "x.npz"), str(root / "adding"), str(root / "lm"), "/dev/null",
        str(root / "dir" / "p.npy"), str(root / "file" / "p.npy")])


# The flags fuzzed per command, and what each command is given first (its later flags win).
FLAGS = {
    "train": ["--task", "--data", "--target", "--features", "--horizon", "--validation", "--cell", "--hidden",
              "--layers", "--seq-len", "--batch", "--optimizer", "--lr", "--clip", "--tbptt", "--seed", "--text",
              "--embed", "--init-scale", "--copy-len", "--log-every", "--eval-every", "--save-every",
              "--eval-sequences", "--dtype", "--out", "--resume", "--blas-threads"],
    "grads": ["--cell", "--seq-len", "--scales", "--hidden", "--batch", "--seed", "--run", "--out", "--blas-threads"],
    "sample": ["--length", "--prime", "--temperature", "--seed"],
    "predict": ["--data", "--out", "--proba"],
}


def _base(command, root):
    out = os.path.join(tempfile.mkdtemp(dir=root), "out")       # a new run each time, not one that exists
    return {"train": ["train", "--steps", "2", "--hidden", "4", "--batch", "2", "--eval-sequences", "4",
                      "--seq-len", "6", "--backend", "cpu", "--no-progress", "--out", out],
            "grads": ["grads", "--cell", "rnn", "--seq-len", "3", "--hidden", "2", "--batch", "1", "--scales", "1",
                      "--backend", "cpu", "--out", out],
            "sample": ["sample", str(root / "lm"), "--length", "3", "--prime", "ab", "--backend", "cpu"],
            "predict": ["predict", str(root / "adding"), "--data", str(root / "x.npz"), "--out",
                        str(root / "dir" / "p.npy"), "--backend", "cpu"]}[command]


def _run(argv, capsys):
    """cli.main(argv): its status (argparse's exit included) and what it wrote to stderr."""
    try:
        status = cli.main(argv)
    except SystemExit as e:               # argparse refusing a value: its usage line and one error line
        status = e.code
    return status, capsys.readouterr().err


@pytest.mark.filterwarnings("error::RuntimeWarning")       # an overflow on the way is a defect too
@pytest.mark.parametrize("command", sorted(FLAGS))
@SETTINGS
@given(data=st.data())
def test_hostile_flags_end_in_a_status_and_one_line(runs, capsys, monkeypatch, command, data):
    monkeypatch.chdir(runs / "dir")              # a relative --out such as "nan" is made here
    pairs = data.draw(st.lists(st.tuples(st.sampled_from(FLAGS[command]), values(runs)), min_size=1, max_size=3))
    # a sample of 10**40 characters is what was asked for (it streams; the SIGINT test stops one)
    assume(not any(name == "--length" and value.isdigit() and int(value) > 1000 for name, value in pairs))
    argv = _base(command, runs)
    for name, value in pairs:
        argv += [name] if name == "--proba" else [name, value]
    status, err = _run(argv, capsys)
    event(f"exit status {status}")
    assert status in (0, 1, 2, 130), (argv, status, err)
    assert "Traceback" not in err and "this is a bug" not in err, (argv, err)
    lines = [line for line in err.splitlines() if line.startswith(f"gpurnn {command}:")]
    if status == 2 and f"gpurnn {command}: error:" in err:  # argparse: its usage, then one error line
        assert all(line.startswith(("usage:", " ")) for line in err.splitlines()[:-1]), err
    elif status not in (0, 130):
        assert lines, (argv, err)


# ---------------------------------------------------------------- named cases
@pytest.mark.parametrize("flags, message", [
    (["--seq-len", "0"], "argument --seq-len: must be at least 2, got 0"),
    (["--hidden", "0"], "argument --hidden: must be at least 1, got 0"),
    (["--batch", "0"], "argument --batch: must be at least 1, got 0"),
    (["--scales", "nan"], "argument --scales: expected comma-separated numbers from 0 to 1e+150, got 'nan'"),
    (["--seed", "-3"], "argument --seed: must be at least 0, got -3"),
    (["--seq-len", "1000000000"], "needs about"),
])
def test_grads_refuses_bad_flags_before_measuring(tmp_path, capsys, flags, message):
    status, err = _run(["grads", "--cell", "rnn", "--out", str(tmp_path / "g"), *flags], capsys)
    assert status == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "g").exists()


def test_an_out_folder_that_cannot_be_made_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    import gpurnn.gradnorms
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(gpurnn.gradnorms, "grad_norms_through_time", lambda *a, **k: pytest.fail("measured"))
    status, err = _run(["grads", "--cell", "rnn", "--out", str(tmp_path / "file" / "g")], capsys)
    assert status == 1 and err == f"gpurnn grads: {tmp_path / 'file' / 'g'}: Not a directory\n"


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "nan"], "argument --temperature: must be a finite number > 0, got 'nan'"),
    (["--temperature", "0"], "argument --temperature: must be a finite number > 0, got '0'"),
    (["--length", "-1"], "argument --length: must be at least 0, got -1"),
    (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
])
def test_sample_refuses_bad_flags(runs, capsys, flags, message):
    status, err = _run(["sample", str(runs / "lm"), *flags], capsys)
    assert status == 2 and message in err, err


def test_predict_out_onto_a_folder_under_a_file_or_a_full_disk(runs, tmp_path, capsys, monkeypatch):
    base = ["predict", str(runs / "adding"), "--data", str(runs / "x.npz"), "--backend", "cpu", "--out"]
    status, err = _run(base + [str(runs / "dir")], capsys)
    assert status == 2 and "name a .csv (a table), a .npz (named arrays) or a .npy" in err
    (tmp_path / "p.npy").mkdir()
    status, err = _run(base + [str(tmp_path / "p.npy")], capsys)
    assert status == 2 and f"--out {tmp_path / 'p.npy'} is a folder; name the file to write" in err, err
    status, err = _run(base + [str(runs / "file" / "p.npy")], capsys)
    assert status == 1 and err == f"gpurnn predict: {runs / 'file'}: Not a directory\n", err

    def full(f, array):                  # the disk fills up halfway through, as f.write says on a full disk
        f.write(b"\x93NUMPY")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(np, "save", full)
    status, err = _run(base + [str(tmp_path / "q.npy")], capsys)
    assert status == 1 and err == (f"gpurnn predict: {tmp_path / 'q.npy'}: cannot be written "
                                   f"({os.strerror(errno.ENOSPC)})\n"), err
    assert sorted(os.listdir(tmp_path)) == ["p.npy"]            # no prediction, no temporary file


def test_predict_never_writes_over_its_data_or_its_model(runs, tmp_path, capsys):
    shutil.copy(runs / "x.npz", tmp_path / "x.npz")
    shutil.copytree(runs / "adding", tmp_path / "adding")
    data, model = (tmp_path / "x.npz").read_bytes(), (tmp_path / "adding" / "best.npz").read_bytes()
    for out, what in ((tmp_path / "x.npz", "the data file"),
                      (tmp_path / "adding" / "best.npz", "the model's checkpoint")):
        status, err = _run(["predict", str(tmp_path / "adding"), "--data", str(tmp_path / "x.npz"), "--out", str(out),
                            "--backend", "cpu"], capsys)
        assert status == 2 and err == (f"gpurnn predict: {out} is {what}: writing the predictions there would replace "
                                       f"it; name another file\n"), err
    assert (tmp_path / "x.npz").read_bytes() == data and (tmp_path / "adding" / "best.npz").read_bytes() == model


@pytest.mark.parametrize("command", ["grads", "sample", "predict"])
def test_ctrl_c_is_exit_130_with_one_line(runs, tmp_path, capsys, monkeypatch, command):
    import gpurnn.gradnorms
    import gpurnn.predict

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(gpurnn.gradnorms, "grad_norms_through_time", interrupted)
    monkeypatch.setattr(gpurnn.predict.TrainedModel, "_outputs", interrupted)
    monkeypatch.setattr(cli, "_draw", interrupted)
    argv = {"grads": ["grads", "--cell", "rnn", "--out", str(tmp_path / "g")],
            "sample": ["sample", str(runs / "lm"), "--prime", "ab", "--backend", "cpu"],
            "predict": ["predict", str(runs / "adding"), "--data", str(runs / "x.npz"), "--out",
                        str(tmp_path / "p.npy"), "--backend", "cpu"]}[command]
    status, err = _run(argv, capsys)
    assert status == 130 and err == f"gpurnn {command}: interrupted\n"


def test_sigint_and_a_closed_pipe_end_sample_without_a_traceback(runs):
    """In a child process: the sample streams; SIGINT stops it with 130; a reader that goes away
    (gpurnn sample | head -c 10) ends it quietly."""
    cmd = [sys.executable, "-m", "gpurnn", "sample", str(runs / "lm"), "--length", "10000000", "--prime", "ab",
           "--backend", "cpu"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(child.stdout.read(200)) == 200              # it is writing as it draws
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130 and err.decode() == "gpurnn sample: interrupted\n", err
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.read(10)
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=60) == 1 and err == "", err


def test_an_unforeseen_exception_is_one_line_that_asks_for_a_report(runs, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(cli, "_draw", broken)
    status, err = _run(["sample", str(runs / "lm"), "--prime", "ab", "--backend", "cpu"], capsys)
    assert status == 1 and err == ("gpurnn sample: failed (ZeroDivisionError: division by zero); this is a bug in "
                                   "gpurnn: please report it (GPURNN_TRACEBACK=1 shows where)\n")
    monkeypatch.setenv("GPURNN_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        cli.main(["sample", str(runs / "lm"), "--prime", "ab", "--backend", "cpu"])


def test_a_run_folder_that_cannot_be_made_is_a_flag_to_change(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        status, err = _run(["train", "--steps", "1", "--no-progress", "--out", str(out)], capsys)
        assert status == 2 and err == f"gpurnn train: the run folder {out} cannot be used " \
                                      f"({'a file, not a folder' if out.name == 'file' else 'Not a directory'}); " \
                                      f"choose another --out\n", err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_in_a_run_folder_cannot_hang_a_resume(tmp_path):
    """config.json is written beside and renamed over (a FIFO there was opened for writing, and
    blocked); a .lock that is not a file is refused by name."""
    assert train_tiny(tmp_path / "run", "--steps", "2") == 0
    os.remove(tmp_path / "run" / "config.json")
    os.mkfifo(tmp_path / "run" / "config.json")
    cmd = [sys.executable, "-m", "gpurnn", "train", "--resume", str(tmp_path / "run"), "--steps", "3", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and os.path.isfile(tmp_path / "run" / "config.json"), done.stderr
    os.remove(tmp_path / "run" / ".lock")
    os.mkfifo(tmp_path / "run" / ".lock")
    done = subprocess.run(cmd[:-3] + ["--steps", "4", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "its .lock is not a regular file" in done.stderr, done.stderr


def test_a_text_at_a_new_path_must_be_the_runs(tmp_path, capsys):
    assert train_charlm(tmp_path / "a.txt", tmp_path / "lm", steps=2) == 0
    (tmp_path / "b.txt").write_text("abcabcabd " * 49 + "dcbadcbad ", encoding="utf-8")   # same characters
    resume = ["train", "--resume", str(tmp_path / "lm"), "--steps", "3", "--no-progress", "--text"]
    status, err = _run(resume + [str(tmp_path / "b.txt")], capsys)
    assert status == 2 and f"the text {tmp_path / 'b.txt'} is not the one the run in" in err, err
    os.replace(tmp_path / "a.txt", tmp_path / "moved.txt")
    status, err = _run(resume + [str(tmp_path / "moved.txt")], capsys)
    assert status == 0, err

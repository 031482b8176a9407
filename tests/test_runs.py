"""Run folders under gpurnn train: nothing lost or mixed up when runs are resumed elsewhere, started
twice, interrupted, damaged or too large; every failure a one-line message, never a traceback."""

import json
import os
import signal
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import gpurnn
from gpurnn import cli, training
from gpurnn.checkpoint import load_checkpoint
from gpurnn.model import Trainer, make_model, training_memory
from gpurnn.runs import RunLock, check_memory, format_metric
from gpurnn.tasks import make_task

from conftest import TINY_RUN, interrupt_at, run_metrics, train_charlm, train_tiny

def _resume(run, *extra):
    return cli.main(["train", "--resume", str(run), "--no-progress", *extra])


def _files(folder):
    """Every file's bytes (the lock file aside): what a refused command must leave as it was."""
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder)) if n != RunLock.NAME}


# ---------------------------------------------------------------- resuming into another folder
def test_resume_into_a_folder_holding_another_run_is_refused_and_changes_nothing(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_tiny(a, "--steps", "3") == 0
    assert train_tiny(b, "--steps", "2", "--seed", "5") == 0
    before = _files(b)
    assert _resume(a, "--out", str(b), "--steps", "6") == 2
    assert "is not empty" in capsys.readouterr().err
    assert _files(b) == before


def test_resume_into_a_new_folder_carries_the_history_over(tmp_path):
    straight, a, b = tmp_path / "straight", tmp_path / "a", tmp_path / "b"
    assert train_tiny(straight, "--steps", "6", "--log-every", "1") == 0
    assert train_tiny(a, "--steps", "3", "--log-every", "1") == 0
    a_before = _files(a)
    assert _resume(a, "--out", str(b), "--steps", "6") == 0
    assert [(r["step"], r["loss"]) for r in run_metrics(b)] == [(r["step"], r["loss"]) for r in run_metrics(straight)]
    assert _files(a) == a_before and load_checkpoint(b / "checkpoint.npz")["step"] == 6


# ---------------------------------------------------------------- one run per folder
def test_a_run_folder_held_by_another_train_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):
        assert train_tiny(out, "--steps", "2") == 2
    err = capsys.readouterr().err
    assert f"another gpurnn train is running in {out} (process {os.getpid()})" in err
    assert os.listdir(out) == [RunLock.NAME]
    assert train_tiny(out, "--steps", "2") == 0          # the lock went with its holder


def test_two_trains_started_at_once_on_one_folder_leave_one_consistent_run(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gpurnn", "train", *TINY_RUN, "--out", str(out), "--steps", "40"]
    procs = [subprocess.Popen(cmd + ["--seed", str(seed)], stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another gpurnn train is running" in refused or "already holds a run" in refused
    winner = [1, 2][[code for code, _ in results].index(0)]
    ck = load_checkpoint(out / "checkpoint.npz")
    assert ck["config"]["seed"] == winner == json.loads((out / "config.json").read_text())["seed"]
    assert [r["step"] for r in run_metrics(out)] == list(range(10, 41, 10))


# ---------------------------------------------------------------- resume is exact, the log too
def test_the_log_after_an_interrupted_resume_matches_a_run_that_never_stopped(tmp_path, monkeypatch):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_tiny(straight, "--steps", "12", "--log-every", "4") == 0
    interrupt_at(monkeypatch, 6)                   # in the middle of the window of steps 5..8
    assert train_tiny(split, "--steps", "12", "--log-every", "4") == 130
    monkeypatch.undo()
    assert _resume(split) == 0
    a, b = run_metrics(straight), run_metrics(split)
    assert [r["step"] for r in b] == [4, 8, 12]
    for key in ("loss", "metric", "grad_norm", "grad_norm_max", "eval_loss", "eval_metric"):
        assert [r.get(key) for r in a] == [r.get(key) for r in b], key
    assert all(r["sequences_per_s"] > 0 for r in b)


def test_a_cut_last_line_of_the_log_is_dropped_with_a_warning(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "4", "--log-every", "1") == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.')                 # a write cut short by a full disk
    assert _resume(out, "--steps", "6") == 0
    err = capsys.readouterr().err
    assert "gpurnn train: warning: " in err and "line 5 is incomplete" in err
    assert [r["step"] for r in run_metrics(out)] == [1, 2, 3, 4, 5, 6]


def test_damage_inside_the_log_names_the_file_and_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "4", "--log-every", "1") == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert _resume(out, "--steps", "6") == 2
    err = capsys.readouterr().err
    assert f"{out / 'metrics.jsonl'}, line 2, is damaged" in err and "Traceback" not in err


# ---------------------------------------------------------------- signals
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_sigterm_and_sighup_save_and_stop_like_ctrl_c(tmp_path, monkeypatch, capsys, sig, status):
    interrupt_at(monkeypatch, 3, sig)
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "50") == status
    assert load_checkpoint(out / "checkpoint.npz")["step"] == 3
    err = capsys.readouterr().err
    assert f"gpurnn train: interrupted ({signal.Signals(sig).name}); step 3 saved" in err
    assert f"Continue with: gpurnn train --resume {out}\n" in err
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        assert signal.getsignal(s) is not training._interrupt_now    # the handlers are put back


def test_a_signal_before_the_first_step_saves_nothing_and_says_so(tmp_path, monkeypatch, capsys):
    real_build = training.build_trainer

    def build_then_interrupt(task, cfg):
        os.kill(os.getpid(), signal.SIGTERM)       # while the model is being built (and compiled)
        return real_build(task, cfg)
    monkeypatch.setattr(training, "build_trainer", build_then_interrupt)
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "5") == 143
    assert "before the first step; nothing was saved" in capsys.readouterr().err
    assert not (out / "checkpoint.npz").exists()


def test_a_second_ctrl_c_before_the_first_checkpoint_does_not_claim_one(tmp_path, monkeypatch, capsys):
    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "train_step", interrupted)
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "5") == 130
    err = capsys.readouterr().err
    assert "before the first checkpoint: nothing was saved" in err and "holds the last" not in err


def test_temporaries_of_killed_checkpoint_writes_are_removed(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "2") == 0
    (out / ".checkpoint-x1y2.tmp").write_bytes(b"half a checkpoint")
    assert _resume(out, "--steps", "3") == 0
    assert not (out / ".checkpoint-x1y2.tmp").exists()
    assert "removed 1 temporary file" in capsys.readouterr().err


# ---------------------------------------------------------------- resuming what cannot be resumed
def test_resume_to_fewer_steps_than_done_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "4") == 0
    before = _files(out)
    assert _resume(out, "--steps", "2") == 2
    assert "is at step 4" in capsys.readouterr().err
    assert _resume(out) == 0                        # already finished: nothing to do
    assert "already finished" in capsys.readouterr().err
    assert _files(out) == before


def test_a_charlm_run_refuses_a_text_whose_characters_changed(tmp_path, capsys):
    text, out = tmp_path / "text.txt", tmp_path / "lm"
    assert train_charlm(text, out, steps=2) == 0
    before = _files(out)
    text.write_text("abcabcabe " * 50, encoding="utf-8")
    assert _resume(out, "--steps", "4") == 2
    err = capsys.readouterr().err
    assert "characters differ (added ['e'], removed ['d'])" in err
    assert _files(out) == before


# ---------------------------------------------------------------- messages, not tracebacks
@pytest.mark.skipif(gpurnn.cuda_status()[0], reason="the cuda backend is usable here")
def test_the_cuda_backend_without_a_gpu_is_a_one_line_message(tmp_path, capsys):
    assert train_tiny(tmp_path / "run", "--steps", "1", "--backend", "cuda") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpurnn train: backend 'cuda' is not usable here") and "--backend cpu" in err
    assert "\n" not in err
    lm = tmp_path / "lm"
    assert train_charlm(tmp_path / "text.txt", lm, steps=1) == 0
    capsys.readouterr()
    assert cli.main(["sample", str(lm), "--backend", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpurnn sample: backend 'cuda' is not usable here") and "\n" not in err
    assert cli.main(["grads", "--cell", "rnn", "--backend", "cuda", "--out", str(tmp_path / "g")]) == 2


@pytest.mark.parametrize("flag, value, lower", [("--hidden", "1000000", "--hidden, --layers"),
                                                ("--layers", "100000", "--layers"),
                                                ("--batch", "1000000000", "--batch"),
                                                ("--eval-sequences", "1000000000", "--eval-sequences")])
def test_sizes_beyond_memory_are_refused_before_allocating(tmp_path, capsys, flag, value, lower):
    out = tmp_path / "run"
    tracemalloc.start()
    try:
        status = cli.main(["train", "--backend", "cpu", "--no-progress", "--out", str(out), flag, value])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 2 and peak < 64 << 20
    err = capsys.readouterr().err.strip()
    assert "this configuration needs about" in err and "of memory available here" in err and lower in err
    assert "\n" not in err and not out.exists()


@pytest.mark.parametrize("task, cell, layers, tbptt", [("adding", "lstm", 1, None), ("copy", "gru", 2, None),
                                                       ("adding", "rnn", 1, 10)])
def test_the_memory_estimate_is_within_a_factor_of_what_training_allocates(task, cell, layers, tbptt):
    """The estimate against the peak traced by tracemalloc (NumPy reports its allocations to it) over
    model building, two training steps and an evaluation."""
    t = make_task(task, 40)
    warm = Trainer(make_model(t, cell, 4, backend="cpu"), t, batch_size=2, eval_sequences=4)
    warm.train_step()
    warm.evaluate()                                           # compile outside the measurement
    tracemalloc.start()
    try:
        tr = Trainer(make_model(t, cell, 96, layers, backend="cpu"), t, batch_size=24, eval_sequences=700,
                     tbptt=tbptt)
        tr.train_step()
        tr.train_step()
        tr.evaluate()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    est = training_memory(t, cell, 96, layers, None, 24, "adam", 700, "float32", tbptt)["peak"]
    assert 0.8 * peak < est < 2.0 * peak, (est, peak)


def test_check_memory_says_what_to_lower():
    cfg = dict(cell="lstm", hidden=64, layers=1, embed=None, batch=32, optimizer="adam", eval_sequences=1000,
               dtype="float32", tbptt=0, backend="cpu")
    task = make_task("adding", 50)
    assert check_memory(task, cfg, available=1 << 40)["peak"] > 0
    with pytest.raises(ValueError, match=r"needs about .* MiB at its peak .* than the 1 MiB .* lower eval_sequences"):
        check_memory(task, cfg, available=1 << 20)


# ---------------------------------------------------------------- report
def test_report_marks_unfinished_runs_and_counts_a_repeated_seed_once(tmp_path, monkeypatch, capsys):
    for name in ("s0", "s0-again", "s1"):
        assert train_tiny(tmp_path / name, "--steps", "4", "--seed", "1" if name == "s1" else "0") == 0
    interrupt_at(monkeypatch, 2)
    assert train_tiny(tmp_path / "s2", "--steps", "4", "--seed", "2") == 130
    monkeypatch.undo()
    capsys.readouterr()
    runs = [str(tmp_path / n) for n in ("s0", "s0-again", "s1")]
    assert cli.main(["report", *runs]) == 0
    out, err = capsys.readouterr()
    row = out.splitlines()[4]
    assert f"(seed 0, {runs[0]})" in row and f"(seed 0, {runs[1]})" in row and "same configuration and seed" in err
    finals = {r: run_metrics(r)[-1]["eval_metric"] for r in runs}
    mean = (finals[runs[0]] + finals[runs[2]]) / 2
    assert f"| {format_metric(mean)} |" in row
    assert cli.main(["report", runs[0], str(tmp_path / "s2")]) == 0
    row = capsys.readouterr().out.splitlines()[4]
    assert "step 2 of 4, unfinished (seed 2)" in row and "| — |" in row


def test_report_prints_small_metrics_with_significant_digits():
    assert format_metric(2.1e-5) == "2.1e-05" and format_metric(0.1699) == "0.1699" and format_metric(0.0) == "0.0000"


@pytest.mark.parametrize("field, value, message", [
    ("hidden", "64", "config field 'hidden' must be a whole number, got '64'"),
    ("cell", "lstm2", "config field 'cell' must be one of"),
    ("lr", None, "config field 'lr' must be a finite number, got None"),
    ("batch", 0, "config field 'batch' must be at least 1, got 0")])
def test_a_crafted_config_in_a_checkpoint_is_refused_naming_the_field(tmp_path, capsys, field, value, message):
    """The checkpoint's checksum is recomputed, as anyone can: the config itself must be checked."""
    from gpurnn import checkpoint as ck
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "2") == 0
    for name in ("checkpoint.npz", "best.npz"):           # the last state (resume) and the best (grads, sample)
        with np.load(out / name) as f:
            arrays = {k: f[k] for k in f.files if k != "checksum"}
        meta = json.loads(arrays["meta"].tobytes().decode())
        meta["config"][field] = value
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        arrays["checksum"] = np.frombuffer(ck._digest(arrays).encode(), dtype=np.uint8)
        np.savez(out / name, **arrays)
    capsys.readouterr()
    for command in (["train", "--resume", str(out), "--steps", "4", "--no-progress"],
                    ["grads", "--run", str(out), "--out", str(tmp_path / "g")],
                    ["sample", str(out)]):
        assert cli.main(command) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, command

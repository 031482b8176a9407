"""The gpurnn command, run in-process through gpurnn.cli.main for a few steps."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from gpurnn import cli
from gpurnn.checkpoint import load_checkpoint

from conftest import interrupt_at, run_metrics, train_charlm, train_tiny

def test_train_writes_config_metrics_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "12", "--log-every", "3", "--eval-every", "6", "--cell", "gru") == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"] == "adding" and cfg["cell"] == "gru" and cfg["hidden"] == 8 and cfg["steps"] == 12
    assert cfg["lr"] == 0.01 and cfg["optimizer"] == "adam" and cfg["backend_used"] == "cpu"
    recs = run_metrics(out)
    assert [r["step"] for r in recs] == [3, 6, 9, 12]
    for r in recs:
        assert {"step", "loss", "metric", "grad_norm", "grad_norm_max", "elapsed", "sequences_per_s"} <= set(r)
        assert np.isfinite(r["loss"]) and 0 < r["grad_norm"] <= r["grad_norm_max"] and r["sequences_per_s"] > 0
    assert ["eval_metric" in r for r in recs] == [False, True, False, True]
    assert load_checkpoint(out / "checkpoint.npz")["step"] == 12
    assert "held-out mse" in capsys.readouterr().err


def test_resume_continues_to_the_new_total_and_matches_an_uninterrupted_run(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_tiny(straight, "--steps", "10", "--log-every", "1", "--eval-every", "100") == 0
    assert train_tiny(split, "--steps", "4", "--log-every", "1", "--eval-every", "100") == 0
    assert cli.main(["train", "--resume", str(split), "--steps", "10", "--no-progress"]) == 0
    a, b = run_metrics(straight), run_metrics(split)
    assert [r["step"] for r in b] == list(range(1, 11))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_resume_refuses_a_flag_that_changes_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "2") == 0
    assert cli.main(["train", "--resume", str(out), "--hidden", "16"]) == 2
    assert "--hidden 16 differs" in capsys.readouterr().err


def test_train_will_not_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "2") == 0
    assert train_tiny(out, "--steps", "2") == 2
    assert f"--resume {out}" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [("--log-every", "0", "--log-every must be at least 1, got 0"),
                                                  ("--clip", "-1", "--clip must be >= 0"),
                                                  ("--lr", "0", "--lr must be > 0")])
def test_flags_out_of_range_are_clear_errors(tmp_path, capsys, flag, value, message):
    assert train_tiny(tmp_path / "run", flag, value) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_without_out_runs_go_to_numbered_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--hidden", "4", "--seq-len", "4", "--batch", "2", "--steps", "1", "--eval-sequences", "4",
            "--backend", "cpu", "--no-progress"]
    assert cli.main(args) == 0 and cli.main(args) == 0
    assert sorted(os.listdir(tmp_path / "runs")) == ["adding-lstm", "adding-lstm-2"]


def test_resume_from_a_corrupted_checkpoint_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "2") == 0
    (out / "checkpoint.npz").write_bytes(b"not a checkpoint")
    assert cli.main(["train", "--resume", str(out)]) == 1
    assert "truncated or corrupted" in capsys.readouterr().err


def test_ctrl_c_saves_the_finished_steps_and_exits_cleanly(tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, 3)                    # SIGINT, what Ctrl-C sends
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "50") == 130
    assert load_checkpoint(out / "checkpoint.npz")["step"] == 3
    assert f"gpurnn train --resume {out}" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_non_finite_training_saves_the_last_good_step_and_names_the_failing_one(tmp_path, capsys):
    out = tmp_path / "run"
    status = cli.main(["train", "--hidden", "64", "--seq-len", "20", "--batch", "32", "--backend", "cpu",
                       "--no-progress", "--cell", "rnn", "--init-scale", "2", "--optimizer", "sgd", "--lr", "0.1",
                       "--clip", "0", "--steps", "200", "--out", str(out)])
    assert status == 1
    err = capsys.readouterr().err
    last = run_metrics(out)[-1]
    ck = load_checkpoint(out / "checkpoint.npz")
    assert last["step"] == ck["step"] + 1 and f"step {last['step']}:" in last["stopped"]
    assert f"step {last['step']}:" in err and "--clip" in err and "lower the learning rate" in err
    assert all(np.isfinite(v).all() for v in ck["model"].values())
    assert "gpurnn train: step" in err and "Start again with --clip 1 or a lower --lr" in err
    assert f"continue it with: gpurnn train --resume {out} --clip 1" in err      # the command line's words


def test_resume_may_change_the_learning_rate_and_clipping(tmp_path):
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "3", "--lr", "0.1", "--clip", "0") == 0
    resumed = ["train", "--resume", str(out), "--clip", "1", "--lr", "0.01", "--steps", "6", "--no-progress"]
    assert cli.main(resumed) == 0
    cfg = json.loads((out / "config.json").read_text())
    ck = load_checkpoint(out / "checkpoint.npz")
    assert cfg["clip"] == 1 and cfg["lr"] == 0.01 and ck["config"]["lr"] == 0.01
    assert ck["optimizer"]["lr"] == 0.01 and ck["step"] == 6


def test_grads_finds_vanishing_and_exploding_settings(tmp_path, capsys):
    out = tmp_path / "grads"
    assert cli.main(["grads", "--cell", "rnn,lstm", "--scales", "0.3,3", "--seq-len", "40", "--hidden", "16",
                     "--batch", "4", "--backend", "cpu", "--out", str(out)]) == 0
    data = json.loads((out / "grad_norms.json").read_text())
    rnn = {r["scale"]: r for r in data["results"] if r["cell"] == "rnn"}
    assert len(rnn[0.3]["dh_norms"]) == 40 and rnn[0.3]["dh_norms"][0] == 1.0
    assert rnn[0.3]["sigma_max"] == pytest.approx(0.3) and rnn[3.0]["sigma_max"] == pytest.approx(3.0)
    assert rnn[0.3]["dh_norms"][-1] < 1e-6 < 1e3 < rnn[3.0]["dh_norms"][-1]
    text = capsys.readouterr().out
    assert "rnn, W_hh scale 0.3 (sigma_max 0.30): vanishes" in text
    assert "rnn, W_hh scale 3 (sigma_max 3.00): explodes" in text
    assert "per step" in text
    pytest.importorskip("matplotlib")
    assert (out / "grad_norms.png").read_bytes()[:4] == b"\x89PNG"


def test_grads_measures_a_trained_run_on_its_own_task(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_tiny(run, "--steps", "2", "--cell", "lstm", "--layers", "2") == 0
    out = tmp_path / "grads"
    assert cli.main(["grads", "--run", str(run), "--seq-len", "6", "--batch", "3", "--backend", "cpu",
                     "--out", str(out)]) == 0
    (result,) = json.loads((out / "grad_norms.json").read_text())["results"]
    assert result["cell"] == "lstm" and result["run"] == str(run)
    assert "trained (adding, T=6, 2 steps)" in result["label"]
    assert len(result["dh_norms"]) == len(result["dc_norms"]) == 6 and result["dh_norms"][0] == 1.0
    assert all(n > 0 for n in result["dh_norms"])
    assert "lstm, trained" in capsys.readouterr().out
    assert cli.main(["grads", "--run", str(tmp_path / "missing"), "--out", str(out)]) == 1


def test_sample_generates_text_from_a_charlm_run(tmp_path, capsys):
    out = tmp_path / "lm"
    assert train_charlm(tmp_path / "text.txt", out, steps=5) == 0
    capsys.readouterr()
    assert cli.main(["sample", str(out), "--length", "40", "--prime", "ab", "--backend", "cpu"]) == 0
    sampled = capsys.readouterr().out.rstrip("\n")
    assert sampled.startswith("ab") and len(sampled) == 42 and set(sampled) <= set("abcd ")
    assert cli.main(["sample", str(out), "--prime", "xyz"]) == 2


def test_sample_refuses_a_run_that_is_not_a_language_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_tiny(out, "--steps", "1") == 0
    assert cli.main(["sample", str(out)]) == 2
    assert "needs a charlm run" in capsys.readouterr().err


def test_report_tabulates_runs_by_seed(tmp_path, capsys):
    for seed in (0, 1):
        assert train_tiny(tmp_path / f"s{seed}", "--steps", "3", "--seed", str(seed)) == 0
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 5 and table[0].startswith("settings common to every row: ") and table[1] == ""
    assert "(seed 0)" in table[4] and "(seed 1)" in table[4] and "largest gradient norm" in table[2]


def test_report_shows_where_a_run_diverged(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--hidden", "16", "--seq-len", "20", "--batch", "8", "--backend", "cpu",
                     "--no-progress", "--cell", "rnn", "--init-scale", "3", "--optimizer", "sgd", "--lr", "1",
                     "--clip", "0", "--steps", "100", "--out", str(out)]) == 1
    step = run_metrics(out)[-1]["step"]
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "--init-scale 3" in out[0] and "--clip 0" in out[0]          # one run: every setting is common
    assert f"diverged at step {step} (seed 0)" in out[4]


def test_python_dash_m_gpurnn_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "gpurnn", "train", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--tbptt" in done.stdout and "--resume" in done.stdout


def test_blas_threads_are_limited():
    """--blas-threads reaches NumPy's BLAS (checked through threadpoolctl, restored afterwards)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from gpurnn.cli import limit_blas_threads

    with threadpool_limits(limits=None):          # restores the original limits on exit
        assert limit_blas_threads(1) is True
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
    assert limit_blas_threads(0) is False


def test_plot_draws_runs_to_a_png_and_report_points_to_it(tmp_path, capsys):
    for seed in (0, 1):
        assert train_tiny(tmp_path / f"s{seed}", "--steps", "4", "--eval-every", "2", "--seed", str(seed)) == 0
    capsys.readouterr()
    runs = [str(tmp_path / "s0"), str(tmp_path / "s1")]
    assert cli.main(["report", *runs]) == 0
    assert f"gpurnn report: loss curves: gpurnn plot {' '.join(runs)} --out curves.png" in capsys.readouterr().err
    assert cli.main(["plot", *runs, "--out", str(tmp_path / "c.png")]) == 0
    assert capsys.readouterr().out == f"loss curves: {tmp_path / 'c.png'}\n"
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("command", ["report", "plot"])
def test_report_and_plot_of_a_folder_that_is_not_there_are_one_line(tmp_path, capsys, command):
    assert cli.main([command, str(tmp_path / "nope")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"gpurnn {command}: {tmp_path / 'nope'}: no such run folder\n"

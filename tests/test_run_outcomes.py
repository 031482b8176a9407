"""What a training run keeps and how it steers: the best held-out state (best.npz), early stopping,
the learning-rate schedule (against torch.optim.lr_scheduler), exact resume of all three, and the
files that say what the run is scored on (task.json) and what it ran with (config.json)."""

import json
import math
import signal

import numpy as np
import pytest

import gpurnn
from gpurnn import cli
from gpurnn.checkpoint import load_checkpoint
from gpurnn.model import Trainer
from gpurnn.runs import DEFAULTS
from gpurnn.schedule import Best, Schedule
from gpurnn.tasks import Adding

from conftest import interrupt_at, run_metrics

torch = pytest.importorskip("torch")

# An adding run small enough for a few dozen steps a second, and lively enough (lr 0.2) that its
# held-out score goes up and down.
LIVELY = dict(task="adding", cell="lstm", hidden=8, seq_len=10, batch=8, lr=0.2, backend="cpu", log_every=2,
              eval_every=2, eval_sequences=64)


def _fit(out, **config):
    return gpurnn.fit(out, **dict(LIVELY, **config), progress=False, log=lambda line: None)


# ---------------------------------------------------------------- the schedule, against torch's
def _torch_rates(make, steps, lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("kind, make", [
    ("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=40, eta_min=0.002)),
    ("step", lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.3)),
])
def test_cosine_and_step_schedules_are_torchs(kind, make):
    ours = Schedule(kind, 0.1, 40, decay=0.3, decay_every=7, min_lr=0.002 if kind == "cosine" else 0.0)
    np.testing.assert_allclose([ours.lr(s) for s in range(1, 41)], _torch_rates(make, 40), rtol=1e-12)


def test_warmup_ramps_linearly_then_hands_over_to_the_cosine():
    ours = Schedule("cosine", 0.1, 30, warmup=10)
    assert [ours.lr(s) for s in range(1, 11)] == pytest.approx([0.1 * s / 10 for s in range(1, 11)])
    after = _torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20), 20)
    np.testing.assert_allclose([ours.lr(s) for s in range(11, 31)], after, rtol=1e-12)


def test_reduce_on_plateau_is_torchs_with_patience_one_less():
    scores = [1.0, 0.8, 0.9, 0.85, 0.8, 0.7, 0.75, 0.71, 0.72, 0.69, 0.69, 0.7, 0.71]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1, threshold=0.0)
    ours, best = Schedule("plateau", 0.1, 100, decay=0.5, decay_every=2), Best(higher_is_better=False)
    for n, score in enumerate(scores):
        plateau.step(score)
        ours.evaluated(best.evaluated(n, score, score))
        assert ours.lr(n + 1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), n
    assert ours.reductions == 3        # the scores above do cut it, three times


def test_best_counts_strict_improvement_in_the_tasks_direction_and_never_a_nan():
    lower, higher = Best(False), Best(True)
    for step, value in enumerate([0.5, 0.4, 0.4, math.nan, 0.6]):
        lower.evaluated(step, value, value)
        higher.evaluated(step, value, value)
    assert (lower.step, lower.metric, lower.since) == (1, 0.4, 3)
    assert (higher.step, higher.metric, higher.since) == (4, 0.6, 0)


# ---------------------------------------------------------------- best, early stopping, resume
def test_best_npz_holds_the_best_evaluation_and_load_model_uses_it(tmp_path):
    run = _fit(tmp_path / "run", steps=30)
    evals = [r for r in run_metrics(tmp_path / "run") if "eval_metric" in r]
    scores = [r["eval_metric"] for r in evals]
    best = int(np.argmin(scores))
    assert scores[best] < scores[-1]                # this run's last state is not its best, so the test can tell
    assert (run.best_step, run.best_metric) == (evals[best]["step"], scores[best])
    assert [r.get("best", False) for r in evals] == [s < min(scores[:i], default=math.inf)
                                                     for i, s in enumerate(scores)]
    assert load_checkpoint(run.best_checkpoint)["step"] == run.best_step

    def held_out_mse(model):                        # the run's held-out set, scored independently
        held = Adding(10).eval_batches(0, 64, 500)
        x = np.concatenate([b.x for b in held], axis=1).transpose(1, 0, 2)
        y = np.concatenate([b.target[-1] for b in held])
        return float(np.mean((model.predict(x) - y) ** 2))

    assert held_out_mse(gpurnn.load_model(run.folder)) == pytest.approx(run.best_metric, rel=1e-5)
    assert held_out_mse(gpurnn.load_model(run.folder, checkpoint="last")) == pytest.approx(run.eval_metric, rel=1e-5)


def test_early_stop_ends_the_run_after_n_evaluations_without_improvement(tmp_path):
    run = _fit(tmp_path / "run", steps=400, early_stop=3)
    recs = run_metrics(tmp_path / "run")
    evals = [r for r in recs if "eval_metric" in r]
    assert run.status == "done" and run.stopped_early and run.exit_status == 0 and run.step < 400
    assert recs[-1] == {"step": run.step, "early_stop": f"3 evaluations without improving on step {run.best_step}'s "
                                                        f"held-out mse"}
    assert [r["step"] for r in evals[-4:]] == [run.best_step + 2 * k for k in range(4)]   # the best, then 3 more
    assert all(r["eval_metric"] >= run.best_metric for r in evals[-3:])
    assert load_checkpoint(run.checkpoint)["step"] == run.step

    # resumed as it is, it would stop again at once: nothing to do; a larger patience trains on
    with pytest.raises(gpurnn.AlreadyFinished, match=f"stopped early at step {run.step}: 3 evaluations"):
        gpurnn.fit(resume=tmp_path / "run", progress=False, log=lambda line: None)
    more = gpurnn.fit(resume=tmp_path / "run", early_stop=0, steps=run.step + 4, progress=False, log=lambda x: None)
    assert (more.status, more.step, more.stopped_early) == ("done", run.step + 4, False)


@pytest.mark.parametrize("schedule", [dict(schedule="plateau", decay_every=1, decay=0.5),
                                      dict(schedule="cosine", warmup=5, min_lr=0.01),
                                      dict(schedule="step", decay_every=6, decay=0.5, early_stop=4)])
def test_a_resumed_run_continues_its_schedule_and_best_exactly(tmp_path, schedule, monkeypatch):
    straight = _fit(tmp_path / "straight", steps=24, **schedule)
    interrupt_at(monkeypatch, 11, signal.SIGTERM)
    assert _fit(tmp_path / "split", steps=24, **schedule).step == 11
    monkeypatch.undo()
    resumed = gpurnn.fit(tmp_path / "elsewhere", resume=tmp_path / "split", progress=False, log=lambda line: None)
    a, b = run_metrics(tmp_path / "straight"), run_metrics(tmp_path / "elsewhere")
    fields = ("step", "loss", "lr", "eval_metric", "best", "early_stop")
    assert [[r.get(k) for k in fields] for r in a] == [[r.get(k) for k in fields] for r in b]
    assert (resumed.best_step, resumed.best_metric, resumed.stopped_early) == \
        (straight.best_step, straight.best_metric, straight.stopped_early)
    if schedule["schedule"] == "plateau":
        assert len({r["lr"] for r in a}) > 2         # the rate was cut, more than once, across the split
    x, y = load_checkpoint(straight.best_checkpoint), load_checkpoint(resumed.best_checkpoint)
    assert x["step"] == y["step"] and all(np.array_equal(x["model"][k], y["model"][k]) for k in x["model"])


def test_a_new_run_in_an_emptied_folder_drops_a_stale_best(tmp_path):
    out = tmp_path / "run"
    _fit(out, steps=4)
    (out / "checkpoint.npz").unlink()                # the folder reused for another run
    (out / "best.npz").write_bytes(b"stale")
    _fit(out, steps=1, eval_every=5)                 # no evaluation before it ends: only at its last step
    assert load_checkpoint(out / "best.npz")["step"] == 1


# ---------------------------------------------------------------- what the folder says
def test_task_json_names_the_metric_and_the_baseline(tmp_path):
    run = _fit(tmp_path / "run", steps=2, task="copy", seq_len=9, copy_len=2, lr=0.01)
    task = json.loads((tmp_path / "run" / "task.json").read_text())
    assert task["metric"] == run.metric == "accuracy" and task["higher_is_better"] is True
    assert task["baselines"] == [{"name": "chance", "value": run.baseline}] and run.baseline == 1 / 8


def test_config_json_holds_only_the_settings_that_apply_to_the_run(tmp_path):
    _fit(tmp_path / "adding", steps=1)
    cfg = json.loads((tmp_path / "adding" / "config.json").read_text())
    for key in ("copy_len", "text", "data", "target", "features", "horizon", "validation", "difference", "season",
                "decay", "decay_every", "min_lr"):
        assert key not in cfg, key
    assert {"hidden", "seq_len", "schedule", "early_stop", "warmup", "eval_sequences"} <= set(cfg)

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((40, 5, 2)), y=rng.standard_normal(40))
    gpurnn.fit(tmp_path / "data", data=tmp_path / "d.npz", steps=1, hidden=4, schedule="step", progress=False,
               log=lambda line: None)
    cfg = json.loads((tmp_path / "data" / "config.json").read_text())
    assert "copy_len" not in cfg and "eval_sequences" not in cfg and "target" not in cfg and "min_lr" not in cfg
    assert cfg["data"] == str(tmp_path / "d.npz") and cfg["validation"] == 0.2
    assert (cfg["decay"], cfg["decay_every"]) == (0.1, 1)         # steps // 3 of 1 step, at least 1


@pytest.mark.parametrize("given, key, message", [
    (dict(min_lr=0.001), "min_lr", "min_lr applies to schedule cosine; leave it out"),
    (dict(schedule="cosine", decay=0.5), "decay", "decay applies to schedule step or plateau"),
    (dict(schedule="cosine", min_lr=0.5, lr=0.1), "min_lr", "must be below lr=0.1"),
    (dict(schedule="step", decay=1.5), "decay", "decay must be a factor between 0 and 1"),
    (dict(early_stop=-1), "early_stop", "early_stop must be >= 0"),
    (dict(early_stop=2, eval_every=50, steps=10), "early_stop", "early_stop counts evaluations"),
    (dict(difference=True), "difference", "difference applies to data FILE.csv"),
    (dict(season=0), "season", "season must be at least 1"),
    (dict(schedule="linear"), "schedule", "schedule must be one of constant, cosine, step, plateau"),
])
def test_schedule_and_stopping_entries_are_checked_before_anything_is_written(tmp_path, given, key, message):
    with pytest.raises(gpurnn.ConfigError, match=message) as e:
        gpurnn.fit(tmp_path / "run", **given, progress=False)
    assert e.value.key == key and not (tmp_path / "run").exists()


def test_new_entries_have_defaults_that_change_nothing():
    assert (DEFAULTS["schedule"], DEFAULTS["warmup"], DEFAULTS["early_stop"], DEFAULTS["difference"]) == \
        ("constant", 0, 0, False)
    assert all(Schedule("constant", 0.01, 100).lr(s) == 0.01 for s in range(1, 101))


# ---------------------------------------------------------------- the command line
def test_train_takes_the_schedule_and_stopping_flags(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--hidden", "8", "--seq-len", "10", "--batch", "8", "--lr", "0.2", "--steps", "300",
                     "--eval-every", "2", "--log-every", "2", "--eval-sequences", "64", "--schedule", "plateau",
                     "--decay-every", "1", "--decay", "0.5", "--early-stop", "3", "--backend", "cpu", "--no-progress",
                     "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "stopped early (3 evaluations without improvement)" in err and f"saved in {out / 'best.npz'}" in err
    assert f"loss curves: gpurnn plot {out}" in err
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["schedule"], cfg["decay_every"], cfg["decay"], cfg["early_stop"]) == ("plateau", 1, 0.5, 3)
    assert cli.main(["train", "--resume", str(out), "--no-progress"]) == 0     # stopped early: nothing to do
    assert "--early-stop" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["train", "--hiden", "32"], "gpurnn train: error: unrecognized arguments: --hiden 32; did you mean --hidden?"),
    (["train", "--cell", "lstn"], "did you mean lstm?"),
    (["trian"], "did you mean train?"),
    (["predict", "run", "--data", "d.npz", "--out", "p.csv", "--lastt"], "did you mean --last?"),
    (["report", "run", "--bogus"], "gpurnn report: error: unrecognized arguments: --bogus"),
])
def test_a_mistyped_flag_or_command_names_the_nearest_one(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_version_and_every_command_and_flag_are_described(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"gpurnn {gpurnn.__version__}"
    parser = cli.build_parser()
    assert set(parser.commands) == {"train", "grads", "sample", "predict", "report", "plot"}
    for name, command in parser.commands.items():
        assert command.description, name
        for action in command._actions:
            assert action.help, f"gpurnn {name} {'/'.join(action.option_strings) or action.dest} has no help"


# ---------------------------------------------------------------- the best state across stops and resumes
def test_a_run_killed_between_a_better_state_and_its_checkpoint_never_keeps_a_state_it_threw_away(
        tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_step = Trainer.train_step

    def killed_at_step_80(self):          # a second Ctrl-C (or a kill): no save, the last checkpoint stays
        if self.step == 79:
            raise KeyboardInterrupt
        return real_step(self)
    monkeypatch.setattr(Trainer, "train_step", killed_at_step_80)
    _scores(monkeypatch, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])               # better at every evaluation
    with pytest.raises(KeyboardInterrupt):
        _fit(out, steps=100, eval_every=10, save_every=50)
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint.npz")["step"] == 50
    assert load_checkpoint(out / ".best-pending.npz")["step"] == 70        # better states after the checkpoint...
    assert load_checkpoint(out / "best.npz")["step"] == 50                 # ...wait for the next one

    _scores(monkeypatch, [0.55])                                            # the resumed run's one evaluation
    run = gpurnn.fit(resume=out, steps=60, progress=False, log=lambda line: None)    # now it ends at 60
    assert [r["step"] for r in run_metrics(out) if r.get("best")] == [10, 20, 30, 40, 50]
    assert run.best_step == 50 and load_checkpoint(out / "best.npz")["step"] == 50
    assert gpurnn.load_model(out).step == 50 and not (out / ".best-pending.npz").exists()


def test_resumed_into_another_folder_the_best_state_comes_along(tmp_path, monkeypatch):
    _scores(monkeypatch, [0.5, 0.4, 0.3, 0.2, 0.1, 0.15, 0.16, 0.17, 0.18, 0.19, 0.2])
    _fit(tmp_path / "a", steps=20)
    run = gpurnn.fit(tmp_path / "b", resume=tmp_path / "a", steps=21, eval_every=100, progress=False,
                     log=lambda line: None)
    assert run.best_step == 10 and load_checkpoint(tmp_path / "b" / "best.npz")["step"] == 10
    assert load_checkpoint(tmp_path / "a" / "best.npz")["step"] == 10


def _scores(monkeypatch, values):
    """Trainer.evaluate returns these held-out scores, one per call."""
    it = iter(values)
    monkeypatch.setattr(Trainer, "evaluate", lambda self: (v := next(it), v))


def test_early_stopping_on_the_last_step_is_no_early_stop(tmp_path, monkeypatch):
    _scores(monkeypatch, [0.5, 0.6, 0.7, 0.8])
    run = _fit(tmp_path / "run", steps=8, early_stop=3)
    assert (run.step, run.stopped_early, run.best_step) == (8, False, 2)
    assert all("early_stop" not in r for r in run_metrics(tmp_path / "run"))
    _scores(monkeypatch, [0.5, 0.6, 0.7, 0.8])
    run = _fit(tmp_path / "longer", steps=10, early_stop=3)
    assert (run.step, run.stopped_early) == (8, True)


def test_a_run_that_never_stopped_early_resumes_under_a_patience_it_has_used_up(tmp_path, monkeypatch):
    _scores(monkeypatch, [0.5, 0.6, 0.7])
    assert _fit(tmp_path / "run", steps=6).stopped_early is False
    _scores(monkeypatch, [0.4, 0.45, 0.46, 0.47])
    run = gpurnn.fit(resume=tmp_path / "run", steps=20, early_stop=2, progress=False, log=lambda line: None)
    assert (run.step, run.stopped_early, run.best_step) == (12, True, 8)    # trained on, then stopped


def test_a_run_from_before_best_states_were_kept_takes_its_best_from_its_metrics(tmp_path):
    from gpurnn import checkpoint as ck
    out = tmp_path / "run"
    _fit(out, steps=20, lr=0.01)
    with np.load(out / "checkpoint.npz") as f:                  # as an older gpurnn wrote it
        arrays = {k: f[k] for k in f.files if k != "checksum"}
    meta = json.loads(arrays["meta"].tobytes().decode())
    for key in ("best", "schedule", "stopped_early"):
        del meta["extra"][key]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays["checksum"] = np.frombuffer(ck._digest(arrays).encode(), dtype=np.uint8)
    np.savez(out / "checkpoint.npz", **arrays)
    (out / "best.npz").unlink()
    said = []
    run = gpurnn.fit(resume=out, steps=22, lr=10.0, eval_every=100, progress=False, log=said.append)
    evals = [r for r in run_metrics(out) if "eval_metric" in r]
    best = min(evals, key=lambda r: r["eval_metric"])
    assert run.best_step == best["step"] < 22 and run.best_metric == best["eval_metric"]
    assert "not kept (the run began before gpurnn kept best states)" in said[-2]
    assert gpurnn.load_model(out).which == "last"

"""A training run: ``gpurnn.fit`` trains a model as ``gpurnn train`` does, in a run folder that it
keeps current, and that a later run can continue exactly.

    run = gpurnn.fit("runs/gru", task="adding", cell="gru", hidden=64, steps=3000)
    run.status, run.step, run.eval_metric          # "done", 3000, the held-out MSE
    run = gpurnn.fit(resume="runs/gru", steps=5000)  # on to 5000 steps, as if it had never stopped
    m = gpurnn.load_model(run.folder)              # the trained model, to predict with

The config entries are the keys of ``gpurnn.runs.DEFAULTS``, named as ``gpurnn train``'s flags
(``seq_len`` for ``--seq-len``); an entry left out takes its default (the task's sequence length,
the optimiser's learning rate). The folder (``out``; default runs/<task>-<cell>, numbered if taken)
holds config.json (the settings that apply to the run), task.json (its metric and naive baselines),
metrics.jsonl (one JSON line per ``log_every`` steps, with held-out scores every ``eval_every``),
checkpoint.npz (the last state: every ``save_every`` steps, and at the end), best.npz (the state at
the best held-out evaluation, which load_model uses) and .lock, held for the whole run
(gpurnn/runs.py). ``early_stop`` ends the run after that many evaluations without improvement;
``schedule`` and its entries set the learning rate of each update (gpurnn/schedule.py).

What cannot start raises before anything is written: ConfigError (an entry unknown, of the wrong
kind, out of range, or at odds with another or with the run resumed; ``e.key`` names it),
AlreadyFinished (the resumed run is at ``steps`` already), RunBusy (another run holds the folder),
MemoryTooSmall, BackendUnavailable, CheckpointError (the run to resume is damaged) and DataError
(a data file that cannot be used). What happens once training has started comes back as a RunResult:
done, diverged (a non-finite loss, gradient or weight; the last good step is saved) or interrupted.
The first SIGINT (Ctrl-C), SIGTERM or SIGHUP stops the run after the current step, saved; a second
one stops it at once (KeyboardInterrupt), with the last checkpoint written intact.
"""

import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

from ._checks import Worded, keyword
from .checkpoint import CheckpointError, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .data import ArrayTask, DataError
from .datafiles import is_series
from .files import write_whole
from .model import NonFiniteError, Trainer, make_model
from .predict import check_weights, model_sizes
from .runs import (RESUME_OVERRIDES, ConfigError, RunLock, applicable, carry_metrics, check_config, check_data_file,
                   check_entries, check_memory, check_vocabulary, config_of_checkpoint, fits, format_metric, number_or,
                   plain_entries, read_metrics, resolve_config, window_of)
from .schedule import Best, Schedule
from .tasks import CharLM, make_task


class AlreadyFinished(Worded, Exception):
    """The run to resume has reached the steps asked for already: there is nothing to do, and
    nothing was changed."""


@dataclass(frozen=True)
class RunResult:
    """What a training run came to.

    ``status``: "done" (trained to its steps, or stopped early: ``stopped_early``), "diverged" (a
    non-finite value at step ``step + 1``) or "interrupted" (by ``signal``, e.g. "SIGINT").
    ``step``: the updates done, the last of them saved in ``checkpoint`` (0, and nothing saved, for
    a run interrupted before its first step). ``eval_loss`` and ``eval_metric``: the held-out
    scores at ``step`` when done (None otherwise), ``metric`` names the latter (e.g. "mse") and
    ``baseline`` is the task's naive score of it. ``best_step`` and ``best_metric``: the best
    held-out evaluation so far, whose state is saved in ``best_checkpoint`` (None before the first
    evaluation)."""

    folder: str
    status: str
    step: int
    metric: str
    baseline: float
    eval_loss: float | None = None
    eval_metric: float | None = None
    signal: str | None = None
    best_step: int | None = None
    best_metric: float | None = None
    stopped_early: bool = False

    @property
    def checkpoint(self):
        return os.path.join(self.folder, "checkpoint.npz")

    @property
    def best_checkpoint(self):
        return os.path.join(self.folder, BEST)

    @property
    def exit_status(self):
        """What ``gpurnn train`` exits with: 0 done, 1 diverged, 128 + the signal's number when
        interrupted (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP)."""
        if self.status == "interrupted":
            return 128 + int(signal.Signals[self.signal])
        return {"done": 0, "diverged": 1}[self.status]


@dataclass(frozen=True)
class Voice:
    """How a run's log lines name the run and its settings, so that what they advise (continue
    with..., start again with...) can be done where the run was started: from Python (PYTHON,
    the default: ``gpurnn.fit``, ``clip=1``) or from the command line, whose Voice gpurnn/cli.py
    passes (``gpurnn train``, ``--clip 1``)."""
    who: str                                    # what runs it: the prefix of its lines
    name: Callable                              # a setting, given its key and optionally its value
    call: Callable                              # the call that starts a run, given named settings
    same: str                                   # how to start the same run over

    def again(self, **entries):
        """The call that starts a run with ``entries`` (``resume`` first, to continue one)."""
        return self.call([self.name(key, value) for key, value in entries.items()])


PYTHON = Voice("gpurnn.fit", keyword, lambda named: f"gpurnn.fit({', '.join(named)})",
               "call gpurnn.fit again with the same arguments")


def fit(out=None, *, resume=None, progress=True, log=None, voice=PYTHON, **config):
    """Train (or, with ``resume``, a run folder, continue) the run that ``config`` describes, in the
    folder ``out``, and return its RunResult (see the module docstring).

    ``resume``: the config is the resumed run's; ``steps`` (above the step reached), ``lr``,
    ``clip``, ``backend``, ``early_stop`` and the logging intervals may change, other entries must match. With
    ``out`` another folder (new or empty), the run continues there, its metrics carried over.
    ``progress``: a progress bar on stderr. ``log``: a function that takes each line the run
    reports (default: print it to stderr). ``voice``: how those lines name the run and its
    settings (a Voice; Python's by default)."""
    log = log or _stderr
    given = plain_entries(config)
    out = None if out is None else os.fspath(out)
    ckpt, history = None, None
    if resume is not None:
        resume = os.fspath(resume)
        check_entries(given)
        ckpt = load_checkpoint(os.path.join(resume, "checkpoint.npz"))
        cfg = resumed_config(ckpt, os.path.join(resume, "checkpoint.npz"), given)
        if cfg["steps"] <= ckpt["step"]:
            raise _nothing_to_do(resume, ckpt["step"], cfg["steps"])
        _refuse_stopped_early(resume, ckpt, cfg["early_stop"])
        out = out or resume
        if not _same_folder(out, resume):
            history = os.path.join(resume, "metrics.jsonl")
    else:
        cfg = resolve_config(given)
        out = out or default_out(cfg)
    try:
        task = prepare_task(cfg, ckpt, resume, _warner(voice, log))   # before anything is allocated or written
        with RunLock(out):
            check_out(out, ckpt, history)
            with _StopFlag() as stop:
                return _train(cfg, out, ckpt, task, history, progress, log, voice, stop)
    except KeyboardInterrupt:       # a second signal: stop now; the last checkpoint written is intact
        ckpt_path = os.path.join(out, "checkpoint.npz")
        if os.path.exists(ckpt_path):
            log(f"\n{voice.who}: stopped at once; {ckpt_path} holds the last saved step. Continue with: "
                f"{voice.again(resume=out)}")
        else:
            log(f"\n{voice.who}: stopped at once, before the first checkpoint: nothing was saved; {voice.same} "
                f"to start over")
        raise


def _warner(voice, log):
    """A function that logs a warning (a line of its own, prefixed as the run's lines are)."""
    return lambda message: log(f"{voice.who}: warning: {message}")


def _stderr(msg):
    print(msg, file=sys.stderr)


def resumed_config(ckpt, path, given):
    """The config of the run in the checkpoint ``ckpt`` (at ``path``), with the entries ``given``
    that may change on resume (RESUME_OVERRIDES); a ConfigError names one that would change
    anything else. A text or data file may be given at another path (it moved): prepare_task
    checks that its content is the run's."""
    cfg = config_of_checkpoint(ckpt, path)
    for key, value in given.items():
        if key in RESUME_OVERRIDES:
            cfg[key] = value
        elif key in ("text", "data") and cfg[key] is not None:
            cfg[key] = os.path.abspath(value)
        elif value != cfg[key]:
            raise ConfigError(lambda name, key=key, value=value: f"{name(key, value)} differs from the resumed run's "
                                                                 f"{cfg[key]}; leave it out to resume (only "
                                                                 f"{', '.join(RESUME_OVERRIDES)} may change)", key)
    check_config(cfg)
    return cfg


def _nothing_to_do(resume, step, steps):
    """AlreadyFinished when the resumed run is at ``steps``; a ConfigError when it is past them."""
    what = "already finished" if steps == step else "already past that"
    kind = AlreadyFinished if steps == step else ConfigError

    def message(name):
        return (f"the run in {resume} is at step {step}, {what} ({name('steps', steps)}); give {name('steps')} "
                f"above {step} to train further. Nothing was changed.")
    return kind(message, "steps")


def _refuse_stopped_early(resume, ckpt, patience):
    """AlreadyFinished when the resumed run stopped early and ``patience`` (early_stop) would stop
    it again at once."""
    best = Best(False)
    best.load_state(ckpt["extra"].get("best"))
    if ckpt["extra"].get("stopped_early") is True and patience and best.since >= patience:
        def message(name):
            return (f"the run in {resume} stopped early at step {ckpt['step']}: {best.since} evaluations without "
                    f"improving on step {best.step}'s; give a larger {name('early_stop')}, or "
                    f"{name('early_stop', 0)} to turn it off, to train further. Nothing was changed.")
        raise AlreadyFinished(message, "early_stop")


def default_out(cfg):
    """runs/<task>-<cell> (your data: the file's name for the task), numbered if taken."""
    name = cfg["task"] if cfg["data"] is None else os.path.splitext(os.path.basename(cfg["data"]))[0]
    base = os.path.join("runs", f"{name}-{cfg['cell']}")
    out, n = base, 1
    while os.path.exists(out):
        n += 1
        out = f"{base}-{n}"
    return out


def _same_folder(a, b):
    return os.path.abspath(a) == os.path.abspath(b)


def check_out(out, ckpt, history):
    """A ConfigError when ``out`` may not take this run: a new run never overwrites another, and a
    run resumed into another folder needs it new or empty. Called while holding its lock."""
    if ckpt is None:
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise ConfigError(lambda name: f"{out} already holds a run (checkpoint.npz); continue it with "
                                           f"{name('resume', out)}, or choose another {name('out')}", "out")
    elif history is not None:
        taken = sorted(n for n in os.listdir(out) if n != RunLock.NAME)
        if taken:
            raise ConfigError(lambda name: f"{name('out', out)} is not empty (it holds {', '.join(taken[:4])}); a "
                                           f"resumed run continues in its own folder, or in a new or empty one: "
                                           f"choose another {name('out')}", "out")


def prepare_task(cfg, ckpt, resumed_from, warn):
    """The task of ``cfg``, after the checks that need it and allocate nothing: a resumed charlm
    run's vocabulary against its text, a resumed data run's file against the one it started on, a
    resumed run's weights against its config (CheckpointError), and the configuration's memory
    against what is available (MemoryTooSmall). A run on a .npz takes
    its seq_len (T) from the file, into ``cfg``. ``warn`` takes a warning (a changed text)."""
    if ckpt is not None:
        for key in ("data", "text"):
            if cfg[key] is not None and not os.path.isfile(cfg[key]):
                raise DataError(lambda name, key=key: f"the {key} file {cfg[key]} of the run in {resumed_from} is "
                                                      f"gone; if it moved, give its new path with {name(key)} "
                                                      f"(its content must be the run's)", key)
    if cfg["task"] == "data":
        task = data_task(cfg)
        if ckpt is not None:
            check_data_file(task, ckpt, resumed_from)
        cfg["seq_len"] = task.seq_len
    else:
        task = make_task(cfg["task"], cfg["seq_len"], text_path=cfg["text"], copy_len=cfg["copy_len"])
    if ckpt is not None and isinstance(task, CharLM):
        check_vocabulary(task, ckpt, resumed_from, warn)
    if ckpt is not None:                 # the weights are the config's before a model of its size is built
        check_weights(ckpt["model"], cfg, model_sizes(cfg, task.input_size, task.output_size, task.tokens),
                      os.path.join(resumed_from, "checkpoint.npz"))
    check_memory(task, cfg)
    return task


def data_task(cfg):
    """The ArrayTask of a run on your data (a DataError, naming the file, for a file it cannot use)."""
    from .datafiles import sha256_of, task_from_file

    series = is_series(cfg["data"])
    features = None if cfg["features"] is None else [f.strip() for f in cfg["features"].split(",") if f.strip()]
    task = task_from_file(cfg["data"], seq_len=cfg["seq_len"] if series else None, target=cfg["target"],
                          horizon=cfg["horizon"], features=features, validation=cfg["validation"],
                          seed=cfg["seed"], difference=cfg["difference"], season=cfg["season"])
    task.data_sha256 = sha256_of(cfg["data"])
    return task


def build_trainer(task, cfg):
    """The Trainer (and its model) of a config, for its task."""
    model = make_model(task, cfg["cell"], cfg["hidden"], cfg["layers"], embed_size=cfg["embed"],
                       recurrent_scale=cfg.get("init_scale"), backend=cfg["backend"], dtype=cfg["dtype"],
                       seed=cfg["seed"])
    return Trainer(model, task, optimizer=cfg["optimizer"], lr=cfg["lr"], clip=cfg["clip"],
                   tbptt=cfg["tbptt"], batch_size=cfg["batch"], seed=cfg["seed"],
                   eval_sequences=cfg["eval_sequences"])


def compile_kernels(model, log, announce_after=1.0):
    """Compile the cpu backend's kernels for the model's cell and dtype before the first step.

    With an empty Numba cache that takes seconds (a first run, or the first after an install or an
    upgrade); a cache hit takes a few tenths. The message goes out only once it has taken
    ``announce_after`` seconds, so a cached run prints nothing."""
    if model.backend.name != "cpu":
        return
    import threading

    from .kernels import cpu
    what = f"{model.rnn.cell}, {model.rnn.dtype}"
    timer = threading.Timer(announce_after, log, [f"compiling the CPU kernels for {what} (first run only: "
                                                  f"Numba keeps them in its cache for later runs) ..."])
    timer.daemon = True
    start = time.perf_counter()
    timer.start()
    try:
        cpu.compile_kernels(model.rnn.cell, model.rnn.dtype)
    finally:
        timer.cancel()
    took = time.perf_counter() - start
    if took >= announce_after:
        log(f"compiled the CPU kernels for {what} in {took:.1f} s")


class _StopFlag:
    """The first SIGINT (Ctrl-C), SIGTERM or SIGHUP asks the loop to stop after the current step; a
    second one stops at once (KeyboardInterrupt)."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self):
        self.signum = None             # the signal once one has arrived
        self._previous = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:       # not the main thread: no signal can reach this loop anyway
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        for sig in self._previous:
            signal.signal(sig, _interrupt_now)

    @property
    def requested(self):
        """The name of the signal received (None before one arrives)."""
        return None if self.signum is None else signal.Signals(self.signum).name

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)   # None: set outside Python
        return False


def _interrupt_now(signum, frame):
    raise KeyboardInterrupt


def _train(cfg, out, ckpt, task, history, progress, log, voice, stop):
    """The training loop of ``fit``, in ``out`` (whose lock the caller holds), from the loaded
    checkpoint ``ckpt`` when resuming (``history``: the resumed run's metrics.jsonl when it
    continues in another folder)."""
    from tqdm import tqdm

    trainer = build_trainer(task, cfg)
    os.makedirs(out, exist_ok=True)
    removed = remove_stale_temporaries(out)
    if removed:
        log(f"{voice.who}: removed {len(removed)} temporary file(s) of checkpoint writes that were killed "
            f"({', '.join(removed[:3])})")
    metrics_path = os.path.join(out, "metrics.jsonl")
    ckpt_path, best_path, pending_path = (os.path.join(out, name) for name in ("checkpoint.npz", BEST, PENDING))
    elapsed0, window = 0.0, dict(loss=0.0, metric=0.0, n=0, gmax=0.0)
    schedule = Schedule(cfg["schedule"], cfg["lr"], cfg["steps"], warmup=cfg["warmup"], decay=cfg["decay"],
                        decay_every=cfg["decay_every"], min_lr=cfg["min_lr"])
    best = Best(task.higher_is_better)
    if ckpt is not None:
        trainer.load_state(ckpt)
        elapsed0 = number_or(ckpt["extra"].get("elapsed", 0.0))
        window.update(window_of(ckpt["extra"].get("window")))
        schedule.load_state(ckpt["extra"].get("schedule"))
        carry_metrics(history or metrics_path, metrics_path, trainer.step, _warner(voice, log))
        if "best" in ckpt["extra"]:
            best.load_state(ckpt["extra"]["best"])
        else:                            # a run from before best states were kept: its evaluations say
            for r in read_metrics(metrics_path) if os.path.exists(metrics_path) else []:
                if "eval_metric" in r and fits(r["eval_metric"], float):
                    best.evaluated(r["step"], number_or(r.get("eval_loss"), math.nan), r["eval_metric"])
        keep_best(os.path.dirname(os.path.abspath(history)) if history else out, out, best.step)
    else:
        for stale in (metrics_path, best_path, pending_path):
            if os.path.exists(stale):
                os.remove(stale)
    _write_json(os.path.join(out, "config.json"), dict(applicable(cfg), backend_used=trainer.model.backend.name))
    _write_json(os.path.join(out, "task.json"), task_scoring(task))

    extra = {}                       # the task's config and vocabulary come with trainer.state()
    if isinstance(task, CharLM):
        extra["text_sha256"] = task.text_sha256      # a changed text is told on resume
    if isinstance(task, ArrayTask):
        extra["data_sha256"] = task.data_sha256      # and so is a changed data file

    def save(path=ckpt_path):
        """The state to ``path``: checkpoint.npz, and then the best state waiting beside it becomes
        best.npz, so that best.npz is always the best evaluation a checkpoint knows (a run killed
        in between keeps the pending one only if its checkpoint names it: keep_best)."""
        extra["elapsed"] = elapsed0 + (time.perf_counter() - t0)
        extra["window"] = {k: window[k] for k in ("loss", "metric", "n", "gmax")}   # the open log line
        extra["best"], extra["schedule"] = best.state(), schedule.state()
        extra["stopped_early"] = stopped_early
        save_checkpoint(path, trainer.state(), cfg, extra)
        if path == ckpt_path and os.path.exists(pending_path):
            os.replace(pending_path, best_path)

    def result(status, **scores):
        return RunResult(out, status, trainer.step, task.metric, task.baseline, signal=interrupted,
                         best_step=best.step, best_metric=best.metric, stopped_early=stopped_early, **scores)

    metric = task.metric
    log(f"{task.describe()}")
    log(f"model: {trainer.model!r}, {trainer.model.num_parameters():,} parameters; "
        f"{cfg['optimizer']} lr {cfg['lr']:g}, clip {cfg['clip'] or 'off'}, "
        f"{'truncated BPTT k=' + str(trainer.tbptt) if trainer.tbptt else 'full BPTT'}; run folder {out}")
    steps, first = int(cfg["steps"]), trainer.step
    compile_kernels(trainer.model, log)     # before the bar, so that its rate and ETA are the steps'
    t0 = time.perf_counter()
    window.update(t=t0, timed=0)          # the sequences-per-second window: this process's steps only
    last, interrupted, stopped_early = None, None, False
    bar = tqdm(total=steps, initial=trainer.step, disable=not progress, unit="step", dynamic_ncols=True,
               file=sys.stderr)
    with open(metrics_path, "a") as metrics:
        while trainer.step < steps:
            if stop.requested:
                interrupted = stop.requested
                break
            lr = trainer.opt.lr = schedule.lr(trainer.step + 1)
            try:
                loss, m, norm = trainer.train_step()
            except NonFiniteError as e:
                save()
                bar.close()
                metrics.write(json.dumps({"step": e.step, "stopped": str(e)}) + "\n")
                log(f"{voice.who}: {e} The last good state (step {trainer.step}) is saved in {ckpt_path}. "
                    f"Start again with {voice.name('clip', 1)} or a lower {voice.name('lr')}, or, if its weights "
                    f"have not grown too large yet, continue it with: {voice.again(resume=out, clip=1)}")
                return result("diverged")
            step = trainer.step
            window["loss"] += loss
            window["metric"] += m
            window["n"] += 1
            window["timed"] += 1
            window["gmax"] = max(window["gmax"], norm)
            bar.update(1)
            if step % cfg["log_every"] == 0 or step == steps:
                now = time.perf_counter()
                rec = {"step": step, "loss": window["loss"] / window["n"],
                       "metric": window["metric"] / window["n"], "grad_norm": norm,
                       "grad_norm_max": window["gmax"],
                       "elapsed": round(elapsed0 + now - t0, 3),
                       "sequences_per_s": round(window["timed"] * cfg["batch"] / max(now - window["t"], 1e-9), 1),
                       "lr": lr}
                evaluated = step % cfg["eval_every"] == 0 or step == steps
                if evaluated:
                    rec["eval_loss"], rec["eval_metric"] = trainer.evaluate()
                    last = rec
                    if best.evaluated(step, rec["eval_loss"], rec["eval_metric"]):
                        rec["best"] = True
                        save(pending_path)
                    schedule.evaluated(rec.get("best", False))
                metrics.write(json.dumps(rec) + "\n")
                if evaluated and cfg["early_stop"] and best.since >= cfg["early_stop"] and step < steps:
                    stopped_early = True
                    metrics.write(json.dumps({"step": step, "early_stop": f"{best.since} evaluations without "
                                              f"improving on step {best.step}'s held-out {metric}"}) + "\n")
                metrics.flush()
                postfix = f"loss {rec['loss']:.4f}, {metric} {rec['metric']:.4f}, |g| {norm:.3g}, " \
                          f"{rec['sequences_per_s']:.0f} seq/s"
                if last is not None:
                    postfix += f", eval {metric} {last['eval_metric']:.4f}"
                bar.set_postfix_str(postfix, refresh=False)
                window = dict(loss=0.0, metric=0.0, n=0, gmax=0.0, t=time.perf_counter(), timed=0)
            if step % cfg["save_every"] == 0:
                save()
            if stopped_early:
                break
        if interrupted and trainer.step == first and ckpt is None:
            bar.close()
            log(f"{voice.who}: interrupted ({interrupted}) before the first step; nothing was saved. "
                f"{voice.same[0].upper() + voice.same[1:]} to start.")
            return result("interrupted")
        if trainer.step > first or not os.path.exists(ckpt_path):
            save()
    bar.close()
    if interrupted:
        log(f"{voice.who}: interrupted ({interrupted}); step {trainer.step} saved in {ckpt_path}. "
            f"Continue with: {voice.again(resume=out)}")
        return result("interrupted")
    if last is None or last["step"] != trainer.step:
        loss, m = trainer.evaluate()
        last = {"step": trainer.step, "eval_loss": loss, "eval_metric": m}
    better = "higher" if task.higher_is_better else "lower"
    baselines = ", ".join(f"({name}) {format_metric(value)}" for name, value in baselines_of(task))
    early = (f"stopped early ({best.since} evaluations without improvement): " if stopped_early else "")
    if best.step is not None and os.path.exists(best_path):
        log(f"best held-out {metric}: {format_metric(best.metric)} at step {best.step}, saved in {best_path} "
            f"(what predict and load_model use); loss curves: gpurnn plot {out}")
    elif best.step is not None:
        log(f"best held-out {metric}: {format_metric(best.metric)} at step {best.step}, not kept (the run began "
            f"before gpurnn kept best states): predict and load_model use the last; loss curves: gpurnn plot {out}")
    log(f"{early}step {trainer.step}: held-out {metric} {format_metric(last['eval_metric'])} (baseline {baselines}, "
        f"{better} is better); saved {ckpt_path}")
    return result("done", eval_loss=last["eval_loss"], eval_metric=last["eval_metric"])


BEST = "best.npz"          # the state at the best held-out evaluation, beside checkpoint.npz (the last)
PENDING = ".best-pending.npz"   # a better state than best.npz's, until the next checkpoint is written


def keep_best(source, out, step):
    """Make ``out``'s best.npz the state of step ``step`` (the best evaluation the resumed
    checkpoint knows; None: none yet), taken from ``source``'s best.npz or pending best, or no
    best.npz at all when neither holds that step: a state from steps after the checkpoint (a
    run killed between writing them) is never kept."""
    found = None
    for name in (PENDING, BEST):
        path = os.path.join(source, name)
        if step is not None and os.path.isfile(path) and _step_of(path) == step:
            found = path
            break
    best_path, pending_path = os.path.join(out, BEST), os.path.join(out, PENDING)
    if found is None:
        for stale in (best_path, pending_path):
            if os.path.exists(stale):
                os.remove(stale)
    elif found == pending_path:
        os.replace(pending_path, best_path)
    elif found != best_path:
        _copy_whole(found, best_path)
    if os.path.exists(pending_path):
        os.remove(pending_path)


def _step_of(path):
    """The step of the checkpoint at ``path``, or None when it cannot be read."""
    try:
        return load_checkpoint(path)["step"]
    except CheckpointError:
        return None


def baselines_of(task):
    """[(what, score)] of the task's naive predictions on its held-out data, the task's own first."""
    return list(getattr(task, "baselines", None) or [(task.naive_name, task.baseline)])


def task_scoring(task):
    """What task.json holds: how the run is scored (the metric, which way is better, the loss) and
    the naive baselines, so that a report can show them without loading the data."""
    return {"task": task.describe(), "metric": task.metric, "higher_is_better": bool(task.higher_is_better),
            "loss": task.loss,
            "baselines": [{"name": name, "value": float(value)} for name, value in baselines_of(task)]}


def _write_json(path, value):
    """``value`` as JSON into ``path``, whole or not at all (files.write_whole)."""
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    write_whole(path, lambda f: f.write(text.encode()))


def _copy_whole(source, path):
    """A copy of ``source`` at ``path``, whole or not at all (files.write_whole)."""
    with open(source, "rb") as f:
        write_whole(path, lambda out: shutil.copyfileobj(f, out))

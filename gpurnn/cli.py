"""The ``gpurnn`` command: train, measure gradient norms through time, sample text, report runs.

    gpurnn train [--task adding|copy|charlm] [--cell rnn|rnn-relu|lstm|gru] ... [--out DIR]
    gpurnn train --data FILE.npz | --data FILE.csv --target COLUMN [--seq-len T] [--horizon H] ...
    gpurnn train --resume DIR [--steps N]
    gpurnn predict DIR --data FILE --out PRED.npy
    gpurnn grads [--cell rnn,lstm,gru] [--seq-len T] [--scales 0.5,1,2] [--out DIR]
    gpurnn sample DIR [--length N] [--prime TEXT] [--temperature 0.8]
    gpurnn report DIR [DIR ...]

A training run keeps its files in a run folder (gpurnn/runs.py): config.json (what was run),
metrics.jsonl (one JSON line per logged step), checkpoint.npz (everything needed to continue
exactly, and to rebuild the model for prediction: gpurnn.load_model) and .lock (held while a
gpurnn train writes the folder).
"""

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

from .backend import BackendUnavailable
from .checkpoint import CheckpointError, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .data import ArrayTask
from .datafiles import is_series
from .kernels.vocabulary import BACKENDS, MODEL_CELLS
from .model import OPTIMIZERS, NonFiniteError, Trainer, make_model
from .runs import (DATA_FLAGS, DEFAULTS, OPTIMIZER_LR, RESUME_OVERRIDES, SERIES_DEFAULTS, TASK_SEQ_LEN, RunBusy,
                   RunLock, carry_metrics, check_config, check_data_file, check_memory, check_vocabulary,
                   config_of_checkpoint, number_or, read_metrics, window_of)
from .tasks import TASKS, CharLM, make_task


def main(argv=None):
    """Entry point of the ``gpurnn`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


def build_parser():
    p = argparse.ArgumentParser(prog="gpurnn", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a model (with no options: an LSTM on the adding problem, T = 50)",
                       description="Train a recurrent network with BPTT. Every option defaults to a "
                                   "sensible value; with none at all an LSTM learns the adding problem.")
    t.add_argument("--task", choices=TASKS, help="adding (default), copy or charlm; or your data: --data")
    t.add_argument("--data", metavar="FILE", help="train on your data: a .npz with arrays x (N, T, I), y (N, O) "
                                                 "or (N, T, O) values or (N,) or (N, T) integer labels, and "
                                                 "optionally lengths (N,); or a .csv time series (--target)")
    t.add_argument("--target", metavar="COLUMN", help="CSV series: the column to forecast")
    t.add_argument("--features", metavar="A,B,...", help="CSV series: the columns read at each step "
                                                         "(default: every numeric column, the target included)")
    t.add_argument("--horizon", type=int, help="CSV series: forecast the target this many rows after each "
                                               "window's last row (default 1)")
    t.add_argument("--validation", type=float, help="--data: the fraction held out to evaluate on (default 0.2; "
                                                    "a .npz's drawn by --seed, a series' last windows)")
    t.add_argument("--cell", choices=MODEL_CELLS, help="rnn (tanh), rnn-relu, lstm (default) or gru")
    t.add_argument("--hidden", type=int, help="hidden units per layer (default 64)")
    t.add_argument("--layers", type=int, help="stacked recurrent layers (default 1)")
    t.add_argument("--seq-len", type=int, help="sequence length T (default: adding 50, copy 30, charlm 100, "
                                               "a CSV series' windows 32)")
    t.add_argument("--batch", type=int, help="sequences per step (default 32)")
    t.add_argument("--steps", type=int, help="total updates (default 2000); with --resume, the new total")
    t.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (default) or sgd")
    t.add_argument("--lr", type=float, help="learning rate (default: adam 0.01, sgd 0.1)")
    t.add_argument("--clip", type=float, help="clip the gradient norm to this value; 0 turns clipping off (default 1)")
    t.add_argument("--tbptt", type=int, help="truncated BPTT segment length k; 0 = full BPTT (default)")
    t.add_argument("--backend", choices=BACKENDS, help="default auto")
    t.add_argument("--seed", type=int, help="seed of the weights and of the data (default 0)")
    t.add_argument("--text", help="charlm: a UTF-8 text file (default: Python standard library docstrings)")
    t.add_argument("--embed", type=int, help="size of the input embedding / projection (default: tokens "
                                             "use the hidden size, features go straight into the first layer)")
    t.add_argument("--init-scale", type=float, help="start each W_hh gate block as a random orthogonal matrix "
                                                    "times this (default: torch's uniform initialisation)")
    t.add_argument("--copy-len", type=int, help="copy: symbols to remember (default 10)")
    t.add_argument("--log-every", type=int, help="steps per metrics.jsonl line (default 10)")
    t.add_argument("--eval-every", type=int, help="steps between evaluations on held-out data (default 100)")
    t.add_argument("--save-every", type=int, help="steps between checkpoints (default 100)")
    t.add_argument("--eval-sequences", type=int, help="size of the held-out set (default 1000; with --data, "
                                                            "--validation sets it)")
    t.add_argument("--dtype", choices=("float32", "float64"), help="default float32")
    t.add_argument("--out", help="run folder (default runs/<task>-<cell>, numbered if taken)")
    t.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl is still written)")
    t.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads (default 1: the per-step products are small, and threads fighting "
                        "over shared cores cost more than they give); 0 leaves BLAS's own choice")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("grads", help="measure ||dL/dh_t|| through time for several recurrent-weight scales",
                       description="For each cell and scale: W_hh's H x H blocks are random orthogonal "
                                   "matrices times the scale, the loss is a fixed readout of the last "
                                   "step's state, and ||dL/dh_t|| is measured for every t.")
    g.add_argument("--cell", help="comma-separated cells (default rnn,lstm,gru, or none when --run is given)")
    g.add_argument("--seq-len", type=int, default=100, help="sequence length T (default 100)")
    g.add_argument("--scales", default="0.5,1,2", help="comma-separated W_hh scales (default 0.5,1,2)")
    g.add_argument("--hidden", type=int, default=64)
    g.add_argument("--batch", type=int, default=16)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backend", default="auto", choices=BACKENDS)
    g.add_argument("--run", action="append", default=[], metavar="DIR",
                   help="also measure the trained recurrent layers of this run, on its own task's inputs "
                        "(repeatable)")
    g.add_argument("--out", default="runs/grads", help="folder for grad_norms.json and grad_norms.png")
    g.add_argument("--blas-threads", type=int, default=1)
    g.set_defaults(func=cmd_grads)

    s = sub.add_parser("sample", help="generate text from a charlm run")
    s.add_argument("run", help="a run folder (or its checkpoint.npz) trained with --task charlm")
    s.add_argument("--length", type=int, default=500, help="characters to generate (default 500)")
    s.add_argument("--prime", default="\n", help="text the model reads first (default a newline)")
    s.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (default 0.8)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--backend", default="auto", choices=BACKENDS)
    s.set_defaults(func=cmd_sample)

    q = sub.add_parser("predict", help="predict with a trained model on a data file",
                       description="Read FILE as the run's training data was read (a .npz's x and lengths; "
                                   "every window of a CSV series) and write the model's predictions: class "
                                   "labels, or values in the data's units.")
    q.add_argument("run", help="a run folder (or its checkpoint.npz)")
    q.add_argument("--data", required=True, metavar="FILE", help="a .npz with x (and lengths), or a .csv series")
    q.add_argument("--out", required=True, metavar="PRED.npy", help="where to write the predictions (.npy)")
    q.add_argument("--proba", action="store_true", help="classification: class probabilities instead of labels")
    q.add_argument("--backend", default="auto", choices=BACKENDS)
    q.set_defaults(func=cmd_predict)

    r = sub.add_parser("report", help="a Markdown table of finished runs, seeds side by side")
    r.add_argument("runs", nargs="+", help="run folders")
    r.set_defaults(func=cmd_report)
    return p


# ---------------------------------------------------------------- train
def resolve_config(args):
    """The full config of a new run: defaults, then the task's and optimiser's, then the flags given.
    A run on a .npz gets its seq_len from the file (prepare_task)."""
    cfg = dict(DEFAULTS)
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    if cfg["data"] is not None:
        cfg["task"] = "data"
        cfg["data"] = os.path.abspath(cfg["data"])
        if is_series(cfg["data"]):
            for key, value in SERIES_DEFAULTS.items():
                cfg[key] = value if cfg[key] is None else cfg[key]
    elif cfg["seq_len"] is None:
        cfg["seq_len"] = TASK_SEQ_LEN[cfg["task"]]
    if cfg["lr"] is None:
        cfg["lr"] = OPTIMIZER_LR[cfg["optimizer"]]
    if cfg["text"] is not None:
        cfg["text"] = os.path.abspath(cfg["text"])
    return cfg


def data_flag_problem(args):
    """Why the data flags given do not go together (None when they do): a .npz gives its sequences
    as they are, and --validation only means something for --data."""
    if args.data is None:
        if args.validation is not None:
            return "--validation applies to --data FILE; leave it out"
        return None
    if args.task is not None:
        return f"--data FILE trains on your data, --task {args.task} on a built-in task: give one of them"
    if not is_series(args.data):
        for key in DATA_FLAGS:
            if getattr(args, key) is not None:
                return (f"--{key.replace('_', '-')} applies to a CSV series; {args.data}'s arrays give the "
                        f"sequences as they are: leave it out")
    return None


def _default_out(cfg):
    name = cfg["task"] if cfg["data"] is None else os.path.splitext(os.path.basename(cfg["data"]))[0]
    base = os.path.join("runs", f"{name}-{cfg['cell']}")
    out, n = base, 1
    while os.path.exists(out):
        n += 1
        out = f"{base}-{n}"
    return out


def cmd_train(args):
    limit_blas_threads(args.blas_threads)
    ckpt, history = None, None
    if args.resume:
        try:
            ckpt = load_checkpoint(os.path.join(args.resume, "checkpoint.npz"))
            cfg = config_of_checkpoint(ckpt, os.path.join(args.resume, "checkpoint.npz"))
        except CheckpointError as e:
            print(f"gpurnn train: {e}", file=sys.stderr)
            return 1
        for key in DEFAULTS:
            value = getattr(args, key, None)
            if value is None:
                continue
            if key in RESUME_OVERRIDES:
                cfg[key] = value
            elif value != cfg.get(key) and not (key in ("text", "data") and os.path.abspath(value) == cfg.get(key)):
                print(f"gpurnn train: --{key.replace('_', '-')} {value} differs from the resumed run's "
                      f"{cfg.get(key)}; leave it out to resume (only {', '.join(RESUME_OVERRIDES)} may change)",
                      file=sys.stderr)
                return 2
        if cfg["steps"] <= ckpt["step"]:
            what = "already finished" if cfg["steps"] == ckpt["step"] else "already past that"
            print(f"gpurnn train: the run in {args.resume} is at step {ckpt['step']}, {what} (--steps "
                  f"{cfg['steps']}); give --steps above {ckpt['step']} to train further. Nothing was changed.",
                  file=sys.stderr)
            return 2 if cfg["steps"] < ckpt["step"] else 0
        out = args.out or args.resume
        if not _same_folder(out, args.resume):
            history = os.path.join(args.resume, "metrics.jsonl")
    else:
        problem = data_flag_problem(args)
        if problem:
            print(f"gpurnn train: {problem}", file=sys.stderr)
            return 2
        cfg = resolve_config(args)
        out = args.out or _default_out(cfg)
    problem = check_config(cfg)
    if problem:
        print(f"gpurnn train: {problem}", file=sys.stderr)
        return 2
    try:
        task = prepare_task(cfg, ckpt, args.resume)      # before anything is allocated or written
        with RunLock(out):
            problem = _out_problem(out, ckpt, history)
            if problem:
                print(f"gpurnn train: {problem}", file=sys.stderr)
                return 2
            return train(cfg, out, ckpt, progress=not args.no_progress, history=history, task=task)
    except RunBusy as e:
        print(f"gpurnn train: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:       # a second Ctrl-C: stop now; the last checkpoint written is intact
        ckpt_path = os.path.join(out, "checkpoint.npz")
        if os.path.exists(ckpt_path):
            print(f"\ngpurnn train: stopped at once; {ckpt_path} holds the last saved step. Continue with: "
                  f"gpurnn train --resume {out}", file=sys.stderr)
        else:
            print("\ngpurnn train: stopped at once, before the first checkpoint: nothing was saved; "
                  "run the same command again to start over", file=sys.stderr)
        return 130
    except BackendUnavailable as e:
        print(_unavailable("train", e), file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as e:       # MemoryTooSmall is a ValueError
        print(f"gpurnn train: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("gpurnn train: out of memory; use a smaller --hidden, --layers, --batch or --eval-sequences",
              file=sys.stderr)
        return 2


def _unavailable(command, e):
    """A BackendUnavailable as the command line says it."""
    return f"gpurnn {command}: backend {e.name!r} is not usable here: {e.reason}; use --backend cpu"


def prepare_task(cfg, ckpt=None, resumed_from=None):
    """The task of ``cfg``, after the checks that need it and allocate nothing: a resumed charlm
    run's vocabulary against its text, a resumed data run's file against the one it started on, and
    the configuration's memory against what is available (MemoryTooSmall). A run on a .npz takes
    its seq_len (T) from the file, into ``cfg``."""
    if cfg["task"] == "data":
        task = data_task(cfg)
        if ckpt is not None:
            check_data_file(task, ckpt, resumed_from)
        cfg["seq_len"] = task.seq_len
    else:
        task = make_task(cfg["task"], cfg["seq_len"], text_path=cfg["text"], copy_len=cfg["copy_len"])
    if ckpt is not None and isinstance(task, CharLM):
        check_vocabulary(task, ckpt, resumed_from)
    check_memory(task, cfg)
    return task


def data_task(cfg):
    """The ArrayTask of a run on your data (a DataError, naming the file, for a file it cannot use)."""
    from .datafiles import sha256_of, task_from_file

    series = is_series(cfg["data"])
    features = None if cfg["features"] is None else [f.strip() for f in cfg["features"].split(",") if f.strip()]
    task = task_from_file(cfg["data"], seq_len=cfg["seq_len"] if series else None, target=cfg["target"],
                          horizon=cfg["horizon"], features=features, validation=cfg["validation"],
                          seed=cfg["seed"])
    task.data_sha256 = sha256_of(cfg["data"])
    return task


def _same_folder(a, b):
    return os.path.abspath(a) == os.path.abspath(b)


def _out_problem(out, ckpt, history):
    """Why ``out`` may not take this run (None when it may); called while holding its lock."""
    if ckpt is None:
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            return (f"{out} already holds a run (checkpoint.npz); continue it with --resume {out}, "
                    f"or choose another --out")
    elif history is not None:
        taken = sorted(n for n in os.listdir(out) if n != RunLock.NAME)
        if taken:
            return (f"--out {out} is not empty (it holds {', '.join(taken[:4])}); a resumed run continues "
                    f"in its own folder, or in a new or empty one: choose another --out")
    return None


class _StopFlag:
    """The first Ctrl-C (SIGINT), SIGTERM or SIGHUP asks the loop to stop after the current step; a
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

    @property
    def status(self):
        """The exit status for the signal received: 128 + its number (130 for Ctrl-C)."""
        return 128 + int(self.signum)

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)   # None: set outside Python
        return False


def _interrupt_now(signum, frame):
    raise KeyboardInterrupt


def train(cfg, out, ckpt=None, progress=True, log=None, history=None, task=None):
    """Run (or continue, from the loaded checkpoint ``ckpt``) the training described by ``cfg``,
    keeping ``out``/config.json, metrics.jsonl and checkpoint.npz current (``history``: the
    metrics.jsonl of the resumed run when it continues in a new folder; ``task``: the task of
    ``cfg``, when the caller has made it already). Returns the exit status:
    0 done, 1 stopped on a non-finite value, 128 + the signal's number when stopped by Ctrl-C
    (130), SIGTERM (143) or SIGHUP (129). Raises MemoryTooSmall, before allocating, for a
    configuration that cannot fit here. The caller holds the folder's RunLock (cmd_train does)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    with _StopFlag() as stop:
        return _train(cfg, out, ckpt, progress, log, history, stop, task)


def _train(cfg, out, ckpt, progress, log, history, stop, task):
    from tqdm import tqdm

    if task is None:
        task = prepare_task(cfg, ckpt, out)
    trainer = build_trainer(task, cfg)
    os.makedirs(out, exist_ok=True)
    removed = remove_stale_temporaries(out)
    if removed:
        log(f"gpurnn train: removed {len(removed)} temporary file(s) of checkpoint writes that were killed "
            f"({', '.join(removed[:3])})")
    metrics_path = os.path.join(out, "metrics.jsonl")
    ckpt_path = os.path.join(out, "checkpoint.npz")
    elapsed0, window = 0.0, dict(loss=0.0, metric=0.0, n=0, gmax=0.0)
    if ckpt is not None:
        trainer.load_state(ckpt)
        trainer.opt.lr = float(cfg["lr"])          # the checkpoint's, unless --lr changed it
        elapsed0 = number_or(ckpt["extra"].get("elapsed", 0.0))
        window.update(window_of(ckpt["extra"].get("window")))
        carry_metrics(history or metrics_path, metrics_path, trainer.step, log)
    elif os.path.exists(metrics_path):
        os.remove(metrics_path)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(dict(cfg, backend_used=trainer.model.backend.name), f, indent=2, sort_keys=True)
        f.write("\n")

    extra = {"task": task.config()}
    if isinstance(task, CharLM):
        extra["vocab"] = task.chars
        extra["text_sha256"] = task.text_sha256
    if isinstance(task, ArrayTask):
        extra["data_sha256"] = task.data_sha256

    def save():
        extra["elapsed"] = elapsed0 + (time.perf_counter() - t0)
        extra["window"] = {k: window[k] for k in ("loss", "metric", "n", "gmax")}   # the open log line
        save_checkpoint(ckpt_path, trainer.state(), cfg, extra)

    metric = task.metric
    log(f"{task.describe()}")
    log(f"model: {trainer.model!r}, {trainer.model.num_parameters():,} parameters; "
        f"{cfg['optimizer']} lr {cfg['lr']:g}, clip {cfg['clip'] or 'off'}, "
        f"{'truncated BPTT k=' + str(trainer.tbptt) if trainer.tbptt else 'full BPTT'}; run folder {out}")
    steps, first = int(cfg["steps"]), trainer.step
    compile_kernels(trainer.model, log)     # before the bar, so that its rate and ETA are the steps'
    t0 = time.perf_counter()
    window.update(t=t0, timed=0)          # the sequences-per-second window: this process's steps only
    status, last = 0, None
    bar = tqdm(total=steps, initial=trainer.step, disable=not progress, unit="step", dynamic_ncols=True,
               file=sys.stderr)
    with open(metrics_path, "a") as metrics:
        while trainer.step < steps:
            if stop.requested:
                status = stop.status
                break
            try:
                loss, m, norm = trainer.train_step()
            except NonFiniteError as e:
                save()
                bar.close()
                metrics.write(json.dumps({"step": e.step, "stopped": str(e)}) + "\n")
                log(f"gpurnn train: {e} The last good state (step {trainer.step}) is saved in {ckpt_path}. "
                    f"Start again with --clip 1 or a lower --lr, or, if its weights have not grown too "
                    f"large yet, continue it with: gpurnn train --resume {out} --clip 1")
                return 1
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
                       "sequences_per_s": round(window["timed"] * cfg["batch"] / max(now - window["t"], 1e-9), 1)}
                if step % cfg["eval_every"] == 0 or step == steps:
                    rec["eval_loss"], rec["eval_metric"] = trainer.evaluate()
                    last = rec
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                postfix = f"loss {rec['loss']:.4f}, {metric} {rec['metric']:.4f}, |g| {norm:.3g}, " \
                          f"{rec['sequences_per_s']:.0f} seq/s"
                if last is not None:
                    postfix += f", eval {metric} {last['eval_metric']:.4f}"
                bar.set_postfix_str(postfix, refresh=False)
                window = dict(loss=0.0, metric=0.0, n=0, gmax=0.0, t=time.perf_counter(), timed=0)
            if step % cfg["save_every"] == 0:
                save()
        if status and trainer.step == first and ckpt is None:
            bar.close()
            log(f"gpurnn train: interrupted ({stop.requested}) before the first step; nothing was saved. "
                f"Run the same command again to start.")
            return status
        if trainer.step > first or not os.path.exists(ckpt_path):
            save()
    bar.close()
    if status:
        log(f"gpurnn train: interrupted ({stop.requested}); step {trainer.step} saved in {ckpt_path}. "
            f"Continue with: gpurnn train --resume {out}")
        return status
    if last is None or last["step"] != trainer.step:
        loss, m = trainer.evaluate()
        last = {"step": trainer.step, "eval_loss": loss, "eval_metric": m}
    better = "higher" if task.higher_is_better else "lower"
    naive = f" ({task.naive_name})" if isinstance(task, ArrayTask) else ""
    log(f"step {trainer.step}: held-out {metric} {_metric(last['eval_metric'])} (baseline{naive} "
        f"{_metric(task.baseline)}, {better} is better); saved {ckpt_path}")
    return status


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


def build_trainer(task, cfg):
    """The Trainer (and its model) of a config, for its task."""
    model = make_model(task, cfg["cell"], cfg["hidden"], cfg["layers"], embed_size=cfg["embed"],
                       recurrent_scale=cfg.get("init_scale"), backend=cfg["backend"], dtype=cfg["dtype"],
                       seed=cfg["seed"])
    return Trainer(model, task, optimizer=cfg["optimizer"], lr=cfg["lr"], clip=cfg["clip"],
                   tbptt=cfg["tbptt"], batch_size=cfg["batch"], seed=cfg["seed"],
                   eval_sequences=cfg["eval_sequences"])


def limit_blas_threads(n):
    """Limit the BLAS that NumPy loaded (OpenBLAS, MKL, BLIS...) to ``n`` threads for the rest of the
    process; 0 or None leaves it alone. Returns whether a limit was set."""
    if not n or n < 1:
        return False
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=int(n), user_api="blas")
    return True


# ---------------------------------------------------------------- grads
def cmd_grads(args):
    from .gradnorms import grad_norms_of_run, grad_norms_through_time, plot_grad_norms, verdict

    limit_blas_threads(args.blas_threads)
    if args.cell is None:
        args.cell = "" if args.run else "rnn,lstm,gru"
    cells = [c.strip() for c in args.cell.split(",") if c.strip()]
    for c in cells:
        if c not in MODEL_CELLS:
            print(f"gpurnn grads: unknown cell {c!r}; expected some of {', '.join(MODEL_CELLS)}", file=sys.stderr)
            return 2
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        print(f"gpurnn grads: --scales must be comma-separated numbers, got {args.scales!r}", file=sys.stderr)
        return 2
    results = []
    try:
        for cell in cells:
            for scale in scales:
                results.append(grad_norms_through_time(cell, args.seq_len, scale, hidden_size=args.hidden,
                                                       batch_size=args.batch, seed=args.seed, backend=args.backend))
        for run in args.run:
            results.append(grad_norms_of_run(run, args.seq_len, batch_size=args.batch, seed=args.seed,
                                             backend=args.backend))
    except CheckpointError as e:
        print(f"gpurnn grads: {e}", file=sys.stderr)
        return 1
    except BackendUnavailable as e:
        print(_unavailable("grads", e), file=sys.stderr)
        return 2
    if not results:
        print("gpurnn grads: nothing to measure (give --cell and --scales, or --run)", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "grad_norms.json")
    with open(json_path, "w") as f:
        json.dump({"seq_len": args.seq_len, "hidden": args.hidden, "batch": args.batch, "seed": args.seed,
                   "results": results}, f, indent=1)
        f.write("\n")
    print(f"||dL/dh_t|| for T = {args.seq_len}, loss on the last step only (written to {json_path}):")
    for r in results:
        print("  " + verdict(r))
    png = plot_grad_norms(results, os.path.join(args.out, "grad_norms.png"))
    if png:
        print(f"plot: {png}")
    else:
        print("plot: skipped (matplotlib is not installed; pip install 'gpurnn[plot]')")
    return 0


# ---------------------------------------------------------------- sample
def _load_run(command, run, backend):
    """``load_model`` for a command: (the TrainedModel, None), or (None, the exit status) once the
    reason is printed: 1 for a checkpoint that cannot be used, 2 for a backend that is not usable."""
    from .predict import load_model

    try:
        return load_model(run, backend=backend), None
    except CheckpointError as e:
        print(f"gpurnn {command}: {e}", file=sys.stderr)
        return None, 1
    except BackendUnavailable as e:
        print(_unavailable(command, e), file=sys.stderr)
        return None, 2


def cmd_sample(args):
    trained, status = _load_run("sample", args.run, args.backend)
    if trained is None:
        return status
    if trained.config["task"] != "charlm":
        print(f"gpurnn sample: {trained.path} was trained on task {trained.config['task']!r}; sampling needs a "
              f"charlm run", file=sys.stderr)
        return 2
    if args.temperature <= 0:
        print("gpurnn sample: --temperature must be > 0", file=sys.stderr)
        return 2
    try:
        text = sample_text(trained.model, trained.task["vocab"], args.prime, args.length, args.temperature, args.seed)
    except ValueError as e:
        print(f"gpurnn sample: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(args.prime + text + "\n")
    return 0


def sample_text(model, vocab, prime, length, temperature=1.0, seed=0):
    """``length`` characters drawn one at a time from ``model`` after it has read ``prime``."""
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted(set(prime) - set(index))
    if not prime or unknown:
        raise ValueError(f"the prime text must be non-empty and use the model's characters; unknown: {unknown}")
    xp = model.backend.xp
    rng = np.random.default_rng(seed)
    ids = np.array([[index[c]] for c in prime], dtype=np.int64)      # (T, 1)
    out, state = model(xp.asarray(ids))
    chosen = []
    for _ in range(length):
        logits = model.backend.to_host(out[-1, 0]).astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        nxt = int(rng.choice(len(vocab), p=p / p.sum()))
        chosen.append(vocab[nxt])
        out, state = model(xp.asarray(np.array([[nxt]], dtype=np.int64)), state)
    return "".join(chosen)


# ---------------------------------------------------------------- predict
def cmd_predict(args):
    """Write the predictions of a trained model on a data file, read as its training data was."""
    if not args.out.endswith(".npy"):
        print(f"gpurnn predict: --out {args.out}: the predictions are written as a .npy file; name it PRED.npy",
              file=sys.stderr)
        return 2
    model, status = _load_run("predict", args.run, args.backend)
    if model is None:
        return status
    try:
        pred = model.predict_file(args.data, proba=args.proba)
    except (ValueError, TypeError) as e:           # DataError is a ValueError
        print(f"gpurnn predict: {e}", file=sys.stderr)
        return 2
    folder = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(args.out)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, pred)
        os.replace(tmp, args.out)             # a failed write leaves no half-written predictions
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    what = "class probabilities" if args.proba else "class labels" if model.kind == "classification" else "values"
    print(f"gpurnn predict: {len(pred)} predictions ({what}, array {pred.shape} {pred.dtype}) of {model.path} "
          f"(step {model.step}) written to {args.out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- report
def cmd_report(args):
    """One Markdown row per configuration, its seeds side by side: the held-out metric at the last
    evaluation (or where training stopped) and the largest gradient norm seen before clipping.

    A run that has not reached its last step shows where it is ("step 500 of 2000, unfinished") and,
    like a diverged one, leaves the row's mean out; two runs of one configuration and seed (a copy,
    or a rerun) are both listed with their folders, and the mean counts the seed once (the first
    given)."""
    rows = {}
    for run in args.runs:
        try:
            with open(os.path.join(run, "config.json")) as f:
                cfg = json.load(f)
            recs = read_metrics(os.path.join(run, "metrics.jsonl"),
                                warn=lambda m: print(f"gpurnn report: warning: {m}", file=sys.stderr))
            kinds = dict(task=str, cell=str, init_scale=float, seq_len=int, hidden=int, steps=int, optimizer=str,
                         lr=float, clip=float, data=str)     # a hand-edited config.json fails here, not below
            key = tuple((k, None if k in ("init_scale", "clip", "data") and cfg.get(k) is None else kind(cfg[k]))
                        for k, kind in kinds.items())
            seed = int(cfg["seed"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"gpurnn report: skipping {run}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        evals = [r for r in recs if "eval_metric" in r]
        final = evals[-1] if evals else None
        gmax = max((r.get("grad_norm_max", r.get("grad_norm", 0.0)) for r in recs if "stopped" not in r),
                   default=0.0)
        reached = max((r["step"] for r in recs if "stopped" not in r), default=0)
        try:                              # the checkpoint knows the step even between log lines
            reached = max(reached, load_checkpoint(os.path.join(run, "checkpoint.npz"))["step"])
        except CheckpointError:
            pass
        if recs and "stopped" in recs[-1]:
            value, final = f"diverged at step {recs[-1]['step']}", None
        elif reached < dict(key)["steps"]:
            shown = "" if final is None else f"{_metric(final['eval_metric'])} at "
            value, final = f"{shown}step {reached} of {dict(key)['steps']}, unfinished", None
        else:
            value = "—" if final is None else _metric(final["eval_metric"])
        rows.setdefault(key, []).append((seed, value, final, gmax, run))
    print("| task | cell | T | hidden | steps | optimizer, lr | clip | held-out metric, per seed | mean "
          "| largest gradient norm |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def order(key):
        k = dict(key)
        cells = list(MODEL_CELLS)
        return (k["task"], k["data"] or "", k["seq_len"], cells.index(k["cell"]) if k["cell"] in cells else len(cells),
                k["init_scale"] or 0, k["clip"] or 0)
    for key, runs in sorted(rows.items(), key=lambda kv: order(kv[0])):
        k = dict(key)
        runs.sort(key=lambda r: r[0])
        seeds = [r[0] for r in runs]
        repeated = {s for s in seeds if seeds.count(s) > 1}
        if repeated:
            print(f"gpurnn report: warning: runs {', '.join(r[4] for r in runs if r[0] in repeated)} have the same "
                  f"configuration and seed; the mean counts each seed once", file=sys.stderr)
        per_seed = ", ".join(f"{v} (seed {s}{', ' + run if s in repeated else ''})" for s, v, _, _, run in runs)
        once = {}
        for s, _, final, _, _ in runs:
            once.setdefault(s, final)
        finals = [f["eval_metric"] for f in once.values() if f is not None]
        mean = _metric(sum(finals) / len(finals)) if finals and len(finals) == len(once) else "—"
        cell = k["cell"] + ("" if k["init_scale"] is None else f", W_hh scale {k['init_scale']:g}")
        task = k["task"] if k["data"] is None else os.path.basename(k["data"])      # your data: its file
        print(f"| {task} | {cell} | {k['seq_len']} | {k['hidden']} | {k['steps']} | "
              f"{k['optimizer']} {k['lr']:g} | {k['clip'] or 'off'} | {per_seed} | {mean} | "
              f"{max(r[3] for r in runs):.3g} |")
    return 0


def _metric(v):
    """Four decimals, or three significant digits where four decimals would show nothing (2.1e-05)."""
    return f"{v:.4f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.3g}"

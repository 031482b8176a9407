"""The ``gpurnn`` command: train, measure gradient norms through time, sample text, report runs.

    gpurnn train [--task adding|copy|charlm] [--cell rnn|rnn-relu|lstm|gru] ... [--out DIR]
    gpurnn train --data FILE.npz | --data FILE.csv --target COLUMN [--seq-len T] [--horizon H] ...
    gpurnn train --resume DIR [--steps N]
    gpurnn predict DIR --data FILE --out PRED.npy
    gpurnn grads [--cell rnn,lstm,gru] [--seq-len T] [--scales 0.5,1,2] [--out DIR]
    gpurnn sample DIR [--length N] [--prime TEXT] [--temperature 0.8]
    gpurnn report DIR [DIR ...]

``gpurnn train`` is one call of gpurnn.fit (gpurnn/training.py), the training run, which keeps its
files in a run folder (gpurnn/runs.py): config.json (what was run), metrics.jsonl (one JSON line per
logged step), checkpoint.npz (everything needed to continue exactly, and to rebuild the model for
prediction: gpurnn.load_model) and .lock (held while the run writes the folder). The library names
config entries by their keys (``seq_len``); this module names them as flags (``--seq-len``, ``flag``)
and turns what the library raises into one line and an exit status (``said``, TRAIN_EXIT_STATUS).
"""

import argparse
import json
import os
import sys

import numpy as np

from ._checks import Worded
from .backend import BackendUnavailable
from .checkpoint import CheckpointError, load_checkpoint
from .data import DataError
from .kernels.vocabulary import BACKENDS, MODEL_CELLS
from .model import OPTIMIZERS
from .runs import DEFAULTS, ConfigError, MemoryTooSmall, RunBusy, format_metric, read_metrics
from .tasks import TASKS
from .training import AlreadyFinished, Voice, fit


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
def cmd_train(args):
    """The flags given, as gpurnn.fit's config; its outcome, or what stopped it, as the exit status."""
    limit_blas_threads(args.blas_threads)
    given = {key: getattr(args, key) for key in DEFAULTS if getattr(args, key, None) is not None}
    try:
        return fit(args.out, resume=args.resume, progress=not args.no_progress, voice=COMMAND_LINE,
                   **given).exit_status
    except TRAIN_FAILURES as e:
        status = next(status for kind, status in TRAIN_EXIT_STATUS if isinstance(e, kind))
        if not isinstance(e, KeyboardInterrupt):        # after a second signal fit has said where the run stands
            print(said("train", e), file=sys.stderr)
        return status


# What gpurnn train exits with when gpurnn.fit raises, the first kind that matches (once it has run,
# RunResult.exit_status: 0 done, 1 diverged, 128 + the signal's number interrupted).
TRAIN_EXIT_STATUS = (
    (AlreadyFinished, 0),       # the resumed run is at --steps already: nothing to do
    (CheckpointError, 1),       # the run to resume is damaged
    (KeyboardInterrupt, 130),   # a second signal: stopped at once
    (ConfigError, 2), (RunBusy, 2), (MemoryTooSmall, 2), (BackendUnavailable, 2), (DataError, 2),
    (MemoryError, 2),
    (ValueError, 2), (TypeError, 2), (OSError, 2))     # a damaged metrics.jsonl, an unreadable text, ...
TRAIN_FAILURES = tuple(kind for kind, _ in TRAIN_EXIT_STATUS)


def flag(key, value=None):
    """How the command line names a config entry: as its flag (``--seq-len``), with its value when
    one is given (``--seq-len 50``)."""
    name = "--" + key.replace("_", "-")
    return name if value is None else f"{name} {value}"


# How gpurnn train's log lines name the run and its settings (gpurnn.fit's are Python's).
COMMAND_LINE = Voice("gpurnn train", flag, lambda named: " ".join(["gpurnn train"] + named),
                     "run the same command again")


def said(command, e):
    """The one line that ``gpurnn COMMAND`` prints for the library's exception ``e``: config entries
    named as flags, a backend that is not usable with the flag that avoids it."""
    if isinstance(e, BackendUnavailable):
        return f"gpurnn {command}: backend {e.name!r} is not usable here: {e.reason}; use --backend cpu"
    if isinstance(e, MemoryError):
        return f"gpurnn {command}: out of memory; use a smaller --hidden, --layers, --batch or --eval-sequences"
    return f"gpurnn {command}: {e.worded(flag) if isinstance(e, Worded) else e}"


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
        print(said("grads", e), file=sys.stderr)
        return 1
    except BackendUnavailable as e:
        print(said("grads", e), file=sys.stderr)
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
        print(said(command, e), file=sys.stderr)
        return None, 1
    except BackendUnavailable as e:
        print(said(command, e), file=sys.stderr)
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
        print(said("sample", e), file=sys.stderr)
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
        print(said("predict", e), file=sys.stderr)
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
            shown = "" if final is None else f"{format_metric(final['eval_metric'])} at "
            value, final = f"{shown}step {reached} of {dict(key)['steps']}, unfinished", None
        else:
            value = "—" if final is None else format_metric(final["eval_metric"])
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
        mean = format_metric(sum(finals) / len(finals)) if finals and len(finals) == len(once) else "—"
        cell = k["cell"] + ("" if k["init_scale"] is None else f", W_hh scale {k['init_scale']:g}")
        task = k["task"] if k["data"] is None else os.path.basename(k["data"])      # your data: its file
        print(f"| {task} | {cell} | {k['seq_len']} | {k['hidden']} | {k['steps']} | "
              f"{k['optimizer']} {k['lr']:g} | {k['clip'] or 'off'} | {per_seed} | {mean} | "
              f"{max(r[3] for r in runs):.3g} |")
    return 0

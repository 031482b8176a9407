"""The ``gpurnn`` command: train, predict, measure gradient norms through time, sample text, report
and plot runs.

    gpurnn train [--task adding|copy|charlm] [--cell rnn|rnn-relu|lstm|gru] ... [--out DIR]
    gpurnn train --data FILE.npz | --data FILE.csv --target COLUMN [--seq-len T] [--horizon H] ...
    gpurnn train --resume DIR [--steps N]
    gpurnn predict DIR --data FILE --out PRED.csv|.npz|.npy [--last]
    gpurnn grads [--cell rnn,lstm,gru] [--seq-len T] [--scales 0.5,1,2] [--out DIR]
    gpurnn sample DIR [--length N] [--prime TEXT] [--temperature 0.8]
    gpurnn report DIR [DIR ...]
    gpurnn plot DIR [DIR ...] [--out curves.png]

``gpurnn train`` is one call of gpurnn.fit (gpurnn/training.py), the training run, which keeps its
files in a run folder (gpurnn/runs.py): config.json (what was run), task.json (how it is scored, and
the naive baselines), metrics.jsonl (one JSON line per logged step), checkpoint.npz (everything
needed to continue exactly), best.npz (the state at the best held-out evaluation, which
prediction uses: gpurnn.load_model) and .lock (held while the run writes the folder). The library names
config entries by their keys (``seq_len``); this module names them as flags (``--seq-len``, ``flag``)
and, in one place for every command (``main``), turns whatever a command raises into one line and
an exit status (``said``, EXIT_STATUS): bad input, a failing filesystem and Ctrl-C included.
"""

import argparse
import difflib
import errno
import json
import math
import os
import sys

import numpy as np

from ._checks import Worded
from .backend import BackendUnavailable
from .checkpoint import CheckpointError
from .data import DataError, check_room
from .files import write_whole
from .kernels.vocabulary import BACKENDS, MODEL_CELLS
from .model import OPTIMIZERS
from .report import report
from .runs import DEFAULTS, SCHEDULES, ConfigError, MemoryTooSmall, RunBusy, flag
from .tasks import TASKS
from .training import AlreadyFinished, Voice, fit


def main(argv=None):
    """Entry point of the ``gpurnn`` console script; returns the exit status. Whatever a command
    raises becomes one line on stderr and a status here (``failed``): no command shows a traceback
    for bad input, a failing filesystem or Ctrl-C (``GPURNN_TRACEBACK=1`` shows it, for a bug)."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:             # said by the command's own parser: its usage, and the flag meant
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        if os.environ.get("GPURNN_TRACEBACK") == "1":
            raise
        return failed(args.command, e)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose error for a mistyped flag, command or choice names the nearest one
    (``--hiden``: did you mean --hidden?)."""

    def error(self, message):
        super().error(message + nearest(self, message))


def nearest(parser, message):
    """"; did you mean X?" for argparse's ``message`` about an unknown flag or an invalid choice
    (the closest of ``parser``'s flags, or of the choices the message lists), or ""."""
    import re
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        wanted, known = choice.group(1), [c.strip(" '") for c in choice.group(2).split(",")]
    elif message.startswith("unrecognized arguments:"):
        flags = [w.split("=")[0] for w in message.split(":", 1)[1].split() if w.startswith("--")]
        if not flags:
            return ""
        wanted, known = flags[0], [o for o in parser._option_string_actions if o.startswith("--")]
    else:
        return ""
    close = difflib.get_close_matches(wanted, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def build_parser():
    from . import __version__

    p = Parser(prog="gpurnn", description="Train recurrent networks (RNN, LSTM, GRU) with backpropagation through "
                                          "time, on built-in tasks or your own data; predict with them, and report "
                                          "and plot runs.",
               epilog="gpurnn COMMAND --help describes a command and each of its flags.")
    p.add_argument("--version", action="version", version=f"gpurnn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    p.commands = sub.choices

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
    t.add_argument("--difference", action="store_true", default=None,
                   help="CSV series: train on the changes from row to row and forecast the change from each "
                        "window's last value; predictions and scores stay in the series' own levels")
    t.add_argument("--season", type=int, metavar="N", help="CSV series: rows per season (e.g. 12 for monthly "
                                                           "data): also score the seasonal-naive forecast, the "
                                                           "value a season before the target (N rows; whole "
                                                           "seasons, N*ceil(h/N), at --horizon h), as a baseline")
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
    t.add_argument("--schedule", choices=SCHEDULES,
                   help="learning rate: constant (default); cosine from --lr down to --min-lr over the run; "
                        "step: times --decay every --decay-every steps; plateau: times --decay after "
                        "--decay-every evaluations without improvement")
    t.add_argument("--warmup", type=int, metavar="STEPS", help="raise the learning rate linearly from 0 over the "
                                                               "first STEPS updates (default 0: none)")
    t.add_argument("--decay", type=float, help="--schedule step or plateau: the factor of each decay (default 0.1)")
    t.add_argument("--decay-every", type=int, metavar="N", help="--schedule step: steps between decays (default "
                                                                "a third of --steps); plateau: evaluations without "
                                                                "improvement before a decay (default 2)")
    t.add_argument("--min-lr", type=float, help="--schedule cosine: the learning rate it ends at (default 0)")
    t.add_argument("--early-stop", type=int, metavar="N", help="stop after N evaluations without a better held-out "
                                                               "score (default 0: train every --steps); the best "
                                                               "state is kept either way, in best.npz")
    t.add_argument("--tbptt", type=int, help="truncated BPTT segment length k; 0 = full BPTT (default)")
    t.add_argument("--backend", choices=BACKENDS, help=BACKEND_HELP)
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
    t.add_argument("--dtype", choices=("float32", "float64"), help="precision of the weights and activations "
                                                                   "(default float32)")
    t.add_argument("--out", help="run folder (default runs/<task>-<cell>, numbered if taken)")
    t.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl is still written)")
    t.add_argument("--blas-threads", type=BLAS_THREADS, default=1,
                   help="BLAS threads (default 1: the per-step products are small, and threads fighting "
                        "over shared cores cost more than they give); 0 leaves BLAS's own choice")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("grads", help="measure ||dL/dh_t|| through time for several recurrent-weight scales",
                       description="For each cell and scale: W_hh's H x H blocks are random orthogonal "
                                   "matrices times the scale, the loss is a fixed readout of the last "
                                   "step's state, and ||dL/dh_t|| is measured for every t.")
    g.add_argument("--cell", help="comma-separated cells (default rnn,lstm,gru, or none when --run is given)")
    g.add_argument("--seq-len", type=at_least(2), default=100, help="sequence length T (default 100)")
    g.add_argument("--scales", type=scales, default="0.5,1,2",
                   help=f"comma-separated W_hh scales, from 0 to {SCALE_LIMIT:g} (default 0.5,1,2)")
    g.add_argument("--hidden", type=at_least(1), default=64, help="hidden units (default 64)")
    g.add_argument("--batch", type=at_least(1), default=16, help="sequences measured at once (default 16)")
    g.add_argument("--seed", type=at_least(0), default=0, help="seed of the weights and of the inputs (default 0)")
    g.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    g.add_argument("--run", action="append", default=[], metavar="DIR",
                   help="also measure the trained recurrent layers of this run, on its own task's inputs "
                        "(repeatable)")
    g.add_argument("--out", default="runs/grads", help="folder for grad_norms.json and grad_norms.png")
    g.add_argument("--blas-threads", type=BLAS_THREADS, default=1, help="BLAS threads (default 1; 0: BLAS's choice)")
    g.set_defaults(func=cmd_grads)

    s = sub.add_parser("sample", help="generate text from a charlm run",
                       description="Generate text, one character at a time, from a model trained with --task "
                                   "charlm, after it has read --prime; the characters are written as they come.")
    s.add_argument("run", help="a run folder (its best state, best.npz, or its last without one) or a checkpoint "
                               ".npz, trained with --task charlm")
    s.add_argument("--length", type=at_least(0), default=500, help="characters to generate (default 500)")
    s.add_argument("--prime", default="\n", help="text the model reads first (default a newline)")
    s.add_argument("--temperature", type=positive_number, default=0.8, help="softmax temperature (default 0.8)")
    s.add_argument("--seed", type=at_least(0), default=0, help="seed of the characters drawn (default 0)")
    s.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    s.add_argument("--last", action="store_true", help="use the run's last state (checkpoint.npz), not its best")
    s.set_defaults(func=cmd_sample)

    q = sub.add_parser("predict", help="predict with a trained model on a data file",
                       description="Read FILE as the run's training data was read (a .npz's x and lengths; "
                                   "every window of a CSV series) and write the model's predictions, class "
                                   "labels or values in the data's units, with the model's best state (best.npz). "
                                   "A .csv or .npz says which input row each prediction belongs to (and, for a "
                                   "series, the row and date it forecasts); a .npy is the bare array.")
    q.add_argument("run", help="a run folder or a checkpoint .npz")
    q.add_argument("--data", required=True, metavar="FILE", help="a .npz with x (and lengths), or a .csv series")
    q.add_argument("--out", required=True, metavar="PRED", help="where to write the predictions: a .csv, a .npz "
                                                                "of named arrays, or a .npy (the array alone)")
    q.add_argument("--proba", action="store_true", help="classification: class probabilities instead of labels")
    q.add_argument("--last", action="store_true", help="use the run's last state (checkpoint.npz), not its best")
    q.add_argument("--backend", default="auto", choices=BACKENDS, help=BACKEND_HELP)
    q.set_defaults(func=cmd_predict)

    r = sub.add_parser("report", help="a Markdown table of runs: the metric, baseline, last and best held-out "
                                      "scores, seeds side by side",
                       description="One row per configuration (runs that differ only in --seed share it), "
                                   "columns for the settings that differ between rows; the held-out metric of "
                                   "each seed at its last and its best evaluation, beside the naive baselines.")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    r.set_defaults(func=cmd_report)

    c = sub.add_parser("plot", help="draw training and held-out loss against steps to a PNG",
                       description="For one or several runs: the training and held-out loss (left) and metric "
                                   "(right, with the naive baselines and the best evaluation marked) against "
                                   "steps. Needs matplotlib: pip install 'gpurnn[plot]'.")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    c.add_argument("--out", default="curves.png", metavar="FILE.png", help="where to write (default curves.png)")
    c.set_defaults(func=cmd_plot)
    return p


BACKEND_HELP = "reference, cpu, cuda or auto (default: cuda when a GPU is usable, else cpu)"


# Types of the flags of grads, sample and predict, checked as they are parsed (train's go to
# gpurnn.fit, whose config checks name them): a bad value is argparse's one-line error, status 2.
def at_least(minimum, most=None):
    """A flag's type: a whole number >= ``minimum`` (and <= ``most``)."""
    def whole_number(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most}, got {value}")
        return value
    return whole_number


BLAS_THREADS = at_least(0, most=4096)


def positive_number(text):
    """A flag's type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


SCALE_LIMIT = 1e150     # grads measures in float64: the squares its norms and SVD take must fit


def scales(text):
    """--scales: a comma-separated list of numbers in 0..SCALE_LIMIT."""
    values = []
    for part in text.split(","):
        if part.strip():
            try:
                value = float(part)
            except ValueError:
                value = math.nan
            if not 0 <= value <= SCALE_LIMIT:
                raise argparse.ArgumentTypeError(f"expected comma-separated numbers from 0 to {SCALE_LIMIT:g}, got "
                                                 f"{part.strip()!r}")
            values.append(value)
    return values


# ---------------------------------------------------------------- train
def cmd_train(args):
    """The flags given, as gpurnn.fit's config; its outcome as the exit status (RunResult.exit_status:
    0 done, 1 diverged, 128 + the signal's number interrupted)."""
    limit_blas_threads(args.blas_threads)
    given = {key: getattr(args, key) for key in DEFAULTS if getattr(args, key, None) is not None}
    return fit(args.out, resume=args.resume, progress=not args.no_progress, voice=COMMAND_LINE, **given).exit_status


# What a command exits with when it raises, the first kind that matches: 2 for what the user can
# change (a flag, a file given, memory), 1 for a run or file that is damaged or cannot be written.
EXIT_STATUS = (
    (AlreadyFinished, 0),       # the resumed run is at --steps already: nothing to do
    (CheckpointError, 1),       # the run to resume or load is damaged
    (KeyboardInterrupt, 130),   # Ctrl-C (train: a second signal, the first stops it at a step)
    (BrokenPipeError, 1),       # the reader of stdout went away (gpurnn sample | head)
    (ConfigError, 2), (RunBusy, 2), (MemoryTooSmall, 2), (BackendUnavailable, 2), (DataError, 2),
    (MemoryError, 2), (ValueError, 2), (TypeError, 2),
    (OSError, 1))               # a folder that cannot be made, a full or read-only disk, ...


def failed(command, e):
    """The exit status of ``gpurnn COMMAND`` that raised ``e``, once its one line is on stderr."""
    status = next((status for kind, status in EXIT_STATUS if isinstance(e, kind)), 1)
    if isinstance(e, BrokenPipeError):        # nothing more can be written; and not at exit either
        sys.stdout = open(os.devnull, "w")
    elif not (isinstance(e, KeyboardInterrupt) and command == "train"):   # fit has said where the run stands
        print(said(command, e), file=sys.stderr)
    return status


# How gpurnn train's log lines name the run and its settings (gpurnn.fit's are Python's).
COMMAND_LINE = Voice("gpurnn train", flag, lambda named: " ".join(["gpurnn train"] + named),
                     "run the same command again")


def said(command, e):
    """The one line that ``gpurnn COMMAND`` prints for the exception ``e``: config entries named as
    flags, a backend that is not usable with the flag that avoids it, a file that cannot be read or
    written with its name, and anything else that was not foreseen with its kind."""
    if isinstance(e, BackendUnavailable):
        return f"gpurnn {command}: backend {e.name!r} is not usable here: {e.reason}; use --backend cpu"
    if isinstance(e, KeyboardInterrupt):
        return f"gpurnn {command}: interrupted"
    if isinstance(e, MemoryError):
        lower = ("--hidden, --layers, --batch or --eval-sequences" if command == "train"
                 else "--seq-len, --hidden or --batch" if command == "grads" else "")
        return f"gpurnn {command}: out of memory" + (f"; use a smaller {lower}" if lower else "; free some memory")
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename is not None else ""
        return f"gpurnn {command}: {where}{e.strerror}"
    if isinstance(e, Worded):
        return f"gpurnn {command}: {e.worded(flag)}"
    if isinstance(e, (ValueError, TypeError, OSError)):
        return f"gpurnn {command}: {e}"
    return (f"gpurnn {command}: failed ({type(e).__name__}: {e}); this is a bug in gpurnn: please report it "
            f"(GPURNN_TRACEBACK=1 shows where)")


def make_folder(folder):
    """os.makedirs(folder, exist_ok=True), with the error a file in the way deserves (not "File exists")."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
    os.makedirs(folder, exist_ok=True)


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
    from .gradnorms import grad_norms_of_run, grad_norms_through_time, grads_memory, plot_grad_norms, verdict

    limit_blas_threads(args.blas_threads)
    if args.cell is None:
        args.cell = "" if args.run else "rnn,lstm,gru"
    cells = [c.strip() for c in args.cell.split(",") if c.strip()]
    for c in cells:
        if c not in MODEL_CELLS:
            print(f"gpurnn grads: unknown cell {c!r}; expected some of {', '.join(MODEL_CELLS)}", file=sys.stderr)
            return 2
    if not (cells and args.scales) and not args.run:
        print("gpurnn grads: nothing to measure (give --cell and --scales, or --run)", file=sys.stderr)
        return 2
    if cells and args.scales:
        check_room(None, grads_memory(args.seq_len, args.hidden, args.batch),
                   f"measuring T = {args.seq_len}, H = {args.hidden}, B = {args.batch}",
                   "lower --seq-len, --hidden or --batch")
    make_folder(args.out)                         # before the measuring: a folder that cannot be made fails now
    results = []
    for cell in cells:
        for scale in args.scales:
            results.append(grad_norms_through_time(cell, args.seq_len, scale, hidden_size=args.hidden,
                                                   batch_size=args.batch, seed=args.seed, backend=args.backend))
    for run in args.run:
        results.append(grad_norms_of_run(run, args.seq_len, batch_size=args.batch, seed=args.seed,
                                         backend=args.backend))
    json_path = os.path.join(args.out, "grad_norms.json")
    text = json.dumps({"seq_len": args.seq_len, "hidden": args.hidden, "batch": args.batch, "seed": args.seed,
                       "results": results}, indent=1) + "\n"
    write_whole(json_path, lambda f: f.write(text.encode()))
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
def cmd_sample(args):
    from .predict import load_model

    trained = load_model(args.run, backend=args.backend, checkpoint="last" if args.last else "best")
    if trained.config["task"] != "charlm":
        print(f"gpurnn sample: {trained.path} was trained on task {trained.config['task']!r}; sampling needs a "
              f"charlm run", file=sys.stderr)
        return 2
    chars = sample_chars(trained.model, trained.task["vocab"], args.prime, args.length, args.temperature, args.seed)
    sys.stdout.write(args.prime)
    for n, c in enumerate(chars, start=1):           # shown as it comes: a long sample can be watched or cut
        sys.stdout.write(c)
        if c == "\n" or n % 64 == 0:
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()              # a closed pipe fails here, inside main, not at exit
    return 0


def sample_chars(model, vocab, prime, length, temperature=1.0, seed=0):
    """``length`` characters drawn from ``model`` after it has read ``prime``, one at a time as each
    is drawn. The arguments are checked before the first is drawn (a ValueError)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"the temperature must be a finite number > 0, got {temperature}")
    if int(length) < 0:
        raise ValueError(f"the length must be >= 0 characters, got {length}")
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted(set(prime) - set(index))
    if not prime or unknown:
        raise ValueError(f"the prime text must be non-empty and use the model's characters; unknown: {unknown}")
    return _draw(model, vocab, [index[c] for c in prime], int(length), temperature, seed)


def _draw(model, vocab, prime_ids, length, temperature, seed):
    xp = model.backend.xp
    rng = np.random.default_rng(seed)
    out, state = model(xp.asarray(np.array(prime_ids, dtype=np.int64)[:, None]))      # (T, 1)
    for _ in range(length):
        logits = model.backend.to_host(out[-1, 0]).astype(np.float64)
        with np.errstate(over="ignore"):                       # a tiny temperature: -inf, whose exp is 0
            p = np.exp((logits - logits.max()) / temperature)   # the largest is exp(0) = 1 at any temperature
        nxt = int(rng.choice(len(vocab), p=p / p.sum()))
        yield vocab[nxt]
        out, state = model(xp.asarray(np.array([[nxt]], dtype=np.int64)), state)


# ---------------------------------------------------------------- predict
def cmd_predict(args):
    """Write the predictions of a trained model on a data file, read as its training data was."""
    from .predict import load_model, write_predictions

    out = args.out
    if os.path.splitext(out)[1].lower() not in (".csv", ".npz", ".npy"):
        print(f"gpurnn predict: --out {out}: name a .csv (a table), a .npz (named arrays) or a .npy (the bare "
              f"array), e.g. pred.csv", file=sys.stderr)
        return 2
    if os.path.isdir(out):
        print(f"gpurnn predict: --out {out} is a folder; name the file to write, e.g. {os.path.join(out, 'pred.csv')}",
              file=sys.stderr)
        return 2
    folder = os.path.dirname(os.path.abspath(out))
    make_folder(folder)                             # before the model runs: a folder that cannot be made fails now
    model = load_model(args.run, backend=args.backend, checkpoint="last" if args.last else "best")
    said = write_predictions(model, args.data, out, proba=args.proba)
    print(f"gpurnn predict: {said} of {model.path} (step {model.step}) written to {out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- report
def cmd_report(args):
    """A Markdown table of the run folders given (gpurnn/report.py)."""
    return report(args.runs)


# ---------------------------------------------------------------- plot
def cmd_plot(args):
    """Loss curves of the run folders given, to a PNG (gpurnn/plot.py)."""
    from .plot import plot
    return plot(args.runs, args.out)

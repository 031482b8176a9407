"""The ``gpurnn`` command: train, measure gradient norms through time, sample text, report runs.

    gpurnn train [--task adding|copy|charlm] [--cell rnn|rnn-relu|lstm|gru] ... [--out DIR]
    gpurnn train --resume DIR [--steps N]
    gpurnn grads [--cell rnn,lstm,gru] [--seq-len T] [--scales 0.5,1,2] [--out DIR]
    gpurnn sample DIR [--length N] [--prime TEXT] [--temperature 0.8]
    gpurnn report DIR [DIR ...]

A training run keeps three files in its folder: config.json (what was run), metrics.jsonl (one JSON
line per logged step) and checkpoint.npz (everything needed to continue exactly).
"""

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .model import CELLS, OPTIMIZERS, NonFiniteError, Trainer, make_model
from .tasks import TASKS, CharLM, make_task

# Everything that defines a run; None means "the task's or the optimiser's default".
DEFAULTS = dict(task="adding", cell="lstm", hidden=64, layers=1, seq_len=None, batch=32, steps=2000,
                optimizer="adam", lr=None, clip=1.0, tbptt=0, backend="auto", seed=0, text=None,
                embed=None, init_scale=None, copy_len=10, log_every=10, eval_every=100, save_every=100,
                eval_sequences=1000, dtype="float32")
TASK_SEQ_LEN = {"adding": 50, "copy": 30, "charlm": 100}
OPTIMIZER_LR = {"adam": 1e-2, "sgd": 0.1}
# What may change when a run is resumed (lr and clip: the remedies for a run that diverged);
# everything else must match the checkpoint.
RESUME_OVERRIDES = ("steps", "lr", "clip", "backend", "log_every", "eval_every", "save_every")


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
    t.add_argument("--task", choices=TASKS, help="adding (default), copy or charlm")
    t.add_argument("--cell", choices=CELLS, help="rnn (tanh), rnn-relu, lstm (default) or gru")
    t.add_argument("--hidden", type=int, help="hidden units per layer (default 64)")
    t.add_argument("--layers", type=int, help="stacked recurrent layers (default 1)")
    t.add_argument("--seq-len", type=int, help="sequence length T (default: adding 50, copy 30, charlm 100)")
    t.add_argument("--batch", type=int, help="sequences per step (default 32)")
    t.add_argument("--steps", type=int, help="total updates (default 2000); with --resume, the new total")
    t.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (default) or sgd")
    t.add_argument("--lr", type=float, help="learning rate (default: adam 0.01, sgd 0.1)")
    t.add_argument("--clip", type=float, help="clip the gradient norm to this value; 0 turns clipping off (default 1)")
    t.add_argument("--tbptt", type=int, help="truncated BPTT segment length k; 0 = full BPTT (default)")
    t.add_argument("--backend", choices=("auto", "cpu", "cuda", "reference"), help="default auto")
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
    t.add_argument("--eval-sequences", type=int, help="size of the held-out set (default 1000)")
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
    g.add_argument("--backend", default="auto", choices=("auto", "cpu", "cuda", "reference"))
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
    s.add_argument("--backend", default="auto", choices=("auto", "cpu", "cuda", "reference"))
    s.set_defaults(func=cmd_sample)

    r = sub.add_parser("report", help="a Markdown table of finished runs, seeds side by side")
    r.add_argument("runs", nargs="+", help="run folders")
    r.set_defaults(func=cmd_report)
    return p


# ---------------------------------------------------------------- train
def resolve_config(args):
    """The full config of a new run: defaults, then the task's and optimiser's, then the flags given."""
    cfg = dict(DEFAULTS)
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    if cfg["seq_len"] is None:
        cfg["seq_len"] = TASK_SEQ_LEN[cfg["task"]]
    if cfg["lr"] is None:
        cfg["lr"] = OPTIMIZER_LR[cfg["optimizer"]]
    if cfg["text"] is not None:
        cfg["text"] = os.path.abspath(cfg["text"])
    return cfg


POSITIVE = ("hidden", "layers", "seq_len", "batch", "steps", "log_every", "eval_every", "save_every",
            "eval_sequences", "copy_len")


def check_config(cfg):
    """A clear message for a flag out of range (None when all are fine)."""
    for key in POSITIVE:
        if cfg[key] < 1:
            return f"--{key.replace('_', '-')} must be at least 1, got {cfg[key]}"
    for key in ("clip", "tbptt"):
        if cfg[key] < 0:
            return f"--{key} must be >= 0 (0 turns it off), got {cfg[key]}"
    if not cfg["lr"] > 0:
        return f"--lr must be > 0, got {cfg['lr']}"
    if cfg["embed"] is not None and cfg["embed"] < 1:
        return f"--embed must be at least 1, got {cfg['embed']}"
    return None


def build_run(cfg):
    """(task, trainer) for a config."""
    task = make_task(cfg["task"], cfg["seq_len"], text_path=cfg["text"], copy_len=cfg["copy_len"])
    model = make_model(task, cfg["cell"], cfg["hidden"], cfg["layers"], embed_size=cfg["embed"],
                       recurrent_scale=cfg.get("init_scale"), backend=cfg["backend"], dtype=cfg["dtype"],
                       seed=cfg["seed"])
    trainer = Trainer(model, task, optimizer=cfg["optimizer"], lr=cfg["lr"], clip=cfg["clip"],
                      tbptt=cfg["tbptt"], batch_size=cfg["batch"], seed=cfg["seed"],
                      eval_sequences=cfg["eval_sequences"])
    return task, trainer


def _default_out(cfg):
    base = os.path.join("runs", f"{cfg['task']}-{cfg['cell']}")
    out, n = base, 1
    while os.path.exists(out):
        n += 1
        out = f"{base}-{n}"
    return out


def cmd_train(args):
    limit_blas_threads(args.blas_threads)
    if args.resume:
        out = args.out or args.resume
        try:
            ckpt = load_checkpoint(os.path.join(args.resume, "checkpoint.npz"))
        except CheckpointError as e:
            print(f"gpurnn train: {e}", file=sys.stderr)
            return 1
        cfg = dict(ckpt["config"])
        for key in DEFAULTS:
            value = getattr(args, key, None)
            if value is None:
                continue
            if key in RESUME_OVERRIDES:
                cfg[key] = value
            elif value != cfg.get(key) and not (key == "text" and os.path.abspath(value) == cfg.get(key)):
                print(f"gpurnn train: --{key.replace('_', '-')} {value} differs from the resumed run's "
                      f"{cfg.get(key)}; leave it out to resume (only {', '.join(RESUME_OVERRIDES)} may change)",
                      file=sys.stderr)
                return 2
    else:
        cfg = resolve_config(args)
        out = args.out or _default_out(cfg)
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            print(f"gpurnn train: {out} already holds a run (checkpoint.npz); continue it with "
                  f"--resume {out}, or choose another --out", file=sys.stderr)
            return 2
        ckpt = None
    problem = check_config(cfg)
    if problem:
        print(f"gpurnn train: {problem}", file=sys.stderr)
        return 2
    try:
        return train(cfg, out, ckpt, progress=not args.no_progress)
    except KeyboardInterrupt:       # a second Ctrl-C: stop now; the last checkpoint written is intact
        print(f"\ngpurnn train: stopped at once; {out}/checkpoint.npz holds the last saved step", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as e:
        print(f"gpurnn train: {e}", file=sys.stderr)
        return 2


class _StopFlag:
    """The first Ctrl-C asks the loop to stop after the current step; a second one stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:       # not the main thread: Ctrl-C cannot reach this loop anyway
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def train(cfg, out, ckpt=None, progress=True, log=None):
    """Run (or continue, from the loaded checkpoint ``ckpt``) the training described by ``cfg``,
    keeping ``out``/config.json, metrics.jsonl and checkpoint.npz current. Returns the exit status:
    0 done, 1 stopped on a non-finite value, 130 stopped by Ctrl-C."""
    from tqdm import tqdm

    log = log or (lambda msg: print(msg, file=sys.stderr))
    task, trainer = build_run(cfg)
    elapsed0 = 0.0
    os.makedirs(out, exist_ok=True)
    metrics_path = os.path.join(out, "metrics.jsonl")
    ckpt_path = os.path.join(out, "checkpoint.npz")
    if ckpt is not None:
        trainer.load_state(ckpt)
        trainer.opt.lr = float(cfg["lr"])          # the checkpoint's, unless --lr changed it
        elapsed0 = float(ckpt["extra"].get("elapsed", 0.0))
        _truncate_metrics(metrics_path, trainer.step)
    elif os.path.exists(metrics_path):
        os.remove(metrics_path)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(dict(cfg, backend_used=trainer.model.backend.name), f, indent=2, sort_keys=True)
        f.write("\n")

    extra = {"task": task.config()}
    if isinstance(task, CharLM):
        extra["vocab"] = task.chars

    def save():
        extra["elapsed"] = elapsed0 + (time.perf_counter() - t0)
        save_checkpoint(ckpt_path, trainer.state(), cfg, extra)

    metric = task.metric
    log(f"{task.describe()}")
    log(f"model: {trainer.model!r}, {trainer.model.num_parameters():,} parameters; "
        f"{cfg['optimizer']} lr {cfg['lr']:g}, clip {cfg['clip'] or 'off'}, "
        f"{'truncated BPTT k=' + str(trainer.tbptt) if trainer.tbptt else 'full BPTT'}; run folder {out}")
    steps = int(cfg["steps"])
    t0 = time.perf_counter()
    window = dict(loss=0.0, metric=0.0, n=0, t=t0, gmax=0.0)
    status, last = 0, None
    bar = tqdm(total=steps, initial=trainer.step, disable=not progress, unit="step", dynamic_ncols=True,
               file=sys.stderr)
    with _StopFlag() as stop, open(metrics_path, "a") as metrics:
        while trainer.step < steps:
            if stop.requested:
                status = 130
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
            window["gmax"] = max(window["gmax"], norm)
            bar.update(1)
            if step % cfg["log_every"] == 0 or step == steps:
                now = time.perf_counter()
                rec = {"step": step, "loss": window["loss"] / window["n"],
                       "metric": window["metric"] / window["n"], "grad_norm": norm,
                       "grad_norm_max": window["gmax"],
                       "elapsed": round(elapsed0 + now - t0, 3),
                       "sequences_per_s": round(window["n"] * cfg["batch"] / max(now - window["t"], 1e-9), 1)}
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
                window = dict(loss=0.0, metric=0.0, n=0, t=time.perf_counter(), gmax=0.0)
            if step % cfg["save_every"] == 0:
                save()
        save()
    bar.close()
    if status == 130:
        log(f"gpurnn train: interrupted; step {trainer.step} saved in {ckpt_path}. "
            f"Continue with: gpurnn train --resume {out}")
        return status
    if last is None or last["step"] != trainer.step:
        loss, m = trainer.evaluate()
        last = {"step": trainer.step, "eval_loss": loss, "eval_metric": m}
    better = "higher" if task.higher_is_better else "lower"
    log(f"step {trainer.step}: held-out {metric} {last['eval_metric']:.4f} (baseline {task.baseline:.4f}, "
        f"{better} is better); saved {ckpt_path}")
    return status


def _truncate_metrics(path, step):
    """Drop the lines logged after the checkpoint being resumed, so that the file reads as one run."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(lines)


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
        if c not in CELLS:
            print(f"gpurnn grads: unknown cell {c!r}; expected some of {', '.join(CELLS)}", file=sys.stderr)
            return 2
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        print(f"gpurnn grads: --scales must be comma-separated numbers, got {args.scales!r}", file=sys.stderr)
        return 2
    results = []
    for cell in cells:
        for scale in scales:
            results.append(grad_norms_through_time(cell, args.seq_len, scale, hidden_size=args.hidden,
                                                   batch_size=args.batch, seed=args.seed, backend=args.backend))
    for run in args.run:
        try:
            results.append(grad_norms_of_run(run, args.seq_len, batch_size=args.batch, seed=args.seed,
                                             backend=args.backend))
        except CheckpointError as e:
            print(f"gpurnn grads: {e}", file=sys.stderr)
            return 1
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
def cmd_sample(args):
    path = args.run if args.run.endswith(".npz") else os.path.join(args.run, "checkpoint.npz")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        print(f"gpurnn sample: {e}", file=sys.stderr)
        return 1
    cfg = ckpt["config"]
    vocab = ckpt["extra"].get("vocab")
    if cfg.get("task") != "charlm" or not vocab:
        print(f"gpurnn sample: {path} was trained on task {cfg.get('task')!r}; sampling needs a charlm run",
              file=sys.stderr)
        return 2
    if args.temperature <= 0:
        print("gpurnn sample: --temperature must be > 0", file=sys.stderr)
        return 2
    from .model import SequenceModel
    model = SequenceModel(cfg["cell"], cfg["hidden"], len(vocab), vocab_size=len(vocab), embed_size=cfg["embed"],
                          num_layers=cfg["layers"], backend=args.backend, dtype=cfg["dtype"], seed=cfg["seed"])
    model.load_state_dict(ckpt["model"])
    try:
        text = sample_text(model, vocab, args.prime, args.length, args.temperature, args.seed)
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


# ---------------------------------------------------------------- report
def cmd_report(args):
    """One Markdown row per configuration, its seeds side by side: the held-out metric at the last
    evaluation (or where training stopped) and the largest gradient norm seen before clipping."""
    rows = {}
    for run in args.runs:
        try:
            with open(os.path.join(run, "config.json")) as f:
                cfg = json.load(f)
            with open(os.path.join(run, "metrics.jsonl")) as f:
                recs = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError) as e:
            print(f"gpurnn report: skipping {run}: {e}", file=sys.stderr)
            continue
        evals = [r for r in recs if "eval_metric" in r]
        final = evals[-1] if evals else None
        gmax = max((r.get("grad_norm_max", r.get("grad_norm", 0.0)) for r in recs if "stopped" not in r),
                   default=0.0)
        key = tuple((k, cfg.get(k)) for k in ("task", "cell", "init_scale", "seq_len", "hidden", "steps",
                                              "optimizer", "lr", "clip"))
        if recs and "stopped" in recs[-1]:
            value, final = f"diverged at step {recs[-1]['step']}", None
        else:
            value = "—" if final is None else f"{final['eval_metric']:.4f}"
        rows.setdefault(key, []).append((cfg["seed"], value, final, gmax))
    print("| task | cell | T | hidden | steps | optimizer, lr | clip | held-out metric, per seed | mean "
          "| largest gradient norm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    def order(key):
        k = dict(key)
        return (k["task"], k["seq_len"], CELLS.index(k["cell"]), k["init_scale"] or 0, k["clip"] or 0)
    for key, runs in sorted(rows.items(), key=lambda kv: order(kv[0])):
        k = dict(key)
        runs.sort(key=lambda r: r[0])
        per_seed = ", ".join(f"{v} (seed {s})" for s, v, _, _ in runs)
        finals = [r[2]["eval_metric"] for r in runs if r[2] is not None]
        mean = f"{sum(finals) / len(finals):.4f}" if len(finals) == len(runs) else "—"
        cell = k["cell"] + ("" if k["init_scale"] is None else f", W_hh scale {k['init_scale']:g}")
        print(f"| {k['task']} | {cell} | {k['seq_len']} | {k['hidden']} | {k['steps']} | "
              f"{k['optimizer']} {k['lr']:g} | {k['clip'] or 'off'} | {per_seed} | {mean} | "
              f"{max(r[3] for r in runs):.3g} |")
    return 0

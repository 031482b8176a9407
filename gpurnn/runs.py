"""Run folders: what defines a run (its config, checked), who may write the folder (a lock), its
metrics log, and whether a configuration fits in memory before anything is allocated.

A run folder holds config.json (what was run), metrics.jsonl (one JSON line per logged step),
checkpoint.npz (everything needed to continue exactly) and .lock (held by the gpurnn train that
writes the folder).
"""

import json
import math
import os
import sys

from .checkpoint import REMEDY, CheckpointError
from .datafiles import is_series
from .kernels.vocabulary import BACKENDS, MODEL_CELLS
from .model import OPTIMIZERS, training_memory
from .tasks import TASKS

# Everything that defines a run; None means "the task's or the optimiser's default".
DEFAULTS = dict(task="adding", cell="lstm", hidden=64, layers=1, seq_len=None, batch=32, steps=2000,
                optimizer="adam", lr=None, clip=1.0, tbptt=0, backend="auto", seed=0, text=None,
                embed=None, init_scale=None, copy_len=10, log_every=10, eval_every=100, save_every=100,
                eval_sequences=1000, dtype="float32", data=None, target=None, features=None, horizon=None,
                validation=0.2)
TASK_SEQ_LEN = {"adding": 50, "copy": 30, "charlm": 100}
SERIES_DEFAULTS = dict(seq_len=32, horizon=1)     # a CSV series' windows (a .npz gives its own T)
DATA_FLAGS = ("seq_len", "target", "features", "horizon")   # how a CSV series is cut; not for a .npz
OPTIMIZER_LR = {"adam": 1e-2, "sgd": 0.1}
# What may change when a run is resumed (lr and clip: the remedies for a run that diverged);
# everything else must match the checkpoint.
RESUME_OVERRIDES = ("steps", "lr", "clip", "backend", "log_every", "eval_every", "save_every")

POSITIVE = ("hidden", "layers", "seq_len", "batch", "steps", "log_every", "eval_every", "save_every",
            "eval_sequences", "copy_len")


def check_config(cfg):
    """A clear message for a flag out of range (None when all are fine). ``seq_len`` may still be
    None for a .npz, whose arrays give it."""
    for key in POSITIVE:
        if cfg[key] is not None and cfg[key] < 1:
            return f"--{key.replace('_', '-')} must be at least 1, got {cfg[key]}"
    for key in ("clip", "tbptt"):
        if cfg[key] < 0:
            return f"--{key} must be >= 0 (0 turns it off), got {cfg[key]}"
    if not cfg["lr"] > 0:
        return f"--lr must be > 0, got {cfg['lr']}"
    if cfg["embed"] is not None and cfg["embed"] < 1:
        return f"--embed must be at least 1, got {cfg['embed']}"
    if cfg["horizon"] is not None and cfg["horizon"] < 1:
        return f"--horizon must be at least 1, got {cfg['horizon']}"
    if not 0 < cfg["validation"] < 1:
        return f"--validation must be a fraction between 0 and 1, got {cfg['validation']}"
    if (cfg["task"] == "data") != (cfg["data"] is not None):
        return "--data FILE trains on your data; give it without --task" if cfg["data"] is not None \
            else "task 'data' needs --data FILE"
    if cfg["data"] is None:
        for key in DATA_FLAGS[1:]:
            if cfg[key] is not None:
                return f"--{key} applies to --data FILE.csv (a time series); leave it out"
    elif is_series(cfg["data"]) and cfg["target"] is None:
        return "--data FILE.csv needs --target COLUMN, the column to forecast"
    return None


# What each config entry must be, to tell a damaged or crafted checkpoint from a run (the value
# ranges are check_config's): one of a few names, or a value of one of the types (None: null).
CONFIG_CHOICES = dict(task=TASKS + ("data",), cell=tuple(MODEL_CELLS), optimizer=OPTIMIZERS, backend=BACKENDS,
                      dtype=("float32", "float64"))
CONFIG_TYPES = dict(hidden=(int,), layers=(int,), seq_len=(int,), batch=(int,), steps=(int,), tbptt=(int,),
                    seed=(int,), copy_len=(int,), log_every=(int,), eval_every=(int,), save_every=(int,),
                    eval_sequences=(int,), lr=(float,), clip=(float,), embed=(int, None),
                    init_scale=(float, None), text=(str, None), data=(str, None), target=(str, None),
                    features=(str, None), horizon=(int, None), validation=(float,))
# absent from checkpoints of older versions: their DEFAULTS
OPTIONAL = ("embed", "init_scale", "text", "data", "target", "features", "horizon", "validation")


def _fits(value, kind):
    if kind is None:
        return value is None
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def config_of_checkpoint(ckpt, path):
    """The run's config from a loaded checkpoint, every entry checked (CheckpointError naming it)."""
    cfg = dict(ckpt["config"])
    for key in list(CONFIG_CHOICES) + list(CONFIG_TYPES):
        if key not in cfg:
            if key in OPTIONAL:
                cfg[key] = DEFAULTS[key]
                continue
            raise CheckpointError(f"checkpoint {path}: config field {key!r} is missing; {REMEDY}")
        value = cfg[key]
        if key in CONFIG_CHOICES:
            ok = isinstance(value, str) and value in CONFIG_CHOICES[key]
            expected = f"one of {', '.join(CONFIG_CHOICES[key])}"
        else:
            ok = any(_fits(value, kind) for kind in CONFIG_TYPES[key])
            expected = " or ".join("null" if k is None else k.__name__ for k in CONFIG_TYPES[key])
        if not ok:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise CheckpointError(f"checkpoint {path}: config field {key!r} must be {expected}, got {shown}; "
                                  f"{REMEDY}")
    problem = check_config(cfg)
    if problem:
        raise CheckpointError(f"checkpoint {path}: its config is out of range ({problem}); {REMEDY}")
    return cfg


class RunBusy(RuntimeError):
    """Another gpurnn train holds the run folder."""


class RunLock:
    """An exclusive lock on a run folder, held for the whole run, so that two ``gpurnn train`` on one
    folder cannot mix their checkpoints, configs and metrics: the second one refuses. The lock is
    the operating system's (released when the process ends, however it ends) on the file
    ``.lock`` in the folder, which also records the holder's process id."""

    NAME = ".lock"

    def __init__(self, folder):
        self.folder, self.path, self.file = folder, os.path.join(folder, self.NAME), None

    def __enter__(self):
        os.makedirs(self.folder, exist_ok=True)
        f = open(self.path, "a+")
        try:
            _lock_file(f)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunBusy(f"another gpurnn train is running in {self.folder} (process {holder}); wait for it "
                          f"to finish, or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            _unlock_file(self.file)
            self.file.close()
            self.file = None
        return False


try:
    import fcntl

    def _lock_file(f):
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock_file(f):
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
except ImportError:            # Windows
    import msvcrt

    def _lock_file(f):
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock_file(f):
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)


class MemoryTooSmall(ValueError):
    """The configuration needs more memory than this machine has available."""


PART_FLAGS = {  # what a part of training_memory holds, and the flags that shrink it
    "weights": ("weights, gradients and optimiser state", "--hidden, --layers or --embed"),
    "activations": ("one training step's activations", "--batch, --seq-len (or --tbptt), --hidden or --layers"),
    "held_out": ("the held-out set and its evaluation", "--eval-sequences, --hidden or --layers")}


def check_memory(task, cfg, available=None):
    """Raise MemoryTooSmall, before anything is allocated, when the configuration's estimated peak
    (model.training_memory) exceeds the memory available here (the GPU's for a GPU backend)."""
    from .backend import available_memory, get_backend

    n_eval = getattr(task, "eval_size", None) or cfg["eval_sequences"]     # your data: its held-out part
    parts = training_memory(task, cfg["cell"], cfg["hidden"], cfg["layers"], cfg["embed"], cfg["batch"],
                            cfg["optimizer"], n_eval, cfg["dtype"], cfg["tbptt"])
    need = parts["peak"]
    where = "memory available"
    if available is None:
        on_gpu = cfg["backend"] in ("auto", "cuda") and get_backend(cfg["backend"]).on_gpu
        available = available_memory(on_gpu)
        where = "GPU memory free" if on_gpu else where
    if available is None or need <= available:
        return parts
    largest = max(PART_FLAGS, key=parts.get)
    detail = "; ".join(f"{what} {_gib(parts[k])}" for k, (what, _) in PART_FLAGS.items())
    raise MemoryTooSmall(f"this configuration needs about {_gib(need)} at its peak ({detail}), more than the "
                         f"{_gib(available)} of {where} here; lower {PART_FLAGS[largest][1]}")


def _gib(n):
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 2 ** 20:.3g} MiB"


def number_or(value, default=0.0):
    """``value`` as a float when it is a JSON number, else ``default`` (for fields of a checkpoint's extra)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def window_of(saved):
    """The open logging window carried in a checkpoint (sums since the last metrics line)."""
    if not isinstance(saved, dict):
        return {}
    n = saved.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return {}
    return {"loss": number_or(saved.get("loss")), "metric": number_or(saved.get("metric")), "n": n,
            "gmax": number_or(saved.get("gmax"))}


def check_vocabulary(task, ckpt, out):
    """A charlm run resumes on the text it was trained on: its characters must map to the same ids."""
    vocab = ckpt["extra"].get("vocab")
    if vocab is not None and vocab != task.chars:
        old, new = set(vocab), set(task.chars)
        raise ValueError(f"the text {task.text_path or '(standard library docstrings)'} has changed since the run "
                         f"in {out} started: its characters differ (added {sorted(new - old)[:10]}, removed "
                         f"{sorted(old - new)[:10]}), so every id would mean another character. Resume with the "
                         f"original text, or start a new run")
    digest = ckpt["extra"].get("text_sha256")
    if digest is not None and digest != task.text_sha256:
        print("gpurnn train: warning: the text has changed since the run started (same characters); training "
              "continues on the new text, so it will not match a run that never stopped", file=sys.stderr)


def check_data_file(task, ckpt, out):
    """A run on your data resumes on the same file: another one would split and scale differently."""
    digest = ckpt["extra"].get("data_sha256")
    if digest is not None and digest != task.data_sha256:
        raise ValueError(f"the data file {task.source['file']} has changed since the run in {out} started (its "
                         f"SHA-256 differs), so its held-out part and scaling would not be the run's. Resume with "
                         f"the original file, or start a new run")


def read_metrics(path, warn=None):
    """The records of a metrics.jsonl. A damaged last line (a write cut short, e.g. by a full disk)
    is dropped, with a warning through ``warn``; damage anywhere else raises ValueError naming the
    file and the line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    records = []
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    for k, (number, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                raise ValueError("not a record with a step")
        except ValueError as e:
            if k == len(numbered) - 1:
                if warn:
                    warn(f"{path}: line {number} is incomplete ({e}); dropped it")
                break
            raise ValueError(f"{path}, line {number}, is damaged ({e}); fix or delete that line") from None
        records.append(rec)
    return records


def carry_metrics(source, path, step, log):
    """Rewrite ``path`` as the records of ``source`` up to the resumed checkpoint's ``step``, so that
    the file reads as one run (lines logged after the checkpoint are dropped)."""
    if not os.path.exists(source):
        return
    records = [r for r in read_metrics(source, warn=lambda m: log(f"gpurnn train: warning: {m}"))
               if r["step"] <= step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


"""Run folders: what defines a run (its config, checked), who may write the folder (a lock), its
metrics log, and whether a configuration fits in memory before anything is allocated.

A run folder holds config.json (what was run), metrics.jsonl (one JSON line per logged step),
checkpoint.npz (everything needed to continue exactly) and .lock (held by the training run that
writes the folder: gpurnn.fit, which gpurnn train calls).

Errors name config entries by their keys (``hidden must be at least 1, got 0``); they are ``Worded``
(gpurnn/_checks.py), so the command line can name them as its flags (``--hidden``) instead.
"""

import errno
import json
import math
import os

from ._checks import Worded
from .checkpoint import REMEDY, CheckpointError
from .data import VALUE_LIMIT, DataError, size_text
from .datafiles import is_series
from .files import open_regular, utf8
from .kernels.vocabulary import BACKENDS, MODEL_CELLS
from .model import OPTIMIZERS, training_memory
from .tasks import TASKS

# Everything that defines a run; None means "the task's or the optimiser's default".
DEFAULTS = dict(task="adding", cell="lstm", hidden=64, layers=1, seq_len=None, batch=32, steps=2000,
                optimizer="adam", lr=None, clip=1.0, tbptt=0, backend="auto", seed=0, text=None,
                embed=None, init_scale=None, copy_len=10, log_every=10, eval_every=100, save_every=100,
                eval_sequences=1000, dtype="float32", data=None, target=None, features=None, horizon=None,
                validation=0.2, difference=False, season=None, early_stop=0, schedule="constant", warmup=0,
                decay=0.1, decay_every=None, min_lr=0.0)
SCHEDULES = ("constant", "cosine", "step", "plateau")
# decay_every when not given: the step schedule decays twice in a run, reduce-on-plateau after 2
# evaluations without improvement.
DECAY_EVERY = {"step": lambda cfg: max(1, cfg["steps"] // 3), "plateau": lambda cfg: 2}
TASK_SEQ_LEN = {"adding": 50, "copy": 30, "charlm": 100}
SERIES_DEFAULTS = dict(seq_len=32, horizon=1)     # a CSV series' windows (a .npz gives its own T)
DATA_KEYS = ("seq_len", "target", "features", "horizon", "difference", "season")   # a CSV series' own; not a .npz's
OPTIMIZER_LR = {"adam": 1e-2, "sgd": 0.1}
# What may change when a run is resumed (lr and clip: the remedies for a run that diverged);
# everything else must match the checkpoint.
RESUME_OVERRIDES = ("steps", "lr", "clip", "backend", "log_every", "eval_every", "save_every", "early_stop")

POSITIVE = ("hidden", "layers", "seq_len", "batch", "steps", "log_every", "eval_every", "save_every",
            "eval_sequences", "copy_len", "embed", "horizon", "season", "decay_every")

# What each config entry must be: one of a few names, or a value of one of the types (None: unset).
CONFIG_CHOICES = dict(task=TASKS + ("data",), cell=tuple(MODEL_CELLS), optimizer=OPTIMIZERS, backend=BACKENDS,
                      dtype=("float32", "float64"), schedule=SCHEDULES)
CONFIG_TYPES = dict(hidden=(int,), layers=(int,), seq_len=(int,), batch=(int,), steps=(int,), tbptt=(int,),
                    seed=(int,), copy_len=(int,), log_every=(int,), eval_every=(int,), save_every=(int,),
                    eval_sequences=(int,), lr=(float,), clip=(float,), embed=(int, None),
                    init_scale=(float, None), text=(str, None), data=(str, None), target=(str, None),
                    features=(str, None), horizon=(int, None), validation=(float,), difference=(bool,),
                    season=(int, None), early_stop=(int,), warmup=(int,), decay=(float,), decay_every=(int, None),
                    min_lr=(float,))
KIND_NAMES = {int: "a whole number", float: "a finite number", str: "a string", bool: "true or false", None: "None"}
# absent from checkpoints of older versions: their DEFAULTS
OPTIONAL = ("embed", "init_scale", "text", "data", "target", "features", "horizon", "validation", "difference",
            "season", "early_stop", "schedule", "warmup", "decay", "decay_every", "min_lr")


def flag(key, value=None):
    """How the command line names a config entry: as its flag (``--seq-len``), with its value when
    one is given (``--seq-len 50``)."""
    name = "--" + key.replace("_", "-")
    return name if value is None else f"{name} {value}"


class ConfigError(Worded, ValueError):
    """A config entry that is unknown, of the wrong kind, out of range, or at odds with another;
    ``key`` names it."""


def fits(value, kind):
    """Whether a config value (from Python, or from a checkpoint's JSON) is of ``kind``: int (not a
    bool), float (any finite int or float), str, bool, or None."""
    if kind is None:
        return value is None
    if kind is bool or isinstance(value, bool):
        return isinstance(value, bool) and kind is bool
    if kind is float:
        try:
            return isinstance(value, (int, float)) and math.isfinite(value)
        except OverflowError:              # an int too large for a float
            return False
    return isinstance(value, kind)


def _shown(value):
    return repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."


def _bad(key, says):
    """A ConfigError whose message is ``key``, named, then ``says``."""
    return ConfigError(lambda name: f"{name(key)} {says}", key)


def check_entries(entries):
    """Raise ConfigError naming the first of ``entries`` (config keys and their values) that is not
    one of its choices, not of its type, or out of range."""
    for key, value in entries.items():
        if key not in DEFAULTS:
            raise ConfigError(f"unknown config key {key!r}; the keys are {', '.join(DEFAULTS)}", key)
        if key in CONFIG_CHOICES and not (isinstance(value, str) and value in CONFIG_CHOICES[key]):
            raise _bad(key, f"must be one of {', '.join(CONFIG_CHOICES[key])}, got {_shown(value)}")
        if key in CONFIG_TYPES and not any(fits(value, kind) for kind in CONFIG_TYPES[key]):
            expected = " or ".join(KIND_NAMES[k] for k in CONFIG_TYPES[key])
            raise _bad(key, f"must be {expected}, got {_shown(value)}")
    for key in POSITIVE:
        if entries.get(key) is not None and entries[key] < 1:
            raise _bad(key, f"must be at least 1, got {entries[key]}")
    if "min_lr" in entries and entries["min_lr"] < 0:
        raise _bad("min_lr", f"must be >= 0, got {entries['min_lr']}")
    for key in ("clip", "tbptt", "early_stop", "warmup"):
        if key in entries and entries[key] < 0:
            raise _bad(key, f"must be >= 0 (0 turns it off), got {entries[key]}")
    if entries.get("init_scale") is not None and not abs(entries["init_scale"]) <= VALUE_LIMIT:
        raise _bad("init_scale", f"must lie within ±{VALUE_LIMIT:.2g}, float32's range (the weights' own), "
                                 f"got {entries['init_scale']:g}")
    if "seed" in entries and entries["seed"] < 0:
        raise _bad("seed", f"must be >= 0, got {entries['seed']}")
    if "lr" in entries and not entries["lr"] > 0:
        raise _bad("lr", f"must be > 0, got {entries['lr']}")
    if "decay" in entries and not 0 < entries["decay"] < 1:
        raise _bad("decay", f"must be a factor between 0 and 1 (each decay multiplies the learning rate by it), "
                            f"got {entries['decay']}")
    if "validation" in entries and not 0 < entries["validation"] < 1:
        raise _bad("validation", f"must be a fraction between 0 and 1, got {entries['validation']}")


def check_config(cfg):
    """Raise ConfigError naming the first entry of a run's config (every key of DEFAULTS) that
    check_entries refuses or that does not go with the others. ``seq_len`` may still be None for a
    .npz, whose arrays give it."""
    check_entries({key: cfg[key] for key in DEFAULTS
                   if not (key == "seq_len" and cfg[key] is None and cfg["data"] is not None)})
    if cfg["data"] is not None and cfg["task"] != "data":
        raise ConfigError(lambda name: f"{name('data')} trains on your data, {name('task', cfg['task'])} on a "
                                       f"built-in task: give one of them", "task")
    if cfg["task"] == "data" and cfg["data"] is None:
        raise ConfigError(lambda name: f"{name('task', 'data')} needs {name('data')}, the file to train on", "data")
    if cfg["data"] is None or not is_series(cfg["data"]):
        for key in DATA_KEYS[1:]:
            if cfg[key] != DEFAULTS[key]:
                raise ConfigError(lambda name, key=key: f"{name(key)} applies to {name('data')} FILE.csv (a time "
                                                        f"series); leave it out", key)
    elif is_series(cfg["data"]) and cfg["target"] is None:
        raise ConfigError(lambda name: f"{name('data')} FILE.csv needs {name('target')} COLUMN, the column to "
                                       f"forecast", "target")
    check_schedule(cfg)


# The schedule entries that apply to each schedule (the others must keep their defaults).
SCHEDULE_KEYS = {"constant": (), "cosine": ("min_lr",), "step": ("decay", "decay_every"),
                 "plateau": ("decay", "decay_every")}


def check_schedule(cfg):
    """A ConfigError for a schedule entry given to a schedule it does not apply to, or out of range."""
    for key in ("min_lr", "decay", "decay_every"):
        if key not in SCHEDULE_KEYS[cfg["schedule"]] and cfg[key] != DEFAULTS[key]:
            takes = " or ".join(s for s, keys in SCHEDULE_KEYS.items() if key in keys)
            raise ConfigError(lambda name, key=key, takes=takes: f"{name(key)} applies to {name('schedule')} "
                                                                 f"{takes}; leave it out", key)
    if cfg["schedule"] == "cosine" and cfg["lr"] is not None and not cfg["min_lr"] < cfg["lr"]:
        raise ConfigError(lambda name: f"{name('min_lr', cfg['min_lr'])} must be below {name('lr', cfg['lr'])}: "
                                       f"the cosine schedule falls from lr to min_lr", "min_lr")
    if cfg["early_stop"] and cfg["eval_every"] > cfg["steps"]:
        raise ConfigError(lambda name: f"{name('early_stop')} counts evaluations, but {name('eval_every')} "
                                       f"{cfg['eval_every']} is above {name('steps', cfg['steps'])}: lower "
                                       f"{name('eval_every')}", "early_stop")

def check_given(given):
    """Raise ConfigError when the entries given for a new run do not go together: a .npz gives its
    sequences as they are, and ``validation`` only means something with ``data``."""
    check_entries(given)
    data = given.get("data")
    if data is None:
        if "validation" in given:
            raise ConfigError(lambda name: f"{name('validation')} applies to {name('data')} FILE; leave it out",
                              "validation")
        return
    if "task" in given:
        raise ConfigError(lambda name: f"{name('data')} FILE trains on your data, {name('task', given['task'])} on "
                                       f"a built-in task: give one of them", "task")
    if not is_series(data):
        for key in DATA_KEYS:
            if key in given:
                raise ConfigError(lambda name, key=key: f"{name(key)} applies to a CSV series; {data}'s arrays give "
                                                        f"the sequences as they are: leave it out", key)


def resolve_config(given):
    """The full config of a new run from the entries given (config keys and values, as plain_entries
    returns them): defaults, then the task's and optimiser's, then those given, checked
    (ConfigError). A run on a .npz gets its seq_len from the file (gpurnn.training.prepare_task)."""
    check_given(given)
    cfg = dict(DEFAULTS, **given)
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
    if cfg["decay_every"] is None and cfg["schedule"] in DECAY_EVERY:
        cfg["decay_every"] = DECAY_EVERY[cfg["schedule"]](cfg)
    if cfg["text"] is not None:
        cfg["text"] = os.path.abspath(cfg["text"])
    check_config(cfg)
    return cfg


# The entries that apply only to some runs: config.json leaves out those that do not apply to its run.
def applies(cfg, key):
    """Whether the config entry ``key`` means anything for the run ``cfg``."""
    series = cfg["data"] is not None and is_series(cfg["data"])
    if key in ("copy_len",):
        return cfg["task"] == "copy"
    if key == "text":
        return cfg["task"] == "charlm"
    if key in ("data", "validation"):
        return cfg["data"] is not None
    if key in DATA_KEYS[1:]:
        return series
    if key in ("min_lr", "decay", "decay_every"):
        return key in SCHEDULE_KEYS[cfg["schedule"]]
    if key == "eval_sequences":
        return cfg["data"] is None          # your data: the held-out part is the --validation fraction
    return True


def applicable(cfg):
    """``cfg`` without the entries that do not apply to its run (what config.json holds)."""
    return {key: value for key, value in cfg.items() if key not in DEFAULTS or applies(cfg, key)}


def plain_entries(given):
    """The entries given, None (not given) left out, paths (os.PathLike) as strings and NumPy
    scalars as Python numbers, so that they compare, check and write to JSON as the command
    line's do."""
    plain = {}
    for key, value in given.items():
        if value is None:
            continue
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        elif hasattr(value, "item") and getattr(value, "shape", None) == ():      # a NumPy scalar
            value = value.item()
        plain[key] = value
    return plain


def config_of_checkpoint(ckpt, path):
    """The run's config from a loaded checkpoint, every entry checked (CheckpointError naming it)."""
    if not ckpt["config"]:
        raise CheckpointError(f"checkpoint {path} holds no run config: it was saved from Python "
                              f"(gpurnn.save_checkpoint), not by a training run, so there is "
                              f"no run to continue; start a new one")
    cfg = dict(ckpt["config"])
    for key in OPTIONAL:
        cfg.setdefault(key, DEFAULTS[key])
    return checked_in_checkpoint(cfg, DEFAULTS, check_config, path, config_field)


def config_field(key, value=None):
    """How a checkpoint's errors name a config entry: ``config field 'hidden'``."""
    return f"config field {key!r}"


def checked_in_checkpoint(entries, required, check, path, field):
    """``entries`` read from a checkpoint (its run config, or a model's description), once each key
    of ``required`` is there and ``check(entries)`` raises no ConfigError; otherwise a
    CheckpointError that names the entry as ``field(key)`` does."""
    for key in required:
        if key not in entries:
            raise CheckpointError(f"checkpoint {path}: {field(key)} is missing; {REMEDY}")
    try:
        check(entries)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: {e.worded(field)}; {REMEDY}") from None
    return entries


class RunBusy(Worded, RuntimeError):
    """Another training run holds the run folder."""


class RunLock:
    """An exclusive lock on a run folder, held for the whole run, so that two training runs on one
    folder cannot mix their checkpoints, configs and metrics: the second one refuses. The lock is
    the operating system's (released when the process ends, however it ends) on the file
    ``.lock`` in the folder, which also records the holder's process id."""

    NAME = ".lock"

    def __init__(self, folder):
        self.folder, self.path, self.file = folder, os.path.join(folder, self.NAME), None

    def __enter__(self):
        try:
            if os.path.exists(self.folder) and not os.path.isdir(self.folder):
                raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder")
            os.makedirs(self.folder, exist_ok=True)
            if os.path.lexists(self.path) and not os.path.isfile(self.path):
                raise IsADirectoryError(errno.EISDIR, f"its {self.NAME} is not a regular file")
        except OSError as e:
            why = e.strerror
            raise ConfigError(lambda name: f"the run folder {self.folder} cannot be used ({why}); choose "
                                           f"another {name('out')}", "out") from None
        f = open(self.path, "a+")
        try:
            _lock_file(f)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise RunBusy(lambda name: f"another gpurnn train is running in {self.folder} (process {holder}); wait "
                                       f"for it to finish, or choose another {name('out')}", "out") from None
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


class MemoryTooSmall(Worded, ValueError):
    """The configuration needs more memory than this machine has available."""


PARTS = {  # what a part of training_memory holds, and the config entries that shrink it
    "weights": ("weights, gradients and optimiser state", lambda n: f"{n('hidden')}, {n('layers')} or {n('embed')}"),
    "activations": ("one training step's activations",
                    lambda n: f"{n('batch')}, {n('seq_len')} (or {n('tbptt')}), {n('hidden')} or {n('layers')}"),
    "held_out": ("the held-out set and its evaluation",
                 lambda n: f"{n('eval_sequences')}, {n('hidden')} or {n('layers')}")}


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
    largest = max(PARTS, key=parts.get)
    detail = "; ".join(f"{what} {size_text(parts[k])}" for k, (what, _) in PARTS.items())
    lower = PARTS[largest][1]
    raise MemoryTooSmall(lambda name: f"this configuration needs about {size_text(need)} at its peak ({detail}), more "
                                      f"than the {size_text(available)} of {where} here; lower {lower(name)}")


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


def check_vocabulary(task, ckpt, out, warn):
    """A charlm run resumes on the text it was trained on: its characters must map to the same ids
    (a DataError if not); the same characters in another text are a warning, through ``warn``."""
    vocab = ckpt["extra"].get("vocab")
    if vocab is not None and vocab != task.chars:
        old, new = set(vocab), set(task.chars)
        raise DataError(f"the text {task.text_path or '(standard library docstrings)'} has changed since the run "
                        f"in {out} started: its characters differ (added {sorted(new - old)[:10]}, removed "
                        f"{sorted(old - new)[:10]}), so every id would mean another character. Resume with the "
                        f"original text, or start a new run")
    digest = ckpt["extra"].get("text_sha256")
    then = ckpt["config"].get("text")
    if digest is not None and digest != task.text_sha256 and task.text_path != then:
        raise DataError(f"the text {task.text_path} is not the one the run in {out} started on ({then}): its "
                        f"SHA-256 differs. Resume with the original text, or start a new run")
    if digest is not None and digest != task.text_sha256:
        warn("the text has changed since the run started (same characters); training continues on the new "
             "text, so it will not match a run that never stopped")


def check_data_file(task, ckpt, out):
    """A run on your data resumes on the same file: another one would split and scale differently
    (a DataError if it has changed)."""
    digest = ckpt["extra"].get("data_sha256")
    if digest is not None and digest != task.data_sha256:
        now, then = task.source["file"], ckpt["config"].get("data")
        what = (f"has changed since the run in {out} started" if now == then else
                f"is not the file the run in {out} started on ({then})")
        raise DataError(f"the data file {now} {what}: its SHA-256 differs, so its held-out part and scaling would "
                        f"not be the run's. Resume with the original file, or start a new run")


def read_metrics(path, warn=None):
    """The records of a metrics.jsonl: dicts, each with an integer "step". A damaged last line (a
    write cut short, e.g. by a full disk) is dropped, with a warning through ``warn``; damage
    anywhere else raises ValueError naming the file and the line. The file is read line by line,
    and only if it is a regular file (files.open_regular: OSError, or ValueError for a FIFO, a
    device, a folder, or bytes that are not UTF-8)."""
    records, damaged = [], None                 # damaged: (line number, problem) of the last line read
    with open_regular(path, "the metrics log") as f:
        for number, raw in enumerate(f, start=1):
            line = utf8(raw, path, "the metrics log", number)
            if not line.strip():
                continue
            if damaged is not None:
                raise ValueError(f"{path}, line {damaged[0]}, is damaged ({damaged[1]}); fix or delete that line")
            try:
                rec = json.loads(line)
                step = rec.get("step") if isinstance(rec, dict) else None
                problem = None if isinstance(step, int) and not isinstance(step, bool) else "not a record with a step"
            except ValueError as e:
                problem = str(e)
            except RecursionError:
                problem = "nested too deeply to read"
            if problem is None:
                records.append(rec)
            else:
                damaged = (number, problem)
    if damaged is not None and warn:
        warn(f"{path}: line {damaged[0]} is incomplete ({damaged[1]}); dropped it")
    return records


def carry_metrics(source, path, step, warn):
    """Rewrite ``path`` as the records of ``source`` up to the resumed checkpoint's ``step``, so that
    the file reads as one run (lines logged after the checkpoint are dropped); a damaged last line
    of ``source`` is dropped with a warning through ``warn``."""
    if not os.path.exists(source):
        return
    records = [r for r in read_metrics(source, warn=warn) if r["step"] <= step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def format_metric(v):
    """Four decimals, or three significant digits where four decimals would show nothing (2.1e-05)."""
    return f"{v:.4f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.3g}"

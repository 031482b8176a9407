"""``gpurnn report``: a Markdown table of run folders, one row per configuration, its seeds side by
side: the task's metric and naive baselines, each seed's held-out metric at its last evaluation (or
where training stopped) beside its best one, their means, and the largest gradient norm seen before
clipping.

Runs share a row when every setting but the seed is equal: every entry of config.json except those
that do not change what is learnt (IGNORED: seed, backend, log_every, save_every), and except those
that do not apply to the run (gpurnn.runs.applies). An entry that a config leaves out counts as its
default (gpurnn.runs.DEFAULTS), so that a run written by an older version, whose config holds every
entry, shares a row with the same run written now, whose config holds only those that apply. Above
the table, one line lists the settings common to every row (as command-line flags, ``--hidden 64``);
the table has a column for each setting that differs between rows. After it, a line on ``warn``
says how to draw the loss curves (gpurnn plot).

A run folder is read from its config.json (what was run), task.json (how it is scored: the metric,
which way is better, the naive baselines; older runs have none), metrics.jsonl
(gpurnn.runs.read_metrics) and checkpoint.npz (gpurnn.checkpoint.load_checkpoint; only its step, and
only when it loads), and whatever is in them, the report neither hangs nor reads without limit nor
fails: only regular files are read (a FIFO, a device, a folder in their place is refused unread),
each up to a limit (CONFIG_LIMIT for config.json and task.json; metrics.jsonl line by line), as UTF-8
JSON; every config entry, task.json field and record field the table uses must be of its kind
(numbers finite). A run folder that fails any of this is skipped with one line that names it and
says what is wrong; a record with a damaged field skips its run too (dropping the record would show
another step's metric as the run's), except a damaged last line of metrics.jsonl, a write cut short,
which read_metrics drops with a warning. A name given that is not a folder at all is an error
(status 2), found before anything is read.

    status = report(["runs/lstm-s0", "runs/lstm-s1"])    # the table on stdout, warnings on stderr
"""

import json
import os
import reprlib
import shlex
import sys
from dataclasses import dataclass, field

from .checkpoint import CheckpointError, load_checkpoint
from .files import read_text
from .kernels.vocabulary import MODEL_CELLS
from .runs import CONFIG_CHOICES, CONFIG_TYPES, DEFAULTS, applies, fits, flag, format_metric, read_metrics

# config.json is about 600 bytes and task.json about 300 (a path or two in them); anything near this
# is not a run's.
CONFIG_LIMIT = 1 << 20

# The config entries that do not change what is learnt: runs that differ only in them share a row.
IGNORED = ("seed", "backend", "backend_used", "log_every", "save_every")
# The entries every run's config holds (older and newer versions alike).
REQUIRED = ("task", "cell", "hidden", "seq_len", "steps", "optimizer", "lr", "seed")
# What each entry must be: str, bool, int (not a bool), float (any finite int or float, kept as a
# float) or None (unset). An entry that is not one of DEFAULTS' (from a newer version) may be any of
# them but a list or an object.
KINDS = dict(CONFIG_TYPES, **{key: (str,) for key in CONFIG_CHOICES}, seq_len=(int, None))
SCALARS = (str, bool, int, float, None)
# The order of the setting columns (and of the rows); entries not named here follow, by name.
ORDER = ("task", "data", "text", "copy_len", "target", "features", "horizon", "difference", "season", "validation",
         "seq_len", "cell", "init_scale", "hidden", "layers", "embed", "dtype", "batch", "tbptt", "steps",
         "optimizer", "lr", "clip", "schedule", "warmup", "decay", "decay_every", "min_lr", "eval_every",
         "eval_sequences", "early_stop")
# Shown in the line of common settings whatever their value; the others only when not their default.
CORE = ("cell", "hidden", "layers", "seq_len", "batch", "steps", "optimizer", "lr", "clip")
PATHS = ("data", "text")             # shown by their file's name
METRIC_NAMES = {"bits_per_char": "bits per character"}
# Which way the metric is better for runs of older versions, which wrote no task.json.
HIGHER_IS_BETTER = {"adding": False, "copy": True, "charlm": False}

COLUMNS = ("metric", "baseline", "last held-out metric, per seed", "mean of last", "best held-out metric, per seed",
           "mean of best", "largest gradient norm")
ABSENT = object()                    # an entry that does not apply to a row's runs


class RunUnreadable(ValueError):
    """A run folder that the report skips; the message says why."""


@dataclass
class Run:
    """What the report shows of one run folder."""
    settings: dict          # the entries that define what is learnt (not the seed): equal settings share a row
    seed: int
    value: str              # its last cell: "0.0123", "diverged at step 15", "step 2 of 4, unfinished"
    final: float | None     # the held-out metric that counts towards the row's mean (None: none)
    best: tuple | None      # (step, held-out metric) of the best evaluation, or None
    counts: bool            # finished (trained to its steps, or stopped early): its scores count in the means
    gmax: float             # the largest gradient norm logged
    folder: str
    note: str = ""          # how it ended when not at its last step: "diverged at step 15", "stopped early at step 40"
    metric: str | None = None          # from task.json: "mse", "accuracy", "bits_per_char" (None: no task.json)
    higher_is_better: bool | None = None
    baselines: list = field(default_factory=list)     # [(name, value)], the task's own first
    records: list = field(default_factory=list)       # metrics.jsonl's records


def report(runs, out=None, warn=None):
    """Write the table of the run folders ``runs`` to ``out`` (default sys.stdout) and return the
    exit status: 0 when the table was written, even if some folders were skipped; 1 when none could
    be read, and 2 when a name given is not a folder (``runs/nope: no such run folder``, checked for
    every name first); in both cases nothing is written to ``out``. ``warn`` receives one line per
    skipped folder ("skipping DIR: why"), per warning ("warning: ...") and, after the table, how to
    plot the runs; by default they go to stderr after "gpurnn report: ".

    Two runs of one configuration and seed (a copy, or a rerun) are both listed with their folders,
    and the means count the seed once (the first given). A run that has not reached its last step
    shows where it is ("step 500 of 2000, unfinished") and, like a diverged one, leaves the row's
    means out; a run that stopped early (its held-out metric stopped improving) is finished."""
    out = sys.stdout if out is None else out
    say = sayer(warn, "gpurnn report")
    status, read = read_runs(runs, read_run, say, "report")
    if status:
        return status
    rows = group(read)
    columns, common = _columns([settings for settings, _ in rows])
    if common:
        _write(out, "settings common to every row: " + ", ".join(common))
        _write(out, "")
    names = ["task"] + [_cell(flag(key)) for key in columns] + list(COLUMNS)
    _write(out, "| " + " | ".join(names) + " |")
    _write(out, "|" + "---|" * len(names))
    shown = {key: _shown_values(key, [settings.get(key, ABSENT) for settings, _ in rows]) for key in [*columns, *PATHS]}
    for settings, group_ in rows:
        seeds = [r.seed for r in group_]
        repeated = {s for s in seeds if seeds.count(s) > 1}
        if repeated:
            say(f"warning: runs {', '.join(r.folder for r in group_ if r.seed in repeated)} have the same "
                f"configuration and seed; the means count each seed once")
        task = shown["data"][settings["data"]] if settings.get("data") is not None else _cell(settings["task"])
        cells = [task] + [shown[key][settings.get(key, ABSENT)] for key in columns] + _scores(group_, repeated)
        _write(out, "| " + " | ".join(cells) + " |")
    say("loss curves: gpurnn plot " + " ".join(shlex.quote(r.folder) for r in read) + " --out curves.png")
    return 0


def read_runs(runs, read, say, what):
    """(status, [``read(folder, warn)`` of each run folder]): the unreadable ones skipped with one
    line on ``say`` each; status 2 when a name is not a folder (and nothing is read), 1 when no run
    could be read (nothing to ``what``), else 0."""
    if not folders_exist(runs, say):
        return 2, []
    read_ = []
    for folder in runs:
        try:
            read_.append(read(folder, warn=lambda m: say(f"warning: {m}")))
        except RunUnreadable as e:
            say(f"skipping {folder}: {e}")
    if not read_:
        say(f"no run could be read; nothing to {what}")
        return 1, []
    return 0, read_


def folders_exist(runs, say):
    """Whether every name in ``runs`` is a folder; ``say`` gets one line for each that is not."""
    missing = [folder for folder in runs if not os.path.isdir(folder)]
    for folder in missing:
        say(f"{folder}: {'not a folder' if os.path.lexists(folder) else 'no such run folder'}")
    return not missing


def group(runs):
    """[(settings, runs)]: the rows of the table, in order, each with its runs sorted by seed. Runs
    share a row when their settings are equal and their task.json do not name different metrics."""
    by_settings = {}
    for run in runs:
        by_settings.setdefault(tuple(sorted(run.settings.items(), key=lambda kv: kv[0])), []).append(run)
    rows = []
    for runs_ in by_settings.values():
        metrics = {r.metric for r in runs_ if r.metric is not None}
        parts = [runs_] if len(metrics) <= 1 else [[r for r in runs_ if r.metric == m] for m in
                                                    sorted(metrics | {None}, key=lambda m: (m is None, m or ""))]
        rows.extend((runs_[0].settings, sorted(part, key=lambda r: r.seed)) for part in parts if part)
    keys = sorted({key for settings, _ in rows for key in settings}, key=_key_order)
    return sorted(rows, key=lambda row: (_order(row[0], keys), row[1][0].metric or ""))


def _columns(all_settings):
    """(the entries that get a column, the common settings as flags): an entry equal in every row is
    common (listed when it is one of CORE or not its default); one that differs gets a column, and so
    does one that applies to some rows only, when it is not its default there."""
    keys = sorted({key for s in all_settings for key in s} - {"task", "data"}, key=_key_order)
    columns, common = [], []
    for key in keys:
        values = [s.get(key, ABSENT) for s in all_settings]
        present = {v for v in values if v is not ABSENT}
        interesting = key in CORE or any(v != DEFAULTS.get(key, ABSENT) for v in present)
        if len(present) > 1 or (ABSENT in values and interesting):
            columns.append(key)
        elif ABSENT not in values and interesting and values[0] is not None and values[0] is not False:
            named = _cell(flag(key))                # a key of a newer version's config could hold anything
            common.append(named if values[0] is True else f"{named} {_value(key, values[0])}")
    return columns, common


def _value(key, v):
    """A setting's value as a cell shows it."""
    if v is ABSENT or v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if key in PATHS:
        return _cell(os.path.basename(v) or v)
    return _cell(str(v))


def _shown_values(key, values):
    """{value: its cell} for the values of ``key`` in the rows: a path by its file's name, unless two
    paths of the table share that name."""
    shown = {v: _value(key, v) for v in values}
    if key in PATHS:
        named = [shown[v] for v in shown if isinstance(v, str)]
        shown.update({v: _cell(v) for v in shown if isinstance(v, str) and named.count(shown[v]) > 1})
    return shown


def _scores(group_, repeated):
    """The cells of a row after its settings: metric, baseline, last and best per seed, their means,
    the largest gradient norm."""
    def who(r):
        return f"seed {r.seed}{', ' + _cell(r.folder) if r.seed in repeated else ''}"
    last = ", ".join(f"{r.value} ({who(r)})" for r in group_)
    best = ", ".join(("—" if r.best is None else f"{format_metric(r.best[1])} at step {r.best[0]}") + f" ({who(r)})"
                     for r in group_)
    once = {}
    for r in group_:
        once.setdefault(r.seed, r)
    finals = [r.final for r in once.values() if r.counts and r.final is not None]
    bests = [r.best[1] for r in once.values() if r.counts and r.best is not None]
    metric = next((r.metric for r in group_ if r.metric is not None), None)
    return [_cell(METRIC_NAMES.get(metric, metric)) if metric else "—", _baselines(group_), last,
            _mean(finals, len(once)), best, _mean(bests, len(once)), f"{max(r.gmax for r in group_):.3g}"]


def _mean(values, n):
    """The mean of ``values`` when there is one for each of the ``n`` seeds, else "—"."""
    return format_metric(sum(values) / n) if values and len(values) == n else "—"


def _baselines(group_):
    """The row's baselines, "0.2626 (the last value); 0.3100 (...)"; one that differs between the
    seeds (a held-out part drawn by the seed) as its range."""
    values = {}
    for r in group_:
        for name, value in r.baselines:
            values.setdefault(name, []).append(value)
    if not values:
        return "—"
    return "; ".join(f"{format_metric(vs[0])} ({_cell(name)})" if min(vs) == max(vs) else
                     f"{format_metric(min(vs))}–{format_metric(max(vs))} ({_cell(name)}, by seed)"
                     for name, vs in values.items())


def _key_order(key):
    return (ORDER.index(key), "") if key in ORDER else (len(ORDER), key)


def _order(settings, keys):
    """How a row sorts among rows with the entries ``keys``: by its settings in ORDER, one that does
    not apply first, a cell by its place in MODEL_CELLS."""
    cells = list(MODEL_CELLS)

    def rank(name, v):
        if name == "cell" and v in cells:
            return 1, cells.index(v), ""
        if v is None or v is ABSENT:
            return 0, 0, ""
        return (2, 0, v) if isinstance(v, str) else (1, v, "")
    return [rank(name, settings.get(name, ABSENT)) for name in keys]


def read_run(folder, warn=None):
    """The Run of ``folder``; RunUnreadable says why it cannot be reported. ``warn`` receives
    read_metrics' warning about a damaged last line."""
    config, metrics = os.path.join(folder, "config.json"), os.path.join(folder, "metrics.jsonl")
    settings, seed = _read(config, read_config)
    scoring = _read(os.path.join(folder, "task.json"), read_task)
    recs = _read(metrics, lambda path: read_metrics(path, warn=warn))
    gmax, reached, final, evals = 0.0, 0, None, []
    for r in recs:
        try:
            if "eval_metric" in r:
                final = finite_number(r["eval_metric"], "eval_metric")
                evals.append((r["step"], final, r.get("best") is True))
            if "stopped" not in r and "early_stop" not in r:
                name = "grad_norm_max" if "grad_norm_max" in r else "grad_norm"
                gmax = max(gmax, finite_number(r.get(name, 0.0), name))
                reached = max(reached, r["step"])
        except RunUnreadable as e:
            raise RunUnreadable(f"{metrics}, the record of step {r['step']}: {e}") from None
    try:                              # the checkpoint knows the step even between log lines
        reached = max(reached, load_checkpoint(os.path.join(folder, "checkpoint.npz"))["step"])
    except CheckpointError:
        pass
    higher = scoring["higher_is_better"] if scoring else HIGHER_IS_BETTER.get(settings["task"])
    best = best_of(evals, higher)
    steps, counts, note = settings["steps"], True, ""
    if recs and "stopped" in recs[-1]:
        note = f"diverged at step {recs[-1]['step']}"
        value, final, counts = note, None, False
    elif recs and "early_stop" in recs[-1] and reached <= recs[-1]["step"]:
        note = f"stopped early at step {recs[-1]['step']}"
        value = ("" if final is None else f"{format_metric(final)}, ") + note
    elif reached < steps:
        note = f"step {reached} of {steps}, unfinished"
        value, final, counts = ("" if final is None else f"{format_metric(final)} at ") + note, None, False
    else:
        value = "—" if final is None else format_metric(final)
    return Run(settings, seed, value, final, best, counts, gmax, folder, note,
               metric=scoring["metric"] if scoring else None, higher_is_better=higher,
               baselines=scoring["baselines"] if scoring else [], records=recs)


def best_of(evals, higher_is_better):
    """(step, metric) of the best of ``evals`` [(step, metric, flagged best)], the first of equals,
    by ``higher_is_better``; when that is unknown (None), the last evaluation the run flagged as its
    best; None when there is none."""
    if higher_is_better is None:
        flagged = [(step, metric) for step, metric, best in evals if best]
        return flagged[-1] if flagged else None
    best = None
    for step, metric, _ in evals:
        if best is None or (metric > best[1] if higher_is_better else metric < best[1]):
            best = (step, metric)
    return best


def read_config(path):
    """(settings, seed) of the config.json at ``path``: the settings are the entries that define
    what is learnt, those left out as their defaults, without those that do not apply to the run;
    RunUnreadable names the entry that is missing or not of its kind."""
    cfg = _read_json(path, "the run config")
    for name in REQUIRED:
        if name not in cfg:
            raise RunUnreadable(f"the run config {path} has no entry {name!r}")
    seed = _entry(cfg["seed"], (int,), f"{path}: seed")
    settings = dict(DEFAULTS)
    for name, value in cfg.items():
        if name not in IGNORED:
            settings[name] = _entry(value, KINDS.get(name, SCALARS), f"{path}: {name}")
    for name in IGNORED:
        settings.pop(name, None)
    return {name: value for name, value in settings.items() if name not in DEFAULTS or _applies(settings, name)}, seed


def _applies(settings, name):
    try:
        return applies(settings, name)
    except (KeyError, TypeError):           # a schedule or a task of a newer version: compare it
        return True


def read_task(path):
    """What the task.json at ``path`` says: {"metric", "higher_is_better", "baselines": [(name,
    value)]}; None when there is none (a run of an older version). RunUnreadable says what is wrong."""
    try:
        task = _read_json(path, "the task file")
    except FileNotFoundError:
        return None
    for name, kind in (("metric", str), ("higher_is_better", bool)):
        if not fits(task.get(name), kind):
            raise RunUnreadable(f"{path}: {name} must be {'a string' if kind is str else 'true or false'}, "
                                f"got {_shown(task.get(name))}")
    baselines = task.get("baselines", [])
    if not isinstance(baselines, list):
        raise RunUnreadable(f"{path}: baselines must be a list, got {_shown(baselines)}")
    read = []
    for i, b in enumerate(baselines):
        if not (isinstance(b, dict) and isinstance(b.get("name"), str)):
            raise RunUnreadable(f"{path}: baselines[{i}] must be an object with a name, got {_shown(b)}")
        read.append((b["name"], finite_number(b.get("value"), f"{path}: baselines[{i}].value")))
    return {"metric": task["metric"], "higher_is_better": task["higher_is_better"], "baselines": read}


def _read_json(path, what):
    """The JSON object in the file ``path``, read as files.read_text reads (``what`` names it)."""
    text = read_text(path, CONFIG_LIMIT, what)
    try:
        value = json.loads(text)
    except RecursionError:
        raise RunUnreadable(f"{what} {path} is nested too deeply to be a run's") from None
    except ValueError as e:                   # not JSON, or an integer of more than 4300 digits
        raise RunUnreadable(f"{what} {path} cannot be read as JSON ({e})") from None
    if not isinstance(value, dict):
        raise RunUnreadable(f"{what} {path} holds a JSON {_json_kind(value)}, not an object of entries")
    return value


def _entry(value, kinds, field):
    """``value`` when it is of one of ``kinds`` (a float kind: as a float); RunUnreadable naming
    ``field`` otherwise."""
    if value is None and None in kinds:
        return None
    if isinstance(value, str) and str in kinds or isinstance(value, bool) and bool in kinds:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and int in kinds:
        return value if fits(value, float) else finite_number(value, field)    # hundreds of digits: says so
    if float in kinds and isinstance(value, float):
        return finite_number(value, field)
    if kinds is SCALARS:
        raise RunUnreadable(f"{field} must be a string, a number, true, false or null, got {_shown(value)}")
    if float in kinds:
        return finite_number(value, field)
    expected = {str: "a string", bool: "true or false"}.get(kinds[0], "an integer")
    raise RunUnreadable(f"{field} must be {expected}, got {_shown(value)}")


def finite_number(value, field):
    """``value`` as a float when it is a JSON number (an int or a float, not a bool) that is finite
    as a float; otherwise RunUnreadable naming ``field``."""
    if fits(value, float):
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):     # inf, nan, or hundreds of digits
        raise RunUnreadable(f"{field} is {_shown(value)}, not a finite number")
    raise RunUnreadable(f"{field} must be a number, got {_shown(value)}")


def _read(path, read):
    """``read(path)``, its OSError and ValueError as RunUnreadable (FileNotFoundError from a reader
    that does not take a missing file as a matter of course)."""
    try:
        return read(path)
    except RunUnreadable:
        raise
    except OSError as e:
        raise RunUnreadable(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise RunUnreadable(str(e)) from None


def sayer(warn, command):
    """``warn`` (default: a line on stderr after ``command``:) taking each line printable."""
    if warn is None:
        def warn(line):
            print(f"{command}: {line}", file=sys.stderr)
    return lambda line: warn(_printable(line))


def _json_kind(value):
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _shown(value):
    """``value`` for a message, short: reprlib cuts long strings and numbers, and nesting (which
    the full repr of a deeply nested list could not even print)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 30:
        return f"an integer of {len(str(abs(value)))} digits"
    return reprlib.repr(value)


def _printable(text):
    """``text`` with each unprintable character (a newline, a lone surrogate from a file name
    that is not UTF-8) as its escape, so that it writes as one line to any stream."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _cell(text):
    """``text`` for a cell of the Markdown table: printable, its pipes escaped."""
    return _printable(text).replace("|", "\\|")


def _write(out, line):
    encoding = getattr(out, "encoding", None)       # a stream that cannot hold "—" gets "\u2014"
    if encoding:
        line = line.encode(encoding, "backslashreplace").decode(encoding)
    out.write(line + "\n")

"""``gpurnn report``: a Markdown table of run folders, one row per configuration, its seeds side by
side: the held-out metric at the last evaluation (or where training stopped) and the largest
gradient norm seen before clipping.

A run folder is read from its config.json (what was run), metrics.jsonl (gpurnn.runs.read_metrics)
and checkpoint.npz (gpurnn.checkpoint.load_checkpoint; only its step, and only when it loads), and
whatever is in them, the report neither hangs nor reads without limit nor fails: only regular files
are read (a FIFO, a device, a folder in their place is refused unread), each up to a limit
(CONFIG_LIMIT for config.json; metrics.jsonl line by line), as UTF-8 JSON; every config entry and every record field
the table uses must be of its kind (numbers finite). A run folder that fails any of this is skipped
with one line that names it and says what is wrong; a record with a damaged field skips its run too
(dropping the record would show another step's metric as the run's), except a damaged last line of
metrics.jsonl, a write cut short, which read_metrics drops with a warning.

    status = report(["runs/lstm-s0", "runs/lstm-s1"])    # the table on stdout, warnings on stderr
"""

import json
import os
import reprlib
import sys
from dataclasses import dataclass

from .checkpoint import CheckpointError, load_checkpoint
from .files import read_text
from .kernels.vocabulary import MODEL_CELLS
from .runs import fits, format_metric, read_metrics

# config.json is about 600 bytes (a path or two in it); anything near this is not a run's config.
CONFIG_LIMIT = 1 << 20

# The config entries that make a row and what each must be: str, int (not a bool), float (any
# finite int or float, shown as a float) or None; entries that may be None may also be absent.
ROW_ENTRIES = dict(task=(str,), cell=(str,), init_scale=(float, None), seq_len=(int,), hidden=(int,),
                   steps=(int,), optimizer=(str,), lr=(float,), clip=(float, None), data=(str, None))

HEADER = ("| task | cell | T | hidden | steps | optimizer, lr | clip | held-out metric, per seed | mean "
          "| largest gradient norm |",
          "|---|---|---|---|---|---|---|---|---|---|")


class RunUnreadable(ValueError):
    """A run folder that the report skips; the message says why."""


@dataclass
class Run:
    """What the report shows of one run folder."""
    key: tuple              # the ROW_ENTRIES as (name, value) pairs: runs with the same key share a row
    seed: int
    value: str              # its cell of the row: "0.0123", "diverged at step 15", "step 2 of 4, unfinished"
    final: float | None     # the held-out metric that counts towards the row's mean (None: none)
    gmax: float             # the largest gradient norm logged
    folder: str


def report(runs, out=None, warn=None):
    """Write the table of the run folders ``runs`` to ``out`` (default sys.stdout) and return the
    exit status: 0 when the table was written, even if some folders were skipped; 1 when none could
    be read, and then nothing is written. ``warn`` receives one line per skipped folder ("skipping
    DIR: why") and per warning ("warning: ..."); by default they go to stderr after "gpurnn report: ".

    Two runs of one configuration and seed (a copy, or a rerun) are both listed with their folders,
    and the mean counts the seed once (the first given). A run that has not reached its last step
    shows where it is ("step 500 of 2000, unfinished") and, like a diverged one, leaves the row's mean
    out."""
    out = sys.stdout if out is None else out
    if warn is None:
        def warn(line):
            print(f"gpurnn report: {line}", file=sys.stderr)

    def say(line):
        warn(_printable(line))
    rows = {}
    for folder in runs:
        try:
            run = read_run(folder, warn=lambda m: say(f"warning: {m}"))
        except RunUnreadable as e:
            say(f"skipping {folder}: {e}")
            continue
        rows.setdefault(run.key, []).append(run)
    if not rows:
        say("no run could be read; nothing to report")
        return 1
    for line in HEADER:
        _write(out, line)
    for key, group in sorted(rows.items(), key=lambda kv: _order(dict(kv[0]))):
        group.sort(key=lambda r: r.seed)
        seeds = [r.seed for r in group]
        repeated = {s for s in seeds if seeds.count(s) > 1}
        if repeated:
            say(f"warning: runs {', '.join(r.folder for r in group if r.seed in repeated)} have the same "
                f"configuration and seed; the mean counts each seed once")
        _write(out, _row(dict(key), group, repeated))
    return 0


def _row(k, group, repeated):
    per_seed = ", ".join(f"{r.value} (seed {r.seed}{', ' + _cell(r.folder) if r.seed in repeated else ''})"
                         for r in group)
    once = {}
    for r in group:
        once.setdefault(r.seed, r.final)
    finals = [f for f in once.values() if f is not None]
    mean = format_metric(sum(finals) / len(finals)) if finals and len(finals) == len(once) else "—"
    cell = _cell(k["cell"]) + ("" if k["init_scale"] is None else f", W_hh scale {k['init_scale']:g}")
    task = _cell(k["task"] if k["data"] is None else os.path.basename(k["data"]))     # your data: its file
    return (f"| {task} | {cell} | {k['seq_len']} | {k['hidden']} | {k['steps']} | "
            f"{_cell(k['optimizer'])} {k['lr']:g} | {k['clip'] or 'off'} | {per_seed} | {mean} | "
            f"{max(r.gmax for r in group):.3g} |")


def _order(k):
    cells = list(MODEL_CELLS)
    return (k["task"], k["data"] or "", k["seq_len"], cells.index(k["cell"]) if k["cell"] in cells else len(cells),
            k["init_scale"] or 0, k["clip"] or 0)


def read_run(folder, warn=None):
    """The Run of ``folder``; RunUnreadable says why it cannot be reported. ``warn`` receives
    read_metrics' warning about a damaged last line."""
    config, metrics = os.path.join(folder, "config.json"), os.path.join(folder, "metrics.jsonl")
    key, seed = _read(config, read_config)
    recs = _read(metrics, lambda path: read_metrics(path, warn=warn))
    gmax, reached, final = 0.0, 0, None
    for r in recs:
        try:
            if "eval_metric" in r:
                final = finite_number(r["eval_metric"], "eval_metric")
            if "stopped" not in r:
                name = "grad_norm_max" if "grad_norm_max" in r else "grad_norm"
                gmax = max(gmax, finite_number(r.get(name, 0.0), name))
                reached = max(reached, r["step"])
        except RunUnreadable as e:
            raise RunUnreadable(f"{metrics}, the record of step {r['step']}: {e}") from None
    try:                              # the checkpoint knows the step even between log lines
        reached = max(reached, load_checkpoint(os.path.join(folder, "checkpoint.npz"))["step"])
    except CheckpointError:
        pass
    steps = dict(key)["steps"]
    if recs and "stopped" in recs[-1]:
        value, final = f"diverged at step {recs[-1]['step']}", None
    elif reached < steps:
        shown = "" if final is None else f"{format_metric(final)} at "
        value, final = f"{shown}step {reached} of {steps}, unfinished", None
    else:
        value = "—" if final is None else format_metric(final)
    return Run(key, seed, value, final, gmax, folder)


def read_config(path):
    """The row key (ROW_ENTRIES' names and values) and the seed of the config.json at ``path``;
    RunUnreadable names the entry that is missing or not of its kind."""
    text = read_text(path, CONFIG_LIMIT, "the run config")
    try:
        cfg = json.loads(text)
    except RecursionError:
        raise RunUnreadable(f"the run config {path} is nested too deeply to be a run's config") from None
    except ValueError as e:                   # not JSON, or an integer of more than 4300 digits
        raise RunUnreadable(f"the run config {path} cannot be read as JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise RunUnreadable(f"the run config {path} holds a JSON {_json_kind(cfg)}, not an object of entries")
    key = []
    for name, kinds in ROW_ENTRIES.items():
        if name not in cfg and None not in kinds:
            raise RunUnreadable(f"the run config {path} has no entry {name!r}")
        key.append((name, _entry(cfg.get(name), kinds, f"{path}: {name}")))
    if "seed" not in cfg:
        raise RunUnreadable(f"the run config {path} has no entry 'seed'")
    return tuple(key), _entry(cfg["seed"], (int,), f"{path}: seed")


def _entry(value, kinds, field):
    if value is None and None in kinds:
        return None
    if str in kinds:
        if isinstance(value, str):
            return value
        raise RunUnreadable(f"{field} must be a string, got {_shown(value)}")
    if int in kinds:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RunUnreadable(f"{field} must be an integer, got {_shown(value)}")
    return finite_number(value, field)


def finite_number(value, field):
    """``value`` as a float when it is a JSON number (an int or a float, not a bool) that is finite
    as a float; otherwise RunUnreadable naming ``field``."""
    if fits(value, float):
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):     # inf, nan, or hundreds of digits
        raise RunUnreadable(f"{field} is {_shown(value)}, not a finite number")
    raise RunUnreadable(f"{field} must be a number, got {_shown(value)}")


def _read(path, read):
    """``read(path)``, its OSError and ValueError as RunUnreadable."""
    try:
        return read(path)
    except RunUnreadable:
        raise
    except OSError as e:
        raise RunUnreadable(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise RunUnreadable(str(e)) from None


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

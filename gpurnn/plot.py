"""``gpurnn plot``: the loss curves of one or several run folders, to a PNG.

Two panels against the step: on the left the loss, training (each logged step's "loss", a thin
line) and held-out ("eval_loss", dots joined); on the right the task's metric the same way
("metric", "eval_metric"), each naive baseline of the run's task.json as a dashed horizontal line,
and the best held-out evaluation marked with a star. One colour per run, named in the legend by its
folder; a panel's y axis is logarithmic when every value on it is positive.

Run folders are read as gpurnn report reads them (gpurnn.report.read_run: only regular files, each
within a limit), and the fields drawn must be finite numbers: a folder that cannot be read is
skipped with one line saying why. The PNG is written whole or not at all (a temporary file renamed
over it). Needs matplotlib (``pip install 'gpurnn[plot]'``), imported only here, and drawn without
pyplot, so that no window opens and no backend is changed.

    status = plot(["runs/lstm-s0", "runs/gru-s0"], "curves.png")    # 0: written
"""

import os
from dataclasses import dataclass

from .files import write_whole
from .report import RunUnreadable, _printable, finite_number, read_run, read_runs, sayer
from .runs import format_metric

MISSING = "matplotlib is not installed; pip install 'gpurnn[plot]'"
SERIES = ("loss", "eval_loss", "metric", "eval_metric")     # the record fields drawn
LOSS_NAMES = {"mse": "mean squared error", "cross_entropy": "cross-entropy (nats)"}
METRIC_NAMES = {"bits_per_char": "bits per character"}
BASELINE_COLORS = ("0.15", "0.55")                          # the task's own baseline darker


@dataclass
class Curves:
    """What is drawn of one run folder."""
    name: str               # in the legend
    series: dict            # SERIES' field -> (steps, values), the records that have it, in order
    best: tuple | None      # (step, held-out metric) of the best evaluation
    baselines: list         # [(name, value)] from task.json, the task's own first
    metric: str | None      # the metric's name from task.json ("mse"); None for a run without one
    note: str               # how it ended, when not at its last step ("diverged at step 15")


def curves_of(folder, warn=None):
    """The Curves of the run ``folder`` (named by it); RunUnreadable says why it cannot be drawn.
    ``warn`` receives read_metrics' warning about a damaged last line."""
    run = read_run(folder, warn=warn)
    series = {name: ([], []) for name in SERIES}
    for r in run.records:
        for name in SERIES:
            if name in r:
                try:
                    value = finite_number(r[name], name)
                except RunUnreadable as e:
                    raise RunUnreadable(f"{os.path.join(folder, 'metrics.jsonl')}, the record of step "
                                        f"{r['step']}: {e}") from None
                series[name][0].append(r["step"])
                series[name][1].append(value)
    return Curves(folder, series, run.best, run.baselines, run.metric, run.note)


def figure(curves):
    """A matplotlib Figure (not pyplot's: no window, no backend chosen) of the Curves ``curves``;
    ImportError when matplotlib is not installed."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(12, 4.6), dpi=110)
    ax_loss, ax_metric = fig.subplots(1, 2)
    names = _legend_names([c.name for c in curves])
    handles = []
    for i, (c, name) in enumerate(zip(curves, names)):
        color = f"C{i % 10}"
        for ax, train, held in ((ax_loss, "loss", "eval_loss"), (ax_metric, "metric", "eval_metric")):
            ax.plot(*c.series[train], color=color, linewidth=0.8, alpha=0.5, label=f"{name}: training {train}")
            ax.plot(*c.series[held], color=color, linewidth=1.6, marker="o", markersize=3,
                    label=f"{name}: held-out {train}")
        if c.best is not None:
            ax_metric.plot([c.best[0]], [c.best[1]], linestyle="none", marker="*", markersize=13, color=color,
                           markeredgecolor="black", label=f"{name}: best")
        handles.append(Line2D([], [], color=color, linewidth=1.6, label=name + (f" ({c.note})" if c.note else "")))
    baselines = list(dict.fromkeys((b, v) for c in curves for b, v in c.baselines))
    for j, (b, v) in enumerate(baselines):
        ax_metric.axhline(v, linestyle="--", linewidth=1.1, color=BASELINE_COLORS[min(j, 1)],
                          label=f"baseline: {b} {format_metric(v)}")
    metrics = list(dict.fromkeys(METRIC_NAMES.get(c.metric, c.metric) for c in curves if c.metric))
    ax_loss.set_title("loss: training (thin) and held-out (dots)")
    ax_loss.set_ylabel("loss")
    ax_metric.set_title(f"{' / '.join(metrics) or 'metric'}: training and held-out, best ★, baselines dashed")
    ax_metric.set_ylabel(" / ".join(metrics) or "metric")
    for ax in (ax_loss, ax_metric):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        values = [y for line in ax.get_lines() for y in line.get_ydata()]
        if values and all(y > 0 for y in values):
            ax.set_yscale("log")
    ax_loss.legend(handles=handles + [Line2D([], [], color="0.4", linewidth=0.8, alpha=0.5, label="training"),
                                      Line2D([], [], color="0.4", linewidth=1.6, marker="o", markersize=3,
                                             label="held-out")], fontsize=7)
    marks = [line for line in ax_metric.get_lines() if line.get_label().startswith("baseline: ")]
    marks.append(Line2D([], [], linestyle="none", marker="*", markersize=10, color="0.6", markeredgecolor="black",
                        label="best held-out"))
    ax_metric.legend(handles=marks, fontsize=7)
    fig.tight_layout()
    return fig


def _legend_names(folders):
    """Each folder by its last part, or as given when two would share that name."""
    short = [os.path.basename(os.path.normpath(f)) or f for f in folders]
    return [s if short.count(s) == 1 else f for s, f in zip(short, folders)]


def write_png(fig, path):
    """Save ``fig`` as a PNG at ``path`` through a temporary file beside it, renamed over it, so
    that a failure leaves no part of a file (OSError when it cannot be written)."""
    write_whole(path, lambda f: fig.savefig(f, format="png"))


def plot(runs, out_png, warn=None):
    """Draw the run folders ``runs`` to the PNG ``out_png`` and return the exit status: 0 when it
    was written (and its path printed on stdout), even if some folders were skipped; 1 when none
    could be read or the file cannot be written; 2 when matplotlib is not installed or a name given
    is not a folder. When it is not 0 nothing is written. ``warn`` receives one line per skipped
    folder and per problem; by default they go to stderr after "gpurnn plot: "."""
    say = sayer(warn, "gpurnn plot")
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        say(MISSING)
        return 2
    status, read = read_runs(runs, curves_of, say, "plot")
    if status:
        return status
    try:
        write_png(figure(read), out_png)
    except OSError as e:
        say(f"{out_png}: {e.strerror or e}")         # write_whole's: "cannot be written (why)"
        return 1
    print(_printable(f"loss curves: {out_png}"))
    return 0

"""gpurnn plot: the PNG of the loss curves of run folders. What is drawn is checked on the figure
itself (each run's training and held-out series are its records', the baselines are task.json's, the
best evaluation is marked where it was), the file is a whole PNG or nothing, and a folder that cannot
be read is skipped with one line, as gpurnn report skips it."""

import json
import os
import sys

import pytest

import gpurnn.plot as plotting
from gpurnn.plot import MISSING, curves_of, figure, plot

PNG = b"\x89PNG\r\n\x1a\n"
CONFIG = {"backend": "cpu", "backend_used": "cpu", "batch": 4, "cell": "lstm", "clip": 1.0, "dtype": "float32",
          "early_stop": 0, "embed": None, "eval_every": 2, "eval_sequences": 16, "hidden": 8, "init_scale": None,
          "layers": 1, "log_every": 1, "lr": 0.01, "optimizer": "adam", "save_every": 100, "schedule": "constant",
          "seed": 0, "seq_len": 6, "steps": 6, "task": "adding", "tbptt": 0, "warmup": 0}
TASK = {"task": "adding: baseline mse 0.1667", "metric": "mse", "higher_is_better": False, "loss": "mse",
        "baselines": [{"name": "answering the mean", "value": 1 / 6}]}
# steps 1..6 logged, held out at 2, 4, 6: the best (lowest) at 4
RECORDS = [{"step": s, "loss": 1.0 / s, "metric": 1.1 / s, "grad_norm": 1.0, "grad_norm_max": 1.5}
           for s in range(1, 7)]
for r, (eval_loss, eval_metric) in zip(RECORDS[1::2], ((0.9, 0.8), (0.5, 0.3), (0.6, 0.4))):
    r.update(eval_loss=eval_loss, eval_metric=eval_metric)


def make_run(folder, config=None, records=RECORDS, task=TASK):
    """A run folder with config.json (CONFIG changed by ``config``), metrics.jsonl and task.json
    (None: none); a value of False leaves that file out."""
    os.makedirs(folder)
    if config is not False:
        (folder / "config.json").write_text(json.dumps(dict(CONFIG, **(config or {}))))
    if records is not False:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if task is not None:
        (folder / "task.json").write_text(json.dumps(task))
    return str(folder)


def run_plot(runs, out):
    warnings = []
    status = plot([str(r) for r in runs], str(out), warn=warnings.append)
    return status, warnings


def lines(ax):
    """{label: (x, y)} of the lines drawn on ``ax``."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def test_a_png_is_written_and_its_path_printed(tmp_path, mpl, capsys):
    run = make_run(tmp_path / "lstm")
    out = tmp_path / "curves.png"
    assert plot([run], str(out)) == 0
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000
    assert capsys.readouterr() == (f"loss curves: {out}\n", "")
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "lstm"]             # no temporary file left


def test_the_figure_draws_each_runs_records_the_baselines_and_the_best(tmp_path, mpl):
    accuracy = [dict(r, eval_metric=m) if "eval_metric" in r else r for r, m in
                zip(RECORDS, (None, 0.5, None, 0.9, None, 0.7))]
    task = dict(TASK, metric="accuracy", higher_is_better=True,
                baselines=[{"name": "chance", "value": 0.125}, {"name": "the last value", "value": 0.25}])
    runs = [curves_of(make_run(tmp_path / "a")), curves_of(make_run(tmp_path / "b", records=accuracy, task=task))]
    fig = figure(runs)
    ax_loss, ax_metric = fig.axes[:2]
    left, right = lines(ax_loss), lines(ax_metric)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert left["a: training loss"] == ([1, 2, 3, 4, 5, 6], [1.0 / s for s in range(1, 7)])
    assert left["a: held-out loss"] == ([2, 4, 6], [0.9, 0.5, 0.6])
    assert right["a: training metric"] == ([1, 2, 3, 4, 5, 6], [1.1 / s for s in range(1, 7)])
    assert right["a: held-out metric"] == ([2, 4, 6], [0.8, 0.3, 0.4])
    assert right["b: held-out metric"] == ([2, 4, 6], [0.5, 0.9, 0.7])
    assert right["a: best"] == ([4], [0.3]) and right["b: best"] == ([4], [0.9])     # lower, then higher is better
    for name, value in (("answering the mean", 1 / 6), ("chance", 0.125), ("the last value", 0.25)):
        line = next(line for line in ax_metric.get_lines() if line.get_label().startswith(f"baseline: {name} "))
        assert list(line.get_ydata()) == [value, value] and line.get_linestyle() == "--"
    colors = {label: line.get_color() for line in ax_loss.get_lines() for label in [line.get_label()]}
    assert colors["a: training loss"] == colors["a: held-out loss"] != colors["b: held-out loss"]
    legend = [t.get_text() for t in ax_loss.get_legend().get_texts()]
    assert legend[:2] == ["a", "b"] and a not in legend and b not in legend
    assert ax_loss.get_yscale() == ax_metric.get_yscale() == "log"            # every value positive
    assert "mse / accuracy" in ax_metric.get_ylabel()


def test_a_panel_with_a_value_of_zero_or_below_is_linear(tmp_path, mpl):
    records = [dict(r, metric=0.0) if r["step"] == 1 else r for r in RECORDS]
    fig = figure([curves_of(make_run(tmp_path / "a", records=records))])
    assert [ax.get_yscale() for ax in fig.axes[:2]] == ["log", "linear"]


def test_runs_of_one_name_are_named_by_their_paths_and_their_end_is_said(tmp_path, mpl):
    diverged = RECORDS[:3] + [{"step": 4, "stopped": "the loss is nan at step 4"}]
    runs = [make_run(tmp_path / "x" / "s0"), make_run(tmp_path / "y" / "s0", records=diverged)]
    fig = figure([curves_of(r) for r in runs])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[:2] == [runs[0], f"{runs[1]} (diverged at step 4)"]


def test_plot_draws_what_it_read(tmp_path, mpl, monkeypatch):
    """End to end: the figure written is that of the runs that could be read, in the order given."""
    drawn = []
    real = plotting.write_png
    monkeypatch.setattr(plotting, "write_png", lambda fig, path: (drawn.append(fig), real(fig, path)))
    good, bad = make_run(tmp_path / "good"), make_run(tmp_path / "bad", config=False)
    status, warnings = run_plot([bad, good], tmp_path / "c.png")
    assert status == 0 and (tmp_path / "c.png").read_bytes().startswith(PNG)
    assert warnings == [f"skipping {bad}: cannot read {os.path.join(bad, 'config.json')}: No such file or directory"]
    assert lines(drawn[0].axes[1])["good: held-out metric"] == ([2, 4, 6], [0.8, 0.3, 0.4])


def test_a_run_whose_drawn_field_is_damaged_is_skipped(tmp_path, mpl):
    records = [dict(r, eval_loss="x") if r["step"] == 4 else r for r in RECORDS]
    good, bad = make_run(tmp_path / "good"), make_run(tmp_path / "bad", records=records)
    status, warnings = run_plot([good, bad], tmp_path / "c.png")
    assert status == 0 and warnings == [f"skipping {bad}: {os.path.join(bad, 'metrics.jsonl')}, the record of step "
                                        f"4: eval_loss must be a number, got 'x'"]


def test_no_readable_run_is_status_1_and_no_file(tmp_path, mpl):
    bad = make_run(tmp_path / "bad", records=False)
    status, warnings = run_plot([bad], tmp_path / "c.png")
    assert status == 1 and warnings[-1] == "no run could be read; nothing to plot" and len(warnings) == 2
    assert sorted(os.listdir(tmp_path)) == ["bad"]


def test_a_name_that_is_no_folder_is_status_2(tmp_path, mpl, capsys):
    assert plot([make_run(tmp_path / "good"), str(tmp_path / "nope")], str(tmp_path / "c.png")) == 2
    assert capsys.readouterr() == ("", f"gpurnn plot: {tmp_path / 'nope'}: no such run folder\n")
    assert not (tmp_path / "c.png").exists()


def test_without_matplotlib_it_is_one_line_and_status_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)            # import matplotlib raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    status, warnings = run_plot([make_run(tmp_path / "good")], tmp_path / "c.png")
    assert (status, warnings) == (2, [MISSING]) and MISSING == "matplotlib is not installed; pip install 'gpurnn[plot]'"
    assert not (tmp_path / "c.png").exists()


def test_a_failed_write_leaves_the_old_file_and_no_part_of_the_new(tmp_path, mpl, monkeypatch):
    from matplotlib.figure import Figure

    def fail(self, f, **kwargs):
        f.write(PNG + b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", fail)
    out = tmp_path / "c.png"
    out.write_bytes(b"the old plot")
    status, warnings = run_plot([make_run(tmp_path / "good")], out)
    assert (status, warnings) == (1, [f"{out}: cannot be written (No space left on device)"])
    assert out.read_bytes() == b"the old plot" and sorted(os.listdir(tmp_path)) == ["c.png", "good"]


def test_a_folder_to_write_into_that_does_not_exist_is_one_line(tmp_path, mpl):
    status, warnings = run_plot([make_run(tmp_path / "good")], tmp_path / "none" / "c.png")
    assert (status, warnings) == (1, [f"{tmp_path / 'none' / 'c.png'}: cannot be written (No such file or directory)"])


def test_the_png_is_readable_as_the_umask_allows_like_any_file_written(tmp_path, mpl):
    old = os.umask(0o022)
    try:
        assert run_plot([make_run(tmp_path / "good")], tmp_path / "c.png")[0] == 0
    finally:
        os.umask(old)
    assert (tmp_path / "c.png").stat().st_mode & 0o777 == 0o644

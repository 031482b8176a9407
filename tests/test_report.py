"""gpurnn report: what the table shows (one row per configuration, the seeds side by side, the
settings that differ as columns, the metric, its baselines, each seed's last and best held-out
score) and, on damaged run folders, that whatever config.json, task.json, metrics.jsonl and
checkpoint.npz hold (numbers too large for a float, deep nesting, wrong kinds, FIFOs, devices,
folders, bytes that are not UTF-8), the report skips the run with one line naming the folder and
why, never hangs, never reads without limit and never raises. Hand-written probes first, then
hypothesis.

Every test runs under an alarm (POSIX), so that a regression that blocks (a FIFO opened for
reading) fails instead of hanging; the probes that could read without limit (/dev/zero) run in a
child process with a timeout and a memory cap.
"""

import io
import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest

import gpurnn
from gpurnn.files import read_text
from gpurnn.report import COLUMNS, CONFIG_LIMIT, REQUIRED, report
from gpurnn.runs import read_metrics

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

# A tiny run's files as an older gpurnn train wrote them (--hidden 8 --seq-len 6 --batch 4 --steps 3):
# every entry of the DEFAULTS of then, and no task.json.
CONFIG = {"backend": "cpu", "backend_used": "cpu", "batch": 4, "cell": "lstm", "clip": 1.0, "copy_len": 10,
          "data": None, "dtype": "float32", "embed": None, "eval_every": 2, "eval_sequences": 16, "features": None,
          "hidden": 8, "horizon": None, "init_scale": None, "layers": 1, "log_every": 1, "lr": 0.01,
          "optimizer": "adam", "save_every": 100, "seed": 0, "seq_len": 6, "steps": 3, "target": None,
          "task": "adding", "tbptt": 0, "text": None, "validation": 0.2}
# The same run as gpurnn train writes it now: only the entries that apply to it (gpurnn.runs.applicable).
NEW_CONFIG = {"backend": "cpu", "backend_used": "cpu", "batch": 4, "cell": "lstm", "clip": 1.0, "dtype": "float32",
              "early_stop": 0, "embed": None, "eval_every": 2, "eval_sequences": 16, "hidden": 8, "init_scale": None,
              "layers": 1, "log_every": 1, "lr": 0.01, "optimizer": "adam", "save_every": 100, "schedule": "constant",
              "seed": 0, "seq_len": 6, "steps": 3, "task": "adding", "tbptt": 0, "warmup": 0}
# A run on a CSV series, written now.
SERIES_CONFIG = {"backend": "cpu", "backend_used": "cpu", "batch": 4, "cell": "gru", "clip": 1.0,
                 "data": "/home/me/data/sales.csv", "difference": False, "dtype": "float32", "early_stop": 0,
                 "embed": None, "eval_every": 2, "features": None, "hidden": 8, "horizon": 1, "init_scale": None,
                 "layers": 1, "log_every": 1, "lr": 0.01, "optimizer": "adam", "save_every": 100,
                 "schedule": "constant", "season": None, "seed": 0, "seq_len": 32, "steps": 3, "target": "sales",
                 "task": "data", "tbptt": 0, "validation": 0.2, "warmup": 0}
TASK = {"task": "adding: baseline mse 0.1667", "metric": "mse", "higher_is_better": False, "loss": "mse",
        "baselines": [{"name": "answering the mean", "value": 1 / 6}]}
RECORDS = [{"step": 1, "loss": 1.57, "metric": 1.57, "grad_norm": 2.68, "grad_norm_max": 2.68},
           {"step": 2, "loss": 0.97, "metric": 0.97, "grad_norm": 1.87, "grad_norm_max": 1.87, "eval_loss": 1.36,
            "eval_metric": 1.3596},
           {"step": 3, "loss": 0.88, "metric": 0.88, "grad_norm": 1.89, "grad_norm_max": 1.89, "eval_loss": 1.28,
            "eval_metric": 1.2806}]
COMMON = ("settings common to every row: --seq-len 6, --cell lstm, --hidden 8, --layers 1, --batch 4, --steps 3, "
          "--optimizer adam, --lr 0.01, --clip 1, --eval-every 2, --eval-sequences 16")
HEADER = "| task | " + " | ".join(COLUMNS) + " |"
GOOD_ROW = "| adding | — | — | 1.2806 (seed 0) | 1.2806 | 1.2806 at step 3 (seed 0) | 1.2806 | 2.68 |"
GOOD_TABLE = [COMMON, "", HEADER, "|" + "---|" * 8, GOOD_ROW]
BIG = "9" * 400                     # an integer that float() refuses (OverflowError)
DEEP = "[" * 100_000 + "]" * 100_000                 # deeper than json can parse (RecursionError)
NESTED = "[" * 500 + "]" * 500                       # parses, but its full repr could not be printed


def config_text(config=CONFIG, **changes):
    return json.dumps(dict(config, **changes), indent=2)


def metrics_text(records=RECORDS):
    return "".join(json.dumps(r) + "\n" for r in records)


def changed_record(i, **changes):
    records = [dict(r) for r in RECORDS]
    records[i].update(changes)
    return metrics_text(records)


def make_run(folder, config=None, metrics=None, task=False):
    """A run folder: config.json, metrics.jsonl and task.json as text or bytes (None: a good one), or
    made by a callable of the path (os.mkdir, os.mkfifo, ...), or left out (False; task.json is left
    out unless given, as an older version wrote no task.json)."""
    os.makedirs(folder, exist_ok=True)
    for name, content, good in (("config.json", config, config_text()), ("metrics.jsonl", metrics, metrics_text()),
                                ("task.json", task, json.dumps(TASK))):
        path = os.path.join(folder, name)
        content = good if content is None else content
        if content is False:
            continue
        if callable(content):
            content(path)
            continue
        with open(path, "wb") as f:
            f.write(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    return str(folder)


def run_report(*folders):
    """The report of ``folders``, in-process: (exit status, the table, the warning lines)."""
    out, warnings = io.StringIO(), []
    status = report([str(f) for f in folders], out=out, warn=warnings.append)
    return status, out.getvalue(), warnings


def table_of(text):
    """The Markdown table in the report's output as dicts keyed by its header, one per row."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[1] == "|" + "---|" * (lines[0].count(" | ") + 1), lines[:2]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]
    assert all(len(row) == len(header) for row in rows), lines
    return [dict(zip(header, row)) for row in rows]


def assert_well_formed(status, table, warnings):
    """Whatever the folders held: a status of 0 with the table or 1 with none, warnings one line each."""
    assert status in (0, 1)
    if status == 0:
        header = next(line for line in table.splitlines() if line.startswith("|"))
        assert header.startswith("| task | ") and header.endswith(HEADER[len("| task"):]), header
        assert table_of(table)                  # a valid table: the separator, and as many cells in each row
    else:
        assert table == ""
    assert all("\n" not in w and "Traceback" not in w for w in warnings)
    assert "Traceback" not in table


@pytest.fixture(autouse=True)
def alarm():
    """Fail, not hang, when a test blocks (a FIFO opened for reading blocks until a writer comes)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def ring(signum, frame):
        raise TimeoutError("the test blocked for 60 s (a FIFO or a device read?)")
    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- good folders
def test_a_good_run_gives_its_row(tmp_path):
    folder = make_run(tmp_path / "s0")
    status, table, warnings = run_report(folder)
    assert status == 0 and table.splitlines() == GOOD_TABLE
    assert warnings == [f"loss curves: gpurnn plot {folder} --out curves.png"]


def test_a_bad_folder_beside_a_good_one_is_skipped_and_the_table_printed(tmp_path):
    good, bad = make_run(tmp_path / "good"), make_run(tmp_path / "bad", config=False)
    status, table, warnings = run_report(bad, good)
    assert status == 0 and table.splitlines() == GOOD_TABLE
    assert warnings == [f"skipping {bad}: cannot read {os.path.join(bad, 'config.json')}: No such file or directory",
                        f"loss curves: gpurnn plot {good} --out curves.png"]


def test_no_readable_run_is_status_1_and_no_table(tmp_path):
    status, table, warnings = run_report(make_run(tmp_path / "a", config=False),
                                         make_run(tmp_path / "b", metrics=False))
    assert (status, table) == (1, "")
    assert len(warnings) == 3 and warnings[-1] == "no run could be read; nothing to report"


def test_a_name_that_is_no_folder_is_status_2_before_anything_is_written(tmp_path):
    """Checked for every name first: a typo in one of many names prints no table of the others."""
    (tmp_path / "file").write_text("x")
    status, table, warnings = run_report(tmp_path / "nope", make_run(tmp_path / "good"), tmp_path / "file")
    assert (status, table) == (2, "")
    assert warnings == [f"{tmp_path / 'nope'}: no such run folder", f"{tmp_path / 'file'}: not a folder"]


def test_the_default_warnings_go_to_stderr_after_the_command_name(tmp_path, capsys):
    assert report(["runs/nope"]) == 2
    assert capsys.readouterr() == ("", "gpurnn report: runs/nope: no such run folder\n")
    folder = make_run(tmp_path / "s0")
    assert report([folder]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == GOOD_TABLE
    assert err == f"gpurnn report: loss curves: gpurnn plot {folder} --out curves.png\n"


def report_of(tmp_path, *runs):
    """The table of runs made from (name, make_run's arguments), and the common-settings line."""
    status, text, warnings = run_report(*(make_run(tmp_path / name, **arguments) for name, arguments in runs))
    assert status == 0 and not any("skipping" in w or "same configuration" in w for w in warnings), warnings
    return table_of(text), text.splitlines()[0]


# The settings that today's report left out of a row's key (and so merged runs that differ in them),
# with another value, for a built-in task (CONFIG) or a CSV series (SERIES_CONFIG).
DIFFERENT = {"horizon": (SERIES_CONFIG, 3), "layers": (CONFIG, 2), "batch": (CONFIG, 16), "tbptt": (CONFIG, 2),
             "dtype": (CONFIG, "float64"), "target": (SERIES_CONFIG, "returns"), "features": (SERIES_CONFIG, "a,b"),
             "validation": (SERIES_CONFIG, 0.1), "embed": (CONFIG, 4), "eval_every": (CONFIG, 1),
             "season": (SERIES_CONFIG, 52), "difference": (SERIES_CONFIG, True), "early_stop": (NEW_CONFIG, 3)}


def shown(value):
    """A setting's value in its column."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "—" if value is None else str(value)


@pytest.mark.parametrize("key", DIFFERENT)
def test_runs_that_differ_in_one_setting_get_a_row_each_and_a_column_for_it(tmp_path, key):
    base, other = DIFFERENT[key]
    rows, common = report_of(tmp_path, ("a", dict(config=config_text(base))),
                             ("b", dict(config=config_text(base, **{key: other}))))
    column = "--" + key.replace("_", "-")
    assert len(rows) == 2 and list(rows[0])[:2] == ["task", column], rows
    assert sorted(row[column] for row in rows) == sorted(shown(v) for v in (base[key], other))
    assert column not in common and all(row["last held-out metric, per seed"] == "1.2806 (seed 0)" for row in rows)


def test_runs_that_differ_only_in_the_seed_and_how_they_ran_share_a_row(tmp_path):
    rows, common = report_of(tmp_path, ("s0", dict(config=config_text())),
                             ("s1", dict(config=config_text(seed=1, backend="auto", backend_used="numpy", log_every=5,
                                                            save_every=7),
                                         metrics=changed_record(2, eval_metric=0.5, grad_norm_max=9.0))))
    assert rows == [{"task": "adding", "metric": "—", "baseline": "—",
                     "last held-out metric, per seed": "1.2806 (seed 0), 0.5000 (seed 1)", "mean of last": "0.8903",
                     "best held-out metric, per seed": "1.2806 at step 3 (seed 0), 0.5000 at step 3 (seed 1)",
                     "mean of best": "0.8903", "largest gradient norm": "9"}]
    assert common == COMMON


def test_an_old_full_config_and_a_new_filtered_one_of_the_same_run_share_a_row(tmp_path):
    rows, common = report_of(tmp_path, ("old", dict(config=config_text())),
                             ("new", dict(config=config_text(NEW_CONFIG, seed=1), task=None)))
    assert len(rows) == 1 and rows[0]["last held-out metric, per seed"] == "1.2806 (seed 0), 1.2806 (seed 1)"
    assert rows[0]["metric"] == "mse" and common == COMMON


def test_an_entry_left_out_counts_as_its_default_and_one_given_otherwise_differs(tmp_path):
    """The old config has no schedule (so "constant"); the new one's cosine schedule has min_lr, which
    does not apply to the constant one: the column shows "—" there."""
    rows, _ = report_of(tmp_path, ("old", dict(config=config_text())),
                        ("cos", dict(config=config_text(NEW_CONFIG, schedule="cosine", min_lr=0.001))))
    assert [(r["--schedule"], r["--min-lr"]) for r in rows] == [("constant", "—"), ("cosine", "0.001")]


def test_the_common_line_names_the_data_file_by_its_name_and_what_is_not_default(tmp_path):
    rows, common = report_of(tmp_path, ("a", dict(config=config_text(SERIES_CONFIG, tbptt=8))),
                             ("b", dict(config=config_text(SERIES_CONFIG, tbptt=8, seed=1))))
    assert [r["task"] for r in rows] == ["sales.csv"]
    assert common == ("settings common to every row: --target sales, --horizon 1, --seq-len 32, --cell gru, "
                      "--hidden 8, --layers 1, --batch 4, --tbptt 8, --steps 3, --optimizer adam, --lr 0.01, "
                      "--clip 1, --eval-every 2")


def test_two_data_files_of_one_name_are_shown_by_their_paths(tmp_path):
    rows, _ = report_of(tmp_path, ("a", dict(config=config_text(SERIES_CONFIG, data="/x/sales.csv"))),
                        ("b", dict(config=config_text(SERIES_CONFIG, data="/y/sales.csv"))),
                        ("c", dict(config=config_text(SERIES_CONFIG, data="/y/other.csv"))))
    assert sorted(r["task"] for r in rows) == ["/x/sales.csv", "/y/sales.csv", "other.csv"]


@pytest.mark.parametrize("metric, shown", [("mse", "mse"), ("accuracy", "accuracy"),
                                           ("bits_per_char", "bits per character"),
                                           ("bits per character", "bits per character")])
def test_the_metric_is_named(tmp_path, metric, shown):
    rows, _ = report_of(tmp_path, ("a", dict(task=json.dumps(dict(TASK, metric=metric)))))
    assert rows[0]["metric"] == shown


def test_the_baselines_are_shown_with_their_names(tmp_path):
    baselines = [{"name": "the last value", "value": 0.2626},
                 {"name": "the value a season (52 rows) earlier", "value": 0.31}]
    rows, _ = report_of(tmp_path, ("a", dict(config=config_text(SERIES_CONFIG, season=52),
                                             task=json.dumps(dict(TASK, baselines=baselines)))))
    assert rows[0]["baseline"] == "0.2626 (the last value); 0.3100 (the value a season (52 rows) earlier)"


def test_a_baseline_that_differs_between_seeds_is_shown_as_its_range(tmp_path):
    """A data run's held-out part is drawn by its seed, and so is the naive prediction's score."""
    rows, _ = report_of(tmp_path, *((f"s{seed}", dict(config=config_text(seed=seed), task=json.dumps(
        dict(TASK, baselines=[{"name": "the training mean", "value": value}]))))
        for seed, value in ((0, 0.5), (1, 0.4))))
    assert rows[0]["baseline"] == "0.4000–0.5000 (the training mean, by seed)"


def test_runs_whose_task_files_name_different_metrics_do_not_share_a_row(tmp_path):
    rows, _ = report_of(tmp_path, ("a", dict(task=None)),
                        ("b", dict(config=config_text(seed=1), task=json.dumps(dict(TASK, metric="accuracy")))))
    assert sorted(r["metric"] for r in rows) == ["accuracy", "mse"]


EVALS = [{"step": s, "loss": 1.0, "metric": 1.0, "grad_norm": 1.0, "eval_loss": 1.0, "eval_metric": m}
         for s, m in ((2, 0.7), (4, 0.5), (6, 0.9), (8, 0.5), (10, 0.6))]


@pytest.mark.parametrize("higher_is_better, best", [(False, "0.5000 at step 4"), (True, "0.9000 at step 6")])
def test_each_seeds_best_held_out_score_and_its_step_stand_beside_its_last(tmp_path, higher_is_better, best):
    """The first of equal scores is the best (best.npz is only replaced by a strictly better one)."""
    task = json.dumps(dict(TASK, higher_is_better=higher_is_better))
    rows, _ = report_of(tmp_path, ("a", dict(config=config_text(steps=10), metrics=metrics_text(EVALS), task=task)),
                        ("b", dict(config=config_text(steps=10, seed=1), metrics=metrics_text(EVALS[:2] + [
                            dict(EVALS[2], eval_metric=0.4), *EVALS[3:]]), task=task)))
    other = "0.7000 at step 2" if higher_is_better else "0.4000 at step 6"
    assert rows[0]["last held-out metric, per seed"] == "0.6000 (seed 0), 0.6000 (seed 1)"
    assert rows[0]["mean of last"] == "0.6000"
    assert rows[0]["best held-out metric, per seed"] == f"{best} (seed 0), {other} (seed 1)"
    assert rows[0]["mean of best"] == ("0.8000" if higher_is_better else "0.4500")


def test_without_a_task_file_the_best_follows_the_flags_of_a_data_run(tmp_path):
    """A data run's direction is in task.json only; the records' "best" flags say which one it was."""
    records = [dict(r, best=True) if r["step"] in (2, 8) else r for r in EVALS]
    rows, _ = report_of(tmp_path, ("a", dict(config=config_text(SERIES_CONFIG, steps=10),
                                             metrics=metrics_text(records))))
    assert rows[0]["best held-out metric, per seed"] == "0.5000 at step 8 (seed 0)"


def test_an_early_stopped_run_is_finished_and_counts_in_the_means(tmp_path):
    stop = {"step": 6, "early_stop": "2 evaluations without improving on step 4's held-out mse"}
    rows, _ = report_of(tmp_path, ("a", dict(config=config_text(steps=100), metrics=metrics_text(EVALS[:3] + [stop]),
                                             task=None)),
                        ("b", dict(config=config_text(steps=100, seed=1), metrics=metrics_text(EVALS), task=None)))
    assert rows[0]["last held-out metric, per seed"] == ("0.9000, stopped early at step 6 (seed 0), "
                                                         "0.6000 at step 10 of 100, unfinished (seed 1)")
    assert rows[0]["mean of last"] == rows[0]["mean of best"] == "—"            # seed 1 is unfinished
    rows, _ = report_of(tmp_path / "2", ("a", dict(config=config_text(steps=100),
                                                   metrics=metrics_text(EVALS[:3] + [stop]), task=None)),
                        ("b", dict(config=config_text(steps=10, seed=1), metrics=metrics_text(EVALS), task=None)))
    assert len(rows) == 2                # another --steps: another row
    rows, _ = report_of(tmp_path / "3", ("a", dict(config=config_text(steps=100),
                                                   metrics=metrics_text(EVALS[:3] + [stop]), task=None)),
                        ("b", dict(config=config_text(steps=100, seed=1),
                                   metrics=metrics_text(EVALS[:4] + [dict(stop, step=8)]), task=None)))
    assert rows[0]["last held-out metric, per seed"] == ("0.9000, stopped early at step 6 (seed 0), "
                                                         "0.5000, stopped early at step 8 (seed 1)")
    assert (rows[0]["mean of last"], rows[0]["mean of best"]) == ("0.7000", "0.5000")


def test_a_run_resumed_after_its_early_stop_is_not_stopped_early(tmp_path):
    """Resumed with a larger --early-stop, the run has logged past its early-stop line."""
    stop = {"step": 4, "early_stop": "..."}
    rows, _ = report_of(tmp_path, ("a", dict(config=config_text(steps=100),
                                             metrics=metrics_text(EVALS[:2] + [stop] + EVALS[2:]))))
    assert rows[0]["last held-out metric, per seed"] == "0.6000 at step 10 of 100, unfinished (seed 0)"


def test_a_diverged_run_shows_where_and_leaves_the_means_out(tmp_path):
    rows, _ = report_of(tmp_path, ("a", dict()), ("b", dict(config=config_text(seed=1), metrics=metrics_text(
        RECORDS[:2] + [{"step": 3, "stopped": "the loss is nan at step 3"}]))))
    assert rows[0]["last held-out metric, per seed"] == "1.2806 (seed 0), diverged at step 3 (seed 1)"
    assert rows[0]["best held-out metric, per seed"] == "1.2806 at step 3 (seed 0), 1.3596 at step 2 (seed 1)"
    assert rows[0]["mean of last"] == rows[0]["mean of best"] == "—"


def test_rows_sort_by_their_settings_and_cells_in_their_own_order(tmp_path):
    runs = [(f"{cell}{t}", dict(config=config_text(cell=cell, seq_len=t))) for cell in ("gru", "rnn", "lstm")
            for t in (100, 50)]
    rows, common = report_of(tmp_path, *runs)
    assert [(r["--seq-len"], r["--cell"]) for r in rows] == [("50", "rnn"), ("50", "lstm"), ("50", "gru"),
                                                             ("100", "rnn"), ("100", "lstm"), ("100", "gru")]
    assert "--cell" not in common and "--seq-len" not in common and "--hidden 8" in common


def test_a_setting_of_a_newer_version_is_compared_too(tmp_path):
    rows, _ = report_of(tmp_path, ("a", dict()), ("b", dict(config=config_text(dropout=0.5))))
    assert [r["--dropout"] for r in rows] == ["—", "0.5"]
    rows, common = report_of(tmp_path / "2", ("a", dict(config=config_text(**{"x|y\n": 1}))),
                             ("b", dict(config=config_text(**{"x|y\n": 1, "p|q": "r|s"}))))
    assert [r["--p\\|q"] for r in rows] == ["—", "r\\|s"] and common.endswith(", --x\\|y\\n 1")


# ---------------------------------------------------------------- probes
PROBES = {   # name: (make_run's arguments, what the skip line says)
    "config: a 400-digit lr": (dict(config=config_text(lr=0).replace('"lr": 0', f'"lr": {BIG}')),
                               "lr is an integer of 400 digits, not a finite number"),
    "config: lr 1e999": (dict(config=config_text(lr=0).replace('"lr": 0', '"lr": 1e999')), "lr is inf, not a finite"),
    "config: lr NaN": (dict(config=config_text(lr=float("nan"))), "lr is nan, not a finite number"),
    "config: a 400-digit init_scale": (dict(config=config_text(init_scale=0).replace('"init_scale": 0',
                                                                                   f'"init_scale": {BIG}')),
                                       "init_scale is an integer of 400 digits"),
    "config: a string for a number": (dict(config=config_text(lr="x")), "lr must be a number, got 'x'"),
    "config: a string for an int": (dict(config=config_text(hidden="8")), "hidden must be an integer, got '8'"),
    "config: a float for an int": (dict(config=config_text(steps=3.0)), "steps must be an integer, got 3.0"),
    "config: a bool for an int": (dict(config=config_text(seed=True)), "seed must be an integer, got True"),
    "config: null for a string": (dict(config=config_text(cell=None)), "cell must be a string, got None"),
    "config: a list for a string": (dict(config=config_text(task=["adding"])), "task must be a string, got ['adding']"),
    "config: no steps": (dict(config=json.dumps({k: v for k, v in CONFIG.items() if k != "steps"})),
                         "has no entry 'steps'"),
    "config: no seed": (dict(config=json.dumps({k: v for k, v in CONFIG.items() if k != "seed"})),
                        "has no entry 'seed'"),
    "config: a JSON list": (dict(config="[1, 2]"), "holds a JSON array, not an object"),
    "config: a JSON null": (dict(config="null"), "holds a JSON null, not an object"),
    "config: deeply nested": (dict(config=DEEP), "is nested too deeply"),
    "config: deeply nested inside": (dict(config=config_text(lr=0).replace('"lr": 0', f'"lr": {NESTED}')),
                                     "lr must be a number, got [[[[[[[...]]]]]]]"),
    "config: not JSON": (dict(config="{\"task\": "), "cannot be read as JSON (Expecting value"),
    "config: a 5000-digit integer": (dict(config=config_text(seed=0).replace('"seed": 0', '"seed": ' + "1" * 5000)),
                                     "cannot be read as JSON (Exceeds the limit"),
    "config: empty": (dict(config=""), "cannot be read as JSON"),
    "config: not UTF-8": (dict(config=b"\xff\xfe" + config_text().encode()), "is not UTF-8 text: line 1"),
    "config: missing": (dict(config=False), "config.json: No such file or directory"),
    "config: a folder": (dict(config=os.mkdir), "config.json is a folder, not a file"),
    "config: over its limit": (dict(config=config_text() + " " * CONFIG_LIMIT),
                               f"is larger than {CONFIG_LIMIT:,} bytes"),
    "metrics: a 400-digit eval_metric": (dict(metrics=changed_record(2, eval_metric=0).replace(
        '"eval_metric": 0', f'"eval_metric": {BIG}')), "record of step 3: eval_metric is an integer of 400 digits"),
    "metrics: a 400-digit grad_norm_max": (dict(metrics=changed_record(0, grad_norm_max=0).replace(
        '"grad_norm_max": 0', f'"grad_norm_max": {BIG}')), "record of step 1: grad_norm_max is an integer of 400"),
    "metrics: eval_metric 1e999": (dict(metrics=changed_record(1, eval_metric=0).replace(
        '"eval_metric": 0', '"eval_metric": 1e999')), "record of step 2: eval_metric is inf, not a finite number"),
    "metrics: eval_metric a string": (dict(metrics=changed_record(2, eval_metric="x")),
                                      "record of step 3: eval_metric must be a number, got 'x'"),
    "metrics: eval_metric null": (dict(metrics=changed_record(1, eval_metric=None)),
                                  "record of step 2: eval_metric must be a number, got None"),
    "metrics: grad_norm_max a list": (dict(metrics=changed_record(2, grad_norm_max=[1])),
                                      "record of step 3: grad_norm_max must be a number, got [1]"),
    "metrics: grad_norm a bool": (dict(metrics=metrics_text([{"step": 1, "grad_norm": True}, *RECORDS[1:]])),
                                  "record of step 1: grad_norm must be a number, got True"),
    "metrics: step null inside": (dict(metrics=changed_record(1, step=None)),
                                  "line 2, is damaged (not a record with a step)"),
    "metrics: step a bool inside": (dict(metrics=changed_record(0, step=True)),
                                    "line 1, is damaged (not a record with a step)"),
    "metrics: a list inside": (dict(metrics="[1]\n" + metrics_text()), "line 1, is damaged (not a record with a step)"),
    "metrics: deeply nested": (dict(metrics=DEEP + "\n" + metrics_text()), "line 1, is damaged (nested too deeply"),
    "metrics: not UTF-8": (dict(metrics=metrics_text().encode() + b"\xc3(\n" + metrics_text().encode()),
                           "is not UTF-8 text: line 4 holds bytes that are not UTF-8"),
    "metrics: missing": (dict(metrics=False), "metrics.jsonl: No such file or directory"),
    "metrics: a folder": (dict(metrics=os.mkdir), "metrics.jsonl is a folder, not a file"),
    "config: a list for a setting of a newer version": (dict(config=config_text(dropout=[0.5])),
                                                        "dropout must be a string, a number, true, false or null"),
    "config: a number for a bool": (dict(config=config_text(difference=1)), "difference must be true or false, got 1"),
    "task: not JSON": (dict(task="{"), "the task file"),
    "task: a JSON list": (dict(task="[]"), "holds a JSON array, not an object"),
    "task: deeply nested": (dict(task=DEEP), "is nested too deeply"),
    "task: no metric": (dict(task=json.dumps({k: v for k, v in TASK.items() if k != "metric"})),
                        "metric must be a string, got None"),
    "task: higher_is_better a string": (dict(task=json.dumps(dict(TASK, higher_is_better="no"))),
                                        "higher_is_better must be true or false, got 'no'"),
    "task: baselines an object": (dict(task=json.dumps(dict(TASK, baselines={"a": 1}))), "baselines must be a list"),
    "task: a baseline without a name": (dict(task=json.dumps(dict(TASK, baselines=[{"value": 1}]))),
                                        "baselines[0] must be an object with a name"),
    "task: a baseline of 1e999": (dict(task=json.dumps(dict(TASK, baselines=[{"name": "x", "value": 0}])).replace(
        '"value": 0', '"value": 1e999')), "baselines[0].value is inf, not a finite number"),
    "task: a 400-digit baseline": (dict(task=json.dumps(dict(TASK, baselines=[{"name": "x", "value": 0}])).replace(
        '"value": 0', f'"value": {BIG}')), "baselines[0].value is an integer of 400 digits"),
    "task: not UTF-8": (dict(task=b"\xff" + json.dumps(TASK).encode()), "is not UTF-8 text: line 1"),
    "task: a folder": (dict(task=os.mkdir), "task.json is a folder, not a file"),
    "task: over its limit": (dict(task=json.dumps(TASK) + " " * CONFIG_LIMIT),
                             f"is larger than {CONFIG_LIMIT:,} bytes"),
}


@pytest.mark.parametrize("name", PROBES)
def test_a_damaged_run_is_skipped_saying_why(tmp_path, name):
    arguments, says = PROBES[name]
    folder = make_run(tmp_path / "run", **arguments)
    status, table, warnings = run_report(folder)
    assert_well_formed(status, table, warnings)
    assert status == 1 and warnings[-1] == "no run could be read; nothing to report"
    assert len(warnings) == 2 and warnings[0].startswith(f"skipping {folder}: ") and says in warnings[0], warnings


@pytest.mark.parametrize("last", [{"step": None, "eval_metric": 0.5}, {"step": 3, "eval_metric": "x"}])
def test_a_cut_last_line_is_dropped_but_a_damaged_field_skips_the_run(tmp_path, last):
    """A last line that is not a record (a write cut short) is dropped with a warning, as on resume;
    a record whose field is damaged skips the run (dropping it would show another step's metric)."""
    folder = make_run(tmp_path / "run", metrics=metrics_text(RECORDS[:2] + [last]))
    status, table, warnings = run_report(folder)
    assert_well_formed(status, table, warnings)
    if last["step"] is None:
        assert status == 0 and table_of(table)[0]["last held-out metric, per seed"] == \
            "1.3596 at step 2 of 3, unfinished (seed 0)"
        assert warnings[0] == (f"warning: {os.path.join(folder, 'metrics.jsonl')}: line 3 is incomplete (not a "
                               f"record with a step); dropped it") and len(warnings) == 2
    else:
        assert status == 1 and "eval_metric must be a number, got 'x'" in warnings[0]


def test_unprintable_text_in_a_config_or_a_folder_name_stays_on_its_line(tmp_path):
    """A lone surrogate (from a file name that is not UTF-8, or written in JSON as \\ud800) cannot be
    written to a UTF-8 stream; a newline or a pipe would break the table."""
    first = make_run(tmp_path / "a\nb", config=config_text(task="add|ing\ud800\n"))
    second = make_run(tmp_path / "c", config=config_text(task="add|ing\ud800\n"))
    status, table, warnings = run_report(first, second)
    assert status == 0
    row = table.splitlines()[4]
    assert len(table.splitlines()) == 5 and row.startswith("| add\\|ing\\ud800\\n | — |")
    assert f"(seed 0, {str(tmp_path / 'a')}\\nb)" in row and len(table_of(table)) == 1
    assert len(warnings) == 2 and "same configuration and seed" in warnings[0]
    assert warnings[1] == f"loss curves: gpurnn plot '{str(tmp_path / 'a')}\\nb' {second} --out curves.png"


def test_a_stream_that_cannot_hold_the_text_gets_escapes(tmp_path):
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    assert report([make_run(tmp_path / "run", config=config_text(task="Ü"))], out=out, warn=lambda m: None) == 0
    out.seek(0)
    assert "| \\xdc | \\u2014 | \\u2014 | 1.2806 (seed 0) |" in out.read()


def test_an_unreadable_file_is_skipped(tmp_path, monkeypatch):
    folder = make_run(tmp_path / "run")
    path = os.path.join(folder, "metrics.jsonl")
    os.chmod(path, 0)
    if os.access(path, os.R_OK):           # root reads it anyway: the refusal is the operating system's
        real_open = os.open

        def refuse(name, *args, **kwargs):
            if os.fspath(name) == path:
                raise PermissionError(13, "Permission denied", name)
            return real_open(name, *args, **kwargs)
        monkeypatch.setattr(os, "open", refuse)
    status, table, warnings = run_report(folder)
    assert status == 1 and warnings[0] == f"skipping {folder}: cannot read {path}: Permission denied"


# ---------------------------------------------------------------- files that block or never end
CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))   # a read without limit fails, not swaps
from gpurnn.report import report
sys.exit(report(sys.argv[1:]))
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifos_and_devices_are_refused_unread(tmp_path):
    """In a child process with a timeout: a regression blocks on the FIFO or reads /dev/zero until
    memory runs out, and must fail this test rather than hang it or the machine."""
    folders = {"config FIFO": make_run(tmp_path / "cf", config=os.mkfifo),
               "metrics FIFO": make_run(tmp_path / "mf", metrics=os.mkfifo),
               "task FIFO": make_run(tmp_path / "tf", task=os.mkfifo)}
    said = {"config FIFO": "config.json is a FIFO (named pipe), not a file",
            "metrics FIFO": "metrics.jsonl is a FIFO (named pipe), not a file",
            "task FIFO": "task.json is a FIFO (named pipe), not a file"}
    good = {"checkpoint FIFO": make_run(tmp_path / "kf")}       # a checkpoint that cannot load is left out
    os.mkfifo(os.path.join(good["checkpoint FIFO"], "checkpoint.npz"))
    if os.path.exists("/dev/zero"):
        link = lambda path: os.symlink("/dev/zero", path)        # noqa: E731
        folders["config /dev/zero"] = make_run(tmp_path / "cz", config=link)
        folders["metrics /dev/zero"] = make_run(tmp_path / "mz", metrics=link)
        folders["task /dev/zero"] = make_run(tmp_path / "tz", task=link)
        said["config /dev/zero"] = "config.json is a character device, not a file"
        said["metrics /dev/zero"] = "metrics.jsonl is a character device, not a file"
        said["task /dev/zero"] = "task.json is a character device, not a file"
        good["checkpoint /dev/zero"] = make_run(tmp_path / "kz")
        os.symlink("/dev/zero", os.path.join(good["checkpoint /dev/zero"], "checkpoint.npz"))
    done = subprocess.run([sys.executable, "-c", CHILD, *folders.values(), *good.values()], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(gpurnn.__file__)))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    for what, folder in folders.items():
        assert any(line.startswith(f"gpurnn report: skipping {folder}: ") and said[what] in line for line in lines), \
            (what, done.stderr)
    assert table_of(done.stdout)[0]["last held-out metric, per seed"].count("1.2806 (seed 0, ") == len(good)


# ---------------------------------------------------------------- read_text, read_metrics
def test_read_text_reads_up_to_its_limit_and_refuses_more(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_text(path, 10, "the file") == "x" * 10
    with pytest.raises(ValueError, match=r"the file .* is larger than 9 bytes"):
        read_text(path, 9, "the file")
    with pytest.raises(FileNotFoundError):
        read_text(tmp_path / "none", 10, "the file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_read_metrics_refuses_a_fifo_so_that_a_resume_cannot_hang(tmp_path):
    os.mkfifo(tmp_path / "metrics.jsonl")
    with pytest.raises(ValueError, match="is a FIFO"):
        read_metrics(tmp_path / "metrics.jsonl")


def test_read_metrics_names_a_deeply_nested_line_as_damage(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(metrics_text() + DEEP + "\n" + metrics_text())
    with pytest.raises(ValueError, match=r"line 4, is damaged \(nested too deeply to read\)"):
        read_metrics(path)


# ---------------------------------------------------------------- hypothesis
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.integers(10 ** 300, 10 ** 400)
                    | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
USED = [*REQUIRED, "data", "clip", "init_scale", "layers", "schedule"]   # drawn more often than the rest

@st.composite
def config_files(draw):
    kind = draw(st.sampled_from(["entry", "drop", "json", "bytes", "cut", "flip", "file kind"]))
    good = config_text().encode()
    if kind == "entry":
        return json.dumps(dict(CONFIG, **{draw(st.sampled_from(USED + sorted(CONFIG))): draw(JSON)})).encode()
    if kind == "drop":
        gone = draw(st.sampled_from(USED + sorted(CONFIG)))
        return json.dumps({k: v for k, v in CONFIG.items() if k != gone}).encode()
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    return damaged_bytes(draw, kind, good)


def damaged_bytes(draw, kind, good):
    """The bytes of ``good`` damaged as ``kind`` says: random, cut, one byte changed; or, for
    "file kind", False (no file) or os.mkdir (a folder in its place)."""
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "cut":
        return good[:draw(st.integers(0, len(good)))]
    if kind == "flip":
        i = draw(st.integers(0, len(good) - 1))
        return good[:i] + bytes([draw(st.integers(0, 255))]) + good[i + 1:]
    return draw(st.sampled_from([False, os.mkdir]))


@st.composite
def metrics_files(draw):
    kind = draw(st.sampled_from(["field", "line", "bytes", "cut", "flip", "file kind"]))
    good = metrics_text().encode()
    if kind == "field":
        records = [dict(r) for r in RECORDS]
        records[draw(st.integers(0, 2))][draw(st.sampled_from(["step", "eval_metric", "grad_norm_max", "grad_norm",
                                                                "stopped", "early_stop", "best"]))] = draw(JSON)
        return metrics_text(records).encode()
    if kind == "line":
        lines = good.splitlines(keepends=True)
        lines.insert(draw(st.integers(0, len(lines))), json.dumps(draw(JSON)).encode() + b"\n")
        return b"".join(lines)
    return damaged_bytes(draw, kind, good)


@st.composite
def task_files(draw):
    kind = draw(st.sampled_from(["field", "json", "bytes", "cut", "flip", "file kind"]))
    good = json.dumps(TASK).encode()
    if kind == "field":
        task = json.loads(good)
        where = draw(st.sampled_from(["metric", "higher_is_better", "baselines", "name", "value"]))
        if where in ("name", "value"):
            task["baselines"][0][where] = draw(JSON)
        else:
            task[where] = draw(JSON)
        return json.dumps(task).encode()
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    return damaged_bytes(draw, kind, good)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged=st.sampled_from(["config", "metrics", "task", "all"]), config=config_files(), metrics=metrics_files(),
       task=task_files(), with_good=st.booleans())
def test_whatever_a_run_folder_holds_the_report_returns_0_or_1(damaged, config, metrics, task, with_good):
    """config.json, metrics.jsonl, task.json or all damaged (the others good), beside a good run or alone."""
    files = dict(config=config if damaged in ("config", "all") else None,
                 metrics=metrics if damaged in ("metrics", "all") else None,
                 task=task if damaged in ("task", "all") else None)
    with tempfile.TemporaryDirectory() as tmp:
        folders = [make_run(os.path.join(tmp, "run"), **files)]
        if with_good:
            folders.append(make_run(os.path.join(tmp, "good")))
        status, table, warnings = run_report(*folders)
        assert_well_formed(status, table, warnings)
        if with_good:
            assert status == 0 and "1.2806 (seed 0" in table

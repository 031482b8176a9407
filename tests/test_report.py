"""gpurnn report on damaged run folders: whatever config.json, metrics.jsonl and checkpoint.npz hold
(numbers too large for a float, deep nesting, wrong kinds, FIFOs, devices, folders, bytes that are
not UTF-8), the report skips the run with one line naming the folder and why, never hangs, never
reads without limit and never raises. Hand-written probes first, then hypothesis.

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
from gpurnn.report import CONFIG_LIMIT, HEADER, ROW_ENTRIES, report
from gpurnn.files import read_text
from gpurnn.runs import read_metrics

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

# A tiny run's files as gpurnn train writes them (--hidden 8 --seq-len 6 --batch 4 --steps 3).
CONFIG = {"backend": "cpu", "backend_used": "cpu", "batch": 4, "cell": "lstm", "clip": 1.0, "copy_len": 10,
          "data": None, "dtype": "float32", "embed": None, "eval_every": 2, "eval_sequences": 16, "features": None,
          "hidden": 8, "horizon": None, "init_scale": None, "layers": 1, "log_every": 1, "lr": 0.01,
          "optimizer": "adam", "save_every": 100, "seed": 0, "seq_len": 6, "steps": 3, "target": None,
          "task": "adding", "tbptt": 0, "text": None, "validation": 0.2}
RECORDS = [{"step": 1, "loss": 1.57, "metric": 1.57, "grad_norm": 2.68, "grad_norm_max": 2.68},
           {"step": 2, "loss": 0.97, "metric": 0.97, "grad_norm": 1.87, "grad_norm_max": 1.87, "eval_loss": 1.36,
            "eval_metric": 1.3596},
           {"step": 3, "loss": 0.88, "metric": 0.88, "grad_norm": 1.89, "grad_norm_max": 1.89, "eval_loss": 1.28,
            "eval_metric": 1.2806}]
GOOD_ROW = "| adding | lstm | 6 | 8 | 3 | adam 0.01 | 1.0 | 1.2806 (seed 0) | 1.2806 | 2.68 |"
BIG = "9" * 400                     # an integer that float() refuses (OverflowError)
DEEP = "[" * 100_000 + "]" * 100_000                 # deeper than json can parse (RecursionError)
NESTED = "[" * 500 + "]" * 500                       # parses, but its full repr could not be printed


def config_text(**changes):
    return json.dumps(dict(CONFIG, **changes), indent=2)


def metrics_text(records=RECORDS):
    return "".join(json.dumps(r) + "\n" for r in records)


def changed_record(i, **changes):
    records = [dict(r) for r in RECORDS]
    records[i].update(changes)
    return metrics_text(records)


def make_run(folder, config=None, metrics=None):
    """A run folder: config.json and metrics.jsonl as text or bytes (None: a good one), or made by a
    callable of the path (os.mkdir, os.mkfifo, ...), or left out (False)."""
    os.makedirs(folder, exist_ok=True)
    for name, content, good in (("config.json", config, config_text()), ("metrics.jsonl", metrics, metrics_text())):
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


def assert_well_formed(status, table, warnings):
    """Whatever the folders held: a status of 0 with the table or 1 with none, warnings one line each."""
    assert status in (0, 1)
    if status == 0:
        assert table.splitlines()[:2] == list(HEADER)
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
    status, table, warnings = run_report(make_run(tmp_path / "s0"))
    assert (status, warnings) == (0, [])
    assert table.splitlines() == [*HEADER, GOOD_ROW]


def test_a_bad_folder_beside_a_good_one_is_skipped_and_the_table_printed(tmp_path):
    good, bad = make_run(tmp_path / "good"), make_run(tmp_path / "bad", config=False)
    status, table, warnings = run_report(bad, good)
    assert status == 0 and table.splitlines() == [*HEADER, GOOD_ROW]
    assert warnings == [f"skipping {bad}: cannot read {os.path.join(bad, 'config.json')}: No such file or directory"]


def test_no_readable_run_is_status_1_and_no_table(tmp_path):
    status, table, warnings = run_report(tmp_path / "nothing", make_run(tmp_path / "bad", metrics=False))
    assert (status, table) == (1, "")
    assert len(warnings) == 3 and warnings[-1] == "no run could be read; nothing to report"


def test_the_default_warnings_go_to_stderr_after_the_command_name(tmp_path, capsys):
    assert report([str(tmp_path / "nothing")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"gpurnn report: skipping {tmp_path / 'nothing'}: cannot read ")


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
        assert status == 0 and "1.3596 at step 2 of 3, unfinished (seed 0)" in table
        assert warnings == [f"warning: {os.path.join(folder, 'metrics.jsonl')}: line 3 is incomplete (not a record "
                            f"with a step); dropped it"]
    else:
        assert status == 1 and "eval_metric must be a number, got 'x'" in warnings[0]


def test_unprintable_text_in_a_config_or_a_folder_name_stays_on_its_line(tmp_path):
    """A lone surrogate (from a file name that is not UTF-8, or written in JSON as \\ud800) cannot be
    written to a UTF-8 stream; a newline or a pipe would break the table."""
    first = make_run(tmp_path / "a\nb", config=config_text(task="add|ing\ud800\n"))
    second = make_run(tmp_path / "c", config=config_text(task="add|ing\ud800\n"))
    status, table, warnings = run_report(first, second)
    assert status == 0
    row = table.splitlines()[2]
    assert len(table.splitlines()) == 3 and row.startswith("| add\\|ing\\ud800\\n | lstm |")
    assert f"(seed 0, {str(tmp_path / 'a')}\\nb)" in row
    assert len(warnings) == 1 and "same configuration and seed" in warnings[0]


def test_a_stream_that_cannot_hold_the_text_gets_escapes(tmp_path):
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    assert report([make_run(tmp_path / "run", config=config_text(task="Ü"))], out=out, warn=lambda m: None) == 0
    out.seek(0)
    assert "| \\xdc | lstm |" in out.read()


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
               "metrics FIFO": make_run(tmp_path / "mf", metrics=os.mkfifo)}
    said = {"config FIFO": "config.json is a FIFO (named pipe), not a file",
            "metrics FIFO": "metrics.jsonl is a FIFO (named pipe), not a file"}
    good = {"checkpoint FIFO": make_run(tmp_path / "kf")}       # a checkpoint that cannot load is left out
    os.mkfifo(os.path.join(good["checkpoint FIFO"], "checkpoint.npz"))
    if os.path.exists("/dev/zero"):
        link = lambda path: os.symlink("/dev/zero", path)        # noqa: E731
        folders["config /dev/zero"] = make_run(tmp_path / "cz", config=link)
        folders["metrics /dev/zero"] = make_run(tmp_path / "mz", metrics=link)
        said["config /dev/zero"] = "config.json is a character device, not a file"
        said["metrics /dev/zero"] = "metrics.jsonl is a character device, not a file"
        good["checkpoint /dev/zero"] = make_run(tmp_path / "kz")
        os.symlink("/dev/zero", os.path.join(good["checkpoint /dev/zero"], "checkpoint.npz"))
    done = subprocess.run([sys.executable, "-c", CHILD, *folders.values(), *good.values()], capture_output=True,
                          text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(gpurnn.__file__)))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    for what, folder in folders.items():
        assert any(line.startswith(f"gpurnn report: skipping {folder}: ") and said[what] in line for line in lines), \
            (what, done.stderr)
    assert done.stdout.splitlines()[2].count("1.2806 (seed 0, ") == len(good)


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
USED = [*ROW_ENTRIES, "seed"]           # the config entries the report reads: drawn more often than the rest

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
        records[draw(st.integers(0, 2))][draw(st.sampled_from(["step", "eval_metric", "grad_norm_max",
                                                                "grad_norm", "stopped"]))] = draw(JSON)
        return metrics_text(records).encode()
    if kind == "line":
        lines = good.splitlines(keepends=True)
        lines.insert(draw(st.integers(0, len(lines))), json.dumps(draw(JSON)).encode() + b"\n")
        return b"".join(lines)
    return damaged_bytes(draw, kind, good)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged=st.sampled_from(["config", "metrics", "both"]), config=config_files(), metrics=metrics_files(),
       with_good=st.booleans())
def test_whatever_a_run_folder_holds_the_report_returns_0_or_1(damaged, config, metrics, with_good):
    """config.json, metrics.jsonl or both damaged (the other one good), beside a good run or alone."""
    files = dict(config=config if damaged != "metrics" else None, metrics=metrics if damaged != "config" else None)
    with tempfile.TemporaryDirectory() as tmp:
        folders = [make_run(os.path.join(tmp, "run"), **files)]
        if with_good:
            folders.append(make_run(os.path.join(tmp, "good")))
        status, table, warnings = run_report(*folders)
        assert_well_formed(status, table, warnings)
        if with_good:
            assert status == 0 and "1.2806 (seed 0" in table

"""The docs: every generated region matches the results files it is built from, a changed result
makes its region stale, the README stays a five-minute read, and every relative link resolves.

docs/build.py is a script, not a package module: it is imported by path."""

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SETUP = ('python -m pip install . && gpurnn train\n'
         'python -m pip install -e ".[test]" && python -m pytest\n')


def load_builder():
    spec = importlib.util.spec_from_file_location("gpurnn_docs_build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_builder()


def markdown_files():
    return [README] + sorted((ROOT / "docs").glob("*.md"))


def test_the_docs_match_the_results_files():
    found = build.stale()
    assert found == [], "stale regions (run python docs/build.py): " + ", ".join(
        f"{path.relative_to(ROOT)}: {name}" for path, name in found)


def test_every_region_has_a_generator_and_every_generator_a_region():
    assert sorted(build.regions_in(markdown_files())) == sorted(build.GENERATORS)


def test_check_passes_on_the_repository(capsys):
    assert build.main(["--check"]) == 0
    assert capsys.readouterr().out == ""


def _scale(path, pick, field, factor):
    """Multiply ``field`` of the first row ``pick`` selects in the JSON at ``path``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    row = pick(data)
    row[field] *= factor
    path.write_text(json.dumps(data), encoding="utf-8")


CHANGES = [
    # (file, which row and field to change, a region that shows it)
    ("benchmarks/results/bench_cpu.json",
     lambda d: next(r for r in d["rows"] if (r["cell"], r["size"], r["mode"]) == ("gru", "medium", "train")),
     "torch_ms", "cpu-table"),
    ("benchmarks/results/bench_cpu.json", lambda d: d["cold_start"][1], "empty_cache_s", "cold-start"),
    ("benchmarks/results/bench_cpu_1thread.json",
     lambda d: next(r for r in d["rows"] if (r["cell"], r["size"], r["mode"]) == ("lstm", "large", "train")),
     "speedup", "cpu-1thread"),
    ("benchmarks/results/bench_torch_bridge_omp_passive.json", lambda d: d["bridge_rows"][2], "model_ms",
     "bridge-table"),
    ("benchmarks/results/bench_bridge.json", lambda d: d["configs"][1]["gpurnn"]["none"], "median_ms",
     "bridge-charlm"),
    ("benchmarks/results/2026-11-27-nvidia-h200-bench.json",
     lambda d: next(r for r in d["rows"] if (r["cell"], r["mode"], r["T"], r["B"], r["H"]) ==
                    ("gru", "train", 128, 64, 1024)), "ratio", "h200-grid"),
    ("benchmarks/results/2026-11-27-nvidia-h200-bench.json", lambda d: d["accumulate"][0], "cupy_ms",
     "accumulate-table"),
    ("benchmarks/results/2026-11-27-nvidia-h200-bench.json", lambda d: d["graphs"][4], "direct_ms",
     "graphs-table"),
    ("benchmarks/results/kernel_report.json", lambda d: d["rows"][1], "occupancy", "kernel-report"),
    ("benchmarks/results/kernel_report.json", lambda d: d["persistent_limits"][4], "largest_hidden",
     "persistent-limits"),
    ("benchmarks/results/kernel_report.json",
     lambda d: next(r["step_loops"] for r in d["rows"] if (r["kernel"], r["cell"], r["dtype"], r["target"]) ==
                    ("persistent_forward", "lstm", "float32", "sm_90")), "pass", "persistent-napkin"),
    ("docs/grad_norms.json", lambda d: d["results"][0], "sigma_max", "grad-verdicts"),
    ("benchmarks/results/bench_startup.json", lambda d: d["rows"][3], "median_s", "startup"),
    ("benchmarks/results/bench_tests.json", lambda d: d["rows"][0], "seconds", "set-up"),
    ("benchmarks/results/bench_tests.json", lambda d: next(r for r in d["rows"] if r["run"] == "fast"), "seconds",
     "test-times"),
    ("benchmarks/results/lesson.json", lambda d: d["explode"][0], "sigma_max", "lesson-explode"),
    ("docs/grad_norms.json", lambda d: d["results"][4], "sigma_max", "grad-prose"),
    ("benchmarks/results/own_data.json", lambda d: d["examples"]["sunspots"], "best_metric", "own-data-sunspots"),
]


@pytest.fixture
def copies(tmp_path):
    """A copy of benchmarks/results/, of docs/grad_norms.json and of every Markdown file, so a test
    can change a result and rebuild without touching the repository."""
    results = tmp_path / "results"
    shutil.copytree(build.RESULTS, results, ignore=shutil.ignore_patterns("*.png", "*.log"))
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "docs" / "grad_norms.json", docs)
    pages = tmp_path / "pages"
    pages.mkdir()
    files = []
    for i, path in enumerate(markdown_files()):
        files.append(pages / f"{i}-{path.name}")
        shutil.copy(path, files[-1])
    return results, docs, files


@pytest.mark.parametrize("source, pick, field, region", CHANGES, ids=[c[3] for c in CHANGES])
def test_a_changed_result_makes_its_regions_stale(copies, source, pick, field, region):
    results, docs, files = copies
    folder = docs if source.startswith("docs/") else results
    _scale(folder / Path(source).name, pick, field, 1.37)

    found = build.stale(results, docs, files)
    names = {name for _, name in found}
    assert region in names
    # Only regions built from the changed file go stale.
    assert names <= {g.name for g in build.GENERATORS.values() if source in g.sources}

    build.build(results, docs, files)
    assert build.stale(results, docs, files) == []


def test_the_cpu_regions_say_when_each_side_ran_in_its_own_process(copies):
    """bench_cpu.py's default mode runs each side in its own process, and the run line and the
    README's status say so; a result without ``mode`` (both sides interleaved in one process, as
    results from before the mode existed) or with "interleaved" does not."""
    results, docs, files = copies
    data = json.loads((results / "bench_cpu.json").read_text(encoding="utf-8"))
    data.pop("mode", None)
    for mode, said in ((None, False), ("interleaved", False), ("apart", True)):
        (results / "bench_cpu.json").write_text(json.dumps(data if mode is None else dict(data, mode=mode)),
                                                encoding="utf-8")
        assert ("2 threads on each side, each in its own process, NumPy" in build.render("cpu-run", results, docs)) \
            == said
        assert ("each side in its own process (" in build.render("status", results, docs)) == said
    build.build(results, docs, files)
    assert build.stale(results, docs, files) == []


def test_check_names_each_stale_region_and_its_file(copies, capsys):
    results, _, _ = copies
    _scale(results / "bench_cpu.json", lambda d: d["rows"][1], "speedup", 2.0)
    assert build.main(["--check", "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert "docs/performance.md: region 'cpu-table' is stale" in out
    assert "README.md: region 'status' is stale" in out


def test_a_region_without_a_generator_is_an_error(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: no-such-table (by docs/build.py from nowhere) -->\n"
                    "<!-- end generated: no-such-table -->\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no-such-table"):
        build.stale(files=[page])


def test_the_readme_is_a_five_minute_read():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220
    assert f"```bash\n{SETUP}```" in text


def _prose(text):
    """The text without fenced code blocks and inline code, where ``[a](b)`` is not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path):
    """GitHub's anchors for the headings of a Markdown file."""
    out = set()
    for heading in re.findall(r"^#+\s+(.*?)\s*$", _prose(path.read_text(encoding="utf-8")), flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return out


def _links(path):
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", _prose(path.read_text(encoding="utf-8")))


def test_every_relative_link_points_to_an_existing_file():
    broken = []
    for page in markdown_files():
        for link in _links(page):
            if re.match(r"[a-z]+:", link):
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_docs_pages_are_linked_from_the_readme():
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in _links(README)}
    assert set(p.resolve() for p in markdown_files()[1:]) <= linked


def test_ci_runs_the_readmes_two_set_up_commands_in_the_order_printed():
    """.ci/run runs exactly the README's two commands, install and main job first, then the tests."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    first, second = SETUP.splitlines()
    assert first in lines and second in lines, ".ci/run no longer runs the README's set-up commands"
    assert lines.index(first) < lines.index(second)
    assert not any("|" in line for line in lines if "pytest" in line and not line.startswith("#")), \
        "a pipe would hide pytest's exit status"

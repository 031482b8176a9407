"""The link between the library and its kernels: gpurnn imports kernels, never the reverse, with
import statements a reader and a tool can follow; one checkout's gpurnn/ never runs with another's
kernels/; each word of the vocabulary is defined in one place."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gpurnn
from gpurnn.kernels import vocabulary

ROOT = Path(__file__).resolve().parents[1]
LIBRARY, KERNELS = ROOT / "gpurnn", ROOT / "kernels"


def module_name(path):
    """The dotted name a file under gpurnn/ or kernels/ is imported as (kernels/ is gpurnn.kernels)."""
    if path.is_relative_to(KERNELS):
        parts = ["gpurnn", "kernels"] + list(path.relative_to(KERNELS).with_suffix("").parts)
    else:
        parts = ["gpurnn"] + list(path.relative_to(LIBRARY).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, source=None):
    """(line, absolute name) of everything the import statements of ``path`` (or of ``source``, read as
    if it were that file) import, relative names resolved: ``from .kernels import cuda`` in
    gpurnn/backend.py imports gpurnn.kernels.cuda."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return found


def kernel_files():
    return sorted(KERNELS.rglob("*.py"))


def test_the_walk_resolves_relative_imports():
    """The checker itself: the parent-package import that kernels/cuda/ once had is seen as gpurnn.backend."""
    runtime = KERNELS / "cuda" / "runtime.py"
    assert module_name(runtime) == "gpurnn.kernels.cuda.runtime"
    found = imported_modules(runtime, "from ...backend import cuda_simulated\nfrom .. import cuda_simulated\n"
                                      "from . import plan\nimport gpurnn.layers\n")
    assert found == [(1, "gpurnn.backend.cuda_simulated"), (2, "gpurnn.kernels.cuda_simulated"),
                     (3, "gpurnn.kernels.cuda.plan"), (4, "gpurnn.layers")]


@pytest.mark.parametrize("path", kernel_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_kernels_import_nothing_from_the_library(path):
    outside = [(line, m) for line, m in imported_modules(path) if m.split(".")[0] == "gpurnn"
               and not m.startswith("gpurnn.kernels.")]
    assert not outside, f"{path.relative_to(ROOT)} imports from the library: {outside}"


def test_the_library_imports_its_kernels_by_statement():
    """No module of the library finds a module by a computed name (importlib.import_module,
    __import__): a reader and a tool can follow every link. tasks.py reads the standard library's
    docstrings by module name, which is data, not a link between gpurnn's modules."""
    computed = []
    for path in sorted(LIBRARY.rglob("*.py")) + kernel_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called in ("import_module", "__import__") and path.name != "tasks.py":
                    computed.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not computed, computed
    imports = [m for _, m in imported_modules(LIBRARY / "backend.py")]
    assert {"gpurnn.kernels.cpu", "gpurnn.kernels.reference", "gpurnn.kernels.cuda"} <= set(imports), imports


@pytest.mark.slow
def test_a_checkout_runs_with_its_own_kernels(tmp_path):
    """Run from a second checkout while this one is installed (editable, as in CI): its gpurnn/
    must take its own kernels/, not the installed checkout's."""
    other = tmp_path / "other"
    for part in ("gpurnn", "kernels"):
        shutil.copytree(ROOT / part, other / part, ignore=shutil.ignore_patterns("__pycache__"))
    code = "import gpurnn, gpurnn.kernels.cpu as c; print(gpurnn.__file__); print(c.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=other, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    library, kernels = done.stdout.split()
    assert Path(library).parent == other / "gpurnn" and Path(kernels).parent == other / "kernels", done.stdout


def test_a_copy_without_kernels_says_what_to_do(tmp_path):
    shutil.copytree(ROOT / "gpurnn", tmp_path / "gpurnn", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-c", "import gpurnn"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "has no kernels" in done.stderr and "pip install" in done.stderr, done.stderr


# ---------------------------------------------------------------- one vocabulary
WORDS = ("GATES", "CELLS", "MODEL_CELLS", "ALGOS", "BACKENDS", "HALF")


def assigned_names(path):
    """Names bound at the top level of a module by an assignment (imports do not count)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_each_word_of_the_vocabulary_is_defined_once():
    files = sorted(LIBRARY.rglob("*.py")) + kernel_files() + sorted((ROOT / "benchmarks").glob("*.py")) \
        + sorted((ROOT / "tests").glob("*.py"))
    where = {w: [str(p.relative_to(ROOT)) for p in files if w in assigned_names(p)] for w in WORDS}
    assert where == {w: ["kernels/vocabulary.py"] for w in WORDS}


def test_the_vocabulary_agrees_with_itself():
    assert vocabulary.CELLS == tuple(vocabulary.GATES)
    assert set(vocabulary.MODEL_CELLS.values()) == set(vocabulary.CELLS)
    assert gpurnn.BACKENDS is vocabulary.BACKENDS
    with pytest.raises(ValueError, match="unknown cell 'rnn-relu'; expected one of rnn_tanh, rnn_relu, lstm, gru"):
        vocabulary.check_cell("rnn-relu")


def test_one_class_of_each_name():
    """Two classes of one name (two Plans, two Workspaces) make a reader ask which is meant. The
    exception: gpurnn.torch's RNN, LSTM and GRU are the layers again as torch.nn modules, named as
    torch.nn names them so that they drop in."""
    seen = {}
    for path in sorted(LIBRARY.rglob("*.py")) + kernel_files():
        for node in ast.parse(path.read_text()).body:
            if path.name == "torch.py" and node.__class__ is ast.ClassDef and node.name in ("RNN", "LSTM", "GRU"):
                continue
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                seen.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert {n: p for n, p in seen.items() if len(p) > 1} == {}

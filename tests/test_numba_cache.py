"""Where the compiled CPU kernels are cached (kernels/numba_cache.py).

Numba's default cache sits beside the source: in a non-editable install, inside
site-packages/gpurnn/kernels/__pycache__, which a later `pip install -e .` leaves behind as a
namespace package that shadows the editable one (`import gpurnn` then has no load_model). Each
case runs in a child process, as the cache folder is fixed when the kernels are imported.
"""

import os
import sys
from pathlib import Path

import pytest
from conftest import run_child

from gpurnn.kernels import cpu, numba_cache

PACKAGE = Path(cpu.__file__).resolve().parent

# Compile one small kernel, then say where its cache is and what it holds.
CHILD = """
import json, os, numpy as np
from gpurnn.kernels import cpu
from gpurnn.kernels.numba_cache import cache_path
cpu.copy_row(np.zeros(3), np.zeros(3))
path = cache_path(cpu.copy_row)
print(json.dumps(dict(path=path, files=sorted(os.listdir(path)) if path else [])))
"""


def _child(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    proc = run_child([sys.executable, "-c", CHILD], timeout=120, cwd=tmp_path, env=dict(base, **env))
    import json
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cache_files_in_package():
    return sorted(p.name for p in PACKAGE.rglob("*.nb[ic]"))


def test_numba_cache_dir_is_honoured_and_the_package_gets_nothing(tmp_path):
    before = _cache_files_in_package()
    out = _child(tmp_path, NUMBA_CACHE_DIR=str(tmp_path / "nc"))
    assert Path(out["path"]).is_relative_to(tmp_path / "nc"), out
    assert any(f.startswith("cpu.copy_row-") and f.endswith(".nbi") for f in out["files"]), out
    assert _cache_files_in_package() == before


def test_by_default_the_cache_is_the_users_not_the_packages(tmp_path):
    """Without NUMBA_CACHE_DIR: Numba's per-user cache folder ($XDG_CACHE_HOME/numba here), in a
    subfolder named after the installed source's path."""
    before = _cache_files_in_package()
    out = _child(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    path = Path(out["path"])
    assert path.is_relative_to(tmp_path / "xdg" / "numba") and path.name.startswith("kernels_"), out
    assert not path.is_relative_to(PACKAGE)
    assert any(f.endswith(".nbi") for f in out["files"]), out
    assert _cache_files_in_package() == before


def test_with_no_writable_cache_folder_the_kernels_still_run_uncached(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = _child(tmp_path, NUMBA_CACHE_DIR=str(blocker / "nc"), XDG_CACHE_HOME=str(blocker / "xdg"))
    assert out == dict(path=None, files=[])


@pytest.mark.parametrize("inlined", ["cells.py", "cpu_threads.py", "vocabulary.py"])
def test_an_edit_to_inlined_code_invalidates_the_cache(inlined, tmp_path, monkeypatch):
    """The CPU kernels inline kernels/cells.py (the cell math) and kernels/cpu_threads.py (the
    tiled products); Numba alone stamps an entry with cpu.py only, and loaded kernels compiled
    with the old products after an edit to cpu_threads.py."""
    locator = cpu.copy_row._cache._impl.locator
    copies = {}
    for path in numba_cache._INLINED:
        copies[os.path.basename(path)] = tmp_path / os.path.basename(path)
        copies[os.path.basename(path)].write_text("x = 1\n")
    monkeypatch.setattr(numba_cache, "_INLINED", tuple(str(p) for p in copies.values()))
    first = locator.get_source_stamp()
    copies[inlined].write_text("x = 2\n")
    assert locator.get_source_stamp() != first
    copies[inlined].write_text("x = 1\n")
    assert locator.get_source_stamp() == first

"""Where Numba keeps gpurnn's compiled CPU kernels: outside the installed package.

Numba's ``cache=True`` writes beside the source, into ``kernels/__pycache__``. In a non-editable
install that is ``site-packages/gpurnn/kernels/__pycache__``, a folder pip does not own: uninstalling
or a later ``pip install -e .`` leaves ``site-packages/gpurnn/`` behind, Python finds it as a
namespace package before the editable install, and ``import gpurnn`` gives an empty module. So
``cached`` points a kernel's cache elsewhere:

- ``NUMBA_CACHE_DIR`` when it is set (Numba's own variable), else
- the user's cache folder, as Numba names it (``$XDG_CACHE_HOME/numba``, by default
  ``~/.cache/numba`` on Linux), in a subfolder named after the installed source's path, so two
  installs never share entries;
- where neither can be written, nothing is cached and the kernels compile in every process.

A cache entry is also stamped with the content of the files whose code or values the CPU kernels
compile in: ``kernels/cells.py`` (the cell math), ``kernels/cpu_threads.py`` (the tiled products)
and ``kernels/vocabulary.py`` (a cell's index in CELLS). Numba alone checks only the kernel's own
file, and would load a kernel compiled with their old code.
"""

import functools
import hashlib
import os

from numba.core import caching

_INLINED = tuple(os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
                 for name in ("cells.py", "cpu_threads.py", "vocabulary.py"))


@functools.lru_cache(maxsize=None)
def _content_hash(path, mtime_ns, size):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _inlined_stamp():
    stamps = []
    for path in _INLINED:
        st = os.stat(path)
        stamps.append(_content_hash(path, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


class _StampedWithInlined:
    def get_source_stamp(self):
        return (super().get_source_stamp(), _inlined_stamp())


def _numba_class(name):
    """Numba 0.60 spelt its locators with a leading underscore."""
    return getattr(caching, name, None) or getattr(caching, "_" + name)


class _UserProvided(_StampedWithInlined, _numba_class("UserProvidedCacheLocator")):
    pass


class _UserWide(_StampedWithInlined, _numba_class("UserWideCacheLocator")):
    pass


class _OutsideThePackage(caching.CompileResultCacheImpl):
    _locator_classes = [_UserProvided, _UserWide]


class _FunctionCache(caching.FunctionCache):
    _impl_class = _OutsideThePackage


def cached(dispatcher):
    """Give a Numba ``@njit`` dispatcher (compiled without ``cache=True``) an on-disk cache outside
    the package; leave it uncached where no cache folder can be written."""
    try:
        dispatcher._cache = _FunctionCache(dispatcher.py_func)
    except RuntimeError:    # Numba found no writable folder: compile in every process instead
        pass
    return dispatcher


def cache_path(dispatcher):
    """The folder ``dispatcher``'s compiled code is kept in, or None when it is not cached."""
    impl = getattr(dispatcher._cache, "_impl", None)
    return None if impl is None else impl.locator.get_cache_path()

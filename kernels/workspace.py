"""Host arrays reused between calls, for the cpu backend's per-sequence buffers.

A training step of one layer allocates the same arrays every time: the input projection
(T, B, G*H), the states and gates it saves for backward, the gate gradients, dx. Fresh ``np.empty``
memory of that size comes from the kernel page by page: once the step returns and its arrays are
freed, the C allocator hands the pages back, and the next step faults every one of them in again
(zeroed by the kernel). On a virtual machine each fault costs microseconds; a small LSTM step
(T=100, B=8, H=64, 2.6 MB of buffers a forward) then spends as long faulting as computing.

``Workspace.empty`` keeps every array it hands out and hands it out again once nothing else refers
to it: Python's reference count tells. An array is busy while anything holds it or a view of it
(a view keeps its base alive), whether a caller kept ``y``, a layer's saved state for backward
still holds ``gates``, or a torch graph retains them; only an array no one can reach any more is
reused, so reuse can never overwrite live data. Arrays are matched by exact shape and dtype.

Lookup: the cached arrays are filed by (shape, dtype), so a request looks only at the arrays of
its own shape and dtype (those a step holds at once: a few), however many other shapes the cache
holds. Sequence lengths that vary from batch to batch (packed batches) leave arrays of many shapes
behind, and a cache scanned whole on every request made a fixed-size step several times slower.

Memory: what the cache holds is what the steps use anyway; it stays held after the last step, up
to ``limit_bytes`` and ``limit_count`` arrays: beyond either, the least recently handed out arrays
are dropped. One training step of a layer and direction uses about 13 arrays (7 forward, 6
backward), so the default count leaves room for a deep bidirectional stack, its evaluation shapes
and several forwards held at once. ``release()`` drops it all.
"""

import sys
import threading
from collections import OrderedDict

import numpy as np

DEFAULT_LIMIT_BYTES = 1 << 30
DEFAULT_LIMIT_COUNT = 512


class Workspace:
    """``empty``/``zeros`` as NumPy's, from a cache bounded by ``limit_bytes`` and ``limit_count``.

    ``examined`` counts the cached arrays that requests have looked at, for tests and diagnostics:
    a request looks at the arrays of its own shape and dtype only.
    """

    def __init__(self, limit_bytes=DEFAULT_LIMIT_BYTES, limit_count=DEFAULT_LIMIT_COUNT):
        self.limit_bytes = int(limit_bytes)
        self.limit_count = int(limit_count)
        if self.limit_count < 1:
            raise ValueError(f"limit_count must be at least 1, got {limit_count!r}")
        # The only reference the cache holds to each array: id -> array, least recently handed out
        # first. ``_ids`` files the same ids by (shape, dtype), in the same order within each key.
        self._arrays = OrderedDict()
        self._ids = {}
        self._bytes = 0
        self.examined = 0
        self._lock = threading.Lock()
        self._idle_refcount = self._refcount_when_idle()

    @staticmethod
    def _refcount_when_idle():
        """The count ``_find`` reads for an array that only the cache holds: the dict's reference,
        ``_find``'s local name and getrefcount's argument. Measured with the same expressions
        rather than assumed."""
        arrays = {0: np.empty(1)}
        a = arrays[0]
        return sys.getrefcount(a)

    def _find(self, key):
        """The id of an idle cached array of ``key``, or None."""
        ids = self._ids.get(key)
        if ids is None:
            return None
        for i in ids:
            a = self._arrays[i]
            self.examined += 1
            if sys.getrefcount(a) == self._idle_refcount:
                return i
        return None

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array, as ``np.empty``, possibly reused."""
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        key = (shape, dtype)
        with self._lock:
            i = self._find(key)
            if i is not None:
                self._arrays.move_to_end(i)         # most recently handed out: evicted last
                ids = self._ids[key]
                del ids[i]
                ids[i] = None
                return self._arrays[i]
            a = np.empty(shape, dtype)
            if a.nbytes > self.limit_bytes:
                return a                            # too large to keep: a plain allocation
            self._evict(self.limit_bytes - a.nbytes, self.limit_count - 1)
            self._arrays[id(a)] = a
            self._ids.setdefault(key, {})[id(a)] = None
            self._bytes += a.nbytes
            return a

    def zeros(self, shape, dtype):
        a = self.empty(shape, dtype)
        a.fill(0)
        return a

    def _evict(self, keep_bytes, keep_count):
        """Forget the least recently handed out arrays until the cache holds at most ``keep_bytes``
        in at most ``keep_count`` arrays. A forgotten array that is still in use stays valid: its
        holder frees it as usual."""
        while self._arrays and (self._bytes > keep_bytes or len(self._arrays) > keep_count):
            i, a = self._arrays.popitem(last=False)
            key = (a.shape, a.dtype)
            ids = self._ids[key]
            del ids[i]
            if not ids:
                del self._ids[key]
            self._bytes -= a.nbytes

    def release(self):
        """Forget every cached array (the memory of those no one holds goes back at once)."""
        with self._lock:
            self._arrays.clear()
            self._ids.clear()
            self._bytes = 0

    def cached_bytes(self):
        with self._lock:
            return self._bytes

    def cached_count(self):
        """How many arrays the cache holds, busy or idle."""
        with self._lock:
            return len(self._arrays)

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

Memory: what the cache holds is what the steps use anyway; it stays held after the last step, up
to ``limit_bytes`` (least recently used arrays are dropped beyond it). ``release()`` drops it all.
"""

import sys
import threading

import numpy as np

DEFAULT_LIMIT_BYTES = 1 << 30


class Workspace:
    def __init__(self, limit_bytes=DEFAULT_LIMIT_BYTES):
        self.limit_bytes = int(limit_bytes)
        self._arrays = []                       # least recently handed out first
        self._lock = threading.Lock()
        self._idle_refcount = self._refcount_when_idle()

    @staticmethod
    def _refcount_when_idle():
        """The count ``_find`` reads for an array that only the cache holds: the list's reference
        and getrefcount's argument. Measured with the same expression rather than assumed."""
        probe = [np.empty(1)]
        return sys.getrefcount(probe[0])

    def _find(self, shape, dtype):
        arrays = self._arrays
        for k in range(len(arrays)):
            if (arrays[k].shape == shape and arrays[k].dtype == dtype
                    and sys.getrefcount(arrays[k]) == self._idle_refcount):
                return k
        return None

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array, as ``np.empty``, possibly reused."""
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        with self._lock:
            k = self._find(shape, dtype)
            if k is not None:
                a = self._arrays.pop(k)
            else:
                a = np.empty(shape, dtype)
                if a.nbytes > self.limit_bytes:
                    return a                    # too large to keep: a plain allocation
                self._evict(self.limit_bytes - a.nbytes)
            self._arrays.append(a)
            return a

    def zeros(self, shape, dtype):
        a = self.empty(shape, dtype)
        a.fill(0)
        return a

    def _evict(self, keep_bytes):
        """Forget the least recently used arrays until the cache holds at most ``keep_bytes``.
        A forgotten array that is still in use stays valid: its holder frees it as usual."""
        total = sum(a.nbytes for a in self._arrays)
        while self._arrays and total > keep_bytes:
            total -= self._arrays.pop(0).nbytes

    def release(self):
        """Forget every cached array (the memory of those no one holds goes back at once)."""
        with self._lock:
            self._arrays.clear()

    def cached_bytes(self):
        with self._lock:
            return sum(a.nbytes for a in self._arrays)

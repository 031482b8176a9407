"""CUDA graphs for the per-step path: the T forward launches and the T + 1 backward launches of a
layer and direction, captured once and replayed with one host call.

Why: every launch through numba-cuda costs tens of microseconds of host time (argument packing in
Python), so a per-step forward spends at least T x that on the host and a backward (T + 1) x that,
whatever the GPU does; a graph replay is one driver call, and the GPU runs the captured kernels
back to back (about 1-2 µs apart instead of the host's pace).

How. A graph bakes in the device pointers it was captured with, so a plan owns its workspace: one
set of the recursion's arrays (``RecursionArrays``) for its shapes. A call copies its inputs into the
workspace (x·W_ihᵀ + b_ih, h_0 and c_0, W_hh, b_hh, lengths; backward: dy, dh_n, dc_n and the saved
activations), replays the graph, and copies the results out into arrays of its own, so that what a
caller keeps (the saved activations, y, dx) is never overwritten by a later call with the same
shapes, e.g. the next layer of a stack. Backward skips copying the saved activations back in when
the workspace still holds the forward's that made them (no other forward of these shapes ran in
between: the usual case). The copies are device-to-device copies of the activations, a few per
cent of the steps' time at the shapes where the step path runs.

    Plan key    cell, dtype, T, B, H, lengths given or not, direction, geometry, device
    Cache       the MAX_PLANS most recently used plans (their workspaces with them)
    Capture     on the second call with a key: a one-off shape pays no capture; the first call's
                direct launches have compiled and loaded the kernels, and nothing is allocated
                while capturing (the workspace, its placeholders included, exists before)
    Stream      captured on a non-blocking CuPy stream, the Numba launches on it through
                ``cuda.external_stream``; replayed on the caller's current stream, which first
                waits for the stream the workspace was last used on
    Off         GPURNN_GRAPHS=0 (every call launches directly, as without a plan)

The simulator has no graphs. There a capture records the configured launches without running them
(``runtime.capturing``) and a replay runs the recorded launches in order: the same launches, on the
same workspace, as on a GPU, so the tests compare launches, buffers and results with and without
plans. A replay is recorded as one launch (``runtime.recording``), named "graph <kernel>".
"""

import os
from collections import OrderedDict
from dataclasses import replace

from . import runtime as rt
from . import step

MAX_PLANS = 8
ENV = "GPURNN_GRAPHS"


def enabled():
    """Whether the per-step path uses graphs (GPURNN_GRAPHS, "1" by default, "0" to turn off)."""
    value = os.environ.get(ENV, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENV}={value!r}: expected 1 (CUDA graphs for the per-step path, the default) or 0 (off)")
    return value == "1"


class RecursionArrays:
    """The arrays of one layer's recursion for one set of shapes, owned by its plan: every pointer
    a captured graph reads or writes. Shapes as in ``__init__.py``; an array the cell lacks is a
    placeholder of its rank, so that nothing is allocated while capturing."""

    def __init__(self, cell, dtype, T, B, H, G):
        xp = rt.xp_of()
        lstm, gru = cell == "lstm", cell == "gru"
        self.xw = xp.empty((T, B, G * H), dtype)
        self.hs = xp.empty((T + 1, B, H), dtype)
        self.cs = xp.empty((T + 1, B, H), dtype) if lstm else None
        self.gates = xp.empty((T, B, G * H), dtype) if lstm or gru else None
        self.hn = xp.empty((T, B, H), dtype) if gru else None
        self.y = xp.empty((T, B, H), dtype)
        self.w_hh = xp.empty((G * H, H), dtype)
        self.b_hh = xp.empty((G * H,), dtype)
        self.lengths = xp.empty((B,), "int32")
        self.placeholder3 = rt.placeholder(dtype, 3)
        self.dg_x = self.dg_h = self.dy = self.dh = self.dc = None     # ``for_backward``

    def for_backward(self, cell):
        """Allocate the backward's arrays, on its first graph (a model that only infers never does)."""
        if self.dy is not None:
            return
        xp, (T, B, GH), dtype = rt.xp_of(), self.xw.shape, self.xw.dtype
        H = self.y.shape[2]
        self.dg_x = xp.empty((T, B, GH), dtype)
        self.dg_h = xp.empty((T, B, GH), dtype) if cell == "gru" else self.dg_x
        self.dy = xp.empty((T, B, H), dtype)
        self.dh = xp.empty((B, H), dtype)
        self.dc = xp.empty((B, H), dtype) if cell == "lstm" else rt.placeholder(dtype, 2)

    def saved(self, like):
        """The saved record ``like`` (``__init__.CudaSaved``) with the workspace's arrays in place of
        its own, placeholders where the cell lacks an array."""
        p = self.placeholder3
        return replace(like, hs=self.hs, cs=self.cs if self.cs is not None else p,
                       gates=self.gates if self.gates is not None else p, hn=self.hn if self.hn is not None else p,
                       row_lengths=self.lengths)


class Recursion:
    """A layer's recursion for one key: its workspace and its two graphs (made when first needed)."""

    def __init__(self, key):
        self.key, self.calls, self.workspace = key, 0, None
        self.graphs = {}            # "forward" / "backward" -> Graph
        self.holds = None           # the token of the forward whose activations the workspace holds
        self.stream = None          # the stream the workspace was last used on

    def use(self, stream):
        """Order this call after the last one that used the workspace, on whatever stream."""
        rt.wait(stream, self.stream)
        self.stream = stream

    def replay(self, kind, launch_all, stream):
        """Replay graph ``kind`` ("forward" / "backward"), capturing ``launch_all`` first if new, and
        record the replay as one launch, "graph step_<kind>"."""
        name = f"step_{kind}"
        if kind not in self.graphs:
            self.graphs[kind] = Graph(name, launch_all)
        g = self.graphs[kind]
        g.replay(stream)
        rt.record(f"graph {name}", g.replay, (stream,))


class Graph:
    """Launches captured once, replayed at every call. ``launch_all(stream)`` enqueues them."""

    def __init__(self, name, launch_all):
        self.name, self.graph = name, None
        if rt.cuda_simulated():
            with rt.capturing(run=False) as self.launches:
                launch_all(None)
            return
        import cupy
        s = cupy.cuda.Stream(non_blocking=True)
        with s, rt.capturing(run=True) as self.launches:
            s.begin_capture()
            try:
                launch_all(s)
            finally:
                graph = s.end_capture()
        self.graph = graph

    def replay(self, stream):
        if self.graph is not None:
            self.graph.launch(stream)
        else:
            for _name, launch, args in self.launches:
                launch(*args)


_plans = OrderedDict()


def plan_for(cell, dtype, T, B, H, has_lengths, rev, geo, device):
    """The plan of this key, made (and the least recently used one dropped past MAX_PLANS) when new;
    None when graphs are off."""
    if not enabled():
        return None
    key = (cell, str(dtype), T, B, H, bool(has_lengths), int(rev), geo, device)
    p = _plans.pop(key, None) or Recursion(key)
    _plans[key] = p
    while len(_plans) > MAX_PLANS:
        _plans.popitem(last=False)
    return p


def clear():
    """Drop every plan, and the workspaces and graphs with them."""
    _plans.clear()


def plans():
    """The cached plans, least recently used first (tests, benchmarks)."""
    return list(_plans.values())


def _copy(dst, src):
    """dst[...] = src on the current stream (both arrays of the backend)."""
    dst[...] = src


def forward(p, cell, kernels, s, xw, y, w_hh, b_hh, stream):
    """``step.forward`` through the plan ``p``: on its first call the direct launches; later the
    graph (captured on the second call) on the plan's workspace, with the inputs copied in and the
    results (y and the saved arrays of ``s``) copied out. Returns True when the graph ran."""
    p.calls += 1
    if p.calls == 1:
        step.forward(cell, kernels, s, xw, y, w_hh, b_hh, stream)
        return False
    T, B, H = y.shape
    first = T if s.reverse else 0
    if p.workspace is None:
        p.workspace = RecursionArrays(cell, y.dtype, T, B, H, xw.shape[2] // H)
    ws = p.workspace
    p.use(stream)
    for dst, src in ((ws.xw, xw), (ws.w_hh, w_hh), (ws.b_hh, b_hh), (ws.lengths, s.row_lengths),
                     (ws.hs[first], s.hs[first])):
        _copy(dst, src)
    if cell == "lstm":
        _copy(ws.cs[first], s.cs[first])
    wsaved = ws.saved(s)
    p.replay("forward", lambda st: step.forward(cell, kernels, wsaved, ws.xw, ws.y, ws.w_hh, ws.b_hh, st), stream)
    _copy(y, ws.y)
    for name in ("hs", "cs", "gates", "hn"):
        if getattr(s, name) is not None:
            _copy(getattr(s, name), getattr(ws, name))
    p.holds = s.graph_token = object()
    return True


def backward(p, cell, kernels, s, dg_x, dg_h, dy, dh, dc, w_hh, stream):
    """``step.backward`` through the plan ``p``, as ``forward``: the direct launches until the plan
    has seen a call, then the graph on the workspace. The saved activations are copied in unless
    the workspace still holds them. Returns False (dW_hh is left to the accumulation kernel)."""
    p.calls += 1
    if p.calls == 1 or p.workspace is None:
        return step.backward(cell, kernels, s, dg_x, dg_h, dy, dh, dc, w_hh, None, stream)
    ws = p.workspace
    ws.for_backward(cell)
    p.use(stream)
    token = s.graph_token                 # None: its forward launched directly
    if token is None or p.holds is not token:
        for name in ("hs", "cs", "gates", "hn"):
            if getattr(s, name) is not None:
                _copy(getattr(ws, name), getattr(s, name))
        _copy(ws.lengths, s.row_lengths)
        p.holds = token
    for dst, src in ((ws.dy, dy), (ws.dh, dh), (ws.w_hh, w_hh)):
        _copy(dst, src)
    if cell == "lstm":
        _copy(ws.dc, dc)
    wsaved = ws.saved(s)
    p.replay("backward", lambda st: step.backward(cell, kernels, wsaved, ws.dg_x, ws.dg_h, ws.dy, ws.dh, ws.dc,
                                                  ws.w_hh, None, st), stream)
    _copy(dg_x, ws.dg_x)
    if cell == "gru":
        _copy(dg_h, ws.dg_h)
    _copy(dh, ws.dh)
    if cell == "lstm":
        _copy(dc, ws.dc)
    return False

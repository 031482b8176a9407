"""CUDA graphs for the per-step path: the T forward launches and the T + 1 backward launches of a
layer and direction, captured once and replayed with one host call.

Why: every launch through numba-cuda costs tens of microseconds of host time (argument packing in
Python), so a per-step forward spends at least T x that on the host and a backward (T + 1) x that,
whatever the GPU does; a graph replay is one driver call, and the GPU runs the captured kernels
back to back (about 1-2 µs apart instead of the host's pace).

How. A graph bakes in the device pointers it was captured with, so its arrays live in a
workspace of the plan (``RecursionArrays``), and a call computes in the workspace itself: forward
writes x·W_ihᵀ into the workspace's xw, copies h_0 (c_0) and the lengths in, replays, and hands
the workspace's y, hs, cs, gates, hn and lengths to the caller as its results and saved
activations; backward, given those, copies dy, dh_n (dc_n) in, replays on the same workspace and
reads dG there. The weights are not copied: a graph reads W_hh and b_hh where the caller keeps
them (a layer's parameters are updated in place, so their address holds from step to step), and
is captured again when a call brings weights at another address.

Who may overwrite what. The arrays a forward hands out are new array objects over the workspace's
memory that hold a lease (``_Lease``): the lease lives while any of them, or any view of them (a
state h_n = hs[T], a torch tensor through DLPack, the next layer's input), lives. A workspace whose
lease is alive is held: no call writes into it. A call takes a free workspace of its plan (one
captured with the same weights first), else makes a new one, up to MAX_WORKSPACES a plan; when all
are held it launches directly on arrays of its own, as without graphs. So what a caller keeps is
never overwritten by a later call with the same shapes (the next layer of a stack takes a second
workspace while the first layer's activations are held), and a caller that keeps nothing gets the
same workspace back at every call. A layer drops its last forward's record before the next forward
(layers.py), so a one-layer model alternates between one or two workspaces.

    Plan key    cell, dtype, T, B, H, lengths given or not, direction, geometry, device, half format
                (a half format's forward kernels are its own: a graph captures the kernels it
                launches; the backward graph, captured on the same workspace, is float32's)
    Cache       the MAX_PLANS most recently used plans (their workspaces with them; a workspace
                still held lives on with its lease)
    Capture     a plan's first forward and first backward launch directly (a one-off shape makes
                nothing, and the kernels are compiled before a capture); from then on a
                workspace's graph is captured at its first replay and again when an array it reads
                from outside the workspace moves; nothing is allocated while capturing (the
                workspace, placeholders and each graph's split scratch included, exists before)
    Stream      captured on a non-blocking CuPy stream, the Numba launches on it through
                ``cuda.external_stream``; replayed on the caller's current stream, which first
                waits for the stream the workspace was last used on. As with CuPy's memory pool,
                a workspace comes back for reuse in the order of the calls that used it: the
                caller orders its own reads of handed-out arrays on other streams.
    Off         GPURNN_GRAPHS=0 (every call launches directly, as without a plan)

What it saves, per call of an LSTM (float32, T=128, B=64, H=1024), against copying the inputs
into one workspace and the results out of it: forward, 7 copies and 386 MB (xw 134, W_hh 16.8,
b_hh in; y 33.6, hs 33.8, cs 33.8, gates 134 out; the lengths when none are given are filled once)
and the 6 allocations of the results and xw; left, h_0 and c_0 in (0.5 MB). Backward, 2 copies
and 151 MB (W_hh in, dG_x out; the GRU's dG_h too) and the dG allocation; left, dy, dh_n and dc_n
in (34 MB) and dh_0, dc_0 out as arrays of the caller's own (0.5 MB).

The simulator has no graphs. There a capture records the configured launches without running them
(``runtime.capturing``) and a replay runs the recorded launches in order: the same launches, on the
same workspace, as on a GPU, so the tests compare launches, buffers and results with and without
plans. A replay is recorded as one launch (``runtime.recording``), named "graph <kernel>".
"""

import os
import weakref
from collections import OrderedDict
from dataclasses import replace

from ..vocabulary import GATES
from . import runtime as rt
from . import split, step

MAX_PLANS = 8
MAX_WORKSPACES = 4
ENV = "GPURNN_GRAPHS"


def enabled():
    """Whether the per-step path uses graphs (GPURNN_GRAPHS, "1" by default, "0" to turn off)."""
    value = os.environ.get(ENV, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENV}={value!r}: expected 1 (CUDA graphs for the per-step path, the default) or 0 (off)")
    return value == "1"


def address(a):
    """Where an array is and how it is laid out: what a captured graph depends on."""
    if hasattr(a, "__cuda_array_interface__") and not rt.cuda_simulated():
        ptr = a.__cuda_array_interface__["data"][0]
    else:
        ptr = a.__array_interface__["data"][0]
    return ptr, tuple(a.shape), tuple(a.strides), str(a.dtype)


class _Lease:
    """Held by every array a forward hands out of a workspace (and so by every view of one); the
    workspace is free again once it is gone."""

    __slots__ = ("workspace", "__weakref__")

    def __init__(self, workspace):
        self.workspace = workspace          # keeps the memory alive, whatever the plan cache drops


class _Memory:
    """What a simulator array handed out is a view of: the workspace array's memory (its array
    interface) and the lease."""

    def __init__(self, a, lease):
        self.__array_interface__ = a.__array_interface__
        self.lease = lease


def _hand_out(a, lease):
    """A new array over ``a``'s memory that keeps ``lease`` alive while it or a view of it lives."""
    if rt.cuda_simulated():
        return rt.xp_of().asarray(_Memory(a, lease))
    import cupy
    memory = cupy.cuda.UnownedMemory(a.data.ptr, a.nbytes, lease, a.data.device_id)
    return cupy.ndarray(a.shape, a.dtype, cupy.cuda.MemoryPointer(memory, 0), strides=a.strides)


class RecursionArrays:
    """A workspace: the arrays of one layer's recursion for one set of shapes, and the graphs
    captured on them. It holds every pointer a captured graph reads or writes, but for the weights,
    which ``weights`` keeps (so that their memory stays while a graph reads it). Shapes as in
    ``__init__.py``; an array the cell lacks is a placeholder of its rank, so that nothing is
    allocated while capturing."""

    HANDED_OUT = ("hs", "cs", "gates", "hn", "y", "lengths")

    def __init__(self, cell, dtype, T, B, H, G):
        xp, empty = rt.xp_of(), rt.empty
        lstm, gru = cell == "lstm", cell == "gru"
        self.xw = empty((T, B, G * H), dtype)
        self.hs = empty((T + 1, B, H), dtype)
        self.cs = empty((T + 1, B, H), dtype) if lstm else None
        self.gates = empty((T, B, G * H), dtype) if lstm or gru else None
        self.hn = empty((T, B, H), dtype) if gru else None
        self.y = empty((T, B, H), dtype)
        self.lengths = xp.empty((B,), "int32")
        self.all_rows_run_T = False
        self.placeholder3 = rt.placeholder(dtype, 3)
        self.dg_x = self.dg_h = self.dy = self.dh = self.dc = None     # ``for_backward``
        self.scratch = {}                   # kind -> split.Scratch: each graph's own (split.py)
        self.graphs = {}                    # "forward" / "backward" -> Graph
        self.weights = {}                   # kind -> the weights its graph reads (held: their memory stays)
        self.lease = None                   # a weak reference to the lease of what was handed out last
        self.stream = None                  # the stream the workspace was last used on

    def free(self):
        return self.lease is None or self.lease() is None

    def use(self, stream):
        """Order this call after the last one that used the workspace, on whatever stream."""
        rt.wait(stream, self.stream)
        self.stream = stream

    def hand_out(self):
        """The arrays of HANDED_OUT (those the cell has) as new arrays over the same memory, all
        holding one new lease: the workspace is held until every one of them is gone."""
        lease = _Lease(self)
        self.lease = weakref.ref(lease)
        return {name: _hand_out(getattr(self, name), lease) for name in self.HANDED_OUT
                if getattr(self, name) is not None}

    def set_lengths(self, lengths):
        """The kernels' lengths: ``lengths``, or T for every row, filled once (a plan's calls all
        give lengths or none: it is part of the key)."""
        if lengths is not None:
            self.lengths[...] = lengths
        elif not self.all_rows_run_T:
            self.lengths.fill(self.y.shape[0])
            self.all_rows_run_T = True

    def for_backward(self, cell):
        """Allocate the backward's arrays, on its first graph (a model that only infers never does)."""
        if self.dy is not None:
            return
        empty, (T, B, GH), dtype = rt.empty, self.xw.shape, self.xw.dtype
        H = self.y.shape[2]
        self.dg_x = empty((T, B, GH), dtype)
        self.dg_h = empty((T, B, GH), dtype) if cell == "gru" else self.dg_x
        self.dy = empty((T, B, H), dtype)
        self.dh = empty((B, H), dtype)
        self.dc = empty((B, H), dtype) if cell == "lstm" else rt.placeholder(dtype, 2)

    def holds(self, s):
        """Whether the saved record ``s`` is this workspace's (its activations are here)."""
        return address(s.hs) == address(self.hs)

    def saved(self, like):
        """The saved record ``like`` (``__init__.CudaSaved``) with the workspace's arrays in place of
        its own, placeholders where the cell lacks an array."""
        p = self.placeholder3
        return replace(like, hs=self.hs, cs=self.cs if self.cs is not None else p,
                       gates=self.gates if self.gates is not None else p, hn=self.hn if self.hn is not None else p,
                       row_lengths=self.lengths)

    def arrays(self):
        """Every array a graph of this workspace may read or write (tests): its own, its split
        scratch and the weights its graphs were captured with."""
        own = [a for a in vars(self).values() if hasattr(a, "shape")]
        scratch = [a for sc in self.scratch.values() for a in (*sc.parts.values(), sc.counters)]
        weights = [w for ws in self.weights.values() for w in ws]
        return [a for a in own + scratch + weights if a is not None]

    def replay(self, kind, launch_all, weights, scratch, stream):
        """Replay graph ``kind`` ("forward" / "backward"), captured first when new or when an array
        it reads from outside the workspace has moved (the ``weights``, or its ``scratch``, grown),
        and record the replay as one launch, "graph step_<kind>"."""
        name = f"step_{kind}"
        outside = [address(a) for a in (*weights, *scratch.parts.values(), scratch.counters)]
        if kind not in self.graphs or self.graphs[kind].outside != outside:
            self.graphs[kind] = Graph(name, launch_all)
            self.graphs[kind].outside = outside
            self.weights[kind] = tuple(weights)
        g = self.graphs[kind]
        g.replay(stream)
        rt.record(f"graph {name}", g.replay, (stream,))


class Recursion:
    """A layer's recursion for one key: its workspaces (made when first needed), at most
    MAX_WORKSPACES."""

    def __init__(self, key):
        self.key, self.workspaces, self.last = key, [], None
        self.calls = self.backward_calls = 0        # forwards and backwards of this key so far

    @property
    def workspace(self):
        """The workspace the latest call took (None before the first graph)."""
        return self.last

    @property
    def graphs(self):
        """The graphs of that workspace."""
        return self.last.graphs if self.last is not None else {}

    def take(self, w_hh, b_ih, b_hh, stream):
        """A free workspace for a forward with these weights, ordered after its last use: one whose
        forward graph reads them if there is one, any free one else, a new one while there are
        fewer than MAX_WORKSPACES. None on the plan's first call, and when every workspace is held."""
        self.calls += 1
        if self.calls == 1:
            return None
        free = [ws for ws in self.workspaces if ws.free()]
        where = [address(w_hh), address(b_ih), address(b_hh)]
        ws = next((ws for ws in free if [address(w) for w in ws.weights.get("forward", ())] == where), None)
        if ws is None and free:
            ws = free[0]
        if ws is None:
            if len(self.workspaces) >= MAX_WORKSPACES:
                return None
            cell, dtype, T, B, H = self.key[:5]
            ws = RecursionArrays(cell, dtype, T, B, H, GATES[cell])
            self.workspaces.append(ws)
        ws.use(stream)
        self.last = ws
        return ws


class Graph:
    """Launches captured once, replayed at every call. ``launch_all(stream)`` enqueues them."""

    def __init__(self, name, launch_all):
        self.name, self.graph, self.outside = name, None, None
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


def plan_for(cell, dtype, T, B, H, has_lengths, rev, geo, device, half=None):
    """The plan of this key, made (and the least recently used one dropped past MAX_PLANS) when new;
    None when graphs are off. ``half``: the layer's half format (None for float32, float64)."""
    if not enabled():
        return None
    key = (cell, str(dtype), T, B, H, bool(has_lengths), int(rev), geo, device, half)
    p = _plans.pop(key, None) or Recursion(key)
    _plans[key] = p
    while len(_plans) > MAX_PLANS:
        _plans.popitem(last=False)
    return p


def clear():
    """Drop every plan, and the workspaces and graphs with them (a workspace still held lives on
    with its lease until its arrays are gone)."""
    _plans.clear()


def plans():
    """The cached plans, least recently used first (tests, benchmarks)."""
    return list(_plans.values())


def _scratch(ws, kind, cell, s, dtype):
    """The split scratch of graph ``kind`` of ``ws``, allocated before its launches are captured.
    One a graph: a scratch grown for one graph would free the memory the other was captured with."""
    T, B, H = ws.y.shape
    if kind not in ws.scratch:
        ws.scratch[kind] = split.Scratch()
    step.scratch_arrays(f"step_{kind}", cell, s, H, B, dtype, ws.scratch[kind])
    return ws.scratch[kind]


def forward(ws, cell, kernels, s, w_hh, b_ih, b_hh, stream):
    """``step.forward`` as a graph replay on the workspace ``ws``, whose xw, first state (cell
    state) and lengths the caller has filled; writes the arrays ``s`` holds (``RecursionArrays.hand_out``)."""
    scratch = _scratch(ws, "forward", cell, s, ws.y.dtype)
    wsaved = ws.saved(s)
    ws.replay("forward", lambda st: step.forward(cell, kernels, wsaved, ws.xw, ws.y, w_hh, b_ih, b_hh, st,
                                                 scratch=scratch), (w_hh, b_ih, b_hh), scratch, stream)


def backward_workspace(s, cell, stream):
    """The workspace that holds the activations of the saved record ``s`` (its forward replayed a
    graph), with its backward's arrays made and ordered after its last use; None when its forward
    launched directly, and for the first backward of its plan, which launches directly (and so
    compiles the backward kernel before a graph captures it)."""
    ws, p = getattr(s, "workspace", None), getattr(s, "graph", None)
    if p is not None:
        p.backward_calls += 1
    if ws is None or not ws.holds(s) or (p is not None and p.backward_calls == 1):
        return None
    ws.for_backward(cell)
    ws.use(stream)
    return ws


def backward(ws, cell, kernels, s, w_hh, stream):
    """``step.backward`` as a graph replay on ``ws`` (``backward_workspace``), whose dy, dh (dc)
    the caller has filled: leaves dG in ws.dg_x (ws.dg_h) and dL/dh_0 (dL/dc_0) in ws.dh (ws.dc).
    Returns False (dW_hh is left to the accumulation kernel)."""
    scratch = _scratch(ws, "backward", cell, s, ws.dy.dtype)
    wsaved = ws.saved(s)
    ws.replay("backward", lambda st: step.backward(cell, kernels, wsaved, ws.dg_x, ws.dg_h, ws.dy, ws.dh, ws.dc,
                                                   w_hh, None, st, scratch=scratch), (w_hh,), scratch, stream)
    return False

"""gpurnn.torch's modules against torch.nn's, float64: outputs, states and every gradient, training
with torch's optimisers, gradcheck, dropout, DistributedDataParallel, and the errors.

The cuda cases (ids with "cuda") run in the simulator through tests/test_cuda_simulator.py.
"""

import os
import socket
import sys
import textwrap

import numpy as np
import pytest

import gpurnn
from conftest import CELLS, FAST_BACKENDS, SIMULATED, run_child
from gpurnn.backend import get_backend

torch = pytest.importorskip("torch", reason="gpurnn.torch needs torch; pip install '.[test]'")
gt = pytest.importorskip("gpurnn.torch")

from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

F64 = torch.float64
TESTED_BACKENDS = ["reference"] + FAST_BACKENDS
CUDA_BACKENDS = [b for b in TESTED_BACKENDS if b.startswith("cuda")]
CLASS = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}
ON_GPU = not SIMULATED and gpurnn.cuda_status()[0]     # the cuda backend on a real GPU


def device_of(backend):
    """Where a backend's tensors live: on a GPU the cuda backend takes CUDA tensors; the simulator
    and the other backends compute on host memory."""
    if backend.startswith("cuda") and ON_GPU:
        if not torch.cuda.is_available():
            pytest.skip("this torch has no CUDA: it cannot hand gpurnn.torch the CUDA tensors the cuda backend takes")
        return "cuda"
    return "cpu"


def pair(cell, backend, *args, seed=0, **kw):
    """(gpurnn.torch module, torch.nn module): the same configuration, float64, the same weights;
    gpurnn.torch's on its backend's device (device_of), torch.nn's on the CPU.
    ``backend`` "cuda-<algo>" is the cuda backend with that algorithm."""
    device = device_of(backend)
    algo = "auto"
    if backend.startswith("cuda-"):
        backend, algo = "cuda", backend[len("cuda-"):]
    if cell.startswith("rnn_") and len(args) > 3:
        args = args[:3] + (cell[4:],) + args[3:]        # torch.nn.RNN takes nonlinearity fourth
    elif cell.startswith("rnn_"):
        kw["nonlinearity"] = cell[4:]
    torch.manual_seed(seed)
    ours = getattr(gt, CLASS[cell])(*args, dtype=F64, backend=backend, algo=algo, **kw)
    theirs = getattr(torch.nn, CLASS[cell])(*args, dtype=F64, **kw)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours.to(device), theirs


def run(m, cell, x, hx, lengths, batch_first, seed=1):
    """Forward (packed when there are lengths), then backward of a random weighting of every
    output, on m's device; returns outputs and every gradient (input, initial states, parameters)
    as host arrays."""
    device = next(m.parameters()).device
    x = x.to(device).requires_grad_(True)
    hx = None if hx is None else tuple(h.to(device).requires_grad_(True) for h in hx)
    inp = x if lengths is None else pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, state = m(inp, None if hx is None else (hx if cell == "lstm" else hx[0]))
    states = state if cell == "lstm" else (state,)
    y = out.data if lengths is not None else out
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=F64).to(device)).sum()
    for s in states:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=F64).to(device)).sum()
    m.zero_grad()
    loss.backward()
    res = {"y": y, "dx": x.grad}
    res.update({f"state{i}": s for i, s in enumerate(states)})
    if hx is not None:
        res.update({f"dstate{i}": h.grad for i, h in enumerate(hx)})
    res.update({f"grad/{k}": p.grad for k, p in m.named_parameters()})
    if lengths is not None:
        res.update(batch_sizes=out.batch_sizes, sorted=out.sorted_indices, unsorted=out.unsorted_indices)
    return {k: v.detach().cpu().numpy() for k, v in res.items()}


# (layers, bidirectional, batch_first, packed with unsorted lengths, hx given, bias)
CONFIGS = [
    (1, False, False, False, False, True),
    (2, True, False, False, True, True),
    (2, False, True, False, True, False),
    (2, True, True, True, True, True),
    (1, True, False, True, False, True),
]


def config_id(c):
    L, bi, bf, packed, hx, bias = c
    return f"L{L}" + "bi" * bi + "-bf" * bf + "-packed" * packed + "-hx" * hx + "-nobias" * (not bias)


def cases():
    for backend in TESTED_BACKENDS:
        for c in (CONFIGS if not backend.startswith("cuda") else CONFIGS[1::2]):   # fewer in the simulator
            yield pytest.param(backend, c, id=f"{backend}-{config_id(c)}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend,config", list(cases()))
def test_matches_torch_nn(backend, config, cell):
    L, bi, bf, packed, with_hx, bias = config
    T, B, I, H, D = 5, 4, 3, 6, 2 if bi else 1
    ours, theirs = pair(cell, backend, I, H, L, bias, bf, 0.0, bi)
    g = torch.Generator().manual_seed(7)
    x = torch.randn((B, T, I) if bf else (T, B, I), generator=g, dtype=F64)
    hx = None
    if with_hx:
        hx = tuple(0.5 * torch.randn(L * D, B, H, generator=g, dtype=F64) for _ in range(2 if cell == "lstm" else 1))
    lengths = torch.tensor([3, 5, 1, 4]) if packed else None
    got, want = run(ours, cell, x, hx, lengths, bf), run(theirs, cell, x, hx, lengths, bf)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].shape == value.shape, key
        np.testing.assert_allclose(got[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_input(cell):
    ours, theirs = pair(cell, "cpu", 3, 4, 2, bidirectional=True)
    x = torch.randn(6, 3, dtype=F64)
    (y, s), (ty, ts) = ours(x), theirs(x)
    assert y.shape == ty.shape == (6, 8)
    torch.testing.assert_close(y, ty, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s, ts, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_same_seed_same_weights_and_state_dict_both_ways(cls):
    """Switching the import keeps a script's weights: torch.nn's initialisation, drawn in its
    order; state dicts load both ways, strict."""
    torch.manual_seed(3)
    ours = getattr(gt, cls)(4, 5, 2, bidirectional=True)
    torch.manual_seed(3)
    theirs = getattr(torch.nn, cls)(4, 5, 2, bidirectional=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), k
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    with torch.no_grad():
        for p in theirs.parameters():
            p.mul_(-1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    assert len(ours.all_weights) == len(theirs.all_weights) == 4


class Tagger(torch.nn.Module):
    """A model as a user writes it: a recurrent layer and a linear head at each step."""

    def __init__(self, rnn_cls, cell, **kw):
        super().__init__()
        if cell.startswith("rnn_"):
            kw["nonlinearity"] = cell[4:]
        self.rnn = rnn_cls(3, 6, 2, batch_first=True, bidirectional=True, dtype=F64, **kw)
        self.head = torch.nn.Linear(12, 2, dtype=F64)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["reference", "cpu"] + [b for b in CUDA_BACKENDS if b.endswith("auto")])
def test_training_with_adam_and_clipping_gives_torch_nn_weights(backend, cell):
    kw = {"backend": backend[:4] if backend.startswith("cuda") else backend}
    device = device_of(backend)
    torch.manual_seed(0)
    ours = Tagger(getattr(gt, CLASS[cell]), cell, **kw)
    theirs = Tagger(getattr(torch.nn, CLASS[cell]), cell)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.to(device)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 5, 3, generator=g, dtype=F64), torch.randn(4, 5, 2, generator=g, dtype=F64))
            for _ in range(4)]
    for model in (ours, theirs):
        at = next(model.parameters()).device
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for x, y in data:
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x.to(at)), y.to(at)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck(backend, cell):
    """torch's own finite-difference check of every gradient, through a packed, unsorted,
    bidirectional, two-layer stack with dropout (the mask held by reseeding each call). The cuda
    backend is held to torch.nn by the tests above (gradcheck's thousand forwards would take the
    simulator many minutes)."""
    ours, _ = pair(cell, backend, 2, 3, 2, bidirectional=True, dropout=0.3)
    names = [n for n, _ in ours.named_parameters()]
    lengths = torch.tensor([2, 4, 3])

    def f(x, h0, *params):
        torch.manual_seed(5)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        hx = (h0, torch.tanh(h0)) if cell == "lstm" else h0
        out, state = torch.func.functional_call(ours, dict(zip(names, params)), (packed, hx))
        return out.data, (state[1] if cell == "lstm" else state)

    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 2, generator=g, dtype=F64, requires_grad=True)
    h0 = torch.randn(4, 3, 3, generator=g, dtype=F64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in ours.parameters()]
    assert torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-8, rtol=1e-6)


# ---------------------------------------------------------------- dropout
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_in_training_is_torch_nn_dropout_on_the_cpu(cell):
    """The masks come from torch's generator as torch.nn's CPU kernel draws them: in training mode
    the outputs and gradients are torch.nn's own, under the same seed."""
    ours, theirs = pair(cell, "cpu", 3, 5, 3, dropout=0.4, bidirectional=True)
    x = torch.randn(6, 4, 3, dtype=F64)
    torch.manual_seed(9)
    got = run(ours, cell, x, None, None, False)
    torch.manual_seed(9)
    want = run(theirs, cell, x, None, None, False)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-10, atol=1e-12, err_msg=key)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-10, atol=1e-12)
    ours.train()
    torch.manual_seed(9)
    again = ours(x)[0]
    np.testing.assert_array_equal(again.detach().numpy(), got["y"])           # reproducible
    assert not torch.allclose(again, ours.eval()(x)[0])                         # and it drops


@pytest.mark.parametrize("backend", CUDA_BACKENDS or [pytest.param("cuda", marks=pytest.mark.skip(
    reason="no cuda backend here; tests/test_cuda_simulator.py runs this in the simulator"))])
def test_dropout_on_the_cuda_backend(backend):
    """Reproducible under a seed and dropping in training mode; in the simulator, where the masks
    come from torch's CPU generator, equal to the cpu backend's run (on a GPU they come from
    torch's CUDA generator, a stream of its own)."""
    ours, _ = pair("gru", backend, 3, 4, 2, dropout=0.5)
    x = torch.randn(5, 2, 3, dtype=F64)
    torch.manual_seed(1)
    got = run(ours, "gru", x, None, None, False)
    torch.manual_seed(1)
    again = run(ours, "gru", x, None, None, False)
    for key, value in got.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    ours.eval()
    assert not np.allclose(run(ours, "gru", x, None, None, False)["y"], got["y"])
    if SIMULATED:
        cpu, _ = pair("gru", "cpu", 3, 4, 2, dropout=0.5)
        torch.manual_seed(1)
        want = run(cpu, "gru", x, None, None, False)
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


# ---------------------------------------------------------------- torch's rules
def test_double_to_and_float32(rng):
    torch.manual_seed(0)
    ours = gt.LSTM(3, 4, backend="cpu")
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=2e-5, atol=2e-6)       # float32
    ours.double().to("cpu")
    theirs.double()
    assert all(p.dtype == F64 for p in ours.parameters())
    torch.testing.assert_close(ours(x.double())[0], theirs(x.double())[0], rtol=1e-12, atol=1e-14)


def test_inplace_changes_between_forward_and_backward_are_refused():
    """gpurnn's backward reads the input and the weights; torch's version check covers them."""
    m = gt.GRU(3, 4, backend="cpu")
    x = torch.randn(5, 2, 3)
    y, _ = m(x)
    with torch.no_grad():
        x.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    y, _ = m(x)
    with torch.no_grad():
        m.weight_hh_l0.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_backward_twice_needs_retain_graph():
    m = gt.LSTM(3, 4, backend="cpu", dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64)
    y, _ = m(x)
    y.sum().backward(retain_graph=True)
    once = m.weight_ih_l0.grad.clone()
    y.sum().backward()
    torch.testing.assert_close(m.weight_ih_l0.grad, 2 * once, rtol=1e-14, atol=0)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()


def test_saved_tensor_hooks_that_copy_keep_backward_working():
    """A hook that replaces what autograd saves (save_on_cpu, compression) saves a copy of the key;
    the node itself holds the arrays, until backward is done."""
    m = gt.GRU(3, 4, 2, backend="cpu", dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    before = set(gt._kept)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        y = m(x)[0]
    y.sum().backward(retain_graph=True)
    once = x.grad.clone()
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * once, rtol=1e-14, atol=0)
    assert set(gt._kept) == before


def test_autocast_computes_in_the_autocast_format():
    """Under CPU autocast the LSTM computes in bfloat16 from float32 master weights, as torch.nn's
    does (tests/test_torch_half.py has the values); a float64 module stays float64."""
    m = gt.LSTM(3, 4, backend="cpu")
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = m(x)
        y64, _ = m.double()(x.double())
    assert y.dtype == h.dtype == c.dtype == torch.bfloat16 and y64.dtype == torch.float64


def test_compiled_inference_is_one_graph():
    """Under no_grad nothing is kept for backward and the operator runs without a Function."""
    m = gt.GRU(3, 4, 2, backend="cpu", dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64)
    with torch.no_grad(), torch._dynamo.config.patch(allow_rnn=True):
        got = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(got, m(x), rtol=1e-14, atol=0)


def test_functional_call_with_parameters_of_another_dtype():
    m = gt.GRU(3, 4, backend="cpu", dtype=F64)
    params = {n: p.float() for n, p in m.named_parameters()}
    y, _ = torch.func.functional_call(m, params, (torch.randn(5, 2, 3),))
    assert y.dtype == torch.float32


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_of_packed_input_is_torch_nn_dropout(cell):
    """torch.nn draws the masks over the packed rows (N, D*H), not the padded (T, B, D*H)."""
    ours, theirs = pair(cell, "cpu", 3, 5, 3, dropout=0.4, bidirectional=True)
    x = torch.randn(6, 4, 3, dtype=F64)
    torch.manual_seed(9)
    got = run(ours, cell, x, None, [6, 2, 5, 3], False)
    torch.manual_seed(9)
    want = run(theirs, cell, x, None, [6, 2, 5, 3], False)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


def test_the_cpu_backend_follows_torchs_threads():
    """After a call through gpurnn.torch, the cpu backend's float32 parts are as many as
    torch.get_num_threads(), and its float64 dense products are torch.mm's, on the arrays' memory,
    giving np.dot's results (transposed operands and float64 included)."""
    from gpurnn.kernels import cpu
    gt.GRU(3, 4, backend="cpu")(torch.randn(2, 1, 3))
    assert cpu._product is gt._torch_product
    before = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            assert cpu.threads() == n
    finally:
        torch.set_num_threads(before)
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        a, b = rng.standard_normal((6, 5)).astype(dt), rng.standard_normal((7, 5)).astype(dt)
        out = np.empty((6, 7), dt)
        assert gt._torch_product(a, b.T, out=out) is out
        np.testing.assert_allclose(out, np.dot(a, b.T), rtol=1e-6 if dt is np.float32 else 1e-14)


def test_no_copies_between_tensors_and_arrays():
    be = get_backend("cpu")
    t = torch.randn(4, 3)
    a = gt._array(t, be)
    assert np.shares_memory(a, t.numpy())
    assert gt._tensor(a, be).data_ptr() == t.data_ptr()


# ---------------------------------------------------------------- PyTorch's transforms
def _model(cell, backend, **kw):
    """A small model around a gpurnn.torch stack, float64: the stack, then a linear head."""
    ours, _ = pair(cell, backend, 3, 4, 2, **kw)
    head = torch.nn.Linear(ours.proj_size or 4, 2).double()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = ours, head

        def forward(self, x):
            return self.head(self.rnn(x)[0])
    return Model()


def _loss_and_grads(model, x):
    model.zero_grad()
    y = model(x)
    y.square().sum().backward()
    return y.detach(), {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_torch_compile_matches_eager(backend, cell):
    """Forward and every gradient as eager's; aot_eager runs AOTAutograd's forward and backward
    graphs without a C compiler. Dynamo breaks the graph at any torch.nn.RNNBase, so at these
    modules too, unless allow_rnn is set: then the whole model is one graph (fullgraph=True)."""
    model = _model(cell, backend)
    x = torch.randn(5, 2, 3, dtype=F64)
    want = _loss_and_grads(model, x)
    got = _loss_and_grads(torch.compile(model, backend="aot_eager"), x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        got = _loss_and_grads(torch.compile(model, backend="aot_eager", fullgraph=True), x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.skipif(not any(os.path.exists(os.path.join(d, "cc")) for d in os.get_exec_path()),
                    reason="torch.compile's default backend (inductor) needs a C compiler")
def test_torch_compile_with_inductor_matches_eager():
    model = _model("lstm", "cpu", proj_size=2)
    x = torch.randn(5, 2, 3, dtype=F64)
    want = _loss_and_grads(model, x)
    with torch._dynamo.config.patch(allow_rnn=True):
        got = _loss_and_grads(torch.compile(model, fullgraph=True), x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_export_matches_eager(cell):
    model = _model(cell, "cpu").eval()
    x = torch.randn(5, 2, 3, dtype=F64)
    program = torch.export.export(model, (x,))
    assert "gpurnn.stack_forward" in str(program.graph_module.code)
    torch.testing.assert_close(program.module()(x), model(x), rtol=1e-12, atol=1e-14)
    other = torch.randn(7, 2, 3, dtype=F64)           # the shapes are the example's, the values any
    torch.testing.assert_close(program.module()(other[:5]), model(other[:5]), rtol=1e-12, atol=1e-14)


def test_torch_func_grad_and_per_sample_gradients_with_vmap():
    """torch.func.grad as autograd's backward; vmap(grad) (per-sample gradients) as a loop."""
    model = _model("gru", "cpu")
    params = {n: p.detach() for n, p in model.named_parameters()}
    xs = torch.randn(3, 5, 2, 3, dtype=F64)

    def loss(p, x):
        return torch.func.functional_call(model, p, (x,)).square().sum()
    one = torch.func.grad(loss)(params, xs[0])
    torch.testing.assert_close(one, _loss_and_grads(model, xs[0])[1], rtol=1e-12, atol=1e-14)
    each = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs)
    for i in range(3):
        want = torch.func.grad(loss)(params, xs[i])
        torch.testing.assert_close({n: g[i] for n, g in each.items()}, want, rtol=1e-12, atol=1e-14)


def test_meta_device_gives_shapes_without_computing():
    m = gt.LSTM(3, 6, 2, proj_size=4, bidirectional=True, device="meta")
    y, (h, c) = m(torch.empty(5, 2, 3, device="meta"))
    assert (y.shape, h.shape, c.shape) == ((5, 2, 8), (4, 2, 4), (4, 2, 6)) and y.device.type == "meta"


@pytest.mark.parametrize("cell", CELLS)
def test_double_backward_raises_instead_of_zeros(cell):
    """A gradient penalty needs the gradient of a gradient, which the kernels do not compute:
    refused when it is asked for, never a silent zero (torch.nn's numbers show it matters)."""
    ours, _ = pair(cell, "cpu", 3, 4, 2)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    y, _ = ours(x)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="gradient of a gradient"):
        gx.square().sum().backward()
    with pytest.raises(RuntimeError, match="gradient of a gradient"):
        torch.autograd.gradgradcheck(lambda x: ours(x)[0], (x,))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.jit itself is deprecated
def test_torchscript_is_refused_with_what_works_instead_and_a_trace_runs():
    with pytest.raises(RuntimeError, match="use torch.compile or torch.export"):
        torch.jit.script(gt.GRU(3, 4))
    m = gt.LSTM(3, 4, 2, dtype=F64).eval()
    x = torch.randn(5, 2, 3, dtype=F64)
    traced = torch.jit.trace(m, (x,))           # torch's check_trace reruns it: the same graph
    other = torch.randn(5, 2, 3, dtype=F64)
    torch.testing.assert_close(traced(other), m(other), rtol=1e-12, atol=1e-14)
    traced(other)[0].sum().backward()
    assert m.weight_hh_l1.grad is not None


def test_what_backward_reads_is_freed_with_the_graph():
    m = gt.LSTM(3, 4, 2, backend="cpu")
    x = torch.randn(5, 2, 3)
    before = set(gt._kept)
    y, _ = m(x)
    assert len(set(gt._kept) - before) == 1
    y.sum().backward()
    assert set(gt._kept) == before                # backward freed the graph
    out = m(x)
    del out
    assert set(gt._kept) == before                # so did dropping it unused
    with torch.no_grad():
        m(x)
    m(x.requires_grad_(False))[0].detach()
    assert set(gt._kept) == before


@pytest.mark.parametrize("make,call,error,message", [
    # torch.nn's exception types for torch.nn's checks (tests/test_torch_modules.py compares them all)
    (lambda: gt.LSTM(3, 4), lambda m: m(torch.randn(5, 2, 3, 1)), ValueError, r"Expected input to be 2D or 3D"),
    (lambda: gt.LSTM(3, 4), lambda m: m(torch.randn(5, 2, 4)), RuntimeError,
     r"input.size\(-1\) must be equal to input_size"),
    (lambda: gt.LSTM(3, 4), lambda m: m(torch.randn(5, 2, 3, dtype=F64)), ValueError,
     r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    (lambda: gt.GRU(3, 4, 2), lambda m: m(torch.randn(5, 2, 3), torch.zeros(1, 2, 4)), RuntimeError,
     r"Expected hidden size \(2, 2, 4\), got \[1, 2, 4\]"),
    (lambda: gt.LSTM(3, 4), lambda m: m(torch.randn(5, 2, 3), torch.zeros(1, 2, 4)), IndexError,
     r"hx must be a tuple \(h_0, c_0\) of two tensors, got Tensor"),
    (lambda: gt.LSTM(3, 4), lambda m: m(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),) * 3), RuntimeError,
     r"hx must be a tuple \(h_0, c_0\) of two tensors, got tuple of 3"),
    (lambda: gt.LSTM(3, 4), lambda m: m(torch.randn(5, 2, 3), 7), TypeError, r"hx must be a tuple \(h_0, c_0\)"),
    (lambda: gt.GRU(3, 4), lambda m: m(np.zeros((5, 2, 3))), TypeError, r"input must be a Tensor"),
    (lambda: gt.GRU(3, 4), lambda m: m(torch.randn(0, 2, 3)), RuntimeError, r"sequence length to be larger than 0"),
    (lambda: gt.GRU(3, 4), lambda m: m(torch.randn(5, 2, 3), torch.zeros(1, 2, 4, dtype=F64)), RuntimeError,
     r"hx is torch.float64 on cpu, the input torch.float32 on cpu"),
    # what gpurnn adds
    (lambda: gt.GRU(3, 4).to(torch.complex64), lambda m: m(torch.randn(5, 2, 3, dtype=torch.complex64)),
     NotImplementedError, r"the parameters are torch.complex64, but gpurnn computes in float32, float64, bfloat16 or "
                          r"float16"),
    (lambda: gt.LSTM(3, 4, backend="tpu"), None, ValueError, r"unknown backend 'tpu'"),
    (lambda: gt.LSTM(3, 4, backend="cpu", algo="step"), None, ValueError, r"algorithm of the cuda backend"),
    (lambda: gt.RNN(3, 4, 2, dropout=2), None, ValueError, r"dropout should be a number in range \[0, 1\]"),
])
def test_errors(make, call, error, message):
    with pytest.raises(error, match=message):
        m = make()
        call(m)


@pytest.mark.skipif(gpurnn.cuda_status()[0], reason="a cuda backend is usable here")
def test_gpu_backend_without_a_gpu_says_so():
    m = gt.LSTM(3, 4, backend="cuda")
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not usable here"):
        m(torch.randn(5, 2, 3))


def test_import_gpurnn_does_not_import_torch():
    code = "import sys, gpurnn; assert 'torch' not in sys.modules, 'torch was imported'"
    run_child([sys.executable, "-c", code], timeout=60)


# ---------------------------------------------------------------- DistributedDataParallel
DDP_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    import gpurnn.torch as gt

    STEPS, ROWS = 4, 8

    def build():
        torch.manual_seed(0)
        return torch.nn.ModuleDict(dict(rnn=gt.LSTM(3, 5, 2, bidirectional=True, dtype=torch.float64,
                                                    backend="cpu"),
                                        head=torch.nn.Linear(10, 2, dtype=torch.float64)))

    def data():
        g = torch.Generator().manual_seed(1)
        return [(torch.randn(6, ROWS, 3, generator=g, dtype=torch.float64),
                 torch.randn(ROWS, 2, generator=g, dtype=torch.float64)) for _ in range(STEPS)]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = build()

        def forward(self, x):
            return self.m["head"](self.m["rnn"](x)[0][-1])

    def train(model, rows):
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for x, y in data():
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x[:, rows]), y[rows]).backward()
            opt.step()

    def rank_main(rank, port, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2)
        net = Net()
        train(DDP(net), slice(rank * ROWS // 2, (rank + 1) * ROWS // 2))
        torch.save(net.state_dict(), f"{out}.rank{rank}")
        dist.destroy_process_group()

    if __name__ == "__main__":
        mode, out = sys.argv[1], sys.argv[2]
        if mode == "single":
            net = Net()
            train(net, slice(0, ROWS))
            torch.save(net.state_dict(), out)
        else:
            torch.multiprocessing.spawn(rank_main, args=(int(sys.argv[3]), out), nprocs=2)
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch has no gloo backend")
def test_distributed_data_parallel_trains_to_the_weights_of_one_process(tmp_path):
    """Two ranks on the CPU (gloo), each on half of every batch, end with the weights that one
    process gets on the whole batches: DDP averages gradients of per-rank mean losses."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run_child([sys.executable, script, "single", tmp_path / "single.pt"], timeout=300, env=env)
    run_child([sys.executable, script, "ddp", tmp_path / "ddp.pt", free_port()], timeout=300, env=env)
    single = torch.load(tmp_path / "single.pt")
    for rank in (0, 1):
        ranked = torch.load(tmp_path / f"ddp.pt.rank{rank}")
        assert list(ranked) == list(single)
        for k in single:
            torch.testing.assert_close(ranked[k], single[k], rtol=1e-10, atol=1e-12, msg=k)
    torch.manual_seed(0)                 # the weights did move: against the initial ones
    initial = gt.LSTM(3, 5, 2, bidirectional=True, dtype=F64, backend="cpu").state_dict()
    assert not torch.allclose(single["m.rnn.weight_hh_l0"], initial["weight_hh_l0"])

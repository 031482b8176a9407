"""gpurnn.torch against PyTorch's own tests of torch.nn.RNN, GRU and LSTM.

The samples are torch's: the ModuleInfo entries of nn.RNN, nn.GRU and nn.LSTM in the installed
torch's torch/testing/_internal/common_modules.py (their module_inputs_func, with_packed_sequence
on for RNN and GRU, and their module_error_inputs_func). Each of torch's TestModule tests
(test/test_modules.py) that runs on a CPU module runs here on gpurnn.torch's module, on the
reference and cpu backends, with torch's pass criteria:

- test_forward: torch's reference_fn (the unbatched sample against a batch of one) and
  assertEqual's default tolerances, then .float()/.double() and the parameters' dtype;
- test_grad / test_gradgrad: torch.testing._internal.common_utils.gradcheck / gradgradcheck
  (fast mode, check_batched_grad=True: torch's defaults), float64. test_grad: the total derivative
  of every sample, and the partial derivatives (one gradcheck per parameter) of PARTIALS' samples
  (torch's loop over every parameter of every sample takes minutes here). test_gradgrad, on
  GRADGRAD's samples: gradgradcheck passes or raises (the contract's "refusal"): an exception that
  is not a GradcheckError, or gradcheck's batched-gradient GradcheckError (raised after the values
  compared equal). Any other GradcheckError (a Jacobian mismatch: double backward silently wrong,
  e.g. zeros) fails; test_double_backward_raises_or_equals_torch_nn checks the same through
  autograd.grad(create_graph=True) against torch.nn's second derivatives;
- test_errors: every ErrorModuleInput; the exception must be an instance of torch's error_type
  (as assertRaisesRegex, a subclass passes). The message may be gpurnn's: a message that misses
  torch's error_regex is reported as a MessageDiffers warning, not a failure;
- test_factory_kwargs, test_repr, test_pickle, test_non_contiguous_tensors (float64),
  test_memory_format (float32; contiguous formats only: the inputs have 2 or 3 dimensions, no
  channels_last), test_if_train_and_eval_modes_differ, test_device_ctx_init (meta device),
  test_to and test_to_empty (with and without torch.__future__'s
  swap_module_params_on_conversion; ids and _cdata must change as torch.nn's do), each as torch's
  loop over the samples. torch's test_check_inplace is not generated for RNN modules (they take
  no inplace argument).

Beyond torch's criteria, every sample also runs against torch.nn itself: torch's state_dict loads
into gpurnn.torch's module (strict), and the outputs (nested, PackedSequence included), the
requires_grad of each, and the gradients of the inputs and of every parameter equal torch.nn's
(float64: rtol 1e-10; float32: rtol 1e-5).

Then the RNN tests of torch's test/test_nn.py that apply to a CPU module (each named after its
torch test), and the contract of the issue "gpurnn.torch passes PyTorch's own RNN tests": the
modules are torch.nn.RNNBase subclasses (isinstance(m, nn.LSTM)), with mode, _flat_weights,
_flat_weights_names, _all_weights and flatten_parameters as torch.nn's; proj_size; an empty batch
(B=0) as torch handles it; for each mistake in the constructor or the forward arguments, an
exception of the type torch raises (torch itself is the oracle: it runs on the same arguments in
the test); double backward raises or is right, never silently zero.

Explicit skips, nothing else: the tests that need CUDA, several GPUs or cuDNN's weight buffer
(test_not_applicable_to_a_cpu_module lists them).

The cuda backend: its cases (ids with "cuda", a small subset: the simulator takes about a second a
forward and backward) are generated where the cuda backend is usable (a GPU, or the simulator);
tests/test_cuda_simulator.py runs them in Numba's CUDA simulator, with the other files' cuda cases.
"""

import functools
import io
import os
import re
import warnings
from copy import deepcopy
from itertools import product
from pathlib import Path

import pytest

import gpurnn
from conftest import SIMULATED

torch = pytest.importorskip("torch", reason="torch is the oracle and gpurnn.torch's host; pip install '.[test]'")
gt = pytest.importorskip("gpurnn.torch")


def _import_torch_testing():
    """torch's test helpers, without their import-time side effects on the rest of the session:
    common_utils freezes torch.backends' flags (disable_global_flags: a later plain assignment such
    as cudnn.allow_tf32 = ... raises) and sets TORCHINDUCTOR_CACHE_DIR; both are put back."""
    frozen, environ = torch.backends.flags_frozen(), dict(os.environ)
    try:
        cm = pytest.importorskip("torch.testing._internal.common_modules",
                                 reason="torch's test helpers need expecttest; pip install '.[test]'")
    finally:
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = not frozen
        for key in set(os.environ) - set(environ):
            del os.environ[key]
    return cm


cm = _import_torch_testing()
from torch._subclasses.meta_utils import assert_metadata_eq  # noqa: E402
from torch.autograd.gradcheck import GradcheckError  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence  # noqa: E402
from torch.testing._internal.common_utils import freeze_rng_state, gradcheck, gradgradcheck  # noqa: E402
from torch.utils._pytree import tree_flatten, tree_unflatten  # noqa: E402

F32, F64 = torch.float32, torch.float64
DTYPES = {"f32": F32, "f64": F64}
TOL = {F32: dict(rtol=1e-5, atol=1e-5), F64: dict(rtol=1e-10, atol=1e-12)}
CLASSES = ("RNN", "GRU", "LSTM")
INFO = {cls: next(mi for mi in cm.module_db if mi.module_cls is getattr(torch.nn, cls)) for cls in CLASSES}

CUDA_USABLE = gpurnn.cuda_status()[0]
ON_GPU = CUDA_USABLE and not SIMULATED
HOST_BACKENDS = ["reference", "cpu"]


class MessageDiffers(UserWarning):
    """gpurnn.torch raised torch's exception type with a message that misses torch's error_regex."""


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """torch's intra-op pool on these tiny shapes only spins: on a small machine it triples the
    module's time (one thread computes the same values). Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- helpers
def device_of(backend):
    """Where gpurnn.torch's tensors live: CUDA tensors for the cuda backend on a GPU, else the CPU
    (the simulator and the other backends compute on host memory)."""
    if backend == "cuda" and ON_GPU:
        if not torch.cuda.is_available():
            pytest.skip("CUDA-only: this torch has no CUDA, and the cuda backend takes CUDA tensors on a GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def samples(cls, dtype, requires_grad=True, training=True):
    """torch's ModuleInputs for cls (packed ones too for RNN and GRU), under a fixed seed. Made
    once: a test clones a sample's tensors before anything accumulates gradients in them."""
    return list(_samples(cls, dtype, requires_grad, training))


@functools.cache
def _samples(cls, dtype, requires_grad, training):
    info = INFO[cls]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return tuple(info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=requires_grad,
                                             training=training, with_packed_sequence=True))


def error_inputs(cls, dtype):
    info = INFO[cls]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False, training=True)


def is_packed(sample):
    return isinstance(sample.forward_input.args[0], PackedSequence)


def sample_id(cls, sample):
    kw = sample.constructor_input.kwargs
    parts = [cls] + ([kw["nonlinearity"]] if "nonlinearity" in kw else []) + [f"H{kw['hidden_size']}"]
    parts += [f"proj{kw.get('proj_size')}"] * bool(kw.get("proj_size")) + ["nobias"] * (not kw["bias"])
    parts += ["bf"] * kw["batch_first"] + ["bi"] * kw["bidirectional"]
    args = sample.forward_input.args
    if is_packed(sample):
        parts.append(f"packedB{int(args[0].batch_sizes[0])}")
    elif len(args) > 1:
        parts.append("hx")
    return "-".join(parts)


SAMPLES = {cls: samples(cls, F64) for cls in CLASSES}
IDS = {cls: [sample_id(cls, s) for s in SAMPLES[cls]] for cls in CLASSES}
assert all(len(set(ids)) == len(ids) for ids in IDS.values()), "sample ids must be unique"


def pick(cls, *needles):
    """The first sample of cls whose id has every one of needles ("!x": has not x)."""
    def fits(parts):
        return all((n[1:] not in parts) if n.startswith("!") else (n in parts) for n in needles)
    return next(i for i, name in enumerate(IDS[cls]) if fits(name.split("-")))


# The samples that the cuda backend runs (the simulator is slow), and those whose partial
# derivatives (one gradcheck per parameter, as torch's test_grad does) and second derivatives run.
CUDA_SAMPLES = {"RNN": [pick("RNN", "tanh", "!nobias", "bi", "hx"), pick("RNN", "relu", "packedB5")],
                "GRU": [pick("GRU", "!nobias", "bf", "bi", "hx"), pick("GRU", "packedB2")],
                "LSTM": [pick("LSTM", "!nobias", "bi", "hx", "proj2"), pick("LSTM", "nobias", "bf")]}
PARTIALS = {"RNN": [pick("RNN", "tanh", "!nobias", "bi", "hx"), pick("RNN", "relu", "nobias", "packedB5")],
            "GRU": [pick("GRU", "!nobias", "bi", "hx"), pick("GRU", "nobias", "bf", "packedB2")],
            "LSTM": [pick("LSTM", "!nobias", "bi", "hx", "proj2"), pick("LSTM", "nobias", "bf", "hx")]}
GRADGRAD = {cls: PARTIALS[cls][:1] for cls in CLASSES}


def sample_cases(default_only=False, dtypes=("f32", "f64"), subset=None):
    """pytest params (cls, index, backend, dtype): every sample (or those of subset) on the
    reference and cpu backends; CUDA_SAMPLES on the cuda backend, float64, where it is usable."""
    for cls in CLASSES:
        for i, name in enumerate(IDS[cls]):
            if default_only and is_packed(SAMPLES[cls][i]):
                continue
            if subset is not None and i not in subset[cls]:
                continue
            for backend, dt in product(HOST_BACKENDS, dtypes):
                yield pytest.param(cls, i, backend, DTYPES[dt], id=f"{name}-{backend}-{dt}")
            if CUDA_USABLE and i in CUDA_SAMPLES[cls] and "f64" in dtypes:
                yield pytest.param(cls, i, "cuda", F64, id=f"{name}-cuda-f64")


def loop_cases(dtypes=("f32", "f64"), cuda=False):
    """pytest params (cls, backend, dtype) for the tests that loop over the samples, as torch's do."""
    for cls, backend, dt in product(CLASSES, HOST_BACKENDS + (["cuda"] if cuda and CUDA_USABLE else []), dtypes):
        if backend == "cuda" and dt != "f64":
            continue
        yield pytest.param(cls, backend, DTYPES[dt], id=f"{cls}-{backend}-{dt}")


def ours_cls(cls):
    return getattr(gt, cls)


def make_ours(cls, args, kwargs, backend):
    return ours_cls(cls)(*args, **kwargs, backend=backend)


def make_pair(cls, sample, backend, dtype, training=True):
    """(gpurnn.torch's module, torch.nn's): the sample's constructor arguments, dtype, torch.nn's
    weights loaded into gpurnn.torch's (strict); gpurnn.torch's on its backend's device."""
    c = sample.constructor_input
    theirs = getattr(torch.nn, cls)(*c.args, **c.kwargs).to(dtype).train(training)
    ours = make_ours(cls, c.args, c.kwargs, backend).to(dtype).train(training)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.to(device_of(backend)), theirs


def clone(obj, device=None):
    """A fresh copy of a forward argument (tensors, PackedSequences, tuples): its own leaves, the
    same requires_grad, on device (None: where it is)."""
    if isinstance(obj, PackedSequence):
        data = clone(obj.data, device)
        return PackedSequence(data, obj.batch_sizes, obj.sorted_indices, obj.unsorted_indices)
    if isinstance(obj, torch.Tensor):
        t = obj.detach().clone()
        t = t if device is None else t.to(device)
        return t.requires_grad_(obj.requires_grad)
    if isinstance(obj, (tuple, list)):
        return type(obj)(clone(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: clone(v, device) for k, v in obj.items()}
    return obj


def grad_leaves(obj):
    """The tensors of a forward argument that gradients reach (PackedSequence: its data)."""
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor) and t.requires_grad]


def assert_same(got, want, tol, what):
    """got and want have one structure (tuples, PackedSequence, None) and equal tensors: dtype,
    shape, requires_grad, values (on the host)."""
    g_leaves, g_spec = tree_flatten(got)
    w_leaves, w_spec = tree_flatten(want)
    assert g_spec == w_spec, f"{what}: structure\n{g_spec}\ndiffers from torch.nn's\n{w_spec}"
    for i, (g, w) in enumerate(zip(g_leaves, w_leaves)):
        if not isinstance(w, torch.Tensor):
            assert g == w, f"{what}[{i}]: {g!r} != torch.nn's {w!r}"
            continue
        assert isinstance(g, torch.Tensor), f"{what}[{i}]: {type(g).__name__}, torch.nn's is a tensor"
        assert g.requires_grad == w.requires_grad, f"{what}[{i}]: requires_grad {g.requires_grad} != {w.requires_grad}"
        torch.testing.assert_close(g.detach().cpu(), w.detach().cpu(), **tol, msg=lambda m, i=i: f"{what}[{i}]: {m}")


def weighted_sum(out, seed=1):
    """Σ out·w over every floating tensor of out, w drawn from a fixed seed: one scalar loss that
    reaches every output (the same w for gpurnn.torch's and torch.nn's outputs)."""
    g = torch.Generator().manual_seed(seed)
    total = 0
    for leaf in tree_flatten(out)[0]:
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            w = torch.randn(leaf.shape, generator=g, dtype=leaf.dtype).to(leaf.device)
            if leaf.requires_grad:
                total = total + (leaf * w).sum()
    return total


def run_with_grads(m, args, seed=1):
    """Forward m(*args), backward of weighted_sum: (outputs, grads of the args' leaves, grads of
    the parameters by name)."""
    m.zero_grad(set_to_none=True)
    out = m(*args)
    loss = weighted_sum(out, seed)
    if isinstance(loss, torch.Tensor):
        loss.backward()
    return out, [t.grad for t in grad_leaves(args)], {n: p.grad for n, p in m.named_parameters()}


def raised(fn):
    """The exception fn() raises, or None."""
    try:
        fn()
    except Exception as exc:          # the oracle records whatever it is
        return exc
    return None


def assert_raises_like_torch(theirs, ours, what):
    """theirs() raises (torch's behaviour for this mistake); ours() raises an instance of that
    exception's type."""
    expected = raised(theirs)
    assert expected is not None, f"{what}: torch.nn accepts this; no mistake to compare"
    got = raised(ours)
    assert got is not None, (f"{what}: torch.nn raises {type(expected).__name__} ({expected}); gpurnn.torch raises "
                             "nothing")
    assert isinstance(got, type(expected)), (f"{what}: torch.nn raises {type(expected).__name__} ({expected}); "
                                             f"gpurnn.torch raises {type(got).__name__} ({got})")


def note_message(exc, regex, what):
    if not re.search(regex, str(exc)):
        warnings.warn(MessageDiffers(f"{what}: {type(exc).__name__}({str(exc)[:200]!r}) misses torch's "
                                     f"regex {regex!r}"), stacklevel=2)


# ---------------------------------------------------------------- the contract: what the modules are
def class_cases():
    for cls, nl in (("RNN", "tanh"), ("RNN", "relu"), ("GRU", None), ("LSTM", None)):
        for backend in HOST_BACKENDS + (["cuda"] if CUDA_USABLE else []):
            yield pytest.param(cls, nl, backend, id=f"{cls}{'-' + nl if nl else ''}-{backend}")


@pytest.mark.parametrize("cls,nonlinearity,backend", list(class_cases()))
def test_is_a_torch_nn_rnn_with_its_mode(cls, nonlinearity, backend):
    kw = {"nonlinearity": nonlinearity} if nonlinearity else {}
    ours, theirs = ours_cls(cls)(3, 4, **kw, backend=backend), getattr(torch.nn, cls)(3, 4, **kw)
    assert isinstance(ours, torch.nn.RNNBase), f"{type(ours).__mro__} has no torch.nn.RNNBase"
    assert isinstance(ours, getattr(torch.nn, cls)), f"{type(ours).__mro__} has no torch.nn.{cls}"
    assert ours.mode == theirs.mode
    for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "proj_size") + (("nonlinearity",) if cls == "RNN" else ()):
        assert getattr(ours, name) == getattr(theirs, name), name
        assert type(getattr(ours, name)) is type(getattr(theirs, name)), name


FLAT_CONFIGS = [  # (cls, args, kwargs)
    ("RNN", (3, 4), {}),
    ("RNN", (3, 4, 2), dict(nonlinearity="relu", bias=False, bidirectional=True)),
    ("GRU", (3, 4, 3), dict(bidirectional=True)),
    ("LSTM", (3, 4, 2), dict(bidirectional=True)),
    ("LSTM", (3, 4, 2), dict(proj_size=2, bias=False)),
    ("LSTM", (3, 5, 2), dict(proj_size=3, bidirectional=True)),
]


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cls,args,kwargs", FLAT_CONFIGS,
                         ids=[f"{c}-{'-'.join(map(str, a))}-{'-'.join(f'{k}{v}' for k, v in kw.items())}"
                              for c, a, kw in FLAT_CONFIGS])
def test_flat_weights_are_torch_nns(cls, args, kwargs, backend):
    """_flat_weights_names, _all_weights, _flat_weights (the parameters themselves, refreshed by
    .to()), all_weights and flatten_parameters(), as torch.nn's modules have them."""
    ours, theirs = ours_cls(cls)(*args, **kwargs, backend=backend), getattr(torch.nn, cls)(*args, **kwargs)
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert ours._all_weights == theirs._all_weights
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for module in (ours, theirs):
        module.double()
        assert module.flatten_parameters() is None
        assert len(module._flat_weights) == len(module._flat_weights_names)
        for name, w in zip(module._flat_weights_names, module._flat_weights):
            assert w is getattr(module, name), f"{name}: _flat_weights holds a stale tensor after .double()"
    assert [tuple(w.shape) for w in ours._flat_weights] == [tuple(w.shape) for w in theirs._flat_weights]
    assert [[tuple(w.shape) for w in layer] for layer in ours.all_weights] == \
        [[tuple(w.shape) for w in layer] for layer in theirs.all_weights]
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(4, 2, args[0], dtype=F64)
    assert_same(ours(x), theirs(x), TOL[F64], "after flatten_parameters()")


# ---------------------------------------------------------------- torch's ModuleInfo samples
@pytest.mark.parametrize("cls,index,backend,dtype", list(sample_cases()))
def test_matches_torch_nn(cls, index, backend, dtype):
    """Outputs, their requires_grad, and the gradients of the inputs and of every parameter equal
    torch.nn's on the same sample and weights."""
    sample = samples(cls, dtype)[index]
    ours, theirs = make_pair(cls, sample, backend, dtype)
    args = sample.forward_input.args
    got = run_with_grads(ours, clone(args, device_of(backend)))
    want = run_with_grads(theirs, clone(args))
    for name, g, w in zip(("outputs", "input grads", "parameter grads"), got, want):
        assert_same(g, w, TOL[dtype], name)


@pytest.mark.parametrize("cls,index,backend,dtype", list(sample_cases(default_only=True)))
def test_forward(cls, index, backend, dtype):
    """torch's TestModule.test_forward, train and eval: the output equals the sample's
    reference_fn (unbatched against a batch of one) with assertEqual's default tolerances; after
    .float() / .double() the module runs and its parameters have that dtype."""
    device = device_of(backend)
    caller = {F32: "float", F64: "double"}[dtype]
    for training in (True, False):
        sample = samples(cls, dtype, requires_grad=False, training=training)[index]
        c, f = sample.constructor_input, sample.forward_input
        args = clone(f.args, device)
        with freeze_rng_state():
            m = make_ours(cls, c.args, c.kwargs, backend).to(device).to(dtype).train(training)
            outputs = m(*args, **f.kwargs)
            ref_outputs = sample.reference_fn(m, *args, **f.kwargs)
            torch.testing.assert_close(outputs, ref_outputs)
            getattr(m, caller)()
            m(*args, **f.kwargs)
            for name, p in m.named_parameters():
                assert p.device == device and p.dtype == dtype, f"{name}: {p.device} {p.dtype}"


def gradients_helper(m, sample, check, partials):
    """torch's TestModule._test_gradients_helper: check() of the total derivative (inputs and
    every parameter), then, with partials, of each parameter alone. A PackedSequence output's
    non-tensor fields are left out of what fn returns (gradcheck takes tensors)."""
    input_args = sample.forward_input.args
    params = tuple(m.parameters())

    def fn(*flat):
        new_args = tree_unflatten(list(flat), spec)[:len(input_args)]
        with freeze_rng_state():
            return [o for o in tree_flatten(m(*new_args))[0] if isinstance(o, torch.Tensor)]

    flat, spec = tree_flatten(input_args + params)
    assert check(fn, flat)
    if not partials:
        return
    for p in params:
        p.requires_grad = False
    for p in params:
        p.requires_grad = True
        flat, spec = tree_flatten(input_args + params)
        assert check(fn, flat)
        p.requires_grad = False
    for p in params:
        p.requires_grad = True


def host_cases(**kw):
    """sample_cases without the cuda backend's: gradcheck's many forwards would take the simulator
    many minutes (the cuda backend is held to torch.nn by test_matches_torch_nn)."""
    return [p for p in sample_cases(**kw) if p.values[2] != "cuda"]


@pytest.mark.parametrize("cls,index,backend,dtype", host_cases(dtypes=("f64",)))
def test_grad(cls, index, backend, dtype):
    """torch's TestModule.test_grad: gradcheck with torch's test defaults (fast mode,
    check_batched_grad=True); the partial derivatives for PARTIALS' samples."""
    sample = samples(cls, dtype)[index]
    m = make_ours(cls, sample.constructor_input.args, sample.constructor_input.kwargs, backend).to(dtype)
    gradients_helper(m, sample, gradcheck, partials=index in PARTIALS[cls])


def gradgrad_passes_or_raises(fn_check):
    """The contract for double backward: gradgradcheck passes, or the module refuses (raises).
    A GradcheckError other than the batched-gradient one means gradgradcheck computed second
    derivatives and they were wrong: a failure. Returns "passed" or "refused: ..."."""
    try:
        fn_check()
    except GradcheckError as exc:
        if str(exc).startswith("While computing batched gradients"):
            return f"refused: {exc}"
        pytest.fail(f"double backward is silently wrong (gradgradcheck's values disagree): {exc}")
    except Exception as exc:         # a refusal of any kind is the contract's "raises"
        return f"refused: {type(exc).__name__}: {exc}"
    return "passed"


@pytest.mark.parametrize("cls,index,backend,dtype", host_cases(dtypes=("f64",), subset=GRADGRAD))
def test_gradgrad(cls, index, backend, dtype):
    """torch's TestModule.test_gradgrad (gradgradcheck, torch's test defaults), total and partial
    derivatives, on GRADGRAD's samples (the ones with the most parameters): passes or raises,
    never silently wrong."""
    sample = samples(cls, dtype)[index]
    m = make_ours(cls, sample.constructor_input.args, sample.constructor_input.kwargs, backend).to(dtype)
    gradgrad_passes_or_raises(lambda: gradients_helper(m, sample, gradgradcheck, partials=True))


@pytest.mark.parametrize("cls,backend", [pytest.param(c, b, id=f"{c}-{b}") for c in CLASSES for b in HOST_BACKENDS])
def test_double_backward_raises_or_equals_torch_nn(cls, backend):
    """Second derivatives through autograd.grad(create_graph=True): gpurnn.torch raises, or gives
    torch.nn's. A loss that mixes the first-order gradients with a term of its own (x²) must not
    silently lose the gradients' part (a once_differentiable backward whose outputs need no grad
    does exactly that)."""
    sample = samples(cls, F64)[PARTIALS[cls][0]]
    ours, theirs = make_pair(cls, sample, backend, F64)

    def second(m):
        args = clone(sample.forward_input.args)
        leaves = grad_leaves(args)
        params = list(m.parameters())
        loss = weighted_sum(m(*args))
        first = torch.autograd.grad(loss, leaves + params, create_graph=True)
        loss2 = sum((g * g).sum() for g in first) + sum((t * t).sum() for t in leaves)
        return torch.autograd.grad(loss2, leaves + params, allow_unused=True)

    want = second(theirs)
    try:
        got = second(ours)
    except Exception:                # refused: the contract's "raises"
        return
    assert_same(got, want, TOL[F64], "second derivatives")


@pytest.mark.parametrize("cls,backend,dtype", list(loop_cases(dtypes=("f64",))))
def test_non_contiguous_tensors(cls, backend, dtype):
    """torch's TestModule.test_non_contiguous_tensors: non-contiguous inputs and output gradients
    give the contiguous run's outputs and gradients."""
    device = device_of(backend)

    def make_nc(obj):
        def nc(t):
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                return t
            out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
            return out.requires_grad_(t.requires_grad)
        if isinstance(obj, PackedSequence):
            return PackedSequence(nc(obj.data), obj.batch_sizes, obj.sorted_indices, obj.unsorted_indices)
        if isinstance(obj, (tuple, list)):
            return type(obj)(make_nc(o) for o in obj)
        return nc(obj)

    for index, sample in enumerate(samples(cls, dtype, training=True)):
        c = sample.constructor_input
        m = make_ours(cls, c.args, c.kwargs, backend).to(device).to(dtype)
        args = clone(sample.forward_input.args, device)
        out = m(*args)
        g = torch.Generator().manual_seed(index)
        grads_out = [torch.randn(o.shape, generator=g, dtype=dtype).to(device)
                     for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor) and o.requires_grad]

        def run(in_args, g_out, m=m):
            for t in grad_leaves(in_args):
                t.grad = None
            m.zero_grad(set_to_none=True)
            with freeze_rng_state():
                o = m(*in_args)
            diff = [t for t in tree_flatten(o)[0] if isinstance(t, torch.Tensor) and t.requires_grad]
            torch.autograd.backward(diff, g_out)
            return o, [t.grad for t in grad_leaves(in_args)], [p.grad for p in m.parameters()]

        default = run(args, grads_out)
        for in_args, g_out in product((args, make_nc(args)), (grads_out, make_nc(grads_out))):
            got = run(in_args, g_out)
            assert_same(got[0], default[0], TOL[dtype], f"{IDS[cls][index]} outputs")
            assert_same(got[1], default[1], dict(atol=1e-4, rtol=0), f"{IDS[cls][index]} input grads")
            assert_same(got[2], default[2], TOL[dtype], f"{IDS[cls][index]} parameter grads")


@pytest.mark.parametrize("cls,backend,dtype", list(loop_cases()))
def test_factory_kwargs_repr_pickle_and_state_dict(cls, backend, dtype):
    """torch's test_factory_kwargs (device= and dtype= reach every parameter), test_repr,
    test_pickle (torch.save of the module, torch.load: the same outputs), and the state_dict both
    ways between gpurnn.torch and torch.nn, strict."""
    for index, sample in enumerate(samples(cls, dtype, requires_grad=False)):
        c = sample.constructor_input
        m = make_ours(cls, c.args, dict(c.kwargs, device="cpu", dtype=dtype), backend)
        for name, p in m.named_parameters():
            assert isinstance(p, torch.nn.Parameter) and p.device.type == "cpu" and p.dtype == dtype, name
        m.__repr__()
        str(m)
        args = sample.forward_input.args
        with freeze_rng_state():
            out = m(*args)
            buf = io.BytesIO()
            torch.save(m, buf)
            buf.seek(0)
            copy = torch.load(buf, weights_only=False)
            assert_same(copy(*args), out, dict(rtol=0, atol=0), f"{IDS[cls][index]} unpickled")
        theirs = getattr(torch.nn, cls)(*c.args, **c.kwargs).to(dtype)
        theirs.load_state_dict(m.state_dict(), strict=True)
        assert list(m.state_dict()) == list(theirs.state_dict())
        assert_same(m(*args), theirs(*args), TOL[dtype], f"{IDS[cls][index]} torch.nn with gpurnn's state_dict")


@pytest.mark.parametrize("cls,backend,dtype", list(loop_cases(dtypes=("f32",))))
def test_memory_format(cls, backend, dtype):
    """torch's TestModule.test_memory_format for inputs of 2 or 3 dimensions (no channels_last):
    the module in preserve_format and contiguous_format gives the same outputs and gradients, all
    contiguous."""
    for training in (True, False):
        for sample in samples(cls, dtype, training=training):
            if is_packed(sample):
                continue
            c, args = sample.constructor_input, sample.forward_input.args
            m = make_ours(cls, c.args, c.kwargs, backend).to(dtype).train(training)
            with freeze_rng_state():
                desired = m(*clone(args))
                for fmt in (torch.preserve_format, torch.contiguous_format):
                    m.to(memory_format=fmt)
                    in_args = clone(args)
                    outputs = m(*in_args)
                    assert_same(outputs, desired, TOL[dtype], f"memory format {fmt}")
                    assert all(o.is_contiguous() for o in tree_flatten(outputs)[0]), "a non-contiguous output"
                    if training:
                        diff_out = [o for o in tree_flatten(outputs)[0] if o.requires_grad]
                        grads = torch.autograd.grad(diff_out, grad_leaves(in_args) + list(m.parameters()),
                                                    [torch.ones_like(o) for o in diff_out])
                        assert all(g.is_contiguous() for g in grads), "a non-contiguous gradient"


@pytest.mark.parametrize("cls,backend,dtype", list(loop_cases()))
def test_if_train_and_eval_modes_differ(cls, backend, dtype):
    """torch's test: without the training attribute the forward raises an AttributeError that
    names 'training' (train_and_eval_differ=True in torch's ModuleInfo), or works."""
    assert INFO[cls].train_and_eval_differ
    for sample in samples(cls, dtype, requires_grad=False):
        c = sample.constructor_input
        m = make_ours(cls, c.args, c.kwargs, backend).to(dtype)
        delattr(m, "training")
        try:
            m(*sample.forward_input.args)
        except AttributeError as exc:
            assert "'training'" in str(exc), exc


@pytest.mark.parametrize("cls,backend", [pytest.param(c, b, id=f"{c}-{b}") for c in CLASSES for b in HOST_BACKENDS])
def test_device_ctx_init(cls, backend):
    """torch's test: built under torch.device('meta'), the parameters are meta tensors with the
    metadata of the CPU module's."""
    for sample in samples(cls, F32, requires_grad=False):
        c = sample.constructor_input
        m_cpu = make_ours(cls, c.args, c.kwargs, backend)
        with torch.device("meta"):
            m = make_ours(cls, c.args, c.kwargs, backend)
        for p_meta, p_cpu in zip(m.parameters(), m_cpu.parameters()):
            assert p_meta.is_meta

            def eq(a, b):
                assert a == b
            assert_metadata_eq(eq, p_meta, p_cpu)


def first_tensor(out):
    return next(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))


def cast(obj, dtype):
    """A copy of a forward argument with its floating tensors in dtype."""
    if isinstance(obj, PackedSequence):
        return PackedSequence(cast(obj.data, dtype), obj.batch_sizes, obj.sorted_indices, obj.unsorted_indices)
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(cast(o, dtype) for o in obj)
    return obj


def ids_and_cdatas(m):
    return [id(p) for p in m.parameters()], [p._cdata for p in m.parameters()]


@pytest.mark.parametrize("swap", [False, True], ids=["noswap", "swap"])
@pytest.mark.parametrize("set_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("cls,backend", [pytest.param(c, b, id=f"{c}-{b}") for c in CLASSES for b in HOST_BACKENDS])
def test_to(cls, backend, swap, set_grad):
    """torch's TestModule.test_to: the parameters set one by one (not by .to()), then .to() each
    CPU dtype, with and without swap_module_params_on_conversion: Parameters of that dtype, whose
    ids and _cdata change as torch.nn's do; the module then computes torch.nn's outputs (its
    _flat_weights follow)."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        for sample in samples(cls, F32, requires_grad=False)[::4]:
            c, args = sample.constructor_input, sample.forward_input.args
            theirs = getattr(torch.nn, cls)(*c.args, **c.kwargs)
            ours = make_ours(cls, c.args, c.kwargs, backend)
            for n, p in list(theirs.named_parameters()):      # (load_state_dict cannot swap torch.nn's weights)
                for m in (ours, theirs):
                    new_p = torch.nn.Parameter(p.detach().clone())
                    setattr(m, n, new_p)
                    if set_grad:
                        new_p.grad = torch.ones_like(new_p)
            if swap and not set_grad:
                for m in (ours, theirs):
                    first_tensor(m(*args)).sum().backward()
                    m.to(dtype=torch.float64)
                    m.to(dtype=torch.float32)
            for dtype in (F32, F64, F32):
                changes = []
                for m in (ours, theirs):
                    ids, cdatas = ids_and_cdatas(m)
                    grads = [(id(p.grad), p.grad._cdata) for p in m.parameters()] if set_grad else []
                    m.to(device="cpu", dtype=dtype)
                    assert all(isinstance(p, torch.nn.Parameter) and p.dtype == dtype for p in m.parameters())
                    new_ids, new_cdatas = ids_and_cdatas(m)
                    new_grads = [(id(p.grad), p.grad._cdata) for p in m.parameters()] if set_grad else []
                    changes.append([[a == b for a, b in zip(before, after)]
                                    for before, after in ((ids, new_ids), (cdatas, new_cdatas), (grads, new_grads))])
                assert changes[0] == changes[1], f"(ids kept, _cdata kept, grads kept) {changes[0]} != torch.nn's"
                x = cast(args, dtype)
                assert_same(ours(*x), theirs(*x), TOL[dtype], f"after .to({dtype})")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


@pytest.mark.parametrize("swap", [False, True], ids=["noswap", "swap"])
@pytest.mark.parametrize("cls,backend", [pytest.param(c, b, id=f"{c}-{b}") for c in CLASSES for b in HOST_BACKENDS])
def test_to_empty(cls, backend, swap):
    """torch's TestModule.test_to_empty: built on the meta device, to_empty(device='cpu') gives
    CPU Parameters, ids and _cdata changed as torch.nn's; loaded with torch.nn's weights, the
    module computes torch.nn's outputs."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        for sample in samples(cls, F32, requires_grad=False)[::4]:
            c, args = sample.constructor_input, sample.forward_input.args
            changes = []
            with torch.device("meta"):
                ours, theirs = make_ours(cls, c.args, c.kwargs, backend), getattr(torch.nn, cls)(*c.args, **c.kwargs)
            for m in (ours, theirs):
                ids, cdatas = ids_and_cdatas(m)
                m.to_empty(device="cpu")
                assert all(isinstance(p, torch.nn.Parameter) and p.device.type == "cpu" and p.dtype == F32
                           for p in m.parameters())
                new_ids, new_cdatas = ids_and_cdatas(m)
                changes.append(([a == b for a, b in zip(ids, new_ids)], [a == b for a, b in zip(cdatas, new_cdatas)]))
            assert changes[0] == changes[1], f"(ids kept, _cdata kept) {changes[0]} != torch.nn's"
            theirs.reset_parameters()
            with torch.no_grad():                             # (load_state_dict cannot swap torch.nn's weights)
                for n, p in ours.named_parameters():
                    p.copy_(getattr(theirs, n))
            assert_same(ours(*args), theirs(*args), TOL[F32], "after to_empty")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


def error_cases():
    for cls in CLASSES:
        errors = error_inputs(cls, F32)
        for i, e in enumerate(errors):
            slug = re.sub(r"\W+", "_", e.error_regex)[:40].strip("_")
            for backend, dt in product(HOST_BACKENDS, ("f32", "f64")):
                yield pytest.param(cls, i, backend, DTYPES[dt], id=f"{cls}-e{i}-{slug}-{backend}-{dt}")
            if CUDA_USABLE and not ON_GPU and e.error_on == cm.ModuleErrorEnum.FORWARD_ERROR:
                yield pytest.param(cls, i, "cuda", F64, id=f"{cls}-e{i}-{slug}-cuda-f64")


@pytest.mark.parametrize("cls,index,backend,dtype", list(error_cases()))
def test_errors(cls, index, backend, dtype):
    """torch's TestModule.test_errors: each ErrorModuleInput raises torch's error_type (torch.nn
    itself still does, with its regex); a message of gpurnn's own is a MessageDiffers warning."""
    e = error_inputs(cls, dtype)[index]
    c = e.module_error_input.constructor_input
    what = f"{cls} error input {index}"
    if e.error_on == cm.ModuleErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(e.error_type, match=e.error_regex):
            getattr(torch.nn, cls)(*c.args, **c.kwargs)
        with pytest.raises(e.error_type) as info:
            make_ours(cls, c.args, c.kwargs, backend)
    else:
        f = e.module_error_input.forward_input
        with pytest.raises(e.error_type, match=e.error_regex):
            getattr(torch.nn, cls)(*c.args, **c.kwargs)(*f.args, **f.kwargs)
        m = make_ours(cls, c.args, c.kwargs, backend)
        with pytest.raises(e.error_type) as info:
            m(*f.args, **f.kwargs)
    note_message(info.value, e.error_regex, what)


# ---------------------------------------------------------------- the constructor's and forward's mistakes
CONSTRUCTOR_MISTAKES = [  # (id, args, kwargs), for every class; RNN_ONLY and LSTM_ONLY below
    ("input_size0", (0, 4), {}), ("input_size-1", (-1, 4), {}), ("input_size_float", (3.0, 4), {}),
    ("input_size_str", ("3", 4), {}), ("hidden_size0", (3, 0), {}), ("hidden_size_float", (3, 4.0), {}),
    ("hidden_size_str", (3, "4"), {}), ("num_layers0", (3, 4, 0), {}), ("num_layers-1", (3, 4, -1), {}),
    ("num_layers_float", (3, 4, 1.5), {}), ("num_layers_str", (3, 4, "2"), {}),
    ("bias_str", (3, 4), dict(bias="False")), ("bias_int0", (3, 4), dict(bias=0)), ("bias_int1", (3, 4), dict(bias=1)),
    ("bias_None", (3, 4), dict(bias=None)), ("batch_first_str", (3, 4), dict(batch_first="False")),
    ("batch_first_int0", (3, 4), dict(batch_first=0)), ("batch_first_int1", (3, 4), dict(batch_first=1)),
    ("batch_first_None", (3, 4), dict(batch_first=None)), ("dropout-0.1", (3, 4, 2), dict(dropout=-0.1)),
    ("dropout1.5", (3, 4, 2), dict(dropout=1.5)), ("dropout_str", (3, 4, 2), dict(dropout="0.1")),
    ("dropout_bool", (3, 4, 2), dict(dropout=True)), ("unknown_kwarg", (3, 4), dict(foo=1)),
    ("proj_size2", (3, 4), dict(proj_size=2)), ("dtype_int64", (3, 4), dict(dtype=torch.int64)),
]
RNN_ONLY = [("nonlinearity_garbage", (3, 4), dict(nonlinearity="garbage")),
            ("nonlinearity_positional_garbage", (3, 4, 1, "sigmoid"), {})]
LSTM_ONLY = [("proj_size-1", (3, 4), dict(proj_size=-1)), ("proj_size_eq_hidden", (3, 4), dict(proj_size=4)),
             ("proj_size_gt_hidden", (3, 4), dict(proj_size=5))]


def constructor_mistakes():
    for cls in CLASSES:
        extra = RNN_ONLY if cls == "RNN" else LSTM_ONLY if cls == "LSTM" else []
        for name, args, kwargs in CONSTRUCTOR_MISTAKES + extra:
            if name == "proj_size2" and cls == "LSTM":
                continue            # a valid LSTM
            for backend in HOST_BACKENDS:
                yield pytest.param(cls, args, kwargs, backend, id=f"{cls}-{name}-{backend}")


@pytest.mark.parametrize("cls,args,kwargs,backend", list(constructor_mistakes()))
def test_constructor_mistakes_raise_what_torch_raises(cls, args, kwargs, backend):
    assert_raises_like_torch(lambda: getattr(torch.nn, cls)(*args, **kwargs),
                             lambda: ours_cls(cls)(*args, **kwargs, backend=backend),
                             f"{cls}(*{args}, **{kwargs})")


ACCEPTED = [  # (id, args, kwargs): what torch.nn accepts (not a mistake), gpurnn.torch must too
    ("dropout_int0", (3, 4, 2), dict(dropout=0)), ("dropout_int1", (3, 4, 2), dict(dropout=1)),
    ("dropout_one_layer", (3, 4, 1), dict(dropout=0.5)), ("positional_all", (3, 4, 2, True, True, 0.0, True), {}),
    ("device_cpu_str", (3, 4), dict(device="cpu")),
]


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("args,kwargs", [a[1:] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_constructor_accepts_what_torch_accepts(cls, args, kwargs, backend):
    if cls == "RNN" and len(args) > 3:
        args = args[:3] + ("tanh",) + args[3:]        # torch.nn.RNN takes nonlinearity fourth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dropout with one layer: both warn
        theirs = getattr(torch.nn, cls)(*args, **kwargs)
        ours = ours_cls(cls)(*args, **kwargs, backend=backend)
    for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional"):
        assert getattr(ours, name) == getattr(theirs, name), name
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 5, 3) if theirs.batch_first else torch.randn(5, 2, 3)
    assert_same(ours(x), theirs(x), TOL[F32], "outputs")


def state(cls, shape, c_shape=None, dtype=F32):
    """hx for cls: a tensor, or (h, c) for the LSTM (c of c_shape, else shape)."""
    h = torch.randn(shape, dtype=dtype)
    return (h, torch.randn(c_shape or shape, dtype=dtype)) if cls == "LSTM" else h


def forward_mistakes():
    """(cls, id, module kwargs, call(m)): torch.nn(3, 5, num_layers=2) unless the kwargs say
    otherwise; T=6, B=4, as test_nn.py's test_rnn_args_check."""
    T, B, I, H, L, bad, P = 6, 4, 3, 5, 2, 7, 2
    proj = dict(proj_size=P)
    for cls in CLASSES:
        def hx(shape, c_shape=None, cls=cls):
            return state(cls, shape, c_shape)
        yield cls, "input_4d", {}, lambda m: m(torch.randn(T, B, I, 1))
        yield cls, "input_1d", {}, lambda m: m(torch.randn(I))
        yield cls, "input_0d", {}, lambda m: m(torch.tensor(1.0))
        yield cls, "input_size_wrong", {}, lambda m: m(torch.randn(T, B, bad))
        yield cls, "input_size_wrong_unbatched", {}, lambda m: m(torch.randn(T, bad))
        yield cls, "input_float64", {}, lambda m: m(torch.randn(T, B, I, dtype=F64))
        yield cls, "input_int64", {}, lambda m: m(torch.ones(T, B, I, dtype=torch.int64))
        yield cls, "input_numpy", {}, lambda m: m(torch.randn(T, B, I).numpy())
        yield cls, "input_list", {}, lambda m: m([[[0.0] * I] * B] * T)
        yield cls, "input_on_meta", {}, lambda m: m(torch.randn(T, B, I, device="meta"))
        yield cls, "parameters_of_two_dtypes", {}, lambda m: _one_weight_float64(m)(torch.randn(T, B, I))
        yield cls, "seq_len0", {}, lambda m: m(torch.randn(0, B, I))
        yield cls, "seq_len0_unbatched", {}, lambda m: m(torch.randn(0, I))
        yield cls, "seq_len0_batch_first", dict(batch_first=True), lambda m: m(torch.randn(B, 0, I))
        yield cls, "seq_len0_bidirectional", dict(bidirectional=True), lambda m: m(torch.randn(0, B, I))
        # test_nn.py's test_rnn_args_check: each dimension of the input or of the state wrong
        yield cls, "args_check_input_batch", {}, lambda m, hx=hx: m(torch.randn(T, bad, I), hx((L, B, H)))
        yield cls, "args_check_hidden_batch", {}, lambda m, hx=hx: m(torch.randn(T, B, I), hx((L, bad, H)))
        yield cls, "args_check_input_size", {}, lambda m, hx=hx: m(torch.randn(T, B, bad), hx((L, B, H)))
        yield cls, "args_check_hidden_size", {}, lambda m, hx=hx: m(torch.randn(T, B, I), hx((L, B, bad)))
        yield cls, "args_check_hidden_layers", {}, lambda m, hx=hx: m(torch.randn(T, B, I), hx((bad, B, H)))
        yield cls, "hx_2d_for_batched", {}, lambda m, hx=hx: m(torch.randn(T, B, I), hx((L, H)))
        yield cls, "hx_3d_for_unbatched", {}, lambda m, hx=hx: m(torch.randn(T, I), hx((L, 1, H)))
        yield cls, "hx_4d", {}, lambda m, hx=hx: m(torch.randn(T, B, I), hx((L, B, H, 1)))
        yield cls, "hx_float64", {}, lambda m, cls=cls: m(torch.randn(T, B, I), state(cls, (L, B, H), dtype=F64))
        yield cls, "hx_batch_first_batch", dict(batch_first=True), \
            lambda m, hx=hx: m(torch.randn(B, T, I), hx((L, T, H)))
        yield cls, "hx_bidirectional_layers", dict(bidirectional=True), \
            lambda m, hx=hx: m(torch.randn(T, B, I), hx((L, B, H)))
        yield cls, "packed_input_size_wrong", {}, \
            lambda m: m(pack_padded_sequence(torch.randn(T, B, bad), torch.tensor([6, 5, 3, 1])))
        yield cls, "packed_hx_batch", {}, \
            lambda m, hx=hx: m(pack_padded_sequence(torch.randn(T, B, I), torch.tensor([6, 5, 3, 1])), hx((L, bad, H)))
        if cls == "LSTM":
            yield cls, "lstm_hx_tensor", {}, lambda m: m(torch.randn(T, B, I), torch.randn(L, B, H))
            yield cls, "lstm_hx_tensor_of_one", {}, lambda m: m(torch.randn(T, B, I), torch.randn(1, B, H))
            yield cls, "lstm_hx_one_state", {}, lambda m: m(torch.randn(T, B, I), (torch.randn(L, B, H),))
            yield cls, "lstm_hx_three_states", {}, lambda m: m(torch.randn(T, B, I), (torch.randn(L, B, H),) * 3)
            yield cls, "lstm_hx_str", {}, lambda m: m(torch.randn(T, B, I), "ab")
            yield cls, "lstm_hx_int", {}, lambda m: m(torch.randn(T, B, I), 5)
            yield cls, "lstm_c_wrong_size", {}, lambda m, hx=hx: m(torch.randn(T, B, I), hx((L, B, H), (L, B, bad)))
            yield cls, "lstm_c_wrong_batch", {}, lambda m, hx=hx: m(torch.randn(T, B, I), hx((L, B, H), (L, bad, H)))
            yield cls, "lstm_c_float64", {}, \
                lambda m: m(torch.randn(T, B, I), (torch.randn(L, B, H), torch.randn(L, B, H, dtype=F64)))
            # test_nn.py's test_projections_lstm_args_check (proj_size=2)
            yield cls, "proj_args_check_input_batch", proj, \
                lambda m, hx=hx: m(torch.randn(T, bad, I), hx((L, B, P), (L, B, H)))
            yield cls, "proj_args_check_hidden_batch", proj, \
                lambda m, hx=hx: m(torch.randn(T, B, I), hx((L, bad, P), (L, bad, H)))
            yield cls, "proj_args_check_input_size", proj, \
                lambda m, hx=hx: m(torch.randn(T, B, bad), hx((L, B, P), (L, B, H)))
            yield cls, "proj_args_check_hidden_size", proj, \
                lambda m, hx=hx: m(torch.randn(T, B, I), hx((L, B, bad), (L, B, bad)))
            yield cls, "proj_args_check_hidden_layers", proj, \
                lambda m, hx=hx: m(torch.randn(T, B, I), hx((bad, B, P), (bad, B, H)))
            yield cls, "proj_h_of_hidden_size", proj, \
                lambda m, hx=hx: m(torch.randn(T, B, I), hx((L, B, H), (L, B, H)))
            yield cls, "proj_c_of_proj_size", proj, \
                lambda m, hx=hx: m(torch.randn(T, B, I), hx((L, B, P), (L, B, P)))
        else:
            yield cls, "hx_tuple", {}, lambda m: m(torch.randn(T, B, I), (torch.randn(L, B, H),))


def _one_weight_float64(m):
    """m, with weight_hh_l0 made float64 in place and the rest left float32."""
    m.weight_hh_l0.data = m.weight_hh_l0.data.double()
    return m


FORWARD_MISTAKES = list(forward_mistakes())


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cls,kwargs,call", [pytest.param(c, kw, f, id=f"{c}-{name}")
                                             for c, name, kw, f in FORWARD_MISTAKES])
def test_forward_mistakes_raise_what_torch_raises(cls, kwargs, call, backend):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, cls)(3, 5, 2, **kwargs)
    ours = ours_cls(cls)(3, 5, 2, **kwargs, backend=backend)
    torch.manual_seed(1)
    expected = raised(lambda: call(theirs))
    torch.manual_seed(1)
    got = raised(lambda: call(ours))
    assert expected is not None, "torch.nn accepts this: not a mistake"
    assert got is not None, f"torch.nn raises {type(expected).__name__} ({expected}); gpurnn.torch raises nothing"
    assert isinstance(got, type(expected)), (f"torch.nn raises {type(expected).__name__} ({expected}); "
                                             f"gpurnn.torch raises {type(got).__name__} ({got})")


def under(mode, m, *args):
    with mode():
        return m(*args)


def noncontiguous_state(cls, L, B, H):
    """hx of shape (L, B, H) as a transposed (B, L, H) tensor (or two, for the LSTM)."""
    hs = [torch.randn(B, L, H).transpose(0, 1) for _ in range(2 if cls == "LSTM" else 1)]
    return tuple(hs) if cls == "LSTM" else hs[0]


def accepted_calls():
    """(cls, id, module kwargs, call(m)): forward calls torch.nn accepts."""
    T, B, I, H, L = 5, 3, 3, 5, 2
    for cls in CLASSES:
        yield cls, "hx_None", {}, lambda m: m(torch.randn(T, B, I), None)
        yield cls, "keywords", {}, lambda m, cls=cls: m(input=torch.randn(T, B, I), hx=state(cls, (L, B, H)))
        yield cls, "no_grad", {}, lambda m: under(torch.no_grad, m, torch.randn(T, B, I, requires_grad=True))
        yield cls, "inference_mode", {}, lambda m: under(torch.inference_mode, m, torch.randn(T, B, I))
        yield cls, "batch_first_hx", dict(batch_first=True), \
            lambda m, cls=cls: m(torch.randn(B, T, I), state(cls, (L, B, H)))
        yield cls, "unbatched_hx", {}, lambda m, cls=cls: m(torch.randn(T, I), state(cls, (L, H)))
        yield cls, "packed_unsorted", {}, \
            lambda m: m(pack_padded_sequence(torch.randn(T, B, I), torch.tensor([2, 5, 3]), enforce_sorted=False))
        yield cls, "packed_batch_first_hx", dict(batch_first=True), lambda m, cls=cls: m(
            pack_padded_sequence(torch.randn(B, T, I), torch.tensor([5, 4, 1]), batch_first=True),
            state(cls, (L, B, H)))
        yield cls, "input_requires_grad_hx_not", {}, \
            lambda m, cls=cls: m(torch.randn(T, B, I, requires_grad=True), state(cls, (L, B, H)))
        yield cls, "hx_noncontiguous", {}, lambda m, cls=cls: m(torch.randn(T, B, I), noncontiguous_state(cls, L, B, H))
        if cls == "LSTM":
            yield cls, "lstm_hx_list", {}, \
                lambda m: m(torch.randn(T, B, I), [torch.randn(L, B, H), torch.randn(L, B, H)])
            yield cls, "proj_hx", dict(proj_size=2), lambda m: m(torch.randn(T, B, I), (torch.randn(L, B, 2),
                                                                                        torch.randn(L, B, H)))


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cls,kwargs,call", [pytest.param(c, kw, f, id=f"{c}-{name}")
                                             for c, name, kw, f in accepted_calls()])
def test_forward_accepts_what_torch_accepts(cls, kwargs, call, backend):
    """torch.nn's calls that are not mistakes: gpurnn.torch gives torch.nn's outputs."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, cls)(3, 5, 2, **kwargs)
    ours = ours_cls(cls)(3, 5, 2, **kwargs, backend=backend)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    torch.manual_seed(1)
    want = call(theirs)
    torch.manual_seed(1)
    got = call(ours)
    assert_same(got, want, TOL[F32], "outputs")


# ---------------------------------------------------------------- an empty batch
EMPTY_BATCH = [  # (cls, layers, bidirectional, batch_first, hx given, proj_size, dtype)
    ("RNN", 1, False, False, False, 0, "f32"), ("RNN", 2, True, True, True, 0, "f64"),
    ("GRU", 1, False, False, True, 0, "f64"), ("GRU", 2, True, True, False, 0, "f32"),
    ("LSTM", 1, False, False, False, 0, "f32"), ("LSTM", 2, True, True, True, 0, "f64"),
    ("LSTM", 2, False, False, True, 2, "f64"),
]


def empty_batch_cases():
    for c in EMPTY_BATCH:
        name = f"{c[0]}-L{c[1]}" + "-bi" * c[2] + "-bf" * c[3] + "-hx" * c[4] + f"-proj{c[5]}" * bool(c[5]) + f"-{c[6]}"
        for backend in HOST_BACKENDS + (["cuda"] if CUDA_USABLE and c[1] == 2 and c[5] == 0 else []):
            yield pytest.param(c, backend, id=f"{name}-{backend}")


@pytest.mark.parametrize("config,backend", list(empty_batch_cases()))
def test_empty_batch_as_torch_handles_it(config, backend):
    """test_nn.py's test_RNN_input_size_zero, widened: a (T, 0, I) input (B=0) gives torch.nn's
    empty outputs and states, and a backward that reaches every parameter with torch.nn's (zero)
    gradients; also under no_grad."""
    cls, L, bi, bf, with_hx, proj, dt = config
    dtype, device = DTYPES[dt], device_of(backend)
    T, I, H = 5, 3, 4
    kw = dict(bidirectional=bi, batch_first=bf, dtype=dtype) | ({"proj_size": proj} if proj else {})
    torch.manual_seed(0)
    theirs = getattr(torch.nn, cls)(I, H, L, **kw)
    ours = ours_cls(cls)(I, H, L, **kw, backend=backend).to(device)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.zeros((0, T, I) if bf else (T, 0, I), dtype=dtype, requires_grad=True)
    args = (x,)
    if with_hx:
        D = 2 if bi else 1
        h = torch.zeros(L * D, 0, proj or H, dtype=dtype, requires_grad=True)
        args += ((h, torch.zeros(L * D, 0, H, dtype=dtype, requires_grad=True)) if cls == "LSTM" else h,)
    got = run_with_grads(ours, clone(args, device))
    want = run_with_grads(theirs, clone(args))
    for name, g, w in zip(("outputs", "input grads", "parameter grads"), got, want):
        assert_same(g, w, TOL[dtype], name)
    with torch.no_grad():
        assert_same(ours(*clone(args, device)), theirs(*clone(args)), TOL[dtype], "outputs under no_grad")


# ---------------------------------------------------------------- torch's test_nn.py, the RNN tests of a CPU module
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_RNN_nonlinearity(backend):
    """test_nn.py's test_RNN_nonlinearity and test_RNN_nonlinearity_passed_as_arg."""
    assert gt.RNN(1, 10, backend=backend).nonlinearity == "tanh"
    assert gt.RNN(1, 10, nonlinearity="relu", backend=backend).nonlinearity == "relu"
    assert gt.RNN(2, 3, 1, "relu", backend=backend).nonlinearity == "relu"
    assert gt.RNN(2, 3, 1, "relu", backend=backend).mode == "RNN_RELU"
    with pytest.raises(ValueError):
        torch.nn.RNN(1, 10, nonlinearity="garbage")
    with pytest.raises(ValueError):
        gt.RNN(1, 10, nonlinearity="garbage", backend=backend)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cls", ["RNN", "GRU"])
def test_projections_errors_on_gru_and_rnn(cls, backend):
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        getattr(torch.nn, cls)(30, 20, 2, proj_size=10)
    with pytest.raises(ValueError):
        ours_cls(cls)(30, 20, 2, proj_size=10, backend=backend)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cls,proj_size", [("RNN", 0), ("GRU", 0), ("LSTM", 0), ("LSTM", 10)],
                         ids=["RNN", "GRU", "LSTM", "LSTM-proj"])
def test_rnn_initial_hidden_state(cls, proj_size, backend):
    """test_nn.py's test_rnn_initial_hidden_state and test_projections_lstm_initial_hidden_state:
    a zero initial state is no initial state."""
    kw = {"proj_size": proj_size} if proj_size else {}
    rnn = ours_cls(cls)(30, 20, 2, **kw, backend=backend)
    x = torch.randn(10, 32, 30)
    h = torch.zeros(2, 32, proj_size or 20)
    hidden = (h, torch.zeros(2, 32, 20)) if cls == "LSTM" else h
    output1, hidden1 = rnn(x, hidden)
    output2, hidden2 = rnn(x)
    torch.testing.assert_close(output1, output2)
    torch.testing.assert_close(hidden1, hidden2)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_RNN_dropout(backend):
    """test_nn.py's test_RNN_dropout, on the CPU: dropout only between the layers, scaled by
    1/(1-p), and only in training."""
    for p, train in product((0, 0.276, 0.731, 1), (True, False)):
        rnn = gt.RNN(10, 1000, 2, bias=False, dropout=p, nonlinearity="relu", backend=backend)
        rnn.train(train)
        with torch.no_grad():
            for w in (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.weight_ih_l1, rnn.weight_hh_l1):
                w.fill_(1)
        output, hy = rnn(torch.ones(1, 1, 10), torch.zeros(2, 1, 1000))
        assert output.min() == output.max()
        output_val = output[0][0][0].item()
        if p == 0 or not train:
            assert output_val == 10000
        elif p == 1:
            assert output_val == 0
        else:
            assert 8000 < output_val < 12000
            denorm_mod = (output_val * (1 - p)) % 10
            assert min(denorm_mod, 10 - denorm_mod) < 1e-2
        assert hy[0].min() == hy[0].max() and hy[1].min() == hy[1].max()
        assert hy[0][0][0].item() == 10
        assert hy[1][0][0].item() == output_val


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_RNN_dropout_state(backend):
    """test_nn.py's test_RNN_dropout_state: fresh masks each call in training, none in eval; the
    module pickles (torch.save / torch.load) and flatten_parameters() after loading."""
    for p, train in product((0, 0.1234), (True, False)):
        rnn = gt.RNN(100, 100, 2, bias=False, dropout=p, nonlinearity="relu", backend=backend)
        rnn.train(train)
        x, hx = torch.rand(1, 1, 100), torch.rand(2, 1, 100)
        output1, hy1 = rnn(x, hx)
        output2, hy2 = rnn(x, hx)
        buf = io.BytesIO()
        torch.save(rnn, buf)
        buf.seek(0)
        rnn2 = torch.load(buf, weights_only=False)
        rnn2.flatten_parameters()
        output3, hy3 = rnn2(x, hx)
        if p == 0 or not train:
            torch.testing.assert_close(output1, output2)
            torch.testing.assert_close(output1, output3)
            torch.testing.assert_close(hy1, hy2)
            torch.testing.assert_close(hy1, hy3)
        else:
            assert not torch.allclose(output1, output2) and not torch.allclose(output1, output3)
            assert not torch.allclose(hy1, hy2) and not torch.allclose(hy1, hy3)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_RNN_change_dropout(backend):
    """test_nn.py's test_RNN_change_dropout: setting module.dropout between calls takes effect."""
    for train in (True, False):
        rnn = gt.RNN(100, 100, 2, dropout=0, nonlinearity="relu", backend=backend)
        rnn.train(train)
        x = torch.rand(3, 2, 100)
        prev_output = None
        for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
            rnn.dropout = p
            output1, hy1 = rnn(x)
            output2, hy2 = rnn(x)
            if p == 0 or p == 1 or not train:
                torch.testing.assert_close(output1, output2)
                torch.testing.assert_close(hy1, hy2)
            else:
                assert not torch.allclose(output1, output2) and not torch.allclose(hy1, hy2)
            if prev_output is not None:
                if not train:
                    torch.testing.assert_close(output1.data, prev_output)
                    torch.testing.assert_close(output2.data, prev_output)
                else:
                    assert not torch.allclose(output1.data, prev_output)
                    assert not torch.allclose(output2.data, prev_output)
            prev_output = output1.data


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_rnn_retain_variables(dtype, backend):
    """test_nn.py's test_rnn_retain_variables: backward(retain_graph=True) five times gives the
    same gradients each time."""
    for cls in ("LSTM", "GRU", "RNN"):
        rnn = ours_cls(cls)(10, 20, num_layers=2, backend=backend).to(dtype)
        x = torch.randn(5, 6, 10, dtype=dtype, requires_grad=True)
        output = rnn(x)
        output[0].sum().backward(retain_graph=True)
        grads = [x.grad.clone()] + [p.grad.clone() for p in rnn.parameters()]
        for _ in range(4):
            rnn.zero_grad()
            x.grad.zero_()
            output[0].sum().backward(retain_graph=True)
            torch.testing.assert_close([x.grad] + [p.grad for p in rnn.parameters()], grads)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_variable_sequence(backend):
    """test_nn.py's test_variable_sequence (LSTM, two layers, bidirectional, proj_size 0 and 2),
    float32 as torch runs it on the CPU: a packed batch gives what each sequence gives alone,
    forward and backward (torch's precision for float32, 1e-5)."""
    dtype, prec = F32, 1e-5

    def pad(var, length):
        if var.size(0) == length:
            return var
        return torch.cat([var, var.new_zeros(length - var.size(0), *var.size()[1:])])

    def check_lengths(lengths, enforce_sorted, use_default_hiddens, proj_size):
        input_size, hidden_size, num_layers, num_directions = 3, 4, 2, 2
        max_length = max(lengths)
        x_leaf = torch.randn(max_length, len(lengths), input_size, dtype=dtype, requires_grad=True)
        lstm = gt.LSTM(input_size, hidden_size, bidirectional=True, num_layers=num_layers, proj_size=proj_size,
                       backend=backend).to(dtype)
        lstm2 = deepcopy(lstm).to(dtype)
        x = x_leaf
        hidden0 = None
        if not use_default_hiddens:
            real_hidden_size = hidden_size if proj_size == 0 else proj_size
            hidden0 = (torch.randn(num_directions * num_layers, len(lengths), real_hidden_size, dtype=dtype),
                       torch.randn(num_directions * num_layers, len(lengths), hidden_size, dtype=dtype))
        seq_outs, seq_hiddens = [], []
        for i, length in enumerate(lengths):
            hidden_i = None if hidden0 is None else tuple(h[:, i:i + 1, :].contiguous() for h in hidden0)
            out, hid = lstm2(x[:length, i:i + 1], hidden_i)
            seq_outs.append(pad(out, max_length))
            seq_hiddens.append(hid)
        seq_out = torch.cat(seq_outs, 1)
        seq_hidden = tuple(torch.cat(hids, 1) for hids in zip(*seq_hiddens))
        packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        packed_out, packed_hidden = lstm(packed, hidden0)
        unpacked, unpacked_len = pad_packed_sequence(packed_out)
        torch.testing.assert_close(packed_hidden, seq_hidden, atol=prec, rtol=0)
        torch.testing.assert_close(unpacked, seq_out, atol=prec, rtol=0)
        assert unpacked_len.tolist() == list(lengths)
        seq_out.sum().backward()
        grad_x = x_leaf.grad.clone()
        x_leaf.grad.zero_()
        unpacked.sum().backward()
        torch.testing.assert_close(x_leaf.grad, grad_x, atol=prec, rtol=0)
        for p1, p2 in zip(lstm.parameters(), lstm2.parameters()):
            torch.testing.assert_close(p1.grad, p2.grad, atol=prec, rtol=0)

    tests = [(True, [5]), (False, [5]), (True, [10, 10, 6, 2, 2, 1, 1]), (False, [10, 10, 6, 2, 2, 1, 1]),
             (False, [2, 1, 3, 2, 10, 5, 3])]
    for enforce_sorted, seq_lens in tests:
        for use_default_hiddens, proj_size in product((True, False), (0, 2)):
            check_lengths(seq_lens, enforce_sorted, use_default_hiddens, proj_size)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_grad_and_gradgrad(cls, backend):
    """test_nn.py's test_LSTM_grad_and_gradgrad and test_GRU_grad_and_gradgrad (there run on CUDA
    with cuDNN off; the module's own math, here on the CPU): gradcheck passes; gradgradcheck
    passes or raises."""
    hsize = 4
    inp = torch.rand(1, 3, hsize, dtype=F64, requires_grad=True)
    for bias in (True, False):
        mod = ours_cls(cls)(hsize, hsize, bias=bias, backend=backend).to(F64)

        def flatten_out(x, mod=mod):
            out = mod(x)
            return tuple(t if isinstance(t, torch.Tensor) else tt for t in out for tt in t)
        assert gradcheck(flatten_out, inp, check_batched_grad=False)
        gradgrad_passes_or_raises(lambda f=flatten_out: gradgradcheck(f, inp, check_batched_grad=False))


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_rnn_weight_norm(backend):
    """test_nn.py's test_rnn_weight_norm: weight_norm turns one of _flat_weights from a Parameter
    into a tensor and remove_weight_norm turns it back; the module computes torch.nn's outputs
    with the reparametrised weight."""
    def check_weight_norm(module_pair, name, num_params):
        x = torch.randn(3, 2, 32)
        outputs = []
        for module in module_pair:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)    # torch.nn.utils.weight_norm is deprecated
                module = torch.nn.utils.weight_norm(module, name=name)
            assert sum(isinstance(p, torch.nn.Parameter) for p in module._flat_weights) == num_params - 1
            with torch.no_grad():
                getattr(module, name + "_g").mul_(1.5)
            outputs.append(module(x))
            module = torch.nn.utils.remove_weight_norm(module, name=name)
            assert sum(isinstance(p, torch.nn.Parameter) for p in module._flat_weights) == num_params
            assert name in module._parameters and module._parameters[name] is not None
            assert name + "_v" not in module._parameters and name + "_g" not in module._parameters
            named = dict(module.named_parameters())
            assert named.get(name) is not None and name + "_v" not in named and name + "_g" not in named
            outputs.append(module(x))
        assert_same(outputs[0], outputs[2], TOL[F32], "with weight_norm")
        assert_same(outputs[1], outputs[3], TOL[F32], "after remove_weight_norm")

    for kw, name, num_params in (({}, "weight_ih_l0", 4), ({"proj_size": 16}, "weight_hr_l0", 5)):
        theirs = torch.nn.LSTM(32, 32, **kw)
        ours = gt.LSTM(32, 32, **kw, backend=backend)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        check_weight_norm((ours, theirs), name, num_params)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_partial_flat_weights(backend):
    """test_nn.py's test_partial_flat_weights, with a dtype change where torch's moves the module
    to CUDA (the same Module._apply with a parameter missing): delete weight_hh_l0, convert,
    assign a tensor back; the module runs with it."""
    m = gt.LSTM(10, 6, 2, backend=backend)
    inp = torch.randn(3, 2, 10)
    out_expected = m(inp)
    weight_orig = m.weight_hh_l0
    del m.weight_hh_l0
    assert not hasattr(m, "weight_hh_l0")
    m.double()
    m.weight_hh_l0 = weight_orig.double()
    torch.testing.assert_close(m(inp.double())[0].float(), out_expected[0])


NOT_APPLICABLE = {
    "test_modules.test_multiple_device_transfer": "CUDA-only (@onlyCUDA): moves the module between the CPU and a "
                                                  "GPU, and across GPUs (multi-GPU)",
    "test_modules.test_cpu_gpu_parity": "CUDA-only (@onlyCUDA): the CPU module against the GPU one",
    "test_nn.test_rnn_check_device": "CUDA-only: input, state and weights on different devices",
    "test_nn.test_projections_lstm_check_device": "CUDA-only: input, state and weights on different devices",
    "test_nn.test_RNN_cpu_vs_cudnn_no_dropout": "cuDNN only: torch's CPU kernels against cuDNN's",
    "test_nn.test_RNN_cpu_vs_cudnn_with_dropout": "cuDNN only: torch's CPU kernels against cuDNN's",
    "test_nn.test_RNN_cudnn_weight_norm": "cuDNN's weight buffer: weight_norm with the flat cuDNN weights",
    "test_nn.test_cudnn_weight_format": "cuDNN's weight buffer: the one flat buffer cuDNN's weights share",
    "test_nn.test_cudnn_weight_tying": "cuDNN's weight buffer: tied weights in cuDNN's flat buffer",
    "test_nn.test_cudnn_rnn_dropout_states_device": "multi-GPU: cuDNN's dropout state on a second GPU",
    "test_nn.test_cudnn_forward_exception": "cuDNN only: cuDNN's own errors",
    "test_nn.test_rnn_fused": "CUDA-only: torch's fused GPU cell kernels",
}


@pytest.mark.parametrize("name", list(NOT_APPLICABLE))
def test_not_applicable_to_a_cpu_module(name):
    """torch's RNN tests that need CUDA, several GPUs or cuDNN's weight buffer: documented skips."""
    pytest.skip(f"{name}: {NOT_APPLICABLE[name]}")


# ---------------------------------------------------------------- the cuda cases in the simulator
TESTS = Path(__file__).resolve().parent

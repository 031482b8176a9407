"""A model and a training loop around the layers: input stage, recurrent stack, linear head, loss,
optimiser, gradient clipping, truncated BPTT, evaluation and metrics.

Legend: T time steps, B batch rows, I input features, V vocabulary, E embedding, H hidden, O outputs.

    model = gpurnn.SequenceModel("lstm", input_size=2, hidden_size=64, output_size=1, seed=0)
    trainer = gpurnn.Trainer(model, gpurnn.make_task("adding", 50), lr=1e-2, clip=1.0)
    for _ in range(1000):
        loss, metric, grad_norm = trainer.train_step()
    eval_loss, eval_metric = trainer.evaluate()

One training step draws a batch from the task, runs it through the model segment by segment
(``tbptt`` steps at a time, the state carried from one segment into the next), back-propagates
each segment's share of the loss through that segment only (truncated BPTT: the gradient of the
state handed over between segments is dropped), clips the summed gradient and updates the weights.
Without ``tbptt`` the single segment is the whole sequence: full BPTT.
"""

import math

import numpy as np

from . import _checks, losses
from .kernels.vocabulary import MODEL_CELLS
from .layers import Linear, Module, parameter_shapes, recurrent_layer
from .optim import SGD, Adam, clip_grad_norm, clip_grad_norm_on_device, grad_norm

OPTIMIZERS = ("sgd", "adam")


class Embedding(Module):
    """weight (V, E) ~ N(0, 1) as in torch.nn.Embedding; ids (...) -> vectors (..., E)."""

    _forward_state = ("_ids",)      # dropped by pickle and deepcopy (layers.Module)

    def __init__(self, num_embeddings, embedding_dim, backend="auto", dtype="float32", seed=None):
        super().__init__(backend, dtype)
        self.num_embeddings = _checks.positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = _checks.positive_int(embedding_dim, "embedding_dim")
        rng = np.random.default_rng(seed)
        weight = rng.standard_normal((self.num_embeddings, self.embedding_dim)).astype(self.dtype)
        self.params["weight"] = self.backend.asarray(weight, self.dtype)
        self.zero_grad()
        self._ids = None

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.embedding_dim})"

    def forward(self, ids):
        """ids out of range raise ValueError, on the cuda backend at the next read (gpurnn/_checks.py)."""
        xp = self.backend.xp
        ids = xp.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"embedding input must be integer ids, got dtype {ids.dtype}")
        V = self.num_embeddings
        if ids.size:
            _checks.expect(_checks.Check((ids.min(), ids.max()), lambda lo, hi: lo < 0 or hi >= V,
                                         lambda lo, hi: ValueError(f"ids must lie in 0..{V - 1}, "
                                                                   f"got min {int(lo)}, max {int(hi)}")),
                           self.backend)
        if _checks.deferred(self.backend):
            ids = ids.clip(0, V - 1)     # a bad id must not read outside the table before it is reported
        else:
            ids = ids.copy()             # backward reads the ids; the caller may overwrite its array
        self._ids = ids
        return self.params["weight"][ids]

    def backward(self, dy):
        """Adds into grads; a one-hot product rather than a scatter, so the sum is deterministic."""
        if self._ids is None:
            raise ValueError("backward() called before forward(): run the model on an input first")
        dy = _checks.float_array(dy, "dy", self.backend, self.dtype,
                                 shape=tuple(self._ids.shape) + (self.embedding_dim,))
        xp = self.backend.xp
        ids = self._ids.reshape(-1)
        one_hot = xp.zeros((ids.size, self.num_embeddings), self.dtype)
        one_hot[xp.arange(ids.size), ids] = 1
        self.grads["weight"] += one_hot.T @ dy.reshape(-1, self.embedding_dim)


class SequenceModel:
    """Input stage -> stack of recurrent layers -> linear head, applied at every time step.

    Input stage: with ``vocab_size``, an Embedding(vocab_size, embed_size) reads token ids (T, B);
    otherwise features (T, B, input_size) go through Linear(input_size, embed_size) when
    ``embed_size`` is given, or straight into the first layer's own input projection W_ih.
    ``recurrent_scale``: when given, every H x H gate block of every W_hh starts as a random
    orthogonal matrix times this scale (its largest singular value), instead of torch's uniform
    initialisation: below 1 gradients through time vanish, above 1 they can explode.

    ``out, state = model(x, state=None)``: out (T, B, output_size); state is the recurrent layers'
    final state (h_n, or (h_n, c_n) for the LSTM), ready to carry into the next segment.
    ``model.backward(dout)`` back-propagates through the latest forward call and adds into grads.
    """

    def __getstate__(self):
        """Pickled and deep-copied through its modules (layers.Module says what they keep); the
        backend is theirs."""
        return {k: v for k, v in self.__dict__.items() if k != "backend"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.backend = self.rnn.backend

    def __init__(self, cell, hidden_size, output_size, input_size=None, vocab_size=None, embed_size=None,
                 num_layers=1, recurrent_scale=None, backend="auto", dtype="float32", seed=0):
        if cell not in MODEL_CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(MODEL_CELLS)}")
        if (input_size is None) == (vocab_size is None):
            raise ValueError("give exactly one of input_size (features) and vocab_size (token ids)")
        self.cell = cell
        seeds = np.random.SeedSequence(seed).generate_state(3)     # one independent seed per module
        self.input = None
        if vocab_size is not None:
            embed_size = embed_size or hidden_size
            self.input = Embedding(vocab_size, embed_size, backend=backend, dtype=dtype, seed=seeds[0])
            rnn_in = embed_size
        elif embed_size:
            self.input = Linear(input_size, embed_size, backend=backend, dtype=dtype, seed=seeds[0])
            rnn_in = embed_size
        else:
            rnn_in = input_size
        kw = dict(num_layers=num_layers, backend=backend, dtype=dtype, seed=seeds[1])
        self.rnn = recurrent_layer(MODEL_CELLS[cell], rnn_in, hidden_size, **kw)
        if recurrent_scale is not None:
            rng = np.random.default_rng(seeds[1])
            sd = self.rnn.state_dict()
            for name, w in sd.items():
                if name.startswith("weight_hh"):
                    blocks = [recurrent_scale * orthogonal(rng, hidden_size) for _ in range(w.shape[0] // hidden_size)]
                    sd[name] = np.concatenate(blocks, axis=0)
            self.rnn.load_state_dict(sd)
        self.head = Linear(hidden_size, output_size, backend=self.rnn.backend, dtype=dtype, seed=seeds[2])
        self.backend = self.rnn.backend
        self.tokens = vocab_size is not None
        self.input_size = vocab_size if self.tokens else input_size
        self.hidden_size, self.output_size, self.num_layers = hidden_size, output_size, num_layers

    @property
    def modules(self):
        """The modules an optimiser updates, in a fixed order."""
        return ([self.input] if self.input is not None else []) + [self.rnn, self.head]

    def named_modules(self):
        names = (["input"] if self.input is not None else []) + ["rnn", "head"]
        return list(zip(names, self.modules))

    def __call__(self, x, state=None):
        return self.forward(x, state)

    def forward(self, x, state=None):
        """Raises FloatingPointError when the recurrent layers' output is not finite (diverged); on
        the cuda backend at the next read (gpurnn/_checks.py)."""
        h = self.input(x) if self.input is not None else x
        y, state = self.rnn(h, state)
        self._expect_finite(y, "the recurrent layers' output is not finite")
        return self.head(y), state

    def backward(self, dout):
        """Raises FloatingPointError when a gradient between the stages is not finite (diverged);
        on the cuda backend at the next read."""
        dy = self.head.backward(dout)
        self._expect_finite(dy, "the gradient reaching the recurrent layers is not finite")
        dh, _ = self.rnn.backward(dy)          # the gradient of the incoming state is not used (truncation)
        if self.input is not None:
            self._expect_finite(dh, "the gradient reaching the input stage is not finite")
            self.input.backward(dh)

    def _expect_finite(self, a, what):
        _checks.expect(_checks.all_finite_or(a, self.backend.xp, FloatingPointError(what)), self.backend)

    def zero_grad(self):
        for m in self.modules:
            m.zero_grad()

    def num_parameters(self):
        return sum(m.num_parameters() for m in self.modules)

    def state_dict(self):
        """Host copies, keyed "rnn.weight_hh_l0", "head.weight", ..."""
        return {f"{name}.{k}": v for name, m in self.named_modules() for k, v in m.state_dict().items()}

    def load_state_dict(self, sd):
        parts = {name: {} for name, _ in self.named_modules()}
        for key, value in sd.items():
            name, _, k = key.partition(".")
            if name not in parts:
                raise ValueError(f"unexpected entry {key!r} in the model state; "
                                 f"expected entries under {sorted(parts)}")
            parts[name][k] = value
        for name, m in self.named_modules():
            m.load_state_dict(parts[name])

    def __repr__(self):
        stage = repr(self.input) + " -> " if self.input is not None else ""
        return f"SequenceModel({stage}{self.rnn!r} -> {self.head!r})"


def sequence_model_shapes(cell, hidden_size, output_size, input_size=None, vocab_size=None, embed_size=None,
                          num_layers=1):
    """{state_dict key: shape} of the SequenceModel these arguments build, without building it:
    what a checkpoint's weights must be before a model is allocated for them (gpurnn.load_model)."""
    shapes = {}
    if vocab_size is not None:
        rnn_in = embed_size or hidden_size
        shapes["input.weight"] = (vocab_size, rnn_in)
    elif embed_size:
        rnn_in = embed_size
        shapes.update({"input.weight": (embed_size, input_size), "input.bias": (embed_size,)})
    else:
        rnn_in = input_size
    stack = parameter_shapes(MODEL_CELLS[cell], rnn_in, hidden_size, num_layers, bidirectional=False, bias=True)
    shapes.update({f"rnn.{k}": v for k, v in stack.items()})
    shapes.update({"head.weight": (output_size, hidden_size), "head.bias": (output_size,)})
    return shapes


def orthogonal(rng, n):
    """A random n x n orthogonal matrix (QR of a Gaussian matrix, signs fixed so it is uniform)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def make_model(task, cell="lstm", hidden_size=64, num_layers=1, embed_size=None, recurrent_scale=None,
               backend="auto", dtype="float32", seed=0):
    """A SequenceModel sized for ``task`` (its input and output sizes, tokens or features)."""
    kw = dict(vocab_size=task.input_size) if task.tokens else dict(input_size=task.input_size)
    return SequenceModel(cell, hidden_size, task.output_size, embed_size=embed_size, num_layers=num_layers,
                         recurrent_scale=recurrent_scale, backend=backend, dtype=dtype, seed=seed, **kw)


def training_memory(task, cell, hidden_size, num_layers=1, embed_size=None, batch_size=32, optimizer="adam",
                    eval_sequences=512, dtype="float32", tbptt=None, eval_batch=500):
    """An estimate, in bytes, of the memory a Trainer of this configuration needs, by part:
    ``{"weights": ..., "activations": ..., "held_out": ..., "peak": ...}``. It counts the arrays the
    code allocates: weights, gradients, optimiser state and the copy that undoes a non-finite step;
    a training step's saved activations (two forwards' worth, as one lives until the next replaces
    it) and the backward's work arrays; the held-out set and the activations of its evaluation. The
    peak is the weights, the held-out set, and the larger of a training step and an evaluation.
    Meant to tell a configuration that cannot fit before allocating anything, not to the byte
    (tests/test_runs.py holds it within 0.8-2x of what tracemalloc measures).
    """
    s = np.dtype(dtype).itemsize
    G = 4 if cell == "lstm" else 3 if cell == "gru" else 1
    H, L, O, T = int(hidden_size), int(num_layers), int(task.output_size), int(task.seq_len)
    B, K = int(batch_size), min(int(tbptt or task.seq_len), T)
    if task.tokens:
        E = int(embed_size or H)
        stage = task.input_size * E
    else:
        E = int(embed_size) if embed_size else task.input_size
        stage = (task.input_size * E + E) if embed_size else 0
    inputs = E + H * (L - 1)                        # the layers' input sizes, summed (arithmetic: L may be huge)
    params = stage + G * H * (inputs + L * H) + 2 * G * H * L + H * O + O
    slots = 2 if optimizer == "adam" else 0
    weights = params * s * (3 + 2 * slots)          # params, grads, slots; a snapshot of params and slots

    saves_gates = G if cell in ("lstm", "gru") else 0

    def forward(rows, steps):
        """What one forward over all layers keeps for backward (each layer's input, states, gates,
        cells or candidates), plus one layer's input projection and the output."""
        return s * rows * steps * (inputs + L * (2 * H + saves_gates * H) + G * H + H)

    per_step_io = 4 * (task.input_size if not task.tokens else 2) + 4 * O + 4      # host batch arrays
    head = s * K * B * (4 * O + 2 * H + (task.input_size if task.tokens else 0))   # logits, grads, one-hot
    widest = max(E, H) if L > 1 else E
    activations = 2 * forward(B, K) + s * K * B * (2 * G * H + H + widest) + head + 4 * T * B * per_step_io
    n_eval = int(eval_sequences)
    rows = min(eval_batch, n_eval)
    eval_set = n_eval * T * per_step_io                      # kept from the first evaluation on
    # evaluation runs in the same segments; before its first one, the training step's are still alive
    evaluation = forward(rows, K) + forward(rows if n_eval > rows or K < T else B, K) + s * K * rows * 3 * O
    return {"weights": weights, "activations": activations, "held_out": eval_set + evaluation,
            "peak": weights + eval_set + max(activations, evaluation)}


def make_optimizer(name, modules, lr):
    if name == "adam":
        return Adam(modules, lr=lr)
    if name == "sgd":
        return SGD(modules, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss, gradient or weight; ``step`` is the failing step."""

    def __init__(self, step, message):
        super().__init__(message)
        self.step = step


class Trainer:
    """Trains ``model`` on ``task``: one ``train_step()`` is one batch, one update.

    ``optimizer`` "adam" | "sgd" (or an Optimizer over ``model.modules``); ``clip``: max joint
    gradient norm (None: no clipping); ``tbptt``: segment length k of truncated BPTT (None: the whole
    sequence); ``seed``: the data stream (the model has its own seed); ``eval_sequences``: size of
    the fixed held-out set ``evaluate()`` scores.
    """

    def __init__(self, model, task, optimizer="adam", lr=1e-3, clip=None, tbptt=None, batch_size=32,
                 seed=0, eval_sequences=512):
        self.model, self.task = model, task
        if model.tokens != task.tokens or model.input_size != task.input_size \
                or model.output_size != task.output_size:
            raise ValueError(f"the model ({model.input_size} {'tokens' if model.tokens else 'features'} in, "
                             f"{model.output_size} out) does not fit task {task.name!r} "
                             f"({task.input_size} in, {task.output_size} out); build it with make_model(task)")
        self.opt = optimizer if not isinstance(optimizer, str) else make_optimizer(optimizer, model.modules, lr)
        self.clip = None if clip is None or clip <= 0 else float(clip)
        self.tbptt = None if tbptt is None or tbptt <= 0 or tbptt >= task.seq_len else int(tbptt)
        self.batch_size = _checks.positive_int(batch_size, "batch_size")
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.step = 0                  # updates done so far
        self.eval_sequences = int(eval_sequences)
        self._eval = None
        self._buffers = {}             # the snapshot's arrays, reused from step to step

    # ------------------------------------------------------------ one batch
    def _segments(self, T):
        k = self.tbptt or T
        return [(a, min(a + k, T)) for a in range(0, T, k)]

    def _loss(self, out, batch, a, b, total):
        """This segment's share of the mean loss over all scored steps, its gradient, and its
        ``task.tally`` (for classification, the correctly classified scored steps); the loss and
        the tally are not read (device scalars on the cuda backend), the loss's checks of its
        inputs are expected with the rest (``_checks.expect``)."""
        xp = self.model.backend.xp
        count = float(batch.mask[a:b].sum(dtype=np.float64))           # the batch is on the host: no read
        if count == 0:
            return 0.0, None, 0.0
        share = count / total
        mask = xp.asarray(batch.mask[a:b])
        target = xp.asarray(batch.target[a:b])
        if self.task.loss == "mse":
            loss, grad, checks = losses.mse_terms(out, target, mask=xp.broadcast_to(mask[..., None], out.shape))
        else:
            loss, grad, checks = losses.cross_entropy_terms(out, target, mask=mask)
        for check in checks:
            _checks.expect(check, self.model.backend)
        return loss * share, grad * out.dtype.type(share), self.task.tally(out, target, mask, xp)

    def _forward_backward(self, batch, train):
        """Forward every segment (and, when training, backward each); returns (loss, tally), not
        read. A FloatingPointError (the model diverged) comes from here on the host backends, from
        the next read on the cuda backend."""
        xp = self.model.backend.xp
        T = batch.mask.shape[0]
        total = float(batch.mask.sum(dtype=np.float64))
        state, loss, tally = None, 0.0, 0.0
        for a, b in self._segments(T):
            x = xp.asarray(batch.x[a:b])
            with np.errstate(over="ignore", invalid="ignore"):
                out, state = self.model(x, state)
            self.model._expect_finite(out, "the model's output is not finite")
            seg_loss, grad, seg_tally = self._loss(out, batch, a, b, total)
            loss = loss + seg_loss
            tally = tally + seg_tally
            if train and grad is not None:
                with np.errstate(over="ignore", invalid="ignore"):
                    self.model.backward(grad)
        return loss, tally

    def _run(self, batch, train):
        """Forward every segment (and, when training, backward each); returns (loss, metric) as
        Python floats, read at once (NaN when the model diverged)."""
        try:
            loss, tally = _checks.fetch(self._forward_backward(batch, train))
        except FloatingPointError:
            return math.nan, math.nan
        return loss, self.task.score(loss, tally / float(batch.mask.sum(dtype=np.float64)))

    def train_step(self):
        """One batch and one update. Returns (loss, metric, gradient norm before clipping).

        Raises NonFiniteError, with the model, optimiser and data stream left as they were before
        this step (so a checkpoint saved then is the last good state), when the loss, a gradient or
        an updated weight is not finite.

        On the cuda backend the step reads the device once, at its end: the loss, the tally, the
        gradient norm, whether every updated weight is finite and every check of values made
        during the step come to the host in one transfer. The update is made before that read, so
        a step that fails is undone from the snapshot taken at its start; no failed step leaves a
        weight changed. On the other backends (and with GPURNN_EAGER_CHECKS=1) each is read where
        it is made and a failed step stops before its update.
        """
        step = self.step + 1
        before = self._snapshot()
        batch = self.task.batch(self.rng, self.batch_size)
        self.model.zero_grad()
        modules = self.model.modules
        deferred = _checks.deferred(self.model.backend)
        try:
            loss, tally = self._forward_backward(batch, train=True)
            if deferred:
                norm = clip_grad_norm_on_device(modules, self.clip)
            else:
                loss, tally = _checks.fetch([loss, tally])
                self._stop_unless(math.isfinite(loss), before, step, f"the loss is {loss}")
                norm = clip_grad_norm(modules, self.clip) if self.clip is not None else grad_norm(modules)
                self._stop_unless(math.isfinite(norm), before, step, f"the gradient norm is {norm}")
            with np.errstate(over="ignore", invalid="ignore"):
                self.opt.step()
            params = [p for m in modules for p in m.params.values()]
            loss, tally, norm, finite = _checks.fetch([loss, tally, norm,
                                                       _checks.all_finite_value(params, self.model.backend.xp)])
        except FloatingPointError:
            loss = tally = norm = math.nan
            finite = True
        except NonFiniteError:
            raise                                  # undone already
        except BaseException:
            self._restore(before)                  # nothing of a failed step stays, whatever failed
            raise
        self._stop_unless(math.isfinite(loss), before, step, f"the loss is {loss}")
        self._stop_unless(math.isfinite(norm), before, step, f"the gradient norm is {norm}")
        self._stop_unless(finite, before, step, "the update made a weight non-finite")
        self.step = step
        return loss, self.task.score(loss, tally / float(batch.mask.sum(dtype=np.float64))), norm

    def _stop_unless(self, ok, before, step, what):
        """Undo the step and raise NonFiniteError saying ``what`` unless ``ok``."""
        if not ok:
            self._restore(before)
            raise NonFiniteError(step, self._advice(step, what))

    def _advice(self, step, what):
        remedy = []
        if self.clip is None:
            remedy.append("clip gradients (e.g. at a norm of 1.0)")
        else:
            remedy.append(f"clip harder (now at a norm of {self.clip:g})")
        remedy.append(f"lower the learning rate (now {self.opt.lr:g}, try {self.opt.lr / 10:g})")
        return (f"step {step}: {what}, so training stopped. The weights were left as they were after "
                f"step {step - 1}. Remedy: {' or '.join(remedy)}.")

    # ------------------------------------------------------------ evaluation
    def evaluate(self):
        """(loss, metric) on the task's fixed held-out set (the same for every call and every run
        with the same seed): means over all its scored steps."""
        if self._eval is None:
            self._eval = self.task.eval_batches(self.seed, self.eval_sequences, 500)
        n = sum(float(b.mask.sum(dtype=np.float64)) for b in self._eval)
        loss = metric = 0.0
        for batch in self._eval:
            w = float(batch.mask.sum(dtype=np.float64)) / n
            l_, m_ = self._run(batch, train=False)
            loss += w * l_
            metric += w * m_
        return loss, metric

    # ------------------------------------------------------------ state (for checkpoints)
    def _snapshot(self):
        """Copies of everything one step changes, on the device, to undo a step that went
        non-finite: the parameters and the optimiser's state, copied into buffers kept from the
        step before (a step allocates none once they exist), and the step counts and data stream."""
        params = {(i, name): self._keep(("param", i, name), p)
                  for i, m in enumerate(self.model.modules) for name, p in m.params.items()}
        opt = {key: {s: self._keep(("opt", key, s), v) for s, v in st.items()} for key, st in self.opt.state.items()}
        return params, opt, self.opt.steps, self.rng.bit_generator.state

    def _keep(self, key, a):
        """A copy of ``a`` in the snapshot buffer ``key`` (made when new or of another shape)."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape != a.shape or buf.dtype != a.dtype:
            buf = self._buffers[key] = a.copy()
        else:
            buf[...] = a
        return buf

    def _restore(self, snap):
        """Back to ``snap``, in place: the arrays the model and the optimiser hold stay theirs."""
        params, opt, steps, rng_state = snap
        for i, m in enumerate(self.model.modules):
            for name, p in m.params.items():
                p[...] = params[(i, name)]
        for key in list(self.opt.state):
            if key not in opt:
                del self.opt.state[key]          # made by the step being undone (Adam's first)
            else:
                for s, v in self.opt.state[key].items():
                    v[...] = opt[key][s]
        self.opt.steps = steps
        self.rng.bit_generator.state = rng_state
        self.model.zero_grad()

    def state(self):
        """Everything needed to continue exactly: host arrays and JSON-able values, and the
        ``description`` that lets gpurnn.load_model rebuild the model from a saved state."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "step": self.step, "rng": self.rng.bit_generator.state, "description": self.description()}

    def description(self):
        """What rebuilds this trainer's model around its weights and reads inputs as its task does,
        JSON-able: ``model`` (its task's name, cell, hidden size, layers, input stage and dtype,
        named as a run's config names them), ``task`` (``task.config()``: the sequence length,
        an ArrayTask's sizes and scaling) and, for a character model, ``vocab`` (its characters
        in id order). gpurnn.save_checkpoint stores it; gpurnn.load_model reads it."""
        m, task = self.model, self.task
        if m.input is None:
            embed = None
        else:
            embed = m.input.embedding_dim if m.tokens else m.input.out_features
        described = {"model": dict(task=getattr(task, "name", None), cell=m.cell, hidden=m.hidden_size,
                                   layers=m.num_layers, embed=embed, dtype=m.rnn.dtype.name)}
        if hasattr(task, "config"):
            described["task"] = task.config()
        if getattr(task, "chars", None) is not None:
            described["vocab"] = task.chars
        return described

    def load_state(self, state):
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.rng.bit_generator.state = state["rng"]

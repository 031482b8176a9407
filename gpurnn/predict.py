"""A trained model back from its run folder (or from a file saved from Python), reading new
inputs as training read its data.

Legend: N sequences, T time steps, I features, O outputs, C classes.

    m = gpurnn.load_model("runs/digits")         # the run folder, or its checkpoint.npz
    labels = m.predict(x)                        # x (N, T, I) -> (N,) classes, or (N, O) values
    p = m.predict_proba(x)                       # classification: (N, C) probabilities

    gpurnn.save_checkpoint("model.npz", trainer.state())   # a model trained from Python (gpurnn.Trainer)
    m = gpurnn.load_model("model.npz")                     # comes back the same way

``gpurnn predict RUN --data FILE --out PRED.npy`` writes ``m.predict_file(FILE)``, which is
``m.predict(*m.read_inputs(FILE))`` with the file named in any error.

What comes back follows the task the model was trained on: read at each sequence's last step
(``lengths[n] - 1``) or at every step; values in the data's own units (the run's normalisation
undone), or class labels. At every step, the positions past a row's length hold 0 (values) or
-1 (labels). Runs of the built-in tasks load too: adding predicts its sum (N, 1) from x (N, T, 2);
copy and charlm take token ids (N, T) and predict the next token at every step.
"""

import os

import numpy as np

from .checkpoint import REMEDY, CheckpointError, load_checkpoint
from .data import READOUTS, check_inputs, check_room, standardise
from .model import SequenceModel, sequence_model_shapes
from .runs import DEFAULTS, check_entries, checked_in_checkpoint, config_of_checkpoint, fits
from .tasks import TASKS, Adding, Copy

BUILTIN = {"adding": Adding, "copy": Copy}      # the built-in tasks whose sizes are fixed
OUTPUT_COPIES = 3       # float64 (N, T, O) arrays at the peak of a prediction: the outputs, a transposed copy, softmax
# The config entries that rebuild a model and tell what its inputs and outputs are: a run's config
# holds them; a Trainer's state describes them for a model trained from Python, which has no run
# config (Trainer.description).
MODEL_KEYS = ("task", "cell", "hidden", "layers", "embed", "dtype", "seq_len")


class TrainedModel:
    """``model`` (a SequenceModel with its trained weights) and the task config that tells how it
    reads inputs and what its outputs mean (``task``: an ArrayTask's config, or a built-in task's).
    ``config``: the run's config, or, for a model saved from Python, its MODEL_KEYS entries
    (and the task's own: copy_len, text)."""

    def __init__(self, model, task, config=None, step=None, path=None):
        self.model, self.task, self.config, self.step, self.path = model, task, config or {}, step, path
        self.kind, self.readout = task["kind"], task["readout"]
        self.tokens = model.tokens
        self._x_mean = np.asarray(task.get("x_mean", np.zeros(model.input_size if not self.tokens else 0)))
        self._x_std = np.asarray(task.get("x_std", np.ones(model.input_size if not self.tokens else 0)))
        self._y_mean = np.asarray(task["y_mean"]) if task.get("y_mean") is not None else None
        self._y_std = np.asarray(task["y_std"]) if task.get("y_std") is not None else None

    def __repr__(self):
        what = f"{self.task['task']}, {self.kind} at {'every step' if self.readout == 'steps' else 'the last step'}"
        return f"TrainedModel({self.model!r}; {what}; step {self.step})"

    # ------------------------------------------------------------ inputs
    def read_inputs(self, path):
        """(x, lengths) from a data file, read as the training data was: a .npz's ``x`` and
        ``lengths``, or every window of a CSV series' feature columns."""
        from .datafiles import inputs_from_file
        return inputs_from_file(path, self.task.get("source"))

    def predict_file(self, path, proba=False):
        """``predict`` (or ``predict_proba``) of the inputs in a data file (see ``read_inputs``)."""
        x, lengths = self.read_inputs(path)
        out, lengths = self._outputs(x, lengths, 512, source=path)
        return self._proba(out, lengths) if proba else self._predictions(out, lengths)

    def _outputs(self, x, lengths, batch_size, source=None):
        """The model's outputs (N, T, O) as float64 on the host, and the lengths (N,); errors in the
        inputs name ``source`` (the file they came from)."""
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if self.tokens:
            ids = np.asarray(x)
            if ids.dtype.kind not in "iu" or ids.ndim != 2:
                raise ValueError(f"this model reads token ids: x must be (N, T) integers, got shape {ids.shape} "
                                 f"dtype {ids.dtype}")
            if ids.size and (ids.min() < 0 or ids.max() >= self.model.input_size):
                raise ValueError(f"token ids must lie in 0..{self.model.input_size - 1}, got min {ids.min()}, "
                                 f"max {ids.max()}")
            if lengths is not None:
                raise ValueError("lengths apply to feature inputs; token inputs are read to their end")
            N, T = ids.shape
            lengths = np.full(N, T, np.int64)
            inputs = ids.T
        else:
            x, lengths, valid = check_inputs(x, lengths, source, features=self.model.input_size)
            N, T, _ = x.shape
            inputs = standardise(x, valid, self._x_mean, self._x_std, source).transpose(1, 0, 2)   # (T, N, I)
        O = self.model.output_size
        check_room(source or "the inputs", OUTPUT_COPIES * 8 * N * T * O,
                   f"the model's outputs for them, (N, T, O) = ({N}, {T}, {O}),", "predict on fewer sequences")
        backend = self.model.backend
        out = np.empty((T, N, O))
        for a in range(0, N, batch_size):
            chunk, _ = self.model(backend.xp.asarray(np.ascontiguousarray(inputs[:, a:a + batch_size])))
            out[:, a:a + batch_size] = backend.to_host(chunk)
        return out.transpose(1, 0, 2), lengths

    def _read_out(self, out, lengths, fill):
        """The last step's (N, ...) or every step's (N, T, ...), with ``fill`` past each length."""
        N, T = out.shape[:2]
        if self.readout == "last":
            return out[np.arange(N), lengths - 1]
        past = np.arange(T)[None, :] >= lengths[:, None]
        out = out.copy()
        out[past] = fill
        return out

    # ------------------------------------------------------------ predictions
    def predict(self, x, lengths=None, batch_size=512):
        """Class labels (int64: (N,) or (N, T)) or values in the data's units ((N, O) or (N, T, O))."""
        return self._predictions(*self._outputs(x, lengths, batch_size))

    def _predictions(self, out, lengths):
        if self.kind == "classification":
            return self._read_out(out.argmax(axis=-1), lengths, -1)
        if self._y_std is not None:
            out = out * self._y_std + self._y_mean
        return self._read_out(out, lengths, 0.0)

    def predict_proba(self, x, lengths=None, batch_size=512):
        """Classification: the softmax of the outputs, (N, C) or (N, T, C) (zeros past a length)."""
        return self._proba(*self._outputs(x, lengths, batch_size))

    def _proba(self, out, lengths):
        if self.kind != "classification":
            raise ValueError("predict_proba is for classification; this model predicts values: use predict")
        p = np.exp(out - out.max(axis=-1, keepdims=True))
        return self._read_out(p / p.sum(axis=-1, keepdims=True), lengths, 0.0)


def load_model(run, backend="auto", dtype=None):
    """The model trained in ``run`` (a run folder, its checkpoint .npz, or a Trainer's state saved
    with gpurnn.save_checkpoint) with its weights, as a TrainedModel in ``dtype`` (default: the one it was trained
    in); a CheckpointError when the file is damaged, says something that does not fit, or does not
    say what model its weights belong to."""
    path = os.fspath(run)
    if not path.endswith(".npz"):
        path = os.path.join(path, "checkpoint.npz")
    ckpt = load_checkpoint(path)
    cfg = config_of_checkpoint(ckpt, path) if ckpt["config"] else saved_model_config(ckpt, path)
    task = task_of_checkpoint(ckpt, cfg, path)
    sizes = model_sizes(cfg, task["input_size"], task["output_size"], task["tokens"])
    check_weights(ckpt["model"], cfg, sizes, path)          # before a model of the config's size is allocated
    model = SequenceModel(backend=backend, dtype=dtype or cfg["dtype"], **sizes)
    try:
        model.load_state_dict(ckpt["model"])
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its own config ({e}); {REMEDY}") from None
    return TrainedModel(model, task, cfg, ckpt["step"], path)


def model_sizes(cfg, input_size, output_size, tokens):
    """SequenceModel's arguments for a run's config and its task's sizes."""
    return dict(cell=cfg["cell"], hidden_size=cfg["hidden"], output_size=output_size, embed_size=cfg["embed"],
                num_layers=cfg["layers"], **{"vocab_size" if tokens else "input_size": input_size})


def check_weights(weights, cfg, sizes, path):
    """A CheckpointError unless ``weights`` (a checkpoint's model arrays, already read and so no
    larger than its file) are exactly those of the SequenceModel of ``sizes`` (model_sizes), so
    that a config claiming hidden=20000 or 10**6 layers is refused before anything is built: the
    number of arrays first (by arithmetic), then every shape."""
    entries = (1 if sizes.get("vocab_size") else 2 if sizes["embed_size"] else 0) + 4 * sizes["num_layers"] + 2
    said = f"its config ({cfg['cell']}, hidden {cfg['hidden']}, layers {cfg['layers']}, embed {cfg['embed']})"
    if len(weights) != entries:
        raise CheckpointError(f"checkpoint {path}: {said} makes a model of {entries} arrays, but it holds "
                              f"{len(weights)}; {REMEDY}")
    for key, shape in sequence_model_shapes(**sizes).items():
        held = weights.get(key)
        if held is None or tuple(held.shape) != tuple(shape):
            what = "none" if held is None else f"shape {tuple(held.shape)}"
            raise CheckpointError(f"checkpoint {path}: {said} gives {key!r} the shape {tuple(shape)}, but it holds "
                                  f"{what}; {REMEDY}")


def saved_model_config(ckpt, path):
    """The config entries (MODEL_KEYS, and the task's own) of a checkpoint without a run config:
    the description of a Trainer's state (Trainer.description), checked; a CheckpointError that
    says what to do when it has none."""
    described = ckpt["extra"].get("model")
    if described is None:
        raise CheckpointError(f"checkpoint {path} does not say what model its weights belong to (it has no run "
                              f"config and no model description); save a Trainer's state whole, "
                              f"gpurnn.save_checkpoint(path, trainer.state()), to load it with load_model, or "
                              f"rebuild the model and continue with trainer.load_state(gpurnn.load_checkpoint(path))")
    if not isinstance(described, dict):
        raise CheckpointError(f"checkpoint {path}: extra field 'model' must be a JSON object, got "
                              f"{type(described).__name__}; {REMEDY}")
    task = ckpt["extra"].get("task")
    if isinstance(task, dict):      # the task's own entries of a run config: seq_len, copy_len, text
        described = dict({k: v for k, v in task.items() if k in DEFAULTS and k != "task"}, **described)
    if described.get("task") not in TASKS + ("data",):
        raise CheckpointError(f"checkpoint {path}: its model was trained on a task of its own "
                              f"({described.get('task')!r}), whose inputs load_model cannot read (it reads those of "
                              f"{', '.join(TASKS)} and of an ArrayTask); rebuild the model and load its weights with "
                              f"model.load_state_dict(gpurnn.load_checkpoint(path)['model'])")
    needed = MODEL_KEYS + (("copy_len",) if described.get("task") == "copy" else ())
    return checked_in_checkpoint(described, needed, check_entries, path, _model_field)


def _model_field(key, value=None):
    """How saved_model_config's errors name an entry: ``extra field 'model.hidden'``."""
    return f"extra field 'model.{key}'"


def task_of_checkpoint(ckpt, cfg, path):
    """The task config a TrainedModel needs, checked field by field (a checkpoint is not trusted)."""
    name = cfg["task"]
    if name == "charlm":
        vocab = ckpt["extra"].get("vocab")
        if not isinstance(vocab, str) or not vocab or len(set(vocab)) != len(vocab):
            raise CheckpointError(f"checkpoint {path}: extra field 'vocab' must be a string of distinct characters; "
                                  f"{REMEDY}")
        return dict(task=name, kind="classification", readout="steps", input_size=len(vocab),
                    output_size=len(vocab), tokens=True, vocab=vocab)
    if name in BUILTIN:
        cls = BUILTIN[name]
        return dict(task=name, kind="regression" if cls.loss == "mse" else "classification", readout=cls.readout,
                    input_size=cls.input_size, output_size=cls.output_size, tokens=cls.tokens)
    task = ckpt["extra"].get("task")

    def bad(field, expected):
        value = task.get(field) if isinstance(task, dict) else task
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return CheckpointError(f"checkpoint {path}: extra field 'task.{field}' must be {expected}, got {shown}; "
                               f"{REMEDY}")

    if not isinstance(task, dict):
        raise bad("", "a JSON object describing the data")
    if task.get("kind") not in ("regression", "classification"):
        raise bad("kind", "'regression' or 'classification'")
    if task.get("readout") not in READOUTS:
        raise bad("readout", f"one of {', '.join(READOUTS)}")
    for field in ("input_size", "output_size"):
        if not _count(task.get(field)):
            raise bad(field, "a positive integer")
    sizes = {"x_mean": task["input_size"], "x_std": task["input_size"]}
    if task["kind"] == "regression":
        sizes.update(y_mean=task["output_size"], y_std=task["output_size"])
    for field, n in sizes.items():
        value = task.get(field)
        if not (isinstance(value, list) and len(value) == n and all(fits(v, float) for v in value)):
            raise bad(field, f"a list of {n} finite numbers")
        if field.endswith("std") and not all(v > 0 for v in value):
            raise bad(field, "positive")
    source = task.get("source")
    if source is not None:
        if not isinstance(source, dict) or source.get("format") not in ("npz", "csv"):
            raise bad("source", "a JSON object with format 'npz' or 'csv'")
        if source["format"] == "csv":
            feats = source.get("features")
            if not (isinstance(feats, list) and len(feats) == task["input_size"]
                    and all(isinstance(f, str) for f in feats)):
                raise bad("source.features", f"a list of {task['input_size']} column names")
            if not _count(source.get("seq_len")):
                raise bad("source.seq_len", "a positive integer")
    return dict(task, tokens=False)


def _count(v):
    return fits(v, int) and v > 0

"""A trained model back from its run folder (or from a file saved from Python), reading new
inputs as training read its data.

Legend: N sequences, T time steps, I features, O outputs, C classes.

    m = gpurnn.load_model("runs/digits")         # the run folder (its best state), or a checkpoint .npz
    m = gpurnn.load_model("runs/digits", checkpoint="last")    # the folder's last state
    labels = m.predict(x)                        # x (N, T, I) -> (N,) classes, or (N, O) values
    p = m.predict_proba(x)                       # classification: (N, C) probabilities

    gpurnn.save_checkpoint("model.npz", trainer.state())   # a model trained from Python (gpurnn.Trainer)
    m = gpurnn.load_model("model.npz")                     # comes back the same way

A run folder holds ``checkpoint.npz``, its last state, and ``best.npz``, its state at the best
held-out evaluation; ``checkpoint="best"`` (the default) loads the latter, or the former in a run
that has not evaluated yet. ``m.which`` says which was loaded ("best", "last"), ``m.path`` where.

``m.predict_file(FILE)`` is ``m.predict(*m.read_inputs(FILE))`` with the file named in any error,
and for a CSV series of a model trained on first differences (``--difference``), the levels:
target[r] + the predicted change, r the row the window ends at (gpurnn.datafiles).
``gpurnn predict RUN --data FILE --out OUT`` writes ``write_predictions(m, FILE, OUT)``:

    OUT.npy   the array predict_file returns (with --proba: the probabilities), bare
    OUT.csv   one row per prediction, saying which input row it belongs to:
              a CSV series   row (0-based data row the window ends at, where the forecast is made),
                             the file's index columns at that row (a date: see below), target_row
                             (row + horizon), the index columns there (target_<name>), actual (the
                             target's value at target_row, empty past the file's end), prediction
              a .npz         row (the sequence n), then prediction (one output) or prediction_0..
                             prediction_{O-1}, or label (classification) and with --proba p_0..
                             p_{C-1}; predictions at every step, (N, T, ...), need a .npz
    OUT.npz   the same as named arrays: prediction (as predict_file returns it), row, and for a
              series target_row, actual (NaN past the end) and the index columns as text ('<U');
              with --proba also proba (N, C) (or (N, T, C))

A series' index columns are those of its file that are not features and not all numbers (a date),
and its first column when it is numbers but not a feature (a YEAR): written as the file has them,
and past its end extrapolated when they are evenly spaced numbers or ISO dates (else empty). A
name already taken gets a trailing "_".

What comes back follows the task the model was trained on: read at each sequence's last step
(``lengths[n] - 1``) or at every step; values in the data's own units (the run's normalisation
undone), or class labels. At every step, the positions past a row's length hold 0 (values) or
-1 (labels). Runs of the built-in tasks load too: adding predicts its sum (N, 1) from x (N, T, 2);
copy and charlm take token ids (N, T) and predict the next token at every step.
"""

import csv
import io
import os

import numpy as np

from .checkpoint import REMEDY, CheckpointError, load_checkpoint
from .data import READOUTS, check_inputs, check_room, standardise
from .files import write_whole
from .model import SequenceModel, sequence_model_shapes
from .runs import DEFAULTS, check_entries, checked_in_checkpoint, config_of_checkpoint, fits
from .tasks import TASKS, Adding, Copy

BUILTIN = {"adding": Adding, "copy": Copy}      # the built-in tasks whose sizes are fixed
OUTPUT_COPIES = 3       # float64 (N, T, O) arrays at the peak of a prediction: the outputs, a transposed copy, softmax
# The config entries that rebuild a model and tell what its inputs and outputs are: a run's config
# holds them; a Trainer's state describes them for a model trained from Python, which has no run
# config (Trainer.description).
MODEL_KEYS = ("task", "cell", "hidden", "layers", "embed", "dtype", "seq_len")
# What load_model loads from a run folder: its state at the best held-out evaluation, or its last.
CHECKPOINTS = {"best": "best.npz", "last": "checkpoint.npz"}
OUT_FORMATS = (".csv", ".npz", ".npy")       # what write_predictions writes, by the name's extension


class TrainedModel:
    """``model`` (a SequenceModel with its trained weights) and the task config that tells how it
    reads inputs and what its outputs mean (``task``: an ArrayTask's config, or a built-in task's).
    ``config``: the run's config, or, for a model saved from Python, its MODEL_KEYS entries
    (and the task's own: copy_len, text). ``path``: the checkpoint it was loaded from, and
    ``which`` what that is: "best" (best.npz, the state at the best held-out evaluation), "last"
    (checkpoint.npz, the last state saved), "file" (a .npz of another name), or None."""

    def __init__(self, model, task, config=None, step=None, path=None, which=None):
        self.model, self.task, self.config, self.step, self.path = model, task, config or {}, step, path
        self.which = which
        self.kind, self.readout = task["kind"], task["readout"]
        self.tokens = model.tokens
        self._x_mean = np.asarray(task.get("x_mean", np.zeros(model.input_size if not self.tokens else 0)))
        self._x_std = np.asarray(task.get("x_std", np.ones(model.input_size if not self.tokens else 0)))
        self._y_mean = np.asarray(task["y_mean"]) if task.get("y_mean") is not None else None
        self._y_std = np.asarray(task["y_std"]) if task.get("y_std") is not None else None

    def __repr__(self):
        what = f"{self.task['task']}, {self.kind} at {'every step' if self.readout == 'steps' else 'the last step'}"
        state = f"{self.which} state, " if self.which in CHECKPOINTS else ""
        return f"TrainedModel({self.model!r}; {what}; {state}step {self.step})"

    # ------------------------------------------------------------ inputs
    def read_inputs(self, path):
        """(x, lengths) from a data file, read as the training data was: a .npz's ``x`` and
        ``lengths``, or every window of a CSV series' feature columns (of their first differences
        for a model trained with ``difference``)."""
        from .datafiles import inputs_from_file
        return inputs_from_file(path, self.task.get("source"))

    def predict_file(self, path, proba=False):
        """``predict`` (or ``predict_proba``) of the inputs in a data file (see ``read_inputs``);
        for a CSV series of a model trained on first differences, levels: the target's last level
        in each window plus the predicted change (see the module docstring). A .npz's ``x`` is
        taken as it is (for such a model, windows of differences, and changes come back)."""
        out, lengths, series = self._file_outputs(path)
        if proba:
            return self._proba(out, lengths)
        return self._levels(self._predictions(out, lengths), series)

    def _file_outputs(self, path, index=False):
        """(outputs (N, T, O), lengths, series) of a data file: ``series`` is None for a .npz, else
        datafiles.series_inputs' dict (with the index columns when ``index``)."""
        from .datafiles import file_format, read_npz, series_inputs
        series = None
        if file_format(path) == "npz":
            a = read_npz(path, need_y=False)
            x, lengths = a["x"], a["lengths"]
        else:
            series = series_inputs(path, self.task.get("source"), index=index)
            x, lengths = series["x"], None
        out, lengths = self._outputs(x, lengths, 512, source=path)
        return out, lengths, series

    @staticmethod
    def _levels(pred, series):
        """Predicted changes (N, 1) as levels, target[r] + change, for a model trained on first
        differences; ``pred`` as it is otherwise."""
        if series is None or series["last"] is None:
            return pred
        return series["last"][:, None] + pred

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
        """Class labels (int64: (N,) or (N, T)) or values in the data's units ((N, O) or (N, T, O)):
        what the model learnt, so for a model of first differences (``difference``), from windows
        of differences, the change over the horizon (``predict_file`` adds the last level)."""
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


def load_model(run, backend="auto", dtype=None, checkpoint="best"):
    """The model trained in ``run`` with its weights, as a TrainedModel in ``dtype`` (default: the
    one it was trained in). ``run``: a run folder, whose ``checkpoint`` "best" (best.npz, the state
    at the best held-out evaluation; checkpoint.npz when there is none yet, in a run that has not
    evaluated) or "last" (checkpoint.npz, the last state saved) is loaded; or a .npz file (a run's
    checkpoint, or a Trainer's state saved with gpurnn.save_checkpoint), loaded as it is,
    ``checkpoint`` not applying. A ValueError for another ``checkpoint``; a CheckpointError when
    the file is damaged, says something that does not fit, or does not say what model its weights
    belong to."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {', '.join(map(repr, CHECKPOINTS))} (the state at the best "
                         f"held-out evaluation, or the last saved), got {checkpoint!r}")
    path = os.fspath(run)
    if path.endswith(".npz"):
        which = {name: key for key, name in CHECKPOINTS.items()}.get(os.path.basename(path), "file")
    else:
        best = os.path.join(path, CHECKPOINTS["best"])
        which = "best" if checkpoint == "best" and os.path.exists(best) else "last"
        path = os.path.join(path, CHECKPOINTS[which])
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
    return TrainedModel(model, task, cfg, ckpt["step"], path, which)


def write_predictions(model, data_path, out_path, proba=False):
    """Write ``model``'s predictions on the data file ``data_path`` (read as ``predict_file`` reads
    it) to ``out_path``, as its extension says: .csv, .npz or .npy (see the module docstring).
    ``proba``: classification's probabilities too (.npy: they alone). Written whole or not at all;
    a ValueError, before anything is read, for another extension, a CSV of predictions at every
    step, or ``out_path`` naming the data file or the model's checkpoint. Returns what was written,
    e.g. "1797 predictions (class labels)" or "2252 forecasts of co2 (1 row ahead)"."""
    out_path = os.fspath(out_path)
    ext = os.path.splitext(out_path)[1].lower()
    if ext not in OUT_FORMATS:
        raise ValueError(f"{out_path}: predictions are written as {', '.join(OUT_FORMATS)} (by the name's "
                         f"extension), got {ext or 'a name without an extension'}")
    if ext == ".csv" and model.readout == "steps":
        raise ValueError(f"{out_path}: this model predicts at every step, (N, T, ...), which a CSV of one row per "
                         f"prediction cannot hold; write a .npz (arrays prediction, row) or a .npy")
    if proba and model.kind != "classification":
        raise ValueError("predict_proba is for classification; this model predicts values: use predict")
    for what, path in (("the data file", data_path), ("the model's checkpoint", model.path)):
        if path is not None and _same_file(out_path, path):
            raise ValueError(f"{out_path} is {what}: writing the predictions there would replace it; name "
                             f"another file")
    out, lengths, series = model._file_outputs(data_path, index=ext != ".npy")
    pred = model._levels(model._predictions(out, lengths), series)
    p = model._proba(out, lengths) if proba else None
    said = _said(model, pred, series, proba)
    if ext == ".npy":
        bare = p if proba else pred
        write_whole(out_path, lambda f: np.save(f, bare))
        return said
    columns = _columns(model, pred, p, series)
    if ext == ".npz":
        arrays = {name: value for name, value in columns}
        arrays["prediction"] = pred
        if proba:
            arrays["proba"] = p
        write_whole(out_path, lambda f: _save_arrays(f, arrays))
    else:
        write_whole(out_path, lambda f: _write_csv(f, columns, pred, p))
    return said


def _same_file(a, b):
    """Whether the paths ``a`` and ``b`` name one file (through links too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:                          # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(os.fspath(b))


def _save_arrays(f, arrays):
    """What numpy.savez writes, without passing the names as keywords (a column named "file" or
    "allow_pickle" is an array like any other)."""
    import zipfile
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, a in arrays.items():
            with z.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)


def _said(model, pred, series, proba):
    """What write_predictions wrote, in a few words."""
    n = len(pred)
    if series is not None:
        source = model.task["source"]
        h = source["horizon"]
        return f"{n} forecasts of {source['target']} ({h} row{'s' if h > 1 else ''} ahead)"
    if model.kind == "classification":
        what = "class labels and probabilities" if proba else "class labels"
    else:
        what = "values"
    return f"{n} predictions ({what}{' at every step' if model.readout == 'steps' else ''})"


def _columns(model, pred, p, series):
    """[(name, array (N,))] of what says which row each prediction belongs to (row, and for a
    series its index columns, target_row, theirs and actual); the predictions' own columns are
    added by the writer (``_write_csv``), the .npz keeps them whole."""
    from .datafiles import index_at

    if series is None:
        return [("row", np.arange(len(pred)))]
    rows = series["rows"]
    target_rows = rows + int(model.task["source"]["horizon"])
    used = {"row", "target_row", "actual", "prediction", "proba"}

    def unique(name):
        name = name or "index"
        while name in used:
            name += "_"
        used.add(name)
        return name

    index = series["index"]
    here = [(unique(name), np.array(index_at(v, rows), dtype=str)) for name, v in index.items()]
    there = [(unique(f"target_{name}"), np.array(index_at(v, target_rows), dtype=str)) for name, v in index.items()]
    actual = np.full(len(rows), np.nan)
    target, inside = series["target"], target_rows < series["length"]
    if target is not None:
        actual[inside] = target[target_rows[inside]]
    return [("row", rows)] + here + [("target_row", target_rows)] + there + [("actual", actual)]


def _write_csv(f, columns, pred, p):
    """The CSV of write_predictions into the binary file ``f``: ``columns``, then the predictions'
    (prediction or prediction_0.., or label and p_0..)."""
    names = [name for name, _ in columns]
    values = [v for _, v in columns]
    if pred.dtype.kind in "iu":
        names.append("label")
        values.append(pred)
    elif pred.ndim == 1 or pred.shape[1] == 1:
        names.append("prediction")
        values.append(pred.reshape(len(pred)))
    else:
        names += [f"prediction_{o}" for o in range(pred.shape[1])]
        values += list(pred.T)
    if p is not None:
        names += [f"p_{c}" for c in range(p.shape[1])]
        values += list(p.T)
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    w = csv.writer(text, lineterminator="\n")
    w.writerow(names)
    cells = [_cells(v) for v in values]
    w.writerows(zip(*cells))
    text.flush()
    text.detach()


def _cells(v):
    """An array's values as CSV text: numbers as Python writes them (the shortest that reads back
    the same), NaN as an empty cell, text as it is."""
    if v.dtype.kind in "iu":
        return [str(int(a)) for a in v]
    if v.dtype.kind == "f":
        return ["" if a != a else repr(float(a)) for a in v.tolist()]
    return v.tolist()


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
            if not _count(source.get("horizon")):
                raise bad("source.horizon", "a positive integer")
            if not isinstance(source.get("target"), str):
                raise bad("source.target", "the name of the column forecast")
            if not isinstance(source.get("difference", False), bool):
                raise bad("source.difference", "true or false")
            if source.get("difference") and task["output_size"] != 1:
                raise bad("output_size", "1 for a model of first differences (one change per window)")
    return dict(task, tokens=False)


def _count(v):
    return fits(v, int) and v > 0

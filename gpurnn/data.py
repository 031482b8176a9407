"""Your own data as a task: labelled or valued sequences held in arrays.

Legend: N sequences, T time steps, I input features, O outputs, C classes, B batch rows.

    task = gpurnn.ArrayTask(x, y, lengths=None, validation=0.2, seed=0)
    model = gpurnn.make_model(task, "lstm", hidden_size=64)
    trainer = gpurnn.Trainer(model, task, lr=1e-2, clip=1.0)

What ``y`` holds decides what is learnt (the readout) and how it is scored:

    y (N, O) or (N,) floats        regression read at each sequence's last step   MSE
    y (N, T, O) floats             regression at every step                       MSE
    y (N,) integers in 0..C-1      classification read at the last step           accuracy
    y (N, T) integers in 0..C-1    classification at every step                   accuracy

``x`` is (N, T, I) features, batch first as such data usually comes. With ``lengths`` (N,), row n
is ``x[n, :lengths[n]]``: its last step is ``lengths[n] - 1``, and what lies past it (padding, NaN
allowed) is never read nor scored. Integers in ``y`` always mean class labels: to regress on
counts, pass them as floats.

A fraction ``validation`` of the sequences is held out, chosen by ``seed`` (``holdout="random"``)
or the last ones (``holdout="last"``, for windows cut from one series, so that no held-out target
was seen in training). Features, and regression targets, are standardised with the mean and
standard deviation of the training part (``normalize``); losses are computed on that scale, and
the metric a person reads, MSE, is given in the data's own units. Predictions (``gpurnn.load_model``)
come back in those units too.

Each training batch is B sequences of the training part drawn by the Trainer's generator (distinct
within a batch while B allows), so a resumed run draws what an uninterrupted one would. The
held-out set is the whole validation part, in order.

The baseline is the score of a naive prediction on the held-out part: the training mean
(regression), the most common training class (classification), or whatever ``naive`` gives
(a series' last value, see gpurnn.datafiles). ``other_naive`` adds more naive predictions (a
series' seasonal-naive one); ``task.baselines`` lists every (name, score), the first being
``(task.naive_name, task.baseline)``.
"""

import numpy as np

from ._checks import Worded
from .tasks import Batch, Task

READOUTS = ("last", "steps")
HOLDOUTS = ("random", "last")
# The largest magnitude a value may have, in the data and once standardised: float32's, which the
# model computes in. (Scales are computed, and errors reported in the data's units, in float64.)
VALUE_LIMIT = float(np.finfo(np.float32).max)                    # 3.4e38
LIMIT_REASON = "beyond float32's range, which the model computes in"
# A class label is an output unit: labels much larger than the number of labels given are a
# numbering to compress (np.unique(y, return_inverse=True)), not classes to learn.
CLASS_LIMIT = 1024
# Bytes per value of x (and y) that reading, checking and standardising data need at their peak:
# the array as read, its float64 copy, the centred and the scaled copies, the float32 result.
READ_BYTES_PER_VALUE = 40


class DataError(Worded, ValueError):
    """Data that cannot be trained on: the message names the file or array and what was expected
    (and the settings that read it, as ``Worded`` says)."""


def _fail(source, message):
    return DataError(f"{source}: {message}" if source else message)


def check_arrays(x, y, lengths=None, num_classes=None, source=None):
    """``(x, y, lengths, kind, readout, num_classes)`` after every check the data needs, each failing with a
    one-line DataError naming ``source`` (a file, or None), the array and what was expected.

    x becomes float64 (N, T, I), y float64 (N, O) / (N, T, O) or int64 (N,) / (N, T), lengths
    int64 (N,) (T for every row when not given); kind is "regression" or "classification".
    Values past a row's length are replaced by zeros (they may be NaN, or labels such as -100)."""
    x, lengths, valid = check_inputs(x, lengths, source)
    N, T, _ = x.shape
    if N < 2:
        raise _fail(source, "array 'x' holds 1 sequence; training needs at least 2 (some to train on, some to "
                            "hold out)")
    y = np.asarray(y)
    if y.dtype.kind in "iu":
        kind = "classification"
        if y.dtype.kind == "u" and y.size and y.max() > np.iinfo(np.int64).max:
            where = tuple(int(i) for i in np.argwhere(y == y.max())[0])
            raise _fail(source, f"array 'y' holds class label {y.max()} at index {where}: beyond int64; number "
                                f"the classes 0..C-1 (np.unique(y, return_inverse=True))")
        if y.shape == (N,):
            readout, scored = "last", np.ones(N, bool)
        elif y.shape == (N, T):
            readout, scored = "steps", valid
        else:
            raise _fail(source, f"array 'y' holds integer class labels, so it must be (N,) = ({N},), one label "
                                f"per sequence, or (N, T) = ({N}, {T}), one per step; got shape {y.shape}")
        y = np.where(scored, y, 0).astype(np.int64)
        low, high = int(y[scored].min()), int(y[scored].max())
        if num_classes is None:
            labels = int(scored.sum())
            if high >= max(CLASS_LIMIT, labels):
                where = np.argwhere(scored & (y == high))[0]
                raise _fail(source, f"array 'y' holds class label {high} (at index {tuple(int(i) for i in where)}): "
                                    f"the model has one output per class 0..C-1, so {labels} labels would need "
                                    f"{high + 1} outputs; number the classes 0..C-1 (np.unique(y, "
                                    f"return_inverse=True))")
            num_classes = max(high + 1, 2)
        if low < 0 or high >= num_classes:
            where = np.argwhere(scored & ((y < 0) | (y >= num_classes)))[0]
            raise _fail(source, f"array 'y' holds class labels, which must lie in 0..{num_classes - 1}, got "
                                f"{y[tuple(where)]} at index {tuple(int(i) for i in where)}")
    elif y.dtype.kind == "f":
        kind = "regression"
        if y.shape == (N,):
            y = y[:, None]
        if y.ndim == 2 and y.shape[0] == N:
            readout = "last"
        elif y.ndim == 3 and y.shape[:2] == (N, T):
            readout = "steps"
            y = np.where(valid[..., None], y, 0)
        else:
            raise _fail(source, f"array 'y' holds values, so it must be (N, O) = ({N}, O), read at each "
                                f"sequence's last step, or (N, T, O) = ({N}, {T}, O), one per step; got shape "
                                f"{y.shape}")
        if y.shape[-1] < 1:
            raise _fail(source, f"array 'y' of shape {y.shape} holds no value per target")
        y = y.astype(np.float64)
        _check_values(y, "y", source)
    else:
        raise _fail(source, f"array 'y' must hold integer class labels or floating-point values, got dtype "
                            f"{y.dtype}")
    return x, y, lengths, kind, readout, num_classes


def check_inputs(x, lengths=None, source=None, features=None):
    """(x as float64 (N, T, I) with zeros past each row's length, lengths int64 (N,), valid (N, T))
    after checking them (a DataError naming ``source``); ``features``: the I a model expects."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise _fail(source, f"array 'x' must hold numbers, got dtype {x.dtype}")
    if x.ndim != 3:
        raise _fail(source, f"array 'x' must be (N, T, I): sequences x steps x features, got shape {x.shape}"
                    + ("; with one feature per step, add its axis: x[..., None]" if x.ndim == 2 else ""))
    N, T, I = x.shape
    if N < 1 or T < 1 or I < 1:
        raise _fail(source, f"array 'x' of shape {x.shape} holds no sequence, sequences of no step, or steps of "
                            f"no feature")
    if features is not None and I != features:
        raise _fail(source, f"array 'x' must have {features} features per step, as the model was trained on, got "
                            f"shape {x.shape}")
    if lengths is None:
        lengths = np.full(N, T, np.int64)
    else:
        lengths = np.asarray(lengths)
        if lengths.dtype.kind not in "iu" or lengths.shape != (N,):
            raise _fail(source, f"array 'lengths' must be (N,) = ({N},) integers, got shape {lengths.shape} "
                                f"dtype {lengths.dtype}")
        bad = np.flatnonzero((lengths < 1) | (lengths > T))
        if bad.size:
            raise _fail(source, f"array 'lengths' must lie in 1..T = 1..{T}, got {lengths[bad[0]]} at "
                                f"index {bad[0]} ({bad.size} out of range)")
        lengths = lengths.astype(np.int64)
    valid = np.arange(T)[None, :] < lengths[:, None]                     # (N, T)
    x = np.where(valid[..., None], x, 0).astype(np.float64)
    _check_values(x, "x", source)
    return x, lengths, valid


def standardise(x, valid, mean, std, source=None):
    """x (N, T, I) scaled by the training part's statistics, zeros past each row's length, in
    float32: what the model reads, in training (ArrayTask) and in prediction (TrainedModel). A
    DataError naming ``source`` when a scaled value is beyond float32 (new data far outside the
    training part's range)."""
    with np.errstate(over="ignore"):
        z = np.where(valid[..., None], (x - mean) / std, 0)
    big = ~(np.abs(z) <= VALUE_LIMIT)
    if big.any():
        where = tuple(int(i) for i in np.argwhere(big)[0])
        raise _fail(source, f"array 'x' at index {where} holds {x[where]:.3g}, which the training data's scale "
                            f"(feature {where[2]}: mean {mean[where[2]]:.3g}, deviation {std[where[2]]:.3g}) makes "
                            f"{z[where]:.3g}, {LIMIT_REASON}; these inputs are not on the scale the model was "
                            f"trained on")
    return z.astype(np.float32)


def _check_values(a, name, source, limit=VALUE_LIMIT):
    """A DataError naming ``source`` when array ``name`` holds a NaN or infinite value, or one whose
    magnitude is above ``limit``."""
    bad = ~np.isfinite(a)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise _fail(source, f"array {name!r} holds {int(bad.sum())} NaN or infinite value(s) (the first at index "
                            f"{where}); remove or fill them" + (", or mark them as padding with 'lengths'"
                                                              if name == "x" else ""))
    big = np.abs(a) > limit
    if big.any():
        where = tuple(int(i) for i in np.argwhere(big)[0])
        raise _fail(source, f"array {name!r} holds {a[where]:.3g} at index {where}, {LIMIT_REASON} "
                            f"(±{limit:.2g}); rescale it (divide by a power of ten)")


def check_room(source, need, what, remedy, key=None):
    """A DataError naming ``source`` (a file, or None) when ``need`` bytes (``what`` takes them) are
    more than the memory available here, before they are allocated. ``remedy`` says what to change:
    a string, or a function of the naming function (``Worded``) when it names the setting ``key``."""
    from .backend import available_memory

    available = available_memory(False)
    if available is None or need <= available:
        return
    said = (f"{f'{source}: ' if source else ''}{what} needs about {size_text(need)}, more than the "
            f"{size_text(available)} of memory available here")
    raise DataError(lambda name: f"{said}; {remedy(name) if callable(remedy) else remedy}", key)


def size_text(n):
    """Bytes as a person reads them: MiB, GiB or TiB, three significant digits."""
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 2 ** 20:.3g} MiB"


def split_indices(n, validation, holdout="random", seed=0):
    """(training rows, held-out rows), each sorted: ``round(n * validation)`` held out, at least one
    of each."""
    if not isinstance(validation, (int, float)) or isinstance(validation, bool) or not 0 < validation < 1:
        raise ValueError(f"validation must be a fraction between 0 and 1 (exclusive), got {validation!r}")
    if holdout not in HOLDOUTS:
        raise ValueError(f"unknown holdout {holdout!r}; expected one of {', '.join(HOLDOUTS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    n_val = min(max(int(round(n * validation)), 1), n - 1)
    if holdout == "last":
        order = np.arange(n)
    else:
        order = np.random.default_rng([int(seed), 0x5917]).permutation(n)
    return np.sort(order[:n - n_val]), np.sort(order[n - n_val:])


class ArrayTask(Task):
    """Sequences in arrays as a task (see the module docstring). ``naive``: the naive prediction
    the baseline scores, in y's shape as read ((N, O) for y (N,)) and units (default: the training
    mean, or the most common class); ``naive_name`` says what it is. ``other_naive``: a list of
    (name, prediction) of further naive predictions, each in y's shape and units, scored the same
    way; only their held-out part is read (elsewhere they may hold NaN). ``baselines``: every
    (name, score) on the held-out part, ``(naive_name, baseline)`` first. ``source``: a JSON-able
    dict that says where the data came from (kept in the task's config and so in checkpoints)."""

    name = "data"

    def __init__(self, x, y, lengths=None, validation=0.2, seed=0, holdout="random", normalize=True,
                 num_classes=None, naive=None, naive_name=None, other_naive=None, source=None):
        named = (source or {}).get("file")          # errors name the file the arrays came from
        x, y, lengths, kind, readout, num_classes = check_arrays(x, y, lengths, num_classes, source=named)
        N, T, I = x.shape
        if naive is not None:
            naive = np.asarray(naive)
            if naive.shape != y.shape:
                raise ValueError(f"naive must have the shape of y as read, {y.shape}, got {naive.shape}")
        other_naive = [(str(name), np.asarray(p)) for name, p in (other_naive or [])]
        for name, p in other_naive:
            if p.shape != y.shape:
                raise ValueError(f"the naive prediction {name!r} must have the shape of y as read, {y.shape}, "
                                 f"got {p.shape}")
        super().__init__(T)
        self.kind, self.readout, self.num_sequences = kind, readout, N
        self.lengths = lengths
        self.train_rows, self.eval_rows = split_indices(N, validation, holdout, seed)
        self.validation, self.holdout, self.split_seed = float(validation), holdout, int(seed)
        self.source = source
        self.input_size = I
        valid = np.arange(T)[None, :] < lengths[:, None]
        scored = valid if readout == "steps" else (np.arange(T)[None, :] == lengths[:, None] - 1)
        self._scored = scored                                          # (N, T)

        def part(a, rows):
            """The scored targets of ``rows``: one per row (last step), or every valid step's."""
            return a[rows] if readout == "last" else a[rows][scored[rows]]

        self.x_mean, self.x_std = np.zeros(I), np.ones(I)
        if normalize:
            steps = x[self.train_rows][valid[self.train_rows]]         # every valid training step: (S, I)
            self.x_mean, self.x_std = mean_and_deviation(steps)
        self.x = standardise(x, valid, self.x_mean, self.x_std, named)

        if kind == "classification":
            self.loss, self.metric, self.higher_is_better = "cross_entropy", "accuracy", True
            self.output_size = self.num_classes = int(num_classes)
            self.y_mean = self.y_std = None
            self.y = y
            common = int(np.bincount(part(y, self.train_rows), minlength=self.num_classes).argmax())
            if naive is None:
                naive = np.full(y.shape, common, np.int64)
                naive_name = "the most common class"
            def score_of(p):
                return float(np.mean(part(y, self.eval_rows) == part(p, self.eval_rows)))
        else:
            self.loss, self.metric, self.higher_is_better = "mse", "mse", False
            self.num_classes = None
            self.output_size = O = y.shape[-1]
            target_rows = part(y, self.train_rows)
            self.y_mean, self.y_std = np.zeros(O), np.ones(O)
            if normalize:
                self.y_mean, self.y_std = mean_and_deviation(target_rows)
            self.y = ((y - self.y_mean) / self.y_std).astype(np.float32)
            if naive is None:
                naive = np.broadcast_to(target_rows.mean(axis=0), y.shape)
                naive_name = "the training mean"
            def score_of(p):
                return float(np.mean((part(p, self.eval_rows) - part(y, self.eval_rows)) ** 2))
        self.baseline = score_of(naive)
        self.naive_name = naive_name or "the naive prediction"
        self.baselines = [(self.naive_name, self.baseline)]
        for name, p in other_naive:
            if not np.isfinite(part(p, self.eval_rows)).all():
                raise ValueError(f"the naive prediction {name!r} must be finite on the held-out part")
            self.baselines.append((name, score_of(p)))
        self.normalize = bool(normalize)

    # ------------------------------------------------------------ batches
    def rows_batch(self, rows):
        """The Batch of the given sequences, time first: x (T, B, I), target (T, B, O) or (T, B),
        mask (T, B) with 1 on the scored steps."""
        x = np.ascontiguousarray(self.x[rows].transpose(1, 0, 2))
        mask = np.ascontiguousarray(self._scored[rows].T.astype(np.float32))
        if self.readout == "steps":
            y = self.y[rows]
            target = np.ascontiguousarray(y.transpose(1, 0, 2) if y.ndim == 3 else y.T)
        else:
            last = self.lengths[rows] - 1
            shape = (self.seq_len, len(rows)) + self.y.shape[1:]
            target = np.zeros(shape, self.y.dtype)
            target[last, np.arange(len(rows))] = self.y[rows]
        return Batch(x, target, mask)

    def batch(self, rng, batch_size, split="train"):
        pool = self.train_rows if split == "train" else self.eval_rows
        B = int(batch_size)
        picked = rng.choice(len(pool), size=B, replace=B > len(pool))
        return self.rows_batch(pool[picked])

    def eval_batches(self, seed, n_sequences, batch_size):
        """The whole held-out part, in order (``seed`` and ``n_sequences`` do not apply: the split
        fixed it)."""
        rows = self.eval_rows
        return [self.rows_batch(rows[a:a + batch_size]) for a in range(0, len(rows), batch_size)]

    @property
    def eval_size(self):
        return len(self.eval_rows)

    # ------------------------------------------------------------ scoring
    def tally(self, out, target, mask, xp):
        """Regression: Σ over the scored steps of the squared error in the data's units, averaged
        over the outputs (MSE's numerator); classification: the correct predictions."""
        if self.kind == "classification":
            return super().tally(out, target, mask, xp)
        scale = xp.asarray(self.y_std ** 2)                              # float64: y_std² may pass float32
        sq = ((out - target).astype(np.float64) ** 2 * scale).mean(axis=-1)
        return (sq * mask).sum()

    def score(self, loss, tally=None):
        return tally

    def describe(self):
        what = (f"{self.num_classes} classes" if self.kind == "classification"
                else f"{self.output_size} output{'s' if self.output_size > 1 else ''}")
        where = "every step" if self.readout == "steps" else "the last step"
        ragged = "" if (self.lengths == self.seq_len).all() else f" (lengths {self.lengths.min()}..{self.seq_len})"
        origin = (self.source or {}).get("file", "arrays")
        changes = " (first differences: the change is learnt, scored as levels)" if (self.source or {}).get(
            "difference") else ""
        scores = ", ".join(f"baseline ({name}) {self.metric} {value:.4g}" for name, value in self.baselines)
        return (f"data {origin}{changes}: {self.num_sequences} sequences of {self.seq_len} steps{ragged} x "
                f"{self.input_size} features, {what} read at {where}; {len(self.train_rows)} to train on, "
                f"{len(self.eval_rows)} held out ({self.holdout}); {scores}")

    def config(self):
        """What rebuilds the model around its weights and reads new inputs as training did."""
        cfg = dict(super().config(), kind=self.kind, readout=self.readout, input_size=self.input_size,
                   output_size=self.output_size, normalize=self.normalize,
                   x_mean=self.x_mean.tolist(), x_std=self.x_std.tolist(),
                   validation=self.validation, holdout=self.holdout, split_seed=self.split_seed,
                   baseline=self.baseline, naive=self.naive_name,
                   baselines=[[name, value] for name, value in self.baselines])
        if self.kind == "regression":
            cfg.update(y_mean=self.y_mean.tolist(), y_std=self.y_std.tolist())
        if self.source is not None:
            cfg["source"] = self.source
        return cfg


def mean_and_deviation(a):
    """The mean and standard deviation of each column of ``a`` (S, I), computed on the column
    divided by its largest magnitude and scaled back, so that neither overflows nor underflows
    (a feature of 1e-170 has squares of 0 in float64; one of 1e200, of inf); a constant column
    gets the deviation 1: it keeps its scale."""
    scale = np.abs(a).max(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    unit = a / scale
    std = unit.std(axis=0) * scale
    return unit.mean(axis=0) * scale, np.where(std > 0, std, 1.0)

"""Tasks: deterministic data, generated or read locally from a seed, and how to score a model on it.

Legend: T time steps, B batch rows, I input features, V vocabulary size, O outputs per step.

Every task makes batches ``Batch(x, target, mask)`` on the host (NumPy):

    x       (T, B, I) float32 features, or (T, B) int64 token ids (``task.tokens`` is True)
    target  (T, B, O) float32 for a squared-error task, or (T, B) int64 classes for cross-entropy
    mask    (T, B) float32: 1 where a step is scored, 0 where it is not

The loss is the mean over the scored steps (``task.loss`` is "mse" or "cross_entropy"), and
``task.metric`` names the number a person reads (MSE, accuracy, bits per character) next to
``task.baseline``, the score of the best model that ignores the input's long-range content.

    adding  the adding problem (Hochreiter & Schmidhuber 1997): T pairs (value ~ U(0, 1), marker);
            one marker in each half; the target, read at the last step, is the sum of the two marked
            values. Always answering the mean 1.0 scores MSE 1/6 = 0.167.
    copy    ``copy_len`` symbols out of 8, then blanks, then a delimiter, then ``copy_len`` more
            steps during which the symbols must be reproduced in order. Guessing scores
            accuracy 1/8 and cross-entropy ln 8 = 2.08 nats per symbol.
    charlm  next-character prediction on a UTF-8 text (``text_path``), by default the docstrings of
            Python's own standard library gathered at run time; windows of T + 1 characters start at
            random offsets; the last tenth of the text is held out for evaluation. Scored in bits per
            character; the baseline is the entropy of the character frequencies (a unigram model).
"""

import hashlib
import importlib
import inspect
import math
import warnings
from collections import namedtuple

import numpy as np

from ._checks import Worded

Batch = namedtuple("Batch", ["x", "target", "mask"])

TASKS = ("adding", "copy", "charlm")


class TaskError(Worded, ValueError):
    """A task that cannot be made from the arguments given; ``key`` names the one to change."""


class Task:
    name = None
    tokens = False          # x holds token ids (an embedding reads it) rather than features
    input_size = None       # features per step (tokens False) or vocabulary size (tokens True)
    output_size = None
    loss = None             # "mse" | "cross_entropy"
    readout = "steps"       # where targets are scored: "steps" (wherever the mask says) or "last" (the last step)
    metric = None           # what ``score`` returns, e.g. "mse"
    higher_is_better = False
    baseline = None
    naive_name = "the naive prediction"     # what scores ``baseline``

    def __init__(self, seq_len):
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        self.seq_len = int(seq_len)

    def batch(self, rng, batch_size, split="train"):
        """One Batch of ``batch_size`` sequences drawn with the NumPy Generator ``rng``; ``split`` is
        "train" or "eval" (tasks that read a text hold part of it out; generated tasks ignore it)."""
        raise NotImplementedError

    def eval_batches(self, seed, n_sequences, batch_size):
        """A fixed held-out set: the same batches for the same seed, whatever training has drawn."""
        rng = np.random.default_rng([int(seed), 0x5EED])
        out, left = [], int(n_sequences)
        while left > 0:
            b = min(batch_size, left)
            out.append(self.batch(rng, b, split="eval"))
            left -= b
        return out

    def tally(self, out, target, mask, xp):
        """The sum over the scored steps that ``score`` turns into the metric: for classification
        the correct predictions (argmax of ``out``), else nothing (the metric follows from the loss).
        out (T, B, O), target (T, B) or (T, B, O), mask (T, B); arrays of the array module ``xp``.
        Returns a number or a 0-d array of ``xp``, not read: the Trainer reads it with the loss."""
        if self.loss != "cross_entropy":
            return 0.0
        return ((out.argmax(axis=-1) == target) * mask).sum(dtype=np.float64)

    def score(self, loss, tally=None):
        """The task metric from the mean loss and the mean of ``tally`` over the scored steps (for
        classification the fraction correct)."""
        return loss

    def describe(self):
        return f"{self.name}: baseline {self.metric} {self.baseline:.4g}"

    def config(self):
        """What rebuilds this task (stored in checkpoints)."""
        return {"task": self.name, "seq_len": self.seq_len}


class Adding(Task):
    name, loss, metric, readout = "adding", "mse", "mse", "last"
    input_size, output_size = 2, 1
    baseline = 1.0 / 6.0
    naive_name = "answering the mean"

    def __init__(self, seq_len=50):
        super().__init__(seq_len)
        if self.seq_len < 2:
            raise ValueError(f"the adding problem needs seq_len >= 2 (one marker per half), got {self.seq_len}")

    def batch(self, rng, batch_size, split="train"):
        T, B = self.seq_len, int(batch_size)
        values = rng.uniform(0.0, 1.0, size=(T, B))
        half = T // 2
        first = rng.integers(0, half, size=B)             # one marker in the first half
        second = rng.integers(half, T, size=B)            # and one in the second
        markers = np.zeros((T, B))
        rows = np.arange(B)
        markers[first, rows] = 1.0
        markers[second, rows] = 1.0
        x = np.stack([values, markers], axis=2).astype(np.float32)
        target = np.zeros((T, B, 1), np.float32)
        target[-1, :, 0] = values[first, rows] + values[second, rows]
        mask = np.zeros((T, B), np.float32)
        mask[-1] = 1.0                                     # scored at the last step only
        return Batch(x, target, mask)


class Copy(Task):
    """Tokens: 0 blank, 1..8 symbols, 9 delimiter."""
    name, loss, metric, higher_is_better = "copy", "cross_entropy", "accuracy", True
    tokens = True
    n_symbols = 8
    input_size = output_size = n_symbols + 2
    baseline = 1.0 / n_symbols
    naive_name = "chance"

    def __init__(self, seq_len=50, copy_len=10):
        super().__init__(seq_len)
        self.copy_len = int(copy_len)
        if self.copy_len < 1 or self.seq_len < 2 * self.copy_len + 1:
            raise ValueError(f"the copy task needs seq_len >= 2 * copy_len + 1 = {2 * self.copy_len + 1} "
                             f"(symbols, delimiter, recall), got seq_len {self.seq_len}, copy_len {self.copy_len}")
        self.baseline_loss = math.log(self.n_symbols)

    def batch(self, rng, batch_size, split="train"):
        T, B, n = self.seq_len, int(batch_size), self.copy_len
        symbols = rng.integers(1, self.n_symbols + 1, size=(n, B))
        x = np.zeros((T, B), np.int64)
        x[:n] = symbols
        x[T - n - 1] = self.n_symbols + 1                  # the delimiter: "now recall"
        target = np.zeros((T, B), np.int64)
        target[T - n:] = symbols
        mask = np.zeros((T, B), np.float32)
        mask[T - n:] = 1.0
        return Batch(x, target, mask)

    def score(self, loss, tally=None):
        return tally

    def describe(self):
        return (f"copy: baseline accuracy {self.baseline:.3f}, "
                f"cross-entropy {self.baseline_loss:.3f} nats per symbol")

    def config(self):
        return dict(super().config(), copy_len=self.copy_len)


class CharLM(Task):
    name, loss, metric = "charlm", "cross_entropy", "bits_per_char"
    naive_name = "a unigram model"
    tokens = True

    def __init__(self, seq_len=100, text_path=None, text=None):
        super().__init__(seq_len)
        self.text_path = None if text_path is None else str(text_path)
        if text is None:
            text = stdlib_docstrings() if self.text_path is None else read_corpus(self.text_path)
        self.text = text
        self.text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()   # tells an edited text on resume
        self.chars = "".join(sorted(set(text)))
        self.input_size = self.output_size = len(self.chars)
        index = {c: i for i, c in enumerate(self.chars)}
        self.data = np.array([index[c] for c in text], dtype=np.int64)
        split = int(len(self.data) * 0.9)
        self.train_data, self.eval_data = self.data[:split], self.data[split:]
        for part, name in ((self.train_data, "training"), (self.eval_data, "held-out")):
            if len(part) < self.seq_len + 1:
                raise TaskError(lambda say, part=name: f"the text has {len(text)} characters: too few for "
                                                       f"{say('seq_len', self.seq_len)} (its {part} part needs "
                                                       f"at least seq_len + 1); use a longer text or a shorter "
                                                       f"{say('seq_len')}", "seq_len")
        counts = np.bincount(self.train_data, minlength=len(self.chars)).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        self.baseline = float(-(p * np.log2(p)).sum())     # unigram entropy, bits per character

    def batch(self, rng, batch_size, split="train"):
        data = self.train_data if split == "train" else self.eval_data
        T, B = self.seq_len, int(batch_size)
        starts = rng.integers(0, len(data) - T, size=B)
        windows = data[starts[None, :] + np.arange(T + 1)[:, None]]   # (T + 1, B)
        return Batch(windows[:-1], windows[1:].copy(), np.ones((T, B), np.float32))

    def score(self, loss, tally=None):
        return loss / math.log(2.0)                         # nats -> bits

    def encode(self, text):
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(f"characters {unknown!r} are not in the model's vocabulary")
        return np.array([index[c] for c in text], dtype=np.int64)

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)

    def describe(self):
        source = self.text_path or "Python standard library docstrings"
        return (f"charlm: {len(self.text):,} characters from {source}, vocabulary {len(self.chars)}, "
                f"baseline (unigram) {self.baseline:.3f} bits per character")

    def config(self):
        return dict(super().config(), text=self.text_path)


# Modules whose import has no side effects, in a fixed order, so the corpus is the same on every run
# of the same Python version.
STDLIB_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "enum", "fnmatch", "fractions", "functools", "getopt", "gettext", "glob", "graphlib",
    "gzip", "hashlib", "heapq", "hmac", "html", "inspect", "io", "ipaddress", "itertools", "json",
    "keyword", "linecache", "locale", "logging", "math", "mimetypes", "numbers", "operator",
    "optparse", "os", "pathlib", "pickle", "pprint", "queue", "quopri", "random", "re", "sched",
    "secrets", "selectors", "shlex", "shutil", "signal", "socket", "statistics", "string",
    "stringprep", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "traceback", "types", "typing", "unittest", "urllib.parse", "uuid", "warnings",
    "weakref", "zipfile",
)


# Bytes of memory per byte of a text while it is indexed: the str (up to 4 bytes a character), its
# int64 ids and their training and held-out parts.
TEXT_BYTES_PER_BYTE = 32


def read_corpus(path):
    """The UTF-8 text of the file ``path``, read only when it is a regular file that fits in memory
    once indexed (gpurnn/files.py says why); a TaskError naming the text otherwise."""
    from .backend import available_memory
    from .files import read_text

    available = available_memory(False)
    limit = available // TEXT_BYTES_PER_BYTE if available else 1 << 40
    try:
        return read_text(path, limit, "the text")
    except OSError as e:
        why = f"the text {path} cannot be read ({e.strerror or e})"
    except ValueError as e:
        why = str(e)            # not a regular file, not UTF-8, or more than the memory here can index
    raise TaskError(lambda say: f"{why}; give a UTF-8 text file with {say('text')}", "text")


def stdlib_docstrings(modules=STDLIB_MODULES):
    """The docstrings of the given standard-library modules and of their public classes, functions
    and methods, in a fixed order: a corpus of English prose and code that needs no download."""
    parts, seen = [], set()

    def add(obj):
        doc = inspect.getdoc(obj)
        if doc and doc not in seen:
            seen.add(doc)
            parts.append(doc.strip())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            add(module)
            for attr in sorted(vars(module)):
                obj = getattr(module, attr, None)
                if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                    continue
                if inspect.isclass(obj) or inspect.isfunction(obj):
                    add(obj)
                if inspect.isclass(obj):
                    for meth in sorted(vars(obj)):
                        if not meth.startswith("_"):
                            member = vars(obj)[meth]
                            if inspect.isfunction(member):
                                add(member)
    return "\n\n".join(parts) + "\n"


def make_task(name, seq_len, text_path=None, copy_len=10):
    """A task by name: "adding", "copy" or "charlm"."""
    if name == "adding":
        return Adding(seq_len)
    if name == "copy":
        return Copy(seq_len, copy_len=copy_len)
    if name == "charlm":
        return CharLM(seq_len, text_path=text_path)
    raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")

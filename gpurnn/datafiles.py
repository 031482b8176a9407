"""Data files: what ``gpurnn train --data FILE`` and ``gpurnn predict RUN --data FILE`` read.

Legend: N sequences, T time steps (``seq_len``), I features, L rows of a series, h ``horizon``.

    .npz   arrays ``x`` (N, T, I), ``y`` (see gpurnn.data for its shapes) and optionally ``lengths``
           (N,); ``y`` may be left out of a file that is only predicted on.
    .csv   one time series: a header line of column names, then one row per time step, oldest
           first. ``target`` names the column to forecast; the features are ``features`` (a list
           of columns) or, by default, every column whose values are all numbers (so a date column
           is left out), the target included. Window n is rows n .. n + T - 1 of the features,
           and its target the target column ``horizon`` rows after the window's last row:

               x[n] = features[n : n + T]            (T, I)
               y[n] = target[n + T - 1 + h]           one value

           The naive forecast is the last value, target[n + T - 1]. For prediction every window
           is cut, L - T + 1 of them, the last h forecasting beyond the end of the file.

Every problem raises a one-line DataError naming the file, the array or column, and what was
expected. Nothing here writes anything.
"""

import csv
import hashlib
import os
import zipfile

import numpy as np

from .data import ArrayTask, DataError

NPZ_ARRAYS = ("x", "y", "lengths")


def is_series(path):
    """Whether ``path`` names a CSV series (by its extension) rather than arrays."""
    return str(path).lower().endswith(".csv")


def file_format(path):
    """"npz" or "csv", from the name; a DataError for anything else or a missing file."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in (".npz", ".csv"):
        raise DataError(f"{path}: expected a .npz file (arrays x, y, lengths) or a .csv time series, "
                        f"got a {ext or 'file without an extension'}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    return ext[1:]


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_npz(path, need_y=True):
    """{"x", "y" (None when absent and not needed), "lengths" (or None)} from a .npz, checked."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a .npz file (a .npz is a zip archive of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            unknown = sorted(set(names) - set(NPZ_ARRAYS))
            if unknown:
                raise DataError(f"{path}: unexpected array(s) {', '.join(map(repr, unknown))}; a data file holds "
                                f"'x', 'y' and optionally 'lengths'")
            for name in ("x", "y") if need_y else ("x",):
                if name not in names:
                    held = ", ".join(map(repr, names)) or "none"
                    raise DataError(f"{path}: array {name!r} is missing (it holds {held}); "
                                    f"expected 'x' (N, T, I), 'y' and optionally 'lengths' (N,)")
            arrays = dict.fromkeys(NPZ_ARRAYS)
            for name in names:
                try:
                    arrays[name] = z[name]
                except ValueError:          # an object array: only pickle could read it
                    raise DataError(f"{path}: array {name!r} holds Python objects, not numbers; save it as a numeric "
                                    f"array (e.g. x.astype('float32'))") from None
    except DataError:
        raise
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    return arrays


def read_csv_columns(path, columns=None):
    """(header, {column: float64 array}) of a CSV with a header line. ``columns``: the ones that
    must be numbers (a DataError names the line and column of the first that is not); None: every
    column, those with a value that is not a number left out."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV ({e})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a valid CSV ({e})") from None
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header line of column names and rows of values, got "
                        f"{len(rows)} line(s)")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        twice = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{path}: column name(s) {', '.join(map(repr, twice))} appear more than once in the header")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {number} has {len(row)} values, the header has {len(header)} columns")
    wanted = header if columns is None else list(columns)
    for name in wanted:
        if name not in header:
            raise DataError(f"{path}: no column {name!r}; the columns are {', '.join(map(repr, header))}")
    out = {}
    for name in wanted:
        j = header.index(name)
        values = np.empty(len(rows) - 1)
        for i, row in enumerate(rows[1:]):
            text = row[j].strip()
            try:
                values[i] = float(text)
            except ValueError:
                if columns is None:      # not a numeric column: not a feature by default
                    values = None
                    break
                shown = repr(text) if text else "an empty value"
                raise DataError(f"{path}: column {name!r}, line {i + 2}: {shown} is not a number") from None
            if not np.isfinite(values[i]):
                raise DataError(f"{path}: column {name!r}, line {i + 2}: {text!r} is not a finite number; "
                                f"fill or drop that row")
        if values is not None:
            out[name] = values
    return header, out


def series_windows(series, seq_len, horizon=None):
    """Windows of a series (L, I): x (N, T, I) with N = L - T + 1 - h (every window when
    ``horizon`` is None, N = L - T + 1), x[n] = series[n : n + T]."""
    L, T = len(series), int(seq_len)
    n = L - T + 1 - (horizon or 0)
    view = np.lib.stride_tricks.sliding_window_view(series, T, axis=0)      # (L - T + 1, I, T)
    return np.ascontiguousarray(view[:n].transpose(0, 2, 1))


def csv_series(path, target, seq_len, horizon=1, features=None):
    """The windows of a CSV series and their targets (see the module docstring):
    {"x" (N, T, I), "y" (N, 1), "naive" (N, 1): the last value, "features": names}."""
    seq_len, horizon = int(seq_len), int(horizon)
    if target is None:
        raise DataError(lambda name: f"{path}: a CSV series needs {name('target')}, the column to forecast", "target")
    wanted = None if features is None else list(dict.fromkeys(list(features) + [target]))
    header, columns = read_csv_columns(path, wanted)
    if target not in header:
        raise DataError(lambda name: f"{path}: no column {target!r} ({name('target')}); the columns are "
                                     f"{', '.join(map(repr, header))}", "target")
    if target not in columns:
        read_csv_columns(path, [target])             # raises, naming the first value that is not a number
    names = list(features) if features is not None else [h for h in header if h in columns]
    L = len(columns[target])
    if L < seq_len + horizon + 1:
        raise DataError(lambda name: f"{path}: {L} rows are too few for {name('seq_len', seq_len)} and "
                                     f"{name('horizon', horizon)}: two windows (one to train on, one to hold out) "
                                     f"need at least seq_len + horizon + 1 = {seq_len + horizon + 1}", "seq_len")
    series = np.stack([columns[n] for n in names], axis=1)                   # (L, I)
    x = series_windows(series, seq_len, horizon)
    N = len(x)
    tgt = columns[target]
    y = tgt[seq_len - 1 + horizon: seq_len - 1 + horizon + N, None]
    naive = tgt[seq_len - 1: seq_len - 1 + N, None]
    return {"x": x, "y": y, "naive": naive, "features": names}


def task_from_file(path, seq_len=None, target=None, horizon=None, features=None, validation=0.2, seed=0):
    """The ArrayTask of a data file, its ``source`` recording how it was read (so that prediction
    reads new files the same way). ``seq_len``, ``target``, ``horizon`` and ``features`` apply to
    CSV series only; a DataError says so when given with a .npz."""
    fmt = file_format(path)
    source = {"file": os.path.abspath(path), "format": fmt}
    if fmt == "npz":
        for key, value in (("seq_len", seq_len), ("target", target), ("horizon", horizon), ("features", features)):
            if value is not None:
                raise DataError(lambda name, key=key: f"{path}: {name(key)} applies to a CSV series; a .npz file's "
                                                      f"arrays give the sequences as they are: leave it out", key)
        a = read_npz(path)
        return ArrayTask(a["x"], a["y"], a["lengths"], validation=validation, seed=seed, source=source)
    seq_len = 32 if seq_len is None else int(seq_len)
    horizon = 1 if horizon is None else int(horizon)
    s = csv_series(path, target, seq_len, horizon, features)
    source.update(target=target, features=s["features"], seq_len=seq_len, horizon=horizon)
    return ArrayTask(s["x"], s["y"], validation=validation, seed=seed, holdout="last", naive=s["naive"],
                     naive_name="the last value", source=source)


def inputs_from_file(path, source):
    """(x, lengths) to predict on, read from ``path`` as the training data described by ``source``
    (an ArrayTask's source) was: a .npz's ``x`` and ``lengths`` (``y`` is not needed), or every
    window of a CSV series' feature columns."""
    fmt = file_format(path)
    if fmt == "npz":
        a = read_npz(path, need_y=False)
        return a["x"], a["lengths"]
    if source is None or source.get("format") != "csv":
        raise DataError(f"{path}: this model was trained on arrays, not a CSV series; give a .npz with 'x'")
    _, columns = read_csv_columns(path, source["features"])
    series = np.stack([columns[n] for n in source["features"]], axis=1)
    if len(series) < source["seq_len"]:
        raise DataError(lambda name: f"{path}: {len(series)} rows are fewer than the model's window of "
                                     f"{source['seq_len']} ({name('seq_len')})", "seq_len")
    return series_windows(series, source["seq_len"]), None

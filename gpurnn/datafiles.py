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

import array
import csv
import hashlib
import math
import os
import zipfile

import numpy as np

from .data import LIMIT_REASON, READ_BYTES_PER_VALUE, VALUE_LIMIT, ArrayTask, DataError, check_room
from .files import read_header

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
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a regular file (a folder, a FIFO or a device); give a .npz or .csv file")
    return ext[1:]


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_npz(path, need_y=True):
    """{"x", "y" (None when absent and not needed), "lengths" (or None)} from a .npz, checked: every
    array's header first (its dtype, and its size against its member's and the memory here), then
    the data."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a .npz file (a .npz is a zip archive of .npy arrays, as numpy.savez writes)")
    try:
        with zipfile.ZipFile(path) as zf:
            headers = _npz_headers(path, zf, need_y)
            values = sum(math.prod(headers[n].shape) for n in ("x", "y") if n in headers)
            check_room(path, READ_BYTES_PER_VALUE * values, f"array 'x', {headers['x'].describe()}, read and "
                       f"standardised,", "use fewer sequences, or shorter ones")
            arrays = dict.fromkeys(NPZ_ARRAYS)
            with np.load(path, allow_pickle=False) as z:
                for name in headers:
                    arrays[name] = z[name]
    except DataError:
        raise
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    return arrays


def _npz_headers(path, zf, need_y):
    """{array name: files.Header} of a data .npz, after checking its names and headers."""
    members = {}
    for info in zf.infolist():
        name = info.filename[:-len(".npy")] if info.filename.endswith(".npy") else info.filename
        if name in members:
            raise DataError(f"{path}: array {name!r} appears twice")
        members[name] = info
    unknown = sorted(set(members) - set(NPZ_ARRAYS))
    if unknown:
        raise DataError(f"{path}: unexpected array(s) {', '.join(map(repr, unknown))}; a data file holds "
                        f"'x', 'y' and optionally 'lengths'")
    for name in ("x", "y") if need_y else ("x",):
        if name not in members:
            held = ", ".join(map(repr, members)) or "none"
            raise DataError(f"{path}: array {name!r} is missing (it holds {held}); "
                            f"expected 'x' (N, T, I), 'y' and optionally 'lengths' (N,)")
    headers = {}
    for name, info in members.items():
        try:
            header = read_header(zf, info)
        except ValueError as e:
            raise DataError(f"{path}: array {name!r}: {e}; save it again with numpy.savez") from None
        if header.dtype.hasobject:
            raise DataError(f"{path}: array {name!r} holds Python objects, not numbers; save it as a numeric "
                            f"array (e.g. x.astype('float32'))")
        if info.file_size != header.size:
            raise DataError(f"{path}: array {name!r} is damaged: its header says {header.describe()} "
                            f"({header.nbytes} bytes) but its member holds {info.file_size - header.offset}; "
                            f"the file was cut short or altered: save it again")
        headers[name] = header
    return headers


def read_csv_columns(path, columns=None):
    """(header, {column: float64 array}) of a CSV with a header line. ``columns``: the ones that
    must be numbers (a DataError names the line and column of the first that is not); None: every
    column, those with a value that is not a number left out. Rows are read one at a time, each
    value into an 8-byte float, after checking that the file's values fit in memory."""
    try:
        size = os.path.getsize(path)
        # each value takes at least 2 of the file's bytes (a digit, a separator) and 8 once read
        check_room(path, 4 * size, "reading its values", "train on a shorter series")
        with open(path, newline="", encoding="utf-8-sig") as f:
            return _csv_columns(path, csv.reader(f), columns)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV ({e})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a valid CSV ({e})") from None


def _csv_columns(path, reader, columns):
    header = [h.strip() for h in next(reader, [])]
    if not any(header):
        raise DataError(f"{path}: expected a header line of column names first, got "
                        f"{'an empty first line' if header else 'an empty file'}")
    if len(set(header)) != len(header):
        twice = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{path}: column name(s) {', '.join(map(repr, twice))} appear more than once in the header")
    wanted = header if columns is None else list(columns)
    for name in wanted:
        if name not in header:
            raise DataError(f"{path}: no column {name!r}; the columns are {', '.join(map(repr, header))}")
    where = {name: header.index(name) for name in wanted}
    values = {name: array.array("d") for name in wanted}

    def take(number, row):
        """Row ``row`` (line ``number``) into the columns, or the DataError that names what is wrong."""
        if len(row) != len(header):
            raise DataError(f"{path}: line {number} has {len(row)} values, the header has {len(header)} columns")
        for name, j in where.items():
            if values[name] is None:
                continue
            text = row[j].strip()
            try:
                v = float(text)
            except ValueError:
                if columns is None:      # not a numeric column: not a feature by default
                    values[name] = None
                    continue
                shown = repr(text) if text else "an empty value"
                raise DataError(f"{path}: column {name!r}, line {number}: {shown} is not a number") from None
            if not math.isfinite(v):
                raise DataError(f"{path}: column {name!r}, line {number}: {text!r} is not a finite number; "
                                f"fill or drop that row")
            if abs(v) > VALUE_LIMIT:
                raise DataError(f"{path}: column {name!r}, line {number}: {text} is {LIMIT_REASON} "
                                f"(±{VALUE_LIMIT:.2g}); rescale that column (divide by a power of ten)")
            values[name].append(v)

    blank, rows = [], 0          # blank lines since the last row: dropped at the end of the file, else rows
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            blank.append((number, row))
            continue
        for line in blank + [(number, row)]:
            take(*line)
        rows += len(blank) + 1
        blank = []
    if rows < 1:
        raise DataError(f"{path}: expected rows of values after the header line, got none")
    return header, {name: np.frombuffer(v, dtype=np.float64) for name, v in values.items() if v is not None}


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
    if features is not None and not features:
        raise DataError(lambda name: f"{path}: {name('features')} names no column; give comma-separated column "
                                     f"names, or leave it out for every numeric column", "features")
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
    _check_windows(path, L - seq_len + 1 - horizon, seq_len, len(names),
                   lambda name: f"lower {name('seq_len')}, or train on a shorter series")
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
    _check_windows(path, len(series) - source["seq_len"] + 1, source["seq_len"], series.shape[1],
                   "predict on a shorter series (its windows are cut whole, each a copy)")
    return series_windows(series, source["seq_len"]), None


def _check_windows(path, n, seq_len, features, remedy):
    """A DataError, before they are cut, when ``n`` windows of ``seq_len`` rows of ``features``
    values each, read and standardised, would not fit in memory."""
    check_room(path, READ_BYTES_PER_VALUE * n * seq_len * features,
               f"cutting it into {n} windows of {seq_len} rows x {features} values", remedy,
               "seq_len")

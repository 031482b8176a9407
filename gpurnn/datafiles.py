"""Data files: what ``gpurnn train --data FILE`` and ``gpurnn predict RUN --data FILE`` read.

Legend: N sequences, T time steps (``seq_len``), I features, L rows of a series, h ``horizon``,
s the seasonal lag.

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

           ``difference``: train on first differences, forecast the change. Every feature column
           and the target become d[k] = v[k + 1] - v[k] (L - 1 rows); window m is d[m : m + T],
           which spans level rows m .. m + T and so ends at level row r = m + T, and its target is
           the change over the horizon from there:

               x[m] = d[m : m + T]                    (T, I), from level rows m .. m + T
               y[m] = target[r + h] - target[r]       r = m + T

           L - T - h windows (one fewer than without: the first level row has no difference). The
           level forecast is the last level plus the predicted change, and its error is the
           change's error: the held-out MSE and the naive baseline (a change of 0, i.e. the last
           value) stay in the data's level units, comparable with a run without ``difference``
           (the same target rows hold the same baseline). Prediction differences a new file's
           features the same way and returns levels, target[r] + the predicted change, so that file
           must hold the target column.

           ``season`` N: a second baseline, seasonal-naive: target row t is forecast by the value
           s = N * ceil(h / N) rows before it (the same point of the latest season known at
           forecast time), target[t - s], scored as a level on the held-out windows, which must
           all have row t - s in the file. With ``difference`` it is scored on levels too.

           Either way, the window ending at level row r forecasts target row r + h: ``rows`` says
           which r each window (training, and prediction's) ends at.

Every problem raises a one-line DataError naming the file, the array or column, and what was
expected. Nothing here writes anything.
"""

import array
import csv
import hashlib
import math
import os
import warnings
import zipfile

import numpy as np

from .data import LIMIT_REASON, READ_BYTES_PER_VALUE, VALUE_LIMIT, ArrayTask, DataError, check_room, split_indices
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


def csv_series(path, target, seq_len, horizon=1, features=None, difference=False, season=None):
    """The windows of a CSV series and their targets (see the module docstring): {"x" (N, T, I),
    "y" (N, 1), "naive" (N, 1): the last value (with ``difference``: a change of 0), "rows" (N,):
    the level row each window ends at, "target_rows" (N,) = rows + h, "features": names,
    "target": the target column (L,), and with ``season`` "seasonal" (N, 1): the seasonal-naive
    forecast in y's units (NaN where its row is before the file's first), "lag": s}."""
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
    first = seq_len if difference else seq_len - 1           # the level row the first window ends at
    need = first + horizon + 2
    if L < need:
        def said(name):
            spans = f" (with {name('difference')} a window of seq_len differences spans seq_len + 1 rows)"
            return (f"{path}: {L} rows are too few for {name('seq_len', seq_len)} and {name('horizon', horizon)}: "
                    f"two windows (one to train on, one to hold out) need at least seq_len + horizon + "
                    f"{need - seq_len - horizon} = {need}{spans if difference else ''}")
        raise DataError(said, "seq_len")
    n = L - first - horizon
    _check_windows(path, n, seq_len, len(names), lambda name: f"lower {name('seq_len')}, or train on a shorter series")
    series = np.stack([columns[c] for c in names], axis=1)                   # (L, I)
    if difference:
        series = np.diff(series, axis=0)                                     # (L - 1, I)
    x = series_windows(series, seq_len, horizon)
    tgt = columns[target]
    rows = np.arange(first, first + n)
    start = tgt[rows] if difference else 0.0                  # y is the change from the last level
    out = {"x": x, "y": (tgt[rows + horizon] - start)[:, None], "rows": rows, "target_rows": rows + horizon,
           "features": names, "target": tgt}
    out["naive"] = (np.zeros(n) if difference else tgt[rows])[:, None]
    if season is not None:
        lag = seasonal_lag(season, horizon)
        back = rows + horizon - lag
        known = back >= 0
        out["seasonal"] = np.where(known, tgt[np.where(known, back, 0)] - start, np.nan)[:, None]
        out["lag"] = lag
    return out


def seasonal_lag(season, horizon):
    """s = season * ceil(horizon / season): how many rows before its target the seasonal-naive
    forecast looks, the latest point of the same phase known when the forecast is made."""
    season, horizon = int(season), int(horizon)
    return season * -(-horizon // season)


def task_from_file(path, seq_len=None, target=None, horizon=None, features=None, validation=0.2, seed=0,
                   difference=False, season=None):
    """The ArrayTask of a data file, its ``source`` recording how it was read (so that prediction
    reads new files the same way: ``difference: true`` and ``season`` are recorded when given).
    ``seq_len``, ``target``, ``horizon``, ``features``, ``difference`` and ``season`` apply to CSV
    series only (see the module docstring); a DataError says so when given with a .npz. With
    ``season``, ``task.baselines`` holds the seasonal-naive baseline after the naive one; a
    DataError naming it when a held-out window's seasonal value would lie before the file's first
    row."""
    fmt = file_format(path)
    source = {"file": os.path.abspath(path), "format": fmt}
    if fmt == "npz":
        for key, value in (("seq_len", seq_len), ("target", target), ("horizon", horizon), ("features", features),
                           ("difference", difference or None), ("season", season)):
            if value is not None:
                raise DataError(lambda name, key=key: f"{path}: {name(key)} applies to a CSV series; a .npz file's "
                                                      f"arrays give the sequences as they are: leave it out", key)
        a = read_npz(path)
        return ArrayTask(a["x"], a["y"], a["lengths"], validation=validation, seed=seed, source=source)
    seq_len = 32 if seq_len is None else int(seq_len)
    horizon = 1 if horizon is None else int(horizon)
    if season is not None and (isinstance(season, bool) or int(season) != season or season < 1):
        raise DataError(lambda name: f"{name('season')} must be a whole number of rows >= 1, got {season!r}", "season")
    s = csv_series(path, target, seq_len, horizon, features, difference=difference, season=season)
    source.update(target=target, features=s["features"], seq_len=seq_len, horizon=horizon)
    if difference:
        source["difference"] = True
        validation = same_held_out(len(s["x"]), validation)
    others = None
    if season is not None:
        source["season"] = int(season)
        _, held = split_indices(len(s["x"]), validation, "last", seed)
        lag, t0 = s["lag"], int(s["target_rows"][held[0]])
        if t0 < lag:
            raise DataError(lambda name: f"{path}: {name('season', season)} forecasts each target by the value {lag} "
                                         f"rows before it, but the first held-out target, row {t0}, has only {t0} "
                                         f"rows before it; lower {name('validation')} (hold out fewer, later "
                                         f"windows), give a longer series, or a shorter {name('season')}", "season")
        seasons = "a season" if lag == season else f"{lag // int(season)} seasons"
        others = [(f"the value {seasons} ({lag} rows) earlier", s["seasonal"])]
    return ArrayTask(s["x"], s["y"], validation=validation, seed=seed, holdout="last", naive=s["naive"],
                     naive_name="the last value", other_naive=others, source=source)


def same_held_out(n, validation):
    """The fraction of ``n`` differenced windows that holds out the target rows that ``validation``
    holds out of the n + 1 windows of the levels (the first level window has no difference before
    it), so that a run with --difference and one without score the same rows."""
    n_val = min(max(int(round((n + 1) * validation)), 1), n - 1)
    return n_val / n


def inputs_from_file(path, source):
    """(x, lengths) to predict on, read from ``path`` as the training data described by ``source``
    (an ArrayTask's source) was: a .npz's ``x`` and ``lengths`` (``y`` is not needed), or every
    window of a CSV series' feature columns (differenced when the model was trained on
    differences; see ``series_inputs``)."""
    fmt = file_format(path)
    if fmt == "npz":
        a = read_npz(path, need_y=False)
        return a["x"], a["lengths"]
    return series_inputs(path, source)["x"], None


def series_inputs(path, source, index=False):
    """Every window of the CSV series ``path``, cut as the training data described by ``source``
    was, and which rows they belong to: {"x" (N, T, I), "rows" (N,): the level row each window
    ends at (T - 1 .. L - 1, or T .. L - 1 with ``difference``), "last" (N,): target[rows] with
    ``difference`` (the level the predicted change is added to), else None, "length": L}.

    With ``index`` also "target" (L,): the target column (None when the file has none or it is not
    all numbers; a model trained on differences needs it in any case) and "index": {column: its
    values as written}, the columns that say which row is which: those that are not features and
    not all numbers (a date), and the first column when it is numbers but not a feature (a YEAR
    beside --features SUNACTIVITY); never the target."""
    if source is None or source.get("format") != "csv":
        raise DataError(f"{path}: this model was trained on arrays, not a CSV series; give a .npz with 'x'")
    feats, T, target = source["features"], source["seq_len"], source.get("target")
    difference = bool(source.get("difference"))
    if difference:
        header = read_csv_header(path)
        if target not in header:
            raise DataError(f"{path}: no column {target!r}: this model forecasts the change of {target!r} (it was "
                            f"trained with --difference) and adds it to the last level, so the file must hold that "
                            f"column; the columns are {', '.join(map(repr, header))}")
    header, columns = read_csv_columns(path, list(dict.fromkeys(feats + [target])) if difference else feats)
    series = np.stack([columns[n] for n in feats], axis=1)
    L = len(series)
    if difference:
        series = np.diff(series, axis=0)
    if len(series) < T:
        what = f"{T + 1} rows (a window of {T} differences)" if difference else f"window of {T}"
        raise DataError(lambda name: f"{path}: {L} rows are fewer than the model's {what} ({name('seq_len')})",
                        "seq_len")
    _check_windows(path, len(series) - T + 1, T, series.shape[1],
                   "predict on a shorter series (its windows are cut whole, each a copy)")
    rows = np.arange(L - len(series) + T - 1, L)
    out = {"x": series_windows(series, T), "rows": rows, "last": columns[target][rows] if difference else None,
           "length": L}
    if index:
        out["target"] = columns.get(target)
        texts = read_csv_text(path, [h for h in header if h not in feats and h not in columns])
        numeric = {h: _numbers(v) for h, v in texts.items()}
        if out["target"] is None and numeric.get(target) is not None:
            out["target"] = numeric[target]
        first = header[0] if header[0] not in feats else None
        out["index"] = {h: v for h, v in texts.items() if h != target and (numeric[h] is None or h == first)}
    return out


def _numbers(texts):
    """The values of a column as float64 (L,) when every one is a finite number, else None."""
    try:
        v = np.array([float(t) for t in texts])
    except ValueError:
        return None
    return v if np.isfinite(v).all() else None


def read_csv_header(path):
    """The column names of a CSV (its first line), or a DataError."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as a UTF-8 CSV ({e})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a valid CSV ({e})") from None


def read_csv_text(path, names):
    """{column: list of its values as written (str), one per row} of the CSV ``path``, for the
    columns ``names`` of a file that read_csv_columns has already read (its rows are checked)."""
    if not names:
        return {}
    try:
        # a Python string per value: about 30 times what each value takes in the file, at most
        check_room(path, 30 * os.path.getsize(path), "reading its index columns (a date) as text",
                   "write the predictions as a .npy (the predictions alone)")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            where = [header.index(n) for n in names]
            texts = [[] for _ in names]
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                for j, i in enumerate(where):
                    texts[j].append(row[i])
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, IndexError) as e:
        raise DataError(f"{path}: cannot be read again as the CSV it was ({type(e).__name__}: {e})") from None
    return dict(zip(names, texts))


def index_at(values, rows):
    """The texts of an index column (``values``, one per row) at ``rows`` (int array), verbatim
    inside the file; past its end extrapolated when the column is evenly spaced numbers (whole
    numbers stay whole, decimals keep the file's number of places) or evenly spaced ISO dates
    (in their own unit, or whole months apart on the same day of the month), else ''."""
    L = len(values)
    out = [values[r] if r < L else "" for r in rows.tolist()]
    past = [k for k, r in enumerate(rows.tolist()) if r >= L]
    if past and L >= 2:
        step = _number_steps(values) or _date_steps(values)
        if step is not None:
            for k in past:
                out[k] = step(int(rows[k]) - (L - 1))
    return out


def _number_steps(values):
    """A function of j >= 1 that gives the j-th value past the end of an evenly spaced column of
    numbers, as text; None when it is not one."""
    texts = [v.strip() for v in values]
    try:
        if all(t.lstrip("+-").isdigit() for t in texts):
            ints = [int(t) for t in texts]
            step = ints[1] - ints[0]
            if step and all(b - a == step for a, b in zip(ints, ints[1:])):
                return lambda j: str(ints[-1] + j * step)
            return None
        nums = np.array([float(t) for t in texts])
    except ValueError:
        return None
    if not np.isfinite(nums).all() or any(c in t for t in texts for c in "eEnN"):
        return None
    gaps = np.diff(nums)
    step = (nums[-1] - nums[0]) / (len(nums) - 1)
    if step == 0 or not np.allclose(gaps, step, rtol=1e-6, atol=1e-9 * np.abs(nums).max()):
        return None
    places = max(len(t.split(".")[1]) if "." in t else 0 for t in texts)
    return lambda j: f"{nums[-1] + j * step:.{places}f}"


def _date_steps(values):
    """As _number_steps, for ISO dates (numpy.datetime64's reading of them)."""
    texts = [v.strip() for v in values]
    try:
        with warnings.catch_warnings():           # a time zone is deprecated: not extrapolated, but no warning
            warnings.simplefilter("ignore")
            dates = np.array([np.datetime64(t) for t in texts])
    except (ValueError, TypeError, OverflowError):
        return None
    if dates.dtype.kind != "M" or np.isnat(dates).any():
        return None
    spaced = " " if all(" " in t for t in texts) else None        # "2020-01-01 00:00" keeps its space
    show = (lambda d: str(d).replace("T", " ")) if spaced else str
    gaps = np.diff(dates)
    if gaps[0] > np.timedelta64(0) and (gaps == gaps[0]).all():
        return lambda j: show(dates[-1] + j * gaps[0])
    if dates.dtype == np.dtype("M8[D]"):                           # months apart, on the same day of the month
        months = dates.astype("M8[M]")
        day = dates - months.astype("M8[D]")
        steps = np.diff(months)
        if (day == day[0]).all() and steps[0] > np.timedelta64(0) and (steps == steps[0]).all():
            return lambda j: show((months[-1] + j * steps[0]).astype("M8[D]") + day[0])
    return None


def _check_windows(path, n, seq_len, features, remedy):
    """A DataError, before they are cut, when ``n`` windows of ``seq_len`` rows of ``features``
    values each, read and standardised, would not fit in memory."""
    check_room(path, READ_BYTES_PER_VALUE * n * seq_len * features,
               f"cutting it into {n} windows of {seq_len} rows x {features} values", remedy,
               "seq_len")

"""Checkpoints: one ``.npz`` file with the weights, the optimiser state, the step, the run's config
and the data stream's RNG state, so that a run continues exactly where it stopped.

Layout of the file (a NumPy ``.npz``, uncompressed, readable without gpurnn):

    model/<module>.<parameter>        weights, e.g. model/rnn.weight_hh_l0
    optimizer/<module index>/<parameter>/<slot>   e.g. optimizer/1/weight_hh_l0/m (Adam's first moment)
    meta                              UTF-8 JSON as uint8: format, version, step, config, rng, optimiser
                                      scalars, the manifest ("arrays": every other entry's dtype and
                                      shape), and whatever else the caller stores (elapsed time, ...)
    checksum                          SHA-256 of every other entry's name, dtype, shape and bytes

Writing goes to a temporary file in the same folder, flushed to disk, then renamed over the old
checkpoint: a crash leaves either the old file or the new one, never half of one.

Loading trusts nothing before it is checked, and reads no more than the file holds: the archive's
directory (every member uncompressed, named as above, within the file's size), then the meta
(bounded in size, UTF-8 JSON, checked against its schema field by field), then every array's
header against the manifest (dtype, shape, and the member's size), and only then the data, whose
checksum must match. The checksum is integrity, not authenticity: anyone can write a file with a
valid one, so a crafted file must fail the checks above, not the checksum. Any failure raises
CheckpointError, naming what is wrong and what to do.
"""

import hashlib
import json
import math
import os
import tempfile
import zipfile

import numpy as np

from .files import read_header

FORMAT = "gpurnn-checkpoint"
VERSION = 2            # 2 adds the manifest; version 1 files (no manifest) still load
META_LIMIT = 16 << 20  # bytes: the meta holds a config, a vocabulary and an RNG state, never this much
ARRAY_DTYPES = ("<f4", "<f8")   # what the model and the optimiser state are stored in
REMEDY = "restore it from a copy, or start a new run"
TEMP_PREFIX, TEMP_SUFFIX = ".checkpoint-", ".tmp"     # a write in progress (or killed before its rename)


class CheckpointError(ValueError):
    """The checkpoint is missing, unreadable, corrupted or not a gpurnn checkpoint."""


def _digest(arrays):
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _flatten(state, config, extra):
    arrays = {f"model/{k}": np.asarray(v) for k, v in state["model"].items()}
    opt = state["optimizer"]
    for key, slots in opt["state"].items():
        for slot, v in slots.items():
            arrays[f"optimizer/{key}/{slot}"] = np.asarray(v)
    manifest = {k: [a.dtype.str, list(a.shape)] for k, a in arrays.items()}
    meta = {"format": FORMAT, "version": VERSION, "step": int(state["step"]), "rng": state["rng"],
            "optimizer": {"steps": int(opt["steps"]), "lr": float(opt["lr"])},
            "config": config, "extra": extra or {}, "arrays": manifest}
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    return arrays


def save_checkpoint(path, state, config=None, extra=None):
    """Write ``state`` (``Trainer.state()``: model, optimizer, step, rng and the description of
    the model, which goes into the extra) with ``config`` and ``extra`` (JSON-able dicts) to
    ``path``, atomically. ``gpurnn.load_model(path)`` rebuilds the model of a Trainer's state."""
    path = os.fspath(path)
    extra = dict(state.get("description") or {}, **(extra or {}))
    arrays = _flatten(state, config or {}, extra)
    arrays["checksum"] = np.frombuffer(_digest(arrays).encode(), dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def remove_stale_temporaries(folder):
    """Delete the temporary files of checkpoint writes that were killed before their rename (the
    caller must know that no write is under way in ``folder``: gpurnn train holds the run's lock).
    Returns the names removed."""
    removed = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


# ---------------------------------------------------------------- loading
def _fail(path, what, remedy=REMEDY):
    return CheckpointError(f"checkpoint {path}: {what}; {remedy}")


def _members(path, zf):
    """{entry name: ZipInfo} after checking the archive's directory against what gpurnn writes:
    unique names, every member stored uncompressed, and no more bytes than the file holds."""
    size = os.path.getsize(path)
    names = {info.filename for info in zf.infolist()}
    for key in ("meta", "checksum"):
        if key + ".npy" not in names:
            raise CheckpointError(f"{path} is not a gpurnn checkpoint (it has no {key} entry)")
    members, total = {}, 0
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise _fail(path, f"member {name!r} is not an array (.npy); this is not a gpurnn checkpoint")
        key = name[:-len(".npy")]
        if key in members:
            raise _fail(path, f"member {name!r} appears twice")
        if key not in ("meta", "checksum") and not key.startswith(("model/", "optimizer/")):
            raise _fail(path, f"unexpected member {name!r} (a gpurnn checkpoint holds meta, checksum, "
                              f"model/... and optimizer/...)")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise _fail(path, f"member {name!r} is compressed; gpurnn writes checkpoints uncompressed, "
                              f"so this file was not written by gpurnn")
        total += info.file_size
        members[key] = info
    if total > size:
        raise _fail(path, f"its members claim {total} bytes but the file has {size}: it is truncated or corrupted")
    return members


def _header(path, zf, key, info):
    """(dtype, shape, offset of the data) from a member's .npy header, without reading its data."""
    try:
        header = read_header(zf, info)
    except ValueError as e:
        raise _fail(path, f"the header of {key!r}: {e}") from e
    if header.fortran:
        raise _fail(path, f"{key!r} is stored in Fortran order; gpurnn writes C order")
    return header.dtype, header.shape, header.offset


def _read(path, zf, key, info, dtype, shape, offset):
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size != offset + nbytes:
        raise _fail(path, f"{key!r} claims shape {tuple(shape)} ({nbytes} bytes of data) but its member holds "
                          f"{info.file_size - offset}")
    data = zf.read(info)       # checks the member's CRC
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).copy()


def _uint8_member(path, zf, members, key, limit):
    dtype, shape, offset = _header(path, zf, key, members[key])
    if dtype != np.uint8 or len(shape) != 1 or shape[0] > limit:
        raise _fail(path, f"{key!r} must be at most {limit} bytes (uint8), got dtype {dtype}, shape {tuple(shape)}")
    return _read(path, zf, key, members[key], dtype, shape, offset).tobytes()


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_meta(path, meta):
    """The meta against its schema; a CheckpointError naming the first field that is wrong."""
    def bad(field, expected, value):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return _fail(path, f"meta field {field!r} must be {expected}, got {shown}")

    if not isinstance(meta, dict):
        raise bad("meta", "a JSON object", meta)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}; this is not a gpurnn checkpoint")
    if meta.get("version") not in (1, VERSION) or not _is_int(meta.get("version")):
        raise CheckpointError(f"{path} has version {meta.get('version')!r}; this gpurnn reads versions 1 to "
                              f"{VERSION}: upgrade gpurnn to read it")
    for field in ("step", "rng", "optimizer", "config", "extra") + (("arrays",) if meta["version"] >= 2 else ()):
        if field not in meta:
            raise _fail(path, f"meta field {field!r} is missing")
    if not _is_int(meta["step"]) or meta["step"] < 0:
        raise bad("step", "a non-negative integer", meta["step"])
    opt = meta["optimizer"]
    if not isinstance(opt, dict):
        raise bad("optimizer", "a JSON object", opt)
    if not _is_int(opt.get("steps")) or opt["steps"] < 0:
        raise bad("optimizer.steps", "a non-negative integer", opt.get("steps"))
    lr = opt.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not (math.isfinite(lr) and lr > 0):
        raise bad("optimizer.lr", "a finite number > 0", lr)
    for field in ("config", "extra"):
        if not isinstance(meta[field], dict):
            raise bad(field, "a JSON object", meta[field])
    try:                        # the state must be one that the data stream's generator accepts
        np.random.Generator(np.random.PCG64()).bit_generator.state = meta["rng"]
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as e:
        raise bad("rng", f"the state of a PCG64 generator ({e})", meta["rng"]) from e
    if meta["version"] >= 2:
        arrays = meta["arrays"]
        if not isinstance(arrays, dict):
            raise bad("arrays", "a JSON object", arrays)
        for key, entry in arrays.items():
            if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in ARRAY_DTYPES
                    and isinstance(entry[1], list) and all(_is_int(n) and n >= 0 for n in entry[1])):
                raise bad(f"arrays.{key}", f"[dtype, shape] with dtype one of {ARRAY_DTYPES}", entry)


def load_checkpoint(path):
    """Read a checkpoint written by ``save_checkpoint``; returns a dict with the keys of
    ``Trainer.state()`` plus "config" and "extra". Raises CheckpointError on any damage."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is not a file; give the run folder or its checkpoint.npz")
    try:
        with zipfile.ZipFile(path) as zf:
            return _load(path, zf)
    except zipfile.BadZipFile as e:
        raise _fail(path, f"it cannot be read as an .npz (zip) archive ({e}): it is truncated or corrupted, "
                          f"or not a gpurnn checkpoint") from e
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as e:
        raise _fail(path, f"it cannot be read ({type(e).__name__}: {e}): it is truncated or corrupted") from e


def _load(path, zf):
    members = _members(path, zf)
    raw = _uint8_member(path, zf, members, "meta", META_LIMIT)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _fail(path, f"its meta is not UTF-8 ({e})") from e
    except (ValueError, RecursionError) as e:
        raise _fail(path, f"its meta is not valid JSON ({e})") from e
    _check_meta(path, meta)
    stored = _uint8_member(path, zf, members, "checksum", 64).decode("ascii", errors="replace")

    manifest = meta.get("arrays")
    keys = sorted(k for k in members if k not in ("meta", "checksum"))
    if manifest is not None and sorted(manifest) != keys:
        missing, extra = sorted(set(manifest) - set(keys)), sorted(set(keys) - set(manifest))
        raise _fail(path, f"its arrays do not match its manifest (missing {missing[:5]}, unexpected {extra[:5]})")
    headers = {}
    for key in keys:                    # every header first: nothing is read that would not fit
        dtype, shape, offset = _header(path, zf, key, members[key])
        if dtype.str not in ARRAY_DTYPES:
            raise _fail(path, f"{key!r} has dtype {dtype}; checkpoints hold float32 or float64 arrays")
        if manifest is not None and [dtype.str, list(shape)] != manifest[key]:
            raise _fail(path, f"{key!r} is {dtype.str} {tuple(shape)} but the manifest says "
                              f"{manifest[key][0]} {tuple(manifest[key][1])}")
        headers[key] = (dtype, shape, offset)
    arrays = {key: _read(path, zf, key, members[key], *headers[key]) for key in keys}
    arrays["meta"] = np.frombuffer(raw, dtype=np.uint8)
    actual = _digest(arrays)
    if stored != actual:
        raise CheckpointError(f"checkpoint {path} is corrupted: its checksum does not match its contents "
                              f"(stored {stored[:12]}..., computed {actual[:12]}...): {REMEDY}")
    del arrays["meta"]
    model, opt_state = {}, {}
    for key, value in arrays.items():
        kind, _, rest = key.partition("/")
        if kind == "model":
            model[rest] = value
        else:
            name, _, slot = rest.rpartition("/")
            if not name or not slot:
                raise _fail(path, f"optimizer entry {key!r} is not named optimizer/<module>/<parameter>/<slot>")
            opt_state.setdefault(name, {})[slot] = value
    optimizer = {"steps": meta["optimizer"]["steps"], "lr": float(meta["optimizer"]["lr"]), "state": opt_state}
    return {"model": model, "optimizer": optimizer, "step": meta["step"], "rng": meta["rng"],
            "config": meta["config"], "extra": meta["extra"]}

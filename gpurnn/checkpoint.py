"""Checkpoints: one ``.npz`` file with the weights, the optimiser state, the step, the run's config
and the data stream's RNG state, so that a run continues exactly where it stopped.

Layout of the file (a NumPy ``.npz``, readable without gpurnn):

    model/<module>.<parameter>        weights, e.g. model/rnn.weight_hh_l0
    optimizer/<module index>/<parameter>/<slot>   e.g. optimizer/1/weight_hh_l0/m (Adam's first moment)
    meta                              UTF-8 JSON as uint8: format, step, config, rng, optimiser scalars,
                                      and whatever else the caller stores (elapsed time, ...)
    checksum                          SHA-256 of every other entry's name, dtype, shape and bytes

Writing goes to a temporary file in the same folder, flushed to disk, then renamed over the old
checkpoint: a crash leaves either the old file or the new one, never half of one. Loading checks
the checksum and raises CheckpointError, with what to do, on any damage.
"""

import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "gpurnn-checkpoint"
VERSION = 1


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
    meta = {"format": FORMAT, "version": VERSION, "step": int(state["step"]), "rng": state["rng"],
            "optimizer": {"steps": int(opt["steps"]), "lr": float(opt["lr"])},
            "config": config, "extra": extra or {}}
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    return arrays


def save_checkpoint(path, state, config=None, extra=None):
    """Write ``state`` (``Trainer.state()``: model, optimizer, step, rng) with ``config`` and
    ``extra`` (JSON-able dicts) to ``path``, atomically."""
    path = os.fspath(path)
    arrays = _flatten(state, config or {}, extra)
    arrays["checksum"] = np.frombuffer(_digest(arrays).encode(), dtype=np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=folder)
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


def load_checkpoint(path):
    """Read a checkpoint written by ``save_checkpoint``; returns a dict with the keys of
    ``Trainer.state()`` plus "config" and "extra". Raises CheckpointError on any damage."""
    path = os.fspath(path)
    remedy = "restore it from a copy, or start a new run without --resume"
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it is truncated "
                              f"or corrupted: {remedy}") from e
    if "meta" not in arrays or "checksum" not in arrays:
        raise CheckpointError(f"{path} is not a gpurnn checkpoint (it has no meta or checksum entry)")
    stored = arrays.pop("checksum").tobytes().decode(errors="replace")
    actual = _digest(arrays)
    if stored != actual:
        raise CheckpointError(f"checkpoint {path} is corrupted: its checksum does not match its contents "
                              f"(stored {stored[:12]}..., computed {actual[:12]}...): {remedy}")
    meta = json.loads(arrays.pop("meta").tobytes().decode())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{path} has format {meta.get('format')!r} version {meta.get('version')!r}; "
                              f"this gpurnn reads {FORMAT!r} version {VERSION}")
    model, opt_state = {}, {}
    for key, value in arrays.items():
        kind, _, rest = key.partition("/")
        if kind == "model":
            model[rest] = value
        elif kind == "optimizer":
            name, _, slot = rest.rpartition("/")
            opt_state.setdefault(name, {})[slot] = value
    optimizer = {"steps": meta["optimizer"]["steps"], "lr": meta["optimizer"]["lr"], "state": opt_state}
    return {"model": model, "optimizer": optimizer, "step": meta["step"], "rng": meta["rng"],
            "config": meta["config"], "extra": meta["extra"]}

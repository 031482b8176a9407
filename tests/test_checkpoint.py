"""Checkpoints: round trip, atomic writes, and a clear CheckpointError on any damage or crafted file."""

import io
import json
import os
import tracemalloc
import zipfile

import numpy as np
import pytest

from gpurnn import checkpoint as ck_module
from gpurnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gpurnn.model import Trainer, make_model
from gpurnn.tasks import Adding


def _trainer(seed=0, optimizer="adam"):
    task = Adding(8)
    model = make_model(task, "lstm", 8, backend="cpu", seed=seed)
    return Trainer(model, task, optimizer=optimizer, lr=1e-2, clip=1.0, batch_size=4, seed=seed,
                   eval_sequences=8)


def _trained(steps=3, optimizer="adam"):
    tr = _trainer(optimizer=optimizer)
    for _ in range(steps):
        tr.train_step()
    return tr


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_round_trip_restores_weights_optimiser_step_config_and_rng(tmp_path, optimizer):
    tr = _trained(optimizer=optimizer)
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, tr.state(), config={"cell": "lstm", "hidden": 8}, extra={"elapsed": 1.5})
    ck = load_checkpoint(path)
    assert ck["step"] == 3 and ck["config"] == {"cell": "lstm", "hidden": 8} and ck["extra"]["elapsed"] == 1.5
    assert ck["rng"] == tr.rng.bit_generator.state
    fresh = _trainer(seed=1, optimizer=optimizer)   # different initial weights, all overwritten
    fresh.load_state(ck)
    for k, v in tr.model.state_dict().items():
        assert np.array_equal(fresh.model.state_dict()[k], v)
    a, b = tr.opt.state_dict(), fresh.opt.state_dict()
    assert a["steps"] == b["steps"] == 3 and a["lr"] == b["lr"]
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        for slot, v in a["state"][key].items():
            assert np.array_equal(b["state"][key][slot], v)
    assert fresh.step == 3 and fresh.rng.bit_generator.state == tr.rng.bit_generator.state


def test_saving_replaces_the_file_and_leaves_no_temporary_behind(tmp_path):
    tr = _trained(steps=1)
    path = tmp_path / "run" / "checkpoint.npz"
    save_checkpoint(path, tr.state())
    tr.train_step()
    save_checkpoint(path, tr.state())
    assert os.listdir(tmp_path / "run") == ["checkpoint.npz"]
    assert load_checkpoint(path)["step"] == 2


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    tr = _trained(steps=1)
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, tr.state())
    tr.train_step()

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tr.state())
    assert os.listdir(tmp_path) == ["checkpoint.npz"]
    assert load_checkpoint(path)["step"] == 1


def test_flipped_bytes_are_reported_as_corruption(tmp_path):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, _trained().state())
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_truncated_file_is_reported_as_corruption(tmp_path):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, _trained().state())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path)


def test_a_changed_weight_fails_the_checksum(tmp_path):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, _trained().state())
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["model/head.bias"] = arrays["model/head.bias"] + 1   # a valid file, the wrong contents
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="checksum does not match"):
        load_checkpoint(path)


def test_missing_or_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a gpurnn checkpoint"):
        load_checkpoint(other)


# ---------------------------------------------------------------- crafted and damaged files
# The checksum is integrity, not authenticity: each file below carries a valid checksum (or none is
# reached), and must still be refused with a CheckpointError, without reading more than it holds.
def _valid(tmp_path):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, _trained(steps=1).state(), config={"cell": "lstm"}, extra={"elapsed": 1.0})
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return path, arrays


def _meta(arrays):
    return json.loads(arrays["meta"].tobytes().decode())


def _signed(path, arrays, meta=None, meta_bytes=None):
    """Rewrite ``path`` from ``arrays`` with a new meta and a checksum that matches it."""
    arrays = {k: v for k, v in arrays.items() if k != "checksum"}
    if meta is not None:
        meta_bytes = json.dumps(meta).encode()
    if meta_bytes is not None:
        arrays["meta"] = np.frombuffer(meta_bytes, dtype=np.uint8)
    arrays["checksum"] = np.frombuffer(ck_module._digest(arrays).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def _load_within(path, limit_bytes=4 << 20):
    """load_checkpoint(path), failing the test if it allocated more than limit_bytes on the way."""
    tracemalloc.start()
    try:
        return load_checkpoint(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < limit_bytes, f"loading allocated {peak} bytes"


def test_a_plain_npy_renamed_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.npz"
    np.save(tmp_path / "weights.npy", np.zeros(5))
    os.replace(tmp_path / "weights.npy", path)
    with pytest.raises(CheckpointError, match="cannot be read as an .npz"):
        load_checkpoint(path)


def test_a_header_claiming_more_data_than_the_member_holds_is_refused_before_reading(tmp_path):
    path, arrays = _valid(tmp_path)
    meta = _meta(arrays)
    meta["arrays"]["model/head.bias"] = ["<f4", [10 ** 10]]      # the manifest agrees with the lie
    _signed(path, arrays, meta)
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    bias = io.BytesIO()
    np.lib.format.write_array_header_1_0(bias, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 10,)})
    members["model/head.bias.npy"] = bias.getvalue() + b"\0" * 4
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(CheckpointError, match=r"claims shape \(10000000000,\)"):
        _load_within(path)


def test_a_compressed_member_is_refused_before_it_is_inflated(tmp_path):
    path, arrays = _valid(tmp_path)
    buf = io.BytesIO()
    np.save(buf, np.zeros(8 << 20, np.float32))                    # 32 MiB of zeros, deflated to ~32 KiB
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model/extra.npy", buf.getvalue())
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(CheckpointError, match="compressed"):
        _load_within(path)


@pytest.mark.parametrize("change, message", [
    (lambda m: b"{not json", "not valid JSON"),
    (lambda m: b"\xff\xfe{}", "not UTF-8"),
    (lambda m: b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    (lambda m: [m], "'meta' must be a JSON object"),
    (lambda m: {k: v for k, v in m.items() if k != "step"}, "'step' is missing"),
    (lambda m: dict(m, step="3"), "'step' must be a non-negative integer, got '3'"),
    (lambda m: dict(m, step=-1), "'step' must be a non-negative integer, got -1"),
    (lambda m: dict(m, step=2.5), "'step' must be a non-negative integer, got 2.5"),
    (lambda m: dict(m, step=True), "'step' must be a non-negative integer"),
    (lambda m: dict(m, optimizer=[]), "'optimizer' must be a JSON object"),
    (lambda m: dict(m, optimizer=dict(m["optimizer"], lr="0.01")), "'optimizer.lr' must be a finite number"),
    (lambda m: dict(m, optimizer=dict(m["optimizer"], lr=float("nan"))), "'optimizer.lr' must be a finite"),
    (lambda m: dict(m, optimizer={"lr": 0.01}), "'optimizer.steps' must be a non-negative integer, got None"),
    (lambda m: dict(m, config=[1, 2]), "'config' must be a JSON object"),
    (lambda m: dict(m, extra="x"), "'extra' must be a JSON object"),
    (lambda m: dict(m, rng={"bit_generator": "MT19937"}), "'rng' must be the state of a PCG64"),
    (lambda m: dict(m, rng=[1]), "'rng' must be the state of a PCG64"),
    (lambda m: dict(m, version=99), "upgrade gpurnn"),
    (lambda m: dict(m, format="other"), "not a gpurnn checkpoint"),
    (lambda m: dict(m, arrays=dict(m["arrays"], **{"model/head.bias": ["<f4", [7]]})), "the manifest says"),
    (lambda m: dict(m, arrays=dict(m["arrays"], **{"model/head.bias": ["|O", [1]]})), "'arrays.model/head.bias'"),
    (lambda m: dict(m, arrays={}), "do not match its manifest"),
])
def test_a_meta_that_breaks_its_schema_names_the_field(tmp_path, change, message):
    path, arrays = _valid(tmp_path)
    new = change(_meta(arrays))
    if isinstance(new, bytes):
        _signed(path, arrays, meta_bytes=new)
    else:
        _signed(path, arrays, new)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _load_within(path)


def test_an_array_of_another_dtype_than_its_manifest_is_refused(tmp_path):
    path, arrays = _valid(tmp_path)
    arrays["model/head.bias"] = arrays["model/head.bias"].astype(np.float64)
    _signed(path, arrays)
    with pytest.raises(CheckpointError, match="manifest says <f4"):
        _load_within(path)


def test_a_version_1_checkpoint_without_a_manifest_still_loads(tmp_path):
    path, arrays = _valid(tmp_path)
    meta = _meta(arrays)
    del meta["arrays"]
    meta["version"] = 1
    _signed(path, arrays, meta)
    assert load_checkpoint(path)["step"] == 1

"""Checkpoints: round trip, atomic writes, and a clear error on any damage."""

import os

import numpy as np
import pytest

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

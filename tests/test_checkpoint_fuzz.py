"""Checkpoints mutated at random (hypothesis): every load is either a valid checkpoint or a
CheckpointError, never another exception, and never reads more than the file holds.

Two kinds of mutation: bytes of the file flipped, cut or inserted (damage), and meta fields replaced
by arbitrary JSON with the checksum recomputed (a crafted file, which the checksum cannot catch).
"""

import json
import math
import os
import tracemalloc

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from gpurnn import checkpoint as ck  # noqa: E402
from gpurnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from gpurnn.model import Trainer, make_model  # noqa: E402
from gpurnn.tasks import Adding  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """The bytes of a valid checkpoint and its arrays (read once, from a file we wrote)."""
    task = Adding(6)
    tr = Trainer(make_model(task, "gru", 4, backend="cpu", seed=0), task, batch_size=2, eval_sequences=4)
    tr.train_step()
    path = tmp_path_factory.mktemp("ck") / "checkpoint.npz"
    save_checkpoint(path, tr.state(), config={"cell": "gru", "hidden": 4}, extra={"vocab": ["a", "b"]})
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return path.read_bytes(), arrays


def _check(path):
    """Load; a CheckpointError is fine, anything else fails; a success must be a valid checkpoint."""
    tracemalloc.start()
    try:
        got = load_checkpoint(path)
    except CheckpointError as e:
        assert "\n" not in str(e)
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 8 * os.path.getsize(path) + (2 << 20), f"loading allocated {peak} bytes"
    assert isinstance(got["step"], int) and not isinstance(got["step"], bool) and got["step"] >= 0
    assert isinstance(got["config"], dict) and isinstance(got["extra"], dict)
    opt = got["optimizer"]
    assert isinstance(opt["steps"], int) and opt["steps"] >= 0 and math.isfinite(opt["lr"]) and opt["lr"] > 0
    np.random.default_rng().bit_generator.state = got["rng"]
    for a in list(got["model"].values()) + [v for s in opt["state"].values() for v in s.values()]:
        assert a.dtype in (np.float32, np.float64)
    return got


@SETTINGS
@given(data=st.data())
def test_damaged_bytes_load_or_raise_checkpoint_error(tmp_path, valid, data):
    raw = bytearray(valid[0])
    kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        for k in range(data.draw(st.integers(1, 8))):
            raw[(at + k) % len(raw)] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        raw = raw[:at] + raw[at + data.draw(st.integers(1, 64)):]
    else:
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(bytes(raw))
    _check(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


def _paths(value, prefix=()):
    """Every path into a JSON value: its keys and list indices, depth first."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _replace(value, path, new):
    if not path:
        return new
    value = value.copy()
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


@SETTINGS
@given(data=st.data())
def test_crafted_meta_with_a_valid_checksum_loads_or_raises_checkpoint_error(tmp_path, valid, data):
    arrays = dict(valid[1])
    meta = json.loads(arrays["meta"].tobytes().decode())
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(list(_paths(meta))))
        if data.draw(st.booleans()) and where and isinstance(where[-1], str):
            node = meta
            for k in where[:-1]:
                node = node[k]
            meta = _replace(meta, where[:-1], {k: v for k, v in node.items() if k != where[-1]})  # drop a field
        else:
            meta = _replace(meta, where, data.draw(json_values))
    arrays.pop("checksum")
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays["checksum"] = np.frombuffer(ck._digest(arrays).encode(), dtype=np.uint8)
    path = tmp_path / "checkpoint.npz"
    np.savez(path, **arrays)
    _check(path)


@SETTINGS
@given(data=st.data())
def test_crafted_array_headers_with_a_valid_checksum_load_or_raise_checkpoint_error(tmp_path, valid, data):
    """An array replaced by one of another dtype or shape (meta unchanged or its manifest made to agree)."""
    arrays = dict(valid[1])
    meta = json.loads(arrays["meta"].tobytes().decode())
    key = data.draw(st.sampled_from(sorted(k for k in arrays if k not in ("meta", "checksum"))))
    dtype = data.draw(st.sampled_from(["<f4", "<f8", "<i8", "|u1", "<c8", ">f4"]))
    shape = tuple(data.draw(st.lists(st.integers(0, 5), max_size=3)))
    arrays[key] = np.zeros(shape, dtype)
    if data.draw(st.booleans()):
        meta["arrays"][key] = [np.dtype(dtype).str, list(shape)]
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    arrays.pop("checksum")
    arrays["checksum"] = np.frombuffer(ck._digest(arrays).encode(), dtype=np.uint8)
    path = tmp_path / "checkpoint.npz"
    np.savez(path, **arrays)
    _check(path)


# ---------------------------------------------------------------- the config that rebuilds the model
@pytest.mark.parametrize("cell", ["rnn", "rnn-relu", "lstm", "gru"])
@pytest.mark.parametrize("inputs", [dict(vocab_size=7), dict(vocab_size=7, embed_size=5), dict(input_size=3),
                                    dict(input_size=3, embed_size=6)])
@pytest.mark.parametrize("layers", [1, 3])
def test_model_shapes_are_those_of_the_model_built(cell, inputs, layers):
    from gpurnn.model import SequenceModel, sequence_model_shapes
    built = SequenceModel(cell, 4, 2, num_layers=layers, backend="cpu", **inputs).state_dict()
    assert sequence_model_shapes(cell, 4, 2, num_layers=layers, **inputs) == {k: v.shape for k, v in built.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The files of a tiny trained run: (config text, checkpoint arrays)."""
    from gpurnn import cli
    out = tmp_path_factory.mktemp("run") / "run"
    assert cli.main(["train", "--hidden", "4", "--seq-len", "6", "--batch", "2", "--steps", "2", "--eval-sequences",
                     "4", "--backend", "cpu", "--no-progress", "--out", str(out)]) == 0
    with np.load(out / "checkpoint.npz") as f:
        return {k: f[k] for k in f.files if k != "checksum"}


def _recheck(arrays, path):
    """Write ``arrays`` as a checkpoint at ``path`` with its checksum recomputed, as anyone can."""
    arrays = dict(arrays)
    arrays["checksum"] = np.frombuffer(ck._digest(arrays).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def _with_config(arrays, **entries):
    meta = json.loads(arrays["meta"].tobytes().decode())
    meta["config"].update(entries)
    return dict(arrays, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


@pytest.mark.parametrize("entries", [dict(hidden=20000), dict(layers=10 ** 6), dict(embed=10 ** 9),
                                     dict(layers=2), dict(cell="gru")])
def test_a_config_that_does_not_fit_its_weights_is_refused_before_a_model_is_built(tmp_path, run, entries):
    from gpurnn import cli, load_model
    os.makedirs(tmp_path / "run")
    _recheck(_with_config(run, **entries), tmp_path / "run" / "checkpoint.npz")
    tracemalloc.start()
    with pytest.raises(CheckpointError, match="its config .* (makes a model of|gives 'rnn.weight_ih_l0' the shape)"):
        load_model(tmp_path / "run")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated before the refusal"
    assert cli.main(["train", "--resume", str(tmp_path / "run"), "--steps", "4", "--no-progress"]) == 1


config_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 10 ** 12), st.sampled_from([10 ** 40, -10 ** 40]),
                          st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                          st.sampled_from(["lstm", "gru", "rnn", "adding", "copy", "charlm", "data", "float64"]),
                          st.lists(st.integers(0, 3), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(st.sampled_from(["task", "cell", "hidden", "layers", "embed", "dtype", "seq_len",
                                                 "copy_len", "seed", "batch", "lr", "data", "text", "init_scale"]),
                               config_values, min_size=1, max_size=3))
def test_crafted_configs_load_or_raise_checkpoint_error_without_allocating_their_claims(tmp_path, run, entries):
    from gpurnn import load_model
    path = tmp_path / "checkpoint.npz"
    _recheck(_with_config(run, **entries), path)
    tracemalloc.start()
    try:
        trained = load_model(path, backend="cpu")
    except CheckpointError as e:
        assert "\n" not in str(e)
        trained = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak} bytes allocated for {entries}"
    if trained is not None:
        assert trained.predict(np.zeros((2, 6, 2))).shape == (2, 1)

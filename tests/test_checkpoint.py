"""Checkpoints: round trip, RNG states, atomic writes, refusal of code-running pickles."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from dynapp.engine.checkpoint import (
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    state_is_finite,
)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_round_trip_full_training_state(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "step": 7,
        "epoch": 1,
        "config": {"optim": {"lr": 0.1, "name": "x"}, "data": {"splits": [1, 2]}, "maybe": None},
        "rng": get_rng_state(),
    }
    path = save_checkpoint(state, tmp_path / "ck" / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["config"] == state["config"]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["model"][k], v)
    opt2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.pt"]


def test_rng_state_restores_all_generators(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    path = save_checkpoint({"rng": get_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), np.random.normal(), torch.rand(1).item())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), np.random.normal(), torch.rand(1).item()) == expected


def test_code_running_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Evil()}, path)  # torch.save pickles arbitrary objects
    with pytest.raises(CheckpointError, match="would run code"):
        load_checkpoint(path)
    # a raw pickle file too
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Evil(), protocol=2))
    with pytest.raises(CheckpointError, match="refused|cannot read"):
        load_checkpoint(raw)


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(4)}, good)
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    # damaged or foreign files raise all sorts inside torch.load (EOFError, KeyError, IndexError,
    # struct.error, RuntimeError, UnpicklingError): each is one CheckpointError naming the file
    junk = [b"", b"not a checkpoint at all\n" * 5, data[: len(data) // 2], pickle.dumps([1, 2], protocol=0)]
    junk += [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in range(1, 400, 7)]
    for i, content in enumerate(junk):
        bad = tmp_path / f"bad{i}.pt"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint {bad}: not a PyTorch checkpoint"):
            load_checkpoint(bad)


def test_nan_state_is_never_written(tmp_path):
    good = save_checkpoint({"w": torch.ones(3)}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint({"w": torch.tensor([1.0, float("nan")])}, good)
    assert torch.equal(load_checkpoint(good)["w"], torch.ones(3))
    assert not state_is_finite({"a": [torch.tensor([float("inf")])]})
    assert state_is_finite({"a": torch.tensor([1, 2]), "b": 3.0})


def test_crash_mid_write_keeps_last_good(tmp_path, monkeypatch):
    path = save_checkpoint({"w": torch.zeros(2)}, tmp_path / "last.pt")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint({"w": torch.ones(2)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_model_state_dict_unwraps_and_strips_module_prefix(tmp_path):
    from dynapp.engine.checkpoint import model_state_dict, strip_module_prefix

    w = torch.ones(2)
    assert strip_module_prefix({"module.a.w": w, "b": w}) == {"a.w": w, "b": w}
    path = save_checkpoint({"model": {"module.head.weight": w}, "step": 3, "classes": ["a", "b"]}, tmp_path / "ck.pt")
    loaded = load_checkpoint(path)
    assert list(model_state_dict(loaded)) == ["head.weight"] and loaded["classes"] == ["a", "b"]
    assert list(model_state_dict({"conv.weight": w})) == ["conv.weight"]  # a plain state dict
    with pytest.raises(ValueError, match="neither a state dict"):
        model_state_dict([w])

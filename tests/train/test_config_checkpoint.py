"""Config files and checkpoints: validation, atomic writes, errors that name the file."""

import pytest
import torch

from dnmp.train import (CheckpointError, TrainConfig, latest_checkpoint, load_checkpoint,
                        load_config, save_checkpoint)
from dnmp.train.checkpoint import list_checkpoints


def test_config_toml_overrides_and_unknown_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("steps = 12\nvoxel_size = 1.0\ncoarse_voxel_size = 2.0\n")
    cfg = load_config(p, {"batch_size": 64})
    assert (cfg.steps, cfg.voxel_size, cfg.batch_size) == (12, 1.0, 64)
    assert cfg.feature_dim == TrainConfig().feature_dim
    p.write_text("stepz = 3\n")
    with pytest.raises(ValueError, match=r"c\.toml: unknown setting\(s\) stepz"):
        load_config(p)
    p.write_text("steps = [\n")
    with pytest.raises(ValueError, match="not a valid TOML"):
        load_config(p)
    p.write_text("near = 5.0\nfar = 1.0\n")
    with pytest.raises(ValueError, match="near < far"):
        load_config(p)
    for bad, msg in [('steps = "abc"', "steps must be int"), ("steps = 1.5", "steps must be int"),
                     ("log_every = 0", "log_every"), ('point_kinds = "lidar"', "list of strings"),
                     ("lr_mlp = -1.0", "learning rates"), ("hidden = 0", "hidden")]:
        p.write_text(bad + "\n")
        with pytest.raises(ValueError, match=msg):
            load_config(p)
    p.write_text("voxel_size = 1\ncoarse_voxel_size = 0\n")  # an int where a float is expected is fine
    assert load_config(p).coarse_voxel_size == 0.0
    p.write_text("voxel_size = 1.0\n")
    with pytest.raises(ValueError, match="coarse_voxel_size .* must be 0"):
        load_config(p)
    p.write_text("voxel_size = 1\ncoarse_voxel_size = 0\n")
    assert load_config(p).voxel_size == 1.0
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_config(tmp_path / "missing.toml")


def test_checkpoint_roundtrip_keep_and_latest(tmp_path):
    for step in (5, 10, 15, 20):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((2,), float(step))}}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000015.pt", "step_0000020.pt"]
    assert latest_checkpoint(tmp_path).name == "step_0000020.pt"
    ck = load_checkpoint(tmp_path)
    assert ck["step"] == 20 and ck["format"] == "dnmp-checkpoint"
    torch.testing.assert_close(ck["model"]["w"], torch.full((2,), 20.0))
    assert not list(tmp_path.glob(".tmp_*"))  # no temporary left behind


def test_checkpoint_errors_name_the_file(tmp_path):
    bad = tmp_path / "step_0000001.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="step_0000001.pt: cannot read checkpoint"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"hello": 1}, other)
    with pytest.raises(CheckpointError, match="other.pt: not a dnmp checkpoint"):
        load_checkpoint(other)
    torch.save({"format": "dnmp-checkpoint", "version": 99}, other)
    with pytest.raises(CheckpointError, match="version 99 is not supported"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(_mkdir(tmp_path / "empty"))


def _mkdir(p):
    p.mkdir()
    return p


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"model": {}})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, {"model": {}})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step_0000001.pt"]
    assert load_checkpoint(tmp_path)["step"] == 1

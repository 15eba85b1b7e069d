"""Command-line fixes of issue 10: runs open from any working directory, geometry.pt is
not rendered as if trained, `render` has its own folder, `profile` waits passively
unless --spin, faces_per_pixel is bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dnmp.cli import main
from dnmp.train import load_checkpoint
from dnmp.train.checkpoint import checkpoint_scene_path
from dnmp.train.config import MAX_FACES_PER_PIXEL, TrainConfig

from .conftest import make_tiny_scene

CONFIG = ("steps = 4\nbatch_size = 64\ncheckpoint_every = 2\nhidden = 8\nfeature_dim = 4\n"
          "geometry_steps = 3\ngeometry_window = 16\ngeometry_windows = 2\n")


@pytest.fixture
def relative_run(tmp_path, monkeypatch):
    """A run trained with relative paths from tmp_path: data/tiny -> runs/tiny."""
    make_tiny_scene(tmp_path / "data" / "tiny", depth=True)
    (tmp_path / "c.toml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "data/tiny", "--out", "runs/tiny", "--config", "c.toml", "--quiet"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return tmp_path / "runs" / "tiny"


def _one_error(capsys, *needles):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(err) == 1 and err[0].startswith("dnmp: error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def test_run_trained_with_relative_paths_opens_from_anywhere(relative_run, tmp_path, capsys):
    ckpt = load_checkpoint(relative_run)
    assert ckpt["scene"]["path"] == str((tmp_path / "data" / "tiny").resolve())
    proc = subprocess.run([sys.executable, "-m", "dnmp.cli", "eval", str(relative_run), "--no-images"],
                          cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["num_test_frames"] == 1
    assert main(["render", str(relative_run)]) == 0  # in-process, cwd is tmp_path/elsewhere
    assert main(["profile", str(relative_run), "--json", "--repeats", "1", "--no-memory"]) == 0
    capsys.readouterr()

    # a checkpoint of an older dnmp stored the path relative to the training command's cwd
    path = relative_run / "checkpoints" / "step_0000004.pt"
    old = torch.load(path, weights_only=True)
    old["scene"]["path"] = "data/tiny"
    torch.save(old, path)
    found = checkpoint_scene_path(load_checkpoint(path))  # tried relative to the run's parents
    assert found is not None and found.resolve() == (tmp_path / "data" / "tiny").resolve()
    assert main(["eval", str(relative_run), "--no-images"]) == 0
    capsys.readouterr()
    old["scene"]["path"] = "gone/tiny"
    torch.save(old, path)
    assert main(["eval", str(relative_run), "--no-images"]) == 2
    _one_error(capsys, "is not there any more", "--scene")


def test_geometry_checkpoint_is_not_rendered_and_render_has_its_own_folder(relative_run, capsys):
    geo = relative_run / "checkpoints" / "geometry.pt"
    for cmd in ("render", "eval"):
        assert main([cmd, str(geo)]) == 2
        _one_error(capsys, "geometry.pt", "geometry stage's model", "untrained")
    mesh = relative_run.parent / "geo.ply"
    assert main(["export-mesh", str(geo), "--out", str(mesh), "--colour"]) == 2  # grey colours
    _one_error(capsys, "geometry.pt", "untrained", "colours would be grey")
    assert not mesh.exists()
    assert main(["export-mesh", str(geo), "--out", str(mesh)]) == 0 and mesh.stat().st_size > 0  # shapes
    capsys.readouterr()
    assert main(["render", str(relative_run)]) == 0
    assert sorted(p.name for p in (relative_run / "renders" / "test_frames").iterdir()) == ["000002.png"]
    # train's held-out renders are untouched: only <frame>_pred / _gt there
    assert sorted(p.name for p in (relative_run / "renders" / "test").iterdir()) == [
        "000002_gt.png", "000002_pred.png"]


def test_profile_waits_passively_unless_spin(relative_run, monkeypatch, capsys):
    for extra, policy in (([], "PASSIVE"), (["--spin"], "ACTIVE")):
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        assert main(["profile", str(relative_run), "--json", "--repeats", "1", "--no-memory", *extra]) == 0
        assert json.loads(capsys.readouterr().out)["omp_wait_policy"] == policy
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # an explicit setting wins over --spin
    assert main(["profile", str(relative_run), "--repeats", "1", "--no-memory", "--spin",
                 "--faces-per-pixel", "6"]) == 0
    out = capsys.readouterr().out
    assert "(OMP_WAIT_POLICY=PASSIVE)" in out.splitlines()[0] and "faces_per_pixel 6 (fine scale)" in out
    # --geometry times as many steps as --repeats asks (it used to time at least 5)
    assert main(["profile", str(relative_run), "--json", "--repeats", "2", "--no-memory", "--geometry"]) == 0
    assert len(json.loads(capsys.readouterr().out)["geometry_step_ms_runs"]) == 2


def test_faces_per_pixel_is_bounded(tmp_path, capsys):
    with pytest.raises(ValueError, match=f"between 1 and {MAX_FACES_PER_PIXEL}"):
        TrainConfig(faces_per_pixel=100000).validate()
    with pytest.raises(ValueError, match="coarse_faces_per_pixel must be between"):
        TrainConfig(coarse_faces_per_pixel=MAX_FACES_PER_PIXEL + 1).validate()
    TrainConfig(faces_per_pixel=MAX_FACES_PER_PIXEL).validate()
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--faces-per-pixel", "100000"])
    assert exc.value.code == 2
    assert f"--faces-per-pixel: must be between 1 and {MAX_FACES_PER_PIXEL}, got 100000" in capsys.readouterr().err
    cfg = tmp_path / "k.toml"
    cfg.write_text("faces_per_pixel = 100000\n")
    scene = make_tiny_scene(tmp_path / "s")
    assert main(["train", str(scene), "--out", str(tmp_path / "run"), "--config", str(cfg)]) == 2
    _one_error(capsys, "k.toml", "faces_per_pixel", "between 1 and 32")
    assert not (tmp_path / "run").exists()

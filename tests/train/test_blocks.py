"""Long drives as overlapping blocks: planning, blend weights, subsets, training, rendering."""

import json

import numpy as np
import pytest
import torch

from dnmp.cli import main
from dnmp.data import load_scene
from dnmp.data.subset import points_seen, subset_scene
from dnmp.train.blocks import (BlockRenderer, DrivePath, blend_weights, drive_instants, plan_blocks,
                               read_manifest)
from dnmp.train.config import TrainConfig
from dnmp.train.pipeline import train
from dnmp.train.run import open_run

FAST = dict(batch_size=256, checkpoint_every=10, log_every=5, lr_features=0.05, lr_mlp=0.01,
            hidden=16, feature_dim=8, time_budget_minutes=0)


@pytest.fixture
def drive(make_scene):
    return load_scene(make_scene("drive", frames=12, width=32, height=24))


def test_plan_covers_every_instant_with_overlapping_neighbours(drive):
    times, inst = drive_instants(drive)
    assert len(times) == 12
    assert len(plan_blocks(drive, 0, 2)) == 1 and len(plan_blocks(drive, 12, 2)) == 1
    blocks = plan_blocks(drive, 5, 2)
    assert len(blocks) == 4  # ceil((12 - 2) / (5 - 2))
    assert blocks[0].first == 0 and blocks[-1].last == 11
    for a, b in zip(blocks, blocks[1:]):
        assert a.last - b.first + 1 >= 2  # overlap of at least 2 instants
        assert a.last < b.last and a.first < b.first
    for b in blocks:
        assert b.last - b.first + 1 == 5
        assert b.frames == [f.name for f, i in zip(drive.frames, inst) if b.first <= i <= b.last]
    seen = {n for b in blocks for n in b.frames}
    assert seen == {f.name for f in drive.frames}
    with pytest.raises(ValueError, match="block_overlap"):
        plan_blocks(drive, 5, 3)


def test_blend_weights_are_a_continuous_partition_of_unity(drive):
    blocks = plan_blocks(drive, 5, 2)
    pos = np.linspace(-1, 12, 2601)
    w = np.array([[blend_weights(blocks, p).get(i, 0.0) for i in range(len(blocks))] for p in pos])
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    assert (w >= 0).all() and ((w > 0).sum(1) <= 2).all()
    assert np.abs(np.diff(w, axis=0)).max() < 0.01  # no jump anywhere: no seam in a video
    # outside overlaps a single block renders
    assert blend_weights(blocks, blocks[0].first) == {0: 1.0}
    assert blend_weights(blocks, blocks[-1].last) == {len(blocks) - 1: 1.0}


def test_drive_path_positions(drive):
    path = DrivePath(drive)
    for f, i in zip(drive.frames, drive_instants(drive)[1]):
        assert path.position(f.camera_centre) == pytest.approx(i, abs=1e-9)
    mid = (drive.frames[3].camera_centre + drive.frames[4].camera_centre) / 2 + np.array([0, 0.3, 0])
    assert path.position(mid) == pytest.approx(3.5, abs=1e-9)


def test_subset_keeps_frames_and_points_seen_by_them(drive):
    sub = subset_scene(drive, [f.name for f in drive.frames[:3]], name="b0")
    assert [f.name for f in sub.frames] == [f.name for f in drive.frames[:3]]
    assert sub.fingerprint() != drive.fingerprint()
    kept = sub.load_points()
    np.testing.assert_array_equal(kept, drive.load_points())  # the wall is in view of every frame
    rng = np.random.default_rng(0)
    pts = rng.uniform([-15, -10, -5], [15, 10, 15], (3000, 3)).astype(np.float32)
    # brute force: project every point into every subset frame
    want = []
    for p in pts.astype(np.float64):
        ok = False
        for f in sub.frames:
            cam = sub.camera_of(f)
            q = f.world_to_cam() @ np.append(p, 1.0)
            if q[2] > 0.05:
                u, v = cam.fx * q[0] / q[2] + cam.cx, cam.fy * q[1] / q[2] + cam.cy
                ok |= -0.5 <= u < cam.width - 0.5 and -0.5 <= v < cam.height - 0.5
        want.append(ok)
    want = np.array(want)
    assert 0 < want.sum() < len(pts)
    np.testing.assert_array_equal(points_seen(pts, sub, sub.frames), want)
    with pytest.raises(ValueError, match="not frames of scene"):
        subset_scene(drive, ["nope"])


def test_block_run_trains_renders_and_resumes(drive, tmp_path):
    cfg = TrainConfig(steps=20, block_frames=5, block_overlap=2, **FAST)
    out = tmp_path / "run"
    logs = []
    res = train(drive, out, cfg, stages=("radiance",), progress=False, log=logs.append)
    m = read_manifest(out)
    assert res["num_blocks"] == 4 and m["complete"] and len(m["blocks"]) == 4
    assert all(b["status"] == "done" and b["step"] == 20 for b in m["blocks"])
    for b in m["blocks"]:
        ck = torch.load(next((out / b["folder"] / "checkpoints").glob("step_*.pt")), weights_only=True)
        assert ck["scene"]["frames"] == b["frames"]
        assert not (out / b["folder"] / "renders").exists()  # blocks do not score on their own
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_test_frames"] == 1 and metrics["test_psnr"] > 10
    # the run renders each camera with the blocks around it; inside one block alone it
    # is exactly that block's image
    run = open_run(out)
    assert isinstance(run.renderer, BlockRenderer) and run.blocks == 4
    f0 = drive.frames[0]
    cam = drive.camera_of(f0)
    args = (cam.intrinsics(as_tensor=True), torch.from_numpy(f0.cam_to_world), cam.height, cam.width)
    assert run.renderer.weights(f0.cam_to_world) == {0: 1.0}
    torch.testing.assert_close(run.renderer.render(*args)["rgb"],
                               run.renderer.renderer(0).render(*args)["rgb"])
    # a frame in an overlap blends two blocks
    blocks = run.renderer.blocks
    f_mid = next(f for f, i in zip(drive.frames, drive_instants(drive)[1])
                 if blocks[0].first < i < blocks[0].last and i > blocks[1].first)
    w = run.renderer.weights(f_mid.cam_to_world)
    assert set(w) == {0, 1}
    a, b = (run.renderer.renderer(i).render(cam.intrinsics(as_tensor=True),
                                            torch.from_numpy(f_mid.cam_to_world), cam.height, cam.width)
            for i in (0, 1))
    got = run.renderer.render(cam.intrinsics(as_tensor=True), torch.from_numpy(f_mid.cam_to_world),
                              cam.height, cam.width)
    torch.testing.assert_close(got["rgb"], w[0] * a["rgb"] + w[1] * b["rgb"])
    # a block checkpoint alone opens with its own frames
    single = open_run(out / "blocks" / "block_001")
    assert [f.name for f in single.scene.frames] == m["blocks"][1]["frames"]
    # without --resume an existing run is refused; with it, only unfinished blocks train
    with pytest.raises(FileExistsError, match="--resume"):
        train(drive, out, cfg, stages=("radiance",), progress=False, log=logs.append)
    m["blocks"][2]["status"] = "pending"
    (out / "manifest.json").write_text(json.dumps(m))
    logs.clear()
    train(drive, out, None, stages=("radiance",), resume=True, progress=False, log=logs.append)
    kept = [line for line in logs if "done earlier" in str(line)]
    assert len(kept) == 3 and any("block_002" in str(line) and "resuming" in str(line) for line in logs)
    assert read_manifest(out)["blocks"][2]["status"] == "done"


def test_cli_render_and_export_a_block_run(drive, tmp_path, capsys):
    cfg = TrainConfig(steps=5, block_frames=6, block_overlap=2, **FAST)
    out = tmp_path / "run"
    train(drive, out, cfg, stages=("radiance",), progress=False, log=lambda *a: None)
    assert main(["render", str(out), "--split", "all", "--out", str(tmp_path / "frames")]) == 0
    assert len(list((tmp_path / "frames").glob("*.png"))) == len(drive.frames)
    # the scene moved since training: export-mesh takes --scene like render and eval
    import shutil
    moved = tmp_path / "moved_scene"
    shutil.move(str(drive.root), moved)
    assert main(["export-mesh", str(out), "--out", str(tmp_path / "mesh.ply")]) == 2
    assert "--scene" in capsys.readouterr().err
    assert main(["export-mesh", str(out), "--out", str(tmp_path / "mesh.ply"), "--scene", str(moved)]) == 0
    n = len(read_manifest(out)["blocks"])
    assert sorted(p.name for p in tmp_path.glob("mesh_block_*.ply")) == \
        [f"mesh_block_{i:03d}.ply" for i in range(n)]
    shutil.move(str(moved), drive.root)
    # an unfinished run is refused with one line
    m = read_manifest(out)
    m["blocks"][0]["status"] = "pending"
    (out / "manifest.json").write_text(json.dumps(m))
    assert main(["render", str(out)]) == 2
    assert "not trained yet" in capsys.readouterr().err


def test_plan_keeps_the_overlap_near_the_setting(drive, make_scene):
    # one instant more than a block: two short blocks sharing ~2 instants, not 10
    blocks = plan_blocks(drive, 11, 2)
    assert [(b.first, b.last) for b in blocks] == [(0, 6), (5, 11)]
    long = load_scene(make_scene("d24", frames=24, width=8, height=6))
    with pytest.raises(ValueError, match="three blocks"):
        plan_blocks(long, 10, 5)
    shared = [a.last - b.first + 1 for a, b in zip(plan_blocks(long, 20, 8), plan_blocks(long, 20, 8)[1:])]
    assert shared and min(shared) >= 8 and max(shared) <= 9


def test_malformed_manifest_and_foreign_checkpoint_give_one_line_errors(drive, tmp_path, capsys):
    cfg = TrainConfig(steps=5, block_frames=6, block_overlap=2, **FAST)
    out = tmp_path / "run"
    train(drive, out, cfg, stages=("radiance",), progress=False, log=lambda *a: None)
    good = (out / "manifest.json").read_text()
    # a fresh train into a block run is refused whatever its settings
    with pytest.raises(FileExistsError, match="block run"):
        train(drive, out, TrainConfig(steps=5, **FAST), stages=("radiance",), progress=False,
              log=lambda *a: None)
    for bad in ('"blocks": []', '"blocks": "abc"', '"first_instant": "x"'):
        m = json.loads(good)
        if bad.startswith('"blocks"'):
            m["blocks"] = json.loads(bad.split(": ", 1)[1])
        else:
            m["blocks"][0]["first_instant"] = "x"
        (out / "manifest.json").write_text(json.dumps(m))
        assert main(["render", str(out)]) == 2
        assert "malformed block manifest" in capsys.readouterr().err
    (out / "manifest.json").write_text(good)
    # block_001's folder holding block_000's checkpoint is refused
    import shutil
    b1 = out / "blocks" / "block_001" / "checkpoints"
    shutil.rmtree(b1)
    shutil.copytree(out / "blocks" / "block_000" / "checkpoints", b1)
    # every block is checked before anything is written
    assert main(["render", str(out), "--split", "all", "--out", str(tmp_path / "frames")]) == 2
    assert "not the checkpoint of block_001" in capsys.readouterr().err
    assert not (tmp_path / "frames").exists()
    assert main(["export-mesh", str(out), "--out", str(tmp_path / "mesh.ply")]) == 2
    assert "not the checkpoint of block_001" in capsys.readouterr().err
    assert not list(tmp_path.glob("mesh*.ply"))


def test_geometry_interrupted_in_a_block_run_names_the_resume_command(make_scene, tmp_path, monkeypatch):
    from dnmp.train.geometry import GeometryFitter

    drive = load_scene(make_scene("ddrive", frames=12, width=32, height=24, depth=True))

    def interrupted(self):
        raise KeyboardInterrupt

    cfg = TrainConfig(steps=5, block_frames=6, block_overlap=2, geometry_steps=3, geometry_window=8,
                      geometry_windows=2, **FAST)
    out, lines = tmp_path / "run", []
    monkeypatch.setattr(GeometryFitter, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(drive, out, cfg, progress=False, log=lines.append, steps=5)
    said = [ln for ln in lines if "geometry stage was interrupted" in ln]
    assert len(said) == 1 and "run the command again" not in said[0]
    assert f"`dnmp train {drive.root} --out {out} --resume --steps 5`" in said[0], said


def test_scene_mismatch_says_what_differs(drive, make_scene):
    from dnmp.train.checkpoint import scene_info, scene_mismatch

    info, here = scene_info(drive), str(drive.root.resolve())
    assert scene_mismatch(info, drive) is None
    renamed = dict(info, name="kitti00", fingerprint="1" * 16)
    assert scene_mismatch(renamed, drive) == f"belongs to scene 'kitti00' ({here}), not to 'tiny' ({here})"
    other = load_scene(make_scene("other", frames=3, width=32, height=24))  # also named 'tiny'
    why = scene_mismatch(info, other)
    assert f"in {here}, not to the scene of the same name in {other.root.resolve()}" in why, why
    changed = dict(info, fingerprint="0" * 16)  # same folder, its frame list changed since
    why = scene_mismatch(changed, drive)
    assert "changed since" in why and "0" * 16 in why and drive.fingerprint() in why


def test_resume_with_more_steps_extends_finished_blocks(drive, tmp_path):
    cfg = TrainConfig(steps=5, block_frames=6, block_overlap=2, **FAST)
    out = tmp_path / "run"
    train(drive, out, cfg, stages=("radiance",), progress=False, log=lambda *a: None)
    train(drive, out, None, stages=("radiance",), resume=True, steps=8, progress=False,
          log=lambda *a: None)
    m = read_manifest(out)
    assert all(b["step"] == 8 for b in m["blocks"]) and m["config"]["steps"] == 8


def test_manifest_without_newer_settings_reads_with_their_legacy_values(tmp_path):
    """A block run written before a setting existed continues with the value it was trained
    with (as a checkpoint's config does), not today's default."""
    from dnmp.train.blocks import FORMAT, MANIFEST, VERSION, read_manifest
    from dnmp.train.checkpoint import LEGACY_DEFAULTS

    cfg = TrainConfig().to_dict()
    for key in LEGACY_DEFAULTS:
        del cfg[key]
    manifest = {"format": FORMAT, "version": VERSION, "scene": {}, "config": cfg,
                "blocks": [{"name": "block_000", "folder": "blocks/block_000", "frames": ["a"],
                            "first_instant": 0, "last_instant": 3}]}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    got = read_manifest(tmp_path)["config"]
    assert {k: got[k] for k in LEGACY_DEFAULTS} == LEGACY_DEFAULTS
    assert LEGACY_DEFAULTS["bf16_matmul"] is False and TrainConfig().bf16_matmul is True
    assert TrainConfig.from_dict(got).to_dict() == {**TrainConfig().to_dict(), **LEGACY_DEFAULTS}

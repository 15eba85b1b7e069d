"""Geometry stage (paper Sec. 3.2): depth-loss gradients, the offset hinge, two
scales, the stage improving held-out depth on the synthetic wall, and its depth
source (LiDAR, else stereo depth images)."""

from __future__ import annotations

import json

import pytest
import torch

from dnmp.data import load_scene
from dnmp.evaluate import depth_errors
from dnmp.model import Primitives, ShapeDecoder
from dnmp.train import load_checkpoint
from dnmp.train.config import TrainConfig
from dnmp.train.geometry import (_FrameDepth, geometry_depth_kind, offset_hinge, window_cameras,
                                 window_depth_l1)
from dnmp.train.pipeline import parse_stages, train
from dnmp.train.factory import build_renderer, scene_centres

from ..conftest import WALL_Z, make_tiny_scene

QUIET = dict(progress=False, log=lambda *a: None)
FAST = dict(batch_size=256, checkpoint_every=10, log_every=5, hidden=16, feature_dim=4,
            time_budget_minutes=0, geometry_window=16, geometry_windows=4)


def _deforming_decoder(seed=0) -> ShapeDecoder:
    """A decoder whose shape depends on the latent (the untrained one ignores it)."""
    torch.manual_seed(seed)
    dec = ShapeDecoder(4, hidden=16)
    torch.nn.init.normal_(dec.mlp[-1].weight, std=0.05)
    for p in dec.parameters():
        p.requires_grad_(False)
    return dec


def test_offset_hinge_values():
    s = torch.tensor([0.5, 1.0])
    inside = torch.tensor([[0.2, -0.25, 0.0], [0.5, 0.0, -0.4]])
    assert offset_hinge(inside, s).item() == 0.0
    # 0.1 m past the half voxel of a 0.5 m voxel: (0.1 / 0.25)^2 / 4 = 0.04, mean over 2
    out = torch.tensor([[0.35, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert offset_hinge(out, s).item() == pytest.approx(0.02, rel=1e-5)


def test_window_cameras_shift_the_principal_point(tmp_path):
    scene = load_scene(make_tiny_scene(tmp_path / "s", depth=True))
    fd = _FrameDepth(scene, scene.frames_by_split("train")[0], 40.0)
    topleft, k = window_cameras(fd, torch.tensor([[15, 20], [0, 0], [29, 39]]), 8)
    assert topleft.tolist() == [[11, 16], [0, 0], [22, 32]]  # clamped inside 30x40
    assert torch.allclose(k[0, 0, 2], fd.intrinsics[0, 2] - 16)
    assert torch.allclose(k[2, 1, 2], fd.intrinsics[1, 2] - 22)


def _wall_problem(tmp_path):
    scene = load_scene(make_tiny_scene(tmp_path / "s", depth=True))
    frame = scene.frames_by_split("train")[0]
    fd = _FrameDepth(scene, frame, 40.0)
    centres = torch.tensor([[-0.5, 0.0, WALL_Z], [0.0, 0.0, WALL_Z], [0.5, 0.0, WALL_Z],
                            [0.0, 0.5, WALL_Z]])
    prims = Primitives(centres, 0.5, feature_dim=2, latent_dim=4, decoder=_deforming_decoder())
    cfg = TrainConfig(depth_max_range=40.0)
    topleft, k = window_cameras(fd, torch.tensor([[15, 20]]), 24)
    rows = topleft[:, :1, None] + torch.arange(24).view(1, 24, 1)
    cols = topleft[:, 1:, None] + torch.arange(24).view(1, 1, 24)
    gt = fd.depth[rows, cols]
    idx = torch.arange(4)

    def loss(lat, off):
        return window_depth_l1(prims, idx, lat, off, k, fd.world_to_cam, gt, cfg)[0]

    return prims, loss


def test_depth_loss_gradients_reach_latents_and_offsets(tmp_path):
    prims, loss = _wall_problem(tmp_path)
    lat = prims.latents.detach().clone().requires_grad_(True)
    off = torch.full((4, 3), 0.02).requires_grad_(True)
    value = loss(lat, off)
    value.backward()
    for g in (lat.grad, off.grad):
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    # spheres in front of the wall: moving them back (+z) lowers the L1 depth error
    assert (off.grad[:, 2] < 0).all()
    # central finite differences agree with the analytic gradient (the rasterizer's
    # backward through zbuf; float32, so a loose tolerance)
    eps = 1e-3
    for which, base in (("off", off), ("lat", lat)):
        for i, j in ((1, 2), (0, 0), (3, 1)):
            plus, minus = base.detach().clone(), base.detach().clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            args_p = (lat.detach(), plus) if which == "off" else (plus, off.detach())
            args_m = (lat.detach(), minus) if which == "off" else (minus, off.detach())
            fd = (loss(*args_p) - loss(*args_m)).item() / (2 * eps)
            g = base.grad[i, j].item()
            assert fd == pytest.approx(g, rel=0.1, abs=2e-4), (which, i, j)


def test_two_scales_composite_fine_before_coarse(tmp_path):
    scene = load_scene(make_tiny_scene(tmp_path / "s"))
    cfg = TrainConfig(shape_decoder="template", voxel_size=0.5, coarse_voxel_size=1.0,
                      faces_per_pixel=3, coarse_faces_per_pixel=2, **FAST)
    centres = scene_centres(scene, cfg)
    assert len(centres) == 2 and len(centres[1]) < len(centres[0])
    r = build_renderer(centres, cfg)
    assert r.primitives.scale_counts.tolist() == [len(centres[0]), len(centres[1])]
    assert r.primitives.voxel_sizes.unique().tolist() == [0.5, 1.0]
    frame = scene.frames[0]
    cam = scene.camera_of(frame)
    w2c = torch.from_numpy(frame.world_to_cam()).float()
    frags = r.rasterize(cam.intrinsics(as_tensor=True), w2c, (cam.height, cam.width))
    assert frags.pix_to_face.shape[-1] == 5
    n_fine_faces = len(centres[0]) * 80
    fine, coarse = frags.pix_to_face[..., :3], frags.pix_to_face[..., 3:]
    assert ((fine == -1) | (fine < n_fine_faces)).all()
    assert ((coarse == -1) | (coarse >= n_fine_faces)).all() and (coarse >= 0).any()
    # the coarse layers are the coarse primitives rasterized on their own
    from dnmp import ops

    verts, _ = r.geometry()
    alone = ops.rasterize(verts, r.primitives.faces[n_fine_faces:], cam.intrinsics(as_tensor=True),
                          w2c, (cam.height, cam.width), faces_per_pixel=2)
    expect = torch.where(alone.pix_to_face >= 0, alone.pix_to_face + n_fine_faces, -1)
    assert torch.equal(coarse, expect)
    assert torch.equal(frags.zbuf[..., 3:], alone.zbuf)


def test_geometry_stage_improves_held_out_depth_and_feeds_radiance(tmp_path):
    scene = load_scene(make_tiny_scene(tmp_path / "s", depth=True))
    cfg = TrainConfig(shape_decoder="template", voxel_size=0.5, coarse_voxel_size=0.0,
                      geometry_steps=60, geometry_lr_offset=1e-2, steps=5, **FAST)
    before = depth_errors(build_renderer(scene_centres(scene, cfg), cfg), scene, "test")
    out = tmp_path / "run"
    res = train(scene, out, cfg, stages=parse_stages("geometry"), **QUIET)
    geo = res["geometry"]
    assert geo["test_depth_template"]["median_m"] == pytest.approx(before["median_m"])
    # template spheres stick out of the wall by up to their radius (0.43 m); the
    # fitted offsets push them back onto it
    assert geo["test_depth_optimized"]["median_m"] < 0.6 * before["median_m"]
    assert (out / "checkpoints" / "geometry.pt").is_file()
    assert not list((out / "checkpoints").glob("step_*.pt"))
    # a later radiance-only run starts from the fitted geometry
    res2 = train(scene, out, None, stages=parse_stages("radiance"), **QUIET)
    ck = load_checkpoint(out)
    assert ck["step"] == 5 and res2["geometry"]["steps"] == 60
    geo_ck = load_checkpoint(out / "checkpoints" / "geometry.pt")
    assert torch.equal(ck["model"]["primitives.offsets"], geo_ck["model"]["primitives.offsets"])
    assert ck["model"]["primitives.offsets"].abs().max() > 0
    # offsets stay within one voxel
    assert ck["model"]["primitives.offsets"].abs().max() <= 0.5 + 1e-6
    m = json.loads((out / "metrics.json").read_text())
    assert m["geometry"]["test_depth_optimized"]["median_m"] == pytest.approx(
        geo["test_depth_optimized"]["median_m"])


def test_geometry_stage_needs_depth_images(tmp_path):
    scene = load_scene(make_tiny_scene(tmp_path / "s", depth=False))
    cfg = TrainConfig(shape_decoder="template", geometry_steps=2, steps=1, **FAST)
    with pytest.raises(ValueError, match="no training frame has LiDAR depth or stereo depth images") as e:
        train(scene, tmp_path / "run", cfg, **QUIET)
    assert "\n" not in str(e.value)


def _stereo_scene(tmp_path, test_lidar: bool):
    """The wall scene with its training frames' depth given as stereo depth
    (`stereo_depth`) instead of LiDAR; the test frame keeps its LiDAR depth
    when ``test_lidar``."""
    root = make_tiny_scene(tmp_path / "s", depth=True)
    sj = json.loads((root / "scene.json").read_text())
    for f in sj["frames"]:
        if f["split"] == "train":
            f["stereo_depth"] = f.pop("depth")
        elif not test_lidar:
            del f["depth"]
    (root / "scene.json").write_text(json.dumps(sj))
    return load_scene(root)


def test_geometry_depth_kind_choice(tmp_path):
    stereo = _stereo_scene(tmp_path / "a", test_lidar=True)
    assert stereo.depth_kinds("train") == ["stereo"] and stereo.depth_kinds("test") == ["lidar"]
    assert geometry_depth_kind(stereo, "auto") == "stereo"
    assert geometry_depth_kind(stereo, "stereo") == "stereo"
    with pytest.raises(ValueError, match="geometry_depth = 'lidar' but no training frame has LiDAR") as e:
        geometry_depth_kind(stereo, "lidar")
    assert "\n" not in str(e.value)
    lidar = load_scene(make_tiny_scene(tmp_path / "b", depth=True))
    assert geometry_depth_kind(lidar, "auto") == "lidar"  # LiDAR wins when there is some
    with pytest.raises(ValueError, match="no training frame has stereo depth images"):
        geometry_depth_kind(lidar, "stereo")
    with pytest.raises(ValueError, match="geometry_depth must be"):
        TrainConfig(geometry_depth="mvs").validate()


def test_geometry_stage_from_stereo_depth(tmp_path):
    """Without LiDAR on the training frames the stage fits the stereo depth, and
    the held-out depth error is still measured against the test frame's LiDAR."""
    scene = _stereo_scene(tmp_path, test_lidar=True)
    cfg = TrainConfig(shape_decoder="template", voxel_size=0.5, coarse_voxel_size=0.0,
                      geometry_steps=60, geometry_lr_offset=1e-2, steps=5, **FAST)
    res = train(scene, tmp_path / "run", cfg, stages=parse_stages("geometry"), **QUIET)
    geo = res["geometry"]
    assert geo["depth_source"] == "stereo" and geo["depth_frames"] == 4
    assert geo["test_depth_optimized"]["median_m"] < 0.6 * geo["test_depth_template"]["median_m"]
    assert "test_depth_note" not in geo


def test_geometry_stage_stereo_only_scene_says_depth_error_not_measured(tmp_path):
    scene = _stereo_scene(tmp_path, test_lidar=False)
    cfg = TrainConfig(shape_decoder="template", voxel_size=0.5, coarse_voxel_size=0.0,
                      geometry_steps=3, steps=1, **FAST)
    lines = []
    res = train(scene, tmp_path / "run", cfg, stages=parse_stages("geometry"), progress=False, log=lines.append)
    geo = res["geometry"]
    assert geo["depth_source"] == "stereo"
    assert geo["test_depth_template"] is None and geo["test_depth_optimized"] is None
    assert "no held-out frame has LiDAR depth" in geo["test_depth_note"]
    assert any("held-out depth error vs LiDAR: not measured" in str(ln) for ln in lines)
    assert any("stereo depth of 4 training frames" in str(ln) for ln in lines)


def test_parse_stages():
    assert parse_stages("radiance,geometry") == ("geometry", "radiance")
    with pytest.raises(ValueError, match="unknown"):
        parse_stages("geometry,colour")


def test_dnmp_train_runs_the_geometry_stage_on_a_stereo_only_scene(tmp_path, capsys):
    """`dnmp train` no longer skips the geometry stage when the scene has stereo
    depth images but no LiDAR."""
    from dnmp.cli import main

    scene = _stereo_scene(tmp_path, test_lidar=False)
    cfg = tmp_path / "fast.toml"
    cfg.write_text('shape_decoder = "template"\nvoxel_size = 0.5\ncoarse_voxel_size = 0.0\ngeometry_steps = 3\n'
                   "geometry_window = 16\ngeometry_windows = 2\nsteps = 2\nbatch_size = 256\nhidden = 16\n"
                   "feature_dim = 4\n")
    assert main(["train", str(scene.root), "--out", str(tmp_path / "run"), "--config", str(cfg), "--quiet"]) == 0
    assert "skipping the geometry stage" not in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "geometry.pt").is_file()
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["geometry"]["depth_source"] == "stereo" and "test_depth_note" in m["geometry"]

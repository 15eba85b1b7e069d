"""Which point clouds feed which primitive scale (train/factory.scene_centres):
far stereo points ("stereo_far") are voxelized at the coarse scale only, unless
there is one scale; errors name the scene."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dnmp.data import load_scene
from dnmp.data.ply import write_ply_points
from dnmp.model.primitives import voxelize
from dnmp.train.config import TrainConfig
from dnmp.train.factory import scene_centres


def _add_cloud(root, kind, pts):
    write_ply_points(root / "points" / f"{kind}.ply", np.asarray(pts, np.float32))
    meta = json.loads((root / "scene.json").read_text())
    meta["point_clouds"].append({"path": f"points/{kind}.ply", "kind": kind})
    (root / "scene.json").write_text(json.dumps(meta))


def _as_set(centres):
    return {tuple(np.round(c, 4)) for c in centres.numpy()}


@pytest.fixture
def far_scene(tiny_scene):
    # two far voxels 30 m out, one NaN row (ignored with a warning)
    _add_cloud(tiny_scene, "stereo_far", [[10.1, 0.1, 30.1], [-10.1, 0.1, 30.1], [np.nan, 0, 0]])
    return load_scene(tiny_scene)


def test_far_points_only_at_the_coarse_scale(far_scene, capsys):
    lidar = torch.from_numpy(far_scene.load_points("lidar"))
    far = torch.from_numpy(far_scene.load_points("stereo_far"))[:2]
    cfg = TrainConfig()
    assert cfg.coarse_only_point_kinds == ["stereo_far"]
    fine, coarse = scene_centres(far_scene, cfg)
    assert "NaN/Inf points in 'stereo_far'" in capsys.readouterr().err
    assert _as_set(fine) == _as_set(voxelize(lidar, cfg.voxel_size))
    assert _as_set(coarse) == _as_set(voxelize(torch.cat([lidar, far]), cfg.coarse_voxel_size))
    assert len(coarse) == len(voxelize(lidar, cfg.coarse_voxel_size)) + 2


def test_one_scale_or_no_coarse_only_kinds_keeps_far_points_fine(far_scene):
    lidar = torch.from_numpy(far_scene.load_points("lidar"))
    far = torch.from_numpy(far_scene.load_points("stereo_far"))[:2]
    both = _as_set(voxelize(torch.cat([lidar, far]), 0.25))
    (one,) = scene_centres(far_scene, TrainConfig(coarse_voxel_size=0.0))
    assert _as_set(one) == both
    fine, _ = scene_centres(far_scene, TrainConfig(coarse_only_point_kinds=[]))
    assert _as_set(fine) == both


def test_a_fine_scale_without_points_is_refused(far_scene):
    with pytest.raises(ValueError, match=r"every point kind \['stereo_far'\] is coarse-only"):
        scene_centres(far_scene, TrainConfig(point_kinds=["stereo_far"]))
    with pytest.raises(ValueError, match=r"no point cloud of kind \['sfm'\]"):
        scene_centres(far_scene, TrainConfig(point_kinds=["sfm"]))


def test_all_nan_fine_points_are_refused(tiny_scene):
    write_ply_points(tiny_scene / "points" / "lidar.ply", np.full((4, 3), np.nan, np.float32))
    _add_cloud(tiny_scene, "stereo_far", [[10.1, 0.1, 30.1]])
    with pytest.raises(ValueError, match=r"tiny: scene has no finite points .*\['lidar'\]"):
        scene_centres(load_scene(tiny_scene), TrainConfig())

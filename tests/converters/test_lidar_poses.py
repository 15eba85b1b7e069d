"""`--poses lidar`: chained point-to-plane ICP (lidar_odometry.icp_poses) on a
synthetic scene of planes and boxes scanned from known poses (each scan an
independent random sampling with noise, so no point is seen twice), failure on
unrelated scans, and the real ../shared/data/kitti_odometry_00 against its
recorded poses (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dnmp.converters.capture import ConversionError
from dnmp.data.rigid import rigid_inverse
from dnmp.converters.lidar_odometry import icp_poses, pose_errors
from _poses import rot_z as rz  # noqa: E402  (tests/ is on sys.path: conftest.py)

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "kitti_odometry_00"


def sensor_pose(k):
    """Scanner k -> world: ~1.2 m forward per scan, turning, a little pitch and bounce."""
    T = np.eye(4)
    c, s = np.cos(0.01 * k), np.sin(0.01 * k)
    T[:3, :3] = rz(0.03 * k) @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    T[:3, 3] = [1.2 * k, 0.15 * k ** 1.5, 1.7 + 0.02 * np.sin(k)]
    return T


def sample_scene(rng, n):
    """n random points on a street: ground, two facades with recesses, boxes (cars), a wall at the end."""
    parts = []

    def rect(origin, u, v, m):
        a, b = rng.random((2, m))
        return np.asarray(origin) + a[:, None] * np.asarray(u) + b[:, None] * np.asarray(v)

    parts.append(rect([-10, -12, 0], [50, 0, 0], [0, 24, 0], n // 3))
    for y, sgn in ((-9.0, 1), (9.0, -1)):
        for x0 in range(-10, 40, 8):
            depth = 0.0 if (x0 // 8) % 2 else 0.8 * sgn  # recessed every other 8 m
            parts.append(rect([x0, y - depth, 0], [8, 0, 0], [0, 0, 7], n // 30))
            parts.append(rect([x0, y, 0], [0, -depth if depth else 0.01, 0], [0, 0, 7], n // 150))
    for cx, cy in ((6, -5), (15, 4.5), (24, -5.5), (31, 5)):
        for face in ([[cx, cy, 0], [4, 0, 0], [0, 0, 1.5]], [[cx, cy + 1.8, 0], [4, 0, 0], [0, 0, 1.5]],
                     [[cx, cy, 0], [0, 1.8, 0], [0, 0, 1.5]], [[cx + 4, cy, 0], [0, 1.8, 0], [0, 0, 1.5]],
                     [[cx, cy, 1.5], [4, 0, 0], [0, 1.8, 0]]):
            parts.append(rect(*face, n // 120))
    parts.append(rect([40, -12, 0], [0, 24, 0], [0, 0, 8], n // 15))
    return np.concatenate(parts)


def make_scans(n_scans=5, n=25000, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    scans = []
    for k in range(n_scans):
        X = sample_scene(rng, n)  # a fresh sampling per scan: no exact correspondences
        T = rigid_inverse(sensor_pose(k))
        Xs = X @ T[:3, :3].T + T[:3, 3]
        Xs = Xs[np.linalg.norm(Xs, axis=1) < 35]  # the scanner's range
        scans.append(Xs + rng.normal(0, noise, Xs.shape))
    return scans


def test_icp_recovers_known_motion():
    scans = make_scans()
    poses, st = icp_poses(scans, quiet=True)
    truth = [rigid_inverse(sensor_pose(0)) @ sensor_pose(k) for k in range(len(scans))]
    np.testing.assert_allclose(poses[0], np.eye(4))
    err = pose_errors(poses, truth)
    assert err["max_translation_m"] < 0.03, err
    assert err["max_rotation_deg"] < 0.15, err
    assert st["min_fitness"] > 0.8 and st["mean_rmse"] < 0.2  # point-to-point, random samplings
    assert len(st["pairs"]) == len(scans) - 1


def test_pose_errors_definition():
    a = [np.eye(4), np.eye(4)]
    b = [np.eye(4), np.eye(4)]
    b[1] = b[1].copy()
    b[1][:3, 3] = [3.0, 4.0, 0.0]
    b[1][:3, :3] = rz(np.radians(2.0))
    e = pose_errors(a, b)
    assert e["translation_m"] == pytest.approx([0.0, 5.0])
    assert e["rotation_deg"] == pytest.approx([0.0, 2.0])
    assert e["final_drift_percent"] == pytest.approx(100.0)


def test_icp_fails_loudly_on_unrelated_scans():
    rng = np.random.default_rng(1)
    a = sample_scene(rng, 20000)
    b = rng.uniform(-30, 30, (20000, 3)) + [200, 0, 0]  # nothing in common
    with pytest.raises(ConversionError) as e:
        icp_poses([a, b], quiet=True, where="velodyne")
    msg = str(e.value)
    assert "\n" not in msg and "registration failed between scans 0 and 1" in msg


@pytest.mark.skipif(not (REAL / "sequences" / "00").is_dir(), reason="../shared/data/kitti_odometry_00 absent")
def test_real_kitti00_lidar_poses(tmp_path):
    from dnmp.converters.kitti_odometry import main

    rc = main([str(REAL), "--out", str(tmp_path / "o"), "--poses", "lidar", "--no-stereo",
               "--downscale", "4", "--quiet"])
    assert rc == 0
    rep = json.loads((tmp_path / "o" / "conversion_report.json").read_text())
    lp = rep["lidar_poses"]
    assert len(lp["pairs"]) == 9 and lp["min_fitness"] > 0.8
    # against SemanticKITTI's (ICP-refined) poses of the same 10 frames, 6.7 m of driving
    err = lp["vs_semantickitti"]
    assert err["max_translation_m"] < 0.15 and err["max_rotation_deg"] < 0.4, err

"""Waymo v2 converter: a synthetic segment written by the test as v2 Parquet
component tables (known vehicle poses, camera calibration, a range image made
by casting the documented beam directions at a known wall and ground), options,
distortion handling and corrupt inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _rig import inv, rigid, rot_z  # noqa: E402

from dnmp.converters.capture import ConversionError  # noqa: E402
from dnmp.converters.waymo import convert_waymo, main  # noqa: E402
from dnmp.data import SceneError  # noqa: E402

SEG = "seg_123_000_456_000"
W, H = 64, 48
N = 5  # frames
ORIGIN = np.array([4.2e5, -3.1e6, 12.0])  # UTM-like: far from zero
WALL_X = 30.0  # a wall 30 m ahead of the start, ground at the origin's height
CAMS = {1: ("FRONT", 40.0, 41.0, 31.5, 23.5, 0.0), 2: ("FRONT_LEFT", 30.0, 30.0, 32.0, 24.0, np.pi / 4)}
# Waymo camera frame: x forward, y left, z up; extrinsic = camera -> vehicle
CAM_EXT = {cid: rigid(rot_z(yaw), [1.5, 0.1 * cid, 2.0]) for cid, (_, _, _, _, _, yaw) in CAMS.items()}
LIDAR_EXT = rigid(rot_z(0.3), [1.0, 0.0, 2.2])  # yawed, so the azimuth correction matters
RH, RW = 12, 120
INCL = np.linspace(-0.30, 0.05, RH)  # ascending, as the calibration stores them


def vehicle_pose(i):
    return rigid(rot_z(0.02 * i), ORIGIN + [2.0 * i, 0.2 * i, 0.0])


def beam_dirs(incl_rows):
    """Unit directions [RH, RW, 3] of the range-image pixels in the LiDAR frame,
    written from the dataset's description: row 0 = highest beam; columns
    sweep azimuth from +pi down to -pi (vehicle heading), minus the
    extrinsic's yaw."""
    az_corr = np.arctan2(LIDAR_EXT[1, 0], LIDAR_EXT[0, 0])
    az = np.pi - (np.arange(RW) + 0.5) * 2 * np.pi / RW - az_corr
    inc = incl_rows[::-1]
    A, I = np.meshgrid(az, inc)
    return np.stack([np.cos(A) * np.cos(I), np.sin(A) * np.cos(I), np.sin(I)], -1)


def range_image(i, incl_rows):
    """Ranges of the beams from the LiDAR at frame i to the wall / ground."""
    T = vehicle_pose(i) @ LIDAR_EXT
    d = beam_dirs(incl_rows) @ T[:3, :3].T
    o = T[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        s_wall = np.where(d[..., 0] > 1e-6, (ORIGIN[0] + WALL_X - o[0]) / d[..., 0], np.inf)
        s_ground = np.where(d[..., 2] < -1e-6, (ORIGIN[2] - o[2]) / d[..., 2], np.inf)
    s = np.minimum(s_wall, s_ground)
    s[s > 75] = -1.0  # no return
    out = np.zeros((RH, RW, 4), np.float32)
    out[..., 0] = s
    out[..., 1] = 0.5
    return out


def flat(T):
    return np.asarray(T, np.float64).ravel().tolist()


def write_table(root, comp, cols):
    (root / comp).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), root / comp / f"{SEG}.parquet")


def write_waymo(root: Path, k1=0.0, uniform=False, pose_rows=N, drop_cal=None, pose_scale=1.0, pixel_pose=False):
    rng = np.random.default_rng(0)
    ts = [1_550_000_000_000_000 + 100_000 * i for i in range(N)]
    rows = {"key.segment_context_name": [], "key.frame_timestamp_micros": [], "key.camera_name": [],
            "[CameraImageComponent].image": []}
    for i, t in enumerate(ts):
        for cid in CAMS:
            ok, jpg = cv2.imencode(".jpg", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
            rows["key.segment_context_name"].append(SEG)
            rows["key.frame_timestamp_micros"].append(t)
            rows["key.camera_name"].append(cid)
            rows["[CameraImageComponent].image"].append(jpg.tobytes())
    write_table(root, "camera_image", rows)
    C = "[CameraCalibrationComponent]"
    cal = {"key.segment_context_name": [], "key.camera_name": [], f"{C}.extrinsic.transform": [],
           f"{C}.width": [], f"{C}.height": []}
    for k in ("f_u", "f_v", "c_u", "c_v", "k1", "k2", "p1", "p2", "k3"):
        cal[f"{C}.intrinsic.{k}"] = []
    for cid, (name, fu, fv, cu, cv, _) in CAMS.items():
        if name == drop_cal:
            continue
        cal["key.segment_context_name"].append(SEG)
        cal["key.camera_name"].append(cid)
        cal[f"{C}.extrinsic.transform"].append(flat(CAM_EXT[cid]))
        cal[f"{C}.width"].append(W)
        cal[f"{C}.height"].append(H)
        for k, v in zip(("f_u", "f_v", "c_u", "c_v", "k1", "k2", "p1", "p2", "k3"),
                        (fu, fv, cu, cv, k1 if cid == 2 else 0.0, 0.0, 0.0, 0.0, 0.0)):
            cal[f"{C}.intrinsic.{k}"].append(v)
    write_table(root, "camera_calibration", cal)
    poses = [flat(vehicle_pose(i)) for i in range(pose_rows)]
    poses[min(2, pose_rows - 1)] = flat(vehicle_pose(2) @ np.diag([pose_scale, 1, 1, 1]))
    write_table(root, "vehicle_pose", {"key.segment_context_name": [SEG] * pose_rows,
                                       "key.frame_timestamp_micros": ts[:pose_rows],
                                       "[VehiclePoseComponent].world_from_vehicle.transform": poses})
    L = "[LiDARCalibrationComponent]"
    write_table(root, "lidar_calibration", {
        "key.segment_context_name": [SEG], "key.laser_name": [1], f"{L}.extrinsic.transform": [flat(LIDAR_EXT)],
        f"{L}.beam_inclination.min": [float(INCL[0] - 0.5 * (INCL[1] - INCL[0]))],
        f"{L}.beam_inclination.max": [float(INCL[-1] + 0.5 * (INCL[1] - INCL[0]))],
        f"{L}.beam_inclination.values": pa.array([None if uniform else INCL.tolist()], pa.list_(pa.float64()))})
    R = "[LiDARComponent].range_image_return1"
    write_table(root, "lidar", {
        "key.segment_context_name": [SEG] * N, "key.frame_timestamp_micros": ts, "key.laser_name": [1] * N,
        f"{R}.values": pa.array([range_image(i, INCL).ravel().tolist() for i in range(N)], pa.list_(pa.float32())),
        f"{R}.shape": [[RH, RW, 4]] * N})
    if pixel_pose:
        P = "[LiDARPoseComponent].range_image_return1"
        vals = []
        for i in range(N):
            V = vehicle_pose(i)
            pp = np.zeros((RH, RW, 6), np.float32)
            pp[..., 2] = np.arctan2(V[1, 0], V[0, 0])
            pp[..., 3:] = V[:3, 3]  # float32 (as stored): ~3 cm steps at UTM magnitudes
            vals.append(pp.ravel().tolist())
        write_table(root, "lidar_pose", {"key.segment_context_name": [SEG] * N, "key.frame_timestamp_micros": ts,
                                         "key.laser_name": [1] * N, f"{P}.values": vals,
                                         f"{P}.shape": [[RH, RW, 6]] * N})
    return root, ts


def convert(root, out, **kw):
    args = dict(voxel=0.0, outlier_neighbors=0, quiet=True)
    args.update(kw)
    return convert_waymo(root, out, **args)


def on_wall_or_ground(pts_world):
    """Distance of each world point to the nearer of the wall and the ground."""
    return np.minimum(np.abs(pts_world[:, 0] - (ORIGIN[0] + WALL_X)), np.abs(pts_world[:, 2] - ORIGIN[2]))


@pytest.mark.parametrize("uniform", [False, True])
def test_known_values(tmp_path, uniform):
    root, ts = write_waymo(tmp_path / "w", uniform=uniform)
    s = convert(root, tmp_path / "out")
    assert len(s.frames) == 2 * N
    assert sorted(f.name for f in s.frames_by_split("test")) == [f"FRONT/{ts[2]}", f"FRONT_LEFT/{ts[2]}"]
    for cid, (name, fu, fv, cu, cv, _) in CAMS.items():
        cam = s.cameras[name]
        assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) == (fu, fv, cu, cv, W, H)
    # OpenCV camera -> Waymo camera: x_w = z, y_w = -x, z_w = -y
    M = np.array([[0, 0, 1.0, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    orig = {f"{CAMS[c][0]}/{t}": vehicle_pose(i) @ CAM_EXT[c] @ M for i, t in enumerate(ts) for c in CAMS}
    off = np.mean([T[:3, 3] for T in orig.values()], 0)
    np.testing.assert_allclose(s.world_offset, off, atol=1e-6)
    for f in s.frames:
        np.testing.assert_allclose(f.cam_to_world, rigid(np.eye(3), -off) @ orig[f.name], atol=1e-6)
    front = s.frame(f"FRONT/{ts[0]}")
    np.testing.assert_allclose(front.cam_to_world[:3, 2], [1, 0, 0], atol=1e-9)  # looks along vehicle x
    np.testing.assert_allclose(front.cam_to_world[:3, 1], [0, 0, -1], atol=1e-9)  # image down = world down
    assert s.frame(f"FRONT/{ts[3]}").timestamp == pytest.approx(0.3)
    pts = s.load_points("lidar").astype(np.float64) + off
    n_valid = sum(int((range_image(i, INCL)[..., 0] > 0).sum()) for i in range(N))
    rep = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert rep["lidar"]["raw"] == n_valid and len(pts) == rep["lidar"]["in_view"] > 500
    # the inclinations used: exact values, or uniform over [min, max] (they coincide here)
    assert on_wall_or_ground(pts).max() < 2e-3
    # straight-ahead beams hit the wall: points exist on it, across its height
    wall = pts[np.abs(pts[:, 0] - (ORIGIN[0] + WALL_X)) < 2e-3]
    assert len(wall) > 20 and np.ptp(wall[:, 2]) > 1.0
    assert rep["sanity"]["mean_fraction"] > 0.3
    d = s.load_depth(front)
    assert (d > 0).sum() > 50
    # the image is stored as the JPEG it came as
    assert front.image.endswith(".jpg")


def test_pixel_poses_match_frame_poses(tmp_path):
    """lidar_pose rows equal to the vehicle pose (yaw + translation) give the
    the same cloud as the vehicle pose alone (up to float32 rounding)."""
    root, _ = write_waymo(tmp_path / "w", pixel_pose=True)
    s = convert(root, tmp_path / "a", sanity=False)
    rep = json.loads((tmp_path / "a" / "conversion_report.json").read_text())
    assert rep["pixel_poses"] is True
    pts = s.load_points("lidar").astype(np.float64) + s.world_offset
    assert len(pts) > 500 and on_wall_or_ground(pts).max() < 0.1


def test_options(tmp_path):
    root, ts = write_waymo(tmp_path / "w")
    s = convert(root, tmp_path / "o", cameras=["FRONT"], first=1, last=3, test_every=0, downscale=2, depth=False)
    assert [f.name for f in s.frames] == [f"FRONT/{t}" for t in ts[1:4]]
    assert all(f.split == "train" for f in s.frames) and all(f.depth is None for f in s.frames)
    assert s.cameras["FRONT"].width == 32 and s.frames[0].image.endswith(".png")
    with pytest.raises(ConversionError, match="frame range"):
        convert(root, tmp_path / "o2", first=3, last=9)
    with pytest.raises(ConversionError, match="SIDE_LEFT"):
        convert(root, tmp_path / "o2", cameras=["SIDE_LEFT"])


def expect_error(fn, path, word):
    with pytest.raises(SceneError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and word in msg, msg


def test_distortion_refused_then_undistorted(tmp_path):
    root, ts = write_waymo(tmp_path / "w", k1=-0.2)
    expect_error(lambda: convert(root, tmp_path / "o"), root / "camera_calibration" / f"{SEG}.parquet", "k1=-0.2")
    s = convert(root, tmp_path / "o", undistort=True)
    rep = json.loads((tmp_path / "o" / "conversion_report.json").read_text())
    assert rep["undistorted"] == ["FRONT_LEFT"] and s.frame(f"FRONT_LEFT/{ts[0]}").image.endswith(".png")


def test_truncated_lidar_table(tmp_path):
    root, _ = write_waymo(tmp_path / "w")
    p = root / "lidar" / f"{SEG}.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    expect_error(lambda: convert(root, tmp_path / "o"), p, "corrupt or truncated Parquet")


def test_missing_camera_calibration(tmp_path):
    root, _ = write_waymo(tmp_path / "w", drop_cal="FRONT_LEFT")
    expect_error(lambda: convert(root, tmp_path / "o"), root / "camera_calibration" / f"{SEG}.parquet", "FRONT_LEFT")


def test_vehicle_pose_table_short(tmp_path):
    root, ts = write_waymo(tmp_path / "w", pose_rows=N - 2)
    expect_error(lambda: convert(root, tmp_path / "o"), root / "vehicle_pose" / f"{SEG}.parquet", str(ts[N - 2]))


def test_non_rigid_vehicle_pose(tmp_path):
    root, _ = write_waymo(tmp_path / "w", pose_scale=1.1)
    expect_error(lambda: convert(root, tmp_path / "o"), root / "vehicle_pose" / f"{SEG}.parquet", "not rigid")


def test_convention_bug_is_caught(tmp_path):
    """Cameras placed as if the Waymo camera frame were an optical one (the
    classic slip: no axis change, so they look up at the sky) fail the sanity
    check. Written as extrinsics that undo the converter's axis change."""
    root, _ = write_waymo(tmp_path / "w")
    p = root / "camera_calibration" / f"{SEG}.parquet"
    t = pq.read_table(p).to_pydict()
    col = "[CameraCalibrationComponent].extrinsic.transform"
    M = np.array([[0, 0, 1.0, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    t[col] = [flat(np.array(v).reshape(4, 4) @ inv(M)) for v in t[col]]
    pq.write_table(pa.table(t), p)
    with pytest.raises(ConversionError, match="convention"):
        convert(root, tmp_path / "o")


def test_main_cli(tmp_path, capsys):
    root, _ = write_waymo(tmp_path / "w")
    assert main([str(root), "--out", str(tmp_path / "o"), "--quiet", "--cameras", "FRONT", "--voxel", "0"]) == 0
    (root / "vehicle_pose" / f"{SEG}.parquet").unlink()
    assert main([str(root), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dnmp: error:") and "vehicle_pose" in err

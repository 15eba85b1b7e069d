"""`dnmp convert kitti`: a synthetic KITTI raw drive written by the test in the
exact on-disk layout (calib_*.txt, oxts/data, image_0x/data, velodyne_points),
with known OXTS records, calibration and world points; layout auto-detection
(odometry vs raw); corrupt inputs each giving one `dnmp: error:` line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from dnmp.converters import FORMATS
from dnmp.data.rigid import rigid_inverse, translation
from dnmp.converters.kitti import convert_kitti, main
from dnmp.data import load_scene

sys.path.insert(0, str(Path(__file__).parent))
from _rig import assert_cli_error  # noqa: E402
from _poses import rot_x as rx, rot_y as ry, rot_z as rz, rigid  # noqa: E402  (tests/ is on sys.path: conftest.py)

W, H = 80, 40
FX, FY, CX, CY = 40.0, 41.0, 39.5, 19.0
K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]])
B = {"02": [0.06, 0.0, 0.0], "03": [-0.47, 0.0, 0.0]}
DATE = "2011_09_26"
DRIVE = f"{DATE}_drive_0005_sync"
LAT0, LON0, ALT0 = 49.0, 8.4, 110.0
ER = 6378137.0
N = 4


R_RECT = rigid(ry(0.01) @ rx(0.005), [0, 0, 0])
# velodyne (x fwd, y left, z up) -> camera 0 (x right, y down, z fwd), slightly rotated
T_CAM_VELO = rigid(np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0.0]]) @ rz(0.02), [0.01, -0.08, -0.27])
T_VELO_IMU = rigid(rz(-0.01), [-0.81, 0.32, -0.80])


def oxts_record(k):
    """lat lon alt roll pitch yaw: 0.5 m east per frame, turning left 0.01 rad per frame."""
    scale = np.cos(np.radians(LAT0))
    dlon = 0.5 / (scale * np.pi * ER / 180)
    return [LAT0, LON0 + k * dlon, ALT0 + 0.01 * k, -0.01, 0.02, 0.01 * k]


def imu_pose(k):
    """The devkit's pose of record k relative to record 0, re-derived here."""
    def absolute(rec):
        lat, lon, alt, roll, pitch, yaw = rec
        s = np.cos(np.radians(LAT0))
        t = [s * lon * np.pi * ER / 180, s * ER * np.log(np.tan((90 + lat) * np.pi / 360)), alt]
        return rigid(rz(yaw) @ ry(pitch) @ rx(roll), t)

    return rigid_inverse(absolute(oxts_record(0))) @ absolute(oxts_record(k))


def velo_pose(k):
    return imu_pose(k) @ rigid_inverse(T_VELO_IMU)


def cam_pose(k, cam):
    return velo_pose(k) @ rigid_inverse(R_RECT @ T_CAM_VELO) @ translation(-np.array(B[cam]))


def world_points():
    """Ground (z = -1.7 in the IMU frame of frame 0), a wall 15 m ahead, two
    side walls and a box: enough planes to pin all six degrees of freedom."""
    g = np.arange(-4, 4.01, 0.25)
    pts = []
    gx, gy = np.meshgrid(np.arange(2, 15, 0.4), np.arange(-6, 6.01, 0.4))
    pts.append(np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, -1.7)], 1))
    a, b = np.meshgrid(g, np.arange(-1.7, 2.5, 0.25))
    pts.append(np.stack([np.full(a.size, 15.0), a.ravel(), b.ravel()], 1))
    for y in (-6.0, 6.0):
        a, b = np.meshgrid(np.arange(4, 15, 0.3), np.arange(-1.7, 2.0, 0.3))
        pts.append(np.stack([a.ravel(), np.full(a.size, y), b.ravel()], 1))
    a, b = np.meshgrid(np.arange(8, 9.5, 0.1), np.arange(-1.7, -0.5, 0.1))
    pts.append(np.stack([a.ravel(), np.full(a.size, 2.0), b.ravel()], 1))
    pts.append(np.stack([np.full(a.size, 8.0), a.ravel() - 6.0, b.ravel()], 1))
    return np.concatenate(pts)


def fmt(M):
    return " ".join(f"{v:.12e}" for v in np.asarray(M).ravel())


def write_raw(root: Path, n=N, oxts_frames=None, drop_key=None, velo_scale=1.0):
    date = root / DATE
    drive = date / DRIVE
    lines = ["calib_time: 09-Jan-2012 13:57:47", "corner_dist: 9.950000e-02"]
    for c in ("00", "01", "02", "03"):
        b = B.get(c, [-0.54 * (c == "01"), 0, 0])
        lines += [f"S_{c}: 1.392000e+03 5.120000e+02", f"K_{c}: {fmt(K)}", f"D_{c}: -3.7e-01 2.0e-01 0 0 0",
                  f"R_{c}: {fmt(np.eye(3))}", f"T_{c}: 0 0 0", f"S_rect_{c}: {W}.0 {H}.0",
                  f"R_rect_{c}: {fmt(R_RECT[:3, :3] if c == '00' else np.eye(3))}",
                  f"P_rect_{c}: {fmt(np.hstack([K, (K @ np.array(b, float))[:, None]]))}"]
    lines = [l for l in lines if not (drop_key and l.startswith(drop_key + ":"))]
    date.mkdir(parents=True)
    (date / "calib_cam_to_cam.txt").write_text("\n".join(lines) + "\n")
    R = T_CAM_VELO[:3, :3] * velo_scale
    (date / "calib_velo_to_cam.txt").write_text(
        f"calib_time: 15-Mar-2012 11:37:16\nR: {fmt(R)}\nT: {fmt(T_CAM_VELO[:3, 3])}\n"
        "delta_f: 0 0\ndelta_c: 0 0\n")
    (date / "calib_imu_to_velo.txt").write_text(
        f"calib_time: 25-May-2012 16:47:16\nR: {fmt(T_VELO_IMU[:3, :3])}\nT: {fmt(T_VELO_IMU[:3, 3])}\n")
    rng = np.random.default_rng(3)
    for c in ("02", "03"):
        d = drive / f"image_{c}" / "data"
        d.mkdir(parents=True)
        for i in range(n):
            iio.imwrite(d / f"{i:010d}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        (drive / f"image_{c}" / "timestamps.txt").write_text(
            "".join(f"2011-09-26 13:02:{25 + 0.1 * i:012.9f}\n" for i in range(n)))
    (drive / "oxts" / "data").mkdir(parents=True)
    for i in range(n if oxts_frames is None else oxts_frames):
        rec = oxts_record(i) + [0.0] * 24
        (drive / "oxts" / "data" / f"{i:010d}.txt").write_text(" ".join(f"{v:.12f}" for v in rec) + "\n")
    (drive / "velodyne_points" / "data").mkdir(parents=True)
    Xw = world_points()
    for i in range(n):
        Tv = rigid_inverse(velo_pose(i))
        Xv = Xw @ Tv[:3, :3].T + Tv[:3, 3]
        np.hstack([Xv, np.full((len(Xv), 1), 0.3)]).astype("<f4").tofile(
            drive / "velodyne_points" / "data" / f"{i:010d}.bin")
    return root


@pytest.fixture
def raw(tmp_path):
    return write_raw(tmp_path / "kitti_raw")


def nearest(a, b):
    """Distance from each point of a to its nearest point of b (open3d)."""
    import open3d as o3d

    pa = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(a, np.float64)))
    pb = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(b, np.float64)))
    return np.asarray(pa.compute_point_cloud_distance(pb))


def in_some_view(s, X, max_depth=80.0):
    from dnmp.converters.points import crop_to_views

    return crop_to_views(X, s.frames, s.cameras, max_depth)


def convert(root, out, **kw):
    args = dict(stereo=False, voxel=0.0, outlier_neighbors=0, quiet=True)
    args.update(kw)
    return convert_kitti(root, out, **args)


def test_registered():
    assert FORMATS["kitti"][0] == "dnmp.converters.kitti"
    assert FORMATS["kitti-odometry"][0] == "dnmp.converters.kitti_odometry"


def test_raw_known_values(raw, tmp_path):
    s = convert(raw, tmp_path / "out", downscale=2)
    names = {(f.name, f.split) for f in s.frames}
    assert names == {("image_02/0000000000", "train"), ("image_03/0000000000", "train"),
                     ("image_02/0000000001", "test"), ("image_02/0000000002", "train"),
                     ("image_03/0000000002", "train"), ("image_02/0000000003", "test")}
    cam = s.cameras["image_02"]
    assert (cam.width, cam.height) == (W // 2, H // 2)
    assert cam.fx == FX / 2 and cam.fy == FY / 2
    assert cam.cx == pytest.approx((CX + 0.5) / 2 - 0.5) and cam.cy == pytest.approx((CY + 0.5) / 2 - 0.5)
    orig = {f.name: cam_pose(int(f.name[-10:]), f.camera[-2:]) for f in s.frames}
    off = np.mean([T[:3, 3] for T in orig.values()], 0)
    np.testing.assert_allclose(s.world_offset, off, atol=1e-7)
    for f in s.frames:
        np.testing.assert_allclose(f.cam_to_world, translation(-off) @ orig[f.name], atol=1e-7)
    # frame 0's IMU is the world origin (devkit: poses relative to the first frame); the
    # Mercator translations are ~4e6 m, so inverse(A) @ A keeps a float64 ulp of them (2^-31 m
    # with this CPU's BLAS kernel on an AMD Zen 3, 0 on others)
    np.testing.assert_allclose(imu_pose(0), np.eye(4), atol=1e-8)
    # timestamps from image_02/timestamps.txt, relative to the first frame
    assert [f.timestamp for f in s.frames if f.camera == "image_02"] == pytest.approx([0, 0.1, 0.2, 0.3], abs=1e-6)
    # points: the world, recentred (all scans agree exactly)
    pts = s.load_points("lidar").astype(np.float64)
    X = world_points() - off
    assert nearest(pts, X).max() < 1e-3 and nearest(X[in_some_view(s, X)], pts).max() < 1e-3
    rep = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert rep["sanity"]["mean_fraction"] > 0.5 and rep["scan_agreement"]["mean_fraction"] > 0.9
    assert rep["poses"] == "oxts" and rep["layout"] == "kitti-raw"
    assert (tmp_path / "out" / "overview.png").is_file()


def test_devkit_projection_agrees(raw, tmp_path):
    """The devkit's y = P_rect_02 R_rect_00 T_cam0_velo x for a scan point lands
    on the same pixel as our camera + cam_to_world applied to its world point."""
    s = convert(raw, tmp_path / "out", lidar=False, stereo=True, sanity=False)  # stereo: a scene needs points
    f = s.frame("image_02/0000000002")
    cam = s.cameras["image_02"]
    Xw = world_points()[::7]
    Tv = rigid_inverse(velo_pose(2))
    xv = Xw @ Tv[:3, :3].T + Tv[:3, 3]
    P = np.hstack([K, (K @ np.array(B["02"]))[:, None]])
    y = (P @ R_RECT @ T_CAM_VELO @ np.hstack([xv, np.ones((len(xv), 1))]).T).T
    uv_devkit = y[:, :2] / y[:, 2:]
    xc = (Xw - s.world_offset) @ f.world_to_cam()[:3, :3].T + f.world_to_cam()[:3, 3]
    uv = np.stack([cam.fx * xc[:, 0] / xc[:, 2] + cam.cx, cam.fy * xc[:, 1] / xc[:, 2] + cam.cy], 1)
    front = xc[:, 2] > 1
    np.testing.assert_allclose(uv[front], uv_devkit[front], atol=1e-6)


def test_depth_and_window(raw, tmp_path):
    s = convert(raw, tmp_path / "out", first=1, last=3, cameras=["image_02"])
    assert [f.name for f in s.frames_by_split("train")] == ["image_02/0000000001", "image_02/0000000003"]
    assert s.frame("image_02/0000000001").timestamp == 0.0
    f = s.frame("image_02/0000000001")
    d = s.load_depth(f)
    v, u = np.nonzero(d)
    assert len(u) > 100
    # each depth pixel holds the z of a world point projecting into that pixel; the world is
    # now the IMU frame of frame 1 (the devkit makes poses relative to the first one loaded)
    T = f.world_to_cam() @ translation(-s.world_offset) @ rigid_inverse(imu_pose(1))
    xc = world_points() @ T[:3, :3].T + T[:3, 3]
    xc = xc[xc[:, 2] > 0.5]
    pu, pv = FX * xc[:, 0] / xc[:, 2] + CX, FY * xc[:, 1] / xc[:, 2] + CY
    for a, b in list(zip(u, v))[::5]:
        near = (np.abs(pu - a) <= 0.501) & (np.abs(pv - b) <= 0.501)
        assert np.abs(xc[near, 2] - d[b, a]).min() < 2 / 256


def test_lidar_poses_raw(raw, tmp_path):
    s = convert(raw, tmp_path / "out", poses="lidar")
    rep = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert rep["poses"] == "lidar" and rep["lidar_poses"]["min_fitness"] > 0.9
    err = rep["lidar_poses"]["vs_oxts"]
    assert err["max_translation_m"] < 0.02 and err["max_rotation_deg"] < 0.1
    s2 = convert(raw, tmp_path / "oxts")
    for a, b in zip(s.frames, s2.frames):
        np.testing.assert_allclose(a.cam_to_world[:3, 3] + s.world_offset, b.cam_to_world[:3, 3] + s2.world_offset,
                                   atol=0.03)


def test_lidar_poses_without_oxts(tmp_path, capsys):
    """A capture with LiDAR + calibration but no poses: --poses lidar still converts."""
    root = write_raw(tmp_path / "k", oxts_frames=0)
    rc, err = run_main(capsys, root, tmp_path / "o", "--poses", "lidar", "--cameras", "image_02")
    assert rc == 0, err
    rep = json.loads((tmp_path / "o" / "conversion_report.json").read_text())
    assert rep["poses"] == "lidar" and "vs_oxts" not in rep["lidar_poses"]
    s = load_scene(tmp_path / "o")
    f0, f3 = s.frame("image_02/0000000000"), s.frame("image_02/0000000003")
    rel = f0.world_to_cam() @ f3.cam_to_world
    want = rigid_inverse(cam_pose(0, "02")) @ cam_pose(3, "02")
    np.testing.assert_allclose(rel[:3, 3], want[:3, 3], atol=0.02)
    rc, err = run_main(capsys, root, tmp_path / "o2")
    assert rc == 2 and "--poses lidar" in err


def test_autodetect_odometry(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_kitti_odometry import write_kitti

    root = write_kitti(tmp_path / "odo")
    s = convert(root, tmp_path / "o")
    assert s.source["dataset"] == "KITTI odometry" and set(s.cameras) == {"image_2", "image_3"}
    assert main([str(root), "--out", str(tmp_path / "o2"), "--drive", "0001", "--quiet"]) == 2


# --- corrupt inputs: one line `dnmp: error: ...`, exit 2 ------------------------


def run_main(capsys, root, out, *extra):
    rc = main([str(root), "--out", str(out), "--quiet", "--no-stereo", "--voxel", "0", *extra])
    err = capsys.readouterr().err
    return rc, err


def expect_cli_error(capsys, root, out, *words, extra=()):
    rc, err = run_main(capsys, root, out, *extra)
    assert_cli_error(rc, err, out, *words)


def test_main_ok(raw, tmp_path, capsys):
    rc, err = run_main(capsys, raw, tmp_path / "o", "--drive", "5")
    assert rc == 0, err
    assert load_scene(tmp_path / "o").name == "kitti_2011_09_26_drive_0005"


def test_truncated_velodyne(raw, tmp_path, capsys):
    p = raw / DATE / DRIVE / "velodyne_points" / "data" / "0000000002.bin"
    p.write_bytes(p.read_bytes()[:-5])
    expect_cli_error(capsys, raw, tmp_path / "o", str(p), "multiple of 16")


def test_missing_calibration_key(tmp_path, capsys):
    root = write_raw(tmp_path / "k", drop_key="P_rect_03")
    expect_cli_error(capsys, root, tmp_path / "o", "calib_cam_to_cam.txt", "P_rect_03")


def test_oxts_shorter_than_frames(tmp_path, capsys):
    root = write_raw(tmp_path / "k", oxts_frames=3)
    expect_cli_error(capsys, root, tmp_path / "o", "0000000003.txt", "missing")


def test_non_rigid_extrinsic(tmp_path, capsys):
    root = write_raw(tmp_path / "k", velo_scale=1.03)
    expect_cli_error(capsys, root, tmp_path / "o", "calib_velo_to_cam.txt", "not rigid")


def test_extract_release_refused(tmp_path, capsys):
    d = tmp_path / "k" / DATE / f"{DATE}_drive_0005_extract"
    d.mkdir(parents=True)
    expect_cli_error(capsys, tmp_path / "k", tmp_path / "o", "_extract", "distort")


def test_several_drives_need_choice(raw, tmp_path, capsys):
    (raw / DATE / f"{DATE}_drive_0009_sync").mkdir()
    expect_cli_error(capsys, raw, tmp_path / "o", "--drive")

"""`dnmp convert kitti360`: a synthetic KITTI-360 drive written by the test in
the dataset's layout (data_2d_raw, data_poses with sparse poses.txt and
cam0_to_world.txt, calibration/, data_3d_raw, a fused static PLY) with known
poses, calibration and world points; the DNMP paper preset; corrupt inputs
each giving one `dnmp: error:` line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from dnmp.converters import FORMATS
from dnmp.data.rigid import rigid_inverse, translation
from dnmp.converters.kitti360 import PRESETS, convert_kitti360, main

sys.path.insert(0, str(Path(__file__).parent))
from _rig import assert_cli_error  # noqa: E402
from _poses import rot_x as rx, rot_z as rz, rigid  # noqa: E402  (tests/ is on sys.path: conftest.py)

W, H = 80, 40
FX, FY, CX, CY = 40.0, 41.0, 39.5, 19.0
K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]])
SEQ = "2013_05_28_drive_0009_sync"
BASELINE = 0.6
N = 8
MISSING_POSE = 5  # poses.txt is sparse: frame 5 has none


R_RECT = {"00": rigid(rx(0.01), [0, 0, 0]), "01": rigid(rz(0.02) @ rx(-0.01), [0, 0, 0])}
# camera (x right, y down, z fwd) -> pose (x fwd, y left, z up), mounted 1.5 m forward, 0.9 m up
CAM_AXES = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0.0]])
C2P = {"00": rigid(CAM_AXES, [1.5, 0.1, 0.9]) @ R_RECT["00"]}
# image_01 is 0.6 m to the right of image_00 once both are rectified
C2P["01"] = C2P["00"] @ rigid_inverse(R_RECT["00"]) @ translation([BASELINE, 0, 0]) @ R_RECT["01"]
T_VELO_CAM0 = rigid(rz(0.01) @ np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0.0]]), [0.8, -0.3, -0.1])


def pose(i):
    """IMU/GPS pose -> world: 0.8 m per frame, slowly turning, far from the origin."""
    return rigid(rz(0.4 + 0.01 * i), [1000.0 + 0.8 * i, 3000.0 + 0.3 * i, 115.0])


def cam_to_world(i, cam):
    """The devkit's rule (helpers/project.py): pose @ camToPose @ inv(R_rect)."""
    return pose(i) @ C2P[cam] @ rigid_inverse(R_RECT[cam])


def world_points():
    """Ground, a wall 15 m ahead, side walls, a box; in the pose frame of frame 0, then to the world."""
    pts = []
    gx, gy = np.meshgrid(np.arange(3, 16, 0.4), np.arange(-6, 6.01, 0.4))
    pts.append(np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, 0.0)], 1))
    a, b = np.meshgrid(np.arange(-4, 4.01, 0.25), np.arange(0, 4, 0.25))
    pts.append(np.stack([np.full(a.size, 16.0), a.ravel(), b.ravel()], 1))
    for y in (-6.0, 6.0):
        a, b = np.meshgrid(np.arange(5, 16, 0.3), np.arange(0, 3.5, 0.3))
        pts.append(np.stack([a.ravel(), np.full(a.size, y), b.ravel()], 1))
    local = np.concatenate(pts)
    T = pose(0)
    return local @ T[:3, :3].T + T[:3, 3]


def fmt(M):
    return " ".join(f"{v:.12e}" for v in np.asarray(M).ravel())


def write_k360(root: Path, frames=range(N), drop_key=None, poses_upto=None, scale_pose=None, cam0_shift=0.0,
               lidar=True, fused=False, rgb=True):
    img = {c: root / "data_2d_raw" / SEQ / f"image_{c}" / "data_rect" for c in ("00", "01")}
    rng = np.random.default_rng(5)
    for c, d in img.items():
        d.mkdir(parents=True)
        for i in frames:
            shape = (H, W, 3) if rgb else (H, W)
            iio.imwrite(d / f"{i:010d}.png", rng.integers(0, 255, shape, dtype=np.uint8))
    t0 = np.datetime64("2013-05-28T08:46:02.123456789", "ns")
    (root / "data_2d_raw" / SEQ / "image_00" / "timestamps.txt").write_text(
        "".join(str(t0 + np.timedelta64(100_000_000 * i, "ns")).replace("T", " ") + "\n"
                for i in range(max(frames) + 1)))
    cal = root / "calibration"
    cal.mkdir()
    lines = []
    for c, b in (("00", 0.0), ("01", -BASELINE)):
        lines += [f"K_{c}: {fmt(K)}", f"D_{c}: -0.34 0.12 0 0 0", f"S_{c}: 1.392000e+03 5.120000e+02",
                  f"R_rect_{c}: {fmt(R_RECT[c][:3, :3])}",
                  f"P_rect_{c}: {fmt(np.hstack([K, (K @ np.array([b, 0, 0]))[:, None]]))}",
                  f"S_rect_{c}: {W}.000000e+00 {H}.000000e+00"]
    lines = [l for l in lines if not (drop_key and l.startswith(drop_key + ":"))]
    (cal / "perspective.txt").write_text("\n".join(lines) + "\n")
    c2p = [f"image_{c}: {fmt(C2P[c][:3])}" for c in ("00", "01")]
    c2p += [f"image_0{c}: {fmt(np.eye(4)[:3])}" for c in (2, 3)]
    (cal / "calib_cam_to_pose.txt").write_text("\n".join(c2p) + "\n")
    (cal / "calib_cam_to_velo.txt").write_text(fmt(T_VELO_CAM0[:3]) + "\n")
    pd = root / "data_poses" / SEQ
    pd.mkdir(parents=True)
    posed = [i for i in frames if i != MISSING_POSE and (poses_upto is None or i <= poses_upto)]
    rows = []
    for i in posed:
        M = pose(i)[:3].copy()
        if scale_pose is not None and i == scale_pose:
            M[:, :3] *= 1.05
        rows.append(f"{i} {fmt(M)}")
    (pd / "poses.txt").write_text("\n".join(rows) + "\n")
    (pd / "cam0_to_world.txt").write_text("".join(
        f"{i} {fmt(translation([cam0_shift, 0, 0]) @ cam_to_world(i, '00'))}\n" for i in posed))
    Xw = world_points()
    if lidar:
        vd = root / "data_3d_raw" / SEQ / "velodyne_points" / "data"
        vd.mkdir(parents=True)
        for i in frames:
            Tv = rigid_inverse(pose(i) @ C2P["00"] @ rigid_inverse(T_VELO_CAM0))
            Xv = Xw @ Tv[:3, :3].T + Tv[:3, 3]
            np.hstack([Xv, np.full((len(Xv), 1), 0.2)]).astype("<f4").tofile(vd / f"{i:010d}.bin")
    if fused:
        sd = root / "data_3d_semantics" / "train" / SEQ / "static"
        sd.mkdir(parents=True)
        dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                       ("semantic", "<i4"), ("instanceId", "<i4"), ("visible", "u1"), ("confidence", "<f4")])
        rec = np.zeros(len(Xw), dt)
        rec["x"], rec["y"], rec["z"] = Xw.T
        header = ("ply\nformat binary_little_endian 1.0\nelement vertex %d\nproperty float x\nproperty float y\n"
                  "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
                  "property int semantic\nproperty int instanceId\nproperty uchar visible\n"
                  "property float confidence\nend_header\n" % len(Xw))
        (sd / f"{0:010d}_{max(frames):010d}.ply").write_bytes(header.encode() + rec.tobytes())
        (sd / f"{500:010d}_{900:010d}.ply").write_bytes(b"not read: outside the window")
    return root


@pytest.fixture
def k360(tmp_path):
    return write_k360(tmp_path / "KITTI-360")


def convert(root, out, **kw):
    args = dict(stereo=False, voxel=0.0, outlier_neighbors=0, quiet=True)
    args.update(kw)
    return convert_kitti360(root, out, **args)


def nearest(a, b):
    import open3d as o3d

    pa = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(a, np.float64)))
    pb = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(b, np.float64)))
    return np.asarray(pa.compute_point_cloud_distance(pb))


def test_registered():
    assert FORMATS["kitti360"][0] == "dnmp.converters.kitti360"


def test_known_values(k360, tmp_path):
    s = convert(k360, tmp_path / "out", downscale=2)
    # split by frame index parity (DNMP): even train on both cameras, odd test on image_00;
    # frame 5 has no pose and is skipped
    got = sorted((f.name, f.split) for f in s.frames)
    want = []
    for i in range(N):
        if i == MISSING_POSE:
            continue
        want.append((f"image_00/{i:010d}", "train" if i % 2 == 0 else "test"))
        if i % 2 == 0:
            want.append((f"image_01/{i:010d}", "train"))
    assert got == sorted(want)
    for c in ("image_00", "image_01"):
        cam = s.cameras[c]
        assert (cam.width, cam.height, cam.fx, cam.fy) == (W // 2, H // 2, FX / 2, FY / 2)
        assert cam.cx == pytest.approx((CX + 0.5) / 2 - 0.5) and cam.cy == pytest.approx((CY + 0.5) / 2 - 0.5)
    orig = {f.name: cam_to_world(int(f.name[-10:]), f.camera[-2:]) for f in s.frames}
    off = np.mean([T[:3, 3] for T in orig.values()], 0)
    np.testing.assert_allclose(s.world_offset, off, atol=1e-6)
    assert np.abs(s.world_offset).max() > 1000  # recentred: UTM-like coordinates subtracted
    for f in s.frames:
        np.testing.assert_allclose(f.cam_to_world, translation(-off) @ orig[f.name], atol=1e-6)
    # the rectified pair: image_01 is BASELINE to the right of image_00, same orientation
    rel = s.frame("image_00/0000000002").world_to_cam() @ s.frame("image_01/0000000002").cam_to_world
    np.testing.assert_allclose(rel, translation([BASELINE, 0, 0]), atol=1e-6)
    pts = s.load_points("lidar").astype(np.float64)
    assert len(pts) > 500 and nearest(pts, world_points() - off).max() < 2e-3
    rep = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert rep["cam0_to_world_check"]["max_translation_m"] < 1e-6
    assert rep["skipped_without_pose"] == [MISSING_POSE]
    assert rep["sanity"]["mean_fraction"] > 0.5 and rep["scan_agreement"]["mean_fraction"] > 0.9
    assert s.frame("image_00/0000000003").timestamp == pytest.approx(0.3, abs=1e-6)


def test_cam0_poses_and_fused_cloud(tmp_path):
    root = write_k360(tmp_path / "k", lidar=False, fused=True)
    s = convert(root, tmp_path / "o", poses="cam0", first=1, last=4)
    assert [f.name for f in s.frames if f.camera == "image_00"] == [f"image_00/{i:010d}" for i in range(1, 5)]
    for f in s.frames:
        np.testing.assert_allclose(f.cam_to_world[:3, 3] + s.world_offset,
                                   cam_to_world(int(f.name[-10:]), f.camera[-2:])[:3, 3], atol=1e-6)
    pts = s.load_points("lidar").astype(np.float64)
    assert len(pts) > 500 and nearest(pts, world_points() - s.world_offset).max() < 2e-3
    rep = json.loads((tmp_path / "o" / "conversion_report.json").read_text())
    assert rep["fused_clouds"] == [f"{0:010d}_{N - 1:010d}.ply"]


def test_paper_preset(tmp_path):
    assert PRESETS["dnmp-paper"]["windows"] == [(715, 794), (880, 959), (1102, 1181), (2170, 2249), (2900, 2979)]
    a, b = PRESETS["dnmp-paper"]["windows"][1]
    root = write_k360(tmp_path / "k", frames=range(a, b + 1), lidar=False)
    s = convert(root, tmp_path / "o", preset="dnmp-paper", window=2, lidar=False, stereo=True, sanity=False)  # stereo: a scene needs points
    left = [f for f in s.frames if f.camera == "image_00"]
    assert len(left) == 80 - (a <= MISSING_POSE <= b) and left[0].name == f"image_00/{a:010d}"
    assert len(s.frames_by_split("test")) == 40 and {f.camera for f in s.frames_by_split("test")} == {"image_00"}
    assert s.name == "kitti360_dnmp-paper_2" and s.source["preset"] == "dnmp-paper window 2"


# --- corrupt inputs: one line `dnmp: error: ...`, exit 2 ------------------------


def expect_cli_error(capsys, root, out, *words, extra=()):
    rc = main([str(root), "--out", str(out), "--quiet", "--no-stereo", "--voxel", "0", *extra])
    assert_cli_error(rc, capsys.readouterr().err, out, *words)


def test_main_ok_with_stereo(k360, tmp_path, capsys):
    rc = main([str(k360), "--out", str(tmp_path / "o"), "--quiet", "--last", "4", "--voxel", "0"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "o" / "conversion_report.json").read_text())
    assert rep["stereo_points"]["baseline"] == pytest.approx(BASELINE)
    assert rep["stereo_baseline"]["from_P_rect"] == pytest.approx(BASELINE)


def test_truncated_velodyne(k360, tmp_path, capsys):
    p = k360 / "data_3d_raw" / SEQ / "velodyne_points" / "data" / "0000000003.bin"
    p.write_bytes(p.read_bytes()[:-7])
    expect_cli_error(capsys, k360, tmp_path / "o", str(p), "multiple of 16")


def test_missing_calibration_key(tmp_path, capsys):
    root = write_k360(tmp_path / "k", drop_key="R_rect_01")
    expect_cli_error(capsys, root, tmp_path / "o", "perspective.txt", "R_rect_01")


def test_pose_file_shorter_than_frames(tmp_path, capsys):
    root = write_k360(tmp_path / "k", poses_upto=4)
    expect_cli_error(capsys, root, tmp_path / "o", "poses.txt", "up to 7", extra=("--last", "7"))


def test_non_rigid_pose(tmp_path, capsys):
    root = write_k360(tmp_path / "k", scale_pose=2)
    expect_cli_error(capsys, root, tmp_path / "o", "poses.txt", "not rigid")


def test_cam0_to_world_mismatch(tmp_path, capsys):
    root = write_k360(tmp_path / "k", cam0_shift=0.5)
    expect_cli_error(capsys, root, tmp_path / "o", "cam0_to_world.txt", "mismatch")


def test_fisheye_refused(k360, tmp_path, capsys):
    expect_cli_error(capsys, k360, tmp_path / "o", "image_02", "fisheye", extra=("--cameras", "image_00,image_02"))


def test_preset_window_out_of_range(k360, tmp_path, capsys):
    expect_cli_error(capsys, k360, tmp_path / "o", "--window 1..5", extra=("--preset", "dnmp-paper", "--window", "9"))


def test_window_start_len_and_stride(k360, tmp_path):
    """--window START:LEN (any drive, like the other KITTI converters) and --stride N:
    frames 1..6 that have a pose (5 has none), every 2nd, alternate train/test."""
    s = convert(k360, tmp_path / "o", window="1:6", stride=2, lidar=False, stereo=True, sanity=False)  # stereo: a scene needs points
    left = sorted((f.name, f.split) for f in s.frames if f.camera == "image_00")
    assert left == [(f"image_00/{1:010d}", "train"), (f"image_00/{3:010d}", "test"), (f"image_00/{6:010d}", "train")]
    assert s.source["frames"] == [1, 6] and s.source["stride"] == 2
    # without a stride the paper's parity (of the frame index) is kept
    s1 = convert(k360, tmp_path / "o1", window="1:6", lidar=False, stereo=True, sanity=False)  # stereo: a scene needs points
    assert s1.frame(f"image_00/{2:010d}").split == "train" and s1.frame(f"image_00/{1:010d}").split == "test"


def test_preset_window_must_be_a_number(k360, tmp_path, capsys):
    expect_cli_error(capsys, k360, tmp_path / "o", "a window number", extra=("--preset", "dnmp-paper", "--window", "1:80"))

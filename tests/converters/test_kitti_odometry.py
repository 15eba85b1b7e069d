"""KITTI odometry converter: a synthetic sequence with known poses/calibration
written by the test, corrupt inputs, SGBM stereo on a synthetic pair, and the
real ../shared/data/kitti_odometry_00 (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from dnmp.converters.capture import ConversionError
from dnmp.data.rigid import rigid_inverse, translation
from dnmp.converters.kitti_odometry import convert_kitti_odometry, main
from dnmp.converters.stereo import stereo_points
from dnmp.data import Camera, SceneError, load_scene
from _poses import rot_y  # noqa: E402  (tests/ is on sys.path: conftest.py)

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "kitti_odometry_00"

W, H = 64, 48
FX, FY, CX, CY = 50.0, 52.0, 31.5, 23.0
B = {0: [0.0, 0.0, 0.0], 1: [-0.54, 0.0, 0.0], 2: [0.06, -0.002, 0.001], 3: [-0.47, 0.003, 0.002]}
K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]])
# velodyne (x fwd, y left, z up) -> cam0 (x right, y down, z fwd), plus an offset
TR = np.eye(4)
TR[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
TR[:3, 3] = [0.01, -0.08, -0.27]


def pose(i):
    T = np.eye(4)
    T[:3, :3] = rot_y(0.01 * i)
    T[:3, 3] = [0.02 * i, 0.0, 0.5 * i]
    return T


def world_points():
    """A wall 15 m ahead of cam0 at frame 0 (in the cam0_0 frame)."""
    gx, gy = np.meshgrid(np.arange(-4, 4.01, 0.25), np.arange(-2, 1.01, 0.25))
    return np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, 15.0)], 1)


def fmt(M):
    return " ".join(f"{v:.12e}" for v in np.asarray(M).ravel())


def write_kitti(root: Path, n=4, cams=(2, 3), tr=True, skew=0.0, pose_lines=None, grey=False):
    seq = root / "sequences" / "00"
    lines = []
    for c in range(4):
        P = np.hstack([K, (K @ np.array(B[c]))[:, None]])
        P[0, 1] = skew
        lines.append(f"P{c}: {fmt(P)}")
    if tr:
        lines.append(f"Tr: {fmt(TR[:3])}")
    seq.mkdir(parents=True)
    (seq / "calib.txt").write_text("\n".join(lines) + "\n")
    (seq / "times.txt").write_text("".join(f"{0.1 * i + 5:.6e}\n" for i in range(n)))
    (root / "poses").mkdir()
    m = n if pose_lines is None else pose_lines
    (root / "poses" / "00.txt").write_text("".join(fmt(pose(i)[:3]) + "\n" for i in range(m)))
    rng = np.random.default_rng(1)
    for c in cams:
        (seq / f"image_{c}").mkdir()
        for i in range(n):
            shape = (H, W) if grey else (H, W, 3)
            iio.imwrite(seq / f"image_{c}" / f"{i:06d}.png", rng.integers(0, 255, shape, dtype=np.uint8))
    (seq / "velodyne").mkdir()
    Xw = world_points()
    for i in range(n):
        Tv = rigid_inverse(pose(i) @ TR)
        Xv = Xw @ Tv[:3, :3].T + Tv[:3, 3]
        scan = np.hstack([Xv, np.full((len(Xv), 1), 0.5)]).astype("<f4")
        scan.tofile(seq / "velodyne" / f"{i:06d}.bin")
    return root


@pytest.fixture
def kitti(tmp_path):
    return write_kitti(tmp_path / "kitti")


def convert(root, out, **kw):
    args = dict(stereo=False, voxel=0.0, outlier_neighbors=0, quiet=True)
    args.update(kw)
    return convert_kitti_odometry(root, out, **args)


def test_synthetic_known_values(kitti, tmp_path):
    s = convert(kitti, tmp_path / "out")
    # split: even train on both cameras, odd held out on the left only
    names = {(f.name, f.split) for f in s.frames}
    assert names == {("image_2/000000", "train"), ("image_3/000000", "train"),
                     ("image_2/000001", "test"),
                     ("image_2/000002", "train"), ("image_3/000002", "train"),
                     ("image_2/000003", "test")}
    assert not (tmp_path / "out" / "images" / "image_3" / "000001.png").exists()
    # intrinsics
    for c in ("image_2", "image_3"):
        cam = s.cameras[c]
        assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == (W, H, FX, FY, CX, CY)
    # world offset = mean of the output camera centres (original coordinates)
    orig = {}
    for f in s.frames:
        i, c = int(f.name[-6:]), int(f.name[6])
        orig[f.name] = pose(i) @ translation(-np.array(B[c]))
    off = np.mean([T[:3, 3] for T in orig.values()], 0)
    np.testing.assert_allclose(s.world_offset, off, atol=1e-9)
    for f in s.frames:
        expect = translation(-off) @ orig[f.name]
        np.testing.assert_allclose(f.cam_to_world, expect, atol=1e-9)
    # right camera is 0.53 m to the right of the left one (x of the left cam frame)
    l, r = s.frame("image_2/000002"), s.frame("image_3/000002")
    rel = l.world_to_cam() @ r.cam_to_world
    np.testing.assert_allclose(rel[:3, 3], np.array(B[2]) - np.array(B[3]), atol=1e-9)
    # timestamps relative to the first frame
    assert [f.timestamp for f in s.frames if f.camera == "image_2"] == pytest.approx([0, 0.1, 0.2, 0.3])
    # points: the wall, minus the offset (all scans agree exactly)
    pts = s.load_points("lidar")
    expect = world_points() - off
    d = np.linalg.norm(pts[:, None, :] - expect[None].astype(np.float32), axis=2).min(1)
    assert d.max() < 1e-4
    assert len(pts) >= len(expect)
    # sparse depth of frame 0, left camera: the wall's depth in that camera
    dep = s.load_depth(s.frame("image_2/000000"))
    assert dep.shape == (H, W) and (dep > 0).sum() > 50
    np.testing.assert_allclose(dep[dep > 0], 15.0 + B[2][2], atol=2 / 256)
    rep = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert rep["sanity"]["mean_fraction"] > 0.9
    assert rep["scan_agreement"]["mean_fraction"] > 0.9
    assert rep["poses"] == "gt"


def test_downscale_and_grey(tmp_path):
    root = write_kitti(tmp_path / "k", cams=(0, 1), grey=True)
    s = convert(root, tmp_path / "out", cameras=["image_0", "image_1"], downscale=2)
    cam = s.cameras["image_0"]
    assert (cam.width, cam.height) == (32, 24)
    assert cam.fx == FX / 2 and cam.cx == pytest.approx((CX + 0.5) / 2 - 0.5)
    assert {f.camera for f in s.frames_by_split("test")} == {"image_0"}
    img = s.load_image(s.frames[0])
    assert img.shape == (24, 32, 3)
    # grayscale stays single-channel on disk and the scene says so (channels 1)
    assert iio.imread(s.frames[0].image_path).shape == (24, 32)
    assert s.cameras["image_0"].channels == 1 and s.cameras["image_1"].channels == 1
    assert json.loads((tmp_path / "out" / "scene.json").read_text())["cameras"]["image_0"]["channels"] == 1
    assert np.array_equal(img[..., 0], img[..., 2])


def test_semantickitti_poses_preferred(kitti, tmp_path):
    seq = kitti / "sequences" / "00"
    (seq / "poses.txt").write_text("".join(fmt((pose(i) @ translation([0, 0, 0.1 * i]))[:3]) + "\n"
                                           for i in range(4)))
    s = convert(kitti, tmp_path / "a")
    assert s.source["poses"] == "semantickitti"
    s2 = convert(kitti, tmp_path / "b", poses="gt")
    assert s2.source["poses"] == "gt"
    assert not np.allclose(s.frames[-1].cam_to_world, s2.frames[-1].cam_to_world)


def test_frame_range(kitti, tmp_path):
    s = convert(kitti, tmp_path / "o", first=1, last=3)
    assert {f.name for f in s.frames_by_split("train")} == {"image_2/000001", "image_3/000001",
                                                           "image_2/000003", "image_3/000003"}
    assert s.frame("image_2/000001").timestamp == 0.0


def test_refuses_existing_output(kitti, tmp_path):
    convert(kitti, tmp_path / "o")
    with pytest.raises(ConversionError):
        convert(kitti, tmp_path / "o")
    convert(kitti, tmp_path / "o", overwrite=True)


# --- corrupt inputs: each a one-line error naming the file ---------------------


def expect_error(fn, path, word):
    with pytest.raises(SceneError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and word in msg, msg
    return msg


def test_truncated_scan(kitti, tmp_path):
    p = kitti / "sequences" / "00" / "velodyne" / "000002.bin"
    p.write_bytes(p.read_bytes()[:-6])
    expect_error(lambda: convert(kitti, tmp_path / "o"), p, "multiple of 16")


def test_empty_scan(kitti, tmp_path):
    p = kitti / "sequences" / "00" / "velodyne" / "000001.bin"
    p.write_bytes(b"")
    expect_error(lambda: convert(kitti, tmp_path / "o"), p, "empty scan")
    assert not (tmp_path / "o").exists()


def test_missing_tr(tmp_path):
    root = write_kitti(tmp_path / "k", tr=False)
    expect_error(lambda: convert(root, tmp_path / "o"), root / "sequences" / "00" / "calib.txt", "Tr")
    convert(root, tmp_path / "o2", lidar=False, stereo=True, sanity=False)  # fine without LiDAR (stereo points)


def test_short_pose_file(tmp_path):
    root = write_kitti(tmp_path / "k", pose_lines=3)
    expect_error(lambda: convert(root, tmp_path / "o"), root / "poses" / "00.txt", "3 poses")


def test_non_rigid_pose(kitti, tmp_path):
    p = kitti / "poses" / "00.txt"
    lines = p.read_text().splitlines()
    M = np.array([float(v) for v in lines[2].split()]).reshape(3, 4)
    M[:, :3] *= 1.05
    lines[2] = fmt(M)
    p.write_text("\n".join(lines) + "\n")
    expect_error(lambda: convert(kitti, tmp_path / "o"), p, "not rigid")


def test_skew_refused(tmp_path):
    root = write_kitti(tmp_path / "k", skew=0.5)
    expect_error(lambda: convert(root, tmp_path / "o"), root / "sequences" / "00" / "calib.txt", "skew")


def test_rotated_P_refused(kitti, tmp_path):
    p = kitti / "sequences" / "00" / "calib.txt"
    lines = p.read_text().splitlines()
    P = np.hstack([K @ rot_y(0.1), np.zeros((3, 1))])
    lines[2] = f"P2: {fmt(P)}"
    p.write_text("\n".join(lines) + "\n")
    expect_error(lambda: convert(kitti, tmp_path / "o"), p, "rectified pinhole")


def test_missing_files(kitti, tmp_path):
    (kitti / "sequences" / "00" / "times.txt").unlink()
    expect_error(lambda: convert(kitti, tmp_path / "o"), kitti / "sequences" / "00" / "times.txt", "missing")
    expect_error(lambda: convert(kitti / "nope", tmp_path / "o"), kitti / "nope", "missing")


def test_convention_bug_is_caught(kitti, tmp_path):
    """Writing Tr inverted (a classic convention slip) fails the sanity check."""
    p = kitti / "sequences" / "00" / "calib.txt"
    lines = [l for l in p.read_text().splitlines() if not l.startswith("Tr")]
    lines.append(f"Tr: {fmt(rigid_inverse(TR)[:3])}")
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionError) as e:
        convert(kitti, tmp_path / "o")
    assert "\n" not in str(e.value) and "convention" in str(e.value)


def test_main_cli(kitti, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert main([str(kitti), "--out", str(tmp_path / "o"), "--no-stereo", "--quiet", "--voxel", "0"]) == 0
    assert load_scene(tmp_path / "o").name == "kitti_odometry_00"
    (kitti / "sequences" / "00" / "calib.txt").unlink()
    assert main([str(kitti), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "calib.txt" in err


# --- stereo ------------------------------------------------------------------


def test_stereo_points_constant_disparity():
    """Right image = left shifted by 12 px: a fronto-parallel plane at fx*B/12."""
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 255, (80, 260), dtype=np.uint8)
    import cv2

    tex = cv2.GaussianBlur(tex, (3, 3), 0)
    left = np.repeat(tex[:, 20:220, None], 3, 2)
    right = np.repeat(tex[:, 32:232, None], 3, 2)  # right(u) = left(u + 12)  =>  d = 12
    cam = Camera("l", 200, 80, 100.0, 100.0, 99.5, 39.5)
    xyz, rgb, st = stereo_points(np.ascontiguousarray(left), np.ascontiguousarray(right), cam, 0.5,
                                 max_depth=25.0, min_depth=2.0)
    assert st["kept"] > 2000 and len(xyz) == st["kept"] and rgb.shape == (len(xyz), 3)
    np.testing.assert_allclose(np.median(xyz[:, 2]), 100 * 0.5 / 12, rtol=0.01)
    assert np.mean(np.abs(xyz[:, 2] - 100 * 0.5 / 12) < 0.1) > 0.9
    assert st["lr_consistent"] <= st["sgbm"]


# --- the real capture ----------------------------------------------------------


@pytest.mark.skipif(not (REAL / "sequences" / "00").is_dir(), reason="../shared/data/kitti_odometry_00 absent")
def test_real_kitti00(tmp_path):
    s = convert_kitti_odometry(REAL, tmp_path / "k00", stereo=False, downscale=4, quiet=True)
    assert len(s.frames) == 15
    assert len(s.frames_by_split("test")) == 5
    assert s.cameras["image_2"].width == 310 and s.cameras["image_2"].fx == pytest.approx(718.856 / 4)
    rep = json.loads((tmp_path / "k00" / "conversion_report.json").read_text())
    assert rep["poses"] == "semantickitti"
    assert rep["sanity"]["mean_fraction"] > 0.5
    assert rep["scan_agreement"]["mean_fraction"] > 0.8
    assert rep["lidar"]["written"] > 50_000
    c = np.array([f.camera_centre for f in s.frames if f.camera == "image_2"])
    travelled = np.linalg.norm(np.diff(c, axis=0), axis=1).sum()
    assert 6.4 < travelled < 7.0  # SemanticKITTI/ICP: 6.7 m (README)
    # the car drives along +z of the world (camera 0 of frame 0)
    assert c[-1, 2] - c[0, 2] > 6.0


# --- choices for long drives -------------------------------------------------


def test_stride_keeps_every_nth_frame_before_the_split(tmp_path):
    root = write_kitti(tmp_path / "k", n=8)
    s = convert(root, tmp_path / "o", stride=2, sanity=False)  # the synthetic wall has no ground
    left = sorted((f.name, f.split) for f in s.frames if f.camera == "image_2")
    # frames 0, 2, 4, 6 are kept; they alternate train / test along the kept frames
    assert left == [("image_2/000000", "train"), ("image_2/000002", "test"),
                    ("image_2/000004", "train"), ("image_2/000006", "test")]
    assert sorted(f.name for f in s.frames if f.camera == "image_3") == ["image_3/000000", "image_3/000004"]
    assert [f.timestamp for f in s.frames if f.camera == "image_2"] == pytest.approx([0, 0.2, 0.4, 0.6])
    assert s.source["stride"] == 2
    # the LiDAR depth of a kept frame is still its own scan: frame 4 is 2 m closer to the wall
    dep = s.load_depth(s.frame("image_2/000004"))
    assert np.median(dep[dep > 0]) == pytest.approx(15.0 - 2.0 + B[2][2], abs=0.1)


def test_window_start_len(tmp_path):
    root = write_kitti(tmp_path / "k", n=8)
    s = convert(root, tmp_path / "o", window="3:4", sanity=False)
    assert sorted(f.name for f in s.frames if f.camera == "image_2") == [f"image_2/00000{i}" for i in (3, 4, 5, 6)]
    assert s.frame("image_2/000003").split == "train" and s.frame("image_2/000004").split == "test"
    assert s.source["frames"] == [3, 6]
    s2 = convert(root, tmp_path / "o2", window="3:4", stride=2, sanity=False)
    assert sorted(f.name for f in s2.frames_by_split("train")) == ["image_2/000003", "image_3/000003"]
    assert [f.name for f in s2.frames_by_split("test")] == ["image_2/000005"]


def test_dispatcher_picks_the_grey_pair(tmp_path):
    """`dnmp convert kitti` on an odometry root without colour images: no --cameras needed."""
    from dnmp.converters.kitti import main as kitti_main

    root = write_kitti(tmp_path / "k", cams=(0, 1), grey=True)
    assert kitti_main([str(root), "--out", str(tmp_path / "o"), "--quiet", "--no-stereo", "--voxel", "0"]) == 0
    s = load_scene(tmp_path / "o")
    assert set(s.cameras) == {"image_0", "image_1"} and s.cameras["image_0"].channels == 1
    assert s.point_kinds() == ["lidar"]  # velodyne/ and Tr present: LiDAR as usual

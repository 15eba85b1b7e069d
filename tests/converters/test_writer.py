"""The one writer (dnmp.converters.writer) on a hand-made Capture: the policies
every format shares (ego-return range filter, recentring, relative timestamps,
byte copies, grey cameras, the no-points refusal, the report with --quiet)."""

from __future__ import annotations

import json
import imageio.v3 as iio
import numpy as np
import pytest

from dnmp.converters.capture import Capture, CaptureFrame, ConversionError, Points, Scan
from dnmp.converters.writer import convert, write_capture
from dnmp.data import Camera, read_ply_points

W, H = 64, 48
CAM = dict(width=W, height=H, fx=40.0, fy=40.0, cx=31.5, cy=23.5)
EGO = np.array([[0.0, 0.3, 1.0], [0.2, 0.4, 1.5]])  # returns of the car itself, < 2.5 m from the sensor


def pose(k):
    """Camera k: at (10, 0, 2k) in the source world, looking along +z (OpenCV axes)."""
    T = np.eye(4)
    T[:3, 3] = [10.0, 0.0, 2.0 * k]
    return T


def sensor_points():
    """A wall 12 m ahead and the ground 1.5 m below (sensor = camera frame), plus EGO."""
    g = np.mgrid[-4:4.01:0.25, -2:1.5:0.25].reshape(2, -1).T
    wall = np.c_[g, np.full(len(g), 12.0)]
    f = np.mgrid[-4:4.01:0.25, 3:11.9:0.25].reshape(2, -1).T
    ground = np.c_[f[:, 0], np.full(len(f), 1.5), f[:, 1]]
    return np.concatenate([wall, ground, EGO])


def make_capture(tmp_path, n=3, scans=True, points=()):
    rng = np.random.default_rng(0)
    rgb_dir, grey_dir = tmp_path / "src" / "rgb", tmp_path / "src" / "grey"
    rgb_dir.mkdir(parents=True)
    grey_dir.mkdir(parents=True)
    frames, jpgs = [], []
    for k in range(n):
        iio.imwrite(rgb_dir / f"{k}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        iio.imwrite(grey_dir / f"{k}.png", rng.integers(0, 255, (H, W), dtype=np.uint8))
        jpgs.append(iio.imwrite("<bytes>", rng.integers(0, 255, (H, W, 3), dtype=np.uint8), extension=".jpg"))
        split = "test" if k == 1 else "train"
        frames += [CaptureFrame(f"rgb/{k:03d}", "rgb", pose(k), 100.0 + 0.1 * k, split, rgb_dir / f"{k}.png",
                                scan=k if scans else None),
                   CaptureFrame(f"grey/{k:03d}", "grey", pose(k), 100.0 + 0.1 * k, split, grey_dir / f"{k}.png"),
                   CaptureFrame(f"jpg/{k:03d}", "jpg", pose(k), 100.05 + 0.1 * k, split, jpgs[-1])]
    cams = {c: Camera(name=c, **CAM) for c in ("rgb", "grey", "jpg")}
    sc = [Scan.rigid(sensor_points, pose(k), f"scan {k}") for k in range(n)] if scans else []
    return Capture(name="synthetic", source={"dataset": "test"}, cameras=cams, frames=frames, scans=sc,
                   points=list(points), calib_path=tmp_path / "calib.txt", ref_camera="rgb"), jpgs


def test_writer_policies(tmp_path):
    cap, jpgs = make_capture(tmp_path)
    s = write_capture(cap, tmp_path / "out", voxel=0.0, outlier_neighbors=0, quiet=True)
    # recentred on the mean camera centre; timestamps relative to the earliest frame
    np.testing.assert_allclose(s.world_offset, [10.0, 0.0, 2.0])
    f1 = s.frame("rgb/001")
    np.testing.assert_allclose(f1.cam_to_world[:3, 3], [0.0, 0.0, 0.0])
    assert f1.timestamp == pytest.approx(0.1) and s.frame("jpg/000").timestamp == pytest.approx(0.05)
    # byte copies: PNG files and encoded JPEG bytes as stored; the grey camera stays single-channel
    assert (tmp_path / "out" / "images/rgb/001.png").read_bytes() == (tmp_path / "src/rgb/1.png").read_bytes()
    assert (tmp_path / "out" / "images/jpg/002.jpg").read_bytes() == jpgs[2]
    assert s.cameras["grey"].channels == 1 and s.cameras["rgb"].channels == 3
    assert iio.imread(tmp_path / "out" / "images/grey/000.png").shape == (H, W)
    # ego returns (< 2.5 m from the sensor) are in the raw count but in no depth image or cloud
    rep = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    n = len(sensor_points())
    assert rep["lidar"]["raw"] == 3 * n and rep["min_range"] == 2.5
    d = s.load_depth(s.frame("rgb/000"))
    assert d[d > 0].min() > 2.5 and (d > 0).sum() > 100
    xyz, _ = read_ply_points(tmp_path / "out" / "points/lidar.ply")
    ego = np.concatenate([EGO + pose(k)[:3, 3] - s.world_offset for k in range(3)])  # scene coordinates
    assert np.sqrt(((ego[:, None] - xyz[None]) ** 2).sum(-1)).min() > 0.2
    # frames with no scan get no depth; the check ran on first/middle/last of every camera
    assert s.frame("grey/000").depth is None and s.frame("rgb/002").depth == "depth/rgb/002.png"
    assert [p[0] for p in rep["sanity"]["per_frame"]] == [
        "rgb/000", "rgb/001", "rgb/002", "grey/000", "grey/001", "grey/002", "jpg/000", "jpg/001", "jpg/002"]
    # the report has its summary also when quiet
    assert rep["summary"]["points"] == {"lidar": len(xyz)} and rep["summary"]["frames"]["rgb/test"] == 1


def test_min_range_and_downscale(tmp_path):
    cap, _ = make_capture(tmp_path)
    s = write_capture(cap, tmp_path / "out", voxel=0.0, outlier_neighbors=0, quiet=True, min_range=0.0,
                      downscale=2, sanity=False)
    rep = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    d = s.load_depth(s.frame("rgb/000"))
    assert d.shape == (H // 2, W // 2) and d[d > 0].min() == pytest.approx(1.0, abs=1 / 256)  # EGO kept
    # re-encoded at half size: PNG for every camera (the JPEG bytes too)
    assert s.frame("jpg/000").image == "images/jpg/000.png"
    assert iio.imread(s.frame("rgb/000").image_path).shape == (H // 2, W // 2, 3)
    assert rep["downscale"] == 2


def test_no_points_and_options_refused(tmp_path, capsys):
    cap, _ = make_capture(tmp_path, scans=False)
    with pytest.raises(ConversionError, match="calib.txt: the scene would get no points"):
        write_capture(cap, tmp_path / "out", quiet=True)
    # other points alone are enough (written as their own kind)
    cap.points = [Points("sfm", np.array([[10.0, 0, 12], [10.5, 0.2, 13], [9.5, -0.2, 14]]))]
    s = write_capture(cap, tmp_path / "out2", quiet=True, voxel=0.0, outlier_neighbors=0, sanity=False)
    assert s.point_kinds() == ["sfm"] and len(s.load_points("sfm")) == 3
    with pytest.raises(ConversionError, match="unknown option.*colour"):
        convert(lambda source, quiet=False: cap, "src", tmp_path / "o3", colour=True)
    with pytest.raises(ConversionError, match="downscale must be >= 1"):
        convert(lambda source, quiet=False: cap, "src", tmp_path / "o4", downscale=0.5)
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()

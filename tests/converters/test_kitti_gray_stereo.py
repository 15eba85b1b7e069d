"""Grayscale stereo KITTI odometry sequences (image_0/image_1 only, no velodyne/,
no Tr): picked without flags, stored single-channel, per-frame stereo depth
images for the training frames; a synthetic pair with a known disparity, the
real ../shared/data/kitti_gray_51 (a downscaled slice; skipped when absent),
and the converter's choices for long drives (--stride, --window, the training
estimate)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from dnmp.converters.estimate import (EST_BASE_BYTES, EST_BYTES_PER_CACHED_PIXEL, EST_BYTES_PER_PRIMITIVE,
                                    EST_CACHE_PIXELS, EST_PRIMITIVES_AHEAD, EST_PRIMITIVES_PER_METRE,
                                    EST_RENDER_BYTES_PER_PIXEL, training_estimate)
from dnmp.data.rigid import transform
from dnmp.converters.kitti_odometry import convert_kitti_odometry, main
from dnmp.data import load_scene, read_depth_png

sys.path.insert(0, str(Path(__file__).parent))
from _rig import assert_cli_error  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "kitti_gray_51"

W, H = 160, 80
FX, CX, CY = 100.0, 79.5, 39.5
BASELINE = 0.5
SHIFT = 12  # px: right(u) = left(u + SHIFT), so disparity 12 and depth FX * BASELINE / 12
Z = FX * BASELINE / SHIFT  # 4.1667 m
AUTO_LINE = ("no colour images or velodyne/: using grayscale cameras image_0/image_1, "
             "points from SGBM stereo only")


def fmt(M):
    return " ".join(f"{v:.12e}" for v in np.asarray(M).ravel())


def write_grey_stereo(root: Path, n: int = 4, right: bool = True) -> Path:
    """A parked car (identity poses) seeing a fronto-parallel textured plane:
    KITTI odometry layout with image_0/image_1 only, calib.txt with P0/P1 only,
    poses/00.txt, times.txt; no velodyne/."""
    import cv2

    seq = root / "sequences" / "00"
    seq.mkdir(parents=True)
    K = np.array([[FX, 0, CX], [0, FX, CY], [0, 0, 1.0]])
    P0 = np.hstack([K, np.zeros((3, 1))])
    P1 = np.hstack([K, (K @ np.array([-BASELINE, 0, 0]))[:, None]])
    (seq / "calib.txt").write_text(f"P0: {fmt(P0)}\nP1: {fmt(P1)}\n")
    (seq / "times.txt").write_text("".join(f"{0.1 * i:.6e}\n" for i in range(n)))
    (root / "poses").mkdir()
    (root / "poses" / "00.txt").write_text("".join(fmt(np.eye(4)[:3]) + "\n" for _ in range(n)))
    tex = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (H, W + 40), dtype=np.uint8), (3, 3), 0)
    for c in ((0, 1) if right else (0,)):
        (seq / f"image_{c}").mkdir()
        img = tex[:, 20:20 + W] if c == 0 else tex[:, 20 + SHIFT:20 + SHIFT + W]
        for i in range(n):
            iio.imwrite(seq / f"image_{c}" / f"{i:06d}.png", np.ascontiguousarray(img))
    return root


def test_grey_stereo_only_needs_no_flags(tmp_path, capsys):
    root = write_grey_stereo(tmp_path / "k")
    s = convert_kitti_odometry(root, tmp_path / "o", voxel=0.0, outlier_neighbors=0)
    out = capsys.readouterr().out
    assert out.count(AUTO_LINE) == 1, out
    rep = json.loads((tmp_path / "o" / "conversion_report.json").read_text())
    assert rep["auto"] == AUTO_LINE and rep["grayscale_cameras"] == ["image_0", "image_1"]
    assert set(s.cameras) == {"image_0", "image_1"} and s.point_kinds() == ["stereo"]
    assert all(c.channels == 1 for c in s.cameras.values())
    # even frames train on both cameras, odd ones are held out on image_0
    assert sorted(f.name for f in s.frames_by_split("test")) == ["image_0/000001", "image_0/000003"]
    # images: the source PNGs byte for byte, single channel; loaded as grey RGB
    f0 = s.frame("image_0/000000")
    src = root / "sequences" / "00" / "image_0" / "000000.png"
    assert f0.image_path.read_bytes() == src.read_bytes()
    stored = iio.imread(f0.image_path)
    assert stored.shape == (H, W) and stored.dtype == np.uint8
    img = s.load_image(f0)
    assert img.shape == (H, W, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img[..., 0], stored / np.float32(255))
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    # stereo depth: every training frame (both cameras), no held-out frame, no LiDAR depth
    for f in s.frames:
        assert f.depth is None
        if f.split == "train":
            assert f.stereo_depth == f"depth_stereo/{f.camera}/{f.name[-6:]}.png"
        else:
            assert f.stereo_depth is None
    assert sorted(p.name for p in (tmp_path / "o" / "depth_stereo" / "image_0").iterdir()) == \
        ["000000.png", "000002.png"]
    assert rep["stereo_points"]["depth_images"] == 4
    # depth = fx * baseline / disparity, in the uint16 metres * 256 format
    for name in ("image_0/000000", "image_1/000002"):
        d = read_depth_png(s.frame(name).stereo_depth_path)
        np.testing.assert_array_equal(d, s.load_depth(s.frame(name), "stereo"))
        assert (d > 0).sum() > 0.4 * W * H
        assert np.median(d[d > 0]) == pytest.approx(Z, abs=1 / 256)
        assert np.mean(np.abs(d[d > 0] - Z) < 0.05) > 0.95
    # the parked car's pairs agree with each other (the pose check without LiDAR)
    assert rep["stereo_agreement"]["mean_fraction"] > 0.95


def test_stereo_points_beyond_the_near_depth_are_a_kind_of_their_own(tmp_path):
    """The plane sits at Z = 4.17 m: a near depth beyond it keeps every point in
    points/stereo.ply; one before it moves the same points to points/stereo_far.ply
    (kind "stereo_far"); the stereo depth images do not change."""
    from dnmp.data.ply import read_ply_points
    root = write_grey_stereo(tmp_path / "k")
    near = convert_kitti_odometry(root, tmp_path / "near", voxel=0.0, outlier_neighbors=0, stereo_near_depth=Z + 1,
                                  quiet=True)
    far = convert_kitti_odometry(root, tmp_path / "far", voxel=0.0, outlier_neighbors=0, stereo_near_depth=Z - 1,
                                 quiet=True)
    assert near.point_kinds() == ["stereo"] and far.point_kinds() == ["stereo_far"]
    assert not (tmp_path / "near" / "points" / "stereo_far.ply").exists()
    a, b = near.load_points("stereo"), far.load_points("stereo_far")
    assert len(a) > 0.4 * W * H
    np.testing.assert_array_equal(np.sort(a, axis=0), np.sort(b, axis=0))
    assert np.median(a[:, 2]) == pytest.approx(Z, abs=0.01)
    xyz, rgb = read_ply_points(tmp_path / "far" / "points" / "stereo_far.ply")
    assert rgb is not None and rgb.shape == xyz.shape
    rep = json.loads((tmp_path / "far" / "conversion_report.json").read_text())
    assert rep["stereo_points"]["written_far"] == len(b) and rep["stereo_points"]["written_near"] == 0
    assert rep["stereo_near_depth"] == Z - 1
    for f in near.frames_by_split("train"):
        np.testing.assert_array_equal(near.load_depth(f, "stereo"), far.load_depth(far.frame(f.name), "stereo"))


def test_no_stereo_point_in_range_writes_no_stereo_cloud(tmp_path):
    # the plane is 4.17 m away, beyond a 1 m range: no SGBM point survives, no cloud and no crash
    root = write_grey_stereo(tmp_path / "k")
    s = convert_kitti_odometry(root, tmp_path / "o", voxel=0.0, outlier_neighbors=0, stereo_max_depth=1.0,
                               sanity=False, quiet=True)
    assert s.point_kinds() == [] and not (tmp_path / "o" / "points" / "stereo.ply").exists()


def test_non_positive_near_depth_is_refused(tmp_path, capsys):
    root = write_grey_stereo(tmp_path / "k")
    rc = main([str(root), "--out", str(tmp_path / "o"), "--stereo-near-depth", "0", "--quiet"])
    assert_cli_error(rc, capsys.readouterr().err, tmp_path / "o", "--stereo-near-depth must be > 0")


def test_stereo_depth_is_the_projection_of_the_stereo_points(tmp_path):
    """Downscaled: each pixel holds the nearest SGBM point of its pair projecting into it."""
    from dnmp.converters.projection import zbuffer_depth
    from dnmp.converters.stereo import stereo_points
    from dnmp.data.images import as_rgb8, read_image
    from dnmp.data import Camera

    root = write_grey_stereo(tmp_path / "k", n=2)
    s = convert_kitti_odometry(root, tmp_path / "o", downscale=2, quiet=True)
    seq = root / "sequences" / "00"
    full = Camera("image_0", W, H, FX, FX, CX, CY)
    xyz, _, _ = stereo_points(as_rgb8(read_image(seq / "image_0" / "000000.png"), seq), as_rgb8(read_image(seq / "image_1" / "000000.png"), seq),
                              full, BASELINE)
    f = s.frame("image_0/000000")
    expect = zbuffer_depth(transform(f.world_to_cam() @ f.cam_to_world, xyz), s.cameras["image_0"], 0.5)
    got = s.load_depth(f, "stereo")
    assert got.shape == (H // 2, W // 2)
    np.testing.assert_allclose(got, expect, atol=0.5 / 256)


def test_image_0_without_image_1(tmp_path, capsys):
    root = write_grey_stereo(tmp_path / "k", right=False)
    rc = main([str(root), "--out", str(tmp_path / "o"), "--quiet"])
    assert_cli_error(rc, capsys.readouterr().err, tmp_path / "o", str(root / "sequences" / "00"),
                     "image_0 has no stereo partner image_1")


@pytest.mark.parametrize("stride", ["0", "-2"])
def test_bad_stride(tmp_path, capsys, stride):
    root = write_grey_stereo(tmp_path / "k")
    rc = main([str(root), "--out", str(tmp_path / "o"), "--quiet", "--stride", stride])
    assert_cli_error(rc, capsys.readouterr().err, tmp_path / "o", str(root), "--stride must be an integer >= 1")
    with pytest.raises(SystemExit) as e:  # not a number: argparse's own one-line usage error
        main([str(root), "--out", str(tmp_path / "o"), "--stride", "x"])
    assert e.value.code == 2


def test_bad_window(tmp_path, capsys):
    root = write_grey_stereo(tmp_path / "k")
    rc = main([str(root), "--out", str(tmp_path / "o"), "--quiet", "--window", "3"])
    assert_cli_error(rc, capsys.readouterr().err, tmp_path / "o", str(root), "--window must be START:LEN",
                     "needs --preset")
    rc = main([str(root), "--out", str(tmp_path / "o"), "--quiet", "--window", "0:2", "--last", "3"])
    assert_cli_error(rc, capsys.readouterr().err, tmp_path / "o", str(root), "do not also give --first/--last")


def test_training_estimate_values():
    # 10 training images of 1M px, 5 held-out ones of 466,616 px (KITTI), 20 m of drive, stereo only
    images = [(1_000_000, "train")] * 10 + [(466_616, "test")] * 5
    centres = np.stack([np.zeros(21), np.zeros(21), np.arange(21.0)], 1)
    est = training_estimate(images, centres, lidar=False)
    assert est["train_pixels"] == 10_000_000 and est["test_pixels"] == 5 * 466_616
    assert est["travelled_m"] == 20.0 and est["blocks"] == 1
    prims = EST_PRIMITIVES_AHEAD["stereo"] + 20 * EST_PRIMITIVES_PER_METRE
    cache = EST_CACHE_PIXELS * EST_BYTES_PER_CACHED_PIXEL  # the cache is bounded: 6M of the 10M pixels
    assert cache > 466_616 * EST_RENDER_BYTES_PER_PIXEL
    assert est["memory_gb"] == pytest.approx((EST_BASE_BYTES + prims * EST_BYTES_PER_PRIMITIVE + cache) / 1e9,
                                             abs=0.006)
    assert est["cache_gb"] == pytest.approx(cache / 1e9, abs=0.006)
    assert est["primitives"] == round(prims, -3)
    assert "an estimate" in est["line"] and "\n" not in est["line"]
    assert training_estimate(images, centres, lidar=True)["primitives"] > est["primitives"]
    # a 1 km drive of 1,000 instants: blocks of 80 frames (overlap 8), memory of one block
    long_c = np.stack([np.zeros(1000), np.zeros(1000), np.arange(1000.0)], 1)
    long = training_estimate([(466_616, "train")] * 1000 + [(466_616, "test")] * 500, long_c, lidar=False)
    assert long["blocks"] == 14  # ceil((1000 - 8) / 72)
    assert long["primitives"] == round(EST_PRIMITIVES_AHEAD["stereo"] + EST_PRIMITIVES_PER_METRE * 999 * 0.08, -3)
    assert long["minutes"] > 14 * 12
    # twice as long: twice the blocks and time, the same memory
    c2 = np.stack([np.zeros(2000), np.zeros(2000), np.arange(2000.0)], 1)
    twice = training_estimate([(466_616, "train")] * 2000 + [(466_616, "test")] * 1000, c2, lidar=False)
    assert twice["blocks"] == 28 and twice["minutes"] > 1.9 * long["minutes"]
    # one block: ~65k primitives (stereo points to 25 m fine, 25-40 m coarse; 80 m of drive), about 2.3 GB
    assert twice["memory_gb"] == pytest.approx(long["memory_gb"], abs=0.02) and long["memory_gb"] < 3.0
    assert "per block of 80 frames (14 blocks)" in long["line"]


def test_estimate_printed_before_the_heavy_work(tmp_path, capsys):
    root = write_grey_stereo(tmp_path / "k")
    convert_kitti_odometry(root, tmp_path / "o", voxel=0.0, outlier_neighbors=0)
    out = capsys.readouterr().out
    assert out.count("expected training (dnmp train, default settings; an estimate)") == 1
    assert out.index("expected training") < out.index("stereo: ")  # before SGBM


# --- the real grayscale drive ---------------------------------------------------


@pytest.mark.skipif(not (REAL / "sequences" / "00").is_dir(), reason="../shared/data/kitti_gray_51 absent")
def test_real_gray51_slice(tmp_path, capsys):
    s = convert_kitti_odometry(REAL, tmp_path / "g", first=0, last=5, downscale=4)
    out = capsys.readouterr().out
    assert out.count(AUTO_LINE) == 1
    assert len(s.frames) == 9  # 3 even frames x 2 cameras + 3 odd frames on image_0
    assert sorted(f.name for f in s.frames_by_split("test")) == ["image_0/000001", "image_0/000003",
                                                                "image_0/000005"]
    cam = s.cameras["image_0"]
    assert (cam.width, cam.height, cam.channels) == (310, 94, 1)
    assert cam.fx == pytest.approx(718.856 / 4)
    f0 = s.frame("image_0/000000")
    stored = iio.imread(f0.image_path)
    assert stored.shape == (94, 310) and stored.dtype == np.uint8
    img = s.load_image(f0)
    assert img.shape == (94, 310, 3) and np.array_equal(img[..., 0], img[..., 2])
    rep = json.loads((tmp_path / "g" / "conversion_report.json").read_text())
    assert rep["stereo_points"]["baseline"] == pytest.approx(386.1448 / 718.856, abs=1e-4)  # 0.537 m
    assert rep["stereo_points"]["depth_images"] == 6 and "lidar" not in rep
    assert rep["stereo_agreement"]["mean_fraction"] > 0.6
    assert [f.name for f in s.frames if f.stereo_depth] == [f.name for f in s.frames_by_split("train")]
    # multi-view check of the stereo depth: frame 2's depth, unprojected and seen from frame 0,
    # matches frame 0's own stereo depth (poses, baseline and encoding all have to be right)
    f2 = s.frame("image_0/000002")
    d2 = s.load_depth(f2, "stereo")
    v, u = np.nonzero(d2 > 0)
    z = d2[v, u].astype(np.float64)
    xyz = np.stack([(u - cam.cx) / cam.fx * z, (v - cam.cy) / cam.fy * z, z], 1)
    from dnmp.converters.projection import zbuffer_depth

    seen = zbuffer_depth(transform(f0.world_to_cam() @ f2.cam_to_world, xyz), cam, 0.5)
    d0 = s.load_depth(f0, "stereo")
    m = (seen > 0) & (d0 > 0)
    assert m.sum() > 3000
    rel = np.abs(seen[m] - d0[m]) / d0[m]
    assert np.median(rel) < 0.05 and np.mean(rel < 0.1) > 0.7
    assert 1.0 < np.median(d0[d0 > 0]) < 25.0  # within the stereo range (2-25 m)


def test_downscale_below_the_minimum_image_size(tmp_path, capsys):
    """--downscale 300 would write 0x0 (here) / 4x1 (KITTI) images: one-line error naming the limit."""
    root = write_grey_stereo(tmp_path / "k")
    rc = main([str(root), "--out", str(tmp_path / "o"), "--quiet", "--downscale", "300"])
    # 160x80 / 300 -> 1x1 pixels; at least 16 per side means --downscale <= 80 / 16 = 5
    assert_cli_error(rc, capsys.readouterr().err, tmp_path / "o", "--downscale 300 would write image_0 images of 1x1",
                     "at least 16 per side", "--downscale <= 5")
    s = convert_kitti_odometry(root, tmp_path / "ok", downscale=5, quiet=True)
    assert (s.cameras["image_0"].width, s.cameras["image_0"].height) == (32, 16)


@pytest.mark.parametrize("flags, words", [
    (["--cameras", "image_0,image_0"], ["camera image_0 given twice"]),
    (["--no-stereo"], ["no points", "no velodyne/ folder", "--no-stereo"]),
    (["--cameras", "image_0"], ["no points", "no stereo pair among cameras image_0"]),
])
def test_scene_without_points_is_refused(tmp_path, capsys, flags, words):
    """Grey data without LiDAR: a duplicate camera or no stereo leaves no points; exit 2, one line."""
    root = write_grey_stereo(tmp_path / "k")
    rc = main([str(root), "--out", str(tmp_path / "o"), "--quiet", *flags])
    assert_cli_error(rc, capsys.readouterr().err, tmp_path / "o", *words)


@pytest.mark.skipif(not (REAL / "sequences" / "00").is_dir(), reason="../shared/data/kitti_gray_51 absent")
def test_real_gray51_stride_passes_the_pose_check(tmp_path):
    """--stride 5 keeps frames 10 m apart; the stereo pose check matches the skipped frames in
    between (the same neighbours as at stride 1), so correct poses pass with the same agreement."""
    s = convert_kitti_odometry(REAL, tmp_path / "g", first=0, last=20, stride=5, downscale=4, quiet=True)
    assert [f.name for f in s.frames_by_split("train")] == ["image_0/000000", "image_1/000000", "image_0/000010",
                                                            "image_1/000010", "image_0/000020", "image_1/000020"]
    rep = json.loads((tmp_path / "g" / "conversion_report.json").read_text())
    per = {name: frac for name, frac, _, _ in rep["stereo_agreement"]["per_frame"]}
    assert sorted(per) == ["image_0/000000", "image_0/000010", "image_0/000020"]
    assert per["image_0/000000"] == pytest.approx(0.806, abs=0.01)  # as at stride 1 (frames 2-10 compared)
    assert rep["stereo_agreement"]["mean_fraction"] > 0.7

"""Scene format I/O: round trip, validation errors (one line, naming the file),
fingerprint, downscaling, and the bundled scene."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from dnmp.data import (
    Camera,
    Frame,
    PointCloud,
    SceneError,
    downscale_scene,
    load_depth,
    load_image,
    load_scene,
    read_depth_png,
    write_depth_png,
    write_ply_points,
    write_scene_json,
)
from dnmp.data.downscale import downscale_depth
from _poses import rot_y  # noqa: E402  (tests/ is on sys.path: conftest.py)

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "scenes" / "kitti00"


def make_scene(root: Path, width=21, height=15, with_depth=True) -> Path:
    rng = np.random.default_rng(0)
    cams = {"left": Camera("left", width, height, 20.0, 21.0, 10.0, 7.0),
            "right": Camera("right", width, height, 20.0, 21.0, 10.5, 7.0)}
    frames = []
    for i in range(4):
        for cname in ("left", "right"):
            T = np.eye(4)
            T[:3, :3] = rot_y(0.1 * i)
            T[:3, 3] = [0.5 * (cname == "right"), 0.0, 1.0 * i]
            rel = f"images/{cname}/{i:06d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(root / rel, rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
            dep = None
            if with_depth:
                d = np.zeros((height, width), np.float32)
                d[3, 4] = 12.5
                d[7, 9] = 3.25
                dep = f"depth/{cname}/{i:06d}.png"
                write_depth_png(root / dep, d)
            frames.append(Frame(image=rel, camera=cname, cam_to_world=T, timestamp=0.1 * i,
                                split="test" if (i % 2 and cname == "left") else "train",
                                depth=dep, name=f"{cname}/{i:06d}"))
    pts = rng.normal(size=(100, 3)).astype(np.float32)
    write_ply_points(root / "points" / "lidar.ply", pts)
    write_ply_points(root / "points" / "stereo.ply", pts[:10] + 1, rng.random((10, 3)))
    write_scene_json(root, "unit", {"dataset": "synthetic", "sequence": "s", "licence": "CC0"},
                     [100.0, 200.0, 3.0], cams, frames,
                     [PointCloud("points/lidar.ply", "lidar"), PointCloud("points/stereo.ply", "stereo")])
    return root


@pytest.fixture
def scene_dir(tmp_path):
    return make_scene(tmp_path / "s")


def edit_json(root: Path, fn):
    p = root / "scene.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))
    return p


def assert_one_line_naming(exc: pytest.ExceptionInfo, path):
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg, msg
    assert isinstance(exc.value, ValueError)


# ---------------------------------------------------------------------------


def test_round_trip(scene_dir, tmp_path):
    s = load_scene(scene_dir)
    assert s.name == "unit" and s.version == 1
    assert len(s.frames) == 8
    assert [f.name for f in s.frames_by_split("test")] == ["left/000001", "left/000003"]
    assert len(s.frames_by_split("train")) == 6
    np.testing.assert_allclose(s.world_offset, [100, 200, 3])
    K = s.cameras["left"].intrinsics()
    assert K.dtype == np.float32 and K.shape == (3, 3)
    np.testing.assert_allclose(K, [[20, 0, 10], [0, 21, 7], [0, 0, 1]])
    assert tuple(s.cameras["left"].intrinsics(as_tensor=True).shape) == (3, 3)
    f = s.frame("right/000002")
    assert f.cam_to_world.dtype == np.float64
    np.testing.assert_allclose(f.world_to_cam() @ f.cam_to_world, np.eye(4), atol=1e-12)
    img = s.load_image(f)
    assert img.dtype == np.float32 and img.shape == (15, 21, 3) and 0 <= img.min() and img.max() <= 1
    d = s.load_depth(f)
    assert d.dtype == np.float32 and d.shape == (15, 21)
    assert d[3, 4] == 12.5 and d[7, 9] == 3.25 and (d > 0).sum() == 2
    assert s.load_points().shape == (110, 3)
    assert s.load_points("lidar").shape == (100, 3) and s.load_points("lidar").dtype == np.float32
    xyz, rgb = s.load_points("stereo", with_colors=True)
    assert xyz.shape == (10, 3) and rgb.shape == (10, 3) and np.all(np.isfinite(rgb))
    assert s.load_points("sfm").shape == (0, 3)
    s.check_files()
    # write scene.json again and reload: identical
    write_scene_json(tmp_path / "copy", s.name, s.source, s.world_offset, s.cameras, s.frames, s.point_clouds)
    for sub in ("images", "depth", "points"):
        shutil.copytree(scene_dir / sub, tmp_path / "copy" / sub)
    s2 = load_scene(tmp_path / "copy")
    assert s2.fingerprint() == s.fingerprint()
    for a, b in zip(s.frames, s2.frames):
        np.testing.assert_array_equal(a.cam_to_world, b.cam_to_world)
        assert (a.image, a.camera, a.split, a.depth, a.timestamp) == (b.image, b.camera, b.split, b.depth, b.timestamp)


def test_fingerprint_changes_with_frames(scene_dir):
    fp = load_scene(scene_dir).fingerprint()
    assert fp == load_scene(scene_dir / "scene.json").fingerprint()
    edit_json(scene_dir, lambda d: d["frames"].pop())
    assert load_scene(scene_dir).fingerprint() != fp


def test_depth_png_convention(tmp_path):
    d = np.array([[0, 1.0, 80.123], [255.99, -1, np.nan]], np.float32)
    write_depth_png(tmp_path / "d.png", d)
    raw = iio.imread(tmp_path / "d.png")
    assert raw.dtype == np.uint16
    assert raw[0, 1] == 256 and raw[0, 0] == 0 and raw[1, 1] == 0 and raw[1, 2] == 0
    back = read_depth_png(tmp_path / "d.png")
    np.testing.assert_allclose(back[0], [0, 1.0, 80.123], atol=1 / 512)


# --- validation errors -------------------------------------------------------


def test_not_a_scene(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneError) as e:
        load_scene(tmp_path / "empty")
    assert_one_line_naming(e, tmp_path / "empty")
    assert "scene.json" in str(e.value)


def test_invalid_json(scene_dir):
    (scene_dir / "scene.json").write_text('{"format": "dnmp-scene",\n "version": 1,,}')
    with pytest.raises(SceneError) as e:
        load_scene(scene_dir)
    assert_one_line_naming(e, scene_dir / "scene.json")
    assert "invalid JSON" in str(e.value)


def test_wrong_format(scene_dir):
    p = edit_json(scene_dir, lambda d: d.update(format="nerfstudio"))
    with pytest.raises(SceneError) as e:
        load_scene(scene_dir)
    assert_one_line_naming(e, p)
    assert "nerfstudio" in str(e.value)


def test_unknown_version(scene_dir):
    p = edit_json(scene_dir, lambda d: d.update(version=7))
    with pytest.raises(SceneError) as e:
        load_scene(scene_dir)
    assert_one_line_naming(e, p)
    assert "7" in str(e.value) and "version 1" in str(e.value)


@pytest.mark.parametrize("edit,word", [
    (lambda d: d.pop("frames"), "frames"),
    (lambda d: d.pop("cameras"), "cameras"),
    (lambda d: d["frames"][2].pop("cam_to_world"), "cam_to_world"),
    (lambda d: d["cameras"]["left"].pop("fx"), "fx"),
    (lambda d: d["point_clouds"][0].pop("kind"), "kind"),
])
def test_missing_keys(scene_dir, edit, word):
    p = edit_json(scene_dir, edit)
    with pytest.raises(SceneError) as e:
        load_scene(scene_dir)
    assert_one_line_naming(e, p)
    assert word in str(e.value) and "missing" in str(e.value)


def test_unknown_camera(scene_dir):
    p = edit_json(scene_dir, lambda d: d["frames"][1].update(camera="fisheye"))
    with pytest.raises(SceneError) as e:
        load_scene(scene_dir)
    assert_one_line_naming(e, p)
    assert "fisheye" in str(e.value)


@pytest.mark.parametrize("kind", ["scale", "reflection", "shear"])
def test_non_rigid_pose(scene_dir, kind):
    def edit(d):
        T = np.array(d["frames"][3]["cam_to_world"])
        if kind == "scale":
            T[:3, :3] *= 1.01
        elif kind == "reflection":
            T[:3, 0] *= -1
        else:
            T[0, 1] += 0.01
        d["frames"][3]["cam_to_world"] = T.tolist()
    p = edit_json(scene_dir, edit)
    with pytest.raises(SceneError) as e:
        load_scene(scene_dir)
    assert_one_line_naming(e, p)
    assert "rigid" in str(e.value)


def test_pose_within_tolerance_accepted(scene_dir):
    def edit(d):
        T = np.array(d["frames"][3]["cam_to_world"])
        T[:3, :3] *= 1 + 2e-5
        d["frames"][3]["cam_to_world"] = T.tolist()
    edit_json(scene_dir, edit)
    load_scene(scene_dir)


def test_missing_image(scene_dir):
    img = scene_dir / "images" / "left" / "000002.png"
    img.unlink()
    with pytest.raises(SceneError) as e:
        load_scene(scene_dir)
    assert_one_line_naming(e, img)
    assert "missing" in str(e.value)


def test_missing_point_cloud(scene_dir):
    p = scene_dir / "points" / "stereo.ply"
    p.unlink()
    with pytest.raises(SceneError) as e:
        load_scene(scene_dir)
    assert_one_line_naming(e, p)


def test_corrupt_image(scene_dir):
    img = scene_dir / "images" / "right" / "000001.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    s = load_scene(scene_dir)  # existence only at load
    with pytest.raises(SceneError) as e:
        s.load_image(s.frame("right/000001"))
    assert_one_line_naming(e, img)
    assert "corrupt" in str(e.value)
    with pytest.raises(SceneError) as e:
        s.check_files()
    assert_one_line_naming(e, img)
    with pytest.raises(SceneError):
        load_scene(scene_dir, check_images=True)


def test_image_size_mismatch(scene_dir):
    img = scene_dir / "images" / "left" / "000003.png"
    iio.imwrite(img, np.zeros((15, 20, 3), np.uint8))
    s = load_scene(scene_dir)
    with pytest.raises(SceneError) as e:
        load_image(s.frame("left/000003"), s.cameras["left"])
    assert_one_line_naming(e, img)
    assert "20x15" in str(e.value) and "21x15" in str(e.value)
    with pytest.raises(SceneError) as e:
        s.check_files()
    assert_one_line_naming(e, img)


def test_depth_size_mismatch(scene_dir):
    dp = scene_dir / "depth" / "left" / "000000.png"
    write_depth_png(dp, np.ones((5, 5)))
    s = load_scene(scene_dir)
    with pytest.raises(SceneError) as e:
        load_depth(s.frame("left/000000"), s.cameras["left"])
    assert_one_line_naming(e, dp)


def test_grey_image_becomes_rgb(scene_dir):
    img = scene_dir / "images" / "left" / "000000.png"
    iio.imwrite(img, np.full((15, 21), 128, np.uint8))
    s = load_scene(scene_dir)
    out = s.load_image(s.frame("left/000000"))
    assert out.shape == (15, 21, 3)
    np.testing.assert_allclose(out, 128 / 255)


# --- downscale ---------------------------------------------------------------


def test_downscale_scene(scene_dir, tmp_path):
    src = load_scene(scene_dir)
    dst = downscale_scene(scene_dir, tmp_path / "small", 2)
    c0, c1 = src.cameras["left"], dst.cameras["left"]
    assert (c1.width, c1.height) == (10, 7)
    assert c1.fx == pytest.approx(10.0) and c1.fy == pytest.approx(10.5)
    assert c1.cx == pytest.approx((c0.cx + 0.5) / 2 - 0.5)
    assert c1.cy == pytest.approx((c0.cy + 0.5) / 2 - 0.5)
    dst.check_files()
    f = dst.frame("left/000001")
    # area interpolation == 2x2 block mean of the (cropped) source
    big = iio.imread(src.frame("left/000001").image_path).astype(np.float64)[:14, :20]
    blocks = big.reshape(7, 2, 10, 2, 3).mean((1, 3))
    np.testing.assert_allclose(iio.imread(f.image_path), blocks, atol=1.0)
    d = dst.load_depth(f)
    assert d.shape == (7, 10) and d[1, 2] == 12.5 and d[3, 4] == 3.25 and (d > 0).sum() == 2
    np.testing.assert_array_equal(dst.load_points(), src.load_points())
    for a, b in zip(src.frames, dst.frames):
        np.testing.assert_array_equal(a.cam_to_world, b.cam_to_world)
        assert a.split == b.split


def test_downscale_depth_keeps_nearest():
    d = np.zeros((4, 4), np.float32)
    d[0, 0], d[1, 1], d[2, 3] = 10.0, 4.0, 7.0
    out = downscale_depth(d, 2)
    np.testing.assert_array_equal(out, [[4.0, 0.0], [0.0, 7.0]])


def test_point_projection_pixel_centre_convention_survives_downscale(scene_dir, tmp_path):
    """A point projecting to the centre of pixel (u, v) at full size lands at
    ((u + 0.5) / 2 - 0.5, ...) after a factor-2 downscale."""
    src = load_scene(scene_dir)
    dst = downscale_scene(scene_dir, tmp_path / "small", 2)
    X = np.array([0.3, -0.2, 5.0])
    K0, K1 = src.cameras["left"].intrinsics().astype(np.float64), dst.cameras["left"].intrinsics().astype(np.float64)
    p0 = K0 @ X / X[2]
    p1 = K1 @ X / X[2]
    np.testing.assert_allclose(p1[:2], (p0[:2] + 0.5) / 2 - 0.5, atol=1e-5)


# --- the bundled scene -------------------------------------------------------


@pytest.mark.skipif(not BUNDLED.is_dir(), reason="bundled scene absent")
def test_bundled_scene_loads_and_decodes():
    s = load_scene(BUNDLED, check_images=True)
    assert s.name == "kitti00"
    assert len(s.frames) == 15
    assert len(s.frames_by_split("train")) == 10
    test = s.frames_by_split("test")
    assert len(test) == 5 and all(f.camera == "image_2" for f in test)
    assert sorted(s.point_kinds()) == ["lidar", "stereo", "stereo_far"]
    assert len(s.load_points("lidar")) > 50_000 and len(s.load_points("stereo")) > 50_000
    assert (BUNDLED / "LICENSE.md").is_file()
    size = sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file())
    assert size < 60e6
    # LiDAR depth on every frame; stereo depth (both cameras) on the training frames only
    assert all(f.depth is not None for f in s.frames)
    assert [f.name for f in s.frames if f.stereo_depth] == [f.name for f in s.frames_by_split("train")]
    d = s.load_depth(s.frame("image_2/000000"), "stereo")
    assert (d > 0).mean() > 0.2 and np.median(d[d > 0]) < 25.0


def test_truncated_ply_is_refused(tmp_path):
    from dnmp.data.ply import read_ply_points, write_ply_points

    xyz = np.random.default_rng(0).random((100, 3)).astype(np.float32)
    write_ply_points(tmp_path / "a.ply", xyz, np.ones((100, 3)))
    got, rgb = read_ply_points(tmp_path / "a.ply")
    np.testing.assert_array_equal(got, xyz)
    data = (tmp_path / "a.ply").read_bytes()
    (tmp_path / "t.ply").write_bytes(data[: len(data) - 7])  # open3d would return garbage rows
    with pytest.raises(SceneError, match="truncated point cloud: the header promises 100 vertex"):
        read_ply_points(tmp_path / "t.ply")
    header = data[: data.index(b"end_header") + 11].replace(b"binary_little_endian", b"ascii")
    rows = b"".join(b"%f %f %f 1 1 1\n" % tuple(p) for p in xyz[:90])
    (tmp_path / "asc.ply").write_bytes(header + rows)
    with pytest.raises(SceneError, match="promises 100 rows but the file holds 90"):
        read_ply_points(tmp_path / "asc.ply")
    (tmp_path / "junk.ply").write_bytes(b"hello")
    with pytest.raises(SceneError, match="not a PLY file"):
        read_ply_points(tmp_path / "junk.ply")


# --- grayscale cameras and stereo depth images ---------------------------------------


def test_grayscale_camera_round_trip(scene_dir):
    def grey(d):
        d["cameras"]["left"]["channels"] = 1
    edit_json(scene_dir, grey)
    for p in (scene_dir / "images" / "left").iterdir():
        iio.imwrite(p, np.full((15, 21), 77, np.uint8))
    s = load_scene(scene_dir, check_images=True)
    assert s.cameras["left"].channels == 1 and s.cameras["right"].channels == 3
    img = s.load_image(s.frame("left/000000"))
    assert img.shape == (15, 21, 3) and np.all(img == np.float32(77 / 255))
    # written back: only the grayscale camera carries the key (RGB scenes' json is unchanged)
    write_scene_json(scene_dir, s.name, s.source, s.world_offset, s.cameras, s.frames, s.point_clouds)
    cams = json.loads((scene_dir / "scene.json").read_text())["cameras"]
    assert cams["left"]["channels"] == 1 and "channels" not in cams["right"]
    small = downscale_scene(scene_dir, scene_dir.parent / "small", 3)
    assert small.cameras["left"].channels == 1
    assert iio.imread(small.frame("left/000000").image_path).shape == (5, 7)


def test_grayscale_camera_refuses_a_colour_image(scene_dir):
    edit_json(scene_dir, lambda d: d["cameras"]["left"].update(channels=1))
    s = load_scene(scene_dir)
    with pytest.raises(SceneError, match="is grayscale") as e:
        s.load_image(s.frame("left/000000"))
    assert_one_line_naming(e, scene_dir / "images" / "left" / "000000.png")


@pytest.mark.parametrize("bad", [2, 4, "1", True])
def test_bad_channels(scene_dir, bad):
    edit_json(scene_dir, lambda d: d["cameras"]["left"].update(channels=bad))
    with pytest.raises(SceneError, match="channels") as e:
        load_scene(scene_dir)
    assert_one_line_naming(e, scene_dir / "scene.json")


def _add_stereo_depth(root: Path):
    d = np.zeros((15, 21), np.float32)
    d[2:10, 3:15] = 7.5
    def add(j):
        for f in j["frames"]:
            if f["split"] == "train":
                f["stereo_depth"] = "depth_stereo/" + f["name"] + ".png"
                write_depth_png(root / f["stereo_depth"], d)
    edit_json(root, add)


def test_stereo_depth_field(scene_dir, tmp_path):
    _add_stereo_depth(scene_dir)
    s = load_scene(scene_dir, check_images=True)
    f = s.frame("left/000000")
    assert f.stereo_depth == "depth_stereo/left/000000.png"
    assert s.depth_kinds("train") == ["lidar", "stereo"] and s.depth_kinds("test") == ["lidar"]
    st = s.load_depth(f, "stereo")
    assert st[5, 5] == 7.5 and st[0, 0] == 0 and (st > 0).sum() == 96
    assert s.load_depth(f)[3, 4] == 12.5  # the default kind stays LiDAR
    with pytest.raises(SceneError, match="has no stereo depth image"):
        s.load_depth(s.frame("left/000001"), "stereo")
    fp = s.fingerprint()
    # like LiDAR depth, stereo depth is not part of the scene's identity
    edit_json(scene_dir, lambda j: [fr.pop("stereo_depth", None) for fr in j["frames"]])
    assert load_scene(scene_dir).fingerprint() == fp
    _add_stereo_depth(scene_dir)
    small = downscale_scene(scene_dir, tmp_path / "small", 3)
    assert small.load_depth(small.frame("left/000000"), "stereo").shape == (5, 7)


def test_stereo_depth_missing_or_wrong_size(scene_dir):
    _add_stereo_depth(scene_dir)
    p = scene_dir / "depth_stereo" / "right" / "000002.png"
    write_depth_png(p, np.ones((4, 4)))
    s = load_scene(scene_dir)
    with pytest.raises(SceneError, match="depth size mismatch") as e:
        s.check_files()
    assert_one_line_naming(e, p)
    p.unlink()
    with pytest.raises(SceneError, match="stereo depth file") as e:
        load_scene(scene_dir)
    assert_one_line_naming(e, p)

"""COLMAP converter: a synthetic sparse model written by the test in COLMAP's
text and binary formats (known poses, intrinsics, points), distortion handling
and corrupt inputs."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _rig import CV_TO_VEHICLE, inv, rigid, rot_to_quat, rot_z  # noqa: E402

from dnmp.converters.colmap import convert_colmap, main  # noqa: E402
from dnmp.converters.capture import ConversionError  # noqa: E402
from dnmp.data import SceneError  # noqa: E402

W, H = 64, 48
SCALE = 2.5
# camera_id -> (model, params) in COLMAP's pixel convention (top-left centre at 0.5)
CAMS = {1: ("PINHOLE", [40.0, 41.0, 32.0, 24.0]), 2: ("SIMPLE_PINHOLE", [35.0, 31.0, 23.5])}
MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "OPENCV": 4, "OPENCV_FISHEYE": 5}
NAMES = ["c.png", "a.png", "e.png", "b.png", "d.png", "f.png"]  # written out of order on purpose


def cam_to_world(k):
    """Model-unit camera -> world pose of image k: walking along +x, looking
    ahead and slightly turning (world z up)."""
    return rigid(rot_z(0.08 * k - 0.2) @ CV_TO_VEHICLE, [0.3 * k, 0.2 - 0.05 * k, 0.6])


def points():
    gy, gz = np.meshgrid(np.arange(-5.0, 5.01, 0.4), np.arange(-0.43, 2.0, 0.4))
    P = np.stack([8.0 + 0.1 * np.sin(gy.ravel()), gy.ravel(), gz.ravel()], 1)  # a wall ahead
    rgb = (np.arange(len(P))[:, None] * [7, 13, 29] % 256).astype(np.uint8)
    return P, rgb


def records():
    out = []
    for k, name in enumerate(NAMES):
        w2c = inv(cam_to_world(k))
        out.append((k + 1, rot_to_quat(w2c[:3, :3]), w2c[:3, 3], 1 + k % 2, name))
    return out


def write_text(d: Path, cams=CAMS, recs=None, pts=None):
    d.mkdir(parents=True, exist_ok=True)
    lines = ["# Camera list with one line of data per camera:"]
    lines += [f"{cid} {m} {W} {H} " + " ".join(repr(float(v)) for v in p) for cid, (m, p) in cams.items()]
    (d / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:"]
    for iid, q, t, cid, name in recs or records():
        lines.append(" ".join(repr(float(v)) for v in [iid, *q, *t]).replace(".0 ", " ", 1) + f" {cid} {name}")
        lines.append("" if iid % 2 else "10.5 20.5 -1 11.0 12.0 3")  # empty 2-D point lines are legal
    (d / "images.txt").write_text("\n".join(lines) + "\n")
    P, rgb = pts if pts is not None else points()
    lines = ["# 3D point list"]
    lines += [f"{i + 1} {x!r} {y!r} {z!r} {r} {g} {b} 0.5 1 0 2 3" for i, ((x, y, z), (r, g, b)) in
              enumerate(zip(P.tolist(), rgb.tolist()))]
    (d / "points3D.txt").write_text("\n".join(lines) + "\n")


def write_binary(d: Path, cams=CAMS, recs=None):
    d.mkdir(parents=True, exist_ok=True)
    b = struct.pack("<Q", len(cams))
    for cid, (m, p) in cams.items():
        b += struct.pack("<iiQQ", cid, MODEL_IDS[m], W, H) + struct.pack(f"<{len(p)}d", *p)
    (d / "cameras.bin").write_bytes(b)
    recs = recs or records()
    b = struct.pack("<Q", len(recs))
    for iid, q, t, cid, name in recs:
        b += struct.pack("<i7di", iid, *q, *t, cid) + name.encode() + b"\0"
        b += struct.pack("<Q", 2) + struct.pack("<ddqddq", 1.5, 2.5, -1, 3.5, 4.5, 7)
    (d / "images.bin").write_bytes(b)
    P, rgb = points()
    b = struct.pack("<Q", len(P))
    for i, (x, c) in enumerate(zip(P, rgb)):
        b += struct.pack("<Q3d3BdQ", i + 1, *x, *c.tolist(), 0.5, 2) + struct.pack("<4i", 1, 0, 2, 5)
    (d / "points3D.bin").write_bytes(b)


def write_project(root: Path, binary=False, **kw):
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in NAMES:
        iio.imwrite(root / "images" / name, rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    (write_binary if binary else write_text)(root / "sparse" / "0", **kw)
    return root


def convert(root, out, **kw):
    args = dict(outlier_neighbors=0, quiet=True, scale=SCALE)
    args.update(kw)
    return convert_colmap(root, out, **args)


@pytest.mark.parametrize("binary", [False, True])
def test_known_values(tmp_path, binary):
    root = write_project(tmp_path / "proj", binary=binary)
    s = convert(root, tmp_path / "out")
    assert len(s.frames) == 6
    # name order a..f; every 4th held out at offset 2 -> "c"
    assert [f.name.split("/")[1] for f in s.frames] == list("abcdef")
    assert [f.name for f in s.frames_by_split("test")] == ["camera_1/c"]
    c1, c2 = s.cameras["camera_1"], s.cameras["camera_2"]
    assert (c1.fx, c1.fy, c1.cx, c1.cy) == (40.0, 41.0, 31.5, 23.5)  # centres move by -0.5
    assert (c2.fx, c2.fy, c2.cx, c2.cy, c2.width, c2.height) == (35.0, 35.0, 30.5, 23.0, W, H)
    orig = {}
    for k, name in enumerate(NAMES):
        T = cam_to_world(k).copy()
        T[:3, 3] *= SCALE
        orig[f"camera_{1 + k % 2}/{name[0]}"] = T
    off = np.mean([T[:3, 3] for T in orig.values()], 0)
    np.testing.assert_allclose(s.world_offset, off, atol=1e-9)
    for f in s.frames:
        np.testing.assert_allclose(f.cam_to_world, rigid(np.eye(3), -off) @ orig[f.name], atol=1e-9)
    xyz, rgb = s.load_points("sfm", with_colors=True)
    P, C = points()
    assert len(xyz) == len(P)
    np.testing.assert_allclose(np.sort(xyz, 0), np.sort(P * SCALE - off, 0).astype(np.float32), atol=1e-4)
    i = np.argmin(np.abs(xyz[:, None] - (P * SCALE - off)[None]).sum(-1), 1)
    np.testing.assert_allclose(rgb, C[i] / 255.0, atol=1e-6)
    rep = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert rep["model_format"] == ("bin" if binary else "txt")
    assert rep["sanity"]["mean_fraction"] > 0.3
    assert s.frames[1].image.endswith(".png") and s.frame("camera_2/b").timestamp == 1.0


def test_distortion_refused_then_undistorted(tmp_path):
    cams = {1: ("SIMPLE_RADIAL", [40.0, 32.0, 24.0, -0.2]), 2: CAMS[2]}
    root = write_project(tmp_path / "p", cams=cams)
    with pytest.raises(SceneError) as e:
        convert(root, tmp_path / "o")
    assert "SIMPLE_RADIAL" in str(e.value) and "--undistort" in str(e.value) and "cameras.txt" in str(e.value)
    s = convert(root, tmp_path / "o", undistort=True)
    assert s.cameras["camera_1"].cx == 31.5
    src = iio.imread(root / "images" / "c.png")
    out = s.load_image(s.frame("camera_1/c"))
    assert out.shape == (H, W, 3) and not np.allclose(out * 255, src, atol=1)
    rep = json.loads((tmp_path / "o" / "conversion_report.json").read_text())
    assert rep["undistorted"] == ["camera_1"]
    root2 = write_project(tmp_path / "p2", binary=True, cams={1: ("OPENCV_FISHEYE", [40, 40, 32, 24, 0.1, 0, 0, 0]),
                                                               2: CAMS[2]})
    with pytest.raises(ConversionError, match="OPENCV_FISHEYE"):
        convert(root2, tmp_path / "o2", undistort=True)


def test_truncated_binary(tmp_path):
    root = write_project(tmp_path / "p", binary=True)
    p = root / "sparse" / "0" / "points3D.bin"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(SceneError) as e:
        convert(root, tmp_path / "o")
    assert str(p) in str(e.value) and "truncated" in str(e.value) and "\n" not in str(e.value)


def test_missing_camera(tmp_path):
    root = write_project(tmp_path / "p", cams={1: CAMS[1]})
    with pytest.raises(SceneError, match="camera 2, which is not in cameras.txt"):
        convert(root, tmp_path / "o")


def test_missing_image_file(tmp_path):
    root = write_project(tmp_path / "p")
    (root / "images" / "d.png").unlink()
    with pytest.raises(SceneError, match="d.png: image is missing"):
        convert(root, tmp_path / "o")


def test_non_rigid_pose(tmp_path):
    recs = records()
    iid, q, t, cid, name = recs[3]
    recs[3] = (iid, q * 1.2, t, cid, name)
    root = write_project(tmp_path / "p", binary=True, recs=recs)
    with pytest.raises(SceneError) as e:
        convert(root, tmp_path / "o")
    assert "images.bin" in str(e.value) and "not rigid" in str(e.value) and "b.png" in str(e.value)


def test_convention_bug_is_caught(tmp_path):
    """cam_to_world written where COLMAP expects world_to_cam fails the sanity check."""
    recs = []
    for k, name in enumerate(NAMES):
        T = cam_to_world(k)
        recs.append((k + 1, rot_to_quat(T[:3, :3]), T[:3, 3], 1 + k % 2, name))
    root = write_project(tmp_path / "p", recs=recs)
    with pytest.raises(ConversionError, match="convention"):
        convert(root, tmp_path / "o")


def test_main_cli(tmp_path, capsys):
    root = write_project(tmp_path / "p")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "up to scale" in capsys.readouterr().out
    assert main([str(root), "--out", str(tmp_path / "o"), "--quiet", "--scale", "2", "--test-every", "3"]) == 0
    (root / "sparse" / "0" / "images.txt").write_text("1 0.5 x\n\n")
    assert main([str(root), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dnmp: error:") and "images.txt" in err

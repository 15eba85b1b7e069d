"""DGP converter: a synthetic DGP scene written by the test (known datum poses,
calibration and LiDAR), corrupt inputs, and the real ../shared/data/tri_dgp_test_scene
(skipped when absent)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _rig import CV_TO_VEHICLE, apply, cylinder_points, inv, nearest_dist, rigid, rot_to_quat, rot_z  # noqa: E402

from dnmp.converters.capture import ConversionError  # noqa: E402
from dnmp.converters.projection import zbuffer_depth  # noqa: E402
from dnmp.converters.dgp import convert_dgp, main  # noqa: E402
from dnmp.data import Camera, SceneError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "tri_dgp_test_scene"

W, H = 64, 48
INTR = {"CAMERA_01": (40.0, 41.0, 31.5, 23.5), "CAMERA_05": (30.0, 30.5, 32.0, 24.0)}
# sensor -> vehicle: a forward camera and one looking left (yaw +90 deg)
EXT = {
    "LIDAR": rigid(np.eye(3), [0.0, 0.0, 1.8]),
    "CAMERA_01": rigid(CV_TO_VEHICLE, [1.5, 0.0, 1.5]),
    "CAMERA_05": rigid(rot_z(np.pi / 2) @ CV_TO_VEHICLE, [1.0, 0.5, 1.5]),
}
WORLD_ORIGIN = np.array([100.0, -2000.0, -10.0])  # DGP worlds are far from zero


def vehicle_pose(i):
    return rigid(rot_z(0.05 * i), WORLD_ORIGIN + [1.2 * i, 0.1 * i, 0.0])


def world_points():
    return cylinder_points(z0=-0.43, centre=WORLD_ORIGIN[:2]) + [0, 0, WORLD_ORIGIN[2]]


def pose_json(T):
    q = rot_to_quat(T[:3, :3])
    return {"rotation": {"qw": q[0], "qx": q[1], "qy": q[2], "qz": q[3]},
            "translation": {"x": T[0, 3], "y": T[1, 3], "z": T[2, 3]}}


def ts(i, extra_us=0):
    return f"2464-11-12T01:04:{10 + i:02d}.{27900 + extra_us:06d}Z"


def write_dgp(root: Path, n=3, distortion=None, quat_scale=1.0):
    sdir = root / "scene_01"
    (sdir / "calibration").mkdir(parents=True)
    names = ["LIDAR", "CAMERA_01", "CAMERA_05"]
    intr = [{"fx": 0, "fy": 0, "cx": 0, "cy": 0, "skew": 0}]
    for c in names[1:]:
        fx, fy, cx, cy = INTR[c]
        intr.append({"fx": fx, "fy": fy, "cx": cx, "cy": cy, "skew": 0.0, **(distortion or {})})
    calib = {"names": names, "intrinsics": intr, "extrinsics": [pose_json(EXT[c]) for c in names]}
    (sdir / "calibration" / "cal0.json").write_text(json.dumps(calib))
    data, samples = [], []
    rng = np.random.default_rng(0)
    Xw = world_points()
    for i in range(n):
        keys = []
        T_l = vehicle_pose(i) @ EXT["LIDAR"]
        Xl = apply(inv(T_l), Xw)
        (sdir / "point_cloud" / "LIDAR").mkdir(parents=True, exist_ok=True)
        np.savez(sdir / "point_cloud" / "LIDAR" / f"{i}.npz", data=np.hstack([Xl, np.ones((len(Xl), 1))]))
        pj = pose_json(T_l)
        if i == 1:
            pj["rotation"]["qw"] *= quat_scale
        data.append({"key": f"l{i}", "id": {"name": "LIDAR", "timestamp": ts(i)},
                     "datum": {"point_cloud": {"filename": f"point_cloud/LIDAR/{i}.npz", "pose": pj,
                                               "point_format": ["X", "Y", "Z", "INTENSITY"]}}})
        keys.append(f"l{i}")
        for c in names[1:]:
            (sdir / "rgb" / c).mkdir(parents=True, exist_ok=True)
            iio.imwrite(sdir / "rgb" / c / f"{i}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
            data.append({"key": f"{c}{i}", "id": {"name": c, "timestamp": ts(i, 100)},
                         "datum": {"image": {"filename": f"rgb/{c}/{i}.png", "width": W, "height": H,
                                             "channels": 3, "pose": pose_json(vehicle_pose(i) @ EXT[c])}}})
            keys.append(f"{c}{i}")
        samples.append({"calibration_key": "cal0", "datum_keys": keys, "id": {"timestamp": ts(i)}})
    (sdir / "scene_abc.json").write_text(json.dumps({"name": "synthetic", "log": "L", "data": data,
                                                     "samples": samples}))
    (root / "scene_dataset_v1.0.json").write_text(json.dumps(
        {"scene_splits": {"0": {"filenames": ["scene_01/scene_abc.json"]}}}))
    return root


def convert(root, out, **kw):
    args = dict(voxel=0.0, outlier_neighbors=0, quiet=True)
    args.update(kw)
    return convert_dgp(root, out, **args)


def test_synthetic_known_values(tmp_path):
    root = write_dgp(tmp_path / "dgp")
    s = convert(root, tmp_path / "out")
    assert len(s.frames) == 6
    # surround rig at 3 instants: the middle instant of every camera is held out
    assert {f.name for f in s.frames_by_split("test")} == {"CAMERA_01/1", "CAMERA_05/1"}
    for c, (fx, fy, cx, cy) in INTR.items():
        cam = s.cameras[c]
        assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == (W, H, fx, fy, cx, cy)
    orig = {f"{c}/{i}": vehicle_pose(i) @ EXT[c] for c in INTR for i in range(3)}
    off = np.mean([T[:3, 3] for T in orig.values()], 0)
    np.testing.assert_allclose(s.world_offset, off, atol=1e-9)
    for f in s.frames:
        np.testing.assert_allclose(f.cam_to_world, rigid(np.eye(3), -off) @ orig[f.name], atol=1e-9)
    # the left camera's optical axis points along the vehicle's +y
    f5 = s.frame("CAMERA_05/0")
    np.testing.assert_allclose(f5.cam_to_world[:3, 2], [0, 1, 0], atol=1e-9)
    assert s.frame("CAMERA_01/2").timestamp == pytest.approx(2.0)
    pts = s.load_points("lidar")
    assert nearest_dist(pts, world_points() - off).max() < 1e-3
    # sparse depth equals the known points z-buffered into the known camera
    f = s.frame("CAMERA_01/2")
    expect = zbuffer_depth(apply(inv(orig["CAMERA_01/2"]), world_points()), s.cameras["CAMERA_01"], 0.5, 80)
    got = s.load_depth(f)
    assert (got > 0).sum() > 100
    np.testing.assert_allclose(got, expect, atol=1 / 256)
    rep = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert rep["sanity"]["mean_fraction"] > 0.3
    assert rep["rig_vs_datum_pose_max_m"] < 1e-6


def test_options(tmp_path):
    root = write_dgp(tmp_path / "dgp", n=4)
    s = convert(root, tmp_path / "o", cameras=["CAMERA_05"], test_every=2, downscale=2, scene="scene_01")
    assert {f.camera for f in s.frames} == {"CAMERA_05"}
    assert [f.split for f in s.frames] == ["train", "test", "train", "test"]
    cam = s.cameras["CAMERA_05"]
    assert (cam.width, cam.height, cam.fx) == (32, 24, 15.0) and cam.cx == pytest.approx((32.0 + 0.5) / 2 - 0.5)
    with pytest.raises(ConversionError, match="unknown camera"):
        convert(root, tmp_path / "o2", cameras=["CAMERA_99"])


def expect_error(fn, path, word):
    with pytest.raises(SceneError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and word in msg, msg


def test_truncated_lidar(tmp_path):
    root = write_dgp(tmp_path / "dgp")
    p = root / "scene_01" / "point_cloud" / "LIDAR" / "1.npz"
    p.write_bytes(p.read_bytes()[:200])
    expect_error(lambda: convert(root, tmp_path / "o"), p, "corrupt")


def test_missing_calibration_key(tmp_path):
    root = write_dgp(tmp_path / "dgp")
    p = root / "scene_01" / "calibration" / "cal0.json"
    c = json.loads(p.read_text())
    i = c["names"].index("CAMERA_05")
    for k in ("names", "intrinsics", "extrinsics"):
        del c[k][i]
    p.write_text(json.dumps(c))
    expect_error(lambda: convert(root, tmp_path / "o"), p, "CAMERA_05")
    p.unlink()
    expect_error(lambda: convert(root, tmp_path / "o"), p, "missing")


def test_datum_table_shorter_than_samples(tmp_path):
    root = write_dgp(tmp_path / "dgp")
    p = root / "scene_01" / "scene_abc.json"
    sj = json.loads(p.read_text())
    sj["data"] = [d for d in sj["data"] if d["key"] != "CAMERA_012"]
    p.write_text(json.dumps(sj))
    expect_error(lambda: convert(root, tmp_path / "o"), p, "CAMERA_012")


def test_non_rigid_pose(tmp_path):
    root = write_dgp(tmp_path / "dgp", quat_scale=1.3)
    expect_error(lambda: convert(root, tmp_path / "o"), root / "scene_01" / "scene_abc.json", "not rigid")


def test_distortion_refused(tmp_path):
    root = write_dgp(tmp_path / "dgp", distortion={"k1": -0.1, "p1": 0.0})
    expect_error(lambda: convert(root, tmp_path / "o"), root / "scene_01" / "calibration" / "cal0.json", "k1")


def test_convention_bug_is_caught(tmp_path):
    """Camera poses written world -> camera instead of camera -> world fail the sanity check."""
    root = write_dgp(tmp_path / "dgp")
    p = root / "scene_01" / "scene_abc.json"
    sj = json.loads(p.read_text())
    for d in sj["data"]:
        if "image" in d["datum"]:
            c, i = d["id"]["name"], int(d["key"][-1])
            d["datum"]["image"]["pose"] = pose_json(inv(vehicle_pose(i) @ EXT[c]))
    p.write_text(json.dumps(sj))
    with pytest.raises(ConversionError, match="convention"):
        convert(root, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_main_cli(tmp_path, capsys):
    root = write_dgp(tmp_path / "dgp")
    assert main([str(root), "--out", str(tmp_path / "o"), "--quiet", "--voxel", "0"]) == 0
    (root / "scene_01" / "point_cloud" / "LIDAR" / "0.npz").write_bytes(b"xx")
    assert main([str(root), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dnmp: error:") and "0.npz" in err


@pytest.mark.skipif(not (REAL / "scene_dataset_v1.0.json").is_file(), reason="../shared/data/tri_dgp_test_scene absent")
def test_real_dgp_scene(tmp_path):
    # outlier removal off and 0.1 m voxels keep this test fast; the figures below hold either way
    s = convert_dgp(REAL, tmp_path / "s2", scene="scene_02", downscale=4, quiet=True, voxel=0.1,
                    outlier_neighbors=0)
    cams = ["CAMERA_01", "CAMERA_05", "CAMERA_06", "CAMERA_07", "CAMERA_08", "CAMERA_09"]
    assert sorted(s.cameras) == cams
    for c in cams:
        assert sum(f.camera == c for f in s.frames) == 3
        assert sum(f.camera == c and f.split == "test" for f in s.frames) == 1
    assert s.cameras["CAMERA_01"].width == 484 and s.cameras["CAMERA_01"].fx == pytest.approx(2181.530254382263 / 4)
    # poses equal the image datums' poses minus world_offset
    sj = json.loads(next((REAL / "scene_02").glob("scene_*.json")).read_text())
    from dnmp.converters.dgp import read_pose

    n = 0
    for d in sj["data"]:
        if "image" in d["datum"]:
            stem = Path(d["datum"]["image"]["filename"]).stem
            T = read_pose(d["datum"]["image"]["pose"], "x", "pose")
            f = s.frame(f"{d['id']['name']}/{stem}")
            np.testing.assert_allclose(f.cam_to_world[:3, :3], T[:3, :3], atol=1e-9)
            np.testing.assert_allclose(f.cam_to_world[:3, 3] + s.world_offset, T[:3, 3], atol=1e-6)
            n += 1
    assert n == 18
    rep = json.loads((tmp_path / "s2" / "conversion_report.json").read_text())
    assert rep["sanity"]["mean_fraction"] > 0.35
    assert rep["rig_vs_datum_pose_max_m"] < 0.1  # README: 5 cm (image vs LiDAR timestamps)
    assert rep["lidar"]["raw"] == 145_319 and rep["lidar"]["written"] > 50_000
    c = np.array([f.camera_centre for f in s.frames if f.camera == "CAMERA_01"])
    assert 2.3 < np.linalg.norm(np.diff(c, axis=0), axis=1).sum() < 2.8  # README: about 2.5 m
    with pytest.raises(ConversionError, match="would get no points"):  # DGP has no other points than LiDAR
        convert_dgp(REAL, tmp_path / "s0", scene=0, downscale=8, quiet=True, lidar=False)
    assert not (tmp_path / "s0").exists()
    s1 = convert_dgp(REAL, tmp_path / "s1", scene=0, downscale=8, quiet=True, voxel=0.1, outlier_neighbors=0)
    assert len(s1.frames) == 9 and sorted(s1.cameras) == ["CAMERA_01", "CAMERA_05", "CAMERA_06"]

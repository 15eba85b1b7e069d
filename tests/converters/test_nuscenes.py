"""nuScenes converter: a synthetic scene in the nuScenes table layout written by
the test (known ego poses, calibrated sensors, .pcd.bin sweeps), options and
corrupt inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _rig import CV_TO_VEHICLE, apply, inv, nearest_dist, rigid, rot_to_quat, rot_z  # noqa: E402

from dnmp.converters.capture import ConversionError  # noqa: E402
from dnmp.converters.projection import zbuffer_depth  # noqa: E402
from dnmp.converters.nuscenes import convert_nuscenes, main  # noqa: E402
from dnmp.data import SceneError  # noqa: E402

W, H = 64, 48
K = {"CAM_FRONT": [[40.0, 0, 31.0], [0, 41.0, 23.5], [0, 0, 1]],
     "CAM_BACK": [[30.0, 0, 32.5], [0, 30.0, 24.0], [0, 0, 1]]}
SENSOR = {  # sensor -> ego
    "CAM_FRONT": rigid(CV_TO_VEHICLE, [1.7, 0.0, 1.5]),
    "CAM_BACK": rigid(rot_z(np.pi) @ CV_TO_VEHICLE, [0.0, 0.0, 1.5]),
    "LIDAR_TOP": rigid(rot_z(-np.pi / 2), [0.9, 0.0, 1.8]),  # nuScenes LiDAR: x right, y forward
}
ORIGIN = np.array([400.0, 1100.0, 0.0])
N = 5  # keyframes


def ego(t):
    """Ego -> global at time t (seconds): driving along x, turning a little."""
    return rigid(rot_z(0.04 * t), ORIGIN + [5.0 * t, 0.3 * t, 0.0])


def world_points():
    """A wall ahead of the drive and one behind it (no ground: a cloud all
    around the cameras would hide a rotated camera from the sanity check)."""
    gy, gz = np.meshgrid(np.arange(-12.0, 12.01, 0.5), np.arange(-0.43, 4.0, 0.5))
    wall = np.stack([np.zeros(gy.size), gy.ravel(), gz.ravel()], 1)
    return np.concatenate([wall + [30.0, 0, 0], wall + [-15.0, 0, 0]]) + ORIGIN


def rec(T):
    return {"translation": T[:3, 3].tolist(), "rotation": rot_to_quat(T[:3, :3]).tolist()}


def write_nuscenes(root: Path, ego_scale=1.0, drop_ego=None, drop_cs=None):
    v = root / "v1.0-mini"
    v.mkdir(parents=True)
    tables = {t: [] for t in ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor", "log")}
    tables["log"].append({"token": "log0", "location": "synthetic-town"})
    for ch in SENSOR:
        tables["sensor"].append({"token": f"s_{ch}", "channel": ch, "modality": "camera" if "CAM" in ch else "lidar"})
        if ch != drop_cs:
            tables["calibrated_sensor"].append({"token": f"cs_{ch}", "sensor_token": f"s_{ch}", **rec(SENSOR[ch]),
                                                "camera_intrinsic": K.get(ch, [])})
    rng = np.random.default_rng(0)
    Xw = world_points()
    stoks = [f"sample{i}" for i in range(N)]
    for i, st in enumerate(stoks):
        tables["sample"].append({"token": st, "timestamp": int(1e6 * 0.5 * i), "scene_token": "sc0",
                                 "prev": stoks[i - 1] if i else "", "next": stoks[i + 1] if i + 1 < N else ""})
        # keyframe per sensor; plus one non-key sweep / image 0.25 s later
        for key, dt in ((True, 0.0), (False, 0.25)):
            if not key and i == N - 1:
                continue
            t = 0.5 * i + dt
            for j, ch in enumerate(SENSOR):
                tt = t + 0.01 * j  # sensors fire at slightly different times: own ego pose each
                tok = f"{ch}_{i}_{int(key)}"
                etok = f"ego_{tok}"
                e = ego(tt)
                r = rec(e)
                if i == 2 and ch == "CAM_FRONT" and key:
                    r["rotation"] = (np.array(r["rotation"]) * ego_scale).tolist()
                if etok != drop_ego:
                    tables["ego_pose"].append({"token": etok, "timestamp": round(tt * 1e6), **r})
                folder = "samples" if key else "sweeps"
                if "CAM" in ch:
                    fn = f"{folder}/{ch}/n0__{ch}__{round(tt * 1e6)}.jpg"
                    (root / fn).parent.mkdir(parents=True, exist_ok=True)
                    iio.imwrite(root / fn, rng.integers(0, 255, (H, W, 3), dtype=np.uint8), quality=95)
                else:
                    fn = f"{folder}/{ch}/n0__{ch}__{round(tt * 1e6)}.pcd.bin"
                    (root / fn).parent.mkdir(parents=True, exist_ok=True)
                    Xl = apply(inv(e @ SENSOR[ch]), Xw)
                    pts = np.hstack([Xl, np.ones((len(Xl), 1)), np.full((len(Xl), 1), 7.0)]).astype("<f4")
                    pts.tofile(root / fn)
                tables["sample_data"].append({
                    "token": tok, "sample_token": st, "ego_pose_token": etok, "calibrated_sensor_token": f"cs_{ch}",
                    "timestamp": round(tt * 1e6), "is_key_frame": key, "filename": fn,
                    "width": W if "CAM" in ch else 0, "height": H if "CAM" in ch else 0,
                    "fileformat": "jpg" if "CAM" in ch else "pcd", "prev": "", "next": ""})
    tables["scene"].append({"token": "sc0", "name": "scene-0001", "log_token": "log0", "nbr_samples": N,
                            "first_sample_token": stoks[0], "last_sample_token": stoks[-1], "description": "synthetic"})
    for t, rows in tables.items():
        (v / f"{t}.json").write_text(json.dumps(rows))
    return root


def convert(root, out, **kw):
    args = dict(voxel=0.0, outlier_neighbors=0, quiet=True)
    args.update(kw)
    return convert_nuscenes(root, out, **args)


def test_known_values(tmp_path):
    root = write_nuscenes(tmp_path / "ns")
    s = convert(root, tmp_path / "out", scene="scene-0001")
    assert len(s.frames) == 2 * N
    assert sorted(f.name.split("/")[0] for f in s.frames_by_split("test")) == ["CAM_BACK", "CAM_FRONT"]
    assert all(abs(f.timestamp - 1.0) < 0.05 for f in s.frames_by_split("test"))  # keyframe 2 of 0..4
    for ch, k in K.items():
        cam = s.cameras[ch]
        assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) == (k[0][0], k[1][1], k[0][2], k[1][2], W, H)
    # timestamps are relative to the first image (CAM_FRONT at t = 0): the pose at that time
    orig = {f.name: ego(f.timestamp) @ SENSOR[f.camera] for f in s.frames}
    assert sorted(round(f.timestamp, 6) for f in s.frames if f.camera == "CAM_BACK") == \
        pytest.approx([0.5 * i + 0.01 for i in range(N)])
    off = np.mean([T[:3, 3] for T in orig.values()], 0)
    np.testing.assert_allclose(s.world_offset, off, atol=1e-9)
    for f in s.frames:
        np.testing.assert_allclose(f.cam_to_world, rigid(np.eye(3), -off) @ orig[f.name], atol=1e-9)
    back = [f for f in s.frames if f.camera == "CAM_BACK"][0]
    np.testing.assert_allclose(back.cam_to_world[:3, 2], [-1, 0, 0], atol=1e-3)  # looks backwards at t=0
    pts = s.load_points("lidar")
    assert nearest_dist(pts, world_points() - off).max() < 1e-3
    # sparse depth of a keyframe image: its sample's sweep z-buffered into the known camera
    f = [f for f in s.frames if f.camera == "CAM_FRONT"][3]
    expect = zbuffer_depth(apply(inv(orig[f.name]), world_points()), s.cameras["CAM_FRONT"], 0.5, 80)
    got = s.load_depth(f)
    assert (got > 0).sum() > 100
    np.testing.assert_allclose(got, expect, atol=1 / 256)
    rep = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert rep["lidar"]["scans"] == 2 * N - 1  # keyframe + intermediate sweeps
    assert rep["sanity"]["mean_fraction"] > 0.3


def test_options(tmp_path):
    root = write_nuscenes(tmp_path / "ns")
    s = convert(root, tmp_path / "a", cameras=["CAM_FRONT"], keyframes_only=False, lidar_sweeps=False,
                test_every=0, downscale=2)
    assert len(s.frames) == 2 * N - 1 and {f.camera for f in s.frames} == {"CAM_FRONT"}
    assert all(f.split == "train" for f in s.frames)
    assert sum(f.depth is not None for f in s.frames) == N  # only keyframes get depth
    assert s.cameras["CAM_FRONT"].width == 32 and s.cameras["CAM_FRONT"].fx == 20.0
    rep = json.loads((tmp_path / "a" / "conversion_report.json").read_text())
    assert rep["lidar"]["scans"] == N
    with pytest.raises(ConversionError, match="no camera 'CAM_FRONT_LEFT'"):
        convert(root, tmp_path / "b", cameras=["CAM_FRONT_LEFT"])
    with pytest.raises(ConversionError, match="no scene named"):
        convert(root, tmp_path / "b", scene="scene-9999")


def expect_error(fn, path, word):
    with pytest.raises(SceneError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and word in msg, msg


def test_truncated_sweep(tmp_path):
    root = write_nuscenes(tmp_path / "ns")
    p = sorted((root / "samples" / "LIDAR_TOP").iterdir())[1]
    p.write_bytes(p.read_bytes()[:-8])
    expect_error(lambda: convert(root, tmp_path / "o"), p, "multiple of 20")


def test_missing_calibrated_sensor(tmp_path):
    root = write_nuscenes(tmp_path / "ns", drop_cs="CAM_BACK")
    expect_error(lambda: convert(root, tmp_path / "o"), root / "v1.0-mini" / "calibrated_sensor.json", "cs_CAM_BACK")


def test_ego_pose_table_short(tmp_path):
    root = write_nuscenes(tmp_path / "ns", drop_ego="ego_CAM_FRONT_3_1")
    expect_error(lambda: convert(root, tmp_path / "o"), root / "v1.0-mini" / "ego_pose.json", "ego_CAM_FRONT_3_1")


def test_non_rigid_ego_pose(tmp_path):
    root = write_nuscenes(tmp_path / "ns", ego_scale=1.25)
    expect_error(lambda: convert(root, tmp_path / "o"), root / "v1.0-mini" / "ego_pose.json", "not rigid")


def test_main_cli(tmp_path, capsys):
    root = write_nuscenes(tmp_path / "ns")
    assert main([str(root), "--out", str(tmp_path / "o"), "--quiet", "--cameras", "CAM_BACK"]) == 0
    (root / "v1.0-mini" / "sensor.json").unlink()
    assert main([str(root), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dnmp: error:") and "sensor.json" in err


def test_convention_bug_is_caught(tmp_path):
    """Camera calibrated_sensor rows written ego -> sensor (inverted) fail the sanity check."""
    root = write_nuscenes(tmp_path / "ns")
    p = root / "v1.0-mini" / "calibrated_sensor.json"
    rows = json.loads(p.read_text())
    for r in rows:
        if r["token"].startswith("cs_CAM"):
            r.update(rec(inv(SENSOR[r["token"][3:]])))
    p.write_text(json.dumps(rows))
    with pytest.raises(ConversionError, match="convention"):
        convert(root, tmp_path / "o")

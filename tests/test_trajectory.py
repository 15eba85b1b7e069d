"""Trajectory generators (dnmp.trajectory): recorded, shifted, interpolated, camera-path JSON."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dnmp.data import load_scene
from dnmp.trajectory import (
    CV_TO_GL, camera_path_json, dataset_views, interpolate_poses, interpolate_views, lane_offset,
    make_trajectory, matrix_to_quaternion, parse_offset, parse_trajectory, quaternion_to_matrix,
    read_camera_path, shift_views, write_camera_path,
)
from _poses import rot_z, rigid as pose  # noqa: E402  (tests/ is on sys.path: conftest.py)

BUNDLED = Path(__file__).resolve().parents[1] / "scenes" / "kitti00"


@pytest.fixture(scope="module")
def kitti():
    if not BUNDLED.is_dir():
        pytest.skip("bundled scene missing")
    return load_scene(BUNDLED)


def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[0] >= 0 else -q
        R = quaternion_to_matrix(q)
        assert np.allclose(R.T @ R, np.eye(3), atol=1e-12) and np.linalg.det(R) == pytest.approx(1.0)
        assert np.allclose(matrix_to_quaternion(R), q, atol=1e-12)
    # a half turn (w = 0) takes the non-trace branch
    assert np.allclose(quaternion_to_matrix(matrix_to_quaternion(rot_z(math.pi))), rot_z(math.pi),
                       atol=1e-12)


def test_zero_shift_is_the_dataset_bit_for_bit(kitti):
    for split in ("test", "all"):
        rec = dataset_views(kitti, split)
        for views in (shift_views(kitti, split, (0.0, 0.0, 0.0)),
                      make_trajectory(kitti, "shift", split=split)[0]):
            assert [v.name for v in views] == [v.name for v in rec]
            for a, b in zip(views, rec):
                assert a.cam_to_world.tobytes() == b.cam_to_world.tobytes()
                assert a.camera == b.camera
    frames = {f.name.replace("/", "_"): f for f in kitti.frames}
    for v in dataset_views(kitti, "all"):  # the recorded poses themselves
        assert v.cam_to_world.tobytes() == frames[v.name].cam_to_world.tobytes()


def test_shift_moves_the_rig_by_the_offset(kitti):
    off = lane_offset((0.1, 0.0, 0.5), lane_shift=2.0, lift=1.5)
    assert off.tolist() == [0.1 - 2.0, -1.5, 0.5]  # left = -x, up = -y (OpenCV axes)
    rec = {v.name: v for v in dataset_views(kitti, "all")}
    moved = shift_views(kitti, "all", off)
    left = {f.timestamp: f for f in kitti.frames if f.camera == "image_2"}
    for v in moved:
        frame = next(f for f in kitti.frames if f.name.replace("/", "_") == v.name)
        d = v.cam_to_world[:3, 3] - rec[v.name].cam_to_world[:3, 3]
        R_rig = left[frame.timestamp].cam_to_world[:3, :3]  # the rig camera (image_2) at this instant
        assert np.allclose(d, R_rig @ off, atol=1e-12)
        assert np.linalg.norm(d) == pytest.approx(np.linalg.norm(off), abs=1e-12)
        assert np.array_equal(v.cam_to_world[:3, :3], rec[v.name].cam_to_world[:3, :3])
    # the stereo pair stays rigid: both cameras of an instant move by the same world vector
    by = {(f.camera, f.timestamp): v for f in kitti.frames for v in moved if v.name == f.name.replace("/", "_")}
    pair = [(by[("image_2", t)], by[("image_3", t)]) for (c, t) in by if c == "image_3"]
    assert pair
    for a, b in pair:
        da = a.cam_to_world[:3, 3] - rec[a.name].cam_to_world[:3, 3]
        db = b.cam_to_world[:3, 3] - rec[b.name].cam_to_world[:3, 3]
        assert np.allclose(da, db, atol=1e-12)
    # KITTI's camera x points right, so a 2 m lane shift to the left lowers x by about 2 m
    lane = shift_views(kitti, "test", lane_offset(lane_shift=2.0))
    for v in lane:
        assert rec[v.name].cam_to_world[0, 3] - v.cam_to_world[0, 3] == pytest.approx(2.0, abs=0.01)


def test_interpolation_passes_through_keyframes_and_is_smooth():
    # a curve: centres on a parabola, yaw growing quadratically, uneven spacing in space
    t = np.arange(6) * 0.1
    keys = np.stack([pose(rot_z(0.3 * ti + 2.0 * ti * ti), [3 * ti, ti * ti * 5, 0.2 * math.sin(ti)])
                     for ti in t])
    at_keys = interpolate_poses(keys, t, t)
    assert at_keys.tobytes() == keys.tobytes()  # the keyframes, bit for bit
    near = interpolate_poses(keys, t, t[1:] - 1e-9)  # and continuous into them
    assert np.abs(near - keys[1:]).max() < 1e-7
    # velocity is continuous across interior keyframes (C2 spline), unlike linear interpolation
    eps = 1e-6
    for tk in t[1:-1]:
        p = interpolate_poses(keys, t, [tk - eps, tk, tk + eps])[:, :3, 3]
        v_left, v_right = (p[1] - p[0]) / eps, (p[2] - p[1]) / eps
        assert np.linalg.norm(v_left - v_right) < 1e-3 * max(1.0, np.linalg.norm(v_left))
        lin_left = (keys[np.searchsorted(t, tk), :3, 3] - keys[np.searchsorted(t, tk) - 1, :3, 3]) / 0.1
        lin_right = (keys[np.searchsorted(t, tk) + 1, :3, 3] - keys[np.searchsorted(t, tk), :3, 3]) / 0.1
        assert np.linalg.norm(lin_left - lin_right) > 0.5  # the kink the spline removes
        # rotation rate continuous too (evenly spaced keyframes: squad is C1)
        R = interpolate_poses(keys, t, [tk - eps, tk, tk + eps])[:, :3, :3]
        w_left = math.atan2((R[0].T @ R[1])[1, 0], (R[0].T @ R[1])[0, 0]) / eps
        w_right = math.atan2((R[1].T @ R[2])[1, 0], (R[1].T @ R[2])[0, 0]) / eps
        assert w_left == pytest.approx(w_right, rel=1e-3)
    dense = interpolate_poses(keys, t, np.linspace(0, 0.5, 101))
    for T in dense:
        assert np.allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-12)


def test_interpolation_is_exact_on_uniform_motion():
    # constant velocity and constant yaw rate: the spline and squad reproduce them exactly
    t = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    keys = np.stack([pose(rot_z(0.5 * ti), [2.0 * ti, -1.0 * ti, 0.3]) for ti in t])
    q = np.array([0.05, 0.123, 0.3999])
    got = interpolate_poses(keys, t, q)
    for g, ti in zip(got, q):
        assert np.allclose(g[:3, 3], [2.0 * ti, -1.0 * ti, 0.3], atol=1e-12)
        assert np.allclose(g[:3, :3], rot_z(0.5 * ti), atol=1e-12)


def test_interpolate_views_sampling(kitti):
    keys = sorted((f for f in kitti.frames if f.camera == "image_2"), key=lambda f: f.timestamp)
    span = keys[-1].timestamp - keys[0].timestamp
    views = interpolate_views(kitti, fps=30)
    assert len(views) == math.floor(span * 30) + 1
    assert [v.name for v in views[:2]] == ["image_2_00000", "image_2_00001"]
    assert views[0].cam_to_world.tobytes() == keys[0].cam_to_world.tobytes()
    assert np.diff([v.time for v in views]) == pytest.approx(np.full(len(views) - 1, 1 / 30))
    fast = interpolate_views(kitti, fps=30, speed=5.0)
    steps = np.linalg.norm(np.diff([v.cam_to_world[:3, 3] for v in fast], axis=0), axis=1)
    assert steps == pytest.approx(np.full(len(steps), 5.0 / 30), rel=1e-3)
    assert len(interpolate_views(kitti, frames=7)) == 7
    assert interpolate_views(kitti, frames=7, downscale=2)[0].camera.width == 620


def test_camera_path_json_round_trip(kitti, tmp_path):
    views = interpolate_views(kitti, fps=30)
    f = write_camera_path(tmp_path / "cam.json", views, fps=30)
    data = json.loads(f.read_text())
    assert data["render_width"] == 1241 and data["render_height"] == 376
    assert len(data["camera_path"][0]["camera_to_world"]) == 16
    back, fps = read_camera_path(f)
    assert fps == 30 and len(back) == len(views)
    for a, b in zip(views, back):
        assert np.abs(a.cam_to_world - b.cam_to_world).max() < 1e-12
        assert b.camera.fy == pytest.approx(a.camera.fy, rel=1e-12)
        assert (b.camera.width, b.camera.height) == (1241, 376)
        assert (b.camera.cx, b.camera.cy) == (1241 / 2 - 0.5, 376 / 2 - 0.5)
    # written again from what was read: identical file
    write_camera_path(tmp_path / "again.json", back, fps=fps)
    assert json.loads((tmp_path / "again.json").read_text())["camera_path"] == data["camera_path"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_camera_path_uses_opengl_axes(tmp_path):
    p = tmp_path / "p.json"
    # nerfstudio's identity camera looks down world -z with y up
    p.write_text(json.dumps({"render_width": 64, "render_height": 48, "fps": 24, "camera_path": [
        {"camera_to_world": np.eye(4).reshape(-1).tolist(), "fov": 90.0, "aspect": 4 / 3}]}))
    (v,), fps = read_camera_path(p)
    assert fps == 24
    assert v.cam_to_world[:3, 2].tolist() == [0.0, 0.0, -1.0]  # OpenCV z (forward)
    assert v.cam_to_world[:3, 1].tolist() == [0.0, -1.0, 0.0]  # OpenCV y (down)
    assert v.camera.fy == pytest.approx(24.0) and v.camera.fx == pytest.approx(24.0)  # 48 / 2 / tan 45
    assert np.array_equal(CV_TO_GL @ CV_TO_GL, np.eye(4))


def bad_path(tmp_path, edit):
    good = {"camera_type": "perspective", "render_width": 64, "render_height": 48, "seconds": 1.0,
            "camera_path": [{"camera_to_world": np.eye(4).reshape(-1).tolist(), "fov": 50.0}]}
    data = edit(json.loads(json.dumps(good)))
    p = tmp_path / "bad.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


@pytest.mark.parametrize("edit, needle", [
    (lambda d: "{not json", "not a JSON file"),
    (lambda d: [1, 2], "JSON object"),
    (lambda d: {k: v for k, v in d.items() if k != "render_width"}, "render_width"),
    (lambda d: {**d, "render_height": -3}, "render_height"),
    (lambda d: {**d, "camera_type": "fisheye"}, "fisheye"),
    (lambda d: {**d, "camera_path": []}, "camera_path"),
    (lambda d: {**d, "camera_path": [{"fov": 50}]}, "camera_path[0]"),
    (lambda d: {**d, "camera_path": [{"camera_to_world": [1, 2, 3], "fov": 50}]}, "16 numbers"),
    (lambda d: {**d, "camera_path": [{"camera_to_world": [float("nan")] * 16, "fov": 50}]}, "NaN"),
    (lambda d: {**d, "camera_path": [{"camera_to_world": np.diag([2, 2, 2, 1.0]).reshape(-1).tolist(),
                                      "fov": 50}]}, "not rigid"),
    (lambda d: {**d, "camera_path": [{"camera_to_world": np.diag([1, 1, -1, 1.0]).reshape(-1).tolist(),
                                      "fov": 50}]}, "not rigid"),  # a reflection
    (lambda d: {**d, "camera_path": [{"camera_to_world": np.eye(4).reshape(-1).tolist(), "fov": 0}]}, "fov"),
    (lambda d: {**d, "fps": "fast"}, "fps"),
])
def test_bad_camera_path_gives_one_line_error(tmp_path, edit, needle):
    p = bad_path(tmp_path, edit)
    with pytest.raises(ValueError) as err:
        read_camera_path(p)
    msg = str(err.value)
    assert needle in msg and str(p) in msg and "\n" not in msg
    with pytest.raises(ValueError, match="cannot read"):
        read_camera_path(tmp_path / "missing.json")


def test_bad_options_give_errors(kitti):
    with pytest.raises(ValueError, match="unknown trajectory 'spiral'"):
        parse_trajectory(["spiral"])
    with pytest.raises(ValueError, match="takes one FILE"):
        parse_trajectory(["path"])
    with pytest.raises(ValueError, match="takes no further value"):
        parse_trajectory(["shift", "x.json"])
    assert parse_trajectory(None) == ("dataset", None)
    assert parse_trajectory(["path", "a.json"]) == ("path", "a.json")
    assert parse_offset("0,-1.5, 2") == (0.0, -1.5, 2.0)
    for bad in ("1,2", "a,b,c", "1,2,nan"):
        with pytest.raises(ValueError, match="--offset"):
            parse_offset(bad)
    with pytest.raises(ValueError, match="use them with --trajectory shift"):
        make_trajectory(kitti, "interpolate", offset=(1.0, 0, 0))
    with pytest.raises(ValueError, match="--speed / --frames"):
        make_trajectory(kitti, "dataset", speed=3.0)
    with pytest.raises(ValueError, match="not both"):
        interpolate_views(kitti, speed=3.0, frames=3)
    with pytest.raises(ValueError, match="--camera 'image_9'"):
        interpolate_views(kitti, camera="image_9")
    with pytest.raises(ValueError, match="at least 2"):
        interpolate_views(kitti, split="test", camera="image_3")  # no held-out right images
    keys = np.stack([np.eye(4), np.eye(4)])
    with pytest.raises(ValueError, match="strictly increasing"):
        interpolate_poses(keys, [0.0, 0.0], [0.0])
    keys[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        interpolate_poses(keys, [0.0, 1.0], [0.5])
    keys[1] = np.eye(4)
    keys[1, :3, :3] *= 1.1
    with pytest.raises(ValueError, match="not rigid"):
        interpolate_poses(keys, [0.0, 1.0], [0.5])


def test_camera_path_json_refuses_mixed_sizes(kitti):
    views = dataset_views(kitti, "all")
    views[1] = dataset_views(kitti, "all", downscale=2)[1]
    with pytest.raises(ValueError, match="one image size"):
        camera_path_json(views, 10)

"""projection_sanity on a surround fixture (a ground plane and a cylinder
around the rig, like a fused surround LiDAR sweep): the in-image fraction
alone accepts rotated cameras; the ground check refuses them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _rig import CV_TO_VEHICLE, cylinder_points, rigid, rot_z  # noqa: E402

from dnmp.converters.capture import ConversionError  # noqa: E402
from dnmp.converters.checks import projection_sanity  # noqa: E402
from dnmp.data import Camera, Frame  # noqa: E402

CAM = Camera(name="cam", width=640, height=480, fx=320.0, fy=320.0, cx=319.5, cy=239.5)
HEIGHT = 1.6  # camera height over the ground, metres


def surround_cloud():
    g = np.arange(-30, 30.01, 0.5)
    X, Y = np.meshgrid(g, g)
    ground = np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], 1)
    ground = ground[np.linalg.norm(ground[:, :2], axis=1) < 15]
    return np.concatenate([ground, cylinder_points(radius=15.0, z0=0.0, z1=4.0, step=0.5)])


def rot_axis(axis: int, deg: float) -> np.ndarray:
    """Rotation by ``deg`` about camera axis 0 (x), 1 (y) or 2 (z)."""
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def rig_frames(cam_rotation=np.eye(3)):
    """Four cameras (front, left, back, right) 1.6 m over the ground, each
    optionally rotated by ``cam_rotation`` in its own (OpenCV) frame."""
    frames = []
    for k, yaw in enumerate((0, 90, 180, 270)):
        R = rot_z(np.radians(yaw)) @ CV_TO_VEHICLE @ cam_rotation
        t = np.array([1.0 * np.cos(np.radians(yaw)), 1.0 * np.sin(np.radians(yaw)), HEIGHT])
        frames.append(Frame(image=f"images/cam/{k}.png", camera="cam", cam_to_world=rigid(R, t), timestamp=float(k),
                            split="train", name=f"cam/{k}"))
    return frames


@pytest.mark.parametrize("axis,deg", [(0, 0), (0, 20), (0, -20), (2, 20), (1, 90)],
                         ids=["level", "pitch20", "pitch-20", "roll20", "yaw90"])
def test_correct_rig_passes(axis, deg):
    """Level cameras pass, and so do cameras mounted up to ~30 deg off level.
    A yaw error (about the camera's own y axis) keeps y pointing down: the
    geometry cannot tell it from a correct camera on a surround cloud."""
    san = projection_sanity(surround_cloud(), rig_frames(rot_axis(axis, deg)), {"cam": CAM}, verbose=False)
    assert san["mean"] > 0.2
    assert all(abs(tilt - abs(deg) % 90) < 3 and dens > 0.25 for _, tilt, dens, _ in san["ground"])


@pytest.mark.parametrize("axis,deg", [(0, 180), (0, -45), (2, 45), (2, 90), (2, -90), (2, 135)],
                         ids=["upside-down", "pitch-up45", "roll45", "roll90", "roll-90", "roll135"])
def test_rotated_camera_fails(axis, deg):
    cloud, frames = surround_cloud(), rig_frames(rot_axis(axis, deg))
    # the in-image fraction alone does not tell these cameras from correct ones
    assert projection_sanity(cloud, frames, {"cam": CAM}, ground=False, verbose=False)["mean"] > 0.2
    with pytest.raises(ConversionError, match="do not stand over the ground") as e:
        projection_sanity(cloud, frames, {"cam": CAM}, verbose=False)
    assert "\n" not in str(e.value) and "convention" in str(e.value)


def test_no_ground_is_not_judged():
    """A cloud with no plane near the cameras (walls far away) gives no verdict."""
    cloud = cylinder_points(radius=15.0, z0=0.0, z1=4.0, step=0.5)
    san = projection_sanity(cloud, rig_frames(rot_axis(0, 180)), {"cam": CAM}, verbose=False)
    assert max(dens for _, _, dens, _ in san["ground"]) < 0.25

"""Helpers for the synthetic multi-sensor converter fixtures (waymo, nuscenes,
dgp, colmap): a surround rig of known poses looking at a known point set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _poses import rigid, rot_z  # noqa: F401  (re-exported for the converter tests)

# OpenCV camera axes (x right, y down, z forward) expressed in a vehicle frame
# (x forward, y left, z up): the rotation of a forward-looking camera.
CV_TO_VEHICLE = np.array([[0, 0, 1.0], [-1, 0, 0], [0, -1, 0]])


def inv(T):
    return rigid(T[:3, :3].T, -T[:3, :3].T @ T[:3, 3])


def apply(T, xyz):
    return xyz @ T[:3, :3].T + T[:3, 3]


def rot_to_quat(R):
    """Rotation matrix -> unit quaternion (w, x, y, z), w >= 0."""
    R = np.asarray(R, np.float64)
    K = np.array([
        [R[0, 0] - R[1, 1] - R[2, 2], R[1, 0] + R[0, 1], R[2, 0] + R[0, 2], R[1, 2] - R[2, 1]],
        [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], R[2, 1] + R[1, 2], R[2, 0] - R[0, 2]],
        [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], R[0, 1] - R[1, 0]],
        [R[1, 2] - R[2, 1], R[2, 0] - R[0, 2], R[0, 1] - R[1, 0], R[0, 0] + R[1, 1] + R[2, 2]],
    ]) / 3.0
    w, V = np.linalg.eigh(K)
    x, y, z, qw = V[:, np.argmax(w)]
    q = np.array([qw, -x, -y, -z])  # this K's eigenvector is the conjugate
    return q if q[0] >= 0 else -q


def cylinder_points(radius=15.0, z0=-0.5, z1=4.0, step=0.5, centre=(0.0, 0.0)):
    """Points on a vertical cylinder around the rig (every camera sees some)."""
    n = int(round(2 * np.pi * radius / step))
    a = np.arange(n) * 2 * np.pi / n
    zs = np.arange(z0, z1 + 1e-9, step)
    A, Z = np.meshgrid(a, zs)
    return np.stack([centre[0] + radius * np.cos(A.ravel()), centre[1] + radius * np.sin(A.ravel()),
                     Z.ravel()], 1)


def nearest_dist(a, b):
    """For each point of a, the distance to the nearest point of b."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return np.sqrt(((a[:, None, :] - b[None]) ** 2).sum(-1)).min(1)


def assert_cli_error(rc, err, out, *words):
    """A converter's ``main`` refused its input: exit 2, one line
    ``dnmp: error: ...`` naming every one of ``words``, no output folder."""
    assert rc == 2, err
    assert err.startswith("dnmp: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    assert not Path(out).exists()

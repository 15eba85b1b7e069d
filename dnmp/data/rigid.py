"""Rigid transforms, the one place for them in dnmp (scene reader and converters).

Conventions (DESIGN.md): float64 4x4 matrices ``[[R, t], [0, 0, 0, 1]]`` in
metres that map points of one frame into another (``cam_to_world``: camera ->
world); points are row vectors [N, 3]; quaternions are Hamilton (w, x, y, z).
"""

from __future__ import annotations

import numpy as np

from dnmp.data.errors import SceneError

RIGID_TOL = 1e-4


def check_rigid(T, where, what: str = "cam_to_world", tol: float = RIGID_TOL,
                orthonormalise: bool = False) -> np.ndarray:
    """T (3x4 or 4x4) as float64 [4, 4], or SceneError naming ``where`` and
    ``what`` when it is not rigid: not numeric, wrong shape, NaN/Inf, last row
    not [0 0 0 1], or |R^T R - I| or |det R - 1| above ``tol``. With
    ``orthonormalise`` the rotation is replaced by its nearest rotation (SVD):
    text files carry ~1e-6 rounding that would otherwise accumulate."""
    try:
        T = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError):
        raise SceneError(where, f"{what} is not a numeric matrix") from None
    if T.shape == (3, 4):
        T = np.vstack([T, [0.0, 0.0, 0.0, 1.0]])
    if T.shape != (4, 4):
        raise SceneError(where, f"{what} must be 4x4, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise SceneError(where, f"{what} contains NaN or Inf")
    if np.abs(T[3] - [0, 0, 0, 1]).max() > tol:
        raise SceneError(where, f"{what} last row is {T[3].tolist()}, expected [0, 0, 0, 1]")
    R = T[:3, :3]
    orth = np.abs(R.T @ R - np.eye(3)).max()
    det = float(np.linalg.det(R))
    if orth > tol or abs(det - 1.0) > tol:
        raise SceneError(
            where,
            f"{what} is not rigid (rotation |R^T R - I| = {orth:.2e}, det = {det:.6f}; "
            f"need orthonormal with det +1 within {tol:g})",
        )
    if not orthonormalise:
        return T
    U, _, Vt = np.linalg.svd(R)  # det R ~ +1 here, so U @ Vt is a rotation
    out = np.eye(4)
    out[:3, :3] = U @ Vt
    out[:3, 3] = T[:3, 3]
    return out


def rigid_inverse(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid float64 [4, 4] (R^T, -R^T t), exact for rigid input."""
    T = np.asarray(T, np.float64)
    out = np.eye(4)
    R = T[:3, :3]
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


def translation(t) -> np.ndarray:
    """float64 [4, 4] translating by ``t`` (3 numbers, metres)."""
    T = np.eye(4)
    T[:3, 3] = np.asarray(t, np.float64).reshape(3)
    return T


def transform(T: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Points [N, 3] mapped by the 4x4 ``T`` (float64 [N, 3])."""
    xyz = np.asarray(xyz, np.float64)
    return xyz @ T[:3, :3].T + T[:3, 3]


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle (degrees, in [0, 180]) of the rotation [3, 3] ``R``; for the angle
    between two rotations A and B pass ``A.T @ B``."""
    c = (np.trace(np.asarray(R, np.float64)) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


def quat_to_rotation(w, x, y, z, where, what: str = "rotation") -> np.ndarray:
    """Rotation matrix float64 [3, 3] of the Hamilton quaternion (w, x, y, z)
    (nuScenes, DGP/DDAD and COLMAP). Not normalised here: a non-unit
    quaternion gives a non-orthonormal matrix, which :func:`check_rigid` then
    refuses. Raises SceneError on non-finite values."""
    q = np.array([w, x, y, z], np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise SceneError(where, f"{what} quaternion is not 4 finite numbers")
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def pose_from_quat(q_wxyz, t, where, what: str = "pose") -> np.ndarray:
    """Rigid float64 [4, 4] from a (w, x, y, z) quaternion and a translation
    (metres), checked and re-orthonormalised by :func:`check_rigid`."""
    T = translation(t)
    T[:3, :3] = quat_to_rotation(*q_wxyz, where=where, what=what)
    return check_rigid(T, where, what, orthonormalise=True)

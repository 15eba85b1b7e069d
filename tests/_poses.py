"""Rotations and rigid transforms for building synthetic poses in tests (float64 numpy).

One place for them: the converter, scene and trajectory tests all build known poses.
"""

from __future__ import annotations

import numpy as np


def rot_x(a: float) -> np.ndarray:
    """[3, 3] rotation by a radians about x (right-handed)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def rot_y(a: float) -> np.ndarray:
    """[3, 3] rotation by a radians about y (right-handed)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def rot_z(a: float) -> np.ndarray:
    """[3, 3] rotation by a radians about z (right-handed)."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def rigid(R, t) -> np.ndarray:
    """[4, 4] transform with rotation R [3, 3] and translation t [3]."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T

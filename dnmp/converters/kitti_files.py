"""Files and calibration shared by the KITTI family (odometry, raw, KITTI-360):
velodyne scans (:func:`read_velodyne`), ``KEY: numbers`` files
(:func:`read_key_values`, :func:`need`), rectified projection matrices
(:func:`camera_from_P`) and the choice of cameras (:func:`select_cameras`).
A velodyne scan is (x forward, y left, z up), metres."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dnmp.converters.capture import ConversionError
from dnmp.data.scene import Camera


def read_velodyne(path: Path) -> np.ndarray:
    """float32 [N, 4] (x, y, z in metres in the scanner frame, reflectance)
    from a KITTI / KITTI-360 ``.bin`` scan (little-endian float32, 4 per point).
    Raises ConversionError when missing, empty, truncated (size not a multiple of
    16 bytes) or holding NaN/Inf coordinates."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(path, "velodyne scan is missing")
    size = path.stat().st_size
    if size % 16 != 0:
        raise ConversionError(
            path, f"truncated or corrupt scan: {size} bytes is not a multiple of 16 (4 float32 per point)"
        )
    if size == 0:
        raise ConversionError(path, "empty scan (0 points): this frame has no LiDAR; leave it out of "
                                    "the frame window (--first/--last) or convert with --no-lidar")
    pts = np.fromfile(path, dtype="<f4").reshape(-1, 4)
    if not np.all(np.isfinite(pts[:, :3])):
        raise ConversionError(path, "scan contains NaN or Inf coordinates")
    return pts


def read_key_values(path: Path, what: str = "calibration file") -> dict:
    """``KEY: v1 v2 ...`` lines -> {KEY: float64 1-D array}. Lines whose values
    are not all numbers (e.g. KITTI raw's ``calib_time: 09-Jan-2012 13:57:47``)
    are kept out of the result; an empty file or one without a single numeric
    key is refused."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(path, f"{what} is missing")
    out = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        key, vals = line.split(":", 1)
        try:
            out[key.strip()] = np.array([float(x) for x in vals.split()], np.float64)
        except ValueError:
            continue  # dates and other text
    if not out:
        raise ConversionError(path, f"{what} has no 'KEY: numbers' lines")
    return out


def need(calib: dict, key: str, size: int, path, purpose: str = "") -> np.ndarray:
    """calib[key] with exactly ``size`` numbers, or a one-line error naming the
    missing key (and what it is needed for)."""
    if key not in calib:
        raise ConversionError(path, f"missing calibration key {key}" + (f" (needed for {purpose})" if purpose else ""))
    v = calib[key]
    if v.size != size:
        raise ConversionError(path, f"{key} has {v.size} numbers, expected {size}")
    return v


def camera_from_P(P: np.ndarray, name: str, width: int, height: int, where, key: str | None = None) -> tuple:
    """(Camera, b) from a rectified projection matrix ``P = K [I | b]`` (3x4).

    ``b`` (metres, float64 [3]) is camera ``name``'s centre offset in the
    reference rectified frame: ``X_name = X_ref + b``. Refuses (ConversionError
    naming ``key``) a non-zero skew, a left 3x3 block that is not
    ``[[fx,0,cx],[0,fy,cy],[0,0,1]]`` (i.e. not rectified) or a non-positive
    focal length."""
    key = key or f"P{name[-1]}"
    intrinsics = P[:, :3]
    scale = max(abs(intrinsics[0, 0]), 1.0)
    if abs(intrinsics[0, 1]) > 1e-6 * scale:
        raise ConversionError(where, f"{key} has non-zero skew {intrinsics[0, 1]:g}; only zero-skew pinhole is supported")
    if np.abs(intrinsics[2] - [0, 0, 1]).max() > 1e-9 or abs(intrinsics[1, 0]) > 1e-6 * scale:
        raise ConversionError(
            where, f"{key} is not a rectified pinhole (left 3x3 must be [[fx,0,cx],[0,fy,cy],[0,0,1]], "
            f"got rows {np.round(intrinsics, 6).tolist()})"
        )
    if not (intrinsics[0, 0] > 0 and intrinsics[1, 1] > 0):
        raise ConversionError(where, f"{key} has non-positive focal length")
    b = np.linalg.solve(intrinsics, P[:, 3])
    cam = Camera(name=name, width=width, height=height, fx=float(intrinsics[0, 0]), fy=float(intrinsics[1, 1]),
                 cx=float(intrinsics[0, 2]), cy=float(intrinsics[1, 2]))
    return cam, b


def select_cameras(cameras: Sequence[str], allowed: Sequence[str], where, refused: dict | None = None) -> list:
    """The chosen cameras, in order; refuses (ConversionError naming
    ``where``) an empty choice, a camera given twice, a camera in ``refused``
    (name -> reason) and one not in ``allowed``."""
    cameras = list(cameras)
    twice = sorted({c for c in cameras if cameras.count(c) > 1})
    if twice:
        raise ConversionError(where, f"camera {', '.join(twice)} given twice in --cameras")
    if not cameras:
        raise ConversionError(where, "no cameras selected")
    for c in cameras:
        if refused and c in refused:
            raise ConversionError(where, refused[c])
        if c not in allowed:
            raise ConversionError(where, f"unknown camera {c!r}; choose from {', '.join(allowed)}")
    return cameras

"""Pinhole projection in the dnmp conventions (DESIGN.md): metres, OpenCV
cameras (x right, y down, z forward), the centre of pixel column u / row v at
image coordinates (u, v): :func:`project`, :func:`in_view_mask`,
:func:`zbuffer_depth` (sparse depth images), :func:`world_to_cam_points`."""

from __future__ import annotations

import numpy as np

from dnmp.data.rigid import rigid_inverse, transform
from dnmp.data.scene import Camera, Frame


def project(xyz_cam: np.ndarray, cam: Camera):
    """Camera-frame points [N, 3] -> (u, v, z) float64 (u, v in pixels; pixel
    centre of column u at u). Points with z <= 0 get u = v = NaN."""
    xyz_cam = np.asarray(xyz_cam, np.float64)
    z = xyz_cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        zs = np.where(z > 0, z, np.nan)
        u = cam.fx * xyz_cam[:, 0] / zs + cam.cx
        v = cam.fy * xyz_cam[:, 1] / zs + cam.cy
    return u, v, z


def in_view_mask(xyz_cam, cam: Camera, near: float = 0.1, far: float = np.inf):
    """Points whose pixel (rounded to the nearest pixel centre) is inside the
    image and whose depth is in (near, far]."""
    u, v, z = project(xyz_cam, cam)
    with np.errstate(invalid="ignore"):
        return (
            (z > near) & (z <= far)
            & (u > -0.5) & (u < cam.width - 0.5)
            & (v > -0.5) & (v < cam.height - 0.5)
        )


def zbuffer_depth(xyz_cam, cam: Camera, near: float = 0.1, far: float = np.inf) -> np.ndarray:
    """Sparse depth image float32 [H, W] (0 = none): each pixel keeps the
    nearest point projecting into it (z-buffer)."""
    m = in_view_mask(xyz_cam, cam, near, far)
    u, v, z = project(np.asarray(xyz_cam)[m], cam)
    ui = np.floor(u + 0.5).astype(np.int64)
    vi = np.floor(v + 0.5).astype(np.int64)
    ui = np.clip(ui, 0, cam.width - 1)
    vi = np.clip(vi, 0, cam.height - 1)
    out = np.full((cam.height, cam.width), np.inf)
    np.minimum.at(out, (vi, ui), z)
    out[~np.isfinite(out)] = 0
    return out.astype(np.float32)


def world_to_cam_points(frame: Frame, xyz_world):
    """World points [N, 3] in ``frame``'s camera frame (float64 [N, 3])."""
    return transform(rigid_inverse(frame.cam_to_world), xyz_world)

"""Point-cloud filtering: :func:`clean_points` (open3d voxel down-sampling +
statistical outlier removal) and :func:`crop_to_views` (points some frame sees)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dnmp.converters.projection import in_view_mask, world_to_cam_points
from dnmp.data.scene import Frame


def clean_points(
    xyz: np.ndarray,
    rgb: np.ndarray | None = None,
    voxel: float = 0.05,
    nb_neighbors: int = 20,
    std_ratio: float = 2.0,
):
    """open3d voxel down-sampling (``voxel`` metres; 0 = off) then statistical
    outlier removal (``nb_neighbors`` = 0 = off). Returns (xyz float32, rgb
    float32 in [0,1] or None)."""
    import open3d as o3d

    if len(xyz) == 0:
        return np.zeros((0, 3), np.float32), (None if rgb is None else np.zeros((0, 3), np.float32))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(xyz, np.float64)))
    if rgb is not None:
        pcd.colors = o3d.utility.Vector3dVector(np.asarray(rgb, np.float64))
    if voxel and voxel > 0:
        pcd = pcd.voxel_down_sample(voxel)
    if nb_neighbors and len(pcd.points) > nb_neighbors:
        pcd, _ = pcd.remove_statistical_outlier(nb_neighbors=nb_neighbors, std_ratio=std_ratio)
    out = np.asarray(pcd.points, np.float32)
    col = np.asarray(pcd.colors, np.float32) if rgb is not None else None
    return out, col


def crop_to_views(xyz_world, frames: Sequence[Frame], cameras: dict, max_depth: float,
                  near: float = 0.5) -> np.ndarray:
    """Boolean mask of points seen (inside the image, depth in (near, max_depth])
    by at least one frame. Points nobody sees are useless to a renderer."""
    keep = np.zeros(len(xyz_world), bool)
    for f in frames:
        keep |= in_view_mask(world_to_cam_points(f, xyz_world), cameras[f.camera], near, max_depth)
    return keep

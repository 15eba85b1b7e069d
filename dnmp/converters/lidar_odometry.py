"""LiDAR odometry for drives without recorded poses (``--poses lidar``):
chained point-to-plane ICP (:func:`icp_poses`), poses for a sensor rigidly
mounted with the scanner (:func:`lidar_odometry`) and the drift against
recorded poses (:func:`pose_errors`, :func:`report_drift`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dnmp.converters.capture import ConversionError
from dnmp.converters.kitti_files import read_velodyne
from dnmp.converters.report import logger
from dnmp.data.rigid import rigid_inverse, rotation_angle_deg


def icp_poses(
    scans: Sequence[np.ndarray],
    voxel: float = 0.2,
    max_distance: float = 0.5,
    min_fitness: float = 0.3,
    warn_fitness: float = 0.6,
    min_range: float = 2.5,
    where="lidar poses",
    quiet: bool = False,
):
    """Scan-to-scan LiDAR odometry: poses of every scan in the frame of the
    first one, by chaining open3d point-to-plane ICP between consecutive scans.

    ``scans``: list of [N_k, 3] points (metres) in each scan's own frame.
    Each pair is registered coarse to fine (voxel 2x/1x ``voxel``, correspondence
    distance 2x/1x ``max_distance``), initialised with the previous pair's
    relative motion (constant velocity). Returns (poses: list of float64 4x4,
    scan_k -> scan_0, the first the identity; stats: {"pairs": [(k, fitness,
    inlier_rmse)], "mean_fitness", "min_fitness", "mean_rmse", "max_rmse"}).
    Fitness is the fraction of scan k's points with a correspondence within
    ``max_distance`` in scan k-1. Raises ConversionError when a pair's fitness
    is below ``min_fitness`` (registration failed: the chained poses would be
    wrong from there on); prints a warning below ``warn_fitness``."""
    import open3d as o3d

    reg = o3d.pipelines.registration

    def prep(xyz, vs):
        xyz = np.asarray(xyz, np.float64)
        xyz = xyz[np.linalg.norm(xyz, axis=1) > min_range]  # the car itself
        p = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz)).voxel_down_sample(vs)
        p.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3 * vs, max_nn=15))
        return p

    poses = [np.eye(4)]
    pairs = []
    motion = np.eye(4)
    levels = ((2 * voxel, 2 * max_distance), (voxel, max_distance))
    clouds = {}
    for k in range(1, len(scans)):
        T = motion
        for vs, dist in levels:
            for j in (k - 1, k):
                if (j, vs) not in clouds:
                    clouds[(j, vs)] = prep(scans[j], vs)
            src, dst = clouds[(k, vs)], clouds[(k - 1, vs)]
            res = reg.registration_icp(src, dst, dist, T, reg.TransformationEstimationPointToPlane(),
                                       reg.ICPConvergenceCriteria(max_iteration=50))
            T = np.asarray(res.transformation).copy()
        for key in [key for key in clouds if key[0] < k - 1]:
            del clouds[key]
        fitness, rmse = float(res.fitness), float(res.inlier_rmse)
        pairs.append((k, fitness, rmse))
        if fitness < min_fitness:
            raise ConversionError(
                where, f"LiDAR registration failed between scans {k - 1} and {k}: ICP fitness {fitness:.2f} "
                f"< {min_fitness:g} (too little overlap or a degenerate scene); use recorded poses"
            )
        motion = T
        poses.append(poses[-1] @ T)
    fit = [p[1] for p in pairs]
    rms = [p[2] for p in pairs]
    stats = {
        "pairs": pairs,
        "mean_fitness": float(np.mean(fit)) if fit else 1.0,
        "min_fitness": float(np.min(fit)) if fit else 1.0,
        "mean_rmse": float(np.mean(rms)) if rms else 0.0,
        "max_rmse": float(np.max(rms)) if rms else 0.0,
    }
    if not quiet:
        print(f"lidar poses: {len(pairs)} ICP pairs, fitness mean {stats['mean_fitness']:.3f} "
              f"min {stats['min_fitness']:.3f}, inlier RMSE mean {stats['mean_rmse']:.3f} m "
              f"max {stats['max_rmse']:.3f} m")
    if fit and min(fit) < warn_fitness:
        k = pairs[int(np.argmin(fit))][0]
        print(f"warning: {where}: weak LiDAR registration between scans {k - 1} and {k} "
              f"(fitness {min(fit):.2f}); the estimated poses may drift")
    return poses, stats


def pose_errors(estimated: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> dict:
    """Drift of ``estimated`` poses against ``reference`` ones (lists of 4x4,
    same frames), both first expressed relative to their own first pose.
    Returns {"translation_m": per-frame |t_est - t_ref| (metres),
    "rotation_deg": per-frame angle of R_est^T R_ref (degrees), "max_translation_m",
    "max_rotation_deg", "final_drift_percent": final translation error over
    the reference's travelled distance * 100}."""
    e0, r0 = rigid_inverse(estimated[0]), rigid_inverse(reference[0])
    te, re_ = [], []
    for E, R in zip(estimated, reference):
        E, R = e0 @ E, r0 @ R
        te.append(float(np.linalg.norm(E[:3, 3] - R[:3, 3])))
        re_.append(rotation_angle_deg(E[:3, :3].T @ R[:3, :3]))
    c = np.array([r[:3, 3] for r in reference])
    dist = float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum()) if len(c) > 1 else 0.0
    return {
        "translation_m": te, "rotation_deg": re_,
        "max_translation_m": max(te), "max_rotation_deg": max(re_),
        "final_drift_percent": 100 * te[-1] / dist if dist > 0 else 0.0,
    }


def lidar_odometry(scan_paths: Sequence[Path], to_ref: np.ndarray, from_ref: np.ndarray, what: str, where,
                   icp_voxel: float = 0.2, icp_max_distance: float = 0.5, min_icp_fitness: float = 0.3,
                   quiet: bool = False):
    """``--poses lidar``: poses from chained ICP of the scans (:func:`icp_poses`)
    expressed for a reference sensor rigidly mounted with the scanner:
    ``to_ref @ V_k @ from_ref`` (``to_ref``: scanner -> reference, ``from_ref``
    its inverse), so the world is the reference at the first scan. ``what``
    names the converter in the progress line. Returns (poses: list of 4x4,
    stats for the report)."""
    logger(quiet)(f"{what}: estimating poses from {len(scan_paths)} scans (ICP)")
    V, stats = icp_poses([read_velodyne(p)[:, :3] for p in scan_paths], icp_voxel, icp_max_distance,
                         min_icp_fitness, where=where, quiet=quiet)
    return [to_ref @ Vk @ from_ref for Vk in V], stats


def report_drift(estimated: Sequence[np.ndarray], reference: Sequence[np.ndarray], label: str, stats: dict,
                 key: str, quiet: bool = False) -> dict:
    """:func:`pose_errors` of LiDAR poses against recorded ones, stored as
    ``stats[key]`` and printed naming the reference ``label``."""
    err = pose_errors(estimated, reference)
    stats[key] = err
    logger(quiet)(f"lidar poses vs {label}: max translation error {err['max_translation_m']:.3f} m, max rotation "
                  f"error {err['max_rotation_deg']:.3f} deg, final drift {err['final_drift_percent']:.2f}% of "
                  "the distance")
    return err

"""Steps shared by the dataset converters.

Everything here works in the dnmp conventions (DESIGN.md): metres, OpenCV
cameras (x right, y down, z forward), ``cam_to_world`` rigid 4x4, pixel centre
of column u / row v at image coordinates (u, v).

- rigid transforms: :func:`rigid_inverse`, :func:`make_rigid`
- projection: :func:`project`, :func:`zbuffer_depth`, :func:`in_view_mask`
- point clouds: :func:`clean_points` (open3d voxel down-sampling + statistical
  outlier removal), :func:`crop_to_views`
- checks: :func:`projection_sanity`
- output steps: :func:`recentre` (``world_offset``), :func:`output_cameras`,
  :func:`write_frame_depth` (a frame's sparse depth from its own scan),
  :func:`write_lidar_cloud` (crop to the views, filter, write)
- output: :func:`write_scene` (scene.json + a check by reading it back),
  :func:`print_summary`, :func:`write_overview` (top-down picture),
  :func:`finish_scene` (summary + overview + conversion_report.json)
- atomicity: :func:`convert_atomically` (staging folder renamed into place)
- planning: :func:`training_estimate` (expected memory and time of ``dnmp
  train`` on the scene being converted, printed before the heavy work)
- images: :func:`read_image_native`, :func:`as_rgb8`; option checks:
  :func:`check_downscale`; progress and logging: :func:`progress`, :func:`logger`
- command line: :func:`run_cli` (one-line errors, exit 2)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dnmp.data.scene import (
    Camera,
    Frame,
    PointCloud,
    SceneError,
    downscale_camera,
    load_scene,
    write_depth_png,
    write_ply_points,
    write_scene_json,
)


class ConversionError(SceneError):
    """A converter's input is unsupported or broken (one-line message naming
    the file)."""


# ----------------------------------------------------------------------------
# Images, option checks, progress
# ----------------------------------------------------------------------------


def read_image_native(path) -> np.ndarray:
    """The decoded image as stored (uint8 [H, W] or [H, W, C]); refuses a
    missing or unreadable file and other bit depths (ConversionError naming it)."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise ConversionError(path, "image is missing")
    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:
        raise ConversionError(path, f"corrupt or unreadable image ({type(e).__name__})") from None
    if img.dtype != np.uint8:
        raise ConversionError(path, f"expected an 8-bit image, got {img.dtype}")
    return img


def as_rgb8(img: np.ndarray, where) -> np.ndarray:
    """HxW or HxWxC uint8 -> contiguous uint8 [H, W, 3] (grey repeated, alpha
    dropped); other dtypes raise ConversionError naming ``where``."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        raise ConversionError(where, f"expected an 8-bit image, got {img.dtype}")
    return np.ascontiguousarray(img)


def check_downscale(downscale: float, where) -> None:
    if not downscale >= 1:
        raise ConversionError(where, f"downscale must be >= 1, got {downscale}")


def progress(it, quiet: bool, **kw):
    """``tqdm(it, **kw)``, or ``it`` itself when quiet."""
    if quiet:
        return it
    from tqdm import tqdm

    return tqdm(it, **kw)


def logger(quiet: bool) -> Callable:
    """``print``, or a function that prints nothing when quiet."""
    return (lambda *a: None) if quiet else print


# ----------------------------------------------------------------------------
# Rigid transforms
# ----------------------------------------------------------------------------


def rigid_inverse(T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, np.float64)
    out = np.eye(4)
    R = T[:3, :3]
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


def translation(t) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = np.asarray(t, np.float64).reshape(3)
    return T


def make_rigid(T, where, what: str = "pose", tol: float = 1e-4) -> np.ndarray:
    """Return T (3x4 or 4x4) as an exactly rigid float64 4x4: rotations within
    ``tol`` of orthonormal (det +1) are re-orthonormalised by SVD (text files
    carry ~1e-6 rounding); anything further off is refused with ConversionError."""
    T = np.asarray(T, np.float64)
    if T.shape == (3, 4):
        T = np.vstack([T, [0, 0, 0, 1.0]])
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ConversionError(where, f"{what} is not a finite 3x4/4x4 matrix")
    R = T[:3, :3]
    orth = np.abs(R.T @ R - np.eye(3)).max()
    det = np.linalg.det(R)
    if orth > tol or abs(det - 1) > tol:
        raise ConversionError(
            where, f"{what} is not rigid (|R^T R - I| = {orth:.2e}, det = {det:.6f}; tolerance {tol:g})"
        )
    U, _, Vt = np.linalg.svd(R)
    R2 = U @ Vt
    if np.linalg.det(R2) < 0:  # cannot happen when det ~ +1, kept for safety
        U[:, -1] *= -1
        R2 = U @ Vt
    out = np.eye(4)
    out[:3, :3] = R2
    out[:3, 3] = T[:3, 3]
    return out


def transform(T: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to [N, 3] points (float64 math)."""
    xyz = np.asarray(xyz, np.float64)
    return xyz @ T[:3, :3].T + T[:3, 3]


# ----------------------------------------------------------------------------
# Projection
# ----------------------------------------------------------------------------


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
    return transform(rigid_inverse(frame.cam_to_world), xyz_world)


# ----------------------------------------------------------------------------
# Point clouds
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# Sanity check
# ----------------------------------------------------------------------------


def _sphere_directions(n: int = 256) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere (Fibonacci), plus the six
    axis directions."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    a = np.pi * (1 + 5 ** 0.5) * k
    r = np.sqrt(1 - z * z)
    return np.concatenate([np.eye(3), -np.eye(3), np.stack([r * np.cos(a), r * np.sin(a), z], 1)])


_DIRECTIONS = _sphere_directions()


def _slab_density(p: np.ndarray, dirs: np.ndarray, lo: float, hi: float, band: float) -> np.ndarray:
    """For each direction of ``dirs`` [D, 3], the fraction of ``p`` in the
    densest slab ``band`` thick perpendicular to it, ``lo`` to ``hi`` along it."""
    step = band / 2
    nb = int(np.ceil((hi - lo) / step))
    b = np.floor((p @ dirs.T - lo) / step).astype(np.int64)  # [N, D]
    ok = (b >= 0) & (b < nb)
    idx = (np.arange(len(dirs))[None, :] * nb + b)[ok]
    h = np.bincount(idx, minlength=len(dirs) * nb).reshape(len(dirs), nb)
    return (h[:, :-1] + h[:, 1:]).max(1) / len(p)


def _cone(d: np.ndarray, max_deg: float = 10.0, rings: int = 5, per_ring: int = 16) -> np.ndarray:
    """Unit directions within ``max_deg`` of ``d`` (``d`` first)."""
    u = np.cross(d, [1.0, 0, 0] if abs(d[0]) < 0.9 else [0, 1.0, 0])
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    out = [d]
    for r in range(1, rings + 1):
        t = np.radians(max_deg * r / rings)
        for a in np.arange(per_ring) * 2 * np.pi / per_ring:
            out.append(np.cos(t) * d + np.sin(t) * (np.cos(a) * u + np.sin(a) * v))
    return np.array(out)


def ground_plane(xyz_cam: np.ndarray, radius: float = 12.0, lo: float = 0.3, hi: float = 4.0,
                 band: float = 0.4, max_points: int = 20000) -> tuple:
    """Where the ground is, seen from a camera: over directions d (~260 over
    the sphere, then refined within 10 degrees of the best), the fraction of
    the points within ``radius`` metres that lie in the densest slab ``band``
    metres thick perpendicular to d, ``lo`` to ``hi`` metres along d (a floor
    the camera stands over is such a slab). Returns (the densest direction,
    camera frame unit [3]; its density; the density along camera +y, which is
    "down" in OpenCV). Without nearby points: (+y, 0, 0)."""
    p = np.asarray(xyz_cam, np.float64)
    p = p[np.linalg.norm(p, axis=1) <= radius]
    if len(p) > max_points:
        p = p[:: int(np.ceil(len(p) / max_points))]
    if not len(p):
        return np.array([0, 1.0, 0]), 0.0, 0.0
    dens = _slab_density(p, _DIRECTIONS, lo, hi, band)
    local = _cone(_DIRECTIONS[int(np.argmax(dens))])
    ld = _slab_density(p, local, lo, hi, band)
    best = int(np.argmax(ld))
    return local[best], float(ld[best]), float(dens[1])


def projection_sanity(
    xyz_world: np.ndarray,
    frames: Sequence[Frame],
    cameras: dict,
    max_depth: float = 80.0,
    near: float = 0.5,
    radius: float | None = None,
    min_fraction: float = 0.2,
    where="projection check",
    verbose: bool = True,
    ground: bool = True,
    min_ground: float = 0.25,
    max_tilt: float = 35.0,
) -> dict:
    """Project a world-frame cloud into ``frames`` and measure, per frame, the
    fraction of the points near and in front of the camera (camera z in
    (near, max_depth] and within ``radius`` of the camera centre, default
    max_depth) that land inside the image, plus their median depth.

    A correct forward-facing camera over a fused drive cloud sees a large part
    of what is in front of it; a convention bug (inverted pose, wrong
    extrinsic, transposed rotation) sends most points out of the image or
    behind the camera. Raises ConversionError when the mean fraction is below
    ``min_fraction`` or no point is seen at a plausible depth.

    When the points surround the camera (surround LiDAR) that fraction barely
    tells a correct camera from a rotated one, so with ``ground`` (metric
    LiDAR clouds) each frame also finds the ground (:func:`ground_plane`):
    when the densest plane 0.3-4 m from the camera holds at least
    ``min_ground`` of the points within 12 m and its direction is more than
    ``max_tilt`` degrees from camera +y (OpenCV y points down), the camera is
    upside down, rolled or pitched, and ConversionError is raised. Clouds
    without such a plane (no ground near the cameras) are not judged. A yaw
    error (rotation about the camera's own y axis) keeps +y pointing down and
    cannot be seen from the geometry alone.
    Returns {"per_frame": [(name, fraction, n_in_image, median_depth)], "mean": float,
    "ground": [(name, angle of the densest plane from +y in degrees, its density,
    density along +y)]}.
    """
    radius = max_depth if radius is None else radius
    xyz_world = np.asarray(xyz_world, np.float64)
    per, grounds, bad_ground = [], [], []
    for f in frames:
        cam = cameras[f.camera]
        pc = world_to_cam_points(f, xyz_world)
        if ground:
            d, dens, below = ground_plane(pc)
            tilt = float(np.degrees(np.arccos(np.clip(d[1], -1, 1))))
            grounds.append((f.name, tilt, dens, below))
            if dens >= min_ground and tilt > max_tilt:
                bad_ground.append(grounds[-1])
        near_pts = (np.linalg.norm(pc, axis=1) <= radius) & (pc[:, 2] > near) & (pc[:, 2] <= max_depth)
        n_front = int(near_pts.sum())
        inimg = in_view_mask(pc, cam, near, max_depth) & near_pts
        n_in = int(inimg.sum())
        frac = n_in / n_front if n_front else 0.0
        med = float(np.median(pc[inimg, 2])) if n_in else float("nan")
        per.append((f.name, frac, n_in, med))
        if verbose:
            print(f"  sanity {f.name}: {n_in}/{n_front} points in front land in the image "
                  f"({100 * frac:.1f}%), median depth {med:.1f} m")
    mean = float(np.mean([p[1] for p in per])) if per else 0.0
    if not per or mean < min_fraction or any(p[2] == 0 for p in per):
        raise ConversionError(
            where,
            f"only {100 * mean:.1f}% of the points in front of the cameras project into the images "
            f"(expected >= {100 * min_fraction:.0f}%): pose/extrinsic convention bug or wrong calibration",
        )
    if bad_ground:
        name, tilt, dens, below = bad_ground[0]
        raise ConversionError(
            where,
            f"{len(bad_ground)} of {len(frames)} cameras do not stand over the ground: in {name} the densest "
            f"plane near the camera ({100 * dens:.0f}% of the points within 12 m) lies {tilt:.0f} deg from camera "
            f"+y (down; expected <= {max_tilt:g} deg): rotated camera, pose/extrinsic convention bug or wrong "
            "calibration",
        )
    return {"per_frame": per, "mean": mean, "ground": grounds}


def scan_agreement(
    frames: Sequence[Frame],
    cameras: dict,
    own: Sequence[np.ndarray],
    others: Sequence[np.ndarray],
    max_depth: float = 80.0,
    rel_tol: float = 0.05,
    warn_below: float = 0.7,
    fail_below: float = 0.3,
    where="scan agreement check",
    verbose: bool = True,
    what: str = "scans",
) -> dict:
    """Multi-scan pose check: for each frame, z-buffer its own scan (``own[k]``,
    world points) and all the other scans (``others[k]``) into it, and measure
    the fraction of pixels seen by both whose depths agree within ``rel_tol``.
    Correct poses give ~0.9 on KITTI; inverted or wrong poses put the other
    scans' surfaces at other depths. Prints a warning below ``warn_below`` and
    raises ConversionError when the mean is below ``fail_below``. ``what`` names
    the clouds in the printed lines (e.g. "stereo pairs")."""
    per = []
    for f, a, b in zip(frames, own, others):
        cam = cameras[f.camera]
        da = zbuffer_depth(world_to_cam_points(f, a), cam, 0.5, max_depth)
        db = zbuffer_depth(world_to_cam_points(f, b), cam, 0.5, max_depth)
        m = (da > 0) & (db > 0)
        rel = np.abs(db[m] - da[m]) / da[m]
        frac = float(np.mean(rel < rel_tol)) if m.any() else 0.0
        med = float(np.median(rel)) if m.any() else float("nan")
        per.append((f.name, frac, int(m.sum()), med))
        if verbose:
            print(f"  {what} agree {f.name}: {100 * frac:.1f}% of {int(m.sum())} shared pixels within "
                  f"{100 * rel_tol:.0f}% (median {100 * med:.1f}%)")
    mean = float(np.mean([p[1] for p in per])) if per else 0.0
    if per and mean < fail_below:
        raise ConversionError(
            where, f"the scans disagree: only {100 * mean:.1f}% of the shared pixels have depths within "
            f"{100 * rel_tol:.0f}% (expected >= {100 * fail_below:.0f}%): poses inverted, wrong or in another convention",
        )
    if per and mean < warn_below:
        print(f"warning: {where}: only {100 * mean:.1f}% of shared pixels agree between scans; "
              "the poses look inaccurate (for KITTI 00 frames 0-14 the official GT is known to be off)")
    return {"per_frame": per, "mean": mean}


# ----------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------


def write_points(root, rel_path: str, kind: str, xyz, rgb=None) -> PointCloud:
    write_ply_points(Path(root) / rel_path, xyz, rgb)
    return PointCloud(path=rel_path, kind=kind, root=Path(root))


def recentre(centres) -> tuple:
    """(world_offset, shift): the mean of the camera ``centres`` [N, 3] and the
    4x4 translation by minus it that takes dataset coordinates to scene ones."""
    world_offset = np.mean(np.asarray(centres, np.float64), axis=0)
    return world_offset, translation(-world_offset)


# Smallest written image side (pixels): below it a frame holds too few pixels to train on, and a
# large --downscale is far more likely a typo (e.g. 300 for 3) than a wish.
MIN_IMAGE_SIDE = 16


def output_cameras(cameras: dict, downscale: float, where="--downscale") -> dict:
    """name -> Camera of the written images (``downscale_camera`` unless 1).
    Raises ConversionError (naming ``where``) when a camera's image would be
    smaller than MIN_IMAGE_SIDE pixels on a side."""
    out = {c: downscale_camera(cam, downscale) if downscale != 1 else cam for c, cam in cameras.items()}
    for c, cam in out.items():
        if min(cam.width, cam.height) < MIN_IMAGE_SIDE:
            full = cameras[c]
            most = min(full.width, full.height) / MIN_IMAGE_SIDE
            raise ConversionError(where, f"--downscale {downscale:g} would write {c} images of {cam.width}x"
                                  f"{cam.height} pixels (at least {MIN_IMAGE_SIDE} per side needed; "
                                  f"use --downscale <= {math.floor(most * 100) / 100:g})")
    return out


def write_frame_depth(root, frame: Frame, xyz_world, cam: Camera, max_depth: float, stem: str) -> None:
    """Z-buffer world points (the frame's own scan, scene coordinates) into
    ``depth/<camera>/<stem>.png`` and set ``frame.depth``."""
    d = zbuffer_depth(world_to_cam_points(frame, xyz_world), cam, 0.5, max_depth)
    frame.depth = f"depth/{frame.camera}/{stem}.png"
    write_depth_png(Path(root) / frame.depth, d)


def write_lidar_cloud(root, fused, frames: Sequence[Frame], cameras: dict, max_depth: float, voxel: float,
                      outlier_neighbors: int) -> tuple:
    """``points/lidar.ply``: the fused scans (scene coordinates) cropped to
    what ``frames`` see within ``max_depth`` (:func:`crop_to_views`), then
    voxel down-sampled and outlier filtered (:func:`clean_points`). Returns
    (PointCloud, points in view, points written)."""
    keep = crop_to_views(fused, frames, cameras, max_depth)
    xyz, _ = clean_points(fused[keep], voxel=voxel, nb_neighbors=outlier_neighbors)
    return write_points(root, "points/lidar.ply", "lidar", xyz), int(keep.sum()), len(xyz)


def write_scene(root, name, source, world_offset, cameras, frames, point_clouds):
    """Write scene.json and read the scene back through the validating reader."""
    write_scene_json(root, name, source, world_offset, cameras, frames, point_clouds)
    return load_scene(root)


def travelled_distance(frames: Sequence[Frame], camera: str | None = None) -> float:
    fs = [f for f in frames if camera is None or f.camera == camera]
    fs = sorted(fs, key=lambda f: f.timestamp)
    c = np.array([f.camera_centre for f in fs])
    return float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum()) if len(c) > 1 else 0.0


def print_summary(scene, ref_camera: str | None = None) -> dict:
    """Print and return frames per camera and split, points per kind, extent,
    travelled distance and size on disk."""
    info = {"frames": {}, "points": {}}
    for cname in scene.cameras:
        for split in ("train", "test"):
            n = sum(1 for f in scene.frames if f.camera == cname and f.split == split)
            info["frames"][f"{cname}/{split}"] = n
    print(f"scene {scene.name!r}")
    print("  frames: " + ", ".join(f"{k} {v}" for k, v in info["frames"].items()))
    all_pts = []
    for pc in scene.point_clouds:
        pts = scene.load_points(pc.kind)
        info["points"][pc.kind] = len(pts)
        all_pts.append(pts)
    print("  points: " + (", ".join(f"{k} {v}" for k, v in info["points"].items()) or "none"))
    if all_pts:
        pts = np.concatenate(all_pts)
        lo, hi = pts.min(0).astype(np.float64), pts.max(0).astype(np.float64)
        info["extent"] = (np.round(lo, 3).tolist(), np.round(hi, 3).tolist())
        print(f"  extent (scene coords, m): min {np.round(lo, 2).tolist()} max {np.round(hi, 2).tolist()} "
              f"size {np.round(hi - lo, 2).tolist()}")
    ref = ref_camera or next(iter(scene.cameras))
    info["travelled"] = travelled_distance(scene.frames, ref)
    print(f"  travelled ({ref}): {info['travelled']:.2f} m; world_offset "
          f"{np.round(scene.world_offset, 3).tolist()}")
    size = sum(p.stat().st_size for p in Path(scene.root).rglob("*") if p.is_file())
    info["bytes"] = size
    print(f"  size on disk: {size / 1e6:.1f} MB")
    return info


def write_overview(scene, path, size: int = 900, max_points: int = 200_000) -> Path:
    """Draw a top-down picture of the scene (PNG, ``size`` x ``size`` pixels):
    points (grey, coloured by height), camera centres along the trajectory and
    each camera's viewing direction as an arrow (train cyan, test orange), and a
    10 m scale bar. "Up" is estimated as minus the mean camera y axis (driving
    cameras are mounted roughly level, DESIGN.md's cameras have y down), so the
    picture works whatever the dataset's world axes are.
    """
    import cv2

    frames = list(scene.frames)
    if not frames:
        raise ConversionError(scene.root, "scene has no frames to draw")
    c2w = np.stack([f.cam_to_world for f in frames])
    up = -c2w[:, :3, 1].mean(0)
    up /= max(np.linalg.norm(up), 1e-12)
    # Horizontal axes: the mean forward direction, made orthogonal to up.
    fwd = c2w[:, :3, 2].mean(0)
    fwd = fwd - up * (fwd @ up)
    if np.linalg.norm(fwd) < 1e-6:
        fwd = np.cross(up, [1.0, 0, 0]) if abs(up[0]) < 0.9 else np.cross(up, [0, 1.0, 0])
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    pts = [scene.load_points(pc.kind) for pc in scene.point_clouds]
    pts = np.concatenate(pts).astype(np.float64) if pts else np.zeros((0, 3))
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(0).choice(len(pts), max_points, replace=False)]
    centres = c2w[:, :3, 3]
    xy = lambda p: np.stack([p @ right, p @ fwd], -1)
    all_xy = np.concatenate([xy(centres), xy(pts)]) if len(pts) else xy(centres)
    lo, hi = np.percentile(all_xy, 1, axis=0), np.percentile(all_xy, 99, axis=0)
    lo = np.minimum(lo, xy(centres).min(0)) - 2
    hi = np.maximum(hi, xy(centres).max(0)) + 2
    scale = (size - 40) / max(float((hi - lo).max()), 1e-6)

    def to_px(p2):
        q = (p2 - lo) * scale + 20
        return np.stack([q[:, 0], size - q[:, 1]], -1)  # forward is up in the picture

    img = np.full((size, size, 3), 255, np.uint8)
    if len(pts):
        q = np.round(to_px(xy(pts))).astype(int)
        h = pts @ up
        hn = np.clip((h - np.percentile(h, 2)) / max(np.ptp(np.percentile(h, [2, 98])), 1e-6), 0, 1)
        col = (200 - 160 * hn).astype(np.uint8)
        ok = (q[:, 0] >= 0) & (q[:, 0] < size) & (q[:, 1] >= 0) & (q[:, 1] < size)
        img[q[ok, 1], q[ok, 0]] = col[ok, None]
    arrow = max(1.5, 0.04 * float((hi - lo).max()))
    for f, T in zip(frames, c2w):
        a = to_px(xy(T[None, :3, 3]))[0]
        b = to_px(xy(T[None, :3, 3] + arrow * T[None, :3, 2]))[0]
        color = (0, 140, 255) if f.split == "test" else (200, 160, 0)  # BGR for cv2
        cv2.arrowedLine(img, tuple(int(x) for x in a), tuple(int(x) for x in b), color, 2, tipLength=0.3)
    bar = 10 * scale
    cv2.line(img, (20, size - 15), (int(20 + bar), size - 15), (0, 0, 0), 2)
    cv2.putText(img, "10 m", (int(25 + bar), size - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, f"{scene.name}: train (blue) / test (orange) cameras", (20, 20),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise ConversionError(path, "could not write the overview picture")
    return path


def finish_scene(scene, report: dict, quiet: bool = False, ref_camera: str | None = None) -> dict:
    """Last step of every converter: print the summary (unless quiet), draw
    ``overview.png`` and write ``conversion_report.json`` into the scene folder.
    Returns the summary dict."""
    info = print_summary(scene, ref_camera) if not quiet else {}
    overview = write_overview(scene, Path(scene.root) / "overview.png")
    if not quiet:
        print(f"  overview picture: {overview.name} in the scene folder (top-down: points, cameras)")
    report = dict(report)
    report["summary"] = info
    with open(Path(scene.root) / "conversion_report.json", "w") as fh:
        json.dump(report, fh, indent=1, default=float)
        fh.write("\n")
    return info


def convert_atomically(out, overwrite: bool, convert_into: Callable[[Path], object]):
    """Run ``convert_into(staging)`` into a hidden sibling folder of ``out`` and
    rename it into place only when it succeeded, so a failed or interrupted
    conversion leaves no half-written scene (and an existing scene intact
    until the new one is complete). Refuses a non-empty ``out`` unless
    ``overwrite``, and never overwrites a folder that is not a dnmp scene.
    Returns the loaded Scene."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            what = "output folder exists and is not empty" if out.is_dir() else "output path is an existing file"
            raise ConversionError(out, f"{what} (use --overwrite to replace a dnmp scene)")
        if not (out / "scene.json").is_file():
            raise ConversionError(out, "refusing to overwrite a non-empty folder that is not a dnmp scene")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        convert_into(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return load_scene(out)


def run_cli(fn: Callable[[], object]) -> int:
    """Run a converter's work for its ``main``: SceneError/ConversionError (and
    other ValueErrors, which our readers raise for bad input) become one line
    ``dnmp: error: ...`` on stderr and exit status 2."""
    try:
        fn()
    except ValueError as e:
        print(f"dnmp: error: {e}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------
# Expected training cost
# ----------------------------------------------------------------------------

# Constants of :func:`training_estimate`: `dnmp train` with the default TrainConfig on the
# 2-core CPU machine the README's figures come from. Converters must not import dnmp.train
# (layering), so the few settings involved are restated here; if those defaults change, these
# go stale but stay the right order of magnitude (it is an estimate).
EST_BASE_BYTES = 0.45e9  # resident python + torch + open3d + dnmp before any data (measured 0.41 GB)
EST_CACHE_PIXELS = 6_000_000  # TrainConfig.cache_pixels: at most this many training pixels cached
EST_BYTES_PER_CACHED_PIXEL = 75  # cached fragments of one pixel (K = 4 + 2 layers; train/frame_pool.py)
EST_BYTES_PER_PRIMITIVE = 19_000  # 42 vertices x 32 float32 features (5.4 KB) + 2 Adam moments (10.8 KB)
#                                   + 80 faces (1.9 KB int64) + vertices, latent. Measured: the bundled
#                                   scene's geometry.pt is 141 MB for 25,959 primitives (5.4 KB each),
#                                   with the moments a radiance checkpoint 0.42 GB (16.2 KB each)
# Primitives (0.25 m fine + 1.0 m coarse voxels) grow with the metres driven, plus what the
# first frames see ahead: kitti_gray_51 (stereo points to 25 m) has 40.7k over 51.8 m, the
# bundled scene (LiDAR to 80 m + stereo) 26.0k over 6.7 m.
EST_PRIMITIVES_PER_METRE = 750
EST_PRIMITIVES_AHEAD = {"stereo": 2_000, "lidar": 20_000}
EST_RENDER_BYTES_PER_PIXEL = 890  # peak of rendering one frame (dnmp profile: 0.85 MiB per 1k px)
EST_BLOCK_FRAMES, EST_BLOCK_OVERLAP = 80, 8  # TrainConfig.block_frames / block_overlap (instants)
EST_RADIANCE_SECONDS = 4000 / 5.5  # TrainConfig.steps (4,000) at ~5.5 steps/s, per block
EST_GEOMETRY_SECONDS = 25.0  # geometry stage: 300 steps of 8 windows per scale (~75 ms each) ...
EST_RASTER_SECONDS_PER_MPX = 0.7  # ... + 3 visibility refreshes of every training frame, and the
#                                     caching of the training pixels (one rasterization each)
EST_RENDER_SECONDS_PER_MPX = 6.5  # a full render (dnmp profile: 6.1 ms per 1k px) of held-out frames


def training_estimate(images: Sequence[tuple], left_centres, lidar: bool = True) -> dict:
    """Expected peak memory and wall time of ``dnmp train`` (default settings)
    on a scene, from what a converter knows before its heavy work: the output
    images, the trajectory and whether there is LiDAR. An estimate from the
    constants above (``EST_*``, each explained there), not a measurement.

    images: [(pixels of the output image, split "train" | "test")];
    left_centres: [N, 3] camera centres of one camera (metres), one per instant,
    in drive order; lidar: LiDAR points (80 m) or stereo points only (25 m).
    A drive of more than EST_BLOCK_FRAMES instants trains as overlapping blocks,
    one after the other: memory is that of one block, time the sum.
    Memory = base + the block's primitives (EST_PRIMITIVES_AHEAD[kind] +
    EST_PRIMITIVES_PER_METRE * metres, EST_BYTES_PER_PRIMITIVE each) + the
    larger of the pixel cache (min(training pixels, EST_CACHE_PIXELS) *
    EST_BYTES_PER_CACHED_PIXEL) and one held-out render. Time per block =
    geometry stage + rasterizing its training pixels 4 times (3 visibility
    refreshes, the cache) + the radiance steps; plus rendering the held-out frames.
    Returns {"train_pixels", "test_pixels", "travelled_m", "blocks",
    "primitives" (of one block), "memory_gb", "cache_gb", "primitives_gb",
    "minutes", "line"} where "line" is the one line a converter prints.
    """
    train_px = sum(int(n) for n, split in images if split == "train")
    test_px = [int(n) for n, split in images if split == "test"]
    c = np.asarray(left_centres, np.float64).reshape(-1, 3)
    travelled = float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum()) if len(c) > 1 else 0.0
    n = max(1, len(c))
    step = EST_BLOCK_FRAMES - EST_BLOCK_OVERLAP
    blocks = 1 if n <= EST_BLOCK_FRAMES else int(np.ceil((n - EST_BLOCK_OVERLAP) / step))
    share = min(1.0, EST_BLOCK_FRAMES / n)  # one block's part of the drive
    prims = EST_PRIMITIVES_AHEAD["lidar" if lidar else "stereo"] + EST_PRIMITIVES_PER_METRE * travelled * share
    block_px = train_px * share
    cache = min(block_px, EST_CACHE_PIXELS) * EST_BYTES_PER_CACHED_PIXEL
    render = max(test_px, default=0) * EST_RENDER_BYTES_PER_PIXEL
    memory = EST_BASE_BYTES + prims * EST_BYTES_PER_PRIMITIVE + max(cache, render)
    per_block = EST_GEOMETRY_SECONDS + EST_RADIANCE_SECONDS + 4 * EST_RASTER_SECONDS_PER_MPX * block_px / 1e6
    seconds = blocks * per_block + EST_RENDER_SECONDS_PER_MPX * sum(test_px) / 1e6
    out = {"train_pixels": train_px, "test_pixels": sum(test_px), "travelled_m": round(travelled, 2),
           "blocks": blocks, "primitives": int(round(prims, -3)), "memory_gb": round(memory / 1e9, 2),
           "cache_gb": round(cache / 1e9, 2), "primitives_gb": round(prims * EST_BYTES_PER_PRIMITIVE / 1e9, 2),
           "minutes": round(seconds / 60, 1)}
    per = f" per block of {EST_BLOCK_FRAMES} frames ({blocks} blocks)" if blocks > 1 else ""
    out["line"] = (f"expected training (dnmp train, default settings; an estimate): peak memory "
                   f"~{out['memory_gb']:.1f} GB{per} (pixel cache {out['cache_gb']:.2f} GB of "
                   f"{train_px / 1e6:.1f}M training pixels, ~{out['primitives'] / 1e3:.0f}k primitives "
                   f"{out['primitives_gb']:.2f} GB), time ~{out['minutes']:.0f} min for {travelled:.0f} m "
                   f"({len(test_px)} held-out renders included)")
    return out


# ----------------------------------------------------------------------------
# Shared by the multi-sensor converters (waymo, nuscenes, dgp, colmap)
# ----------------------------------------------------------------------------


def quat_to_rotation(w, x, y, z, where, what: str = "rotation") -> np.ndarray:
    """Rotation matrix float64 [3, 3] of the Hamilton quaternion (w, x, y, z)
    (the convention of nuScenes, DGP/DDAD and COLMAP). The quaternion is not
    normalised here: a non-unit one gives a non-orthonormal matrix, which
    :func:`make_rigid` then refuses (or re-orthonormalises when it is only
    rounding). Raises ConversionError on non-finite values."""
    q = np.array([w, x, y, z], np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ConversionError(where, f"{what} quaternion is not 4 finite numbers")
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def pose_from_quat(q_wxyz, t, where, what: str = "pose") -> np.ndarray:
    """Rigid float64 4x4 from a (w, x, y, z) quaternion and a translation
    (metres), checked by :func:`make_rigid` (non-unit quaternions refused)."""
    T = np.eye(4)
    T[:3, :3] = quat_to_rotation(*q_wxyz, where=where, what=what)
    T[:3, 3] = np.asarray(t, np.float64).reshape(3)
    return make_rigid(T, where, what)


def undistort_image(img: np.ndarray, cam: Camera, coeffs) -> np.ndarray:
    """Remove lens distortion with OpenCV (``cv2.undistort``), keeping the
    pinhole intrinsics ``cam`` (OpenCV pixel-centre convention) for the output.
    ``coeffs``: OpenCV order (k1, k2, p1, p2[, k3[, k4, k5, k6]])."""
    import cv2

    K = np.array([[cam.fx, 0, cam.cx], [0, cam.fy, cam.cy], [0, 0, 1.0]])
    return cv2.undistort(img, K, np.asarray(coeffs, np.float64))


def every_nth_split(n_items: int, every: int, offset: int | None = None) -> list:
    """Split labels for items in order: every ``every``-th item is "test"
    (positions offset, offset + every, ...; default offset every // 2, so
    held-out items sit between training ones), 0 = all "train"."""
    if every <= 0:
        return ["train"] * n_items
    if every == 1:
        raise ValueError("test split every 1 would hold out every frame; use >= 2 (or 0 for none)")
    off = every // 2 if offset is None else offset
    return ["test" if i % every == off % every else "train" for i in range(n_items)]

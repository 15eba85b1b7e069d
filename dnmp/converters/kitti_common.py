"""What the KITTI-family converters (odometry, raw, KITTI-360) share.

- readers: :func:`read_velodyne` (``.bin`` scans), :func:`read_image`,
  :func:`read_key_values` (``KEY: numbers`` calibration files),
  :func:`camera_from_P` (rectified projection matrix -> pinhole + offset)
- the DNMP stereo protocol: :func:`stereo_plan` (even frames train on both
  cameras, odd frames are held out on the left one); the frame choice:
  :func:`frame_window` (``--window START:LEN``) and :func:`stride_frames`
  (``--stride N``)
- dense stereo: :func:`stereo_points` (OpenCV SGBM, left-right checked)
- LiDAR odometry: :func:`icp_poses` (open3d point-to-plane ICP, chained) and
  :func:`pose_errors` (drift against ground truth)
- the output pipeline every KITTI converter ends with: :func:`write_drive_scene`
  (images, per-frame sparse LiDAR depth, fused LiDAR, SGBM points and per-frame
  stereo depth, projection and scan-agreement checks, scene.json, summary,
  overview, report)
- the steps every KITTI converter starts with: :func:`select_cameras`,
  :func:`stereo_pair_of`, :func:`lidar_odometry` (``--poses lidar``) and
  :func:`convert_drive_atomically`
- :func:`add_drive_options`: the command-line options they all take.

Conventions (DESIGN.md): metres, OpenCV cameras (x right, y down, z forward),
``cam_to_world`` rigid 4x4; a velodyne scan is (x forward, y left, z up).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dnmp.converters.common import (  # noqa: F401  (read_image_native: re-exported)
    ConversionError,
    as_rgb8,
    check_downscale,
    clean_points,
    convert_atomically,
    finish_scene,
    logger,
    output_cameras,
    progress,
    projection_sanity,
    read_image_native,
    recentre,
    rigid_inverse,
    scan_agreement,
    training_estimate,
    transform,
    world_to_cam_points,
    write_frame_depth,
    write_lidar_cloud,
    write_points,
    write_scene,
    zbuffer_depth,
)
from dnmp.data.scene import Camera, Frame, downscale_image, write_depth_png


# ----------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------


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


def read_image(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] (grey repeated to 3 channels, alpha dropped)."""
    return as_rgb8(read_image_native(path), Path(path))


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
    K = P[:, :3]
    scale = max(abs(K[0, 0]), 1.0)
    if abs(K[0, 1]) > 1e-6 * scale:
        raise ConversionError(where, f"{key} has non-zero skew {K[0, 1]:g}; only zero-skew pinhole is supported")
    if np.abs(K[2] - [0, 0, 1]).max() > 1e-9 or abs(K[1, 0]) > 1e-6 * scale:
        raise ConversionError(
            where, f"{key} is not a rectified pinhole (left 3x3 must be [[fx,0,cx],[0,fy,cy],[0,0,1]], "
            f"got rows {np.round(K, 6).tolist()})"
        )
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ConversionError(where, f"{key} has non-positive focal length")
    b = np.linalg.solve(K, P[:, 3])
    cam = Camera(name=name, width=width, height=height, fx=float(K[0, 0]), fy=float(K[1, 1]),
                 cx=float(K[0, 2]), cy=float(K[1, 2]))
    return cam, b


def select_cameras(cameras: Sequence[str], allowed: Sequence[str], downscale: float, where,
                   refused: dict | None = None) -> list:
    """The chosen cameras, in order; refuses (ConversionError naming
    ``where``) an empty choice, a camera given twice, a camera in ``refused``
    (name -> reason), one not in ``allowed`` and a downscale below 1."""
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
    check_downscale(downscale, where)
    return cameras


def stereo_pair_of(pairs: Sequence[tuple], cameras: Sequence[str], full_cams: dict, offsets: dict, where,
                   stereo: bool = True):
    """(left, right, baseline) of the first of ``pairs`` whose two cameras are
    both chosen (checked by :func:`check_rectified_pair`), or None (also when
    ``stereo`` is off)."""
    pair = next(((l, r) for l, r in pairs if l in cameras and r in cameras), None)
    if not (pair and stereo):
        return None
    l, r = pair
    return (l, r, check_rectified_pair(full_cams[l], full_cams[r], offsets[l], offsets[r], where))


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


def convert_drive_atomically(into: Callable, source, out, overwrite: bool, options: dict):
    """``convert_<format>`` of a KITTI-family converter: refuses non-positive
    depth ranges and a ``stride`` below 1, turns ``window`` ("START:LEN",
    :func:`frame_window`) into ``first``/``last``, then runs
    ``into(source, staging, **options)`` through
    :func:`dnmp.converters.common.convert_atomically`. Returns the Scene."""
    out = Path(out)
    options = dict(options)
    if not options.get("max_depth", 80.0) > 0 or not options.get("stereo_max_depth", 25.0) > 0:
        raise ConversionError(out, "--max-depth and --stereo-max-depth must be > 0")
    stride = options.get("stride", 1)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ConversionError(source, f"--stride must be an integer >= 1 (keep every Nth frame), got {stride!r}")
    window = options.pop("window", None)
    if window is not None:
        if options.get("first") is not None or options.get("last") is not None:
            raise ConversionError(source, "--window sets the frame range; do not also give --first/--last")
        options["first"], options["last"] = frame_window(window, source)
    return convert_atomically(out, overwrite, lambda staging: into(source, staging, **options))


# ----------------------------------------------------------------------------
# Split
# ----------------------------------------------------------------------------


def frame_window(window: str, where) -> tuple:
    """``--window START:LEN`` -> (first, last), inclusive: LEN source frames
    from frame START (e.g. "715:80" is frames 715..794, one of the DNMP paper's
    80-frame KITTI-360 windows). Raises ConversionError (naming ``where``) for
    anything else; a bare number is a ``--preset`` window (kitti360 only)."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(window))
    if not m:
        hint = " (a bare window number needs --preset, kitti360 only)" if str(window).strip().isdigit() else ""
        raise ConversionError(where, f"--window must be START:LEN (frame numbers, e.g. 715:80), got {window!r}{hint}")
    start, length = int(m.group(1)), int(m.group(2))
    if length < 1:
        raise ConversionError(where, f"--window {window}: LEN must be >= 1")
    return start, start + length - 1


def stride_frames(indices: Sequence[int], stride: int) -> list:
    """Every ``stride``-th of ``indices`` (in order, starting with the first):
    ``--stride N`` keeps one frame in N before the split (so the held-out
    frames sit between training frames N apart)."""
    return list(indices)[::stride]


def stereo_plan(indices: Sequence[int], cameras: Sequence[str], held_out_cam: str,
                parity_origin: int | None = None) -> list:
    """The DNMP protocol for a stereo forward drive (DESIGN.md): a frame trains
    on every camera when it is even and is held out on ``held_out_cam`` only
    when it is odd (other cameras of odd frames are not used). Even/odd is the
    frame's position in ``indices`` (default: alternate along the kept frames,
    which is also what a ``--stride`` needs), or, with ``parity_origin``, of
    ``i - parity_origin`` (KITTI-360: DNMP's own parity of the frame index).
    Returns [(i, camera, "train" | "test")] in frame order."""
    plan = []
    for pos, i in enumerate(indices):
        train = ((i - parity_origin) if parity_origin is not None else pos) % 2 == 0
        for c in cameras:
            if train or c == held_out_cam:
                plan.append((i, c, "train" if train else "test"))
    return plan


# ----------------------------------------------------------------------------
# Stereo
# ----------------------------------------------------------------------------


def stereo_points(
    left: np.ndarray,
    right: np.ndarray,
    cam: Camera,
    baseline: float,
    max_depth: float = 25.0,
    min_depth: float = 2.0,
    block_size: int = 5,
    lr_tol: float = 1.0,
    texture_threshold: float = 2.0,
):
    """Dense stereo on a rectified pair with OpenCV StereoSGBM.

    Computes the left disparity and the right one (by flipping both images),
    keeps pixels whose disparities agree within ``lr_tol`` px, whose local
    grey-level std (5x5) is at least ``texture_threshold`` and whose depth
    z = fx * baseline / d is in [min_depth, max_depth]. Returns (xyz in the
    left camera frame float64 [N, 3], rgb uint8 [N, 3], stats dict)."""
    import cv2

    gl = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY)
    gr = cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)
    fb = cam.fx * baseline
    num_disp = int(min(256, math.ceil(fb / min_depth / 16.0) * 16))
    num_disp = max(num_disp, 16)
    bs = block_size
    sgbm = cv2.StereoSGBM_create(
        minDisparity=0, numDisparities=num_disp, blockSize=bs,
        P1=8 * bs * bs, P2=32 * bs * bs, disp12MaxDiff=-1, uniquenessRatio=10,
        speckleWindowSize=100, speckleRange=2, preFilterCap=63, mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    )
    dl = sgbm.compute(gl, gr).astype(np.float32) / 16.0
    dr = sgbm.compute(np.ascontiguousarray(gr[:, ::-1]), np.ascontiguousarray(gl[:, ::-1]))
    dr = dr[:, ::-1].astype(np.float32) / 16.0
    h, w = dl.shape
    vv, uu = np.mgrid[0:h, 0:w]
    valid = dl > 0
    ur = np.round(uu - dl).astype(np.int64)
    valid &= (ur >= 0) & (ur < w)
    urc = np.clip(ur, 0, w - 1)
    dr_at = dr[vv, urc]
    n_sgbm = int(valid.sum())
    valid &= (dr_at > 0) & (np.abs(dl - dr_at) <= lr_tol)
    n_lr = int(valid.sum())
    if texture_threshold > 0:
        g = gl.astype(np.float32)
        mu = cv2.blur(g, (5, 5))
        var = cv2.blur(g * g, (5, 5)) - mu * mu
        valid &= np.sqrt(np.maximum(var, 0)) >= texture_threshold
    with np.errstate(divide="ignore"):
        z = np.where(dl > 0, fb / np.maximum(dl, 1e-6), 0)
    valid &= (z >= min_depth) & (z <= max_depth)
    u, v, z = uu[valid], vv[valid], z[valid]
    x = (u - cam.cx) / cam.fx * z
    y = (v - cam.cy) / cam.fy * z
    xyz = np.stack([x, y, z], 1).astype(np.float64)
    rgb = left[valid]
    stats = {"sgbm": n_sgbm, "lr_consistent": n_lr, "kept": int(valid.sum()), "num_disparities": num_disp}
    return xyz, rgb, stats


# ----------------------------------------------------------------------------
# LiDAR odometry
# ----------------------------------------------------------------------------


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
        c = (np.trace(E[:3, :3].T @ R[:3, :3]) - 1) / 2
        re_.append(float(np.degrees(np.arccos(np.clip(c, -1, 1)))))
    c = np.array([r[:3, 3] for r in reference])
    dist = float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum()) if len(c) > 1 else 0.0
    return {
        "translation_m": te, "rotation_deg": re_,
        "max_translation_m": max(te), "max_rotation_deg": max(re_),
        "final_drift_percent": 100 * te[-1] / dist if dist > 0 else 0.0,
    }


# ----------------------------------------------------------------------------
# The output pipeline
# ----------------------------------------------------------------------------


@dataclass
class PlannedImage:
    """One output image: frame index, camera name, split, pose in the source's
    world (original coordinates, before recentring), source image path,
    timestamp (seconds, relative to the window's first frame)."""

    index: int
    camera: str
    split: str
    cam_to_world: np.ndarray
    source: Path
    timestamp: float


def write_drive_scene(
    out: Path,
    *,
    plan: Sequence[PlannedImage],
    cameras: dict,
    indices: Sequence[int],
    held_out_cam: str,
    digits: int,
    name: str,
    source: dict,
    report: dict,
    pose_path,
    calib_path,
    scans: Callable[[int], tuple] | None = None,
    extra_points: np.ndarray | None = None,
    stereo_pair: tuple | None = None,
    source_pair: Callable[[int], tuple | None] | None = None,
    downscale: float = 1.0,
    max_depth: float = 80.0,
    depth: bool = True,
    stereo: bool = True,
    stereo_max_depth: float = 25.0,
    voxel: float = 0.05,
    outlier_neighbors: int = 20,
    sanity: bool = True,
    min_sanity_fraction: float = 0.2,
    quiet: bool = False,
):
    """Write a KITTI-family drive into the (empty, staging) folder ``out``.

    ``plan``: the output images (:class:`PlannedImage`, poses in original
    coordinates); ``cameras``: name -> full-resolution :class:`Camera`;
    ``indices``: the window's frame indices (LiDAR scans); ``scans(i)`` ->
    (path of scan i, 4x4 scanner -> world original), or None for no LiDAR;
    ``extra_points``: world (original) points to fuse with the scans (e.g.
    KITTI-360's accumulated clouds); ``stereo_pair``: (left, right, baseline m)
    of a rectified pair for SGBM points of train frames, or None;
    ``source_pair(i)``: the pair of any source frame i (also those a stride
    skips) for the no-LiDAR pose check, see :func:`_stereo_cloud`.

    Steps: print the expected training memory and time
    (:func:`dnmp.converters.common.training_estimate`); recentre on the mean
    camera centre (``world_offset``); write images (byte copies of 8-bit PNGs
    at downscale 1; single-channel sources stay single-channel and their
    camera gets ``channels`` 1) and ``depth/<cam>/<frame>.png`` (each frame's
    own scan, z-buffered); check the fused LiDAR with :func:`projection_sanity`
    (un-cropped) and :func:`scan_agreement`; write ``points/lidar.ply``
    (cropped to what frames see within ``max_depth``, voxel + outlier
    filtered), ``points/stereo.ply`` and, with ``depth``, each training
    stereo frame's ``depth_stereo/<cam>/<frame>.png`` (:func:`_stereo_cloud`);
    then scene.json, the summary, ``overview.png`` and
    ``conversion_report.json``. Raises ConversionError on broken input or a
    failed check. Returns the Scene.
    """
    import imageio.v3 as iio

    log = logger(quiet)
    out = Path(out)
    out_cams = output_cameras(cameras, downscale)
    world_offset, shift = recentre([p.cam_to_world[:3, 3] for p in plan])
    fmt = f"{{:0{digits}d}}"
    estimate = training_estimate(
        [(out_cams[p.camera].width * out_cams[p.camera].height, p.split) for p in plan],
        [p.cam_to_world[:3, 3] for p in plan if p.camera == held_out_cam],
        lidar=scans is not None or extra_points is not None)
    log(estimate["line"])

    frames, images_full = [], {}
    by_index = {}
    channels = {}  # camera -> 1 (grayscale) or 3, from its first image
    for p in progress(plan, quiet, desc="images", unit="img"):
        native = read_image_native(p.source)
        img = as_rgb8(native, p.source)
        fc = cameras[p.camera]
        if img.shape[:2] != (fc.height, fc.width):
            raise ConversionError(p.source, f"image is {img.shape[1]}x{img.shape[0]}, calibration of {p.camera} "
                                  f"says {fc.width}x{fc.height}")
        grey = native.ndim == 2 or native.shape[2] == 1
        nch = channels.setdefault(p.camera, 1 if grey else 3)
        if nch != (1 if grey else 3):
            raise ConversionError(p.source, f"image is {'grayscale' if grey else 'colour'} but earlier images of "
                                  f"{p.camera} are {'grayscale' if nch == 1 else 'colour'}")
        stem = fmt.format(p.index)
        rel = f"images/{p.camera}/{stem}.png"
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if downscale == 1 and p.source.suffix.lower() == ".png" and (grey or native.shape[2] == 3):
            shutil.copyfile(p.source, dst)  # byte-exact
        else:
            keep = native.reshape(native.shape[:2]) if grey else img  # grey stays single-channel
            iio.imwrite(dst, downscale_image(keep, downscale) if downscale != 1 else keep)
        if stereo and stereo_pair and p.split == "train" and p.camera in stereo_pair[:2]:
            images_full[(p.index, p.camera)] = img
        f = Frame(image=rel, camera=p.camera, cam_to_world=shift @ p.cam_to_world, timestamp=p.timestamp,
                  split=p.split, name=f"{p.camera}/{stem}", root=out)
        frames.append(f)
        by_index.setdefault(p.index, []).append(f)

    for c in [c for c, n in channels.items() if n == 1]:
        out_cams[c] = dataclasses.replace(out_cams[c], channels=1)

    report = dict(report)
    report.update({"downscale": downscale, "max_depth": max_depth, "stereo": bool(stereo),
                   "stereo_max_depth": stereo_max_depth, "voxel": voxel,
                   "world_offset": world_offset.tolist(), "training_estimate": estimate})
    grey_cams = sorted(c for c, n in channels.items() if n == 1)
    if grey_cams:
        report["grayscale_cameras"] = grey_cams
    point_clouds = []
    left_frames = [f for f in frames if f.camera == held_out_cam]

    if scans is not None or extra_points is not None:
        per_scan, raw_total = [], 0
        if scans is not None:
            for i in progress(indices, quiet, desc="lidar", unit="scan"):
                path, T_world_scan = scans(i)
                scan = read_velodyne(path)[:, :3].astype(np.float64)
                raw_total += len(scan)
                scan = scan[np.linalg.norm(scan, axis=1) > 2.5]  # ego vehicle / sensor self-returns
                world = transform(shift @ T_world_scan, scan)
                per_scan.append((i, world))
                if depth:
                    for f in by_index.get(i, []):
                        write_frame_depth(out, f, world, out_cams[f.camera], max_depth, fmt.format(i))
        parts = [w for _, w in per_scan]
        if extra_points is not None and len(extra_points):
            parts.append(transform(shift, extra_points))
            raw_total += len(extra_points)
        fused = np.concatenate(parts) if parts else np.zeros((0, 3))
        if sanity:
            # Check on the un-cropped cloud (the crop would hide a convention bug).
            picks = sorted({0, len(left_frames) // 2, len(left_frames) - 1})
            probe, _ = clean_points(fused, voxel=0.2, nb_neighbors=0)
            log("projection sanity check (fused LiDAR, un-cropped):")
            san = projection_sanity(probe, [left_frames[k] for k in picks], out_cams, max_depth,
                                    min_fraction=min_sanity_fraction, where=calib_path, verbose=not quiet)
            report["sanity"] = {"mean_fraction": san["mean"], "per_frame": san["per_frame"], "ground": san["ground"]}
            if len(per_scan) > 1:
                scan_of = dict(per_scan)
                chk = [f for f in (left_frames[k] for k in picks) if int(f.name.rsplit("/", 1)[1]) in scan_of]
                own = [scan_of[int(f.name.rsplit("/", 1)[1])] for f in chk]
                oth = [np.concatenate([w for j, w in per_scan if j != int(f.name.rsplit("/", 1)[1])]) for f in chk]
                agr = scan_agreement(chk, out_cams, own, oth, max_depth, where=pose_path, verbose=not quiet)
                report["scan_agreement"] = {"mean_fraction": agr["mean"], "per_frame": agr["per_frame"]}
        pc, n_view, n_written = write_lidar_cloud(out, fused, frames, out_cams, max_depth, voxel, outlier_neighbors)
        point_clouds.append(pc)
        report["lidar"] = {"raw": raw_total, "in_view": n_view, "written": n_written}
        log(f"lidar: {raw_total} raw points ({len(per_scan)} scans), {n_view} seen by a frame "
            f"within {max_depth:g} m, {n_written} after {voxel:g} m voxels + outlier removal")

    if stereo and stereo_pair:
        _stereo_cloud(out, frames, cameras, out_cams, images_full, stereo_pair, indices, fmt,
                      max_depth, stereo_max_depth, voxel, outlier_neighbors, report, point_clouds, quiet,
                      depth_images=depth, check_poses=sanity and "scan_agreement" not in report,
                      pose_path=pose_path, shift=shift, source_pair=source_pair)
    images_full.clear()

    scene = write_scene(out, name, source, world_offset, out_cams, frames, point_clouds)
    finish_scene(scene, report, quiet, held_out_cam)
    return scene


def check_rectified_pair(left: Camera, right: Camera, offset_left, offset_right, where) -> float:
    """Baseline (metres, > 0) of a rectified pair whose centres are at
    ``offset_*`` in a common rectified frame; refuses pairs whose fx, fy, cy
    differ or whose offset is not along +x (right camera to the right)."""
    if (abs(left.fx - right.fx) > 1e-6 * left.fx or abs(left.fy - right.fy) > 1e-6 * left.fy
            or abs(left.cy - right.cy) > 1e-3):
        raise ConversionError(where, f"{left.name}/{right.name} are not a rectified pair (fx, fy, cy differ); "
                              "use --no-stereo")
    d = np.asarray(offset_left, np.float64) - np.asarray(offset_right, np.float64)
    baseline = float(d[0])
    if baseline <= 0:
        raise ConversionError(where, f"stereo baseline {left.name}->{right.name} is {baseline:.4f} m (must be > 0)")
    return baseline


def write_stereo_depth(root, frame: Frame, xyz_world: np.ndarray, cam: Camera, stem: str) -> int:
    """Z-buffer one stereo pair's points (world, scene coordinates) into
    ``depth_stereo/<camera>/<stem>.png`` (uint16, metres * 256, 0 = none; the
    format of LiDAR depth, :func:`dnmp.data.scene.write_depth_png`) and set
    ``frame.stereo_depth``. At full resolution the left camera's image is the
    SGBM depth z = fx * baseline / d itself (one point per pixel centre); the
    right camera gets the same points projected (left-right consistent
    points are visible in both). Returns the number of pixels with depth."""
    d = zbuffer_depth(world_to_cam_points(frame, xyz_world), cam, 0.5)
    frame.stereo_depth = f"depth_stereo/{frame.camera}/{stem}.png"
    write_depth_png(Path(root) / frame.stereo_depth, d)
    return int((d > 0).sum())


# The no-LiDAR pose check compares a pair's stereo points with those of the pairs 2, 4, ..., 10
# source frames before and after it (about 10 m at KITTI's 10 Hz and 36 km/h: surfaces seen from
# both within SGBM's 25 m), whatever the --stride: skipped frames are matched for the check only.
STEREO_CHECK_OFFSETS = (-10, -8, -6, -4, -2, 2, 4, 6, 8, 10)


def _stereo_neighbours(i, done: dict, left: str, cam, baseline, stereo_max_depth, shift, source_pair):
    """World points [N, 3] of the stereo pairs at source frames i + STEREO_CHECK_OFFSETS: those
    already matched (``done``: frame -> points) and, with ``source_pair(j)`` -> (left uint8 [H, W, 3],
    right, left cam_to_world original) or None, the skipped ones."""
    parts = []
    for j in (i + d for d in STEREO_CHECK_OFFSETS):
        if j in done:
            parts.append(done[j])
        elif source_pair is not None and (src := source_pair(j)) is not None:
            xyz_c, _, _ = stereo_points(src[0], src[1], cam, baseline, max_depth=stereo_max_depth)
            parts.append(transform(shift @ src[2], xyz_c))
    if not parts:  # no frame in reach: the nearest matched pairs
        near = sorted(done, key=lambda j: abs(j - i))[1:3]
        parts = [done[j] for j in near]
    return np.concatenate(parts)


def _stereo_cloud(out, frames, cameras, out_cams, images_full, pair, indices, fmt, max_depth,
                  stereo_max_depth, voxel, outlier_neighbors, report, point_clouds, quiet,
                  depth_images: bool = True, check_poses: bool = False, pose_path=None, shift=None,
                  source_pair=None):
    """SGBM points of every training stereo pair: ``points/stereo.ply`` (fused,
    voxel + outlier filtered) and, with ``depth_images``, a stereo depth image
    of both frames of each pair (:func:`write_stereo_depth`). With
    ``check_poses`` (a scene without LiDAR to check the poses with), the
    points of the first, middle and last pair are compared with those of the
    pairs up to 10 source frames away (:func:`_stereo_neighbours`, skipped
    frames included through ``source_pair``; :func:`scan_agreement`; fails on
    inverted or wrong poses, blaming ``pose_path``)."""
    log = logger(quiet)
    l, r, baseline = pair
    fl = cameras[l]
    pts, cols, st_tot, n_depth = [], [], {}, 0
    train_idx = [i for i in indices if (i, l) in images_full and (i, r) in images_full]
    for i in progress(train_idx, quiet, desc="stereo", unit="pair"):
        xyz_c, rgb, st = stereo_points(images_full[(i, l)], images_full[(i, r)], fl, baseline,
                                       max_depth=stereo_max_depth)
        f = next(f for f in frames if f.name == f"{l}/{fmt.format(i)}")
        world = transform(f.cam_to_world, xyz_c)
        pts.append(world)
        cols.append(rgb)
        if depth_images:
            for c in (l, r):
                fc = next(g for g in frames if g.name == f"{c}/{fmt.format(i)}")
                write_stereo_depth(out, fc, world, out_cams[c], fmt.format(i))
                n_depth += 1
        for k, v in st.items():
            st_tot[k] = st_tot.get(k, 0) + v if k != "num_disparities" else v
    if not pts:
        return
    if check_poses and len(pts) > 1:
        picks = sorted({0, len(pts) // 2, len(pts) - 1})
        chk = [next(f for f in frames if f.name == f"{l}/{fmt.format(train_idx[k])}") for k in picks]
        others = [_stereo_neighbours(train_idx[k], dict(zip(train_idx, pts)), l, fl, baseline, stereo_max_depth,
                                     shift, source_pair) for k in picks]
        log("pose check (stereo points of neighbouring pairs, no LiDAR):")
        agr = scan_agreement(chk, out_cams, [pts[k] for k in picks], others, stereo_max_depth, warn_below=0.5,
                             where=pose_path, verbose=not quiet, what="stereo pairs")
        report["stereo_agreement"] = {"mean_fraction": agr["mean"], "per_frame": agr["per_frame"]}
    allp, allc = np.concatenate(pts), np.concatenate(cols).astype(np.float32) / 255.0
    xyz, rgb = clean_points(allp, allc, voxel=voxel, nb_neighbors=outlier_neighbors)
    point_clouds.append(write_points(out, "points/stereo.ply", "stereo", xyz, rgb))
    report["stereo_points"] = {**st_tot, "pairs": len(train_idx), "baseline": baseline, "written": len(xyz),
                               "depth_images": n_depth}
    # cross-check against the LiDAR depth of the first train left frame
    f0 = next(f for f in frames if f.name == f"{l}/{fmt.format(train_idx[0])}")
    if f0.depth is not None:
        from dnmp.data.scene import read_depth_png

        d_l = read_depth_png(out / f0.depth)
        d_s = zbuffer_depth(world_to_cam_points(f0, xyz), out_cams[l], 0.5, max_depth)
        m = (d_l > 0) & (d_s > 0)
        if m.any():
            rel = np.abs(d_s[m] - d_l[m]) / d_l[m]
            agree = float(np.mean(rel < 0.05))
            report["stereo_points"]["lidar_agreement"] = agree
            log(f"stereo vs LiDAR in {f0.name}: {100 * agree:.1f}% of {int(m.sum())} shared pixels "
                f"within 5% (median {100 * float(np.median(rel)):.1f}%)")
            if agree < 0.5:
                print(f"warning: stereo points disagree with LiDAR in {f0.name} "
                      f"({100 * agree:.1f}% within 5%); check the stereo calibration")
    log(f"stereo: {len(train_idx)} train pairs, baseline {baseline:.3f} m, {st_tot['sgbm']} SGBM pixels, "
        f"{st_tot['lr_consistent']} left-right consistent, {st_tot['kept']} kept (texture, "
        f"<= {stereo_max_depth:g} m), {len(xyz)} after voxels + outlier removal; "
        f"{n_depth} stereo depth images (depth_stereo/)")


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def add_drive_options(p: argparse.ArgumentParser, default_cameras: str | None, range_help: str = "",
                      window_help: str = "", cameras_help: str = "") -> None:
    """The options every KITTI-family converter takes (frame window, stride,
    cameras, downscale, depth/LiDAR/stereo switches, filtering, output).
    ``default_cameras`` None: the converter picks them (``cameras_help`` says how)."""
    p.add_argument("--out", required=True, help="output scene folder")
    p.add_argument("--first", type=int, default=None, help="first frame index (default: first available)")
    p.add_argument("--last", type=int, default=None,
                   help="last frame index, inclusive (default: last available)" + range_help)
    p.add_argument("--window", default=None, metavar="START:LEN",
                   help="frames START..START+LEN-1 (instead of --first/--last), e.g. 715:80 for an "
                        "80-frame window" + window_help)
    p.add_argument("--stride", type=int, default=1, metavar="N",
                   help="keep every Nth frame of the range, before the train/test split (default 1)")
    p.add_argument("--cameras", default=default_cameras,
                   help="comma-separated cameras, the first is the left one; "
                        + (cameras_help or f"default {default_cameras}"))
    p.add_argument("--downscale", type=float, default=1.0, help="image size divisor (default 1)")
    p.add_argument("--max-depth", type=float, default=80.0, help="LiDAR crop / depth image range, metres (80)")
    p.add_argument("--stereo-max-depth", type=float, default=25.0, help="stereo points range, metres (25)")
    p.add_argument("--voxel", type=float, default=0.05, help="point voxel size, metres (0.05)")
    p.add_argument("--outlier-neighbors", type=int, default=20,
                   help="statistical outlier removal neighbours, 0 = off (20)")
    p.add_argument("--no-stereo", action="store_true", help="skip SGBM stereo points")
    p.add_argument("--no-lidar", action="store_true", help="skip LiDAR points and depth")
    p.add_argument("--no-depth", action="store_true",
                   help="skip the per-frame depth images (LiDAR depth/ and stereo depth_stereo/)")
    p.add_argument("--no-sanity", action="store_true", help="skip the LiDAR projection sanity check")
    p.add_argument("--name", default=None, help="scene name")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output scene")
    p.add_argument("--quiet", action="store_true")


def add_pose_options(p: argparse.ArgumentParser) -> None:
    """--poses lidar's ICP settings (KITTI odometry and raw)."""
    p.add_argument("--icp-voxel", type=float, default=0.2, help="--poses lidar: ICP voxel size, metres (0.2)")
    p.add_argument("--icp-max-distance", type=float, default=0.5,
                   help="--poses lidar: ICP correspondence distance, metres (0.5)")
    p.add_argument("--min-icp-fitness", type=float, default=0.3,
                   help="--poses lidar: fail when a scan pair's ICP fitness is below this (0.3)")


def drive_options(args) -> dict:
    """The keyword options of :func:`add_drive_options`' parsed arguments
    (``cameras`` None when not given and the converter picks them)."""
    return dict(
        cameras=None if args.cameras is None else [c.strip() for c in args.cameras.split(",") if c.strip()],
        downscale=args.downscale, window=args.window, stride=args.stride,
        max_depth=args.max_depth, lidar=not args.no_lidar, depth=not args.no_depth, stereo=not args.no_stereo,
        stereo_max_depth=args.stereo_max_depth, voxel=args.voxel, outlier_neighbors=args.outlier_neighbors,
        name=args.name, overwrite=args.overwrite, sanity=not args.no_sanity, quiet=args.quiet,
    )

"""Dense stereo of rectified pairs: SGBM points (:func:`stereo_points`), the
pair's baseline (:func:`check_rectified_pair`, :func:`stereo_pair_of`) and
the writer's stereo step (:func:`write_stereo_points`: ``points/stereo.ply``,
``depth_stereo/`` images, the no-LiDAR pose check)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from dnmp.converters.capture import ConversionError, StereoPair
from dnmp.converters.checks import scan_agreement
from dnmp.converters.points import clean_points
from dnmp.converters.projection import world_to_cam_points, zbuffer_depth
from dnmp.converters.report import logger, progress
from dnmp.data.images import read_depth_png, write_depth_png
from dnmp.data.ply import write_ply_points
from dnmp.data.rigid import transform
from dnmp.data.scene import Camera, Frame, PointCloud


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


def stereo_pair_of(pairs: Sequence[tuple], cameras: Sequence[str], full_cams: dict, offsets: dict, where,
                   stereo: bool = True):
    """The :class:`StereoPair` of the first of ``pairs`` whose two cameras are
    both chosen (checked by :func:`check_rectified_pair`), or None (also when
    ``stereo`` is off)."""
    pair = next(((l, r) for l, r in pairs if l in cameras and r in cameras), None)
    if not (pair and stereo):
        return None
    l, r = pair
    return StereoPair(l, r, check_rectified_pair(full_cams[l], full_cams[r], offsets[l], offsets[r], where))


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
    format of LiDAR depth, :func:`dnmp.data.images.write_depth_png`) and set
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
# ... and compares depths up to this range even when the points reach further (--stereo-max-depth
# 40 by default): beyond it SGBM's depth steps (~1 m at 25 m on KITTI) blur the agreement
STEREO_CHECK_MAX_DEPTH = 25.0


def _stereo_neighbours(i, done: dict, cam, baseline, stereo_max_depth, shift, source_pair):
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


def write_stereo_points(out, frames: Sequence[Frame], full_cams: dict, out_cams: dict, images_full: dict, pair,
                        shift,
                        stereo_max_depth: float, max_depth: float, voxel: float, outlier_neighbors: int,
                        report: dict, quiet: bool, depth_images: bool = True, check_poses: bool = False,
                        pose_path=None, stereo_near_depth: float = 25.0) -> list:
    """The writer's stereo step. SGBM points of every training stereo pair
    (``images_full``: (stem, camera) -> full-resolution uint8 [H, W, 3] of the
    training frames of ``pair``, a :class:`~dnmp.converters.capture.StereoPair`):
    returns the PointClouds written (each fused, voxel + outlier filtered on
    its own, and written only when it has points; none without pairs):
    ``points/stereo.ply`` (kind "stereo", points at most ``stereo_near_depth``
    metres in front of the camera that saw them) and ``points/stereo_far.ply``
    (kind "stereo_far", the rest up to ``stereo_max_depth``: SGBM depth error
    grows with the square of depth, so readers may treat them as coarser).
    With ``depth_images`` it writes a stereo depth image
    of both frames of each pair (:func:`write_stereo_depth`). With
    ``check_poses`` (a scene without LiDAR to check the poses with), the
    points of the first, middle and last pair are compared with those of the
    pairs up to 10 source frames away (:func:`_stereo_neighbours`, skipped
    frames included; :func:`scan_agreement`; fails on inverted or wrong
    poses, blaming ``pose_path``). Fills ``report["stereo_points"]`` (and
    ``"stereo_agreement"``)."""
    log = logger(quiet)
    l, r, baseline = pair.left, pair.right, pair.baseline
    by_name = {f.name: f for f in frames}
    fl = full_cams[l]  # SGBM runs on the full-resolution images
    pts, cols, near, st_tot, n_depth = [], [], [], {}, 0
    stems = [f.name.split("/", 1)[1] for f in frames
             if f.camera == l and (f.name.split("/", 1)[1], r) in images_full
             and (f.name.split("/", 1)[1], l) in images_full]
    for stem in progress(stems, quiet, desc="stereo", unit="pair"):
        xyz_c, rgb, st = stereo_points(images_full[(stem, l)], images_full[(stem, r)], fl, baseline,
                                       max_depth=stereo_max_depth)
        world = transform(by_name[f"{l}/{stem}"].cam_to_world, xyz_c)
        pts.append(world)
        cols.append(rgb)
        near.append(xyz_c[:, 2] <= stereo_near_depth)
        if depth_images:
            for c in (l, r):
                write_stereo_depth(out, by_name[f"{c}/{stem}"], world, out_cams[c], stem)
                n_depth += 1
        for k, v in st.items():
            st_tot[k] = st_tot.get(k, 0) + v if k != "num_disparities" else v
    if not pts:
        return []
    if check_poses and len(pts) > 1:
        picks = sorted({0, len(pts) // 2, len(pts) - 1})
        chk = [by_name[f"{l}/{stems[k]}"] for k in picks]
        done = dict(zip((int(s) for s in stems), pts))
        check_depth = min(stereo_max_depth, STEREO_CHECK_MAX_DEPTH)
        others = [_stereo_neighbours(int(stems[k]), done, fl, baseline, check_depth, shift, pair.source_pair)
                  for k in picks]
        log("pose check (stereo points of neighbouring pairs, no LiDAR):")
        agr = scan_agreement(chk, out_cams, [pts[k] for k in picks], others, check_depth, warn_below=0.5,
                             where=pose_path, verbose=not quiet, what="stereo pairs")
        report["stereo_agreement"] = {"mean_fraction": agr["mean"], "per_frame": agr["per_frame"]}
    allp, allc = np.concatenate(pts), np.concatenate(cols).astype(np.float32) / 255.0
    is_near = np.concatenate(near)
    clouds, kept = [], {}
    for kind, keep in (("stereo", is_near), ("stereo_far", ~is_near)):
        if not keep.any():
            continue
        part, part_rgb = clean_points(allp[keep], allc[keep], voxel=voxel, nb_neighbors=outlier_neighbors)
        write_ply_points(Path(out) / f"points/{kind}.ply", part, part_rgb)
        clouds.append(PointCloud(path=f"points/{kind}.ply", kind=kind, root=Path(out)))
        kept[kind] = part
    # both kinds: the LiDAR cross-check below sees what the scene holds (maybe nothing)
    xyz = np.concatenate(list(kept.values())) if kept else np.zeros((0, 3), np.float32)
    written = {k: len(v) for k, v in kept.items()}
    report["stereo_points"] = {**st_tot, "pairs": len(stems), "baseline": baseline,
                               "written": int(sum(written.values())), "written_near": written.get("stereo", 0),
                               "written_far": written.get("stereo_far", 0), "near_depth": stereo_near_depth,
                               "depth_images": n_depth}
    # cross-check against the LiDAR depth of the first train left frame
    f0 = by_name[f"{l}/{stems[0]}"]
    if f0.depth is not None:
        d_l = read_depth_png(Path(out) / f0.depth)
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
    log(f"stereo: {len(stems)} train pairs, baseline {baseline:.3f} m, {st_tot['sgbm']} SGBM pixels, "
        f"{st_tot['lr_consistent']} left-right consistent, {st_tot['kept']} kept (texture, "
        f"<= {stereo_max_depth:g} m), {len(xyz)} after voxels + outlier removal "
        f"({written.get('stereo', 0)} within {stereo_near_depth:g} m, {written.get('stereo_far', 0)} beyond: "
        f"points/stereo_far.ply); {n_depth} stereo depth images (depth_stereo/)")
    return clouds

"""Convert a KITTI odometry sequence (the benchmark's folder format) into a dnmp scene.

Input layout (KITTI odometry, optionally with SemanticKITTI's poses)::

    <root>/sequences/<seq>/image_0..image_3/NNNNNN.png   rectified images
    <root>/sequences/<seq>/velodyne/NNNNNN.bin           float32 (x, y, z, r) per point
    <root>/sequences/<seq>/calib.txt                     P0..P3 (3x4), Tr (velo -> cam0)
    <root>/sequences/<seq>/times.txt                     seconds, one line per frame
    <root>/sequences/<seq>/poses.txt                     SemanticKITTI poses (optional)
    <root>/poses/<seq>.txt                               official ground truth (optional)

Conventions read from the format (see also ../shared/data/README.md):

- ``P_i = K_i [I | t_i]`` projects rectified camera-0 coordinates into image_i;
  camera i's frame is camera 0's translated by ``b_i = K_i^-1 t_i``
  (``X_i = X_0 + b_i``), so ``cam_i_to_world = T_frame @ inv(translation(b_i))``.
- Pose line k is camera 0 at frame k in the frame of camera 0 at frame 0
  (z forward, y down). A scan point X goes to the world as ``T_k @ Tr @ X``.
- The world is that frame minus ``world_offset`` (the mean camera centre).

Split (DNMP protocol for stereo forward drives, DESIGN.md): frames at even
offsets from ``first`` train on both cameras; odd ones are held out on the left
camera only (image_2, or image_0 for the grey pair); right images of odd
frames are not used.

Outputs: images (PNG), ``depth/<camera>/<frame>.png`` sparse depth from each
frame's own scan (uint16, metres*256), ``points/lidar.ply`` (all scans fused,
cropped to what the frames see within ``max_depth``, voxel-down-sampled,
outliers removed), ``points/stereo.ply`` (SGBM depth of TRAIN stereo pairs only,
left-right consistent, within ``stereo_max_depth``, with colours), and a
``conversion_report.json`` with the options and the numbers printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from dnmp.converters.common import (
    ConversionError,
    clean_points,
    convert_atomically,
    finish_scene,
    crop_to_views,
    make_rigid,
    projection_sanity,
    rigid_inverse,
    scan_agreement,
    transform,
    translation,
    world_to_cam_points,
    write_points,
    write_scene,
    zbuffer_depth,
)
from dnmp.data.scene import (
    Camera,
    Frame,
    downscale_camera,
    downscale_image,
    write_depth_png,
)

LEFT_CAMERAS = ("image_0", "image_2")
STEREO_PAIRS = (("image_2", "image_3"), ("image_0", "image_1"))
ALL_CAMERAS = ("image_0", "image_1", "image_2", "image_3")
LICENCE = "KITTI: CC BY-NC-SA 3.0 (non-commercial); SemanticKITTI poses: CC BY-NC-SA"


def _tqdm(it, quiet, **kw):
    if quiet:
        return it
    from tqdm import tqdm

    return tqdm(it, **kw)


# ----------------------------------------------------------------------------
# Readers for the format's files
# ----------------------------------------------------------------------------


def read_calib(path: Path) -> dict:
    """calib.txt -> {key: float64 [3, 4]} (P0..P3, Tr)."""
    if not path.is_file():
        raise ConversionError(path, "calibration file is missing")
    out = {}
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise ConversionError(path, f"line {ln} is not 'KEY: 12 numbers'")
        key, vals = line.split(":", 1)
        try:
            v = np.array([float(x) for x in vals.split()], np.float64)
        except ValueError:
            raise ConversionError(path, f"line {ln} ({key.strip()}) has non-numeric values") from None
        if v.size != 12:
            raise ConversionError(path, f"line {ln} ({key.strip()}) has {v.size} numbers, expected 12 (3x4)")
        out[key.strip()] = v.reshape(3, 4)
    if "Tr" not in out and "Tr_velo_to_cam" in out:
        out["Tr"] = out["Tr_velo_to_cam"]
    return out


def camera_from_P(P: np.ndarray, name: str, width: int, height: int, where) -> tuple:
    """(Camera, b) from a rectified projection matrix P = K [I | b'], or refuse."""
    K = P[:, :3]
    scale = max(abs(K[0, 0]), 1.0)
    if abs(K[0, 1]) > 1e-6 * scale:
        raise ConversionError(where, f"P{name[-1]} has non-zero skew {K[0, 1]:g}; only zero-skew pinhole is supported")
    if (np.abs(K[2] - [0, 0, 1]).max() > 1e-9 or abs(K[1, 0]) > 1e-6 * scale):
        raise ConversionError(
            where, f"P{name[-1]} is not a rectified pinhole (left 3x3 must be [[fx,0,cx],[0,fy,cy],[0,0,1]], "
            f"got rows {np.round(K, 6).tolist()})"
        )
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ConversionError(where, f"P{name[-1]} has non-positive focal length")
    b = np.linalg.solve(K, P[:, 3])
    cam = Camera(name=name, width=width, height=height, fx=float(K[0, 0]), fy=float(K[1, 1]),
                 cx=float(K[0, 2]), cy=float(K[1, 2]))
    return cam, b


def read_poses(path: Path, first: int, last: int) -> dict:
    """{frame: rigid float64 4x4} for frames first..last from a KITTI pose file."""
    if not path.is_file():
        raise ConversionError(path, "pose file is missing")
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    if len(lines) <= last:
        raise ConversionError(
            path, f"pose file has {len(lines)} poses but frames {first}..{last} need {last + 1}"
        )
    out = {}
    for i in range(first, last + 1):
        try:
            v = np.array([float(x) for x in lines[i].split()], np.float64)
        except ValueError:
            raise ConversionError(path, f"line {i + 1} has non-numeric values") from None
        if v.size != 12:
            raise ConversionError(path, f"line {i + 1} has {v.size} numbers, expected 12 (3x4)")
        out[i] = make_rigid(v.reshape(3, 4), path, f"pose of frame {i} (line {i + 1})")
    return out


def read_times(path: Path, first: int, last: int) -> dict:
    if not path.is_file():
        raise ConversionError(path, "timestamps file is missing")
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    if len(lines) <= last:
        raise ConversionError(path, f"has {len(lines)} timestamps but frames {first}..{last} need {last + 1}")
    try:
        return {i: float(lines[i].split()[0]) for i in range(first, last + 1)}
    except ValueError:
        raise ConversionError(path, "non-numeric timestamp") from None


def read_velodyne(path: Path) -> np.ndarray:
    """float32 [N, 4] (x, y, z, reflectance) from a KITTI .bin scan."""
    if not path.is_file():
        raise ConversionError(path, "velodyne scan is missing")
    size = path.stat().st_size
    if size % 16 != 0:
        raise ConversionError(
            path, f"truncated or corrupt scan: {size} bytes is not a multiple of 16 (4 float32 per point)"
        )
    pts = np.fromfile(path, dtype="<f4").reshape(-1, 4)
    if not np.all(np.isfinite(pts[:, :3])):
        raise ConversionError(path, "scan contains NaN or Inf coordinates")
    return pts


def read_image(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] (grey repeated to 3 channels)."""
    import imageio.v3 as iio

    if not path.is_file():
        raise ConversionError(path, "image is missing")
    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:
        raise ConversionError(path, f"corrupt or unreadable image ({type(e).__name__})") from None
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        raise ConversionError(path, f"expected an 8-bit image, got {img.dtype}")
    return img


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
# Converter
# ----------------------------------------------------------------------------


def _frame_range(seq_dir: Path, cameras, first: int, last: int | None):
    cam_dir = seq_dir / cameras[0]
    if not cam_dir.is_dir():
        raise ConversionError(cam_dir, "image folder is missing")
    idx = sorted(int(p.stem) for p in cam_dir.glob("*.png") if p.stem.isdigit())
    if not idx:
        raise ConversionError(cam_dir, "no NNNNNN.png images found")
    if last is None:
        last = idx[-1]
    if first < 0 or last < first:
        raise ConversionError(seq_dir, f"invalid frame range {first}..{last}")
    return first, last


def convert_kitti_odometry(root, out, overwrite: bool = False, **options):
    """Convert a KITTI odometry sequence into the dnmp scene folder ``out``, atomically:
    everything is written into a hidden sibling folder that replaces ``out`` only when
    the conversion succeeded, so a failed or interrupted run leaves no half scene.
    Options and errors: see :func:`_convert_into`. Returns the loaded Scene.
    """
    out = Path(out)
    max_depth = options.get("max_depth", 80.0)
    if not max_depth > 0 or not options.get("stereo_max_depth", 25.0) > 0:
        raise ConversionError(out, "--max-depth and --stereo-max-depth must be > 0")
    return convert_atomically(out, overwrite, lambda staging: _convert_into(root, staging, overwrite=True, **options))


def _convert_into(
    root,
    out,
    sequence: str = "00",
    first: int = 0,
    last: int | None = None,
    cameras: Sequence[str] = ("image_2", "image_3"),
    poses: str = "auto",
    downscale: float = 1.0,
    max_depth: float = 80.0,
    lidar: bool = True,
    depth: bool = True,
    stereo: bool = True,
    stereo_max_depth: float = 25.0,
    voxel: float = 0.05,
    outlier_neighbors: int = 20,
    name: str | None = None,
    overwrite: bool = False,
    sanity: bool = True,
    min_sanity_fraction: float = 0.2,
    quiet: bool = False,
):
    """Convert ``<root>/sequences/<sequence>`` frames ``first..last`` (inclusive;
    default all images) into a dnmp scene folder ``out``. Returns the loaded
    :class:`dnmp.data.Scene`. Raises :class:`ConversionError` (a SceneError /
    ValueError with a one-line message naming the file) on unsupported input.

    poses: "auto" (SemanticKITTI ``sequences/<seq>/poses.txt`` if present, else
    ``poses/<seq>.txt``), "gt" or "semantickitti". downscale: image size divisor
    (area interpolation; intrinsics scaled with the pixel-centre convention).
    max_depth: metres, LiDAR crop and depth images. stereo: SGBM points from
    train stereo pairs within ``stereo_max_depth``. voxel / outlier_neighbors:
    point down-sampling size (m) and statistical-outlier neighbours (0 = off).
    """
    log = (lambda *a: None) if quiet else print
    root, out = Path(root), Path(out)
    sequence = str(sequence)
    seq_dir = root / "sequences" / sequence
    if not seq_dir.is_dir():
        raise ConversionError(seq_dir, "sequence folder is missing (expected <root>/sequences/<seq>/)")
    cameras = list(dict.fromkeys(cameras))
    for c in cameras:
        if c not in ALL_CAMERAS:
            raise ConversionError(seq_dir, f"unknown camera {c!r}; choose from {', '.join(ALL_CAMERAS)}")
    if not cameras:
        raise ConversionError(seq_dir, "no cameras selected")
    if not downscale >= 1:
        raise ConversionError(seq_dir, f"downscale must be >= 1, got {downscale}")
    first, last = _frame_range(seq_dir, cameras, first, last)
    indices = list(range(first, last + 1))

    calib_path = seq_dir / "calib.txt"
    calib = read_calib(calib_path)
    if lidar and "Tr" not in calib:
        raise ConversionError(calib_path, "no Tr (velodyne -> camera 0) line; needed for LiDAR (use lidar=False / --no-lidar)")

    # poses
    sk_path, gt_path = seq_dir / "poses.txt", root / "poses" / f"{sequence}.txt"
    if poses == "auto":
        pose_path, pose_kind = (sk_path, "semantickitti") if sk_path.is_file() else (gt_path, "gt")
    elif poses == "gt":
        pose_path, pose_kind = gt_path, "gt"
    elif poses == "semantickitti":
        pose_path, pose_kind = sk_path, "semantickitti"
    else:
        raise ConversionError(seq_dir, f"poses must be auto, gt or semantickitti, got {poses!r}")
    T0 = read_poses(pose_path, first, last)
    times = read_times(seq_dir / "times.txt", first, last)
    log(f"kitti-odometry: sequence {sequence}, frames {first}..{last}, cameras {cameras}, "
        f"poses {pose_kind} ({pose_path})")

    # cameras
    full_cams, offsets = {}, {}
    for c in cameras:
        key = "P" + c[-1]
        if key not in calib:
            raise ConversionError(calib_path, f"no {key} line (needed for {c})")
        p0 = seq_dir / c / f"{first:06d}.png"
        img0 = read_image(p0)
        full_cams[c], offsets[c] = camera_from_P(calib[key], c, img0.shape[1], img0.shape[0], calib_path)
    out_cams = {c: downscale_camera(cam, downscale) if downscale != 1 else cam for c, cam in full_cams.items()}

    held_out_cam = next((c for c in cameras if c in LEFT_CAMERAS), cameras[0])

    # poses of every output image, in original coordinates
    plan = []  # (frame index, camera, split, cam_to_world original)
    for i in indices:
        train = (i - first) % 2 == 0
        for c in cameras:
            if not train and c != held_out_cam:
                continue
            T = T0[i] @ rigid_inverse(translation(offsets[c]))
            plan.append((i, c, "train" if train else "test", T))
    centres = np.array([p[3][:3, 3] for p in plan])
    world_offset = centres.mean(0)
    shift = translation(-world_offset)

    # output folder
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConversionError(out, "output folder exists and is not empty (use overwrite / --overwrite)")
        if not (out / "scene.json").is_file():
            raise ConversionError(out, "refusing to overwrite a non-empty folder that is not a dnmp scene")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    frames = []
    images_full = {}  # (i, c) -> uint8 full-res image, only for stereo train pairs
    pair = next(((l, r) for l, r in STEREO_PAIRS if l in cameras and r in cameras), None)
    for i, c, split, T in _tqdm(plan, quiet, desc="images", unit="img"):
        src = seq_dir / c / f"{i:06d}.png"
        img = read_image(src)
        fc = full_cams[c]
        if img.shape[:2] != (fc.height, fc.width):
            raise ConversionError(src, f"image is {img.shape[1]}x{img.shape[0]}, other frames of {c} are {fc.width}x{fc.height}")
        rel = f"images/{c}/{i:06d}.png"
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if downscale == 1 and c in ("image_2", "image_3"):
            shutil.copyfile(src, dst)  # byte-exact
        else:
            import imageio.v3 as iio

            iio.imwrite(dst, downscale_image(img, downscale) if downscale != 1 else img)
        if stereo and pair and split == "train" and c in pair:
            images_full[(i, c)] = img
        frames.append(Frame(image=rel, camera=c, cam_to_world=shift @ T, timestamp=times[i] - times[first],
                            split=split, name=f"{c}/{i:06d}", root=out))

    report = {
        "converter": "dnmp.converters.kitti_odometry",
        "root": str(root), "sequence": sequence, "first": first, "last": last, "cameras": cameras,
        "poses": pose_kind, "pose_file": str(pose_path), "downscale": downscale, "max_depth": max_depth,
        "stereo": bool(stereo), "stereo_max_depth": stereo_max_depth, "voxel": voxel,
        "first_timestamp": times[first],
    }
    point_clouds = []

    # LiDAR
    if lidar:
        Tr = make_rigid(calib["Tr"], calib_path, "Tr (velodyne -> camera 0)")
        fused, raw_total = [], 0
        for i in _tqdm(indices, quiet, desc="lidar", unit="scan"):
            scan = read_velodyne(seq_dir / "velodyne" / f"{i:06d}.bin")[:, :3].astype(np.float64)
            raw_total += len(scan)
            scan = scan[np.linalg.norm(scan, axis=1) > 2.5]  # ego vehicle / sensor self-returns
            world = transform(shift @ T0[i] @ Tr, scan)
            fused.append(world)
            if depth:
                for f in frames:
                    if f.name.endswith(f"/{i:06d}"):
                        d = zbuffer_depth(world_to_cam_points(f, world), out_cams[f.camera], 0.5, max_depth)
                        f.depth = f"depth/{f.camera}/{i:06d}.png"
                        write_depth_png(out / f.depth, d)
        per_scan = fused
        fused = np.concatenate(per_scan)
        if sanity:
            # Check on the un-cropped cloud (the crop would hide a convention bug).
            left = [f for f in frames if f.camera == held_out_cam]
            picks = sorted({0, len(left) // 2, len(left) - 1})
            probe, _ = clean_points(fused, voxel=0.2, nb_neighbors=0)
            log("projection sanity check (fused LiDAR, un-cropped):")
            san = projection_sanity(probe, [left[k] for k in picks], out_cams, max_depth,
                                    min_fraction=min_sanity_fraction, where=calib_path, verbose=not quiet)
            report["sanity"] = {"mean_fraction": san["mean"], "per_frame": san["per_frame"]}
            if len(indices) > 1:
                chk = [left[k] for k in picks]
                pos = [indices.index(int(f.name.rsplit("/", 1)[1])) for f in chk]
                own = [per_scan[p] for p in pos]
                oth = [np.concatenate([w for q, w in enumerate(per_scan) if q != p]) for p in pos]
                agr = scan_agreement(chk, out_cams, own, oth, max_depth, where=pose_path, verbose=not quiet)
                report["scan_agreement"] = {"mean_fraction": agr["mean"], "per_frame": agr["per_frame"]}
        keep = crop_to_views(fused, frames, out_cams, max_depth)
        xyz, _ = clean_points(fused[keep], voxel=voxel, nb_neighbors=outlier_neighbors)
        point_clouds.append(write_points(out, "points/lidar.ply", "lidar", xyz))
        report["lidar"] = {"raw": raw_total, "in_view": int(keep.sum()), "written": len(xyz)}
        log(f"lidar: {raw_total} raw points in {len(indices)} scans, {int(keep.sum())} seen by a frame "
            f"within {max_depth:g} m, {len(xyz)} after {voxel:g} m voxels + outlier removal")

    # Stereo (train frames only: held-out images are never used)
    if stereo and pair:
        l, r = pair
        fl, fr = full_cams[l], full_cams[r]
        if (abs(fl.fx - fr.fx) > 1e-6 * fl.fx or abs(fl.fy - fr.fy) > 1e-6 * fl.fy
                or abs(fl.cy - fr.cy) > 1e-3):
            raise ConversionError(calib_path, f"{l}/{r} are not a rectified pair (fx, fy, cy differ); use --no-stereo")
        baseline = float(offsets[l][0] - offsets[r][0])
        if baseline <= 0:
            raise ConversionError(calib_path, f"stereo baseline {l}->{r} is {baseline:.4f} m (must be > 0)")
        pts, cols, st_tot = [], [], {}
        train_idx = [i for i in indices if (i, l) in images_full and (i, r) in images_full]
        for i in _tqdm(train_idx, quiet, desc="stereo", unit="pair"):
            xyz_c, rgb, st = stereo_points(images_full[(i, l)], images_full[(i, r)], fl, baseline,
                                           max_depth=stereo_max_depth)
            f = next(f for f in frames if f.name == f"{l}/{i:06d}")
            pts.append(transform(f.cam_to_world, xyz_c))
            cols.append(rgb)
            for k, v in st.items():
                st_tot[k] = st_tot.get(k, 0) + v if k != "num_disparities" else v
        if pts:
            allp, allc = np.concatenate(pts), np.concatenate(cols).astype(np.float32) / 255.0
            xyz, rgb = clean_points(allp, allc, voxel=voxel, nb_neighbors=outlier_neighbors)
            point_clouds.append(write_points(out, "points/stereo.ply", "stereo", xyz, rgb))
            report["stereo_points"] = {**st_tot, "pairs": len(train_idx), "baseline": baseline, "written": len(xyz)}
            # cross-check against the LiDAR depth of the first train left frame
            f0 = next(f for f in frames if f.name == f"{l}/{train_idx[0]:06d}")
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
                f"<= {stereo_max_depth:g} m), {len(xyz)} after voxels + outlier removal")
    images_full.clear()

    source = {
        "dataset": "KITTI odometry",
        "sequence": sequence,
        "licence": LICENCE,
        "frames": [first, last],
        "poses": pose_kind,
    }
    scene = write_scene(out, name or f"kitti_odometry_{sequence}", source, world_offset, out_cams,
                        frames, point_clouds)
    finish_scene(scene, report, quiet, held_out_cam)
    return scene


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnmp convert kitti-odometry",
        description="Convert a KITTI odometry sequence (KITTI folder layout) into a dnmp scene.",
    )
    p.add_argument("root", help="dataset root holding sequences/<seq>/ (and poses/<seq>.txt)")
    p.add_argument("--out", required=True, help="output scene folder")
    p.add_argument("--sequence", "--seq", default="00", help="sequence id (default 00)")
    p.add_argument("--first", type=int, default=0, help="first frame index (default 0)")
    p.add_argument("--last", type=int, default=None, help="last frame index, inclusive (default: last image)")
    p.add_argument("--cameras", default="image_2,image_3",
                   help="comma-separated cameras among image_0..image_3 (default image_2,image_3)")
    p.add_argument("--poses", choices=["auto", "gt", "semantickitti"], default="auto",
                   help="auto: SemanticKITTI sequences/<seq>/poses.txt if present, else poses/<seq>.txt")
    p.add_argument("--downscale", type=float, default=1.0, help="image size divisor (default 1)")
    p.add_argument("--max-depth", type=float, default=80.0, help="LiDAR crop / depth image range, metres (80)")
    p.add_argument("--stereo-max-depth", type=float, default=25.0, help="stereo points range, metres (25)")
    p.add_argument("--voxel", type=float, default=0.05, help="point voxel size, metres (0.05)")
    p.add_argument("--outlier-neighbors", type=int, default=20,
                   help="statistical outlier removal neighbours, 0 = off (20)")
    p.add_argument("--no-stereo", action="store_true", help="skip SGBM stereo points")
    p.add_argument("--no-lidar", action="store_true", help="skip LiDAR points and depth")
    p.add_argument("--no-depth", action="store_true", help="skip per-frame sparse depth images")
    p.add_argument("--no-sanity", action="store_true", help="skip the LiDAR projection sanity check")
    p.add_argument("--name", default=None, help="scene name (default kitti_odometry_<seq>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output scene")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        convert_kitti_odometry(
            args.root, args.out, sequence=args.sequence, first=args.first, last=args.last,
            cameras=[c.strip() for c in args.cameras.split(",") if c.strip()], poses=args.poses,
            downscale=args.downscale, max_depth=args.max_depth, lidar=not args.no_lidar,
            depth=not args.no_depth, stereo=not args.no_stereo, stereo_max_depth=args.stereo_max_depth,
            voxel=args.voxel, outlier_neighbors=args.outlier_neighbors, name=args.name, overwrite=args.overwrite, sanity=not args.no_sanity,
            quiet=args.quiet,
        )
    except ValueError as e:  # SceneError / ConversionError: one line
        print(f"dnmp: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one writer: any :class:`~dnmp.converters.capture.Capture` -> a dnmp scene.

:func:`convert` runs a format's reader and :func:`write_capture` with the
same options and policies for every format (converters/design.md says which
and why), into a staging folder renamed into place only when everything
succeeded (:func:`convert_atomically`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dnmp.converters.capture import Capture, ConversionError
from dnmp.converters.checks import projection_sanity, scan_agreement
from dnmp.converters.estimate import training_estimate
from dnmp.converters.points import clean_points, crop_to_views
from dnmp.converters.projection import world_to_cam_points, zbuffer_depth
from dnmp.converters.report import logger, print_summary, progress, write_overview
from dnmp.converters.stereo import write_stereo_points
from dnmp.data.downscale import downscale_camera, downscale_image
from dnmp.data.images import as_rgb8, read_image, write_depth_png
from dnmp.data.ply import write_ply_points
from dnmp.data.rigid import transform, translation
from dnmp.data.scene import Camera, Frame, PointCloud, load_scene, write_scene_json

# Frames per camera the projection check looks at: the first, middle and last of each camera.
CHECK_PICKS = 3
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def convert(read: Callable[..., Capture], source, out, overwrite: bool = False, **options):
    """``convert_<format>``: ``read(source, **reader options)`` -> Capture, then
    :func:`write_capture` into ``out`` atomically. Each option goes to the
    reader and/or the writer, whichever takes it by name (``quiet`` to both);
    an option neither takes is refused. Returns the loaded Scene. Raises
    ConversionError (one line naming the file) on bad input or a failed check."""
    takes = lambda fn: set(inspect.signature(fn).parameters) - {"source", "capture", "out"}
    rk, wk = takes(read), takes(write_capture)
    unknown = sorted(set(options) - rk - wk)
    if unknown:
        raise ConversionError(source, f"unknown option(s) {', '.join(unknown)}")
    wopts = {k: v for k, v in options.items() if k in wk}
    check_output(out, overwrite)  # before the reading, which can take long
    check_write_options(out, **wopts)
    capture = read(source, **{k: v for k, v in options.items() if k in rk})
    return convert_atomically(out, overwrite, lambda staging: write_capture(capture, staging, **wopts))


def check_write_options(out, downscale: float = 1.0, max_depth: float = 80.0, stereo_max_depth: float = 40.0,
                        min_range: float = 2.5, stereo_near_depth: float = 25.0, **_) -> None:
    """Refuse (ConversionError naming ``out``) a downscale below 1 and
    non-positive depth ranges before any reading."""
    if not downscale >= 1:
        raise ConversionError(out, f"downscale must be >= 1, got {downscale}")
    if not max_depth > 0 or not stereo_max_depth > 0 or not stereo_near_depth > 0:
        raise ConversionError(out, "--max-depth, --stereo-max-depth and --stereo-near-depth must be > 0")
    if not min_range >= 0:
        raise ConversionError(out, f"--min-range must be >= 0, got {min_range}")


def recentre(centres) -> tuple:
    """(world_offset, shift): the mean of the camera ``centres`` [N, 3] and the
    4x4 translation by minus it that takes dataset coordinates to scene ones."""
    world_offset = np.mean(np.asarray(centres, np.float64), axis=0)
    return world_offset, translation(-world_offset)


# Smallest written image side (pixels): below it a frame holds too few pixels to train on, and a
# large --downscale is far more likely a typo (e.g. 300 for 3) than a wish.
MIN_IMAGE_SIDE = 16


def output_cameras(cameras: dict, downscale: float, where=None) -> dict:
    """name -> Camera of the written images (``downscale_camera`` unless 1).
    Raises ConversionError (naming ``where``, if given) when a camera's image would be
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




def _image_file(f, cam: Camera, plain: bool):
    """(decoded uint8 image [H, W] or [H, W, C], what to copy byte for byte
    or None, file suffix) of a CaptureFrame's image. Sources are copied as
    stored when nothing changes the pixels (``plain``) and they are an 8-bit
    grey or RGB PNG/JPEG (file or encoded bytes)."""
    where = f.image if isinstance(f.image, Path) else f.name
    if isinstance(f.image, Path):
        img, suffix = read_image(f.image), f.image.suffix.lower()
        copy = f.image if suffix in IMAGE_SUFFIXES else None
    elif isinstance(f.image, (bytes, bytearray)):
        img = read_image(bytes(f.image), where)
        suffix, copy = (".png" if f.image[:4] == b"\x89PNG" else ".jpg"), bytes(f.image)
    else:
        img, suffix, copy = np.asarray(f.image()), ".png", None
    if img.shape[:2] != (cam.height, cam.width):
        raise ConversionError(where, f"image is {img.shape[1]}x{img.shape[0]}, camera {f.camera} "
                              f"is {cam.width}x{cam.height}")
    if not plain or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        copy = None
    return img, copy, (suffix if copy is not None else ".png")


def write_capture(
    capture: Capture,
    out,
    *,
    downscale: float = 1.0,
    max_depth: float = 80.0,
    min_range: float = 2.5,
    depth: bool = True,
    stereo: bool = True,
    stereo_max_depth: float = 40.0,
    stereo_near_depth: float = 25.0,
    voxel: float = 0.05,
    outlier_neighbors: int = 20,
    sanity: bool = True,
    min_sanity_fraction: float = 0.2,
    name: str | None = None,
    quiet: bool = False,
):
    """Write ``capture`` as a dnmp scene into ``out`` (an empty staging folder).

    Steps: print the expected training memory and time; recentre on the mean
    camera centre (``world_offset``), timestamps relative to the earliest
    frame; images (copied byte for byte when nothing changes them, else
    undistorted / area-downscaled by ``downscale`` and written as PNG; grey
    sources stay single-channel, their camera gets ``channels`` 1); each
    scan without returns closer than ``min_range`` metres to its sensor (the
    ego vehicle), z-buffered into ``depth/<camera>/<stem>.png`` of the frames
    that name it (``depth``); the projection check of the fused, un-cropped
    points (LiDAR, else the first other cloud) in the first, middle and last
    frame of every camera and the scan agreement of the reference camera's
    (``sanity``); ``points/lidar.ply`` (cropped to what frames see within
    ``max_depth`` metres, ``voxel`` + outlier filtered), other clouds,
    ``points/stereo.ply`` (SGBM within ``stereo_near_depth``),
    ``points/stereo_far.ply`` (beyond it, within ``stereo_max_depth``) and
    stereo depth images (``stereo``); scene.json, the summary, ``overview.png``,
    ``conversion_report.json``. Raises ConversionError on broken input, a
    failed check or a scene that would get no points. Returns the Scene."""
    import imageio.v3 as iio

    log = logger(quiet)
    out = Path(out)
    check_write_options(out, downscale, max_depth, stereo_max_depth, min_range, stereo_near_depth)
    frames_in, cameras = list(capture.frames), capture.cameras
    if not frames_in:
        raise ConversionError(out, "no frames selected")
    pair = capture.stereo if stereo else None
    lidar_points = [p for p in capture.points if p.kind == "lidar"]
    other_points = [p for p in capture.points if p.kind != "lidar" and len(p.xyz)]
    if not capture.scans and not lidar_points and not other_points and pair is None:
        raise ConversionError(capture.calib_path, "the scene would get no points (no LiDAR, no other points, "
                              + ("stereo off" if capture.stereo else "no stereo pair")
                              + "); dnmp train needs points to place primitives")
    out_cams = output_cameras(cameras, downscale)
    world_offset, shift = recentre([f.cam_to_world[:3, 3] for f in frames_in])
    t0 = min(f.timestamp for f in frames_in)
    ref = capture.ref_camera or frames_in[0].camera
    along = sorted((f for f in frames_in if f.camera == ref), key=lambda f: f.timestamp)
    estimate = training_estimate([(out_cams[f.camera].width * out_cams[f.camera].height, f.split) for f in frames_in],
                                 [f.cam_to_world[:3, 3] for f in along],
                                 lidar=bool(capture.scans or lidar_points))
    log(estimate["line"])

    frames, images_full, channels = [], {}, {}
    for cf in progress(frames_in, quiet, desc="images", unit="img"):
        cam = cameras[cf.camera]
        undistort = cf.camera in capture.distortion
        native, copy, suffix = _image_file(cf, cam, downscale == 1 and not undistort)
        grey = native.ndim == 2 or native.shape[2] == 1
        nch = channels.setdefault(cf.camera, 1 if grey else 3)
        if nch != (1 if grey else 3):
            raise ConversionError(cf.image if isinstance(cf.image, Path) else cf.name,
                                  f"image is {'grayscale' if grey else 'colour'} but earlier images of {cf.camera} "
                                  f"are {'grayscale' if nch == 1 else 'colour'}")
        img = as_rgb8(native, cf.name)
        rel = f"images/{cf.camera}/{cf.stem}{suffix}"
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(copy, Path):
            shutil.copyfile(copy, dst)  # byte-exact
        elif copy is not None:
            dst.write_bytes(copy)  # the encoded image as stored (no re-encoding)
        else:
            keep = native.reshape(native.shape[:2]) if grey else img  # grey stays single-channel
            if undistort:
                keep = undistort_image(keep, cam, capture.distortion[cf.camera])
            iio.imwrite(dst, downscale_image(keep, downscale) if downscale != 1 else keep)
        if pair and cf.split == "train" and cf.camera in (pair.left, pair.right):
            images_full[(cf.stem, cf.camera)] = img
        frames.append(Frame(image=rel, camera=cf.camera, cam_to_world=shift @ cf.cam_to_world,
                            timestamp=cf.timestamp - t0, split=cf.split, name=cf.name, root=out))
    for c in [c for c, n in channels.items() if n == 1]:
        out_cams[c] = dataclasses.replace(out_cams[c], channels=1)

    report = dict(capture.report)
    report.update({"downscale": downscale, "max_depth": max_depth, "min_range": min_range, "stereo": bool(pair),
                   "stereo_max_depth": stereo_max_depth, "stereo_near_depth": stereo_near_depth, "voxel": voxel,
                   "undistorted": sorted(capture.distortion),
                   "first_timestamp": t0, "world_offset": world_offset.tolist(), "training_estimate": estimate})
    grey_cams = sorted(c for c, n in channels.items() if n == 1)
    if grey_cams:
        report["grayscale_cameras"] = grey_cams
    picks = [f for c in out_cams for f in _first_middle_last([f for f in frames if f.camera == c])]
    point_clouds = []

    # LiDAR: scans (ego returns dropped, depth images) + clouds of kind "lidar"
    per_scan, raw_total = [], 0
    for k, sc in enumerate(progress(capture.scans, quiet, desc="lidar", unit="scan")):
        world, rng = sc.load()
        raw_total += len(world)
        world = transform(shift, np.asarray(world, np.float64).reshape(-1, 3)[np.asarray(rng) > min_range])
        per_scan.append(world)
        if depth:
            for cf, f in zip(frames_in, frames):
                if cf.scan == k:
                    write_frame_depth(out, f, world, out_cams[f.camera], max_depth, cf.stem)
    parts = list(per_scan)
    for p in lidar_points:
        parts.append(transform(shift, np.asarray(p.xyz, np.float64).reshape(-1, 3)))
        raw_total += len(p.xyz)
    probe_clouds = [("lidar", np.concatenate(parts))] if parts else []
    probe_clouds += [(p.kind, transform(shift, np.asarray(p.xyz, np.float64).reshape(-1, 3))) for p in other_points]
    if sanity and probe_clouds:
        kind, cloud = probe_clouds[0]
        # Un-cropped cloud: a crop to the views would hide a convention bug.
        probe, _ = clean_points(cloud, voxel=0.2 if kind == "lidar" else 0.0, nb_neighbors=0)
        log(f"projection sanity check ({kind} points, un-cropped):")
        san = projection_sanity(probe, picks, out_cams, capture.check_max_depth or max_depth,
                                min_fraction=min_sanity_fraction, where=capture.calib_path, verbose=not quiet,
                                ground=kind == "lidar")
        report["sanity"] = {"cloud": kind, "mean_fraction": san["mean"], "per_frame": san["per_frame"],
                            "ground": san["ground"]}
        if len(per_scan) > 1:
            scan_of = {f.name: cf.scan for cf, f in zip(frames_in, frames) if cf.scan is not None}
            chk = [f for f in picks if f.camera == ref and f.name in scan_of]
            own = [per_scan[scan_of[f.name]] for f in chk]
            oth = [np.concatenate([w for j, w in enumerate(per_scan) if j != scan_of[f.name]]) for f in chk]
            agr = scan_agreement(chk, out_cams, own, oth, max_depth, where=capture.pose_path, verbose=not quiet)
            report["scan_agreement"] = {"mean_fraction": agr["mean"], "per_frame": agr["per_frame"]}
    if parts:
        fused = probe_clouds[0][1]
        keep = crop_to_views(fused, frames, out_cams, max_depth)
        xyz, _ = clean_points(fused[keep], voxel=voxel, nb_neighbors=outlier_neighbors)
        point_clouds.append(write_points(out, "points/lidar.ply", "lidar", xyz))
        report["lidar"] = {"scans": len(per_scan), "raw": raw_total, "in_view": int(keep.sum()), "written": len(xyz)}
        log(f"lidar: {raw_total} raw points ({len(per_scan)} scans), {int(keep.sum())} seen by a frame "
            f"within {max_depth:g} m, {len(xyz)} after {voxel:g} m voxels + outlier removal")

    for p, (_, xyz) in zip(other_points, probe_clouds[1 if parts else 0:]):
        rgb = None if p.rgb is None else np.asarray(p.rgb)
        if rgb is not None and rgb.dtype == np.uint8:
            rgb = rgb.astype(np.float32) / 255.0
        xyz2, rgb2 = clean_points(xyz, rgb, voxel=voxel, nb_neighbors=outlier_neighbors)
        point_clouds.append(write_points(out, f"points/{p.kind}.ply", p.kind, xyz2, rgb2))
        report[p.kind] = {"raw": len(xyz), "written": len(xyz2)}
        log(f"{p.kind}: {len(xyz)} points, {len(xyz2)} after {voxel:g} m voxels + outlier removal")

    if pair:
        point_clouds += write_stereo_points(out, frames, cameras, out_cams, images_full, pair, shift,
                                            stereo_max_depth, max_depth, voxel, outlier_neighbors, report, quiet,
                                            depth_images=depth, check_poses=sanity and "scan_agreement" not in report,
                                            pose_path=capture.pose_path, stereo_near_depth=stereo_near_depth)
    images_full.clear()

    write_scene_json(out, name or capture.name, capture.source, world_offset, out_cams, frames, point_clouds)
    scene = load_scene(out)
    report["summary"] = print_summary(scene, ref, quiet)
    overview = write_overview(scene, out / "overview.png")
    log(f"  overview picture: {overview.name} in the scene folder (top-down: points, cameras)")
    with open(out / "conversion_report.json", "w") as fh:
        json.dump(report, fh, indent=1, default=float)
        fh.write("\n")
    return scene


def _first_middle_last(frames: Sequence[Frame]) -> list:
    """The first, middle and last of ``frames`` (fewer when there are fewer)."""
    return [frames[k] for k in sorted({0, len(frames) // 2, len(frames) - 1})] if frames else []


def write_points(root, rel_path: str, kind: str, xyz, rgb=None) -> PointCloud:
    """Write ``rel_path`` (PLY, scene coordinates) and return its PointCloud entry."""
    write_ply_points(Path(root) / rel_path, xyz, rgb)
    return PointCloud(path=rel_path, kind=kind, root=Path(root))


def undistort_image(img: np.ndarray, cam: Camera, coeffs) -> np.ndarray:
    """Remove lens distortion with OpenCV (``cv2.undistort``), keeping the
    pinhole intrinsics ``cam`` (OpenCV pixel-centre convention) for the output.
    ``coeffs``: OpenCV order (k1, k2, p1, p2[, k3[, k4, k5, k6]])."""
    import cv2

    intrinsics = np.array([[cam.fx, 0, cam.cx], [0, cam.fy, cam.cy], [0, 0, 1.0]])
    return cv2.undistort(img, intrinsics, np.asarray(coeffs, np.float64))


def check_output(out, overwrite: bool) -> None:
    """Refuse (ConversionError naming ``out``) an existing file, and a
    non-empty folder unless ``overwrite`` and it is a dnmp scene."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            what = "output folder exists and is not empty" if out.is_dir() else "output path is an existing file"
            raise ConversionError(out, f"{what} (use --overwrite to replace a dnmp scene)")
        if not (out / "scene.json").is_file():
            raise ConversionError(out, "refusing to overwrite a non-empty folder that is not a dnmp scene")


def convert_atomically(out, overwrite: bool, convert_into: Callable[[Path], object]):
    """Run ``convert_into(staging)`` into a hidden sibling folder of ``out`` and
    rename it into place only when it succeeded, so a failed or interrupted
    conversion leaves no half-written scene (and an existing scene intact
    until the new one is complete). Refuses a non-empty ``out`` unless
    ``overwrite``, and never overwrites a folder that is not a dnmp scene.
    Returns the loaded Scene."""
    out = Path(out)
    check_output(out, overwrite)
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

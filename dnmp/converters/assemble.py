"""The second half of the multi-sensor converters (waymo, nuscenes, dgp, colmap).

A format module reads its own tables and produces a list of
:class:`PlannedFrame` (one per output image: camera, OpenCV ``cam_to_world`` in
the dataset's world frame, timestamp, split, a way to load the image) and a list
of :class:`PlannedScan` (LiDAR scans already in that world frame, tied to the
frames they were taken with). :func:`assemble_scene` then does what every
converter does the same way (DESIGN.md): recentre on ``world_offset`` (the mean
camera centre), undistort (when asked) and downscale the images, write sparse
per-frame depth from each frame's own scan, fuse the scans (crop to what the
frames see, voxel down-sampling + outlier removal), run the projection sanity
check, write scene.json, print the summary and draw overview.png. Before the
heavy work it prints the expected training memory and time
(:func:`dnmp.converters.common.training_estimate`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dnmp.converters.common import (  # noqa: F401  (as_rgb8: re-exported)
    ConversionError,
    as_rgb8,
    check_downscale,
    clean_points,
    finish_scene,
    logger,
    output_cameras,
    progress,
    projection_sanity,
    read_image_native,
    recentre,
    training_estimate,
    transform,
    undistort_image,
    write_frame_depth,
    write_lidar_cloud,
    write_points,
    write_scene,
)
from dnmp.data.scene import Frame, downscale_image


@dataclass
class PlannedFrame:
    """One output image, before recentring.

    name: unique frame id ``<camera>/<stem>``; cam_to_world: float64 [4, 4],
    OpenCV camera -> dataset world (metres); timestamp: seconds (any origin;
    made relative to the earliest frame); split: "train" / "test";
    image: a source file or encoded JPEG/PNG bytes (stored as they are when
    nothing changes the pixels) or a callable returning uint8 [H, W, 3]; scan: index into the scan list whose
    points give this frame's sparse depth (None = no depth).
    """

    name: str
    camera: str
    cam_to_world: np.ndarray
    timestamp: float
    split: str
    image: Path | bytes | Callable[[], np.ndarray]
    scan: int | None = None


@dataclass
class PlannedScan:
    """One LiDAR sweep: ``load()`` returns world-frame points float64 [N, 3]
    (dataset world, metres, before recentring); ``where`` names its file."""

    load: Callable[[], np.ndarray]
    where: str = ""


@dataclass
class ExtraPoints:
    """A point cloud that is not LiDAR (e.g. COLMAP's sfm points): world frame
    (before recentring) float64 [N, 3], optional rgb uint8/float [N, 3]."""

    kind: str
    xyz: np.ndarray
    rgb: np.ndarray | None = None


def read_image_file(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] from a PNG/JPEG file (grey repeated, alpha dropped)."""
    return as_rgb8(read_image_native(path), Path(path))


def decode_image_bytes(data: bytes, where) -> np.ndarray:
    """uint8 [H, W, 3] from encoded JPEG/PNG bytes (e.g. a Parquet cell)."""
    import cv2

    buf = np.frombuffer(data or b"", np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise ConversionError(where, "corrupt or undecodable image bytes")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return as_rgb8(img, where)


def assemble_scene(
    out: Path,
    *,
    name: str,
    source: dict,
    cameras: dict,
    frames: Sequence[PlannedFrame],
    scans: Sequence[PlannedScan] = (),
    extra_points: Sequence[ExtraPoints] = (),
    distortion: dict | None = None,
    downscale: float = 1.0,
    max_depth: float = 80.0,
    depth: bool = True,
    voxel: float = 0.05,
    outlier_neighbors: int = 20,
    sanity: bool = True,
    min_sanity_fraction: float = 0.2,
    sanity_max_depth: float | None = None,
    sanity_where="projection check",
    report: dict | None = None,
    ref_camera: str | None = None,
    quiet: bool = False,
):
    """Write the dnmp scene into ``out`` (an empty staging folder) from planned
    frames and scans; see the module docstring. Returns the loaded Scene.

    cameras: name -> full-resolution :class:`Camera` (OpenCV pinhole; for a
    distorted camera, the pinhole part). distortion: name -> OpenCV
    coefficients (k1, k2, p1, p2[, k3...]) for cameras whose images must be
    undistorted (the converter decides whether that is allowed). downscale:
    image size divisor (>= 1). max_depth: metres, for depth images and the
    LiDAR crop. The sanity check projects the fused, un-cropped cloud (LiDAR,
    or else the first extra cloud) into the frames and raises ConversionError
    on a convention bug; ``sanity_max_depth`` overrides its depth range (for
    up-to-scale COLMAP models); ``sanity_where`` names the calibration file
    its error blames. Raises ConversionError for images whose size
    differs from their camera's.
    """
    log = logger(quiet)
    out = Path(out)
    distortion = distortion or {}
    if not frames:
        raise ConversionError(out, "no frames selected")
    check_downscale(downscale, out)
    world_offset, shift = recentre([f.cam_to_world[:3, 3] for f in frames])
    t0 = min(f.timestamp for f in frames)
    out_cams = output_cameras(cameras, downscale)
    along = sorted((f for f in frames if f.camera == (ref_camera or frames[0].camera)), key=lambda f: f.timestamp)
    estimate = training_estimate([(out_cams[f.camera].width * out_cams[f.camera].height, f.split) for f in frames],
                                 [f.cam_to_world[:3, 3] for f in along], lidar=bool(scans))
    log(estimate["line"])

    out_frames = []
    for pf in progress(frames, quiet, desc="images", unit="img"):
        cam = cameras[pf.camera]
        plain = downscale == 1 and pf.camera not in distortion
        stem = pf.name.split("/", 1)[1] if "/" in pf.name else pf.name
        if isinstance(pf.image, Path) and plain and pf.image.suffix.lower() in (".png", ".jpg", ".jpeg"):
            img = read_image_file(pf.image)  # decoded to check it, then copied byte for byte
            rel = f"images/{pf.camera}/{stem}{pf.image.suffix.lower()}"
        elif isinstance(pf.image, bytes):
            img = decode_image_bytes(pf.image, pf.name)
            ext = ".png" if pf.image[:4] == b"\x89PNG" else ".jpg"
            rel = f"images/{pf.camera}/{stem}{ext if plain else '.png'}"
        else:
            img = read_image_file(pf.image) if isinstance(pf.image, Path) else pf.image()
            rel = f"images/{pf.camera}/{stem}.png"
        where = pf.image if isinstance(pf.image, Path) else pf.name
        if img.shape[:2] != (cam.height, cam.width):
            raise ConversionError(where, f"image is {img.shape[1]}x{img.shape[0]}, camera {pf.camera} "
                                  f"is {cam.width}x{cam.height}")
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if plain and isinstance(pf.image, bytes):
            dst.write_bytes(pf.image)  # the encoded image as stored (no re-encoding)
        elif plain and isinstance(pf.image, Path) and pf.image.suffix.lower() in (".png", ".jpg", ".jpeg"):
            shutil.copyfile(pf.image, dst)  # byte-exact
        else:
            import imageio.v3 as iio

            if pf.camera in distortion:
                img = undistort_image(img, cam, distortion[pf.camera])
            iio.imwrite(dst, downscale_image(img, downscale) if downscale != 1 else img)
        out_frames.append(Frame(image=rel, camera=pf.camera, cam_to_world=shift @ pf.cam_to_world,
                                timestamp=pf.timestamp - t0, split=pf.split, name=pf.name, root=out))

    report = dict(report or {})
    report.update({"downscale": downscale, "max_depth": max_depth, "voxel": voxel,
                   "undistorted": sorted(distortion), "first_timestamp": t0, "training_estimate": estimate})
    point_clouds = []
    probe_clouds = []

    if scans:
        per_scan, raw_total = [], 0
        for k, sc in enumerate(progress(scans, quiet, desc="lidar", unit="scan")):
            world = transform(shift, np.asarray(sc.load(), np.float64).reshape(-1, 3))
            raw_total += len(world)
            per_scan.append(world)
            if depth:
                for pf, f in zip(frames, out_frames):
                    if pf.scan == k:
                        stem = f.name.split("/", 1)[1] if "/" in f.name else f.name
                        write_frame_depth(out, f, world, out_cams[f.camera], max_depth, stem)
        fused = np.concatenate(per_scan) if per_scan else np.zeros((0, 3))
        probe_clouds.append(("lidar", fused))
        pc, n_view, n_written = write_lidar_cloud(out, fused, out_frames, out_cams, max_depth, voxel,
                                                  outlier_neighbors)
        point_clouds.append(pc)
        report["lidar"] = {"scans": len(scans), "raw": raw_total, "in_view": n_view, "written": n_written}
        log(f"lidar: {raw_total} points in {len(scans)} scans, {n_view} seen by a frame within "
            f"{max_depth:g} m, {n_written} after {voxel:g} m voxels + outlier removal")

    for ep in extra_points:
        xyz = transform(shift, np.asarray(ep.xyz, np.float64).reshape(-1, 3))
        rgb = None if ep.rgb is None else np.asarray(ep.rgb)
        if rgb is not None and rgb.dtype == np.uint8:
            rgb = rgb.astype(np.float32) / 255.0
        probe_clouds.append((ep.kind, xyz))
        xyz2, rgb2 = clean_points(xyz, rgb, voxel=voxel, nb_neighbors=outlier_neighbors)
        point_clouds.append(write_points(out, f"points/{ep.kind}.ply", ep.kind, xyz2, rgb2))
        report[ep.kind] = {"raw": len(xyz), "written": len(xyz2)}
        log(f"{ep.kind}: {len(xyz)} points, {len(xyz2)} after {voxel:g} m voxels + outlier removal")

    if sanity and probe_clouds:
        kind, cloud = probe_clouds[0]
        # Un-cropped cloud: a crop to the views would hide a convention bug.
        probe, _ = clean_points(cloud, voxel=0.2 if kind == "lidar" else 0.0, nb_neighbors=0)
        picks = out_frames if len(out_frames) <= 24 else [
            out_frames[i] for i in np.linspace(0, len(out_frames) - 1, 24).round().astype(int)]
        log(f"projection sanity check ({kind} points, un-cropped):")
        md = sanity_max_depth or max_depth
        san = projection_sanity(probe, picks, out_cams, md, min_fraction=min_sanity_fraction,
                                where=sanity_where, verbose=not quiet, ground=kind == "lidar")
        report["sanity"] = {"cloud": kind, "mean_fraction": san["mean"], "per_frame": san["per_frame"],
                            "ground": san["ground"]}

    scene = write_scene(out, name, source, world_offset, out_cams, out_frames, point_clouds)
    finish_scene(scene, report, quiet, ref_camera)
    return scene


# ----------------------------------------------------------------------------
# Command-line options every multi-sensor converter shares
# ----------------------------------------------------------------------------


def add_common_args(p, lidar: bool = True, voxel: float = 0.05) -> None:
    """Add --out, --downscale, --max-depth, --voxel, --outlier-neighbors,
    (--no-lidar, --no-depth,) --no-sanity, --name, --overwrite, --quiet."""
    p.add_argument("--out", required=True, help="output scene folder")
    p.add_argument("--downscale", type=float, default=1.0, help="image size divisor (default 1)")
    if lidar:
        p.add_argument("--max-depth", type=float, default=80.0,
                       help="LiDAR crop / depth image range, metres (80)")
    p.add_argument("--voxel", type=float, default=voxel, help=f"point voxel size, metres ({voxel:g}; 0 = off)")
    p.add_argument("--outlier-neighbors", type=int, default=20,
                   help="statistical outlier removal neighbours, 0 = off (20)")
    if lidar:
        p.add_argument("--no-lidar", action="store_true", help="skip LiDAR points and depth")
        p.add_argument("--no-depth", action="store_true", help="skip per-frame sparse depth images")
    p.add_argument("--no-sanity", action="store_true", help="skip the projection sanity check")
    p.add_argument("--name", default=None, help="scene name")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output scene")
    p.add_argument("--quiet", action="store_true")


def common_kwargs(args) -> dict:
    """The keyword arguments of :func:`add_common_args`'s options."""
    kw = dict(downscale=args.downscale, voxel=args.voxel, outlier_neighbors=args.outlier_neighbors,
              sanity=not args.no_sanity, name=args.name, overwrite=args.overwrite, quiet=args.quiet)
    if hasattr(args, "max_depth"):
        kw.update(max_depth=args.max_depth, lidar=not args.no_lidar, depth=not args.no_depth)
    return kw


def split_list(text) -> list | None:
    """'A,B, C' -> ['A', 'B', 'C']; None / '' -> None."""
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    return items or None

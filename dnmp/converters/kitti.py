"""``dnmp convert kitti``: KITTI raw drives and KITTI odometry sequences.

The layout is detected from the root: a ``sequences/`` folder means the
odometry benchmark (handled by :mod:`dnmp.converters.kitti_odometry`), anything
else is read as KITTI raw::

    <root>/<date>/calib_cam_to_cam.txt      P_rect_0i (3x4), R_rect_00 (3x3), S_rect_0i (w h), ...
    <root>/<date>/calib_velo_to_cam.txt     R (3x3), T (3): velodyne -> unrectified camera 0
    <root>/<date>/calib_imu_to_velo.txt     R (3x3), T (3): IMU/GPS (OXTS) -> velodyne
    <root>/<date>/<date>_drive_<NNNN>_sync/
        image_0i/data/NNNNNNNNNN.png        rectified images (00/01 grey, 02/03 colour)
        image_0i/timestamps.txt             "YYYY-MM-DD HH:MM:SS.fffffffff", one line per frame
        velodyne_points/data/NNNNNNNNNN.bin float32 (x, y, z, reflectance), x forward, y left, z up
        oxts/data/NNNNNNNNNN.txt            lat lon alt roll pitch yaw ... (30 values)

(``<root>`` may also be the date folder or the drive folder itself.)

Poses follow the KITTI raw devkit (``convertOxtsToPose``): Mercator scale
``s = cos(lat_0)`` from the window's first frame, IMU position
``t = (s * lon * pi * r / 180, s * r * ln(tan((90 + lat) * pi / 360)), alt)``
with r = 6378137 m, rotation ``R = Rz(yaw) Ry(pitch) Rx(roll)``, pose
``[R | t]`` = IMU -> world, then made relative to the first frame (world =
IMU frame at ``first``). The velodyne maps to the world by
``T_w_imu @ inv(T_velo_imu)``; rectified camera i (``P_rect_0i = K [I | K b_i]``,
``X_i = R_rect_00 X_cam0 + b_i``) by
``cam_i_to_world = T_w_imu @ inv(T_velo_imu) @ inv(R_rect_00 @ T_cam0_velo) @ inv(translation(b_i))``.
The devkit's projection ``y = P_rect_0i R_rect_00 T_cam0_velo x`` is the same map.

``--poses lidar`` estimates the IMU poses from the scans instead
(``T_w_imu_k = inv(T_velo_imu) V_k T_velo_imu`` with V_k from chained ICP) and
reports the drift against OXTS when its files are there.

Split: the DNMP stereo protocol (the kept frames, ``first..last`` every
``stride``-th, alternate: even positions train on both cameras, odd ones are
held out on the left camera). Only the
rectified ``_sync`` release is supported; ``_extract`` (distorted, D_0i) is
refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from dnmp.converters.capture import Capture, CaptureFrame, ConversionError, Scan
from dnmp.converters.kitti_files import camera_from_P, need, read_key_values, read_velodyne, select_cameras
from dnmp.converters.lidar_odometry import lidar_odometry, report_drift
from dnmp.converters.options import add_drive_options, drive_options, run_cli
from dnmp.converters.report import logger
from dnmp.converters.splits import drive_range, stereo_plan, stride_frames
from dnmp.converters.stereo import stereo_pair_of
from dnmp.converters.writer import convert
from dnmp.data.rigid import check_rigid, rigid_inverse, translation

ALL_CAMERAS = ("image_00", "image_01", "image_02", "image_03")
LEFT_CAMERAS = ("image_02", "image_00")
STEREO_PAIRS = (("image_02", "image_03"), ("image_00", "image_01"))
LICENCE = "KITTI: CC BY-NC-SA 3.0 (non-commercial)"
EARTH_RADIUS = 6378137.0  # metres, as in the KITTI devkit
RAW_POSES = ("auto", "oxts", "lidar")


# ----------------------------------------------------------------------------
# OXTS -> poses (KITTI raw devkit definitions)
# ----------------------------------------------------------------------------


def rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def oxts_poses(oxts: np.ndarray) -> list:
    """IMU -> world poses (float64 4x4) from OXTS records [N, >=6] (lat, lon
    in degrees, alt in metres, roll, pitch, yaw in radians), as the KITTI raw
    devkit's ``convertOxtsToPose``: Mercator with the scale of record 0's
    latitude, R = Rz(yaw) Ry(pitch) Rx(roll), then all poses relative to
    record 0's (which becomes the identity)."""
    oxts = np.asarray(oxts, np.float64)
    scale = np.cos(np.radians(oxts[0, 0]))
    out = []
    for lat, lon, alt, roll, pitch, yaw in oxts[:, :6]:
        T = np.eye(4)
        T[:3, :3] = rot_z(yaw) @ rot_y(pitch) @ rot_x(roll)
        T[:3, 3] = [scale * np.radians(lon) * EARTH_RADIUS,
                    scale * EARTH_RADIUS * np.log(np.tan(np.radians(90 + lat) / 2)),
                    alt]
        out.append(T)
    T0_inv = rigid_inverse(out[0])
    return [T0_inv @ T for T in out]


def read_oxts(path: Path) -> np.ndarray:
    """One OXTS record (float64 [>=6]) from ``oxts/data/NNNNNNNNNN.txt``."""
    if not path.is_file():
        raise ConversionError(path, "OXTS pose file is missing (fewer OXTS records than frames?); "
                              "--poses lidar estimates poses from the scans instead")
    try:
        v = np.array([float(x) for x in path.read_text().split()], np.float64)
    except ValueError:
        raise ConversionError(path, "OXTS record has non-numeric values") from None
    if v.size < 6 or not np.all(np.isfinite(v[:6])):
        raise ConversionError(path, f"OXTS record has {v.size} values, expected 30 (lat lon alt roll pitch yaw ...)")
    if abs(v[0]) > 90 or abs(v[1]) > 180:
        raise ConversionError(path, f"OXTS latitude/longitude out of range ({v[0]:g}, {v[1]:g})")
    return v


def read_raw_timestamps(path: Path, indices: Sequence[int]) -> dict:
    """{frame: seconds since the epoch (float)} from a KITTI raw
    ``timestamps.txt`` ("YYYY-MM-DD HH:MM:SS.fffffffff" per line)."""
    if not path.is_file():
        raise ConversionError(path, "timestamps file is missing")
    lines = [l.strip() for l in path.read_text().splitlines() if l.strip()]
    if len(lines) <= max(indices):
        raise ConversionError(path, f"has {len(lines)} timestamps but frames up to {max(indices)} need "
                              f"{max(indices) + 1}")
    out = {}
    for i in indices:
        try:
            t = np.datetime64(lines[i].replace(" ", "T"), "ns")
        except ValueError:
            raise ConversionError(path, f"line {i + 1} is not a 'YYYY-MM-DD HH:MM:SS.f' timestamp") from None
        out[i] = t.astype(np.int64) * 1e-9
    return out


def rigid_from_RT(calib: dict, path, what: str) -> np.ndarray:
    """4x4 from the ``R:`` (9) and ``T:`` (3) lines of a KITTI raw calibration file."""
    T = np.eye(4)
    T[:3, :3] = need(calib, "R", 9, path, what).reshape(3, 3)
    T[:3, 3] = need(calib, "T", 3, path, what)
    return check_rigid(T, path, what, orthonormalise=True)


# ----------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------


def find_drive(root: Path, drive: str | None) -> Path:
    """The ``<date>_drive_<NNNN>_sync`` folder for ``drive`` (full name, "NNNN"
    or a number) under ``root`` (the dataset root, a date folder or the drive
    folder itself); refuses ``_extract`` drives and ambiguous choices."""
    root = Path(root)
    if not root.is_dir():
        raise ConversionError(root, "dataset folder is missing")
    if "_drive_" in root.name:
        cands = [root]
    else:
        cands = sorted(p for p in list(root.glob("*_drive_*")) + list(root.glob("*/*_drive_*")) if p.is_dir())
    if drive is not None:
        d = str(drive)
        want = f"{int(d):04d}" if d.isdigit() else None
        cands = [p for p in cands if p.name == d or (want and p.name.split("_drive_")[1][:4] == want)]
    if not cands:
        raise ConversionError(root, "no KITTI raw drive folder (<date>/<date>_drive_NNNN_sync) found"
                              + (f" for drive {drive}" if drive else "")
                              + " and no sequences/ folder (KITTI odometry)")
    sync = [p for p in cands if p.name.endswith("_sync")]
    if not sync:
        raise ConversionError(cands[0], "only the unrectified '_extract' release is here (distorted images, "
                              "D_0i distortion); use the rectified '_sync' release")
    if len(sync) > 1:
        raise ConversionError(root, f"{len(sync)} drives found ({', '.join(p.name for p in sync[:6])}"
                              f"{', ...' if len(sync) > 6 else ''}); choose one with --drive")
    return sync[0]


# ----------------------------------------------------------------------------
# Converter
# ----------------------------------------------------------------------------


def convert_kitti(source, out, overwrite: bool = False, **options):
    """``dnmp convert kitti``: KITTI odometry when ``source`` has a
    ``sequences/`` folder (:func:`dnmp.converters.kitti_odometry.convert_kitti_odometry`,
    option ``drive`` refused), else KITTI raw (:func:`convert_kitti_raw`,
    option ``sequence`` refused). Returns the loaded Scene."""
    source = Path(source)
    options = {k: v for k, v in options.items() if v is not None}
    if (source / "sequences").is_dir():
        from dnmp.converters.kitti_odometry import convert_kitti_odometry

        if "drive" in options:
            raise ConversionError(source, "--drive is for KITTI raw; this is a KITTI odometry root (use --sequence)")
        if options.get("poses") == "oxts":
            raise ConversionError(source, "--poses oxts is for KITTI raw; odometry has auto, gt, semantickitti, lidar")
        return convert_kitti_odometry(source, out, overwrite=overwrite, **options)
    if "sequence" in options:
        raise ConversionError(source, "--sequence is for KITTI odometry (no sequences/ folder here); use --drive")
    if options.get("poses") in ("gt", "semantickitti"):
        raise ConversionError(source, f"--poses {options['poses']} is for KITTI odometry; raw has auto, oxts, lidar")
    return convert_kitti_raw(source, out, overwrite=overwrite, **options)


def convert_kitti_raw(source, out, overwrite: bool = False, **options):
    """Convert a KITTI raw drive into the dnmp scene folder ``out``, atomically
    (:func:`dnmp.converters.writer.convert`). Options and errors:
    :func:`read_kitti_raw` and :func:`dnmp.converters.writer.write_capture`.
    Returns the loaded Scene."""
    return convert(read_kitti_raw, source, out, overwrite, **options)


def read_kitti_raw(
    source,
    drive: str | None = None,
    first: int | None = None,
    last: int | None = None,
    window: str | None = None,
    stride: int = 1,
    cameras: Sequence[str] = ("image_02", "image_03"),
    poses: str = "auto",
    lidar: bool = True,
    stereo: bool = True,
    quiet: bool = False,
    icp_voxel: float = 0.2,
    icp_max_distance: float = 0.5,
    min_icp_fitness: float = 0.3,
) -> Capture:
    """Read frames ``first..last`` (inclusive; default all images of the
    left camera; or ``window`` "START:LEN"), every ``stride``-th, of a KITTI
    raw drive into a :class:`Capture`.

    cameras: among image_00..image_03 (default image_02,image_03); the first
    left camera (image_02, else image_00) holds the test frames. poses: "auto"
    / "oxts" (the devkit's OXTS poses) or "lidar" (chained ICP of the scans,
    :func:`dnmp.converters.lidar_odometry.icp_poses`). stereo: False leaves
    the stereo pair out. Raises
    ConversionError (one line naming the file) on a missing file or
    calibration key, a truncated scan, too few OXTS records or timestamps, a
    non-rigid transform, an unrectified camera or a failed check.
    """
    log = logger(quiet)
    first, last = drive_range(first, last, window, stride, source)
    drive_dir = find_drive(Path(source), drive)
    date_dir = drive_dir.parent
    cameras = select_cameras(cameras, ALL_CAMERAS, drive_dir)
    if poses not in RAW_POSES:
        raise ConversionError(drive_dir, f"poses must be one of {', '.join(RAW_POSES)}, got {poses!r}")
    held_out_cam = next((c for c in LEFT_CAMERAS if c in cameras), cameras[0])

    # frames
    img_dir = drive_dir / held_out_cam / "data"
    if not img_dir.is_dir():
        raise ConversionError(img_dir, "image folder is missing")
    avail = sorted(int(p.stem) for p in img_dir.glob("*.png") if p.stem.isdigit())
    if not avail:
        raise ConversionError(img_dir, "no NNNNNNNNNN.png images found")
    first = avail[0] if first is None else first
    last = avail[-1] if last is None else last
    if first < 0 or last < first:
        raise ConversionError(drive_dir, f"invalid frame range {first}..{last}")
    indices = stride_frames(range(first, last + 1), stride)

    # calibration
    c2c_path = date_dir / "calib_cam_to_cam.txt"
    v2c_path = date_dir / "calib_velo_to_cam.txt"
    i2v_path = date_dir / "calib_imu_to_velo.txt"
    c2c = read_key_values(c2c_path)
    R_rect = np.eye(4)
    R_rect[:3, :3] = need(c2c, "R_rect_00", 9, c2c_path, "rectification").reshape(3, 3)
    R_rect = check_rigid(R_rect, c2c_path, "R_rect_00", orthonormalise=True)
    T_rect_velo = R_rect @ rigid_from_RT(read_key_values(v2c_path), v2c_path, "velodyne -> camera 0")
    T_velo_imu = rigid_from_RT(read_key_values(i2v_path), i2v_path, "IMU -> velodyne")
    full_cams, offsets = {}, {}
    for c in cameras:
        k = c[-2:]
        P = need(c2c, f"P_rect_{k}", 12, c2c_path, c).reshape(3, 4)
        S = need(c2c, f"S_rect_{k}", 2, c2c_path, c)
        full_cams[c], offsets[c] = camera_from_P(P, c, int(round(S[0])), int(round(S[1])), c2c_path, f"P_rect_{k}")

    # poses: IMU -> world (world = IMU at `first`)
    report = {"converter": "dnmp.converters.kitti", "layout": "kitti-raw", "drive": drive_dir.name,
              "first": first, "last": last, "cameras": cameras}
    oxts_dir = drive_dir / "oxts" / "data"
    if poses == "lidar":
        pose_path, pose_kind = drive_dir / "velodyne_points" / "data", "lidar"
        est, st = lidar_odometry([pose_path / f"{i:010d}.bin" for i in indices], rigid_inverse(T_velo_imu),
                                 T_velo_imu, "kitti raw", pose_path, icp_voxel, icp_max_distance, min_icp_fitness,
                                 quiet)
        T_w_imu = dict(zip(indices, est))
        report["lidar_poses"] = st
        if all((oxts_dir / f"{i:010d}.txt").is_file() for i in indices):
            ref = oxts_poses(np.stack([read_oxts(oxts_dir / f"{i:010d}.txt") for i in indices]))
            report_drift(est, ref, "OXTS", st, "vs_oxts", quiet)
    else:
        pose_path, pose_kind = oxts_dir, "oxts"
        recs = np.stack([read_oxts(oxts_dir / f"{i:010d}.txt") for i in indices])
        T_w_imu = {i: check_rigid(T, oxts_dir / f"{i:010d}.txt", f"OXTS pose of frame {i}", orthonormalise=True)
                   for i, T in zip(indices, oxts_poses(recs))}
    times = read_raw_timestamps(drive_dir / held_out_cam / "timestamps.txt", indices)
    log(f"kitti raw: {drive_dir.name}, frames {first}..{last}, cameras {cameras}, poses {pose_kind}")

    T_w_velo = {i: T_w_imu[i] @ rigid_inverse(T_velo_imu) for i in indices}
    T_velo_rect = rigid_inverse(T_rect_velo)
    cam_pose = {c: T_velo_rect @ rigid_inverse(translation(offsets[c])) for c in cameras}
    stereo_pair = stereo_pair_of(STEREO_PAIRS, cameras, full_cams, offsets, c2c_path, stereo)
    report.update({"poses": pose_kind, "pose_source": str(pose_path)})
    velo_dir = drive_dir / "velodyne_points" / "data"
    scans = [Scan.rigid(lambda i=i: read_velodyne(velo_dir / f"{i:010d}.bin")[:, :3], T_w_velo[i],
                        str(velo_dir / f"{i:010d}.bin")) for i in indices] if lidar else []
    frames = [CaptureFrame(f"{c}/{i:010d}", c, T_w_velo[i] @ cam_pose[c], times[i], split,
                           drive_dir / c / "data" / f"{i:010d}.png", scan=indices.index(i) if lidar else None)
              for i, c, split in stereo_plan(indices, cameras, held_out_cam)]
    src = {"dataset": "KITTI raw", "sequence": drive_dir.name, "licence": LICENCE, "frames": [first, last],
           "poses": pose_kind, **({"stride": stride} if stride > 1 else {})}
    return Capture(name=f"kitti_{drive_dir.name.replace('_sync', '')}", source=src, cameras=full_cams,
                   frames=frames, scans=scans, stereo=stereo_pair, report=report, calib_path=c2c_path,
                   pose_path=pose_path, ref_camera=held_out_cam)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnmp convert kitti",
        description="Convert KITTI raw (<root>/<date>/<date>_drive_NNNN_sync) or KITTI odometry "
                    "(<root>/sequences/<seq>) into a dnmp scene; the layout is detected from the folder.",
    )
    p.add_argument("root", help="dataset root (raw: root, date or drive folder; odometry: folder with sequences/)")
    p.add_argument("--drive", default=None, help="raw: drive number (e.g. 0001) or folder name; "
                   "needed when the root holds several drives")
    p.add_argument("--sequence", "--seq", default=None, help="odometry: sequence id (default 00)")
    p.add_argument("--poses", default=None, choices=("auto", "oxts", "gt", "semantickitti", "lidar"),
                   help="raw: oxts (default) or lidar; odometry: auto (default), gt, semantickitti or lidar. "
                   "lidar estimates poses by scan-to-scan ICP and reports the drift against recorded poses")
    add_drive_options(p, None, lidar_poses=True, cameras_help="default image_02,image_03 (odometry: image_2,"
                      "image_3 if present, else the grayscale pair image_0,image_1)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # cameras None (not given): convert_kitti drops it, the layout's default applies
    return run_cli(lambda: convert_kitti(args.root, args.out, drive=args.drive, sequence=args.sequence,
                                         **drive_options(args)))


if __name__ == "__main__":
    sys.exit(main())

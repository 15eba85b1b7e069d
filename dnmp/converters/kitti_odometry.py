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
- ``--poses lidar`` (no pose file needed): scan-to-scan ICP gives V_k (velodyne
  at frame k -> velodyne at ``first``); camera 0's pose is then
  ``Tr @ V_k @ inv(Tr)`` and the world is camera 0 at ``first``.

What is converted when not told (no ``--cameras``, LiDAR not switched off):
the colour pair image_2/image_3 if the sequence has it, else the grayscale pair
image_0/image_1 (stored single-channel, camera ``channels`` 1); LiDAR when the
sequence has a ``velodyne/`` folder, else points and depth from SGBM stereo
only. The choice is printed in one line and kept in the report (``auto``).

Split (DNMP protocol for stereo forward drives, DESIGN.md): the kept frames
(``first..last``, every ``stride``-th) alternate: even positions train on both
cameras; odd ones are held out on the left camera only (image_2, or image_0
for the grey pair); right images of odd frames are not used.

Outputs: images (PNG), ``depth/<camera>/<frame>.png`` sparse depth from each
frame's own scan (uint16, metres*256), ``points/lidar.ply`` (all scans fused,
cropped to what the frames see within ``max_depth``, voxel-down-sampled,
outliers removed), ``points/stereo.ply`` (SGBM depth of TRAIN stereo pairs only,
left-right consistent, within ``stereo_max_depth``, with colours),
``depth_stereo/<camera>/<frame>.png`` (that SGBM depth per training frame, same
encoding), and a ``conversion_report.json`` with the options and the numbers
printed. The scene is written by :mod:`dnmp.converters.writer`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from dnmp.converters.capture import Capture, CaptureFrame, ConversionError, Scan
from dnmp.converters.kitti_files import camera_from_P, read_velodyne, select_cameras
from dnmp.converters.lidar_odometry import lidar_odometry, report_drift
from dnmp.converters.options import add_drive_options, drive_options, run_cli
from dnmp.converters.report import logger
from dnmp.converters.splits import drive_range, stereo_plan, stride_frames
from dnmp.converters.stereo import stereo_pair_of
from dnmp.converters.writer import convert
from dnmp.data.images import as_rgb8, read_image
from dnmp.data.rigid import check_rigid, rigid_inverse, translation

LEFT_CAMERAS = ("image_0", "image_2")
STEREO_PAIRS = (("image_2", "image_3"), ("image_0", "image_1"))
ALL_CAMERAS = ("image_0", "image_1", "image_2", "image_3")
LICENCE = "KITTI: CC BY-NC-SA 3.0 (non-commercial); SemanticKITTI poses: CC BY-NC-SA"
POSE_CHOICES = ("auto", "gt", "semantickitti", "lidar")


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


def _frame_lines(path: Path, first: int, last: int, what: str, hint: str = "") -> list:
    """The non-empty lines of a one-line-per-frame file, refusing a missing
    file or one too short for frames ``first..last``."""
    if not path.is_file():
        raise ConversionError(path, f"{what} file is missing{hint}")
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    if len(lines) <= last:
        raise ConversionError(path, f"{what} file has {len(lines)} {what}s but frames {first}..{last} need "
                              f"{last + 1}")
    return lines


def read_poses(path: Path, first: int, last: int) -> dict:
    """{frame: rigid float64 4x4} for frames first..last from a KITTI pose file."""
    lines = _frame_lines(path, first, last, "pose", " (--poses lidar estimates poses from the scans)")
    out = {}
    for i in range(first, last + 1):
        try:
            v = np.array([float(x) for x in lines[i].split()], np.float64)
        except ValueError:
            raise ConversionError(path, f"line {i + 1} has non-numeric values") from None
        if v.size != 12:
            raise ConversionError(path, f"line {i + 1} has {v.size} numbers, expected 12 (3x4)")
        out[i] = check_rigid(v.reshape(3, 4), path, f"pose of frame {i} (line {i + 1})", orthonormalise=True)
    return out


def read_times(path: Path, first: int, last: int) -> dict:
    """{frame: seconds} for frames first..last from a KITTI times.txt."""
    lines = _frame_lines(path, first, last, "timestamp")
    try:
        return {i: float(lines[i].split()[0]) for i in range(first, last + 1)}
    except ValueError:
        raise ConversionError(path, "non-numeric timestamp") from None


# ----------------------------------------------------------------------------
# Converter
# ----------------------------------------------------------------------------


def pick_cameras(seq_dir: Path) -> list:
    """The cameras to convert when none are given: the first stereo pair of
    :data:`STEREO_PAIRS` (colour image_2/image_3, then grayscale image_0/image_1)
    whose two image folders exist. Raises ConversionError naming ``seq_dir``
    when there is none (e.g. image_0 without image_1)."""
    have = [c for c in ALL_CAMERAS if (seq_dir / c).is_dir()]
    for l, r in STEREO_PAIRS:
        if l in have and r in have:
            return [l, r]
    if not have:
        raise ConversionError(seq_dir, f"no image folder ({', '.join(ALL_CAMERAS)})")
    lone = have[0]
    partner = next(b if a == lone else a for a, b in STEREO_PAIRS if lone in (a, b))
    raise ConversionError(seq_dir, f"{lone} has no stereo partner {partner} (no complete camera pair); "
                          f"pass --cameras {lone} to convert the one camera (it then needs velodyne/ for points)")


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
    Options and errors: :func:`read_kitti_odometry` and :func:`dnmp.converters.writer.write_capture`.
    Returns the loaded Scene.
    """
    return convert(read_kitti_odometry, root, out, overwrite, **options)


def read_kitti_odometry(
    root,
    sequence: str = "00",
    first: int | None = None,
    last: int | None = None,
    window: str | None = None,
    stride: int = 1,
    cameras: Sequence[str] | None = None,
    poses: str = "auto",
    lidar: bool = True,
    stereo: bool = True,
    quiet: bool = False,
    icp_voxel: float = 0.2,
    icp_max_distance: float = 0.5,
    min_icp_fitness: float = 0.3,
) -> Capture:
    """Read ``<root>/sequences/<sequence>`` frames ``first..last`` (inclusive;
    default all images; or ``window`` "START:LEN"), every ``stride``-th, into
    a :class:`Capture`. Raises :class:`ConversionError` (a SceneError /
    ValueError with a one-line message naming the file) on unsupported input.

    cameras: None = :func:`pick_cameras` (colour pair, else grayscale pair).
    lidar: use the velodyne scans; when the sequence has no ``velodyne/``
    folder the converter goes stereo-only by itself (and says so).

    poses: "auto" (SemanticKITTI ``sequences/<seq>/poses.txt`` if present, else
    ``poses/<seq>.txt``), "gt", "semantickitti", or "lidar": estimated from
    the velodyne scans by chained point-to-plane ICP (:func:`icp_poses`, with
    ``icp_voxel`` / ``icp_max_distance`` metres, failing below
    ``min_icp_fitness``); the world is then camera 0 of frame ``first``, and
    when a pose file exists the drift against it is printed and reported.
    stereo: False leaves the stereo pair out (no SGBM points).
    """
    log = logger(quiet)
    root = Path(root)
    first, last = drive_range(first, last, window, stride, root)
    first = 0 if first is None else first
    sequence = str(sequence)
    seq_dir = root / "sequences" / sequence
    if not seq_dir.is_dir():
        raise ConversionError(seq_dir, "sequence folder is missing (expected <root>/sequences/<seq>/)")
    auto = []
    if cameras is None:
        cameras = pick_cameras(seq_dir)
        if cameras[0] == "image_0":
            auto.append(("no colour images", "using grayscale cameras image_0/image_1"))
    cameras = select_cameras(cameras, ALL_CAMERAS, seq_dir)
    if poses not in POSE_CHOICES:
        raise ConversionError(seq_dir, f"poses must be one of {', '.join(POSE_CHOICES)}, got {poses!r}")
    if lidar and poses != "lidar" and not (seq_dir / "velodyne").is_dir():
        lidar = False
        auto.append(("velodyne/" if auto else "no velodyne/", "points from SGBM stereo only"))
    first, last = _frame_range(seq_dir, cameras, first, last)
    indices = stride_frames(range(first, last + 1), stride)

    calib_path = seq_dir / "calib.txt"
    calib = read_calib(calib_path)
    if (lidar or poses == "lidar") and "Tr" not in calib:
        raise ConversionError(calib_path, "no Tr (velodyne -> camera 0) line; needed for LiDAR "
                              "(use lidar=False / --no-lidar, and recorded poses)")
    Tr = check_rigid(calib["Tr"], calib_path, "Tr (velodyne -> camera 0)", orthonormalise=True) if "Tr" in calib else None

    # poses: T0[i] = camera 0 of frame i -> world
    sk_path, gt_path = seq_dir / "poses.txt", root / "poses" / f"{sequence}.txt"
    recorded = (sk_path, "semantickitti") if sk_path.is_file() else (gt_path, "gt")
    if poses == "gt":
        recorded = (gt_path, "gt")
    elif poses == "semantickitti":
        recorded = (sk_path, "semantickitti")
    report = {"converter": "dnmp.converters.kitti_odometry", "root": str(root), "sequence": sequence,
              "first": first, "last": last, "cameras": cameras}
    if poses == "lidar":
        pose_path, pose_kind = seq_dir / "velodyne", "lidar"
        # cam0_i -> velo_i -> velo_first -> cam0_first
        est, st = lidar_odometry([pose_path / f"{i:06d}.bin" for i in indices], Tr, rigid_inverse(Tr),
                                 "kitti-odometry", pose_path, icp_voxel, icp_max_distance, min_icp_fitness, quiet)
        T0 = dict(zip(indices, est))
        report["lidar_poses"] = st
        if recorded[0].is_file():
            ref = read_poses(recorded[0], first, last)
            report_drift(est, [ref[i] for i in indices], f"{recorded[1]} ({recorded[0].name})", st,
                         "vs_" + recorded[1], quiet)
    else:
        pose_path, pose_kind = recorded
        T0 = read_poses(pose_path, first, last)
    times = read_times(seq_dir / "times.txt", first, last)
    log(f"kitti-odometry: sequence {sequence}, frames {first}..{last}"
        + (f" every {stride}th ({len(indices)} frames)" if stride > 1 else "")
        + f", cameras {cameras}, poses {pose_kind} ({pose_path})")
    if auto:
        # one line, e.g. "no colour images or velodyne/: using grayscale cameras image_0/image_1,
        # points from SGBM stereo only"
        missing = " or ".join(m for m, _ in auto)
        report["auto"] = f"{missing}: " + ", ".join(u for _, u in auto)
        log(f"kitti-odometry: {report['auto']}")

    # cameras: camera i's frame is camera 0's translated by b_i (X_i = X_0 + b_i)
    full_cams, offsets = {}, {}
    for c in cameras:
        key = "P" + c[-1]
        if key not in calib:
            raise ConversionError(calib_path, f"no {key} line (needed for {c})")
        img0 = read_image(seq_dir / c / f"{first:06d}.png")
        full_cams[c], offsets[c] = camera_from_P(calib[key], c, img0.shape[1], img0.shape[0], calib_path)
    held_out_cam = next((c for c in cameras if c in LEFT_CAMERAS), cameras[0])
    stereo_pair = stereo_pair_of(STEREO_PAIRS, cameras, full_cams, offsets, calib_path, stereo)
    if not lidar and stereo_pair is None:
        why = "--no-lidar" if (seq_dir / "velodyne").is_dir() else "no velodyne/ folder"
        raise ConversionError(seq_dir, f"the scene would get no points (no LiDAR: {why}; no stereo pair among "
                              f"cameras {', '.join(cameras)}{': --no-stereo' if not stereo else ''}); "
                              "dnmp train needs points to place primitives")
    cam_pose = lambda i, c: T0[i] @ rigid_inverse(translation(offsets[c]))  # noqa: E731
    scans = [Scan.rigid(lambda i=i: read_velodyne(seq_dir / "velodyne" / f"{i:06d}.bin")[:, :3],
                        T0[i] @ Tr, str(seq_dir / "velodyne" / f"{i:06d}.bin")) for i in indices] if lidar else []
    frames = [CaptureFrame(f"{c}/{i:06d}", c, cam_pose(i, c), times[i], split, seq_dir / c / f"{i:06d}.png",
                           scan=indices.index(i) if lidar else None)
              for i, c, split in stereo_plan(indices, cameras, held_out_cam)]
    if stereo_pair is not None:
        def source_pair(i):  # any frame of the range with a pose, for the no-LiDAR pose check
            if i not in T0 or not (seq_dir / stereo_pair.left / f"{i:06d}.png").is_file():
                return None
            l, r = (as_rgb8(read_image(seq_dir / c / f"{i:06d}.png"), seq_dir / c) for c in
                    (stereo_pair.left, stereo_pair.right))
            return l, r, cam_pose(i, stereo_pair.left)
        stereo_pair.source_pair = source_pair
    report.update({"poses": pose_kind, "pose_file": str(pose_path), "stride": stride})
    source = {"dataset": "KITTI odometry", "sequence": sequence, "licence": LICENCE,
              "frames": [first, last], "poses": pose_kind, **({"stride": stride} if stride > 1 else {})}
    return Capture(name=f"kitti_odometry_{sequence}", source=source, cameras=full_cams, frames=frames, scans=scans,
                   stereo=stereo_pair, report=report, calib_path=calib_path, pose_path=pose_path,
                   ref_camera=held_out_cam)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnmp convert kitti-odometry",
        description="Convert a KITTI odometry sequence (KITTI folder layout) into a dnmp scene.",
    )
    p.add_argument("root", help="dataset root holding sequences/<seq>/ (and poses/<seq>.txt)")
    p.add_argument("--sequence", "--seq", default="00", help="sequence id (default 00)")
    p.add_argument("--poses", choices=POSE_CHOICES, default="auto",
                   help="auto: SemanticKITTI sequences/<seq>/poses.txt if present, else poses/<seq>.txt; "
                   "lidar: estimate by scan-to-scan ICP and report the drift against a pose file if any")
    add_drive_options(p, None, lidar_poses=True, cameras_help="default: image_2,image_3 if present, else the "
                      "grayscale pair image_0,image_1; without velodyne/ the points come from SGBM stereo only")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: convert_kitti_odometry(args.root, args.out, sequence=args.sequence, **drive_options(args)))


if __name__ == "__main__":
    sys.exit(main())

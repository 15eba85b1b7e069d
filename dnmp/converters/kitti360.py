"""``dnmp convert kitti360``: a KITTI-360 drive (the dataset's own layout) into a dnmp scene.

Input layout (KITTI-360; format as defined by the kitti360Scripts devkit)::

    <root>/data_2d_raw/<seq>/image_00|01/data_rect/NNNNNNNNNN.png  rectified perspective images
    <root>/data_2d_raw/<seq>/image_00/timestamps.txt               optional, one line per frame
    <root>/data_poses/<seq>/poses.txt          "frame r11 r12 r13 t1 ... r33 t3": IMU/GPS (pose) -> world;
                                               only frames with a pose are listed (sparse indices)
    <root>/data_poses/<seq>/cam0_to_world.txt  optional, "frame" + 16 numbers: rectified cam0 -> world
    <root>/calibration/perspective.txt         P_rect_00/01 (3x4), R_rect_00/01 (3x3), S_rect_00/01 (w h)
    <root>/calibration/calib_cam_to_pose.txt   image_00..03: 12 numbers, camera (unrectified) -> pose
    <root>/calibration/calib_cam_to_velo.txt   12 numbers, camera 0 (unrectified) -> velodyne
    <root>/data_3d_raw/<seq>/velodyne_points/data/NNNNNNNNNN.bin   float32 (x, y, z, reflectance)
    <root>/data_3d_semantics/[train/]<seq>/static/<start>_<end>.ply optional accumulated (fused) clouds, world frame

Conventions followed (devkit ``helpers/project.py`` CameraPerspective and
``devkits/commons/loadCalibration.py``):

- rectified camera i (0 or 1) -> world: ``pose @ cam_to_pose[image_0i] @ inv(R_rect_0i)``;
  intrinsics are ``P_rect_0i[:, :3]`` (the devkit projects with K only, in
  camera i's own rectified frame), image size ``S_rect_0i``.
- velodyne -> world: ``pose @ cam_to_pose[image_00] @ inv(cam_to_velo)``.
- ``cam0_to_world.txt``, when present, must agree with the first rule for
  image_00 (checked: a disagreement above 10 cm or 1 degree is refused as a
  convention or calibration mismatch).
- image_02/03 are fisheye cameras (MEI model with distortion): refused.

Split: the DNMP paper's protocol, with DNMP's own parity (its
``preprocess/preprocess_kitti.py`` trains on frames whose *index* is even):
even frame indices train on image_00 and image_01, odd ones are held out on
image_00 (their image_01 is not used).

``--preset dnmp-paper --window N`` selects one of the five 80-frame windows of
2013_05_28_drive_0009_sync the DNMP paper evaluates on (see :data:`PRESETS`);
``--window START:LEN`` (as for every KITTI converter) any window of LEN frames
from START, e.g. ``--window 715:80`` is the paper's first window on any drive.
``--stride N`` keeps every Nth frame with a pose; then the kept frames alternate
train/test by position instead of by frame index.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from dnmp.converters.capture import Capture, CaptureFrame, ConversionError, Points, Scan, StereoPair
from dnmp.converters.kitti_files import camera_from_P, need, read_key_values, read_velodyne, select_cameras
from dnmp.converters.options import add_drive_options, drive_options, run_cli
from dnmp.converters.report import logger
from dnmp.converters.splits import drive_range, stereo_plan, stride_frames
from dnmp.converters.stereo import check_rectified_pair
from dnmp.converters.writer import convert
from dnmp.data.ply import read_ply_points
from dnmp.data.rigid import check_rigid, rigid_inverse, rotation_angle_deg

ALL_CAMERAS = ("image_00", "image_01")
FISHEYE = ("image_02", "image_03")
FISHEYE_REFUSED = {c: f"{c} is a fisheye camera (MEI model with distortion), which dnmp does not support; "
                   "use the perspective cameras image_00, image_01" for c in FISHEYE}
LICENCE = "KITTI-360: CC BY-NC-SA 3.0 (non-commercial)"
LIDAR_SOURCES = ("auto", "scans", "fused", "both")

# The DNMP paper's KITTI-360 test windows. Source: the authors' repository
# DNMP/DNMP, preprocess/preprocess_kitti.py (commit 1bcdfa986edd5b59adbbfacb166d30d1f886231a):
# DRIVE = '2013_05_28_drive_0009_sync', start_end_list = [[715,795],[880,960],
# [1102,1182],[2170,2250],[2900,2980]], frames range(start, end), i.e. end
# exclusive: 80 frames each. (It indexes the sorted image listing, which is the
# frame index when the drive's images are numbered from 0 without gaps.)
PRESETS = {
    "dnmp-paper": {
        "sequence": "2013_05_28_drive_0009_sync",
        "windows": [(715, 794), (880, 959), (1102, 1181), (2170, 2249), (2900, 2979)],  # inclusive
        "source": "DNMP/DNMP preprocess/preprocess_kitti.py @ 1bcdfa98 (start_end_list, end exclusive)",
    },
}


# ----------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------


def read_indexed_poses(path: Path, width: int, what: str) -> dict:
    """{frame: float64 [width]} from a KITTI-360 pose file ("frame v1 .. v_width"
    per line; frames in increasing order, possibly with gaps)."""
    if not path.is_file():
        raise ConversionError(path, f"{what} is missing")
    out = {}
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            v = [float(x) for x in line.split()]
        except ValueError:
            raise ConversionError(path, f"line {ln} has non-numeric values") from None
        if len(v) != width + 1 or v[0] != int(v[0]) or v[0] < 0:
            raise ConversionError(path, f"line {ln} has {len(v)} numbers, expected a frame index + {width}")
        out[int(v[0])] = np.array(v[1:], np.float64)
    if not out:
        raise ConversionError(path, f"{what} is empty")
    return out


def read_cam_to_pose(path: Path) -> dict:
    """{"image_0i": 4x4 rigid} from calib_cam_to_pose.txt."""
    cal = read_key_values(path)
    return {k: check_rigid(v.reshape(3, 4), path, k, orthonormalise=True) for k, v in cal.items()
            if k.startswith("image_") and v.size == 12}


def read_cam_to_velo(path: Path) -> np.ndarray:
    """4x4 rigid camera 0 (unrectified) -> velodyne from calib_cam_to_velo.txt
    (12 numbers, no key)."""
    if not path.is_file():
        raise ConversionError(path, "calibration file is missing")
    try:
        v = np.array([float(x) for x in path.read_text().split()], np.float64)
    except ValueError:
        raise ConversionError(path, "non-numeric values (expected 12 numbers, a 3x4 matrix)") from None
    if v.size != 12:
        raise ConversionError(path, f"has {v.size} numbers, expected 12 (3x4 camera 0 -> velodyne)")
    return check_rigid(v.reshape(3, 4), path, "camera 0 -> velodyne", orthonormalise=True)


def fused_clouds(root: Path, seq: str, first: int, last: int) -> list:
    """Accumulated static clouds ``<start>_<end>.ply`` overlapping [first, last]
    from data_3d_semantics/(train/)<seq>/static/."""
    out = []
    for d in (root / "data_3d_semantics" / "train" / seq / "static", root / "data_3d_semantics" / seq / "static"):
        for p in sorted(d.glob("*_*.ply")) if d.is_dir() else []:
            a, _, b = p.stem.partition("_")
            if a.isdigit() and b.isdigit() and int(a) <= last and int(b) >= first:
                out.append(p)
    return out


def find_sequence(root: Path, sequence: str | None) -> str:
    """The drive folder name under data_2d_raw for ``sequence`` (full name,
    "0009" or 9); the only one when None."""
    d = root / "data_2d_raw"
    if not d.is_dir():
        raise ConversionError(d, "folder is missing (expected a KITTI-360 root with data_2d_raw/, data_poses/, "
                              "calibration/)")
    seqs = sorted(p.name for p in d.iterdir() if p.is_dir())
    if sequence is None:
        if len(seqs) != 1:
            raise ConversionError(d, f"{len(seqs)} sequences ({', '.join(seqs[:6])}); choose one with --sequence")
        return seqs[0]
    s = str(sequence)
    if s in seqs:
        return s
    if s.isdigit():
        m = [q for q in seqs if q.split("_drive_")[-1][:4] == f"{int(s):04d}"]
        if len(m) == 1:
            return m[0]
    raise ConversionError(d, f"no sequence {s!r} (have {', '.join(seqs[:6]) or 'none'})")


# ----------------------------------------------------------------------------
# Converter
# ----------------------------------------------------------------------------


def convert_kitti360(source, out, overwrite: bool = False, **options):
    """Convert a KITTI-360 drive window into the dnmp scene folder ``out``,
    atomically (:func:`dnmp.converters.writer.convert`).
    ``preset`` / ``window`` select a paper window (:data:`PRESETS`); other
    options and errors: :func:`read_kitti360` and :func:`dnmp.converters.writer.write_capture`.
    Returns the loaded Scene."""
    preset, window = options.pop("preset", None), options.pop("window", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConversionError(source, f"unknown preset {preset!r} (have {', '.join(PRESETS)})")
        wins = PRESETS[preset]["windows"]
        if window is None or not str(window).strip().isdigit() or not 1 <= int(window) <= len(wins):
            raise ConversionError(source, f"preset {preset} needs --window 1..{len(wins)} (a window number), "
                                  f"got {window!r}")
        if options.get("first") is not None or options.get("last") is not None:
            raise ConversionError(source, "--preset sets the frame window; do not also give --first/--last")
        seq = options.get("sequence")
        if seq is not None and str(seq) != PRESETS[preset]["sequence"] and not (
                str(seq).isdigit() and PRESETS[preset]["sequence"].endswith(f"_{int(seq):04d}_sync")):
            raise ConversionError(source, f"preset {preset} is on {PRESETS[preset]['sequence']}, not {seq}")
        options["sequence"] = PRESETS[preset]["sequence"]
        options["first"], options["last"] = wins[int(window) - 1]
        if options.get("name") is None:
            options["name"] = f"kitti360_{preset}_{int(window)}"
        options["preset_info"] = {"preset": preset, "window": int(window), "source": PRESETS[preset]["source"]}
    elif window is not None:
        options["window"] = window  # START:LEN, read by read_kitti360
    return convert(read_kitti360, source, out, overwrite, **options)


def read_kitti360(
    source,
    sequence: str | None = None,
    first: int | None = None,
    last: int | None = None,
    window: str | None = None,
    stride: int = 1,
    cameras: Sequence[str] | None = ("image_00", "image_01"),
    poses: str = "auto",
    lidar_source: str = "auto",
    lidar: bool = True,
    stereo: bool = True,
    quiet: bool = False,
    preset_info: dict | None = None,
) -> Capture:
    """Read frames ``first..last`` (inclusive; default: every frame with an
    image and a pose; ``stride``: every Nth of them) of KITTI-360 sequence
    ``sequence`` into a :class:`Capture`.

    cameras: image_00 and/or image_01 (image_00 holds the test frames).
    poses: "auto"/"poses" (poses.txt + calibration, the devkit rule; checked
    against cam0_to_world.txt when present) or "cam0" (cam0_to_world.txt for
    image_00; image_01 from the image_00 pose and the calibrated image_00 ->
    image_01 transform). Frames inside the window without a pose are skipped
    (poses.txt is sparse); a window reaching past the last pose is refused.
    lidar_source: "scans" (data_3d_raw velodyne), "fused" (accumulated
    data_3d_semantics clouds), "both", or "auto" (scans if present, else fused).
    stereo: False leaves the stereo pair out.
    Raises ConversionError (one line naming the file) on missing files or
    calibration keys, unsupported cameras, truncated scans, non-rigid poses
    or failed checks.
    """
    log = logger(quiet)
    root = Path(source)
    first, last = drive_range(first, last, window, stride, root)
    seq = find_sequence(root, sequence)
    cameras = select_cameras(cameras or ALL_CAMERAS, ALL_CAMERAS, root, refused=FISHEYE_REFUSED)
    if poses not in ("auto", "poses", "cam0"):
        raise ConversionError(root, f"poses must be auto, poses or cam0, got {poses!r}")
    if lidar_source not in LIDAR_SOURCES:
        raise ConversionError(root, f"lidar source must be one of {', '.join(LIDAR_SOURCES)}, got {lidar_source!r}")
    held_out_cam = "image_00" if "image_00" in cameras else cameras[0]
    img_dirs = {c: root / "data_2d_raw" / seq / c / "data_rect" for c in cameras}
    for c, d in img_dirs.items():
        if not d.is_dir():
            if (d.parent / "data_rgb").is_dir():
                raise ConversionError(d, "missing: only unrectified data_rgb images are here (distorted); "
                                      "dnmp needs the rectified data_rect images")
            raise ConversionError(d, "image folder is missing")

    # calibration
    calib_dir = root / "calibration"
    persp_path = calib_dir / "perspective.txt"
    persp = read_key_values(persp_path)
    c2p_path = calib_dir / "calib_cam_to_pose.txt"
    cam_to_pose = read_cam_to_pose(c2p_path)
    full_cams, rect_to_pose, p_offset = {}, {}, {}
    for c in cameras:
        k = c[-2:]
        P = need(persp, f"P_rect_{k}", 12, persp_path, c).reshape(3, 4)
        S = need(persp, f"S_rect_{k}", 2, persp_path, c)
        R = np.eye(4)
        R[:3, :3] = need(persp, f"R_rect_{k}", 9, persp_path, c).reshape(3, 3)
        R = check_rigid(R, persp_path, f"R_rect_{k}", orthonormalise=True)
        full_cams[c], p_offset[c] = camera_from_P(P, c, int(round(S[0])), int(round(S[1])), persp_path,
                                                  f"P_rect_{k}")
        if c not in cam_to_pose:
            raise ConversionError(c2p_path, f"missing calibration key {c} (needed for {c})")
        rect_to_pose[c] = cam_to_pose[c] @ rigid_inverse(R)  # rectified camera -> pose (devkit)

    # frames and poses
    pose_path = root / "data_poses" / seq / "poses.txt"
    cam0_path = root / "data_poses" / seq / "cam0_to_world.txt"
    avail = sorted(int(p.stem) for p in img_dirs[held_out_cam].glob("*.png") if p.stem.isdigit())
    if not avail:
        raise ConversionError(img_dirs[held_out_cam], "no NNNNNNNNNN.png images found")
    use_cam0 = poses == "cam0"
    recs = read_indexed_poses(cam0_path if use_cam0 else pose_path, 16 if use_cam0 else 12,
                              "cam0_to_world file" if use_cam0 else "pose file")
    src_path = cam0_path if use_cam0 else pose_path
    last_pose = max(recs)
    first = max(avail[0], min(recs)) if first is None else first
    last = min(avail[-1], last_pose) if last is None else last
    if first < 0 or last < first:
        raise ConversionError(root, f"invalid frame range {first}..{last}")
    if last > last_pose:
        raise ConversionError(src_path, f"poses end at frame {last_pose} but the window asks for frames up to "
                              f"{last} (pose file shorter than the frame list)")
    indices = stride_frames([i for i in range(first, last + 1) if i in recs], stride)
    skipped = [i for i in range(first, last + 1) if i not in recs]
    if not indices:
        raise ConversionError(src_path, f"no frame of the window {first}..{last} has a pose")
    if skipped:
        log(f"kitti360: {len(skipped)} frames of {first}..{last} have no pose and are skipped "
            f"({', '.join(map(str, skipped[:8]))}{', ...' if len(skipped) > 8 else ''})")

    # T_pose[i]: IMU/GPS pose -> world
    if use_cam0:
        if "image_00" not in cam_to_pose:
            raise ConversionError(c2p_path, "missing calibration key image_00 (needed for --poses cam0)")
        R0 = np.eye(4)
        R0[:3, :3] = need(persp, "R_rect_00", 9, persp_path, "--poses cam0").reshape(3, 3)
        r2p0 = cam_to_pose["image_00"] @ rigid_inverse(check_rigid(R0, persp_path, "R_rect_00", orthonormalise=True))
        T_pose = {i: check_rigid(recs[i].reshape(4, 4), cam0_path, f"cam0_to_world of frame {i}", orthonormalise=True)
                  @ rigid_inverse(r2p0) for i in indices}
    else:
        T_pose = {i: check_rigid(recs[i].reshape(3, 4), pose_path, f"pose of frame {i}", orthonormalise=True) for i in indices}
    report = {"converter": "dnmp.converters.kitti360", "sequence": seq, "first": first, "last": last,
              "cameras": cameras, "poses": "cam0_to_world" if use_cam0 else "poses+calibration",
              "pose_file": str(src_path), "skipped_without_pose": skipped}
    if preset_info:
        report["preset"] = preset_info
    if not use_cam0 and cam0_path.is_file() and "image_00" in cameras:
        # the dataset's own rectified cam0 poses must match the devkit rule
        c0 = read_indexed_poses(cam0_path, 16, "cam0_to_world file")
        dt, dr = [], []
        for i in indices:
            if i in c0:
                A = T_pose[i] @ rect_to_pose["image_00"]
                Bm = c0[i].reshape(4, 4)
                dt.append(float(np.linalg.norm(A[:3, 3] - Bm[:3, 3])))
                dr.append(rotation_angle_deg(A[:3, :3].T @ Bm[:3, :3]))
        if dt:
            report["cam0_to_world_check"] = {"max_translation_m": max(dt), "max_rotation_deg": max(dr)}
            log(f"kitti360: poses.txt + calibration vs cam0_to_world.txt: max {max(dt):.4f} m, {max(dr):.4f} deg")
            if max(dt) > 0.1 or max(dr) > 1.0:
                raise ConversionError(cam0_path, f"disagrees with poses.txt + calib_cam_to_pose + R_rect_00 by up to "
                                      f"{max(dt):.3f} m / {max(dr):.2f} deg: calibration or convention mismatch")

    times_path = root / "data_2d_raw" / seq / held_out_cam / "timestamps.txt"
    if times_path.is_file():
        from dnmp.converters.kitti import read_raw_timestamps

        times = read_raw_timestamps(times_path, indices)
    else:
        times = {i: 0.1 * i for i in indices}  # KITTI-360 records at 10 Hz
        report["timestamps"] = "frame index * 0.1 s (no timestamps.txt)"
    log(f"kitti360: {seq}, frames {first}..{last} ({len(indices)} with a pose"
        + (f", every {stride}th kept" if stride > 1 else "") + f"), cameras {cameras}")

    stereo_pair = None
    if stereo and set(cameras) == set(ALL_CAMERAS):
        rel = rigid_inverse(rect_to_pose["image_00"]) @ rect_to_pose["image_01"]  # image_01 -> image_00
        ang = rotation_angle_deg(rel[:3, :3])
        if ang > 0.1 or np.abs(rel[1:3, 3]).max() > 0.01:
            raise ConversionError(c2p_path, f"image_00/image_01 are not a rectified pair after R_rect "
                                  f"(relative rotation {ang:.3f} deg, offset {np.round(rel[:3, 3], 3).tolist()}); "
                                  "use --no-stereo")
        stereo_pair = StereoPair("image_00", "image_01",
                                 check_rectified_pair(full_cams["image_00"], full_cams["image_01"], np.zeros(3),
                                                      -rel[:3, 3], persp_path))
        # P_rect_01's last column encodes the same baseline; the devkit does not use it, so only report
        p_base = float(p_offset["image_00"][0] - p_offset["image_01"][0])
        report["stereo_baseline"] = {"from_cam_to_pose": stereo_pair.baseline, "from_P_rect": p_base}
        if abs(p_base - stereo_pair.baseline) > 0.02:
            print(f"warning: {persp_path}: P_rect_01 implies a {p_base:.3f} m baseline, calib_cam_to_pose "
                  f"+ R_rect a {stereo_pair.baseline:.3f} m one; using the latter (devkit)")

    # LiDAR
    scans, extra = [], None
    velo_dir = root / "data_3d_raw" / seq / "velodyne_points" / "data"
    if lidar:
        use_scans = lidar_source in ("scans", "both") or (lidar_source == "auto" and velo_dir.is_dir())
        use_fused = lidar_source in ("fused", "both") or (lidar_source == "auto" and not velo_dir.is_dir())
        if use_scans:
            c2v_path = calib_dir / "calib_cam_to_velo.txt"
            T_velo_cam0 = read_cam_to_velo(c2v_path)
            if "image_00" not in cam_to_pose:
                raise ConversionError(c2p_path, "missing calibration key image_00 (needed for LiDAR)")
            velo_to_pose = cam_to_pose["image_00"] @ rigid_inverse(T_velo_cam0)
            scans = [Scan.rigid(lambda i=i: read_velodyne(velo_dir / f"{i:010d}.bin")[:, :3],
                                T_pose[i] @ velo_to_pose, str(velo_dir / f"{i:010d}.bin")) for i in indices]
        if use_fused:
            files = fused_clouds(root, seq, first, last)
            if not files:
                raise ConversionError(root / "data_3d_semantics", f"no LiDAR for {seq}: neither "
                                      f"data_3d_raw/{seq}/velodyne_points nor fused static clouds overlapping "
                                      f"{first}..{last} (use --no-lidar)")
            extra = np.concatenate([read_ply_points(p, np.float64)[0] for p in files])
            report["fused_clouds"] = [p.name for p in files]
            log(f"kitti360: {len(extra)} points from {len(files)} fused static clouds")
    src = {"dataset": "KITTI-360", "sequence": seq, "licence": LICENCE, "frames": [first, last],
           "poses": report["poses"], **({"stride": stride} if stride > 1 else {})}
    if preset_info:
        src["preset"] = f"{preset_info['preset']} window {preset_info['window']}"
    frames = [CaptureFrame(f"{c}/{i:010d}", c, T_pose[i] @ rect_to_pose[c], times[i], split,
                           img_dirs[c] / f"{i:010d}.png", scan=indices.index(i) if scans else None)
              for i, c, split in stereo_plan(indices, cameras, held_out_cam,
                                             parity_origin=0 if stride == 1 else None)]
    return Capture(name=f"kitti360_{seq.replace('_sync', '')}_{first}_{last}", source=src, cameras=full_cams,
                   frames=frames, scans=scans, points=[Points("lidar", extra)] if extra is not None else [],
                   stereo=stereo_pair, report=report, calib_path=persp_path, pose_path=src_path,
                   ref_camera=held_out_cam)


def build_parser() -> argparse.ArgumentParser:
    wins = ", ".join(f"{i + 1}: {a}-{b}" for i, (a, b) in enumerate(PRESETS["dnmp-paper"]["windows"]))
    p = argparse.ArgumentParser(
        prog="dnmp convert kitti360",
        description="Convert a KITTI-360 drive (data_2d_raw/, data_poses/, calibration/, data_3d_raw/) "
                    "into a dnmp scene, with the DNMP stereo protocol (even frames train on image_00 + "
                    "image_01, odd frames are held out on image_00).",
        epilog=f"--preset dnmp-paper: the DNMP paper's windows of 2013_05_28_drive_0009_sync "
               f"(frames, inclusive) {wins}; taken from the authors' code, {PRESETS['dnmp-paper']['source']}.",
    )
    p.add_argument("root", help="KITTI-360 root (holding data_2d_raw/, data_poses/, calibration/)")
    p.add_argument("--sequence", "--seq", default=None,
                   help="drive, e.g. 2013_05_28_drive_0009_sync or 9 (default: the only one)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a published frame window set; --window N then picks its Nth window (1-based)")
    p.add_argument("--poses", choices=("auto", "poses", "cam0"), default="auto",
                   help="auto/poses: poses.txt + calib_cam_to_pose + R_rect (devkit), checked against "
                   "cam0_to_world.txt; cam0: cam0_to_world.txt")
    p.add_argument("--lidar-source", choices=LIDAR_SOURCES, default="auto",
                   help="scans (data_3d_raw), fused (data_3d_semantics static clouds), both, or auto "
                   "(scans if present, else fused)")
    add_drive_options(p, "image_00,image_01", window_help="; with --preset, the window number N")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: convert_kitti360(args.root, args.out, sequence=args.sequence, preset=args.preset,
                                            poses=args.poses, lidar_source=args.lidar_source, **drive_options(args)))


if __name__ == "__main__":
    sys.exit(main())

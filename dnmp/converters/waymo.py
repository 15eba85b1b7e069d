"""Convert a Waymo Open Dataset v2 segment (Parquet components) into a dnmp scene.

Input layout (Waymo Open Dataset v2 perception, one Parquet file per segment
and component; read with pyarrow, no TensorFlow)::

    <root>/camera_image/<segment>.parquet        key.segment_context_name,
        key.frame_timestamp_micros, key.camera_name, [CameraImageComponent].image (JPEG)
    <root>/camera_calibration/<segment>.parquet  key.camera_name,
        [CameraCalibrationComponent].intrinsic.{f_u,f_v,c_u,c_v,k1,k2,p1,p2,k3},
        .extrinsic.transform (16, row-major, camera -> vehicle), .width, .height
    <root>/vehicle_pose/<segment>.parquet        key.frame_timestamp_micros,
        [VehiclePoseComponent].world_from_vehicle.transform (16, row-major)
    <root>/lidar/<segment>.parquet               key.laser_name, key.frame_timestamp_micros,
        [LiDARComponent].range_image_return1.{values,shape}  ([H, W, 4]: range, ...)
    <root>/lidar_calibration/<segment>.parquet   key.laser_name,
        [LiDARCalibrationComponent].extrinsic.transform (LiDAR -> vehicle),
        .beam_inclination.{min,max,values} (radians)
    <root>/lidar_pose/<segment>.parquet          optional: [LiDARPoseComponent].
        range_image_return1 ([H, W, 6]: roll, pitch, yaw, x, y, z world_from_vehicle
        per pixel, the TOP LiDAR's rolling-shutter compensation)

Conventions (from the dataset's definitions):

- Vehicle frame x forward, y left, z up; a Waymo camera frame is x forward
  (out of the lens), y left, z up, so the OpenCV camera (x right, y down,
  z forward) is ``cam_to_world = world_from_vehicle @ extrinsic @ M`` with M
  taking OpenCV axes to Waymo camera axes (x_w = z, y_w = -x, z_w = -y).
- Intrinsics f_u, f_v, c_u, c_v in pixels; distortion k1, k2, p1, p2, k3 in
  OpenCV's meaning and order (k1, k2, p1, p2, k3). Non-zero distortion is
  refused, naming the coefficients, unless ``undistort`` (OpenCV undistort to
  the same pinhole). c_u, c_v are used as the OpenCV principal point.
- Range images: row i has inclination ``incl[H - 1 - i]`` (calibration values
  are ascending; uniform ``min + (i + 0.5) / H * (max - min)`` when no values
  are given); column j has azimuth ``((W - j - 0.5) / W * 2 - 1) * pi -
  atan2(E[1, 0], E[0, 0])`` (E the LiDAR extrinsic); a return at range r > 0
  is ``r (cos a cos i, sin a cos i, sin i)`` in the LiDAR frame, ``E`` takes
  it to the vehicle, the vehicle pose to the world (or the per-pixel pose of
  lidar_pose when present).

Split: frames (timestamps) in order; every ``test_every``-th (default 4, offset
N // 2; DESIGN.md) is held out on every camera.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from dnmp.converters.capture import Capture, CaptureFrame, ConversionError, Scan
from dnmp.converters.options import add_output_options, output_options, run_cli, split_list
from dnmp.converters.report import logger
from dnmp.converters.splits import every_nth_split
from dnmp.converters.writer import convert
from dnmp.data.rigid import check_rigid, transform
from dnmp.data.scene import Camera

CAMERA_NAMES = {1: "FRONT", 2: "FRONT_LEFT", 3: "FRONT_RIGHT", 4: "SIDE_LEFT", 5: "SIDE_RIGHT"}
LASER_NAMES = {1: "TOP", 2: "FRONT", 3: "SIDE_LEFT", 4: "SIDE_RIGHT", 5: "REAR"}
# OpenCV camera axes -> Waymo camera axes (x forward, y left, z up)
CV_TO_WAYMO = np.array([[0, 0, 1.0, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
DISTORTION = ("k1", "k2", "p1", "p2", "k3")  # OpenCV order

SEG = "key.segment_context_name"
TS = "key.frame_timestamp_micros"
CAM = "key.camera_name"
LASER = "key.laser_name"
IMG = "[CameraImageComponent].image"
CAL = "[CameraCalibrationComponent]"
VPOSE = "[VehiclePoseComponent].world_from_vehicle.transform"
RI = "[LiDARComponent].range_image_return1"
LCAL = "[LiDARCalibrationComponent]"
LPOSE = "[LiDARPoseComponent].range_image_return1"


def component_path(root: Path, component: str, segment: str) -> Path:
    """<root>/<component>/<segment>.parquet, the v2 file layout."""
    return root / component / f"{segment}.parquet"


def read_component(root: Path, component: str, segment: str, columns: Sequence[str], required: bool = True):
    """{column: list} of a component's Parquet file, rows of ``segment`` only
    (None when optional and absent). Missing files/columns and unreadable
    (e.g. truncated) files raise ConversionError naming the file."""
    import pyarrow.parquet as pq

    path = component_path(root, component, segment)
    if not path.is_file():
        if not required:
            return None
        raise ConversionError(path, f"Waymo v2 {component} table is missing")
    try:
        schema = pq.read_schema(path)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ConversionError(path, f"table lacks column(s) {', '.join(missing)}")
        cols = list(dict.fromkeys(list(columns) + ([SEG] if SEG in schema.names else [])))
        table = pq.read_table(path, columns=cols)
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(path, f"corrupt or truncated Parquet file ({type(e).__name__})") from None
    if SEG in table.column_names:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table[SEG], segment))
    return {c: table[c] for c in columns}, path


def _matrix(v, where, what) -> np.ndarray:
    a = np.asarray(v, np.float64) if v is not None else np.zeros(0)
    if a.size != 16:
        raise ConversionError(where, f"{what} has {a.size} values, expected 16 (row-major 4x4)")
    return check_rigid(a.reshape(4, 4), where, what, orthonormalise=True)


def list_segments(root: Path) -> list:
    """Segment names that have a camera_image table, sorted."""
    d = root / "camera_image"
    if not d.is_dir():
        raise ConversionError(d, "no camera_image/ folder (expected a Waymo v2 root with component folders)")
    return sorted(p.stem for p in d.glob("*.parquet"))


def inclinations(row_min, row_max, values, height: int, where, laser: str) -> np.ndarray:
    """Per-row beam inclination (radians) for a range image of ``height`` rows,
    row 0 the highest beam (the calibration lists them ascending)."""
    if values is not None and len(values):
        inc = np.asarray(values, np.float64)
        if len(inc) != height:
            raise ConversionError(where, f"laser {laser}: {len(inc)} beam inclinations for a {height}-row range image")
    else:
        if row_min is None or row_max is None:
            raise ConversionError(where, f"laser {laser}: no beam inclination values nor min/max")
        inc = row_min + (np.arange(height) + 0.5) / height * (row_max - row_min)
    return inc[::-1]


def range_image_points(ri: np.ndarray, extrinsic: np.ndarray, incl: np.ndarray, pixel_pose=None) -> np.ndarray:
    """Range image [H, W, C] (channel 0 = range, metres) -> points float64
    [N, 3] of the valid returns (range > 0): in the vehicle frame, or in the
    world when ``pixel_pose`` [H, W, 6] (roll, pitch, yaw, x, y, z) is given."""
    H, W = ri.shape[:2]
    az_corr = np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
    az = ((W - np.arange(W) - 0.5) / W * 2.0 - 1.0) * np.pi - az_corr
    rng = ri[..., 0]
    valid = rng > 0
    A = np.broadcast_to(az[None, :], (H, W))[valid]
    I = np.broadcast_to(incl[:, None], (H, W))[valid]
    r = rng[valid].astype(np.float64)
    p = np.stack([np.cos(A) * np.cos(I) * r, np.sin(A) * np.cos(I) * r, np.sin(I) * r], 1)
    p = transform(extrinsic, p)
    if pixel_pose is None:
        return p
    pp = pixel_pose[valid].astype(np.float64)
    roll, pitch, yaw = pp[:, 0], pp[:, 1], pp[:, 2]
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    # R = Rz(yaw) Ry(pitch) Rx(roll), per point
    R = np.stack([
        np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], -1),
        np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], -1),
        np.stack([-sp, cp * sr, cp * cr], -1),
    ], 1)
    return np.einsum("nij,nj->ni", R, p) + pp[:, 3:6]


def _range_image(vals, shape, where, what, channels_min: int) -> np.ndarray:
    shape = [int(s) for s in (shape or [])]
    if len(shape) != 3 or shape[2] < channels_min:
        raise ConversionError(where, f"{what}: shape {shape} is not [H, W, >={channels_min}]")
    arr = np.asarray(vals, np.float32)
    if arr.size != int(np.prod(shape)):
        raise ConversionError(where, f"{what}: {arr.size} values for shape {shape} (truncated?)")
    return arr.reshape(shape)


def convert_waymo(root, out, overwrite: bool = False, **options):
    """Convert a Waymo Open Dataset v2 segment into the dnmp scene folder
    ``out`` (atomically). Options: :func:`read_waymo` and
    :func:`dnmp.converters.writer.write_capture`. Returns the
    loaded Scene; raises ConversionError (one line naming the file)."""
    return convert(read_waymo, root, out, overwrite, **options)


def read_waymo(
    root,
    segment: str | None = None,
    cameras: Sequence[str] | None = None,
    lasers: Sequence[str] | None = None,
    first: int = 0,
    last: int | None = None,
    test_every: int = 4,
    undistort: bool = False,
    lidar: bool = True,
    quiet: bool = False,
) -> Capture:
    """root: folder with the v2 component folders. segment: context name
    (default the first camera_image file). cameras: FRONT, FRONT_LEFT,
    FRONT_RIGHT, SIDE_LEFT, SIDE_RIGHT (default all present). lasers: TOP,
    FRONT, SIDE_LEFT, SIDE_RIGHT, REAR (default all present). first/last:
    frame indices (inclusive) in timestamp order. test_every: every N-th frame
    held out (0 = none). undistort: accept k1..k3 != 0 (OpenCV undistort)."""
    log = logger(quiet)
    root = Path(root)
    segs = list_segments(root)
    if not segs:
        raise ConversionError(root / "camera_image", "no <segment>.parquet files")
    segment = segment or segs[0]
    if segment not in segs:
        raise ConversionError(root / "camera_image", f"no segment {segment!r}; found {', '.join(segs[:5])}")

    cal_cols = [f"{CAL}.intrinsic.{k}" for k in ("f_u", "f_v", "c_u", "c_v", *DISTORTION)]
    cal_cols += [CAM, f"{CAL}.extrinsic.transform", f"{CAL}.width", f"{CAL}.height"]
    cal, cal_path = read_component(root, "camera_calibration", segment, cal_cols)
    cal = {k: v.to_pylist() for k, v in cal.items()}
    calib = {}
    for i, cid in enumerate(cal[CAM]):
        calib[CAMERA_NAMES.get(cid, str(cid))] = {k.rsplit(".", 1)[-1] if "intrinsic" in k else k: cal[k][i]
                                                 for k in cal_cols}

    img, img_path = read_component(root, "camera_image", segment, [TS, CAM, IMG])
    ts_all = img[TS].to_numpy()
    cam_all = [CAMERA_NAMES.get(c, str(c)) for c in img[CAM].to_pylist()]
    timestamps = sorted(set(int(t) for t in ts_all))
    if not timestamps:
        raise ConversionError(img_path, f"no images of segment {segment}")
    last = len(timestamps) - 1 if last is None else last
    if not (0 <= first <= last < len(timestamps)):
        raise ConversionError(img_path, f"frame range {first}..{last} outside 0..{len(timestamps) - 1}")
    timestamps = timestamps[first:last + 1]
    present = sorted(set(cam_all), key=lambda c: list(CAMERA_NAMES.values()).index(c)
                     if c in CAMERA_NAMES.values() else 99)
    cameras = list(dict.fromkeys(cameras)) if cameras else present
    for c in cameras:
        if c not in present:
            raise ConversionError(img_path, f"no {c!r} camera images (has {', '.join(present)})")
        if c not in calib:
            raise ConversionError(cal_path, f"no calibration row for camera {c}")

    cams, dist, extr = {}, {}, {}
    for c in cameras:
        k = calib[c]
        coeffs = [float(k[d] or 0.0) for d in DISTORTION]
        if any(coeffs) and not undistort:
            named = ", ".join(f"{d}={v:g}" for d, v in zip(DISTORTION, coeffs) if v)
            raise ConversionError(cal_path, f"camera {c} has lens distortion ({named}); pass --undistort to "
                                  "undistort the images with OpenCV")
        if any(coeffs):
            dist[c] = np.array(coeffs)
        fx, fy = float(k["f_u"]), float(k["f_v"])
        w, h = int(k[f"{CAL}.width"] or 0), int(k[f"{CAL}.height"] or 0)
        if not (fx > 0 and fy > 0 and w > 0 and h > 0):
            raise ConversionError(cal_path, f"camera {c} has non-positive focal length or size")
        cams[c] = Camera(name=c, width=w, height=h, fx=fx, fy=fy, cx=float(k["c_u"]), cy=float(k["c_v"]))
        extr[c] = _matrix(k[f"{CAL}.extrinsic.transform"], cal_path, f"extrinsic of camera {c}")

    vp, vp_path = read_component(root, "vehicle_pose", segment, [TS, VPOSE])
    vposes = dict(zip((int(t) for t in vp[TS].to_numpy()), vp[VPOSE].to_pylist()))
    missing = [t for t in timestamps if t not in vposes]
    if missing:
        raise ConversionError(vp_path, f"no vehicle pose for {len(missing)} of {len(timestamps)} frames "
                              f"(first missing timestamp {missing[0]})")
    world_from_vehicle = {t: _matrix(vposes[t], vp_path, f"vehicle pose at {t}") for t in timestamps}

    # LiDAR: one scan per frame (every chosen laser), for depth and the fused cloud
    scans, scan_of = [], {}
    if lidar:
        lc, lc_path = read_component(root, "lidar_calibration", segment,
                                     [LASER, f"{LCAL}.extrinsic.transform", f"{LCAL}.beam_inclination.min",
                                      f"{LCAL}.beam_inclination.max", f"{LCAL}.beam_inclination.values"])
        lc = {k: v.to_pylist() for k, v in lc.items()}
        lcal = {LASER_NAMES.get(n, str(n)): i for i, n in enumerate(lc[LASER])}
        li, li_path = read_component(root, "lidar", segment, [TS, LASER, f"{RI}.values", f"{RI}.shape"])
        li_ts = [int(t) for t in li[TS].to_numpy()]
        li_laser = [LASER_NAMES.get(n, str(n)) for n in li[LASER].to_pylist()]
        lasers = list(dict.fromkeys(lasers)) if lasers else sorted(set(li_laser))
        for la in lasers:
            if la not in lcal:
                raise ConversionError(lc_path, f"no calibration row for laser {la}")
        lpose = read_component(root, "lidar_pose", segment, [TS, LASER, f"{LPOSE}.values", f"{LPOSE}.shape"],
                               required=False)
        pose_rows = {}
        if lpose is not None:
            lp, lp_path = lpose
            for r, (t, n) in enumerate(zip(lp[TS].to_numpy(), lp[LASER].to_pylist())):
                pose_rows[(int(t), LASER_NAMES.get(n, str(n)))] = r
        rows_at = {}
        for r, (t, la) in enumerate(zip(li_ts, li_laser)):
            if la in lasers:
                rows_at.setdefault(t, []).append((la, r))
        vals_col, shape_col = li[f"{RI}.values"], li[f"{RI}.shape"]

        def load_scan(t):
            pts, ranges = [], []
            for la, r in rows_at.get(t, []):
                ri = _range_image(vals_col[r].values.to_numpy(zero_copy_only=False), shape_col[r].as_py(), li_path,
                                  f"{la} range image at {t}", 1)
                i = lcal[la]
                E = _matrix(lc[f"{LCAL}.extrinsic.transform"][i], lc_path, f"extrinsic of laser {la}")
                inc = inclinations(lc[f"{LCAL}.beam_inclination.min"][i], lc[f"{LCAL}.beam_inclination.max"][i],
                                   lc[f"{LCAL}.beam_inclination.values"][i], ri.shape[0], lc_path, la)
                pp = None
                if (t, la) in pose_rows:
                    pr = pose_rows[(t, la)]
                    pp = _range_image(lp[f"{LPOSE}.values"][pr].values.to_numpy(zero_copy_only=False),
                                      lp[f"{LPOSE}.shape"][pr].as_py(), lp_path, f"{la} pixel pose at {t}", 6)
                    if pp.shape[:2] != ri.shape[:2]:
                        raise ConversionError(lp_path, f"{la} pixel pose at {t} is {pp.shape[:2]}, range image "
                                              f"{ri.shape[:2]}")
                p = range_image_points(ri, E, inc, pp)
                pts.append(p if pp is not None else transform(world_from_vehicle[t], p))
                ranges.append(ri[..., 0][ri[..., 0] > 0].astype(np.float64))  # the order of the points
            return (np.concatenate(pts), np.concatenate(ranges)) if pts else (np.zeros((0, 3)), np.zeros(0))

        for t in timestamps:
            if t in rows_at:
                scans.append(Scan(load=lambda t=t: load_scan(t), where=f"{li_path} @ {t}"))
                scan_of[t] = len(scans) - 1

    splits = every_nth_split(len(timestamps), test_every)
    split_of = dict(zip(timestamps, splits))
    img_col = img[IMG]
    frames = []
    for r, (t, c) in enumerate(zip(ts_all, cam_all)):
        t = int(t)
        if c not in cams or t not in split_of:
            continue
        data = img_col[r].as_py()
        frames.append(CaptureFrame(
            name=f"{c}/{t}", camera=c, cam_to_world=world_from_vehicle[t] @ extr[c] @ CV_TO_WAYMO,
            timestamp=t * 1e-6, split=split_of[t], image=bytes(data or b""), scan=scan_of.get(t)))
    frames.sort(key=lambda f: (f.timestamp, cameras.index(f.camera)))
    log(f"waymo: segment {segment}, frames {first}..{last} ({len(timestamps)}), cameras {cameras}, "
        f"{len(scans)} LiDAR frames")
    report = {"converter": "dnmp.converters.waymo", "root": str(root), "segment": segment, "first": first,
              "last": last, "cameras": cameras, "lasers": list(lasers or []) if lidar else [],
              "test_every": test_every, "pixel_poses": bool(lidar and pose_rows)}
    src = {"dataset": "Waymo Open Dataset v2", "segment": segment, "frames": [first, last],
           "licence": "Waymo Dataset License Agreement for Non-Commercial Use"}
    return Capture(name=f"waymo_{segment}", source=src, cameras=cams, frames=frames, scans=scans, distortion=dist,
                   report=report, calib_path=cal_path, pose_path=cal_path, ref_camera=cameras[0])


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``dnmp convert`` for Waymo v2."""
    p = argparse.ArgumentParser(prog="dnmp convert waymo",
                                description="Convert a Waymo Open Dataset v2 segment (Parquet component tables: "
                                            "camera_image, camera_calibration, vehicle_pose, lidar, "
                                            "lidar_calibration[, lidar_pose]) into a dnmp scene.")
    p.add_argument("root", help="folder holding the component folders (camera_image/, ...)")
    p.add_argument("--segment", default=None, help="segment context name (default the first)")
    p.add_argument("--cameras", default=None,
                   help="comma-separated FRONT,FRONT_LEFT,FRONT_RIGHT,SIDE_LEFT,SIDE_RIGHT (default all)")
    p.add_argument("--lasers", default=None, help="comma-separated TOP,FRONT,SIDE_LEFT,SIDE_RIGHT,REAR (default all)")
    p.add_argument("--first", type=int, default=0, help="first frame index in time order (0)")
    p.add_argument("--last", type=int, default=None, help="last frame index, inclusive (default the last)")
    p.add_argument("--test-every", type=int, default=4, help="hold out every N-th frame (4; 0 = none)")
    p.add_argument("--undistort", action="store_true",
                   help="accept cameras with k1,k2,p1,p2,k3 != 0 and undistort them with OpenCV")
    add_output_options(p)
    return p


def main(argv=None) -> int:
    """Command-line entry: 0 on success, 2 with one line ``dnmp: error: ...`` on bad input."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: convert_waymo(
        args.root, args.out, segment=args.segment, cameras=split_list(args.cameras), lasers=split_list(args.lasers),
        first=args.first, last=args.last, test_every=args.test_every, undistort=args.undistort,
        **output_options(args)))


if __name__ == "__main__":
    sys.exit(main())

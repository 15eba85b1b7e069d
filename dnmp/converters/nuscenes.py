"""Convert one nuScenes scene into a dnmp scene, reading the JSON tables directly.

Input layout (nuScenes, e.g. v1.0-mini)::

    <dataroot>/<version>/scene.json, sample.json, sample_data.json, ego_pose.json,
                         calibrated_sensor.json, sensor.json, log.json
    <dataroot>/samples/CAM_FRONT/<...>.jpg          keyframe images
    <dataroot>/samples/LIDAR_TOP/<...>.pcd.bin      keyframe sweeps
    <dataroot>/sweeps/...                           intermediate images / sweeps

Schema used (nuScenes' documented tables; tokens link rows):

- scene: name, first_sample_token; sample: timestamp (microseconds), next.
- sample_data: sample_token, ego_pose_token, calibrated_sensor_token,
  filename, is_key_frame, timestamp, width/height.
- calibrated_sensor: sensor_token, translation (m), rotation (w, x, y, z),
  camera_intrinsic (3x3; empty for LiDAR): the sensor's pose in the ego frame.
- ego_pose: translation, rotation (w, x, y, z): ego -> global, at the
  sample_data's own timestamp. sensor: channel (CAM_FRONT, LIDAR_TOP), modality.
- A LIDAR_TOP .pcd.bin is float32 x 5 per point (x, y, z, intensity, ring),
  in the LiDAR frame.

Conventions: nuScenes camera frames are x right, y down, z forward and its
images are undistorted, so ``cam_to_world = ego_pose @ calibrated_sensor``.
Points go to the world as ``ego_pose(lidar) @ calibrated_sensor(lidar) @ X``;
returns closer than ``min_range`` (the ego vehicle) are dropped.

Split: keyframes in time order; every ``test_every``-th keyframe (all cameras)
is held out (DESIGN.md default 4). Non-keyframe camera images (``keyframes_only
=False``) always train. Depth: each keyframe image gets its sample's LiDAR sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from dnmp.converters.capture import Capture, CaptureFrame, ConversionError, Scan
from dnmp.converters.options import add_output_options, output_options, run_cli, split_list
from dnmp.converters.report import logger
from dnmp.converters.splits import every_nth_split
from dnmp.converters.writer import convert
from dnmp.data.rigid import pose_from_quat
from dnmp.data.scene import Camera

TABLES = ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor", "log")
DEFAULT_CAMERAS = ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")


def find_version_dir(dataroot: Path, version: str | None) -> Path:
    """The table folder: <dataroot>/<version>, or the only/first folder with
    a scene.json (or dataroot itself when it holds the tables)."""
    if version:
        d = dataroot / version
        if not (d / "scene.json").is_file():
            raise ConversionError(d / "scene.json", "nuScenes table is missing")
        return d
    if (dataroot / "scene.json").is_file():
        return dataroot
    cands = sorted(p.parent for p in dataroot.glob("*/scene.json"))
    if not cands:
        raise ConversionError(dataroot, "no nuScenes tables found (expected <dataroot>/<version>/scene.json)")
    return cands[0]


def load_tables(vdir: Path) -> dict:
    """{table: {token: row}} for the tables this converter reads."""
    out = {}
    for t in TABLES:
        p = vdir / f"{t}.json"
        if not p.is_file():
            if t == "log":
                out[t] = {}
                continue
            raise ConversionError(p, "nuScenes table is missing")
        try:
            rows = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConversionError(p, f"not valid JSON ({e.msg})") from None
        if not isinstance(rows, list):
            raise ConversionError(p, "table is not a JSON list of records")
        out[t] = {r["token"]: r for r in rows}
    return out


def _row(tables: dict, table: str, token: str, vdir: Path, ctx: str) -> dict:
    r = tables[table].get(token)
    if r is None:
        raise ConversionError(vdir / f"{table}.json", f"no record with token {token} (needed by {ctx})")
    return r


def _pose(row: dict, where, what: str) -> np.ndarray:
    try:
        q, t = row["rotation"], row["translation"]
    except KeyError as e:
        raise ConversionError(where, f"{what} has no {e.args[0]!r}") from None
    if len(q) != 4 or len(t) != 3:
        raise ConversionError(where, f"{what}: rotation must be (w, x, y, z) and translation (x, y, z)")
    return pose_from_quat(q, t, where, what)


def read_lidar_bin(path: Path, min_range: float = 0.0) -> np.ndarray:
    """LiDAR-frame xyz float64 [N, 3] from a nuScenes .pcd.bin (float32 x 5)."""
    if not path.is_file():
        raise ConversionError(path, "LiDAR sweep is missing")
    size = path.stat().st_size
    if size % 20:
        raise ConversionError(path, f"truncated or corrupt sweep: {size} bytes is not a multiple of 20 "
                              "(5 float32 per point)")
    pts = np.fromfile(path, "<f4").reshape(-1, 5)[:, :3].astype(np.float64)
    if not np.all(np.isfinite(pts)):
        raise ConversionError(path, "sweep contains NaN or Inf coordinates")
    return pts[np.linalg.norm(pts, axis=1) > min_range] if min_range > 0 else pts


def convert_nuscenes(dataroot, out, overwrite: bool = False, **options):
    """Convert one nuScenes scene into the dnmp scene folder ``out``
    (atomically). Options: :func:`read_nuscenes` and
    :func:`dnmp.converters.writer.write_capture`. Returns the loaded
    Scene; raises ConversionError (one line naming the table or file)."""
    return convert(read_nuscenes, dataroot, out, overwrite, **options)


def read_nuscenes(
    dataroot,
    scene: str | None = None,
    version: str | None = None,
    cameras: Sequence[str] | None = None,
    keyframes_only: bool = True,
    lidar_sweeps: bool = True,
    test_every: int = 4,
    lidar: bool = True,
    quiet: bool = False,
) -> Capture:
    """dataroot: nuScenes root (holding <version>/ and samples/). scene: scene
    name (default the first scene). cameras: channels (default the six
    CAM_*). keyframes_only: only images of annotated samples (2 Hz).
    lidar_sweeps: fuse the intermediate LIDAR_TOP sweeps too, not only the
    keyframe ones. test_every: every N-th keyframe held out (0 = none).
    min_range: metres, drops ego-vehicle returns."""
    log = logger(quiet)
    dataroot = Path(dataroot)
    vdir = find_version_dir(dataroot, version)
    T = load_tables(vdir)
    scenes = sorted(T["scene"].values(), key=lambda r: r.get("name", ""))
    if not scenes:
        raise ConversionError(vdir / "scene.json", "no scenes")
    if scene is None:
        sc = scenes[0]
    else:
        sc = next((r for r in scenes if r.get("name") == scene), None)
        if sc is None:
            raise ConversionError(vdir / "scene.json", f"no scene named {scene!r}; scenes: "
                                  f"{', '.join(r.get('name', '?') for r in scenes[:20])}")
    # keyframes in order, following the sample chain
    samples, tok = [], sc.get("first_sample_token")
    while tok:
        s = _row(T, "sample", tok, vdir, f"scene {sc.get('name')}")
        samples.append(s)
        tok = s.get("next") or None
    sample_idx = {s["token"]: k for k, s in enumerate(samples)}
    channel_of = {}
    for sd in T["sample_data"].values():
        if sd.get("sample_token") in sample_idx:
            cs = _row(T, "calibrated_sensor", sd["calibrated_sensor_token"], vdir, f"sample_data {sd['token']}")
            channel_of[sd["token"]] = _row(T, "sensor", cs["sensor_token"], vdir,
                                           f"calibrated_sensor {cs['token']}").get("channel")
    present = sorted({c for c in channel_of.values() if c and c.startswith("CAM")})
    cameras = list(dict.fromkeys(cameras)) if cameras else [c for c in DEFAULT_CAMERAS if c in present]
    for c in cameras:
        if c not in present:
            raise ConversionError(vdir / "sample_data.json", f"scene {sc.get('name')} has no camera {c!r} "
                                  f"(has {', '.join(present) or 'none'})")
    if not cameras:
        raise ConversionError(vdir / "sample_data.json", f"scene {sc.get('name')} has no camera images")
    splits = every_nth_split(len(samples), test_every)

    sds = sorted((T["sample_data"][t] for t in channel_of), key=lambda r: r["timestamp"])
    ego_where = vdir / "ego_pose.json"
    cal_where = vdir / "calibrated_sensor.json"

    def world_from_sensor(sd):
        ego = _row(T, "ego_pose", sd["ego_pose_token"], vdir, f"sample_data {sd['token']}")
        cs = T["calibrated_sensor"][sd["calibrated_sensor_token"]]
        return (_pose(ego, ego_where, f"ego_pose {ego['token']}")
                @ _pose(cs, cal_where, f"calibrated_sensor {cs['token']}"))

    # LiDAR scans: keyframe sweeps (depth) and, optionally, the ones between
    scans, key_scan = [], {}
    if lidar:
        for sd in sds:
            if channel_of[sd["token"]] != "LIDAR_TOP" or not (sd.get("is_key_frame") or lidar_sweeps):
                continue
            Tw = world_from_sensor(sd)
            path = dataroot / sd["filename"]
            scans.append(Scan.rigid(lambda p=path: read_lidar_bin(p), Tw, str(path)))
            if sd.get("is_key_frame"):
                key_scan[sd["sample_token"]] = len(scans) - 1

    cams, frames = {}, []
    for sd in sds:
        c = channel_of[sd["token"]]
        if c not in cameras or (keyframes_only and not sd.get("is_key_frame")):
            continue
        cs = T["calibrated_sensor"][sd["calibrated_sensor_token"]]
        intrinsics = np.asarray(cs.get("camera_intrinsic") or [], np.float64)
        if intrinsics.shape != (3, 3):
            raise ConversionError(cal_where, f"calibrated_sensor {cs['token']} ({c}) has no 3x3 camera_intrinsic")
        if abs(intrinsics[0, 1]) > 1e-9 or np.abs(intrinsics[2] - [0, 0, 1]).max() > 1e-9 or abs(intrinsics[1, 0]) > 1e-9:
            raise ConversionError(cal_where, f"camera_intrinsic of {c} is not a zero-skew pinhole: {intrinsics.tolist()}")
        cam = Camera(name=c, width=int(sd.get("width") or 1600), height=int(sd.get("height") or 900),
                     fx=intrinsics[0, 0], fy=intrinsics[1, 1], cx=intrinsics[0, 2], cy=intrinsics[1, 2])
        if c in cams and cams[c] != cam:
            raise ConversionError(cal_where, f"intrinsics or image size of {c} change within the scene")
        cams[c] = cam
        key = bool(sd.get("is_key_frame"))
        stem = Path(sd["filename"]).name.split(".")[0]
        frames.append(CaptureFrame(
            name=f"{c}/{stem}", camera=c, cam_to_world=world_from_sensor(sd), timestamp=sd["timestamp"] * 1e-6,
            split=splits[sample_idx[sd["sample_token"]]] if key else "train", image=dataroot / sd["filename"],
            scan=key_scan.get(sd["sample_token"]) if key else None))
    lg = T["log"].get(sc.get("log_token"), {})
    log(f"nuscenes: {sc.get('name')} ({vdir.name}), {len(samples)} keyframes, cameras {cameras}, "
        f"{len(frames)} images, {len(scans)} LiDAR sweeps")
    report = {"converter": "dnmp.converters.nuscenes", "dataroot": str(dataroot), "version": vdir.name,
              "scene": sc.get("name"), "cameras": cameras, "keyframes": len(samples),
              "keyframes_only": keyframes_only, "lidar_sweeps": lidar_sweeps, "test_every": test_every}
    src = {"dataset": "nuScenes", "version": vdir.name, "scene": sc.get("name"),
           "description": sc.get("description", ""), "location": lg.get("location", ""),
           "licence": "nuScenes terms of use (CC BY-NC-SA 4.0, non-commercial)"}
    return Capture(name=f"nuscenes_{sc.get('name')}", source=src, cameras=cams, frames=frames, scans=scans,
                   report=report, calib_path=cal_where, pose_path=cal_where, ref_camera=cameras[0])


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``dnmp convert`` for nuScenes."""
    p = argparse.ArgumentParser(prog="dnmp convert nuscenes",
                                description="Convert one nuScenes scene (JSON tables, samples/, sweeps/) "
                                            "into a dnmp scene.")
    p.add_argument("dataroot", help="nuScenes root holding <version>/ (e.g. v1.0-mini), samples/ and sweeps/")
    p.add_argument("--scene", default=None, help="scene name, e.g. scene-0061 (default the first)")
    p.add_argument("--version", default=None, help="table folder name (default: the first with scene.json)")
    p.add_argument("--cameras", default=None, help="comma-separated channels (default the six CAM_*)")
    p.add_argument("--all-frames", action="store_true", help="also non-keyframe camera images (12 Hz; train)")
    p.add_argument("--no-lidar-sweeps", action="store_true", help="fuse only keyframe LiDAR sweeps")
    p.add_argument("--test-every", type=int, default=4, help="hold out every N-th keyframe (4; 0 = none)")
    add_output_options(p)
    return p


def main(argv=None) -> int:
    """Command-line entry: 0 on success, 2 with one line ``dnmp: error: ...`` on bad input."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: convert_nuscenes(
        args.dataroot, args.out, scene=args.scene, version=args.version, cameras=split_list(args.cameras),
        keyframes_only=not args.all_frames, lidar_sweeps=not args.no_lidar_sweeps, test_every=args.test_every,
        **output_options(args)))


if __name__ == "__main__":
    sys.exit(main())

"""Convert a DGP-format scene (TRI's format, used by DDAD) into a dnmp scene.

Input layout (DGP scene format, see ../shared/data/README.md section 1)::

    <root>/scene_dataset_v1.0.json            lists scene files per split (optional)
    <root>/<scene>/scene_<sha>.json           `data` (one entry per sensor datum)
                                              and `samples` (datum keys taken at
                                              one instant + `calibration_key`)
    <root>/<scene>/calibration/<key>.json     `names`, `intrinsics`, `extrinsics`
    <root>/<scene>/rgb/<CAMERA>/<ts>.jpg      images
    <root>/<scene>/point_cloud/LIDAR/<ts>.npz array `data`, N x len(point_format)

Conventions read from the format:

- Every datum carries ``pose`` = that sensor's pose in the scene's metric world
  frame (sensor -> world), as a Hamilton quaternion (qw, qx, qy, qz) plus a
  translation in metres. Camera sensor frames are already optical (x right,
  y down, z forward), so an image datum's pose is its OpenCV ``cam_to_world``.
- A LiDAR datum's points (columns X, Y, Z of ``point_format``) are in the
  LiDAR's frame; its datum pose takes them to the world.
- Intrinsics are pinhole ``fx, fy, cx, cy, skew``; skew or distortion
  coefficients (``k1``..``k6``, ``p1``, ``p2``, fisheye) are refused, named.
- The calibration extrinsics (sensor -> vehicle) are only used for a
  consistency report: world poses come from the datums.

Split (DESIGN.md): for a surround rig sampled at a few instants (<= 5 samples)
the middle sample of every camera is held out; for longer scenes every
``test_every``-th sample (default 4) is.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
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

DATASET_JSON = "scene_dataset_v1.0.json"
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2", "xi", "alpha", "beta")


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(path, "file is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(path, f"not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None


def list_scenes(root: Path) -> list:
    """Scene JSON files of a DGP dataset root, in the dataset file's order
    (deduplicated over splits), or found as ``*/scene_*.json``; a scene folder
    or a scene JSON file given directly is a one-element list."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ConversionError(root, "DGP dataset folder is missing")
    ds = root / DATASET_JSON
    if ds.is_file():
        splits = _load_json(ds).get("scene_splits", {})
        files = []
        for key in sorted(splits, key=lambda k: int(k) if str(k).isdigit() else str(k)):
            files += [f for f in splits[key].get("filenames", []) if f not in files]
        return [root / f for f in files]
    own = sorted(root.glob("scene_*.json"))
    return own or sorted(root.glob("*/scene_*.json"))


def pick_scene(root: Path, scene) -> Path:
    """The scene JSON selected by ``scene``: an index into :func:`list_scenes`,
    the scene folder's name, the file's stem or the scene's ``name``."""
    scenes = list_scenes(root)
    if not scenes:
        raise ConversionError(root, "no scene_*.json found (expected a DGP dataset or scene folder)")
    if scene is None:
        return scenes[0]
    s = str(scene)
    if s.isdigit():
        if int(s) >= len(scenes):
            raise ConversionError(root, f"scene index {s} out of range (there are {len(scenes)} scenes)")
        return scenes[int(s)]
    for p in scenes:
        if s in (p.parent.name, p.stem) or (p.is_file() and _load_json(p).get("name") == s):
            return p
    raise ConversionError(root, f"no scene named {s!r}; scenes: {', '.join(p.parent.name for p in scenes)}")


def parse_time(ts: str, where) -> float:
    """ISO-8601 UTC timestamp ('2464-11-12T01:04:10.027900Z') -> seconds since 1970."""
    try:
        t = datetime.strptime(ts.rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f" if "." in ts else "%Y-%m-%dT%H:%M:%S")
    except (ValueError, AttributeError):
        raise ConversionError(where, f"unreadable timestamp {ts!r}") from None
    return t.replace(tzinfo=timezone.utc).timestamp()


def read_pose(d: dict, where, what: str) -> np.ndarray:
    """DGP {rotation: {qw,qx,qy,qz}, translation: {x,y,z}} -> rigid 4x4."""
    try:
        r, t = d["rotation"], d["translation"]
        q = [float(r["qw"]), float(r["qx"]), float(r["qy"]), float(r["qz"])]
        tv = [float(t["x"]), float(t["y"]), float(t["z"])]
    except (KeyError, TypeError, ValueError):
        raise ConversionError(where, f"{what} is not {{rotation: qw,qx,qy,qz; translation: x,y,z}}") from None
    return pose_from_quat(q, tv, where, what)


def read_calibration(path: Path) -> dict:
    """calibration/<key>.json -> {sensor name: (intrinsics dict, extrinsic 4x4)}."""
    c = _load_json(path)
    try:
        names, intr, extr = c["names"], c["intrinsics"], c["extrinsics"]
    except KeyError as e:
        raise ConversionError(path, f"calibration has no {e.args[0]!r}") from None
    if not (len(names) == len(intr) == len(extr)):
        raise ConversionError(path, f"names/intrinsics/extrinsics lengths differ "
                              f"({len(names)}/{len(intr)}/{len(extr)})")
    return {n: (i, read_pose(e, path, f"extrinsic of {n}")) for n, i, e in zip(names, intr, extr)}


def camera_from_intrinsics(name: str, intr: dict, width: int, height: int, where) -> Camera:
    """Pinhole Camera from DGP intrinsics; refuses skew and distortion, named."""
    try:
        fx, fy, cx, cy = (float(intr[k]) for k in ("fx", "fy", "cx", "cy"))
    except (KeyError, TypeError, ValueError):
        raise ConversionError(where, f"intrinsics of {name} lack fx, fy, cx, cy") from None
    if abs(float(intr.get("skew", 0.0))) > 1e-9:
        raise ConversionError(where, f"{name} has skew {intr['skew']}; only zero-skew pinhole is supported")
    bad = {k: intr[k] for k in DISTORTION_KEYS if k in intr and float(intr[k] or 0) != 0}
    if intr.get("fisheye"):
        bad["fisheye"] = intr["fisheye"]
    if bad:
        raise ConversionError(where, f"{name} has lens distortion {bad}; only undistorted pinhole images "
                              "are supported")
    if not (fx > 0 and fy > 0):
        raise ConversionError(where, f"{name} has non-positive focal length")
    return Camera(name=name, width=int(width), height=int(height), fx=fx, fy=fy, cx=cx, cy=cy)


def read_point_cloud(path: Path, point_format: Sequence[str]) -> np.ndarray:
    """LiDAR-frame xyz float64 [N, 3] from a DGP .npz (array ``data``)."""
    if not path.is_file():
        raise ConversionError(path, "point cloud file is missing")
    try:
        with np.load(path) as z:
            data = np.asarray(z["data"], np.float64)
    except KeyError:
        raise ConversionError(path, "npz has no 'data' array") from None
    except Exception as e:
        raise ConversionError(path, f"truncated or corrupt npz ({type(e).__name__})") from None
    fmt = list(point_format) or ["X", "Y", "Z"]
    if not all(k in fmt for k in "XYZ"):
        raise ConversionError(path, f"point_format {fmt} lacks X, Y, Z")
    if data.ndim != 2 or data.shape[1] != len(fmt):
        raise ConversionError(path, f"data is {data.shape}, expected N x {len(fmt)} ({','.join(fmt)})")
    xyz = data[:, [fmt.index("X"), fmt.index("Y"), fmt.index("Z")]]
    if not np.all(np.isfinite(xyz)):
        raise ConversionError(path, "point cloud contains NaN or Inf")
    return xyz


def convert_dgp(source, out, overwrite: bool = False, **options):
    """Convert one scene of a DGP dataset into the dnmp scene folder ``out``
    (atomically). Options: :func:`read_dgp` and
    :func:`dnmp.converters.writer.write_capture`. Returns the loaded Scene.
    Raises ConversionError (one line naming the file) on unsupported input."""
    return convert(read_dgp, source, out, overwrite, **options)


def read_dgp(
    source,
    scene=None,
    cameras: Sequence[str] | None = None,
    test_every: int | None = None,
    lidar: bool = True,
    quiet: bool = False,
) -> Capture:
    """source: DGP dataset root (with scene_dataset_v1.0.json), a scene folder
    or a scene JSON. scene: index or name (default the first). cameras: names
    (default every camera datum of the scene). test_every: None = middle sample
    held out for <= 5 samples, else every 4th; N = every N-th sample (offset
    N // 2); 0 = none."""
    log = logger(quiet)
    scene_json = pick_scene(Path(source), scene)
    sdir = scene_json.parent
    sj = _load_json(scene_json)
    try:
        data, samples = sj["data"], sj["samples"]
    except KeyError as e:
        raise ConversionError(scene_json, f"scene has no {e.args[0]!r} table") from None
    datums = {d.get("key"): d for d in data}
    samples = sorted(samples, key=lambda s: parse_time(s.get("id", {}).get("timestamp", ""), scene_json))
    if not samples:
        raise ConversionError(scene_json, "scene has no samples")

    # image / point-cloud datums per sample, and the calibration they name
    per_sample, calibs = [], {}
    for si, s in enumerate(samples):
        ck = s.get("calibration_key")
        if ck not in calibs:
            calibs[ck] = read_calibration(sdir / "calibration" / f"{ck}.json")
        entry = {"images": {}, "lidar": None, "calib": ck}
        for key in s.get("datum_keys", []):
            if key not in datums:
                raise ConversionError(scene_json, f"sample {si} lists datum {key} which is not in the data table")
            d = datums[key]
            sensor = d.get("id", {}).get("name")
            kind = next(iter(d.get("datum", {})), None)
            if kind == "image":
                entry["images"][sensor] = d
            elif kind == "point_cloud":
                entry["lidar"] = d if entry["lidar"] is None else entry["lidar"]
        per_sample.append(entry)
    all_cams = sorted({c for e in per_sample for c in e["images"]})
    cameras = list(dict.fromkeys(cameras)) if cameras else all_cams
    for c in cameras:
        if c not in all_cams:
            raise ConversionError(scene_json, f"unknown camera {c!r}; this scene has {', '.join(all_cams)}")

    n = len(per_sample)
    if test_every is None:
        splits = ["test" if i == n // 2 else "train" for i in range(n)] if 1 < n <= 5 else every_nth_split(n, 4)
    else:
        splits = every_nth_split(n, test_every)

    cams, frames, scans, consistency = {}, [], [], []
    for si, e in enumerate(per_sample):
        calib = calibs[e["calib"]]
        cpath = sdir / "calibration" / f"{e['calib']}.json"
        scan_idx = None
        if lidar and e["lidar"] is not None:
            d = e["lidar"]
            pc = d["datum"]["point_cloud"]
            if "pose" not in pc:
                raise ConversionError(scene_json, f"LiDAR datum {d.get('key')} has no pose")
            T_l = read_pose(pc["pose"], scene_json, f"pose of LiDAR datum {d.get('key')}")
            path = sdir / pc.get("filename", "")
            fmt = pc.get("point_format", [])
            scans.append(Scan.rigid(lambda p=path, f=fmt: read_point_cloud(p, f), T_l, str(path)))
            scan_idx = len(scans) - 1
        for c in cameras:
            if c not in e["images"]:
                raise ConversionError(scene_json, f"sample {si} has no {c} image")
            d = e["images"][c]
            im = d["datum"]["image"]
            if c not in calib:
                raise ConversionError(cpath, f"calibration has no sensor {c!r}")
            cam = camera_from_intrinsics(c, calib[c][0], im.get("width", 0), im.get("height", 0), cpath)
            if c in cams and (cams[c].fx, cams[c].cx, cams[c].width) != (cam.fx, cam.cx, cam.width):
                raise ConversionError(cpath, f"intrinsics of {c} change between samples; not supported")
            cams[c] = cam
            if "pose" not in im:
                raise ConversionError(scene_json, f"image datum {d.get('key')} ({c}) has no pose")
            T = read_pose(im["pose"], scene_json, f"pose of image datum {d.get('key')} ({c})")
            fname = im.get("filename", "")
            stem = Path(fname).stem or f"{si:03d}"
            frames.append(CaptureFrame(
                name=f"{c}/{stem}", camera=c, cam_to_world=T,
                timestamp=parse_time(d.get("id", {}).get("timestamp", ""), scene_json),
                split=splits[si], image=sdir / fname, scan=scan_idx))
            # Rig check: LiDAR world pose * (vehicle -> LiDAR) * (camera -> vehicle).
            ln = (e["lidar"] or {}).get("id", {}).get("name")
            if ln in calib and "pose" in e["lidar"]["datum"]["point_cloud"]:
                T_l = read_pose(e["lidar"]["datum"]["point_cloud"]["pose"], scene_json, "LiDAR pose")
                rig = T_l @ np.linalg.inv(calib[ln][1]) @ calib[c][1]
                consistency.append(float(np.linalg.norm(rig[:3, 3] - T[:3, 3])))

    report = {"converter": "dnmp.converters.dgp", "source": str(source), "scene_file": str(scene_json),
              "cameras": cameras, "samples": n, "test_samples": [i for i, s in enumerate(splits) if s == "test"]}
    if consistency:
        report["rig_vs_datum_pose_max_m"] = max(consistency)
        log(f"dgp: camera datum poses vs LiDAR pose + extrinsics: max {max(consistency):.3f} m apart")
    log(f"dgp: {scene_json.relative_to(scene_json.parent.parent)}: {n} samples, cameras {cameras}, "
        f"{len(scans)} LiDAR sweeps")
    src = {"dataset": "DGP", "scene": sdir.name, "scene_file": scene_json.name, "log": sj.get("log", ""),
           "licence": "see the dataset's LICENSE (DDAD: CC BY-NC-SA 4.0; TRI dgp test data: MIT)"}
    return Capture(name=f"dgp_{sdir.name}", source=src, cameras=cams, frames=frames, scans=scans, report=report,
                   calib_path=scene_json, pose_path=scene_json, ref_camera=cameras[0])


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``dnmp convert`` for DGP."""
    p = argparse.ArgumentParser(prog="dnmp convert dgp",
                                description="Convert a DGP-format scene (DDAD, TRI) into a dnmp scene.")
    p.add_argument("source", help="DGP dataset root (scene_dataset_v1.0.json), scene folder or scene JSON")
    p.add_argument("--scene", default=None, help="scene index or name (folder name; default the first)")
    p.add_argument("--cameras", default=None, help="comma-separated camera names (default all, e.g. CAMERA_01)")
    p.add_argument("--test-every", type=int, default=None,
                   help="hold out every N-th sample (0 = none; default: the middle sample when the scene "
                        "has <= 5 samples, else every 4th)")
    add_output_options(p)
    return p


def main(argv=None) -> int:
    """Command-line entry: 0 on success, 2 with one line ``dnmp: error: ...`` on bad input."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: convert_dgp(args.source, args.out, scene=args.scene, cameras=split_list(args.cameras),
                                       test_every=args.test_every, **output_options(args)))


if __name__ == "__main__":
    sys.exit(main())

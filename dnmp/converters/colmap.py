"""Convert a COLMAP sparse reconstruction into a dnmp scene.

Input layout (COLMAP's output folders)::

    <source>/images/<name>                 the images, named as in images.txt/bin
    <source>/sparse/0/cameras.{txt,bin}    (or sparse/, or <source> itself, or --model)
    <source>/sparse/0/images.{txt,bin}
    <source>/sparse/0/points3D.{txt,bin}

Formats read (COLMAP's documented text and binary model formats; binary is
preferred when both exist):

- cameras: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...``; binary: int32 id,
  int32 model id, uint64 width, uint64 height, float64 params (count fixed
  by the model).
- images: ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then one line of
  2-D points (may be empty); binary: int32 id, 4+3 float64, int32 camera id,
  NUL-terminated name, uint64 n, n x (float64 x, float64 y, int64 point id).
- points3D: ``POINT3D_ID X Y Z R G B ERROR TRACK...``; binary: uint64 id,
  3 float64, 3 uint8, float64 error, uint64 track length, track x 2 int32.

Conventions: the pose (qvec as w, x, y, z; tvec) maps world to camera,
``X_cam = R(q) X_world + t``; the camera frame is already x right, y down,
z forward. COLMAP puts the centre of the top-left pixel at (0.5, 0.5) and
DESIGN.md at (0, 0), so cx, cy lose 0.5. PINHOLE and SIMPLE_PINHOLE are
accepted; SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV only with
``undistort`` (OpenCV, same pinhole intrinsics); fisheye and other models are
refused, named. A COLMAP model has no metric scale: ``scale`` multiplies
positions (metres per model unit) and should be set when it is known.

Split: images sorted by name; every ``test_every``-th (default 4, DESIGN.md)
is held out. Timestamps are the image's position in that order (no times).
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

from dnmp.converters.capture import Capture, CaptureFrame, ConversionError, Points
from dnmp.converters.options import add_output_options, output_options, run_cli
from dnmp.converters.report import logger
from dnmp.converters.splits import every_nth_split
from dnmp.converters.writer import convert
from dnmp.data.rigid import check_rigid, quat_to_rotation, rigid_inverse
from dnmp.data.scene import Camera

# model id -> (name, number of params), COLMAP's camera model list
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
MODEL_PARAMS = {name: n for name, n in CAMERA_MODELS.values()}
UNDISTORTABLE = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")


# ----------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------


def _text_lines(path: Path) -> list:
    if not path.is_file():
        raise ConversionError(path, "file is missing")
    return [ln.rstrip("\n") for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]


def read_cameras_text(path: Path) -> dict:
    """cameras.txt -> {camera_id: (model name, width, height, params float64)}."""
    out = {}
    for k, line in enumerate(_text_lines(path), 1):
        tok = line.split()
        if not tok:
            continue
        try:
            cid, model, w, h = int(tok[0]), tok[1], int(tok[2]), int(tok[3])
            params = np.array([float(v) for v in tok[4:]])
        except (ValueError, IndexError):
            raise ConversionError(path, f"camera line {k} is not 'ID MODEL WIDTH HEIGHT PARAMS...'") from None
        if model in MODEL_PARAMS and len(params) != MODEL_PARAMS[model]:
            raise ConversionError(path, f"camera {cid} ({model}) has {len(params)} params, expected "
                                  f"{MODEL_PARAMS[model]}")
        out[cid] = (model, w, h, params)
    return out


def read_images_text(path: Path) -> list:
    """images.txt -> [(image_id, qvec w,x,y,z, tvec, camera_id, name)]."""
    lines = _text_lines(path)
    out, k = [], 0
    while k < len(lines):
        tok = lines[k].split()
        if not tok:  # blank line between records / at the end
            k += 1
            continue
        if len(tok) < 10:
            raise ConversionError(path, f"image record {len(out) + 1} has {len(tok)} fields, expected "
                                  "'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'")
        try:
            iid = int(tok[0])
            q = np.array([float(v) for v in tok[1:5]])
            t = np.array([float(v) for v in tok[5:8]])
            cid = int(tok[8])
        except ValueError:
            raise ConversionError(path, f"image record {len(out) + 1} has non-numeric fields") from None
        out.append((iid, q, t, cid, " ".join(tok[9:])))
        k += 2  # the next line holds the record's 2-D points (possibly empty)
    return out


def read_points3d_text(path: Path):
    """points3D.txt -> (xyz float64 [N, 3], rgb uint8 [N, 3])."""
    xyz, rgb = [], []
    for k, line in enumerate(_text_lines(path), 1):
        tok = line.split()
        if not tok:
            continue
        try:
            xyz.append([float(v) for v in tok[1:4]])
            rgb.append([int(v) for v in tok[4:7]])
        except ValueError:
            raise ConversionError(path, f"point line {k} has non-numeric fields") from None
        if len(xyz[-1]) != 3 or len(rgb[-1]) != 3:
            raise ConversionError(path, f"point line {k} is not 'ID X Y Z R G B ERROR TRACK...'")
    return np.array(xyz, np.float64).reshape(-1, 3), np.array(rgb, np.uint8).reshape(-1, 3)


class _Reader:
    """Little-endian struct reader over a file's bytes; a short read is a
    truncated file."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise ConversionError(path, "file is missing")
        self.path, self.buf, self.pos = path, path.read_bytes(), 0

    def read(self, fmt: str):
        n = struct.calcsize("<" + fmt)
        if self.pos + n > len(self.buf):
            raise ConversionError(self.path, f"truncated binary model: needs more than its {len(self.buf)} bytes")
        v = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return v

    def array(self, dtype, count: int) -> np.ndarray:
        n = np.dtype(dtype).itemsize * count
        if self.pos + n > len(self.buf):
            raise ConversionError(self.path, f"truncated binary model: needs more than its {len(self.buf)} bytes")
        a = np.frombuffer(self.buf, dtype, count, self.pos)
        self.pos += n
        return a

    def cstring(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise ConversionError(self.path, "truncated binary model: unterminated image name")
        s = self.buf[self.pos:end].decode("utf-8", "replace")
        self.pos = end + 1
        return s

    def done(self):
        if self.pos != len(self.buf):
            raise ConversionError(self.path, f"{len(self.buf) - self.pos} unexpected bytes after the last record")


def read_cameras_binary(path: Path) -> dict:
    """cameras.bin -> {camera_id: (model name, width, height, params float64)}."""
    r = _Reader(path)
    out = {}
    for _ in range(r.read("Q")[0]):
        cid, mid, w, h = r.read("iiQQ")
        if mid not in CAMERA_MODELS:
            raise ConversionError(path, f"camera {cid} has unknown model id {mid}")
        name, n = CAMERA_MODELS[mid]
        out[cid] = (name, int(w), int(h), np.array(r.read(f"{n}d")))
    r.done()
    return out


def read_images_binary(path: Path) -> list:
    """images.bin -> [(image_id, qvec w,x,y,z, tvec, camera_id, name)] (2-D points skipped)."""
    r = _Reader(path)
    out = []
    for _ in range(r.read("Q")[0]):
        v = r.read("i7di")
        name = r.cstring()
        n2d = r.read("Q")[0]
        r.array(np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")]), n2d)
        out.append((v[0], np.array(v[1:5]), np.array(v[5:8]), v[8], name))
    r.done()
    return out


def read_points3d_binary(path: Path):
    """points3D.bin -> (xyz float64 [N, 3], rgb uint8 [N, 3]) (tracks skipped)."""
    r = _Reader(path)
    xyz, rgb = [], []
    for _ in range(r.read("Q")[0]):
        v = r.read("Q3d3BdQ")
        xyz.append(v[1:4])
        rgb.append(v[4:7])
        r.array("<i4", 2 * v[8])
    r.done()
    return np.array(xyz, np.float64).reshape(-1, 3), np.array(rgb, np.uint8).reshape(-1, 3)


def find_model(source: Path, model: Path | None = None) -> Path:
    """The folder holding cameras.{bin,txt}: ``model`` if given, else the first
    of <source>/sparse/0, <source>/sparse, <source>."""
    cands = [Path(model)] if model else [source / "sparse" / "0", source / "sparse", source]
    for c in cands:
        if (c / "cameras.bin").is_file() or (c / "cameras.txt").is_file():
            return c
    raise ConversionError(cands[0], "no COLMAP model here (expected cameras.bin or cameras.txt)")


def read_model(model_dir: Path):
    """(cameras, images, (xyz, rgb), kind) of a COLMAP model folder; kind is
    "bin" or "txt" (binary preferred when both are present)."""
    if (model_dir / "cameras.bin").is_file():
        return (read_cameras_binary(model_dir / "cameras.bin"), read_images_binary(model_dir / "images.bin"),
                read_points3d_binary(model_dir / "points3D.bin"), "bin")
    return (read_cameras_text(model_dir / "cameras.txt"), read_images_text(model_dir / "images.txt"),
            read_points3d_text(model_dir / "points3D.txt"), "txt")


def pinhole_of(cid: int, model: str, w: int, h: int, p: np.ndarray, undistort: bool, where):
    """(Camera in the DESIGN.md pixel convention, OpenCV distortion or None).
    Refuses models that are not pinhole unless ``undistort`` allows them."""
    name = f"camera_{cid}"
    if model == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], None
    elif model == "PINHOLE":
        (fx, fy, cx, cy), dist = p[:4], None
    elif model in UNDISTORTABLE:
        if not undistort:
            raise ConversionError(where, f"camera {cid} uses the {model} model (lens distortion); only "
                                  "PINHOLE / SIMPLE_PINHOLE are supported as they are: pass --undistort, "
                                  "or undistort in COLMAP (image_undistorter)")
        if model == "SIMPLE_RADIAL":
            fx = fy = p[0]
            cx, cy, dist = p[1], p[2], [p[3], 0, 0, 0]
        elif model == "RADIAL":
            fx = fy = p[0]
            cx, cy, dist = p[1], p[2], [p[3], p[4], 0, 0]
        else:  # OPENCV: k1 k2 p1 p2; FULL_OPENCV: k1 k2 p1 p2 k3 k4 k5 k6 (OpenCV's order)
            fx, fy, cx, cy = p[:4]
            dist = list(p[4:])
    else:
        raise ConversionError(where, f"camera {cid} uses the {model} model, which is not supported "
                              "(pinhole, or SIMPLE_RADIAL/RADIAL/OPENCV/FULL_OPENCV with --undistort)")
    if not (fx > 0 and fy > 0 and w > 0 and h > 0):
        raise ConversionError(where, f"camera {cid} has non-positive focal length or size")
    cam = Camera(name=name, width=int(w), height=int(h), fx=float(fx), fy=float(fy),
                 cx=float(cx) - 0.5, cy=float(cy) - 0.5)
    return cam, (None if dist is None else np.array(dist, np.float64))


# ----------------------------------------------------------------------------
# Converter
# ----------------------------------------------------------------------------


def convert_colmap(source, out, overwrite: bool = False, **options):
    """Convert a COLMAP sparse model (+ its images) into the dnmp scene folder
    ``out`` (atomically). Options: :func:`read_colmap` and
    :func:`dnmp.converters.writer.write_capture`. Returns the
    loaded Scene; raises ConversionError (one line naming the file)."""
    if not options.get("scale", 1.0) > 0:
        raise ConversionError(source, "--scale must be > 0")
    options.setdefault("voxel", 0.0)  # model units: keep every sfm point unless asked
    return convert(read_colmap, source, out, overwrite, **options)


def read_colmap(
    source,
    model: str | None = None,
    images: str | None = None,
    scale: float = 1.0,
    undistort: bool = False,
    test_every: int = 4,
    quiet: bool = False,
) -> Capture:
    """source: the COLMAP project folder. model: the sparse model folder
    (default sparse/0, sparse or source). images: image folder (default
    <source>/images). scale: metres per model unit (COLMAP is up to scale).
    undistort: allow distorted models (OpenCV undistort, same K). test_every:
    every N-th image by name is held out (0 = none)."""
    log = logger(quiet)
    source = Path(source)
    mdir = find_model(source, Path(model) if model else None)
    img_dir = Path(images) if images else source / "images"
    cams_raw, imgs, (xyz, rgb), kind = read_model(mdir)
    if not imgs:
        raise ConversionError(mdir, "the model has no registered images")
    cam_file = mdir / f"cameras.{kind}"
    cams, dist = {}, {}
    imgs = sorted(imgs, key=lambda r: r[4])
    splits = every_nth_split(len(imgs), test_every)
    frames = []
    for k, (iid, q, t, cid, iname) in enumerate(imgs):
        if cid not in cams_raw:
            raise ConversionError(mdir / f"images.{kind}", f"image {iname!r} uses camera {cid}, which is not in "
                                  f"cameras.{kind}")
        cname = f"camera_{cid}"
        if cname not in cams:
            cams[cname], d = pinhole_of(cid, *cams_raw[cid], undistort, cam_file)
            if d is not None and np.any(d != 0):
                dist[cname] = d
        w2c = np.eye(4)
        w2c[:3, :3] = quat_to_rotation(*q, where=mdir / f"images.{kind}", what=f"image {iname!r}")
        w2c[:3, 3] = t
        w2c = check_rigid(w2c, mdir / f"images.{kind}", f"pose of image {iname!r}", orthonormalise=True)
        c2w = rigid_inverse(w2c)
        c2w[:3, 3] *= scale
        stem = Path(iname).with_suffix("").as_posix().replace("/", "_")
        frames.append(CaptureFrame(name=f"{cname}/{stem}", camera=cname, cam_to_world=c2w, timestamp=float(k),
                                   split=splits[k], image=img_dir / iname))
    if len({f.name for f in frames}) != len(frames):
        raise ConversionError(mdir, "two images map to the same frame name (names differing only in extension)")
    log(f"colmap: {mdir} ({kind}), {len(frames)} images, {len(cams)} cameras, {len(xyz)} points, "
        f"scale {scale:g} m/unit")
    report = {"converter": "dnmp.converters.colmap", "model": str(mdir), "model_format": kind, "scale": scale,
              "test_every": test_every}
    extra = [Points("sfm", xyz * scale, rgb)] if len(xyz) else []
    src = {"dataset": "COLMAP", "model": str(mdir), "scale_m_per_unit": scale,
           "note": "COLMAP reconstructions are up to scale unless --scale was set from a known length"}
    return Capture(name=f"colmap_{source.resolve().name}", source=src, cameras=cams, frames=frames, points=extra,
                   distortion=dist, report=report, calib_path=mdir / f"images.{kind}",
                   pose_path=mdir / f"images.{kind}", check_max_depth=np.inf)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``dnmp convert`` for COLMAP."""
    p = argparse.ArgumentParser(
        prog="dnmp convert colmap",
        description="Convert a COLMAP sparse model (text or binary) and its images into a dnmp scene. "
                    "COLMAP reconstructions are only defined up to scale: pass --scale (metres per model "
                    "unit) when a real length is known, otherwise the scene is in model units.")
    p.add_argument("source", help="COLMAP project folder (images/, sparse/0/)")
    p.add_argument("--model", default=None, help="sparse model folder (default sparse/0, sparse, or source)")
    p.add_argument("--images", default=None, help="image folder (default <source>/images)")
    p.add_argument("--scale", type=float, default=1.0, help="metres per model unit (default 1: up to scale)")
    p.add_argument("--undistort", action="store_true",
                   help="accept SIMPLE_RADIAL/RADIAL/OPENCV/FULL_OPENCV cameras, undistorting with OpenCV")
    p.add_argument("--test-every", type=int, default=4, help="hold out every N-th image by name (4; 0 = none)")
    add_output_options(p, lidar=False, voxel=0.0)
    return p


def main(argv=None) -> int:
    """Command-line entry: 0 on success, 2 with one line ``dnmp: error: ...`` on bad input."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: convert_colmap(args.source, args.out, model=args.model, images=args.images,
                                          scale=args.scale, undistort=args.undistort, test_every=args.test_every,
                                          **output_options(args)))


if __name__ == "__main__":
    sys.exit(main())

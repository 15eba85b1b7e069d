"""The dnmp scene format: read, write, validate.

A scene is a folder (see DESIGN.md, "Scene files")::

    scene.json          the description below
    images/...          8-bit sRGB PNG/JPEG frames, referenced by path
    points/*.ply        world-frame points, float32 xyz (+ optional uint8 rgb)
    depth/...           optional per-frame sparse depth images (LiDAR)
    depth_stereo/...    optional per-frame stereo depth images (training frames)

``scene.json``::

    {
      "format": "dnmp-scene",
      "version": 1,
      "name": "kitti00",
      "source": {"dataset": ..., "sequence": ..., "licence": ...},
      "world_offset": [x, y, z],          # metres; original = scene + offset
      "cameras": {"image_2": {"model": "pinhole", "width": W, "height": H,
                              "fx": .., "fy": .., "cx": .., "cy": ..,
                              "channels": 1        # optional: 1 = grayscale camera
                             }, ...},
      "frames": [{"name": "image_2/000000",          # optional, unique id
                  "image": "images/image_2/000000.png",
                  "camera": "image_2",
                  "cam_to_world": [[4x4 row-major]],
                  "timestamp": 0.0,                   # seconds
                  "split": "train" | "test",
                  "depth": "depth/image_2/000000.png",  # optional, LiDAR
                  "stereo_depth": "depth_stereo/image_2/000000.png"  # optional
                 }, ...],
      "point_clouds": [{"path": "points/lidar.ply", "kind": "lidar"}, ...]
    }

Conventions (DESIGN.md): metres; OpenCV camera (x right, y down, z forward);
``cam_to_world`` is rigid (orthonormal rotation, det +1, checked to 1e-4);
intrinsics put the centre of pixel (u, v) at image coordinates (u, v).

Per-frame sparse depth (the KITTI depth-completion convention): a single-channel
**uint16 PNG** of the frame's size, value = camera-space depth z in metres * 256
(so 1/256 m resolution, up to 255.99 m); **0 means no measurement**.
:func:`read_depth_png` / :func:`write_depth_png` implement it. ``depth`` is
LiDAR projected into the frame; ``stereo_depth`` (same encoding) is depth from
the frame's rectified stereo pair (SGBM disparity, z = fx * baseline / d), written
by the KITTI-family converters for training frames only. Both are optional and
independent; :func:`load_depth` reads either (``kind``).

Grayscale cameras (``"channels": 1``, e.g. KITTI image_0/image_1): their images
are stored as single-channel 8-bit PNGs (the source bytes, when not resized) and
:func:`load_image` returns them as float32 [H, W, 3] with the grey value in all
three channels, so training, metrics and renders need no special case (renders
are grey RGB). A camera without the key has 3 channels (RGB).

Every validation problem raises :class:`SceneError` (a ``ValueError``) whose
message is one line and starts with the offending file's path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

FORMAT_NAME = "dnmp-scene"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
POINT_KINDS = ("lidar", "stereo", "sfm", "mvs")
RIGID_TOL = 1e-4
DEPTH_SCALE = 256.0
CHANNELS = (1, 3)  # grayscale, RGB
DEPTH_KINDS = ("lidar", "stereo")  # Frame.depth, Frame.stereo_depth


class SceneError(ValueError):
    """A scene (or a converter's input) is invalid. The message is one line
    that names the file and the problem."""

    def __init__(self, path, problem: str):
        msg = f"{path}: {problem}" if path is not None else str(problem)
        msg = " ".join(str(msg).split())  # force one line
        super().__init__(msg)
        self.path = None if path is None else str(path)
        self.problem = problem


# ----------------------------------------------------------------------------
# Data classes
# ----------------------------------------------------------------------------


@dataclass
class Camera:
    """A rectified pinhole camera (OpenCV convention, pixel centres at integers)."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    model: str = "pinhole"
    channels: int = 3  # 1: grayscale camera (single-channel images), 3: RGB

    def intrinsics(self, as_tensor: bool = False):
        """K as float32 [3, 3] (numpy, or a torch tensor with ``as_tensor``)."""
        K = np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
            dtype=np.float32,
        )
        if as_tensor:
            import torch

            return torch.from_numpy(K)
        return K

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "width": int(self.width),
            "height": int(self.height),
            "fx": float(self.fx),
            "fy": float(self.fy),
            "cx": float(self.cx),
            "cy": float(self.cy),
            **({"channels": int(self.channels)} if self.channels != 3 else {}),
        }


@dataclass
class Frame:
    """One image of the scene.

    ``image`` / ``depth`` / ``stereo_depth`` are paths relative to the scene
    folder (as in scene.json); ``image_path`` / ``depth_path`` /
    ``stereo_depth_path`` are the resolved paths. ``depth``: LiDAR depth image;
    ``stereo_depth``: stereo depth image (module docstring).
    """

    image: str
    camera: str
    cam_to_world: np.ndarray  # float64 [4, 4]
    timestamp: float
    split: str
    depth: str | None = None
    name: str | None = None
    root: Path | None = field(default=None, repr=False, compare=False)
    stereo_depth: str | None = None

    def __post_init__(self):
        self.cam_to_world = np.asarray(self.cam_to_world, dtype=np.float64).reshape(4, 4)
        if self.name is None:
            self.name = os.path.splitext(self.image)[0]
            if self.name.startswith("images/"):
                self.name = self.name[len("images/"):]

    def world_to_cam(self) -> np.ndarray:
        """Inverse of ``cam_to_world`` (float64 [4, 4]), computed rigidly."""
        R = self.cam_to_world[:3, :3]
        t = self.cam_to_world[:3, 3]
        out = np.eye(4)
        out[:3, :3] = R.T
        out[:3, 3] = -R.T @ t
        return out

    @property
    def camera_centre(self) -> np.ndarray:
        return self.cam_to_world[:3, 3].copy()

    @property
    def image_path(self) -> Path:
        return (self.root or Path(".")) / self.image

    @property
    def depth_path(self) -> Path | None:
        if self.depth is None:
            return None
        return (self.root or Path(".")) / self.depth

    @property
    def stereo_depth_path(self) -> Path | None:
        if self.stereo_depth is None:
            return None
        return (self.root or Path(".")) / self.stereo_depth

    def depth_file(self, kind: str = "lidar") -> Path | None:
        """Resolved path of the ``kind`` ("lidar" or "stereo") depth image, or None."""
        if kind not in DEPTH_KINDS:
            raise ValueError(f"depth kind must be one of {DEPTH_KINDS}, got {kind!r}")
        return self.depth_path if kind == "lidar" else self.stereo_depth_path

    def to_json(self) -> dict:
        d = {
            "name": self.name,
            "image": self.image,
            "camera": self.camera,
            "cam_to_world": [[float(v) for v in row] for row in self.cam_to_world],
            "timestamp": float(self.timestamp),
            "split": self.split,
        }
        if self.depth is not None:
            d["depth"] = self.depth
        if self.stereo_depth is not None:
            d["stereo_depth"] = self.stereo_depth
        return d


@dataclass
class PointCloud:
    path: str
    kind: str
    root: Path | None = field(default=None, repr=False, compare=False)

    @property
    def full_path(self) -> Path:
        return (self.root or Path(".")) / self.path

    def to_json(self) -> dict:
        return {"path": self.path, "kind": self.kind}


@dataclass
class Scene:
    root: Path
    name: str
    source: dict
    world_offset: np.ndarray
    cameras: dict  # name -> Camera
    frames: list  # [Frame]
    point_clouds: list  # [PointCloud]
    version: int = FORMAT_VERSION

    # -- queries ----------------------------------------------------------
    def frames_by_split(self, split: str) -> list:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [f for f in self.frames if f.split == split]

    def camera_of(self, frame: Frame) -> Camera:
        return self.cameras[frame.camera]

    def frame(self, name: str) -> Frame:
        for f in self.frames:
            if f.name == name:
                return f
        raise KeyError(name)

    def load_image(self, frame: Frame) -> np.ndarray:
        return load_image(frame, self.cameras.get(frame.camera))

    def load_depth(self, frame: Frame, kind: str = "lidar") -> np.ndarray:
        """The frame's ``kind`` ("lidar" / "stereo") depth image, float32 [H, W] metres."""
        return load_depth(frame, self.cameras.get(frame.camera), kind)

    def depth_kinds(self, split: str = "train") -> list:
        """The depth kinds ("lidar", "stereo") that at least one ``split`` frame has."""
        return [k for k in DEPTH_KINDS if any(f.depth_file(k) is not None for f in self.frames_by_split(split))]

    def load_points(self, kind: str | None = None, with_colors: bool = False):
        """float32 [N, 3] points of every cloud (``kind=None``) or of one kind.

        With ``with_colors`` returns ``(xyz, rgb)`` where rgb is float32 [N, 3]
        in [0, 1] (NaN rows where a cloud has no colours)."""
        if kind is not None and kind not in POINT_KINDS:
            raise ValueError(f"kind must be one of {POINT_KINDS}, got {kind!r}")
        xyzs, rgbs = [], []
        for pc in self.point_clouds:
            if kind is not None and pc.kind != kind:
                continue
            xyz, rgb = read_ply_points(pc.full_path)
            xyzs.append(xyz)
            if rgb is None:
                rgb = np.full_like(xyz, np.nan)
            rgbs.append(rgb)
        if not xyzs:
            xyz = np.zeros((0, 3), np.float32)
            return (xyz, xyz.copy()) if with_colors else xyz
        xyz = np.concatenate(xyzs).astype(np.float32)
        if with_colors:
            return xyz, np.concatenate(rgbs).astype(np.float32)
        return xyz

    def point_kinds(self) -> list:
        return [pc.kind for pc in self.point_clouds]

    # -- checks -------------------------------------------------------------
    def check_files(self, decode: bool = True) -> None:
        """Verify every referenced file exists; with ``decode`` also that every
        image decodes and matches its camera's width/height (and depth too)."""
        for f in self.frames:
            cam = self.cameras[f.camera]
            if not f.image_path.is_file():
                raise SceneError(f.image_path, f"image file of frame {f.name!r} is missing")
            if decode:
                load_image(f, cam)
            for kind in DEPTH_KINDS:
                path = f.depth_file(kind)
                if path is None:
                    continue
                if not path.is_file():
                    what = "depth" if kind == "lidar" else "stereo depth"
                    raise SceneError(path, f"{what} file of frame {f.name!r} is missing")
                if decode:
                    load_depth(f, cam, kind)
        for pc in self.point_clouds:
            if not pc.full_path.is_file():
                raise SceneError(pc.full_path, f"point cloud ({pc.kind}) is missing")
            if decode:
                read_ply_points(pc.full_path)

    def fingerprint(self) -> str:
        """A short hash of the scene's identity: name, cameras and the frame list
        (name, image, camera, split). Poses and depth images (LiDAR or stereo)
        are not included (so refining them keeps checkpoints valid)."""
        ident = {
            "name": self.name,
            "cameras": {k: self.cameras[k].to_json() for k in sorted(self.cameras)},
            "frames": [[f.name, f.image, f.camera, f.split] for f in self.frames],
        }
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def extent(self, kind: str | None = None):
        """(min xyz, max xyz) over the points (or the camera centres if none)."""
        pts = self.load_points(kind)
        if len(pts) == 0:
            pts = np.stack([f.camera_centre for f in self.frames])
        return pts.min(0), pts.max(0)

    def to_json(self) -> dict:
        return scene_json_dict(
            self.name, self.source, self.world_offset, self.cameras, self.frames,
            self.point_clouds,
        )

    def save(self, root: str | os.PathLike | None = None) -> Path:
        """Write scene.json (only) into ``root`` (default: the scene's own folder)."""
        return write_scene_json(
            root or self.root, self.name, self.source, self.world_offset,
            self.cameras, self.frames, self.point_clouds,
        )


# ----------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------


def check_rigid(T, where, what: str = "cam_to_world", tol: float = RIGID_TOL) -> np.ndarray:
    """Return T as float64 [4, 4] or raise SceneError if it is not a rigid
    transform (shape, finite, last row [0 0 0 1], R^T R = I and det R = +1 to ``tol``)."""
    try:
        T = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError):
        raise SceneError(where, f"{what} is not a numeric matrix") from None
    if T.shape == (3, 4):
        T = np.vstack([T, [0.0, 0.0, 0.0, 1.0]])
    if T.shape != (4, 4):
        raise SceneError(where, f"{what} must be 4x4, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise SceneError(where, f"{what} contains NaN or Inf")
    if np.abs(T[3] - [0, 0, 0, 1]).max() > tol:
        raise SceneError(where, f"{what} last row is {T[3].tolist()}, expected [0, 0, 0, 1]")
    R = T[:3, :3]
    orth = np.abs(R.T @ R - np.eye(3)).max()
    det = float(np.linalg.det(R))
    if orth > tol or abs(det - 1.0) > tol:
        raise SceneError(
            where,
            f"{what} is not rigid (rotation |R^T R - I| = {orth:.2e}, det = {det:.6f}; "
            f"need orthonormal with det +1 within {tol:g})",
        )
    return T


def _require(d: dict, keys: Iterable[str], where, ctx: str):
    if not isinstance(d, dict):
        raise SceneError(where, f"{ctx} must be an object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise SceneError(where, f"{ctx} is missing key(s) {', '.join(missing)}")


def _check_misspelled_keys(data: dict, where) -> None:
    """SceneError for a top-level key that looks like a misspelled known one (e.g.
    "point_cloud"): its content would be ignored silently. Other extra keys are allowed."""
    import difflib

    known = ("format", "version", "name", "source", "world_offset", "cameras", "frames", "point_clouds")
    for key in data:
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.75)
        if key not in known and close and close[0] not in data:
            raise SceneError(where, f"unknown key {key!r}; did you mean {close[0]!r}?")


# ----------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------


def load_scene(path: str | os.PathLike, check_images: bool = False) -> Scene:
    """Read and validate a scene folder (or its scene.json).

    Checks structure, version, cameras, rigid poses and that every referenced
    file exists. Images are decoded lazily (by :func:`load_image`) unless
    ``check_images`` is set, which runs :meth:`Scene.check_files`."""
    path = Path(path)
    if path.is_file() and path.name == "scene.json":
        jpath, root = path, path.parent
    else:
        root = path
        jpath = path / "scene.json"
        if not root.exists():
            raise SceneError(root, "scene folder does not exist")
        if not jpath.is_file():
            raise SceneError(root, "not a dnmp scene (no scene.json in this folder)")
    try:
        with open(jpath, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise SceneError(jpath, f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise SceneError(jpath, f"invalid JSON (not UTF-8 text): {e.reason}") from None
    if not isinstance(data, dict):
        raise SceneError(jpath, "invalid scene: top level must be a JSON object")
    fmt = data.get("format")
    if fmt != FORMAT_NAME:
        raise SceneError(jpath, f"wrong format {fmt!r}, expected {FORMAT_NAME!r}")
    version = data.get("version")
    if version != FORMAT_VERSION:
        raise SceneError(
            jpath,
            f"unknown scene format version {version!r}; this dnmp reads version {FORMAT_VERSION}",
        )
    _require(data, ["name", "cameras", "frames"], jpath, "scene")
    _check_misspelled_keys(data, jpath)
    source = data.get("source", {}) or {}
    try:
        world_offset = np.asarray(data.get("world_offset", [0.0, 0.0, 0.0]), dtype=np.float64)
    except (TypeError, ValueError):  # e.g. "abc": reported below, naming the file
        world_offset = np.full(1, np.nan)
    if world_offset.shape != (3,) or not np.all(np.isfinite(world_offset)):
        raise SceneError(jpath, f"world_offset must be 3 finite numbers, got {data.get('world_offset')!r}")

    cams_json = data["cameras"]
    if not isinstance(cams_json, dict) or not cams_json:
        raise SceneError(jpath, "cameras must be a non-empty object (name -> camera)")
    cameras = {}
    for cname, c in cams_json.items():
        _require(c, ["width", "height", "fx", "fy", "cx", "cy"], jpath, f"camera {cname!r}")
        model = c.get("model", "pinhole")
        if model != "pinhole":
            raise SceneError(jpath, f"camera {cname!r} has model {model!r}; only 'pinhole' is supported")
        try:
            cam = Camera(
                name=cname, width=int(c["width"]), height=int(c["height"]),
                fx=float(c["fx"]), fy=float(c["fy"]), cx=float(c["cx"]), cy=float(c["cy"]),
            )
        except (TypeError, ValueError):
            raise SceneError(jpath, f"camera {cname!r} has non-numeric intrinsics") from None
        channels = c.get("channels", 3)
        if isinstance(channels, bool) or channels not in CHANNELS:
            raise SceneError(jpath, f"camera {cname!r} has channels {channels!r}; expected 1 (grayscale) "
                                    f"or 3 (RGB, the default)")
        cam.channels = int(channels)
        if cam.width <= 0 or cam.height <= 0 or not (cam.fx > 0 and cam.fy > 0):
            raise SceneError(jpath, f"camera {cname!r} needs positive width, height, fx, fy")
        cameras[cname] = cam

    if not isinstance(data["frames"], list) or not data["frames"]:
        raise SceneError(jpath, "frames must be a non-empty list")
    frames = []
    names = set()
    for i, fj in enumerate(data["frames"]):
        ctx = f"frame {i}"
        if not isinstance(fj, dict):
            raise SceneError(jpath, f"{ctx} is not an object")
        _require(fj, ["image", "camera", "cam_to_world", "timestamp", "split"], jpath, ctx)
        for key in ("image", "camera", "split", "name", "depth", "stereo_depth"):
            if key in fj and fj[key] is not None and not isinstance(fj[key], str):
                raise SceneError(jpath, f"{ctx}: {key!r} must be a string, got {type(fj[key]).__name__}")
        if fj["camera"] not in cameras:
            raise SceneError(
                jpath, f"{ctx} ({fj['image']}) references unknown camera {fj['camera']!r} "
                f"(known: {', '.join(sorted(cameras))})"
            )
        if fj["split"] not in SPLITS:
            raise SceneError(jpath, f"{ctx} ({fj['image']}) has split {fj['split']!r}, expected one of {SPLITS}")
        T = check_rigid(fj["cam_to_world"], jpath, f"{ctx} ({fj['image']}) cam_to_world")
        try:
            ts = float(fj["timestamp"])
        except (TypeError, ValueError):
            raise SceneError(jpath, f"{ctx} ({fj['image']}) timestamp is not a number") from None
        fr = Frame(
            image=fj["image"], camera=fj["camera"], cam_to_world=T, timestamp=ts,
            split=fj["split"], depth=fj.get("depth"), name=fj.get("name"), root=root,
            stereo_depth=fj.get("stereo_depth"),
        )
        if fr.name in names:
            raise SceneError(jpath, f"{ctx}: duplicate frame name {fr.name!r}")
        names.add(fr.name)
        if not fr.image_path.is_file():
            raise SceneError(fr.image_path, f"image file of frame {fr.name!r} is missing (referenced by {jpath})")
        if fr.depth is not None and not fr.depth_path.is_file():
            raise SceneError(fr.depth_path, f"depth file of frame {fr.name!r} is missing (referenced by {jpath})")
        if fr.stereo_depth is not None and not fr.stereo_depth_path.is_file():
            raise SceneError(fr.stereo_depth_path, f"stereo depth file of frame {fr.name!r} is missing "
                                                   f"(referenced by {jpath})")
        frames.append(fr)

    pcs = []
    for i, pj in enumerate(data.get("point_clouds", []) or []):
        if not isinstance(pj, dict):
            raise SceneError(jpath, f"point_clouds[{i}] is not an object")
        _require(pj, ["path", "kind"], jpath, f"point_clouds[{i}]")
        if not isinstance(pj["path"], str):
            raise SceneError(jpath, f"point_clouds[{i}]: 'path' must be a string")
        if pj["kind"] not in POINT_KINDS:
            raise SceneError(jpath, f"point_clouds[{i}] has kind {pj['kind']!r}, expected one of {POINT_KINDS}")
        pc = PointCloud(path=pj["path"], kind=pj["kind"], root=root)
        if not pc.full_path.is_file():
            raise SceneError(pc.full_path, f"point cloud file is missing (referenced by {jpath})")
        pcs.append(pc)

    scene = Scene(
        root=root, name=str(data["name"]), source=dict(source), world_offset=world_offset,
        cameras=cameras, frames=frames, point_clouds=pcs, version=version,
    )
    if check_images:
        scene.check_files()
    return scene


def load_image(frame: Frame, camera: Camera | None = None) -> np.ndarray:
    """float32 [H, W, 3] in [0, 1] (grey images are repeated to 3 channels,
    alpha dropped). With ``camera``, the size is checked against it, and for a
    grayscale camera (``channels`` 1) that the file has one channel. Raises
    SceneError (one line naming the file) for a missing, unreadable or
    mismatching image."""
    import imageio.v3 as iio

    p = frame.image_path
    if not p.is_file():
        raise SceneError(p, f"image file of frame {frame.name!r} is missing")
    try:
        img = iio.imread(p)
    except Exception as e:  # imageio raises many types
        raise SceneError(p, f"corrupt or unreadable image ({type(e).__name__}: {e})") from None
    img = np.asarray(img)
    if camera is not None and camera.channels == 1 and not (img.ndim == 2 or img.shape[2] == 1):
        raise SceneError(p, f"camera {camera.name!r} is grayscale (channels 1) but the image has "
                            f"{img.shape[2]} channels")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise SceneError(p, f"unsupported image shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[..., :3]
    if camera is not None and (img.shape[0] != camera.height or img.shape[1] != camera.width):
        raise SceneError(
            p, f"image size mismatch: {img.shape[1]}x{img.shape[0]} but camera "
            f"{camera.name!r} is {camera.width}x{camera.height}"
        )
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def read_depth_png(path) -> np.ndarray:
    """uint16 PNG (metres * 256, 0 = none) -> float32 [H, W] metres (0 = none)."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise SceneError(p, "depth file is missing")
    d = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise SceneError(p, "corrupt or unreadable depth image")
    if d.ndim != 2 or d.dtype != np.uint16:
        raise SceneError(p, f"depth must be single-channel uint16 PNG, got {d.dtype} shape {d.shape}")
    return d.astype(np.float32) / DEPTH_SCALE


def write_depth_png(path, depth: np.ndarray) -> None:
    """float [H, W] metres (<= 0 or non-finite = none) -> uint16 PNG (metres * 256)."""
    import cv2

    d = np.asarray(depth, dtype=np.float64)
    v = np.where(np.isfinite(d) & (d > 0), np.round(d * DEPTH_SCALE), 0)
    v = np.clip(v, 0, 65535).astype(np.uint16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), v):
        raise SceneError(path, "could not write depth PNG")


def load_depth(frame: Frame, camera: Camera | None = None, kind: str = "lidar") -> np.ndarray:
    """float32 [H, W] depth in metres (camera z), 0 = no data, of the frame's
    ``kind`` depth image: "lidar" (``frame.depth``) or "stereo"
    (``frame.stereo_depth``). Raises SceneError when the frame has none, or
    (with ``camera``) its size differs from the camera's."""
    path = frame.depth_file(kind)
    if path is None:
        what = "depth image" if kind == "lidar" else "stereo depth image"
        raise SceneError(frame.image_path, f"frame {frame.name!r} has no {what}")
    d = read_depth_png(path)
    if camera is not None and (d.shape[0] != camera.height or d.shape[1] != camera.width):
        raise SceneError(
            path, f"depth size mismatch: {d.shape[1]}x{d.shape[0]} but camera "
            f"{camera.name!r} is {camera.width}x{camera.height}"
        )
    return d


_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2,
              "uint16": 2, "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4,
              "double": 8, "float64": 8}


def _check_ply_size(p: Path) -> None:
    """Raise SceneError if a PLY file is shorter than its header promises (PLY spec:
    header lines up to ``end_header``, then the elements; binary rows have fixed size
    unless an element has list properties, ASCII rows are one line each)."""
    with open(p, "rb") as fh:
        head = fh.read(65536)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise SceneError(p, "not a PLY file (no 'ply' magic or 'end_header')")
    body_start = head.index(b"\n", end) + 1 if b"\n" in head[end:] else len(head)
    fmt, elements = None, []  # [(name, count, row bytes or None for list rows)]
    for line in head[:end].decode("ascii", "replace").splitlines():
        w = line.split()
        if not w:
            continue
        if w[0] == "format" and len(w) > 1:
            fmt = w[1]
        elif w[0] == "element" and len(w) == 3:
            elements.append([w[1], int(w[2]) if w[2].isdigit() else 0, 0])
        elif w[0] == "property" and elements:
            if w[1] == "list" or w[1] not in _PLY_SIZES:
                elements[-1][2] = None
            elif elements[-1][2] is not None:
                elements[-1][2] += _PLY_SIZES[w[1]]
    body = p.stat().st_size - body_start
    if fmt in ("binary_little_endian", "binary_big_endian"):
        if any(e[2] is None for e in elements):
            return  # variable-size rows: nothing cheap to check
        need = sum(n * size for _, n, size in elements)
        if body < need:
            counts = ", ".join(f"{n} {name}" for name, n, _ in elements)
            raise SceneError(p, f"truncated point cloud: the header promises {counts} ({need} bytes) "
                                f"but the file holds {body} bytes after it")
    elif fmt == "ascii":
        with open(p, "rb") as fh:
            fh.seek(body_start)
            lines = sum(1 for ln in fh if ln.strip())
        need = sum(n for _, n, _ in elements)
        if lines < need:
            raise SceneError(p, f"truncated point cloud: the header promises {need} rows but the "
                                f"file holds {lines}")
    else:
        raise SceneError(p, f"unknown PLY format {fmt!r}")


def read_ply_points(path):
    """(xyz float32 [N, 3], rgb float32 [N, 3] in [0,1] or None) via open3d."""
    import open3d as o3d

    p = Path(path)
    if not p.is_file():
        raise SceneError(p, "point cloud file is missing")
    _check_ply_size(p)  # open3d returns garbage points for a truncated file, with no error
    try:
        pcd = o3d.io.read_point_cloud(str(p), format="ply")
    except Exception as e:
        raise SceneError(p, f"unreadable point cloud ({e})") from None
    xyz = np.asarray(pcd.points, dtype=np.float32)
    if len(xyz) == 0 and p.stat().st_size > 200:
        raise SceneError(p, "unreadable or empty point cloud")
    rgb = np.asarray(pcd.colors, dtype=np.float32) if pcd.has_colors() else None
    return xyz, rgb


def write_ply_points(path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> None:
    """Write a binary PLY with float32 xyz (+ uint8 rgb when given, rgb in [0,1]
    float or uint8)."""
    xyz = np.ascontiguousarray(xyz, dtype="<f4").reshape(-1, 3)
    n = len(xyz)
    props = ["property float x", "property float y", "property float z"]
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8:
            rgb = np.clip(np.round(rgb.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        props += ["property uchar red", "property uchar green", "property uchar blue"]
        rec = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                 ("r", "u1"), ("g", "u1"), ("b", "u1")])
        rec["r"], rec["g"], rec["b"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    else:
        rec = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}", *props,
                        "end_header"]) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(rec.tobytes())


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------


def scene_json_dict(name, source, world_offset, cameras, frames, point_clouds) -> dict:
    cams = cameras.values() if isinstance(cameras, dict) else cameras
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": name,
        "source": dict(source or {}),
        "world_offset": [float(v) for v in np.asarray(world_offset, np.float64).reshape(3)],
        "cameras": {c.name: c.to_json() for c in cams},
        "frames": [f.to_json() for f in frames],
        "point_clouds": [p.to_json() for p in point_clouds],
    }


def write_scene_json(
    root, name: str, source: dict, world_offset, cameras, frames: Sequence[Frame],
    point_clouds: Sequence[PointCloud] = (),
) -> Path:
    """Validate (cameras known, poses rigid, splits valid) and write
    ``root/scene.json`` atomically. ``cameras`` is a dict name->Camera or a list.
    Files referenced are not checked here; call :func:`load_scene` afterwards."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jpath = root / "scene.json"
    cams = dict(cameras) if isinstance(cameras, dict) else {c.name: c for c in cameras}
    for f in frames:
        if f.camera not in cams:
            raise SceneError(jpath, f"frame {f.name!r} references unknown camera {f.camera!r}")
        if f.split not in SPLITS:
            raise SceneError(jpath, f"frame {f.name!r} has split {f.split!r}")
        check_rigid(f.cam_to_world, jpath, f"frame {f.name!r} cam_to_world")
    for p in point_clouds:
        if p.kind not in POINT_KINDS:
            raise SceneError(jpath, f"point cloud {p.path!r} has kind {p.kind!r}")
    data = scene_json_dict(name, source, world_offset, cams, frames, point_clouds)
    tmp = jpath.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, jpath)
    return jpath


# ----------------------------------------------------------------------------
# Downscaling
# ----------------------------------------------------------------------------


def scaled_size(width: int, height: int, factor: float):
    """Output size for downscaling by ``factor``: floor(W / f) x floor(H / f)."""
    if not factor >= 1.0:
        raise ValueError(f"downscale factor must be >= 1, got {factor}")
    return max(1, int(math.floor(width / factor + 1e-9))), max(1, int(math.floor(height / factor + 1e-9)))


def downscale_camera(cam: Camera, factor: float) -> Camera:
    """Intrinsics for an image resized by 1/factor (keeps the OpenCV
    pixel-centre convention): fx' = fx * s, cx' = (cx + 0.5) * s - 0.5, with
    s = W'/W_used where W_used = W' * factor pixels of the source are used
    (the remaining right/bottom columns/rows are cropped)."""
    w2, h2 = scaled_size(cam.width, cam.height, factor)
    sx = 1.0 / factor
    sy = 1.0 / factor
    return Camera(
        name=cam.name, width=w2, height=h2, fx=cam.fx * sx, fy=cam.fy * sy,
        cx=(cam.cx + 0.5) * sx - 0.5, cy=(cam.cy + 0.5) * sy - 0.5, model=cam.model,
        channels=cam.channels,
    )


def downscale_image(img: np.ndarray, factor: float) -> np.ndarray:
    """Area-resize an image (uint8/float, HxW or HxWxC) by 1/factor; crops the
    right/bottom remainder so the scale is exactly 1/factor."""
    import cv2

    if factor == 1:
        return img
    h, w = img.shape[:2]
    w2, h2 = scaled_size(w, h, factor)
    cw, ch = min(w, int(round(w2 * factor))), min(h, int(round(h2 * factor)))
    return cv2.resize(img[:ch, :cw], (w2, h2), interpolation=cv2.INTER_AREA)


def downscale_depth(depth: np.ndarray, factor: float) -> np.ndarray:
    """Nearest-valid downsampling of sparse depth (0 = none): each output pixel
    takes the nearest (smallest) valid depth among the source pixels whose
    centres fall into it."""
    h, w = depth.shape
    w2, h2 = scaled_size(w, h, factor)
    v, u = np.nonzero(depth > 0)
    z = depth[v, u]
    u2 = np.floor((u + 0.5) / factor).astype(np.int64)
    v2 = np.floor((v + 0.5) / factor).astype(np.int64)
    ok = (u2 < w2) & (v2 < h2)
    out = np.full((h2, w2), np.inf, dtype=np.float64)
    np.minimum.at(out, (v2[ok], u2[ok]), z[ok])
    out[~np.isfinite(out)] = 0
    return out.astype(np.float32)


def downscale_scene(src, dst, factor: float, overwrite: bool = False) -> Scene:
    """Copy scene ``src`` to ``dst`` with images downscaled by ``factor`` (area
    interpolation), intrinsics scaled (:func:`downscale_camera`), depth images
    (LiDAR and stereo) downsampled nearest-valid, point clouds copied. Returns the new scene."""
    import imageio.v3 as iio

    scene = load_scene(src)
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise SceneError(dst, "destination exists and is not empty (pass overwrite=True)")
        shutil.rmtree(dst)
    dst.mkdir(parents=True, exist_ok=True)
    cams = {n: downscale_camera(c, factor) for n, c in scene.cameras.items()}
    frames = []
    for f in scene.frames:
        raw = iio.imread(f.image_path)
        small = downscale_image(np.asarray(raw), factor)
        out = dst / f.image
        out.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(out, small)
        nf = dataclasses.replace(f, root=dst)
        for rel, path in ((f.depth, f.depth_path), (f.stereo_depth, f.stereo_depth_path)):
            if rel is not None:
                write_depth_png(dst / rel, downscale_depth(read_depth_png(path), factor))
        frames.append(nf)
    pcs = []
    for pc in scene.point_clouds:
        out = dst / pc.path
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pc.full_path, out)
        pcs.append(PointCloud(pc.path, pc.kind, root=dst))
    for extra in ("LICENSE.md", "LICENSE"):
        if (scene.root / extra).is_file():
            shutil.copyfile(scene.root / extra, dst / extra)
    write_scene_json(dst, scene.name, scene.source, scene.world_offset, cams, frames, pcs)
    return load_scene(dst)

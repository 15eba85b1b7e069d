"""The dnmp scene format: its dataclasses and the scene.json parser and writer.

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
:func:`dnmp.data.images.read_depth_png` / ``write_depth_png`` implement it. ``depth`` is
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

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

FORMAT_NAME = "dnmp-scene"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
# stereo_far: stereo points beyond the converters' --stereo-near-depth
POINT_KINDS = ("lidar", "stereo", "stereo_far", "sfm", "mvs")
DEPTH_SCALE = 256.0
CHANNELS = (1, 3)  # grayscale, RGB
DEPTH_KINDS = ("lidar", "stereo")  # Frame.depth, Frame.stereo_depth



from dnmp.data.errors import SceneError
from dnmp.data.images import load_depth, load_image
from dnmp.data.ply import read_ply_points
from dnmp.data.rigid import check_rigid, rigid_inverse


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
        """The pinhole intrinsics matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (pixels) as
        float32 [3, 3] (numpy, or a torch tensor with ``as_tensor``)."""
        intrinsics = np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
            dtype=np.float32,
        )
        if as_tensor:
            import torch

            return torch.from_numpy(intrinsics)
        return intrinsics

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
        return rigid_inverse(self.cam_to_world)

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

    def to_json(self) -> dict:
        return scene_json_dict(
            self.name, self.source, self.world_offset, self.cameras, self.frames,
            self.point_clouds,
        )


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

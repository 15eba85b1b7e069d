"""What a format reader returns: one :class:`Capture` (cameras, frames, LiDAR
scans, other points, a stereo pair, provenance), in the source's own world
frame and clock. :func:`dnmp.converters.writer.write_capture` turns any
Capture into a scene; a reader raises :class:`ConversionError` for input it
cannot read.

Conventions (DESIGN.md): metres, seconds, OpenCV cameras (x right, y down,
z forward), ``cam_to_world`` rigid float64 [4, 4] into the source's world.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dnmp.data.errors import SceneError


class ConversionError(SceneError):
    """A converter's input is unsupported or broken (one-line message naming
    the file)."""


@dataclass
class CaptureFrame:
    """One output image.

    name: unique ``<camera>/<stem>`` (the stem names its image and depth
    files); cam_to_world: float64 [4, 4], camera -> source world; timestamp:
    seconds on the source's clock (the writer makes them relative to the
    earliest frame); split: "train" | "test"; image: a PNG/JPEG file, its
    encoded bytes, or a callable returning uint8 [H, W, 3]; scan: index into
    :attr:`Capture.scans` of the scan that gives this frame's sparse depth."""

    name: str
    camera: str
    cam_to_world: np.ndarray
    timestamp: float
    split: str
    image: Path | bytes | Callable[[], np.ndarray]
    scan: int | None = None

    @property
    def stem(self) -> str:
        return self.name.split("/", 1)[1] if "/" in self.name else self.name


@dataclass
class Scan:
    """One LiDAR sweep. ``load()`` returns (points float64 [N, 3] in the
    source world, range of each point from the sensor float64 [N], metres);
    the range lets the writer drop ego-vehicle returns the same way for every
    format. ``where`` names the file in messages."""

    load: Callable[[], tuple]
    where: str = ""

    @classmethod
    def rigid(cls, load_sensor_points: Callable[[], np.ndarray], sensor_to_world: np.ndarray, where: str = ""):
        """A scan whose ``load_sensor_points()`` gives [N, 3] points in the
        sensor frame and whose sensor pose is one rigid [4, 4]."""
        def load():
            from dnmp.data.rigid import transform

            xyz = np.asarray(load_sensor_points(), np.float64).reshape(-1, 3)
            return transform(sensor_to_world, xyz), np.linalg.norm(xyz, axis=1)
        return cls(load, where)


@dataclass
class Points:
    """A point cloud that is not a LiDAR scan, in the source world: kind
    "lidar" (fused with the scans, e.g. KITTI-360's accumulated clouds) or
    another scene point kind (e.g. COLMAP's "sfm", written on its own);
    xyz float64 [N, 3]; rgb uint8 or float in [0, 1] [N, 3] or None."""

    kind: str
    xyz: np.ndarray
    rgb: np.ndarray | None = None


@dataclass
class StereoPair:
    """A rectified pair for SGBM points of the training frames: camera names,
    baseline (metres, > 0), and optionally ``source_pair(i)`` -> (left uint8
    [H, W, 3], right, left cam_to_world) of any source frame index ``i``
    (also those a stride skips) or None, for the no-LiDAR pose check."""

    left: str
    right: str
    baseline: float
    source_pair: Callable[[int], tuple | None] | None = None


@dataclass
class Capture:
    """Everything a reader found, before any output choice.

    name: default scene name; source: provenance written into scene.json
    (dataset, sequence, licence...); cameras: name -> full-resolution
    :class:`~dnmp.data.scene.Camera` (the pinhole part of a distorted one);
    frames: :class:`CaptureFrame` in output order; scans: :class:`Scan`;
    points: other :class:`Points`; stereo: a :class:`StereoPair` or None;
    distortion: camera -> OpenCV coefficients (k1, k2, p1, p2[, k3...]) of
    cameras to undistort; report: the reader's facts for
    conversion_report.json; calib_path / pose_path: the files the projection
    check / the scan agreement checks blame; ref_camera: the camera whose
    trajectory the summary measures (default the first); check_max_depth:
    the projection check's depth range when the scene is not metric (COLMAP:
    inf), else the writer's max_depth."""

    name: str
    source: dict
    cameras: dict
    frames: list
    scans: list = field(default_factory=list)
    points: list = field(default_factory=list)
    stereo: StereoPair | None = None
    distortion: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    calib_path: object = "projection check"
    pose_path: object = "poses"
    ref_camera: str | None = None
    check_max_depth: float | None = None

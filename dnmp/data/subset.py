"""A scene restricted to some of its frames (a block of a long drive).

The subset keeps the scene's folder, cameras and point-cloud files; its frames are
the chosen ones, and its points are those that at least one of its frames sees (in
front of the camera, inside the image), so primitives are placed only where the
subset's cameras look. Its fingerprint is that of the frame subset, so a model
trained on it is recognised as belonging to it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .scene import Scene


class SceneSubset(Scene):
    """A `Scene` of a subset of frames whose `load_points` keeps only points seen by them.

    Build with `subset_scene`. `parent_fingerprint` is the whole scene's fingerprint.
    """

    near: float = 0.05

    def load_points(self, kind: str | None = None, with_colors: bool = False):
        out = super().load_points(kind, with_colors)
        xyz = out[0] if with_colors else out
        keep = points_seen(xyz, self, self.frames, self.near)
        return (xyz[keep], out[1][keep]) if with_colors else xyz[keep]


def subset_scene(scene: Scene, frame_names, name: str | None = None) -> SceneSubset:
    """The scene restricted to the frames named `frame_names` (in the scene's order).

    Raises:
        ValueError: a name that is not a frame of the scene, or no names.
    """
    wanted = list(frame_names)
    known = {f.name for f in scene.frames}
    missing = [n for n in wanted if n not in known]
    if missing or not wanted:
        raise ValueError(f"{scene.root}: frames {missing[:3] or '(none)'} are not frames of scene "
                         f"{scene.name!r}")
    keep = set(wanted)
    values = {f.name: getattr(scene, f.name) for f in dataclasses.fields(scene)}
    values["frames"] = [f for f in scene.frames if f.name in keep]
    values["name"] = name or scene.name
    sub = SceneSubset(**values)
    sub.parent_fingerprint = scene.fingerprint() if not isinstance(scene, SceneSubset) \
        else scene.parent_fingerprint
    return sub


def points_seen(xyz: np.ndarray, scene: Scene, frames, near: float = 0.05) -> np.ndarray:
    """bool [N]: which world-frame points (float [N, 3], metres) at least one of `frames`
    sees: camera z > near and the projection inside the image (pixel centres at integer
    coordinates, so inside means -0.5 <= u < W - 0.5, same for v)."""
    seen = np.zeros(len(xyz), dtype=bool)
    if len(xyz) == 0:
        return seen
    pts = np.asarray(xyz, dtype=np.float64)
    for f in frames:
        cam = scene.camera_of(f)
        w2c = f.world_to_cam()
        pc = pts @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[:, 2]
        front = z > near
        zs = np.where(front, z, 1.0)
        u = cam.fx * pc[:, 0] / zs + cam.cx
        v = cam.fy * pc[:, 1] / zs + cam.cy
        seen |= front & (u >= -0.5) & (u < cam.width - 0.5) & (v >= -0.5) & (v < cam.height - 0.5)
    return seen

"""How much of a scene's images its primitives cover, per point cloud kind (`dnmp coverage`)."""

from __future__ import annotations

import torch

from pathlib import Path

from .data.scene import Scene, load_scene
from .model import Primitives, voxelize
from .ops import rasterize


def primitive_coverage(scene: Scene | str | Path, split: str = "test", voxel_size: float = 0.5,
                       device: torch.device | None = None) -> dict:
    """Voxelize each point cloud kind of `scene` (a Scene or its folder; with several
    kinds, also all together)
    into primitives of edge `voxel_size` metres, rasterize the `split` frames, and count
    the pixels covered by at least one face, on `device` (None: the CPU).

    Returns {"scene", "split", "voxel_size", "coverage": {kinds joined by "+":
    {"primitives": int, "covered_fraction": float in [0, 1]}}}.
    Raises: ValueError when the scene has no `split` frames; as `load_scene`.
    """
    if not isinstance(scene, Scene):
        scene = load_scene(scene)
    frames = scene.frames_by_split(split)
    if not frames:
        raise ValueError(f"{scene.root}: no {split!r} frames")
    kinds = sorted(set(scene.point_kinds()))
    combos = [[k] for k in kinds] + ([kinds] if len(kinds) > 1 else [])
    result = {"scene": scene.name, "split": split, "voxel_size": voxel_size, "coverage": {}}
    for combo in combos:
        pts = torch.cat([torch.from_numpy(scene.load_points(k)) for k in combo])
        prims = Primitives(voxelize(pts, voxel_size), voxel_size, feature_dim=1).to(device)
        verts = prims.vertices().detach()
        covered = total = 0
        for f in frames:
            cam = scene.camera_of(f)
            frags = rasterize(verts, prims.faces, cam.intrinsics(as_tensor=True).to(verts.device),
                              torch.from_numpy(f.world_to_cam()).float().to(verts.device),
                              (cam.height, cam.width))
            covered += int((frags.pix_to_face[..., 0] >= 0).sum())
            total += cam.height * cam.width
        result["coverage"]["+".join(combo)] = {"primitives": prims.num_primitives,
                                               "covered_fraction": covered / total}
    return result

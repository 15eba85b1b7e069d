"""Downscaling: image size, intrinsics (pixel-centre convention), images
(area), sparse depth (nearest valid) and whole scene folders."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np

from dnmp.data.images import read_depth_png, read_image, write_depth_png
from dnmp.data.scene import Camera, PointCloud, Scene, SceneError, load_scene, write_scene_json


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
        small = downscale_image(read_image(f.image_path), factor)
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

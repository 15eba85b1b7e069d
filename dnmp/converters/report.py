"""What a conversion tells its user: progress bars and log lines
(:func:`progress`, :func:`logger`), the summary (:func:`print_summary`) and
the top-down picture ``overview.png`` (:func:`write_overview`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dnmp.converters.capture import ConversionError
from dnmp.data.scene import Frame


def progress(it, quiet: bool, **kw):
    """``tqdm(it, **kw)``, or ``it`` itself when quiet."""
    if quiet:
        return it
    from tqdm import tqdm

    return tqdm(it, **kw)


def logger(quiet: bool) -> Callable:
    """``print``, or a function that prints nothing when quiet."""
    return (lambda *a: None) if quiet else print


def travelled_distance(frames: Sequence[Frame], camera: str | None = None) -> float:
    fs = [f for f in frames if camera is None or f.camera == camera]
    fs = sorted(fs, key=lambda f: f.timestamp)
    c = np.array([f.camera_centre for f in fs])
    return float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum()) if len(c) > 1 else 0.0


def print_summary(scene, ref_camera: str | None = None, quiet: bool = False) -> dict:
    """Return (and print, unless ``quiet``) frames per camera and split,
    points per kind, extent, travelled distance and size on disk."""
    log = logger(quiet)
    info = {"frames": {}, "points": {}}
    for cname in scene.cameras:
        for split in ("train", "test"):
            n = sum(1 for f in scene.frames if f.camera == cname and f.split == split)
            info["frames"][f"{cname}/{split}"] = n
    log(f"scene {scene.name!r}")
    log("  frames: " + ", ".join(f"{k} {v}" for k, v in info["frames"].items()))
    all_pts = []
    for pc in scene.point_clouds:
        pts = scene.load_points(pc.kind)
        info["points"][pc.kind] = len(pts)
        all_pts.append(pts)
    log("  points: " + (", ".join(f"{k} {v}" for k, v in info["points"].items()) or "none"))
    if all_pts:
        pts = np.concatenate(all_pts)
        lo, hi = pts.min(0).astype(np.float64), pts.max(0).astype(np.float64)
        info["extent"] = (np.round(lo, 3).tolist(), np.round(hi, 3).tolist())
        log(f"  extent (scene coords, m): min {np.round(lo, 2).tolist()} max {np.round(hi, 2).tolist()} "
              f"size {np.round(hi - lo, 2).tolist()}")
    ref = ref_camera or next(iter(scene.cameras))
    info["travelled"] = travelled_distance(scene.frames, ref)
    log(f"  travelled ({ref}): {info['travelled']:.2f} m; world_offset "
          f"{np.round(scene.world_offset, 3).tolist()}")
    size = sum(p.stat().st_size for p in Path(scene.root).rglob("*") if p.is_file())
    info["bytes"] = size
    log(f"  size on disk: {size / 1e6:.1f} MB")
    return info


def write_overview(scene, path, size: int = 900, max_points: int = 200_000) -> Path:
    """Draw a top-down picture of the scene (PNG, ``size`` x ``size`` pixels):
    points (grey, coloured by height), camera centres along the trajectory and
    each camera's viewing direction as an arrow (train cyan, test orange), and a
    10 m scale bar. "Up" is estimated as minus the mean camera y axis (driving
    cameras are mounted roughly level, DESIGN.md's cameras have y down), so the
    picture works whatever the dataset's world axes are.
    """
    import cv2

    frames = list(scene.frames)
    if not frames:
        raise ConversionError(scene.root, "scene has no frames to draw")
    c2w = np.stack([f.cam_to_world for f in frames])
    up = -c2w[:, :3, 1].mean(0)
    up /= max(np.linalg.norm(up), 1e-12)
    # Horizontal axes: the mean forward direction, made orthogonal to up.
    fwd = c2w[:, :3, 2].mean(0)
    fwd = fwd - up * (fwd @ up)
    if np.linalg.norm(fwd) < 1e-6:
        fwd = np.cross(up, [1.0, 0, 0]) if abs(up[0]) < 0.9 else np.cross(up, [0, 1.0, 0])
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    pts = [scene.load_points(pc.kind) for pc in scene.point_clouds]
    pts = np.concatenate(pts).astype(np.float64) if pts else np.zeros((0, 3))
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(0).choice(len(pts), max_points, replace=False)]
    centres = c2w[:, :3, 3]
    xy = lambda p: np.stack([p @ right, p @ fwd], -1)
    all_xy = np.concatenate([xy(centres), xy(pts)]) if len(pts) else xy(centres)
    lo, hi = np.percentile(all_xy, 1, axis=0), np.percentile(all_xy, 99, axis=0)
    lo = np.minimum(lo, xy(centres).min(0)) - 2
    hi = np.maximum(hi, xy(centres).max(0)) + 2
    scale = (size - 40) / max(float((hi - lo).max()), 1e-6)

    def to_px(p2):
        q = (p2 - lo) * scale + 20
        return np.stack([q[:, 0], size - q[:, 1]], -1)  # forward is up in the picture

    img = np.full((size, size, 3), 255, np.uint8)
    if len(pts):
        q = np.round(to_px(xy(pts))).astype(int)
        h = pts @ up
        hn = np.clip((h - np.percentile(h, 2)) / max(np.ptp(np.percentile(h, [2, 98])), 1e-6), 0, 1)
        col = (200 - 160 * hn).astype(np.uint8)
        ok = (q[:, 0] >= 0) & (q[:, 0] < size) & (q[:, 1] >= 0) & (q[:, 1] < size)
        img[q[ok, 1], q[ok, 0]] = col[ok, None]
    arrow = max(1.5, 0.04 * float((hi - lo).max()))
    for f, T in zip(frames, c2w):
        a = to_px(xy(T[None, :3, 3]))[0]
        b = to_px(xy(T[None, :3, 3] + arrow * T[None, :3, 2]))[0]
        color = (0, 140, 255) if f.split == "test" else (200, 160, 0)  # BGR for cv2
        cv2.arrowedLine(img, tuple(int(x) for x in a), tuple(int(x) for x in b), color, 2, tipLength=0.3)
    bar = 10 * scale
    cv2.line(img, (20, size - 15), (int(20 + bar), size - 15), (0, 0, 0), 2)
    cv2.putText(img, "10 m", (int(25 + bar), size - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, f"{scene.name}: train (blue) / test (orange) cameras", (20, 20),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise ConversionError(path, "could not write the overview picture")
    return path

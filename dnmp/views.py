"""Render a trajectory's views to files: colour, depth, coverage, and videos of each.

`render_views` is what `dnmp render` calls for every `--trajectory` (`dnmp.trajectory`).
For each view (named NAME) it writes into the output folder:

- `NAME.png`: colour, 8-bit sRGB (grey RGB for a grayscale camera).
- with depth: `NAME_depth.png`, 16-bit, metres x 256 (0 = no surface), the format of the
  scenes' LiDAR depth images (`dnmp.data.read_depth_png` reads it; 3.9 mm steps, up to
  256 m), or `NAME_depth.npy` (float32 [H, W] metres, 0 = none) with `depth_format="npy"`;
  plus `NAME_depth_preview.png`, log depth colour-mapped (turbo) over a fixed range for
  the whole trajectory (near = red, far = blue, black = no surface).
- with coverage: `NAME_coverage.png`, 8-bit, 255 x coverage.

Depth and coverage are `DNMPRenderer.render`'s (paper Sec. 3.3 compositing, K layers near
to far, fine over coarse): with layer weights w_k = alpha_k * prod_{j<k} (1 - alpha_j),
coverage = sum_k w_k = 1 - background transmittance (the accumulated opacity), and
depth = the surface depth: camera-space z in metres of the first layer at which the
accumulated opacity reaches `SURFACE_OPACITY` (0.05, `dnmp.model.renderer`); where it never
does, sum_k w_k z_k / sum_k w_k; 0 where no layer is hit. The weighted mean (or the median)
would read behind the surface where half-transparent layers follow it (README, "Novel views").

With `video_fps`, one H.264 mp4 per camera and output, frames in view order:
`PREFIX_CAMERA.mp4`, `PREFIX_CAMERA_depth.mp4` (the previews), `PREFIX_CAMERA_coverage.mp4`.
Every file is written under a temporary name and renamed when complete, so an interrupt
(Ctrl-C, SIGTERM) leaves finished files and no partial one; videos stream frame by frame
(memory does not grow with their length).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data.images import write_depth_png
from ._io import VideoStream, write_atomic, write_image_atomic
from .evaluate import render_camera, to_uint8

DEPTH_FORMATS = ("png", "npy")


def depth_preview(depth: np.ndarray, near: float = 1.0, far: float = 80.0) -> np.ndarray:
    """Colour picture of a depth map: uint8 [H, W, 3] RGB, OpenCV's turbo colour map over
    log depth from near (red) to far (blue), clipped outside; black where depth <= 0.

    Args: depth float [H, W] metres (0 = none); near, far: metres, 0 < near < far.
    Raises: ValueError for a bad range.
    """
    import cv2

    if not 0.0 < near < far:
        raise ValueError(f"depth preview range must satisfy 0 < near < far, got {near}, {far}")
    d = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(d) & (d > 0)
    logd = np.log(np.where(valid, d, near))
    x = np.clip((math.log(far) - logd) / (math.log(far) - math.log(near)), 0.0, 1.0)
    rgb = cv2.applyColorMap((x * 255.0 + 0.5).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
    return np.where(valid[..., None], rgb, 0).astype(np.uint8)


def render_views(renderer, views: list, out_dir: str | Path, depth: bool = False,
                 coverage: bool = False, depth_format: str = "png",
                 depth_range: tuple[float, float] = (1.0, 80.0), video_fps: float | None = None,
                 video_prefix: str = "views", progress: bool = True) -> dict:
    """Render `views` (`dnmp.trajectory.View`) and write the files of the module docstring.

    Args:
        renderer: has `render(intrinsics, cam_to_world, height, width)` (a `DNMPRenderer` or
            a block run's `BlockRenderer`).
        views: in output order (videos follow it, one per camera name).
        out_dir: created if missing.
        depth, coverage: also write those outputs.
        depth_format: "png" (16-bit, metres x 256) or "npy" (float32 metres).
        depth_range: (near, far) metres of the depth previews' colour map.
        video_fps: write mp4s at this frame rate (None: no video).
        video_prefix: first part of the video names.
        progress: show a progress bar (tqdm, on stderr).
    Returns:
        {"out": folder, "views": count, "images": files written, "videos": [{"path", "frames"}]}.
    Raises:
        ValueError: no views, an unknown depth format, a bad depth range.
        KeyboardInterrupt (dnmp's `Interrupted` on SIGINT/SIGTERM): after removing the
            temporary files; the views finished so far stay, the videos are not written.
    """
    if not views:
        raise ValueError("no views to render")
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f"depth format must be one of {', '.join(DEPTH_FORMATS)}, got {depth_format!r}")
    near, far = depth_range
    depth_preview(np.zeros((1, 1)), near, far)  # checks the range before any rendering
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    streams: dict[tuple[str, str], VideoStream] = {}
    images = 0

    def emit(view, kind: str, img: np.ndarray):
        if video_fps is None:
            return
        key = (view.camera.name, kind)
        if key not in streams:
            suffix = "" if kind == "rgb" else f"_{kind}"
            streams[key] = VideoStream(out / f"{video_prefix}_{view.camera.name}{suffix}.mp4", video_fps)
        streams[key].append(img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2))

    try:
        with torch.no_grad():
            for view in tqdm(views, desc="render", disable=not progress, unit="view"):
                res = render_camera(renderer, view.camera, view.cam_to_world)
                rgb = to_uint8(res["rgb"])
                write_image_atomic(out / f"{view.name}.png", rgb)
                images += 1
                emit(view, "rgb", rgb)
                if depth:
                    d = res["depth"].cpu().numpy().astype(np.float32)
                    if depth_format == "png":
                        write_atomic(out / f"{view.name}_depth.png", lambda p: write_depth_png(p, d))
                    else:
                        write_atomic(out / f"{view.name}_depth.npy", lambda p: np.save(p, d))
                    prev = depth_preview(d, near, far)
                    write_image_atomic(out / f"{view.name}_depth_preview.png", prev)
                    images += 2
                    emit(view, "depth", prev)
                if coverage:
                    cov = to_uint8(res["coverage"].unsqueeze(-1))[..., 0]
                    write_image_atomic(out / f"{view.name}_coverage.png", cov)
                    images += 1
                    emit(view, "coverage", cov)
        videos = [{"path": s.close(), "frames": s.frames} for s in streams.values()]
        streams.clear()
    finally:
        for s in streams.values():
            s.abort()
    return {"out": out, "views": len(views), "images": images, "videos": videos}


def render_trajectory(run, kind: str = "dataset", file: str | None = None, out: str | Path | None = None,
                      split: str | None = None, offset=(0.0, 0.0, 0.0), rig_camera: str | None = None,
                      camera: str | None = None, fps: float | None = None, speed: float | None = None,
                      frames: int | None = None, downscale: float | None = None, video: bool = False,
                      depth: bool = False, coverage: bool = False, depth_format: str = "png",
                      depth_range: tuple[float, float] = (1.0, 80.0), progress: bool = True) -> dict:
    """`dnmp render`: the views of a trajectory (`dnmp.trajectory.make_trajectory`) of an
    opened run (`dnmp.train.run.open_run`) rendered by `render_views`.

    Default folder RUN/renders/LABEL and video prefix: `SPLIT_frames` / SPLIT for the recorded
    frames (as before trajectories existed), `SPLIT_shift_X_Y_Z` for a shift (rig-frame
    offset in metres), `interpolate_CAMERA_FPSfps`, `path_STEM` for a camera-path file.
    `fps` is the video frame rate (default 10 for recorded frames, the file's or 30 for a
    path) and, for interpolate, also the sampling rate (default 30).

    Returns: render_views' dict plus "label" and "fps".
    Raises: ValueError (one line) for bad options or input, as the functions named.
    """
    from .trajectory import lane_offset, make_trajectory

    views, natural_fps = make_trajectory(run.scene, kind, file, split=split, offset=offset,
                                         rig_camera=rig_camera, camera=camera, fps=fps, speed=speed,
                                         frames=frames, downscale=downscale)
    if fps is not None and not fps > 0:
        raise ValueError(f"--fps must be positive, got {fps}")
    video_fps = fps or natural_fps or (10.0 if kind in ("dataset", "shift") else 30.0)
    if kind == "dataset":
        label, prefix = f"{split or 'test'}_frames", split or "test"
    elif kind == "shift":
        x, y, z = lane_offset(offset)
        label = prefix = f"{split or 'test'}_shift_{x:g}_{y:g}_{z:g}"
    elif kind == "interpolate":
        label = prefix = f"interpolate_{views[0].camera.name}_{video_fps:g}fps"
    else:
        label = prefix = f"path_{Path(file).stem}"
    folder = Path(out) if out else Path(run.run_dir) / "renders" / label
    result = render_views(run.renderer, views, folder, depth=depth, coverage=coverage,
                          depth_format=depth_format, depth_range=depth_range,
                          video_fps=video_fps if video else None, video_prefix=prefix,
                          progress=progress)
    result.update(label=label, fps=video_fps)
    return result

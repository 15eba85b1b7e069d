"""Render a scene's frames with a trained model, score them against the images, and
write the figures and images of `dnmp render` / `dnmp eval`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import metrics
from ._io import write_image_atomic, write_json_atomic
from .data.scene import Scene
from .model import DNMPRenderer


# a pixel counts as covered by primitives when they give at least this much of its colour
COVERED_OPACITY = 0.5


def frame_file_stem(frame) -> str:
    """A flat file name for a frame (frame names may contain '/')."""
    return str(frame.name).replace("/", "_").replace(os.sep, "_")


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """float [H, W, 3] in [0, 1] -> uint8 (rounded)."""
    return (img.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def render_frame(renderer: DNMPRenderer, scene: Scene, frame) -> dict[str, torch.Tensor]:
    """Render one scene frame with its camera's intrinsics and pose (`render_camera`)."""
    return render_camera(renderer, scene.camera_of(frame), frame.cam_to_world)


def render_camera(renderer: DNMPRenderer, cam, cam_to_world: np.ndarray) -> dict[str, torch.Tensor]:
    """Render a pinhole camera (`dnmp.data.Camera`: size, intrinsics, channels) at a pose
    (float64 [4, 4] cam_to_world, OpenCV axes, metres); see DNMPRenderer.render for the
    outputs (rgb [H, W, 3], depth [H, W] metres, coverage [H, W]). For a grayscale camera
    (`channels` 1) rgb holds the channel mean in all three channels."""
    out = renderer.render(cam.intrinsics(as_tensor=True),
                          torch.from_numpy(np.asarray(cam_to_world)), cam.height, cam.width)
    if cam.channels == 1:  # a grayscale camera sees the mean of the channels
        out["rgb"] = out["rgb"].mean(-1, keepdim=True).expand_as(out["rgb"]).contiguous()
    return out


def evaluate(renderer: DNMPRenderer, scene: Scene, split: str = "test",
             out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """PSNR / SSIM / LPIPS of `split` frames; optionally writes `<frame>_pred.png` and
    `<frame>_gt.png` side by side into out_dir.

    Returns a dict with keys `{split}_psnr`, `{split}_ssim`, `{split}_lpips` (None when
    unavailable, with `lpips_note` giving the reason), `num_{split}_frames`, `per_frame`,
    `ssim_note` (which implementation and data range), and the PSNR of the pixels the
    primitives cover and of the rest (the background field's): `{split}_psnr_covered`,
    `{split}_psnr_uncovered`, `{split}_covered_fraction` (see `covered_note`), and
    `render_bf16_matmul` (the renders' MLPs ran on bf16 operands, `RenderConfig.bf16_matmul`).
    """
    frames = scene.frames_by_split(split)
    if not frames:
        raise ValueError(f"{scene.root}: scene has no {split!r} frames to evaluate")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    per_frame, lpips_note = [], None
    pooled = {"covered": [0.0, 0], "uncovered": [0.0, 0]}  # squared error, pixels
    for frame in tqdm(frames, desc=f"render {split}", disable=not progress, leave=False):
        res = render_frame(renderer, scene, frame)
        pred = res["rgb"]  # on the model's device
        gt = torch.from_numpy(scene.load_image(frame)).to(pred.device)
        row = {"frame": frame.name, "psnr": metrics.psnr(pred, gt), "ssim": metrics.ssim(pred, gt)}
        covered = res["coverage"] >= COVERED_OPACITY
        for key, mask in (("covered", covered), ("uncovered", ~covered)):
            sse, n = metrics.masked_mse(pred, gt, mask)
            pooled[key][0] += sse
            pooled[key][1] += n
        try:
            row["lpips"] = metrics.lpips(pred, gt)
        except metrics.LPIPSUnavailable as exc:
            row["lpips"], lpips_note = None, str(exc)
        per_frame.append(row)
        if out is not None:
            stem = frame_file_stem(frame)
            write_image_atomic(out / f"{stem}_pred.png", to_uint8(pred))
            write_image_atomic(out / f"{stem}_gt.png", to_uint8(gt))

    def mean(key):
        vals = [r[key] for r in per_frame]
        return None if any(v is None for v in vals) else float(np.mean(vals))

    result = {
        f"{split}_psnr": mean("psnr"),
        f"{split}_ssim": mean("ssim"),
        f"{split}_lpips": mean("lpips"),
        f"num_{split}_frames": len(frames),
        "ssim_note": "torchmetrics structural_similarity_index_measure, Gaussian 11x11 sigma 1.5, "
                     "data_range=1.0, RGB in [0,1], mean over frames",
        "psnr_note": "per-frame PSNR (data range 1) averaged over frames",
        f"{split}_psnr_covered": metrics.psnr_of_mse(*pooled["covered"]),
        f"{split}_psnr_uncovered": metrics.psnr_of_mse(*pooled["uncovered"]),
        f"{split}_covered_fraction": pooled["covered"][1] / max(1, sum(v[1] for v in pooled.values())),
        "covered_note": f"covered: pixels whose accumulated primitive opacity (1 - background "
                        f"transmittance) is >= {COVERED_OPACITY}; PSNR of covered / uncovered pixels "
                        f"pooled over all frames (one MSE over those pixels), None when there are none",
        "per_frame": per_frame,
        # renders of a CPU with bf16 matrix kernels run their MLPs on bf16 operands
        # (RenderConfig.bf16_matmul; ~0.001 dB): say which, so figures compare honestly
        "render_bf16_matmul": _bf16_renders(renderer),
    }
    if lpips_note:
        result["lpips_note"] = lpips_note
    return result


def _bf16_renders(renderer) -> bool:
    """Whether `render_frame`'s renders run the fused ops with bf16 operands: a model's own
    choice; for a block run (`BlockRenderer`, models loaded per frame with the default
    RenderConfig) the default's, on the device the blocks are placed on."""
    if isinstance(renderer, DNMPRenderer):
        dev = renderer.primitives.features.device
        return renderer.fused_shading_available(dev) and renderer.bf16_matmul(dev)
    from .model.renderer import default_bf16_matmul

    return default_bf16_matmul(getattr(renderer, "device", None) or "cpu")


@torch.no_grad()
def depth_errors(renderer: DNMPRenderer, scene: Scene, split: str = "test",
                 max_range: float = 40.0, composited: bool = False) -> dict:
    """Absolute error of the rendered surface depth against LiDAR on `split` frames.

    The rendered depth of a pixel is the camera-space z of its first non-empty
    layer in compositing order (fine scale's nearest face, else the coarse
    scale's), i.e. the primitive surface, not the colour-weighted depth; with
    `composited` it is the depth `dnmp render --depth` writes (`DNMPRenderer.render`'s
    surface depth: the first layer at which the accumulated opacity reaches 0.05; needs a
    trained radiance field; pixels with no layer count as not covered). Only pixels with LiDAR depth
    in (0, max_range] metres count.

    Returns {"median_m", "p90_m", "mean_m" (over the LiDAR pixels the primitives
    cover), "covered" (fraction of LiDAR pixels covered), "pixels" (LiDAR pixels),
    "frames", "max_range_m"}; errors are None when nothing is covered.
    Raises:
        ValueError: no `split` frame has a depth image.
    """
    frames = [f for f in scene.frames_by_split(split) if f.depth is not None]
    if not frames:
        raise ValueError(f"{scene.root}: no {split!r} frame has a depth image (LiDAR)")
    errs, total = [], 0
    for frame in frames:
        cam = scene.camera_of(frame)
        if composited:
            z0 = render_frame(renderer, scene, frame)["depth"]
        else:
            w2c = torch.from_numpy(frame.world_to_cam()).float()
            frags = renderer.rasterize(cam.intrinsics(as_tensor=True), w2c, (cam.height, cam.width))
            z = frags.zbuf[0]  # [H, W, K_total], layers in compositing order
            hit = z > 0
            first = torch.argmax(hit.to(torch.uint8), dim=-1, keepdim=True)
            z0 = torch.where(hit.any(-1), torch.gather(z, -1, first)[..., 0], z.new_zeros(()))
        gt = torch.from_numpy(scene.load_depth(frame)).to(z0.device)
        m = (gt > 0) & (gt <= max_range)
        total += int(m.sum())
        cov = m & (z0 > 0)
        errs.append((z0[cov] - gt[cov]).abs())
    e = torch.cat(errs).double()
    out = {"frames": len(frames), "pixels": total, "max_range_m": max_range,
           "covered": e.numel() / max(1, total)}
    if e.numel():
        out.update(median_m=float(e.median()), p90_m=float(np.percentile(e.cpu().numpy(), 90)),
                   mean_m=float(e.mean()))
    else:
        out.update(median_m=None, p90_m=None, mean_m=None)
    return out


def evaluate_run(checkpoint: str | Path, scene: str | Path | None = None,
                 out_dir: str | Path | None = None, images: bool = True,
                 progress: bool = True, device=None) -> tuple[dict, Path]:
    """`dnmp eval`: open a checkpoint, run folder or block run (`train.run.open_run`), score it on its test frames
    (`evaluate`), with renders in OUT/renders/test unless `images` is False, and merge
    the figures into OUT/metrics.json (default OUT: the run folder), keeping the other
    keys training wrote. `device`: where the model renders (as `open_run`; None: the
    CPU). Returns (result, metrics.json path). Raises: as `open_run`."""
    from .train.run import open_run

    run = open_run(checkpoint, scene, device)
    out = Path(out_dir) if out_dir else run.run_dir
    result = evaluate(run.renderer, run.scene, "test", out / "renders" / "test" if images else None,
                      progress)
    result["checkpoint"] = run.source
    result["step"] = run.step
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    merged = {}
    if path.is_file():
        try:
            merged = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            merged = {}  # unreadable: rewritten whole
    write_json_atomic(path, {**merged, **result})
    return result, path

"""Geometry stage (paper Sec. 3.2): fit primitive shapes to depth images.

The shape decoder is frozen; each primitive's unit-norm latent and its centre
offset (bounded by a hinge to half a voxel) are optimised so that the depth of
the nearest rasterized face (zbuf of layer 0, differentiated through the
rasterizer's backward pass to the vertices) matches the depth images of the
training frames, with Laplacian-smoothing and normal-consistency regularisers on
the decoded meshes. Each scale (fine, coarse) is fitted on its own.

The depth is LiDAR projected into the frames (scene field ``depth``) or dense
depth from the training frames' stereo pairs (``stereo_depth``; the paper uses
multi-view-stereo depth): :func:`geometry_depth_kind` picks one per scene from
``TrainConfig.geometry_depth``.

A step renders a few small windows centred on random LiDAR pixels of random
training frames and decodes only the primitives those windows saw at the last
visibility refresh, so its cost follows the batch, not the scene size.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import ops
from ..data.scene import Scene
from ..model import DNMPRenderer
from ..model.mesh_losses import mesh_laplacian_smoothing, mesh_normal_consistency
from .config import TrainConfig


def geometry_depth_kind(scene: Scene, setting: str = "auto") -> str:
    """The depth images the geometry stage fits to: "lidar" (frame field
    ``depth``) or "stereo" (``stereo_depth``), from ``setting``
    (`TrainConfig.geometry_depth`): "lidar" / "stereo" as named, "auto" LiDAR
    when any training frame has a LiDAR depth image, else stereo.

    Raises:
        ValueError: (one line naming the scene) no training frame has the
            requested kind (for "auto": neither), or an unknown ``setting``.
    """
    kinds = scene.depth_kinds("train")
    if setting == "auto":
        if not kinds:
            raise ValueError(f"{scene.root}: no training frame has LiDAR depth or stereo depth images (frame "
                             f"fields `depth`, `stereo_depth`); the geometry stage needs one (use --stages radiance)")
        return kinds[0]  # "lidar" first
    if setting not in ("lidar", "stereo"):
        raise ValueError(f"geometry_depth must be 'auto', 'lidar' or 'stereo', got {setting!r}")
    if setting not in kinds:
        what = "LiDAR depth images (`depth`)" if setting == "lidar" else "stereo depth images (`stereo_depth`)"
        raise ValueError(f"{scene.root}: geometry_depth = {setting!r} but no training frame has {what}; "
                         f"it has: {', '.join(kinds) or 'none'}")
    return setting


class _FrameDepth:
    """One training frame's depth pixels (within range, of the ``kind`` depth
    image: "lidar" or "stereo") and camera. The depth image and world_to_cam are on
    ``device`` (the model's); intrinsics and the pixel list stay on the CPU, where the
    windows are drawn (a CPU generator: the same windows on every device)."""

    def __init__(self, scene: Scene, frame, max_range: float, kind: str = "lidar",
                 device: torch.device | None = None):
        cam = scene.camera_of(frame)
        depth = scene.load_depth(frame, kind)
        v, u = np.nonzero((depth > 0) & (depth <= max_range))
        self.frame = frame
        self.height, self.width = cam.height, cam.width
        self.intrinsics = cam.intrinsics(as_tensor=True).float()
        self.world_to_cam = torch.from_numpy(frame.world_to_cam()).float().to(device)
        self.depth = torch.from_numpy(depth).to(device)
        self.pixels = torch.from_numpy(np.stack([v, u], 1)).long()  # [M, 2] rows, cols


def offset_hinge(offsets: torch.Tensor, voxel_sizes: torch.Tensor) -> torch.Tensor:
    """Hinge keeping each primitive's centre inside its voxel: mean over primitives
    of sum_xyz relu(|offset| - s/2)^2 / s^2 (dimensionless; 0 inside the voxel).

    Args: offsets float [S, 3] metres; voxel_sizes float [S] metres.
    """
    half = (voxel_sizes / 2).unsqueeze(1)
    return (F.relu(offsets.abs() - half) ** 2 / half.pow(2) / 4).sum(1).mean()


def window_cameras(fd: _FrameDepth, centres: torch.Tensor, size: int):
    """Square windows of ``size`` pixels around pixel centres ``centres`` int64 [N, 2]
    (row, col), clamped inside the image. Returns (top-left int64 [N, 2], intrinsics
    float32 [N, 3, 3] of the window cameras: the principal point shifted by the
    window's top-left corner, DESIGN.md pixel-centre convention)."""
    h, w = min(size, fd.height), min(size, fd.width)
    top = (centres[:, 0] - h // 2).clamp(0, fd.height - h)
    left = (centres[:, 1] - w // 2).clamp(0, fd.width - w)
    k = fd.intrinsics.unsqueeze(0).repeat(len(centres), 1, 1)
    k[:, 0, 2] -= left.float()
    k[:, 1, 2] -= top.float()
    return torch.stack([top, left], 1), k


def window_depth_l1(prims, index: torch.Tensor, latents: torch.Tensor, offsets: torch.Tensor,
                    intrinsics: torch.Tensor, world_to_cam: torch.Tensor, gt: torch.Tensor,
                    cfg: TrainConfig):
    """L1 depth loss of some primitives rendered into N windows (paper Sec. 3.2).

    Args:
        prims: the `Primitives`; index: int64 [S] primitives to decode and rasterize.
        latents, offsets: float [S, D] / [S, 3] their latents and offsets (rows
            gathered from the parameters; gradients flow back to them).
        intrinsics: float32 [N, 3, 3] window cameras; world_to_cam: float32 [4, 4].
        gt: float32 [N, h, w] depth of the window pixels (LiDAR or stereo; metres, 0 = none).
    Returns:
        (loss, shape): mean |zbuf_0 - gt| in metres over pixels with depth in
        (0, cfg.depth_max_range] that a face covers (None if there is none), and the
        decoded unit-frame meshes float [S, 42, 3] for the regularisers. The depth is
        the rasterizer's zbuf of layer 0, differentiable w.r.t. the vertices.
    """
    verts, shape = prims.decode(index, latents, offsets, return_shape=True)
    n, h, w = gt.shape
    frags = ops.rasterize(verts.reshape(-1, 3), prims.local_faces(index.numel()), intrinsics,
                          world_to_cam.expand(n, 4, 4), (h, w), faces_per_pixel=1,
                          near=cfg.near, far=cfg.far)
    z = frags.zbuf[..., 0]
    m = (z > 0) & (gt > 0) & (gt <= cfg.depth_max_range)
    if not m.any():
        return None, shape
    return (z[m] - gt[m]).abs().mean(), shape


class GeometryFitter:
    """The geometry stage's state and one optimisation step (paper Sec. 3.2).

    Holds the training frames' depth pixels (LiDAR or stereo:
    :func:`geometry_depth_kind` of `cfg.geometry_depth`, in `self.kind`), the
    SparseAdam optimisers of the latents and offsets, and per scale and frame the
    primitive seen at every pixel (layer 0) from the last `refresh()`. `step()`
    samples `cfg.geometry_windows` windows and updates only the primitives they see.

    Raises (constructor):
        ValueError: no training frame has depth of that kind within `cfg.depth_max_range`.
    """

    def __init__(self, renderer: DNMPRenderer, scene: Scene, cfg: TrainConfig):
        self.renderer, self.cfg = renderer, cfg
        self.prims = prims = renderer.primitives
        self.kind = kind = geometry_depth_kind(scene, cfg.geometry_depth)
        frames = [f for f in scene.frames_by_split("train") if f.depth_file(kind) is not None]
        # frames with depth pixels in range (each image read once here, not kept)
        self.frames = [f for f in frames if _FrameDepth(scene, f, cfg.depth_max_range, kind).pixels.numel()]
        self.scene = scene
        if not self.frames:
            what = "LiDAR" if kind == "lidar" else "stereo"
            raise ValueError(f"{scene.root}: no training frame has {what} depth within "
                             f"{cfg.depth_max_range} m; the geometry stage needs it "
                             f"(use --stages radiance)")
        self.scales = [s for s, (a, b) in enumerate(prims.scale_ranges()) if b > a]
        self.lat_opt = torch.optim.SparseAdam([prims.latents], lr=cfg.geometry_lr_latent)
        self.off_opt = torch.optim.SparseAdam([prims.offsets], lr=cfg.geometry_lr_offset)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        # Windows come from a pool of at most geometry_pool_frames frames, the next ones of
        # a seeded cyclic order at every refresh, so memory and refresh time do not grow
        # with the drive (a drive that fits is pooled whole, in order).
        n = len(self.frames)
        self.pool_size = min(cfg.geometry_pool_frames, n)
        self.order = (torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
                      if self.pool_size < n else list(range(n)))
        self.refreshes = 0
        self.data: list[_FrameDepth] = []  # the pool
        self.visible: list[list[torch.Tensor]] = []  # [scale][pool frame] -> int32 [H, W]
        prims.latents.requires_grad_(True)
        prims.offsets.requires_grad_(True)

    def refresh(self) -> None:
        """Move the pool to its next frames and rasterize them with the current shapes
        (layer 0 per scale) to know which primitive each pixel sees."""
        per_face = self.prims.faces_per_primitive
        n, r = len(self.frames), self.refreshes
        wanted = [self.order[(r * self.pool_size + i) % n] for i in range(self.pool_size)]
        loaded = {id(d.frame): d for d in self.data}
        self.data = [loaded.get(id(self.frames[i])) or
                     _FrameDepth(self.scene, self.frames[i], self.cfg.depth_max_range, self.kind,
                                 self.prims.centres.device)
                     for i in wanted]
        self.refreshes += 1
        self.visible.clear()
        self.renderer.refresh_geometry()
        for s in self.scales:
            per_frame = []
            for d in self.data:
                frags = self.renderer.rasterize_scale(s, d.intrinsics, d.world_to_cam,
                                                      (d.height, d.width), faces_per_pixel=1)
                p2f = frags.pix_to_face[0, ..., 0]
                per_frame.append(torch.where(p2f >= 0, p2f // per_face, p2f).to(torch.int32))
            self.visible.append(per_frame)

    def step(self) -> float | None:
        """One SparseAdam step on the latents and offsets the sampled windows see.
        Returns the depth L1 (metres, mean over windows) or None when no window had a
        covered depth pixel (nothing updated)."""
        prims, cfg, gen = self.prims, self.cfg, self.gen
        if not self.visible:
            self.refresh()
        template_faces = prims.decoder.template_faces
        dev = prims.centres.device
        win = cfg.geometry_window
        fi = torch.randint(0, len(self.data), (cfg.geometry_windows,), generator=gen)
        depth_loss, reg_loss, n_terms, touched = 0.0, 0.0, 0, []
        with torch.enable_grad():
            for s in range(len(self.scales)):
                # windows of several frames: one rasterize call per (scale, frame)
                for f in fi.unique().tolist():
                    d = self.data[f]
                    n = int((fi == f).sum())
                    pick = d.pixels[torch.randint(0, len(d.pixels), (n,), generator=gen)]
                    topleft, k = window_cameras(d, pick, win)
                    h, w = min(win, d.height), min(win, d.width)
                    # windows are drawn on the CPU (its generator), used on the model's device
                    rows = (topleft[:, :1, None] + torch.arange(h).view(1, h, 1)).to(dev)
                    cols = (topleft[:, 1:, None] + torch.arange(w).view(1, 1, w)).to(dev)
                    seen = self.visible[s][f][rows, cols]  # [n, h, w]
                    idx = torch.unique(seen[seen >= 0]).long()
                    if idx.numel() == 0:
                        continue
                    touched.append(idx)
                    lat = F.embedding(idx, prims.latents, sparse=True)
                    off = F.embedding(idx, prims.offsets, sparse=True)
                    loss_d, shape = window_depth_l1(prims, idx, lat, off, k.to(dev), d.world_to_cam,
                                                    d.depth[rows, cols], cfg)
                    if loss_d is not None:
                        depth_loss = depth_loss + loss_d
                        n_terms += 1
                    reg_loss = reg_loss + \
                        cfg.w_laplacian * mesh_laplacian_smoothing(shape, template_faces).mean() + \
                        cfg.w_normal * mesh_normal_consistency(shape, template_faces).mean() + \
                        cfg.w_offset * offset_hinge(off, prims.voxel_sizes[idx])
            if n_terms == 0:
                return None
            loss = (depth_loss + reg_loss) / n_terms
            self.lat_opt.zero_grad(set_to_none=True)
            self.off_opt.zero_grad(set_to_none=True)
            loss.backward()
        self.lat_opt.step()
        self.off_opt.step()
        with torch.no_grad():
            # keep latents on the unit sphere and offsets within one voxel (a hard
            # bound behind the hinge); only the rows this step touched
            t = torch.unique(torch.cat(touched))
            prims.latents[t] = F.normalize(prims.latents[t], dim=-1)
            lim = prims.voxel_sizes[t].unsqueeze(1)
            prims.offsets[t] = torch.maximum(torch.minimum(prims.offsets[t], lim), -lim)
        return float(depth_loss.detach()) / n_terms


def train_geometry(renderer: DNMPRenderer, scene: Scene, cfg: TrainConfig, progress: bool = True,
                   log=print) -> dict:
    """Run the geometry stage in place on ``renderer.primitives`` (latents, offsets):
    `cfg.geometry_steps` steps of `GeometryFitter`, re-deciding visibility every
    `cfg.geometry_refresh_every` steps.

    Uses the training frames' depth images of the kind :func:`geometry_depth_kind`
    picks (LiDAR, else stereo, for `cfg.geometry_depth = "auto"`). Returns
    {"steps", "seconds", "ms_per_step", "loss_depth_l1_m" (running mean at the
    end, metres), "depth_source" ("lidar" | "stereo"), "depth_frames" (training
    frames with such depth)}.

    Raises:
        ValueError: no training frame has depth of that kind within `cfg.depth_max_range`.
        FloatingPointError: the loss became NaN/Inf.
    """
    prims = renderer.primitives
    fitter = GeometryFitter(renderer, scene, cfg)
    log(f"geometry stage: fitting to the {'LiDAR' if fitter.kind == 'lidar' else 'stereo'} depth of "
        f"{len(fitter.frames)} training frames"
        + (f" (windows from {fitter.pool_size} of them at a time, the next ones every "
           f"{cfg.geometry_refresh_every} steps)" if fitter.pool_size < len(fitter.frames) else ""))
    t0 = time.time()
    running = None
    bar = tqdm(total=cfg.geometry_steps, desc="geometry", disable=not progress,
               mininterval=1.0 if sys.stderr.isatty() else 10.0, dynamic_ncols=True)
    try:
        for step in range(cfg.geometry_steps):
            if step % cfg.geometry_refresh_every == 0:
                fitter.refresh()
            dl = fitter.step()
            bar.update(1)
            if dl is None:
                continue
            if not math.isfinite(dl):
                raise FloatingPointError(f"geometry stage: depth loss became {dl} at step {step}")
            running = dl if running is None else 0.95 * running + 0.05 * dl
            if step % 10 == 0:
                bar.set_postfix(depth_l1=f"{running:.3f} m")
    finally:
        bar.close()
        prims.latents.requires_grad_(False)
        prims.offsets.requires_grad_(False)
        renderer.refresh_geometry()
    seconds = time.time() - t0
    return {"steps": cfg.geometry_steps, "seconds": round(seconds, 1),
            "ms_per_step": round(1000 * seconds / max(1, cfg.geometry_steps), 1),
            "loss_depth_l1_m": running, "depth_source": fitter.kind, "depth_frames": len(fitter.frames),
            "pool_frames": fitter.pool_size}

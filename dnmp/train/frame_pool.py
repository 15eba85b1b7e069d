"""Training rays of the radiance stage: cached fragments of a bounded pool of frames.

The geometry is fixed in the radiance stage, so a training pixel's fragments can be
rasterized once and reused for many steps. Caching every training pixel of a drive
grows with frames x pixels (about 120 bytes per pixel: 14 GB for 100 KITTI frames),
so only a pool of frames whose pixels fit `max_pixels` is cached at a time. Every
`rotate_every` steps the pool slides by one frame along a seeded cyclic order of the
training frames (the frame that entered longest ago leaves, the next one enters), so
over a run every frame spends the same number of steps in the pool; nerfstudio's data
managers do the same with a subset of images resampled every few steps. The pool at a
step is a function of (frames, seed, step), so a resumed run sees the same pool.

A drive whose training pixels all fit is cached whole, in the frames' order, and never
rotates: pixel index i then names the same pixel as in a cache of all frames.

Per cached pixel: pix_to_face int32 [K], the first two barycentrics float32 [K, 2] (the
third is 1 - b0 - b1 on covered layers, 0 on empty ones) and the colour as uint8 [3]
when the image is 8-bit (float32 otherwise): 12 K + 3 bytes, 99 B at K = 4 + 4 (the default; 75 B at the paper's 4 + 2).
View directions are recomputed from the pixel's row and column (`pixel_rays`).

A pool that never rotates keeps its frames in one tensor per quantity (the frames hold
views of it), so that `batch` gathers a step's rays with one index each instead of one
split per frame (`_Slab`, on the CPU; the same bits).

Everything cached lives on the renderer's device, and `batch` makes no host round trip
on an accelerator: there the rays of a pool of several frames are gathered from every
frame and selected with a mask (static shapes, `sync_free`), instead of being split by
frame (`torch.unique(...).tolist()` and `nonzero`: a device-to-host copy and a sync per
step). The CPU keeps the split, whose results are the same bits.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..data.scene import Scene
from ..device import release_freed_memory
from ..model import DNMPRenderer, pixel_rays


class _CachedFrame:
    """One frame's fragments and colours, flattened row-major (N = H * W pixels)."""

    def __init__(self, renderer: DNMPRenderer, scene: Scene, frame):
        cam = scene.camera_of(frame)
        dev = renderer.primitives.centres.device
        self.width = cam.width
        self.intrinsics = cam.intrinsics(as_tensor=True).to(dev)
        self.cam_to_world = torch.from_numpy(frame.cam_to_world).to(dev)
        w2c = torch.from_numpy(frame.world_to_cam()).float().to(dev)
        frags = renderer.rasterize(self.intrinsics, w2c, (cam.height, cam.width))
        k = frags.pix_to_face.shape[-1]
        self.pix_to_face = frags.pix_to_face.reshape(-1, k).to(torch.int32)
        self.bary2 = frags.bary_coords.reshape(-1, k, 3)[..., :2].contiguous()
        rgb = torch.from_numpy(scene.load_image(frame)).reshape(-1, 3)
        q = torch.round(rgb * 255.0).to(torch.uint8)
        # exact for 8-bit images; decided on the CPU, where the image was read
        self.rgb = (q if torch.equal(q.float() / 255.0, rgb) else rgb).to(dev)
        self.covered = int((self.pix_to_face >= 0).any(-1).sum())

    def __len__(self) -> int:
        return self.pix_to_face.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.pix_to_face, self.bary2, self.rgb))

    def gather(self, local: torch.Tensor):
        """(pix_to_face int64 [n, K], bary float32 [n, K, 3], dirs float32 [n, 3],
        rgb float32 [n, 3], origins float32 [n, 3]: the camera centre) of flat pixel
        indices `local` (int64 [n])."""
        p2f = self.pix_to_face[local].long()
        b01 = self.bary2[local]
        b2 = torch.where(p2f >= 0, 1.0 - b01[..., 0] - b01[..., 1], torch.zeros_like(b01[..., 0]))
        bary = torch.cat([b01, b2.unsqueeze(-1)], dim=-1)
        rgb = self.rgb[local]
        rgb = rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb
        dirs = pixel_rays(self.intrinsics, self.cam_to_world, local % self.width,
                          torch.div(local, self.width, rounding_mode="floor"))
        origins = self.cam_to_world[:3, 3].to(dirs.dtype).expand_as(dirs)
        return p2f, bary, dirs, rgb, origins


class _Slab:
    """The cached frames of a pool that never rotates, concatenated in slot order: one
    gather per quantity for a batch of rays from any frames. The frames' own tensors become
    views of these (no second copy)."""

    def __init__(self, frames: list[_CachedFrame]):
        total, first = sum(len(f) for f in frames), frames[0]
        self.pix_to_face, self.bary2, self.rgb = (t.new_empty(total, *t.shape[1:])
                                                  for t in (first.pix_to_face, first.bary2, first.rgb))
        start = 0
        for f in frames:  # frame by frame: the resident size grows by one frame at most
            n = len(f)
            views = [t[start:start + n] for t in (self.pix_to_face, self.bary2, self.rgb)]
            for v, t in zip(views, (f.pix_to_face, f.bary2, f.rgb)):
                v.copy_(t)
            f.pix_to_face, f.bary2, f.rgb = views
            release_freed_memory()  # the frame's own buffers (kept by keep_freed_memory)
            start += n
        self.intrinsics = torch.stack([f.intrinsics.double() for f in frames])  # [S, 3, 3]
        self.cam_to_world = torch.stack([f.cam_to_world.double() for f in frames])  # [S, 4, 4]
        self.width = torch.tensor([f.width for f in frames], device=self.pix_to_face.device)

    def gather(self, idx: torch.Tensor, slot: torch.Tensor, local: torch.Tensor):
        """`_CachedFrame.gather` of pool indices `idx` (int64 [n]) in frames `slot` at
        their frames' flat pixel indices `local`: the same values, bit for bit."""
        p2f = self.pix_to_face.index_select(0, idx).long()
        b01 = self.bary2.index_select(0, idx)
        b2 = torch.where(p2f >= 0, 1.0 - b01[..., 0] - b01[..., 1], torch.zeros_like(b01[..., 0]))
        bary = torch.cat([b01, b2.unsqueeze(-1)], dim=-1)
        rgb = self.rgb.index_select(0, idx)
        rgb = rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb
        width = self.width.index_select(0, slot)
        c2w = self.cam_to_world.index_select(0, slot)
        dirs = pixel_rays(self.intrinsics.index_select(0, slot), c2w, local % width,
                          torch.div(local, width, rounding_mode="floor"))
        return p2f, bary, dirs, rgb, c2w[:, :3, 3].float()


class FramePool:
    """Cached fragments of a bounded, rotating pool of training frames.

    Args:
        renderer: the model (its geometry is fixed while the pool lives).
        scene: the scene the frames belong to (cameras, images).
        frames: the training frames, non-empty.
        max_pixels: cache at most this many pixels (at least one frame is cached).
        rotate_every: steps between pool rotations when not every frame fits (>= 1).
        seed: seeds the cyclic frame order.
        progress: a progress bar while the pool is first filled.
        sync_free: gather a batch without a host round trip (see the module notes);
            None: on every device but the CPU.
    Raises:
        ValueError: no frames, or max_pixels / rotate_every < 1.
    """

    def __init__(self, renderer: DNMPRenderer, scene: Scene, frames, max_pixels: int,
                 rotate_every: int, seed: int = 0, progress: bool = True,
                 sync_free: bool | None = None):
        if not frames:
            raise ValueError("FramePool: no training frames")
        if max_pixels < 1 or rotate_every < 1:
            raise ValueError(f"FramePool: max_pixels ({max_pixels}) and rotate_every "
                             f"({rotate_every}) must be >= 1")
        self.renderer, self.scene, self.frames = renderer, scene, list(frames)
        sizes = [scene.camera_of(f).width * scene.camera_of(f).height for f in self.frames]
        # The largest n such that any n frames fit (sizes may differ between cameras).
        n, total = 0, 0
        for s in sorted(sizes, reverse=True):
            if n > 0 and total + s > max_pixels:
                break
            n, total = n + 1, total + s
        self.size = n
        self.rotates = n < len(self.frames)
        self.rotate_every = rotate_every
        if self.rotates:
            g = torch.Generator().manual_seed(int(seed))
            self.order = torch.randperm(len(self.frames), generator=g).tolist()
        else:
            self.order = list(range(len(self.frames)))
        self.progress = progress
        self.device = renderer.primitives.centres.device
        self.sync_free = self.device.type != "cpu" if sync_free is None else bool(sync_free)
        self._cached: dict[int, _CachedFrame] = {}
        self._slots: list[int] = []
        self._offsets = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._pixels = 0  # pixels in the pool, kept on the host: len() needs no sync
        self._rotation: int | None = None
        self._slab: _Slab | None = None
        self._covered: dict[int, tuple[int, int]] = {}  # frame index -> (covered, pixels)
        self.rasterized = 0  # frames rasterized so far (fills and rotations)

    def rotation_of(self, step: int) -> int:
        return step // self.rotate_every if self.rotates else 0

    def frames_at(self, step: int) -> list[int]:
        """Indices (into `frames`) of the pool's frames at `step`, in sampling order."""
        r = self.rotation_of(step)
        return [self.order[(r + i) % len(self.order)] for i in range(self.size)]

    def sync(self, step: int) -> None:
        """Make the pool the one of `step`: rasterize the frames that enter, drop the
        ones that leave (a no-op within a rotation period)."""
        r = self.rotation_of(step)
        if r == self._rotation:
            return
        wanted = self.frames_at(step)
        for i in [i for i in self._cached if i not in wanted]:
            del self._cached[i]
        missing = [i for i in wanted if i not in self._cached]
        bar = tqdm(missing, desc="rasterize train frames", leave=False,
                   disable=not self.progress or self._rotation is not None)
        for i in bar:
            entry = _CachedFrame(self.renderer, self.scene, self.frames[i])
            self._cached[i] = entry
            self._covered[i] = (entry.covered, len(entry))
            self.rasterized += 1
        if self._rotation is not None:
            release_freed_memory()
        self._slots = wanted
        lengths = torch.tensor([len(self._cached[i]) for i in wanted], dtype=torch.int64)
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(self.device)
        self._pixels = int(lengths.sum())
        self._rotation = r
        frames = [self._cached[i] for i in wanted]
        if not self.rotates and not self.sync_free and len(frames) > 1 and \
                len({(f.rgb.dtype, f.pix_to_face.shape[1]) for f in frames}) == 1:
            self._slab = _Slab(frames)

    def __len__(self) -> int:
        """Pixels in the pool now (call `sync` first)."""
        return self._pixels

    @property
    def nbytes(self) -> int:
        """Bytes of cached tensors now."""
        return sum(c.nbytes for c in self._cached.values())

    @property
    def coverage(self) -> float:
        """Fraction of the pixels of the frames cached so far covered by any primitive."""
        covered = sum(c for c, _ in self._covered.values())
        total = sum(n for _, n in self._covered.values())
        return covered / max(1, total)

    def batch(self, idx: torch.Tensor):
        """Rays of pool pixel indices `idx` (int64 [B] in [0, len(self))).

        Returns (pix_to_face int64 [B, K], bary_coords float32 [B, K, 3], view_dirs
        float32 [B, 3] world frame, rgb float32 [B, 3] in [0, 1], ray_origins float32 [B, 3]
        camera centres, world frame), as `DNMPRenderer.shade_rays` takes them.
        """
        slot = torch.searchsorted(self._offsets, idx, right=True) - 1
        local = idx - self._offsets[slot]
        if len(self._slots) == 1:
            return self._cached[self._slots[0]].gather(local)
        if self.sync_free:
            return self._batch_masked(slot, local)
        if self._slab is not None:
            return self._slab.gather(idx, slot, local)
        return self._batch_split(slot, local)

    def _batch_split(self, slot: torch.Tensor, local: torch.Tensor):
        """`batch` frame by frame: the rays of each frame gathered there and scattered into
        place (a pool that rotates, whose frames are not one slab)."""
        k = self._cached[self._slots[0]].pix_to_face.shape[1]
        b, dev = slot.shape[0], slot.device
        p2f = torch.empty(b, k, dtype=torch.int64, device=dev)
        bary = torch.empty(b, k, 3, device=dev)
        dirs = torch.empty(b, 3, device=dev)
        rgb = torch.empty(b, 3, device=dev)
        origins = torch.empty(b, 3, device=dev)
        for s in torch.unique(slot).tolist():
            m = torch.nonzero(slot == s).squeeze(1)
            parts = self._cached[self._slots[s]].gather(local[m])
            for dst, src in zip((p2f, bary, dirs, rgb, origins), parts):
                dst[m] = src
        return p2f, bary, dirs, rgb, origins

    def _batch_masked(self, slot: torch.Tensor, local: torch.Tensor):
        """`batch` without data-dependent shapes: every ray is gathered from every pool
        frame (its index clamped into that frame) and the ray's own frame is kept, so no
        count or index list travels to the host. Costs one gather per pool frame."""
        out = None
        for s, i in enumerate(self._slots):
            frame = self._cached[i]
            mine = slot == s
            parts = frame.gather(torch.where(mine, local, torch.zeros_like(local)).clamp_(max=len(frame) - 1))
            if out is None:
                out = list(parts)
                continue
            for j, part in enumerate(parts):
                m = mine.view(-1, *([1] * (part.ndim - 1)))
                out[j] = torch.where(m, part, out[j])
        return tuple(out)

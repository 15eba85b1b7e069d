"""Drives of any length: overlapping blocks along the trajectory, each its own model.

A drive with more than `TrainConfig.block_frames` instants (an instant = the frames
of all cameras at one timestamp) is split into blocks of that many consecutive
instants overlapping by `block_overlap`, spread evenly over the drive (Block-NeRF
and the DNMP paper's 80-frame KITTI-360 windows do the same). Each block is trained
by `pipeline.train` on the scene restricted to its frames (`data.subset`: its points
are those its cameras see), into RUN/blocks/block_NNN/ as an ordinary run folder, so
a block's training is a function of (scene subset, config, folder) with no shared
state, the unit that several processes can spread. RUN/manifest.json lists the
blocks, their frames and their status, and is rewritten (atomically) after each
block, so an interrupted run resumes at its first unfinished block.

Several processes (torchrun, `train.distributed`): the unfinished blocks are dealt
round-robin to the ranks; a rank marks each block it finishes with
RUN/blocks/block_NNN/block_done.json (the block's manifest entry) instead of rewriting the
shared manifest, and rank 0 writes the manifest at the start (every block pending or kept)
and once more, complete, after a barrier when every block is done. A resumed run counts a
block as done when the manifest or its marker says so.

Rendering a camera (`BlockRenderer`): its position along the drive is the
projection of its centre onto the polyline of the instants' mean camera centres
(a fractional instant index); inside an overlap the two blocks' images are blended
with weights that ramp linearly across the overlap (a partition of unity), so a
video through the overlap has no seam; elsewhere one block renders alone.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.scene import Scene
from ..data.subset import subset_scene
from .checkpoint import scene_mismatch
from .distributed import SINGLE, DistContext, assign_blocks

MANIFEST = "manifest.json"
BLOCK_DONE = "block_done.json"  # in a block's folder: its manifest entry, once trained
FORMAT = "dnmp-blocks"
VERSION = 1


@dataclass
class Block:
    """Instants first..last (inclusive, indices into `drive_instants`) and their frames."""

    index: int
    first: int
    last: int
    frames: list

    @property
    def name(self) -> str:
        return f"block_{self.index:03d}"


def drive_instants(scene: Scene) -> tuple[np.ndarray, list[int]]:
    """(sorted distinct timestamps float64 [T], instant index of every scene frame)."""
    stamps = np.array([round(float(f.timestamp), 6) for f in scene.frames])
    times = np.unique(stamps)
    return times, [int(i) for i in np.searchsorted(times, stamps)]


def plan_blocks(scene: Scene, block_frames: int, overlap: int) -> list[Block]:
    """Split the drive into blocks of `block_frames` instants overlapping by `overlap`.

    One block (the whole scene) when `block_frames` is 0 or the drive is not longer.
    Otherwise ceil((T - overlap) / (block_frames - overlap)) blocks spread evenly.

    Blocks all have the same length (at most `block_frames`), chosen so that
    neighbours share about `overlap` instants; only neighbours overlap.

    Raises:
        ValueError: overlap < 0, overlap > block_frames / 2, or a plan in which three
            blocks would share an instant (the blend weights need only neighbours).
    """
    times, inst = drive_instants(scene)
    n = len(times)
    if block_frames <= 0 or n <= block_frames:
        return [Block(0, 0, n - 1, [f.name for f in scene.frames])]
    if overlap < 0 or 2 * overlap > block_frames:
        raise ValueError(f"block_overlap ({overlap}) must be between 0 and block_frames / 2 "
                         f"({block_frames // 2})")
    # As few blocks as fit, all of one length L <= block_frames, so that neighbours share
    # about `overlap` instants (not a whole block when the drive is one instant too long).
    count = math.ceil((n - overlap) / (block_frames - overlap))
    length = min(block_frames, math.ceil((n - overlap) / count) + overlap)
    starts = np.round(np.linspace(0, n - length, count)).astype(int)
    blocks = []
    for b, s in enumerate(starts):
        last = int(s) + length - 1
        names = [f.name for f, i in zip(scene.frames, inst) if s <= i <= last]
        blocks.append(Block(b, int(s), last, names))
    for a, c in zip(blocks, blocks[2:]):
        if c.first <= a.last:
            raise ValueError(f"block_frames = {block_frames} with block_overlap = {overlap} makes "
                             f"three blocks share instants; use a smaller block_overlap")
    return blocks


def blend_weights(blocks: list[Block], position: float) -> dict[int, float]:
    """Weights (summing to 1) of the blocks that render a camera at fractional instant
    `position`: linear ramps across each overlap between neighbours, 1 elsewhere."""
    position = min(max(position, blocks[0].first), blocks[-1].last)
    weights = {}
    for i, b in enumerate(blocks):
        if not b.first <= position <= b.last:
            continue
        w = 1.0
        if i > 0 and blocks[i - 1].last > b.first:  # ramp in across the previous overlap
            w = min(w, (position - b.first) / (blocks[i - 1].last - b.first))
        if i + 1 < len(blocks) and b.last > blocks[i + 1].first:  # ramp out
            w = min(w, (b.last - position) / (b.last - blocks[i + 1].first))
        if w > 0:
            weights[i] = w
    if not weights:  # position in a gap (overlap 0): the nearest block
        i = min(range(len(blocks)), key=lambda j: min(abs(position - blocks[j].first),
                                                       abs(position - blocks[j].last)))
        weights[i] = 1.0
    total = sum(weights.values())
    return {i: w / total for i, w in weights.items()}


class DrivePath:
    """Fractional instant index of any camera centre: its projection onto the polyline
    through the mean camera centre of every instant (metres, scene frame)."""

    def __init__(self, scene: Scene):
        times, inst = drive_instants(scene)
        centres = np.zeros((len(times), 3))
        counts = np.zeros(len(times))
        for f, i in zip(scene.frames, inst):
            centres[i] += f.camera_centre
            counts[i] += 1
        self.points = centres / counts[:, None]

    def position(self, centre: np.ndarray) -> float:
        p = self.points
        if len(p) == 1:
            return 0.0
        a, d = p[:-1], p[1:] - p[:-1]
        len2 = np.maximum((d * d).sum(1), 1e-12)
        t = np.clip(((centre - a) * d).sum(1) / len2, 0.0, 1.0)
        dist = np.linalg.norm(a + t[:, None] * d - centre, axis=1)
        i = int(np.argmin(dist))
        return i + float(t[i])


def read_manifest(run: str | Path) -> dict:
    """The manifest of a block run folder; settings its config lacks (written before they
    existed) get the values that reproduce older runs (`checkpoint.LEGACY_DEFAULTS`).

    Raises:
        ValueError: missing, unreadable, or not a dnmp block manifest of this version.
    """
    path = Path(run) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no block manifest (not a run of a long drive)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable block manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a dnmp block manifest")
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: block manifest version {data.get('version')!r} is not supported "
                         f"(this dnmp reads version {VERSION})")
    blocks = data.get("blocks")
    ok = (isinstance(data.get("scene"), dict) and isinstance(data.get("config"), dict)
          and isinstance(blocks, list) and len(blocks) > 0)
    for b in blocks if isinstance(blocks, list) else []:
        ok = ok and isinstance(b, dict) and isinstance(b.get("name"), str) \
            and isinstance(b.get("folder"), str) and isinstance(b.get("frames"), list) \
            and all(isinstance(x, str) for x in b["frames"]) \
            and all(isinstance(b.get(k), int) and not isinstance(b.get(k), bool)
                    for k in ("first_instant", "last_instant")) \
            and b["first_instant"] <= b["last_instant"]
    if ok:
        firsts = [b["first_instant"] for b in blocks]
        ok = firsts == sorted(firsts)
    if not ok:
        raise ValueError(f"{path}: malformed block manifest (needs scene, config and a non-empty "
                         f"list of blocks with name, folder, frames and ordered first/last_instant)")
    from .checkpoint import with_legacy_defaults

    with_legacy_defaults(data["config"])  # as for a checkpoint's config: older runs' values
    return data


def is_block_run(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def resume_command(scene: Scene, out: Path, stages, steps: int | None) -> str:
    """The `dnmp train` command line that continues the block run in `out`."""
    cmd = f"dnmp train {scene.root} --out {out} --resume"
    if tuple(stages) != ("geometry", "radiance"):
        cmd += f" --stages {','.join(stages)}"
    return cmd + (f" --steps {steps}" if steps is not None else "")


def check_manifest_scene(manifest: dict, path: Path, scene: Scene) -> None:
    """Raise ValueError, naming the manifest and what differs, if the block run at
    `path` was trained on another scene than `scene`."""
    why = scene_mismatch(manifest["scene"], scene)
    if why:
        raise ValueError(f"{path}: the run {why}")


def _finished(entry: dict | None, frames: list, stages, cfg) -> bool:
    """Whether a manifest entry (or a block_done.json) says its block is trained on `frames`
    for `stages` (and to `cfg.steps` when the radiance stage is among them)."""
    return isinstance(entry, dict) and entry.get("status") == "done" \
        and entry.get("frames") == frames and set(stages) <= set(entry.get("stages_done", ())) \
        and ("radiance" not in stages or entry.get("step") == cfg.steps)


def _read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / BLOCK_DONE).read_text())
    except (OSError, json.JSONDecodeError):
        return None  # absent, or cut short: the block counts as unfinished
    return data if isinstance(data, dict) else None


def train_blocks(scene: Scene, out_dir: str | Path, cfg, blocks: list[Block], stages, resume: bool,
                 progress: bool = True, log=print, steps: int | None = None,
                 device: str | None = None, dist: DistContext | None = None,
                 data_parallel: bool = False) -> dict:
    """Train every block of a long drive into OUT/blocks/block_NNN/ and evaluate the
    held-out frames with the blended blocks; see the module docstring.

    With `resume`, finished blocks are kept, an interrupted block continues from its
    checkpoints and the rest are trained; without it, an OUT that already holds a
    manifest is refused.

    `cfg` is the run's settled config (`run.settle_config`: `steps` already applied);
    `steps` is passed on to each block's `pipeline.train` (None: a resumed block keeps
    its checkpoint's step count); so is `device` (`--device`, None: each block's config's).

    `dist` (`train.distributed`) with several ranks: the unfinished blocks are dealt to the
    ranks (`assign_blocks`), each trained by one rank alone; with `data_parallel` every rank
    trains every block together (`pipeline.train` with `dist`). Rank 0 writes the manifest
    and scores the run; the other ranks return {num_blocks, rank, blocks_trained}.

    Returns the run's metrics (also OUT/metrics.json): held-out PSNR/SSIM/LPIPS over all
    test frames, `num_blocks`, and per block its frames, steps and training time.
    Raises: as `pipeline.train` (which refuses an existing run without `resume`).
    """
    from .._io import write_json_atomic
    from ..evaluate import evaluate
    from .checkpoint import GEOMETRY_NAME, latest_checkpoint, scene_info
    from .pipeline import train

    dist = dist or SINGLE
    spread = dist.active and not data_parallel  # blocks dealt to ranks, each trained alone
    main_log = log if dist.is_main else (lambda *a, **k: None)
    out = Path(out_dir)
    path = out / MANIFEST
    done: dict = {}
    if path.is_file():
        old = read_manifest(out)
        check_manifest_scene(old, path, scene)
        done = {b["name"]: b for b in old["blocks"]}
    manifest = {"format": FORMAT, "version": VERSION, "scene": scene_info(scene),
                "config": cfg.to_dict(), "stages": list(stages),
                "blocks": [{"name": b.name, "folder": f"blocks/{b.name}", "first_instant": b.first,
                            "last_instant": b.last, "frames": b.frames, "status": "pending"}
                           for b in blocks]}
    out.mkdir(parents=True, exist_ok=True)
    for entry in manifest["blocks"]:
        marker = _read_marker(out / entry["folder"]) if resume else None
        for earlier in (done.get(entry["name"]), marker):
            if _finished(earlier, entry["frames"], stages, cfg):
                entry.update(earlier)
    dist.barrier()  # every rank has read the manifest and markers before rank 0 rewrites it
    if dist.is_main:
        write_json_atomic(path, manifest)
    n_inst = len(drive_instants(scene)[0])
    shared = [a.last - b.first + 1 for a, b in zip(blocks, blocks[1:])]
    main_log(f"drive of {n_inst} instants ({len(scene.frames)} frames) in {len(blocks)} blocks of "
        f"{blocks[0].last - blocks[0].first + 1} instants (block_frames {cfg.block_frames}), "
        f"neighbours sharing {min(shared)}-{max(shared)}")
    resume_hint = f"continue with `{resume_command(scene, out, stages, steps)}`"
    pending = [e["name"] for e in manifest["blocks"] if e["status"] != "done"]
    mine = assign_blocks(pending, dist.world_size)[dist.rank] if spread else pending
    if spread:
        main_log(f"{len(pending)} of {len(blocks)} blocks to train, dealt round-robin to "
                 f"{dist.world_size} processes")
        log(f"this rank trains {', '.join(mine) if mine else 'no block'}")
    for b, entry in zip(blocks, manifest["blocks"]):
        if entry["status"] == "done":
            main_log(f"[{b.name}] done earlier (step {entry.get('step')}), kept")
            continue
        if b.name not in mine:
            continue
        (log if spread else main_log)(f"[{b.name} {b.index + 1}/{len(blocks)}] instants "
                                      f"{b.first}-{b.last}, {len(b.frames)} frames")
        sub = subset_scene(scene, b.frames, name=f"{scene.name}-{b.name}")
        folder = out / entry["folder"]
        ckpts = folder / "checkpoints"
        t_block = time.time()
        inner = None if spread else dist  # a dealt block is trained by its rank alone
        if latest_checkpoint(ckpts) is not None:
            result = train(sub, folder, None, stages=stages, resume=True, progress=progress,
                           log=log, steps=steps, held_out=False, dist=inner, device=device)
        elif (ckpts / GEOMETRY_NAME).is_file() and "radiance" in stages:
            result = train(sub, folder, None, stages=("radiance",), progress=progress, log=log,
                           steps=steps, held_out=False, dist=inner, device=device)
        else:
            result = train(sub, folder, cfg, stages=stages, progress=progress, log=log,
                           steps=steps, held_out=False, rerun=resume_hint, dist=inner, device=device)
        entry.update({"status": "done", "step": result.get("step"), "stages_done": list(stages),
                      "wall_seconds": round(time.time() - t_block, 1),
                      "train_seconds": result.get("train_seconds"),
                      "num_primitives": result.get("num_primitives"),
                      "num_train_frames": len(sub.frames_by_split("train"))})
        if spread:
            entry["rank"] = dist.rank  # who trained it (the manifest keeps it)
            write_json_atomic(folder / BLOCK_DONE, entry)
            log(f"[{b.name}] done")
        elif dist.is_main:
            write_json_atomic(path, manifest)
    if spread:
        dist.barrier()  # every block trained, its marker written
        for entry in manifest["blocks"]:
            marker = _read_marker(out / entry["folder"])
            if entry["status"] != "done" and _finished(marker, entry["frames"], stages, cfg):
                entry.update(marker)
        missing = [e["name"] for e in manifest["blocks"] if e["status"] != "done"]
        if missing:
            raise ValueError(f"{out}: blocks {', '.join(missing)} have no {BLOCK_DONE} after every "
                               f"rank finished (is {out} on a file system that every machine shares?)")
    if not dist.is_main:
        return {"num_blocks": len(blocks), "rank": dist.rank, "blocks_trained": list(mine)}
    manifest["complete"] = True
    write_json_atomic(path, manifest)
    result = {"num_blocks": len(blocks), "block_frames": cfg.block_frames,
              "block_overlap": cfg.block_overlap,
              "train_seconds": round(sum(e.get("train_seconds") or 0 for e in manifest["blocks"]), 1),
              "blocks": [{k: e.get(k) for k in ("name", "first_instant", "last_instant", "step",
                                                 "train_seconds", "wall_seconds", "num_primitives")}
                         for e in manifest["blocks"]]}
    if spread:
        result["processes"] = dist.world_size
        result["blocks_by_rank"] = {e["name"]: e.get("rank", 0) for e in manifest["blocks"]}
    if scene.frames_by_split("test") and "radiance" in stages:
        log("rendering held-out frames with the blended blocks ...")
        from ..device import resolve_device

        with BlockRenderer(out, scene, device=resolve_device(cfg.device, "device")) as renderer:
            result.update(evaluate(renderer, scene, "test", out / "renders" / "test", progress))
    write_json_atomic(out / "metrics.json", result)
    return result


class BlockRenderer:
    """Renders any camera of a block run: the blocks' images blended by `blend_weights`.

    Has `render(intrinsics, cam_to_world, height, width)` like `DNMPRenderer.render`, so
    `evaluate` and the CLI use either. At most `max_loaded` blocks are held in memory
    (least recently used dropped); render cameras in drive order to load each once.
    `device`: where the blocks' models are placed (a torch.device; None: the CPU).

    Raises (on construction): ValueError for a manifest of another scene or an
    unfinished run; CheckpointError for a block without a usable checkpoint.
    """

    def __init__(self, run: str | Path, scene: Scene, max_loaded: int = 2, device=None):
        self.run = Path(run)
        self.device = device  # where each block's model is placed (None: the CPU)
        self.manifest = read_manifest(self.run)
        check_manifest_scene(self.manifest, self.run / MANIFEST, scene)
        pending = [b["name"] for b in self.manifest["blocks"] if b.get("status") != "done"]
        if pending:
            raise ValueError(f"{self.run}: blocks {', '.join(pending)} are not trained yet; "
                             f"finish the run with `dnmp train --resume --out {self.run}`")
        self.scene = scene
        self.blocks = [Block(i, b["first_instant"], b["last_instant"], b["frames"])
                       for i, b in enumerate(self.manifest["blocks"])]
        self.path = DrivePath(scene)
        self.max_loaded = max_loaded
        self._loaded: dict[int, object] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._loaded.clear()

    def checkpoint_path(self, index: int) -> Path:
        return self.run / self.manifest["blocks"][index]["folder"]

    def renderer(self, index: int):
        """The trained `DNMPRenderer` of block `index` (loaded on first use)."""
        from .checkpoint import CheckpointError, load_checkpoint
        from .factory import renderer_from_checkpoint

        if index in self._loaded:
            self._loaded[index] = self._loaded.pop(index)  # most recently used last
        else:
            while len(self._loaded) >= self.max_loaded:
                self._loaded.pop(next(iter(self._loaded)))
            ckpt = load_checkpoint(self.checkpoint_path(index))
            info, entry = ckpt.get("scene") or {}, self.manifest["blocks"][index]
            if info.get("frames") != entry["frames"] or \
                    info.get("parent_fingerprint") != self.manifest["scene"].get("fingerprint"):
                raise CheckpointError(f"{ckpt['path']}: not the checkpoint of {entry['name']} of this "
                                      f"run (trained on other frames or another scene)")
            self._loaded[index] = renderer_from_checkpoint(ckpt, self.device)
        return self._loaded[index]

    def check_blocks(self) -> None:
        """Load every block once, so that a bad block fails before anything is written.

        Raises: CheckpointError as `renderer` does, for the first unusable block."""
        for i in range(len(self.blocks)):
            self.renderer(i)

    def weights(self, cam_to_world) -> dict[int, float]:
        """Blend weights of the blocks for a camera pose (float [4, 4], camera to world)."""
        c2w = np.asarray(cam_to_world, dtype=np.float64)
        return blend_weights(self.blocks, self.path.position(c2w[:3, 3]))

    @torch.no_grad()
    def render(self, intrinsics: torch.Tensor, cam_to_world: torch.Tensor, height: int,
               width: int) -> dict[str, torch.Tensor]:
        """As `DNMPRenderer.render`: rgb [H, W, 3], depth and mean_depth [H, W], coverage
        [H, W], each the weighted sum of the blending blocks' images (depths weighted by
        the blocks' coverage)."""
        out = None
        for i, w in sorted(self.weights(cam_to_world.cpu().numpy()).items()):
            img = self.renderer(i).render(intrinsics, cam_to_world, height, width)
            for key in ("depth", "mean_depth"):
                img[key] = img[key] * img["coverage"]
            out = {k: v * w for k, v in img.items()} if out is None else \
                {k: out[k] + v * w for k, v in img.items()}
        for key in ("depth", "mean_depth"):
            out[key] = torch.where(out["coverage"] > 0, out[key] / out["coverage"].clamp_min(1e-12),
                                   torch.zeros_like(out[key]))
        return out

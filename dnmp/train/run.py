"""Open a trained run for rendering: a checkpoint, a run folder, or a block run of a long drive.

`open_run` is what `dnmp render`, `eval`, `profile` and `export-mesh` call: it finds the
scene the model was trained on, checks that it is that scene, and returns a renderer
with `render(intrinsics, cam_to_world, height, width)`: the checkpoint's `DNMPRenderer`,
or for a block run (`train.blocks`) a `BlockRenderer` that blends its blocks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.scene import Scene, load_scene
from .blocks import BlockRenderer, is_block_run, read_manifest
from .checkpoint import CheckpointError, checkpoint_scene_path, load_checkpoint, scene_for_checkpoint


@dataclass
class OpenedRun:
    """A trained model ready to render.

    scene: the scene it belongs to (a block checkpoint: that block's frames).
    renderer: `DNMPRenderer` or `BlockRenderer`.
    run_dir: the run folder (metrics.json, renders/ live there).
    source: the checkpoint file, or the block run's manifest.
    step: training steps of the checkpoint (None for a block run).
    config: the TrainConfig dict it was trained with.
    blocks: number of blocks (1 for a single model).
    """

    scene: Scene
    renderer: object
    run_dir: Path
    source: str
    step: int | None
    config: dict
    blocks: int = 1

    def model_for(self, frame):
        """The `DNMPRenderer` that renders `frame` (the block weighing most on it)."""
        if isinstance(self.renderer, BlockRenderer):
            w = self.renderer.weights(frame.cam_to_world)
            return self.renderer.renderer(max(w, key=w.get))
        return self.renderer

    def models(self):
        """(name, DNMPRenderer) of every model of the run, loaded one at a time."""
        if isinstance(self.renderer, BlockRenderer):
            for i, b in enumerate(self.renderer.manifest["blocks"]):
                yield b["name"], self.renderer.renderer(i)
        else:
            yield None, self.renderer


def _scene_at(path: str | Path | None, where: str, override: str | Path | None) -> Scene:
    if override:
        return load_scene(override)
    if path is None or not Path(path).is_dir():
        raise ValueError(f"{where}: the scene it was trained on ({path}) is not there any more; "
                         f"pass its new location with --scene")
    return load_scene(path)


def open_run(path: str | Path, scene: str | Path | None = None) -> OpenedRun:
    """Open a checkpoint file, a run folder (its newest checkpoint) or a block run.

    Args:
        path: step_*.pt, a run folder, or a block run folder (with manifest.json).
        scene: the scene folder, when it moved since training (default: the recorded one).
    Raises:
        CheckpointError: no usable checkpoint, a checkpoint of another scene, or
            `geometry.pt` (an untrained radiance field: train the radiance stage first).
        ValueError: the scene is not there any more, or an unfinished block run.
    """
    from .radiance import check_checkpoint_scene, renderer_from_checkpoint

    p = Path(path)
    if p.is_dir() and is_block_run(p):
        manifest = read_manifest(p)
        stored = manifest["scene"].get("path")
        s = _scene_at(stored, str(p / "manifest.json"), scene)
        renderer = BlockRenderer(p, s)
        return OpenedRun(s, renderer, p, str(p / "manifest.json"), None, manifest["config"],
                         blocks=len(renderer.blocks))
    ckpt = load_checkpoint(p)
    if ckpt.get("stage") == "geometry":
        raise CheckpointError(f"{ckpt['path']}: this is the geometry stage's model; its radiance "
                              f"field is untrained (it would render grey). Render a step_*.pt "
                              f"checkpoint or the run folder, or train the radiance stage first")
    stored = checkpoint_scene_path(ckpt) or (ckpt.get("scene") or {}).get("path")
    s = _scene_at(stored, ckpt["path"], scene)
    s = scene_for_checkpoint(ckpt, s)
    check_checkpoint_scene(ckpt, s)
    return OpenedRun(s, renderer_from_checkpoint(ckpt), Path(ckpt["path"]).parent.parent,
                     ckpt["path"], ckpt["step"], ckpt["config"])


def merge_metrics(run_dir: str | Path, result: dict) -> dict:
    """`result` merged over the run's existing metrics.json (keeps what training recorded)."""
    path = Path(run_dir) / "metrics.json"
    merged = {}
    if path.is_file():
        try:
            merged = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            merged = {}
    merged.update(result)
    return merged

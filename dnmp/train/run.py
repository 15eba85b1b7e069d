"""Run folders: the rules for writing one (`RunFolder`, `settle_config`) and reading one
(`open_run`).

A run folder OUT holds checkpoints/ (geometry.pt, step_*.pt), config.json, metrics.json
and renders/test/; a block run of a long drive holds manifest.json and blocks/block_NNN/,
each an ordinary run folder (`train.blocks`).

`open_run` is what `dnmp render`, `eval`, `profile` and `export-mesh` call: it finds the
scene the model was trained on, checks that it is that scene, and returns a renderer
with `render(intrinsics, cam_to_world, height, width)`: the checkpoint's `DNMPRenderer`,
or for a block run (`train.blocks`) a `BlockRenderer` that blends its blocks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.scene import Scene, load_scene
from ..device import check_device_spec, resolve_device
from .blocks import MANIFEST, BlockRenderer, is_block_run, read_manifest
from .checkpoint import (GEOMETRY_NAME, checkpoint_scene_path, latest_checkpoint,
                         load_checkpoint, remove_stale_checkpoint_files, scene_for_checkpoint)
from .config import TrainConfig
from .factory import check_checkpoint_scene, check_radiance_trained, renderer_from_checkpoint


class RunFolder:
    """The output folder of `dnmp train` and the rules for starting or continuing a run
    in it. Paths: `root`, `checkpoints` (step_*.pt, geometry.pt), `geometry` (the
    geometry stage's checkpoint), `manifest` (a block run's manifest.json)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.geometry = self.checkpoints / GEOMETRY_NAME
        self.manifest = self.root / MANIFEST

    def latest_checkpoint(self) -> Path | None:
        """The newest step_*.pt, or None."""
        return latest_checkpoint(self.checkpoints)

    def is_block_run(self) -> bool:
        return is_block_run(self.root)

    def remove_stale_files(self, log=print) -> None:
        """Delete the `.tmp_*` files of saves that a killed process left (at a run's start)."""
        for p in remove_stale_checkpoint_files(self.checkpoints):
            log(f"removed {p.name}, left by a save that was killed")

    def refuse_earlier_run(self) -> None:
        """Raise FileExistsError if the folder holds a block run or step checkpoints: a
        fresh run would mix with them; the user continues it (--resume) or picks another."""
        if self.is_block_run():
            raise FileExistsError(f"{self.root}: holds a block run; pass --resume to continue it "
                                  f"or choose another --out")
        if self.latest_checkpoint() is not None:
            raise FileExistsError(f"{self.checkpoints}: holds checkpoints of an earlier run; pass "
                                  f"--resume to continue it or choose another --out")


def refuse_config_on_resume(given: TrainConfig | None, where: str) -> None:
    """Raise ValueError if settings were given for a run being continued (`where`)."""
    if given is not None:
        raise ValueError(f"{where}: --resume continues with the run's settings; drop --config "
                         f"(only --steps may change)")


def settle_config(given: TrainConfig | None, steps: int | None, saved: dict | None = None,
                  where: str = "", device: str | None = None) -> TrainConfig:
    """The settings a run trains with, decided in this one place.

    Args:
        given: the settings asked for (`--config`), or None.
        steps: `--steps`, which overrides the step count in every case, or None.
        saved: the settings of the run being continued (a checkpoint's or a block
            manifest's config dict), or None for a fresh run.
        where: the file `saved` came from, for error messages.
        device: `--device` ("auto", "cpu", "cuda[:N]"), which like `steps` overrides the
            device in every case (a resumed run may move to another device), or None.
    Returns:
        a new TrainConfig: `saved` if given, else `given`, else the defaults; then `steps`
        and `device`.
    Raises:
        ValueError: both `given` and `saved` (`--resume` keeps the run's settings), or a
            malformed `device`.
    """
    if saved is not None:
        refuse_config_on_resume(given, where)
        cfg = TrainConfig.from_dict(saved, where)
    else:
        cfg = dataclasses.replace(given) if given is not None else TrainConfig()
    if steps is not None:
        cfg.steps = steps
    if device is not None:
        cfg.device = check_device_spec(device)
    return cfg


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


def open_run(path: str | Path, scene: str | Path | None = None,
             device: torch.device | str | None = None) -> OpenedRun:
    """Open a checkpoint file, a run folder (its newest checkpoint) or a block run.

    Args:
        path: step_*.pt, a run folder, or a block run folder (with manifest.json).
        scene: the scene folder, when it moved since training (default: the recorded one).
        device: where the model is placed (`dnmp.device.resolve_device`: a torch.device
            or "auto" / "cpu" / "cuda[:N]"; None: the CPU), whatever device trained it;
            renders then come out on that device.
    Raises:
        CheckpointError: no usable checkpoint, a checkpoint of another scene, or
            `geometry.pt` (an untrained radiance field: train the radiance stage first).
        ValueError: the scene is not there any more, or an unfinished block run.
    A block run's blocks are all loaded and checked here, before the caller writes anything.
    """
    p = Path(path)
    if p.is_dir() and is_block_run(p):
        manifest = read_manifest(p)
        stored = manifest["scene"].get("path")
        s = _scene_at(stored, str(p / "manifest.json"), scene)
        renderer = BlockRenderer(p, s, device=None if device is None else resolve_device(device))
        renderer.check_blocks()  # every block usable before any output is written
        return OpenedRun(s, renderer, p, str(p / "manifest.json"), None, manifest["config"],
                         blocks=len(renderer.blocks))
    ckpt = load_checkpoint(p)
    check_radiance_trained(ckpt, "it would render grey")
    stored = checkpoint_scene_path(ckpt) or (ckpt.get("scene") or {}).get("path")
    s = _scene_at(stored, ckpt["path"], scene)
    s = scene_for_checkpoint(ckpt, s)
    check_checkpoint_scene(ckpt, s)
    return OpenedRun(s, renderer_from_checkpoint(ckpt, device), Path(ckpt["path"]).parent.parent,
                     ckpt["path"], ckpt["step"], ckpt["config"])

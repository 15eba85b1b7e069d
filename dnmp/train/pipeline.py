"""`dnmp train`: the geometry stage, then the radiance stage (paper Sec. 3.2-3.4).

Output folder (OUT): checkpoints/geometry.pt (the model after the geometry
stage), checkpoints/step_*.pt (radiance stage), metrics.json, config.json,
renders/test/.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..data.scene import Scene
from ..data.subset import SceneSubset
from ..evaluate import depth_errors, write_json_atomic
from .checkpoint import (GEOMETRY_NAME, CheckpointError, latest_checkpoint, load_checkpoint,
                         remove_stale_checkpoint_files, save_geometry_checkpoint, scene_info)
from .config import TrainConfig
from .frame_pool import release_freed_memory
from .geometry import train_geometry
from .radiance import (build_renderer, check_checkpoint_scene, describe_primitives,
                       renderer_from_checkpoint, scene_centres, train_radiance)

STAGES = ("geometry", "radiance")


def parse_stages(text: str) -> tuple[str, ...]:
    """"geometry,radiance" -> ("geometry", "radiance"); raises ValueError for unknown names."""
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise ValueError(f"--stages: unknown or empty stage list {text!r}; choose from {','.join(STAGES)}")
    return tuple(s for s in STAGES if s in names)


def train(scene: Scene, out_dir: str | Path, cfg: TrainConfig | None = None,
          stages: tuple[str, ...] = STAGES, resume: bool = False, progress: bool = True,
          log=print, steps: int | None = None, held_out: bool = True) -> dict:
    """Train a scene: geometry stage (if selected), then radiance stage (if selected).

    A drive longer than `cfg.block_frames` instants is trained as overlapping blocks,
    each an ordinary run in OUT/blocks/, listed in OUT/manifest.json (`train.blocks`).
    `held_out=False` skips scoring the test frames (the blocks of a long drive).

    - geometry: decoder frozen; latents and offsets fitted to the training frames'
      depth images, LiDAR or else stereo (`cfg.geometry_depth`, `train.geometry`);
      the held-out depth error against LiDAR (median / 90th percentile, metres) is
      measured before (template spheres) and after where the test frames have LiDAR
      depth (else metrics say why not), and the model saved as OUT/checkpoints/geometry.pt.
    - radiance: starts from the geometry stage's model (this run's, or an earlier
      run's geometry.pt in OUT), else from template primitives.
    `cfg.time_budget_minutes` bounds both stages' loops together.
    `resume` continues an interrupted radiance stage (the geometry is in its checkpoint),
    or starts it from OUT/checkpoints/geometry.pt if it was stopped before its first
    step checkpoint. Stale `.tmp_*` files of a killed save are removed first.

    Returns the metrics dict (also written to OUT/metrics.json).
    Raises: as `train_radiance`; ValueError for a scene without the depth images
    `cfg.geometry_depth` asks for when the geometry stage is selected.
    """
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    for p in remove_stale_checkpoint_files(ckpt_dir):
        log(f"removed {p.name}, left by a save that was killed")
    if not isinstance(scene, SceneSubset):
        from .blocks import is_block_run, plan_blocks, read_manifest, train_blocks

        if resume and is_block_run(out):
            if cfg is not None:
                raise ValueError(f"{out}: --resume continues with the run's settings; drop --config "
                                 f"(only --steps may change)")
            block_cfg = TrainConfig.from_dict(read_manifest(out)["config"], str(out / "manifest.json"))
        else:
            block_cfg = cfg or TrainConfig()
        blocks = plan_blocks(scene, block_cfg.block_frames, block_cfg.block_overlap)
        if not resume and is_block_run(out):
            raise FileExistsError(f"{out}: holds a block run; pass --resume to continue it or "
                                  f"choose another --out")
        if len(blocks) > 1:
            return train_blocks(scene, out, block_cfg, blocks, stages, resume, progress, log, steps)
    if resume:
        if "radiance" not in stages:
            raise ValueError("--resume continues the radiance stage; it needs --stages to include radiance")
        if latest_checkpoint(ckpt_dir) is None and (ckpt_dir / GEOMETRY_NAME).is_file():
            # stopped in the radiance stage before its first checkpoint: start it from geometry.pt
            log(f"no step checkpoint in {ckpt_dir} yet: starting the radiance stage from {GEOMETRY_NAME}")
            return train(scene, out, cfg, stages=("radiance",), resume=False, progress=progress,
                         log=log, steps=steps, held_out=held_out)
        return train_radiance(scene, out, cfg, resume=True, progress=progress, log=log, steps=steps,
                              held_out=held_out)
    if latest_checkpoint(ckpt_dir) is not None:
        raise FileExistsError(f"{ckpt_dir}: holds checkpoints of an earlier run; pass --resume "
                              f"to continue it or choose another --out")
    given = cfg
    cfg = cfg or TrainConfig()
    if steps is not None:
        cfg.steps = steps
    t_start = time.time()
    extra: dict = {}
    geo_path = ckpt_dir / GEOMETRY_NAME
    has_test_depth = any(f.depth is not None for f in scene.frames_by_split("test"))
    if "geometry" in stages:
        if geo_path.is_file():
            log(f"note: replacing {geo_path} of an earlier run (`dnmp train --resume` would start the "
                f"radiance stage from it)")
        renderer = build_renderer(scene_centres(scene, cfg), cfg)
        log(f"geometry stage on {scene.name!r}: {describe_primitives(renderer)}")
        before = depth_errors(renderer, scene, "test", cfg.depth_max_range) if has_test_depth else None
        try:
            stats = train_geometry(renderer, scene, cfg, progress, log)
            release_freed_memory()  # the stage's depth images and visibility maps
        except KeyboardInterrupt:  # SIGINT / SIGTERM (interrupt.Interrupted): all or nothing
            log(f"\nthe geometry stage was interrupted; it saves {GEOMETRY_NAME} only when it "
                f"completes: run the command again")
            raise
        after = depth_errors(renderer, scene, "test", cfg.depth_max_range) if has_test_depth else None
        extra["geometry"] = {**stats, "test_depth_template": before, "test_depth_optimized": after}
        if before and after:
            log(f"held-out depth error vs LiDAR (median / p90, m): template spheres "
                f"{_fmt(before)}, optimized {_fmt(after)}")
        elif not has_test_depth:
            note = "not measured: no held-out frame has LiDAR depth" + (
                " (stereo depth is made for training frames only)" if stats.get("depth_source") == "stereo" else "")
            extra["geometry"]["test_depth_note"] = note
            log(f"held-out depth error vs LiDAR: {note}")
        save_geometry_checkpoint(ckpt_dir, {
            "config": cfg.to_dict(), "model": renderer.state_dict(),
            "scene": scene_info(scene), "extra_metrics": extra})
        write_json_atomic(out / "config.json", cfg.to_dict())
    elif geo_path.is_file():
        ckpt = load_checkpoint(geo_path)
        check_checkpoint_scene(ckpt, scene)
        saved = TrainConfig.from_dict(ckpt["config"], str(geo_path))
        if given is None:  # no --config: the geometry run's settings throughout
            cfg = saved
            if steps is not None:
                cfg.steps = steps
        elif saved.to_dict() != cfg.to_dict():
            log(f"note: {geo_path} was made with other settings; its model settings are kept, "
                f"the radiance loop's come from the given config")
            cfg = TrainConfig.from_dict({**ckpt["config"], **_run_settings(cfg)})
        renderer = renderer_from_checkpoint(ckpt)
        extra = dict(ckpt.get("extra_metrics", {}))
        log(f"starting from the geometry stage's model {geo_path}")
    else:
        renderer = build_renderer(scene_centres(scene, cfg), cfg)
    if "radiance" not in stages:
        result = dict(extra)
        write_json_atomic(out / "metrics.json", result)
        return result
    budget = None
    if cfg.time_budget_minutes > 0:
        budget = max(1.0, cfg.time_budget_minutes * 60.0 - (time.time() - t_start))
    return train_radiance(scene, out, cfg, progress=progress, log=log, renderer=renderer,
                          budget_seconds=budget, extra_metrics=extra, held_out=held_out)


def _fmt(d: dict) -> str:
    if d.get("median_m") is None:
        return "n/a (no LiDAR pixel covered)"
    return f"{d['median_m']:.3f} / {d['p90_m']:.3f} ({100 * d['covered']:.0f}% covered)"


def _run_settings(cfg: TrainConfig) -> dict:
    """Settings of the radiance loop that may differ from the geometry checkpoint's."""
    keys = ("steps", "batch_size", "lr_features", "lr_mlp", "lr_final_factor", "seed",
            "time_budget_minutes", "log_every", "checkpoint_every", "keep_checkpoints")
    return {k: getattr(cfg, k) for k in keys}


__all__ = ["train", "parse_stages", "STAGES", "CheckpointError"]

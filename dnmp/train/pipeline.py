"""`dnmp train`: the geometry stage, then the radiance stage (paper Sec. 3.2-3.4).

Output folder (OUT): checkpoints/geometry.pt (the model after the geometry
stage), checkpoints/step_*.pt (radiance stage), metrics.json, config.json,
renders/test/.
"""

from __future__ import annotations

import time
from pathlib import Path

from .._io import write_json_atomic
from ..data.scene import Scene
from ..data.subset import SceneSubset
from ..device import release_freed_memory, resolve_device
from ..evaluate import depth_errors
from .checkpoint import (GEOMETRY_NAME, CheckpointError, load_checkpoint, save_geometry_checkpoint,
                         scene_info, with_legacy_defaults)
from .config import TrainConfig
from .distributed import SINGLE, DistContext, process_group
from .factory import (build_renderer, check_checkpoint_scene, describe_primitives,
                      renderer_from_checkpoint, scene_centres)
from .geometry import train_geometry
from .radiance import train_radiance
from .run import RunFolder, refuse_config_on_resume, settle_config

STAGES = ("geometry", "radiance")


def parse_stages(text: str) -> tuple[str, ...]:
    """"geometry,radiance" -> ("geometry", "radiance"); raises ValueError for unknown names."""
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise ValueError(f"--stages: unknown or empty stage list {text!r}; choose from {','.join(STAGES)}")
    return tuple(s for s in STAGES if s in names)


def default_stages(scene: Scene) -> tuple[tuple[str, ...], str | None]:
    """Both stages for a scene with training depth images (LiDAR or stereo;
    `TrainConfig.geometry_depth` picks), else the radiance stage alone and a note why."""
    if scene.depth_kinds("train"):
        return STAGES, None
    return ("radiance",), (f"{scene.root} has no depth images (LiDAR or stereo): skipping the "
                           f"geometry stage (template spheres)")


def train_scene(scene_dir: str | Path, out_dir: str | Path | None = None, config: str | None = None,
                stages: str | None = None, resume: bool = False, steps: int | None = None,
                progress: bool = True, log=print, warn=print,
                device: str | None = None, data_parallel: bool = False) -> tuple[dict, Path]:
    """`dnmp train`: load and check the scene (every image decodes), pick the stages
    (`parse_stages(stages)`, default `default_stages`), read the config TOML (`config`;
    None: defaults, or with `resume` the run's own) and `train` into `out_dir`
    (default runs/<scene name>) on `device` ("auto", "cpu", "cuda[:N]"; None: the
    config's `device`, default auto). `warn` gets the notes meant for stderr.

    Started by torchrun (several processes, `train.distributed`), it joins the process
    group for the run: a drive's blocks are spread over the ranks, or with one block (or
    `data_parallel`) every step's batch is; only rank 0 shows progress bars, every log line
    says its rank. A re-run of the same command under torchrun (an elastic restart, or by
    hand after a rank died) continues the run in `out_dir` when it holds one of this scene
    with the same settings (`--resume` implied); finished blocks are kept.

    Returns (metrics dict, output folder). Raises: as `train`, `load_scene`, `load_config`;
    ValueError (one line) for a device that is unknown or not available here, before the
    scene is read.
    """
    from ..data.scene import load_scene
    from .config import load_config

    if device is not None:
        resolve_device(device)  # an unavailable device fails before any work
    cfg = load_config(config) if config or not resume else None  # --resume --config is refused in `train`
    if cfg is not None and device is None:
        resolve_device(cfg.device, f"{config or 'TrainConfig'}: device")
    scene = load_scene(scene_dir)
    chosen, note = (parse_stages(stages), None) if stages is not None else default_stages(scene)
    if note:
        warn(f"note: {note}")
    scene.check_files(decode=True)
    out = Path(out_dir) if out_dir else Path("runs") / scene.name
    wanted = device if device is not None else (cfg.device if cfg is not None else "auto")
    # the backend follows the device (gloo / nccl); under torchrun "cuda" is this rank's GPU
    with process_group(resolve_device(wanted).type) as dist:
        if dist.active:
            log = dist.logger(log)
            progress = progress and dist.is_main
            if not resume and _continues(out, cfg, steps):
                log(f"continuing the run in {out} (the same command again: --resume implied)")
                resume, cfg = True, None
        elif data_parallel:
            warn("note: --data-parallel has no effect in a single process (start dnmp with torchrun)")
        return train(scene, out, cfg, stages=chosen, resume=resume, progress=progress, log=log,
                     steps=steps, dist=dist, data_parallel=data_parallel, device=device), out


def _continues(out: Path, cfg: TrainConfig | None, steps: int | None) -> bool:
    """True when OUT holds a run (a block manifest, step checkpoints or geometry.pt) made with the settings
    `cfg` / `steps` would give: torchrun re-runs the same command after a failure, and that
    must continue the run, not be refused as a fresh run over an old one."""
    import json

    run = RunFolder(out)
    if not (run.is_block_run() or run.latest_checkpoint() is not None or run.geometry.is_file()):
        return False
    path = run.manifest if run.is_block_run() else out / "config.json"
    try:
        saved = json.loads(path.read_text())
        saved = saved["config"] if run.is_block_run() else saved
        saved = settle_config(None, steps, with_legacy_defaults(saved), str(path)).to_dict()
    except (OSError, ValueError, KeyError, TypeError):
        return False  # let `train` refuse the folder with its own message
    return saved == settle_config(cfg, steps).to_dict()


def train(scene: Scene, out_dir: str | Path, cfg: TrainConfig | None = None,
          stages: tuple[str, ...] = STAGES, resume: bool = False, progress: bool = True,
          log=print, steps: int | None = None, held_out: bool = True,
          rerun: str | None = None, device: str | None = None, dist: DistContext | None = None,
          data_parallel: bool = False) -> dict:
    """Train a scene: geometry stage (if selected), then radiance stage (if selected).

    A drive longer than `cfg.block_frames` instants is trained as overlapping blocks,
    each an ordinary run in OUT/blocks/, listed in OUT/manifest.json (`train.blocks`).
    `held_out=False` skips scoring the test frames (the blocks of a long drive);
    `rerun` is what to tell the user to do after an interrupted geometry stage
    (default "run the command again"; a block run's says to add --resume).
    `dist` (`train.distributed`, None: one process) with several ranks: the blocks of a
    long drive are dealt to the ranks (`train_blocks`), or, for one block or with
    `data_parallel`, every rank trains the same model on its share of each batch (rank 0
    runs the geometry stage alone and writes every file).

    - geometry: decoder frozen; latents and offsets fitted to the training frames'
      depth images, LiDAR or else stereo (`cfg.geometry_depth`, `train.geometry`);
      the held-out depth error against LiDAR (median / 90th percentile, metres) is
      measured before (template spheres) and after where the test frames have LiDAR
      depth (else metrics say why not), and the model saved as OUT/checkpoints/geometry.pt.
    - radiance: starts from the geometry stage's model (this run's, or an earlier
      run's geometry.pt in OUT), else from template primitives.
    `cfg.time_budget_minutes` bounds both stages' loops together.
    `device` ("auto", "cpu", "cuda[:N]"), like `steps`, overrides the config's (also a
    resumed run's) `device`; the model is built on the CPU and moved there, and
    metrics.json and the checkpoints record the device used.
    `resume` continues an interrupted radiance stage (the geometry is in its checkpoint),
    or starts it from OUT/checkpoints/geometry.pt if it was stopped before its first
    step checkpoint. Stale `.tmp_*` files of a killed save are removed first.

    Returns the metrics dict (also written to OUT/metrics.json).
    Raises: as `train_radiance`; ValueError for a scene without the depth images
    `cfg.geometry_depth` asks for when the geometry stage is selected.
    """
    run = RunFolder(out_dir)
    out, ckpt_dir = run.root, run.checkpoints
    dist = dist or SINGLE
    if dist.is_main:
        run.remove_stale_files(log)
    if not resume:
        run.refuse_earlier_run()
    dist.barrier()  # every rank has checked the folder before any writes to it
    if not isinstance(scene, SceneSubset):
        from .blocks import plan_blocks, read_manifest, train_blocks

        saved = read_manifest(out)["config"] if resume and run.is_block_run() else None
        block_cfg = settle_config(cfg, steps, saved, str(run.manifest), device)
        blocks = plan_blocks(scene, block_cfg.block_frames, block_cfg.block_overlap)
        if len(blocks) > 1:
            return train_blocks(scene, out, block_cfg, blocks, stages, resume, progress, log, steps,
                                device=device, dist=dist, data_parallel=data_parallel)
    if resume:
        refuse_config_on_resume(cfg, str(out))
        if "radiance" not in stages:
            raise ValueError("--resume continues the radiance stage; it needs --stages to include radiance")
        if run.latest_checkpoint() is None and run.geometry.is_file():
            # stopped in the radiance stage before its first checkpoint: start it from geometry.pt
            log(f"no step checkpoint in {ckpt_dir} yet: starting the radiance stage from {GEOMETRY_NAME}")
            return train(scene, out, cfg, stages=("radiance",), resume=False, progress=progress,
                         log=log, steps=steps, held_out=held_out, rerun=rerun, dist=dist, device=device)
        return train_radiance(scene, out, cfg, resume=True, progress=progress, log=log, steps=steps,
                              held_out=held_out, dist=dist, device=device)
    given = cfg
    cfg = settle_config(cfg, steps, device=device)
    dev = resolve_device(cfg.device, "device")
    t_start = time.time()
    extra: dict = {}
    geo_path = run.geometry
    has_test_depth = any(f.depth is not None for f in scene.frames_by_split("test"))
    if "geometry" in stages and not dist.is_main:
        dist.barrier()  # data-parallel: rank 0 runs the geometry stage, the others load its result
    if "geometry" in stages and dist.is_main:
        if geo_path.is_file():
            log(f"note: replacing {geo_path} of an earlier run (`dnmp train --resume` would start the "
                f"radiance stage from it)")
        renderer = build_renderer(scene_centres(scene, cfg), cfg).to(dev)
        log(f"geometry stage on {scene.name!r} ({dev}): {describe_primitives(renderer)}")
        before = depth_errors(renderer, scene, "test", cfg.depth_max_range) if has_test_depth else None
        try:
            stats = train_geometry(renderer, scene, cfg, progress, log)
            release_freed_memory()  # the stage's depth images and visibility maps
        except KeyboardInterrupt:  # SIGINT / SIGTERM (interrupt.Interrupted): all or nothing
            log(f"\nthe geometry stage was interrupted; it saves {GEOMETRY_NAME} only when it "
                f"completes: {rerun or 'run the command again'}")
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
            "config": cfg.to_dict(), "model": renderer.state_dict(), "device": str(dev),
            "scene": scene_info(scene), "extra_metrics": extra})
        write_json_atomic(out / "config.json", cfg.to_dict())
        dist.barrier()
    elif geo_path.is_file():
        ckpt = load_checkpoint(geo_path)
        check_checkpoint_scene(ckpt, scene)
        if given is None:  # no --config: the geometry run's settings throughout
            cfg = settle_config(None, steps, ckpt["config"], str(geo_path), device)
        elif TrainConfig.from_dict({**ckpt["config"], "device": cfg.device}, str(geo_path)).to_dict() \
                != cfg.to_dict():  # the device is where it runs, not a model setting
            log(f"note: {geo_path} was made with other settings; its model settings are kept, "
                f"the radiance loop's come from the given config")
            cfg = TrainConfig.from_dict({**ckpt["config"], **_run_settings(cfg)})
        # the settings decided above (e.g. the far field, which the geometry stage does not train)
        renderer = renderer_from_checkpoint({**ckpt, "config": cfg.to_dict()}, resolve_device(cfg.device, "device"))
        extra = dict(ckpt.get("extra_metrics", {}))
        log(f"starting from the geometry stage's model {geo_path}")
    else:
        renderer = build_renderer(scene_centres(scene, cfg), cfg).to(dev)
    if "radiance" not in stages:
        result = dict(extra)
        if dist.is_main:
            write_json_atomic(out / "metrics.json", result)
        return result
    budget = None
    if cfg.time_budget_minutes > 0:
        budget = max(1.0, cfg.time_budget_minutes * 60.0 - (time.time() - t_start))
    return train_radiance(scene, out, cfg, progress=progress, log=log, renderer=renderer,
                          budget_seconds=budget, extra_metrics=extra, held_out=held_out, dist=dist)


def _fmt(d: dict) -> str:
    if d.get("median_m") is None:
        return "n/a (no LiDAR pixel covered)"
    return f"{d['median_m']:.3f} / {d['p90_m']:.3f} ({100 * d['covered']:.0f}% covered)"


def _run_settings(cfg: TrainConfig) -> dict:
    """Settings of the radiance loop that may differ from the geometry checkpoint's."""
    keys = ("steps", "batch_size", "lr_features", "lr_mlp", "lr_final_factor", "seed",
            "far_shells", "far_shell_texels", "far_shell_ratio", "lr_far_field",
            "time_budget_minutes", "log_every", "checkpoint_every", "keep_checkpoints", "device")
    return {k: getattr(cfg, k) for k in keys}


__all__ = ["train", "train_scene", "default_stages", "parse_stages", "STAGES", "CheckpointError"]

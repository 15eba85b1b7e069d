"""Radiance stage (paper Sec. 3.3-3.4): geometry fixed, fit vertex features and MLPs.

The geometry does not change in this stage, so the fragments of the training
frames are rasterized once and cached, a bounded pool of frames at a time
(`frame_pool.FramePool`: memory grows with the pool, not with the drive); each step
samples random pixels of the pool, shades them from their cached fragments and
minimises the MSE to the image colours with Adam (SparseAdam for the vertex
features, so a step costs O(batch), not O(scene)).
"""

from __future__ import annotations

import gc
import math
import sys
import time
from pathlib import Path

import torch
from torch.profiler import record_function
from tqdm import tqdm

from .._io import write_json_atomic
from ..data.scene import Scene
from ..evaluate import evaluate
from ..model import DNMPRenderer
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint, scene_info
from .config import TrainConfig
from .factory import (build_renderer, check_checkpoint_scene, describe_primitives,
                      renderer_from_checkpoint, scene_centres)
from .frame_pool import FramePool
from .interrupt import Interrupted, handle_signals
from .run import RunFolder, settle_config


def _make_optimizers(renderer: DNMPRenderer, cfg: TrainConfig):
    prims = renderer.primitives
    for p in (prims.latents, prims.offsets, *prims.decoder.parameters()):
        p.requires_grad_(False)  # geometry is fixed in the radiance stage
    feat_opt = torch.optim.SparseAdam([prims.features], lr=cfg.lr_features)
    mlp_params = list(renderer.field.parameters()) + list(renderer.background.parameters())
    mlp_opt = torch.optim.Adam(mlp_params, lr=cfg.lr_mlp)
    return {"features": feat_opt, "mlp": mlp_opt}


def _set_lr(opts: dict, cfg: TrainConfig, step: int) -> None:
    # Exponential decay to lr_final_factor at the last step. It follows steps only, never
    # the clock, so a run is the same on a busy or an idle machine.
    progress = min(1.0, step / max(1, cfg.steps))
    factor = cfg.lr_final_factor ** progress
    for g in opts["features"].param_groups:
        g["lr"] = cfg.lr_features * factor
    for g in opts["mlp"].param_groups:
        g["lr"] = cfg.lr_mlp * factor


def radiance_loss_backward(renderer: DNMPRenderer, cache: FramePool, opts: dict,
                           batch_size: int) -> torch.Tensor:
    """The gradient half of one radiance step: sample `batch_size` pool pixels (global torch
    RNG), shade them from their cached fragments, MSE to their colours, zero the gradients
    of `opts`' parameters and backpropagate. Returns the loss (a 0-d tensor). The loop of
    `train_radiance` and `dnmp profile --breakdown` both call this (and `optimizer_step`),
    so the profile times the code that trains; the named ranges are its stages."""
    with record_function("train.batch"):
        idx = torch.randint(0, len(cache), (batch_size,))
        p2f, bary, dirs, rgb = cache.batch(idx)
    pred = renderer.shade_rays(p2f, bary, dirs, sparse_features=True)["rgb"]
    with record_function("train.loss"):
        loss = torch.mean((pred - rgb) ** 2)
    for o in opts.values():
        o.zero_grad(set_to_none=True)
    with record_function("train.backward"):
        loss.backward()
    return loss


def optimizer_step(opts: dict) -> None:
    """The update half of one radiance step (SparseAdam on features, Adam on the MLPs)."""
    with record_function("train.optimizer"):
        for o in opts.values():
            o.step()


def train_radiance(scene: Scene, out_dir: str | Path, cfg: TrainConfig | None, resume: bool = False,
                   progress: bool = True, log=print, steps: int | None = None,
                   renderer: DNMPRenderer | None = None, budget_seconds: float | None = None,
                   extra_metrics: dict | None = None, held_out: bool = True) -> dict:
    """Run the radiance stage on `scene`, writing checkpoints, held-out renders and metrics.

    `held_out=False` skips rendering and scoring the test frames (a block of a long
    drive: the run scores them with the blended blocks).

    Output folder layout: OUT/checkpoints/step_*.pt, OUT/metrics.json,
    OUT/renders/test/<frame>_pred.png and <frame>_gt.png, OUT/config.json (the
    settings used).

    With `resume`, the settings are the checkpoint's (`cfg` must be None) except
    `steps`, which may extend or shorten the run.

    `renderer` is the model to start from (e.g. after the geometry stage; default:
    template primitives on the scene's points), `budget_seconds` overrides the
    loop's time budget (`cfg.time_budget_minutes`), and `extra_metrics` are merged
    into metrics.json (e.g. the geometry stage's figures).

    Raises:
        CheckpointError: `resume` with a checkpoint of another scene or a corrupt one.
        FileExistsError: OUT already holds checkpoints and `resume` is False.
        ValueError: a scene without train frames or points.
    SIGINT / SIGTERM (`interrupt.handle_signals`): the loop stops at the next step
    boundary, saves that step, logs "stopped by SIG... at step N" and exits with
    SystemExit(130 / 143); a second signal aborts at once (Interrupted, nothing saved).
    Stale `.tmp_*` files of a killed save are removed at the start.
    """
    t_enter = time.time()  # for time_to_first_step_s: setup, caching and the first step
    run = RunFolder(out_dir)
    out, ckpt_dir = run.root, run.checkpoints
    run.remove_stale_files(log)
    start_step, ckpt = 0, None
    if resume:
        path = run.latest_checkpoint()
        if path is None:
            raise CheckpointError(f"{ckpt_dir}: nothing to resume (no step_*.pt); "
                                  f"run without --resume to start")
        ckpt = load_checkpoint(path)
        check_checkpoint_scene(ckpt, scene)
        cfg = settle_config(cfg, steps, ckpt["config"], str(path))
        start_step = ckpt["step"]
        log(f"resuming from {path} (step {start_step})")
    else:
        run.refuse_earlier_run()
        cfg = settle_config(cfg, steps)
    train_frames = scene.frames_by_split("train")
    if not train_frames:
        raise ValueError(f"{scene.root}: scene has no 'train' frames")
    if not scene.frames_by_split("test"):
        log(f"warning: {scene.root} has no 'test' frames: no held-out renders or metrics")
    torch.manual_seed(cfg.seed)
    if ckpt:
        renderer = renderer_from_checkpoint(ckpt)
        extra_metrics = {**ckpt.get("extra_metrics", {}), **(extra_metrics or {})}
    elif renderer is None:
        renderer = build_renderer(scene_centres(scene, cfg), cfg)
    renderer.refresh_geometry()
    extra_metrics = extra_metrics or {}
    prims = renderer.primitives
    log(f"scene {scene.name!r}: {len(train_frames)} train / {len(scene.frames_by_split('test'))} "
        f"test frames; {describe_primitives(renderer)}")
    opts = _make_optimizers(renderer, cfg)
    if ckpt:
        for name, opt in opts.items():
            opt.load_state_dict(ckpt["optimizer"][name])
        torch.set_rng_state(ckpt["rng"])
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", cfg.to_dict())

    t0 = time.time()
    cache = FramePool(renderer, scene, train_frames, cfg.cache_pixels, cfg.cache_rotate_every,
                      seed=cfg.seed, progress=progress)
    cache.sync(start_step)
    pool_note = (f"a pool of {cache.size} of {len(train_frames)} training frames, one frame "
                 f"replaced every {cfg.cache_rotate_every} steps" if cache.rotates
                 else f"all {len(train_frames)} training frames")
    log(f"cached fragments of {len(cache)} pixels ({pool_note}; {cache.nbytes / 2**20:.0f} MiB) "
        f"in {time.time() - t0:.1f} s; {100 * cache.coverage:.1f}% covered by primitives")

    prior_seconds = float(ckpt.get("train_seconds", 0.0)) if ckpt else 0.0  # earlier runs' loops

    saving = None  # the step being saved, while a save is in progress

    def save(step: int) -> Path:
        nonlocal saving
        saving = step
        path = save_checkpoint(ckpt_dir, step, {
            "config": cfg.to_dict(),
            "model": renderer.state_dict(),
            "optimizer": {k: o.state_dict() for k, o in opts.items()},
            "rng": torch.get_rng_state(),
            "scene": scene_info(scene),
            "train_seconds": prior_seconds + time.time() - t_loop,
            "extra_metrics": extra_metrics,
        }, keep=cfg.keep_checkpoints)
        saving = None
        return path

    step, last_saved = start_step, (start_step if ckpt else None)
    budget = cfg.time_budget_minutes * 60.0 if budget_seconds is None else budget_seconds
    stopped_by_time_limit = False
    t_loop = time.time()
    first_step_s = None
    bar = tqdm(total=cfg.steps, initial=start_step, desc="radiance", disable=not progress,
               mininterval=1.0 if sys.stderr.isatty() else 10.0, dynamic_ncols=True)
    running = None
    updating = False  # True while parameters are being changed: no consistent state to save
    with handle_signals(defer=True, notice="stopping at the end of the current step to save it") as stop:
        try:
            while step < cfg.steps and not stop.requested:
                if budget > 0 and time.time() - t_loop > budget:
                    stopped_by_time_limit = True
                    break
                _set_lr(opts, cfg, step)
                cache.sync(step)
                loss = radiance_loss_backward(renderer, cache, opts, cfg.batch_size)
                updating = True
                optimizer_step(opts)
                step += 1
                updating = False
                if first_step_s is None:
                    first_step_s = time.time() - t_enter
                lv = loss.item()
                if not math.isfinite(lv):
                    raise FloatingPointError(f"loss became {lv} at step {step}; last checkpoint "
                                             f"({latest_checkpoint(ckpt_dir)}) is kept")
                running = lv if running is None else 0.95 * running + 0.05 * lv
                bar.update(1)
                if step % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{running:.4f}", psnr=f"{-10 * math.log10(running):.2f}")
                if step % cfg.checkpoint_every == 0:
                    save(step)
                    last_saved = step
            bar.close()
            if stopped_by_time_limit:  # on its own line, after the progress bar
                log(f"stopped by the time limit (time_budget_minutes = {cfg.time_budget_minutes:g}) "
                    f"at step {step} of {cfg.steps}")
            if step != last_saved:
                save(step)  # a signal during this save is deferred too: the file is complete
                last_saved = step
        except KeyboardInterrupt as exc:  # a second signal (abort at once), or Ctrl-C outside the main thread
            bar.close()
            if not isinstance(exc, Interrupted) and not updating and step != last_saved:
                save(step)  # parameters are those after `step` complete steps
            kept = latest_checkpoint(ckpt_dir)
            how = f"aborted by a second {stop.name}" if isinstance(exc, Interrupted) else "interrupted"
            where = f"while saving step {saving} (that save was abandoned)" if saving is not None \
                else f"at step {step}"
            log(f"\n{how} {where}; " + (f"newest checkpoint: {kept}; continue with --resume"
                                        if kept else "no step checkpoint"))
            raise SystemExit(exc.exit_code if isinstance(exc, Interrupted) else 130) from None
    if stop.requested:
        log(f"stopped by {stop.name} at step {step}; saved {latest_checkpoint(ckpt_dir)}; "
            f"continue with --resume")
        raise SystemExit(stop.exit_code)
    train_s = prior_seconds + time.time() - t_loop

    held_out = held_out and bool(scene.frames_by_split("test"))
    if held_out:
        log("rendering held-out frames ...")
    result = {"step": step, "train_seconds": round(train_s, 1),
              "time_to_first_step_s": None if first_step_s is None else round(first_step_s, 1),
              "stopped_by_time_limit": stopped_by_time_limit,
              "train_psnr_running": None if running is None else -10 * math.log10(running),
              "num_primitives": prims.num_primitives, "num_faces": prims.num_faces,
              "train_pixel_coverage": cache.coverage, "cache_frames": cache.size,
              "cache_mib": round(cache.nbytes / 2**20, 1), **extra_metrics}
    # The last step is saved: free the cached fragments and the Adam moments before
    # rendering, so the held-out renders do not add to the training peak memory.
    del cache
    opts.clear()
    gc.collect()
    if held_out:
        result.update(evaluate(renderer, scene, "test", out / "renders" / "test", progress))
    write_json_atomic(out / "metrics.json", result)
    return result

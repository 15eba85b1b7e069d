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
from tqdm import tqdm

from ..data.scene import Scene
from ..evaluate import evaluate, write_json_atomic
from ..model import (BackgroundField, DNMPRenderer, Primitives, RadianceField, RenderConfig,
                     ShapeDecoder, camera_rays, voxelize)
from .checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint,
                         remove_stale_checkpoint_files, save_checkpoint, scene_info)
from .config import TrainConfig
from .frame_pool import FramePool
from .interrupt import Interrupted, handle_signals


def make_decoder(cfg: TrainConfig) -> tuple[ShapeDecoder, torch.Tensor | None]:
    """The shape decoder `cfg.shape_decoder` names, frozen, and the latent of its
    template sphere (None for the untrained "template" decoder: any latent decodes
    to the sphere). See `dnmp.model.autoencoder` (paper Sec. 3.1).

    Raises:
        ValueError: weights missing, corrupt or of another latent size.
    """
    if cfg.shape_decoder == "template":
        decoder, latent = ShapeDecoder(cfg.latent_dim), None
    else:
        from ..model.autoencoder import load_shape_decoder, template_latent

        path = None if cfg.shape_decoder == "pretrained" else cfg.shape_decoder
        decoder = load_shape_decoder(path, latent_dim=cfg.latent_dim)
        latent = template_latent(decoder)
    for p in decoder.parameters():
        p.requires_grad_(False)
    return decoder, latent


def build_renderer(centres: list[torch.Tensor], cfg: TrainConfig,
                   decoder: ShapeDecoder | None = None,
                   init_latent: torch.Tensor | None = None) -> DNMPRenderer:
    """A DNMP renderer with one primitive per voxel centre.

    Args:
        centres: one float32 [P_s, 3] tensor (scene frame) per scale, fine first
            (voxel sizes cfg.voxel_size, then cfg.coarse_voxel_size).
        decoder, init_latent: the shape decoder and the latent every primitive
            starts from (default: `make_decoder(cfg)`).
    """
    if decoder is None:
        decoder, init_latent = make_decoder(cfg)
    sizes = [cfg.voxel_size, cfg.coarse_voxel_size][: len(centres)]
    prims = Primitives(torch.cat(centres), sizes, feature_dim=cfg.feature_dim,
                       decoder=decoder, latent_dim=cfg.latent_dim, seed=cfg.seed,
                       scale_counts=[len(c) for c in centres], init_latent=init_latent)
    with torch.random.fork_rng():  # MLP initialisation from cfg.seed, whoever calls (reproducible runs)
        torch.manual_seed(cfg.seed)
        field = RadianceField(cfg.feature_dim, cfg.hidden, cfg.feature_freqs, cfg.dir_freqs)
        background = BackgroundField(cfg.background_hidden, cfg.background_freqs)
    return DNMPRenderer(prims, field, background,
                        RenderConfig(cfg.faces_per_pixel, cfg.coarse_faces_per_pixel, cfg.near, cfg.far))


def scene_centres(scene: Scene, cfg: TrainConfig) -> list[torch.Tensor]:
    """Voxel centres of the scene's point clouds of kinds `cfg.point_kinds` (all if
    empty), one float32 [P_s, 3] tensor per scale (fine, then coarse if enabled).

    Raises:
        ValueError: naming the scene when there are no points to voxelize.
    """
    if not scene.point_kinds():
        raise ValueError(f"{Path(scene.root) / 'scene.json'}: lists no point_clouds, so there is "
                         f"nothing to place primitives on")
    kinds = cfg.point_kinds or sorted(set(scene.point_kinds()))
    missing = [k for k in kinds if k not in scene.point_kinds()]
    if missing:
        raise ValueError(f"{scene.root}: scene has no point cloud of kind {missing}; "
                         f"it has {sorted(set(scene.point_kinds()))}")
    pts = [torch.from_numpy(scene.load_points(k)) for k in kinds]
    pts = torch.cat(pts) if pts else torch.zeros(0, 3)
    finite = torch.isfinite(pts).all(dim=1)
    if not finite.any():
        raise ValueError(f"{scene.root}: scene has no finite points to place primitives on "
                         f"(empty or all-NaN point clouds {kinds})")
    if not finite.all():
        print(f"warning: {scene.root}: {int((~finite).sum())} NaN/Inf points in {kinds} are ignored",
              file=sys.stderr)
    sizes = [cfg.voxel_size] + ([cfg.coarse_voxel_size] if cfg.coarse_voxel_size > 0 else [])
    return [voxelize(pts, s) for s in sizes]


def renderer_from_checkpoint(ckpt: dict) -> DNMPRenderer:
    """Rebuild the renderer saved in a checkpoint dict (see `checkpoint.load_checkpoint`)."""
    cfg = TrainConfig.from_dict(ckpt["config"], ckpt.get("path", "checkpoint"))
    state = ckpt["model"]
    try:
        counts = state["primitives.scale_counts"].tolist()
        centres = list(torch.split(state["primitives.centres"], counts))
        hidden = state["primitives.decoder.mlp.0.weight"].shape[0]
    except (KeyError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt.get('path')}: model state lacks primitives ({exc})") from None
    decoder = ShapeDecoder(cfg.latent_dim, hidden=hidden)
    for p in decoder.parameters():
        p.requires_grad_(False)
    renderer = build_renderer(centres, cfg, decoder=decoder)
    try:
        renderer.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.get('path')}: model state does not match its config "
                              f"({str(exc).splitlines()[0]})") from None
    return renderer


def check_checkpoint_scene(ckpt: dict, scene: Scene) -> None:
    """Raise CheckpointError if the checkpoint was trained on another scene."""
    info = ckpt.get("scene", {})
    if info.get("fingerprint") != scene.fingerprint():
        raise CheckpointError(
            f"{ckpt.get('path')}: checkpoint belongs to scene {info.get('name')!r} "
            f"({info.get('path')}), not to {scene.name!r} ({scene.root})")


def describe_primitives(renderer: DNMPRenderer) -> str:
    """One line: primitives and faces per scale, voxel sizes and K."""
    prims = renderer.primitives
    parts = []
    for (a, b), k in zip(prims.scale_ranges(), renderer.layers_per_scale()):
        size = float(prims.voxel_sizes[a]) if b > a else float("nan")
        parts.append(f"{b - a} primitives of {size:g} m (K={k})")
    return f"{' + '.join(parts)}, {prims.num_faces} faces"


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
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    for p in remove_stale_checkpoint_files(ckpt_dir):
        log(f"removed {p.name}, left by a save that was killed")
    start_step, ckpt = 0, None
    if resume:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            raise CheckpointError(f"{ckpt_dir}: nothing to resume (no step_*.pt); "
                                  f"run without --resume to start")
        ckpt = load_checkpoint(path)
        check_checkpoint_scene(ckpt, scene)
        if cfg is not None:
            raise ValueError(f"{path}: --resume continues with the checkpoint's settings; "
                             f"drop --config (only --steps may change)")
        cfg = TrainConfig.from_dict(ckpt["config"], str(path))
        if steps is not None:
            cfg.steps = steps
        start_step = ckpt["step"]
        log(f"resuming from {path} (step {start_step})")
    elif latest_checkpoint(ckpt_dir) is not None:
        raise FileExistsError(f"{ckpt_dir}: holds checkpoints of an earlier run; pass --resume "
                              f"to continue it or choose another --out")
    else:
        cfg = cfg or TrainConfig()
        if steps is not None:
            cfg.steps = steps
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

    def save(step: int) -> Path:
        return save_checkpoint(ckpt_dir, step, {
            "config": cfg.to_dict(),
            "model": renderer.state_dict(),
            "optimizer": {k: o.state_dict() for k, o in opts.items()},
            "rng": torch.get_rng_state(),
            "scene": scene_info(scene),
            "train_seconds": prior_seconds + time.time() - t_loop,
            "extra_metrics": extra_metrics,
        }, keep=cfg.keep_checkpoints)

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
                idx = torch.randint(0, len(cache), (cfg.batch_size,))
                p2f, bary, dirs, rgb = cache.batch(idx)
                pred = renderer.shade(p2f, bary, dirs, sparse_features=True)["rgb"]
                loss = torch.mean((pred - rgb) ** 2)
                for o in opts.values():
                    o.zero_grad(set_to_none=True)
                loss.backward()
                updating = True
                for o in opts.values():
                    o.step()
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
            log(f"\n{how} at step {step}; " + (f"newest checkpoint: {kept}; continue with --resume"
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

"""Radiance stage (paper Sec. 3.3-3.4): geometry fixed, fit vertex features and MLPs.

The geometry does not change in this stage, so the fragments of the training
frames are rasterized once and cached, a bounded pool of frames at a time
(`frame_pool.FramePool`: memory grows with the pool, not with the drive); each step
samples random pixels of the pool, shades them from their cached fragments and
minimises the MSE to the image colours with Adam (`row_adam.RowAdam` for the vertex
features: only the rows a batch touches are updated, so a step costs O(batch), not
O(scene)).
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
from ..device import resolve_device, synchronize
from ..evaluate import evaluate
from ..model import DNMPRenderer
from ..model.renderer import default_bf16_matmul
from .averaging import ParameterAverage
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint, scene_info
from .config import TrainConfig
from .distributed import (SINGLE, DistContext, GradientSync, broadcast_parameters, check_identical,
                          rank_batch_size, rank_generator)
from .factory import (build_renderer, check_checkpoint_scene, describe_primitives,
                      renderer_from_checkpoint, scene_centres)
from .frame_pool import FramePool
from .interrupt import Interrupted, handle_signals
from .row_adam import RowAdam, row_gradient
from .run import RunFolder, settle_config


def _make_optimizers(renderer: DNMPRenderer, cfg: TrainConfig, sparse_adam: bool = False):
    """{"features": RowAdam (or, with `sparse_adam`, the reference torch.optim.SparseAdam:
    the same update, slower; same state layout) on the vertex features, "mlp": Adam on
    the radiance and background MLPs}; freezes the geometry and sets the MLPs' training
    precision (`cfg.bf16_matmul` where `default_bf16_matmul` allows it)."""
    prims = renderer.primitives
    bf16 = cfg.bf16_matmul and default_bf16_matmul(prims.features.device, prims.features.dtype)
    for mlp in (renderer.field, renderer.background):
        if hasattr(mlp, "bf16_matmul"):
            mlp.bf16_matmul = bf16
    for p in (prims.latents, prims.offsets, *prims.decoder.parameters()):
        p.requires_grad_(False)  # geometry is fixed in the radiance stage
    feat_opt = (torch.optim.SparseAdam if sparse_adam else RowAdam)([prims.features], lr=cfg.lr_features)
    mlp_params = list(renderer.field.parameters()) + list(renderer.background.parameters())
    mlp_opt = torch.optim.Adam(mlp_params, lr=cfg.lr_mlp)
    opts = {"features": feat_opt, "mlp": mlp_opt}
    if renderer.far_field is not None:  # texels: dense Adam at a texture's learning rate
        opts["far_field"] = torch.optim.Adam([renderer.far_field.texels], lr=cfg.lr_far_field)
    return opts


def _set_lr(opts: dict, cfg: TrainConfig, step: int) -> None:
    # Exponential decay to lr_final_factor at the last step. It follows steps only, never
    # the clock, so a run is the same on a busy or an idle machine.
    progress = min(1.0, step / max(1, cfg.steps))
    factor = cfg.lr_final_factor ** progress
    for g in opts["features"].param_groups:
        g["lr"] = cfg.lr_features * factor
    for g in opts["mlp"].param_groups:
        g["lr"] = cfg.lr_mlp * factor
    if "far_field" in opts:
        for g in opts["far_field"].param_groups:
            g["lr"] = cfg.lr_far_field * factor


def radiance_loss_backward(renderer: DNMPRenderer, cache: FramePool, opts: dict, batch_size: int,
                           device: torch.device | None = None, generator: torch.Generator | None = None,
                           total: int | None = None, feature_rows: bool = True) -> torch.Tensor:
    """The gradient half of one radiance step: sample `batch_size` pool pixels, shade them
    from their cached fragments, MSE to their colours, zero the gradients of `opts`'
    parameters and backpropagate. Returns the loss (a 0-d tensor on the model's device).

    Pixels are drawn on `device` (default: the model's) with the global torch RNG, or with
    `generator` (a CPU generator: a data-parallel rank's `rank_generator`) and then moved
    there. With `total` (data-parallel) the loss is this rank's share of the MSE of a batch
    of `total` pixels: sum over its pixels / (total * 3), so the ranks' summed gradients are
    those of one process's batch. `radiance_step` and `dnmp profile --breakdown` both call
    this and `optimizer_step`, so the profile times the code that trains; the named
    ranges are its stages.

    The vertex features' gradient is a sparse COO tensor of the rows the batch touches,
    built from their dense gradient (`shade_rays(sparse_features="rows")`,
    `row_adam.row_gradient`: already coalesced); `feature_rows=False` takes the
    reference path instead (an embedding with a sparse gradient, coalesced by the
    optimizer). Both give the same gradient; either optimizer takes either.
    """
    device = renderer.primitives.features.device if device is None else device
    with record_function("train.batch"):
        if generator is None:
            idx = torch.randint(0, len(cache), (batch_size,), device=device)
        else:  # drawn on the CPU generator of (seed, rank, step): a resume needs no generator state
            idx = torch.randint(0, len(cache), (batch_size,), generator=generator).to(device)
        p2f, bary, dirs, rgb, origins = cache.batch(idx)
    shaded = renderer.shade_rays(p2f, bary, dirs, sparse_features="rows" if feature_rows else True,
                                 ray_origins=origins)
    pred = shaded["rgb"]
    with record_function("train.loss"):
        if total is None:
            loss = torch.mean((pred - rgb) ** 2)
        else:
            loss = torch.sum((pred - rgb) ** 2) / (total * rgb.shape[-1])
    for o in opts.values():
        o.zero_grad(set_to_none=True)
    with record_function("train.backward"):
        loss.backward()
    if feature_rows:
        features = renderer.primitives.features
        rows, attr = shaded["feature_rows"]
        if attr.grad is not None:
            features.grad = row_gradient(features, rows, attr.grad)
    return loss


def _parameter_average(renderer: DNMPRenderer, opts: dict, cfg: TrainConfig) -> ParameterAverage:
    """The tail average of every parameter the optimizers step (`averaging.ParameterAverage`),
    sampled every `cfg.average_every` steps after `cfg.average_from` of `cfg.steps`."""
    stepped = {id(p) for o in opts.values() for g in o.param_groups for p in g["params"]}
    params = {n: p for n, p in renderer.named_parameters() if id(p) in stepped}
    return ParameterAverage(params, int(cfg.average_from * cfg.steps), cfg.average_every)


def optimizer_step(opts: dict) -> None:
    """The update half of one radiance step (RowAdam on features, Adam on the MLPs)."""
    with record_function("train.optimizer"):
        for o in opts.values():
            o.step()


def radiance_step(renderer: DNMPRenderer, cache: FramePool, opts: dict, cfg: TrainConfig, step: int,
                  device: torch.device, before_update=None, share: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One step of the radiance stage: learning rates of `step`, the pool of `step`,
    `cfg.batch_size` random pool pixels drawn on `device`, their colours shaded from the
    cached fragments, MSE, backward (`radiance_loss_backward`), then (after calling
    `before_update(loss)`, if given) the optimizers' steps (`optimizer_step`).

    Data-parallel (`train.distributed`): with `share`, this rank draws `share` pixels with
    `generator` (a CPU generator, `rank_generator`) and its loss is its share of the whole
    batch's MSE, so that the ranks' summed gradients (`GradientSync`, called by
    `before_update`) are those of one process's batch.

    Returns the loss, a detached float32 0-dim tensor on `device`. Makes no host round
    trip of its own (no .item(), .tolist(), .cpu(); tensors made on `device`): checked by
    tests/train/test_device.py. The syncs it keeps are those of data-dependent shapes
    (the faces and vertices hit, the `nonzero` of the covered fragments) in `shade_rays`, and,
    once every `cfg.cache_rotate_every` steps of a rotating pool, the rasterization of the
    frame that enters it.
    """
    _set_lr(opts, cfg, step)
    cache.sync(step)
    loss = radiance_loss_backward(renderer, cache, opts, cfg.batch_size if share is None else share,
                                  device, generator, None if share is None else cfg.batch_size)
    if before_update is not None:
        before_update(loss)
    optimizer_step(opts)
    return loss.detach()


def train_radiance(scene: Scene, out_dir: str | Path, cfg: TrainConfig | None, resume: bool = False,
                   progress: bool = True, log=print, steps: int | None = None,
                   renderer: DNMPRenderer | None = None, budget_seconds: float | None = None,
                   extra_metrics: dict | None = None, held_out: bool = True,
                   device: str | None = None, dist: DistContext | None = None) -> dict:
    """Run the radiance stage on `scene`, writing checkpoints, held-out renders and metrics.

    `held_out=False` skips rendering and scoring the test frames (a block of a long
    drive: the run scores them with the blended blocks).

    Output folder layout: OUT/checkpoints/step_*.pt, OUT/metrics.json,
    OUT/renders/test/<frame>_pred.png and <frame>_gt.png, OUT/config.json (the
    settings used).

    With `resume`, the settings are the checkpoint's (`cfg` must be None) except
    `steps`, which may extend or shorten the run, and `device`.

    `device` ("auto", "cpu", "cuda[:N]"; None: the config's) is where the model, the
    cached fragments, the optimizer state and every step live; a checkpoint made on
    another device loads onto it. A step makes no host round trip: the loss is read
    back (one sync) every `cfg.log_every` steps and before each save, where a NaN/Inf
    loss raises FloatingPointError naming the steps since the last check.

    The saved and scored model is the tail average of the trained parameters
    (`cfg.average_from`, `cfg.average_every`; `averaging.ParameterAverage`): each checkpoint's
    `model` holds the mean so far (the raw parameters before the first sample) and its
    `parameter_average` the raw parameters that `resume` continues from; metrics
    `parameter_average_samples` counts the samples.

    `renderer` is the model to start from (e.g. after the geometry stage; default:
    template primitives on the scene's points), `budget_seconds` overrides the
    loop's time budget (`cfg.time_budget_minutes`), and `extra_metrics` are merged
    into metrics.json (e.g. the geometry stage's figures).

    `dist` (`train.distributed`; None: one process) with several ranks trains data-parallel:
    every rank starts from rank 0's parameters, shades its share of `cfg.batch_size` rays
    (drawn with `rank_generator(seed, rank, step)`), and `GradientSync` sums the gradients,
    so all ranks take the same steps as one process with the whole batch. A signal or the
    time budget seen by any rank stops every rank after the same step. Only rank 0 writes
    files; the ranks' parameter checksums are compared at the end (metrics `rank_checksums`;
    RuntimeError if they differ). metrics `loss_curve`: [step, mean loss over the last
    `log_every` steps] (in the data-parallel mode the loss of the whole batch).

    Raises:
        CheckpointError: `resume` with a checkpoint of another scene or a corrupt one.
        FileExistsError: OUT already holds checkpoints and `resume` is False.
        ValueError: a scene without train frames or points; data-parallel with fewer rays
            per step than ranks; `resume` with `steps` below the checkpoint's step.
    SIGINT / SIGTERM (`interrupt.handle_signals`): the loop stops at the next step
    boundary, saves that step, logs "stopped by SIG... at step N" and exits with
    SystemExit(130 / 143); a second signal aborts at once (Interrupted, nothing saved).
    Stale `.tmp_*` files of a killed save are removed at the start.
    """
    t_enter = time.time()  # for time_to_first_step_s: setup, caching and the first step
    dist = dist or SINGLE
    dp = dist.active  # data-parallel: the ranks share every step
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
        cfg = settle_config(cfg, steps, ckpt["config"], str(path), device)
        start_step = ckpt["step"]
        if cfg.steps < start_step:  # nothing to train, and config.json would say fewer steps than done
            raise ValueError(f"{path}: the run is at step {start_step}, past --steps {cfg.steps}; "
                             f"resume with --steps {start_step} or more")
        log(f"resuming from {path} (step {start_step})")
    else:
        run.refuse_earlier_run()
        cfg = settle_config(cfg, steps, device=device)
    dev = resolve_device(cfg.device, "device")
    if dp and cfg.batch_size < dist.world_size:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be at least the number of processes "
                         f"({dist.world_size}) to train data-parallel")
    train_frames = scene.frames_by_split("train")
    if not train_frames:
        raise ValueError(f"{scene.root}: scene has no 'train' frames")
    if not scene.frames_by_split("test"):
        log(f"warning: {scene.root} has no 'test' frames: no held-out renders or metrics")
    torch.manual_seed(cfg.seed)
    if ckpt:
        renderer = renderer_from_checkpoint(ckpt, dev)
        extra_metrics = {**ckpt.get("extra_metrics", {}), **(extra_metrics or {})}
    elif renderer is None:
        renderer = build_renderer(scene_centres(scene, cfg), cfg).to(dev)
    else:
        renderer = renderer.to(dev)
    renderer.refresh_geometry()
    extra_metrics = extra_metrics or {}
    prims = renderer.primitives
    log(f"scene {scene.name!r}: {len(train_frames)} train / {len(scene.frames_by_split('test'))} "
        f"test frames; {describe_primitives(renderer)}; device {dev}")
    opts = _make_optimizers(renderer, cfg)
    average = _parameter_average(renderer, opts, cfg)
    if ckpt:
        for name, opt in opts.items():
            opt.load_state_dict(ckpt["optimizer"][name])  # moves the moments to the parameters' device
        try:  # the checkpoint's model is the average: the raw parameters come back from its state
            average.load_state_dict(ckpt.get("parameter_average"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{ckpt.get('path')}: corrupt parameter average ({exc})") from None
        torch.set_rng_state(ckpt["rng"])
        if dev.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], dev)  # batches are drawn on the GPU
    sync, share = None, None
    if dp:
        broadcast_parameters(renderer, dist)  # the same start on every rank, bit for bit
        dense = [p for name in ("mlp", "far_field") if name in opts for p in opts[name].param_groups[0]["params"]]
        sync = GradientSync(dense, prims.features, dist)
        share = rank_batch_size(cfg.batch_size, dist.rank, dist.world_size)
        log(f"data-parallel over {dist.world_size} processes: {share} of {cfg.batch_size} rays "
            f"per step on this rank")
    out.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
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

    checked = start_step  # the loss is known finite up to this step

    def check_loss(step: int) -> float | None:
        """The running loss (one device sync); FloatingPointError if a loss since the
        last check was NaN/Inf (the running mean then stays non-finite)."""
        nonlocal checked
        if running is None:
            return None
        lv = float(running)
        if not math.isfinite(lv):
            raise FloatingPointError(f"loss became {lv} at a step in {checked + 1}..{step}; last "
                                     f"checkpoint ({latest_checkpoint(ckpt_dir)}) is kept")
        checked = step
        return lv

    def save(step: int) -> Path | None:
        nonlocal saving
        check_loss(step)  # never save a model that a NaN/Inf loss has updated
        if not dist.is_main:  # rank 0 saves the model that every rank holds
            return None
        saving = step
        model = renderer.state_dict()
        model.update(average.averaged())  # the model to render; the raw parameters ride along
        path = save_checkpoint(ckpt_dir, step, {
            "config": cfg.to_dict(),
            "device": str(dev),
            "model": model,
            "parameter_average": average.state_dict(),
            "optimizer": {k: o.state_dict() for k, o in opts.items()},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
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
    running = None  # float64 tensor on `dev`: exponential mean of the loss, read at log steps
    curve, window, window_n = [], None, 0  # loss_curve: (step, mean loss of the last log_every steps)
    agreed_stop = False  # data-parallel: some rank got a signal; all stop after this step
    updating = False  # True while parameters are being changed: no consistent state to save
    batch_loss = None  # data-parallel: the whole batch's loss (a float, from the all-reduce)

    def before_update(loss: torch.Tensor) -> None:
        nonlocal updating, agreed_stop, stopped_by_time_limit, batch_loss
        if dp:  # sum the gradients; also agree on stopping: ranks leave after the same step
            over = budget > 0 and time.time() - t_loop > budget
            batch_loss, (n_stop, n_over) = sync(loss, [float(stop.requested), float(over)])
            agreed_stop, stopped_by_time_limit = n_stop > 0, n_over > 0
        updating = True
    with handle_signals(defer=True, notice="stopping at the end of the current step to save it") as stop:
        try:
            while step < cfg.steps and not (agreed_stop if dp else stop.requested):
                if not dp and budget > 0 and time.time() - t_loop > budget:
                    stopped_by_time_limit = True
                    break
                loss = radiance_step(renderer, cache, opts, cfg, step, dev, before_update, share,
                                     rank_generator(cfg.seed, dist.rank, step) if dp else None)
                step += 1
                average.update(step)
                updating = False
                if first_step_s is None:
                    synchronize(dev)  # once: the figure is the time until the first step is done
                    first_step_s = time.time() - t_enter
                # no .item() here: reading the loss every step would stall a GPU queue; a
                # NaN/Inf keeps the mean non-finite until check_loss sees it
                lv = torch.tensor(batch_loss, dtype=torch.float64, device=dev) if dp else loss.double()
                running = lv if running is None else 0.95 * running + 0.05 * lv
                window, window_n = (lv if window is None else window + lv), window_n + 1
                bar.update(1)
                if step % cfg.log_every == 0:
                    mean = check_loss(step)
                    curve.append((step, window / window_n))  # read once, at the end
                    window, window_n = None, 0
                    bar.set_postfix(loss=f"{mean:.4f}", psnr=f"{-10 * math.log10(mean):.2f}")
                if step % cfg.checkpoint_every == 0:
                    save(step)
                    last_saved = step
                if stopped_by_time_limit:  # data-parallel: agreed in the step's all-reduce
                    break
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
    if agreed_stop if dp else stop.requested:  # (a signal after the last step's all-reduce: the run ends)
        who = stop.name if stop.requested else "a signal to another rank"
        saved = latest_checkpoint(ckpt_dir) if dist.is_main else "rank 0's checkpoint of it"
        log(f"stopped by {who} at step {step}; saved {saved}; continue with --resume")
        raise SystemExit(stop.exit_code if stop.requested else 143)
    train_s = prior_seconds + time.time() - t_loop

    average.apply()  # the model that is scored (and that the last checkpoint holds)
    checksums = check_identical(renderer, dist) if dp else None  # of that model, on every rank
    final = torch.stack([running.reshape(())] + [v for _, v in curve]).tolist() if running is not None else [None]
    curve = [[s, v] for (s, _), v in zip(curve, final[1:])]
    held_out = held_out and bool(scene.frames_by_split("test")) and dist.is_main
    if average.count and dist.is_main:
        log(f"the saved model is the mean of {average.count} samples of the parameters (every "
            f"{average.every} steps from step {average.first}; average_from)")
    elif cfg.average_from < 1 and step > 0 and dist.is_main:
        log(f"note: no parameter sample was taken (average_every = {average.every} after step "
            f"{average.start} of {step}): the saved model is the last step's parameters")
    if held_out:
        log("rendering held-out frames ...")
    result = {"step": step, "train_seconds": round(train_s, 1),
              "time_to_first_step_s": None if first_step_s is None else round(first_step_s, 1),
              "stopped_by_time_limit": stopped_by_time_limit,
              "train_psnr_running": None if running is None else -10 * math.log10(final[0]),
              "device": str(dev),
              "num_primitives": prims.num_primitives, "num_faces": prims.num_faces,
              "parameter_average_samples": average.count,
              "train_pixel_coverage": cache.coverage, "cache_frames": cache.size,
              "cache_mib": round(cache.nbytes / 2**20, 1), "loss_curve": curve, **extra_metrics}
    if dp:
        result.update({"processes": dist.world_size, "rank_checksums": checksums})
    # The last step is saved: free the cached fragments and the Adam moments before
    # rendering, so the held-out renders do not add to the training peak memory.
    del cache
    opts.clear()
    gc.collect()
    if held_out:
        result.update(evaluate(renderer, scene, "test", out / "renders" / "test", progress))
    if dist.is_main:
        write_json_atomic(out / "metrics.json", result)
    return result

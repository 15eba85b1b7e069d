"""Throughput and memory figures of the renderer (`dnmp profile`)."""

from __future__ import annotations

import os
import statistics
import time

import torch

from .device import freed_memory_kept, resolve_device

from .model import DNMPRenderer


def peak_memory_mb(fn) -> float | None:
    """Peak memory (MiB) allocated by torch on the CPU while `fn()` runs, from the torch
    profiler's memory timeline (allocations minus frees, all tensor categories). None
    if the profiler's memory timeline is unavailable in this torch version."""
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                     record_shapes=True, with_stack=True) as prof:
            fn()
        timeline = MemoryProfileTimeline(prof._memory_profile())
        _, sizes = timeline._coalesce_timeline(torch.device("cpu"))
        if not sizes:
            return 0.0
        return max(sum(s) for s in sizes) / 2**20
    except Exception:  # private API: degrade to "unknown", never a wrong number
        return None


def _timer(device: torch.device):
    """A function fn -> milliseconds of one call: wall clock on the CPU, CUDA events (with a
    synchronisation after the call) on a GPU, so asynchronous launches are not mistaken for
    finished work."""
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end)
        return run

    def run(fn):
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return run


def _peak_memory(device: torch.device, fn) -> float | None:
    """Peak MiB allocated by torch while fn() runs: `torch.cuda.max_memory_allocated` on a
    GPU (above what was allocated before), the profiler's memory timeline on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if device.type != "cpu":
        return None  # no allocator figure for this device: unknown, not a CPU figure
    return peak_memory_mb(fn)


# Named ranges (torch.profiler.record_function) around the stages of a render and of a
# training step, in the code that runs them (model/renderer.py, model/field.py,
# train/radiance.py); the breakdown reads their times from the profiler, so it cannot
# drift from what renders and trains. Top-level ranges only: none of these nests in another.
RENDER_STAGES = ("render.rasterize.scale0", "render.rasterize.scale1", "shade.interpolate",
                 "shade.encoding", "shade.mlp_trunk", "shade.mlp_heads", "shade.composite",
                 "shade.fused", "shade.background_fused", "shade.background", "shade.far_field")
TRAIN_STAGES = ("train.batch", "shade.feature_lookup", "shade.interpolate", "shade.encoding",
                "shade.mlp_trunk", "shade.mlp_heads", "shade.background", "shade.far_field",
                "shade.composite",
                "train.loss", "train.backward", "train.optimizer")


def stage_times(fn, stages: tuple[str, ...], repeats: int = 3) -> dict:
    """Milliseconds per call of fn spent in each named range of `stages` (summed over the
    range's calls, averaged over `repeats` calls of fn under torch.profiler), plus "other"
    (the rest of the wall time: Python, indexing, the early-exit bookkeeping) and "total".
    The profiler's own overhead inflates every stage a little; read shares, not absolutes.
    On a GPU the ranges time the host side (launches), so the device is synchronised per call."""
    from torch.profiler import ProfilerActivity, profile

    totals = dict.fromkeys(stages, 0.0)
    wall = 0.0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall += time.perf_counter() - t
    for ev in prof.key_averages():
        if ev.key in totals:
            totals[ev.key] += ev.cpu_time_total / 1e3
    out = {k: v / repeats for k, v in totals.items() if v > 0}
    out["total"] = wall * 1e3 / repeats
    out["other"] = max(0.0, out["total"] - sum(v for k, v in out.items() if k != "total"))
    return out


def profile_renderer(renderer: DNMPRenderer, intrinsics: torch.Tensor, cam_to_world: torch.Tensor,
                     height: int, width: int, repeats: int = 5, warmup: int = 1,
                     memory: bool = True, breakdown: bool = False) -> dict:
    """Time rasterization alone and the full render of one camera, on the device of the
    renderer's tensors (wall clock on the CPU, CUDA events on a GPU).

    Figures (median over `repeats` runs after `warmup` runs, this process's threads):
        raster_ms_per_kpx: `dnmp.ops.rasterize` of all primitives (each scale with its
            own faces_per_pixel, layers concatenated), in milliseconds per 1000 pixels.
        raster_ms_per_kpx_by_scale: the same for each scale alone (fine first).
        render_ms_per_kpx: rasterize + interpolate + radiance MLP + compositing + background
            for every pixel, same unit; with the fused shading op where available
            (`shading` says "fused" or "torch").
        render_reference_ms_per_kpx: the same render with the torch reference shading
            (`shade_rays_early_exit`), timed interleaved with the fused one (None when the
            fused op is unavailable); fused_vs_reference_psnr_db: PSNR of the fused image
            against the reference image; bf16_matmul: whether the fused ops ran their MLPs
            with bfloat16 operands (`RenderConfig.bf16_matmul`).
        peak_memory_mb_per_kpx: peak torch memory allocated during one full render,
            MiB per 1000 pixels (None if unmeasurable).
        With `breakdown`: render_breakdown_ms (and render_reference_breakdown_ms), ms of one
            render per stage (`stage_times`, RENDER_STAGES).
    """
    device = renderer.primitives.features.device
    kpx = height * width / 1000.0
    cam_to_world = cam_to_world.to(device)
    w2c = torch.linalg.inv(cam_to_world.double()).float()
    intrinsics = intrinsics.float().to(device)
    renderer.geometry()  # decode once; geometry is fixed, like in training
    fused = renderer.fused_shading_available(device)
    clock = _timer(device)

    def raster():
        return renderer.rasterize(intrinsics, w2c, (height, width))

    def full(use_fused=fused):
        return renderer.render(intrinsics, cam_to_world, height, width, fused=use_fused)

    def timed(*fns):
        """Medians of fns, run interleaved (A B A B ...) so that a load change hits all alike."""
        for _ in range(warmup):
            for fn in fns:
                fn()
        times = [[] for _ in fns]
        for _ in range(repeats):
            for fn, ts in zip(fns, times):
                ts.append(clock(fn))
        return [(statistics.median(ts), ts) for ts in times]

    (r_med, r_all), = timed(raster)
    by_scale = [timed(lambda s=s: renderer.rasterize_scale(s, intrinsics, w2c, (height, width)))[0][0] / kpx
                for s in range(len(renderer.primitives.scale_ranges()))]
    ref = None
    if fused:
        (f_med, f_all), ref = timed(full, lambda: full(False))
        from .metrics import psnr

        ref_psnr = psnr(full()["rgb"], full(False)["rgb"])
    else:
        (f_med, f_all), = timed(full)
    peak = _peak_memory(device, full) if memory else None
    extra = {}
    if breakdown:
        extra["render_breakdown_ms"] = stage_times(full, RENDER_STAGES)
        if fused:
            extra["render_reference_breakdown_ms"] = stage_times(lambda: full(False), RENDER_STAGES)
    return {**extra,
        "shading": "fused" if fused else "torch", "device": str(device),
        "bf16_matmul": fused and renderer.bf16_matmul(device),
        "render_reference_ms_per_kpx": None if ref is None else ref[0] / kpx,
        "render_reference_ms_runs": None if ref is None else [round(x, 2) for x in ref[1]],
        "fused_vs_reference_psnr_db": None if ref is None else ref_psnr,
        "height": height, "width": width, "pixels": height * width,
        "faces_per_pixel": renderer.config.faces_per_pixel,
        "num_primitives": renderer.primitives.num_primitives,
        "num_faces": renderer.primitives.num_faces,
        "repeats": repeats, "threads": torch.get_num_threads(),
        "raster_ms_per_kpx": r_med / kpx,
        "raster_ms_per_kpx_by_scale": by_scale,
        "render_ms_per_kpx": f_med / kpx,
        "raster_ms": r_med, "render_ms": f_med,
        "raster_ms_runs": [round(x, 2) for x in r_all],
        "render_ms_runs": [round(x, 2) for x in f_all],
        "peak_memory_mb_per_kpx": None if peak is None else peak / kpx,
        "peak_memory_mb": peak,
    }


def profile_geometry(renderer: DNMPRenderer, scene, cfg, repeats: int = 10, warmup: int = 2,
                     memory: bool = True) -> dict:
    """Time the geometry stage (paper Sec. 3.2) on a copy of `renderer` (the model
    passed in is not changed).

    Figures:
        geometry_step_ms: median wall time of one step (`cfg.geometry_windows` windows
            of `cfg.geometry_window`^2 pixels per scale: decode the primitives seen,
            rasterize, L1 + regularisers, backward, SparseAdam), after `warmup` steps.
        geometry_refresh_ms: one visibility refresh (all training frames, every
            `cfg.geometry_refresh_every` steps).
        geometry_step_peak_memory_mb: peak torch CPU memory of one step (None if
            unmeasurable).
    """
    import copy

    from .train.geometry import GeometryFitter

    fitter = GeometryFitter(copy.deepcopy(renderer), scene, cfg)
    t = time.perf_counter()
    fitter.refresh()
    refresh_ms = (time.perf_counter() - t) * 1e3
    for _ in range(warmup):
        fitter.step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fitter.step()
        times.append((time.perf_counter() - t) * 1e3)
    peak = _peak_memory(fitter.prims.centres.device, fitter.step) if memory else None
    return {"geometry_step_ms": statistics.median(times),
            "geometry_step_ms_runs": [round(x, 1) for x in times],
            "geometry_refresh_ms": refresh_ms,
            "geometry_refresh_every": cfg.geometry_refresh_every,
            "geometry_windows": cfg.geometry_windows, "geometry_window": cfg.geometry_window,
            "geometry_step_peak_memory_mb": peak}


def profile_training(renderer: DNMPRenderer, scene, cfg, repeats: int = 10, warmup: int = 2,
                     breakdown: bool = False) -> dict:
    """Time radiance-stage training steps (`train.radiance.radiance_loss_backward` +
    `optimizer_step`, the loop's own code) on a copy of `renderer`, with the fragments of
    the scene's training frames cached as in training (`FramePool`, `cfg.cache_pixels`).

    Figures: train_step_ms (median of `repeats` steps of `cfg.batch_size` rays after
    `warmup`), train_steps_per_s (1000 / train_step_ms), train_batch_size; with `breakdown`,
    train_breakdown_ms: ms of one step per stage (`stage_times`, TRAIN_STAGES; the backward
    pass is one stage). The global torch RNG is saved and restored.
    """
    import copy

    from .train.frame_pool import FramePool
    from .train.radiance import _make_optimizers, optimizer_step, radiance_loss_backward

    model = copy.deepcopy(renderer)
    model.refresh_geometry()
    device = model.primitives.features.device
    clock = _timer(device)
    rng = torch.get_rng_state()
    try:
        torch.manual_seed(cfg.seed)
        pool = FramePool(model, scene, scene.frames_by_split("train"), cfg.cache_pixels,
                         cfg.cache_rotate_every, seed=cfg.seed, progress=False)
        pool.sync(0)
        opts = _make_optimizers(model, cfg)

        def step():
            radiance_loss_backward(model, pool, opts, cfg.batch_size)
            optimizer_step(opts)

        for _ in range(warmup):
            step()
        times = [clock(step) for _ in range(repeats)]
        out = {"train_step_ms": statistics.median(times), "train_steps_per_s": 1e3 / statistics.median(times),
               "train_step_ms_runs": [round(x, 1) for x in times], "train_batch_size": cfg.batch_size}
        if breakdown:
            out["train_breakdown_ms"] = stage_times(step, TRAIN_STAGES)
        return out
    finally:
        torch.set_rng_state(rng)


def profile_run(checkpoint: str | None, scene: str | None, config: str | None = None,
                faces_per_pixel: int | None = None, repeats: int = 5, memory: bool = True,
                geometry: bool = False, breakdown: bool = False, device=None) -> dict:
    """`dnmp profile`: `profile_renderer` (and with `geometry`, `profile_geometry`, same
    `repeats`; with `breakdown`, the stage times and `profile_training`) on the first test
    frame of the scene.

    Args:
        checkpoint: a checkpoint or run folder (`train.run.open_run`); None builds an
            untrained model from `config` (TOML path or None for the defaults) on `scene`
            (rendering cost does not depend on the weights).
        scene: the scene folder (with a checkpoint: only when it moved since training).
        faces_per_pixel: overrides the fine scale's faces per pixel.
        device: where the model runs (a torch.device or "auto" / "cpu" / "cuda[:N]";
            None: the CPU).
    Returns:
        the figures of both functions plus scene, frame, width, height, model (what was
        timed), backend (`dnmp.ops.backend()`), omp_wait_policy and malloc ("kept" when
        `dnmp.device.keep_freed_memory` is in effect, as in every command; else "system").
    Raises: as `open_run`, `load_scene`, `load_config`.
    """
    from .data.scene import load_scene
    from .ops import backend
    from .train.config import TrainConfig, load_config

    if checkpoint:
        from .train.run import open_run

        run = open_run(checkpoint, scene, device)
        scene_obj, cfg, source = run.scene, TrainConfig.from_dict(run.config, run.source), str(checkpoint)
    else:
        from .train.factory import build_renderer, scene_centres

        scene_obj, cfg = load_scene(scene), load_config(config)
        renderer = build_renderer(scene_centres(scene_obj, cfg), cfg)
        if device is not None:
            renderer = renderer.to(resolve_device(device))
        source = "untrained model with default config (timing does not depend on weights)"
    frame = (scene_obj.frames_by_split("test") or scene_obj.frames)[0]
    if checkpoint:
        renderer = run.model_for(frame)  # a block run: the block that renders this frame
        if run.blocks > 1:
            source = f"{checkpoint} (the block that renders frame {frame.name}, of {run.blocks})"
    if faces_per_pixel:  # after the renderer is chosen
        renderer.config.faces_per_pixel = faces_per_pixel
    cam = scene_obj.camera_of(frame)
    res = profile_renderer(renderer, cam.intrinsics(as_tensor=True), torch.from_numpy(frame.cam_to_world),
                           cam.height, cam.width, repeats=repeats, memory=memory, breakdown=breakdown)
    res.update({"scene": scene_obj.name, "frame": frame.name, "model": source, "backend": backend(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                "malloc": "kept" if freed_memory_kept() else "system"})
    if geometry:
        res.update(profile_geometry(renderer, scene_obj, cfg, repeats=repeats, memory=memory))
    if breakdown:
        res.update(profile_training(renderer, scene_obj, cfg, repeats=repeats, breakdown=True))
    return res

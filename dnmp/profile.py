"""Throughput and memory figures of the renderer (`dnmp profile`)."""

from __future__ import annotations

import os
import statistics
import time

import torch

from .device import resolve_device, synchronize
from .model import DNMPRenderer


def peak_memory_mb(fn, device: torch.device = torch.device("cpu")) -> float | None:
    """Peak memory (MiB) allocated by torch on `device` while `fn()` runs: on the CPU from
    the torch profiler's memory timeline (allocations minus frees, all tensor categories;
    None if that timeline is unavailable in this torch version), on a GPU the CUDA
    allocator's peak above what was allocated before."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if device.type != "cpu":
        return None
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


def profile_renderer(renderer: DNMPRenderer, intrinsics: torch.Tensor, cam_to_world: torch.Tensor,
                     height: int, width: int, repeats: int = 5, warmup: int = 1,
                     memory: bool = True) -> dict:
    """Time rasterization alone and the full render of one camera.

    Figures (median over `repeats` runs after `warmup` runs, wall clock, this process's threads):
        raster_ms_per_kpx: `dnmp.ops.rasterize` of all primitives (each scale with its
            own faces_per_pixel, layers concatenated), in milliseconds per 1000 pixels.
        raster_ms_per_kpx_by_scale: the same for each scale alone (fine first).
        render_ms_per_kpx: rasterize + interpolate + radiance MLP + compositing + background
            for every pixel, same unit.
        peak_memory_mb_per_kpx: peak torch CPU memory allocated during one full render,
            MiB per 1000 pixels (None if unmeasurable).
    """
    kpx = height * width / 1000.0
    dev = renderer.primitives.centres.device
    cam_to_world = cam_to_world.to(dev)
    w2c = torch.linalg.inv(cam_to_world.double()).float()
    intrinsics = intrinsics.float().to(dev)
    renderer.geometry()  # decode once; geometry is fixed, like in training

    def raster():
        return renderer.rasterize(intrinsics, w2c, (height, width))

    def full():
        return renderer.render(intrinsics, cam_to_world, height, width)

    def timed(fn):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            synchronize(dev)  # CUDA runs asynchronously: time the work, not its queueing
            t = time.perf_counter()
            fn()
            synchronize(dev)
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times), times

    r_med, r_all = timed(raster)
    by_scale = [timed(lambda s=s: renderer.rasterize_scale(s, intrinsics, w2c, (height, width)))[0] / kpx
                for s in range(len(renderer.primitives.scale_ranges()))]
    f_med, f_all = timed(full)
    peak = peak_memory_mb(full, dev) if memory else None
    return {
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
    synchronize(fitter.prims.centres.device)  # step() returns a float: it waits by itself
    refresh_ms = (time.perf_counter() - t) * 1e3
    for _ in range(warmup):
        fitter.step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fitter.step()
        times.append((time.perf_counter() - t) * 1e3)
    peak = peak_memory_mb(fitter.step, fitter.prims.centres.device) if memory else None
    return {"geometry_step_ms": statistics.median(times),
            "geometry_step_ms_runs": [round(x, 1) for x in times],
            "geometry_refresh_ms": refresh_ms,
            "geometry_refresh_every": cfg.geometry_refresh_every,
            "geometry_windows": cfg.geometry_windows, "geometry_window": cfg.geometry_window,
            "geometry_step_peak_memory_mb": peak}


def profile_run(checkpoint: str | None, scene: str | None, config: str | None = None,
                faces_per_pixel: int | None = None, repeats: int = 5, memory: bool = True,
                geometry: bool = False, device=None) -> dict:
    """`dnmp profile`: `profile_renderer` (and with `geometry`, `profile_geometry`, same
    `repeats`) on the first test frame of the scene.

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
        timed), backend (`dnmp.ops.backend()`) and omp_wait_policy.
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
                           cam.height, cam.width, repeats=repeats, memory=memory)
    res.update({"scene": scene_obj.name, "frame": frame.name, "model": source, "backend": backend(),
                "device": str(renderer.primitives.centres.device),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")})
    if geometry:
        res.update(profile_geometry(renderer, scene_obj, cfg, repeats=repeats, memory=memory))
    return res

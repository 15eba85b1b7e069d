"""The `dnmp` command line: train, render, eval, profile, convert.

Every command prints a one-line `dnmp: error: ...` (exit code 2) for bad input
(a folder that is not a scene, a missing or corrupt image, an unknown scene
version, a checkpoint of another scene...). Set DNMP_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_SCENE_NAME = "kitti00"


def bundled_scene() -> Path:
    """The sample drive shipped in the repository's `scenes/` (or $DNMP_SCENE)."""
    env = os.environ.get("DNMP_SCENE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "scenes" / DEFAULT_SCENE_NAME


def cmd_train(args) -> int:
    from .train.distributed import DistContext, env_context
    from .train.pipeline import train_scene

    result, out = train_scene(args.scene or bundled_scene(), args.out, args.config, args.stages,
                              args.resume, args.steps, progress=not args.quiet,
                              warn=lambda line: print(line, file=sys.stderr), device=args.device,
                              data_parallel=args.data_parallel)
    if not (env_context() or DistContext()).is_main:
        return 0  # torchrun: rank 0 prints the run's summary
    summary = {k: result[k] for k in ("step", "num_blocks", "test_psnr", "test_ssim", "test_lpips",
                                       "num_test_frames", "train_seconds") if k in result}
    geo = result.get("geometry", {})
    for name in ("test_depth_template", "test_depth_optimized"):
        if geo.get(name):
            summary[f"{name}_median_m"] = geo[name]["median_m"]
    print(json.dumps(summary))
    renders = out / "renders" / "test"
    where = (f"blocks in {out / 'blocks'} (listed in {out / 'manifest.json'})" if "num_blocks" in result
             else f"checkpoints in {out / 'checkpoints'}")
    print(f"wrote {out / 'metrics.json'}, {where}"
          + (f", held-out renders in {renders}" if renders.is_dir() else ""))
    return 0


def cmd_render(args) -> int:
    from .trajectory import lane_offset, parse_offset, parse_trajectory
    from .train.run import open_run
    from .views import render_trajectory

    device = _device(args)
    kind, file = parse_trajectory(args.trajectory)  # bad options fail before the model loads
    offset = lane_offset(parse_offset(args.offset), args.lane_shift, args.lift)
    res = render_trajectory(open_run(args.checkpoint, args.scene, device), kind, file, out=args.out, split=args.split,
                            offset=offset,
                            rig_camera=args.rig_camera, camera=args.camera, fps=args.fps,
                            speed=args.speed, frames=args.frames, downscale=args.downscale,
                            video=args.video, depth=args.depth, coverage=args.coverage,
                            depth_format=args.depth_format, depth_range=(1.0, args.depth_max),
                            progress=not args.quiet)
    print(f"wrote {res['views']} views ({res['images']} images) to {res['out']}")
    for v in res["videos"]:
        print(f"wrote {v['path']} ({v['frames']} frames, {res['fps']:g} fps)")
    return 0


def cmd_view(args) -> int:
    from .train.run import open_run
    from .viewer import serve

    serve(open_run(args.checkpoint, args.scene, _device(args)), host=args.host, port=args.port, preview_pixels=args.preview_pixels,
          max_height=args.max_height, path_file=args.path_file, ready=lambda line: print(line, flush=True))
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_run

    result, path = evaluate_run(args.checkpoint, args.scene, args.out, not args.no_images,
                                device=_device(args))
    print(json.dumps({k: result[k] for k in ("test_psnr", "test_ssim", "test_lpips",
                                             "num_test_frames")}))
    if "lpips_note" in result:
        print(f"test_lpips is null: {result['lpips_note']}")
    print(f"wrote {path}")
    return 0


def cmd_profile(args) -> int:
    from .profile import profile_run

    scene = args.scene or (None if args.checkpoint else bundled_scene())
    res = profile_run(args.checkpoint, scene, args.config, args.faces_per_pixel, args.repeats,
                      memory=not args.no_memory, geometry=args.geometry, breakdown=args.breakdown,
                      device=_device(args))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    mem = res["peak_memory_mb_per_kpx"]
    print(f"scene {res['scene']}: {res['num_primitives']} primitives, {res['num_faces']} faces; "
          f"frame {res['frame']} {res['width']}x{res['height']}, faces_per_pixel "
          f"{res['faces_per_pixel']} (fine scale), {res['threads']} threads "
          f"(OMP_WAIT_POLICY={res['omp_wait_policy']}), malloc {res['malloc']}, backend {res['backend']}, "
          f"device {res['device']}")
    print(f"  rasterization : {res['raster_ms_per_kpx']:.3f} ms / 1k px ({res['raster_ms']:.1f} ms); "
          "by scale " + ", ".join(f"{x:.3f}" for x in res["raster_ms_per_kpx_by_scale"]))
    print(f"  full render   : {res['render_ms_per_kpx']:.3f} ms / 1k px ({res['render_ms']:.1f} ms), "
          f"{res['shading']} shading" + (", MLPs on bf16 operands" if res.get("bf16_matmul") else ""))
    if res["render_reference_ms_per_kpx"] is not None:
        print(f"  torch shading : {res['render_reference_ms_per_kpx']:.3f} ms / 1k px (reference path, "
              f"timed interleaved); fused vs reference image {res['fused_vs_reference_psnr_db']:.1f} dB PSNR")
    print("  peak memory   : " + ("unmeasured" if mem is None else f"{mem:.3f} MiB / 1k px"))
    if args.geometry:
        gm = res["geometry_step_peak_memory_mb"]
        print(f"  geometry step : {res['geometry_step_ms']:.1f} ms ({res['geometry_windows']} windows "
              f"of {res['geometry_window']}^2 px per scale), peak memory "
              + ("unmeasured" if gm is None else f"{gm:.1f} MiB")
              + f"; visibility refresh {res['geometry_refresh_ms']:.0f} ms every "
              f"{res['geometry_refresh_every']} steps")
    if args.breakdown:
        for key, what in (("render_breakdown_ms", "render"), ("render_reference_breakdown_ms", "render, torch shading"),
                          ("train_breakdown_ms", f"training step of {res['train_batch_size']} rays")):
            if key in res:
                b = res[key]
                print(f"  {what} ({b['total']:.1f} ms under the profiler): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in b.items() if k != "total"))
        print(f"  training      : {res['train_step_ms']:.1f} ms / step ({res['train_steps_per_s']:.2f} steps/s)")
    return 0


def cmd_coverage(args) -> int:
    from .coverage import primitive_coverage

    result = primitive_coverage(args.scene or bundled_scene(), args.split, args.voxel_size,
                                device=_device(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['scene']}: fraction of {args.split} pixels covered by primitives "
          f"(voxel {args.voxel_size} m); the rest is background")
    for name, r in result["coverage"].items():
        print(f"  {name:<16s} {r['primitives']:7d} primitives  {100 * r['covered_fraction']:5.1f}%")
    return 0


def cmd_export_mesh(args) -> int:
    from .export import export_run_meshes

    scales = None if args.scale == "all" else [{"fine": 0, "coarse": 1}[args.scale]]
    for info in export_run_meshes(args.checkpoint, args.out, args.colour, scales, args.scene,
                                  device=_device(args)):
        where = f"block {info['block']}" if info["block"] else f"from {info['checkpoint']}"
        print(f"wrote {info['path']}: {info['primitives']} primitives, {info['vertices']} vertices, "
              f"{info['faces']} faces (scene frame, metres; {where})")
    return 0


def cmd_convert(args) -> int:
    from .converters import main

    return main(args.format, args.converter_args)


def cmd_train_autoencoder(args) -> int:
    from .train.autoencoder import AutoencoderConfig, train_autoencoder

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = AutoencoderConfig(seed=args.seed, steps=args.steps, latent_dim=args.latent_dim,
                            max_patches=args.max_patches, batch_size=args.batch_size)
    sources = args.sources or [str(bundled_scene())]
    info = train_autoencoder(sources, args.out, cfg, progress=not args.quiet,
                             log=(lambda *_: None) if args.quiet else print)
    print(json.dumps({"heldout_chamfer": info["heldout_chamfer"], "seconds": info["seconds"]}))
    print(f"wrote {args.out}")
    return 0


PROFILE_HELP = """Figures (each the median of --repeats runs after one warm-up run, wall clock, at
the resolution of the scene's first test frame, all primitives of the scene; OpenMP
threads wait passively as in every command, or spin with --spin (OMP_WAIT_POLICY=ACTIVE:
faster on an idle machine, many times slower on a busy one); the output names the policy,
and malloc: "kept" when freed memory is kept for reuse, as every command does (glibc; no
page faults for each large tensor anew), "system" with DNMP_SYSTEM_MALLOC=1):
  raster_ms_per_kpx       dnmp.ops.rasterize alone (all scales, each with its own
                          faces_per_pixel), ms per 1000 pixels; raster_ms_per_kpx_by_scale:
                          each scale alone
  render_ms_per_kpx       full render: rasterize + interpolate + radiance MLP + alpha
                          compositing + background, ms per 1000 pixels
  peak_memory_mb_per_kpx  peak CPU memory allocated by torch tensors during one full
                          render (torch profiler memory timeline), MiB per 1000 pixels
  num_primitives, num_faces  scene size (all scales)
  render_reference_ms_per_kpx  the same render with the torch reference shading, timed
                          interleaved (fused_vs_reference_psnr_db: the two images' PSNR)
  bf16_matmul             the fused ops ran their MLPs on bf16 operands (float32
                          accumulation; RenderConfig.bf16_matmul, default: float32 models
                          on CPUs with AMX or AVX512-BF16; dnmp eval
                          records it as render_bf16_matmul in its metrics)
With --breakdown, also ms per stage of one render and of one training step (named
record_function ranges in the code that runs them: rasterize per scale, interpolate,
encoding, MLP trunk / heads, composite, fused shading, background, pool lookup, loss,
backward, optimizer; "other" is the rest), and train_step_ms / train_steps_per_s.
On a GPU (the model's tensors on CUDA) times come from CUDA events and peak memory from
torch.cuda.max_memory_allocated, under the same keys.
With --geometry, also the geometry stage (paper Sec. 3.2):
  geometry_step_ms        one step: windows of depth pixels (LiDAR or stereo), decode the
                          primitives they see, rasterize, depth L1 + regularisers,
                          backward, SparseAdam
  geometry_refresh_ms     re-rasterizing the training frames to decide visibility
  geometry_step_peak_memory_mb  peak torch CPU memory of one step, MiB
Without CHECKPOINT an untrained model of the default config is built on the scene
(rendering cost does not depend on the learned weights)."""


def _add_run(parser: argparse.ArgumentParser) -> None:
    """The trained run a rendering command reads: CHECKPOINT and --scene (`train.run.open_run`)."""
    parser.add_argument("checkpoint", help="checkpoint file, a run folder (newest checkpoint), or a "
                                           "long drive's run folder (its blocks, blended)")
    parser.add_argument("--scene", help="scene folder (default: the one the checkpoint was trained on)")


def _add_device(parser: argparse.ArgumentParser, train: bool = False) -> None:
    """The --device option every computing command shares (`dnmp.device`)."""
    from .device import DEVICE_HELP

    parser.add_argument("--device", default=None if train else "auto", metavar="DEVICE",
                        help=f"where to compute: {DEVICE_HELP}"
                             + ("; default: the config's `device` (auto); with --resume it "
                                "may differ from the run's" if train else ""))


def _device(args):
    """`--device` as a torch.device; a one-line error (ValueError) when unknown or not here."""
    from .device import resolve_device

    return resolve_device(args.device)


def _int_at_least(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"must be >= {lo}, got {value}" if hi is None else f"must be between {lo} and {hi}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    from .train.config import MAX_FACES_PER_PIXEL

    p = argparse.ArgumentParser(
        prog="dnmp",
        description="Deformable Neural Mesh Primitives (Lu et al., ICCV 2023): train urban "
                    "radiance fields from driving captures, render novel views, measure speed.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a scene (default: the bundled KITTI drive)",
                       description="Voxelize the scene's points into primitives (0.25 m fine and "
                                   "1.0 m coarse scales by default), fit their shapes to the depth "
                                   "of the training frames (geometry stage; LiDAR, else stereo: "
                                   "geometry_depth in the config), then train the "
                                   "radiance stage; writes OUT/checkpoints/ (geometry.pt, step_*.pt), "
                                   "OUT/metrics.json (PSNR/SSIM, held-out depth error before/after "
                                   "the geometry stage) and held-out renders in OUT/renders/test/. "
                                   "A drive longer than block_frames (80) instants trains as "
                                   "overlapping blocks in OUT/blocks/, listed in OUT/manifest.json "
                                   "(README, 'Long drives').")
    t.add_argument("scene", nargs="?", help=f"scene folder (default: {bundled_scene()})")
    t.add_argument("--out", help="output folder (default: runs/<scene name>)")
    t.add_argument("--config", help="TOML file overriding TrainConfig fields (see dnmp/train/config.py)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    t.add_argument("--steps", type=_int_at_least(0),
                   help="number of training steps (overrides the config; with --resume, extends "
                        "or shortens the run)")
    t.add_argument("--stages", default=None,
                   help="comma-separated stages to run (default geometry,radiance, or radiance "
                        "alone for a scene without depth images, LiDAR or stereo); "
                        "'radiance' alone starts from OUT/checkpoints/geometry.pt if present, "
                        "else from template spheres")
    t.add_argument("--data-parallel", action="store_true",
                   help="under torchrun: every process trains every block together, each on its "
                        "share of the batch (default: a drive's blocks are dealt to the processes, "
                        "and a drive of one block is data-parallel anyway; README, 'Several processes')")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_device(t, train=True)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("render", help="render the recorded or novel views (PNG, depth, coverage, mp4)",
                       description="Render a trained model along a trajectory: the recorded frames "
                                   "(dataset), the recorded path shifted in the rig frame (shift), a "
                                   "smooth spline through the recorded poses (interpolate), or a "
                                   "nerfstudio camera-path JSON (path FILE). Colour, and on request "
                                   "depth and coverage; --video writes an mp4 of each. Every file is "
                                   "written under a temporary name and renamed when complete.")
    _add_run(r)
    r.add_argument("--trajectory", nargs="+", metavar="KIND", default=["dataset"],
                   help="dataset (default: the recorded frames), shift (with --offset / "
                        "--lane-shift / --lift), interpolate (with --fps, --speed or --frames), "
                        "or path FILE (nerfstudio camera-path JSON: render_width, render_height, "
                        "camera_path[].camera_to_world in OpenGL axes and .fov vertical degrees)")
    r.add_argument("--split", choices=["test", "train", "all"], default=None,
                   help="which recorded frames (default: test, the held-out frames; interpolate: all)")
    r.add_argument("--offset", metavar="X,Y,Z",
                   help="shift: move every camera by this vector in metres in the rig frame (the "
                        "--rig-camera's axes: x right, y down, z forward)")
    r.add_argument("--lane-shift", type=float, default=0.0, metavar="M",
                   help="shift: move the rig M metres to the LEFT (negative: right); adds to --offset")
    r.add_argument("--lift", type=float, default=0.0, metavar="M",
                   help="shift: raise the rig M metres (negative: lower); adds to --offset")
    r.add_argument("--rig-camera", metavar="NAME",
                   help="shift: the camera whose axes define the rig frame (default: the scene's first)")
    r.add_argument("--camera", metavar="NAME",
                   help="interpolate: the camera whose recorded poses are the keyframes (default: "
                        "the scene's first)")
    r.add_argument("--speed", type=float, metavar="M/S",
                   help="interpolate: constant speed along the path instead of the recorded timing")
    r.add_argument("--frames", type=_int_at_least(1), metavar="N",
                   help="interpolate: N views evenly spaced in time")
    r.add_argument("--fps", type=float, default=None,
                   help="video frame rate (default 10 for recorded frames, the file's or 30 for a "
                        "path); for interpolate also the sampling rate (default 30)")
    r.add_argument("--downscale", type=float, metavar="F",
                   help="render at 1/F of the recorded camera's (or the path's) size, F >= 1")
    r.add_argument("--depth", action="store_true",
                   help="also write depth (metres: z of the first layer at which the accumulated opacity "
                        "reaches 0.05, the surface the pixel shows): NAME_depth.png "
                        "(16-bit, metres x 256 like the scenes' depth images) or .npy, and a "
                        "colour-mapped NAME_depth_preview.png")
    r.add_argument("--depth-format", choices=["png", "npy"], default="png",
                   help="depth files: 16-bit PNG, metres x 256 (default), or float32 .npy metres")
    r.add_argument("--depth-max", type=float, default=80.0, metavar="M",
                   help="far end of the depth previews' colour map in metres (default 80; near 1 m)")
    r.add_argument("--coverage", action="store_true",
                   help="also write NAME_coverage.png: accumulated opacity (1 - background "
                        "transmittance), 8-bit")
    r.add_argument("--out", help="output folder (default: RUN/renders/LABEL, e.g. test_frames, "
                                 "test_shift_-2_0_0, interpolate_image_2_30fps; train and eval "
                                 "write RUN/renders/test)")
    r.add_argument("--video", action="store_true",
                   help="also write one mp4 per camera and output, views in order")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device(r)
    r.set_defaults(func=cmd_render)

    v = sub.add_parser("view", help="interactive web viewer of a trained run (viser)",
                       description="Serve a web page that renders the trained scene from the browser's "
                                   "camera (a preview of about --preview-pixels pixels while it moves, "
                                   "full size when it rests), shows the recorded cameras (click one to "
                                   "jump there) and saves keyframes as a nerfstudio camera-path JSON "
                                   "for `dnmp render RUN --trajectory path FILE`. Prints the URL; from "
                                   "another machine forward the port: ssh -L PORT:localhost:PORT HOST.")
    _add_run(v)
    v.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0: all)")
    v.add_argument("--port", type=_int_at_least(1, 65535), default=8080,
                   help="port (default 8080; the next free one if taken)")
    v.add_argument("--preview-pixels", type=_int_at_least(64), default=20000,
                   help="pixels of the images rendered while the camera moves (default 20000, e.g. "
                        "236x85 at KITTI's aspect; adjustable on the page)")
    v.add_argument("--max-height", type=_int_at_least(8),
                   help="rows of the full-size render (default: the recorded camera's height)")
    v.add_argument("--path-file", help="where 'Save camera path' writes (default "
                                       "RUN/camera_paths/viewer_path.json; editable on the page)")
    _add_device(v)
    v.set_defaults(func=cmd_view)

    e = sub.add_parser("eval", help="PSNR / SSIM / LPIPS on the held-out frames",
                       description="Score held-out renders; writes metrics.json with test_psnr, "
                                   "test_ssim (torchmetrics, Gaussian 11x11, sigma 1.5, data_range "
                                   "1.0), test_lpips (null with a reason when its network weights "
                                   "are not available offline), num_test_frames.")
    _add_run(e)
    e.add_argument("--out", help="folder for metrics.json (updated in place, other keys kept) and "
                                 "renders (default: the run folder)")
    e.add_argument("--no-images", action="store_true", help="do not write the renders")
    _add_device(e)
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("profile", help="ms per 1k pixels and memory of rasterization and rendering",
                        description=PROFILE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("checkpoint", nargs="?", help="checkpoint file or run folder (optional)")
    pr.add_argument("--scene", help="scene folder (default: the checkpoint's, else the bundled one)")
    pr.add_argument("--config", help="TOML config for the untrained model (without CHECKPOINT)")
    pr.add_argument("--faces-per-pixel", type=_int_at_least(1, MAX_FACES_PER_PIXEL),
                    help=f"override faces_per_pixel of the fine scale (1 to {MAX_FACES_PER_PIXEL})")
    pr.add_argument("--spin", action="store_true",
                    help="OpenMP threads spin while waiting (OMP_WAIT_POLICY=ACTIVE): faster on an "
                         "idle machine, many times slower when other processes share the cores; "
                         "default PASSIVE like every other command (an explicit OMP_WAIT_POLICY wins)")
    pr.add_argument("--repeats", type=_int_at_least(1), default=5, help="timed runs (default 5)")
    pr.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    pr.add_argument("--geometry", action="store_true",
                    help="also time the geometry stage's step and refresh, and its peak memory "
                         "(on a copy of the model; needs the scene's depth images, LiDAR or stereo)")
    pr.add_argument("--breakdown", action="store_true",
                    help="also time each stage of a render and of a training step (torch profiler)")
    pr.add_argument("--json", action="store_true", help="print the figures as JSON")
    _add_device(pr)
    pr.set_defaults(func=cmd_profile)

    cv = sub.add_parser("coverage", help="how much of the images the primitives cover, per point cloud",
                        description="Voxelize each point cloud kind of the scene (and all together), "
                                    "rasterize the frames of a split, and print the fraction of "
                                    "pixels covered by at least one primitive face.")
    cv.add_argument("scene", nargs="?", help="scene folder (default: the bundled one)")
    cv.add_argument("--split", choices=["test", "train"], default="test", help="which frames (test)")
    cv.add_argument("--voxel-size", type=float, default=0.5, help="voxel edge in metres (0.5)")
    cv.add_argument("--json", action="store_true", help="print the figures as JSON")
    _add_device(cv)
    cv.set_defaults(func=cmd_coverage)

    ae = sub.add_parser(
        "train-autoencoder", help="train the primitives' mesh auto-encoder (shape space)",
        description="Paper Sec. 3.1: cut local surface patches (voxels of 0.5 m and 1.0 m with "
                    "enough points) from the point clouds of SOURCES, fit a level-1 ico-sphere to "
                    "each (Chamfer + Laplacian + normal consistency), train a PointNet encoder -> "
                    "unit latent -> ShapeDecoder auto-encoder on them, and write its weights (read "
                    "by dnmp.model.autoencoder.load_shape_decoder). Prints the held-out Chamfer "
                    "distances (template sphere, fitted meshes, auto-encoder) in unit-frame units^2 "
                    "and m^2. A fixed --seed and thread count give identical weights.")
    ae.add_argument("sources", nargs="*", metavar="SOURCE",
                    help="dnmp scene folders and/or .ply point clouds in metres (default: the bundled scene)")
    ae.add_argument("--out", required=True, help="weights file to write (atomically)")
    ae.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ae.add_argument("--steps", type=_int_at_least(1), default=3000, help="training steps (default 3000)")
    ae.add_argument("--latent-dim", type=_int_at_least(1), default=8, help="latent code size (default 8)")
    ae.add_argument("--max-patches", type=_int_at_least(1), default=1500,
                    help="cap on source patches before augmentation (default 1500)")
    ae.add_argument("--batch-size", type=_int_at_least(1), default=64, help="patches per step (default 64)")
    ae.add_argument("--threads", type=_int_at_least(1), help="torch CPU threads (default: torch's)")
    ae.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    ae.set_defaults(func=cmd_train_autoencoder)

    em = sub.add_parser("export-mesh", help="write all decoded primitives as one mesh file",
                        description="Decode every primitive of a checkpoint (latent -> shape decoder "
                                    "-> vertices) and write them as one triangle mesh with open3d "
                                    "(format from the suffix: .ply, .obj, .off, .glb), in the scene "
                                    "frame in metres.")
    em.add_argument("checkpoint", help="checkpoint file (step_*.pt or geometry.pt), a run folder "
                                       "(newest step_*.pt), or a long drive's run folder (its blocks)")
    em.add_argument("--out", required=True, help="mesh file to write, e.g. mesh.ply (a block run: "
                                                 "one file per block, OUT_block_NNN.ply)")
    em.add_argument("--scene", help="a block run's scene folder (default: the one it was trained on)")
    em.add_argument("--colour", "--color", action="store_true",
                    help="colour vertices with the radiance field's view-independent colour "
                         "(RGB averaged over 12 view directions); needs a step_*.pt checkpoint")
    em.add_argument("--scale", choices=["all", "fine", "coarse"], default="all",
                    help="which primitive scale(s) to export (default all)")
    _add_device(em)
    em.set_defaults(func=cmd_export_mesh)

    from .converters import FORMATS

    c = sub.add_parser("convert", help="convert a dataset into a dnmp scene",
                       description="Convert a capture into the dnmp scene format (DESIGN.md). "
                                   "Run `dnmp convert FORMAT --help` for a format's options.",
                       epilog="formats:\n" + "\n".join(f"  {k:<16s}{d}" for k, (_, d) in FORMATS.items()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("format", choices=list(FORMATS), help="source format (see below)")
    c.add_argument("converter_args", nargs=argparse.REMAINDER,
                   help="arguments of the converter (see `dnmp convert FORMAT --help`)")
    c.set_defaults(func=cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before torch loads OpenMP: threads that spin while waiting collapse when another
    # process shares the cores (training measured 5x slower on 2 busy cores, profile 10x),
    # so every command waits passively; `profile --spin` chooses spinning (full render
    # 1.8x faster on an idle machine). An explicit OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE" if getattr(args, "spin", False) else "PASSIVE")
    from .data import SceneError
    from .device import keep_freed_memory
    from .train.checkpoint import CheckpointError
    from .train.interrupt import Interrupted, handle_signals

    keep_freed_memory()  # large tensors reuse freed memory instead of being page-faulted anew

    try:
        with handle_signals():  # SIGTERM ends a command like Ctrl-C (the radiance loop saves first)
            return args.func(args)
    except Interrupted as exc:
        print(f"dnmp: {exc}", file=sys.stderr)  # "dnmp: interrupted by SIGTERM"
        return exc.exit_code
    except KeyboardInterrupt:
        print("dnmp: interrupted", file=sys.stderr)
        return 130
    except (SceneError, CheckpointError, ValueError, OSError, FloatingPointError) as exc:
        if os.environ.get("DNMP_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename and exc.strerror:
            msg = f"{exc.filename}: {exc.strerror}"  # e.g. an unwritable --out folder
        else:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"dnmp: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The command-line options every format shares, and the ``main`` wrapper.

A format module's ``build_parser`` adds its own options (source layout,
poses, cameras) next to these: :func:`add_output_options` (what the writer
takes, :func:`dnmp.converters.writer.write_capture`), plus for the KITTI
family :func:`add_drive_options` (frame range, stride, cameras) and
:func:`add_pose_options` (``--poses lidar``). :func:`output_options` /
:func:`drive_options` turn the parsed arguments back into keyword options of
:func:`dnmp.converters.writer.convert`; :func:`run_cli` turns bad input into
one line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def add_output_options(p: argparse.ArgumentParser, lidar: bool = True, stereo: bool = False,
                       voxel: float = 0.05) -> None:
    """--out, --downscale, (LiDAR: --max-depth, --min-range, --no-lidar,
    --no-depth,) (stereo: --stereo-max-depth, --stereo-near-depth, --no-stereo,) --voxel,
    --outlier-neighbors, --no-sanity, --name, --overwrite, --quiet."""
    p.add_argument("--out", required=True, help="output scene folder")
    p.add_argument("--downscale", type=float, default=1.0, help="image size divisor (default 1)")
    if lidar:
        p.add_argument("--max-depth", type=float, default=80.0, help="LiDAR crop / depth image range, metres (80)")
        p.add_argument("--min-range", type=float, default=2.5,
                       help="drop LiDAR returns closer than this to the sensor (the ego vehicle), metres (2.5)")
    if stereo:
        p.add_argument("--stereo-max-depth", type=float, default=40.0,
                       help="stereo points range, metres (40: beyond it SGBM depth is too coarse to add detail)")
        p.add_argument("--stereo-near-depth", type=float, default=25.0,
                       help="stereo points farther than this (metres, 25) go to points/stereo_far.ply, kind "
                            "'stereo_far' (their depth error grows with the square of depth; training places "
                            "them only at the coarse scale)")
    p.add_argument("--voxel", type=float, default=voxel, help=f"point voxel size, metres ({voxel:g}; 0 = off)")
    p.add_argument("--outlier-neighbors", type=int, default=20,
                   help="statistical outlier removal neighbours, 0 = off (20)")
    if stereo:
        p.add_argument("--no-stereo", action="store_true", help="skip SGBM stereo points")
    if lidar:
        p.add_argument("--no-lidar", action="store_true", help="skip LiDAR points and depth")
        p.add_argument("--no-depth", action="store_true",
                       help="skip the per-frame depth images (LiDAR depth/" + (" and stereo depth_stereo/)"
                                                                                if stereo else ")"))
    p.add_argument("--no-sanity", action="store_true", help="skip the projection sanity check")
    p.add_argument("--name", default=None, help="scene name")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output scene")
    p.add_argument("--quiet", action="store_true")


def output_options(args) -> dict:
    """Keyword options of :func:`add_output_options`' parsed arguments (only
    those the parser had)."""
    kw = dict(downscale=args.downscale, voxel=args.voxel, outlier_neighbors=args.outlier_neighbors,
              sanity=not args.no_sanity, name=args.name, overwrite=args.overwrite, quiet=args.quiet)
    if hasattr(args, "max_depth"):
        kw.update(max_depth=args.max_depth, min_range=args.min_range, lidar=not args.no_lidar,
                  depth=not args.no_depth)
    if hasattr(args, "stereo_max_depth"):
        kw.update(stereo_max_depth=args.stereo_max_depth, stereo_near_depth=args.stereo_near_depth,
                  stereo=not args.no_stereo)
    return kw


def add_drive_options(p: argparse.ArgumentParser, default_cameras: str | None, range_help: str = "",
                      window_help: str = "", cameras_help: str = "", lidar_poses: bool = False) -> None:
    """The KITTI family's options: frame range (--first/--last or --window),
    --stride, --cameras, (``lidar_poses``: :func:`add_pose_options`,) and
    :func:`add_output_options` with stereo. ``default_cameras`` None: the
    converter picks them (``cameras_help`` says how)."""
    if lidar_poses:
        add_pose_options(p)
    p.add_argument("--first", type=int, default=None, help="first frame index (default: first available)")
    p.add_argument("--last", type=int, default=None,
                   help="last frame index, inclusive (default: last available)" + range_help)
    p.add_argument("--window", default=None, metavar="START:LEN",
                   help="frames START..START+LEN-1 (instead of --first/--last), e.g. 715:80 for an "
                        "80-frame window" + window_help)
    p.add_argument("--stride", type=int, default=1, metavar="N",
                   help="keep every Nth frame of the range, before the train/test split (default 1)")
    p.add_argument("--cameras", default=default_cameras,
                   help="comma-separated cameras, the first is the left one; "
                        + (cameras_help or f"default {default_cameras}"))
    add_output_options(p, lidar=True, stereo=True)


def drive_options(args) -> dict:
    """Keyword options of :func:`add_drive_options`' parsed arguments
    (``cameras`` None when not given and the converter picks them; with
    ``--poses``, it and :func:`pose_options`)."""
    kw = dict(cameras=split_list(args.cameras), window=args.window, stride=args.stride, first=args.first,
              last=args.last, **output_options(args))
    if hasattr(args, "icp_voxel"):
        kw.update(poses=args.poses, **pose_options(args))
    return kw


def add_pose_options(p: argparse.ArgumentParser) -> None:
    """--poses lidar's ICP settings (KITTI odometry and raw)."""
    p.add_argument("--icp-voxel", type=float, default=0.2, help="--poses lidar: ICP voxel size, metres (0.2)")
    p.add_argument("--icp-max-distance", type=float, default=0.5,
                   help="--poses lidar: ICP correspondence distance, metres (0.5)")
    p.add_argument("--min-icp-fitness", type=float, default=0.3,
                   help="--poses lidar: fail when a scan pair's ICP fitness is below this (0.3)")


def pose_options(args) -> dict:
    """Keyword options of :func:`add_pose_options`' parsed arguments."""
    return dict(icp_voxel=args.icp_voxel, icp_max_distance=args.icp_max_distance,
                min_icp_fitness=args.min_icp_fitness)


def split_list(text) -> list | None:
    """'A,B, C' -> ['A', 'B', 'C']; None / '' -> None."""
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    return items or None


def run_cli(fn: Callable[[], object]) -> int:
    """Run a converter's work for its ``main``: SceneError/ConversionError (and
    other ValueErrors, which our readers raise for bad input) become one line
    ``dnmp: error: ...`` on stderr and exit status 2."""
    try:
        fn()
    except ValueError as e:
        print(f"dnmp: error: {e}", file=sys.stderr)
        return 2
    return 0

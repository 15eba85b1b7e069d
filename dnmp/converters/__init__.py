"""dnmp.converters: dataset converters into the dnmp scene format (DESIGN.md).

One module per source format reads its source into a
:class:`~dnmp.converters.capture.Capture`; one writer
(:mod:`dnmp.converters.writer`) turns any Capture into a scene. Every format
module exposes ``read_<format>(source, **options) -> Capture``,
``convert_<format>(source, out, overwrite=False, **options)``,
``build_parser()`` (its command-line options) and ``main(argv) -> int``
(one-line errors, exit 2). ``dnmp convert FORMAT ...`` calls :func:`main`,
which dispatches through :data:`FORMATS`. Layers and how to add a format:
design.md next to this file.
"""

import importlib

# format name on the command line -> (module, one-line description)
FORMATS = {
    "kitti": ("dnmp.converters.kitti",
              "KITTI raw (<date>/<date>_drive_NNNN_sync, OXTS poses) or odometry (sequences/), auto-detected"),
    "kitti-odometry": ("dnmp.converters.kitti_odometry",
                       "KITTI odometry benchmark: sequences/XX, calib.txt, times.txt, poses/XX.txt; colour or "
                       "grayscale pair, LiDAR or stereo only (picked from what is there)"),
    "kitti360": ("dnmp.converters.kitti360",
                 "KITTI-360: data_2d_raw/, data_poses/, calibration/, data_3d_raw/ (DNMP paper windows: --preset "
                 "dnmp-paper --window N, or --window START:LEN)"),
    "dgp": ("dnmp.converters.dgp",
            "DGP format (DDAD, TRI): scene_dataset_v1.0.json, scene_*.json, calibration/, rgb/, point_cloud/"),
    "colmap": ("dnmp.converters.colmap",
               "COLMAP sparse model (text or binary: cameras, images, points3D) + images/; up to scale"),
    "nuscenes": ("dnmp.converters.nuscenes",
                 "nuScenes: <version>/ JSON tables (scene, sample, sample_data, ego_pose, ...), samples/, sweeps/"),
    "waymo": ("dnmp.converters.waymo",
              "Waymo Open Dataset v2: <component>/<segment>.parquet (camera_image, camera_calibration, lidar, ...)"),
}


def main(fmt: str, argv) -> int:
    """``dnmp convert FMT ARGV...``: the format's own ``main(argv)`` (its
    parser, one-line errors); 0 on success, 2 on bad input."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[fmt][0]).main(argv) or 0

"""dnmp.converters: dataset converters into the dnmp scene format (DESIGN.md).

One module per source format; the steps they share (LiDAR fusion, sparse depth,
recentring, projection checks, summary, overview picture, atomic output) live in
:mod:`dnmp.converters.common`. Every module exposes ``main(argv) -> int`` (its
own argparse parser, one-line errors, exit 2) and a ``convert_<format>(source,
out, overwrite=False, **options)`` function. ``dnmp convert FORMAT ...``
dispatches through :data:`FORMATS`.
"""

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

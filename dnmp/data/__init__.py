"""dnmp.data: the dnmp scene format (read, write, validate).

See :mod:`dnmp.data.scene` for the format description.
"""

from dnmp.data.scene import (
    FORMAT_NAME,
    FORMAT_VERSION,
    POINT_KINDS,
    SPLITS,
    Camera,
    Frame,
    PointCloud,
    Scene,
    SceneError,
    check_rigid,
    downscale_scene,
    load_depth,
    load_image,
    load_scene,
    read_depth_png,
    read_ply_points,
    write_depth_png,
    write_ply_points,
    write_scene_json,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "POINT_KINDS",
    "SPLITS",
    "Camera",
    "Frame",
    "PointCloud",
    "Scene",
    "SceneError",
    "check_rigid",
    "downscale_scene",
    "load_depth",
    "load_image",
    "load_scene",
    "read_depth_png",
    "read_ply_points",
    "write_depth_png",
    "write_ply_points",
    "write_scene_json",
]

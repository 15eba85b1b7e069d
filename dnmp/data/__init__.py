"""dnmp.data: the dnmp scene format (read, write, validate).

- :mod:`~dnmp.data.scene`: the dataclasses (Camera, Frame, PointCloud, Scene),
  the scene.json parser (:func:`load_scene`) and writer; the format description
- :mod:`~dnmp.data.images`: the one image reader and the depth-image codec
- :mod:`~dnmp.data.ply`: the PLY codec
- :mod:`~dnmp.data.rigid`: rigid transforms (also used by the converters)
- :mod:`~dnmp.data.downscale`: image/intrinsics/depth/scene downscaling
- :mod:`~dnmp.data.subset`: a scene restricted to some frames
- :mod:`~dnmp.data.errors`: SceneError
"""

from dnmp.data.downscale import downscale_scene
from dnmp.data.errors import SceneError
from dnmp.data.images import load_depth, load_image, read_depth_png, write_depth_png
from dnmp.data.ply import read_ply_points, write_ply_points
from dnmp.data.rigid import check_rigid
from dnmp.data.scene import (
    FORMAT_NAME,
    FORMAT_VERSION,
    POINT_KINDS,
    SPLITS,
    Camera,
    Frame,
    PointCloud,
    Scene,
    load_scene,
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

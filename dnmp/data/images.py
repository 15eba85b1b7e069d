"""Image and depth-image files of dnmp: the one image reader (:func:`read_image`,
files or encoded bytes, 8-bit only), the float image a renderer uses
(:func:`load_image`) and the sparse depth codec (uint16 PNG, metres * 256,
0 = no measurement: :func:`read_depth_png`, :func:`write_depth_png`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dnmp.data.errors import SceneError

if TYPE_CHECKING:  # annotations only: scene.py imports this module
    from dnmp.data.scene import Camera, Frame

DEPTH_SCALE = 256.0


def read_image(source, where=None) -> np.ndarray:
    """The decoded 8-bit image as stored: uint8 [H, W] (grey) or [H, W, C].

    source: a PNG/JPEG file path, or its encoded bytes (e.g. a Parquet cell;
    ``where`` then names it in errors). Raises SceneError for a missing,
    unreadable or undecodable image and for other bit depths."""
    import imageio.v3 as iio

    if isinstance(source, (bytes, bytearray, memoryview)):
        where = where if where is not None else "image bytes"
        try:
            img = np.asarray(iio.imread(bytes(source))) if len(source) else None
        except Exception:
            img = None
        if img is None:
            raise SceneError(where, "corrupt or undecodable image bytes")
    else:
        path = Path(source)
        where = where if where is not None else path
        if not path.is_file():
            raise SceneError(where, "image is missing")
        try:
            img = np.asarray(iio.imread(path))
        except Exception as e:  # imageio raises many types
            raise SceneError(where, f"corrupt or unreadable image ({type(e).__name__})") from None
    if img.dtype != np.uint8:
        raise SceneError(where, f"expected an 8-bit image, got {img.dtype}")
    return img


def as_rgb8(img: np.ndarray, where) -> np.ndarray:
    """HxW or HxWxC uint8 -> contiguous uint8 [H, W, 3] (grey repeated, alpha
    dropped); other dtypes raise SceneError naming ``where``."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype != np.uint8:
        raise SceneError(where, f"expected an 8-bit image, got {img.dtype}")
    return np.ascontiguousarray(img)


def load_image(frame: Frame, camera: Camera | None = None) -> np.ndarray:
    """float32 [H, W, 3] in [0, 1] of an 8-bit image (grey repeated to 3 channels,
    alpha dropped). With ``camera``, the size is checked against it, and for a
    grayscale camera (``channels`` 1) that the file has one channel. Raises
    SceneError (one line naming the file) for a missing, unreadable or
    mismatching image."""
    p = frame.image_path
    if not p.is_file():
        raise SceneError(p, f"image file of frame {frame.name!r} is missing")
    img = read_image(p)
    if camera is not None and camera.channels == 1 and not (img.ndim == 2 or img.shape[2] == 1):
        raise SceneError(p, f"camera {camera.name!r} is grayscale (channels 1) but the image has "
                            f"{img.shape[2]} channels")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise SceneError(p, f"unsupported image shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[..., :3]
    if camera is not None and (img.shape[0] != camera.height or img.shape[1] != camera.width):
        raise SceneError(
            p, f"image size mismatch: {img.shape[1]}x{img.shape[0]} but camera "
            f"{camera.name!r} is {camera.width}x{camera.height}"
        )
    return img.astype(np.float32) / 255.0


def read_depth_png(path) -> np.ndarray:
    """uint16 PNG (metres * 256, 0 = none) -> float32 [H, W] metres (0 = none)."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise SceneError(p, "depth file is missing")
    d = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if d is None:
        raise SceneError(p, "corrupt or unreadable depth image")
    if d.ndim != 2 or d.dtype != np.uint16:
        raise SceneError(p, f"depth must be single-channel uint16 PNG, got {d.dtype} shape {d.shape}")
    return d.astype(np.float32) / DEPTH_SCALE


def write_depth_png(path, depth: np.ndarray) -> None:
    """float [H, W] metres (<= 0 or non-finite = none) -> uint16 PNG (metres * 256)."""
    import cv2

    d = np.asarray(depth, dtype=np.float64)
    v = np.where(np.isfinite(d) & (d > 0), np.round(d * DEPTH_SCALE), 0)
    v = np.clip(v, 0, 65535).astype(np.uint16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), v):
        raise SceneError(path, "could not write depth PNG")


def load_depth(frame: Frame, camera: Camera | None = None, kind: str = "lidar") -> np.ndarray:
    """float32 [H, W] depth in metres (camera z), 0 = no data, of the frame's
    ``kind`` depth image: "lidar" (``frame.depth``) or "stereo"
    (``frame.stereo_depth``). Raises SceneError when the frame has none, or
    (with ``camera``) its size differs from the camera's."""
    path = frame.depth_file(kind)
    if path is None:
        what = "depth image" if kind == "lidar" else "stereo depth image"
        raise SceneError(frame.image_path, f"frame {frame.name!r} has no {what}")
    d = read_depth_png(path)
    if camera is not None and (d.shape[0] != camera.height or d.shape[1] != camera.width):
        raise SceneError(
            path, f"depth size mismatch: {d.shape[1]}x{d.shape[0]} but camera "
            f"{camera.name!r} is {camera.width}x{camera.height}"
        )
    return d

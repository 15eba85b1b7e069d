"""Camera trajectories for novel views: the recorded path, shifted, interpolated, or from a file.

Every generator returns a list of `View` (a camera pose in dnmp's convention plus the
pinhole camera to render it with), which `dnmp.views.render_views` and the viewer render:

- `dataset_views`: the scene's own frames (`dnmp render` without `--trajectory`).
- `shift_views`: the same frames, every camera moved by one offset expressed in the
  camera rig's frame (see `rig_rotations`): x right, y down, z forward, metres, the
  axes of DESIGN.md's camera frame. `lane_offset` builds that offset from the named
  quantities: a lane shift of +M metres moves the rig M metres to the LEFT (-x) and a
  lift of +M metres moves it UP (-y). A zero offset returns the recorded poses
  unchanged, bit for bit.
- `interpolate_views`: a smooth path through one camera's recorded poses, sampled at a
  frame rate: positions by a natural cubic spline in time (C2), rotations by Shoemake's
  squad on unit quaternions (C1 for evenly spaced keyframes); both pass through the
  keyframes exactly. Optionally at a constant speed along the path or with a frame count.
- `read_camera_path` / `write_camera_path`: nerfstudio's camera-path JSON (what its
  viewer's "Export path" writes and `ns-render camera-path` reads; see those functions
  for the fields and the axis conversion).

Poses are float64 [4, 4] `cam_to_world` in the scene's world frame (metres, the scene's
`world_offset` already subtracted), camera axes OpenCV (x right, y down, z forward).
Bad input (an unknown kind, a path file with wrong fields, NaN or non-rigid poses, too
few keyframes) raises ValueError (or its subclass `dnmp.data.SceneError`) with a
one-line message naming the file or option.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Camera, Scene, check_rigid
from .data.downscale import downscale_camera

KINDS = ("dataset", "shift", "interpolate", "path")
CAMERA_PATH_TYPES = ("perspective",)  # nerfstudio's fisheye / equirectangular are refused
# OpenCV camera axes (x right, y down, z forward) <-> OpenGL camera axes (x right, y up,
# z backward): flip y and z of the camera frame, c2w_gl = c2w_cv @ diag(1, -1, -1, 1).
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class View:
    """One image to render.

    name: file stem of its outputs (unique within a trajectory).
    camera: pinhole camera (size, intrinsics in pixels, OpenCV pixel centres; `channels`
        1 renders grey). Its `name` groups views into one video per camera.
    cam_to_world: float64 [4, 4] rigid, camera (x right, y down, z forward) to scene world,
        metres.
    time: seconds along the trajectory (the recorded timestamp, or sample time).
    """

    name: str
    camera: Camera
    cam_to_world: np.ndarray
    time: float = 0.0


# ----------------------------------------------------------------------------
# Rotations as unit quaternions (w, x, y, z)
# ----------------------------------------------------------------------------


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z), float64 [4], with w >= 0, of a rotation matrix
    float [3, 3] (Shepperd's method: the largest of w, x, y, z is solved first)."""
    R = np.asarray(R, dtype=np.float64)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    cands = np.array([tr, R[0, 0], R[1, 1], R[2, 2]])
    i = int(np.argmax(cands))
    if i == 0:
        s = 2.0 * math.sqrt(max(1.0 + tr, 0.0))
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif i == 1:
        s = 2.0 * math.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 0.0))
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif i == 2:
        s = 2.0 * math.sqrt(max(1.0 + R[1, 1] - R[0, 0] - R[2, 2], 0.0))
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(max(1.0 + R[2, 2] - R[0, 0] - R[1, 1], 0.0))
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix float64 [3, 3] of a quaternion (w, x, y, z) (normalised first)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _qmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def _qconj(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])


def _qlog(q: np.ndarray) -> np.ndarray:
    """Log of a unit quaternion: the pure quaternion (0, axis * half angle) as [3]."""
    v = q[1:]
    n = np.linalg.norm(v)
    if n < 1e-15:
        return np.zeros(3)
    return v / n * math.atan2(n, q[0])


def _qexp(v: np.ndarray) -> np.ndarray:
    """Exp of the pure quaternion (0, v), v [3]: a unit quaternion."""
    n = np.linalg.norm(v)
    if n < 1e-15:
        return np.array([1.0, *v])
    return np.concatenate([[math.cos(n)], v / n * math.sin(n)])


def slerp(a: np.ndarray, b: np.ndarray, u: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions a -> b at u in [0, 1] (the
    shorter arc: b is negated when a . b < 0). slerp(a, b, 0) == a exactly."""
    d = float(np.dot(a, b))
    if d < 0.0:
        b, d = -b, -d
    if u == 0.0:
        return a.copy()
    if d > 1.0 - 1e-12:  # nearly equal: linear, renormalised
        q = a + u * (b - a)
        return q / np.linalg.norm(q)
    theta = math.acos(min(d, 1.0))
    s = math.sin(theta)
    return (math.sin((1.0 - u) * theta) * a + math.sin(u * theta) * b) / s


def _squad_controls(qs: np.ndarray) -> np.ndarray:
    """Inner control quaternions of squad (Shoemake 1987): s_i = q_i exp(-(log(q_i^-1 q_i+1)
    + log(q_i^-1 q_i-1)) / 4), s_0 = q_0, s_n-1 = q_n-1."""
    s = qs.copy()
    for i in range(1, len(qs) - 1):
        inv = _qconj(qs[i])
        t = _qlog(_qmul(inv, qs[i + 1])) + _qlog(_qmul(inv, qs[i - 1]))
        s[i] = _qmul(qs[i], _qexp(-t / 4.0))
    return s


# ----------------------------------------------------------------------------
# Pose interpolation
# ----------------------------------------------------------------------------


def _natural_spline_moments(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Second derivatives [N, D] of the natural cubic spline through (t [N], y [N, D])."""
    n = len(t)
    m = np.zeros_like(y)
    if n < 3:
        return m
    h = np.diff(t)
    a = np.zeros((n - 2, n - 2))
    rhs = 6.0 * ((y[2:] - y[1:-1]) / h[1:, None] - (y[1:-1] - y[:-2]) / h[:-1, None])
    for i in range(n - 2):
        a[i, i] = 2.0 * (h[i] + h[i + 1])
        if i > 0:
            a[i, i - 1] = h[i]
        if i < n - 3:
            a[i, i + 1] = h[i + 1]
    m[1:-1] = np.linalg.solve(a, rhs)
    return m


def _check_keyframes(cam_to_world: np.ndarray, times: np.ndarray, where: str):
    c2w = np.asarray(cam_to_world, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or t.shape != (c2w.shape[0],):
        raise ValueError(f"{where}: keyframes must be cam_to_world [N, 4, 4] with times [N], got "
                         f"{c2w.shape} and {t.shape}")
    if len(t) < 2:
        raise ValueError(f"{where}: a path needs at least 2 keyframes, got {len(t)}")
    if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise ValueError(f"{where}: keyframe times must be finite and strictly increasing")
    for i, T in enumerate(c2w):
        check_rigid(T, where, f"keyframe {i} cam_to_world")
    return c2w, t


def interpolate_poses(cam_to_world: np.ndarray, times: np.ndarray, query: np.ndarray,
                      where: str = "interpolate") -> np.ndarray:
    """A smooth camera path through keyframes, evaluated at query times.

    Positions follow the natural cubic spline through the camera centres parametrised by
    time (C2: continuous velocity and acceleration); rotations follow Shoemake's squad
    on the unit quaternions, segment by segment (C1 when the keyframes are evenly spaced
    in time, as a recording is). At a keyframe's time the result is that keyframe, bit for
    bit. Query times outside [times[0], times[-1]]
    are clamped to the ends.

    Args:
        cam_to_world: float [N, 4, 4] rigid keyframe poses (any camera convention; the
            rotation block is interpolated as a whole), N >= 2.
        times: float [N] seconds, strictly increasing.
        query: float [M] seconds.
        where: names the source in error messages.
    Returns:
        float64 [M, 4, 4] rigid poses.
    Raises:
        ValueError: fewer than 2 keyframes, times not strictly increasing or not finite,
            a keyframe that is not rigid or holds NaN.
    """
    c2w, t = _check_keyframes(cam_to_world, times, where)
    q_t = np.clip(np.asarray(query, dtype=np.float64).reshape(-1), t[0], t[-1])
    pos = c2w[:, :3, 3]
    mom = _natural_spline_moments(t, pos)
    quats = np.stack([matrix_to_quaternion(T[:3, :3]) for T in c2w])
    for i in range(1, len(quats)):  # one hemisphere: neighbours on the short arc
        if np.dot(quats[i - 1], quats[i]) < 0:
            quats[i] = -quats[i]
    ctrl = _squad_controls(quats)
    out = np.zeros((len(q_t), 4, 4))
    out[:, 3, 3] = 1.0
    seg = np.clip(np.searchsorted(t, q_t, side="right") - 1, 0, len(t) - 2)
    for k, (tq, i) in enumerate(zip(q_t, seg)):
        h = t[i + 1] - t[i]
        b = (tq - t[i]) / h
        a = 1.0 - b
        if b == 0.0 or b == 1.0:  # on a keyframe: that keyframe, bit for bit
            out[k] = c2w[i if b == 0.0 else i + 1]
            continue
        out[k, :3, 3] = a * pos[i] + b * pos[i + 1] + \
            ((a ** 3 - a) * mom[i] + (b ** 3 - b) * mom[i + 1]) * h * h / 6.0
        q = slerp(slerp(quats[i], quats[i + 1], b), slerp(ctrl[i], ctrl[i + 1], b), 2.0 * b * (1.0 - b))
        out[k, :3, :3] = quaternion_to_matrix(q)
    return out


def path_length_samples(cam_to_world: np.ndarray, times: np.ndarray, per_segment: int = 200):
    """(sample times float64 [S], cumulative arc length float64 [S] metres) of the
    interpolated camera centres, `per_segment` samples per keyframe interval."""
    t = np.asarray(times, dtype=np.float64)
    dense = np.concatenate([np.linspace(t[i], t[i + 1], per_segment, endpoint=False)
                            for i in range(len(t) - 1)] + [t[-1:]])
    centres = interpolate_poses(cam_to_world, t, dense)[:, :3, 3]
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    return dense, np.concatenate([[0.0], np.cumsum(steps)])


# ----------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------


def _frames(scene: Scene, split: str) -> list:
    frames = scene.frames if split == "all" else scene.frames_by_split(split)
    if not frames:
        raise ValueError(f"{scene.root}: no {split!r} frames")
    return frames


def _camera(scene: Scene, name: str, downscale: float | None) -> Camera:
    cam = scene.cameras[name]
    return downscale_camera(cam, downscale) if downscale and downscale != 1.0 else cam


def _check_camera_name(scene: Scene, name: str | None, option: str) -> str:
    if name is None:
        return next(iter(scene.cameras))
    if name not in scene.cameras:
        raise ValueError(f"{option} {name!r}: the scene has cameras {', '.join(scene.cameras)}")
    return name


def dataset_views(scene: Scene, split: str = "test", downscale: float | None = None) -> list[View]:
    """The recorded frames of `split` ("train", "test" or "all"), ordered by camera then
    time, each with its own camera (optionally downscaled: `downscale` >= 1, intrinsics as
    `dnmp.data.scene.downscale_camera`). Views are named by the frame file stem.

    Raises: ValueError when the split has no frames or `downscale` < 1.
    """
    from .evaluate import frame_file_stem

    frames = sorted(_frames(scene, split), key=lambda f: (f.camera, f.timestamp))
    return [View(frame_file_stem(f), _camera(scene, f.camera, downscale), f.cam_to_world.copy(),
                 float(f.timestamp)) for f in frames]


def lane_offset(offset=(0.0, 0.0, 0.0), lane_shift: float = 0.0, lift: float = 0.0) -> np.ndarray:
    """The rig-frame offset float64 [3] (metres; x right, y down, z forward) of an explicit
    `offset` plus a lane shift (+ = to the LEFT, i.e. -x) and a lift (+ = UP, i.e. -y).

    Raises: ValueError when a value is not finite or `offset` is not 3 numbers.
    """
    try:
        v = np.asarray(offset, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"offset must be 3 numbers (x, y, z metres), got {offset!r}") from None
    if v.shape != (3,):
        raise ValueError(f"offset must be 3 numbers (x, y, z metres), got {list(v)}")
    v = v + np.array([-float(lane_shift), -float(lift), 0.0])
    if not np.all(np.isfinite(v)):
        raise ValueError(f"offset, lane shift and lift must be finite, got offset {v.tolist()}")
    return v


def rig_rotations(scene: Scene, frames: list, rig_camera: str | None = None) -> list[np.ndarray]:
    """The camera rig's orientation at each frame: float64 [3, 3] rotation (rig axes to world)
    of the rig camera's frame nearest in time (its own rotation for the rig camera's frames).

    The rig frame is the frame of one camera, `rig_camera` (default: the scene's first camera,
    e.g. KITTI's left colour camera image_2, or a surround rig's front camera), so every camera
    of an instant moves by the same world vector: a shifted stereo pair or surround rig stays
    rigid. dnmp scenes store no vehicle frame; for a forward camera mounted level the rig frame
    is the vehicle's, with y down.

    Raises: ValueError for an unknown camera name.
    """
    rig_camera = _check_camera_name(scene, rig_camera, "--rig-camera")
    ref = sorted((f for f in scene.frames if f.camera == rig_camera), key=lambda f: f.timestamp)
    stamps = np.array([f.timestamp for f in ref])
    return [f.cam_to_world[:3, :3] if f.camera == rig_camera else
            ref[int(np.argmin(np.abs(stamps - f.timestamp)))].cam_to_world[:3, :3] for f in frames]


def shift_views(scene: Scene, split: str = "test", offset=(0.0, 0.0, 0.0),
                rig_camera: str | None = None, downscale: float | None = None) -> list[View]:
    """The recorded frames of `split` with every camera centre moved by `offset` (float [3],
    metres, in the rig frame of `rig_rotations`: x right, y down, z forward; build it with
    `lane_offset`). Orientations are unchanged. A zero offset gives `dataset_views` exactly.

    Raises: ValueError for an empty split, a bad offset or an unknown rig camera.
    """
    from .evaluate import frame_file_stem

    views = dataset_views(scene, split, downscale)
    off = lane_offset(offset)
    _check_camera_name(scene, rig_camera, "--rig-camera")
    if not off.any():
        return views
    by_name = {v.name: v for v in views}
    frames = _frames(scene, split)
    for f, R in zip(frames, rig_rotations(scene, frames, rig_camera)):
        by_name[frame_file_stem(f)].cam_to_world[:3, 3] += R @ off
    return views


def interpolate_views(scene: Scene, split: str = "all", camera: str | None = None,
                      fps: float = 30.0, speed: float | None = None, frames: int | None = None,
                      downscale: float | None = None) -> list[View]:
    """A smooth path through the recorded poses of one camera (`interpolate_poses`).

    Keyframes: the frames of `camera` (default: the scene's first camera) in `split`, by
    timestamp. Samples: by default at `fps` along the recorded timing (a video at `fps`
    plays in real time); with `speed` (m/s) at constant speed along the path, one sample
    per 1/fps s; with `frames` N samples evenly spaced in time. Views are named
    `<camera>_<index:05d>` and carry the sample time.

    Raises: ValueError for fewer than 2 keyframes, equal timestamps, fps/speed/frames
        not positive, or both `speed` and `frames`.
    """
    cam_name = _check_camera_name(scene, camera, "--camera")
    keys = sorted((f for f in _frames(scene, split) if f.camera == cam_name), key=lambda f: f.timestamp)
    where = f"{scene.root}: camera {cam_name!r} ({split} frames)"
    if len(keys) < 2:
        raise ValueError(f"{where}: interpolation needs at least 2 recorded poses, got {len(keys)}")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"--fps must be positive, got {fps}")
    if speed is not None and frames is not None:
        raise ValueError("give --speed or --frames, not both")
    c2w = np.stack([f.cam_to_world for f in keys])
    t = np.array([f.timestamp for f in keys], dtype=np.float64)
    if np.any(np.diff(t) <= 0):
        raise ValueError(f"{where}: two recorded poses share a timestamp; cannot order the path")
    if frames is not None:
        if frames < 1:
            raise ValueError(f"--frames must be >= 1, got {frames}")
        query = np.linspace(t[0], t[-1], int(frames))
    elif speed is not None:
        if not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"--speed must be positive (m/s), got {speed}")
        dense_t, length = path_length_samples(c2w, t)
        s = np.arange(0.0, length[-1] + 1e-9, speed / fps)
        query = np.interp(s, length, dense_t)
    else:
        query = t[0] + np.arange(int(math.floor((t[-1] - t[0]) * fps + 1e-9)) + 1) / fps
    poses = interpolate_poses(c2w, t, query, where)
    cam = _camera(scene, cam_name, downscale)
    return [View(f"{cam_name}_{i:05d}", cam, p, float(tq)) for i, (p, tq) in enumerate(zip(poses, query))]


# ----------------------------------------------------------------------------
# nerfstudio camera-path JSON
# ----------------------------------------------------------------------------


def _fov_focal(fov_deg: float, height: int) -> float:
    """Focal length in pixels of a vertical field of view (degrees) over `height` rows."""
    return height / 2.0 / math.tan(math.radians(fov_deg) / 2.0)


def read_camera_path(path: str | Path, downscale: float | None = None) -> tuple[list[View], float | None]:
    """Read a nerfstudio camera-path JSON (what nerfstudio's viewer exports and
    `ns-render camera-path --camera-path-filename` reads).

    Fields read (the rest, e.g. `keyframes`, `smoothness_value`, `is_cycle`, `crop` and
    each camera's `aspect`, are ignored, as ns-render ignores them):
      - `render_width`, `render_height` (positive integers): the image size of every view.
      - `camera_type` (optional): only "perspective" (nerfstudio's default) is accepted.
      - `camera_path`: a non-empty list of cameras, each with
          `camera_to_world`: 16 numbers, the 4x4 camera-to-world matrix row-major (a nested
            4x4 or 3x4 list is accepted too), camera axes OpenGL (x right, y up, z back), as
            nerfstudio writes them; converted to dnmp's OpenCV axes by
            cam_to_world = M @ diag(1, -1, -1, 1), in the file's world frame, which dnmp takes
            as the scene's world frame (metres, world_offset subtracted);
          `fov`: vertical field of view in degrees (0 < fov < 180), as three.js: fx = fy =
            render_height / 2 / tan(fov / 2);
      - `fps` (optional, > 0), else len(camera_path) / `seconds` when `seconds` > 0.
    The principal point is the image centre, as nerfstudio's (cx = W / 2 with pixel centres
    at +0.5), i.e. cx = W / 2 - 0.5, cy = H / 2 - 0.5 in dnmp's convention (DESIGN.md).

    Args:
        path: the JSON file; downscale: >= 1, renders W / f x H / f with scaled intrinsics.
    Returns:
        (views named `path_<index:05d>` with camera name "path", fps or None).
    Raises:
        ValueError (one line naming the file and the field): unreadable JSON, a missing or
            wrong-typed field, NaN/Inf or a non-rigid pose, an unsupported camera type.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise ValueError(f"{p}: cannot read the camera path ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: not a JSON file ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a camera path is a JSON object with render_width, render_height "
                         f"and camera_path; got {type(data).__name__}")
    size = []
    for key in ("render_width", "render_height"):
        v = data.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or int(v) < 1:
            raise ValueError(f"{p}: {key} must be a positive integer, got {v!r}")
        size.append(int(v))
    width, height = size
    ctype = data.get("camera_type", "perspective")
    if ctype not in CAMERA_PATH_TYPES:
        raise ValueError(f"{p}: camera_type {ctype!r} is not supported (dnmp renders pinhole "
                         f"cameras: {', '.join(CAMERA_PATH_TYPES)})")
    cams = data.get("camera_path")
    if not isinstance(cams, list) or not cams:
        raise ValueError(f"{p}: camera_path must be a non-empty list of cameras, got {cams!r:.60}")
    views = []
    for i, c in enumerate(cams):
        where = f"camera_path[{i}]"
        if not isinstance(c, dict) or "camera_to_world" not in c or "fov" not in c:
            raise ValueError(f"{p}: {where} must be an object with camera_to_world and fov")
        try:
            m = np.asarray(c["camera_to_world"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{p}: {where}.camera_to_world is not a list of numbers") from None
        if m.shape == (16,):
            m = m.reshape(4, 4)
        elif m.shape == (12,):
            m = m.reshape(3, 4)
        if m.shape not in ((4, 4), (3, 4)):
            raise ValueError(f"{p}: {where}.camera_to_world must hold 16 numbers (4x4 row-major), "
                             f"got shape {m.shape}")
        gl = check_rigid(m, p, f"{where}.camera_to_world")
        fov = c["fov"]
        if isinstance(fov, bool) or not isinstance(fov, (int, float)) or not 0.0 < float(fov) < 180.0:
            raise ValueError(f"{p}: {where}.fov must be a vertical field of view in degrees "
                             f"(0 < fov < 180), got {fov!r}")
        f = _fov_focal(float(fov), height)
        cam = Camera("path", width, height, fx=f, fy=f, cx=width / 2.0 - 0.5, cy=height / 2.0 - 0.5)
        if downscale and downscale != 1.0:
            cam = downscale_camera(cam, downscale)
        views.append(View(f"path_{i:05d}", cam, gl @ CV_TO_GL, 0.0))
    fps = data.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))
                            or not math.isfinite(fps) or fps <= 0):
        raise ValueError(f"{p}: fps must be a positive number, got {fps!r}")
    if fps is None:
        sec = data.get("seconds")
        if isinstance(sec, (int, float)) and not isinstance(sec, bool) and math.isfinite(sec) and sec > 0:
            fps = len(cams) / float(sec)
    for i, v in enumerate(views):
        v.time = i / fps if fps else float(i)
    return views, (float(fps) if fps else None)


def camera_path_json(views: list[View], fps: float, keyframes: list[dict] | None = None) -> dict:
    """The nerfstudio camera-path dict of `views` (all of one image size), the inverse of
    `read_camera_path` for centred cameras with fx == fy: `camera_to_world` row-major in
    OpenGL axes, `fov` vertical in degrees from fy and the height, `aspect` W / H,
    `render_width/height`, `fps`, `seconds`. A view's cx, cy and fx != fy are not
    representable and are dropped. `keyframes` (optional, the viewer's) is stored as given.

    Raises: ValueError for no views, views of different sizes, or fps <= 0.
    """
    if not views:
        raise ValueError("a camera path needs at least one view")
    w, h = views[0].camera.width, views[0].camera.height
    if any((v.camera.width, v.camera.height) != (w, h) for v in views):
        raise ValueError("all views of a camera path must have one image size")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = []
    for v in views:
        gl = np.asarray(v.cam_to_world, dtype=np.float64) @ CV_TO_GL
        fov = math.degrees(2.0 * math.atan(v.camera.height / 2.0 / v.camera.fy))
        path.append({"camera_to_world": [float(x) for x in gl.reshape(-1)], "fov": fov,
                     "aspect": w / h})
    out = {"camera_type": "perspective", "render_width": int(w), "render_height": int(h),
           "fps": float(fps), "seconds": len(views) / float(fps), "camera_path": path}
    if keyframes is not None:
        out["keyframes"] = keyframes
    return out


def write_camera_path(path: str | Path, views: list[View], fps: float,
                      keyframes: list[dict] | None = None) -> Path:
    """Write `camera_path_json(views, fps, keyframes)` to `path` atomically (temporary file
    + rename). Returns the path. Raises: as `camera_path_json`, OSError."""
    import os

    path = Path(path)
    text = json.dumps(camera_path_json(views, fps, keyframes), indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------
# One entry point for the command line
# ----------------------------------------------------------------------------


def parse_offset(text: str | None) -> tuple[float, float, float]:
    """`--offset X,Y,Z` (metres, rig frame: x right, y down, z forward) -> 3 floats.

    Raises: ValueError unless exactly 3 finite comma-separated numbers.
    """
    if text is None:
        return (0.0, 0.0, 0.0)
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"--offset must be X,Y,Z in metres (rig frame: x right, y down, z forward), "
                         f"got {text!r}")
    return vals


def parse_trajectory(values) -> tuple[str, str | None]:
    """`--trajectory KIND [FILE]` -> (kind, file). `path` needs a FILE, the others none.

    Raises: ValueError naming the known kinds.
    """
    values = list(values or ["dataset"])
    kind = values[0]
    if kind not in KINDS:
        raise ValueError(f"unknown trajectory {kind!r}; choose one of {', '.join(KINDS)} "
                         f"(path takes a FILE: --trajectory path camera_path.json)")
    if kind == "path":
        if len(values) != 2:
            raise ValueError("--trajectory path takes one FILE (a nerfstudio camera-path JSON)")
        return kind, values[1]
    if len(values) != 1:
        raise ValueError(f"--trajectory {kind} takes no further value, got {' '.join(values[1:])!r}")
    return kind, None


def make_trajectory(scene: Scene, kind: str, file: str | None = None, split: str | None = None,
                    offset=(0.0, 0.0, 0.0), rig_camera: str | None = None,
                    camera: str | None = None, fps: float | None = None,
                    speed: float | None = None, frames: int | None = None,
                    downscale: float | None = None) -> tuple[list[View], float | None]:
    """The views of trajectory `kind` and its natural frame rate (None for recorded frames).

    `split` defaults to "test" for dataset/shift and "all" for interpolate. Options that do
    not apply to `kind` (an offset without shift, speed/frames without interpolate) are
    refused rather than ignored.

    Raises: ValueError for an unknown kind, options of another kind, or the generators'
        errors.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown trajectory {kind!r}; choose one of {', '.join(KINDS)}")
    off = lane_offset(offset)
    if off.any() and kind != "shift":
        raise ValueError(f"--offset / --lane-shift / --lift move the recorded path: use them with "
                         f"--trajectory shift, not {kind}")
    if (speed is not None or frames is not None) and kind != "interpolate":
        raise ValueError(f"--speed / --frames set an interpolated path: use them with "
                         f"--trajectory interpolate, not {kind}")
    if camera is not None and kind != "interpolate":
        raise ValueError(f"--camera picks the keyframes of --trajectory interpolate, not {kind}")
    if rig_camera is not None and kind != "shift":
        raise ValueError(f"--rig-camera sets the frame of --trajectory shift's offset, not {kind}")
    if kind == "dataset":
        return dataset_views(scene, split or "test", downscale), None
    if kind == "shift":
        return shift_views(scene, split or "test", off, rig_camera, downscale), None
    if kind == "interpolate":
        fps = 30.0 if fps is None else fps
        return interpolate_views(scene, split or "all", camera, fps, speed, frames, downscale), fps
    if split is not None:
        raise ValueError("--split selects recorded frames; a camera path file has its own")
    return read_camera_path(file, downscale)

"""`dnmp view RUN`: an interactive web viewer of a trained run (viser).

The page (three.js, served by viser) shows the recorded cameras as frustums (training
frames blue, held-out frames orange; click one to jump to it) and, as its background,
the scene rendered by dnmp from the browser's camera:

- progressively: while the camera moves, each change is rendered at a preview size of
  about `preview_pixels` pixels (the browser stretches it to the window); once the camera
  has been still for `still_seconds`, it is rendered again at full size (the recorded
  camera's height, capped by the window's, at the window's aspect ratio) in horizontal
  strips sent as they finish, abandoned as soon as the camera moves again.
- the camera is pinhole with the browser's vertical field of view, principal point at
  the image centre; the viewer's pose is `cam_to_world` in OpenCV axes (viser's own
  convention: x right, y down, z forward), scene world frame, metres.

A camera path: "Add keyframe" stores the current view, "Save camera path" writes the
keyframes as a nerfstudio camera-path JSON (`dnmp.trajectory.write_camera_path`): a
spline through the keyframes (`interpolate_poses`, keyframes evenly spaced over the
path's duration, field of view interpolated linearly) sampled at the path's fps, at the
recorded camera's image size, with the keyframes themselves under `keyframes`. That file
is what `dnmp render RUN --trajectory path FILE` renders.

Frame times and sizes of the last renders are in `Viewer.stats` and shown on the page.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.scene import Camera
from .trajectory import View, interpolate_poses, matrix_to_quaternion, quaternion_to_matrix

TRAIN_COLOUR = (60, 120, 230)
TEST_COLOUR = (240, 140, 30)
KEYFRAME_COLOUR = (40, 200, 90)


def view_camera(fov: float, aspect: float, height: int, name: str = "viewer") -> Camera:
    """A centred pinhole camera `height` rows high with vertical field of view `fov`
    (radians) and width round(height * aspect) (at least 1): fx = fy = H / 2 / tan(fov / 2),
    cx = W / 2 - 0.5, cy = H / 2 - 0.5 (OpenCV pixel centres, DESIGN.md)."""
    height = max(1, int(height))
    width = max(1, int(round(height * aspect)))
    f = height / 2.0 / math.tan(fov / 2.0)
    return Camera(name, width, height, fx=f, fy=f, cx=width / 2.0 - 0.5, cy=height / 2.0 - 0.5)


def preview_height(aspect: float, pixels: int) -> int:
    """Rows of a preview image of about `pixels` pixels at `aspect` (width / height)."""
    return max(8, int(round(math.sqrt(pixels / max(aspect, 1e-3)))))


def pose_from_wxyz(wxyz, position) -> np.ndarray:
    """float64 [4, 4] cam_to_world (OpenCV axes) of a viser camera's wxyz and position."""
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(np.asarray(wxyz, dtype=np.float64))
    T[:3, 3] = np.asarray(position, dtype=np.float64)
    return T


def render_rows(renderer, cam: Camera, cam_to_world: np.ndarray, rows: tuple[int, int]):
    """Colour uint8 [r1 - r0, W, 3] of rows r0..r1 of `cam`'s image: the same pixels as the
    whole image's rows (a strip is the camera with cy shifted by -r0)."""
    import torch

    from .evaluate import render_camera, to_uint8

    r0, r1 = rows
    strip = Camera(cam.name, cam.width, r1 - r0, cam.fx, cam.fy, cam.cx, cam.cy - r0, channels=cam.channels)
    with torch.no_grad():
        return to_uint8(render_camera(renderer, strip, cam_to_world)["rgb"])


@dataclass
class _ClientState:
    version: int = 0
    rendered: int = -1
    level: str = "none"  # "preview" or "full" once rendered
    moved_at: float = 0.0
    wake: threading.Event = field(default_factory=threading.Event)
    closed: bool = False
    preview: np.ndarray | None = None  # the last preview image, the full render's first canvas


class Viewer:
    """The viser server of `dnmp view`.

    Args:
        run: an opened run (`dnmp.train.run.open_run`).
        host, port: where to listen (viser takes the next free port when `port` is taken).
        preview_pixels: pixel count of the images rendered while the camera moves.
        max_height: rows of the full-size image (default: the recorded camera's height).
        still_seconds: how long the camera must rest before the full-size render.
        strip_rows: rows per strip of the full-size render.
        path_file: where "Save camera path" writes (editable on the page).
    Raises:
        OSError: the port is taken (viser's message).
    """

    def __init__(self, run, host: str = "127.0.0.1", port: int = 8080, preview_pixels: int = 20000,
                 max_height: int | None = None, still_seconds: float = 0.3, strip_rows: int = 64,
                 path_file: str | Path | None = None):
        import viser

        if preview_pixels < 64:
            raise ValueError(f"--preview-pixels must be >= 64, got {preview_pixels}")
        self.run, self.renderer, self.scene = run, run.renderer, run.scene
        self.preview_pixels = int(preview_pixels)
        first = self.scene.frames_by_split("test") or self.scene.frames
        self.home = first[0]
        self.home_camera = self.scene.camera_of(self.home)
        self.max_height = int(max_height or self.home_camera.height)
        self.still_seconds = float(still_seconds)
        self.strip_rows = int(strip_rows)
        self.keyframes: list[tuple[np.ndarray, float]] = []  # (cam_to_world, vertical fov rad)
        self.stats = {"preview_ms": None, "preview_size": None, "full_ms": None, "full_size": None,
                      "frames_sent": 0}
        self.last_image: np.ndarray | None = None  # the last image sent to a browser
        self._lock = threading.Lock()  # one render at a time (the model is shared)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.host, self.port = host, self.server.get_port()
        self._setup_scene()
        self._setup_gui(Path(path_file) if path_file else Path(run.run_dir) / "camera_paths" / "viewer_path.json")
        self.server.on_client_connect(self._on_connect)

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "127.0.0.1", "::") else self.host
        return f"http://{host}:{self.port}"

    # -- scene --------------------------------------------------------------------
    def _setup_scene(self) -> None:
        sc = self.server.scene
        ups = np.stack([-f.cam_to_world[:3, 1] for f in self.scene.frames])  # camera -y = up
        up = ups.mean(0)
        self.up = up / max(np.linalg.norm(up), 1e-9)
        sc.set_up_direction(tuple(self.up))
        # frustums about a third of the spacing of consecutive recorded cameras
        centres = np.stack([f.cam_to_world[:3, 3] for f in sorted(self.scene.frames, key=lambda f: f.timestamp)])
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        steps = steps[steps > 1e-6]
        self.frustum_scale = float(np.clip(0.35 * np.median(steps), 0.03, 1.0)) if len(steps) else 0.3
        self.frustums = []
        for f in self.scene.frames:
            cam = self.scene.camera_of(f)
            handle = sc.add_camera_frustum(
                f"/recorded/{f.name}", fov=2 * math.atan(cam.height / 2 / cam.fy), aspect=cam.width / cam.height,
                scale=self.frustum_scale, wxyz=tuple(matrix_to_quaternion(f.cam_to_world[:3, :3])),
                position=tuple(f.cam_to_world[:3, 3]),
                color=TEST_COLOUR if f.split == "test" else TRAIN_COLOUR, thickness=2.0,
                thickness_units="screen")
            handle.on_click(self._jump_to(f.cam_to_world))
            self.frustums.append(handle)
        ic = self.server.initial_camera
        c2w = self.home.cam_to_world
        ic.fov = 2 * math.atan(self.home_camera.height / 2 / self.home_camera.fy)
        ic.position = tuple(c2w[:3, 3])
        ic.look_at = tuple(c2w[:3, 3] + 10.0 * c2w[:3, 2])
        ic.up = tuple(self.up)

    def _jump_to(self, c2w: np.ndarray):
        def cb(event) -> None:
            with event.client.atomic():
                event.client.camera.position = tuple(c2w[:3, 3])
                event.client.camera.wxyz = tuple(matrix_to_quaternion(c2w[:3, :3]))
        return cb

    # -- gui ----------------------------------------------------------------------
    def _setup_gui(self, path_file: Path) -> None:
        gui = self.server.gui
        self.status = gui.add_markdown("waiting for a browser camera ...")
        gui.add_markdown(f"**{self.scene.name}**: {len(self.scene.frames)} recorded frames "
                         f"(blue: training, orange: held out; click one to jump there)")
        self.preview_gui = gui.add_number("Preview pixels", self.preview_pixels, min=64, step=1000,
                                          hint="pixels rendered while the camera moves")
        self.preview_gui.on_update(lambda _: setattr(self, "preview_pixels", int(self.preview_gui.value)))
        shown = gui.add_checkbox("Show recorded cameras", True)

        @shown.on_update
        def _(_event) -> None:
            for h in self.frustums:
                h.visible = bool(shown.value)
        add = gui.add_button("Add keyframe")
        clear = gui.add_button("Clear keyframes")
        self.seconds_gui = gui.add_number("Path seconds", 5.0, min=0.1, step=0.5)
        self.fps_gui = gui.add_number("Path fps", 30.0, min=1.0, step=1.0)
        self.path_gui = gui.add_text("Camera path file", str(path_file))
        save = gui.add_button("Save camera path")
        self.keyframe_info = gui.add_markdown("0 keyframes")
        add.on_click(self._add_keyframe)
        clear.on_click(self._clear_keyframes)
        save.on_click(self._save_path)

    def _add_keyframe(self, event) -> None:
        cam = event.client.camera
        c2w = pose_from_wxyz(cam.wxyz, cam.position)
        self.keyframes.append((c2w, float(cam.fov)))
        i = len(self.keyframes) - 1
        self.server.scene.add_camera_frustum(
            f"/keyframes/{i:03d}", fov=float(cam.fov), aspect=float(cam.aspect), scale=self.frustum_scale,
            wxyz=tuple(matrix_to_quaternion(c2w[:3, :3])), position=tuple(c2w[:3, 3]),
            color=KEYFRAME_COLOUR, thickness=2.0, thickness_units="screen")
        self.keyframe_info.content = f"{len(self.keyframes)} keyframes"

    def _clear_keyframes(self, event) -> None:
        for i in range(len(self.keyframes)):
            self.server.scene.remove_by_name(f"/keyframes/{i:03d}")
        self.keyframes.clear()
        self.keyframe_info.content = "0 keyframes"

    def keyframe_path(self, seconds: float, fps: float) -> list[View]:
        """The views "Save camera path" writes: a spline through the keyframes, evenly spaced
        over `seconds`, sampled at `fps`, at the recorded camera's size (one view for one
        keyframe). Raises ValueError without keyframes or for seconds/fps <= 0."""
        if not self.keyframes:
            raise ValueError("no keyframes: press 'Add keyframe' first")
        if not (seconds > 0 and fps > 0):
            raise ValueError(f"path seconds and fps must be positive, got {seconds}, {fps}")
        h = self.home_camera.height
        aspect = self.home_camera.width / h
        poses = np.stack([k[0] for k in self.keyframes])
        fovs = np.array([k[1] for k in self.keyframes])
        if len(poses) == 1:
            return [View("path_00000", view_camera(fovs[0], aspect, h, "path"), poses[0], 0.0)]
        times = np.linspace(0.0, seconds, len(poses))
        query = np.arange(int(math.floor(seconds * fps + 1e-9)) + 1) / fps
        dense = interpolate_poses(poses, times, query, "viewer keyframes")
        fov = np.interp(query, times, fovs)
        return [View(f"path_{i:05d}", view_camera(fv, aspect, h, "path"), p, float(t))
                for i, (p, fv, t) in enumerate(zip(dense, fov, query))]

    def save_path(self, path: str | Path, seconds: float, fps: float) -> Path:
        """Write `keyframe_path(seconds, fps)` as a camera-path JSON at `path` (folders made,
        atomic). Returns the path. Raises ValueError, OSError."""
        from .trajectory import CV_TO_GL, write_camera_path

        views = self.keyframe_path(seconds, fps)
        keys = [{"matrix": [float(x) for x in (c2w @ CV_TO_GL).reshape(-1)], "fov": math.degrees(fv),
                 "time": float(t)} for (c2w, fv), t in
                zip(self.keyframes, np.linspace(0.0, seconds, len(self.keyframes)))]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_camera_path(path, views, fps, keyframes=keys)

    def _save_path(self, event) -> None:
        try:
            p = self.save_path(self.path_gui.value, float(self.seconds_gui.value), float(self.fps_gui.value))
            msg, colour = f"wrote {p} ({len(self.keyframes)} keyframes); render it with " \
                          f"`dnmp render {self.run.run_dir} --trajectory path {p}`", "green"
        except (ValueError, OSError) as exc:
            msg, colour = f"not saved: {' '.join(str(exc).split())}", "red"
        print(msg, flush=True)
        if event.client is not None:
            event.client.add_notification("Camera path", msg, auto_close_seconds=8.0, color=colour)

    # -- rendering ----------------------------------------------------------------
    def _on_connect(self, client) -> None:
        state = _ClientState()

        @client.camera.on_update
        def _(_cam) -> None:
            state.version += 1
            state.moved_at = time.monotonic()
            state.wake.set()

        self.server.on_client_disconnect(lambda c: setattr(state, "closed", True) if c is client else None)
        t = threading.Thread(target=self._client_loop, args=(client, state), daemon=True,
                             name=f"dnmp-view-{client.client_id}")
        self._threads.append(t)
        t.start()

    def _snapshot(self, client):
        cam = client.camera
        if cam.update_timestamp == 0.0:
            return None
        return pose_from_wxyz(cam.wxyz, cam.position), float(cam.fov), float(cam.aspect), int(cam.image_height)

    def _send(self, client, img: np.ndarray) -> None:
        client.scene.set_background_image(img, format="jpeg", jpeg_quality=85)
        self.stats["frames_sent"] += 1
        self.last_image = img

    def _show_status(self) -> None:
        s = self.stats
        parts = []
        if s["preview_ms"] is not None:
            parts.append(f"moving: {s['preview_size'][0]}x{s['preview_size'][1]} in {s['preview_ms']:.0f} ms")
        if s["full_ms"] is not None:
            parts.append(f"still: {s['full_size'][0]}x{s['full_size'][1]} in {s['full_ms'] / 1000:.1f} s")
        self.status.content = "; ".join(parts) or "rendering ..."

    def _client_loop(self, client, state: _ClientState) -> None:
        while not (state.closed or self._stop.is_set()):
            state.wake.wait(timeout=0.05)
            state.wake.clear()
            snap = self._snapshot(client)
            if snap is None:
                continue
            version = state.version
            c2w, fov, aspect, window_h = snap
            try:
                if version != state.rendered:
                    cam = view_camera(fov, aspect, preview_height(aspect, self.preview_pixels))
                    t0 = time.perf_counter()
                    with self._lock:
                        img = render_rows(self.renderer, cam, c2w, (0, cam.height))
                    self.stats.update(preview_ms=1000 * (time.perf_counter() - t0),
                                      preview_size=(cam.width, cam.height))
                    self._send(client, img)
                    state.rendered, state.level, state.preview = version, "preview", img
                    self._show_status()
                elif state.level == "preview" and time.monotonic() - state.moved_at >= self.still_seconds:
                    h = min(self.max_height, window_h) if window_h > 0 else self.max_height
                    cam = view_camera(fov, aspect, h)
                    self._render_full(client, state, cam, c2w, version)
                elif state.level == "preview":
                    state.wake.wait(timeout=self.still_seconds)
            except Exception as exc:  # a dropped connection ends this client's loop
                if state.closed or self._stop.is_set():
                    return
                print(f"dnmp view: render failed: {' '.join(str(exc).split())}", flush=True)
                time.sleep(0.5)

    def _render_full(self, client, state: _ClientState, cam: Camera, c2w: np.ndarray, version: int) -> None:
        import cv2

        w, h = cam.width, cam.height
        prev = state.preview
        canvas = np.zeros((h, w, 3), np.uint8) if prev is None else \
            cv2.resize(prev, (w, h), interpolation=cv2.INTER_LINEAR)
        t0 = time.perf_counter()
        for r0 in range(0, h, self.strip_rows):
            if state.version != version or state.closed or self._stop.is_set():
                return  # the camera moved: the next preview replaces this render
            with self._lock:
                canvas[r0:r0 + self.strip_rows] = render_rows(self.renderer, cam, c2w,
                                                              (r0, min(h, r0 + self.strip_rows)))
            self._send(client, canvas)
        self.stats.update(full_ms=1000 * (time.perf_counter() - t0), full_size=(w, h))
        state.level = "full"
        self._show_status()

    def stop(self) -> None:
        self._stop.set()
        self.server.stop()


def serve(run, host: str = "127.0.0.1", port: int = 8080, preview_pixels: int = 20000,
          max_height: int | None = None, path_file: str | Path | None = None,
          ready=print) -> None:
    """`dnmp view`: start a `Viewer`, print its URL, serve until Ctrl-C / SIGTERM.

    Raises: ValueError for bad options; OSError when the port is taken.
    """
    viewer = Viewer(run, host=host, port=port, preview_pixels=preview_pixels, max_height=max_height,
                    path_file=path_file)
    ready(f"dnmp view: serving {run.scene.name} at {viewer.url} (Ctrl-C to stop; from another "
          f"machine: ssh -L {viewer.port}:localhost:{viewer.port} THIS_HOST, then open "
          f"http://localhost:{viewer.port})")
    try:
        while True:
            time.sleep(0.5)
    finally:
        viewer.stop()

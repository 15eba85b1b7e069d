"""`dnmp view`: the viewer's camera maths, its camera-path file, and the page in a real
headless browser (Debian's chromium, driven over the DevTools protocol)."""

import base64
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from dnmp.evaluate import render_camera, to_uint8
from dnmp.train.run import open_run
from dnmp.trajectory import read_camera_path

viser = pytest.importorskip("viser", reason="viser is not installed (pip install viser; install.sh does)")
from dnmp.viewer import Viewer, preview_height, render_rows, view_camera  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tiny_run):
    return open_run(tiny_run)


def test_view_camera_and_strips(run):
    cam = view_camera(math.radians(60), 16 / 9, 90)
    assert (cam.width, cam.height) == (160, 90)
    assert cam.fy == pytest.approx(45 / math.tan(math.radians(30)))
    assert (cam.cx, cam.cy) == (79.5, 44.5)
    h = preview_height(16 / 9, 20000)
    assert abs(h * round(h * 16 / 9) - 20000) < 300
    # a full-size render sent in strips is the whole image's rows
    f = run.scene.frames[0]
    cam = run.scene.camera_of(f)
    whole = to_uint8(render_camera(run.renderer, cam, f.cam_to_world)["rgb"])
    strips = np.concatenate([render_rows(run.renderer, cam, f.cam_to_world, (r, min(cam.height, r + 7)))
                             for r in range(0, cam.height, 7)])
    assert strips.shape == whole.shape
    assert np.abs(strips.astype(int) - whole.astype(int)).max() <= 1


def test_saved_path_renders_through_the_keyframes(run, tmp_path):
    viewer = Viewer(run, port=free_port())
    try:
        frames = sorted(run.scene.frames, key=lambda f: f.timestamp)
        fov = 2 * math.atan(30 / 2 / run.scene.camera_of(frames[0]).fy)
        with pytest.raises(ValueError, match="no keyframes"):
            viewer.save_path(tmp_path / "p.json", 2.0, 10.0)
        viewer.keyframes = [(frames[0].cam_to_world, fov), (frames[-1].cam_to_world, fov)]
        path = viewer.save_path(tmp_path / "sub" / "p.json", 2.0, 10.0)
        views, fps = read_camera_path(path)
        assert fps == 10 and len(views) == 21
        assert np.abs(views[0].cam_to_world - frames[0].cam_to_world).max() < 1e-12
        assert np.abs(views[-1].cam_to_world - frames[-1].cam_to_world).max() < 1e-12
        assert views[0].camera.fy == pytest.approx(run.scene.camera_of(frames[0]).fy)
        assert len(json.loads(path.read_text())["keyframes"]) == 2
    finally:
        viewer.stop()


def _cdp(ws, method, _ids=iter(range(1, 10 ** 6)), **params):
    """One DevTools call on a page's websocket; returns its result (events are skipped)."""
    i = next(_ids)
    ws.send(json.dumps({"id": i, "method": method, "params": params}))
    while True:
        msg = json.loads(ws.recv(timeout=60))
        if msg.get("id") == i:
            if "error" in msg:
                raise RuntimeError(f"{method}: {msg['error']}")
            return msg["result"]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium; "
                                             ".ci/run installs it)")
def test_page_shows_the_rendered_scene_in_a_headless_browser(run, tmp_path):
    from websockets.sync.client import connect

    viewer = Viewer(run, port=free_port(), preview_pixels=2000)
    profile = Path(tempfile.mkdtemp(prefix="dnmp_chromium_"))
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
         "--enable-unsafe-swiftshader", "--no-first-run", "--window-size=1000,700",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
        devtools = int(port_file.read_text().split()[0])
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{devtools}/json/list", timeout=30).read())
        page = next(p for p in pages if p["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            _cdp(ws, "Page.enable")
            _cdp(ws, "Page.navigate", url=viewer.url)
            # wait for the server to render from the browser's camera and send the image,
            # preview first, then the full size once the camera rests
            deadline = time.monotonic() + 240
            while viewer.stats["full_ms"] is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert viewer.stats["frames_sent"] > 0, "the server never rendered for the browser"
            assert viewer.stats["preview_size"] is not None and viewer.stats["full_size"] is not None
            time.sleep(3.0)  # let the page draw the last image
            shot = base64.b64decode(_cdp(ws, "Page.captureScreenshot", format="png")["data"])
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=20)
        except subprocess.TimeoutExpired:
            browser.kill()
        viewer.stop()
        shutil.rmtree(profile, ignore_errors=True)
    img = iio.imread(io.BytesIO(shot))[..., :3].astype(np.float64)
    (tmp_path / "page.png").write_bytes(shot)
    # the scene fills the window behind the panels: the left-hand part, below the toasts,
    # shows the rendered image (upscaled, under thin frustum lines), not a blank page
    region = img[200:650, 20:600]
    assert region.std() > 10, "blank page"
    sent = np.asarray(viewer.last_image)  # the last image the server sent this browser
    q = lambda a: np.unique((a.reshape(-1, 3) // 16).astype(int) @ [256, 16, 1])  # noqa: E731
    seen = (region.reshape(-1, 3) // 16).astype(int) @ [256, 16, 1]
    assert np.isin(seen, q(sent)).mean() > 0.8, "the page does not show the server's image"
    assert not np.isin([255 // 16 * 273], q(sent))  # white (an empty page) is not a render colour

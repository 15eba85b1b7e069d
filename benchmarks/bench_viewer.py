"""Preview timing of `dnmp view`: `render_camera` at the viewer's preview sizes (20,000 and 10,000
pixels, KITTI and 16:9 aspect) from the first held-out frame's pose, median of 5 after a warm-up.

Usage: python benchmarks/bench_viewer.py RUN_OR_CHECKPOINT"""
import time, statistics, sys, math, torch
from dnmp.train.run import open_run
from dnmp.viewer import view_camera, preview_height
from dnmp.evaluate import render_camera
run = open_run(sys.argv[1]); r = run.renderer
f = run.scene.frames_by_split("test")[0]; cam0 = run.scene.camera_of(f)
fov = 2 * math.atan(cam0.height / 2 / cam0.fy)
for aspect_name, aspect in (("kitti", cam0.width / cam0.height), ("16:9", 16 / 9)):
    for px in (20000, 10000):
        cam = view_camera(fov, aspect, preview_height(aspect, px))
        render_camera(r, cam, f.cam_to_world)
        ts = []
        for _ in range(5):
            t = time.perf_counter(); render_camera(r, cam, f.cam_to_world); ts.append(time.perf_counter() - t)
        print(f"{aspect_name} {px} px ({cam.width}x{cam.height}): median {1e3*statistics.median(ts):.0f} ms -> {1/statistics.median(ts):.1f} updates/s; runs {[round(1e3*t) for t in ts]}")

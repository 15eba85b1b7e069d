"""Checks that catch pose and calibration convention bugs before a scene is
written: :func:`projection_sanity` (points land in the images, cameras stand
over the ground) and :func:`scan_agreement` (scans of different frames agree)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dnmp.converters.capture import ConversionError
from dnmp.converters.projection import in_view_mask, world_to_cam_points, zbuffer_depth
from dnmp.data.scene import Frame


def _sphere_directions(n: int = 256) -> np.ndarray:
    """``n`` unit vectors spread evenly over the sphere (Fibonacci), plus the six
    axis directions."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    a = np.pi * (1 + 5 ** 0.5) * k
    r = np.sqrt(1 - z * z)
    return np.concatenate([np.eye(3), -np.eye(3), np.stack([r * np.cos(a), r * np.sin(a), z], 1)])


_DIRECTIONS = _sphere_directions()


def _slab_density(p: np.ndarray, dirs: np.ndarray, lo: float, hi: float, band: float) -> np.ndarray:
    """For each direction of ``dirs`` [D, 3], the fraction of ``p`` in the
    densest slab ``band`` thick perpendicular to it, ``lo`` to ``hi`` along it."""
    step = band / 2
    nb = int(np.ceil((hi - lo) / step))
    b = np.floor((p @ dirs.T - lo) / step).astype(np.int64)  # [N, D]
    ok = (b >= 0) & (b < nb)
    idx = (np.arange(len(dirs))[None, :] * nb + b)[ok]
    h = np.bincount(idx, minlength=len(dirs) * nb).reshape(len(dirs), nb)
    return (h[:, :-1] + h[:, 1:]).max(1) / len(p)


def _cone(d: np.ndarray, max_deg: float = 10.0, rings: int = 5, per_ring: int = 16) -> np.ndarray:
    """Unit directions within ``max_deg`` of ``d`` (``d`` first)."""
    u = np.cross(d, [1.0, 0, 0] if abs(d[0]) < 0.9 else [0, 1.0, 0])
    u /= np.linalg.norm(u)
    v = np.cross(d, u)
    out = [d]
    for r in range(1, rings + 1):
        t = np.radians(max_deg * r / rings)
        for a in np.arange(per_ring) * 2 * np.pi / per_ring:
            out.append(np.cos(t) * d + np.sin(t) * (np.cos(a) * u + np.sin(a) * v))
    return np.array(out)


def ground_plane(xyz_cam: np.ndarray, radius: float = 12.0, lo: float = 0.3, hi: float = 4.0,
                 band: float = 0.4, max_points: int = 20000) -> tuple:
    """Where the ground is, seen from a camera: over directions d (~260 over
    the sphere, then refined within 10 degrees of the best), the fraction of
    the points within ``radius`` metres that lie in the densest slab ``band``
    metres thick perpendicular to d, ``lo`` to ``hi`` metres along d (a floor
    the camera stands over is such a slab). Returns (the densest direction,
    camera frame unit [3]; its density; the density along camera +y, which is
    "down" in OpenCV). Without nearby points: (+y, 0, 0)."""
    p = np.asarray(xyz_cam, np.float64)
    p = p[np.linalg.norm(p, axis=1) <= radius]
    if len(p) > max_points:
        p = p[:: int(np.ceil(len(p) / max_points))]
    if not len(p):
        return np.array([0, 1.0, 0]), 0.0, 0.0
    dens = _slab_density(p, _DIRECTIONS, lo, hi, band)
    local = _cone(_DIRECTIONS[int(np.argmax(dens))])
    ld = _slab_density(p, local, lo, hi, band)
    best = int(np.argmax(ld))
    return local[best], float(ld[best]), float(dens[1])


def projection_sanity(
    xyz_world: np.ndarray,
    frames: Sequence[Frame],
    cameras: dict,
    max_depth: float = 80.0,
    near: float = 0.5,
    radius: float | None = None,
    min_fraction: float = 0.2,
    where="projection check",
    verbose: bool = True,
    ground: bool = True,
    min_ground: float = 0.25,
    max_tilt: float = 35.0,
) -> dict:
    """Project a world-frame cloud into ``frames`` and measure, per frame, the
    fraction of the points near and in front of the camera (camera z in
    (near, max_depth] and within ``radius`` of the camera centre, default
    max_depth) that land inside the image, plus their median depth.

    A correct forward-facing camera over a fused drive cloud sees a large part
    of what is in front of it; a convention bug (inverted pose, wrong
    extrinsic, transposed rotation) sends most points out of the image or
    behind the camera. Raises ConversionError when the mean fraction is below
    ``min_fraction`` or no point is seen at a plausible depth.

    When the points surround the camera (surround LiDAR) that fraction barely
    tells a correct camera from a rotated one, so with ``ground`` (metric
    LiDAR clouds) each frame also finds the ground (:func:`ground_plane`):
    when the densest plane 0.3-4 m from the camera holds at least
    ``min_ground`` of the points within 12 m and its direction is more than
    ``max_tilt`` degrees from camera +y (OpenCV y points down), the camera is
    upside down, rolled or pitched, and ConversionError is raised. Clouds
    without such a plane (no ground near the cameras) are not judged. A yaw
    error (rotation about the camera's own y axis) keeps +y pointing down and
    cannot be seen from the geometry alone.
    Returns {"per_frame": [(name, fraction, n_in_image, median_depth)], "mean": float,
    "ground": [(name, angle of the densest plane from +y in degrees, its density,
    density along +y)]}.
    """
    radius = max_depth if radius is None else radius
    xyz_world = np.asarray(xyz_world, np.float64)
    per, grounds, bad_ground = [], [], []
    for f in frames:
        cam = cameras[f.camera]
        pc = world_to_cam_points(f, xyz_world)
        if ground:
            d, dens, below = ground_plane(pc)
            tilt = float(np.degrees(np.arccos(np.clip(d[1], -1, 1))))
            grounds.append((f.name, tilt, dens, below))
            if dens >= min_ground and tilt > max_tilt:
                bad_ground.append(grounds[-1])
        near_pts = (np.linalg.norm(pc, axis=1) <= radius) & (pc[:, 2] > near) & (pc[:, 2] <= max_depth)
        n_front = int(near_pts.sum())
        inimg = in_view_mask(pc, cam, near, max_depth) & near_pts
        n_in = int(inimg.sum())
        frac = n_in / n_front if n_front else 0.0
        med = float(np.median(pc[inimg, 2])) if n_in else float("nan")
        per.append((f.name, frac, n_in, med))
        if verbose:
            print(f"  sanity {f.name}: {n_in}/{n_front} points in front land in the image "
                  f"({100 * frac:.1f}%), median depth {med:.1f} m")
    mean = float(np.mean([p[1] for p in per])) if per else 0.0
    if not per or mean < min_fraction or any(p[2] == 0 for p in per):
        raise ConversionError(
            where,
            f"only {100 * mean:.1f}% of the points in front of the cameras project into the images "
            f"(expected >= {100 * min_fraction:.0f}%): pose/extrinsic convention bug or wrong calibration",
        )
    if bad_ground:
        name, tilt, dens, below = bad_ground[0]
        raise ConversionError(
            where,
            f"{len(bad_ground)} of {len(frames)} cameras do not stand over the ground: in {name} the densest "
            f"plane near the camera ({100 * dens:.0f}% of the points within 12 m) lies {tilt:.0f} deg from camera "
            f"+y (down; expected <= {max_tilt:g} deg): rotated camera, pose/extrinsic convention bug or wrong "
            "calibration",
        )
    return {"per_frame": per, "mean": mean, "ground": grounds}


def scan_agreement(
    frames: Sequence[Frame],
    cameras: dict,
    own: Sequence[np.ndarray],
    others: Sequence[np.ndarray],
    max_depth: float = 80.0,
    rel_tol: float = 0.05,
    warn_below: float = 0.7,
    fail_below: float = 0.3,
    where="scan agreement check",
    verbose: bool = True,
    what: str = "scans",
) -> dict:
    """Multi-scan pose check: for each frame, z-buffer its own scan (``own[k]``,
    world points) and all the other scans (``others[k]``) into it, and measure
    the fraction of pixels seen by both whose depths agree within ``rel_tol``.
    Correct poses give ~0.9 on KITTI; inverted or wrong poses put the other
    scans' surfaces at other depths. Prints a warning below ``warn_below`` and
    raises ConversionError when the mean is below ``fail_below``. ``what`` names
    the clouds in the printed lines (e.g. "stereo pairs")."""
    per = []
    for f, a, b in zip(frames, own, others):
        cam = cameras[f.camera]
        da = zbuffer_depth(world_to_cam_points(f, a), cam, 0.5, max_depth)
        db = zbuffer_depth(world_to_cam_points(f, b), cam, 0.5, max_depth)
        m = (da > 0) & (db > 0)
        rel = np.abs(db[m] - da[m]) / da[m]
        frac = float(np.mean(rel < rel_tol)) if m.any() else 0.0
        med = float(np.median(rel)) if m.any() else float("nan")
        per.append((f.name, frac, int(m.sum()), med))
        if verbose:
            print(f"  {what} agree {f.name}: {100 * frac:.1f}% of {int(m.sum())} shared pixels within "
                  f"{100 * rel_tol:.0f}% (median {100 * med:.1f}%)")
    mean = float(np.mean([p[1] for p in per])) if per else 0.0
    if per and mean < fail_below:
        raise ConversionError(
            where, f"the scans disagree: only {100 * mean:.1f}% of the shared pixels have depths within "
            f"{100 * rel_tol:.0f}% (expected >= {100 * fail_below:.0f}%): poses inverted, wrong or in another convention",
        )
    if per and mean < warn_below:
        print(f"warning: {where}: only {100 * mean:.1f}% of shared pixels agree between scans; "
              "the poses look inaccurate (for KITTI 00 frames 0-14 the official GT is known to be off)")
    return {"per_frame": per, "mean": mean}

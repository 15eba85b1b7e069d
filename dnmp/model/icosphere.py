"""Ico-sphere template meshes (the primitive shape of DNMP, paper Sec. 3.1)."""

from __future__ import annotations

import functools
import math

import torch


@functools.lru_cache(maxsize=8)
def _ico_sphere_cached(level: int):
    t = (1.0 + math.sqrt(5.0)) / 2.0
    verts = [
        (-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0),
        (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
        (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1),
    ]
    faces = [
        (0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11),
        (1, 5, 9), (5, 11, 4), (11, 10, 2), (10, 7, 6), (7, 1, 8),
        (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9),
        (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1),
    ]
    verts = [tuple(c / math.sqrt(1 + t * t) for c in v) for v in verts]
    for _ in range(level):
        midpoint: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in midpoint:
                va, vb = verts[a], verts[b]
                m = [(x + y) / 2 for x, y in zip(va, vb)]
                n = math.sqrt(sum(c * c for c in m))
                verts.append(tuple(c / n for c in m))
                midpoint[key] = len(verts) - 1
            return midpoint[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return (
        torch.tensor(verts, dtype=torch.float64),
        torch.tensor(faces, dtype=torch.int64),
    )


def ico_sphere(level: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit ico-sphere centred at the origin.

    Args:
        level: number of loop subdivisions of the icosahedron (0: 12 vertices /
            20 faces; 1: 42 / 80, the DNMP primitive; 2: 162 / 320).

    Returns:
        verts: float32 [V, 3] on the unit sphere.
        faces: int64 [F, 3], counter-clockwise seen from outside (outward normals).

    Raises:
        ValueError: if level is negative.
    """
    if level < 0:
        raise ValueError(f"ico_sphere level must be >= 0, got {level}")
    v, f = _ico_sphere_cached(int(level))
    return v.float().clone(), f.clone()

"""Small synthetic scenes for the ops tests (shared helpers, no fixtures)."""

from __future__ import annotations


import torch


def camera(H: int, W: int, f: float = 20.0, dtype=torch.float32):
    """Pinhole camera at the origin looking down +z, principal point at the image centre."""
    K = torch.tensor([[f, 0.0, (W - 1) / 2], [0.0, f, (H - 1) / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    return K, torch.eye(4, dtype=dtype)


def look_at(eye, target, dtype=torch.float32):
    """world_to_cam for an OpenCV camera at `eye` looking at `target` (y down)."""
    eye = torch.as_tensor(eye, dtype=torch.float64)
    z = torch.as_tensor(target, dtype=torch.float64) - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    if x.norm() < 1e-6:
        x = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M.to(dtype)


def random_soup(seed: int, n_faces: int = 60, n_verts: int = 50, centre=(0.0, 0.0, 3.0), spread=0.8,
                dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    verts = torch.randn(n_verts, 3, generator=g, dtype=torch.float64) * spread + torch.tensor(centre)
    faces = torch.randint(0, n_verts, (n_faces, 3), generator=g)
    return verts.to(dtype), faces


def grid_mesh(nx: int, ny: int, x0: float, y0: float, step: float, z: float, flip_alternate: bool = False,
              jitter: float = 0.0, seed: int = 0, diagonal_mix: bool = True):
    """Flat grid of (nx x ny) cells in the plane z = const, two triangles per cell.
    Optionally jittered in-plane, with mixed windings and mixed diagonal directions."""
    g = torch.Generator().manual_seed(seed)
    xs = x0 + step * torch.arange(nx + 1, dtype=torch.float64)
    ys = y0 + step * torch.arange(ny + 1, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    xy = torch.stack([gx, gy], -1).reshape(-1, 2)
    if jitter:
        inner = torch.zeros(ny + 1, nx + 1, dtype=torch.bool)
        inner[1:-1, 1:-1] = True
        xy = xy + inner.reshape(-1, 1) * (torch.rand(xy.shape, generator=g, dtype=torch.float64) - 0.5) * jitter
    verts = torch.cat([xy, torch.full((xy.shape[0], 1), z, dtype=torch.float64)], 1)
    faces = []
    for j in range(ny):
        for i in range(nx):
            a = j * (nx + 1) + i
            b, c, d = a + 1, a + nx + 2, a + nx + 1
            if diagonal_mix and (i + j) % 2:
                tris = [[a, b, d], [b, c, d]]
            else:
                tris = [[a, b, c], [a, c, d]]
            if flip_alternate and (i + 2 * j) % 3 == 0:
                tris = [[t[0], t[2], t[1]] for t in tris]
            faces += tris
    return verts.float(), torch.tensor(faces, dtype=torch.int64)


def icosphere(centre, radius):
    """Level-1 ico-sphere (42 vertices, 80 faces) of the given centre and radius."""
    from dnmp.model import ico_sphere

    v, f = ico_sphere(1)
    return (v.double() * radius + torch.as_tensor(centre, dtype=torch.float64)).float(), f


def spheres(n: int, seed: int = 0, radius: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    vs, fs = [], []
    for i in range(n):
        c = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([4.0, 3.0, 4.0])
        c[2] += 5.0
        v, f = icosphere(c.tolist(), radius)
        fs.append(f + 42 * i)
        vs.append(v)
    return torch.cat(vs), torch.cat(fs)

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


def near_far_faces() -> tuple[torch.Tensor, torch.Tensor]:
    """Five faces for a 24x24 camera (f = 12) at the origin with near 0.05, far 20: face 0
    crosses the near plane (culled whole), face 1 is behind the camera, face 2 beyond far
    (dropped), face 3 straddles far (partly dropped), face 4 is plain. (verts [15, 3], faces [5, 3])"""
    verts = torch.tensor([
        [-1.0, -1, 0.5], [1, -1, 0.03], [0, 1, 2.0],
        [-1.0, -1, -2], [1, -1, -2], [0, 1, -2],
        [-1.0, -1, 30], [1, -1, 30], [0, 1, 30],
        [-4.0, -4, 5], [4, -4, 15], [0, 4, 25],
        [-0.5, -0.5, 3], [0.5, -0.5, 3], [0, 0.5, 3],
    ])
    return verts, torch.arange(15).reshape(5, 3)


def huge_and_tiny_faces() -> tuple[torch.Tensor, torch.Tensor]:
    """Two huge triangles (one 2 km across at depth 10, one 100 m at depth 4) and 200
    sub-pixel triangles around (and between) pixel centres at depth 3, for a camera at the
    origin looking down +z. (verts [606, 3], faces [202, 3])"""
    g = torch.Generator().manual_seed(2)
    big = torch.tensor([[-1e3, -1e3, 10.0], [1e3, -1e3, 10.0], [0.0, 1e3, 10.0], [-50, -50, 4], [50, -50, 4],
                        [0, 50, 4]])
    c = torch.rand(200, 1, 2, generator=g) * 2 - 1
    tiny_xy = c + (torch.rand(200, 3, 2, generator=g) - 0.5) * 0.15
    tiny = torch.cat([tiny_xy, torch.full((200, 3, 1), 3.0)], -1).reshape(-1, 3)
    faces = torch.cat([torch.tensor([[0, 1, 2], [3, 4, 5]]), 6 + torch.arange(600).reshape(200, 3)])
    return torch.cat([big, tiny]), faces

"""Pure-PyTorch reference rasterizer and interpolator.

Written to be obviously correct rather than fast: every pixel is tested against
every face (O(pixels x faces), chunked over pixels to bound memory). Used by the
tests as an independent check of the C++/CUDA kernels, and as the fallback when
no compiled extension is available. Differentiable w.r.t. ``verts`` (and
``attributes``/``bary_coords``) through plain torch autograd.

The arithmetic follows the same recipe as ``csrc/common/raster_math.h`` (same
operation order, in the dtype of ``verts``) so that coverage decisions agree
exactly on exact-tie cases such as a flat grid whose edges pass through pixel
centres:

* camera point ``pc = R @ X + t`` evaluated as ``((r0*x + r1*y) + r2*z) + t``,
* image point ``u = fx * (xc / zc) + cx``, ``v = fy * (yc / zc) + cy``,
* edge function of the edge opposite vertex i evaluated with its endpoints in
  canonical (lexicographic) order, so two faces sharing an edge compute the
  same number with opposite sign,
* top-left tie break: a pixel centre exactly on an edge belongs to the face
  for which the edge, oriented with the interior on its positive side, has
  dv < 0, or dv == 0 and du > 0. This equals testing the sample shifted by
  (+eps, +eps^2) (right, then down): pixels on top and left edges (image y
  down) are inside, on bottom and right edges outside, as in Direct3D.
"""

from __future__ import annotations

import torch

from ._common import Fragments, check_interpolate_inputs, check_rasterize_inputs

__all__ = ["rasterize_reference", "interpolate_reference"]

_PIXEL_FACE_BUDGET = 1 << 22  # elements per chunk of the (pixels x faces) test


def _to_camera(verts: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    x, y, z = verts[:, 0], verts[:, 1], verts[:, 2]
    rows = []
    for r in range(3):
        rows.append(((w2c[r, 0] * x + w2c[r, 1] * y) + w2c[r, 2] * z) + w2c[r, 3])
    return torch.stack(rows, dim=-1)  # [V,3]


def _project(pc: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u = K[0, 0] * (pc[..., 0] / pc[..., 2]) + K[0, 2]
    v = K[1, 1] * (pc[..., 1] / pc[..., 2]) + K[1, 2]
    return u, v


def _edge_setup(u: torch.Tensor, v: torch.Tensor):
    """Per face (u,v: [F,3]) and edge i (opposite vertex i): canonical endpoints a, b
    and the sign s_i with  oriented_edge_i(p) = s_i * ((b-a) x (p-a))."""
    j = [1, 2, 0]
    k = [2, 0, 1]
    uj, vj, uk, vk = u[:, j], v[:, j], u[:, k], v[:, k]
    j_first = (uj < uk) | ((uj == uk) & (vj <= vk))
    au = torch.where(j_first, uj, uk)
    av = torch.where(j_first, vj, vk)
    bu = torch.where(j_first, uk, uj)
    bv = torch.where(j_first, vk, vj)
    esign = torch.where(j_first, 1.0, -1.0).to(u.dtype)
    area = (u[:, 1] - u[:, 0]) * (v[:, 2] - v[:, 0]) - (v[:, 1] - v[:, 0]) * (u[:, 2] - u[:, 0])
    fsign = torch.sign(area)
    s = esign * fsign[:, None]  # [F,3]
    du, dv = s * (bu - au), s * (bv - av)  # oriented edge direction
    tie_ok = (dv < 0) | ((dv == 0) & (du > 0))
    return au, av, bu, bv, s, tie_ok, area


def _face_valid(pc_f: torch.Tensor, u: torch.Tensor, v: torch.Tensor, area: torch.Tensor, near: float):
    finite = torch.isfinite(pc_f).all(dim=(1, 2)) & torch.isfinite(u).all(1) & torch.isfinite(v).all(1)
    return finite & (pc_f[..., 2] > near).all(dim=1) & (area != 0) & torch.isfinite(area)


def _rasterize_one(verts, faces, K, w2c, H, W, Kf, near, far):
    # Short names as in the kernels: K intrinsics [3, 3], w2c world-to-camera [4, 4],
    # H x W image, Kf faces per pixel.
    dev, dt = verts.device, verts.dtype
    F = faces.shape[0]
    P = H * W
    p2f = torch.full((P, Kf), -1, dtype=torch.int64, device=dev)
    if F == 0:
        return p2f.view(H, W, Kf)
    with torch.no_grad():
        pc = _to_camera(verts.detach(), w2c)
        pc_f = pc[faces]  # [F,3,3]
        u, v = _project(pc_f, K)  # [F,3]
        au, av, bu, bv, s, tie_ok, area = _edge_setup(u, v)
        valid = _face_valid(pc_f, u, v, area, near)
        zf = pc_f[..., 2]
        idx = torch.nonzero(valid).squeeze(1)
        if idx.numel() == 0:
            return p2f.view(H, W, Kf)
        au, av, bu, bv, s, tie_ok, zf = (t[idx] for t in (au, av, bu, bv, s, tie_ok, zf))
        ys, xs = torch.meshgrid(
            torch.arange(H, device=dev, dtype=dt), torch.arange(W, device=dev, dtype=dt), indexing="ij"
        )
        px, py = xs.reshape(-1), ys.reshape(-1)
        n = idx.numel()
        chunk = max(1, _PIXEL_FACE_BUDGET // n)
        for p0 in range(0, P, chunk):
            qx = px[p0:p0 + chunk, None, None]  # [p,1,1]
            qy = py[p0:p0 + chunk, None, None]
            e = s * ((bu - au) * (qy - av) - (bv - av) * (qx - au))  # [p,n,3]
            inside = ((e > 0) | ((e == 0) & tie_ok)).all(dim=-1)
            a = e / zf  # [p,n,3]
            ssum = (a[..., 0] + a[..., 1]) + a[..., 2]
            esum = (e[..., 0] + e[..., 1]) + e[..., 2]
            z = esum / ssum
            ok = inside & (esum > 0) & (z <= far) & torch.isfinite(z)
            zz = torch.where(ok, z, torch.full_like(z, float("inf")))
            zs, order = torch.sort(zz, dim=1, stable=True)  # ties: lower face index first
            take = min(Kf, n)
            sel = torch.where(torch.isfinite(zs[:, :take]), idx[order[:, :take]], -1)
            p2f[p0:p0 + chunk, :take] = sel
    return p2f.view(H, W, Kf)


def _fragment_geometry(verts, faces, K, w2c, p2f):
    """Differentiable zbuf / bary for the chosen (pixel, face) pairs of one camera."""
    H, W, Kf = p2f.shape
    dev, dt = verts.device, verts.dtype
    zbuf = torch.full((H, W, Kf), -1.0, dtype=dt, device=dev)
    bary = torch.zeros((H, W, Kf, 3), dtype=dt, device=dev)
    hit = p2f >= 0
    if not bool(hit.any()):
        return zbuf, bary
    hy, hx, _ = torch.nonzero(hit, as_tuple=True)
    fidx = p2f[hit]
    pc = _to_camera(verts, w2c)
    pc_f = pc[faces[fidx]]  # [n,3,3]
    u, v = _project(pc_f, K)
    au, av, bu, bv, s, _, _ = _edge_setup(u, v)
    qx, qy = hx.to(dt)[:, None], hy.to(dt)[:, None]
    e = s * ((bu - au) * (qy - av) - (bv - av) * (qx - au))  # [n,3]
    a = e / pc_f[..., 2]
    ssum = (a[:, 0] + a[:, 1]) + a[:, 2]
    esum = (e[:, 0] + e[:, 1]) + e[:, 2]
    zbuf = zbuf.index_put(torch.nonzero(hit, as_tuple=True), esum / ssum)
    bary = bary.index_put(torch.nonzero(hit, as_tuple=True), a / ssum[:, None])
    return zbuf, bary


def rasterize_reference(
    verts, faces, intrinsics, world_to_cam, image_size, faces_per_pixel=1, near=0.05, far=1e4
) -> Fragments:
    """Reference twin of :func:`dnmp.ops.rasterize` (same arguments and outputs)."""
    r = check_rasterize_inputs(verts, faces, intrinsics, world_to_cam, image_size, faces_per_pixel, near, far)
    return rasterize_reference_checked(r)


def rasterize_reference_checked(r) -> Fragments:
    """rasterize_reference on inputs already normalised by check_rasterize_inputs."""
    out_p, out_z, out_b = [], [], []
    for b in range(r.intrinsics.shape[0]):
        p2f = _rasterize_one(
            r.verts, r.faces, r.intrinsics[b], r.world_to_cam[b], r.height, r.width,
            r.faces_per_pixel, r.near, r.far,
        )
        z, bc = _fragment_geometry(r.verts, r.faces, r.intrinsics[b], r.world_to_cam[b], p2f)
        out_p.append(p2f)
        out_z.append(z)
        out_b.append(bc)
    return Fragments(torch.stack(out_p), torch.stack(out_z), torch.stack(out_b))


def interpolate_reference(attributes, faces, fragments) -> torch.Tensor:
    """Reference twin of :func:`dnmp.ops.interpolate`: [..., K, C] = sum_i bary_i * attr[face_i]."""
    attributes, faces, p2f, bary = check_interpolate_inputs(attributes, faces, fragments)
    hit = p2f >= 0
    if faces.shape[0] == 0:
        return (bary[..., :1] * attributes[:0].sum(0)).expand(*p2f.shape, attributes.shape[1]) * 0
    vidx = faces[p2f.clamp(min=0)]  # [...,K,3]
    vals = attributes[vidx]  # [...,K,3,C]
    w = torch.where(hit[..., None], bary, torch.zeros_like(bary))
    return (w[..., None] * vals).sum(dim=-2)

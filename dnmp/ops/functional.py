"""Public, stateless entry points: :func:`rasterize` and :func:`interpolate`."""

from __future__ import annotations

import torch

from ._common import Fragments, check_interpolate_inputs, check_rasterize_inputs
from ._extension import kernels_for
from ._reference import interpolate_reference, rasterize_reference_checked

__all__ = ["rasterize", "interpolate"]


def rasterize(
    verts: torch.Tensor,
    faces: torch.Tensor,
    intrinsics: torch.Tensor,
    world_to_cam: torch.Tensor,
    image_size,
    faces_per_pixel: int = 1,
    near: float = 0.05,
    far: float = 1e4,
) -> Fragments:
    """Rasterize a triangle mesh into the K nearest fragments per pixel.

    Args:
        verts: float32 or float64 [V, 3], world-frame vertex positions (metres).
        faces: int32 or int64 [F, 3], vertex indices, on verts' device.
        intrinsics: [3, 3] or [B, 3, 3] pinhole matrices (fx, fy, cx, cy; OpenCV
            convention: the centre of pixel (u, v) is at image coordinates (u, v)).
        world_to_cam: [4, 4] or [B, 4, 4] rigid transforms, world -> OpenCV camera
            (x right, y down, z forward). A single matrix is broadcast against a
            batch of the other.
        image_size: (H, W), positive ints.
        faces_per_pixel: K >= 1, the number of nearest faces kept per pixel.
        near, far: 0 <= near < far. A face with any vertex at z <= near is culled
            whole; surface points with z > far are dropped.

    Returns:
        :class:`Fragments` (pix_to_face int64 [B,H,W,K], zbuf [B,H,W,K],
        bary_coords [B,H,W,K,3]), dtype of verts, B always present. See
        DESIGN.md for the coverage rule (edge functions >= 0, top-left tie break
        on shared edges, no back-face culling). Depth ties are broken by the
        lower face index. Deterministic.

    Non-finite vertices (NaN/Inf) are reported with a ``RuntimeWarning`` that
    gives their count; faces touching them never cover a pixel.

    Gradients flow to ``verts`` through zbuf and bary_coords (coverage is not
    differentiated; intrinsics and world_to_cam receive no gradient).
    """
    fast = isinstance(verts, torch.Tensor) and kernels_for(verts.device)
    r = check_rasterize_inputs(
        verts, faces, intrinsics, world_to_cam, image_size, faces_per_pixel, near, far, check_indices=not fast
    )
    if not fast:
        return rasterize_reference_checked(r)
    p2f, zbuf, bary = torch.ops.dnmp.rasterize_fwd(
        r.verts, r.faces, r.intrinsics, r.world_to_cam, r.height, r.width, r.faces_per_pixel, r.near, r.far
    )
    return Fragments(p2f, zbuf, bary)


def interpolate(attributes: torch.Tensor, faces: torch.Tensor, fragments) -> torch.Tensor:
    """Interpolate per-vertex attributes at the fragments.

    Args:
        attributes: float32/float64 [V, C] per-vertex values.
        faces: int32/int64 [F, 3], the faces the fragments index.
        fragments: :class:`Fragments` (or any 3-tuple) whose pix_to_face has shape
            [..., K] and bary_coords [..., K, 3]; the leading dims are free, e.g.
            [B, H, W] from :func:`rasterize` or [1, 1, N] for N sampled rays.
            zbuf is not used.

    Returns:
        [..., K, C]: sum_i bary_i * attributes[face[i]]; 0 where pix_to_face < 0.
        Differentiable w.r.t. attributes and bary_coords.
    """
    fast = isinstance(attributes, torch.Tensor) and kernels_for(attributes.device)
    a, f, p2f, bary = check_interpolate_inputs(attributes, faces, fragments, check_indices=not fast)
    if not fast:
        return interpolate_reference(a, f, (p2f, None, bary))
    return torch.ops.dnmp.interpolate_fwd(a, f, p2f, bary)

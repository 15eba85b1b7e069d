"""Deformable neural mesh primitives (paper Sec. 3.1-3.2; DESIGN.md "Primitives").

One primitive per occupied voxel of the scene's point cloud: an ico-sphere of
subdivision level 1 (42 vertices, 80 faces) whose shape is decoded from a
unit-norm latent code, placed at the voxel centre (+ a learned offset) and scaled
by the voxel's circumscribed radius r = s * sqrt(3) / 2. Each vertex carries a
learned feature vector.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .icosphere import ico_sphere


def voxelize(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Centres of the voxels that contain at least one point.

    Args:
        points: float [N, 3], world frame (scene coordinates), metres. Non-finite
            points are ignored.
        voxel_size: voxel edge length s in metres (0.5 fine, 1.0 coarse in the paper).

    Returns:
        float32 [P, 3] voxel centres, sorted lexicographically by voxel index so
        the result is deterministic.

    Raises:
        ValueError: for a wrong shape, a non-positive voxel size, or when no
            finite point is given.
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {tuple(points.shape)}")
    if not voxel_size > 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    pts = points[torch.isfinite(points).all(dim=1)].double()
    if pts.shape[0] == 0:
        raise ValueError("voxelize: the point cloud has no finite point (empty scene?)")
    idx = torch.floor(pts / voxel_size).long()
    idx = torch.unique(idx, dim=0)  # sorted lexicographically
    return ((idx.double() + 0.5) * voxel_size).float()


class ShapeDecoder(nn.Module):
    """Mesh decoder of the auto-encoder: latent [.., D] -> unit-sphere-scale vertices [.., 42, 3].

    vertices = template + MLP(latent). The last layer is zero-initialised, so an
    untrained decoder returns the template ico-sphere for every latent; the
    trained auto-encoder (a later stage) replaces these weights.
    """

    def __init__(self, latent_dim: int = 8, hidden: int = 128, level: int = 1):
        super().__init__()
        verts, faces = ico_sphere(level)
        self.latent_dim = latent_dim
        self.register_buffer("template_verts", verts, persistent=False)
        self.register_buffer("template_faces", faces, persistent=False)
        n = verts.shape[0]
        self.mlp = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, n * 3),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    @property
    def num_verts(self) -> int:
        return self.template_verts.shape[0]

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """latent float32 [P, D] (unit-norm) -> vertex positions [P, 42, 3] in the unit frame."""
        out = self.mlp(latent).view(*latent.shape[:-1], self.num_verts, 3)
        return self.template_verts + out


class Primitives(nn.Module):
    """A set of P primitives at fixed voxel centres, at one or more scales.

    Paper Sec. 3.2 uses two scales (0.5 m and 1.0 m voxels); the primitives of all
    scales live in one set, scale after scale (fine first), so that vertex, face
    and feature indices are global. ``scale_counts[s]`` primitives belong to scale s.

    Buffers / parameters:
        centres: float32 [P, 3] voxel centres (scene frame, metres), buffer.
        voxel_sizes: float32 [P] voxel edge of each primitive's scale (metres), buffer.
        scale_counts: int64 [S] primitives per scale, buffer.
        latents: float32 [P, D] shape codes, kept unit-norm.
        offsets: float32 [P, 3] centre offsets in metres (0 at start).
        features: float32 [P * 42, C] per-vertex features, rows p*42 .. p*42+41
            belong to primitive p.
    """

    def __init__(self, centres: torch.Tensor, voxel_size, feature_dim: int = 32,
                 latent_dim: int = 8, decoder: ShapeDecoder | None = None, seed: int = 0,
                 scale_counts=None, init_latent: torch.Tensor | None = None):
        """
        Args:
            centres: float [P, 3] voxel centres (all scales, scale after scale).
            voxel_size: float (one scale) or a sequence of S floats, one per scale.
            scale_counts: S ints summing to P (default: one scale holding all P).
            decoder: the shape decoder (default: an untrained one, which decodes
                every latent to the template ico-sphere).
            init_latent: float [D] latent every primitive starts from (e.g. the
                template sphere's latent of a trained decoder); default random unit.
        Raises:
            ValueError: wrong shapes, no primitive, counts that do not add up.
        """
        super().__init__()
        if centres.ndim != 2 or centres.shape[1] != 3:
            raise ValueError(f"centres must be [P, 3], got {tuple(centres.shape)}")
        if centres.shape[0] == 0:
            raise ValueError("Primitives: no occupied voxel (empty scene)")
        p = centres.shape[0]
        sizes = [float(voxel_size)] if isinstance(voxel_size, (int, float)) else [float(v) for v in voxel_size]
        counts = [p] if scale_counts is None else [int(c) for c in scale_counts]
        if len(sizes) != len(counts) or sum(counts) != p or min(counts) < 0:
            raise ValueError(f"Primitives: scale_counts {counts} must give one count per voxel size "
                             f"{sizes} and add up to {p} centres")
        if not all(v > 0 for v in sizes):
            raise ValueError(f"Primitives: voxel sizes must be > 0, got {sizes}")
        g = torch.Generator().manual_seed(seed)
        self.decoder = decoder if decoder is not None else ShapeDecoder(latent_dim)
        nv = self.decoder.num_verts
        self.register_buffer("centres", centres.float().contiguous())
        self.register_buffer("voxel_sizes", torch.cat([torch.full((c,), v) for c, v in zip(counts, sizes)]))
        self.register_buffer("scale_counts", torch.tensor(counts, dtype=torch.int64))
        if init_latent is None:
            latents = torch.randn(p, latent_dim, generator=g)
        else:
            latents = init_latent.detach().float().reshape(1, latent_dim).repeat(p, 1)
        self.latents = nn.Parameter(F.normalize(latents, dim=-1))
        self.offsets = nn.Parameter(torch.zeros(p, 3))
        self.features = nn.Parameter(0.1 * torch.randn(p * nv, feature_dim, generator=g))
        faces = self.decoder.template_faces
        base = (torch.arange(p) * nv).view(p, 1, 1)
        self.register_buffer("faces", (faces.unsqueeze(0) + base).view(-1, 3).contiguous(), persistent=False)

    @property
    def voxel_size(self) -> float:
        """Voxel edge of the finest (first) scale, metres."""
        return float(self.voxel_sizes[0])

    @property
    def radii(self) -> torch.Tensor:
        """float32 [P] circumscribed radius s * sqrt(3) / 2 of each primitive's voxel."""
        return self.voxel_sizes * (math.sqrt(3.0) / 2.0)

    @property
    def num_primitives(self) -> int:
        return self.centres.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def faces_per_primitive(self) -> int:
        return self.decoder.template_faces.shape[0]

    def scale_ranges(self) -> list[tuple[int, int]]:
        """[(first, end)) primitive index range of each scale, fine to coarse."""
        ends = torch.cumsum(self.scale_counts, 0).tolist()
        return list(zip([0] + ends[:-1], ends))

    def decode(self, index: torch.Tensor | None = None, latents: torch.Tensor | None = None,
               offsets: torch.Tensor | None = None, return_shape: bool = False):
        """Decoded vertices of some primitives, float32 [S, 42, 3], scene frame, metres.

        Args:
            index: int64 [S] primitive indices (default: all P).
            latents, offsets: float [S, D] / [S, 3] to use instead of the stored rows
                (the geometry stage passes rows gathered with sparse gradients).
            return_shape: also return the unit-frame meshes decoder(latent) [S, 42, 3]
                (for the mesh regularisers).
        Differentiable w.r.t. latents, offsets and decoder weights.
        """
        idx = slice(None) if index is None else index
        lat = self.latents[idx] if latents is None else latents
        off = self.offsets[idx] if offsets is None else offsets
        shape = self.decoder(F.normalize(lat, dim=-1))
        verts = self.centres[idx].unsqueeze(1) + off.unsqueeze(1) + shape * self.radii[idx].view(-1, 1, 1)
        return (verts, shape) if return_shape else verts

    def vertices(self) -> torch.Tensor:
        """Decoded vertices of all primitives, float32 [P * 42, 3], scene frame, metres."""
        return self.decode().reshape(-1, 3)

    def local_faces(self, count: int) -> torch.Tensor:
        """int64 [count * 80, 3] faces of ``count`` consecutive decoded primitives
        (vertex rows p*42 .. p*42+41 for the p-th)."""
        return self.faces[: count * self.faces_per_primitive]

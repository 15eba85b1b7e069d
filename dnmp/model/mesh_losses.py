"""Point-set and mesh losses for the mesh auto-encoder and the geometry stage.

The DNMP paper (Sec. 3.1) trains its mesh auto-encoder with a Chamfer distance to
the target points plus two shape regularisers, the uniform Laplacian smoothing
and the normal consistency of adjacent faces. These are batched, differentiable
implementations (any float dtype, any device) written for dnmp:

- ``chamfer_distance``: symmetric mean squared nearest-neighbour distance between
  two (optionally padded) batches of point sets.
- ``mesh_laplacian_smoothing``: mean over vertices of the L2 norm of the uniform
  Laplacian ``v - mean(neighbours of v)``.
- ``mesh_normal_consistency``: mean over interior edges of ``1 - cos`` of the
  angle between the normals of the two faces sharing the edge.
- ``mesh_edge_length``: mean squared deviation of edge lengths from a target.

All mesh losses take a batch of meshes that share one connectivity: vertices
``[B, V, 3]`` and faces int64 ``[F, 3]``; they return one value per mesh, ``[B]``.
The connectivity tables derived from a faces tensor are built once and cached.
Units: the losses are in the units of the input coordinates (chamfer and edge
length: squared units; Laplacian: units; normal consistency: unitless).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "chamfer_distance",
    "mesh_laplacian_smoothing",
    "mesh_normal_consistency",
    "mesh_edge_length",
    "mesh_topology",
    "MeshTopology",
]


# ----------------------------------------------------------------------------- chamfer

def _check_points(name: str, p: torch.Tensor) -> None:
    if p.ndim != 3 or p.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [B, N, 3], got {tuple(p.shape)}")
    if not p.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {p.dtype}")


def _lengths(name: str, lengths: torch.Tensor | None, b: int, n: int, device) -> torch.Tensor:
    if lengths is None:
        return torch.full((b,), n, dtype=torch.int64, device=device)
    lengths = torch.as_tensor(lengths, device=device).long()
    if lengths.shape != (b,):
        raise ValueError(f"{name} must have shape [{b}], got {tuple(lengths.shape)}")
    if (lengths < 1).any() or (lengths > n).any():
        raise ValueError(f"{name} must be in [1, {n}] (an empty point set has no chamfer "
                         f"distance), got {lengths.tolist()}")
    return lengths


def _nearest_indices(x: torch.Tensor, y: torch.Tensor, x_valid, y_valid):
    """Index of the nearest valid y of each x [B, N] and of the nearest valid x of each y [B, M]."""
    with torch.no_grad():
        # One squared-distance matrix serves both directions. It uses the cheap
        # |x|^2 + |y|^2 - 2 x.y expansion (no [B, N, M, 3] intermediate); the distances
        # themselves are then recomputed exactly from the chosen pairs, so they are 0 for
        # coincident points and their gradients are exact.
        x2 = (x * x).sum(-1)
        y2 = (y * y).sum(-1)
        d = torch.baddbmm(x2.unsqueeze(2) + y2.unsqueeze(1), x, y.transpose(1, 2), alpha=-2.0)
        if y_valid is not None:
            d.masked_fill_(~y_valid.unsqueeze(1), float("inf"))
        x_to_y = d.argmin(dim=2)
        if y_valid is not None:  # undo, then mask the other side for the other direction
            d.masked_fill_(~y_valid.unsqueeze(1), 0.0)
        if x_valid is not None:
            d.masked_fill_(~x_valid.unsqueeze(2), float("inf"))
        y_to_x = d.argmin(dim=1)
    return x_to_y, y_to_x


def _gather_sq(a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    nn = torch.gather(b, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
    return ((a - nn) ** 2).sum(-1)


def chamfer_distance(x: torch.Tensor, y: torch.Tensor, x_lengths: torch.Tensor | None = None,
                     y_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric Chamfer distance between two batches of point sets (paper Sec. 3.1).

    ``cd(X, Y) = mean_{x in X} min_{y in Y} |x - y|^2 + mean_{y in Y} min_{x in X} |x - y|^2``

    i.e. the sum of the two directional means of squared nearest-neighbour
    distances (the convention of PyTorch3D's ``chamfer_distance``).

    Args:
        x: float [B, N, 3] points (any frame, same for x and y).
        y: float [B, M, 3] points.
        x_lengths: optional int [B]: set b of x is ``x[b, :x_lengths[b]]``, the rest is
            padding and ignored. Default: all N points.
        y_lengths: optional int [B], the same for y.

    Returns:
        [B] tensor, dtype of x, in squared input units (m^2 for metric inputs).
        Differentiable w.r.t. x and y (the nearest-neighbour choice is not).

    Raises:
        ValueError: for wrong shapes, mismatched batch sizes or a length outside [1, N].
        TypeError: for non-floating-point inputs.
    """
    _check_points("x", x)
    _check_points("y", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    b, n, m = x.shape[0], x.shape[1], y.shape[1]
    xl = _lengths("x_lengths", x_lengths, b, n, x.device)
    yl = _lengths("y_lengths", y_lengths, b, m, x.device)
    x_valid = y_valid = None  # None: no padding, skip the masking work
    if x_lengths is not None and bool((xl < n).any()):
        x_valid = torch.arange(n, device=x.device).unsqueeze(0) < xl.unsqueeze(1)
    if y_lengths is not None and bool((yl < m).any()):
        y_valid = torch.arange(m, device=x.device).unsqueeze(0) < yl.unsqueeze(1)
    x_to_y, y_to_x = _nearest_indices(x, y, x_valid, y_valid)
    dx = _gather_sq(x, y, x_to_y)
    dy = _gather_sq(y, x, y_to_x)
    if x_valid is not None:
        dx = dx * x_valid
    if y_valid is not None:
        dy = dy * y_valid
    return dx.sum(1) / xl.to(x.dtype) + dy.sum(1) / yl.to(x.dtype)


# ----------------------------------------------------------------------------- topology

@dataclass(frozen=True)
class MeshTopology:
    """Connectivity derived from a faces tensor (all int64, on the faces' device).

    Attributes:
        num_verts: V, 1 + the largest vertex index used by the faces.
        edges: [E, 2] unique undirected edges, ``edges[:, 0] < edges[:, 1]``.
        degree: [V] number of distinct neighbours of each vertex.
        dihedral: [D, 4] one row per pair of faces sharing an edge: (a, b, c, d) where
            (a, b) is the shared edge and c, d are the vertices of the two faces
            opposite to it. Boundary edges give no row; a non-manifold edge shared
            by k > 2 faces gives one row per pair of its faces.
    """

    num_verts: int
    edges: torch.Tensor
    degree: torch.Tensor
    dihedral: torch.Tensor


_TOPOLOGY_CACHE: "OrderedDict[tuple, tuple[torch.Tensor, MeshTopology]]" = OrderedDict()
_CACHE_SIZE = 16


def _build_topology(faces: torch.Tensor) -> MeshTopology:
    f = faces.detach().cpu().long()
    nv = int(f.max()) + 1 if f.numel() else 0
    # Each face contributes 3 directed edges; opposite[k] is the face vertex not on edge k.
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    opp = torch.cat([f[:, 2], f[:, 0], f[:, 1]])
    e_sorted = torch.sort(e, dim=1).values
    edges, inverse = torch.unique(e_sorted, dim=0, return_inverse=True)
    degree = torch.zeros(nv, dtype=torch.int64)
    degree.index_add_(0, edges.reshape(-1), torch.ones(edges.numel(), dtype=torch.int64))
    # Group the face-edges by their undirected edge to pair up the faces sharing it.
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=edges.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    rows = []
    two = (counts == 2).nonzero().flatten()
    if two.numel():
        k0, k1 = order[starts[two]], order[starts[two] + 1]
        rows.append(torch.stack([edges[two, 0], edges[two, 1], opp[k0], opp[k1]], 1))
    for ei in (counts > 2).nonzero().flatten().tolist():  # non-manifold edges: rare, loop is fine
        ks = order[starts[ei]: starts[ei] + counts[ei]].tolist()
        for i in range(len(ks)):
            for j in range(i + 1, len(ks)):
                rows.append(torch.tensor([[edges[ei, 0], edges[ei, 1], opp[ks[i]], opp[ks[j]]]]))
    dihedral = torch.cat(rows) if rows else torch.zeros(0, 4, dtype=torch.int64)
    dev = faces.device
    return MeshTopology(nv, edges.to(dev), degree.to(dev), dihedral.to(dev))


def mesh_topology(faces: torch.Tensor) -> MeshTopology:
    """Edges, vertex degrees and dihedral (face-pair) table of a triangle mesh, cached.

    Args:
        faces: int64 [F, 3] vertex indices (F >= 1).

    Returns:
        The ``MeshTopology`` of these faces. Built once per faces tensor: the cache
        is keyed by the tensor's storage, version counter, shape and device, and a
        hit is confirmed by comparing contents, so an in-place edit or a reused
        address cannot return stale tables.

    Raises:
        ValueError: if faces is not [F, 3] with F >= 1 or has a negative index.
        TypeError: if faces is not an integer tensor.
    """
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise ValueError(f"faces must have shape [F, 3] with F >= 1, got {tuple(faces.shape)}")
    if faces.is_floating_point() or faces.dtype == torch.bool:
        raise TypeError(f"faces must be an integer tensor, got {faces.dtype}")
    key = (faces.data_ptr(), faces._version, tuple(faces.shape), str(faces.device))
    hit = _TOPOLOGY_CACHE.get(key)
    if hit is not None and torch.equal(hit[0], faces):
        _TOPOLOGY_CACHE.move_to_end(key)
        return hit[1]
    if int(faces.min()) < 0:
        raise ValueError("faces contain a negative vertex index")
    topo = _build_topology(faces)
    _TOPOLOGY_CACHE[key] = (faces.detach().clone(), topo)
    while len(_TOPOLOGY_CACHE) > _CACHE_SIZE:
        _TOPOLOGY_CACHE.popitem(last=False)
    return topo


def _check_mesh(verts: torch.Tensor, faces: torch.Tensor) -> MeshTopology:
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must have shape [B, V, 3], got {tuple(verts.shape)}")
    if not verts.is_floating_point():
        raise TypeError(f"verts must be a floating-point tensor, got {verts.dtype}")
    topo = mesh_topology(faces)
    if topo.num_verts > verts.shape[1]:
        raise ValueError(f"faces index vertex {topo.num_verts - 1} but verts has only "
                         f"{verts.shape[1]} vertices")
    if topo.edges.device != verts.device:
        raise ValueError(f"faces ({faces.device}) and verts ({verts.device}) are on different devices")
    return topo


# ----------------------------------------------------------------------------- mesh regularisers

def mesh_laplacian_smoothing(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Uniform Laplacian smoothing loss (paper Sec. 3.1 regulariser).

    For each vertex v with neighbours N(v) (vertices sharing an edge with it):
    ``L(v) = v - mean_{u in N(v)} u``; the loss is the mean over vertices of the
    Euclidean (L2, not squared) norm ``|L(v)|_2``. Vertices that no face uses
    (degree 0) are left out of the mean. Note that it is not zero on a sphere:
    it penalises curvature (on the unit ico-sphere of level 1 it is ~0.169).

    Args:
        verts: float [B, V, 3] vertex positions of B meshes sharing one connectivity.
        faces: int64 [F, 3] triangles (indices < V).

    Returns:
        [B], dtype of verts, in the units of verts.

    Raises:
        ValueError / TypeError: for wrong shapes, dtypes, devices or out-of-range indices.
    """
    topo = _check_mesh(verts, faces)
    v = verts.shape[1]
    e0, e1 = topo.edges[:, 0], topo.edges[:, 1]
    nsum = torch.zeros_like(verts)
    nsum = nsum.index_add(1, e0, verts[:, e1]).index_add(1, e1, verts[:, e0])
    deg = torch.zeros(v, dtype=verts.dtype, device=verts.device)
    deg[: topo.num_verts] = topo.degree.to(verts.dtype)
    used = deg > 0
    lap = verts[:, used] - nsum[:, used] / deg[used].unsqueeze(-1)
    return torch.linalg.vector_norm(lap, dim=-1).mean(-1)


def mesh_normal_consistency(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Normal-consistency loss (paper Sec. 3.1 regulariser).

    The mean, over interior edges (edges shared by two faces; boundary edges are
    skipped, a non-manifold edge counts once per pair of its faces), of
    ``1 - cos(angle between the normals of the two faces)``: 0 for a flat mesh,
    1 for a 90-degree fold, 2 for faces folded flat onto each other. The normals are
    built from the shared edge and each face's opposite vertex, oriented so that a
    flat pair gives parallel normals whatever the faces' winding. A degenerate
    (zero-area) face contributes ``1 - 0 = 1`` (its normal is taken as 0).

    Args:
        verts: float [B, V, 3] vertex positions of B meshes sharing one connectivity.
        faces: int64 [F, 3] triangles (indices < V).

    Returns:
        [B], dtype of verts, unitless; 0 when the mesh has no interior edge.

    Raises:
        ValueError / TypeError: for wrong shapes, dtypes, devices or out-of-range indices.
    """
    topo = _check_mesh(verts, faces)
    if topo.dihedral.shape[0] == 0:
        return verts.sum((1, 2)) * 0.0
    a, b_, c, d = (verts[:, topo.dihedral[:, i]] for i in range(4))
    edge = b_ - a
    n0 = torch.cross(edge, c - a, dim=-1)
    n1 = -torch.cross(edge, d - a, dim=-1)  # c, d on opposite sides of the edge: flip to agree
    cos = F.cosine_similarity(n0, n1, dim=-1, eps=1e-12)
    return (1.0 - cos).mean(-1)


def mesh_edge_length(verts: torch.Tensor, faces: torch.Tensor, target: float = 0.0) -> torch.Tensor:
    """Edge-length loss: mean over unique edges of ``(|v_i - v_j| - target)^2``.

    With ``target = 0`` it is the mean squared edge length (it keeps meshes
    compact); with the template's edge length it keeps edges near that length.

    Args:
        verts: float [B, V, 3] vertex positions of B meshes sharing one connectivity.
        faces: int64 [F, 3] triangles (indices < V).
        target: target edge length, in the units of verts.

    Returns:
        [B], dtype of verts, squared units of verts.

    Raises:
        ValueError / TypeError: for wrong shapes, dtypes, devices or out-of-range indices.
    """
    topo = _check_mesh(verts, faces)
    d = verts[:, topo.edges[:, 0]] - verts[:, topo.edges[:, 1]]
    length = torch.linalg.vector_norm(d, dim=-1)
    return ((length - target) ** 2).mean(-1)

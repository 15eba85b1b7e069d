"""Export the decoded primitives of a trained model as one triangle mesh (open3d)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .model import DNMPRenderer, ico_sphere


MESH_SUFFIXES = {".ply", ".obj", ".off", ".glb", ".gltf", ".stl"}


@torch.no_grad()
def vertex_colours(field, features: torch.Tensor, normals: torch.Tensor,
                   chunk: int = 1 << 16) -> torch.Tensor:
    """View-independent colour of vertices: the radiance field's RGB for each
    vertex's own feature, averaged over the 12 directions of an icosahedron (the
    field is view-dependent, paper Sec. 3.3; a mesh file holds one colour).

    Args: field: a `RadianceField`; features float32 [V, C]; normals float32
        [V, 3] unit vertex normals (world frame). Returns float32 [V, 3] in [0, 1].
    """
    dirs, _ = ico_sphere(0)
    out = torch.zeros(features.shape[0], 3)
    for s in range(0, features.shape[0], chunk):
        f = features[s:s + chunk]
        n = normals[s:s + chunk]
        acc = torch.zeros(f.shape[0], 3)
        for d in dirs:
            _, rgb = field(f, d.expand_as(n).contiguous(), n)
            acc += rgb
        out[s:s + chunk] = acc / len(dirs)
    return out


@torch.no_grad()
def export_mesh(renderer: DNMPRenderer, path: str | Path, colour: bool = False,
                scales: list[int] | None = None) -> dict:
    """Write all decoded primitives (or those of some scales) as one mesh file.

    Args:
        renderer: a trained model (`dnmp.train.radiance.renderer_from_checkpoint`).
        path: output file; the format follows the suffix (.ply, .obj, .off, .glb
            ... anything open3d's `write_triangle_mesh` writes). Written through a
            temporary file and renamed, so a failed export leaves no partial file.
        colour: add per-vertex colours (see `vertex_colours`).
        scales: primitive scales to export (0 fine, 1 coarse; default all).
    Coordinates are the scene frame in metres (add the scene's `world_offset` to
    get the dataset's frame). Returns {"vertices", "faces", "primitives", "path"}.
    Raises:
        ValueError: unknown scale index, or a suffix not in MESH_SUFFIXES.
    """
    import open3d as o3d

    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"{path}: unsupported mesh format {path.suffix!r}; use one of "
                         f"{', '.join(sorted(MESH_SUFFIXES))}")
    prims = renderer.primitives
    ranges = prims.scale_ranges()
    scales = list(range(len(ranges))) if scales is None else scales
    bad = [s for s in scales if not 0 <= s < len(ranges)]
    if bad:
        raise ValueError(f"scale(s) {bad} do not exist: the model has {len(ranges)} scale(s)")
    idx = torch.cat([torch.arange(*ranges[s]) for s in scales])
    verts = prims.decode(idx).reshape(-1, 3)
    faces = prims.local_faces(idx.numel())
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts.double().numpy()),
                                     o3d.utility.Vector3iVector(faces.int().numpy()))
    mesh.compute_vertex_normals()
    if colour:
        nv = prims.decoder.num_verts
        rows = (idx.view(-1, 1) * nv + torch.arange(nv)).view(-1)
        normals = F.normalize(torch.from_numpy(np.asarray(mesh.vertex_normals)).float(), dim=-1)
        rgb = vertex_colours(renderer.field, prims.features[rows], normals)
        mesh.vertex_colors = o3d.utility.Vector3dVector(rgb.double().numpy())
    mesh.triangle_normals = o3d.utility.Vector3dVector()  # OBJ cannot hold them; not needed
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        open(tmp, "wb").close()  # surface an unwritable folder as an OSError naming the file
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        ok = o3d.io.write_triangle_mesh(str(tmp), mesh, write_vertex_colors=colour)
        if not ok or not tmp.is_file():
            raise OSError(f"{path}: open3d could not write the mesh (disk full?)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"vertices": int(verts.shape[0]), "faces": int(faces.shape[0]),
            "primitives": int(idx.numel()), "path": str(path)}


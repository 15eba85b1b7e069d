"""Export the decoded primitives of a trained model as one triangle mesh (open3d)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._io import write_atomic
from .model import DNMPRenderer, ico_sphere


MESH_SUFFIXES = {".ply", ".obj", ".off", ".glb", ".gltf", ".stl"}


@torch.no_grad()
def vertex_colours(field, features: torch.Tensor, normals: torch.Tensor,
                   chunk: int = 1 << 16) -> torch.Tensor:
    """View-independent colour of vertices: the radiance field's RGB for each
    vertex's own feature, averaged over the 12 directions of an icosahedron (the
    field is view-dependent, paper Sec. 3.3; a mesh file holds one colour).

    Args: field: a `RadianceField`; features float32 [V, C]; normals float32
        [V, 3] unit vertex normals (world frame). Returns float32 [V, 3] in [0, 1], on
        the features' device.
    """
    dirs, _ = ico_sphere(0)
    dirs = dirs.to(features)
    out = torch.zeros(features.shape[0], 3, device=features.device)
    for s in range(0, features.shape[0], chunk):
        f = features[s:s + chunk]
        n = normals[s:s + chunk]
        acc = torch.zeros(f.shape[0], 3, device=f.device)
        for d in dirs:
            _, rgb = field(f, d.expand_as(n).contiguous(), n)
            acc += rgb
        out[s:s + chunk] = acc / len(dirs)
    return out


def write_glb(path: str | Path, verts: np.ndarray, faces: np.ndarray, normals: np.ndarray,
              colours: np.ndarray | None = None) -> None:
    """Write a triangle mesh as binary glTF 2.0 (.glb): a JSON chunk and one BIN chunk
    holding uint32 indices, float32 positions, normals and optional RGB colours, with
    each accessor's exact min/max.

    open3d 0.x writes .glb files with the data in a base64 URI instead of the BIN chunk
    and an index `max` of count - 1, which its own reader (assimp) refuses; this writer
    is read back by open3d and other glTF readers.

    Args: verts float [V, 3] (metres), faces int [F, 3] (vertex indices), normals
        float [V, 3], colours float [V, 3] in [0, 1] or None.
    Raises: ValueError for mismatched shapes or out-of-range indices; OSError from writing.
    """
    import json
    import struct

    verts = np.ascontiguousarray(verts, np.float32).reshape(-1, 3)
    normals = np.ascontiguousarray(normals, np.float32).reshape(-1, 3)
    idx = np.ascontiguousarray(faces, np.uint32).reshape(-1)
    if normals.shape != verts.shape or (colours is not None and np.shape(colours) != verts.shape):
        raise ValueError(f"{path}: normals/colours must have the vertices' shape {verts.shape}")
    if idx.size and int(idx.max()) >= len(verts):
        raise ValueError(f"{path}: face index {int(idx.max())} out of range for {len(verts)} vertices")
    arrays = [(idx, "SCALAR", 5125, 34963), (verts, "VEC3", 5126, 34962), (normals, "VEC3", 5126, 34962)]
    if colours is not None:
        arrays.append((np.ascontiguousarray(colours, np.float32).reshape(-1, 3), "VEC3", 5126, 34962))
    views, accessors, blobs, offset = [], [], [], 0
    for i, (a, kind, ctype, target) in enumerate(arrays):
        data = a.tobytes()
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(data), "target": target})
        acc = {"bufferView": i, "componentType": ctype, "count": len(a), "type": kind}
        if len(a):
            flat = a.reshape(len(a), -1)
            cast = int if kind == "SCALAR" else float
            acc["min"] = [cast(v) for v in flat.min(0)]
            acc["max"] = [cast(v) for v in flat.max(0)]
        accessors.append(acc)
        blobs.append(data)
        offset += len(data)  # every component is 4 bytes: views stay 4-byte aligned
    attributes = {"POSITION": 1, "NORMAL": 2, **({"COLOR_0": 3} if colours is not None else {})}
    doc = {"asset": {"version": "2.0", "generator": "dnmp"}, "scene": 0,
           "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
           "meshes": [{"primitives": [{"attributes": attributes, "indices": 0, "mode": 4}]}],
           "buffers": [{"byteLength": offset}], "bufferViews": views, "accessors": accessors}
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    binary = b"".join(blobs)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<4sII", b"glTF", 2, total))
        fh.write(struct.pack("<I4s", len(js), b"JSON") + js)
        fh.write(struct.pack("<I4s", len(binary), b"BIN\0") + binary)


@torch.no_grad()
def export_mesh(renderer: DNMPRenderer, path: str | Path, colour: bool = False,
                scales: list[int] | None = None) -> dict:
    """Write all decoded primitives (or those of some scales) as one mesh file.

    Args:
        renderer: a trained model (`dnmp.train.factory.renderer_from_checkpoint`).
        path: output file; the format follows the suffix (.ply, .obj, .off, .glb
            ... anything open3d's `write_triangle_mesh` writes). Written through a
            temporary file and renamed, so a failed export leaves no partial file.
        colour: add per-vertex colours (see `vertex_colours`).
        scales: primitive scales to export (0 fine, 1 coarse; default all).
    Coordinates are the scene frame in metres (add the scene's `world_offset` to
    get the dataset's frame). Decoding and colours run on the renderer's device; the
    mesh goes to the CPU for open3d. Returns {"vertices", "faces", "primitives", "path"}.
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
    dev = prims.centres.device
    idx = torch.cat([torch.arange(*ranges[s], device=dev) for s in scales])
    verts = prims.decode(idx).reshape(-1, 3)
    faces = prims.local_faces(idx.numel())
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts.double().cpu().numpy()),
                                     o3d.utility.Vector3iVector(faces.int().cpu().numpy()))
    mesh.compute_vertex_normals()
    if colour:
        nv = prims.decoder.num_verts
        rows = (idx.view(-1, 1) * nv + torch.arange(nv, device=dev)).view(-1)
        normals = F.normalize(torch.from_numpy(np.asarray(mesh.vertex_normals)).float().to(dev), dim=-1)
        rgb = vertex_colours(renderer.field, prims.features[rows], normals)
        mesh.vertex_colors = o3d.utility.Vector3dVector(rgb.double().cpu().numpy())
    mesh.triangle_normals = o3d.utility.Vector3dVector()  # OBJ cannot hold them; not needed
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None

    def write(tmp: Path) -> None:
        open(tmp, "wb").close()  # an unwritable folder raises here (open3d only returns False)
        if path.suffix.lower() == ".glb":  # open3d's own .glb cannot be read back (see write_glb)
            write_glb(tmp, np.asarray(mesh.vertices), np.asarray(mesh.triangles),
                      np.asarray(mesh.vertex_normals), np.asarray(mesh.vertex_colors) if colour else None)
        elif not o3d.io.write_triangle_mesh(str(tmp), mesh, write_vertex_colors=colour) or not tmp.is_file():
            raise OSError(f"{path}: open3d could not write the mesh (disk full?)")

    write_atomic(path, write)
    return {"vertices": int(verts.shape[0]), "faces": int(faces.shape[0]),
            "primitives": int(idx.numel()), "path": str(path)}



def export_run_meshes(checkpoint: str | Path, out: str | Path, colour: bool = False,
                      scales: list[int] | None = None, scene: str | Path | None = None,
                      device=None) -> list[dict]:
    """`dnmp export-mesh`: `export_mesh` of a checkpoint file, a run folder (newest
    step_*.pt), or each block of a block run (OUT_<block>.SUFFIX; neighbouring blocks
    overlap).

    Args:
        checkpoint: step_*.pt, geometry.pt (shapes only), a run folder or a block run.
        scene: a block run's scene folder when it moved since training (a single
            checkpoint needs no scene).
        colour, scales: as `export_mesh`.
        device: where the primitives are decoded (as `open_run`; None: the CPU).
    Returns: one `export_mesh` dict per file written, plus "block" (None for a
        single model) and "checkpoint".
    Raises:
        CheckpointError: an unusable checkpoint, any unusable block (all are checked
            before a file is written), or `colour` with geometry.pt (its radiance field
            is untrained).
    """
    from .train.blocks import is_block_run
    from .train.checkpoint import load_checkpoint
    from .train.factory import check_radiance_trained, renderer_from_checkpoint
    from .train.run import open_run

    out = Path(out)
    if Path(checkpoint).is_dir() and is_block_run(checkpoint):
        run = open_run(checkpoint, scene, device)  # checks every block first
        return [{**export_mesh(renderer, out.with_name(f"{out.stem}_{name}{out.suffix}"), colour, scales),
                 "block": name, "checkpoint": run.source} for name, renderer in run.models()]
    ckpt = load_checkpoint(checkpoint)
    if colour:
        check_radiance_trained(ckpt, "its colours would be grey")
    info = export_mesh(renderer_from_checkpoint(ckpt, device), out, colour, scales)
    return [{**info, "block": None, "checkpoint": ckpt["path"]}]

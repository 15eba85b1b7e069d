"""The PLY codec of dnmp: point clouds as binary little-endian PLY (float32
xyz, optional uint8 rgb) on write; any PLY open3d reads (binary or ASCII,
extra vertex properties ignored) on read, with a size check open3d lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dnmp.data.errors import SceneError

_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2,
              "uint16": 2, "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4,
              "double": 8, "float64": 8}


def _check_ply_size(p: Path) -> None:
    """Raise SceneError if a PLY file is shorter than its header promises (PLY spec:
    header lines up to ``end_header``, then the elements; binary rows have fixed size
    unless an element has list properties, ASCII rows are one line each)."""
    with open(p, "rb") as fh:
        head = fh.read(65536)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise SceneError(p, "not a PLY file (no 'ply' magic or 'end_header')")
    body_start = head.index(b"\n", end) + 1 if b"\n" in head[end:] else len(head)
    fmt, elements = None, []  # [(name, count, row bytes or None for list rows)]
    for line in head[:end].decode("ascii", "replace").splitlines():
        w = line.split()
        if not w:
            continue
        if w[0] == "format" and len(w) > 1:
            fmt = w[1]
        elif w[0] == "element" and len(w) == 3:
            elements.append([w[1], int(w[2]) if w[2].isdigit() else 0, 0])
        elif w[0] == "property" and elements:
            if w[1] == "list" or w[1] not in _PLY_SIZES:
                elements[-1][2] = None
            elif elements[-1][2] is not None:
                elements[-1][2] += _PLY_SIZES[w[1]]
    body = p.stat().st_size - body_start
    if fmt in ("binary_little_endian", "binary_big_endian"):
        if any(e[2] is None for e in elements):
            return  # variable-size rows: nothing cheap to check
        need = sum(n * size for _, n, size in elements)
        if body < need:
            counts = ", ".join(f"{n} {name}" for name, n, _ in elements)
            raise SceneError(p, f"truncated point cloud: the header promises {counts} ({need} bytes) "
                                f"but the file holds {body} bytes after it")
    elif fmt == "ascii":
        with open(p, "rb") as fh:
            fh.seek(body_start)
            lines = sum(1 for ln in fh if ln.strip())
        need = sum(n for _, n, _ in elements)
        if lines < need:
            raise SceneError(p, f"truncated point cloud: the header promises {need} rows but the "
                                f"file holds {lines}")
    else:
        raise SceneError(p, f"unknown PLY format {fmt!r}")


def read_ply_points(path, dtype=np.float32):
    """(xyz ``dtype`` [N, 3], rgb float32 [N, 3] in [0,1] or None) of a PLY's
    vertices, via open3d (other vertex properties are ignored). float64 keeps
    large world coordinates exact (KITTI-360's fused clouds). Raises
    SceneError for a missing, truncated or unreadable file."""
    import open3d as o3d

    p = Path(path)
    if not p.is_file():
        raise SceneError(p, "point cloud file is missing")
    _check_ply_size(p)  # open3d returns garbage points for a truncated file, with no error
    try:
        pcd = o3d.io.read_point_cloud(str(p), format="ply")
    except Exception as e:
        raise SceneError(p, f"unreadable point cloud ({e})") from None
    xyz = np.asarray(pcd.points, dtype=dtype)
    if len(xyz) == 0 and p.stat().st_size > 200:
        raise SceneError(p, "unreadable or empty point cloud")
    rgb = np.asarray(pcd.colors, dtype=np.float32) if pcd.has_colors() else None
    return xyz, rgb


def write_ply_points(path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> None:
    """Write a binary PLY with float32 xyz (+ uint8 rgb when given, rgb in [0,1]
    float or uint8)."""
    xyz = np.ascontiguousarray(xyz, dtype="<f4").reshape(-1, 3)
    n = len(xyz)
    props = ["property float x", "property float y", "property float z"]
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8:
            rgb = np.clip(np.round(rgb.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        props += ["property uchar red", "property uchar green", "property uchar blue"]
        rec = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                 ("r", "u1"), ("g", "u1"), ("b", "u1")])
        rec["r"], rec["g"], rec["b"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    else:
        rec = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    rec["x"], rec["y"], rec["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}", *props,
                        "end_header"]) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(rec.tobytes())

"""Compiler flags and the source hash shared by setup.py (ahead of time) and the
just-in-time build in _extension.py. No third-party imports: setup.py loads this
file directly, before torch or dnmp are importable."""

from __future__ import annotations

import hashlib
from pathlib import Path

# -fopenmp: ATen's at::parallel_for only runs threaded when the caller is compiled with OpenMP.
# -ffp-contract=off: no fused multiply-add, so the kernels round exactly like the torch reference
#   (the coverage tie-break on shared edges relies on it).
# -march=x86-64-v2 at most: binaries must run on any CI machine of the same kind.
CXX_FLAGS = ["-O3", "-fopenmp", "-march=x86-64-v2", "-ffp-contract=off"]
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--fmad=false", "-std=c++17"]
SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")


def source_hash(root: Path) -> str:
    """sha256 over the relative paths and contents of every kernel source under root."""
    root = Path(root)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def cpp_sources(root: Path) -> list[Path]:
    root = Path(root)
    return sorted(root.glob("*.cpp")) + sorted((root / "cpu").glob("*.cpp"))


def cuda_sources(root: Path) -> list[Path]:
    """Every .cu file under root: all are built, and all are compiled by CI's nvcc test."""
    return sorted(Path(root).rglob("*.cu"))

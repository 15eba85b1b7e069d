"""Checkpoints (DESIGN.md "Checkpoints"): one file per save, written atomically.

A checkpoint is a `torch.save`d dict:
    format "dnmp-checkpoint", version 1, config (TrainConfig dict), step,
    model (renderer state_dict), optimizer (dict of optimizer state_dicts),
    rng (torch RNG state), scene {name, fingerprint, path}.
Saved as `step_XXXXXXX.pt` in the checkpoint folder, through a temporary file in
the same folder, fsync and `os.replace`, so an interrupted save never leaves a
truncated checkpoint under the final name. The geometry stage's result is
`geometry.pt` (stage "geometry", no optimizer state) in the same folder.
Version 2: primitives of several scales (model state has voxel_sizes, scale_counts).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .._io import atomic_torch_save

FORMAT = "dnmp-checkpoint"
VERSION = 2
_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def save_checkpoint(folder: str | Path, step: int, payload: dict, keep: int = 3) -> Path:
    """Write `payload` (+ format, version, step) as folder/step_{step:07d}.pt atomically;
    delete all but the newest `keep` checkpoints. Returns the path written."""
    final = write_checkpoint_file(Path(folder) / f"step_{step:07d}.pt", step, payload)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return final


GEOMETRY_NAME = "geometry.pt"


def save_geometry_checkpoint(folder: str | Path, payload: dict) -> Path:
    """Write the geometry stage's result as folder/geometry.pt (atomically, step 0); the
    radiance stage of a later `dnmp train --stages radiance` starts from it."""
    return write_checkpoint_file(Path(folder) / GEOMETRY_NAME, 0, {"stage": "geometry", **payload})


def write_checkpoint_file(final: Path, step: int, payload: dict) -> Path:
    """Write `payload` (+ format, version, step) to `final` through a temporary file in
    the same folder, fsync and rename, so a crash leaves the old file or the new one."""
    data = {"format": FORMAT, "version": VERSION, "step": int(step), **payload}
    return atomic_torch_save(data, final)  # OSError names `final`; older files stay intact


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoints in a folder, oldest first (by step number)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    ckpts = list_checkpoints(folder)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path) -> dict:
    """Load and validate a checkpoint file (or the newest one in a run/checkpoint folder).

    Raises:
        CheckpointError: missing file, not a dnmp checkpoint, corrupt, or unknown version.
    """
    p = Path(path)
    if p.is_dir():
        found = latest_checkpoint(p) or latest_checkpoint(p / "checkpoints")
        if found is None:
            raise CheckpointError(f"{p}: no checkpoint (step_*.pt) in this folder")
        p = found
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        data = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{p}: cannot read checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a dnmp checkpoint")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{p}: checkpoint version {data.get('version')!r} is not supported "
                              f"(this dnmp reads version {VERSION})")
    data["path"] = str(p)
    return data

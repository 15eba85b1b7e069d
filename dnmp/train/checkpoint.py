"""Checkpoints (DESIGN.md "Checkpoints"): one file per save, written atomically.

A checkpoint is a `torch.save`d dict:
    format "dnmp-checkpoint", version 1, config (TrainConfig dict), step,
    model (renderer state_dict: the parameters to render, i.e. their tail average once it
    has samples), parameter_average (None, or what resumes the average: the raw parameters
    the optimizers step, the sample count, start, interval and first sample's step;
    `averaging.ParameterAverage`),
    optimizer (dict of optimizer state_dicts),
    rng (torch RNG state), scene {name, fingerprint, path (absolute; see
    `checkpoint_scene_path` for older relative ones)}, train_seconds (radiance loop
    time summed over resumed runs), extra_metrics.
Only plain data (tensors, numbers, strings, containers): it is read with
torch.load(weights_only=True), so a crafted file cannot run code (`dnmp._io`).
Saved as `step_XXXXXXX.pt` in the checkpoint folder, through a temporary file in
the same folder, fsync and `os.replace`, so an interrupted save never leaves a
truncated checkpoint under the final name. The geometry stage's result is
`geometry.pt` (stage "geometry", no optimizer state) in the same folder.
Version 2: primitives of several scales (model state has voxel_sizes, scale_counts).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..data.subset import SceneSubset, subset_scene
from .._io import UnsafeFileError, atomic_torch_save, load_plain, remove_stale_temporaries

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


def remove_stale_checkpoint_files(folder: str | Path) -> list[Path]:
    """Delete the `.tmp_*` files that a process killed while saving left in a checkpoint
    folder (see `dnmp._io.atomic_torch_save`); returns the paths removed. Call it when a
    run starts, before anything else writes there."""
    return remove_stale_temporaries(folder)


def scene_info(scene) -> dict:
    """What a checkpoint records of its scene: name, fingerprint and the absolute path
    of its folder, so that a run can be rendered from any working directory."""
    info = {"name": scene.name, "fingerprint": scene.fingerprint(),
            "path": str(Path(scene.root).resolve())}
    if isinstance(scene, SceneSubset):  # a block of a long drive: which frames
        info.update(frames=[f.name for f in scene.frames], parent_fingerprint=scene.parent_fingerprint)
    return info


def scene_for_checkpoint(ckpt: dict, scene):
    """The scene a checkpoint's model belongs to, given the whole scene it names: the
    scene itself, or for a block of a long drive its frame subset (`data.subset`)."""
    info = ckpt.get("scene") or {}
    if info.get("frames") and info.get("parent_fingerprint") == scene.fingerprint():
        return subset_scene(scene, info["frames"], name=info.get("name"))
    return scene


def checkpoint_scene_path(ckpt: dict) -> Path | None:
    """The folder of the scene a checkpoint was trained on, if it is still there.

    New checkpoints store an absolute path. Older ones may hold a path relative to the
    working directory of the training command; it is tried relative to the current
    directory, then relative to the run folder (CHECKPOINT/../..) and each folder above
    it (e.g. `runs/kitti00` trained from the repository with `scenes/kitti00`). Returns
    the first candidate holding a scene.json, else None (the caller suggests --scene).
    """
    stored = (ckpt.get("scene") or {}).get("path")
    if not stored:
        return None
    stored = Path(stored)
    if stored.is_absolute():
        return stored if stored.is_dir() else None
    candidates = [Path.cwd() / stored]
    if ckpt.get("path"):
        run = Path(ckpt["path"]).resolve().parent.parent
        candidates += [base / stored for base in (run, *run.parents)]
    for c in candidates:
        if (c / "scene.json").is_file():
            return c
    return None


# A checkpoint written before a setting existed was trained without it: its config gets
# the value that means "off" (far_shells: issue 13's far field), not today's default.
LEGACY_DEFAULTS = {"far_shells": 0, "average_from": 1.0, "bf16_matmul": False}


def with_legacy_defaults(config: dict) -> dict:
    """A saved config dict (a checkpoint's, a block manifest's, a run's config.json) with
    the settings it lacks set to `LEGACY_DEFAULTS` (in place; returned)."""
    for key, old in LEGACY_DEFAULTS.items():
        config.setdefault(key, old)
    return config


def load_checkpoint(path: str | Path) -> dict:
    """Load and validate a checkpoint file (or the newest one in a run/checkpoint folder).

    Raises:
        CheckpointError: missing file, not a dnmp checkpoint, corrupt, unknown version,
            or a file holding Python objects other than plain data (a crafted pickle is
            refused without running it: torch.load(weights_only=True)).
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
        data = load_plain(p)  # weights_only=True: a crafted pickle is refused, never run
    except UnsafeFileError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:
        raise CheckpointError(f"{p}: cannot read checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a dnmp checkpoint")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{p}: checkpoint version {data.get('version')!r} is not supported "
                              f"(this dnmp reads version {VERSION})")
    data["path"] = str(p)
    if isinstance(data.get("config"), dict):
        with_legacy_defaults(data["config"])  # settings added since version 1
    return data


def scene_mismatch(info: dict, scene) -> str | None:
    """None if `info` (what `scene_info` recorded) describes `scene`; else why not, saying
    what differs: "belongs to scene 'a' (/x), not to 'b' (/y)"; for two scenes of one name
    their folders; for one folder, that its frames or cameras changed since."""
    if info.get("fingerprint") == scene.fingerprint():
        return None
    here = str(Path(scene.root).resolve())
    if info.get("name") != scene.name:
        return f"belongs to scene {info.get('name')!r} ({info.get('path')}), not to {scene.name!r} ({here})"
    if info.get("path") != here:
        return (f"belongs to scene {scene.name!r} in {info.get('path')}, not to the scene of the "
                f"same name in {here} (other cameras or frames)")
    return (f"belongs to scene {scene.name!r} in {here} as it was when trained: its cameras or "
            f"frame list changed since (fingerprint {info.get('fingerprint')}, now {scene.fingerprint()})")

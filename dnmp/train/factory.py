"""The model factory: build a renderer from a config, rebuild one from a checkpoint,
and check that a checkpoint belongs to a scene. Used by the stages, `run.open_run`,
block rendering and `dnmp profile`; it knows configs and checkpoint dicts, not folders.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..data.scene import Scene
from ..device import resolve_device
from ..model import (BackgroundField, DNMPRenderer, FarField, Primitives, RadianceField,
                     RenderConfig, ShapeDecoder, voxelize)
from .checkpoint import CheckpointError, scene_mismatch
from .config import TrainConfig


def make_decoder(cfg: TrainConfig) -> tuple[ShapeDecoder, torch.Tensor | None]:
    """The shape decoder `cfg.shape_decoder` names, frozen, and the latent of its
    template sphere (None for the untrained "template" decoder: any latent decodes
    to the sphere). See `dnmp.model.autoencoder` (paper Sec. 3.1).

    Raises:
        ValueError: weights missing, corrupt or of another latent size.
    """
    if cfg.shape_decoder == "template":
        decoder, latent = ShapeDecoder(cfg.latent_dim), None
    else:
        from ..model.autoencoder import load_shape_decoder, template_latent

        path = None if cfg.shape_decoder == "pretrained" else cfg.shape_decoder
        decoder = load_shape_decoder(path, latent_dim=cfg.latent_dim)
        latent = template_latent(decoder)
    for p in decoder.parameters():
        p.requires_grad_(False)
    return decoder, latent


def build_renderer(centres: list[torch.Tensor], cfg: TrainConfig,
                   decoder: ShapeDecoder | None = None,
                   init_latent: torch.Tensor | None = None) -> DNMPRenderer:
    """A DNMP renderer with one primitive per voxel centre.

    Args:
        centres: one float32 [P_s, 3] tensor (scene frame) per scale, fine first
            (voxel sizes cfg.voxel_size, then cfg.coarse_voxel_size).
        decoder, init_latent: the shape decoder and the latent every primitive
            starts from (default: `make_decoder(cfg)`).
    """
    if decoder is None:
        decoder, init_latent = make_decoder(cfg)
    sizes = [cfg.voxel_size, cfg.coarse_voxel_size][: len(centres)]
    prims = Primitives(torch.cat(centres), sizes, feature_dim=cfg.feature_dim,
                       decoder=decoder, latent_dim=cfg.latent_dim, seed=cfg.seed,
                       scale_counts=[len(c) for c in centres], init_latent=init_latent)
    with torch.random.fork_rng():  # MLP initialisation from cfg.seed, whoever calls (reproducible runs)
        torch.manual_seed(cfg.seed)
        field = RadianceField(cfg.feature_dim, cfg.hidden, cfg.feature_freqs, cfg.dir_freqs)
        background = BackgroundField(cfg.background_hidden, cfg.background_freqs)
    far_field = None
    if cfg.far_shells > 0:  # shells around all primitives (a checkpoint's buffers replace these)
        far_field = FarField(cfg.far_shells, cfg.far_shell_texels, cfg.far_shell_ratio)
        far_field.place(torch.cat(centres))
    return DNMPRenderer(prims, field, background,
                        RenderConfig(cfg.faces_per_pixel, cfg.coarse_faces_per_pixel, cfg.near, cfg.far),
                        far_field=far_field)


def scene_centres(scene: Scene, cfg: TrainConfig) -> list[torch.Tensor]:
    """Voxel centres of the scene's point clouds of kinds `cfg.point_kinds` (all if
    empty), one float32 [P_s, 3] tensor per scale: fine (`cfg.voxel_size`, without
    the kinds in `cfg.coarse_only_point_kinds`), then coarse (`cfg.coarse_voxel_size`,
    every kind) if enabled. Scene coordinates, metres.

    Raises:
        ValueError: naming the scene when a kind is missing or a scale has no
            points to voxelize.
    """
    if not scene.point_kinds():
        raise ValueError(f"{Path(scene.root) / 'scene.json'}: lists no point_clouds, so there is "
                         f"nothing to place primitives on")
    kinds = cfg.point_kinds or sorted(set(scene.point_kinds()))
    missing = [k for k in kinds if k not in scene.point_kinds()]
    if missing:
        raise ValueError(f"{scene.root}: scene has no point cloud of kind {missing}; "
                         f"it has {sorted(set(scene.point_kinds()))}")
    coarse = cfg.coarse_voxel_size > 0
    fine_kinds = [k for k in kinds if not (coarse and k in cfg.coarse_only_point_kinds)]
    if not fine_kinds:
        raise ValueError(f"{scene.root}: every point kind {kinds} is coarse-only "
                         f"(coarse_only_point_kinds), so the fine scale gets no primitives")
    pts = {k: _finite_points(scene, k) for k in kinds}
    out = []
    for scale_kinds, size in [(fine_kinds, cfg.voxel_size)] + ([(kinds, cfg.coarse_voxel_size)] if coarse else []):
        scale_pts = torch.cat([pts[k] for k in scale_kinds])
        if scale_pts.shape[0] == 0:
            raise ValueError(f"{scene.root}: scene has no finite points to place primitives on "
                             f"(empty or all-NaN point clouds {scale_kinds})")
        out.append(voxelize(scale_pts, size))
    return out


def _finite_points(scene: Scene, kind: str) -> torch.Tensor:
    """float32 [N, 3] finite points of one kind (maybe none); warns about dropped NaN/Inf rows."""
    pts = torch.from_numpy(scene.load_points(kind))
    finite = torch.isfinite(pts).all(dim=1)
    if not finite.all():
        print(f"warning: {scene.root}: {int((~finite).sum())} NaN/Inf points in {kind!r} are ignored",
              file=sys.stderr)
    return pts[finite]


def renderer_from_checkpoint(ckpt: dict, device: torch.device | str | None = None) -> DNMPRenderer:
    """Rebuild the renderer saved in a checkpoint dict (see `checkpoint.load_checkpoint`,
    which loads every tensor to the CPU whatever device saved it) and move it to `device`
    (a torch.device or a `dnmp.device.resolve_device` string; None: stay on the CPU).
    Raises: CheckpointError for a state that does not fit its config; ValueError for an
    unavailable device."""
    cfg = TrainConfig.from_dict(ckpt["config"], ckpt.get("path", "checkpoint"))
    state = ckpt["model"]
    try:
        counts = state["primitives.scale_counts"].tolist()
        centres = list(torch.split(state["primitives.centres"], counts))
        hidden = state["primitives.decoder.mlp.0.weight"].shape[0]
    except (KeyError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt.get('path')}: model state lacks primitives ({exc})") from None
    decoder = ShapeDecoder(cfg.latent_dim, hidden=hidden)
    for p in decoder.parameters():
        p.requires_grad_(False)
    renderer = build_renderer(centres, cfg, decoder=decoder)
    if ckpt.get("stage") == "geometry" and renderer.far_field is not None:
        # the geometry stage never trains the far field: a fresh one, placed around the primitives
        state = {**state, **{f"far_field.{k}": v for k, v in renderer.far_field.state_dict().items()}}
    try:
        renderer.load_state_dict(state)
    except RuntimeError as exc:
        why = " ".join(str(exc).split())  # torch's first line only names the module: keep the reasons
        raise CheckpointError(f"{ckpt.get('path')}: model state does not match its config "
                              f"({why[:300]})") from None
    return renderer if device is None else renderer.to(resolve_device(device))


def check_checkpoint_scene(ckpt: dict, scene: Scene) -> None:
    """Raise CheckpointError, naming the checkpoint and what differs (name, folder or
    contents), if it was trained on another scene than `scene`."""
    why = scene_mismatch(ckpt.get("scene") or {}, scene)
    if why:
        raise CheckpointError(f"{ckpt.get('path')}: checkpoint {why}")


def check_radiance_trained(ckpt: dict, use: str) -> None:
    """Raise CheckpointError for the geometry stage's checkpoint (geometry.pt), whose
    radiance field is untrained; `use` says what it would be wrong for."""
    if ckpt.get("stage") == "geometry":
        raise CheckpointError(f"{ckpt['path']}: this is the geometry stage's model; its radiance "
                              f"field is untrained ({use}). Use a step_*.pt checkpoint or the run "
                              f"folder, or train the radiance stage first")


def describe_primitives(renderer: DNMPRenderer) -> str:
    """One line: primitives and faces per scale, voxel sizes and faces per pixel (K)."""
    prims = renderer.primitives
    parts = []
    for (a, b), k in zip(prims.scale_ranges(), renderer.faces_per_pixel_by_scale()):
        size = float(prims.voxel_sizes[a]) if b > a else float("nan")
        parts.append(f"{b - a} primitives of {size:g} m ({k} faces per pixel)")
    line = f"{' + '.join(parts)}, {prims.num_faces} faces"
    ff = renderer.far_field
    if ff is not None:
        radii = ", ".join(f"{r:.0f}" for r in ff.radii.tolist())
        line += f"; far field: {ff.num_shells} shells of radius {radii} m"
    return line

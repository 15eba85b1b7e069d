"""Training configuration: one dataclass, overridable from a TOML file (`--config`)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..device import check_device_spec

# Upper bound of faces_per_pixel (both scales): every layer costs memory per cached
# training pixel and per rendered pixel (faces_per_pixel = 100000 asked for 93 GB); 32 is 8x
# the default.
MAX_FACES_PER_PIXEL = 32


@dataclass
class TrainConfig:
    """Settings of `dnmp train`. Every field can be set in a TOML file by its name.

    Model (paper Sec. 3):
        voxel_size: primitive voxel edge s in metres. The paper's fine scale (and
            DESIGN.md's) is 0.5 m; the default 0.25 m gave +0.55 dB held-out PSNR on
            the bundled drive's frames at equal steps and time (README, "Figures").
        point_kinds: which scene point clouds are voxelized ("lidar", "stereo", ...);
            empty = all.
        coarse_only_point_kinds: of those, the kinds voxelized at the coarse scale only
            (default "stereo_far": stereo points beyond the converter's --stereo-near-depth,
            whose depth error grows with the square of depth; at the fine scale they cost
            16k primitives and 13% of the radiance stage's time on the bundled drive for
            0.0-0.1 dB of held-out PSNR, README "Fourth round"). With coarse_voxel_size 0
            they join the one scale.
        feature_dim: per-vertex feature length (paper: 32).
        latent_dim: shape latent length (paper: 8).
        hidden: width of the radiance MLPs.
        feature_freqs, dir_freqs, background_freqs: positional-encoding frequencies
            of features, view directions and the background's directions (feature_freqs
            1, not 2 as before issue 12's ninth round: the same held-out PSNR, 40% fewer
            trunk inputs; README "Ninth round").
        background_hidden: width of the background MLP (64; 128 before issue 12's ninth
            round: a third of the products per ray, no held-out loss; README "Ninth round").
        far_shells: number of far-field shells (`model.field.FarField`: RGBA cube-map spheres
            around the primitives, radii growing by far_shell_ratio from one that encloses
            them all, composited behind the primitives and in front of the sky); 0 = none
            (the sky alone, as before; checkpoints older than this setting load with 0).
        far_shell_texels: texels along a cube face edge of each shell (64: 1.4 deg; 256 overfit
            the bundled drive's training views and cost 30% more per step, README "Quality").
        far_shell_ratio: ratio of consecutive shell radii.
        faces_per_pixel: K layers composited per pixel (fine scale), 1 to
            MAX_FACES_PER_PIXEL (32).
        coarse_voxel_size: voxel edge of the coarse primitive scale (paper: 1.0 m),
            composited behind the fine layers; 0 = one scale only.
        coarse_faces_per_pixel: K of the coarse scale (paper: 2; 4 gave +0.14 dB held-out on the
            bundled drive at 2,000 steps, README "Quality").
        shape_decoder: "pretrained" (the auto-encoder decoder shipped in the package,
            frozen), "template" (untrained: every latent decodes to the ico-sphere),
            or a path to weights written by `dnmp train-autoencoder`.
        near, far: rasterization clipping depths (camera z, metres).
    Geometry stage (paper Sec. 3.2; decoder frozen, latents + centre offsets fitted
    to the depth images of the training frames):
        geometry_steps: SparseAdam steps (0 skips the stage).
        geometry_windows, geometry_window: each step renders this many square
            windows of this many pixels, centred on random LiDAR pixels of random
            training frames (only the primitives seen there are decoded).
        geometry_lr_latent, geometry_lr_offset: learning rates (latent units, metres).
        depth_max_range: depths beyond this (metres) are not used.
        geometry_depth: which depth images supervise the stage: "lidar" (the frames'
            LiDAR depth, scene field `depth`), "stereo" (the converters' SGBM depth of
            the training stereo pairs, `stereo_depth`; the paper uses multi-view-stereo
            depth) or "auto" (LiDAR when the scene has it, else stereo).
        w_laplacian, w_normal: weights of the Laplacian-smoothing and
            normal-consistency regularisers (on the unit-frame meshes).
        w_offset: weight of the hinge keeping offsets within half a voxel.
        geometry_refresh_every: steps between re-rasterizations of the training
            frames that decide which primitives each window sees.
        geometry_pool_frames: windows are drawn from at most this many training frames
            at a time; each refresh moves to the next ones of a seeded cyclic order, so
            the stage's memory and refresh time do not grow with the drive.
    Optimisation (radiance stage: geometry fixed, fragments cached):
        steps: Adam steps; batch_size: random rays per step.
        cache_pixels: the fragments of at most this many training pixels are cached at a
            time (about 99 bytes each at K = 4 + 4: 6M pixels ~ 0.6 GB); a drive with more
            training pixels is cached as a rotating pool of frames (`train/frame_pool.py`),
            so memory does not grow with the drive.
        cache_rotate_every: steps between pool rotations (one frame leaves, the next enters).
        bf16_matmul: the radiance and sky MLPs of a training step multiply bfloat16
            operands (`model.field.mlp_low_precision`, float32 accumulation) where the
            device has bf16 matrix kernels (`model.renderer.default_bf16_matmul`: a float32
            model on a CPU with AMX or AVX512-BF16); elsewhere, and with false, float32
            everywhere. On by default since issue 12's eighth round: 1.29x the steps per
            second on an AMD EPYC with AVX512-BF16 (1.14x with AMX), and the same held-out
            PSNR on both drives measured (README "Training step, eighth round"). Renders
            choose for themselves (`RenderConfig.bf16_matmul`).
        lr_features: learning rate of the vertex features (`RowAdam`: SparseAdam's update).
        lr_mlp: Adam learning rate of the MLPs.
        lr_far_field: Adam learning rate of the far-field shells' texels (logits).
        lr_final_factor: both rates decay exponentially to this factor at the last step
            (the decay follows steps, never the clock).
        average_from, average_every: the model a run saves and scores is the mean of the
            trained parameters (vertex features, MLPs, far field) sampled every
            `average_every` steps after `average_from` x `steps` (tail averaging,
            `train/averaging.py`); the optimizers step the raw parameters, which checkpoints
            keep beside the mean for --resume. 1.0 = off: the last step's parameters. A
            resumed average goes on from where it began, even with another --steps.
        seed: seeds primitives' initialisation and ray sampling.
        device: where the run computes: "auto" (cuda when torch sees a GPU, else cpu),
            "cpu", "cuda" or "cuda:N" (`dnmp.device.resolve_device`). `dnmp train --device`
            overrides it, also with --resume (the run's other settings are kept): a run
            started on a GPU continues on a CPU and the other way round. This is the
            device asked for; metrics.json and every checkpoint record the one used
            ("device": e.g. "cuda:0"). Primitives and MLPs are initialised on the CPU from
            `seed` and then moved, so a run starts from the same model on every device.
        time_budget_minutes: an explicit wall-clock limit for both stages' loops: stop
            the radiance loop past it (and still save and evaluate; metrics.json then has
            stopped_by_time_limit = true). 0 (the default) = no limit: a run is defined by
            its steps and seed, so it gives the same model on a busy or an idle machine.
            The default `steps` keeps the bundled run within its 15-minute promise.
    Long drives (`train/blocks.py`):
        block_frames: a drive with more instants (timestamps) than this is trained as
            overlapping blocks of this many instants, each its own model (the DNMP paper
            trains 80-frame windows); 0 = never split.
        block_overlap: instants shared by neighbouring blocks (at most block_frames / 2);
            renders blend the two blocks across it.
    Output:
        log_every: steps between progress-bar updates of loss and PSNR.
        checkpoint_every: steps between checkpoints; keep_checkpoints: how many to keep.
    """

    voxel_size: float = 0.25
    point_kinds: list[str] = field(default_factory=list)
    coarse_only_point_kinds: list[str] = field(default_factory=lambda: ["stereo_far"])
    feature_dim: int = 32
    latent_dim: int = 8
    hidden: int = 64
    feature_freqs: int = 1
    dir_freqs: int = 4
    background_freqs: int = 10
    background_hidden: int = 64
    far_shells: int = 4
    far_shell_texels: int = 64
    far_shell_ratio: float = 2.0
    faces_per_pixel: int = 4
    coarse_voxel_size: float = 1.0
    coarse_faces_per_pixel: int = 4
    shape_decoder: str = "pretrained"
    geometry_steps: int = 300
    geometry_windows: int = 8
    geometry_window: int = 64
    geometry_lr_latent: float = 1e-2
    geometry_lr_offset: float = 2e-3
    depth_max_range: float = 40.0
    geometry_depth: str = "auto"
    w_laplacian: float = 0.1
    w_normal: float = 0.01
    w_offset: float = 100.0
    geometry_refresh_every: int = 100
    geometry_pool_frames: int = 16
    near: float = 0.05
    far: float = 1e4
    steps: int = 3000
    batch_size: int = 8192
    cache_pixels: int = 6_000_000
    cache_rotate_every: int = 50
    bf16_matmul: bool = True
    lr_features: float = 5e-2
    lr_mlp: float = 5e-3
    lr_far_field: float = 5e-2
    lr_final_factor: float = 0.1
    average_from: float = 0.5
    average_every: int = 10
    seed: int = 0
    device: str = "auto"
    time_budget_minutes: float = 0.0
    block_frames: int = 80
    block_overlap: int = 8
    log_every: int = 25
    checkpoint_every: int = 500
    keep_checkpoints: int = 3

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(names))}")
        defaults = cls()
        for key, value in d.items():
            want = type(getattr(defaults, key))
            ok = (isinstance(value, want) and not (want is int and isinstance(value, bool))) or \
                (want is float and isinstance(value, int) and not isinstance(value, bool))
            if want is list:
                ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            if not ok:
                kind = "a list of strings" if want is list else want.__name__
                raise ValueError(f"{source}: {key} must be {kind}, got {value!r}")
        cfg = cls(**{k: (float(v) if type(getattr(defaults, k)) is float else v) for k, v in d.items()})
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        checks = [
            (self.voxel_size > 0, "voxel_size must be > 0"),
            (self.feature_dim >= 1, "feature_dim must be >= 1"),
            (self.latent_dim >= 1, "latent_dim must be >= 1"),
            (self.hidden >= 1 and self.background_hidden >= 1, "hidden sizes must be >= 1"),
            (min(self.feature_freqs, self.dir_freqs, self.background_freqs) >= 0,
             "positional-encoding frequencies must be >= 0"),
            (self.lr_features > 0 and self.lr_mlp > 0 and self.lr_far_field > 0,
             "learning rates must be > 0"),
            (self.far_shells >= 0 and self.far_shell_texels >= 2 and self.far_shell_ratio > 1,
             "far_shells must be >= 0, far_shell_texels >= 2 and far_shell_ratio > 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.time_budget_minutes >= 0, "time_budget_minutes must be >= 0"),
            (1 <= self.faces_per_pixel <= MAX_FACES_PER_PIXEL
             and 1 <= self.coarse_faces_per_pixel <= MAX_FACES_PER_PIXEL,
             f"faces_per_pixel and coarse_faces_per_pixel must be between 1 and {MAX_FACES_PER_PIXEL} "
             f"(got {self.faces_per_pixel} and {self.coarse_faces_per_pixel}; memory grows with K)"),
            (self.coarse_voxel_size == 0 or self.coarse_voxel_size > self.voxel_size,
             f"coarse_voxel_size ({self.coarse_voxel_size}) must be 0 (one scale) or larger than "
             f"voxel_size ({self.voxel_size}), e.g. twice it as in the paper"),
            (self.geometry_steps >= 0 and self.geometry_windows >= 1 and self.geometry_window >= 1,
             "geometry_steps must be >= 0, geometry_windows and geometry_window >= 1"),
            (self.geometry_lr_latent > 0 and self.geometry_lr_offset > 0,
             "geometry learning rates must be > 0"),
            (self.depth_max_range > 0, "depth_max_range must be > 0"),
            (self.geometry_depth in ("auto", "lidar", "stereo"),
             f"geometry_depth must be 'auto', 'lidar' or 'stereo', got {self.geometry_depth!r}"),
            (min(self.w_laplacian, self.w_normal, self.w_offset) >= 0,
             "regulariser weights must be >= 0"),
            (self.geometry_refresh_every >= 1, "geometry_refresh_every must be >= 1"),
            (self.geometry_pool_frames >= 1, "geometry_pool_frames must be >= 1"),
            (self.shape_decoder != "", "shape_decoder must be 'pretrained', 'template' or a path"),
            (0 < self.near < self.far, "need 0 < near < far"),
            (self.steps >= 0, "steps must be >= 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.block_frames >= 0 and 0 <= 2 * self.block_overlap <= max(self.block_frames, 0)
             or self.block_frames == 0,
             "block_frames must be >= 0 and block_overlap between 0 and block_frames / 2"),
            (self.cache_pixels >= 1 and self.cache_rotate_every >= 1,
             "cache_pixels and cache_rotate_every must be >= 1"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (0 < self.lr_final_factor <= 1, "lr_final_factor must be in (0, 1]"),
            (0 <= self.average_from <= 1, f"average_from must be in [0, 1], got {self.average_from}"),
            (self.average_every >= 1, f"average_every must be >= 1, got {self.average_every}"),
        ]
        check_device_spec(self.device, f"{source}: device")
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{source}: {msg}")


def load_config(path: str | Path | None, overrides: dict | None = None) -> TrainConfig:
    """Defaults, then the TOML file's values, then `overrides`.

    Raises:
        ValueError: one line naming the file, for unreadable TOML or unknown/invalid settings.
        FileNotFoundError: if the file does not exist.
    """
    values: dict = {}
    src = "defaults"
    if path is not None:
        p = Path(path)
        src = str(p)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: config file not found")
        try:
            values = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{p}: not a valid TOML file ({exc})") from None
    values.update(overrides or {})
    return TrainConfig.from_dict(values, src)

"""The DNMP renderer: rasterize primitives, interpolate features, shade, composite.

Paper Sec. 3.3: the K nearest faces per pixel (rasterization) are shaded by the
radiance field and alpha-composited front to back; whatever transmittance is left
after the K layers goes to the background field.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from .. import ops
from ..ops._extension import bf16_matmul_available, kernels_for
from .field import BackgroundField, FarField, RadianceField, linear_chain
from .primitives import Primitives


@dataclass
class RenderConfig:
    """Rasterization settings.

    faces_per_pixel: K, layers composited per pixel for the finest scale (4 for
        the 0.5 m primitives, paper Sec. 3.3).
    coarse_faces_per_pixel: K of every coarser scale (TrainConfig's default: 4 for the 1.0 m primitives).
    near, far: clipping depths in metres (camera-space z), as in `dnmp.ops.rasterize`.
    chunk: pixels shaded at once when rendering whole images (memory bound).
    bf16_matmul: the fused rendering ops (`shade_rays_fused`, `background_colour_fused`) run
        their MLP layers with bfloat16 operands and float32 accumulation (AMX on CPUs that
        have it; 5-7x the float32 GEMM rate). None (default): where the CPU has bf16 matrix
        kernels and the model is float32; False: float32 throughout; True: required (the op
        raises ValueError where unavailable). Renders only: training steps choose with
        `TrainConfig.bf16_matmul` (`mlp_low_precision`). On the
        bundled drive the images stay within 0.001 dB held-out PSNR (README, "bf16 operands in
        the fused ops").
    """

    faces_per_pixel: int = 4
    coarse_faces_per_pixel: int = 2
    near: float = 0.05
    far: float = 1e4
    chunk: int = 1 << 16
    bf16_matmul: bool | None = None


# accumulated opacity at which a ray's rendered (surface) depth is taken
SURFACE_OPACITY = 0.05
# rays whose transmittance fell below this skip the remaining layers (renders only)
MIN_TRANSMITTANCE = 1e-4
# frustum culling gathers the visible primitives' faces only when at most this share of a
# scale is visible (otherwise the whole scale is rasterized: the same fragments)
CULL_MIN_SHARE = 0.9
# pixels per call of the fused shading ops in `shade_image` (at least RenderConfig.chunk)
FUSED_CHUNK = 1 << 21


def default_bf16_matmul(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """`RenderConfig.bf16_matmul`'s default (None): bf16 operands for a float32 model on a CPU
    with bf16 matrix kernels (`bf16_matmul_available`)."""
    return torch.device(device).type == "cpu" and dtype == torch.float32 and bf16_matmul_available()


def _linear_chain(seq: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """`field.linear_chain` with the parameters detached (the fused ops read them)."""
    chain = linear_chain(seq)
    return None if chain is None else ([w.detach() for w in chain[0]], [b.detach() for b in chain[1]])


def camera_rays(intrinsics: torch.Tensor, cam_to_world: torch.Tensor, height: int,
                width: int) -> torch.Tensor:
    """Unit view directions of every pixel centre, world frame.

    Args:
        intrinsics: float [3, 3] OpenCV pinhole (pixel (u, v) centre at image coords (u, v)).
        cam_to_world: float [4, 4] rigid transform, camera (x right, y down, z forward) to world.
        height, width: image size in pixels.
    Returns:
        float32 [height * width, 3], row-major pixel order.
    """
    dev = intrinsics.device
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=dev),
                          torch.arange(width, dtype=torch.float64, device=dev), indexing="ij")
    return pixel_rays(intrinsics, cam_to_world, u.reshape(-1), v.reshape(-1))


def pixel_rays(intrinsics: torch.Tensor, cam_to_world: torch.Tensor, u: torch.Tensor,
               v: torch.Tensor) -> torch.Tensor:
    """Unit world-frame view directions through the centres of pixels (u, v).

    Args:
        intrinsics: float [3, 3] OpenCV pinhole, or [N, 3, 3] one per pixel;
        cam_to_world: float [4, 4] rigid, or [N, 4, 4] one per pixel (the pixels of
            several cameras at once: `train.frame_pool.FramePool.batch`).
        u, v: [N] column and row indices (any numeric dtype), pixel centre at (u, v).
    Returns:
        float32 [N, 3]; computed in float64 so that the same pixel gives the same
        bits as `camera_rays` (which calls this), with one camera or one per pixel.
    """
    k = intrinsics.double()
    x = (u.double() - k[..., 0, 2]) / k[..., 0, 0]
    y = (v.double() - k[..., 1, 2]) / k[..., 1, 1]
    r = cam_to_world[..., :3, :3].double()
    # (x, y, 1) @ r^T as three products summed in a fixed order (no GEMM): the same bits
    # whether the rotation is shared or gathered per pixel
    d = x.unsqueeze(-1) * r[..., :, 0] + y.unsqueeze(-1) * r[..., :, 1] + r[..., :, 2]
    return F.normalize(d, dim=-1).float()


def visible_primitives(centres: torch.Tensor, radii: torch.Tensor, intrinsics: torch.Tensor,
                       world_to_cam: torch.Tensor, image_size: tuple[int, int], near: float,
                       far: float, margin_px: float = 2.0) -> torch.Tensor:
    """Which primitives' bounding spheres touch a camera's view frustum (view-frustum culling).

    Conservative: a primitive left out has no point inside the frustum, so none of its
    faces can cover a pixel centre; one kept may still cover nothing. The frustum's side
    planes pass through the image border widened by `margin_px` pixels (float32 projection
    rounding), its near and far planes are z = near and z = far (camera frame, metres).

    Args:
        centres: float [P, 3] sphere centres, world frame, metres.
        radii: float [P] sphere radii, metres.
        intrinsics: float [3, 3] or [B, 3, 3] pinhole (OpenCV pixel centres).
        world_to_cam: float [4, 4] or [B, 4, 4] rigid, world -> OpenCV camera.
        image_size: (H, W) pixels.
    Returns:
        bool [P], on centres' device: visible from at least one of the B cameras.
    """
    h, w = image_size
    k = intrinsics.double().reshape(-1, 3, 3)
    m = world_to_cam.double().reshape(-1, 4, 4)
    b = max(k.shape[0], m.shape[0])  # a single matrix broadcasts against a batch
    k, m = k.expand(b, 3, 3), m.expand(b, 4, 4)
    c = centres.double()
    r = radii.double()
    cam = torch.einsum("bij,pj->bpi", m[:, :3, :3], c) + m[:, None, :3, 3]  # [B, P, 3]
    x, y, z = cam.unbind(-1)
    fx, fy, cx, cy = (k[:, 0, 0, None], k[:, 1, 1, None], k[:, 0, 2, None], k[:, 1, 2, None])
    keep = (z + r > near) & (z - r < far)
    # side planes through the camera centre: a * x + b * z >= 0 inside; signed distance
    # of the centre over the unit normal must exceed -r
    for a, b in ((fx, margin_px + 0.5 + cx), (-fx, (w - 0.5 + margin_px) - cx)):
        keep &= (a * x + b * z) >= -r * torch.sqrt(a * a + b * b)
    for a, b in ((fy, margin_px + 0.5 + cy), (-fy, (h - 0.5 + margin_px) - cy)):
        keep &= (a * y + b * z) >= -r * torch.sqrt(a * a + b * b)
    return keep.any(0)


def composite(alpha: torch.Tensor, rgb: torch.Tensor, background: torch.Tensor):
    """Front-to-back alpha compositing of K layers over a background.

    Args:
        alpha: float [N, K] opacities in [0, 1], layers near to far (0 for empty layers).
        rgb: float [N, K, 3] layer colours.
        background: float [N, 3] colour seen through all layers.
    Returns:
        colour float [N, 3], weights float [N, K] (contribution of each layer),
        transmittance float [N] left for the background.
    """
    one_minus = 1.0 - alpha
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), one_minus], dim=1), dim=1)
    weights = trans[:, :-1] * alpha
    t_final = trans[:, -1]
    colour = (weights.unsqueeze(-1) * rgb).sum(1) + t_final.unsqueeze(-1) * background
    return colour, weights, t_final


def unique_inverse(ids: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.unique(ids, return_inverse=True)` for int64 ids known to lie in [0, size),
    by marking a table of `size` entries instead of sorting: O(size + len(ids)) memory
    passes, cheaper than the sort when len(ids) is more than a few percent of size (a
    training batch touches ~10^5 of ~10^6 vertices). Same outputs (sorted unique values,
    int64 inverse), on ids' device.
    """
    mark = torch.zeros(size, dtype=torch.bool, device=ids.device)
    mark[ids] = True
    uniq = torch.nonzero(mark).squeeze(1)
    remap = torch.empty(size, dtype=torch.int64, device=ids.device)  # read only where marked
    remap[uniq] = torch.arange(uniq.numel(), device=ids.device)
    return uniq, remap[ids]


class DNMPRenderer(nn.Module):
    """Primitives + radiance field + background (far-field shells, if any, over the sky),
    with rendering entry points."""

    # how `shade_rays(sparse_features=True)` finds the vertices a batch touches: "remap"
    # (one `unique_inverse` over the fragments' vertices) or "unique" (the reference: two
    # torch.unique sorts, faces then vertices); same features, same gradients bit for bit
    sparse_lookup: str = "remap"

    def __init__(self, primitives: Primitives, field: RadianceField, background: BackgroundField,
                 config: RenderConfig | None = None, far_field: FarField | None = None):
        super().__init__()
        self.primitives = primitives
        self.field = field
        self.background = background  # the sky: direction only
        self.far_field = far_field  # shells with parallax between the primitives and the sky
        self.config = config or RenderConfig()
        self._geometry: tuple[torch.Tensor, torch.Tensor] | None = None
        self._bounds: tuple[torch.Tensor, torch.Tensor] | None = None

    def _apply(self, fn, *args, **kwargs):
        self._geometry = None  # the cached geometry lives on the old device / dtype
        self._bounds = None
        return super()._apply(fn, *args, **kwargs)

    def _to_model_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        # camera matrices come from scene files (CPU); the model's device decides
        dev = self.primitives.centres.device
        return [t.to(dev) for t in tensors]

    # -- geometry -------------------------------------------------------------------
    def geometry(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(vertices float32 [P*42, 3], face normals float32 [P*80, 3]) of the current
        shape, detached and cached: the radiance stage keeps geometry fixed. Call
        `refresh_geometry()` after changing latents, offsets or the decoder."""
        if self._geometry is None:
            with torch.no_grad():
                verts = self.primitives.vertices().detach().contiguous()
                f = self.primitives.faces
                n = torch.cross(verts[f[:, 1]] - verts[f[:, 0]], verts[f[:, 2]] - verts[f[:, 0]], dim=1)
                self._geometry = (verts, F.normalize(n, dim=1))
        return self._geometry

    def refresh_geometry(self) -> None:
        self._geometry = None
        self._bounds = None

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(centres float32 [P, 3], radii float32 [P]): a bounding sphere of each decoded
        primitive (vertex mean, largest vertex distance), world frame, metres; cached
        with `geometry()`."""
        if self._bounds is None:
            verts, _ = self.geometry()
            v = verts.view(self.primitives.num_primitives, -1, 3)
            centres = v.mean(1)
            self._bounds = (centres, (v - centres.unsqueeze(1)).norm(dim=-1).amax(1))
        return self._bounds

    def faces_per_pixel_by_scale(self) -> list[int]:
        """Faces per pixel (layers composited) of each primitive scale, fine to coarse."""
        n = len(self.primitives.scale_ranges())
        return [self.config.faces_per_pixel] + [self.config.coarse_faces_per_pixel] * (n - 1)

    def rasterize(self, intrinsics: torch.Tensor, world_to_cam: torch.Tensor,
                  image_size: tuple[int, int]) -> ops.Fragments:
        """Fragments of all primitives for one or B cameras (see `dnmp.ops.rasterize`).

        Each scale is rasterized on its own with its own K and the layers are
        concatenated fine scale first, so compositing puts fine over coarse over
        background (paper Sec. 3.3); within a scale layers are near to far. The
        last dimension is sum(K_s); face indices are global.
        """
        out = []
        for s in range(len(self.primitives.scale_ranges())):
            with record_function(f"render.rasterize.scale{s}"):
                out.append(self.rasterize_scale(s, intrinsics, world_to_cam, image_size))
        if len(out) == 1:
            return out[0]
        return ops.Fragments(*(torch.cat(t, dim=-1 if i < 2 else -2) for i, t in enumerate(zip(*out))))

    def rasterize_scale(self, scale: int, intrinsics: torch.Tensor, world_to_cam: torch.Tensor,
                        image_size: tuple[int, int], faces_per_pixel: int | None = None) -> ops.Fragments:
        """Fragments of the primitives of one scale (0 = fine), K = `faces_per_pixel`
        (default: that scale's K); face indices are global (into `primitives.faces`)."""
        verts, _ = self.geometry()
        intrinsics, world_to_cam = self._to_model_device(intrinsics, world_to_cam)
        prims = self.primitives
        a, b = prims.scale_ranges()[scale]
        per_face = prims.faces_per_primitive
        k = self.faces_per_pixel_by_scale()[scale] if faces_per_pixel is None else faces_per_pixel
        # view-frustum culling: only primitives whose bounding sphere meets the frustum
        # reach the rasterizer, in index order, so the fragments (ties go to the lower
        # face index) are those of all faces; tested in tests/model/test_renderer.py
        centres, radii = self.bounds()
        seen = a + torch.nonzero(visible_primitives(centres[a:b], radii[a:b], intrinsics, world_to_cam,
                                                    image_size, self.config.near, self.config.far)).squeeze(1)
        # (nearly) all in view: the scale's slice of the faces, no gathers; the few faces out of
        # view cost the rasterizer's culling less than gathering the others and their ids
        if seen.numel() >= CULL_MIN_SHARE * (b - a):
            faces, global_face = prims.faces[a * per_face: b * per_face], None
        else:
            global_face = (seen.unsqueeze(1) * per_face
                           + torch.arange(per_face, device=seen.device)).reshape(-1)  # local -> global
            # whole primitives' rows: index_select of [P, per_face * 3] rows is a row copy,
            # several times faster than indexing [F, 3] with global_face
            faces = prims.faces.reshape(-1, per_face * 3).index_select(0, seen).view(-1, 3)
        frags = ops.rasterize(verts, faces, intrinsics, world_to_cam, image_size, faces_per_pixel=k,
                              near=self.config.near, far=self.config.far)
        p2f = frags.pix_to_face
        if global_face is None and a == 0:  # the first scale's local indices are global
            return frags
        if global_face is None:
            glob = p2f + a * per_face
        elif global_face.numel() == 0:  # nothing in view: every pix_to_face is already -1
            return frags
        else:
            glob = global_face.index_select(0, p2f.clamp_min(0).reshape(-1)).view_as(p2f)
        return frags._replace(pix_to_face=torch.where(p2f >= 0, glob, p2f))

    # -- shading --------------------------------------------------------------------
    def background_colour(self, view_dirs: torch.Tensor, ray_origins: torch.Tensor | None = None) -> torch.Tensor:
        """Colour seen through every primitive layer: the far field's shells (if the model
        has them), composited near to far over the direction-only sky.

        view_dirs: float32 [N, 3] unit, world frame; ray_origins: float32 [N, 3] camera
        centres, world frame, metres (needed with a far field: ValueError without).
        Returns float32 [N, 3] in (0, 1).
        """
        sky = self.background(view_dirs)
        if self.far_field is None:
            return sky
        if ray_origins is None:
            raise ValueError("this model has a far field (shells with parallax): pass ray_origins")
        rgb, alpha = self.far_field(ray_origins, view_dirs)
        return composite(alpha, rgb, sky)[0]

    def shade_rays(self, pix_to_face: torch.Tensor, bary_coords: torch.Tensor, view_dirs: torch.Tensor,
                   sparse_features: bool | str = False,
                   ray_origins: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Colour of N rays from their cached fragments, differentiable (training): all
        K layers of every ray are shaded and composited at once.

        Args:
            pix_to_face: int64 [N, K] face indices (-1 empty), near to far.
            bary_coords: float32 [N, K, 3] perspective-correct barycentrics.
            view_dirs: float32 [N, 3] unit ray directions, world frame.
            sparse_features: False: the whole feature table takes part (a dense
                gradient). True: gather only the vertex features these rays touch,
                through an embedding with sparse COO gradients (for
                `torch.optim.SparseAdam`), so a training step costs O(batch), not
                O(scene). "rows": the same rows, gathered as a leaf tensor of their own
                (out["feature_rows"]); the backward leaves `features.grad` alone and
                fills the rows' dense gradient instead, which the caller hands on
                (`train.row_adam.row_gradient`: no sparse sort; the radiance loop).
            ray_origins: float32 [N, 3] camera centres, world frame, metres; needed by a
                model with a far field (`background_colour`).
        Returns:
            dict with rgb float32 [N, 3], weights [N, K], background_transmittance [N];
            with "rows" also feature_rows = (vertex ids int64 [U], sorted and unique;
            their features float32 [U, C], a leaf that requires grad).
        Raises:
            ValueError: another `sparse_features`.
        """
        if sparse_features not in (False, True, "rows"):
            raise ValueError(f"shade_rays: sparse_features must be False, True or 'rows', "
                             f"got {sparse_features!r}")
        n, k = pix_to_face.shape
        # the covered fragments, row-major, as flat indices: gathers and index_copy cost a
        # fraction of boolean indexing and masked_scatter (one nonzero instead of five)
        flat = (pix_to_face >= 0).reshape(-1).nonzero().squeeze(1)
        faces = self.primitives.faces
        _, normals_all = self.geometry()
        fid = pix_to_face.reshape(-1).index_select(0, flat)  # [M]
        m = fid.numel()
        out = {}
        with record_function("shade.feature_lookup"):
            features = self.primitives.features
            if sparse_features and self.sparse_lookup == "unique":
                uf, inv_f = torch.unique(fid, return_inverse=True)
                uv, inv_v = torch.unique(faces.index_select(0, uf), return_inverse=True)
                local_faces, frag_face = inv_v.view(-1, 3), inv_f
            elif sparse_features:
                # the same sorted vertex set, one local face per fragment in fragment order:
                # interpolation and its backward sum the same terms in the same order
                uv, inv_v = unique_inverse(faces.index_select(0, fid).reshape(-1), features.shape[0])
                local_faces, frag_face = inv_v.view(-1, 3), torch.arange(m, device=fid.device)
            else:
                attr, local_faces, frag_face = features, faces, fid
            if sparse_features == "rows":
                attr = features.detach().index_select(0, uv).requires_grad_(features.requires_grad)
                out["feature_rows"] = (uv, attr)
            elif sparse_features:
                attr = F.embedding(uv, features, sparse=True)

        alpha = torch.zeros(n * k, dtype=features.dtype, device=pix_to_face.device)
        rgb = torch.zeros(n * k, 3, dtype=features.dtype, device=pix_to_face.device)
        if m > 0:
            # only the covered fragments are interpolated and shaded (as M rays of one layer):
            # per fragment the same sums as over all N x K, with no scatter back and forth
            frags = ops.Fragments(frag_face.view(1, 1, m, 1),
                                  torch.zeros(1, 1, m, 1, device=bary_coords.device),
                                  bary_coords.reshape(-1, 3).index_select(0, flat).view(1, 1, m, 1, 3))
            with record_function("shade.interpolate"):
                feats = ops.interpolate(attr, local_faces, frags).view(m, -1)
            dirs = view_dirs.index_select(0, torch.div(flat, k, rounding_mode="floor"))
            a, c = self.field(feats, dirs, normals_all.index_select(0, fid))
            alpha = alpha.index_copy(0, flat, a)
            rgb = rgb.index_copy(0, flat, c)
        alpha, rgb = alpha.view(n, k), rgb.view(n, k, 3)
        bg = self.background_colour(view_dirs, ray_origins)
        with record_function("shade.composite"):
            colour, weights, t_final = composite(alpha, rgb, bg)
        return {"rgb": colour, "weights": weights, "background_transmittance": t_final, **out}

    @torch.no_grad()
    def render(self, intrinsics: torch.Tensor, cam_to_world: torch.Tensor, height: int,
               width: int, fused: bool | None = None) -> dict[str, torch.Tensor]:
        """Render one image.

        Args:
            intrinsics: float [3, 3]; cam_to_world: float [4, 4] rigid; height, width in pixels.
            The camera matrices may be on any device: they are moved to the model's.
            fused: shade with the compiled `shade_rays_fused` (True) or the torch
                `shade_rays_early_exit` (False); None: fused where available.
        Returns (on the model's device):
            dict with rgb float32 [H, W, 3] in [0, 1], depth float32 [H, W] (surface depth,
            metres, camera-space z: the first layer at which the accumulated opacity
            reaches SURFACE_OPACITY, else the weight-averaged z; 0 where no layer), mean_depth float32
            [H, W] (the layers' z averaged with their compositing weights, 0 where no
            layer), coverage float32 [H, W] (1 - background transmittance).
        """
        intrinsics, cam_to_world = self._to_model_device(intrinsics, cam_to_world)
        c2w = cam_to_world.double()
        w2c = torch.linalg.inv(c2w).float()
        frags = self.rasterize(intrinsics.float(), w2c, (height, width))
        return self.shade_image(frags, intrinsics, cam_to_world, height, width, fused)

    @torch.no_grad()
    def shade_rays_early_exit(self, pix_to_face: torch.Tensor, bary_coords: torch.Tensor,
                     zbuf: torch.Tensor, view_dirs: torch.Tensor,
                     min_transmittance: float = MIN_TRANSMITTANCE,
                     ray_origins: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Inference-time twin of `shade_rays`: composites layer by layer and skips the
        radiance MLP for rays whose transmittance fell below `min_transmittance`
        (early ray termination, as in front-to-back volume rendering). Equal to
        `shade_rays` up to the dropped contributions (< min_transmittance per ray).

        Args: as `shade_rays`, plus zbuf float32 [N, K] (metres, -1 empty).
        Returns: dict with rgb [N, 3], depth [N] (surface depth: camera-space z in metres
            of the first layer at which the accumulated opacity reaches SURFACE_OPACITY;
            where it never does, the weight-averaged z; 0 where no layer), mean_depth [N] (weight-averaged
            z, 0 where no layer), background_transmittance [N].
        """
        n, k = pix_to_face.shape
        faces = self.primitives.faces
        feats_all = self.primitives.features
        _, normals_all = self.geometry()
        trans = torch.ones(n, dtype=feats_all.dtype, device=feats_all.device)
        colour = torch.zeros(n, 3, dtype=trans.dtype, device=trans.device)
        wz = torch.zeros_like(trans)
        wsum = torch.zeros_like(trans)
        # surface depth: the first layer that makes the ray SURFACE_OPACITY opaque; the
        # weighted mean (and the median) leak towards the half-transparent layers behind
        # it (README, "Novel views": 0.37 / 0.31 m vs 0.20 m median error against LiDAR)
        zsurf = torch.zeros_like(trans)
        for layer in range(k):
            idx = torch.nonzero((pix_to_face[:, layer] >= 0) & (trans > min_transmittance)).squeeze(1)
            if idx.numel() == 0:  # not break: a coarse layer may follow an empty fine one
                continue
            fid = pix_to_face[idx, layer]
            m = idx.numel()
            frags = ops.Fragments(fid.view(1, 1, m, 1), zbuf[idx, layer].view(1, 1, m, 1),
                                  bary_coords[idx, layer].reshape(1, 1, m, 1, 3))
            with record_function("shade.interpolate"):
                feats = ops.interpolate(feats_all, faces, frags).view(m, -1)
            a, c = self.field(feats, view_dirs[idx], normals_all.index_select(0, fid))
            with record_function("shade.composite"):
                w = trans[idx] * a
                colour.index_add_(0, idx, w.unsqueeze(1) * c)
                wz.index_add_(0, idx, w * zbuf[idx, layer])
                wsum.index_add_(0, idx, w)
                t_before = trans[idx]
                t_after = t_before * (1.0 - a)
                crossed = (t_before > 1.0 - SURFACE_OPACITY) & (t_after <= 1.0 - SURFACE_OPACITY)
                zsurf.index_copy_(0, idx, torch.where(crossed, zbuf[idx, layer], zsurf[idx]))
                trans.index_copy_(0, idx, t_after)
        colour += trans.unsqueeze(1) * self.background_colour(view_dirs, ray_origins)
        mean_depth = torch.where(wsum > 0, wz / wsum.clamp_min(1e-12), torch.zeros_like(wz))
        depth = torch.where(zsurf > 0, zsurf, mean_depth)
        return {"rgb": colour, "depth": depth, "mean_depth": mean_depth,
                "background_transmittance": trans}

    def bf16_matmul(self, device: torch.device) -> bool:
        """Whether the fused ops on `device` take bf16 operands (`RenderConfig.bf16_matmul`;
        None: `default_bf16_matmul`)."""
        want = self.config.bf16_matmul
        if want is None:
            return default_bf16_matmul(device, self.primitives.features.dtype)
        return bool(want)

    def fused_shading_available(self, device: torch.device | None = None) -> bool:
        """True when `shade_rays_fused` can run: the compiled kernels are loaded with the
        `shade_fwd` op for `device` (the CPU; default: the features' device) and the radiance
        field is the Linear/ReLU chain the kernel evaluates."""
        device = self.primitives.features.device if device is None else device
        if device.type != "cpu" or not kernels_for(device) or not hasattr(torch.ops.dnmp, "shade_fwd"):
            return False
        f = self.field
        return (isinstance(f, RadianceField) and _linear_chain(f.trunk) is not None
                and _linear_chain(f.color_head) is not None and f.opacity_head.bias is not None)

    @torch.no_grad()
    def shade_rays_fused(self, pix_to_face: torch.Tensor, bary_coords: torch.Tensor,
                         zbuf: torch.Tensor, view_dirs: torch.Tensor,
                         min_transmittance: float = MIN_TRANSMITTANCE,
                         ray_origins: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`shade_rays_early_exit` in one compiled op (`torch.ops.dnmp.shade_fwd`,
        csrc/cpu/shade_cpu.cpp): per ray and layer, interpolation, positional encoding, the
        field's MLPs (as GEMMs over blocks of 256 rays) and front-to-back compositing with
        early ray termination, without autograd; the background MLP runs in torch, only
        for rays whose transmittance stays above `min_transmittance` (the others would add
        at most `min_transmittance` per channel, the same bound as the early exit).

        With `bf16_matmul(device)` (`RenderConfig.bf16_matmul`; default: on CPUs with bf16
        matrix kernels) the MLP layers take bfloat16 operands and accumulate in float32.

        Args and returns: as `shade_rays_early_exit`; agrees with it to float32 rounding
        (tests/model/test_fused_shading.py), or with bf16 operands to its twin that rounds
        the same operands (colours ~1e-2 at worst from the float32 ones). Raises RuntimeError when
        `fused_shading_available()` is False; ValueError / TypeError (from the op) for
        inputs of the wrong shape, dtype or index range.
        """
        if not self.fused_shading_available(pix_to_face.device):
            raise RuntimeError("shade_rays_fused: the compiled shade_fwd op is unavailable for this "
                               "device or field (use shade_rays_early_exit)")
        _, normals_all = self.geometry()
        f = self.field
        tw, tb = _linear_chain(f.trunk)
        cw, cb = _linear_chain(f.color_head)
        with record_function("shade.fused"):
            rgb, depth, mean_depth, trans = torch.ops.dnmp.shade_fwd(
                self.primitives.features.detach(), self.primitives.faces, normals_all, pix_to_face,
                bary_coords, zbuf, view_dirs, tw, tb, f.opacity_head.weight.detach(),
                f.opacity_head.bias.detach(), cw, cb, f.feature_freqs, f.dir_freqs,
                float(min_transmittance), SURFACE_OPACITY, self.bf16_matmul(pix_to_face.device))
        see = torch.nonzero(trans > min_transmittance).squeeze(1)
        if see.numel() > 0:
            org = None if ray_origins is None else ray_origins.index_select(0, see)
            bg = self.background_colour_fused(view_dirs.index_select(0, see), org)
            rgb.index_add_(0, see, trans.index_select(0, see).unsqueeze(1) * bg)
        return {"rgb": rgb, "depth": depth, "mean_depth": mean_depth,
                "background_transmittance": trans}

    @torch.no_grad()
    def background_colour_fused(self, view_dirs: torch.Tensor,
                                ray_origins: torch.Tensor | None = None) -> torch.Tensor:
        """`background_colour` in one compiled op (`torch.ops.dnmp.background_fwd`,
        csrc/cpu/shade_cpu.cpp; forward only, for rendering): the sky MLP over blocks of
        256 rays and each ray's far-field shells composited over it, without the torch
        version's [N, S, 4] temporaries. Args and returns as `background_colour`; agrees with
        it to float32 rounding (tests/model/test_fused_shading.py). Falls back to
        `background_colour` where the op is not built for the rays' device or the sky is
        not a Linear/ReLU chain. Raises ValueError as `background_colour` (a far field and
        no ray_origins), and ValueError / TypeError (from the op) for inputs of the wrong
        shape or dtype. MLP operands in bf16 as in `shade_rays_fused`."""
        chain = _linear_chain(self.background.mlp) if isinstance(self.background, BackgroundField) else None
        if (chain is None or view_dirs.device.type != "cpu" or not kernels_for(view_dirs.device)
                or not hasattr(torch.ops.dnmp, "background_fwd")):
            return self.background_colour(view_dirs, ray_origins)
        ff = self.far_field
        if ff is not None and ray_origins is None:
            raise ValueError("this model has a far field (shells with parallax): pass ray_origins")
        bf16 = self.bf16_matmul(view_dirs.device)
        with record_function("shade.background_fused"):
            if ff is None:
                empty = view_dirs.new_empty(0, 3)
                return torch.ops.dnmp.background_fwd(view_dirs, empty, *chain, self.background.dir_freqs,
                                                     view_dirs.new_empty(0, 4), view_dirs.new_zeros(3),
                                                     view_dirs.new_empty(0), bf16)
            return torch.ops.dnmp.background_fwd(view_dirs, ray_origins, *chain, self.background.dir_freqs,
                                                 ff.texels.detach(), ff.centre, ff.radii, bf16)

    @torch.no_grad()
    def shade_image(self, frags: ops.Fragments, intrinsics: torch.Tensor,
                        cam_to_world: torch.Tensor, height: int, width: int,
                        fused: bool | None = None) -> dict[str, torch.Tensor]:
        """Colour, depth and coverage images from the fragments of one whole camera image
        (batch size 1), shaded with `shade_rays_fused` in chunks of FUSED_CHUNK pixels when
        `fused` (default: when `fused_shading_available()`), else with its torch reference
        `shade_rays_early_exit` in chunks of `config.chunk`; see `render` for the outputs."""
        if fused is None:
            fused = self.fused_shading_available(frags.pix_to_face.device)
        shade = self.shade_rays_fused if fused else self.shade_rays_early_exit
        k = frags.pix_to_face.shape[-1]
        p2f = frags.pix_to_face.reshape(-1, k)
        bary = frags.bary_coords.reshape(-1, k, 3)
        zbuf = frags.zbuf.reshape(-1, k)
        intrinsics, cam_to_world = self._to_model_device(intrinsics, cam_to_world)
        dirs = camera_rays(intrinsics, cam_to_world, height, width)
        # a contiguous centre: index_select of an expanded view of a strided column is slow
        origins = cam_to_world[:3, 3].to(dirs.dtype).contiguous().expand_as(dirs)
        rgb, depth, mean_depth, cov = [], [], [], []
        # the fused ops keep no per-fragment temporaries (O(rays) memory): one call per image
        # of up to FUSED_CHUNK pixels, so their checks over all faces run once
        chunk = max(self.config.chunk, FUSED_CHUNK) if fused else self.config.chunk
        for s in range(0, p2f.shape[0], chunk):
            sl = slice(s, s + chunk)
            out = shade(p2f[sl], bary[sl], zbuf[sl], dirs[sl], ray_origins=origins[sl])
            rgb.append(out["rgb"])
            depth.append(out["depth"])
            mean_depth.append(out["mean_depth"])
            cov.append(1.0 - out["background_transmittance"])
        return {
            "rgb": torch.cat(rgb).view(height, width, 3).clamp(0, 1),
            "depth": torch.cat(depth).view(height, width),
            "mean_depth": torch.cat(mean_depth).view(height, width),
            "coverage": torch.cat(cov).view(height, width),
        }

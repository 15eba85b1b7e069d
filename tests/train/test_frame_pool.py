"""The radiance stage's bounded fragment cache (FramePool) against a cache of every
training pixel built the straightforward way (full fragments, camera_rays, float colours)."""

import pytest
import torch

from dnmp.data import load_scene
from dnmp.model import camera_rays
from dnmp.train.config import TrainConfig
from dnmp.train.frame_pool import FramePool
from dnmp.train.factory import build_renderer, scene_centres

CFG = dict(hidden=16, feature_dim=8, far_shells=2, far_shell_texels=8)


def full_cache(renderer, scene, frames):
    """Every training pixel: pix_to_face, bary (3), dirs, rgb as float32, ray origins (the
    camera centre), frames in order."""
    p2f, bary, dirs, rgb, origins = [], [], [], [], []
    for f in frames:
        cam = scene.camera_of(f)
        frags = renderer.rasterize(cam.intrinsics(as_tensor=True),
                                   torch.from_numpy(f.world_to_cam()).float(), (cam.height, cam.width))
        k = frags.pix_to_face.shape[-1]
        p2f.append(frags.pix_to_face.view(-1, k))
        bary.append(frags.bary_coords.view(-1, k, 3))
        dirs.append(camera_rays(cam.intrinsics(as_tensor=True), torch.from_numpy(f.cam_to_world),
                                cam.height, cam.width))
        rgb.append(torch.from_numpy(scene.load_image(f)).view(-1, 3))
        origins.append(torch.from_numpy(f.cam_to_world[:3, 3]).float().expand(cam.height * cam.width, 3))
    return [torch.cat(t) for t in (p2f, bary, dirs, rgb, origins)]


@pytest.fixture
def setup(make_scene):
    scene = load_scene(make_scene("pool", frames=7))
    cfg = TrainConfig(**CFG)
    renderer = build_renderer(scene_centres(scene, cfg), cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        renderer.primitives.features.normal_()
    return scene, renderer, scene.frames_by_split("train")


def test_pool_holding_every_frame_matches_full_cache_and_loss(setup):
    scene, renderer, frames = setup
    ref = full_cache(renderer, scene, frames)
    pool = FramePool(renderer, scene, frames, max_pixels=10**9, rotate_every=5, progress=False)
    pool.sync(0)
    assert not pool.rotates and pool.size == len(frames) and len(pool) == ref[0].shape[0]
    idx = torch.randint(0, len(pool), (2000,), generator=torch.Generator().manual_seed(0))
    got = pool.batch(idx)
    assert torch.equal(got[0], ref[0][idx])
    torch.testing.assert_close(got[1], ref[1][idx], atol=1e-6, rtol=0)  # third bary recomputed
    assert torch.equal(got[2], ref[2][idx])
    assert torch.equal(got[3], ref[3][idx])
    assert torch.equal(got[4], ref[4][idx])
    # the training loss from the pool equals the loss from the full cache, gradients too
    losses, grads = [], []
    for p2f, bary, dirs, rgb, origins in (got, [t[idx] for t in ref]):
        renderer.zero_grad()
        loss = torch.mean((renderer.shade_rays(p2f, bary, dirs, ray_origins=origins)["rgb"] - rgb) ** 2)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in renderer.field.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    # 8-bit images are cached as uint8 (exact), 12 K + 3 bytes per pixel
    k = ref[0].shape[1]
    assert pool.nbytes == len(pool) * (12 * k + 3)


def test_rotating_pool_is_bounded_deterministic_and_visits_every_frame(setup):
    scene, renderer, frames = setup
    ref = full_cache(renderer, scene, frames)
    npx = scene.camera_of(frames[0]).width * scene.camera_of(frames[0]).height
    pool = FramePool(renderer, scene, frames, max_pixels=2 * npx + 5, rotate_every=3, seed=4,
                     progress=False)
    assert pool.rotates and pool.size == 2
    seen = set()
    for step in range(0, 3 * len(frames) + 1):
        pool.sync(step)
        assert len(pool) == 2 * npx and pool.nbytes <= 2 * npx * (12 * ref[0].shape[1] + 3)
        members = pool.frames_at(step)
        assert members == pool.frames_at(step - step % 3)  # constant within a period
        seen.update(members)
        # every pooled pixel equals the full cache's value of that frame's pixel
        idx = torch.arange(len(pool))
        got = pool.batch(idx)
        want = torch.cat([torch.arange(i * npx, (i + 1) * npx) for i in members])
        assert torch.equal(got[0], ref[0][want])
        assert torch.equal(got[2], ref[2][want])
        assert torch.equal(got[3], ref[3][want])
        assert torch.equal(got[4], ref[4][want])
    assert seen == set(range(len(frames)))
    # each rotation rasterizes one frame, not the whole pool
    assert pool.rasterized == 2 + 3 * len(frames) // 3
    # the pool of a step does not depend on the history (a resumed run sees the same pool)
    again = FramePool(renderer, scene, frames, max_pixels=2 * npx + 5, rotate_every=3, seed=4,
                      progress=False)
    again.sync(11)
    assert again.frames_at(11) == pool.frames_at(11)
    want = torch.cat([torch.arange(i * npx, (i + 1) * npx) for i in again.frames_at(11)])
    assert torch.equal(again.batch(torch.arange(len(again)))[0], ref[0][want])


def test_pool_rejects_bad_arguments(setup):
    scene, renderer, frames = setup
    with pytest.raises(ValueError, match="no training frames"):
        FramePool(renderer, scene, [], 100, 1)
    with pytest.raises(ValueError, match="must be >= 1"):
        FramePool(renderer, scene, frames, 0, 1)
    with pytest.raises(ValueError, match="cache_pixels"):
        TrainConfig(cache_pixels=0).validate()


def test_pool_slab_gathers_the_bits_of_the_per_frame_path(setup):
    """A pool that never rotates gathers from one slab (`_Slab`): the same tensors, bit for
    bit, as gathering frame by frame and as the mask-selected path of accelerators."""
    scene, renderer, frames = setup
    pool = FramePool(renderer, scene, frames, max_pixels=10**9, rotate_every=5, progress=False)
    pool.sync(0)
    assert pool._slab is not None
    # the frames hold views of the slab: the cache is not held twice
    assert all(pool._cached[i].pix_to_face.data_ptr() == pool._slab.pix_to_face[int(pool._offsets[s]):].data_ptr()
               for s, i in enumerate(pool._slots))
    assert pool.nbytes == len(pool) * (12 * pool._slab.pix_to_face.shape[1] + 3)
    idx = torch.randint(0, len(pool), (3000,), generator=torch.Generator().manual_seed(2))
    got = pool.batch(idx)
    slot = torch.searchsorted(pool._offsets, idx, right=True) - 1
    local = idx - pool._offsets[slot]
    for other in (pool._batch_split(slot, local), pool._batch_masked(slot, local)):
        for a, b in zip(got, other):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_pixel_rays_with_one_camera_per_pixel_matches_one_call_per_camera():
    from dnmp.model import pixel_rays

    g = torch.Generator().manual_seed(3)
    cams = []
    for _ in range(3):
        q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=g))[0]
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, :3], c2w[:3, 3] = q * torch.sign(torch.det(q)), torch.randn(3, dtype=torch.float64, generator=g)
        k = torch.tensor([[700.0 + 50 * torch.rand(1, generator=g).item(), 0, 610], [0, 705, 180], [0, 0, 1]],
                         dtype=torch.float64)
        cams.append((k, c2w))
    which = torch.randint(0, 3, (500,), generator=g)
    u, v = torch.randint(0, 1241, (500,), generator=g), torch.randint(0, 376, (500,), generator=g)
    got = pixel_rays(torch.stack([c[0] for c in cams])[which], torch.stack([c[1] for c in cams])[which], u, v)
    for i, (k, c2w) in enumerate(cams):
        m = which == i
        assert torch.equal(got[m], pixel_rays(k, c2w, u[m], v[m]))
    # against an independent float64 formula: K^-1 (u, v, 1), rotated, normalised
    k, c2w = cams[0]
    d = torch.stack([u.double(), v.double(), torch.ones(500, dtype=torch.float64)], -1) @ torch.linalg.inv(k).T
    d = d @ c2w[:3, :3].T
    torch.testing.assert_close(pixel_rays(k, c2w, u, v), (d / d.norm(dim=-1, keepdim=True)).float(),
                               rtol=0, atol=1e-7)

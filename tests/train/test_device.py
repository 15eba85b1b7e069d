"""The device axis (`--device`, `dnmp.device`): resolution and its one-line errors, the
commands on each device (cuda cases skip without a GPU), checkpoints across devices, and
a radiance training step without host round trips.

The round-trip check needs no GPU: the step runs under
- `torch.device("meta")` as the default device, so any tensor made without `device=`
  (which on a GPU run would be made on the CPU and copied) turns up as a meta tensor;
- a TorchDispatchMode that records every `aten._local_scalar_dense` (`.item()`, `int(t)`,
  `float(t)`, `bool(t)`: a device-to-host copy and a sync on a GPU) and every op whose
  output size depends on the data (`unique`, `nonzero`, boolean masks, sparse coalesce:
  a sync on a GPU), each attributed to the innermost dnmp (or torch.optim) source line;
- wrappers counting `.cpu()`, `.numpy()` and `.tolist()` called from dnmp code.
"""

from __future__ import annotations

import ctypes
import json
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dnmp.cli import main
from dnmp.data import load_scene
from dnmp.device import check_device_spec, keep_freed_memory, resolve_device
from dnmp.train import load_checkpoint
from dnmp.train.config import TrainConfig
from dnmp.train.factory import build_renderer, renderer_from_checkpoint, scene_centres
from dnmp.train.frame_pool import FramePool
from dnmp.train.radiance import _make_optimizers, radiance_step, train_radiance
from dnmp.train.run import open_run

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU"))]
DNMP_DIR = str(Path(__file__).resolve().parents[2] / "dnmp")
FAST = dict(batch_size=256, checkpoint_every=100, log_every=5, hidden=16, feature_dim=8)


# -- resolving --device -----------------------------------------------------------------

def test_resolve_device_auto_cpu_and_unknown(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("meta")) == torch.device("meta")  # library callers, tests
    for bad in ("gpu", "cuda:", "cuda:-1", "cpu:0", "", "mps"):
        with pytest.raises(ValueError, match="unknown device") as e:
            resolve_device(bad)
        assert "\n" not in str(e.value) and str(e.value).startswith("--device")
    with pytest.raises(ValueError, match=r"^cfg.toml: device 'tpu': unknown device"):
        check_device_spec("tpu", "cfg.toml: device")


def test_resolve_cuda_without_a_gpu_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:1", torch.device("cuda", 0)):
        with pytest.raises(ValueError) as e:
            resolve_device(spec)
        msg = str(e.value)
        assert "CUDA is not available" in msg and f"torch {torch.__version__}" in msg and "\n" not in msg
        assert ("built without CUDA" in msg) == (torch.version.cuda is None)


def test_resolve_cuda_index_past_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)  # the current GPU, index made explicit
    assert resolve_device("auto") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"--device cuda:2: no such GPU \(this machine has 2: cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_config_device_field_is_checked_and_overridden(tmp_path):
    from dnmp.train.config import load_config
    from dnmp.train.run import settle_config

    assert TrainConfig().device == "auto"
    p = tmp_path / "c.toml"
    p.write_text('device = "tpu"\n')
    with pytest.raises(ValueError, match=r"c.toml: device 'tpu': unknown device"):
        load_config(p)
    p.write_text('device = "cuda:1"\n')  # valid syntax: readable on a machine without that GPU
    assert load_config(p).device == "cuda:1"
    saved = TrainConfig(device="cuda:0").to_dict()
    assert settle_config(None, None, saved, "x").device == "cuda:0"  # --resume keeps it ...
    assert settle_config(None, None, saved, "x", device="cpu").device == "cpu"  # ... unless --device
    assert settle_config(TrainConfig(), 5, device="auto").device == "auto"
    with pytest.raises(ValueError, match="unknown device"):
        settle_config(None, None, None, device="gpu")


@pytest.mark.parametrize("command", ["train", "render RUN", "view RUN", "eval RUN", "profile",
                                     "coverage", "export-mesh RUN --out m.ply"])
def test_every_command_refuses_an_unavailable_device_in_one_line(command, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [a.replace("RUN", str(tmp_path / "no_run")) for a in command.split()]
    assert main(argv + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dnmp: error: --device cuda: CUDA is not available"), err
    assert main(argv + ["--device", "gpu0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dnmp: error: --device 'gpu0': unknown device"), err


def test_train_refuses_a_config_device_that_is_not_here(tiny_scene, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = tmp_path / "gpu.toml"
    cfg.write_text('device = "cuda"\nsteps = 1\n')
    assert main(["train", str(tiny_scene), "--out", str(tmp_path / "r"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dnmp: error: {cfg}: device cuda: CUDA is not available"), err
    assert not (tmp_path / "r").exists()  # refused before anything was written


# -- the commands on each device --------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_commands_run_on_the_device_and_record_it(device, tiny_scene, tmp_path, capsys):
    cfg = tmp_path / "fast.toml"
    cfg.write_text("steps = 12\nbatch_size = 256\ncheckpoint_every = 100\nlog_every = 5\n"
                   "hidden = 16\nfeature_dim = 8\n")
    run = tmp_path / "run"
    assert main(["train", str(tiny_scene), "--out", str(run), "--config", str(cfg),
                 "--stages", "radiance", "--quiet", "--device", device]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["device"] == str(resolve_device(device))
    assert json.loads((run / "config.json").read_text())["device"] == device  # what was asked
    ckpt = load_checkpoint(run)
    assert ckpt["device"] == str(resolve_device(device))
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())  # loaded to the CPU
    capsys.readouterr()
    assert main(["eval", str(run), "--no-images", "--device", device]) == 0
    scored = json.loads(capsys.readouterr().out.splitlines()[0])
    assert scored["test_psnr"] == pytest.approx(metrics["test_psnr"], abs=1e-4)
    assert main(["render", str(run), "--out", str(tmp_path / "renders"), "--quiet", "--depth",
                 "--device", device]) == 0
    assert any((tmp_path / "renders").glob("*_depth.png"))
    capsys.readouterr()
    assert main(["profile", str(run), "--repeats", "1", "--no-memory", "--json", "--device", device]) == 0
    assert json.loads(capsys.readouterr().out)["device"] == str(resolve_device(device))
    assert main(["coverage", str(tiny_scene), "--json", "--device", device]) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_profile_reports_its_device(device, tiny_scene):
    from dnmp.profile import profile_run

    res = profile_run(None, str(tiny_scene), None, repeats=1, memory=False, device=device)
    assert res["device"] == str(resolve_device(device))
    assert res["render_ms_per_kpx"] > 0


# -- checkpoints across devices ---------------------------------------------------------

def _tiny_run(scene_dir, out, device="cpu", steps=12):
    scene = load_scene(scene_dir)
    return train_radiance(scene, out, TrainConfig(steps=steps, **FAST), progress=False,
                          log=lambda *a: None, device=device)


def test_checkpoint_loads_on_another_device(tiny_scene, tmp_path):
    _tiny_run(tiny_scene, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run")
    cpu = renderer_from_checkpoint(ckpt, "cpu")
    assert {p.device.type for p in cpu.parameters()} == {"cpu"}
    meta = renderer_from_checkpoint(ckpt, torch.device("meta"))  # any device: built on the CPU, moved
    assert {t.device.type for t in (*meta.parameters(), *meta.buffers())} == {"meta"}
    assert meta.primitives.features.shape == cpu.primitives.features.shape
    # a cpu -> cpu round trip through map_location gives the same weights and renders
    again = open_run(tmp_path / "run", device="cpu")
    for (k, a), b in zip(cpu.state_dict().items(), again.renderer.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")
def test_cpu_checkpoint_renders_on_the_gpu_like_on_the_cpu(tiny_scene, tmp_path):
    from dnmp.evaluate import render_frame

    _tiny_run(tiny_scene, tmp_path / "run")
    cpu, gpu = open_run(tmp_path / "run", device="cpu"), open_run(tmp_path / "run", device="cuda")
    frame = cpu.scene.frames_by_split("test")[0]
    a = render_frame(cpu.renderer, cpu.scene, frame)["rgb"]
    b = render_frame(gpu.renderer, gpu.scene, frame)["rgb"]
    assert b.device.type == "cuda"
    torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=0)
    # a GPU run resumes on the CPU (optimizer moments and model come back)
    _tiny_run(tiny_scene, tmp_path / "gpu_run", device="cuda")
    res = train_radiance(load_scene(tiny_scene), tmp_path / "gpu_run", None, resume=True, steps=16,
                         progress=False, log=lambda *a: None, device="cpu")
    assert res["step"] == 16 and res["device"] == "cpu"


def test_resume_on_another_device_keeps_the_run_settings(tiny_scene, tmp_path, monkeypatch):
    _tiny_run(tiny_scene, tmp_path / "run", device="cpu", steps=6)
    scene = load_scene(tiny_scene)
    # a run recorded on a GPU machine ("cuda:0") is continued here with --device cpu
    ckpt_path = sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))[-1]
    data = torch.load(ckpt_path, weights_only=True)
    data["config"]["device"] = "cuda:0"
    torch.save(data, ckpt_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device cuda:0: CUDA is not available"):
        train_radiance(scene, tmp_path / "run", None, resume=True, steps=8, progress=False,
                       log=lambda *a: None)
    res = train_radiance(scene, tmp_path / "run", None, resume=True, steps=8, progress=False,
                         log=lambda *a: None, device="cpu")
    assert res["step"] == 8 and res["device"] == "cpu"
    assert load_checkpoint(tmp_path / "run")["config"]["device"] == "cpu"


# -- no host round trips in a training step ---------------------------------------------

# data-dependent output sizes: on a GPU each waits for the device (a sync, not a copy)
SYNC_OPS = {"aten._unique2.default", "aten.unique_dim.default", "aten.unique_consecutive.default",
            "aten.nonzero.default", "aten.masked_select.default", "aten._coalesce.default"}
# where the step may keep such syncs (docstring of radiance_step): shade_rays' sparse
# feature gather (unique faces and vertices) and boolean masks, their backward
# (IndexBackward0 of a boolean index), and torch.optim (Adam's step count; the coalesce of
# SparseAdam, the reference optimizer of the features: RowAdam needs none)
ALLOWED_SYNCS = ("dnmp/model/renderer.py", "torch/optim/", " in IndexBackward0")


def _site() -> str:
    """Innermost caller in dnmp or torch.optim, as 'path:line' (path from dnmp/ or torch/)."""
    for f in reversed(traceback.extract_stack()[:-2]):
        name = f.filename.replace("\\", "/")
        if name.startswith(DNMP_DIR) or "/torch/optim/" in name:
            short = name[name.rfind("/dnmp/") + 1:] if name.startswith(DNMP_DIR) else name[name.rfind("torch/optim/"):]
            return f"{short}:{f.lineno}"
    return "?"


class HostTrips(TorchDispatchMode):
    """Records, per source line, what would be a host round trip on an accelerator."""

    def __init__(self):
        super().__init__()
        self.reads, self.syncs, self.meta = [], [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        leaves = torch.utils._pytree.tree_leaves((args, kwargs, out))
        if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in leaves):
            self.meta.append(f"{name} at {_site()}")
        if name == "aten._local_scalar_dense.default":
            self.reads.append(_site())
        elif name in SYNC_OPS or (name in ("aten.index.Tensor", "aten.index_put_.default",
                                           "aten.index_put.default")
                                  and any(isinstance(t, torch.Tensor) and t.dtype == torch.bool
                                          for t in torch.utils._pytree.tree_leaves(args[1]))):
            node = torch._C._current_autograd_node()  # ops of a backward pass: name the node
            self.syncs.append(f"{name} at {_site()}" + (f" in {node.name()}" if node is not None else ""))
        return out


@pytest.fixture
def host_calls(monkeypatch):
    """Calls of .cpu(), .numpy(), .tolist() made from dnmp code, as 'method at site'."""
    calls = []
    for method in ("cpu", "numpy", "tolist"):
        real = getattr(torch.Tensor, method)

        def wrapped(self, *a, _real=real, _m=method, **k):
            site = _site()
            if site.startswith("dnmp/"):
                calls.append(f"{_m} at {site}")
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, method, wrapped)
    return calls


def _step_setup(make_scene, sync_free, max_pixels=10**9):
    scene = load_scene(make_scene("steps", frames=5))
    cfg = TrainConfig(steps=10, **FAST)
    renderer = build_renderer(scene_centres(scene, cfg), cfg)
    frames = scene.frames_by_split("train")
    pool = FramePool(renderer, scene, frames, max_pixels, 5, progress=False, sync_free=sync_free)
    pool.sync(0)
    assert len(pool._slots) > 1  # the multi-frame gather, the common case
    opts = _make_optimizers(renderer, cfg)
    dev = torch.device("cpu")
    radiance_step(renderer, pool, opts, cfg, 0, dev)  # Adam's first step creates its state
    return renderer, pool, opts, cfg, dev


def test_radiance_step_makes_no_host_round_trip(make_scene, host_calls):
    renderer, pool, opts, cfg, dev = _step_setup(make_scene, sync_free=True)
    host_calls.clear()
    with torch.device("meta"), HostTrips() as rec:
        loss = radiance_step(renderer, pool, opts, cfg, 1, dev)
    assert loss.device == dev and loss.ndim == 0 and not loss.requires_grad
    assert rec.meta == [], "tensors made without device=: " + "; ".join(rec.meta)
    assert host_calls == [], host_calls
    # .item() etc. only in torch.optim.Adam, whose step count is a CPU scalar by design
    assert rec.reads and all(s.startswith("torch/optim/") for s in rec.reads), rec.reads
    # the syncs that remain are the documented, data-dependent ones
    # the check sees them at all: the sparse lookup's nonzero (unique_inverse) or unique
    assert any(("_unique2" in s or "nonzero" in s) and "renderer.py" in s for s in rec.syncs), rec.syncs
    bad = [s for s in rec.syncs if not any(a in s for a in ALLOWED_SYNCS)]
    assert bad == [], bad


def test_the_round_trip_check_catches_the_split_gather(make_scene, host_calls):
    # the CPU's gather for a rotating pool (2 of the 40x30 frames here; a pool that never
    # rotates gathers from one slab) splits a batch by frame with unique().tolist() and
    # nonzero: a host round trip on a GPU, which the check must report (it is not vacuous)
    renderer, pool, opts, cfg, dev = _step_setup(make_scene, sync_free=False, max_pixels=2 * 40 * 30)
    assert pool.rotates and pool._slab is None
    host_calls.clear()
    with torch.device("meta"), HostTrips() as rec:
        radiance_step(renderer, pool, opts, cfg, 1, dev)
    assert any(c.startswith("tolist at dnmp/train/frame_pool.py") for c in host_calls), host_calls
    assert any("frame_pool.py" in s for s in rec.syncs), rec.syncs


def test_masked_gather_equals_the_split_gather(make_scene):
    scene = load_scene(make_scene("gather", frames=6))
    cfg = TrainConfig(**FAST)
    renderer = build_renderer(scene_centres(scene, cfg), cfg)
    frames = scene.frames_by_split("train")
    split = FramePool(renderer, scene, frames, 10**9, 5, progress=False, sync_free=False)
    masked = FramePool(renderer, scene, frames, 10**9, 5, progress=False, sync_free=True)
    # a rotating pool too (3 of 5 frames), after two rotations
    small = 3 * 40 * 30
    rot = [FramePool(renderer, scene, frames, small, 2, seed=3, progress=False, sync_free=s) for s in (False, True)]
    for pools, step in (((split, masked), 0), (tuple(rot), 5)):
        for p in pools:
            p.sync(step)
        idx = torch.randint(0, len(pools[0]), (3000,), generator=torch.Generator().manual_seed(step))
        for a, b in zip(pools[0].batch(idx), pools[1].batch(idx)):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_training_loop_reads_the_loss_only_at_log_steps_and_saves(tiny_scene, tmp_path, monkeypatch):
    import dnmp.train.radiance as radiance

    reads = []
    real_step = radiance.radiance_step

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func) == "aten._local_scalar_dense.default" and _site().startswith("dnmp/train/radiance.py"):
                reads.append(step_now[0])
            return func(*args, **(kwargs or {}))

    step_now = [0]

    def counting_step(renderer, cache, opts, cfg, step, device, *args):
        step_now[0] = step + 1
        return real_step(renderer, cache, opts, cfg, step, device, *args)

    monkeypatch.setattr(radiance, "radiance_step", counting_step)
    scene = load_scene(tiny_scene)
    cfg = TrainConfig(steps=12, **{**FAST, "log_every": 5})
    monkeypatch.setattr(radiance, "evaluate", lambda *a, **k: {})  # scoring is not the loop
    with Reads():
        res = train_radiance(scene, tmp_path / "run", cfg, progress=False, log=lambda *a: None)
    # steps 5 and 10 (progress) and 12 (the check before the last save); the final figures
    # (running loss, loss curve) are read together by one .tolist() after the loop
    assert reads == [5, 10, 12], reads
    assert [s for s, _ in res["loss_curve"]] == [5, 10]
    assert res["step"] == 12 and res["train_psnr_running"] is not None


def test_a_nan_loss_is_caught_before_a_save(tiny_scene, tmp_path, monkeypatch):
    import dnmp.train.radiance as radiance

    real_step = radiance.radiance_step

    def nan_at_7(renderer, cache, opts, cfg, step, device, *args):
        loss = real_step(renderer, cache, opts, cfg, step, device, *args)
        return loss * float("nan") if step == 6 else loss

    monkeypatch.setattr(radiance, "radiance_step", nan_at_7)
    scene = load_scene(tiny_scene)
    cfg = TrainConfig(steps=20, **{**FAST, "log_every": 10, "checkpoint_every": 8})
    with pytest.raises(FloatingPointError, match=r"loss became nan at a step in 1\.\.8"):
        train_radiance(scene, tmp_path / "run", cfg, progress=False, log=lambda *a: None)
    assert not list((tmp_path / "run" / "checkpoints").glob("step_*.pt"))  # nothing saved after it


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


def test_keep_freed_memory(monkeypatch):
    """The command line's allocator setting: off with DNMP_SYSTEM_MALLOC=1; on glibc a large
    tensor then comes from the heap (no new mmap'd block) and its memory stays for reuse.
    (The setting stays for the rest of this pytest process, as it does in a command.)"""
    monkeypatch.setenv("DNMP_SYSTEM_MALLOC", "1")
    assert keep_freed_memory() is False
    monkeypatch.setenv("DNMP_SYSTEM_MALLOC", "0")  # "0" asks for the setting, as unset does
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("not glibc >= 2.33")
    libc.mallinfo2.restype = _Mallinfo2
    assert keep_freed_memory() is True
    before = libc.mallinfo2()
    t = torch.empty(64 << 20, dtype=torch.uint8)  # 64 MiB: glibc would mmap it by default
    during = libc.mallinfo2()
    assert during.hblks == before.hblks  # no mmap'd block
    assert during.uordblks >= before.uordblks + (64 << 20)  # taken from the heap
    del t
    after = libc.mallinfo2()
    assert after.arena >= during.arena  # the heap's top was not trimmed

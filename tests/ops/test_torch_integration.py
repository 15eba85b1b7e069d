"""Custom-op integration: torch.library.opcheck, torch.compile, CUDA, build plumbing."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import dnmp.ops as ops

from .scenes import camera, random_soup, spheres

REPO = Path(__file__).resolve().parents[2]


def _raster_args(dtype=torch.float64):
    verts, faces = random_soup(2, n_faces=30, dtype=dtype)
    intr, w2c = camera(10, 12, dtype=dtype)
    return verts, faces, intr[None], w2c[None]


def test_opcheck_rasterize_fwd(cpp):
    verts, faces, intr, w2c = _raster_args()
    torch.library.opcheck(
        torch.ops.dnmp.rasterize_fwd, (verts.requires_grad_(), faces, intr, w2c, 10, 12, 3, 0.05, 1e4),
        # test_aot_dispatch_dynamic is left out: it tries to build a gradient for the
        # int64 pix_to_face output and fails inside opcheck; compile + backward is
        # covered by test_torch_compile_smoke instead.
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


def test_opcheck_interpolate_fwd(cpp):
    verts, faces, intr, w2c = _raster_args()
    p2f, _, bary = torch.ops.dnmp.rasterize_fwd(verts, faces, intr, w2c, 10, 12, 3, 0.05, 1e4)
    attr = torch.randn(verts.shape[0], 4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.dnmp.interpolate_fwd, (attr, faces, p2f, bary.requires_grad_()))


def test_torch_compile_smoke(cpp):
    verts, faces = spheres(3, seed=1)
    intr, w2c = camera(16, 20, f=12.0)
    attr = torch.randn(verts.shape[0], 4)

    def f(v, a):
        fr = ops.rasterize(v, faces, intr, w2c, (16, 20), 2)
        return ops.interpolate(a, faces, fr).sum() + fr.zbuf.sum()

    cf = torch.compile(f, fullgraph=True)
    v1, a1 = verts.clone().requires_grad_(), attr.clone().requires_grad_()
    cf(v1, a1).backward()
    v2, a2 = verts.clone().requires_grad_(), attr.clone().requires_grad_()
    f(v2, a2).backward()
    torch.testing.assert_close(v1.grad, v2.grad, rtol=0, atol=0)
    torch.testing.assert_close(a1.grad, a2.grad, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(cpp):
    verts, faces = spheres(10, seed=3)
    intr, w2c = camera(40, 50, f=30.0)
    a = ops.rasterize(verts, faces, intr, w2c, (40, 50), 4)
    b = ops.rasterize(verts.cuda(), faces.cuda(), intr.cuda(), w2c.cuda(), (40, 50), 4)
    assert torch.equal(a.pix_to_face, b.pix_to_face.cpu())
    torch.testing.assert_close(a.zbuf, b.zbuf.cpu(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.bary_coords, b.bary_coords.cpu(), rtol=1e-6, atol=1e-6)
    attr = torch.randn(verts.shape[0], 8)
    va, aa = verts.clone().requires_grad_(), attr.clone().requires_grad_()
    ops.interpolate(aa, faces, ops.rasterize(va, faces, intr, w2c, (40, 50), 4)).square().sum().backward()
    vb, ab = verts.cuda().requires_grad_(), attr.cuda().requires_grad_()
    fr = ops.rasterize(vb, faces.cuda(), intr.cuda(), w2c.cuda(), (40, 50), 4)
    ops.interpolate(ab, faces.cuda(), fr).square().sum().backward()
    torch.testing.assert_close(va.grad, vb.grad.cpu(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(aa.grad, ab.grad.cpu(), rtol=1e-5, atol=1e-5)


def _nvcc():
    return shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc") and "/usr/local/cuda/bin/nvcc")


@pytest.mark.skipif(not _nvcc(), reason="nvcc not found")
@pytest.mark.skipif(os.environ.get("DNMP_SKIP_NVCC_TEST") == "1", reason="DNMP_SKIP_NVCC_TEST=1")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    """The CUDA kernels (which include csrc/common/) compile with nvcc even on a
    machine without a GPU or a CUDA build of torch (object files only, not
    linked, not run). ~1-2 min on 2 cores the first time for given sources;
    DNMP_SKIP_NVCC_TEST=1 skips it."""
    from torch.utils.cpp_extension import include_paths

    from dnmp.ops._build_config import NVCC_FLAGS, cuda_sources, source_hash

    # A pass is remembered per (sources, nvcc, torch, flags): reruns on unchanged
    # sources skip the ~1-2 min compile.
    nvcc_version = subprocess.run([_nvcc(), "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(f"{source_hash(REPO / 'csrc')}|{nvcc_version}|{torch.__version__}|{NVCC_FLAGS}".encode())
    cache = Path(os.environ.get("DNMP_BUILD_DIR") or Path.home() / ".cache" / "dnmp")
    marker = cache / f"nvcc-compile-ok-{key.hexdigest()[:16]}"
    if marker.exists():
        return

    base = [_nvcc(), *NVCC_FLAGS, "-I", str(REPO / "csrc"), "-I", sysconfig.get_paths()["include"],
            "-DTORCH_EXTENSION_NAME=_C", "-D_GLIBCXX_USE_CXX11_ABI=" + str(int(torch._C._GLIBCXX_USE_CXX11_ABI)),
            "--expt-relaxed-constexpr", "-arch=sm_80"]
    for p in include_paths():
        base += ["-I", p]
    # A CPU-only torch wheel lacks this generated CUDA-build header; an empty
    # stand-in suffices for compiling (it only carries build-time macros).
    if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in include_paths()):
        shim = tmp_path / "shim" / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text("#pragma once\n")
        base += ["-I", str(tmp_path / "shim")]
    sources = cuda_sources(REPO / "csrc")  # every .cu file, the list the builds use
    assert sources
    procs = [
        (src, subprocess.Popen(base + ["-c", str(src), "-o", str(tmp_path / (src.stem + ".o"))],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for src in sources
    ]
    failures = []
    try:
        for src, p in procs:  # wait for all: every broken file is reported, none left running
            out, _ = p.communicate(timeout=900)
            if p.returncode != 0:
                failures.append(f"{src.name}:\n{out[-4000:]}")
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
    assert not failures, "\n".join(failures)
    _check_cuda_objects_link([tmp_path / (src.stem + ".o") for src in sources])
    try:
        cache.mkdir(parents=True, exist_ok=True)
        marker.write_text("ok\n")
    except OSError:
        pass


def _check_cuda_objects_link(objects):
    """Every dnmp:: function the CUDA objects call is defined: in another CUDA
    object, or in the C++ part (the CPU build of dnmp._C here, whose sources are
    the same). Catches a declared-but-never-defined kernel that compiling alone
    would not."""
    import importlib.util

    nm = shutil.which("nm")
    if nm is None:
        return
    defined, undefined = set(), set()

    def symbols(args):
        out = subprocess.run([nm, "-C", *args], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            kind, _, name = line.strip().partition(" ")
            if len(kind) > 1:  # "address kind name"
                kind, _, name = name.partition(" ")
            if name.startswith("dnmp::"):
                yield kind, name

    for o in objects:
        for kind, name in symbols([str(o)]):
            (undefined if kind == "U" else defined).add(name)
    spec = importlib.util.find_spec("dnmp._C")
    if spec is not None and spec.origin:
        defined |= {name for kind, name in symbols(["-D", spec.origin]) if kind != "U"}
    else:  # no C++ build to compare with: check only the CUDA kernels' own symbols
        undefined = {n for n in undefined if "_cuda(" in n}
    missing = sorted(undefined - defined)
    assert not missing, f"CUDA objects call undefined functions: {missing}"


def test_stale_aot_build_is_refused(tmp_path, monkeypatch):
    """An ahead-of-time dnmp._C built from other sources than the csrc/ beside it
    must not be loaded (the loader compiles just in time instead)."""
    import importlib.util

    from dnmp.ops import _extension

    if importlib.util.find_spec("dnmp._C") is None:
        pytest.skip("no ahead-of-time build of dnmp._C here")
    src = _extension.csrc_dir()
    copy = tmp_path / "csrc"
    shutil.copytree(src, copy)
    with open(copy / "common" / "macros.h", "a") as f:
        f.write("\n// edited\n")
    monkeypatch.setattr(_extension, "csrc_dir", lambda: copy)
    with pytest.raises(ImportError, match="stale build"):
        _extension._check_aot_fresh()


def test_force_reference_env():
    """DNMP_FORCE_REFERENCE=1 selects the pure-torch path, without warnings."""
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('error')\n"
        "import dnmp.ops as o\n"
        "assert o.backend() == 'reference', o.backend()\n"
        "fr = o.rasterize(torch.tensor([[0., 0, 2], [1, 0, 2], [0, 1, 2]]), torch.tensor([[0, 1, 2]]),\n"
        "                 torch.tensor([[4., 0, 1], [0, 4, 1], [0, 0, 1]]), torch.eye(4), (5, 5))\n"
        "assert int((fr.pix_to_face >= 0).sum()) == 3\n"
    )
    env = dict(os.environ, DNMP_FORCE_REFERENCE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

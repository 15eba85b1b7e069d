"""Finding the compiled kernels: ahead-of-time build, just-in-time build, or none.

Order of attempts (first success wins, decided once per process):

1. ``DNMP_FORCE_REFERENCE=1`` in the environment: no extension, pure-torch
   reference everywhere (for tests and debugging).
2. ``dnmp._C``: the extension built by ``setup.py`` (``pip install .`` or
   ``pip install -e .`` / ``python setup.py build_ext --inplace``).
3. Just-in-time: ``torch.utils.cpp_extension.load`` compiles the same ``csrc``
   sources (found in ``<repo>/csrc`` for a source checkout / editable install,
   or ``dnmp/_csrc`` shipped inside a wheel). The build folder is
   ``$DNMP_BUILD_DIR`` or ``~/.cache/dnmp/<name>``, where the name carries a hash
   of every source file, the torch version and the flags, so editing a kernel
   triggers a rebuild and stale binaries are never reused.
4. Otherwise a single ``RuntimeWarning`` is emitted and the reference is used.

Loading the extension registers the ``torch.ops.dnmp.*`` custom ops (see
``csrc/bindings.cpp``); ``dnmp.ops._ops`` then attaches fake (meta)
implementations and autograd formulas to them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["load_extension", "backend", "csrc_dir", "kernels_for", "CXX_FLAGS", "LD_FLAGS", "NVCC_FLAGS"]

from ._build_config import CXX_FLAGS, LD_FLAGS, NVCC_FLAGS, cpp_sources, cuda_sources, source_hash

_lock = threading.Lock()
_state: dict = {}


def csrc_dir() -> Path | None:
    """Folder holding the C++/CUDA sources, or None when this install has none."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "_csrc", here.parents[1] / "csrc"):
        if (cand / "bindings.cpp").is_file():
            return cand
    return None


def _sources(root: Path, with_cuda: bool) -> list[Path]:
    return cpp_sources(root) + (cuda_sources(root) if with_cuda else [])


def _want_cuda() -> bool:
    """Build the CUDA kernels too? ``DNMP_WITH_CUDA=0/1`` decides when set (as in
    setup.py); otherwise yes when torch is a CUDA build, a device is visible and
    a CUDA toolkit (nvcc, found by torch as CUDA_HOME) is installed."""
    env = os.environ.get("DNMP_WITH_CUDA")
    if env is not None and env != "":
        return env == "1"
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and torch.version.cuda is not None and CUDA_HOME is not None


def _jit_build():
    from torch.utils.cpp_extension import load

    root = csrc_dir()
    if root is None:
        raise RuntimeError("no csrc sources found (neither <repo>/csrc nor dnmp/_csrc)")
    with_cuda = _want_cuda()
    h = hashlib.sha256(source_hash(root).encode())
    h.update(f"{torch.__version__}|{sys.version_info[:2]}|{with_cuda}|{CXX_FLAGS}|{NVCC_FLAGS}".encode())
    name = f"dnmp_C_{h.hexdigest()[:16]}"
    build_dir = Path(os.environ.get("DNMP_BUILD_DIR") or Path.home() / ".cache" / "dnmp") / name
    build_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        name=name,
        sources=[str(s) for s in _sources(root, with_cuda)],
        extra_cflags=CXX_FLAGS + (["-DDNMP_WITH_CUDA"] if with_cuda else []),
        extra_ldflags=LD_FLAGS,
        extra_include_paths=[str(root)],
        build_directory=str(build_dir),
        verbose=bool(os.environ.get("DNMP_VERBOSE_BUILD")),
    )
    if with_cuda:
        kwargs["extra_cuda_cflags"] = NVCC_FLAGS
    return load(**kwargs)


def _check_aot_fresh() -> None:
    """Raise ImportError, before anything is loaded, when dnmp._C is missing or was
    built from other sources than the ones beside it (a stale in-place build):
    stale kernels must never run. setup.py compiles the sources' sha256 into the
    binary as the string "DNMP_SOURCE_HASH=<hex>", read here from the file."""
    spec = importlib.util.find_spec("dnmp._C")
    if spec is None or spec.origin is None:
        raise ImportError("dnmp._C is not built")
    root = csrc_dir()
    if root is None:
        return
    blob = Path(spec.origin).read_bytes()
    at = blob.find(b"DNMP_SOURCE_HASH=")
    built = blob[at + 17: at + 17 + 64].decode("ascii", "replace") if at >= 0 else None
    if built != source_hash(root):
        raise ImportError(f"dnmp._C at {spec.origin} was built from other sources than {root} (stale build)")


def load_extension():
    """The compiled extension module, or None (then the reference is used)."""
    if "mod" in _state:  # fast path, lock-free (also keeps torch.compile graphs whole)
        return _state["mod"]
    with _lock:
        if "mod" in _state:
            return _state["mod"]
        mod, why = None, None
        if os.environ.get("DNMP_FORCE_REFERENCE", "") not in ("", "0"):
            _state["mod"], _state["backend"] = None, "reference"
            return None
        try:
            _check_aot_fresh()
            from dnmp import _C as mod  # type: ignore[attr-defined]

            if not getattr(mod, "with_cuda", False) and _want_cuda():
                # a CPU-only ahead-of-time build on a machine that can run CUDA:
                # build both just in time, keep the CPU-only one if that fails
                try:
                    mod = _jit_build()
                except Exception as e:  # noqa: BLE001
                    warnings.warn(f"dnmp.ops: CUDA kernels could not be built ({type(e).__name__}: "
                                  f"{str(e)[-2000:]}); CUDA tensors use the pure-PyTorch reference",
                                  RuntimeWarning, stacklevel=3)
        except ImportError as e:
            mod = None
            why = f"dnmp._C not usable ({e})"
            try:
                mod = _jit_build()
            except Exception as e2:  # noqa: BLE001 - any build failure means: fall back
                mod = None
                why += f"; just-in-time build failed: {type(e2).__name__}: {str(e2)[-2000:]}"
        if mod is None:
            warnings.warn(
                "dnmp.ops: compiled kernels unavailable, using the slow pure-PyTorch reference. "
                f"Reason: {why}",
                RuntimeWarning,
                stacklevel=3,
            )
        _state["mod"] = mod
        _state["backend"] = "cpp" if mod is not None else "reference"
        if mod is not None:
            from . import _ops  # noqa: F401  (registers fake impls + autograd)
        return mod


def backend() -> str:
    """"cpp" when the compiled kernels are in use, "reference" for the pure-torch fallback."""
    load_extension()
    return _state["backend"]


def bf16_matmul_available() -> bool:
    """True when the compiled kernels are built and this CPU has bfloat16 matrix kernels for
    them: oneDNN's brgemm micro-kernel (ATen's `cpublas::could_pack`; AMX-class CPUs, and not
    when `ONEDNN_MAX_CPU_ISA` caps oneDNN below them) or else AVX512-BF16's dot-product
    instruction (dnmp's own small GEMM, csrc/cpu/shade_cpu.cpp `gemm_dp`; e.g. AMD Zen 4),
    which the shading ops use for their MLP layers when asked (`bf16_matmul`)."""
    mod = load_extension()
    return mod is not None and bool(getattr(mod, "bf16_matmul_available", lambda: False)())


def kernels_for(device: torch.device) -> bool:
    """True when compiled kernels can run on `device` (CPU always when built; CUDA
    only when the extension was built with CUDA). Otherwise the reference is used,
    with one warning per device type."""
    mod = load_extension()
    if mod is None:
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda" and bool(getattr(mod, "with_cuda", False)):
        return True
    key = f"warned_{device.type}"
    if key not in _state:
        _state[key] = True
        warnings.warn(
            f"dnmp.ops: no compiled kernels for device type '{device.type}'; using the pure-PyTorch reference",
            RuntimeWarning,
            stacklevel=3,
        )
    return False

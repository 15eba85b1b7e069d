"""Build script: the package plus, when torch is importable at build time, the
compiled kernels ``dnmp._C`` (C++ always, CUDA when torch has CUDA and nvcc is
found). Without torch at build time (e.g. pip's isolated build environment) the
package installs as pure Python and the kernels are compiled just in time on
first use (see dnmp/ops/_extension.py). To build ahead of time:

    pip install --no-build-isolation -e .        # or: python setup.py build_ext --inplace

Environment: DNMP_NO_EXTENSION=1 skips the extension; DNMP_WITH_CUDA=0/1 forces
the CUDA part off/on (default: on when torch.version.cuda and CUDA_HOME exist).
Metadata lives in pyproject.toml.
"""

import os
import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
_cfg = runpy.run_path(str(ROOT / "dnmp" / "ops" / "_build_config.py"))


class build_py_with_sources(build_py):
    """Also ship csrc/ as dnmp/_csrc so that a non-editable install can still
    compile the kernels just in time."""

    def run(self):
        super().run()
        if not CSRC.is_dir():
            return
        dst = Path(self.build_lib) / "dnmp" / "_csrc"
        for src in CSRC.rglob("*"):
            if src.is_file() and src.suffix in _cfg["SOURCE_SUFFIXES"]:
                out = dst / src.relative_to(CSRC)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out)


def extension_setup():
    if os.environ.get("DNMP_NO_EXTENSION", "") not in ("", "0") or not CSRC.is_dir():
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        return {}
    digest = _cfg["source_hash"](CSRC)
    env_cuda = os.environ.get("DNMP_WITH_CUDA")
    with_cuda = (torch.version.cuda is not None and CUDA_HOME is not None) if env_cuda is None else env_cuda == "1"
    rel = lambda ps: [str(p.relative_to(ROOT)) for p in ps]  # noqa: E731
    sources = rel(_cfg["cpp_sources"](CSRC))
    # the loader compares this with the sources beside the binary (stale in-place builds)
    defines = [f'-DDNMP_SOURCE_HASH="{digest}"']
    cxx = list(_cfg["CXX_FLAGS"]) + defines
    if with_cuda:
        ext = CUDAExtension(
            "dnmp._C",
            sources + rel(_cfg["cuda_sources"](CSRC)),
            include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": cxx + ["-DDNMP_WITH_CUDA"], "nvcc": list(_cfg["NVCC_FLAGS"])},
            extra_link_args=list(_cfg["LD_FLAGS"]),
        )
    else:
        ext = CppExtension(
            "dnmp._C",
            sources,
            include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": cxx},
            extra_link_args=list(_cfg["LD_FLAGS"]),
        )

    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)}}


kw = extension_setup()
kw.setdefault("cmdclass", {})["build_py"] = build_py_with_sources
setup(**kw)

"""The device axis: which torch device a command computes on (`--device`).

Every command takes `--device auto|cpu|cuda[:N]` and calls `resolve_device` once; the
library then takes the device from its inputs (the model's parameters, the tensors it is
given). Tensors go to the CPU only where a file is written or a figure is printed.
"""

from __future__ import annotations

import ctypes
import os
import re

import torch

DEVICE_HELP = ("auto (default: cuda when torch sees a GPU, else cpu), cpu, cuda or cuda:N "
               "(the N-th GPU)")
_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_spec(spec: str, what: str = "--device") -> str:
    """Return `spec` if it is "auto", "cpu", "cuda" or "cuda:N"; the syntax only, no
    look at the hardware (a config written on a GPU machine stays readable elsewhere).

    Raises:
        ValueError: one line naming `what`, for anything else.
    """
    if not isinstance(spec, str) or not _SPEC.match(spec.strip().lower()):
        raise ValueError(f"{what} {spec!r}: unknown device; use {DEVICE_HELP}")
    return spec.strip().lower()


def resolve_device(spec: str | torch.device | None = "auto", what: str = "--device") -> torch.device:
    """The torch device that `spec` names on this machine.

    Args:
        spec: "auto" (or None): cuda (the current GPU, `cuda:<current index>`) when
            `torch.cuda.is_available()`, else cpu; "cpu"; "cuda" (the current GPU) or
            "cuda:N"; or a `torch.device` (cpu and cuda ones are checked as their
            strings are; another type, e.g. meta, is returned as given).
        what: how the user gave it, for the error message (e.g. "--device" or
            "config.toml: device").
    Returns:
        torch.device with an explicit index for cuda (e.g. cuda:0), so that it names one
        GPU in logs and in metrics.json.
    Raises:
        ValueError: one line: an unknown spec; "cuda" when torch has no usable CUDA (says
            whether this torch was built without CUDA or sees no GPU); "cuda:N" past the
            number of GPUs.
    """
    if isinstance(spec, torch.device):
        if spec.type not in ("cpu", "cuda"):
            return spec  # e.g. meta, from a library caller or a test: taken as given
        spec = str(spec)
    spec = "auto" if spec is None else check_device_spec(spec, what)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
        raise ValueError(f"{what} {spec}: CUDA is not available ({why}); use --device cpu")
    index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"{what} {spec}: no such GPU (this machine has {count}: cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (cpu for one with neither)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (CUDA kernels run asynchronously): call it
    before reading a wall clock. A no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["DEVICE_HELP", "check_device_spec", "resolve_device", "module_device", "synchronize"]


_FREED_MEMORY_KEPT = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process for reuse: no mmap per large
    allocation (`M_MMAP_MAX` = 0) and no trimming of the heap's top below 2 GiB
    (`M_TRIM_THRESHOLD`). torch's CPU allocator has no cache of its own, so without this
    every tensor of more than a few MiB (a render's fragments, a training step's
    activations) is mapped anew and page-faulted in, zero-filled by the kernel, each time:
    `dnmp profile`'s rasterization measured 204 -> 190 ms on the bundled frame.
    The price is that the resident size stays at its high-water mark after a peak.

    The command line calls it once at start (process-wide, like OMP_WAIT_POLICY); the
    library never does. DNMP_SYSTEM_MALLOC=1 leaves malloc as it is (0, false, no or empty
    do not).

    Returns:
        True when the settings were applied; False on a C library without glibc's
        mallopt or with DNMP_SYSTEM_MALLOC=1.
    """
    if os.environ.get("DNMP_SYSTEM_MALLOC", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: other libcs' mallopt differ or do nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    global _FREED_MEMORY_KEPT
    m_trim_threshold, m_mmap_max = -1, -4
    _FREED_MEMORY_KEPT = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
    return _FREED_MEMORY_KEPT


def freed_memory_kept() -> bool:
    """Whether `keep_freed_memory` has applied its settings in this process (what `dnmp
    profile` reports as malloc "kept" or "system")."""
    return _FREED_MEMORY_KEPT


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc `malloc_trim`; a no-op elsewhere), also
    under `keep_freed_memory`: called where a phase's large buffers are gone for good.

    A frame's fragments are tens of MB; replacing pool frames fragments the heap: the
    resident size crept up by ~5 MB per rotation without this (`train.frame_pool`).
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass

"""Atomic file writing shared by checkpoints and shipped weights."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def atomic_torch_save(obj, path: str | Path) -> Path:
    """`torch.save` to a temporary file in the target folder, fsync, chmod 644 and
    rename over `path`, so a crash or full disk leaves the old file or the new one,
    never a truncated file under the final name.

    Raises:
        OSError: naming `path` (not the temporary file), e.g. an unwritable folder or
            a full disk (torch reports the latter as RuntimeError; converted here).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(f"{path}: cannot write ({str(exc).splitlines()[0]})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

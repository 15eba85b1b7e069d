"""Atomic file writing (checkpoints, JSON, images, videos) and safe loading of torch files.

Every file dnmp writes goes through this module: a temporary file beside the target,
then a rename, so a crash never leaves a truncated file under the final name.

Files written with `atomic_torch_save` hold only plain data (tensors, numbers,
strings, None and dict/list/tuple containers of them) and are read back with
`load_plain`, i.e. `torch.load(weights_only=True)`: a file that would run code
when unpickled (a crafted "checkpoint") is refused instead of executed.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

TMP_PREFIX = ".tmp_"
_PLAIN_SCALARS = (str, int, float, bool, type(None))  # exact types: np.float64 is a float subclass


class UnsafeFileError(ValueError):
    """A torch file that holds Python objects other than plain data; not loaded."""


def check_plain(obj, where: str = "") -> None:
    """Raise TypeError naming the key path of the first value that `load_plain` could not
    read back (anything but tensors, numbers, strings, None, dict/list/tuple)."""
    if type(obj) in _PLAIN_SCALARS or isinstance(obj, (torch.Tensor, torch.Size)):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} is not plain data")
            check_plain(v, f"{where}/{k}")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where or 'value'}: {type(obj).__module__}.{type(obj).__name__} is not "
                    f"plain data (tensors, numbers, strings, containers)")


def load_plain(path: str | Path):
    """`torch.load(path, map_location="cpu", weights_only=True)`.

    Raises:
        UnsafeFileError: one line naming `path`, when the file holds other Python
            objects (it may have been crafted to run code; it is not unpickled).
        pickle.UnpicklingError and the other exceptions of torch.load: a corrupt or
            truncated file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"unsupported (?:global|class)\s+(?:GLOBAL\s+)?([\w.]+)", str(exc), re.I)
        if found is None:  # junk bytes ("Unsupported operand"): a corrupt file, not a crafted one
            raise pickle.UnpicklingError("corrupt, truncated or not a torch file") from None
        raise UnsafeFileError(f"{path}: refused to load: the file holds the Python object "
                              f"{found.group(1)}, not only tensors and plain data (unpickling it "
                              f"could run code)") from None


def _enospc(exc: BaseException) -> bool:
    """Whether a failed write ran out of disk space: an OSError ENOSPC anywhere in the
    exception chain (torch.save reports it as RuntimeError 'unexpected pos ...')."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _InterruptGuard:
    """File object for torch.save that remembers a KeyboardInterrupt (e.g. a signal
    handler's `Interrupted`) raised while writing: torch.save reports it as a
    RuntimeError 'unexpected pos ...', which would read as a failed write."""

    def __init__(self, fh):
        self.fh = fh
        self.interrupt: KeyboardInterrupt | None = None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except KeyboardInterrupt as exc:
            self.interrupt = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def atomic_torch_save(obj, path: str | Path) -> Path:
    """`torch.save` to a temporary file (`.tmp_*`) in the target folder, fsync, chmod 644
    and rename over `path`, so a crash or full disk leaves the old file or the new one,
    never a truncated file under the final name. A process killed mid-save leaves its
    `.tmp_*` file; `remove_stale_temporaries` clears them at the next start.

    `obj` must be plain data (see `check_plain`), so that `load_plain` reads it back.

    Raises:
        KeyboardInterrupt (or its subclass `train.interrupt.Interrupted`): a signal
            during the save, re-raised as itself; the temporary file is removed.
        TypeError: `obj` holds non-plain values (a programming error; nothing written).
        OSError: naming `path` (not the temporary file), e.g. an unwritable folder, or
            errno ENOSPC with "No space left on device" for a full disk (torch reports
            that as RuntimeError 'unexpected pos ...'; converted here).
    """
    path = Path(path)
    check_plain(obj, path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    guard = None
    try:
        with os.fdopen(fd, "wb") as fh:
            guard = _InterruptGuard(fh)
            torch.save(obj, guard)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        Path(tmp).unlink(missing_ok=True)
        if guard is not None and guard.interrupt is not None:
            raise guard.interrupt from None  # Ctrl-C during the save: not a write error
        if _enospc(exc):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
        raise OSError(f"{path}: cannot write ({str(exc).splitlines()[0]})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(folder: str | Path, pattern: str = TMP_PREFIX + "*") -> list[Path]:
    """Delete files matching `pattern` in `folder` (temporaries of saves that a killed
    process left behind); returns the paths removed. A missing folder is no error."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(pattern):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _finite_or_none(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_atomic(path: str | Path, write) -> Path:
    """Call `write(tmp)` on a hidden temporary beside `path`, then rename it over `path`,
    so an interrupted or failed write never leaves a partial file under the final name.
    Returns `path`. Raises what `write` raises; an OSError about the temporary file
    (e.g. an unwritable folder) is raised naming `path` instead.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename == str(tmp) and exc.strerror:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: dict) -> Path:
    """Write strict JSON (indent 2) atomically. Non-finite floats (e.g. the PSNR of two
    identical images) are written as null."""
    text = json.dumps(_finite_or_none(data), indent=2, allow_nan=False) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_image_atomic(path: str | Path, img: np.ndarray) -> Path:
    """Write an image atomically; the format follows the suffix (imageio).

    Args: img uint8 [H, W, 3] or [H, W]."""
    import imageio.v3 as iio

    return write_atomic(path, lambda tmp: iio.imwrite(tmp, img))


class VideoStream:
    """An H.264 mp4 written frame by frame to a hidden temporary file and renamed to `path`
    by `close()`; `abort()` removes the temporary. Odd sizes are padded by one edge row /
    column (yuv420p needs even sizes). Frames: uint8 [H, W, 3] of one size."""

    def __init__(self, path: str | Path, fps: float):
        import imageio.v2 as imageio

        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp.mp4")
        self.frames = 0
        self._writer = imageio.get_writer(self.tmp, fps=fps, codec="libx264", quality=8,
                                          macro_block_size=1)

    def append(self, img: np.ndarray) -> None:
        h, w = img.shape[:2]
        self._writer.append_data(np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge"))
        self.frames += 1

    def close(self) -> Path:
        self._writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)

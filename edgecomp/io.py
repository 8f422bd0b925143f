"""Atomic file output: write to a temporary file beside the target, then rename.

A crash or a failed check never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from edgecomp.errors import EdgecompError


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) or raise a one-line EdgecompError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgecompError(f"cannot create output folder {path}: {exc.strerror}",
                            fix="choose a writable folder with --out") from None
    if not os.access(path, os.W_OK):
        raise EdgecompError(f"output folder {path} is not writable",
                            fix="choose a writable folder with --out")
    return path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    Example:
        >>> with atomic_path("model.tflite") as tmp:
        ...     Path(tmp).write_bytes(b"...")
    """
    target = Path(target)
    ensure_dir(target.parent)
    # The temp name keeps the suffix: Keras and the converters choose the format by it.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{target.suffix}", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 files; outputs get the usual mode for new files.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except OSError as exc:  # disk full, permissions, ...: one clear line, nothing left behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise EdgecompError(f"cannot write {target}: {exc.strerror or exc}",
                            fix="free disk space or choose another --out") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically (fsync'd before the rename)."""
    with atomic_path(target) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise EdgecompError(f"cannot write {target}: {exc.strerror}",
                                fix="free disk space or choose another --out") from None
    return Path(target)


def write_text(target: str | os.PathLike, text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj) -> Path:
    return write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")

"""Writing files so that a reader never sees half of one.

Every file the library and the ``elta`` command write goes through :func:`atomic_write`:
the bytes go to a temporary file beside the target, which is flushed, synced, given the
permissions a plain ``open()`` would have given it (the user's umask), and renamed over
the target; the directory is synced after the rename. An interrupted write leaves the
old file (or none) and no temporary file behind.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

__all__ = ["TEMPORARY_SUFFIX", "atomic_write", "atomic_write_json", "atomic_write_text", "remove_stale_temporaries"]

TEMPORARY_SUFFIX = ".elta-tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_directory(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


class _Digesting:
    """A write-only stream that feeds every byte it writes to ``digest`` too."""

    def __init__(self, stream: BinaryIO, digest: Any):
        self._stream, self._digest = stream, digest

    def write(self, data: Any) -> int:
        self._digest.update(data)
        return self._stream.write(data)

    def seek(self, *args: Any) -> int:  # a digest of the bytes in write order would no longer be the file's
        raise OSError("this stream is written in order only")

    def seekable(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], *, digest: Any = None) -> Path:
    """Call ``write(stream)`` on a temporary file, then move it to ``path`` atomically.
    ``digest`` (a ``hashlib`` object) is updated with the bytes written, so that a
    caller who needs the file's hash does not read the file again."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, expected a file path to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream if digest is None else _Digesting(stream, digest))
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        cause = _os_error_behind(error)
        if cause is None:
            raise
        raise OSError(cause.errno, f"{path} could not be written ({_reason(cause)}); "
                      "the file that was there, if any, is unchanged") from None
    _sync_directory(path.parent)
    return path


def _os_error_behind(error: BaseException) -> OSError | None:
    """The operating system's error behind ``error``: ``torch.save`` reports a failed write
    (a full disk, a quota) as a ``RuntimeError`` about positions, with the ``OSError`` only
    in its context."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _reason(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device" if error.errno == errno.ENOSPC else "disk quota exceeded"
    return error.strerror or errno.errorcode.get(error.errno, str(error.errno))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, value: Any) -> Path:
    """JSON with ``allow_nan=False``: a NaN is an error, never the non-JSON token ``NaN``."""
    try:
        text = json.dumps(value, indent=2, allow_nan=False)
    except ValueError:
        raise ValueError(f"{path}: refusing to write NaN or Inf as JSON (a result that is not a number)") from None
    return atomic_write_text(path, text + "\n")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that a killed :func:`atomic_write` left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TEMPORARY_SUFFIX)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale

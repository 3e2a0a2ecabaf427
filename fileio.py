"""Atomic file writes, shared by convert, the Save node and the queue CLI.

A file is written to a fresh temporary file in its target folder (created exclusively, never
through a link), flushed to disk, then renamed into place and the folder flushed: a reader sees the
old file or the whole new one, never a half-written one, and a crash leaves at most a
`NAME.XXXXXXXX.partial` file. Without `overwrite` an existing file is never replaced: the rename
is a hard link that fails when the name exists (or, with `add_counter`, moves on to `NAME_00001.EXT`).
"""
from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from .errors import ZImageGGUFError

# Errors that say "this disk / folder cannot take the file", reported as one line naming the path.
# Other OSErrors raised inside the `with` block (reading a source file, say) are not ours to rename.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}
# Where a hard link cannot be made, the no-overwrite rename falls back to check-then-rename.
_NO_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EMLINK}
_TEMP_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_BINARY", 0))


class FileWriteError(ZImageGGUFError, OSError):
    """A file could not be written (missing folder, full disk, existing file)."""


def counter_name(path: Path, counter: int) -> Path:
    """`name.ext` -> `name_00001.ext`, the way ComfyUI's save nodes number their files."""
    return path.with_name(f"{path.stem}_{counter:05d}{path.suffix}")


def check_target(path, overwrite: bool = False) -> Path:
    """Fail early, in one line, where a write to `path` cannot succeed: no such folder, or the file
    exists and may not be replaced. Returns the path."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileWriteError(f"cannot write {path}: the folder {folder} does not exist")
    if not overwrite and os.path.lexists(path):
        raise _exists(path)
    return path


def _exists(path: Path) -> FileWriteError:
    return FileWriteError(f"{path.name} already exists: choose another name or allow overwriting\n{path}")


def _write_error(path: Path, error: OSError) -> FileWriteError:
    reason = os.strerror(error.errno) if error.errno else str(error)
    hint = " (disk full?)" if error.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return FileWriteError(f"cannot write {path}: {reason}{hint}")


def _fsync_folder(folder: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows: folders cannot be opened for fsync
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems refuse fsync on a folder; the rename itself is done
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _publish(temp: Path, path: Path, overwrite: bool) -> bool:
    """Move the finished temporary file to `path`; False (nothing moved) if `path` exists and may not be replaced."""
    if overwrite:
        os.replace(temp, path)
        return True
    try:
        os.link(temp, path, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in _NO_LINK_ERRNOS:
            raise
        if os.path.lexists(path):
            return False
        if os.name == "nt":
            os.rename(temp, path)  # refuses an existing name on Windows
        else:
            os.replace(temp, path)
        return True
    os.unlink(temp)
    return True


def _open_file(fd: int):
    return os.fdopen(fd, "wb")


class AtomicWrite:
    """`with AtomicWrite(path) as f: f.write(...)`: the file appears at `path` (or, with
    `add_counter`, at the first free `name_NNNNN.ext`; see `.path`) only when the block ends
    without an error. Any failure removes the temporary file and re-raises; a full disk, a refused
    write or an existing file becomes a FileWriteError naming the path."""

    def __init__(self, path, overwrite: bool = False, add_counter: bool = False):
        self.path = Path(path)
        self.overwrite, self.add_counter = overwrite, add_counter
        self.temp: Path | None = None
        self._file = None

    def __enter__(self):
        folder = self.path.parent
        if not folder.is_dir():
            raise FileWriteError(f"cannot write {self.path}: the folder {folder} does not exist")
        if not self.overwrite and not self.add_counter and os.path.lexists(self.path):
            raise _exists(self.path)
        for _ in range(100):
            temp = folder / f"{self.path.name}.{secrets.token_hex(4)}.partial"
            try:
                fd = os.open(temp, _TEMP_FLAGS, 0o644)
            except FileExistsError:  # a leftover or a planted link: never touched, another name
                continue
            except OSError as e:
                raise _write_error(self.path, e) from None
            break
        else:
            raise FileWriteError(f"cannot write {self.path}: no free temporary name in {folder}")
        self.temp = temp
        try:
            self._file = _open_file(fd)
        except BaseException:
            os.close(fd)
            self._discard()
            raise
        return self._file

    def _discard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # closing flushes; on a full disk that raises again, and the file goes anyway
            self._file = None
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass

    def _finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        base = self.path
        for counter in range(100_000):
            self.path = base if counter == 0 else counter_name(base, counter)
            if _publish(self.temp, self.path, self.overwrite):
                break
            if not self.add_counter:
                raise _exists(self.path)
        else:
            raise FileWriteError(f"cannot write {base}: every numbered name is taken")
        _fsync_folder(self.path.parent)

    def __exit__(self, kind, error, traceback):
        if kind is None:
            try:
                self._finish()
                return False
            except BaseException as e:
                self._discard()
                if isinstance(e, OSError) and not isinstance(e, ZImageGGUFError):
                    raise _write_error(self.path, e) from None
                raise
        self._discard()
        if isinstance(error, OSError) and not isinstance(error, ZImageGGUFError) and error.errno in _WRITE_ERRNOS:
            raise _write_error(self.path, error) from None
        return False


def write_bytes(path, data: bytes, overwrite: bool = False, add_counter: bool = False) -> Path:
    """Write `data` atomically; returns the path written (numbered with `add_counter`)."""
    writer = AtomicWrite(path, overwrite, add_counter)
    with writer as f:
        f.write(data)
    return writer.path

"""Atomic file and folder writing: readers never see a half-written result.

Everything snap3d writes (splat files, checkpoints, bundles) goes through these two
context managers. The new content is written beside the target under a temporary
name, flushed to disk, and renamed over the target only when the ``with`` block
finishes without an exception; otherwise the temporary is removed and whatever
was at the target before is left untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from snap3d.errors import Snap3dError

__all__ = ["atomic_dir", "atomic_write"]


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any threads
    # of ours exist, so that new files get the permissions a plain open() would give.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _check_parent(path: Path) -> None:
    if not path.parent.is_dir():
        raise Snap3dError(f"cannot write: folder {path.parent} does not exist", path)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", encoding: str = "utf-8"
) -> Iterator[IO]:
    """Open a file for writing that appears at ``path`` only if the block succeeds.

    Args:
        path: the file to create or replace.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: text encoding, used only with ``mode="w"``.

    Yields:
        The open temporary file, in the same folder as ``path``.

    On success the data is fsynced and the temporary renamed over ``path`` with
    ``os.replace`` (keeping the permissions of a file it replaces). If the block
    raises, the temporary is deleted, ``path`` is left as it was, and the exception
    propagates.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    _check_parent(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, encoding=None if mode == "wb" else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            permissions = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            permissions = 0o666 & ~_UMASK
        os.chmod(tmp, permissions)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            file = Path(folder, name)
            if file.is_symlink():
                continue
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(folder))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder that appears at ``path`` only if the block succeeds.

    Args:
        path: the folder to create or replace.

    Yields:
        An empty temporary folder beside ``path``; fill it inside the block.

    On success every file in it is fsynced, an existing folder at ``path`` is moved
    aside, the temporary folder is renamed to ``path``, and the old folder is deleted.
    If the block raises, the temporary folder is deleted and ``path`` is untouched.
    Two renames are needed because no platform renames a folder over a non-empty one;
    if the process dies between them, the old folder survives as ``.NAME.*.old``.
    """
    path = Path(path)
    _check_parent(path)
    if path.exists() and not path.is_dir():
        raise Snap3dError("cannot write a folder here: a file of that name exists", path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        os.chmod(tmp, 0o777 & ~_UMASK)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old / path.name, path)
                old.rmdir()
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""Atomic file writes, used everywhere attnlens writes a file, and bounded reads of regular files.

A file is written to a temporary name in the same folder, flushed and fsynced, given ordinary permissions
(``0o666`` minus the umask, as ``open`` would), then moved over the target with ``os.replace``: readers see the
old file or the new one, never half of one. A failure removes the temporary file.

Only regular files are ever replaced: a target that is a device, a FIFO, a socket or a folder is refused
(:class:`NotARegularFileError`), and a target that is a symbolic link is written through to the file it points to
(the link stays a link). Readers open files with :func:`open_regular`, which refuses anything but a regular file
before reading a byte (``/dev/zero`` would never end, a FIFO would block).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


class NotARegularFileError(OSError):
    """A path that attnlens will not read from or replace: a device, FIFO, socket or folder."""


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words (``"regular file"``, ``"character device"``, ...)."""
    kinds = [
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symbolic link"),
    ]
    return next((name for test, name in kinds if test(mode)), "special file")


def json_kind(x: Any) -> str:
    """What a parsed JSON value is, in words, for messages: ``"an object"``, ``"a list"``, ``"a number"``..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(x), "a number")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for reading in binary mode if it is a regular file (a symbolic link to one is followed);
    anything else raises :class:`NotARegularFileError` without reading (opening does not block on a FIFO).
    A missing file raises ``FileNotFoundError``."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(f"{os.fspath(path)} is a {file_kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def looks_like_pickle(head: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes starting with ``head`` (its first 9 bytes or more) is a pickle (protocol 2+
    starts with 0x80) or a zip container (``torch.save``, ``PK``) rather than a safetensors file. A safetensors file
    whose 8-byte header length happens to start with those bytes is not taken for one: its length fits the file and
    its JSON header starts with ``{``."""
    if head[:1] != b"\x80" and head[:2] != b"PK":
        return False
    safetensors = len(head) >= 9 and int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"
    return not safetensors


def write_target(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` replaces: ``path`` itself, or for a symbolic link the file it points to (a write
    goes through the link and leaves it in place). Refuses a target that exists and is not a regular file."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        if target != path and not target.parent.is_dir():
            raise FileNotFoundError(
                f"{path} is a symbolic link to {target}, whose folder does not exist; attnlens writes through a "
                "link to its target and does not replace the link"
            ) from None
        return target
    if not stat.S_ISREG(mode):
        via = f" (the target of the symbolic link {path})" if target != path else ""
        raise NotARegularFileError(
            f"refusing to write {target}{via}: it is a {file_kind(mode)}, not a regular file; attnlens replaces only "
            "regular files (give a path to a new or regular file)"
        )
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so that a rename in it is durable (a no-op where the platform does not support it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_path)`` to produce the file, then move it to ``path`` atomically. Returns ``path``.

    ``path`` must be new or a regular file; a symbolic link is written through to its target (see
    :func:`write_target`)."""
    given = path
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    path = write_target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return str(Path(given))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> str:
    """Write ``obj`` as JSON to ``path`` atomically (``dump_kwargs`` go to ``json.dumps``)."""
    return atomic_write_text(path, json.dumps(obj, **dump_kwargs))


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> str:
    """Write torch tensors as a safetensors file atomically (tensors are made contiguous and moved to the CPU)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)

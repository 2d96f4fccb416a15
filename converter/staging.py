"""Staging: the big files of compressed layers are written once, where the output goes.

Without it, a compressed layer is inflated to a temporary file and the directory writer
copies each file's bytes out of it: every byte is written twice, and on tmpfs the writing
is mostly page allocation, not copying (measured on the zstd bench image: 0.22 CPU-s to
write the 610 MB temporary file, 0.29 CPU-s to ``sendfile`` 420 MB out of it, of 2.3 in
all).

With staging (directory output, helper processes, a compressed layer in a file), the
helper that inflates a layer also parses it as it goes (:func:`converter.helper._run_stage`),
sends the entries to the merge, and writes each regular file of at least
:data:`STAGE_MIN` bytes into a private staging directory beside the destination, named by
the offset of its data in the layer's tar.  The directory writer then *renames* the ones
that survive the merge into place; what later layers deleted is removed with the staging
directory.  Smaller contents still go to the temporary file, at their tar offsets (a
rename and the extra open cost about as much as copying 40 KB).

A staged node is marked by a negative ``offset`` (``-1 - data offset``) and its ``fd`` is
the layer's staging directory; :func:`open_content` is how readers get at its bytes.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Union

from .inflate import InflatedStream, close_quietly, pwrite_all
from .tar.reader import TarEntry

if TYPE_CHECKING:
    from .merge import Node

#: regular files at least this big are staged (below it, copying is cheaper than renaming)
STAGE_MIN = 64 << 10

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def stages(entry: TarEntry) -> bool:
    """Whether a staging helper writes this entry's data to a file of its own (the merge
    uses the same rule to know where the data went)."""
    return entry.type == b"0" and entry.sparse is None and entry.size >= STAGE_MIN


def staged_name(data_offset: int) -> bytes:
    return b"%x" % data_offset


def is_staged(offset: int) -> bool:
    return offset < 0


def node_name(offset: int) -> bytes:
    """The staged file's name for a node's (negative) ``offset``."""
    return staged_name(-1 - offset)


@contextmanager
def open_content(fd: int, offset: int) -> Iterator[tuple[int, int]]:
    """``(fd, offset)`` to read a regular file's bytes from, for a node's ``fd`` and
    ``offset`` (a staged file is opened, and closed again afterwards)."""
    if offset >= 0:
        yield fd, offset
        return
    staged = os.open(node_name(offset), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    try:
        yield staged, 0
    finally:
        os.close(staged)


_PIECE = 1 << 20
_ZEROS = memoryview(bytes(_PIECE))


def expands_too_far(node: "Node", max_ratio: int = 1000) -> bool:
    """Whether reading a sparse file whole (holes as zeros: a tar's data, a tree hash)
    would pass 1 GiB and ``max_ratio`` times its stored bytes: a 512-byte entry may
    declare 400 GiB (0: no limit)."""
    return bool(max_ratio) and node.sparse is not None and node.size > 1 << 30 and \
        node.size > max_ratio * max(node.stored_size, 512)


def content_pieces(node: "Node", offset: int = 0, end: Optional[int] = None) -> Iterator[Union[bytes, memoryview]]:
    """A regular file's bytes from ``offset`` to ``end`` (default: its size), in pieces of
    at most 1 MiB, holes of a sparse file as zeros, read from where the plan located
    them: the one reading loop of the tree's readers (tree hashes, ``--path`` lookups)."""
    end = node.size if end is None else min(end, node.size)
    if offset >= end:
        return
    segments = ((0, node.size),) if node.sparse is None else node.sparse
    pos = offset  # the next byte of the file to give
    with open_content(node.fd, node.offset) as (fd, src):
        for file_off, length in segments:
            if pos >= end:
                break
            if file_off > pos:  # a hole before this segment
                yield from _zeros(min(file_off, end) - pos)
                pos = min(file_off, end)
            lo, hi = max(file_off, pos), min(file_off + length, end)
            at, left = src + (lo - file_off), hi - lo
            while left > 0:
                chunk = os.pread(fd, min(left, _PIECE), at)
                if not chunk:
                    raise OSError("content ended early")
                yield chunk
                at += len(chunk)
                left -= len(chunk)
            pos = max(pos, hi)
            src += length
    if pos < end:
        yield from _zeros(end - pos)


def _zeros(n: int) -> Iterator[memoryview]:
    while n > 0:
        yield _ZEROS[: min(n, _PIECE)]
        n -= _PIECE


class StageSource:
    """The tar reader's stream in a staging helper (wrapped in a
    :class:`~converter.tar.reader.StreamSource`, whose skipping reads through): reads the
    inflated stream into the reader's own buffer and writes what it read to the temporary
    file at its tar offset, except the range :meth:`exclude` names (a staged file's data,
    written elsewhere).  A staged file's first bytes may have been read ahead into the reader's
    buffer (and so written) before its header was parsed: a little waste, never a loss,
    since only bytes outside excluded ranges are ever read back from the file."""

    def __init__(self, stream: "InflatedStream", fd: int, on_error: Callable[[OSError], BaseException]) -> None:
        self._stream = stream
        self._fd = fd
        self._on_error = on_error
        self._pos = 0  # tar offset of the next byte read
        self._skip = (0, 0)  # the excluded range [start, end)

    def exclude(self, start: int, end: int) -> None:
        self._skip = (start, end)

    def readinto(self, b: memoryview) -> int:
        n = self._stream.readinto(b)
        if n:
            pos = self._pos
            end = pos + n
            start, stop = self._skip
            try:
                if end <= start or pos >= stop:
                    pwrite_all(self._fd, b[:n], pos)
                else:
                    if pos < start:
                        pwrite_all(self._fd, b[:start - pos], pos)
                    if end > stop:
                        pwrite_all(self._fd, b[stop - pos:n], stop)
            except OSError as exc:
                raise self._on_error(exc) from None
            self._pos = end
        return n


class Staging:
    """The staging directory of one conversion: ``DEST.staging-PID-RANDOM`` beside the
    destination (same file system, so renames work; a crash leaves it to the next run's
    stale-partial cleanup), with a subdirectory per layer.  Created on first use."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.path: Optional[str] = None
        self._root_fd = -1
        self._fds: list[int] = []
        self._broken = False

    def layer_dir(self) -> int:
        """A new directory for one layer's staged files: its fd, or -1 when staging is not
        possible here (the layer is then inflated to a temporary file as usual)."""
        if self._broken:
            return -1
        try:
            if self.path is None:
                from .sinks.atomic import STAGING, partial_name

                path = partial_name(self.dest, STAGING)
                # named before it exists: an interrupt right after the mkdir (signal
                # handlers run between bytecodes) still finds it in remove()
                self.path = path
                try:
                    os.mkdir(path, 0o700)
                except OSError:
                    self.path = None
                    raise
                self._root_fd = os.open(path, _DIR_FLAGS)
            name = str(len(self._fds))
            os.mkdir(name, 0o700, dir_fd=self._root_fd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=self._root_fd)
        except OSError:
            self._broken = True
            return -1
        self._fds.append(fd)
        return fd

    def remove(self) -> list[int]:
        """Remove what the writer did not move into place.  Big leftovers (files a later
        layer deleted) are unlinked while still open: their fds are returned, for the
        caller to free with the inflated files (see
        :func:`~converter.inflate.release_files`)."""
        held: list[int] = []
        try:
            for fd in self._fds:
                for name in os.listdir(fd):
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode) and st.st_size >= STAGE_MIN:
                            held.append(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd))
                        os.unlink(name, dir_fd=fd)
                    except OSError:
                        pass
        finally:
            for fd in self._fds:
                close_quietly(fd)
            self._fds = []
            close_quietly(self._root_fd)
            self._root_fd = -1
            if self.path is not None:
                from .sinks.atomic import remove_path

                remove_path(self.path)
                self.path = None
        return held

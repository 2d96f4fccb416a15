"""Random access to the members of a tar-packed source, read in place.

A docker save or OCI archive is indexed once (headers only, seeking over data) and members
are then read with ``pread`` at their offsets: nothing is unpacked to a temporary directory.
A compressed outer archive or a pipe is first spooled, decompressed, to one anonymous
temporary file (``O_TMPFILE``: it vanishes even if the process is killed).
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any, BinaryIO, NamedTuple, Optional

from .. import compression
from ..errors import InputError, IntegrityError, LimitError, NotFoundError, OutputError
from ..image import Blob, FileRegion, close_fd
from ..paths import join, show, split_name
from ..tar.reader import FileSource, TarReader

#: manifests, indexes and configs larger than this are refused before they are read:
#: real ones are kilobytes (the distribution spec asks registries for 4 MiB manifests at
#: least, and containerd reads no more), while json.loads of a crafted document of tiny
#: arrays takes ~26 times its size in memory (64 MiB took 1.6 GB)
MAX_JSON = 4 << 20
MAX_LINK_HOPS = 40


class Member(NamedTuple):
    name: bytes  # normalised
    type: bytes
    offset: int
    size: int
    linkname: bytes


class RegionReader(io.RawIOBase):
    """A read-only stream over one region of an fd, with ``pread`` (no shared offset)."""

    def __init__(self, region: FileRegion) -> None:
        self._r = region
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        left = self._r.size - self._pos
        if left <= 0:
            return 0
        view = memoryview(b)
        n = min(len(view), left)
        got = os.preadv(self._r.fd, [view[:n]], self._r.offset + self._pos)
        if got == 0:
            raise IntegrityError("source file is shorter than its index says (truncated?)")
        self._pos += got
        return got


def open_region(region: FileRegion) -> BinaryIO:
    return io.BufferedReader(RegionReader(region), buffer_size=1 << 20)


class TarArchive:
    """An indexed tar archive held open by fd for the lifetime of an Image."""

    def __init__(self, fd: int, size: int, *, label: str) -> None:
        self.fd = fd
        self.label = label
        self.members: dict[bytes, Member] = {}
        reader = TarReader(FileSource(fd, 0, size), name=label)
        for entry in reader:
            try:
                parts = split_name(entry.name, what=label)
            except InputError:
                continue  # a member we will never look up; refusing the archive helps nobody
            name = join(parts)
            self.members[name] = Member(name, entry.type, entry.data_offset, entry.size, entry.linkname)
        if not self.members:
            raise InputError(f"{label}: empty archive (no members)")

    def names(self) -> list[bytes]:
        return list(self.members)

    def resolve(self, name: str | bytes, *, what: str) -> Member:
        """Follow symlink and hard-link members inside the archive (EDGE-CASES 2), with a hop
        limit for cycles.  Names outside the archive (``..``, absolute) are refused."""
        raw = name.encode() if isinstance(name, str) else name
        if raw.startswith(b"/"):
            raise InputError(f"{self.label}: {what} {show(raw)} points outside the archive (absolute path)")
        try:
            current = join(split_name(raw, what=""))
        except InputError:
            raise InputError(f"{self.label}: {what} {show(raw)} points outside the archive") from None
        for _ in range(MAX_LINK_HOPS):
            member = self.members.get(current)
            if member is None:
                raise NotFoundError(f"{self.label}: {what} {show(raw)} is not in the archive")
            if member.type == b"2":  # symlink member: relative to its directory
                base = current.rsplit(b"/", 1)[0] if b"/" in current else b""
                target = member.linkname
                if target.startswith(b"/"):
                    raise InputError(f"{self.label}: member {show(current)} links outside the archive")
                combined = _lexical(base + b"/" + target if base else target)
                if combined is None:
                    raise InputError(f"{self.label}: member {show(current)} links outside the archive")
                current = combined
                continue
            if member.type == b"1":  # hard link member: names another member
                target = _lexical(member.linkname)
                if target is None:
                    raise InputError(f"{self.label}: member {show(current)} links outside the archive")
                current = target
                continue
            if member.type not in (b"0", b"\0", b"7"):
                raise InputError(f"{self.label}: {what} {show(raw)} is not a regular file")
            return member
        raise InputError(f"{self.label}: {what} {show(raw)}: too many links (cycle?)")

    def region(self, name: str | bytes, *, what: str) -> FileRegion:
        m = self.resolve(name, what=what)
        return FileRegion(self.fd, m.offset, m.size)

    def blob(self, name: str | bytes, *, what: str) -> Blob:
        region = self.region(name, what=what)
        where = f"{self.label}:{name if isinstance(name, str) else name.decode('utf-8', 'replace')}"
        return Blob(open=lambda: open_region(region), region=region, where=where)

    def has(self, name: str | bytes) -> bool:
        raw = name.encode() if isinstance(name, str) else name
        try:
            return join(split_name(raw, what="")) in self.members
        except InputError:
            return False

    def read_bytes(self, name: str | bytes, *, what: str) -> bytes:
        """A small member (JSON) whole; large ones are refused before any allocation."""
        region = self.region(name, what=what)
        if region.size > MAX_JSON:
            raise json_too_large(f"{self.label}: {what}", region.size)
        data = os.pread(self.fd, region.size, region.offset)
        if len(data) != region.size:
            raise IntegrityError(f"{self.label}: {what}: truncated")
        return data

    def read_json(self, name: str | bytes, *, what: str) -> Any:
        return parse_json(self.read_bytes(name, what=what), what=f"{self.label}: {what}")


def _lexical(path: bytes) -> Optional[bytes]:
    out: list[bytes] = []
    for part in path.split(b"/"):
        if not part or part == b".":
            continue
        if part == b"..":
            if not out:
                return None
            out.pop()
            continue
        out.append(part)
    return b"/".join(out)


def json_too_large(what: str, size: int) -> InputError:
    return InputError(f"{what} is {size} bytes, larger than any sane JSON document (limit {MAX_JSON >> 20} MiB)")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # (Python would accept NaN and Infinity; JSON does not)


def parse_json(data: bytes, *, what: str) -> Any:
    try:
        return json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise InputError(f"{what}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers past the digit limit
        raise InputError(f"{what}: not valid JSON ({exc})") from None


def open_archive_file(path: str, *, label: str) -> tuple[TarArchive, list]:
    """Open ``path`` (or ``-`` for stdin) as an indexed tar; returns it and its closers.

    A plain seekable file is used in place.  A compressed file or a pipe is spooled
    (decompressed) into an anonymous temporary file first: this is the one copy the
    design allows, since a tar inside gzip cannot be read by offset."""
    closers = []
    if path == "-":
        src_fd = os.dup(sys.stdin.buffer.fileno())
    else:
        try:
            src_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{path}: is a directory, not an archive") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(src_fd)
        seekable = _is_seekable(src_fd)
        if seekable:
            head = os.pread(src_fd, compression.SNIFF_BYTES, 0)
            kind = compression.detect(head, what=label)
            if kind == compression.NONE:
                if st.st_size == 0:
                    raise InputError(f"{label}: empty file")
                closers.append(close_fd(src_fd))
                return TarArchive(src_fd, st.st_size, label=label), closers
        spooled = _spool(src_fd, label=label, seekable=seekable)
        os.close(src_fd)
        closers.append(close_fd(spooled))
        size = os.fstat(spooled).st_size
        if size == 0:
            raise InputError(f"{label}: empty input")
        return TarArchive(spooled, size, label=label), closers
    except BaseException:
        for c in closers:
            c()
        try:
            os.close(src_fd)
        except OSError:
            pass
        raise


def _is_seekable(fd: int) -> bool:
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
        import stat

        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


#: a compressed outer archive (``docker save | zstd``) inflating past this ratio, once past
#: the floor, is refused while it is copied: 1.3 MB of zstd had become 40 GiB in $TMPDIR
SPOOL_MAX_RATIO = 1000
SPOOL_RATIO_FLOOR = 1 << 30


def _spool(src_fd: int, *, label: str, seekable: bool) -> int:
    """Decompress (if needed) ``src_fd`` into an anonymous temporary file; return its fd."""
    import tempfile  # (only for standard input and compressed archives: see inflate.anonymous_file)

    tmp = tempfile.TemporaryFile(prefix="rootfs-spool-")
    out_fd = os.dup(tmp.fileno())
    tmp.close()
    try:
        src = os.fdopen(os.dup(src_fd), "rb", buffering=0)
        try:
            if seekable:
                src.seek(0)
            head = b""
            while len(head) < compression.SNIFF_BYTES:
                more = src.read(compression.SNIFF_BYTES - len(head))
                if not more:
                    break
                head += more
            kind = compression.detect(head, what=label)
            pending = [head]

            read_in = [0]

            def raw_read(n: int) -> bytes:
                chunk = pending.pop() if pending else src.read(n)
                read_in[0] += len(chunk)
                return chunk

            reader = compression.DecompressingReader(kind, raw_read, what=label)
            try:
                buf = memoryview(bytearray(compression.PIECE))
                spooled = 0
                while True:
                    got = reader.readinto(buf)
                    if not got:
                        break
                    spooled += got
                    if spooled > SPOOL_RATIO_FLOOR and spooled > SPOOL_MAX_RATIO * max(read_in[0], 1):
                        raise LimitError(f"{label}: the compressed archive inflates past {SPOOL_MAX_RATIO}x its size "
                                         f"(likely a decompression bomb; decompress it yourself if it is not)")
                    view = buf[:got]
                    while view:
                        try:
                            written = os.write(out_fd, view)
                        except OSError as exc:  # (a full $TMPDIR is the machine's state, not a bug)
                            raise OutputError(f"{label}: cannot copy the image to a temporary file "
                                              f"(TMPDIR={tempfile.gettempdir()}): {exc.strerror}") from None
                        view = view[written:]
            finally:
                reader.close()
        finally:
            src.close()
        return out_fd
    except BaseException:
        os.close(out_fd)
        raise

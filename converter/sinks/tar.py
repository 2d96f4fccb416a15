"""Flattened tar sink: the merged view as one PAX tar (DESIGN §4, EDGE-CASES 37, 77).

Entries are sorted by raw path bytes, which puts parents before children and makes the
first member of every hard-link group its smallest path: that member carries the data and
the others are link entries naming it (deterministic link heads).  Names are normalised
and relative, owners numeric, no uname/gname, no ``.wh.*`` entry can appear (the model has
none).  Data is copied with ``sendfile`` from the source blob or the spool when the output
is a plain file; compressed output (``.gz``, ``.zst``, ``.xz``) streams through the codec
with fixed settings so the bytes are reproducible.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import BinaryIO, Optional

from ..errors import LimitError, OutputError
from ..ids import IdMapper
from ..merge import BLK, CHR, DIR, FIFO, LNK, REG, Node, Plan
from ..tar.writer import END_OF_ARCHIVE, build_header, padding
from .atomic import check_destination, commit, ensure_parent, partial_name, remove_path, remove_stale_partials

_TYPEFLAG = {REG: b"0", DIR: b"5", LNK: b"2", CHR: b"3", BLK: b"4", FIFO: b"6"}


@dataclass
class TarOptions:
    force: bool = False
    ids: IdMapper = field(default_factory=IdMapper)
    #: SOURCE_DATE_EPOCH: mtimes later than this are clamped to it
    clamp_mtime: Optional[int] = None
    #: "none", "gzip", "zstd", "xz"; None: from the file name
    compression: Optional[str] = None
    #: compression level for .gz/.zst/.xz output (default per codec)
    level: Optional[int] = None
    #: --max-size: refuse a tar whose contents are larger
    max_size: Optional[int] = None


@dataclass
class TarResult:
    path: str
    entries: int = 0
    bytes: int = 0
    compression: str = "none"


def compression_for(name: str) -> str:
    lower = name.lower()
    if lower.endswith((".gz", ".tgz")):
        return "gzip"
    if lower.endswith((".zst", ".zstd", ".tzst")):
        return "zstd"
    if lower.endswith((".xz", ".txz")):
        return "xz"
    return "none"


class _Out:
    """Where tar bytes go: an fd directly (sendfile-capable) or a compressor."""

    def __init__(self, fd: int, kind: str, level: Optional[int]) -> None:
        self.fd = fd
        self.kind = kind
        self.count = 0
        self._z: Optional[BinaryIO] = None
        self._raw = os.fdopen(os.dup(fd), "wb", buffering=1 << 20, closefd=True)
        if kind == "gzip":
            import gzip

            self._z = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=level or 6)
        elif kind == "zstd":
            import zstandard

            cctx = zstandard.ZstdCompressor(level=level or 3, threads=0, write_checksum=True)
            self._z = cctx.stream_writer(self._raw, closefd=False)  # type: ignore[assignment]
        elif kind == "xz":
            import xz

            self._z = xz.open(self._raw, mode="wb", preset=level if level is not None else 6)  # type: ignore[assignment]
        elif kind != "none":
            raise OutputError(f"unsupported output compression {kind!r}")
        self._sink = self._z if self._z is not None else self._raw
        self.direct = self._z is None

    def write(self, data: bytes | memoryview) -> None:
        self._sink.write(data)
        self.count += len(data)

    def copy_from(self, src_fd: int, offset: int, size: int) -> None:
        if self.direct and size > _SMALL:
            # big contents go kernel to kernel; small ones ride in the write buffer with
            # their headers (one pread instead of flush + sendfile per file)
            self._raw.flush()
            _copy_fd(self.fd, src_fd, offset, size)
            self.count += size
            return
        remaining = size
        while remaining:
            chunk = os.pread(src_fd, min(remaining, 1 << 20), offset)
            if not chunk:
                raise OutputError("source ended early while writing the tar (truncated layer?)")
            self.write(chunk)
            offset += len(chunk)
            remaining -= len(chunk)

    def zeros(self, n: int) -> None:
        block = bytes(min(n, 1 << 20))
        while n:
            part = block[: min(n, len(block))]
            self.write(part)
            n -= len(part)

    def close(self) -> None:
        if self._z is not None:
            self._z.close()
        self._raw.flush()
        self._raw.close()


_SMALL = 128 << 10


def _copy_fd(out_fd: int, in_fd: int, offset: int, count: int) -> None:
    use_sendfile = True
    while count > 0:
        if use_sendfile:
            try:
                n = os.sendfile(out_fd, in_fd, offset, min(count, 1 << 30))
            except OSError:
                use_sendfile = False  # e.g. stdout is a pipe on an old kernel: fall back
                continue
        else:
            data = os.pread(in_fd, min(count, 1 << 20), offset)
            n = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(out_fd, view):]
        if n == 0:
            raise OutputError("source ended early while writing the tar (truncated layer?)")
        offset += n
        count -= n


def emit(plan: Plan, out: _Out, options: TarOptions) -> int:
    """Write every entry (root first); return the entry count.  No end-of-archive."""
    ids = options.ids
    clamp = options.clamp_mtime
    heads: dict[int, bytes] = {}
    count = 0

    def mtime_of(node: Node) -> tuple[int, Optional[int]]:
        ns = node.mtime_ns
        if clamp is not None and ns > clamp * 1_000_000_000:
            return clamp, None
        if ns % 1_000_000_000:
            return ns // 1_000_000_000, ns
        return ns // 1_000_000_000, None

    root = plan.root
    uid, gid = ids.map(root.uid, root.gid, where="output root")
    secs, ns = mtime_of(root)
    out.write(build_header(name=b"./", type=b"5", mode=root.mode, uid=uid, gid=gid, mtime=secs, mtime_ns=ns,
                           xattrs=root.xattrs or None))
    count += 1
    identity = ids.identity
    for path, node in plan.sorted_entries():
        if identity:
            uid, gid = node.uid, node.gid
        else:
            uid, gid = ids.map(node.uid, node.gid, where=f"output {path.decode('utf-8', 'backslashreplace')}")
        secs, ns = mtime_of(node)
        kind = node.kind
        xattrs = node.xattrs or None
        if kind != DIR and node.nlink > 1:
            head = heads.get(id(node))
            if head is not None:
                out.write(build_header(name=path, type=b"1", linkname=head, mode=node.mode, uid=uid, gid=gid,
                                       mtime=secs, mtime_ns=ns))
                count += 1
                continue
            heads[id(node)] = path
        if kind == REG:
            out.write(build_header(name=path, type=b"0", size=node.size, mode=node.mode, uid=uid, gid=gid,
                                   mtime=secs, mtime_ns=ns, xattrs=xattrs))
            _write_content(out, node)
            pad = padding(node.size)
            if pad:
                out.write(pad)
        elif kind == DIR:
            out.write(build_header(name=path + b"/", type=b"5", mode=node.mode, uid=uid, gid=gid, mtime=secs,
                                   mtime_ns=ns, xattrs=xattrs))
        elif kind == LNK:
            out.write(build_header(name=path, type=b"2", linkname=node.linkname, mode=node.mode or 0o777, uid=uid,
                                   gid=gid, mtime=secs, mtime_ns=ns, xattrs=xattrs))
        else:
            out.write(build_header(name=path, type=_TYPEFLAG[kind], mode=node.mode, uid=uid, gid=gid, mtime=secs,
                                   mtime_ns=ns, devmajor=node.major, devminor=node.minor, xattrs=xattrs))
        count += 1
    return count


def _write_content(out: _Out, node: Node) -> None:
    if not node.size:
        return
    if node.sparse is None:
        out.copy_from(node.fd, node.offset, node.size)
        return
    pos = 0
    src = node.offset
    for file_off, length in node.sparse:
        if file_off > pos:
            out.zeros(file_off - pos)
            pos = file_off
        if length:
            out.copy_from(node.fd, src, length)
            src += length
            pos += length
    if node.size > pos:
        out.zeros(node.size - pos)


def write_tar(plan: Plan, dest: str, options: Optional[TarOptions] = None) -> TarResult:
    """Write the flattened tar to ``dest`` (atomically) or ``-`` (stdout)."""
    options = options or TarOptions()
    kind = options.compression or (compression_for(dest) if dest != "-" else "none")
    if options.max_size is not None:
        seen: set[int] = set()
        need = 0
        for _, node in plan.walk():
            if node.kind == REG and id(node) not in seen:
                seen.add(id(node))
                need += node.size
        if need > options.max_size:
            raise LimitError(f"{dest}: the image's contents are {need} bytes, more than --max-size {options.max_size}")
    if dest == "-":
        fd = sys.stdout.buffer.fileno()
        sys.stdout.flush()
        out = _Out(fd, kind, options.level)
        count = emit(plan, out, options)
        plan.verify()  # on a mismatch the consumer sees a tar without its end blocks
        out.write(END_OF_ARCHIVE)
        out.close()
        return TarResult("-", count, out.count, kind)
    dest = os.path.abspath(dest)
    ensure_parent(dest)
    check_destination(dest, force=options.force, kind="file")
    remove_stale_partials(dest)
    partial = partial_name(dest)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise OutputError(f"{dest}: cannot create {partial}: {exc.strerror}") from None
    try:
        try:
            out = _Out(fd, kind, options.level)
            count = emit(plan, out, options)
            out.write(END_OF_ARCHIVE)
            out.close()
        finally:
            os.close(fd)
        plan.verify()
        commit(partial, dest)
    except OSError as exc:
        remove_path(partial)
        if exc.errno == 28:
            raise OutputError(f"{dest}: no space left on the device") from None
        raise OutputError(f"{dest}: write failed: {exc.strerror}") from None
    except BaseException:
        remove_path(partial)
        raise
    return TarResult(dest, count, out.count, kind)

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
import signal
import struct
import sys
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Optional, Union

from .. import acls
from ..errors import LimitError, OutputError, UsageError
from ..forking import CAN_FORK, collect_report, fork_reporting
from ..ids import IdMapper
from ..merge import BLK, CHR, DIR, FIFO, LNK, REG, Node, Plan
from ..paths import show
from ..staging import expands_too_far
from ..tar.writer import END_OF_ARCHIVE, build_header, padding, plain_header
from .atomic import claim, commit, discard, stream_destination

#: the plan's entries, sorted (see Plan.sorted_entries)
Entries = list[tuple[bytes, Node]]

_NS = 1_000_000_000
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
    #: --max-ratio: a sparse file is written out whole in a tar (holes as zeros), so one
    #: that expands past 1 GiB and this many times its stored bytes is refused (0: off)
    max_ratio: int = 1000
    #: called with ("write-start", {"bytes", "entries"}), ("write-progress", {"bytes"})
    #: and ("write-done", {"bytes"}): the bytes of file contents written so far
    progress: Optional[Callable[[str, dict], None]] = None


@dataclass
class TarResult:
    path: str
    entries: int = 0
    bytes: int = 0
    compression: str = "none"


#: suffixes of compressors this sink does not write: refused rather than ignored (a
#: plain tar named .bz2 would fail later, far from here)
_UNSUPPORTED = (".bz2", ".tbz", ".tbz2", ".lz4", ".lzma", ".lz", ".z", ".br")


def compression_for(name: str) -> str:
    lower = name.lower()
    if lower.endswith((".gz", ".tgz")):
        return "gzip"
    if lower.endswith((".zst", ".zstd", ".tzst")):
        return "zstd"
    if lower.endswith((".xz", ".txz")):
        return "xz"
    if lower.endswith(_UNSUPPORTED):
        suffix = "." + lower.rsplit(".", 1)[-1]
        raise UsageError(f"--flatten {name}: {suffix} output is not supported; use .gz, .zst, .xz or a plain .tar")
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

    def skip(self, n: int) -> None:
        """Leave ``n`` bytes for another writer (see :class:`_PipedOut`)."""
        self._raw.seek(n, os.SEEK_CUR)
        self.count += n

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

# records from the header builder to the assembler: bytes to write, a copy, zeros
_REC_BYTES = struct.Struct("<cI")  # b"B", length; the bytes follow
_REC_COPY = struct.Struct("<ciQQ")  # b"C", source fd, offset, size
_REC_ZEROS = struct.Struct("<cQ")  # b"Z", count; b"S", count: bytes the builder writes itself
_FLUSH_AT = 1 << 20
_HEADER_COST = 10 << 10
_COPY_COST = 6 << 10


class _PipedOut:
    """The same calls as :class:`_Out`, carried out by a forked assembler process.

    Why: building headers is Python work (about 4 us an entry) and copying contents is
    kernel work; one process did both in turn.  Here the header builder only appends
    small records to a pipe (bytes to write, "copy N bytes of fd F from offset O",
    zeros), and the assembler, which owns the real :class:`_Out` and inherited every
    source fd, writes the tar in order while the next headers are built: the two run on
    two cores, and a compressed output is compressed there too.

    When the output is a plain file, ``placed`` is a second descriptor of it: the builder
    then copies the big contents itself, at their offsets, and the assembler skips over
    them, so the kernel's copying is shared between the two processes as well."""

    def __init__(self, fd: int, kind: str, level: Optional[int], what: str, placed: Optional[int] = None) -> None:
        self.count = 0
        self._buf = bytearray()
        self._placed = placed
        self._mine = self._theirs = 0  # work done here and by the assembler (see copy_from)
        r, w = os.pipe()
        try:
            import fcntl

            fcntl.fcntl(w, 1031, _FLUSH_AT)  # F_SETPIPE_SZ: one flush fits without waiting
        except OSError:
            pass

        def assemble() -> dict:  # pragma: no cover - runs in the assembler
            os.close(w)
            try:
                _assemble(r, _Out(fd, kind, level))
            except BrokenPipeError:
                raise  # the reader of standard output went away: the CLI stops quietly
            except OSError as exc:
                raise OutputError(f"{what}: no space left on the device" if exc.errno == 28
                                  else f"{what}: write failed: {exc.strerror}") from None
            return {}

        try:
            pid, self._rep = fork_reporting(assemble, ignore_interrupts=True)
        except OSError:
            os.close(w)
            raise
        finally:
            os.close(r)
        self._pid: Optional[int] = pid
        self._w = w

    def write(self, data: Union[bytes, memoryview]) -> None:
        n = len(data)
        buf = self._buf
        buf += _REC_BYTES.pack(b"B", n)
        buf += data
        self.count += n
        if len(buf) >= _FLUSH_AT:
            self._flush()

    def copy_from(self, src_fd: int, offset: int, size: int) -> None:
        placed = self._placed
        # a big content is copied here when that keeps the two processes' work even
        # (costs in bytes copied: an entry's header is about 10 KB of work to build, a
        # small copy about 6 KB to do, measured on tmpfs)
        self._mine += _HEADER_COST
        if placed is not None and size > _SMALL and self._mine + size // 2 <= self._theirs:
            self._buf += _REC_ZEROS.pack(b"S", size)
            os.lseek(placed, self.count, os.SEEK_SET)
            _copy_fd(placed, src_fd, offset, size)
            self._mine += size
        else:
            self._buf += _REC_COPY.pack(b"C", src_fd, offset, size)
            self._theirs += size + _COPY_COST
        self.count += size
        if len(self._buf) >= _FLUSH_AT:
            self._flush()

    def zeros(self, n: int) -> None:
        self._buf += _REC_ZEROS.pack(b"Z", n)
        self.count += n

    def _flush(self) -> None:
        view = memoryview(self._buf)
        try:
            while view:
                view = view[os.write(self._w, view):]
        except BrokenPipeError:
            self._fail()  # the assembler stopped: its report says why
        finally:
            view.release()
        self._buf = bytearray()

    def close(self) -> None:
        """Wait until the assembler has written everything; raise its error."""
        self._flush()
        os.close(self._w)
        self._w = -1
        self._fail(expect_success=True)

    def _fail(self, expect_success: bool = False) -> None:
        assert self._pid is not None
        pid, self._pid = self._pid, None
        rep, self._rep = self._rep, -1
        collect_report(pid, rep, failed="the tar writer process failed")
        if not expect_success:
            raise OutputError("the tar writer process stopped early")

    def abort(self) -> None:
        """Stop the assembler (the run failed or was interrupted)."""
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
            except OSError:
                pass
            self._pid = None
        for fd in (self._w, self._rep):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._w = self._rep = -1


def _assemble(r: int, out: _Out) -> None:  # pragma: no cover - runs in the assembler
    """Apply the records read from ``r`` to ``out`` until the builder hangs up."""
    buf = b""
    pos = 0
    bytes_head, copy_size, zeros_size = _REC_BYTES.size, _REC_COPY.size, _REC_ZEROS.size
    unpack_bytes, unpack_copy, unpack_zeros = _REC_BYTES.unpack_from, _REC_COPY.unpack_from, _REC_ZEROS.unpack_from
    while True:
        chunk = os.read(r, 1 << 20)
        if not chunk:
            if pos != len(buf):
                raise OutputError("the tar stream ended inside a record")
            out.close()
            return
        buf = buf[pos:] + chunk if pos < len(buf) else chunk
        pos = 0
        end = len(buf)
        while pos < end:
            kind = buf[pos]
            if kind == 66:  # B
                if end - pos < bytes_head:
                    break
                _, n = unpack_bytes(buf, pos)
                if end - pos - bytes_head < n:
                    break
                start = pos + bytes_head
                out.write(buf[start:start + n])
                pos = start + n
            elif kind == 67:  # C
                if end - pos < copy_size:
                    break
                _, fd, offset, size = unpack_copy(buf, pos)
                out.copy_from(fd, offset, size)
                pos += copy_size
            else:
                if end - pos < zeros_size:
                    break
                _, n = unpack_zeros(buf, pos)
                if kind == 83:  # S
                    out.skip(n)
                else:
                    out.zeros(n)
                pos += zeros_size


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


def _open_out(fd: int, kind: str, level: Optional[int], what: str, placed: Optional[int] = None) -> Union[_Out, _PipedOut]:
    return _PipedOut(fd, kind, level, what, placed) if CAN_FORK else _Out(fd, kind, level)


def _finish(plan: Plan, entries: Optional[Entries], out: Union[_Out, _PipedOut], options: TarOptions, *,
            verify_first: bool) -> int:
    """Emit every entry and the end of archive; a failure stops the assembler.

    The entries are sorted here, once the assembler is forked, unless the caller had to
    before: objects made before the fork are shared with it, and the pages this process
    then writes to (reference counts, as it goes through them) are copied; the sparse
    check goes through them before anything is written."""
    try:
        if entries is None:
            entries = plan.sorted_entries()
        _check_sparse_expansion(entries, options.max_ratio)
        count = emit(plan, entries, out, options)
        if verify_first:
            plan.verify()
        out.write(END_OF_ARCHIVE)
        out.close()
    except BaseException:
        if isinstance(out, _PipedOut):
            out.abort()
        raise
    return count


def emit(plan: Plan, entries: Entries, out: Union[_Out, _PipedOut], options: TarOptions) -> int:
    """Write every entry (root first, then ``entries``: the plan's, sorted); return the
    entry count.  No end-of-archive."""
    ids = options.ids
    clamp = options.clamp_mtime
    heads: dict[int, bytes] = {}
    count = 0
    # --max-size bounds what is written: contents are checked before (write_tar), the
    # headers and padding on top of them here (many small files can double a tar)
    limit = options.max_size if options.max_size is not None else 1 << 62

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
                           xattrs=_mapped_acls(root.xattrs, ids, b".") if root.xattrs else None))
    count += 1
    identity = ids.identity
    progress = options.progress
    written = 0
    if progress is not None:
        total, n = _contents(entries)
        progress("write-start", {"bytes": total, "entries": n})
    for path, node in entries:
        if identity:
            uid, gid = node.uid, node.gid
        else:
            uid, gid = ids.map(node.uid, node.gid, where=f"output {path.decode('utf-8', 'backslashreplace')}")
        secs, ns = mtime_of(node)
        kind = node.kind
        xattrs = node.xattrs or None
        if xattrs is not None and not identity:
            xattrs = _mapped_acls(xattrs, ids, path)
        if kind != DIR and node.nlink > 1:
            head = heads.get(id(node))
            if head is not None:
                out.write(build_header(name=path, type=b"1", linkname=head, mode=node.mode, uid=uid, gid=gid,
                                       mtime=secs, mtime_ns=ns))
                count += 1
                continue
            heads[id(node)] = path
        # the everyday entry takes the one-block fast path (same bytes as build_header)
        fast = xattrs is None and ns is None
        if kind == REG:
            size = node.size
            header = plain_header(path, b"0", size, node.mode, uid, gid, secs * _NS) if fast else None
            out.write(header or build_header(name=path, type=b"0", size=size, mode=node.mode, uid=uid, gid=gid,
                                             mtime=secs, mtime_ns=ns, xattrs=xattrs))
            _write_content(out, node)
            if size & 511:
                out.write(padding(size))
            if progress is not None:
                written += size
                if count % 256 == 0:
                    progress("write-progress", {"bytes": written})
        elif kind == DIR:
            name = path + b"/"
            header = plain_header(name, b"5", 0, node.mode, uid, gid, secs * _NS) if fast else None
            out.write(header or build_header(name=name, type=b"5", mode=node.mode, uid=uid, gid=gid, mtime=secs,
                                             mtime_ns=ns, xattrs=xattrs))
        elif kind == LNK:
            mode = node.mode or 0o777
            header = plain_header(path, b"2", 0, mode, uid, gid, secs * _NS, node.linkname) if fast else None
            out.write(header or build_header(name=path, type=b"2", linkname=node.linkname, mode=mode, uid=uid,
                                             gid=gid, mtime=secs, mtime_ns=ns, xattrs=xattrs))
        else:
            out.write(build_header(name=path, type=_TYPEFLAG[kind], mode=node.mode, uid=uid, gid=gid, mtime=secs,
                                   mtime_ns=ns, devmajor=node.major, devminor=node.minor, xattrs=xattrs))
        count += 1
        if out.count > limit:
            raise LimitError(f"the flattened tar passes --max-size {limit} bytes (at {path.decode('utf-8', 'backslashreplace')})")
    if progress is not None:
        progress("write-done", {"bytes": written})
    return count


def _mapped_acls(xattrs: dict[str, bytes], ids: IdMapper, path: bytes) -> dict[str, bytes]:
    """``xattrs`` with the named users and groups of ACLs mapped like owners."""
    if not any(key in acls.XATTRS for key in xattrs):
        return xattrs
    where = f"output {path.decode('utf-8', 'backslashreplace')}"
    return {key: acls.map_ids(value, ids, where=where) if key in acls.XATTRS else value for key, value in xattrs.items()}


def _contents(entries: Entries) -> tuple[int, int]:
    """Bytes of file contents (an inode with several names once) and entries."""
    seen: set[int] = set()
    total = 0
    for _, node in entries:
        if node.kind == REG and id(node) not in seen:
            seen.add(id(node))
            total += node.size
    return total, len(entries)


def _check_sparse_expansion(entries: Entries, max_ratio: int) -> None:
    """Refuse, before writing anything, a sparse file whose holes would fill the tar: a
    512-byte entry declaring 400 GiB kept `--flatten -` writing zeros for hours."""
    if not max_ratio:
        return
    for path, node in entries:
        if node.sparse is not None and node.kind == REG and expands_too_far(node, max_ratio):
            raise LimitError(f"{show(path)}: a sparse file of {node.size} bytes from {node.stored_size} stored: written out "
                             f"in a tar, more than {max_ratio}x (see --max-ratio)")


def _write_content(out: Union[_Out, _PipedOut], node: Node) -> None:
    if not node.size:
        return
    if node.sparse is None:
        out.copy_from(node.fd, node.offset, node.size)
        return
    pos = 0
    src = node.offset
    for file_off, length in node.sparse:
        if file_off < pos or file_off + length > node.size:
            # (the reader refuses such maps; never let one put bytes where a header goes)
            raise RuntimeError(f"sparse map out of order for a {node.size}-byte file")
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
    entries: Optional[Entries] = None  # (sorted once, after the assembler has started: see _finish)
    if options.max_size is not None:
        entries = plan.sorted_entries()
        need, _ = _contents(entries)
        if need > options.max_size:
            raise LimitError(f"{dest}: the image's contents are {need} bytes, more than --max-size {options.max_size}")
    if dest == "-":
        fd = sys.stdout.buffer.fileno()
        sys.stdout.flush()
        out = _open_out(fd, kind, options.level, "standard output")
        # on a mismatch the consumer sees a tar without its end blocks
        count = _finish(plan, entries, out, options, verify_first=True)
        return TarResult("-", count, out.count, kind)
    stream = stream_destination(dest, what="--flatten")
    if stream is not None:  # /dev/null, a named pipe, /dev/stdout...: written into, never replaced
        try:
            if os.isatty(stream):
                raise UsageError(f"--flatten {dest}: is a terminal; redirect or pipe the tar")
            sys.stdout.flush()
            out = _open_out(stream, kind, options.level, dest)
            count = _finish(plan, entries, out, options, verify_first=True)
        except BrokenPipeError:
            raise  # (the reader went away: as with -, a quiet exit 141 in the CLI)
        except OSError as exc:
            raise OutputError(f"{dest}: write failed: {exc.strerror}") from None
        finally:
            os.close(stream)
        return TarResult(dest, count, out.count, kind)
    dest = os.path.abspath(dest)
    partial = claim(dest, force=options.force, kind="file")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        discard(partial)
        raise OutputError(f"{dest}: cannot create {partial}: {exc.strerror}") from None
    except BaseException:  # (also: interrupted just after creating it; handlers run between bytecodes)
        discard(partial)
        raise
    placed = -1
    try:
        try:
            if kind == "none":
                placed = os.open(partial, os.O_WRONLY | os.O_CLOEXEC)
            out = _open_out(fd, kind, options.level, dest, placed if placed >= 0 else None)
            count = _finish(plan, entries, out, options, verify_first=False)
        finally:
            os.close(fd)
            if placed >= 0:
                os.close(placed)
        plan.verify()
        commit(partial, dest)
    except OSError as exc:
        discard(partial)
        if exc.errno == 28:
            raise OutputError(f"{dest}: no space left on the device") from None
        raise OutputError(f"{dest}: write failed: {exc.strerror}") from None
    except BaseException:
        discard(partial)
        raise
    return TarResult(dest, count, out.count, kind)

"""A fast, streaming tar header parser (ustar, GNU, v7, PAX; DESIGN §6, EDGE-CASES 16-20).

``tarfile`` spends ~50 µs per header; this module parses a plain ustar header in a few
microseconds by slicing one 512-byte ``bytes`` block out of a large read buffer and only
building what a caller needs.  Extension headers (PAX ``x``/``g``, GNU ``L``/``K``, GNU
sparse) take a slower, general path.

The contract the rest of the converter relies on:

* :class:`TarReader` yields one :class:`TarEntry` per archive member, extension headers
  already applied, names kept as **raw bytes** (never decoded, never normalised).
* Entry data is either consumed through :meth:`TarReader.iter_data` /
  :meth:`TarReader.read_data`, or left alone: the reader skips it (with
  :meth:`ByteSource.skip`, i.e. a seek for :class:`FileSource`) before the next header.
  ``data_offset`` lets a caller holding the file descriptor copy data in place.
* Malformed headers raise :class:`TarFormatError`, truncation :class:`IntegrityError`,
  size caps :class:`LimitError`.  Every message is one line naming the stream, the member
  (escaped bytes, truncated) when known, and the byte offset.
"""

from __future__ import annotations

import binascii
import os
import re
import stat
import zlib
from typing import Iterator, NamedTuple, Protocol

from ..errors import InputError, IntegrityError, LimitError

__all__ = [
    "ByteSource",
    "FileSource",
    "StreamSource",
    "TarEntry",
    "TarFormatError",
    "TarLimits",
    "TarReader",
    "show_name",
]

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_SKIP_CHUNK = 1 << 20
_MIN_READAHEAD = 16 << 10


class TarFormatError(InputError):
    """A tar header is malformed: bad checksum, invalid number, broken PAX record..."""


# --------------------------------------------------------------------------------------
# Byte sources


class ByteSource(Protocol):
    """What the reader reads from."""

    def readinto(self, b: memoryview) -> int:
        """Fill a prefix of ``b``; return the number of bytes read, 0 only at EOF."""
        ...

    def skip(self, n: int) -> int:
        """Advance up to ``n`` bytes (seek, or read and discard); return the number of
        bytes skipped, fewer than ``n`` only at EOF."""
        ...


class FileSource:
    """A :class:`ByteSource` over the region ``[start, start + length)`` of a file
    descriptor, read with ``pread`` (the fd's own position is never used or moved).

    ``skip`` only moves the position: nothing is read.  ``length=None`` means "to the end
    of the file".  For a regular file the region is clamped to the file's size at
    construction, so a file shorter than its index claims reads as truncated rather than
    as a clean end of archive.
    """

    __slots__ = ("fd", "start", "end", "pos")

    def __init__(self, fd: int, start: int = 0, length: int | None = None) -> None:
        if start < 0 or (length is not None and length < 0):
            raise ValueError("FileSource: negative start or length")
        st = os.fstat(fd)
        end = st.st_size if length is None else start + length
        if stat.S_ISREG(st.st_mode):
            end = min(end, st.st_size)
        self.fd = fd
        self.start = start
        self.end = max(end, start)
        self.pos = start

    @property
    def offset(self) -> int:
        """Bytes consumed so far, relative to ``start``."""
        return self.pos - self.start

    def readinto(self, b: memoryview) -> int:
        left = self.end - self.pos
        if left <= 0:
            return 0
        n = len(b)
        if n > left:
            b = memoryview(b)[:left]
        got = _preadv(self.fd, b, self.pos)
        self.pos += got
        return got

    def skip(self, n: int) -> int:
        k = min(n, self.end - self.pos)
        if k <= 0:
            return 0
        self.pos += k
        return k


if hasattr(os, "preadv"):

    def _preadv(fd: int, b: memoryview, pos: int) -> int:
        return os.preadv(fd, [b], pos)

else:  # pragma: no cover - non-Linux fallback

    def _preadv(fd: int, b: memoryview, pos: int) -> int:
        data = os.pread(fd, len(b), pos)
        n = len(data)
        memoryview(b)[:n] = data
        return n


class StreamSource:
    """A :class:`ByteSource` over any blocking object with ``readinto`` or ``read``.

    ``skip`` reads and discards (at most 1 MiB at a time), so a wrapper that hashes what
    it reads sees every byte.
    """

    __slots__ = ("_readinto", "_read", "_scratch")

    def __init__(self, stream: object) -> None:
        self._readinto = getattr(stream, "readinto", None)
        self._read = getattr(stream, "read", None)
        if self._readinto is None and self._read is None:
            raise TypeError("StreamSource needs an object with readinto() or read()")
        self._scratch: bytearray | None = None

    def readinto(self, b: memoryview) -> int:
        if self._readinto is not None:
            return self._readinto(b) or 0
        data = self._read(len(b))  # type: ignore[misc]
        n = len(data)
        if n:
            memoryview(b)[:n] = data
        return n

    def skip(self, n: int) -> int:
        done = 0
        if n <= 0:
            return 0
        if self._scratch is None:
            self._scratch = bytearray(min(max(n, BLOCK), _SKIP_CHUNK))
        elif len(self._scratch) < min(n, _SKIP_CHUNK):
            self._scratch = bytearray(min(n, _SKIP_CHUNK))
        view = memoryview(self._scratch)
        while done < n:
            want = min(n - done, len(view))
            got = self.readinto(view[:want])
            if not got:
                break
            done += got
        return done


# --------------------------------------------------------------------------------------
# Entries and limits


class TarLimits(NamedTuple):
    """Caps that keep a hostile header from turning into a huge allocation."""

    max_pax_size: int = 1 << 20  # one PAX extended header (x or g), and all pending ones together
    max_name: int = 65536  # GNU longname/longlink, PAX path/linkpath
    max_sparse_segments: int = 1 << 20


class _EmptyDict(dict):
    """The one empty ``xattrs`` / ``pax`` dict shared by entries without any: mutating it
    raises TypeError instead of silently changing every entry."""

    __slots__ = ()

    def _readonly(self, *args: object, **kwargs: object) -> None:
        raise TypeError("TarEntry.xattrs / TarEntry.pax are read-only: copy them first")

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = __ior__ = _readonly  # type: ignore[assignment]


#: Shared by every entry without xattrs / PAX records.  Callers must never mutate
#: ``entry.xattrs`` or ``entry.pax`` (copy them first); the shared empty one refuses.
_EMPTY: dict = _EmptyDict()
#: the same, for code that rebuilds entries elsewhere (see converter.workers)
NO_RECORDS = _EMPTY


class TarEntry:
    """One archive member with its extension headers applied.

    ``name`` / ``linkname`` are raw bytes as stored (PAX > GNU long name > ustar
    prefix/name), not normalised.  ``type`` is the typeflag with ``\\0`` and ``7`` folded
    to ``0``, GNU ``D`` to ``5``, old GNU sparse ``S`` to ``0``, and a v7 ``\\0`` entry
    whose name ends in ``/`` to ``5``; anything else as stored.  ``size`` is the number of
    data bytes stored after the header (0 for header-only types ``1``-``6``; for sparse
    files the packed size, after a PAX 1.0 map).  ``xattrs`` and ``pax`` may be a shared
    empty dict: never mutate them.
    """

    __slots__ = (
        "name",
        "linkname",
        "type",
        "mode",
        "uid",
        "gid",
        "uname",
        "gname",
        "size",
        "mtime",
        "mtime_ns",
        "devmajor",
        "devminor",
        "xattrs",
        "pax",
        "sparse",
        "real_size",
        "header_offset",
        "data_offset",
        "index",
    )

    name: bytes
    linkname: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    uname: bytes
    gname: bytes
    size: int
    mtime: int
    mtime_ns: int
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes]
    pax: dict[str, bytes]
    sparse: tuple[tuple[int, int], ...] | None
    real_size: int
    header_offset: int
    data_offset: int
    index: int

    def __init__(
        self,
        name: bytes,
        linkname: bytes,
        type: bytes,
        mode: int,
        uid: int,
        gid: int,
        uname: bytes,
        gname: bytes,
        size: int,
        mtime: int,
        mtime_ns: int,
        devmajor: int,
        devminor: int,
        xattrs: dict[str, bytes],
        pax: dict[str, bytes],
        sparse: tuple[tuple[int, int], ...] | None,
        real_size: int,
        header_offset: int,
        data_offset: int,
        index: int,
    ) -> None:
        self.name = name
        self.linkname = linkname
        self.type = type
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.uname = uname
        self.gname = gname
        self.size = size
        self.mtime = mtime
        self.mtime_ns = mtime_ns
        self.devmajor = devmajor
        self.devminor = devminor
        self.xattrs = xattrs
        self.pax = pax
        self.sparse = sparse
        self.real_size = real_size
        self.header_offset = header_offset
        self.data_offset = data_offset
        self.index = index

    def __repr__(self) -> str:
        extra = ""
        if self.linkname:
            extra += f" -> {show_name(self.linkname)}"
        if self.sparse is not None:
            extra += f" sparse={len(self.sparse)} real_size={self.real_size}"
        return (
            f"<TarEntry #{self.index} {show_name(self.name)} type={self.type!r} mode={self.mode:o} "
            f"{self.uid}:{self.gid} size={self.size}{extra} @{self.header_offset}>"
        )


def show_name(raw: bytes, limit: int = 120) -> str:
    """Raw name bytes as a short, printable, quoted string for messages."""
    cut = raw[:limit]
    text = repr(cut)[2:-1].replace("'", "\\'")
    if len(raw) > limit:
        text += f"...[{len(raw)} bytes]"
    return f"'{text}'"


# --------------------------------------------------------------------------------------
# Header field helpers

# NUL -> space, octal digits and space kept, anything else -> "x" (see TarReader._next)
_NUMERIC_TABLE = bytes(
    0x20 if i == 0 else i if i in b"01234567 " else ord("x") for i in range(256)
)
_OCT_DIGITS = frozenset(b"01234567")
_DEV_ZERO = b"0000000\x000000000\x00"

# typeflag byte -> normalised typeflag
_TYPE_NORM = tuple(bytes([i]) for i in range(256))
_TYPE_NORM = tuple(
    b"0" if i in (0, ord("7"), ord("S")) else b"5" if i == ord("D") else _TYPE_NORM[i] for i in range(256)
)
# typeflag byte -> kind of header
_K_PLAIN, _K_PAX, _K_GLOBAL, _K_LONGNAME, _K_LONGLINK, _K_SPARSE = range(6)
_KIND = [_K_PLAIN] * 256
_KIND[ord("x")] = _K_PAX
_KIND[ord("X")] = _K_PAX  # Solaris' name for the same thing (tarfile agrees)
_KIND[ord("g")] = _K_GLOBAL
_KIND[ord("L")] = _K_LONGNAME
_KIND[ord("K")] = _K_LONGLINK
_KIND[ord("S")] = _K_SPARSE
_KIND = tuple(_KIND)
# types that never carry data whatever their size field says (tarfile and Go agree)
_HEADER_ONLY = frozenset(b"123456")

_FIELDS = (
    ("mode", 100, 108),
    ("uid", 108, 116),
    ("gid", 116, 124),
    ("size", 124, 136),
    ("mtime", 136, 148),
)

_DECIMAL = re.compile(rb"[0-9]{1,30}")
_PAX_TIME = re.compile(rb"(-?)([0-9]{0,30})(?:\.([0-9]*))?")
# keys a global header may not set: they only make sense for one entry
_GLOBAL_IGNORED = frozenset(("path", "linkpath", "size"))


def _cut(blk: bytes, start: int, end: int) -> bytes:
    i = blk.find(0, start, end)
    return blk[start:i] if i >= 0 else blk[start:end]


def _number(field: bytes) -> int:
    """Decode a numeric header field: octal (leading spaces, NUL/space terminated or not),
    base-256 (high bit set; two's complement when negative), empty = 0.
    Raises ValueError on anything else."""
    if not field:
        return 0
    first = field[0]
    if first & 0x80:
        bits = 8 * len(field)
        v = int.from_bytes(field, "big") & ((1 << (bits - 1)) - 1)
        if v >> (bits - 2):  # the bit after the marker is the sign
            v -= 1 << (bits - 1)
        return v
    i = 0
    n = len(field)
    while i < n and field[i] == 0x20:
        i += 1
    j = i
    while j < n and field[j] in _OCT_DIGITS:
        j += 1
    if j < n and field[j] not in (0, 0x20):
        raise ValueError("invalid character")
    if j == i:
        if field[j:].strip(b" \0"):
            raise ValueError("no digits")
        return 0
    return int(field[i:j], 8)


def _header_sum_ok(blk: bytes, stored: int, a32=zlib.adler32) -> bool:
    # adler32's low half is 1 + sum of the bytes (mod 65521): exact for <= 256 bytes.
    s = (a32(blk[:148]) & 0xFFFF) + (a32(blk[156:356]) & 0xFFFF) + (a32(blk[356:]) & 0xFFFF) + 253
    if s == stored:
        return True
    # some historic tars summed signed chars
    signed = sum(memoryview(blk).cast("b")) - sum(memoryview(blk[148:156]).cast("b")) + 256
    return signed == stored


def _pax_time_ns(value: bytes) -> int:
    m = _PAX_TIME.fullmatch(value)
    if m is None or not (m.group(2) or m.group(3)):
        raise ValueError("bad time")
    sign, whole, frac = m.groups()
    frac = (frac or b"")[:9]
    ns = int(whole or b"0") * 1_000_000_000 + (int(frac.ljust(9, b"0")) if frac else 0)
    return -ns if sign else ns


# --------------------------------------------------------------------------------------
# The reader


class _Ext:
    """Extension headers seen since the last entry."""

    __slots__ = ("start", "pax", "longname", "longlink", "sp_offsets", "sp_numbytes", "pax_bytes")

    def __init__(self, start: int) -> None:
        self.start = start
        self.pax: dict[bytes, bytes] | None = None
        self.longname: bytes | None = None
        self.longlink: bytes | None = None
        self.sp_offsets: list[bytes] | None = None
        self.sp_numbytes: list[bytes] | None = None
        self.pax_bytes = 0


class TarReader:
    """Iterate over the entries of one tar stream.

    ``for entry in reader`` yields :class:`TarEntry` objects; before the next one the
    reader skips whatever data (and padding) of the previous entry was not consumed with
    :meth:`iter_data` / :meth:`read_data`.  Iteration ends at the first all-zero block
    (normally followed by a second one), or at a clean end of input between entries.
    :meth:`finish` then drains the source.
    """

    def __init__(
        self,
        source: ByteSource,
        *,
        name: str = "archive",
        limits: TarLimits = TarLimits(),
        buffer_size: int = 1 << 20,
    ) -> None:
        if buffer_size < 4 * BLOCK:
            buffer_size = 4 * BLOCK
        buffer_size -= buffer_size % BLOCK
        self._source = source
        self.name = name
        self.limits = limits
        self._buf = bytearray(buffer_size)
        self._mv = memoryview(self._buf)
        self._cap = buffer_size
        self._readahead = buffer_size  # bytes to read per refill; see _skip
        self._base = 0  # source offset of _buf[0]
        self._pos = 0  # next unconsumed byte in _buf
        self._end = 0  # end of valid bytes in _buf
        self._data_left = 0  # unconsumed data bytes of the current entry
        self._pad_left = 0  # padding after them
        self._current: TarEntry | None = None
        self._index = 0
        self._globals: dict[bytes, bytes] = {}
        self._globals_bytes = 0
        self._done = False
        self.end_reason: str | None = None
        self._finished = False

    # ----------------------------------------------------------------- public interface

    @property
    def offset(self) -> int:
        """Source offset consumed so far (buffered read-ahead not counted)."""
        return self._base + self._pos

    @property
    def current(self) -> TarEntry | None:
        """The entry last yielded (None before the first and after the end)."""
        return self._current

    def __iter__(self) -> Iterator[TarEntry]:
        nxt = self._next
        while not self._done:
            entry = nxt()
            if entry is None:
                return
            yield entry

    def iter_data(self, chunk: int = 1 << 20) -> Iterator[memoryview]:
        """The (remaining) data of the entry last yielded, ``entry.size`` bytes in all, in
        pieces of at most ``chunk`` bytes.  A view points into the reader's buffer and is
        valid only until the next call into the reader or the generator."""
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        while self._data_left > 0:
            avail = self._end - self._pos
            if avail <= 0:
                avail = self._fill(1, self._data_left + self._pad_left)
                if avail <= 0:
                    raise self._truncated("data")
            n = min(avail, self._data_left, chunk)
            pos = self._pos
            self._pos = pos + n
            self._data_left -= n
            yield self._mv[pos : pos + n]

    def read_data(self, max_bytes: int) -> bytes:
        """The whole (remaining) data of the current entry as bytes; :class:`LimitError`
        when the entry is larger than ``max_bytes`` (checked before reading anything)."""
        entry = self._current
        size = entry.size if entry is not None else 0
        if size > max_bytes:
            raise LimitError(self._msg(f"member is {size} bytes, more than the {max_bytes} allowed", entry))
        out = bytearray()
        for view in self.iter_data():
            out += view  # copy now: the next piece may reuse the buffer
        return bytes(out)

    def finish(self) -> int:
        """Read and discard everything left in the source, so that a caller hashing the
        source sees every byte; return how many bytes followed the end of the archive
        (after the zero blocks).  Meant for after iteration; called earlier, it counts
        from the current offset (unconsumed entry data included)."""
        if self._finished:
            return 0
        start = self.offset
        total = self._end - self._pos
        self._pos = self._end = 0
        view = self._mv
        src = self._source
        while True:
            n = src.readinto(view)
            if not n:
                break
            total += n
        self._base = start + total  # all consumed
        self._finished = True
        self._done = True
        self._data_left = self._pad_left = 0
        return total

    # ----------------------------------------------------------------- buffer handling

    def _fill(self, need: int, want: int = 0) -> int:
        """Make at least ``need`` bytes available from ``_pos`` if the source has them
        (reading up to ``want`` or the read-ahead size at once); return the number
        available."""
        pos = self._pos
        end = self._end
        avail = end - pos
        cap = self._cap
        if avail <= 0 or pos + need > cap:
            mv = self._mv
            if avail > 0:
                mv[0:avail] = mv[pos:end]
            else:
                avail = 0
            self._base += pos
            self._pos = pos = 0
            end = avail
        ra = self._readahead
        limit = min(cap, pos + max(need, want, ra))
        self._readahead = min(cap, ra * 2)
        mv = self._mv
        readinto = self._source.readinto
        while end - pos < need:
            n = readinto(mv[end:limit])
            if not n:
                break
            end += n
        self._end = end
        return end - pos

    def _skip(self, n: int, what: str) -> None:
        avail = self._end - self._pos
        if n <= avail:
            self._pos += n
            return
        n -= avail
        self._base += self._end
        self._pos = self._end = 0
        if n >= 4 * _MIN_READAHEAD:
            # Big entries: read small pieces around their headers rather than a full
            # buffer of data that is skipped anyway (it grows back on dense runs).
            self._readahead = _MIN_READAHEAD
        got = self._source.skip(n)
        self._base += got
        if got < n:
            raise self._truncated(what)

    def _read_exact(self, n: int, what: str) -> bytes:
        avail = self._end - self._pos
        if n <= avail:
            pos = self._pos
            self._pos = pos + n
            return self._mv[pos : pos + n].tobytes()
        parts = bytearray(self._mv[self._pos : self._end])
        self._base += self._end
        self._pos = self._end = 0
        while len(parts) < n:
            avail = self._fill(min(n - len(parts), self._cap))
            if avail <= 0:
                raise self._truncated(what)
            take = min(avail, n - len(parts))
            parts += self._mv[self._pos : self._pos + take]
            self._pos += take
        return bytes(parts)

    def _read_block(self, what: str, member: bytes | None = None) -> bytes:
        if self._end - self._pos < BLOCK:
            if self._fill(BLOCK) < BLOCK:
                raise self._truncated(what, member)
        pos = self._pos
        self._pos = pos + BLOCK
        return self._mv[pos : pos + BLOCK].tobytes()

    # ----------------------------------------------------------------- errors

    def _msg(self, text: str, entry: TarEntry | None = None, *, member: bytes | None = None, offset: int | None = None) -> str:
        if member is None and entry is not None:
            member = entry.name
        if offset is None:
            offset = self.offset
        where = f"member {show_name(member)}, " if member is not None else ""
        return f"{self.name}: {text} ({where}offset {offset})"

    def _truncated(self, what: str, member: bytes | None = None) -> IntegrityError:
        entry = self._current if member is None else None
        if what == "data" and entry is None:
            what = "header"
        return IntegrityError(self._msg(f"truncated tar: unexpected end of input inside {what}", entry, member=member))

    def _format_error(self, text: str, member: bytes | None, offset: int) -> TarFormatError:
        return TarFormatError(self._msg(text, member=member, offset=offset))

    # ----------------------------------------------------------------- parsing

    def _next(self) -> TarEntry | None:
        skip = self._data_left + self._pad_left
        if skip:
            self._skip(skip, "data")
            self._data_left = self._pad_left = 0
        self._current = None
        ext: _Ext | None = None
        a32 = zlib.adler32
        while True:
            pos = self._pos
            if self._end - pos < BLOCK:
                avail = self._fill(BLOCK)
                pos = self._pos
                if avail < BLOCK:
                    if avail == 0 and ext is None:
                        self._at_end("eof")
                        return None
                    if self._base + pos == 0:
                        self._not_compressed(self._mv[pos:pos + avail].tobytes())
                    raise self._truncated("an extended header's entry" if avail == 0 else "a header")
            blk = self._mv[pos : pos + BLOCK].tobytes()
            self._pos = pos + BLOCK
            hdr_off = self._base + pos

            if blk[0] == 0 and blk == _ZERO_BLOCK:
                if ext is not None:
                    raise self._format_error("extended header not followed by an entry", None, ext.start)
                self._end_of_archive(hdr_off)
                return None

            # Numeric fields, fast path: one translate maps NUL to space (int() ignores
            # surrounding spaces) and every byte that is not an octal digit or space to
            # "x", so that int() cannot accept signs, underscores or other whitespace.
            # Anything unusual (empty or base-256 fields, junk) raises ValueError and
            # takes the slow, exact path.
            t = blk[100:156].translate(_NUMERIC_TABLE)
            try:
                stored = int(t[48:56], 8)
            except ValueError:
                stored = -1
            if (
                stored < 0
                or (a32(blk[:148]) & 0xFFFF) + (a32(blk[156:356]) & 0xFFFF) + (a32(blk[356:]) & 0xFFFF) + 253 != stored
            ):
                self._check_sum_slow(blk, hdr_off)
            try:
                mode = int(t[0:8], 8)
                uid = int(t[8:16], 8)
                gid = int(t[16:24], 8)
                size = int(t[24:36], 8)
                mtime = int(t[36:48], 8)
            except ValueError:
                mode, uid, gid, size, mtime = self._numbers_slow(blk, hdr_off)

            tf = blk[156]
            kind = _KIND[tf]

            if kind or ext is not None or self._globals:
                if kind == _K_PLAIN or kind == _K_SPARSE:
                    return self._entry_slow(blk, hdr_off, ext, mode, uid, gid, size, mtime)
                if ext is None:
                    ext = _Ext(hdr_off)
                self._extension(blk, hdr_off, kind, size, ext)
                if kind == _K_GLOBAL and ext.pax is None and ext.longname is None and ext.longlink is None:
                    ext = None  # a global header is not part of the next entry's chain
                continue

            # ---- plain entry, fast path
            i = blk.find(0, 0, 100)
            name = blk[:i] if i >= 0 else blk[:100]
            if blk[345] and blk[257:263] == b"ustar\0":
                i = blk.find(0, 345, 500)
                name = (blk[345:i] if i >= 0 else blk[345:500]) + b"/" + name
            if blk[157]:
                i = blk.find(0, 157, 257)
                linkname = blk[157:i] if i >= 0 else blk[157:257]
            else:
                linkname = b""
            i = blk.find(0, 265, 297)
            uname = blk[265:i] if i >= 0 else blk[265:297]
            i = blk.find(0, 297, 329)
            gname = blk[297:i] if i >= 0 else blk[297:329]
            if blk[329] == 0 and blk[337] == 0 or blk[329:345] == _DEV_ZERO:
                devmajor = devminor = 0
            else:
                devmajor, devminor = self._devs(blk, hdr_off)
            typ = _TYPE_NORM[tf]
            if tf == 0 and name[-1:] == b"/":
                typ = b"5"  # v7: a "regular file" with a trailing slash is a directory
            if tf in _HEADER_ONLY:
                size = 0
            data_off = hdr_off + BLOCK
            entry = TarEntry(
                name,
                linkname,
                typ,
                mode & 0o7777,
                uid,
                gid,
                uname,
                gname,
                size,
                mtime,
                mtime * 1_000_000_000,
                devmajor,
                devminor,
                _EMPTY,
                _EMPTY,
                None,
                size,
                hdr_off,
                data_off,
                self._index,
            )
            self._index += 1
            self._data_left = size
            self._pad_left = -size & 511
            self._current = entry
            return entry

    def _at_end(self, reason: str) -> None:
        self.end_reason = reason
        self._done = True

    def _end_of_archive(self, zero_off: int) -> None:
        avail = self._fill(BLOCK)
        if avail == 0:
            self._at_end("one-zero-block-eof")
            return
        pos = self._pos
        if avail >= BLOCK and self._mv[pos : pos + BLOCK] == _ZERO_BLOCK:
            self._pos = pos + BLOCK
            self._at_end("eof-blocks")
            return
        # a lone zero block followed by something else: like GNU tar and tarfile, stop
        # here; finish() counts the rest as trailing bytes
        self._at_end("lone-zero-block")

    def _check_sum_slow(self, blk: bytes, hdr_off: int) -> None:
        try:
            stored = _number(blk[148:156])
        except ValueError:
            stored = -1
        if stored < 0 or not _header_sum_ok(blk, stored):
            if hdr_off == 0:
                self._not_compressed(blk)
            raise self._format_error("bad tar header checksum", _cut(blk, 0, 100), hdr_off)

    def _not_compressed(self, head: bytes) -> None:
        """The stream's first bytes are not a tar header: say so plainly when they are
        compressed data (a layer compressed twice, or a blob whose media type says
        compressed and whose bytes were compressed again), rather than "truncated" or
        "bad checksum"."""
        from ..compression import NONE, sniff

        kind = sniff(head)
        if kind is not None and kind != NONE:
            raise self._format_error(f"not a tar: the data is {kind}-compressed (compressed twice?)", None, 0)

    def _field_error(self, field: str, blk: bytes, hdr_off: int, raw: bytes) -> TarFormatError:
        return self._format_error(f"invalid {field} field {raw!r} in tar header", _cut(blk, 0, 100), hdr_off)

    def _numbers_slow(self, blk: bytes, hdr_off: int) -> tuple[int, int, int, int, int]:
        out = []
        for field, a, b in _FIELDS:
            raw = blk[a:b]
            try:
                v = _number(raw)
            except ValueError:
                raise self._field_error(field, blk, hdr_off, raw) from None
            if v < 0 and field != "mtime":
                raise self._field_error(field, blk, hdr_off, raw)
            out.append(v)
        return out[0], out[1], out[2], out[3], out[4]

    def _devs(self, blk: bytes, hdr_off: int) -> tuple[int, int]:
        out = []
        for field, a, b in (("devmajor", 329, 337), ("devminor", 337, 345)):
            raw = blk[a:b]
            try:
                v = _number(raw)
            except ValueError:
                raise self._field_error(field, blk, hdr_off, raw) from None
            if v < 0:
                raise self._field_error(field, blk, hdr_off, raw)
            out.append(v)
        return out[0], out[1]

    # ----------------------------------------------------------------- extension headers

    def _extension(self, blk: bytes, hdr_off: int, kind: int, size: int, ext: _Ext) -> None:
        limits = self.limits
        label = {_K_PAX: "PAX extended header", _K_GLOBAL: "PAX global header"}.get(kind, "GNU long name")
        if kind == _K_LONGLINK:
            label = "GNU long link name"
        if kind in (_K_PAX, _K_GLOBAL):
            if size > limits.max_pax_size:
                raise LimitError(
                    self._msg(
                        f"{label} of {size} bytes exceeds the {limits.max_pax_size}-byte limit",
                        member=_cut(blk, 0, 100),
                        offset=hdr_off,
                    )
                )
            data = self._read_exact(size, label)
            self._skip(-size & 511, label)
            records, sp_off, sp_num = self._parse_pax(data, hdr_off)
            if kind == _K_GLOBAL:
                self._apply_global(records, hdr_off)
                return
            ext.pax_bytes += size
            if ext.pax_bytes > limits.max_pax_size:
                raise LimitError(
                    self._msg(
                        f"PAX extended headers of one entry exceed {limits.max_pax_size} bytes",
                        offset=hdr_off,
                    )
                )
            if ext.pax is None:
                ext.pax = records
            else:
                ext.pax.update(records)
            if sp_off is not None:
                ext.sp_offsets = sp_off
                ext.sp_numbytes = sp_num
            for key in (b"path", b"linkpath"):
                v = records.get(key)
                if v is not None and len(v) > limits.max_name:
                    raise LimitError(
                        self._msg(f"PAX {key.decode()} of {len(v)} bytes exceeds the {limits.max_name}-byte limit", offset=hdr_off)
                    )
                if v is not None and 0 in v:
                    raise self._format_error(f"PAX {key.decode()} contains a NUL byte", v, hdr_off)
            return
        # GNU long name / long link
        if size > limits.max_name + 1:
            raise LimitError(
                self._msg(f"{label} of {size} bytes exceeds the {limits.max_name}-byte limit", offset=hdr_off)
            )
        data = self._read_exact(size, label)
        self._skip(-size & 511, label)
        i = data.find(0)
        value = data[:i] if i >= 0 else data
        if len(value) > limits.max_name:
            raise LimitError(
                self._msg(f"{label} of {len(value)} bytes exceeds the {limits.max_name}-byte limit", offset=hdr_off)
            )
        if kind == _K_LONGNAME:
            ext.longname = value
        else:
            ext.longlink = value

    def _parse_pax(
        self, data: bytes, hdr_off: int
    ) -> tuple[dict[bytes, bytes], list[bytes] | None, list[bytes] | None]:
        records: dict[bytes, bytes] = {}
        sp_off: list[bytes] | None = None
        sp_num: list[bytes] | None = None
        pos = 0
        n = len(data)
        while pos < n:
            if data[pos] == 0 and not data[pos:].strip(b"\0"):
                break  # NUL padding after the last record
            sp = data.find(b" ", pos, min(n, pos + 24))
            length_text = data[pos:sp] if sp > pos else b""
            if not length_text.isdigit() or not length_text.isascii():
                raise self._format_error(f"malformed PAX record at byte {pos} of the extended header", None, hdr_off)
            length = int(length_text)
            end = pos + length
            if end > n or length <= sp - pos + 2 or data[end - 1] != 0x0A:
                raise self._format_error(f"malformed PAX record at byte {pos} of the extended header", None, hdr_off)
            eq = data.find(b"=", sp + 1, end - 1)
            if eq <= sp + 1:
                raise self._format_error(f"malformed PAX record at byte {pos} of the extended header", None, hdr_off)
            key = data[sp + 1 : eq]
            value = data[eq + 1 : end - 1]
            if key == b"GNU.sparse.offset":
                if sp_off is None:
                    sp_off, sp_num = [], []
                sp_off.append(value)
            elif key == b"GNU.sparse.numbytes":
                if sp_num is None:
                    sp_off, sp_num = [], []
                sp_num.append(value)  # type: ignore[union-attr]
            records[key] = value
            pos = end
        return records, sp_off, sp_num

    def _apply_global(self, records: dict[bytes, bytes], hdr_off: int) -> None:
        g = self._globals
        for key, value in records.items():
            skey = key.decode("utf-8", "surrogateescape")
            if skey in _GLOBAL_IGNORED or skey.startswith("GNU.sparse."):
                continue
            if value or skey.startswith(("SCHILY.xattr.", "LIBARCHIVE.xattr.")):
                old = g.get(key)
                if old is not None:
                    self._globals_bytes -= len(key) + len(old)
                g[key] = value
                self._globals_bytes += len(key) + len(value)
            elif key in g:
                self._globals_bytes -= len(key) + len(g.pop(key))
        if self._globals_bytes > self.limits.max_pax_size:
            raise LimitError(
                self._msg(f"PAX global headers exceed {self.limits.max_pax_size} bytes in all", offset=hdr_off)
            )

    # ----------------------------------------------------------------- general entry

    def _entry_slow(
        self,
        blk: bytes,
        hdr_off: int,
        ext: _Ext | None,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime: int,
    ) -> TarEntry:
        tf = blk[156]
        start = ext.start if ext is not None else hdr_off
        name = _cut(blk, 0, 100)
        if blk[345] and blk[257:263] == b"ustar\0":
            name = _cut(blk, 345, 500) + b"/" + name
        linkname = _cut(blk, 157, 257)
        uname = _cut(blk, 265, 297)
        gname = _cut(blk, 297, 329)
        if blk[329] == 0 and blk[337] == 0 or blk[329:345] == _DEV_ZERO:
            devmajor = devminor = 0
        else:
            devmajor, devminor = self._devs(blk, hdr_off)
        mtime_ns = mtime * 1_000_000_000
        typ = _TYPE_NORM[tf]
        xattrs: dict[str, bytes] = _EMPTY
        pax: dict[str, bytes] = _EMPTY
        sparse: list[tuple[int, int]] | None = None
        real_size = size
        data_off = hdr_off + BLOCK

        if ext is not None:
            if ext.longname is not None:
                name = ext.longname
            if ext.longlink is not None:
                linkname = ext.longlink

        merged: dict[bytes, bytes] = {}
        if self._globals:
            merged.update(self._globals)
        if ext is not None and ext.pax:
            for key, value in ext.pax.items():
                if value or key.startswith((b"SCHILY.xattr.", b"LIBARCHIVE.xattr.")):
                    merged[key] = value
                else:  # an empty value deletes the keyword (POSIX): header field applies
                    merged.pop(key, None)

        def bad(key: bytes, value: bytes) -> TarFormatError:
            return self._format_error(
                f"invalid PAX {key.decode('utf-8', 'replace')} value {value[:40]!r}", name, start
            )

        def decimal(key: bytes, value: bytes) -> int:
            if _DECIMAL.fullmatch(value) is None:
                raise bad(key, value)
            return int(value)

        if merged:
            pax = {}
            for key, value in merged.items():
                skey = key.decode("utf-8", "surrogateescape")
                pax[skey] = value
                if key == b"path":
                    name = value
                elif key == b"linkpath":
                    linkname = value
                elif key == b"size":
                    size = real_size = decimal(key, value)
                elif key == b"uid":
                    uid = decimal(key, value)
                elif key == b"gid":
                    gid = decimal(key, value)
                elif key == b"uname":
                    uname = value
                elif key == b"gname":
                    gname = value
                elif key == b"mtime":
                    try:
                        mtime_ns = _pax_time_ns(value)
                    except ValueError:
                        raise bad(key, value) from None
                    mtime = mtime_ns // 1_000_000_000
                elif skey.startswith("SCHILY.xattr."):
                    if xattrs is _EMPTY:
                        xattrs = {}
                    xattrs[skey[13:]] = value
            for key, value in merged.items():
                if key.startswith(b"LIBARCHIVE.xattr."):
                    # (rare: imported here, not at every start; see converter.image)
                    import base64
                    from urllib.parse import unquote_to_bytes

                    try:
                        xname = unquote_to_bytes(key[17:]).decode("utf-8", "surrogateescape")
                        xvalue = base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
                    except (binascii.Error, ValueError):
                        raise bad(key, value) from None
                    if xattrs is _EMPTY:
                        xattrs = {}
                    if ("SCHILY.xattr." + xname) not in pax:  # the binary-exact form wins
                        xattrs[xname] = xvalue
            if b"GNU.sparse.name" in merged:
                name = merged[b"GNU.sparse.name"]

        if len(name) > self.limits.max_name or len(linkname) > self.limits.max_name:
            raise LimitError(self._msg(f"name longer than {self.limits.max_name} bytes", offset=start))

        if tf == 0 and name[-1:] == b"/":
            typ = b"5"
        if tf in _HEADER_ONLY:
            size = real_size = 0

        self._current = None  # messages below name the member explicitly
        # ---- sparse files
        if tf == 0x53:  # old GNU 'S'
            sparse, real_size, data_off = self._old_gnu_sparse(blk, hdr_off, name, data_off)
        elif merged:
            if b"GNU.sparse.major" in merged or b"GNU.sparse.minor" in merged:
                major = merged.get(b"GNU.sparse.major")
                minor = merged.get(b"GNU.sparse.minor")
                if major != b"1" or minor != b"0":
                    raise self._format_error(
                        f"unsupported GNU sparse format {major!r}.{minor!r}", name, start
                    )
                rs = merged.get(b"GNU.sparse.realsize", merged.get(b"GNU.sparse.size"))
                if rs is None:
                    raise self._format_error("GNU sparse 1.0 entry without GNU.sparse.realsize", name, start)
                real_size = decimal(b"GNU.sparse.realsize", rs)
                sparse, map_bytes = self._sparse_map_10(size, name, data_off)
                size -= map_bytes
                data_off += map_bytes
            elif b"GNU.sparse.map" in merged or b"GNU.sparse.size" in merged or (
                ext is not None and ext.sp_offsets is not None
            ):
                rs = merged.get(b"GNU.sparse.size", merged.get(b"GNU.sparse.realsize"))
                if rs is None:
                    raise self._format_error("GNU sparse entry without GNU.sparse.size", name, start)
                real_size = decimal(b"GNU.sparse.size", rs)
                if b"GNU.sparse.map" in merged:
                    raw = merged[b"GNU.sparse.map"]
                    nums = raw.split(b",") if raw else []
                else:
                    offs = (ext.sp_offsets or []) if ext is not None else []
                    lens = (ext.sp_numbytes or []) if ext is not None else []
                    if len(offs) != len(lens):
                        raise self._format_error("GNU sparse 0.0 map: offsets and sizes do not pair up", name, start)
                    nums = [x for pair in zip(offs, lens) for x in pair]
                if len(nums) % 2:
                    raise self._format_error("GNU sparse map has an odd number of values", name, start)
                if len(nums) // 2 > self.limits.max_sparse_segments:
                    raise LimitError(
                        self._msg(
                            f"sparse map of {len(nums) // 2} segments exceeds the limit of {self.limits.max_sparse_segments}",
                            member=name,
                            offset=start,
                        )
                    )
                ints = []
                for x in nums:
                    if _DECIMAL.fullmatch(x) is None:
                        raise self._format_error(f"invalid GNU sparse map value {x[:30]!r}", name, start)
                    ints.append(int(x))
                sparse = list(zip(ints[0::2], ints[1::2]))
                nb = merged.get(b"GNU.sparse.numblocks")
                if nb is not None and (_DECIMAL.fullmatch(nb) is None or int(nb) != len(sparse)):
                    raise self._format_error("GNU.sparse.numblocks does not match the sparse map", name, start)

        if sparse is not None:
            self._check_sparse(sparse, size, real_size, name, start)

        entry = TarEntry(
            name,
            linkname,
            typ,
            mode & 0o7777,
            uid,
            gid,
            uname,
            gname,
            size,
            mtime,
            mtime_ns,
            devmajor,
            devminor,
            xattrs,
            pax,
            tuple(sparse) if sparse is not None else None,
            real_size,
            start,
            data_off,
            self._index,
        )
        self._index += 1
        self._current = entry
        self._data_left = size
        self._pad_left = -size & 511
        return entry

    # ----------------------------------------------------------------- sparse maps

    def _old_gnu_sparse(
        self, blk: bytes, hdr_off: int, name: bytes, data_off: int
    ) -> tuple[list[tuple[int, int]], int, int]:
        segments: list[tuple[int, int]] = []
        limit = self.limits.max_sparse_segments

        def take(block: bytes, start: int, count: int, where: int) -> None:
            for k in range(count):
                a = start + 24 * k
                if block[a] == 0 and block[a + 12] == 0:
                    return
                try:
                    off = _number(block[a : a + 12])
                    num = _number(block[a + 12 : a + 24])
                except ValueError:
                    raise self._format_error("invalid old GNU sparse map entry", name, where) from None
                segments.append((off, num))
                if len(segments) > limit:
                    raise LimitError(
                        self._msg(f"sparse map exceeds the limit of {limit} segments", member=name, offset=where)
                    )

        take(blk, 386, 4, hdr_off)
        try:
            real_size = _number(blk[483:495])
        except ValueError:
            raise self._format_error("invalid old GNU sparse realsize field", name, hdr_off) from None
        extended = blk[482]
        while extended:
            where = self.offset
            block = self._read_block("an old GNU sparse extension header", name)
            take(block, 0, 21, where)
            extended = block[504]
            data_off += BLOCK
        return segments, real_size, data_off

    def _sparse_map_10(self, size: int, name: bytes, data_off: int) -> tuple[list[tuple[int, int]], int]:
        """GNU sparse 1.0: the map sits at the start of the data, as decimal lines padded
        to a block boundary.  Returns the map and the bytes it occupies."""
        limit = self.limits.max_sparse_segments
        text = b""
        used = 0
        nums: list[int] = []
        want: int | None = None
        pos = 0
        while True:
            if used + BLOCK > size:
                raise self._format_error("GNU sparse 1.0 map runs past the entry's data", name, data_off)
            text = text[pos:] + self._read_block("a GNU sparse 1.0 map", name)
            used += BLOCK
            pos = 0
            while True:
                nl = text.find(b"\n", pos)
                if nl < 0:
                    break
                field = text[pos:nl]
                if _DECIMAL.fullmatch(field) is None:
                    raise self._format_error(f"invalid GNU sparse 1.0 map value {field[:30]!r}", name, data_off)
                nums.append(int(field))
                pos = nl + 1
                if want is None:
                    count = nums[0]
                    if count > limit:
                        raise LimitError(
                            self._msg(
                                f"sparse map of {count} segments exceeds the limit of {limit}",
                                member=name,
                                offset=data_off,
                            )
                        )
                    want = 1 + 2 * count
                if len(nums) == want:
                    break
            if want is not None and len(nums) == want:
                break
            if len(text) - pos > 64:  # no number is that long
                raise self._format_error("invalid GNU sparse 1.0 map", name, data_off)
        segments = list(zip(nums[1::2], nums[2::2]))
        return segments, used

    def _check_sparse(self, segments: list[tuple[int, int]], size: int, real_size: int, name: bytes, where: int) -> None:
        """A map is in file order without overlaps, as every tar writes one: an
        overlapping one describes more bytes than the file holds, and a writer replaying
        it would put data where the next header belongs (a tar inside the tar)."""
        total = end = 0
        for off, num in segments:
            if off < 0 or num < 0 or off + num > real_size:
                raise self._format_error(
                    f"sparse segment ({off}, {num}) lies outside the file's {real_size} bytes", name, where
                )
            if off < end:
                raise self._format_error(
                    f"sparse segment ({off}, {num}) overlaps or precedes the one before it (which ends at {end})", name, where
                )
            end = off + num
            total += num
        if total != size:
            raise self._format_error(
                f"sparse map describes {total} data bytes but the entry stores {size}", name, where
            )

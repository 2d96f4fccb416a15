"""Deterministic tar header writer: ustar, with a PAX ``x`` header only when needed.

:func:`build_header` returns the header block(s) for one entry.  Everything that fits a
ustar field exactly goes there; anything else (long or unsplittable names, long link
targets, large ids or sizes, negative, huge or sub-second times, long owner names, any
xattr) is written as a PAX extended header placed before the ustar header.  The output
depends only on the arguments: the PAX header's own name is derived from the entry name,
its mtime is the entry's, its owner is 0:0 with mode 0644, and its records are sorted by
keyword.

Callers append the entry's data, then :func:`padding` for it, and finish the archive with
:data:`END_OF_ARCHIVE`.  Invalid arguments (a NUL in a name, a negative size...) are
programming errors and raise :class:`ValueError`.
"""

from __future__ import annotations

import zlib
from typing import Mapping

__all__ = ["END_OF_ARCHIVE", "build_header", "padding"]

BLOCK = 512
END_OF_ARCHIVE = b"\0" * 1024
_ZEROS = bytes(BLOCK)

_MAX_ID = 0o7777777  # 7 octal digits
_MAX_SIZE = 0o77777777777  # 11 octal digits
_NS = 1_000_000_000


def padding(size: int) -> bytes:
    """Zero bytes that bring ``size`` bytes of data to the next 512-byte boundary."""
    return _ZEROS[: -size & 511]


def build_header(
    *,
    name: bytes,
    type: bytes,
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 0,
    mtime_ns: int | None = None,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: Mapping[str, bytes] | None = None,
    uname: bytes = b"",
    gname: bytes = b"",
) -> bytes:
    """The header block(s) for one entry: ``[PAX x header + records + padding] + ustar``.

    ``mtime_ns``, when given, wins over ``mtime`` (a sub-second part goes to PAX).  Only
    the permission bits of ``mode`` are written (``mode & 0o7777``).  ``xattrs`` map names
    to raw values (``SCHILY.xattr.NAME``; a name containing ``=`` cannot be a PAX keyword
    and is written libarchive-style, URL-encoded with a base64 value).
    """
    if not isinstance(name, (bytes, bytearray)) or not name:
        raise ValueError("tar entry name must be non-empty bytes")
    if 0 in name or 0 in linkname:
        raise ValueError(f"NUL byte in tar entry name or link target: {name[:80]!r}")
    if len(type) != 1:
        raise ValueError(f"typeflag must be one byte, not {type!r}")
    if size < 0 or uid < 0 or gid < 0:
        raise ValueError(f"negative size or id for tar entry {name[:80]!r}")
    if not (0 <= devmajor <= _MAX_ID and 0 <= devminor <= _MAX_ID):
        raise ValueError(f"device numbers {devmajor},{devminor} do not fit a ustar header")
    name = bytes(name)
    linkname = bytes(linkname)
    records: dict[bytes, bytes] = {}
    binary = False

    split = _split_name(name)
    if split is None:
        records[b"path"] = name
        binary = binary or not _is_utf8(name)
        prefix, short = b"", name[:100]
    else:
        prefix, short = split
    if len(linkname) > 100:
        records[b"linkpath"] = linkname
        binary = binary or not _is_utf8(linkname)
        link_field = linkname[:100]
    else:
        link_field = linkname

    if size > _MAX_SIZE:
        records[b"size"] = b"%d" % size
        size_field = 0
    else:
        size_field = size
    if uid > _MAX_ID:
        records[b"uid"] = b"%d" % uid
        uid_field = 0
    else:
        uid_field = uid
    if gid > _MAX_ID:
        records[b"gid"] = b"%d" % gid
        gid_field = 0
    else:
        gid_field = gid

    t_ns = mtime * _NS if mtime_ns is None else mtime_ns
    sec, frac = divmod(t_ns, _NS)
    if frac or sec < 0 or sec > _MAX_SIZE:
        records[b"mtime"] = _format_time(t_ns)
        mtime_field = min(max(sec, 0), _MAX_SIZE)
    else:
        mtime_field = sec

    if len(uname) > 31:
        records[b"uname"] = bytes(uname)
        binary = binary or not _is_utf8(uname)
        uname = uname[:31]
    if len(gname) > 31:
        records[b"gname"] = bytes(gname)
        binary = binary or not _is_utf8(gname)
        gname = gname[:31]

    if xattrs:
        for xname, value in xattrs.items():
            raw = xname.encode("utf-8", "surrogateescape")
            if not raw or 0 in raw:
                raise ValueError(f"invalid xattr name {xname!r}")
            if b"=" in raw:  # (rare: imported here, not at every start)
                import base64
                from urllib.parse import quote_from_bytes

                records[b"LIBARCHIVE.xattr." + quote_from_bytes(raw, safe="").encode()] = base64.b64encode(value)
            else:
                records[b"SCHILY.xattr." + raw] = bytes(value)

    header = _ustar(
        short,
        prefix,
        type,
        size_field,
        mode & 0o7777,
        uid_field,
        gid_field,
        mtime_field,
        link_field,
        devmajor,
        devminor,
        uname,
        gname,
    )
    if not records:
        return header
    if binary:
        records[b"hdrcharset"] = b"BINARY"
    body = b"".join(_record(k, records[k]) for k in sorted(records))
    base = name.rstrip(b"/").rsplit(b"/", 1)[-1] or b"root"
    pax = _ustar(
        b"PaxHeaders/" + base[:89], b"", b"x", len(body), 0o644, 0, 0, mtime_field, b"", 0, 0, b"", b""
    )
    return b"".join((pax, body, padding(len(body)), header))


def plain_header(name: bytes, type: bytes, size: int, mode: int, uid: int, gid: int, mtime_ns: int,
                 linkname: bytes = b"") -> bytes | None:
    """The single ustar block of an everyday entry (short names, whole-second mtime, small
    ids, no xattrs), or None when it needs :func:`build_header`.  The flattened tar
    writes tens of thousands of these: this skips build_header's general checks and
    records (the model already refused NULs and bad names).  Same bytes either way."""
    if (len(name) > 100 or len(linkname) > 100 or size > _MAX_SIZE or uid > _MAX_ID or gid > _MAX_ID
            or mtime_ns % _NS or not 0 <= mtime_ns <= _MAX_MTIME_NS):
        return None
    blk = _PLAIN % (name.ljust(100, b"\0"), mode & 0o7777, uid, gid, size, mtime_ns // _NS, type, linkname.ljust(100, b"\0"))
    a32 = zlib.adler32
    chk = (a32(blk[:256]) & 0xFFFF) + (a32(blk[256:]) & 0xFFFF) - 2
    return blk[:148] + b"%06o\0 " % chk + blk[156:]


_MAX_MTIME_NS = _MAX_SIZE * _NS
_PLAIN = (b"%s%07o\0%07o\0%07o\0%011o\0%011o\0        %s%sustar\x0000" + b"\0" * 64 + b"0000000\x000000000\x00"
          + b"\0" * 167)


def _split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for the ustar fields, or None when the name does not fit."""
    n = len(name)
    if n <= 100:
        return b"", name
    if n > 256:
        return None
    # name[i] == '/', 1 <= i <= 155 (non-empty prefix), n - i - 1 <= 100 (non-empty name)
    i = name.find(b"/", max(1, n - 101), min(156, n - 1))
    if i < 0:
        return None
    return name[:i], name[i + 1 :]


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _format_time(t_ns: int) -> bytes:
    sign = b"-" if t_ns < 0 else b""
    whole, frac = divmod(abs(t_ns), _NS)
    text = b"%s%d" % (sign, whole)
    if frac:
        text += b"." + (b"%09d" % frac).rstrip(b"0")
    return text


def _record(key: bytes, value: bytes) -> bytes:
    payload = b" " + key + b"=" + value + b"\n"
    n = len(payload)
    digits = len(str(n))
    while len(str(n + digits)) != digits:
        digits += 1
    return b"%d" % (n + digits) + payload


def _ustar(
    name: bytes,
    prefix: bytes,
    typ: bytes,
    size: int,
    mode: int,
    uid: int,
    gid: int,
    mtime: int,
    linkname: bytes,
    devmajor: int,
    devminor: int,
    uname: bytes,
    gname: bytes,
) -> bytes:
    blk = b"".join(
        (
            name.ljust(100, b"\0"),
            b"%07o\0%07o\0%07o\0%011o\0%011o\0        " % (mode, uid, gid, size, mtime),
            typ,
            linkname.ljust(100, b"\0"),
            b"ustar\x0000",
            uname.ljust(32, b"\0"),
            gname.ljust(32, b"\0"),
            b"%07o\0%07o\0" % (devmajor, devminor),
            prefix.ljust(155, b"\0"),
            b"\0" * 12,
        )
    )
    a32 = zlib.adler32
    # adler32's low half is 1 + the byte sum (exact below 65521: <= 256 bytes per call)
    chk = (a32(blk[:256]) & 0xFFFF) + (a32(blk[256:]) & 0xFFFF) - 2
    return blk[:148] + b"%06o\0 " % chk + blk[156:]

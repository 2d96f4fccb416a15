"""Deterministic container-image generator: the single source of test inputs.

Every unit test, hostile-archive test and benchmark input of this project is built here,
from a small Python description (``ImageSpec`` of ``Layer`` s of entries), into the same
on-disk layouts real tools write: ``docker save`` (legacy, skopeo/podman, Docker 25+,
containerd store), OCI image layouts and OCI archives.

Design choices, and why:

* **Independent oracle.** Ordinary entries are serialised with CPython's ``tarfile``
  (``TarInfo.tobuf``), not with the project's own tar code, so a bug in our parser cannot
  be mirrored by the generator. Only what ``tarfile`` refuses to write (hostile headers,
  lying sizes, bad checksums, GNU sparse files) goes through the small raw header writer
  in this module.
* **Byte-for-byte deterministic.** Fixed mtimes and owners, fixed member order, fixed
  compression levels, gzip headers with mtime 0 and no file name, compact JSON built in a
  fixed key order. The same spec always gives the same bytes, so digests can be asserted
  and fixtures committed.
* **Verbatim names.** Paths are written exactly as given (``./a``, ``/abs``, ``a//b``,
  a directory without its trailing ``/``): normalisation is the converter's job and the
  tests need the raw forms. ``bytes`` paths carry non-UTF-8 names.
* **Faithful layouts.** Member names, order, modes and JSON shapes mirror the archives in
  ``shared/real-images`` (docker 20.10, skopeo, podman, buildah), so a converter that
  passes on generated images has a fair chance on real ones.
* **Breakable on purpose.** ``config_overrides``, ``manifest_override``,
  ``index_override``, ``Layer.raw``, ``Layer.trailing``, ``extra_members``, ``Raw`` and
  ``corrupt()`` produce the malformed inputs hostile tests need.

Everything is built in memory (test images are small); archives are then streamed to
disk, through a streaming compressor when the whole archive is compressed.
"""

from __future__ import annotations

import bz2
import copy
import hashlib
import json
import lzma
import os
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Union

import zstandard

__all__ = [
    "FIXED_MTIME",
    "DELETE",
    "File",
    "Dir",
    "Symlink",
    "Hardlink",
    "Whiteout",
    "Opaque",
    "Fifo",
    "Device",
    "Raw",
    "Sparse",
    "Entry",
    "Layer",
    "ImageSpec",
    "BuiltImage",
    "layer_tar",
    "layer_blob",
    "layer_media_type",
    "compress",
    "pax_records",
    "sha256_digest",
    "config_json",
    "write_docker_archive",
    "write_oci_layout",
    "write_oci_archive",
    "corrupt",
    "member_offset",
    "blob_path",
]

FIXED_MTIME = 1_700_000_000
"""Default mtime of every entry and archive member (2023-11-14T22:13:20Z)."""

BLOCK = 512
EMPTY_LAYER_TAR = b"\0" * (2 * BLOCK)
"""What ``layer_tar(Layer())`` returns: the two end-of-archive blocks and nothing else
(diff_id ``sha256:5f70bf18…c6ef``, the well-known empty layer)."""

_POSIX_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"
_CREATED = datetime.fromtimestamp(FIXED_MTIME, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
_DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Media types. xz and bzip2 have no registered layer media type: real tools label such
# blobs as plain tar (or lie), and the converter sniffs magic bytes anyway.
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_IN_TOTO = "application/vnd.in-toto+json"

_OCI_LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "xz": "application/vnd.oci.image.layer.v1.tar",
    "bzip2": "application/vnd.oci.image.layer.v1.tar",
}
_DOCKER_LAYER_TYPES = {
    "none": "application/vnd.docker.image.rootfs.diff.tar",
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    # Not registered, but seen in the wild (EDGE-CASES 9).
    "zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "xz": "application/vnd.docker.image.rootfs.diff.tar",
    "bzip2": "application/vnd.docker.image.rootfs.diff.tar",
}
COMPRESSIONS = tuple(_OCI_LAYER_TYPES)
_TAR_FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}

# Mode docker/moby gives whiteout and opaque markers (checked in real-images layers).
_WHITEOUT_MODE = 0o600
_OPAQUE_MODE = 0o755
_WH = b".wh."
_OPQ = b".wh..wh..opq"


class _Delete:
    """Type of :data:`DELETE`."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()
"""Use as a value in ``config_overrides`` / ``manifest_override`` / ``index_override``
dicts to remove that key (``{"rootfs": DELETE}``); ``None`` would write JSON ``null``."""

Override = Union[Mapping[str, Any], list, bytes, Callable[[Any], Any], None]
"""An override is a dict (deep-merged, :data:`DELETE` removes a key), ``bytes`` (the
exact document, e.g. malformed JSON), a callable (gets a deep copy of the document,
returns the new document or bytes), or any other JSON value (replaces the document)."""


# --------------------------------------------------------------------------- entries


@dataclass
class File:
    """A regular file. ``type`` may be ``b"0"``, ``b"\\0"`` (old RegA) or ``b"7"``
    (contiguous): all three are regular files to a reader (EDGE-CASES 19)."""

    path: str | bytes
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    xattrs: dict[str, bytes] = field(default_factory=dict)
    type: bytes = b"0"


@dataclass
class Dir:
    """A directory. The name is written as given: ``Dir("etc")`` has no trailing ``/``
    (``tarfile`` would add one); write ``Dir("etc/")`` to get what docker writes."""

    path: str | bytes
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Symlink:
    """A symbolic link (mode 0777, as Go's archive/tar and GNU tar write them)."""

    path: str | bytes
    target: str | bytes
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME


@dataclass
class Hardlink:
    """A hard link: typeflag ``1``, ``linkname=target`` (archive-relative), size 0."""

    path: str | bytes
    target: str | bytes


@dataclass
class Whiteout:
    """Deletes ``path`` from lower layers: written as ``DIR/.wh.NAME`` (empty file, mode
    0600 as docker writes it). A trailing ``/`` on ``path`` is ignored."""

    path: str | bytes


@dataclass
class Opaque:
    """Makes ``dir`` opaque: written as ``DIR/.wh..wh..opq`` (empty file, mode 0755 as
    docker writes it). ``""`` gives the bare root marker ``.wh..wh..opq``; ``"."`` gives
    ``./.wh..wh..opq`` (also the root, before normalisation)."""

    dir: str | bytes


@dataclass
class Fifo:
    """A named pipe (typeflag ``6``)."""

    path: str | bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME


@dataclass
class Device:
    """A character (``kind="c"``) or block (``kind="b"``) device node."""

    path: str | bytes
    kind: str
    major: int
    minor: int
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME


@dataclass
class Raw:
    """Any header at all, written without ``tarfile`` and without validation.

    ``name``/``linkname`` longer than 100 bytes go into PAX ``path``/``linkpath`` records
    (GNU ``L``/``K`` entries in a ``format="gnu"`` layer) unless ``pax`` already sets them;
    the header field then holds the first 100 bytes. ``pax`` adds a PAX ``x`` header with
    exactly these records, in this order (``pax={}`` writes an empty one). ``size``
    overrides the header size field (to lie; the data written is still ``data`` padded to
    512). Numbers that do not fit octal are written base-256 (GNU), negative ones too.

    Beyond the documented API, for EDGE-CASES 16/20/63 and checksum tests: ``uname``,
    ``gname``, ``prefix`` (the ustar prefix field, 155 bytes), ``magic`` (8 bytes
    magic+version; default ustar, or GNU in a gnu layer) and ``chksum`` (override).
    """

    name: bytes
    type: bytes = b"0"
    data: bytes = b""
    linkname: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    pax: dict[str | bytes, str | bytes] | None = None
    size: int | None = None
    devmajor: int = 0
    devminor: int = 0
    uname: bytes = b""
    gname: bytes = b""
    prefix: bytes = b""
    magic: bytes | None = None
    chksum: int | None = None


@dataclass
class Sparse:
    """A GNU sparse file (EDGE-CASES 18): ``size`` bytes, zero except ``chunks``
    (``(offset, data)`` pairs, sorted, not overlapping).

    ``style``: ``"pax1.0"`` (GNU tar ``--posix`` default: header name
    ``GNUSparseFile.0/BASENAME``, map at the start of the data), ``"pax0.1"``
    (``GNU.sparse.map`` record) or ``"gnu-old"`` (typeflag ``S`` with the map in the
    header and extension blocks). A file that ends in a hole gets a final ``(size, 0)``
    map entry, as GNU tar writes it.
    """

    path: str | bytes
    size: int
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    style: str = "pax1.0"


Entry = Union[File, Dir, Symlink, Hardlink, Whiteout, Opaque, Fifo, Device, Raw, Sparse]


@dataclass
class Layer:
    """One layer: its entries (in tar order) and how its blob is stored.

    ``raw`` replaces the whole tar built from ``entries`` (``trailing`` is still
    appended). ``trailing`` goes after the end-of-archive blocks, before compression, and
    so counts in the diff_id (EDGE-CASES 10). ``gzip_members > 1`` splits the stream
    into that many independently compressed members/frames/streams, concatenated (works
    for every compression, named after its main use). ``compressed_trailing`` is appended
    after the compressed stream (NULs after gzip). ``zstd_skippable`` prepends a zstd
    skippable frame, whatever the compression (to test sniffing).
    """

    entries: list[Entry] = field(default_factory=list)
    compression: str = "none"
    format: str = "pax"
    media_type: str | None = None
    raw: bytes | None = None
    trailing: bytes = b""
    gzip_members: int = 1
    compressed_trailing: bytes = b""
    zstd_skippable: bool = False


@dataclass
class ImageSpec:
    """An image: layers bottom to top, and the config fields the converter reads.

    ``history=None`` writes one entry per layer (``"created_by": "layer N"``, N counting
    from 0 like ``layers[N]``); pass a list (with ``"empty_layer": True`` entries if you
    like) to write it verbatim. ``config_overrides`` is applied last (see
    :data:`Override`); give ``bytes`` for a config blob that is not even JSON.
    """

    layers: list[Layer] = field(default_factory=list)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=lambda: [_DEFAULT_PATH_ENV])
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: list[str] = field(default_factory=list)
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None
    history: list[dict[str, Any]] | None = None
    config_overrides: Override = None

    @property
    def platform(self) -> str:
        """``os/arch[/variant]``, as ``--platform`` takes it."""
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)


@dataclass
class BuiltImage:
    """What a writer produced, for assertions.

    ``layer_digests`` are the digests of the blobs as stored (compressed if so), in
    manifest order; ``diff_ids`` those of the uncompressed tars. ``manifest_digest`` is
    ``None`` for legacy/skopeo docker archives (they have no manifest blob).
    ``index_digest`` is the digest of the image index that ``index.json`` points at
    (multiarch/nested layouts), else ``None``.
    """

    path: Path
    manifest_digest: str | None
    config_digest: str
    diff_ids: list[str]
    layer_digests: list[str]
    ref: str | None
    index_digest: str | None = None
    platform: str = "linux/amd64"


# --------------------------------------------------------------------------- helpers


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def _bytes(value: str | bytes) -> bytes:
    """Names as bytes; ``str`` names with surrogate escapes round-trip to their bytes."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _text(value: str | bytes) -> str:
    """Names as ``str`` for ``tarfile`` (which re-encodes with surrogateescape)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def _json(obj: Any) -> bytes:
    """Compact JSON in the document's own key order (as Go writes structs), UTF-8."""
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is DELETE:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _apply_override(document: Any, override: Override) -> Any:
    """Apply an :data:`Override` to a JSON document (dict or list); may return bytes."""
    if override is None:
        return document
    if isinstance(override, (bytes, bytearray)):
        return bytes(override)
    if callable(override):
        return override(copy.deepcopy(document))
    if isinstance(override, Mapping):
        if isinstance(document, dict):
            return _deep_merge(document, override)
        if isinstance(document, list):  # docker manifest.json: merge into every entry
            return [_deep_merge(item, override) for item in document]
    return copy.deepcopy(override)


# --------------------------------------------------------------------------- tar writing


def _number(value: int, width: int) -> bytes:
    """A numeric header field: octal when it fits, else GNU base-256 (negative too)."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    limit = 256 ** (width - 1)
    if 0 <= value < limit:
        return b"\x80" + value.to_bytes(width - 1, "big")
    if -limit <= value < 0:
        return (256**width + value).to_bytes(width, "big")  # first byte is 0xff
    raise ValueError(f"{value} does not fit a {width}-byte tar number field")


def _header_block(
    *,
    name: bytes,
    typeflag: bytes,
    size: int,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = FIXED_MTIME,
    linkname: bytes = b"",
    magic: bytes = _POSIX_MAGIC,
    uname: bytes = b"",
    gname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    tail: bytes = b"",
    chksum: int | None = None,
) -> bytes:
    """One raw 512-byte header. ``tail`` fills bytes 345.. (ustar prefix, or the GNU
    fields holding old-style sparse maps). Fields longer than their slot are an error:
    truncating silently would hide a mistake in a test."""
    block = bytearray(BLOCK)

    def put(offset: int, width: int, value: bytes, what: str) -> None:
        if len(value) > width:
            raise ValueError(f"{what} is {len(value)} bytes, the field holds {width}")
        block[offset : offset + len(value)] = value

    put(0, 100, name, "name")
    put(100, 8, _number(mode, 8), "mode")
    put(108, 8, _number(uid, 8), "uid")
    put(116, 8, _number(gid, 8), "gid")
    put(124, 12, _number(size, 12), "size")
    put(136, 12, _number(mtime, 12), "mtime")
    put(156, 1, typeflag, "typeflag")
    put(157, 100, linkname, "linkname")
    put(257, 8, magic, "magic")
    put(265, 32, uname, "uname")
    put(297, 32, gname, "gname")
    put(329, 8, _number(devmajor, 8), "devmajor")
    put(337, 8, _number(devminor, 8), "devminor")
    put(345, 167, tail, "prefix/tail")
    block[148:156] = b" " * 8
    if chksum is None:
        chksum = sum(block)
    block[148:156] = b"%06o\0 " % chksum
    return bytes(block)


def pax_records(records: Mapping[str | bytes, str | bytes] | Iterable[tuple[str | bytes, str | bytes]]) -> bytes:
    """Encode PAX records (``"%d %s=%s\\n"``, the length counting itself). Values are
    written as raw bytes (``str`` as UTF-8): binary xattr values go in as they are, the
    way Go's archive/tar writes them. Useful for ``Raw(type=b"g", data=...)``."""
    items = records.items() if isinstance(records, Mapping) else records
    out = []
    for key, value in items:
        body = _bytes(key) + b"=" + _bytes(value) + b"\n"
        length = len(body) + 1  # +1 for the space
        total = length + len(str(length))
        while total != length + len(str(total)):
            total = length + len(str(total))
        out.append(b"%d " % total + body)
    return b"".join(out)


def _pax_header(records: bytes, magic: bytes = _POSIX_MAGIC, typeflag: bytes = b"x") -> bytes:
    # Same placeholder name tarfile uses for PAX headers.
    return _header_block(name=b"././@PaxHeader", typeflag=typeflag, size=len(records), mode=0o644, magic=magic) + _pad(records)


def _gnu_long(kind: bytes, value: bytes) -> bytes:
    """A GNU ``L``/``K`` entry carrying a long name/link (NUL-terminated, as GNU tar)."""
    data = value + b"\0"
    return _header_block(name=b"././@LongLink", typeflag=kind, size=len(data), mode=0o644, mtime=0, magic=_GNU_MAGIC) + _pad(data)


class _VerbatimTarInfo(tarfile.TarInfo):
    """``TarInfo`` that writes the name exactly as given: stock ``tarfile`` appends ``/``
    to directory names, and the tests need to control that."""

    def get_info(self) -> dict[str, Any]:  # type: ignore[override]
        info = super().get_info()
        info["name"] = self.name
        return info


def _tarinfo_buf(
    path: str | bytes,
    typeflag: bytes,
    fmt: str,
    *,
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = FIXED_MTIME,
    linkname: str | bytes = "",
    xattrs: Mapping[str, bytes] | None = None,
    devmajor: int = 0,
    devminor: int = 0,
    uname: str = "",
    gname: str = "",
) -> bytes:
    """Header block(s) of an ordinary entry, serialised by ``tarfile`` in ``fmt``."""
    info = _VerbatimTarInfo(_text(path))
    info.type = typeflag
    info.size = size
    info.mode = mode
    info.uid = uid
    info.gid = gid
    info.mtime = mtime
    info.linkname = _text(linkname)
    info.devmajor = devmajor
    info.devminor = devminor
    info.uname = uname
    info.gname = gname
    if xattrs:
        if fmt != "pax":
            raise ValueError(f"xattrs need PAX records; a {fmt!r} layer cannot hold them ({path!r})")
        # tarfile writes values with surrogates (binary) under hdrcharset=BINARY.
        info.pax_headers = {
            "SCHILY.xattr." + key: value.decode("utf-8", "surrogateescape") for key, value in sorted(xattrs.items())
        }
    return _drop_hdrcharset(info.tobuf(_TAR_FORMATS[fmt], encoding="utf-8", errors="surrogateescape"))


_HDRCHARSET_BINARY = b"21 hdrcharset=BINARY\n"


def _drop_hdrcharset(buf: bytes) -> bytes:
    """Remove the ``hdrcharset=BINARY`` record ``tarfile`` puts first in a PAX header
    whose values are not UTF-8 (binary xattrs, non-UTF-8 names), keeping the raw bytes.

    Go's archive/tar and GNU tar write such values raw without it, and GNU tar warns
    about it ("Ignoring unknown extended header keyword"); generated layers should look
    like real ones. Tests that want the record can write it with ``Raw(pax=...)``."""
    if buf[156:157] != tarfile.XHDTYPE or buf[BLOCK : BLOCK + len(_HDRCHARSET_BINARY)] != _HDRCHARSET_BINARY:
        return buf
    size = int(buf[124:136].rstrip(b"\0"), 8)
    records = buf[BLOCK + len(_HDRCHARSET_BINARY) : BLOCK + size]
    rest = buf[BLOCK + size + (-size % BLOCK) :]
    header = bytearray(buf[:BLOCK])
    header[124:136] = _number(len(records), 12)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + _pad(records) + rest


def _marker_path(parent: bytes, marker: bytes) -> bytes:
    if parent == b"":
        return marker
    return parent + (b"" if parent.endswith(b"/") else b"/") + marker


def _whiteout_name(path: str | bytes) -> bytes:
    raw = _bytes(path).rstrip(b"/")
    head, sep, base = raw.rpartition(b"/")
    return head + sep + _WH + base


def _raw_chunks(raw: Raw, fmt: str) -> list[bytes]:
    magic = raw.magic if raw.magic is not None else (_GNU_MAGIC if fmt == "gnu" else _POSIX_MAGIC)
    user_pax = [(_bytes(k), _bytes(v)) for k, v in (raw.pax or {}).items()]
    user_keys = {k for k, _ in user_pax}
    auto_pax: list[tuple[bytes, bytes]] = []
    longs: list[bytes] = []
    name, linkname = raw.name, raw.linkname
    for value, pax_key, gnu_kind in ((name, b"path", b"L"), (linkname, b"linkpath", b"K")):
        if len(value) <= 100:
            continue
        if fmt == "gnu":
            longs.append(_gnu_long(gnu_kind, value))
        elif pax_key not in user_keys:
            auto_pax.append((pax_key, value))
    chunks: list[bytes] = []
    if auto_pax or raw.pax is not None:
        chunks.append(_pax_header(pax_records(auto_pax + user_pax), magic=_POSIX_MAGIC))
    chunks.extend(longs)
    chunks.append(
        _header_block(
            name=name[:100],
            typeflag=raw.type,
            size=len(raw.data) if raw.size is None else raw.size,
            mode=raw.mode,
            uid=raw.uid,
            gid=raw.gid,
            mtime=raw.mtime,
            linkname=linkname[:100],
            magic=magic,
            uname=raw.uname,
            gname=raw.gname,
            devmajor=raw.devmajor,
            devminor=raw.devminor,
            tail=raw.prefix,
            chksum=raw.chksum,
        )
    )
    chunks.append(_pad(raw.data))
    return chunks


def _sparse_regions(entry: Sparse) -> list[tuple[int, bytes]]:
    """The data regions to store: each chunk widened with zeros to whole 512-byte blocks
    (clipped at the file size), neighbours that then touch merged.

    Why: GNU tar reads every region as whole blocks while ``tarfile`` reads regions back
    to back; they agree only when every region but the last is a multiple of 512 long,
    which is what GNU tar itself always writes. The file content is unchanged."""
    regions: list[tuple[int, bytes]] = []
    end = 0
    for offset, data in entry.chunks:
        if offset < end or offset + len(data) > entry.size:
            raise ValueError(f"sparse chunks of {entry.path!r} overlap, are unsorted or exceed size")
        end = offset + len(data)
        if regions and regions[-1][0] + len(regions[-1][1]) >= offset:
            start, previous = regions.pop()
            data = previous[: offset - start] + data
            offset = start
        regions.append((offset, data))
        padded = min(offset + len(data) + (-len(data) % BLOCK), entry.size)
        regions[-1] = (offset, data + b"\0" * (padded - offset - len(data)))
    return regions


def _sparse_chunks(entry: Sparse, fmt: str) -> list[bytes]:
    stored = _sparse_regions(entry)
    regions = [(offset, len(data)) for offset, data in stored]
    if not regions or regions[-1][0] + regions[-1][1] < entry.size:
        regions.append((entry.size, 0))  # GNU tar marks a trailing hole this way
    payload = b"".join(data for _, data in stored)
    path = _bytes(entry.path)
    common = dict(mode=entry.mode, uid=entry.uid, gid=entry.gid, mtime=entry.mtime)

    if entry.style == "pax1.0":
        sparse_map = _pad(b"".join(b"%d\n" % n for n in [len(regions)] + [n for r in regions for n in r]))
        records = pax_records(
            [
                ("GNU.sparse.major", "1"),
                ("GNU.sparse.minor", "0"),
                ("GNU.sparse.name", path),
                ("GNU.sparse.realsize", str(entry.size)),
            ]
        )
        base = path.rstrip(b"/").rpartition(b"/")[2]
        header = _header_block(name=(b"GNUSparseFile.0/" + base)[:100], typeflag=b"0", size=len(sparse_map) + len(payload), **common)
        return [_pax_header(records), header, sparse_map, _pad(payload)]

    if entry.style == "pax0.1":
        records = [
            ("GNU.sparse.size", str(entry.size)),
            ("GNU.sparse.numblocks", str(len(regions))),
            ("GNU.sparse.map", ",".join(str(n) for r in regions for n in r)),
        ]
        if len(path) > 100:
            records.insert(0, ("path", path))
        header = _header_block(name=path[:100], typeflag=b"0", size=len(payload), **common)
        return [_pax_header(pax_records(records)), header, _pad(payload)]

    if entry.style == "gnu-old":
        def struct_bytes(items: Sequence[tuple[int, int]], slots: int) -> bytes:
            out = b"".join(_number(o, 12) + _number(n, 12) for o, n in items)
            return out + b"\0" * (24 * (slots - len(items)))

        first, rest = regions[:4], regions[4:]
        extensions = [rest[i : i + 21] for i in range(0, len(rest), 21)]
        tail = (
            b"\0" * 41  # atime, ctime, offset, longnames, unused
            + struct_bytes(first, 4)
            + (b"\x01" if extensions else b"\0")
            + _number(entry.size, 12)
        )
        chunks = [_gnu_long(b"L", path)] if len(path) > 100 else []
        chunks.append(_header_block(name=path[:100], typeflag=b"S", size=len(payload), magic=_GNU_MAGIC, tail=tail, **common))
        for i, group in enumerate(extensions):
            more = b"\x01" if i + 1 < len(extensions) else b"\0"
            chunks.append(struct_bytes(group, 21) + more + b"\0" * 7)
        chunks.append(_pad(payload))
        return chunks

    raise ValueError(f"unknown sparse style {entry.style!r} (pax1.0, pax0.1, gnu-old)")


def _entry_chunks(entry: Entry, fmt: str) -> list[bytes]:
    """The bytes of one entry (headers, data, padding) in a layer of format ``fmt``."""
    if isinstance(entry, File):
        if entry.type not in (b"0", b"\0", b"7"):
            raise ValueError(f"File type must be b'0', b'\\0' or b'7', not {entry.type!r}: use Raw")
        header = _tarinfo_buf(
            entry.path, entry.type, fmt, size=len(entry.data), mode=entry.mode, uid=entry.uid,
            gid=entry.gid, mtime=entry.mtime, xattrs=entry.xattrs,
        )
        return [header, _pad(entry.data)]
    if isinstance(entry, Dir):
        return [_tarinfo_buf(entry.path, tarfile.DIRTYPE, fmt, mode=entry.mode, uid=entry.uid, gid=entry.gid, mtime=entry.mtime, xattrs=entry.xattrs)]
    if isinstance(entry, Symlink):
        return [_tarinfo_buf(entry.path, tarfile.SYMTYPE, fmt, mode=0o777, uid=entry.uid, gid=entry.gid, mtime=entry.mtime, linkname=entry.target)]
    if isinstance(entry, Hardlink):
        return [_tarinfo_buf(entry.path, tarfile.LNKTYPE, fmt, linkname=entry.target)]
    if isinstance(entry, Whiteout):
        return [_tarinfo_buf(_whiteout_name(entry.path), tarfile.REGTYPE, fmt, mode=_WHITEOUT_MODE)]
    if isinstance(entry, Opaque):
        return [_tarinfo_buf(_marker_path(_bytes(entry.dir), _OPQ), tarfile.REGTYPE, fmt, mode=_OPAQUE_MODE)]
    if isinstance(entry, Fifo):
        return [_tarinfo_buf(entry.path, tarfile.FIFOTYPE, fmt, mode=entry.mode, uid=entry.uid, gid=entry.gid, mtime=entry.mtime)]
    if isinstance(entry, Device):
        kinds = {"c": tarfile.CHRTYPE, "b": tarfile.BLKTYPE}
        if entry.kind not in kinds:
            raise ValueError(f"Device kind must be 'c' or 'b', not {entry.kind!r}")
        return [
            _tarinfo_buf(
                entry.path, kinds[entry.kind], fmt, mode=entry.mode, uid=entry.uid, gid=entry.gid,
                mtime=entry.mtime, devmajor=entry.major, devminor=entry.minor,
            )
        ]
    if isinstance(entry, Raw):
        return _raw_chunks(entry, fmt)
    if isinstance(entry, Sparse):
        return _sparse_chunks(entry, fmt)
    raise TypeError(f"not a layer entry: {entry!r}")


# --------------------------------------------------------------------------- layers


def layer_tar(layer: Layer) -> bytes:
    """The uncompressed tar of ``layer``: entries, two zero blocks (no padding to a
    10 KiB record, as Go's archive/tar writes layers), then ``trailing``. Its sha256 is
    the layer's diff_id."""
    if layer.raw is not None:
        return layer.raw + layer.trailing
    if layer.format not in _TAR_FORMATS:
        raise ValueError(f"unknown tar format {layer.format!r} (pax, gnu, ustar)")
    chunks: list[bytes] = []
    for entry in layer.entries:
        chunks.extend(_entry_chunks(entry, layer.format))
    chunks.append(EMPTY_LAYER_TAR)
    chunks.append(layer.trailing)
    return b"".join(chunks)


def _gzip_member(data: bytes, level: int = 6) -> bytes:
    """One gzip member with a fixed header (mtime 0, no name, OS 255 'unknown'), built
    by hand so the bytes do not depend on the ``gzip`` module's header choices."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(data) + compressor.flush()
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    header = b"\x1f\x8b\x08\x00" + b"\0\0\0\0" + bytes([xfl, 255])
    return header + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def _compress_one(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return _gzip_member(data)
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True).compress(data)
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)
    if kind == "bzip2":
        return bz2.compress(data, 9)
    if kind == "none":
        return data
    raise ValueError(f"unknown compression {kind!r} ({', '.join(COMPRESSIONS)})")


def compress(data: bytes, kind: str, *, members: int = 1) -> bytes:
    """Deterministically compress ``data`` with ``kind`` (none, gzip, zstd, xz, bzip2).
    ``members > 1`` splits the input evenly into that many independently compressed
    members (gzip members, zstd frames, xz/bzip2 streams), concatenated."""
    if members < 1:
        raise ValueError("members must be >= 1")
    if members == 1 or kind == "none":
        if kind == "none" and members != 1:
            raise ValueError("members > 1 needs a compression")
        return _compress_one(data, kind)
    bounds = [len(data) * i // members for i in range(members + 1)]
    return b"".join(_compress_one(data[bounds[i] : bounds[i + 1]], kind) for i in range(members))


_SKIPPABLE_PAYLOAD = b"imagegen"
ZSTD_SKIPPABLE_FRAME = b"\x50\x2a\x4d\x18" + struct.pack("<I", len(_SKIPPABLE_PAYLOAD)) + _SKIPPABLE_PAYLOAD
"""The frame ``Layer(zstd_skippable=True)`` prepends (magic ``50 2a 4d 18``)."""


def layer_blob(layer: Layer) -> bytes:
    """The layer's blob as stored: ``layer_tar`` compressed per ``layer.compression``,
    with the skippable frame and ``compressed_trailing`` if asked. Its sha256 is the
    layer digest in manifests."""
    return _blob_of(layer, layer_tar(layer))


def _blob_of(layer: Layer, tar: bytes) -> bytes:
    blob = compress(tar, layer.compression, members=layer.gzip_members)
    if layer.zstd_skippable:
        blob = ZSTD_SKIPPABLE_FRAME + blob
    return blob + layer.compressed_trailing


def layer_media_type(layer: Layer, *, docker: bool = False) -> str:
    """The descriptor media type: ``layer.media_type`` if set (to lie), else the OCI (or
    docker schema2) type for the compression; xz/bzip2 get the plain tar type."""
    if layer.media_type is not None:
        return layer.media_type
    table = _DOCKER_LAYER_TYPES if docker else _OCI_LAYER_TYPES
    if layer.compression not in table:
        raise ValueError(f"unknown compression {layer.compression!r}")
    return table[layer.compression]


@dataclass
class _BuiltLayer:
    """A layer's bytes computed once per writer call."""

    layer: Layer
    tar: bytes
    blob: bytes
    diff_id: str
    digest: str


class _LayerCache:
    """Builds each distinct ``Layer`` object once per writer call (a spec may reuse one
    object at several positions, EDGE-CASES 6; benchmark layers are big)."""

    def __init__(self) -> None:
        self._built: dict[int, _BuiltLayer] = {}

    def get(self, layer: Layer) -> _BuiltLayer:
        built = self._built.get(id(layer))
        if built is None:
            tar = layer_tar(layer)
            blob = _blob_of(layer, tar)
            built = _BuiltLayer(layer, tar, blob, sha256_digest(tar), sha256_digest(blob))
            self._built[id(layer)] = built
        return built


# --------------------------------------------------------------------------- config


def config_json(spec: ImageSpec, diff_ids: Sequence[str]) -> Any:
    """The image config document (before ``config_overrides``), in the OCI field order
    (container config keys in docker's order); empty optional fields are left out."""
    cfg: dict[str, Any] = {"created": _CREATED, "architecture": spec.architecture, "os": spec.os}
    if spec.variant:
        cfg["variant"] = spec.variant
    inner: dict[str, Any] = {}
    if spec.user:
        inner["User"] = spec.user
    if spec.exposed_ports:
        inner["ExposedPorts"] = {port: {} for port in sorted(spec.exposed_ports)}
    if spec.env:
        inner["Env"] = list(spec.env)
    if spec.entrypoint is not None:
        inner["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd is not None:
        inner["Cmd"] = list(spec.cmd)
    if spec.working_dir:
        inner["WorkingDir"] = spec.working_dir
    if spec.labels:
        inner["Labels"] = dict(sorted(spec.labels.items()))
    cfg["config"] = inner
    cfg["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    if spec.history is None:
        cfg["history"] = [{"created": _CREATED, "created_by": f"layer {i}"} for i in range(len(spec.layers))]
    else:
        cfg["history"] = copy.deepcopy(spec.history)
    return _apply_override(cfg, spec.config_overrides)


@dataclass
class _BuiltSpec:
    spec: ImageSpec
    layers: list[_BuiltLayer]
    config: Any  # the document (dict), or bytes when overridden with bytes
    config_bytes: bytes
    config_digest: str

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]


def _build_spec(spec: ImageSpec, cache: _LayerCache) -> _BuiltSpec:
    layers = [cache.get(layer) for layer in spec.layers]
    config = config_json(spec, [layer.diff_id for layer in layers])
    data = _json(config)
    return _BuiltSpec(spec, layers, config, data, sha256_digest(data))


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), **extra}


# --------------------------------------------------------------------------- archive writing


@dataclass
class _Member:
    """A member of an outer archive (docker save / oci-archive)."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    mode: int = 0o644
    mtime: int = FIXED_MTIME
    uname: str = ""
    gname: str = ""


class _StreamCompressor:
    """Compresses a stream chunk by chunk into a file, with the same fixed settings as
    :func:`compress`, so large archives never sit in memory twice."""

    def __init__(self, out: BinaryIO, kind: str) -> None:
        self.out, self.kind = out, kind
        self.crc, self.length = 0, 0
        if kind == "gzip":
            self.comp: Any = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            out.write(b"\x1f\x8b\x08\x00\0\0\0\0\x00\xff")
        elif kind == "zstd":
            self.comp = zstandard.ZstdCompressor(level=3, write_checksum=True).compressobj()
        elif kind == "xz":
            self.comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)
        elif kind == "bzip2":
            self.comp = bz2.BZ2Compressor(9)
        elif kind == "none":
            self.comp = None
        else:
            raise ValueError(f"unknown compression {kind!r} ({', '.join(COMPRESSIONS)})")

    def write(self, data: bytes) -> None:
        if self.comp is None:
            self.out.write(data)
            return
        if self.kind == "gzip":
            self.crc = zlib.crc32(data, self.crc)
            self.length += len(data)
        self.out.write(self.comp.compress(data))

    def close(self) -> None:
        if self.comp is None:
            return
        self.out.write(self.comp.flush())
        if self.kind == "gzip":
            self.out.write(struct.pack("<II", self.crc, self.length & 0xFFFFFFFF))


def _write_archive(path: Path, members: Iterable[_Member], extra: Iterable[Raw], compression: str) -> None:
    """Write an outer tar (PAX via ``tarfile`` for members, raw for ``extra``), ended by
    two zero blocks, optionally compressed as a whole (``docker save | gzip``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        sink = _StreamCompressor(out, compression)
        for member in members:
            sink.write(
                _tarinfo_buf(
                    member.name, member.type, "pax", size=len(member.data), mode=member.mode,
                    mtime=member.mtime, linkname=member.linkname, uname=member.uname, gname=member.gname,
                )
            )
            if member.data:
                sink.write(_pad(member.data))
        for raw in extra:
            for chunk in _raw_chunks(raw, "pax"):
                sink.write(chunk)
        sink.write(EMPTY_LAYER_TAR)
        sink.close()


def _sort_key(name: str) -> list[str]:
    """Directory-walk order: by path components, so ``d/`` precedes ``d/x``."""
    return name.rstrip("/").split("/")


def _split_ref(ref: str) -> tuple[str, str]:
    """``repo[:tag]`` → (repo, tag); a ``:`` inside the registry host is not a tag."""
    name, sep, tag = ref.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return ref, "latest"


def _normalize_ref(ref: str) -> str:
    """docker's familiar-name expansion (``app:1`` → ``docker.io/library/app:1``) for
    the ``io.containerd.image.name`` annotation Docker 25 writes."""
    repo, tag = _split_ref(ref.split("@", 1)[0])
    first = repo.split("/", 1)[0]
    if "/" not in repo:
        repo = "docker.io/library/" + repo
    elif not ("." in first or ":" in first or first == "localhost"):
        repo = "docker.io/" + repo
    return f"{repo}:{tag}"


def _v1_id(chain: Sequence[str], parent: str, config_digest: str | None) -> str:
    """A deterministic v1 layer id. Like docker's, it depends on the chain of diff_ids
    below and including the layer (so images sharing a base share its directory) and,
    for the top layer, on the config (so different images get different top dirs)."""
    seed = _json({"chain": list(chain), "parent": parent, "config": config_digest})
    return hashlib.sha256(seed).hexdigest()


def _v1_json(v1: str, parent: str, top: bool, built: _BuiltSpec, *, short: bool) -> bytes:
    doc: dict[str, Any] = {"id": v1}
    if parent:
        doc["parent"] = parent
    if not short or top:
        doc["created"] = _CREATED
    if top and isinstance(built.config, dict):
        for key in ("architecture", "os", "config"):
            if key in built.config:
                doc[key] = built.config[key]
    return _json(doc)


_Results = list[tuple[dict[str, Any], tuple[str | None, list[str]]]]
"""Per image: its manifest.json entry, and (OCI manifest digest or None, stored layer digests)."""


def _normalize_images(images: Any, default: Any, what: str) -> tuple[list[tuple[ImageSpec, Any]], bool]:
    if isinstance(images, ImageSpec):
        return [(images, default)], True
    if default is not None:
        raise ValueError(f"{what}= only applies to a single ImageSpec; pass (spec, {what}) pairs instead")
    return [(spec, value) for spec, value in images], False


def write_docker_archive(
    path: str | os.PathLike[str],
    images: Sequence[tuple[ImageSpec, Sequence[str] | str | None]] | ImageSpec,
    *,
    tags: Sequence[str] | str | None = None,
    style: str = "legacy",
    layer_links: str = "none",
    outer_compression: str = "none",
    manifest_override: Override = None,
    index_override: Override = None,
    extra_members: Sequence[Raw] = (),
) -> BuiltImage | list[BuiltImage]:
    """Write a ``docker save`` archive of one or several images.

    ``style``: ``"legacy"`` (docker < 25: ``<v1id>/{VERSION,json,layer.tar}``,
    ``<confighex>.json``, ``manifest.json``, ``repositories``, members in directory-walk
    order), ``"skopeo"`` (containers/image: ``<hex>.tar`` at the top, ``<v1id>/layer.tar``
    symlinks to them), ``"docker25"`` (OCI layout + ``manifest.json``, layers stored
    uncompressed at ``blobs/sha256/<diffid>``) or ``"containerd"`` (the same with each
    layer stored as its compressed blob, EDGE-CASES 4). Legacy and skopeo store each
    layer's blob as built, so leave ``Layer.compression`` at ``"none"`` for a faithful
    save and set it to test sniffing (EDGE-CASES 9).

    ``layer_links`` (legacy): ``"symlink"``/``"hardlink"`` stores every repeat of a
    diff_id as a link member (``../<id>/layer.tar`` / ``<id>/layer.tar``) to its first
    occurrence in archive order (EDGE-CASES 2). ``manifest_override`` applies to
    ``manifest.json`` (a dict is merged into every entry); ``index_override`` to
    ``index.json`` (docker25/containerd). ``extra_members`` are appended raw.
    Returns one ``BuiltImage`` per image (a single one for a single ``ImageSpec``).
    """
    if style not in ("legacy", "skopeo", "docker25", "containerd"):
        raise ValueError(f"unknown docker archive style {style!r}")
    if layer_links not in ("none", "symlink", "hardlink"):
        raise ValueError(f"unknown layer_links {layer_links!r}")
    if layer_links != "none" and style != "legacy":
        raise ValueError("layer_links applies to style='legacy' only (skopeo always links)")
    if index_override is not None and style in ("legacy", "skopeo"):
        raise ValueError(f"style {style!r} has no index.json to override")
    pairs, single = _normalize_images(images, tags, "tags")
    cache = _LayerCache()
    entries = [(_build_spec(spec, cache), [t] if isinstance(t, str) else list(t or [])) for spec, t in pairs]
    out = Path(path)
    writer = {"legacy": _docker_legacy, "skopeo": _docker_skopeo, "docker25": _docker_oci, "containerd": _docker_oci}[style]
    members, results = writer(entries, style=style, layer_links=layer_links, index_override=index_override)
    manifest = _Member("manifest.json", _json(_apply_override([m for m, _ in results], manifest_override)))
    # Tools write manifest.json just before repositories (order matters for skopeo's
    # unsorted layout only; the others are sorted afterwards).
    at = next((i for i, m in enumerate(members) if m.name == "repositories"), len(members))
    members.insert(at, manifest)
    members = _finish_members(members, style)
    _write_archive(out, members, extra_members, outer_compression)
    built = [
        BuiltImage(out, manifest_digest, b.config_digest, b.diff_ids, digests, tag_list[0] if tag_list else None, platform=b.spec.platform)
        for (b, tag_list), (_, (manifest_digest, digests)) in zip(entries, results)
    ]
    return built[0] if single else built


def _finish_members(members: list[_Member], style: str) -> list[_Member]:
    """Order and attribute members the way each tool writes them."""
    if style == "skopeo":
        # containers/image: written in creation order, mode 0444, mtime 0, no owner names,
        # no directory entries.
        for m in members:
            m.mtime = 0
            if m.type == tarfile.REGTYPE:
                m.mode = 0o444
            elif m.type == tarfile.SYMTYPE:
                m.mode = 0  # as in real skopeo/podman archives ("l---------")
        return members
    # docker: a tar of a directory tree, in walk order, owned by root.
    for m in members:
        m.uname = m.gname = "root"
    return sorted(members, key=lambda m: _sort_key(m.name))


def _repositories(entries: list[tuple[_BuiltSpec, list[str]]], top_ids: list[str]) -> bytes | None:
    repos: dict[str, dict[str, str]] = {}
    for (_, tag_list), top in zip(entries, top_ids):
        for ref in tag_list:
            if "@" in ref:
                continue
            repo, tag = _split_ref(ref)
            repos.setdefault(repo, {})[tag] = top
    if not repos:
        return None
    return _json({repo: dict(sorted(tags.items())) for repo, tags in sorted(repos.items())})


def _docker_legacy(entries: list[tuple[_BuiltSpec, list[str]]], *, layer_links: str, **_: Any) -> tuple[list[_Member], _Results]:
    members: dict[str, _Member] = {}
    results: _Results = []
    top_ids: list[str] = []
    layer_members: list[tuple[str, str]] = []  # (member name, diff_id) of every layer.tar
    for built, tag_list in entries:
        parent, chain, paths = "", [], []
        for i, layer in enumerate(built.layers):
            chain.append(layer.diff_id)
            top = i == len(built.layers) - 1
            v1 = _v1_id(chain, parent, built.config_digest if top else None)
            if f"{v1}/" not in members:
                members[f"{v1}/"] = _Member(f"{v1}/", type=tarfile.DIRTYPE, mode=0o755)
                members[f"{v1}/VERSION"] = _Member(f"{v1}/VERSION", b"1.0")
                members[f"{v1}/json"] = _Member(f"{v1}/json", _v1_json(v1, parent, top, built, short=False))
                members[f"{v1}/layer.tar"] = _Member(f"{v1}/layer.tar", layer.blob)
                layer_members.append((f"{v1}/layer.tar", layer.digest))
            paths.append(f"{v1}/layer.tar")
            parent = v1
        top_ids.append(parent)
        manifest = {"Config": f"{_hex(built.config_digest)}.json", "RepoTags": tag_list or None, "Layers": paths}
        results.append((manifest, (None, [layer.digest for layer in built.layers])))
        members[manifest["Config"]] = _Member(manifest["Config"], built.config_bytes)
    if layer_links != "none":
        first: dict[str, str] = {}
        for name, digest in sorted(layer_members, key=lambda item: _sort_key(item[0])):
            if digest not in first:
                first[digest] = name
                continue
            member = members[name]
            member.data = b""
            if layer_links == "symlink":
                member.type, member.linkname, member.mode = tarfile.SYMTYPE, "../" + first[digest], 0o777
            else:
                member.type, member.linkname = tarfile.LNKTYPE, first[digest]
    repositories = _repositories(entries, top_ids)
    if repositories is not None:
        members["repositories"] = _Member("repositories", repositories)
    return list(members.values()), results


def _docker_skopeo(entries: list[tuple[_BuiltSpec, list[str]]], **_: Any) -> tuple[list[_Member], _Results]:
    blobs: dict[str, _Member] = {}
    configs: dict[str, _Member] = {}
    dirs: dict[str, list[_Member]] = {}
    results: _Results = []
    top_ids: list[str] = []
    for built, tag_list in entries:
        for layer in built.layers:
            name = f"{_hex(layer.digest)}.tar"
            blobs.setdefault(name, _Member(name, layer.blob))
        config_name = f"{_hex(built.config_digest)}.json"
        configs.setdefault(config_name, _Member(config_name, built.config_bytes))
        parent, chain = "", []
        for i, layer in enumerate(built.layers):
            chain.append(layer.diff_id)
            top = i == len(built.layers) - 1
            v1 = _v1_id(chain, parent, built.config_digest if top else None)
            if v1 not in dirs:
                dirs[v1] = [
                    _Member(f"{v1}/layer.tar", type=tarfile.SYMTYPE, linkname=f"../{_hex(layer.digest)}.tar"),
                    _Member(f"{v1}/VERSION", b"1.0"),
                    _Member(f"{v1}/json", _v1_json(v1, parent, top, built, short=True)),
                ]
            parent = v1
        top_ids.append(parent)
        manifest = {"Config": config_name, "RepoTags": tag_list or None, "Layers": [f"{_hex(l.digest)}.tar" for l in built.layers]}
        results.append((manifest, (None, [layer.digest for layer in built.layers])))
    members = [*blobs.values(), *configs.values(), *(m for group in dirs.values() for m in group)]
    repositories = _repositories(entries, top_ids)
    if repositories is not None:
        members.append(_Member("repositories", repositories))
    return members, results


def _docker_oci(entries: list[tuple[_BuiltSpec, list[str]]], *, style: str, index_override: Override, **_: Any) -> tuple[list[_Member], _Results]:
    blobs: dict[str, bytes] = {}
    index_entries: list[dict[str, Any]] = []
    results: _Results = []
    for built, tag_list in entries:
        layer_descs, layer_paths, digests = [], [], []
        for layer in built.layers:
            if style == "docker25":
                data = layer.tar
                media_type = layer.layer.media_type or _OCI_LAYER_TYPES["none"]
            else:
                data = layer.blob
                media_type = layer_media_type(layer.layer)
            digest = sha256_digest(data)
            blobs[_hex(digest)] = data
            layer_descs.append(_descriptor(media_type, data))
            layer_paths.append(f"blobs/sha256/{_hex(digest)}")
            digests.append(digest)
        blobs[_hex(built.config_digest)] = built.config_bytes
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": _descriptor(MT_OCI_CONFIG, built.config_bytes),
            "layers": layer_descs,
        }
        manifest_bytes = _json(manifest)
        manifest_digest = sha256_digest(manifest_bytes)
        blobs[_hex(manifest_digest)] = manifest_bytes
        for ref in tag_list or [None]:
            desc = _descriptor(MT_OCI_MANIFEST, manifest_bytes)
            if ref is not None:
                desc["annotations"] = {"io.containerd.image.name": _normalize_ref(ref), "org.opencontainers.image.ref.name": _split_ref(ref.split("@", 1)[0])[1]}
            index_entries.append(desc)
        docker_manifest = {"Config": f"blobs/sha256/{_hex(built.config_digest)}", "RepoTags": tag_list or None, "Layers": layer_paths}
        results.append((docker_manifest, (manifest_digest, digests)))
    index = _apply_override({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index_entries}, index_override)
    members = [_Member("blobs/", type=tarfile.DIRTYPE, mode=0o755), _Member("blobs/sha256/", type=tarfile.DIRTYPE, mode=0o755)]
    members += [_Member(f"blobs/sha256/{hex_}", data) for hex_, data in blobs.items()]
    members.append(_Member("index.json", _json(index)))
    members.append(_Member("oci-layout", _OCI_LAYOUT_FILE))
    repositories = _repositories(entries, [_hex(b.config_digest) for b, _ in entries])
    if repositories is not None:
        members.append(_Member("repositories", repositories))
    return members, results


# --------------------------------------------------------------------------- OCI layouts

# Exactly what skopeo/buildah write (with the space).
_OCI_LAYOUT_FILE = b'{"imageLayoutVersion": "1.0.0"}'


def _platform(spec: ImageSpec) -> dict[str, str]:
    platform = {"architecture": spec.architecture, "os": spec.os}
    if spec.variant:
        platform["variant"] = spec.variant
    return platform


def _attestation(image_manifest: bytes, blobs: dict[str, bytes]) -> dict[str, Any]:
    """A BuildKit-style attestation manifest for an image (EDGE-CASES 8): platform
    ``unknown/unknown``, one in-toto layer, referencing the image by digest."""
    statement = _json(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": "_", "digest": {"sha256": _hex(sha256_digest(image_manifest))}}],
            "predicate": {},
        }
    )
    config = _json({"architecture": "unknown", "os": "unknown", "config": {}, "rootfs": {"type": "layers", "diff_ids": [sha256_digest(statement)]}})
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": _descriptor(MT_OCI_CONFIG, config),
            "layers": [_descriptor(MT_IN_TOTO, statement, annotations={"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"})],
        }
    )
    for data in (statement, config, manifest):
        blobs[_hex(sha256_digest(data))] = data
    return _descriptor(
        MT_OCI_MANIFEST,
        manifest,
        annotations={
            "vnd.docker.reference.digest": sha256_digest(image_manifest),
            "vnd.docker.reference.type": "attestation-manifest",
        },
        platform={"architecture": "unknown", "os": "unknown"},
    )


def _build_oci(
    images: Any,
    ref: str | None,
    index: str,
    attestations: bool,
    docker_media_types: bool,
    index_override: Override,
    manifest_override: Override,
) -> tuple[dict[str, bytes], list[BuiltImage], bool]:
    """All files of an OCI layout (relative name → bytes) and one BuiltImage per image
    (with a placeholder path)."""
    if index not in ("flat", "multiarch", "nested"):
        raise ValueError(f"unknown index shape {index!r} (flat, multiarch, nested)")
    if attestations and index == "flat":
        raise ValueError("attestations need index='multiarch' or 'nested'")
    # ref= names the single image, or the index that multiarch/nested layouts put first.
    pairs, single = _normalize_images(images, ref if index == "flat" or isinstance(images, ImageSpec) else None, "ref")
    manifest_type = MT_DOCKER_MANIFEST if docker_media_types else MT_OCI_MANIFEST
    config_type = MT_DOCKER_CONFIG if docker_media_types else MT_OCI_CONFIG
    index_type = MT_DOCKER_LIST if docker_media_types else MT_OCI_INDEX
    cache = _LayerCache()
    blobs: dict[str, bytes] = {}
    image_descs: list[dict[str, Any]] = []
    attestation_descs: list[dict[str, Any]] = []
    built: list[BuiltImage] = []
    for spec, image_ref in pairs:
        b = _build_spec(spec, cache)
        layer_descs = []
        for layer in b.layers:
            blobs[_hex(layer.digest)] = layer.blob
            layer_descs.append(_descriptor(layer_media_type(layer.layer, docker=docker_media_types), layer.blob))
        blobs[_hex(b.config_digest)] = b.config_bytes
        manifest = {"schemaVersion": 2, "mediaType": manifest_type, "config": _descriptor(config_type, b.config_bytes), "layers": layer_descs}
        manifest_bytes = _json(_apply_override(manifest, manifest_override))
        manifest_digest = sha256_digest(manifest_bytes)
        blobs[_hex(manifest_digest)] = manifest_bytes
        desc = _descriptor(manifest_type, manifest_bytes)
        if index == "flat":
            if image_ref is not None:
                desc["annotations"] = {"org.opencontainers.image.ref.name": image_ref}
        else:
            desc["platform"] = _platform(spec)
            if attestations:
                attestation_descs.append(_attestation(manifest_bytes, blobs))
        image_descs.append(desc)
        built.append(BuiltImage(Path(), manifest_digest, b.config_digest, b.diff_ids, [l.digest for l in b.layers], image_ref, platform=spec.platform))

    index_digest = None
    if index == "flat":
        top_entries = image_descs
    else:
        top_ref = ref if ref is not None else next((r for _, r in pairs if r is not None), None)
        inner = _json({"schemaVersion": 2, "mediaType": index_type, "manifests": image_descs + attestation_descs})
        blobs[_hex(sha256_digest(inner))] = inner
        outer = inner
        if index == "nested":
            outer = _json({"schemaVersion": 2, "mediaType": index_type, "manifests": [_descriptor(index_type, inner)]})
            blobs[_hex(sha256_digest(outer))] = outer
        top = _descriptor(index_type, outer)
        if top_ref is not None:
            top["annotations"] = {"org.opencontainers.image.ref.name": top_ref}
        top_entries = [top]
        index_digest = top["digest"]
        for image in built:
            image.ref, image.index_digest = top_ref, index_digest
    index_json = _apply_override({"schemaVersion": 2, "manifests": top_entries}, index_override)
    files = {"oci-layout": _OCI_LAYOUT_FILE, "index.json": _json(index_json)}
    files.update({f"blobs/sha256/{hex_}": data for hex_, data in blobs.items()})
    return files, built, single


def write_oci_layout(
    dir: str | os.PathLike[str],
    images: Sequence[tuple[ImageSpec, str | None]] | ImageSpec,
    *,
    ref: str | None = None,
    index: str = "flat",
    attestations: bool = False,
    docker_media_types: bool = False,
    index_override: Override = None,
    manifest_override: Override = None,
) -> BuiltImage | list[BuiltImage]:
    """Write an OCI image layout directory (``oci-layout``, ``index.json``,
    ``blobs/sha256/<hex>``).

    ``index``: ``"flat"`` (one ``index.json`` entry per image, annotated
    ``org.opencontainers.image.ref.name`` when it has a ref, no platform, as skopeo
    writes), ``"multiarch"`` (``index.json`` → one image index annotated with ``ref``
    (or the first per-image ref) listing every image with its platform, plus BuildKit
    attestation manifests when ``attestations``), ``"nested"`` (``index.json`` → index →
    index → manifests). ``docker_media_types`` uses docker schema2 types for manifests,
    configs, layers and the inner indexes. ``manifest_override`` applies to every image
    manifest, ``index_override`` to ``index.json``. Returns one ``BuiltImage`` per image
    (a single one for a single ``ImageSpec``).
    """
    files, built, single = _build_oci(images, ref, index, attestations, docker_media_types, index_override, manifest_override)
    root = Path(dir)
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    for image in built:
        image.path = root
    return built[0] if single else built


def write_oci_archive(
    path: str | os.PathLike[str],
    images: Sequence[tuple[ImageSpec, str | None]] | ImageSpec,
    *,
    ref: str | None = None,
    index: str = "flat",
    attestations: bool = False,
    docker_media_types: bool = False,
    index_override: Override = None,
    manifest_override: Override = None,
    outer_compression: str = "none",
    extra_members: Sequence[Raw] = (),
) -> BuiltImage | list[BuiltImage]:
    """Write an OCI archive: a tar of the layout :func:`write_oci_layout` would write, in
    the order skopeo and podman use (``blobs/``, ``blobs/sha256/``, the blobs sorted,
    ``index.json``, ``oci-layout``), optionally compressed as a whole."""
    files, built, single = _build_oci(images, ref, index, attestations, docker_media_types, index_override, manifest_override)
    members = [_Member("blobs/", type=tarfile.DIRTYPE, mode=0o755), _Member("blobs/sha256/", type=tarfile.DIRTYPE, mode=0o755)]
    members += [_Member(name, data) for name, data in files.items()]
    for m in members:
        m.uname = m.gname = "root"
    members.sort(key=lambda m: _sort_key(m.name))
    out = Path(path)
    _write_archive(out, members, extra_members, outer_compression)
    for image in built:
        image.path = out
    return built[0] if single else built


# --------------------------------------------------------------------------- breaking things


def corrupt(path: str | os.PathLike[str], offset: int, data: bytes) -> None:
    """Overwrite ``data`` at ``offset`` of an existing file (negative: from the end),
    e.g. to break a digest after writing. The file keeps its size unless the write runs
    past the end."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(offset + size if offset < 0 else offset)
        f.write(data)


def member_offset(archive: str | os.PathLike[str], name: str) -> int:
    """Offset of a member's data in an uncompressed outer archive, for :func:`corrupt`
    (``corrupt(p, member_offset(p, "abc/layer.tar") + 600, b"X")``)."""
    with tarfile.open(archive, "r:") as tar:
        return tar.getmember(name).offset_data


def blob_path(layout: str | os.PathLike[str], digest: str) -> Path:
    """Path of a blob in an OCI layout directory."""
    algorithm, hex_ = digest.split(":", 1)
    return Path(layout) / "blobs" / algorithm / hex_

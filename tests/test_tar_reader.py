"""converter.tar.reader: the project's own tar header parser (EDGE-CASES 16-20).

Archives come from three places: hand-crafted raw headers (to pin exact bytes), ``tarfile``
(also used as the oracle) and GNU tar (sparse files).
"""

from __future__ import annotations

import base64
import io
import os
import random
import shutil
import subprocess
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converter.errors import InputError, IntegrityError, LimitError
from converter.tar.reader import (
    FileSource,
    StreamSource,
    TarEntry,
    TarFormatError,
    TarLimits,
    TarReader,
)

END = bytes(1024)


# ----------------------------------------------------------------------------- helpers


def octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def header(
    name: bytes = b"file",
    *,
    typeflag: bytes = b"0",
    size: int | bytes = 0,
    mode: int | bytes = 0o644,
    uid: int | bytes = 0,
    gid: int | bytes = 0,
    mtime: int | bytes = 1_600_000_000,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    uname: bytes = b"",
    gname: bytes = b"",
    devmajor: int | bytes = b"",
    devminor: int | bytes = b"",
    prefix: bytes = b"",
    raw: dict[int, bytes] | None = None,
    checksum: bytes | None = None,
    signed_checksum: bool = False,
) -> bytes:
    """One hand-made 512-byte header; ints are written as octal, bytes as given."""

    def num(v: int | bytes, width: int) -> bytes:
        return octal(v, width) if isinstance(v, int) else v.ljust(width, b"\0")

    blk = bytearray(512)
    blk[0:100] = name.ljust(100, b"\0")[:100]
    blk[100:108] = num(mode, 8)
    blk[108:116] = num(uid, 8)
    blk[116:124] = num(gid, 8)
    blk[124:136] = num(size, 12)
    blk[136:148] = num(mtime, 12)
    blk[156:157] = typeflag
    blk[157:257] = linkname.ljust(100, b"\0")
    blk[257:265] = magic.ljust(8, b"\0")
    blk[265:297] = uname.ljust(32, b"\0")
    blk[297:329] = gname.ljust(32, b"\0")
    blk[329:337] = num(devmajor, 8)
    blk[337:345] = num(devminor, 8)
    blk[345:500] = prefix.ljust(155, b"\0")
    for at, value in (raw or {}).items():
        blk[at : at + len(value)] = value
    blk[148:156] = b" " * 8
    if checksum is None:
        total = sum(b - 256 if b >= 128 else b for b in blk) if signed_checksum else sum(blk)
        checksum = b"%06o\0 " % total
    blk[148:156] = checksum.ljust(8, b"\0")
    return bytes(blk)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def pax(records: list[tuple[bytes, bytes]] | bytes, typeflag: bytes = b"x", name: bytes = b"PaxHeader") -> bytes:
    body = records if isinstance(records, bytes) else b"".join(record(k, v) for k, v in records)
    return header(name, typeflag=typeflag, size=len(body)) + pad(body)


def gnu_long(value: bytes, typeflag: bytes = b"L") -> bytes:
    data = value + b"\0"
    return header(b"././@LongLink", typeflag=typeflag, size=len(data), magic=b"ustar  \0") + pad(data)


def member(name: bytes, data: bytes = b"", **kw) -> bytes:
    return header(name, size=len(data), **kw) + pad(data)


def reader(data: bytes, **kw) -> TarReader:
    kw.setdefault("name", "test.tar")
    return TarReader(StreamSource(io.BytesIO(data)), **kw)


def read_all(data: bytes, **kw) -> list[tuple[TarEntry, bytes]]:
    r = reader(data, **kw)
    out = []
    for e in r:
        out.append((e, r.read_data(1 << 40)))
    return out


def names(data: bytes) -> list[bytes]:
    return [e.name for e, _ in read_all(data)]


def tarfile_bytes(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def tinfo(name: str, data: bytes = b"", **attrs) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_600_000_000
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, data


class ShortReads(io.RawIOBase):
    """A stream returning at most a few bytes per call (pipes, decompressors)."""

    def __init__(self, data: bytes, seed: int = 0) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._rng.randint(1, 700), len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class ReadOnly:
    """An object with only read()."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        return self._f.read(min(n, 333))


# ----------------------------------------------------------------------------- basic forms


def test_plain_ustar_entry_fields_and_data() -> None:
    data = member(
        b"etc/hostname",
        b"box\n",
        mode=0o100640,
        uid=1000,
        gid=100,
        mtime=1_700_000_000,
        uname=b"alice",
        gname=b"users",
    ) + END
    [(e, body)] = read_all(data)
    assert (e.name, e.type, e.mode, e.uid, e.gid) == (b"etc/hostname", b"0", 0o640, 1000, 100)
    assert (e.uname, e.gname, e.size, e.real_size) == (b"alice", b"users", 4, 4)
    assert (e.mtime, e.mtime_ns) == (1_700_000_000, 1_700_000_000 * 10**9)
    assert (e.devmajor, e.devminor, e.linkname, e.sparse) == (0, 0, b"", None)
    assert (e.header_offset, e.data_offset, e.index) == (0, 512, 0)
    assert e.xattrs == {} and e.pax == {}
    assert body == b"box\n"


def test_edge_16_ustar_prefix_and_name_are_joined() -> None:
    prefix = b"p" * 150
    data = member(b"n" * 100, b"x", prefix=prefix) + END
    [(e, _)] = read_all(data)
    assert e.name == prefix + b"/" + b"n" * 100
    # the same through tarfile's own ustar writer
    long = "d" * 120 + "/" + "f" * 90
    data = tarfile_bytes([tinfo(long, b"abc")], tarfile.USTAR_FORMAT)
    assert names(data) == [long.encode()]


def test_prefix_field_is_not_used_for_gnu_or_v7_headers() -> None:
    # In GNU headers byte 345 starts atime; v7 headers have no prefix at all.
    gnu = member(b"a", magic=b"ustar  \0", raw={345: b"00000000001\0"})
    v7 = member(b"b", magic=b"", raw={345: b"junk"})
    assert names(gnu + v7 + END) == [b"a", b"b"]


def test_edge_16_pax_path_linkpath_and_overrides() -> None:
    ext = pax(
        [
            (b"path", b"very/" * 60 + b"long"),
            (b"linkpath", b"target/" * 40),
            (b"uid", b"3000000000"),
            (b"gid", b"4000000000"),
            (b"uname", b"someone"),
            (b"gname", b"somegroup"),
            (b"mtime", b"1234567890.123456789123"),
        ]
    )
    data = (
        pax(
            [
                (b"path", b"very/" * 60 + b"long"),
                (b"linkpath", b"target/" * 40),
                (b"uid", b"3000000000"),
                (b"gid", b"4000000000"),
                (b"uname", b"someone"),
                (b"gname", b"somegroup"),
                (b"mtime", b"1234567890.123456789123"),
            ]
        )
        + member(b"short", typeflag=b"2", linkname=b"t", uid=1, gid=2, uname=b"root")
        + END
    )
    [(e, _)] = read_all(data)
    assert e.name == b"very/" * 60 + b"long" and len(e.name) > 255
    assert e.linkname == b"target/" * 40
    assert (e.uid, e.gid, e.uname, e.gname) == (3_000_000_000, 4_000_000_000, b"someone", b"somegroup")
    assert e.mtime == 1234567890 and e.mtime_ns == 1234567890_123456789
    assert e.pax["path"] == e.name and e.pax["uid"] == b"3000000000"
    assert e.header_offset == 0 and e.data_offset == len(ext) + 512 == 512 * 4


def test_pax_size_overrides_header_size() -> None:
    body = b"z" * 700
    data = pax([(b"size", b"700")]) + header(b"big", size=0) + pad(body) + member(b"next") + END
    got = read_all(data)
    assert [(e.name, e.size, len(b)) for e, b in got] == [(b"big", 700, 700), (b"next", 0, 0)]
    assert got[0][1] == body


def test_pax_negative_and_fractional_mtime() -> None:
    data = pax([(b"mtime", b"-1.5")]) + member(b"a") + pax([(b"mtime", b"-7")]) + member(b"b") + END
    (a, _), (b, _) = read_all(data)
    assert a.mtime_ns == -1_500_000_000 and a.mtime == -2  # floor: mtime <= mtime_ns / 1e9
    assert b.mtime_ns == -7 * 10**9 and b.mtime == -7


def test_pax_empty_value_deletes_keyword_so_header_field_applies() -> None:
    data = pax([(b"uid", b"77")], typeflag=b"g") + pax([(b"uid", b"")]) + member(b"a", uid=5) + END
    [(e, _)] = read_all(data)
    assert e.uid == 5 and "uid" not in e.pax


def test_edge_16_gnu_longname_and_longlink() -> None:
    name = b"n/" * 200 + b"end"
    link = b"l/" * 150
    data = gnu_long(name) + gnu_long(link, b"K") + header(b"trunc", typeflag=b"1", linkname=b"x", magic=b"ustar  \0") + END
    [(e, _)] = read_all(data)
    assert (e.name, e.linkname, e.type, e.size) == (name, link, b"1", 0)
    assert e.header_offset == 0


def test_pax_path_wins_over_gnu_longname() -> None:
    data = gnu_long(b"gnu-name" * 20) + pax([(b"path", b"pax-name")]) + member(b"ustar-name") + END
    assert names(data) == [b"pax-name"]


def test_edge_16_long_names_from_tarfile_gnu_and_pax() -> None:
    long = "/".join(["segment%03d" % i for i in range(40)])  # 479 bytes
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        data = tarfile_bytes(
            [tinfo(long, b"data"), tinfo("link", type=tarfile.SYMTYPE, linkname=long)], fmt
        )
        got = read_all(data)
        assert [(e.name, e.linkname, b) for e, b in got] == [
            (long.encode(), b"", b"data"),
            (b"link", long.encode(), b""),
        ]


def test_edge_20_base256_ids_size_and_negative_mtime() -> None:
    def b256(value: int, width: int) -> bytes:
        if value < 0:
            return (value % (1 << (8 * width))).to_bytes(width, "big")
        return bytes([0x80]) + value.to_bytes(width - 1, "big")

    data = header(
        b"big",
        uid=b256(3_000_000_000, 8),
        gid=b256(2_097_152, 8),
        mtime=b256(-1_000_000, 12),
        size=b256(5, 12),
        mode=b256(0o755, 8),
    ) + pad(b"12345") + END
    [(e, body)] = read_all(data)
    assert (e.uid, e.gid, e.mtime, e.size, e.mode) == (3_000_000_000, 2_097_152, -1_000_000, 5, 0o755)
    assert e.mtime_ns == -1_000_000 * 10**9 and body == b"12345"
    # tarfile's GNU writer uses base-256 for the same values
    data = tarfile_bytes([tinfo("t", b"x", uid=3_000_000_000, gid=2**22, mtime=-86400)], tarfile.GNU_FORMAT)
    [(e, _)] = read_all(data)
    assert (e.uid, e.gid, e.mtime) == (3_000_000_000, 2**22, -86400)


def test_edge_20_size_over_8_gib_is_skipped_by_seeking(tmp_path) -> None:
    size = 8 * 2**30 + 3
    path = tmp_path / "huge.tar"
    with open(path, "wb") as f:
        f.write(header(b"huge", size=bytes([0x80]) + size.to_bytes(11, "big")))
        f.truncate(512 + size + (-size % 512))  # a hole: nothing is written or read
        if os.fstat(f.fileno()).st_blocks > 1 << 12:
            pytest.skip("the temp file system does not keep holes")
        f.seek(0, os.SEEK_END)
        f.write(member(b"after", b"tail") + END)
    fd = os.open(path, os.O_RDONLY)
    try:
        r = TarReader(FileSource(fd), name="huge.tar")
        got = [(e.name, e.size, e.data_offset) for e in r]
        assert got == [(b"huge", size, 512), (b"after", 4, 512 + size + (-size % 512) + 512)]
        assert r.end_reason == "eof-blocks" and r.finish() == 0
    finally:
        os.close(fd)


def test_edge_20_non_utf8_names_survive_as_bytes() -> None:
    raw = b"caf\xe9/\xff\xfe-name"
    data = (
        member(raw, b"1")
        + pax([(b"hdrcharset", b"BINARY"), (b"path", raw + b"/pax" * 40), (b"linkpath", b"\x80\x81")])
        + header(b"x", typeflag=b"2")
        + gnu_long(raw * 20)
        + member(b"y")
        + END
    )
    assert names(data) == [raw, raw + b"/pax" * 40, raw * 20]
    assert read_all(data)[1][0].linkname == b"\x80\x81"


def test_edge_17_global_header_is_tolerated_and_applied() -> None:
    data = (
        pax(
            [
                (b"comment", b"made by a test"),
                (b"uid", b"4242"),
                (b"uname", b"global"),
                (b"mtime", b"100.25"),
                (b"path", b"ignored-global-path"),
                (b"linkpath", b"ignored-link"),
                (b"SCHILY.xattr.user.g", b"gv"),
            ],
            typeflag=b"g",
        )
        + member(b"a", uid=1, uname=b"root")
        + pax([(b"uid", b"7")])
        + member(b"b", uid=1)
        + pax([(b"uid", b"9")], typeflag=b"g")
        + member(b"c", uid=1)
        + END
    )
    a, b, c = (e for e, _ in read_all(data))
    assert (a.name, a.uid, a.uname, a.mtime_ns, a.linkname) == (b"a", 4242, b"global", 100_250_000_000, b"")
    assert a.xattrs == {"user.g": b"gv"} and a.pax["comment"] == b"made by a test"
    assert (b.name, b.uid) == (b"b", 7)  # local record overrides the global one
    assert (c.name, c.uid, c.uname) == (b"c", 9, b"global")  # later globals merge
    assert [a.index, b.index, c.index] == [0, 1, 2]  # extension headers are not entries
    assert a.header_offset == 1024 and b.header_offset == 1536


@pytest.mark.parametrize(
    "flag,want",
    [(b"\0", b"0"), (b"0", b"0"), (b"7", b"0"), (b"D", b"5"), (b"5", b"5"), (b"Z", b"Z"), (b"V", b"V")],
)
def test_edge_19_typeflags_normalised_and_unknown_passed_through(flag: bytes, want: bytes) -> None:
    payload = b"" if flag == b"5" else b"payload"
    data = member(b"thing", payload, typeflag=flag) + member(b"next") + END
    got = read_all(data)
    assert got[0][0].type == want
    assert got[0][1] == payload
    assert got[1][0].name == b"next"


def test_v7_regular_file_with_trailing_slash_is_a_directory() -> None:
    data = member(b"olddir/", typeflag=b"\0", magic=b"") + END
    [(e, _)] = read_all(data)
    assert (e.name, e.type) == (b"olddir/", b"5")


def test_header_only_types_carry_no_data_whatever_size_says() -> None:
    # a symlink claiming 100 bytes: like tarfile and Go, no data follows it
    data = header(b"sym", typeflag=b"2", linkname=b"t", size=100) + member(b"next", b"n") + END
    got = read_all(data)
    assert [(e.name, e.size) for e, _ in got] == [(b"sym", 0), (b"next", 1)]


def test_device_numbers() -> None:
    data = header(b"dev/null", typeflag=b"3", devmajor=1, devminor=3) + END
    [(e, _)] = read_all(data)
    assert (e.type, e.devmajor, e.devminor) == (b"3", 1, 3)


def test_numeric_fields_space_terminated_or_unterminated() -> None:
    data = header(b"a", mode=b"    644 ", uid=b"00000017", gid=b" 21\0\0\0\0\0", size=b"", mtime=b"77777777777 ") + END
    [(e, _)] = read_all(data)
    assert (e.mode, e.uid, e.gid, e.size, e.mtime) == (0o644, 0o17, 0o21, 0, 0o77777777777)


def test_full_width_unterminated_octal_fields() -> None:
    data = header(b"a", mode=b"00000644", uid=b"12345670", gid=b"76543210", size=b"000000000003", mtime=b"177777777777")
    data += pad(b"abc") + END
    [(e, body)] = read_all(data)
    assert (e.mode, e.uid, e.gid, e.size, e.mtime) == (0o644, 0o12345670, 0o76543210, 3, 0o177777777777)
    assert body == b"abc"


@pytest.mark.parametrize("field", ["size", "uid", "gid", "devmajor"])
def test_negative_base256_is_refused_except_for_mtime(field: str) -> None:
    width = 12 if field == "size" else 8
    data = header(b"a", typeflag=b"3", **{field: b"\xff" * width}) + END
    with pytest.raises(TarFormatError, match=field):
        read_all(data)


def test_solaris_X_header_is_a_local_pax_header() -> None:
    assert names(pax([(b"path", b"from-X")], typeflag=b"X") + member(b"f") + END) == [b"from-X"]


# ----------------------------------------------------------------------------- xattrs


def test_schily_xattrs_keep_binary_values() -> None:
    value = bytes(range(256))
    data = pax([(b"SCHILY.xattr.security.capability", value), (b"SCHILY.xattr.user.empty", b"")]) + member(b"f") + END
    [(e, _)] = read_all(data)
    assert e.xattrs == {"security.capability": value, "user.empty": b""}


def test_libarchive_xattrs_are_decoded() -> None:
    value = b"\x00\x01binary\xff"
    data = (
        pax(
            [
                (b"LIBARCHIVE.xattr.user.with%3Dequals%20and%20space", base64.b64encode(value).rstrip(b"=")),
                (b"LIBARCHIVE.xattr.user.both", base64.b64encode(b"from-libarchive")),
                (b"SCHILY.xattr.user.both", b"from-schily"),
            ]
        )
        + member(b"f")
        + END
    )
    [(e, _)] = read_all(data)
    assert e.xattrs == {"user.with=equals and space": value, "user.both": b"from-schily"}


def test_xattrs_from_tarfile_pax_headers() -> None:
    info, data = tinfo("f", b"x")
    info.pax_headers = {"SCHILY.xattr.user.mime": "text/plain", "SCHILY.xattr.user.raw": "\udcff\udcfe"}
    [(e, _)] = read_all(tarfile_bytes([(info, data)], tarfile.PAX_FORMAT))
    assert e.xattrs == {"user.mime": b"text/plain", "user.raw": b"\xff\xfe"}


def test_invalid_libarchive_base64_is_a_format_error() -> None:
    data = pax([(b"LIBARCHIVE.xattr.user.x", b"!!not base64!!")]) + member(b"f") + END
    with pytest.raises(TarFormatError, match="LIBARCHIVE"):
        read_all(data)


# ----------------------------------------------------------------------------- sparse files

SEGMENTS = [(k * 65536 + (k % 3) * 1000, 4096 + 512 * (k % 5)) for k in range(40)]


@pytest.fixture(scope="module")
def sparse_file(tmp_path_factory) -> tuple[str, bytes]:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")
    d = tmp_path_factory.mktemp("sparse")
    path = d / "holes.bin"
    rng = random.Random(7)
    size = 40 * 65536 + 300_000  # ends in a hole
    with open(path, "wb") as f:
        f.truncate(size)
        for off, n in SEGMENTS:
            f.seek(off)
            f.write(bytes(rng.randrange(1, 256) for _ in range(n)))
    if os.stat(path).st_blocks * 512 >= size:
        pytest.skip("the temp file system does not keep holes")
    return str(path), path.read_bytes()


def gnu_tar_sparse(path: str, fmt: str, out: str) -> bytes:
    args = ["tar", "--sparse", "-C", os.path.dirname(path), "-cf", out]
    if fmt == "gnu":
        args += ["--format=gnu"]
    else:
        args += ["--format=posix", f"--sparse-version={fmt}"]
    subprocess.run(args + [os.path.basename(path)], check=True)
    with open(out, "rb") as f:
        return f.read()


def expand(entry: TarEntry, packed: bytes) -> bytes:
    out = bytearray(entry.real_size)
    pos = 0
    assert entry.sparse is not None
    for off, n in entry.sparse:
        out[off : off + n] = packed[pos : pos + n]
        pos += n
    assert pos == len(packed)
    return bytes(out)


@pytest.mark.parametrize("fmt", ["gnu", "0.0", "0.1", "1.0"])
def test_edge_18_gnu_sparse_reconstructs_original(sparse_file, tmp_path, fmt: str) -> None:
    path, original = sparse_file
    data = gnu_tar_sparse(path, fmt, str(tmp_path / "s.tar"))
    [(e, packed)] = read_all(data)
    assert e.name == b"holes.bin"  # never the GNUSparseFile.NNN placeholder
    assert e.type == b"0"
    assert e.sparse is not None and len(e.sparse) >= len(SEGMENTS)
    assert e.real_size == len(original) and e.size == len(packed) < len(original)
    assert expand(e, packed) == original
    # data_offset points at the packed data, after any map or extension blocks
    assert data[e.data_offset : e.data_offset + e.size] == packed
    if fmt == "gnu":
        assert data[156:157] == b"S" and e.data_offset > 512  # extension blocks were needed
    if fmt == "1.0":
        assert e.data_offset - e.header_offset >= 3 * 512  # x header, its data, ustar header, map


def test_sparse_pax_01_hand_made_with_many_segments_then_next_entry() -> None:
    segs = [(i * 10, 2) for i in range(50)]
    flat = b",".join(b"%d,%d" % s for s in segs)
    packed = bytes(range(100))
    data = (
        pax(
            [
                (b"GNU.sparse.size", b"1000"),
                (b"GNU.sparse.numblocks", b"50"),
                (b"GNU.sparse.name", b"real/name"),
                (b"GNU.sparse.map", flat),
            ]
        )
        + member(b"GNUSparseFile.1/name", packed)
        + member(b"next", b"!")
        + END
    )
    (e, body), (n, nb) = read_all(data)
    assert (e.name, e.sparse, e.real_size, e.size, body) == (b"real/name", tuple(segs), 1000, 100, packed)
    assert (n.name, nb) == (b"next", b"!")


def test_sparse_segment_limit() -> None:
    segs = b",".join(b"%d,1" % (i * 2) for i in range(20))
    data = pax([(b"GNU.sparse.size", b"100"), (b"GNU.sparse.map", segs)]) + member(b"f", b"x" * 20) + END
    with pytest.raises(LimitError):
        read_all(data, limits=TarLimits(max_sparse_segments=10))
    assert len(read_all(data)[0][0].sparse) == 20


def test_sparse_map_inconsistent_with_data_is_a_format_error() -> None:
    data = pax([(b"GNU.sparse.size", b"100"), (b"GNU.sparse.map", b"0,10")]) + member(b"f", b"x" * 20) + END
    with pytest.raises(TarFormatError, match="sparse map describes 10 data bytes"):
        read_all(data)
    data = pax([(b"GNU.sparse.size", b"5"), (b"GNU.sparse.map", b"0,20")]) + member(b"f", b"x" * 20) + END
    with pytest.raises(TarFormatError, match="outside"):
        read_all(data)


@pytest.mark.parametrize("segs", [b"0,20,10,20", b"50,10,0,10", b"0,10,0,10"], ids=["overlap", "unsorted", "repeated"])
def test_sparse_map_out_of_file_order_is_a_format_error(segs: bytes) -> None:
    """Overlapping segments describe more bytes than the file holds: replayed into a
    flattened tar they spilled into the next header's place (an entry of the attacker's
    choosing, ../ included, appeared in the output tar)."""
    size = sum(int(n) for n in segs.split(b",")[1::2])
    data = pax([(b"GNU.sparse.size", b"100"), (b"GNU.sparse.map", segs)]) + member(b"f", b"x" * size) + END
    with pytest.raises(TarFormatError, match="overlaps or precedes"):
        read_all(data)


def test_sparse_10_map_spanning_blocks_and_limit() -> None:
    segs = [(i * 1000, 3) for i in range(200)]
    text = b"%d\n" % len(segs) + b"".join(b"%d\n%d\n" % s for s in segs)
    packed = b"abc" * 200
    stored = pad(text) + packed
    data = (
        pax(
            [
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", b"f"),
                (b"GNU.sparse.realsize", b"200000"),
            ]
        )
        + member(b"./GNUSparseFile.0/f", stored)
        + END
    )
    [(e, body)] = read_all(data)
    assert e.sparse == tuple(segs) and body == packed and e.size == 600
    assert e.data_offset == 3 * 512 + len(pad(text))
    with pytest.raises(LimitError):
        read_all(data, limits=TarLimits(max_sparse_segments=100))


# ----------------------------------------------------------------------------- errors


def test_bad_checksum_is_a_format_error_naming_stream_member_and_offset() -> None:
    bad = header(b"etc/\xffpasswd", checksum=b"000001\0 ")
    with pytest.raises(TarFormatError) as exc:
        read_all(member(b"ok", b"1") + bad + END)
    msg = str(exc.value)
    assert isinstance(exc.value, InputError)
    assert "test.tar" in msg and "etc/\\xffpasswd" in msg and "offset 1024" in msg and "\n" not in msg


def test_signed_checksum_is_accepted() -> None:
    data = header(b"caf\xe9", signed_checksum=True) + END
    assert names(data) == [b"caf\xe9"]


def test_invalid_octal_digit_names_the_field() -> None:
    with pytest.raises(TarFormatError, match="uid"):
        read_all(header(b"f", uid=b"00009\0") + END)
    with pytest.raises(TarFormatError, match="size"):
        read_all(header(b"f", size=b"1_0") + END)
    with pytest.raises(TarFormatError, match="mode"):
        read_all(header(b"f", mode=b"-000001") + END)


def test_truncated_header_is_an_integrity_error() -> None:
    data = member(b"a", b"1") + header(b"b")[:300]
    with pytest.raises(IntegrityError, match="truncated") as exc:
        read_all(data)
    assert "test.tar" in str(exc.value)


@pytest.mark.parametrize("cut", [512 + 10, 512 + 512 - 1])  # inside data, inside padding
def test_truncated_data_is_an_integrity_error_when_skipped_or_read(cut: int) -> None:
    data = member(b"a", b"x" * 100)[:cut]
    r = reader(data)
    next(iter(r))
    with pytest.raises(IntegrityError, match="truncated"):
        list(r)  # skipping
    if cut < 512 + 100:
        r = reader(data)
        next(iter(r))
        with pytest.raises(IntegrityError, match=r"truncated.*member 'a'"):
            r.read_data(1000)


def test_truncated_data_with_file_source(tmp_path) -> None:
    path = tmp_path / "t.tar"
    path.write_bytes(header(b"a", size=10_000) + b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        r = TarReader(FileSource(fd), name="t.tar")
        assert next(iter(r)).size == 10_000
        with pytest.raises(IntegrityError):
            next(iter(r))
    finally:
        os.close(fd)


def test_eof_after_extension_header_is_truncation() -> None:
    with pytest.raises(IntegrityError):
        read_all(pax([(b"path", b"x")]))
    with pytest.raises(TarFormatError, match="not followed by an entry"):
        read_all(gnu_long(b"x") + END)


def test_malformed_pax_records() -> None:
    for body in (b"5 a=b\n", b"xx path=a\n", b"10 patha\n\n\n", b"9 path=a!", b"100 path=a\n"):
        with pytest.raises(TarFormatError, match="PAX record"):
            read_all(pax(body) + member(b"f") + END)
    for key, value in ((b"size", b"-1"), (b"uid", b"12a"), (b"mtime", b"1.2.3"), (b"size", b"9" * 40)):
        with pytest.raises(TarFormatError, match="PAX"):
            read_all(pax([(key, value)]) + member(b"f") + END)


def test_pax_records_followed_by_nul_padding_are_accepted() -> None:
    body = record(b"path", b"padded") + b"\0" * 30
    assert names(pax(body) + member(b"f") + END) == [b"padded"]


def test_oversized_pax_header_is_a_limit_error_before_reading() -> None:
    # the header claims 10 MB; nothing follows: the limit must fire before any read
    data = header(b"PaxHeader", typeflag=b"x", size=10 << 20)
    with pytest.raises(LimitError, match="PAX"):
        read_all(data)
    with pytest.raises(LimitError):
        read_all(header(b"g", typeflag=b"g", size=2 << 20))


def test_ten_megabyte_path_is_a_limit_error_not_an_allocation() -> None:
    data = header(b"././@LongLink", typeflag=b"L", size=10 << 20, magic=b"ustar  \0")
    with pytest.raises(LimitError, match="long name"):
        read_all(data)
    long = b"p" * 5000
    data = pax([(b"path", long)]) + member(b"f") + END
    with pytest.raises(LimitError):
        read_all(data, limits=TarLimits(max_name=4096))
    assert names(data) == [long]


def test_many_pax_headers_for_one_entry_are_capped_in_total() -> None:
    chunk = pax([(b"comment", b"c" * 3000)])
    with pytest.raises(LimitError):
        read_all(chunk * 5 + member(b"f") + END, limits=TarLimits(max_pax_size=10000))


# ----------------------------------------------------------------------------- end of archive


def test_end_reasons_and_trailing_bytes() -> None:
    body = member(b"a", b"1")
    cases = [
        (body + END, "eof-blocks", 0),
        (body + END + b"trailing garbage", "eof-blocks", 16),
        (body + END + bytes(10240 - 2048), "eof-blocks", 10240 - 2048),
        (body + bytes(512), "one-zero-block-eof", 0),
        (body, "eof", 0),
        (body + bytes(512) + member(b"hidden"), "lone-zero-block", 512),
    ]
    for data, reason, trailing in cases:
        r = reader(data)
        assert [e.name for e in r] == [b"a"]
        assert r.end_reason == reason
        assert r.finish() == trailing
        assert r.offset == len(data)


def test_empty_input_is_an_empty_archive() -> None:
    r = reader(b"")
    assert list(r) == [] and r.end_reason == "eof" and r.finish() == 0
    r = reader(END)
    assert list(r) == [] and r.end_reason == "eof-blocks"


def test_finish_reads_every_remaining_byte_through_the_source() -> None:
    seen = bytearray()

    class Recording:
        def __init__(self, data: bytes) -> None:
            self._f = io.BytesIO(data)

        def readinto(self, b) -> int:
            n = self._f.readinto(b)
            seen.extend(bytes(b[:n]))
            return n

        def skip(self, n: int) -> int:
            chunk = self._f.read(n)
            seen.extend(chunk)
            return len(chunk)

    data = member(b"a", b"x" * 5000) + END + b"tail" * 1000
    r = TarReader(Recording(data), name="rec", buffer_size=2048)
    assert [e.name for e in r] == [b"a"]
    assert r.finish() == 4000
    assert bytes(seen) == data


def test_tarfile_record_padding_is_trailing() -> None:
    data = tarfile_bytes([tinfo("a", b"hello")], tarfile.USTAR_FORMAT)
    r = reader(data)
    assert [e.name for e in r] == [b"a"]
    assert r.end_reason == "eof-blocks"
    assert r.finish() == len(data) - 2048


# ----------------------------------------------------------------------------- data access


def test_iter_data_chunks_and_partial_consumption() -> None:
    a = bytes(random.Random(1).randbytes(100_000))
    data = member(b"a", a) + member(b"b", b"bee") + END
    r = reader(data, buffer_size=4096)
    it = iter(r)
    e = next(it)
    pieces = []
    for view in r.iter_data(chunk=1000):
        assert len(view) <= 1000
        pieces.append(bytes(view))
        if len(pieces) == 7:
            break
    got = b"".join(pieces)
    assert len(got) == 7 * 1000 - 1000 + (4096 - 512 - 3000)  # the buffer boundary ends one piece early
    assert got == a[: len(got)]
    e = next(it)  # the rest of a's data and its padding are skipped
    assert e.name == b"b" and r.read_data(10) == b"bee"
    assert list(it) == []


def test_read_data_limit() -> None:
    r = reader(member(b"big.json", b"{}" * 100) + END)
    next(iter(r))
    with pytest.raises(LimitError, match="big.json"):
        r.read_data(10)


def test_stream_sources_with_short_reads_and_read_only_objects() -> None:
    members = [tinfo(f"dir/file{i}" + "x" * (i * 7), bytes([i]) * (i * 97)) for i in range(60)]
    data = tarfile_bytes(members, tarfile.PAX_FORMAT)
    want = [(info.name.encode(), body) for info, body in members]
    for src in (StreamSource(ShortReads(data)), StreamSource(ReadOnly(data)), StreamSource(io.BytesIO(data))):
        r = TarReader(src, name="s", buffer_size=2048)
        got = []
        for e in r:
            got.append((e.name, r.read_data(1 << 20) if e.index % 2 else b"".join(bytes(v) for v in r.iter_data(100))))
        assert got == want
        expected_trailing = len(data) - r.offset
        assert r.finish() == expected_trailing > 0  # tarfile pads to 10 KiB records


def test_offsets_agree_with_tarfile_and_file_source_region(tmp_path) -> None:
    members = [
        tinfo("a" * 150, b"1" * 10),
        tinfo("b", b"2" * 600, uid=2**30),
        tinfo("c", type=tarfile.DIRTYPE),
        tinfo("d", b"4"),
    ]
    data = tarfile_bytes(members, tarfile.PAX_FORMAT)
    # embed the tar in a bigger file at an odd offset, read only that region
    path = tmp_path / "outer"
    path.write_bytes(b"J" * 777 + data + b"K" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        r = TarReader(FileSource(fd, 777, len(data)), name="region", buffer_size=2048)
        mine = [(e.name, e.header_offset, e.data_offset, e.size) for e in r]
        end = r.offset  # offsets are relative to the region's start
        assert end == 7168 and r.finish() == len(data) - end  # the "K" bytes are outside
    finally:
        os.close(fd)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        theirs = [(m.name.encode() + (b"/" if m.isdir() else b""), m.offset, m.offset_data, m.size) for m in tf]
    assert mine == theirs


def test_file_source_reads_with_pread_and_skips_by_seeking(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 4)
    fd = os.open(path, os.O_RDONLY)
    try:
        src = FileSource(fd, 10, 100)
        buf = bytearray(30)
        assert src.readinto(memoryview(buf)) == 30 and bytes(buf) == bytes(range(10, 40))
        assert src.skip(50) == 50
        assert src.readinto(memoryview(buf)) == 20 and bytes(buf[:20]) == bytes(range(90, 110))
        assert src.readinto(memoryview(buf)) == 0 and src.skip(5) == 0
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # the fd's own position is untouched
        assert FileSource(fd, 1000, 500).skip(100) == 24  # clamped to the file's size
    finally:
        os.close(fd)


def test_big_pax_header_across_small_buffer() -> None:
    value = bytes(random.Random(3).randbytes(20000))
    data = (
        member(b"first", b"1" * 1000)
        + pax([(b"SCHILY.xattr.user.big", value), (b"path", b"second")])
        + member(b"x", b"2")
        + END
    )
    got = read_all(data, buffer_size=2048)
    assert [e.name for e, _ in got] == [b"first", b"second"]
    assert got[1][0].xattrs["user.big"] == value


def test_entries_are_cheap_slotted_objects_with_readonly_empty_dicts() -> None:
    [(e, _)] = read_all(member(b"f") + END)
    assert not hasattr(e, "__dict__")
    with pytest.raises(TypeError):
        e.xattrs["x"] = b"y"
    assert "f" in repr(e)


# ----------------------------------------------------------------------------- tarfile oracle


def norm_type(t: bytes) -> bytes:
    return {b"\0": b"0", b"7": b"0"}.get(t, t)


def compare_with_tarfile(data: bytes, bodies: dict[bytes, bytes] | None = None) -> int:
    mine = read_all(data)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as tf:
        theirs = tf.getmembers()
        assert len(mine) == len(theirs)
        for (e, body), t in zip(mine, theirs):
            tname = t.name.encode("utf-8", "surrogateescape")
            assert e.name == (tname + b"/" if t.isdir() and not tname.endswith(b"/") else tname)
            assert e.linkname == t.linkname.encode("utf-8", "surrogateescape")
            assert e.type == norm_type(t.type)
            assert e.mode == t.mode & 0o7777
            assert (e.uid, e.gid) == (t.uid, t.gid)
            assert (e.uname, e.gname) == (t.uname.encode(), t.gname.encode())
            assert e.size == t.size
            assert e.mtime == int(t.mtime) if float(t.mtime).is_integer() else e.mtime == int(t.mtime // 1)
            assert (e.devmajor, e.devminor) == (t.devmajor, t.devminor)
            want_x = {
                k[len("SCHILY.xattr.") :]: v.encode("utf-8", "surrogateescape")
                for k, v in t.pax_headers.items()
                if k.startswith("SCHILY.xattr.")
            }
            assert e.xattrs == want_x
            if t.isreg():
                f = tf.extractfile(t)
                assert f is not None and body == f.read()
    return len(mine)


def test_agrees_with_tarfile_on_gnu_and_pax_archives() -> None:
    def build() -> list[tuple[tarfile.TarInfo, bytes]]:
        xi, xd = tinfo("xattr-file", b"x")
        xi.pax_headers = {"SCHILY.xattr.user.a": "1", "SCHILY.xattr.trusted.b": "\udc80bin"}
        return [
            tinfo("./rel/file", b"hello", mode=0o4755, uid=1000, gid=1000, uname="u", gname="g"),
            tinfo("dir", type=tarfile.DIRTYPE, mode=0o1777),
            tinfo("a/" * 80 + "deep", b"deep"),
            tinfo("sym", type=tarfile.SYMTYPE, linkname="../" * 50 + "target"),
            tinfo("hard", type=tarfile.LNKTYPE, linkname="./rel/file"),
            tinfo("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
            tinfo("loop0", type=tarfile.BLKTYPE, devmajor=7, devminor=0),
            tinfo("fifo", type=tarfile.FIFOTYPE),
            tinfo("bigid", b"", uid=2**31, gid=2**32 - 2),
            tinfo("neg-mtime", b"z", mtime=-12345),
            tinfo("caf\udce9", b"latin1 name"),
            tinfo("unicode-é", b"utf8 name"),
            (xi, xd),
        ]

    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        members = build()
        if fmt == tarfile.GNU_FORMAT:
            members = [(i, d) for i, d in members if not i.pax_headers]
        assert compare_with_tarfile(tarfile_bytes(members, fmt)) == len(members)


name_segment = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\0", b"n").replace(b"/", b"s"))
raw_names = st.lists(name_segment, min_size=1, max_size=12).map(lambda parts: b"/".join(parts))


@st.composite
def members_strategy(draw) -> list[tuple[tarfile.TarInfo, bytes]]:
    count = draw(st.integers(min_value=1, max_value=8))
    out = []
    for i in range(count):
        name = draw(raw_names).decode("utf-8", "surrogateescape")
        kind = draw(st.sampled_from(["reg", "reg", "dir", "sym", "lnk", "chr", "fifo"]))
        info = tarfile.TarInfo(name)
        info.mode = draw(st.integers(min_value=0, max_value=0o7777))
        info.uid = draw(st.integers(min_value=0, max_value=2**32 - 1))
        info.gid = draw(st.integers(min_value=0, max_value=2**32 - 1))
        info.mtime = draw(st.integers(min_value=-(2**40), max_value=2**40))
        info.uname = draw(st.text(alphabet="abcdefghijklmnop_", max_size=20))
        info.gname = draw(st.text(alphabet="abcdefghijklmnop_", max_size=20))
        data = b""
        if kind == "reg":
            data = draw(st.binary(max_size=3000))
            info.size = len(data)
        elif kind == "dir":
            info.type = tarfile.DIRTYPE
        elif kind in ("sym", "lnk"):
            info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
            info.linkname = draw(raw_names).decode("utf-8", "surrogateescape")
        elif kind == "chr":
            info.type = tarfile.CHRTYPE
            info.devmajor = draw(st.integers(min_value=0, max_value=4095))
            info.devminor = draw(st.integers(min_value=0, max_value=2**20 - 1))
        else:
            info.type = tarfile.FIFOTYPE
        if kind == "reg" and draw(st.booleans()):
            info.pax_headers = {"SCHILY.xattr.user.k%d" % i: draw(st.binary(max_size=50)).decode("utf-8", "surrogateescape")}
        out.append((info, data))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=members_strategy(), fmt=st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
def test_property_agrees_with_tarfile_on_random_archives(members, fmt) -> None:
    if fmt == tarfile.GNU_FORMAT:
        for info, _ in members:
            info.pax_headers = {}
    data = tarfile_bytes(members, fmt)
    assert compare_with_tarfile(data) == len(members)
    # the same bytes through a tiny buffer and short reads give the same entries
    a = [(e.name, e.size, e.data_offset, e.header_offset) for e, _ in read_all(data)]
    r = TarReader(StreamSource(ShortReads(data, seed=len(data))), name="short", buffer_size=2048)
    assert [(e.name, e.size, e.data_offset, e.header_offset) for e in r] == a

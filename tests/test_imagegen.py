"""Tests of the image generator itself (``converter.testing.imagegen``).

Everything the rest of the suite builds goes through this module, so it is checked here
against independent readers: ``tarfile``, ``json``, ``hashlib`` and the stdlib/zstandard
decompressors. The checks are structural (what a reader sees), byte-exact where the
format leaves no choice, and about determinism (same spec → same bytes).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import importlib.util
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard

from converter.testing.imagegen import (
    DELETE,
    EMPTY_LAYER_TAR,
    FIXED_MTIME,
    ZSTD_SKIPPABLE_FRAME,
    BuiltImage,
    Device,
    Dir,
    Fifo,
    File,
    Hardlink,
    ImageSpec,
    Layer,
    Opaque,
    Raw,
    Sparse,
    Symlink,
    Whiteout,
    blob_path,
    compress,
    config_json,
    corrupt,
    layer_blob,
    layer_media_type,
    layer_tar,
    member_offset,
    pax_records,
    sha256_digest,
    write_docker_archive,
    write_oci_archive,
    write_oci_layout,
)

ROOT = Path(__file__).resolve().parent.parent
REAL_IMAGES = ROOT / "fixtures" / "real"  # copied from ../shared: tests never read outside the project
EMPTY_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"


# --------------------------------------------------------------------------- helpers


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def by_name(data: bytes) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in members(data)}


def raw_names(data: bytes) -> list[bytes]:
    """The 100-byte name fields of the real (non-extension) headers, in order."""
    out = []
    for m in members(data):
        header = data[m.offset : m.offset + 512]
        out.append(header[:100].rstrip(b"\0"))
    return out


def pax_block(data: bytes) -> bytes:
    """The records of the first PAX 'x' header of a tar."""
    assert data[156:157] == b"x"
    size = int(data[124:136].rstrip(b"\0"), 8)
    return data[512 : 512 + size]


def read_member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def extract_file(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def simple_spec(**kwargs: Any) -> ImageSpec:
    return ImageSpec(
        [
            Layer([Dir("etc/"), File("etc/hostname", b"base\n")]),
            Layer([File("etc/hostname", b"top\n"), Whiteout("etc/gone")], compression="gzip"),
        ],
        **kwargs,
    )


def verify_oci_layout(root: Path) -> dict[str, Any]:
    """Walk index.json down to every manifest, checking every digest and size; return the
    descriptors seen by digest."""
    seen: dict[str, Any] = {}

    def check(desc: dict[str, Any]) -> bytes:
        data = blob_path(root, desc["digest"]).read_bytes()
        assert sha256_digest(data) == desc["digest"]
        assert len(data) == desc["size"]
        seen[desc["digest"]] = desc
        return data

    def walk(desc: dict[str, Any]) -> None:
        doc = json.loads(check(desc))
        if "manifests" in doc:
            for child in doc["manifests"]:
                walk(child)
        else:
            check(doc["config"])
            for layer in doc["layers"]:
                check(layer)

    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    for desc in json.loads((root / "index.json").read_bytes())["manifests"]:
        walk(desc)
    return seen


# --------------------------------------------------------------------------- entries


def test_every_entry_type_reads_back_through_tarfile() -> None:
    data = layer_tar(
        Layer(
            [
                Dir("d/", mode=0o750, uid=1, gid=2, mtime=5, xattrs={"user.dir": b"yes"}),
                File("d/f", b"hello", mode=0o4755, uid=1000, gid=1001, xattrs={"user.a": b"1"}),
                File("d/rega", b"x", type=b"\0"),
                File("d/contig", b"y", type=b"7"),
                Symlink("d/abs", "/etc/passwd", uid=7, gid=8),
                Symlink("d/rel", "../d/f"),
                Hardlink("d/hl", "d/f"),
                Fifo("d/fifo", mode=0o600),
                Device("d/null", "c", 1, 3, mode=0o666),
                Device("d/sda", "b", 8, 0),
            ]
        )
    )
    m = by_name(data)
    assert m["d"].isdir() and m["d"].mode == 0o750 and (m["d"].uid, m["d"].gid, m["d"].mtime) == (1, 2, 5)
    assert m["d"].pax_headers["SCHILY.xattr.user.dir"] == "yes"
    f = m["d/f"]
    assert f.isreg() and f.mode == 0o4755 and (f.uid, f.gid) == (1000, 1001) and f.mtime == FIXED_MTIME
    assert extract_file(data, "d/f") == b"hello"
    assert f.uname == f.gname == ""  # numeric ids only
    assert m["d/rega"].type == tarfile.AREGTYPE and m["d/rega"].isreg()
    assert m["d/contig"].type == tarfile.CONTTYPE and m["d/contig"].isreg()
    assert m["d/abs"].issym() and m["d/abs"].linkname == "/etc/passwd" and m["d/abs"].mode == 0o777
    assert (m["d/abs"].uid, m["d/abs"].gid) == (7, 8)
    assert m["d/rel"].linkname == "../d/f"
    assert m["d/hl"].islnk() and m["d/hl"].linkname == "d/f" and m["d/hl"].size == 0
    assert m["d/fifo"].isfifo() and m["d/fifo"].mode == 0o600
    assert m["d/null"].ischr() and (m["d/null"].devmajor, m["d/null"].devminor) == (1, 3)
    assert m["d/sda"].isblk() and (m["d/sda"].devmajor, m["d/sda"].devminor) == (8, 0)


def test_names_are_written_verbatim() -> None:
    names = ["./a", "/abs", "a//b", "dir-without-slash", "dir-with-slash/", ".", "./", "/", "trailing/"]
    entries = [File(n) for n in names[:3]] + [Dir(n) for n in names[3:]]
    assert raw_names(layer_tar(Layer(entries))) == [n.encode() for n in names]


@pytest.mark.parametrize(
    ("entry", "name", "mode"),
    [
        (Whiteout("a/b"), b"a/.wh.b", 0o600),
        (Whiteout("b"), b".wh.b", 0o600),
        (Whiteout("a/b/"), b"a/.wh.b", 0o600),
        (Whiteout("./a/b"), b"./a/.wh.b", 0o600),
        (Opaque("a/b"), b"a/b/.wh..wh..opq", 0o755),
        (Opaque("a/b/"), b"a/b/.wh..wh..opq", 0o755),
        (Opaque(""), b".wh..wh..opq", 0o755),
        (Opaque("."), b"./.wh..wh..opq", 0o755),
    ],
)
def test_whiteout_and_opaque_markers(entry: Any, name: bytes, mode: int) -> None:
    data = layer_tar(Layer([entry]))
    (m,) = members(data)
    assert data[:100].rstrip(b"\0") == name
    assert m.isreg() and m.size == 0 and m.mode == mode


def test_non_utf8_whiteout_name() -> None:
    (m,) = members(layer_tar(Layer([Whiteout(b"x/caf\xe9")])))
    assert m.name.encode("utf-8", "surrogateescape") == b"x/.wh.caf\xe9"


def test_non_utf8_names_and_binary_xattrs_are_raw_pax_records() -> None:
    """Like Go's archive/tar and GNU tar: raw bytes, no hdrcharset record (GNU tar warns
    about it)."""
    data = layer_tar(Layer([File(b"caf\xe9", b"x", xattrs={"user.bin": b"\x00\xff\x01\x02"})]))
    records = pax_block(data)
    assert b"hdrcharset" not in records
    assert b" path=caf\xe9\n" in records
    assert b" SCHILY.xattr.user.bin=\x00\xff\x01\x02\n" in records
    (m,) = members(data)
    assert m.name.encode("utf-8", "surrogateescape") == b"caf\xe9"
    assert m.pax_headers["SCHILY.xattr.user.bin"].encode("utf-8", "surrogateescape") == b"\x00\xff\x01\x02"


def test_utf8_names_use_pax_path() -> None:
    data = layer_tar(Layer([File("ünï cødé ☃.txt")]))
    assert " path=ünï cødé ☃.txt\n".encode() in pax_block(data)
    assert members(data)[0].name == "ünï cødé ☃.txt"


def test_long_names_pax_gnu_and_ustar() -> None:
    long_dir = "l" * 120
    long_name = f"{long_dir}/{'f' * 100}"
    long_link = "t" * 200
    entries = [File(long_name, b"data"), Symlink("s", long_link), Hardlink("h", long_name)]

    pax = layer_tar(Layer(entries))
    assert f" path={long_name}\n".encode() in pax_block(pax)
    gnu = layer_tar(Layer(entries, format="gnu"))
    assert gnu[:13] == b"././@LongLink" and gnu[156:157] == b"L"
    assert b"././@LongLink" in gnu and b"K" in {gnu[i + 156 : i + 157] for i in range(0, len(gnu), 512)}
    for data in (pax, gnu):
        m = by_name(data)
        assert extract_file(data, long_name) == b"data"
        assert m["s"].linkname == long_link and m["h"].linkname == long_name

    ustar = layer_tar(Layer([File(long_name, b"u")], format="ustar"))
    header = ustar[:512]
    assert header[345:500].rstrip(b"\0") == long_dir.encode()  # the prefix field
    assert header[:100].rstrip(b"\0") == b"f" * 100
    assert extract_file(ustar, long_name) == b"u"


@pytest.mark.parametrize("fmt", ["gnu", "ustar"])
def test_xattrs_need_pax(fmt: str) -> None:
    with pytest.raises(ValueError, match="xattrs"):
        layer_tar(Layer([File("f", xattrs={"user.a": b"1"})], format=fmt))


def test_big_ids_and_negative_mtime() -> None:
    entries = [File("big", uid=100_000_000, gid=200_000_000, mtime=-5)]
    for fmt in ("pax", "gnu"):
        (m,) = members(layer_tar(Layer(entries, format=fmt)))
        assert (m.uid, m.gid, m.mtime) == (100_000_000, 200_000_000, -5)
    records = pax_block(layer_tar(Layer(entries)))
    assert b" uid=100000000\n" in records and b" mtime=-5\n" in records


def test_invalid_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="Raw"):
        layer_tar(Layer([File("f", type=b"1")]))
    with pytest.raises(ValueError, match="kind"):
        layer_tar(Layer([Device("d", "x", 1, 1)]))
    with pytest.raises(ValueError, match="format"):
        layer_tar(Layer([File("f")], format="v7"))
    with pytest.raises(TypeError):
        layer_tar(Layer(["not an entry"]))  # type: ignore[list-item]


# --------------------------------------------------------------------------- raw


@pytest.mark.parametrize("name", [b"../../etc/passwd", b"/etc/shadow", b"a/../../b", b"."])
def test_raw_hostile_names_are_written_as_is(name: bytes) -> None:
    data = layer_tar(Layer([Raw(name, data=b"evil")]))
    assert data[:100].rstrip(b"\0") == name
    assert extract_file(data, members(data)[0].name) == b"evil"


def test_raw_empty_and_huge_names() -> None:
    data = layer_tar(Layer([Raw(b"", type=b"5"), Raw(b"n" * 10_000, data=b"x")]))
    assert data[:100] == b"\0" * 100
    m = members(data)
    assert m[0].name == "" and m[0].isdir()
    assert m[1].name == "n" * 10_000 and m[1].size == 1


def test_raw_long_names_in_gnu_layer_use_longlink() -> None:
    data = layer_tar(Layer([Raw(b"x" * 300, type=b"2", linkname=b"y" * 300)], format="gnu"))
    assert data[156:157] == b"L"
    (m,) = members(data)
    assert m.name == "x" * 300 and m.linkname == "y" * 300


def test_raw_header_fields() -> None:
    raw = Raw(
        b"f", type=b"Z", data=b"abc", linkname=b"tgt", mode=0o7777, uid=2**22, gid=-1, mtime=-(2**40),
        devmajor=3, devminor=4, uname=b"root", gname=b"wheel", prefix=b"pre",
    )
    data = layer_tar(Layer([raw]))
    h = data[:512]
    assert h[156:157] == b"Z"
    assert h[100:108] == b"0007777\0"
    assert h[108] == 0x80 and int.from_bytes(h[109:116], "big") == 2**22  # base-256
    assert h[116:124] == b"\xff" * 8  # -1, base-256 two's complement
    assert h[257:265] == b"ustar\x0000"
    assert h[265:297].rstrip(b"\0") == b"root" and h[297:329].rstrip(b"\0") == b"wheel"
    assert h[345:500].rstrip(b"\0") == b"pre"
    assert int(h[148:154], 8) == sum(h[:148]) + 8 * 32 + sum(h[156:])
    m = members(data)[0]
    assert (m.uid, m.gid, m.mtime) == (2**22, -1, -(2**40))
    assert m.name == "pre/f"


def test_raw_size_lie_and_bad_checksum() -> None:
    lying = layer_tar(Layer([Raw(b"f", data=b"abc", size=10**6)]))
    assert int(lying[124:136].rstrip(b"\0"), 8) == 10**6
    assert lying[512:515] == b"abc" and len(lying) == 512 * 2 + 1024
    bad = layer_tar(Layer([Raw(b"f", chksum=1)]))
    assert bad[148:156] == b"000001\0 "
    with pytest.raises(tarfile.ReadError):
        members(bad)


def test_raw_pax_records_and_global_header() -> None:
    data = layer_tar(
        Layer(
            [
                Raw(b"././@PaxHeader", type=b"g", data=pax_records({"comment": "global"})),
                Raw(b"short", pax={"path": b"real/name", "SCHILY.xattr.user.k": b"\xff"}),
                Raw(b"e", pax={}),
            ]
        )
    )
    m = members(data)
    assert [x.name for x in m] == ["real/name", "e"]
    assert m[0].pax_headers["SCHILY.xattr.user.k"].encode("utf-8", "surrogateescape") == b"\xff"


@pytest.mark.parametrize("length", range(0, 1030, 7))
def test_pax_record_lengths_count_themselves(length: int) -> None:
    record = pax_records([("k", "v" * length)])
    size, rest = record.split(b" ", 1)
    assert int(size) == len(record) and rest == b"k=" + b"v" * length + b"\n"


def test_magic_override_for_v7_headers() -> None:
    data = layer_tar(Layer([Raw(b"old", magic=b"\0" * 8, data=b"v7")]))
    assert data[257:265] == b"\0" * 8
    assert extract_file(data, "old") == b"v7"


# --------------------------------------------------------------------------- sparse


@pytest.mark.parametrize("style", ["pax1.0", "pax0.1", "gnu-old"])
@pytest.mark.parametrize(
    "chunks",
    [
        [(0, b"head"), (4096, b"middle"), (9000, b"x")],  # ends in a hole
        [(100, b"a"), (20_000 - 3, b"end")],  # ends with data
        [(i * 1000, bytes([65 + i % 26])) for i in range(60)],  # many regions: GNU extension blocks
        [(10, b"a"), (300, b"b"), (700, b"c" * 600), (1400, b"d")],  # close, unaligned: merged
        [],
    ],
)
def test_sparse_files_read_back(style: str, chunks: list[tuple[int, bytes]]) -> None:
    size = 80_000 if len(chunks) > 4 else 20_000
    expected = bytearray(size)
    for offset, piece in chunks:
        expected[offset : offset + len(piece)] = piece
    data = layer_tar(Layer([Sparse("dir/sparse", size, chunks, style=style)]))
    (m,) = members(data)
    assert m.name == "dir/sparse" and m.size == size and m.issparse()
    assert extract_file(data, "dir/sparse") == bytes(expected)
    assert len(data) < size  # holes are not stored


def test_sparse_regions_are_whole_blocks_except_the_last() -> None:
    """GNU tar reads each region as whole blocks, tarfile reads them back to back; both
    agree only if all regions but the last are multiples of 512 (as GNU tar writes)."""
    data = layer_tar(Layer([Sparse("s", 5000, [(10, b"a"), (300, b"b"), (2000, b"c" * 600), (4990, b"e")], style="pax0.1")]))
    (m,) = members(data)
    assert m.sparse is not None
    assert all(size % 512 == 0 for _, size in m.sparse[:-1])
    assert m.sparse[0] == (10, 512)


def test_sparse_validation() -> None:
    with pytest.raises(ValueError):
        layer_tar(Layer([Sparse("s", 10, [(5, b"abc"), (6, b"x")])]))
    with pytest.raises(ValueError):
        layer_tar(Layer([Sparse("s", 10, [(8, b"abc")])]))
    with pytest.raises(ValueError, match="style"):
        layer_tar(Layer([Sparse("s", 10, [], style="nope")]))


# --------------------------------------------------------------------------- GNU tar as a second reader


def _gnu_tar() -> str | None:
    tar = shutil.which("tar")
    if tar is None:
        return None
    version = subprocess.run([tar, "--version"], capture_output=True, text=True).stdout
    return tar if "GNU tar" in version else None


@pytest.mark.skipif(_gnu_tar() is None, reason="GNU tar not installed")
def test_gnu_tar_extracts_generated_layers_without_complaint(tmp_path: Path) -> None:
    chunks = [(0, b"head"), (700, b"x" * 900), (5000, b"tail")]
    expected = bytearray(9000)
    for offset, piece in chunks:
        expected[offset : offset + len(piece)] = piece
    for fmt in ("pax", "gnu"):
        entries: list[Any] = [
            File("l" * 150 + "/f", b"long"),
            Symlink("s", "t" * 200),
            Hardlink("h", "l" * 150 + "/f"),
            File(b"caf\xe9", b"latin1"),
        ]
        if fmt == "pax":
            entries.append(File("x", b"", xattrs={"user.bin": b"\x00\xff"}))
        entries += [Sparse(f"sparse-{style}", 9000, chunks, style=style) for style in ("pax1.0", "pax0.1", "gnu-old")]
        entries.append(File("last", b"ok"))
        archive = tmp_path / f"{fmt}.tar"
        archive.write_bytes(layer_tar(Layer(entries, format=fmt)))
        out = tmp_path / f"out-{fmt}"
        out.mkdir()
        result = subprocess.run([_gnu_tar(), "-xf", str(archive), "-C", str(out)], capture_output=True, text=True)  # type: ignore[list-item]
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert (out / ("l" * 150) / "f").read_bytes() == b"long"
        assert os.readlink(out / "s") == "t" * 200
        assert os.path.samefile(out / "h", out / ("l" * 150) / "f")
        assert (out / os.fsdecode(b"caf\xe9")).read_bytes() == b"latin1"
        for style in ("pax1.0", "pax0.1", "gnu-old"):
            assert (out / f"sparse-{style}").read_bytes() == bytes(expected), style
        assert (out / "last").read_bytes() == b"ok"


# --------------------------------------------------------------------------- layers


def test_empty_layer_is_two_zero_blocks() -> None:
    assert layer_tar(Layer()) == EMPTY_LAYER_TAR == b"\0" * 1024
    assert sha256_digest(layer_tar(Layer())) == EMPTY_DIFF_ID


def test_layer_is_not_padded_to_a_record() -> None:
    assert len(layer_tar(Layer([File("f", b"x")]))) == 512 * 2 + 1024


def test_trailing_and_raw() -> None:
    layer = Layer([File("f")], trailing=b"\0" * 4096 + b"junk")
    assert layer_tar(layer) == layer_tar(Layer([File("f")])) + b"\0" * 4096 + b"junk"
    assert layer_tar(Layer(raw=b"not a tar", trailing=b"!")) == b"not a tar!"
    assert layer_tar(Layer([File("ignored")], raw=b"")) == b""


def test_layer_tar_is_deterministic() -> None:
    def make() -> Layer:
        return Layer([Dir("a/"), File("a/b", b"x" * 10_000, xattrs={"user.z": b"1", "user.a": b"2"}), Symlink("c", "a/b")])

    assert layer_tar(make()) == layer_tar(make())
    for kind in ("gzip", "zstd", "xz", "bzip2"):
        a, b = make(), make()
        a.compression = b.compression = kind
        assert layer_blob(a) == layer_blob(b)


DECOMPRESS = {
    "none": lambda b: b,
    "gzip": gzip.decompress,
    "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
    "xz": lzma.decompress,
    "bzip2": bz2.decompress,
}
MAGIC = {"gzip": b"\x1f\x8b\x08", "zstd": b"\x28\xb5\x2f\xfd", "xz": b"\xfd7zXZ\x00", "bzip2": b"BZh"}


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd", "xz", "bzip2"])
def test_compressed_blob_decompresses_to_the_tar(kind: str) -> None:
    layer = Layer([File("f", b"content " * 1000)], compression=kind)
    blob = layer_blob(layer)
    assert DECOMPRESS[kind](blob) == layer_tar(layer)
    if kind == "none":
        assert blob[257:262] == b"ustar"
    else:
        assert blob.startswith(MAGIC[kind])


def test_gzip_header_is_fixed() -> None:
    blob = layer_blob(Layer([File("f")], compression="gzip"))
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0, OS unknown


def gzip_members(blob: bytes) -> list[bytes]:
    out = []
    while blob:
        d = zlib.decompressobj(31)
        out.append(d.decompress(blob))
        blob = d.unused_data
    return out


def test_multi_member_gzip() -> None:
    layer = Layer([File("f", bytes(range(256)) * 40)], compression="gzip", gzip_members=3)
    parts = gzip_members(layer_blob(layer))
    assert len(parts) == 3 and all(parts)
    assert b"".join(parts) == layer_tar(layer) == gzip.decompress(layer_blob(layer))


@pytest.mark.parametrize("kind", ["zstd", "xz", "bzip2"])
def test_multi_stream_other_codecs(kind: str) -> None:
    layer = Layer([File("f", b"z" * 5000)], compression=kind, gzip_members=2)
    blob = layer_blob(layer)
    assert blob != layer_blob(Layer([File("f", b"z" * 5000)], compression=kind))
    if kind == "zstd":
        out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    else:
        out = DECOMPRESS[kind](blob)  # lzma and bz2 read concatenated streams
    assert out == layer_tar(layer)


def test_members_need_a_compression() -> None:
    with pytest.raises(ValueError):
        compress(b"x", "none", members=2)
    with pytest.raises(ValueError):
        compress(b"x", "lz4")


def test_compressed_trailing_and_skippable_frame() -> None:
    layer = Layer([File("f", b"a")], compression="gzip", compressed_trailing=b"\0" * 100)
    blob = layer_blob(layer)
    assert blob.endswith(b"\0" * 100) and gzip_members(blob[:-100]) == [layer_tar(layer)]

    zl = Layer([File("f", b"a")], compression="zstd", zstd_skippable=True)
    blob = layer_blob(zl)
    assert blob.startswith(ZSTD_SKIPPABLE_FRAME) and blob[:4] == b"\x50\x2a\x4d\x18"
    out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    assert out == layer_tar(zl)


@pytest.mark.parametrize(
    ("kind", "oci", "docker"),
    [
        ("none", "application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar"),
        ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.docker.image.rootfs.diff.tar.zstd"),
        ("xz", "application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar"),
        ("bzip2", "application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar"),
    ],
)
def test_media_types(kind: str, oci: str, docker: str) -> None:
    assert layer_media_type(Layer(compression=kind)) == oci
    assert layer_media_type(Layer(compression=kind), docker=True) == docker
    assert layer_media_type(Layer(compression=kind, media_type="x/lie"), docker=True) == "x/lie"


# --------------------------------------------------------------------------- config


def test_config_fields() -> None:
    spec = ImageSpec(
        [Layer(), Layer()],
        entrypoint=["/bin/app"], cmd=["--x"], env=["A=1"], working_dir="/w", user="1:2",
        labels={"b": "2", "a": "1"}, exposed_ports=["80/tcp", "53/udp"], architecture="arm64", variant="v8",
    )
    cfg = config_json(spec, ["sha256:a", "sha256:b"])
    assert cfg["architecture"] == "arm64" and cfg["os"] == "linux" and cfg["variant"] == "v8"
    assert cfg["config"] == {
        "User": "1:2", "ExposedPorts": {"53/udp": {}, "80/tcp": {}}, "Env": ["A=1"],
        "Entrypoint": ["/bin/app"], "Cmd": ["--x"], "WorkingDir": "/w", "Labels": {"a": "1", "b": "2"},
    }
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": ["sha256:a", "sha256:b"]}
    assert [h["created_by"] for h in cfg["history"]] == ["layer 0", "layer 1"]
    assert spec.platform == "linux/arm64/v8"


def test_config_defaults_and_explicit_history() -> None:
    history = [{"created_by": "RUN a"}, {"created_by": "ENV x", "empty_layer": True}]
    cfg = config_json(ImageSpec([Layer()], history=history), ["sha256:a"])
    assert cfg["config"] == {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    assert cfg["history"] == history
    assert "variant" not in cfg


def test_config_overrides() -> None:
    merged = config_json(ImageSpec([Layer()], config_overrides={"rootfs": {"diff_ids": []}, "os": DELETE, "extra": None}), ["sha256:a"])
    assert merged["rootfs"] == {"type": "layers", "diff_ids": []} and "os" not in merged and merged["extra"] is None
    assert config_json(ImageSpec(config_overrides=b"{not json"), []) == b"{not json"
    assert config_json(ImageSpec(config_overrides=lambda c: {**c, "os": "windows"}), [])["os"] == "windows"


# --------------------------------------------------------------------------- docker archives


def test_legacy_docker_archive_structure(tmp_path: Path) -> None:
    spec = simple_spec(entrypoint=["/bin/sh"])
    out = tmp_path / "img.tar"
    built = write_docker_archive(out, spec, tags=["example/app:1.0", "example/app:latest"])
    assert isinstance(built, BuiltImage) and built.path == out and built.manifest_digest is None
    assert built.ref == "example/app:1.0" and built.platform == "linux/amd64"

    (manifest,) = json.loads(read_member(out, "manifest.json"))
    assert list(manifest) == ["Config", "RepoTags", "Layers"]
    assert manifest["RepoTags"] == ["example/app:1.0", "example/app:latest"]
    config_bytes = read_member(out, manifest["Config"])
    assert manifest["Config"] == _hex(built.config_digest) + ".json"
    assert sha256_digest(config_bytes) == built.config_digest
    config = json.loads(config_bytes)
    assert config["rootfs"]["diff_ids"] == built.diff_ids
    assert config["config"]["Entrypoint"] == ["/bin/sh"]

    stored = [read_member(out, path) for path in manifest["Layers"]]
    assert [sha256_digest(b) for b in stored] == built.layer_digests
    assert built.diff_ids[0] == built.layer_digests[0] == sha256_digest(layer_tar(spec.layers[0]))
    assert stored[1] == layer_blob(spec.layers[1])  # legacy stores blobs as built

    # v1 layer dirs: VERSION, json with the parent chain, layer.tar; members sorted.
    ids = [p.split("/")[0] for p in manifest["Layers"]]
    assert read_member(out, f"{ids[0]}/VERSION") == b"1.0"
    v1 = [json.loads(read_member(out, f"{i}/json")) for i in ids]
    assert v1[0]["id"] == ids[0] and "parent" not in v1[0]
    assert v1[1]["parent"] == ids[0] and v1[1]["config"]["Entrypoint"] == ["/bin/sh"]
    assert json.loads(read_member(out, "repositories")) == {"example/app": {"1.0": ids[1], "latest": ids[1]}}
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert all(m.uname == "root" and m.uid == 0 and m.mtime == FIXED_MTIME for m in tar)
        assert tar.getmember(ids[0]).isdir()
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert raw_names(out.read_bytes())[0] == f"{names[0]}/".encode()  # dirs written as docker does


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def test_docker_archive_is_deterministic(tmp_path: Path) -> None:
    for style in ("legacy", "skopeo", "docker25", "containerd"):
        a, b = tmp_path / f"a-{style}.tar", tmp_path / f"b-{style}.tar"
        write_docker_archive(a, simple_spec(), tags=["x:1"], style=style)
        write_docker_archive(b, simple_spec(), tags=["x:1"], style=style)
        assert a.read_bytes() == b.read_bytes(), style


def test_several_images_share_base_layer_dirs(tmp_path: Path) -> None:
    base = Layer([File("base")])
    one = ImageSpec([base, Layer([File("one")])])
    two = ImageSpec([base, Layer([File("two")])], cmd=["two"])
    out = tmp_path / "multi.tar"
    built = write_docker_archive(out, [(one, ["img:one"]), (two, ["img:two"])])
    assert isinstance(built, list) and [b.ref for b in built] == ["img:one", "img:two"]
    manifest = json.loads(read_member(out, "manifest.json"))
    assert [m["RepoTags"] for m in manifest] == [["img:one"], ["img:two"]]
    assert manifest[0]["Layers"][0] == manifest[1]["Layers"][0]  # shared base dir
    assert manifest[0]["Layers"][1] != manifest[1]["Layers"][1]
    with tarfile.open(out) as tar:
        assert sum(n.endswith("/layer.tar") for n in tar.getnames()) == 3


def test_untagged_image_has_null_repotags_and_no_repositories(tmp_path: Path) -> None:
    out = tmp_path / "untagged.tar"
    built = write_docker_archive(out, ImageSpec([Layer()]))
    assert isinstance(built, BuiltImage) and built.ref is None
    assert json.loads(read_member(out, "manifest.json"))[0]["RepoTags"] is None
    with tarfile.open(out) as tar:
        assert "repositories" not in tar.getnames()


def test_repeated_layer_is_stored_at_both_positions(tmp_path: Path) -> None:
    same = Layer([File("f", b"same")])
    spec = ImageSpec([same, Layer([Whiteout("f")]), same])
    out = tmp_path / "rep.tar"
    built = write_docker_archive(out, spec)
    assert isinstance(built, BuiltImage)
    assert built.diff_ids[0] == built.diff_ids[2]
    (manifest,) = json.loads(read_member(out, "manifest.json"))
    assert len(set(manifest["Layers"])) == 3  # different v1 dirs (different chains)
    assert read_member(out, manifest["Layers"][0]) == read_member(out, manifest["Layers"][2])


@pytest.mark.parametrize("links", ["symlink", "hardlink"])
def test_layer_links(tmp_path: Path, links: str) -> None:
    same = Layer([File("f", b"same")])
    out = tmp_path / f"{links}.tar"
    write_docker_archive(out, ImageSpec([same, Layer([File("g")]), same]), layer_links=links)
    (manifest,) = json.loads(read_member(out, "manifest.json"))
    first, _, third = manifest["Layers"]
    with tarfile.open(out) as tar:
        order = tar.getnames()
        a, b = sorted([first, third], key=order.index)  # the earlier member is the real file
        link = tar.getmember(b)
        assert tar.getmember(a).isfile()
        if links == "symlink":
            assert link.issym() and link.linkname == f"../{a}"
        else:
            assert link.islnk() and link.linkname == a
    # Both resolve to the same bytes through tarfile.
    assert read_member(out, first) == read_member(out, third) == layer_tar(same)


def test_skopeo_style(tmp_path: Path) -> None:
    spec = simple_spec()
    out = tmp_path / "skopeo.tar"
    built = write_docker_archive(out, spec, tags=["docker.io/example/app:1"], style="skopeo")
    assert isinstance(built, BuiltImage)
    (manifest,) = json.loads(read_member(out, "manifest.json"))
    assert manifest["Layers"] == [f"{_hex(d)}.tar" for d in built.layer_digests]
    with tarfile.open(out) as tar:
        ms = tar.getmembers()
        assert not any(m.isdir() for m in ms)
        assert all(m.mtime == 0 and m.uname == "" for m in ms)
        assert all(m.mode == 0o444 for m in ms if m.isfile())
        links = [m for m in ms if m.name.endswith("/layer.tar")]
        assert [m.linkname for m in links] == [f"../{name}" for name in manifest["Layers"]]
        assert all(m.issym() for m in links)
        names = [m.name for m in ms]
    # layers first, then the config, then the v1 dirs, then manifest.json and repositories
    assert names[: len(manifest["Layers"]) + 1] == manifest["Layers"] + [manifest["Config"]]
    assert names[-2:] == ["manifest.json", "repositories"]
    assert json.loads(read_member(out, "repositories")) == {"docker.io/example/app": {"1": links[-1].name.split("/")[0]}}


def test_skopeo_style_mirrors_a_real_skopeo_archive(tmp_path: Path) -> None:
    """Same member kinds, modes and ordering as skopeo's own docker-archive."""

    def shape(path: Path) -> list[tuple[str, bytes, int, int, str]]:
        out = []
        with tarfile.open(path) as tar:
            for m in tar:
                kind = "layer" if m.name.endswith(".tar") and "/" not in m.name else m.name.split("/")[-1]
                if "/" not in m.name and m.name.endswith(".json") and m.name != "manifest.json":
                    kind = "config"
                out.append((kind, m.type, m.mode, m.mtime, m.uname))
        return out

    real = REAL_IMAGES / "edge-scratch.skopeo-docker-archive.tar"
    layers = [Layer([File(f"f{i}", bytes([i]))]) for i in range(5)]
    ours = tmp_path / "ours.tar"
    write_docker_archive(ours, ImageSpec(layers), tags=["docker.io/public/edge:scratch"], style="skopeo")
    assert shape(ours) == shape(real)


@pytest.mark.parametrize("style", ["docker25", "containerd"])
def test_docker25_and_containerd_styles(tmp_path: Path, style: str) -> None:
    spec = simple_spec()
    out = tmp_path / f"{style}.tar"
    built = write_docker_archive(out, spec, tags=["app:1", "registry.local:5000/team/app:2"], style=style)
    assert isinstance(built, BuiltImage) and built.manifest_digest is not None
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert {"oci-layout", "index.json", "manifest.json", "repositories"} <= set(names)

    (docker_manifest,) = json.loads(read_member(out, "manifest.json"))
    assert docker_manifest["Config"] == f"blobs/sha256/{_hex(built.config_digest)}"
    assert docker_manifest["Layers"] == [f"blobs/sha256/{_hex(d)}" for d in built.layer_digests]
    index = json.loads(read_member(out, "index.json"))
    assert [d["annotations"] for d in index["manifests"]] == [
        {"io.containerd.image.name": "docker.io/library/app:1", "org.opencontainers.image.ref.name": "1"},
        {"io.containerd.image.name": "registry.local:5000/team/app:2", "org.opencontainers.image.ref.name": "2"},
    ]
    desc = index["manifests"][0]
    manifest_bytes = read_member(out, f"blobs/sha256/{_hex(desc['digest'])}")
    assert sha256_digest(manifest_bytes) == desc["digest"] == built.manifest_digest and len(manifest_bytes) == desc["size"]
    manifest = json.loads(manifest_bytes)
    for layer_desc, layer in zip(manifest["layers"], spec.layers):
        blob = read_member(out, f"blobs/sha256/{_hex(layer_desc['digest'])}")
        assert sha256_digest(blob) == layer_desc["digest"] and len(blob) == layer_desc["size"]
        if style == "docker25":  # uncompressed, named by diff_id
            assert blob == layer_tar(layer) and layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
        else:
            assert blob == layer_blob(layer) and layer_desc["mediaType"] == layer_media_type(layer)
    if style == "docker25":
        assert built.layer_digests == built.diff_ids
    else:
        assert built.layer_digests[1] != built.diff_ids[1]


@pytest.mark.parametrize("kind", ["gzip", "zstd", "xz", "bzip2"])
def test_outer_compression(tmp_path: Path, kind: str) -> None:
    plain, packed = tmp_path / "plain.tar", tmp_path / f"packed.tar.{kind}"
    write_docker_archive(plain, simple_spec(), tags=["a:b"])
    write_docker_archive(packed, simple_spec(), tags=["a:b"], outer_compression=kind)
    data = packed.read_bytes()
    assert data.startswith(MAGIC[kind])
    if kind == "zstd":
        out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    else:
        out = DECOMPRESS[kind](data)
    assert out == plain.read_bytes()
    if kind == "gzip":
        assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def test_docker_archive_hooks(tmp_path: Path) -> None:
    out = tmp_path / "hostile.tar"
    write_docker_archive(
        out,
        simple_spec(),
        tags=["a:b"],
        manifest_override={"Layers": ["../../escape.tar"], "RepoTags": DELETE},
        extra_members=[Raw(b"../../escape.tar", data=b"boom"), Raw(b"manifest.json", data=b"[]")],
    )
    with tarfile.open(out) as tar:
        assert [m.name for m in tar.getmembers()[-2:]] == ["../../escape.tar", "manifest.json"]
    generated, extra = _all_members_named(out, "manifest.json")
    (entry,) = json.loads(generated)
    assert entry["Layers"] == ["../../escape.tar"] and "RepoTags" not in entry and entry["Config"] == _config_name(out)
    assert extra == b"[]"

    raw_out = tmp_path / "raw-manifest.tar"
    write_docker_archive(raw_out, simple_spec(), manifest_override=b"{broken")
    assert read_member(raw_out, "manifest.json") == b"{broken"

    fn_out = tmp_path / "fn.tar"
    write_docker_archive(fn_out, simple_spec(), manifest_override=lambda m: m + m)
    assert len(json.loads(read_member(fn_out, "manifest.json"))) == 2


def _config_name(archive: Path) -> str:
    with tarfile.open(archive) as tar:
        return next(n for n in tar.getnames() if n.endswith(".json") and "/" not in n and n != "manifest.json")


def test_manifest_override_dict_merges_into_every_entry(tmp_path: Path) -> None:
    out = tmp_path / "o.tar"
    write_docker_archive(
        out,
        [(simple_spec(), ["a:1"]), (ImageSpec([Layer()]), ["b:1"])],
        manifest_override={"Layers": ["missing/layer.tar"], "RepoTags": DELETE},
    )
    (manifest,) = _all_members_named(out, "manifest.json")
    assert all(entry["Layers"] == ["missing/layer.tar"] and "RepoTags" not in entry for entry in json.loads(manifest))


def _all_members_named(archive: Path, name: str) -> list[bytes]:
    out = []
    with tarfile.open(archive) as tar:
        for m in tar:
            if m.name == name:
                f = tar.extractfile(m)
                assert f is not None
                out.append(f.read())
    return out


def test_docker_archive_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_docker_archive(tmp_path / "x.tar", simple_spec(), style="podman")
    with pytest.raises(ValueError):
        write_docker_archive(tmp_path / "x.tar", simple_spec(), style="skopeo", layer_links="symlink")
    with pytest.raises(ValueError):
        write_docker_archive(tmp_path / "x.tar", [(simple_spec(), ["a"])], tags=["b"])
    with pytest.raises(ValueError):
        write_docker_archive(tmp_path / "x.tar", simple_spec(), index_override={"x": 1})


# --------------------------------------------------------------------------- OCI


def test_oci_layout_flat(tmp_path: Path) -> None:
    spec = simple_spec()
    built = write_oci_layout(tmp_path / "layout", [(spec, "v1"), (ImageSpec([Layer([File("x")], compression="zstd")]), None)])
    assert isinstance(built, list) and [b.ref for b in built] == ["v1", None]
    root = tmp_path / "layout"
    seen = verify_oci_layout(root)
    index = json.loads((root / "index.json").read_bytes())
    assert index == {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": built[0].manifest_digest, "size": seen[built[0].manifest_digest]["size"], "annotations": {"org.opencontainers.image.ref.name": "v1"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": built[1].manifest_digest, "size": seen[built[1].manifest_digest]["size"]},
        ],
    }
    manifest = json.loads(blob_path(root, built[0].manifest_digest).read_bytes())
    assert manifest["config"] == {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": built[0].config_digest, "size": seen[built[0].config_digest]["size"]}
    assert [l["digest"] for l in manifest["layers"]] == built[0].layer_digests
    assert [l["mediaType"] for l in manifest["layers"]] == ["application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip"]
    config = json.loads(blob_path(root, built[0].config_digest).read_bytes())
    assert config["rootfs"]["diff_ids"] == built[0].diff_ids == [sha256_digest(layer_tar(l)) for l in spec.layers]
    assert (root / "oci-layout").read_bytes() == b'{"imageLayoutVersion": "1.0.0"}'
    # every blob file is named by its digest
    for blob in (root / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_oci_layout_multiarch_with_attestations(tmp_path: Path) -> None:
    amd = simple_spec()
    arm = ImageSpec([Layer([File("hello.txt", b"arm")], compression="gzip")], architecture="arm64", variant="v8")
    built = write_oci_layout(tmp_path / "m", [(amd, None), (arm, None)], ref="latest", index="multiarch", attestations=True)
    assert isinstance(built, list)
    root = tmp_path / "m"
    verify_oci_layout(root)
    (top,) = json.loads((root / "index.json").read_bytes())["manifests"]
    assert top["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert top["annotations"] == {"org.opencontainers.image.ref.name": "latest"}
    assert all(b.index_digest == top["digest"] and b.ref == "latest" for b in built)
    inner = json.loads(blob_path(root, top["digest"]).read_bytes())
    platforms = [d["platform"] for d in inner["manifests"]]
    assert platforms == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
        {"architecture": "unknown", "os": "unknown"},
        {"architecture": "unknown", "os": "unknown"},
    ]
    assert [d["digest"] for d in inner["manifests"][:2]] == [b.manifest_digest for b in built]
    for att, image in zip(inner["manifests"][2:], built):
        assert att["annotations"] == {"vnd.docker.reference.digest": image.manifest_digest, "vnd.docker.reference.type": "attestation-manifest"}
        att_manifest = json.loads(blob_path(root, att["digest"]).read_bytes())
        assert att_manifest["layers"][0]["mediaType"] == "application/vnd.in-toto+json"
    assert [b.platform for b in built] == ["linux/amd64", "linux/arm64/v8"]


def test_oci_layout_nested_index(tmp_path: Path) -> None:
    built = write_oci_layout(tmp_path / "n", simple_spec(), ref="v2", index="nested")
    assert isinstance(built, BuiltImage)
    root = tmp_path / "n"
    verify_oci_layout(root)
    (top,) = json.loads((root / "index.json").read_bytes())["manifests"]
    outer = json.loads(blob_path(root, top["digest"]).read_bytes())
    (middle,) = outer["manifests"]
    assert middle["mediaType"] == "application/vnd.oci.image.index.v1+json"
    inner = json.loads(blob_path(root, middle["digest"]).read_bytes())
    assert inner["manifests"][0]["digest"] == built.manifest_digest


def test_oci_layout_docker_media_types(tmp_path: Path) -> None:
    built = write_oci_layout(tmp_path / "d", simple_spec(), ref="x", index="multiarch", docker_media_types=True)
    assert isinstance(built, BuiltImage)
    root = tmp_path / "d"
    verify_oci_layout(root)
    (top,) = json.loads((root / "index.json").read_bytes())["manifests"]
    assert top["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    manifest = json.loads(blob_path(root, built.manifest_digest).read_bytes())
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert [l["mediaType"] for l in manifest["layers"]] == [
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ]


def test_oci_overrides(tmp_path: Path) -> None:
    built = write_oci_layout(
        tmp_path / "o",
        simple_spec(config_overrides={"rootfs": {"diff_ids": ["sha256:" + "0" * 64]}}),
        ref="r",
        manifest_override={"schemaVersion": 1},
        index_override=lambda idx: {**idx, "manifests": idx["manifests"] * 2},
    )
    assert isinstance(built, BuiltImage)
    root = tmp_path / "o"
    assert json.loads(blob_path(root, built.manifest_digest).read_bytes())["schemaVersion"] == 1
    assert len(json.loads((root / "index.json").read_bytes())["manifests"]) == 2
    assert json.loads(blob_path(root, built.config_digest).read_bytes())["rootfs"]["diff_ids"] == ["sha256:" + "0" * 64]
    assert built.diff_ids != ["sha256:" + "0" * 64]  # BuiltImage reports the real ones

    write_oci_layout(tmp_path / "b", simple_spec(), index_override=b"not json")
    assert (tmp_path / "b" / "index.json").read_bytes() == b"not json"


def test_oci_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_oci_layout(tmp_path / "x", simple_spec(), attestations=True)
    with pytest.raises(ValueError):
        write_oci_layout(tmp_path / "x", simple_spec(), index="deep")
    with pytest.raises(ValueError):
        write_oci_layout(tmp_path / "x", [(simple_spec(), "a")], ref="b")  # flat: refs go in the pairs


def test_oci_archive_matches_layout(tmp_path: Path) -> None:
    spec = simple_spec()
    layout = write_oci_layout(tmp_path / "layout", spec, ref="v1")
    archive = write_oci_archive(tmp_path / "img.tar", spec, ref="v1")
    assert isinstance(layout, BuiltImage) and isinstance(archive, BuiltImage)
    assert (archive.manifest_digest, archive.config_digest, archive.layer_digests) == (layout.manifest_digest, layout.config_digest, layout.layer_digests)
    assert archive.path == tmp_path / "img.tar"
    with tarfile.open(archive.path) as tar:
        names = tar.getnames()
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    blobs = sorted(n for n in names if n.startswith("blobs/sha256/"))
    assert names == ["blobs", "blobs/sha256", *blobs, "index.json", "oci-layout"]
    on_disk = {str(p.relative_to(tmp_path / "layout")): p.read_bytes() for p in (tmp_path / "layout").rglob("*") if p.is_file()}
    assert files == on_disk


def test_oci_archive_is_deterministic_and_compressible(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_oci_archive(tmp_path / f"{name}.tar.gz", simple_spec(), ref="v", index="multiarch", attestations=True, outer_compression="gzip")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert "index.json" in tar.getnames()


def test_oci_layout_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_oci_layout(tmp_path / name, [(simple_spec(), "x"), (ImageSpec([Layer(compression="xz")]), "y")], index="nested")
    listing = {
        name: {str(p.relative_to(tmp_path / name)): p.read_bytes() for p in (tmp_path / name).rglob("*") if p.is_file()}
        for name in ("a", "b")
    }
    assert listing["a"] == listing["b"]


def test_same_layer_object_reused_is_built_once_and_stored_once(tmp_path: Path) -> None:
    same = Layer([File("f", b"x" * 1000)], compression="gzip")
    built = write_oci_layout(tmp_path / "r", ImageSpec([same, same]))
    assert isinstance(built, BuiltImage)
    assert built.layer_digests[0] == built.layer_digests[1]
    assert len(list((tmp_path / "r" / "blobs" / "sha256").iterdir())) == 3  # layer, config, manifest


# --------------------------------------------------------------------------- breaking things


def test_corrupt_and_member_offset(tmp_path: Path) -> None:
    out = tmp_path / "c.tar"
    write_docker_archive(out, simple_spec())
    (manifest,) = json.loads(read_member(out, "manifest.json"))
    layer = manifest["Layers"][0]
    before = read_member(out, layer)
    size = out.stat().st_size
    corrupt(out, member_offset(out, layer) + 600, b"XY")
    after = read_member(out, layer)
    assert after != before and after[600:602] == b"XY" and len(after) == len(before)
    assert out.stat().st_size == size
    corrupt(out, -1, b"!")
    assert out.read_bytes()[-1:] == b"!"


def test_blob_path(tmp_path: Path) -> None:
    built = write_oci_layout(tmp_path / "l", simple_spec())
    assert isinstance(built, BuiltImage)
    path = blob_path(tmp_path / "l", built.config_digest)
    assert path == tmp_path / "l" / "blobs" / "sha256" / _hex(built.config_digest) and path.is_file()


# --------------------------------------------------------------------------- the bundled sample


def _load_make_sample() -> Any:
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "fixtures" / "make_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_sample_matches_its_generator(tmp_path: Path) -> None:
    make_sample = _load_make_sample()
    fresh = tmp_path / "sample.tar"
    make_sample.build(fresh)
    committed = ROOT / "fixtures" / "sample" / "sample-image.tar"
    assert committed.read_bytes() == fresh.read_bytes(), "run: .venv/bin/python fixtures/make_sample.py"
    assert committed.stat().st_size < 200_000


def test_sample_shows_off_the_features() -> None:
    archive = ROOT / "fixtures" / "sample" / "sample-image.tar"
    (manifest,) = json.loads(read_member(archive, "manifest.json"))
    assert manifest["RepoTags"] == ["sample/app:1.0"] and len(manifest["Layers"]) == 3
    config = json.loads(read_member(archive, manifest["Config"]))
    for key in ("Entrypoint", "Cmd", "Env", "WorkingDir", "User", "Labels", "ExposedPorts"):
        assert config["config"][key], key
    assert any(h.get("empty_layer") for h in config["history"])
    layers = [by_name(read_member(archive, p)) for p in manifest["Layers"]]
    base, app, top = layers
    assert base["usr/bin/su-sample"].mode == 0o4755
    assert base["tmp"].mode == 0o1777
    assert base["usr/bin/hello-again"].islnk()
    assert base["etc/localtime"].linkname.startswith("/") and not base["usr/lib/libsample.so"].linkname.startswith("/")
    assert base["srv/data"].isfile() and app["srv/data"].isdir()
    assert "var/log/.wh.install.log" in app and "var/log/install.log" in base
    assert "opt/app/.wh..wh..opq" in top and "tmp/.wh.build-cache" in top
    assert "SCHILY.xattr.user.comment" in app["etc/app.conf"].pax_headers
    assert "SCHILY.xattr.security.capability" in base["usr/bin/ping-sample"].pax_headers

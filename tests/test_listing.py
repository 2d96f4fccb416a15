"""The canonical tree listing (converter.listing): format, escaping, order, hard links, xattrs.

The reference for every expectation here is ``fixtures/real/README.md`` ("Listing format of
``*.expected.tree``") and the expected trees next to it: several tests rebuild a few entries
of the real images (as a tar written byte by byte here, as a real layer blob, as a directory)
and require the exact lines of ``edge-scratch.oci-uncompressed.expected.tree``.
"""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from converter.listing import (
    EMPTY_SHA256,
    Record,
    escape,
    format_line,
    format_listing,
    format_xattrs,
    hardlink_labels,
    list_directory,
    list_tar,
    normalise_path,
    records_from_directory,
    records_from_tar,
)

REAL = Path(__file__).resolve().parent.parent / "fixtures" / "real"
# The scratch image keeps user.* xattrs (docker-built images drop them), so its tree has them.
SCRATCH_TREE = REAL / "edge-scratch.oci-uncompressed.expected.tree"

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root: chown to other ids, mknod, security.* xattrs")

TAB = "\t"
L100 = b"l" * 100


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rec(path: bytes, type: str = "f", mode: int = 0o644, **kw) -> Record:
    kw.setdefault("uid", 0)
    kw.setdefault("gid", 0)
    if type == "f":
        kw.setdefault("size", 0)
        kw.setdefault("sha256", EMPTY_SHA256)
    if type == "l":
        kw.setdefault("target", b"x")
    return Record(path=path, type=type, mode=mode, **kw)


def unescape(text: str) -> bytes:
    """Inverse of escape(): ``\\xHH`` is a byte, everything else its UTF-8."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "\\":
            assert text[i + 1] == "x", text
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out += text[i].encode("utf-8")
            i += 1
    return bytes(out)


def expected_lines(paths: list[bytes], tree: Path = SCRATCH_TREE) -> str:
    """The lines of an expected tree for exactly these raw paths, in file order."""
    wanted = {escape(p) for p in paths}
    lines = [ln for ln in tree.read_text("utf-8").splitlines(keepends=True) if ln.split("\t", 1)[0] in wanted]
    assert len(lines) == len(wanted), f"not all paths are in {tree.name}: {sorted(wanted)}"
    return "".join(lines)


# --------------------------------------------------------------------------------------
# escape()


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        # the README's examples
        (b"p/back\\slash", "p/back\\x5cslash"),
        (b"p/tab\there", "p/tab\\x09here"),
        (b"p/caf\xe9", "p/caf\\xe9"),
        ("p/ünï cødé ☃.txt".encode(), "p/ünï cødé ☃.txt"),
        (b"p/dir with space/f", "p/dir with space/f"),
        (b"p/with space", "p/with space"),
        # C0 controls, DEL
        (b"a\x00b", "a\\x00b"),
        (b"new\nline", "new\\x0aline"),
        (b"cr\r", "cr\\x0d"),
        (b"esc\x1b[", "esc\\x1b["),
        (b"del\x7f", "del\\x7f"),
        # C1 controls (U+0080..U+009F) are escaped as their two UTF-8 bytes; U+00A0 is not
        ("c1\u0080".encode(), "c1\\xc2\\x80"),
        ("nel\u0085".encode(), "nel\\xc2\\x85"),
        ("c1\u009f".encode(), "c1\\xc2\\x9f"),
        ("nbsp\u00a0".encode(), "nbsp\u00a0"),
        ("emoji\U0001f600".encode(), "emoji\U0001f600"),
        ("bom\ufeff".encode(), "bom\ufeff"),
        # invalid UTF-8: byte by byte, even the valid multi-byte characters of the name
        (b"\xff", "\\xff"),
        ("ü".encode() + b"\xff", "\\xc3\\xbc\\xff"),
        (b"a\\b\xfe", "a\\x5cb\\xfe"),
        (b"tab\t\xe9", "tab\\x09\\xe9"),
        (b"\xc0\xaf", "\\xc0\\xaf"),  # overlong '/'
        (b"\xe0\x80\xaf", "\\xe0\\x80\\xaf"),  # overlong, 3 bytes
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),  # surrogate U+D800
        (b"\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"),  # U+110000
        (b"\xe2\x98", "\\xe2\\x98"),  # truncated snowman
        (b"~ !", "~ !"),
        (b"", ""),
    ],
)
def test_escape(raw: bytes, text: str) -> None:
    assert escape(raw) == text


@given(st.binary(max_size=40))
def test_escape_roundtrips_and_never_emits_separators(raw: bytes) -> None:
    text = escape(raw)
    assert unescape(text) == raw
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


@given(st.text(max_size=20))
def test_escape_of_valid_utf8_keeps_printable_characters(s: str) -> None:
    try:
        raw = s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates are not valid UTF-8
        return
    text = escape(raw)
    plain = [c for c in s if not (c == "\\" or ord(c) < 0x20 or ord(c) == 0x7F or 0x80 <= ord(c) < 0xA0)]
    assert all(c in text for c in plain)


# --------------------------------------------------------------------------------------
# order


def test_sort_is_by_raw_bytes_readme_examples() -> None:
    paths = [b"p/a0", b"p/a/b", b"p/a-b", b"p/a b", "p/ünï cødé ☃.txt".encode(), b"p/zero-length"]
    shuffled = paths[:]
    random.Random(4).shuffle(shuffled)
    text = format_listing(rec(p) for p in shuffled)
    assert [ln.split(TAB)[0] for ln in text.splitlines()] == [
        "p/a b",
        "p/a-b",
        "p/a/b",
        "p/a0",
        "p/zero-length",
        "p/ünï cødé ☃.txt",
    ]


def test_sort_uses_raw_bytes_not_escaped_text() -> None:
    # raw 0x09 < 0x20, although the escaped "p/tab\x09here" > "p/tab here" as text
    text = format_listing([rec(b"p/tab here"), rec(b"p/tab\there")])
    assert [ln.split(TAB)[0] for ln in text.splitlines()] == ["p/tab\\x09here", "p/tab here"]
    # and a non-UTF-8 name sorts by its byte 0xe9, after "caf" + any ASCII
    text = format_listing([rec(b"p/caf\xe9"), rec(b"p/cafz"), rec("p/café".encode())])
    assert [ln.split(TAB)[0] for ln in text.splitlines()] == ["p/cafz", "p/café", "p/caf\\xe9"]


def test_parent_sorts_before_its_children_and_every_line_ends_with_newline() -> None:
    text = format_listing([rec(b"a/b"), rec(b"a", "d", 0o755), rec(b"a.b")])
    assert text == (
        f"a{TAB}d{TAB}755{TAB}0:0{TAB}-{TAB}-{TAB}-{TAB}-\n"
        f"a.b{TAB}f{TAB}644{TAB}0:0{TAB}0{TAB}{EMPTY_SHA256}{TAB}-{TAB}-\n"
        f"a/b{TAB}f{TAB}644{TAB}0:0{TAB}0{TAB}{EMPTY_SHA256}{TAB}-{TAB}-\n"
    )


def test_empty_tree_is_empty_text() -> None:
    assert format_listing([]) == ""


def test_duplicate_paths_are_an_error() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        format_listing([rec(b"a"), rec(b"a", "d")])


# --------------------------------------------------------------------------------------
# columns


def test_readme_example_lines() -> None:
    capfile = b"cap\n"
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    records = [
        rec(b"p/capfile", "f", 0o755, size=4, sha256=sha(capfile), xattrs={"security.capability": cap}),
        rec(b"p/dangling", "l", 0o777, target=b"nowhere"),
        rec(b"p/fifo", "p", 0o644),
        rec(b"p/hl2", "f", 0o644, size=11, sha256=sha(b"hardlinked\n"), inode=1),
        rec(b"p/hl1", "f", 0o644, size=11, sha256=sha(b"hardlinked\n"), inode=1),
        rec(b"p/null", "c", 0o644, rdev=(1, 3)),
        rec(b"p/sticky", "d", 0o1777),
        rec(b"p/u1000link", "l", 0o777, uid=1000, gid=1000, target=b"u1000"),
    ]
    text = format_listing(records)
    wanted = [
        "p/capfile→f→755→0:0→4→ab185873c38b37f4b8c1e3f924d6594ba01c22dbfe44e07a30fe39682631e6a1→-→"
        "security.capability=0x0100000200200000000000000000000000000000",
        "p/dangling→l→-→0:0→-→->nowhere→-→-",
        "p/fifo→p→644→0:0→-→-→-→-",
        "p/hl2→f→644→0:0→11→028d1d55eece761b070d497008da1ef8e0adcd40b26dfae326849aa811605df2→p/hl1→-",
        "p/null→c→644→0:0→-→1:3→-→-",
        "p/sticky→d→1777→0:0→-→-→-→-",
        "p/u1000link→l→-→1000:1000→-→->u1000→-→-",
    ]
    lines = text.splitlines()
    for w in wanted:
        assert w.replace("→", TAB) in lines


@pytest.mark.parametrize(
    ("mode", "text"),
    [(0o755, "755"), (0o644, "644"), (0o4755, "4755"), (0o6711, "6711"), (0o1777, "1777"), (0o2775, "2775"),
     (0o700, "700"), (0, "0"), (0o7, "7"), (0o100644, "644")],
)
def test_mode_column(mode: int, text: str) -> None:
    assert format_line(rec(b"x", "f", mode)).split(TAB)[2] == text


def test_columns_per_type() -> None:
    def cols(r: Record) -> list[str]:
        return format_line(r).split(TAB)

    assert cols(rec(b"d", "d", 0o755, uid=5, gid=6)) == ["d", "d", "755", "5:6", "-", "-", "-", "-"]
    assert cols(rec(b"e", "f", 0o600)) == ["e", "f", "600", "0:0", "0", EMPTY_SHA256, "-", "-"]
    assert cols(rec(b"l", "l", 0o777, target=b"../x\\y\xff")) == ["l", "l", "-", "0:0", "-", "->../x\\x5cy\\xff", "-", "-"]
    assert cols(rec(b"l2", "l", 0o777, target="/ü ☃".encode())) == ["l2", "l", "-", "0:0", "-", "->/ü ☃", "-", "-"]
    assert cols(rec(b"b", "b", 0o660, rdev=(8, 1))) == ["b", "b", "660", "0:0", "-", "8:1", "-", "-"]
    assert cols(rec(b"c", "c", 0o666, rdev=(4095, 1048575))) == ["c", "c", "666", "0:0", "-", "4095:1048575", "-", "-"]
    assert cols(rec(b"p", "p", 0o644)) == ["p", "p", "644", "0:0", "-", "-", "-", "-"]
    assert cols(rec(b"s", "s", 0o755)) == ["s", "s", "755", "0:0", "-", "-", "-", "-"]
    big = rec(b"big", "f", 0o644, uid=100000000, gid=200000000, size=4, sha256=sha(b"big\n"))
    assert cols(big)[3:5] == ["100000000:200000000", "4"]


def test_incomplete_records_are_rejected() -> None:
    with pytest.raises(ValueError):
        format_line(Record(b"f", "f", 0o644, 0, 0))  # no size
    assert format_line(Record(b"f", "f", 0o644, 0, 0, size=3)).split(TAB)[4:6] == ["3", "-"]  # not hashed
    with pytest.raises(ValueError):
        format_line(Record(b"l", "l", 0o777, 0, 0))
    with pytest.raises(ValueError):
        format_line(Record(b"c", "c", 0o644, 0, 0))
    with pytest.raises(ValueError):
        format_line(rec(b"x", "?"))


# --------------------------------------------------------------------------------------
# hard links


def test_hardlink_group_of_three_is_labelled_by_smallest_member() -> None:
    data = b"hardlinked\n"
    records = [
        rec(b"p/hldir/hl3", size=11, sha256=sha(data), inode="i"),
        rec(b"p/hl2", size=11, sha256=sha(data), inode="i"),
        rec(b"p/hldir", "d", 0o755),
        rec(b"p/hl1", size=11, sha256=sha(data), inode="i"),
    ]
    text = format_listing(records)
    labels = {ln.split(TAB)[0]: ln.split(TAB)[6] for ln in text.splitlines()}
    assert labels == {"p/hl1": "p/hl1", "p/hl2": "p/hl1", "p/hldir": "-", "p/hldir/hl3": "p/hl1"}


def test_link_whose_other_members_are_gone_gets_dash() -> None:
    # hlstay's partner hlgone was deleted; st_nlink may still say 2, but only one is listed
    records = [rec(b"p/hlstay", inode=("dev", 42)), rec(b"p/lowerfile-link", inode=("dev", 43)), rec(b"p/cpup2", inode=7)]
    assert all(ln.split(TAB)[6] == "-" for ln in format_listing(records).splitlines())


def test_hardlink_label_is_escaped_and_chosen_by_raw_bytes() -> None:
    records = [rec(b"p/caf\xe9", inode=1), rec("p/café".encode(), inode=1), rec(b"p/z", inode=1)]
    labels = hardlink_labels(records)
    # raw bytes: "p/caf" + 0xc3 0xa9 ("café") < "p/caf" + 0xe9 < "p/z"
    assert set(labels.values()) == {"p/café"}
    records = [rec(b"p/caf\xe9", inode=1), rec(b"p/z", inode=1)]
    assert format_listing(records).splitlines()[1].split(TAB)[6] == "p/caf\\xe9"


def test_several_groups_and_directories_are_never_grouped() -> None:
    records = [
        rec(b"a1", inode="A"), rec(b"b1", inode="B"), rec(b"a2", inode="A"), rec(b"b2", inode="B"),
        rec(b"d1", "d", 0o755, inode="D"), rec(b"d2", "d", 0o755, inode="D"),
        rec(b"s1", "l", target=b"t", inode="S"), rec(b"s2", "l", target=b"t", inode="S"),
    ]
    labels = hardlink_labels(records)
    assert labels == {b"a1": "a1", b"a2": "a1", b"b1": "b1", b"b2": "b1", b"s1": "s1", b"s2": "s1"}


# --------------------------------------------------------------------------------------
# xattrs


def test_xattrs_sorted_hex_and_excluded() -> None:
    xattrs = {
        "user.comment": b"hello world",
        "user.bin": b"\x00\xff\x01\x02",
        "security.selinux": b"system_u:object_r:container_file_t:s0\x00",
        "trusted.overlay.opaque": b"y",
        "trusted.overlay.origin": b"\x00",
        "system.nfs4_acl": b"\x00\x00",
        "user.empty": b"",
        "trusted.overlayfoo": b"k",  # only "trusted.overlay." (with the dot) is excluded
        "security.capability": bytes.fromhex("0100000200200000000000000000000000000000"),
    }
    assert format_xattrs(xattrs) == (
        "security.capability=0x0100000200200000000000000000000000000000,"
        "trusted.overlayfoo=0x6b,"
        "user.bin=0x00ff0102,"
        "user.comment=0x68656c6c6f20776f726c64,"
        "user.empty=0x"
    )


def test_xattrs_only_excluded_is_dash() -> None:
    assert format_xattrs({}) == "-"
    assert format_xattrs({"security.selinux": b"x", "trusted.overlay.opaque": b"y", "system.nfs4_acl": b""}) == "-"
    line = format_line(rec(b"d", "d", 0o755, xattrs={"trusted.overlay.opaque": b"y"}))
    assert line.split(TAB)[7] == "-"


def test_xattr_sort_is_by_name_bytes() -> None:
    # "user.a" < "user.a.b" < "user.aZ"? bytes: '.'=0x2e < 'Z'=0x5a < 'b'=0x62
    assert format_xattrs({"user.ab": b"", "user.a.b": b"", "user.aZ": b"", "user.a": b""}) == (
        "user.a=0x,user.a.b=0x,user.aZ=0x,user.ab=0x"
    )


# --------------------------------------------------------------------------------------
# a small tar writer of our own (ustar + PAX), encoding entries the way the real tools did
# (raw PAX path bytes without hdrcharset, SCHILY.xattr.*, hard links as typeflag '1')


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def _block(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def tar_header(name: bytes, typeflag: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0, size: int = 0,
               linkname: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    h = bytearray(512)
    h[0:100] = name[:100].ljust(100, b"\0")
    h[100:108] = _octal(mode, 8)
    h[108:116] = _octal(uid if uid < 0o7777777 else 0, 8)
    h[116:124] = _octal(gid if gid < 0o7777777 else 0, 8)
    h[124:136] = _octal(size, 12)
    h[136:148] = _octal(1764225000, 12)
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[157:257] = linkname[:100].ljust(100, b"\0")
    h[257:265] = b"ustar\x0000"
    h[265:297] = b"root".ljust(32, b"\0")
    h[297:329] = b"root".ljust(32, b"\0")
    h[329:337] = _octal(rdev[0], 8)
    h[337:345] = _octal(rdev[1], 8)
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def tar_entry(name: bytes, typeflag: bytes, data: bytes = b"", *, pax: list[tuple[bytes, bytes]] | None = None,
              **kw) -> bytes:
    pax = list(pax or [])
    if len(name) > 100 or not name.isascii():
        pax.append((b"path", name))
    link = kw.get("linkname", b"")
    if len(link) > 100:
        pax.append((b"linkpath", link))
    for key in ("uid", "gid"):
        if kw.get(key, 0) >= 0o7777777:
            pax.append((key.encode(), str(kw[key]).encode()))
    out = b""
    if pax:
        records = b"".join(_pax_record(k, v) for k, v in pax)
        out += tar_header(b"PaxHeaders.0/" + name[-80:], b"x", size=len(records)) + _block(records)
    return out + tar_header(name, typeflag, size=len(data), **kw) + _block(data)


def tar_end() -> bytes:
    return b"\0" * 1024


# The entries of the L2 layer whose final state equals their L2 state; content as steps.sh writes it.
LONG_DIR = b"p/long/" + L100 + b"/" + L100 + b"/" + L100
CAP = bytes.fromhex("0100000200200000000000000000000000000000")


@dataclass
class Spec:
    path: bytes
    type: str
    mode: int
    data: bytes = b""  # file content, symlink target
    uid: int = 0
    gid: int = 0
    rdev: tuple[int, int] = (0, 0)
    link: bytes | None = None  # hard link to this earlier path
    xattrs: dict[str, bytes] = field(default_factory=dict)


EDGE_ENTRIES = [
    Spec(b"p", "d", 0o755),
    Spec(b"p/back\\slash", "f", 0o644, b"bs\n"),
    Spec(b"p/biguid", "f", 0o644, b"big\n", uid=100000000, gid=200000000),
    Spec(b"p/caf\xe9", "f", 0o644, b"latin1\n"),
    Spec(b"p/capfile", "f", 0o755, b"cap\n", xattrs={"security.capability": CAP}),
    Spec(b"p/dangling", "l", 0o777, b"nowhere"),
    Spec(b"p/fifo", "p", 0o644),
    Spec(b"p/hl1", "f", 0o644, b"hardlinked\n"),
    Spec(b"p/hl2", "f", 0o644, link=b"p/hl1"),
    Spec(b"p/hldir", "d", 0o755),
    Spec(b"p/hldir/hl3", "f", 0o644, link=b"p/hl1"),
    Spec(b"p/long", "d", 0o755),
    Spec(b"p/long/hardlink-to-long-name", "f", 0o644, b"deep\n"),
    Spec(b"p/long/" + L100, "d", 0o755),
    Spec(b"p/long/" + L100 + b"/" + L100, "d", 0o755),
    Spec(LONG_DIR, "d", 0o755),
    Spec(LONG_DIR + b"/file-at-more-than-300-chars", "f", 0o644, link=b"p/long/hardlink-to-long-name"),
    Spec(b"p/long/" + b"n" * 255, "f", 0o644, b"max\n"),
    Spec(b"p/long/symlink-with-long-target", "l", 0o777,
         L100 + b"/" + L100 + b"/" + L100 + b"/file-at-more-than-300-chars"),
    Spec(b"p/mode000", "f", 0o000, b"000\n"),
    Spec(b"p/null", "c", 0o644, rdev=(1, 3)),
    Spec(b"p/sgid", "f", 0o2750, b"g\n"),
    Spec(b"p/sgiddir", "d", 0o2775),
    Spec(b"p/sticky", "d", 0o1777),
    Spec(b"p/suid", "f", 0o4755, b"s\n"),
    Spec(b"p/suidsgid", "f", 0o6711, b"ug\n"),
    Spec(b"p/tab\there", "f", 0o644, b"tab\n"),
    Spec(b"p/u1000", "f", 0o644, b"u\n", uid=1000, gid=1000),
    Spec(b"p/u1000link", "l", 0o777, b"u1000", uid=1000, gid=1000),
    Spec(b"p/with space", "f", 0o644, b"s\n"),
    Spec(b"p/xattr-dir", "d", 0o755, xattrs={"user.dir": b"yes"}),
    Spec(b"p/xattr-file", "f", 0o644, b"x\n", xattrs={"user.comment": b"hello world", "user.bin": b"\x00\xff\x01\x02"}),
    Spec(b"p/zero-length", "f", 0o644, b""),
    Spec("p/ünï cødé ☃.txt".encode(), "f", 0o644, b"u\n"),
]


def build_edge_tar(*, libarchive_xattrs_for: bytes = b"p/xattr-dir", dir_slash: bool = True) -> bytes:
    out = b""
    for s in EDGE_ENTRIES:
        pax: list[tuple[bytes, bytes]] = []
        for name, value in s.xattrs.items():
            if s.path == libarchive_xattrs_for:
                pax.append((b"LIBARCHIVE.xattr." + urllib.parse.quote(name).encode(),
                            base64.b64encode(value).rstrip(b"=")))
            else:
                pax.append((b"SCHILY.xattr." + name.encode(), value))
        common = dict(mode=s.mode, uid=s.uid, gid=s.gid, pax=pax)
        if s.link is not None:
            out += tar_entry(s.path, b"1", linkname=s.link, **common)
        elif s.type == "f":
            out += tar_entry(s.path, b"0", s.data, **common)
        elif s.type == "d":
            out += tar_entry(s.path + (b"/" if dir_slash else b""), b"5", **common)
        elif s.type == "l":
            out += tar_entry(s.path, b"2", linkname=s.data, **common)
        elif s.type == "c":
            out += tar_entry(s.path, b"3", rdev=s.rdev, **common)
        elif s.type == "p":
            out += tar_entry(s.path, b"6", **common)
    return out + tar_end()


def test_hand_built_tar_matches_real_expected_lines() -> None:
    text = list_tar(io.BytesIO(build_edge_tar()))
    assert text == expected_lines([s.path for s in EDGE_ENTRIES])


def test_hand_built_tar_schily_and_libarchive_xattrs_agree() -> None:
    a = list_tar(io.BytesIO(build_edge_tar(libarchive_xattrs_for=b"p/xattr-file")))
    b = list_tar(io.BytesIO(build_edge_tar(libarchive_xattrs_for=b"none")))
    assert a == b
    assert "user.bin=0x00ff0102,user.comment=0x68656c6c6f20776f726c64" in a


def _scratch_layer_blob(index: int) -> Path:
    oci = REAL / "edge-scratch.oci-uncompressed"
    manifest_desc = json.loads((oci / "index.json").read_text())["manifests"][0]
    manifest = json.loads((oci / "blobs" / "sha256" / manifest_desc["digest"].split(":")[1]).read_text())
    return oci / "blobs" / "sha256" / manifest["layers"][index]["digest"].split(":")[1]


def test_real_layer_tar_matches_expected_lines() -> None:
    """The L2 layer written by buildah lists, for the entries L3-L5 leave alone, the expected lines."""
    listing = list_tar(_scratch_layer_blob(1))
    by_path = {ln.split(TAB, 1)[0]: ln + "\n" for ln in listing.splitlines()}
    wanted = expected_lines([s.path for s in EDGE_ENTRIES])
    got = "".join(by_path[ln.split(TAB, 1)[0]] for ln in wanted.splitlines())
    assert got == wanted
    # hard links in the layer: hlgone = hlstay and cpup1 = cpup2 are still groups in L2
    assert by_path["p/hlstay"].split(TAB)[6] == "p/hlgone"
    assert by_path["p/cpup2"].split(TAB)[6] == "p/cpup1"


# --------------------------------------------------------------------------------------
# records_from_tar: details


def _tar_bytes(*entries: bytes) -> io.BytesIO:
    return io.BytesIO(b"".join(entries) + tar_end())


def test_tar_names_are_normalised_and_root_skipped() -> None:
    tar = _tar_bytes(
        tar_entry(b"./", b"5", mode=0o755),
        tar_entry(b".", b"5", mode=0o755),
        tar_entry(b"/", b"5", mode=0o755),
        tar_entry(b"./a/", b"5", mode=0o755),
        tar_entry(b"/a/b", b"0", b"x"),
        tar_entry(b"a//c/./", b"5", mode=0o700),
        tar_entry(b"./a/l", b"1", linkname=b"/a/b"),
    )
    assert [r.path for r in records_from_tar(tar)] == [b"a", b"a/b", b"a/c", b"a/l"]


def test_normalise_path() -> None:
    assert normalise_path(b"./a//b/") == b"a/b"
    assert normalise_path(b"/./") == b""
    assert normalise_path(b"a/./b/.") == b"a/b"
    with pytest.raises(ValueError):
        normalise_path(b"a/../b")


def test_tar_hardlink_takes_target_attributes_and_chains() -> None:
    tar = _tar_bytes(
        tar_entry(b"f", b"0", b"data", mode=0o4750, uid=7, gid=8, pax=[(b"SCHILY.xattr.user.k", b"v")]),
        tar_entry(b"g", b"1", linkname=b"f", mode=0o600, uid=1, gid=1),  # the link's own fields are ignored
        tar_entry(b"h", b"1", linkname=b"g"),  # a link to a link joins the same group
        tar_entry(b"s", b"2", linkname=b"f", mode=0o777),
        tar_entry(b"t", b"1", linkname=b"s"),  # a hard link to a symlink is a symlink
    )
    text = list_tar(tar)
    d = sha(b"data")
    assert text == (
        f"f\tf\t4750\t7:8\t4\t{d}\tf\tuser.k=0x76\n"
        f"g\tf\t4750\t7:8\t4\t{d}\tf\tuser.k=0x76\n"
        f"h\tf\t4750\t7:8\t4\t{d}\tf\tuser.k=0x76\n"
        f"s\tl\t-\t0:0\t-\t->f\ts\t-\n"
        f"t\tl\t-\t0:0\t-\t->f\ts\t-\n"
    )


def test_tar_hardlink_errors() -> None:
    with pytest.raises(ValueError, match="not an earlier member"):
        list(records_from_tar(_tar_bytes(tar_entry(b"l", b"1", linkname=b"later"), tar_entry(b"later", b"0"))))
    with pytest.raises(ValueError, match="directory"):
        list(records_from_tar(_tar_bytes(tar_entry(b"d/", b"5"), tar_entry(b"l", b"1", linkname=b"d"))))


def test_tar_duplicates() -> None:
    entries = (
        tar_entry(b"a", b"0", b"old"),
        tar_entry(b"b", b"1", linkname=b"a"),
        tar_entry(b"a", b"0", b"new"),
    )
    with pytest.raises(ValueError, match="duplicate"):
        list_tar(_tar_bytes(*entries))
    # extraction semantics: the later member wins, the earlier link keeps the old inode
    text = list_tar(_tar_bytes(*entries), allow_duplicates=True)
    assert text == f"a\tf\t644\t0:0\t3\t{sha(b'new')}\t-\t-\nb\tf\t644\t0:0\t3\t{sha(b'old')}\t-\t-\n"


def test_tar_from_path_gzip_and_stream(tmp_path: Path) -> None:
    raw = build_edge_tar()
    want = list_tar(io.BytesIO(raw))
    plain = tmp_path / "t.tar"
    plain.write_bytes(raw)
    gz = tmp_path / "t.tar.gz"
    gz.write_bytes(gzip.compress(raw))
    assert list_tar(plain) == want
    assert list_tar(str(plain)) == want
    assert list_tar(gz) == want

    class Stream(io.RawIOBase):  # not seekable, like a pipe
        def __init__(self, data: bytes) -> None:
            self._b = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buf) -> int:  # type: ignore[override]
            n = self._b.readinto(buf)
            return n

    assert list_tar(io.BufferedReader(Stream(gzip.compress(raw)))) == want


def test_tar_written_by_tarfile_gnu_and_pax_formats() -> None:
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            ti = tarfile.TarInfo("d/" + "x" * 150)
            ti.size = 3
            tf.addfile(ti, io.BytesIO(b"abc"))
            ti = tarfile.TarInfo("dev")
            ti.type, ti.devmajor, ti.devminor, ti.mode = tarfile.BLKTYPE, 8, 17, 0o660
            tf.addfile(ti)
        buf.seek(0)
        text = list_tar(buf)
        assert text == (f"d/{'x' * 150}\tf\t644\t0:0\t3\t{sha(b'abc')}\t-\t-\n" f"dev\tb\t660\t0:0\t-\t8:17\t-\t-\n")


# --------------------------------------------------------------------------------------
# records_from_directory


def _user_xattrs_supported(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()


def build_edge_dir(root: Path) -> None:
    """Create EDGE_ENTRIES on disk, as the README says extraction as root does."""
    rb = os.fsencode(root)
    dirs: list[tuple[bytes, int]] = []
    for s in EDGE_ENTRIES:
        p = os.path.join(rb, s.path)
        if s.link is not None:
            os.link(os.path.join(rb, s.link), p)
            continue
        if s.type == "d":
            os.mkdir(p)
        elif s.type == "f":
            with open(p, "wb") as f:
                f.write(s.data)
        elif s.type == "l":
            os.symlink(s.data, p)
        elif s.type == "c":
            os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(*s.rdev))
        elif s.type == "p":
            os.mkfifo(p)
        os.chown(p, s.uid, s.gid, follow_symlinks=False)
        if s.type != "l":
            os.chmod(p, s.mode)
        for name, value in s.xattrs.items():
            os.setxattr(p, name, value, follow_symlinks=False)


@needs_root
def test_directory_matches_real_expected_lines(tmp_path: Path) -> None:
    if not _user_xattrs_supported(tmp_path):
        pytest.skip(f"the file system of {tmp_path} has no user.* xattrs")
    root = tmp_path / "root"
    root.mkdir()
    build_edge_dir(root)
    assert list_directory(root) == expected_lines([s.path for s in EDGE_ENTRIES])
    # and the tar front end agrees with the directory front end on the same entries
    assert list_tar(io.BytesIO(build_edge_tar())) == list_directory(root)


@needs_root
def test_directory_of_gnu_tar_extraction_equals_tar_listing(tmp_path: Path) -> None:
    """GNU tar, an independent extractor, unpacks a real layer; both front ends must agree."""
    gnutar = shutil.which("tar")
    if gnutar is None or b"GNU tar" not in subprocess.run([gnutar, "--version"], capture_output=True).stdout:
        pytest.skip("GNU tar not installed")
    if not _user_xattrs_supported(tmp_path):
        pytest.skip(f"the file system of {tmp_path} has no user.* xattrs")
    layer = _scratch_layer_blob(1)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run([gnutar, "-xpf", layer, "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", out], check=True)
    assert list_directory(out) == list_tar(layer)
    # and back: GNU tar's own archive of that directory lists the same
    again = tmp_path / "again.tar"
    subprocess.run([gnutar, "-cf", again, "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", out, "."], check=True)
    assert list_tar(again) == list_tar(layer)


def test_directory_front_end_as_any_user(tmp_path: Path) -> None:
    """What works without privileges: files, dirs, symlinks, hard links, fifo, special mode bits."""
    root = tmp_path / "r"
    root.mkdir()
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"hello\n")
    os.link(root / "d" / "f", root / "h2")
    os.link(root / "d" / "f", root / "h1")
    (root / "lonely").write_bytes(b"")
    os.chmod(root / "lonely", 0o644)
    os.link(root / "lonely", root / "gone")
    (root / "gone").unlink()  # lonely: st_nlink back to 1
    os.symlink("d", root / "ln")  # a symlink to a dir is never followed
    os.symlink(b"\xff/x", os.path.join(os.fsencode(root), b"bad\xe9"))
    os.mkfifo(root / "fifo")
    os.chmod(root / "fifo", 0o640)
    (root / "st").mkdir()
    os.chmod(root / "st", 0o1777)
    (root / "suid").write_bytes(b"s")
    os.chmod(root / "suid", 0o4755)
    os.chmod(root / "d" / "f", 0o600)
    os.chmod(root / "d", 0o750)
    o = f"{os.getuid()}:{os.getgid()}"
    h = sha(b"hello\n")
    assert list_directory(root) == (
        f"bad\\xe9\tl\t-\t{o}\t-\t->\\xff/x\t-\t-\n"
        f"d\td\t750\t{o}\t-\t-\t-\t-\n"
        f"d/f\tf\t600\t{o}\t6\t{h}\td/f\t-\n"
        f"fifo\tp\t640\t{o}\t-\t-\t-\t-\n"
        f"h1\tf\t600\t{o}\t6\t{h}\td/f\t-\n"
        f"h2\tf\t600\t{o}\t6\t{h}\td/f\t-\n"
        f"ln\tl\t-\t{o}\t-\t->d\t-\t-\n"
        f"lonely\tf\t644\t{o}\t0\t{EMPTY_SHA256}\t-\t-\n"
        f"st\td\t1777\t{o}\t-\t-\t-\t-\n"
        f"suid\tf\t4755\t{o}\t1\t{sha(b's')}\t-\t-\n"
    )
    # a hard link whose partner lies outside the listed tree is not a group
    os.link(root / "suid", tmp_path / "outside")
    suid_line = [ln for ln in list_directory(root).splitlines() if ln.startswith("suid\t")][0]
    assert suid_line.split(TAB)[6] == "-"
    # hash_files=False keeps the size and does not read the content
    rec_f = {r.path: r for r in records_from_directory(root, hash_files=False)}[b"d/f"]
    assert (rec_f.size, rec_f.sha256) == (6, None)


def test_directory_front_end_socket_and_empty(tmp_path: Path) -> None:
    import socket

    root = tmp_path / "r"
    root.mkdir()
    assert list_directory(root) == ""
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(os.fspath(root / "sock"))
    except OSError as e:  # path too long for sun_path, or no AF_UNIX binding here
        pytest.skip(f"cannot bind a unix socket: {e}")
    finally:
        s.close()
    assert list_directory(root).split(TAB)[:2] == ["sock", "s"]


def test_directory_user_xattrs(tmp_path: Path) -> None:
    if not _user_xattrs_supported(tmp_path):
        pytest.skip(f"the file system of {tmp_path} has no user.* xattrs")
    (tmp_path / "r").mkdir()
    f = tmp_path / "r" / "f"
    f.write_bytes(b"")
    os.setxattr(f, "user.z", b"")
    os.setxattr(f, "user.a", b"\x00\xff")
    assert list_directory(tmp_path / "r").split(TAB)[7] == "user.a=0x00ff,user.z=0x\n"


def test_directory_deep_tree_no_recursion(tmp_path: Path) -> None:
    depth = 1500  # far beyond Python's default recursion limit; 3000-byte paths stay below PATH_MAX
    top = tmp_path / "deep"
    top.mkdir()
    chain = [os.fsencode(top)]
    try:
        for _ in range(depth):
            chain.append(chain[-1] + b"/d")
            os.mkdir(chain[-1])
        leaf = chain[-1] + b"/leaf"
        open(leaf, "wb").close()
        records = list(records_from_directory(top))
        assert len(records) == depth + 1
        assert max(records, key=lambda r: len(r.path)).path == b"d/" * depth + b"leaf"
    finally:
        # tear down bottom-up: shutil.rmtree (and so pytest's tmp_path cleanup) recurses per level
        if os.path.lexists(chain[-1] + b"/leaf"):
            os.unlink(chain[-1] + b"/leaf")
        for path in reversed(chain[1:]):
            if os.path.lexists(path):
                os.rmdir(path)


def test_directory_root_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        list_directory(tmp_path / "f")

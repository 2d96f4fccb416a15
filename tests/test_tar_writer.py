"""converter.tar.writer: deterministic ustar headers with PAX only where needed.

Every archive written here is read back three ways: by ``tarfile``, by our own reader and
(for a few cases) by GNU tar.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from converter.tar.reader import StreamSource, TarEntry, TarReader
from converter.tar.writer import END_OF_ARCHIVE, build_header, padding, plain_header

# ----------------------------------------------------------------------------- helpers


def archive(*entries: tuple[dict, bytes]) -> bytes:
    out = []
    for kw, data in entries:
        kw = dict(kw)
        kw.setdefault("type", b"0")
        if kw["type"] in (b"0", b"7"):
            kw.setdefault("size", len(data))
        out += [build_header(**kw), data, padding(len(data))]
    out.append(END_OF_ARCHIVE)
    return b"".join(out)


def ours(data: bytes) -> list[tuple[TarEntry, bytes]]:
    r = TarReader(StreamSource(io.BytesIO(data)), name="written")
    got = [(e, r.read_data(1 << 30)) for e in r]
    assert r.end_reason == "eof-blocks" and r.finish() == 0
    return got


def theirs(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tf:
        return tf.getmembers()


def tname(info: tarfile.TarInfo) -> bytes:
    return info.name.encode("utf-8", "surrogateescape")


def pax_records(block_data: bytes) -> list[tuple[bytes, bytes]]:
    """Parse the records of the first (PAX) header's data, independently of the reader."""
    size = int(block_data[124:136].rstrip(b"\0"), 8)
    body = block_data[512 : 512 + size]
    out = []
    pos = 0
    while pos < len(body):
        sp = body.index(b" ", pos)
        n = int(body[pos:sp])
        key, _, value = body[sp + 1 : pos + n - 1].partition(b"=")
        out.append((key, value))
        pos += n
    return out


def need_gnu_tar() -> None:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")


# ----------------------------------------------------------------------------- ustar


def test_plain_entry_is_a_single_ustar_block() -> None:
    hdr = build_header(name=b"etc/motd", type=b"0", size=5, mode=0o640, uid=10, gid=20, mtime=1_700_000_000)
    assert len(hdr) == 512
    assert hdr[257:265] == b"ustar\x0000"
    assert hdr[100:108] == b"0000640\0" and hdr[124:136] == b"00000000005\0"
    data = hdr + b"hello" + padding(5) + END_OF_ARCHIVE
    [t] = theirs(data)
    assert (t.name, t.size, t.mode, t.uid, t.gid, t.mtime, t.type) == ("etc/motd", 5, 0o640, 10, 20, 1_700_000_000, b"0")
    assert t.uname == "" and t.gname == ""
    [(e, body)] = ours(data)
    assert (e.name, e.size, e.mode, e.uid, e.gid, e.mtime, body, e.pax) == (b"etc/motd", 5, 0o640, 10, 20, 1_700_000_000, b"hello", {})


def test_only_permission_bits_of_mode_are_written() -> None:
    [(e, _)] = ours(archive(({"name": b"f", "mode": 0o104755}, b"")))
    assert e.mode == 0o4755


def test_name_up_to_256_bytes_is_split_into_prefix_without_pax() -> None:
    name = b"d" * 150 + b"/" + b"f" * 100
    hdr = build_header(name=name, type=b"0")
    assert len(hdr) == 512 and hdr[345:495] == b"d" * 150
    data = hdr + END_OF_ARCHIVE
    assert [tname(t) for t in theirs(data)] == [name]
    assert [e.name for e, _ in ours(data)] == [name]


@pytest.mark.parametrize(
    "name",
    [
        b"n" * 101,  # no slash to split at
        b"d/" + b"f" * 101,  # last component too long
        b"p" * 156 + b"/f",  # prefix would be too long
        b"/" + b"x" * 100,  # splitting at the leading slash would lose it
        b"deep/" * 60 + b"end",  # > 256
    ],
)
def test_names_that_do_not_fit_ustar_use_pax_path(name: bytes) -> None:
    data = archive(({"name": name}, b"content"))
    assert data[156:157] == b"x" and (b"path", name) in pax_records(data)
    assert [tname(t) for t in theirs(data)] == [name]
    assert [(e.name, b) for e, b in ours(data)] == [(name, b"content")]


def test_directory_names_keep_their_trailing_slash() -> None:
    name = b"a" * 99 + b"/"
    data = archive(({"name": name, "type": b"5", "mode": 0o755}, b""))
    assert len(data) == 512 + 1024
    [(e, _)] = ours(data)
    assert (e.name, e.type, e.mode) == (name, b"5", 0o755)


def test_non_utf8_long_name_and_link_get_hdrcharset_binary() -> None:
    name = b"\xff\xfe/" * 90 + b"caf\xe9"  # > 256 bytes: PAX
    link = b"\x80" * 150
    data = archive(({"name": name, "type": b"2", "linkname": link}, b""))
    records = dict(pax_records(data))
    assert records[b"hdrcharset"] == b"BINARY" and records[b"path"] == name and records[b"linkpath"] == link
    [t] = theirs(data)
    assert (tname(t), t.linkname.encode("utf-8", "surrogateescape")) == (name, link)
    [(e, _)] = ours(data)
    assert (e.name, e.linkname, e.type) == (name, link, b"2")


def test_utf8_long_name_has_no_hdrcharset() -> None:
    data = archive(({"name": "é".encode() * 200}, b""))
    assert b"hdrcharset" not in dict(pax_records(data))


def test_long_linkname_uses_pax_linkpath_and_short_one_does_not() -> None:
    short = build_header(name=b"l", type=b"2", linkname=b"t" * 100)
    assert len(short) == 512
    data = archive(({"name": b"hard", "type": b"1", "linkname": b"x/" * 70}, b""))
    assert (b"linkpath", b"x/" * 70) in pax_records(data)
    [(e, _)] = ours(data)
    assert (e.type, e.linkname) == (b"1", b"x/" * 70)
    assert theirs(data)[0].linkname == "x/" * 70


# ----------------------------------------------------------------------------- numbers


def test_ids_beyond_seven_octal_digits_use_pax() -> None:
    assert len(build_header(name=b"f", type=b"0", uid=0o7777777, gid=0o7777777)) == 512
    data = archive(({"name": b"f", "uid": 2**21, "gid": 2**32 - 1}, b""))
    assert dict(pax_records(data))[b"uid"] == b"2097152"
    [(e, _)] = ours(data)
    assert (e.uid, e.gid) == (2**21, 2**32 - 1)
    [t] = theirs(data)
    assert (t.uid, t.gid) == (2**21, 2**32 - 1)


def test_size_beyond_eleven_octal_digits_uses_pax() -> None:
    size = 0o77777777777 + 1  # 8 GiB
    hdr = build_header(name=b"huge", type=b"0", size=size)
    assert (b"size", b"%d" % size) in pax_records(hdr)
    r = TarReader(StreamSource(io.BytesIO(hdr)), name="h")
    e = next(iter(r))
    assert (e.name, e.size, e.data_offset) == (b"huge", size, len(hdr))
    assert len(build_header(name=b"f", type=b"0", size=size - 1)) == 512


@pytest.mark.parametrize(
    "kw,ns,pax_mtime",
    [
        ({"mtime": 1_700_000_000}, 1_700_000_000 * 10**9, None),
        ({"mtime": 0}, 0, None),
        ({"mtime": -1}, -(10**9), b"-1"),
        ({"mtime_ns": 1_700_000_000_500_000_000}, 1_700_000_000_500_000_000, b"1700000000.5"),
        ({"mtime_ns": -1_500_000_000}, -1_500_000_000, b"-1.5"),
        ({"mtime_ns": 123_000_000_001}, 123_000_000_001, b"123.000000001"),
        ({"mtime_ns": 5 * 10**9, "mtime": 99}, 5 * 10**9, None),  # mtime_ns wins
        ({"mtime": 0o77777777777}, 0o77777777777 * 10**9, None),
        ({"mtime": 0o77777777777 + 1}, (0o77777777777 + 1) * 10**9, b"8589934592"),
    ],
)
def test_mtime_forms(kw: dict, ns: int, pax_mtime: bytes | None) -> None:
    data = archive(({"name": b"t", **kw}, b""))
    records = dict(pax_records(data)) if data[156:157] == b"x" else {}
    assert records.get(b"mtime") == pax_mtime
    [(e, _)] = ours(data)
    assert e.mtime_ns == ns and e.mtime == ns // 10**9
    [t] = theirs(data)
    assert abs(t.mtime - ns / 10**9) < 1e-3


def test_long_owner_names_use_pax() -> None:
    data = archive(({"name": b"f", "uname": b"u" * 40, "gname": b"g" * 31}, b""))
    records = dict(pax_records(data))
    assert records[b"uname"] == b"u" * 40 and b"gname" not in records
    [(e, _)] = ours(data)
    assert (e.uname, e.gname) == (b"u" * 40, b"g" * 31)


def test_device_numbers_round_trip() -> None:
    data = archive(({"name": b"dev/sda", "type": b"4", "devmajor": 8, "devminor": 2**20 - 1, "mode": 0o660}, b""))
    [(e, _)] = ours(data)
    assert (e.type, e.devmajor, e.devminor) == (b"4", 8, 2**20 - 1)
    [t] = theirs(data)
    assert (t.devmajor, t.devminor) == (8, 2**20 - 1)


# ----------------------------------------------------------------------------- xattrs


def test_xattrs_are_schily_records_with_raw_binary_values() -> None:
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)
    xattrs = {"security.capability": cap, "user.text": b"hello\nworld", "user.empty": b""}
    data = archive(({"name": b"bin/ping", "xattrs": xattrs}, b"ELF"))
    records = pax_records(data)
    assert (b"SCHILY.xattr.security.capability", cap) in records
    [(e, body)] = ours(data)
    assert e.xattrs == xattrs and body == b"ELF"
    [t] = theirs(data)
    assert t.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == cap


def test_xattr_name_with_equals_sign_is_written_libarchive_style() -> None:
    xattrs = {"user.a=b": b"\xff value", "user.plain": b"p"}
    data = archive(({"name": b"f", "xattrs": xattrs}, b""))
    keys = [k for k, _ in pax_records(data)]
    assert b"LIBARCHIVE.xattr.user.a%3Db" in keys and b"SCHILY.xattr.user.plain" in keys
    [(e, _)] = ours(data)
    assert e.xattrs == xattrs


# ----------------------------------------------------------------------------- determinism


def test_output_is_deterministic_and_records_sorted() -> None:
    kw = dict(
        name=b"some/dir/" + b"x" * 120,
        type=b"0",
        size=3,
        uid=3_000_000,
        mtime_ns=1_234_567_890_123_456_789,
        xattrs={"user.b": b"2", "user.a": b"1", "security.selinux": b"ctx\0"},
        linkname=b"",
    )
    first = build_header(**kw)
    assert first == build_header(**kw)
    assert first == build_header(**{**kw, "xattrs": dict(reversed(list(kw["xattrs"].items())))})
    keys = [k for k, _ in pax_records(first)]
    assert keys == sorted(keys)
    # the PAX header itself: derived name, the entry's mtime, root-owned, mode 0644
    assert first[:100].rstrip(b"\0") == b"PaxHeaders/" + b"x" * 89
    ustar = first[-512:]
    assert first[136:148] == ustar[136:148] == b"%011o\0" % 1_234_567_890
    assert first[100:124] == b"0000644\x000000000\x000000000\x00"
    assert first[265:329] == bytes(64)


def test_pax_header_name_for_root_and_short_names() -> None:
    hdr = build_header(name=b"./", type=b"5", uid=2**30)
    assert hdr[:100].rstrip(b"\0") == b"PaxHeaders/."
    hdr = build_header(name=b"/", type=b"5", uid=2**30)
    assert hdr[:100].rstrip(b"\0") == b"PaxHeaders/root"


def test_padding_and_end_of_archive() -> None:
    assert padding(0) == b"" and padding(512) == b"" and padding(1) == bytes(511) and padding(513) == bytes(511)
    assert padding(100) == bytes(412)
    assert END_OF_ARCHIVE == bytes(1024)


@pytest.mark.parametrize(
    "kw",
    [
        {"name": b""},
        {"name": b"a\0b"},
        {"name": b"a", "linkname": b"x\0"},
        {"name": b"a", "type": b"00"},
        {"name": b"a", "size": -1},
        {"name": b"a", "uid": -1},
        {"name": b"a", "devmajor": 2**21},
        {"name": b"a", "xattrs": {"": b"v"}},
    ],
)
def test_invalid_arguments_are_value_errors(kw: dict) -> None:
    kw.setdefault("type", b"0")
    with pytest.raises(ValueError):
        build_header(**kw)


# ----------------------------------------------------------------------------- GNU tar


def test_gnu_tar_lists_what_we_write(tmp_path) -> None:
    need_gnu_tar()
    long = b"dir/" + b"long-component-" * 10 + b"end"
    data = archive(
        ({"name": b"dir/", "type": b"5", "mode": 0o755}, b""),
        ({"name": b"dir/file", "mode": 0o644, "uid": 1234, "gid": 5678}, b"data\n"),
        ({"name": long}, b"x"),
        ({"name": b"dir/link", "type": b"2", "linkname": b"file"}, b""),
        ({"name": b"dir/hard", "type": b"1", "linkname": b"dir/file"}, b""),
    )
    path = tmp_path / "a.tar"
    path.write_bytes(data)
    run = subprocess.run(["tar", "--numeric-owner", "-tvf", str(path)], check=True, capture_output=True)
    assert run.stderr == b""  # no warnings (unknown keywords, checksums...)
    lines = run.stdout.decode("utf-8", "replace").splitlines()
    assert len(lines) == 5
    assert lines[1].split()[1] == "1234/5678" and lines[1].endswith("dir/file")
    assert lines[2].endswith(long.decode())
    assert lines[3].endswith("dir/link -> file")
    assert lines[4].endswith("dir/hard link to dir/file")


def test_gnu_tar_extracts_xattrs_long_non_utf8_names_and_times(tmp_path) -> None:
    need_gnu_tar()
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError:
        pytest.skip("temp file system has no user xattrs")
    name = b"\xff\xfe-dir/" + b"caf\xe9-" * 40 + b"file"
    uid, gid = os.getuid(), os.getgid()
    data = archive(
        ({"name": b"\xff\xfe-dir/", "type": b"5", "mode": 0o755, "uid": uid, "gid": gid}, b""),
        (
            {
                "name": name,
                "mode": 0o640,
                "uid": uid,
                "gid": gid,
                "mtime_ns": 1_600_000_000_250_000_000,
                "xattrs": {"user.bin": b"\x00\x01\xff", "user.text": b"t"},
            },
            b"payload",
        ),
    )
    path = tmp_path / "x.tar"
    path.write_bytes(data)
    dest = tmp_path / "out"
    dest.mkdir()
    run = subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=user.*", "-xf", str(path), "-C", str(dest)],
        check=True,
        capture_output=True,
    )
    # GNU tar 1.34 does not know POSIX hdrcharset (it treats names as raw bytes anyway)
    warnings = [w for w in run.stderr.splitlines() if b"hdrcharset" not in w]
    assert warnings == []
    target = os.path.join(os.fsencode(dest), name)
    with open(target, "rb") as f:
        assert f.read() == b"payload"
    st_ = os.stat(target)
    assert st_.st_mode & 0o7777 == 0o640
    assert st_.st_mtime_ns == 1_600_000_000_250_000_000
    assert os.getxattr(target, "user.bin") == b"\x00\x01\xff"
    assert os.getxattr(target, "user.text") == b"t"


# ----------------------------------------------------------------------------- round trip property

raw_name = st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\0", b"z"))


@st.composite
def entry_kwargs(draw) -> tuple[dict, bytes]:
    kind = draw(st.sampled_from([b"0", b"5", b"2", b"1", b"3", b"6"]))
    kw: dict = {"name": draw(raw_name), "type": kind}
    kw["mode"] = draw(st.integers(0, 0o7777))
    kw["uid"] = draw(st.integers(0, 2**40))
    kw["gid"] = draw(st.integers(0, 2**40))
    if draw(st.booleans()):
        kw["mtime_ns"] = draw(st.integers(-(2**62), 2**62))
    else:
        kw["mtime"] = draw(st.integers(-(2**40), 2**40))
    kw["uname"] = draw(st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"u")))
    kw["gname"] = draw(st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"g")))
    data = b""
    if kind == b"0":
        data = draw(st.binary(max_size=2000))
    if kind in (b"1", b"2"):
        kw["linkname"] = draw(raw_name)
    if kind == b"3":
        kw["devmajor"] = draw(st.integers(0, 4095))
        kw["devminor"] = draw(st.integers(0, 2**20 - 1))
    if draw(st.booleans()):
        kw["xattrs"] = draw(
            st.dictionaries(
                st.text(min_size=1, max_size=20).filter(lambda s: "\0" not in s).map(lambda s: "user." + s),
                st.binary(max_size=100),
                max_size=4,
            )
        )
    return kw, data


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(entry_kwargs(), min_size=1, max_size=5))
def test_property_round_trip_through_reader_and_tarfile(entries) -> None:
    data = archive(*entries)
    assert data == archive(*entries)  # deterministic
    got = ours(data)
    assert len(got) == len(entries)
    for (kw, body), (e, read) in zip(entries, got):
        ns = kw["mtime_ns"] if "mtime_ns" in kw else kw["mtime"] * 10**9
        assert e.name == kw["name"]
        assert e.type == kw["type"]
        assert e.linkname == kw.get("linkname", b"")
        assert (e.mode, e.uid, e.gid) == (kw["mode"], kw["uid"], kw["gid"])
        assert (e.uname, e.gname) == (kw["uname"], kw["gname"])
        assert e.mtime_ns == ns and e.mtime == ns // 10**9
        assert (e.devmajor, e.devminor) == (kw.get("devmajor", 0), kw.get("devminor", 0))
        assert e.xattrs == kw.get("xattrs", {})
        assert read == body and e.size == len(body)
    for (kw, body), t in zip(entries, theirs(data)):
        # tarfile strips trailing slashes from directories and from PAX paths
        assert tname(t).rstrip(b"/") == kw["name"].rstrip(b"/")
        assert (t.uid, t.gid, t.mode) == (kw["uid"], kw["gid"], kw["mode"])
        assert t.size == len(body)


@settings(max_examples=300, deadline=None)
@given(
    name=st.binary(min_size=1, max_size=110).filter(lambda b: 0 not in b),
    typ=st.sampled_from([b"0", b"5", b"2"]),
    size=st.sampled_from([0, 1, 511, 512, 10**9, 0o77777777777, 0o77777777777 + 1]),
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, (1 << 32) - 1),
    gid=st.integers(0, 1 << 22),
    mtime_ns=st.one_of(st.integers(0, 1 << 34).map(lambda s: s * 1_000_000_000), st.integers(0, 1 << 60)),
    linkname=st.binary(max_size=110).filter(lambda b: 0 not in b),
)
def test_plain_header_is_build_header_or_declines(name: bytes, typ: bytes, size: int, mode: int, uid: int, gid: int,
                                                  mtime_ns: int, linkname: bytes) -> None:
    """The flattened tar's fast path writes the very bytes build_header writes, and
    declines (None) whatever needs more than one plain ustar block."""
    fast = plain_header(name, typ, size, mode, uid, gid, mtime_ns, linkname)
    full = build_header(name=name, type=typ, size=size, mode=mode, uid=uid, gid=gid,
                        mtime=mtime_ns // 1_000_000_000, mtime_ns=mtime_ns, linkname=linkname)
    if fast is None:
        return
    assert fast == full
    assert len(fast) == 512

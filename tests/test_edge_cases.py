"""EDGE-CASES.md 13-57 (and one check of 60): what the merge and the two sinks must produce.

Each test builds its image with the deterministic generator (a docker-archive in
``tmp_path``), converts it to a directory and to a flattened tar (the ``sink`` fixture),
and compares the *whole* canonical listing with the tree written out in the test.  Where
the right answer is an error, the test asserts the exact error class, that the message
names the layer and the member, and that nothing was left at the destination (not even an
``OUT.partial-*`` sibling).

Decisions pinned here (DESIGN.md §3-4 and the merge's documented choices):

* ``..`` in entry names or hard-link targets is refused (UnsafeEntryError); absolute names
  and absolute hard-link targets are taken relative to the root.
* A parent component that is a symlink is followed *inside* the root (absolute targets
  restart at the root, ``..`` stops at the root), at most 255 hops; a parent that is a
  regular file is replaced by an implied directory with a warning.
* Implied parents: mode 0755, owner 0:0 (mapped like any owner), mtime of the entry that
  implied them.
* Whiteouts and opaque markers only ever remove what *lower* layers provided.
* Hard links name their target as it is in the view at that layer; a link to a directory or
  to nothing is an UnsafeEntryError naming both paths.
* Flattened tar: ``./`` first, then entries sorted by raw path bytes; the smallest path of
  a hard-link group carries the data; no ``.wh.*`` member ever.

The expected trees are those of extraction as root (owners, devices, xattrs), so the
directory sink runs only as root; the tests run as root here and in CI.
"""

from __future__ import annotations

import base64
import errno
import os
import struct
from pathlib import Path
from typing import Any, Callable

import pytest
from edge_helpers import (
    IS_ROOT,
    B,
    C,
    D,
    F,
    L,
    P,
    expect,
    gnu_tar_extract,
    image,
    run,
    run_error,
    tar_members,
    write_image,
)

from converter import convert
from converter.errors import ConverterError, OutputError, UnsafeEntryError
from converter.testing.imagegen import (
    FIXED_MTIME,
    Device,
    Dir,
    Fifo,
    File,
    Hardlink,
    Layer,
    Opaque,
    Raw,
    Sparse,
    Symlink,
    Whiteout,
    pax_records,
)

T0 = FIXED_MTIME
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep, v2


@pytest.fixture(
    params=[
        pytest.param("dir", marks=pytest.mark.skipif(not IS_ROOT, reason="expected trees describe extraction as root")),
        "tar",
    ]
)
def sink(request: pytest.FixtureRequest) -> str:
    """The two outputs every case is checked against: a directory and a flattened tar."""
    return request.param


# =====================================================================================
# Inputs and archive parsing (13-22)
# =====================================================================================


def test_edge_13_name_spellings_normalise_to_one_key(tmp_path: Path, sink: str) -> None:
    lower = [
        Dir("./a/"),
        File("./a/b", b"lower b"),
        File("./a/keep", b"keep"),
        File("a/./././mid-dot", b"mid"),
        File("/abs", b"absolute"),
        Dir("a//c"),
        File("a//c//d", b"lower d"),
    ]
    upper = [
        Raw(b"/a/.wh.b", mode=0o600),  # deletes ./a/b
        Raw(b"./.wh.abs", mode=0o600),  # deletes /abs
        File("a/c/d", b"upper d"),  # replaces a//c//d
        Dir("/a/c/", mode=0o700),  # dir over dir, spelt differently
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        D("a"),
        D("a/c", mode=0o700),
        F("a/c/d", b"upper d"),
        F("a/keep", b"keep"),
        F("a/mid-dot", b"mid"),
    )


@pytest.mark.parametrize("root_name", ["./", ".", "/"])
def test_edge_14_root_entry_carries_root_metadata(tmp_path: Path, sink: str, root_name: str) -> None:
    layer = [Dir(root_name, mode=0o750, uid=7, gid=8), File("f", b"f")]
    got = run(image(layer), tmp_path, sink)
    assert got.listing == expect(F("f", b"f"))
    assert got.stat_root() == (0o750, 7, 8)


@pytest.mark.parametrize(
    "entry",
    [
        Raw(b"./", type=b"0", data=b"not a dir"),
        Raw(b".", type=b"2", linkname=b"/etc"),
        Raw(b"/", type=b"1", linkname=b"f"),
        Raw(b"./", type=b"6"),
    ],
    ids=["file", "symlink", "hardlink", "fifo"],
)
def test_edge_14_root_entry_that_is_not_a_directory_is_refused(tmp_path: Path, sink: str, entry: Raw) -> None:
    spec = image([File("f", b"f")], [entry])
    message = run_error(spec, tmp_path, sink, UnsafeEntryError, "layer 2", "root")
    assert entry.name.decode() in message


@pytest.mark.parametrize(
    "entry",
    [
        File("../evil", b"x"),
        File("a/../../evil", b"x"),
        Dir("a/.."),
        Symlink("../evil", "/etc/passwd"),
        Raw(b"./a/../evil", data=b"x"),
    ],
    ids=["leading", "deep", "dir", "symlink", "dot-slash"],
)
def test_edge_15_dotdot_components_are_refused(tmp_path: Path, sink: str, entry: File | Dir | Symlink | Raw) -> None:
    spec = image([Dir("a/")], [entry])
    name = entry.name if isinstance(entry, Raw) else entry.path.encode()
    message = run_error(spec, tmp_path, sink, UnsafeEntryError, "layer 2", "..")
    assert name.decode() in message
    assert not (tmp_path.parent / "evil").exists()
    assert not (tmp_path / "evil").exists()


def test_edge_16_long_names_gnu_pax_and_ustar_prefix(tmp_path: Path, sink: str) -> None:
    d200 = "d" * 200
    c100 = "c" * 100
    deep = f"p/{c100}/{c100}/{c100}/file"  # 310 bytes, every component <= 255
    target = "t" * 180
    gnu = Layer(
        [
            File(f"g/{d200}/file", b"gnu long name"),  # GNU 'L'
            Symlink("g/sym", f"/{target}"),  # GNU 'K'
            Hardlink(f"g/{d200}/hard", f"g/{d200}/file"),  # 'L' and 'K'
        ],
        format="gnu",
    )
    pax = Layer(
        [
            File(deep, b"pax path"),
            Raw(b"file-in-prefix", prefix=b"pre/fix/dir", data=b"ustar prefix"),
        ]
    )
    got = run(image(gnu, pax), tmp_path, sink)
    assert got.listing == expect(
        D("g"),
        D(f"g/{d200}"),
        F(f"g/{d200}/file", b"gnu long name", link="long"),
        F(f"g/{d200}/hard", b"gnu long name", link="long"),
        L("g/sym", f"/{target}"),
        D("p"),
        D(f"p/{c100}"),
        D(f"p/{c100}/{c100}"),
        D(f"p/{c100}/{c100}/{c100}"),
        F(deep, b"pax path"),
        D("pre"),
        D("pre/fix"),
        D("pre/fix/dir"),
        F("pre/fix/dir/file-in-prefix", b"ustar prefix"),
    )


def test_edge_16_component_longer_than_name_max_fits_a_tar(tmp_path: Path) -> None:
    got = run(image([File("x" * 300, b"long")]), tmp_path, "tar")
    assert got.listing == expect(F("x" * 300, b"long"))


@pytest.mark.skipif(not IS_ROOT, reason="directory sink: see the sink fixture")
def test_edge_16_component_longer_than_name_max_is_a_clear_error_in_a_directory(tmp_path: Path) -> None:
    src = write_image(image([File("ok", b"ok"), File("x" * 300, b"long")]), tmp_path)
    with pytest.raises(ConverterError) as info:
        convert(str(src), tmp_path / "out")
    assert "x" * 20 in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar"]


def test_edge_17_pax_global_header_tolerated_and_pax_records_override_ustar(tmp_path: Path, sink: str) -> None:
    layer = [
        Raw(b"pax_global_header", type=b"g", data=pax_records({"comment": "made by a test"})),
        Raw(
            b"short-name",
            data=b"pax wins",
            uid=1,
            gid=1,
            pax={"path": "real/long-name", "uid": "4242", "gid": "4343", "SCHILY.xattr.user.note": "pax"},
        ),
        Raw(b"sl", type=b"2", linkname=b"ustar-target", mode=0o777, pax={"linkpath": "pax-target"}),
        Raw(b"pax-size", data=b"pax sized", size=0, pax={"size": "9"}),  # header says 0
        Raw(b"pax-mtime", data=b"t", mtime=5, pax={"mtime": "1234567890.5"}),
        File("next", b"still in step"),
    ]
    got = run(image(layer), tmp_path, sink)
    assert got.listing == expect(
        D("real"),
        F("real/long-name", b"pax wins", owner="4242:4343", xattrs={"user.note": b"pax"}),
        F("next", b"still in step"),
        F("pax-mtime", b"t"),
        F("pax-size", b"pax sized"),
        L("sl", "pax-target"),
    )
    assert got.mtime("pax-mtime") == 1234567890


def _sparse_data(size: int, chunks: list[tuple[int, bytes]]) -> bytes:
    data = bytearray(size)
    for offset, chunk in chunks:
        data[offset : offset + len(chunk)] = chunk
    return bytes(data)


def test_edge_18_gnu_sparse_files_get_their_holes_back(tmp_path: Path, sink: str) -> None:
    few = [(0, b"head"), (8192, b"middle")]  # ends in a hole
    many = [(i * 4096, b"chunk %d" % i) for i in range(7)] + [(40000, b"tail")]  # > 4: extension blocks
    layer = [
        Sparse("s/pax10", 20000, few, style="pax1.0"),
        Sparse("s/pax01", 20000, few, style="pax0.1"),
        Sparse("s/gnu-old", 40004, many, style="gnu-old", mode=0o600),
        Sparse("s/all-hole", 5000, [], style="pax1.0"),
    ]
    got = run(image(layer), tmp_path, sink)
    assert got.listing == expect(
        D("s"),
        F("s/all-hole", bytes(5000)),
        F("s/gnu-old", _sparse_data(40004, many), mode=0o600),
        F("s/pax01", _sparse_data(20000, few)),
        F("s/pax10", _sparse_data(20000, few)),
    )


def test_edge_19_regular_typeflags_and_unknown_typeflags(tmp_path: Path, sink: str) -> None:
    layer = [
        File("reg-0", b"typeflag 0", type=b"0"),
        File("reg-nul", b"typeflag NUL", type=b"\0"),
        File("reg-7", b"typeflag 7", type=b"7"),
        Raw(b"weird", type=b"Z", data=b"payload of an unknown type"),
        File("after", b"read after the unknown entry"),
    ]
    got = run(image(layer), tmp_path, sink)
    assert got.listing == expect(
        F("after", b"read after the unknown entry"),
        F("reg-0", b"typeflag 0"),
        F("reg-7", b"typeflag 7"),
        F("reg-nul", b"typeflag NUL"),
    )
    warnings = got.warnings("unknown-type")
    assert len(warnings) == 1 and "weird" in warnings[0] and "layer 1" in warnings[0]


def test_edge_20_base256_ids_odd_mtimes_and_non_utf8_names(tmp_path: Path, sink: str) -> None:
    gnu = Layer(
        [
            File("big-ids", b"big", uid=3_000_000, gid=2_100_000),  # base-256 in a GNU header
            File(b"caf\xe9", b"latin-1 name"),
            Symlink(b"link-\xff", b"target-\xfe"),
        ],
        format="gnu",
    )
    raw = Layer(
        [
            Raw(b"zero-mtime", data=b"epoch", mtime=0),
            Raw(b"negative-mtime", data=b"before epoch", mtime=-86400),  # base-256, negative
            Raw(b"base256-uid", data=b"raw", uid=8**7 + 5, gid=8**7 + 6),
        ]
    )
    got = run(image(gnu, raw), tmp_path, sink)
    assert got.listing == expect(
        F("base256-uid", b"raw", owner=f"{8**7 + 5}:{8**7 + 6}"),
        F("big-ids", b"big", owner="3000000:2100000"),
        F(b"caf\xe9", b"latin-1 name"),
        L(b"link-\xff", b"target-\xfe"),
        F("negative-mtime", b"before epoch"),
        F("zero-mtime", b"epoch"),
    )
    assert got.mtime("zero-mtime") == 0


@pytest.mark.parametrize("style", ["pax1.0", "pax0.1", "gnu-old"])
def test_edge_20_file_over_8_gib_end_to_end(tmp_path: Path, style: str) -> None:
    """A 9 GiB file (sparse, so the test writes 8 KB): its size survives every sparse
    header form (PAX records, GNU base-256) and the directory writer leaves the hole."""
    import os

    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        f.truncate(1 << 30)
    if os.stat(probe).st_blocks:
        pytest.skip("the test file system does not keep holes")
    probe.unlink()
    size = (9 << 30) + 5
    src = write_image(image([Sparse("big", size, [(0, b"head"), (size - 4, b"tail")], style=style)]), tmp_path)
    convert(str(src), tmp_path / "out")  # (no listing: hashing 9 GiB of zeros takes seconds)
    path = tmp_path / "out" / "big"
    st = os.stat(path)
    assert st.st_size == size and st.st_blocks * 512 < (1 << 20)
    with open(path, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(size - 4)
        assert f.read() == b"tail"


def test_edge_21_duplicate_paths_in_one_layer_last_wins(tmp_path: Path, sink: str) -> None:
    layer = [
        File("dup", b"first"),
        File("dup", b"second", mode=0o600),
        Dir("d2f/"),
        File("d2f/child", b"gone with its dir"),
        File("d2f", b"now a file"),
        Symlink("s2d", "x"),
        Dir("s2d/", mode=0o700),
        File("f2l", b"was a file"),
        Symlink("f2l", "dup"),
    ]
    got = run(image(layer), tmp_path, sink)
    assert got.listing == expect(
        F("d2f", b"now a file"),
        F("dup", b"second", mode=0o600),
        L("f2l", "dup"),
        D("s2d", mode=0o700),
    )


def test_edge_22_absolute_hardlink_target_is_relative_to_the_root(tmp_path: Path, sink: str) -> None:
    layer = [
        Dir("etc/"),
        File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        Hardlink("etc/passwd-", "/etc/passwd"),
        Hardlink("/abs-named", "etc/passwd"),
        Hardlink("dot-named", "./etc//passwd"),
    ]
    got = run(image(layer), tmp_path, sink)
    pw = b"root:x:0:0::/root:/bin/sh\n"
    assert got.listing == expect(
        F("abs-named", pw, link="pw"),
        F("dot-named", pw, link="pw"),
        D("etc"),
        F("etc/passwd", pw, link="pw"),
        F("etc/passwd-", pw, link="pw"),
    )


# =====================================================================================
# Whiteouts (23-37)
# =====================================================================================


def test_edge_23_whiteout_removes_file_symlink_and_subtree_from_lower_layers(tmp_path: Path, sink: str) -> None:
    lower = [
        File("f", b"file"),
        Symlink("s", "f"),
        Dir("d/"),
        Dir("d/sub/"),
        File("d/sub/x", b"x"),
        File("d/y", b"y"),
        Dir("real/"),
        File("real/r", b"r"),
        Symlink("toreal", "real"),
        File("keep", b"keep"),
    ]
    upper = [Whiteout("f"), Whiteout("s"), Whiteout("d"), Whiteout("toreal")]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        F("keep", b"keep"),
        D("real"),
        F("real/r", b"r"),
    )


def test_edge_24_directory_whiteout_removes_descendants_of_every_lower_layer(tmp_path: Path, sink: str) -> None:
    spec = image(
        [Dir("a/"), Dir("a/b/"), Dir("a/b/c/"), File("a/b/c/d", b"layer 1"), File("other", b"o")],
        [File("a/b/e", b"layer 2"), File("a/f", b"layer 2")],
        [Whiteout("a/")],
        [Dir("a/", mode=0o700)],  # recreated: nothing of the old tree comes back
    )
    got = run(spec, tmp_path, sink)
    assert got.listing == expect(
        D("a", mode=0o700),
        F("other", b"o"),
    )


LOWER_25 = [
    Dir("d/", mode=0o750, uid=5, gid=5),
    File("d/old", b"old"),
    Dir("d/sub/"),
    File("d/sub/old", b"old"),
    File("other", b"other"),
]


def test_edge_25_opaque_hides_lower_children_metadata_from_this_layer(tmp_path: Path, sink: str) -> None:
    upper = [Dir("d/", mode=0o700, uid=6, gid=6), Opaque("d"), File("d/new", b"new")]
    got = run(image(LOWER_25, upper), tmp_path, sink)
    assert got.listing == expect(
        D("d", mode=0o700, owner="6:6"),
        F("d/new", b"new"),
        F("other", b"other"),
    )


def test_edge_25_opaque_without_dir_entry_keeps_lower_metadata(tmp_path: Path, sink: str) -> None:
    upper = [Opaque("d"), File("d/new", b"new")]
    got = run(image(LOWER_25, upper), tmp_path, sink)
    assert got.listing == expect(
        D("d", mode=0o750, owner="5:5"),
        F("d/new", b"new"),
        F("other", b"other"),
    )


@pytest.mark.parametrize("marker_at", ["first", "last"])
def test_edge_26_opaque_marker_keeps_this_layers_entries_whatever_its_position(
    tmp_path: Path, sink: str, marker_at: str
) -> None:
    lower = [Dir("d/", mode=0o750), Dir("d/x/"), File("d/x/old", b"old"), File("d/gone", b"gone")]
    entries = [
        File("d/x/new", b"new under a lower dir"),
        File("d/fresh/deep/file", b"under implied parents"),
        File("d/top", b"top"),
    ]
    upper = [Opaque("d"), *entries] if marker_at == "first" else [*entries, Opaque("d")]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        D("d", mode=0o750),
        D("d/fresh"),
        D("d/fresh/deep"),
        F("d/fresh/deep/file", b"under implied parents"),
        F("d/top", b"top"),
        D("d/x"),
        F("d/x/new", b"new under a lower dir"),
    )


def test_edge_26_opaque_marker_position_does_not_change_the_result(tmp_path: Path) -> None:
    """Rule 2: the marker applies before the layer's own entries whatever its position, so
    both orders must give the same tree, metadata included."""
    lower = [Dir("d/"), Dir("d/x/", mode=0o700, uid=3, gid=3), File("d/x/old", b"old")]
    listings = {}
    for marker_at in ("first", "last"):
        entries = [File("d/x/new", b"new")]
        upper = [Opaque("d"), *entries] if marker_at == "first" else [*entries, Opaque("d")]
        work = tmp_path / marker_at
        work.mkdir()
        listings[marker_at] = run(image(lower, upper), work, "tar").listing
    assert listings["last"] == listings["first"] == expect(D("d"), D("d/x"), F("d/x/new", b"new"))


def test_edge_26_a_marker_under_this_layer_s_own_file_is_ignored_in_either_order(tmp_path: Path) -> None:
    """Found by an audit: a layer that writes a file at D and carries D's opaque marker
    lost its own file when the marker came last (the marker made D a directory again).
    Applied first, the marker makes D a directory that the file then replaces."""
    lower = [Dir("d/"), File("d/old", b"o")]
    listings = {}
    for marker_at in ("first", "last"):
        upper = [Opaque("d"), File("d", b"FILE")] if marker_at == "first" else [File("d", b"FILE"), Opaque("d")]
        work = tmp_path / marker_at
        work.mkdir()
        listings[marker_at] = run(image(lower, upper), work, "tar").listing
    assert listings["last"] == listings["first"] == expect(F("d", b"FILE"))


@pytest.mark.parametrize("remover", ["opaque", "whiteout"])
def test_edge_26_a_link_to_a_lower_name_the_layer_deletes_is_an_error_in_either_order(tmp_path: Path, remover: str) -> None:
    """Found by an audit: a hard link to a lower file that the same layer's marker or
    whiteout deletes kept the file when the link came first and failed when the marker
    did.  Markers apply first (rule 2): it links to nothing, either way."""
    lower = [Dir("d/"), File("d/a", b"lower-a")]
    gone = Opaque("d") if remover == "opaque" else Whiteout("d/a")
    for marker_at in ("first", "last"):
        upper = [gone, Hardlink("d/b", "d/a")] if marker_at == "first" else [Hardlink("d/b", "d/a"), gone]
        work = tmp_path / f"{remover}-{marker_at}"
        work.mkdir()
        run_error(image(lower, upper), work, "tar", UnsafeEntryError, "d/b", "d/a")


def test_edge_27_entry_then_whiteout_same_layer_keeps_entry(tmp_path: Path, sink: str) -> None:
    lower = [
        File("x", b"lower x"),
        Dir("d/", mode=0o750),
        File("d/lower", b"lower child"),
        Dir("e/"),
        File("e/lower", b"lower child"),
    ]
    upper = [
        Dir("e/", mode=0o700),
        Whiteout("e"),  # e is this layer's directory now: it stays, its lower children go
        File("x", b"upper x"),
        Whiteout("x"),
        File("y", b"only in this layer"),
        Whiteout("y"),
        File("d/new", b"new child"),
        Whiteout("d"),  # d was written into by this layer: only its lower children go
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        D("d", mode=0o750),
        F("d/new", b"new child"),
        D("e", mode=0o700),
        F("x", b"upper x"),
        F("y", b"only in this layer"),
    )


def test_edge_28_whiteout_then_entry_same_layer_replaces_lower(tmp_path: Path, sink: str) -> None:
    lower = [File("x", b"lower x"), Dir("d/"), File("d/a", b"lower a"), Symlink("s", "x")]
    upper = [
        Whiteout("x"),
        File("x", b"upper x"),
        Whiteout("d"),
        Dir("d/", mode=0o700),
        File("d/b", b"upper b"),
        Whiteout("s"),
        Symlink("s", "d/b"),
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        D("d", mode=0o700),
        F("d/b", b"upper b"),
        L("s", "d/b"),
        F("x", b"upper x"),
    )


def test_edge_29_whiteout_of_missing_path_is_a_noop(tmp_path: Path, sink: str) -> None:
    lower = [Dir("d/"), File("d/f", b"f")]
    upper = [Whiteout("missing"), Whiteout("no/such/dir/file"), Whiteout("d/missing"), Whiteout("d/f/under-a-file")]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(D("d"), F("d/f", b"f"))  # no implied "no/such/dir" either


def test_edge_33_no_whiteout_name_is_created_through_a_symlink(tmp_path: Path, sink: str) -> None:
    """A path that reaches a .wh. name through a symlink is under a whiteout name, like one
    spelled that way: skipped, so neither output ever holds a .wh. entry (a flattened tar
    with one would delete files wherever it is applied).  Found by the fuzzer."""
    lower = [Symlink("b", ".wh.a"), Symlink("c", "x/.wh..wh..opq/y"), File("keep", b"k")]
    upper = [File("b/a", b"through"), Hardlink("b/h", "keep"), File("c/z", b"z")]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        L("b", ".wh.a"),
        L("c", "x/.wh..wh..opq/y"),
        F("keep", b"k"),
    )


def test_edge_30_whiteout_under_symlinked_parent_resolves_inside_the_root(tmp_path: Path, sink: str) -> None:
    # Targets that do not exist on the host: a converter resolving on the host would fail
    # to find them rather than delete anything real.
    lower = [
        Dir("opt/"),
        Dir("opt/edge30/"),
        Dir("opt/edge30/lib/"),
        File("opt/edge30/lib/x", b"x"),
        File("opt/edge30/lib/y", b"y"),
        File("opt/edge30/lib/z", b"z"),
        Symlink("lib", "opt/edge30/lib"),
        Symlink("lib64", "/opt/edge30/lib"),
        Symlink("up", "../../../../opt"),
    ]
    upper = [Whiteout("lib/x"), Whiteout("lib64/y"), Whiteout("up/edge30/lib/z")]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        L("lib", "opt/edge30/lib"),
        L("lib64", "/opt/edge30/lib"),
        D("opt"),
        D("opt/edge30"),
        D("opt/edge30/lib"),
        L("up", "../../../../opt"),
    )


def test_edge_31_whiteouts_nested_under_whited_out_or_opaque_dirs(tmp_path: Path, sink: str) -> None:
    lower = [
        Dir("a/"),
        Dir("a/b/"),
        File("a/b/c", b"c"),
        File("a/b/d", b"d"),
        File("a/e", b"e"),
        Dir("x/"),
        Dir("x/y/"),
        File("x/y/z", b"z"),
    ]
    upper = [
        Opaque("a"),
        Dir("a/b/", mode=0o700),
        Opaque("a/b"),  # redundant: a/b is already a new, empty directory
        Whiteout("a/b/c"),  # already hidden by the opaque a
        File("a/b/new", b"new"),
        Whiteout("x"),
        Whiteout("x/y"),  # under a directory whited out just before
        Whiteout("x/y/z"),
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        D("a"),
        D("a/b", mode=0o700),
        F("a/b/new", b"new"),
    )


def test_edge_25_an_opaque_marker_implies_its_directory_like_any_entry(tmp_path: Path, sink: str) -> None:
    """The marker says "this layer's D is opaque" (the overlay upper directory has D):
    a missing D becomes an empty directory and a non-directory at D is replaced by one,
    as for any entry under D (EDGE-CASES 45), reached through symlinks inside the root;
    a plain whiteout under a missing parent creates nothing (29)."""
    lower = [File("file", b"lower file"), Symlink("dangling", "/nowhere/deep"), Symlink("via", "same/z")]
    upper = [
        Opaque("missing/dir"),
        Opaque("file"),
        Opaque("dangling"),
        File("same", b"same layer"),
        Opaque("via"),  # via -> same/z: same is a file of this layer, replaced too
        Whiteout("absent/x"),
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        L("dangling", "/nowhere/deep"),
        D("file"),
        D("missing"),
        D("missing/dir"),
        D("nowhere"),
        D("nowhere/deep"),
        D("same"),
        D("same/z"),
        L("via", "same/z"),
    )
    replaced = got.warnings("parent-replaced")
    assert len(replaced) == 2, replaced
    assert "entry 'file/.wh..wh..opq': parent 'file' was a file" in replaced[0]
    assert "entry 'via/.wh..wh..opq': parent 'same' was a file" in replaced[1]


@pytest.mark.parametrize("order", ["outer-first", "inner-first"])
def test_edge_26_nested_opaque_markers_give_one_result_whatever_their_order(tmp_path: Path, sink: str, order: str) -> None:
    lower = [Dir("a/"), Dir("a/b/"), File("a/b/old", b"old"), File("a/other", b"other")]
    markers = [Opaque("a"), Opaque("a/b")]
    got = run(image(lower, markers if order == "outer-first" else markers[::-1]), tmp_path, sink)
    assert got.listing == expect(D("a"), D("a/b"))


@pytest.mark.parametrize("marker_dir", ["", ".", "/"], ids=["bare", "dot", "slash"])
def test_edge_32_opaque_marker_at_the_root_hides_every_lower_entry(tmp_path: Path, sink: str, marker_dir: str) -> None:
    lower = [Dir("./", mode=0o700), Dir("a/"), File("a/x", b"x"), File("b", b"b"), Symlink("c", "a")]
    upper = [File("before", b"same layer, before the marker"), Opaque(marker_dir), File("c/new", b"after")]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        F("before", b"same layer, before the marker"),
        D("c"),
        F("c/new", b"after"),
    )
    assert got.stat_root()[0] == 0o700  # the root itself stays


@pytest.mark.parametrize("name", [b".wh.", b"d/.wh.", b".wh..", b"d/.wh..", b"d/.wh..."])
def test_edge_33_bare_whiteout_names_are_refused(tmp_path: Path, sink: str, name: bytes) -> None:
    spec = image([Dir("d/"), File("d/f", b"f")], [Raw(name, mode=0o600)])
    run_error(spec, tmp_path, sink, UnsafeEntryError, "layer 2", name.decode().rsplit("/", 1)[-1])


def test_edge_34_aufs_metadata_skipped_and_plnk_hardlinks_retargeted(tmp_path: Path, sink: str) -> None:
    plnk = ".wh..wh.plnk/1234.5678"
    layer = [
        File(".wh..wh.aufs", b""),
        Dir(".wh..wh.orph/"),
        File(".wh..wh.orph/left-over", b"orphan"),
        Hardlink("usr/early", plnk),  # before the plnk file: resolved at layer end
        Dir(".wh..wh.plnk/"),
        File(plnk, b"shared content", mode=0o640, uid=3, gid=4),
        Hardlink("usr/a", plnk),
        Hardlink("usr/b", plnk),
    ]
    got = run(image([File("base", b"base")], layer), tmp_path, sink)
    assert got.listing == expect(
        F("base", b"base"),
        D("usr"),
        F("usr/a", b"shared content", mode=0o640, owner="3:4", link="plnk"),
        F("usr/b", b"shared content", mode=0o640, owner="3:4", link="plnk"),
        F("usr/early", b"shared content", mode=0o640, owner="3:4", link="plnk"),
    )


def test_edge_35_whiteout_markers_of_any_typeflag(tmp_path: Path, sink: str) -> None:
    lower = [File(name, name.encode()) for name in ("f1", "f2", "f3", "f4", "keep")] + [Dir("d5/"), File("d5/x", b"x")]
    upper = [
        Raw(b".wh.f1", type=b"1", linkname=b".wh..wh.aufs"),  # AUFS: whiteouts hard-linked to one base
        Symlink(".wh.f2", "anything"),
        Fifo(".wh.f3"),
        Device(".wh.f4", "c", 0, 0),
        Dir(".wh.d5/"),
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(F("keep", b"keep"))


def test_edge_36_only_the_exact_whiteout_prefix_counts(tmp_path: Path, sink: str) -> None:
    lower = [File("bar", b"bar"), Dir("d/"), File("d/keep", b"keep"), File("x", b"x")]
    upper = [
        File("foo.wh.bar", b"an ordinary file"),
        Dir("dir.wh.x/"),
        File("dir.wh.x/f", b"f"),
        File("x.wh.", b"ends with the prefix"),
        File("d/.wh..wh..opqX", b"AUFS-style name, not an opaque marker"),
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        F("bar", b"bar"),
        D("d"),
        F("d/keep", b"keep"),
        D("dir.wh.x"),
        F("dir.wh.x/f", b"f"),
        F("foo.wh.bar", b"an ordinary file"),
        F("x", b"x"),
        F("x.wh.", b"ends with the prefix"),
    )


@pytest.mark.parametrize("layers", ["single", "multi"])
def test_edge_37_no_whiteout_entries_in_the_output(tmp_path: Path, sink: str, layers: str) -> None:
    markers = [Whiteout("gone"), Opaque("d"), Opaque(""), File("d/f", b"f"), Dir(".wh..wh.plnk/"), Whiteout("d/none")]
    spec = image(markers) if layers == "single" else image([File("gone", b"g"), Dir("d/"), File("d/old", b"o")], markers)
    got = run(spec, tmp_path, sink)
    assert got.listing == expect(D("d"), F("d/f", b"f"))
    if sink == "tar":
        assert tar_members(got.out) == [(".", "d", ""), ("d", "d", ""), ("d/f", "f", "")]


@pytest.mark.parametrize("marker_dir", [False, True], ids=["no-marker-entry", "after-dir-marker"])
def test_edge_37_no_entries_below_a_whiteout_name(tmp_path: Path, sink: str, marker_dir: bool) -> None:
    upper = [Dir("a/.wh.b/"), File("a/.wh.b/c", b"c")] if marker_dir else [File("a/.wh.b/c", b"c")]
    got = run(image([Dir("a/"), File("a/b", b"b")], upper), tmp_path, sink)
    assert got.listing == (expect(D("a")) if marker_dir else expect(D("a"), F("a/b", b"b")))


# =====================================================================================
# Replacement and type changes (38-46)
# =====================================================================================


def test_edge_38_replacing_a_path_never_writes_through_the_old_one(tmp_path: Path, sink: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"host file")
    lower = [
        File("f1", b"old f1"),
        Hardlink("f1-other-name", "f1"),
        Symlink("abs", str(victim)),  # points at a host path (absolute)
        Symlink("rel", "../../../../../../.." + str(victim)),
        Fifo("fifo"),
        Device("dev", "c", 1, 3),
        Dir("dir/"),
        File("dir/child", b"child"),
    ]
    upper = [
        Symlink("f1", "f1-other-name"),
        File("abs", b"new abs"),
        File("rel", b"new rel"),
        File("fifo", b"was a fifo"),
        Fifo("dev"),
        Hardlink("dir", "abs"),
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        F("abs", b"new abs", link="abs"),
        P("dev"),
        F("dir", b"new abs", link="abs"),
        L("f1", "f1-other-name"),
        F("f1-other-name", b"old f1"),
        F("fifo", b"was a fifo"),
        F("rel", b"new rel"),
    )
    assert victim.read_bytes() == b"host file"


def test_edge_39_directory_over_directory_merges_children_and_takes_upper_metadata(tmp_path: Path, sink: str) -> None:
    lower = [
        Dir("d/", mode=0o700, uid=1, gid=1, mtime=T0 - 1000, xattrs={"user.a": b"1", "user.b": b"2"}),
        File("d/lower", b"lower"),
    ]
    upper = [
        Dir("d/", mode=0o2750, uid=2, gid=3, mtime=T0 + 1000, xattrs={"user.c": b"3"}),
        File("d/upper", b"upper", mtime=T0 + 5000),
        Dir("e/", xattrs={"user.gone": b"x"}),
    ]
    top = [Dir("e/", mode=0o711)]  # no xattrs at all: the whole set is replaced
    got = run(image(lower + [Dir("e/", xattrs={"user.e": b"e"})], upper, top), tmp_path, sink)
    assert got.listing == expect(
        D("d", mode=0o2750, owner="2:3", xattrs={"user.c": b"3"}),
        F("d/lower", b"lower"),
        F("d/upper", b"upper"),
        D("e", mode=0o711),
    )
    assert got.mtime("d") == T0 + 1000


def test_edge_40_directory_replaced_by_file_or_symlink_drops_the_subtree(tmp_path: Path, sink: str) -> None:
    lower = [Dir("d/"), Dir("d/sub/"), File("d/sub/x", b"x"), File("d/y", b"y"), Dir("e/"), File("e/z", b"z")]
    middle = [File("d/sub/added", b"added later")]
    upper = [File("d", b"now a file"), Symlink("e", "d")]
    got = run(image(lower, middle, upper), tmp_path, sink)
    assert got.listing == expect(F("d", b"now a file"), L("e", "d"))
    if sink == "tar":
        assert [name for name, _, _ in tar_members(got.out)] == [".", "d", "e"]


def test_edge_41_file_or_symlink_replaced_by_a_directory(tmp_path: Path, sink: str) -> None:
    lower = [File("f", b"file"), Symlink("dangling", "nowhere"), File("target", b"t"), Symlink("tofile", "target")]
    upper = [
        Dir("f/", mode=0o700),
        File("f/in", b"in f"),
        Dir("dangling/"),
        File("dangling/in", b"in dangling"),
        Dir("tofile/"),
        File("tofile/in", b"in tofile"),
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        D("dangling"),
        F("dangling/in", b"in dangling"),
        D("f", mode=0o700),
        F("f/in", b"in f"),
        F("target", b"t"),
        D("tofile"),
        F("tofile/in", b"in tofile"),
    )


def test_edge_42_directory_entry_replaces_a_symlink_to_a_directory(tmp_path: Path, sink: str) -> None:
    lower = [Dir("real/", mode=0o700), File("real/x", b"x"), Symlink("link", "real"), Symlink("abs", "/real")]
    upper = [Dir("link/"), File("link/y", b"y"), Dir("abs/", mode=0o750)]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        D("abs", mode=0o750),
        D("link"),
        F("link/y", b"y"),
        D("real", mode=0o700),
        F("real/x", b"x"),
    )


def test_edge_42_keep_dirlinks_keeps_a_symlink_to_a_directory_and_fills_its_target(tmp_path: Path, sink: str) -> None:
    # a layer built on a base without merged /usr, applied over one with it
    lower = [Dir("usr/"), Dir("usr/lib/", mode=0o700), File("usr/lib/libc.so", b"c"), Symlink("lib", "usr/lib"),
             Symlink("abs", "/usr/lib"), Symlink("dangling", "nowhere"), Symlink("tofile", "usr/lib/libc.so"),
             Symlink("loop", "loop")]
    upper = [Dir("lib/", mode=0o750), File("lib/libm.so", b"m"), Dir("abs/", mode=0o750), File("abs/libz.so", b"z"),
             Dir("dangling/"), File("dangling/in", b"d"), Dir("tofile/"), Dir("loop/")]
    got = run(image(lower, upper), tmp_path, sink, keep_dirlinks=True)
    assert got.listing == expect(
        L("abs", "/usr/lib"),
        D("dangling"),  # leads nowhere, to a file or round in a loop: replaced as usual
        F("dangling/in", b"d"),
        L("lib", "usr/lib"),
        D("loop"),
        D("tofile"),
        D("usr"),
        D("usr/lib", mode=0o750),  # the directory entries' metadata goes to the target
        F("usr/lib/libc.so", b"c"),
        F("usr/lib/libm.so", b"m"),
        F("usr/lib/libz.so", b"z"),
    )


def test_edge_43_implied_parents_and_later_explicit_entries(tmp_path: Path, sink: str) -> None:
    spec = image(
        [File("a/b/c", b"c", mtime=T0 + 10), File("x/y", b"y", mtime=T0 + 20), Dir("x/", mode=0o750, uid=4, gid=4, mtime=T0 + 30)],
        [Dir("a/", mode=0o700, uid=5, gid=6, mtime=T0 + 40)],
    )
    got = run(spec, tmp_path, sink)
    assert got.listing == expect(
        D("a", mode=0o700, owner="5:6"),
        D("a/b"),  # implied: 0755 0:0
        F("a/b/c", b"c"),
        D("x", mode=0o750, owner="4:4"),
        F("x/y", b"y"),
    )
    assert got.mtime("a/b") == T0 + 10  # the mtime of the entry that implied it
    assert got.mtime("a") == T0 + 40
    assert got.mtime("x") == T0 + 30


def test_edge_43_implied_parents_and_root_get_the_mapped_owner(tmp_path: Path, sink: str) -> None:
    spec = image([File("a/b/c", b"c", uid=1000, gid=1000)])
    got = run(spec, tmp_path, sink, uid_map=["0:100000:65536"], gid_map=["0:200000:65536"])
    assert got.listing == expect(
        D("a", owner="100000:200000"),
        D("a/b", owner="100000:200000"),
        F("a/b/c", b"c", owner="101000:201000"),
    )
    assert got.stat_root() == (0o755, 100000, 200000)


def test_edge_44_symlinked_parent_is_followed_inside_the_root(tmp_path: Path, sink: str) -> None:
    lower = [
        Dir("usr/"),
        Dir("usr/lib/"),
        File("usr/lib/old", b"old"),
        Symlink("lib", "/usr/lib"),  # absolute: restarts at the image root
        Symlink("lib2", "usr/lib"),
        Symlink("up", "../../../../usr"),  # .. stops at the root
        Symlink("chain", "lib2"),
    ]
    upper = [
        File("lib/x", b"via absolute link"),
        File("lib2/y", b"via relative link"),
        File("up/lib/z", b"via dotdot link"),
        File("chain/w", b"via two links"),
        Symlink("same-layer", "usr"),
        File("same-layer/v", b"via a link of this layer"),
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        L("chain", "lib2"),
        L("lib", "/usr/lib"),
        L("lib2", "usr/lib"),
        L("same-layer", "usr"),
        L("up", "../../../../usr"),
        D("usr"),
        D("usr/lib"),
        F("usr/lib/old", b"old"),
        F("usr/lib/w", b"via two links"),
        F("usr/lib/x", b"via absolute link"),
        F("usr/lib/y", b"via relative link"),
        F("usr/lib/z", b"via dotdot link"),
        F("usr/v", b"via a link of this layer"),
    )


def test_edge_45_parent_that_is_a_file_is_replaced_by_a_directory(tmp_path: Path, sink: str) -> None:
    lower = [File("f", b"lower file", mode=0o600, uid=9, gid=9)]
    upper = [File("f/x", b"x", mtime=T0 + 7), File("g", b"same layer"), File("g/y", b"y")]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        D("f"),  # implied: 0755 0:0
        F("f/x", b"x"),
        D("g"),
        F("g/y", b"y"),
    )
    assert got.mtime("f") == T0 + 7
    warnings = got.warnings("parent-replaced")
    assert len(warnings) == 2
    assert "'f/x'" in warnings[0] and "'f'" in warnings[0] and "layer 2" in warnings[0]


@pytest.mark.parametrize(
    "entry",
    [File("a/x", b"x"), Whiteout("a/x"), Opaque("a"), Hardlink("a/x", "f"), Hardlink("h", "a/x")],
    ids=["file", "whiteout", "opaque", "hardlink-name", "hardlink-target"],
)
def test_edge_46_symlink_loop_in_a_parent_is_eloop(tmp_path: Path, sink: str, entry: object) -> None:
    spec = image([Symlink("a", "b"), Symlink("b", "/a"), File("f", b"f")], [entry])
    run_error(spec, tmp_path, sink, UnsafeEntryError, "layer 2", "ELOOP")


def test_edge_46_self_loop_in_the_same_layer_is_eloop(tmp_path: Path, sink: str) -> None:
    spec = image([Symlink("self", "./self"), File("self/x", b"x")])
    run_error(spec, tmp_path, sink, UnsafeEntryError, "layer 1", "self/x", "ELOOP")


def _chain(n: int) -> list[Symlink | Dir]:
    """s1 -> s2 -> ... -> sN -> real/: resolving s1 takes exactly N hops."""
    return [Dir("real/")] + [Symlink(f"s{i}", f"s{i + 1}" if i < n else "real") for i in range(1, n + 1)]


def test_edge_46_255_hops_are_allowed(tmp_path: Path, sink: str) -> None:
    got = run(image(_chain(255), [File("s1/x", b"x")]), tmp_path, sink)
    assert got.listing == expect(
        D("real"),
        F("real/x", b"x"),
        *[L(f"s{i}", f"s{i + 1}" if i < 255 else "real") for i in range(1, 256)],
    )


def test_edge_46_256_hops_are_eloop(tmp_path: Path, sink: str) -> None:
    run_error(image(_chain(256), [File("s1/x", b"x")]), tmp_path, sink, UnsafeEntryError, "layer 2", "s1/x", "ELOOP")


# =====================================================================================
# Hard links (47-57)
# =====================================================================================


def test_edge_47_link_to_an_earlier_entry_of_the_same_layer(tmp_path: Path, sink: str) -> None:
    layer = [
        File("a", b"first a", mode=0o755, uid=1, gid=2),
        Hardlink("b", "a"),
        Hardlink("c", "b"),  # a link to a link: the same inode
        File("a", b"second a"),  # a later entry replaces the name, not the inode
    ]
    got = run(image(layer), tmp_path, sink)
    assert got.listing == expect(
        F("a", b"second a"),
        F("b", b"first a", mode=0o755, owner="1:2", link="first"),
        F("c", b"first a", mode=0o755, owner="1:2", link="first"),
    )


def test_edge_48_link_before_its_target_in_the_same_layer(tmp_path: Path, sink: str) -> None:
    lower = [File("t2", b"lower t2")]
    upper = [
        Hardlink("early", "t"),  # t does not exist yet: resolved at the end of the layer
        Hardlink("d/early2", "d/t"),
        File("t", b"target"),
        Dir("d/"),
        File("d/t", b"d target"),
        Hardlink("sees-lower", "t2"),  # t2 exists (lower): linked at once, in tar order
        File("t2", b"upper t2"),
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        D("d"),
        F("d/early2", b"d target", link="dt"),
        F("d/t", b"d target", link="dt"),
        F("early", b"target", link="t"),
        F("sees-lower", b"lower t2"),
        F("t", b"target", link="t"),
        F("t2", b"upper t2"),
    )


def test_edge_48_chain_of_links_before_their_target(tmp_path: Path, sink: str) -> None:
    layer = [Hardlink("a", "b"), Hardlink("b", "c"), File("c", b"c")]
    got = run(image(layer), tmp_path, sink)
    assert got.listing == expect(F("a", b"c", link="c"), F("b", b"c", link="c"), F("c", b"c", link="c"))


def test_edge_48_a_long_chain_resolves_in_linear_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Links retried until nothing changed resolved one link a pass: 12,000 of them in a
    chain ran for minutes.  Counted, not timed: each link is tried a bounded number of
    times."""
    from converter.merge import Merger

    n = 2000
    layer = [Hardlink(f"h{i}", f"h{i - 1}") for i in range(n, 0, -1)] + [File("h0", b"base")]
    calls = []
    real = Merger._hardlink

    def counting(self, entry, parts, *, final):  # type: ignore[no-untyped-def]
        calls.append(parts)
        return real(self, entry, parts, final=final)

    monkeypatch.setattr(Merger, "_hardlink", counting)
    got = run(image(layer), tmp_path, "tar")
    assert len(calls) <= 3 * n
    assert got.listing.count("\tf\t") == n + 1  # every name, one inode (a regular-file line each)
    assert all(f"h{i}\t" in got.listing for i in range(n + 1))


def test_edge_26_a_repeated_opaque_marker_hides_once(tmp_path: Path, sink: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker repeated in one layer changes nothing after the first (nothing lower can
    come back): 20,000 markers over 20,000 files had each rescanned the directory."""
    import builtins

    import converter.merge as merge_mod

    n = 300
    spec = image([Dir("d/")] + [File(f"d/old{i}", b"") for i in range(n)],
                 [File(f"d/new{i}", b"") for i in range(n)] + [Opaque("d")] * n)
    listed = [0]  # names the merge copied out of directories to scan them

    def counting_list(*args):  # type: ignore[no-untyped-def]
        out = builtins.list(*args)
        listed[0] += len(out)
        return out

    monkeypatch.setattr(merge_mod, "list", counting_list, raising=False)
    got = run(spec, tmp_path, sink)
    names = [line.split("\t")[0] for line in got.listing.splitlines()]
    assert sorted(n_ for n_ in names if n_.startswith("d/")) == sorted(f"d/new{i}" for i in range(n))
    assert listed[0] <= 4 * n  # (one scan of d; the repeats stop at once: not n scans of n)


def test_edge_48_later_entry_replaces_an_unresolved_link(tmp_path: Path, sink: str) -> None:
    # (its target comes later in the layer: a link to something, replaced; see 57 for
    # one to nothing)
    layer = [Hardlink("h", "t"), File("h", b"file h"), File("t", b"t"), Hardlink("d", "t2"), Dir("d/"), File("t2", b"2")]
    got = run(image(layer), tmp_path, sink)
    assert got.listing == expect(D("d"), F("h", b"file h"), F("t", b"t"), F("t2", b"2"))


def test_edge_49_link_to_a_file_of_a_lower_layer(tmp_path: Path, sink: str) -> None:
    spec = image(
        [File("lower", b"lower data", mode=0o600)],
        [Hardlink("upper-link", "lower")],
        [File("lower", b"rewritten in layer 3")],
    )
    got = run(spec, tmp_path, sink)
    assert got.listing == expect(
        F("lower", b"rewritten in layer 3"),
        F("upper-link", b"lower data", mode=0o600),  # the layer-1 bytes survive
    )


def test_edge_50_lower_link_group_survives_rewrite_of_one_member(tmp_path: Path, sink: str) -> None:
    """ggcr#2002: the upper layer rewrites `a`; `b` and `c` keep the old inode."""
    spec = image(
        [File("a", b"old", mode=0o640), Hardlink("b", "a"), Hardlink("c", "a")],
        [File("a", b"new")],
    )
    got = run(spec, tmp_path, sink)
    assert got.listing == expect(
        F("a", b"new"),
        F("b", b"old", mode=0o640, link="old"),
        F("c", b"old", mode=0o640, link="old"),
    )
    if sink == "tar":  # b is the new head of the group and carries the data
        assert tar_members(got.out) == [(".", "d", ""), ("a", "f", ""), ("b", "f", ""), ("c", "h", "b")]


def test_edge_51_lower_link_group_survives_whiteout_of_one_member(tmp_path: Path, sink: str) -> None:
    """ggcr#977: the upper layer deletes `a`; `b` keeps the content as a regular entry."""
    spec = image(
        [File("a", b"shared"), Hardlink("b", "a"), File("x", b"three"), Hardlink("y", "x"), Hardlink("z", "x")],
        [Whiteout("a"), Whiteout("x")],
    )
    got = run(spec, tmp_path, sink)
    assert got.listing == expect(
        F("b", b"shared"),
        F("y", b"three", link="yz"),
        F("z", b"three", link="yz"),
    )
    if sink == "tar":
        assert tar_members(got.out) == [(".", "d", ""), ("b", "f", ""), ("y", "f", ""), ("z", "h", "y")]


def test_edge_52_hardlink_to_a_symlink_links_the_symlink(tmp_path: Path, sink: str) -> None:
    layer = [File("target", b"t"), Symlink("sym", "target", uid=4, gid=4), Hardlink("hard", "sym")]
    got = run(image(layer), tmp_path, sink)
    assert got.listing == expect(
        L("hard", "target", owner="4:4", link="sym"),
        L("sym", "target", owner="4:4", link="sym"),
        F("target", b"t"),
    )


def test_edge_53_hardlink_targets_resolve_inside_the_root(tmp_path: Path, sink: str) -> None:
    pw = b"image passwd\n"
    lower = [Dir("etc/"), File("etc/passwd", pw), Symlink("rootlink", "/"), Symlink("up", "../../..")]
    upper = [
        Hardlink("h-abs", "/etc/passwd"),
        Hardlink("h-root", "rootlink/etc/passwd"),
        Hardlink("h-up", "up/etc/passwd"),
    ]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        D("etc"),
        F("etc/passwd", pw, link="pw"),
        F("h-abs", pw, link="pw"),
        F("h-root", pw, link="pw"),
        F("h-up", pw, link="pw"),
        L("rootlink", "/"),
        L("up", "../../.."),
    )


@pytest.mark.parametrize("target", ["../etc/passwd", "etc/../../etc/passwd"])
def test_edge_53_hardlink_target_with_dotdot_is_refused(tmp_path: Path, sink: str, target: str) -> None:
    spec = image([Dir("etc/"), File("etc/passwd", b"pw")], [Hardlink("the-link", target)])
    run_error(spec, tmp_path, sink, UnsafeEntryError, "layer 2", "the-link", target)


def test_edge_53_hardlink_to_a_host_only_path_is_refused(tmp_path: Path, sink: str) -> None:
    # /etc/hostname exists on the host, not in the image
    spec = image([File("f", b"f")], [Hardlink("the-link", "/etc/hostname")])
    run_error(spec, tmp_path, sink, UnsafeEntryError, "layer 2", "the-link", "/etc/hostname")


def test_edge_54_hardlink_entry_replaces_an_existing_path(tmp_path: Path, sink: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"host file")
    lower = [
        File("t", b"target"),
        Symlink("was-symlink", str(victim)),
        Dir("was-dir/"),
        File("was-dir/child", b"child"),
        File("was-file", b"old content"),
        Hardlink("was-file-2", "was-file"),
    ]
    upper = [Hardlink("was-symlink", "t"), Hardlink("was-dir", "t"), Hardlink("was-file", "t")]
    got = run(image(lower, upper), tmp_path, sink)
    assert got.listing == expect(
        F("t", b"target", link="t"),
        F("was-dir", b"target", link="t"),
        F("was-file", b"target", link="t"),
        F("was-file-2", b"old content"),  # the old inode keeps its content
        F("was-symlink", b"target", link="t"),
    )
    assert victim.read_bytes() == b"host file"


def test_edge_55_hardlink_creates_missing_parents(tmp_path: Path, sink: str) -> None:
    layer = [File("t", b"target"), Hardlink("deep/er/h", "t")]
    got = run(image(layer), tmp_path, sink)
    assert got.listing == expect(
        D("deep"),
        D("deep/er"),
        F("deep/er/h", b"target", link="t"),
        F("t", b"target", link="t"),
    )


def test_edge_56_hardlink_header_metadata_is_ignored(tmp_path: Path, sink: str) -> None:
    layer = [
        File("t", b"target", mode=0o640, uid=3, gid=4, mtime=T0, xattrs={"user.t": b"t"}),
        Raw(b"h", type=b"1", linkname=b"t", mode=0o4777, uid=1234, gid=5678, mtime=T0 + 999,
            pax={"SCHILY.xattr.user.h": "h"}),
    ]
    got = run(image(layer), tmp_path, sink)
    xattrs = {"user.t": b"t"}
    assert got.listing == expect(
        F("h", b"target", mode=0o640, owner="3:4", link="t", xattrs=xattrs),
        F("t", b"target", mode=0o640, owner="3:4", link="t", xattrs=xattrs),
    )
    assert got.mtime("t") == T0


def test_edge_57_hardlink_to_a_directory_is_refused(tmp_path: Path, sink: str) -> None:
    spec = image([Dir("the-dir/")], [Hardlink("the-link", "the-dir")])
    message = run_error(spec, tmp_path, sink, UnsafeEntryError, "layer 2", "the-link", "the-dir")
    assert "directory" in message


def test_edge_57_hardlink_to_the_root_is_refused(tmp_path: Path, sink: str) -> None:
    spec = image([File("f", b"f")], [Hardlink("the-link", "./")])
    run_error(spec, tmp_path, sink, UnsafeEntryError, "layer 2", "the-link")


MISSING_TARGETS = {
    # name: (layers above the base [other, the-target], layer of the link, target as named)
    "never-seen": ([[Hardlink("the-link", "no-such-target")]], "layer 2", "no-such-target"),
    "whited-out-below": ([[Whiteout("the-target")], [Hardlink("the-link", "the-target")]], "layer 3", "the-target"),
    "whited-out-same-layer": ([[Whiteout("the-target"), Hardlink("the-link", "the-target")]], "layer 2", "the-target"),
    "under-a-file": ([[Hardlink("the-link", "other/the-target")]], "layer 2", "other/the-target"),
    # a link to nothing is still one when a later entry of its layer takes its name
    "replaced-later": ([[Hardlink("the-link", "no-such-target"), File("the-link", b"later")]], "layer 2", "no-such-target"),
    "replaced-by-a-link": ([[Hardlink("the-link", "no-such-target"), Hardlink("the-link", "other")]], "layer 2",
                           "no-such-target"),
}


@pytest.mark.parametrize("case", sorted(MISSING_TARGETS))
def test_edge_57_hardlink_to_a_missing_name_is_refused(tmp_path: Path, sink: str, case: str) -> None:
    upper, layer, target = MISSING_TARGETS[case]
    spec = image([File("other", b"o"), File("the-target", b"t")], *upper)
    message = run_error(spec, tmp_path, sink, UnsafeEntryError, layer, "the-link", target)
    assert "does not exist" in message


# =====================================================================================
# Directory times (60): not in the listing, so checked with lstat / the tar header
# =====================================================================================


def test_edge_60_directory_keeps_its_mtime_when_children_are_written_later(tmp_path: Path, sink: str) -> None:
    spec = image(
        [Dir("d/", mtime=T0 - 5000), File("d/same-layer", b"1", mtime=T0 + 1), Dir("d/sub/", mtime=T0 - 6000)],
        [File("d/sub/upper", b"2", mtime=T0 + 2), File("d/upper", b"3", mtime=T0 + 3)],
    )
    got = run(spec, tmp_path, sink)
    assert got.listing == expect(
        D("d"), F("d/same-layer", b"1"), D("d/sub"), F("d/sub/upper", b"2"), F("d/upper", b"3")
    )
    assert (got.mtime("d"), got.mtime("d/sub")) == (T0 - 5000, T0 - 6000)


def test_edge_61_mtimes_before_1970_or_past_64_bit_nanoseconds_become_the_epoch_with_a_warning(
        tmp_path: Path, sink: str) -> None:
    spec = image([
        Raw(b"far-future", data=b"f", mtime=2**80),  # base-256: no file system or tar reader holds it
        Raw(b"far-past", data=b"p", mtime=-(2**70)),
        Raw(b"before-1970", data=b"b", mtime=-86400),  # (Docker's Chtimes and containerd: the epoch too)
        Raw(b"epoch", data=b"e", mtime=0),
        File("normal", b"n"),
    ])
    got = run(spec, tmp_path, sink)
    assert [got.mtime(p) for p in ("far-future", "far-past", "before-1970", "epoch", "normal")] == [0, 0, 0, 0, T0]
    warnings = got.warnings("mtime-clamped")
    assert len(warnings) == 3 and "'far-future'" in warnings[0] and "out of range" in warnings[0]
    assert "'far-past'" in warnings[1] and "'before-1970'" in warnings[2] and "before 1970" in warnings[2]


def test_edge_62_a_symlink_gets_its_own_owner_and_mtime_never_its_targets(tmp_path: Path, sink: str) -> None:
    spec = image([File("target", b"t", mode=0o600, uid=5, gid=6, mtime=T0 + 100),
                  Symlink("link", "target", uid=1000, gid=1000, mtime=T0 + 200)])
    got = run(spec, tmp_path, sink)
    assert got.listing == expect(L("link", "target", owner="1000:1000"), F("target", b"t", mode=0o600, owner="5:6"))
    assert (got.mtime("link"), got.mtime("target")) == (T0 + 200, T0 + 100)


def test_edge_63_owners_are_the_numeric_ids_never_the_names_looked_up_here(tmp_path: Path, sink: str) -> None:
    # names of users this host has, on ids that are not theirs
    spec = image([Raw(b"f", data=b"f", uid=1234, gid=4321, uname=b"root", gname=b"root"),
                  Raw(b"g", data=b"g", uid=0, gid=0, uname=b"nobody", gname=b"nogroup")])
    got = run(spec, tmp_path, sink)
    assert got.listing == expect(F("f", b"f", owner="1234:4321"), F("g", b"g", owner="0:0"))


def test_edge_67_libarchive_and_schily_xattrs_reach_the_output(tmp_path: Path, sink: str) -> None:
    layer = [
        Raw(b"f", data=b"f", pax={"LIBARCHIVE.xattr.user.mime": base64.b64encode(b"text/plain\0").decode(),
                                  "SCHILY.xattr.user.bin": b"\x00\xff\x01"}),
        # both forms of one name: the binary-exact SCHILY one wins
        Raw(b"both", data=b"b", pax={"LIBARCHIVE.xattr.user.x": base64.b64encode(b"from libarchive").decode(),
                                     "SCHILY.xattr.user.x": "from schily"}),
    ]
    got = run(image(layer), tmp_path, sink)
    assert got.listing == expect(
        F("both", b"b", xattrs={"user.x": b"from schily"}),
        F("f", b"f", xattrs={"user.bin": b"\x00\xff\x01", "user.mime": b"text/plain\0"}),
    )


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A binary POSIX ACL xattr value: version 2, then (tag, permissions, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


_NO_ID = 0xFFFFFFFF


def test_edge_68_acls_in_either_form_reach_the_output_with_their_ids_mapped(tmp_path: Path, sink: str) -> None:
    go = _acl((0x01, 6, _NO_ID), (0x02, 4, 1000), (0x04, 4, _NO_ID), (0x08, 4, 2000), (0x10, 6, _NO_ID), (0x20, 4, _NO_ID))
    layer = [
        File("go", b"g", mode=0o664, xattrs={"system.posix_acl_access": go}),  # Go's archive/tar: the binary xattr
        # star: names with the numeric id as a fourth field; GNU tar: numeric ids, one per line
        Raw(b"star", data=b"s", pax={"SCHILY.acl.access": "user::rw-,user:lisa:r--:1000,group::r--,group:staff:r--:2000,mask::r--,other::r--"}),
        Raw(b"gnu", data=b"t", pax={"SCHILY.acl.access": "user::rw-\nuser:1000:r--\ngroup::r--\ngroup:2000:r--\nother::r--\n"}),
        Raw(b"dir/", type=b"5", mode=0o755, pax={  # (GNU tar adds the access ACL the mode bits already say)
            "SCHILY.acl.access": "user::rwx\ngroup::r-x\nother::r-x\n",
            "SCHILY.acl.default": "user::rwx,user:1000:r-x,group::r-x,mask::r-x,other::r-x"}),
        # GNU tar writes a name, without its id, when the id has one where the tar was made
        Raw(b"named", data=b"n", pax={"SCHILY.acl.access": "user::rw-\nuser:lisa:r--\ngroup::r--\nmask::r--\nother::r--\n"}),
    ]
    got = run(image(layer), tmp_path, sink, uid_map=["0:100000:65536"], gid_map=["0:200000:65536"])
    owner = "100000:200000"
    named = _acl((0x01, 6, _NO_ID), (0x02, 4, 101000), (0x04, 4, _NO_ID), (0x08, 4, 202000), (0x10, 4, _NO_ID), (0x20, 4, _NO_ID))
    assert got.listing == expect(
        D("dir", owner=owner, xattrs={"system.posix_acl_default": _acl(
            (0x01, 7, _NO_ID), (0x02, 5, 101000), (0x04, 5, _NO_ID), (0x10, 5, _NO_ID), (0x20, 5, _NO_ID))}),
        F("gnu", b"t", owner=owner, xattrs={"system.posix_acl_access": named}),  # (the mask computed, as setfacl does)
        F("go", b"g", mode=0o664, owner=owner, xattrs={"system.posix_acl_access": _acl(
            (0x01, 6, _NO_ID), (0x02, 4, 101000), (0x04, 4, _NO_ID), (0x08, 4, 202000), (0x10, 6, _NO_ID), (0x20, 4, _NO_ID))}),
        F("named", b"n", owner=owner),  # a name is never looked up on this host: reported instead
        F("star", b"s", owner=owner, xattrs={"system.posix_acl_access": named}),
    )
    [warning] = got.warnings("acl-not-applied")
    assert "'named'" in warning and "lisa" in warning and "layer 1" in warning


def test_edge_68_an_acl_naming_an_unmapped_id_is_an_error_like_an_owner(tmp_path: Path, sink: str) -> None:
    acl = _acl((0x01, 6, _NO_ID), (0x02, 4, 70000), (0x04, 4, _NO_ID), (0x10, 4, _NO_ID), (0x20, 4, _NO_ID))
    spec = image([File("f", b"f", xattrs={"system.posix_acl_access": acl})])
    with pytest.raises(ConverterError, match=r"output '?f'? \(ACL\): uid 70000 is outside every --uid-map range"):
        run(spec, tmp_path, sink, uid_map=["0:100000:65536"], gid_map=["0:100000:65536"])
    got = run(spec, tmp_path, sink, uid_map=["0:100000:65536"], gid_map=["0:100000:65536"], unmapped_id=65534)
    assert got.listing == expect(F("f", b"f", owner="100000:100000", xattrs={"system.posix_acl_access": _acl(
        (0x01, 6, _NO_ID), (0x02, 4, 65534), (0x04, 4, _NO_ID), (0x10, 4, _NO_ID), (0x20, 4, _NO_ID))}))


def _refusing(monkeypatch: pytest.MonkeyPatch, name: str, err: int, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Make ``os.<name>`` fail with ``err`` whenever ``when(*args)`` says so, as a file
    system or a policy that refuses the operation would (the forked writers inherit it)."""
    real = getattr(os, name)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, refuse)


@pytest.mark.parametrize("err", [errno.ENOTSUP, errno.EPERM, errno.E2BIG, errno.ENOSPC, errno.ERANGE])
def test_edge_67_xattrs_the_target_file_system_refuses_are_warned_about_and_the_rest_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    _refusing(monkeypatch, "setxattr", err, lambda path, key, *a, **k: key.startswith("user.refused"))
    layer = [File(f"f{i}", b"x", xattrs={"user.refused": b"1", "user.kept": b"2"}) for i in range(3)]
    layer.append(Dir("d/", xattrs={"user.refused.dir": b"3"}))
    got = run(image(layer), tmp_path, "dir")
    assert got.listing == expect(D("d"), *(F(f"f{i}", b"x", xattrs={"user.kept": b"2"}) for i in range(3)))
    warned = got.warnings("xattr-unsupported")
    assert len(warned) == 4 and all("not kept" in w and os.strerror(err) in w for w in warned), warned
    assert {w.split(":")[0] for w in warned} == {"'d'", "'f0'", "'f1'", "'f2'"}


def test_edge_73_a_symlinks_xattrs_never_reach_what_it_points_at(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"host")
    pax: dict[str | bytes, str | bytes] = {"SCHILY.xattr.user.x": b"u"} | ({"SCHILY.xattr.trusted.x": b"t"} if IS_ROOT else {})
    layer = [
        File("target", b"t"),
        Raw(b"rel", type=b"2", linkname=b"target", pax=pax),
        Raw(b"abs", type=b"2", linkname=str(victim).encode(), pax=pax),
        Raw(b"fifo", type=b"6", pax=pax),  # set by path too (a fifo is not opened)
    ]
    got = run(image(layer), tmp_path, "dir")
    out = got.out
    assert os.listxattr(out / "target") == [] and os.listxattr(victim) == []
    for node in ("rel", "abs", "fifo"):
        on_node = set(os.listxattr(out / node, follow_symlinks=False))
        # the kernel keeps user.* off symlinks and fifos (EPERM): reported; trusted.* as
        # root is the node's own
        assert on_node == ({"trusted.x"} if IS_ROOT else set())
    assert {w.split(":")[0] for w in got.warnings("xattr-unsupported")} == {"'rel'", "'abs'", "'fifo'"}


def test_edge_67_xattrs_the_kernel_refuses_are_warned_about_not_fatal(tmp_path: Path) -> None:
    """Found by an audit: these ended the directory output with exit 8 while the
    flattened tar kept them (a tar holds any value; the file system judges)."""
    layer = [
        File("too-big", b"1", xattrs={"user.big": b"x" * (200 << 10)}),  # over XATTR_SIZE_MAX: E2BIG
        File("bad-acl", b"2", xattrs={"system.posix_acl_access": b"\x02\x00\x00\x00garbage"}),  # EINVAL
        File("default-acl-on-a-file", b"3", xattrs={"system.posix_acl_default": _acl(
            (0x01, 7, _NO_ID), (0x04, 5, _NO_ID), (0x20, 5, _NO_ID))}),  # only directories have one: EACCES
        File("fine", b"4", xattrs={"user.ok": b"ok"}),
    ]
    got = run(image(layer), tmp_path, "dir")
    assert got.listing == expect(F("bad-acl", b"2"), F("default-acl-on-a-file", b"3"), F("fine", b"4", xattrs={"user.ok": b"ok"}),
                                 F("too-big", b"1"))
    warned = sorted(w.split(":")[0] for w in got.warnings("xattr-unsupported"))
    assert warned == ["'bad-acl'", "'default-acl-on-a-file'", "'too-big'"], got.warnings()


@pytest.mark.parametrize("swap", ["dir", "parent"])
def test_edge_74_a_directory_swapped_for_a_symlink_while_writing_is_never_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str) -> None:
    """CVE-2018-15664's race, won on purpose: once the directories exist, and before any
    file goes into them, another process replaces one with a symlink to a host directory.
    The writer works from directory fds opened one component at a time with O_NOFOLLOW,
    so a writer that opens it afterwards (a forked writer, or after its fd cache moved
    on) stops with an error instead of writing through the link, and removes what it
    wrote.  (One that holds the fd already writes into the real directory, wherever it
    was moved: never through the link either.)"""
    from converter.sinks import directory

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"host")
    real = directory.DirectoryWriter._run_jobs

    def racing(self: Any, *args: Any, **kwargs: Any) -> Any:
        [partial] = [p for p in tmp_path.iterdir() if p.name.startswith("out.partial-")]
        moved = partial / ("a/b" if swap == "dir" else "a")
        moved.rename(moved.with_name("moved"))
        moved.symlink_to(victim)
        self.fds.close()  # as a forked writer's: nothing below the root open yet
        return real(self, *args, **kwargs)

    monkeypatch.setattr(directory.DirectoryWriter, "_run_jobs", racing)
    files = [File(f"a/b/f{i}", b"image") for i in range(20)] + [File("a/b/keep", b"image"), File("top", b"t")]
    src = write_image(image(files), tmp_path)
    with pytest.raises(OutputError, match=r"output '?a(/b)?'?: cannot open as a directory .*changed while it was written"):
        convert(str(src), tmp_path / "out")
    assert sorted(p.name for p in victim.iterdir()) == ["keep"] and (victim / "keep").read_bytes() == b"host"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar", "victim"]


@pytest.mark.parametrize("devices", ["skip", "empty"])
@pytest.mark.parametrize("err", [errno.EPERM, errno.EOPNOTSUPP])
def test_edge_70_a_fifo_the_system_refuses_is_skipped_or_emptied_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, devices: str) -> None:
    _refusing(monkeypatch, "mkfifo", err)
    layer = [Fifo("run/pipe", mode=0o620), File("run/file", b"f")]
    got = run(image(layer), tmp_path, "dir", devices=devices)
    if devices == "skip":
        assert got.listing == expect(D("run"), F("run/file", b"f"))
        [warning] = got.warnings("fifo-skipped")
    else:
        assert got.listing == expect(D("run"), F("run/file", b"f"),
                                     F("run/pipe", b"", mode=0o620))  # (its kind recorded with --keep-ids=xattr)
        [warning] = got.warnings("fifo-emptied")
    assert "'run/pipe'" in warning and os.strerror(err) in warning
    assert not got.warnings("device-skipped") and not got.warnings("device-emptied")


def test_edge_70_a_failing_fifo_that_is_not_a_refusal_is_an_output_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _refusing(monkeypatch, "mkfifo", errno.EIO)
    src = write_image(image([Fifo("pipe")]), tmp_path)
    with pytest.raises(OutputError, match=r"output 'pipe': cannot create.*Input/output error"):
        convert(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# =====================================================================================
# The flattened tar extracted by GNU tar gives exactly the directory sink's tree
# =====================================================================================

RICH_IMAGES = {
    "hardlinks": (
        image(
            [
                File("a", b"v1", mode=0o4755),
                Hardlink("b", "a"),
                Hardlink("c", "a"),
                File("x", b"x1"),
                Hardlink("y", "x"),
                Symlink("s", "a"),
                Hardlink("hs", "s"),
                Dir("dir/"),
                Hardlink("dir/deep", "x"),
            ],
            [File("a", b"v2"), Whiteout("x"), Hardlink("d", "b")],
        ),
        expect(
            F("a", b"v2"),
            F("b", b"v1", mode=0o4755, link="v1"),
            F("c", b"v1", mode=0o4755, link="v1"),
            F("d", b"v1", mode=0o4755, link="v1"),
            D("dir"),
            F("dir/deep", b"x1", link="x1"),
            L("hs", "a", link="s"),
            L("s", "a", link="s"),
            F("y", b"x1", link="x1"),
        ),
    ),
    "metadata": (
        image(
            [
                Dir("tmp/", mode=0o1777),
                Dir("bin/"),
                File("bin/su", b"su", mode=0o4755),
                File("bin/sg", b"sg", mode=0o2755, gid=42),
                File("bin/both", b"both", mode=0o6711),
                Dir("sgid/", mode=0o2775, gid=50),
                File("cap", b"cap", mode=0o755, xattrs={"security.capability": CAP_NET_RAW}),
                File("ux", b"ux", xattrs={"user.comment": b"hello world", "user.bin": b"\x00\xff\x01\x02"}),
                File("tx", b"tx", xattrs={"trusted.note": b"root only"}),
                Dir("xd/", xattrs={"user.dir": b"yes"}),
                Dir("dev/"),
                Device("dev/null", "c", 1, 3, mode=0o666),
                Device("dev/loop0", "b", 7, 0, mode=0o660, gid=6),
                Hardlink("dev/null-too", "dev/null"),
                Fifo("fifo", mode=0o600, uid=7, gid=7),
                File("owned", b"o", uid=1000, gid=1000),
                Symlink("owned-link", "owned", uid=1000, gid=1000),
                File("big-ids", b"b", uid=100_000_000, gid=200_000_000),
                File("mode000", b"secret", mode=0o000),
                Dir("ro/", mode=0o500),
                File("ro/inside", b"i", mode=0o400),
            ],
        ),
        expect(
            F("big-ids", b"b", owner="100000000:200000000"),
            D("bin"),
            F("bin/both", b"both", mode=0o6711),
            F("bin/sg", b"sg", mode=0o2755, owner="0:42"),
            F("bin/su", b"su", mode=0o4755),
            F("cap", b"cap", mode=0o755, xattrs={"security.capability": CAP_NET_RAW}),
            D("dev"),
            B("dev/loop0", 7, 0, mode=0o660, owner="0:6"),
            C("dev/null", 1, 3, mode=0o666, link="null"),
            C("dev/null-too", 1, 3, mode=0o666, link="null"),
            P("fifo", mode=0o600, owner="7:7"),
            F("mode000", b"secret", mode=0o000),
            F("owned", b"o", owner="1000:1000"),
            L("owned-link", "owned", owner="1000:1000"),
            D("ro", mode=0o500),
            F("ro/inside", b"i", mode=0o400),
            D("sgid", mode=0o2775, owner="0:50"),
            D("tmp", mode=0o1777),
            F("tx", b"tx", xattrs={"trusted.note": b"root only"}),
            F("ux", b"ux", xattrs={"user.comment": b"hello world", "user.bin": b"\x00\xff\x01\x02"}),
            D("xd", xattrs={"user.dir": b"yes"}),
        ),
    ),
    "names-and-data": (
        image(
            [
                Dir("usr/"),
                Dir("usr/lib/"),
                Symlink("lib", "usr/lib"),
                File("old", b"old"),
                Dir("opq/"),
                File("opq/old", b"old"),
            ],
            Layer(
                [
                    File(f"lib/{'l' * 120}/{'m' * 150}", b"long name through a symlinked parent"),
                    Symlink("long-target", "/" + "t" * 200),
                    File(b"caf\xe9 tab\there back\\slash", b"odd name"),
                    Hardlink(b"caf\xe9-link", b"caf\xe9 tab\there back\\slash"),
                    Hardlink(f"lib/{'l' * 120}/hard", f"lib/{'l' * 120}/{'m' * 150}"),
                    Sparse("sparse", 70000, [(0, b"start"), (65536, b"end")]),
                    Whiteout("old"),
                    Opaque("opq"),
                    File("opq/new", b"new"),
                    Fifo("opq/fifo"),
                    Hardlink("opq/fifo-too", "opq/fifo"),
                ],
                format="gnu",
            ),
        ),
        expect(
            L("lib", "usr/lib"),
            L("long-target", "/" + "t" * 200),
            D("opq"),
            P("opq/fifo", link="fifo"),
            P("opq/fifo-too", link="fifo"),
            F("opq/new", b"new"),
            F(b"caf\xe9 tab\there back\\slash", b"odd name", link="odd"),
            F(b"caf\xe9-link", b"odd name", link="odd"),
            F("sparse", _sparse_data(70000, [(0, b"start"), (65536, b"end")])),
            D("usr"),
            D("usr/lib"),
            D(f"usr/lib/{'l' * 120}"),
            F(f"usr/lib/{'l' * 120}/hard", b"long name through a symlinked parent", link="long"),
            F(f"usr/lib/{'l' * 120}/{'m' * 150}", b"long name through a symlinked parent", link="long"),
        ),
    ),
}


@pytest.mark.skipif(not IS_ROOT, reason="GNU tar keeps owners, devices and trusted.* xattrs only as root")
@pytest.mark.parametrize("name", sorted(RICH_IMAGES))
def test_flattened_tar_extracted_by_gnu_tar_equals_directory_sink(tmp_path: Path, name: str) -> None:
    spec, expected = RICH_IMAGES[name]
    (tmp_path / "dir").mkdir()
    (tmp_path / "tar").mkdir()
    as_dir = run(spec, tmp_path / "dir", "dir")
    as_tar = run(spec, tmp_path / "tar", "tar")
    assert as_dir.listing == expected
    assert as_tar.listing == expected
    assert gnu_tar_extract(as_tar.out, tmp_path / "extracted") == expected

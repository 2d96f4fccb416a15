"""``--path`` and ``--with-deps`` (issue 6, point 3).

Three parts:

* selection on generated images (globs, symlinks followed inside the image, whole
  subtrees, hard links, errors), compared as whole canonical listings, both sinks;
* ``--with-deps`` on generated images of hand-built ELF files (``test_elf.make_elf``)
  whose dependency structure is known exactly: RUNPATH vs RPATH, RPATH inheritance,
  ``$ORIGIN``/``$LIB``/``$PLATFORM``, ``/etc/ld.so.conf`` includes, wrong-class
  candidates, ``DF_1_NODEFLIB``, glibc-hwcaps, musl, missing libraries;
* ``--with-deps`` on real binaries of this machine (``/bin/ls``, ``/usr/bin/env`` and
  programs compiled here with RUNPATH/RPATH ``$ORIGIN``), placed in non-default library
  directories, converted and run with ``chroot`` (as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest
from edge_helpers import IS_ROOT, D, F, L, expect, image, run, write_image
from test_elf import make_elf

from converter import convert
from converter.elf import DF_1_NODEFLIB, EM_386, parse_elf_file
from converter.errors import ConverterError, NotFoundError, UsageError
from converter.listing import list_directory, list_tar
from converter.merge import Events
from converter.testing.imagegen import Dir, File, Hardlink, ImageSpec, Layer, Symlink, Whiteout, write_docker_archive

IN_CI = bool(os.environ.get("CI"))


@pytest.fixture(
    params=[
        pytest.param("dir", marks=pytest.mark.skipif(not IS_ROOT, reason="expected trees describe extraction as root")),
        "tar",
    ]
)
def sink(request: pytest.FixtureRequest) -> str:
    return request.param


# =====================================================================================
# Selection
# =====================================================================================

BASE = [
    Dir("usr/"),
    Dir("usr/bin/"),
    File("usr/bin/dash", b"dash", mode=0o755),
    Symlink("usr/bin/sh", "dash"),
    File("usr/bin/bash", b"bash", mode=0o755),
    File("usr/bin/ls", b"ls", mode=0o755),
    Symlink("bin", "usr/bin"),
    Dir("etc/", mode=0o750, uid=5, gid=6),
    File("etc/a.conf", b"a"),
    File("etc/b.conf", b"b"),
    File("etc/c.txt", b"c"),
    File("etc/.hidden.conf", b"h"),
    Dir("etc/sub/"),
    File("etc/sub/x.conf", b"x"),
    Symlink("etc/alt", "/opt/target"),
    Dir("opt/"),
    File("opt/target", b"t"),
]


def test_symlinked_parent_and_final_symlink_are_followed(tmp_path: Path, sink: str) -> None:
    """--path /bin/sh with bin -> usr/bin and sh -> dash keeps all three names."""
    got = run(image(BASE), tmp_path, sink, paths=["/bin/sh"])
    assert got.listing == expect(
        L("bin", "usr/bin"),
        D("usr"),
        D("usr/bin"),
        F("usr/bin/dash", b"dash", mode=0o755),
        L("usr/bin/sh", "dash"),
    )


def test_globs_per_component(tmp_path: Path, sink: str) -> None:
    got = run(image(BASE), tmp_path, sink, paths=["/etc/*.conf", "usr/bin/?ash", "/bin/[l]s"])
    assert got.listing == expect(
        L("bin", "usr/bin"),
        D("etc", mode=0o750, owner="5:6"),  # parents keep their own metadata
        F("etc/.hidden.conf", b"h"),  # fnmatch: * matches a leading dot too
        F("etc/a.conf", b"a"),
        F("etc/b.conf", b"b"),
        D("usr"),
        D("usr/bin"),
        F("usr/bin/bash", b"bash", mode=0o755),
        F("usr/bin/dash", b"dash", mode=0o755),
        F("usr/bin/ls", b"ls", mode=0o755),
    )


def test_double_star_matches_any_depth(tmp_path: Path, sink: str) -> None:
    got = run(image(BASE), tmp_path, sink, paths=["/etc/**/x.conf", "/**/a.conf"])
    assert got.listing == expect(
        D("etc", mode=0o750, owner="5:6"),
        F("etc/a.conf", b"a"),
        D("etc/sub"),
        F("etc/sub/x.conf", b"x"),
    )


def test_several_double_stars_over_a_deep_tree_find_each_place_once(tmp_path: Path) -> None:
    """Found by an audit: ``/usr/**/lib/**/*.so`` over one file 1,000 directories deep
    (every one named lib) took 15 s and 2.7 GB, each ``**`` expanding again below every
    position the one before had reached.  Each place is now reached once per step."""
    from converter.merge import build_plan
    from converter.pathselect import Selector
    from converter.sources import open_image

    depth = 1000
    write_docker_archive(tmp_path / "img.tar", ImageSpec(layers=[Layer([File("usr/" + "lib/" * depth + "libx.so", b"y")])]))
    with open_image(str(tmp_path / "img.tar")) as img:
        plan = build_plan(img)
        try:
            selector = Selector(plan, Events())
            matches = selector.glob(b"/usr/**/lib/**/*.so")
            assert [m.entry for m in matches] == [(b"usr",) + (b"lib",) * depth + (b"libx.so",)]
            assert len(selector.glob(b"/**/**/**")) == depth + 2  # the root, usr and every lib, once each
        finally:
            plan.close()


def test_many_symlinks_to_one_place_are_one_place_with_every_way_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by an audit: 150 symlinks to / made ``/*/*/*/x`` 3.4 million ways to one place
    (1.8 GB).  A place is reached once per step, with every symlink that leads there
    kept, so the selection is the same."""
    from converter.merge import build_plan
    from converter.pathselect import Selector
    from converter.sources import open_image

    links = [Symlink(f"l{i:02}", "/") for i in range(40)]
    write_docker_archive(tmp_path / "img.tar", ImageSpec(layers=[Layer([File("f", b"x"), *links])]))
    with open_image(str(tmp_path / "img.tar")) as img:
        plan = build_plan(img)
        try:
            selector = Selector(plan, Events())
            calls = [0]
            real = Selector.resolve

            def counting(self, *args, **kw):  # type: ignore[no-untyped-def]
                calls[0] += 1
                return real(self, *args, **kw)

            monkeypatch.setattr(Selector, "resolve", counting)
            (match,) = selector.glob(b"/*/*/*/f")
            assert match.entry == (b"f",) and sorted(match.links) == [(f"l{i:02}".encode(),) for i in range(40)]
            assert calls[0] < 500  # (40 ** 3 ways were tried one by one)
        finally:
            plan.close()
    got = run(image([File("f", b"x"), *links]), tmp_path / "sel", "tar", paths=["/*/*/f"])
    assert got.listing == expect(F("f", b"x"), *(L(f"l{i:02}", "/") for i in range(40)))


def test_directory_keeps_its_whole_subtree_without_following_links_inside(tmp_path: Path, sink: str) -> None:
    got = run(image(BASE), tmp_path, sink, paths=["/etc"])
    assert got.listing == expect(
        D("etc", mode=0o750, owner="5:6"),
        F("etc/.hidden.conf", b"h"),
        F("etc/a.conf", b"a"),
        L("etc/alt", "/opt/target"),  # kept as it is; /opt/target is not selected
        F("etc/b.conf", b"b"),
        F("etc/c.txt", b"c"),
        D("etc/sub"),
        F("etc/sub/x.conf", b"x"),
    )


def test_symlink_to_directory_keeps_link_and_whole_target(tmp_path: Path, sink: str) -> None:
    got = run(image(BASE), tmp_path, sink, paths=["bin"])
    assert got.listing == expect(
        L("bin", "usr/bin"),
        D("usr"),
        D("usr/bin"),
        F("usr/bin/bash", b"bash", mode=0o755),
        F("usr/bin/dash", b"dash", mode=0o755),
        F("usr/bin/ls", b"ls", mode=0o755),
        L("usr/bin/sh", "dash"),
    )


def test_absolute_and_escaping_targets_stay_inside_the_image(tmp_path: Path, sink: str) -> None:
    layer = BASE + [
        Dir("srv/"),
        Symlink("srv/up", "../../../../../etc"),  # .. stops at the image root
        Symlink("srv/abs", "/etc/alt"),  # absolute: from the image root, then another link
    ]
    got = run(image(layer), tmp_path, sink, paths=["/srv/up/c.txt", "/srv/abs"])
    assert got.listing == expect(
        D("etc", mode=0o750, owner="5:6"),
        L("etc/alt", "/opt/target"),
        F("etc/c.txt", b"c"),
        D("opt"),
        F("opt/target", b"t"),
        D("srv"),
        L("srv/abs", "/etc/alt"),
        L("srv/up", "../../../../../etc"),
    )


def test_dotdot_in_pattern_and_root(tmp_path: Path, sink: str) -> None:
    got = run(image(BASE), tmp_path, sink, paths=["/bin/../../etc/sub/"])
    # bin -> usr/bin, so /bin/.. is /usr (as the kernel resolves it), and /usr/.. is /
    assert got.listing == expect(
        L("bin", "usr/bin"),
        D("etc", mode=0o750, owner="5:6"),
        D("etc/sub"),
        F("etc/sub/x.conf", b"x"),
        D("usr"),
        D("usr/bin"),
    )
    whole = run(image(BASE), tmp_path / "w", sink, paths=["/"])
    plain = run(image(BASE), tmp_path / "p", sink)
    assert whole.listing == plain.listing


def test_dangling_symlink_and_loop_are_kept_as_they_are(tmp_path: Path, sink: str) -> None:
    layer = [Symlink("dangling", "/nowhere/x"), Symlink("a", "b"), Symlink("b", "a"), File("f", b"f")]
    got = run(image(layer), tmp_path, sink, paths=["/dangling", "/a"])
    assert got.listing == expect(L("a", "b"), L("b", "a"), L("dangling", "/nowhere/x"))
    assert got.warnings("symlink-loop")


def test_hard_links_stay_linked_when_both_are_kept(tmp_path: Path, sink: str) -> None:
    layer = [Dir("d/"), File("d/one", b"same"), Hardlink("d/two", "d/one"), Hardlink("three", "d/one"), File("d/other", b"o")]
    got = run(image(layer), tmp_path, sink, paths=["/d/t*", "/d/one"])
    assert got.listing == expect(D("d"), F("d/one", b"same", link="A"), F("d/two", b"same", link="A"))
    got = run(image(layer), tmp_path / "2", sink, paths=["/three"])
    assert got.listing == expect(F("three", b"same"))


def test_selection_sees_the_merged_view(tmp_path: Path, sink: str) -> None:
    spec = image(BASE, [Whiteout("etc/b.conf"), File("etc/d.conf", b"d")])
    got = run(spec, tmp_path, sink, paths=["/etc/?.conf"])
    assert got.listing == expect(
        D("etc", mode=0o750, owner="5:6"), F("etc/a.conf", b"a"), F("etc/d.conf", b"d"),
    )


@pytest.mark.parametrize("pattern", ["/etc/b.conf/x", "/nothere", "/etc/*.yaml", "/bin/zsh", "/etc/alt/x"])
def test_pattern_matching_nothing_is_an_error(tmp_path: Path, pattern: str) -> None:
    src = write_image(image(BASE), tmp_path)
    for flatten, out in ((False, tmp_path / "out"), (True, tmp_path / "out.tar")):
        with pytest.raises(NotFoundError) as info:
            convert(str(src), out, flatten=flatten, paths=["/etc/a.conf", pattern])
        assert pattern in str(info.value)
        assert info.value.exit_code == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == []


def test_with_deps_needs_paths(tmp_path: Path) -> None:
    src = write_image(image(BASE), tmp_path)
    with pytest.raises(UsageError):
        convert(str(src), tmp_path / "out", with_deps=True)


def test_cli_path_option(tmp_path: Path) -> None:
    src = write_image(image(BASE), tmp_path)
    from typer.testing import CliRunner

    from converter.cli import app

    res = CliRunner().invoke(app, ["convert", str(src), "--flatten", str(tmp_path / "o.tar"), "--path", "/bin/sh", "--path", "/etc/a.conf"])
    assert res.exit_code == 0, res.output
    names = sorted(line.split("\t")[0] for line in list_tar(tmp_path / "o.tar").splitlines())
    assert names == ["bin", "etc", "etc/a.conf", "usr", "usr/bin", "usr/bin/dash", "usr/bin/sh"]
    res = CliRunner().invoke(app, ["convert", str(src), "--flatten", str(tmp_path / "p.tar"), "--path", "/no/such"])
    assert res.exit_code == 4
    assert "/no/such" in res.output


# =====================================================================================
# --with-deps on hand-built ELF files
# =====================================================================================

LD = make_elf(soname=b"ld-linux-x86-64.so.2")
INTERP = b"/lib64/ld-linux-x86-64.so.2"
LIBC = make_elf(soname=b"libc.so.6", needed=(b"ld-linux-x86-64.so.2",))
TRIPLET = "usr/lib/x86_64-linux-gnu"

#: a Debian-like, /usr-merged base with the loader, libc and an ld.so.conf
GLIBC_BASE = [
    Dir("etc/"),
    File("etc/ld.so.conf", b"# comment\ninclude ld.so.conf.d/*.conf\n/opt/conf1  # trailing\n"),
    Dir("etc/ld.so.conf.d/"),
    File("etc/ld.so.conf.d/a.conf", b"/opt/confa\n"),
    File("etc/ld.so.conf.d/b.conf", b"/opt/confb:/opt/confc\n"),
    File("etc/ld.so.conf.d/notes.txt", b"/opt/never\n"),
    File("etc/ld.so.cache", b"cache"),
    File("etc/hosts", b"localhost"),
    Symlink("lib", "usr/lib"),
    Symlink("lib64", "usr/lib64"),
    Symlink("bin", "usr/bin"),
    Dir("usr/"),
    Dir("usr/bin/"),
    Dir("usr/lib/"),
    Dir("usr/lib64/"),
    Symlink("usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
    Dir(TRIPLET + "/"),
    File(TRIPLET + "/ld-linux-x86-64.so.2", LD, mode=0o755),
    File(TRIPLET + "/libc-2.36.so", LIBC, mode=0o755),
    Symlink(TRIPLET + "/libc.so.6", "libc-2.36.so"),
    File(TRIPLET + "/libunused.so.1", make_elf(soname=b"libunused.so.1")),
]
GLIBC_KEPT = [
    "etc/",
    "etc/ld.so.cache",
    "etc/ld.so.conf",
    "etc/ld.so.conf.d/",
    "etc/ld.so.conf.d/a.conf",
    "etc/ld.so.conf.d/b.conf",
    "lib -> usr/lib",
    "lib64 -> usr/lib64",
    "usr/",
    "usr/bin/",
    "usr/lib/",
    f"{TRIPLET}/",
    f"{TRIPLET}/ld-linux-x86-64.so.2",
    f"{TRIPLET}/libc-2.36.so",
    f"{TRIPLET}/libc.so.6 -> libc-2.36.so",
    "usr/lib64/",
    "usr/lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
]


def tree(out: Path) -> list[str]:
    """``path`` / ``path/`` / ``path -> target`` for every entry of a converted directory."""
    lines = []
    for line in list_directory(out, hash_files=False).splitlines():
        cols = line.split("\t")
        path, kind, content = cols[0], cols[1], cols[5]
        lines.append(path + "/" if kind == "d" else f"{path} -> {content[2:]}" if kind == "l" else path)
    return sorted(lines)


def deps(entries: list, tmp_path: Path, *paths: str, name: str = "out") -> tuple[list[str], Events]:
    src = tmp_path / f"{name}.tar"
    write_docker_archive(src, ImageSpec(layers=[Layer(entries)]))
    events = Events()
    out = tmp_path / name
    convert(str(src), out, paths=list(paths), with_deps=True, events=events)
    return tree(out), events


def missing(events: Events) -> list[str]:
    return sorted(w.message for w in events.warnings if w.kind == "missing-library")


def _x(*items: str) -> list[str]:
    return sorted(set(GLIBC_KEPT) | set(items))


def test_runpath_origin_symlink_chain_and_ld_so_conf(tmp_path: Path) -> None:
    """RUNPATH $ORIGIN/../lib/prog1 (RPATH then ignored); a library found through an
    ``include``d ld.so.conf.d file after a wrong-class candidate; a missing one warned."""
    layer = GLIBC_BASE + [
        File("usr/bin/prog1", make_elf(etype=2, interp=INTERP, needed=(b"libA.so.1", b"libc.so.6"),
                                       runpath=b"$ORIGIN/../lib/prog1", rpath=b"/opt/ignored"), mode=0o755),
        File("usr/bin/other", make_elf(etype=2, interp=INTERP, needed=(b"libunused.so.1",)), mode=0o755),
        Dir("usr/lib/prog1/"),
        File("usr/lib/prog1/libA.so.1.2", make_elf(soname=b"libA.so.1", needed=(b"libB.so.1", b"libc.so.6"))),
        Symlink("usr/lib/prog1/libA.so.1", "libA.so.1.2"),
        Dir("opt/"),
        Dir("opt/ignored/"),
        File("opt/ignored/libA.so.1", make_elf(soname=b"libA.so.1")),
        File("opt/ignored/libB.so.1", make_elf(soname=b"libB.so.1")),
        Dir("opt/confa/"),
        File("opt/confa/libB.so.1", make_elf(bits=32, machine=EM_386, soname=b"libB.so.1")),  # wrong class: skipped
        Dir("opt/confb/"),
        File("opt/confb/libB.so.1", make_elf(soname=b"libB.so.1", needed=(b"libNotThere.so.3",))),
        Dir("opt/never/"),
        File("opt/never/libNotThere.so.3", make_elf(soname=b"libNotThere.so.3")),  # only in notes.txt
    ]
    got, events = deps(layer, tmp_path, "/bin/prog1")
    assert got == _x(
        "bin -> usr/bin",
        "opt/",
        "opt/confb/",
        "opt/confb/libB.so.1",
        "usr/bin/prog1",
        "usr/lib/prog1/",
        "usr/lib/prog1/libA.so.1 -> libA.so.1.2",
        "usr/lib/prog1/libA.so.1.2",
    )
    assert missing(events) == ["/opt/confb/libB.so.1: library libNotThere.so.3 not found in the image"]


def test_rpath_is_inherited_runpath_is_not(tmp_path: Path) -> None:
    """An executable's DT_RPATH (with $LIB and $PLATFORM) serves its dependencies'
    lookups too; a library's DT_RUNPATH serves only its own, and turns the inherited
    RPATH off for them."""
    rp = "opt/rp/lib/x86_64-linux-gnu"
    layer = GLIBC_BASE + [
        File("usr/bin/prog2", make_elf(etype=2, interp=INTERP, needed=(b"libD.so",),
                                       rpath=b"/opt/rp/$LIB:/opt/plat/${PLATFORM}"), mode=0o755),
        Dir("opt/"), Dir("opt/rp/"), Dir("opt/rp/lib/"), Dir(rp + "/"),
        File(rp + "/libD.so", make_elf(needed=(b"libE.so", b"libF.so", b"libc.so.6"))),
        File(rp + "/libG.so", make_elf()),  # would be found through the inherited RPATH
        Dir("opt/plat/"), Dir("opt/plat/x86_64/"),
        File("opt/plat/x86_64/libE.so", make_elf(needed=(b"libG.so", b"libH.so"), runpath=b"/opt/erun")),
        File("usr/lib/libF.so", make_elf()),
        Dir("opt/erun/"),
        File("opt/erun/libG.so", make_elf()),
        File(rp + "/libH.so", make_elf()),  # only through the RPATH libE may not use
    ]
    got, events = deps(layer, tmp_path, "/usr/bin/prog2")
    assert got == _x(
        "opt/", "opt/erun/", "opt/erun/libG.so",
        "opt/plat/", "opt/plat/x86_64/", "opt/plat/x86_64/libE.so",
        "opt/rp/", "opt/rp/lib/", f"{rp}/", f"{rp}/libD.so",
        "usr/bin/prog2", "usr/lib/libF.so",
    )
    assert missing(events) == ["/opt/plat/x86_64/libE.so: library libH.so not found in the image"]


def test_nodeflib_slash_names_hwcaps_and_loaded_sonames(tmp_path: Path) -> None:
    layer = GLIBC_BASE + [
        File("usr/bin/nodef", make_elf(etype=2, interp=INTERP, needed=(b"libc.so.6",), flags_1=DF_1_NODEFLIB), mode=0o755),
        File("usr/bin/slash", make_elf(etype=2, interp=INTERP, needed=(b"/opt/abs/libI.so", b"libI-alias.so", b"libc.so.6")), mode=0o755),
        Dir("opt/"), Dir("opt/abs/"),
        File("opt/abs/libI.so", make_elf(soname=b"libI-alias.so")),  # its soname satisfies the second NEEDED
        Dir(TRIPLET + "/glibc-hwcaps/"), Dir(TRIPLET + "/glibc-hwcaps/x86-64-v3/"),
        File(TRIPLET + "/glibc-hwcaps/x86-64-v3/libc.so.6", LIBC),
    ]
    hw = [f"{TRIPLET}/glibc-hwcaps/", f"{TRIPLET}/glibc-hwcaps/x86-64-v3/", f"{TRIPLET}/glibc-hwcaps/x86-64-v3/libc.so.6"]
    got, events = deps(layer, tmp_path, "/usr/bin/nodef", name="nodef")
    # DF_1_NODEFLIB: neither ld.so.conf nor the default directories are searched
    assert got == sorted(set(GLIBC_KEPT) - {f"{TRIPLET}/libc-2.36.so", f"{TRIPLET}/libc.so.6 -> libc-2.36.so"} | {"usr/bin/nodef"})
    assert missing(events) == ["/usr/bin/nodef: library libc.so.6 not found in the image"]
    got, events = deps(layer, tmp_path, "/usr/bin/slash", name="slash")
    assert got == _x("opt/", "opt/abs/", "opt/abs/libI.so", "usr/bin/slash", *hw)
    assert missing(events) == []


def test_missing_interpreter_and_non_elf_files(tmp_path: Path) -> None:
    layer = [
        Dir("app/"),
        File("app/prog", make_elf(etype=2, interp=b"/lib/ld-gone.so.2", needed=(b"libz.so.1",)), mode=0o755),
        File("app/script", b"#!/bin/sh\necho hi\n" * 10, mode=0o755),
        File("app/broken", b"\x7fELF" + b"\x09" * 100, mode=0o755),
        File("app/static", make_elf(etype=2, dynamic=False), mode=0o755),
    ]
    got, events = deps(layer, tmp_path, "/app")
    assert got == ["app/", "app/broken", "app/prog", "app/script", "app/static"]
    assert missing(events) == [
        "/app/prog: library libz.so.1 not found in the image",
        "/app/prog: program interpreter /lib/ld-gone.so.2 not found in the image",
    ]
    assert [w.kind for w in events.warnings if w.path == "/app/broken"] == ["bad-elf"]


def test_musl_path_file(tmp_path: Path) -> None:
    musl_ld = make_elf(soname=b"libc.musl-x86_64.so.1")
    layer = [
        Dir("lib/"),
        File("lib/ld-musl-x86_64.so.1", musl_ld, mode=0o755),
        Symlink("lib/libc.musl-x86_64.so.1", "ld-musl-x86_64.so.1"),
        File("lib/libM.so", make_elf()),  # a default directory, replaced by the path file
        Dir("etc/"),
        File("etc/ld-musl-x86_64.path", b"/opt/mpath\n/lib\n"),
        Dir("opt/"), Dir("opt/mpath/"),
        File("opt/mpath/libM.so", make_elf(needed=(b"libc.musl-x86_64.so.1",))),
        Dir("usr/"), Dir("usr/bin/"),
        File("usr/bin/mprog", make_elf(etype=2, interp=b"/lib/ld-musl-x86_64.so.1", needed=(b"libM.so", b"libc.musl-x86_64.so.1")), mode=0o755),
    ]
    got, events = deps(layer, tmp_path, "/usr/bin/mprog")
    assert got == [
        "etc/", "etc/ld-musl-x86_64.path", "lib/", "lib/ld-musl-x86_64.so.1",
        "opt/", "opt/mpath/", "opt/mpath/libM.so", "usr/", "usr/bin/", "usr/bin/mprog",
    ]
    assert missing(events) == []


def test_with_deps_also_for_the_flattened_tar(tmp_path: Path) -> None:
    layer = GLIBC_BASE + [File("usr/bin/p", make_elf(etype=2, interp=INTERP, needed=(b"libc.so.6",)), mode=0o755)]
    src = tmp_path / "i.tar"
    write_docker_archive(src, ImageSpec(layers=[Layer(layer)]))
    convert(str(src), tmp_path / "o.tar", flatten=True, paths=["/bin/p"], with_deps=True)
    names = sorted(line.split("\t")[0] for line in list_tar(tmp_path / "o.tar").splitlines())
    assert names == sorted(x.split(" -> ")[0].rstrip("/") for x in _x("bin -> usr/bin", "usr/bin/p"))


# =====================================================================================
# --with-deps on real binaries of this machine, run with chroot
# =====================================================================================

GCC = shutil.which("gcc")
LDCONFIG = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
PATCHELF = shutil.which("patchelf")
CHROOT = shutil.which("chroot")
UNSHARE = shutil.which("unshare")


def _need(tool: Optional[str], name: str, *, root: bool = True) -> None:
    if root and not IS_ROOT:
        if IN_CI:
            pytest.fail("the chroot tests must run as root in CI")
        pytest.skip("chroot needs root")
    if tool is None:
        if IN_CI:
            pytest.fail(f"{name} is needed in CI (apt-get install {name})")
        pytest.skip(f"{name} not installed")


def _ldd(binary: str) -> dict[str, str]:
    """name -> host path of each library the host loader picks for ``binary``."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = {}
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs[parts[0]] = parts[2]
    return libs


class HostImage:
    """Entries copying host files into an image, with the symlinks of their host paths."""

    def __init__(self) -> None:
        self.entries: list = []
        self.done: set[str] = set()

    def dirs(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.done:
                self.done.add(p)
                self.entries.append(Dir(p + "/"))

    def file(self, image_path: str, data: bytes, mode: int = 0o755) -> None:
        self.dirs(os.path.dirname(image_path))
        self.done.add(image_path.strip("/"))
        self.entries.append(File(image_path.strip("/"), data, mode=mode))

    def link(self, image_path: str, target: str) -> None:
        self.dirs(os.path.dirname(image_path))
        self.done.add(image_path.strip("/"))
        self.entries.append(Symlink(image_path.strip("/"), target))

    def mirror(self, host_path: str) -> None:
        """Put ``host_path`` at the same place, recreating every symlink on the way
        (``/lib -> usr/lib``, ``/lib64/ld-linux-x86-64.so.2 -> /lib/...``)."""
        todo = [c for c in host_path.split("/") if c]
        cur = ""
        hops = 0
        while todo:
            name = todo.pop(0)
            if name == "..":
                cur = os.path.dirname(cur)
                continue
            path = f"{cur}/{name}"
            st = os.lstat(path)
            rel = path.strip("/")
            if os.path.islink(path):
                hops += 1
                assert hops < 40
                target = os.readlink(path)
                if rel not in self.done:
                    self.link(path, target)
                if target.startswith("/"):
                    cur = ""
                todo = [c for c in target.split("/") if c and c != "."] + todo
                continue
            if os.path.isdir(path):
                if rel not in self.done:
                    self.done.add(rel)
                    self.entries.append(Dir(rel + "/"))
            elif rel not in self.done:
                self.file(path, Path(path).read_bytes(), mode=st.st_mode & 0o7777)
            cur = path


def _compile(tmp: Path, name: str, source: str, *args: str) -> Path:
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / name
    subprocess.run([GCC, "-O1", "-o", str(out), str(src), "-Wl,-rpath-link,.", *args], check=True, cwd=tmp)  # type: ignore[list-item]
    return out


@pytest.fixture(scope="module")
def host_image(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An image of host binaries with libraries in non-default places, and the paths."""
    _need(GCC, "gcc")  # as root: ldconfig -r chroots, and every use runs chroot
    _need(LDCONFIG, "ldconfig (libc-bin)")
    tmp = tmp_path_factory.mktemp("hostimg")
    ls = os.path.realpath("/bin/ls")
    env = os.path.realpath("/usr/bin/env")
    ls_info = parse_elf_file(ls)
    assert ls_info is not None and ls_info.interp
    interp = ls_info.interp.decode()
    ls_libs = _ldd(ls)
    libc = ls_libs["libc.so.6"]
    libdir = os.path.dirname(libc)  # e.g. /lib/x86_64-linux-gnu
    triplet_dir = os.path.realpath(libdir)
    img = HostImage()
    for top in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{top}"):
            img.link(top, os.readlink(f"/{top}"))
    img.mirror(interp)
    # libc as a symlink chain: libc.so.6 -> libc-host.so
    img.file(f"{triplet_dir}/libc-host.so", Path(libc).read_bytes())
    img.link(f"{triplet_dir}/libc.so.6", "libc-host.so")
    img.mirror(env)
    img.mirror(ls)
    # ls's other libraries: libselinux (if any) in a directory only ld.so.conf.d names,
    # the rest mirrored (pcre2 keeps its host chain libpcre2-8.so.0 -> ...0.11.2)
    conf_only = {}
    for name, path in sorted(ls_libs.items()):
        if name == "libc.so.6":
            continue
        if name.startswith("libselinux"):
            img.file(f"/opt/selinux/lib/{name}", Path(os.path.realpath(path)).read_bytes(), mode=0o644)
            conf_only[name] = "/opt/selinux/lib"
        else:
            img.mirror(path)
    img.file("/etc/ld.so.conf", b"include /etc/ld.so.conf.d/*.conf\n", mode=0o644)
    img.file("/etc/ld.so.conf.d/selinux.conf", b"# for ls\n/opt/selinux/lib\n", mode=0o644)
    img.file("/etc/ld.so.conf.d/word.conf", b"/opt/word/lib\n", mode=0o644)
    img.file("/etc/hosts", b"127.0.0.1 localhost\n", mode=0o644)

    # programs compiled here: RUNPATH $ORIGIN/../lib, a library found via ld.so.conf.d,
    # DT_RPATH inherited by a dependency, and the same with RUNPATH (which fails)
    (tmp / "word.c").write_text('const char *word(void) { return "world"; }\n')
    subprocess.run([GCC, "-shared", "-fPIC", "-Wl,-soname,libword.so.2", "-o", "libword.so.2", "word.c"], check=True, cwd=tmp)
    os.symlink("libword.so.2", tmp / "libword.so")
    (tmp / "greet.c").write_text('#include <stdio.h>\nconst char *word(void);\nvoid greet(void) { printf("hello, %s\\n", word()); }\n')
    subprocess.run([GCC, "-shared", "-fPIC", "-Wl,-soname,libgreet.so.1", "-o", "libgreet.so.1.0.0", "greet.c", "-L.", "-lword"], check=True, cwd=tmp)
    os.symlink("libgreet.so.1.0.0", tmp / "libgreet.so")
    hello = _compile(tmp, "hello", "void greet(void);\nint main(void) { greet(); return 0; }\n",
                     "-L.", "-lgreet", "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib")
    (tmp / "inner.c").write_text('const char *inner(void) { return "inner"; }\n')
    subprocess.run([GCC, "-shared", "-fPIC", "-Wl,-soname,libinner.so.1", "-o", "libinner.so.1", "inner.c"], check=True, cwd=tmp)
    os.symlink("libinner.so.1", tmp / "libinner.so")
    (tmp / "outer.c").write_text('#include <stdio.h>\nconst char *inner(void);\nvoid outer(void) { printf("outer+%s\\n", inner()); }\n')
    subprocess.run([GCC, "-shared", "-fPIC", "-Wl,-soname,libouter.so.1", "-o", "libouter.so.1", "outer.c", "-L.", "-linner"], check=True, cwd=tmp)
    os.symlink("libouter.so.1", tmp / "libouter.so")
    main_outer = "void outer(void);\nint main(void) { outer(); return 0; }\n"
    rprog = _compile(tmp, "rprog", main_outer, "-L.", "-louter", "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../lib")
    nprog = _compile(tmp, "nprog", main_outer, "-L.", "-louter", "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib")

    img.file("/opt/word/lib/libword.so.2", (tmp / "libword.so.2").read_bytes())
    img.file("/opt/hello/lib/libgreet.so.1.0.0", (tmp / "libgreet.so.1.0.0").read_bytes())
    img.link("/opt/hello/lib/libgreet.so.1", "libgreet.so.1.0.0")
    img.file("/opt/hello/bin/hello", hello.read_bytes())
    for d, prog in (("/opt/rp", rprog), ("/opt/rn", nprog)):
        img.file(f"{d}/bin/prog", prog.read_bytes())
        img.file(f"{d}/lib/libouter.so.1", (tmp / "libouter.so.1").read_bytes())
        img.file(f"{d}/lib/libinner.so.1", (tmp / "libinner.so.1").read_bytes())
    patched = False
    if PATCHELF:
        # a host binary with a RUNPATH: env finds libc in $ORIGIN/../lib only
        img.file("/opt/app/bin/env", env_bytes(tmp, env))
        img.file("/opt/app/lib/libc.so.6", Path(libc).read_bytes())
        patched = True

    # the ld.so.cache a real image has (its RUN ldconfig step): built over the full tree
    layer1 = Layer(img.entries)
    full_src = tmp / "full.tar"
    write_docker_archive(full_src, ImageSpec(layers=[layer1]))
    full = tmp / "full"
    convert(str(full_src), full)
    subprocess.run([LDCONFIG, "-X", "-r", str(full)], check=True)  # type: ignore[list-item]
    cache = (full / "etc" / "ld.so.cache").read_bytes()
    layer2 = Layer([File("etc/ld.so.cache", cache)])
    src = tmp / "image.tar"
    write_docker_archive(src, ImageSpec(layers=[layer1, layer2], cmd=["/bin/ls"]))
    return {
        "src": src, "tmp": tmp, "interp": interp, "triplet_dir": triplet_dir, "ls": ls, "env": env,
        "ls_libs": ls_libs, "conf_only": conf_only, "patched": patched,
    }


def env_bytes(tmp: Path, env: str) -> bytes:
    copy = tmp / "env-patched"
    shutil.copyfile(env, copy)
    subprocess.run([PATCHELF, "--set-rpath", "$ORIGIN/../lib", str(copy)], check=True)  # type: ignore[list-item]
    info = parse_elf_file(copy)
    assert info is not None and info.runpath == b"$ORIGIN/../lib"
    return copy.read_bytes()


def _chroot(root: Path, *argv: str, proc: bool = False) -> subprocess.CompletedProcess:
    """Run ``argv`` chrooted in ``root``.  ``proc``: with a /proc mounted there (in a
    private mount and pid namespace), as any container has: glibc's loader expands the
    main program's ``$ORIGIN`` from /proc/self/exe, so without /proc a RUNPATH of
    ``$ORIGIN/...`` is ignored by ld.so itself (not a property of the tree)."""
    cmd = [CHROOT, str(root), *argv]
    if proc:
        _need(UNSHARE, "util-linux (unshare)")
        (root / "proc").mkdir(exist_ok=True)
        cmd = [UNSHARE, "--fork", "--pid", f"--mount-proc={root / 'proc'}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})  # type: ignore[list-item]


def _convert(host_image: dict, name: str, *paths: str) -> tuple[Path, Events]:
    out = host_image["tmp"] / name
    events = Events()
    convert(str(host_image["src"]), out, paths=list(paths), with_deps=True, events=events)
    return out, events


def test_real_ls_and_env_run_in_chroot(host_image: dict) -> None:
    _need(CHROOT, "chroot")
    out, events = _convert(host_image, "out-ls", "/bin/ls", "/usr/bin/env")
    assert missing(events) == []
    got = tree(out)
    td = host_image["triplet_dir"].strip("/")
    # the loader (through its host symlink chain), libc's chain, libselinux from the
    # ld.so.conf.d directory, the ld.so.cache; nothing else
    assert f"{td}/libc.so.6 -> libc-host.so" in got and f"{td}/libc-host.so" in got
    for name, d in host_image["conf_only"].items():
        assert f"{d.strip('/')}/{name}" in got
    assert "etc/ld.so.cache" in got and "etc/ld.so.conf.d/selinux.conf" in got
    assert "etc/hosts" not in got and not any(x.startswith("opt/hello") or x.startswith("opt/word") for x in got)
    files = {x for x in got if not x.endswith("/") and " -> " not in x}
    expected_files = {
        td + "/libc-host.so", os.path.realpath(host_image["interp"]).strip("/"),
        host_image["ls"].strip("/"), host_image["env"].strip("/"),
        "etc/ld.so.cache", "etc/ld.so.conf", "etc/ld.so.conf.d/selinux.conf", "etc/ld.so.conf.d/word.conf",
    }
    for name, path in host_image["ls_libs"].items():
        if name == "libc.so.6":
            continue
        if name in host_image["conf_only"]:
            expected_files.add(f"{host_image['conf_only'][name].strip('/')}/{name}")
        else:
            expected_files.add(os.path.realpath(path).strip("/"))
    assert files == expected_files

    res = _chroot(out, "/bin/ls", "/")
    assert res.returncode == 0, res.stderr
    assert set(res.stdout.split()) == {x.split("/")[0].split(" ")[0] for x in got}
    res = _chroot(out, "/usr/bin/env", "A=1", "/usr/bin/env")
    assert res.returncode == 0, res.stderr
    assert "A=1" in res.stdout.splitlines()


def test_runpath_origin_and_ld_so_conf_d_run_in_chroot(host_image: dict) -> None:
    _need(CHROOT, "chroot")
    out, events = _convert(host_image, "out-hello", "/opt/hello/bin/hello")
    assert missing(events) == []
    got = tree(out)
    assert [x for x in got if x.startswith("opt/")] == [
        "opt/", "opt/hello/", "opt/hello/bin/", "opt/hello/bin/hello",
        "opt/hello/lib/", "opt/hello/lib/libgreet.so.1 -> libgreet.so.1.0.0", "opt/hello/lib/libgreet.so.1.0.0",
        "opt/word/", "opt/word/lib/", "opt/word/lib/libword.so.2",
    ]
    res = _chroot(out, "/opt/hello/bin/hello", proc=True)
    assert (res.returncode, res.stdout) == (0, "hello, world\n"), res.stderr


def test_inherited_rpath_runs_and_runpath_fails_like_the_loader(host_image: dict) -> None:
    _need(CHROOT, "chroot")
    out, events = _convert(host_image, "out-rp", "/opt/rp/bin/prog")
    assert missing(events) == []
    assert [x for x in tree(out) if x.startswith("opt/")] == [
        "opt/", "opt/rp/", "opt/rp/bin/", "opt/rp/bin/prog", "opt/rp/lib/", "opt/rp/lib/libinner.so.1", "opt/rp/lib/libouter.so.1",
    ]
    res = _chroot(out, "/opt/rp/bin/prog", proc=True)
    assert (res.returncode, res.stdout) == (0, "outer+inner\n"), res.stderr

    # RUNPATH is not inherited: libouter cannot find libinner, here as in ld.so
    out, events = _convert(host_image, "out-rn", "/opt/rn/bin/prog")
    assert missing(events) == ["/opt/rn/lib/libouter.so.1: library libinner.so.1 not found in the image"]
    assert "opt/rn/lib/libinner.so.1" not in tree(out)
    res = _chroot(out, "/opt/rn/bin/prog", proc=True)
    assert res.returncode != 0 and "libinner.so.1" in res.stderr


def test_patched_host_binary_with_runpath_origin(host_image: dict) -> None:
    _need(CHROOT, "chroot")
    _need(PATCHELF, "patchelf")
    out, events = _convert(host_image, "out-app", "/opt/app/bin/env")
    assert missing(events) == []
    got = tree(out)
    td = host_image["triplet_dir"].strip("/")
    assert "opt/app/lib/libc.so.6" in got
    assert f"{td}/libc-host.so" not in got  # RUNPATH found it first
    res = _chroot(out, "/opt/app/bin/env", "B=2", proc=True)
    assert res.returncode == 0, res.stderr
    assert "B=2" in res.stdout.splitlines()


def test_selection_error_leaves_nothing(host_image: dict) -> None:
    out = host_image["tmp"] / "out-err"
    with pytest.raises(ConverterError):
        convert(str(host_image["src"]), out, paths=["/opt/nothing/*"], with_deps=True)
    assert not out.exists()


def test_read_node_handles_sparse_files(tmp_path: Path) -> None:
    from converter import open_image, plan_image
    from converter.pathselect import Selector, read_node
    from converter.testing.imagegen import Sparse

    src = tmp_path / "i.tar"
    data = make_elf(needed=(b"libq.so",))
    write_docker_archive(src, ImageSpec(layers=[Layer([
        Sparse("s", 100000, [(10, b"abc"), (50000, b"xyz")]),
        Sparse("elf", len(data) + 4096, [(0, data)]),
    ])]))
    with open_image(str(src)) as img:
        plan = plan_image(img)
        try:
            sel = Selector(plan, plan.events)
            node = sel.node_at((b"s",))
            assert node is not None and node.sparse is not None
            assert read_node(node, 8, 10) == b"\0\0abc\0\0\0\0\0"
            assert read_node(node, 49999, 5) == b"\0xyz\0"
            assert read_node(node, 99998, 10) == b"\0\0"
            assert read_node(node, 200000, 10) == b""
            elf = sel.read_file(b"/elf")
            assert elf is not None and elf[: len(data)] == data
        finally:
            plan.close()

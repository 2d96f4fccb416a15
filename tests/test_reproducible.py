"""Reproducible flattened tars (issue 9, point 3).

The same image must give a byte-identical ``--flatten`` tar whichever source format it
came from (docker save legacy / skopeo / Docker 25+ / containerd, OCI layout with gzip or
zstd layers, OCI archive, a multi-platform index, a gzip-compressed save), for ``.tar``,
``.tar.gz``, ``.tar.zst`` and ``.tar.xz``; and the real-tool artefacts in
``fixtures/real/`` that hold the same image must too.  The header rules are checked on the
raw bytes: PAX/ustar magic, sorted names, numeric owners and no uname/gname, hard links
pointing at the smallest path of their group, mtimes clamped to ``SOURCE_DATE_EPOCH``
(environment or API argument) and nothing else touched.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import zstandard

from converter import convert
from converter.errors import UsageError
from converter.listing import list_tar
from converter.testing.imagegen import (
    Device,
    Dir,
    Fifo,
    File,
    Hardlink,
    ImageSpec,
    Layer,
    Opaque,
    Raw,
    Symlink,
    Whiteout,
    write_docker_archive,
    write_oci_archive,
    write_oci_layout,
)

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "fixtures" / "real"

SDE = 1_750_000_000  # SOURCE_DATE_EPOCH used throughout (2025-06-15)
EARLY = 1_600_000_000  # before SDE: kept
LATE = 1_900_000_000  # after SDE: clamped
SUFFIXES = (".tar", ".tar.gz", ".tar.zst", ".tar.xz")


@pytest.fixture(autouse=True)
def _no_ambient_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI systems (and reproducible-build environments) may export SOURCE_DATE_EPOCH."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


# --------------------------------------------------------------------------- the image


def _layers(compression: str) -> list[Layer]:
    """Three layers exercising every header feature a flattened tar can carry."""
    l1 = [
        Dir("etc/", mtime=EARLY),
        File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", mtime=EARLY),
        File("etc/shadow", b"root:*::0:::::\n", mode=0o640, gid=42, mtime=LATE),
        File("etc/motd", b"old\n"),
        Dir("bin/", mode=0o755),
        File("bin/busybox", b"\x7fELF" + bytes(range(256)) * 8, mode=0o4755),
        Symlink("bin/sh", "busybox"),
        Symlink("bin/abs", "/bin/busybox", mtime=LATE),
        # hard-link group: the tar order names z/orig first, the smallest path is a/first
        File("z/orig", b"linked content\n", uid=1000, gid=1000),
        Hardlink("m/middle", "z/orig"),
        Hardlink("a/first", "z/orig"),
        File("big/ids", b"pax uid/gid", uid=100_000_000, gid=200_000_000),
        File("x/" + "long" * 40 + "/file", b"a path longer than 100 bytes"),
        Symlink("x/longlink", "target/" * 20),
        File(b"names/caf\xe9", b"latin-1 name"),
        File("names/\u00fcn\u00ef c\u00f8d\u00e9 \u2603.txt", b"utf-8 name"),
        File("names/a b", b""), File("names/a-b", b""), File("names/a/b", b""), File("names/a0", b""),
        File("xattrs/file", b"x", xattrs={"user.b": b"2", "user.a": b"\x00\xff", "security.capability": bytes(20)}),
        Dir("xattrs/dir/", xattrs={"user.dir": b"yes"}),
        Fifo("dev/fifo", mtime=LATE),
        Device("dev/null", "c", 1, 3, mode=0o666),
        Device("dev/sda", "b", 8, 0, mode=0o660, gid=6),
        Dir("tmp/", mode=0o1777),
        Dir("opt/app/"),
        File("opt/app/old", b"hidden by an opaque marker"),
        Raw(b"frac/early", pax={"mtime": f"{EARLY}.25"}),
        Raw(b"frac/late", pax={"mtime": f"{LATE}.5"}),
    ]
    l2 = [
        Whiteout("etc/motd"),
        Opaque("opt/app"),
        File("opt/app/new", b"new\n", mtime=LATE),
        Hardlink("etc/passwd-", "etc/passwd"),
    ]
    l3 = [
        Whiteout("a/first"),  # the head of the group goes: m/middle becomes the head
        File("late/file", b"written after SOURCE_DATE_EPOCH", mtime=LATE),
        Dir("late/", mtime=LATE),
    ]
    return [Layer(entries, compression=compression) for entries in (l1, l2, l3)]


def spec(compression: str = "none", **kw: Any) -> ImageSpec:
    return ImageSpec(_layers(compression), entrypoint=["/bin/sh"], **kw)


def _build_sources(d: Path) -> dict[str, str]:
    """The same image in every source layout the converter reads (spec strings)."""
    write_docker_archive(d / "legacy.tar", spec(), tags="repro/app:1", style="legacy")
    write_docker_archive(d / "legacy-linked.tar", [(spec(), "repro/app:1"), (spec(), "repro/app:2")], style="legacy",
                         layer_links="symlink")
    write_docker_archive(d / "skopeo.tar", spec(), tags="repro/app:1", style="skopeo")
    write_docker_archive(d / "docker25.tar", spec(), tags="repro/app:1", style="docker25")
    write_docker_archive(d / "containerd.tar", spec("gzip"), tags="repro/app:1", style="containerd")
    write_docker_archive(d / "saved.tar.gz", spec(), tags="repro/app:1", outer_compression="gzip")
    write_oci_layout(d / "oci-gzip", spec("gzip"), ref="1")
    write_oci_layout(d / "oci-zstd", spec("zstd"), ref="1")
    write_oci_layout(d / "oci-uncompressed", spec("none"), ref="1")
    write_oci_archive(d / "oci-archive.tar", spec("gzip"), ref="1")
    write_oci_archive(d / "oci-archive-xz.tar", spec("xz"), ref="1")
    arm = ImageSpec([Layer([File("arm", b"other image")], compression="gzip")], architecture="arm64", variant="v8")
    write_oci_layout(d / "multiarch", [(arm, None), (spec("zstd"), None)], ref="1", index="multiarch", attestations=True)
    return {
        "docker-legacy": f"docker-archive:{d}/legacy.tar",
        "docker-legacy-linked": f"docker-archive:{d}/legacy-linked.tar:repro/app:2",
        "docker-skopeo": f"{d}/skopeo.tar",
        "docker25": f"{d}/docker25.tar",
        "containerd-gzip": f"{d}/containerd.tar",
        "docker-save-gzipped": f"{d}/saved.tar.gz",
        "oci-gzip": f"oci:{d}/oci-gzip:1",
        "oci-zstd": f"{d}/oci-zstd",
        "oci-uncompressed": f"{d}/oci-uncompressed",
        "oci-archive-gzip": f"oci-archive:{d}/oci-archive.tar",
        "oci-archive-xz": f"{d}/oci-archive-xz.tar",
        "oci-index-linux/amd64": f"oci:{d}/multiarch:1",
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _build_sources(tmp_path_factory.mktemp("sources"))


def flatten(source: str, out: Path, **kw: Any) -> bytes:
    platform = "linux/amd64" if "multiarch" in source else None
    convert(source, out, flatten=True, platform=platform, **kw)
    return out.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- raw tar walk


@dataclasses.dataclass
class Header:
    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    linkname: bytes
    magic: bytes
    uname: bytes
    gname: bytes
    pax: dict[bytes, bytes]
    pax_raw: bytes


def _num(field: bytes) -> int:
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").strip()
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key] = value
        pos += length
    return out


def walk(tar: bytes) -> Iterator[Header]:
    """Every entry of an uncompressed tar, PAX records folded in; checks the end blocks."""
    pos, pax, pax_raw = 0, {}, b""
    while True:
        block = tar[pos : pos + 512]
        assert len(block) == 512, "tar ends without end-of-archive blocks"
        if block == bytes(512):
            assert tar[pos:] == bytes(1024), "the archive must end with exactly two zero blocks"
            return
        assert sum(block[:148]) + 8 * 32 + sum(block[156:]) == _num(block[148:156]), "bad header checksum"
        size = _num(block[124:136])
        data = tar[pos + 512 : pos + 512 + size]
        pos += 512 + -(-size // 512) * 512
        typeflag = block[156:157]
        if typeflag == b"x":
            pax, pax_raw = _pax(data), block + data
            continue
        assert typeflag not in (b"L", b"K", b"g"), "no GNU long names or global headers"
        name = block[0:100].rstrip(b"\0")
        prefix = block[345:500].rstrip(b"\0")
        if prefix:
            name = prefix + b"/" + name
        yield Header(
            name=pax.get(b"path", name), type=typeflag, mode=_num(block[100:108]),
            uid=int(pax[b"uid"]) if b"uid" in pax else _num(block[108:116]),
            gid=int(pax[b"gid"]) if b"gid" in pax else _num(block[116:124]),
            mtime=_num(block[136:148]), size=size, linkname=pax.get(b"linkpath", block[157:257].rstrip(b"\0")),
            magic=block[257:265], uname=block[265:297], gname=block[297:329], pax=pax, pax_raw=pax_raw,
        )
        pax, pax_raw = {}, b""


def _decompress(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    return data


# --------------------------------------------------------------------------- byte identity


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_byte_identical_across_source_formats(sources: dict[str, str], tmp_path: Path, suffix: str) -> None:
    digests = {name: sha(flatten(src, tmp_path / f"{i}{suffix}", source_date_epoch=SDE))
               for i, (name, src) in enumerate(sources.items())}
    assert len(digests) >= 4
    reference = digests["docker-legacy"]
    different = {name: d[:16] for name, d in digests.items() if d != reference}
    assert not different, f"differs from docker-legacy ({reference[:16]}): {different}"


@pytest.mark.parametrize("suffix", SUFFIXES[1:])
def test_compressed_output_is_the_plain_tar_compressed_deterministically(sources: dict[str, str], tmp_path: Path,
                                                                         suffix: str) -> None:
    plain = flatten(sources["oci-zstd"], tmp_path / "plain.tar", source_date_epoch=SDE)
    out = tmp_path / f"root{suffix}"
    flatten(sources["oci-zstd"], out, source_date_epoch=SDE)
    assert _decompress(out) == plain
    data = out.read_bytes()
    if suffix == ".tar.gz":
        flags, mtime = data[3], int.from_bytes(data[4:8], "little")
        assert flags & 0x08 == 0 and mtime == 0, "gzip header must carry neither a file name nor a time"
    elif suffix == ".tar.zst":
        assert zstandard.frame_header_size(data) > 0 and zstandard.get_frame_parameters(data).has_checksum


def test_same_image_twice_gives_identical_bytes(sources: dict[str, str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = sources["oci-gzip"]
    first = flatten(src, tmp_path / "one.tar")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # another directory, another output name, over an existing file
    (tmp_path / "elsewhere" / "two.tar").write_bytes(b"stale")
    second = flatten(src, Path("two.tar"), force=True)
    assert first == second
    for suffix in SUFFIXES[1:]:
        assert flatten(src, tmp_path / f"a{suffix}") == flatten(src, tmp_path / f"b{suffix}")


def test_same_tree_from_differently_encoded_layers_gives_identical_bytes(tmp_path: Path) -> None:
    """Entry order, ``./`` prefixes, trailing slashes, xattr record order, GNU vs PAX
    headers and the split into layers are encoding details: the tree, and so the tar, is
    the same."""
    base = [
        Dir("etc/", mtime=EARLY), File("etc/a", b"a", mtime=LATE), Dir("usr/"), Dir("usr/bin/", mode=0o700),
        File("usr/bin/x", b"x" * 700, mode=0o4755, uid=3000), Hardlink("usr/bin/y", "usr/bin/x"),
        Symlink("etc/l", "a"), Fifo("etc/fifo"), Device("dev/null", "c", 1, 3), File("l" * 150 + "/f", b"long"),
        File(b"caf\xe9", b"latin-1"),
    ]
    variants = {
        "pax": [Layer(base)],
        "gnu": [Layer(base, format="gnu")],
        "reordered": [Layer(list(reversed(base[:4])) + base[4:])],
        "dot-slash": [Layer([dataclasses.replace(e, path="./" + e.path) if isinstance(e.path, str) else e for e in base])],
        "no-trailing-slash": [Layer([dataclasses.replace(e, path=e.path.rstrip("/")) if isinstance(e, Dir) else e
                                     for e in base])],
        "split": [Layer(base[:5]), Layer(base[5:])],
        "overwritten": [Layer([File("etc/a", b"old", mode=0o600)] + base[2:]), Layer(base[:2])],
    }
    digests = {}
    for name, layers in variants.items():
        write_docker_archive(tmp_path / f"{name}.tar", ImageSpec(layers))
        digests[name] = sha(flatten(str(tmp_path / f"{name}.tar"), tmp_path / f"{name}.out.tar", source_date_epoch=SDE))
    assert len(set(digests.values())) == 1, digests

    with_xattrs = {}
    for name, xattrs in (("ab", {"user.a": b"1", "user.b": b"2"}), ("ba", {"user.b": b"2", "user.a": b"1"})):
        write_docker_archive(tmp_path / f"x-{name}.tar", ImageSpec([Layer([File("f", b"", xattrs=xattrs)])]))
        with_xattrs[name] = flatten(str(tmp_path / f"x-{name}.tar"), tmp_path / f"x-{name}.out.tar")
    assert with_xattrs["ab"] == with_xattrs["ba"]


# --------------------------------------------------------------------------- header rules


@pytest.fixture(scope="module")
def reference_tar(sources: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return flatten(sources["docker-legacy"], tmp_path_factory.mktemp("ref") / "root.tar", source_date_epoch=SDE)


def test_entries_sorted_by_raw_path_bytes_root_first(reference_tar: bytes) -> None:
    names = [h.name for h in walk(reference_tar)]
    assert names[0] == b"./"
    paths = [n.rstrip(b"/") for n in names[1:]]
    assert paths == sorted(paths), "entries must be sorted by raw path bytes"
    assert len(set(paths)) == len(paths)
    assert [p for p in paths if p.startswith(b"names/a")] == [
        b"names/a", b"names/a b", b"names/a-b", b"names/a/b", b"names/a0"]
    assert not [p for p in paths if b"/.wh." in b"/" + p or p.startswith(b".wh.")]
    for i, p in enumerate(paths):  # parents come before children
        parent = p.rpartition(b"/")[0]
        assert not parent or parent in paths[:i], p


def test_fixed_header_fields(reference_tar: bytes) -> None:
    headers = list(walk(reference_tar))
    assert {h.magic for h in headers} == {b"ustar\x0000"}, "POSIX ustar/PAX headers only"
    assert all(h.uname == bytes(32) and h.gname == bytes(32) for h in headers), "no user or group names"
    assert not any(b"uname" in h.pax or b"gname" in h.pax or b"atime" in h.pax or b"ctime" in h.pax for h in headers)
    by_name = {h.name.rstrip(b"/"): h for h in headers}
    assert (by_name[b"big/ids"].uid, by_name[b"big/ids"].gid) == (100_000_000, 200_000_000)
    assert by_name[b"big/ids"].pax[b"uid"] == b"100000000"
    assert (by_name[b"etc/shadow"].uid, by_name[b"etc/shadow"].gid, by_name[b"etc/shadow"].mode) == (0, 42, 0o640)
    assert by_name[b"bin/busybox"].mode == 0o4755 and by_name[b"tmp"].mode == 0o1777
    long_name = b"x/" + b"long" * 40 + b"/file"
    assert by_name[long_name].pax[b"path"] == long_name  # PAX only where ustar cannot hold it
    assert b"path" not in by_name[b"names/caf\xe9"].pax
    xattrs = by_name[b"xattrs/file"].pax
    assert [k for k in xattrs if k.startswith(b"SCHILY.xattr.")] == sorted(k for k in xattrs if k.startswith(b"SCHILY."))
    assert xattrs[b"SCHILY.xattr.user.a"] == b"\x00\xff"
    assert {h.type for h in headers} <= {b"0", b"1", b"2", b"3", b"4", b"5", b"6"}
    for h in headers:  # the PAX header's own fields depend only on the entry
        if h.pax_raw:
            assert h.pax_raw[265:329] == bytes(64) and _num(h.pax_raw[108:116]) == 0 == _num(h.pax_raw[116:124])


def test_hardlink_heads_are_the_smallest_path(reference_tar: bytes) -> None:
    headers = {h.name: h for h in walk(reference_tar)}
    # group {z/orig, m/middle, a/first}, a/first deleted by layer 3: the head is m/middle
    assert headers[b"m/middle"].type == b"0" and headers[b"m/middle"].size == len(b"linked content\n")
    assert (headers[b"z/orig"].type, headers[b"z/orig"].linkname, headers[b"z/orig"].size) == (b"1", b"m/middle", 0)
    assert (headers[b"m/middle"].uid, headers[b"z/orig"].uid) == (1000, 1000)
    # a link made in a later layer to a lower file: etc/passwd < etc/passwd- is the head
    assert headers[b"etc/passwd"].type == b"0"
    assert (headers[b"etc/passwd-"].type, headers[b"etc/passwd-"].linkname) == (b"1", b"etc/passwd")
    # every link names an earlier regular member
    seen: dict[bytes, bytes] = {}
    for name, h in headers.items():
        if h.type == b"1":
            assert seen.get(h.linkname) == b"0", name
            assert h.linkname < name
        seen[name] = h.type


def test_mtimes_clamped_to_source_date_epoch_api_argument(reference_tar: bytes) -> None:
    headers = {h.name.rstrip(b"/"): h for h in walk(reference_tar)}
    assert headers[b"etc/shadow"].mtime == SDE  # later: clamped
    assert headers[b"bin/abs"].mtime == SDE
    assert headers[b"dev/fifo"].mtime == SDE
    assert headers[b"late"].mtime == SDE and headers[b"late/file"].mtime == SDE
    assert headers[b"etc/passwd"].mtime == EARLY  # earlier: kept
    assert headers[b"etc"].mtime == EARLY
    assert headers[b"frac/late"].mtime == SDE and b"mtime" not in headers[b"frac/late"].pax
    assert headers[b"frac/early"].pax[b"mtime"] == f"{EARLY}.25".encode()  # sub-second kept when earlier
    assert all(h.mtime <= SDE for h in headers.values())


def test_without_source_date_epoch_mtimes_are_kept(sources: dict[str, str], tmp_path: Path) -> None:
    headers = {h.name.rstrip(b"/"): h for h in walk(flatten(sources["docker-legacy"], tmp_path / "r.tar"))}
    assert headers[b"etc/shadow"].mtime == LATE
    assert headers[b"frac/late"].pax[b"mtime"] == f"{LATE}.5".encode()
    assert headers[b"etc/passwd"].mtime == EARLY


def test_source_date_epoch_environment_variable(sources: dict[str, str], tmp_path: Path, reference_tar: bytes,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(SDE))
    assert flatten(sources["oci-zstd"], tmp_path / "env.tar") == reference_tar
    # the API argument wins over the environment
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(SDE + 1))
    assert flatten(sources["oci-zstd"], tmp_path / "arg.tar", source_date_epoch=SDE) == reference_tar
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        flatten(sources["oci-zstd"], tmp_path / "bad.tar")
    assert not (tmp_path / "bad.tar").exists()


# --------------------------------------------------------------------------- the CLI


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    full = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "converter", *args], capture_output=True, env=full)


def test_cli_reproducible_matches_the_api(sources: dict[str, str], tmp_path: Path, reference_tar: bytes) -> None:
    out = tmp_path / "cli.tar.zst"
    r = _cli("convert", sources["oci-archive-gzip"], "--flatten", str(out), "--reproducible",
             env={"SOURCE_DATE_EPOCH": str(SDE)})
    assert r.returncode == 0, r.stderr
    assert _decompress(out) == reference_tar
    assert out.read_bytes() == flatten(sources["docker-legacy"], tmp_path / "api.tar.zst", source_date_epoch=SDE)
    # the same bytes on stdout (streamed, not sendfile'd), and --reproducible alone clamps nothing
    r = _cli("convert", sources["docker25"], "--flatten", "-", "--reproducible", env={})
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == flatten(sources["oci-gzip"], tmp_path / "noclamp.tar")
    assert r.stdout != reference_tar


def test_stdin_and_an_unprivileged_user_give_the_same_bytes(sources: dict[str, str], tmp_path: Path) -> None:
    """A flattened tar carries the image's ids, modes and devices whoever runs the
    converter, and a source read from a pipe (spooled) is the same source."""
    import shutil
    import tempfile

    expected = flatten(sources["docker-legacy"], tmp_path / "root.tar", source_date_epoch=SDE)
    legacy = sources["docker-legacy"].split(":", 1)[1]
    with open(legacy, "rb") as f:
        r = subprocess.run([sys.executable, "-m", "converter", "convert", "-", "--flatten", "-", "-q"], stdin=f,
                           capture_output=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(SDE)})
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == expected
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run the converter as nobody")
    with tempfile.TemporaryDirectory() as shared:  # tmp_path's parents are private to root
        os.chmod(shared, 0o777)
        image = Path(shared) / "image.tar"
        shutil.copyfile(legacy, image)
        os.chmod(image, 0o644)
        r = subprocess.run([setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-m",
                            "converter", "convert", str(image), "--flatten", f"{shared}/out.tar", "-q"],
                           capture_output=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(SDE)}, cwd=shared)
        assert r.returncode == 0, r.stderr.decode()
        assert (Path(shared) / "out.tar").stat().st_uid == 65534
        assert (Path(shared) / "out.tar").read_bytes() == expected


# --------------------------------------------------------------------------- real-tool images

IMAGES: list[dict[str, Any]] = json.loads((REAL / "images.json").read_text("utf-8"))
# fixtures/real/README.md: the linux/amd64 image of the multi-platform index is public/edge:scratch
_SAME_AS = {("multiarch.oci-index", "linux/amd64"): "public/edge:scratch"}


def _real_groups() -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in IMAGES:
        image = _SAME_AS.get((item["artefact"], item["platform"]), item["image"])
        groups.setdefault(image, []).append(item)
    return {image: items for image, items in groups.items() if len(items) > 1}


REAL_GROUPS = _real_groups()


def _convert_real(item: dict[str, Any], out: Path, **kw: Any) -> bytes:
    convert(str(REAL / item["artefact"]), out, flatten=True, ref=item["ref"], platform=item["platform"], **kw)
    return out.read_bytes()


def test_real_fixtures_hold_the_same_image_in_several_formats() -> None:
    formats = {item["format"] for items in REAL_GROUPS.values() for item in items}
    assert len(REAL_GROUPS) >= 4 and len(formats) >= 6, (sorted(REAL_GROUPS), formats)


@pytest.mark.parametrize("image", sorted(REAL_GROUPS))
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.zst"])
def test_real_images_byte_identical_across_formats(image: str, suffix: str, tmp_path: Path) -> None:
    items = REAL_GROUPS[image]
    outputs = {f"{item['artefact']}@{item['ref']}": _convert_real(item, tmp_path / f"{i}{suffix}", source_date_epoch=SDE)
               for i, item in enumerate(items)}
    digests = {name: sha(data)[:16] for name, data in outputs.items()}
    assert len(set(digests.values())) == 1, f"{image}: {digests}"
    if suffix == ".tar":  # and the bytes are the right tree
        data = next(iter(outputs.values()))
        expected = (REAL / items[0]["expected_tree"]).read_text("utf-8")
        assert list_tar(io.BytesIO(data)) == expected
        assert all(h.mtime <= SDE for h in walk(data))


@pytest.mark.parametrize("image", sorted(REAL_GROUPS))
def test_real_images_byte_identical_without_clamping(image: str, tmp_path: Path) -> None:
    """The artefacts carry the very same layer tars: even unclamped mtimes agree."""
    digests = {item["artefact"]: sha(_convert_real(item, tmp_path / f"{i}.tar")) for i, item in enumerate(REAL_GROUPS[image])}
    assert len(set(digests.values())) == 1, digests


def test_real_classic_and_buildkit_agree_once_times_are_clamped(tmp_path: Path) -> None:
    """docker's two builders made the same tree with different times: clamping to a time
    before both builds leaves nothing to tell them apart."""
    save = next(i for i in IMAGES if i["image"] == "public/edge:classic" and i["format"] == "docker-save-legacy")
    buildkit = next(i for i in IMAGES if i["image"] == "public/edge:buildkit" and i["format"] == "oci-layout-gzip")
    early = 1_000_000_000
    assert _convert_real(save, tmp_path / "c.tar", source_date_epoch=early) == \
        _convert_real(buildkit, tmp_path / "b.tar", source_date_epoch=early)
    assert _convert_real(save, tmp_path / "c2.tar") != _convert_real(buildkit, tmp_path / "b2.tar")

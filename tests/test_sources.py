"""Sources (DESIGN.md §2): every on-disk layout, every layer compression, and the format
facts of EDGE-CASES.md 1-10 that readers get wrong.

The heart of the file is one matrix: the same small 3-layer image (a whiteout, a whiteout of
a whole subtree, an opaque directory, hard links, symlinks, a changed owner and mode) is
written in every layout with every layer compression the layout can hold, converted to a
directory and to a flattened tar, and each result must list exactly as ``EXPECTED``.  The
other tests vary one thing at a time around that image: how the source is named (transports,
bare paths, ``PATH:REF``, stdin), which image of several is chosen (tags, platforms), and
the odd-but-valid layer blobs real tools write.

Images come from ``converter.testing.imagegen``; listings from ``converter.listing`` (the
tar front end uses :mod:`tarfile`, independent of the converter's own parser).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from converter import convert
from converter.errors import ChoiceNeeded, InputError, NotFoundError, UsageError
from converter.image import Platform
from converter.listing import list_directory, list_tar
from converter.sources import open_image
from converter.testing.imagegen import (
    Dir,
    File,
    Hardlink,
    ImageSpec,
    Layer,
    Opaque,
    Raw,
    Symlink,
    Whiteout,
    layer_tar,
    write_docker_archive,
    write_oci_archive,
    write_oci_layout,
)

IS_ROOT = os.geteuid() == 0
ROOT_DIR = Path(__file__).resolve().parent.parent
ROOT_ONLY = pytest.mark.skipif(
    not IS_ROOT, reason="the directory sink keeps image owners (1000:1000) only when run as root"
)
TAG = "test/app:1"


# --------------------------------------------------------------------------- the image


def base_layers(compression: str = "none") -> list[Layer]:
    """Three layers exercising the merge rules a source must feed in the right order."""
    return [
        Layer(
            [
                Dir("etc/"),
                File("etc/hostname", b"base\n"),
                File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
                Dir("opt/"),
                Dir("opt/app/"),
                File("opt/app/old.txt", b"old\n"),
                Dir("usr/"),
                Dir("usr/bin/"),
                File("usr/bin/tool", b"#!/bin/sh\necho tool\n", mode=0o755),
                Hardlink("usr/bin/tool-link", "usr/bin/tool"),
                Dir("var/"),
                Dir("var/cache/"),
                File("var/cache/big", b"cache"),
                File("scratch", b"deleted later"),
            ],
            compression=compression,
        ),
        Layer(
            [
                Whiteout("scratch"),
                Whiteout("var/cache"),
                Opaque("opt/app/"),
                Dir("opt/app/"),
                File("opt/app/new.txt", b"new\n"),
                Symlink("usr/bin/alias", "tool"),
                Symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
            ],
            compression=compression,
        ),
        Layer(
            [
                File("etc/hostname", b"top\n", mode=0o600, uid=1000, gid=1000),
                Whiteout("etc/passwd"),
                Hardlink("opt/app/new-link", "opt/app/new.txt"),
            ],
            compression=compression,
        ),
    ]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def row(path: str, kind: str, mode: str = "755", owner: str = "0:0", size: str = "-", content: str = "-", link: str = "-") -> str:
    """One line of the canonical listing (path type mode uid:gid size content hardlink xattrs)."""
    return "\t".join([path, kind, mode, owner, size, content, link, "-"])


def regular(path: str, data: bytes, mode: str = "644", owner: str = "0:0", link: str = "-") -> str:
    return row(path, "f", mode, owner, str(len(data)), sha(data), link)


EXPECTED = "\n".join(
    [
        row("etc", "d"),
        regular("etc/hostname", b"top\n", mode="600", owner="1000:1000"),
        row("etc/localtime", "l", mode="-", content="->/usr/share/zoneinfo/UTC"),
        row("opt", "d"),
        row("opt/app", "d"),
        regular("opt/app/new-link", b"new\n", link="opt/app/new-link"),
        regular("opt/app/new.txt", b"new\n", link="opt/app/new-link"),
        row("usr", "d"),
        row("usr/bin", "d"),
        row("usr/bin/alias", "l", mode="-", content="->tool"),
        regular("usr/bin/tool", b"#!/bin/sh\necho tool\n", mode="755", link="usr/bin/tool"),
        regular("usr/bin/tool-link", b"#!/bin/sh\necho tool\n", mode="755", link="usr/bin/tool"),
        row("var", "d"),
    ]
) + "\n"
"""The merged tree of ``base_layers()``, whatever the layout and compression."""


# --------------------------------------------------------------------------- helpers

LAYOUTS = ("docker-legacy", "docker-skopeo", "docker25", "containerd", "oci-dir", "oci-archive")
COMPRESSIONS = ("none", "gzip", "zstd", "xz", "bzip2")
# docker save (< 25, skopeo/podman, 25+) stores layers as plain tars; the others take any blob.
UNCOMPRESSED_ONLY = {"docker-legacy", "docker-skopeo", "docker25"}
_DOCKER_STYLES = {"docker-legacy": "legacy", "docker-skopeo": "skopeo", "docker25": "docker25", "containerd": "containerd"}


def write_image(layout: str, where: Path, spec: Any, *, tag: Optional[str] = TAG, **kw: Any) -> Path:
    """Write ``spec`` (an ImageSpec or a list of (spec, tag) pairs) in ``layout``; return its path."""
    if layout in _DOCKER_STYLES:
        path = where / "image.tar"
        if isinstance(spec, ImageSpec):
            kw["tags"] = tag
        write_docker_archive(path, spec, style=_DOCKER_STYLES[layout], **kw)
    elif layout == "oci-dir":
        path = where / "layout"
        write_oci_layout(path, spec, **({"ref": tag} if isinstance(spec, ImageSpec) else {}), **kw)
    elif layout == "oci-archive":
        path = where / "image-oci.tar"
        write_oci_archive(path, spec, **({"ref": tag} if isinstance(spec, ImageSpec) else {}), **kw)
    else:  # pragma: no cover - a typo in a parametrisation
        raise AssertionError(layout)
    return path


def convert_listing(source: str | Path, out_dir: Path, sink: str, **kw: Any) -> str:
    """Convert to ``sink`` ("dir" or "tar") under ``out_dir`` and return the listing."""
    if sink == "dir":
        out = out_dir / "rootfs"
        convert(str(source), out, **kw)
        return list_directory(out)
    out = out_dir / "rootfs.tar"
    convert(str(source), out, flatten=True, **kw)
    return list_tar(out)


def file_content(listing: str, path: str) -> Optional[str]:
    for line in listing.splitlines():
        cols = line.split("\t")
        if cols[0] == path:
            return cols[5]
    return None


def cli(*args: str, stdin: Any = None, input: Optional[bytes] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "converter", *args], stdin=stdin, input=input, capture_output=True, timeout=60
    )


SINKS = [pytest.param("dir", marks=ROOT_ONLY, id="dir"), pytest.param("tar", id="tar")]


# --------------------------------------------------------------------------- layout x compression


def _matrix() -> list[Any]:
    return [
        pytest.param(layout, comp, id=f"{layout}-{comp}")
        for layout in LAYOUTS
        for comp in COMPRESSIONS
        if comp == "none" or layout not in UNCOMPRESSED_ONLY
    ]


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("layout,compression", _matrix())
def test_layout_and_compression(tmp_path: Path, layout: str, compression: str, sink: str) -> None:
    """The same image gives the same tree from every layout, compression and sink."""
    source = write_image(layout, tmp_path, ImageSpec(base_layers(compression)))
    assert convert_listing(source, tmp_path, sink) == EXPECTED


@pytest.mark.parametrize("sink", SINKS)
def test_mixed_compressions_in_one_image(tmp_path: Path, sink: str) -> None:
    """Compression is sniffed per layer: one image may mix them (EDGE-CASES 4)."""
    layers = base_layers()
    for layer, comp in zip(layers, ("zstd", "none", "bzip2")):
        layer.compression = comp
    source = write_image("containerd", tmp_path, ImageSpec(layers))
    assert convert_listing(source, tmp_path, sink) == EXPECTED


@pytest.mark.parametrize("outer", ["gzip", "zstd", "xz"])
@pytest.mark.parametrize("layout", ["docker-legacy", "docker25", "oci-archive"])
def test_outer_archive_compressed(tmp_path: Path, layout: str, outer: str) -> None:
    """``docker save | gzip`` (and zstd, xz): the outer archive is sniffed like a layer."""
    source = write_image(layout, tmp_path, ImageSpec(base_layers("gzip" if layout == "oci-archive" else "none")), outer_compression=outer)
    assert convert_listing(source, tmp_path, "tar") == EXPECTED


# --------------------------------------------------------------------------- naming the source


@pytest.mark.parametrize(
    "layout,transport",
    [
        ("docker-legacy", "docker-archive"),
        ("docker-skopeo", "docker-archive"),
        ("docker25", "docker-archive"),
        ("containerd", "docker-archive"),
        ("oci-dir", "oci"),
        ("oci-archive", "oci-archive"),
    ],
)
def test_transport_prefix_and_bare_path_agree(tmp_path: Path, layout: str, transport: str) -> None:
    """``TRANSPORT:PATH``, ``TRANSPORT:PATH:REF`` and the auto-detected bare path all work."""
    source = write_image(layout, tmp_path, ImageSpec(base_layers("gzip" if layout in ("oci-dir", "oci-archive") else "none")))
    specs = [str(source), f"{transport}:{source}", f"{transport}:{source}:{TAG}"]
    for i, spec in enumerate(specs):
        assert convert_listing(spec, tmp_path / f"run{i}", "tar") == EXPECTED, spec


def test_bare_path_with_ref(tmp_path: Path) -> None:
    """``PATH:REF`` for a bare path: the part after the first ``:`` is the reference."""
    a = ImageSpec([Layer([File("which", b"a")])])
    b = ImageSpec([Layer([File("which", b"b")])])
    source = write_image("docker-legacy", tmp_path, [(a, ["app/a:1"]), (b, ["app/b:2"])])
    listing = convert_listing(f"{source}:app/b:2", tmp_path, "tar")
    assert file_content(listing, "which") == sha(b"b")


@pytest.mark.parametrize("prefix", ["", "docker-archive:"])
def test_the_reference_in_the_source_wins_over_ref_and_rootfs_ref(tmp_path: Path, prefix: str) -> None:
    """Found by a review: ROOTFS_REF (or --ref) silently replaced the image named in
    PATH:REF.  The source argument names it more precisely."""
    from converter.sources import parse_spec

    a = ImageSpec([Layer([File("which", b"a")])])
    b = ImageSpec([Layer([File("which", b"b")])])
    source = write_image("docker-legacy", tmp_path, [(a, ["app/a:1"]), (b, ["app/b:2"])])
    assert parse_spec(f"{prefix}{source}:app/b:2", ref="app/a:1").ref == "app/b:2"
    assert parse_spec(f"{prefix}{source}", ref="app/a:1").ref == "app/a:1"
    r = subprocess.run([sys.executable, "-m", "converter", "convert", f"{prefix}{source}:app/b:2", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, env={**os.environ, "ROOTFS_REF": "app/a:1"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "which").read_bytes() == b"b"


def test_docker_archive_transport_on_oci_archive_is_refused(tmp_path: Path) -> None:
    """An explicit transport is obeyed, not second-guessed."""
    source = write_image("oci-archive", tmp_path, ImageSpec(base_layers()))
    with pytest.raises(InputError, match="manifest.json"):
        convert(f"docker-archive:{source}", tmp_path / "out")
    docker = write_image("docker-legacy", tmp_path, ImageSpec(base_layers()))
    with pytest.raises(InputError, match="oci-layout"):
        convert(f"oci-archive:{docker}", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_stdin_pipe(tmp_path: Path, compressed: bool) -> None:
    """``-`` reads a docker save from a pipe (not seekable), plain or gzip'd."""
    source = write_image("docker-legacy", tmp_path, ImageSpec(base_layers()))
    data = source.read_bytes()
    if compressed:
        data = gzip.compress(data, mtime=0)
    out = tmp_path / "out.tar"
    result = cli("convert", "-", "--flatten", str(out), "-q", input=data)
    assert result.returncode == 0, result.stderr.decode()
    assert list_tar(out) == EXPECTED


def test_stdin_regular_file_to_stdout(tmp_path: Path) -> None:
    """``-`` on a redirected file (seekable) with ``--flatten -``: tar on stdout."""
    source = write_image("oci-archive", tmp_path, ImageSpec(base_layers("zstd")))
    with open(source, "rb") as f:
        result = cli("convert", "-", "--flatten", "-", "-q", stdin=f)
    assert result.returncode == 0, result.stderr.decode()
    assert list_tar(io.BytesIO(result.stdout)) == EXPECTED


@ROOT_ONLY
def test_stdin_to_directory(tmp_path: Path) -> None:
    source = write_image("docker25", tmp_path, ImageSpec(base_layers()))
    out = tmp_path / "out"
    result = cli("convert", "-", "-o", str(out), "-q", input=source.read_bytes())
    assert result.returncode == 0, result.stderr.decode()
    assert list_directory(out) == EXPECTED


# --------------------------------------------------------------------------- several images


def _which(name: str) -> ImageSpec:
    return ImageSpec([Layer([File("which", name.encode())])])


@pytest.mark.parametrize("layout", ["docker-legacy", "docker-skopeo", "docker25", "containerd"])
def test_several_images_in_one_docker_save(tmp_path: Path, layout: str) -> None:
    """A docker save of several images: pick by tag; without one, the error lists them."""
    source = write_image(layout, tmp_path, [(_which("a"), ["app/a:1"]), (_which("b"), ["app/b:2", "app/b:latest"])])
    cases = {"app/a:1": "a", "app/b:2": "b", "app/b": "b", "docker.io/app/b:latest": "b"}
    for i, (ref, want) in enumerate(cases.items()):
        listing = convert_listing(source, tmp_path / f"run{i}", "tar", ref=ref)
        assert file_content(listing, "which") == sha(want.encode()), ref

    with pytest.raises(UsageError) as err:
        convert(str(source), tmp_path / "none")
    assert "app/a:1" in str(err.value) and "app/b:2" in str(err.value)

    with pytest.raises(NotFoundError) as err:
        convert(str(source), tmp_path / "none", ref="app/c:3")
    assert "app/c:3" in str(err.value) and "app/a:1" in str(err.value)
    assert not (tmp_path / "none").exists()


def test_several_images_in_one_oci_layout(tmp_path: Path) -> None:
    source = write_image("oci-dir", tmp_path, [(_which("a"), "a"), (_which("b"), "b")])
    assert file_content(convert_listing(f"oci:{source}:b", tmp_path / "b", "tar"), "which") == sha(b"b")
    assert file_content(convert_listing(source, tmp_path / "a", "tar", ref="a"), "which") == sha(b"a")
    with pytest.raises(UsageError) as err:
        convert(f"oci:{source}", tmp_path / "none")
    assert "a" in str(err.value) and "b" in str(err.value)


def test_edge_05_two_images_tagged_latest_with_ref_are_ambiguous(tmp_path: Path) -> None:
    """EDGE-CASES 5: ``org.opencontainers.image.ref.name`` holds only the tag, so two
    images both named ``latest`` cannot be told apart by it."""
    source = write_image("oci-dir", tmp_path, [(_which("a"), "latest"), (_which("b"), "latest")])
    with pytest.raises(UsageError, match="latest"):
        convert(f"oci:{source}:latest", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_edge_05_two_images_tagged_latest_without_ref_are_ambiguous(tmp_path: Path) -> None:
    source = write_image("oci-dir", tmp_path, [(_which("a"), "latest"), (_which("b"), "latest")])
    with pytest.raises(ChoiceNeeded, match="--ref NAME"):  # (it says how to choose)
        convert(f"oci:{source}", tmp_path / "out")


def test_untagged_or_same_tag_images_are_chosen_by_position_or_digest(tmp_path: Path) -> None:
    """``docker save ID1 ID2`` names no image, and two OCI entries may share a tag: #N (as
    the errors list them) or a digest prefix (as `rootfs inspect` shows it) picks one."""
    built = write_docker_archive(tmp_path / "ids.tar", [(_which("a"), None), (_which("b"), None)])
    with pytest.raises(ChoiceNeeded, match=r"#1 \(untagged, sha256:"):
        convert(str(tmp_path / "ids.tar"), tmp_path / "out")
    for ref, want in [("#2", "b"), ("#1", "a"), (built[1].config_digest, "b"), (built[0].config_digest[:19], "a"),
                      (built[1].config_digest.split(":")[1][:12], "b")]:
        listing = convert_listing(f"{tmp_path / 'ids.tar'}:{ref}", tmp_path / f"o-{ref[-6:]}", "tar")
        assert file_content(listing, "which") == sha(want.encode()), ref
    for missing in ("#3", "#\u00b2"):  # (a digit to isdigit(), not to int(): an internal error before)
        with pytest.raises(NotFoundError):
            convert(f"{tmp_path / 'ids.tar'}:{missing}", tmp_path / "out")
    layout = write_image("oci-dir", tmp_path, [(_which("a"), "latest"), (_which("b"), "latest")])
    with pytest.raises(UsageError, match="2 images match 'latest'; use #N or a longer digest"):
        convert(f"oci:{layout}:latest", tmp_path / "out")
    assert file_content(convert_listing(f"oci:{layout}:#2", tmp_path / "oci2", "tar"), "which") == sha(b"b")
    assert not (tmp_path / "out").exists()


def test_a_nested_index_listed_many_times_is_expanded_once(tmp_path: Path) -> None:
    """Seven levels of an index listing its child eight times: 8**7 entries (2 million,
    gigabytes) when expanded naively; each index is read once now."""
    layout = write_image("oci-dir", tmp_path, _which("a"))
    index = json.loads((layout / "index.json").read_text())
    child = index["manifests"][0]
    child = {k: v for k, v in child.items() if k != "annotations"}
    child["platform"] = {"os": "linux", "architecture": "amd64"}
    for _ in range(7):
        doc = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                          "manifests": [child] * 8}).encode()
        digest = hashlib.sha256(doc).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(doc)
        child = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{digest}", "size": len(doc)}
    index["manifests"] = [{**child, "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    (layout / "index.json").write_text(json.dumps(index))
    listing = convert_listing(f"oci:{layout}", tmp_path / "out", "tar", platform="linux/amd64")
    assert file_content(listing, "which") == sha(b"a")


def test_podman_localhost_names_match_without_the_prefix() -> None:
    from converter.manifests import ref_matches

    assert ref_matches("public/edge:scratch", "localhost/public/edge:scratch")
    assert ref_matches("localhost/app:1", "localhost/app:1") and not ref_matches("app:2", "localhost/app:1")
    assert not ref_matches("app:1", "docker.io/localhost/app:1") and ref_matches("busybox", "docker.io/library/busybox:latest")
    source = ROOT_DIR / "fixtures" / "real" / "edge-scratch.podman-save.docker-archive.tar"
    with open_image(f"{source}:public/edge:scratch") as image:
        assert image.reference == "public/edge:scratch" and image.layers  # (found under its localhost/ name)


def test_oci_transport_on_an_archive_file_points_to_oci_archive(tmp_path: Path) -> None:
    source = write_image("oci-archive", tmp_path, [(_which("a"), "latest")])
    with pytest.raises(InputError, match=r"is a file.*oci-archive:") as info:
        convert(f"oci:{source}", tmp_path / "out")
    assert not isinstance(info.value, NotFoundError)  # (it exists: "no such directory" misled)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", ["docker-daemon:alpine:latest", "containers-storage:alpine", "dir:/tmp/image"])
def test_transports_this_tool_does_not_read_are_named(tmp_path: Path, spec: str) -> None:
    with pytest.raises(UsageError, match=r"is a transport this tool does not read.*oci-archive:"):
        convert(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_edge_05_docker25_save_two_latest_images(tmp_path: Path) -> None:
    """A Docker 25 save of ``app/a:latest`` and ``app/b:latest``: as a docker archive the
    RepoTags tell them apart; read as an OCI archive, ``latest`` alone is ambiguous but the
    full name (containerd's annotation) is not."""
    source = write_image("docker25", tmp_path, [(_which("a"), ["app/a:latest"]), (_which("b"), ["app/b:latest"])])
    assert file_content(convert_listing(f"docker-archive:{source}:app/b:latest", tmp_path / "d", "tar"), "which") == sha(b"b")
    assert file_content(convert_listing(f"oci-archive:{source}:app/a:latest", tmp_path / "o", "tar"), "which") == sha(b"a")
    with pytest.raises(UsageError):
        convert(f"oci-archive:{source}:latest", tmp_path / "out")


# --------------------------------------------------------------------------- platforms (EDGE-CASES 8)


def _platform_specs() -> list[tuple[ImageSpec, None]]:
    platforms = [("amd64", None), ("arm64", "v8"), ("arm", "v7"), ("ppc64le", None)]
    host = Platform.host()
    if (host.architecture, host.variant) not in platforms:
        platforms.append((host.architecture, host.variant))
    specs = []
    for arch, variant in platforms:
        name = "/".join(filter(None, ["linux", arch, variant]))
        specs.append((ImageSpec([Layer([File("arch", name.encode())])], architecture=arch, variant=variant), None))
    return specs


_INDEXES = [
    ("oci-dir", "multiarch", False),
    ("oci-archive", "multiarch", False),
    ("oci-dir", "multiarch", True),
    ("oci-dir", "nested", False),
    ("oci-archive", "nested", True),
]
_WANTS = {  # asked -> the image that must be chosen
    "linux/arm64/v8": "linux/arm64/v8",
    "linux/arm64": "linux/arm64/v8",
    "linux/arm/v7": "linux/arm/v7",
    "linux/ppc64le": "linux/ppc64le",
    None: str(Platform.host()),
}


def _index_id(layout: str, index: str, docker_types: bool) -> str:
    return f"{layout}-{index}-{'docker' if docker_types else 'oci'}-types"


def _platform_params() -> list[Any]:
    params = []
    for layout, index, docker_types in _INDEXES:
        for want, got in _WANTS.items():
            marks = []
            params.append(
                pytest.param(layout, index, docker_types, want, got, marks=marks,
                             id=f"{_index_id(layout, index, docker_types)}-{want or 'host'}")
            )
    return params


def _write_platforms(tmp_path: Path, layout: str, index: str, docker_types: bool) -> Path:
    return write_image(
        layout, tmp_path, _platform_specs(), ref=None, index=index, attestations=True, docker_media_types=docker_types
    )


@pytest.mark.parametrize("layout,index,docker_types,want,got", _platform_params())
def test_edge_08_platform_selection(tmp_path: Path, layout: str, index: str, docker_types: bool, want: Optional[str], got: str) -> None:
    """An index (possibly nested, with BuildKit attestations) of several platforms: choose
    with ``platform`` (a missing variant accepts any, arm64 means v8); default is the host."""
    source = _write_platforms(tmp_path, layout, index, docker_types)
    listing = convert_listing(source, tmp_path, "tar", platform=want)
    assert file_content(listing, "arch") == sha(got.encode())


def _no_match_params() -> list[Any]:
    return [
        pytest.param(layout, index, docker_types, id=_index_id(layout, index, docker_types),
                     marks=[])
        for layout, index, docker_types in _INDEXES
    ]


@pytest.mark.parametrize("layout,index,docker_types", _no_match_params())
def test_edge_08_no_matching_platform_lists_the_choices(tmp_path: Path, layout: str, index: str, docker_types: bool) -> None:
    """No match: NotFoundError naming what was asked and every image platform offered,
    never the attestations' ``unknown/unknown``."""
    source = _write_platforms(tmp_path, layout, index, docker_types)
    with pytest.raises(NotFoundError) as err:
        convert(str(source), tmp_path / "none", platform="linux/s390x")
    message = str(err.value)
    assert "linux/s390x" in message
    for offered in ("linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/ppc64le"):
        assert offered in message
    assert "unknown" not in message
    assert not (tmp_path / "none").exists()


def test_edge_08_attestations_listed_first_are_skipped(tmp_path: Path) -> None:
    """Put the attestation manifests (``unknown/unknown``) before the images in the index:
    they are still never chosen, by default or explicitly."""
    layout = write_image("oci-dir", tmp_path, _platform_specs(), ref=None, index="multiarch", attestations=True)
    index = json.loads((layout / "index.json").read_bytes())
    inner_path = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":", 1)[1]
    inner = json.loads(inner_path.read_bytes())
    inner["manifests"].sort(key=lambda d: d["platform"]["os"] != "unknown")  # attestations first
    assert inner["manifests"][0]["platform"]["os"] == "unknown"
    data = json.dumps(inner).encode()
    inner_path.unlink()
    (layout / "blobs" / "sha256" / sha(data)).write_bytes(data)
    index["manifests"][0].update(digest="sha256:" + sha(data), size=len(data))
    (layout / "index.json").write_text(json.dumps(index))

    assert file_content(convert_listing(layout, tmp_path / "host", "tar"), "arch") == sha(str(Platform.host()).encode())
    listing = convert_listing(layout, tmp_path / "arm", "tar", platform="linux/arm/v7")
    assert file_content(listing, "arch") == sha(b"linux/arm/v7")


def test_edge_08_platform_option_on_cli(tmp_path: Path) -> None:
    source = write_image("oci-dir", tmp_path, _platform_specs(), ref=None, index="multiarch", attestations=True)
    out = tmp_path / "arm.tar"
    result = cli("convert", f"oci:{source}", "--platform", "linux/arm/v7", "--flatten", str(out), "-q")
    assert result.returncode == 0, result.stderr.decode()
    assert file_content(list_tar(out), "arch") == sha(b"linux/arm/v7")


def test_docker_save_platform_mismatch(tmp_path: Path) -> None:
    """A docker save holds one platform per image; asking for another is NotFound."""
    source = write_image("docker-legacy", tmp_path, ImageSpec(base_layers(), architecture="arm64", variant="v8"))
    assert convert_listing(source, tmp_path, "tar", platform="linux/arm64") == EXPECTED
    with pytest.raises(NotFoundError, match="linux/arm64"):
        convert(str(source), tmp_path / "none", platform="linux/amd64")


# --------------------------------------------------------------------------- EDGE-CASES 1-4, 6


def test_edge_01_layer_order_is_manifest_order_not_parent_chain(tmp_path: Path) -> None:
    """Reverse the Layers list of manifest.json (and the diff_ids to match): the result
    must follow manifest.json even though every v1 ``json`` still names the old parents."""
    bottom = Layer([File("f", b"bottom")])
    top = Layer([File("f", b"top")])
    spec = ImageSpec([bottom, top])

    def reverse(manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
        manifest[0]["Layers"].reverse()
        return manifest

    spec.config_overrides = lambda cfg: {**cfg, "rootfs": {"type": "layers", "diff_ids": cfg["rootfs"]["diff_ids"][::-1]}}
    source = write_image("docker-legacy", tmp_path, spec, manifest_override=reverse)
    assert file_content(convert_listing(source, tmp_path, "tar"), "f") == sha(b"bottom")


def _repeat_image() -> ImageSpec:
    """Layer A adds ``f``, layer B deletes it, layer A again: ``f`` is back (EDGE-CASES 6)."""
    a = Layer([File("f", b"from A"), Dir("d/"), File("d/x", b"x")])
    b = Layer([Whiteout("f"), File("g", b"from B"), Whiteout("d")])
    return ImageSpec([a, b, a])


REPEAT_EXPECTED = "\n".join(
    [row("d", "d"), regular("d/x", b"x"), regular("f", b"from A"), regular("g", b"from B")]
) + "\n"


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_edge_06_same_layer_twice_applies_at_both_positions(tmp_path: Path, layout: str, sink: str) -> None:
    spec = _repeat_image()
    if layout not in UNCOMPRESSED_ONLY:
        spec.layers[0].compression = "gzip"
    source = write_image(layout, tmp_path, spec)
    assert convert_listing(source, tmp_path, sink) == REPEAT_EXPECTED


@pytest.mark.parametrize("links", ["symlink", "hardlink"])
def test_edge_02_layer_tar_as_link_member(tmp_path: Path, links: str) -> None:
    """A repeated layer stored once, its other ``<id>/layer.tar`` a symlink or hard-link
    member to the first (EDGE-CASES 2, combined with 6)."""
    source = write_image("docker-legacy", tmp_path, _repeat_image(), layer_links=links)
    with tarfile.open(source) as tar:  # the fixture really holds a link member
        kinds = {m.name: m.type for m in tar.getmembers() if m.name.endswith("layer.tar")}
    assert (tarfile.SYMTYPE if links == "symlink" else tarfile.LNKTYPE) in kinds.values()
    assert convert_listing(source, tmp_path, "tar") == REPEAT_EXPECTED


def test_edge_02_skopeo_manifest_naming_the_symlinks(tmp_path: Path) -> None:
    """skopeo/podman store ``<hex>.tar`` plus ``<id>/layer.tar`` symlinks to them; a
    manifest.json that names the symlinks instead of the blobs reads the same."""
    spec = ImageSpec(base_layers())
    plain = write_image("docker-skopeo", tmp_path, spec)
    with tarfile.open(plain) as tar:
        link_of = {m.linkname: m.name for m in tar.getmembers() if m.issym()}

    def via_links(manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
        manifest[0]["Layers"] = [link_of["../" + p] for p in manifest[0]["Layers"]]
        return manifest

    linked = tmp_path / "linked" / "image.tar"
    write_docker_archive(linked, spec, tags=TAG, style="skopeo", manifest_override=via_links)
    assert convert_listing(linked, tmp_path / "linked", "tar") == EXPECTED


@pytest.mark.parametrize(
    "members",
    [
        pytest.param([(b"loop/layer.tar", b"2", b"layer.tar")], id="self-symlink"),
        pytest.param([(b"loop/layer.tar", b"2", b"../loop2/layer.tar"), (b"loop2/layer.tar", b"2", b"../loop/layer.tar")], id="symlink-cycle"),
        pytest.param([(b"loop/layer.tar", b"1", b"loop2/layer.tar"), (b"loop2/layer.tar", b"1", b"loop/layer.tar")], id="hardlink-cycle"),
        pytest.param([(b"loop/layer.tar", b"2", b"../loop2/layer.tar"), (b"loop2/layer.tar", b"1", b"loop/layer.tar")], id="mixed-cycle"),
    ],
)
def test_edge_02_layer_link_cycle_is_a_clear_error(tmp_path: Path, members: list[tuple[bytes, bytes, bytes]]) -> None:
    spec = ImageSpec([Layer([File("f", b"x")])])

    def point_at_loop(manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
        manifest[0]["Layers"] = ["loop/layer.tar"]
        return manifest

    extra = [Raw(name=n, type=t, linkname=l, mode=0o777) for n, t, l in members]
    source = write_image("docker-legacy", tmp_path, spec, manifest_override=point_at_loop, extra_members=extra)
    with pytest.raises(InputError) as err:
        convert(str(source), tmp_path / "out")
    assert type(err.value) is InputError
    assert "loop" in str(err.value) and "cycle" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_edge_03_docker25_layers_are_uncompressed_blobs_named_by_diff_id(tmp_path: Path) -> None:
    source = write_image("docker25", tmp_path, ImageSpec(base_layers()))
    with tarfile.open(source) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        names = set(tar.getnames())
    diff_ids = [layer_tar(layer) for layer in base_layers()]
    assert manifest[0]["Layers"] == [f"blobs/sha256/{sha(t)}" for t in diff_ids]
    assert {"oci-layout", "index.json", "repositories"} <= names
    result = convert(str(source), tmp_path / "out.tar", flatten=True)
    assert "25" in result.source_format
    assert list_tar(tmp_path / "out.tar") == EXPECTED


def test_edge_03_docker25_repositories_is_vestigial(tmp_path: Path) -> None:
    """Docker 25's ``repositories`` names v1 ids that do not exist in the archive: a bogus
    one (a later member of the same name wins) changes nothing."""
    bogus = Raw(name=b"repositories", data=b'{"test/app":{"1":"' + b"0" * 64 + b'"}}')
    source = write_image("docker25", tmp_path, ImageSpec(base_layers()), extra_members=[bogus])
    assert convert_listing(source, tmp_path, "tar") == EXPECTED


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_edge_04_containerd_save_points_at_compressed_blobs(tmp_path: Path, compression: str) -> None:
    layers = base_layers(compression)
    source = write_image("containerd", tmp_path, ImageSpec(layers))
    with tarfile.open(source) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        first = tar.extractfile(manifest[0]["Layers"][0]).read(4)  # type: ignore[union-attr]
    assert first.startswith({"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}[compression])
    assert convert_listing(source, tmp_path, "tar") == EXPECTED


# --------------------------------------------------------------------------- odd but valid blobs


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("layout", ["docker-legacy", "containerd", "oci-dir"])
def test_edge_07_empty_layers_are_no_ops(tmp_path: Path, layout: str, sink: str) -> None:
    """A tar of only zero blocks, and (where blobs may be compressed) a tiny gzip of one."""
    compressible = layout not in UNCOMPRESSED_ONLY
    empties = [Layer()] + ([Layer(compression="gzip"), Layer(compression="zstd")] if compressible else [Layer(trailing=b"\0" * 8192)])
    layers = base_layers()
    spec = ImageSpec([empties[0], layers[0], empties[1], layers[1], layers[2], empties[-1]])
    source = write_image(layout, tmp_path, spec)
    assert convert_listing(source, tmp_path, sink) == EXPECTED


@pytest.mark.parametrize(
    "compression,media_type",
    [
        ("gzip", "application/vnd.oci.image.layer.v1.tar"),
        ("zstd", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("none", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("xz", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ("gzip", "application/vnd.docker.image.rootfs.diff.tar.zstd"),
        ("bzip2", "application/x-whatever"),
    ],
)
def test_edge_09_media_type_lies(tmp_path: Path, compression: str, media_type: str) -> None:
    """EDGE-CASES 9: magic bytes decide, never the media type."""
    layers = base_layers(compression)
    for layer in layers:
        layer.media_type = media_type
    source = write_image("oci-dir", tmp_path, ImageSpec(layers))
    assert convert_listing(source, tmp_path, "tar") == EXPECTED


@pytest.mark.parametrize("style", ["docker-legacy", "docker-skopeo"])
def test_edge_09_docker_layer_tar_holding_gzip(tmp_path: Path, style: str) -> None:
    """A legacy save whose ``layer.tar`` files are really gzip (or zstd) streams."""
    layers = base_layers()
    layers[0].compression, layers[1].compression = "gzip", "zstd"
    source = write_image(style, tmp_path, ImageSpec(layers))
    assert convert_listing(source, tmp_path, "tar") == EXPECTED


def test_edge_09_zstd_skippable_frame_first(tmp_path: Path) -> None:
    """A blob that starts with a zstd skippable frame (``5? 2a 4d 18``) is zstd."""
    layers = base_layers("zstd")
    for layer in layers:
        layer.zstd_skippable = True
    source = write_image("oci-dir", tmp_path, ImageSpec(layers))
    assert convert_listing(source, tmp_path, "tar") == EXPECTED


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("compression", ["gzip", "zstd", "xz", "bzip2"])
def test_edge_10_multi_member_padding_and_data_after_tar_eof(tmp_path: Path, compression: str, sink: str) -> None:
    """Multi-member streams, NULs after the compressed data, and bytes after the tar's end
    blocks: all consumed, and the diff_id (computed over everything) matches."""
    layers = base_layers(compression)
    for layer in layers:
        layer.gzip_members = 3
        layer.trailing = b"\0" * 10240 + b"data after the end-of-archive blocks\n"
    if compression == "gzip":
        for layer in layers:
            layer.compressed_trailing = b"\0" * 1000
    source = write_image("oci-dir", tmp_path, ImageSpec(layers))
    assert convert_listing(source, tmp_path, sink) == EXPECTED


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2"])
def test_edge_10_thousands_of_members_and_padding_across_every_read_boundary(kind: str) -> None:
    """eStargz writes a gzip member per file: thousands of members, whose ends, NUL runs
    and starts fall on every position of the decompressor's reads."""
    import bz2
    import io
    import lzma
    import random

    from converter import compression
    from converter.errors import InputError

    pack = {"gzip": lambda b: gzip.compress(b, mtime=0), "xz": lzma.compress, "bzip2": bz2.compress}[kind]
    rng = random.Random(10)
    plain, stored = [], []
    for i in range(600 if kind == "gzip" else 60):
        data = rng.randbytes(rng.randrange(0, 3000)) + b"x" * rng.randrange(0, 9000)
        plain.append(data)
        stored.append(pack(data) + (b"\0" * rng.choice((0, 0, 1, 511, 40_000)) if kind != "bzip2" else b""))
    blob = b"".join(stored)
    got = b"".join(compression.inflate_pieces(kind, io.BytesIO(blob).read, what="layer"))
    assert got == b"".join(plain)
    with pytest.raises(InputError, match="layer: (corrupt|truncated)"):
        b"".join(compression.inflate_pieces(kind, io.BytesIO(blob + b"garbage after the last member").read, what="layer"))


@pytest.mark.parametrize("layout", ["docker-legacy", "docker25"])
def test_edge_10_uncompressed_layer_with_data_after_tar_eof(tmp_path: Path, layout: str) -> None:
    layers = base_layers()
    layers[0].trailing = b"\0" * 4096
    layers[1].trailing = b"\0" * 1024 + b"garbage that follows the end blocks" * 10
    source = write_image(layout, tmp_path, ImageSpec(layers))
    assert convert_listing(source, tmp_path, "tar") == EXPECTED


def test_gzip_compressed_by_the_gzip_module(tmp_path: Path) -> None:
    """A gzip member with a file name and mtime in its header (``gzip -k``), not just the
    minimal header the generator writes."""
    layers = base_layers()
    for layer in layers:
        layer.raw = gzip.compress(layer_tar(layer), mtime=1234567890)
        layer.entries = []
    # raw bytes are stored as given: the "tar" is the gzip stream, so fix the diff_ids
    tars = [layer_tar(layer) for layer in base_layers()]
    spec = ImageSpec(layers, config_overrides={"rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(t) for t in tars]}})
    source = write_image("oci-dir", tmp_path, spec)
    assert convert_listing(source, tmp_path, "tar") == EXPECTED


# --------------------------------------------------------------------------- reading in place


class _TempProbe:
    """Counts every way :mod:`tempfile` can make a file or directory."""

    NAMES = ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp", "mkdtemp", "TemporaryDirectory")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in self.NAMES:
            monkeypatch.setattr(tempfile, name, self._wrap(name, getattr(tempfile, name)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return fn(*args, **kwargs)

        return wrapper


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("layout", ["docker-legacy", "docker-skopeo", "docker25", "oci-archive"])
def test_uncompressed_tar_is_read_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, sink: str) -> None:
    """An uncompressed tar-packed source is read by seeking to members: no temporary file
    or directory is made (TMPDIR stays empty, and :mod:`tempfile` is never called, which
    also catches anonymous ``O_TMPFILE`` files that never show in a directory)."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    source = write_image(layout, tmp_path, ImageSpec(base_layers()))
    probe = _TempProbe(monkeypatch)
    assert convert_listing(source, tmp_path, sink) == EXPECTED
    assert probe.calls == []
    assert list(tmpdir.iterdir()) == []
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == sorted(["tmp", source.name, "rootfs" if sink == "dir" else "rootfs.tar"])


def test_in_place_probe_sees_spooling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe above is not blind: a gzip'd outer archive must be spooled once."""
    source = write_image("docker-legacy", tmp_path, ImageSpec(base_layers()), outer_compression="gzip")
    probe = _TempProbe(monkeypatch)
    assert convert_listing(source, tmp_path, "tar") == EXPECTED
    assert probe.calls


def test_the_public_image_types_compare_by_value() -> None:
    """Image, Layer and Platform are exported (converter.__all__): they compare by value
    (mutable ones are unhashable), as the dataclasses they were did."""
    from converter import Image, Layer, Platform
    from converter.image import Blob, FileRegion

    blob = Blob(open=lambda: None, region=FileRegion(3, 0, 10), where="x")  # type: ignore[arg-type,return-value]
    assert Layer(0, blob, digest="sha256:a") == Layer(0, blob, digest="sha256:a") != Layer(1, blob, digest="sha256:a")
    image = Image("src", [Layer(0, blob)], {"a": 1}, platform=Platform("linux", "amd64"))
    assert image == Image("src", [Layer(0, blob)], {"a": 1}, platform=Platform("linux", "amd64"))
    assert image != Image("src", [], {"a": 1})
    assert {Platform("linux", "arm64", "v8"): 1}[Platform.parse("linux/arm64/v8")] == 1
    assert str(Platform("linux", "arm", "v7")) == "linux/arm/v7"
    with pytest.raises(TypeError):
        hash(image)

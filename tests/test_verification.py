"""Broken input fails cleanly (DESIGN.md §2 verification, §5 errors; issue 4 item 2).

Every case below breaks one thing in an otherwise valid image and asserts, for both sinks
(a directory and a flattened tar):

* the exact error class (so the CLI exit code is the documented one),
* a one-line message naming what is wrong and where (layer number and digest, file, member),
* nothing left at the destination: neither ``OUT`` nor ``OUT.partial-*``.

The last part drives the CLI for a few of them: documented exit code, exactly one line on
stderr starting with ``rootfs: error:``, no traceback unless ``--debug``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from converter import convert
from converter.errors import (
    EXIT_CODES,
    ChoiceNeeded,
    ConverterError,
    InputError,
    IntegrityError,
    NotFoundError,
    UnsafeEntryError,
    UsageError,
)
from converter.testing.imagegen import (
    DELETE,
    Dir,
    File,
    ImageSpec,
    Layer,
    Raw,
    Whiteout,
    blob_path,
    compress,
    corrupt,
    layer_tar,
    member_offset,
    sha256_digest,
    write_docker_archive,
    write_oci_archive,
    write_oci_layout,
)

# --------------------------------------------------------------------------- the image


def layers(compression: str = "gzip") -> list[Layer]:
    """Three small layers; layer 2 (index 1) is the one the cases usually break."""
    return [
        Layer([Dir("etc/"), File("etc/a", b"a" * 3000), File("etc/gone", b"x")], compression=compression),
        Layer([File("etc/b", b"b" * 3000), File("etc/c", bytes(range(256)) * 20)], compression=compression),
        Layer([Whiteout("etc/gone")], compression=compression),
    ]


def spec(compression: str = "gzip", **kw: Any) -> ImageSpec:
    return ImageSpec(layers(compression), **kw)


def short(digest: str) -> str:
    """The part of a digest messages show (``layer 2 (sha256:0123456789ab…)``)."""
    return digest.split(":", 1)[1][:12]


def docker_layer_paths(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return json.load(tar.extractfile("manifest.json"))[0]["Layers"]  # type: ignore[arg-type]


def flip(path: Path, offset: int) -> None:
    """Invert the low bit of one byte."""
    with open(path, "rb") as f:
        f.seek(offset)
        byte = f.read(1)[0]
    corrupt(path, offset, bytes([byte ^ 1]))


# --------------------------------------------------------------------------- the cases


@dataclass
class Broken:
    """A broken source: its spec string, what the message must mention, convert() options."""

    source: str
    needles: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[Path], Broken]
CASES: dict[str, tuple[Builder, type[ConverterError], str | None]] = {}


def case(name: str, error: type[ConverterError], *, xfail: str | None = None) -> Callable[[Builder], Builder]:
    """Register ``builder(where) -> Broken`` as case ``name`` expecting exactly ``error``."""

    def register(builder: Builder) -> Builder:
        assert name not in CASES, name
        CASES[name] = (builder, error, xfail)
        return builder

    return register


# -- blob digest and size


@case("digest-gzip-header-byte", IntegrityError)
def _(where: Path) -> Broken:
    """A flipped byte in the gzip header (mtime field) decompresses fine: only the blob
    digest can tell."""
    built = write_oci_layout(where, spec())
    flip(blob_path(where, built.layer_digests[1]), 5)
    return Broken(str(where), ("layer 2", short(built.layer_digests[1]), "digest"))




@case("digest-gzip-data-byte", IntegrityError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec())
    flip(blob_path(where, built.layer_digests[1]), 40)
    return Broken(str(where), ("layer 2", short(built.layer_digests[1])))


@case("digest-zstd-data-byte", IntegrityError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec("zstd"))
    flip(blob_path(where, built.layer_digests[1]), 40)
    return Broken(str(where), ("layer 2", short(built.layer_digests[1])))


@case("digest-uncompressed-oci-blob", IntegrityError)
def _(where: Path) -> Broken:
    """An uncompressed blob, read in place: the background hash catches the flip."""
    built = write_oci_layout(where, spec("none"))
    flip(blob_path(where, built.layer_digests[1]), 600)
    return Broken(str(where), ("layer 2", short(built.layer_digests[1]), "digest"))


@case("digest-uncompressed-header-byte", IntegrityError)
def _(where: Path) -> Broken:
    """A flip in a header of an uncompressed blob: the tar parser meets it before the
    background hash ends, and the blob's digest is what the message names."""
    built = write_oci_layout(where, spec("none"))
    flip(blob_path(where, built.layer_digests[1]), 3)
    return Broken(str(where), ("layer 2", short(built.layer_digests[1]), "digest"))


@case("digest-big-zstd-frame-garbage", IntegrityError)
def _(where: Path) -> Broken:
    """One 6 MB zstd frame: a flip early in it reaches the tar parser as garbage long
    before the frame ends (and, with a diff_id to check, its checksum is not even read):
    still reported as the blob failing its digest."""
    big = Layer([File(f"usr/lib/f{i:04d}", hashlib.sha256(b"%d" % i).digest() * (40 + i % 80)) for i in range(2000)],
                compression="zstd")
    built = write_oci_layout(where, ImageSpec([layers("zstd")[0], big]))
    path = blob_path(where, built.layer_digests[1])
    flip(path, path.stat().st_size // 3)
    return Broken(str(where), ("layer 2", short(built.layer_digests[1]), "digest"))


@case("digest-oci-archive-member", IntegrityError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    built = write_oci_archive(archive, spec())
    name = "blobs/sha256/" + built.layer_digests[1].split(":", 1)[1]
    flip(archive, member_offset(archive, name) + 5)
    return Broken(str(archive), ("layer 2", short(built.layer_digests[1])))


@case("digest-docker-legacy-layer-tar", IntegrityError)
def _(where: Path) -> Broken:
    """Legacy saves have no blob digest: the diff_id is the check."""
    archive = where / "image.tar"
    built = write_docker_archive(archive, spec("none"))
    flip(archive, member_offset(archive, docker_layer_paths(archive)[1]) + 600)
    return Broken(str(archive), ("layer 2", short(built.diff_ids[1]), "diff_id"))


@case("digest-docker25-blob", IntegrityError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    built = write_docker_archive(archive, spec("none"), style="docker25")
    flip(archive, member_offset(archive, docker_layer_paths(archive)[1]) + 600)
    return Broken(str(archive), ("layer 2", short(built.diff_ids[1])))


def _layer_size(delta: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def override(manifest: dict[str, Any]) -> dict[str, Any]:
        manifest["layers"][1]["size"] += delta
        return manifest

    return override


@case("size-larger-than-blob", IntegrityError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec(), manifest_override=_layer_size(+1))
    return Broken(str(where), ("layer 2", short(built.layer_digests[1]), "size"))


@case("size-smaller-than-blob", IntegrityError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec(), manifest_override=_layer_size(-1))
    return Broken(str(where), ("layer 2", short(built.layer_digests[1]), "size"))


@case("size-smaller-than-uncompressed-blob", IntegrityError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec("none"), manifest_override=_layer_size(-1))
    return Broken(str(where), ("layer 2", short(built.layer_digests[1]), "size"))


@case("blob-with-bytes-appended", IntegrityError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec())
    with open(blob_path(where, built.layer_digests[1]), "ab") as f:
        f.write(b"\0" * 100)
    return Broken(str(where), ("layer 2", short(built.layer_digests[1])))


@case("config-blob-digest", IntegrityError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec())
    path = blob_path(where, built.config_digest)
    path.write_bytes(path.read_bytes().replace(b'"amd64"', b'"arm64"'))
    return Broken(str(where), ("config", short(built.config_digest)))


@case("manifest-blob-digest", IntegrityError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec())
    path = blob_path(where, built.manifest_digest)
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion":2 '))
    return Broken(str(where), ("manifest", short(built.manifest_digest)))


# -- diff_id


def _lying_diff_id(index: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def override(config: dict[str, Any]) -> dict[str, Any]:
        config["rootfs"]["diff_ids"][index] = sha256_digest(b"not this layer")
        return config

    return override


@case("diff-id-compressed-layer", IntegrityError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec(config_overrides=_lying_diff_id(1)))
    return Broken(str(where), ("layer 2", short(built.layer_digests[1]), "diff_id", short(sha256_digest(b"not this layer"))))


@case("diff-id-uncompressed-in-place", IntegrityError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    write_docker_archive(archive, spec("none", config_overrides=_lying_diff_id(2)))
    return Broken(str(archive), ("layer 3", "diff_id"))


@case("diff-id-excludes-data-after-tar-eof", IntegrityError)
def _(where: Path) -> Broken:
    """EDGE-CASES 11: a diff_id computed only up to the end-of-archive blocks is wrong when
    bytes follow them; the whole decompressed stream counts."""
    image = spec()
    image.layers[1].trailing = b"bytes after the end blocks"
    short_tar = layer_tar(Layer(image.layers[1].entries))

    def up_to_eof(config: dict[str, Any]) -> dict[str, Any]:
        config["rootfs"]["diff_ids"][1] = sha256_digest(short_tar)
        return config

    image.config_overrides = up_to_eof
    write_oci_layout(where, image)
    return Broken(str(where), ("layer 2", "diff_id"))


@case("diff-id-count-differs-from-layers", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(config_overrides=lambda c: {**c, "rootfs": {"type": "layers", "diff_ids": c["rootfs"]["diff_ids"][:2]}}))
    return Broken(str(where), ("3 layers", "2 diff_ids"))


# -- truncation and compression


def _big_tar() -> bytes:
    return layer_tar(Layer([Dir("etc/"), File("etc/big", bytes(range(256)) * 80)]))


@case("truncated-gzip", IntegrityError)
def _(where: Path) -> Broken:
    """Half a gzip stream stored as the blob (its digest matches what is stored): only the
    decompressor can notice."""
    blob = compress(_big_tar(), "gzip")
    built = write_oci_layout(where, ImageSpec([Layer(raw=blob[: len(blob) // 2])]))
    return Broken(str(where), ("layer 1", short(built.layer_digests[0]), "truncated"))


@case("truncated-gzip-unverified", IntegrityError)
def _(where: Path) -> Broken:
    """Truncation is not a verification matter: it fails with --no-verify too."""
    blob = compress(_big_tar(), "gzip")
    write_oci_layout(where, ImageSpec([Layer(raw=blob[: len(blob) // 2])]))
    return Broken(str(where), ("layer 1", "truncated"), {"verify": False})


@case("truncated-xz", IntegrityError)
def _(where: Path) -> Broken:
    blob = compress(_big_tar(), "xz")
    write_oci_layout(where, ImageSpec([Layer(raw=blob[: len(blob) // 2])]))
    return Broken(str(where), ("layer 1", "truncated"))




@case("truncated-zstd", IntegrityError)
def _(where: Path) -> Broken:
    blob = compress(_big_tar(), "zstd")
    write_oci_layout(where, ImageSpec([Layer(raw=blob[: len(blob) // 2])]))
    return Broken(str(where), ("layer 1", "truncated"))


@case("truncated-zstd-unverified", IntegrityError)
def _(where: Path) -> Broken:
    blob = compress(_big_tar(), "zstd")
    write_oci_layout(where, ImageSpec([Layer(raw=blob[: len(blob) // 2])]))
    return Broken(str(where), ("layer 1", "truncated"), {"verify": False})


@case("truncated-tar-mid-data", IntegrityError)
def _(where: Path) -> Broken:
    """An uncompressed layer cut in the middle of a file's data (read in place)."""
    archive = where / "image.tar"
    write_docker_archive(archive, ImageSpec([Layer(raw=_big_tar()[:5000])]))
    return Broken(str(archive), ("layer 1", "truncated", "etc/big"), {"verify": False})


@case("truncated-tar-mid-header", IntegrityError)
def _(where: Path) -> Broken:
    write_oci_layout(where, ImageSpec([Layer(raw=_big_tar()[:700], compression="gzip")]))
    return Broken(str(where), ("layer 1", "truncated"))


@case("truncated-outer-archive", IntegrityError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    write_docker_archive(archive, spec("none"))
    data = archive.read_bytes()
    # mid-member (a cut exactly between members would just be a shorter archive)
    archive.write_bytes(data[: member_offset(archive, docker_layer_paths(archive)[1]) + 1000])
    return Broken(str(archive), (str(archive), "truncated"))


@case("truncated-outer-gzip", IntegrityError)
def _(where: Path) -> Broken:
    archive = where / "image.tar.gz"
    write_docker_archive(archive, spec("none"), outer_compression="gzip")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    return Broken(str(archive), (str(archive), "truncated"))


@case("unknown-compression", InputError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, ImageSpec([Layer(raw=b"garbage!" * 100)]))
    return Broken(str(where), ("layer 1", short(built.layer_digests[0]), "compression"))


@case("unknown-compression-tiny-blob", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, ImageSpec([Layer(raw=b"junk")]))
    return Broken(str(where), ("layer 1", "compression"))


@case("unknown-compression-in-docker-save", InputError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    write_docker_archive(archive, ImageSpec([*layers("none")[:2], Layer(raw=b"\x89PNG\r\n\x1a\n" * 100)]))
    return Broken(str(archive), ("layer 3", "compression"))


@case("not-an-archive-at-all", InputError)
def _(where: Path) -> Broken:
    path = where / "notes.txt"
    path.write_bytes(b"hello, this is not a container image\n" * 50)
    return Broken(str(path), (str(path),))


# -- missing blobs


@case("missing-layer-blob", NotFoundError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec())
    blob_path(where, built.layer_digests[1]).unlink()
    return Broken(str(where), ("layer 2", short(built.layer_digests[1]), "missing"))


@case("missing-config-blob", NotFoundError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec())
    blob_path(where, built.config_digest).unlink()
    return Broken(str(where), ("config", short(built.config_digest)))


@case("missing-manifest-blob", NotFoundError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec())
    blob_path(where, built.manifest_digest).unlink()
    return Broken(str(where), ("manifest", short(built.manifest_digest)))


@case("missing-blob-in-oci-archive", NotFoundError)
def _(where: Path) -> Broken:
    """The archive holds the layer under another name than its digest."""
    archive = where / "image.tar"
    built = write_oci_archive(archive, spec())
    data = bytearray(archive.read_bytes())
    hex_ = built.layer_digests[1].split(":", 1)[1].encode()
    at = data.index(b"blobs/sha256/" + hex_)
    data[at + 13 : at + 13 + 4] = b"dead"  # rename the member (the header checksum is then wrong)
    header = at - at % 512
    data[header + 148 : header + 156] = b" " * 8
    data[header + 148 : header + 156] = b"%06o\0 " % sum(data[header : header + 512])
    archive.write_bytes(bytes(data))
    return Broken(str(archive), ("layer 2", short(built.layer_digests[1])))


@case("missing-docker-layer-member", NotFoundError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    write_docker_archive(archive, spec("none"), manifest_override=lambda m: [{**m[0], "Layers": [m[0]["Layers"][0], "nope/layer.tar", m[0]["Layers"][2]]}])
    return Broken(str(archive), ("layer 2", "nope/layer.tar"))


@case("missing-docker-config-member", NotFoundError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    write_docker_archive(archive, spec("none"), manifest_override={"Config": "nope.json"})
    return Broken(str(archive), ("config", "nope.json"))


# -- JSON documents that are not JSON or lack fields


def _docker(where: Path, **kw: Any) -> Broken:
    archive = where / "image.tar"
    write_docker_archive(archive, spec("none"), **kw)
    return Broken(str(archive), ("manifest.json",))


@case("manifest-json-not-json", InputError)
def _(where: Path) -> Broken:
    return _docker(where, manifest_override=b"{not json")


@case("manifest-json-not-a-list", InputError)
def _(where: Path) -> Broken:
    return _docker(where, manifest_override=lambda m: m[0])


@case("manifest-json-empty-list", InputError)
def _(where: Path) -> Broken:
    return _docker(where, manifest_override=[])


@case("manifest-json-without-config", InputError)
def _(where: Path) -> Broken:
    return _docker(where, manifest_override={"Config": DELETE})


@case("manifest-json-without-layers", InputError)
def _(where: Path) -> Broken:
    return _docker(where, manifest_override={"Layers": DELETE})


@case("manifest-json-layers-not-a-list", InputError)
def _(where: Path) -> Broken:
    return _docker(where, manifest_override={"Layers": "abc/layer.tar"})


@case("index-json-not-json", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(), index_override=b"[[[")
    return Broken(str(where), ("index.json", "JSON"))


@case("index-json-without-manifests", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(), index_override={"manifests": DELETE})
    return Broken(str(where), ("index.json",))


@case("index-json-entry-without-size", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(), index_override=lambda i: {**i, "manifests": [{k: v for k, v in i["manifests"][0].items() if k != "size"}]})
    return Broken(str(where), ("index.json", "size"))


@case("oci-layout-file-missing", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec())
    (where / "oci-layout").unlink()
    return Broken(str(where), ("oci-layout",))


@case("oci-manifest-not-json", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(), manifest_override=b"nope")
    return Broken(str(where), ("manifest", "JSON"))


@case("oci-manifest-without-config", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(), manifest_override={"config": DELETE})
    return Broken(str(where), ("manifest", "config"))


@case("oci-manifest-without-layers", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(), manifest_override={"layers": DELETE})
    return Broken(str(where), ("manifest", "layers"))


@case("config-not-json", InputError)
def _(where: Path) -> Broken:
    built = write_oci_layout(where, spec(config_overrides=b"{{"))
    return Broken(str(where), ("config", short(built.config_digest), "JSON"))


@case("config-not-an-object", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(config_overrides=[1, 2]))
    return Broken(str(where), ("config",))


@case("config-without-rootfs", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(config_overrides={"rootfs": DELETE}))
    return Broken(str(where), ("config", "rootfs"))


@case("config-without-diff-ids-in-docker-save", InputError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    built = write_docker_archive(archive, spec("none", config_overrides={"rootfs": {"diff_ids": DELETE}}))
    return Broken(str(archive), ("config", short(built.config_digest), "diff_ids"))


@case("config-not-json-in-docker-save", InputError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    write_docker_archive(archive, spec("none", config_overrides=b"\xff\xfe"))
    return Broken(str(archive), ("config", "JSON"))


# -- paths out of the archive, malformed digests


def _docker_layer_path(where: Path, path: str, position: int = 0) -> Broken:
    archive = where / "image.tar"

    def override(manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
        manifest[0]["Layers"][position] = path
        return manifest

    write_docker_archive(archive, spec("none"), manifest_override=override)
    return Broken(str(archive), (f"layer {position + 1}", path))


def _outside_copy_of_first_layer(where: Path) -> Path:
    """A valid copy of layer 1 next to the archive: were a path escape followed, the
    conversion would succeed instead of failing."""
    outside = where.parent / "outside.tar"
    outside.write_bytes(layer_tar(layers("none")[0]))
    return outside




@case("layer-path-dotdot", InputError)
def _(where: Path) -> Broken:
    _outside_copy_of_first_layer(where)
    return _docker_layer_path(where, "../outside.tar")


@case("layer-path-deep-dotdot", InputError)
def _(where: Path) -> Broken:
    return _docker_layer_path(where, "../../x", position=1)


@case("layer-path-absolute", InputError)
def _(where: Path) -> Broken:
    return _docker_layer_path(where, "/etc/passwd")


@case("layer-path-absolute-to-valid-tar", InputError)
def _(where: Path) -> Broken:
    return _docker_layer_path(where, str(_outside_copy_of_first_layer(where)))


@case("config-path-absolute", InputError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    write_docker_archive(archive, spec("none"), manifest_override={"Config": "/etc/passwd"})
    return Broken(str(archive), ("config", "/etc/passwd"))


@case("layer-tar-symlink-member-escaping", InputError)
def _(where: Path) -> Broken:
    """EDGE-CASES 2 gone wrong: ``layer.tar`` a symlink member out of the archive."""
    _outside_copy_of_first_layer(where)
    archive = where / "image.tar"

    def override(manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
        manifest[0]["Layers"][0] = "evil/layer.tar"
        return manifest

    link = Raw(name=b"evil/layer.tar", type=b"2", linkname=b"../../outside.tar", mode=0o777)
    write_docker_archive(archive, spec("none"), manifest_override=override, extra_members=[link])
    return Broken(str(archive), ("evil/layer.tar", "outside"))


def _oci_layer_digest(where: Path, digest: Any) -> Broken:
    def override(manifest: dict[str, Any]) -> dict[str, Any]:
        manifest["layers"][1]["digest"] = digest
        return manifest

    write_oci_layout(where, spec(), manifest_override=override)
    return Broken(str(where), ("layer 2", str(digest)))


@case("digest-with-path", InputError)
def _(where: Path) -> Broken:
    return _oci_layer_digest(where, "sha256:../../x")


@case("digest-with-long-path", InputError)
def _(where: Path) -> Broken:
    return _oci_layer_digest(where, "sha256:../../../../../../etc/passwd")


@case("digest-md5", InputError)
def _(where: Path) -> Broken:
    return _oci_layer_digest(where, "md5:d41d8cd98f00b204e9800998ecf8427e")


@case("digest-uppercase-hex", InputError)
def _(where: Path) -> Broken:
    return _oci_layer_digest(where, "sha256:" + "A" * 64)


@case("digest-without-algorithm", InputError)
def _(where: Path) -> Broken:
    return _oci_layer_digest(where, "0" * 64)


@case("digest-not-a-string", InputError)
def _(where: Path) -> Broken:
    return _oci_layer_digest(where, 42)


@case("config-digest-with-path", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(), manifest_override=lambda m: {**m, "config": {**m["config"], "digest": "sha256:../../x"}})
    return Broken(str(where), ("config", "sha256:../../x"))


@case("index-digest-with-path-in-archive", InputError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    write_oci_archive(archive, spec(), index_override=lambda i: {**i, "manifests": [{**i["manifests"][0], "digest": "sha256:../../x"}]})
    return Broken(str(archive), ("index.json", "sha256:../../x"))


@case("diff-id-malformed", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(config_overrides=lambda c: {**c, "rootfs": {"type": "layers", "diff_ids": ["sha256:nothex"] * 3}}))
    return Broken(str(where), ("diff_ids", "sha256:nothex"))


# -- unsupported manifests, platforms, several images

SCHEMA1 = {
    "schemaVersion": 1,
    "name": "test/app",
    "tag": "1",
    "architecture": "amd64",
    "fsLayers": [{"blobSum": "sha256:" + "0" * 64}],
    "history": [{"v1Compatibility": "{}"}],
}


@case("schema1-manifest", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec(), manifest_override=lambda m: SCHEMA1)
    return Broken(str(where), ("schema 1",))


@case("schema1-signed-manifest-media-type", InputError)
def _(where: Path) -> Broken:
    signed = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    write_oci_layout(
        where, spec(), manifest_override=lambda m: {**SCHEMA1, "signatures": []},
        index_override=lambda i: {**i, "manifests": [{**i["manifests"][0], "mediaType": signed}]},
    )
    return Broken(str(where), ("schema 1",))


@case("no-matching-platform", NotFoundError)
def _(where: Path) -> Broken:
    images = [
        (ImageSpec([Layer([File("arch", b"amd64")])], architecture="amd64"), None),
        (ImageSpec([Layer([File("arch", b"arm64")])], architecture="arm64", variant="v8"), None),
    ]
    write_oci_layout(where, images, index="multiarch", attestations=True)
    return Broken(str(where), ("linux/riscv64", "linux/amd64", "linux/arm64"), {"platform": "linux/riscv64"})


@case("index-of-attestations-only", NotFoundError)
def _(where: Path) -> Broken:
    images = [(ImageSpec([Layer([File("arch", b"amd64")])]), None)]
    write_oci_layout(
        where, images, index="multiarch", attestations=True,
    )
    inner = json.loads((where / "index.json").read_bytes())["manifests"][0]["digest"]
    path = blob_path(where, inner)
    doc = json.loads(path.read_bytes())
    doc["manifests"] = [m for m in doc["manifests"] if m["platform"]["os"] == "unknown"]
    data = json.dumps(doc).encode()
    path.unlink()
    new = blob_path(where, sha256_digest(data))
    new.write_bytes(data)
    index = json.loads((where / "index.json").read_bytes())
    index["manifests"][0].update(digest=sha256_digest(data), size=len(data))
    (where / "index.json").write_text(json.dumps(index))
    return Broken(str(where), ("attestation",))


@case("several-images-no-ref", ChoiceNeeded)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    write_docker_archive(archive, [(spec("none"), ["app/a:1"]), (ImageSpec([Layer([File("b", b"b")])]), ["app/b:2"])])
    return Broken(str(archive), ("app/a:1", "app/b:2"))


@case("unknown-tag", NotFoundError)
def _(where: Path) -> Broken:
    archive = where / "image.tar"
    write_docker_archive(archive, spec("none"), tags="app/a:1")
    return Broken(f"{archive}:app/a:2", ("app/a:2", "app/a:1"))


# -- empty and misdirected sources


@case("empty-file", InputError)
def _(where: Path) -> Broken:
    path = where / "empty.tar"
    path.write_bytes(b"")
    return Broken(str(path), (str(path), "empty"))


@case("empty-file-as-docker-archive", InputError)
def _(where: Path) -> Broken:
    path = where / "empty.tar"
    path.write_bytes(b"")
    return Broken(f"docker-archive:{path}", (str(path), "empty"))


@case("tar-without-members", InputError)
def _(where: Path) -> Broken:
    path = where / "empty.tar"
    path.write_bytes(b"\0" * 10240)
    return Broken(str(path), (str(path), "empty"))


@case("gzip-of-tar-without-members", InputError)
def _(where: Path) -> Broken:
    path = where / "empty.tar.gz"
    path.write_bytes(compress(b"\0" * 1024, "gzip"))
    return Broken(str(path), (str(path), "empty"))


@case("archive-without-manifest-or-layout", InputError)
def _(where: Path) -> Broken:
    path = where / "other.tar"
    path.write_bytes(layer_tar(layers("none")[0]))
    return Broken(str(path), (str(path), "manifest.json"))


@case("directory-as-docker-archive", InputError)
def _(where: Path) -> Broken:
    write_oci_layout(where, spec())
    return Broken(f"docker-archive:{where}", (str(where), "directory"))


@case("directory-as-oci-archive", InputError)
def _(where: Path) -> Broken:
    return Broken(f"oci-archive:{where}", (str(where), "directory"))


@case("directory-without-layout", InputError)
def _(where: Path) -> Broken:
    (where / "random-file").write_text("hi")
    return Broken(str(where), (str(where), "oci-layout"))


@case("nonexistent-path", NotFoundError)
def _(where: Path) -> Broken:
    return Broken(str(where / "nope.tar"), (str(where / "nope.tar"),))


@case("nonexistent-docker-archive", NotFoundError)
def _(where: Path) -> Broken:
    return Broken(f"docker-archive:{where / 'nope.tar'}", (str(where / "nope.tar"),))


@case("nonexistent-oci-dir", NotFoundError)
def _(where: Path) -> Broken:
    return Broken(f"oci:{where / 'nope'}", (str(where / "nope"),))


# --------------------------------------------------------------------------- the test


def _case_params() -> list[Any]:
    params = []
    for name, (_, _, xfail) in CASES.items():
        marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def _build(tmp_path: Path, name: str) -> tuple[Broken, type[ConverterError], Path]:
    builder, error, _ = CASES[name]
    where = tmp_path / "src"
    where.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    return builder(where), error, dest


@pytest.mark.parametrize("sink", ["dir", "tar"])
@pytest.mark.parametrize("name", _case_params())
def test_bad_input_fails_cleanly(tmp_path: Path, name: str, sink: str) -> None:
    broken, error, dest = _build(tmp_path, name)
    out = dest / ("rootfs" if sink == "dir" else "rootfs.tar")
    with pytest.raises(ConverterError) as info:
        convert(broken.source, out, flatten=(sink == "tar"), **broken.options)
    exc = info.value
    assert type(exc) is error, f"expected {error.__name__}, got {type(exc).__name__}: {exc}"
    message = str(exc)
    assert message and "\n" not in message
    missing = [needle for needle in broken.needles if needle not in message]
    assert not missing, f"message does not mention {missing}: {message}"
    assert sorted(p.name for p in dest.iterdir()) == [], "output or OUT.partial-* left behind"


@pytest.mark.parametrize("sink", ["dir", "tar"])
def test_failure_leaves_an_existing_output_untouched(tmp_path: Path, sink: str) -> None:
    """With --force, a failed conversion still keeps the previous output as it was."""
    built = write_oci_layout(tmp_path / "src", spec())
    flip(blob_path(tmp_path / "src", built.layer_digests[2]), 5)
    out = tmp_path / "dest" / ("rootfs" if sink == "dir" else "rootfs.tar")
    out.parent.mkdir()
    if sink == "dir":
        out.mkdir()
        (out / "precious").write_bytes(b"keep me")
    else:
        out.write_bytes(b"previous tar")
    with pytest.raises(IntegrityError):
        convert(str(tmp_path / "src"), out, flatten=(sink == "tar"), force=True)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    if sink == "dir":
        assert [p.name for p in out.iterdir()] == ["precious"]
        assert (out / "precious").read_bytes() == b"keep me"
    else:
        assert out.read_bytes() == b"previous tar"


# --------------------------------------------------------------------------- the CLI

CLI_CASES = {
    "digest-gzip-header-byte": 5,
    "missing-layer-blob": 4,
    "manifest-json-not-json": 3,
    "unknown-compression": 3,
    "no-matching-platform": 4,
    "several-images-no-ref": 2,
    "nonexistent-path": 4,
    "layer-path-absolute": 3,
}


def _cli(broken: Broken, out: Path, sink: str, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "converter", "convert", broken.source]
    args += ["-o", str(out)] if sink == "dir" else ["--flatten", str(out)]
    if "platform" in broken.options:
        args += ["--platform", broken.options["platform"]]
    return subprocess.run(args + list(extra), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("sink", ["dir", "tar"])
@pytest.mark.parametrize("name,code", list(CLI_CASES.items()), ids=list(CLI_CASES))
def test_cli_error_is_one_line_with_documented_exit_code(tmp_path: Path, name: str, code: int, sink: str) -> None:
    broken, error, dest = _build(tmp_path, name)
    assert error.exit_code == code and code in EXIT_CODES
    out = dest / ("rootfs" if sink == "dir" else "rootfs.tar")
    result = _cli(broken, out, sink)
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rootfs: error: ")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("name", ["digest-gzip-header-byte", "manifest-json-not-json"])
def test_cli_debug_shows_the_traceback(tmp_path: Path, name: str) -> None:
    broken, error, dest = _build(tmp_path, name)
    result = _cli(broken, dest / "rootfs", "dir", "--debug")
    assert result.returncode == error.exit_code
    assert "Traceback (most recent call last)" in result.stderr
    assert error.__name__ in result.stderr
    assert result.stderr.splitlines()[-1].startswith("rootfs: error: ")
    assert list(dest.iterdir()) == []


def test_cli_stdin_garbage_and_empty(tmp_path: Path) -> None:
    """``-`` with nothing, or with garbage, on a pipe: one line, exit 3."""
    for data in (b"", b"definitely not an image" * 40):
        result = subprocess.run(
            [sys.executable, "-m", "converter", "convert", "-", "-o", str(tmp_path / "out")],
            input=data, capture_output=True, timeout=60,
        )
        assert result.returncode == 3, result.stderr
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rootfs: error: <stdin>"), result.stderr
        assert not (tmp_path / "out").exists()


def test_every_error_class_has_a_documented_exit_code() -> None:
    for cls in (ConverterError, UsageError, InputError, NotFoundError, IntegrityError, UnsafeEntryError):
        assert cls.exit_code in EXIT_CODES


def test_inspect_entries_names_a_corrupt_blob_not_the_garbage_it_parsed(tmp_path: Path) -> None:
    """``rootfs inspect --entries`` parses every layer too: a flip in a header of an
    uncompressed blob is reported as the blob failing its digest, as convert reports it."""
    from converter import inspect

    built = write_oci_layout(tmp_path / "layout", spec("none"))
    flip(blob_path(tmp_path / "layout", built.layer_digests[1]), 3)
    with pytest.raises(IntegrityError, match="layer 2.*digest") as caught:
        inspect(f"oci:{tmp_path / 'layout'}", count_entries=True)
    assert "header" in str(caught.value.__cause__)

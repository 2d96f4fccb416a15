"""Pulling from the real registry (Debian's docker-registry, no auth): references, manifest
types, platforms, errors, streaming with resume, and ``pull`` to disk."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from converter.errors import NotFoundError, OutputError, RegistryError, UsageError
from converter.image import Platform
from converter.registry import RegistryOptions, open_registry_image, pull

from .conftest import Env
from .servers import TcpProxy


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def read_layer(layer) -> bytes:
    with layer.blob.open() as f:
        return f.read()


def blob_files(layout: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir() if not p.name.startswith(".")}


class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __call__(self, event: str, **info) -> None:
        self.events.append((event, info))

    def names(self, event: str) -> list[str]:
        return [i["digest"] for e, i in self.events if e == event]


# ------------------------------------------------------------------------------ open_registry_image


def test_by_tag(env: Env) -> None:
    app = env.images["app"]
    with open_registry_image("docker://" + app.ref) as img:
        assert img.format == "registry"
        assert img.manifest_digest == app.built.manifest_digest
        assert img.config_digest == app.built.config_digest
        assert [l.digest for l in img.layers] == app.built.layer_digests
        assert img.diff_ids == app.built.diff_ids
        assert [l.media_type for l in img.layers] == [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ]
        assert img.platform == Platform("linux", "amd64")
        assert img.config["config"]["Cmd"] == ["/bin/sh"]
        assert img.reference == app.ref
        for layer in img.layers:
            data = read_layer(layer)
            assert len(data) == layer.size
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
            assert layer.blob.where.endswith(f"/v2/test/app/blobs/{layer.digest}")


def test_by_digest(env: Env) -> None:
    app = env.images["app"]
    digest = app.built.manifest_digest
    name = app.ref.rsplit(":", 1)[0]
    for ref in (f"{name}@{digest}", f"{app.ref}@{digest}"):
        with open_registry_image(ref) as img:
            assert img.manifest_digest == digest
            assert [l.digest for l in img.layers] == app.built.layer_digests


def test_unknown_digest_is_not_found(env: Env) -> None:
    name = env.images["app"].ref.rsplit(":", 1)[0]
    with pytest.raises(NotFoundError, match="not found"):
        open_registry_image(f"{name}@sha256:{'0' * 64}")


def test_docker_schema2(env: Env) -> None:
    with open_registry_image(env.images["docker"].ref) as img:
        assert img.manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert [l.media_type for l in img.layers] == ["application/vnd.docker.image.rootfs.diff.tar.gzip"]
        assert img.diff_ids == env.images["docker"].built.diff_ids
        data = read_layer(img.layers[0])
        assert "sha256:" + hashlib.sha256(data).hexdigest() == img.layers[0].digest


@pytest.mark.parametrize(
    "want, arch, marker",
    [
        ("linux/amd64", "amd64", b"amd64\n"),
        ("linux/arm64", "arm64", b"arm64\n"),
        ("linux/arm64/v8", "arm64", b"arm64\n"),
        ("linux/arm/v7", "arm", b"armv7\n"),
    ],
)
def test_platform_selection(env: Env, want: str, arch: str, marker: bytes) -> None:
    multi = env.images["multi"]
    by_platform = {b.platform: b for b in multi.built}
    with open_registry_image(multi.ref, platform=Platform.parse(want)) as img:
        assert img.config["architecture"] == arch
        expected = next(b for p, b in by_platform.items() if Platform.parse(p).matches(Platform.parse(want)))
        assert img.manifest_digest == expected.manifest_digest
        assert img.platform is not None and img.platform.matches(Platform.parse(want))
        tar = tarfile.open(fileobj=io.BytesIO(gzip.decompress(read_layer(img.layers[0]))))
        assert tar.extractfile("etc/arch").read() == marker


def test_default_platform_is_the_host(env: Env) -> None:
    host = Platform.host()
    multi = env.images["multi"]
    offered = [Platform.parse(b.platform) for b in multi.built]
    if not any(p.matches(host) for p in offered):
        with pytest.raises(NotFoundError):
            open_registry_image(multi.ref)
        return
    with open_registry_image(multi.ref) as img:
        assert img.platform.matches(host)


def test_no_matching_platform_lists_choices(env: Env) -> None:
    with pytest.raises(NotFoundError) as e:
        open_registry_image(env.images["multi"].ref, platform=Platform.parse("linux/s390x"))
    msg = str(e.value)
    assert "linux/s390x" in msg
    for p in ("linux/amd64", "linux/arm64/v8", "linux/arm/v7"):
        assert p in msg
    assert "unknown" not in msg  # attestation manifests are not offered


def test_single_manifest_wrong_platform(env: Env) -> None:
    with pytest.raises(NotFoundError, match="linux/amd64"):
        open_registry_image(env.images["app"].ref, platform=Platform.parse("linux/arm64"))


def test_tag_not_found_names_it(env: Env, open_registry) -> None:
    ref = f"{open_registry.host}/test/app:nosuchtag"
    with pytest.raises(NotFoundError) as e:
        open_registry_image(ref)
    assert "test/app:nosuchtag" in str(e.value)
    assert "\n" not in str(e.value)


def test_repository_not_found_names_it(open_registry) -> None:
    with pytest.raises(NotFoundError) as e:
        open_registry_image(f"{open_registry.host}/no/such/repo:v1")
    assert "no/such/repo" in str(e.value)


def test_unreachable_registry() -> None:
    from .servers import free_port

    with pytest.raises(RegistryError, match="cannot reach"):
        open_registry_image(f"127.0.0.1:{free_port()}/x:y", options=RegistryOptions(retries=1, timeout=2))


# ------------------------------------------------------------------------------ resume


def test_resume_after_dropped_connection(env: Env, cutting_proxy: TcpProxy) -> None:
    app = env.images["app"]
    ref = f"{cutting_proxy.netloc}/test/app:v1"
    events = Events()
    with open_registry_image(ref, options=RegistryOptions(progress=events)) as img:
        big = img.layers[0]
        assert big.size > 300_000
        # the response to the blob request: headers + ~100 kB of the body, then the connection dies
        cutting_proxy.cut_response_to(big.digest.encode(), 100_000)
        data = read_layer(big)
    assert len(data) == big.size
    assert "sha256:" + hashlib.sha256(data).hexdigest() == big.digest == app.built.layer_digests[0]
    assert cutting_proxy.range_requests == 1
    resumes = [i for e, i in events.events if e == "blob-resume"]
    assert len(resumes) == 1 and 90_000 < resumes[0]["offset"] < 100_000
    assert events.names("blob-start") == [big.digest] and events.names("blob-done") == [big.digest]
    assert sum(i["n"] for e, i in events.events if e == "blob-bytes") == big.size


def test_resume_gives_up_after_retries(env: Env, cutting_proxy: TcpProxy) -> None:
    ref = f"{cutting_proxy.netloc}/test/app:v1"
    with open_registry_image(ref, options=RegistryOptions(retries=1)) as img:
        cutting_proxy.cut_response_to(img.layers[0].digest.encode(), 50_000, times=5)
        with pytest.raises(RegistryError) as e:
            read_layer(img.layers[0])
    assert "download failed" in str(e.value) and img.layers[0].digest in str(e.value)
    assert cutting_proxy.cuts == 2  # the first try and one resume


# ------------------------------------------------------------------------------ pull to disk


def test_pull_oci_then_open_locally(env: Env, tmp_path: Path) -> None:
    from converter.sources import open_image

    app = env.images["app"]
    layout = tmp_path / "layout"
    events = Events()
    result = pull(app.ref, f"oci:{layout}", options=RegistryOptions(progress=events))
    assert result.manifest_digest == app.built.manifest_digest
    assert result.ref_name == "v1"
    assert result.blobs_fetched == 3 and result.blobs_skipped == 0
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["digest"] == app.built.manifest_digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    # exactly the registry's bytes, content-addressed: the same blobs as the pushed layout
    assert blob_files(layout) == blob_files(app.layout)
    for d in blob_files(layout):
        assert sha256_file(layout / "blobs" / "sha256" / d[7:]) == d
    assert not [p for p in (layout / "blobs" / "sha256").iterdir() if p.name.startswith(".")]
    assert sorted(events.names("blob-start")) == sorted([app.built.config_digest, *app.built.layer_digests])

    with open_image(f"oci:{layout}:v1") as local, open_registry_image(app.ref) as remote:
        assert local.manifest_digest == remote.manifest_digest
        assert local.config == remote.config
        assert [l.digest for l in local.layers] == [l.digest for l in remote.layers]
        assert local.diff_ids == remote.diff_ids
        for a, b in zip(local.layers, remote.layers):
            assert read_layer(a) == read_layer(b)


def test_pull_reuses_blobs(env: Env, tmp_path: Path) -> None:
    app = env.images["app"]
    layout = tmp_path / "layout"
    pull(app.ref, f"oci:{layout}")
    events = Events()
    again = pull(app.ref, f"oci:{layout}", options=RegistryOptions(progress=events))
    assert again.blobs_fetched == 0 and again.blobs_skipped == 3 and again.bytes_fetched == 0
    assert events.names("blob-start") == []
    # another image sharing every blob, under another name: nothing downloaded, both kept
    other = env.images["private"]
    shared = pull(other.ref, f"oci:{layout}:second")
    assert shared.blobs_fetched == 0
    names = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in json.loads((layout / "index.json").read_text())["manifests"]}
    assert names == {"v1": app.built.manifest_digest, "second": other.built.manifest_digest}
    # a re-pull under an existing name replaces that entry only
    pull(env.images["docker"].ref, f"oci:{layout}:second")
    names = {m["annotations"]["org.opencontainers.image.ref.name"] for m in json.loads((layout / "index.json").read_text())["manifests"]}
    assert names == {"v1", "second"}


def test_pull_replaces_a_corrupt_blob(env: Env, tmp_path: Path) -> None:
    app = env.images["app"]
    layout = tmp_path / "layout"
    pull(app.ref, f"oci:{layout}")
    victim = layout / "blobs" / "sha256" / app.built.layer_digests[1][7:]
    victim.write_bytes(b"garbage")
    result = pull(app.ref, f"oci:{layout}")
    assert result.blobs_fetched == 1 and result.blobs_skipped == 2
    assert sha256_file(victim) == app.built.layer_digests[1]


def test_interrupted_pull_leaves_no_partial_blob(env: Env, cutting_proxy: TcpProxy, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    big = env.images["app"].built.layer_digests[0]
    cutting_proxy.cut_response_to(big.encode(), 50_000)
    with pytest.raises(RegistryError, match="download failed"):
        pull(f"{cutting_proxy.netloc}/test/app:v1", f"oci:{layout}", options=RegistryOptions(retries=0))
    assert cutting_proxy.cuts == 1
    assert not (layout / "blobs" / "sha256" / big[7:]).exists()
    assert not [p for p in (layout / "blobs" / "sha256").iterdir() if p.name.startswith(".")]
    assert not (layout / "index.json").exists()


def test_pull_all_platforms(env: Env, tmp_path: Path) -> None:
    multi = env.images["multi"]
    layout = tmp_path / "layout"
    result = pull(multi.ref, f"oci:{layout}", all_platforms=True)
    index_digest = multi.built[0].index_digest
    assert result.manifest_digest == index_digest
    assert sorted(result.platforms) == ["linux/amd64", "linux/arm/v7", "linux/arm64/v8"]
    [entry] = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == index_digest and entry["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert blob_files(layout) == blob_files(multi.layout)  # attestations included


def test_pull_one_platform_of_an_index(env: Env, tmp_path: Path) -> None:
    from converter.sources import open_image

    multi = env.images["multi"]
    arm = next(b for b in multi.built if b.platform == "linux/arm64/v8")
    layout = tmp_path / "layout"
    result = pull(multi.ref, f"oci:{layout}:arm", platform=Platform.parse("linux/arm64"))
    assert result.manifest_digest == arm.manifest_digest
    assert result.platforms == ["linux/arm64/v8"]
    [entry] = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == arm.manifest_digest
    assert entry["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert blob_files(layout) == {arm.manifest_digest, arm.config_digest, *arm.layer_digests}
    with open_image(f"oci:{layout}:arm") as img:
        assert img.manifest_digest == arm.manifest_digest


def test_pull_docker_archive(env: Env, tmp_path: Path) -> None:
    from converter.sources import open_image

    app = env.images["app"]
    out = tmp_path / "app.tar"
    result = pull(app.ref, f"docker-archive:{out}")
    assert result.format == "docker-archive" and result.blobs_fetched == 2
    assert result.ref_name == app.ref
    with tarfile.open(out) as tar:
        names = tar.getnames()
        [manifest] = json.load(tar.extractfile("manifest.json"))
        assert manifest["RepoTags"] == [app.ref]
        assert manifest["Config"] == app.built.config_digest[7:] + ".json"
        assert "sha256:" + hashlib.sha256(tar.extractfile(manifest["Config"]).read()).hexdigest() == app.built.config_digest
        assert manifest["Layers"] == [d[7:] + ".tar" for d in app.built.diff_ids]
        for name, diff_id in zip(manifest["Layers"], app.built.diff_ids):
            data = tar.extractfile(name).read()  # stored decompressed: a plain tar
            assert "sha256:" + hashlib.sha256(data).hexdigest() == diff_id
            assert data[257:262] == b"ustar"
        assert json.load(tar.extractfile("repositories")) == {app.ref.rsplit(":", 1)[0]: {"v1": app.built.diff_ids[-1][7:]}}
    assert sorted(names) == sorted(["manifest.json", "repositories", manifest["Config"], *manifest["Layers"]])
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    with open_image(f"docker-archive:{out}") as img:
        assert img.diff_ids == app.built.diff_ids
        assert img.config_digest == app.built.config_digest


def test_pull_docker_archive_with_name(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "named.tar"
    pull(env.images["app"].ref, f"docker-archive:{out}:example/app:2.0")
    with tarfile.open(out) as tar:
        assert json.load(tar.extractfile("manifest.json"))[0]["RepoTags"] == ["example/app:2.0"]


def test_pull_keeps_an_existing_file_unless_forced(env: Env, tmp_path: Path) -> None:
    """Found by a review: pull replaced an existing file silently (convert refuses, exit 8)."""
    from converter.sources import open_image

    out = tmp_path / "precious.tar"
    out.write_bytes(b"someone's data")
    with pytest.raises(OutputError, match="exists .use --force"):
        pull(env.images["app"].ref, f"docker-archive:{out}")
    assert out.read_bytes() == b"someone's data"
    pull(env.images["app"].ref, f"docker-archive:{out}", force=True)
    with open_image(f"docker-archive:{out}") as img:
        assert img.layers
    with pytest.raises(UsageError, match="pull writes a file"):
        pull(env.images["app"].ref, "docker-archive:-")


def test_interrupted_docker_archive_leaves_nothing(env: Env, cutting_proxy: TcpProxy, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "app.tar"
    big = env.images["app"].built.layer_digests[0]
    cutting_proxy.cut_response_to(big.encode(), 50_000)
    with pytest.raises(RegistryError, match="download failed"):
        pull(f"{cutting_proxy.netloc}/test/app:v1", f"docker-archive:{out}", options=RegistryOptions(retries=0))
    assert cutting_proxy.cuts == 1
    assert list(outdir.iterdir()) == []


def test_destination_errors(env: Env, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        pull(env.images["app"].ref, f"dir:{tmp_path}")
    with pytest.raises(UsageError, match="all-platforms"):
        pull(env.images["multi"].ref, f"docker-archive:{tmp_path / 'x.tar'}", all_platforms=True)
    (tmp_path / "notalayout").mkdir()
    (tmp_path / "notalayout" / "file").write_text("x")
    from converter.errors import OutputError

    with pytest.raises(OutputError, match="not an OCI layout"):
        pull(env.images["app"].ref, f"oci:{tmp_path / 'notalayout'}")


def test_pulled_files_satisfy_skopeo(env: Env, tmp_path: Path) -> None:
    """An independent reader accepts both destinations (skopeo checks the diff_ids of a
    docker-archive's layers and the digests of an OCI layout's blobs when it copies)."""
    import subprocess

    app = env.images["app"]
    pull(app.ref, f"docker-archive:{tmp_path / 'a.tar'}")
    pull(app.ref, f"oci:{tmp_path / 'layout'}:mytag")
    for src, dst in ((f"docker-archive:{tmp_path / 'a.tar'}", "from-archive"), (f"oci:{tmp_path / 'layout'}:mytag", "from-layout")):
        proc = subprocess.run(["skopeo", "copy", "--insecure-policy", "--quiet", src, f"oci:{tmp_path / dst}:x"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    diff_ids = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"docker-archive:{tmp_path / 'a.tar'}"],
                                         capture_output=True, text=True, check=True, timeout=60).stdout)["rootfs"]["diff_ids"]
    assert diff_ids == app.built.diff_ids


def test_pull_of_a_missing_image_creates_nothing(open_registry, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        pull(f"{open_registry.host}/test/app:nope", f"oci:{tmp_path / 'layout'}")
    with pytest.raises(NotFoundError):
        pull(f"{open_registry.host}/test/app:nope", f"docker-archive:{tmp_path / 'a.tar'}")
    assert not (tmp_path / "layout").exists() and not (tmp_path / "a.tar").exists()

"""Reference parsing: Docker's normalisation rules (no registry needed)."""

from __future__ import annotations

import pytest

from converter.errors import UsageError
from converter.registry.reference import parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, registry, repository, tag, digest",
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("docker://alpine:3.19", "docker.io", "library/alpine", "3.19", None),
        ("user/app", "docker.io", "user/app", "latest", None),
        ("index.docker.io/library/alpine", "docker.io", "library/alpine", "latest", None),
        ("docker.io/alpine", "docker.io", "library/alpine", "latest", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("localhost:5000/x/y:t", "localhost:5000", "x/y", "t", None),
        ("127.0.0.1:5000/a", "127.0.0.1:5000", "a", "latest", None),
        ("[::1]:5000/a:b", "[::1]:5000", "a", "b", None),
        ("ghcr.io/o/r/sub@" + D, "ghcr.io", "o/r/sub", None, D),
        ("quay.io/a/b:v1@" + D, "quay.io", "a/b", "v1", D),
        ("registry.example.com/a__b/c-d.e:Tag_1.0", "registry.example.com", "a__b/c-d.e", "Tag_1.0", None),
    ],
)
def test_parse(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    r = parse_reference(text)
    assert (r.registry, r.repository, r.tag, r.digest) == (registry, repository, tag, digest)


def test_hub_api_host_and_names() -> None:
    r = parse_reference("alpine")
    assert r.api_host == "registry-1.docker.io"
    assert str(r) == "docker.io/library/alpine:latest"
    assert r.familiar_name == "alpine"
    assert parse_reference("user/app").familiar_name == "user/app"
    local = parse_reference("localhost:5000/x@" + D)
    assert local.api_host == "localhost:5000"
    assert local.manifest_ref == D
    assert local.is_loopback
    assert parse_reference("[::1]:5000/a").is_loopback
    assert not parse_reference("example.com/a").is_loopback


@pytest.mark.parametrize(
    "text",
    ["", "docker://", "Alpine", "user/App:1", "a:b:c", "x@sha256:zz", "x@md5:" + "0" * 32, "x:" + "t" * 129, "a//b", "-a/b", "host:port/x"],
)
def test_invalid(text: str) -> None:
    with pytest.raises(UsageError):
        parse_reference(text)

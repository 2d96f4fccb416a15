"""Behaviour the real registry will not show on demand, against small fake servers:
schema 1 manifests, lying digests, redirects to another host, foreign layers, injected
5xx/429 failures, servers that ignore ``Range``, nested indexes."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest

from converter.errors import InputError, IntegrityError, NotFoundError, RegistryError
from converter.image import Platform
from converter.registry import RegistryOptions, open_registry_image, pull
from converter.testing.imagegen import File, ImageSpec, Layer, write_oci_layout

from .conftest import AMD64, ARM64
from .servers import FakeServer, sha256

IMAGE = ImageSpec(layers=[Layer(entries=[File("a", random.Random(3).randbytes(20_000))], compression="gzip")])


def serve_layout(fake: FakeServer, layout: Path, repo: str, tag: str) -> dict:
    """Serve an OCI layout as a registry would: every blob, every manifest by digest, and
    the tag pointing at ``index.json``'s entry."""
    for blob in (layout / "blobs" / "sha256").iterdir():
        data = blob.read_bytes()
        digest = "sha256:" + blob.name
        fake.add_blob(repo, digest, data)
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("schemaVersion") == 2 and ("manifests" in doc or "layers" in doc):
            fake.add_manifest(repo, digest, data, doc.get("mediaType", "application/vnd.oci.image.manifest.v1+json"), digest_header=digest)
    [top] = json.loads((layout / "index.json").read_text())["manifests"]
    data = (layout / "blobs" / "sha256" / top["digest"][7:]).read_bytes()
    fake.add_manifest(repo, tag, data, top["mediaType"], digest_header=top["digest"])
    return top


@pytest.fixture
def simple(fake: FakeServer, tmp_path: Path):
    built = write_oci_layout(tmp_path / "layout", IMAGE, ref="v1")
    serve_layout(fake, tmp_path / "layout", "x/app", "v1")
    return built


def test_fake_serves_a_valid_image(fake: FakeServer, simple) -> None:
    with open_registry_image(f"{fake.netloc}/x/app:v1") as img:
        assert img.manifest_digest == simple.manifest_digest
        with img.layers[0].blob.open() as f:
            assert sha256(f.read()) == simple.layer_digests[0]


@pytest.mark.parametrize("ctype", ["application/vnd.docker.distribution.manifest.v1+prettyjws", "application/json"])
def test_schema1_refused(fake: FakeServer, ctype: str) -> None:
    body = json.dumps({"schemaVersion": 1, "name": "x/old", "tag": "v1", "architecture": "amd64",
                       "fsLayers": [{"blobSum": "sha256:" + "a" * 64}], "history": [{"v1Compatibility": "{}"}]}).encode()
    fake.add_manifest("x/old", "v1", body, ctype)
    with pytest.raises(InputError) as e:
        open_registry_image(f"{fake.netloc}/x/old:v1")
    assert "schema 1" in str(e.value)
    assert fake.requests[-1]["headers"]["accept"].count("application/vnd.oci.image.index.v1+json") == 1


def test_pinned_digest_mismatch(fake: FakeServer, simple) -> None:
    good = fake.routes[f"/v2/x/app/manifests/{simple.manifest_digest}"]
    wrong = "sha256:" + "1" * 64
    fake.routes[f"/v2/x/app/manifests/{wrong}"] = good  # a registry answering with other bytes
    with pytest.raises(IntegrityError, match="requested digest"):
        open_registry_image(f"{fake.netloc}/x/app@{wrong}")
    with open_registry_image(f"{fake.netloc}/x/app@{simple.manifest_digest}") as img:
        assert img.manifest_digest == simple.manifest_digest


def test_content_digest_header_mismatch(fake: FakeServer, simple) -> None:
    status, headers, body = fake.routes["/v2/x/app/manifests/v1"]
    fake.routes["/v2/x/app/manifests/v1"] = (status, {**headers, "Docker-Content-Digest": "sha256:" + "2" * 64}, body)
    with pytest.raises(IntegrityError, match="Docker-Content-Digest"):
        open_registry_image(f"{fake.netloc}/x/app:v1")


def test_config_digest_mismatch(fake: FakeServer, simple) -> None:
    fake.add_blob("x/app", simple.config_digest, b'{"rootfs": {"diff_ids": []}}')
    with pytest.raises(IntegrityError, match="config"):
        open_registry_image(f"{fake.netloc}/x/app:v1")


def test_retries_on_5xx_and_429(fake: FakeServer, simple) -> None:
    fake.fail["/v2/x/app/manifests/v1"] = [503, 429, 500]
    fake.fail[f"/v2/x/app/blobs/{simple.config_digest}"] = [502]
    with open_registry_image(f"{fake.netloc}/x/app:v1") as img:
        assert img.manifest_digest == simple.manifest_digest
    assert fake.fail["/v2/x/app/manifests/v1"] == []


def test_retries_are_bounded(fake: FakeServer, simple) -> None:
    fake.fail["/v2/x/app/manifests/v1"] = [503] * 10
    with pytest.raises(RegistryError) as e:
        open_registry_image(f"{fake.netloc}/x/app:v1", options=RegistryOptions(retries=2))
    assert "HTTP 503" in str(e.value) and "3 attempts" in str(e.value)
    assert len(fake.fail["/v2/x/app/manifests/v1"]) == 7


def test_credentials_not_sent_across_redirect(fake: FakeServer, fake_other_host: FakeServer, simple) -> None:
    """Blob storage redirects are common: the registry host gets the credentials, the
    storage host (another address) never does, even for a same-port-looking URL."""
    fake.require_basic = ("alice", "secret")
    layer = simple.layer_digests[0]
    path = f"/v2/x/app/blobs/{layer}"
    fake_other_host.routes["/storage/layer"] = fake.routes[path]
    fake.routes[path] = (307, {"Location": f"{fake_other_host.url}/storage/layer?sig=abc"}, b"")
    with open_registry_image(f"{fake.netloc}/x/app:v1", options=RegistryOptions(creds="alice:secret")) as img:
        with img.layers[0].blob.open() as f:
            assert sha256(f.read()) == layer
    assert [r["path"] for r in fake_other_host.requests] == ["/storage/layer"]
    assert "authorization" not in fake_other_host.requests[0]["headers"]
    blob_reqs = [r for r in fake.requests if r["path"] == path]
    assert blob_reqs and all(r["headers"].get("authorization") for r in blob_reqs[-1:])


def test_redirect_resume_goes_back_to_the_registry(fake: FakeServer, fake_other_host: FakeServer, simple) -> None:
    """A resumed download asks the registry again (a signed storage URL may have expired)."""
    layer = simple.layer_digests[0]
    path = f"/v2/x/app/blobs/{layer}"
    _, _, body = fake.routes[path]
    served = []

    def flaky(handler):
        rng = handler.headers.get("Range")
        served.append(rng)
        if rng is None:  # first try: promise everything, send half, hang up
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)
            return None
        start = int(rng.split("=")[1].rstrip("-"))
        return (206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}, body[start:])

    fake_other_host.routes["/s"] = flaky
    fake.routes[path] = (307, {"Location": f"{fake_other_host.url}/s"}, b"")
    with open_registry_image(f"{fake.netloc}/x/app:v1") as img:
        with img.layers[0].blob.open() as f:
            assert sha256(f.read()) == layer
    assert served == [None, f"bytes={len(body) // 2}-"]
    assert len([r for r in fake.requests if r["path"] == path]) == 2


def test_server_ignoring_range(fake: FakeServer, simple) -> None:
    layer = simple.layer_digests[0]
    path = f"/v2/x/app/blobs/{layer}"
    _, _, body = fake.routes[path]
    calls = []

    def no_range(handler):
        calls.append(handler.headers.get("Range"))
        if len(calls) == 1:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body[:1000])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)
            return None
        return (200, {}, body)  # Range ignored: the whole blob again

    fake.routes[path] = no_range
    with open_registry_image(f"{fake.netloc}/x/app:v1") as img:
        with img.layers[0].blob.open() as f:
            data = f.read()
    assert sha256(data) == layer and len(data) == len(body)
    assert calls == [None, "bytes=1000-"]


def test_foreign_layer_urls_get_no_credentials(fake: FakeServer, fake_other_host: FakeServer, tmp_path: Path) -> None:
    built = write_oci_layout(tmp_path / "layout", IMAGE, ref="v1")
    layer = built.layer_digests[0]
    blob = (tmp_path / "layout" / "blobs" / "sha256" / layer[7:]).read_bytes()
    fake_other_host.routes["/foreign/layer.tar.gz"] = (200, {}, blob)
    manifest = json.loads((tmp_path / "layout" / "blobs" / "sha256" / built.manifest_digest[7:]).read_bytes())
    manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    manifest["layers"][0]["urls"] = [f"{fake_other_host.url}/foreign/layer.tar.gz"]
    body = json.dumps(manifest).encode()
    fake.add_manifest("x/win", "v1", body, "application/vnd.oci.image.manifest.v1+json")
    fake.add_blob("x/win", built.config_digest, (tmp_path / "layout" / "blobs" / "sha256" / built.config_digest[7:]).read_bytes())
    fake.require_basic = ("alice", "secret")
    with open_registry_image(f"{fake.netloc}/x/win:v1", options=RegistryOptions(creds="alice:secret")) as img:
        assert img.layers[0].urls == (f"{fake_other_host.url}/foreign/layer.tar.gz",)
        assert img.layers[0].blob.where == img.layers[0].urls[0]
        with img.layers[0].blob.open() as f:
            assert sha256(f.read()) == layer
    assert "authorization" not in fake_other_host.requests[0]["headers"]
    assert not [r for r in fake.requests if r["path"].endswith(layer)]
    # the URL failing, the registry is the fallback
    fake_other_host.routes.clear()
    fake.add_blob("x/win", layer, blob)
    with open_registry_image(f"{fake.netloc}/x/win:v1", options=RegistryOptions(creds="alice:secret")) as img:
        with img.layers[0].blob.open() as f:
            assert sha256(f.read()) == layer


def test_nested_index(fake: FakeServer, tmp_path: Path) -> None:
    built = write_oci_layout(tmp_path / "layout", [(AMD64, "v1"), (ARM64, None)], index="nested", attestations=True)
    serve_layout(fake, tmp_path / "layout", "x/nested", "v1")
    arm = next(b for b in built if b.platform == "linux/arm64/v8")
    with open_registry_image(f"{fake.netloc}/x/nested:v1", platform=Platform.parse("linux/arm64")) as img:
        assert img.manifest_digest == arm.manifest_digest
    with pytest.raises(NotFoundError, match=r"available: linux/amd64, linux/arm64/v8\)"):
        open_registry_image(f"{fake.netloc}/x/nested:v1", platform=Platform.parse("linux/ppc64le"))
    out = tmp_path / "pulled"
    result = pull(f"{fake.netloc}/x/nested:v1", f"oci:{out}", all_platforms=True)
    assert result.manifest_digest == built[0].index_digest
    assert {p.name for p in (out / "blobs" / "sha256").iterdir()} == {p.name for p in (tmp_path / "layout" / "blobs" / "sha256").iterdir()}


def test_docker_manifest_list(fake: FakeServer, tmp_path: Path) -> None:
    built = write_oci_layout(tmp_path / "layout", [(AMD64, "v1"), (ARM64, None)], index="multiarch", docker_media_types=True)
    top = serve_layout(fake, tmp_path / "layout", "x/list", "v1")
    assert top["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    with open_registry_image(f"{fake.netloc}/x/list:v1", platform=Platform.parse("linux/amd64")) as img:
        assert img.manifest_digest == built[0].manifest_digest
        assert img.manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"


def test_not_a_container_image(fake: FakeServer) -> None:
    cfg = b"{}"
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": sha256(cfg), "size": 2}, "layers": []}
    fake.add_manifest("x/chart", "v1", json.dumps(manifest).encode(), manifest["mediaType"])
    with pytest.raises(InputError, match="not a container image"):
        open_registry_image(f"{fake.netloc}/x/chart:v1")


def test_registry_without_v2_api(fake: FakeServer) -> None:
    with pytest.raises(NotFoundError, match="x/none:v1"):
        open_registry_image(f"{fake.netloc}/x/none:v1")


def test_no_credentials_to_a_plain_http_realm(fake: FakeServer) -> None:
    def challenge(handler):
        return (401, {"WWW-Authenticate": 'Bearer realm="http://auth.example.invalid/token",service="s"'}, b"")

    fake.routes["/v2/x/app/manifests/v1"] = challenge
    with pytest.raises(RegistryError, match="refusing to send credentials .* plain-HTTP token realm"):
        open_registry_image(f"{fake.netloc}/x/app:v1", options=RegistryOptions(creds="alice:secret"))


def test_token_realm_on_another_host(fake: FakeServer, fake_other_host: FakeServer, simple) -> None:
    """The registry names its token service: credentials go there (that is the protocol),
    the token goes to the registry, and neither goes anywhere else."""
    calls = []

    def token(handler):
        calls.append(handler.headers.get("Authorization"))
        return (200, {"Content-Type": "application/json"}, b'{"token": "tok-1", "expires_in": 300}')

    fake_other_host.routes["/token"] = token
    for path, route in list(fake.routes.items()):
        def guarded(handler, route=route):
            if handler.headers.get("Authorization") != "Bearer tok-1":
                return (401, {"WWW-Authenticate": f'Bearer realm="{fake_other_host.url}/token",service="fake",scope="repository:x/app:pull"'}, b"")
            return route
        fake.routes[path] = guarded
    with open_registry_image(f"{fake.netloc}/x/app:v1", options=RegistryOptions(creds="alice:secret")) as img:
        with img.layers[0].blob.open() as f:
            assert sha256(f.read()) == simple.layer_digests[0]
    assert calls == ["Basic " + base64.b64encode(b"alice:secret").decode()]
    [tok] = fake_other_host.requests
    assert tok["query"] == {"service": ["fake"], "scope": ["repository:x/app:pull"]}
    assert all(r["headers"].get("authorization") in (None, "Bearer tok-1") for r in fake.requests)


def test_missing_blob_names_it(fake: FakeServer, simple) -> None:
    layer = simple.layer_digests[0]
    del fake.routes[f"/v2/x/app/blobs/{layer}"]
    with open_registry_image(f"{fake.netloc}/x/app:v1") as img:
        with pytest.raises(NotFoundError) as e:
            with img.layers[0].blob.open() as f:
                f.read()
    assert layer in str(e.value) and "x/app:v1: layer 1" in str(e.value) and "BLOB_UNKNOWN" in str(e.value)


def test_forbidden(fake: FakeServer, simple) -> None:
    fake.routes["/v2/x/app/manifests/v1"] = (403, {"Content-Type": "application/json"},
                                             b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}')
    with pytest.raises(RegistryError) as e:
        open_registry_image(f"{fake.netloc}/x/app:v1", options=RegistryOptions(creds="bob:pw"))
    msg = str(e.value)
    assert msg.startswith(f"access denied to {fake.netloc}/x/app for user bob")
    assert "DENIED" in msg and "pw" not in msg.replace("for user bob", "")


# ----------------------------------------------------------------- hostile registries
# (found by an audit with a raw-socket registry: each ended with exit 70, one printing
# the token, or held memory or the run without bound)


@pytest.mark.parametrize("what", ["manifest", "config"])
def test_json_nested_too_deeply_is_bad_input(fake: FakeServer, simple, what: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    if what == "manifest":
        fake.add_manifest("x/app", "v1", deep, "application/vnd.oci.image.manifest.v1+json")
    else:
        fake.add_blob("x/app", simple.config_digest, deep)  # (its digest no longer matches: that is checked first)
        fake.routes[f"/v2/x/app/blobs/{simple.config_digest}"] = (200, {}, deep)
    with pytest.raises((InputError, IntegrityError)) as e:
        open_registry_image(f"{fake.netloc}/x/app:v1")
    assert what in str(e.value)


def test_deeply_nested_json_in_an_error_body_is_only_shown_cut(fake: FakeServer) -> None:
    fake.routes["/v2/x/app/manifests/v1"] = (404, {"Content-Type": "application/json"}, b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(NotFoundError) as e:
        open_registry_image(f"{fake.netloc}/x/app:v1")
    assert len(str(e.value)) < 400


def _bearer(fake: FakeServer, token: str) -> None:
    """Every /v2/ request needs a bearer token, which /token hands out."""
    realm = f'Bearer realm="{fake.url}/token",service="fake"'

    def v2(handler) -> tuple:
        if handler.headers.get("Authorization") == "Bearer ok":
            return (200, {}, b"{}")
        return (401, {"WWW-Authenticate": realm}, b"")

    fake.routes["/v2/"] = v2
    fake.routes["/v2/x/app/manifests/v1"] = v2
    fake.routes["/token"] = (200, {"Content-Type": "application/json"}, json.dumps({"token": token}).encode())


@pytest.mark.parametrize("token", ["SECRET\r\nX-Injected: 1", "SECRET-\u00e9t\u00e9", "SECRET with spaces"])
def test_a_token_no_header_can_carry_is_refused_and_never_shown(fake: FakeServer, token: str) -> None:
    _bearer(fake, token)
    with pytest.raises(RegistryError) as e:
        open_registry_image(f"{fake.netloc}/x/app:v1")
    assert "malformed" in str(e.value) and "SECRET" not in str(e.value)


@pytest.mark.parametrize("location", ["http://[::1/x", "http://127.0.0.1:1/caf\u00e9", "http://" + "a" * 64 + ".example/x"])
def test_a_redirect_to_an_unusable_address_is_a_registry_error(fake: FakeServer, simple, location: str) -> None:
    fake.routes[f"/v2/x/app/blobs/{simple.config_digest}"] = (307, {"Location": location}, b"")
    with pytest.raises(RegistryError, match="an address or a credential that cannot be used"):
        open_registry_image(f"{fake.netloc}/x/app:v1")


def test_a_nested_index_listed_many_times_is_fetched_once(fake: FakeServer, tmp_path: Path) -> None:
    built = write_oci_layout(tmp_path / "layout", [(AMD64, "v1"), (ARM64, None)], index="nested")
    top = serve_layout(fake, tmp_path / "layout", "x/nested", "v1")
    doc = json.loads((tmp_path / "layout" / "blobs" / "sha256" / top["digest"][7:]).read_bytes())
    nested = [m for m in doc["manifests"] if "index" in m["mediaType"]]
    assert nested
    doc["manifests"] = nested * 12
    fake.add_manifest("x/nested", "v1", json.dumps(doc).encode(), top["mediaType"])
    with open_registry_image(f"{fake.netloc}/x/nested:v1", platform=Platform.parse("linux/amd64")) as img:
        assert img.manifest_digest == built[0].manifest_digest
    assert sum(r["path"] == f"/v2/x/nested/manifests/{nested[0]['digest']}" for r in fake.requests) == 1


@pytest.mark.parametrize("what", ["manifest", "layer"])
def test_a_response_that_drips_is_given_up_as_stalled(fake: FakeServer, simple, what: str) -> None:
    """A byte now and then never trips the timeout of each read: under 1 KiB/s for a whole
    timeout is a stall, retried like a timeout and then a registry error."""
    import time

    from .servers import HANDLED

    path = "/v2/x/app/manifests/v1" if what == "manifest" else f"/v2/x/app/blobs/{simple.layer_digests[0]}"
    status, headers, body = fake.routes[path]

    def drip(handler) -> object:
        handler.send_response(status)
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            for i in range(len(body)):
                handler.wfile.write(body[i:i + 1])
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # (the client gave up)
        return HANDLED

    fake.routes[path] = drip
    with pytest.raises(RegistryError, match="stalled"):
        with open_registry_image(f"{fake.netloc}/x/app:v1", options=RegistryOptions(timeout=1.0, retries=1)) as img:
            with img.layers[0].blob.open() as f:
                f.read()


@pytest.mark.parametrize("what", ["manifest", "layer"])
def test_a_server_that_says_nothing_gets_one_more_chance_not_five(fake: FakeServer, simple, what: str) -> None:
    """A registry that accepts the request and never answers: each attempt waits a whole
    timeout, so a timeout spends three of the retries (six 30 s waits made three minutes
    before the error); errors that fail fast keep the whole budget."""
    import threading

    from converter.registry import client as client_mod

    from .servers import HANDLED

    path = "/v2/x/app/manifests/v1" if what == "manifest" else f"/v2/x/app/blobs/{simple.layer_digests[0]}"
    released = threading.Event()

    def silent(handler) -> object:
        released.wait(10)  # (the client gives up long before)
        return HANDLED

    answer = fake.routes[path]
    fake.routes[path] = silent
    try:
        with pytest.raises(RegistryError):
            with open_registry_image(f"{fake.netloc}/x/app:v1", options=RegistryOptions(timeout=0.5, retries=5)) as img:
                with img.layers[0].blob.open() as f:
                    f.read()
    finally:
        released.set()
    assert sum(r["path"] == path for r in fake.requests) == 2
    assert client_mod.retry_cost(ConnectionResetError()) == 1 and client_mod.retry_cost(client_mod.Stalled()) == 3
    import socket

    assert client_mod.retry_cost(socket.gaierror(-2, "Name or service not known")) > 100  # (never retried)
    fake.routes[path] = answer
    fake.requests.clear()
    fake.fail[path] = [503] * 5  # fast failures: all five retries, then it works
    with open_registry_image(f"{fake.netloc}/x/app:v1", options=RegistryOptions(timeout=5, retries=5)) as img:
        with img.layers[0].blob.open() as f:
            assert f.read()
    assert sum(r["path"] == path for r in fake.requests) == 6

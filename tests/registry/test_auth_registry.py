"""Authentication and transport against the real registry: htpasswd Basic, bearer tokens
from a real token issuer (anonymous, with credentials, identity token, expired token),
credentials from every source, TLS with CA and client certificates, proxies."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from converter.errors import RegistryError
from converter.registry import RegistryOptions, open_registry_image, pull
from converter.registry import client as client_mod

from .conftest import Env, TokenSetup
from .servers import RegistryProcess, TcpProxy
from .test_auth_unit import write_helper


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def check_image(ref: str, env: Env, **kw) -> None:
    with open_registry_image(ref, **kw) as img:
        assert img.manifest_digest == env.images["app"].built.manifest_digest
        with img.layers[1].blob.open() as f:
            assert len(f.read()) == img.layers[1].size


def docker_config(content: dict) -> Path:
    d = Path(os.environ["HOME"]) / ".docker"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(content))
    return d / "config.json"


# ------------------------------------------------------------------------------ anonymous


def test_anonymous_open_registry(env: Env) -> None:
    check_image(env.images["app"].ref, env)


# ------------------------------------------------------------------------------ basic


def test_basic_with_creds(env: Env, basic_registry: RegistryProcess) -> None:
    check_image(f"{basic_registry.host}/test/app:v1", env, options=RegistryOptions(creds="alice:wonderland"))


def test_basic_without_creds(basic_registry: RegistryProcess) -> None:
    with pytest.raises(RegistryError) as e:
        open_registry_image(f"{basic_registry.host}/test/app:v1")
    msg = str(e.value)
    assert msg.startswith(f"authentication required for {basic_registry.host}/test/app")
    assert "--creds" in msg and "\n" not in msg


def test_basic_wrong_password(basic_registry: RegistryProcess) -> None:
    with pytest.raises(RegistryError) as e:
        open_registry_image(f"{basic_registry.host}/test/app:v1", options=RegistryOptions(creds="alice:nope"))
    msg = str(e.value)
    assert f"authentication failed for {basic_registry.host}/test/app" in msg
    assert "alice" in msg and "nope" not in msg


def test_basic_from_docker_config_auth(env: Env, basic_registry: RegistryProcess) -> None:
    docker_config({"auths": {basic_registry.host: {"auth": b64("alice:wonderland")}}})
    check_image(f"{basic_registry.host}/test/app:v1", env)


def test_basic_from_docker_config_username_password(env: Env, basic_registry: RegistryProcess) -> None:
    docker_config({"auths": {f"http://{basic_registry.host}/v2/": {"username": "alice", "password": "wonderland"}}})
    check_image(f"{basic_registry.host}/test/app:v1", env)


def test_basic_from_credential_helper(env: Env, basic_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    log = write_helper(bindir, "test", {basic_registry.host: ("alice", "wonderland")})
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    docker_config({"credHelpers": {basic_registry.host: "test"}})
    check_image(f"{basic_registry.host}/test/app:v1", env)
    assert log.read_text().splitlines() == [f"get {basic_registry.host}"]


def test_basic_from_creds_store(env: Env, basic_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    write_helper(bindir, "test", {basic_registry.host: ("alice", "wonderland")})
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    docker_config({"credsStore": "test", "auths": {basic_registry.host: {}}})
    check_image(f"{basic_registry.host}/test/app:v1", env)


def test_basic_from_registry_auth_file(env: Env, basic_registry: RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {basic_registry.host: {"auth": b64("alice:wonderland")}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    check_image(f"{basic_registry.host}/test/app:v1", env)


def test_basic_from_authfile_option(env: Env, basic_registry: RegistryProcess, tmp_path: Path) -> None:
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {f"{basic_registry.host}/test": {"auth": b64("alice:wonderland")}}}))
    check_image(f"{basic_registry.host}/test/app:v1", env, options=RegistryOptions(auth_file=str(auth)))


def test_basic_pull_to_layout(env: Env, basic_registry: RegistryProcess, tmp_path: Path) -> None:
    r = pull(f"{basic_registry.host}/test/app:v1", f"oci:{tmp_path / 'l'}", options=RegistryOptions(creds="alice:wonderland"))
    assert r.blobs_fetched == 3


# ------------------------------------------------------------------------------ bearer tokens


def test_bearer_anonymous(env: Env, token: TokenSetup) -> None:
    check_image(f"{token.registry.host}/test/app:v1", env)
    reqs = token.issuer.requests
    assert reqs, "the token service was never asked"
    for r in reqs:
        assert "Authorization" not in r["headers"]
        assert r["form"]["service"] == ["test-registry"]
        assert r["form"]["scope"] == ["repository:test/app:pull"]
    assert len(reqs) == 1  # one token, cached for every later request


def test_bearer_anonymous_denied_private(token: TokenSetup) -> None:
    with pytest.raises(RegistryError) as e:
        open_registry_image(f"{token.registry.host}/private/app:v1")
    assert str(e.value).startswith(f"authentication required for {token.registry.host}/private/app")


def test_bearer_with_creds(env: Env, token: TokenSetup) -> None:
    check_image(f"{token.registry.host}/private/app:v1", env, options=RegistryOptions(creds="alice:wonderland"))
    [req] = token.issuer.requests
    assert req["headers"]["Authorization"] == "Basic " + b64("alice:wonderland")
    assert req["user"] == "alice"


def test_bearer_wrong_creds(token: TokenSetup) -> None:
    with pytest.raises(RegistryError) as e:
        open_registry_image(f"{token.registry.host}/private/app:v1", options=RegistryOptions(creds="alice:bad"))
    msg = str(e.value)
    assert f"authentication failed for {token.registry.host}/private/app" in msg and "bad" not in msg.replace("answered", "")


def test_bearer_identity_token(env: Env, token: TokenSetup) -> None:
    docker_config({"auths": {token.registry.host: {"identitytoken": "refresh-xyz"}}})
    check_image(f"{token.registry.host}/private/app:v1", env)
    [req] = token.issuer.requests
    assert req["method"] == "POST"
    assert req["form"]["grant_type"] == ["refresh_token"] and req["form"]["refresh_token"] == ["refresh-xyz"]


def test_bearer_expired_token_is_refreshed(env: Env, token: TokenSetup) -> None:
    token.issuer.expired_next = 1  # the first token is already expired: the registry says 401
    check_image(f"{token.registry.host}/private/app:v1", env, options=RegistryOptions(creds="alice:wonderland"))
    assert len(token.issuer.requests) == 2


def test_bearer_token_refreshed_mid_pull(env: Env, token: TokenSetup, tmp_path: Path) -> None:
    ref = f"{token.registry.host}/test/app:v1"
    with open_registry_image(ref) as img:
        assert len(token.issuer.requests) == 1
        token.issuer.expired_next = 1
        # invalidate the cached token as if it had been revoked: the next blob GET gets a 401
        client = img._closers[0].__self__  # type: ignore[attr-defined]
        client.auth._token = "revoked." + client.auth._token
        with img.layers[0].blob.open() as f:
            assert len(f.read()) == img.layers[0].size
    # one fetch got an expired token (401 again), the next one a good token
    assert len(token.issuer.requests) == 3


# ------------------------------------------------------------------------------ TLS


def test_tls_untrusted_certificate(tls_registry: RegistryProcess) -> None:
    with pytest.raises(RegistryError) as e:
        open_registry_image(f"{tls_registry.host}/test/app:v1")
    msg = str(e.value)
    assert "TLS certificate verification failed" in msg and "--ca-file" in msg


def test_tls_cert_dir_with_client_certificate(env: Env, tls_registry: RegistryProcess, tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(env.ca.cert.read_bytes())
    (certs / "client.cert").write_bytes(env.client.cert.read_bytes())
    (certs / "client.key").write_bytes(env.client.key.read_bytes())
    check_image(f"{tls_registry.host}/test/app:v1", env, options=RegistryOptions(cert_dir=str(certs)))


def test_tls_ca_file_without_client_certificate(env: Env, tls_registry: RegistryProcess) -> None:
    with pytest.raises(RegistryError, match="TLS handshake"):
        open_registry_image(f"{tls_registry.host}/test/app:v1", options=RegistryOptions(ca_file=str(env.ca.cert), retries=1))


def test_tls_insecure_skips_verification(env: Env, tls_registry: RegistryProcess, tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    certs.mkdir()
    (certs / "client.cert").write_bytes(env.client.cert.read_bytes())
    (certs / "client.key").write_bytes(env.client.key.read_bytes())
    check_image(f"{tls_registry.host}/test/app:v1", env, options=RegistryOptions(cert_dir=str(certs), insecure=True))


def test_cert_dir_key_without_cert(tmp_path: Path, tls_registry: RegistryProcess) -> None:
    from converter.errors import UsageError

    certs = tmp_path / "certs.d"
    certs.mkdir()
    (certs / "client.key").write_text("x")
    with pytest.raises(UsageError, match="no matching certificate"):
        open_registry_image(f"{tls_registry.host}/test/app:v1", options=RegistryOptions(cert_dir=str(certs)))


# ------------------------------------------------------------------------------ proxies


def test_https_proxy_connect(env: Env, tls_registry: RegistryProcess, http_proxy: TcpProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "BYPASS_PROXY_FOR_LOOPBACK", False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:secret@{http_proxy.netloc}")
    certs = tmp_path / "certs.d"
    certs.mkdir()
    for src, name in ((env.ca.cert, "ca.crt"), (env.client.cert, "client.cert"), (env.client.key, "client.key")):
        (certs / name).write_bytes(src.read_bytes())
    check_image(f"{tls_registry.host}/test/app:v1", env, options=RegistryOptions(cert_dir=str(certs)))
    assert http_proxy.heads, "the proxy was not used"
    for head in http_proxy.heads:
        assert head.startswith(f"CONNECT 127.0.0.1:{tls_registry.port} ".encode())
        assert b"Proxy-Authorization: Basic " + b64("user:secret").encode() in head


def test_http_proxy_absolute_form(env: Env, http_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "BYPASS_PROXY_FOR_LOOPBACK", False)
    monkeypatch.setenv("HTTP_PROXY", f"http://{http_proxy.netloc}")
    monkeypatch.setenv("HTTPS_PROXY", f"http://{http_proxy.netloc}")
    check_image(env.images["app"].ref, env)
    assert any(h.startswith(f"GET http://{env.open.host}/v2/".encode()) for h in http_proxy.heads)


def test_no_proxy(env: Env, http_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "BYPASS_PROXY_FOR_LOOPBACK", False)
    monkeypatch.setenv("HTTP_PROXY", f"http://{http_proxy.netloc}")
    monkeypatch.setenv("HTTPS_PROXY", f"http://{http_proxy.netloc}")
    monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.1")
    check_image(env.images["app"].ref, env)
    assert http_proxy.connections == 0


def test_loopback_never_proxied(env: Env, http_proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://{http_proxy.netloc}")
    monkeypatch.setenv("HTTPS_PROXY", f"http://{http_proxy.netloc}")
    check_image(env.images["app"].ref, env)
    assert http_proxy.connections == 0

"""Fixtures: real registries (open, htpasswd, token, TLS with client certificates) sharing
one storage directory filled once by ``skopeo copy``, plus fake servers and proxies.

In CI (``CI`` set to a true value) a missing tool fails the run; elsewhere the tests that
need it are skipped with the reason.  Every process and thread started here is stopped at
teardown, whatever the outcome.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from converter.registry import client as client_mod
from converter.testing.imagegen import Dir, File, ImageSpec, Layer, Whiteout, write_oci_layout

from .servers import FakeServer, KeyPair, RegistryProcess, TcpProxy, TokenIssuer, make_cert, run

TOOLS = {
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "openssl": "openssl",
    "htpasswd": "apache2-utils",
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def tools() -> None:
    missing = [f"{tool} (apt package {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        msg = "registry tests need: " + ", ".join(missing) + "; apt-get install -y docker-registry skopeo apache2-utils openssl"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer credentials or proxies leak into a test; retries back off quickly."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "HTTPS_PROXY", "https_proxy",
                "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(client_mod, "BACKOFF_BASE", 0.01)


# ------------------------------------------------------------------------------ images


def big_data() -> bytes:
    return random.Random(7).randbytes(400_000)


APP = ImageSpec(
    layers=[
        Layer(entries=[Dir("etc/"), File("etc/hello", b"hello\n"), File("big.bin", big_data())], compression="gzip"),
        Layer(entries=[File("etc/hello", b"bye\n", mode=0o600), Whiteout("big.bin"), File("z.txt", b"zz")], compression="zstd"),
    ],
    cmd=["/bin/sh"],
)


def _spec(arch: str, variant: str | None, marker: bytes) -> ImageSpec:
    return ImageSpec(
        layers=[Layer(entries=[Dir("etc/"), File("etc/arch", marker)], compression="gzip")],
        architecture=arch,
        variant=variant,
    )


AMD64 = _spec("amd64", None, b"amd64\n")
ARM64 = _spec("arm64", "v8", b"arm64\n")
ARMV7 = _spec("arm", "v7", b"armv7\n")


@dataclass
class Pushed:
    ref: str  # "127.0.0.1:PORT/name:tag" on the open registry
    repo: str
    tag: str
    layout: Path
    built: object  # BuiltImage or list of them


@dataclass
class Env:
    root: Path
    storage: Path
    open: RegistryProcess
    images: dict[str, Pushed]
    token_key: KeyPair
    ca: KeyPair
    server: KeyPair
    client_ca: KeyPair
    client: KeyPair


def _push(layout: Path, ref: str, dest: str, *, all_images: bool, fmt: str | None = None) -> None:
    cmd = ["skopeo", "copy", "--insecure-policy", "--quiet", "--dest-tls-verify=false"]
    cmd += ["--format", fmt] if fmt else ["--preserve-digests"]
    if all_images:
        cmd.append("--all")
    run(cmd + [f"oci:{layout}:{ref}", f"docker://{dest}"])


@pytest.fixture(scope="session")
def env(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("registry")
    storage = root / "storage"
    storage.mkdir()
    certs = root / "certs"
    certs.mkdir()
    token_key = make_cert(certs, "token", cn="test-token-issuer")
    ca = make_cert(certs, "ca", cn="test-ca")
    server = make_cert(certs, "server", cn="127.0.0.1", san="IP:127.0.0.1,DNS:localhost", ca=ca)
    client_ca = make_cert(certs, "client-ca", cn="test-client-ca")
    client = make_cert(certs, "client", cn="test-client", ca=client_ca)

    registry = RegistryProcess(root, storage, name="open").start()
    try:
        images: dict[str, Pushed] = {}

        def push(key: str, repo: str, tag: str, images_arg: object, *, index: str = "flat", all_images: bool = False, fmt: str | None = None, **kw: object) -> None:
            layout = root / "layouts" / key
            if isinstance(images_arg, list):  # the index takes the first image's ref
                images_arg = [(images_arg[0][0], tag)] + images_arg[1:]
                built = write_oci_layout(layout, images_arg, index=index, **kw)  # type: ignore[arg-type]
            else:
                built = write_oci_layout(layout, images_arg, ref=tag, index=index, **kw)  # type: ignore[arg-type]
            _push(layout, tag, f"{registry.host}/{repo}:{tag}", all_images=all_images, fmt=fmt)
            images[key] = Pushed(f"{registry.host}/{repo}:{tag}", repo, tag, layout, built)

        push("app", "test/app", "v1", APP)
        push("private", "private/app", "v1", APP)
        # Docker schema 2 (skopeo converts the manifest; digests differ from the layout's)
        push("docker", "test/docker", "v1", AMD64, fmt="v2s2")
        push("multi", "test/multi", "v1", [(AMD64, None), (ARM64, None), (ARMV7, None)], index="multiarch", all_images=True, attestations=True)
        yield Env(root, storage, registry, images, token_key, ca, server, client_ca, client)
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def open_registry(env: Env) -> RegistryProcess:
    return env.open


@pytest.fixture(scope="session")
def basic_registry(env: Env) -> Iterator[RegistryProcess]:
    htpasswd = env.root / "htpasswd"
    out = subprocess.run(["htpasswd", "-Bbn", "alice", "wonderland"], capture_output=True, text=True, check=True).stdout
    htpasswd.write_text(out)
    reg = RegistryProcess(env.root, env.storage, name="basic", auth={"htpasswd": {"realm": "test-realm", "path": str(htpasswd)}})
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


@dataclass
class TokenSetup:
    registry: RegistryProcess
    issuer: TokenIssuer


@pytest.fixture(scope="session")
def token_setup(env: Env) -> Iterator[TokenSetup]:
    issuer = TokenIssuer(env.token_key).start()
    reg = None
    try:
        reg = RegistryProcess(
            env.root,
            env.storage,
            name="token",
            auth={
                "token": {
                    "realm": issuer.realm,
                    "service": issuer.service,
                    "issuer": issuer.issuer,
                    "rootcertbundle": str(env.token_key.cert),
                }
            },
        ).start()
        yield TokenSetup(reg, issuer)
    finally:
        if reg is not None:
            reg.stop()
        issuer.stop()


@pytest.fixture
def token(token_setup: TokenSetup) -> Iterator[TokenSetup]:
    """The session's token registry with the issuer's log and knobs reset per test."""
    token_setup.issuer.requests.clear()
    token_setup.issuer.expired_next = 0
    yield token_setup
    token_setup.issuer.expired_next = 0


@pytest.fixture(scope="session")
def tls_registry(env: Env) -> Iterator[RegistryProcess]:
    reg = RegistryProcess(
        env.root,
        env.storage,
        name="tls",
        tls={"certificate": str(env.server.cert), "key": str(env.server.key), "clientcas": [str(env.client_ca.cert)]},
    ).start()
    try:
        yield reg
    finally:
        reg.stop()


# ------------------------------------------------------------------------------ fakes and proxies


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer("127.0.0.1").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_other_host() -> Iterator[FakeServer]:
    """A second server on another loopback address: a different host for credential rules."""
    server = FakeServer("127.0.0.2").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cutting_proxy(open_registry: RegistryProcess) -> Iterator[TcpProxy]:
    proxy = TcpProxy(("127.0.0.1", open_registry.port))
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def http_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(mode="connect")
    try:
        yield proxy
    finally:
        proxy.stop()

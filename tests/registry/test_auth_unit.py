"""Credential lookup and challenge parsing (no registry needed)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from converter.errors import RegistryError, UsageError
from converter.registry.auth import (
    credentials_from_file,
    find_credentials,
    parse_creds,
    parse_www_authenticate,
)


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def write_helper(bindir: Path, name: str, table: dict[str, tuple[str, str]]) -> Path:
    """A docker-credential-NAME script answering ``get`` from ``table`` (server -> user, secret)
    and logging what it was asked, as the docker-credential-helpers protocol specifies."""
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / f"docker-credential-{name}"
    log = bindir / f"{name}.log"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"TABLE = {json.dumps(table)}\n"
        "server = sys.stdin.read().strip()\n"
        f"open({str(log)!r}, 'a').write(sys.argv[1] + ' ' + server + '\\n')\n"
        "if sys.argv[1] != 'get' or server not in TABLE:\n"
        "    print('credentials not found in native keychain'); sys.exit(1)\n"
        "user, secret = TABLE[server]\n"
        "print(json.dumps({'ServerURL': server, 'Username': user, 'Secret': secret}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return log


def test_parse_creds() -> None:
    c = parse_creds("bob:pa:ss")
    assert (c.username, c.password) == ("bob", "pa:ss")
    with pytest.raises(UsageError):
        parse_creds("bob")
    with pytest.raises(UsageError):
        parse_creds(":x")
    assert "pa:ss" not in repr(c)


def test_parse_www_authenticate() -> None:
    [c] = parse_www_authenticate(['Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull,push"'])
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg.example", "scope": "repository:a/b:pull,push"}
    both = parse_www_authenticate(['Basic realm="x y", Bearer realm="r",error="insufficient_scope"'])
    assert [c.scheme for c in both] == ["basic", "bearer"]
    assert both[0].params == {"realm": "x y"}
    assert both[1].params["error"] == "insufficient_scope"
    [q] = parse_www_authenticate(['Bearer realm="a\\"b"'])
    assert q.params["realm"] == 'a"b'


def test_auths_entries(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")},
        "reg.example:5000": {"username": "u2", "password": "p2"},
        "quay.io/team": {"auth": b64("team:tp")},
        "quay.io": {"auth": b64("anyone:ap")},
        "tok.example": {"identitytoken": "refresh-1"},
    }}))
    hub = credentials_from_file(str(cfg), "docker.io", "library/alpine")
    assert (hub.username, hub.password) == ("hubuser", "hubpass")
    c = credentials_from_file(str(cfg), "reg.example:5000", "x")
    assert (c.username, c.password) == ("u2", "p2")
    assert credentials_from_file(str(cfg), "quay.io", "team/app").username == "team"
    assert credentials_from_file(str(cfg), "quay.io", "other/app").username == "anyone"
    assert credentials_from_file(str(cfg), "tok.example", "a").identity_token == "refresh-1"
    assert credentials_from_file(str(cfg), "nowhere.example", "a") is None
    assert credentials_from_file(str(tmp_path / "missing.json"), "docker.io", "a") is None


def test_malformed_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(RegistryError, match="malformed JSON"):
        credentials_from_file(str(bad), "r.example", "a")
    b64bad = tmp_path / "b64.json"
    b64bad.write_text(json.dumps({"auths": {"r.example": {"auth": b64("no-colon")}}}))
    with pytest.raises(RegistryError, match="USER:PASSWORD"):
        credentials_from_file(str(b64bad), "r.example", "a")


def test_cred_helpers_and_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    log = write_helper(bindir, "test", {"reg.example": ("helperuser", "helpersecret"), "https://index.docker.io/v1/": ("<token>", "idtok")})
    write_helper(bindir, "store", {"other.example": ("storeuser", "storesecret")})
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({
        "credHelpers": {"reg.example": "test", "docker.io": "test"},
        "credsStore": "store",
        "auths": {"reg.example": {}},
    }))
    c = credentials_from_file(str(cfg), "reg.example", "a/b")
    assert (c.username, c.password) == ("helperuser", "helpersecret")
    assert "docker-credential-test" in c.origin
    hub = credentials_from_file(str(cfg), "docker.io", "library/alpine")
    assert hub.identity_token == "idtok" and hub.username == ""
    store = credentials_from_file(str(cfg), "other.example", "x")
    assert store.username == "storeuser"
    assert credentials_from_file(str(cfg), "unknown.example", "x") is None  # store says "not found"
    assert log.read_text().splitlines() == ["get reg.example", "get https://index.docker.io/v1/"]


def test_missing_helper_does_not_block_anonymous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path(os.environ["HOME"])
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text(json.dumps({"credsStore": "does-not-exist"}))
    creds, note = find_credentials("r.example", "a")
    assert creds is None
    assert "docker-credential-does-not-exist not found" in note


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path(os.environ["HOME"])
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {"r.example": {"auth": b64("docker:d")}}}))
    assert find_credentials("r.example", "a")[0].username == "docker"
    env_file = tmp_path / "auth.json"
    env_file.write_text(json.dumps({"auths": {"r.example": {"auth": b64("envfile:e")}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(env_file))
    assert find_credentials("r.example", "a")[0].username == "envfile"
    explicit = tmp_path / "explicit.json"
    explicit.write_text(json.dumps({"auths": {"r.example": {"auth": b64("explicit:x")}}}))
    assert find_credentials("r.example", "a", auth_file=str(explicit))[0].username == "explicit"
    assert find_credentials("r.example", "a", creds="cli:c", auth_file=str(explicit))[0].username == "cli"
    # a file without an entry for the registry falls through to the next one
    assert find_credentials("r.example", "a", auth_file=str(tmp_path / "none.json"))[0].username == "envfile"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    assert find_credentials("r.example", "a")[0] is None

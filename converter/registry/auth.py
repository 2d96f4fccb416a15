"""Registry authentication: where credentials come from and how challenges are answered.

Credentials are looked up, first hit wins, in: the explicit ``USER:PASS`` (``--creds``);
the ``--authfile``; ``$REGISTRY_AUTH_FILE``; ``$XDG_RUNTIME_DIR/containers/auth.json``
(podman's default); ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``.  Inside one
file: ``credHelpers[registry]``, then an ``auths`` entry (base64 ``auth``, or
``username``/``password``, or ``identitytoken``), then ``credsStore``.  A helper is run as
``docker-credential-NAME get`` with the server address on stdin (docker-credential-helpers
protocol).

Challenges (``WWW-Authenticate``) are answered with HTTP Basic, or with a bearer token
fetched from the challenge's ``realm`` with its ``service`` and our ``scope`` (GET with Basic
credentials when we have them, anonymous otherwise; an OAuth2 POST with the refresh token
when the credential is an identity token).  Tokens are cached per scope until they expire;
a 401 with a cached token drops it and fetches a new one once.

This module never decides where an ``Authorization`` header may be sent: the client only
ever attaches it to requests for the registry's own scheme/host/port (never to redirect
targets on other hosts, nor to foreign-layer URLs).  Tokens go to the realm, which the
registry names; credentials are sent to a plain-HTTP realm only on a loopback host or with
``insecure``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import RegistryError, UsageError
from .reference import DOCKER_HUB, is_loopback_host

log = logging.getLogger(__name__)

HUB_SERVER_ADDRESS = "https://index.docker.io/v1/"
_HUB_KEYS = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
HELPER_TIMEOUT = 30.0


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    #: an OAuth2 refresh token (docker's ``identitytoken``; helpers return it with user ``<token>``)
    identity_token: Optional[str] = field(default=None, repr=False)
    #: where they came from, for messages ("--creds", "/root/.docker/config.json", ...)
    origin: str = ""

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode("utf-8")
        return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_creds(text: str) -> Credentials:
    """``USER:PASS`` as given to ``--creds`` (the password may contain ``:``)."""
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise UsageError("bad --creds value: expected USERNAME:PASSWORD")
    return Credentials(user, password, origin="--creds")


# --------------------------------------------------------------------------------------
# credential lookup


def _normalise_key(key: str) -> str:
    """An ``auths``/``credHelpers`` key as ``host[:port][/path]``: docker's legacy keys are
    URLs (``https://index.docker.io/v1/``) whose path means nothing; podman's keys may be
    ``registry/namespace`` and then the path scopes the entry."""
    key = key.strip()
    if "://" in key:
        key = key.split("://", 1)[1].split("/", 1)[0]
    key = key.rstrip("/")
    host, sep, path = key.partition("/")
    if host.lower() in _HUB_KEYS:
        host = DOCKER_HUB
    return host + sep + path if path else host


def _server_address(registry: str) -> str:
    """What docker passes to a credential helper for this registry."""
    return HUB_SERVER_ADDRESS if registry == DOCKER_HUB else registry


def candidate_auth_files(auth_file: Optional[str] = None) -> list[str]:
    files: list[str] = []
    if auth_file:
        files.append(auth_file)
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        files.append(env)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        files.append(os.path.join(xdg, "containers", "auth.json"))
    docker_config = os.environ.get("DOCKER_CONFIG")
    if docker_config:
        files.append(os.path.join(docker_config, "config.json"))
    else:
        files.append(os.path.join(os.path.expanduser("~"), ".docker", "config.json"))
    seen: set[str] = set()
    out = []
    for f in files:
        if f not in seen:
            seen.add(f)
            out.append(f)
    return out


def run_credential_helper(name: str, server: str) -> Optional[Credentials]:
    """``docker-credential-NAME get``; None when the helper knows no credentials for the
    server.  A missing or failing helper is a :class:`RegistryError`."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise RegistryError(f"invalid credential helper name {name!r}")
    prog = f"docker-credential-{name}"
    path = shutil.which(prog)
    if path is None:
        raise RegistryError(f"credential helper {prog} not found in PATH")
    try:
        proc = subprocess.run(
            [path, "get"],
            input=server.encode("utf-8"),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RegistryError(f"credential helper {prog} failed: {exc}") from None
    out = proc.stdout.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        msg = (out or proc.stderr.decode("utf-8", "replace")).strip()
        if "credentials not found" in msg.lower():
            return None
        first = msg.splitlines()[0] if msg else f"exit status {proc.returncode}"
        raise RegistryError(f"credential helper {prog} failed for {server}: {first}")
    try:
        obj = json.loads(out)
        user, secret = obj.get("Username", ""), obj.get("Secret", "")
        if not isinstance(user, str) or not isinstance(secret, str):
            raise ValueError("Username/Secret are not strings")
    except (ValueError, AttributeError) as exc:
        raise RegistryError(f"credential helper {prog} returned malformed output: {exc}") from None
    if not secret:
        return None
    origin = f"credential helper {prog}"
    if user == "<token>":
        return Credentials(identity_token=secret, origin=origin)
    return Credentials(user, secret, origin=origin)


def _entry_credentials(entry: object, origin: str) -> Optional[Credentials]:
    if not isinstance(entry, dict):
        return None
    token = entry.get("identitytoken") if isinstance(entry.get("identitytoken"), str) else None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=False).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise RegistryError(f"{origin}: malformed base64 'auth' value") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise RegistryError(f"{origin}: 'auth' value does not decode to USER:PASSWORD")
        return Credentials(user, password, identity_token=token or None, origin=origin)
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and user and isinstance(password, str):
        return Credentials(user, password, identity_token=token or None, origin=origin)
    if token:
        return Credentials(identity_token=token, origin=origin)
    return None


def credentials_from_file(path: str, registry: str, repository: str) -> Optional[Credentials]:
    """Credentials for ``registry/repository`` from one docker/podman auth file, or None."""
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 22)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc.strerror)
        return None
    try:
        cfg = json.loads(raw)
    except ValueError as exc:
        raise RegistryError(f"{path}: malformed JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise RegistryError(f"{path}: not a JSON object")

    helpers = cfg.get("credHelpers") if isinstance(cfg.get("credHelpers"), dict) else {}
    for key, helper in helpers.items():
        if isinstance(helper, str) and helper and _normalise_key(key) == registry:
            found = run_credential_helper(helper, _server_address(registry))
            if found is not None:
                return found

    auths = cfg.get("auths") if isinstance(cfg.get("auths"), dict) else {}
    # most specific key first: registry/ns/repo, registry/ns, registry
    by_key = {_normalise_key(k): v for k, v in auths.items()}
    parts = repository.split("/")
    for i in range(len(parts), -1, -1):
        key = "/".join([registry, *parts[:i]])
        if key in by_key:
            found = _entry_credentials(by_key[key], f"{path} (auths {key})")
            if found is not None:
                return found

    store = cfg.get("credsStore")
    if isinstance(store, str) and store:
        return run_credential_helper(store, _server_address(registry))
    return None


def find_credentials(
    registry: str, repository: str, *, creds: Optional[str] = None, auth_file: Optional[str] = None
) -> tuple[Optional[Credentials], str]:
    """The credentials to use, and a note for error messages on where we looked.  A broken
    helper or file does not stop an anonymous pull: it is logged and noted."""
    if creds is not None:
        return parse_creds(creds), "--creds"
    notes = []
    for path in candidate_auth_files(auth_file):
        try:
            found = credentials_from_file(path, registry, repository)
        except RegistryError as exc:
            log.warning("%s", exc)
            notes.append(str(exc))
            continue
        if found is not None:
            return found, found.origin
    looked = "; ".join(notes) if notes else "none in --creds, --authfile, REGISTRY_AUTH_FILE or docker config"
    return None, looked


# --------------------------------------------------------------------------------------
# challenges

_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_PARAM = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*')


@dataclass
class Challenge:
    scheme: str  # lowercase: "basic", "bearer"
    params: dict[str, str]


def parse_www_authenticate(values: list[str]) -> list[Challenge]:
    """Parse one or more ``WWW-Authenticate`` header values (RFC 7235 auth-params with
    quoted strings; several challenges may share one header)."""
    out: list[Challenge] = []
    for value in values:
        s = value.strip()
        current: Optional[Challenge] = None
        while s:
            s = s.lstrip(" ,")
            if not s:
                break
            m = _PARAM.match(s)
            if m and current is not None and "=" in m.group(0):
                name, val = m.group(1).lower(), m.group(2)
                if val.startswith('"'):
                    val = re.sub(r"\\(.)", r"\1", val[1:-1])
                current.params[name] = val
                s = s[m.end() :]
                continue
            # a new scheme token
            m2 = re.match(r"([A-Za-z0-9!#$%&'*+.^_`|~-]+)", s)
            if not m2:
                break
            current = Challenge(m2.group(1).lower(), {})
            out.append(current)
            s = s[m2.end() :]
    return out


Fetch = Callable[..., tuple[int, dict[str, str], bytes]]
"""``fetch(method, url, headers, body) -> (status, headers, body)``: the client's transport."""


class Authenticator:
    """Authorization for one repository on one registry (``scope`` fixed per instance)."""

    def __init__(
        self,
        *,
        registry: str,
        repository: str,
        credentials: Optional[Credentials],
        note: str,
        fetch: Fetch,
        insecure: bool = False,
        actions: str = "pull",
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.credentials = credentials
        self.note = note
        self._fetch = fetch
        self._insecure = insecure
        self.scope = f"repository:{repository}:{actions}"
        self._lock = threading.Lock()
        self._scheme: Optional[str] = None  # "basic" or "bearer" once challenged
        self._bearer: Optional[Challenge] = None
        self._token: Optional[str] = None
        self._token_expires = 0.0
        self.token_fetches = 0

    @property
    def what(self) -> str:
        return f"{self.registry}/{self.repository}"

    def header(self) -> Optional[str]:
        """The Authorization value for the next registry request, if any."""
        with self._lock:
            if self._scheme == "basic" and self.credentials and not self.credentials.identity_token:
                return self.credentials.basic_header()
            if self._scheme == "bearer":
                if self._token is None or time.monotonic() >= self._token_expires:
                    self._token = None
                    self._refresh_token_locked()
                return f"Bearer {self._token}"
        return None

    def challenge(self, www_authenticate: list[str], sent: Optional[str]) -> None:
        """Answer a 401: remember the scheme and get (new) authorization, or raise."""
        challenges = parse_www_authenticate(www_authenticate)
        by_scheme = {c.scheme: c for c in challenges}
        with self._lock:
            if "bearer" in by_scheme:
                new = by_scheme["bearer"]
                if "realm" not in new.params:
                    raise RegistryError(f"registry {self.registry} sent a bearer challenge without a realm")
                self._scheme = "bearer"
                self._bearer = new
                if sent and sent.startswith("Bearer ") and sent[7:] == self._token:
                    self._token = None  # rejected (expired or revoked): fetch a new one
                if self._token is None:
                    self._refresh_token_locked()
                return
            if "basic" in by_scheme:
                if self.credentials is None or self.credentials.identity_token and not self.credentials.username:
                    raise RegistryError(self.missing_credentials_message())
                self._scheme = "basic"
                return
        offered = ", ".join(sorted(by_scheme)) or "none"
        raise RegistryError(f"registry {self.registry} asks for an unsupported authentication scheme ({offered})")

    def missing_credentials_message(self) -> str:
        return (
            f"authentication required for {self.what}: no credentials found ({self.note}); "
            "use --creds USER:PASS, --authfile or docker login"
        )

    def failed_message(self, status: int, detail: str = "") -> str:
        detail = f" ({detail})" if detail else ""
        if status == 403:
            who = f" for user {self.credentials.username}" if self.credentials and self.credentials.username else ""
            return f"access denied to {self.what}{who}{detail}"
        if self.credentials is None:
            return self.missing_credentials_message() + detail
        who = self.credentials.username or "identity token"
        return f"authentication failed for {self.what}: the registry rejected the credentials of {who} from {self.credentials.origin}{detail}"

    # -- tokens -------------------------------------------------------------------------

    def _refresh_token_locked(self) -> None:
        assert self._bearer is not None
        params = self._bearer.params
        realm = params["realm"]
        try:
            parsed = urllib.parse.urlsplit(realm)
            hostname = parsed.hostname
        except ValueError:
            hostname = None
        if not hostname or parsed.scheme not in ("http", "https"):
            raise RegistryError(f"registry {self.registry} names an invalid token realm {realm[:200]!r}")
        creds = self.credentials
        if creds is not None and parsed.scheme == "http" and not (self._insecure or is_loopback_host(parsed.hostname)):
            raise RegistryError(
                f"refusing to send credentials for {self.what} to the plain-HTTP token realm {realm} (use --insecure to allow)"
            )
        scopes = [self.scope]
        extra = params.get("scope")
        if extra:
            scopes += [s for s in extra.split(" ") if s and s != self.scope]
        service = params.get("service")
        headers = {"Accept": "application/json"}
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": "rootfs-converter"}
            if service:
                form["service"] = service
            form["scope"] = " ".join(scopes)
            body = urllib.parse.urlencode(form).encode("ascii")
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            status, _, data = self._fetch("POST", realm, headers, body)
        else:
            query = []
            if service:
                query.append(("service", service))
            query += [("scope", s) for s in scopes]
            sep = "&" if parsed.query else "?"
            url = realm + (sep + urllib.parse.urlencode(query) if query else "")
            if creds is not None:
                headers["Authorization"] = creds.basic_header()
            status, _, data = self._fetch("GET", url, headers, None)
        self.token_fetches += 1
        if status in (401, 403):
            raise RegistryError(self.failed_message(status, f"token service {parsed.hostname} answered {status}"))
        if status != 200:
            raise RegistryError(f"token service {realm} for {self.what} answered HTTP {status}")
        try:
            obj = json.loads(data)
            token = obj.get("token") or obj.get("access_token")
            if not isinstance(token, str) or not token:
                raise ValueError("no token in the response")
            if not (token.isascii() and token.isprintable()) or " " in token:
                # (it goes into an HTTP header: never repeated in the message)
                raise ValueError("the token has characters a header cannot carry")
            expires_in = obj.get("expires_in", 60)
            if not isinstance(expires_in, (int, float)) or expires_in <= 0:
                expires_in = 60
        except RecursionError:
            raise RegistryError(f"token service {realm} for {self.what} sent a malformed answer: JSON nested too deeply") from None
        except (ValueError, AttributeError) as exc:
            raise RegistryError(f"token service {realm} for {self.what} sent a malformed answer: {exc}") from None
        self._token = token
        # refresh a little early; never cache below a few seconds
        self._token_expires = time.monotonic() + max(float(expires_in) - 10.0, min(float(expires_in), 5.0))

"""Test servers for the registry tests: the real registry (Debian's ``docker-registry``), a
JWT token issuer for it, a small fake registry (for what the real one will not serve:
schema 1, lying digests, redirects to another host, injected failures) and TCP proxies
(one that cuts a transfer midway, one that speaks CONNECT / absolute-form HTTP).

Every server here binds to a loopback address, runs in daemon threads or a child process,
and has a ``stop()`` that the fixtures call at teardown, failure or not.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import http.client
import http.server
import json
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # preexec_fn: the registry dies if pytest is killed
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


# ------------------------------------------------------------------------------ openssl


@dataclass
class KeyPair:
    key: Path
    cert: Path


def make_cert(directory: Path, name: str, *, cn: str, san: Optional[str] = None, ca: Optional[KeyPair] = None) -> KeyPair:
    """A key and certificate: self-signed, or signed by ``ca``."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    ext = directory / f"{name}.ext"
    lines = []
    if san:
        lines.append(f"subjectAltName={san}")
    ext.write_text("\n".join(lines) + "\n")
    if ca is None:
        cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
               "-days", "3650", "-subj", f"/CN={cn}"]
        if san:
            cmd += ["-addext", f"subjectAltName={san}"]
        run(cmd)
    else:
        csr = directory / f"{name}.csr"
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}"])
        run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
             "-out", str(cert), "-days", "3650", "-extfile", str(ext)])
    return KeyPair(key, cert)


def pem_to_der_b64(cert: Path) -> str:
    body = [l for l in cert.read_text().splitlines() if l and not l.startswith("-----")]
    return "".join(body)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# ------------------------------------------------------------------------------ token issuer


@dataclass
class TokenIssuer:
    """A Docker token service: ``GET /token?service=&scope=`` (Basic credentials optional)
    and the OAuth2 ``POST /token`` refresh-token grant.  Tokens are RS256 JWTs carrying the
    signing certificate in ``x5c``; the registry trusts that certificate.

    Policy: anonymous callers may pull any repository not under ``private/``; the users in
    ``users`` may pull and push everything.  ``expired_next`` makes the next N tokens
    already expired (the registry then answers 401 and the client must fetch a new one)."""

    keypair: KeyPair
    service: str = "test-registry"
    issuer: str = "test-issuer"
    users: dict[str, str] = field(default_factory=lambda: {"alice": "wonderland"})
    refresh_tokens: dict[str, str] = field(default_factory=lambda: {"refresh-xyz": "alice"})
    expired_next: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    _server: Optional[http.server.ThreadingHTTPServer] = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def realm(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    def start(self) -> "TokenIssuer":
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, form: dict[str, list[str]], user: Optional[str], bad: bool) -> None:
                issuer.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "form": form, "user": user})
                if bad:
                    body = b'{"details":"incorrect username or password"}'
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                scopes = []
                for s in form.get("scope", []):
                    scopes += s.split(" ")
                token = issuer.sign(user, form.get("service", [""])[0], scopes)
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300, "issued_at": "2024-01-01T00:00:00Z"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                q = urllib.parse.urlsplit(self.path)
                form = urllib.parse.parse_qs(q.query)
                user, bad = None, False
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    bad = issuer.users.get(u) != p
                    user = u
                self._answer(form, user, bad)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(n).decode())
                user, bad = None, False
                if form.get("grant_type") == ["refresh_token"]:
                    user = issuer.refresh_tokens.get(form.get("refresh_token", [""])[0])
                    bad = user is None
                elif form.get("grant_type") == ["password"]:
                    user = form.get("username", [""])[0]
                    bad = issuer.users.get(user) != form.get("password", [""])[0]
                else:
                    bad = True
                self._answer(form, user, bad)

        self._server = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="token-issuer", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def grant(self, user: Optional[str], scope: str) -> Optional[dict[str, Any]]:
        parts = scope.split(":")
        if len(parts) != 3 or parts[0] != "repository":
            return None
        _, name, actions = parts
        wanted = [a for a in actions.split(",") if a]
        if user is None:
            allowed = [] if name.startswith("private/") else [a for a in wanted if a == "pull"]
        else:
            allowed = wanted
        return {"type": "repository", "name": name, "actions": allowed}

    def sign(self, user: Optional[str], service: str, scopes: list[str]) -> str:
        now = int(time.time())
        with self._lock:
            expired = self.expired_next > 0
            if expired:
                self.expired_next -= 1
        base = now - 7200 if expired else now
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": service,
            "exp": base + 600 if not expired else base + 60,
            "nbf": base - 10,
            "iat": base,
            "jti": uuid.uuid4().hex,
            "access": [g for g in (self.grant(user, s) for s in scopes) if g is not None],
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": [pem_to_der_b64(self.keypair.cert)]}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.keypair.key)],
            input=signing_input.encode(), capture_output=True, check=True, timeout=30,
        ).stdout
        return f"{signing_input}.{b64url(sig)}"


# ------------------------------------------------------------------------------ the real registry


class RegistryProcess:
    """``docker-registry serve CONFIG`` on 127.0.0.1:PORT."""

    def __init__(self, workdir: Path, storage: Path, *, name: str, auth: Optional[dict] = None, tls: Optional[dict] = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.name = name
        self.tls = tls is not None
        http_cfg: dict[str, Any] = {"addr": f"127.0.0.1:{self.port}", "secret": "registry-test-secret"}
        if tls:
            http_cfg["tls"] = tls
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http_cfg,
        }
        if auth:
            config["auth"] = auth
        self.config_path = workdir / f"registry-{name}.yml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log_path = workdir / f"registry-{name}.log"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "RegistryProcess":
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry ({self.name}) exited: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry ({self.name}) did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


# ------------------------------------------------------------------------------ fake registry


Route = Callable[["http.server.BaseHTTPRequestHandler"], Optional[tuple[int, dict[str, str], bytes]]]


#: what a route callable returns when it wrote the whole response itself
HANDLED = object()


class FakeServer:
    """A tiny HTTP/1.1 server: ``routes[path]`` is ``(status, headers, body)`` or a callable
    returning one (or None for 404).  ``fail[path]`` is a list of statuses to answer first
    (e.g. ``[503, 429]``).  Every request is recorded with its headers.  ``require_basic``
    makes every ``/v2/`` request without the right Basic credentials a 401.  A route callable
may write its response itself and return :data:`HANDLED`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Any] = {}
        self.fail: dict[str, list[int]] = {}
        self.requests: list[dict[str, Any]] = []
        self.require_basic: Optional[tuple[str, str]] = None
        self._server: Optional[http.server.ThreadingHTTPServer] = None
        self.port = 0

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    def start(self) -> "FakeServer":
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle(self) -> None:
                # a TLS ClientHello (a client probing for HTTPS): hang up at once, as a plain
                # HTTP server that cannot parse it would, instead of waiting for a newline
                try:
                    first = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    return
                if first == b"\x16":
                    return
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                super().handle()

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                split = urllib.parse.urlsplit(self.path)
                path = split.path
                fake.requests.append({"method": self.command, "path": path, "query": urllib.parse.parse_qs(split.query),
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
                if fake.require_basic and path.startswith("/v2/"):
                    want = "Basic " + base64.b64encode(":".join(fake.require_basic).encode()).decode()
                    if self.headers.get("Authorization") != want:
                        self._send(401, {"WWW-Authenticate": 'Basic realm="fake"', "Content-Type": "application/json"},
                                   b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
                        return
                queue = fake.fail.get(path)
                if queue:
                    status = queue.pop(0)
                    self._send(status, {"Retry-After": "0"} if status == 429 else {}, b"try again")
                    return
                route = fake.routes.get(path)
                if callable(route):
                    route = route(self)
                if route is HANDLED:  # (the callable wrote the response itself)
                    return
                if route is None:
                    code = b"BLOB_UNKNOWN" if "/blobs/" in path else b"MANIFEST_UNKNOWN"
                    self._send(404, {"Content-Type": "application/json"},
                               b'{"errors":[{"code":"' + code + b'","message":"' + code.lower().replace(b"_", b" ") + b'"}]}')
                    return
                self._send(*route)

            do_HEAD = do_GET

        self._server = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake-{self.host}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # helpers to lay out a fake image
    def add_manifest(self, repo: str, ref: str, body: bytes, media_type: str, *, digest_header: Optional[str] = None) -> None:
        headers = {"Content-Type": media_type}
        if digest_header:
            headers["Docker-Content-Digest"] = digest_header
        self.routes[f"/v2/{repo}/manifests/{ref}"] = (200, headers, body)

    def add_blob(self, repo: str, digest: str, body: bytes) -> None:
        self.routes[f"/v2/{repo}/blobs/{digest}"] = (200, {"Content-Type": "application/octet-stream"}, body)


# ------------------------------------------------------------------------------ proxies


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream``.

    ``mode="pipe"``: forwards bytes both ways.  ``cut_after(n)`` arms a one-shot cut: the
    next ``n`` bytes going server-to-client (after arming) pass, then that connection is
    closed in both directions.  ``mode="connect"``: an HTTP proxy that accepts ``CONNECT
    host:port`` and absolute-form ``GET http://host:port/...`` and pipes to that host.
    Client-to-server bytes are recorded, to count ``Range:`` requests and see headers."""

    def __init__(self, upstream: Optional[tuple[str, int]] = None, *, mode: str = "pipe") -> None:
        self.upstream = upstream
        self.mode = mode
        self.client_bytes = bytearray()
        self.heads: list[bytes] = []  # first request head of each proxied connection
        self.connections = 0
        self._cut_budget: Optional[int] = None
        self._trigger: Optional[tuple[bytes, int, int]] = None
        self.cuts = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._stopping = False
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True).start()

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut_after(self, n: int) -> None:
        with self._lock:
            self._cut_budget = n

    def cut_response_to(self, pattern: bytes, after: int, *, times: int = 1) -> None:
        """When a request containing ``pattern`` (e.g. a blob digest) goes upstream, let
        ``after`` bytes of what comes back pass, then kill that connection; ``times`` times."""
        with self._lock:
            self._trigger = (pattern, after, times)

    @property
    def range_requests(self) -> int:
        return bytes(self.client_bytes).lower().count(b"\r\nrange: bytes=")

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            first = b""
            if self.mode == "connect":
                while b"\r\n\r\n" not in first:
                    chunk = client.recv(4096)
                    if not chunk:
                        return
                    first += chunk
                head, _, rest = first.partition(b"\r\n\r\n")
                self.heads.append(head)
                method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
                if method == b"CONNECT":
                    host, _, port = target.decode().rpartition(":")
                    upstream = socket.create_connection((host.strip("[]"), int(port)))
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    first = rest
                else:
                    u = urllib.parse.urlsplit(target.decode())
                    upstream = socket.create_connection((u.hostname, u.port or 80))
            else:
                assert self.upstream is not None
                upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._open += [client, upstream]
            if first:
                self.client_bytes += first
                upstream.sendall(first)
            self._pump(client, upstream)
        except (OSError, ValueError):  # ValueError: a socket closed by stop() under select()
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        socks = [client, upstream]
        while True:
            readable, _, _ = select.select(socks, [], [], 30)
            if not readable:
                return
            for s in readable:
                data = s.recv(65536)
                if not data:
                    return
                if s is client:
                    self.client_bytes += data
                    with self._lock:
                        trig = self._trigger
                        if trig is not None and trig[0] in data:
                            self._cut_budget = trig[1]
                            self._trigger = (trig[0], trig[1], trig[2] - 1) if trig[2] > 1 else None
                    upstream.sendall(data)
                    continue
                with self._lock:
                    budget = self._cut_budget
                    if budget is not None:
                        if len(data) >= budget:
                            self._cut_budget = None
                        else:
                            self._cut_budget = budget - len(data)
                if budget is not None and len(data) >= budget:
                    self.cuts += 1
                    client.sendall(data[:budget])
                    with contextlib.suppress(OSError):
                        client.shutdown(socket.SHUT_RDWR)
                    return
                client.sendall(data)

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def http_get(url: str, headers: Optional[dict[str, str]] = None) -> tuple[int, bytes]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", u.path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()

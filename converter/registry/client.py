"""HTTP client for the Docker Registry HTTP API v2 / OCI distribution spec (pull side).

Stdlib only (``http.client``): keep-alive connections in a small pool, TLS with the system
CAs plus ``ca_file`` and a docker ``certs.d``-style directory (``*.crt`` CAs,
``NAME.cert``/``NAME.key`` client pairs), ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``,
timeouts, bounded retries with exponential backoff on connection errors, 429 and 5xx, and
redirects (the ``Authorization`` header only ever goes to the registry's own
scheme/host/port).

Plain HTTP is used only when allowed: with ``insecure`` or for a loopback registry
(``localhost``, ``127.0.0.0/8``, ``::1``), as Docker does; HTTPS is tried first and HTTP only
when the server does not speak TLS.  A certificate that fails verification is an error,
never a reason to fall back (``insecure`` disables verification for the registry host).

Blob downloads stream: :meth:`RegistryClient.open_blob` returns a reader that resumes with
``Range: bytes=N-`` when the connection drops mid-blob.  It does not verify digests: the
caller (the merge, or ``pull``) does, while it streams.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import io
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Optional

from .. import __version__
from ..digest import parse_digest
from ..errors import ConverterError, IntegrityError, InputError, NotFoundError, RegistryError, UsageError
from ..sources.archive import MAX_JSON
from .auth import Authenticator, find_credentials
from .reference import Reference, is_loopback_host

if TYPE_CHECKING:  # pragma: no cover
    from .source import RegistryOptions

log = logging.getLogger(__name__)

USER_AGENT = f"rootfs-converter/{__version__}"
#: first retry waits about this long (seconds), doubling up to BACKOFF_MAX; tests lower it
BACKOFF_BASE = 0.5
BACKOFF_MAX = 8.0
RETRY_AFTER_MAX = 30.0
MAX_REDIRECTS = 10
#: how long the HTTPS probe of a registry that may be plain HTTP waits for a TLS answer
PROBE_TIMEOUT = 10.0
MAX_MANIFEST = MAX_CONFIG = MAX_JSON  # (parsed whole, as a layout's: see converter.sources.archive)
#: loopback hosts never go through a proxy (as Go's net/http); tests of the proxy path lower it
BYPASS_PROXY_FOR_LOOPBACK = True
#: a drop after this much progress does not count against the retry budget
RESUME_PROGRESS_RESET = 1 << 20
MAX_RESUMES = 100
#: a response slower than this for a whole socket timeout (30 s) is a stalled one, as
#: curl's --speed-limit: a server dripping a byte every few seconds never trips the
#: timeout of each read, and would hold the run for days
LOW_SPEED = 1024  # bytes a second
#: a timeout (nothing, or too little, for a whole socket timeout) costs this many of the
#: ``retries``: a server that accepts connections and then says nothing gets one more
#: chance, not five (six 30 s timeouts kept a run waiting three minutes before failing)
TIMEOUT_COST = 3


def retry_cost(exc: BaseException) -> int:
    """What a failed attempt spends of the retry budget (see :data:`TIMEOUT_COST`); a name
    that does not resolve spends it all (asking the resolver again within seconds does
    not change its answer, and five tries held an air-gapped run for 12 s)."""
    if isinstance(exc, socket.gaierror):
        return 1 << 20
    return TIMEOUT_COST if isinstance(exc, TimeoutError) else 1


class Stalled(socket.timeout):
    """A response that still sends, but too slowly to be worth waiting for (retried and
    resumed like a timeout)."""


class _SpeedWatch:
    """Raises :class:`Stalled` when fewer than LOW_SPEED bytes a second arrived over the
    last ``window`` seconds."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.start = time.monotonic()
        self.count = 0

    def got(self, n: int) -> None:
        self.count += n
        elapsed = time.monotonic() - self.start
        if elapsed >= self.window:
            if self.count < LOW_SPEED * elapsed:
                raise Stalled(f"less than {LOW_SPEED} bytes a second for {elapsed:.0f} s")
            self.start, self.count = time.monotonic(), 0

#: OpenSSL reasons meaning "the peer does not speak TLS at all" (a plain-HTTP server)
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "UNEXPECTED_EOF_WHILE_READING"}
)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

ACCEPT_MANIFESTS = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        # asked for only so that an old image is recognised and refused with a clear message
        "application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.5",
        "application/vnd.docker.distribution.manifest.v1+json;q=0.5",
    ]
)


def backoff_delay(attempt: int, retry_after: Optional[float] = None) -> float:
    if retry_after is not None:
        return max(0.0, min(retry_after, RETRY_AFTER_MAX))
    base = min(BACKOFF_MAX, BACKOFF_BASE * (2 ** max(0, attempt - 1)))
    return base * (0.5 + random.random() / 2)


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return float(int(value.strip()))
    except ValueError:
        return None  # an HTTP date: use our own backoff


def unusable(what: str, exc: ValueError) -> RegistryError:
    """What http.client and urllib refuse in an address or a header the registry sent (a
    redirect to a malformed host, a token with a line break, a name the IDNA codec
    rejects): a registry error that never repeats the value, which may be a token."""
    return RegistryError(f"{what}: the registry sent an address or a credential that cannot be used "
                         f"({type(exc).__name__})")


def error_detail(body: bytes) -> str:
    """The registry's ``{"errors": [{"code", "message"}]}`` as one short string."""
    try:
        obj = json.loads(body)
        errs = obj.get("errors") if isinstance(obj, dict) else None
        parts = []
        for e in errs or []:
            code = e.get("code", "")
            msg = e.get("message", "")
            parts.append(f"{code}: {msg}" if code and msg else code or msg)
        if parts:
            return "; ".join(p for p in parts if p)[:300]
    except (ValueError, AttributeError, TypeError, RecursionError):
        pass
    text = body[:200].decode("utf-8", "replace").strip().splitlines()
    return text[0] if text else ""


def _error_codes(body: bytes) -> set[str]:
    try:
        obj = json.loads(body)
        return {str(e.get("code", "")) for e in obj.get("errors") or [] if isinstance(e, dict)}
    except (ValueError, AttributeError, TypeError, RecursionError):
        return set()


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str  # without brackets
    port: int

    @property
    def netloc(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return h if self.port == default else f"{h}:{self.port}"

    @classmethod
    def of(cls, url: str) -> "_Target":
        p = urllib.parse.urlsplit(url)
        if p.scheme not in ("http", "https") or not p.hostname:
            raise RegistryError(f"unsupported URL {url!r}")
        try:
            port = p.port
        except ValueError:
            raise RegistryError(f"bad port in URL {url!r}") from None
        return cls(p.scheme, p.hostname, port or (443 if p.scheme == "https" else 80))


@dataclass(frozen=True)
class _Proxy:
    host: str
    port: int
    auth: Optional[str]  # Proxy-Authorization value


class Response:
    """An HTTP response whose connection goes back to the pool once fully read."""

    def __init__(self, client: "RegistryClient", key: tuple, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str) -> None:
        self._client = client
        self._key = key
        self._conn: Optional[http.client.HTTPConnection] = conn
        self.raw = resp
        self.url = url
        self.status = resp.status
        self.headers = resp.headers

    def read_all(self, limit: int, *, what: str) -> bytes:
        length = self.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self.close()
            raise InputError(f"{what}: {length} bytes is larger than the {limit}-byte limit")
        try:
            data = self._read(limit + 1)
        except (OSError, http.client.HTTPException):
            self._drop()
            raise
        if len(data) > limit:
            self.close()
            raise InputError(f"{what}: larger than the {limit}-byte limit")
        self.close()
        return data

    def _read(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the body, piece by piece under a :class:`_SpeedWatch`."""
        watch = _SpeedWatch(self._client.options.timeout)
        out = bytearray()
        while len(out) < limit:
            piece = self.raw.read1(min(1 << 16, limit - len(out)))
            if not piece:
                break
            out += piece
            watch.got(len(piece))
        return bytes(out)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def drain(self, limit: int = 1 << 16) -> bytes:
        try:
            data = self._read(limit)
        except (OSError, http.client.HTTPException):
            self._drop()
            return b""
        self.close()
        return data

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self._client._release(self._key, conn, self.raw)


class RegistryClient:
    """Talks to one repository on one registry.  Thread-safe enough for one layer being
    prefetched while another streams (pool and authentication are locked)."""

    def __init__(self, ref: Reference, options: "RegistryOptions") -> None:
        self.ref = ref
        self.options = options
        self.host = ref.api_host
        self._lock = threading.Lock()
        self._pool: dict[tuple, list[http.client.HTTPConnection]] = {}
        self._scheme: Optional[str] = None
        self._allow_http = options.insecure or ref.is_loopback
        self._registry_ctx: Optional[ssl.SSLContext] = None
        self._other_ctx: Optional[ssl.SSLContext] = None
        creds, note = find_credentials(ref.registry, ref.repository, creds=options.creds, auth_file=options.auth_file)
        self.auth = Authenticator(
            registry=ref.registry,
            repository=ref.repository,
            credentials=creds,
            note=note,
            fetch=self._token_fetch,
            insecure=options.insecure,
        )
        self.requests = 0  # counted for tests and --debug

    # -- public API -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        self._ensure_scheme()
        return f"{self._scheme}://{self.host}"

    def blob_url(self, digest: str) -> str:
        return f"{self.base_url}/v2/{self.ref.repository}/blobs/{digest}"

    def get_manifest(self, reference: str) -> tuple[bytes, str, Optional[str]]:
        """``(bytes, content type, Docker-Content-Digest)`` for a tag or digest."""
        url = f"{self.base_url}/v2/{self.ref.repository}/manifests/{reference}"
        what = self._image_name(reference)
        attempt = 0
        while True:
            resp = self.request("GET", url, headers={"Accept": ACCEPT_MANIFESTS}, what=what)
            try:
                data = resp.read_all(MAX_MANIFEST, what=f"manifest of {what}")
                break
            except (OSError, http.client.HTTPException) as exc:
                attempt += retry_cost(exc)
                if attempt > self.options.retries:
                    raise RegistryError(f"{what}: manifest download failed: {_describe(exc)}") from None
                time.sleep(backoff_delay(attempt))
        ctype = (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip()
        return data, ctype, resp.headers.get("Docker-Content-Digest")

    def get_blob_bytes(self, digest: str, size: Optional[int], *, what: str, limit: int = MAX_CONFIG) -> bytes:
        """A small blob (a config), read whole and checked against digest and size."""
        alg, hexpart = parse_digest(digest, what=what)
        if size is not None and size > limit:
            raise InputError(f"{what} {digest} is {size} bytes, larger than the {limit}-byte limit")
        stream = self.open_blob(digest, size, what=what, progress=_silent)
        try:
            data = stream.read(limit + 1)
        finally:
            stream.close()
        if size is not None and len(data) != size:
            raise IntegrityError(f"{what} {digest}: got {len(data)} bytes, the descriptor says {size}")
        if hashlib.new(alg, data).hexdigest() != hexpart:
            raise IntegrityError(f"{what} {digest}: content does not match its digest")
        return data

    def open_blob(
        self,
        digest: str,
        size: Optional[int],
        *,
        urls: tuple[str, ...] = (),
        what: str = "blob",
        progress: Optional[Callable[..., None]] = None,
    ) -> BinaryIO:
        """A buffered reader over the blob, resuming after drops.  ``urls`` (foreign
        layers) are tried first, without credentials; the registry is the fallback."""
        parse_digest(digest, what=what)
        raw = _BlobReader(self, digest, size, urls=urls, what=what, progress=progress or self.options.progress)
        return io.BufferedReader(raw, buffer_size=1 << 16)  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            pools, self._pool = self._pool, {}
        for conns in pools.values():
            for c in conns:
                try:
                    c.close()
                except OSError:
                    pass

    # -- requests ----------------------------------------------------------------------

    def _image_name(self, reference: str) -> str:
        sep = "@" if ":" in reference and reference.split(":", 1)[0] in ("sha256", "sha512") else ":"
        return f"{self.ref.name}{sep}{reference}"

    def _is_registry(self, target: _Target) -> bool:
        self._ensure_scheme()
        return target.netloc == _Target.of(f"{self._scheme}://{self.host}").netloc and target.scheme == self._scheme

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Optional[dict[str, str]] = None,
        what: str,
        body: Optional[bytes] = None,
        ok: tuple[int, ...] = (200,),
        registry_auth: bool = True,
    ) -> Response:
        """One logical request: redirects, authentication and retries included.  Returns a
        response whose status is in ``ok``; otherwise raises a one-line error."""
        try:
            return self._request(method, url, headers=headers, what=what, body=body, ok=ok, registry_auth=registry_auth)
        except ValueError as exc:
            raise unusable(what, exc) from None

    def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Optional[dict[str, str]],
        what: str,
        body: Optional[bytes],
        ok: tuple[int, ...],
        registry_auth: bool,
    ) -> Response:
        headers = dict(headers or {})
        attempt = 0
        auth_rounds = 0
        redirects = 0
        while True:
            target = _Target.of(url)
            to_registry = registry_auth and self._is_registry(target)
            h = dict(headers)
            if to_registry:
                value = self.auth.header()
                if value:
                    h["Authorization"] = value
            try:
                resp = self._send(method, url, h, body)
            except ssl.SSLCertVerificationError as exc:
                raise RegistryError(self._tls_message(target, exc)) from None
            except ssl.SSLError as exc:
                if not isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                    raise RegistryError(f"{what}: TLS handshake with {target.netloc} failed: {exc.reason or exc}") from None
                attempt += 1
                if attempt > self.options.retries:
                    raise RegistryError(f"{what}: cannot reach {target.netloc}: {_describe(exc)}") from None
                time.sleep(backoff_delay(attempt))
                continue
            except (OSError, http.client.HTTPException) as exc:
                attempt += retry_cost(exc)
                if attempt > self.options.retries:
                    raise RegistryError(f"{what}: cannot reach {target.netloc}: {_describe(exc)}") from None
                log.debug("%s: %s; retrying", target.netloc, _describe(exc))
                time.sleep(backoff_delay(attempt))
                continue
            status = resp.status
            if status in REDIRECT_STATUSES and resp.headers.get("Location"):
                location = resp.headers["Location"]
                resp.drain()
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise RegistryError(f"{what}: too many redirects (last to {location})")
                url = urllib.parse.urljoin(url, location)
                if status == 303:
                    method, body = "GET", None
                continue
            if status in ok:
                return resp
            if status == 401 and to_registry:
                www = resp.headers.get_all("WWW-Authenticate") or []
                detail = error_detail(resp.drain())
                if auth_rounds >= 2 or not www:
                    raise RegistryError(self.auth.failed_message(401, detail))
                auth_rounds += 1
                self.auth.challenge(www, h.get("Authorization"))
                continue
            if status in RETRY_STATUSES:
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                detail = error_detail(resp.drain())
                attempt += 1
                if attempt > self.options.retries:
                    extra = f": {detail}" if detail else ""
                    raise RegistryError(f"{what}: HTTP {status} from {target.netloc} after {attempt} attempts{extra}")
                time.sleep(backoff_delay(attempt, retry_after))
                continue
            body_bytes = resp.drain()
            detail = error_detail(body_bytes)
            raise self._status_error(status, what, detail, _error_codes(body_bytes), target, to_registry)

    def _status_error(self, status: int, what: str, detail: str, codes: set[str], target: _Target, to_registry: bool) -> ConverterError:
        if status == 404:
            if "NAME_UNKNOWN" in codes:
                return NotFoundError(f"{what}: repository {self.ref.repository} not found on {self.ref.registry}")
            extra = f" ({detail})" if detail else ""
            return NotFoundError(f"{what}: not found on {target.netloc}{extra}")
        if status in (401, 403) and to_registry:
            return RegistryError(self.auth.failed_message(status, detail))
        if status in (401, 403):
            return RegistryError(f"{what}: {target.netloc} refused access (HTTP {status})" + (f": {detail}" if detail else ""))
        if status == 416:
            return RegistryError(f"{what}: {target.netloc} cannot serve the requested range")
        return RegistryError(f"{what}: HTTP {status} from {target.netloc}" + (f": {detail}" if detail else ""))

    def _token_fetch(self, method: str, url: str, headers: dict[str, str], body: Optional[bytes]) -> tuple[int, dict[str, str], bytes]:
        """Transport for the authenticator: no registry Authorization, no redirects
        followed with credentials (a redirect is returned as it is and fails there)."""
        try:
            return self._token_fetch_once(method, url, headers, body)
        except ValueError as exc:
            raise unusable("token service", exc) from None
        except InputError as exc:  # (a body over the limit: the registry's failure, not the image's)
            raise RegistryError(str(exc)) from None

    def _token_fetch_once(self, method: str, url: str, headers: dict[str, str], body: Optional[bytes]) -> tuple[int, dict[str, str], bytes]:
        attempt = 0
        while True:
            try:
                resp = self._send(method, url, headers, body)
            except ssl.SSLCertVerificationError as exc:
                raise RegistryError(self._tls_message(_Target.of(url), exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                attempt += retry_cost(exc)
                if attempt > self.options.retries:
                    raise RegistryError(f"token service {url.split('?')[0]}: {_describe(exc)}") from None
                time.sleep(backoff_delay(attempt))
                continue
            if resp.status in RETRY_STATUSES and attempt < self.options.retries:
                attempt += 1
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                resp.drain()
                time.sleep(backoff_delay(attempt, retry_after))
                continue
            data = resp.read_all(1 << 20, what="token response")
            return resp.status, dict(resp.headers.items()), data

    # -- scheme discovery -----------------------------------------------------------------

    def _ensure_scheme(self) -> None:
        if self._scheme is not None:
            return
        if not self._allow_http:
            self._scheme = "https"
            return
        https_url = f"https://{self.host}/v2/"
        try:
            resp = self._send("GET", https_url, {}, None, timeout=min(self.options.timeout, PROBE_TIMEOUT))
            resp.drain()
            self._scheme = "https"
            return
        except ssl.SSLCertVerificationError as exc:
            raise RegistryError(self._tls_message(_Target.of(https_url), exc)) from None
        except ssl.SSLError as exc:
            if exc.reason not in _NOT_TLS_REASONS and not isinstance(exc, ssl.SSLEOFError):
                # the server speaks TLS but the handshake failed (e.g. it wants a client
                # certificate): plain HTTP would only hide the real problem
                raise RegistryError(
                    f"TLS handshake with {self.host} failed: {exc.reason or exc} "
                    "(a client certificate may be required: see --cert-dir)"
                ) from None
            log.debug("%s does not speak HTTPS (%s); trying plain HTTP", self.host, _describe(exc))
        except (OSError, http.client.HTTPException) as exc:
            log.debug("%s does not speak HTTPS (%s); trying plain HTTP", self.host, _describe(exc))
        self._scheme = "http"

    def _tls_message(self, target: _Target, exc: Exception) -> str:
        reason = getattr(exc, "verify_message", None) or str(exc)
        return (
            f"TLS certificate verification failed for {target.netloc}: {reason} "
            "(use --ca-file or --cert-dir to trust its CA, or --insecure)"
        )

    # -- connections ----------------------------------------------------------------------

    def _proxy_for(self, target: _Target) -> Optional[_Proxy]:
        if BYPASS_PROXY_FOR_LOOPBACK and is_loopback_host(target.host):
            return None
        proxies = urllib.request.getproxies_environment()
        url = proxies.get(target.scheme) or proxies.get("all")
        if not url:
            return None
        if urllib.request.proxy_bypass_environment(target.netloc if ":" not in target.host else target.host, proxies):
            return None
        if "://" not in url:
            url = "http://" + url
        p = urllib.parse.urlsplit(url)
        if p.scheme != "http" or not p.hostname:
            raise UsageError(f"unsupported proxy {url!r}: only http:// proxies are supported")
        auth = None
        if p.username is not None:
            import base64

            raw = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}".encode()
            auth = "Basic " + base64.b64encode(raw).decode("ascii")
        return _Proxy(p.hostname, p.port or 80, auth)

    def _ssl_context(self, target: _Target) -> ssl.SSLContext:
        with self._lock:
            if self._registry_ctx is None:
                self._registry_ctx, self._other_ctx = self._build_contexts()
            registry = _Target.of(f"https://{self.host}")
            if target.host == registry.host and target.port == registry.port:
                return self._registry_ctx
            assert self._other_ctx is not None
            return self._other_ctx

    def _build_contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        opts = self.options
        other = ssl.create_default_context()
        reg = ssl.create_default_context()
        if opts.ca_file:
            for ctx in (reg, other):
                try:
                    ctx.load_verify_locations(cafile=opts.ca_file)
                except (OSError, ssl.SSLError) as exc:
                    raise UsageError(f"cannot load --ca-file {opts.ca_file}: {exc}") from None
        cert_dirs = [opts.cert_dir] if opts.cert_dir else [
            os.path.join(base, self.host) for base in ("/etc/containers/certs.d", "/etc/docker/certs.d")
        ]
        for d in cert_dirs:
            if not d or not os.path.isdir(d):
                if opts.cert_dir and d == opts.cert_dir:
                    raise UsageError(f"--cert-dir {d} is not a directory")
                continue
            for crt in sorted(glob.glob(os.path.join(glob.escape(d), "*.crt"))):
                try:
                    reg.load_verify_locations(cafile=crt)
                except (OSError, ssl.SSLError) as exc:
                    raise UsageError(f"cannot load CA certificate {crt}: {exc}") from None
            for cert in sorted(glob.glob(os.path.join(glob.escape(d), "*.cert"))):
                key = cert[: -len(".cert")] + ".key"
                if not os.path.exists(key):
                    raise UsageError(f"client certificate {cert} has no matching key {os.path.basename(key)}")
                try:
                    reg.load_cert_chain(cert, key)
                except (OSError, ssl.SSLError) as exc:
                    raise UsageError(f"cannot load client certificate {cert}: {exc}") from None
            for key in glob.glob(os.path.join(glob.escape(d), "*.key")):
                if not os.path.exists(key[: -len(".key")] + ".cert"):
                    raise UsageError(f"client key {key} has no matching certificate")
        if opts.insecure:
            reg.check_hostname = False
            reg.verify_mode = ssl.CERT_NONE
        return reg, other

    def _send(self, method: str, url: str, headers: dict[str, str], body: Optional[bytes], *, timeout: Optional[float] = None) -> Response:
        """One HTTP exchange (no redirects, auth or retries); raises transport errors.
        A pooled keep-alive connection that turns out dead is replaced once, silently."""
        target = _Target.of(url)
        proxy = self._proxy_for(target)
        key = (target.scheme, target.host, target.port, proxy)
        p = urllib.parse.urlsplit(url)
        path = p.path or "/"
        if p.query:
            path += "?" + p.query
        if proxy is not None and target.scheme == "http":
            path = f"http://{target.netloc}{path}"
        h = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        if proxy is not None and proxy.auth and target.scheme == "http":
            h["Proxy-Authorization"] = proxy.auth
        for fresh in (False, True):
            conn, reused = self._acquire(key, target, proxy, fresh=fresh, timeout=timeout)
            try:
                self.requests += 1
                conn.request(method, path, body=body, headers=h)
                resp = conn.getresponse()
            except _STALE as exc:
                conn.close()
                if reused and not fresh:
                    continue
                raise exc
            except BaseException:
                conn.close()
                raise
            return Response(self, key, conn, resp, url)
        raise AssertionError("unreachable")

    def _acquire(
        self, key: tuple, target: _Target, proxy: Optional[_Proxy], *, fresh: bool, timeout: Optional[float] = None
    ) -> tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            with self._lock:
                idle = self._pool.get(key)
                if idle:
                    return idle.pop(), True
        timeout = timeout or self.options.timeout
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            ctx = self._ssl_context(target)
            if proxy is not None:
                conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=timeout, context=ctx)
                tunnel_headers = {"Proxy-Authorization": proxy.auth} if proxy.auth else None
                conn.set_tunnel(target.host, target.port, headers=tunnel_headers)
            else:
                conn = http.client.HTTPSConnection(target.host, target.port, timeout=timeout, context=ctx)
        elif proxy is not None:
            conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        return conn, False

    def _release(self, key: tuple, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        if resp.isclosed() and not resp.will_close and conn.sock is not None:
            conn.timeout = self.options.timeout
            try:
                conn.sock.settimeout(self.options.timeout)
            except OSError:
                conn.close()
                return
            with self._lock:
                idle = self._pool.setdefault(key, [])
                if len(idle) < 4:
                    idle.append(conn)
                    return
        conn.close()


def _silent(event: str, **info: Any) -> None:
    """Progress sink for small JSON blobs, which are not shown as downloads."""


_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.CannotSendRequest)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, Stalled):
        return f"stalled: {exc}"
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed mid-transfer ({len(exc.partial)} bytes read, more expected)"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _BlobReader(io.RawIOBase):
    """Raw reader over one blob; reopens with ``Range`` after a dropped connection."""

    def __init__(
        self,
        client: RegistryClient,
        digest: str,
        size: Optional[int],
        *,
        urls: tuple[str, ...],
        what: str,
        progress: Optional[Callable[..., None]],
    ) -> None:
        super().__init__()
        self._client = client
        self.digest = digest
        self._size = size
        self._what = f"{what} {digest}"
        self._progress = progress
        self._sources: list[tuple[str, bool]] = [(u, False) for u in urls if u.startswith(("http://", "https://"))]
        self._sources.append(("", True))  # the registry, resolved lazily
        self._source: Optional[tuple[str, bool]] = None
        self._resp: Optional[Response] = None
        self._pos = 0
        self._end: Optional[int] = size
        self._failures = 0
        self._resumes = 0
        self._since_failure = 0
        self._started = False
        self._done = False
        self._watch = _SpeedWatch(client.options.timeout)
        self.resumed_at: list[int] = []

    def readable(self) -> bool:
        return True

    def _emit(self, event: str, **info: Any) -> None:
        if self._progress is not None:
            self._progress(event, **info)

    def _open(self) -> None:
        headers = {"Range": f"bytes={self._pos}-"} if self._pos else {}
        candidates = [self._source] if self._source is not None else list(self._sources)
        last: Optional[ConverterError] = None
        for url, is_registry in candidates:  # type: ignore[misc]
            real = self._client.blob_url(self.digest) if is_registry else url
            try:
                resp = self._client.request(
                    "GET", real, headers=headers, what=self._what, ok=(200, 206), registry_auth=is_registry
                )
            except ConverterError as exc:
                last = exc
                if not is_registry:
                    log.info("%s: foreign URL %s failed (%s); trying the next source", self._what, url, exc)
                continue
            self._source = (url, is_registry)
            self._accept(resp)
            self._watch = _SpeedWatch(self._client.options.timeout)
            return
        assert last is not None
        raise last

    def _accept(self, resp: Response) -> None:
        if resp.status == 206:
            cr = resp.headers.get("Content-Range", "")
            try:
                unit, _, rest = cr.partition(" ")
                span, _, total = rest.partition("/")
                start = int(span.split("-", 1)[0])
            except ValueError:
                resp.close()
                raise RegistryError(f"{self._what}: bad Content-Range {cr!r} in a resumed download") from None
            if unit != "bytes" or start != self._pos:
                resp.close()
                raise RegistryError(f"{self._what}: server resumed at {cr!r}, expected byte {self._pos}")
            if total.isdigit():
                self._end = int(total)
        else:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit():
                self._end = int(length)
            if self._pos:  # the server ignored Range: skip what we already have
                skip = self._pos
                scratch = bytearray(min(skip, 1 << 16))
                while skip:
                    n = resp.raw.readinto(memoryview(scratch)[: min(skip, len(scratch))])
                    if not n:
                        resp.close()
                        raise RegistryError(f"{self._what}: connection closed while skipping to byte {self._pos}")
                    skip -= n
        self._resp = resp
        if not self._started:
            self._started = True
            self._emit("blob-start", digest=self.digest, size=self._size if self._size is not None else self._end)

    def _drop(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            conn = resp._conn
            resp._conn = None
            if conn is not None:
                conn.close()

    def readinto(self, b: Any) -> int:
        if self._done:
            return 0
        view = memoryview(b).cast("B")
        while True:
            if self._resp is None:
                self._open()
            assert self._resp is not None
            try:
                # what one receive brings (HTTPResponse.readinto waits until the whole
                # buffer is full: a dripping server would never let the watch look)
                piece = self._resp.raw.read1(len(view))
                n = len(piece)
                view[:n] = piece
                error: Optional[BaseException] = None
                if n == 0 and self._end is not None and self._pos < self._end:
                    error = http.client.IncompleteRead(b"", self._end - self._pos)
                elif n:
                    self._watch.got(n)
            except (OSError, http.client.HTTPException) as exc:
                n, error = 0, exc
            if error is not None:
                self._drop()
                self._resumes += 1
                if self._since_failure < RESUME_PROGRESS_RESET:
                    self._failures += retry_cost(error)
                self._since_failure = 0
                if self._failures > self._client.options.retries or self._resumes > MAX_RESUMES:
                    raise RegistryError(
                        f"{self._what}: download failed at byte {self._pos} after {self._resumes} attempts: {_describe(error)}"
                    )
                log.info("%s: %s at byte %d; resuming", self._what, _describe(error), self._pos)
                self.resumed_at.append(self._pos)
                self._emit("blob-resume", digest=self.digest, offset=self._pos, error=_describe(error))
                time.sleep(backoff_delay(self._failures))
                continue
            if n == 0:
                self._done = True
                resp, self._resp = self._resp, None
                resp.close()
                self._emit("blob-done", digest=self.digest)
                return 0
            self._pos += n
            self._since_failure += n
            if self._since_failure >= RESUME_PROGRESS_RESET:
                self._failures = 0
            self._emit("blob-bytes", digest=self.digest, n=n)
            return n

    def close(self) -> None:
        if not self.closed:
            if self._resp is not None:
                if self._done:
                    self._resp.close()
                else:
                    self._drop()
        super().close()

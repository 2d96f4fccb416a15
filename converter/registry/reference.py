"""Registry references: ``[docker://][REGISTRY/]NAME[:TAG][@DIGEST]``.

Docker's normalisation rules apply: a first path component is a registry host only when it
contains a ``.`` or a ``:`` or is ``localhost`` (or a bracketed IPv6 address); otherwise the
registry is Docker Hub (``docker.io``), whose one-component names live under ``library/``.
Without a tag or a digest the tag is ``latest``.  Docker Hub's API is served from
``registry-1.docker.io``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..digest import parse_digest
from ..errors import InputError, UsageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
DEFAULT_TAG = "latest"

# distribution/reference grammar: path components are lowercase alphanumerics with
# separators ("." "_" "__" or runs of "-"); a tag is at most 128 word characters, '.', '-'.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_HOST = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]+)?"
)
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised reference.  ``tag`` is kept even when ``digest`` pins the
    manifest (the digest wins for fetching; the tag still names the image)."""

    registry: str  # "docker.io", "localhost:5000", "[::1]:5000"
    repository: str  # "library/alpine", "team/app"
    tag: Optional[str] = None
    digest: Optional[str] = None

    @property
    def api_host(self) -> str:
        """The host[:port] that serves the /v2/ API."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def hostname(self) -> str:
        """The registry host without port or IPv6 brackets."""
        host = self.registry
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.hostname)

    @property
    def manifest_ref(self) -> str:
        """What goes in ``/v2/NAME/manifests/<ref>``: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def name(self) -> str:
        """``registry/repository`` (fully qualified, no tag)."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """Docker's short form: ``alpine``, ``user/app``, ``localhost:5000/x``."""
        if self.registry == DOCKER_HUB:
            repo = self.repository
            return repo[len("library/") :] if repo.startswith("library/") and repo.count("/") == 1 else repo
        return self.name

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    return host in _LOOPBACK_HOSTS or host.startswith("127.") or host == "::1"


def parse_reference(text: str) -> Reference:
    """Parse and normalise a reference; a malformed one is a :class:`UsageError`."""
    orig = text
    if text.startswith("docker://"):
        text = text[len("docker://") :]
    if not text:
        raise UsageError(f"bad image reference {orig!r}: empty")
    digest: Optional[str] = None
    if "@" in text:
        text, digest = text.split("@", 1)
        try:
            parse_digest(digest, what=f"image reference {orig!r}")
        except InputError as exc:
            raise UsageError(exc.message) from None
    tag: Optional[str] = None
    last_slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > last_slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise UsageError(f"bad image reference {orig!r}: invalid tag {tag!r}")
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _HOST.fullmatch(first):
            raise UsageError(f"bad image reference {orig!r}: invalid registry host {first!r}")
        registry, repository = first, rest
        if registry.lower() in _HUB_ALIASES:
            registry = DOCKER_HUB
    else:
        registry, repository = DOCKER_HUB, text
    if registry == DOCKER_HUB and "/" not in repository:
        repository = "library/" + repository
    if not repository:
        raise UsageError(f"bad image reference {orig!r}: no repository name")
    for comp in repository.split("/"):
        if not _COMPONENT.fullmatch(comp):
            hint = " (repository names must be lowercase)" if comp.lower() != comp else ""
            raise UsageError(f"bad image reference {orig!r}: invalid repository name {repository!r}{hint}")
    if len(registry) + 1 + len(repository) > 255:
        raise UsageError(f"bad image reference {orig!r}: name longer than 255 characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)

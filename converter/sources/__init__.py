"""Sources: recognise a layout and resolve it to an :class:`~converter.image.Image`.

Accepted specs (skopeo's transports, plus a bare path that is auto-detected)::

    docker-archive:PATH[:REF]   oci:DIR[:REF]   oci-archive:PATH[:REF]   docker://REF
    PATH                        -  (standard input: a docker save or OCI archive)
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Optional

from ..errors import InputError, NotFoundError, UsageError
from ..image import Image, Platform
from .archive import TarArchive, open_archive_file
from .blobstore import ArchiveStore, DirectoryStore
from .docker_archive import image_from_docker_archive
from .oci import image_from_layout

TRANSPORTS = ("docker-archive", "oci", "oci-archive", "docker")
#: skopeo/containers-image transports that need a daemon, a store or another format
_OTHER_TRANSPORTS = frozenset({"containers-storage", "docker-daemon", "dir", "ostree", "sif", "tarball"})


class SourceSpec(NamedTuple):
    transport: Optional[str]  # None: auto-detect a path
    path: str  # a path, "-", or for docker:// the reference
    ref: Optional[str]

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.path}"
        base = f"{self.transport}:{self.path}" if self.transport else self.path
        return f"{base}:{self.ref}" if self.ref and self.transport else base


def parse_spec(text: str, *, ref: Optional[str] = None) -> SourceSpec:
    """Split a transport-prefixed spec.  As in skopeo, the first ``:`` after the path ends
    it, unless the whole remainder names an existing file or directory."""
    if text.startswith("docker://"):
        return SourceSpec("docker", text[len("docker://"):], None)
    for transport in ("docker-archive", "oci-archive", "oci"):
        prefix = transport + ":"
        if text.startswith(prefix):
            rest = text[len(prefix):]
            if not rest:
                raise UsageError(f"{text!r}: missing path after {prefix}")
            if os.path.exists(rest) or ":" not in rest:
                return SourceSpec(transport, rest, ref)
            path, _, embedded = rest.partition(":")
            return SourceSpec(transport, path, embedded or ref or None)  # (the source argument is the more specific)
    if text == "-" or os.path.exists(text):
        return SourceSpec(None, text, ref)
    if ":" in text:  # PATH:REF for a bare path that exists
        path, _, embedded = text.partition(":")
        if path and os.path.exists(path):
            return SourceSpec(None, path, embedded or ref or None)
    prefix = text.split(":", 1)[0] if ":" in text else ""
    if prefix in _OTHER_TRANSPORTS:
        raise UsageError(f"{prefix}: is a transport this tool does not read; it reads a path, "
                         f"docker-archive:, oci:, oci-archive: and docker:// (e.g. `skopeo copy {text} "
                         f"oci-archive:image.tar`, then convert that)")
    hint = ""
    if text.startswith(("http://", "https://")):
        plain = text.startswith("http://")
        hint = (f" (to pull from a registry, write docker://{text.split('://', 1)[1]}"
                + (", with --insecure for plain HTTP)" if plain else ")"))
    elif not text.startswith(("/", ".", "~")) and "/" not in text.split(":", 1)[0][:1]:
        hint = f" (to pull from a registry, write docker://{text})"
    raise NotFoundError(f"{text}: no such file or directory{hint}")


def open_image(
    spec: str | SourceSpec,
    *,
    ref: Optional[str] = None,
    platform: Optional[Platform | str] = None,
    registry_options: Any = None,
) -> Image:
    """Open an image for reading.  The caller must :meth:`Image.close` it (or use ``with``)."""
    s = spec if isinstance(spec, SourceSpec) else parse_spec(spec, ref=ref)
    if ref and not s.ref:
        s = SourceSpec(s.transport, s.path, ref)
    want = Platform.parse(platform) if isinstance(platform, str) else platform
    if s.transport == "docker":
        from ..registry.source import RegistryOptions, open_registry_image

        return open_registry_image(s.path, platform=want, options=registry_options or RegistryOptions())
    if s.transport == "oci" or (s.transport is None and os.path.isdir(s.path)):
        return _open_layout_dir(s, want)
    if s.path != "-" and os.path.isdir(s.path):
        raise InputError(f"{s.path}: is a directory; {s.transport}: expects an archive file")
    return _open_archive(s, want)


def _open_layout_dir(s: SourceSpec, want: Optional[Platform]) -> Image:
    if not os.path.isdir(s.path):
        if os.path.exists(s.path):
            raise InputError(f"{s.path}: is a file, and oci: names an OCI layout directory "
                             f"(for an archive write oci-archive:{s.path}, or the path alone)")
        raise NotFoundError(f"{s.path}: no such directory")
    closers: list = []
    return _owning(closers, lambda: image_from_layout(DirectoryStore(s.path, closers), ref=s.ref, platform=want,
                                                      source=str(s), fmt="oci"))


def _open_archive(s: SourceSpec, want: Optional[Platform]) -> Image:
    label = "<stdin>" if s.path == "-" else s.path
    archive, closers = open_archive_file(s.path, label=label)
    return _owning(closers, lambda: _image_from_archive(archive, s, want))


def _owning(closers: list, build: Callable[[], Image]) -> Image:
    """Build an image that takes over ``closers`` (open fds); close them if building fails."""
    try:
        image = build()
    except BaseException:
        for c in closers:
            c()
        raise
    image._closers.extend(closers)
    return image


def _image_from_archive(archive: TarArchive, s: SourceSpec, want: Optional[Platform]) -> Image:
    has_manifest = archive.has("manifest.json")
    has_layout = archive.has("oci-layout") and archive.has("index.json")
    if s.transport == "oci-archive" or (s.transport is None and has_layout and not has_manifest):
        if not has_layout:
            raise InputError(f"{archive.label}: not an OCI archive (no oci-layout/index.json)")
        return image_from_layout(ArchiveStore(archive), ref=s.ref, platform=want, source=str(s), fmt="oci-archive")
    if has_manifest:
        return image_from_docker_archive(archive, ref=s.ref, platform=want, source=str(s))
    raise InputError(
        f"{archive.label}: not a docker save or OCI archive (no manifest.json, no oci-layout + index.json)"
    )


def list_choices(spec: str | SourceSpec) -> list[dict[str, Any]]:
    """The images (reference, platform, digest) a local source holds, without choosing."""
    s = spec if isinstance(spec, SourceSpec) else parse_spec(spec)
    if s.transport == "docker":
        return []
    from .docker_archive import docker_archive_choices
    from .oci import layout_choices

    if s.transport == "oci" or (s.transport is None and os.path.isdir(s.path)):
        closers: list = []
        try:
            return layout_choices(DirectoryStore(s.path, closers))
        finally:
            for c in closers:
                c()
    archive, closers = open_archive_file(s.path, label="<stdin>" if s.path == "-" else s.path)
    try:
        if s.transport != "oci-archive" and archive.has("manifest.json"):
            return docker_archive_choices(archive)
        return layout_choices(ArchiveStore(archive))
    finally:
        for c in closers:
            c()

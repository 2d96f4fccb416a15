"""The source-independent picture of an image: what every source yields and the merge reads.

A source resolves its on-disk or on-wire layout down to one :class:`Image`: the chosen
manifest, the parsed config and the layers in apply order (bottom first).  Layers open lazily;
nothing is extracted or decompressed here.  This is go-containerregistry's ``v1.Image`` idea:
sinks and the merge never care where the bytes come from.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Callable, NamedTuple, Optional

from .errors import UsageError

# These types are named tuples and plain classes, not dataclasses: a plain conversion
# builds them before its helpers start (converter.prestart), and importing dataclasses
# (with inspect, ast, dis, tokenize) and generating the classes took 15 of the ~45 ms of
# imports before the first layer reached a helper, with the second core idle.


class ByValue:
    """Equal when of the same class with equal attributes, as the dataclasses these
    classes were; mutable, so unhashable."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]


class Platform(NamedTuple):
    """An OCI platform; ``variant`` and ``os_version`` are optional refinements."""

    os: str
    architecture: str
    variant: Optional[str] = None
    os_version: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"bad platform {text!r}: expected os/arch[/variant], e.g. linux/arm64/v8")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> "Platform":
        machine = os.uname().machine.lower()  # (what platform.machine() says, without importing it)
        arch, variant = _ARCH_ALIASES.get(machine, (machine, None))
        return cls("linux", arch, variant)

    @classmethod
    def from_json(cls, obj: Any) -> Optional["Platform"]:
        if not isinstance(obj, dict):
            return None
        os_ = obj.get("os")
        arch = obj.get("architecture")
        if not isinstance(os_, str) or not isinstance(arch, str):
            return None
        variant = obj.get("variant") if isinstance(obj.get("variant"), str) else None
        os_version = obj.get("os.version") if isinstance(obj.get("os.version"), str) else None
        return cls(os_, arch, variant or None, os_version or None)

    def matches(self, want: "Platform") -> bool:
        """Does this (offered) platform satisfy ``want``?  A missing wanted variant accepts
        any; arm64 without a variant is taken as v8, as containerd does."""
        if self.os != want.os or self.architecture != want.architecture:
            return False
        if want.variant is None:
            return True
        mine = self.variant or _DEFAULT_VARIANT.get(self.architecture)
        return mine == want.variant

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s


_ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", None),
    "i386": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}
_DEFAULT_VARIANT = {"arm64": "v8"}


class FileRegion(NamedTuple):
    """Bytes that sit contiguously in an open regular file: lets readers ``pread`` and
    ``sendfile`` straight from the source instead of copying through Python buffers.
    The fd belongs to the source and stays open until :meth:`Image.close`."""

    fd: int
    offset: int
    size: int


class Blob(ByValue):
    """A content-addressed blob as the source stores it (compressed or not).

    ``open`` returns a fresh binary stream positioned at the blob's first byte; ``region``
    is set when the blob is a plain stretch of a regular file; ``where`` says where the
    bytes are, for error messages: a path, an archive member, a URL.
    """

    def __init__(self, open: Callable[[], BinaryIO], region: Optional[FileRegion] = None, where: str = "") -> None:
        self.open = open
        self.region = region
        self.where = where

    def __repr__(self) -> str:
        return f"Blob(where={self.where!r}, region={self.region!r})"


class Layer(ByValue):
    """One layer descriptor, in apply order (``index`` 0 is the bottom layer): the stored
    blob's descriptor digest, size and media type when the format has them, and its
    ``diff_id`` (config ``rootfs.diff_ids[index]``: the digest of the uncompressed tar)."""

    def __init__(self, index: int, blob: Blob, digest: Optional[str] = None, size: Optional[int] = None,
                 media_type: Optional[str] = None, diff_id: Optional[str] = None, urls: tuple[str, ...] = (),
                 annotations: Optional[dict[str, str]] = None) -> None:
        self.index = index
        self.blob = blob
        self.digest = digest
        self.size = size
        self.media_type = media_type
        self.diff_id = diff_id
        self.urls = urls
        self.annotations: dict[str, str] = {} if annotations is None else annotations

    def __repr__(self) -> str:
        return f"Layer(index={self.index}, digest={self.digest!r}, size={self.size}, diff_id={self.diff_id!r})"

    @property
    def label(self) -> str:
        """How messages name this layer: position and a short digest."""
        d = self.digest or self.diff_id
        short = f" ({d[:19]}…)" if d else ""
        return f"layer {self.index + 1}{short}"


class Image(ByValue):
    """A resolved image.  ``layers`` are bottom to top, repeats included; ``format`` is
    the layout the source recognised, e.g. "docker-archive", "oci", "oci-archive"."""

    def __init__(self, source: str, layers: list[Layer], config: dict[str, Any],
                 manifest: Optional[dict[str, Any]] = None, manifest_digest: Optional[str] = None,
                 config_digest: Optional[str] = None, reference: Optional[str] = None,
                 platform: Optional[Platform] = None, format: str = "",
                 _closers: Optional[list[Callable[[], None]]] = None) -> None:
        self.source = source
        self.layers = layers
        self.config = config
        self.manifest: dict[str, Any] = {} if manifest is None else manifest
        self.manifest_digest = manifest_digest
        self.config_digest = config_digest
        self.reference = reference
        self.platform = platform
        self.format = format
        self._closers: list[Callable[[], None]] = [] if _closers is None else _closers

    def __repr__(self) -> str:
        return (f"Image(source={self.source!r}, format={self.format!r}, reference={self.reference!r}, "
                f"layers={len(self.layers)}, manifest_digest={self.manifest_digest!r})")

    @property
    def diff_ids(self) -> list[Optional[str]]:
        return [layer.diff_id for layer in self.layers]

    def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except OSError:
                pass

    def __enter__(self) -> "Image":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def close_fd(fd: int) -> Callable[[], None]:
    """A closer for :attr:`Image._closers` that tolerates an fd already closed."""

    def _close() -> None:
        try:
            os.close(fd)
        except OSError:
            pass

    return _close

"""Content-addressed blob access for OCI layouts, whether a directory or a tar archive.

Blob paths are derived only from validated digests (``blobs/<alg>/<hex>``), so a manifest
can never name a file outside the layout.  Small JSON blobs (manifests, configs) are read
whole and verified before they are parsed; layer blobs are verified by the merge as they
stream.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any, Optional

from ..digest import parse_digest
from ..errors import InputError, IntegrityError, NotFoundError
from ..image import Blob, FileRegion, close_fd
from .archive import MAX_JSON, TarArchive, json_too_large, open_region, parse_json


class BlobStore:
    label: str

    def blob(self, digest: str, size: Optional[int], *, what: str) -> Blob:
        raise NotImplementedError

    def read_file(self, name: str, *, what: str) -> bytes:
        raise NotImplementedError

    def has_file(self, name: str) -> bool:
        raise NotImplementedError

    def read_json_file(self, name: str, *, what: str) -> Any:
        return parse_json(self.read_file(name, what=what), what=f"{self.label}: {what}")

    def read_blob(self, digest: str, size: Optional[int], *, what: str) -> bytes:
        """Whole small blob, checked against digest and size before anyone parses it."""
        if size is not None and size > MAX_JSON:
            raise json_too_large(f"{self.label}: {what} {digest}", size)
        b = self.blob(digest, size, what=what)
        assert b.region is not None
        data = os.pread(b.region.fd, b.region.size, b.region.offset)
        alg, hexpart = parse_digest(digest, what=what)
        if size is not None and len(data) != size:
            raise IntegrityError(f"{self.label}: {what} {digest}: size {len(data)} does not match the descriptor's {size}")
        if hashlib.new(alg, data).hexdigest() != hexpart:
            raise IntegrityError(f"{self.label}: {what} {digest}: content does not match its digest")
        return data

    def read_json_blob(self, digest: str, size: Optional[int], *, what: str) -> Any:
        return parse_json(self.read_blob(digest, size, what=what), what=f"{self.label}: {what} {digest}")


def blob_path(digest: str, *, what: str) -> str:
    alg, hexpart = parse_digest(digest, what=what)
    return f"blobs/{alg}/{hexpart}"


class DirectoryStore(BlobStore):
    """An OCI layout directory; blobs are opened (and kept open) on first use."""

    def __init__(self, root: str, closers: list) -> None:
        self.root = root
        self.label = root
        self._closers = closers
        self._fds: dict[str, int] = {}

    def _open(self, rel: str, *, what: str) -> tuple[int, int]:
        if rel in self._fds:
            fd = self._fds[rel]
            return fd, os.fstat(fd).st_size
        path = os.path.join(self.root, rel)
        try:
            # O_NONBLOCK: a FIFO planted in a layout must not hang the open; checked below
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NotFoundError(f"{self.label}: {what}: {rel} is missing") from None
        except OSError as exc:
            raise InputError(f"{self.label}: {what}: cannot open {rel}: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise InputError(f"{self.label}: {what}: {rel} is not a regular file")
        os.set_blocking(fd, True)
        self._fds[rel] = fd
        self._closers.append(close_fd(fd))
        return fd, st.st_size

    def blob(self, digest: str, size: Optional[int], *, what: str) -> Blob:
        rel = blob_path(digest, what=f"{self.label}: {what}")
        fd, actual = self._open(rel, what=what)
        region = FileRegion(fd, 0, actual)
        return Blob(open=lambda: open_region(region), region=region, where=os.path.join(self.root, rel))

    def has_file(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.root, name))

    def read_file(self, name: str, *, what: str) -> bytes:
        fd, size = self._open(name, what=what)
        if size > MAX_JSON:
            raise json_too_large(f"{self.label}: {name}", size)
        return os.pread(fd, size, 0)


class ArchiveStore(BlobStore):
    """An OCI layout packed in a tar (oci-archive, or the layout inside a Docker 25+ save)."""

    def __init__(self, archive: TarArchive) -> None:
        self.archive = archive
        self.label = archive.label

    def blob(self, digest: str, size: Optional[int], *, what: str) -> Blob:
        rel = blob_path(digest, what=f"{self.label}: {what}")
        if not self.archive.has(rel):
            raise NotFoundError(f"{self.label}: {what} {digest} is missing (no member {rel})")
        return self.archive.blob(rel, what=what)

    def has_file(self, name: str) -> bool:
        return self.archive.has(name)

    def read_file(self, name: str, *, what: str) -> bytes:
        return self.archive.read_bytes(name, what=what)

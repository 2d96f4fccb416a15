"""Digests: parsing ``alg:hex`` strings and checking bytes against them while they stream.

Verification is never optional in the pipeline: a blob is checked against its descriptor
(digest and size) and a decompressed layer against its ``diff_id`` as the bytes go by, and
the check fires at EOF, before the conversion is allowed to commit its output.
"""

from __future__ import annotations

import hashlib
import re
from typing import Optional

from .errors import InputError, IntegrityError

_HEX_LEN = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


def parse_digest(text: object, *, what: str) -> tuple[str, str]:
    """Split and validate ``alg:hex``; only sha256 and sha512 are accepted (as the OCI spec
    requires implementations to support), and the hex part must be exactly lowercase hex of
    the right length, so a digest can never smuggle a path component like ``../``."""
    if not isinstance(text, str):
        raise InputError(f"{what}: digest is not a string: {text!r}")
    m = _DIGEST_RE.match(text)
    if not m:
        raise InputError(f"{what}: malformed digest {text[:80]!r} (expected alg:hex)")
    alg, hexpart = m.group(1), m.group(2)
    if alg not in _HEX_LEN:
        raise InputError(f"{what}: unsupported digest algorithm {alg!r} in {text[:80]!r}")
    if len(hexpart) != _HEX_LEN[alg] or not re.fullmatch(r"[0-9a-f]+", hexpart):
        raise InputError(f"{what}: malformed {alg} digest {text[:80]!r}")
    return alg, hexpart


def new_hasher(digest: str, *, what: str) -> "hashlib._Hash":
    alg, _ = parse_digest(digest, what=what)
    return hashlib.new(alg)


def digest_bytes(data: bytes, alg: str = "sha256") -> str:
    return f"{alg}:{hashlib.new(alg, data).hexdigest()}"


class Expectation:
    """A digest (and optionally a size) that a byte stream must match at EOF."""

    __slots__ = ("digest", "size", "what", "hasher", "count")

    def __init__(self, digest: Optional[str], size: Optional[int], *, what: str) -> None:
        self.digest = digest
        self.size = size
        self.what = what
        self.hasher = new_hasher(digest, what=what) if digest else None
        self.count = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self.count += len(chunk)
        if self.hasher is not None:
            self.hasher.update(chunk)
        if self.size is not None and self.count > self.size:
            raise IntegrityError(f"{self.what}: more bytes than the declared size {self.size}")

    def check(self) -> None:
        if self.size is not None and self.count != self.size:
            raise IntegrityError(
                f"{self.what}: truncated or wrong size: got {self.count} bytes, expected {self.size}"
            )
        if self.hasher is not None and self.digest is not None:
            alg = self.digest.split(":", 1)[0]
            got = f"{alg}:{self.hasher.hexdigest()}"
            if got != self.digest:
                raise IntegrityError(f"{self.what}: digest mismatch: expected {self.digest}, got {got}")

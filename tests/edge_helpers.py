"""Small helpers for ``test_edge_cases.py``: build an image, convert it, compare listings.

Expected trees are written with one constructor per entry type, so a test reads like the
tree it expects::

    expect(
        D("etc"),
        F("etc/passwd", b"root:x:0:0::/root:/bin/sh\\n", mode=0o600),
        L("lib", "/usr/lib"),
        F("a", b"same", link="A"), F("b", b"same", link="A"),  # one inode, two names
    )

``expect`` formats them with :func:`converter.listing.format_listing`, so it is compared
byte for byte with :func:`converter.listing.list_directory` / ``list_tar`` of the output.
Hard-link groups are given by any label shared by the members (``link="A"``); the listing
computes the real column 7 itself.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest

from converter import convert
from converter.errors import ConverterError
from converter.listing import Record, format_listing, list_directory, list_tar, normalise_path
from converter.merge import Events
from converter.testing.imagegen import FIXED_MTIME, ImageSpec, Layer, write_docker_archive

IS_ROOT = os.geteuid() == 0
SINKS = ("dir", "tar")


def _b(path: str | bytes) -> bytes:
    return path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")


def _owner(owner: str) -> tuple[int, int]:
    uid, gid = owner.split(":")
    return int(uid), int(gid)


def _inode(link: Optional[str]) -> Optional[tuple[str, str]]:
    return None if link is None else ("group", link)


def D(path: str | bytes, mode: int = 0o755, owner: str = "0:0", xattrs: Optional[dict[str, bytes]] = None) -> Record:
    """A directory."""
    uid, gid = _owner(owner)
    return Record(_b(path), "d", mode, uid, gid, xattrs=dict(xattrs or {}))


def F(
    path: str | bytes,
    data: bytes = b"",
    mode: int = 0o644,
    owner: str = "0:0",
    link: Optional[str] = None,
    xattrs: Optional[dict[str, bytes]] = None,
) -> Record:
    """A regular file with exactly ``data``; ``link`` labels its hard-link group."""
    uid, gid = _owner(owner)
    return Record(
        _b(path), "f", mode, uid, gid, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        inode=_inode(link), xattrs=dict(xattrs or {}),
    )


def L(path: str | bytes, target: str | bytes, owner: str = "0:0", link: Optional[str] = None) -> Record:
    """A symlink (``target`` verbatim)."""
    uid, gid = _owner(owner)
    return Record(_b(path), "l", 0o777, uid, gid, target=_b(target), inode=_inode(link))


def C(
    path: str | bytes, major: int, minor: int, mode: int = 0o644, owner: str = "0:0", link: Optional[str] = None
) -> Record:
    """A character device."""
    uid, gid = _owner(owner)
    return Record(_b(path), "c", mode, uid, gid, rdev=(major, minor), inode=_inode(link))


def B(
    path: str | bytes, major: int, minor: int, mode: int = 0o644, owner: str = "0:0", link: Optional[str] = None
) -> Record:
    """A block device."""
    uid, gid = _owner(owner)
    return Record(_b(path), "b", mode, uid, gid, rdev=(major, minor), inode=_inode(link))


def P(path: str | bytes, mode: int = 0o644, owner: str = "0:0", link: Optional[str] = None) -> Record:
    """A fifo."""
    uid, gid = _owner(owner)
    return Record(_b(path), "p", mode, uid, gid, inode=_inode(link))


def expect(*records: Record) -> str:
    """The canonical listing of exactly these entries."""
    return format_listing(records)


# ------------------------------------------------------------------------------ running


def image(*layers: Layer | list[Any]) -> ImageSpec:
    """An image of these layers, bottom first (a plain list of entries is one layer)."""
    return ImageSpec(layers=[layer if isinstance(layer, Layer) else Layer(list(layer)) for layer in layers])


@dataclass
class Converted:
    out: Path
    sink: str
    listing: str
    events: Events

    def warnings(self, kind: Optional[str] = None) -> list[str]:
        return [w.message for w in self.events.warnings if kind is None or w.kind == kind]

    def mtime(self, path: str) -> int:
        """The mtime (seconds) of ``path`` (``""`` for the root) in the output."""
        if self.sink == "dir":
            return os.lstat(self.out / path if path else self.out).st_mtime_ns // 1_000_000_000
        return int(tar_member(self.out, path).mtime)

    def stat_root(self) -> tuple[int, int, int]:
        """(mode, uid, gid) of the root directory of the output."""
        if self.sink == "dir":
            st = os.lstat(self.out)
            return st.st_mode & 0o7777, st.st_uid, st.st_gid
        m = tar_member(self.out, "")
        return m.mode & 0o7777, m.uid, m.gid


def write_image(spec: ImageSpec, tmp_path: Path) -> Path:
    src = tmp_path / "image.tar"
    write_docker_archive(src, spec)
    return src


def run(spec: ImageSpec, tmp_path: Path, sink: str, **options: Any) -> Converted:
    """Write ``spec`` as a docker-archive, convert it with ``sink``, list the result."""
    src = write_image(spec, tmp_path)
    out = tmp_path / ("out" if sink == "dir" else "out.tar")
    events = Events()
    convert(str(src), out, flatten=(sink == "tar"), events=events, **options)
    listing = list_directory(out) if sink == "dir" else list_tar(out)
    return Converted(out, sink, listing, events)


def run_error(spec: ImageSpec, tmp_path: Path, sink: str, error: type[ConverterError], *names: str) -> str:
    """Convert ``spec`` expecting ``error``; check that the message names every one of
    ``names`` (layer label, member names) and that nothing was left at the destination."""
    src = write_image(spec, tmp_path)
    out = tmp_path / ("out" if sink == "dir" else "out.tar")
    with pytest.raises(ConverterError) as info:
        convert(str(src), out, flatten=(sink == "tar"))
    assert type(info.value) is error, f"expected {error.__name__}, got {type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out"))
    assert left == [], f"output left behind: {left}"
    return message


# ------------------------------------------------------------------------------ tars


def tar_members(path: Path) -> list[tuple[str, str, str]]:
    """``(name, kind, linkname)`` of every member, in archive order; ``kind`` is ``f d l c
    b p`` or ``h`` for a hard-link member (its linkname then names the head)."""
    kinds = {
        tarfile.REGTYPE: "f", tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l", tarfile.LNKTYPE: "h",
        tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b", tarfile.FIFOTYPE: "p",
    }
    with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as tf:
        return [(m.name, kinds.get(m.type, repr(m.type)), m.linkname) for m in tf.getmembers()]


def tar_member(path: Path, name: str) -> tarfile.TarInfo:
    """The member for normalised ``name`` (``""``: the root entry ``./``)."""
    want = name.encode("utf-8", "surrogateescape")
    with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as tf:
        for m in tf.getmembers():
            if normalise_path(m.name.encode("utf-8", "surrogateescape")) == want:
                return m
    raise AssertionError(f"no member {name!r} in {path}")


def gnu_tar_extract(tar: Path, dest: Path) -> str:
    """Extract ``tar`` with GNU tar as a root user would, and list the result."""
    dest.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(tar), "-C", str(dest)],
        check=True, capture_output=True,
    )
    return list_directory(dest)


__all__ = [
    "B", "C", "D", "F", "FIXED_MTIME", "IS_ROOT", "L", "P", "SINKS", "Converted", "expect", "gnu_tar_extract",
    "image", "run", "run_error", "tar_member", "tar_members", "write_image",
]

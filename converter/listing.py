"""The canonical tree listing: one line per entry of a root filesystem, comparable byte for byte.

This is the format of the ``*.expected.tree`` files in ``fixtures/real/`` (their README gives
the full specification).  One line per entry below the root, sorted by the raw bytes of the
path, eight TAB-separated columns::

    path  type  mode  uid:gid  size  content  hardlink  xattrs

The module is a small core plus front ends:

* :class:`Record` is one entry with every field raw (bytes paths, ints, a hashable inode
  identity shared by hard-linked entries);
* :func:`format_listing` turns any iterable of records into the text: it sorts, labels the
  hard-link groups, drops the excluded xattrs and escapes names;
* :func:`records_from_directory` and :func:`records_from_tar` read a directory tree or a
  (flattened) tar.  ``records_from_tar`` deliberately uses :mod:`tarfile`, not the project's
  own header parser, so that it stays an independent oracle for the converter's output.

Other producers (``rootfs ls`` on an in-memory model, ``rootfs diff``) only need to yield
:class:`Record` objects.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import io
import os
import stat
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Iterator

__all__ = [
    "EMPTY_SHA256",
    "EXCLUDED_XATTR_PREFIXES",
    "Record",
    "escape",
    "format_listing",
    "format_line",
    "format_xattrs",
    "hardlink_labels",
    "list_directory",
    "list_tar",
    "normalise_path",
    "records_from_directory",
    "records_from_tar",
]

#: SHA-256 of the empty string (the content column of an empty regular file).
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

#: xattr names starting with one of these are never listed: they describe the host (SELinux
#: labels, overlayfs bookkeeping, NFSv4 ACLs), not the image.
EXCLUDED_XATTR_PREFIXES: tuple[str, ...] = ("security.selinux", "trusted.overlay.", "system.nfs4_acl")

TYPES = frozenset("fdlcbps")

_CHUNK = 1 << 20


@dataclass(slots=True)
class Record:
    """One entry of a tree, all fields raw.

    ``path`` is relative and normalised (no leading ``./`` or ``/``, no trailing ``/``, no
    empty or ``.`` components).  ``inode`` is any hashable value shared by the entries that
    are the same inode (hard links); ``None`` means "not linked".  Which fields matter
    depends on ``type``: ``size``/``sha256`` for regular files, ``target`` for symlinks,
    ``rdev`` for devices; ``mode`` is ignored for symlinks.  A regular file with
    ``sha256=None`` (not hashed) shows ``-`` in the content column, which no expected tree
    contains.
    """

    path: bytes
    type: str
    mode: int
    uid: int
    gid: int
    size: int | None = None
    sha256: str | None = None
    target: bytes | None = None
    rdev: tuple[int, int] | None = None
    inode: object | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# core: escaping and formatting


def _escape_bytes(raw: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in raw)


def escape(raw: bytes) -> str:
    """Escape a raw name (path, symlink target, hard-link label) for the listing.

    Valid (strict) UTF-8 is written as text, except backslash, C0 controls, DEL and C1
    controls, whose UTF-8 bytes are written as ``\\xHH``.  Anything that is not valid UTF-8
    is written byte by byte: printable ASCII except backslash as itself, every other byte as
    ``\\xHH`` (so even valid multi-byte sequences inside such a name are escaped).
    """
    try:
        text = raw.decode("utf-8", "strict")  # strict: rejects overlongs, surrogates, > U+10FFFF
    except UnicodeDecodeError:
        return _escape_bytes(raw)
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # fast path: the common case
    out = []
    for ch in text:
        o = ord(ch)
        if ch == "\\" or o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0:
            out.append(_escape_bytes(ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def _xattr_name_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def format_xattrs(xattrs: dict[str, bytes]) -> str:
    """Column 8: ``NAME=0xHEX`` sorted by name bytes, joined by ``,``; ``-`` when none is left.

    Names starting with :data:`EXCLUDED_XATTR_PREFIXES` are dropped.  Names are not escaped.
    """
    items = sorted(
        ((name, value) for name, value in xattrs.items() if not name.startswith(EXCLUDED_XATTR_PREFIXES)),
        key=lambda item: _xattr_name_key(item[0]),
    )
    if not items:
        return "-"
    return ",".join(f"{name}=0x{bytes(value).hex()}" for name, value in items)


def hardlink_labels(records: Iterable[Record]) -> dict[bytes, str]:
    """Map the path of every member of a hard-link group to its label (column 7).

    A group is the listed non-directory records sharing a non-``None`` ``inode``; only groups
    of two or more members are labelled, with the escaped path of the smallest member (raw
    byte order).  Paths not in the result get ``-``.
    """
    groups: dict[object, list[bytes]] = {}
    for rec in records:
        if rec.inode is not None and rec.type != "d":
            groups.setdefault(rec.inode, []).append(rec.path)
    labels: dict[bytes, str] = {}
    for members in groups.values():
        if len(members) >= 2:
            label = escape(min(members))
            for path in members:
                labels[path] = label
    return labels


def format_line(rec: Record, hardlink: str = "-") -> str:
    """One listing line for ``rec`` (without the trailing newline).

    ``hardlink`` is column 7 as computed by :func:`hardlink_labels`.
    """
    t = rec.type
    if t not in TYPES:
        raise ValueError(f"{rec.path!r}: unknown entry type {t!r}")
    mode = "-" if t == "l" else format(rec.mode & 0o7777, "o")
    size = "-"
    content = "-"
    if t == "f":
        if rec.size is None:
            raise ValueError(f"{rec.path!r}: regular file without size")
        size = str(rec.size)
        content = rec.sha256 if rec.sha256 is not None else "-"  # "-": content not hashed
    elif t == "l":
        if rec.target is None:
            raise ValueError(f"{rec.path!r}: symlink without target")
        content = "->" + escape(rec.target)
    elif t in "cb":
        if rec.rdev is None:
            raise ValueError(f"{rec.path!r}: device without major:minor")
        content = f"{rec.rdev[0]}:{rec.rdev[1]}"
    return "\t".join(
        (escape(rec.path), t, mode, f"{rec.uid}:{rec.gid}", size, content, hardlink, format_xattrs(rec.xattrs))
    )


def format_listing(records: Iterable[Record]) -> str:
    """The whole listing: lines sorted by raw path bytes, each followed by ``\\n``.

    Hard-link labels are computed over exactly the records given.  Two records with the same
    path are an error (a tree cannot hold them).
    """
    recs = sorted(records, key=lambda r: r.path)
    for a, b in zip(recs, recs[1:]):
        if a.path == b.path:
            raise ValueError(f"duplicate path in listing: {escape(a.path)}")
    labels = hardlink_labels(recs)
    return "".join(format_line(r, labels.get(r.path, "-")) + "\n" for r in recs)


# --------------------------------------------------------------------------------------
# front end: a directory tree


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    while True:
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)


def _read_xattrs(path: bytes) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}  # the file system has no xattrs at all
        raise
    out: dict[str, bytes] = {}
    for name in names:
        if name.startswith(EXCLUDED_XATTR_PREFIXES):
            continue  # not listed, and maybe not even readable (trusted.* as non-root)
        out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def records_from_directory(root: str | os.PathLike[str] | bytes, *, hash_files: bool = True) -> Iterator[Record]:
    """Yield a :class:`Record` for every entry below ``root`` (``root`` itself is not listed).

    Symlinks are never followed (``lstat``, ``llistxattr``); names are bytes.  Entries with
    ``st_nlink > 1`` (except directories) get ``inode = (st_dev, st_ino)``.  The walk uses an
    explicit stack, so depth is limited only by ``PATH_MAX``.  With ``hash_files=False``
    regular files are not read (``sha256=None``; the content column shows ``-``).
    Entries come in no particular order; :func:`format_listing` sorts.
    """
    root_b = os.fsencode(root)
    st = os.stat(root_b)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"not a directory: {os.fsdecode(root_b)}")
    stack: list[bytes] = [b""]  # relative paths of directories still to read
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root_b, rel_dir) if rel_dir else root_b
        with os.scandir(abs_dir) as it:
            entries = [(e.name, e.path) for e in it]
        for name, abs_path in entries:
            rel = rel_dir + b"/" + name if rel_dir else name
            rec = _record_from_path(rel, abs_path, hash_files)
            yield rec
            if rec.type == "d":
                stack.append(rel)


def _record_from_path(rel: bytes, abs_path: bytes, hash_files: bool) -> Record:
    st = os.lstat(abs_path)
    fmt = stat.S_IFMT(st.st_mode)
    rec = Record(
        path=rel,
        type="?",
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        xattrs=_read_xattrs(abs_path),
    )
    if fmt == stat.S_IFREG:
        rec.type = "f"
        rec.size = st.st_size
        if hash_files:
            fd = os.open(abs_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                rec.sha256 = _sha256_fd(fd)
            finally:
                os.close(fd)
    elif fmt == stat.S_IFDIR:
        rec.type = "d"
    elif fmt == stat.S_IFLNK:
        rec.type = "l"
        rec.target = os.readlink(abs_path)
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        rec.type = "c" if fmt == stat.S_IFCHR else "b"
        rec.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    elif fmt == stat.S_IFIFO:
        rec.type = "p"
    elif fmt == stat.S_IFSOCK:
        rec.type = "s"
    else:  # pragma: no cover - no other file types exist on Linux
        raise ValueError(f"{os.fsdecode(abs_path)}: unknown file type {fmt:o}")
    if rec.type != "d" and st.st_nlink > 1:
        rec.inode = (st.st_dev, st.st_ino)
    return rec


def list_directory(root: str | os.PathLike[str] | bytes, *, hash_files: bool = True) -> str:
    """The listing of a directory tree (see :func:`records_from_directory`)."""
    return format_listing(records_from_directory(root, hash_files=hash_files))


# --------------------------------------------------------------------------------------
# front end: a tar archive (through tarfile: the independent oracle)


def normalise_path(name: bytes) -> bytes:
    """``./a//b/`` -> ``a/b``; leading ``/`` dropped; ``.`` and empty components dropped.

    The root (``.``, ``./``, ``/``) normalises to ``b""``.  A ``..`` component is an error:
    a listed tree never has one.
    """
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise ValueError(f"tar member name has a '..' component: {escape(name)}")
    return b"/".join(parts)


_TAR_TYPES = {
    tarfile.REGTYPE: "f",
    tarfile.AREGTYPE: "f",
    tarfile.CONTTYPE: "f",
    tarfile.GNUTYPE_SPARSE: "f",
    tarfile.DIRTYPE: "d",
    tarfile.SYMTYPE: "l",
    tarfile.CHRTYPE: "c",
    tarfile.BLKTYPE: "b",
    tarfile.FIFOTYPE: "p",
}


def _raw(text: str) -> bytes:
    """Undo tarfile's decoding (utf-8 with surrogateescape) to get the header's bytes back."""
    return text.encode("utf-8", "surrogateescape")


def _b64decode(text: str) -> bytes:
    data = text.strip()
    data += "=" * (-len(data) % 4)  # libarchive may omit the padding
    return base64.b64decode(data, validate=False)


def _tar_xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    xattrs: dict[str, bytes] = {}
    schily: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            schily[key[len("SCHILY.xattr.") :]] = _raw(value)
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote_to_bytes(key[len("LIBARCHIVE.xattr.") :]).decode("utf-8", "surrogateescape")
            try:
                xattrs[name] = _b64decode(value)
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"{member.name}: bad base64 in PAX record {key}: {e}") from None
    xattrs.update(schily)  # when both are present, the SCHILY record wins
    return xattrs


def _sha256_stream(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while True:
        chunk = f.read(_CHUNK)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)


def _open_tar(path_or_fileobj: str | os.PathLike[str] | BinaryIO) -> tarfile.TarFile:
    kw = dict(encoding="utf-8", errors="surrogateescape")
    if isinstance(path_or_fileobj, (str, bytes, os.PathLike)):
        return tarfile.open(os.fspath(path_or_fileobj), mode="r:*", **kw)
    f = path_or_fileobj
    seekable = False
    try:
        seekable = f.seekable()
    except (AttributeError, io.UnsupportedOperation):
        pass
    return tarfile.open(fileobj=f, mode="r:*" if seekable else "r|*", **kw)


def records_from_tar(
    path_or_fileobj: str | os.PathLike[str] | BinaryIO, *, allow_duplicates: bool = False
) -> Iterator[Record]:
    """Yield a :class:`Record` for every member of a (flattened) tar, as extraction would make it.

    Names are normalised (:func:`normalise_path`); the root entry (``.``) is skipped.  A
    hard-link member joins the group of the member it names, which must come earlier, and is
    listed with that inode's attributes (type, mode, owner, size, content, xattrs).  Xattrs
    come from PAX ``SCHILY.xattr.*`` and ``LIBARCHIVE.xattr.*`` records.

    A flattened tar should name every path once; a second member for a path is an error
    unless ``allow_duplicates`` is true, in which case the later member wins (as extraction
    would do; earlier hard links to the replaced member keep the old inode).  Records are
    yielded after the whole archive has been read.
    """
    entries: dict[bytes, Record] = {}
    next_inode = 0
    with _open_tar(path_or_fileobj) as tf:
        for member in tf:
            path = normalise_path(_raw(member.name))
            if not path:
                if member.type == tarfile.DIRTYPE:
                    continue  # the root entry
                raise ValueError(f"tar member {member.name!r} names the root but is not a directory")
            if path in entries and not allow_duplicates:
                raise ValueError(f"duplicate tar member for path {escape(path)}")
            if member.type == tarfile.LNKTYPE:
                target_path = normalise_path(_raw(member.linkname))
                target = entries.get(target_path)
                if target is None:
                    raise ValueError(
                        f"hard link {escape(path)} -> {escape(target_path)}: target is not an earlier member"
                    )
                if target.type == "d":
                    raise ValueError(f"hard link {escape(path)} -> {escape(target_path)}: target is a directory")
                rec = Record(
                    path=path,
                    type=target.type,
                    mode=target.mode,
                    uid=target.uid,
                    gid=target.gid,
                    size=target.size,
                    sha256=target.sha256,
                    target=target.target,
                    rdev=target.rdev,
                    inode=target.inode,
                    xattrs=dict(target.xattrs),
                )
                entries.pop(path, None)
                entries[path] = rec
                continue
            kind = _TAR_TYPES.get(member.type)
            if kind is None:
                raise ValueError(f"tar member {member.name!r}: unsupported type {member.type!r}")
            rec = Record(
                path=path,
                type=kind,
                mode=member.mode & 0o7777,
                uid=member.uid,
                gid=member.gid,
                xattrs=_tar_xattrs(member),
            )
            if kind == "f":
                rec.size = member.size
                data = tf.extractfile(member)
                assert data is not None
                with data:
                    rec.sha256 = _sha256_stream(data)
            elif kind == "l":
                rec.target = _raw(member.linkname)
            elif kind in "cb":
                rec.rdev = (member.devmajor, member.devminor)
            if kind != "d":
                rec.inode = ("tar", next_inode)
                next_inode += 1
            entries.pop(path, None)
            entries[path] = rec
    yield from entries.values()


def list_tar(path_or_fileobj: str | os.PathLike[str] | BinaryIO, *, allow_duplicates: bool = False) -> str:
    """The listing of a (flattened) tar (see :func:`records_from_tar`)."""
    return format_listing(records_from_tar(path_or_fileobj, allow_duplicates=allow_duplicates))

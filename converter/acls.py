"""POSIX ACLs (EDGE-CASES 68): what layers carry and how they reach an output.

Layers carry ACLs in two forms.  Go's archive/tar (docker, containerd, BuildKit) stores
the kernel's binary xattr values as ``SCHILY.xattr.system.posix_acl_access`` and
``..._default``; star and GNU tar ``--acls`` store text (``SCHILY.acl.access``,
``SCHILY.acl.default``: ``user::rw-,user:1000:r--,...``, star adding the numeric id as a
fourth field).  The merge turns text into the binary form (numeric ids only: a name is
never looked up on this host, EDGE-CASES 63), so both sinks see one form; named users
and groups in it are ids like owners, and the sinks map them with the same --uid-map /
--gid-map.

Binary form (``linux/posix_acl_xattr.h``): a little-endian u32 version 2, then entries of
u16 tag, u16 permissions, u32 id; the kernel wants them ordered by tag, then id.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .ids import IdMapper

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"
XATTRS = (ACCESS, DEFAULT)
#: PAX keyword of the text form -> xattr of the binary form
TEXT_KEYS = {"SCHILY.acl.access": ACCESS, "SCHILY.acl.default": DEFAULT}

_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED = 0xFFFFFFFF
_TAGS = {"user": (USER_OBJ, USER), "u": (USER_OBJ, USER), "group": (GROUP_OBJ, GROUP), "g": (GROUP_OBJ, GROUP),
         "mask": (MASK, None), "m": (MASK, None), "other": (OTHER, None), "o": (OTHER, None)}
_MAX_ID = (1 << 32) - 2


class AclError(ValueError):
    """An ACL this converter cannot carry over (the message says why)."""


def _pack(entries: list[tuple[int, int, int]]) -> bytes:
    """In the kernel's order; one entry per tag and id (the first: two ids mapped to one
    --unmapped-id would otherwise make an ACL the kernel refuses)."""
    kept: dict[tuple[int, int], int] = {}
    for tag, perm, ident in entries:
        kept.setdefault((tag, ident), perm)
    return _HEADER.pack(_VERSION) + b"".join(_ENTRY.pack(tag, perm, ident) for (tag, ident), perm in sorted(kept.items()))


def _unpack(value: bytes) -> list[tuple[int, int, int]]:
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise AclError(f"a binary ACL of {len(value)} bytes")
    (version,) = _HEADER.unpack_from(value)
    if version != _VERSION:
        raise AclError(f"a binary ACL of version {version}")
    return [_ENTRY.unpack_from(value, off) for off in range(_HEADER.size, len(value), _ENTRY.size)]


def from_text(text: bytes) -> bytes:
    """The binary value of a text ACL (``acl_to_text`` or star's form).  Named entries
    need a numeric id; raises :class:`AclError` otherwise, or on anything malformed."""
    entries: list[tuple[int, int, int]] = []
    for raw in text.replace(b"\n", b",").split(b","):
        item = raw.split(b"#", 1)[0].strip().decode("utf-8", "replace")
        if not item:
            continue
        fields = item.split(":")
        if len(fields) < 3 or fields[0] not in _TAGS:
            raise AclError(f"entry {item!r} is not 'tag:qualifier:permissions'")
        obj_tag, named_tag = _TAGS[fields[0]]
        qualifier, perms = fields[1], fields[2]
        if len(perms) != 3 or any(c not in allowed for c, allowed in zip(perms, ("r-", "w-", "x-"))):
            raise AclError(f"entry {item!r} has permissions {perms!r}")
        perm = (4 if perms[0] == "r" else 0) | (2 if perms[1] == "w" else 0) | (1 if perms[2] == "x" else 0)
        if not qualifier:
            entries.append((obj_tag, perm, _UNDEFINED))
            continue
        if named_tag is None:
            raise AclError(f"entry {item!r} names someone for a {fields[0]} entry")
        # the numeric id: the qualifier itself, or star's fourth field after a name
        number = qualifier if qualifier.isdigit() else (fields[3] if len(fields) > 3 and fields[3].isdigit() else "")
        if not number.isascii() or not number or int(number) > _MAX_ID:
            raise AclError(f"entry {item!r} names {qualifier!r} without a numeric id (names are not looked up here)")
        entries.append((named_tag, perm, int(number)))
    if not entries:
        raise AclError("an empty ACL")
    tags = {tag for tag, _, _ in entries}
    if tags & {USER, GROUP} and MASK not in tags:
        # named entries need a mask; setfacl computes it as the group class's union
        entries.append((MASK, _union(perm for tag, perm, _ in entries if tag in (USER, GROUP_OBJ, GROUP)), _UNDEFINED))
    return _pack(entries)


def _union(perms: "Iterable[int]") -> int:
    out = 0
    for perm in perms:
        out |= perm
    return out


def is_minimal(value: bytes) -> bool:
    """An access ACL of the owner, group and other entries only says what the mode bits
    say (GNU tar writes one for every file; the kernel stores none for it)."""
    try:
        return {tag for tag, _, _ in _unpack(value)} <= {USER_OBJ, GROUP_OBJ, OTHER}
    except AclError:
        return False


def map_ids(value: bytes, ids: "IdMapper", *, where: str) -> bytes:
    """``value`` with its named users and groups mapped like owners (--uid-map,
    --gid-map; an id outside every range is the same error, or --unmapped-id).  Values
    that are not version-2 binary ACLs are returned as they are (the file system judges
    them); --owner alone maps nothing here: it sets owners, not who else may access."""
    if not ids.uids.ranges and not ids.gids.ranges:
        return value
    try:
        entries = _unpack(value)
    except AclError:
        return value
    mapped = []
    for tag, perm, ident in entries:
        if tag == USER:
            ident = ids.uids.map(ident, where=f"{where} (ACL)", on_fallback=ids.on_fallback)
        elif tag == GROUP:
            ident = ids.gids.map(ident, where=f"{where} (ACL)", on_fallback=ids.on_fallback)
        mapped.append((tag, perm, ident))
    return _pack(mapped)

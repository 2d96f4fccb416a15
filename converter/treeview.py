"""The merged view as listing records, without writing anything (``rootfs ls``/``diff``).

The same :mod:`converter.listing` core formats these records, so ``rootfs ls --format tree``
prints exactly what listing the converted directory would print.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

from .errors import LimitError
from .listing import EMPTY_SHA256, Record
from .merge import BLK, CHR, LNK, REG, Node, Plan
from .paths import join, show
from .staging import content_pieces, expands_too_far


def node_sha256(node: Node, where: bytes = b"") -> str:
    """SHA-256 of a regular file's content, read from where the plan located it
    (``where``: its path, for the error)."""
    if not node.size:
        return EMPTY_SHA256
    if expands_too_far(node):
        raise LimitError(f"{show(where)}: a sparse file of {node.size} bytes from {node.stored_size} stored: hashing it whole would "
                         f"read more than 1000x that (a sparse bomb?)")
    h = hashlib.sha256()
    for piece in content_pieces(node):
        h.update(piece)
    return h.hexdigest()


def records_from_plan(plan: Plan, *, hash_files: bool = False) -> Iterator[Record]:
    """Records for every entry.  Hard-linked paths share their node, which is what
    ``inode`` identifies."""
    counts: dict[int, int] = {}
    entries = list(plan.walk())
    for _, node in entries:
        if node.kind != "d":
            counts[id(node)] = counts.get(id(node), 0) + 1
    for parts, node in entries:
        kind = node.kind
        path = join(parts)
        yield Record(
            path=path,
            type=kind,
            mode=node.mode,
            uid=node.uid,
            gid=node.gid,
            size=node.size if kind == REG else None,
            sha256=(node_sha256(node, path) if hash_files else None) if kind == REG else None,
            target=node.linkname if kind == LNK else None,
            rdev=(node.major, node.minor) if kind in (CHR, BLK) else None,
            inode=id(node) if counts.get(id(node), 0) > 1 else None,
            xattrs=dict(node.xattrs),
        )

"""The merged view as listing records, without writing anything (``rootfs ls``/``diff``).

The same :mod:`converter.listing` core formats these records, so ``rootfs ls --format tree``
prints exactly what listing the converted directory would print.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

from .listing import EMPTY_SHA256, Record
from .merge import BLK, CHR, LNK, REG, Node, Plan
from .paths import join
from .staging import content_pieces


def node_sha256(node: Node) -> str:
    """SHA-256 of a regular file's content, read from where the plan located it."""
    if not node.size:
        return EMPTY_SHA256
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
        yield Record(
            path=join(parts),
            type=kind,
            mode=node.mode,
            uid=node.uid,
            gid=node.gid,
            size=node.size if kind == REG else None,
            sha256=(node_sha256(node) if hash_files else None) if kind == REG else None,
            target=node.linkname if kind == LNK else None,
            rdev=(node.major, node.minor) if kind in (CHR, BLK) else None,
            inode=id(node) if counts.get(id(node), 0) > 1 else None,
            xattrs=dict(node.xattrs),
        )

"""``rootfs diff``: what differs between two images' merged views.

Compared per path: type, mode, owner, size, content (sha256, computed only when the sizes
agree), symlink target, device numbers and xattrs.  Hard-link grouping is not compared:
two trees with the same files linked differently are the same tree to a program.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .listing import Record, escape, format_xattrs
from .merge import Plan
from .treeview import node_sha256, records_from_plan


@dataclass
class TreeDiff:
    added: list[bytes] = field(default_factory=list)
    removed: list[bytes] = field(default_factory=list)
    changed: list[tuple[bytes, dict[str, tuple[Any, Any]]]] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "added": [escape(p) for p in self.added],
            "removed": [escape(p) for p in self.removed],
            "changed": [{"path": escape(p), "changes": {k: list(v) for k, v in c.items()}} for p, c in self.changed],
        }


def _nodes(plan: Plan) -> dict[bytes, Any]:
    return {b"/".join(parts): node for parts, node in plan.walk()}


def diff_plans(a: Plan, b: Plan) -> TreeDiff:
    ra = {r.path: r for r in records_from_plan(a)}
    rb = {r.path: r for r in records_from_plan(b)}
    na, nb = _nodes(a), _nodes(b)
    out = TreeDiff()
    out.removed = sorted(set(ra) - set(rb))
    out.added = sorted(set(rb) - set(ra))
    for path in sorted(set(ra) & set(rb)):
        x, y = ra[path], rb[path]
        changes = _compare(x, y)
        if x.type == "f" and y.type == "f" and x.size == y.size and "size" not in changes:
            ha, hb = node_sha256(na[path], path), node_sha256(nb[path], path)
            if ha != hb:
                changes["content"] = (ha, hb)
        if changes:
            out.changed.append((path, changes))
    return out


def _compare(x: Record, y: Record) -> dict[str, tuple[Any, Any]]:
    c: dict[str, tuple[Any, Any]] = {}
    if x.type != y.type:
        c["type"] = (x.type, y.type)
        return c
    if x.type != "l" and x.mode != y.mode:
        c["mode"] = (f"{x.mode:o}", f"{y.mode:o}")
    if (x.uid, x.gid) != (y.uid, y.gid):
        c["owner"] = (f"{x.uid}:{x.gid}", f"{y.uid}:{y.gid}")
    if x.size != y.size:
        c["size"] = (x.size, y.size)
    if x.target != y.target:
        c["target"] = (escape(x.target or b""), escape(y.target or b""))
    if x.rdev != y.rdev:
        c["device"] = (x.rdev, y.rdev)
    if x.xattrs != y.xattrs:
        c["xattrs"] = (format_xattrs(x.xattrs), format_xattrs(y.xattrs))
    return c

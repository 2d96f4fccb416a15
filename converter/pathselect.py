"""``--path`` and ``--with-deps``: keep only some paths of the merged view.

:func:`select_paths` prunes a :class:`~converter.merge.Plan` in place, after the merge and
before any sink, so both sinks (and bundles) write exactly the selection.

Selection rules (README "Choosing paths"):

* A pattern is an absolute or relative path (relative means from the image root) whose
  components may hold ``fnmatch`` globs (``*``, ``?``, ``[...]``, ``[!...]``; ``*`` also
  matches names starting with a dot); a ``**`` component stands for any number of
  directories (zero included; symlinks are not followed inside it).  ``..`` goes up
  (stopping at the root).
* Names are looked up in the merged view as a file system would: a symlink met on the
  way, or matched by the last component, is followed *inside* the image (absolute targets
  restart at the image root, ``..`` stops there, at most 255 hops), and both the symlink
  and what it leads to are kept.
* A matched directory keeps its whole subtree (symlinks inside it are kept as they are,
  not followed).  Every kept entry keeps the directories that hold it, with their own
  metadata; nothing else is kept.  Hard-linked names stay linked when both are kept.
* A pattern that matches nothing is a :class:`~converter.errors.NotFoundError`.

``--with-deps`` then adds, for every kept ELF executable or shared library, what the
dynamic loader would load, looked up the way glibc's ``ld.so`` (or musl's) does it, inside
the image (see :class:`_Deps`).  Nothing from the image is ever executed.
"""

from __future__ import annotations

import fnmatch
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from .elf import (
    ElfError,
    ElfInfo,
    default_dirs,
    lib_names,
    musl_arch,
    musl_default_dirs,
    parse_elf,
    platform_names,
)
from .errors import NotFoundError, UsageError
from .merge import DIR, LNK, MAX_HOPS, REG, Events, Node, Plan
from .paths import Parts, show
from .staging import content_pieces

#: a position in the tree: the physical path as (name, node) pairs, the root first
Stack = list[tuple[bytes, Node]]

_GLOB_CHARS = b"*?["
#: cap on what is read from one configuration file in the image
MAX_CONF_BYTES = 1 << 20
MAX_CONF_DEPTH = 16


class _Loop(Exception):
    pass


def _parts(stack: Stack) -> Parts:
    return tuple(name for name, _ in stack[1:])


def _text(parts: Parts | bytes) -> str:
    raw = b"/" + b"/".join(parts) if isinstance(parts, tuple) else parts
    return raw.decode("utf-8", "backslashreplace")


def _components(path: bytes) -> list[bytes]:
    return [c for c in path.split(b"/") if c and c != b"."]


# ------------------------------------------------------------------------ reading files


def read_node(node: Node, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of a regular file's content at ``offset`` (sparse holes read
    as zeros), read from where the plan located them."""
    return b"".join(content_pieces(node, offset, offset + size))


# ------------------------------------------------------------------------ the selector


@dataclass
class _Match:
    stack: Stack  # where the path leads (physical); the root when it is the root
    links: list[Parts]  # the trail: symlinks followed and directories passed on the way
    entry: Parts  # the matched name itself (the symlink, when the last one was a link)
    resolved: bool = True  # False: a dangling/looping symlink matched (kept alone)


@dataclass
class _Selection:
    #: kept entries; a directory here keeps its whole subtree
    keep: set[Parts] = field(default_factory=set)
    #: kept for the way to something: symlinks followed, directories passed through
    #: (kept with their own metadata only, not their subtree)
    trail: set[Parts] = field(default_factory=set)

    def add(self, parts: Parts) -> None:
        self.keep.add(parts)


class Selector:
    """Name lookups and globbing over the plan's tree, recording what to keep."""

    def __init__(self, plan: Plan, events: Events) -> None:
        self.plan = plan
        self.root = plan.root
        self.events = events
        self.sel = _Selection()

    # ----- resolution -------------------------------------------------------------------
    def resolve(self, stack: Stack, components: list[bytes], *, follow_final: bool, links: list[Parts]) -> Optional[Stack]:
        """Walk ``components`` from ``stack`` (copied); symlinks are followed inside the
        image.  The symlinks followed and the directories entered are appended to
        ``links`` (what the way needs in the output).  None when a name is missing or not
        a directory where one is needed; :class:`_Loop` after MAX_HOPS symlinks."""
        stack = list(stack)
        todo = list(reversed(components))
        hops = 0
        while todo:
            name = todo.pop()
            if name == b"..":
                if len(stack) > 1:
                    stack.pop()
                continue
            if name == b"." or not name:
                continue
            cur = stack[-1][1]
            if cur.kind != DIR or cur.children is None:
                return None
            child = cur.children.get(name)
            if child is None:
                return None
            if child.kind == LNK and (todo or follow_final):
                hops += 1
                if hops > MAX_HOPS:
                    raise _Loop()
                links.append(_parts(stack) + (name,))
                target = child.linkname
                if not target:
                    return None
                if target.startswith(b"/"):
                    del stack[1:]
                todo.extend(reversed(_components(target)))
                continue
            stack.append((name, child))
            if child.kind == DIR and todo:
                links.append(_parts(stack))
        return stack

    def lookup(self, path: bytes, *, follow_final: bool = True) -> tuple[Optional[Stack], list[Parts]]:
        """Resolve an absolute image path; (None, links) when it leads nowhere."""
        links: list[Parts] = []
        try:
            stack = self.resolve([(b"", self.root)], _components(path), follow_final=follow_final, links=links)
        except _Loop:
            return None, links
        return stack, links

    def read_file(self, path: bytes, limit: int = MAX_CONF_BYTES) -> Optional[bytes]:
        stack, _ = self.lookup(path)
        if stack is None or stack[-1][1].kind != REG:
            return None
        node = stack[-1][1]
        try:
            return read_node(node, 0, min(node.size, limit))
        except OSError:
            return None

    def keep_path(self, path: bytes) -> Optional[Stack]:
        """Keep ``path`` and every symlink on the way to it; the resolved stack or None."""
        stack, links = self.lookup(path)
        if stack is None:
            return None
        self.sel.trail.update(links)
        self.sel.add(_parts(stack))
        return stack

    # ----- globbing ---------------------------------------------------------------------
    def glob(self, pattern: bytes) -> list[_Match]:
        """Every match of ``pattern`` in the view, in a deterministic order.

        The places reached at each step are kept once each, with the union of the trails
        that lead there: what a match keeps is its physical place plus every way to it, so
        nothing changes, but 150 symlinks to / made ``/*/*/*/x`` 3.4 million ways (1.8 GB)
        where there is one place."""
        comps = _components(pattern)
        root: Stack = [(b"", self.root)]
        if not comps:
            return [_Match(root, [], ())]
        positions: dict[Parts, tuple[Stack, dict[Parts, None]]] = {(): (root, {})}
        matches: dict[tuple[Parts, bool], tuple[Stack, dict[Parts, None]]] = {}

        def reach(into: dict, key: object, stack: Stack, *trails: Any) -> None:
            got = into.get(key)
            if got is None:
                got = into[key] = (stack, {})
            for trail in trails:
                got[1].update(dict.fromkeys(trail))

        for i, comp in enumerate(comps):
            last = i == len(comps) - 1
            nxt: dict[Parts, tuple[Stack, dict[Parts, None]]] = {}
            # directories a ``**`` of this step has already gone through, by the way
            # there: a position below one expanded before adds nothing (without this,
            # ``a/**/b/**`` over a deep tree grew with the cube of its depth)
            expanded: dict[frozenset[Parts], set[int]] = {}
            for stack, links in positions.values():
                if comp in (b"..", b"**"):
                    if comp == b"..":
                        # the directory left must stay: the way goes through it
                        reached = [stack[:-1] if len(stack) > 1 else stack]
                        way = [_parts(stack)] if len(stack) > 1 else []
                    else:
                        reached = _descendant_dirs(stack, expanded.setdefault(frozenset(links), set()))
                        way = []
                    for s in reached:
                        reach(matches if last else nxt, (_parts(s), True) if last else _parts(s), s, links, way)
                    continue
                children = stack[-1][1].children or {}
                if any(ch in comp for ch in _GLOB_CHARS):
                    names = sorted(n for n in children if fnmatch.fnmatchcase(n, comp))
                else:
                    names = [comp] if comp in children else []
                for name in names:
                    entry = _parts(stack) + (name,)
                    new_links: list[Parts] = []
                    try:
                        res = self.resolve(stack, [name], follow_final=True, links=new_links)
                    except _Loop:
                        res = None
                        self.events.warn("symlink-loop", f"{show(entry)}: too many levels of symbolic links; kept as it is", path=_text(entry))
                    if last:
                        if res is None:
                            reach(matches, (entry, False), stack + [(name, children[name])], links, new_links)
                        else:
                            reach(matches, (entry, True), res, links, new_links)
                    elif res is not None and res[-1][1].kind == DIR:
                        reach(nxt, _parts(res), res, links, new_links)
            positions = nxt
        return [_Match(stack, list(trail), entry, resolved=resolved) for (entry, resolved), (stack, trail) in matches.items()]

    def select(self, pattern: str) -> int:
        raw = os.fsencode(pattern)
        if b"\0" in raw:
            raise UsageError(f"--path {pattern!r}: contains a NUL byte")
        matches = self.glob(raw)
        for m in matches:
            self.sel.trail.update(m.links)
            self.sel.add(m.entry)
            if m.resolved:
                self.sel.add(_parts(m.stack))
            elif m.stack[-1][1].kind == LNK:
                self.events.decide("dangling", f"{show(m.entry)}: symlink leads nowhere in the image; kept as it is")
            self.events.decide("path", f"{pattern}: {show(m.entry)}")
        return len(matches)

    # ----- the result -------------------------------------------------------------------
    def kept_files(self) -> Iterator[tuple[Parts, Node]]:
        """Every kept regular file, once per node (hard links: the smallest path)."""
        seen: set[int] = set()
        for parts in sorted(self.sel.keep):
            node = self.node_at(parts)
            if node is None:
                continue
            if node.kind == REG:
                if id(node) not in seen:
                    seen.add(id(node))
                    yield parts, node
            elif node.kind == DIR:
                for sub, child in _walk(parts, node):
                    if child.kind == REG and id(child) not in seen:
                        seen.add(id(child))
                        yield sub, child

    def node_at(self, parts: Parts) -> Optional[Node]:
        """The node at a physical path (nothing followed)."""
        node = self.root
        for name in parts:
            if node.children is None:
                return None
            nxt = node.children.get(name)
            if nxt is None:
                return None
            node = nxt
        return node

    def prune(self) -> None:
        keep = self.sel.keep
        if () in keep:
            return
        needed: dict[Parts, set[bytes]] = {}
        for parts in keep | self.sel.trail:
            for i in range(len(parts)):
                needed.setdefault(parts[:i], set()).add(parts[i])
        stack: list[tuple[Parts, Node]] = [((), self.root)]
        while stack:
            parts, node = stack.pop()
            children = node.children
            if children is None:
                continue
            names = needed.get(parts, set())
            for name in list(children):
                if name not in names:
                    del children[name]
                    continue
                sub = parts + (name,)
                child = children[name]
                if child.kind == DIR and sub not in keep:
                    stack.append((sub, child))


def _walk(parts: Parts, node: Node) -> Iterator[tuple[Parts, Node]]:
    stack = [(parts, node)]
    while stack:
        p, n = stack.pop()
        for name, child in (n.children or {}).items():
            sub = p + (name,)
            yield sub, child
            if child.kind == DIR:
                stack.append((sub, child))


def _descendant_dirs(stack: Stack, seen: set[int]) -> list[Stack]:
    """``stack`` and every directory below it, physically (no symlink followed), in
    name order; but none in ``seen`` (directory nodes by ``id``: a directory has one
    place in the tree), nor below one, and those returned are added to it."""
    out: list[Stack] = []
    todo = [stack]
    while todo:
        s = todo.pop()
        if id(s[-1][1]) in seen:
            continue
        seen.add(id(s[-1][1]))
        out.append(s)
        children = s[-1][1].children or {}
        for name in sorted(children, reverse=True):
            child = children[name]
            if child.kind == DIR:
                todo.append(s + [(name, child)])
    return out


# ------------------------------------------------------------------ the dynamic loader


@dataclass
class _Obj:
    """One loaded object in a simulated process."""

    path: bytes  # the name the loader opened it by (its $ORIGIN is the directory of it)
    info: ElfInfo
    node: Node
    loader: Optional["_Obj"] = None
    origin: bytes = b"/"
    where: bytes = b""  # its physical path in the image, for messages


class _Deps:
    """Finds what ``ld.so`` would load for each kept ELF file, inside the image.

    glibc's order for a ``DT_NEEDED`` name without a slash (``elf/dl-load.c``):

    1. unless the object that needs it has ``DT_RUNPATH``: the ``DT_RPATH`` of that
       object, then of the object that loaded it, and so on up to the executable
       (objects that have a ``DT_RUNPATH`` contribute no ``DT_RPATH``);
    2. (``LD_LIBRARY_PATH``: not applicable);
    3. the ``DT_RUNPATH`` of the object that needs it (not inherited);
    4. unless it has ``DF_1_NODEFLIB``: the directories of ``/etc/ld.so.conf`` (what
       ``ld.so.cache`` is built from), then the default directories for its ABI
       (``/lib/<multiarch>``, ``/usr/lib/<multiarch>``, ``/lib64`` or ``/lib32``,
       ``/lib``, ``/usr/lib``).

    ``$ORIGIN`` is the directory of the executable's real path, or of the name a library
    was found under; ``$LIB`` and ``$PLATFORM`` are tried with each plausible value.  A
    candidate of another class, byte order or machine is skipped, as the loader does.
    Names already loaded (by name or ``DT_SONAME``) are not searched again; dependencies
    are loaded breadth first.  musl (an ``ld-musl-*`` interpreter, or a ``libc.musl-*``
    dependency): the ``DT_RUNPATH``/``DT_RPATH`` of the chain of loaders, then
    ``/etc/ld-musl-ARCH.path`` or musl's defaults.
    """

    def __init__(self, sel: Selector, events: Events) -> None:
        self.sel = sel
        self.events = events
        self._elf: dict[int, Optional[ElfInfo]] = {}
        self._conf_dirs: Optional[list[bytes]] = None
        self._conf_files: list[bytes] = []
        self._musl_dirs: dict[str, list[bytes]] = {}
        self._musl_files: list[bytes] = []
        self._warned: set[tuple[bytes, bytes]] = set()
        #: (name, search directories, ABI) -> what was found: many programs of one
        #: directory need the same libraries through the same directories
        self._found: dict[tuple, Optional[tuple[bytes, ElfInfo, Node, bytes]]] = {}
        self.dynamic_roots = 0

    # ----- ELF access -------------------------------------------------------------------
    def elf(self, node: Node, where: Parts | bytes) -> Optional[ElfInfo]:
        key = id(node)
        if key in self._elf:
            return self._elf[key]
        info = None
        if node.kind == REG and node.size >= 52:
            try:
                if read_node(node, 0, 4) == b"\x7fELF":
                    info = parse_elf(lambda off, n: read_node(node, off, n), node.size)
            except ElfError as exc:
                self.events.warn("bad-elf", f"{_text(where)}: not a readable ELF file ({exc}); its dependencies are not added", path=_text(where))
            except OSError as exc:
                self.events.warn("bad-elf", f"{_text(where)}: cannot read ({exc})", path=_text(where))
        self._elf[key] = info
        return info

    # ----- configuration read from the image --------------------------------------------
    def conf_dirs(self) -> list[bytes]:
        if self._conf_dirs is None:
            out: list[bytes] = []
            self._read_conf(b"/etc/ld.so.conf", out, 0, set())
            self._conf_dirs = out
        return self._conf_dirs

    def _read_conf(self, path: bytes, out: list[bytes], depth: int, seen: set[bytes]) -> None:
        if depth > MAX_CONF_DEPTH or path in seen:
            return
        seen.add(path)
        data = self.sel.read_file(path)
        if data is None:
            return
        self._conf_files.append(path)
        base = path.rsplit(b"/", 1)[0] or b"/"
        for line in data.splitlines():
            line = line.split(b"#", 1)[0].strip()
            if not line:
                continue
            if line.startswith(b"include") and line[7:8] in (b" ", b"\t"):
                for pat in line[8:].split():
                    if not pat.startswith(b"/"):
                        pat = base + b"/" + pat
                    for m in sorted(self.sel.glob(pat), key=lambda m: m.entry):
                        if m.resolved and m.stack[-1][1].kind == REG:
                            self._read_conf(b"/" + b"/".join(m.entry), out, depth + 1, seen)
                continue
            if line.startswith(b"hwcap") and line[5:6] in (b" ", b"\t"):
                continue
            for word in line.replace(b":", b" ").replace(b",", b" ").split():
                word = word.split(b"=", 1)[0]  # libc5-era "DIR=TYPE"
                if word.startswith(b"/") and word not in out:
                    out.append(word)

    def musl_dirs(self, arch: str) -> list[bytes]:
        if arch not in self._musl_dirs:
            path = f"/etc/ld-musl-{arch}.path".encode()
            data = self.sel.read_file(path)
            if data is None:
                dirs = [d.encode() for d in musl_default_dirs()]
            else:
                self._musl_files.append(path)
                dirs = [d for d in data.replace(b":", b"\n").split() if d.startswith(b"/")]
            self._musl_dirs[arch] = dirs
        return self._musl_dirs[arch]

    # ----- one process ------------------------------------------------------------------
    def run(self, parts: Parts, node: Node) -> None:
        info = self.elf(node, parts)
        if info is None or not info.is_loadable or not (info.dynamic or info.interp):
            return
        self.dynamic_roots += 1
        path = b"/" + b"/".join(parts)
        root = _Obj(path, info, node, origin=path.rsplit(b"/", 1)[0] or b"/", where=path)
        loaded_names: set[bytes] = set()
        loaded_nodes: set[int] = {id(node)}
        if info.soname:
            loaded_names.add(info.soname)
        musl = musl_arch(info.interp)
        if musl is None:
            for n in info.needed:  # a musl library (no interpreter of its own)
                if n.startswith(b"libc.musl-") and n.endswith(b".so.1"):
                    musl = n[len(b"libc.musl-"):-len(b".so.1")].decode("ascii", "replace")
                    break
        if info.interp:
            stack = self.sel.keep_path(info.interp)
            if stack is None or stack[-1][1].kind != REG:
                self._missing(path, info.interp, "program interpreter")
            else:
                interp = self.elf(stack[-1][1], info.interp)
                loaded_nodes.add(id(stack[-1][1]))
                loaded_names.add(info.interp.rsplit(b"/", 1)[-1])
                if interp is not None and interp.soname:
                    loaded_names.add(interp.soname)
        queue = deque([root])
        while queue:
            obj = queue.popleft()
            for name in obj.info.needed:
                if name in loaded_names:
                    continue
                loaded_names.add(name)
                found = self.find(name, obj, root, musl)
                if found is None:
                    self._missing(obj.where, name, "library")
                    continue
                lpath, linfo, lnode, lwhere = found
                if linfo.soname:
                    loaded_names.add(linfo.soname)
                if id(lnode) in loaded_nodes:
                    continue
                loaded_nodes.add(id(lnode))
                queue.append(_Obj(lpath, linfo, lnode, loader=obj, origin=lpath.rsplit(b"/", 1)[0] or b"/", where=lwhere))

    def _missing(self, who: bytes, name: bytes, what: str) -> None:
        if (who, name) in self._warned:
            return
        self._warned.add((who, name))
        self.events.warn(
            "missing-library",
            f"{_text(who)}: {what} {_text(name) if name.startswith(b'/') else name.decode('utf-8', 'backslashreplace')} "
            "not found in the image",
            path=_text(who),
        )

    def find(self, name: bytes, obj: _Obj, root: _Obj, musl: Optional[str]) -> Optional[tuple[bytes, ElfInfo, Node, bytes]]:
        want = root.info.abi_key()
        if b"/" in name:
            candidates = self.expand(name, obj)
            if not name.startswith(b"/") and not name.startswith(b"$"):
                candidates = [b"/" + c for c in candidates]  # the process's cwd: assume /
            for cand in candidates:
                hit = self._try(cand, want)
                if hit is not None:
                    return hit
            return None
        dirs = self.search_dirs(obj, musl)
        key = (name, tuple(dirs), want)
        if key in self._found:
            return self._found[key]
        hit = None
        for d in dirs:
            hit = self._try_dir(d, name, want)
            if hit is not None:
                break
        self._found[key] = hit
        return hit

    def search_dirs(self, obj: _Obj, musl: Optional[str]) -> list[bytes]:
        dirs: list[bytes] = []
        if musl is not None:
            o: Optional[_Obj] = obj
            while o is not None:
                rp = o.info.runpath if o.info.runpath is not None else o.info.rpath
                if rp:
                    dirs += self.expand_list(rp, o)
                o = o.loader
            dirs += self.musl_dirs(musl)
            return _unique(dirs)
        if obj.info.runpath is None:
            o = obj
            while o is not None:
                if o.info.runpath is None and o.info.rpath:
                    dirs += self.expand_list(o.info.rpath, o)
                o = o.loader
        else:
            dirs += self.expand_list(obj.info.runpath, obj)
        if not obj.info.nodeflib:
            dirs += self.conf_dirs()
            dirs += [d.encode() for d in default_dirs(obj.info)]
        return _unique(dirs)

    def expand_list(self, value: bytes, obj: _Obj) -> list[bytes]:
        out: list[bytes] = []
        for item in value.split(b":"):
            if item:
                out += [d for d in self.expand(item, obj) if d.startswith(b"/")]
        return out

    def expand(self, item: bytes, obj: _Obj) -> list[bytes]:
        """Every plausible expansion of ``$ORIGIN``, ``$LIB``, ``$PLATFORM`` in ``item``."""
        results = [item]
        for token, values in (
            (b"ORIGIN", [obj.origin]),
            (b"LIB", [v.encode() for v in lib_names(obj.info)]),
            (b"PLATFORM", [v.encode() for v in platform_names(obj.info)] or [b""]),
        ):
            nxt: list[bytes] = []
            for r in results:
                if b"$" not in r:
                    nxt.append(r)
                    continue
                for v in values:
                    nxt.append(r.replace(b"${" + token + b"}", v).replace(b"$" + token, v))
            results = _unique(nxt)
        return results

    def _try_dir(self, d: bytes, name: bytes, want: tuple) -> Optional[tuple[bytes, ElfInfo, Node, bytes]]:
        base = d.rstrip(b"/") or b""
        # glibc >= 2.33 prefers DIR/glibc-hwcaps/<level>/ for the CPU at hand: keep any
        # variant there too, so the result runs on whichever CPU it lands on
        hw_hit = None
        hw_stack, _ = self.sel.lookup(base + b"/glibc-hwcaps")
        if hw_stack is not None and hw_stack[-1][1].kind == DIR:
            for level in sorted(hw_stack[-1][1].children or {}):
                hit = self._try(base + b"/glibc-hwcaps/" + level + b"/" + name, want)
                if hit is not None and hw_hit is None:
                    hw_hit = hit
        hit = self._try(base + b"/" + name, want)
        return hit if hit is not None else hw_hit

    def _try(self, path: bytes, want: tuple) -> Optional[tuple[bytes, ElfInfo, Node, bytes]]:
        stack, links = self.sel.lookup(path)
        if stack is None:
            return None
        node = stack[-1][1]
        if node.kind != REG:
            return None
        info = self.elf(node, path)
        if info is None or info.abi_key() != want or not info.is_loadable:
            return None
        self.sel.sel.trail.update(links)
        where = _parts(stack)
        self.sel.sel.add(where)
        self.events.decide("library", f"{_text(path)} ({_text(where)})")
        return path, info, node, b"/" + b"/".join(where)

    def keep_config(self) -> None:
        """What the loader reads at run time (``/etc/ld.so.cache``: without it, only the
        default directories are searched) and what ``ldconfig`` would rebuild it from."""
        if not self.dynamic_roots:
            return
        self.conf_dirs()  # read (so kept) even when no lookup needed them
        self.sel.keep_path(b"/etc/ld.so.cache")
        for path in self._conf_files + self._musl_files:
            self.sel.keep_path(path)


def _unique(items: list[bytes]) -> list[bytes]:
    seen: set[bytes] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


# ------------------------------------------------------------------------ entry point


def select_paths(plan: Plan, patterns: list[str], *, with_deps: bool, events: Events) -> None:
    """Prune ``plan``'s tree in place to ``patterns`` (see the module docstring), plus,
    with ``with_deps``, the shared libraries the kept ELF files need.  Raises
    :class:`NotFoundError` naming the first pattern that matches nothing."""
    if not patterns:
        if with_deps:
            raise UsageError("--with-deps needs --path: without it the whole image is kept anyway")
        return
    selector = Selector(plan, events)
    for pattern in patterns:
        if not pattern:
            raise UsageError("--path '': give a path, e.g. /bin/sh")
        if selector.select(pattern) == 0:
            raise NotFoundError(f"--path {pattern!r}: matches nothing in the image")
    if with_deps and () not in selector.sel.keep:
        deps = _Deps(selector, events)
        for parts, node in list(selector.kept_files()):
            deps.run(parts, node)
        deps.keep_config()
    selector.prune()

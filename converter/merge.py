"""The merge: the one place that knows whiteouts, opaque directories, hard links and which
entry wins (DESIGN §3).  It never touches the file system.

Shape: layers are applied bottom-up, headers only, to an in-memory model of the tree
(:class:`Node` objects; hard-linked paths share one node, as they share one inode).  File
contents are not copied: a regular file's node records where its bytes are (an offset in
the uncompressed source file, or in the file a compressed layer was inflated to).
When every layer is applied the model *is* the final view, so a sink writes each surviving
byte once, creates each surviving inode once, and never writes data a later layer deletes.

Because the model is a tree rather than a map of names, entry names are resolved like a
file system would (rule 7, EDGE-CASES 30/44): a parent component that is a symlink in the
view is followed *inside* the root, ``..`` in link targets stops at the root, and the hop
count is bounded.  The final component is never followed: an entry replaces whatever is
there.

Per-layer state (umoci's idea): the set of (directory, name) pairs this layer wrote, and
their ancestors.  Whiteouts and opaque markers only remove what is *not* in that set, which
is exactly "lower layers only" (rules 1-3, EDGE-CASES 26-28).
"""

from __future__ import annotations

import gc
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Callable, Iterator, Optional

from . import acls
from .errors import InputError, LimitError, UnsafeEntryError
from .image import Image, Layer
from .layerstream import LayerReading, Limits
from .opening import Opening
from .paths import Parts, join, show, split_name
from .staging import STAGE_MIN, stages
from .tar.reader import TarEntry

WH = b".wh."
WH_META = b".wh..wh."
WH_OPAQUE = b".wh..wh..opq"
WH_PLINK = b".wh..wh.plnk"
MAX_HOPS = 255
#: directories deeper than this are refused: a path of more than 2,048 components is
#: longer than PATH_MAX, so no tool that extracts or builds by path (Docker, containerd,
#: BuildKit) makes or reads one, while a crafted layer of a megabyte could ask for a tree
#: 30,000 deep: minutes of work and gigabytes to hold its names
MAX_DEPTH = 2048
#: parents deeper than this are resolved again for each entry instead of being kept in
#: the layer's cache (their names would take 8 bytes a component each)
_CACHED_DEPTH = 64
IMPLIED_MODE = 0o755
MAX_ID = (1 << 32) - 2
#: the largest device number a ustar header carries (8 octal digits); real ones are far below
MAX_DEVICE = (1 << 21) - 1
#: mtimes kept as they are: from the epoch to the end of 64-bit nanoseconds (Docker's
#: Chtimes and containerd's archive package map anything else to the epoch)
_MIN_NS, _MAX_NS = 0, (1 << 63) - 1

# node kinds: the listing's one-letter types
DIR, REG, LNK, CHR, BLK, FIFO = "d", "f", "l", "c", "b", "p"
_TYPES = {b"0": REG, b"5": DIR, b"2": LNK, b"3": CHR, b"4": BLK, b"6": FIFO}
#: typeflags that carry nothing for a root filesystem; skipped without a warning
_SILENT_SKIP = {b"V"}
#: a limit that is not set
_NO_LIMIT = float("inf")
_path_of = itemgetter(0)


class Node:
    """An inode of the final tree.  Directories hold ``children``; other kinds may be
    reachable from several names (hard links) and are then one shared object."""

    __slots__ = (
        "kind", "mode", "uid", "gid", "mtime_ns", "xattrs", "size", "fd", "offset",
        "sparse", "linkname", "major", "minor", "children", "implied", "nlink",
    )

    def __init__(self, kind: str, mode: int, uid: int, gid: int, mtime_ns: int) -> None:
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime_ns = mtime_ns
        self.xattrs: dict[str, bytes] = _NO_XATTRS
        self.size = 0  # logical size of a regular file
        self.fd = -1  # where the stored bytes are: fd + offset, or staged (offset < 0: see converter.staging)
        self.offset = 0
        self.sparse: Optional[tuple[tuple[int, int], ...]] = None
        self.linkname = b""
        self.major = 0
        self.minor = 0
        self.children: Optional[dict[bytes, Node]] = {} if kind == DIR else None
        self.implied = False  # a directory no entry described (created for a child)
        #: names given to this inode so far (never decremented: "1" means surely one name)
        self.nlink = 1

    @property
    def stored_size(self) -> int:
        if self.sparse is None:
            return self.size
        return sum(length for _, length in self.sparse)


_NO_XATTRS: dict[str, bytes] = {}


_EVENTS_LOCK = threading.Lock()


@dataclass
class Warning_:
    kind: str
    message: str
    path: Optional[str] = None
    layer: Optional[int] = None


@dataclass
class Events:
    """What the merge decided that a user may want to know (issue 9's report and -v)."""

    warnings: list[Warning_] = field(default_factory=list)
    verbose: Optional[Callable[[str, str], None]] = None
    counts: dict[str, int] = field(default_factory=dict)

    def warn(self, kind: str, message: str, *, path: Optional[str] = None, layer: Optional[int] = None) -> None:
        with _EVENTS_LOCK:  # sinks warn from several writer threads
            self.warnings.append(Warning_(kind, message, path, layer))
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def ordered(self) -> list[Warning_]:
        """Warnings in a stable order whichever writer ran: merge decisions by layer, then
        path; what sinks report (no layer) after them, by path."""
        return sorted(self.warnings, key=lambda w: (w.layer is None, w.layer or 0, w.path or "", w.kind, w.message))

    def decide(self, what: str, detail: str) -> None:
        if self.verbose is not None:
            self.verbose(what, detail)


@dataclass
class LayerStats:
    index: int
    label: str
    compression: str
    entries: int = 0
    bytes_in: int = 0
    uncompressed: int = 0
    digest: Optional[str] = None
    diff_id: Optional[str] = None


@dataclass
class Plan:
    """The merged view, ready for a sink.  Holds the inflated layers and source fds open."""

    root: Node
    image: Image
    layers: list[LayerStats]
    events: Events
    readings: list[LayerReading] = field(default_factory=list, repr=False)
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    #: the opened layers: their helpers, inflated files and staging directory
    _opening: Optional[Opening] = field(default=None, repr=False)

    def walk(self) -> Iterator[tuple[Parts, Node]]:
        """Every entry below the root, parents before children, each directory's children
        in byte order of their names (no recursion: trees may be thousands deep)."""
        stack: list[tuple[Parts, Node]] = [((), self.root)]
        while stack:
            parts, node = stack.pop()
            if node.children:
                for name in sorted(node.children, reverse=True):
                    child = node.children[name]
                    stack.append((parts + (name,), child))
            if parts:
                yield parts, node

    def sorted_entries(self) -> list[tuple[bytes, Node]]:
        """Every entry with its full path, sorted by raw path bytes (the listing order and
        the flattened tar's order: parents come before children, and the first path of a
        hard-link group is its smallest, which makes link heads deterministic).

        The paths are built as the tree is walked in any order, and sorted once: sorting
        each directory's names as well, and joining path parts, took 26 of 40 ms for the
        30k entries of the bench image, the flattened tar's writer waiting."""
        out: list[tuple[bytes, Node]] = []
        append = out.append
        stack: list[tuple[bytes, Node]] = [(b"", self.root)]
        while stack:
            prefix, node = stack.pop()
            for name, child in node.children.items():  # type: ignore[union-attr]
                path = prefix + name
                append((path, child))
                if child.children:
                    stack.append((path + b"/", child))
        out.sort(key=_path_of)
        return out

    def verify(self) -> None:
        """Wait for the background verification of in-place layers; raise on a mismatch.
        Sinks call this before they commit anything."""
        for reading in self.readings:
            reading.wait_verified()

    def close(self, *, failed: bool = False) -> None:
        """Free what the plan holds (``failed``: the run failed, see :meth:`Opening.close`)."""
        while self._closers:
            try:
                self._closers.pop()()
            except OSError:
                pass
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.close(failed=failed)


@dataclass
class MergeOptions:
    verify: bool = True
    limits: Limits = field(default_factory=Limits)
    #: keep whiteout markers as ordinary entries (a raw diff: ``--only-layer``)
    keep_whiteouts: bool = False
    #: a directory entry where the view has a symlink to a directory keeps the symlink
    #: and applies to the directory it names (EDGE-CASES 42; umoci's and rsync's
    #: keep-dirlinks, for layers built on a base without merged /usr); default: the
    #: entry replaces the symlink, as Docker and containerd do
    keep_dirlinks: bool = False
    #: where compressed layers are inflated to (default: the system temp dir)
    spool_dir: Optional[str] = None
    #: the destination of a directory output: big files of compressed layers are then
    #: staged beside it and renamed into place (see converter.staging); directory sinks only
    stage_beside: Optional[str] = None
    progress: Optional[Callable[[str, dict], None]] = None


class Merger:
    """Applies layers bottom-up to the model.  Use :func:`build_plan`."""

    def __init__(self, image: Image, options: MergeOptions, events: Events) -> None:
        self.image = image
        self.options = options
        self.events = events
        self.root = Node(DIR, IMPLIED_MODE, 0, 0, 0)
        self.root.implied = True
        self.entries_seen = 0
        self._inflated = 0  # content bytes of compressed layers written to inflated files
        # (id(dir), name) -> None when this layer wrote the name itself, else the mtime of
        # the entry that made it an ancestor of something written (for implied metadata)
        self._touched: dict[tuple[int, bytes], Optional[int]] = {}
        self._keepalive: list[Node] = []
        self._hidden: dict[int, Node] = {}  # directories whose lower contents this layer hid
        self._plink: dict[bytes, Node] = {}
        self._layer_label = ""
        self._layer_index = 0
        self._pcache_key: Optional[Parts] = None  # last resolved parent (see _apply)
        self._pcache_node: Optional[Node] = None
        self._dirs: dict[Parts, Node] = {}  # parents resolved by this layer (see _apply)
        self._replaced_links: list[TarEntry] = []  # pending links a later entry replaced
        #: this layer's hard links to a lower name, with that name (see _check_lower_links)
        self._lower_links: list[tuple[TarEntry, Parts]] = []

    # ----- per-layer driver -------------------------------------------------------------
    def apply_layer(self, layer: Layer, reading: LayerReading, stats: LayerStats) -> None:
        self._touched = {}
        self._hidden = {}
        self._keepalive = []
        self._plink = {}
        self._pcache_key = None
        self._layer_label = layer.label
        self._layer_index = layer.index
        self._dirs = {}
        self._replaced_links = []
        deferred: dict[Parts, TarEntry] = {}
        # data is skipped by seeking (in the source or the inflated file): a small buffer
        # avoids reading it anyway
        reader = reading.open_reader(buffer_size=64 << 10)
        limits = self.options.limits
        in_place = reading.region
        assert in_place is not None
        progress = self.options.progress
        inflated = reading.compression != "none"  # bombs and inflated contents need compression
        budget = limits.max_entries - self.entries_seen  # entries this layer may still add
        apply = self._apply
        in_fd, in_offset = in_place.fd, in_place.offset
        stage_fd = reading.stage_fd
        # per entry, only comparisons with what is worked out here (35k entries: ~15 ms)
        declared = reading.declared_limit(limits) if inflated else _NO_LIMIT
        max_size = _NO_LIMIT if limits.max_size is None else limits.max_size
        staged_from = STAGE_MIN if stage_fd >= 0 else _NO_LIMIT
        count = 0
        for entry in reader:
            count += 1
            if count > budget:
                raise LimitError(f"{layer.label}: more than {limits.max_entries} entries in the image (see --max-entries)")
            size = entry.size
            if size and inflated:
                if entry.data_offset + size > declared:
                    reading.check_declared(entry.data_offset + size, limits)
                self._inflated += size
                if self._inflated > max_size:
                    # contents of compressed layers are inflated to disk: bound that too
                    raise LimitError(f"{self._what(entry)}: the image's contents pass --max-size {limits.max_size} bytes")
            node = apply(entry, deferred)
            if node is not None and size:
                if size >= staged_from and stages(entry):
                    node.fd = stage_fd  # a file of its own (see converter.staging)
                    node.offset = -1 - entry.data_offset
                else:
                    node.fd = in_fd  # the source file, or the layer inflated ahead
                    node.offset = in_offset + entry.data_offset
            if progress is not None and count % 1024 == 0:
                progress("layer-entries", {"layer": layer.index, "entries": count,
                                           "bytes_in": reading.stored_bytes_read(reader.offset)})
        self.entries_seen += count
        stats.entries = count
        reader.finish()
        stats.uncompressed = reader.offset
        reading.finish()
        self._resolve_deferred(deferred)
        for entry in self._replaced_links:
            self._link_target(entry, final=True)
        self._replaced_links = []
        self._check_lower_links()
        self._touched = {}
        self._hidden = {}
        self._keepalive = []
        self._plink = {}
        self._dirs = {}

    # ----- one entry --------------------------------------------------------------------
    def _what(self, entry: TarEntry) -> str:
        return f"{self._layer_label}: entry {show(entry.name)}"

    def _apply(self, entry: TarEntry, deferred: dict) -> Optional[Node]:
        """Apply one header; returns the new regular-file node whose data must be located."""
        try:
            parts = split_name(entry.name, what="")
        except UnsafeEntryError:
            parts = split_name(entry.name, what=self._what(entry))  # raises with the full message
        if not parts:
            return self._root_entry(entry)
        base = parts[-1]
        keep_wh = self.options.keep_whiteouts
        if base.startswith(WH) and not keep_wh:
            self._forget_dirs()
            self._whiteout(entry, parts)
            return None
        if not keep_wh and WH in entry.name and any(p.startswith(WH) for p in parts[:-1]):
            if parts[0] == WH_PLINK and len(parts) == 2 and entry.type == b"0":
                node = self._new_node(entry, REG)
                self._plink[parts[1]] = node
                return node
            # inside AUFS metadata or inside a whiteout marker: never part of the tree
            self.events.decide("skip", f"{show(parts)}: under a whiteout/AUFS marker")
            return None
        if deferred:
            # a later entry for the same name replaces a pending link; the link must
            # still name something by the end of the layer (rule 6, EDGE-CASES 57)
            replaced = deferred.pop(parts, None)
            if replaced is not None:
                self._replaced_links.append(replaced)
        etype = entry.type
        if etype == b"1":
            if not self._hardlink(entry, parts, final=False):
                deferred[parts] = entry
            return None
        kind = _TYPES.get(etype)
        if kind is None:
            if etype not in _SILENT_SKIP:
                self.events.warn(
                    "unknown-type",
                    f"{self._what(entry)}: unsupported entry type {etype!r}, skipped",
                    path=join(parts).decode("utf-8", "backslashreplace"),
                    layer=self._layer_index,
                )
            return None
        # entries come grouped by directory: reuse a parent this layer resolved before
        # (the last one, or any) while nothing in this layer has replaced or removed a
        # directory or symlink, which could change what the path names (_forget_dirs)
        dirparts = parts[:-1]
        if dirparts == self._pcache_key:
            parent = self._pcache_node
        else:
            parent = self._dirs.get(dirparts)
            if parent is None:
                parent = self._resolve_dir(dirparts, entry, create=True, touch=True)
                if parent is None:
                    return None  # the path leads under a whiteout name (see _resolve_dir)
                if len(dirparts) <= _CACHED_DEPTH:
                    self._dirs[dirparts] = parent
                    self._keepalive.append(parent)
            self._pcache_key, self._pcache_node = dirparts, parent
        assert parent is not None
        children = parent.children
        assert children is not None
        self._touched[(id(parent), base)] = None  # written by this layer (see _touch)
        existing = children.get(base)
        if kind == DIR:
            if existing is not None:
                if existing.kind == LNK and self.options.keep_dirlinks:
                    existing = self._dirlink_target(parts, entry) or existing
                if existing.kind == DIR:
                    self._set_meta(existing, entry)
                    existing.implied = False
                    if len(parts) <= _CACHED_DEPTH:
                        self._dirs[parts] = existing
                    return None
                self._forget_dirs()
            children[base] = node = self._new_node(entry, DIR)
            if len(parts) <= _CACHED_DEPTH:
                self._dirs[parts] = node
            return None
        if existing is not None and existing.kind in (DIR, LNK):
            self._forget_dirs()
        node = self._new_node(entry, kind)
        children[base] = node
        return node if kind == REG else None

    def _dirlink_target(self, parts: Parts, entry: TarEntry) -> Optional[Node]:
        """The directory the symlink at ``parts`` leads to (inside the root, like any
        parent), or None when it leads nowhere, to something else, or round in a loop:
        the directory entry then replaces the symlink as usual."""
        try:
            target = self._resolve_dir(parts, entry, create=False, touch=True)
        except UnsafeEntryError:
            return None
        if target is not None:
            self.events.decide("keep-dirlink", f"{self._what(entry)}: kept the symlink to a directory (--keep-dirlinks)")
        return target

    def _forget_dirs(self) -> None:
        """Something in this layer may have replaced or removed a directory or symlink:
        no parent resolved before is trusted any more."""
        self._pcache_key = None
        if self._dirs:
            self._dirs = {}

    def _root_entry(self, entry: TarEntry) -> None:
        if entry.type != b"5":
            raise UnsafeEntryError(f"{self._what(entry)}: the root entry must be a directory (type {entry.type!r})")
        self._set_meta(self.root, entry)
        self.root.implied = False
        return None

    def _checked(self, entry: TarEntry) -> tuple[int, int, int]:
        """Owner and mtime an output can hold: ids above 2^32-2 are refused (no file system
        or tar reader takes them), mtimes before 1970 or past 64-bit nanoseconds become
        the epoch (EDGE-CASES 61, as Docker and containerd do)."""
        uid, gid, mtime_ns = entry.uid, entry.gid, entry.mtime_ns
        if uid > MAX_ID or gid > MAX_ID:
            raise InputError(f"{self._what(entry)}: owner {uid}:{gid} is out of range (ids are 0..{MAX_ID})")
        if not _MIN_NS <= mtime_ns <= _MAX_NS:
            why = "before 1970" if mtime_ns < 0 else "out of range"
            self.events.warn("mtime-clamped", f"{self._what(entry)}: mtime {why}; set to the epoch",
                             path=entry.name.decode("utf-8", "backslashreplace"), layer=self._layer_index)
            mtime_ns = 0
        return uid, gid, mtime_ns

    def _clean_xattrs(self, entry: TarEntry) -> dict[str, bytes]:
        xattrs = entry.xattrs
        bad = [k for k in xattrs if not k or "\0" in k or "." not in k]
        if not bad:
            return dict(xattrs)
        for k in bad:
            self.events.warn("xattr-invalid", f"{self._what(entry)}: invalid xattr name {k!r} ignored",
                             path=entry.name.decode("utf-8", "backslashreplace"), layer=self._layer_index)
        return {k: v for k, v in xattrs.items() if k not in bad}

    def _new_node(self, entry: TarEntry, kind: str) -> Node:
        uid, gid, mtime_ns = entry.uid, entry.gid, entry.mtime_ns
        if uid > MAX_ID or gid > MAX_ID or not _MIN_NS <= mtime_ns <= _MAX_NS:
            uid, gid, mtime_ns = self._checked(entry)
        node = Node(kind, entry.mode, uid, gid, mtime_ns)
        if entry.xattrs:
            node.xattrs = self._clean_xattrs(entry)
        if entry.pax:
            self._text_acls(entry, node)
        if kind == REG:
            node.size = entry.real_size
            node.sparse = entry.sparse
        elif kind == LNK:
            if not entry.linkname:
                # symlink("") fails with ENOENT on Linux: no file system can hold it, and
                # runtimes fail the layer the same way
                raise InputError(f"{self._what(entry)}: symbolic link with an empty target")
            node.linkname = entry.linkname
        elif kind in (CHR, BLK):
            if entry.devmajor > MAX_DEVICE or entry.devminor > MAX_DEVICE:
                raise InputError(f"{self._what(entry)}: device number {entry.devmajor}:{entry.devminor} is out of range")
            node.major = entry.devmajor
            node.minor = entry.devminor
        return node

    def _text_acls(self, entry: TarEntry, node: Node) -> None:
        """star's and GNU tar's text ACLs become the binary xattrs Go's tar writes, unless
        the entry has those too; one that cannot (a name without a numeric id, a malformed
        entry) is reported, never dropped silently (EDGE-CASES 68)."""
        for key, xattr in acls.TEXT_KEYS.items():
            text = entry.pax.get(key)
            if text is None or xattr in node.xattrs:
                continue
            try:
                value = acls.from_text(text)
            except acls.AclError as exc:
                self.events.warn("acl-not-applied", f"{self._what(entry)}: {key} not applied: {exc}",
                                 path=entry.name.decode("utf-8", "backslashreplace"), layer=self._layer_index)
                continue
            if xattr == acls.ACCESS and acls.is_minimal(value):
                continue  # the mode bits say it all
            node.xattrs = {**node.xattrs, xattr: value}

    def _set_meta(self, node: Node, entry: TarEntry) -> None:
        """Directory over directory: the upper entry's metadata, the whole xattr set."""
        node.mode = entry.mode
        node.uid, node.gid, node.mtime_ns = self._checked(entry)
        node.xattrs = self._clean_xattrs(entry) if entry.xattrs else _NO_XATTRS
        if entry.pax:
            self._text_acls(entry, node)

    def _touch(self, parent: Node, name: bytes, implied_mtime: Optional[int]) -> None:
        key = (id(parent), name)
        if implied_mtime is None:
            self._touched[key] = None
        elif key not in self._touched:
            self._touched[key] = implied_mtime
        self._keepalive.append(parent)

    # ----- resolution -------------------------------------------------------------------
    def _resolve_dir(self, parts: Parts, entry: TarEntry, *, create: bool, touch: bool) -> Optional[Node]:
        """The directory node that ``parts`` names in the current view.

        Symlinks on the way are followed inside the root (absolute targets restart at the
        root, ``..`` stops there), at most MAX_HOPS of them.  With ``create``, missing
        directories are implied (EDGE-CASES 43) and a non-directory in the way is replaced
        by one (EDGE-CASES 45, as umoci does) with a warning; without it, None is returned
        for a path that does not lead to a directory.

        A path that reaches a ``.wh.``-named component through a symlink is under a
        whiteout name, like one spelled that way (which the callers skip before): None
        here too, with the same decision, so no ``.wh.`` name is ever created in the
        model (a flattened tar holding one would delete files where it is applied)."""
        stack = [self.root]
        names: list[bytes] = []  # the real path of stack[-1], for messages
        # implied directories take the entry's mtime, clamped like any other (EDGE-CASES 61)
        implied_ns = entry.mtime_ns if _MIN_NS <= entry.mtime_ns <= _MAX_NS else 0
        todo = list(reversed(parts))
        hops = 0
        while todo:
            name = todo.pop()
            if name == b"..":
                if len(stack) > 1:
                    stack.pop()
                    names.pop()
                continue
            if name == b"." or not name:
                continue
            if name.startswith(WH) and not self.options.keep_whiteouts:
                if create:
                    self.events.decide("skip", f"{self._what(entry)}: leads under the whiteout name {show(name)}")
                return None
            cur = stack[-1]
            children = cur.children
            assert children is not None
            child = children.get(name)
            if child is None:
                if not create:
                    return None
                child = Node(DIR, IMPLIED_MODE, 0, 0, implied_ns)
                child.implied = True
                children[name] = child
            elif child.kind == LNK:
                hops += 1
                if hops > MAX_HOPS:
                    raise UnsafeEntryError(f"{self._what(entry)}: too many levels of symbolic links (ELOOP)")
                target = child.linkname
                if WH in target and not self.options.keep_whiteouts and any(
                    c.startswith(WH) for c in target.split(b"/")
                ):
                    # checked before following, so nothing is implied on the way there
                    if create:
                        self.events.decide("skip", f"{self._what(entry)}: leads under a whiteout name via {show(name)}")
                    return None
                if target.startswith(b"/"):
                    del stack[1:]
                    del names[:]
                todo.extend(reversed(target.split(b"/")))
                continue
            elif child.kind != DIR:
                if not create:
                    return None
                self.events.warn(
                    "parent-replaced",
                    f"{self._what(entry)}: parent {show(name)} was a {_KIND_NAMES[child.kind]}; replaced by a directory",
                    path=join(tuple(names) + (name,)).decode("utf-8", "backslashreplace"),
                    layer=self._layer_index,
                )
                child = Node(DIR, IMPLIED_MODE, 0, 0, implied_ns)
                child.implied = True
                children[name] = child
            if touch:
                self._touch(cur, name, implied_ns)
            stack.append(child)
            names.append(name)
            if len(stack) > MAX_DEPTH:
                raise LimitError(f"{self._what(entry)}: more than {MAX_DEPTH} directories deep (longer than any path "
                                 "a system can name)")
        return stack[-1]

    # ----- whiteouts (the only place that knows them) -----------------------------------
    def _whiteout(self, entry: TarEntry, parts: Parts) -> None:
        base = parts[-1]
        if any(p.startswith(WH) for p in parts[:-1]):
            self.events.decide("skip", f"{show(parts)}: under a whiteout/AUFS marker")
            return
        if base == WH_OPAQUE:
            if self._own_non_dir(parts[:-1], entry):
                # the marker applies before the layer's entries (rule 2): it made D a
                # directory, which this layer's own file at D then replaced
                self.events.decide("opaque", f"{show(parts[:-1])}: this layer writes a non-directory there; marker ignored")
                return
            directory = self._resolve_dir(parts[:-1], entry, create=True, touch=True)
            if directory is None:
                return
            self._hide_lower(directory)
            self.events.decide("opaque", f"{show(parts[:-1])}: lower contents hidden")
            return
        if base.startswith(WH_META):
            self.events.decide("skip", f"{show(parts)}: AUFS metadata")
            return
        target = base[len(WH):]
        if target in (b"", b".", b".."):
            raise UnsafeEntryError(f"{self._what(entry)}: invalid whiteout name {show(base)}")
        parent = self._resolve_dir(parts[:-1], entry, create=False, touch=False)
        if parent is None or parent.children is None:
            return  # EDGE-CASES 29: whiting out nothing is fine
        victim = parent.children.get(target)
        if victim is None:
            return
        if (id(parent), target) in self._touched:
            # written (or a parent of something written) by this same layer: it stays
            # (EDGE-CASES 27); only what lower layers put under it goes
            if victim.kind == DIR:
                self._hide_lower(victim)
            return
        del parent.children[target]
        self.events.decide("whiteout", f"{show(parts[:-1] + (target,))}: removed")

    def _own_non_dir(self, parts: Parts, entry: TarEntry) -> bool:
        """Whether this layer itself wrote a file, device or fifo at ``parts``."""
        if not parts:
            return False
        parent = self._resolve_dir(parts[:-1], entry, create=False, touch=False)
        if parent is None or parent.children is None:
            return False
        node = parent.children.get(parts[-1])
        # (a symlink there is followed, as for any entry under it: see tests/hostile)
        return node is not None and node.kind not in (DIR, LNK) and self._touched.get((id(parent), parts[-1]), 0) is None

    def _check_lower_links(self) -> None:
        """A hard link to a lower name that a whiteout or opaque marker of the same layer
        deletes links to nothing, wherever the marker is (rule 2: markers apply before
        the layer's entries): an error, as it is when the marker comes first, where the
        link had kept the deleted file when it came first."""
        for entry, parts in self._lower_links:
            parent = self._resolve_dir(parts[:-1], entry, create=False, touch=False)
            if parent is None or parent.children is None or parts[-1] not in parent.children:
                raise UnsafeEntryError(f"{self._what(entry)}: hard link to {show(entry.linkname)}, which this layer "
                                       f"deletes (a whiteout or opaque marker): it links to nothing")
        self._lower_links = []

    def _hide_lower(self, directory: Node) -> None:
        """Remove every descendant of ``directory`` that this layer did not write.  A lower
        directory this layer only wrote *into* becomes what it would be had the marker come
        first: an implied directory (rule 2: position in the stream does not matter).
        A directory hidden once stays so for the rest of the layer (nothing lower can come
        back): the marker repeated 20,000 times over 20,000 files scanned for minutes."""
        stack = [directory]
        touched = self._touched
        hidden = self._hidden
        while stack:
            d = stack.pop()
            if id(d) in hidden:
                continue
            hidden[id(d)] = d  # (the node held: its id is not reused while the layer lasts)
            assert d.children is not None
            for name in list(d.children):
                child = d.children[name]
                key = (id(d), name)
                if key not in touched:
                    del d.children[name]
                elif child.kind == DIR:
                    implied_mtime = touched[key]
                    if implied_mtime is not None and not child.implied:
                        child.mode, child.uid, child.gid = IMPLIED_MODE, 0, 0
                        child.mtime_ns, child.xattrs, child.implied = implied_mtime, _NO_XATTRS, True
                    stack.append(child)

    # ----- hard links -------------------------------------------------------------------
    def _link_target(self, entry: TarEntry, *, final: bool) -> Optional[Node]:
        """The node a hard link's linkname names in the current view (rule 6): an error
        for the root or a directory, and for nothing when ``final``; else None for a
        target that may still come later in the layer (EDGE-CASES 48)."""
        try:
            target_parts = split_name(entry.linkname, what="")
        except UnsafeEntryError:
            target_parts = split_name(entry.linkname, what=f"{self._what(entry)} link target")
        target: Optional[Node]
        if target_parts and target_parts[0] == WH_PLINK and len(target_parts) == 2:
            target = self._plink.get(target_parts[1])
        elif not target_parts:
            raise UnsafeEntryError(f"{self._what(entry)}: hard link to the root directory")
        else:
            tparent = self._resolve_dir(target_parts[:-1], entry, create=False, touch=False)
            target = tparent.children.get(target_parts[-1]) if tparent and tparent.children is not None else None
        if target is None:
            if not final:
                return None
            raise UnsafeEntryError(f"{self._what(entry)}: hard link to {show(entry.linkname)}, which does not exist")
        if target.kind == DIR:
            raise UnsafeEntryError(f"{self._what(entry)}: hard link to {show(entry.linkname)}, which is a directory")
        return target

    def _resolve_deferred(self, deferred: dict[Parts, TarEntry]) -> None:
        """Links that came before their target in the layer (EDGE-CASES 48), chains of
        them included; what is still missing then is an error.  A link waits on the path
        its linkname names and is retried when a link to that path resolves: one pass
        over a chain, where retrying them all until nothing changed resolved one link a
        pass (12,000 links in a chain ran for minutes).  Links whose name only resolves
        through symlinks are retried, in passes, at the end."""
        waiting: dict[Parts, list[Parts]] = {}
        ready: deque[Parts] = deque(deferred)
        queued = set(ready)
        while ready:
            parts = ready.popleft()
            queued.discard(parts)
            entry = deferred.get(parts)
            if entry is None:
                continue
            if self._hardlink(entry, parts, final=False):
                del deferred[parts]
                for later in waiting.pop(parts, ()):
                    if later in deferred and later not in queued:
                        ready.append(later)
                        queued.add(later)
                continue
            # (the linkname splits: _link_target has checked it)
            waiting.setdefault(split_name(entry.linkname, what=""), []).append(parts)
        while deferred:
            progress_made = False
            for parts, entry in list(deferred.items()):
                if self._hardlink(entry, parts, final=False):
                    del deferred[parts]
                    progress_made = True
            if not progress_made:
                parts, entry = next(iter(deferred.items()))
                self._hardlink(entry, parts, final=True)

    def _hardlink(self, entry: TarEntry, parts: Parts, *, final: bool) -> bool:
        """Link ``parts`` to the node its linkname names in the current view (rule 6).
        Returns False to be retried at the end of the layer (EDGE-CASES 48)."""
        target = self._link_target(entry, final=final)
        if target is None:
            return False
        tparts = split_name(entry.linkname, what="")  # (valid: _link_target checked it)
        if tparts[0] != WH_PLINK:
            tparent = self._resolve_dir(tparts[:-1], entry, create=False, touch=False)
            if tparent is not None and self._touched.get((id(tparent), tparts[-1]), 0) is not None:
                self._lower_links.append((entry, tparts))  # (a lower name: see _check_lower_links)
        parent = self._resolve_dir(parts[:-1], entry, create=True, touch=True)
        if parent is None:
            return True  # under a whiteout name: skipped (see _resolve_dir)
        assert parent.children is not None
        self._touch(parent, parts[-1], None)
        existing = parent.children.get(parts[-1])
        if existing is not target:
            target.nlink += 1
            if existing is not None and existing.kind in (DIR, LNK):
                self._forget_dirs()
        parent.children[parts[-1]] = target
        return True


_KIND_NAMES = {DIR: "directory", REG: "file", LNK: "symlink", CHR: "char device", BLK: "block device", FIFO: "fifo"}


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector.  Building and writing the merged view allocates
    a node, a dict or a tuple per entry and frees nothing in cycles, yet the collector
    kept walking the growing heap: 37 ms of the merge of the 30k-entry bench image, 58 ms
    of the 50k-file one."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def build_plan(
    image: Image,
    layers: Optional[list[Layer]] = None,
    *,
    options: Optional[MergeOptions] = None,
    events: Optional[Events] = None,
    opening: Optional[Opening] = None,
) -> Plan:
    """Apply ``layers`` (default: all of the image's, bottom first) and return the merged
    view.  Raises a :class:`ConverterError` for bad input; verification of in-place layers
    finishes in the background and is awaited by :meth:`Plan.verify`.  ``opening``: the
    same layers already opened with the same options (see :func:`open_layers`); the
    plan takes it over."""
    with gc_paused():
        return _build_plan(image, layers, options or MergeOptions(), events or Events(), opening)


def open_layers(image: Image, layers: Optional[list[Layer]], options: MergeOptions) -> Opening:
    """Open ``layers`` (default: all) for :func:`build_plan`, starting their helpers."""
    return Opening(list(layers if layers is not None else image.layers), verify=options.verify,
                   limits=options.limits, spool_dir=options.spool_dir, stage_beside=options.stage_beside)


def _build_plan(image: Image, layers: Optional[list[Layer]], options: MergeOptions, events: Events,
                opening: Optional[Opening]) -> Plan:
    merger = Merger(image, options, events)
    stats: list[LayerStats] = []
    plan = Plan(merger.root, image, stats, events)
    try:
        if opening is None:
            opening = open_layers(image, layers, options)
        plan._opening = opening
        for position, layer in enumerate(opening.todo):
            reading = opening.open_ahead(position)
            st = LayerStats(layer.index, layer.label, reading.compression, bytes_in=reading.compressed_size or 0,
                            digest=layer.digest, diff_id=layer.diff_id)
            stats.append(st)
            if options.progress:
                options.progress("layer-start", {"layer": layer.index, "label": layer.label,
                                                 "compression": reading.compression, "size": reading.compressed_size})
            try:
                merger.apply_layer(layer, reading, st)
            except InputError as exc:
                reading.blame(exc)  # (a corrupt blob is the error to report)
                raise
            finally:
                reading.close()
            if options.progress:
                options.progress("layer-done", {"layer": layer.index, "entries": st.entries})
    except BaseException:
        plan.close(failed=True)  # (the opening with it, readings first)
        raise
    plan.readings = opening.readings
    return plan

"""Streaming directory output: the disk follows the merge as it happens (write-through).

The two-pass directory sink (:mod:`converter.sinks.directory`) waits for the whole merged
view, then writes it.  For a plain conversion that leaves one core idle while the headers
are parsed and the other idle while files are written.  Here the merge tells a *mirror*
about every change it makes to its model — a directory made, an inode created, a name
linked, a path removed — at the real path the model resolved (symlinks already followed
inside the model), and a forked writer process applies the same change to the output
directory while the merge reads on.  The model stays the only place that decides anything;
the writer never resolves a name, it only executes "create/replace/link/remove at this
path", through directory fds with ``O_NOFOLLOW`` and ``O_EXCL`` exactly as the two-pass
writer does (it reuses its code).  Directory metadata is applied at the end from the final
model, deepest first.

Cost model: bytes that a later layer deletes are written (as GNU tar writes them), but
parsing, decompression and writing overlap on two cores, and no content is spooled twice.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
from typing import Any, Optional

from ..errors import InputError, LimitError, OutputError
from ..layerstream import needs_spool
from ..merge import BLK, CHR, DIR, LNK, REG, Events, MergeOptions, Node, Plan, _Spool, build_plan
from ..paths import Parts, show
from .atomic import check_destination, commit, ensure_parent, partial_name, remove_path, remove_stale_partials
from .directory import (
    _DIR_FLAGS,
    DirectoryOptions,
    DirectoryWriter,
    DirFds,
    DirResult,
    _CollectingEvents,
    _die_with_parent,
    _free_bytes,
    _os_error,
    _read_all,
)

_BATCH = 512
_LEN = struct.Struct("<I")
# record ops
MKDIR, CREATE, LINK, REMOVE = 0, 1, 2, 3


def _node_record(node: Node) -> tuple:
    return (node.kind, node.mode, node.uid, node.gid, node.mtime_ns, node.size, node.fd, node.offset,
            node.sparse, node.linkname, node.major, node.minor, node.xattrs or None)


def _node_from(rec: tuple) -> Node:
    kind, mode, uid, gid, mtime_ns, size, fd, offset, sparse, linkname, major, minor, xattrs = rec
    node = Node(kind, mode, uid, gid, mtime_ns)
    node.size, node.fd, node.offset, node.sparse = size, fd, offset, sparse
    node.linkname, node.major, node.minor = linkname, major, minor
    if xattrs:
        node.xattrs = xattrs
    return node


class DiskMirror:
    """Parent side: batches the merge's changes and sends them to the writer process."""

    def __init__(self, root_fd: int, options: DirectoryOptions, events: Events, free: Optional[int] = None) -> None:
        self.free = free
        self.root_fd = root_fd
        self.options = options
        self.events = events
        self._batch: list[tuple] = []
        self._pid = 0
        self._w = -1
        self._r = -1

    # ----- the merge calls these ----------------------------------------------------------
    def mkdir(self, parts: Parts, replace: bool) -> None:
        self._push((MKDIR, parts, replace))

    def create(self, parts: Parts, node: Node, replace: bool) -> None:
        self._push((CREATE, parts, replace, _node_record(node)))

    def link(self, target: Parts, parts: Parts, replace: bool) -> None:
        self._push((LINK, parts, replace, target))

    def remove(self, parts: Parts) -> None:
        self._push((REMOVE, parts))

    def _push(self, record: tuple) -> None:
        batch = self._batch
        batch.append(record)
        if len(batch) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        data = pickle.dumps(self._batch, protocol=pickle.HIGHEST_PROTOCOL)
        self._batch = []
        self._send(_LEN.pack(len(data)) + data)

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._w, view):]
        except BrokenPipeError:
            raise self._writer_error() from None

    # ----- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Fork the writer.  Called before any other thread of the conversion starts."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the writer process; it reports through the pipe
            os.close(to_child_w)
            os.close(from_child_r)
            _writer_main(self.root_fd, self.options, to_child_r, from_child_w, self.free, self.events)
        os.close(to_child_r)
        os.close(from_child_w)
        self._pid, self._w, self._r = pid, to_child_w, from_child_r

    def finish(self) -> dict[str, Any]:
        """Send what is left, wait for the writer, and merge its report."""
        self._flush()
        self._send(_LEN.pack(0))
        os.close(self._w)
        self._w = -1
        report = self._collect()
        for kind, message, path in report.get("warnings", []):
            self.events.warn(kind, message, path=path)
        return report

    def _collect(self) -> dict[str, Any]:
        raw = _read_all(self._r)
        os.close(self._r)
        self._r = -1
        _, status = os.waitpid(self._pid, 0)
        self._pid = 0
        try:
            report = pickle.loads(raw) if raw else {}
        except Exception:
            report = {}
        if "error" in report:
            cls = {"LimitError": LimitError, "OutputError": OutputError, "InputError": InputError}.get(
                report["error"], OutputError)
            raise cls(report["message"])
        if not report or os.waitstatus_to_exitcode(status) != 0:
            raise OutputError(f"the output writer process failed (status {status})")
        return report

    def _writer_error(self) -> BaseException:
        if self._w >= 0:
            os.close(self._w)
            self._w = -1
        try:
            self._collect()
        except BaseException as exc:  # the writer's own error is the one to report
            return exc
        return OutputError("the output writer process stopped early")

    def abort(self) -> None:
        for fd in (self._w, self._r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._w = self._r = -1
        if self._pid:
            try:
                os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
            except OSError:
                pass
            self._pid = 0


def _writer_main(root_fd: int, options: DirectoryOptions, r: int, w: int, free: Optional[int],
                 events: Events) -> None:  # pragma: no cover
    """The writer process: apply records until the end marker, then report."""
    code = 1
    try:
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills us if needed
        collector = _CollectingEvents()
        # whoever holds the run's Events (e.g. the id mapper's fallback hook) reports here
        events.warn = collector.warn  # type: ignore[method-assign]
        writer = DirectoryWriter(None, root_fd, options, collector)  # type: ignore[arg-type]
        writer.free = free
        fds = writer.fds
        f = os.fdopen(r, "rb", buffering=1 << 16)
        while True:
            head = f.read(4)
            if len(head) < 4:
                raise OutputError("the merge stopped sending changes")
            (n,) = _LEN.unpack(head)
            if n == 0:
                break
            for record in pickle.loads(f.read(n)):
                _apply(writer, fds, record)
        report: dict[str, Any] = {"files": writer.result.files, "bytes": writer.result.bytes,
                                  "warnings": collector.items}
        code = 0
    except BaseException as exc:
        report = {"error": type(exc).__name__, "message": str(exc)}
    try:
        data = pickle.dumps(report)
        while data:
            data = data[os.write(w, data):]
    finally:
        os._exit(code)


def _apply(writer: DirectoryWriter, fds: DirFds, record: tuple) -> None:  # pragma: no cover - writer process
    op = record[0]
    parts: Parts = record[1]
    try:
        dfd = fds.get(parts[:-1])
        name = parts[-1]
        if op == REMOVE:
            _remove(fds, dfd, parts)
            return
        if record[2]:  # replace: whatever the model had there goes first
            _remove(fds, dfd, parts)
        if op == MKDIR:
            os.mkdir(name, 0o700, dir_fd=dfd)
        elif op == CREATE:
            node = _node_from(record[3])
            uid, gid = (node.uid, node.gid) if writer.options.ids.identity else writer.options.ids.map(
                node.uid, node.gid, where=f"output {show(parts)}")
            if node.kind == REG:
                writer._file(dfd, name, parts, node, uid, gid)
            elif node.kind == LNK:
                writer._symlink(dfd, name, parts, node, uid, gid)
            else:
                writer._special(dfd, name, parts, node, uid, gid)
        else:  # LINK
            target: Parts = record[3]
            try:
                os.link(target[-1], name, src_dir_fd=fds.get(target[:-1]), dst_dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass  # the target was not created (a device without privileges): nor is its link
    except OSError as exc:
        raise _os_error(parts, exc, "create") from None


def _remove(fds: DirFds, dfd: int, parts: Parts) -> None:  # pragma: no cover - writer process
    """Remove one name (a whole subtree for a directory) without following anything."""
    name = parts[-1]
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        return
    except IsADirectoryError:
        fds.forget(parts)
        _rmtree_at(dfd, name)
    except PermissionError:  # EPERM from unlink(2) on a directory
        fds.forget(parts)
        _rmtree_at(dfd, name)


def _rmtree_at(dfd: int, name: bytes) -> None:  # pragma: no cover - writer process
    import shutil

    # our own directories are 0700 until the end, so nothing blocks removal
    shutil.rmtree(name, dir_fd=dfd)


def stream_directory(
    image: Any,
    layers: Any,
    dest: str,
    options: DirectoryOptions,
    merge_options: MergeOptions,
    events: Events,
) -> tuple[Plan, DirResult]:
    """Convert ``image`` to ``dest`` in one pass (merge and write overlapping); atomic."""
    dest = os.path.abspath(dest)
    ensure_parent(dest)
    check_destination(dest, force=options.force, kind="dir")
    remove_stale_partials(dest)
    partial = partial_name(dest)
    try:
        os.mkdir(partial, 0o700)
    except OSError as exc:
        raise OutputError(f"{dest}: cannot create {partial}: {exc.strerror}") from None
    plan: Optional[Plan] = None
    root_fd = -1
    spool = None
    mirror: Optional[DiskMirror] = None
    old_umask = os.umask(0)
    try:
        root_fd = os.open(partial, _DIR_FLAGS)
        free = _free_bytes(partial)
        if needs_spool(list(layers)):
            spool = _Spool(merge_options.spool_dir)  # before the fork: the writer reads it by fd
        mirror = DiskMirror(root_fd, options, events, free)
        mirror.start()
        merge_options.mirror = mirror
        merge_options.spool = spool
        plan = build_plan(image, layers, options=merge_options, events=events)
        report = mirror.finish()
        mirror = None
        result = DirResult(path=dest)
        result.files = report["files"]
        writer = DirectoryWriter(plan, root_fd, options, events)
        try:
            dirs: list[tuple[Parts, Node]] = []
            seen: set[int] = set()
            for parts, node in plan.walk():
                result.entries += 1
                if node.kind == DIR:
                    dirs.append((parts, node))
                    result.dirs += 1
                elif node.kind == REG and id(node) not in seen:  # what the tree holds, once per inode
                    seen.add(id(node))
                    result.bytes += node.stored_size
            for parts, node in reversed(dirs):
                try:
                    writer._dir_meta(writer.fds.get(parts), parts, node)
                except OSError as exc:
                    raise _os_error(parts, exc, "set metadata on") from None
            writer._dir_meta(root_fd, (), plan.root)
        finally:
            writer.fds.close()
        plan.verify()
        os.close(root_fd)
        root_fd = -1
        commit(partial, dest)
        return plan, result
    except BaseException:
        if mirror is not None:
            mirror.abort()
        if plan is not None:
            plan.close()
        if root_fd >= 0:
            os.close(root_fd)
        remove_path(partial)
        raise
    finally:
        os.umask(old_umask)
        if spool is not None:
            spool.close()

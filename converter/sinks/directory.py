"""Directory sink: the only code that creates files (DESIGN §4).

It writes the merged view into a fresh private directory, so no name it creates exists
before it creates it (``O_EXCL``, ``mkdirat``, ``symlinkat``, ``mknodat``): an existing file
is never opened for writing and nothing is ever followed.  Every operation is relative to a
directory fd obtained by :class:`DirFds`, which opens one component at a time with
``O_NOFOLLOW | O_DIRECTORY``; since the merge already resolved every symlink in the image
*inside the model*, a final path never crosses a symlink, and a component that turns out
not to be a real directory (someone racing us) is an error, never an escape.

Metadata order per inode: create, write data, ``chown``, ``chmod``, xattrs
(``security.capability`` last), times.  Directories get theirs after all their children,
deepest first, so an image's read-only directory cannot stop extraction.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, NamedTuple, Optional

from .. import acls
from ..errors import LimitError, OutputError
from ..forking import CAN_FORK, collect_report, fork_reporting
from ..ids import IdMapper
from ..merge import CHR, DIR, FIFO, LNK, REG, Events, Node, Plan
from ..paths import Parts, join, show
from ..staging import node_name
from .atomic import begin_directory, commit, discard

#: a writer's unit of work: a directory (its path and node) and names of its children
Job = tuple[Parts, Node, list[bytes]]
#: a hard link to make: the inode's key (``id`` of its node), its first name, the new name
Link = tuple[int, Parts, Parts]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CAP = "security.capability"


def detect_privileged() -> bool:
    """Root that can give files any owner: euid 0 in a user namespace mapping more than one
    id (``unshare -r`` maps only the caller: that is rootless, whatever id 0 says)."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            total = sum(int(line.split()[2]) for line in f if line.strip())
    except (OSError, ValueError, IndexError):
        return True
    return total > 1


class DirFds:
    """Directory fds by path, opened one component at a time and kept in a small LRU, so
    deep trees need neither recursion nor thousands of open fds."""

    def __init__(self, root_fd: int, capacity: int = 256) -> None:
        self.root_fd = root_fd
        self.capacity = capacity
        self._fds: "OrderedDict[Parts, int]" = OrderedDict()

    def get(self, parts: Parts) -> int:
        if not parts:
            return self.root_fd
        fds = self._fds
        fd = fds.get(parts)
        if fd is not None:
            fds.move_to_end(parts)
            return fd
        i = len(parts) - 1
        while i > 0 and parts[:i] not in fds:
            i -= 1
        base = self.root_fd if i == 0 else fds[parts[:i]]
        for j in range(i, len(parts)):
            try:
                fd = os.open(parts[j], _DIR_FLAGS, dir_fd=base)
            except OSError as exc:
                raise OutputError(
                    f"output {show(parts[: j + 1])}: cannot open as a directory ({exc.strerror}); "
                    "was the output changed while it was written?"
                ) from None
            fds[parts[: j + 1]] = fd
            base = fd
            if len(fds) > self.capacity:  # (as it goes: a walk down a deep tree must not hold every level)
                _, old = fds.popitem(last=False)
                os.close(old)
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


@dataclass
class DirectoryOptions:
    force: bool = False
    ids: IdMapper = field(default_factory=IdMapper)
    #: None: decide from the effective uid.  False: rootless behaviour (issue 5).
    privileged: Optional[bool] = None
    #: what to do with device nodes when they cannot be created: "skip" or "empty"
    devices: str = "skip"
    #: xattr namespaces dropped on purpose (host-specific labels)
    drop_xattrs: tuple[str, ...] = ("security.selinux",)
    max_size: Optional[int] = None
    #: "xattr": record owners (and device numbers of emptied devices) that could not be
    #: applied, as ``user.rootlesscontainers`` (the rootlesscontainers.com convention)
    keep_ids: str = "none"
    #: called with ("write-start", {"bytes", "entries"}), ("write-progress", {"bytes"})
    #: and ("write-done", {"bytes"}): the bytes of file contents written so far
    progress: Optional[Callable[[str, dict], None]] = None


ROOTLESS_XATTR = "user.rootlesscontainers"
DEVICE_XATTR = "user.rootfs.device"


def rootless_value(uid: int, gid: int) -> bytes:
    """The ``user.rootlesscontainers`` value: protobuf ``Resource{uint32 uid=1; uint32
    gid=2}``; proto3 leaves zero fields out, so root:root is the empty message."""
    out = bytearray()
    for tag, value in ((0x08, uid), (0x10, gid)):
        if value:
            out.append(tag)
            while True:
                byte = value & 0x7F
                value >>= 7
                if value:
                    out.append(byte | 0x80)
                else:
                    out.append(byte)
                    break
    return bytes(out)


@dataclass
class DirResult:
    path: str
    entries: int = 0
    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0


class DirectoryWriter:
    def __init__(self, plan: Plan, root_fd: int, options: DirectoryOptions, events: Events) -> None:
        self.plan = plan
        self.root_fd = root_fd
        self.options = options
        self.events = events
        self.fds = DirFds(root_fd)
        self.privileged = options.privileged if options.privileged is not None else detect_privileged()
        self.result = DirResult(path="")
        self._self_ids = (os.geteuid(), os.getegid())
        self._skipped: set[int] = set()  # inodes not created (devices without privileges)
        self._failed = False
        self._count_lock = threading.Lock()
        self.limit: Optional[int] = options.max_size
        self.free: Optional[int] = None

    # ----- driver -----------------------------------------------------------------------
    def write(self) -> None:
        """Directories first (one thread, parents before children), then every other inode
        by a few writers (the work is syscalls, which run in parallel), then hard links
        (forked writers make those of each chunk after it), then directory metadata
        deepest first."""
        dirs: list[tuple[Parts, Node]] = []
        jobs: list[Job] = []
        links: list[Link] = []
        heads: dict[int, Parts] = {}
        head_jobs: dict[int, int] = {}  # the index in jobs of the job that creates each head
        result = self.result
        stack: list[tuple[Parts, Node]] = [((), self.plan.root)]
        mkdir = os.mkdir
        entries = need = moved = 0
        costs: list[int] = []  # per job, for sharing them out (see _chunks)
        sizes: dict[int, int] = {}  # id(job): bytes of contents, for the progress shown
        while stack:
            dparts, d = stack.pop()
            dfd = self.fds.get(dparts)
            children = d.children
            assert children is not None
            entries += len(children)
            batch: list[bytes] = []
            batch_bytes = batch_size = 0
            for name, node in children.items():
                kind = node.kind
                if kind == DIR:
                    parts = dparts + (name,)
                    try:
                        mkdir(name, 0o700, dir_fd=dfd)
                    except OSError as exc:
                        raise _os_error(parts, exc, "create") from None
                    dirs.append((parts, node))
                    stack.append((parts, node))
                    continue
                if node.nlink > 1:  # only inodes with several names need their first one kept
                    key = id(node)
                    head = heads.get(key)
                    if head is not None:
                        links.append((key, head, dparts + (name,)))
                        continue
                    heads[key] = dparts + (name,)
                    head_jobs[key] = len(jobs)  # (the job this batch becomes)
                batch.append(name)
                if kind == REG:
                    size = node.size if node.sparse is None else node.stored_size
                    need += size
                    batch_size += size
                    if node.offset < 0:
                        moved += size  # staged: already on this file system, renamed into place
                    else:
                        batch_bytes += size
                if len(batch) >= _BATCH:
                    jobs.append(job := (dparts, d, batch))
                    costs.append(len(batch) * _FILE_COST + batch_bytes)
                    sizes[id(job)] = batch_size
                    batch = []
                    batch_bytes = batch_size = 0
            if batch:
                jobs.append(job := (dparts, d, batch))
                costs.append(len(batch) * _FILE_COST + batch_bytes)
                sizes[id(job)] = batch_size
        result.entries += entries
        result.dirs += len(dirs)
        self._check_size(need, need - moved)
        progress = self.options.progress
        if progress is not None:
            progress("write-start", {"bytes": need, "entries": entries})
        # the directories and links still to finish
        dirs, links = self._run_jobs(jobs, costs, sizes, dirs, links, head_jobs)
        self._links(links, self.fds)
        self._finish_dirs(dirs, self.fds)
        self._dir_meta(self.root_fd, (), self.plan.root)
        if progress is not None:
            progress("write-done", {"bytes": need})

    def _links(self, links: list[Link], fds: DirFds) -> None:
        """Make the hard links ``links`` (their first names exist: this process wrote
        them, or they were written before this call)."""
        made = 0
        for key, head, parts in links:
            if key in self._skipped:
                continue
            try:
                os.link(head[-1], parts[-1], src_dir_fd=fds.get(head[:-1]),
                        dst_dir_fd=fds.get(parts[:-1]), follow_symlinks=False)
            except OSError as exc:
                raise _os_error(parts, exc, "link") from None
            made += 1
        with self._count_lock:
            self.result.links += made

    def _finish_dirs(self, dirs: list[tuple[Parts, Node]], fds: DirFds) -> None:
        """Directory metadata, deepest first (a directory's mtime is final once nothing
        more is created in it; a mode without write or search permission must come after
        its children when not privileged)."""
        for parts, node in reversed(dirs):
            try:
                self._dir_meta(fds.get(parts), parts, node)
            except OSError as exc:
                raise _os_error(parts, exc, "set metadata on") from None

    def _check_size(self, need: int, new: int) -> None:
        """--max-size (``need``: the result's bytes) and free space (``new``: the bytes
        still to be written; staged files are there already), checked on the whole result
        before any data is written (the writers then run in parallel, each seeing only
        its share)."""
        if self.limit is not None and need > self.limit:
            raise LimitError(f"the image writes {need} bytes, more than --max-size {self.limit}")
        if self.free is not None and new > self.free:
            raise OutputError(f"the image needs {new} bytes but only {self.free} are free at the destination")

    def _run_jobs(self, jobs: list[Job], costs: list[int], sizes: dict[int, int], dirs: list[tuple[Parts, Node]],
                  links: list[Link], head_jobs: dict[int, int]) -> tuple[list[tuple[Parts, Node]], list[Link]]:
        """Write every inode of ``jobs``; return the directories whose metadata is still
        to be set and the hard links still to make (the forked writers finish the
        directories only they wrote into, and make the links whose first name they
        wrote).  ``sizes``: bytes of contents per job (by ``id``), for the progress shown;
        ``head_jobs``: the index of the job that writes each link's first name."""
        workers = min(_WORKERS, len(jobs))
        if workers <= 1:
            self._worker(self._reporting(jobs, sizes), self.fds)
            return dirs, links
        if CAN_FORK:
            return self._run_jobs_forked(jobs, costs, sizes, workers, dirs, links, head_jobs), []
        feed = self._reporting(jobs, sizes)
        lock = threading.Lock()

        def locked_feed() -> Iterator[Job]:
            while True:
                with lock:
                    job = next(feed, None)
                if job is None or self._failed:
                    return
                yield job

        errors: list[BaseException] = []

        def run() -> None:
            fds = DirFds(self.root_fd, capacity=64)
            try:
                self._worker(locked_feed(), fds)
            except BaseException as exc:  # re-raised in the main thread
                self._failed = True
                errors.append(exc)
            finally:
                fds.close()

        threads = [threading.Thread(target=run, name=f"write-{i}", daemon=True) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return dirs, links

    def _reporting(self, jobs: list[Job], sizes: dict[int, int]) -> Iterator[Job]:
        """``jobs``, reporting the bytes of contents handed out before each one (one
        process: the forked writers report per chunk instead, see _take)."""
        progress = self.options.progress
        done = 0
        for job in jobs:
            if progress is not None:
                progress("write-progress", {"bytes": done})
                done += sizes.get(id(job), 0)
            yield job

    def _run_jobs_forked(self, jobs: list[Job], costs: list[int], sizes: dict[int, int], workers: int,
                         dirs: list[tuple[Parts, Node]], links: list[Link],
                         head_jobs: dict[int, int]) -> list[tuple[Parts, Node]]:
        """Writing inodes is syscalls plus Python bookkeeping; threads share one GIL, so
        the work is done by forked processes that inherit the plan (copy-on-write) and the
        directory fds.  Each child reports counts, warnings and inodes it could not create
        through a pipe, or the one error that stopped it.

        The jobs are cut into contiguous chunks (see :func:`_chunks`), and each writer
        takes the next chunk number from a shared pipe until none is left: a fixed share
        each left one writer idle for 40 ms when the other shared its core with a helper
        still hashing.  After a chunk, its writer makes the hard links to the first names
        it wrote (every directory exists by then), where this process alone made all of
        them at the end (8 ms for the 381 links of the bench image).  With privileges, a
        writer also finishes the directories only its chunk wrote into (nothing else is
        created in them afterwards; subdirectories' metadata does not touch their mtime),
        instead of leaving all of them to one process at the end."""
        chunks = _chunks(jobs, costs, workers)
        # chunks are handed out in order: when this process takes chunk i, all before it
        # are taken (and all but the other writer's last one are written)
        before = [0]
        for chunk in chunks:
            before.append(before[-1] + sum(sizes.get(id(job), 0) for job in chunk))
        owned, rest = _owned_dirs(chunks, dirs, links) if self.privileged else ([[] for _ in chunks], dirs)
        chunk_of = [i for i, chunk in enumerate(chunks) for _ in chunk]  # by job index
        links_of: list[list[Link]] = [[] for _ in chunks]
        for link in links:
            links_of[chunk_of[head_jobs[link[0]]]].append(link)
        work = _Chunks(chunks, owned, links_of, before)
        feed_r, feed_w = os.pipe()
        try:
            os.write(feed_w, b"".join(_CHUNK_NO.pack(i) for i in range(len(chunks))))  # (a few bytes: never blocks)
        finally:
            os.close(feed_w)
        children: list[tuple[int, int]] = []
        try:
            for _ in range(workers - 1):
                children.append(fork_reporting(lambda: self._child(work, feed_r)))
            error: Optional[BaseException] = None
            try:
                self._take(work, feed_r, self.fds)
            except BaseException as exc:
                error = exc
            while children:
                pid, r = children.pop(0)
                try:
                    report = collect_report(pid, r, failed="output writer process failed")
                except BaseException as exc:
                    error = error or exc
                    continue
                if error is None:
                    self._absorb(report)
            if error is not None:
                raise error
            return rest
        finally:
            os.close(feed_r)
            for pid, r in children:  # interrupted: stop the others before cleanup
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    os.close(r)
                except OSError:
                    pass

    def _take(self, work: "_Chunks", feed: int, fds: DirFds) -> None:
        """Write the chunks whose numbers this writer reads from ``feed`` (each read takes
        one whole number: the pipe hands out what the writers share atomically)."""
        while True:
            data = os.read(feed, _CHUNK_NO.size)
            if not data:
                return
            (i,) = _CHUNK_NO.unpack(data)
            if self.options.progress is not None:
                self.options.progress("write-progress", {"bytes": work.before[i]})
            self._worker(iter(work.chunks[i]), fds)
            self._links(work.links[i], fds)
            self._finish_dirs(work.owned[i], fds)

    def _child(self, work: "_Chunks", feed: int) -> dict:  # pragma: no cover - a writer child
        collector = _CollectingEvents()
        self.options = replace(self.options, progress=None)  # the parent shows progress
        # whoever holds the run's Events (e.g. the id mapper's fallback hook) reports here
        self.events.warn = collector.warn  # type: ignore[method-assign]
        self.events = collector  # type: ignore[assignment]
        self.result = DirResult(path="")
        self._skipped = set()
        fds = DirFds(self.root_fd, capacity=64)
        self._take(work, feed, fds)
        return {"files": self.result.files, "bytes": self.result.bytes, "links": self.result.links,
                "warnings": self.events.items, "skipped": sorted(self._skipped)}

    def _absorb(self, report: dict) -> None:
        with self._count_lock:
            self.result.files += report["files"]
            self.result.bytes += report["bytes"]
            self.result.links += report["links"]
        self._skipped.update(report["skipped"])
        for kind, message, path in report["warnings"]:
            self.events.warn(kind, message, path=path)

    def _worker(self, jobs: Iterator[Job], fds: DirFds) -> None:
        identity = self.options.ids.identity
        ids = self.options.ids
        # The everyday file (ids kept, ours or no privileges, no special bits, xattrs or
        # holes) is written inline: create with its final mode, copy, set mtime, close.
        # Per file that is four syscalls of about 12 us in all, and the general path
        # below added about 3 us of Python to them.
        fast = identity and (self.privileged or self.options.keep_ids != "xattr")
        privileged = self.privileged
        self_uid, self_gid = self._self_ids
        files = nbytes = 0
        open_, utime, close, rename, chmod = os.open, os.utime, os.close, os.rename, os.chmod
        for dparts, d, names in jobs:
            dfd = fds.get(dparts)
            children = d.children
            assert children is not None
            for name in names:
                node = children[name]
                if (fast and node.kind == REG and node.sparse is None and not node.xattrs and not node.mode & 0o7000
                        and (not privileged or (node.uid == self_uid and node.gid == self_gid))):
                    try:
                        size = node.size
                        mtime = node.mtime_ns
                        if node.offset < 0:
                            rename(node_name(node.offset), name, src_dir_fd=node.fd, dst_dir_fd=dfd)
                            chmod(name, node.mode & 0o777, dir_fd=dfd)  # (a file we just placed)
                            utime(name, ns=(mtime, mtime), dir_fd=dfd, follow_symlinks=False)
                            nbytes += size
                        else:
                            fd = open_(name, _FILE_FLAGS, node.mode & 0o777, dir_fd=dfd)
                            try:
                                if size:
                                    _sendfile_all(fd, node.fd, node.offset, size, dparts + (name,))
                                    nbytes += size
                                utime(fd, ns=(mtime, mtime))
                            finally:
                                close(fd)
                    except OSError as exc:
                        raise _os_error(dparts + (name,), exc, "create") from None
                    files += 1
                    continue
                parts = dparts + (name,)
                try:
                    uid, gid = (node.uid, node.gid) if identity else ids.map(node.uid, node.gid, where=f"output {show(parts)}")
                    kind = node.kind
                    if kind == REG:
                        self._file(dfd, name, parts, node, uid, gid)
                    elif kind == LNK:
                        self._symlink(dfd, name, parts, node, uid, gid)
                    elif not self._special(dfd, name, parts, node, uid, gid):
                        self._skipped.add(id(node))
                except OSError as exc:
                    raise _os_error(parts, exc, "create") from None
        with self._count_lock:
            self.result.files += files
            self.result.bytes += nbytes

    # ----- kinds ------------------------------------------------------------------------
    def _file(self, parent_fd: int, name: bytes, parts: Parts, node: Node, uid: int, gid: int) -> None:
        # The writer runs with umask 0, so a file created with its final permission bits
        # needs no chmod; chown (which clears setuid/setgid) and the special bits still go
        # in the prescribed order: write, chown, chmod.
        mode = node.mode
        chown = self.privileged and (uid, gid) != self._self_ids
        xattrs = self._with_ids(node.xattrs, uid, gid)
        staged = node.offset < 0
        simple = not chown and not mode & 0o7000 and not xattrs and not staged
        if staged:  # already written, by the helper that inflated it (see converter.staging)
            os.rename(node_name(node.offset), name, src_dir_fd=node.fd, dst_dir_fd=parent_fd)
            fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        else:
            fd = os.open(name, _FILE_FLAGS, (mode & 0o777) if simple else 0o600, dir_fd=parent_fd)
        try:
            if staged:
                with self._count_lock:
                    self.result.bytes += node.size
            elif node.size:
                self._copy(fd, node, parts)
            if chown:
                self._fchown(fd, uid, gid, parts)
            if xattrs and not self.privileged:
                # without privileges, setting user.* needs write permission: before chmod
                self._xattrs(fd, None, parts, xattrs)
            if not simple:
                os.fchmod(fd, mode)
            if xattrs and self.privileged:
                self._xattrs(fd, None, parts, xattrs)
            os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
        finally:
            os.close(fd)
        with self._count_lock:
            self.result.files += 1

    def _fchown(self, fd: int, uid: int, gid: int, parts: Parts) -> None:
        self._chown(lambda: os.fchown(fd, uid, gid), uid, gid, parts)

    def _chown(self, change: Callable[[], None], uid: int, gid: int, parts: Parts) -> None:
        """Apply an owner change; EINVAL means a user namespace without this id: keep the
        entry and say what could not be done."""
        try:
            change()
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.events.warn("owner-unmappable", f"{show(parts)}: owner {uid}:{gid} does not exist in this user namespace; left as is", path=_p(parts))

    def _with_ids(self, xattrs: dict[str, bytes], uid: int, gid: int, extra: Optional[dict[str, bytes]] = None) -> dict[str, bytes]:
        """Add the rootless owner record when ids could not be applied and the user asked."""
        if self.privileged or self.options.keep_ids != "xattr":
            return xattrs
        out = dict(xattrs)
        if uid or gid:
            out[ROOTLESS_XATTR] = rootless_value(uid, gid)
        if extra:
            out.update(extra)
        return out

    def _copy(self, out_fd: int, node: Node, parts: Parts) -> None:
        stored = node.stored_size
        with self._count_lock:  # --max-size and free space: checked on the whole result in write()
            self.result.bytes += stored
        if node.sparse is None:
            _sendfile_all(out_fd, node.fd, node.offset, node.size, parts)
            return
        src = node.offset
        for file_off, length in node.sparse:
            if length:
                os.lseek(out_fd, file_off, os.SEEK_SET)
                _sendfile_all(out_fd, node.fd, src, length, parts)
                src += length
        os.ftruncate(out_fd, node.size)

    def _symlink(self, parent_fd: int, name: bytes, parts: Parts, node: Node, uid: int, gid: int) -> None:
        os.symlink(node.linkname, name, dir_fd=parent_fd)
        # a new link is ours already (no directory is setgid while writing: their modes
        # come last), so like files only other owners need the call
        if self.privileged and (uid, gid) != self._self_ids:
            self._chown(lambda: os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False), uid, gid, parts)
        if node.xattrs:
            self._xattrs(None, (parent_fd, name), parts, node.xattrs)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    def _special(self, parent_fd: int, name: bytes, parts: Parts, node: Node, uid: int, gid: int) -> bool:
        kind = node.kind
        try:
            if kind == FIFO:
                os.mkfifo(name, 0o600, dir_fd=parent_fd)
            else:
                if not self.privileged:
                    raise PermissionError(errno.EPERM, "not privileged")
                fmt = stat.S_IFCHR if kind == CHR else stat.S_IFBLK
                os.mknod(name, fmt | 0o600, os.makedev(node.major, node.minor), dir_fd=parent_fd)
        except (OSError, OverflowError, ValueError) as exc:
            # a node this process may not make (a device unprivileged; a fifo where a
            # user namespace, a seccomp policy or the file system refuses it: EDGE-CASES
            # 70) is skipped or recorded as the user asked (DESIGN §4); anything else
            # (numbers out of range, I/O errors) is an error
            if isinstance(exc, (OverflowError, ValueError)):
                raise OutputError(f"output {show(parts)}: cannot create {kind!r} node: {exc}") from None
            if exc.errno not in _REFUSED:
                raise
            if kind == FIFO:
                what, why, warn_as = "fifo", f"cannot be created here: {exc.strerror}", "fifo"
            else:
                what, why, warn_as = "device node", "needs root/CAP_MKNOD", "device"
            if self.options.devices == "empty":
                fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent_fd)
                try:
                    dev = {DEVICE_XATTR: f"{kind}:{node.major}:{node.minor}".encode()}
                    xattrs = self._with_ids(node.xattrs, uid, gid, dev)
                    if xattrs:
                        self._xattrs(fd, None, parts, xattrs)
                    os.fchmod(fd, node.mode)
                    os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
                finally:
                    os.close(fd)
                self.events.warn(f"{warn_as}-emptied", f"{show(parts)}: {what} written as an empty file ({why})", path=_p(parts))
                return True
            self.events.warn(f"{warn_as}-skipped", f"{show(parts)}: {what} skipped ({why})", path=_p(parts))
            return False
        if self.privileged:
            self._chown(lambda: os.chown(name, uid, gid, dir_fd=parent_fd, follow_symlinks=False), uid, gid, parts)
        os.chmod(name, node.mode, dir_fd=parent_fd)  # a node we just made: not a symlink
        xattrs = self._with_ids(node.xattrs, uid, gid)
        if xattrs:
            self._xattrs(None, (parent_fd, name), parts, xattrs)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
        return True

    def _dir_meta(self, fd: int, parts: Parts, node: Node) -> None:
        ids = self.options.ids
        uid, gid = (node.uid, node.gid) if ids.identity else ids.map(node.uid, node.gid, where=f"output {show(parts)}")
        if self.privileged and (uid, gid) != self._self_ids:
            self._fchown(fd, uid, gid, parts)
        xattrs = self._with_ids(node.xattrs, uid, gid)
        if xattrs and not self.privileged:
            self._xattrs(fd, None, parts, xattrs)
        os.fchmod(fd, node.mode)
        if xattrs and self.privileged:
            self._xattrs(fd, None, parts, xattrs)
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))

    # ----- xattrs -----------------------------------------------------------------------
    def _xattrs(self, fd: Optional[int], at: Optional[tuple[int, bytes]], parts: Parts, xattrs: dict[str, bytes]) -> None:
        names = sorted(xattrs, key=lambda n: (n == _CAP, n))  # capability last
        ids = self.options.ids
        for key in names:
            if key.startswith(self.options.drop_xattrs):
                self.events.warn("xattr-dropped", f"{show(parts)}: xattr {key} dropped (host-specific)", path=_p(parts))
                continue
            if not self.privileged and key.startswith(("trusted.", "security.")):
                self.events.warn("xattr-dropped", f"{show(parts)}: xattr {key} needs privileges; dropped", path=_p(parts))
                continue
            value = xattrs[key]
            if key in acls.XATTRS:  # named users and groups are ids, mapped like owners
                value = acls.map_ids(value, ids, where=f"output {show(parts)}")
            try:
                if fd is not None:
                    os.setxattr(fd, key, value)
                else:
                    assert at is not None
                    path = b"/proc/self/fd/%d/%s" % (at[0], at[1])
                    os.setxattr(path, key, value, follow_symlinks=False)
            except OSError as exc:
                # what the file system or the kernel will not hold is reported, not fatal
                # (DESIGN §4): no xattrs or not this namespace here, or not on this kind
                # of file (EPERM: user.* on a symlink); a value too big (E2BIG, ERANGE) or
                # no room left for xattrs on the inode (ENOSPC); a value the kernel refuses
                # (EINVAL: a malformed ACL or capability, or an ACL naming ids this user
                # namespace does not map; EACCES: a default ACL on a non-directory)
                if exc.errno in _XATTR_REFUSED:
                    self.events.warn(
                        "xattr-unsupported", f"{show(parts)}: xattr {key} not kept: {exc.strerror}", path=_p(parts)
                    )
                    continue
                raise OutputError(f"output {show(parts)}: cannot set xattr {key}: {exc.strerror}") from None


_XATTR_REFUSED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.E2BIG, errno.ERANGE, errno.ENOSPC,
                            errno.EINVAL, errno.EACCES})

#: errors of mknod/mkfifo that mean "not allowed here" rather than a failing output
_REFUSED = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP})

_WORKERS = max(1, min(2, os.cpu_count() or 1))
_BATCH = 256
#: the smallest chunk of jobs (see _chunks) is this fraction of all the writing
_SMALLEST = 64
_CHUNK_NO = struct.Struct("<I")


class _CollectingEvents:
    """Stands in for Events inside a writer child: warnings go back to the parent."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, Optional[str]]] = []

    def warn(self, kind: str, message: str, *, path: Optional[str] = None, layer: Optional[int] = None) -> None:
        self.items.append((kind, message, path))

    def decide(self, what: str, detail: str) -> None:
        pass


class _Chunks(NamedTuple):
    """What the forked writers share out, by chunk number: the jobs, the directories
    only that chunk writes into, the hard links to the first names it writes, and the
    bytes of contents in the chunks before it (for progress)."""

    chunks: list[list[Job]]
    owned: list[list[tuple[Parts, Node]]]
    links: list[list[Link]]
    before: list[int]


def _owned_dirs(shares: list[list[Job]], dirs: list[tuple[Parts, Node]], links: list[Link]
                ) -> tuple[list[list[tuple[Parts, Node]]], list[tuple[Parts, Node]]]:
    """For each share (a chunk of jobs), the directories (in creation order) that only it
    creates entries in; and the rest, for the parent after the hard links: directories two
    shares have entries in, directories links go into, and those holding only directories."""
    owner: dict[int, int] = {}
    for k, share in enumerate(shares):
        for _, d, _ in share:
            owner[id(d)] = k if owner.get(id(d), k) == k else -1
    by_parts = {parts: node for parts, node in dirs}
    for _, _, parts in links:
        node = by_parts.get(parts[:-1])
        if node is not None:
            owner[id(node)] = -1
    owned: list[list[tuple[Parts, Node]]] = [[] for _ in shares]
    rest: list[tuple[Parts, Node]] = []
    for item in dirs:
        k = owner.get(id(item[1]), -1)
        (owned[k] if k >= 0 else rest).append(item)
    return owned, rest


def _chunks(jobs: list[Job], costs: list[int], workers: int) -> list[list[Job]]:
    """Contiguous runs of jobs, each costing about ``1 / (2 * workers)`` of what is left
    when it starts, down to ``1 / _SMALLEST`` of the whole (guided self-scheduling): the
    writers finish within about one small chunk of each other, whatever else shares
    their cores.  Equal chunks (six per writer) left the last one taken, 1/12 of the
    work, as the imbalance: 20-30 ms in one run out of two on the bench image, with one
    writer waiting while a hashing helper slowed the other.

    Runs rather than interleaved batches: jobs come in tree order, so writers working
    on different runs mostly create in different directories (both creating in the same
    directory at once queue on its lock)."""
    total = sum(costs)
    smallest = max(1, total // _SMALLEST)
    chunks: list[list[Job]] = []
    chunk: list[Job] = []
    left, cost_so_far = total, 0
    target = max(smallest, left // (2 * workers))
    for job, cost in zip(jobs, costs):
        chunk.append(job)
        cost_so_far += cost
        if cost_so_far >= target:
            chunks.append(chunk)
            left -= cost_so_far
            chunk, cost_so_far = [], 0
            target = max(smallest, left // (2 * workers))
    if chunk:
        chunks.append(chunk)
    return chunks


#: what creating one file costs, in bytes copied (measured on tmpfs: about 7 us, the time
#: to copy 14 KB)
_FILE_COST = 14 << 10


def _os_error(parts: Parts, exc: OSError, doing: str) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"output {show(parts)}: no space left on the device")
    return OutputError(f"output {show(parts)}: cannot {doing}: {exc.strerror}")


def _p(parts: Parts) -> str:
    return join(parts).decode("utf-8", "backslashreplace")


def _sendfile_all(out_fd: int, in_fd: int, offset: int, count: int, parts: Parts) -> None:
    while count > 0:
        try:
            n = os.sendfile(out_fd, in_fd, offset, min(count, 1 << 30))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise OutputError(f"output {show(parts)}: no space left on the device") from None
            raise
        if n == 0:
            raise OutputError(f"output {show(parts)}: source ended early (truncated layer?)")
        offset += n
        count -= n


def write_directory(plan: Plan, dest: str, options: Optional[DirectoryOptions] = None) -> DirResult:
    """Write ``plan`` to ``dest`` atomically; verify the image before the result appears."""
    options = options or DirectoryOptions()
    dest = os.path.abspath(dest)
    partial = begin_directory(dest, force=options.force)
    try:
        root_fd = os.open(partial, _DIR_FLAGS)
        writer = DirectoryWriter(plan, root_fd, options, plan.events)
        writer.free = _free_bytes(partial)
        old_umask = os.umask(0)
        try:
            writer.write()
        finally:
            os.umask(old_umask)
            writer.fds.close()
            os.close(root_fd)
        plan.verify()
        commit(partial, dest)
    except BaseException:
        discard(partial)
        raise
    writer.result.path = dest
    return writer.result


def _free_bytes(path: str) -> Optional[int]:
    """Free space where the output goes: the default --max-size, checked as bytes go."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize

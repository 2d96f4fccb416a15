"""Atomic output: build beside the destination, then swap it in (DESIGN §4).

The work happens in ``OUT.partial-<pid>-<random>`` (mode 0700).  Success renames it over
``OUT`` (an atomic exchange when ``OUT`` already exists); failure or an interrupt removes it
and leaves ``OUT`` as it was.  After a SIGKILL the partial stays; the next run removes
partials whose process is gone.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import Optional

from ..errors import OutputError

PARTIAL = ".partial-"
#: the staging directory of a conversion beside its destination (see converter.staging)
STAGING = ".staging-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def partial_name(dest: str, kind: str = PARTIAL) -> str:
    return f"{dest}{kind}{os.getpid()}-{os.urandom(4).hex()}"


def remove_stale_partials(dest: str) -> list[str]:
    """Remove ``dest.partial-PID-*`` and ``dest.staging-PID-*`` siblings left by dead
    processes of this user."""
    parent = os.path.dirname(os.path.abspath(dest)) or "/"
    prefixes = tuple(os.path.basename(dest) + kind for kind in (PARTIAL, STAGING))
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    me = os.geteuid()
    for name in names:
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        path = os.path.join(parent, name)
        try:
            if os.lstat(path).st_uid != me:
                continue
        except OSError:
            continue
        if _alive(int(pid_text)):
            continue
        remove_path(path)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_path(path: str) -> None:
    """Remove a file or a whole tree without following symlinks, making read-only
    directories writable on the way (an image's 0500 dirs must not block cleanup)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    _remove_tree(path)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove_tree(path: str) -> None:
    """Empty and remove the directory ``path``, depth first, without recursion and with
    one directory fd open at a time: an image may nest directories thousands deep
    (``shutil.rmtree`` recurses, and failed past about 1,000 levels), deeper than the
    fds a process may hold.  Each directory is opened relative to its parent with
    O_NOFOLLOW, and the way back up is its ``..``."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        frames = [("", _empty_but_dirs(fd))]  # (name in the parent, subdirectories left)
        while True:
            name, left = frames[-1]
            if left:
                child = left.pop()
                cfd = _open_dir(fd, child)
                if cfd < 0:
                    continue  # gone, or not a directory any more (removed as such)
                os.close(fd)
                fd = cfd
                frames.append((child, _empty_but_dirs(fd)))
                continue
            frames.pop()
            if not frames:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _empty_but_dirs(fd: int) -> list[str]:
    """Unlink everything in the directory ``fd`` but its subdirectories; return those."""
    try:
        os.fchmod(fd, 0o700)  # (a read-only directory of the image: its entries must go)
    except OSError:
        pass
    dirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                dirs.append(entry.name)
            else:
                try:
                    os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    pass
    return dirs


def _open_dir(parent: int, name: str) -> int:
    """``name`` in ``parent`` opened as a directory (made searchable first if it is not),
    or -1 when it is gone or was replaced by a non-directory, which is then removed."""
    for attempt in (0, 1):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            return -1
        except NotADirectoryError:  # (a symlink, with O_NOFOLLOW: ELOOP is also possible)
            break
        except PermissionError:
            if attempt:
                raise
            # a directory without read or search permission (mode 0 in the image, left
            # so by a run without privileges): chmod the inode itself, reached through an
            # O_PATH fd, never through a name a symlink could take
            path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
            try:
                os.chmod(f"/proc/self/fd/{path_fd}", 0o700)
            finally:
                os.close(path_fd)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            break
    try:
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    return -1


_FD_PATH = re.compile(r"/(?:dev|proc/self|proc/(\d+))/fd/(\d+)")
_STD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def own_fd(dest: str) -> Optional[int]:
    """The number of the open fd ``dest`` names (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``, a shell's ``>(...)``, or a symlink to one of them), else None:
    such a path is written through that fd, as ``-`` is stdout; replacing it would put a
    regular file where /dev/stdout's link was."""
    path = os.path.abspath(dest)
    for _ in range(8):
        if path in _STD_NAMES:
            return _STD_NAMES[path]
        m = _FD_PATH.fullmatch(path)
        if m and (m.group(1) is None or int(m.group(1)) == os.getpid()):
            return int(m.group(2))
        try:
            target = os.readlink(path)
        except OSError:
            return None
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return None


def _stream_node(mode: int) -> bool:
    """A file written into rather than replaced: a character device or a FIFO."""
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def spool_dir_for(dest: str) -> Optional[str]:
    """Where the inflated layers of a conversion to ``dest`` go: beside it (its file
    system has room for the result), unless ``dest`` is written as a stream (``-``, one
    of this process's fds, a device or FIFO: see :func:`stream_destination`; ``/dev/fd``
    is no place for files) or its directory is missing (the system's temp directory
    then; the sink reports the missing directory)."""
    if dest == "-" or own_fd(dest) is not None:
        return None
    try:
        if _stream_node(os.lstat(dest).st_mode):
            return None
    except OSError:
        pass
    parent = os.path.dirname(os.path.abspath(dest))
    return parent if os.path.isdir(parent) else None


def stream_destination(dest: str, *, what: str) -> Optional[int]:
    """An fd to write ``dest`` into as a stream, when it is not a path to replace: one of
    this process's fds (see :func:`own_fd`; dup'ed) or an existing character device or
    FIFO (``/dev/null``, a named pipe: opened for writing, never created, truncated or
    replaced).  None for a path to write atomically.  A block device or a socket is
    refused: a tar is never written over a disk by a mistyped name."""
    fd = own_fd(dest)
    if fd is not None:
        try:
            return os.dup(fd)
        except OSError as exc:
            raise OutputError(f"{what} {dest}: not an open file descriptor here ({exc.strerror})") from None
    try:
        st = os.lstat(dest)
    except OSError:
        return None
    mode = st.st_mode
    if stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        kind = "a block device" if stat.S_ISBLK(mode) else "a socket"
        raise OutputError(f"{what} {dest}: is {kind}; refusing to write over it (use - and redirect, if meant)")
    if not _stream_node(mode):
        return None
    try:
        return os.open(dest, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"{what} {dest}: cannot open for writing: {exc.strerror}") from None


def check_destination(dest: str, *, force: bool, kind: str) -> None:
    """Refuse to replace something the user did not mean to lose."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        raise OutputError(f"{dest}: is a device, FIFO or socket, not a {'directory' if kind == 'dir' else 'file'} "
                          f"(never replaced, even with --force)")
    if stat.S_ISLNK(st.st_mode) and not force:
        try:
            target = os.readlink(dest)
        except OSError:
            target = "?"
        raise OutputError(f"{dest}: is a symbolic link (to {target}); give the path it leads to, "
                          f"or --force to replace the link itself")
    if kind == "dir":
        if stat.S_ISDIR(st.st_mode) and os.path.ismount(dest):
            # (found now, not after the whole conversion when the rename fails with EBUSY)
            raise OutputError(
                f"{dest}: is a mount point, and the result is built beside its destination and renamed into "
                f"place; convert into a directory inside it (-o {os.path.join(dest, 'rootfs')}), or stream it: "
                f"--flatten - | tar -xpf - -C {dest} --numeric-owner --xattrs --xattrs-include='*'")
        if stat.S_ISDIR(st.st_mode):
            if force:
                return
            try:
                empty = not os.listdir(dest)
            except OSError as exc:
                raise OutputError(f"{dest}: cannot read: {exc.strerror}") from None
            if not empty:
                raise OutputError(f"{dest}: exists and is not empty (use --force to replace it)")
            return
        if not force:
            raise OutputError(f"{dest}: exists and is not a directory (use --force to replace it)")
    else:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{dest}: is a directory")
        if not force and stat.S_ISREG(st.st_mode) and st.st_size > 0:
            raise OutputError(f"{dest}: exists (use --force to replace it)")


#: the missing parents of a destination created for its partial (see discard)
_MADE_FOR: dict[str, list[str]] = {}


def ensure_parent(dest: str) -> list[str]:
    """Create the missing parents of ``dest``; return them, outermost first (a failed run
    removes them again: see :func:`discard`)."""
    parent = os.path.dirname(os.path.abspath(dest))
    made = []
    at = parent
    while not os.path.lexists(at):
        made.insert(0, at)
        at = os.path.dirname(at)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        remove_made(made)
        raise OutputError(f"{parent}: cannot create: {exc.strerror}") from None
    return made


def remove_made(made: list[str]) -> None:
    """Remove directories :func:`ensure_parent` created, innermost first, while empty."""
    for path in reversed(made):
        try:
            os.rmdir(path)
        except OSError:
            return


def claim(dest: str, *, force: bool, kind: str) -> str:
    """Check ``dest`` (``kind`` "dir" or "file"), creating its missing parents, clear stale
    partials, and name the partial the output is built in; the caller creates it.  The
    parents made here go again with :func:`discard`, the one way to drop a partial."""
    made = ensure_parent(dest)
    partial = partial_name(dest)
    if made:
        _MADE_FOR[partial] = made
    try:
        check_destination(dest, force=force, kind=kind)
        remove_stale_partials(dest)
    except BaseException:
        discard(partial)
        raise
    return partial


def discard(partial: str) -> None:
    """Remove a partial output after a failure, and the parents created for it."""
    remove_path(partial)
    remove_made(_MADE_FOR.pop(partial, []))


def _renameat2_exchange(a: str, b: str) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


#: set from just before a result is put in place: an interrupt from then on is too late to
#: undo anything (the CLI's handler then lets the run finish and clean up, see cli.run_guarded)
COMMITTED = False


def commit(partial: str, dest: str) -> None:
    """Put ``partial`` at ``dest``.  If ``dest`` exists it is exchanged atomically and the
    old content removed afterwards, so there is no moment without a complete ``dest``."""
    global COMMITTED
    COMMITTED = True  # (before the rename: a signal in between must not report the old state)
    _MADE_FOR.pop(partial, None)
    try:
        if os.path.lexists(dest):
            if _renameat2_exchange(partial, dest):
                remove_path(partial)  # now holds the old content
                return
            old: Optional[str] = f"{dest}.old-{os.getpid()}-{os.urandom(4).hex()}"
            os.rename(dest, old)
            os.rename(partial, dest)
            remove_path(old)
            return
        os.rename(partial, dest)
    except OSError as exc:
        COMMITTED = False
        raise OutputError(f"{dest}: cannot move the result into place: {exc.strerror}") from None


def begin_directory(dest: str, *, force: bool) -> str:
    """Check ``dest``, clear stale partials, and create the private partial directory the
    output is built in (mode 0700); returns its path.  ``dest`` must be absolute."""
    partial = claim(dest, force=force, kind="dir")
    try:
        os.mkdir(partial, 0o700)
    except OSError as exc:
        discard(partial)
        raise OutputError(f"{dest}: cannot create {partial}: {exc.strerror}") from None
    except BaseException:  # (also: interrupted just after creating it; handlers run between bytecodes)
        discard(partial)
        raise
    return partial

"""Atomic output: build beside the destination, then swap it in (DESIGN §4).

The work happens in ``OUT.partial-<pid>-<random>`` (mode 0700).  Success renames it over
``OUT`` (an atomic exchange when ``OUT`` already exists); failure or an interrupt removes it
and leaves ``OUT`` as it was.  After a SIGKILL the partial stays; the next run removes
partials whose process is gone.
"""

from __future__ import annotations

import errno
import os
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
    import shutil

    def fix(func, p, exc):  # type: ignore[no-untyped-def]
        parent = os.path.dirname(p)
        try:
            os.chmod(parent, 0o700)
            os.chmod(p, 0o700, follow_symlinks=False) if os.path.isdir(p) and not os.path.islink(p) else None
        except OSError:
            pass
        try:
            if func in (os.rmdir, os.unlink):
                func(p)
            else:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass

    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    shutil.rmtree(path, onerror=fix)  # fd-based on Linux: never follows symlinks


def check_destination(dest: str, *, force: bool, kind: str) -> None:
    """Refuse to replace something the user did not mean to lose."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if kind == "dir":
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


def ensure_parent(dest: str) -> None:
    parent = os.path.dirname(os.path.abspath(dest))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create: {exc.strerror}") from None


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
    ensure_parent(dest)
    check_destination(dest, force=force, kind="dir")
    remove_stale_partials(dest)
    partial = partial_name(dest)
    try:
        os.mkdir(partial, 0o700)
    except OSError as exc:
        raise OutputError(f"{dest}: cannot create {partial}: {exc.strerror}") from None
    except BaseException:  # interrupted just after creating it (handlers run between bytecodes)
        remove_path(partial)
        raise
    return partial

"""What the forked helpers share: whether to fork at all, dying with the parent, and
errors carried back over a pipe.

Two kinds of helper are forked from the main process: the byte workers that hash and
inflate layers beside the merge (:mod:`converter.workers`) and the directory writers
(:mod:`converter.sinks.directory`).  Both exist for the same reason: the merge and the
writer are Python code holding one GIL, while the cores are free.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
from typing import Any, Callable

from . import errors

#: ``ROOTFS_WRITERS=threads`` runs every helper as a thread instead (slower; for
#: debugging and for platforms without fork).
CAN_FORK = hasattr(os, "fork") and os.environ.get("ROOTFS_WRITERS") != "threads"

#: the signals that interrupt a run (a closed terminal or ssh session sends SIGHUP): the
#: command cleans up and exits 130; forked helpers and writers leave them to it
INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: set by the command's entry point (:func:`converter.command.run_process`), whose process ends as
#: soon as the command has: idle helpers are then told to exit and reaped as it ends,
#: instead of being stopped and waited for at once (see
#: :meth:`converter.workers.Workers.leave`).  Never set for a library caller.
PROCESS_ENDS = False

#: helpers told to exit (see Workers.leave), reaped by :func:`reap_left`
_LEFT: list[int] = []
#: what :func:`reap_left` closes once they are reaped: this process's copies of the big
#: inflated files a helper holds, then that helper's socket (it then exits, last)
_LAST: list[Callable[[], None]] = []


def leave_to_reap(pid: int) -> None:
    _LEFT.append(pid)


def close_last(close: Callable[[], None]) -> None:
    _LAST.append(close)


def reap_left(timeout: float = 2.0) -> None:
    """Reap the helpers told to exit, as the process ends (most have by now), then let
    go of the inflated files the remaining helper frees after this process has gone.

    Left unreaped, each helper would become a zombie of PID 1 once this process exits,
    and an init that never reaps (a Python harness or ``sleep infinity`` as a
    container's PID 1) would collect two a run until the container's pid limit.  The
    order matters: helpers were forked holding copies of the inflated files, and
    whoever drops the last reference frees them (70 ms for 600 MB): the ones reaped
    here drop theirs while this process still holds its own, and the holder is told
    to exit only once this process has closed its copies.  A helper still running
    after ``timeout`` is killed."""
    import time

    deadline = time.monotonic() + timeout
    pause = 0.0002
    while _LEFT:
        pid = _LEFT[0]
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if not done and time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
            done = pid
        if done:
            _LEFT.pop(0)
        else:
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
    while _LAST:
        try:
            _LAST.pop(0)()
        except OSError:
            pass


def end_process(code: int) -> None:
    """Leave with ``code`` after reaping the helpers (see reap_left).  The outcome is
    decided: an interrupt now must not turn a finished run into a failure or leave the
    helpers unreaped, so SIGINT, SIGTERM and SIGHUP wait (and die with the process)."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, set(INTERRUPTS))
    except (AttributeError, OSError, ValueError):
        pass
    reap_left()
    os._exit(code)


def leave_interrupts_to_parent() -> None:  # pragma: no cover - child only
    """In a forked child: leave the interrupts to the parent, whose cleanup stops it."""
    for signum in INTERRUPTS:
        signal.signal(signum, signal.SIG_IGN)


def close_all_but(keep: list[int]) -> None:  # pragma: no cover - child only
    """In a forked child that may outlive the parent: close every descriptor but ``keep``
    (one left holding a pipe would make its reader wait for the child)."""
    low = 0
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def die_with_parent() -> None:  # pragma: no cover - child only
    """A helper must not outlive a killed parent (a writer would keep writing into a
    partial directory the next run is removing)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        os._exit(1)


def keep_freed_memory() -> None:
    """Let freed memory be reused instead of handed back to the kernel (glibc only).

    Inflating allocates a fresh 512 KB buffer per piece; with glibc's defaults such
    buffers are mapped and unmapped (or the heap top trimmed) over and over, and every
    page is faulted in and zeroed again: 15k page faults and 16% of the CPU of a helper
    staging a 325 MB layer, against 2k with these settings (peak RSS unchanged).  Only
    for processes of our own (helpers, the CLI): a library does not tune its caller's
    allocator."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD: buffers below 4 MB come from the heap
        libc.mallopt(-1, 16 << 20)  # M_TRIM_THRESHOLD: keep up to 16 MB free at its top
    except (OSError, AttributeError):
        pass


def _converter_errors() -> dict[str, type[errors.ConverterError]]:
    """Every ConverterError class by name, wherever it is defined (e.g. the tar
    reader's TarFormatError)."""
    found: dict[str, type[errors.ConverterError]] = {}
    todo: list[type[errors.ConverterError]] = [errors.ConverterError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    return {"error": type(exc).__name__, "message": str(exc)}


def error_from_wire(payload: dict[str, Any], default: type[Exception]) -> BaseException:
    """The exception a helper reported, rebuilt as the same class when it is one of ours
    (so the exit code is the same as if the work had run in this process)."""
    name = payload.get("error", "")
    message = str(payload.get("message", ""))
    if name == "KeyboardInterrupt":
        return KeyboardInterrupt()
    if name == "BrokenPipeError":  # (the reader of standard output went away: see cli.run_guarded)
        return BrokenPipeError(errno.EPIPE, message)
    cls = _converter_errors().get(name)
    if cls is not None:
        return cls(message)
    if default is RuntimeError:
        return RuntimeError(f"{name}: {message}")
    return default(message)


def fork_frozen(undo: Callable[[], object]) -> int:
    """``os.fork()`` with the cyclic GC's view of the heap frozen, so the child never
    walks the inherited heap (that would copy every page of it); if the fork fails,
    ``undo`` releases what was made for the child before the error propagates."""
    gc.freeze()
    try:
        return os.fork()
    except OSError:
        undo()
        raise
    finally:
        gc.unfreeze()


def fork_reporting(work: Callable[[], dict[str, Any]], *, ignore_interrupts: bool = False) -> tuple[int, int]:
    """Fork a child that runs ``work`` and reports what it returns (a JSON-able dict), or
    the error that stopped it, through a pipe; return ``(pid, read end)`` for
    :func:`collect_report`.  The child dies with this process, never runs the cyclic GC
    over the inherited heap (that would copy every page of it), and with
    ``ignore_interrupts`` leaves Ctrl-C, SIGTERM and SIGHUP to this process."""
    r, w = os.pipe()
    pid = fork_frozen(undo=lambda: (os.close(r), os.close(w)))
    if pid == 0:  # pragma: no cover - the child; everything goes through the pipe
        code = 1
        try:
            os.close(r)
            gc.disable()
            die_with_parent()
            if ignore_interrupts:
                leave_interrupts_to_parent()
            try:
                report = {"result": work()}
                code = 0
            except BaseException as exc:
                report = error_to_wire(exc)
            data = json.dumps(report).encode()
            while data:
                data = data[os.write(w, data):]
            # the end of the report now: the kernel closes files only after tearing the
            # address space down, 2-4 ms that the parent need not wait for
            os.close(w)
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def collect_report(pid: int, r: int, *, failed: str) -> dict[str, Any]:
    """Wait for a child of :func:`fork_reporting`: what its work returned, or its error
    raised here as the same class; ``failed`` names it when it died without a word.

    When the process ends with the run (:data:`PROCESS_ENDS`), a child that reported
    its result is left to exit on its own and reaped at the end (:func:`reap_left`):
    it has nothing left to do but exit."""
    chunks = []
    try:
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        try:
            report = json.loads(b"".join(chunks)) if chunks else {}
        except ValueError:
            report = {}
        if PROCESS_ENDS and "result" in report:
            leave_to_reap(pid)
            status = 0
        else:
            _, status = os.waitpid(pid, 0)
    if "error" in report:
        raise error_from_wire(report, errors.OutputError)
    if "result" not in report or os.waitstatus_to_exitcode(status) != 0:
        raise errors.OutputError(f"{failed} (status {status})")
    return dict(report["result"])

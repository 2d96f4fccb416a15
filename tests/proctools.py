"""Process checks shared by the tests of helper processes (no helper may outlive a run)."""

from __future__ import annotations

import os


def child_processes(*, zombies: bool = True) -> set[int]:
    """Pids of this process's children, read from /proc (zombies optional: a zombie is a
    child nobody reaped)."""
    me = str(os.getpid())
    kids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and (zombies or fields[0] != "Z"):
                kids.add(int(entry))
    return kids


def fd_targets(pid: int) -> list[str]:
    """What process ``pid``'s descriptors name now (one it closes while they are read, or
    that cannot be read, is left out; a process that is gone raises OSError)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return found


def live_group_members(pgid: int, *, zombies: bool = False) -> list[int]:
    """Processes of the group that are not zombies (an orphaned zombie waits for PID 1 to
    reap it, which a minimal container init may never do: it is not running); with
    ``zombies``, those too."""
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and (zombies or fields[0] not in (b"Z", b"X")):
            live.append(int(entry))
    return live

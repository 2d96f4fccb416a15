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

"""The measuring helper: runs commands for :mod:`bench.run`, reports wall time and peak RSS.

Why a separate process: on Linux a child's ``ru_maxrss`` starts at its parent's
high-water mark (``fork`` copies the memory map with its counters, and ``exec`` records
the peak of the map it replaces; ``vfork`` shares the parent's). Spawned straight from
the bench process, which may just have generated a 1 GB image, every tool would report
at least the bench's own peak. This helper is a fresh ``python -I -S`` importing only
the standard library (about 11 MB), and resets its own peak with
``/proc/self/clear_refs`` before each spawn, so a child's figure is its own peak, or
this floor when that is lower (GNU tar's is; ``rootfs``, being Python, is above it).

Protocol: one JSON request per line on stdin,
``{"commands": [[argv...], ...], "stderr": PATH}``; the commands run in turn (stdin and
stdout on /dev/null, stderr appended to PATH) and are timed as one; one JSON reply per
line on stdout: ``{"seconds": S, "maxrss_kb": K, "status": N, "failed": argv or null}``,
stopping at the first command that fails. Each child is spawned with
:class:`subprocess.Popen` and reaped with :func:`os.wait4` on its pid.

Run it as ``python -I -S bench/spawn.py`` (no package import, to stay small).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux, or not allowed: the floor is then this process's peak


def run(commands: list[list[str]], stderr_path: str) -> dict[str, object]:
    peak = 0
    status = 0
    failed = None
    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out, open(stderr_path, "ab") as err:
        started = time.perf_counter()
        for argv in commands:
            _reset_peak()
            try:
                proc = subprocess.Popen(argv, stdin=null_in, stdout=null_out, stderr=err)
            except OSError as exc:
                err.write(f"{argv[0]}: {exc}\n".encode())
                status, failed = 127, argv
                break
            _, wait_status, usage = os.wait4(proc.pid, 0)
            proc.returncode = status = os.waitstatus_to_exitcode(wait_status)
            peak = max(peak, usage.ru_maxrss)
            if status != 0:
                failed = argv
                break
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "maxrss_kb": peak, "status": status, "failed": failed}


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        reply = run(request["commands"], request["stderr"])
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

"""What the forked helpers share: whether to fork at all, dying with the parent, and
errors carried back over a pipe.

Two kinds of helper are forked from the main process: the byte workers that hash and
inflate layers beside the merge (:mod:`converter.workers`) and the directory writers
(:mod:`converter.sinks.directory`).  Both exist for the same reason: the merge and the
writer are Python code holding one GIL, while the cores are free.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

from . import errors

#: ``ROOTFS_WRITERS=threads`` runs every helper as a thread instead (slower; for
#: debugging and for platforms without fork).
CAN_FORK = hasattr(os, "fork") and os.environ.get("ROOTFS_WRITERS") != "threads"


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


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    return {"error": type(exc).__name__, "message": str(exc)}


def error_from_wire(payload: dict[str, Any], default: type[Exception]) -> BaseException:
    """The exception a helper reported, rebuilt as the same class when it is one of ours
    (so the exit code is the same as if the work had run in this process)."""
    name = payload.get("error", "")
    message = str(payload.get("message", ""))
    if name == "KeyboardInterrupt":
        return KeyboardInterrupt()
    cls: Optional[Any] = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.ConverterError):
        return cls(message)
    if default is RuntimeError:
        return RuntimeError(f"{name}: {message}")
    return default(message)

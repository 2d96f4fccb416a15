"""The ``rootfs`` command's entry point: gives a plain conversion its head start
(:mod:`converter.prestart`) and runs it without the command-line parser
(:func:`converter.command.run_plain`); anything else goes to the typer app."""

from __future__ import annotations

import gc
import os
import sys


def main() -> None:
    gc.disable()  # (first: see converter.command.run_process)
    import signal

    # An ignored SIGCHLD, inherited from whoever started us, would have the kernel reap
    # our helpers and writers itself, and waiting for them would fail
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Started with its error stream closed (2>&-), Python has no sys.stderr: messages
    # would then go to stdout (print's fallback), into a tar written there, and the
    # progress display's isatty() failed as an internal error.  They are dropped; the
    # exit code still tells.
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
    from . import prestart

    try:
        args = sys.argv[1:]
        prestart.start(args)
        plain = prestart.plain_convert(args)
        if plain is not None:
            from .command import OPTION_ENVIRONMENT, run_plain

            if not any(os.environ.get(name) for name in OPTION_ENVIRONMENT):
                run_plain(plain)  # (never returns: it ends the process, as the app does)
        from .cli import main as run

        run()  # (never returns: it ends the process, after closing what a head start opened)
    except KeyboardInterrupt:  # (SIGTERM and SIGHUP too, while a head start is pending: see prestart)
        prestart.discard(leaving=True)
        from .forking import end_process

        end_process(interrupted())


def interrupted() -> int:
    """Say that an interrupt stopped the command, as a command's own handling does (one
    line); the exit code."""
    from .errors import Interrupted

    exc = Interrupted()
    try:
        print(f"rootfs: error: {exc.message}", file=sys.stderr, flush=True)
    except (OSError, AttributeError):  # (stderr closed or gone)
        pass
    return exc.exit_code

"""Start a plain ``rootfs convert SOURCE -o DIR`` (or ``--flatten FILE``) before its
command line is parsed.

Why: importing typer and the command-line module takes about 35 ms of the ~100 ms before
the first layer reaches a helper, and the second core is idle all that while.  So the
entry point (:mod:`converter.entry`) calls :func:`start` first: when the arguments are
the plain form, the image is opened and its layers' helpers started (see
:mod:`converter.opening`) with the options that form implies, and the command line is
parsed while they inflate.

It is only ever a head start: :func:`converter.api.convert` takes it over only when the
options it was really given open the same image, the same layers, the same way
(:func:`take` compares the whole :class:`Key`); anything else, or any error here, and it
is thrown away (:func:`discard`: the helpers stopped, the staging directory removed) and
the conversion opens the image itself, reporting whatever error there is in the usual
way.  Nothing is written where the user will look: only the staging directory, a hidden
sibling of the destination that every exit path removes.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
from typing import Any, Callable, NamedTuple, Optional, Sequence

from .forking import INTERRUPTS

#: options of ``convert`` that change nothing about opening the image and its layers
_FLAGS = frozenset({"-q", "--quiet", "-v", "--verbose", "--debug", "--no-verify"})
#: options that take a value: what the value is
_VALUED = {"-o": "output", "--output": "output", "--flatten": "flatten", "--report": "report"}
#: variables that set options which do change it (the guess is then not made)
_ENVIRONMENT = ("ROOTFS_REF", "ROOTFS_PLATFORM", "ROOTFS_MAX_RATIO", "ROOTFS_MAX_SIZE", "ROOTFS_MAX_ENTRIES",
                "ROOTFS_WRITERS")


class Key(NamedTuple):
    """Everything that decides how an image and its layers are opened."""

    source: str
    ref: Optional[str]
    platform: Optional[str]
    layers: Optional[str]
    skip: tuple[str, ...]
    only: Optional[str]
    verify: bool
    limits: Any  # layerstream.Limits
    spool_dir: Optional[str]
    stage_beside: Optional[str]


class _Early(NamedTuple):
    key: Key
    image: Any  # image.Image
    layers: list  # the chosen layers
    opening: Any  # opening.Opening


#: a head start ready to be taken
_early: Optional[_Early] = None
#: the closers of everything opened for a head start, taken or not (see discard)
_held: list[Callable[[], None]] = []
_starting = False


class Plain(NamedTuple):
    """A plain conversion's arguments: ``output`` is the directory, or the tar with ``flatten``."""

    source: str
    output: str
    verify: bool = True
    flatten: bool = False
    quiet: bool = False
    verbose: int = 0
    debug: bool = False
    report: Optional[str] = None


def plain_convert(args: list[str]) -> Optional[Plain]:
    """The arguments when ``args`` (the command line after the program) is ``convert
    SOURCE -o DIR`` or ``convert SOURCE --flatten FILE`` with only options that do not
    change the opening; else None.  A wrong guess costs only the head start."""
    if not args or args[0] != "convert":
        return None
    source = None
    outputs: dict[str, str] = {}  # option -> value (the last one, as the parser takes)
    verify = True
    quiet = debug = False
    verbose = 0
    rest = iter(args[1:])
    for arg in rest:
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not eq and (arg in _FLAGS or (arg.startswith("-v") and set(arg[1:]) == {"v"})):
            verify = verify and arg != "--no-verify"
            quiet = quiet or arg in ("-q", "--quiet")
            debug = debug or arg == "--debug"
            verbose += 1 if arg == "--verbose" else len(arg) - 1 if arg.startswith("-v") else 0
        elif name in _VALUED:
            if not eq:
                value = next(rest, "")
            if not value:
                return None
            outputs[_VALUED[name]] = value
        elif arg.startswith("-") or source is not None:
            return None
        else:
            source = arg
    report = outputs.pop("report", None)
    if source is None or len(outputs) != 1:
        return None
    (kind, output), = outputs.items()
    return Plain(source, output, verify, kind == "flatten", quiet, verbose, debug, report)


def start(args: list[str]) -> None:
    """Open the image and start its layers when ``args`` is a plain conversion to a new
    directory or tar file (see :func:`plain_convert`).  Never raises for what it finds:
    the conversion proper will find it again and say so."""
    global _early, _starting
    try:
        key = _key(args)
    except Exception:  # noqa: BLE001 - see the docstring
        return
    if key is None:
        return
    previous = {signum: signal.signal(signum, _on_signal) for signum in INTERRUPTS}
    _starting = True
    try:
        _early = _open(key)
    except Exception:  # noqa: BLE001 - see the docstring
        discard(leaving=True)
    finally:
        _starting = False
        if _early is None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _key(args: list[str]) -> Optional[Key]:
    """What a plain conversion's options open, as :func:`converter.api.convert` derives it."""
    plain = plain_convert(args)
    if plain is None or plain.output == "-" or any(os.environ.get(name) for name in _ENVIRONMENT):
        return None
    output = os.path.abspath(plain.output)
    parent, name = os.path.split(output)
    if not name or os.path.lexists(output) or not os.path.isdir(parent):
        return None  # (the usual case is a new file or directory; the rest gets no head start)
    from .layerstream import Limits
    from .sources import parse_spec

    spec = parse_spec(plain.source)
    if spec.transport == "docker" or spec.path == "-" or not _plain_file_or_directory(spec.path):
        return None  # (a registry is a network round trip; a pipe or standard input is read once)
    return opening_key(plain.source, plain.output, flatten=plain.flatten, verify=plain.verify, limits=Limits())


def opening_key(source: str, output: str, *, flatten: bool, verify: bool, limits: Any, ref: Optional[str] = None,
                platform: Any = None, layers: Optional[str] = None, skip: Sequence[str] = (),
                only: Optional[str] = None) -> Key:
    """How a conversion of ``source`` to ``output`` opens its layers (the one derivation,
    for :func:`converter.api.convert` and the head start alike): inflated layers go
    beside the output, and a directory output's big files are staged there."""
    from .sinks.atomic import spool_dir_for

    spool_dir = spool_dir_for(output)
    stage_beside = os.path.abspath(output) if spool_dir is not None and not flatten else None
    return Key(source, ref, platform, layers, tuple(skip), only, verify, limits, spool_dir, stage_beside)


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT and SIGTERM while a head start is pending: an interrupt, so that it is
    cleaned up and reported as the command's own handling does (the command installs
    its own handler once it runs); after that, the default action, as without one."""
    if _early is not None or _starting:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _plain_file_or_directory(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def _open(key: Key) -> _Early:
    """Open what ``key`` describes, as :func:`converter.api.convert` would (the merge
    module is not needed for it, and is imported while the helpers work).  Each thing
    opened is in :data:`_held` as soon as it exists, for :func:`discard`."""
    from .opening import Opening
    from .select import select_layers
    from .sources import open_image

    image = open_image(key.source, ref=key.ref, platform=key.platform)
    _held.append(image.close)
    chosen = select_layers(image, layers=key.layers, skip=key.skip, only=key.only)
    opening = Opening(list(chosen), verify=key.verify, limits=key.limits, spool_dir=key.spool_dir,
                      stage_beside=key.stage_beside)
    _held.append(opening.close)
    if chosen:
        opening.open_ahead(0)  # (the helpers start here)
    return _Early(key, image, chosen, opening)


def take(key: Key) -> Optional[tuple[Any, list, Any]]:
    """``(image, layers, opening)`` started for exactly ``key``, now the caller's to
    close; None (after discarding any other head start) when there is none.  What is
    taken stays in :data:`_held` too: should an interrupt land before the caller has it
    in hand, the command's exit path still closes it (closing twice is harmless)."""
    global _early
    early = _early
    if early is None:
        return None
    if early.key != key:
        discard()
        return None
    _early = None
    return early.image, early.layers, early.opening


def discard(*, leaving: bool = False) -> None:
    """Close everything opened for a head start that is not in use (every exit path of
    the command calls this, ``leaving``).  An interrupt arriving meanwhile waits until
    all is closed: then it is raised, or, ``leaving``, dropped (the command has its
    exit code already)."""
    global _early
    _early = None
    if not _held:
        return
    caught: list[int] = []
    swap = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum))
                for signum in INTERRUPTS} if swap else {}
    try:
        while _held:
            close = _held.pop()
            try:
                close()
            except Exception:  # noqa: BLE001 - closing what is not needed: nothing more to do
                pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught and not leaving:
        raise KeyboardInterrupt

"""``rootfs convert`` without the command-line parser: what the command does once its
options are known, and what every command shares (one-line errors, signal handling, the
end of the process).

Why apart from :mod:`converter.cli`: importing typer takes 20-30 ms of CPU, and the
plain form ``rootfs convert SOURCE -o DIR`` (or ``--flatten FILE``), the one a test suite
or a pipeline runs over and over, needs none of it.  :mod:`converter.entry` recognises
that form (:func:`converter.prestart.plain_convert`) and runs it here
(:func:`run_plain`), through the same :func:`run_convert` the typer command calls, so
both give the same output, report and exit code; anything else goes to the typer app.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from typing import Any, Callable, NamedTuple, NoReturn, Optional

from .forking import INTERRUPTS

state: dict[str, Any] = {"debug": False, "quiet": False, "verbose": 0}


class ConvertArgs(NamedTuple):
    """Every option of ``rootfs convert``, with the command line's defaults (a test keeps
    them equal to the typer command's)."""

    source: str
    output: Optional[str] = None
    flatten: Optional[str] = None
    ref: Optional[str] = None
    platform: Optional[str] = None
    force: bool = False
    no_verify: bool = False
    uid_map: tuple[str, ...] = ()
    gid_map: tuple[str, ...] = ()
    unmapped_id: Optional[int] = None
    subuid: Optional[str] = None
    owner: Optional[str] = None
    reproducible: bool = False
    max_entries: int = 10_000_000
    max_ratio: int = 1000
    max_size: Optional[str] = None
    layers: Optional[str] = None
    skip_layer: tuple[str, ...] = ()
    only_layer: Optional[str] = None
    devices: str = "skip"
    path: tuple[str, ...] = ()
    with_deps: bool = False
    bundle: Optional[str] = None
    cmd: Optional[str] = None
    user: Optional[str] = None
    report: Optional[str] = None
    creds: Optional[str] = None
    authfile: Optional[str] = None
    insecure: bool = False
    cert_dir: Optional[str] = None
    ca_file: Optional[str] = None
    keep_ids: str = "none"
    keep_dirlinks: bool = False
    quiet: bool = False
    verbose: int = 0
    debug: bool = False


#: environment variables the typer command takes options from: with any of them set, the
#: plain form goes through typer (a test keeps this equal to the command's envvars)
OPTION_ENVIRONMENT = ("ROOTFS_REF", "ROOTFS_PLATFORM", "ROOTFS_MAX_ENTRIES", "ROOTFS_MAX_RATIO", "ROOTFS_MAX_SIZE",
                      "ROOTFS_QUIET", "ROOTFS_DEBUG", "ROOTFS_CREDS", "REGISTRY_AUTH_FILE")


def registry_options(creds: Optional[str], authfile: Optional[str], insecure: bool, cert_dir: Optional[str],
                      ca_file: Optional[str], progress: Optional[Callable] = None) -> Any:
    from .registry import RegistryOptions

    def hook(event: str, **info: Any) -> None:
        assert progress is not None
        progress(event, info)

    return RegistryOptions(creds=creds, auth_file=authfile, insecure=insecure, cert_dir=cert_dir, ca_file=ca_file,
                           progress=hook if progress is not None else None)


def _stderr_console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)


def fail(exc: BaseException) -> NoReturn:
    """Print one line for a known error (or a traceback with --debug) and exit."""
    from .errors import ConverterError, Interrupted

    if state["debug"]:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        exc = Interrupted()
    if isinstance(exc, ConverterError):
        print(f"rootfs: error: {exc.message}", file=sys.stderr)
        raise SystemExit(exc.exit_code)
    print(f"rootfs: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
    raise SystemExit(70)


def run_guarded(fn: Callable[[], Any], passthrough: tuple[type[BaseException], ...] = ()) -> Any:
    """Run a command body: SIGTERM and SIGHUP (a closed terminal or ssh session) behave like
    Ctrl-C so cleanup code runs.  Once a result
    has been put in place, both are ignored: the run finishes its cleanup and reports the
    result (an interrupt then could only leave temporary files behind and claim,
    wrongly, that the destination was left as it was)."""
    from .sinks import atomic

    def on_signal(signum: int, frame: Any) -> None:
        if not atomic.COMMITTED:
            raise KeyboardInterrupt

    atomic.COMMITTED = False
    previous = {signum: signal.signal(signum, on_signal) for signum in INTERRUPTS}
    try:
        return fn()
    except SystemExit:
        raise
    except BrokenPipeError:
        # the reader went away (`rootfs ls x | head`): stop quietly, as a pipe-killed tool would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141)
    except BaseException as exc:  # noqa: BLE001 - everything becomes one line + exit code
        if isinstance(exc, passthrough):  # (the command-line parser's own exits)
            raise
        fail(exc)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stdout_like(dest: str) -> bool:
    from .sinks.atomic import own_fd

    return dest == "-" or own_fd(dest) == 1


def _size(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("b").rstrip("i")
    mult = 1
    if t and t[-1] in units:
        mult = units[t[-1]]
        t = t[:-1]
    try:
        return int(float(t) * mult)
    except (ValueError, OverflowError):  # ("inf", "nan", 1e400)
        from .errors import UsageError

        raise UsageError(f"bad size {text!r}: use bytes or a suffix K, M, G, T") from None


def run_convert(a: ConvertArgs) -> None:
    """``rootfs convert`` once its options are known: check them together, convert, write
    the report, print the warnings and the summary.  Errors propagate (run it under
    :func:`run_guarded`)."""
    from .api import convert as do_convert
    from .errors import UsageError
    from .merge import Events

    if sum(x is not None for x in (a.output, a.flatten, a.bundle)) != 1:
        raise UsageError("give exactly one of -o DIR, --flatten FILE or --bundle DIR")
    if a.quiet and a.verbose:
        raise UsageError("-q (only errors) and -v (every decision) contradict each other: give one")
    bundle_args = None
    if a.cmd is not None:
        import shlex

        try:
            bundle_args = shlex.split(a.cmd)
        except ValueError as exc:
            raise UsageError(f"--cmd {a.cmd!r}: {exc}") from None
    if a.devices not in ("skip", "empty"):
        raise UsageError(f"--devices {a.devices!r}: use skip or empty")
    if a.keep_ids not in ("none", "xattr"):
        raise UsageError(f"--keep-ids {a.keep_ids!r}: use none or xattr")
    events = Events()
    if a.verbose:
        events.verbose = lambda what, detail: print(f"  {what}: {detail}", file=sys.stderr)
    if a.report and a.flatten and _stdout_like(a.report) and _stdout_like(a.flatten):
        raise UsageError("--report and --flatten cannot both use standard output")
    # (as gzip and zstd do: binary data is never meant for a terminal)
    if a.flatten == "-" and sys.stdout.isatty():
        raise UsageError("--flatten -: standard output is a terminal; redirect or pipe the tar")
    if a.source == "-" and sys.stdin.isatty():
        raise UsageError("source -: standard input is a terminal; redirect or pipe the image into it")
    report_file = None
    if a.report:
        from .report import ReportFile

        report_file = ReportFile(a.report, force=a.force)  # (a path that cannot take it fails here, before any work)
    progress = Progress(enabled=not a.quiet)
    try:
        result = do_convert(
            a.source, a.output if a.output is not None else (a.flatten if a.flatten is not None else a.bundle),  # type: ignore[arg-type]
            flatten=a.flatten is not None, ref=a.ref, platform=a.platform, force=a.force, verify=not a.no_verify,
            uid_map=a.uid_map, gid_map=a.gid_map, unmapped_id=a.unmapped_id, owner=a.owner, subuid=a.subuid,
            reproducible=a.reproducible, max_entries=a.max_entries, max_ratio=a.max_ratio,
            max_size=_size(a.max_size), devices=a.devices, events=events,
            progress=progress.event if progress.enabled else None,  # (nothing to count for when hidden)
            layers=a.layers, skip_layers=a.skip_layer, only_layer=a.only_layer, keep_ids=a.keep_ids,
            paths=a.path, with_deps=a.with_deps, bundle=a.bundle is not None, bundle_args=bundle_args, bundle_user=a.user,
            keep_dirlinks=a.keep_dirlinks, keep_tree=_KEPT if state.get("exits") else None,
            # only a registry source needs these (importing ssl costs ~10 MB of memory)
            registry_options=registry_options(a.creds, a.authfile, a.insecure, a.cert_dir, a.ca_file, progress.event)
            if a.source.startswith("docker://") else None,
        )
    except BaseException as exc:
        progress.stop()
        if report_file is not None:
            from .errors import ConverterError
            from .report import error_report

            try:
                report_file.write(error_report(exc, spec=a.source, events=events))
            except ConverterError as report_error:  # (the conversion's error is the one to tell)
                print(f"rootfs: warning: {report_error}", file=sys.stderr)
        raise
    progress.stop()
    if report_file is not None:
        from .report import success_report

        report_file.write(success_report(result, spec=a.source))
    if not a.quiet:
        _print_warnings(result.events, a.verbose)
        _summary(result)


class Progress:
    """Per-layer progress on a terminal; silent when stderr is not one."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = None
        self._narrow = False
        self._tasks: dict[int, Any] = {}

    def event(self, kind: str, info: dict) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            from rich.progress import (BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

            console = _stderr_console()
            # binary units, as the summary's; on a narrow terminal (80 columns) fewer
            # columns rather than every number cut to "1.1/1…"
            self._narrow = console.width < 110
            columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"),
                                  BarColumn(bar_width=16 if self._narrow else 40), DownloadColumn(binary_units=True)]
            if not self._narrow:
                columns += [TransferSpeedColumn(), TextColumn("{task.fields[entries]}"), TimeElapsedColumn()]
            else:
                columns += [TextColumn("{task.fields[entries]}")]
            columns.append(TimeRemainingColumn())
            self._progress = Progress(*columns, console=console, transient=True)
            self._progress.start()
        p = self._progress
        layer = info.get("layer", 0)
        if kind == "layer-start":
            label = info["label"].split(" (", 1)[0] if self._narrow else info["label"]  # (no digest when narrow)
            self._tasks[layer] = p.add_task(f"{label} [{info['compression']}]", total=info.get("size"),
                                            entries="0 entries")
        elif kind == "layer-entries" and layer in self._tasks:
            p.update(self._tasks[layer], entries=plural(info["entries"], "entry"), completed=info.get("bytes_in", 0))
        elif kind == "layer-done" and layer in self._tasks:
            task = self._tasks[layer]
            p.update(task, entries=plural(info["entries"], "entry"), completed=p.tasks[task].total or p.tasks[task].completed)
        elif kind == "write-start":
            self._tasks["write"] = p.add_task("writing", total=info["bytes"], entries=plural(info["entries"], "entry"))
        elif kind in ("write-progress", "write-done") and "write" in self._tasks:
            p.update(self._tasks["write"], completed=info["bytes"])
        elif kind in ("blob-start", "blob-exists"):
            digest = info.get("digest", "?")
            size = info.get("size")
            task = p.add_task(f"download {digest[:19]}", total=size, entries="")
            self._tasks[digest] = task
            if kind == "blob-exists":
                p.update(task, completed=size or 0, entries="already present")
        elif kind == "blob-bytes" and info.get("digest") in self._tasks:
            p.advance(self._tasks[info["digest"]], info.get("n", 0))
        elif kind == "blob-done" and info.get("digest") in self._tasks:
            task = self._tasks[info["digest"]]
            p.update(task, completed=p.tasks[task].total or p.tasks[task].completed)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def _tar_size_words(output: str) -> str:
    """What the tar's byte count is: the tar itself, and what a compressed file holds."""
    from .sinks.tar import compression_for

    kind = compression_for(output) if output != "-" else "none"
    if kind == "none" or not os.path.isfile(output):
        return "of tar"
    return f"of tar, {human(os.path.getsize(output))} {kind}-compressed"


def _summary(result: Any) -> None:
    what = {"dir": "directory", "tar": "tar", "bundle": "runtime bundle"}[result.kind]
    ref = f" {result.reference}" if result.reference else ""
    lines = [
        f"converted{ref} ({result.source_format}, {result.platform + ', ' if result.platform else ''}"
        f"{plural(len(result.layers_applied), 'layer')}) to {what} {result.output}",
        f"  {plural(result.entries, 'entry')}, {human(result.bytes)} "
        + (_tar_size_words(result.output) if result.kind == "tar" else "of file contents")
        + ("" if result.verified else "; digests NOT checked (--no-verify)"),
    ]
    if result.warnings:
        lines.append("  warnings: " + ", ".join(f"{k} x{v}" for k, v in sorted(result.warnings.items())))
    print("\n".join(lines), file=sys.stderr)


#: kinds the final summary's count says all about (one line for all devices, not one each)
_SUMMARY_ONLY = {"device-skipped", "device-emptied"}


def _print_warnings(events: Any, verbose: int) -> None:
    """Every warning with -v; otherwise one line per kind with its first example."""
    if events is None or not events.warnings:
        return
    if verbose:
        for w in events.warnings:
            print(f"rootfs: warning: {w.message}", file=sys.stderr)
        return
    first: dict[str, Any] = {}
    for w in events.warnings:
        if w.kind not in _SUMMARY_ONLY:
            first.setdefault(w.kind, w)
    for kind, w in first.items():
        n = events.counts.get(kind, 1)
        more = f" (and {n - 1} more like it)" if n > 1 else ""
        print(f"rootfs: warning: {w.message}{more}", file=sys.stderr)


#: merged views kept until the process exits (see main: never freed node by node; only
#: when main runs, which ends the process: in-process callers free theirs)
_KEPT: list[object] = []


def run_process(run: Callable[[], Any]) -> NoReturn:
    """Run a command (``run`` returns its exit code, or raises SystemExit) as the whole
    process: the interpreter's own teardown (freeing every node of a large plan) is
    skipped once the command has finished and flushed its output."""
    # A short-lived process that frees its objects by reference counting: the cyclic
    # collector only re-walked the imported modules and the merged view (about 10 ms of
    # start-up, more per 10k entries)
    gc.disable()
    from . import forking
    from .forking import keep_freed_memory
    from .entry import interrupted
    from .prestart import discard

    keep_freed_memory()
    state["exits"] = True
    forking.PROCESS_ENDS = True
    try:
        try:
            code = run()
            raise SystemExit(code or 0)
        finally:
            discard(leaving=True)  # what a head start opened and nothing closed (see converter.prestart)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:  # (outside a command's own handling: while parsing, say)
        code = interrupted()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # (None: the fd was closed when the program started)
                stream.flush()
        except BrokenPipeError:
            code = code or 141
        except OSError:  # (a full device: what could not be written has been reported, or cannot be)
            code = code or 8
    forking.end_process(code)


def run_plain(plain: Any) -> NoReturn:
    """Run the plain form (a :class:`converter.prestart.Plain`) without typer."""
    args = ConvertArgs(plain.source, output=None if plain.flatten else plain.output,
                       flatten=plain.output if plain.flatten else None, no_verify=not plain.verify,
                       report=plain.report, quiet=plain.quiet, verbose=plain.verbose, debug=plain.debug)
    state.update(debug=args.debug, quiet=args.quiet, verbose=args.verbose)
    run_process(lambda: run_guarded(lambda: run_convert(args)))

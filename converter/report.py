"""``--report FILE.json``: what a conversion did, for machines (issue 9).

The shape is versioned (``report_version``) and documented in README.md; keys are only
ever added.  It is written on success and on failure (then ``status`` is ``"error"`` and
``error`` says why), so a pipeline always gets a document to look at.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

from . import __version__

REPORT_VERSION = 1


def success_report(result: Any, *, spec: str) -> dict[str, Any]:
    events = result.events
    return {
        "report_version": REPORT_VERSION,
        "tool": f"rootfs {__version__}",
        "status": "ok",
        "source": {
            "spec": spec,
            "format": result.source_format,
            "reference": result.reference,
            "manifest_digest": result.manifest_digest,
            "config_digest": result.config_digest,
            "platform": result.platform,
        },
        "output": {"path": result.output, "kind": result.kind, "entries": result.entries, "bytes": result.bytes},
        "verified": result.verified,
        "layers": [
            {
                "index": st.index + 1,
                "digest": st.digest,
                "diff_id": st.diff_id,
                "compression": st.compression,
                "stored_bytes": st.bytes_in,
                "uncompressed_bytes": st.uncompressed,
                "entries": st.entries,
            }
            for st in result.layers
        ],
        "counts": {"warnings": dict(sorted(result.warnings.items()))},
        "events": [
            {"kind": w.kind, "path": w.path, "layer": None if w.layer is None else w.layer + 1, "message": w.message}
            for w in (events.ordered() if events else [])
        ],
        "error": None,
    }


def error_report(exc: BaseException, *, spec: str, events: Optional[Any] = None) -> dict[str, Any]:
    from .errors import ConverterError

    known = isinstance(exc, ConverterError)
    return {
        "report_version": REPORT_VERSION,
        "tool": f"rootfs {__version__}",
        "status": "error",
        "source": {"spec": spec, "format": None, "reference": None, "manifest_digest": None,
                   "config_digest": None, "platform": None},
        "output": None,
        "verified": None,
        "layers": [],
        "counts": {"warnings": dict(sorted(events.counts.items())) if events else {}},
        "events": [
            {"kind": w.kind, "path": w.path, "layer": None if w.layer is None else w.layer + 1, "message": w.message}
            for w in (events.ordered() if events else [])
        ],
        "error": {
            "kind": exc.kind if known else "internal",  # type: ignore[attr-defined]
            "message": str(exc) if known else f"{type(exc).__name__}: {exc}",
            "exit_code": exc.exit_code if known else 70,  # type: ignore[attr-defined]
        },
    }


class ReportFile:
    """Where ``--report`` goes, claimed before the conversion starts: a path that cannot
    be written is an output error (exit 8) before anything is converted, not a failure
    after the result is in place.  The document is written to ``DEST.tmp-PID``, created
    now, and renamed over ``DEST`` at the end."""

    def __init__(self, dest: str, *, force: bool = False) -> None:
        from .errors import OutputError
        from .sinks.atomic import stream_destination

        self.dest = dest
        self._tmp: Optional[str] = None
        self._fd = -1
        self._stream = -1  # /dev/stderr, a named pipe...: written into, never replaced
        if dest == "-":
            return
        stream = stream_destination(dest, what="--report")
        if stream is not None:
            self._stream = stream
            return
        if os.path.isdir(dest):
            raise OutputError(f"--report {dest}: is a directory")
        if os.path.islink(dest) and not force:
            raise OutputError(f"--report {dest}: is a symbolic link (to {os.readlink(dest)}); give the path it leads "
                              f"to, or --force to replace the link itself")
        tmp = f"{dest}.tmp-{os.getpid()}"
        try:
            self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise OutputError(f"--report {dest}: cannot write: {exc.strerror}") from None
        self._tmp = tmp

    def write(self, doc: dict[str, Any]) -> None:
        from .errors import OutputError

        text = json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
        if self._stream >= 0:
            stream, self._stream = self._stream, -1
            try:
                with os.fdopen(stream, "w", encoding="utf-8") as f:
                    f.write(text)
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise OutputError(f"--report {self.dest}: cannot write: {exc.strerror}") from None
            return
        if self._tmp is None:
            if sys.stdout is None:
                raise OutputError("--report -: standard output is closed")
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise OutputError(f"--report -: cannot write to standard output: {exc.strerror}") from None
            return
        tmp, self._tmp = self._tmp, None
        try:
            with os.fdopen(self._fd, "w", encoding="utf-8") as f:
                self._fd = -1
                f.write(text)
            os.replace(tmp, self.dest)
        except OSError as exc:
            _unlink(tmp)
            raise OutputError(f"--report {self.dest}: cannot write: {exc.strerror}") from None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

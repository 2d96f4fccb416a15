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


def write_report(doc: dict[str, Any], dest: str) -> None:
    text = json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = f"{dest}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, dest)

"""``rootfs inspect``: what an image is, before converting it.

The JSON shape (``--json``) is stable and documented in README.md; keys are only ever
added.  Top level: ``reference``, ``digest`` (manifest digest, when the format has one),
``config_digest``, ``platform``, ``format``, ``source``, ``config`` (entrypoint, cmd, env,
user, workdir, exposed_ports, labels, created, author), ``layers`` (apply order) and
``history``.
"""

from __future__ import annotations

import os
import stat
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional

from .errors import ChoiceNeeded, InputError
from .image import Image, Platform
from .layerstream import LayerReading, Limits, sniff_layer
from .workers import Workers
from .sources import open_image
from .tar.reader import TarReader


@dataclass
class LayerInfo:
    index: int  # 1-based, apply order
    digest: Optional[str]
    diff_id: Optional[str]
    media_type: Optional[str]
    size: Optional[int]  # stored (possibly compressed) bytes
    compression: str  # detected from the bytes
    created_by: Optional[str] = None
    uncompressed_size: Optional[int] = None  # with count_entries
    entries: Optional[int] = None  # with count_entries


@dataclass
class ImageInfo:
    reference: Optional[str]
    digest: Optional[str]
    config_digest: Optional[str]
    platform: Optional[str]
    format: str
    source: str
    config: dict[str, Any]
    layers: list[LayerInfo] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    #: every image the source holds (reference, platform, digest): more than one means
    #: the source needed (or got) a choice
    choices: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _strings(value: Any) -> Optional[list[str]]:
    """A list of strings as the config should hold it (a lone string as one), else None:
    inspect shows what is well-formed and leaves out what is not (a Labels list or an Env
    number had ended in an internal error)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _config_summary(config: dict[str, Any]) -> dict[str, Any]:
    c = config.get("config") if isinstance(config.get("config"), dict) else {}
    ports = c.get("ExposedPorts") if isinstance(c.get("ExposedPorts"), dict) else {}
    labels = c.get("Labels") if isinstance(c.get("Labels"), dict) else {}
    return {
        "entrypoint": _strings(c.get("Entrypoint")),
        "cmd": _strings(c.get("Cmd")),
        "env": _strings(c.get("Env")) or [],
        "user": _text(c.get("User")) or "",
        "workdir": _text(c.get("WorkingDir")) or "",
        "exposed_ports": sorted(str(p) for p in ports),
        "labels": {str(k): v for k, v in labels.items() if isinstance(v, str)},
        "stop_signal": _text(c.get("StopSignal")),
        "created": _text(config.get("created")),
        "author": _text(config.get("author")),
    }


def _history(config: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    hist = config.get("history")
    if not isinstance(hist, list):
        return out
    for h in hist:
        if not isinstance(h, dict):
            continue
        out.append({
            "created": _text(h.get("created")),
            "created_by": _text(h.get("created_by")),
            "comment": _text(h.get("comment")),
            "empty_layer": h.get("empty_layer") is True,
        })
    return out


def describe(image: Image, *, count_entries: bool = False) -> ImageInfo:
    history = _history(image.config)
    non_empty = [h for h in history if not h["empty_layer"]]
    # history entries map onto layers in order only when the counts agree
    created_by = [h.get("created_by") for h in non_empty] if len(non_empty) == len(image.layers) else []
    info = ImageInfo(
        reference=image.reference,
        digest=image.manifest_digest,
        config_digest=image.config_digest,
        platform=str(image.platform) if image.platform else None,
        format=image.format,
        source=image.source,
        config=_config_summary(image.config),
        history=history,
    )
    pool = Workers()
    try:
        for i, layer in enumerate(image.layers):
            if not count_entries:
                kind, stored = sniff_layer(layer)
                info.layers.append(LayerInfo(
                    index=i + 1, digest=layer.digest, diff_id=layer.diff_id, media_type=layer.media_type or None,
                    size=layer.size if layer.size is not None else stored, compression=kind,
                    created_by=created_by[i] if created_by else None,
                ))
                continue
            reading = LayerReading(layer, verify=True, workers=pool, limits=Limits())
            try:
                li = LayerInfo(
                    index=i + 1, digest=layer.digest, diff_id=layer.diff_id, media_type=layer.media_type or None,
                    size=layer.size if layer.size is not None else reading.compressed_size,
                    compression=reading.compression, created_by=created_by[i] if created_by else None,
                )
                if count_entries:
                    reader = TarReader(reading.source, name=layer.label)
                    try:
                        n = sum(1 for _ in reader)
                        reader.finish()
                    except InputError as exc:
                        reading.blame(exc)  # (a corrupt blob is the error to report)
                        raise
                    reading.finish()
                    reading.wait_verified()
                    li.entries = n
                    li.uncompressed_size = reader.offset
            finally:
                reading.close()
            info.layers.append(li)
    finally:
        pool.close()
    return info


def inspect(
    source: str, *, ref: Optional[str] = None, platform: Optional[str | Platform] = None, count_entries: bool = False
) -> ImageInfo:
    """Open ``source`` and describe it (layers are read only with ``count_entries``)."""
    from .sources import list_choices

    with _stdin_readable_twice(source == "-"):  # (the choices, then the image)
        try:
            choices = list_choices(source) if not source.startswith("docker://") else []
        except OSError:
            choices = []  # (open_image says what is wrong with the source)
        try:
            with open_image(source, ref=ref, platform=platform) as image:
                info = describe(image, count_entries=count_entries)
        except ChoiceNeeded as exc:
            exc.choices = choices  # (what to choose from: `rootfs inspect` lists them)
            raise
    info.choices = choices
    return info


@contextmanager
def _stdin_readable_twice(needed: bool) -> Iterator[None]:
    """Standard input, when it is a pipe, copied once into an anonymous file put in its
    place (and put back afterwards): `docker save app | rootfs inspect -` read the pipe
    for the list of images and then found it empty."""
    import shutil
    import tempfile

    fd = sys.stdin.fileno() if needed else -1
    if fd < 0 or stat.S_ISREG(os.fstat(fd).st_mode):
        yield
        return
    saved = os.dup(fd)
    try:
        with tempfile.TemporaryFile(prefix="rootfs-stdin-") as copy:
            with os.fdopen(os.dup(fd), "rb") as src:
                shutil.copyfileobj(src, copy, 1 << 20)
            copy.flush()
            copy.seek(0)
            os.dup2(copy.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)

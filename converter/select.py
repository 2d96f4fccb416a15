"""Which layers a conversion applies (``--layers``, ``--skip-layer``, ``--only-layer``).

Layers are named the way users see them in ``rootfs inspect``: 1-based positions in apply
order, full digests (blob digest or diff_id), or a unique digest prefix.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .errors import NotFoundError, UsageError
from .image import Image, Layer


def describe_layers(image: Image) -> str:
    return "; ".join(f"{layer.index + 1}: {(layer.digest or layer.diff_id or '?')[:19]}" for layer in image.layers)


def find_layer(image: Image, key: str) -> Layer:
    """A layer by 1-based index, digest, diff_id, or unique prefix of either (with or
    without the ``sha256:``)."""
    key = key.strip()
    n = len(image.layers)
    if key.isdigit():
        i = int(key)
        if 1 <= i <= n:
            return image.layers[i - 1]
        raise NotFoundError(f"no layer {i}: the image has {n} layers ({describe_layers(image)})")
    needle = key if ":" in key else None
    hits = []
    for layer in image.layers:
        for d in (layer.digest, layer.diff_id):
            if not d:
                continue
            if (needle and d.startswith(needle)) or (not needle and d.split(":", 1)[-1].startswith(key)):
                hits.append(layer)
                break
    distinct = {id(h) for h in hits}
    if not hits:
        raise NotFoundError(f"no layer matches {key!r} (layers: {describe_layers(image)})")
    if len(distinct) > 1 and len({(h.digest, h.diff_id) for h in hits}) > 1:
        raise UsageError(f"{key!r} matches several layers; give more of the digest (layers: {describe_layers(image)})")
    return hits[0]


def parse_range(text: str, n: int) -> tuple[int, int]:
    """``N`` -> (1, N); ``A..B`` -> (A, B), 1-based inclusive; ``A..`` to the top."""
    t = text.strip()
    try:
        if ".." in t:
            a, _, b = t.partition("..")
            start = int(a) if a else 1
            end = int(b) if b else n
        else:
            start, end = 1, int(t)
    except ValueError:
        raise UsageError(f"--layers {text!r}: use N (the first N layers) or A..B (1-based, inclusive)") from None
    if start < 1 or end < start:
        raise UsageError(f"--layers {text!r}: empty or reversed range")
    if end > n:
        raise NotFoundError(f"--layers {text!r}: the image has only {n} layers")
    return start, end


def _range(text: str, image: Image) -> tuple[int, int]:
    try:
        return parse_range(text, len(image.layers))
    except NotFoundError as exc:
        raise NotFoundError(f"{exc.message} ({describe_layers(image)})") from None


def select_layers(
    image: Image,
    *,
    layers: Optional[str | int] = None,
    skip: Sequence[str] = (),
    only: Optional[str] = None,
) -> list[Layer]:
    """The layers to apply, bottom first.  With no selection: all of them."""
    if only is not None:
        if layers is not None or skip:
            raise UsageError("--only-layer cannot be combined with --layers or --skip-layer")
        return [find_layer(image, only)]
    chosen = list(image.layers)
    if layers is not None:
        start, end = _range(str(layers), image)
        chosen = chosen[start - 1 : end]
    if skip:
        # by position, so that a layer listed twice can be skipped at one place only by index
        drop = set()
        for key in skip:
            layer = find_layer(image, key)
            if key.strip().isdigit():
                drop.add(layer.index)
            else:
                drop.update(l.index for l in image.layers if (l.digest, l.diff_id) == (layer.digest, layer.diff_id))
        chosen = [l for l in chosen if l.index not in drop]
    return chosen

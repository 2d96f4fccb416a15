"""Entry-name normalisation: the one definition of "the same path" (DESIGN §3 rule 7).

Names stay bytes end to end (non-UTF-8 names are legal in layers).  A normalised name is a
tuple of components, none of them empty, ``.`` or ``..``; the root is the empty tuple.
"""

from __future__ import annotations

from .errors import UnsafeEntryError

Parts = tuple[bytes, ...]


def split_name(name: bytes, *, what: str) -> Parts:
    """``./a//b/`` -> ``(b"a", b"b")``; leading ``/`` dropped (the name is taken relative to
    the root).  A ``..`` component is refused rather than clamped: no real builder writes
    one, and clamping would silently put the entry somewhere the archive did not say."""
    # fast path for the usual shapes (``a/b``, ``a/b/``): no component to clean
    # (one split and three tuple scans: a third cheaper than cleaning a copy first)
    parts = tuple(name.rstrip(b"/").split(b"/"))
    if b"" not in parts and b"." not in parts and b".." not in parts and b"\0" not in name:
        return parts
    cleaned = []
    for part in name.split(b"/"):
        if not part or part == b".":
            continue
        if part == b"..":
            raise UnsafeEntryError(f"{what}: name {show(name)} contains '..'")
        if b"\0" in part:
            raise UnsafeEntryError(f"{what}: name {show(name)} contains a NUL byte")
        cleaned.append(part)
    return tuple(cleaned)


def join(parts: Parts) -> bytes:
    return b"/".join(parts)


def show(name: bytes | Parts, limit: int = 160) -> str:
    """A name for a one-line message: printable, quoted, truncated."""
    if isinstance(name, tuple):
        name = join(name) or b"."
    text = name.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"'{text}'"

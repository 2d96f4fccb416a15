"""Owner mapping for user namespaces (``--uid-map C:H:N``, the /etc/subuid form).

Every owner the sinks write goes through :class:`IdMapper` — regular entries, implied
parent directories and the root directory alike — so nothing escapes the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import UsageError, InputError


#: the largest valid uid/gid: (uid_t)-1 means "no change" to chown, so it is never an owner
MAX_ID = (1 << 32) - 2


def check_id(value: int, *, what: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise UsageError(f"{what} {value}: ids must be 0..{MAX_ID}")
    return value


@dataclass(frozen=True)
class IdRange:
    container: int
    host: int
    size: int

    @classmethod
    def parse(cls, text: str, *, what: str = "--uid-map") -> "IdRange":
        try:
            c, h, n = (int(x) for x in text.split(":"))
        except ValueError:
            raise UsageError(f"{what} {text!r}: expected CONTAINER:HOST:SIZE, e.g. 0:100000:65536") from None
        if c < 0 or h < 0 or n <= 0 or c + n > MAX_ID + 1 or h + n > MAX_ID + 1:
            raise UsageError(f"{what} {text!r}: ids must be 0..{MAX_ID} (4294967295 is not an id), size > 0")
        return cls(c, h, n)


@dataclass
class IdMap:
    """One direction's ranges (uid or gid).  Empty means identity."""

    ranges: list[IdRange] = field(default_factory=list)
    unmapped: Optional[int] = None  # --unmapped-id: where ids outside every range go
    kind: str = "uid"

    def __post_init__(self) -> None:
        spans = sorted(self.ranges, key=lambda r: r.container)
        for a, b in zip(spans, spans[1:]):
            if a.container + a.size > b.container:
                raise UsageError(f"--{self.kind}-map ranges overlap: {a.container}:{a.host}:{a.size} and {b.container}:{b.host}:{b.size}")

    def map(self, value: int, *, where: str = "", on_fallback: Optional[Callable[[str, int, str], None]] = None) -> int:
        if not self.ranges:
            return value
        for r in self.ranges:
            if r.container <= value < r.container + r.size:
                return r.host + (value - r.container)
        if self.unmapped is not None:
            if on_fallback is not None:
                on_fallback(self.kind, value, where)
            return self.unmapped
        raise InputError(f"{where}: {self.kind} {value} is outside every --{self.kind}-map range (use --unmapped-id)")


@dataclass
class IdMapper:
    uids: IdMap = field(default_factory=IdMap)
    gids: IdMap = field(default_factory=lambda: IdMap(kind="gid"))
    #: --owner U:G: every entry gets this owner (after which no map applies)
    owner: Optional[tuple[int, int]] = None
    #: told about every id that fell back to --unmapped-id (for the report)
    on_fallback: Optional[Callable[[str, int, str], None]] = None

    @property
    def identity(self) -> bool:
        return self.owner is None and not self.uids.ranges and not self.gids.ranges

    def map(self, uid: int, gid: int, *, where: str) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        return (self.uids.map(uid, where=where, on_fallback=self.on_fallback),
                self.gids.map(gid, where=where, on_fallback=self.on_fallback))


def read_subid_file(path: str, user: str) -> list[IdRange]:
    """Ranges for ``user`` from /etc/subuid or /etc/subgid (``name:start:count`` lines;
    comments and blank lines allowed).  Container ids are assigned from 0 upwards."""
    ranges: list[IdRange] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    next_container = 0
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise InputError(f"{path}:{n}: expected NAME:START:COUNT")
        if parts[0] != user:
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            raise InputError(f"{path}:{n}: START and COUNT must be numbers") from None
        ranges.append(IdRange(next_container, start, count))
        next_container += count
    if not ranges:
        raise UsageError(f"{path}: no ranges for user {user!r}")
    return ranges

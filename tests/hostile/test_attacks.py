"""Confinement (issue 4, point 1): one generator per attack, each run against both sinks
(a directory; a flattened tar, which GNU tar then extracts next to the victim) and as
root and as uid 65534.

Every test asserts the victim tree beside the output is byte-for-byte unchanged and that
the run either failed cleanly (the documented error, one line naming layer and member,
nothing left) or succeeded with the content *inside* the root, at the place asserted.

Attacks are plain data (:class:`Attack`): ``build(ctx)`` returns the layers (bottom
first), ``expect`` says what a correct converter does.  ``ctx.V`` is the victim's
absolute path, so images aim at the real thing; ``../victim`` reaches it from the
output root and from GNU tar's extraction directory alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import pytest

from converter.errors import InputError, UnsafeEntryError
from converter.testing.imagegen import Device, Dir, Fifo, File, Hardlink, Layer, Opaque, Raw, Symlink, Whiteout

from .conftest import (
    PWNED,
    Arena,
    Runner,
    Tree,
    all_in_root,
    assert_clean_failure,
    check_flat_tar,
    extract_flat_tar,
    inroot,
)

SHADOW = b"an in-root copy of the victim's file\n"


@dataclass(frozen=True)
class Ctx:
    V: str  # the victim's absolute path
    privileged: bool


@dataclass(frozen=True)
class Fails:
    """Must be refused: ``error`` (exit code), message naming ``member``."""

    member: Optional[str] = None
    error: type = UnsafeEntryError


@dataclass(frozen=True)
class Lands:
    """Must succeed; ``check`` asserts where the content landed inside the root."""

    check: Callable[[Tree, Ctx], None]


Expect = Union[Fails, Lands]


@dataclass(frozen=True)
class Attack:
    id: str
    build: Callable[[Ctx], list[Layer]]
    expect: Callable[[Ctx], Expect]
    #: GNU tar complaints accepted when extracting the flattened tar (names past PATH_MAX)
    tar_tolerate: tuple[bytes, ...] = ()


ATTACKS: list[Attack] = []


def attack(id: str, expect: Union[Expect, Callable[[Ctx], Expect]], tar_tolerate: tuple[bytes, ...] = ()) -> Callable:
    """Register a generator: ``@attack("name", Fails("member"))`` over ``def build(ctx)``."""

    def register(build: Callable[[Ctx], list[Layer]]) -> Callable:
        exp = expect if callable(expect) and not isinstance(expect, (Fails, Lands)) else (lambda ctx, e=expect: e)
        ATTACKS.append(Attack(id, build, exp, tar_tolerate))
        return build

    return register


def j(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def one(*entries) -> list[Layer]:  # type: ignore[no-untyped-def]
    return [Layer(list(entries))]


# =========================================================================== names

DOTDOT = "../victim/pwned"


@attack("name-dotdot", Fails(DOTDOT))
def _(ctx: Ctx) -> list[Layer]:
    return one(File(DOTDOT, PWNED))


@attack("name-dotdot-inner", Fails("a/../../victim/pwned"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Dir("a/"), File("a/../../victim/pwned", PWNED))


@attack("name-dotdot-to-absolute-victim", Fails("../../../"))
def _(ctx: Ctx) -> list[Layer]:
    return one(File("../" * 12 + inroot(ctx.V) + "/pwned", PWNED))


@attack("name-dotdot-dot-prefixed", Fails("./../victim/pwned"))
def _(ctx: Ctx) -> list[Layer]:
    return one(File("./../victim/pwned", PWNED))


@attack("name-dotdot-directory", Fails("../victim/newdir/"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Dir("../victim/newdir/", mode=0o777))


@attack("name-dotdot-chmod-victim-dir", Fails("../victim"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Dir("../victim/", mode=0o777))


@attack("name-dotdot-symlink", Fails("../victim/evil"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Symlink("../victim/evil", "/etc/shadow"))


@attack("name-dotdot-fifo", Fails("../victim/fifo"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Fifo("../victim/fifo"))


@attack("name-dotdot-device", Fails("../victim/null"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Device("../victim/null", "c", 1, 3))


@attack("name-dotdot-final-component", Fails("victim/.."))
def _(ctx: Ctx) -> list[Layer]:
    return one(Dir("victim/"), Raw(name=b"victim/..", type=b"5", mode=0o777))


@attack("name-dotdot-in-pax-path", Fails(DOTDOT))
def _(ctx: Ctx) -> list[Layer]:
    # the ustar name is harmless; the PAX record overrides it
    return one(Raw(name=b"innocent", pax={"path": DOTDOT}, data=PWNED))


@attack("name-dotdot-in-pax-path-directory", Fails("../victim"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b"innocent/", type=b"5", mode=0o777, pax={"path": "../victim/"}))


@attack("name-dotdot-in-gnu-longname", Fails("../victim/"))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([Raw(name=b"../victim/" + b"p" * 120, data=PWNED)], format="gnu")]


@attack("name-dotdot-in-ustar-prefix", Fails(DOTDOT))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b"pwned", prefix=b"../victim", data=PWNED))


@attack("name-dotdot-in-pax-global-header", Lands(lambda t, c: t.file("innocent", PWNED)))
def _(ctx: Ctx) -> list[Layer]:
    # a 'path' record in a global header is not a name for the entries that follow
    # (Go's archive/tar and the converter ignore it): the entry keeps its own name
    from converter.testing.imagegen import pax_records

    return one(Raw(name=b"pax_global_header", type=b"g", data=pax_records({"path": DOTDOT})), File("innocent", PWNED))


def _absolute_lands(rel: str) -> Callable[[Tree, Ctx], None]:
    def check(t: Tree, ctx: Ctx) -> None:
        t.file(j(inroot(ctx.V), rel), PWNED)

    return check


@attack("name-absolute", Lands(_absolute_lands("pwned")))
def _(ctx: Ctx) -> list[Layer]:
    return one(File(ctx.V + "/pwned", PWNED))


@attack("name-absolute-double-slash", Lands(_absolute_lands("pwned")))
def _(ctx: Ctx) -> list[Layer]:
    return one(File("//" + ctx.V + "//pwned", PWNED))


@attack("name-absolute-in-pax-path", Lands(_absolute_lands("pwned")))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b"innocent", pax={"path": ctx.V + "/pwned"}, data=PWNED))


@attack("name-absolute-in-gnu-longname", Lands(_absolute_lands("p" * 120)))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([Raw(name=(ctx.V + "/" + "p" * 120).encode(), data=PWNED)], format="gnu")]


@attack("name-absolute-in-ustar-prefix", Lands(_absolute_lands("pwned")))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b"pwned", prefix=ctx.V.encode(), data=PWNED))


@attack("name-absolute-overwrite-victim-file", Lands(lambda t, ctx: t.file(j(inroot(ctx.V), "secret"), PWNED)))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=(ctx.V + "/secret").encode(), data=PWNED, mode=0o4777))


@attack("name-absolute-chmod-victim-dir", Lands(lambda t, ctx: t.dir(inroot(ctx.V), 0o777)))
def _(ctx: Ctx) -> list[Layer]:
    return one(Dir(ctx.V + "/", mode=0o777, uid=1234, gid=1234))


def _shadowed_gone(name: str) -> Callable[[Tree, Ctx], None]:
    def check(t: Tree, ctx: Ctx) -> None:
        t.absent(j(inroot(ctx.V), name))
        t.file(j(inroot(ctx.V), "other"), SHADOW)

    return check


@attack("whiteout-absolute-path", Lands(_shadowed_gone("secret")))
def _(ctx: Ctx) -> list[Layer]:
    return [
        Layer([File(ctx.V + "/secret", SHADOW), File(ctx.V + "/other", SHADOW)]),
        Layer([File(ctx.V + "/.wh.secret", b"")]),
    ]


@attack("opaque-absolute-path", Lands(lambda t, ctx: (t.dir(inroot(ctx.V)), t.absent(j(inroot(ctx.V), "secret")))))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([File(ctx.V + "/secret", SHADOW)]), Layer([Opaque(ctx.V)])]


@attack("whiteout-name-dotdot", Fails("../victim/.wh.secret"))
def _(ctx: Ctx) -> list[Layer]:
    return one(File("../victim/.wh.secret", b""))


@attack("opaque-dotdot", Fails("../victim/.wh..wh..opq"))
def _(ctx: Ctx) -> list[Layer]:
    return one(File("../victim/.wh..wh..opq", b""))


@attack("name-nul-byte-in-pax-path", Fails(error=InputError))
def _(ctx: Ctx) -> list[Layer]:
    # PAX may carry any bytes; a NUL would truncate the name at the system call
    return one(Raw(name=b"innocent", pax={b"path": b"ok\x00/../../victim/pwned"}, data=PWNED))


# =========================================================================== symlinks, then through them
#
# A symlink named L is planted (in the same layer before the entry, or in a lower layer),
# then an entry goes *through* it.  The merge must resolve L inside the root: the entry
# lands under `dest`, the in-root place L leads to, and L stays exactly as written.


@dataclass(frozen=True)
class Plant:
    id: str
    links: Callable[[Ctx], list]  # the entries that plant the link(s)
    L: str  # the name to go through
    dest: Optional[Callable[[Ctx], str]]  # in-root directory L resolves to; None: a loop
    target: Optional[Callable[[Ctx], str]] = None  # L's own target, kept verbatim


DEEP = "/".join([".."] * 12)

PLANTS = [
    Plant("abs", lambda c: [Symlink("a", c.V)], "a", lambda c: inroot(c.V), lambda c: c.V),
    Plant("rel", lambda c: [Symlink("a", "../victim")], "a", lambda c: "victim", lambda c: "../victim"),
    Plant("deep", lambda c: [Symlink("a", DEEP + c.V)], "a", lambda c: inroot(c.V), lambda c: DEEP + c.V),
    Plant(
        "chained",
        lambda c: [Symlink("a", "b"), Symlink("b", "/c"), Symlink("c", "../../.." + c.V)],
        "a", lambda c: inroot(c.V), lambda c: "b",
    ),
    Plant("parent", lambda c: [Symlink("a", "..")], "a", lambda c: "", lambda c: ".."),
    Plant("nested", lambda c: [Dir("d/"), Symlink("d/a", "../../victim")], "d/a", lambda c: "victim", lambda c: "../../victim"),
    Plant("loop", lambda c: [Symlink("a", "b"), Symlink("b", "a")], "a", None),
    Plant("self", lambda c: [Symlink("a", "a")], "a", None),
    Plant("chain300", lambda c: [Symlink(f"l{i}", f"l{i + 1}") for i in range(300)] + [Symlink("l300", c.V)], "l0", None),
    Plant("dotdot-loop", lambda c: [Symlink("a", "a/..")], "a", None),
]


@dataclass(frozen=True)
class Op:
    id: str
    entries: Callable[[str], list]  # given L
    member: Callable[[str], str]  # the entry a refusal must name
    check: Callable[[Tree, str, str], None]  # (tree, dest, L)
    shadow: Callable[[str], list] = lambda dest: []  # in-root content below dest, in a lower layer


def _check_keep_link(t: Tree, L: str) -> None:
    t.symlink(L)


OPS = [
    Op("write", lambda L: [File(L + "/pwned", PWNED)], lambda L: L + "/pwned",
       lambda t, d, L: (t.file(j(d, "pwned"), PWNED), _check_keep_link(t, L))),
    Op("overwrite", lambda L: [File(L + "/secret", PWNED, mode=0o4755)], lambda L: L + "/secret",
       lambda t, d, L: t.file(j(d, "secret"), PWNED)),
    Op("mkdir", lambda L: [Dir(L + "/newdir/", mode=0o700)], lambda L: L + "/newdir",
       lambda t, d, L: t.dir(j(d, "newdir"), 0o700)),
    Op("chmod-dir", lambda L: [Dir(L + "/sub/", mode=0o777)], lambda L: L + "/sub",
       lambda t, d, L: t.dir(j(d, "sub"), 0o777)),
    Op("chmod-dir-itself", lambda L: [Dir(L + "/./", mode=0o777)], lambda L: L,
       lambda t, d, L: t.dir(L, 0o777)),  # 'a/./' names a itself: replaces the link
    Op("symlink", lambda L: [Symlink(L + "/evil", "/etc/shadow")], lambda L: L + "/evil",
       lambda t, d, L: t.symlink(j(d, "evil"), "/etc/shadow")),
    Op("hardlink-from", lambda L: [File("x", PWNED), Hardlink(L + "/hl", "x")], lambda L: L + "/hl",
       lambda t, d, L: t.same_inode("x", j(d, "hl"))),
    Op("fifo", lambda L: [Fifo(L + "/fifo")], lambda L: L + "/fifo", lambda t, d, L: t.fifo(j(d, "fifo"))),
    Op("device", lambda L: [Device(L + "/null", "c", 1, 3)], lambda L: L + "/null",
       lambda t, d, L: t.chardev(j(d, "null"), 1, 3)),
    Op("whiteout", lambda L: [Whiteout(L + "/secret")], lambda L: L + "/.wh.secret",
       lambda t, d, L: (t.absent(j(d, "secret")), t.file(j(d, "keep"), SHADOW)),
       shadow=lambda d: [File(j(d, "secret"), SHADOW), File(j(d, "keep"), SHADOW)]),
    Op("whiteout-dir", lambda L: [Whiteout(L + "/sub")], lambda L: L + "/.wh.sub",
       lambda t, d, L: (t.absent(j(d, "sub")), t.file(j(d, "keep"), SHADOW)),
       shadow=lambda d: [File(j(d, "sub/inner"), SHADOW), File(j(d, "keep"), SHADOW)]),
    Op("opaque", lambda L: [Opaque(L)], lambda L: L + "/.wh..wh..opq",
       lambda t, d, L: (t.dir(d) if d else None, t.absent(j(d, "secret"))),
       shadow=lambda d: [File(j(d, "secret"), SHADOW)]),
    Op("hardlink-to", lambda L: [Hardlink("x", L + "/secret")], lambda L: "x",
       lambda t, d, L: (t.same_inode("x", j(d, "secret")), t.file("x", SHADOW)),
       shadow=lambda d: [File(j(d, "secret"), SHADOW)]),
    Op("hardlink-to-missing", lambda L: [Hardlink("x", L + "/secret")], lambda L: "x", None),  # type: ignore[arg-type]
]

# every operation through the two basic plants; a representative set through the others
# (the suite must stay fast: each attack runs 4 times)
_FULL = {"abs", "rel"}
_SOME = {"write", "mkdir", "whiteout", "hardlink-to"}
_LOOP_OPS = {"write", "whiteout", "hardlink-to"}


def _through(plant: Plant, op: Op, planting: str) -> None:
    loop = plant.dest is None

    def build(ctx: Ctx) -> list[Layer]:
        links = plant.links(ctx)
        shadow = [] if loop else op.shadow(plant.dest(ctx))  # type: ignore[misc]
        if planting == "same":
            return ([Layer(shadow)] if shadow else []) + [Layer(links + op.entries(plant.L))]
        return [Layer(shadow + links), Layer(op.entries(plant.L))]

    def expect(ctx: Ctx) -> Expect:
        if loop:
            return Fails(op.member(plant.L))
        if op.id == "hardlink-to-missing":
            return Fails(op.member(plant.L))
        dest = plant.dest(ctx)  # type: ignore[misc]

        def check(t: Tree, ctx: Ctx) -> None:
            op.check(t, dest, plant.L)
            if plant.target is not None and op.id not in ("opaque", "chmod-dir-itself"):
                t.symlink(plant.L, plant.target(ctx))

        return Lands(check)

    ATTACKS.append(Attack(f"through-{plant.id}-{planting}-{op.id}", build, expect))


for _plant in PLANTS:
    for _op in OPS:
        if _plant.id not in _FULL and _op.id not in _SOME:
            continue
        if _plant.dest is None and _op.id not in _LOOP_OPS:
            continue
        for _planting in ("same", "lower"):
            if _plant.id in ("chain300", "dotdot-loop") and _planting == "same":
                continue
            _through(_plant, _op, _planting)


# =========================================================================== landing on a symlink
#
# An entry whose own name is a symlink must replace the link, never follow it.

LINKS = {
    "to-victim-file-abs": lambda c: c.V + "/secret",
    "to-victim-file-rel": lambda c: "../victim/secret",
    "to-victim-dir-abs": lambda c: c.V,
    "to-victim-dir-rel": lambda c: "../victim",
}

REPLACERS: dict[str, tuple[Callable[[], list], Callable[[Tree], None]]] = {
    "file": (lambda: [File("a", PWNED, mode=0o600)], lambda t: t.file("a", PWNED)),
    "file-trailing-slash": (lambda: [File("a/", PWNED)], lambda t: t.file("a", PWNED)),
    "file-dot-suffix": (lambda: [File("./a/.", PWNED)], lambda t: t.file("a", PWNED)),
    "file-in-pax-path": (lambda: [Raw(name=b"innocent", pax={"path": "a"}, data=PWNED, mode=0o4777)],
                         lambda t: t.file("a", PWNED)),
    "empty-file": (lambda: [File("a", b"", mode=0o777)], lambda t: t.file("a", b"")),
    "dir": (lambda: [Dir("a/", mode=0o777)], lambda t: t.dir("a", 0o777)),
    "dir-no-slash": (lambda: [Dir("a", mode=0o777)], lambda t: t.dir("a", 0o777)),
    "dir-then-child": (lambda: [Dir("a/", mode=0o755), File("a/pwned", PWNED)],
                       lambda t: (t.dir("a", 0o755), t.file("a/pwned", PWNED))),
    "hardlink": (lambda: [File("x", PWNED), Hardlink("a", "x")], lambda t: t.same_inode("a", "x")),
    "fifo": (lambda: [Fifo("a", mode=0o666)], lambda t: t.fifo("a")),
    "device": (lambda: [Device("a", "c", 1, 3)], lambda t: t.chardev("a", 1, 3)),
    "symlink": (lambda: [Symlink("a", "elsewhere")], lambda t: t.symlink("a", "elsewhere")),
}

for _link_id, _target in LINKS.items():
    for _rep_id, (_entries, _check) in REPLACERS.items():
        if _link_id in ("to-victim-file-rel", "to-victim-dir-abs") and _rep_id not in ("file", "dir", "dir-then-child"):
            continue
        for _planting in ("same", "lower"):

            def _build(ctx: Ctx, target=_target, entries=_entries, planting=_planting) -> list[Layer]:
                link = [Symlink("a", target(ctx))]
                if planting == "same":
                    return [Layer(link + entries())]
                return [Layer(link), Layer(entries())]

            ATTACKS.append(
                Attack(f"onto-link-{_link_id}-{_planting}-{_rep_id}", _build,
                       lambda ctx, check=_check: Lands(lambda t, c: check(t)))
            )


# =========================================================================== hard links


@attack("hardlink-absolute-target-missing", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Hardlink("x", ctx.V + "/secret"))


@attack("hardlink-absolute-target-in-root", Lands(lambda t, c: (t.same_inode("x", j(inroot(c.V), "secret")), t.file("x", SHADOW))))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([File(ctx.V + "/secret", SHADOW)]), Layer([Hardlink("x", ctx.V + "/secret")])]


@attack("hardlink-absolute-target-same-layer", Lands(lambda t, c: t.same_inode("x", j(inroot(c.V), "secret"))))
def _(ctx: Ctx) -> list[Layer]:
    return one(File(ctx.V + "/secret", SHADOW), Hardlink("x", ctx.V + "/secret"))


@attack("hardlink-dotdot-target", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Hardlink("x", "../victim/secret"))


@attack("hardlink-dotdot-target-deep", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Hardlink("x", "../" * 12 + inroot(ctx.V) + "/secret"))


@attack("hardlink-dotdot-in-pax-linkpath", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(File("ok", b"ok"), Raw(name=b"x", type=b"1", linkname=b"ok", pax={"linkpath": "../victim/secret"}))


@attack("hardlink-dotdot-in-gnu-longlink", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([Raw(name=b"x", type=b"1", linkname=b"../" * 40 + b"victim/secret")], format="gnu")]


@attack("hardlink-dotdot-name", Fails("../victim/hl"))
def _(ctx: Ctx) -> list[Layer]:
    return one(File("x", PWNED), Hardlink("../victim/hl", "x"))


@attack("hardlink-to-directory", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Dir("d/"), Hardlink("x", "d"))


@attack("hardlink-to-directory-lower-layer", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([Dir("d/")]), Layer([Hardlink("x", "d/")])]


@attack("hardlink-to-directory-via-symlink", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Dir("d/sub/"), Symlink("a", "/d"), Hardlink("x", "a/sub"))


@attack("hardlink-to-absolute-victim-dir", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Dir(ctx.V + "/"), Hardlink("x", ctx.V))


@attack("hardlink-to-root", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Hardlink("x", "/"))


@attack("hardlink-to-root-dot", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Hardlink("x", "./"))


@attack("hardlink-to-symlink-to-victim", Lands(lambda t, c: (t.symlink("x", c.V + "/secret"), t.same_inode("x", "l"))))
def _(ctx: Ctx) -> list[Layer]:
    # a link to a symlink links the symlink itself (EDGE-CASES 52), never what it points at
    return one(Symlink("l", ctx.V + "/secret"), Hardlink("x", "l"))


@attack("hardlink-to-symlink-to-victim-then-write", Lands(lambda t, c: (t.file("x", PWNED), t.symlink("l", c.V + "/secret"))))
def _(ctx: Ctx) -> list[Layer]:
    # CVE-2024-12718 shape: a hard link to a symlink, then a regular file over the link name
    return [Layer([Symlink("l", ctx.V + "/secret"), Hardlink("x", "l")]), Layer([File("x", PWNED, mode=0o777)])]


@attack("hardlink-to-whited-out-target", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([File("t", SHADOW)]), Layer([Whiteout("t"), Hardlink("x", "t")])]


@attack("hardlink-self", Fails("'x'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Hardlink("x", "x"))


@attack("hardlink-cycle", Fails())
def _(ctx: Ctx) -> list[Layer]:
    return one(Hardlink("x", "y"), Hardlink("y", "x"))


# =========================================================================== whiteouts


@attack("whiteout-bare", Fails("'.wh.'"))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([File("keep", SHADOW)]), Layer([File(".wh.", b"")])]


@attack("whiteout-dot", Fails("'.wh..'"))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([File("keep", SHADOW)]), Layer([File(".wh..", b"")])]


@attack("whiteout-dotdot", Fails("'.wh...'"))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([File("keep", SHADOW)]), Layer([File(".wh...", b"")])]


@attack("whiteout-bare-in-subdir", Fails("sub/.wh."))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([File("sub/keep", SHADOW)]), Layer([File("sub/.wh.", b"")])]


@attack("whiteout-dotdot-in-subdir", Fails("sub/.wh..."))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([File("sub/keep", SHADOW)]), Layer([File("sub/.wh...", b"")])]


@attack("whiteout-dotdot-as-directory-entry", Fails(".wh..."))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([File("keep", SHADOW)]), Layer([Raw(name=b".wh.../", type=b"5")])]


@attack("whiteout-dotdot-in-pax-path", Fails(".wh..."))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([File("keep", SHADOW)]), Layer([Raw(name=b"innocent", pax={"path": "sub/.wh..."})])]


@attack("whiteout-of-symlink-to-victim", Lands(lambda t, c: (t.absent("a"), t.file("keep", SHADOW))))
def _(ctx: Ctx) -> list[Layer]:
    # removing the link must not remove (or recurse into) what it points at
    return [Layer([Symlink("a", ctx.V), File("keep", SHADOW)]), Layer([Whiteout("a")])]


@attack("whiteout-of-dir-holding-symlink-to-victim", Lands(lambda t, c: (t.absent("d"), t.file("keep", SHADOW))))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([Dir("d/"), Symlink("d/l", ctx.V), Symlink("d/m", "../../victim"), File("keep", SHADOW)]),
            Layer([Whiteout("d")])]


@attack("opaque-root-over-symlink-to-victim", Lands(lambda t, c: (t.absent("a"), t.file("new", PWNED))))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([Symlink("a", ctx.V)]), Layer([Opaque(""), File("new", PWNED)])]


@attack("opaque-dir-holding-symlink-to-victim", Lands(lambda t, c: (t.dir("d"), t.absent("d/l"))))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([Dir("d/"), Symlink("d/l", ctx.V)]), Layer([Opaque("d")])]


@attack("whiteout-victim-names-through-absolute-link-no-shadow", Lands(lambda t, c: t.symlink("a", c.V)))
def _(ctx: Ctx) -> list[Layer]:
    # nothing in the root under the link's in-root target: every whiteout is a no-op
    return [Layer([Symlink("a", ctx.V)]),
            Layer([Whiteout("a/secret"), Whiteout("a/sub"), Whiteout("a/link"), Whiteout("a/hl1"), Opaque("a/empty")])]


# =========================================================================== the root entry


@attack("root-regular-file", Fails("'.'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b".", type=b"0", data=PWNED))


@attack("root-slash-regular-file", Fails("'/'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b"/", type=b"0", data=PWNED))


@attack("root-symlink-to-victim", Fails("'./'"))  # CVE-2021-29136 (umoci)
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b"./", type=b"2", linkname=ctx.V.encode()), File("pwned", PWNED))


@attack("root-symlink-to-parent", Fails("'.'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b".", type=b"2", linkname=b"../victim"), File("pwned", PWNED))


@attack("root-symlink-in-lower-layer", Fails("'./'"))
def _(ctx: Ctx) -> list[Layer]:
    return [Layer([Raw(name=b"./", type=b"2", linkname=ctx.V.encode())]), Layer([File("pwned", PWNED)])]


@attack("root-symlink-double-slash", Fails("'//'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b"//", type=b"2", linkname=ctx.V.encode()), File("pwned", PWNED))


@attack("root-symlink-in-pax-path", Fails("'/'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b"innocent", type=b"2", linkname=ctx.V.encode(), pax={"path": "/"}), File("pwned", PWNED))


@attack("root-hardlink", Fails("'.'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(File("x", PWNED), Raw(name=b".", type=b"1", linkname=b"x"))


@attack("root-fifo", Fails("'./'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b"./", type=b"6"))


@attack("root-device", Fails("'/'"))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b"/", type=b"3", devmajor=1, devminor=3))


@attack("root-directory-is-fine", Lands(lambda t, c: (t.dir(".", 0o750), t.file("f", PWNED))))
def _(ctx: Ctx) -> list[Layer]:
    return one(Raw(name=b"./", type=b"5", mode=0o750), File("f", PWNED))


# =========================================================================== CVE-shaped


def _cve_2025_45582(ctx: Ctx, target: str, compression: str) -> list[Layer]:
    # GNU tar: archive 1 plants the link, archive 2 writes through it (cron job drop)
    return [
        Layer([Symlink("etc", target)], compression=compression),
        Layer([Dir("etc/cron.d/", mode=0o755), File("etc/cron.d/job", PWNED), File("etc/pwned", PWNED)], compression=compression),
    ]


def _cve_45582_check(dest: Callable[[Ctx], str], target: Callable[[Ctx], str]) -> Callable[[Tree, Ctx], None]:
    def check(t: Tree, ctx: Ctx) -> None:
        t.symlink("etc", target(ctx))
        t.file(j(dest(ctx), "cron.d/job"), PWNED)
        t.file(j(dest(ctx), "pwned"), PWNED)

    return check


@attack("cve-2025-45582-absolute-two-layers-gzip", Lands(_cve_45582_check(lambda c: inroot(c.V), lambda c: c.V)))
def _(ctx: Ctx) -> list[Layer]:
    return _cve_2025_45582(ctx, ctx.V, "gzip")


@attack("cve-2025-45582-relative-two-layers-zstd",
        Lands(_cve_45582_check(lambda c: "victim", lambda c: "../" * 5 + "victim")))
def _(ctx: Ctx) -> list[Layer]:
    return _cve_2025_45582(ctx, "../" * 5 + "victim", "zstd")


_STEPS = "abcdefghijklmnop"
_COMP = "d" * 200  # 16 levels of 200+1 bytes: long PAX names, under PATH_MAX for GNU tar


def _cve_4517_layers(ctx: Ctx, final: list, comp: str = _COMP) -> list[Layer]:
    """CVE-2025-4517 / CVE-2024-12718 (CPython tarfile filters): a chain of symlinks to long
    directory names so the resolved path is long, a link at the bottom going back up with
    ``../`` x 16, and ``escape`` climbing past the root through it, then entries through
    ``escape``.  Resolved inside the root, ``escape`` leads to the victim's in-root path."""
    entries: list = []
    path = ""
    for step in _STEPS:
        entries.append(Dir(path + comp + "/"))
        entries.append(Symlink(path + step, comp))
        path += comp + "/"
    linkpath = "/".join(_STEPS) + "/" + "l" * 254
    entries.append(Symlink(linkpath, "../" * len(_STEPS)))
    entries.append(Symlink("escape", linkpath + "/.." * 40 + ctx.V))
    return [Layer(entries), Layer(final)]


@attack("cve-2025-4517-long-path-symlink-escape-write", Lands(lambda t, c: (t.file(j(inroot(c.V), "pwned"), PWNED), t.symlink("escape"))))
def _(ctx: Ctx) -> list[Layer]:
    return _cve_4517_layers(ctx, [File("escape/pwned", PWNED, mode=0o4777), Dir("escape/sub/", mode=0o777)])


@attack("cve-2025-4517-exact-poc-past-path-max",
        Lands(lambda t, c: (t.file(j(inroot(c.V), "pwned"), PWNED), t.symlink("escape"))),
        tar_tolerate=(rb"File name too long", rb"Cannot (open|mkdir|create symlink)"))
def _(ctx: Ctx) -> list[Layer]:
    # the advisory's own sizes: 16 x 247-byte directory names, so resolved paths pass
    # PATH_MAX (which is what defeated os.path.realpath); GNU tar itself cannot extract
    # those names from the flattened tar, and may say so
    return _cve_4517_layers(ctx, [File("escape/pwned", PWNED)], comp="d" * 247)


@attack("cve-2025-4517-long-path-symlink-escape-hardlink", Fails("flaglink"))
def _(ctx: Ctx) -> list[Layer]:
    # the PoC links 'flaglink' to escape/<host file>: nothing in the root has that name
    return _cve_4517_layers(ctx, [Hardlink("flaglink", "escape/secret")])


@attack("cve-2025-4517-long-path-symlink-escape-chmod", Lands(lambda t, c: t.dir(j(inroot(c.V), "sub"), 0o777)))
def _(ctx: Ctx) -> list[Layer]:
    return _cve_4517_layers(ctx, [Dir("escape/sub/", mode=0o777), Dir("escape/", mode=0o777)])


@attack("cve-2021-32760-chmod-through-symlink-then-dir", Lands(lambda t, c: t.dir("etc", 0o777)))
def _(ctx: Ctx) -> list[Layer]:
    # containerd: a symlink to a host file, then an entry with the same name and a new mode
    return [Layer([Symlink("etc", ctx.V + "/ro")]), Layer([Dir("etc/", mode=0o777)])]


@attack("cve-2014-9356-absolute-link-with-dotdot", Lands(lambda t, c: t.file(j(inroot(c.V), "pwned"), PWNED)))
def _(ctx: Ctx) -> list[Layer]:
    # docker: absolute symlink targets with '..' were joined lexically onto the host root
    return one(Symlink("a", "/../../.." + ctx.V), File("a/pwned", PWNED))


@attack("two-step-directory-replaced-by-link", Lands(lambda t, c: (t.symlink("d", c.V), t.file(j(inroot(c.V), "pwned"), PWNED))))
def _(ctx: Ctx) -> list[Layer]:
    # layer 1: d/ is a directory; layer 2: d becomes a link; layer 3 writes d/pwned
    return [Layer([Dir("d/"), File("d/old", SHADOW)]), Layer([Symlink("d", ctx.V)]), Layer([File("d/pwned", PWNED)])]


@attack("symlink-kept-verbatim", Lands(lambda t, c: (t.symlink("lib64", "/usr/lib64"), t.symlink("up", "../../../.."),
                                                     t.symlink("v", c.V), t.symlink("dangling", "nowhere/at/all"))))
def _(ctx: Ctx) -> list[Layer]:
    # legitimate absolute and relative links stay exactly as written (EDGE-CASES 71)
    return one(Symlink("lib64", "/usr/lib64"), Symlink("up", "../../../.."), Symlink("v", ctx.V), Symlink("dangling", "nowhere/at/all"))


# =========================================================================== the test


def test_attack_ids_are_unique() -> None:
    ids = [a.id for a in ATTACKS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.id)
def test_attack(attack: Attack, sink: str, runner: Runner, arena: Arena, gnu_tar: str) -> None:
    ctx = Ctx(arena.V, runner.privileged)
    image = arena.write_image(attack.build(ctx))
    out = arena.out(sink)
    before = arena.snapshot()

    outcome = runner.convert(image, out, flatten=sink == "tar")

    arena.assert_unchanged(before)
    expect = attack.expect(ctx)
    if isinstance(expect, Fails):
        assert_clean_failure(outcome, arena, out, error=expect.error, member=expect.member)
        return
    assert outcome.ok, f"expected success, got {outcome}"
    assert not arena.partials(), arena.partials()
    if sink == "tar":
        check_flat_tar(out)
        root = extract_flat_tar(runner, out, arena, tolerate=attack.tar_tolerate)
        arena.assert_unchanged(before)
    else:
        root = out
    all_in_root(root, arena.victim)
    expect.check(Tree(root, runner.privileged), ctx)


def test_whiteout_named_parent_directory_is_not_emitted(arena: Arena, as_root: Runner) -> None:
    image = arena.write_image([Layer([File("keep", PWNED)]), Layer([Opaque(".wh.a")])])
    res = as_root.convert(image, arena.out_tar, flatten=True)
    assert res.ok or not res.internal, res
    if res.ok:
        check_flat_tar(arena.out_tar)

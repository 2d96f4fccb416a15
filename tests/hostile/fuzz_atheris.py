"""Coverage-guided fuzz target for the converter (issue 4), for atheris / libFuzzer.

Run it (atheris is not a project dependency: ``pip install atheris``)::

    .venv/bin/python tests/hostile/fuzz_atheris.py -runs=100000 -max_len=65536 [CORPUS_DIR]

Each input is split by its first bytes into *how* to use the rest:

* ``0``: the bytes are one uncompressed layer (the tar parser and the merge see them raw);
* ``1``: the same, gzip-compressed (decompression, spooling, streamed parsing);
* ``2``: the bytes are XOR-ed over a valid hostile layer (symlinks to the victim,
  hard links, whiteouts, long names), keeping the tar framing mostly intact;
* ``3``: the bytes replace the image config (JSON handling);
* ``4``: the bytes are a whole docker-save archive.

For every input the image is converted to a directory and to a flattened tar next to a
victim directory, and the two invariants of ``test_fuzz.py`` are checked: only
``ConverterError`` escapes ``convert``, and the victim is byte-for-byte unchanged (a
flattened tar is also checked structurally).  A violation raises, which libFuzzer
reports as a crash with the input saved.

``one_input`` does not need atheris: ``test_fuzz.py`` calls it on seed inputs so the
target keeps working.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so "hostile" imports

from converter import convert  # noqa: E402
from converter.testing.imagegen import (  # noqa: E402
    Dir,
    File,
    Hardlink,
    ImageSpec,
    Layer,
    Symlink,
    Whiteout,
    layer_tar,
    write_docker_archive,
)
from hostile.conftest import (  # noqa: E402
    all_in_root,
    check_flat_tar,
    make_arena,
    outcome_of,
    remove_tree,
)

def cleanup() -> None:
    """Nothing to do: every input's arena is removed when the input is done (libFuzzer
    leaves through exit(), so nothing may be left for the end)."""

#: reported converter bugs that are not new findings (see test_fuzz.KNOWN_BUGS)
KNOWN = (
    ("RecursionError", "recursion"),
    ("ValueError", "Exceeds the limit"),
    ("OverflowError", "id is"),
    ("OverflowError", "timestamp out of range"),
    ("ValueError", "do not fit a ustar header"),
    ("ValueError", "invalid xattr name"),
)


def _hostile_layer(victim: str) -> bytes:
    return layer_tar(Layer([
        Dir("etc/"), File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"), Symlink("abs", victim),
        Symlink("rel", "../victim"), File("abs/pwned", b"x"), Hardlink("hl", "etc/passwd"),
        Whiteout("rel/secret"), File("n" * 150, b"long"),
    ]))


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 5, data[1:]
    arena = make_arena(Path(tempfile.gettempdir()), os.geteuid(), prefix="rootfs-atheris-")
    try:
        image = arena.dir / "image.tar"
        if mode == 0:
            write_docker_archive(image, ImageSpec(layers=[Layer(raw=body)]))
        elif mode == 1:
            write_docker_archive(image, ImageSpec(layers=[Layer(raw=body, compression="gzip")]))
        elif mode == 2:
            base = bytearray(_hostile_layer(arena.V))
            for i, b in enumerate(body[: len(base)]):
                base[i] ^= b
            write_docker_archive(image, ImageSpec(layers=[Layer([File("a", b"a")]), Layer(raw=bytes(base))]))
        elif mode == 3:
            write_docker_archive(image, ImageSpec(layers=[Layer([File("a", b"a")])], config_overrides=body))
        else:
            image.write_bytes(body)
        before = arena.snapshot()
        for sink in ("dir", "tar"):
            out = arena.out(sink)
            res = outcome_of(lambda: convert(str(image), out, flatten=sink == "tar"))
            arena.assert_unchanged(before)
            if res.internal:
                if any(res.error == t and p in res.message for t, p in KNOWN):
                    remove_tree(out)
                    continue
                raise AssertionError(f"{sink}: not a ConverterError:\n{res.traceback}")
            if res.ok:
                if sink == "tar":
                    check_flat_tar(out, allow_wh_dirs=True)
                else:
                    all_in_root(out, arena.victim)
            else:
                assert "\n" not in res.message
                assert not os.path.lexists(out) and not arena.partials()
    finally:
        remove_tree(arena.top)


def main() -> None:
    import atheris  # only needed to drive the fuzzer

    atheris.instrument_all()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

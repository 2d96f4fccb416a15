"""Name normalisation (DESIGN §3 rule 7): ``split_name``'s fast path must give exactly
what the component-by-component definition gives, for every name."""

from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from converter.errors import UnsafeEntryError
from converter.paths import Parts, split_name


def reference(name: bytes) -> Optional[Parts]:
    """The definition: drop empty and ``.`` components; ``..`` or a NUL is refused (None)."""
    parts = []
    for part in name.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b".." or b"\0" in part:
            return None
        parts.append(part)
    return tuple(parts)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"bc", b"/", b".", b"..", b"\0", b".wh.x", b"\xff"]), max_size=8).map(b"".join))
@example(b"")
@example(b"/")
@example(b"./")
@example(b"./a//b/")
@example(b"a/./b")
@example(b"a/.")
@example(b"a/..")
@example(b".a/b.")
@example(b"...")
def test_split_name_agrees_with_the_definition(name: bytes) -> None:
    want = reference(name)
    if want is None:
        with pytest.raises(UnsafeEntryError, match="layer 1: name"):
            split_name(name, what="layer 1")
    else:
        assert split_name(name, what="layer 1") == want

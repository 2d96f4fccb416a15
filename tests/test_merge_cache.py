"""The merge reuses the parents it resolved earlier in a layer (``Merger._dirs``).  That
is only an optimisation: random layers of directories, files, symlinks (relative,
absolute, dangling, looping), hard links, whiteouts and opaque markers over a small set
of names must merge to exactly the tree the merge gives when it resolves every parent
from the root (with and without --keep-dirlinks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from converter import open_image, plan_image
from converter.errors import ConverterError
from converter.listing import format_listing
from converter.merge import Merger
from converter.testing.imagegen import (
    Dir, File, Hardlink, ImageSpec, Layer, Opaque, Symlink, Whiteout, write_docker_archive,
)
from converter.treeview import records_from_plan

NAMES = ["a", "b"]  # few names, so later entries often land on earlier ones
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=2).map("/".join)
targets = st.one_of(paths, paths.map(lambda p: "/" + p), paths.map(lambda p: "../" + p), st.just("."))

files = st.builds(lambda p, d: File(p, d), paths, st.sampled_from([b"", b"x", b"yy"]))
entries = st.one_of(  # weighted: a hard link to a missing name fails the whole image
    paths.map(Dir), paths.map(Dir), files, files, files,
    st.builds(Symlink, paths, targets), st.builds(Symlink, paths, targets),
    st.builds(Hardlink, paths, paths),
    paths.map(Whiteout),
    st.one_of(paths, st.just("")).map(Opaque),
)
layers = st.lists(st.lists(entries, max_size=20), min_size=1, max_size=3)


def _tree(src: Path, keep_dirlinks: bool) -> str:
    """The merged view as a listing, or the error the merge stopped with."""
    try:
        with open_image(str(src)) as img:
            plan = plan_image(img, keep_dirlinks=keep_dirlinks)
            try:
                return format_listing(records_from_plan(plan, hash_files=True))
            finally:
                plan.close()
    except ConverterError as exc:
        return f"error: {exc}"


# a symlink a path went through, replaced later in the same layer by each kind of entry
# that can replace it (the parent resolved through it must not be reused)
_THROUGH = [Dir("a"), Symlink("x", "a"), File("x/f", b"1")]


@example([_THROUGH + [File("x", b"2"), File("x/g", b"3")]])
@example([_THROUGH + [Dir("x"), File("x/g", b"3")]])
@example([[Dir("a/b"), Symlink("x", "a"), File("x/b/f", b"1"), Dir("x"), File("x/b/g", b"3")]])
@example([[File("h", b"h")] + _THROUGH + [Hardlink("x", "h"), File("x/g", b"3")]])
@example([[Dir("a"), Symlink("x", "a")], [File("x/f", b"1"), Whiteout("x"), File("x/g", b"3")]])
@example([[Dir("a/b"), Symlink("x", "a")], [File("x/b/f", b"1"), Opaque("x"), File("x/b/g", b"3")]])
@pytest.mark.parametrize("keep_dirlinks", [False, True])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers)
def test_reusing_resolved_parents_gives_the_tree_resolving_every_parent_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_dirlinks: bool, spec: list[list[Any]]
) -> None:
    src = tmp_path / "image.tar"
    write_docker_archive(src, ImageSpec(layers=[Layer(entries) for entries in spec]))
    cached = _tree(src, keep_dirlinks)

    apply = Merger._apply

    def uncached(self: Merger, entry: Any, deferred: dict) -> Any:
        self._forget_dirs()  # every parent resolved from the root, as without the cache
        return apply(self, entry, deferred)

    with monkeypatch.context() as m:
        m.setattr(Merger, "_apply", uncached)
        assert _tree(src, keep_dirlinks) == cached

"""pytest plugin registered through the ``pytest11`` entry point (fixtures for users' tests).

Installing the package is enough: pytest loads this module in every run, and tests can ask
for two factory fixtures.

``rootfs_image(layers, *, format="docker-archive", compression=None, tag=None, name=None, **image_spec_kwargs) -> Path``
    Builds an image from layer descriptions (lists of ``File``, ``Dir``, ``Symlink``,
    ``Hardlink``, ``Whiteout``, ``Opaque``... or ``Layer`` objects, bottom to top) into the
    test's ``tmp_path`` and returns its path. ``format``: ``"docker-archive"``, ``"oci"``
    (a layout directory) or ``"oci-archive"``. See :func:`converter.testing.build_image`.

``rootfs_tree(image, *, flatten=False, name=None, **convert_kwargs) -> Path``
    Converts ``image`` (a path, a ``transport:path[:ref]`` spec, or layers / an
    ``ImageSpec``, which are first built as a docker-archive) into the test's ``tmp_path``
    and returns the root directory, or with ``flatten=True`` the flattened tar (``name``
    picks the file name, e.g. ``"root.tar.zst"``). ``convert_kwargs`` go to
    :func:`converter.convert`.

Example::

    from converter.testing import Dir, File, Whiteout, listing

    def test_whiteout_hides_lower_file(rootfs_image, rootfs_tree):
        image = rootfs_image([[Dir("etc/"), File("etc/motd", b"hi\\n")], [Whiteout("etc/motd")]])
        root = rootfs_tree(image)
        assert (root / "etc").is_dir() and not (root / "etc/motd").exists()

This module is imported by every pytest run of every user of the package: it imports
nothing heavy at module level (the generator and the converter load inside the fixtures).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pytest


def _unique(base: Path, stem: str, suffix: str, counter: "itertools.count[int]") -> Path:
    base.mkdir(parents=True, exist_ok=True)
    while True:
        candidate = base / f"{stem}-{next(counter)}{suffix}"
        if not os.path.lexists(candidate):
            return candidate


@pytest.fixture
def rootfs_image(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``rootfs_image(layers, *, format="docker-archive", compression=None,
    tag=None, name=None, **image_spec_kwargs) -> Path`` builds an image in ``tmp_path``."""
    from . import build_image

    counter = itertools.count(1)
    suffixes = {"docker-archive": ".tar", "oci": "", "oci-archive": ".tar"}

    def make(
        layers: Any,
        *,
        format: str = "docker-archive",
        compression: Optional[str] = None,
        tag: Optional[str] = None,
        name: Optional[str] = None,
        **image_spec_kwargs: Any,
    ) -> Path:
        if format not in suffixes:
            raise ValueError(f"format {format!r}: use one of {', '.join(suffixes)}")
        images = tmp_path / "images"
        if name is not None:
            images.mkdir(parents=True, exist_ok=True)
            path = images / name
        else:
            path = _unique(images, format, suffixes[format], counter)
        return build_image(path, layers, format=format, compression=compression, tag=tag, **image_spec_kwargs)

    return make


@pytest.fixture
def rootfs_tree(tmp_path: Path, rootfs_image: Callable[..., Path]) -> Callable[..., Path]:
    """Factory: ``rootfs_tree(image, *, flatten=False, name=None, **convert_kwargs) -> Path``
    converts an image (path, spec, layers or ``ImageSpec``) into ``tmp_path``: the root
    directory, or the flattened tar with ``flatten=True``."""
    from . import convert_image

    counter = itertools.count(1)

    def make(
        image: Union[str, "os.PathLike[str]", Any],
        *,
        flatten: bool = False,
        name: Optional[str] = None,
        **convert_kwargs: Any,
    ) -> Path:
        if not isinstance(image, (str, os.PathLike)):
            image = rootfs_image(image)  # layers or an ImageSpec: build a docker-archive first
        trees = tmp_path / "trees"
        if name is not None:
            trees.mkdir(parents=True, exist_ok=True)
            out = trees / name
        else:
            out = _unique(trees, "rootfs", ".tar" if flatten else "", counter)
        return convert_image(image, out, flatten=flatten, **convert_kwargs)

    return make

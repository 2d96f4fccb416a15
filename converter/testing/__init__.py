"""Helpers for test suites: build images from Python descriptions, convert them, list trees.

Everything a test needs, importable from one place::

    from converter.testing import File, Dir, Symlink, Hardlink, Whiteout, Opaque, build_image, listing

* the entry classes of :mod:`converter.testing.imagegen` (``File``, ``Dir``, ``Symlink``,
  ``Hardlink``, ``Whiteout``, ``Opaque``, ``Fifo``, ``Device``, ``Raw``, ``Sparse``),
  ``Layer`` and ``ImageSpec``, and its writers (``write_docker_archive``,
  ``write_oci_layout``, ``write_oci_archive``) for full control over the layout;
* :func:`build_image`: one call from a list of layers to an image on disk;
* :func:`convert_image`: an image to a root directory or a flattened tar;
* :func:`listing`: the canonical, comparable listing of a directory or a tar (the format of
  ``fixtures/real/*.expected.tree``).

pytest users get the same as fixtures (``rootfs_image``, ``rootfs_tree``) from the plugin
the package registers (:mod:`converter.testing.pytest_plugin`).

This module is imported by that plugin in *every* pytest run of every user, so it stays
light: the generator (tarfile, zstandard, ...) and the converter are imported on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .imagegen import (  # noqa: F401
        DELETE,
        FIXED_MTIME,
        BuiltImage,
        Device,
        Dir,
        Entry,
        Fifo,
        File,
        Hardlink,
        ImageSpec,
        Layer,
        Opaque,
        Raw,
        Sparse,
        Symlink,
        Whiteout,
        write_docker_archive,
        write_oci_archive,
        write_oci_layout,
    )

#: Names re-exported (lazily) from :mod:`converter.testing.imagegen`.
_FROM_IMAGEGEN = (
    "File",
    "Dir",
    "Symlink",
    "Hardlink",
    "Whiteout",
    "Opaque",
    "Fifo",
    "Device",
    "Raw",
    "Sparse",
    "Entry",
    "Layer",
    "ImageSpec",
    "BuiltImage",
    "FIXED_MTIME",
    "DELETE",
    "write_docker_archive",
    "write_oci_layout",
    "write_oci_archive",
)

__all__ = [*_FROM_IMAGEGEN, "FORMATS", "build_image", "convert_image", "listing"]

#: Image formats :func:`build_image` writes (the skopeo transport names ``rootfs`` reads).
FORMATS = ("docker-archive", "oci", "oci-archive")

#: Layer compression per format when the layers are given as plain entry lists: what real
#: tools write (``docker save`` stores layers uncompressed, skopeo/podman/buildah gzip).
_DEFAULT_COMPRESSION = {"docker-archive": "none", "oci": "gzip", "oci-archive": "gzip"}


def __getattr__(name: str) -> Any:
    """Import the generator on first use of one of its names."""
    if name in _FROM_IMAGEGEN:
        from . import imagegen

        value = getattr(imagegen, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _make_spec(layers: Any, compression: Optional[str], spec_kwargs: dict[str, Any]) -> Any:
    from .imagegen import ImageSpec, Layer

    if isinstance(layers, ImageSpec):
        if spec_kwargs:
            raise TypeError(f"ImageSpec given: pass {sorted(spec_kwargs)} to ImageSpec itself")
        return layers
    if isinstance(layers, Layer):
        layers = [layers]
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise TypeError(f"layers: expected a list of layers (Layer or list of entries), not {type(layers).__name__}")
    built: list[Any] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, Layer):
            built.append(layer)
        elif isinstance(layer, (list, tuple)):
            built.append(Layer(list(layer), compression=compression or "none"))
        else:
            raise TypeError(
                f"layers[{i}]: expected a Layer or a list of entries (File, Dir, ...), not {type(layer).__name__}"
                " (a flat list of entries is one layer: wrap it in another list)"
            )
    return ImageSpec(layers=built, **spec_kwargs)


def build_image(
    path: Union[str, os.PathLike[str]],
    layers: Any,
    *,
    format: str = "docker-archive",
    compression: Optional[str] = None,
    tag: Optional[str] = None,
    **image_spec_kwargs: Any,
) -> Path:
    """Write an image made of ``layers`` (bottom to top) at ``path`` and return ``path``.

    ``layers`` is a list whose items are ``Layer`` objects or lists of entries (``File``,
    ``Dir``, ``Symlink``, ``Hardlink``, ``Whiteout``, ``Opaque``, ``Fifo``, ``Device``...);
    an ``ImageSpec`` is accepted as well. ``format``: ``"docker-archive"`` (a ``docker save``
    tar, Docker < 25 layout), ``"oci"`` (an OCI image layout directory) or
    ``"oci-archive"`` (a tar of one). ``compression`` (``"none"``, ``"gzip"``, ``"zstd"``,
    ``"xz"``, ``"bzip2"``) applies to the layers given as entry lists (default: none for
    docker-archive, gzip for the OCI formats); ``Layer`` objects keep their own.
    ``tag`` is the ``RepoTags`` entry (docker-archive, e.g. ``"app:1.0"``) or the
    ``org.opencontainers.image.ref.name`` (OCI); default: untagged. Other keyword arguments
    are ``ImageSpec`` fields: ``entrypoint``, ``cmd``, ``env``, ``working_dir``, ``user``,
    ``labels``, ``architecture``, ``variant``, ``history``...

    The same arguments always give the same bytes (fixed mtimes, owners, member order and
    compression settings), so digests can be asserted.
    """
    if format not in FORMATS:
        raise ValueError(f"format {format!r}: use one of {', '.join(FORMATS)}")
    from . import imagegen

    spec = _make_spec(layers, compression or _DEFAULT_COMPRESSION[format], image_spec_kwargs)
    out = Path(path)
    if format == "docker-archive":
        imagegen.write_docker_archive(out, spec, tags=tag)
    elif format == "oci":
        imagegen.write_oci_layout(out, spec, ref=tag)
    else:
        imagegen.write_oci_archive(out, spec, ref=tag)
    return out


def convert_image(
    image: Union[str, os.PathLike[str]],
    output: Union[str, os.PathLike[str]],
    *,
    flatten: bool = False,
    **convert_kwargs: Any,
) -> Path:
    """Convert ``image`` (a path or a ``transport:path[:ref]`` spec) to the directory
    ``output`` or, with ``flatten=True``, to the tar ``output`` (``.gz``/``.zst``/``.xz``
    compress); return ``output``. ``convert_kwargs`` go to :func:`converter.convert`
    (``platform``, ``ref``, ``layers``, ``uid_map``, ``source_date_epoch``, ``force``...)."""
    from ..api import convert

    convert(os.fspath(image), output, flatten=flatten, **convert_kwargs)
    return Path(output)


def listing(path: Union[str, os.PathLike[str]], *, hash_files: bool = True) -> str:
    """The canonical listing of a root directory or a (flattened, possibly compressed) tar:
    one line per entry below the root, sorted by raw path bytes, eight TAB-separated
    columns ``path type mode uid:gid size sha256|->target|major:minor hardlink xattrs``
    (specified in ``fixtures/real/README.md``). Equal listings mean equal trees."""
    from ..listing import list_directory, list_tar

    if Path(path).is_dir():
        return list_directory(path, hash_files=hash_files)
    with open(path, "rb") as f:
        if f.read(4) != b"\x28\xb5\x2f\xfd":  # not zstd: tarfile reads plain, gzip, xz, bzip2
            return list_tar(path)
        import zstandard

        f.seek(0)
        with zstandard.ZstdDecompressor().stream_reader(f) as stream:
            return list_tar(stream)

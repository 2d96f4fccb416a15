"""Tar reading and writing: the project's own header parser and PAX header writer.

The rest of the converter only sees :class:`TarReader` / :class:`TarEntry` and
:func:`build_header`; which parser runs is this package's business (DESIGN §6).
"""

from .reader import (
    ByteSource,
    FileSource,
    StreamSource,
    TarEntry,
    TarFormatError,
    TarLimits,
    TarReader,
    show_name,
)
from .writer import END_OF_ARCHIVE, build_header, padding

__all__ = [
    "END_OF_ARCHIVE",
    "ByteSource",
    "FileSource",
    "StreamSource",
    "TarEntry",
    "TarFormatError",
    "TarLimits",
    "TarReader",
    "build_header",
    "padding",
    "show_name",
]

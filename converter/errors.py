"""One exception hierarchy, so the CLI can map every failure to a documented exit code.

Every error the tool raises on purpose derives from :class:`ConverterError`.  Anything else
escaping is a bug (the CLI prints it as an internal error with exit code 70).  Messages are
written to be printed as one line: they name the file, layer or member concerned.
"""

from __future__ import annotations


class ConverterError(Exception):
    """Base class: a failure we understand and can explain in one line."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ConverterError):
    """The command line or API call asks for something impossible (bad option, bad ref)."""

    exit_code = 2
    kind = "usage"


class ChoiceNeeded(UsageError):
    """The source holds several images and nothing says which one (`rootfs inspect` lists
    them instead of failing: :func:`converter.inspect.inspect` sets ``choices``)."""

    choices: list = []


class InputError(ConverterError):
    """The input is malformed: bad JSON, missing fields, unknown format or compression."""

    exit_code = 3
    kind = "bad-input"


class NotFoundError(InputError):
    """Something the input refers to is missing: a blob, a tag, a platform, a layer."""

    exit_code = 4
    kind = "not-found"


class IntegrityError(InputError):
    """Bytes do not match what the image promised: digest, size, diff_id, truncation."""

    exit_code = 5
    kind = "integrity"


class UnsafeEntryError(InputError):
    """A layer entry tries something forbidden: escaping the root, a non-directory root,
    a hard link to a directory or to nothing, a symlink loop."""

    exit_code = 6
    kind = "unsafe-entry"


class LimitError(InputError):
    """A resource limit was hit: decompression bomb, too many entries, output too large."""

    exit_code = 7
    kind = "limit"


class OutputError(ConverterError):
    """The destination cannot be written: exists and is not empty, I/O error, no space."""

    exit_code = 8
    kind = "output"


class RegistryError(ConverterError):
    """The registry refused or failed: auth, network, HTTP status."""

    exit_code = 9
    kind = "registry"


class Interrupted(ConverterError):
    """SIGINT, SIGTERM or SIGHUP arrived; the destination was left as it was."""

    exit_code = 130
    kind = "interrupted"

    def __init__(self, message: str = "interrupted; the destination was left as it was") -> None:
        super().__init__(message)


#: Documented in the README; the CLI is the only user.  Keep in sync with the classes above.
EXIT_CODES: dict[int, str] = {
    0: "success (for `rootfs diff`: the two trees are identical)",
    1: "`rootfs diff`: the trees differ; otherwise a generic failure",
    2: "usage error: bad option, bad reference, ambiguous selection",
    3: "bad input: malformed archive, JSON, manifest, unknown compression or format",
    4: "not found: missing blob, tag, platform, layer or path",
    5: "integrity: digest, size or diff_id mismatch, truncated data",
    6: "unsafe entry: path escape, non-directory root, bad hard link, symlink loop",
    7: "limit exceeded: decompression bomb, too many entries, --max-size",
    8: "output error: destination not empty (use --force), I/O error, no space",
    9: "registry error: authentication, HTTP or network failure",
    70: "internal error (a bug: please report it with --debug output)",
    130: "interrupted (SIGINT/SIGTERM/SIGHUP); the destination is untouched",
}

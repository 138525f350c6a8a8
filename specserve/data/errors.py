"""Typed errors of the data pipeline. Each names the file and line, the field, or the setting at fault."""

from __future__ import annotations

from specserve.errors import SpecServeError


class DataFormatError(SpecServeError, ValueError):
    """A data row is malformed. `path` and `line` (1-based) locate it."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.reason = path, line, message


class ResumeMismatchError(SpecServeError):
    """A resumable output exists but was written from another input or with other settings."""


class CacheMismatchError(SpecServeError):
    """A feature cache was built for another target, tap set or tokenizer. `field` names the difference."""

    def __init__(self, field: str, expected, found):
        super().__init__(f"feature cache {field} mismatch: the cache has {found!r}, this run needs {expected!r}; "
                         f"rebuild the cache with `specserve data cache` for this target")
        self.field, self.expected, self.found = field, expected, found


class CacheFormatError(SpecServeError):
    """A feature cache folder is incomplete, corrupt, or of an unknown format version."""


class RegenerationError(SpecServeError):
    """The engine failed a regeneration request (the row is not written; the run can be resumed)."""

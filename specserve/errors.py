"""Typed errors. Every message names the offending field or value, so a user can fix it."""

from __future__ import annotations


class SpecServeError(Exception):
    """Base class of every error specserve raises on purpose."""


class InvalidRequestError(SpecServeError, ValueError):
    """A request parameter is out of range or malformed. `field` names it (HTTP 400 at the gateway)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class ContextLengthError(InvalidRequestError):
    """The prompt (or prompt + requested tokens) does not fit the model's context window."""


class ModelLoadError(SpecServeError):
    """A model or tokenizer could not be found or loaded from the given path or hub id."""


class IncompatibleDrafterError(SpecServeError):
    """A drafter does not fit the target (vocabulary, hidden size, taps, mask token ...)."""


class SessionError(SpecServeError):
    """A session id is unknown, already open, or a call carried a stale `committed_len`."""

"""Per-session committed-token bookkeeping shared by drafters (rollback = truncate, then append)."""

from __future__ import annotations

from specserve.errors import SessionError


class SessionTokens:
    """The committed tokens of every open session, as the engine last reported them."""

    def __init__(self):
        self._tokens: dict[str, list[int]] = {}

    def open(self, session: str, token_ids: list[int]) -> None:
        if session in self._tokens:
            raise SessionError(f"session {session!r} is already open")
        self._tokens[session] = list(token_ids)

    def close(self, session: str) -> None:
        self._tokens.pop(session, None)

    def commit(self, session: str, new_ids: list[int], committed_len: int) -> list[int]:
        """Roll back to `committed_len - len(new_ids)`, append `new_ids`; returns the session's tokens."""
        try:
            tokens = self._tokens[session]
        except KeyError:
            raise SessionError(f"unknown session {session!r}") from None
        base = committed_len - len(new_ids)
        if not 0 <= base <= len(tokens):
            raise SessionError(f"session {session!r}: committed_len {committed_len} with {len(new_ids)} new "
                               f"tokens does not extend the {len(tokens)} tokens held")
        del tokens[base:]
        tokens.extend(new_ids)
        return tokens

    def __contains__(self, session: str) -> bool:
        return session in self._tokens

"""Session leases with TTL eviction and the last-result cache that makes retried calls idempotent.

Every session a server holds has a lease renewed by each call that touches it; a session whose
caller disappeared (gateway crash, lost close) is evicted after `ttl_s` idle seconds. Each session
also remembers the result of its last state-changing call, keyed by the call's kind, `committed_len`
and a fingerprint of its content: a retry of that call (the response was lost, the deadline hit after
the server had finished) is answered from the cache instead of being applied twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Lease:
    """One session's lease and its last result."""

    last_used: float
    kind: str = ""  # the call that produced `result` ("open", "verify", "propose")
    key: int = -1  # that call's committed_len
    fingerprint: bytes = b""
    result: object = None


class LeaseTable:
    """The leases of one server's sessions. Not thread-safe: a server touches it from its model thread."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.ttl_s = ttl_s
        self._clock = clock
        self._leases: dict[str, Lease] = {}

    def __contains__(self, session: str) -> bool:
        return session in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def open(self, session: str) -> None:
        self._leases[session] = Lease(self._clock())

    def close(self, session: str) -> None:
        self._leases.pop(session, None)

    def touch(self, session: str) -> None:
        self._leases[session].last_used = self._clock()

    def replay(self, session: str, kind: str, key: int, fingerprint: bytes) -> object | None:
        """The cached result when this call repeats the session's last call verbatim, else None."""
        lease = self._leases.get(session)
        if lease is None or (lease.kind, lease.key, lease.fingerprint) != (kind, key, fingerprint):
            return None
        lease.last_used = self._clock()
        return lease.result

    def remember(self, session: str, kind: str, key: int, fingerprint: bytes, result: object) -> None:
        """Record a served call's result (and renew the lease)."""
        lease = self._leases[session]
        lease.last_used = self._clock()
        lease.kind, lease.key, lease.fingerprint, lease.result = kind, key, fingerprint, result

    def expired(self) -> list[str]:
        """Sessions idle for longer than the TTL."""
        deadline = self._clock() - self.ttl_s
        return [s for s, lease in self._leases.items() if lease.last_used < deadline]

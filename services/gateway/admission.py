"""Bounded admission (429 beyond the limit) and cancellation of non-streaming requests on disconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from services.common.errors import APIError

T = TypeVar("T")


class Admission:
    """At most `limit` engine requests inside the gateway at once (queued in the engine + running).

    A request with `n` choices takes `n` slots, all or nothing, before anything reaches the engine, so a
    request is either refused at once with 429 + `Retry-After` or admitted with room to be served. All
    calls happen on the event loop's thread, so a plain counter is race-free.
    """

    def __init__(self, limit: int, retry_after_s: int):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    def reserve(self, n: int) -> Reservation:
        """Take `n` slots or raise a 429 APIError."""
        if self.in_flight + n > self.limit:
            raise APIError(429, f"the server is at capacity ({self.in_flight} of {self.limit} requests in "
                                f"flight); retry after {self.retry_after_s}s", None, "queue_full",
                           headers={"Retry-After": str(self.retry_after_s)})
        self.in_flight += n
        return Reservation(self, n)


class Reservation:
    """Slots held by one HTTP request; `release` is idempotent so every exit path may call it."""

    def __init__(self, admission: Admission, n: int):
        self._admission, self._n = admission, n

    def release(self) -> None:
        """Give the slots back (once)."""
        if self._n:
            self._admission.in_flight -= self._n
            self._n = 0


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def with_cancellation(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work` until it finishes or the client disconnects; on disconnect cancel it and return None.

    Why not poll `request.is_disconnected()`: it only peeks at a message that is already waiting, so
    it needs a polling loop next to the work, and behind `BaseHTTPMiddleware` it never sees the
    disconnect at all. Instead this does what Starlette's `StreamingResponse` does: one task waits
    for the `http.disconnect` message while another does the work, and whichever ends first cancels
    the other. Cancelling the work closes the engine streams it iterates, which aborts the engine
    requests and frees their verifier and drafter sessions.

    Only safe once the body has been read (FastAPI has parsed it into the request model by the time
    the endpoint runs): the watcher consumes and discards every later message of the request.
    """
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work_task.done():  # disconnected, or this handler itself was cancelled
            work_task.cancel()
            await asyncio.gather(work_task, return_exceptions=True)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    if work_task.cancelled():
        return None
    return work_task.result()

"""Run a SpecEngine on a background thread and stream each request's deltas as an async iterator.

The engine loop is synchronous torch code; running it on its own thread keeps the event loop (the
gateway's) responsive, and torch releases the GIL inside its kernels. Deltas cross back into the
event loop with `call_soon_threadsafe`. Leaving the iterator early (a client disconnect, a cancelled
task) aborts the request, so its sessions are freed at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence

from specserve.decoding.sampling import SamplingParams
from specserve.engine.engine import SpecEngine
from specserve.engine.request import RequestOutput

log = logging.getLogger(__name__)


class AsyncSpecEngine:
    """Owns the engine thread. Use `start()` / `stop()` (or `async with`)."""

    def __init__(self, engine: SpecEngine, idle_wait_s: float = 0.05):
        self.engine = engine
        self._idle_wait_s = idle_wait_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="specserve-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def is_alive(self) -> bool:
        """Whether the engine thread runs (for liveness probes)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()

    async def __aenter__(self):
        self.start()
        return self

    async def __aexit__(self, *exc):
        await asyncio.to_thread(self.stop)

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield the request's deltas until it finishes. Validation errors raise before anything runs."""
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[RequestOutput] = asyncio.Queue()
        request = self.engine.add_request(prompt_ids, params, request_id,
                                          on_output=lambda out: loop.call_soon_threadsafe(deltas.put_nowait, out))
        self._wake.set()
        finished = False
        try:
            while not finished:
                out = await deltas.get()
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.engine.abort(request.id)
                self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self.engine.has_unfinished():
                self._wake.wait(self._idle_wait_s)
                self._wake.clear()
                continue
            try:
                self.engine.step()
            except Exception:  # the step isolates request failures; this is a last line of defence
                log.exception("engine step failed")

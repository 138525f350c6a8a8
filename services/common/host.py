"""The grpc.aio lifecycle shared by the drafter and verifier servers.

A model server has one model thread: every RPC that touches the model or the session state runs on a
single-worker executor, so the (not thread-safe) model, KV caches and leases need no locks and the
event loop stays free for health checks and load reports. Graceful shutdown: health goes NOT_SERVING
(and Open is refused, so clients place new sessions elsewhere), in-flight calls drain, the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from services.common.leases import LeaseTable
from services.common.settings import ServerSettings
from services.common.transport import message_options

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelServer:
    """Base of the model servers: health, reflection, leases swept by TTL, one model thread, draining.

    Subclasses set `service_name`, register their servicer in `add_servicer`, drop a session's model
    state in `drop_session`, and may do start-up work (SPS profiling) in `prepare`.
    """

    service_name = ""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.sessions = LeaseTable(settings.lease_ttl_s)
        self.draining = False
        self.queue_depth = 0  # calls waiting for the model thread
        self.port: int | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"{type(self).__name__}-model")
        self._server: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self._sweeper: asyncio.Task | None = None

    # ---- subclass hooks -------------------------------------------------------------------------
    def add_servicer(self, server: grpc.aio.Server) -> None:
        raise NotImplementedError

    def drop_session(self, session: str) -> None:
        """Free a session's model state (called on the model thread)."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Start-up work before the port opens."""

    # ---- running work on the model thread -------------------------------------------------------
    async def on_model_thread(self, fn: Callable[..., T], *args) -> T:
        """Run `fn(*args)` on the model thread; while it waits it counts toward `queue_depth`."""
        self.queue_depth += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        finally:
            self.queue_depth -= 1

    def close_sessions(self, sessions) -> None:
        """Close sessions (model state and lease); unknown ones are ignored. Model thread only."""
        for session in sessions:
            if session in self.sessions:
                self.drop_session(session)
                self.sessions.close(session)

    def evict_idle(self) -> list[str]:
        """Close every session whose lease expired. Model thread only."""
        idle = self.sessions.expired()
        if idle:
            log.info("evicting %d idle sessions (lease %.1fs): %s", len(idle), self.sessions.ttl_s, idle[:8])
            self.close_sessions(idle)
        return idle

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> int:
        """Prepare, bind, start serving; returns the bound port."""
        await self.prepare()
        server = grpc.aio.server(options=message_options(self.settings.max_message_bytes))
        self.add_servicer(server)
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [self.service_name, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        self.port = server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {self.settings.host}:{self.settings.port}")
        await server.start()
        self._server = server
        for name in ("", self.service_name):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._sweeper = asyncio.create_task(self._sweep())
        log.info("%s serving on %s:%d", self.service_name, self.settings.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Graceful shutdown: NOT_SERVING and refuse new sessions, wait `shutdown_delay_s`, then let in-flight
        calls finish for at most `grace_s` and stop."""
        if self._server is None:
            return
        self.draining = True
        await self._health.enter_graceful_shutdown()
        await asyncio.sleep(self.settings.shutdown_delay_s)
        await self._server.stop(self.settings.grace_s)
        self._sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeper
        self._worker.shutdown(wait=False)
        self._server = None
        log.info("%s stopped", self.service_name)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _sweep(self) -> None:
        period = max(0.05, min(self.settings.lease_ttl_s / 4, 10.0))
        while True:
            await asyncio.sleep(period)
            try:
                await self.on_model_thread(self.evict_idle)
            except Exception:  # a failed sweep must not end sweeping
                log.exception("lease sweep failed")


async def run_until_signal(server: ModelServer) -> None:
    """Start `server`, serve until SIGINT or SIGTERM, then shut down gracefully."""
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining")
    await server.stop()

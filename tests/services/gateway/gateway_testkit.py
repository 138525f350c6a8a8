"""Test helpers: a real uvicorn server on an ephemeral loopback port, and settings for the tiny target."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from services.gateway.app import DrainingServer
from services.gateway.settings import GatewaySettings

API_KEY = "test-key-0123456789"
MODEL = "tiny"


class LiveServer:
    """Serve `app` with uvicorn (the gateway's DrainingServer) on 127.0.0.1:<free port> from a background thread."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = DrainingServer(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5), app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self):
        return self.app.state.gateway

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def gateway_settings(target_dir, **overrides) -> GatewaySettings:
    """Settings for the tiny target: ngram drafter, block 4, one API key, small limits."""
    values = dict(target=str(target_dir), served_model_name=MODEL, drafter="ngram", block_size=4,
                  api_keys=[API_KEY], max_batch=8, max_waiting=16, n_limit=4)
    values.update(overrides)
    return GatewaySettings(**values)

"""Fixtures of the service tests: gRPC servers in-process on a background event loop, tiny models."""

import pytest
from svc_helpers import VOCAB, LoopThread

from tiny_models import tiny_model


@pytest.fixture(scope="session")
def loop_thread():
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def start(loop_thread):
    """start(server) -> "127.0.0.1:port"; every server started this way is stopped after the test."""
    started = []

    def _start(server):
        port = loop_thread.run(server.start())
        started.append(server)
        return f"127.0.0.1:{port}"

    yield _start
    for server in started:
        loop_thread.run(server.stop())


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen3", vocab=VOCAB)


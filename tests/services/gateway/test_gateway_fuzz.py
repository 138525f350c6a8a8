"""Schemathesis fuzz of the gateway's OpenAPI schema: valid and invalid requests, zero 5xx.

Bounded (a fixed number of derandomized examples, `SPECSERVE_FUZZ_EXAMPLES` per mode) and run against
a gateway whose context is 64 tokens, so even the longest valid generation is quick.
"""

from __future__ import annotations

import pytest
from fuzzing import MODES, fuzz_no_server_errors
from gateway_testkit import API_KEY, LiveServer, gateway_settings

from services.gateway.app import create_app
from services.gateway.embedded import build_embedded_engine

pytest.importorskip("schemathesis")
pytest.importorskip("hypothesis")


@pytest.fixture(scope="module")
def fuzz_server(tiny_target_dir):
    settings = gateway_settings(tiny_target_dir, max_model_len=64, n_limit=2, max_waiting=4)
    app = create_app(settings, engine=build_embedded_engine(settings))
    with LiveServer(app) as server:
        yield server, app


@pytest.mark.parametrize("mode", MODES)
def test_fuzz_no_server_errors(fuzz_server, mode):
    server, app = fuzz_server
    seen = fuzz_no_server_errors(app.openapi(), mode, lambda case: case.call(
        base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30))
    if mode == "positive":
        assert seen.get(200, 0) >= 10, f"too few valid examples reached the engine: {seen}"
    assert not server.state.engine.has_unfinished()

"""Schemathesis fuzz of the gateway's OpenAPI schema: valid and invalid requests, zero 5xx.

Bounded (a fixed number of derandomized examples, `SPECSERVE_FUZZ_EXAMPLES` per mode) and run against
a gateway whose context is 64 tokens, so even the longest valid generation is quick.
"""

from __future__ import annotations

import os

import pytest
from gateway_testkit import API_KEY, LiveServer, gateway_settings

from services.gateway.app import create_app
from services.gateway.embedded import build_embedded_engine

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("hypothesis")

# examples per mode; SPECSERVE_FUZZ_EXAMPLES=2000 for a long run
EXAMPLES = dict.fromkeys(("positive", "negative"), int(os.environ.get("SPECSERVE_FUZZ_EXAMPLES", "60")))


@pytest.fixture(scope="module")
def fuzz_server(tiny_target_dir):
    settings = gateway_settings(tiny_target_dir, max_model_len=64, n_limit=2, max_waiting=4)
    app = create_app(settings, engine=build_embedded_engine(settings))
    with LiveServer(app) as server:
        yield server, app


@pytest.mark.parametrize("mode", sorted(EXAMPLES))
def test_fuzz_no_server_errors(fuzz_server, mode):
    from hypothesis import HealthCheck, given, settings

    server, app = fuzz_server
    schema = schemathesis.openapi.from_dict(app.openapi())
    strategy = schema.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case):
        response = case.call(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{case.method} {case.path} {case.body!r} -> {response.text}"
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    check()
    assert sum(seen.values()) >= EXAMPLES[mode] // 2, seen
    if mode == "positive":
        assert seen.get(200, 0) >= 10, f"too few valid examples reached the engine: {seen}"
    assert not server.state.engine.has_unfinished()


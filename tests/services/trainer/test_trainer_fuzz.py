"""Schemathesis fuzz of the trainer API's OpenAPI schema: valid and invalid requests, zero 5xx, every error an
OpenAI-style body. No worker runs; accepted jobs stay queued."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from services.trainer.app import create_app
from services.trainer.settings import TrainerSettings

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("hypothesis")

# starlette's TestClient and httpx warn about the per-request cookies and raw bodies the fuzzer sends
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
EXAMPLES = dict.fromkeys(("positive", "negative"), int(os.environ.get("SPECSERVE_FUZZ_EXAMPLES", "60")))


@pytest.fixture(scope="module")
def trainer_client(tmp_path_factory):
    settings = TrainerSettings(state_dir=tmp_path_factory.mktemp("fuzz"), api_keys=["k"], max_queued=10_000)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("mode", sorted(EXAMPLES))
def test_fuzz_no_server_errors(trainer_client, mode):
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_dict(trainer_client.app.openapi())
    strategy = schema.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES[mode], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case):
        kwargs = case.as_transport_kwargs(base_url="http://testserver", headers={"Authorization": "Bearer k"})
        response = trainer_client.request(**{k: v for k, v in kwargs.items() if k != "url"}, url=kwargs["url"])
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{case.method} {case.path} {case.body!r} -> {response.text}"
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    check()
    assert sum(seen.values()) >= EXAMPLES[mode] // 2, seen
    if mode == "negative":
        assert seen.get(400, 0) >= 10, f"too few invalid requests were refused: {seen}"
    else:  # random configs are refused (400 naming the key); lists, health, metrics answer
        assert seen.get(200, 0) >= 5, f"too few valid requests were answered: {seen}"

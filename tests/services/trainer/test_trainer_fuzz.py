"""Schemathesis fuzz of the trainer API's OpenAPI schema: valid and invalid requests, zero 5xx, every error an
OpenAI-style body. No worker runs; accepted jobs stay queued."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from fuzzing import MODES, fuzz_no_server_errors

from services.trainer.app import create_app
from services.trainer.settings import TrainerSettings

pytest.importorskip("schemathesis")
pytest.importorskip("hypothesis")
# starlette's TestClient and httpx warn about the per-request cookies and raw bodies the fuzzer sends
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def trainer_client(request, tmp_path_factory):
    """The API on either store: PostgreSQL refuses bytes and numbers SQLite stores (NUL, NaN)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    settings = TrainerSettings(state_dir=tmp_path_factory.mktemp("fuzz"), api_keys=["k"], max_queued=10_000,
                               database_url=url)
    with TestClient(create_app(settings)) as client:
        yield client


def call(client: TestClient, case):
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers={"Authorization": "Bearer k"})
    return client.request(**kwargs)


@pytest.mark.parametrize("mode", MODES)
def test_fuzz_no_server_errors(trainer_client, mode):
    seen = fuzz_no_server_errors(trainer_client.app.openapi(), mode, lambda case: call(trainer_client, case))
    if mode == "negative":
        assert seen.get(400, 0) >= 10, f"too few invalid requests were refused: {seen}"
    else:  # random configs are refused (400 naming the key); lists, health, metrics answer
        assert seen.get(200, 0) >= 5, f"too few valid requests were answered: {seen}"

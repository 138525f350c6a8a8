"""The gateway's training-job proxy against a real trainer API (uvicorn on loopback), with the real openai-style
error bodies passing through. No worker runs: jobs stay queued (tests/services/trainer runs them)."""

from __future__ import annotations

import socket

import httpx
import pytest
from gateway_testkit import API_KEY, MODEL, LiveServer, gateway_settings

from services.gateway.app import create_app
from services.gateway.embedded import build_embedded_engine
from services.trainer.app import create_app as create_trainer_app
from services.trainer.settings import TrainerSettings

TRAINER_KEY = "trainer-key-42"
CONFIG = {"model": {"target": "/models/qwen3"}, "data": {"train_file": "/data/train.jsonl"}}


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    settings = TrainerSettings(state_dir=tmp_path_factory.mktemp("trainer"), api_keys=[TRAINER_KEY])
    with LiveServer(create_trainer_app(settings)) as server:
        yield server


def gateway_for(tiny_target_dir, **overrides) -> LiveServer:
    settings = gateway_settings(tiny_target_dir, **overrides)
    return LiveServer(create_app(settings, engine=build_embedded_engine(settings)))


def unused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_jobs_are_submitted_listed_and_cancelled_through_the_gateway_with_its_own_keys(trainer, tiny_target_dir):
    with gateway_for(tiny_target_dir, trainer_url=trainer.url, trainer_client_key=TRAINER_KEY) as gateway:
        base = f"{gateway.url}/v1/jobs"
        assert httpx.post(base, json={"config": CONFIG}).status_code == 401  # the gateway's keys guard it
        created = httpx.post(base, json={"config": CONFIG, "nproc": 2}, headers=AUTH)
        assert created.status_code == 201, created.text
        job = created.json()
        assert (job["status"], job["nproc"]) == ("queued", 2)
        assert httpx.get(f"{base}/{job['id']}", headers=AUTH).json() == job
        listed = httpx.get(base, params={"status": "queued", "limit": 5}, headers=AUTH).json()
        assert [j["id"] for j in listed["data"]] == [job["id"]]
        assert httpx.get(f"{base}/{job['id']}/log", headers=AUTH).text == ""
        assert httpx.post(f"{base}/{job['id']}/cancel", headers=AUTH).json()["status"] == "cancelled"
        # the trainer's own errors pass through unchanged: 400 naming the key, 404 naming the job
        bad = httpx.post(base, json={"config": {**CONFIG, "optim": {"lrr": 1}}}, headers=AUTH)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "config.optim.lrr"
        missing = httpx.get(f"{base}/job-nope", headers=AUTH)
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "job_id"
        # a path climbing out of /v1/jobs (dot segments sent encoded, as a client may) is not forwarded
        climb = httpx.get(f"{base}/x/%2E%2E/%2E%2E/%2E%2E/metrics", headers=AUTH)
        assert climb.status_code == 404 and "no such path" in climb.json()["error"]["message"]


def test_without_a_trainer_or_with_a_wrong_key_or_a_dead_trainer_the_gateway_says_so(trainer, tiny_target_dir):
    with gateway_for(tiny_target_dir) as gateway:
        off = httpx.get(f"{gateway.url}/v1/jobs", headers=AUTH)
        assert off.status_code == 404 and "SPECSERVE_TRAINER_URL" in off.json()["error"]["message"]
    with gateway_for(tiny_target_dir, trainer_url=trainer.url, trainer_client_key="wrong") as gateway:
        refused = httpx.get(f"{gateway.url}/v1/jobs", headers=AUTH)
        assert refused.status_code == 502 and refused.json()["error"]["code"] == "trainer_auth"
    with gateway_for(tiny_target_dir, trainer_url=unused_url()) as gateway:
        down = httpx.post(f"{gateway.url}/v1/jobs", json={"config": CONFIG}, headers=AUTH)
        assert down.status_code == 503 and down.json()["error"]["code"] == "trainer_unavailable"
        assert down.headers["retry-after"]
        # the gateway itself is fine
        assert httpx.get(f"{gateway.url}/ready").status_code == 200


def test_training_jobs_can_take_their_own_keys_and_a_completions_key_is_refused_there(trainer, tiny_target_dir):
    """With jobs_api_keys, a key handed out for completions cannot submit training jobs (403 naming the routes),
    the jobs key cannot serve completions, and an unknown key is still a 401."""
    jobs_key = "jobs-only-7"
    with gateway_for(tiny_target_dir, trainer_url=trainer.url, trainer_client_key=TRAINER_KEY,
                     jobs_api_keys=[jobs_key]) as gateway:
        base = f"{gateway.url}/v1/jobs"
        refused = httpx.post(base, json={"config": CONFIG}, headers=AUTH)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "key_not_permitted" and "/v1/jobs/*" in refused.json()["error"][
            "message"]
        assert httpx.get(f"{base}/job-x", headers=AUTH).status_code == 403, "every path under /v1/jobs"
        created = httpx.post(base, json={"config": CONFIG}, headers={"Authorization": f"Bearer {jobs_key}"})
        assert created.status_code == 201, created.text
        completion = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
        assert httpx.post(f"{gateway.url}/v1/completions", json=completion,
                          headers={"Authorization": f"Bearer {jobs_key}"}).status_code == 403
        assert httpx.post(base, json={"config": CONFIG}, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(f"{gateway.url}/v1/models", headers=AUTH).status_code == 200

"""`specserve serve --trainer`: the embedded gateway serves /v1/jobs itself, with a real trainer worker child
process it starts and stops, beside completions from the same app."""

from __future__ import annotations

import subprocess

from fastapi.testclient import TestClient
from trainer_testkit import wait_for

from services.gateway.app import create_app
from services.gateway.embedded import build_embedded_engine
from services.gateway.settings import GatewaySettings

KEY = "gateway-key"


def test_the_embedded_gateway_runs_training_jobs_beside_completions(tiny_target_dir, job_config, tmp_path):
    settings = GatewaySettings(target=str(tiny_target_dir), served_model_name="tiny", drafter="ngram", block_size=4,
                               api_keys=[KEY], trainer=True, trainer_state_dir=tmp_path / "jobs")
    auth = {"Authorization": f"Bearer {KEY}"}
    with TestClient(create_app(settings, engine=build_embedded_engine(settings))) as client:
        assert client.post("/v1/jobs", json={"config": job_config()}).status_code == 401  # the gateway's keys
        submitted = client.post("/v1/jobs", json={"config": job_config(steps=4, every=2)}, headers=auth)
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        completion = client.post("/v1/completions", headers=auth, json={
            "model": "tiny", "prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0})
        assert completion.status_code == 200 and completion.json()["usage"]["completion_tokens"] == 8

        def finished():
            job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
            return job if job["status"] in ("succeeded", "failed") else None

        done = wait_for(finished, 180, "the hosted worker to run the job", interval=0.3)
        assert done["status"] == "succeeded", done["error"]
        assert done["result"]["draft"].startswith(str((tmp_path / "jobs" / "jobs" / job_id).resolve()))
        bad = client.post("/v1/jobs", json={"config": {"model": {"target": "/t"}}}, headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "config.data.train_file"
        metrics = client.get("/metrics").text  # the gateway's and its trainer's
        assert "specserve:spec_decode_num_drafts_total" in metrics
        assert 'specserve:trainer_jobs{status="succeeded"} 1.0' in metrics
    # the worker child went with the app
    running = subprocess.run(["pgrep", "-f", f"trainer-worker --state-dir {tmp_path / 'jobs'}"],
                             capture_output=True, text=True).stdout.split()
    assert running == []


def test_hosting_the_jobs_and_forwarding_them_exclude_each_other(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="exclude each other"):
        GatewaySettings(trainer=True, trainer_url="http://trainer:8100")

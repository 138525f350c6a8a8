"""The jobs API on the embedded default (SQLite store, kombu's SQLAlchemy broker on SQLite): what it accepts,
what it refuses and how (OpenAI-style bodies naming the field), keys, limits, readiness and metrics. No
worker runs here: jobs stay queued (test_trainer_jobs.py runs them)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from trainer_testkit import free_port

from services.trainer.app import create_app
from services.trainer.settings import TrainerSettings


@pytest.fixture
def client_for(tmp_path):
    clients = []

    def make(**fields) -> TestClient:
        settings = TrainerSettings(state_dir=tmp_path / f"state{len(clients)}", **fields)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def minimal_config() -> dict:
    return {"model": {"target": "/models/qwen3"}, "data": {"train_file": "/data/train.jsonl"}}


def error(response, status: int, param: str | None) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["param"] == param and body["type"]
    return body["message"]


def test_a_submitted_job_is_queued_listed_readable_and_cancellable(client_for):
    client = client_for()
    created = client.post("/v1/jobs", json={"config": minimal_config(), "nproc": 2})
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["object"], job["status"], job["nproc"], job["attempts"]) == ("training.job", "queued", 2, 0)
    assert job["config"] == minimal_config() and job["result"] is None
    assert client.get(f"/v1/jobs/{job['id']}").json() == job
    assert [j["id"] for j in client.get("/v1/jobs").json()["data"]] == [job["id"]]
    assert client.get("/v1/jobs", params={"status": "running"}).json()["data"] == []
    assert (job["kind"], job["args"]) == ("train", None)
    log = client.get(f"/v1/jobs/{job['id']}/log")
    assert log.status_code == 200 and log.text == ""  # no worker started it
    evaluation = client.post("/v1/jobs", json={"kind": "eval", "args": {
        "target": "/t", "draft": ["a=ngram", "b=none"], "suite": "/s.jsonl", "max_new_tokens": 16}})
    assert evaluation.status_code == 201, evaluation.text
    assert (evaluation.json()["kind"], evaluation.json()["config"]) == ("eval", None)
    assert evaluation.json()["args"]["draft"] == ["a=ngram", "b=none"]
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    followed = client.get(f"/v1/jobs/{job['id']}/log", params={"follow": True})
    assert followed.status_code == 200 and followed.text == ""  # an ended job's stream ends at once
    metrics = client.get("/metrics").text
    assert 'specserve:trainer_jobs{status="cancelled"} 1.0' in metrics
    assert 'specserve:trainer_jobs{status="queued"} 1.0' in metrics  # the evaluation


@pytest.mark.parametrize("body, param, words", [
    ({"config": {**minimal_config(), "train": {"max_stepz": 3}}}, "config.train.max_stepz",
     "did you mean train.max_steps"),
    ({"config": {**minimal_config(), "optim": {"lr": "fast"}}}, "config.optim.lr", "lr"),
    ({"config": {**minimal_config(), "model": {"target": "/t", "algorithm": "medusa"}}}, "config.model.algorithm",
     "medusa"),
    ({"config": {"data": {"train_file": "/d"}}}, "config.model.target", "model.target"),
    ({"config": {**minimal_config(), "checkpoint": {"dir": "/etc"}}}, "config.checkpoint.dir", "set by the trainer"),
    ({"config": minimal_config(), "nproc": 0}, "nproc", "greater than or equal to 1"),
    ({"config": minimal_config(), "nproc": 9}, "nproc", "at most 8 processes"),
    ({"config": minimal_config(), "priority": 1}, "priority", "unknown"),
    ({"config": "model.target=/t"}, "config", "dictionary"),
    ({}, "config", "a train job needs `config`"),
    ({"kind": "train", "args": {"target": "/t"}}, "args", "takes `config`, not `args`"),
    ({"kind": "regenerate", "config": minimal_config()}, "config", "takes `args`, not `config`"),
    ({"kind": "regenerate", "args": {"input": "/p.jsonl"}}, "args", "required: --target"),
    ({"kind": "regenerate", "args": {"target": "/t", "input": "/p.jsonl", "max_tokens": "many"}}, "args",
     "--max-tokens: invalid int value: 'many'"),
    ({"kind": "regenerate", "args": {"target": "/t", "input": "/p.jsonl", "max_tok": 5}}, "args.max_tok",
     "not a flag of `specserve data regenerate`"),
    ({"kind": "regenerate", "args": {"target": "/t", "input": "/p.jsonl", "out": "/etc/x"}}, "args.out",
     "set by the trainer"),
    ({"kind": "eval", "args": {"target": "/t", "draft": "ngram", "suite": "/s.jsonl"}, "nproc": 2}, "nproc",
     "runs one process"),
    ({"kind": "eval", "args": {"target": "/t", "draft": "ngram", "suite": {"a": 1}}}, "args", "valid"),
    ({"kind": "distill", "config": minimal_config()}, "kind", "'train', 'regenerate' or 'eval'"),
    ({"config": {**minimal_config(), "checkpoint": 5}}, "config.checkpoint", "must be a mapping"),
    ({"config": {**minimal_config(), "optim": {"lr": float("nan")}}}, "config.optim.lr", "finite number"),
    ({"kind": "eval", "args": {"target": "/t", "draft": "ngram", "suite": "/s", "temperature": float("inf")}},
     "args.temperature", "finite number"),
])
def test_bad_submissions_are_400s_naming_the_field_and_queue_nothing(client_for, body, param, words):
    client = client_for()
    raw = json.dumps(body).encode()  # NaN and Infinity as Python's JSON writes them (and reads them back)
    message = error(client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"}), 400, param)
    assert words in message, message
    assert client.get("/v1/jobs").json()["data"] == []


def test_malformed_json_unknown_jobs_and_bad_queries_are_named(client_for):
    client = client_for()
    response = client.post("/v1/jobs", content=b'{"config": ', headers={"content-type": "application/json"})
    assert "malformed JSON" in error(response, 400, None)
    assert "job-nope" in error(client.get("/v1/jobs/job-nope"), 404, "job_id")
    assert error(client.get("/v1/jobs/job-%00x"), 404, "job_id")  # never reaches the store
    assert error(client.get("/v1/jobs/job-nope/log"), 404, "job_id")
    assert error(client.post("/v1/jobs/job-nope/cancel"), 404, "job_id")
    assert "status" in error(client.get("/v1/jobs", params={"status": "paused"}), 400, "status")
    assert error(client.get("/v1/jobs", params={"limit": 0}), 400, "limit")
    assert error(client.get("/v1/jobs/x/log", params={"tail": -1}), 400, "tail")


def test_a_finished_job_cannot_be_cancelled(client_for):
    from services.trainer.store import JobStatus

    client = client_for()
    job_id = client.post("/v1/jobs", json={"config": minimal_config()}).json()["id"]
    store = client.app.state.trainer.store
    store.claim(job_id, "w")
    store.finish(job_id, "w", JobStatus.FAILED, 2, "x")
    assert "already failed" in error(client.post(f"/v1/jobs/{job_id}/cancel"), 409, "job_id")


def test_api_keys_guard_the_jobs_but_not_health_ready_or_metrics(client_for):
    client = client_for(api_keys=["k1", "k2"])
    assert "missing API key" in error(client.get("/v1/jobs"), 401, None)
    assert "invalid API key" in error(client.get("/v1/jobs", headers={"Authorization": "Bearer k3"}), 401, None)
    # an unauthenticated body is not even parsed: 401, not 400
    assert error(client.post("/v1/jobs", content=b"{", headers={"content-type": "application/json"}), 401, None)
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer k2"}).status_code == 200
    for path in ("/health", "/ready", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_beyond_max_queued_jobs_a_submission_gets_429_with_retry_after(client_for):
    client = client_for(max_queued=2)
    for _ in range(2):
        assert client.post("/v1/jobs", json={"config": minimal_config()}).status_code == 201
    response = client.post("/v1/jobs", json={"config": minimal_config()})
    assert "2 jobs are already queued" in error(response, 429, None)
    assert response.headers["retry-after"] == "60"
    assert len(client.get("/v1/jobs").json()["data"]) == 2


def test_an_unreachable_broker_is_a_503_and_leaves_no_job_queued(client_for):
    """A real refused connection: a Redis URL on a port nothing listens on."""
    client = client_for(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    response = client.post("/v1/jobs", json={"config": minimal_config()})
    assert "job queue is unreachable" in error(response, 503, None)
    assert [j["status"] for j in client.get("/v1/jobs").json()["data"]] == ["cancelled"]
    assert "job queue is unreachable" in error(client.get("/ready"), 503, None)
    assert client.get("/health").status_code == 200


def test_settings_refuse_a_lease_shorter_than_two_heartbeats_and_the_stop_grace(tmp_path):
    with pytest.raises(ValueError, match=r"lease_s \(8.0\) must exceed twice heartbeat_s \(5.0\) plus stop_grace_s"):
        TrainerSettings(state_dir=tmp_path, heartbeat_s=5, lease_s=8, stop_grace_s=0)
    with pytest.raises(ValueError, match="while its command is being stopped"):
        TrainerSettings(state_dir=tmp_path, lease_s=40)  # heartbeat 5 s, grace 30 s


def test_specserve_serve_trainer_serves_http_from_flags_and_environment_and_stops_on_sigterm(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import httpx
    from trainer_testkit import wait_for

    port = free_port()
    env = {**os.environ, "SPECSERVE_TRAINER_API_KEYS": "secret", "SPECSERVE_TRAINER_MAX_QUEUED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "specserve.cli", "serve-trainer", "--port", str(port),
                             "--state-dir", str(tmp_path / "state")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer secret"}
    try:
        def ready():
            try:
                return httpx.get(f"{base}/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None  # died: fall through to the assertion below

        wait_for(ready, 60, "the trainer API")
        assert proc.poll() is None
        assert httpx.post(f"{base}/v1/jobs", json={"config": minimal_config()}).status_code == 401
        assert httpx.post(f"{base}/v1/jobs", json={"config": minimal_config()}, headers=auth).status_code == 201
        full = httpx.post(f"{base}/v1/jobs", json={"config": minimal_config()}, headers=auth)
        assert full.status_code == 429  # SPECSERVE_TRAINER_MAX_QUEUED=1 from the environment
        assert (tmp_path / "state" / "jobs.db").exists() and (tmp_path / "state" / "broker.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    # uvicorn re-raises the signal once it has shut down cleanly, so the exit status reports SIGTERM
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "trainer API ready" in out and "Application shutdown complete" in out


def test_the_trainer_commands_explain_themselves():
    import subprocess
    import sys

    for command, words in (("serve-trainer", "POST /v1/jobs"), ("trainer-worker", "resumes from its latest")):
        out = subprocess.run([sys.executable, "-m", "specserve.cli", command, "--help"], capture_output=True,
                             text=True, check=True).stdout
        assert words in " ".join(out.split()) and "SPECSERVE_TRAINER_" in out, out


def test_a_training_that_cannot_start_fails_the_job_with_the_reason(tmp_path, monkeypatch):
    """Fault injected by the test: the training command names an executable that does not exist."""
    from services.trainer import runner
    from services.trainer.store import JobStatus, JobStore

    settings = TrainerSettings(state_dir=tmp_path)
    store = JobStore(settings.store_url)
    job = store.submit(minimal_config())
    monkeypatch.setattr(runner, "job_command", lambda *args: [str(tmp_path / "no-such-python")])
    assert runner.JobRunner(settings, store).run(job.id, "w") == "failed"
    failed = store.get(job.id)
    assert failed.status is JobStatus.FAILED and "could not start" in failed.error and "no-such-python" in failed.error


def test_with_allowed_roots_a_job_may_name_only_files_inside_them(client_for, tmp_path):
    root = tmp_path / "shared"
    client = client_for(allowed_roots=[root])
    inside = {"model": {"target": str(root / "qwen3")}, "data": {"train_file": str(root / "data" / "train.jsonl")}}
    assert client.post("/v1/jobs", json={"config": inside}).status_code == 201
    outside = {**inside, "data": {"train_file": "/etc/passwd"}}
    message = error(client.post("/v1/jobs", json={"config": outside}), 400, "config.data.train_file")
    assert "'/etc/passwd' is outside the folders this trainer may read" in message
    climbing = {**inside, "model": {"target": str(root / ".." / "elsewhere")}}
    assert error(client.post("/v1/jobs", json={"config": climbing}), 400, "config.model.target")
    # a relative path is read from the worker's working directory, not the API's: refused, as is a hub id
    for relative in ("shared/qwen3", "Qwen/Qwen3-8B"):
        named = {**inside, "model": {"target": relative}}
        assert "not an absolute path" in error(client.post("/v1/jobs", json={"config": named}), 400,
                                               "config.model.target")
    evaluation = {"target": str(root / "qwen3"), "suite": [str(root / "a.jsonl"), "/tmp/b.jsonl"],
                  "draft": ["ngram:4", f"mine=dspark:{root / 'draft'}"]}
    assert error(client.post("/v1/jobs", json={"kind": "eval", "args": evaluation}), 400, "args.suite.1")
    evaluation["suite"] = [str(root / "a.jsonl")]
    assert client.post("/v1/jobs", json={"kind": "eval", "args": evaluation}).status_code == 201
    evaluation["draft"] = ["dflash:/opt/drafts/x"]
    assert error(client.post("/v1/jobs", json={"kind": "eval", "args": evaluation}), 400, "args.draft.0")
    # eval reads `dspark:/opt/x=model:ROOT/q` as one spec (a name has no colon): its path is /opt/x=model:...
    evaluation["draft"] = [f"dspark:/opt/x=model:{root / 'q'}"]
    assert error(client.post("/v1/jobs", json={"kind": "eval", "args": evaluation}), 400, "args.draft.0")


def test_a_training_resumes_whatever_the_submitted_config_says(client_for):
    client = client_for()
    config = {**minimal_config(), "checkpoint": {"resume": False}}
    assert "set by the trainer" in error(client.post("/v1/jobs", json={"config": config}), 400,
                                         "config.checkpoint.resume")


def test_an_evaluations_progress_counts_its_runs_from_the_newest_attempts_log(tmp_path):
    """`specserve eval` logs a banner and one line per finished (draft, benchmark) run; a retried job's log holds
    every attempt, and a run without rounds logs τ nan, which JSON cannot carry (None)."""
    from services.trainer.runner import LOG_FILE, job_progress

    assert job_progress("eval", tmp_path) is None, "no log yet"
    log = tmp_path / LOG_FILE
    log.write_text("INFO specserve.eval.cli: loaded target t (2 layers, vocab 64) in 0.1s\n")
    assert job_progress("eval", tmp_path) is None, "nothing announced yet"
    line = "2026-11-29 10:00:00,000 INFO specserve.eval.runner: {} on {}: 12 rounds, 40 tokens, tau {}, finish {{}}\n"
    log.write_text("INFO specserve.eval.runner: evaluation: 2 drafts x 2 benchmarks\n"
                   + line.format("a", "gsm8k", "9.000")
                   + "== attempt 2 ==\nINFO specserve.eval.runner: evaluation: 2 drafts x 2 benchmarks\n"
                   + "INFO specserve.eval.runner: a on gsm8k: 4 prompts, γ = 7, batch 1\n"
                   + line.format("a", "gsm8k", "3.250") + line.format("b", "mt-bench", "nan"))
    assert job_progress("eval", tmp_path) == {"runs_done": 2, "runs_total": 4,
                                              "tau": {"a on gsm8k": 3.25, "b on mt-bench": None}}

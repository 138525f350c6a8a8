"""Training jobs end to end: the jobs API in-process (FastAPI TestClient), real `specserve trainer-worker`
processes (Celery, `--pool solo`) on a real broker, the real `specserve train` underneath.

Scale-out: Redis broker + PostgreSQL store. Embedded default: nothing but --state-dir (SQLite store, kombu's
SQLAlchemy transport on SQLite). Faults are real: a worker is SIGKILLed with its whole process group, or sent
SIGTERM, mid-run.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from trainer_testkit import wait_for

from services.trainer.app import create_app
from services.trainer.settings import TrainerSettings

pytestmark = pytest.mark.slow


class Worker:
    """One `specserve trainer-worker` process in its own process group (killing it kills what it started)."""

    def __init__(self, settings: TrainerSettings, log_path):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for name in ("state_dir", "database_url", "broker_url", "lease_s", "heartbeat_s", "stop_grace_s", "queue"):
            value = getattr(settings, name)
            if value is not None:
                env[f"SPECSERVE_TRAINER_{name.upper()}"] = str(value)
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "specserve.cli", "trainer-worker"], env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


@pytest.fixture
def stack(tmp_path):
    """start(**settings) -> (client, settings, worker()) ; every worker and client is stopped after the test."""
    workers, clients = [], []

    def start(**fields):
        settings = TrainerSettings(state_dir=tmp_path / "state", heartbeat_s=0.5, lease_s=3.0, stop_grace_s=1.5,
                                   **fields)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)

        def worker() -> Worker:
            w = Worker(settings, tmp_path / f"worker{len(workers)}.log")
            workers.append(w)
            return w

        return client, settings, worker

    yield start
    for w in workers:
        w.stop(10)
    for c in clients:
        c.__exit__(None, None, None)


def training_processes(job_dir) -> list[int]:
    """Pids of live processes running this job's `specserve train` (found by its config path)."""
    needle = str(job_dir / "config.yaml").encode()
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except (OSError, IndexError):
            continue
        if needle in cmdline and not zombie:
            pids.append(int(entry))
    return pids


def job(client, job_id: str) -> dict:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(client, job_id: str, statuses: set[str], timeout: float, workers=()) -> dict:
    def check():
        j = job(client, job_id)
        return j if j["status"] in statuses else None

    try:
        return wait_for(check, timeout, f"job {job_id} to reach {statuses}", interval=0.3)
    except AssertionError:
        logs = "\n".join(w.log()[-3000:] for w in workers)
        training = client.get(f"/v1/jobs/{job_id}/log").text[-3000:]
        raise AssertionError(f"job {job(client, job_id)}\nworkers:\n{logs}\ntraining log:\n{training}") from None


def test_a_job_runs_on_a_redis_worker_with_a_postgresql_store_and_exports_a_loadable_draft(
        stack, job_config, redis_url, postgres_db, tiny_target_dir):
    client, settings, worker = stack(broker_url=redis_url, database_url=postgres_db, queue="q-happy")
    w = worker()
    submitted = client.post("/v1/jobs", json={"config": job_config(steps=4, every=2)})
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["id"]
    followed = []  # the log, streamed from submission until the job ends
    with client.stream("GET", f"/v1/jobs/{job_id}/log", params={"follow": "true"}) as stream:
        assert stream.status_code == 200
        followed.extend(stream.iter_text())
    assert job(client, job_id)["status"] in ("succeeded", "failed")  # the stream ended with the job
    done = wait_status(client, job_id, {"succeeded", "failed"}, 180, [w])
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1 and done["exit_code"] == 0
    progress = done["progress"]
    assert (progress["step"], progress["total_steps"]) == (4, 4) and progress["metrics"]["train/loss"] > 0
    draft = done["result"]["draft"]
    assert draft.startswith(str(settings.jobs_dir / job_id)) and "4 steps" in done["result"]["summary"]
    # the exported draft is what `--drafter auto:PATH` serves: load it against its target
    from specserve.drafters.registry import build_drafter
    from specserve.target.model import CausalLM

    drafter = build_drafter(f"auto:{draft}", CausalLM.from_pretrained(str(tiny_target_dir)))
    assert drafter.model.cfg.kind == "dspark" and drafter.max_block == 3
    log = client.get(f"/v1/jobs/{job_id}/log", params={"tail": 1000}).text
    assert "attempt 1 by" in log and "training dspark: 4 steps" in log
    assert "".join(followed) == log  # every line, once, in order
    metrics = client.get("/metrics").text
    assert 'specserve:trainer_jobs{status="succeeded"} 1.0' in metrics
    assert "specserve:trainer_jobs_submitted_total 1.0" in metrics


def test_a_job_whose_worker_is_killed_resumes_from_its_checkpoint_on_another_worker_and_never_runs_twice(
        stack, job_config, redis_url, postgres_db):
    client, settings, worker = stack(broker_url=redis_url, database_url=postgres_db, queue="q-kill")
    first = worker()
    job_id = client.post("/v1/jobs", json={"config": job_config(steps=40, every=2)}).json()["id"]
    latest = settings.jobs_dir / job_id / "checkpoints" / "latest"
    wait_for(latest.exists, 180, "the first checkpoint", interval=0.2)
    assert training_processes(settings.jobs_dir / job_id)
    killed_at = time.time()
    first.kill()  # the worker's process group; the training runs in its own session and must die with it
    assert job(client, job_id)["status"] == "running"  # nobody knows yet
    wait_for(lambda: not training_processes(settings.jobs_dir / job_id), 10, "the orphaned training to die")
    second = worker()
    done = wait_status(client, job_id, {"succeeded", "failed"}, 300, [first, second])
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    log = client.get(f"/v1/jobs/{job_id}/log", params={"tail": 100000}).text
    assert "resumed from" in log and "40 steps" in done["result"]["summary"]
    starts = re.findall(r"=== specserve trainer: attempt (\d) by \S+ at (\S+)", log)
    assert [n for n, _ in starts] == ["1", "2"]
    second_start = datetime.datetime.fromisoformat(starts[1][1]).timestamp()
    # taken over only once its lease expired: at least lease_s after the last heartbeat, which came at most
    # heartbeat_s before the kill
    assert second_start - killed_at >= settings.lease_s - settings.heartbeat_s - 0.05


def test_cancel_stops_a_running_job_and_sigterm_hands_a_job_back_to_the_queue(stack, job_config):
    """Embedded default: no Redis, no PostgreSQL; only --state-dir."""
    client, settings, worker = stack(queue="q-cancel")
    assert settings.store_url.startswith("sqlite:") and settings.broker.startswith("sqla+sqlite:")
    w = worker()
    job_id = client.post("/v1/jobs", json={"config": job_config(steps=100000, every=1000)}).json()["id"]
    wait_status(client, job_id, {"running"}, 120, [w])
    wait_for(lambda: job(client, job_id)["progress"], 120, "the first logged step")
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"]
    done = wait_status(client, job_id, {"cancelled"}, 30, [w])
    assert done["error"] == "cancelled on request"
    assert not training_processes(settings.jobs_dir / job_id)
    again = client.post(f"/v1/jobs/{job_id}/cancel")  # a retried cancel is answered, not refused
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    second_id = client.post("/v1/jobs", json={"config": job_config(steps=100000, every=2)}).json()["id"]
    wait_for(lambda: (settings.jobs_dir / second_id / "checkpoints" / "latest").exists(), 180, "a checkpoint")
    assert w.stop(30) == 0  # warm shutdown: the job goes back to the queue
    released = job(client, second_id)
    assert (released["status"], released["attempts"]) == ("queued", 1)
    w2 = worker()
    resumed = wait_status(client, second_id, {"running"}, 120, [w2])
    assert resumed["attempts"] == 2
    wait_for(lambda: "resumed from" in client.get(f"/v1/jobs/{second_id}/log", params={"tail": 100000}).text, 120,
             "the second attempt to resume from the checkpoint")
    client.post(f"/v1/jobs/{second_id}/cancel")
    wait_status(client, second_id, {"cancelled"}, 30, [w2])


def test_the_whole_pipeline_over_http_regenerate_train_evaluate(stack, job_config, tiny_target_dir, tmp_path):
    """Embedded default: answers regenerated by the target, a draft trained on them, the draft evaluated."""
    import json

    client, settings, worker = stack(queue="q-pipeline")
    w = worker()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"turns": [f"def add_{i}(a, b):"]}) + "\n" for i in range(12)))

    def run(body: dict) -> dict:
        submitted = client.post("/v1/jobs", json=body)
        assert submitted.status_code == 201, submitted.text
        done = wait_status(client, submitted.json()["id"], {"succeeded", "failed"}, 240, [w])
        assert done["status"] == "succeeded", done["error"]
        return done

    regenerated = run({"kind": "regenerate", "args": {"target": str(tiny_target_dir), "input": str(prompts),
                                                       "max_tokens": 24, "temperature": 0.7, "seed": 1}})
    assert regenerated["args"]["max_tokens"] == 24 and regenerated["config"] is None
    assert job(client, regenerated["id"])["progress"] == {"rows_done": 12, "total_rows": 12, "complete": True}
    data = regenerated["result"]["data"]
    assert len(open(data).read().splitlines()) == 12
    config = job_config(steps=4, every=2)
    config["data"]["train_file"] = data
    draft = run({"config": config})["result"]["draft"]
    evaluated = run({"kind": "eval", "args": {"target": str(tiny_target_dir), "draft": f"trained=auto:{draft}",
                                              "suite": [str(prompts)], "max_new_tokens": 8, "limit": 4}})
    report = evaluated["result"]
    results = json.loads(open(report["results"]).read())
    progress = job(client, evaluated["id"])["progress"]
    assert (progress["runs_done"], progress["runs_total"]) == (1, 1)
    assert progress["tau"]["trained on prompts"] == pytest.approx(results["tau"]["trained"]["prompts"], abs=1e-3)
    assert results["tau"]["trained"]["prompts"] >= 1.0  # τ per benchmark, the file stem naming it
    assert results["acceptance"]["trained"]["prompts"]["drafted"] > 0
    assert "trained" in open(report["report"]).read()

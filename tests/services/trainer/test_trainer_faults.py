"""Faults of the trainer's dependencies, caused for real: a PostgreSQL store stopped under the API and under a
running job, a broker that refuses connections, a message that was never sent."""

from __future__ import annotations

import subprocess
import threading
import time

from fastapi.testclient import TestClient
from trainer_testkit import free_port, postgres_cluster, wait_for

from services.trainer import runner
from services.trainer.app import create_app
from services.trainer.settings import TrainerSettings
from services.trainer.store import JobStatus, JobStore
from services.trainer.worker import TASK, maintain, make_celery

CONFIG = {"model": {"target": "/models/qwen3"}, "data": {"train_file": "/data/train.jsonl"}}


def test_a_store_that_goes_down_is_a_503_with_retry_after_not_a_500(tmp_path):
    with postgres_cluster() as (url, stop):
        settings = TrainerSettings(state_dir=tmp_path, database_url=url)
        with TestClient(create_app(settings)) as client:
            assert client.post("/v1/jobs", json={"config": CONFIG}).status_code == 201
            stop()
            for response in (client.get("/v1/jobs"), client.post("/v1/jobs", json={"config": CONFIG}),
                             client.get("/ready")):
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] in ("store_unavailable",) and response.headers["retry-after"]
            assert client.get("/health").status_code == 200


def test_a_worker_that_loses_its_store_stops_the_job_before_its_lease_expires(tmp_path, monkeypatch):
    """The job's command is replaced by a sleeping Python (fault injected by the test: the fault under test is
    the store going away, which is real); it is still started through specserve.procs."""
    with postgres_cluster() as (url, stop):
        settings = TrainerSettings(state_dir=tmp_path, database_url=url, heartbeat_s=0.3, lease_s=3.0, stop_grace_s=1)
        store = JobStore(url)
        job = store.submit(CONFIG)
        command = runner.job_command

        def sleeper(kind, params, nproc, directory):
            return command("eval", {}, 1, directory)[:5] + ["-c", "import time; time.sleep(120)"]

        monkeypatch.setattr(runner, "job_command", sleeper)
        outcome: list[str] = []
        thread = threading.Thread(target=lambda: outcome.append(runner.JobRunner(settings, store).run(job.id, "w")))
        thread.start()
        children = lambda: subprocess.run(["pgrep", "-f", "time.sleep\\(120\\)"], capture_output=True,  # noqa: E731
                                          text=True).stdout.split()
        wait_for(children, 20, "the job's command to start")
        stopped_at = time.monotonic()
        stop()
        thread.join(30)
        assert outcome == ["lost"]
        # stopped within lease_s - heartbeats - grace of the last good heartbeat, so no second run can overlap it
        assert time.monotonic() - stopped_at < settings.lease_s
        assert not children()
        store.close()


def test_the_reaper_sends_a_queued_job_whose_message_was_never_sent_and_survives_a_dead_broker(tmp_path):
    settings = TrainerSettings(state_dir=tmp_path, resend_s=0.2)
    store = JobStore(settings.store_url)
    job = store.submit(CONFIG)  # stored, but the send never happened (the API died in between)
    dead = TrainerSettings(state_dir=tmp_path, resend_s=0.2, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    time.sleep(0.3)
    app_dead = make_celery(dead)
    app_dead.conf.broker_connection_timeout = 1
    app_dead.conf.broker_transport_options = {"max_retries": 0}
    assert maintain(app_dead, store, dead) == []  # logged, not raised; the job stays queued and unsent
    assert store.get(job.id).enqueued_at is None
    app = make_celery(settings)
    assert maintain(app, store, settings) == []
    assert store.get(job.id).enqueued_at is not None and store.unsent(60) == []
    with app.connection_for_read() as conn:  # the message is in the real (SQLite) broker
        message = conn.SimpleQueue(settings.queue).get(timeout=5)
        assert message.headers["task"] == TASK and message.headers["argsrepr"] == repr([job.id])
        message.ack()
    assert store.get(job.id).status is JobStatus.QUEUED
    store.close()

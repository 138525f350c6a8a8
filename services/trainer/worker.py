"""The Celery side of the trainer: the app, its one task, and the reaper that requeues lost jobs.

A message only says "run job X"; the job store decides whether this worker may (see `store.claim`), so a
duplicate delivery, a redelivery after a broker visibility timeout, or a message sent again by the reaper
never runs a job twice at once. Messages are acknowledged late, and a worker runs one job at a time in its
main process (`--pool solo`; a worker lost with its message unacknowledged leaves the job to the reaper,
which requeues it once its lease expires): a training job owns its devices,
and a warm shutdown (SIGTERM, e.g. a pod eviction) reaches the job, which stops its training and
returns to the queue to resume from its latest checkpoint on another worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery, signals
from celery.exceptions import Reject
from kombu.utils.url import maybe_sanitize_url

from services.trainer.runner import JobRunner
from services.trainer.settings import TrainerSettings
from services.trainer.store import JobStore

log = logging.getLogger("specserve.trainer")

TASK = "specserve.trainer.run_job"


def make_celery(settings: TrainerSettings) -> Celery:
    """The Celery app of one trainer deployment (API and workers build the same one from the same settings)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("specserve-trainer", broker=settings.broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True, task_reject_on_worker_lost=True, task_ignore_result=True,
        task_default_queue=settings.queue, worker_prefetch_multiplier=1, worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True, worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    if settings.broker.startswith(("redis", "rediss")):
        # Redis redelivers a message unacknowledged for this long (a job running longer than it is delivered
        # again); the store's claim turns such a delivery into a no-op
        app.conf.broker_transport_options = {"visibility_timeout": max(3600.0, 4 * settings.lease_s)}
    runner: dict[str, JobRunner] = {}  # built in the worker process on first use
    building = threading.Lock()  # the task (main thread) and the reaper thread may ask first at once

    def job_runner() -> JobRunner:
        with building:
            if "runner" not in runner:
                runner["runner"] = JobRunner(settings, JobStore(settings.store_url))
            return runner["runner"]

    @app.task(name=TASK, bind=True)
    def run_job(task, job_id: str) -> str:
        if job_runner().stopping:  # delivered during a warm shutdown: leave it to another worker
            raise Reject("worker shutting down", requeue=True)
        owner = f"{socket.gethostname()}:{os.getpid()}:{task.request.id}"
        runner_ = job_runner()
        outcome = runner_.run(job_id, owner)
        if outcome == "released":  # this message is acknowledged on return: queue the job again
            try:
                enqueue(app, runner_.store, job_id)
            except Exception as exc:  # left to the reaper's resend (resend_s)
                log.warning("job %s: sending it again failed (%s)", job_id, exc)
        return outcome

    app.job_runner = job_runner  # the worker entry point stops it on shutdown
    return app


def enqueue(app: Celery, store: JobStore, job_id: str) -> None:
    """Send the job's message (raising when the broker refuses it) and record when. A record that fails is
    only logged: the message is out, and at worst the reaper sends a duplicate, which the claim drops."""
    app.send_task(TASK, args=[job_id])
    try:
        store.mark_enqueued(job_id)
    except Exception as exc:
        log.warning("job %s: sent, but the send time was not recorded (%s)", job_id, exc)


def maintain(app: Celery, store: JobStore, settings: TrainerSettings) -> list[str]:
    """One pass of the reaper: jobs whose worker stopped reporting go back on the queue (they resume from
    their checkpoints) or fail after max_lost_workers; queued jobs whose message was sent more than resend_s
    ago (or never) are sent again. Returns the requeued ids. Each job is handled on its own: one failed send
    leaves the others to be sent, and itself to the next pass."""
    again, failed = store.requeue_lost(settings.lease_s, settings.max_lost_workers)
    for job_id in failed:
        log.error("job %s: its worker was lost %d times; failed", job_id, settings.max_lost_workers)
    for job_id in again:
        log.warning("job %s: its worker stopped reporting for %.0f s; queued again", job_id, settings.lease_s)
    for job_id in dict.fromkeys([*again, *store.unsent(settings.resend_s)]):
        try:
            enqueue(app, store, job_id)
        except Exception as exc:  # the broker is down: the job stays queued, unsent, for the next pass
            log.warning("job %s: sending its message failed (%s); retried next pass", job_id, exc)
    return again


def run_worker(settings: TrainerSettings, loglevel: str = "INFO") -> None:
    """`specserve trainer-worker`: one job at a time, in this process; SIGTERM releases the running job."""
    app = make_celery(settings)
    stop_reaper = threading.Event()

    @signals.worker_ready.connect(weak=False)
    def _ready(**_):
        def reap():  # the first pass at once: jobs of a worker that died before this one started
            while True:
                try:
                    maintain(app, app.job_runner().store, settings)
                except Exception:  # the store is down (even at start-up): say so, try again next period
                    log.exception("the reaper's pass failed")
                if stop_reaper.wait(settings.lease_s / 2):
                    return

        threading.Thread(target=reap, name="trainer-reaper", daemon=True).start()

    @signals.worker_shutting_down.connect(weak=False)
    def _shutting_down(**_):
        stop_reaper.set()
        app.job_runner().stop()

    log.info("trainer worker: broker %s, store %s, queue %s", maybe_sanitize_url(settings.broker),
             maybe_sanitize_url(settings.store_url),
             settings.queue)
    app.worker_main(["worker", "--pool", "solo", "--concurrency", "1", "--loglevel", loglevel,
                     "--queues", settings.queue, "--hostname", f"trainer@{socket.gethostname()}:{os.getpid()}",
                     "--without-gossip", "--without-mingle"])

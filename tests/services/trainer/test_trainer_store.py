"""The job store on SQLite (the embedded default) and on PostgreSQL (scale-out), through SQLAlchemy."""

from __future__ import annotations

import threading
import time

import pytest

from services.trainer.store import Claim, JobFinished, JobNotFound, JobStatus, JobStore, QueueFull


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_db")
    store = JobStore(url)
    yield store
    store.close()


def test_jobs_are_stored_listed_newest_first_and_counted(store):
    first = store.submit({"model": {"target": "/t"}}, nproc=2)
    time.sleep(0.01)
    second = store.submit({"model": {"target": "/u"}})
    assert store.get(first.id).config == {"model": {"target": "/t"}} and store.get(first.id).nproc == 2
    assert [j.id for j in store.list()] == [second.id, first.id]
    assert [j.id for j in store.list(limit=1)] == [second.id]
    assert [j.id for j in store.list(before=second.created_at)] == [first.id]
    assert store.counts()[JobStatus.QUEUED] == 2 and store.counts()[JobStatus.RUNNING] == 0
    with pytest.raises(JobNotFound):
        store.get("job-missing")


def test_of_many_workers_claiming_one_job_exactly_one_runs_it(store):
    job = store.submit({})
    results, barrier = [], threading.Barrier(8)

    def claim(i):
        barrier.wait()
        results.append(store.claim(job.id, f"w{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.value for r in results) == ["busy"] * 7 + ["claimed"]
    view = store.get(job.id)
    assert view.status is JobStatus.RUNNING and view.attempts == 1 and view.owner.startswith("w")


def test_submissions_racing_for_the_last_places_in_the_queue_never_overshoot_max_queued(store):
    """8 threads (as many API processes) submit at once for the one place left: one job is stored, 7 are refused."""
    store.submit({}, max_queued=3)
    running = store.submit({}, max_queued=3)
    assert store.claim(running.id, "w") is Claim.CLAIMED, "a running job takes no place in the queue"
    store.submit({}, max_queued=3)
    outcomes, barrier = [], threading.Barrier(8)

    def submit():
        barrier.wait()
        try:
            store.submit({}, max_queued=3)
            outcomes.append("stored")
        except QueueFull:
            outcomes.append("refused")

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["stored"] and store.counts()[JobStatus.QUEUED] == 3
    with pytest.raises(QueueFull, match="3 jobs are already queued"):
        store.submit({}, max_queued=3)


def test_an_expired_lease_is_taken_over_only_through_requeue_lost_which_fences_the_old_owner(store):
    job = store.submit({})
    assert store.claim(job.id, "old") is Claim.CLAIMED
    time.sleep(1.2)
    # a duplicate message finds the job running, even with its lease expired: only the reaper takes it over
    assert store.claim(job.id, "new") is Claim.BUSY
    assert store.requeue_lost(lease_s=1.0, max_lost=3) == ([job.id], [])
    assert store.claim(job.id, "new") is Claim.CLAIMED
    view = store.get(job.id)
    assert (view.attempts, view.lost, view.owner) == (2, 1, "new")
    # the old owner woke up: it can neither renew, nor finish, nor release the job
    assert store.heartbeat(job.id, "old") == (False, False)
    assert not store.finish(job.id, "old", JobStatus.FAILED, 1, "late")
    assert not store.release(job.id, "old")
    assert store.finish(job.id, "new", JobStatus.SUCCEEDED, 0, result={"draft": "/x"})
    done = store.get(job.id)
    assert (done.status, done.exit_code, done.result) == (JobStatus.SUCCEEDED, 0, {"draft": "/x"})
    assert store.claim(job.id, "third") is Claim.DONE


def test_requeue_lost_returns_only_jobs_whose_worker_went_silent(store):
    silent, alive = store.submit({}), store.submit({})
    store.claim(silent.id, "dead")
    store.claim(alive.id, "busy")
    time.sleep(1.2)
    store.heartbeat(alive.id, "busy")
    assert store.requeue_lost(lease_s=1.0, max_lost=3) == ([silent.id], [])
    requeued = store.get(silent.id)
    assert (requeued.status, requeued.owner, requeued.attempts, requeued.lost) == (JobStatus.QUEUED, None, 1, 1)
    assert store.get(alive.id).status is JobStatus.RUNNING
    assert store.claim(silent.id, "next") is Claim.CLAIMED and store.get(silent.id).attempts == 2


def test_cancel_ends_a_queued_job_flags_a_running_one_and_refuses_a_finished_one(store):
    queued, running, finished = store.submit({}), store.submit({}), store.submit({})
    assert store.cancel(queued.id).status is JobStatus.CANCELLED
    assert store.claim(queued.id, "w") is Claim.DONE  # its message arrives later: nothing runs
    store.claim(running.id, "w")
    flagged = store.cancel(running.id)
    assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested
    assert store.heartbeat(running.id, "w") == (True, True)
    store.claim(finished.id, "w")
    store.finish(finished.id, "w", JobStatus.SUCCEEDED, 0)
    with pytest.raises(JobFinished, match="already succeeded"):
        store.cancel(finished.id)
    with pytest.raises(JobNotFound):
        store.cancel("job-missing")


def test_a_released_job_is_queued_again_with_its_attempts(store):
    job = store.submit({})
    store.claim(job.id, "w")
    assert store.release(job.id, "w")
    view = store.get(job.id)
    assert (view.status, view.owner, view.attempts) == (JobStatus.QUEUED, None, 1)
    with pytest.raises(ValueError, match="final status"):
        store.finish(job.id, "w", JobStatus.RUNNING)


def test_a_job_whose_worker_is_lost_max_lost_times_fails_and_releases_do_not_count(store):
    job = store.submit({})
    for owner in ("shutdown-1", "shutdown-2"):  # rollouts: the job is handed back, not lost
        store.claim(job.id, owner)
        assert store.release(job.id, owner)
    for lost in (1, 2):
        assert store.claim(job.id, f"w{lost}") is Claim.CLAIMED
        time.sleep(0.15)
        expected = ([job.id], []) if lost == 1 else ([], [job.id])
        assert store.requeue_lost(lease_s=0.1, max_lost=2) == expected
    failed = store.get(job.id)
    assert (failed.status, failed.attempts, failed.lost, failed.owner) == (JobStatus.FAILED, 4, 2, None)
    assert "lost 2 times (the last one: w2)" in failed.error and failed.finished_at is not None


def test_unsent_finds_queued_jobs_whose_message_is_old_or_was_never_sent(store):
    never, sent, running = store.submit({}), store.submit({}), store.submit({})
    store.mark_enqueued(sent.id)
    store.claim(running.id, "w")
    time.sleep(0.2)
    assert set(store.unsent(older_than_s=0.1)) == {never.id, sent.id}
    store.mark_enqueued(never.id)
    assert store.unsent(older_than_s=0.1) == [sent.id]
    assert store.unsent(older_than_s=60) == []


def test_a_job_cancelled_while_its_worker_was_lost_ends_cancelled_instead_of_waiting_queued(store):
    job = store.submit({})
    store.claim(job.id, "gone")
    store.cancel(job.id)  # flagged; the worker that would stop it is dead
    time.sleep(0.15)
    assert store.requeue_lost(lease_s=0.1, max_lost=3) == ([], [])
    view = store.get(job.id)
    assert (view.status, view.lost, view.owner) == (JobStatus.CANCELLED, 1, None) and "cancelled" in view.error


def test_a_job_released_after_a_cancel_is_sent_again_and_its_claim_cancels_it(store):
    job = store.submit({})
    store.mark_enqueued(job.id)
    store.claim(job.id, "w")
    store.cancel(job.id)  # arrives between the worker's last heartbeat and its release on shutdown
    assert store.release(job.id, "w")
    time.sleep(0.15)
    assert store.unsent(older_than_s=0.1) == [job.id]  # its message may be lost: it must still end
    assert store.claim(job.id, "next") is Claim.DONE
    assert store.get(job.id).status is JobStatus.CANCELLED

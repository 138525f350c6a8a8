"""Run one job: claim it, start its command, keep the lease, end it.

A job is a training (`specserve train`, torchrun for nproc > 1), an answer regeneration (`specserve data
regenerate`) or an evaluation (`specserve eval`). Its command runs as a child process in its own process
group, writing to `state_dir/jobs/<id>/train.log`; its outputs stay in that folder (a training's checkpoints
in `checkpoints/`, a regeneration's `regenerated.jsonl`, an evaluation's `eval/`). Running the same job again
(after its worker died, or after a release on shutdown) therefore resumes it: `specserve train` resumes from
the latest checkpoint in `checkpoint.dir`, `specserve data regenerate` from the rows its output holds.
The command is started through `specserve.procs`, so on Linux the kernel kills it when its worker dies, and
every torchrun rank when torchrun dies: a lost worker never leaves a run behind that would race the retry.
A worker that cannot reach the store stops its command before its lease can expire, for the same reason.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from copy import deepcopy
from pathlib import Path

import yaml

from services.trainer.settings import TrainerSettings
from services.trainer.store import Claim, JobStatus, JobStore
from specserve.procs import ENV

log = logging.getLogger("specserve.trainer")

LOG_FILE = "train.log"
CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"


def job_dir(settings: TrainerSettings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def job_config(config: dict, directory: Path) -> dict:
    """The submitted config with the job's own checkpoint folder, resuming, and no progress bar (the log is a
    file)."""
    out = deepcopy(config)
    checkpoint = out.setdefault("checkpoint", {})
    checkpoint["dir"] = str((directory / CHECKPOINTS).resolve())
    checkpoint["resume"] = True  # a retry after a lost worker continues from the latest checkpoint
    out.setdefault("logging", {})["progress"] = False
    return out


KINDS = ("train", "regenerate", "eval")  # what a job runs: `specserve train`, `specserve data regenerate`, `eval`
OUTPUTS = {"regenerate": "regenerated.jsonl", "eval": "eval"}  # where the job's own --out points, in its folder


def cli_argv(kind: str, args: dict, directory: Path) -> list[str]:
    """The `specserve` arguments of a regenerate or eval job: `{"max_tokens": 96, "suite": ["a", "b"],
    "overwrite": true}` -> `--max-tokens 96 --suite a --suite b --overwrite`, then `--out` in the job's folder."""
    argv = ["data", "regenerate"] if kind == "regenerate" else [kind]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        for item in value if isinstance(value, list) else [value]:
            if item is True:
                argv.append(flag)
            elif item is not False and item is not None:
                argv += [flag, str(item)]
    return argv + ["--out", str((directory / OUTPUTS[kind]).resolve())]


def job_command(kind: str, params: dict, nproc: int, directory: Path) -> list[str]:
    """The child process of a job (torchrun for a training of nproc > 1), started through `specserve.procs` so
    that it dies with this worker; writes a training's config file."""
    guard = [sys.executable, "-m", "specserve.procs", str(os.getpid()), sys.executable]
    if kind != "train":
        return [*guard, "-m", "specserve.cli", *cli_argv(kind, params, directory)]
    config_path = directory / CONFIG_FILE
    config_path.write_text(yaml.safe_dump(job_config(params, directory), sort_keys=False))
    train = ["-m", "specserve.training.cli", "--config", str(config_path)]
    if nproc == 1:
        return [*guard, *train]
    return [*guard, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *train]


def job_result(kind: str, directory: Path) -> dict:
    """What a finished job leaves: the exported draft, the regenerated data, or the evaluation report."""
    summary = log_tail(directory / LOG_FILE, 40).strip()
    if kind == "train":
        return {"draft": str((directory / CHECKPOINTS / "final").resolve()), "summary": summary}
    if kind == "regenerate":
        return {"data": str((directory / OUTPUTS[kind]).resolve()), "summary": summary}
    report = (directory / OUTPUTS[kind]).resolve()
    return {"report": str(report / "results.md"), "results": str(report / "results.json"), "summary": summary}


def log_tail(path: Path, lines: int, max_bytes: int = 1 << 22) -> str:
    """The last `lines` lines of a text file, read backwards from its end, at most `max_bytes` of it."""
    return read_tail(path, lines, max_bytes)[0]


def read_tail(path: Path, lines: int, max_bytes: int = 1 << 22) -> tuple[str, int]:
    """`log_tail`, and the file's length it was read at (where following it goes on; 0 for no file)."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            start, pos, data = max(0, end - max_bytes), end, b""
            while pos > start and data.count(b"\n") <= lines:
                step = min(1 << 16, pos - start)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except FileNotFoundError:
        return "", 0
    return b"".join(data.splitlines(keepends=True)[-lines:]).decode("utf-8", "replace"), end


def read_from(path: Path, position: int, everything: bool, limit: int = 1 << 20) -> bytes:
    """Up to `limit` bytes of `path` after `position`; while the job runs, only whole lines (a line being
    written waits for its end, unless it is longer than `limit`)."""
    try:
        with path.open("rb") as f:
            f.seek(position)
            data = f.read(limit)
    except FileNotFoundError:
        return b""
    if everything or len(data) == limit and b"\n" not in data:
        return data
    return data[: data.rfind(b"\n") + 1]


def job_progress(kind: str, directory: Path) -> dict | None:
    """How far a job has come, from its files; None before there is anything to say.

    A training: `{"step", "total_steps", "metrics"}`, the newest record of its metrics.jsonl and the step
    count `specserve train` announces at its start. A regeneration: `{"rows_done", "total_rows",
    "complete"}`, from the progress file `specserve data regenerate` keeps next to its output. An evaluation:
    `{"runs_done", "runs_total", "tau"}`, one run per (draft, benchmark) with its τ keyed "draft on benchmark",
    from the lines `specserve eval` logs."""
    if kind == "eval":
        return _eval_progress(directory / LOG_FILE)
    if kind == "regenerate":
        try:
            state = json.loads((directory / f"{OUTPUTS[kind]}.progress.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return {"rows_done": state.get("rows_done"), "total_rows": (state.get("identity") or {}).get("rows"),
                "complete": bool(state.get("complete"))}
    if kind != "train":
        return None
    try:
        record = json.loads(log_tail(directory / CHECKPOINTS / "metrics.jsonl", 1) or "null")
    except json.JSONDecodeError:  # a line being written
        record = None
    if not isinstance(record, dict) or "step" not in record:
        return None
    try:
        with (directory / LOG_FILE).open("rb") as f:
            head = f.read(1 << 18).decode("utf-8", "replace")
        found = re.findall(r"training \w+: (\d+) steps", head)
    except FileNotFoundError:
        found = []
    step = record.pop("step")
    return {"step": step, "total_steps": int(found[-1]) if found else None, "metrics": record}


_EVAL_BANNER = re.compile(r"evaluation: (\d+) drafts x (\d+) benchmarks")
_EVAL_RUN = re.compile(r"(\S+) on (\S+): \d+ rounds, \d+ tokens, tau (\S+),")
_EVAL_LOG_READ = 1 << 22  # an evaluation logs a few lines per run: its first 4 MiB hold them all


def _eval_progress(log_file: Path) -> dict | None:
    try:
        with log_file.open("rb") as f:
            text = f.read(_EVAL_LOG_READ).decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    banners = list(_EVAL_BANNER.finditer(text))
    if not banners:
        return None
    last = banners[-1]  # a retried job's log holds every attempt: the newest counts
    drafts, benchmarks = map(int, last.groups())
    tau = {f"{draft} on {bench}": _finite(value) for draft, bench, value in _EVAL_RUN.findall(text, last.end())}
    return {"runs_done": len(tau), "runs_total": drafts * benchmarks, "tau": tau}


def _finite(value: str) -> float | None:
    """A logged number, None for nan (a run without rounds), which JSON cannot carry."""
    number = float(value)
    return number if math.isfinite(number) else None


class JobRunner:
    """Runs jobs for one worker process; `stop()` (worker shutdown) hands a running job back to the queue."""

    def __init__(self, settings: TrainerSettings, store: JobStore):
        self.settings, self.store = settings, store
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self, job_id: str, owner: str | None = None) -> str:
        """Claim and run `job_id` to its end; returns what happened (claimed jobs: their final status)."""
        owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        claim = self.store.claim(job_id, owner)
        if claim is not Claim.CLAIMED:
            log.info("job %s not run: %s", job_id, claim.value)
            return claim.value
        try:
            job = self.store.get(job_id)
            directory = job_dir(self.settings, job_id)
            directory.mkdir(parents=True, exist_ok=True)
            command = job_command(job.kind, job.config, job.nproc, directory)
            log.info("job %s (%s): attempt %d, %d process(es): %s", job_id, job.kind, job.attempts, job.nproc,
                     " ".join(command))
            with (directory / LOG_FILE).open("ab") as out:
                stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
                out.write(f"=== specserve trainer: attempt {job.attempts} by {owner} at {stamp}\n".encode())
                out.flush()
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, env={**os.environ, ENV: "1"})
        except Exception as exc:  # nothing started (a full volume, no interpreter): say why, do not retry
            self._record(job_id, owner, JobStatus.FAILED, error=f"could not start the job: {exc}")
            log.error("job %s: could not start: %s", job_id, exc)
            return JobStatus.FAILED.value
        try:
            return self._supervise(job_id, job.kind, owner, proc, directory)
        finally:
            if proc.poll() is None:  # an error escaped (a bug): never leave the command running unsupervised
                self._terminate(proc)

    def _supervise(self, job_id: str, kind: str, owner: str, proc: subprocess.Popen, directory: Path) -> str:
        beat = self.settings.heartbeat_s
        last_ok = time.monotonic()
        while True:
            try:
                code = proc.wait(timeout=beat)
                break
            except subprocess.TimeoutExpired:
                pass
            try:
                owned, cancel = self.store.heartbeat(job_id, owner)
                last_ok = time.monotonic()
            except Exception as exc:  # the store is unreachable: retry, but stop before the lease can expire
                if time.monotonic() - last_ok < self.settings.lease_s - 2 * beat - self.settings.stop_grace_s:
                    log.warning("job %s: heartbeat failed (%s); retrying", job_id, exc)
                    continue
                self._terminate(proc)
                log.error("job %s: no heartbeat for %.0f s (%s); stopped, the reaper queues it again", job_id,
                          time.monotonic() - last_ok, exc)
                return "lost"
            if not owned:  # the lease expired (this worker stalled) and the job was requeued: stop, write nothing
                self._terminate(proc)
                log.warning("job %s: lease lost, its command stopped", job_id)
                return "lost"
            if cancel:
                self._terminate(proc)
                self._record(job_id, owner, JobStatus.CANCELLED, proc.returncode, "cancelled on request")
                log.info("job %s cancelled", job_id)
                return JobStatus.CANCELLED.value
            if self._stopping.is_set():
                self._terminate(proc)
                if self._retry(lambda: self.store.release(job_id, owner)):
                    log.info("job %s released on shutdown; it resumes from where it stopped", job_id)
                    return "released"
                return "lost"
        if code == 0:
            result = job_result(kind, directory)
            self._record(job_id, owner, JobStatus.SUCCEEDED, 0, result=result)
            log.info("job %s succeeded: %s", job_id, {k: v for k, v in result.items() if k != "summary"})
            return JobStatus.SUCCEEDED.value
        # exit code 2: an input error the command explained in the log; anything else: a crash
        error = log_tail(directory / LOG_FILE, 20).strip() or f"{kind} exited with code {code}"
        self._record(job_id, owner, JobStatus.FAILED, code, error=error)
        log.warning("job %s failed with exit code %s", job_id, code)
        return JobStatus.FAILED.value

    def _record(self, job_id: str, owner: str, status: JobStatus, exit_code: int | None = None,
                error: str | None = None, result: dict | None = None) -> None:
        """End the job in the store, retrying a store that fails; a job this owner no longer holds is left as
        it is (its lease expired meanwhile: the reaper has queued it again)."""
        if not self._retry(lambda: self.store.finish(job_id, owner, status, exit_code, error, result)):
            log.warning("job %s: not recorded as %s (lease lost, or the store is down; the reaper queues it "
                        "again and the next attempt resumes)", job_id, status.value)

    def _retry(self, write) -> bool:
        """`write()` (a conditional store write returning whether it applied), retried while the store fails,
        for at most lease_s: False when it did not apply or the store stayed down."""
        deadline = time.monotonic() + self.settings.lease_s
        while True:
            try:
                return bool(write())
            except Exception as exc:
                if time.monotonic() > deadline:
                    log.error("store write failed for %.0f s: %s", self.settings.lease_s, exc)
                    return False
                time.sleep(self.settings.heartbeat_s)

    def _terminate(self, proc: subprocess.Popen) -> None:
        """SIGTERM the training's process group (torchrun and its workers), SIGKILL after stop_grace_s."""
        for sig, wait in ((signal.SIGTERM, self.settings.stop_grace_s), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue

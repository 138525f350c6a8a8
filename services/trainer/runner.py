"""Run one job: claim it, start its command, keep the lease, end it.

A job is a training (`specserve train`, torchrun for nproc > 1), an answer regeneration (`specserve data
regenerate`) or an evaluation (`specserve eval`). Its command runs as a child process in its own process
group, writing to `state_dir/jobs/<id>/train.log`; its outputs stay in that folder (a training's checkpoints
in `checkpoints/`, a regeneration's `regenerated.jsonl`, an evaluation's `eval/`). Running the same job again
(after its worker died, or after a release on shutdown) therefore resumes it: `specserve train` resumes from
the latest checkpoint in `checkpoint.dir`, `specserve data regenerate` from the rows its output holds.
On Linux the child is killed when its worker dies (PR_SET_PDEATHSIG), so a lost worker never leaves a run
behind that would race the retry.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from copy import deepcopy
from pathlib import Path

import yaml

from services.trainer.settings import TrainerSettings
from services.trainer.store import Claim, JobStatus, JobStore

log = logging.getLogger("specserve.trainer")

LOG_FILE = "train.log"
CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"


def job_dir(settings: TrainerSettings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def job_config(config: dict, directory: Path) -> dict:
    """The submitted config with the job's own checkpoint folder and no progress bar (the log is a file)."""
    out = deepcopy(config)
    out.setdefault("checkpoint", {})["dir"] = str((directory / CHECKPOINTS).resolve())
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
    """The child process of a job (torchrun for a training of nproc > 1); writes a training's config file."""
    if kind != "train":
        return [sys.executable, "-m", "specserve.cli", *cli_argv(kind, params, directory)]
    config_path = directory / CONFIG_FILE
    config_path.write_text(yaml.safe_dump(job_config(params, directory), sort_keys=False))
    train = ["-m", "specserve.training.cli", "--config", str(config_path)]
    if nproc == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *train]


def job_result(kind: str, directory: Path) -> dict:
    """What a finished job leaves: the exported draft, the regenerated data, or the evaluation report."""
    summary = log_tail(directory / LOG_FILE, 40).strip()
    if kind == "train":
        return {"draft": str((directory / CHECKPOINTS / "final").resolve()), "summary": summary}
    if kind == "regenerate":
        return {"data": str((directory / OUTPUTS[kind]).resolve()), "summary": summary}
    report = (directory / OUTPUTS[kind]).resolve()
    return {"report": str(report / "results.md"), "results": str(report / "results.json"), "summary": summary}


def log_tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            return b"".join(deque(f, maxlen=lines)).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def job_progress(directory: Path) -> dict | None:
    """`{"step", "total_steps", "metrics"}` of a job that has logged a step: the newest record of the run's
    metrics.jsonl, and the step count `specserve train` announces at its start; None before the first step."""
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


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux/glibc: the lease still keeps a second run from starting while this one reports
        pass


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
        owner = owner or f"{socket.gethostname()}:{os.getpid()}:{job_id}"
        claim = self.store.claim(job_id, owner, self.settings.lease_s)
        if claim is not Claim.CLAIMED:
            log.info("job %s not run: %s", job_id, claim.value)
            return claim.value
        job = self.store.get(job_id)
        directory = job_dir(self.settings, job_id)
        directory.mkdir(parents=True, exist_ok=True)
        command = job_command(job.kind, job.config, job.nproc, directory)
        log.info("job %s (%s): attempt %d, %d process(es): %s", job_id, job.kind, job.attempts, job.nproc,
                 " ".join(command))
        with (directory / LOG_FILE).open("ab") as out:
            out.write(f"=== specserve trainer: attempt {job.attempts} by {owner}\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, preexec_fn=_die_with_parent)
            except OSError as exc:  # nothing started: say why instead of leaving the lease to expire
                self.store.finish(job_id, owner, JobStatus.FAILED, error=f"could not start {command[0]}: {exc}")
                log.error("job %s: could not start the training: %s", job_id, exc)
                return JobStatus.FAILED.value
        return self._supervise(job_id, job.kind, owner, proc, directory)

    def _supervise(self, job_id: str, kind: str, owner: str, proc: subprocess.Popen, directory: Path) -> str:
        while True:
            try:
                code = proc.wait(timeout=self.settings.heartbeat_s)
                break
            except subprocess.TimeoutExpired:
                pass
            owned, cancel = self.store.heartbeat(job_id, owner)
            if not owned:  # the lease expired (this worker stalled) and the job was requeued: stop, write nothing
                self._terminate(proc)
                log.warning("job %s: lease lost, training stopped", job_id)
                return "lost"
            if cancel:
                self._terminate(proc)
                self.store.finish(job_id, owner, JobStatus.CANCELLED, proc.returncode, "cancelled on request")
                log.info("job %s cancelled", job_id)
                return JobStatus.CANCELLED.value
            if self._stopping.is_set():
                self._terminate(proc)
                self.store.release(job_id, owner)
                log.info("job %s released on shutdown; it resumes from its latest checkpoint", job_id)
                return "released"
        if code == 0:
            result = job_result(kind, directory)
            self.store.finish(job_id, owner, JobStatus.SUCCEEDED, 0, result=result)
            log.info("job %s succeeded: %s", job_id, {k: v for k, v in result.items() if k != "summary"})
            return JobStatus.SUCCEEDED.value
        # exit code 2: an input error the command explained in the log; anything else: a crash
        error = log_tail(directory / LOG_FILE, 20).strip() or f"{kind} exited with code {code}"
        self.store.finish(job_id, owner, JobStatus.FAILED, code, error=error)
        log.warning("job %s failed with exit code %s", job_id, code)
        return JobStatus.FAILED.value

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

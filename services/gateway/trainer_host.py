"""`specserve serve --trainer`: the gateway serves the training jobs itself, on the trainer's embedded default.

The architecture's embedded default puts the job store and queue on the one machine that serves: the
gateway app then answers `/v1/jobs...` with the trainer's own routes (its keys guard them, as every `/v1`
route), keeps the job store and the reaper, and starts one `specserve trainer-worker` child process (tied to
this process by `specserve.procs`, so it never outlives the gateway). Jobs run in that worker, beside the
model being served: they compete for the same cores while they run. The trainer's settings come from
`SPECSERVE_TRAINER_*` as for `specserve serve-trainer`, except `state_dir` (`--trainer-state-dir`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys

from fastapi import FastAPI

from services.gateway.settings import GatewaySettings
from services.trainer.app import trainer_state
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def hosted_trainer(app: FastAPI, settings: GatewaySettings):
    trainer = TrainerSettings(state_dir=settings.trainer_state_dir)
    async with trainer_state(app, trainer):
        command = [sys.executable, "-m", "specserve.procs", str(os.getpid()), sys.executable, "-m", "specserve.cli",
                   "trainer-worker", "--state-dir", str(trainer.state_dir)]
        worker = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        log.info("training jobs served here: state in %s, worker pid %d", trainer.state_dir.resolve(), worker.pid)
        try:
            yield
        finally:  # a warm shutdown hands a running job back to the queue: give it the time that takes
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(worker.wait, trainer.heartbeat_s + trainer.stop_grace_s + 10)
            except subprocess.TimeoutExpired:
                worker.kill()
                await asyncio.to_thread(worker.wait)

"""`python -m services.trainer [worker]`: the jobs API, or a worker, configured from SPECSERVE_TRAINER_* variables."""

import logging
import sys

from services.trainer.settings import TrainerSettings

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
if sys.argv[1:] == ["worker"]:
    from services.trainer.worker import run_worker

    run_worker(TrainerSettings())
else:
    from services.trainer.app import serve

    serve(TrainerSettings())

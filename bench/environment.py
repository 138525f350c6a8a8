"""The machine record every benchmark writes next to its figures (shared by the scripts in bench/)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import torch
import transformers


def cpu_info() -> dict:
    """CPU model, core and thread counts, and the versions that decide kernel choice."""
    model_name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": model_name or platform.processor(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__,
            "mkldnn": torch.backends.mkldnn.is_available(), "mkl": torch.backends.mkl.is_available()}

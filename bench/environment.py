"""What the scripts in bench/ share: the machine record each writes next to its figures, and the demo model's
arguments."""

from __future__ import annotations

import argparse
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


def demo_parser(description: str) -> argparse.ArgumentParser:
    """A parser (defaults shown, the description's layout kept) with the demo model's --target, --drafter and
    --prompts."""

    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=description, formatter_class=Formatter)
    p.add_argument("--target", default="models/demo/target", help="target folder (the bundled demo target)")
    p.add_argument("--drafter", default="dspark:models/demo/dspark", help="drafter spec of the speculative policies")
    p.add_argument("--prompts", default="models/demo/eval/python-heldout.jsonl",
                   help='{"turns": [...]} JSONL; the first turn of every row is a prompt')
    return p

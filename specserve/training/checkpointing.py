"""Training checkpoints: `step_N/{config.json, model.safetensors, training_state.pt}` plus a `latest` pointer.

A checkpoint is written into a hidden temporary folder, fsynced, renamed to `step_N` and only then
published by atomically replacing `latest`; a crash at any point leaves the previous checkpoint
intact and `latest` pointing at a complete folder. `model.safetensors` holds the fp32 master weights
(a drafter checkpoint `load_drafter` reads, with the target filling the frozen head); the training
state holds the optimizer (full tensors keyed by parameter name, whether the run used DDP or FSDP), the
schedule, every rank's RNG states (torch, numpy, python, CUDA) and the data position, which together
make a resumed run bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from specserve.data.atomic import atomic_write_bytes, fsync_dir
from specserve.drafters.checkpoint import FROZEN_KEYS, WEIGHTS_FILE, DraftModel, save_drafter
from specserve.errors import SpecServeError

LATEST = "latest"
STATE_FILE = "training_state.pt"
FORMAT = 2  # 2: optimizer state keyed by parameter name (1: by position, before FSDP)


class ResumeError(SpecServeError):
    """A checkpoint cannot be resumed by this run (another world size, batch layout or algorithm)."""


@dataclass
class Progress:
    """Where the run is and the layout it was run with (checked on resume)."""

    step: int  # optimizer steps done
    next_micro: int  # micro-batches consumed per rank (the data position)
    world_size: int
    global_batch_size: int
    local_batch_size: int
    algorithm: str
    seed: int


def rng_state() -> dict:
    """This process's RNG states, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.random.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder `root/latest` points at, or None when there is none."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / STATE_FILE).exists():
        raise ResumeError(f"{pointer} points at {path}, which is not a complete checkpoint")
    return path


def save_checkpoint(root: str | Path, model: DraftModel, progress: Progress, optimizer: dict, scheduler: dict,
                    rng: list[dict], include_frozen: bool = False, keep_last: int = 0) -> Path:
    """Write `root/step_N` atomically and point `root/latest` at it (call on one process only)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{progress.step}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_drafter(model, tmp, include_frozen=include_frozen)
    state = {"format": FORMAT, "progress": asdict(progress), "optimizer": optimizer, "scheduler": scheduler,
             "rng": rng}
    torch.save(state, tmp / STATE_FILE)
    for file in tmp.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)
    final = root / name
    if final.exists():  # left by a run that crashed after this step; identical content, replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_bytes(root / LATEST, name.encode())
    if keep_last > 0:
        _prune(root, keep_last, final)
    return final


def _prune(root: Path, keep_last: int, newest: Path) -> None:
    steps = sorted((p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    for old in steps[:-keep_last]:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model: DraftModel, expect: Progress) -> dict:
    """Load the weights into `model`, check the run layout matches, and return the training state.

    Raises ResumeError naming the setting that differs (world size, batch sizes, algorithm, seed).
    """
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise ResumeError(f"{path / STATE_FILE}: training-state format {state.get('format')!r}, this version "
                          f"resumes format {FORMAT} only; start a new checkpoint.dir")
    saved = Progress(**state["progress"])
    for field, label in (("world_size", "world size (processes)"), ("global_batch_size", "train.global_batch_size"),
                         ("local_batch_size", "train.local_batch_size"), ("algorithm", "model.algorithm"),
                         ("seed", "train.seed")):
        if getattr(saved, field) != getattr(expect, field):
            raise ResumeError(f"cannot resume {path}: it was written with {label} = {getattr(saved, field)}, this "
                              f"run has {getattr(expect, field)}; resume with the same setting (torchrun "
                              f"--nproc_per_node {saved.world_size} for the world size) or use a new checkpoint.dir")
    weights = load_file(path / WEIGHTS_FILE)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - set(FROZEN_KEYS):
        raise ResumeError(f"{path / WEIGHTS_FILE} does not match the draft: missing {sorted(missing)}, "
                          f"unexpected {sorted(unexpected)}")
    state["progress"] = saved
    return state

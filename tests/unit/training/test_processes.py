"""Real processes: `torchrun --nproc_per_node 2` on gloo (DDP and FSDP) equals one process, and killed or
interrupted runs resume exactly."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from specserve.training.config import from_dict
from specserve.training.trainer import Trainer

ROOT = Path(__file__).parents[3]


def write_config(config_dict, path: Path, **changes) -> Path:
    raw = copy.deepcopy(config_dict)
    raw["train"]["threads"] = 1
    for key, value in changes.items():
        section, name = key.split("__")
        raw[section][name] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}


def final_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / f"step_{step}" / "model.safetensors")


needs_torchrun = pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                                    reason="no torchrun")


def torchrun_two(cfg: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 -m specserve.training.cli --config cfg`, which must succeed."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "specserve.training.cli",
                           "--config", str(cfg)], env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def assert_same_training(two_run: Path, config_dict, tmp_path, local_batch_size: int) -> None:
    """The 2-process run's step-4 checkpoint equals one process's with `local_batch_size` (fp tolerance)."""
    single = copy.deepcopy(config_dict)
    single["train"].update(local_batch_size=local_batch_size, global_batch_size=4)
    single["checkpoint"]["dir"] = str(tmp_path / "single")
    Trainer(from_dict(single)).train()
    two, one = final_weights(two_run, 4), final_weights(tmp_path / "single", 4)
    assert set(two) == set(one), "the 2-process checkpoint holds the same tensors"
    initial = Trainer(from_dict({**single, "checkpoint": {**single["checkpoint"], "resume": False}}))
    moved = max((one[k] - initial.model.state_dict()[k]).abs().max().item() for k in one)
    gap = max((two[k] - one[k]).abs().max().item() for k in one)
    assert moved > 1e-3, "training moved the weights"
    print(f"moved {moved:.3g}, 2-process vs 1-process gap {gap:.3g}")
    assert gap < 1e-4 * max(1.0, moved), gap


@needs_torchrun
def test_two_gloo_processes_equal_one_process(config_dict, tmp_path):
    """Same global batch (4): 2 processes x 2 rows vs 1 process x 4 rows -> the same weights (fp tolerance)."""
    cfg = write_config(config_dict, tmp_path / "ddp.yaml", checkpoint__dir=str(tmp_path / "ddp"),
                       train__local_batch_size=2, train__global_batch_size=4)
    torchrun_two(cfg)
    assert_same_training(tmp_path / "ddp", config_dict, tmp_path, local_batch_size=4)


@needs_torchrun
def test_two_gloo_fsdp_processes_equal_one_process(config_dict, tmp_path):
    """FSDP2 with accumulation: 2 processes x 1 row x 2 micro-batches vs 1 process x 2 rows x 2 micro-batches
    (the same rows per micro-batch) -> the same weights, gathered into the same full checkpoint."""
    cfg = write_config(config_dict, tmp_path / "fsdp.yaml", checkpoint__dir=str(tmp_path / "fsdp"),
                       train__parallel="fsdp", train__local_batch_size=1, train__global_batch_size=4,
                       data__eval_rows=4)
    proc = torchrun_two(cfg)
    assert "parallel fsdp" in proc.stderr
    assert "eval/tau_probabilistic" in proc.stdout, "rank 0 evaluates the gathered draft"
    assert (tmp_path / "fsdp" / "final" / "model.safetensors").exists()
    assert_same_training(tmp_path / "fsdp", config_dict, tmp_path, local_batch_size=2)


@needs_torchrun
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_run_resumed_from_a_checkpoint_is_bit_identical(config_dict, tmp_path, parallel):
    """A 2-process run restarted from its step-2 checkpoint reaches its own step-4 weights bit for bit."""
    straight = tmp_path / "straight"
    torchrun_two(write_config(config_dict, tmp_path / "straight.yaml", checkpoint__dir=str(straight),
                              train__parallel=parallel))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "step_2", resumed / "step_2")
    (resumed / "latest").write_text("step_2")
    proc = torchrun_two(write_config(config_dict, tmp_path / "resumed.yaml", checkpoint__dir=str(resumed),
                                     train__parallel=parallel))
    assert "resumed from" in proc.stderr
    again, expected = final_weights(resumed, 4), final_weights(straight, 4)
    assert set(again) == set(expected)
    assert all(torch.equal(again[k], expected[k]) for k in expected)


def test_killed_run_resumes_to_the_same_weights(config_dict, tmp_path):
    """SIGKILL a `specserve train` process after a few checkpoints; rerunning it ends bit-identical."""
    steps = 12
    cfg = write_config(config_dict, tmp_path / "kill.yaml", checkpoint__dir=str(tmp_path / "killed"),
                       train__max_steps=steps, checkpoint__every_steps=1, logging__every_steps=5)
    command = [sys.executable, "-m", "specserve.training.cli", "--config", str(cfg)]
    proc = subprocess.Popen(command, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = tmp_path / "killed" / "latest"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.exists() and int(latest.read_text().split("_")[1]) >= 3:
            proc.kill()
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    killed_at = int(latest.read_text().split("_")[1])
    assert proc.returncode != 0 and killed_at < steps, "the run was killed before it finished"
    done = subprocess.run(command, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    straight = copy.deepcopy(config_dict)
    straight["train"]["max_steps"] = steps
    straight["checkpoint"].update(dir=str(tmp_path / "straight"), every_steps=steps)
    Trainer(from_dict(straight)).train()
    resumed, expected = final_weights(tmp_path / "killed", steps), final_weights(tmp_path / "straight", steps)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)

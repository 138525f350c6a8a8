"""The trainer: checkpoints, bit-exact resume, the resume guards, the metrics log and the exported draft."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from specserve.drafters.checkpoint import load_drafter
from specserve.training.checkpointing import ResumeError
from specserve.training.config import from_dict
from specserve.training.distributed import DistContext
from specserve.training.trainer import Trainer


def make(config_dict, **changes) -> Trainer:
    raw = copy.deepcopy(config_dict)
    for key, value in changes.items():
        section, name = key.split("__")
        raw[section][name] = value
    return Trainer(from_dict(raw))


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_bit_identical(a: Trainer, b: Trainer) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert a.scheduler.state_dict()["last_epoch"] == b.scheduler.state_dict()["last_epoch"]


@pytest.mark.parametrize("algorithm", ["dspark", "eagle3"])
def test_interrupted_and_resumed_run_is_bit_identical(config_dict, tmp_path, algorithm):
    """4 steps (2 micro-batches each, over an epoch boundary) vs 3 steps, a 'crash', and a resume to 4."""
    common = dict(model__algorithm=algorithm, model__num_layers=1, train__global_batch_size=8,
                  train__local_batch_size=4, train__max_steps=6, checkpoint__every_steps=3)
    straight = make(config_dict, checkpoint__dir=str(tmp_path / "a"), **common)
    straight.train()
    interrupted = make(config_dict, checkpoint__dir=str(tmp_path / "b"), **common)
    interrupted.total_steps = 3  # stops (and checkpoints) at step 3 of the 6-step schedule
    interrupted.train()
    assert (tmp_path / "b" / "latest").read_text() == "step_3"
    resumed = make(config_dict, checkpoint__dir=str(tmp_path / "b"), **common)
    assert (resumed.step, resumed.next_micro) == (3, 6)
    resumed.train()
    assert resumed.step == 6
    assert_bit_identical(straight, resumed)
    log = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))  # step 3's record is not duplicated


def test_checkpoint_layout_metrics_and_export(config_dict, tiny_target_dir, tmp_path):
    trainer = make(config_dict)
    result = trainer.train()
    run = tmp_path / "run"
    assert (run / "latest").read_text() == "step_4"
    for step in ("step_2", "step_4"):
        assert sorted(p.name for p in (run / step).iterdir()) == ["config.json", "model.safetensors",
                                                                   "training_state.pt"]
    assert "embed_tokens.weight" not in load_file(run / "step_4" / "model.safetensors")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for name in ("train/loss", "train/ce_loss", "train/l1_loss", "train/confidence_loss", "train/accept_rate@0",
                 "train/accept_rate@2", "train/tau_probabilistic", "train/grad_norm", "lr", "tokens_per_s"):
        assert name in records[-1], name
    assert 1.0 <= records[-1]["train/tau_probabilistic"] <= 4.0
    assert result.export == run / "final"
    from specserve.target.model import CausalLM

    target = CausalLM.from_pretrained(str(tiny_target_dir))
    loaded = load_drafter(result.export, target_model=target.model)
    assert loaded.cfg.kind == "dspark" and loaded.cfg.block_size == 3
    assert torch.equal(loaded.fc.weight, trainer.model.fc.weight)
    assert torch.equal(loaded.lm_head.weight, target.model.get_output_embeddings().weight)


def test_training_lowers_the_loss(config_dict):
    trainer = make(config_dict, train__max_steps=30, train__global_batch_size=8, train__local_batch_size=8,
                   logging__every_steps=10, checkpoint__every_steps=100)
    first = trainer.evaluate(trainer.sources.train, batch_size=8)["loss"]
    trainer.train()
    assert trainer.evaluate(trainer.sources.train, batch_size=8)["loss"] < 0.9 * first


def test_resume_with_another_world_size_or_batch_is_refused(config_dict):
    make(config_dict, train__max_steps=2).train()
    with pytest.raises(ResumeError, match=r"world size \(processes\) = 1, this run has 2.*nproc_per_node 1"):
        Trainer(from_dict(config_dict), ctx=DistContext(rank=0, world_size=2))
    with pytest.raises(ResumeError, match="train.local_batch_size = 2, this run has 1"):
        make(config_dict, train__local_batch_size=1)


def test_gradient_accumulation_layout(config_dict):
    trainer = make(config_dict, train__global_batch_size=8, train__local_batch_size=2, train__max_steps=1)
    assert trainer.accumulation == 4 and trainer.steps_per_epoch == 40 // 8
    trainer.train()
    assert trainer.next_micro == 4
    with pytest.raises(Exception, match="not a multiple"):
        make(config_dict, train__global_batch_size=5)


def test_bf16_autocast_keeps_fp32_master_weights(config_dict):
    trainer = make(config_dict, train__precision="bf16", train__max_steps=2)
    result = trainer.train()
    assert trainer.bf16 and all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert torch.isfinite(torch.tensor(result.metrics["train/loss"]))

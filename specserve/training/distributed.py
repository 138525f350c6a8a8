"""Process group, device and model wrapping for single- and multi-process (torchrun) training.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain `python -m` run is one process and needs no
process group. Multi-process CPU training uses gloo and DDP; on CUDA the backend is NCCL and the model
is wrapped in FSDP without sharding (DDP semantics, DeepSpec's setup) unless `parallel = ddp`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process stands: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over every process (in place; returned for chaining). Identity for one process."""
        if not self.distributed:
            return tensor
        if self.device.type == "cuda" and tensor.device.type != "cuda":  # NCCL reduces device tensors only
            moved = tensor.to(self.device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            return tensor.copy_(moved)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather_objects(self, obj) -> list:
        """Every process's `obj`, in rank order, on every process."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def init_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group (if launched by torchrun) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = cuda, but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=target)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (if this process joined one)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def parallel_mode(ctx: DistContext, requested: str) -> str:
    """none (one process), ddp or fsdp; FSDP needs CUDA."""
    if not ctx.distributed:
        return "none"
    if requested == "fsdp" and ctx.device.type != "cuda":
        raise RuntimeError("train.parallel = fsdp needs CUDA devices; use ddp on CPU")
    if requested == "auto":
        return "fsdp" if ctx.device.type == "cuda" else "ddp"
    return requested


def wrap_model(module: nn.Module, ctx: DistContext, mode: str) -> nn.Module:
    """The module every process runs forward/backward through: itself, DDP or unsharded FSDP."""
    if mode == "none":
        return module
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    # the frozen embedding/head sit next to trainable weights: use_orig_params allows mixed requires_grad
    return FullyShardedDataParallel(module, sharding_strategy=ShardingStrategy.NO_SHARD, use_orig_params=True,
                                    device_id=ctx.device)

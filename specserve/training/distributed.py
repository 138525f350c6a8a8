"""Process group, device, model wrapping and full (unsharded) state for single- and multi-process training.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain `python -m` run is one process and needs no
process group. The backend is NCCL on CUDA and gloo on CPU. `train.parallel` picks the wrapper:
DDP (a full replica per process, gradients all-reduced) or FSDP2 (`fully_shard`: each draft layer and
the rest of the model sharded across processes, parameters all-gathered for forward and backward,
gradients reduce-scattered, so every process holds 1/N of the weights, gradients and AdamW state
between steps). Both compute the same update; FSDP2 runs on CPU/gloo too, which is how it is tested.

Checkpoints hold full tensors whatever the wrapper: the optimizer state is read and written through
`torch.distributed.checkpoint.state_dict` in its full, parameter-name-keyed form, so a checkpoint
written under DDP resumes under FSDP and the reverse (with the same world size).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

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
    """Leave the process group (if this process joined one). No barrier: after a failure on this rank the
    others may be stuck in a collective, and this process must exit so that torchrun stops them."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def parallel_mode(ctx: DistContext, requested: str) -> str:
    """none (one process), ddp or fsdp; `auto` is FSDP on CUDA (DeepSpec's setup) and DDP on CPU."""
    if not ctx.distributed:
        return "none"
    if requested == "auto":
        return "fsdp" if ctx.device.type == "cuda" else "ddp"
    return requested


def wrap_model(module: nn.Module, ctx: DistContext, mode: str, shard_units: Iterable[nn.Module] = ()) -> nn.Module:
    """The module every process runs forward/backward through: itself, DDP, or FSDP2-sharded in place.

    Under FSDP each of `shard_units` (the draft's decoder layers) is its own all-gather group and
    everything else (embedding, head, projections) belongs to `module`'s group, which must be the module
    whose `forward` runs the whole step: FSDP2 gathers a group's parameters in its module's forward hook.
    """
    if mode == "none":
        return module
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    for unit in shard_units:
        fully_shard(unit, mesh=mesh)
    return fully_shard(module, mesh=mesh)


def gradient_sync(module: nn.Module, mode: str, enabled: bool) -> contextlib.AbstractContextManager:
    """Context of one micro-batch's backward; `enabled=False` keeps its gradients local (accumulation)."""
    if enabled or mode == "none":
        return contextlib.nullcontext()
    if mode == "ddp":
        return module.no_sync()
    return _fsdp_no_sync(module)


@contextlib.contextmanager
def _fsdp_no_sync(module: nn.Module):
    module.set_requires_gradient_sync(False)  # FSDP2 accumulates unsharded gradients until the next synced backward
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


_FULL_ON_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s unsharded state on rank 0's CPU, empty on the other ranks (collective under FSDP)."""
    return get_model_state_dict(model, options=_FULL_ON_RANK0)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's unsharded state keyed by parameter name, on rank 0's CPU (collective under FSDP)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL_ON_RANK0)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a `full_optimizer_state` (every rank passes the whole of it; FSDP keeps its own shard)."""
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

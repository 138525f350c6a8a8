"""The training loop of one process: micro-batches, accumulation, AdamW step, logging, checkpoints, resume.

Layout: a step consumes `global_batch_size` sequences = world size x `local_batch_size` x accumulation.
Micro-batch i of an epoch is batch i of `epoch_order(seed, epoch)` for this rank, so the data position
is one integer (micro-batches consumed) and a resumed run reads exactly the batches it would have read.
Anchors are keyed by (seed, epoch, row) and the draft's init by the seed, so no training randomness
comes from global RNG state; the RNG states are checkpointed anyway for anything a user adds.

Each micro-batch's loss is normalised over every process for that micro-batch (DeepSpec's semantics)
and divided by the accumulation count. Precision: fp32 master weights; `bf16` runs the forward under
bf16 autocast (default on CUDA); CPU defaults to fp32, which makes CPU resumes bit-exact.

Under FSDP no process holds the whole draft, so checkpoints, the export and the held-out evaluation
go through `unsharded()`, which gathers the weights into a plain copy on rank 0.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from specserve.data.features import FeatureBatch, FeatureSource, epoch_order
from specserve.drafters.checkpoint import DraftModel, model_class, save_drafter
from specserve.errors import InvalidRequestError
from specserve.training.build import DataSources, build_draft, build_sources, load_target, needs_final
from specserve.training.checkpointing import Progress, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint
from specserve.training.checkpointing import set_rng_state as restore_rng
from specserve.training.config import TrainConfig
from specserve.training.distributed import (
    DistContext,
    full_model_state,
    full_optimizer_state,
    gradient_sync,
    load_optimizer_state,
    parallel_mode,
    wrap_model,
)
from specserve.training.dspark_loss import DSparkLossWeights
from specserve.training.metrics import MetricSums
from specserve.training.metrics_log import MetricsLog, summary_writer_class
from specserve.training.objective import DraftObjective, ObjectiveSettings
from specserve.training.schedule import build_optimizer

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports."""

    steps: int
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged window
    eval_metrics: dict[str, float] = field(default_factory=dict)  # held-out rows, after training
    tokens_per_s: float = 0.0  # global (all processes), over this invocation
    export: Path | None = None  # the exported draft (rank 0)


class Trainer:
    """Trains one draft; `target` and `sources` may be passed in (tests, the demo) instead of loaded."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext | None = None, target=None,
                 sources: DataSources | None = None):
        self.cfg, self.ctx = cfg, ctx or DistContext()
        summary_writer_class(cfg.logging.tensorboard)  # a required, missing TensorBoard fails before any work
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.target = target or load_target(cfg, self.ctx.device)
        self.model = build_draft(cfg, self.target)
        layers = tuple(self.model.cfg.target_layer_ids)
        self.sources = sources or build_sources(cfg, self.target, layers, needs_final(cfg))
        self._layout(len(self.sources.train))
        ce, l1, conf = cfg.alphas()
        self.settings = ObjectiveSettings(DSparkLossWeights(ce, l1, conf, cfg.loss.loss_decay_gamma),
                                          cfg.model.num_anchors, cfg.loss.step_loss_decay, cfg.train.seed)
        self.step, self.next_micro = 0, 0
        self.root = Path(cfg.checkpoint.dir)
        resume = self._load_weights()
        self.mode = parallel_mode(self.ctx, cfg.train.parallel)
        objective = DraftObjective(self.model, self.settings, reduce=self.ctx.sum, world_size=self.ctx.world_size)
        self.wrapped = wrap_model(objective, self.ctx, self.mode, shard_units=self.model.layers)
        # after wrapping: FSDP replaces the parameters by their shards, which the optimizer must hold
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.optim, self.total_steps)
        if resume is not None:
            self._load_state(resume)
        precision = cfg.train.precision
        self.bf16 = precision == "bf16" or (precision == "auto" and self.ctx.device.type == "cuda")
        self._orders: dict[int, list[list[int]]] = {}

    # ---- layout and data position ---------------------------------------------------------------
    def _layout(self, num_rows: int) -> None:
        t, world = self.cfg.train, self.ctx.world_size
        if t.global_batch_size % (world * t.local_batch_size):
            raise InvalidRequestError("train.global_batch_size", f"{t.global_batch_size} is not a multiple of world "
                                      f"size {world} x train.local_batch_size {t.local_batch_size}")
        self.accumulation = t.global_batch_size // (world * t.local_batch_size)
        micro_per_epoch = num_rows // (world * t.local_batch_size)
        self.steps_per_epoch = micro_per_epoch // self.accumulation
        if self.steps_per_epoch == 0:
            raise InvalidRequestError("train.global_batch_size", f"{t.global_batch_size} sequences per step, but the "
                                      f"data set has only {num_rows} rows")
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch

    def _micro_batch(self, micro: int) -> tuple[int, FeatureBatch]:
        """(epoch, this rank's batch) of micro-batch number `micro` (counted from the start of the run)."""
        per_epoch = self.steps_per_epoch * self.accumulation
        epoch, pos = divmod(micro, per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(len(self.sources.train), self.cfg.train.local_batch_size,
                                               self.cfg.train.seed, epoch, self.ctx.rank, self.ctx.world_size)}
        batch = self.sources.train.batch(self._orders[epoch][pos])
        return epoch, _to_device(batch, self.ctx.device)

    def _progress(self) -> Progress:
        t = self.cfg.train
        return Progress(step=self.step, next_micro=self.next_micro, world_size=self.ctx.world_size,
                        global_batch_size=t.global_batch_size, local_batch_size=t.local_batch_size,
                        algorithm=self.cfg.model.algorithm, seed=t.seed)

    # ---- checkpoints ----------------------------------------------------------------------------
    def _load_weights(self) -> dict | None:
        """Load `latest`'s weights (before wrapping) and return its training state; None on a fresh run."""
        path = latest_checkpoint(self.root) if self.cfg.checkpoint.resume else None
        if path is None:
            return None
        state = load_checkpoint(path, self.model, self._progress())
        state["path"] = path
        return state

    def _load_state(self, state: dict) -> None:
        """Restore the optimizer, the schedule, this rank's RNG states and the data position."""
        load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"][self.ctx.rank])
        self.step, self.next_micro = state["progress"].step, state["progress"].next_micro
        if self.ctx.is_main:
            log.info("resumed from %s at step %d (%d micro-batches consumed)", state["path"], self.step,
                     self.next_micro)

    def save(self) -> Path | None:
        """Checkpoint the current step (collective: every rank must call it; rank 0 writes)."""
        rngs = self.ctx.gather_objects(rng_state())
        model = self.unsharded()
        optimizer = full_optimizer_state(self.model, self.optimizer)
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(self.root, model, self._progress(), optimizer, self.scheduler.state_dict(), rngs,
                                   self.cfg.checkpoint.include_frozen, self.cfg.checkpoint.keep_last)
        self.ctx.barrier()
        return path

    def unsharded(self) -> DraftModel | None:
        """The draft with all its weights on rank 0, None elsewhere (collective: every rank must call it).

        Without FSDP that is the trained module itself. Under FSDP it is a plain copy on the CPU built from
        the gathered weights; building it draws no numbers from the global RNG, which is checkpointed.
        """
        if self.mode != "fsdp":
            return self.model if self.ctx.is_main else None
        weights = full_model_state(self.model)
        if not self.ctx.is_main:
            return None
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            model = model_class(self.model.cfg)(self.model.cfg)
        model.load_state_dict(weights)
        return model

    def export(self, model: DraftModel | None = None) -> Path:
        """The trained draft (or `model`, its `unsharded()` copy) as `dir/final/` in `checkpoint.export_dtype`."""
        model = model if model is not None else self.model
        model = copy.deepcopy(model).to(_DTYPES[self.cfg.checkpoint.export_dtype])
        return save_drafter(model, self.root / "final", include_frozen=self.cfg.checkpoint.include_frozen)

    # ---- the loop -------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Run until `total_steps` (checkpointing and logging on the way), export, evaluate held-out rows."""
        cfg, ctx = self.cfg, self.ctx
        result = TrainResult(steps=self.step)
        metrics_log = MetricsLog(self.root, ctx.is_main, cfg.logging.tensorboard, resume_step=self.step)
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", desc=f"train {cfg.model.algorithm}",
                   disable=not (cfg.logging.progress and ctx.is_main), dynamic_ncols=True)
        sums, tokens, window_start = MetricSums(), 0, time.perf_counter()
        total_tokens, t0 = 0, time.perf_counter()
        self.wrapped.train()
        while self.step < self.total_steps:
            tokens += self._step(sums)
            bar.update(1)
            if self.step % cfg.logging.every_steps == 0 or self.step == self.total_steps:
                window = torch.tensor([float(tokens)], dtype=torch.float64)
                ctx.sum(window)
                sums.all_reduce(ctx.sum)
                elapsed = time.perf_counter() - window_start
                values = {f"train/{k}": v for k, v in sums.values().items()}
                values.update({"lr": self.scheduler.get_last_lr()[0], "tokens_per_s": float(window) / elapsed,
                               "epoch": self.next_micro / (self.steps_per_epoch * self.accumulation)})
                metrics_log.write(self.step, values)
                bar.set_postfix(loss=f"{values.get('train/loss', 0):.3f}",
                                tau=f"{values.get('train/tau_probabilistic', 0):.2f}")
                result.metrics = values
                total_tokens += float(window)
                sums.clear()
                tokens, window_start = 0, time.perf_counter()
            if self.step % cfg.checkpoint.every_steps == 0 or self.step == self.total_steps:
                self.save()
        bar.close()
        result.steps = self.step
        result.tokens_per_s = total_tokens / max(time.perf_counter() - t0, 1e-9)
        final = self.unsharded()
        if ctx.is_main:
            result.export = self.export(final)
            if self.sources.heldout is not None:
                final = final.to(ctx.device)
                result.eval_metrics = {f"eval/{k}": v for k, v in self.evaluate(self.sources.heldout, model=final)
                                       .items()}
                metrics_log.write(self.step, result.eval_metrics)
        metrics_log.close()
        ctx.barrier()
        return result

    def _step(self, sums: MetricSums) -> int:
        """One optimizer step (accumulating micro-batches); returns the real tokens this rank consumed."""
        tokens = 0
        for k in range(self.accumulation):
            epoch, batch = self._micro_batch(self.next_micro)
            with gradient_sync(self.wrapped, self.mode, enabled=k == self.accumulation - 1):
                with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    loss, terms = self.wrapped(batch, epoch)
                (loss / self.accumulation).backward()
            sums.add(terms)
            sums.add({"loss": (loss.detach() / self.ctx.world_size, 1.0 / self.ctx.world_size)})
            tokens += int(batch.lengths.sum())
            self.next_micro += 1
        max_norm = self.cfg.optim.max_grad_norm if self.cfg.optim.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], max_norm)
        if isinstance(norm, DTensor):  # FSDP: the norm over every process's shards
            norm = norm.full_tensor()
        sums.add({"grad_norm": (float(norm) / self.ctx.world_size, 1.0 / self.ctx.world_size)})
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return tokens

    @torch.no_grad()
    def evaluate(self, source: FeatureSource, batch_size: int | None = None,
                 model: DraftModel | None = None) -> dict[str, float]:
        """Loss terms, accept rates and tau_probabilistic on every row of `source` (this process only), for
        the trained draft or `model` (under FSDP, its `unsharded()` copy: a sharded draft cannot run alone)."""
        model = model if model is not None else self.model
        objective = DraftObjective(model, self.settings).eval()
        sums = MetricSums()
        size = batch_size or self.cfg.train.local_batch_size
        for start in range(0, len(source), size):
            batch = _to_device(source.batch(range(start, min(start + size, len(source)))), self.ctx.device)
            with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss, terms = objective(batch, 0)
            sums.add(terms)
            sums.add({"loss": (loss, 1.0)})
        model.train()
        return sums.values()


def _to_device(batch: FeatureBatch, device: torch.device) -> FeatureBatch:
    if batch.input_ids.device == device:
        return batch
    move = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()}
    return FeatureBatch(**move)

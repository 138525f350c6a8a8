"""Assemble a run from its config: the frozen target, a fresh (or resumed-from) draft, the feature sources.

A fresh draft gets the target's text config with the draft fields (`build_draft_config`), transformers'
initialisation (normal(0, initializer_range) linear and Markov weights, unit norms), and copies of the
target's embedding and LM head, frozen: every draft shares them (algorithms.md section 2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from specserve.data.cache_reader import FeatureCache
from specserve.data.features import FeatureSource, check_tap_layers, default_tap_layers
from specserve.data.fingerprint import fingerprint
from specserve.data.online import OnlineFeatures
from specserve.data.prompts import read_prompts, split_rows
from specserve.data.tokenization import ChatTokenizer, tokenize_rows
from specserve.drafters.checkpoint import FROZEN_KEYS, DraftModel, load_drafter, model_class
from specserve.drafters.draft_config import DraftConfig, build_draft_config
from specserve.errors import InvalidRequestError
from specserve.target.model import CausalLM
from specserve.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class DataSources:
    """The training rows and (optionally) held-out rows for the final evaluation."""

    train: FeatureSource
    heldout: FeatureSource | None = None


def load_target(cfg: TrainConfig, device: torch.device) -> CausalLM:
    """The frozen target (weights, tokenizer, chat template) on this process's device."""
    return CausalLM.from_pretrained(cfg.model.target, dtype=cfg.model.target_dtype, device=str(device))


def tap_layers(cfg: TrainConfig, target: CausalLM) -> tuple[int, ...]:
    ids = cfg.model.target_layer_ids or default_tap_layers(target.num_layers)
    return check_tap_layers(ids, target.num_layers)


def draft_config(cfg: TrainConfig, target: CausalLM) -> DraftConfig:
    """The new draft's config from the run's `model` section and the target's config."""
    m = cfg.model
    num_layers = m.num_layers if m.num_layers is not None else (1 if m.algorithm == "eagle3" else 5)
    mask_id = m.mask_token_id
    if mask_id is None and m.algorithm != "eagle3":
        mask_id = getattr(target.tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise InvalidRequestError("model.mask_token_id", "required: the target's tokenizer has no mask token")
    raw = build_draft_config(target.config, m.algorithm, target_layer_ids=tap_layers(cfg, target),
                             num_layers=num_layers, block_size=m.block_size, mask_token_id=mask_id,
                             markov_rank=m.markov_rank, markov_head_type=m.markov_head_type,
                             confidence_head=m.confidence_head, confidence_with_markov=m.confidence_with_markov,
                             num_anchors=m.num_anchors, ttt_length=m.ttt_length,
                             step_loss_decay=cfg.loss.step_loss_decay, target_name_or_path=m.target)
    if m.intermediate_size is not None:
        raw["intermediate_size"] = int(m.intermediate_size)
    return DraftConfig.from_dict(raw)


def build_draft(cfg: TrainConfig, target: CausalLM) -> DraftModel:
    """A fresh draft (seeded init) or the `model.init_from` checkpoint; fp32, frozen shared embedding and head."""
    if cfg.model.init_from:
        model = load_drafter(cfg.model.init_from, target_model=target.model, device=target.device,
                             dtype=torch.float32)
    else:
        dcfg = draft_config(cfg, target)
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.train.seed)
        with torch.device(target.device):
            model = model_class(dcfg)(dcfg)
        init_weights(model, float(dcfg.raw.get("initializer_range", 0.02)))
        torch.random.set_rng_state(generator_state)
        with torch.no_grad():
            model.embed_tokens.weight.copy_(target.model.get_input_embeddings().weight)
            model.lm_head.weight.copy_(target.model.get_output_embeddings().weight)
    if (model.cfg.kind == "eagle3") != (cfg.model.algorithm == "eagle3"):
        raise InvalidRequestError("model.init_from", f"holds a {model.cfg.kind} draft, the run trains "
                                                     f"{cfg.model.algorithm}")
    for name, param in model.named_parameters():
        param.requires_grad_(name not in FROZEN_KEYS)
    return model.float().train()


@torch.no_grad()
def init_weights(model: nn.Module, std: float) -> None:
    """transformers' Qwen3 initialisation: linear and embedding weights ~ N(0, std), biases 0."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            module.weight.normal_(0.0, std)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()


def needs_final(cfg: TrainConfig) -> bool:
    """Whether the loss needs the target's final hidden state (p_t); DFlash uses it only for metrics."""
    alphas = cfg.alphas()
    return cfg.model.algorithm == "eagle3" or alphas[1] > 0 or alphas[2] > 0


def build_sources(cfg: TrainConfig, target: CausalLM, layers: tuple[int, ...], final: bool) -> DataSources:
    """Training (and held-out) feature sources: online from `data.train_file`, or the checked cache.

    Online features always include the final hidden state (one norm more per row), so DFlash runs log the
    accept rates too; a cache must hold it when the loss needs it (`final`).
    """
    d = cfg.data
    heldout = None
    if d.train_file and (d.source == "online" or d.eval_rows > 0):
        chat = ChatTokenizer(target.tokenizer, d.max_length, d.enable_thinking)
        prompts = read_prompts(d.train_file, d.on_error)
        train_rows, heldout_rows = split_rows(prompts.rows, d.heldout_percent)
        if d.split == "all":
            train_rows = prompts.rows
        if d.eval_rows > 0 and heldout_rows:
            tokens = list(tokenize_rows(heldout_rows[: d.eval_rows], chat, d.train_file, d.on_error))
            heldout = OnlineFeatures(target, tokens, layers, final=True, name=cfg.model.target)
        if d.source == "online":
            # rows without a supervised token carry no loss, and `build_cache` leaves them out too: keeping the
            # same rows keeps the epoch order (and so the run) identical between online and cached features
            tokens = [r for r in tokenize_rows(train_rows, chat, d.train_file, d.on_error) if r.loss_mask.any()]
            log.info("%s: %d training rows, %d tokens", d.train_file, len(tokens), sum(len(r) for r in tokens))
            return DataSources(OnlineFeatures(target, tokens, layers, final=True, name=cfg.model.target),
                               heldout)
    expect = fingerprint(target, layers, cfg.model.target)
    cache = FeatureCache(d.cache, expect=expect, require_final=final)
    log.info("%s: %d cached rows, %d tokens", d.cache, len(cache), cache.num_tokens)
    return DataSources(cache, heldout)

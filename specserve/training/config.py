"""Typed training configuration: YAML/JSON files plus dotted command-line overrides.

A config file is data, never code: `.yaml`/`.yml`/`.json` parsed with `yaml.safe_load`. Every key is
checked against the dataclasses below; an unknown key is an error that names it and lists the closest
valid keys, and a value of the wrong type names the key and the type it needs. Defaults are
DeepSpec's shipped values (algorithms.md section 5) unless noted.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from specserve.errors import InvalidRequestError

ALGORITHMS = ("dspark", "dflash", "eagle3")
# (ce, l1, confidence) α per algorithm
DEFAULT_ALPHAS = {"dspark": (0.1, 0.9, 1.0), "dflash": (1.0, 0.0, 0.0)}


@dataclass
class ModelConfig:
    """The target and the draft to train."""

    algorithm: str = "dspark"  # dspark | dflash | eagle3
    target: str = ""  # target causal LM: local folder or hub id (required)
    target_dtype: str = "float32"  # dtype the frozen target runs in (online features, frozen head)
    target_layer_ids: list[int] | None = None  # taps; default: 5 spread evenly (Qwen3-4B: 1,9,17,25,33)
    num_layers: int | None = None  # draft decoder layers; default 5 (DSpark/DFlash), 1 (Eagle3, required)
    intermediate_size: int | None = None  # draft MLP width; default: the target's
    block_size: int = 7  # γ (DSpark/DFlash)
    num_anchors: int = 512  # N anchors per sequence (DSpark/DFlash)
    mask_token_id: int | None = None  # default: the tokenizer's mask token
    markov_rank: int = 256  # sequential head rank r (DSpark; 0 = none)
    markov_head_type: str = "vanilla"  # vanilla | gated | rnn
    confidence_head: bool = True  # DSpark
    confidence_with_markov: bool = True  # confidence head also reads W1[x_prev]
    ttt_length: int = 7  # Eagle3 training-time-test steps
    init_from: str | None = None  # start from this draft checkpoint (its config.json decides the architecture)


@dataclass
class LossConfig:
    """Loss weights. α left at null take the algorithm's defaults (DSpark 0.1/0.9/1.0, DFlash 1/0/0)."""

    ce_alpha: float | None = None  # weight of the cross-entropy term
    l1_alpha: float | None = None  # weight of the L1 (total variation) term
    confidence_alpha: float | None = None  # weight of the confidence-head BCE term
    loss_decay_gamma: float = 4.0  # slot weight exp(-j / gamma)
    step_loss_decay: float = 0.8  # Eagle3: step k weighs decay^k


@dataclass
class DataConfig:
    """Where training rows and their target features come from."""

    source: str = "online"  # online (run the target in the step) | cache (a `specserve data cache` folder)
    train_file: str | None = None  # regenerated conversations JSONL (online; held-out evaluation)
    cache: str | None = None  # feature cache folder (source = cache)
    split: str = "train"  # rows of train_file to train on: train | all
    heldout_percent: float = 5.0  # share of train_file held out (hash of each prompt), in percent
    max_length: int = 4096  # truncate training sequences to this many tokens
    on_error: str = "stop"  # a malformed row: stop | skip
    enable_thinking: bool = False  # render the chat template with thinking on
    eval_rows: int = 0  # after training, evaluate on this many held-out rows of train_file (0 = none)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to 0, and gradient clipping."""

    lr: float = 6e-4  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_ratio: float = 0.04  # share of the steps with linear warm-up, then cosine to 0
    max_grad_norm: float = 1.0  # <= 0 disables clipping


@dataclass
class LoopConfig:
    """Batching, length, precision and placement of the run."""

    global_batch_size: int = 512  # sequences per optimizer step, all processes and accumulation together
    local_batch_size: int = 1  # sequences per micro-batch per process
    epochs: int = 10  # passes over the training rows (when max_steps is null)
    max_steps: int | None = None  # stop after this many optimizer steps (default: epochs x steps per epoch)
    seed: int = 0  # data order, anchors and draft initialisation
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads per process (default: torch's)
    parallel: str = "auto"  # auto (FSDP on CUDA, DDP on CPU) | ddp | fsdp (FSDP2: weights, grads, AdamW sharded)


@dataclass
class CheckpointConfig:
    """Checkpoints `dir/step_N/` + `dir/latest`, and the exported draft `dir/final/`."""

    dir: str = "runs/draft"  # run folder: step_N/, latest, final/, metrics.jsonl, tensorboard/
    every_steps: int = 3000  # checkpoint every N optimizer steps (and at the end)
    resume: bool = True  # continue from dir/latest when it exists
    keep_last: int = 0  # keep only the newest K step_N folders (0 = keep all)
    export_dtype: str = "bfloat16"  # dtype of dir/final/model.safetensors
    include_frozen: bool = False  # store embed_tokens/lm_head in final/ (loaders fill them from the target)


@dataclass
class LoggingConfig:
    """Progress bar and metrics log (rank 0)."""

    every_steps: int = 10  # log metrics every N optimizer steps (averaged over them)
    tensorboard: bool | None = None  # TensorBoard events too: null = if installed, true = required, false = off
    progress: bool = True  # tqdm progress bar


@dataclass
class TrainConfig:
    """A whole training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self):
        _check_choice("model.algorithm", self.model.algorithm, ALGORITHMS)
        _check_choice("model.markov_head_type", self.model.markov_head_type, ("vanilla", "gated", "rnn"))
        _check_choice("data.source", self.data.source, ("online", "cache"))
        _check_choice("data.split", self.data.split, ("train", "all"))
        _check_choice("data.on_error", self.data.on_error, ("stop", "skip"))
        _check_choice("train.precision", self.train.precision, ("auto", "fp32", "bf16"))
        _check_choice("train.parallel", self.train.parallel, ("auto", "ddp", "fsdp"))
        _check_choice("checkpoint.export_dtype", self.checkpoint.export_dtype, ("float32", "bfloat16", "float16"))
        for key, value, low in (("train.global_batch_size", self.train.global_batch_size, 1),
                                ("train.local_batch_size", self.train.local_batch_size, 1),
                                ("train.epochs", self.train.epochs, 1), ("model.block_size", self.model.block_size, 1),
                                ("model.num_anchors", self.model.num_anchors, 1),
                                ("model.ttt_length", self.model.ttt_length, 1),
                                ("checkpoint.every_steps", self.checkpoint.every_steps, 1),
                                ("logging.every_steps", self.logging.every_steps, 1),
                                ("data.max_length", self.data.max_length, 2)):
            if value < low:
                raise InvalidRequestError(key, f"must be >= {low}, got {value}")
        if self.train.max_steps is not None and self.train.max_steps < 1:
            raise InvalidRequestError("train.max_steps", f"must be >= 1 or null, got {self.train.max_steps}")
        if not self.model.target:
            raise InvalidRequestError("model.target", "required: the target model's folder or hub id")
        if self.data.source == "online" and not self.data.train_file:
            raise InvalidRequestError("data.train_file", "required with data.source = online")
        if self.data.source == "cache" and not self.data.cache:
            raise InvalidRequestError("data.cache", "required with data.source = cache")
        if not 0 <= self.optim.warmup_ratio <= 1:
            raise InvalidRequestError("optim.warmup_ratio", f"must be in [0, 1], got {self.optim.warmup_ratio}")
        if len(self.optim.betas) != 2:
            raise InvalidRequestError("optim.betas", f"must be two numbers, got {self.optim.betas}")

    def alphas(self) -> tuple[float, float, float]:
        """(ce, l1, confidence) with the algorithm's defaults filled in."""
        defaults = DEFAULT_ALPHAS.get(self.model.algorithm, (1.0, 0.0, 0.0))
        given = (self.loss.ce_alpha, self.loss.l1_alpha, self.loss.confidence_alpha)
        return tuple(d if g is None else float(g) for g, d in zip(given, defaults, strict=True))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise InvalidRequestError(key, f"must be one of {list(choices)}, got {value!r}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML/JSON config file (or start from the defaults) and apply `key.sub=value` overrides."""
    data: dict = {}
    if path is not None:
        data = read_config_file(path)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRequestError("--set", f"expected key=value, got {item!r}")
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return from_dict(data)


def read_config_file(path: str | Path) -> dict:
    """The mapping in a `.yaml`/`.yml`/`.json` file. Python files are refused: configs are not executed."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise InvalidRequestError("--config", f"{path}: expected a .yaml, .yml or .json file (configs are data; "
                                              "Python config files are not executed)")
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidRequestError("--config", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidRequestError("--config", f"{path}: invalid YAML/JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidRequestError("--config", f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def all_keys(cls=TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key the config accepts."""
    keys = []
    for f in dataclasses.fields(cls):
        kind = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            keys += all_keys(kind, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown(key: str) -> InvalidRequestError:
    near = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; valid sections: {_sections()}"
    return InvalidRequestError(key, f"unknown config key{hint}")


def _sections() -> str:
    return ", ".join(f.name for f in dataclasses.fields(TrainConfig))


def _set_dotted(data: dict, key: str, value) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise _unknown(key)
        node = child
    node[parts[-1]] = value


def from_dict(data: dict, cls=TrainConfig, prefix: str = ""):
    """Build `cls` from a nested mapping, checking every key and value type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise _unknown(key)
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise InvalidRequestError(key, f"must be a mapping of {kind.__name__} fields, got {value!r}")
            kwargs[name] = from_dict(value, kind, f"{key}.")
        else:
            kwargs[name] = coerce(key, value, kind)
    return cls(**kwargs)


def coerce(key: str, value: Any, kind) -> Any:
    """`value` as type `kind` (int, float, str, bool, list[...], X | None), or an error naming `key`."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0])
    if origin is list:
        if not isinstance(value, list | tuple):
            raise InvalidRequestError(key, f"must be a list, got {value!r}")
        return [coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise InvalidRequestError(key, f"must be {getattr(kind, '__name__', kind)}, got {value!r}")

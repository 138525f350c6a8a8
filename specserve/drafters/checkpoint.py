"""Load, check and save DeepSpec-format draft checkpoints (DSpark, DFlash, Eagle3).

A checkpoint is a folder (or hub repo) with `config.json` and `model.safetensors`, or shards listed in
`model.safetensors.index.json`; keys have no `model.` prefix (algorithms.md §3-4). The frozen
`embed_tokens.weight` / `lm_head.weight` copies may be absent (specserve's own saves can omit them):
they are then filled from the target.

`lint` runs before any weight is read into memory. Silent acceptance collapse (a draft that loads but
was trained for another target, or whose keys were renamed and left at random init) is the most
reported failure across speculative-decoding stacks, so every mismatch is refused with a message
that names the field and both values.
"""

from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import PretrainedConfig
from transformers.initialization import no_init_weights

from specserve.drafters.draft_config import DraftConfig
from specserve.drafters.dspark import DSparkModel
from specserve.drafters.eagle3 import Eagle3Model
from specserve.errors import IncompatibleDrafterError, ModelLoadError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FROZEN_KEYS = ("embed_tokens.weight", "lm_head.weight")

DraftModel = DSparkModel | Eagle3Model


def resolve(source: str | Path) -> Path:
    """A local checkpoint folder, or a hub id downloaded (config and safetensors only) into the HF cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(source).startswith((".", "/", "~")):
        raise ModelLoadError(f"draft checkpoint {source!r} is not a folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=str(source), allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # network, auth, missing repo: one typed error for the caller
        raise ModelLoadError(f"draft checkpoint {source!r} is neither a local folder nor a downloadable hub id: "
                             f"{exc}") from exc


def read_config(path: Path) -> DraftConfig:
    try:
        raw = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path / CONFIG_FILE}: {exc}") from exc
    return DraftConfig.from_dict(raw)


def _weight_files(path: Path) -> dict[str, Path]:
    """key -> safetensors file holding it."""
    if (path / INDEX_FILE).exists():
        index = json.loads((path / INDEX_FILE).read_text())
        return {key: path / name for key, name in index["weight_map"].items()}
    if not (path / WEIGHTS_FILE).exists():
        raise ModelLoadError(f"{path} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")
    with safe_open(path / WEIGHTS_FILE, "pt") as f:
        return {key: path / WEIGHTS_FILE for key in f.keys()}


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every stored key with its shape, read from the safetensors headers (no tensor is loaded)."""
    shapes = {}
    files = _weight_files(path)
    for file in sorted(set(files.values())):
        with safe_open(file, "pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def model_class(cfg: DraftConfig) -> type[DraftModel]:
    return Eagle3Model if cfg.kind == "eagle3" else DSparkModel


def expected_shapes(cfg: DraftConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict layout of the model `cfg` describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = model_class(cfg)(cfg)
    return {key: tuple(t.shape) for key, t in model.state_dict().items()}


def _text_config(target_config: PretrainedConfig | Mapping) -> Mapping:
    if isinstance(target_config, PretrainedConfig):
        return target_config.get_text_config().to_dict()
    return target_config.get("text_config", target_config)


def lint(cfg: DraftConfig, target_config: PretrainedConfig | Mapping | None = None,
         shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Refuse a draft that does not fit its target or whose weights do not fit its config.

    Raises IncompatibleDrafterError listing every problem, one line each, field first.
    """
    problems = _config_problems(cfg)
    if target_config is not None:
        problems += _target_problems(cfg, _text_config(target_config))
    if shapes is not None:
        problems += _weight_problems(cfg, shapes)
    if problems:
        raise IncompatibleDrafterError(f"{cfg.architecture} draft rejected:\n  " + "\n  ".join(problems))


def _config_problems(cfg: DraftConfig) -> list[str]:
    ids = list(cfg.target_layer_ids)
    problems = []
    if not ids:
        problems.append("target_layer_ids: empty; a draft needs at least one target tap")
    if any(b <= a for a, b in zip(ids, ids[1:], strict=False)):
        problems.append(f"target_layer_ids: {ids} must be strictly increasing")
    if cfg.kind == "eagle3" and -1 in ids:
        problems.append(f"target_layer_ids: {ids} contains -1 (the embedding output), which only "
                        "DSpark/DFlash drafts may tap")
    return problems


def _target_problems(cfg: DraftConfig, target: Mapping) -> list[str]:
    problems = []
    for name, draft_value in (("vocab_size", cfg.vocab_size), ("hidden_size", cfg.hidden_size)):
        if draft_value != target.get(name):
            problems.append(f"{name}: draft has {draft_value}, target has {target.get(name)}")
    n_layers = target.get("num_hidden_layers")
    if cfg.num_target_layers != n_layers:
        problems.append(f"num_target_layers: draft has {cfg.num_target_layers}, target has {n_layers}")
    lowest = -1 if cfg.kind != "eagle3" else 0
    bad = [i for i in cfg.target_layer_ids if not lowest <= i <= (n_layers or 0) - 2]
    if n_layers is not None and bad:
        problems.append(f"target_layer_ids: draft has {list(cfg.target_layer_ids)}, target has {n_layers} layers; "
                        f"{bad} out of range [{lowest}, {n_layers - 2}] (the final layer {n_layers - 1} is "
                        "excluded: transformers reports it after the final norm)")
    vocab = target.get("vocab_size")
    if cfg.mask_token_id is not None and vocab is not None and not 0 <= cfg.mask_token_id < vocab:
        problems.append(f"mask_token_id: draft has {cfg.mask_token_id}, target vocab_size is {vocab} "
                        f"(must be in [0, {vocab}))")
    return problems


def _weight_problems(cfg: DraftConfig, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    expected = expected_shapes(cfg)
    missing = [k for k in expected if k not in shapes and k not in FROZEN_KEYS]
    unexpected = [k for k in shapes if k not in expected]
    problems = []
    if missing and all(k.startswith("model.") for k in unexpected) and unexpected:
        problems.append("weights: keys carry a 'model.' prefix; DeepSpec checkpoints store them without one")
    for key in missing:
        near = difflib.get_close_matches(key, unexpected, n=1, cutoff=0.8)
        hint = f" (checkpoint has {near[0]!r}: misnamed?)" if near else ""
        problems.append(f"weights: key {key!r} is missing{hint}")
    for key in unexpected:
        problems.append(f"weights: unexpected key {key!r}, not part of a {cfg.family} {cfg.kind} draft "
                        "with this config")
    for key, shape in shapes.items():
        if key in expected and tuple(shape) != expected[key]:
            problems.append(f"weights: {key} has shape {tuple(shape)}, config expects {expected[key]}")
    return problems


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(cfg: DraftConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DraftModel:
    """An uninitialised model (weights to be loaded), allocated directly in `dtype` on `device`."""
    with no_init_weights(), _default_dtype(dtype), torch.device(device):
        return model_class(cfg)(cfg).eval()


def load_drafter(source: str | Path, *, target_config: PretrainedConfig | Mapping | None = None,
                 target_model: nn.Module | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> DraftModel:
    """Load a draft from a folder or hub id, lint it against the target, and fill the frozen head.

    `target_model` (a transformers causal LM) supplies `embed_tokens`/`lm_head` when the checkpoint
    omits them; its config is used for linting when `target_config` is not given.
    """
    path = resolve(source)
    cfg = read_config(path)
    if target_config is None and target_model is not None:
        target_config = target_model.config
    shapes = weight_shapes(path)
    lint(cfg, target_config, shapes)
    files = _weight_files(path)
    state: dict[str, torch.Tensor] = {}
    for file in sorted(set(files.values())):
        with safe_open(file, "pt", device="cpu") as f:
            state.update({key: f.get_tensor(key) for key in f.keys()})
    for key, module in (("embed_tokens.weight", "get_input_embeddings"), ("lm_head.weight", "get_output_embeddings")):
        if key not in state:
            if target_model is None:
                raise ModelLoadError(f"draft checkpoint {source} has no {key}; pass the target model to fill it "
                                     "(drafter service: --target / SPECSERVE_DRAFTER_TARGET)")
            state[key] = getattr(target_model, module)().weight.detach()
            if tuple(state[key].shape) != (cfg.vocab_size, cfg.hidden_size):
                raise IncompatibleDrafterError(f"{key}: target has shape {tuple(state[key].shape)}, draft "
                                               f"expects {(cfg.vocab_size, cfg.hidden_size)}")
    dtype = dtype or next(iter(state.values())).dtype
    model = build_model(cfg, device, dtype)
    model.load_state_dict(state, strict=True)
    return model.requires_grad_(False)


class FrozenHead(nn.Module):
    """A target's input embedding and LM head without its decoder layers: what a draft whose checkpoint
    omits its frozen copies needs when no full target is loaded (a drafter service). Duck-types the two
    accessors and `config` of a transformers causal LM, which is all `load_drafter` reads."""

    def __init__(self, config: PretrainedConfig, embed: torch.Tensor, head: torch.Tensor):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding.from_pretrained(embed, freeze=True)
        self.lm_head = nn.Linear(head.shape[1], head.shape[0], bias=False)
        self.lm_head.weight = nn.Parameter(head, requires_grad=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head


def load_frozen_head(target: str | Path) -> FrozenHead:
    """Read only `embed_tokens` and `lm_head` (the embedding when tied) of a target folder or hub id."""
    from transformers import AutoConfig

    path = resolve(target)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # missing or invalid config (transformers raises several types)
        raise ModelLoadError(f"cannot read the target config from {target!r}: {exc}") from exc
    files = _weight_files(path)

    def tensor(suffix: str) -> torch.Tensor | None:
        keys = sorted((k for k in files if k == suffix or k.endswith("." + suffix)), key=len)
        if not keys:
            return None
        with safe_open(files[keys[0]], "pt", device="cpu") as f:
            return f.get_tensor(keys[0])

    embed = tensor("embed_tokens.weight")
    if embed is None:
        raise ModelLoadError(f"target {target!r} stores no embed_tokens.weight")
    head = tensor("lm_head.weight")
    return FrozenHead(config, embed, embed if head is None else head)


def detect_kind(source: str | Path) -> str:
    """dspark, dflash or eagle3, from the checkpoint's config.json."""
    return read_config(resolve(source)).kind


def save_drafter(model: DraftModel, path: str | Path, *, include_frozen: bool = True,
                 max_shard_size: int | str | None = None) -> Path:
    """Write `config.json` and the weights in DeepSpec's layout (sharded when `max_shard_size` is set).

    `include_frozen=False` leaves out embed_tokens/lm_head, which a later load fills from the target.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if include_frozen or k not in FROZEN_KEYS}
    raw = dict(model.cfg.raw)
    raw["dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    (path / CONFIG_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    for stale in (WEIGHTS_FILE, INDEX_FILE):
        (path / stale).unlink(missing_ok=True)
    if max_shard_size is None:
        save_file(state, path / WEIGHTS_FILE, metadata={"format": "pt"})
        return path
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, path / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path

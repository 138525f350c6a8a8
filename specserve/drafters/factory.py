"""Build the tap-reading drafters from a checkpoint, and check a draft against a target without loading it.

`load_tap_drafter` serves `--drafter dspark:PATH`, `dflash:PATH`, `eagle3:PATH` (kind None: detect it
from `config.json`); `check_drafter` serves `specserve drafter check --draft PATH --target PATH`, reading
only configs and safetensors headers.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig

from specserve.drafters.checkpoint import lint, load_drafter, read_config, resolve, weight_shapes
from specserve.drafters.draft_config import DraftConfig
from specserve.drafters.dspark_drafter import DSparkDrafter
from specserve.drafters.eagle3_drafter import Eagle3Drafter
from specserve.errors import IncompatibleDrafterError, ModelLoadError
from specserve.eval.sts import load_calibration
from specserve.target.model import CausalLM

TAP_KINDS = ("dspark", "dflash", "eagle3")


def load_tap_drafter(source: str | Path, target: CausalLM, kind: str | None = None) -> DSparkDrafter | Eagle3Drafter:
    """Load, lint against `target`, fill the frozen head from it, and wrap the model in its Drafter.

    `dspark` and `dflash` name the same architecture (DFlash is DSpark without its heads), so either
    accepts either checkpoint; asking for `eagle3` with a parallel draft, or the reverse, is refused.
    A DSpark draft whose folder holds STS temperatures (`calibration.json`) applies them to its confidences.
    """
    if kind is not None and kind not in TAP_KINDS:
        raise ValueError(f"kind must be one of {TAP_KINDS} or None, got {kind!r}")
    model = load_drafter(source, target_model=target.model, device=target.device, dtype=target.dtype)
    if kind is not None and (kind == "eagle3") != (model.cfg.kind == "eagle3"):
        raise IncompatibleDrafterError(f"drafter: asked for {kind} but {source} holds a {model.cfg.kind} draft "
                                       f"({model.cfg.architecture})")
    if model.cfg.kind == "eagle3":
        return Eagle3Drafter(model)
    calibration = load_calibration(resolve(source))
    return DSparkDrafter(model, temperatures=calibration.temperatures if calibration else None)


def check_drafter(draft: str | Path, target: str | Path) -> DraftConfig:
    """Lint a draft checkpoint against a target's config (no weights are loaded); returns the draft config.

    Raises IncompatibleDrafterError listing every mismatch, or ModelLoadError if either cannot be read.
    """
    path = resolve(draft)
    cfg = read_config(path)
    try:
        target_config = AutoConfig.from_pretrained(target)
    except Exception as exc:  # missing files, invalid configs (transformers raises several types)
        raise ModelLoadError(f"cannot read the target config from {target!r}: {exc}") from exc
    lint(cfg, target_config, weight_shapes(path))
    return cfg

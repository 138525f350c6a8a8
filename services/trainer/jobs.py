"""What a job is made of, checked before it is queued: a training's config, or a regeneration's or an
evaluation's flags, each refused as its own command would refuse it (a 400 naming the field), and the files it
names, inside `allowed_roots` when the trainer sets them."""

from __future__ import annotations

import contextlib
import io
import math
from copy import deepcopy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from services.common.errors import APIError
from services.trainer.runner import cli_argv
from services.trainer.settings import TrainerSettings
from specserve.cli import build_parser
from specserve.errors import InvalidRequestError
from specserve.eval.runner import DraftSpec
from specserve.training.config import from_dict

ArgValue = StrictStr | StrictInt | StrictFloat | StrictBool


class JobRequest(BaseModel):
    """A job: a training (`config`, as JSON) or a regeneration / evaluation (`args`, the command's flags)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train", "regenerate", "eval"] = Field(
        "train", description="train: `specserve train`; regenerate: `specserve data regenerate` (answers by the "
                             "target); eval: `specserve eval` (τ per benchmark, per-position acceptance, calibration)")
    config: dict[str, Any] | None = Field(None, description="train: sections model, loss, data, optim, train, "
                                          "checkpoint, logging, as in a `specserve train --config` file "
                                          "(`checkpoint.dir` is set by the service)")
    args: dict[str, ArgValue | list[ArgValue]] | None = Field(
        None, description="regenerate / eval: the command's flags by name, e.g. {\"target\": \"PATH\", "
                          "\"max_tokens\": 96, \"suite\": [\"a.jsonl\", \"b.jsonl\"], \"overwrite\": true}; "
                          "`out` is set by the service (the job's folder)")
    nproc: int = Field(1, ge=1, description="training processes (torchrun --nproc_per_node); at most max_nproc")


def _check_finite(value: Any, path: str) -> None:
    """NaN and ±Infinity (which Python's JSON reader accepts) are no JSON: PostgreSQL refuses them, and the
    YAML config a training reads would spell them differently."""
    if isinstance(value, float) and not math.isfinite(value):
        raise APIError.bad_request(path, f"must be a finite number, got {value}")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        _check_finite(item, f"{path}.{key}")


def check_job(body: JobRequest, settings: TrainerSettings) -> dict[str, Any]:
    """The job's parameters (a config or flags), refused as its command would refuse them; 400 naming the field."""
    _check_finite(body.config, "config")
    _check_finite(body.args, "args")
    if body.nproc > settings.max_nproc:
        raise APIError.bad_request("nproc", f"at most {settings.max_nproc} processes per job, got {body.nproc}")
    given, other = ("config", "args") if body.kind == "train" else ("args", "config")
    if getattr(body, other) is not None:
        raise APIError.bad_request(other, f"a {body.kind} job takes `{given}`, not `{other}`")
    params = getattr(body, given)
    if params is None:
        raise APIError.bad_request(given, f"a {body.kind} job needs `{given}`", "missing")
    if body.kind == "train":
        check_config(params)
    else:
        if body.nproc != 1:
            raise APIError.bad_request("nproc", f"a {body.kind} job runs one process, got {body.nproc}")
        check_args(body.kind, params)
    check_paths(job_paths(body.kind, params), settings.allowed_roots)
    return params


TRAIN_PATHS = (("model", "target"), ("model", "init_from"), ("data", "train_file"), ("data", "cache"))
ARG_PATHS = {"regenerate": ("target", "input", "drafter"), "eval": ("target", "draft", "suite")}
SPEC_ARGS = ("draft", "drafter")  # drafter specs: [NAME=]KIND[:ARG], ARG a path for these kinds
PATH_KINDS = ("dspark", "dflash", "eagle3", "auto", "model")


def job_paths(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """field -> the file or folder a job's parameters name (None where a field names none)."""
    if kind == "train":
        return {f"config.{section}.{key}": (params.get(section) or {}).get(key) for section, key in TRAIN_PATHS}
    paths = {}
    for key in ARG_PATHS[kind]:
        values = params.get(key)
        for i, value in enumerate(values if isinstance(values, list) else [values]):
            if key in SPEC_ARGS and isinstance(value, str):  # eval reads NAME=SPEC as its DraftSpec does
                spec = DraftSpec.parse(value).spec if key == "draft" else value
                spec_kind, _, arg = spec.partition(":")
                value = arg if spec_kind in PATH_KINDS else None
            paths[f"args.{key}" + (f".{i}" if isinstance(values, list) else "")] = value
    return paths


def check_paths(paths: dict[str, Any], roots: list[Path]) -> None:
    """With `allowed_roots` set, every file a job names must be an absolute path inside one of them (400 naming the
    field). A relative one is refused: the worker reads it from its own working directory, which this API does not
    know. A hub id is refused too: download the model into a root first."""
    if not roots:
        return
    inside = [root.resolve() for root in roots]
    for field, value in paths.items():
        if not isinstance(value, str) or not value:
            continue
        if not Path(value).is_absolute():
            raise APIError.bad_request(field, f"{value!r} is not an absolute path; with allowed_roots set a job names "
                                              "its files by absolute path (a relative one would be read from the "
                                              "worker's working directory; a hub id must be downloaded into a root "
                                              "first)", "path_not_absolute")
        resolved = Path(value).resolve()
        if not any(resolved.is_relative_to(root) for root in inside):
            raise APIError.bad_request(field, f"{value!r} is outside the folders this trainer may read "
                                              f"(allowed_roots: {', '.join(map(str, roots))})", "path_not_allowed")


def check_args(kind: str, args: dict[str, Any]) -> None:
    """Parse the flags with the command's own parser: what it refuses (exit code 2) is a 400 with its message."""
    for key, why in (("out", "is set by the trainer (the job's own folder)"), ("help", "is not a job argument")):
        if key in args:
            raise APIError.bad_request(f"args.{key}", f"{why}; leave it out")
    command = "data regenerate" if kind == "regenerate" else kind
    argv = cli_argv(kind, args, Path("job"))
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parsed = vars(build_parser().parse_args(argv))
    except SystemExit:
        lines = errors.getvalue().strip().splitlines()
        message = lines[-1].split(": error: ", 1)[-1] if lines else "invalid arguments"
        raise APIError.bad_request("args", f"`specserve {command}`: {message}") from None
    unknown = [key for key in args if key.replace("-", "_") not in parsed]
    if unknown:  # argparse takes an abbreviation of a longer flag; the API takes whole names only
        raise APIError.bad_request(f"args.{unknown[0]}", f"not a flag of `specserve {command}`")


def check_config(config: dict[str, Any]) -> None:
    """Refuse what `specserve train` would refuse, naming the key (as `config.<section>.<key>`)."""
    checkpoint = config.get("checkpoint")
    for key in ("dir", "resume"):
        if isinstance(checkpoint, dict) and key in checkpoint:
            raise APIError.bad_request(f"config.checkpoint.{key}", "is set by the trainer (every job writes its "
                                       "checkpoints in its own folder, where a retry resumes them); leave it out")
    try:
        from_dict(deepcopy(config))
    except InvalidRequestError as exc:
        raise APIError.bad_request(f"config.{exc.field}", str(exc).removeprefix(f"{exc.field}: ")) from None

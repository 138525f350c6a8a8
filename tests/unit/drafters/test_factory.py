"""Building drafters from checkpoints for a loaded target, and the config-only compatibility check."""

from __future__ import annotations

import json
import shutil

import pytest
from deepspec_reference import REFERENCE

from specserve.drafters.base import Drafter
from specserve.drafters.checkpoint import save_drafter
from specserve.drafters.dspark_drafter import DSparkDrafter
from specserve.drafters.eagle3_drafter import Eagle3Drafter
from specserve.drafters.factory import check_drafter, load_tap_drafter
from specserve.errors import IncompatibleDrafterError
from specserve.target.model import CausalLM

TARGET = REFERENCE / "tiny_qwen3_target"


@pytest.fixture(scope="module")
def target():
    return CausalLM.from_pretrained(str(TARGET), load_tokenizer=False)


@pytest.mark.parametrize(("folder", "kind", "cls"), [("dspark_rnn", "dspark", DSparkDrafter),
                                                     ("dflash", "dspark", DSparkDrafter),
                                                     ("dflash", None, DSparkDrafter),
                                                     ("eagle3", "eagle3", Eagle3Drafter)])
def test_load_tap_drafter_builds_the_protocol_drafter(folder, kind, cls, target):
    drafter = load_tap_drafter(REFERENCE / folder / "checkpoint", target, kind)
    assert isinstance(drafter, cls) and isinstance(drafter, Drafter)
    assert drafter.target_layer_ids == (1, 2, 4, 5, 6)
    assert drafter.vocab_size == target.vocab_size
    assert drafter.max_block == (3 if folder == "eagle3" else 4)


def test_asking_for_the_wrong_algorithm_is_refused(target):
    with pytest.raises(IncompatibleDrafterError, match="asked for eagle3 but .* holds a dspark draft"):
        load_tap_drafter(REFERENCE / "dspark_rnn" / "checkpoint", target, "eagle3")


def test_a_checkpoint_without_frozen_head_takes_the_targets(tmp_path, target):
    model = load_tap_drafter(REFERENCE / "eagle3" / "checkpoint", target).model
    save_drafter(model, tmp_path, include_frozen=False)
    reloaded = load_tap_drafter(tmp_path, target).model
    assert (reloaded.lm_head.weight == target.lm_head.weight).all()


def test_check_drafter_reads_configs_only_and_names_mismatches(tmp_path):
    assert check_drafter(REFERENCE / "dspark_rnn" / "checkpoint", TARGET).kind == "dspark"
    shutil.copytree(TARGET, tmp_path / "target")
    config = json.loads((tmp_path / "target" / "config.json").read_text())
    config["num_hidden_layers"] = 12
    config["layer_types"] = ["full_attention"] * 12
    (tmp_path / "target" / "config.json").write_text(json.dumps(config))
    with pytest.raises(IncompatibleDrafterError, match="num_target_layers: draft has 8, target has 12"):
        check_drafter(REFERENCE / "eagle3" / "checkpoint", tmp_path / "target")

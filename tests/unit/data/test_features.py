"""Tap sets and batch collation."""

import pytest
import torch

from specserve.data.features import FeatureRow, check_tap_layers, collate, default_tap_layers
from specserve.errors import InvalidRequestError


def test_default_taps_reproduce_the_shipped_sets():
    assert default_tap_layers(36) == (1, 9, 17, 25, 33)  # Qwen3-4B / 8B
    assert default_tap_layers(40) == (1, 10, 19, 28, 37)  # Qwen3-14B
    assert default_tap_layers(4) == (0, 1, 2)  # a tiny target: every layer but the last


@pytest.mark.parametrize("ids,message", [([], "at least one"), ([3, 1], "strictly increasing"),
                                         ([1, 35], r"\[-1, 34\]"), ([-2, 1], r"\[-1, 34\]")])
def test_bad_tap_sets(ids, message):
    with pytest.raises(InvalidRequestError, match=message):
        check_tap_layers(ids, 36)


def test_collate_right_pads_with_zero_mask():
    rows = [FeatureRow(i, torch.arange(n), torch.ones(n, dtype=torch.long), torch.ones(n, 6), torch.ones(n, 2))
            for i, n in ((4, 3), (9, 5))]
    batch = collate(rows)
    assert batch.input_ids.shape == (2, 5) and batch.taps.shape == (2, 5, 6) and batch.final_hidden.shape == (2, 5, 2)
    assert batch.lengths.tolist() == [3, 5] and batch.indices.tolist() == [4, 9]
    assert batch.loss_mask[0].tolist() == [1, 1, 1, 0, 0] and float(batch.taps[0, 3:].abs().sum()) == 0


def test_epoch_order_is_seeded_and_split_by_rank():
    from specserve.data.features import epoch_order

    one = epoch_order(10, 2, seed=3, epoch=1)
    assert one == epoch_order(10, 2, seed=3, epoch=1) != epoch_order(10, 2, seed=3, epoch=2)
    assert sorted(sum(one, [])) == list(range(10))
    ranks = [epoch_order(10, 2, seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == 2  # 10 rows / (2 x 2) -> two global batches, the remainder dropped
    assert [a + b for a, b in zip(*ranks)] == [x + y for x, y in zip(one[0::2], one[1::2])][:2]

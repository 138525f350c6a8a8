"""Anchor sampling and the contiguous-prefix supervision mask."""

from __future__ import annotations

import torch

from specserve.training.anchors import anchor_candidates, row_generator, sample_anchors, supervision_mask


def test_candidates_need_the_anchor_and_its_next_token_in_the_loss_mask():
    loss_mask = torch.tensor([[0, 1, 1, 0, 1, 1, 1]])
    assert anchor_candidates(loss_mask).nonzero()[:, 1].tolist() == [1, 4, 5]


def test_anchors_are_distinct_sorted_candidates_and_missing_ones_are_dummies():
    loss_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]])
    gens = [row_generator(0, 0, 7), row_generator(0, 0, 8)]
    anchors, keep = sample_anchors(loss_mask, 4, gens)
    assert keep.tolist() == [[True] * 4, [True, True, False, False]]
    row0 = anchors[0].tolist()
    assert row0 == sorted(set(row0)) and set(row0) <= {1, 2, 3, 4, 5, 6}
    assert anchors[1].tolist() == [3, 4, 0, 0]


def test_a_rows_anchors_do_not_depend_on_its_batch():
    """Keyed by (seed, epoch, row): the same row draws the same anchors alone, in any batch, on any rank."""
    mask = torch.ones(1, 50, dtype=torch.long)
    alone, _ = sample_anchors(mask, 6, [row_generator(1, 2, 42)])
    batch = torch.cat([torch.ones(1, 50, dtype=torch.long), mask])
    together, _ = sample_anchors(batch, 6, [row_generator(1, 2, 5), row_generator(1, 2, 42)])
    assert torch.equal(together[1], alone[0])
    other_epoch, _ = sample_anchors(mask, 6, [row_generator(1, 3, 42)])
    assert not torch.equal(other_epoch, alone)


def test_sampling_is_uniform_over_candidates():
    mask = torch.ones(1, 11, dtype=torch.long)  # 10 candidates, 3 drawn: each with probability 0.3
    counts = torch.zeros(10)
    for i in range(2000):
        anchors, _ = sample_anchors(mask, 3, [row_generator(0, 0, i)])
        counts[anchors[0]] += 1
    assert ((counts / 2000 - 0.3).abs() < 0.04).all(), counts


def test_supervision_is_a_contiguous_prefix_inside_sequence_and_mask():
    loss_mask = torch.tensor([[0, 1, 1, 1, 0, 1, 1, 1]])
    anchors = torch.tensor([[1, 5, 6, 0]])
    keep = torch.tensor([[True, True, True, False]])
    mask = supervision_mask(anchors, keep, loss_mask, 4)
    assert mask.int().tolist() == [[[1, 1, 0, 0],  # labels 2, 3, 4 (masked out), 5: the prefix stops at 4
                                     [1, 1, 0, 0],  # labels 6, 7, then past the end
                                     [1, 0, 0, 0],
                                     [0, 0, 0, 0]]]  # dummy block

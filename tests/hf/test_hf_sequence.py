"""aot_integrations.hf.sequence.shorten: the placeholder rewrite, on hand-made batches (pure torch)."""

import pytest
import torch

from aot_integrations.hf.sequence import shorten

V = 9   # placeholder id


def test_one_run_per_video_left_padding():
    ids = torch.tensor([[0, 0, 5, V, V, V, V, 6],
                        [7, V, V, V, V, V, V, 8]])
    mask = (torch.arange(8) >= torch.tensor([[2], [0]])).long()
    short = shorten(ids, mask, V, runs=[4, 6], slots=[torch.tensor([2, 0]),
                                                      torch.tensor([5])])
    assert short.input_ids.tolist() == [[5, V, V, 6], [0, 7, V, 8]]
    assert short.attention_mask.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    # positions of the kept tokens: the columns of their slots (row 0: slot 2 then slot 0)
    assert short.position_source[0].tolist() == [2, 5, 3, 7]
    assert short.position_source[1, 1:].tolist() == [0, 6, 7]


def test_run_split_by_text_keeps_each_token_in_its_piece():
    # one video, two frames of 3 placeholders, timestamp text (4) between them
    ids = torch.tensor([[1, V, V, V, 4, V, V, V, 2]])
    short = shorten(ids, None, V, runs=[6], slots=[torch.tensor([4, 0, 5])])
    assert short.input_ids.tolist() == [[1, V, 4, V, V, 2]]
    assert short.position_source.tolist() == [[0, 1, 4, 6, 7, 8]]


def test_two_videos_in_one_row_and_right_padding():
    ids = torch.tensor([[V, V, 3, V, V, V, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    short = shorten(ids, mask, V, runs=[2, 3], slots=[torch.tensor([1]), torch.tensor([0, 2])])
    assert short.input_ids.tolist() == [[V, 3, V, V]]
    assert short.position_source.tolist() == [[1, 2, 3, 5]]


def test_wrong_counts_are_named():
    ids = torch.tensor([[V, V, 3]])
    with pytest.raises(ValueError, match="hold 2 video placeholders"):
        shorten(ids, None, V, runs=[3], slots=[torch.tensor([0])])
    with pytest.raises(ValueError, match="slots must lie in 0..1"):
        shorten(ids, None, V, runs=[2], slots=[torch.tensor([2])])

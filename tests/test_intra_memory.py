"""The intra stage writes its (F, M, N) steps in place: the same bits as the plain formulas, and
no new tensor of that size besides the similarity (new memory is paid in page faults,
docs/efficiency.md)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import aot
from aot.intra import (
    anchor_similarity,
    grid_distances,
    intra_cost,
    merge_operator,
    merge_weights,
    merged_anchor_features,
    nearest_anchors,
    split_by_mask,
)
from aot.synthetic import synthetic_video


def frames_and_anchors(frames=6, dim=32, seed=4, config=None):
    feats, shallow, deep = synthetic_video(frames, dim=dim, seed=seed)
    local, global_ = aot.select_anchors(shallow, deep, 27, config or aot.AOTConfig())
    anchor_idx, source_idx = split_by_mask(local | global_)
    return feats, anchor_idx, source_idx


@pytest.mark.parametrize("chunk_frames", [None, 1, 4])
@pytest.mark.parametrize("overwrite", [False, True])
def test_intra_cost_is_the_formula_bit_for_bit(chunk_frames, overwrite):
    feats, anchor_idx, source_idx = frames_and_anchors()
    similarity = anchor_similarity(feats, anchor_idx, source_idx).similarity
    distance = grid_distances(27)[source_idx[:, :, None], anchor_idx[:, None, :]]
    expected = (1 - similarity) + 0.5 * distance
    cost = intra_cost(similarity, source_idx, anchor_idx, 27, 0.5, overwrite_similarity=overwrite,
                      chunk_frames=chunk_frames)
    assert torch.equal(cost, expected)
    assert (cost.data_ptr() == similarity.data_ptr()) == overwrite


@pytest.mark.parametrize("hard_merge_weight", [0.0, 0.1])
def test_merge_weights_in_the_plan_equal_fresh_ones(hard_merge_weight):
    cfg = aot.AOTConfig(hard_merge_weight=hard_merge_weight)
    g = torch.Generator().manual_seed(5)
    similarity = torch.rand(3, 20, 6, generator=g) * 2 - 1
    plan = torch.rand(3, 20, 6, generator=g) / 120
    nearest = nearest_anchors(similarity)
    fresh, fresh_self = merge_weights(plan.clone(), nearest, cfg, out=torch.empty_like(plan))
    weights, self_weight = merge_weights(plan, nearest, cfg, out=plan)
    assert weights.data_ptr() == plan.data_ptr()
    assert torch.equal(weights, fresh) and torch.equal(self_weight, fresh_self)
    # a convex combination per anchor: its own weight and its sources' weights sum to 1
    torch.testing.assert_close(self_weight + weights.sum(1), torch.ones(3, 6))
    assert not torch.equal(weights, torch.zeros_like(weights))


def test_cosine_weights_are_one_hot_shares():
    cfg = aot.AOTConfig(intra_merge="cosine")
    similarity = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]])
    weights, self_weight = merge_weights(None, nearest_anchors(similarity), cfg,
                                         out=similarity.clone())
    s = cfg.intra_scale  # anchor 0 absorbs sources 0 and 2, anchor 1 source 1
    torch.testing.assert_close(weights, torch.tensor([[[1 / (s + 2), 0.0], [0.0, 1 / (s + 1)],
                                                       [1 / (s + 2), 0.0]]]))
    torch.testing.assert_close(self_weight, torch.tensor([[s / (s + 2), s / (s + 1)]]))


def test_merge_operator_rows_hold_the_weights_and_the_own_weight():
    _, anchor_idx, source_idx = frames_and_anchors(frames=3)
    g = torch.Generator().manual_seed(6)
    weights = torch.rand(3, source_idx.shape[1], anchor_idx.shape[1], generator=g)
    self_weight = torch.rand(3, anchor_idx.shape[1], generator=g)
    operator = merge_operator(anchor_idx, source_idx, weights, self_weight, 729)  # (F, N, T)
    frames = torch.arange(3)[:, None]
    assert torch.equal(operator.transpose(1, 2)[frames, source_idx], weights)
    assert torch.equal(operator.transpose(1, 2)[frames, anchor_idx], torch.diag_embed(self_weight))


class FreshTensors(TorchDispatchMode):
    """Shapes of the tensors that ops write into new memory (not in place, not ``out=``, not a
    view), with at least ``numel`` elements."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.shapes = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr()
                  for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.numel() >= self.numel
                    and t.untyped_storage().data_ptr() not in inputs):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("intra_merge", ["ot", "cosine"])
def test_the_transport_writes_no_new_fmn_tensor(intra_merge):
    # The similarity becomes the cost, kernel, plan and merge weights in turn; the only new
    # tensor of that size or more is the (F, T, N) merge operator (at D = 32 the merged
    # (F, N, D) anchors are smaller; chunks of 2 frames keep the distance scratch below it). Before, OT made eight (F, M, N) tensors here (six float:
    # distance, three for the cost formula, kernel, weights; two bool padding masks).
    cfg = aot.AOTConfig(intra_merge=intra_merge)
    feats, anchor_idx, source_idx = frames_and_anchors(frames=6, dim=32)
    similarity = anchor_similarity(feats, anchor_idx, source_idx).similarity
    frames, sources, anchors = similarity.shape
    expected = merged_anchor_features(feats, anchor_idx, source_idx, 27, cfg)
    with FreshTensors(frames * sources * anchors) as fresh:
        merged = merged_anchor_features(feats, anchor_idx, source_idx, 27, cfg,
                                        similarity=similarity, chunk_frames=2)
    assert fresh.shapes == [(frames * 729, anchors)], fresh.shapes
    assert torch.equal(merged, expected)
    assert merged.shape == (frames, anchors, 32)
    assert not torch.equal(merged, feats[torch.arange(frames)[:, None], anchor_idx])

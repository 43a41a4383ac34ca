"""Qwen3-VL's DeepStack levels ride along the reducer as extra channels: this holds only if
every registered reducer applies one per-token linear map to all channels."""

import pytest
import torch

import aot
from aot.baselines import get_reducer, reducer_names


@pytest.mark.parametrize("reducer", reducer_names())
def test_every_reducer_maps_all_channels_alike(reducer):
    g = torch.Generator().manual_seed(0)
    frames, grid, dim = 4, 6, 8
    features = torch.randn(frames, grid * grid, dim, generator=g, dtype=torch.float64)
    shallow = torch.rand(frames, grid * grid, generator=g, dtype=torch.float64)
    deep = torch.rand(frames, grid * grid, generator=g, dtype=torch.float64)
    config = aot.AOTConfig(pooling="none", anchors_per_frame=8, window=3, exact_retention=0.3)
    # two copies of the main features stand for main + one DeepStack level
    result = get_reducer(reducer)(torch.cat([features, features], -1), shallow, deep, config)
    assert result.num_tokens == aot.exact_budget(0.3, frames, grid * grid)
    torch.testing.assert_close(result.tokens[:, :dim], result.tokens[:, dim:], rtol=0, atol=1e-12)
    # a level scaled by 3 comes out scaled by 3 (the map is linear per channel)
    scaled = get_reducer(reducer)(torch.cat([features, 3 * features], -1), shallow, deep, config)
    torch.testing.assert_close(scaled.tokens[:, dim:], 3 * scaled.tokens[:, :dim],
                               rtol=1e-9, atol=1e-9)

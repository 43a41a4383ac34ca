"""Qwen3-VL's DeepStack levels ride along the reducer as extra channels: this holds only if
every registered reducer applies one per-token linear map to all channels."""

import functools

import pytest
import torch
from reducer_checks import extra_inputs

import aot
from aot.reducers import get_reducer, reducer_names


@pytest.mark.parametrize("reducer", reducer_names())
def test_every_reducer_maps_all_channels_alike(reducer):
    g = torch.Generator().manual_seed(0)
    frames, grid, dim = 4, 6, 8
    features = torch.randn(frames, grid * grid, dim, generator=g, dtype=torch.float64)
    shallow = torch.rand(frames, grid * grid, generator=g, dtype=torch.float64)
    deep = torch.rand(frames, grid * grid, generator=g, dtype=torch.float64)
    config = aot.AOTConfig(pooling="none", anchors_per_frame=8, window=3, exact_retention=0.3)
    # two copies of the main features stand for main + one DeepStack level
    extra = extra_inputs(reducer, features, deep)
    result = get_reducer(reducer)(torch.cat([features, features], -1), shallow, deep, config,
                                  **extra)
    assert result.num_tokens == aot.exact_budget(0.3, frames, grid * grid)
    torch.testing.assert_close(result.tokens[:, :dim], result.tokens[:, dim:], rtol=0, atol=1e-12)
    # a level scaled by 3 comes out scaled by 3 (the map is linear per channel)
    scaled = get_reducer(reducer)(torch.cat([features, 3 * features], -1), shallow, deep, config,
                                  **extra)
    torch.testing.assert_close(scaled.tokens[:, dim:], 3 * scaled.tokens[:, :dim],
                               rtol=1e-9, atol=1e-9)


def _video(frames=6, rows=6, cols=10, dim=8, seed=0):
    """Frames that repeat each other (a static scene plus noise), so clips hold several frames
    and the temporal phase has choices to make."""
    g = torch.Generator().manual_seed(seed)
    tokens = rows * cols
    scene = torch.randn(tokens, dim, generator=g, dtype=torch.float64)
    return (scene + 0.5 * torch.randn(frames, tokens, dim, generator=g, dtype=torch.float64),
            torch.rand(frames, tokens, generator=g, dtype=torch.float64),
            torch.rand(frames, tokens, generator=g, dtype=torch.float64))


def _choice(result):
    return result.token_frame, result.token_position, result.token_kind


@pytest.mark.parametrize("reducer", reducer_names())
def test_similarities_read_only_the_main_channels(reducer):
    """With similarity_channels = D the DeepStack levels' values never change which tokens are
    kept or how they are merged: the main channels come out the same for any levels, and the
    levels follow the main channels' linear map."""
    features, shallow, deep = _video()
    dim = features.shape[-1]
    levels = [5 * _video(seed=seed)[0] for seed in (1, 2)]   # other scenes, same layout
    # dynamic clips too: their cut points come from frame features (the main channels' means)
    config = aot.AOTConfig(pooling="none", anchors_per_frame=10, window=5, exact_retention=0.3,
                           similarity_channels=dim, dynamic_clips=True, num_clips=3)
    reduce = functools.partial(get_reducer(reducer), **extra_inputs(reducer, features, deep))
    runs = [reduce(torch.cat([features, level], -1), shallow, deep, config, grid=(6, 10))
            for level in levels]
    main_only = reduce(features, shallow, deep, config.replace(similarity_channels=None),
                       grid=(6, 10))
    if reducer == "aot":  # its temporal phase ran on multi-frame clips: choices were made
        assert len(runs[0].clips) < 6 and bool((runs[0].token_kind > 0).any())
    for run in runs:
        for a, b in zip(_choice(run), _choice(main_only)):
            assert torch.equal(a, b)
        torch.testing.assert_close(run.tokens[:, :dim], main_only.tokens, rtol=1e-12,
                                   atol=1e-12)
    # the same map on the levels: feeding the main features as the level reproduces them
    echo = reduce(torch.cat([features, 2 * features], -1), shallow, deep, config, grid=(6, 10))
    torch.testing.assert_close(echo.tokens[:, dim:], 2 * main_only.tokens, rtol=1e-9, atol=1e-9)


def test_without_the_setting_the_levels_change_the_choice():
    """The check above can fail: reading every channel, AOT's choice depends on the levels."""
    features, shallow, deep = _video()
    config = aot.AOTConfig(pooling="none", anchors_per_frame=10, window=5, exact_retention=0.3,
                           dynamic_clips=True, num_clips=3)
    choices = [_choice(aot.reduce_video(torch.cat([features, 5 * _video(seed=seed)[0]], -1),
                                        shallow, deep, config, grid=(6, 10)))
               for seed in (1, 2)]
    assert not all(torch.equal(a, b) for a, b in zip(*choices))


def test_similarity_channels_beyond_the_features_are_named():
    features, shallow, deep = _video()
    config = aot.AOTConfig(pooling="none", anchors_per_frame=10, window=5, similarity_channels=9)
    with pytest.raises(ValueError, match=r"similarity_channels=9 exceeds the 8 feature channels"):
        aot.reduce_video(features, shallow, deep, config, grid=(6, 10))
    with pytest.raises(ValueError, match=r"AOTConfig.similarity_channels=0: expected an integer"):
        aot.AOTConfig(similarity_channels=0)


def test_qwen3_reducer_ignores_deepstack_values():
    """On the tiny Qwen3-VL: aot_integrations.hf sets similarity_channels to the LLM width, and changing the
    DeepStack levels the tower returns changes no kept token, only the levels that ride along."""
    pytest.importorskip("transformers")
    import aot_integrations.hf
    from aot_integrations import tiny

    model = tiny.qwen3_vl()
    dim = model.config.text_config.hidden_size
    config = aot.AOTConfig(anchors_per_frame=10, window=5, shallow_layer=1, deep_layer=3,
                           exact_retention=0.3)
    inputs = tiny.qwen3_inputs([(4, 12, 20), (3, 20, 12)])

    def distort(module, args, output):
        output.deepstack_features = [-3 * level + 1 for level in output.deepstack_features]
        return output

    handle = aot_integrations.hf.apply(model, config)
    try:
        assert handle.reduction.config.similarity_channels == dim
        with torch.no_grad():
            model(**inputs)
            plain = handle.last
            hook = model.model.visual.register_forward_hook(distort)
            try:
                model(**inputs)
            finally:
                hook.remove()
            distorted = handle.last
    finally:
        handle.remove()
    for a, b in zip(plain, distorted):
        for x, y in zip(_choice(a.result), _choice(b.result)):
            assert torch.equal(x, y)
        torch.testing.assert_close(a.tokens[:, :dim], b.tokens[:, :dim], rtol=0, atol=0)
        torch.testing.assert_close(b.tokens[:, dim:], -3 * a.tokens[:, dim:] + 1, rtol=1e-4,
                                   atol=1e-4)
    with pytest.raises(ValueError, match=f"similarity_channels=None but .* needs {dim}"):
        aot_integrations.hf.adapters.adapter_for(model).check(
            aot.video_path.Reduction(config.replace(pooling="none")))

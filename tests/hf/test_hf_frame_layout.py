"""Qwen3-VL's fixed per-frame layout: :func:`aot.serving.frame_token_counts` says, before any
encoder runs, how many tokens each frame's piece holds after reduction; it must equal what
``aot_integrations.hf`` writes after each timestamp, and refuse reducers whose split follows the
content."""

import pytest
import torch
from pieces import piece_lengths
from reducer_checks import extra_inputs

import aot
import aot_integrations.hf
from aot.backbones import get_backbone
from aot.reducers import REDUCERS, get_reducer
from aot.serving import frame_token_counts, reduced_token_count
from aot.video_path import Reduction
from aot_integrations import tiny


def _written_pieces(model, grid, retention, reducer, seeds) -> tuple[list[list[int]], object]:
    """Per-frame placeholders the LLM reads after ``aot_integrations.hf`` reduced a batch of
    videos of ``grid`` (t, h, w), one per seed, and the reduction's settings."""
    config = aot_integrations.hf.config_for(model, retention,
                                            **get_backbone("qwen3_vl").tiny)
    handle = aot_integrations.hf.apply(model, Reduction(config, reducer))
    seen = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    try:
        with torch.no_grad():
            model(**tiny.qwen3_inputs([grid] * len(seeds), seeds=seeds))
    finally:
        hook.remove()
        handle.remove()
    return [piece_lengths(row, tiny.VISION_START, tiny.VISION_END, tiny.VIDEO_TOKEN)
            for row in seen[0]], config


@pytest.mark.parametrize("reducer, grid, retention", [
    ("aot", (1, 8, 8), 0.3),          # one frame: no clips
    ("aot", (2, 8, 8), 0.2),          # one clip of two frames
    ("aot", (5, 8, 6), 0.55),         # clips of 1 and more frames
    ("aot", (9, 4, 8), 0.05),         # tiny budget: keyframes keep nothing
    ("aot", (4, 8, 12), 0.9),
    ("aot:no-inter", (6, 8, 8), 0.3),
    ("random", (3, 6, 8), 0.3),
    ("uniform", (3, 6, 8), 0.2),
    ("visionzip", (4, 8, 12), 0.3),
    ("dycoke", (5, 8, 6), 0.3),
    ("dycoke-ttm", (5, 8, 6), 0.3),
])
def test_counts_equal_what_the_transformers_integration_writes(qwen3, reducer, grid, retention):
    written, config = _written_pieces(qwen3, grid, retention, reducer, seeds=[0, 1])
    planned = frame_token_counts("qwen3_vl", grid, config, reducer)
    assert written == [planned, planned]       # two videos, the same split
    assert sum(planned) == reduced_token_count("qwen3_vl", grid, config)


def _video(kind: str, frames: int, tokens: int, seed: int):
    """(features (F, T, 8), shallow, deep) of a random, static, half-static or cutting video."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(frames, tokens, 8, generator=g, dtype=torch.float64)
    scene, other = torch.randn(2, tokens, 8, generator=g, dtype=torch.float64)
    if kind == "static":
        features = scene + 0.05 * noise
    elif kind == "cuts":
        features = torch.stack([scene if (f // 2) % 2 == 0 else other
                                for f in range(frames)]) + 0.1 * noise
    else:
        features = noise
    return (features, torch.rand(frames, tokens, generator=g, dtype=torch.float64),
            torch.rand(frames, tokens, generator=g, dtype=torch.float64))


def _splits(name, frames, rows, cols, retention):
    """Per-frame counts of ``name`` (frame of each kept token's slot) over several contents."""
    config = aot.AOTConfig(pooling="none", anchors_per_frame=min(8, rows * cols), window=3,
                           exact_retention=retention)
    splits = set()
    for kind in ("random", "static", "cuts"):
        for seed in range(2):
            features, shallow, deep = _video(kind, frames, rows * cols, seed)
            result = get_reducer(name)(features, shallow, deep, config, grid=(rows, cols),
                                       **extra_inputs(name, features, deep))
            splits.add(tuple(torch.bincount(result.token_frame.long(),
                                            minlength=frames).tolist()))
    return config, splits


@pytest.mark.parametrize("name", [n for n, info in REDUCERS.items()
                                  if info.frame_counts is not None])
def test_declared_counts_hold_for_any_content(name):
    for (frames, rows, cols), retention in [((1, 4, 4), 0.3), ((2, 4, 4), 0.2),
                                            ((5, 4, 3), 0.55), ((9, 2, 4), 0.05),
                                            ((16, 4, 6), 0.3)]:
        config, splits = _splits(name, frames, rows, cols, retention)
        declared = REDUCERS[name].frame_counts(config, frames, rows * cols)
        assert splits == {tuple(declared)}, (name, frames, retention)


#: a shape where each content-dependent reducer splits differently for different videos
_WITNESS = {"vidcom2": ((2, 4, 4), 0.2), "holitom": ((2, 4, 4), 0.2),
            "fastvid": ((3, 4, 4), 0.3), "flashvid": ((9, 2, 4), 0.55)}


@pytest.mark.parametrize("name", [n for n, info in REDUCERS.items() if info.frame_counts is None])
def test_content_dependent_splits_are_refused(name):
    (frames, rows, cols), retention = _WITNESS[name]
    _, splits = _splits(name, frames, rows, cols, retention)
    assert len(splits) > 1          # the split really follows the content
    with pytest.raises(ValueError, match=f"reducer='{name}' splits its tokens over the frames "
                                         "by the video's content"):
        frame_token_counts("qwen3_vl", (frames, 2 * rows, 2 * cols), retention, name)


def test_dynamic_clips_are_refused():
    config = aot.settings_for("qwen3_vl", 0.25).replace(dynamic_clips=True)
    with pytest.raises(ValueError, match="dynamic_clips=True"):
        frame_token_counts("qwen3_vl", (8, 32, 32), config)
    fixed = frame_token_counts("qwen3_vl", (8, 32, 32), config.replace(dynamic_clips=False))
    assert sum(fixed) == reduced_token_count("qwen3_vl", (8, 32, 32), 0.25)


def test_each_piece_holds_its_own_frames_tokens(qwen3):
    """The embeddings in frame f's piece are the reducer's tokens of frame f (in its order), the
    ones whose positions that piece carries, though AOT emits a clip's merged anchors (its
    keyframe's) after the clip's later frames."""
    config = aot_integrations.hf.config_for(qwen3, 0.3, **get_backbone("qwen3_vl").tiny)
    handle = aot_integrations.hf.apply(qwen3, Reduction(config, "aot"))
    seen = {}

    def keep(key, name):
        def hook(module, args, kwargs):
            seen.setdefault(key, kwargs[name])
        return hook

    hooks = [qwen3.model.register_forward_pre_hook(keep("ids", "input_ids"), with_kwargs=True),
             qwen3.model.language_model.register_forward_pre_hook(
                 keep("embeds", "inputs_embeds"), with_kwargs=True)]
    try:
        with torch.no_grad():
            qwen3(**tiny.qwen3_inputs([(10, 8, 8)]))      # 10 pieces: clips of two
        result = handle.last[0].result
    finally:
        for hook in hooks:
            hook.remove()
        handle.remove()
    frames = result.token_frame.tolist()
    assert frames != sorted(frames)                     # the reducer's order is not by frame
    ids, embeds = seen["ids"][0], seen["embeds"][0]
    piece = torch.cumsum(ids == tiny.VISION_START, 0) - 1
    video = ids == tiny.VIDEO_TOKEN
    width = embeds.shape[-1]
    for frame in range(10):
        written = embeds[video & (piece == frame)]
        torch.testing.assert_close(written, result.tokens[result.token_frame == frame, :width])

"""Tiny random stock transformers models and processor-shaped video inputs, built offline.

For tests and CPU smoke runs: the models are the real transformers classes built from their
config classes (no hub); the inputs are tensors shaped exactly as the processors produce them
(placeholder runs of the unreduced token count, ``pixel_values_videos`` / ``video_grid_thw`` /
``mm_token_type_ids`` in the processors' layouts).
"""

from __future__ import annotations

import torch

VOCAB = 300
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END, PAD = 290, 291, 292, 293, 0


def _text(**extra) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                pad_token_id=PAD, bos_token_id=1, eos_token_id=2, **extra)


def onevision(seed: int = 0, image_size: int = 84, vision_layers: int = 4):
    """``LlavaOnevisionForConditionalGeneration`` with random weights: SigLIP of
    ``vision_layers`` layers on ``image_size`` px (84 -> a 6x6 patch grid), Qwen2 text."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              Qwen2Config, SiglipVisionConfig)

    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        text_config=Qwen2Config(**_text()),
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=vision_layers, num_attention_heads=2,
                                         image_size=image_size, patch_size=14),
        image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_feature_layer=-1,
        vision_feature_select_strategy="full")
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.model.image_newline.normal_()
    model.generation_config.pad_token_id = PAD
    return model


def qwen2_5_vl(seed: int = 0, depth: int = 4, fullatt: tuple[int, ...] = (1, 3)):
    """``Qwen2_5_VLForConditionalGeneration`` with random weights: a ``depth``-block windowed
    ViT (full attention in ``fullatt``), 2x2 merger, M-RoPE Qwen2.5 text."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=_text(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=32, fullatt_block_indexes=list(fullatt),
                           window_size=112, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, tokens_per_second=2),
        image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = PAD
    return model


def qwen3_vl(seed: int = 0, depth: int = 4, deepstack: tuple[int, ...] = (1, 2)):
    """``Qwen3VLForConditionalGeneration`` with random weights: a ``depth``-block ViT on 16-px
    patches with DeepStack levels after blocks ``deepstack``, interleaved M-RoPE text."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen3VLConfig(
        text_config=_text(head_dim=8, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
            "mrope_interleaved": True}),
        vision_config=dict(depth=depth, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=32, patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=16,
                           deepstack_visual_indexes=list(deepstack)),
        image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = PAD
    return model


def _batch(rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols] = torch.tensor(row)
        mask[i, cols] = 1
    return ids, mask


def _prompt(seed: int, run: list[int]) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    before = torch.randint(3, 280, (3 + seed % 3,), generator=g).tolist()
    after = torch.randint(3, 280, (4 + seed % 2,), generator=g).tolist()
    return before + run + after


def onevision_inputs(frames: list[int], image_size: int = 84, seeds: list[int] | None = None,
                     left: bool = True) -> dict:
    """One video per row, as ``LlavaOnevisionProcessor`` lays it out: ``frames * ceil(g/2)^2 + 1``
    placeholders (g = image_size // 14), pixel_values_videos (B, F, 3, S, S). All rows need the
    same frame count (the processor's tensor is rectangular)."""
    if len(set(frames)) != 1:
        raise ValueError(f"onevision_inputs: one frame count per batch, got {frames}")
    seeds = seeds or list(range(len(frames)))
    side = -(-(image_size // 14) // 2)
    rows = [_prompt(s, [VIDEO_TOKEN] * (f * side * side + 1)) for s, f in zip(seeds, frames)]
    ids, mask = _batch(rows, left)
    pixels = torch.stack([torch.randn(frames[0], 3, image_size, image_size,
                                      generator=torch.Generator().manual_seed(100 + s))
                          for s in seeds])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pixels}


def qwen_inputs(grids: list[tuple[int, int, int]], seeds: list[int] | None = None,
                left: bool = True, fps: float = 2.0) -> dict:
    """One video per row, as ``Qwen2_5_VLProcessor`` lays it out: ``<vision_start>`` + t*h*w/4
    ``<video_pad>`` + ``<vision_end>``; flattened patches (sum t*h*w, 3*2*14*14); video_grid_thw;
    mm_token_type_ids (2 on video pads); second_per_grid_ts = temporal_patch_size / fps."""
    seeds = seeds or list(range(len(grids)))
    rows = [_prompt(s, [VISION_START] + [VIDEO_TOKEN] * (t * h * w // 4) + [VISION_END])
            for s, (t, h, w) in zip(seeds, grids)]
    ids, mask = _batch(rows, left)
    pixels = torch.cat([torch.randn(t * h * w, 3 * 2 * 14 * 14,
                                    generator=torch.Generator().manual_seed(100 + s))
                        for s, (t, h, w) in zip(seeds, grids)])
    types = (ids == VIDEO_TOKEN).long() * 2
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pixels,
            "video_grid_thw": torch.tensor(grids, dtype=torch.long),
            "second_per_grid_ts": torch.full((len(grids),), 2 / fps),
            "mm_token_type_ids": types}


def qwen3_inputs(grids: list[tuple[int, int, int]], seeds: list[int] | None = None,
                 left: bool = True) -> dict:
    """One video per row, as ``Qwen3VLProcessor`` lays it out: per temporal patch a timestamp
    (two text tokens standing for ``<{t} seconds>``), ``<vision_start>``, h*w/4 pads,
    ``<vision_end>``; flattened 16-px patches (sum t*h*w, 3*2*16*16); video_grid_thw;
    mm_token_type_ids."""
    seeds = seeds or list(range(len(grids)))
    rows = []
    for s, (t, h, w) in zip(seeds, grids):
        run = []
        for frame in range(t):
            run += [200 + frame, 250] + [VISION_START] + [VIDEO_TOKEN] * (h * w // 4) \
                + [VISION_END]
        rows.append(_prompt(s, run))
    ids, mask = _batch(rows, left)
    pixels = torch.cat([torch.randn(t * h * w, 3 * 2 * 16 * 16,
                                    generator=torch.Generator().manual_seed(100 + s))
                        for s, (t, h, w) in zip(seeds, grids)])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": pixels,
            "video_grid_thw": torch.tensor(grids, dtype=torch.long),
            "mm_token_type_ids": (ids == VIDEO_TOKEN).long() * 2}


def _run(argv=None) -> None:
    """``python -m aot.hf.tiny``: token counts and CPU times of the tiny models, stock vs reduced
    (one process, same inputs; times are medians of ``--repeats`` generate calls)."""
    import argparse
    import statistics
    import time

    import aot.hf

    parser = argparse.ArgumentParser(description=_run.__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--retention", type=float, nargs="+", default=[0.1, 0.25])
    args = parser.parse_args(argv)
    knobs = {"onevision": dict(anchors_per_frame=12, window=3, shallow_layer=1, deep_layer=3),
             "qwen2_5_vl": dict(anchors_per_frame=8, window=3, shallow_layer=1, deep_layer=3),
             "qwen3_vl": dict(anchors_per_frame=8, window=3, shallow_layer=1, deep_layer=3)}
    cases = {"onevision": (onevision(), onevision_inputs([16, 16])),
             "qwen2_5_vl": (qwen2_5_vl(), qwen_inputs([(8, 12, 12), (8, 12, 12)])),
             "qwen3_vl": (qwen3_vl(), qwen3_inputs([(8, 12, 12), (8, 12, 12)]))}
    print(f"{'model':<11} {'setting':<9} {'video tokens/row':>16} {'generate s':>10}")
    for name, (model, inputs) in cases.items():
        for retention in [None] + list(args.retention):
            handle = None if retention is None else aot.hf.apply(
                model, aot.hf.config_for(model, retention, **knobs[name]))
            seen = []
            hook = model.model.register_forward_pre_hook(
                lambda m, a, k: seen.append(k["input_ids"]), with_kwargs=True)
            times = []
            with torch.no_grad():
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model.generate(**inputs, max_new_tokens=8, do_sample=False)
                    times.append(time.perf_counter() - start)
            hook.remove()
            tokens = (seen[0] == VIDEO_TOKEN).sum(1).tolist()
            print(f"{name:<11} {'stock' if retention is None else f'r={retention}':<9} "
                  f"{str(tokens):>16} {statistics.median(times):>10.3f}")
            if handle is not None:
                handle.remove()


if __name__ == "__main__":
    _run()

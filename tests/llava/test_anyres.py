"""LLaVA-OneVision images (anyres_max_9): geometry, preprocessing and the model, each against
transformers' independent LlavaOnevision implementation on the same weights and pixels."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import anyres_tiles, process_images
from llava.model import anyres
from llava.model.builder import build_image_processor
from llava_testkit import random_model
from test_llava_model import prompt_ids, to_hf_state

# The published llava-onevision-qwen2-7b-ov pinpoints: every grid from 1x1 to 6x6 tiles of 384.
OV_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
# (width, height): square, wide, tall, small, large enough for the anyres_max_9 shrink, odd.
SIZES = [(500, 500), (1000, 300), (300, 900), (200, 150), (1600, 1200), (777, 333)]


def random_image(size, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def ov_config(**changes):
    return types.SimpleNamespace(**{"image_aspect_ratio": "anyres_max_9",
                                    "image_grid_pinpoints": OV_PINPOINTS, **changes})


# ---------------------------------------------------------------- geometry
def test_pinpoint_forms_agree():
    as_range = anyres.parse_pinpoints("(1x1),...,(6x6)", 384)
    assert as_range == [tuple(p) for p in OV_PINPOINTS]
    assert anyres.parse_pinpoints(str(OV_PINPOINTS), 384) == as_range
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        anyres.parse_pinpoints([[384]], 384)
    assert anyres.max_tiles_of("anyres_max_9") == 9 and anyres.max_tiles_of("anyres") is None
    with pytest.raises(ValueError, match="image_aspect_ratio='pad'"):
        anyres.max_tiles_of("pad")


def test_best_resolution_and_tile_counts_match_transformers():
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        image_size_to_num_patches, select_best_resolution)

    rng = np.random.default_rng(1)
    sizes = SIZES + [tuple(int(v) for v in rng.integers(16, 3000, 2)) for _ in range(300)]
    for width, height in sizes:
        ours = anyres.select_best_resolution((width, height), anyres.parse_pinpoints(
            OV_PINPOINTS, 384))
        hf_h, hf_w = select_best_resolution((height, width), OV_PINPOINTS)  # (h, w) there
        assert ours == (hf_w, hf_h), (width, height)
        assert anyres.num_tiles((width, height), OV_PINPOINTS, 384) == \
            image_size_to_num_patches((height, width), OV_PINPOINTS, 384)


def test_unpad_keeps_the_image_and_the_shrink_rule():
    # 1000x300 on a 3x1 grid (1152x384): the image fills the width; rows 1..80 of 81 hold it.
    rows, cols = anyres.unpadded_bounds(27, 81, (1000, 300))
    assert (rows, cols) == (slice(1, 26), slice(0, 81))
    # 369x820 on a 1x3 grid (27 x 81 patches): 820 * 27 / 369 = 59.99999999999999 in floats.
    # LLaVA-NeXT truncates to 59 and keeps rows 11..69; transformers rounds to 60 first and
    # keeps 10..70 (43 of 1.9M sizes differ so). We follow LLaVA-NeXT, which made the numbers.
    assert anyres.unpadded_bounds(81, 27, (369, 820)) == (slice(11, 70), slice(0, 27))
    from transformers.models.llava_onevision.modeling_llava_onevision import unpad_image
    assert unpad_image(torch.zeros(1, 81, 27), (820, 369)).shape[1] == 61
    assert anyres.downscaled_size(81, 81, 9, 27) is None  # exactly 9 tiles: kept
    assert anyres.downscaled_size(89, 89, 9, 27) is None  # within the 10 % slack
    assert anyres.downscaled_size(108, 108, 9, 27) == (81, 81)
    assert anyres.downscaled_size(500, 500, None, 27) is None  # plain anyres never shrinks


def test_pack_image_layout():
    """Base view first, then each map row followed by the newline."""
    grid, dim = 27, 4
    size = (384, 768)  # 1x2 grid, no padding, no shrink
    tiles = torch.randn(3, grid * grid, dim)
    newline = torch.full((dim,), 7.0)
    out = anyres.pack_image(tiles, size, OV_PINPOINTS, 384, 9, newline)
    assert out.shape == (grid * grid + 2 * grid * (grid + 1), dim)
    assert out.shape[0] == anyres.image_token_count(size, OV_PINPOINTS, 384, grid, 9)
    assert torch.equal(out[:grid * grid], tiles[0])
    body = out[grid * grid:].reshape(2 * grid, grid + 1, dim)
    assert torch.equal(body[:, -1], newline.expand(2 * grid, dim))
    crops = tiles[1:].reshape(2, grid, grid, dim)  # rows of the top crop, then the bottom one
    assert torch.equal(body[:grid, :grid], crops[0]) and torch.equal(body[grid:, :grid], crops[1])
    with pytest.raises(ValueError, match=r"needs 1 \+ 2x1 tiles.*but 2 were given"):
        anyres.pack_image(tiles[:2], size, OV_PINPOINTS, 384, 9, newline)


# ---------------------------------------------------------------- preprocessing (PIL)
@pytest.mark.parametrize("size", SIZES)
def test_process_images_matches_transformers_preprocessing(size):
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)

    image = random_image(size, seed=size[0])
    ours = process_images([image], build_image_processor(384), ov_config())
    hf = LlavaOnevisionImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                         image_grid_pinpoints=OV_PINPOINTS)
    theirs = hf.preprocess([image], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, anyres.num_tiles(size, OV_PINPOINTS, 384), 3, 384,
                                          384)
    assert torch.equal(ours, theirs)


def test_process_images_tiles_and_other_modes():
    wide, tall = random_image((1000, 300)), random_image((300, 900), seed=1)
    tiles = anyres_tiles(wide, OV_PINPOINTS, 384)
    assert len(tiles) == 4 and all(t.size == (384, 384) for t in tiles)
    # the padded canvas is black above and below the resized image (1152 x 346 inside 384)
    assert np.asarray(tiles[1])[:18].max() == 0 and np.asarray(tiles[1])[20:360].max() > 0
    mixed = process_images([wide, random_image((2000, 2000))], build_image_processor(384),
                           ov_config())
    assert isinstance(mixed, list) and [m.shape[0] for m in mixed] == [4, 37]
    padded = process_images([wide, tall], build_image_processor(384), ov_config(
        image_aspect_ratio="pad"))
    assert padded.shape == (2, 3, 384, 384)
    with pytest.raises(ValueError, match="needs image_grid_pinpoints"):
        process_images([wide], build_image_processor(384), ov_config(image_grid_pinpoints=None))


# ---------------------------------------------------------------- model vs transformers
def hf_twin(ours):
    """transformers' LlavaOnevisionForConditionalGeneration with our weights and image config."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              Qwen2Config)

    cfg = ours.config
    tower = ours.get_vision_tower().config
    text = Qwen2Config(**{k: getattr(cfg, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "rms_norm_eps",
        "tie_word_embeddings")}, rope_parameters=dict(cfg.rope_parameters))
    vision = {k: getattr(tower, k) for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "image_size", "patch_size", "hidden_act", "layer_norm_eps")}
    hf_config = LlavaOnevisionConfig(
        text_config=text.to_dict(), vision_config=dict(vision, model_type="siglip_vision_model",
                                                       vision_use_head=False),
        vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_token_index=cfg.vocab_size - 1, video_token_index=cfg.vocab_size - 2,
        projector_hidden_act="gelu", multimodal_projector_bias=True,
        image_grid_pinpoints=cfg.image_grid_pinpoints, vision_aspect_ratio=cfg.image_aspect_ratio)
    hf = LlavaOnevisionForConditionalGeneration(hf_config).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state(ours.state_dict()), strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    return hf


@pytest.fixture(scope="module")
def ov_pair():
    ours = random_model("ov", seed=21, image_grid_pinpoints=OV_PINPOINTS)
    return ours, hf_twin(ours)


@pytest.mark.parametrize("size", [(500, 500), (1000, 300), (300, 900), (200, 150),
                                  pytest.param((1600, 1200), marks=pytest.mark.slow)])
def test_image_logits_match_transformers(ov_pair, tokenizer, size):
    ours, hf = ov_pair
    image = random_image(size, seed=3)
    pixels = process_images([image], build_image_processor(384), ours.config)
    ids, _ = prompt_ids(tokenizer, "Describe the image.")
    with torch.no_grad():
        mine = ours(ids, images=pixels, image_sizes=[image.size]).logits
    visual = mine.shape[1] - (ids.shape[1] - 1)
    assert visual == anyres.image_token_count(size, OV_PINPOINTS, 384, 27, 9)
    cut = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero())
    image_id = ours.config.vocab_size - 1
    hf_ids = torch.cat([ids[:, :cut], torch.full((1, visual), image_id), ids[:, cut + 1:]], 1)
    with torch.no_grad():  # transformers takes (height, width) and raises on a count mismatch
        theirs = hf(input_ids=hf_ids, pixel_values=pixels,
                    image_sizes=torch.tensor([[size[1], size[0]]])).logits
    diff = (mine - theirs).abs().max().item()
    print(f"[anyres] {size[0]}x{size[1]}: {pixels.shape[1]} tiles, {visual} image tokens, "
          f"max |logit diff| {diff:.2e}")
    torch.testing.assert_close(mine, theirs, atol=2e-4, rtol=1e-4)


def test_image_batch_tensor_has_no_newline_and_list_needs_sizes(tokenizer):
    """A 4-D batch of single-tile images (LLaVA-NeXT's multi-image 'pad' path) gives patch
    tokens only; an anyres image without its size is an error, not a guess."""
    model = random_model("ov", seed=22, image_grid_pinpoints=OV_PINPOINTS)
    ids, _ = prompt_ids(tokenizer, "<image>\nCompare the two images.")  # two placeholders
    images = [random_image((500, 300)), random_image((300, 500), seed=1)]
    pad = process_images(images, build_image_processor(384), ov_config(image_aspect_ratio="pad"))
    with torch.no_grad():
        out = model(ids, images=pad, image_sizes=[im.size for im in images]).logits
    assert out.shape[1] == ids.shape[1] - 2 + 2 * 729
    one, _ = prompt_ids(tokenizer, "Describe the image.")
    tiles = process_images(images[:1], build_image_processor(384), model.config)
    with pytest.raises(ValueError, match=r"needs its original size: pass image_sizes"):
        model(one, images=tiles)
    with pytest.raises(ValueError, match=r"size \(1600, 1200\).*needs 1 \+ 4x5 tiles.*but 3 were"):
        model(one, images=tiles, image_sizes=[(1600, 1200)])
    flat = random_model("ov", seed=22, image_grid_pinpoints=OV_PINPOINTS,
                        image_aspect_ratio="square")
    with pytest.raises(ValueError, match="image_aspect_ratio='square' makes one per image"):
        flat(one, images=tiles, image_sizes=[images[0].size])
    # anyres token count for the list form too: base + unpadded map with newlines
    with torch.no_grad():
        single = model(one, images=list(tiles), image_sizes=[images[0].size]).logits
    expected = anyres.image_token_count((500, 300), OV_PINPOINTS, 384, 27, 9)
    assert single.shape[1] == one.shape[1] - 1 + expected
    assert math.isfinite(float(single.abs().max()))

"""aot_integrations.hf reads the right attention for the right token on Qwen2.5-VL and Qwen3-VL, on non-square
grids and batches of different grids (tiny random models, aot_integrations.tiny).

Two facts, each checked against the stock tower rather than against our own restore code:

1. Values: the received attention :func:`aot_integrations.hf.qwen.qwen_vision_received` recomputes at a
   block equals the one the stock eager kernel computes there (its ``eager_attention_forward``,
   called once per ``cu_seqlens`` segment: one window in Qwen2.5-VL's windowed blocks, one
   temporal patch in full-attention blocks), row for row in the tower's order.
2. Order: the per-merged-token scores the adapter hands to the reducer (``Encoded.attention``)
   sit in the raster order of the LLM's video tokens. Each row the attention module sees is
   tagged through the tower's own bookkeeping (the rotary (h, w) position ids, which the tower
   permutes into window order together with the hidden states), the tag goes through the real
   hook and the adapter's restore, and comes out compared with the M-RoPE (h, w) position the
   LLM gives each placeholder. A behavioural check on real scores: in a windowed block each
   window's queries spread a total mass of (window length) over that window's keys, so the
   scores summed over each window's block of merged tokens, read in raster order, must give the
   window's token count; a mis-ordering mixes windows of different sizes.
"""

import pytest
import torch

pytest.importorskip("transformers")

from aot_integrations.hf import qwen as hf_qwen
from aot_integrations import tiny
from aot_integrations.hf.adapters import adapter_for
from aot_integrations.capture import capturing
from aot_integrations.hf.qwen import qwen_vision_received

# video_grid_thw rows (t, h, w) in patches: 6x10 and 10x6 merged tokens per temporal patch.
LANDSCAPE, PORTRAIT = (2, 12, 20), (3, 20, 12)
BATCHES = [[LANDSCAPE], [PORTRAIT], [LANDSCAPE, PORTRAIT]]
# model name -> (builder, inputs, modeling module, blocks to read). Qwen2.5-VL tiny: blocks 0, 2
# windowed, 1, 3 full attention. Qwen3-VL: every block full attention.
MODELS = {
    "qwen2_5_vl": (tiny.qwen2_5_vl, tiny.qwen_inputs,
                   "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", (0, 1)),
    "qwen3_vl": (tiny.qwen3_vl, tiny.qwen3_inputs,
                 "transformers.models.qwen3_vl.modeling_qwen3_vl", (0, 3)),
}
WINDOWED = {"qwen2_5_vl": 0}


@pytest.fixture(scope="module")
def models():
    """Eager attention in the tower, so the stock kernel materialises its probabilities, and
    q/k/v weights of a trained model's scale: at the random init (std 0.02) every patch receives
    about 1, and a mis-ordering would be invisible."""
    built = {}
    for name, (build, *_rest) in MODELS.items():
        model = build()
        model.set_attn_implementation("eager")
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for block in model.model.visual.blocks:
                weight = block.attn.qkv.weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
        built[name] = model
    return built


def stock_received(model, name, inputs, layer, monkeypatch) -> torch.Tensor:
    """(S,) received attention at ``layer`` from the probabilities the stock eager kernel
    computes, one call per attention segment, concatenated in the tower's order."""
    import importlib

    modeling = importlib.import_module(MODELS[name][2])
    target = model.model.visual.blocks[layer].attn
    original = modeling.eager_attention_forward
    chunks = []

    def recording(module, query, key, value, attention_mask, scaling, **kwargs):
        output, weights = original(module, query, key, value, attention_mask, scaling, **kwargs)
        if module is target:
            chunks.append(weights.detach().float().sum(2).mean(1)[0])   # (1, heads, n, n) -> (n,)
        return output, weights

    monkeypatch.setattr(modeling, "eager_attention_forward", recording)
    visual = model.model.visual
    with torch.no_grad():
        visual(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"])
    monkeypatch.undo()
    assert chunks, "the stock eager kernel never ran at the chosen block"
    return torch.cat(chunks)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("grids", BATCHES)
def test_hook_equals_stock_attention(models, monkeypatch, name, grids):
    model = models[name]
    inputs = MODELS[name][1](grids)
    visual = model.model.visual
    layers = MODELS[name][3]
    with capturing({layer: visual.blocks[layer].attn for layer in layers},
                   qwen_vision_received) as sinks, torch.no_grad():
        visual(inputs["pixel_values_videos"], grid_thw=inputs["video_grid_thw"])
    patches = sum(t * h * w for t, h, w in grids)
    for layer in layers:
        stock = stock_received(model, name, inputs, layer, monkeypatch)
        ours = sinks[layer][0]
        assert stock.shape == ours.shape == (patches,)
        torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-5)
        # Not a constant: the scores vary from patch to patch (else order would be unobservable).
        assert ours.std() > 0.3


def llm_raster(adapter, inputs, grids) -> list[torch.Tensor]:
    """Per video, (t, rows*cols, 2): the (h, w) merged-token coordinates the LLM gives each of its
    video placeholders, read off the stock M-RoPE positions (offsets from the frame's first)."""
    positions = adapter.positions(inputs)                     # (3, B, L)
    out = []
    for row, (t, h, w) in enumerate(grids):
        video = inputs["input_ids"][row] == tiny.VIDEO_TOKEN
        hw = positions[1:, row, video].T.reshape(t, h * w // 4, 2)
        out.append(hw - hw.min(dim=1, keepdim=True).values)
    return out


def tag_rows(model, grids, monkeypatch):
    """Replace the rotary cos by a tag of each patch, 4096 * frame + 64 * h + w (frame counted
    over the batch, (h, w) the tower's own rotary position ids), in the rows the tower computes
    them in: the tower then carries the tag to its attention modules in its own order (window
    order in Qwen2.5-VL), exactly as it carries each patch's rotary angles."""
    rotary = model.model.visual.rotary_pos_emb
    original = rotary.forward
    frames = torch.cat([torch.arange(t).repeat_interleave(h * w) for t, h, w in grids])
    offsets = torch.tensor([0] + [t for t, _, _ in grids]).cumsum(0)[:-1]
    frames += torch.cat([torch.full((t * h * w,), int(o)) for o, (t, h, w)
                         in zip(offsets, grids)])

    def tagged(hidden_states, position_ids):
        cos, sin = original(hidden_states, position_ids)
        assert position_ids.shape == (frames.numel(), 2)
        cos = cos.clone()
        cos[:, 0] = (4096 * frames + 64 * position_ids[:, 0] + position_ids[:, 1]).to(cos.dtype)
        return cos, sin

    monkeypatch.setattr(rotary, "forward", tagged)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("grids", BATCHES)
def test_encoded_attention_in_llm_raster_order(models, monkeypatch, name, grids):
    model = models[name]
    inputs = MODELS[name][1](grids)
    adapter = adapter_for(model)
    layers = MODELS[name][3]
    tag_rows(model, grids, monkeypatch)
    # The hook returns each row's tag instead of its received attention; everything else (the
    # hooks on the chosen blocks, the adapter's restore, 2x2 mean and split) is the real code.
    monkeypatch.setattr(hf_qwen, "qwen_vision_received",
                        lambda module, args, kwargs: kwargs["position_embeddings"][0][:, 0].float())
    with torch.no_grad():
        encoded = adapter.encode_batch(inputs, layers)
    first_frame = 0
    for video, (t, h, w), raster in zip(encoded, grids, llm_raster(adapter, inputs, grids)):
        assert video.grid == (h // 2, w // 2)
        # Merged token at LLM (r, c) of frame f: its 2x2 patches have h in {2r, 2r+1},
        # w in {2c, 2c+1}, so the mean tag is 4096 f + 64 (2r + 0.5) + (2c + 0.5).
        frame = torch.arange(first_frame, first_frame + t)[:, None].float()
        expected = 4096 * frame + 64 * (2 * raster[..., 0] + 0.5) + (2 * raster[..., 1] + 0.5)
        for layer in layers:
            assert video.attention[layer].shape == (t, h * w // 4)
            torch.testing.assert_close(video.attention[layer], expected, rtol=0, atol=0)
        first_frame += t


def window_token_counts(rows: int, cols: int, side: int) -> torch.Tensor:
    """(rows, cols) -> for each merged token, the number of merged tokens in its attention window
    (windows tile the grid from the top-left corner in side x side blocks, the last row and column
    of windows cut by the grid's edge)."""
    r = torch.arange(rows) // side
    c = torch.arange(cols) // side
    height = torch.bincount(r)[r]
    width = torch.bincount(c)[c]
    return height[:, None] * width[None, :]


@pytest.mark.parametrize("grids", BATCHES)
def test_window_mass_in_raster_order(models, grids):
    """Real scores of a windowed Qwen2.5-VL block, read by the adapter: each window's scores sum
    to its merged-token count (each of its 4 n patches receives, in total, 4 n of mass, and a
    merged token's score is the mean over its 4 patches); a full-attention block: each frame's
    scores sum to rows*cols. Mis-ordered scores would mix the 4x4, 4x2, 2x4 and 2x2 windows of
    these grids."""
    name = "qwen2_5_vl"
    model = models[name]
    visual = model.model.visual
    side = visual.window_size // visual.spatial_merge_size // visual.patch_size
    inputs = MODELS[name][1](grids)
    full = MODELS[name][3][1]
    with torch.no_grad():
        encoded = adapter_for(model).encode_batch(inputs, (WINDOWED[name], full))
    for video, (t, h, w) in zip(encoded, grids):
        rows, cols = h // 2, w // 2
        counts = window_token_counts(rows, cols, side).float()
        assert counts.unique().numel() > 1, "the grid must make windows of different sizes"
        scores = video.attention[WINDOWED[name]].view(t, rows, cols)
        window_id = ((torch.arange(rows) // side)[:, None] * cols + torch.arange(cols) // side)
        for frame in range(t):
            sums = torch.zeros(rows * cols).index_add_(0, window_id.flatten(),
                                                       scores[frame].flatten())
            torch.testing.assert_close(sums[window_id], counts, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(video.attention[full].sum(1),
                                   torch.full((t,), float(rows * cols)), rtol=1e-4, atol=1e-4)

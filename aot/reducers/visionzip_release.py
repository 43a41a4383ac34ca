"""The VisionZip port that LLaVA-OneVision papers run (HoliTom's), faithful to its release.

Release: ``cokeshao/HoliTom`` at ``e9b2972f6895``, ``visionzip/llava_arch.py`` (the video branch
of ``prepare_inputs_labels_for_multimodal`` and its nested ``visionzip()``, L75-186), with
``SPATIAL_TOKENS`` S set by its scripts to 20 / 30 / 40 / 50 at retention 0.10 / 0.15 / 0.20 /
0.25. Per frame, on the backbone's pooled grid (``get_2dPool`` of features, attention and keys):

1. dominant: the ``int(S * 54/64)`` tokens receiving the most attention at the last kept SigLIP
   layer, emitted in position order;
2. contextual: the other tokens in position order; ``step = max(1, n // c)`` over those n tokens
   picks c = S - dominant targets (``arange(0, n, step)[:c]``); every other remaining token joins
   the target whose **key** (the last layer's key states averaged over heads, L2-normalised) is
   most cosine-similar; a contextual token is ``target + mean(members)`` (a sum, not a mean);
3. order: LLaVA-OV (``mm_newline_position="one_token"``) emits a frame's dominant tokens then its
   contextual ones; LLaVA-Video (``"grid"``) sorts them by position.

Registered as ``visionzip-release``; it reads ``last_attention`` and ``last_keys``, which every
adapter captures when a reduction declares them (:data:`aot.video_path.EXTRA_INPUTS`). The
project's own VisionZip-style reducer is ``visionzip`` (:mod:`.visionzip`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import AOTConfig, check_bool_fields, is_finite_number
from ..ops import first_in_order, pack_left
from ..pooling import pool_grid
from ..result import KIND_ANCHOR, KIND_FRAME, ReducedVideo
from .common import flatten_slots, frame_counts, make_result, resolve_budget, validate, work_dtype

COUNT_MODES = ("exact", "released")
#: The release's ``SPATIAL_TOKENS`` per retention, as HoliTom's scripts set them.
RELEASED_SPATIAL_TOKENS = {0.10: 20, 0.15: 30, 0.20: 40, 0.25: 50}


@dataclass(frozen=True)
class VisionZipReleaseConfig:
    """Knobs of the released VisionZip port.

    count: ``"exact"`` (default: ``floor(r*N+0.5)`` tokens spread over the frames, earlier frames
        first, each frame split by the release's dominant ratio) or ``"released"`` (S tokens per
        frame).
    spatial_tokens: S of ``released`` mode; None: the release's scripts' value for the retention
        (:data:`RELEASED_SPATIAL_TOKENS`; another retention: ``round(200 r)``, the same rule).
    dominant_ratio: the release's ``DOMINANT_RATIO`` (54/64).
    """

    count: str = "exact"
    spatial_tokens: int | None = None
    dominant_ratio: float = 54 / 64

    def __post_init__(self) -> None:
        check_bool_fields(self)
        if self.count not in COUNT_MODES:
            raise ValueError(f"VisionZipReleaseConfig.count={self.count!r}: expected one of "
                             f"{COUNT_MODES}")
        tokens = self.spatial_tokens
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                                   or tokens < 1):
            raise ValueError(f"VisionZipReleaseConfig.spatial_tokens={tokens!r}: expected None "
                             f"or an integer >= 1")
        if not is_finite_number(self.dominant_ratio) or not 0 <= self.dominant_ratio < 1:
            raise ValueError(f"VisionZipReleaseConfig.dominant_ratio={self.dominant_ratio!r}: "
                             f"expected a number in [0, 1)")


def released_spatial_tokens(retention: float, pooled_count: int) -> int:
    """S for a retention: the release's scripts' table, else ``round(200 r)``, within [1, P]."""
    for key, value in RELEASED_SPATIAL_TOKENS.items():
        if abs(retention - key) < 1e-9:
            return min(value, pooled_count)
    return max(1, min(pooled_count, round(200 * retention)))


def reduce_visionzip_release(features: torch.Tensor, shallow_attention: torch.Tensor,
                             deep_attention: torch.Tensor, config: AOTConfig | None = None, *,
                             budget: int | None = None,
                             frame_features: torch.Tensor | None = None,
                             options: VisionZipReleaseConfig | None = None, grid=None,
                             last_attention: torch.Tensor | None = None,
                             last_keys: torch.Tensor | None = None) -> ReducedVideo:
    """The released VisionZip port on the backbone's pooled grid.

    Args:
        features: (F, T, D) projected patch features, T = rows * cols.
        shallow_attention, deep_attention: (F, T); only validated.
        config: uses ``pooling`` (also picks the order: ``"average"`` = LLaVA-Video's grid
            layout, sorted by position) and ``exact_retention``.
        budget: exact token count (exact mode); overrides ``config.exact_retention``.
        frame_features: ignored.
        options: :class:`VisionZipReleaseConfig`.
        grid: the patch grid, ``(rows, cols)`` or a square's side.
        last_attention: (F, T) attention received at the tower's last used layer (any positive
            scale: only its order per frame matters).
        last_keys: (F, T, H) that layer's key states averaged over heads.
    Returns:
        ReducedVideo; dominant tokens ``token_kind`` 0, contextual ones 2 at their target's
        position.
    """
    config = config or AOTConfig()
    options = options or VisionZipReleaseConfig()
    grid, pooled = validate(features, shallow_attention, deep_attention, config, grid)
    frames, tokens = features.shape[:2]
    if last_attention is None or last_keys is None:
        raise ValueError("the released VisionZip port reads last_attention (F, T) and last_keys "
                         "(F, T, H): the attention received at and the keys of the tower's last "
                         "used layer")
    if last_attention.shape != (frames, tokens) or last_keys.dim() != 3 or \
            last_keys.shape[:2] != (frames, tokens):
        raise ValueError(f"last_attention {tuple(last_attention.shape)} / last_keys "
                         f"{tuple(last_keys.shape)}: expected ({frames}, {tokens}) and "
                         f"({frames}, {tokens}, H)")
    pooled_count = pooled[0] * pooled[1]
    if options.count == "released":
        retention = config.exact_retention
        if options.spatial_tokens is None and retention is None:
            raise ValueError("visionzip released count: give spatial_tokens or "
                             "config.exact_retention (the scripts' S follows the retention)")
        per_frame = (min(options.spatial_tokens, pooled_count) if options.spatial_tokens
                     else released_spatial_tokens(retention, pooled_count))
        counts = torch.full((frames,), per_frame, dtype=torch.long, device=features.device)
    else:
        counts = frame_counts(resolve_budget(config, frames, pooled_count, budget,
                                             reducer="visionzip-release"), frames,
                              features.device)
    # int(S * ratio) in Python floats, as the release computes it
    dominant = torch.tensor([int(int(k) * options.dominant_ratio) for k in counts.tolist()],
                            device=features.device)
    contextual = counts - dominant

    dtype = work_dtype(features)
    values = pool_grid(features.to(dtype), grid, config.pooling)  # (F, P, D)
    attention = pool_grid(last_attention.to(dtype)[..., None], grid, config.pooling)[..., 0]
    keys = pool_grid(last_keys.to(dtype), grid, config.pooling)  # (F, P, H)
    positions = torch.arange(pooled_count, device=values.device)

    order = torch.sort(attention, dim=1, descending=True, stable=True).indices
    is_dominant = first_in_order(order, dominant)  # (F, P)
    rest, _ = pack_left(~is_dominant, pooled_count)  # (F, P): remaining positions, ascending
    remaining = pooled_count - dominant  # (F,)
    step = torch.clamp(remaining // contextual.clamp(min=1), min=1)
    width = int(contextual.max()) if frames else 0
    slots = torch.arange(width, device=values.device)
    target_slot = slots[None, :] * step[:, None]  # (F, C): arange(0, n, step)[:c]
    target_valid = (slots[None, :] < contextual[:, None]) & (target_slot < remaining[:, None])
    target_pos = rest.gather(1, target_slot.clamp(max=pooled_count - 1))  # (F, C)
    padded_pos = torch.where(target_valid, target_pos, pooled_count)  # invalid -> a spare column
    is_target = torch.zeros(frames, pooled_count + 1, dtype=torch.bool, device=values.device)
    is_target = is_target.scatter_(1, padded_pos, True)[:, :pooled_count]
    members = ~is_dominant & ~is_target

    unit = keys / keys.norm(dim=-1, keepdim=True)  # the release: no epsilon
    target_unit = unit.gather(1, target_pos[..., None].expand(-1, -1, unit.shape[-1]))
    similarity = unit @ target_unit.transpose(1, 2)  # (F, P, C)
    similarity = similarity.masked_fill(~target_valid[:, None, :], -torch.inf)
    assign = similarity.argmax(dim=2)  # (F, P): first maximum, as torch.argmax
    one_hot = torch.nn.functional.one_hot(assign, slots.numel()).to(dtype)
    one_hot = one_hot * members[..., None].to(dtype)  # (F, P, C)
    sums = one_hot.transpose(1, 2) @ values  # (F, C, D)
    count = one_hot.sum(1).clamp(min=1)[..., None]
    target_values = values.gather(1, target_pos[..., None].expand(-1, -1, values.shape[-1]))
    merged = target_values + sums / count  # (F, C, D)

    # One slot per position: a dominant token as it is, a target as its contextual token.
    dim = values.shape[-1]
    slot_values = torch.cat([values, values.new_zeros(frames, 1, dim)], 1)
    slot_values = slot_values.scatter_(1, padded_pos[..., None].expand(-1, -1, dim),
                                       merged)[:, :pooled_count]
    kept = is_dominant | is_target
    # LLaVA-OV lists a frame's dominant tokens, then its contextual ones; LLaVA-Video (average
    # pooling, "grid" newlines) sorts them by position.
    key = positions.expand(frames, -1) + (0 if config.pooling == "average" else
                                          pooled_count * is_target.long())
    slot_order = torch.sort(key, dim=1, stable=True).indices  # (F, P)
    kinds = torch.where(is_target, KIND_ANCHOR, KIND_FRAME)  # 2: absorbed others
    out, token_frame, token_position, token_kind = flatten_slots(
        slot_values.gather(1, slot_order[..., None].expand(-1, -1, values.shape[-1])),
        slot_order, kinds.gather(1, slot_order), kept.gather(1, slot_order))
    return make_result(out.to(features.dtype), token_frame, token_position, token_kind,
                       frames=frames, grid=grid, pooled=pooled, survivors=kept,
                       merged=is_target)

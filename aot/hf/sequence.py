"""Shorten a processed batch to the reduced visual sequences (pure torch, no model code).

The processor sized every video's placeholder run for the unreduced model. After the reducer,
video ``v`` has ``L_v`` tokens; each comes with a *slot*: the index, inside that video's
unreduced placeholder run, of the token whose position it keeps (its own place for a kept token,
the anchor's for a merged anchor). This module rebuilds ``input_ids``, ``attention_mask``, any
per-token side tensor (``mm_token_type_ids``) and, for M-RoPE models, the position ids: text
columns are copied, each video's run is replaced by its ``L_v`` tokens at the place of the run,
and padding is rebuilt on the side the batch was padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Shortened:
    """A batch after the rewrite.

    input_ids: (B, L') ids, each video's run shortened to its reduced length.
    attention_mask: (B, L') 1 for real tokens, 0 for padding.
    source: (B, L') long, the original column each new column copies its id/type from (padding:
        an original padding column, or 0 when the row had none).
    position_source: (B, L') long, the original column whose position each new column keeps.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    source: torch.Tensor
    position_source: torch.Tensor

    def take(self, per_token: torch.Tensor, pad_value=0) -> torch.Tensor:
        """(B, L) side tensor -> (B, L') following :attr:`source` (padding gets ``pad_value``)."""
        out = torch.gather(per_token, 1, self.source.to(per_token.device))
        return out.masked_fill(self.attention_mask.to(out.device) == 0, pad_value)

    def positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        """(C, B, L) original position ids -> (C, B, L') positions of the kept columns
        (padding 0, as transformers' ``get_rope_index`` leaves it)."""
        index = self.position_source.to(position_ids.device)[None].expand(position_ids.shape[0],
                                                                           -1, -1)
        out = torch.gather(position_ids, 2, index)
        return out.masked_fill(self.attention_mask.to(out.device)[None] == 0, 0)


def shorten(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, video_token_id: int,
            runs: list[int], slots: list[torch.Tensor], pad_token_id: int = 0) -> Shortened:
    """Replace each video's placeholder run by its reduced length.

    Args:
        input_ids: (B, L) the processor's ids; videos' placeholders appear in batch order (row 0
            first, left to right), as ``masked_scatter`` fills them.
        attention_mask: (B, L) or None (no padding).
        video_token_id: the placeholder id.
        runs: per video, its unreduced placeholder count N_v.
        slots: per video, (L_v,) long indices into that video's unreduced placeholder run
            (the run may be split by text, e.g. per-frame timestamps: indices count the
            video's placeholders in order).
        pad_token_id: id written into new padding columns.
    Returns:
        :class:`Shortened`; rows are padded to the longest on the side the batch was padded
        (left when any row starts with padding, else right).
    """
    batch, length = input_ids.shape
    mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).bool()
    is_video = (input_ids == video_token_id) & mask
    needed = int(is_video.sum())
    if needed != sum(runs):
        raise ValueError(f"input_ids hold {needed} video placeholders but the encoded videos "
                         f"need {sum(runs)} ({runs}); pass the processor's input_ids unchanged")
    rows_src, rows_pos = [], []
    video = 0
    used = 0          # placeholders of ``video`` already consumed
    for row in range(batch):
        src, pos = [], []
        cols = torch.nonzero(mask[row]).flatten().tolist()
        run_cols: list[int] = []
        for col in cols:
            if not is_video[row, col]:
                src.append(col)
                pos.append(col)
                continue
            if video >= len(slots):
                raise ValueError(f"input_ids hold {needed} video placeholders but only "
                                 f"{len(slots)} videos were encoded")
            if used == 0:
                run_cols = []
                first = col
            run_cols.append(col)
            used += 1
            if used == runs[video]:
                # the whole run is seen: emit the reduced tokens at its first column
                chosen = slots[video].tolist()
                if chosen and max(chosen) >= len(run_cols):
                    raise ValueError(f"video {video}: slot {max(chosen)} outside its run of "
                                     f"{len(run_cols)} placeholders")
                src.extend([first] * len(chosen))
                pos.extend(run_cols[i] for i in chosen)
                video += 1
                used = 0
        if used:
            raise ValueError(f"row {row} ends inside the placeholder run of video {video}; a "
                             "video's placeholders must not span rows")
        rows_src.append(src)
        rows_pos.append(pos)
    if video != len(slots):
        raise ValueError(f"{len(slots)} videos were encoded but input_ids hold placeholders for "
                         f"{video}")
    return _pad(input_ids, mask, rows_src, rows_pos, pad_token_id)


def _pad(input_ids, mask, rows_src, rows_pos, pad_token_id) -> Shortened:
    batch = input_ids.shape[0]
    width = max(len(r) for r in rows_src)
    left = bool((~mask[:, 0]).any()) and not bool((~mask[:, -1]).any())
    ids = torch.full((batch, width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    new_mask = torch.zeros((batch, width), dtype=torch.long, device=input_ids.device)
    source = torch.zeros((batch, width), dtype=torch.long, device=input_ids.device)
    position_source = torch.zeros_like(source)
    for row, (src, pos) in enumerate(zip(rows_src, rows_pos)):
        n = len(src)
        cols = slice(width - n, width) if left else slice(0, n)
        src_t = torch.tensor(src, dtype=torch.long, device=input_ids.device)
        ids[row, cols] = input_ids[row, src_t]
        new_mask[row, cols] = 1
        source[row, cols] = src_t
        position_source[row, cols] = torch.tensor(pos, dtype=torch.long, device=input_ids.device)
    return Shortened(ids, new_mask, source, position_source)

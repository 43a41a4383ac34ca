"""Shorten a processed batch to the reduced visual sequences (pure torch, no model code).

The processor sized every video's placeholder run for the unreduced model. After the reducer,
video ``v`` has ``L_v`` tokens; each comes with a *slot*: the index, inside that video's
unreduced placeholder run, of the token whose position it keeps (its own place for a kept token,
the anchor's for a merged anchor). This module rebuilds ``input_ids``, ``attention_mask``, any
per-token side tensor (``mm_token_type_ids``) and, for M-RoPE models, the position ids: text
columns are copied, each video's run is replaced by its ``L_v`` tokens at the place of the run
(a run split by text into pieces keeps each token in the piece of its slot), and padding is
rebuilt on the side the batch was padded.
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


def check_placeholders(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       video_token_id: int, pieces: list[list[int]], source: str,
                       groups: bool) -> None:
    """Refuse placeholders that do not match the videos, before any model work.

    Args:
        input_ids, attention_mask: (B, L) the processor's ids and mask (None: no padding).
        video_token_id: the placeholder id.
        pieces: per video, the lengths of its placeholder runs as the processor writes them
            (one run per video; one per temporal patch on Qwen3-VL, split by timestamps).
        source: what the expected counts come from, for the message (``"video_grid_thw"``).
        groups: True when the model groups placeholders by runs (M-RoPE: each run takes the
            next grid), so two runs with no text between are refused too.
    Raises:
        ValueError: the count differs, a video's placeholders span rows or are split where
            its grid has no break, or (``groups``) two runs touch.
    """
    mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).bool()
    is_video = (input_ids == video_token_id) & mask
    runs = [sum(p) for p in pieces]
    needed = int(is_video.sum())
    if needed != sum(runs):
        raise ValueError(f"aot_integrations.hf: input_ids hold {needed} video placeholders but the "
                         f"{len(runs)} videos of {source} need {sum(runs)} ({runs}); pass the "
                         "processor's input_ids unchanged")
    video_ends, piece_ends, total = set(), set(), 0
    for video_pieces in pieces:
        for length in video_pieces:
            total += length
            piece_ends.add(total)
        video_ends.add(total)
    seen = 0
    breaks, row_ends = set(), {}
    for row in range(input_ids.shape[0]):
        flags = is_video[row][mask[row]].tolist()
        for index, flag in enumerate(flags):
            if flag:
                seen += 1
                if index + 1 == len(flags) or not flags[index + 1]:
                    breaks.add(seen)
        row_ends.setdefault(seen, row)
    starts = [0] + sorted(video_ends)

    def locate(ordinal: int) -> tuple[int, int]:
        video = next(v for v in range(len(runs)) if ordinal < starts[v + 1])
        return video, ordinal - starts[video]

    for ordinal, row in sorted(row_ends.items()):
        if 0 < ordinal < sum(runs) and ordinal not in video_ends:
            video, inside = locate(ordinal)
            raise ValueError(f"aot_integrations.hf: row {row} ends after {inside} of the "
                             f"{runs[video]} placeholders {source} gives video {video}; a "
                             "video's placeholders must not span rows: pass the processor's "
                             "output unchanged")
    wrong = sorted(breaks - piece_ends) + (sorted(piece_ends - breaks) if groups else [])
    if wrong:
        video, _ = locate(min(wrong) - 1)
        ends = sorted(breaks)
        actual = [end - begin for begin, end in zip([0] + ends, ends)
                  if begin < starts[video + 1] and end > starts[video]]
        raise ValueError(f"aot_integrations.hf: video {video}'s placeholders come in runs of "
                         f"{actual} but {source} needs runs of {pieces[video]} with text between; "
                         "pass the processor's input_ids unchanged")


def piece_order(slots: torch.Tensor, pieces: list[int]) -> torch.Tensor:
    """(L,) long permutation of one video's tokens into the order :func:`shorten` emits them:
    by the piece (run of placeholders between text) that holds each token's slot, and within a
    piece in the given (the reducer's) order.

    slots: (L,) long, each token's placeholder index in the video's unreduced run.
    pieces: the video's placeholder run lengths in order (one run: the identity).

    The model fills the placeholders with the tokens in sequence order, so tokens taken in this
    order sit where their positions are: a reducer that emits a frame's tokens after a later
    frame's (AOT's merged anchors follow the clip's later frames) would otherwise put them in
    another frame's piece, at another token's position."""
    bounds = torch.tensor(pieces, dtype=torch.long, device=slots.device).cumsum(0)
    piece = torch.bucketize(slots, bounds, right=True)
    return torch.sort(piece, stable=True).indices


def shorten(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, video_token_id: int,
            runs: list[int], slots: list[torch.Tensor], pad_token_id: int = 0) -> Shortened:
    """Replace each video's placeholder run by its reduced length.

    Args:
        input_ids: (B, L) the processor's ids; videos' placeholders appear in batch order (row 0
            first, left to right), as ``masked_scatter`` fills them.
        attention_mask: (B, L) or None (no padding).
        video_token_id: the placeholder id.
        runs: per video, its unreduced placeholder count N_v.
        slots: per video, (L_v,) long indices into that video's unreduced placeholders
            (counted in order). A video's placeholders may be split by text (Qwen3-VL's
            per-frame timestamps): each token is emitted in the piece that holds its slot, at
            that piece's place, in the given order; the text between pieces stays. The
            embeddings must come in the same order (:func:`piece_order`).
        pad_token_id: id written into new padding columns.
    Returns:
        :class:`Shortened`; rows are padded to the longest on the side the batch was padded
        (left when any row starts with padding, else right).
    """
    batch = input_ids.shape[0]
    mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).bool()
    is_video = (input_ids == video_token_id) & mask
    needed = int(is_video.sum())
    if len(runs) != len(slots) or needed != sum(runs):
        raise ValueError(f"input_ids hold {needed} video placeholders but the {len(slots)} "
                         f"encoded videos need {sum(runs)} ({runs}); pass the processor's "
                         "input_ids unchanged")
    for video, (run, chosen) in enumerate(zip(runs, slots)):
        if len(chosen) and (int(chosen.min()) < 0 or int(chosen.max()) >= run):
            raise ValueError(f"video {video}: slots must lie in 0..{run - 1} (its placeholders), "
                             f"got {int(chosen.min())}..{int(chosen.max())}")
    # video index and ordinal (inside its video) of every placeholder, in batch order
    owner = torch.repeat_interleave(torch.arange(len(runs)), torch.tensor(runs)).tolist()
    ordinal = [i for run in runs for i in range(run)]
    rows_src, rows_pos = [], []
    seen = 0
    for row in range(batch):
        src, pos = [], []
        cols = torch.nonzero(mask[row]).flatten().tolist()
        video_cols = set(torch.nonzero(is_video[row]).flatten().tolist())
        run_start = None                 # (video, first ordinal, first column) of the open run
        pending = []                     # columns of the open run
        for col in cols + [None]:
            if col is not None and col in video_cols:
                video, index = owner[seen], ordinal[seen]
                seen += 1
                if run_start is not None and run_start[0] != video:
                    _emit(run_start, pending, slots, src, pos)
                    run_start, pending = None, []
                if run_start is None:
                    run_start = (video, index, col)
                pending.append(col)
                continue
            if run_start is not None:    # a run ends: its tokens go where it started
                _emit(run_start, pending, slots, src, pos)
                run_start, pending = None, []
            if col is not None:
                src.append(col)
                pos.append(col)
        if seen < len(ordinal) and ordinal[seen] != 0:
            raise ValueError(f"row {row} ends inside the placeholders of video {owner[seen]}; "
                             "a video's placeholders must not span rows")
        rows_src.append(src)
        rows_pos.append(pos)
    return _pad(input_ids, mask, rows_src, rows_pos, pad_token_id)


def _emit(run_start, run_cols, slots, src, pos) -> None:
    """Append the tokens of ``video`` whose slot falls in this run (placeholders ``first`` ..
    ``first + len(run_cols) - 1`` of the video), in the reducer's order, at the run's place."""
    video, first, first_col = run_start
    chosen = slots[video]
    inside = (chosen >= first) & (chosen < first + len(run_cols))
    for slot in chosen[inside].tolist():
        src.append(first_col)
        pos.append(run_cols[slot - first])


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

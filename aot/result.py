"""What every reducer returns for one video: :class:`ReducedVideo`, and the kinds of its tokens.

The LLM reads ``tokens``; the other fields say where each token came from (frame, pooled
position, kind) and which patches were anchors or survivors, for inspection, pictures and
placing tokens at their original positions (M-RoPE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .clips import Clip

#: ``ReducedVideo.token_kind`` values.
KIND_FRAME = 0   # a surviving pooled token emitted as it is (keyframe original, or inter off)
KIND_KEPT = 1    # a token of a later frame kept as temporal dynamics
KIND_ANCHOR = 2  # a keyframe token after absorbing the merged tokens of its clip


@dataclass
class ReducedVideo:
    """What a reducer (AOT or any other of :mod:`aot.reducers`) feeds the LLM for one video,
    and everything needed to inspect it.

    tokens: (T_out, D) the visual token sequence (no newline tokens), in the released order.
    token_frame: (T_out,) frame each token comes from (a merged anchor counts for its keyframe).
    token_position: (T_out,) index of the token on its frame's pooled grid (row-major).
    token_kind: (T_out,) int8, 0 = survivor emitted as is, 1 = kept by the temporal phase,
        2 = merged temporal anchor (``KIND_*`` below).
    local_anchors, global_anchors: (F, rows, cols) bool anchor masks on the patch grid.
    survivors: (F, pooled_rows, pooled_cols) bool, pooled tokens that survived the anchor mask.
    temporal_kept, temporal_merged: (F, pooled_rows, pooled_cols) bool, survivors of later
        frames that the temporal phase kept / merged into the anchors (all False with the
        phase off).
    clips: (start, stop) frame ranges of the temporal phase ([] with it off).
    grid_shape, pooled_shape: (rows, cols) of the patch grid and of the pooled grid
        (``token_position`` = row * pooled_cols + col).

    ``grid`` / ``pooled_grid`` are the sides of square grids (27 and 14 on LLaVA-OneVision); on a
    non-square grid they raise and name ``grid_shape``.
    """

    tokens: torch.Tensor
    token_frame: torch.Tensor
    token_position: torch.Tensor
    token_kind: torch.Tensor
    local_anchors: torch.Tensor
    global_anchors: torch.Tensor
    survivors: torch.Tensor
    temporal_kept: torch.Tensor
    temporal_merged: torch.Tensor
    clips: list[Clip]
    grid_shape: tuple[int, int]
    pooled_shape: tuple[int, int]

    @property
    def grid(self) -> int:
        """Side of a square patch grid (a ValueError on a non-square one: read grid_shape)."""
        return _square_side(self.grid_shape, "grid")

    @property
    def pooled_grid(self) -> int:
        """Side of a square pooled grid (a ValueError on a non-square one: read
        pooled_shape)."""
        return _square_side(self.pooled_shape, "pooled_grid")

    @property
    def pooled_per_frame(self) -> int:
        """Tokens per frame of the unreduced pooled grid (newlines excluded)."""
        return self.pooled_shape[0] * self.pooled_shape[1]

    @property
    def num_frames(self) -> int:
        return self.survivors.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    @property
    def denominator(self) -> int:
        """Tokens of the unreduced video: frames x pooled tokens per frame (newlines excluded)."""
        return self.num_frames * self.pooled_per_frame

    @property
    def retention(self) -> float:
        return self.num_tokens / self.denominator

    def tokens_per_frame(self) -> torch.Tensor:
        """(F,) output tokens attributed to each frame (merged anchors to their keyframe)."""
        return torch.bincount(self.token_frame.cpu(), minlength=self.num_frames)

    def frame_table(self) -> str:
        """A plain-text table: per frame anchors, survivors, kept/merged and emitted tokens."""
        per_frame = self.tokens_per_frame()
        kinds = self.token_kind.cpu()
        frames = self.token_frame.cpu()
        anchors_out = torch.bincount(frames[kinds == KIND_ANCHOR], minlength=self.num_frames)
        lines = [f"{'frame':>5} {'clip':>5} {'local':>5} {'global':>6} {'pooled':>6} "
                 f"{'surv':>5} {'kept':>5} {'merged':>6} {'emitted':>7}"]
        clip_of = {f: i for i, (s, e) in enumerate(self.clips) for f in range(s, e)}
        for f in range(self.num_frames):
            lines.append(
                f"{f:>5} {clip_of.get(f, '-'):>5} {int(self.local_anchors[f].sum()):>5} "
                f"{int(self.global_anchors[f].sum()):>6} {self.pooled_per_frame:>6} "
                f"{int(self.survivors[f].sum()):>5} {int(self.temporal_kept[f].sum()):>5} "
                f"{int(self.temporal_merged[f].sum()):>6} {int(per_frame[f]):>7}"
                + (f"  (incl. {int(anchors_out[f])} merged anchors)" if anchors_out[f] else ""))
        lines.append(f"total {self.num_tokens} tokens of {self.denominator} "
                     f"= retention {self.retention:.4f}")
        return "\n".join(lines)


def _square_side(shape: tuple[int, int], name: str) -> int:
    if shape[0] != shape[1]:
        shape_name = "grid_shape" if name == "grid" else "pooled_shape"
        raise ValueError(f"ReducedVideo.{name} is the side of a square grid but this grid is "
                         f"{shape[0]}x{shape[1]}; read ReducedVideo.{shape_name} (rows, cols)")
    return shape[0]

"""Reduction inside the language model (LLM stages): FastV and the LLM parts of FlashVID and
HoliTom, as one small config plus pure functions. Any vision reducer can be followed by any stage.

A stage runs once, in prefill, at the input of decoder layer ``K`` (``config.layer``): it scores
the visual tokens by the attention the last real token pays them at layer ``K-1`` (mean over
heads), keeps the best ``kept_count(n)`` of the ``n`` candidates of each row, optionally folds
every dropped token into its most similar kept one (HoliTom), and layers ``K..`` (and their KV
cache) see only the kept tokens, at their original positions. Layers ``0..K-1`` see everything.

Installing a stage on a model (hooks on its decoder layers, no modified decoder) is the
integration layer's job: :mod:`aot_integrations.llm_stage`.

Registry names (:data:`STAGES`): ``fastv``, ``flashvid``, ``holitom``. See
docs/reducers/llm-stages.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

#: How a stage turns ``n`` candidates and its retention ``r`` into a kept count:
#: ``round``: Python's round(n*r) (half to even, FastV's and HoliTom's releases);
#: ``ceil``: ceil(n*r) (FlashVID's release); ``nearest``: floor(n*r + 0.5).
COUNT_RULES = ("round", "ceil", "nearest")


@dataclass(frozen=True)
class LLMStageConfig:
    """Every knob of an LLM stage.

    name: the registry name it was built from (``fastv`` ...), for records and messages.
    layer: K, the decoder layer whose *input* is reduced; scores come from layer K-1's attention,
        so K >= 1 (and K < the model's layer count, checked at install).
    retention: share r in (0, 1] of the candidate visual tokens that survive the stage.
    count_rule: one of :data:`COUNT_RULES`: how n candidates become ``kept_count(n)`` tokens.
    budget: an exact kept count per row (overrides retention); :func:`final_budget` gives the
        count that makes a final retention exact over the unreduced video.
    final_retention: r_f in (0, 1]: each row keeps exactly ``final_budget(r_f, N)`` tokens, N
        the row's visual tokens before any vision reducer (newlines excluded; the host that
        installs the stage tells N per row). Overrides retention; exclusive with budget.
    merge: True: each dropped token is folded into its most cosine-similar kept token at layer
        K's input by the sequential average h = (h + x) / 2 in position order (HoliTom); False:
        dropped tokens are discarded (FastV, FlashVID).
    newline_is_text: True: a video's trailing newline token (LLaVA-OneVision's ``one_token``)
        is not a candidate and always stays (FlashVID); False: it competes like the others.
    """

    name: str = "fastv"
    layer: int = 2
    retention: float = 0.5
    count_rule: str = "round"
    budget: int | None = None
    merge: bool = False
    newline_is_text: bool = False
    final_retention: float | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"LLM stage name={self.name!r}: expected the stage's registry name, "
                            "a non-empty string")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"LLM stage layer={self.layer!r}: expected an integer >= 1 (scores "
                             "come from the attention of layer K-1)")
        if (isinstance(self.retention, bool) or not isinstance(self.retention, (int, float))
                or not 0 < self.retention <= 1):
            raise ValueError(f"LLM stage retention={self.retention!r}: expected a number in "
                             "(0, 1]")
        if self.count_rule not in COUNT_RULES:
            raise ValueError(f"LLM stage count_rule={self.count_rule!r}: expected one of "
                             f"{COUNT_RULES}")
        if self.budget is not None and (isinstance(self.budget, bool)
                                        or not isinstance(self.budget, int) or self.budget < 1):
            raise ValueError(f"LLM stage budget={self.budget!r}: expected an integer >= 1 or "
                             "None")
        if self.final_retention is not None:
            if (isinstance(self.final_retention, bool)
                    or not isinstance(self.final_retention, (int, float))
                    or not 0 < self.final_retention <= 1):
                raise ValueError(f"LLM stage final_retention={self.final_retention!r}: expected "
                                 "a number in (0, 1] or None")
            if self.budget is not None:
                raise ValueError(f"LLM stage: budget={self.budget} and final_retention="
                                 f"{self.final_retention} both fix the count; give one")
        for field in ("merge", "newline_is_text"):
            if not isinstance(getattr(self, field), bool):
                raise TypeError(f"LLM stage {field}={getattr(self, field)!r}: expected True or "
                                "False")

    def replace(self, **changes) -> "LLMStageConfig":
        """A copy with ``changes`` (checked like the constructor)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class StageInfo:
    """One registry entry: the release's defaults, a one-line summary and the paper."""

    name: str
    defaults: LLMStageConfig
    summary: str
    paper: str


_BASE = (
    StageInfo("fastv", LLMStageConfig("fastv", layer=2, retention=0.5, count_rule="round"),
              "FastV: at layer K=2, keep the visual tokens the last token attends most "
              "(layer K-1, mean over heads)",
              "Chen et al.: An Image is Worth 1/2 Tokens After Layer 2 (FastV), ECCV 2024, "
              "arXiv 2403.06764"),
    StageInfo("flashvid", LLMStageConfig("flashvid", layer=20, retention=0.3, count_rule="ceil",
                                         newline_is_text=True),
              "FlashVID's LLM part: before layer 20 keep ceil(0.3 K) visual tokens by layer-19 "
              "last-query attention (the newline stays as text)",
              "Fan et al.: FlashVID: Efficient Video Large Language Models via Training-free "
              "Tree-based Spatiotemporal Token Merging, ICLR 2026, arXiv 2602.08024"),
    StageInfo("holitom", LLMStageConfig("holitom", layer=18, retention=0.5, count_rule="round",
                                        merge=True),
              "HoliTom's LLM part: before layer 18 keep round(L/2) tokens by layer-17 last-token "
              "attention, fold each other token into its most similar kept one",
              "Shao et al.: HoliTom: Holistic Token Merging for Fast Video Large Language "
              "Models, NeurIPS 2025, arXiv 2505.21334"),
)

#: name -> :class:`StageInfo` of every stage :func:`get_stage` accepts.
STAGES: dict[str, StageInfo] = {info.name: info for info in _BASE}


def stage_names() -> list[str]:
    """Every name :func:`get_stage` accepts."""
    return list(STAGES)


def get_stage(name: str, **changes) -> LLMStageConfig:
    """The release defaults of stage ``name`` with ``changes`` (fields of
    :class:`LLMStageConfig`, e.g. ``layer=3``, ``retention=0.25``, ``budget=120``).

    An unknown name raises a ValueError listing the known ones; an unknown field a TypeError
    listing the fields."""
    if not isinstance(name, str):
        raise TypeError(f"LLM stage name must be a string, got {type(name).__name__}")
    if name not in STAGES:
        raise ValueError(f"unknown LLM stage {name!r}; expected one of {stage_names()}")
    fields = [f.name for f in dataclasses.fields(LLMStageConfig) if f.name != "name"]
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise TypeError(f"LLM stage {name!r} has no option(s) {unknown}; its options: {fields}")
    return STAGES[name].defaults.replace(**changes)


def kept_count(candidates: int, config: LLMStageConfig, unreduced: int | None = None) -> int:
    """How many of ``candidates`` visual tokens of one row survive the stage (at least 1 when
    there is any candidate, never more than there are). ``unreduced``: the row's visual tokens
    before any vision reducer, needed by ``config.final_retention``."""
    if candidates <= 0:
        return 0
    budget = config.budget
    if config.final_retention is not None:
        if unreduced is None:
            raise ValueError(f"LLM stage {config.name!r}: final_retention="
                             f"{config.final_retention} needs the row's unreduced visual token "
                             "count, which this host did not give")
        budget = final_budget(config.final_retention, unreduced)
    if budget is not None:
        if budget > candidates:
            raise ValueError(f"LLM stage {config.name!r}: {budget} tokens asked (budget or "
                             f"final retention) exceed the {candidates} visual tokens that "
                             f"reach layer {config.layer}")
        return budget
    share = candidates * config.retention
    if config.count_rule == "ceil":
        count = math.ceil(share)
    elif config.count_rule == "round":
        count = round(share)
    else:
        count = math.floor(share + 0.5)
    return max(1, min(candidates, count))


def final_budget(retention: float, unreduced: int) -> int:
    """The kept count that makes ``retention`` exact over a video's ``unreduced`` visual tokens
    (before any vision reducer): floor(r * N + 0.5), at least 1."""
    if isinstance(retention, bool) or not isinstance(retention, (int, float)) \
            or not 0 < retention <= 1:
        raise ValueError(f"final retention={retention!r}: expected a number in (0, 1]")
    if isinstance(unreduced, bool) or not isinstance(unreduced, int) or unreduced < 1:
        raise ValueError(f"unreduced token count={unreduced!r}: expected an integer >= 1")
    return max(1, math.floor(retention * unreduced + 0.5))


def last_query_attention(query: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor,
                         scaling: float) -> torch.Tensor:
    """The attention one query row pays every key, averaged over heads (softmax in float32).

    Args:
        query: (B, H, d) the last real token's rotated query at the scoring layer.
        keys: (B, H_kv, L, d) rotated keys of the whole row (H divisible by H_kv: grouped
            query attention repeats each key head H / H_kv times).
        key_mask: (B, L) bool, True where the query may look (real tokens at or before it).
        scaling: the layer's softmax scale (head_dim ** -0.5 for Qwen).
    Returns:
        (B, L) float32 mean-over-heads attention probabilities (0 where masked).
    """
    heads, kv_heads = query.shape[1], keys.shape[1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not split into {kv_heads} key heads")
    keys = keys.repeat_interleave(heads // kv_heads, dim=1)
    logits = torch.einsum("bhd,bhld->bhl", query.float(), keys.float()) * scaling
    logits = logits.masked_fill(~key_mask[:, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)


def select_tokens(scores: torch.Tensor, candidates: torch.Tensor, config: LLMStageConfig,
                  unreduced: list[int] | None = None) -> torch.Tensor:
    """Which candidate tokens survive: the ``kept_count`` highest scores of each row.

    Args:
        scores: (B, L) attention received (higher is kept first; ties: torch.topk's order).
        candidates: (B, L) bool, the row's visual tokens that compete.
        unreduced: per row, its visual tokens before any vision reducer (for
            ``config.final_retention``), or None.
    Returns:
        (B, L) bool, True on the kept candidates.
    """
    rows = candidates.sum(dim=1).tolist()
    unreduced = [None] * len(rows) if unreduced is None else list(unreduced)
    if len(unreduced) != len(rows):
        raise ValueError(f"unreduced counts for {len(unreduced)} rows, the batch has "
                         f"{len(rows)}")
    counts = [kept_count(int(n), config, u) for n, u in zip(rows, unreduced)]
    chosen = torch.zeros_like(candidates)
    top = max(counts, default=0)
    if top == 0:
        return chosen
    ranked = scores.float().masked_fill(~candidates, float("-inf")).topk(top, dim=1).indices
    take = torch.arange(top, device=scores.device)[None] < torch.tensor(
        counts, device=scores.device)[:, None]
    chosen.scatter_(1, ranked, take)
    return chosen & candidates


def keep_index(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns layers K.. keep, rows padded on the left to one length.

    Args:
        keep: (B, L) bool, True on every column that stays (text, padding, kept visual tokens).
    Returns:
        index: (B, L') long, the original column of each new column, in order; rows that keep
            fewer than L' columns start with filler columns (some dropped column).
        valid: (B, L') bool, False on the fillers (the installer masks them out, like left
            padding, so every row's last column stays its last token).
    """
    length = int(keep.sum(dim=1).max())
    order = torch.sort(keep.to(torch.int8), dim=1, stable=True).indices
    index = order[:, keep.shape[1] - length:]
    return index, keep.gather(1, index)


def merge_dropped(hidden: torch.Tensor, kept: torch.Tensor,
                  dropped: torch.Tensor) -> torch.Tensor:
    """Fold every dropped token into its most cosine-similar kept token of the same row, as
    the sequential update h <- (h + x) / 2 over dropped tokens in position order (HoliTom's
    release), in closed form: a kept token that receives x_1..x_m (in that order) becomes
    h / 2^m + sum_i x_i / 2^(m - i + 1).

    Args:
        hidden: (B, L, D) hidden states at layer K's input.
        kept: (B, L) bool, the kept visual tokens (the merge targets).
        dropped: (B, L) bool, the visual tokens that leave.
    Returns:
        (B, L, D) a new tensor: kept tokens updated, every other column unchanged.
    """
    out = hidden.clone()
    for row in range(hidden.shape[0]):
        targets = torch.nonzero(kept[row]).flatten()
        sources = torch.nonzero(dropped[row]).flatten()
        if len(targets) == 0 or len(sources) == 0:
            continue
        x, h = hidden[row, sources].float(), hidden[row, targets].float()
        similarity = (x @ h.T) / (x.norm(dim=-1)[:, None] * h.norm(dim=-1)[None, :])
        owner = similarity.argmax(dim=1)                       # (S,) target of each source
        # order of each source among its target's sources, and how many each target gets
        same = owner[:, None] == owner[None, :]
        rank = (same & torch.ones_like(same).tril(-1)).sum(dim=1)
        received = torch.bincount(owner, minlength=len(targets))
        weight = torch.pow(2.0, -(received[owner] - rank).float())
        merged = h * torch.pow(2.0, -received.float())[:, None]
        merged = merged.index_add(0, owner, x * weight[:, None])
        out[row, targets] = merged.to(hidden.dtype)
    return out


__all__ = ["COUNT_RULES", "LLMStageConfig", "STAGES", "StageInfo", "final_budget", "get_stage",
           "keep_index", "kept_count", "last_query_attention", "merge_dropped", "select_tokens",
           "stage_names"]


def describe_stage(stage: LLMStageConfig) -> str:
    """A short description for logs and table rows: ``fastv(K=2, r=0.5)``."""
    count = (f"budget={stage.budget}" if stage.budget is not None
             else f"final r={stage.final_retention:g}" if stage.final_retention is not None
             else f"r={stage.retention:g}")
    return f"{stage.name}(K={stage.layer}, {count})"


def stage_from_text(name, knobs: dict, prefix: str = "", stage_key: str = "llm_stage"
                    ) -> LLMStageConfig | None:
    """A stage from text (command lines, model_args): ``name`` (None, ``none`` or empty: no
    stage) with ``knobs`` field -> value (text or typed), each checked against
    :class:`LLMStageConfig`'s field types (:func:`aot.parsing.coerce_value`).

    ``prefix`` / ``stage_key`` only spell the knobs in messages as the caller's users write
    them (``llm_stage.layer``). Raises ValueError for an unknown stage or knob, a bad value, or
    knobs without a stage."""
    import typing

    from .parsing import coerce_value

    if name is None or str(name).strip().lower() in ("none", ""):
        if knobs:
            raise ValueError(f"{sorted(prefix + k for k in knobs)} given without "
                             f"{stage_key}=NAME")
        return None
    hints = typing.get_type_hints(LLMStageConfig)
    fields = sorted(set(hints) - {"name"})
    coerced = {}
    for knob, value in knobs.items():
        if knob not in fields:
            raise ValueError(f"unknown LLM stage knob {prefix + knob!r}; expected "
                             f"{[prefix + f for f in fields]}")
        coerced[knob] = coerce_value(hints[knob], value, prefix + knob)
    return get_stage(str(name).strip().lower(), **coerced)


"""Measure and record the retention each video actually got.

The count is taken where it matters: the input embeddings handed to the LLM. The recorder wraps
``prepare_inputs_labels_for_multimodal`` on the model *instance* (no class is patched) and, for
each call that carries visual tokens, counts

* visual positions = sequence length - text tokens (ids other than ``IMAGE_TOKEN_INDEX``),
* newline positions = visual rows equal to the model's ``image_newline`` vector,
* retention = (visual - newline) / (frames x pooled tokens per frame of the unreduced model).

This is reducer-agnostic: the unreduced model measures exactly 1.0.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Optional

import torch

RECORD_VERSION = 1


def _embeds_of(output) -> Optional[torch.Tensor]:
    """The (B, L, D) input embeddings inside the tuple ``prepare_inputs_labels_for_multimodal``
    returns (LLaVA order: ids, position_ids, attention_mask, past, inputs_embeds, labels)."""
    if isinstance(output, (tuple, list)):
        if len(output) >= 5 and torch.is_tensor(output[4]) and output[4].dim() == 3:
            return output[4]
        for item in output:
            if torch.is_tensor(item) and item.dim() == 3 and item.is_floating_point():
                return item
    return None


def count_newlines(visual_rows: torch.Tensor, newline: Optional[torch.Tensor]) -> int:
    """Rows of ``visual_rows`` (N, D) exactly equal to the ``newline`` vector (D,)."""
    if newline is None or visual_rows.numel() == 0:
        return 0
    newline = newline.detach().reshape(1, -1).to(visual_rows.device, visual_rows.dtype)
    return int((visual_rows == newline).all(dim=-1).sum().item())


class TokenCounter:
    """Instance-level wrapper of ``model.prepare_inputs_labels_for_multimodal``.

    After a ``generate`` call, :attr:`rows` holds per sample of the batch ``{"visual_tokens",
    "newline_tokens"}`` (None for a sample without ``<image>``), from the first call of that
    generation that carried visual tokens; :attr:`last` is the first sample's.
    """

    def __init__(self, model, image_token_index: int, newline: Optional[torch.Tensor]):
        if not hasattr(model, "prepare_inputs_labels_for_multimodal"):
            raise TypeError(f"{type(model).__name__} has no prepare_inputs_labels_for_multimodal; "
                            "cannot measure the visual tokens the LLM receives")
        self.image_token_index = image_token_index
        self.newline = newline
        self.rows: Optional[list] = None
        self._original = model.prepare_inputs_labels_for_multimodal
        model.prepare_inputs_labels_for_multimodal = self._wrapped

    @property
    def last(self) -> Optional[dict]:
        return self.rows[0] if self.rows else None

    def reset(self) -> None:
        self.rows = None

    def _wrapped(self, input_ids, *args, **kwargs):
        output = self._original(input_ids, *args, **kwargs)
        if self.rows is None and torch.is_tensor(input_ids):
            # LLaVA order: (input_ids, position_ids, attention_mask, ...)
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            self._measure(input_ids, mask, output)
        return output

    def _measure(self, input_ids: torch.Tensor, input_mask, output) -> None:
        is_image = input_ids == self.image_token_index
        if not bool(is_image.any()):
            return
        embeds = _embeds_of(output)
        if embeds is None or embeds.shape[0] != input_ids.shape[0]:
            return
        if not torch.is_tensor(input_mask):
            input_mask = torch.ones_like(input_ids, dtype=torch.bool)
        mask = output[2] if isinstance(output, (tuple, list)) and len(output) > 2 else None
        if not (torch.is_tensor(mask) and mask.shape == embeds.shape[:2]):
            mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        rows = []
        for images, real, out_real, sample in zip(is_image, input_mask.bool(), mask.bool(),
                                                   embeds):
            if not bool((images & real).any()):
                rows.append(None)
                continue
            positions = sample[out_real]
            visual = positions.shape[0] - int((real & ~images).sum())
            start = int(real[:int(images.nonzero()[0])].sum())  # text before the first <image>
            rows.append({"visual_tokens": int(visual), "newline_tokens": count_newlines(
                positions[start:start + visual], self.newline)})
        self.rows = rows


def sample_record(task: str, split: str, doc_id: int, frames: int, per_frame: int,
                  counted: Optional[dict], error: Optional[str] = None) -> dict:
    """One per-video record; ``retention`` is ``None`` when nothing could be measured.

    ``counted`` may also carry ``llm_stage_kept``: the visual tokens an LLM stage let through to
    its later layers (a newline the stage counts as a candidate included), recorded as is."""
    record = {"task": task, "split": split, "doc_id": int(doc_id), "frames": int(frames),
              "denominator": int(frames * per_frame), "visual_tokens": None,
              "newline_tokens": None, "kept_tokens": None, "retention": None}
    if counted is not None and frames > 0:
        kept = counted["visual_tokens"] - counted["newline_tokens"]
        record.update(visual_tokens=counted["visual_tokens"],
                      newline_tokens=counted["newline_tokens"], kept_tokens=kept,
                      retention=kept / (frames * per_frame))
        if counted.get("llm_stage_kept") is not None:
            record["llm_stage_kept"] = int(counted["llm_stage_kept"])
    if error:
        record["error"] = error
    return record


def summarise_records(records: list[dict]) -> dict:
    """Mean / min / max retention overall and per task, plus counts of failures."""
    def stats(rows):
        values = [r["retention"] for r in rows if r.get("retention") is not None]
        out = {"samples": len(rows), "measured": len(values),
               "failed": sum(1 for r in rows if r.get("error"))}
        if values:
            out.update(mean=statistics.fmean(values), min=min(values), max=max(values),
                       mean_tokens=statistics.fmean(r["kept_tokens"] for r in rows
                                                    if r.get("kept_tokens") is not None),
                       mean_frames=statistics.fmean(r["frames"] for r in rows
                                                    if r.get("retention") is not None))
        return out

    tasks = sorted({r["task"] for r in records})
    return {"overall": stats(records),
            "per_task": {t: stats([r for r in records if r["task"] == t]) for t in tasks}}


def dedupe(records: list[dict]) -> list[dict]:
    """Drop duplicates of the same (task, split, doc_id): lmms-eval pads ranks with repeats."""
    seen, out = set(), []
    for record in records:
        key = (record["task"], record["split"], record["doc_id"])
        if key not in seen:
            seen.add(key)
            out.append(record)
    return sorted(out, key=lambda r: (r["task"], r["split"], r["doc_id"]))


def gather_records(records: list[dict], world_size: int) -> list[dict]:
    """All ranks' records on every rank (``torch.distributed`` all_gather_object), deduplicated."""
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [None] * world_size
        torch.distributed.all_gather_object(parts, records)
        records = [r for part in parts for r in (part or [])]
    return dedupe(records)


def build_document(records: list[dict], meta: dict) -> dict:
    """The JSON document written beside lmms-eval's results."""
    return {"version": RECORD_VERSION, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **meta, "summary": summarise_records(records), "samples": records}


def write_document(document: dict, path: Path) -> Path:
    """Write ``document`` as JSON to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str))
    tmp.replace(path)
    return path


# Documents finished in this process, for the launcher to place beside the results file.
FINISHED: list[dict] = []


def publish(records: list[dict], meta: dict, *, world_size: int, rank: int,
            retention_log: Optional[str], name: str, log=None) -> Optional[dict]:
    """End of a model's run: gather every rank's records; on rank 0 build the document, keep it
    in :data:`FINISHED`, log the measured retention and write it to
    ``<retention_log>/aot_retention_<name>.json`` when asked. Returns the document (None on
    other ranks)."""
    records = gather_records(records, world_size)
    if rank != 0:
        return None
    document = build_document(records, meta)
    FINISHED.append(document)
    overall = document["summary"]["overall"]
    say = log.info if log is not None else print
    if overall.get("measured"):
        say(f"{meta['model']}: measured retention mean {overall['mean']:.4f} (min "
            f"{overall['min']:.4f}, max {overall['max']:.4f}) over {overall['measured']} videos")
    if retention_log:
        path = write_document(document, Path(retention_log) / f"aot_retention_{name}.json")
        say(f"{meta['model']}: retention record written to {path}")
    return document

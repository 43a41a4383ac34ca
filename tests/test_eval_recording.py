"""Retention measurement and records (torch only; no lmms-eval, no llava)."""

import pytest
import torch

from aot_eval import recording


class FakeModel:
    """Mimics LLaVA's prepare_inputs_labels_for_multimodal: splices visual rows at -200."""

    def __init__(self, visual_rows: torch.Tensor):
        self.visual_rows = visual_rows

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask,
                                             past, labels, images, modalities=None):
        if images is None:
            return input_ids, position_ids, attention_mask, past, None, labels
        text = torch.randn(input_ids.shape[1], self.visual_rows.shape[1])
        where = int((input_ids[0] == -200).nonzero()[0])
        embeds = torch.cat([text[:where], self.visual_rows, text[where + 1:]])[None]
        mask = torch.ones(1, embeds.shape[1], dtype=torch.bool)
        return None, None, mask, past, embeds, labels


def test_token_counter_counts_visual_and_newline_rows():
    newline = torch.randn(8)
    rows = torch.cat([torch.randn(30, 8), newline[None], torch.randn(5, 8), newline[None]])
    model = FakeModel(rows)
    counter = recording.TokenCounter(model, -200, newline)
    ids = torch.tensor([[5, 6, -200, 7, 8, 9]])
    model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, images=[1])
    assert counter.last == {"visual_tokens": 37, "newline_tokens": 2}
    model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, images=[1])
    assert counter.last["visual_tokens"] == 37  # first call of a generation is kept
    counter.reset()
    model.prepare_inputs_labels_for_multimodal(torch.tensor([[1, 2]]), None, None, None, None,
                                               images=None)
    assert counter.last is None  # decode steps without images are ignored


def test_token_counter_needs_the_hook():
    with pytest.raises(TypeError, match="prepare_inputs_labels_for_multimodal"):
        recording.TokenCounter(object(), -200, None)


def test_records_summary_and_dedupe():
    a = recording.sample_record("t", "test", 1, 4, 196, {"visual_tokens": 197, "newline_tokens": 1})
    b = recording.sample_record("t", "test", 0, 4, 196, {"visual_tokens": 99, "newline_tokens": 1})
    bad = recording.sample_record("u", "test", 0, 0, 196, None, error="cannot decode")
    assert a["retention"] == 0.25 and a["kept_tokens"] == 196
    assert bad["retention"] is None and bad["error"] == "cannot decode"
    records = recording.dedupe([a, b, a, bad])  # lmms-eval pads ranks with repeated requests
    assert [(r["task"], r["doc_id"]) for r in records] == [("t", 0), ("t", 1), ("u", 0)]
    summary = recording.summarise_records(records)
    assert summary["overall"]["measured"] == 2 and summary["overall"]["failed"] == 1
    assert summary["per_task"]["t"]["min"] == pytest.approx(98 / 784)
    assert summary["per_task"]["t"]["max"] == 0.25
    assert "mean" not in summary["per_task"]["u"]
    document = recording.build_document(records, {"model": "m"})
    assert document["model"] == "m" and len(document["samples"]) == 3

"""The transformers side of the identity test: ``python hf_reference.py FOLDER OUT.json``
writes the tiny Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision checkpoints (text head_dim 32, which
vLLM's CPU attention needs) into FOLDER/qwen2_5_vl, FOLDER/qwen3_vl and FOLDER/llava_onevision,
then the reference answers
(prompt length, greedy ids and their log-probabilities) of every case of :mod:`cases` into
OUT.json, the image request included (the stock model: AOT reduces videos only).

Runs in the project's main environment (.venv: transformers 5.24 and aot_integrations.hf), since
vLLM's environment pins an older transformers. For every case of :mod:`cases`: the checkpoint's
processor, ``aot_integrations.hf.apply`` with the reducer at the case's retention (exact mode,
the same AOT knobs the vLLM server gets), greedy generation; writes per case the prompt length
the LLM reads (text + the video's tokens) and the new token ids.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import (CASES, IMAGE_PROMPT, NEW_TOKENS, OV_CASES, OV_FRAME, PROMPT,  # noqa: E402
                   QWEN3_CASES, QWEN3_IMAGE_VIDEO, QWEN3_IMAGE_VIDEO_PROMPT, SERVER_AOT_CONFIG,
                   frames, image, ov_frames)


def main(folder: str, out_path: str) -> None:
    from aot_integrations.tiny import write_tiny_hf_checkpoint

    qwen = write_tiny_hf_checkpoint(str(Path(folder) / "qwen2_5_vl"), "qwen2_5_vl", head_dim=32)
    onevision = write_tiny_hf_checkpoint(str(Path(folder) / "llava_onevision"), "llava_onevision",
                                         head_dim=32, frame_size=OV_FRAME)
    qwen3 = write_tiny_hf_checkpoint(str(Path(folder) / "qwen3_vl"), "qwen3_vl", head_dim=32)
    results = {**qwen_answers(qwen), **onevision_answers(onevision), **qwen3_answers(qwen3)}
    Path(out_path).write_text(json.dumps(results, indent=1))


def answer(model, inputs, reduction) -> dict:
    """Greedy generation with ``reduction`` applied (None: unreduced through the same path):
    the prompt length the LLM reads, the new ids and their log-probabilities."""
    import aot_integrations.hf

    handle = aot_integrations.hf.apply(model, reduction)
    try:
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
        video = handle.last[0].tokens.shape[0]
    finally:
        handle.remove()
    new = out.sequences[0, inputs["input_ids"].shape[1]:]
    placeholders = int((inputs["input_ids"] == model.config.video_token_id).sum())
    return {"prompt_tokens": inputs["input_ids"].shape[1] - placeholders + video,
            "video_tokens": video, "output_ids": new.tolist(),
            "logprobs": [float(torch.log_softmax(step[0].double(), -1)[token])
                         for step, token in zip(out.logits, new.tolist())]}


def onevision_answers(checkpoint: str) -> dict:
    import aot_integrations.hf
    from aot.video_path import Reduction
    from playground.hf import load_processor
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor, _ = load_processor(checkpoint, model.config.model_type)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    results = {}
    for name, (_, retention, reducer) in OV_CASES.items():
        inputs = processor(text=[prompt], videos=[ov_frames(name)], return_tensors="pt")
        reduction = None
        if retention is not None:
            config = aot_integrations.hf.config_for(model, retention, **SERVER_AOT_CONFIG)
            reduction = Reduction(config, reducer)
        results[name] = answer(model, inputs, reduction)
    return results


def qwen3_answers(checkpoint: str) -> dict:
    """Every Qwen3-VL case (per-frame timestamp pieces; aot_integrations.hf keeps each token in
    its frame's piece), and an image before a reduced video (``image+video``)."""
    model, processor, prompt = _qwen_model(checkpoint)
    results = {name: answer(model, _qwen_video_inputs(processor, prompt, name, count),
                            _reduction(model, retention, reducer))
               for name, (count, _, _, retention, reducer) in QWEN3_CASES.items()}
    count, _, _, retention, reducer = QWEN3_CASES[QWEN3_IMAGE_VIDEO]
    inputs = _qwen_video_inputs(processor, QWEN3_IMAGE_VIDEO_PROMPT, QWEN3_IMAGE_VIDEO, count,
                                images=[frames(QWEN3_IMAGE_VIDEO)[0]])
    results["q3-image+video"] = answer(model, inputs, _reduction(model, retention, reducer))
    return results


def _qwen_model(checkpoint: str):
    """(model in float32, processor, chat prompt with one video) of a Qwen checkpoint."""
    from playground.hf import load_processor
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor, _ = load_processor(checkpoint, model.config.model_type)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": PROMPT}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return model, processor, prompt


def _qwen_video_inputs(processor, prompt: str, name: str, count: int, images=None):
    """The processor's inputs for case ``name`` (all ``count`` frames at 2 fps, none sampled;
    ``images``: the prompt's images, if it has any)."""
    from transformers.video_utils import VideoMetadata

    metadata = VideoMetadata(total_num_frames=count, fps=2.0, frames_indices=list(range(count)))
    return processor(text=[prompt], videos=[frames(name)], video_metadata=[metadata],
                     images=images, do_sample_frames=False, return_tensors="pt")


def _reduction(model, retention, reducer):
    """The case's reduction with the server's AOT knobs (None: unreduced)."""
    import aot_integrations.hf
    from aot.video_path import Reduction

    if retention is None:
        return None
    return Reduction(aot_integrations.hf.config_for(model, retention, **SERVER_AOT_CONFIG),
                     reducer)


def qwen_answers(checkpoint: str) -> dict:
    model, processor, prompt = _qwen_model(checkpoint)
    results = {name: answer(model, _qwen_video_inputs(processor, prompt, name, count),
                            _reduction(model, retention, reducer))
               for name, (count, _, _, retention, reducer) in CASES.items()}
    inputs = processor(text=[IMAGE_PROMPT], images=[image()], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    new = out.sequences[0, inputs["input_ids"].shape[1]:]
    results["image"] = {
        "prompt_tokens": inputs["input_ids"].shape[1], "output_ids": new.tolist(),
        "logprobs": [float(torch.log_softmax(step[0].double(), -1)[token])
                     for step, token in zip(out.logits, new.tolist())]}
    return results


if __name__ == "__main__":
    main(*sys.argv[1:])

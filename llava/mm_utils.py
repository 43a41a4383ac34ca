"""Prompt and image helpers with LLaVA-NeXT's names and signatures.

Images are handled at the tower's base resolution (384x384 for SigLIP so400m-patch14-384): the
high-resolution "anyres" crops of LLaVA-OneVision are not implemented (docs/llava.md).
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import StoppingCriteria

from .constants import IMAGE_TOKEN_INDEX


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX,
                          return_tensors: str | None = None):
    """Tokenise ``prompt`` with every ``"<image>"`` replaced by the id ``image_token_index``.

    The text pieces between placeholders are tokenised separately (so ``<image>`` need not be a
    vocabulary token); a BOS token the tokenizer prepends is kept once, at the start.

    Returns:
        list[int], or an (L,) long tensor if ``return_tensors="pt"`` (LLaVA-NeXT's convention;
        callers ``unsqueeze(0)``).
    """
    chunks = [tokenizer(piece).input_ids for piece in prompt.split("<image>")]
    bos = getattr(tokenizer, "bos_token_id", None)
    ids: list[int] = []
    offset = 0
    if bos is not None and chunks and chunks[0] and chunks[0][0] == bos:
        offset = 1
        ids.append(bos)
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(image_token_index)
        ids.extend(chunk[offset:])
    if return_tensors is None:
        return ids
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    raise ValueError(f"return_tensors={return_tensors!r}: only None and 'pt' are supported")


def get_model_name_from_path(model_path: str) -> str:
    """Last path component (``.../checkpoint-N`` becomes ``parent_checkpoint-N``)."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


def expand2square(image, background_color):
    """Pad a PIL image to a square, centred, with ``background_color`` (an RGB tuple)."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background_color)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def process_images(images: Sequence, image_processor, model_cfg) -> torch.Tensor | list:
    """Preprocess PIL images for the tower at its base resolution.

    ``model_cfg.image_aspect_ratio == "pad"`` pads each image to a square with the processor's
    mean colour first; any other value (including LLaVA-OV's ``anyres_max_9``) resizes the whole
    image to the base resolution only — the extra high-resolution crops are not produced.

    Returns:
        (N, 3, S, S) float tensor (S = 384 for SigLIP-384).
    """
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    out = []
    for image in images:
        if aspect == "pad":
            mean = tuple(int(x * 255) for x in image_processor.image_mean)
            image = expand2square(image.convert("RGB"), mean)
        out.append(image_processor.preprocess(image, return_tensors="pt")["pixel_values"][0])
    return torch.stack(out, dim=0)


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop a sequence once its generated text ends with (contains) one of ``keywords``.

    Works both when generation returns prompt + new tokens and when it returns only the new
    tokens (generation from ``inputs_embeds``, as the LLaVA models do).
    """

    def __init__(self, keywords: Sequence[str], tokenizer, input_ids: torch.Tensor):
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword).input_ids
            bos = getattr(tokenizer, "bos_token_id", None)
            if len(ids) > 1 and ids[0] == bos:
                ids = ids[1:]
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.max_keyword_len = max((len(k) for k in self.keyword_ids), default=1)
        self.start_len = input_ids.shape[1]

    def _stops(self, row: torch.Tensor) -> bool:
        # Generation from embeddings returns only new tokens, shorter than the prompt.
        new = row[self.start_len:] if row.shape[0] > self.start_len else row
        for ids in self.keyword_ids:
            ids = ids.to(row.device)
            if new.shape[0] >= ids.shape[0] > 0 and torch.equal(new[-ids.shape[0]:], ids):
                return True
        tail = new[-max(self.max_keyword_len, 3):]
        text = self.tokenizer.decode(tail, skip_special_tokens=False)
        return any(keyword in text for keyword in self.keywords)

    def __call__(self, output_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        done = [self._stops(row) for row in output_ids]
        return torch.tensor(done, dtype=torch.bool, device=output_ids.device)

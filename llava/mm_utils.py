"""Prompt and image helpers with LLaVA-NeXT's names and signatures.

Images follow the checkpoint's ``image_aspect_ratio``: LLaVA-OneVision's ``anyres_max_9`` gives a
base view plus high-resolution crops (geometry in :mod:`llava.model.anyres`; docs/llava.md).
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


def base_side(image_processor) -> int:
    """The tower's input side (384) as the image processor states it (``crop_size`` or ``size``:
    a dict / SizeDict with height == width, LLaVA-NeXT's (S, S) tuple, or an int)."""
    for name in ("crop_size", "size"):
        size = getattr(image_processor, name, None)
        if size is None:
            continue
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)):
            return int(min(size))
        height, width = size["height"], size["width"]
        if height and width:
            if height != width:
                raise ValueError(f"image processor {name}={size}: anyres needs square tiles")
            return int(height)
    raise ValueError("the image processor states no size (crop_size / size) to tile images with")


def resize_and_pad(image, target: tuple[int, int]):
    """A PIL image resized to fit ``target`` = (width, height) (aspect kept, PIL's default
    bicubic filter) and centred on black, as LLaVA-NeXT's anyres preprocessing does."""
    from PIL import Image

    from .model.anyres import fit_within

    new_width, new_height = fit_within(image.size, target)
    resized = image.resize((new_width, new_height))
    canvas = Image.new("RGB", target, (0, 0, 0))
    canvas.paste(resized, ((target[0] - new_width) // 2, (target[1] - new_height) // 2))
    return canvas


def anyres_tiles(image, grid_pinpoints, side: int) -> list:
    """PIL tiles of one image: the base view (the whole image resized to side x side), then the
    side x side crops of :func:`resize_and_pad` at the best pinpoint, in reading order."""
    from .model.anyres import parse_pinpoints, select_best_resolution

    best = select_best_resolution(image.size, parse_pinpoints(grid_pinpoints, side))
    padded = resize_and_pad(image, best)
    crops = [padded.crop((left, top, left + side, top + side))
             for top in range(0, best[1], side) for left in range(0, best[0], side)]
    return [image.resize((side, side))] + crops


def process_images(images: Sequence, image_processor, model_cfg) -> torch.Tensor | list:
    """Preprocess PIL images for the tower, following ``model_cfg.image_aspect_ratio`` as
    LLaVA-NeXT does.

    * ``"anyres"`` / ``"anyres_max_N"`` (LLaVA-OneVision): per image a base view plus the
      crops of ``model_cfg.image_grid_pinpoints`` (:func:`anyres_tiles`); pass
      ``image_sizes=[image.size, ...]`` to the model with them.
    * ``"pad"``: pad to a square with the processor's mean colour, then resize.
    * anything else (None, ``"square"``): resize the whole image.

    Returns:
        anyres: (N, 1 + crops, 3, S, S) when every image has as many tiles, else a list of
        (1 + crops_i, 3, S, S); otherwise (N, 3, S, S). S = 384 for SigLIP-384.
    """
    from .model.anyres import is_anyres

    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect in ("highres", "crop_split"):
        raise NotImplementedError(f"image_aspect_ratio={aspect!r} is not implemented (anyres, "
                                  "anyres_max_N, pad and plain resizing are)")
    if not is_anyres(aspect):
        out = []
        for image in images:
            if aspect == "pad":
                mean = tuple(int(x * 255) for x in image_processor.image_mean)
                image = expand2square(image.convert("RGB"), mean)
            out.append(image_processor.preprocess(image, return_tensors="pt")["pixel_values"][0])
        return torch.stack(out, dim=0)
    pinpoints = getattr(model_cfg, "image_grid_pinpoints", None)
    if pinpoints is None:
        raise ValueError(f"image_aspect_ratio={aspect!r} needs image_grid_pinpoints in the "
                         "model config")
    side = base_side(image_processor)
    out = [torch.stack([image_processor.preprocess(tile, return_tensors="pt")["pixel_values"][0]
                        for tile in anyres_tiles(image, pinpoints, side)])
           for image in images]
    if all(x.shape == out[0].shape for x in out):
        return torch.stack(out, dim=0)
    return out


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

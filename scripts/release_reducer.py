"""The authors' released AOT functions, loaded at run time from a checkout the user provides.

The released code (github.com/TyroneLi/AOT) is not in this repository and is never copied into
it: this module reads ``LLaVA-NeXT/llava/model/llava_arch.py`` of the given checkout, takes the
reducer's methods of ``LlavaMetaForCausalLM`` (anchor windows, the intra OT merge and its
Sinkhorn, the pooling of features and masks, the temporal OT) and the two helpers nested in its
``prepare_inputs_labels_for_multimodal`` (the clip iterator and the temporal merge), and compiles
them on a stub that answers the two model facts they read (27 patches per side, the pooling
mode). The glue between them below follows ``encode_images_siglip_OTA`` and the "one_token" /
"grid" branches of the released forward, with the knobs of our presets passed as arguments (the
release reads them from environment variables inside its forward).

    checkout = "path/to/AOT"  # git clone https://github.com/TyroneLi/AOT
    tokens = release_reduce_video(load_release(checkout), features, shallow, deep, config)

Used by ``scripts/bench_reducer.py --release DIR``; float32, CPU or CUDA.
"""

from __future__ import annotations

import math
import os
import pathlib
import random
import re
import textwrap
import time
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCH_FILE = "LLaVA-NeXT/llava/model/llava_arch.py"
CLASS = "LlavaMetaForCausalLM"
METHODS = ("get_2dPool", "get_2dPool_index", "Sinkhorn_v1", "window_cls_selection_siglip",
           "token_merging_siglip_with_OTA", "_robust_norm", "ota_merge_N_to_M_time")
FORWARD = "prepare_inputs_labels_for_multimodal"
NESTED = ("iter_segments", "temporal_ota_merge")


def load_release(checkout: str | os.PathLike):
    """An object whose methods are the released reducer functions of ``checkout``."""
    path = pathlib.Path(checkout) / ARCH_FILE
    if not path.is_file():
        raise SystemExit(f"--release {checkout}: no {ARCH_FILE} there (expected a checkout of "
                         f"github.com/TyroneLi/AOT)")
    # The file as released does not compile (a syntax error in a newline branch of its
    # forward): each function is cut out by its indentation and compiled on its own.
    lines = path.read_text().splitlines()
    functions = {name: _function_source(lines, name, 4) for name in METHODS}
    functions.update({name: _function_source(lines, name, 12) for name in NESTED})
    missing = [name for name, text in functions.items() if text is None]
    if missing:
        raise SystemExit(f"{path}: no function(s) {missing} in {CLASS}")
    namespace = {"torch": torch, "F": F, "nn": nn, "math": math, "os": os, "re": re,
                 "time": time, "random": random, "rank0_print": lambda *a, **k: None,
                 "rank_print": lambda *a, **k: None}
    body = "class Released:\n" + "\n".join(functions[name] for name in METHODS)
    exec(compile(body, str(path), "exec"), namespace)
    released = namespace["Released"]()
    released.config = types.SimpleNamespace(mm_spatial_pool_mode="bilinear")
    tower = types.SimpleNamespace(num_patches_per_side=27)
    released.get_vision_tower = lambda: tower
    # the nested helpers read ``self`` from their enclosing forward: give them this object
    namespace["self"] = released
    for name in NESTED:
        exec(compile(textwrap.dedent(functions[name]), str(path), "exec"), namespace)
    for name in NESTED:
        setattr(released, name, namespace[name])
    return released


def _function_source(lines: list[str], name: str, indent: int) -> str | None:
    """The text of ``def name(`` at ``indent`` spaces (the first one), re-indented to 4 spaces,
    up to the next code line indented ``indent`` spaces or less."""
    head = " " * indent + f"def {name}("
    start = next((i for i, line in enumerate(lines) if line.startswith(head)), None)
    if start is None:
        return None
    stop = start + 1
    while stop < len(lines):
        line = lines[stop]
        code = line.strip()
        if code and not code.startswith("#") and len(line) - len(line.lstrip()) <= indent \
                and not code.startswith(")"):
            break
        stop += 1
    text = textwrap.dedent("\n".join(lines[start:stop]))
    return textwrap.indent(text, "    ")


@torch.no_grad()
def release_reduce_video(released, features: torch.Tensor, shallow: torch.Tensor,
                         deep: torch.Tensor, config) -> torch.Tensor:
    """(F, 729, D) projected features, (F, 729) attention at the two layers -> (T, D) tokens in
    the released order (newlines excluded), with the released functions; ``config``: an
    ``AOTConfig`` in the released threshold mode (its V, global share, keep ratio, scales,
    pooling and inter switch)."""
    frames, tokens, _ = features.shape
    released.config.mm_spatial_pool_mode = config.pooling
    v = config.anchors_per_frame
    local_count = int(v * (1 - config.global_share))
    # encode_images_siglip_OTA: local anchors per window, then global ones among the rest
    local = released.window_cls_selection_siglip(shallow.clone(), local_count, window_size=9)
    deep = deep.clone()
    for b in range(frames):
        deep[b, local[b]] = 0
    global_ = torch.topk(deep, k=v - local_count, dim=1)[1]
    mask = torch.zeros(frames, tokens, dtype=torch.bool, device=features.device)
    mask.scatter_(1, torch.cat((local, global_), dim=1), True)
    # the released merge writes the anchors into its input: it gets a copy
    merged = released.token_merging_siglip_with_OTA(features.clone(), mask,
                                                    scaling=config.intra_scale)
    pooled = released.get_2dPool(merged)
    pooled_mask = released.get_2dPool_index(mask)
    if not config.inter:
        return torch.cat([pooled[i][pooled_mask[i].bool()] for i in range(frames)])
    segments = released.iter_segments(frames, dynamic_segment=False)
    return released.temporal_ota_merge(image_feature=pooled,
                                       img_index_mask_fn=lambda i: pooled_mask[i, :],
                                       segments=segments, keep_ratio=config.keep_ratio,
                                       scaling=config.inter_scale)

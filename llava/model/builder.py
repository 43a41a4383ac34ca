"""``load_pretrained_model``: lmms-lab LLaVA-OneVision / LLaVA-Video checkpoints, fully offline.

A checkpoint folder holds ``config.json`` (``model_type: llava_qwen``), the tokenizer files and
(sharded) safetensors with raw LLaVA-NeXT weight names. ``model_path`` is that folder or a hub id
already in the local hub cache (never downloaded). The SigLIP tower and image processor come from
built-in so400m-patch14-384 hyper-parameters, overridable by a ``vision_config`` dict in
config.json (how tiny test checkpoints describe their tower).
"""

from __future__ import annotations

import json
import os
from glob import glob

import torch
from transformers import AutoTokenizer

import aot
from .language_model.llava_qwen import LlavaQwenConfig, LlavaQwenForCausalLM
from .vision import build_vision_config

DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
# Accepted for LLaVA-NeXT call compatibility; they change nothing here.
_IGNORED_KWARGS = {"multimodal", "low_cpu_mem_usage", "use_flash_attention_2", "lora"}
# Checkpoint entries that are not parameters of the model (recomputed or unused).
_IGNORED_WEIGHTS = (".rotary_emb.inv_freq", "vision_model.head.")
# Parameters a published checkpoint may lack: the tower's post-layernorm is never used.
_OPTIONAL_WEIGHTS = ("model.vision_tower.vision_tower.vision_model.post_layernorm.",)


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete or does not match the model."""


def load_pretrained_model(model_path, model_base=None, model_name=None, load_8bit=False,
                          load_4bit=False, device_map="auto", torch_dtype="float16",
                          attn_implementation="sdpa", customized_config=None,
                          overwrite_config=None, *, aot_config: "aot.AOTConfig | str | None" = None,
                          reducer: str = "aot", retention: float | None = None,
                          reducer_options: dict | None = None,
                          vision_chunk_size: int = 8, pooling_head=None, **kwargs):
    """Load a LLaVA-Qwen checkpoint (LLaVA-NeXT signature).

    Args:
        model_path: checkpoint folder, or a hub id present in the local hub cache.
        model_base: must be None (LoRA / projector-only checkpoints are not supported).
        model_name: informational only (LLaVA-NeXT branches on it; we read config.json).
        device_map: ``"auto"`` (CUDA if available, else CPU), a device string / torch.device,
            or None (CPU). The whole model goes to one device.
        torch_dtype: ``"float16"`` (LLaVA-NeXT default), ``"bfloat16"``, ``"float32"``,
            ``"auto"`` (the checkpoint's dtype) or a torch.dtype.
        attn_implementation: LLM attention (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``);
            the vision tower uses eager if ``"eager"``, else SDPA.
        customized_config: a config object (or dict of fields) replacing config.json's values.
        overwrite_config: dict of config fields to set (e.g. ``mm_spatial_pool_mode``).
        aot_config: an :class:`aot.AOTConfig`, a preset name, or None (no reduction).
        reducer: which reducer runs with that config (``aot.reducers.get_reducer`` names:
            ``"aot"``, ``"uniform"``, ``"visionzip"``, ``"dycoke"``, ``"random"``, ...).
        retention: for the baselines, the exact retention to run at when the config has no
            ``exact_retention`` yet (so they emit exactly AOT-exact's count).
        reducer_options: the reducer's own knobs (fields of its
            :attr:`aot.reducers.ReducerInfo.options` dataclass) as a dict.
        vision_chunk_size: frames per vision-tower call.
        pooling_head: a SigLIP attention-pooling head to attach before the reducer is set (a
            google/siglip-so400m-patch14-384 folder, weights file or state dict,
            :func:`aot_integrations.pooling_head.attach_pooling_head`): what ``fastvid`` reads.
    Returns:
        (tokenizer, model, image_processor, max_length).
    """
    unknown = sorted(set(kwargs) - _IGNORED_KWARGS)
    if unknown:
        raise TypeError(f"load_pretrained_model got unexpected argument(s) {unknown}")
    if load_8bit or load_4bit:
        raise NotImplementedError("8-bit / 4-bit loading is not supported")
    if model_base is not None:
        raise NotImplementedError(f"model_base={model_base!r}: LoRA or projector-only "
                                  "checkpoints are not supported; pass a full checkpoint")
    folder = resolve_checkpoint(model_path)
    config = load_config(folder, customized_config, overwrite_config)
    device, dtype = resolve_device(device_map), resolve_dtype(torch_dtype, config)

    model = build_model(config, attn_implementation)
    load_weights(model, folder)
    model.to(device=device, dtype=dtype).eval()
    refresh_rotary(model)
    model.generation_config = load_generation_config(folder)
    model.vision_chunk_size = vision_chunk_size
    if pooling_head is not None:
        from aot_integrations.pooling_head import attach_pooling_head

        attach_pooling_head(model, pooling_head)
    if isinstance(aot_config, str):
        aot_config = aot.AOTConfig.preset(aot_config)
    if aot_config is not None and retention is not None and aot_config.exact_retention is None \
            and aot.reducers.reducer_info(reducer).needs_budget:
        aot_config = aot_config.replace(exact_retention=retention)
    model.set_aot(aot_config, reducer=reducer, options=reducer_options)

    tokenizer = load_tokenizer(folder)
    image_processor = build_image_processor(model.get_vision_tower().image_size)
    max_length = getattr(config, "max_sequence_length", 2048)
    return tokenizer, model, image_processor, max_length


def load_tokenizer(folder: str):
    """The checkpoint's tokenizer (``tokenizer.json`` / vocab files next to the weights)."""
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"{folder!r}: no usable tokenizer ({' '.join(str(error).split())}); "
                              "the checkpoint folder must hold the tokenizer files it was "
                              "published with (tokenizer.json, tokenizer_config.json, ...)") \
            from None


def resolve_checkpoint(model_path) -> str:
    """A local folder, or the cached snapshot of a hub id (no network access)."""
    path = os.fspath(model_path)
    if os.path.isdir(path):
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=True)
    except Exception as error:  # not a repo id, or not cached
        raise FileNotFoundError(f"model_path={path!r} is neither a folder nor a model in the "
                                f"local Hugging Face cache ({type(error).__name__}); download it "
                                "first, e.g. `huggingface-cli download <id>`") from error


def load_config(folder: str, customized_config=None, overwrite_config=None) -> LlavaQwenConfig:
    """config.json as a LlavaQwenConfig, with the caller's replacements applied."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder!r} has no config.json")
    try:
        with open(path) as handle:
            raw = json.load(handle)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}, "
                              f"column {error.colno})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a JSON {type(raw).__name__}, not an object")
    model_type = raw.get("model_type")
    if model_type != "llava_qwen":
        raise CheckpointError(f"{path}: model_type={model_type!r}; only 'llava_qwen' "
                              "(LLaVA-OneVision / LLaVA-Video Qwen2) checkpoints are supported")
    if customized_config is not None:
        fields = customized_config if isinstance(customized_config, dict) else \
            customized_config.to_dict()
        raw.update({k: v for k, v in fields.items() if k != "model_type"})
    from huggingface_hub.errors import StrictDataclassError

    try:
        config = LlavaQwenConfig.from_dict(raw)
    except (TypeError, ValueError, StrictDataclassError) as error:  # a field's type or value
        raise CheckpointError(f"{path}: {' '.join(str(error).split())}") from None
    for key, value in (overwrite_config or {}).items():
        setattr(config, key, value)
    return config


def load_generation_config(folder: str):
    """The checkpoint's generation defaults, read exactly as transformers' ``from_pretrained``
    reads them (LLaVA-NeXT loads with ``from_pretrained``): ``generation_config.json`` when the
    folder has one (lmms-lab's LLaVA-Video-7B-Qwen2 ships ``repetition_penalty`` 1.05 and two eos
    ids there, which change greedy answers), else the generation fields of ``config.json``.
    The task's generation arguments override these per ``generate`` call, as in stock.
    """
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(folder, local_files_only=True)
    except OSError:  # no generation_config.json
        return GenerationConfig.from_pretrained(folder, config_file_name="config.json",
                                                _from_model_config=True, local_files_only=True)


def resolve_device(device_map) -> torch.device:
    if device_map is None:
        return torch.device("cpu")
    if isinstance(device_map, dict):
        raise NotImplementedError(f"device_map={device_map!r}: the model is placed on one "
                                  "device; give 'auto', 'cpu' or 'cuda:N'")
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_map)


def resolve_dtype(torch_dtype, config) -> torch.dtype:
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if torch_dtype == "auto":
        torch_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) \
            or "float32"
        if isinstance(torch_dtype, torch.dtype):
            return torch_dtype
    if torch_dtype not in DTYPES:
        raise ValueError(f"torch_dtype={torch_dtype!r}: expected one of {sorted(DTYPES)}, "
                         "'auto' or a torch.dtype")
    return DTYPES[torch_dtype]


def build_model(config: LlavaQwenConfig, attn_implementation: str = "sdpa") -> LlavaQwenForCausalLM:
    """The model with uninitialised (meta) parameters, ready for :func:`load_weights`."""
    build_vision_config(config)  # fail early, before allocating anything
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = LlavaQwenForCausalLM(config)
    model.get_vision_tower().set_attention("eager" if attn_implementation == "eager" else "sdpa")
    return model


def read_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint's safetensors shards (or pytorch_model*.bin)."""
    from safetensors.torch import load_file

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        files = [os.path.join(folder, shard) for shard in shards]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise CheckpointError(f"shards listed in {index} are missing: {missing}")
    else:
        files = sorted(glob(os.path.join(folder, "*.safetensors")))
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(file, device="cpu"))
        except Exception as error:  # safetensors raises its own error type for a broken file
            raise CheckpointError(f"{file} cannot be read ({' '.join(str(error).split())}): "
                                  "truncated or corrupt download? Download it again") from None
    if not files:
        for file in sorted(glob(os.path.join(folder, "pytorch_model*.bin"))):
            state.update(torch.load(file, map_location="cpu", weights_only=True))
    if not state:
        raise CheckpointError(f"{folder!r} holds no *.safetensors or pytorch_model*.bin weights")
    return state


def load_weights(model: LlavaQwenForCausalLM, folder: str) -> None:
    """Load raw-named weights into ``model`` (built by :func:`build_model`).

    Raises:
        CheckpointError: listing missing and unexpected names, or mismatched shapes.
    """
    state = {k: v for k, v in read_state_dict(folder).items()
             if not any(part in k for part in _IGNORED_WEIGHTS)}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    expected = dict(model.named_parameters(remove_duplicate=False))
    optional = {k for k in expected if k.startswith(_OPTIONAL_WEIGHTS)}
    if tied:
        optional.add("lm_head.weight")
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {folder!r} does not match the LLaVA-Qwen model: "
                              f"missing {_names(missing)}; unexpected {_names(unexpected)}")
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in state if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise CheckpointError(f"checkpoint {folder!r}: shape mismatch for {_names(wrong)}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.get_model().embed_tokens.weight
    _materialise(model)


def refresh_rotary(model: LlavaQwenForCausalLM) -> None:
    """Recompute the rotary frequencies in float32 on the model's device (``model.to(dtype)``
    would have rounded them to half precision)."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    inner = model.get_model()
    device = inner.embed_tokens.weight.device
    inner.rotary_emb = Qwen2RotaryEmbedding(config=model.config).to(device)


def _materialise(model: LlavaQwenForCausalLM) -> None:
    """Replace what stayed on the meta device: buffers computed at construction and the optional
    (unused) post-layernorm."""
    inner = model.get_model()
    refresh_rotary(model)
    embeddings = inner.vision_tower.vision_tower.vision_model.embeddings
    embeddings.position_ids = torch.arange(embeddings.num_positions).expand((1, -1))
    post = inner.vision_tower.vision_tower.vision_model.post_layernorm
    if post.weight.is_meta:
        post.to_empty(device="cpu")
        post.reset_parameters()
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_meta]
    if left:
        raise CheckpointError(f"weights not loaded: {_names(left)}")


def _names(names: list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return f"{len(names)} [{shown}{', ...' if len(names) > limit else ''}]"


def build_image_processor(image_size: int = 384):
    """SigLIP preprocessing (resize to image_size, bicubic, rescale 1/255, normalise 0.5/0.5),
    from built-in values.

    Always transformers' PIL backend, whatever is installed: LLaVA-NeXT preprocesses with PIL,
    and the torchvision backend (transformers' default when torchvision imports, i.e. on every
    GPU install) resizes differently, so its pixels would not be the stock model's
    (docs/reproduce.md, the image preprocessing row).
    """
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, resample=3, do_resize=True,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5])

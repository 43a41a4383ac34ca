"""Model code. Importing this registers ``llava_qwen`` / ``llava_llama`` with ``AutoConfig`` (as
LLaVA-NeXT does), so ``AutoConfig.from_pretrained`` reads lmms-lab checkpoints."""

from transformers import AutoConfig

from .language_model.llava_llama import LlavaConfig
from .language_model.llava_qwen import LlavaQwenConfig, LlavaQwenForCausalLM

AutoConfig.register("llava_qwen", LlavaQwenConfig, exist_ok=True)
AutoConfig.register("llava_llama", LlavaConfig, exist_ok=True)

__all__ = ["LlavaConfig", "LlavaQwenConfig", "LlavaQwenForCausalLM"]

"""Prompt templates, compatible with LLaVA-NeXT's ``llava.conversation`` for the templates the
Qwen2-based checkpoints (and lmms-eval's default for ``llava_vid``) use.

Usage, as in lmms-eval::

    conv = copy.deepcopy(conv_templates["qwen_1_5"])
    conv.append_message(conv.roles[0], "<image>\\nWhat happens?")
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
"""

from __future__ import annotations

import copy
import dataclasses
from enum import Enum, auto


class SeparatorStyle(Enum):
    """How turns are joined (names kept from LLaVA-NeXT; only those below are implemented)."""

    SINGLE = auto()
    TWO = auto()
    PLAIN = auto()
    CHATML = auto()


@dataclasses.dataclass
class Conversation:
    """A conversation: system prompt, two roles, and a list of ``[role, message]`` turns.

    ``message`` is a string, ``None`` (the turn the model is asked to produce), or a tuple whose
    first element is the text (LLaVA-NeXT stores images next to the text that way).
    """

    system: str
    roles: tuple[str, str]
    messages: list = dataclasses.field(default_factory=list)
    offset: int = 0
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    tokenizer_id: str = ""
    tokenizer: object = None
    stop_str: str | list | None = None
    stop_token_ids: list | None = None
    skip_next: bool = False

    def append_message(self, role: str, message) -> None:
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        return copy.deepcopy(self)

    def get_prompt(self) -> str:
        """The prompt string for all turns so far (ends with the open assistant turn if its
        message is ``None``)."""
        turns = [(role, _text(message)) for role, message in self.messages]
        if self.sep_style == SeparatorStyle.CHATML:
            # ChatML: every block is "<|im_start|>role\ncontent<|im_end|>\n".
            out = "" if self.system == "" else self.system + self.sep + "\n"
            for role, text in turns:
                out += role + "\n" + (text + self.sep + "\n" if text is not None else "")
            return out
        if self.sep_style == SeparatorStyle.TWO:
            seps = (self.sep, self.sep2)
            out = self.system + seps[0]
            for i, (role, text) in enumerate(turns):
                out += role + ": " + text + seps[i % 2] if text is not None else role + ":"
            return out
        if self.sep_style == SeparatorStyle.SINGLE:
            out = self.system + self.sep
            for role, text in turns:
                out += role + ": " + text + self.sep if text is not None else role + ":"
            return out
        if self.sep_style == SeparatorStyle.PLAIN:
            seps = (self.sep, self.sep2)
            out = self.system
            for i, (_, text) in enumerate(turns):
                out += text + seps[i % 2] if text is not None else ""
            return out
        raise ValueError(f"unsupported separator style {self.sep_style!r}")


def _text(message):
    if isinstance(message, tuple):
        return message[0]
    return message


conv_qwen_1_5 = Conversation(
    system="<|im_start|>system\nYou are a helpful assistant.",
    roles=("<|im_start|>user", "<|im_start|>assistant"),
    version="qwen",
    sep_style=SeparatorStyle.CHATML,
    sep="<|im_end|>",
)

conv_vicuna_v1 = Conversation(
    system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"),
    version="v1",
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)

conv_plain = Conversation(system="", roles=("", ""), sep_style=SeparatorStyle.PLAIN, sep="\n",
                          sep2="\n", version="plain")

default_conversation = conv_vicuna_v1
conv_templates: dict[str, Conversation] = {
    "default": conv_vicuna_v1,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llava_v1": conv_vicuna_v1,
    "plain": conv_plain,
    "qwen_1_5": conv_qwen_1_5,
}

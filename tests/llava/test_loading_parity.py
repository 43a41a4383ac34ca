"""Loading parity with LLaVA-NeXT: what ``load_pretrained_model`` returns besides the weights.

* ``generation_config.json`` is read exactly as transformers' ``from_pretrained`` reads it
  (LLaVA-NeXT loads with ``from_pretrained``), and a task's generation arguments override it.
* The image processor is transformers' PIL backend whatever is installed, so pixels equal
  LLaVA-NeXT's PIL preprocessing on GPU installs too (where torchvision imports). torchvision
  cannot be installed on the CPU CI (PyPI's wheels are CUDA builds), so a stand-in package makes
  transformers believe it is installed, in a fresh process.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import tokenizer_image_token
from llava.model import LlavaQwenForCausalLM
from llava.model.builder import load_pretrained_model
from aot_integrations.tiny import VIDEO_GENERATION_CONFIG
from llava_testkit import video_pixels, write_checkpoint

QUESTIONS = ["What happens in the video?", "Describe the video in one sentence.",
             "A person walks a dog in the park.", "red blue red blue red blue",
             "Answer with the option's letter. (A) yes (B) no", "The best answer is:",
             "What colour is the square?", "system user assistant"]


@pytest.fixture(scope="module")
def with_generation_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video-genconf")
    write_checkpoint(folder, "video", seed=3, generation_config=VIDEO_GENERATION_CONFIG)
    return str(folder)


def prompt(tokenizer, question: str) -> torch.Tensor:
    conv = copy.deepcopy(conv_templates["qwen_1_5"])
    conv.append_message(conv.roles[0], "<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX,
                                 return_tensors="pt").unsqueeze(0)


def oracle_generation_config(folder: str) -> dict:
    """What transformers' ``from_pretrained`` leaves on the model."""
    return LlavaQwenForCausalLM.from_pretrained(folder).generation_config.to_dict()


@pytest.mark.parametrize("ships_file", [True, False])
def test_generation_config_as_from_pretrained(tmp_path, ships_file):
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, "video", seed=3,
                     generation_config=VIDEO_GENERATION_CONFIG if ships_file else None)
    _, model, _, _ = load_pretrained_model(str(folder), device_map="cpu", torch_dtype="float32")
    ours = model.generation_config.to_dict()
    assert ours == oracle_generation_config(str(folder))
    if ships_file:
        assert ours["repetition_penalty"] == 1.05 and ours["eos_token_id"] == [2, 0]
        assert ours["pad_token_id"] == 0 and ours["do_sample"] is True


def greedy(model, ids, video, **extra) -> list[int]:
    """The call the stock wrappers make (greedy via the task's do_sample=False)."""
    out = model.generate(ids, images=[video], modalities=["video"], do_sample=False,
                         max_new_tokens=12, attention_mask=torch.ones_like(ids),
                         pad_token_id=0, **extra)
    return out[0].tolist()


@pytest.mark.slow
def test_checkpoint_generation_config_drives_greedy_answers(with_generation_config):
    """The task's do_sample=False overrides the file's sampling fields (deterministic answers),
    while its repetition penalty and eos ids apply: answers equal generation with those values
    passed explicitly, and differ from generation without them on some prompts."""
    tokenizer, model, _, _ = load_pretrained_model(with_generation_config, device_map="cpu",
                                                   torch_dtype="float32")
    video = video_pixels(4, seed=1)
    differing = 0
    for question in QUESTIONS:
        ids = prompt(tokenizer, question)
        answer = greedy(model, ids, video)
        assert answer == greedy(model, ids, video)  # greedy despite do_sample=true in the file
        explicit = copy.deepcopy(model.generation_config)
        explicit.update(do_sample=False, top_k=None, top_p=None, temperature=None)
        bare = copy.deepcopy(explicit)
        bare.update(repetition_penalty=1.0, eos_token_id=2)
        assert answer == greedy(model, ids, video, generation_config=explicit)
        differing += answer != greedy(model, ids, video, generation_config=bare)
    assert differing > 0, "the repetition penalty never changed an answer: the probe is too weak"


def llava_next_pil_pixels(frames: np.ndarray, size: int = 384) -> np.ndarray:
    """LLaVA-NeXT's SigLIP preprocessing: PIL bicubic resize, rescale 1/255, normalise 0.5/0.5,
    channels first (transformers.image_transforms functions, as its processor chains them)."""
    from transformers.image_transforms import normalize, rescale, resize, to_channel_dimension_format
    from transformers.image_utils import ChannelDimension, PILImageResampling

    out = []
    for frame in frames:
        image = resize(frame, (size, size), resample=PILImageResampling.BICUBIC,
                       data_format=ChannelDimension.LAST)
        image = rescale(image, 1 / 255, data_format=ChannelDimension.LAST)
        image = normalize(image, [0.5] * 3, [0.5] * 3, data_format=ChannelDimension.LAST)
        out.append(to_channel_dimension_format(image, ChannelDimension.FIRST, ChannelDimension.LAST))
    return np.stack(out)


# A stand-in torchvision: enough for transformers to import with it "installed" (as on every GPU
# install), unusable for actual resizing. The real one is a 5.5 GB CUDA build on PyPI.
TORCHVISION_STUB = {
    "__init__.py": "__version__ = '0.28.0'\n",
    "transforms/__init__.py": "import enum\n\n\nclass InterpolationMode(enum.Enum):\n"
                              "    NEAREST = 'nearest'\n    BILINEAR = 'bilinear'\n"
                              "    BICUBIC = 'bicubic'\n    LANCZOS = 'lanczos'\n"
                              "    NEAREST_EXACT = 'nearest-exact'\n    BOX = 'box'\n"
                              "    HAMMING = 'hamming'\n",
    "transforms/functional.py": "def pil_to_tensor(*args, **kwargs):\n"
                                "    raise RuntimeError('torchvision stub')\n",
    "transforms/v2/__init__.py": "",
    "transforms/v2/functional.py": "def __getattr__(name):\n"
                                   "    raise RuntimeError(f'torchvision stub: {name}')\n",
    "io.py": "",
}

PREPROCESS = """
import sys, numpy as np
from transformers.utils import is_torchvision_available
from llava.model.builder import build_image_processor
processor = build_image_processor(384)
frames = np.load(sys.argv[1])
pixels = processor.preprocess(list(frames), return_tensors="pt")["pixel_values"]
np.save(sys.argv[2], pixels.numpy())
print(is_torchvision_available(), type(processor).__name__)
"""


@pytest.mark.slow  # a fresh interpreter per case
@pytest.mark.parametrize("torchvision_installed", [False, True])
def test_pixels_are_llava_next_pil_pixels(tmp_path, torchvision_installed):
    """Whether or not torchvision is installed, the processor is transformers' PIL one and its
    pixels equal LLaVA-NeXT's PIL path bit for bit (a fresh process, so that transformers
    decides its backends at import as it would on a GPU install)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 90, 160, 3), dtype=np.uint8)
    frames[:, 30:60, 40:100] = [250, 10, 120]  # sharp edges, where resize kernels differ
    np.save(tmp_path / "frames.npy", frames)
    repo = Path(__file__).resolve().parents[2]
    path = [str(repo)]
    if torchvision_installed:
        for name, text in TORCHVISION_STUB.items():
            file = tmp_path / "stub" / "torchvision" / name
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(text)
        path.insert(0, str(tmp_path / "stub"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", PREPROCESS, str(tmp_path / "frames.npy"),
                           str(tmp_path / "pixels.npy")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(torchvision_installed), "SiglipImageProcessorPil"]
    got = np.load(tmp_path / "pixels.npy")
    assert got.dtype == np.float32 and got.shape == (3, 3, 384, 384)
    np.testing.assert_array_equal(got, llava_next_pil_pixels(frames).astype(np.float32))

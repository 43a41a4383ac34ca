"""lmms-eval models on transformers' backbones: qwen2_5_vl_aot, qwen3_vl_aot, llava_hf_aot.

Each is the stock lmms-eval 0.7.3 class (``qwen2_5_vl``, ``qwen3_vl``, ``llava_hf``) plus a
reducer (:mod:`aot_eval.hf_models`). Tested here on tiny random checkpoints saved from
transformers' config classes (:mod:`aot_integrations.tiny`) with an in-memory word-level tokenizer, over a
local lmms-eval task of real mp4s (helpers of ``tests/test_eval_e2e.py``):

* reducer=none: stock and ours give the same prompts, inputs, generation arguments and answers,
  doc by doc; the record says retention 1.0;
* reducer=aot, retention=0.25, exact: every video gets floor(0.25 N + 0.5) tokens, recorded, and
  the answers' token ids differ from the unreduced run's.

**Stand-ins for torchvision.** The stock video path cannot run on this CPU machine: transformers
5.24's video processors (``Qwen2VLVideoProcessor``, ``Qwen3VLVideoProcessor``,
``LlavaOnevisionVideoProcessor``) and ``qwen_vl_utils`` (the stock Qwen classes' frame reader)
import torchvision, which is absent here (docs/reproduce.md). Both the stock run and ours
therefore get the same torch-only stand-ins, patched into the stock modules that both classes
execute: ``process_vision_info`` (decord frames, qwen_vl_utils' frame count and size rules,
bicubic antialiased resize) and ``AutoProcessor`` (transformers' real processor classes with a
torch-only video processor: Qwen patches, OneVision resize + normalise). The identity checked is
between our classes and the stock ones, not of the stand-ins with torchvision.
"""

import hashlib
import json
import math
import sys
import unittest.mock
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("decord")
np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_eval_e2e as e2e  # noqa: E402  (local task, mp4 writer, sample helpers)
from media import write_mp4  # noqa: E402

TASK = "aot_tinyhf"
WIDE_TASK = "aot_tinyhf_wide"
SECONDS = (2.0, 3.0, 2.0)  # 8 fps: 16, 24, 16 frames
DOCS = len(SECONDS)
FRAMES = 8
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|video_pad|>", "<|image_pad|>", "<video>", "<image>", "[UNK]"]
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHATML = (  # OneVision: a string content as is; a list gives its images, videos, then texts
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% endif %}"
    "{% endfor %}{% for part in message['content'] %}{% if part['type'] == 'video' %}<video>"
    "{% endif %}{% endfor %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "\n{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# ---------------------------------------------------------------- checkpoints
def word_tokenizer():
    """A word-level tokenizer (specials first: pad 0, <|im_start|> 1, <|im_end|> 2 as eos) whose
    vocabulary covers the task's prompts; under 300 ids (the tiny models' vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ("You are a helpful assistant . system user assistant What colour is the square in "
             "clip video ? ( A ) red B blue Answer with option ' s letter from given choices "
             "directly seconds < > 0 1 2 3 4 5 6 7 8 9 \n : , !").split(" ")
    vocab = {token: i for i, token in enumerate(dict.fromkeys(SPECIALS + words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>",
                                  eos_token="<|im_end|>", unk_token="[UNK]",
                                  additional_special_tokens=SPECIALS[1:-1], chat_template=CHATML)
    assert len(tok) < 300
    return tok


def write_checkpoint(path: Path, kind: str, seed: int = 0) -> None:
    """A tiny random ``kind`` checkpoint (qwen2_5_vl, qwen3_vl, llava_hf) and its tokenizer; the
    model's special ids are the tokenizer's."""
    from aot_integrations import tiny

    tok = word_tokenizer()
    model = {"qwen2_5_vl": tiny.qwen2_5_vl, "qwen3_vl": tiny.qwen3_vl,
             "llava_hf": tiny.onevision}[kind](seed=seed)
    config = model.config
    if kind == "llava_hf":
        config.video_token_id = tok.convert_tokens_to_ids("<video>")
        config.image_token_id = tok.convert_tokens_to_ids("<image>")
    else:
        config.video_token_id = tok.convert_tokens_to_ids("<|video_pad|>")
        config.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
        config.vision_start_token_id = tok.convert_tokens_to_ids("<|vision_start|>")
        config.vision_end_token_id = tok.convert_tokens_to_ids("<|vision_end|>")
    model.generation_config.eos_token_id = tok.eos_token_id
    with torch.no_grad():  # a random 2-layer LM barely reads its context: louder attention makes
        for layer in model.model.language_model.layers:  # its answers depend on the video
            layer.self_attn.o_proj.weight.mul_(10)
    model.save_pretrained(path)
    tok.save_pretrained(path)


# ---------------------------------------------------------------- torch-only stand-ins
def resize_video(video: "torch.Tensor", height: int, width: int) -> "torch.Tensor":
    """(T, C, H, W) uint8 -> float (T, C, height, width), bicubic with antialias, rounded and
    clamped to uint8 values (what torchvision's resize does on uint8 frames)."""
    out = torch.nn.functional.interpolate(video.float(), size=(height, width), mode="bicubic",
                                          align_corners=False, antialias=True)
    return out.clamp(0, 255).round()


def process_vision_info(conversations, return_video_kwargs=False, return_video_metadata=False,
                        image_patch_size=14):
    """Stand-in of ``qwen_vl_utils.process_vision_info`` for local videos: decord frames at
    ``nframes`` (or ``fps``, default 2) spread by ``linspace(...).round()``, sizes by the Qwen
    ``smart_resize`` rule with the element's min/max pixels."""
    import decord
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    from transformers.video_utils import VideoMetadata

    if isinstance(conversations[0], dict):
        conversations = [conversations]
    factor = image_patch_size * 2
    videos, fps_list = [], []
    for conversation in conversations:
        for message in conversation:
            if isinstance(message["content"], str):
                continue
            for part in message["content"]:
                if part.get("type") != "video":
                    continue
                reader = decord.VideoReader(part["video"])
                total, video_fps = len(reader), reader.get_avg_fps()
                if "nframes" in part:
                    count = round(part["nframes"] / 2) * 2
                else:
                    wanted = total / video_fps * part.get("fps", 2.0)
                    top = math.floor(part.get("max_frames", min(768, total)) / 2) * 2
                    count = math.floor(min(max(wanted, 4), top, total) / 2) * 2
                if not 2 <= count <= total:  # qwen_vl_utils refuses these too
                    raise ValueError(f"nframes should in interval [2, {total}], got {count}")
                index = torch.linspace(0, total - 1, count).round().long().tolist()
                frames = torch.from_numpy(reader.get_batch(index).asnumpy()).permute(0, 3, 1, 2)
                height, width = smart_resize(frames.shape[2], frames.shape[3], factor,
                                             part.get("min_pixels", 128 * factor * factor),
                                             part.get("max_pixels", 768 * factor * factor))
                video = resize_video(frames, height, width)
                metadata = VideoMetadata(total_num_frames=total, fps=video_fps,
                                         frames_indices=index, video_backend="decord")
                videos.append((video, metadata) if return_video_metadata else video)
                fps_list.append(count / total * video_fps)
    videos = videos or None
    if not return_video_kwargs:
        return None, videos
    kwargs = {"do_sample_frames": False}
    if not return_video_metadata:
        kwargs["fps"] = fps_list
    return None, videos, kwargs


def video_processor_class():
    """A ``BaseVideoProcessor`` that needs no torchvision (built lazily: transformers import)."""
    from transformers.feature_extraction_utils import BatchFeature
    from transformers.video_processing_utils import BaseVideoProcessor
    from transformers.video_utils import VideoMetadata

    class TorchVideoProcessor(BaseVideoProcessor):
        """Qwen layout (``patch_size`` set): frames padded to whole temporal patches, scaled to
        [0, 1], normalised, cut into (t*h*w, C*2*p*p) patches with ``video_grid_thw``. OneVision
        layout (``size`` set): every frame resized to size x size -> (V, F, 3, S, S)."""

        def __init__(self, patch_size=None, size=None, **kwargs):
            super().__init__(**kwargs)
            self.patch_size, self.size = patch_size, size
            self.merge_size, self.temporal_patch_size = 2, 2

        def __call__(self, videos, video_metadata=None, **kwargs):
            videos = list(videos) if isinstance(videos, (list, tuple)) else [videos]
            if self.size is not None:
                return self._onevision(videos)
            patches, grids, metas = [], [], []
            for i, video in enumerate(videos):
                video = torch.as_tensor(video).float()
                if video.shape[0] % 2:
                    video = torch.cat([video, video[-1:]])
                video = (video / 255 - 0.5) / 0.5
                t, c, h, w = video.shape[0] // 2, *video.shape[1:]
                p, m = self.patch_size, self.merge_size
                grid = video.reshape(t, 2, c, h // p // m, m, p, w // p // m, m, p)
                grid = grid.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
                patches.append(grid.reshape(t * (h // p) * (w // p), c * 2 * p * p))
                grids.append([t, h // p, w // p])
                meta = video_metadata[i] if video_metadata else None
                metas.append(meta if meta is not None else VideoMetadata(
                    total_num_frames=video.shape[0], fps=2.0,
                    frames_indices=list(range(video.shape[0]))))
            return BatchFeature({"pixel_values_videos": torch.cat(patches),
                                 "video_grid_thw": torch.tensor(grids),
                                 "video_metadata": metas})

        def _onevision(self, videos):
            """(F, H, W, 3) frames, or a path (the chat class passes paths: every frame)."""
            import decord

            out = []
            for video in videos:
                if isinstance(video, str):
                    reader = decord.VideoReader(video)
                    video = reader.get_batch(list(range(len(reader)))).asnumpy()
                frames = torch.as_tensor(np.asarray(video)).permute(0, 3, 1, 2)
                frames = resize_video(frames, self.size, self.size)
                out.append((frames / 255 - 0.5) / 0.5)
            return BatchFeature({"pixel_values_videos": torch.stack(out)})

    return TorchVideoProcessor


class StandInAutoProcessor:
    """``AutoProcessor.from_pretrained`` for the tiny checkpoints: the real processor class of
    the checkpoint with the torch-only video processor."""

    @staticmethod
    def from_pretrained(path, **kwargs):
        from transformers import (AutoConfig, AutoTokenizer, LlavaOnevisionProcessor,
                                  Qwen2_5_VLProcessor, Qwen3VLProcessor)
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil)
        from transformers.processing_utils import ProcessorMixin

        config = AutoConfig.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        videos = video_processor_class()
        if config.model_type == "llava_onevision":
            side = config.vision_config.image_size // config.vision_config.patch_size
            with unittest.mock.patch.object(ProcessorMixin, "check_argument_for_proper_class"):
                return LlavaOnevisionProcessor(
                    LlavaOnevisionImageProcessorPil(), tok,
                    videos(size=config.vision_config.image_size), num_image_tokens=side * side,
                    vision_feature_select_strategy="full", chat_template=CHATML)
        patch = config.vision_config.patch_size
        cls = Qwen3VLProcessor if config.model_type == "qwen3_vl" else Qwen2_5_VLProcessor
        with unittest.mock.patch.object(ProcessorMixin, "check_argument_for_proper_class"):
            # transformers checks the video processor's class against a mapping that cannot
            # load without torchvision
            return cls(Qwen2VLImageProcessorPil(patch_size=patch), tok, videos(patch_size=patch),
                       chat_template=QWEN_TEMPLATE)


@pytest.fixture
def stand_ins(monkeypatch):
    """The stand-ins in the stock modules (so the stock classes and ours both use them), every
    ``generate`` call logged per batch row: prompt ids, pixels digest, generation arguments,
    new tokens."""
    import lmms_eval.models.chat.qwen2_5_vl as chat_qwen2_5_vl
    import lmms_eval.models.chat.qwen3_vl as chat_qwen3_vl
    import lmms_eval.models.simple.llava_hf as llava_hf
    import lmms_eval.models.simple.qwen2_5_vl as qwen2_5_vl
    import lmms_eval.models.simple.qwen3_vl as qwen3_vl
    from transformers import GenerationMixin

    for module in (llava_hf, qwen2_5_vl, qwen3_vl):  # the chat classes inherit __init__
        monkeypatch.setattr(module, "AutoProcessor", StandInAutoProcessor)
    for module in (qwen2_5_vl, qwen3_vl, chat_qwen2_5_vl, chat_qwen3_vl):
        monkeypatch.setattr(module, "process_vision_info", process_vision_info)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    log = []
    original = GenerationMixin.generate

    def logged(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        ids = kwargs["input_ids"]
        mask = kwargs.get("attention_mask", torch.ones_like(ids))
        pixels = kwargs.get("pixel_values_videos")
        digest = None if pixels is None else (tuple(pixels.shape), hashlib.sha1(
            pixels.float().cpu().numpy().tobytes()).hexdigest())
        plain = {k: v for k, v in kwargs.items()
                 if isinstance(v, (bool, int, float, str)) or v is None}
        for row, keep, new in zip(ids, mask.bool(), output):
            log.append({"prompt": tuple(row[keep].tolist()), "pixels": digest, "kwargs": plain,
                        "answer": new[ids.shape[1]:].tolist()})
        return output

    monkeypatch.setattr(GenerationMixin, "generate", logged)
    return log


# ---------------------------------------------------------------- workspace and runs
# 112 px square clips: Qwen2.5-VL keeps 112 (8x8 patches of 14 -> 4x4 merged tokens), Qwen3-VL
# rounds to 128 (8x8 patches of 16), OneVision resizes to its 84 px (6x6 -> 3x3 pooled).
PIXELS = "min_pixels=12544,max_pixels=16384"
STOCK_ARGS = {
    "qwen2_5_vl": f"device_map=cpu,max_num_frames={FRAMES},{PIXELS}",
    "qwen3_vl": f"device_map=cpu,max_num_frames={FRAMES},{PIXELS}",
    "llava_hf": f"device_map=cpu,max_frames_num={FRAMES}",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Square mp4s, a local task over them, and the three tiny checkpoints."""
    root = tmp_path_factory.mktemp("eval-hf")
    videos = []
    for i, seconds in enumerate(SECONDS):
        videos.append(root / f"clip{i}.mp4")
        write_square_video(videos[-1], seed=i, side=112, seconds=seconds)
    write_task(root, TASK, videos)
    e2e.write_video(root / "wide.mp4", seed=1)  # 96 x 64
    write_task(root, WIDE_TASK, [root / "wide.mp4"])
    ckpt = {}
    for kind in STOCK_ARGS:
        ckpt[kind] = root / f"tiny-{kind}"
        write_checkpoint(ckpt[kind], kind, seed=3)
    return {"root": root, "tasks": root / "tasks", "ckpt": ckpt}


def write_task(root: Path, name: str, videos: list) -> None:
    """A local generate_until task (tests/test_eval_e2e.py's template) over ``videos``."""
    rows = [{"id": i, "video": str(video), "answer": "AB"[i % 2],
             "question": f"What colour is the square in clip {i} ?"}
            for i, video in enumerate(videos)]
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = root / "tasks" / name
    folder.mkdir(parents=True)
    (folder / f"{name}.yaml").write_text(
        e2e.TASK_YAML.replace("task: aot_tinyvid", f"task: {name}").format(
            data=data, ov_post=e2e.OV_POST, vid_post=e2e.VID_POST))
    (folder / "utils.py").write_text(e2e.TASK_UTILS)


def write_square_video(path: Path, seed: int, side: int, seconds: float = 2.0,
                       fps: int = 8) -> None:
    """A short H.264 clip of ``side`` x ``side`` pixels (a moving square over noise)."""
    rng = np.random.default_rng(seed)

    def frame(i: int) -> np.ndarray:
        image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        x = (i * 5 + seed * 9) % (side - 24)
        image[20:44, x:x + 24] = [200, 40 * seed % 255, 90]
        return image

    write_mp4(path, (frame(i) for i in range(int(seconds * fps))), rate=fps)


def evaluate(ws, model_id: str, model_args: str, log: list, batch_size: int = 1,
             force_simple: bool = False, task: str = TASK) -> dict:
    """One ``simple_evaluate`` of the local task (ours through the prompt-alias TaskManager);
    returns answers by doc, the logged generate rows by prompt, and empties ``log``."""
    from lmms_eval.evaluator import simple_evaluate

    manager = e2e.task_manager_for(ws, model_id)
    results = simple_evaluate(model=model_id, model_args=model_args, tasks=[task], device="cpu",
                              log_samples=True, task_manager=manager, batch_size=batch_size,
                              force_simple=force_simple)
    samples = results["samples"][task]
    calls = {call["prompt"]: call for call in log}
    assert len(calls) == len(log) == len(samples), "one generate row per doc, distinct prompts"
    log.clear()
    return {"answers": {s["doc_id"]: s["filtered_resps"] for s in samples},
            "inputs": {s["doc_id"]: e2e.context_of(s) for s in samples}, "calls": calls}


def video_token_id(checkpoint: Path) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(checkpoint).video_token_id


def record_of(log_dir: Path, model_id: str) -> dict:
    records = sorted(log_dir.glob(f"aot_retention_{model_id}_*.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


# (kind, force_simple): lmms-eval runs the Qwen ids as their chat classes by default; stock chat
# llava_hf cannot read videos under transformers 5.24, so llava_hf is compared as --force_simple
# (aot_eval.manifests.CHAT_MODELS).
RUNS = [("qwen2_5_vl", False), ("qwen3_vl", False), ("llava_hf", True),
        pytest.param("qwen2_5_vl", True, marks=pytest.mark.slow),
        pytest.param("qwen3_vl", True, marks=pytest.mark.slow)]
#: Video tokens per doc unreduced: Qwen 8 frames = 4 temporal patches x 4x4 merged tokens;
#: OneVision 8 frames x 3x3 pooled tokens (+1 newline, not counted in N).
UNREDUCED = {"qwen2_5_vl": 64, "qwen3_vl": 64, "llava_hf": 72}
AOT_KNOBS = {"qwen2_5_vl": "anchors_per_frame=8,window=2,shallow_layer=1,deep_layer=3",
             "qwen3_vl": "anchors_per_frame=8,window=2,shallow_layer=1,deep_layer=3",
             "llava_hf": "anchors_per_frame=12,window=3,shallow_layer=1,deep_layer=3"}


@pytest.mark.parametrize("kind,force_simple", RUNS)
def test_reducer_off_is_the_stock_model(workspace, stand_ins, tmp_path, kind, force_simple):
    """reducer=none: the same task inputs, prompt ids, pixels, generation arguments and answers
    as the stock class, doc by doc; every video recorded at retention 1.0."""
    ws = workspace
    args = f"pretrained={ws['ckpt'][kind]},{STOCK_ARGS[kind]}"
    stock = evaluate(ws, kind, args, stand_ins, force_simple=force_simple)
    ours = evaluate(ws, kind + "_aot", args + f",reducer=none,retention_log={tmp_path}",
                    stand_ins, force_simple=force_simple)
    assert sorted(stock["answers"]) == list(range(DOCS))
    assert ours["inputs"] == stock["inputs"]
    assert ours["answers"] == stock["answers"]
    assert ours["calls"] == stock["calls"]
    # every doc its own video (a row given another doc's frames would differ in pixels)
    assert len({call["pixels"] for call in stock["calls"].values()}) == DOCS
    assert any(call["answer"] for call in stock["calls"].values())
    record = record_of(tmp_path, kind + "_aot")
    assert record["reducer"] == "none" and record["prompt_model"] == kind
    assert [s["doc_id"] for s in record["samples"]] == list(range(DOCS))
    assert all(s["retention"] == 1.0 for s in record["samples"])
    video, newlines = video_token_id(ws["ckpt"][kind]), int(kind == "llava_hf")
    assert sorted(s["denominator"] for s in record["samples"]) == \
        sorted(prompt.count(video) - newlines for prompt in stock["calls"])
    if not force_simple or kind == "llava_hf":  # chat qwen / simple llava_hf sample 8 frames
        assert all(s["denominator"] == UNREDUCED[kind] for s in record["samples"])


@pytest.mark.parametrize("kind,force_simple", RUNS[:3])
def test_exact_retention_runs_and_is_recorded(workspace, stand_ins, tmp_path, kind,
                                              force_simple):
    """reducer=aot, retention=0.25 exact: every video reaches the LLM with floor(0.25 N + 0.5)
    tokens (counted in the ids the stock generate receives), the record says so, and the
    generated tokens differ from the unreduced run's."""
    ws = workspace
    args = f"pretrained={ws['ckpt'][kind]},{STOCK_ARGS[kind]},retention_log={tmp_path}"
    plain = evaluate(ws, kind + "_aot", args + ",reducer=none", stand_ins,
                     force_simple=force_simple)
    reduced = evaluate(ws, kind + "_aot", args + f",retention=0.25,exact=true,{AOT_KNOBS[kind]}",
                       stand_ins, force_simple=force_simple)
    video = video_token_id(ws["ckpt"][kind])
    kept = math.floor(0.25 * UNREDUCED[kind] + 0.5)
    newlines = 1 if kind == "llava_hf" else 0
    # the logged generate is the stock one: it sees the reduced prompt, same text around it
    for prompt in reduced["calls"]:
        assert prompt.count(video) == kept + newlines
    def by_text(calls):
        return {tuple(t for t in p if t != video): c["answer"] for p, c in calls.items()}

    assert sorted(by_text(reduced["calls"])) == sorted(by_text(plain["calls"]))
    assert by_text(reduced["calls"]) != by_text(plain["calls"])  # the answers' tokens changed
    records = sorted(tmp_path.glob(f"aot_retention_{kind}_aot_*.json"))
    record = [json.loads(p.read_text()) for p in records]
    record = next(r for r in record if r["reducer"] == "aot")
    assert record["requested_retention"] == 0.25
    assert record["aot_config"]["exact_retention"] == 0.25
    for sample in record["samples"]:
        assert sample["denominator"] == UNREDUCED[kind]
        assert sample["kept_tokens"] == kept and sample["newline_tokens"] == newlines
        assert sample["visual_tokens"] == kept + newlines
        assert sample["retention"] == kept / UNREDUCED[kind]


def test_batches_map_rows_to_their_docs(workspace, stand_ins, tmp_path):
    """batch_size=2 (stock simple qwen2_5_vl: 2 fps, so the 3 s clip has more frames): each
    row's record lands on its own doc, at the exact budget of its own video."""
    ws = workspace
    args = (f"pretrained={ws['ckpt']['qwen2_5_vl']},{STOCK_ARGS['qwen2_5_vl']},retention=0.25,"
            f"exact=true,{AOT_KNOBS['qwen2_5_vl']},retention_log={tmp_path}")
    evaluate(ws, "qwen2_5_vl_aot", args, stand_ins, batch_size=2, force_simple=True)
    record = record_of(tmp_path, "qwen2_5_vl_aot")
    assert record["batch_size"] == 2
    frames = {s["doc_id"]: s["frames"] for s in record["samples"]}
    assert frames == {0: 2, 1: 3, 2: 2}  # temporal patches: 4, 6, 4 frames at 2 fps
    for sample in record["samples"]:
        assert sample["denominator"] == 16 * sample["frames"]
        assert sample["kept_tokens"] == math.floor(0.25 * sample["denominator"] + 0.5)


def test_non_square_video_reduced(workspace, stand_ins, tmp_path):
    """A 96 x 64 clip (Qwen2.5-VL: 4x5 merged tokens) at the exact budget."""
    ws = workspace
    args = (f"pretrained={ws['ckpt']['qwen2_5_vl']},{STOCK_ARGS['qwen2_5_vl']},retention=0.25,"
            f"exact=true,{AOT_KNOBS['qwen2_5_vl']},retention_log={tmp_path}")
    evaluate(ws, "qwen2_5_vl_aot", args, stand_ins, task=WIDE_TASK)
    sample = record_of(tmp_path, "qwen2_5_vl_aot")["samples"][0]
    assert sample["kept_tokens"] == math.floor(0.25 * sample["denominator"] + 0.5)


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_model_args(backbone):
    """Qwen backbones: exact retention on the grid-adapted settings; approximate retention
    (its processor decides the frame count per video) refused for AOT, allowed for the budgeted
    baselines."""
    from aot.backbones import get_backbone
    from aot_eval.model_args import parse_reducer

    facts = get_backbone(backbone)
    spec = parse_reducer({"retention": "0.25", "exact": "true", "window": "2"}, backbone)
    assert spec.config.exact_retention == 0.25 and spec.config.window == 2
    assert (spec.config.shallow_layer, spec.config.deep_layer) == (facts.shallow_layer,
                                                                    facts.deep_layer)
    assert spec.config.pooling == "none"
    # A retention on Qwen is an exact budget (no approximate model for native grids) ...
    assert parse_reducer({"retention": "0.25"}, backbone).config.exact_retention == 0.25
    # ... and asking for the approximate mode is refused, not ignored.
    with pytest.raises(ValueError, match="decides the frame count per video"):
        parse_reducer({"retention": "0.25", "exact": "false"}, backbone)
    assert parse_reducer({"reducer": "uniform", "retention": "0.1"}, backbone).retention == 0.1
    assert parse_reducer({}, backbone).config.exact_retention is None


def test_unknown_model_args_reach_the_stock_check(workspace, stand_ins):
    """Keys that are neither AOT keys nor stock arguments fail as in the stock class."""
    from aot_eval.hf_models import Qwen2_5_VLAOT

    with pytest.raises(AssertionError, match="Unexpected kwargs"):
        Qwen2_5_VLAOT(pretrained=str(workspace["ckpt"]["qwen2_5_vl"]), device="cpu",
                      device_map="cpu", retention_typo="0.1")


IMAGE_UTILS = e2e.TASK_UTILS.replace(
    'def doc_to_visual(doc):\n    return [doc["video"]]',
    'def doc_to_visual(doc):\n    from PIL import Image\n\n'
    '    return [Image.new("RGB", (84, 84), (200, 40, 90))]')


def test_images_refused_under_a_reducer_even_where_stock_swallows_errors(workspace, stand_ins,
                                                                         tmp_path):
    """Stock llava_hf answers '' when generate raises; a reduced run refuses image docs (they
    would pass unreduced) and raises after the run, with the failure in the record."""
    ws = workspace
    write_task(ws["root"] / "images", "aot_tinyhf_images", ["unused"])
    utils = ws["root"] / "images" / "tasks" / "aot_tinyhf_images" / "utils.py"
    utils.write_text(IMAGE_UTILS)
    assert "Image.new" in utils.read_text()
    args = (f"pretrained={ws['ckpt']['llava_hf']},{STOCK_ARGS['llava_hf']},retention=0.25,"
            f"exact=true,{AOT_KNOBS['llava_hf']},retention_log={tmp_path}")
    images = {**ws, "tasks": ws["root"] / "images" / "tasks"}
    with pytest.raises(RuntimeError, match="images with reducer=aot"):
        evaluate(images, "llava_hf_aot", args, stand_ins, force_simple=True,
                 task="aot_tinyhf_images")
    sample = record_of(tmp_path, "llava_hf_aot")["samples"][0]
    assert "NotImplementedError" in sample["error"] and sample["retention"] is None


def test_plugin_classes_take_their_ids_from_the_protocol_records():
    from aot_eval import hf_models

    expected = {"Qwen2_5_VLAOT": ("qwen2_5_vl_aot", "qwen2_5_vl", "qwen2_5_vl"),
                "Qwen3_VLAOT": ("qwen3_vl_aot", "qwen3_vl", "qwen3_vl"),
                "LlavaHfAOT": ("llava_hf_aot", "llava_hf", "ov"),
                "Qwen2_5_VLChatAOT": ("qwen2_5_vl_aot", "qwen2_5_vl", "qwen2_5_vl"),
                "Qwen3_VLChatAOT": ("qwen3_vl_aot", "qwen3_vl", "qwen3_vl")}
    for name, ids in expected.items():
        cls = getattr(hf_models, name)
        assert (cls.MODEL_ID, cls.STOCK_ID, cls.BACKBONE) == ids, name

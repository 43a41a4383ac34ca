"""Image docs through lmms-eval: our plugin (``reducer=none``) against stock ``llava_onevision``
running on this project's ``llava`` package, on a local task of PNG files.

Both model objects are built in the test and handed to ``simple_evaluate``; their ``generate``
calls are recorded, and the token ids, pixels, ``image_sizes`` and answers must be identical doc
by doc: one wide and one tall image (anyres_max_9: base view + crops), two images in one doc
(stock's multi-image rule: padded squares, no crops), and a text-only doc.
"""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("decord")  # the stock wrapper imports it at module level
np = pytest.importorskip("numpy")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "llava"))
llava_testkit = pytest.importorskip("llava_testkit")

TASK = "aot_tinyimg"
OV_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
TASK_YAML = """task: aot_tinyimg
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
TASK_UTILS = '''
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(path).convert("RGB") for path in doc["images"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + "\\nAnswer with the option's letter."


def process_results(doc, results):
    return {"acc": float(results[0].strip().startswith(doc["answer"]))}
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("eval-images")
    rng = np.random.default_rng(0)
    paths = {}
    for name, (width, height) in {"wide": (900, 300), "tall": (260, 700),
                                  "small": (200, 150)}.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        paths[name] = str(root / f"{name}.png")
        Image.fromarray(pixels).save(paths[name])
    docs = [{"images": [paths["wide"]], "question": "What is shown?", "answer": "A"},
            {"images": [paths["tall"]], "question": "What is shown?", "answer": "B"},
            {"images": [paths["small"], paths["wide"]], "question": "Which differs?",
             "answer": "A"},
            {"images": [], "question": "Which letter comes first?", "answer": "A"}]
    (root / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = root / "tasks" / TASK
    tasks.mkdir(parents=True)
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(data=root / "data.jsonl"))
    (tasks / "utils.py").write_text(TASK_UTILS)
    ckpt = root / "llava-qwen-ov-tiny"
    llava_testkit.write_checkpoint(ckpt, "ov", image_grid_pinpoints=OV_PINPOINTS)
    return {"root": root, "tasks": root / "tasks", "ckpt": ckpt}


def record_generate(lm) -> list:
    """Wrap ``lm.model.generate`` on the instance; returns the list of recorded calls."""
    calls = []
    original = lm.model.generate

    def generate(inputs=None, **kwargs):
        output = original(inputs, **kwargs)
        images = kwargs.get("images")
        calls.append({"ids": inputs.clone(), "images": images,
                      "image_sizes": kwargs.get("image_sizes"), "output": output.clone()})
        return output

    lm.model.generate = generate
    return calls


def run(lm, manager) -> tuple:
    from lmms_eval.evaluator import simple_evaluate

    calls = record_generate(lm)
    results = simple_evaluate(model=lm, tasks=[TASK], batch_size=1, device="cpu",
                              log_samples=True, task_manager=manager)
    answers = {s["doc_id"]: s["resps"] for s in results["samples"][TASK]}
    return calls, answers


@pytest.mark.slow
def test_plugin_answers_image_docs_like_stock_llava_onevision(workspace, monkeypatch):
    import torch
    from lmms_eval.models.simple.llava_onevision import Llava_OneVision
    from lmms_eval.tasks import TaskManager

    from aot_eval import prompts
    from aot_eval.lmms_models import LlavaOneVisionAOT

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    stock = Llava_OneVision(pretrained=str(workspace["ckpt"]), conv_template="qwen_1_5",
                            model_name="llava_qwen", device="cpu", device_map="auto")
    stock_calls, stock_answers = run(stock, TaskManager("WARNING", include_path=str(
        workspace["tasks"]), include_defaults=False, model_name="llava_onevision"))
    ours = LlavaOneVisionAOT(pretrained=str(workspace["ckpt"]), reducer="none",
                             torch_dtype="float16", device="cpu")
    our_calls, our_answers = run(ours, prompts.task_manager(
        "WARNING", include_path=str(workspace["tasks"]), include_defaults=False,
        model_name="llava_onevision_aot"))

    assert len(stock_calls) == len(our_calls) == 4
    assert our_answers == stock_answers
    tiles = []
    def in_doc_order(calls):  # stock sorts requests by context length; we keep task order
        return sorted(calls, key=lambda call: call["ids"][0].tolist())

    for mine, theirs in zip(in_doc_order(our_calls), in_doc_order(stock_calls)):
        assert torch.equal(mine["ids"], theirs["ids"])
        assert torch.equal(mine["output"], theirs["output"])
        assert mine["image_sizes"] == theirs["image_sizes"]
        if theirs["images"] is None:
            assert mine["images"] is None
            continue
        assert mine["images"].dtype == theirs["images"].dtype == torch.float16
        assert torch.equal(mine["images"], theirs["images"])
        tiles.append(tuple(mine["images"].shape))
    # wide 900x300: 3x1 crops; tall 260x700: 1x2; two images: padded squares, no crops
    assert sorted(tiles) == sorted([(1, 4, 3, 384, 384), (1, 3, 3, 384, 384), (2, 3, 384, 384)])


def test_plugin_refuses_images_it_cannot_answer_faithfully(workspace):
    """AOT reduces videos only: an image doc under a reduced run is an error, not an unreduced
    answer under AOT's name; llava_vid has no stock image path to reproduce."""
    from PIL import Image

    from aot_eval.lmms_models import LlavaOneVisionAOT, LlavaVidAOT

    image = Image.new("RGB", (64, 48))
    ours = LlavaOneVisionAOT(pretrained=str(workspace["ckpt"]), reducer="aot", retention=0.1,
                             shallow_layer=0, deep_layer=1,
                             torch_dtype="float32", device="cpu")
    with pytest.raises(NotImplementedError, match="reduce video tokens only.*reducer=none"):
        ours._answer_images("Q", {}, [image], 0, TASK, "test")
    vid = LlavaVidAOT(pretrained=str(workspace["ckpt"]), reducer="none", torch_dtype="float32",
                      device="cpu")
    with pytest.raises(NotImplementedError, match="stock llava_vid has no image path"):
        vid._answer_images("Q", {}, [image], 0, TASK, "test")

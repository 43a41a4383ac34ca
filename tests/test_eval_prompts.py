"""Prompt identity: our model ids get exactly the prompts lmms-eval gives the stock models.

The four paper tasks (mvbench, egoschema, longvideobench_val_v, videomme) are built from
lmms-eval's own YAML configs through its own TaskManager / ConfigurableTask code; only the
dataset download is replaced by a few synthetic docs (the real datasets need the network).
"""

import pytest

# The eval extra is optional: skip (not a collection error) without it; datasets comes with it.
pytest.importorskip("lmms_eval")
datasets = pytest.importorskip("datasets")

from lmms_eval.api.task import ConfigurableTask  # noqa: E402
from lmms_eval.tasks import TaskManager, get_task_dict  # noqa: E402

from aot_eval import prompts  # noqa: E402

TASKS = ["mvbench", "egoschema", "longvideobench_val_v", "videomme"]
TASK_DIRS = ["mvbench", "egoschema", "longvideobench", "videomme"]
STOCK = {"llava_onevision_aot": "llava_onevision", "llava_vid_aot": "llava_vid"}


def fake_docs(task_name: str) -> list[dict]:
    """Three docs with the fields each task's doc_to_text / doc_to_target read."""
    docs = []
    for i in range(3):
        options = [f"option {i}-{k}" for k in range(4)]
        docs.append({
            # mvbench
            "video": f"v{i}.mp4", "question": f"What happens in clip {i}?",
            "candidates": options, "answer": "A",
            # egoschema
            "option": options, "video_idx": f"ego{i}", "q_uid": f"q{i}",
            # longvideobench
            **{f"option{k}": (options[k] if k < 4 else "N/A") for k in range(5)},
            "correct_choice": 0, "video_path": f"lvb{i}.mp4", "subtitle_path": f"s{i}.json",
            "duration_group": 15, "question_category": "E2O", "id": f"lvb{i}",
            # videomme
            "options": [f"{'ABCD'[k]}. {o}" for k, o in enumerate(options)],
            "videoID": f"vid{i}", "duration": "short", "domain": "Knowledge",
            "sub_category": "Humanity", "task_type": "Counting Problem", "question_id": f"{i}-1",
            "video_id": f"{i:03d}", "url": "",
        })
    return docs


def managers(model_name, alias=False):
    """A TaskManager indexing only the four tasks' folders of lmms-eval (full index: ~14 s)."""
    import os

    import lmms_eval

    root = os.path.join(os.path.dirname(lmms_eval.__file__), "tasks")
    kwargs = dict(include_path=[os.path.join(root, d) for d in TASK_DIRS],
                  include_defaults=False, model_name=model_name)
    return prompts.task_manager("ERROR", **kwargs) if alias else TaskManager("ERROR", **kwargs)


@pytest.fixture
def offline_tasks(monkeypatch):
    """Replace ConfigurableTask.download: synthetic docs in the task's own split."""

    def download(self, dataset_kwargs=None):
        split = self.config.test_split or self.config.validation_split
        data = datasets.Dataset.from_list(fake_docs(self.config.task))
        self.dataset = datasets.DatasetDict({split: data})
        self.dataset_no_image = self.dataset

    monkeypatch.setattr(ConfigurableTask, "download", download)


def leaf_tasks(task_dict) -> dict:
    """{task name: task object} of a (possibly grouped) task dict."""
    out = {}
    for key, value in task_dict.items():
        if isinstance(value, dict):
            out.update(leaf_tasks(value))
        elif isinstance(value, tuple):
            if value[1] is not None:
                out[value[1].config.task] = value[1]
        elif value is not None:
            out[value.config.task] = value
    return out


def contexts(manager) -> dict:
    """{(task, doc index): (context, generation kwargs)} for every doc of the four tasks."""
    tasks = leaf_tasks(get_task_dict(TASKS, manager))
    out = {}
    for name, task in tasks.items():
        docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
        for i, doc in enumerate(docs):
            out[(name, i)] = (task.doc_to_text(doc), dict(task.config.generation_kwargs))
    return out


@pytest.mark.parametrize("model_id", sorted(STOCK))
def test_our_ids_get_stock_prompts(offline_tasks, model_id):
    stock = contexts(managers(STOCK[model_id]))
    ours = contexts(managers(model_id, alias=True))
    assert {name for name, _ in stock} >= {"egoschema", "longvideobench_val_v", "videomme",
                                           "mvbench_action_count"}
    assert ours == stock
    assert prompts.alias_active_for(model_id)


def test_plain_task_manager_differs_for_llava_vid(offline_tasks):
    """The check above is sensitive: without the alias, videomme's llava_vid prompt is lost."""
    stock = contexts(managers("llava_vid"))
    plain = contexts(managers("llava_vid_aot"))
    differing = {name for key, value in stock.items() if plain[key] != value for name in [key[0]]}
    assert differing == {"videomme"}
    assert stock[("videomme", 0)][0].endswith("The best answer is:")


def test_alias_leaves_other_ids_alone():
    assert prompts.prompt_name_for("llava_vid") == "llava_vid"
    assert prompts.prompt_name_for("llava_onevision") == "llava_onevision"
    assert prompts.prompt_name_for("qwen2_vl") == "qwen2_vl"
    assert prompts.prompt_name_for("llava_vid_aot") == "llava_vid"


def test_manifests_use_new_ids_only():
    from aot_eval.manifests import manifests

    ids = {m.model_id for m in manifests()}
    assert ids == {"llava_onevision_aot", "llava_vid_aot", "qwen2_5_vl_aot", "qwen3_vl_aot",
                   "llava_hf_aot"}
    assert not any(m.aliases for m in manifests())
    assert set(prompts.prompt_ids()) == ids


def test_require_stock_prompts_refuses_without_alias():
    prompts._mark_active(None, None)
    with pytest.raises(RuntimeError, match="python -m aot_eval"):
        prompts.require_stock_prompts("llava_vid_aot")

"""End to end through lmms-eval on CPU: tiny lmms-lab checkpoint, a local task over real mp4s.

Runs ``python -m aot_eval`` (lmms-eval's CLI with our prompt alias) as a subprocess, like the
scripts do, and checks the files it leaves: lmms-eval's results and samples, and our retention
record. The task lives in a temporary folder given with ``--include_path``; its JSON dataset
points at short H.264 videos written with PyAV in the test. The tiny tower has 3 layers, so the
AOT layer knobs are set explicitly (shallow_layer=0, deep_layer=1).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("decord")
av = pytest.importorskip("av")
np = pytest.importorskip("numpy")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "llava"))
llava_testkit = pytest.importorskip("llava_testkit")
from media import write_mp4  # noqa: E402

DOCS = 4
FRAMES = 4
TASK = "aot_tinyvid"
OV_POST = "Answer with the option's letter."
VID_POST = "The best answer is:"
KNOBS = "shallow_layer=0,deep_layer=1"

TASK_YAML = """task: aot_tinyvid
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
lmms_eval_specific_kwargs:
  default:
    post_prompt: "{ov_post}"
  llava_vid:
    post_prompt: "{vid_post}"
"""

TASK_UTILS = '''
def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    post = (lmms_eval_specific_kwargs or {}).get("post_prompt", "")
    return doc["question"] + "\\n(A) red\\n(B) blue\\n" + post


def process_results(doc, results):
    return {"acc": float(results[0].strip().startswith(doc["answer"]))}
'''


def write_video(path: Path, seed: int, seconds: float = 2.0, fps: int = 8) -> None:
    """A short H.264 clip: a coloured square moving over a noisy background."""
    rng = np.random.default_rng(seed)

    def frame(i: int) -> np.ndarray:
        image = rng.integers(0, 60, (64, 96, 3), dtype=np.uint8)
        x = (i * 6 + seed * 10) % 70
        image[20:44, x:x + 24] = [200, 40 * seed % 255, 90]
        return image

    write_mp4(path, (frame(i) for i in range(int(seconds * fps))), rate=fps)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Checkpoints, videos, dataset and task folder shared by the tests of this module."""
    root = tmp_path_factory.mktemp("eval-e2e")
    videos = root / "videos"
    videos.mkdir()
    rows = []
    for i in range(DOCS):
        write_video(videos / f"clip{i}.mp4", seed=i)
        rows.append({"id": i, "video": str(videos / f"clip{i}.mp4"),
                     "question": f"What colour is the square in clip {i}?", "answer": "AB"[i % 2]})
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = root / "tasks" / TASK
    tasks.mkdir(parents=True)
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(data=data, ov_post=OV_POST,
                                                         vid_post=VID_POST))
    (tasks / "utils.py").write_text(TASK_UTILS)
    ckpt = {"ov": root / "llava-qwen-ov-tiny", "video": root / "llava-qwen-video-tiny"}
    llava_testkit.write_checkpoint(ckpt["ov"], "ov")
    llava_testkit.write_checkpoint(ckpt["video"], "video", seed=1)
    return {"root": root, "tasks": root / "tasks", "ckpt": ckpt}


def environment() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    env["HF_DATASETS_CACHE"] = str(Path(env.get("TMPDIR", "/tmp")) / "aot-eval-test-datasets")
    return env


def outputs(out: Path) -> dict:
    """The results, samples and retention record one run left under ``out``."""
    results = sorted(out.rglob("*_results.json"))
    assert len(results) == 1, f"expected one results file under {out}: {results}"
    stem = results[0].name[: -len("_results.json")]
    samples = sorted(results[0].parent.glob(f"{stem}_samples_{TASK}.jsonl"))
    retention = results[0].with_name(f"{stem}_aot_retention.json")
    assert samples, f"no samples file beside {results[0]}"
    assert retention.exists(), f"no retention record beside {results[0]}"
    return {"results": json.loads(results[0].read_text()),
            "samples": [json.loads(line) for line in samples[0].read_text().splitlines()],
            "retention": json.loads(retention.read_text())}


def base_args(ws, backbone: str) -> str:
    return (f"pretrained={ws['ckpt'][backbone]},torch_dtype=float32,attn_implementation=sdpa,"
            f"max_frames_num={FRAMES}")


def context_of(sample: dict) -> str:
    """The prompt text lmms-eval built for a sample (file: ``input``; in memory: ``arguments``)."""
    if "input" in sample:
        return sample["input"]
    args = sample["arguments"]
    while isinstance(args, (list, tuple)):
        args = args[0]
    return args


def check_common(results: dict, samples: list, retention: dict, post_prompt: str) -> None:
    """Every doc answered, the task's prompt variant used, every video measured."""
    assert "acc,none" in results["results"][TASK]
    assert sorted(s["doc_id"] for s in samples) == list(range(DOCS))
    for sample in samples:
        answer = sample["filtered_resps"]
        assert isinstance(answer[0] if isinstance(answer, list) else answer, str)
        assert context_of(sample).endswith(post_prompt), context_of(sample)
    records = retention["samples"]
    assert sorted(r["doc_id"] for r in records) == list(range(DOCS))
    assert all(r["retention"] is not None and "error" not in r for r in records)


def check_exact(retention: dict) -> None:
    """AOT exact mode at 0.25: every video gets floor(0.25 * frames * 196 + 0.5) tokens."""
    budget = math.floor(0.25 * FRAMES * 196 + 0.5)
    for record in retention["samples"]:
        assert record["frames"] == FRAMES and record["denominator"] == FRAMES * 196
        assert record["kept_tokens"] == budget, record
        assert record["newline_tokens"] == 1
    summary = retention["summary"]["overall"]
    assert summary["min"] == summary["max"] == pytest.approx(budget / (FRAMES * 196))
    assert retention["reducer"] == "aot" and retention["requested_retention"] == 0.25


def free_port() -> int:
    """A TCP port nothing listens on now (so a busy CI machine cannot collide with torchrun)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(ws, out: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    """``scripts/eval_ov_mvbench.sh`` on the local task: OV, AOT at 0.25 in exact mode."""
    cmd = ["bash", str(REPO / "scripts" / "eval_ov_mvbench.sh"), "--model", str(ws["ckpt"]["ov"]),
           "--task", TASK, "--include-path", str(ws["tasks"]), "--retention", "0.25", "--exact",
           "--frames", str(FRAMES), "--dtype", "float32", "--device", "cpu",
           "--model-args", KNOBS, "--nproc", str(nproc), "--output", str(out)]
    env = {**environment(), "PYTHON": sys.executable, "MASTER_PORT": str(free_port())}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def script_aot_run(workspace):
    """One run of the MVBench script (single process), reused by the torchrun test."""
    out = workspace["root"] / "script-aot"
    return run_script(workspace, out), outputs(out)


@pytest.mark.slow
def test_script_ov_aot_exact(script_aot_run):
    """Script -> python -m aot_eval -> lmms-eval CLI: results, samples, retention files."""
    proc, got = script_aot_run
    assert "[aot_eval] results:" in proc.stdout and "[eval] retention:" in proc.stdout
    assert "[eval] measured retention: mean 25.00%" in proc.stdout
    check_common(got["results"], got["samples"], got["retention"], OV_POST)
    check_exact(got["retention"])
    assert got["retention"]["prompt_model"] == "llava_onevision"


def evaluate_in_process(ws, model_id: str, model_args: str, log_dir: Path):
    """``simple_evaluate`` with our TaskManager (the documented programmatic route)."""
    from lmms_eval.evaluator import simple_evaluate

    from aot_eval import manifests, prompts

    manifests.register()
    manager = prompts.task_manager("WARNING", include_path=str(ws["tasks"]),
                                   include_defaults=False, model_name=model_id)
    results = simple_evaluate(model=model_id, model_args=model_args + f",retention_log={log_dir}",
                              tasks=[TASK], batch_size=1, device="cpu", log_samples=True,
                              task_manager=manager)
    records = sorted(log_dir.glob(f"aot_retention_{model_id}_*.json"))
    assert len(records) == 1, records
    return results, results["samples"][TASK], json.loads(records[0].read_text())


def test_ov_unreduced_measures_full_retention(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    results, samples, retention = evaluate_in_process(
        workspace, "llava_onevision_aot", base_args(workspace, "ov") + ",reducer=none", tmp_path)
    check_common(results, samples, retention, OV_POST)
    for record in retention["samples"]:
        assert record["retention"] == 1.0 and record["visual_tokens"] == FRAMES * 196 + 1
    assert retention["aot_config"] is None and retention["reducer"] == "none"


def test_llava_vid_gets_its_stock_prompt(workspace, tmp_path, monkeypatch):
    """llava_vid_aot: the task's llava_vid prompt variant, 1-fps frames, row newlines excluded."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    results, samples, retention = evaluate_in_process(
        workspace, "llava_vid_aot",
        base_args(workspace, "video") + f",preset=paper-video,{KNOBS}", tmp_path)
    check_common(results, samples, retention, VID_POST)
    for record in retention["samples"]:
        assert record["frames"] == 2  # 2-second clips at 1 fps
        assert record["denominator"] == 2 * 169
        assert 0 < record["retention"] < 1
    assert retention["prompt_model"] == "llava_vid"


@pytest.mark.slow
def test_torchrun_two_processes_match_one(workspace, script_aot_run, tmp_path):
    """Two CPU processes (the script's torchrun launch, gloo) give the same results as one."""
    _, one = script_aot_run
    proc = run_script(workspace, tmp_path / "two", nproc=2)
    assert "torch.distributed.run --nproc_per_node 2" in proc.stdout
    two = outputs(tmp_path / "two")
    answers = lambda got: {s["doc_id"]: s["filtered_resps"] for s in got["samples"]}  # noqa: E731
    assert answers(one) == answers(two)
    assert one["results"]["results"][TASK]["acc,none"] == two["results"]["results"][TASK]["acc,none"]
    assert one["retention"]["samples"] == two["retention"]["samples"]
    assert two["retention"]["world_size"] == 2 and one["retention"]["world_size"] == 1


def test_plain_task_manager_refused_unless_prompt_as_own(workspace, tmp_path, monkeypatch):
    """Under lmms-eval's own TaskManager (plain CLI) the model refuses to run with the wrong
    prompt variants; prompt_as=own opts in and records it."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from aot_eval import manifests, prompts

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    manifests.register()
    prompts._mark_active(None, None)  # a fresh process: no alias TaskManager built yet
    args = base_args(workspace, "video") + f",preset=paper-video,{KNOBS},retention_log={tmp_path}"

    def plain(model_args):
        manager = TaskManager("WARNING", include_path=str(workspace["tasks"]),
                              include_defaults=False, model_name="llava_vid_aot")
        return simple_evaluate(model="llava_vid_aot", model_args=model_args, tasks=[TASK],
                               batch_size=1, device="cpu", log_samples=True,
                               task_manager=manager)

    with pytest.raises(RuntimeError, match="prompt_as=own"):
        plain(args)
    results = plain(args + ",prompt_as=own")
    samples = results["samples"][TASK]
    assert all(context_of(s).endswith(OV_POST) for s in samples)  # the task's default variant
    record = json.loads(sorted(tmp_path.glob("aot_retention_llava_vid_aot_*.json"))[-1].read_text())
    assert record["prompt_model"] == "llava_vid_aot"


@pytest.mark.parametrize("reducer", ["uniform", "visionzip", "dycoke"])
def test_baseline_reducers_run_at_the_exact_budget(workspace, tmp_path, monkeypatch, reducer):
    """reducer=<baseline> with retention=: every video gets exactly AOT-exact's count."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    results, samples, retention = evaluate_in_process(
        workspace, "llava_onevision_aot",
        base_args(workspace, "ov") + f",reducer={reducer},retention=0.25,{KNOBS}", tmp_path)
    check_common(results, samples, retention, OV_POST)
    assert retention["reducer"] == reducer
    for record in retention["samples"]:
        assert record["retention"] == 0.25 and record["visual_tokens"] == FRAMES * 49 + 1


def test_reducer_options_reach_the_model_and_the_record(workspace, tmp_path, monkeypatch):
    """``reducer.<option>`` model_args pass lmms-eval's parsing into the model; the record lists
    every option that ran (defaults included) and the count is still the exact budget."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    results, samples, retention = evaluate_in_process(
        workspace, "llava_onevision_aot", base_args(workspace, "ov") +
        f",reducer=dycoke-ttm,retention=0.25,reducer.merging_ratio=0.5,{KNOBS}", tmp_path)
    check_common(results, samples, retention, OV_POST)
    assert retention["reducer"] == "dycoke-ttm"
    assert retention["reducer_options"] == {"count": "exact", "merging_ratio": 0.5}
    assert "reducer.merging_ratio=0.5" in retention["source"]
    for record in retention["samples"]:
        assert record["visual_tokens"] == FRAMES * 49 + 1


# ---------------------------------------------------------------- identity with the stock models
# Stock lmms-eval `llava_onevision` / `llava_vid` run on this project's `llava` package, and our
# plugin with reducer=none must build the same prompts, pixels and generation arguments and give
# the same answers, doc by doc. The task's name contains "mvbench" (stock llava_vid reads frame
# folders only then); its docs: short mp4s, an 8 s clip at 29.97 fps (stock time stamps differ
# from true times there) and a folder of jpgs written in shuffled order (MVBench
# episodic_reasoning's layout). The LLaVA-Video checkpoint ships generation_config.json.
STOCK_TASK = "aot_tinymvbench"
STOCK_YAML = TASK_YAML.replace("task: aot_tinyvid", f"task: {STOCK_TASK}").replace(
    "max_new_tokens: 4", "max_new_tokens: 12")
OV_FRAMES, VID_FRAMES = 4, 8


def write_frame_folder(folder: Path, count: int = 20) -> None:
    """``count`` jpgs frame_000.jpg..., created in shuffled order (so directory order may differ
    from name order, as on a real file system)."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in rng.permutation(count).tolist():
        image = rng.integers(0, 80, (64, 96, 3), dtype=np.uint8)
        image[10:40, (i * 3) % 70:(i * 3) % 70 + 20] = [30, 220, 60]
        Image.fromarray(image).save(folder / f"frame_{i:03d}.jpg", quality=95)


def write_ntsc_clip(path: Path, seconds: int = 8) -> None:
    """A clip at 30000/1001 fps (stock llava_vid stamps frame i as i / 30, not i / 29.97)."""
    from fractions import Fraction

    rng = np.random.default_rng(11)

    def frame(i: int) -> np.ndarray:
        image = rng.integers(0, 60, (64, 96, 3), dtype=np.uint8)
        image[20:44, (i // 10) % 70:(i // 10) % 70 + 24] = [90, 90, 220]
        return image

    write_mp4(path, (frame(i) for i in range(int(seconds * 30000 / 1001))),
              rate=Fraction(30000, 1001))


@pytest.fixture(scope="module")
def stock_workspace(workspace):
    root = workspace["root"] / "stock"
    (root / "videos").mkdir(parents=True)
    rows = []
    for i in range(2):
        write_video(root / "videos" / f"clip{i}.mp4", seed=i + 5)
        rows.append(str(root / "videos" / f"clip{i}.mp4"))
    write_ntsc_clip(root / "videos" / "ntsc.mp4")
    rows.append(str(root / "videos" / "ntsc.mp4"))
    write_frame_folder(root / "videos" / "tvqa_frames")
    rows.append(str(root / "videos" / "tvqa_frames"))
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"id": i, "video": video, "answer": "AB"[i % 2],
                                        "question": f"What colour is the square in video {i}?"})
                            + "\n" for i, video in enumerate(rows)))
    tasks = root / "tasks" / STOCK_TASK
    tasks.mkdir(parents=True)
    (tasks / f"{STOCK_TASK}.yaml").write_text(STOCK_YAML.format(data=data, ov_post=OV_POST,
                                                                vid_post=VID_POST))
    (tasks / "utils.py").write_text(TASK_UTILS)
    ckpt = root / "llava-qwen-video-genconf"
    from aot_integrations.tiny import VIDEO_GENERATION_CONFIG

    llava_testkit.write_checkpoint(ckpt, "video", seed=2, generation_config=VIDEO_GENERATION_CONFIG)
    return {"root": root, "tasks": root / "tasks", "docs": len(rows),
            "ckpt": {"ov": workspace["ckpt"]["ov"], "video": ckpt}}


@pytest.fixture
def generate_log(monkeypatch):
    """Every ``generate`` call of the llava model, per batch row: prompt ids (padding removed),
    the pixels' shape and digest, the plain generation arguments and the new tokens."""
    import hashlib

    import torch

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.model import LlavaQwenForCausalLM

    log = []
    original = LlavaQwenForCausalLM.generate

    def logged(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        ids = args[0] if args else kwargs["inputs"]
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        videos = iter(kwargs.get("images") or [])
        plain = {k: v for k, v in kwargs.items() if k != "modalities"  # "video" or ["video"]
                 and (isinstance(v, (bool, int, float, str)) or v is None)}
        for row, keep, new in zip(ids, mask.bool(), output):
            row = row[keep].tolist()
            pixels = next(videos) if IMAGE_TOKEN_INDEX in row else None
            digest = None if pixels is None else (
                tuple(pixels.shape), str(pixels.dtype),
                hashlib.sha1(pixels.float().cpu().numpy().tobytes()).hexdigest())
            log.append({"prompt": tuple(row), "pixels": digest, "kwargs": plain,
                        "answer": [t for t in new.tolist() if t != plain.get("pad_token_id")]})
        return output

    monkeypatch.setattr(LlavaQwenForCausalLM, "generate", logged)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # stock needs device_map=auto
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return log


def task_manager_for(ws: dict, model_id: str):
    """The local tasks' TaskManager: ours (``*_aot``, registered, prompts aliased to the stock
    model's) or the stock one."""
    from lmms_eval.tasks import TaskManager

    from aot_eval import manifests, prompts

    if model_id.endswith("_aot"):
        manifests.register()
        return prompts.task_manager("WARNING", include_path=str(ws["tasks"]),
                                    include_defaults=False, model_name=model_id)
    return TaskManager("WARNING", include_path=str(ws["tasks"]), include_defaults=False,
                       model_name=model_id)


def evaluate_stock(ws, model_id: str, model_args: str, log: list, **kwargs) -> dict:
    """One evaluation (stock or ours); returns {doc_id: answer} and the generate calls by
    prompt, and empties ``log``."""
    from lmms_eval.evaluator import simple_evaluate

    manager = task_manager_for(ws, model_id)
    results = simple_evaluate(model=model_id, model_args=model_args, tasks=[STOCK_TASK],
                              device="cpu", log_samples=True, task_manager=manager,
                              batch_size=kwargs.pop("batch_size", 1), **kwargs)
    answers = {s["doc_id"]: s["filtered_resps"] for s in results["samples"][STOCK_TASK]}
    calls = {call["prompt"]: call for call in log}
    assert len(calls) == len(log), "two generate calls with the same prompt"
    log.clear()
    return {"answers": answers, "calls": calls}


def assert_same_calls(ours: dict, stock: dict) -> None:
    """Same prompts; per prompt the same pixels, generation arguments and new tokens."""
    assert sorted(ours) == sorted(stock), "the prompts differ"
    for prompt, call in stock.items():
        for field in ("pixels", "kwargs", "answer"):
            assert ours[prompt][field] == call[field], (field, ours[prompt][field], call[field])


def stock_args(ws, backbone: str) -> str:
    if backbone == "ov":
        return (f"pretrained={ws['ckpt']['ov']},conv_template=qwen_1_5,model_name=llava_qwen,"
                f"device_map=auto,max_frames_num={OV_FRAMES}")
    return (f"pretrained={ws['ckpt']['video']},conv_template=qwen_1_5,device_map=auto,"
            f"max_frames_num={VID_FRAMES},add_time_instruction=true")


def our_args(ws, backbone: str, tmp_path: Path) -> str:
    frames = OV_FRAMES if backbone == "ov" else VID_FRAMES
    extra = "" if backbone == "ov" else ",add_time_instruction=true"
    return (f"pretrained={ws['ckpt'][backbone]},conv_template=qwen_1_5,max_frames_num={frames},"
            f"torch_dtype=float16,reducer=none,retention_log={tmp_path}{extra}")


def folder_call(run: dict, ws) -> dict:
    """The generate call of the frame-folder doc (its question names video 3)."""
    from llava.model.builder import load_pretrained_model  # noqa: F401  (tokenizer below)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ws["ckpt"]["ov"])
    hits = [c for p, c in run["calls"].items()
            if "video 3?" in tok.decode([t for t in p if t >= 0])]
    assert len(hits) == 1
    return hits[0]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["ov", "video"])
def test_stock_models_and_ours_identical(stock_workspace, generate_log, tmp_path, backbone):
    """Prompts, pixels, generation arguments and answers identical to the stock wrapper, doc by
    doc (mp4s, a 29.97 fps clip with time stamps, a frame folder; generation_config.json);
    then batch_size=2 with frame_folders=sorted: the same answers elsewhere, frames for the
    folder, both recorded."""
    ws = stock_workspace
    stock_id = "llava_onevision" if backbone == "ov" else "llava_vid"
    ours_id = stock_id + "_aot"
    stock = evaluate_stock(ws, stock_id, stock_args(ws, backbone), generate_log)
    ours = evaluate_stock(ws, ours_id, our_args(ws, backbone, tmp_path), generate_log)
    assert sorted(stock["answers"]) == list(range(ws["docs"]))
    assert ours["answers"] == stock["answers"]
    assert_same_calls(ours["calls"], stock["calls"])
    assert any(call["answer"] for call in stock["calls"].values())  # something was generated

    folder = folder_call(stock, ws)
    if backbone == "ov":  # stock cannot decode the folder: question without <image>
        assert folder["pixels"] is None and -200 not in folder["prompt"]
    else:  # stock reads it (task name has "mvbench"), 8 of 20 files in directory order
        assert folder["pixels"][0] == (VID_FRAMES, 3, 384, 384)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(ws["ckpt"]["video"])
        texts = [tok.decode([t for t in p if t >= 0]) for p in stock["calls"]]
        assert any("These frames are located at 0.00s,1.00s," in t and "6.00s,7.00s." in t
                   for t in texts), texts  # i / round(29.97): 210 / 30 = 7.00 (true 7.01)

    # --batch_size 2 with the frame folder read in name order: the other docs' answers stay
    # (batched answers equal one-at-a-time ones), the folder doc gets its frames.
    option = evaluate_stock(ws, ours_id, our_args(ws, backbone, tmp_path)
                            + ",frame_folders=sorted", generate_log, batch_size=2)
    folder_doc = ws["docs"] - 1
    assert {k: v for k, v in option["answers"].items() if k != folder_doc} == \
        {k: v for k, v in stock["answers"].items() if k != folder_doc}
    sorted_folder = folder_call(option, ws)
    assert sorted_folder["pixels"][0][0] == (OV_FRAMES if backbone == "ov" else VID_FRAMES)
    records = sorted(tmp_path.glob(f"aot_retention_{ours_id}_*.json"))
    written = {(r["frame_folders"], r["batch_size"]): r
               for r in (json.loads(p.read_text()) for p in records)}
    assert sorted(written) == [("sorted", 2), ("stock", 1)]
    tokens = {mode: {s["doc_id"]: s["visual_tokens"] for s in r["samples"]}
              for mode, r in written.items()}  # counted per row of a batch
    assert tokens[("sorted", 2)].pop(folder_doc) is not None
    assert tokens[("sorted", 2)] == {k: v for k, v in tokens[("stock", 1)].items()
                                     if k != folder_doc}
    assert all(v for v in tokens[("sorted", 2)].values())

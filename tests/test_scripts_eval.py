"""The evaluation scripts' argument handling and the summariser; no lmms-eval needed."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
BENCH_TASKS = {"mvbench": "mvbench", "egoschema": "egoschema",
               "longvideobench": "longvideobench_val_v", "videomme": "videomme"}


def run(args, env=None) -> subprocess.CompletedProcess:
    # The scripts' Python: this interpreter (a checkout without .venv would fall back to `python`).
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=60)


def command_of(proc) -> str:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[eval] command: ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return lines[0][len("[eval] command: "):]


def model_args_of(command: str) -> dict:
    parts = command.split()
    text = parts[parts.index("--model_args") + 1]
    return dict(item.split("=", 1) for item in text.split(","))


@pytest.mark.parametrize("backbone", ["ov", "vid"])
@pytest.mark.parametrize("bench", [b if b == "mvbench" else pytest.param(b, marks=pytest.mark.slow)
                                   for b in sorted(BENCH_TASKS)])
def test_retention_maps_to_model_args(backbone, bench):
    proc = run([SCRIPTS / f"eval_{backbone}_{bench}.sh", "--retention", "0.10", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    command = command_of(proc)
    parts = command.split()
    assert Path(parts[0]).name.startswith("python") and parts[1:3] == ["-m", "aot_eval"]
    assert parts[parts.index("--model") + 1] == ("llava_onevision_aot" if backbone == "ov"
                                                 else "llava_vid_aot")
    assert parts[parts.index("--tasks") + 1] == BENCH_TASKS[bench]
    assert parts[parts.index("--batch_size") + 1] == "1"
    assert "--log_samples" in parts
    args = model_args_of(command)
    assert args["retention"] == "0.10" and args["reducer"] == "aot"
    assert args["conv_template"] == "qwen_1_5"
    assert args["max_frames_num"] == ("32" if backbone == "ov" else "64")
    assert args["pretrained"] == ("lmms-lab/llava-onevision-qwen2-7b-ov" if backbone == "ov"
                                  else "lmms-lab/LLaVA-Video-7B-Qwen2")
    assert "preset" not in args
    out = parts[parts.index("--output_path") + 1]
    expected = "ov" if backbone == "ov" else "video"
    assert out == f"outputs/eval/{expected}/{bench}/aot_r0.10"


@pytest.mark.parametrize("value", [pytest.param("0.15", marks=pytest.mark.slow),
                                   pytest.param("0.2", marks=pytest.mark.slow), ".25",
                                   pytest.param("0.5", marks=pytest.mark.slow), "1"])
def test_good_retentions(value):
    proc = run([SCRIPTS / "eval_ov_mvbench.sh", "--retention", value, "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert model_args_of(command_of(proc))["retention"] == value


@pytest.mark.parametrize("value", [pytest.param("0", marks=pytest.mark.slow),
                                   pytest.param("1.5", marks=pytest.mark.slow),
                                   pytest.param("-0.1", marks=pytest.mark.slow), "abc", "",
                                   pytest.param("0.1.2", marks=pytest.mark.slow),
                                   pytest.param("10%", marks=pytest.mark.slow)])
def test_bad_retentions_rejected(value):
    proc = run([SCRIPTS / "eval_ov_mvbench.sh", "--retention", value, "--dry-run"])
    assert proc.returncode == 2
    assert "retention" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "[eval] command" not in proc.stdout


@pytest.mark.parametrize("args, message", [
    ([], "give --retention"),
    pytest.param(["--retention", "0.1", "--preset", "paper-video"], "not both",
                 marks=pytest.mark.slow),
    pytest.param(["--reducer", "none", "--retention", "0.1"], "unreduced",
                 marks=pytest.mark.slow),
    (["--reducer", "bogus", "--retention", "0.1"], "unknown reducer"),
    (["--reducer", "uniform"], "needs --retention"),
    pytest.param(["--preset", "paper-ov-mvbench", "--exact"], "exact=true needs retention",
                 marks=pytest.mark.slow),
    (["--preset", "paper-ov-mvbenhc"], "unknown preset='paper-ov-mvbenhc'"),
    pytest.param(["--retention", "0.1", "--ablation", "no-locla"],
                 "unknown ablation='no-locla'", marks=pytest.mark.slow),
    pytest.param(["--reducer", "aot:no-locla", "--retention", "0.1"],
                 "unknown reducer='aot:no-locla'", marks=pytest.mark.slow),
    (["--retention", "0.1", "--frames", "0"], "--frames"),
    (["--retention", "0.1", "--nproc", "two"], "--nproc"),
    (["--retention", "0.1", "--limit", "-3"], "--limit"),
    (["--retention", "0.1", "--launcher", "mpirun"], "unknown launcher"),
    (["--retention", "0.1", "--dtype", "int8"], "unknown dtype"),
    (["--retention", "0.1", "--frobnicate"], "unknown option"),
    pytest.param(["--retention"], "retention=", marks=pytest.mark.slow),
])
def test_bad_arguments_rejected(args, message):
    proc = run([SCRIPTS / "eval_ov_videomme.sh", *args, "--dry-run"])
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr


def test_preset_full_and_options():
    preset = model_args_of(command_of(run([SCRIPTS / "eval_ov_videomme.sh", "--preset",
                                           "paper-ov-videomme", "--dry-run"])))
    assert preset["preset"] == "paper-ov-videomme" and "retention" not in preset
    full = model_args_of(command_of(run([SCRIPTS / "eval_vid_mvbench.sh", "--reducer", "none",
                                         "--dry-run"])))
    assert full["reducer"] == "none" and "retention" not in full and "preset" not in full
    proc = run([SCRIPTS / "eval_ov_mvbench.sh", "--retention", "0.2", "--exact", "--ablation",
                "no-inter", "--frames", "16", "--model", "/ckpt/ov", "--dtype", "bfloat16",
                "--model-args", "sigma=2.0", "--limit", "8", "--output", "x/y", "--dry-run"])
    command = command_of(proc)
    args = model_args_of(command)
    assert args["exact"] == "true" and args["ablation"] == "no-inter"
    assert args["max_frames_num"] == "16" and args["pretrained"] == "/ckpt/ov"
    assert args["torch_dtype"] == "bfloat16" and args["sigma"] == "2.0"
    assert "--limit 8" in command and "--output_path x/y" in command


@pytest.mark.slow
def test_multi_process_launchers():
    torchrun = command_of(run([SCRIPTS / "eval_ov_mvbench.sh", "--retention", "0.1", "--nproc",
                               "4", "--dry-run"], env={"MASTER_PORT": "29999"}))
    assert torchrun.split(" ", 1)[1].startswith("-m torch.distributed.run --nproc_per_node 4 ")
    assert "--master_port 29999" in torchrun and " -m aot_eval " in torchrun
    accel = command_of(run([SCRIPTS / "eval_ov_mvbench.sh", "--retention", "0.1", "--nproc", "4",
                            "--launcher", "accelerate", "--dry-run"]))
    assert accel.split(" ", 1)[1].startswith("-m accelerate.commands.launch --num_processes 4 ")


@pytest.mark.slow  # a sweep: many script dry runs
def test_sweep_dry_run_covers_the_table():
    proc = run([SCRIPTS / "sweep.sh", "--backbone", "ov", "--output", "out", "--dry-run", "--",
                "--nproc", "2"])
    assert proc.returncode == 0, proc.stderr
    commands = [line for line in proc.stdout.splitlines() if line.startswith("[eval] command")]
    assert len(commands) == 4 * 5  # 4 benchmarks x (full + 4 retentions)
    assert all("--nproc_per_node 2" in c for c in commands)
    assert sum("reducer=none" in c for c in commands) == 4
    assert run([SCRIPTS / "sweep.sh", "--backbone", "xx"]).returncode == 2


@pytest.mark.slow
def test_sbatch_array_index_mapping():
    env = {"DRY_RUN": "1", "BACKBONE": "video", "RETENTIONS": "full 0.25 0.15",
           "BENCHMARKS": "mvbench videomme", "OUTPUT": "tbl"}
    seen = []
    for index in range(6):
        proc = run([SCRIPTS / "slurm" / "eval_array.sbatch"],
                   env={**env, "SLURM_ARRAY_TASK_ID": str(index)})
        assert proc.returncode == 0, proc.stderr
        command = command_of(proc)
        args = model_args_of(command)
        task = command.split()[command.split().index("--tasks") + 1]
        seen.append((args.get("retention", "full"), task))
    assert seen == [("full", "mvbench"), ("full", "videomme"), ("0.25", "mvbench"),
                    ("0.25", "videomme"), ("0.15", "mvbench"), ("0.15", "videomme")]
    bad = run([SCRIPTS / "slurm" / "eval_array.sbatch"], env={**env, "SLURM_ARRAY_TASK_ID": "6"})
    assert bad.returncode == 2 and "out of range" in bad.stderr
    submit = run([SCRIPTS / "slurm" / "submit_table.sh", "--backbone", "ov", "--dry-run"])
    assert submit.returncode == 0 and "--array=0-19" in submit.stdout


# ------------------------------------------------------------------ the transformers backbones
# backbone -> (our lmms-eval model, the stock class's file and name, checkpoint, frames key)
HF_SCRIPTS = {
    "qwen2_5_vl": ("qwen2_5_vl_aot", "qwen2_5_vl.py", "Qwen2_5_VL", "Qwen/Qwen2.5-VL-7B-Instruct",
                   "max_num_frames"),
    "qwen3_vl": ("qwen3_vl_aot", "qwen3_vl.py", "Qwen3_VL", "Qwen/Qwen3-VL-8B-Instruct",
                 "max_num_frames"),
    "llava_hf": ("llava_hf_aot", "llava_hf.py", "LlavaHf",
                 "llava-hf/llava-onevision-qwen2-7b-ov-hf", "max_frames_num"),
}
AOT_KEYS = {"reducer", "retention", "preset", "exact", "ablation"}
# The script logic alone, without the reducer-argument check (that is the parser's, tested with
# preflight below): what sweep.sh sets once it has checked the arguments itself.
CHECKED = {"AOT_EVAL_ARGS_CHECKED": "1"}


def stock_init_defaults(filename: str, class_name: str) -> dict:
    """{argument: default} of a stock lmms-eval model's ``__init__``, read from its source (no
    import: the stock modules import decord, qwen_vl_utils, ...)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("lmms_eval")
    if spec is None:
        pytest.skip("lmms-eval is not installed")
    path = Path(spec.submodule_search_locations[0]) / "models" / "simple" / filename
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    names = [a.arg for a in init.args.args[1:]]
    defaults = [literal_or_source(d) for d in init.args.defaults]
    return dict(zip(names[len(names) - len(defaults):], defaults))


def literal_or_source(node):
    """A default's value when it is a literal, else its source text (e.g. ``256 * 28 * 28``)."""
    import ast

    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


@pytest.mark.parametrize("backbone", sorted(HF_SCRIPTS))
@pytest.mark.parametrize("bench", sorted(BENCH_TASKS))
def test_hf_backbone_scripts_pass_stock_keys_and_defaults(backbone, bench):
    """Every model_args key is the stock class's own argument (or an AOT key), with the stock
    default for frames and pixels: the scripts run the stock protocol plus the reducer."""
    model_id, filename, class_name, checkpoint, frames_key = HF_SCRIPTS[backbone]
    proc = run([SCRIPTS / f"eval_{backbone}_{bench}.sh", "--retention", "0.10", "--dry-run"],
               env=CHECKED)
    assert proc.returncode == 0, proc.stderr
    command = command_of(proc)
    parts = command.split()
    assert parts[1:3] == ["-m", "aot_eval"]
    assert parts[parts.index("--model") + 1] == model_id
    assert parts[parts.index("--tasks") + 1] == BENCH_TASKS[bench]
    assert parts[parts.index("--batch_size") + 1] == "1"
    assert parts[parts.index("--output_path") + 1] == f"outputs/eval/{backbone}/{bench}/aot_r0.10"
    args = model_args_of(command)
    stock = stock_init_defaults(filename, class_name)
    assert set(args) - AOT_KEYS <= set(stock), set(args) - AOT_KEYS - set(stock)
    assert args["pretrained"] == checkpoint
    assert args[frames_key] == str(stock[frames_key]) == "32"
    assert args["attn_implementation"] == "sdpa"
    assert args["reducer"] == "aot" and args["retention"] == "0.10"
    if backbone == "llava_hf":  # the processor resizes to 384x384; dtype: stock "auto"
        assert set(args) == {"pretrained", frames_key, "attn_implementation", "reducer",
                             "retention"}
    else:  # stock qwen classes load bfloat16 whatever they are given: no dtype key
        assert args["max_pixels"] == str(stock["max_pixels"]) == "1605632"
        assert set(args) == {"pretrained", frames_key, "max_pixels", "attn_implementation",
                             "reducer", "retention"}


def test_every_backbone_has_its_four_scripts():
    """eval_common.sh's backbone list, name prefixes and the script files agree."""
    listing = subprocess.run(
        ["bash", "-c", f'. "{SCRIPTS}/eval_common.sh"; for b in $AOT_EVAL_BACKBONES; do '
                       'echo "$b $(aot_eval_script_prefix "$b")"; done'],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHON": sys.executable}).stdout.split("\n")
    pairs = [line.split() for line in listing if line]
    assert [b for b, _ in pairs] == ["ov", "video", "qwen2_5_vl", "qwen3_vl", "llava_hf"]
    for backbone, prefix in pairs:
        for bench in BENCH_TASKS:
            script = SCRIPTS / f"eval_{prefix}_{bench}.sh"
            assert os.access(script, os.X_OK), script
            assert f"aot_eval_run {backbone} {bench} \"$@\"" in script.read_text()


def test_hf_backbone_protocol_options():
    """--frames, --max-pixels, --fps, --dtype land under each stock class's own key, or are
    refused where the stock class has no such setting."""
    qwen = model_args_of(command_of(run(
        [SCRIPTS / "eval_qwen3_vl_videomme.sh", "--reducer", "none", "--frames", "64",
         "--max-pixels", "200704", "--fps", "0.5", "--dry-run"], env=CHECKED)))
    assert qwen["max_num_frames"] == "64" and qwen["max_pixels"] == "200704"
    assert qwen["fps"] == "0.5" and qwen["reducer"] == "none"
    hf = model_args_of(command_of(run(
        [SCRIPTS / "eval_llava_hf_egoschema.sh", "--reducer", "none", "--frames", "16",
         "--dtype", "bfloat16", "--dry-run"], env=CHECKED)))
    assert hf["max_frames_num"] == "16" and hf["dtype"] == "bfloat16" and "torch_dtype" not in hf
    ov = model_args_of(command_of(run([SCRIPTS / "eval_ov_mvbench.sh", "--reducer", "none",
                                       "--dry-run"], env=CHECKED)))
    assert ov["torch_dtype"] == "float16" and "max_pixels" not in ov and "fps" not in ov


@pytest.mark.parametrize("script, args, message", [
    ("eval_qwen2_5_vl_mvbench.sh", ["--dtype", "float16"],
     "--dtype is not a setting of qwen2_5_vl (stock lmms-eval qwen2_5_vl always loads bfloat16)"),
    ("eval_qwen2_5_vl_mvbench.sh", ["--fps", "1"], "--fps is not a setting of qwen2_5_vl"),
    ("eval_llava_hf_mvbench.sh", ["--max-pixels", "200704"],
     "--max-pixels is not a setting of llava_hf"),
    ("eval_ov_mvbench.sh", ["--fps", "1"], "--fps is not a setting of ov"),
    ("eval_qwen3_vl_mvbench.sh", ["--fps", "0"], "--fps '0' must be a positive number"),
    ("eval_qwen3_vl_mvbench.sh", ["--fps", "1/2"], "--fps '1/2' must be a positive number"),
    ("eval_qwen3_vl_mvbench.sh", ["--max-pixels", "1e6"], "--max-pixels '1e6' must be a positive"),
    ("eval_qwen3_vl_mvbench.sh", ["--dtype", "int8"], "unknown dtype 'int8'"),
    ("eval_qwen2_5_vl_videomme.sh", ["--retention", "0.1", "--frames", "0"], "--frames '0'"),
])
def test_hf_backbone_bad_options_rejected(script, args, message):
    proc = run([SCRIPTS / script, "--reducer", "none", *args, "--dry-run"]
               if "--retention" not in args else [SCRIPTS / script, *args, "--dry-run"])
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "[eval] command" not in proc.stdout


def test_hf_backbones_without_a_budget():
    """Qwen has no paper preset to suggest; llava_hf (LLaVA-OneVision weights) has OV's."""
    qwen = run([SCRIPTS / "eval_qwen3_vl_longvideobench.sh", "--dry-run"])
    assert qwen.returncode == 2
    assert qwen.stderr.strip().endswith("give --retention R (e.g. 0.10) or --reducer none; the "
                                        "paper has no setting for qwen3_vl")
    hf = run([SCRIPTS / "eval_llava_hf_longvideobench.sh", "--dry-run"])
    assert hf.returncode == 2 and "this benchmark: paper-ov-videomme)" in hf.stderr


@pytest.mark.parametrize("backbone", [
    b if b == "qwen3_vl" else pytest.param(b, marks=pytest.mark.slow) for b in sorted(HF_SCRIPTS)])
def test_hf_backbone_scripts_check_reducer_args(backbone):
    """The scripts run the preflight parser for the new backbones too (its cases for each
    backbone: tests/test_preflight.py)."""
    proc = run([SCRIPTS / f"eval_{backbone}_mvbench.sh", "--preset", "paper-ov-mvbenhc",
                "--dry-run"])
    assert proc.returncode == 2, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown preset='paper-ov-mvbenhc'" in lines[0]


@pytest.mark.parametrize("backbone", ["llava_hf",
                                      pytest.param("qwen2_5_vl", marks=pytest.mark.slow),
                                      pytest.param("qwen3_vl", marks=pytest.mark.slow)])
def test_retention_passes_preflight(backbone):
    proc = run([SCRIPTS / f"eval_{backbone}_mvbench.sh", "--retention", "0.10", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert model_args_of(command_of(proc))["retention"] == "0.10"


@pytest.mark.slow  # a sweep and a SLURM array: many script dry runs
def test_hf_backbone_sweep_and_slurm():
    proc = run([SCRIPTS / "sweep.sh", "--backbone", "llava_hf", "--output", "out", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    commands = [line for line in proc.stdout.splitlines() if line.startswith("[eval] command")]
    assert len(commands) == 4 * 5 and all(" --model llava_hf_aot " in c for c in commands)
    assert sum("reducer=none" in c for c in commands) == 4
    assert sum(",retention=0.20 " in c for c in commands) == 4
    bad = run([SCRIPTS / "sweep.sh", "--backbone", "qwen"])
    assert bad.returncode == 2 and "expected one of: ov video qwen2_5_vl qwen3_vl llava_hf" in \
        bad.stderr
    task = run([SCRIPTS / "slurm" / "eval_array.sbatch"],
               env={**CHECKED, "DRY_RUN": "1", "BACKBONE": "qwen3_vl", "RETENTIONS": "full 0.25",
                    "BENCHMARKS": "mvbench videomme", "OUTPUT": "tbl",
                    "SLURM_ARRAY_TASK_ID": "1"})
    assert task.returncode == 0, task.stderr
    command = command_of(task)
    assert " --model qwen3_vl_aot " in command and " --tasks videomme " in command
    assert model_args_of(command)["reducer"] == "none" and "tbl/videomme/full" in command
    submit = run([SCRIPTS / "slurm" / "submit_table.sh", "--backbone", "qwen2_5_vl", "--dry-run"])
    assert submit.returncode == 0 and "--array=0-19" in submit.stdout
    assert "RETENTIONS='full 0.25 0.20 0.15 0.10'" in submit.stdout


# ------------------------------------------------------------------ model_args (no lmms-eval)
def test_parse_reducer_variants():
    from aot import AOTConfig
    from aot_eval.model_args import parse_reducer

    spec = parse_reducer({"preset": "paper-ov-videomme", "keep_ratio": "0.2",
                          "anchors_per_frame": 100, "inter": "false", "clip_length": "none"}, "ov")
    assert spec.name == "aot"
    assert spec.config == AOTConfig.preset("paper-ov-videomme").replace(
        keep_ratio=0.2, anchors_per_frame=100, inter=False, clip_length=None)
    full = parse_reducer({"reducer": "none"}, "video")
    assert full.config is None and full.describe()["aot_config"] is None
    ablated = parse_reducer({"preset": "paper-ov-mvbench", "ablation": "no-local+no-inter"}, "ov")
    assert not ablated.config.local_anchors and not ablated.config.inter
    default = parse_reducer({}, "video")
    assert default.config == AOTConfig.preset("paper-video")
    ret = parse_reducer({"retention": 0.1, "exact": "true"}, "ov")
    assert ret.retention == 0.1 and ret.config.exact_retention == 0.1


@pytest.mark.parametrize("kwargs, message", [
    ({"reducer": "magic"}, "reducer"),
    ({"retention": 0}, "retention"),
    ({"retention": 1.5}, "retention"),
    ({"retention": "abc"}, "retention"),
    ({"retention": 0.1, "preset": "paper-video"}, "not both"),
    ({"preset": "nope"}, "preset"),
    ({"reducer": "none", "retention": 0.1}, "reducer=none"),
    ({"reducer": "uniform"}, "needs retention"),
    ({"ablation": "no-such"}, "ablation"),
    ({"anchors_per_frame": "many"}, "anchors_per_frame"),
    ({"inter": "maybe"}, "inter"),
    ({"exact": True}, "exact"),
])
def test_parse_reducer_rejects(kwargs, message):
    from aot_eval.model_args import parse_reducer

    with pytest.raises((ValueError, TypeError), match=message):
        parse_reducer(kwargs, "ov")


def test_split_aot_kwargs():
    from aot_eval.model_args import split_aot_kwargs

    aot, rest = split_aot_kwargs({"pretrained": "x", "retention": 0.1, "sigma": 2.0,
                                  "max_frames_num": 8})
    assert aot == {"retention": 0.1, "sigma": 2.0}
    assert rest == {"pretrained": "x", "max_frames_num": 8}


# ------------------------------------------------------------------ launcher helpers
def test_launcher_helpers(tmp_path):
    from aot_eval.cli import flag_value, main, retention_path_for

    assert flag_value(["--output_path", "a", "--x"], "--output_path") == "a"
    assert flag_value(["--output_path=b"], "--output_path") == "b"
    assert flag_value(["--tasks", "t"], "--output_path") is None
    assert retention_path_for(Path("o/m/2026_results.json")) == Path("o/m/2026_aot_retention.json")
    assert main(["--model", "llava_onevision_aot", "--tasks", "mvbench"]) == 2  # no --output_path


# ------------------------------------------------------------------ summariser
def write_run(folder: Path, model: str, model_args: str, results: dict, retention=None,
              stamp="20260101_000000", limit=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stamp}_results.json").write_text(json.dumps(
        {"results": results, "config": {"model": model, "model_args": model_args,
                                        "limit": limit}}))
    if retention is not None:
        samples = [{"task": task, "split": "test", "doc_id": i, "frames": 32, "retention": r,
                    "kept_tokens": round(r * 6272)}
                   for task, values in retention.items() for i, r in enumerate(values)]
        (folder / f"{stamp}_aot_retention.json").write_text(json.dumps({"samples": samples}))


def test_summariser_table(tmp_path):
    from aot_eval.summarise import main

    base = "pretrained=lmms-lab/llava-onevision-qwen2-7b-ov,conv_template=qwen_1_5"
    write_run(tmp_path / "a", "llava_onevision_aot", base + ",reducer=aot,retention=0.10",
              {"mvbench_action_count": {"mvbench_accuracy,none": 50.0},
               "mvbench_action_sequence": {"mvbench_accuracy,none": 60.0},
               "videomme": {"videomme_perception_score,none": 56.6}},
              {"mvbench_action_count": [0.09, 0.11], "videomme": [0.10, 0.12]})
    write_run(tmp_path / "b", "llava_onevision_aot", base + ",reducer=aot,retention=0.10",
              {"longvideobench_val_v": {"lvb_acc,none": 0.5423}}, {"longvideobench_val_v": [0.1]})
    write_run(tmp_path / "c", "llava_onevision_aot", base + ",reducer=none",
              {"egoschema": {"submission,none": 60.0}}, {"egoschema": [1.0, 1.0]}, limit=8)
    write_run(tmp_path / "d", "llava_vid_aot", "pretrained=x,reducer=aot,preset=paper-video",
              {"videomme": {"videomme_perception_score,none": 63.0}})
    out = tmp_path / "table"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    text = out.with_suffix(".md").read_text()
    assert "| r=0.10 | **55.0** (paper 57.0, -2.0)<br>ret. 10.0% [9.0–11.0]" in text
    assert "**54.2** (paper 54.2, +0.0)" in text  # lvb_acc fraction -> percent
    assert "**56.6** (paper 56.1, +0.5)<br>ret. 11.0% [10.0–12.0]" in text
    assert "limit=8: not comparable" in text
    assert "| paper-video |" in text
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    cell = next(r for r in rows if r["setting"] == "r=0.10" and r["benchmark"] == "videomme")
    assert float(cell["paper"]) == 56.1 and float(cell["retention_mean"]) == pytest.approx(0.11)
    full = next(r for r in rows if r["setting"] == "full" and r["benchmark"] == "egoschema")
    assert float(full["ours"]) == 60.0 and float(full["paper"]) == 60.4


def test_summariser_new_backbones(tmp_path):
    """Runs of the transformers backbones get their own tables, in backbone order after the
    paper's; their stock keys are not mistaken for knobs; the paper's columns stay empty."""
    from aot_eval.paper import paper_value
    from aot_eval.summarise import main

    qwen = "pretrained=Qwen/Qwen2.5-VL-7B-Instruct,max_num_frames=32,max_pixels=1605632"
    write_run(tmp_path / "q", "qwen2_5_vl_aot", qwen + ",reducer=aot,retention=0.10",
              {"videomme": {"videomme_perception_score,none": 60.5}}, {"videomme": [0.1, 0.1]})
    write_run(tmp_path / "qf", "qwen2_5_vl_aot", qwen + ",reducer=none",
              {"videomme": {"videomme_perception_score,none": 62.0}})
    write_run(tmp_path / "h", "llava_hf_aot", "pretrained=llava-hf/x,max_frames_num=32,dtype=auto,"
              "reducer=aot,retention=0.10", {"mvbench": {"mvbench_accuracy,none": 56.0}})
    write_run(tmp_path / "o", "llava_onevision_aot", "pretrained=p,reducer=aot,retention=0.10",
              {"mvbench": {"mvbench_accuracy,none": 57.5}})
    write_run(tmp_path / "3", "qwen3_vl_aot", "pretrained=Qwen/Qwen3-VL-8B-Instruct,fps=2,"
              "reducer=aot,retention=0.25", {"egoschema": {"submission,none": 70.0}})
    out = tmp_path / "table"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    text = out.with_suffix(".md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    assert headings == ["### LLaVA-OneVision-7B (32 frames)",
                        "### Qwen2.5-VL (stock lmms-eval qwen2_5_vl protocol)",
                        "### Qwen3-VL (stock lmms-eval qwen3_vl protocol)",
                        "### LLaVA-OneVision in transformers (stock lmms-eval llava_hf protocol)"]
    assert "| r=0.10 | **57.5** (paper 57.0, +0.5)" in text  # OV keeps its paper values
    qwen_table = text.split(headings[1])[1].split(headings[2])[0]
    assert "| full | — | — | — | **62.0**<br>ret. — | — |" in qwen_table
    assert "| r=0.10 | — | — | — | **60.5**<br>ret. 10.0% [10.0–10.0] | — |" in qwen_table
    assert "| r=0.25 | — | **70.0**<br>ret. — | — | — | — |" in text  # fps=2 is not a knob
    assert "| r=0.10 | **56.0**<br>ret. — | — | — | — | — |" in text  # llava_hf: no paper
    assert "The paper has no numbers for qwen2_5_vl, qwen3_vl, llava_hf" in text
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    new = [r for r in rows if r["backbone"] in ("qwen2_5_vl", "qwen3_vl", "llava_hf")]
    assert len(new) == 4 * 5 and all(r["paper"] == "" for r in new)
    assert paper_value("llava_hf", "0.10", "mvbench") is None
    assert paper_value("qwen3_vl", "full", "avg") is None


def test_summariser_errors(tmp_path):
    from aot_eval.summarise import main

    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])
    assert main([str(tmp_path)]) == 1  # no results


def test_launcher_finish_places_retention(tmp_path, monkeypatch, capsys):
    """After lmms-eval: retention beside the new results file; EgoSchema without a score keeps
    its submission; nothing written -> exit status 1."""
    import time

    from aot_eval import cli, recording

    document = recording.build_document([], {"model": "llava_onevision_aot"})
    monkeypatch.setattr(recording, "FINISHED", [document])
    since = time.time() - 1
    assert cli.finish(tmp_path, since) == 1
    assert "no results file" in capsys.readouterr().err

    sub = tmp_path / "submissions"
    sub.mkdir()
    (sub / "inference_results_egoschema_MC_x.json").write_text("{}")
    assert cli.finish(tmp_path, since) == 0
    assert (sub / "inference_results_egoschema_MC_x_aot_retention.json").exists()
    assert "POST" in capsys.readouterr().out

    run = tmp_path / "model"
    run.mkdir()
    (run / "20260101_000000_results.json").write_text("{}")
    assert cli.finish(tmp_path, since) == 0
    assert (run / "20260101_000000_aot_retention.json").exists()

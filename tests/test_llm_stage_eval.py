"""The LLM stage in the evaluation layer: ``llm_stage=`` model_args, ``--llm-stage`` on the eval
scripts, the table row label, the per-video record (no lmms-eval needed)."""

from __future__ import annotations

import pytest
import torch

from aot import llm_stages
from aot_eval import model_args, recording, summarise


def test_model_args_give_a_stage_beside_any_reducer():
    aot_part, rest = model_args.split_aot_kwargs(
        {"retention": "0.25", "llm_stage": "flashvid", "llm_stage.layer": "3",
         "llm_stage.budget": "157", "pretrained": "x"})
    assert rest == {"pretrained": "x"}
    spec = model_args.parse_reducer(aot_part, "ov", frames=32)
    assert spec.llm_stage == llm_stages.get_stage("flashvid", layer=3, budget=157)
    assert spec.source.endswith("+ llm_stage=flashvid(K=3, budget=157)")
    assert spec.describe()["llm_stage"]["layer"] == 3
    unreduced = model_args.parse_reducer({"reducer": "none", "llm_stage": "fastv",
                                          "llm_stage.merge": "true"}, "ov")
    assert unreduced.name == "none" and unreduced.llm_stage.merge
    assert model_args.parse_reducer({"retention": "0.1"}, "ov").llm_stage is None
    final = model_args.parse_reducer({"retention": "0.25", "llm_stage": "fastv",
                                      "llm_stage.final_retention": "0.1",
                                      "llm_stage.budget": "none"}, "ov")
    assert final.llm_stage.final_retention == 0.1 and final.llm_stage.budget is None
    assert final.source.endswith("fastv(K=2, final r=0.1)")


@pytest.mark.parametrize("kwargs, message", [
    ({"llm_stage": "fastvv"}, "unknown LLM stage 'fastvv'"),
    ({"llm_stage": "fastv", "llm_stage.keep": "2"}, "unknown LLM stage knob 'llm_stage.keep'"),
    ({"llm_stage": "fastv", "llm_stage.retention": "2"}, "retention=2.0"),
    ({"llm_stage": "fastv", "llm_stage.layer": "x"}, "llm_stage.layer='x'"),
    ({"llm_stage.layer": "3"}, "without llm_stage=NAME"),
])
def test_bad_stage_args_get_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        model_args.parse_reducer({"retention": "0.1", **kwargs}, "ov")


def test_table_rows_name_the_stage():
    label, paper = summarise.setting_of("llava_onevision_aot", {
        "reducer": "aot", "retention": "0.10", "llm_stage": "fastv", "llm_stage.layer": "3"})
    assert label == "r=0.10 +fastv(layer=3)" and paper is None
    assert summarise.setting_of("llava_onevision_aot", {"reducer": "none",
                                                        "llm_stage": "holitom"}) == (
        "full +holitom", None)
    assert summarise.setting_of("llava_onevision_aot", {"reducer": "none"}) == ("full", "full")


def test_records_carry_the_stages_count():
    class Handle:
        last = type("Record", (), {"kept": [7, 9]})()

    counted = model_args.with_llm_stage([{"visual_tokens": 21, "newline_tokens": 1}, None],
                                        Handle())
    assert counted[0]["llm_stage_kept"] == 7 and counted[1] is None
    assert model_args.with_llm_stage([{"visual_tokens": 1, "newline_tokens": 0}], Handle(),
                                     first=1)[0]["llm_stage_kept"] == 9
    record = recording.sample_record("t", "s", 0, 2, 10, counted[0])
    assert record["kept_tokens"] == 20 and record["llm_stage_kept"] == 7
    assert "llm_stage_kept" not in recording.sample_record("t", "s", 0, 2, 10, counted[0] | {
        "llm_stage_kept": None})


def test_install_follows_the_spec():
    from aot_integrations import tiny

    model = tiny.onevision(text_layers=4)
    spec = model_args.parse_reducer({"reducer": "none", "llm_stage": "fastv"}, "ov")
    handle = model_args.install_llm_stage(model, spec)
    inputs = tiny.onevision_inputs([2])
    with torch.no_grad():
        model(**inputs)
    assert handle.last.kept == [round(19 * 0.5)]
    handle.remove()
    assert model_args.install_llm_stage(model, model_args.parse_reducer({}, "ov")) is None


def test_eval_scripts_take_llm_stage():
    from test_scripts_eval import SCRIPTS, command_of, model_args_of, run

    proc = run([SCRIPTS / "eval_ov_mvbench.sh", "--retention", "0.10", "--llm-stage", "fastv",
                "--llm-stage-opt", "layer=3", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    command = command_of(proc)
    args = model_args_of(command)
    assert args["llm_stage"] == "fastv" and args["llm_stage.layer"] == "3"
    assert "aot_r0.10_llm-fastv_layer=3" in command
    bad = run([SCRIPTS / "eval_ov_mvbench.sh", "--retention", "0.10", "--llm-stage", "fastvv",
               "--dry-run"])
    assert bad.returncode == 2 and "unknown LLM stage 'fastvv'" in bad.stderr
    bad = run([SCRIPTS / "eval_ov_mvbench.sh", "--retention", "0.10", "--llm-stage", "fastv",
               "--llm-stage-opt", "layer", "--dry-run"])
    assert bad.returncode == 2 and "must be KEY=VALUE" in bad.stderr

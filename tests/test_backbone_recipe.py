"""docs/backbones.md's "Add a backbone" recipe, run exactly as printed, then every consumer of
the backbone records asked about the new backbone."""

from __future__ import annotations

import pytest
from doc_code import python_blocks, run_code

from aot import backbones
from aot_integrations.hf import adapters

PAGE = "docs/backbones.md"


@pytest.fixture
def registries():
    """The backbone and adapter registries as they were, restored after the test."""
    live_registries = (backbones.BACKBONES, adapters.ADAPTERS, adapters.MODEL_TYPES)
    saved = [dict(registry) for registry in live_registries]
    yield
    for live, old in zip(live_registries, saved):
        live.clear()
        live.update(old)


def test_recipe_runs_as_printed_and_every_consumer_knows_the_backbone(registries):
    from aot_eval import manifests, paper, preflight, prompts, summarise

    namespace = run_code("\n".join(python_blocks(PAGE, "\n## Add a backbone\n")),
                         {"__name__": "recipe"}, PAGE)

    assert backbones.get_backbone("mine") is namespace["mine"]
    assert preflight.facts_backbone("mine") == "mine"
    assert summarise.backbone_of("my_vl_aot") == "mine"
    assert summarise.backbone_order()[-1] == "llava_hf"  # alternative protocols stay last
    assert manifests.models()["my_vl_aot"] == "my_package.MyVLAOT"
    assert prompts.prompt_name_for("my_vl_aot") == "my_vl"
    assert paper.paper_value("mine", "full", "mvbench") is None


def test_register_backbone_refuses_a_clash(registries):
    ov = backbones.get_backbone("ov")
    assert backbones.register_backbone(ov) is ov  # the same record again: a no-op
    with pytest.raises(ValueError, match="'ov' is registered already"):
        backbones.register_backbone(backbones.Backbone(
            "ov", "other", (27, 27), "bilinear", "one_token", 5, 24, "paper-ov-mvbench", 32,
            "qwen_1_5"))
    with pytest.raises(ValueError, match="llava_hf"):
        backbones.register_backbone(backbones.Backbone(
            "new", "other", (27, 27), "bilinear", "one_token", 5, 24, "paper-ov-mvbench", 32,
            "qwen_1_5", protocols=(ov.protocols[1],)))


def test_protocols_and_adapters_agree():
    """Each transformers checkpoint type a protocol loads has an adapter declaring the
    protocol's backbone (preflight parses a protocol's model_args with that backbone)."""
    for protocol in backbones.eval_protocols():
        name = adapters.MODEL_TYPES.get(protocol.checkpoint_type)
        if name is not None:
            assert adapters.ADAPTERS[name].backbone_name == \
                backbones.backbone_of_protocol(protocol.name).name


def test_patch_merge_is_validated_and_read_by_the_serving_count():
    import dataclasses

    from aot_integrations.hf import reduced_token_count

    qwen = backbones.get_backbone("qwen2_5_vl")
    with pytest.raises(ValueError, match="patch_merge=0, expected an integer >= 1"):
        dataclasses.replace(qwen, name="bad", patch_merge=0)
    unmerged = dataclasses.replace(qwen, name="unmerged", patch_merge=1)
    # (t, h, w) = (2, 8, 8): 2 x 4 x 4 merged tokens on Qwen, 2 x 8 x 8 without a merge
    assert reduced_token_count(qwen, (2, 8, 8), 1.0) == 32
    assert reduced_token_count(unmerged, (2, 8, 8), 1.0) == 128

"""The reducer's operation count: what a call dispatches, one launch each on a GPU.

The default ``aot.reduce_video`` call at the real shapes (features of width 3584, the bench
inputs of scripts/bench_reducer.py) is counted with a ``TorchDispatchMode``; views are not
counted (they launch nothing). The bounds pin what the stages reach today (docs/efficiency.md,
"Operations per call"), so that a change that adds per-frame or per-iteration operations fails
here. The count depends on the Sinkhorn iteration counts, hence on the inputs: these are fixed.
"""

import pathlib
import sys

import pytest
import torch

import aot
from test_sinkhorn_launches import OpCounter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
from bench_reducer import make_inputs  # noqa: E402

# (backbone, frames, preset, bound on the non-view operations of one call)
SHAPES = [("ov", 32, "paper-ov-mvbench", 353), ("video", 64, "paper-video", 209)]


def count_operations(frames: int, preset: str, dim: int = 3584,
                     **changes) -> tuple[int, aot.ReducedVideo]:
    feats, shallow, deep = make_inputs(frames, dim, "cpu", torch.float32)
    cfg = aot.AOTConfig.preset(preset, **changes)
    aot.reduce_video(feats, shallow, deep, cfg)  # warm the per-grid caches
    with OpCounter() as counter:
        result = aot.reduce_video(feats, shallow, deep, cfg)
    return len(counter.names), result


@pytest.mark.parametrize("backbone, frames, preset, bound", SHAPES)
def test_default_call_operation_count(backbone, frames, preset, bound):
    count, result = count_operations(frames, preset)
    print(f"\n{backbone} {frames} frames ({preset}): {count} operations per call")
    assert result.num_tokens > 0
    assert count <= bound, (backbone, count)


@pytest.mark.parametrize("preset", ["paper-ov-mvbench", "paper-video"])
def test_operations_do_not_grow_with_frames(preset):
    # Batched over frames: four times the frames adds no per-frame operations. At width 64
    # every pass is one chunk, and clips of 4 frames keep the temporal steps at 3; what may
    # differ is the Sinkhorn iteration count (four operations per iteration).
    small, _ = count_operations(8, preset, dim=64, clip_length=4)
    large, _ = count_operations(32, preset, dim=64, clip_length=4)
    print(f"\n{preset} at width 64: {small} operations at 8 frames, {large} at 32")
    assert abs(large - small) <= 40, (small, large)

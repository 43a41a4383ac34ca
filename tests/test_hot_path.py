"""The reducer's hot path: no host sync in the loops, compiles whole, chunking and fixed-iteration
Sinkhorn change nothing, no copy of the features, no NaN for huge finite features, underflow."""

import math
import warnings

import pytest
import torch

import aot
from aot.intra import merged_anchor_features, split_by_mask
from aot.pooling import pool_at, pool_grid
from aot.sinkhorn import sinkhorn
from aot.synthetic import synthetic_video
from aot.temporal import packed_survivors, temporal_merge_packed, temporal_step

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


class SyncCounter:
    """Counts the Python-level calls that copy a tensor value to the host."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in SYNC_METHODS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                self.count += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def problem(batch=6, m=40, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, m, n, generator=g) * 2
    return torch.full((batch, m), 1.0 / m), torch.full((batch, n), 1.0 / n), cost


@pytest.mark.parametrize("log_domain", [False, True])
def test_sinkhorn_syncs_only_every_check_every_iterations(monkeypatch, log_domain):
    a, b, cost = problem()
    ref = sinkhorn(a, b, cost, 0.05, stopping="problem", log_domain=log_domain, check_every=1)
    iterations = int(ref.iterations.max())
    assert iterations > 6, "the test needs a problem that runs several iterations"
    counter = SyncCounter(monkeypatch)
    for check_every, allowed in ((0, 0), (3, math.ceil(iterations / 3)), (1, iterations)):
        counter.count = 0
        out = sinkhorn(a, b, cost, 0.05, stopping="problem", log_domain=log_domain,
                       check_every=check_every)
        # the plain domain's deferred test reads, once per solve, the cost's range, the valid
        # row and column counts and the final column scalings (module doc of aot.sinkhorn)
        fixed = 0 if check_every == 0 or log_domain else 4
        assert counter.count == allowed + fixed, (check_every, counter.count)
        # Converged problems are frozen: the same plan whether or not the loop looked.
        assert torch.equal(out.plan, ref.plan) and torch.equal(out.iterations, ref.iterations)


def test_temporal_phase_syncs_do_not_grow_with_frames(monkeypatch):
    counts = {}
    for frames in (8, 24):
        feats, shallow, deep = synthetic_video(frames, dim=8, seed=1)
        cfg = aot.AOTConfig()
        intra = aot.intra_stage(feats, shallow, deep, cfg)
        pooled = pool_grid(intra.features, 27, "bilinear")
        survivors = pool_grid(intra.anchors.float(), 27, "bilinear") >= 0.5
        tokens, positions, valid = packed_survivors(pooled, survivors)
        clips = aot.split_clips(frames, cfg)
        counter = SyncCounter(monkeypatch)
        temporal_merge_packed(tokens, positions, valid, 196, clips, cfg, check_every=0)
        counts[frames] = counter.count
        monkeypatch.undo()
    assert counts[8] == counts[24] == 0, counts


def test_intra_merge_is_sync_free_with_fixed_iterations(monkeypatch):
    feats, shallow, deep = synthetic_video(6, dim=16, seed=2)
    cfg = aot.AOTConfig()
    local, global_ = aot.select_anchors(shallow, deep, 27, cfg)
    anchor_idx, source_idx = split_by_mask(local | global_)
    early = merged_anchor_features(feats, anchor_idx, source_idx, 27, cfg)
    counter = SyncCounter(monkeypatch)
    fixed = merged_anchor_features(feats, anchor_idx, source_idx, 27, cfg, check_every=0)
    assert counter.count == 0
    assert torch.equal(fixed, early)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_chunking_changes_nothing(dtype):
    # Chunks bound the scratch of the passes over the features (gathered anchors, the float32
    # copy of a half-precision input) to a fixed budget; any chunk size gives the same bits.
    feats, shallow, deep = synthetic_video(7, dim=24, seed=3, dtype=dtype)
    shallow, deep = shallow.float(), deep.float()
    cfg = aot.AOTConfig()
    local, global_ = aot.select_anchors(shallow, deep, 27, cfg)
    anchor_idx, source_idx = split_by_mask(local | global_)
    whole = merged_anchor_features(feats, anchor_idx, source_idx, 27, cfg, chunk_frames=7)
    for chunk in (None, 1, 3):
        parts = merged_anchor_features(feats, anchor_idx, source_idx, 27, cfg, chunk_frames=chunk)
        assert torch.equal(parts, whole), chunk
    positions = torch.randint(0, 196, (7, 30), generator=torch.Generator().manual_seed(3))
    pooled = pool_at(feats, positions, 27, "bilinear", anchor_idx=anchor_idx, merged=whole)
    for chunk in (1, 4):
        assert torch.equal(pool_at(feats, positions, 27, "bilinear", anchor_idx=anchor_idx,
                                   merged=whole, chunk_frames=chunk), pooled), chunk


def test_default_chunks_follow_the_byte_budget(monkeypatch):
    # The scratch of one chunk stays within aot.ops.SCRATCH_BYTES whatever the video length:
    # count the frames each product of the similarity pass sees.
    feats, shallow, deep = synthetic_video(12, dim=256, seed=3)
    feats = feats.contiguous()  # a strided input would count a dense copy per frame too
    cfg = aot.AOTConfig()
    local, global_ = aot.select_anchors(shallow, deep, 27, cfg)
    anchor_idx, source_idx = split_by_mask(local | global_)
    per_frame = (126 * 256 + 729 * 126) * 4
    monkeypatch.setattr(aot.ops, "SCRATCH_BYTES", 5 * per_frame)
    seen = []
    original = torch.bmm

    def counting_bmm(a, b, **kwargs):
        if a.shape[1:] == (729, 256):
            seen.append(a.shape[0])
        return original(a, b, **kwargs)

    monkeypatch.setattr(torch, "bmm", counting_bmm)
    aot.intra.anchor_similarity(feats, anchor_idx, source_idx)
    assert seen == [5, 5, 2]


def test_the_chunk_budget_depends_on_the_device(monkeypatch):
    # CPU passes chunk at SCRATCH_BYTES (cache, page faults); GPU passes are launch-bound and
    # chunk at ACCELERATOR_SCRATCH_BYTES. A budget passed explicitly wins over both.
    monkeypatch.setattr(aot.ops, "SCRATCH_BYTES", 300)
    monkeypatch.setattr(aot.ops, "ACCELERATOR_SCRATCH_BYTES", 1000)
    assert aot.ops.scratch_bytes() == aot.ops.scratch_bytes("cpu") == 300
    assert aot.ops.scratch_bytes("cuda:0") == aot.ops.scratch_bytes(torch.device("meta")) == 1000
    assert aot.ops.frames_per_chunk(100, 50, device=torch.device("cpu")) == 3
    assert aot.ops.frames_per_chunk(100, 50, device="cuda") == 10
    assert aot.ops.frames_per_chunk(100, 50, budget=500, device="cuda") == 5
    assert aot.ops.frames_per_chunk(100, 4, device="cuda") == 4  # never more than the video


@pytest.mark.parametrize("mode", ["bilinear", "average", "none"])
def test_pool_at_equals_pooling_the_written_features(mode):
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(3, 81, 5, generator=g, dtype=torch.float64)
    anchor_idx = torch.sort(torch.rand(3, 81, generator=g).argsort(1)[:, :20], 1).values
    merged = torch.randn(3, 20, 5, generator=g, dtype=torch.float64)
    written = aot.intra.write_anchors(feats, anchor_idx, merged)
    side_tokens = pool_grid(written, 9, mode).shape[1]
    positions = torch.randint(0, side_tokens, (3, 11), generator=g)
    got = pool_at(feats, positions, 9, mode, anchor_idx=anchor_idx, merged=merged)
    expected = torch.gather(pool_grid(written, 9, mode), 1, positions[:, :, None].expand(-1, -1, 5))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_reduce_video_does_not_modify_or_copy_the_features(monkeypatch):
    feats, shallow, deep = synthetic_video(8, dim=16, seed=5)
    before = feats.clone()
    clones = []
    original = torch.Tensor.clone

    def counted_clone(tensor, *args, **kwargs):
        if tensor.shape == feats.shape:
            clones.append(tensor.shape)
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "clone", counted_clone)
    result = aot.reduce_video(feats, shallow, deep, aot.AOTConfig())
    monkeypatch.undo()
    assert clones == []
    assert torch.equal(feats, before)
    assert result.num_tokens > 0


def _compile_inputs():
    feats, shallow, deep = synthetic_video(4, dim=16, seed=6)
    cfg = aot.AOTConfig(sinkhorn_iterations=8)
    local, global_ = aot.select_anchors(shallow, deep, 27, cfg)
    anchor_idx, source_idx = split_by_mask(local | global_)
    return feats, anchor_idx, source_idx, cfg


def _temporal_inputs():
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(3, 9, 16, generator=g), torch.randn(3, 9, 16, generator=g)
    x_valid = torch.rand(3, 9, generator=g) > 0.2
    y_valid = torch.rand(3, 9, generator=g) > 0.2
    return x, x_valid, y, y_valid


def test_stages_trace_without_graph_breaks():
    feats, anchor_idx, source_idx, cfg = _compile_inputs()
    torch._dynamo.reset()
    intra = torch._dynamo.explain(merged_anchor_features)(feats, anchor_idx, source_idx, 27, cfg,
                                                          check_every=0)
    assert intra.graph_break_count == 0, intra.break_reasons
    torch._dynamo.reset()
    step = torch._dynamo.explain(temporal_step)(*_temporal_inputs(), 2, cfg, check_every=0)
    assert step.graph_break_count == 0, step.break_reasons


@pytest.mark.slow
def test_compiled_stages_equal_eager():
    feats, anchor_idx, source_idx, cfg = _compile_inputs()
    torch._dynamo.reset()
    eager = merged_anchor_features(feats, anchor_idx, source_idx, 27, cfg, check_every=0)
    compiled = torch.compile(merged_anchor_features, fullgraph=True)(
        feats, anchor_idx, source_idx, 27, cfg, check_every=0)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    inputs = _temporal_inputs()
    keep, anchors = temporal_step(*inputs, 2, cfg, check_every=0)
    keep_c, anchors_c = torch.compile(temporal_step, fullgraph=True)(*inputs, 2, cfg,
                                                                      check_every=0)
    assert torch.equal(keep_c, keep)
    torch.testing.assert_close(anchors_c, anchors, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale, spike", [(1e19, None), (1e30, None), (1.0, 3e38),
                                          (1e-3, None), (1e19, 3e38)])
def test_huge_finite_features_give_finite_tokens(scale, spike):
    feats, shallow, deep = synthetic_video(8, dim=16, seed=8)
    ref = aot.reduce_video(feats, shallow, deep, aot.AOTConfig())
    big = feats * scale
    if spike is not None:
        big[3, 100, 2] = spike
    for cfg in (aot.AOTConfig(), aot.AOTConfig(intra_merge="cosine", inter_merge="cosine"),
                aot.AOTConfig.preset("paper-video")):
        result = aot.reduce_video(big, shallow, deep, cfg)
        assert torch.isfinite(result.tokens).all(), (scale, spike, cfg)
    if spike is None:  # cosine and the merges are scale-free: the same tokens, scaled
        result = aot.reduce_video(big, shallow, deep, aot.AOTConfig())
        assert torch.equal(result.token_position, ref.token_position)
        torch.testing.assert_close(result.tokens / scale, ref.tokens, rtol=1e-4, atol=1e-5)


def test_nan_features_still_name_the_frame():
    feats, shallow, deep = synthetic_video(4, dim=8, seed=9)
    for value in (float("nan"), float("inf")):
        bad = feats.clone()
        bad[2, 7, 3] = value
        for cfg in (aot.AOTConfig(), aot.AOTConfig(intra_merge="prune"), aot.AOTConfig(intra=False)):
            with pytest.raises(ValueError, match=r"features holds NaN or inf values \(first in frame 2\)"):
                aot.reduce_video(bad, shallow, deep, cfg)


def test_plain_sinkhorn_underflow_switches_to_the_log_domain():
    g = torch.Generator().manual_seed(10)
    cost = torch.rand(2, 30, 8, generator=g) * 2
    cost[:, :10] += 1.0  # these rows: every kernel entry exp(-cost / 1e-3) is 0 in float32
    a, b = torch.full((2, 30), 1 / 30), torch.full((2, 8), 1 / 8)
    with pytest.warns(RuntimeWarning, match="underflows to 0 .* reg=0.001"):
        plain = sinkhorn(a, b, cost, 1e-3, max_iter=60, stop_threshold=1e-6)
    logd = sinkhorn(a, b, cost, 1e-3, max_iter=60, stop_threshold=1e-6, log_domain=True)
    assert torch.equal(plain.plan, logd.plan)
    assert (plain.plan.sum(2) > 1e-3 / 30).all(), "every row carries mass"
    torch.testing.assert_close(plain.plan.sum(1), b, rtol=1e-3, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default epsilon never warns
        sinkhorn(a, b, cost, 0.1)


def test_small_temporal_epsilon_keeps_every_row_of_mass():
    feats, shallow, deep = synthetic_video(16, dim=8, seed=11)
    cfg = aot.AOTConfig(temporal_epsilon=1e-3, sinkhorn_iterations=30)
    with pytest.warns(RuntimeWarning, match="log domain"):
        plain = aot.reduce_video(feats, shallow, deep, cfg)
    # With the log-domain plan a later frame keeps about keep_ratio (0.3) of its tokens; with
    # half of the plan's rows underflowed to 0, q = 0 there, the quantile is 0 and almost
    # nothing was kept (0.11 before the fix), the dead rows' tokens merged with weight 0.
    logd = aot.reduce_video(feats, shallow, deep, cfg.replace(log_domain=True))
    later = torch.tensor([f % 2 == 1 for f in range(16)])
    kept = plain.temporal_kept.reshape(16, -1).sum(1)[later]
    survivors = plain.survivors.reshape(16, -1).sum(1)[later]
    assert 0.25 < float(kept.sum() / survivors.sum()) < 0.35
    assert logd.num_tokens > 0


@pytest.mark.parametrize("preset", ["paper-ov-mvbench", "paper-video"])
def test_the_captured_intra_body_equals_the_eager_stage(preset):
    # What aot/graphs.py captures on CUDA (fixed Sinkhorn iterations, the anchor count known in
    # advance, no host sync), run here without capture: the eager stage's anchors and merge.
    from aot.graphs import _IntraGraph

    feats, shallow, deep = synthetic_video(8, dim=24, seed=12)
    cfg = aot.AOTConfig.preset(preset)
    body = _IntraGraph.__new__(_IntraGraph)
    body.grid, body.config = (27, 27), cfg
    anchor_idx, merged, local, global_, ok = body._body(feats, shallow, deep)
    eager = aot.intra_stage(feats, shallow, deep, cfg.replace(cuda_graphs=False))
    assert torch.equal(anchor_idx, eager.anchor_idx)
    assert torch.equal(merged, eager.merged)
    assert torch.equal(local, eager.local_anchors) and torch.equal(global_, eager.global_anchors)
    assert bool(ok)


def test_cuda_graphs_apply_only_where_the_tokens_cannot_change():
    # The rule reads the input's device and dtype only: a stand-in for a CUDA tensor suffices.
    import types

    from aot.graphs import graph_applies

    cuda = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    assert graph_applies(cuda, aot.AOTConfig())
    assert graph_applies(cuda, aot.AOTConfig.preset("paper-video"))
    assert not graph_applies(torch.zeros(2, 729, 4), aot.AOTConfig())  # CPU: eager
    for changes in ({"cuda_graphs": False}, {"log_domain": True}, {"intra_merge": "cosine"},
                    {"random_anchors": True}, {"intra": False},
                    {"intra_epsilon": 0.01}):  # the kernel could underflow: eager decides
        assert not graph_applies(cuda, aot.AOTConfig(**changes)), changes


def test_a_refused_capture_warns_once_and_leaves_the_stage_eager(monkeypatch):
    import sys
    import warnings as warnings_module

    graphs = sys.modules["aot.graphs"]

    class Refused:
        def __init__(self, *args):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "_IntraGraph", Refused)
    monkeypatch.setattr(graphs, "_GRAPHS", {})
    feats, shallow, deep = synthetic_video(2, dim=8, seed=13)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        assert graphs.intra_stage_graphed(feats, shallow, deep, (27, 27), aot.AOTConfig()) is None
    with warnings_module.catch_warnings():
        warnings_module.simplefilter("error")  # the shape is remembered: no second warning
        assert graphs.intra_stage_graphed(feats, shallow, deep, (27, 27), aot.AOTConfig()) is None

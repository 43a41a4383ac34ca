"""Non-square patch grids (native-resolution backbones: Qwen2.5-VL / Qwen3-VL give e.g. 12x20
landscape or 20x12 portrait frames): windows, spatial cost, pooling, exact budgets, every
reducer."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import aot
from aot.anchors import select_anchors, window_index, window_spans
from aot.reducers import get_reducer, pooling_matrix, reducer_names
from aot.intra import grid_coordinates
from aot.pooling import pool_grid, pooled_shape
from aot.synthetic import synthetic_video
from aot.result import KIND_ANCHOR, KIND_FRAME
from reducer_checks import with_inputs

GRIDS = [(12, 20), (20, 12), (7, 5), (1, 6), (6, 1), (10, 10)]
POOLINGS = ("none", "bilinear", "average")
DIM = 8


def video(frames: int, grid: tuple[int, int], seed: int = 0, dtype=torch.float64):
    """A synthetic video cropped to a rows x cols grid: (F, R*C, D), (F, R*C), (F, R*C)."""
    rows, cols = grid
    side = max(rows, cols)
    features, shallow, deep = synthetic_video(frames, grid=side, dim=DIM, seed=seed, dtype=dtype)

    def crop(x):
        return x.reshape(frames, side, side, -1)[:, :rows, :cols].reshape(frames, rows * cols,
                                                                        *x.shape[2:])

    return crop(features), crop(shallow), crop(deep)


def small_config(grid, pooling="none", **overrides) -> aot.AOTConfig:
    """About the released anchor share of the grid (126 / 729), windows of at most 3."""
    rows, cols = grid
    anchors = max(4, round(126 * rows * cols / 729))
    return aot.AOTConfig(anchors_per_frame=anchors, window=3, pooling=pooling, **overrides)


# ---- windows ----------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", GRIDS + [(27, 27), (16, 9), (3, 3)])
@pytest.mark.parametrize("window", [1, 2, 3, 4, 9, 30])
def test_windows_cover_every_token_exactly_once(grid, window):
    rows, cols = grid
    index = window_index(grid, window)
    assert index.shape == (rows * cols,)
    count = math.ceil(rows / window) * math.ceil(cols / window)
    # every token in exactly one window, every window non-empty
    assert sorted(torch.unique(index).tolist()) == list(range(count))
    sizes = torch.bincount(index, minlength=count)
    assert int(sizes.sum()) == rows * cols
    assert int(sizes.max()) <= window * window
    # each window is a solid rectangle of the grid, windows numbered row-major
    r, c = torch.div(torch.arange(rows * cols), cols, rounding_mode="floor"), \
        torch.arange(rows * cols) % cols
    firsts = []
    for w in range(count):
        rr, cc = r[index == w], c[index == w]
        height = int(rr.max() - rr.min()) + 1
        width = int(cc.max() - cc.min()) + 1
        assert height * width == int(sizes[w]) and height <= window and width <= window
        firsts.append((int(rr.min()), int(cc.min())))
    assert firsts == sorted(firsts)


@pytest.mark.parametrize("length,window", [(27, 9), (24, 8), (12, 9), (20, 9), (5, 2), (1, 9)])
def test_window_spans_are_near_equal_and_released_when_the_window_divides(length, window):
    spans = window_spans(length, window)
    lengths = [stop - start for start, stop in spans]
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert max(lengths) <= window and max(lengths) - min(lengths) <= 1
    if length % window == 0:
        assert lengths == [window] * (length // window)


def test_square_windows_are_the_released_ones():
    index = window_index(27, 9).reshape(27, 27)
    rows, cols = torch.meshgrid(torch.arange(27), torch.arange(27), indexing="ij")
    assert torch.equal(index, (rows // 9) * 3 + cols // 9)


@pytest.mark.parametrize("grid", [(12, 20), (20, 12), (7, 5)])
def test_local_anchors_per_window_and_global_top_up(grid):
    rows, cols = grid
    _, shallow, deep = video(3, grid)
    config = small_config(grid)
    local, global_ = select_anchors(shallow, deep, grid, config)
    index = window_index(grid, config.window)
    windows = int(index.max()) + 1
    per_window, global_count = aot.anchors.anchor_counts(config, windows)
    sizes = torch.bincount(index)
    expected_local = sizes.clamp(max=per_window)
    for f in range(3):
        counts = torch.bincount(index[local[f]], minlength=windows)
        assert torch.equal(counts, expected_local)
        # inside each window the chosen tokens are that window's best by shallow attention
        for w in range(windows):
            inside = torch.nonzero(index == w).flatten()
            best = inside[torch.sort(shallow[f, inside], descending=True, stable=True)
                          .indices[:int(expected_local[w])]]
            assert set(best.tolist()) == set(torch.nonzero(local[f] & (index == w))
                                             .flatten().tolist())
    shortfall = per_window * windows - int(expected_local.sum())
    assert (global_.sum(1) == global_count + shortfall).all()
    assert not (local & global_).any()
    assert ((local | global_).sum(1) <= config.anchors_per_frame).all()


def test_a_window_smaller_than_its_quota_gives_its_shortfall_to_global_anchors():
    # 5x5 in windows of at most 3: spans [0, 2) and [2, 5) per axis -> windows of 2x2, 2x3,
    # 3x2 and 3x3 tokens. V = 28, g = 0.25: int(28 * 0.75) = 21 local -> 5 per window, 7 global;
    # the 2x2 window holds only 4, so its missing anchor becomes an 8th global one.
    grid = (5, 5)
    _, shallow, deep = video(2, grid)
    config = aot.AOTConfig(anchors_per_frame=28, global_share=0.25, window=3, pooling="none")
    local, global_ = select_anchors(shallow, deep, grid, config)
    assert (local.sum(1) == 4 + 5 + 5 + 5).all()
    assert (global_.sum(1) == 7 + 1).all()


@pytest.mark.parametrize("overrides,message", [
    (dict(anchors_per_frame=3, window=1, global_anchors=False), "gives no anchor on the 3x3"),
    (dict(anchors_per_frame=3, window=1, global_share=0.0), "gives no anchor on the 3x3"),
])
def test_settings_that_give_no_anchor_are_refused(overrides, message):
    features, shallow, deep = video(2, (3, 3))
    config = aot.AOTConfig(pooling="none", **overrides)
    with pytest.raises(ValueError, match=message):
        select_anchors(shallow, deep, 3, config)
    with pytest.raises(ValueError, match="9 windows of at most 1x1"):
        aot.reduce_video(features, shallow, deep, config)


def test_few_anchors_with_global_anchors_still_select_them():
    # 9 windows, V = 3: no local anchor per window (released rule), the 3 go global
    _, shallow, deep = video(2, (3, 3))
    local, global_ = select_anchors(shallow, deep, 3, aot.AOTConfig(anchors_per_frame=3, window=1,
                                                                    pooling="none"))
    assert int(local.sum()) == 0 and (global_.sum(1) == 2).all()  # V - int(V * 0.5) = 2


# ---- spatial cost and pooling ------------------------------------------------------------------

def test_coordinates_are_scaled_per_axis():
    xy = grid_coordinates((12, 20))
    assert xy.shape == (240, 2)
    cols, rows = xy[:, 0].reshape(12, 20), xy[:, 1].reshape(12, 20)
    assert torch.equal(cols[0], torch.arange(20) / 19) and torch.equal(rows[:, 0], torch.arange(12) / 11)
    assert float(cols.max()) == 1.0 and float(rows.max()) == 1.0
    assert torch.equal(grid_coordinates((1, 6))[:, 1], torch.zeros(6))   # a 1-wide axis -> 0
    assert torch.equal(grid_coordinates((6, 1))[:, 0], torch.zeros(6))
    assert torch.equal(grid_coordinates(27), grid_coordinates((27, 27)))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_on_rectangular_grids(grid, pooling):
    rows, cols = grid
    values = torch.randn(2, rows * cols, 3, dtype=torch.float64)
    pooled = pool_grid(values, grid, pooling)
    out_rows, out_cols = pooled_shape(grid, pooling)
    assert pooled.shape == (2, out_rows * out_cols, 3)
    image = values.reshape(2, rows, cols, 3)
    if pooling == "average" and rows >= 2 and cols >= 2:
        expected = image[:, :2 * out_rows, :2 * out_cols].reshape(
            2, out_rows, 2, out_cols, 2, 3).mean((2, 4)).reshape(2, -1, 3)
        torch.testing.assert_close(pooled, expected)
    if pooling == "none":
        assert pooled is values
    # pooling the transposed grid is the transposed pooling (each axis on its own)
    transposed = image.transpose(1, 2).reshape(2, rows * cols, 3)
    back = pool_grid(transposed, (cols, rows), pooling).reshape(2, out_cols, out_rows, 3)
    torch.testing.assert_close(back.transpose(1, 2).reshape(2, -1, 3), pooled)


def test_wrong_grid_and_non_square_without_grid_are_named():
    features, shallow, deep = video(2, (12, 20))
    config = small_config((12, 20))
    with pytest.raises(ValueError, match=r"not a square grid.*grid=\(rows, cols\)"):
        aot.reduce_video(features, shallow, deep, config)
    with pytest.raises(ValueError, match="grid 10x20 has 200 tokens but features hold 240"):
        aot.reduce_video(features, shallow, deep, config, grid=(10, 20))
    with pytest.raises(ValueError, match="expected the side of a square patch grid"):
        aot.reduce_video(features, shallow, deep, config, grid=(12, 20, 1))
    result = aot.reduce_video(features, shallow, deep, config, grid=(12, 20))
    with pytest.raises(ValueError, match=r"12x20; read ReducedVideo.grid_shape"):
        result.grid  # noqa: B018
    with pytest.raises(ValueError, match="read ReducedVideo.pooled_shape"):
        result.pooled_grid  # noqa: B018


def test_square_grid_as_a_pair_is_the_square_grid():
    features, shallow, deep = synthetic_video(8, grid=27, dim=DIM, seed=1)
    config = aot.AOTConfig(exact_retention=0.1)
    a = aot.reduce_video(features, shallow, deep, config)
    b = aot.reduce_video(features, shallow, deep, config, grid=(27, 27))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.token_position, b.token_position)
    assert (a.grid, a.pooled_grid, a.grid_shape, a.pooled_shape) == (27, 14, (27, 27), (14, 14))


# ---- every reducer on rectangular grids ---------------------------------------------------------

@pytest.mark.parametrize("grid", [(12, 20), (20, 12), (7, 5)])
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("reducer", reducer_names())
def test_every_reducer_gives_exact_counts_and_shapes(grid, pooling, reducer):
    frames = 6
    rows, cols = grid
    features, shallow, deep = video(frames, grid, seed=2)
    out_rows, out_cols = pooled_shape(grid, pooling)
    per_frame = out_rows * out_cols
    for retention in (0.1, 0.3):
        config = small_config(grid, pooling, exact_retention=retention)
        result = with_inputs(reducer)(features, shallow, deep, config, grid=grid)
        count = aot.exact_budget(retention, frames, per_frame)
        assert result.num_tokens == count == math.floor(retention * frames * per_frame + 0.5)
        assert result.tokens.shape == (count, DIM)
        assert result.grid_shape == grid and result.pooled_shape == (out_rows, out_cols)
        assert result.local_anchors.shape == result.global_anchors.shape == (frames, rows, cols)
        for maps in (result.survivors, result.temporal_kept, result.temporal_merged):
            assert maps.shape == (frames, out_rows, out_cols)
        assert result.denominator == frames * per_frame
        assert bool((result.token_position >= 0).all() and (result.token_position < per_frame).all())
        assert bool((result.token_frame >= 0).all() and (result.token_frame < frames).all())
        assert bool(torch.isfinite(result.tokens).all())
        # the output differs from the unreduced video: fewer tokens, and not just its first rows
        unreduced = pool_grid(features, grid, pooling).reshape(-1, DIM)
        assert count < unreduced.shape[0]
        assert not torch.equal(result.tokens, unreduced[:count])
        # a budget given as a count wins over the retention
        assert with_inputs(reducer)(features, shallow, deep, config, grid=grid,
                                    budget=count + 1).num_tokens == count + 1


@pytest.mark.parametrize("grid", [(12, 20), (1, 6)])
def test_aot_merges_on_rectangular_grids(grid):
    features, shallow, deep = video(16, grid, seed=3)   # clips of 2: temporal anchors
    config = small_config(grid, exact_retention=0.25)
    result = aot.reduce_video(features, shallow, deep, config, grid=grid)
    unreduced = features.reshape(-1, DIM)
    # merged tokens exist: some output rows are no patch of the input
    distance = torch.cdist(result.tokens, unreduced).min(1).values
    assert bool((distance > 1e-6).any())
    assert int((result.token_kind == KIND_ANCHOR).sum()) > 0


def _transpose_positions(positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    rows, cols = grid
    return (positions % cols) * rows + torch.div(positions, cols, rounding_mode="floor")


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("reducer", ["aot", "uniform", "visionzip", "dycoke"])
def test_portrait_is_the_transposed_landscape(pooling, reducer):
    """Rows and columns play symmetric roles: the reducer on the transposed video (portrait)
    keeps the transposed tokens of the landscape video, with the same features."""
    landscape = (12, 20)
    frames = 4
    features, shallow, deep = video(frames, landscape, seed=4)

    def transpose(x):
        return x.reshape(frames, 12, 20, -1).transpose(1, 2).reshape(frames, 240, *x.shape[2:])

    # 0.4 of 4 frames > one frame: dycoke keeps frame 0 whole (below, it pools it like uniform)
    config = small_config(landscape, pooling, exact_retention=0.4)
    a = get_reducer(reducer)(features, shallow, deep, config, grid=landscape)
    b = get_reducer(reducer)(transpose(features), transpose(shallow), transpose(deep), config,
                             grid=(20, 12))
    if reducer == "uniform":
        # uniform's regions follow the grid's rows (bands), so only counts and shapes agree
        assert a.num_tokens == b.num_tokens
        assert b.pooled_shape == tuple(reversed(a.pooled_shape))
        return
    pooled = pooled_shape(landscape, pooling)
    key_a = a.token_frame * 10_000 + a.token_kind.long() * 1_000 + \
        _transpose_positions(a.token_position, pooled)
    key_b = b.token_frame * 10_000 + b.token_kind.long() * 1_000 + b.token_position
    if reducer == "visionzip":
        # its contextual targets are spaced in row-major order: only the dominant tokens
        # (picked by attention) are symmetric
        assert a.num_tokens == b.num_tokens
        dominant_a, dominant_b = a.token_kind == KIND_FRAME, b.token_kind == KIND_FRAME
        a = SimpleNamespace(tokens=a.tokens[dominant_a])
        b = SimpleNamespace(tokens=b.tokens[dominant_b])
        key_a, key_b = key_a[dominant_a], key_b[dominant_b]
    order_a, order_b = torch.sort(key_a).indices, torch.sort(key_b).indices
    assert torch.equal(key_a[order_a], key_b[order_b])
    torch.testing.assert_close(a.tokens[order_a], b.tokens[order_b], rtol=1e-7, atol=1e-9)


def test_uniform_regions_on_rectangular_grids():
    for grid in [(6, 10), (10, 6), (3, 7), (1, 5), (5, 1)]:
        rows, cols = grid
        for count in range(1, rows * cols + 1):
            weights, centres = pooling_matrix(grid, count)
            assert weights.shape == (count, rows * cols)
            torch.testing.assert_close(weights.sum(1), torch.ones(count))
            assert bool((weights.sum(0) > 0).all())           # every cell is read
            assert torch.equal(centres, torch.unique(centres))  # distinct, ascending
            assert bool((weights[torch.arange(count), centres] > 0).all())
    # a square grid keeps its rule: square counts are plain adaptive average pooling
    weights, _ = pooling_matrix((14, 14), 49)
    image = torch.randn(1, 1, 14, 14)
    expected = torch.nn.functional.adaptive_avg_pool2d(image, 7).reshape(-1)
    torch.testing.assert_close(weights @ image.reshape(-1), expected)
    assert torch.equal(pooling_matrix(14, 30)[0], pooling_matrix((14, 14), 30)[0])

"""Batched Sinkhorn: POT as the reference solver, marginals, stopping rules, padding, and the
``sinkhorn_check_every`` knob (host syncs of the early stop)."""

import math
import warnings

import pytest
import torch

import aot
from aot.sinkhorn import DEFAULT_CHECK_EVERY_CPU, sinkhorn, uniform_marginals
from aot.synthetic import synthetic_video
from test_hot_path import SyncCounter


def random_problem(batch, m, n, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, m, n, generator=g, dtype=torch.float64) * scale
    a = torch.rand(batch, m, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(batch, n, generator=g, dtype=torch.float64) + 0.1
    return a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True), cost


@pytest.mark.parametrize("log_domain", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_matches_pot_at_convergence(seed, log_domain):
    ot = pytest.importorskip("ot")  # only this test needs POT
    a, b, cost = random_problem(3, 17, 11, seed, scale=2.0)
    ours = sinkhorn(a, b, cost, 0.1, max_iter=5000, stop_threshold=1e-14,
                    stopping="problem", log_domain=log_domain)
    for i in range(3):
        ref = ot.sinkhorn(a[i].numpy(), b[i].numpy(), cost[i].numpy(), 0.1,
                          numItermax=20000, stopThr=1e-13)
        torch.testing.assert_close(ours.plan[i], torch.from_numpy(ref), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(ours.plan[i].sum(1), a[i], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(ours.plan[i].sum(0), b[i], rtol=1e-6, atol=1e-9)


def test_released_stop_rule_iteration_count_matches_hand_loop():
    a, b, cost = random_problem(4, 30, 8, 3, scale=2.0)
    result = sinkhorn(a, b, cost, 0.1, max_iter=100, stop_threshold=1e-2, stopping="batch")
    k = torch.exp(-cost / 0.1)
    r, c = torch.ones_like(a), torch.ones_like(b)
    for it in range(100):
        r_prev = r
        r = a / torch.einsum("bmn,bn->bm", k, c)
        c = b / torch.einsum("bmn,bm->bn", k, r)
        if (r - r_prev).abs().mean() < 1e-2:
            break
    assert int(result.iterations[0]) == it + 1
    assert bool((result.iterations == it + 1).all()), "batch stopping shares one count"
    torch.testing.assert_close(result.plan, r[:, :, None] * k * c[:, None, :])


def test_problem_stopping_equals_solving_one_by_one():
    a, b, cost = random_problem(5, 20, 6, 4, scale=3.0)
    together = sinkhorn(a, b, cost, 0.1, stopping="problem")
    for i in range(5):
        alone = sinkhorn(a[i:i + 1], b[i:i + 1], cost[i:i + 1], 0.1, stopping="batch")
        torch.testing.assert_close(together.plan[i], alone.plan[0])
        assert together.iterations[i] == alone.iterations[0]
    assert len(set(together.iterations.tolist())) > 1, "problems should stop at different times"


def test_check_every_does_not_change_the_result():
    a, b, cost = random_problem(3, 25, 9, 5, scale=2.0)
    for stopping in ("batch", "problem"):
        ref = sinkhorn(a, b, cost, 0.1, stopping=stopping, check_every=1)
        late = sinkhorn(a, b, cost, 0.1, stopping=stopping, check_every=7)
        torch.testing.assert_close(late.plan, ref.plan, rtol=0, atol=0)
        assert torch.equal(late.iterations, ref.iterations)


def test_padding_equals_unpadded_problem():
    a, b, cost = random_problem(1, 9, 5, 6, scale=2.0)
    padded_cost = torch.zeros(1, 12, 7, dtype=cost.dtype)
    padded_cost[:, :9, :5] = cost
    padded_cost[:, 9:, :] = 123.0  # garbage in padding must be ignored
    pa = torch.zeros(1, 12, dtype=a.dtype)
    pa[:, :9] = a
    pb = torch.zeros(1, 7, dtype=b.dtype)
    pb[:, :5] = b
    for log_domain in (False, True):
        full = sinkhorn(pa, pb, padded_cost, 0.1, stopping="problem", log_domain=log_domain)
        ref = sinkhorn(a, b, cost, 0.1, stopping="problem", log_domain=log_domain)
        torch.testing.assert_close(full.plan[:, :9, :5], ref.plan)
        assert float(full.plan[:, 9:].abs().sum() + full.plan[:, :, 5:].abs().sum()) == 0.0


def test_log_domain_float32_matches_float64_at_small_epsilon():
    a, b, cost = random_problem(2, 10, 10, 7, scale=2.0)
    # exp(-cost / 0.01) reaches exp(-200): zero in float32, so only the log domain is exact here.
    ref = sinkhorn(a, b, cost, 0.01, max_iter=5000, stop_threshold=1e-10, log_domain=True)
    logd = sinkhorn(a.float(), b.float(), cost.float(), 0.01, max_iter=5000,
                    stop_threshold=1e-7, log_domain=True)
    assert torch.isfinite(logd.plan).all()
    torch.testing.assert_close(logd.plan.double(), ref.plan, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(logd.plan.sum(1), b.float(), rtol=1e-3, atol=1e-6)


def test_uniform_marginals_and_bad_arguments():
    valid = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(uniform_marginals(valid), torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))
    a, b, cost = random_problem(1, 3, 2, 0)
    with pytest.raises(ValueError, match="stopping='sometimes'"):
        sinkhorn(a, b, cost, 0.1, stopping="sometimes")
    with pytest.raises(ValueError, match=r"cost \(B, M, N\)"):
        sinkhorn(a, b, cost[0], 0.1)
    with pytest.raises(ValueError, match="reg=0"):
        sinkhorn(a, b, cost, 0)


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_sinkhorn_check_every_knob_rejects_non_counts(value):
    expected = rf"sinkhorn_check_every={value!r}: expected an integer >= 0"
    with pytest.raises(ValueError, match=expected):
        aot.AOTConfig(sinkhorn_check_every=value)
    for ok in (None, 0, 1, 10):
        assert aot.AOTConfig(sinkhorn_check_every=ok).sinkhorn_check_every == ok


@pytest.mark.parametrize("log_domain", [False, True], ids=["plain", "log"])
@pytest.mark.parametrize("preset", ["paper-ov-mvbench", "paper-video"])
def test_sinkhorn_check_every_knob_keeps_the_output(preset, log_domain):
    # Converged problems are frozen, so looking at the device every iteration, every 3, once at
    # the end (1000 > sinkhorn_iterations) or never (0: all iterations run) gives the same bits,
    # in the intra (one stop test per video) and temporal (per problem) solves alike.
    feats, shallow, deep = synthetic_video(12, dim=16, seed=2)
    base = aot.AOTConfig.preset(preset, log_domain=log_domain)
    ref = aot.reduce_video(feats, shallow, deep, base)
    assert ref.num_tokens < ref.denominator
    for every in (0, 1, 3, 1000):
        out = aot.reduce_video(feats, shallow, deep, base.replace(sinkhorn_check_every=every))
        assert torch.equal(out.tokens, ref.tokens), every
        assert torch.equal(out.token_position, ref.token_position), every


def test_sinkhorn_check_every_knob_removes_the_loop_syncs(monkeypatch):
    # A tolerance no problem reaches: every solve runs all its iterations. The stop test (the
    # CPU default: every DEFAULT_CHECK_EVERY_CPU iterations) costs one host sync per test and
    # solve; 0 costs none, so the call's other syncs (anchor split, overflow check, output
    # length) stay alone.
    feats, shallow, deep = synthetic_video(16, dim=16, seed=4)  # clips of 2: one temporal step
    counts = {}
    for every in (None, 0):
        for iterations in (10, 30):
            cfg = aot.AOTConfig(sinkhorn_check_every=every, sinkhorn_iterations=iterations,
                                sinkhorn_tolerance=0.0)
            counter = SyncCounter(monkeypatch)
            aot.reduce_video(feats, shallow, deep, cfg)
            counts[every, iterations] = counter.count
            monkeypatch.undo()
    # 20 more iterations x 2 solves (the intra one, the temporal step's batch).
    every = DEFAULT_CHECK_EVERY_CPU
    tests = 2 * (math.ceil(30 / every) - math.ceil(10 / every))
    assert counts[None, 30] - counts[None, 10] == tests, counts
    assert counts[0, 10] == counts[0, 30] < counts[None, 10], counts


@pytest.mark.parametrize("log_domain", [False, True])
@pytest.mark.parametrize("reg", [0.1, 0.002])  # 0.002: the plain kernel underflows (fallback)
def test_overwrite_cost_gives_the_same_plan_in_the_cost_memory(log_domain, reg):
    # overwrite_cost turns the caller's cost in place into the plan (no new (B, M, N) tensor):
    # the same bits as the default, which leaves the cost as it was. Padding included.
    a, b, cost = random_problem(3, 12, 7, 8, scale=2.0)
    a, b, cost = a.float(), b.float(), cost.float()
    a[1, 9:], b[2, 5:] = 0.0, 0.0
    cost[1, 9:] = 123.0  # garbage in padding must be ignored either way
    kept = cost.clone()
    with warnings.catch_warnings(record=True) as fallback:
        warnings.simplefilter("always")
        ref = sinkhorn(a, b, cost, reg, stopping="problem", log_domain=log_domain)
        assert torch.equal(cost, kept)
        out = sinkhorn(a, b, cost, reg, stopping="problem", log_domain=log_domain,
                       overwrite_cost=True)
    assert len(fallback) == (0 if log_domain or reg == 0.1 else 2)
    assert torch.equal(out.plan, ref.plan) and torch.equal(out.iterations, ref.iterations)
    assert out.plan.data_ptr() == cost.data_ptr()
    assert float(out.plan[1, 9:].abs().sum() + out.plan[2, :, 5:].abs().sum()) == 0.0

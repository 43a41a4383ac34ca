"""The Sinkhorn loops' op budget, and their hoisted/fused forms against the released ones.

On a GPU each tensor op of a loop iteration is a kernel launch on vectors of a few hundred
entries, so the loops are launch-bound: the op count per iteration is the cost. These tests pin
that count (a regression guard) and check, bit for bit and on special values, that the fused
forms give what the released loop gave.
"""

import math
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from aot.sinkhorn import (
    SinkhornResult,
    StopRule,
    _log_update,
    _scale_update,
    masked_log_kernel,
    sinkhorn,
    sinkhorn_log,
    sinkhorn_scaling,
)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that compute (views excluded) and their names."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def padded_problem(seed, batch=5, m=23, n=9, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, m, n, generator=g, dtype=dtype) * 2
    a = torch.rand(batch, m, generator=g, dtype=dtype) + 0.05
    b = torch.rand(batch, n, generator=g, dtype=dtype) + 0.05
    a[torch.rand(batch, m, generator=g) < 0.3] = 0  # padded rows and columns
    b[torch.rand(batch, n, generator=g) < 0.3] = 0
    a[1] = 0  # a problem without rows
    b[2, 1:] = 0  # a problem with one column
    return a / a.sum(1, keepdim=True).clamp(min=1e-9), b / b.sum(1, keepdim=True), cost


def ops_per_iteration(log_domain, stopping):
    a, b, cost = padded_problem(0)
    counts = {}
    for iterations in (2, 12):
        with OpCounter() as counter:  # never converges: exactly this many iterations
            sinkhorn(a, b, cost, 0.05, max_iter=iterations, stop_threshold=-1.0,
                     stopping=stopping, log_domain=log_domain, check_every=0)
        counts[iterations] = counter.names
    extra = list(counts[12])
    for name in counts[2]:
        extra.remove(name)
    return extra  # the ops of 10 iterations


@pytest.mark.parametrize("stopping", ["batch", "problem"])
@pytest.mark.parametrize("log_domain, budget", [(False, 17), (True, 24)])
def test_iteration_op_budget(log_domain, budget, stopping):
    # Counted this way (logsumexp as one op), the released loops made 32 ops per plain
    # iteration and 44 in the log domain, Python scalars made into device tensors included.
    ops = ops_per_iteration(log_domain, stopping)
    assert len(ops) <= 10 * budget, (len(ops) / 10, sorted(set(ops)))
    assert "scalar_tensor" not in ops and "_local_scalar_dense" not in ops, sorted(set(ops))


def released_scale_update(marginal, kernel_product, valid):
    ok = valid & (kernel_product > 0)
    return torch.where(ok, marginal / torch.where(ok, kernel_product, 1.0), 0.0)


def released_log_update(log_marginal, log_terms, dim, valid):
    lse = torch.logsumexp(log_terms, dim=dim)
    ok = valid & torch.isfinite(lse)
    return torch.where(ok, log_marginal - torch.where(ok, lse, 0.0), -math.inf)


def released_stop_test(change, row_valid, stopping, stop_threshold):
    change = change.masked_fill(~row_valid, 0.0)
    if stopping == "batch":
        mean = change.sum() / row_valid.sum().clamp(min=1).to(change.dtype)
        return (mean < stop_threshold).expand(change.shape[0])
    mean = change.sum(1) / row_valid.sum(1).clamp(min=1).to(change.dtype)
    return mean < stop_threshold


def bits(t):
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


SPECIAL = [0.0, -0.0, 1e-45, 1e-38, 3e-3, 1.0, 3e38, math.inf, -1.0, math.nan]


def test_scale_update_equals_the_released_form_on_special_values():
    kp = torch.tensor(SPECIAL)
    marginal = torch.tensor([0.0, -0.0, 0.5, -0.5, math.nan, 1e-3, math.inf])
    kp, marginal = torch.broadcast_tensors(kp[None, :], marginal[:, None])
    valid = marginal > 0
    got = _scale_update(torch.where(valid, marginal, 0.0), kp, torch.zeros(()))
    assert torch.equal(bits(got), bits(released_scale_update(marginal, kp, valid)))


def test_log_update_equals_the_released_form_on_special_values():
    g = torch.Generator().manual_seed(1)
    terms = torch.randn(3, 6, 5, generator=g) * 30
    terms[0, 1] = -math.inf  # an all -inf row: logsumexp -inf
    terms[0, 2, 3] = math.nan
    terms[1, 4, 0] = math.inf
    terms[2, :, 2] = -math.inf
    for dim, size in ((2, 6), (1, 5)):
        marginal = torch.rand(3, size, generator=g)
        marginal[0, 0] = 0
        marginal[1, 1] = math.inf
        valid = marginal > 0
        log_marginal = torch.where(valid, marginal.log(), -math.inf)
        got = _log_update(log_marginal, terms, dim, torch.tensor(-math.inf))
        want = released_log_update(log_marginal, terms, dim, valid)
        assert torch.equal(bits(got), bits(want)), dim


@pytest.mark.parametrize("stopping", ["batch", "problem"])
def test_stop_rule_equals_the_released_stop_test(stopping):
    g = torch.Generator().manual_seed(2)
    row_valid = torch.rand(6, 40, generator=g) > 0.3
    row_valid[2] = False
    for scale in (1e-3, 1e-2, 0.1):
        change = (torch.rand(6, 40, generator=g) * 2 * scale).masked_fill(~row_valid, 0.0)
        want = released_stop_test(change, row_valid, stopping, 1e-2)
        assert torch.equal(StopRule(row_valid, stopping, 1e-2, change.dtype)(change), want)


def released_scaling(a, b, kernel, *, max_iter, stop_threshold, stopping, check_every):
    """The plain-domain loop as released, op for op."""
    row_valid, col_valid = a > 0, b > 0
    r, c = row_valid.to(kernel.dtype), col_valid.to(kernel.dtype)
    active = torch.ones(kernel.shape[0], dtype=torch.bool)
    iterations = torch.zeros(kernel.shape[0], dtype=torch.long)
    for it in range(max_iter):
        r_new = released_scale_update(a, torch.bmm(kernel, c[:, :, None])[:, :, 0], row_valid)
        c_new = released_scale_update(b, torch.bmm(kernel.transpose(1, 2), r_new[:, :, None])
                                      [:, :, 0], col_valid)
        converged = released_stop_test((r_new - r).abs(), row_valid, stopping, stop_threshold)
        r = torch.where(active[:, None], r_new, r)
        c = torch.where(active[:, None], c_new, c)
        iterations += active.long()
        active = active & ~converged
        if check_every and (it + 1) % check_every == 0 and not bool(active.any()):
            break
    return SinkhornResult(r[:, :, None] * kernel * c[:, None, :], iterations)


def released_log(a, b, cost, reg, *, max_iter, stop_threshold, stopping, check_every):
    """The log-domain loop as released, op for op."""
    row_valid, col_valid = a > 0, b > 0
    entry_valid = row_valid[:, :, None] & col_valid[:, None, :]
    tiny = torch.finfo(cost.dtype).tiny
    log_k = torch.where(entry_valid, cost / -reg, -math.inf)
    log_a = torch.where(row_valid, a.clamp(min=tiny).log(), -math.inf)
    log_b = torch.where(col_valid, b.clamp(min=tiny).log(), -math.inf)
    f = torch.where(row_valid, 0.0, -math.inf).to(cost.dtype)
    g = torch.where(col_valid, 0.0, -math.inf).to(cost.dtype)
    active = torch.ones(cost.shape[0], dtype=torch.bool)
    iterations = torch.zeros(cost.shape[0], dtype=torch.long)
    for it in range(max_iter):
        f_new = released_log_update(log_a, log_k + g[:, None, :], 2, row_valid)
        g_new = released_log_update(log_b, log_k + f_new[:, :, None], 1, col_valid)
        change = torch.where(row_valid, (1 - torch.exp(f - f_new)).abs(), 0.0)
        converged = released_stop_test(change, row_valid, stopping, stop_threshold)
        f = torch.where(active[:, None], f_new, f)
        g = torch.where(active[:, None], g_new, g)
        iterations += active.long()
        active = active & ~converged
        if check_every and (it + 1) % check_every == 0 and not bool(active.any()):
            break
    plan = torch.exp(f[:, :, None] + log_k + g[:, None, :])
    return SinkhornResult(plan.masked_fill(~entry_valid, 0.0), iterations)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stopping", ["batch", "problem"])
def test_loops_equal_the_released_loops_bit_for_bit(dtype, stopping):
    for seed in range(3):
        a, b, cost = padded_problem(seed, dtype=dtype)
        a[3, 2] = -0.0  # a padded row written as -0
        for reg, check_every, threshold in ((0.05, 1, 1e-2), (0.3, 0, 1e-6), (2e-3, 3, 1e-3)):
            options = {"max_iter": 60, "stop_threshold": threshold, "stopping": stopping,
                       "check_every": check_every}
            log_kernel = masked_log_kernel(cost, reg, a > 0, b > 0)
            kernel = log_kernel.exp()
            for got, want in ((sinkhorn_scaling(a, b, kernel.clone(), **options),
                               released_scaling(a, b, kernel, **options)),
                              (sinkhorn_log(a, b, log_kernel, **options),
                               released_log(a, b, cost, reg, **options))):
                assert torch.equal(bits(got.plan), bits(want.plan)), (seed, reg)
                assert torch.equal(got.iterations, want.iterations), (seed, reg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stopping", ["batch", "problem"])
def test_deferred_stop_test_equals_the_guarded_loop_bit_for_bit(dtype, stopping):
    # The default plain-domain path (check_every > 0) runs the deferred loop; padding, problems
    # without rows or columns, a zero tolerance and any test interval give the guarded loop's
    # plan and iteration counts.
    for seed in range(3):
        a, b, cost = padded_problem(seed, dtype=dtype)
        if stopping == "batch":  # the batch mean needs no empty problem to take the fast path
            a[1], b[2] = padded_problem(seed + 10, dtype=dtype)[0][1], b[3]
        for reg, threshold in ((0.05, 1e-2), (0.3, 1e-6), (0.3, 0.0)):
            log_kernel = masked_log_kernel(cost, reg, a > 0, b > 0)
            want = sinkhorn_scaling(a, b, log_kernel.exp(), max_iter=40, stop_threshold=threshold,
                                    stopping=stopping, check_every=1)
            for every in (1, 3, 7, 100):
                got = sinkhorn(a, b, cost, reg, max_iter=40, stop_threshold=threshold,
                               stopping=stopping, check_every=every)
                assert torch.equal(bits(got.plan), bits(want.plan)), (seed, reg, every)
                assert torch.equal(got.iterations, want.iterations), (seed, reg, every, got.iterations, want.iterations)


def test_a_zero_product_falls_back_to_the_guarded_loop(monkeypatch):
    # Kernel entries of 1e-30 (cost / reg = 69, inside the no-underflow bound) and column
    # marginals of 1e-30: the products K c underflow to 0 at the second iteration, where an
    # unguarded division gives inf and the released loop 0. The deferred loop must notice and
    # the call equal the released loop.
    module = sys.modules["aot.sinkhorn"]
    g = torch.Generator().manual_seed(4)
    cost = torch.rand(3, 12, 5, generator=g) * 0.1
    cost[0] = 6.9
    a = torch.full((3, 12), 1 / 12)
    b = torch.full((3, 5), 1 / 5)
    b[0] = 1e-30
    calls = []
    original = module.sinkhorn_deferred

    def recorded(*args, **kwargs):
        calls.append(original(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(module, "sinkhorn_deferred", recorded)
    got = sinkhorn(a, b, cost, 0.1, max_iter=30, stop_threshold=1e-9, stopping="problem")
    want = sinkhorn_scaling(a, b, masked_log_kernel(cost, 0.1, a > 0, b > 0).exp(), max_iter=30,
                            stop_threshold=1e-9, stopping="problem", check_every=1)
    assert calls == [None], "the deferred loop should have refused this call"
    assert torch.equal(bits(got.plan), bits(want.plan))
    assert torch.equal(got.iterations, want.iterations)


@pytest.mark.parametrize("stopping", ["batch", "problem"])
def test_unrolled_stop_test_on_the_device_equals_the_guarded_loop(stopping):
    # What the CUDA graph runs: every iteration, then the stop test of all of them on the
    # device; no padding (the intra solves). Same plan and counts, and an ok flag.
    from aot.sinkhorn import sinkhorn_unrolled

    g = torch.Generator().manual_seed(6)
    cost = torch.rand(5, 23, 9, generator=g) * 2
    a, b = torch.full((5, 23), 1 / 23), torch.full((5, 9), 1 / 9)
    for reg, threshold in ((0.05, 1e-2), (0.3, 1e-6), (0.3, 0.0)):
        kernel = torch.exp(cost / -reg)
        want = sinkhorn_scaling(a, b, kernel.clone(), max_iter=40, stop_threshold=threshold,
                                stopping=stopping, check_every=1)
        got, ok = sinkhorn_unrolled(a, b, kernel.clone(), max_iter=40, stop_threshold=threshold,
                                    stopping=stopping)
        assert bool(ok)
        assert torch.equal(bits(got.plan), bits(want.plan)), (reg, threshold)
        assert torch.equal(got.iterations, want.iterations), (reg, threshold)
    # the zero-product case of the fallback test: flagged, not silently different
    cost = torch.rand(3, 12, 5, generator=g) * 0.1
    cost[0] = 6.9
    b = torch.full((3, 5), 1 / 5)
    b[0] = 1e-30
    _, ok = sinkhorn_unrolled(torch.full((3, 12), 1 / 12), b, torch.exp(cost / -0.1),
                              max_iter=30, stop_threshold=1e-9, stopping=stopping)
    assert not bool(ok)

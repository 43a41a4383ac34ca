"""Batched entropic optimal transport (Sinkhorn-Knopp), as AOT's released code runs it.

One signature in the spirit of POT's ``ot.sinkhorn(a, b, M, reg)``, batched over a leading axis
and vectorised: the loop is over iterations only, never over problems or tokens. Two algorithms
share one stop test (:class:`StopRule`): :func:`sinkhorn_scaling` (the released one) and
:func:`sinkhorn_log` (log-domain, for small epsilon and half precision); :func:`sinkhorn` picks.

Released iteration (the Sinkhorn rows of docs/knobs.md)::

    r = 1, c = 1
    repeat up to max_iter times:
        r_prev = r
        r = a / (K c);  c = b / (K^T r)
        stop when mean |r - r_prev| < stop_threshold
    T = diag(r) K diag(c)

Padding: a problem may use fewer rows/columns than the batch tensor holds. Rows with ``a == 0``
and columns with ``b == 0`` are padding: their kernel entries are zeroed, their scalings are 0,
and they do not count in the stop test.

Host syncs: a problem that converged is frozen (its state stops changing), so the loop only needs
to look at the device every ``check_every`` iterations to end early, and the result does not
depend on ``check_every`` (``AOTConfig.sinkhorn_check_every`` for the reducer's solves).
``check_every=0`` never looks: exactly ``max_iter`` iterations of fixed-shape work with no host
sync at all (CUDA graphs, ``torch.compile(fullgraph=True)``), and still the same plan.

Underflow: in the plain domain ``exp(-cost / reg)`` is 0 in float32 once ``cost / reg > ~103``;
a row or column whose kernel entries are all 0 can carry no mass, and the plan silently loses it
(docs/knobs.md, "Small ε and the plain-domain kernel"). :func:`sinkhorn` checks this once per
call, before iterating, and then solves that call in the log domain with a ``RuntimeWarning``. The check is skipped with ``check_every=0`` (no host sync allowed): pass
``log_domain=True`` there for small epsilon.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

STOPPING_MODES = ("batch", "problem")


@dataclass
class SinkhornResult:
    """plan: (B, M, N) transport plans; iterations: (B,) long, iterations each problem ran."""

    plan: torch.Tensor
    iterations: torch.Tensor


def sinkhorn(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, reg: float, *,
             max_iter: int = 100, stop_threshold: float = 1e-2, stopping: str = "batch",
             log_domain: bool = False, check_every: int | None = None,
             overwrite_cost: bool = False) -> SinkhornResult:
    """Entropic OT plans for a batch of problems.

    Args:
        a: (B, M) source marginals (row sums of the plan); 0 marks a padded row.
        b: (B, N) target marginals (column sums); 0 marks a padded column.
        cost: (B, M, N) cost matrices; entries in padded rows/columns are ignored.
        reg: entropic regularisation epsilon; the kernel is ``exp(-cost / reg)``.
        max_iter: at most this many iterations.
        stop_threshold: stop when the mean absolute change of the row scaling ``r`` is below it.
        stopping: ``"batch"`` = one stop test averaged over every valid row of the batch (the
            released behaviour for the frames of one video); ``"problem"`` = each problem stops on
            its own test (identical to solving the problems one by one).
        log_domain: iterate on log-scalings with logsumexp (:func:`sinkhorn_log`). Without it the
            plain kernel is used unless it underflows (then the log domain, with a warning).
        check_every: iterations between host syncs for the early stop; the result does not
            depend on it. Default: 1 on CPU (syncs are free), 10 elsewhere. 0 = never sync: run
            all ``max_iter`` iterations (fixed shapes, CUDA-graph friendly, same result).
        overwrite_cost: turn the cost in place into the kernel and then the plan (no new
            (B, M, N) tensor; the same numbers), for a cost the caller no longer needs.

    Returns:
        :class:`SinkhornResult` with the (B, M, N) plan in the dtype of ``cost`` (float32 at
        least) and the iterations run per problem.
    """
    if stopping not in STOPPING_MODES:
        raise ValueError(f"stopping={stopping!r}: expected one of {STOPPING_MODES}")
    if cost.dim() != 3 or a.shape != cost.shape[:2] or b.shape != (cost.shape[0], cost.shape[2]):
        raise ValueError(f"sinkhorn: expected a (B, M), b (B, N), cost (B, M, N); got "
                         f"a {tuple(a.shape)}, b {tuple(b.shape)}, cost {tuple(cost.shape)}")
    if not reg > 0:
        raise ValueError(f"sinkhorn: reg={reg!r} must be > 0")
    if check_every is None:
        check_every = 1 if cost.device.type == "cpu" else 10
    if check_every < 0:
        raise ValueError(f"sinkhorn: check_every={check_every!r} must be >= 0")
    dtype = torch.promote_types(cost.dtype, torch.float32)
    cost, a, b = cost.to(dtype), a.to(dtype), b.to(dtype)
    if cost.shape[0] == 0 or cost.shape[1] == 0 or cost.shape[2] == 0:
        return SinkhornResult(torch.zeros_like(cost),
                              torch.zeros(cost.shape[0], dtype=torch.long, device=cost.device))
    options = {"max_iter": max_iter, "stop_threshold": stop_threshold, "stopping": stopping,
               "check_every": check_every}
    # Both algorithms start from log K; the plain one exponentiates it in place. New memory is
    # paid in page faults (docs/efficiency.md), so no step writes a second (B, M, N) tensor.
    row_valid, col_valid = a > 0, b > 0
    log_kernel = masked_log_kernel(cost, reg, row_valid, col_valid, overwrite_cost=overwrite_cost)
    if log_domain:
        return sinkhorn_log(a, b, log_kernel, **options)
    if check_every > 0 and bool(kernel_underflows(log_kernel, row_valid, col_valid)):
        warnings.warn(f"sinkhorn: exp(-cost / reg) underflows to 0 for whole rows or columns at "
                      f"reg={reg:g} in {dtype}; solving this call in the log domain instead "
                      f"(set log_domain=True to choose it yourself)", RuntimeWarning, stacklevel=2)
        return sinkhorn_log(a, b, log_kernel, **options)
    return sinkhorn_scaling(a, b, log_kernel.exp_(), overwrite_kernel=True, **options)


def masked_log_kernel(cost: torch.Tensor, reg: float, row_valid: torch.Tensor,
                      col_valid: torch.Tensor, *, overwrite_cost: bool = False) -> torch.Tensor:
    """(B, M, N) ``-cost / reg`` with padded rows and columns set to -inf (kernel entry 0), in
    a new tensor or, with ``overwrite_cost``, in ``cost`` itself."""
    log_kernel = cost.div_(-reg) if overwrite_cost else torch.div(cost, -reg)
    return _fill_padding(log_kernel, row_valid, col_valid, -math.inf)


def _fill_padding(x: torch.Tensor, row_valid: torch.Tensor, col_valid: torch.Tensor,
                  value: float) -> torch.Tensor:
    """``x`` (B, M, N) with ``value`` written in place at padded rows and columns (two
    broadcast fills: no (B, M, N) mask is built)."""
    return (x.masked_fill_(~row_valid[:, :, None], value)
            .masked_fill_(~col_valid[:, None, :], value))


def kernel_underflows(log_kernel: torch.Tensor, row_valid: torch.Tensor,
                      col_valid: torch.Tensor) -> torch.Tensor:
    """0-dim bool: some valid row or column of ``exp(log_kernel)`` is all zeros (it cannot
    carry mass). Read on the row and column maxima: exp is monotone, so a row's largest kernel
    entry is exp of its largest log entry.

    A problem without valid columns (or rows) has nothing to transport; it does not count.
    """
    dead_row = row_valid & col_valid.any(1, keepdim=True) & (log_kernel.amax(2).exp() == 0)
    dead_col = col_valid & row_valid.any(1, keepdim=True) & (log_kernel.amax(1).exp() == 0)
    return dead_row.any() | dead_col.any()


class StopRule:
    """The stop test of both loops: the problems whose row scaling moved less than the
    threshold on average (``"batch"``: the mean over every valid row of the batch decides for
    all, the released behaviour; ``"problem"``: the mean over each problem's valid rows decides
    for it).

    Its loop invariant, the valid-row counts, is computed once per solve: in the loop it would
    cost four tensor ops (four kernel launches on a GPU) per iteration. The rule is the
    released one bit for bit: the same sums divided by the same counts, compared the same way.
    """

    def __init__(self, row_valid: torch.Tensor, stopping: str, stop_threshold: float,
                 dtype: torch.dtype):
        """row_valid: (B, M) bool; stopping: ``"batch"`` or ``"problem"``."""
        self.per_problem = stopping == "problem"
        self.stop_threshold = stop_threshold
        self.batch = row_valid.shape[0]
        counts = row_valid.sum(1) if self.per_problem else row_valid.sum()
        self.counts = counts.clamp(min=1).to(dtype)

    def __call__(self, change: torch.Tensor) -> torch.Tensor:
        """(B,) bool converged, from the (B, M) ``change`` that is already 0 on padding rows."""
        if self.per_problem:
            return change.sum(1) / self.counts < self.stop_threshold
        return (change.sum() / self.counts < self.stop_threshold).expand(self.batch)


def sinkhorn_scaling(a: torch.Tensor, b: torch.Tensor, kernel: torch.Tensor, *, max_iter: int,
                     stop_threshold: float, stopping: str, check_every: int,
                     overwrite_kernel: bool = False) -> SinkhornResult:
    """Plain-domain Sinkhorn on a precomputed kernel (the released algorithm).

    Args:
        a: (B, M), b: (B, N) marginals, 0 on padding; kernel: (B, M, N), 0 on padding.
        check_every: see :func:`sinkhorn` (0 = never sync).
        overwrite_kernel: scale the kernel in place into the plan (one (B, M, N) tensor and one
            pass less; the same numbers), for a kernel the caller no longer needs.
    Returns:
        :class:`SinkhornResult`.

    On a GPU the loop is launch-bound (each op is a kernel launch on tiny vectors), so
    everything that does not change between iterations is made once before it: the
    valid-row counts of the stop test (:class:`StopRule`), the marginals with their padding
    set to 0 (:func:`_scale_update`) and a 0 on the device (a Python 0 in ``torch.where`` is
    made into a new device tensor, one more kernel, each time).
    """
    row_valid, col_valid = a > 0, b > 0
    zero = kernel.new_zeros(())
    # 0 on padding (a padded marginal may be -0.0 or negative): see _scale_update.
    a_valid, b_valid = torch.where(row_valid, a, zero), torch.where(col_valid, b, zero)
    stop = StopRule(row_valid, stopping, stop_threshold, kernel.dtype)
    r, c = row_valid.to(kernel.dtype), col_valid.to(kernel.dtype)
    active = torch.ones(kernel.shape[0], dtype=torch.bool, device=kernel.device)
    iterations = torch.zeros(kernel.shape[0], dtype=torch.long, device=kernel.device)
    kernel_t = kernel.transpose(1, 2)
    for it in range(max_iter):
        # Matrix-vector products read the kernel once; (kernel * c).sum(2) would write a copy.
        r_new = _scale_update(a_valid, torch.bmm(kernel, c[:, :, None])[:, :, 0], zero)
        c_new = _scale_update(b_valid, torch.bmm(kernel_t, r_new[:, :, None])[:, :, 0], zero)
        # r and r_new are both 0 on padding rows, so the change needs no masking there.
        converged = stop((r_new - r).abs())
        # Frozen problems keep their state, so late host checks do not change the result.
        r = torch.where(active[:, None], r_new, r)
        c = torch.where(active[:, None], c_new, c)
        iterations += active
        active = active > converged  # active and not converged, in one op (False < True)
        if check_every and (it + 1) % check_every == 0 and not bool(active.any()):
            break
    if overwrite_kernel:
        return SinkhornResult(kernel.mul_(r[:, :, None]).mul_(c[:, None, :]), iterations)
    return SinkhornResult(r[:, :, None] * kernel * c[:, None, :], iterations)


def sinkhorn_log(a: torch.Tensor, b: torch.Tensor, log_k: torch.Tensor, *,
                 max_iter: int, stop_threshold: float, stopping: str,
                 check_every: int) -> SinkhornResult:
    """Log-domain Sinkhorn: iterates ``f = log r``, ``g = log c`` with logsumexp.

    Never underflows; the stop test uses the relative change ``|1 - r_prev / r|`` of the row
    scaling, since ``r = exp(f)`` itself may overflow. Shapes and arguments as
    :func:`sinkhorn_scaling`, with the (B, M, N) log kernel of :func:`masked_log_kernel`
    instead of the kernel; it is turned in place into the plan. Loop invariants are made once
    before the loop, as there.
    """
    row_valid, col_valid = a > 0, b > 0
    tiny = torch.finfo(log_k.dtype).tiny
    zero, minus_inf = log_k.new_zeros(()), log_k.new_full((), -math.inf)
    # -inf on padding: _log_update relies on it.
    log_a = torch.where(row_valid, a.clamp(min=tiny).log(), minus_inf)
    log_b = torch.where(col_valid, b.clamp(min=tiny).log(), minus_inf)
    f = torch.where(row_valid, zero, minus_inf)  # r = exp(f) = 1 on valid rows
    g = torch.where(col_valid, zero, minus_inf)
    stop = StopRule(row_valid, stopping, stop_threshold, log_k.dtype)
    active = torch.ones(log_k.shape[0], dtype=torch.bool, device=log_k.device)
    iterations = torch.zeros(log_k.shape[0], dtype=torch.long, device=log_k.device)
    terms = torch.empty_like(log_k)  # one scratch for every logsumexp's terms, not one per call
    for it in range(max_iter):
        f_new = _log_update(log_a, torch.add(log_k, g[:, None, :], out=terms), 2, minus_inf)
        g_new = _log_update(log_b, torch.add(log_k, f_new[:, :, None], out=terms), 1, minus_inf)
        # Padding rows: f = f_new = -inf, so exp(f - f_new) is NaN there: masked to 0.
        change = torch.where(row_valid, (1 - torch.exp(f - f_new)).abs(), zero)
        converged = stop(change)
        f = torch.where(active[:, None], f_new, f)
        g = torch.where(active[:, None], g_new, g)
        iterations += active
        active = active > converged  # active and not converged, in one op (False < True)
        if check_every and (it + 1) % check_every == 0 and not bool(active.any()):
            break
    plan = log_k.add_(f[:, :, None]).add_(g[:, None, :]).exp_()  # exp(f + log K + g)
    return SinkhornResult(_fill_padding(plan, row_valid, col_valid, 0.0), iterations)


def _scale_update(marginal: torch.Tensor, kernel_product: torch.Tensor,
                  zero: torch.Tensor) -> torch.Tensor:
    """``marginal / kernel_product`` where the product is > 0, else 0 (padding, empty rows).

    Args:
        marginal: (B, K), 0 on padding; kernel_product: (B, K); zero: 0-dim 0 on the device.

    The released form ``where(ok, a / where(ok, Kc, 1), 0)`` with ``ok = valid & (Kc > 0)``
    gives the same bits in three ops instead of five: on ``ok`` entries both divide ``a`` by
    ``Kc``; elsewhere both give +0, since a padded entry has ``a = +0`` and ``+0 / Kc = +0``
    for any ``Kc > 0``. The division by 0 or NaN elsewhere is discarded by the ``where``.
    """
    return torch.where(kernel_product > 0, marginal / kernel_product, zero)


def _log_update(log_marginal: torch.Tensor, log_terms: torch.Tensor, dim: int,
                minus_inf: torch.Tensor) -> torch.Tensor:
    """``log_marginal - logsumexp(log_terms, dim)`` where the logsumexp is finite, else -inf.

    Args:
        log_marginal: (B, K), -inf on padding; log_terms: (B, M, N) with K its size after
        reducing ``dim``; minus_inf: 0-dim -inf on the device.

    The same bits as ``where(valid & isfinite(lse), log_marginal - lse, -inf)``: on a padding
    entry ``-inf - lse`` is -inf for a finite ``lse``. ``|lse| < inf`` is ``isfinite`` in two
    ops instead of four.
    """
    lse = torch.logsumexp(log_terms, dim=dim)
    return torch.where(lse.abs() < math.inf, log_marginal - lse, minus_inf)


def uniform_marginals(valid: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, K) uniform weights ``1 / count`` over the True entries of ``valid``, 0 elsewhere."""
    counts = valid.sum(-1, keepdim=True).clamp(min=1)
    return valid.to(dtype) / counts  # the integer counts are converted to dtype, then divide

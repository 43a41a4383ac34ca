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

Deferred stop test (:func:`sinkhorn_deferred`, the plain domain with ``check_every > 0``): the
iterations write their scalings into a history, and the stop test of ``check_every`` iterations
is evaluated at once, on the host, from their change sums; each problem then takes its state at
its own stop iteration. An iteration is four tensor ops (two products, two divisions) instead of
seventeen, with the released stop rule to the bit. Its divisions are unguarded: a product that is
0 (which the guarded loop maps to a 0 scaling) shows up as a non-finite change or scaling, and
the call is then solved again by the guarded loop, so the plan never depends on the path.

Underflow: in the plain domain ``exp(-cost / reg)`` is 0 in float32 once ``cost / reg > ~103``;
a row or column whose kernel entries are all 0 can carry no mass, and the plan silently loses it
(docs/knobs.md, "Small ε and the plain-domain kernel"). :func:`sinkhorn` checks this once per
call, before iterating, and then solves that call in the log domain with a ``RuntimeWarning``. The check is skipped with ``check_every=0`` (no host sync allowed): pass
``log_domain=True`` there for small epsilon.
"""

from __future__ import annotations

import functools
import math
import struct
import warnings
from dataclasses import dataclass

import torch

STOPPING_MODES = ("batch", "problem")

#: Largest ``cost / reg`` whose kernel entry ``exp(-cost / reg)`` is a normal number, with a wide
#: margin (float32 normals reach exp(-87.3), float64 exp(-708)): below it no entry is 0.
NO_UNDERFLOW = {torch.float32: 80.0, torch.float64: 700.0}
#: Iterations between two stop tests on the CPU when not given: a test costs about as many
#: operations as an iteration, and an iteration past the stop changes nothing.
DEFAULT_CHECK_EVERY_CPU = 3
#: Floats per 64 bytes: history rows start on the allocator's alignment, as fresh tensors do,
#: so that the products read their operands at the same alignment as the guarded loop.
_ALIGN = 16
#: Largest history rows (batch x row width, in entries) that :func:`sinkhorn_deferred` gathers
#: whole to read the problems' final scalings in one operation; a gather of B rows copies B
#: times the scalings it needs, so large batches take the two exact gathers instead.
_ONE_GATHER = 2 ** 18


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64, float32 for every other float dtype (``torch.promote_types`` with
    float32, without dispatching an operation)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class SinkhornResult:
    """plan: (B, M, N) transport plans; iterations: (B,) long, iterations each problem ran."""

    plan: torch.Tensor
    iterations: torch.Tensor


def sinkhorn(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, reg: float, *,
             max_iter: int = 100, stop_threshold: float = 1e-2, stopping: str = "batch",
             log_domain: bool = False, check_every: int | None = None,
             overwrite_cost: bool = False, cost_bound: float | None = None,
             valid_counts: tuple[list[int], list[int]] | None = None,
             workspace: dict | None = None) -> SinkhornResult:
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
            depend on it. Default: :data:`DEFAULT_CHECK_EVERY_CPU` on CPU, 10 elsewhere. 0 =
            never sync: run all ``max_iter`` iterations (fixed shapes, CUDA-graph friendly, same
            result).
        overwrite_cost: turn the cost in place into the kernel and then the plan (no new
            (B, M, N) tensor; the same numbers), for a cost the caller no longer needs.
        cost_bound: a bound on |cost| the caller knows (e.g. from its formula): it spares the
            host sync that reads the cost's range. Only a speed hint; a wrong one is unsafe.
        valid_counts: (rows, cols), the number of entries > 0 of each problem's ``a`` and
            ``b``, when the caller knows them and its marginals are exactly +0 on padding (as
            :func:`uniform_marginals`): spares two reductions and host syncs.
        workspace: a dict the caller keeps across solves of one shape (e.g. the steps of a
            video's temporal phase): the deferred loop keeps its scaling history there instead
            of allocating one per solve (see :func:`sinkhorn_deferred`).

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
        check_every = DEFAULT_CHECK_EVERY_CPU if cost.device.type == "cpu" else 10
    if check_every < 0:
        raise ValueError(f"sinkhorn: check_every={check_every!r} must be >= 0")
    dtype = working_dtype(cost.dtype)
    cost, a, b = cost.to(dtype), a.to(dtype), b.to(dtype)
    if cost.shape[0] == 0 or cost.shape[1] == 0 or cost.shape[2] == 0:
        return SinkhornResult(torch.zeros_like(cost),
                              torch.zeros(cost.shape[0], dtype=torch.long, device=cost.device))
    options = {"max_iter": max_iter, "stop_threshold": stop_threshold, "stopping": stopping,
               "check_every": check_every}
    if not log_domain and check_every > 0 and (
            cost_bound < reg * NO_UNDERFLOW[dtype] if cost_bound is not None
            else _kernel_is_normal(cost, reg)):
        # No kernel entry can underflow or overflow (padding included), so the kernel needs no
        # padding mask: the deferred loop maps padded rows and columns to 0 scalings by itself.
        kernel = (cost.div_(-reg) if overwrite_cost else torch.div(cost, -reg)).exp_()
        solved = sinkhorn_deferred(a, b, kernel, valid_counts=valid_counts, workspace=workspace,
                                   **options)
        if solved is not None:
            return solved
        # a product was 0 somewhere: the guarded loop on the same kernel, padding zeroed
        return sinkhorn_scaling(a, b, _fill_padding(kernel, a > 0, b > 0, 0.0),
                                overwrite_kernel=True, **options)
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


@functools.lru_cache(maxsize=16)
def _arange(size: int, device: torch.device) -> torch.Tensor:
    """``torch.arange(size)`` on ``device``, made once (read-only)."""
    return torch.arange(size, device=device)


def _kernel_is_normal(cost: torch.Tensor, reg: float) -> bool:
    """Whether every ``exp(-cost / reg)`` is a normal float (one host sync): |cost / reg| stays
    below :data:`NO_UNDERFLOW` (NaN fails)."""
    low, high = torch.stack(torch.aminmax(cost)).tolist()
    limit = reg * NO_UNDERFLOW[cost.dtype]
    return -limit < low and high < limit


def _empty_stop(rows: int, max_iter: int, stop_threshold: float, dtype: torch.dtype) -> int:
    """The stop iteration of a problem without valid rows or columns in the guarded loop: its
    ``rows`` valid rows (if any) go from the initial scaling 1 to 0 at the first iteration, and
    nothing changes after that."""
    if _below(float(rows), max(rows, 1), stop_threshold, dtype):
        return 1
    return min(2, max_iter) if _below(0.0, 1, stop_threshold, dtype) else max_iter


def _round_up(count: int) -> int:
    return -(-count // _ALIGN) * _ALIGN


def _below(total: float, count: int, threshold: float, dtype: torch.dtype) -> bool:
    """The released stop test ``total / count < threshold`` evaluated as the device evaluates
    it: in float32 for float32 (the quotient of two float32 numbers rounded once from double
    is the float32 quotient, and the tensor comparison rounds the threshold to float32)."""
    if not math.isfinite(total):
        return False
    if dtype == torch.float64:
        return total / count < threshold
    return _float32(total / count) < _float32(threshold)


def _float32(x: float) -> float:
    """``x`` rounded to the nearest float32 (inf beyond its range)."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


class _History:
    """The scalings of consecutive iterations, one row each: ``r`` (B, M) then ``c`` (B, N),
    each block starting on a 64-byte boundary. Grows by doubling."""

    def __init__(self, batch: int, m: int, n: int, rows: int, like: torch.Tensor):
        self.shape = (batch, m, n)
        self.r_size, self.c_start = batch * m, _round_up(batch * m)
        self.width = self.c_start + _round_up(batch * n)
        self.data = like.new_empty(rows, self.width)

    def reserve(self, rows: int) -> None:
        if rows > self.data.shape[0]:
            grown = self.data.new_empty(max(rows, 2 * self.data.shape[0]), self.width)
            grown[:self.data.shape[0]].copy_(self.data)
            self.data = grown

    def r(self, row) -> torch.Tensor:
        batch, m, _ = self.shape
        return self.data[row, :self.r_size].view(batch, m)

    def c(self, row) -> torch.Tensor:
        batch, _, n = self.shape
        return self.data[row, self.c_start:self.c_start + batch * n].view(batch, n)


def sinkhorn_deferred(a: torch.Tensor, b: torch.Tensor, kernel: torch.Tensor, *, max_iter: int,
                      stop_threshold: float, stopping: str, check_every: int,
                      valid_counts: tuple[list[int], list[int]] | None = None,
                      workspace: dict | None = None) -> SinkhornResult | None:
    """Plain-domain Sinkhorn with the stop test deferred (module doc): the plan and iteration
    counts of :func:`sinkhorn_scaling` on the same kernel with its padding zeroed, or None when
    a product was 0 (then the guarded loop must solve it).

    Args:
        a: (B, M), b: (B, N) marginals, 0 (or less) on padding.
        kernel: (B, M, N) ``exp(-cost / reg)``, every entry > 0 (padding included); it is
            scaled in place into the plan.
        check_every: iterations between two evaluations of the stop test (>= 1).
        valid_counts: see :func:`sinkhorn` (then ``a`` and ``b`` are +0 on padding).
        workspace: a dict kept by the caller across solves: the history of one solve is reused
            by the next of the same shape and dtype (nothing reads it after a solve returns), and
            the initial column scalings it holds are not written again for the same ``b``
            tensor (the caller does not modify its marginals).
    Returns:
        :class:`SinkhornResult`, or None.

    Why the results are those of the guarded loop: with every kernel entry positive, a padded
    row (marginal 0) gets the scaling 0 / (K c) = 0 and a padded column 0 / (K^T r) = 0, as the
    guarded loop's 0, so they add exact zeros to every product; a valid row's product is 0 only
    if a scaling under- or overflowed, and then a scaling or a change sum is inf or NaN, which
    the checks below see. A problem without valid rows or columns has a 0 change in the guarded
    loop: it stops at the first iteration (tolerance > 0) with a zero plan.
    """
    batch, m, n = kernel.shape
    dtype = kernel.dtype
    if valid_counts is None:
        row_valid, col_valid = a > 0, b > 0
        zero = kernel.new_zeros(())
        # +0 on padding (a padded marginal may be -0.0 or negative)
        a, b = torch.where(row_valid, a, zero), torch.where(col_valid, b, zero)
        rows, cols = row_valid.sum(1).tolist(), col_valid.sum(1).tolist()
    else:
        rows, cols = valid_counts
    empty = [r == 0 or c == 0 for r, c in zip(rows, cols)]
    per_problem = stopping == "problem"
    if any(empty) and not per_problem:
        return None  # the batch mean would read their undefined scalings
    counts = [max(r, 1) for r in rows] if per_problem else [max(sum(rows), 1)]

    history = None if workspace is None else workspace.get("history")
    if history is None or history.shape != (batch, m, n) or history.data.dtype != dtype \
            or history.data.device != kernel.device:
        history = _History(batch, m, n, min(max_iter, 4 * check_every) + 1, kernel)
        if workspace is not None:
            workspace.update(history=history, c0=None)
    if min(rows, default=m) == m and min(cols, default=n) == n:  # no padding: all ones
        history.data[0].fill_(1.0)  # (and the alignment gaps, which nothing reads)
        if workspace is not None:
            workspace["c0"] = None
    else:  # the initial scalings: 1 on valid entries, 0 on padding
        torch.gt(a, 0, out=history.r(0))
        if workspace is None or workspace["c0"] is not b:
            torch.gt(b, 0, out=history.c(0))
            if workspace is not None:
                workspace["c0"] = b
    kernel_t = kernel.transpose(1, 2)
    stops: list[int | None] = [None]
    if per_problem:
        stops = [_empty_stop(r, max_iter, stop_threshold, dtype) if e else None
                 for r, e in zip(rows, empty)]
    done = 0
    while done < max_iter and None in stops:
        steps = min(check_every, max_iter - done)
        history.reserve(done + steps + 1)
        for row in range(done + 1, done + steps + 1):
            r, c = history.r(row), history.c(row)
            torch.bmm(kernel, history.c(row - 1)[:, :, None], out=r[:, :, None])
            torch.div(a, r, out=r)
            torch.bmm(kernel_t, r[:, :, None], out=c[:, :, None])
            torch.div(b, c, out=c)
        block = history.data[done:done + steps + 1, :history.r_size]
        change = torch.sub(block[1:], block[:-1]).abs_()
        sums = (change.view(steps, batch, m).sum(2) if per_problem else change.sum(1)[:, None])
        for offset, row_sums in enumerate(sums.tolist(), start=done + 1):
            for i, total in enumerate(row_sums):
                if stops[i] is not None:
                    continue
                if not math.isfinite(total):
                    return None  # a scaling was inf or NaN: a guarded division would differ
                if _below(total, counts[i], stop_threshold, dtype):
                    stops[i] = offset
        done += steps
    stops = [max_iter if s is None else s for s in stops]
    if not per_problem:
        stops = stops * batch
    # an empty problem may stop after the last computed row; its plan is 0 whatever it reads
    at = [min(s, done) for s in stops]
    if len(set(at)) == 1:
        r, c = history.r(at[0]), history.c(at[0])
    elif batch * history.width <= _ONE_GATHER:
        # Each problem's whole history row in one gather; its r and c blocks are then strided
        # views: problem b's scalings start b * m (b * n) entries into its own row.
        chosen = history.data[torch.tensor(at, device=kernel.device)]  # (B, width), fresh
        r = chosen.as_strided((batch, m), (history.width + m, 1), 0)
        c = chosen.as_strided((batch, n), (history.width + n, 1), history.c_start)
    else:
        index = torch.tensor(at, device=kernel.device)
        problems = _arange(batch, kernel.device)
        r = history.data[:, :history.r_size].view(-1, batch, m)[index, problems]
        c = history.data[:, history.c_start:history.c_start + batch * n].view(-1, batch, n)[
            index, problems]
    c_sums = c.sum(1).tolist()
    if any(not math.isfinite(total) for total, e in zip(c_sums, empty) if not e):
        return None  # a column product was 0: its scaling is inf where the guard gives 0
    plan = kernel.mul_(r[:, :, None]).mul_(c[:, None, :])
    if any(empty):
        plan.masked_fill_(torch.tensor(empty, device=kernel.device)[:, None, None], 0.0)
    return SinkhornResult(plan, torch.tensor(stops, device=kernel.device))


def sinkhorn_unrolled(a: torch.Tensor, b: torch.Tensor, kernel: torch.Tensor, *, max_iter: int,
                      stop_threshold: float, stopping: str) -> tuple[SinkhornResult, torch.Tensor]:
    """The deferred loop without a host sync (for CUDA graphs): all ``max_iter`` unguarded
    iterations into a history, then the released stop test of every iteration at once on the
    device, each problem's state taken at its first passing iteration.

    Args:
        a: (B, M), b: (B, N) marginals, every entry > 0 (no padding); kernel: (B, M, N), every
            entry > 0, scaled in place into the plan.
    Returns:
        (:class:`SinkhornResult`, ok): ``ok`` is a 0-dim bool tensor, False when a scaling was
        inf or NaN up to a problem's stop (then the guarded loop must solve the call; the plan
        is not that loop's). Four operations per iteration, a dozen for the stop test.
    """
    batch, m, n = kernel.shape
    history = _History(batch, m, n, max_iter + 1, kernel)
    history.r(0).fill_(1.0)
    history.c(0).fill_(1.0)
    kernel_t = kernel.transpose(1, 2)
    for row in range(1, max_iter + 1):
        r, c = history.r(row), history.c(row)
        torch.bmm(kernel, history.c(row - 1)[:, :, None], out=r[:, :, None])
        torch.div(a, r, out=r)
        torch.bmm(kernel_t, r[:, :, None], out=c[:, :, None])
        torch.div(b, c, out=c)
    scalings = history.data[:, :history.r_size]
    change = torch.sub(scalings[1:], scalings[:-1]).abs_().view(max_iter, batch, m)
    if stopping == "problem":
        sums, count = change.sum(2), m  # (max_iter, B)
    else:
        sums, count = change.sum((1, 2))[:, None].expand(max_iter, batch), batch * m
    passed = sums / kernel.new_full((), float(count)) < stop_threshold
    # the first passing iteration (1-based), max_iter where none passes
    first = torch.argmax(passed.to(torch.uint8), dim=0)
    stops = torch.where(passed.any(0), first + 1, max_iter)
    problems = _arange(batch, kernel.device)
    r = history.data[:, :history.r_size].view(-1, batch, m)[stops, problems]
    c = history.data[:, history.c_start:history.c_start + batch * n].view(-1, batch, n)[
        stops, problems]
    before_stop = _arange(max_iter, kernel.device)[:, None] < stops[None, :]
    ok = ~(before_stop & ~torch.isfinite(sums)).any() & torch.isfinite(c.sum())
    plan = kernel.mul_(r[:, :, None]).mul_(c[:, None, :])
    return SinkhornResult(plan, stops), ok


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

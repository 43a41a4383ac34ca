"""Batched entropic optimal transport (Sinkhorn-Knopp), as AOT's released code runs it.

One signature in the spirit of POT's ``ot.sinkhorn(a, b, M, reg)``, batched over a leading axis
and vectorised: the loop is over iterations only, never over problems or tokens.

Released iteration (aot-method.md §6)::

    r = 1, c = 1
    repeat up to max_iter times:
        r_prev = r
        r = a / (K c);  c = b / (K^T r)
        stop when mean |r - r_prev| < stop_threshold
    T = diag(r) K diag(c)

Padding: a problem may use fewer rows/columns than the batch tensor holds. Rows with ``a == 0``
and columns with ``b == 0`` are padding: their kernel entries are zeroed, their scalings are 0,
and they do not count in the stop test.
"""

from __future__ import annotations

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
             log_domain: bool = False, check_every: int | None = None) -> SinkhornResult:
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
        log_domain: iterate on log-scalings with logsumexp (stable for small ``reg`` and half
            precision inputs); the stop test then uses the relative change of ``r = exp(f)``,
            since ``r`` itself may overflow.
        check_every: iterations between host syncs for the early stop. A problem that converged
            is frozen at once, so the result does not depend on this value; only wasted work
            does. Default: 1 on CPU (syncs are free), 10 elsewhere.

    Returns:
        :class:`SinkhornResult` with the (B, M, N) plan in the dtype of ``cost`` (float32 at
        least) and the iterations run per problem.
    """
    if stopping not in STOPPING_MODES:
        raise ValueError(f"stopping={stopping!r}: expected one of {STOPPING_MODES}")
    if cost.dim() != 3 or a.shape != cost.shape[:2] or b.shape != (cost.shape[0], cost.shape[2]):
        raise ValueError(f"sinkhorn: expected a (B, M), b (B, N), cost (B, M, N); got "
                         f"a {tuple(a.shape)}, b {tuple(b.shape)}, cost {tuple(cost.shape)}")
    if reg <= 0:
        raise ValueError(f"sinkhorn: reg={reg!r} must be > 0")
    if check_every is None:
        check_every = 1 if cost.device.type == "cpu" else 10
    dtype = torch.promote_types(cost.dtype, torch.float32)
    cost, a, b = cost.to(dtype), a.to(dtype), b.to(dtype)
    row_valid, col_valid = a > 0, b > 0
    entry_valid = row_valid[:, :, None] & col_valid[:, None, :]
    batch = cost.shape[0]
    iterations = torch.zeros(batch, dtype=torch.long, device=cost.device)
    if batch == 0 or cost.shape[1] == 0 or cost.shape[2] == 0:
        return SinkhornResult(torch.zeros_like(cost), iterations)

    # Stop-test denominators: valid rows of each problem, or of the whole batch.
    rows_per_problem = row_valid.sum(1).clamp(min=1).to(dtype)
    rows_in_batch = row_valid.sum().clamp(min=1).to(dtype)
    active = torch.ones(batch, dtype=torch.bool, device=cost.device)

    if log_domain:
        log_k = torch.where(entry_valid, -cost / reg, -torch.inf)
        log_a = torch.where(row_valid, a.clamp(min=torch.finfo(dtype).tiny).log(), -torch.inf)
        log_b = torch.where(col_valid, b.clamp(min=torch.finfo(dtype).tiny).log(), -torch.inf)
        f = torch.where(row_valid, 0.0, -torch.inf).to(dtype)  # r = exp(f) = 1 on valid rows
        g = torch.where(col_valid, 0.0, -torch.inf).to(dtype)
    else:
        kernel = torch.where(entry_valid, torch.exp(-cost / reg), 0.0)
        r = row_valid.to(dtype)
        c = col_valid.to(dtype)

    for it in range(max_iter):
        if log_domain:
            f_new = _log_update(log_a, log_k + g[:, None, :], dim=2, valid=row_valid)
            g_new = _log_update(log_b, log_k + f_new[:, :, None], dim=1, valid=col_valid)
        else:
            r_new = _scale_update(a, (kernel * c[:, None, :]).sum(2), row_valid)
            c_new = _scale_update(b, (kernel * r_new[:, :, None]).sum(1), col_valid)
        if log_domain:  # exp(f) can overflow here: relative change |r - r_prev| / r instead
            change = (1 - torch.exp(f - f_new)).abs().masked_fill(~row_valid, 0.0)
        else:
            change = (r_new - r).abs().masked_fill(~row_valid, 0.0)
        if stopping == "batch":
            converged = (change.sum() / rows_in_batch < stop_threshold).expand(batch)
        else:
            converged = change.sum(1) / rows_per_problem < stop_threshold
        # Frozen problems keep their state, so late host checks do not change the result.
        keep = active[:, None]
        if log_domain:
            f = torch.where(keep, f_new, f)
            g = torch.where(keep, g_new, g)
        else:
            r = torch.where(keep, r_new, r)
            c = torch.where(keep, c_new, c)
        iterations += active.long()
        active = active & ~converged
        if (it + 1) % check_every == 0 and not bool(active.any()):
            break

    if log_domain:
        plan = torch.exp(f[:, :, None] + log_k + g[:, None, :])
    else:
        plan = r[:, :, None] * kernel * c[:, None, :]
    return SinkhornResult(plan.masked_fill(~entry_valid, 0.0), iterations)


def _scale_update(marginal: torch.Tensor, kernel_product: torch.Tensor,
                  valid: torch.Tensor) -> torch.Tensor:
    """``marginal / kernel_product`` on valid entries, 0 on padding (and on empty rows)."""
    safe = torch.where(valid & (kernel_product > 0), kernel_product, 1.0)
    return torch.where(valid & (kernel_product > 0), marginal / safe, 0.0)


def _log_update(log_marginal: torch.Tensor, log_terms: torch.Tensor, dim: int,
                valid: torch.Tensor) -> torch.Tensor:
    """``log_marginal - logsumexp(log_terms, dim)`` on valid entries, -inf on padding."""
    lse = torch.logsumexp(log_terms, dim=dim)
    ok = valid & torch.isfinite(lse)
    return torch.where(ok, log_marginal - torch.where(ok, lse, 0.0), -torch.inf)


def uniform_marginals(valid: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, K) uniform weights ``1 / count`` over the True entries of ``valid``, 0 elsewhere."""
    counts = valid.sum(-1, keepdim=True).clamp(min=1)
    return valid.to(dtype) / counts.to(dtype)

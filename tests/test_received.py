"""The received attention computed block of queries by block of queries
(aot.anchors.attend_and_receive) equals the full float32 capture, which holds every
probability of the layer."""

import pytest
import torch

from aot.anchors import attend_and_receive, received_attention


def full_capture(q, k, v, scaling, mask=None):
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling
    if mask is not None:
        logits = logits + mask
    probs = logits.softmax(dim=-1)
    return received_attention(probs), torch.matmul(probs.to(v.dtype), v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("block_queries", [1, 7, 50])
@pytest.mark.parametrize("masked", [False, True])
def test_blocks_of_queries_equal_the_full_capture(dtype, block_queries, masked):
    g = torch.Generator().manual_seed(0)
    batch, heads, tokens, dim = 3, 4, 50, 8
    q, k, v = (torch.randn(batch, heads, tokens, dim, generator=g).to(dtype) * 2
               for _ in range(3))
    mask = None
    if masked:  # an additive mask: some keys hidden from some queries
        mask = torch.where(torch.rand(batch, 1, tokens, tokens, generator=g) < 0.2,
                           -torch.inf, 0.0)
        mask[..., 0] = 0.0  # every query sees one key
    want, want_out = full_capture(q, k, v, 0.35, mask)
    block_bytes = batch * heads * tokens * 4 * block_queries
    got, out = attend_and_receive(q, k, v, 0.35, mask, block_bytes=block_bytes)
    assert got.dtype == torch.float32 and got.shape == (batch, tokens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), want_out.float(), rtol=1e-5, atol=1e-5)
    alone, none = attend_and_receive(q, k, None, 0.35, mask, block_bytes=block_bytes)
    assert none is None and torch.equal(alone, got)


def test_received_attention_sums_queries_and_averages_heads():
    # each key's received attention sums to the number of queries over the keys
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, 20, 4, generator=g), torch.randn(2, 3, 20, 4, generator=g)
    got, _ = attend_and_receive(q, k, None, 0.5, block_bytes=2 * 3 * 20 * 4 * 3)
    torch.testing.assert_close(got.sum(1), torch.full((2,), 20.0))

"""Backwards and recurrences done block by block (layers.row_blocks, BACKWARD_SLICE) give the
result of one block: at test sizes everything fits one block, so the slice is made tiny here."""

import pytest
import torch

from selectivbench.models import RecNet
from selectivbench.models import layers


def test_row_blocks_cover_every_row_once_within_the_slice(monkeypatch):
    monkeypatch.setattr(layers, "BACKWARD_SLICE", 10)
    blocks = layers.row_blocks(7, 3)  # 3 rows of 3 per block: 3 + 3 + 1
    assert blocks == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert layers.row_blocks(4, 100) == [slice(i, i + 1) for i in range(4)]  # a row over the slice: one per block


def step(model, x):
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.square().mean().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


# GLA's diagonal scores; the delta rule's UT transform and chunk states, l2norm and gated RMSNorm
@pytest.mark.parametrize("arch", ["gla", "gated_delta_net", "gated_delta_product"])
def test_many_blocks_match_one_block(arch, monkeypatch):
    torch.manual_seed(0)
    model = RecNet(arch, 32, 7, 11, n_layers=1, dropout=0.0)
    x = torch.randn(3, 150, 7)  # 150 steps: a partial last chunk
    y_one, g_one = step(model, x)
    monkeypatch.setattr(layers, "BACKWARD_SLICE", 1000)  # several blocks, the last one partial
    y_many, g_many = step(model, x)
    torch.testing.assert_close(y_many, y_one, rtol=1e-5, atol=1e-6)
    for n in g_one:
        torch.testing.assert_close(g_many[n], g_one[n], rtol=1e-5, atol=1e-6, msg=n)

"""`compile: true` trains through torch.compile with static shapes (train.compiled): every kernel
family must trace and give the eager forward and gradients. One layer, tiny width, CPU inductor;
eval mode because the Transformer's FFN keeps its own dropout (inductor draws other masks)."""

import pytest
import torch

from selectivbench.models import RecNet
from selectivbench.train import compiled

# one architecture per kernel family: delta rule (UT transform, chunk states; shared by the gated
# variants), GLA's secondary chunks, Mamba-2's SSD, Mamba's selective scan, causal SDPA + RoPE
FAMILIES = ["delta_net", "gla", "mamba2", "mamba", "transformer"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", FAMILIES)
def test_compiled_model_matches_eager_forward_and_backward(arch):
    torch.manual_seed(0)
    model = RecNet(arch, 16, 7, 11, n_layers=1, dropout=0.0).eval()
    x = torch.randn(2, 96, 7)  # 96: not a multiple of the chunk sizes (the padded tail is traced too)
    ref = model(x)
    ref.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    out = compiled(model)(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.slow
def test_layers_share_one_compiled_graph_and_dropout_stays_eager():
    """train.compiled compiles per mixer: three layers of one shape run one graph, and the wrapper's
    dropout draws the eager run's masks, so a training forward matches eager in train mode too."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = RecNet("delta_net", 16, 7, 11, n_layers=3)  # dropout 0.2, train mode
    x = torch.randn(2, 64, 7)
    torch.manual_seed(1)
    ref = model(x)
    view = compiled(model)
    torch.manual_seed(1)
    out = view(x)
    assert counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert all(a is b for a, b in zip(view.parameters(), model.parameters()))
    model.eval()  # reaches the view: its modules are the model's
    torch.testing.assert_close(view(x), model(x), rtol=1e-4, atol=1e-5)

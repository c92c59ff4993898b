"""Activation recomputation (RecNet.recompute, config key `recompute`): same numbers, less memory."""

import pytest
import torch

from selectivbench.memory import LiveBytes, saved_tensor_bytes
from selectivbench.models import RecNet, available

VOCAB, CLASSES, WIDTH, B, T = 5, 7, 32, 2, 70


def step(model: RecNet, seed: int = 3):
    """Loss and parameter gradients of one forward+backward, the dropout RNG seeded the same."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(B, T, VOCAB, generator=gen)
    labels = torch.randint(0, CLASSES, (B, T), generator=gen)
    torch.manual_seed(seed)
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), labels.flatten())
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, torch.get_rng_state()


@pytest.mark.parametrize("arch", sorted(set(available()) - {"toy_ema"}))
def test_recompute_gives_identical_loss_and_gradients(arch):
    torch.manual_seed(0)
    model = RecNet(arch, WIDTH, VOCAB, CLASSES, n_layers=2, dropout=0.2).train()
    loss, grads, rng = step(model)
    model.recompute = True
    loss_r, grads_r, rng_r = step(model)
    # the replayed layers drew the same dropout masks (else the loss would match, not the grads)
    # and left the RNG where the plain forward leaves it (the next batch's masks are unchanged)
    assert torch.equal(loss, loss_r)
    assert grads.keys() == grads_r.keys() and all(torch.equal(grads[n], grads_r[n]) for n in grads), arch
    assert torch.equal(rng, rng_r)
    # and dropout was really active: another seed gives another loss
    model.recompute = False
    assert not torch.equal(step(model, seed=4)[0], loss)


def held_after_forward(model: RecNet, x: torch.Tensor) -> int:
    """Bytes kept alive for backward at the end of the forward (the output included)."""
    with LiveBytes() as mem:
        out = model(x)
        held = mem.now
        out.sum().backward()
    return held


@pytest.mark.parametrize("arch", ["gla", "gated_delta_net", "mamba2"])
def test_recompute_keeps_only_each_layers_input(arch):
    x = torch.rand(B, T, VOCAB)
    per_layer = {}
    for recompute in (False, True):
        held = []
        for layers in (1, 2):
            torch.manual_seed(0)
            model = RecNet(arch, WIDTH, VOCAB, CLASSES, n_layers=layers, dropout=0.2, recompute=recompute).train()
            held.append(held_after_forward(model, x))
        per_layer[recompute] = held[1] - held[0]  # what one more layer adds
    # without recomputation a layer keeps what autograd saves for it
    torch.manual_seed(0)
    model = RecNet(arch, WIDTH, VOCAB, CLASSES, n_layers=1, dropout=0.2).train()
    h = model.encoder(x).detach().requires_grad_()
    with saved_tensor_bytes() as saved:
        model.block(0, h)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved_per_layer = sum(n for ptr, n in saved.items() if ptr not in params and ptr != h.untyped_storage().data_ptr())
    input_bytes = B * T * WIDTH * 4  # fp32
    assert per_layer[False] >= saved_per_layer
    # with it, only the layer's input: the expected factor is saved_per_layer / input_bytes
    assert per_layer[True] <= 1.05 * input_bytes
    assert per_layer[False] / per_layer[True] >= 0.95 * saved_per_layer / input_bytes > 10

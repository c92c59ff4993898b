"""Loss and element accuracy (spec §8) against dense reference formulas written here."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selectivbench import metrics
from selectivbench.grammar import generate_grammar
from selectivbench.inputs import InputSpec, make_batch
from selectivbench.metrics import element_accuracy, masked_cross_entropy


def dense_reference_accuracy(logits, labels, mask, element, E=200):
    """§8 literally: G [B, E, L]; S = G @ softmax(Z); target = argmax(G @ onehot(labels))."""
    B, L, C = logits.shape
    G = torch.zeros(B, E, L)
    for b in range(B):
        for t in range(L):
            if mask[b, t]:
                G[b, element[b, t], t] = 1.0
    S = torch.einsum("bel,blc->bec", G, torch.softmax(logits.float(), -1))
    target = torch.einsum("bel,blc->bec", G, F.one_hot(labels, C).float()).argmax(-1)
    return (S.argmax(-1) == target).float().mean()


@pytest.fixture(scope="module")
def batch():
    g = generate_grammar(4, seed=1)
    classes = np.random.default_rng(0).integers(0, g.num_classes, (5, 200)).astype(np.uint16)
    return make_batch(classes, np.arange(5), g, InputSpec(gap_max=0.4, noise=0.1), "train", seed=1), g.num_classes


def informative_logits(batch, C, seed=0):
    """Logits that are right on some steps and wrong on others, so accuracy is strictly between 0 and 1."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch.labels.shape, C, generator=gen)
    hit = torch.rand(batch.labels.shape, generator=gen) < 0.5
    logits += 4 * F.one_hot(batch.labels, C) * hit[..., None]
    return logits


@pytest.mark.parametrize("chunk", [None, 7 * 17])
def test_accuracy_matches_dense_reference(batch, monkeypatch, chunk):
    batch, C = batch
    if chunk:  # force the time-chunked path (7 steps x B x C per chunk... B=5 -> 1 step)
        monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", chunk)
    logits = informative_logits(batch, C)
    acc = element_accuracy(logits, batch.labels, batch.element)
    ref = dense_reference_accuracy(logits, batch.labels, batch.mask, batch.element)
    assert 0.2 < ref < 0.95
    assert acc.item() == pytest.approx(ref.item(), abs=1e-7)


def test_accuracy_sums_probabilities_not_logits():
    # one element, three steps, three classes: summed logits favour class 0, summed softmax class 1
    logits = torch.tensor([[[40.0, 0.0, 0.0], [-10.0, 1.0, 0.0], [-10.0, 1.0, 0.0]]])
    probs = torch.softmax(logits, -1).sum(1)
    assert logits.sum(1).argmax() == 0 and probs.argmax() == 1
    labels = torch.tensor([[1, 1, 1]])
    element = torch.tensor([[0, 0, 0]])
    assert element_accuracy(logits, labels, element, num_elements=1).item() == 1.0
    assert element_accuracy(logits, labels * 0, element, num_elements=1).item() == 0.0


def test_loss_matches_dense_cross_entropy(batch, monkeypatch):
    batch, C = batch
    logits = informative_logits(batch, C, seed=1)
    m = batch.mask.bool()
    ref = F.cross_entropy(logits[m], batch.labels[m])
    assert masked_cross_entropy(logits, batch.labels, batch.mask).item() == pytest.approx(ref.item(), rel=1e-6)
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 3 * C)
    assert masked_cross_entropy(logits, batch.labels, batch.mask).item() == pytest.approx(ref.item(), rel=1e-6)


def test_padding_never_counts(batch):
    batch, C = batch
    assert len(set(batch.mask.sum(1).tolist())) > 1  # samples of different lengths
    logits = informative_logits(batch, C, seed=2)
    pad = ~batch.mask.bool()
    garbage = logits.clone()
    garbage[pad] = 1e4 * torch.randn(int(pad.sum()), C)  # anything at padded steps
    loss = masked_cross_entropy(garbage, batch.labels, batch.mask)
    acc = element_accuracy(garbage, batch.labels, batch.element)
    # each sample alone, unpadded
    per_ce, per_acc, steps = [], [], []
    for b in range(len(batch.labels)):
        n = int(batch.mask[b].sum())
        one = (logits[b : b + 1, :n], batch.labels[b : b + 1, :n])
        per_ce.append(F.cross_entropy(one[0][0], one[1][0], reduction="sum"))
        per_acc.append(element_accuracy(*one, batch.element[b : b + 1, :n]))
        steps.append(n)
    assert loss.item() == pytest.approx((sum(per_ce) / sum(steps)).item(), rel=1e-6)
    assert acc.item() == pytest.approx(torch.stack(per_acc).mean().item(), abs=1e-7)


def test_loss_backpropagates_only_through_valid_steps(batch):
    batch, C = batch
    logits = informative_logits(batch, C).requires_grad_()
    masked_cross_entropy(logits, batch.labels, batch.mask).backward()
    pad = ~batch.mask.bool()
    assert (logits.grad[pad] == 0).all() and (logits.grad[~pad].abs().sum(-1) > 0).all()


def test_long_batch_without_dense_tensor(monkeypatch):
    # Task-4 shape in time (L = 20 200) with few classes: the chunked scatter handles it
    B, L, C = 2, 20200, 3
    element = torch.arange(L).div(101, rounding_mode="floor").expand(B, L).contiguous()
    labels = (element % C).contiguous()
    logits = F.one_hot(labels, C).float() * 2.0
    logits[0, ::101] = torch.tensor([5.0, -5.0, -5.0])  # one wrong step per element cannot flip the sum
    monkeypatch.setattr(metrics, "CHUNK_ELEMENTS", 4096)
    assert element_accuracy(logits, labels, element).item() == 1.0
    logits[1, :, :] = torch.tensor([1.0, 0.0, 0.0])
    assert element_accuracy(logits, labels, element).item() == pytest.approx((1 + 67 / 200) / 2)

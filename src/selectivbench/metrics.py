"""Loss and element accuracy (spec §8).

Both work on time chunks so that a Task-4 test batch (B = 50, L = 20 200, C = 1601: 1.6 G
logits) never needs a second full-size fp32 copy, and the accuracy never builds the spec's dense
B x E x L membership matrix: `element` (the element index of each step, -1 on padding) carries
the same information in O(L).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 26  # logits per chunk (256 MB in fp32)


def _time_chunks(logits: torch.Tensor):
    B, L, C = logits.shape
    step = max(1, CHUNK_ELEMENTS // max(1, B * C))
    for t0 in range(0, L, step):
        yield slice(t0, min(L, t0 + step))


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level cross-entropy averaged over the valid steps (mask == 1) of the batch, in fp32."""
    total = logits.new_zeros((), dtype=torch.float32)
    for t in _time_chunks(logits):
        ce = F.cross_entropy(logits[:, t].float().flatten(0, 1), labels[:, t].flatten(), reduction="none")
        total = total + (ce * mask[:, t].flatten().float()).sum()
    return total / mask.float().sum().clamp_min(1.0)


@torch.no_grad()
def element_scores(logits: torch.Tensor, element: torch.Tensor, num_elements: int = 200) -> torch.Tensor:
    """S[b, e, :] = sum over the steps of element e of softmax(logits) (fp32 [B, E, C])."""
    B, L, C = logits.shape
    scores = torch.zeros(B * num_elements, C, dtype=torch.float32, device=logits.device)
    row = torch.arange(B, device=logits.device).view(B, 1) * num_elements
    for t in _time_chunks(logits):
        el = element[:, t]
        valid = el >= 0
        probs = torch.softmax(logits[:, t].float(), dim=-1)
        scores.index_add_(0, (row + el)[valid], probs[valid])
    return scores.view(B, num_elements, C)


@torch.no_grad()
def element_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, element: torch.Tensor, num_elements: int = 200
) -> torch.Tensor:
    """Fraction of the B x E elements whose summed softmax peaks at the element's class.

    The target of an element is its label (all its steps share it). An element without steps
    (never happens: every sample has 200) scores zeros against target 0 and counts as correct,
    as in the reference.
    """
    B = logits.shape[0]
    pred = element_scores(logits, element, num_elements).argmax(-1)
    valid = element >= 0
    flat = (torch.arange(B, device=logits.device).view(B, 1) * num_elements + element)[valid]
    target = torch.zeros(B * num_elements, dtype=torch.long, device=logits.device)
    target.scatter_(0, flat, labels[valid])
    return (pred.flatten() == target).float().mean()

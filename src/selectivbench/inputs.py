"""From class sequences to model inputs (spec §6) and padded batches (§7).

A sample is 200 elements. Element j is one step holding the one-hot of its symbol, followed by
its gap: zero steps (Tasks 1, 2, 4) or grammatically illegal symbols (Task 3 distractors). Every
step of element j carries the label y_j. Uniform noise is then added to every entry.

All randomness of a sample (gap placement, durations, distractor symbols, noise) comes from
`default_rng([seed, split_code, epoch, index])`, so a sample is reproducible on its own and the
training stream can resume at any position. The reference draws placement from one Generator
shared by its DataLoader workers and the rest from per-worker global RNGs; drawing all of it per
sample is the (harmless) deviation that spec §6 asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SPLIT_CODES = {"train": 0, "test": 1}
NUM_ELEMENTS = 200  # combined_seq_length (§4)


@dataclass
class InputSpec:
    """Gap / noise / distractor settings of §6; durations are in time units of `timestep`."""

    gap_min: float = 0.1  # training gap duration ~ round(U(gap_min, gap_max), 1)
    gap_max: float = 0.1
    test_gap: float | None = None  # fixed test gap duration; None = gap_max (Tasks 1-3)
    gap_prob: float = 1.0  # probability that an element (j >= gap_start) gets a gap
    gap_start: int = 0  # elements before this index never get a gap
    noise: float = 0.0  # U[0, noise) added to every entry (train and test alike, §15.6)
    grammar_gap: bool = False  # gaps are illegal-successor symbols instead of zeros (Task 3)
    timestep: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.gap_min <= self.gap_max:
            raise ValueError(f"need 0 <= gap_min <= gap_max, got gap_min={self.gap_min}, gap_max={self.gap_max}")
        if self.test_gap is not None and self.test_gap < 0:
            raise ValueError(f"test_gap must be >= 0, got {self.test_gap}")
        if not 0 <= self.gap_prob <= 1:
            raise ValueError(f"gap_prob must be in [0, 1], got {self.gap_prob}")
        if self.gap_start < 0:
            raise ValueError(f"gap_start must be >= 0, got {self.gap_start}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.timestep <= 0:
            raise ValueError(f"timestep must be > 0, got {self.timestep}")

    def gap_steps(self, delay: np.ndarray | float) -> np.ndarray:
        """Number of gap steps for gap durations `delay` (time units).

        Zero gaps take ceil(delay / timestep) steps, distractor gaps round(delay / timestep) (§6).
        Rounding the quotient to 6 decimals first makes 0.1..1.0 -> 1..10 and 1, 2, 5, 10 ->
        10, 20, 50, 100 exact, whatever the binary representation of the durations.
        """
        q = np.round(np.asarray(delay, dtype=np.float64) / self.timestep, 6)
        return (np.rint(q) if self.grammar_gap else np.ceil(q)).astype(np.int64)

    def max_gap_steps(self, split: str) -> int:
        delay = self.gap_max if split == "train" else self.test_delay
        return int(self.gap_steps(delay))

    @property
    def test_delay(self) -> float:
        return self.gap_max if self.test_gap is None else self.test_gap

    def max_length(self, split: str, num_elements: int = NUM_ELEMENTS) -> int:
        """Longest possible sample of a split, in steps (for memory probing)."""
        return num_elements * (1 + self.max_gap_steps(split))


@dataclass
class Batch:
    data: torch.Tensor  # float32 [B, L, V]; padding = 0
    labels: torch.Tensor  # int64 [B, L]; padding = 0 (masked out)
    mask: torch.Tensor  # float32 [B, L]; 1 on valid steps
    element: torch.Tensor  # int64 [B, L]; element index 0..199 of each step, -1 on padding

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (self.data, self.labels, self.mask, self.element)))

    def pin_memory(self) -> "Batch":
        """Page-locked copies, so that `.to(cuda, non_blocking=True)` overlaps with compute."""
        return Batch(*(t.pin_memory() for t in (self.data, self.labels, self.mask, self.element)))

    def pad_to_multiple(self, multiple: int) -> "Batch":
        """Right-padded to a length that is a multiple of `multiple` (masked steps: the same loss
        and, for causal models, the same outputs on the valid steps). A compiled model with static
        shapes then sees only a few lengths."""
        L = self.data.shape[1]
        extra = -L % multiple if multiple > 1 else 0
        if extra == 0:
            return self
        pad = lambda t, value: torch.nn.functional.pad(t, (0, 0, 0, extra) if t.dim() == 3 else (0, extra), value=value)  # noqa: E731
        return Batch(pad(self.data, 0.0), pad(self.labels, 0), pad(self.mask, 0.0), pad(self.element, -1))

    @property
    def num_steps(self) -> int:
        """Valid (non-padding) steps in the batch: the tokens a model really processes."""
        return int(self.mask.sum().item())


def _grammar_tables(grammar) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(symbol_of_class, illegal_symbols, illegal count per class) of a grammar (cached on the Grammar)."""
    illegal = np.asarray(grammar.illegal_symbols, dtype=bool)
    return np.asarray(grammar.symbol_of_class, dtype=np.int64), illegal, illegal.sum(1)


def _sample_layout(classes: np.ndarray, rng: np.random.Generator, spec: InputSpec, split: str, illegal, n_illegal):
    """Gap steps of every element and the distractor symbols of one sample.

    Returns (gap_steps int64[E], distractors int64[sum(gap_steps)] or None). Draw order (fixed,
    it defines the stream): gap decisions, training durations, distractor symbols; noise last.
    """
    E = len(classes)
    has_gap = rng.random(E) < spec.gap_prob
    has_gap[: spec.gap_start] = False
    if split == "train":
        delay = np.round(rng.uniform(spec.gap_min, spec.gap_max, E), 1)
    else:
        delay = np.full(E, spec.test_delay)
    steps = np.where(has_gap, spec.gap_steps(delay), 0)
    if not spec.grammar_gap:
        return steps, None
    # Task 3: each gap step is a symbol drawn uniformly among the illegal successors of y_j;
    # nothing is inserted where every symbol is legal.
    count = n_illegal[classes]
    steps = np.where(count > 0, steps, 0)
    owner = np.repeat(np.arange(E), steps)  # element of each distractor step
    pick = (rng.random(len(owner)) * count[owner]).astype(np.int64)  # k-th illegal symbol
    rank = np.cumsum(illegal[classes[owner]], axis=1) - 1
    distractors = np.argmax(rank == pick[:, None], axis=1)
    return steps, distractors


def make_batch(
    classes: np.ndarray,
    indices: np.ndarray,
    grammar,
    spec: InputSpec,
    split: str,
    seed: int,
    epoch: int = 0,
) -> Batch:
    """Assemble samples `indices` (rows `classes`, uint16 [B, E]) into a right-padded Batch."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    classes = np.asarray(classes).astype(np.int64)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if classes.ndim != 2 or len(classes) != len(indices):
        raise ValueError(f"classes must be [B, E] with one index per row, got {classes.shape} and {len(indices)} indices")
    symbol_of_class, illegal, n_illegal = _grammar_tables(grammar)
    B, E = classes.shape
    V = int(grammar.vocab)

    rngs, layouts = [], []
    for b in range(B):
        rng = np.random.default_rng([seed, SPLIT_CODES[split], epoch, int(indices[b])])
        rngs.append(rng)
        layouts.append(_sample_layout(classes[b], rng, spec, split, illegal, n_illegal))
    lengths = [E + int(steps.sum()) for steps, _ in layouts]
    L = max(lengths)

    data = np.zeros((B, L, V), dtype=np.float32)
    labels = np.zeros((B, L), dtype=np.int64)
    element = np.full((B, L), -1, dtype=np.int64)
    for b, (steps, distractors) in enumerate(layouts):
        n = lengths[b]
        span = steps + 1  # symbol step + gap steps
        start = np.cumsum(span) - span
        labels[b, :n] = np.repeat(classes[b], span)
        element[b, :n] = np.repeat(np.arange(E), span)
        if spec.noise > 0:
            # noise first, written in place (the bulk of the batch's cost); adding the one-hots
            # afterwards gives the same float32 values as adding noise to the one-hots.
            rngs[b].random(out=data[b, :n], dtype=np.float32)
            data[b, :n] *= np.float32(spec.noise)
        data[b, start, symbol_of_class[classes[b]]] += 1.0
        if distractors is not None and len(distractors):
            # step i of element j's gap sits at start_j + 1 + i
            owner = np.repeat(np.arange(E), steps)
            offset = np.arange(len(owner)) - np.repeat(np.cumsum(steps) - steps, steps)
            data[b, start[owner] + 1 + offset, distractors] += 1.0
    mask = (element >= 0).astype(np.float32)
    return Batch(torch.from_numpy(data), torch.from_numpy(labels), torch.from_numpy(mask), torch.from_numpy(element))


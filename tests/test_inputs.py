"""Input assembly (spec §6) and batching (§7): layouts, gap statistics, distractors, noise, RNG."""

import numpy as np
import pytest
import torch

from selectivbench.grammar import Grammar, generate_grammar
from selectivbench.inputs import InputSpec, make_batch

TASK1 = InputSpec()
TASK2 = InputSpec(gap_max=1.0, noise=0.2)
TASK3 = InputSpec(gap_prob=0.1, gap_start=50, grammar_gap=True)


@pytest.fixture(scope="module")
def grammar():
    return generate_grammar(6, seed=1)


def random_classes(grammar, n, seed=0):
    """Class sequences; the input rules of §6 hold for any class ids, grammatical or not."""
    return np.random.default_rng(seed).integers(0, grammar.num_classes, (n, 200)).astype(np.uint16)


def element_lengths(batch, b):
    el = batch.element[b].numpy()
    return np.bincount(el[el >= 0], minlength=200)


def test_gap_steps_conversion_is_exact():
    spec = InputSpec()
    assert spec.gap_steps(np.round(np.arange(1, 11) * 0.1, 1)).tolist() == list(range(1, 11))
    assert spec.gap_steps(np.array([1.0, 2.0, 5.0, 10.0])).tolist() == [10, 20, 50, 100]
    assert spec.gap_steps(0.0).item() == 0
    grammar_spec = InputSpec(grammar_gap=True)
    assert grammar_spec.gap_steps(np.array([0.1, 0.2, 1.0])).tolist() == [1, 2, 10]


def test_task1_layout(grammar):
    classes = random_classes(grammar, 3)
    batch = make_batch(classes, np.arange(3), grammar, TASK1, "train", seed=1)
    assert batch.data.shape == (3, 400, grammar.vocab)
    assert batch.data.dtype.is_floating_point and batch.labels.dtype.is_signed
    data, labels = batch.data.numpy(), batch.labels.numpy()
    symbols = grammar.symbol_of_class[classes.astype(np.int64)]
    onehot = np.eye(grammar.vocab, dtype=np.float32)[symbols]
    np.testing.assert_array_equal(data[:, 0::2], onehot)  # symbols at even steps
    assert not data[:, 1::2].any()  # zeros at odd steps
    np.testing.assert_array_equal(labels[:, 0::2], classes)  # labels in pairs
    np.testing.assert_array_equal(labels[:, 1::2], classes)
    np.testing.assert_array_equal(batch.element.numpy(), np.tile(np.repeat(np.arange(200), 2), (3, 1)))
    assert batch.mask.numpy().all()


def test_task2_gap_length_distribution(grammar):
    n = 300  # 60 000 gaps
    batch = make_batch(random_classes(grammar, n), np.arange(n), grammar, InputSpec(gap_max=1.0), "train", seed=3)
    gaps = np.concatenate([element_lengths(batch, b) - 1 for b in range(n)])
    counts = np.bincount(gaps, minlength=11)
    assert counts[0] == 0 and len(counts) == 11  # k in 1..10
    expected = len(gaps) * np.array([1, 2, 2, 2, 2, 2, 2, 2, 2, 1]) / 18
    chi2 = ((counts[1:] - expected) ** 2 / expected).sum()
    assert chi2 < 27.9, (counts, chi2)  # 9 dof, p = 0.001
    lengths = batch.mask.sum(1).numpy()
    assert lengths.max() <= 2200 and abs(lengths.mean() - 1300) < 10


def test_task2_test_layout(grammar):
    classes = random_classes(grammar, 2)
    batch = make_batch(classes, np.arange(2), grammar, TASK2, "test", seed=1)
    assert batch.data.shape == (2, 2200, grammar.vocab)
    for b in range(2):
        assert (element_lengths(batch, b) == 11).all()
    symbols = grammar.symbol_of_class[classes.astype(np.int64)]
    data = batch.data.numpy().reshape(2, 200, 11, grammar.vocab)
    # the symbol step is the only step with an entry >= 1 (noise < 0.2 everywhere)
    assert (data[:, :, 1:] < 0.2).all()
    assert (np.argmax(data[:, :, 0], -1) == symbols).all() and (data[:, :, 0].max(-1) >= 1).all()


def test_task4_test_gap_10_gives_20200_steps(grammar):
    spec = InputSpec(gap_max=1.0, test_gap=10.0, noise=0.2)
    batch = make_batch(random_classes(grammar, 1), [0], grammar, spec, "test", seed=1)
    assert batch.data.shape[1] == 20200 == spec.max_length("test")


def test_task3_distractors_are_rare_illegal_and_late():
    g = generate_grammar(40, seed=1)
    n = 100
    classes = random_classes(g, n, seed=5)
    batch = make_batch(classes, np.arange(n), g, TASK3, "train", seed=1)
    illegal = g.illegal_symbols
    n_distractors = 0
    for b in range(n):
        lengths = element_lengths(batch, b)
        assert set(lengths.tolist()) <= {1, 2}
        assert (lengths[:50] == 1).all()  # never before element 50
        n_distractors += (lengths == 2).sum()
        starts = np.cumsum(lengths) - lengths
        for j in np.flatnonzero(lengths == 2):
            step = batch.data[b, starts[j] + 1].numpy()
            assert step.sum() == 1  # a one-hot, no noise in Task 3
            assert illegal[classes[b, j], step.argmax()]  # an illegal successor of y_j
            assert batch.labels[b, starts[j] + 1] == classes[b, j]
    rate = n_distractors / (150 * n)
    assert abs(rate - 0.1) < 4 * np.sqrt(0.1 * 0.9 / (150 * n)), rate
    assert batch.data.shape[1] == batch.mask.sum(1).max()


def test_task3_distractor_symbols_are_uniform_over_illegal_ones():
    g = generate_grammar(6, seed=2)
    cls = int(np.flatnonzero(g.illegal_symbols.sum(1) >= 3)[0])
    classes = np.full((200, 200), cls, dtype=np.uint16)
    spec = InputSpec(gap_prob=1.0, grammar_gap=True)
    batch = make_batch(classes, np.arange(200), g, spec, "train", seed=1)
    data = batch.data.numpy().reshape(200, 200, 2, g.vocab)[:, :, 1]  # every element has one distractor
    counts = np.bincount(data.argmax(-1).ravel(), minlength=g.vocab)
    allowed = g.illegal_symbols[cls]
    assert (counts[~allowed] == 0).all()
    expected = data.shape[0] * data.shape[1] / allowed.sum()
    assert (np.abs(counts[allowed] - expected) < 5 * np.sqrt(expected)).all(), counts


def test_no_distractor_when_every_symbol_is_legal():
    # hand-made 2-letter automaton: after A0 every symbol (A, B, #) is legal; after B0 only A
    tiny = Grammar(
        amb=2, depth=1, vocab=3, seed=1, states=["A0", "B0", "#"], start_states=["A0"],
        transitions=[("A0", "A0", 1 / 3), ("A0", "B0", 1 / 3), ("A0", "#", 1 / 3), ("B0", "A0", 1.0)],
    )
    assert tiny.illegal_symbols.tolist() == [[True] * 3, [False] * 3, [True, False, True]]
    classes = np.array([[1, 2, 0, 1] * 50], dtype=np.uint16)  # A0 B0 # A0 ...
    batch = make_batch(classes, [0], tiny, InputSpec(grammar_gap=True), "train", seed=1)
    lengths = element_lengths(batch, 0)
    assert (lengths == np.array([1, 2, 2, 1] * 50)).all()
    data = batch.data[0].numpy()
    starts = np.cumsum(lengths) - lengths
    assert set(data[starts[1::4] + 1].argmax(-1).tolist()) <= {0, 2}  # after B0: # or B
    assert batch.data.shape[1] == 300


def test_noise_range_and_mean(grammar):
    batch = make_batch(random_classes(grammar, 4), np.arange(4), grammar, TASK2, "train", seed=1)
    data, mask = batch.data.numpy(), batch.mask.numpy().astype(bool)
    noise = data - (data >= 1)  # remove the one-hots
    valid = noise[mask]
    assert valid.min() >= 0 and valid.max() < np.float32(0.2)
    assert abs(valid.mean() - 0.1) < 0.002
    assert (data[~mask] == 0).all()  # padding stays zero
    assert ((data >= 1).sum(-1) <= 1).all()  # at most one symbol per step...
    assert (data >= 1).sum() == 4 * 200  # ...and one per element


def test_padding_labels_and_element_index(grammar):
    batch = make_batch(random_classes(grammar, 8), np.arange(8), grammar, InputSpec(gap_max=1.0), "train", seed=1)
    mask = batch.mask.numpy().astype(bool)
    assert (batch.element.numpy()[~mask] == -1).all() and (batch.labels.numpy()[~mask] == 0).all()
    assert len(set(mask.sum(1).tolist())) > 1  # lengths really differ
    for b in range(8):  # valid steps form a prefix
        n = mask[b].sum()
        assert mask[b, :n].all() and not mask[b, n:].any()


def test_padding_to_a_length_bucket_adds_only_masked_steps(grammar):
    batch = make_batch(random_classes(grammar, 2), np.arange(2), grammar, TASK2, "train", seed=1)
    L = batch.data.shape[1]
    padded = batch.pad_to_multiple(64)
    assert padded.data.shape[1] % 64 == 0 and 0 <= padded.data.shape[1] - L < 64
    assert torch.equal(padded.data[:, :L], batch.data) and torch.equal(padded.labels[:, :L], batch.labels)
    assert torch.equal(padded.mask[:, :L], batch.mask) and torch.equal(padded.element[:, :L], batch.element)
    assert padded.mask[:, L:].sum() == 0 and (padded.element[:, L:] == -1).all() and padded.data[:, L:].abs().sum() == 0
    assert padded.num_steps == batch.num_steps
    assert padded.pad_to_multiple(64) is padded and batch.pad_to_multiple(1) is batch


def test_per_sample_determinism(grammar):
    classes = random_classes(grammar, 6)
    full = make_batch(classes, np.arange(6), grammar, TASK2, "train", seed=7)
    alone = make_batch(classes[4:5], [4], grammar, TASK2, "train", seed=7)
    n = int(alone.mask.sum())
    assert int(full.mask[4].sum()) == n
    assert np.array_equal(full.data[4, :n].numpy(), alone.data[0].numpy())
    assert np.array_equal(full.labels[4, :n].numpy(), alone.labels[0].numpy())
    again = make_batch(classes, np.arange(6), grammar, TASK2, "train", seed=7)
    assert np.array_equal(full.data.numpy(), again.data.numpy())
    # another epoch, split or seed draws other gaps/noise
    for kw in ({"epoch": 1}, {"seed": 8}):
        other = make_batch(classes[4:5], [4], grammar, TASK2, "train", **{"seed": 7, **kw})
        assert other.data.shape != alone.data.shape or not np.array_equal(other.data.numpy(), alone.data.numpy())
    test = make_batch(classes[4:5], [4], grammar, TASK2, "test", seed=7)
    assert test.data.shape[1] == 2200


def test_bad_inputs_are_named(grammar):
    with pytest.raises(ValueError, match="gap_prob"):
        InputSpec(gap_prob=1.5)
    with pytest.raises(ValueError, match="gap_min"):
        InputSpec(gap_min=0.5, gap_max=0.1)
    with pytest.raises(ValueError, match="split"):
        make_batch(random_classes(grammar, 1), [0], grammar, TASK1, "valid", seed=1)

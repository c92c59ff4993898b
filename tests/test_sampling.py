"""Sequence sampling (spec §4): the fast lock-step sampler is bit-exact with the reference."""

from __future__ import annotations

import numpy as np
import pytest
from reference_sampler import reference_classes, sample_states
from test_grammar import CHECK, CHECK_IDS, grammar

from selectivbench.sampling import CLAIM, WalkTables, _LockstepSampler, sample_classes


@pytest.mark.parametrize("row", CHECK, ids=CHECK_IDS)
def test_sample_idx1_first_states_match_spec(row):
    amb, seed, first6 = row[0], row[1], row[-1].split()
    g = grammar(amb, seed)
    classes = sample_classes(g, seed, 1, 2)
    assert classes.shape == (1, 200) and classes.dtype == np.uint16
    assert [g.state_of_class(int(c)) for c in classes[0, :6]] == first6


def test_reference_sampler_matches_spec():
    g = grammar(40, 1)
    assert sample_states(g, 1, 1)[:6] == "c4 F0 N4 O37 Q23 H7".split()


@pytest.mark.parametrize("amb,seed,start,stop", [(40, 1, 0, 64), (40, 1, 150_000, 150_024), (20, 3, 7, 71), (34, 2, 99_990, 100_010)])
def test_fast_sampler_equals_reference(amb, seed, start, stop):
    g = grammar(amb, seed)
    assert np.array_equal(sample_classes(g, seed, start, stop), reference_classes(g, seed, range(start, stop)))


def _run_engine(tables, seed, start, stop, lanes, block, claim_size=CLAIM):
    out = np.zeros((stop - start, 200), dtype=np.uint16)
    ranges = iter([(a, min(a + claim_size, stop)) for a in range(start, stop, claim_size)])

    def emit(a, b, classes):
        out[a - start : b - start] = classes

    _LockstepSampler(tables, seed, lambda: next(ranges, None), emit, lanes, block).run()
    return out


def test_engine_paths_equal_reference():
    """Tiny word blocks (many refills), few lanes, small claims, and the exact-correction branch
    (normally taken once in ~1e13 steps) forced on every step: all bit-exact."""
    g = grammar(40, 2)
    ref = reference_classes(g, 2, range(30, 60))
    tables = WalkTables(g)
    assert np.array_equal(_run_engine(tables, 2, 30, 60, lanes=7, block=64, claim_size=9), ref)
    tables.near = 2**52  # every lane "close to a slot boundary"
    assert np.array_equal(_run_engine(tables, 2, 30, 60, lanes=16, block=64), ref)


def test_exact_correction_is_needed_and_right():
    """The integer guess (m * k) >> 53 differs from bisect_right(cumsum) right at slot boundaries;
    the correction fixes it. Check every boundary of every out-degree of a grammar."""
    g = grammar(40, 1)
    t = WalkTables(g)
    wrong_guesses = 0
    for k in sorted(set(t.K[t.K > 1].tolist())):
        b = int(np.flatnonzero(t.K == k)[0])
        cum = np.cumsum([1.0 / k] * k)
        for i in range(k):
            edge = int(t.TT[b + 1 + i])
            for m in range(max(edge - 3, 0), min(edge + 3, 2**53)):
                want = min(int(np.searchsorted(cum, m / 2**53, side="right")), k - 1)
                prod = m * k
                j = b + (prod >> 53)
                if t.NEXT[j] != t.NEXT[b + want]:
                    wrong_guesses += 1
                    assert ((prod + t.near) & (2**53 - 1)) < 2 * t.near  # flagged as close
                j = j + (t.TT1[j] <= m) - (t.TT[j] > m)
                # (slot b + k repeats the last successor: u >= cum[-1] < 1, an IndexError upstream)
                assert t.NEXT[j] == t.NEXT[b + want], (k, i, m)
    assert wrong_guesses > 0  # the correction is not dead code


def test_numpy_stream_facts():
    """What the sampler assumes about numpy's Generator(PCG64): random() uses one word
    (word >> 11) * 2**-53; integers(4) takes the top 2 bits of a 32-bit draw, served from the low
    half of a fresh word and then from the buffered high half; doubles do not touch that buffer."""
    rng = np.random.default_rng(12345)
    raw = np.random.PCG64(12345).random_raw(64)
    pattern = "iriirrrirriii" * 3
    w, pending = 0, None
    for op in pattern:
        if op == "r":
            assert rng.random() == float(raw[w] >> np.uint64(11)) * 2.0**-53
            w += 1
        elif pending is None:
            assert rng.integers(4) == (int(raw[w]) & 0xFFFFFFFF) >> 30
            pending, w = int(raw[w]) >> 62, w + 1
        else:
            assert rng.integers(4) == pending
            pending = None


def test_index_ranges_are_independent():
    g = grammar(24, 1)
    whole = sample_classes(g, 1, 0, 40)
    assert np.array_equal(sample_classes(g, 1, 13, 29), whole[13:29])
    assert np.array_equal(sample_classes(g, 1, 13, 29, lanes=3), whole[13:29])
    assert sample_classes(g, 1, 5, 5).shape == (0, 200)


def test_workers_give_the_same_result_in_index_order():
    g = grammar(20, 1)
    n = 2 * CLAIM + 300  # several claims, a partial last one
    two = sample_classes(g, 1, 10, 10 + n, workers=2, lanes=256)
    assert two.shape == (n, 200)
    for a in (0, CLAIM - 8, 2 * CLAIM - 8, n - 12):  # around the claim boundaries and the end
        assert np.array_equal(two[a : a + 12], sample_classes(g, 1, 10 + a, 22 + a)), a
    assert np.array_equal(two[:10], reference_classes(g, 1, range(10, 20)))


def test_sequences_follow_the_grammar():
    g = grammar(40, 1)
    classes = sample_classes(g, 1, 0, 400).astype(np.int64)
    starts = {g.class_id(s) for s in g.start_states}
    legal = np.zeros((g.num_classes, g.num_classes), dtype=bool)
    for s, d, _ in g.transitions:
        legal[g.class_id(s), g.class_id(d)] = True
    prev, cur = classes[:, :-1], classes[:, 1:]
    after_end = prev == 0
    assert np.isin(classes[:, 0], list(starts)).all()
    assert np.isin(cur[after_end], list(starts)).all()  # a new string starts after `#`
    assert legal[prev[~after_end], cur[~after_end]].all()
    # strings are at most 200 long: every complete string between two `#` fits
    for row in classes[:50]:
        ends = np.flatnonzero(row == 0)
        assert (np.diff(ends) <= 200).all()
    ends_per_sample = (classes == 0).sum(axis=1).mean()
    assert 1.4 <= ends_per_sample <= 2.2  # spec §14


def test_bad_ranges():
    g = grammar(20, 1)
    with pytest.raises(ValueError, match="start"):
        sample_classes(g, 1, 10, 5)
    with pytest.raises(ValueError, match="workers"):
        sample_classes(g, 1, 0, 5, workers=0)


def test_worker_failure_is_reported(monkeypatch):
    """A crash inside a worker process raises in the caller instead of hanging or returning zeros."""
    g = grammar(20, 1)
    init = WalkTables.__init__

    def broken_init(self, grammar):
        init(self, grammar)
        self.START = self.START[:0]  # the start-state lookup fails inside the workers

    monkeypatch.setattr(WalkTables, "__init__", broken_init)
    with pytest.raises(RuntimeError, match="sampling worker failed"):
        sample_classes(g, 1, 0, 2 * CLAIM, workers=2)

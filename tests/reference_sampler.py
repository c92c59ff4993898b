"""Straightforward per-sample sampler: the bit-exactness reference for `selectivbench.sampling`.

A line-by-line transcription of spec §4 (and of the authors' `generate_string` /
`generate_sequences`), with successor lists instead of scanning the whole transition list.
Slow (~10 ms/sample for amb 40) and obviously correct; the tests and bench/bench_data.py compare
the fast sampler against it.
"""

from __future__ import annotations

import bisect

import numpy as np

from selectivbench.grammar import END, Grammar

SEQ_LEN_MIN, SEQ_LEN_MAX, COMBINED_LEN = 1, 200, 200


def successor_table(grammar: Grammar) -> dict[str, tuple[list[str], list[float]]]:
    """state -> (successors in transition-list order, cumulative probabilities as np.cumsum makes them)."""
    succ: dict[str, list[tuple[str, float]]] = {}
    for src, dst, p in grammar.transitions:
        succ.setdefault(src, []).append((dst, p))
    return {s: ([d for d, _ in e], list(np.cumsum([p for _, p in e]))) for s, e in succ.items()}


def generate_string(table, start_states, rng) -> list[str]:
    """One grammar string ending in `#`, or [] if it grew longer than SEQ_LEN_MAX."""
    string = [start_states[rng.integers(len(start_states))]]
    while string[-1] != END:
        successors, cum = table[string[-1]]
        if len(successors) == 1:
            string.append(successors[0])
        else:
            string.append(successors[bisect.bisect_right(cum, rng.random())])
        if len(string) > SEQ_LEN_MAX:
            return []
    return string


def sample_states(grammar: Grammar, seed: int, idx: int, table=None) -> list[str]:
    """The 200 latent states of sample `idx`."""
    table = successor_table(grammar) if table is None else table
    rng = np.random.default_rng(seed * idx)
    states: list[str] = []
    while len(states) < COMBINED_LEN:
        string: list[str] = []
        while not SEQ_LEN_MIN <= len(string) <= SEQ_LEN_MAX:
            string = generate_string(table, grammar.start_states, rng)
        states += string
    return states[:COMBINED_LEN]


def reference_classes(grammar: Grammar, seed: int, indices) -> np.ndarray:
    """uint16 [len(indices), 200] class ids, one sample after the other."""
    table = successor_table(grammar)
    rows = [[grammar.class_id(s) for s in sample_states(grammar, seed, int(i), table)] for i in indices]
    return np.array(rows, dtype=np.uint16).reshape(len(rows), COMBINED_LEN)

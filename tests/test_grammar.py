"""Grammar generation (spec §2) and label space (§3) against the check values of spec §14."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import pytest

from selectivbench.grammar import END, LETTERS, generate_grammar, symbol_id

# amb, seed, states, edges, mean out-degree, edges into #, start states, dup, md5[:12], sample idx=1 (first 6)
CHECK = [
    (20, 1, 401, 3268, 8.17, 6, "M13 S8 P5 M3", 1, "7e2e5b700cc2", "M3 O18 P4 H2 A16 #"),
    (20, 2, 401, 3192, 7.98, 4, "E10 O2 M4 N2", 0, "b8711499d27d", "O2 H2 J11 O1 Q14 T11"),
    (20, 3, 401, 3157, 7.89, 4, "R18 O11 B2 T14", 0, "f71edf6e88a5", "R18 J11 K8 F4 S15 J19"),
    (20, 4, 401, 3218, 8.04, 8, "C10 N2 K9 O3", 0, "410930e64888", "O3 G18 H12 D1 A0 T11"),
    (24, 1, 577, 5551, 9.64, 12, "C5 W23 B17 G17", 0, "c225faedb8d3", "W23 Q11 R18 E4 I8 G1"),
    (24, 2, 577, 5586, 9.70, 10, "A16 J6 Q16 Q14", 1, "f38bd712e2c6", "Q14 X19 N1 B15 W8 T19"),
    (24, 3, 577, 5538, 9.61, 11, "S21 M2 W7 W17", 1, "21a4baddef3d", "M2 J12 G9 O14 P2 G11"),
    (24, 4, 577, 5412, 9.40, 6, "N8 H14 D11 H19", 1, "e4c83fc3a2cd", "H19 F1 S0 R20 K3 J21"),
    (26, 1, 677, 7207, 10.66, 6, "I16 F13 Z22 S0", 0, "317b3fd6ba01", "F13 U4 N7 F20 W6 J23"),
    (26, 2, 677, 7166, 10.60, 11, "R3 S9 J25 R24", 1, "72ba1a3cf052", "R24 U11 V23 C6 D3 Y18"),
    (26, 3, 677, 7023, 10.39, 15, "N16 I24 X12 U8", 0, "01332b195ef7", "I24 C4 J6 L16 N1 B24"),
    (26, 4, 677, 7013, 10.37, 6, "O10 O9 E25 J0", 1, "160324ad9900", "J0 Z12 F3 G9 L2 P1"),
    (30, 1, 901, 10885, 12.09, 9, "c26 K12 P11 N19", 0, "9261f2bca7af", "N19 Y27 J19 N21 R15 E13"),
    (30, 2, 901, 10726, 11.92, 14, "R10 S13 a3 L7", 0, "95ed073fdc87", "S13 b23 H0 N7 L26 S14"),
    (30, 3, 901, 10668, 11.85, 18, "a16 K18 V7 L0", 0, "c5f5cefa14a3", "K18 T21 F15 I9 Z22 R4"),
    (30, 4, 901, 10801, 12.00, 11, "b5 T6 R10 B23", 0, "d2b3735a76b1", "B23 I21 D6 U12 Z17 A17"),
    (34, 1, 1157, 15720, 13.60, 11, "T25 g9 F14 a7", 0, "aa5848392f0c", "T25 S32 D23 c22 X31 h30"),
    (34, 2, 1157, 15639, 13.53, 13, "G25 W5 h0 W24", 1, "fdedfee9f4ae", "W24 A30 L11 G1 h25 S2"),
    (34, 3, 1157, 15556, 13.46, 15, "F26 V14 T9 C0", 0, "d311e8bb86e5", "F26 W13 K31 G2 U15 X29"),
    (34, 4, 1157, 15683, 13.57, 8, "Y26 F24 T14 N12", 0, "2be9e8f3880b", "N12 B18 M31 J25 b14 H33"),
    (38, 1, 1445, 22089, 15.30, 20, "S33 N11 E0 W8", 0, "834371690e6a", "E0 I3 L17 P31 J31 S0"),
    (38, 2, 1445, 21967, 15.21, 11, "l9 I17 E31 K32", 0, "3f6f85af67db", "K32 E23 d11 b25 T25 h2"),
    (38, 3, 1445, 22056, 15.27, 13, "j28 R31 E36 h10", 0, "19f8faa7fa99", "R31 H8 B37 a17 B21 E5"),
    (38, 4, 1445, 21956, 15.20, 16, "R22 X13 e23 b32", 0, "1591e4200a2c", "b32 K30 b33 H22 d10 O8"),
    (40, 1, 1601, 25650, 16.03, 22, "a36 c37 c4 I32", 1, "d5efbfd91c9b", "c4 F0 N4 O37 Q23 H7"),
    (40, 2, 1601, 25504, 15.94, 17, "P13 b24 Y2 K17", 0, "c38bbb3b5420", "Y2 W20 e12 L27 M11 K0"),
    (40, 3, 1601, 25757, 16.10, 20, "e3 a28 L16 e10", 1, "c401f945725d", "a28 C5 A6 c11 Y18 Y34"),
    (40, 4, 1601, 25526, 15.95, 12, "K38 j31 F38 J29", 0, "df2ccbf3d916", "F38 l19 S18 f4 C12 j15"),
]
CHECK_IDS = [f"amb{c[0]}-seed{c[1]}" for c in CHECK]


@lru_cache(maxsize=None)
def grammar(amb: int, seed: int):
    """Each of the 28 grammars is generated once per test session (~0.1 s each)."""
    return generate_grammar(amb, seed)


@pytest.mark.parametrize("row", CHECK, ids=CHECK_IDS)
def test_grammar_matches_spec_check_values(row):
    amb, seed, n_states, n_edges, mean_out, into_end, starts, dup, md5, _ = row
    g = grammar(amb, seed)
    assert len(g.states) == n_states
    assert len(g.transitions) == n_edges
    assert round(n_edges / (n_states - 1), 2) == mean_out  # `#` has no out-edges
    assert sum(dst == END for _, dst, _ in g.transitions) == into_end
    assert g.start_states == starts.split()
    assert len(g.start_states) - len({s[0] for s in g.start_states}) == dup
    assert g.fingerprint() == md5
    assert hashlib.md5(g.transitions_text().encode()).hexdigest()[:12] == md5
    assert g.attempts == 1  # spec: the first attempt is valid for all 28 grammars


def test_transition_list_is_a_deterministic_automaton():
    g = grammar(26, 4)
    index = {s: i for i, s in enumerate(g.states)}
    assert g.states[-1] == END and END not in g.start_states
    # state order: letters in sampled order, each expanded to instances 0..D-1
    letters = [s[0] for s in g.states[:-1:g.depth]]
    assert sorted(letters) == sorted(LETTERS[: g.amb])
    assert g.states[:-1] == [a + str(i) for a in letters for i in range(g.depth)]
    # sorted by (source index, target index); uniform probabilities; at most one instance per letter
    keys = [(index[s], index[d]) for s, d, _ in g.transitions]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    out: dict[str, list] = {}
    for s, d, p in g.transitions:
        out.setdefault(s, []).append((d, p))
    assert END not in out and set(out) == set(g.states[:-1])
    for s, edges in out.items():
        assert all(p == 1.0 / len(edges) for _, p in edges)
        assert len({d[0] for d, _ in edges}) == len(edges), f"{s} has two successors with the same letter"
    # every state reaches `#`
    reach, frontier = {END}, [END]
    preds: dict[str, list] = {}
    for s, d, _ in g.transitions:
        preds.setdefault(d, []).append(s)
    while frontier:
        for s in preds.get(frontier.pop(), []):
            if s not in reach:
                reach.add(s)
                frontier.append(s)
    assert reach == set(g.states)


def test_transitions_text_format():
    g = grammar(20, 1)
    lines = g.transitions_text().splitlines()
    assert len(lines) == len(g.transitions)
    assert lines[0].count(", ") == 2
    src, dst, prob = lines[0].split(", ")
    assert (src, dst, float(prob)) == g.transitions[0] and prob == repr(g.transitions[0][2])


def test_class_ids_spec_example_and_bijection():
    g = grammar(40, 1)
    assert symbol_id("c") == 29 and g.class_id("c4") == 1125 and g.class_id(END) == 0
    assert g.num_classes == 1601 and g.symbol_of_class[1125] == 29
    classes = [g.class_id(s) for s in g.states]
    assert sorted(classes) == list(range(g.num_classes))  # every class exactly once
    assert all(g.state_of_class(c) == s for s, c in zip(g.states, classes))
    assert np.array_equal(g.state_classes, classes)
    assert all(g.symbol_of_class[g.class_id(s)] == symbol_id(s[0]) for s in g.states)
    assert [symbol_id(ch) for ch in "AZaz#"] == [1, 26, 27, 52, 0]


@pytest.mark.parametrize("amb,classes", [(20, 401), (24, 577), (26, 677), (30, 901), (34, 1157), (38, 1445), (40, 1601)])
def test_num_classes(amb, classes):
    g = grammar(amb, 1)
    assert g.num_classes == classes and g.vocab == amb + 1 and g.depth == amb


def test_illegal_symbols():
    g = grammar(24, 2)
    illegal = g.illegal_symbols
    assert illegal.shape == (g.num_classes, g.vocab) and illegal.dtype == bool
    assert illegal[0].all()  # after `#` every symbol is a distractor
    legal: dict[int, set] = {}
    for s, d, _ in g.transitions:
        legal.setdefault(g.class_id(s), set()).add(symbol_id(d[0]))
    for c in range(1, g.num_classes):
        assert set(np.flatnonzero(~illegal[c])) == legal[c]


def test_generation_is_deterministic_and_seed_dependent():
    a, b = generate_grammar(20, 2), grammar(20, 2)
    assert a.transitions == b.transitions and a.start_states == b.start_states
    assert generate_grammar(20, 5).fingerprint() != b.fingerprint()


def test_depth_can_differ_from_amb():
    g = generate_grammar(5, 1, depth=3)
    assert len(g.states) == 5 * 3 + 1 and g.num_classes == 16
    assert sorted(g.class_id(s) for s in g.states) == list(range(16))


@pytest.mark.parametrize("kwargs,name", [
    (dict(amb=0, seed=1), "amb"), (dict(amb=53, seed=1), "amb"), (dict(amb=40, seed=0), "seed"),
    (dict(amb=40, seed=-3), "seed"), (dict(amb=40, seed=1, depth=0), "depth"), (dict(amb=40, seed=1.5), "seed"),
])
def test_bad_arguments_name_the_option(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} "):
        generate_grammar(**kwargs)

"""The random ambiguous automaton of SelectivBench (spec §2) and its label space (§3).

`generate_grammar(amb, seed)` reproduces the authors' vendored generator bit-exactly: the same
numpy `Generator` and CPython `random` draws in the same order, so the state list, the start
states and the transition list (hence the fingerprint of §14) are identical.
"""

from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

END = "#"  # end-of-string marker: a symbol (id 0), a terminal state and a class (id 0)
LETTERS = string.ascii_uppercase + string.ascii_lowercase  # the reference's `Symbols()` order
MAX_AMB = len(LETTERS)  # 52: one letter per ambiguous symbol
NUM_START_STATES = 4
BASE_DENSITY = 0.4  # divided by the ambiguity depth before use (§2)
MAX_ATTEMPTS = 100_000


def symbol_id(letter: str) -> int:
    """Input channel of a letter (§3): `#` -> 0, A..Z -> 1..26, a..z -> 27..52."""
    if letter == END:
        return 0
    return ord(letter) - 64 if letter.isupper() else ord(letter) - 70


@dataclass
class Grammar:
    amb: int
    depth: int
    vocab: int  # V = amb + 1 symbols, `#` included
    seed: int
    states: list[str]  # state order of §2: letters in sampled order, each expanded, then `#`
    start_states: list[str]
    transitions: list[tuple[str, str, float]]  # sorted by (source index, target index)
    attempts: int = 1  # generation attempts until the automaton was valid
    state_classes: np.ndarray = field(init=False, repr=False)  # class id of each state (int64)

    def __post_init__(self) -> None:
        self.state_classes = np.array([self.class_id(s) for s in self.states], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        """C = every letter state + `#` (§3); the model's output dimension."""
        return (self.vocab - 1) * self.depth + 1

    def class_id(self, state: str) -> int:
        """Unreduced-state id (§3): `#` -> 0, letter L instance i -> (symbol(L)-1)*D + i + 1."""
        if state == END:
            return 0
        letter, instance = state[0], int(state[1:])
        if letter not in LETTERS[: self.vocab - 1] or not 0 <= instance < self.depth:
            raise ValueError(f"state {state!r} is not a state of this grammar")
        return (symbol_id(letter) - 1) * self.depth + instance + 1

    def state_of_class(self, class_id: int) -> str:
        if class_id == 0:
            return END
        sym, instance = divmod(class_id - 1, self.depth)
        return LETTERS[sym] + str(instance)

    @cached_property
    def symbol_of_class(self) -> np.ndarray:
        """int64[C]: input symbol id of every class (`#` -> 0)."""
        ids = np.arange(self.num_classes, dtype=np.int64)
        return np.where(ids == 0, 0, (ids - 1) // self.depth + 1)

    @cached_property
    def illegal_symbols(self) -> np.ndarray:
        """bool[C, V]: True where the symbol is *not* a legal successor of the class.

        `#` has no successors, so every symbol is illegal after it (Task-3 distractors, §6).
        """
        illegal = np.ones((self.num_classes, self.vocab), dtype=bool)
        for src, dst, _ in self.transitions:
            illegal[self.class_id(src), symbol_id(dst[0])] = False
        return illegal

    def transitions_text(self) -> str:
        """`SRC, DST, PROB` lines (PROB = Python repr of the float), as the reference writes them."""
        return "".join(f"{s}, {d}, {p!r}\n" for s, d, p in self.transitions)

    def fingerprint(self) -> str:
        """First 12 hex chars of the md5 of `transitions_text()` (§14)."""
        return hashlib.md5(self.transitions_text().encode()).hexdigest()[:12]


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_grammar_args(amb: int, seed: int, depth: int | None = None) -> int:
    """Validate (amb, seed, depth); return the depth. Errors name the offending option."""
    if not _is_int(amb) or not 1 <= amb <= MAX_AMB:
        raise ValueError(f"amb must be an integer in 1..{MAX_AMB} (one letter per ambiguous symbol), got {amb!r}")
    # seed 0 would seed every sample's RNG with 0 (rng = default_rng(seed * idx), §4); numpy
    # rejects negative seeds.
    if not _is_int(seed) or seed < 1:
        raise ValueError(f"seed must be an integer >= 1, got {seed!r}")
    depth = amb if depth is None else depth
    if not _is_int(depth) or depth < 1 or amb * depth + 1 > np.iinfo(np.uint16).max:
        raise ValueError(f"depth must be an integer >= 1 with amb*depth+1 <= 65535 (uint16 classes), got {depth!r}")
    if amb * depth < NUM_START_STATES:
        raise ValueError(f"amb*depth must be >= {NUM_START_STATES} (distinct start states), got {amb}*{depth}")
    return int(depth)


def generate_grammar(amb: int, seed: int, depth: int | None = None) -> Grammar:
    """The authors' generator (§2) with every letter ambiguous: V = amb + 1, D = depth (default amb)."""
    depth = check_grammar_args(amb, seed, depth)
    amb, seed = int(amb), int(seed)
    rng = np.random.default_rng(seed)
    py_random = random.Random(int(rng.integers(0, 100)))
    letters = list(LETTERS[:amb])
    density = BASE_DENSITY / depth

    for attempt in range(1, MAX_ATTEMPTS + 1):
        reps = py_random.sample(letters, amb)  # all letters ambiguous: only the order matters
        states = [r + str(i) for r in reps for i in range(depth)] + [END]
        n = len(states)
        first_state_of = {r: k * depth for k, r in enumerate(reps)}  # a letter's states are contiguous

        # Edge sampling (§2 step 4.4): for every source (`#` included, its edges dropped later)
        # and every symbol in letter order then `#`: one candidate target, kept with prob
        # len(cands) * density. The draws happen whether or not the edge is kept.
        targets: list[list[int]] = []
        for _src in range(n):
            out = []
            for a in letters:
                j = first_state_of[a] + int(rng.permutation(depth)[0])
                if rng.random() < depth * density:
                    out.append(j)
            # `#` has a single candidate: permutation(1) makes no draw
            if rng.random() < density:
                out.append(n - 1)
            targets.append(sorted(out))
        targets[n - 1] = []  # `#` is terminal

        transitions = [(states[i], states[j], 1.0 / len(t)) for i, t in enumerate(targets) for j in t]
        start_states = [str(s) for s in rng.choice(states, NUM_START_STATES, replace=False)]
        if END not in start_states and _all_reach_end(targets):
            return Grammar(amb, depth, amb + 1, seed, states, start_states, transitions, attempts=attempt)
    raise RuntimeError(f"no valid grammar for amb={amb} seed={seed} depth={depth} after {MAX_ATTEMPTS} attempts")


def _all_reach_end(targets: list[list[int]]) -> bool:
    """Does every state have a directed path to `#` (the last state)? Reverse search from `#`."""
    n = len(targets)
    preds: list[list[int]] = [[] for _ in range(n)]
    for i, t in enumerate(targets):
        for j in t:
            preds[j].append(i)
    seen = [False] * n
    seen[n - 1] = True
    stack = [n - 1]
    while stack:
        for i in preds[stack.pop()]:
            if not seen[i]:
                seen[i] = True
                stack.append(i)
    return all(seen)

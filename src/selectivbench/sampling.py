"""Sequence sampling (spec §4), bit-exact with the authors' generator and fast.

Sample `idx` = the first 200 latent states of concatenated grammar strings, all drawn with
`rng = default_rng(seed * idx)`. One string: start = start_states[rng.integers(4)]; from every
state with more than one successor, u = rng.random() picks successor bisect_right(cumsum(probs), u);
the string is abandoned as soon as it exceeds 200 states and accepted when it reaches `#`.
`tests/reference_sampler.py` is that algorithm written out per sample (~5 ms/sample for amb 40).

Why this is fast: a sample needs ~3 400 steps (85 % of strings are abandoned), ~7e8 steps for
200 000 samples, far too many for a Python loop. Instead thousands of samples ("lanes") walk in
lock-step, one vectorised numpy step per iteration, and a lane that finishes takes the next sample
index. Each sample's random stream is read as raw PCG64 words (`random_raw`), which is exactly
what numpy's `Generator` consumes:
  * `rng.random()` = (word >> 11) * 2**-53, one word each;
  * `rng.integers(4)` = Lemire's method on a 32-bit draw (no rejection for a power of two): the top
    2 bits of the 32-bit draw. PCG64 serves 32-bit draws from the low half of a fresh word and keeps
    the high half for the *next* 32-bit draw; doubles do not touch that buffer.
Words are kept as m = word >> 11 (the integer bits used by both draws survive the shift), and the
successor is found with integer arithmetic, exactly (see `WalkTables`).
`tests/test_sampling.py` checks all of this against the reference sampler.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import traceback

import numpy as np
from tqdm.auto import tqdm

from selectivbench.grammar import END, Grammar

SEQ_LEN_MIN = 1  # an accepted string has 1..SEQ_LEN_MAX states (`#` counted); >= 2 in practice
SEQ_LEN_MAX = 200
COMBINED_LEN = 200  # states per sample
CLAIM = 1024  # sample indices a lane engine takes at a time (progress and load-balancing grain)

_MASK53 = (1 << 53) - 1


class WalkTables:
    """The grammar as flat arrays indexed by a state's *slot base*.

    A lane's current state is stored as the base `b` of its `k + 2` slots (`k` successors).
    A step reads m = word >> 11 (so u = m * 2**-53) and must take successor
        t = bisect_right(cumsum(probs), u) = #{i : m >= T[i]},   T[i] = ceil(cum[i] * 2**53)  (exact).
    With uniform probabilities the integer guess g = (m * k) >> 53 = #{i : m >= ceil((i+1) 2**53 / k)}
    differs from t only when m lies within `slack` units of a slot boundary, i.e. when
    (m * k) mod 2**53 is within `near` of 0. Those rare lanes are corrected by one slot with
    TT[b + g] = T[g - 1] and TT1[b + g] = T[g] (TT[b] = -1, TT[b + k + 1] = 2**62).
    NEXT[b + t] = base of successor t; NEXT[b + k] repeats the last successor: where cum[-1] < 1 and
    u >= cum[-1] (probability ~1e-16) the reference raises IndexError; we take the last successor.
    """

    def __init__(self, grammar: Grammar):
        n = len(grammar.states)
        index = {s: i for i, s in enumerate(grammar.states)}
        succ: list[list[int]] = [[] for _ in range(n)]
        probs: list[list[float]] = [[] for _ in range(n)]
        for src, dst, p in grammar.transitions:  # transition-list order = the reference's order
            succ[index[src]].append(index[dst])
            probs[index[src]].append(p)
        if len(grammar.start_states) != 4:
            raise ValueError("the fast sampler assumes 4 start states (rng.integers(4) = top 2 bits)")

        degree = np.array([len(s) for s in succ], dtype=np.int64)
        base = np.concatenate([[0], np.cumsum(degree + 2)[:-1]]).astype(np.int64)
        size = int((degree + 2).sum())
        self.TT = np.full(size, 1 << 62, dtype=np.int64)
        self.NEXT = np.zeros(size, dtype=np.int64)
        self.K = np.zeros(size, dtype=np.int64)  # out-degree, at each state's base
        self.MULTI = np.zeros(size, dtype=np.int64)  # 1 where a step draws a random number
        self.CLASS = np.zeros(size, dtype=np.uint16)
        slack = 0
        for s in range(n):
            b, k = base[s], degree[s]
            self.CLASS[b] = grammar.state_classes[s]
            if k == 0:
                continue
            cum = np.cumsum(probs[s])  # exactly what the reference bisects
            T = [math.ceil(float(c) * 2.0**53) for c in cum]  # scaling by 2**53 is exact
            G = [-(-(i + 1) * 2**53 // k) for i in range(k)]
            slack = max(slack, max(abs(a - c) for a, c in zip(T, G)))
            self.TT[b] = -1
            self.TT[b + 1 : b + k + 1] = T
            self.NEXT[b : b + k] = base[succ[s]]
            self.NEXT[b + k] = base[succ[s][-1]]
            self.K[b] = k
            self.MULTI[b] = k > 1
        max_k = int(degree.max())
        # non-uniform probabilities would make the guess useless; m * k must fit in int64
        if slack > 2**40 or max_k >= 1 << 10:
            raise ValueError("the fast sampler needs uniform transition probabilities and < 1024 successors")
        self.TT1 = np.append(self.TT[1:], 1 << 62)  # TT1[x] = TT[x + 1]
        self.near = (slack + 2) * max_k  # |m - boundary| <= slack  =>  (m*k) mod 2**53 within `near` of 0
        self.END = int(base[index[END]])
        self.START = base[[index[s] for s in grammar.start_states]]


class _LockstepSampler:
    """Runs up to `lanes` samples in lock-step until `claim()` has no more work.

    `claim() -> (a, b) | None` hands out ranges of sample indices; `emit(a, b, classes)` receives
    each range's uint16 [b - a, 200] class ids once all of its samples are done.
    """

    CHECK_EVERY = 16  # iterations between word refills; a lane reads at most 2 words per iteration
    MIN_BLOCK = 64  # > 2 * CHECK_EVERY + 2 words must be available after each refill check

    def __init__(self, tables: WalkTables, seed: int, claim, emit, lanes: int = 4096, block: int = 1024):
        if lanes < 1 or block < self.MIN_BLOCK:
            raise ValueError(f"need lanes >= 1 and block >= {self.MIN_BLOCK}, got lanes={lanes} block={block}")
        self.t, self.seed, self.claim, self.emit = tables, seed, claim, emit
        self.block = block  # words buffered per lane
        self.words = np.zeros(lanes * block, dtype=np.int64)  # m = word >> 11, one row per lane
        # a string has at most 201 states (abandoned at the 201st) and starts before position 200
        self.width = COMBINED_LEN + SEQ_LEN_MAX + 1
        self.states = np.zeros(lanes * self.width, dtype=np.int32)
        self.gens: list = [None] * lanes
        self.ranges: dict[int, list] = {}  # range start -> [stop, classes array, samples left]
        self.next_idx, self.stop_idx = 0, 0
        # Per-lane arrays, compacted when lanes run out of work; `wbase`/`obase` locate the lane's
        # rows in words/states, which stay put. Pointers are absolute indices into those arrays.
        self.wbase = np.arange(lanes, dtype=np.int64) * block
        self.obase = np.arange(lanes, dtype=np.int64) * self.width
        self.sample = np.zeros(lanes, dtype=np.int64)  # sample index
        self.rkey = np.zeros(lanes, dtype=np.int64)  # start of the claimed range it belongs to
        self.wptr = self.wbase.copy()  # next unread word
        self.pending = np.full(lanes, -1)  # integers(4) buffered in a word's high half, -1: none
        self.optr = self.obase.copy()  # next write position
        self.deadline = self.obase.copy()  # a string that writes here is too long: abandon
        self.sb = np.zeros(lanes, dtype=np.int64)  # current state (slot base)
        got = self._assign_samples(np.arange(lanes))
        keep = np.zeros(lanes, dtype=bool)
        keep[got] = True
        self._compact(keep)
        self._start_strings(np.arange(len(got)))

    def _next_index(self) -> tuple[int, int] | None:
        if self.next_idx == self.stop_idx:
            r = self.claim()
            if r is None:
                return None
            a, b = r
            self.ranges[a] = [b, np.zeros((b - a, COMBINED_LEN), dtype=np.uint16), b - a]
            self.next_idx, self.stop_idx, self.cur_range = a, b, a
        self.next_idx += 1
        return self.next_idx - 1, self.cur_range

    def _assign_samples(self, lanes: np.ndarray) -> np.ndarray:
        """Give each lane the next sample index; returns the lanes that got one (a prefix)."""
        n_got = 0
        for lane in lanes:
            nxt = self._next_index()
            if nxt is None:
                break
            idx, key = nxt
            row = int(self.wbase[lane]) // self.block
            gen = np.random.PCG64(self.seed * idx)  # = default_rng(seed * idx).bit_generator
            self.gens[row] = gen
            self.words[row * self.block : (row + 1) * self.block] = gen.random_raw(self.block) >> np.uint64(11)
            self.sample[lane], self.rkey[lane] = idx, key
            n_got += 1
        got = lanes[:n_got]
        self.wptr[got] = self.wbase[got]
        self.pending[got] = -1
        self.optr[got] = self.obase[got]
        return got

    def _start_strings(self, lanes: np.ndarray) -> None:
        """start = start_states[rng.integers(4)] for these lanes, written as the string's first state."""
        if len(lanes) == 0:
            return
        pend = self.pending[lanes]
        fresh = pend < 0
        m = self.words[self.wptr[lanes]]
        r = np.where(fresh, (m >> 19) & 3, pend)  # bits 30..31 of the word = top of its low half
        self.pending[lanes] = np.where(fresh, m >> 51, -1)  # bits 62..63 = top of the high half
        self.wptr[lanes] += fresh
        sb = self.t.START[r]
        optr = self.optr[lanes]
        self.states[optr] = sb
        self.sb[lanes] = sb
        self.deadline[lanes] = optr + SEQ_LEN_MAX
        self.optr[lanes] = optr + 1

    def _refill_words(self, margin: int) -> None:
        """Lanes close to the end of their word block get the next words of their stream."""
        used = self.wptr - self.wbase
        for lane in np.flatnonzero(used > self.block - margin):
            w0, n = int(self.wbase[lane]), int(used[lane])
            buf = self.words[w0 : w0 + self.block]
            buf[: self.block - n] = buf[n:].copy()
            buf[self.block - n :] = self.gens[w0 // self.block].random_raw(n) >> np.uint64(11)
            self.wptr[lane] = w0

    def _compact(self, keep: np.ndarray) -> None:
        for name in ("wbase", "obase", "sample", "rkey", "wptr", "pending", "optr", "deadline", "sb"):
            setattr(self, name, getattr(self, name)[keep])

    def _finish(self, done: np.ndarray) -> None:
        """Store the first 200 states of the finished lanes; emit ranges that are complete."""
        rows = self.obase[done][:, None] + np.arange(COMBINED_LEN)
        classes = self.t.CLASS[self.states[rows]]
        for i, (idx, key) in enumerate(zip(self.sample[done].tolist(), self.rkey[done].tolist())):
            entry = self.ranges[key]
            entry[1][idx - key] = classes[i]
            entry[2] -= 1
            if entry[2] == 0:
                self.emit(key, entry[0], entry[1])
                del self.ranges[key]

    def run(self) -> None:
        t, words, states = self.t, self.words, self.states
        near, two_near = t.near, 2 * t.near
        margin = 2 * self.CHECK_EVERY + 2
        it = 0
        while len(self.sb):
            if it % self.CHECK_EVERY == 0:
                self._refill_words(margin)
            it += 1
            # one step of every lane
            m = words.take(self.wptr)
            prod = m * t.K.take(self.sb)
            j = self.sb + (prod >> 53)
            close = ((prod + near) & _MASK53) < two_near
            if close.any():  # ~1e-13 per step: correct the guess exactly
                c = np.flatnonzero(close)
                jc, mc = j[c], m[c]
                j[c] = jc + (t.TT1[jc] <= mc) - (t.TT[jc] > mc)
            nxt = t.NEXT.take(j)
            self.wptr += t.MULTI.take(self.sb)  # a single successor costs no draw
            states[self.optr] = nxt
            self.sb = nxt
            ev = np.flatnonzero((nxt == t.END) | (self.optr >= self.deadline))
            self.optr += 1
            if len(ev) == 0:
                continue
            # too long (checked first, as the reference does): abandon; else `#`: accept
            too_long = self.optr[ev] > self.deadline[ev]
            self.optr[ev[too_long]] = self.deadline[ev[too_long]] - SEQ_LEN_MAX
            done = ev[~too_long & (self.optr[ev] - self.obase[ev] >= COMBINED_LEN)]
            if len(done):
                self._finish(done)
                got = self._assign_samples(done)
                if len(got) < len(done):  # no work left: drop the idle lanes
                    keep = np.ones(len(self.sb), dtype=bool)
                    keep[done[len(got) :]] = False
                    new_index = np.cumsum(keep) - 1
                    ev = new_index[ev[keep[ev]]]
                    self._compact(keep)
            self._start_strings(ev)


def _claim_from(counter, stop: int):
    """claim() over a shared counter: the next CLAIM indices below `stop`."""

    def claim():
        with counter.get_lock():
            a = counter.value
            if a >= stop:
                return None
            counter.value = min(a + CLAIM, stop)
            return a, counter.value

    return claim


def _worker(tables, seed, counter, stop, results, lanes, block) -> None:
    try:
        engine = _LockstepSampler(tables, seed, _claim_from(counter, stop), lambda a, b, c: results.put((a, b, c)), lanes, block)
        engine.run()
        results.put(None)
    except BaseException:
        results.put(("error", traceback.format_exc()))


def sample_classes(
    grammar: Grammar,
    seed: int,
    start: int,
    stop: int,
    workers: int = 1,
    progress: bool = False,
    lanes: int = 4096,
    block: int = 1024,
) -> np.ndarray:
    """uint16 [stop - start, 200]: class ids of samples start..stop-1, bit-exact with §4.

    Every sample has its own RNG, so any index range is independent: `workers` processes take
    ranges of CLAIM indices from a shared counter; results are returned in index order.
    `progress` shows a tqdm bar on stderr (quiet when stderr is not a terminal).
    """
    if not 0 <= start <= stop:
        raise ValueError(f"need 0 <= start <= stop, got start={start} stop={stop}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n = stop - start
    out = np.zeros((n, COMBINED_LEN), dtype=np.uint16)
    tables = WalkTables(grammar)
    workers = min(workers, -(-n // CLAIM))
    bar = tqdm(total=n, unit="sample", disable=None if progress else True, desc=f"sample amb={grammar.amb} seed={seed}")

    def emit(a, b, classes):
        out[a - start : b - start] = classes
        bar.update(b - a)

    try:
        if workers <= 1:
            ranges = iter([(a, min(a + CLAIM, stop)) for a in range(start, stop, CLAIM)])
            _LockstepSampler(tables, seed, lambda: next(ranges, None), emit, lanes, block).run()
        else:
            _run_workers(tables, seed, start, stop, workers, emit, lanes, block)
    finally:
        bar.close()
    return out


def _run_workers(tables, seed, start, stop, workers, emit, lanes, block) -> None:
    ctx = mp.get_context("spawn")  # no fork of a parent that may hold threads (torch, tqdm)
    counter = ctx.Value("q", start)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(tables, seed, counter, stop, results, lanes, block), daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        running = workers
        while running:
            try:
                msg = results.get(timeout=1.0)
            except Exception:  # queue.Empty: make sure nobody died silently
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("a sampling worker died (out of memory?)") from None
                continue
            if msg is None:
                running -= 1
            elif msg[0] == "error":
                raise RuntimeError(f"sampling worker failed:\n{msg[1]}")
            else:
                emit(*msg)
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()


def default_workers() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

"""The paper's abstract-level claims, judged on the results table (rule `judge_claims`).

Claims (spec §12, from the abstract; the paper's full text could not be read):
  (a) gating and rapid forgetting help recall;
  (b) in-state channel mixing (the delta rule) is not needed for selectivity (Tasks 2, 3) but is
      critical for generalisation to longer gaps (Task 4);
  (c) softmax attention (the Transformer) stays best;
plus the ranking of the architectures per task and the faithful vs held-out test difference.

Each claim is a set of *comparisons* A vs B of test accuracy in one condition (task, feat, amb;
Task 4: its longest test gap), on the first test split (the one training reports on). A
comparison uses the (lr, warmup) picked by the selection table's rule (select.select) and the
seeds that both A and B finished: the difference A − B is averaged over those seeds (paired by
seed, which shares the grammar) with a Student-t confidence interval [lo, hi]. Verdict rule:

* expected A > B: reproduced if lo > 0, not reproduced if hi < 0, else inconclusive;
* expected A ≥ B (non-inferiority, margin m): reproduced if lo > −m, not reproduced if hi < −m,
  else inconclusive;
* inconclusive whatever the numbers when fewer than 2 seeds are paired, or when A and B were
  trained on different numbers of samples (an architecture reduced for cost: not comparable).

A claim over several comparisons is reproduced if all are, not reproduced if at least one is
contradicted and none reproduced, and otherwise inconclusive (a mixed result says so).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from selectivbench.analysis.select import mean_ci, select

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
MARGIN = 0.02  # non-inferiority margin of claim (b, selectivity): 2 points of accuracy
GATED_VS_UNGATED = [("gated_delta_net", "delta_net"), ("mamba2", "delta_net"), ("gla", "delta_net")]
NO_MIXING_VS_DELTA = [("mamba2", "gated_delta_net")]  # same scalar gate, without / with the delta rule
DELTA_VS_NO_MIXING = [("gated_delta_net", "mamba2"), ("gated_delta_product", "mamba2")]
ATTENTION = "transformer"

CLAIMS = {
    "a": ("gating and rapid forgetting help recall", ("task1", "task2", "task3"), GATED_VS_UNGATED, "greater"),
    "b-selectivity": ("in-state channel mixing is not needed for selectivity", ("task2", "task3"), NO_MIXING_VS_DELTA, "not_worse"),
    "b-generalisation": ("in-state channel mixing is critical for generalisation to longer gaps", ("task4",), DELTA_VS_NO_MIXING, "greater"),
    "c": ("softmax attention stays best", ("task1", "task2", "task3", "task4"), None, "greater"),
}
COLUMNS = ["level", "claim", "statement", "task", "condition", "comparison", "expected", "measured", "n_seeds",
           "diff", "ci_lo", "ci_hi", "verdict", "note"]


# --- one comparison -------------------------------------------------------------------------


def pair_verdict(diffs, expected: str, confidence: float = 0.95, margin: float = MARGIN) -> dict:
    """Verdict of one comparison from the per-seed differences A − B (see the module doc)."""
    mean, half, n = mean_ci(diffs, confidence)
    lo, hi = (mean - half, mean + half) if n >= 2 else (math.nan, math.nan)
    out = {"n_seeds": n, "diff": mean, "ci_lo": lo, "ci_hi": hi}
    if n < 2:
        return {**out, "verdict": INCONCLUSIVE, "note": f"{n} seed(s) with both results: no interval"}
    if expected == "greater":
        verdict = REPRODUCED if lo > 0 else NOT_REPRODUCED if hi < 0 else INCONCLUSIVE
    elif expected == "not_worse":
        verdict = REPRODUCED if lo > -margin else NOT_REPRODUCED if hi < -margin else INCONCLUSIVE
    else:
        raise ValueError(f"unknown expectation {expected!r} (greater or not_worse)")
    return {**out, "verdict": verdict, "note": ""}


def combine(verdicts: list[str]) -> tuple[str, str]:
    """A claim's verdict from its comparisons' verdicts, and a count of them."""
    n = len(verdicts)
    k_yes, k_no = verdicts.count(REPRODUCED), verdicts.count(NOT_REPRODUCED)
    note = f"{k_yes} of {n} comparisons reproduced, {k_no} contradicted"
    if n == 0:
        return INCONCLUSIVE, "no comparison could be made (missing runs)"
    if k_yes == n:
        return REPRODUCED, note
    if k_no and not k_yes:
        return NOT_REPRODUCED, note
    return INCONCLUSIVE, note + (" (mixed)" if k_no else "")


# --- per-seed accuracies of the selected setting --------------------------------------------


def seed_table(runs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Rows (task, arch, feat, amb, test_split, test_gap, seed, test_acc, samples) of the finished
    runs/evaluations at the (lr, warmup) the selection table chose for their group."""
    ok = runs[runs["status"].isin(["completed", "diverged"]) & runs["test_acc"].notna()].copy()
    if ok.empty:
        return pd.DataFrame(columns=["task", "arch", "feat", "amb", "test_split", "test_gap", "seed", "test_acc", "samples"])
    ok["test_gap"] = ok["test_gap"].astype(float)
    sel = select(ok, confidence)[["task", "arch", "feat", "amb", "test_split", "test_gap", "lr", "warmup"]]
    keys = ["task", "arch", "feat", "amb", "test_split", "test_gap", "lr", "warmup"]
    chosen = ok.merge(sel, on=keys, how="inner")
    # samples trained on: an evaluation inherits it from its run (same arch, feat, amb, lr, warmup, seed)
    trained = runs[runs["kind"] == "train"][["task", "arch", "feat", "amb", "lr", "warmup", "seed", "samples"]]
    trained = trained.rename(columns={"task": "source_task", "samples": "source_samples"})
    chosen["source_task"] = np.where(chosen["task"] == "task4", "task2", chosen["task"])
    chosen = chosen.merge(trained, on=["source_task", "arch", "feat", "amb", "lr", "warmup", "seed"], how="left")
    chosen["samples"] = chosen["source_samples"]
    return chosen[["task", "arch", "feat", "amb", "test_split", "test_gap", "seed", "test_acc", "samples"]]


def conditions(seeds: pd.DataFrame, task: str, split: str) -> list[tuple]:
    """(feat, amb, test_gap) conditions of a task on a split; Task 4 at its longest gap only."""
    rows = seeds[(seeds["task"] == task) & (seeds["test_split"] == split)]
    if rows.empty:
        return []
    if task == "task4":
        rows = rows[rows["test_gap"] == rows.groupby(["feat", "amb"])["test_gap"].transform("max")]
    # gap None outside Task 4 (NaN would make every row a condition of its own: NaN != NaN)
    return sorted({(int(f), int(a), float(g) if task == "task4" else None)
                   for f, a, g in rows[["feat", "amb", "test_gap"]].itertuples(index=False)},
                  key=lambda c: (c[0], c[1], c[2] or 0.0))


def condition_text(task: str, cond: tuple) -> str:
    feat, amb, gap = cond
    return f"feat {feat}, amb {amb}" + (f", test gap {gap:g}" if gap is not None else "")


def values(seeds: pd.DataFrame, task: str, split: str, cond: tuple, arch: str) -> pd.DataFrame:
    feat, amb, gap = cond
    rows = seeds[(seeds["task"] == task) & (seeds["test_split"] == split) & (seeds["arch"] == arch)
                 & (seeds["feat"] == feat) & (seeds["amb"] == amb)]
    if gap is not None:
        rows = rows[rows["test_gap"] == gap]
    return rows.set_index("seed")


def fmt_ci(mean: float, half: float, n: int) -> str:
    if n == 0 or not np.isfinite(mean):
        return "—"
    return f"{mean:.3f} ± {half:.3f} (n={n})" if n >= 2 else f"{mean:.3f} (n=1)"


def compare(seeds, task, split, cond, a, b, expected, confidence, margin) -> dict:
    va, vb = values(seeds, task, split, cond, a), values(seeds, task, split, cond, b)
    common = sorted(set(va.index) & set(vb.index))
    diffs = [float(va.loc[s, "test_acc"]) - float(vb.loc[s, "test_acc"]) for s in common]
    out = pair_verdict(diffs, expected, confidence, margin)
    ma, ha, na = mean_ci(va["test_acc"], confidence)
    mb, hb, nb = mean_ci(vb["test_acc"], confidence)
    sa, sb = set(va["samples"].dropna().astype(int)), set(vb["samples"].dropna().astype(int))
    notes = [out["note"]] if out["note"] else []
    if sa and sb and sa != sb:
        out["verdict"] = INCONCLUSIVE
        notes.append(f"not comparable: trained on {'/'.join(map(str, sorted(sa)))} vs {'/'.join(map(str, sorted(sb)))} samples")
    sign = ">" if expected == "greater" else f"≥ (margin {margin:g})"
    diff = "—" if not np.isfinite(out["diff"]) else (
        f"{out['diff']:+.3f} [{out['ci_lo']:+.3f}, {out['ci_hi']:+.3f}]" if out["n_seeds"] >= 2 else f"{out['diff']:+.3f}")
    return {
        "level": "comparison", "task": task, "condition": condition_text(task, cond), "comparison": f"{a} vs {b}",
        "expected": f"{a} {sign} {b}", "measured": f"{a} {fmt_ci(ma, ha, na)}; {b} {fmt_ci(mb, hb, nb)}; A−B {diff}",
        **{k: out[k] for k in ("n_seeds", "diff", "ci_lo", "ci_hi", "verdict")}, "note": "; ".join(notes),
    }


# --- the claims table -------------------------------------------------------------------------


def judge(runs: pd.DataFrame, confidence: float = 0.95, margin: float = MARGIN) -> pd.DataFrame:
    """Every claim (summary rows + their comparisons), the rankings and the split differences."""
    seeds = seed_table(runs, confidence)
    train_rows = runs[runs["kind"] == "train"]
    split = str(train_rows["test_split"].iloc[0]) if len(train_rows) else "faithful"
    archs = list(dict.fromkeys(runs["arch"]))
    rows: list[dict] = []
    for claim, (statement, tasks, pairs, expected) in CLAIMS.items():
        detail = []
        for task in tasks:
            for cond in conditions(seeds, task, split):
                present = set(seeds[(seeds["task"] == task) & (seeds["test_split"] == split)]["arch"])
                if pairs is None:  # (c): attention against every other architecture
                    todo = [(ATTENTION, x) for x in archs if x != ATTENTION] if ATTENTION in archs else []
                else:
                    todo = [(a, b) for a, b in pairs if a in archs and b in archs]
                for a, b in todo:
                    if a in present or b in present:
                        detail.append(compare(seeds, task, split, cond, a, b, expected, confidence, margin))
        verdict, note = combine([d["verdict"] for d in detail])
        tasks_done = sorted({d["task"] for d in detail})
        rows.append({"level": "claim", "claim": claim, "statement": statement, "task": ", ".join(tasks_done) or ", ".join(tasks),
                     "comparison": "; ".join(dict.fromkeys(d["comparison"] for d in detail)), "verdict": verdict, "note": note})
        rows += [{**d, "claim": claim, "statement": statement} for d in detail]
    rows += rankings(seeds, split, confidence)
    rows += split_differences(seeds, split, confidence)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def rankings(seeds: pd.DataFrame, split: str, confidence: float) -> list[dict]:
    """Per task and condition: architectures by mean test accuracy, and how many of the pairwise
    orders are resolved (paired difference CI excluding 0). No verdict: the paper's per-task
    ranking is not in the spec (its full text could not be read)."""
    rows = []
    for task in ("task1", "task2", "task3", "task4"):
        for cond in conditions(seeds, task, split):
            stats = []
            for arch in dict.fromkeys(seeds["arch"]):
                v = values(seeds, task, split, cond, arch)
                if len(v):
                    stats.append((arch, *mean_ci(v["test_acc"], confidence)))
            stats.sort(key=lambda s: -s[1])
            resolved = total = 0
            for i, (a, *_rest) in enumerate(stats):
                for b, *_ in stats[i + 1:]:
                    total += 1
                    out = compare(seeds, task, split, cond, a, b, "greater", confidence, MARGIN)
                    resolved += out["verdict"] == REPRODUCED
            ranking = " > ".join(f"{a} {fmt_ci(m, h, n)}" for a, m, h, n in stats)
            rows.append({"level": "ranking", "claim": "ranking", "statement": "ranking of the architectures by mean test accuracy",
                         "task": task, "condition": condition_text(task, cond), "measured": ranking,
                         "verdict": f"{resolved} of {total} orders resolved",
                         "note": "an order is resolved when the paired difference's CI excludes 0; "
                                 "the paper's ranking is not available to compare with"})
    return rows


def split_differences(seeds: pd.DataFrame, split: str, confidence: float) -> list[dict]:
    """Faithful (test = the first training sequences, as the authors) minus held-out test
    accuracy, paired by (architecture, seed), per task and condition; only where both exist."""
    splits = set(seeds["test_split"])
    if not {"faithful", "heldout"} <= splits:
        return [{"level": "split", "claim": "split", "statement": "faithful vs held-out test split", "verdict": "not measured",
                 "note": f"the results have test split(s) {sorted(splits)} only (config key test_splits)"}]
    rows = []
    for task in ("task1", "task2", "task3", "task4"):
        for cond in conditions(seeds, task, "faithful"):
            diffs = []
            for arch in dict.fromkeys(seeds["arch"]):
                f, h = values(seeds, task, "faithful", cond, arch), values(seeds, task, "heldout", cond, arch)
                diffs += [float(f.loc[s, "test_acc"]) - float(h.loc[s, "test_acc"]) for s in sorted(set(f.index) & set(h.index))]
            mean, half, n = mean_ci(diffs, confidence)
            if n == 0:
                continue
            lo, hi = mean - half, mean + half
            verdict = ("faithful higher" if lo > 0 else "held-out higher" if hi < 0 else "no difference resolved") if n >= 2 else INCONCLUSIVE
            rows.append({"level": "split", "claim": "split", "statement": "faithful minus held-out test accuracy",
                         "task": task, "condition": condition_text(task, cond), "n_seeds": n, "diff": mean,
                         "ci_lo": lo if n >= 2 else math.nan, "ci_hi": hi if n >= 2 else math.nan,
                         "measured": f"{mean:+.4f}" + (f" [{lo:+.4f}, {hi:+.4f}]" if n >= 2 else "") + f" over {n} (arch, seed) pairs",
                         "verdict": verdict, "note": "faithful = the authors' test set (the first training sequences, spec §15.4)"})
    return rows


def summary_markdown(table: pd.DataFrame, confidence: float, margin: float = MARGIN) -> str:
    """The claims table as Markdown: claims, rankings, split differences, then every comparison."""
    from selectivbench.analysis.tables import to_markdown

    def part(level: str, cols: list[str]) -> str:
        sub = table[table["level"] == level][cols]
        return to_markdown(sub) if len(sub) else "(none)\n"

    pct = f"{confidence:.0%}"
    return "\n".join([
        "# Claims of the paper's abstract, judged at this scale\n",
        f"Test accuracy, mean ± {pct} Student-t half-width over seeds; A−B = paired difference over the seeds both finished, "
        f"[{pct} CI]. Verdict rule: `A > B` reproduced when the CI of A−B lies above 0, not reproduced when it lies below 0, "
        f"otherwise inconclusive; `A ≥ B` (non-inferiority) reproduced when the CI's lower end is above −{margin:g}, "
        f"not reproduced when its upper end is below −{margin:g}; inconclusive with fewer than 2 paired seeds or when A and B "
        "were trained on different numbers of samples. A claim is reproduced when all its comparisons are, not reproduced "
        "when some are contradicted and none reproduced, inconclusive otherwise.\n",
        "## Claims\n", part("claim", ["claim", "statement", "task", "comparison", "verdict", "note"]),
        "## Rankings per task\n", part("ranking", ["task", "condition", "measured", "verdict"]),
        "## Faithful vs held-out test split\n", part("split", ["task", "condition", "measured", "verdict", "note"]),
        "## Comparisons\n", part("comparison", ["claim", "task", "condition", "expected", "measured", "verdict", "note"]),
    ])


def write_claims(runs: pd.DataFrame, csv_path: str, md_path: str, html_path: str | None = None,
                 confidence: float = 0.95, margin: float = MARGIN) -> pd.DataFrame:
    table = judge(runs, confidence, margin)
    table.to_csv(csv_path, index=False)
    text = summary_markdown(table, confidence, margin)
    with open(md_path, "w") as f:
        f.write(text)
    if html_path:
        parts = []
        for level, title in (("claim", "Claims"), ("ranking", "Rankings per task"), ("split", "Faithful vs held-out"),
                             ("comparison", "Comparisons")):
            sub = table[table["level"] == level].dropna(axis=1, how="all")
            parts.append(f"<h3>{title}</h3>" + sub.to_html(index=False, na_rep="—", float_format=lambda x: f"{x:.4f}", border=0))
        rule = text.split("\n\n")[1]
        with open(html_path, "w") as f:
            f.write("<html><head><meta charset='utf-8'><title>Claims</title></head><body>"
                    f"<h2>Claims of the paper's abstract, judged at this scale</h2><p>{rule}</p>{''.join(parts)}</body></html>\n")
    return table
